//! The `qlora` binary run as a user runs it, in one test binary.

mod common;

mod axolotl_cli;
mod choice_cli;
mod data_cli;
mod diagnose_cli;
mod download_cli;
mod faults_cli;
mod gguf_cli;
mod hub_cli;
mod launch_cli;
mod model_cli;
#[cfg(feature = "mpi")]
mod mpi_cli;
mod plan_cli;
mod preference_cli;
mod quantize_cli;
mod safety_cli;
mod template_cli;
mod tensorboard_cli;
mod train_cli;
mod wgpu_cli;
