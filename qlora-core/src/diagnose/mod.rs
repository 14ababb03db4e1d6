//! Answers a user has about a device before training on it, from the binary alone (no model,
//! no data, no network): are the kernels right here ([`selftest`]), and how fast does a model
//! of a given shape train and in how much memory ([`bench`]).

pub mod bench;
pub mod selftest;

pub use bench::{BenchPlan, BenchReport, BenchSettings, plan_bench, run_bench};
pub use selftest::{BREAK_VARIABLE, KernelCheck, kernel_names, selftest};
