//! Training: the paged AdamW optimizer, schedules, the trainer loop with checkpoints and resume.

mod checkpoint;
mod config;
mod optimizer;
mod schedule;
mod state8;
mod trainer;

pub use checkpoint::{RunPosition, list_checkpoints, load_checkpoint};
pub use config::{TrainConfig, TrainSettings};
pub use optimizer::{AdamWConfig, MIN_8BIT_SIZE, OptimizerKind, PagedAdamW, SavedMoments};
pub use schedule::{Schedule, warmup_from_ratio};
pub use trainer::{
    LogProgress, METRICS_FILE, Outcome, Progress, StepMetrics, TrainSummary, Trainer,
};
