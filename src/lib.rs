pub use qlora_core::*;
