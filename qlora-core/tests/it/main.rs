//! qlora-core's tests against the reference stack's fixtures, in one binary (one link of Burn,
//! candle and tokenizers for all of them). Heap measurements are in `tests/memory`.

mod adamw_fixture;
mod arch_parity;
mod choice_eval;
mod cube_kernels;
mod datasets;
mod fused_ops;
mod generation;
mod gguf_export;
mod gguf_import;
mod gguf_real;
mod gguf_smollm2;
mod lora_grads;
mod lora_peft;
mod merge;
mod model_parity;
mod nf4_fixtures;
mod nf4_properties;
mod packing;
mod paging_wgpu;
mod parquet_data;
mod preference_parity;
mod quantize_parity;
mod step_grads;
mod text_parity;
mod training;
mod wgpu_backend;
