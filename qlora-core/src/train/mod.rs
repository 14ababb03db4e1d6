//! Training: its configuration, the paged AdamW optimizer, schedules, the step and the run with
//! checkpoints and resume.

mod adapters;
mod axolotl;
mod best;
mod checkpoint;
mod config;
mod memory_check;
mod optimizer;
mod pair_step;
mod pairs;
mod parallel;
mod planning;
mod progress;
mod recorded;
mod resume;
mod run;
mod schedule;
mod step;
mod trainer;
mod validate;

pub use axolotl::{AxolotlRun, is_yaml, read_axolotl};
pub use best::{BEST_DIR, BEST_FILE, Best, BestMetric, best_dir, read_best};
pub use checkpoint::{
    CONFIG_FILE, MANIFEST_FILE, RunPosition, list_checkpoints, load_checkpoint, verify_checkpoint,
};
pub use config::TrainConfig;
pub use optimizer::{AdamWConfig, MIN_8BIT_SIZE, OptimizerKind, PagedAdamW, SavedMoments};
pub use pairs::REFERENCE_FILE;
pub use progress::{LogProgress, METRICS_FILE, Progress, Quiet, StepMetrics, TENSORBOARD_DIR};
pub use recorded::{recorded_text, text_for};
pub use resume::{newest_complete_checkpoint, resume_point};
pub use run::{Outcome, TrainSummary};
pub use schedule::{Schedule, warmup_from_ratio};
pub use step::StepGradients;
pub use trainer::Trainer;
