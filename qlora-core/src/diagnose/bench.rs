//! `qlora bench`: training speed and peak memory of a model shape on a device, with no weights
//! on disk. The model is drawn at random ([`Checkpoint::random`]) and NF4-quantized as the
//! loader quantizes a checkpoint, LoRA goes on every projection, and a few steps train on
//! random tokens (every token learned); the planner's figure for the same settings stands
//! beside the measured peak.

use std::time::{Duration, Instant};

use burn::tensor::Device;

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::device::{DeviceChoice, device_memory, is_gpu};
use crate::dtype::ComputeDtype;
use crate::error::{Error, Result};
use crate::lora::LoraConfig;
use crate::model::{Bits, CausalLm, DropoutStream, LoadOptions, TrainBatch};
use crate::plan::{MemoryPlan, PlanSettings, load_config, plan};
use crate::profile::{self, Phase, StepTimes};
use crate::resident::{peak_rss, reset_peak_rss};
use crate::train::{AdamWConfig, OptimizerKind, PagedAdamW};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// A preset name or a `config.json` (or a model directory: only its config is read).
    pub shape: String,
    /// Where to train.
    pub device: DeviceChoice,
    /// Tokens a row.
    pub seq_len: usize,
    /// Rows a step.
    pub batch_size: usize,
    /// LoRA's rank (every projection).
    pub rank: usize,
    /// Timed steps (after one that warms up).
    pub steps: usize,
    /// The optimizer.
    pub optim: OptimizerKind,
    /// The compute dtype (`None`: train's default for the device).
    pub compute_dtype: Option<ComputeDtype>,
    /// Recompute layers in the backward pass.
    pub gradient_checkpointing: bool,
    /// Seed of the weights, the adapters and the tokens.
    pub seed: u64,
}

impl Default for BenchSettings {
    fn default() -> Self {
        BenchSettings {
            shape: String::new(),
            device: DeviceChoice::Cpu,
            seq_len: 512,
            batch_size: 1,
            rank: 64,
            steps: 3,
            optim: OptimizerKind::PagedAdamW32,
            compute_dtype: None,
            gradient_checkpointing: true,
            seed: 42,
        }
    }
}

/// The planner's view of a bench: the shape, the settings it planned, and the plan.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// The model's config.
    pub config: ModelConfig,
    /// The compute dtype the run uses.
    pub compute: ComputeDtype,
    /// What the plan assumed.
    pub settings: PlanSettings,
    /// Where a step's memory goes.
    pub plan: MemoryPlan,
}

/// Plan a bench without building anything. With `device` (where the run goes), the compute
/// dtype is the one train would pick there; without, f32 unless one is asked for.
pub fn plan_bench(settings: &BenchSettings, device: Option<&Device>) -> Result<BenchPlan> {
    if settings.rank == 0 || settings.batch_size == 0 || settings.seq_len == 0 {
        return Err(Error::invalid(
            "--rank, --batch-size and --seq-len must be positive",
        ));
    }
    let config = load_config(&settings.shape)?;
    let compute = match device {
        Some(device) => ComputeDtype::resolve(settings.compute_dtype, device)?,
        None => settings.compute_dtype.unwrap_or(ComputeDtype::F32),
    };
    let plan_settings = PlanSettings {
        bits: Bits::Four,
        rank: settings.rank,
        batch_size: settings.batch_size,
        seq_len: settings.seq_len,
        gradient_checkpointing: settings.gradient_checkpointing,
        optimizer_8bit: settings.optim.eight_bit(),
        // The bench's paged optimizer keeps every state on the device (no budget).
        optimizer_device_budget: None,
        compute_bytes: compute.size() as u64,
        ..PlanSettings::default()
    };
    let memory = plan(&config, &plan_settings)?;
    Ok(BenchPlan {
        config,
        compute,
        settings: plan_settings,
        plan: memory,
    })
}

/// What a bench measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The plan of the same settings.
    pub plan: BenchPlan,
    /// Seconds to draw, quantize and place the model and its adapters.
    pub build_seconds: f64,
    /// Trained tokens a second over the timed steps.
    pub tokens_per_s: f64,
    /// Mean seconds of a timed step.
    pub step_seconds: f64,
    /// Mean time of each phase in a timed step (host time: on a GPU, of queuing the work).
    pub phases: Vec<(Phase, Duration)>,
    /// The mean token loss of the first and the last step.
    pub losses: (f64, f64),
    /// The peak measured over the steps: device memory (cubecl's pools) on a GPU, the
    /// process's peak resident set on the CPU.
    pub measured_peak: Option<u64>,
    /// What [`Self::measured_peak`] is.
    pub measured_what: &'static str,
}

/// Build the model on the device and train `steps` steps (plus one to warm up), saying each
/// step to `log`.
pub fn run_bench(settings: &BenchSettings, log: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    if settings.steps == 0 {
        return Err(Error::invalid("--steps must be at least 1"));
    }
    let device = settings.device.device()?;
    let planned = plan_bench(settings, Some(&device))?;
    let gpu = is_gpu(&device);
    let start = Instant::now();
    let checkpoint = Checkpoint::random(&format!("random {}", settings.shape), settings.seed);
    let options = LoadOptions {
        bits: Bits::Four,
        device: device.clone(),
        compute: planned.compute,
        ..LoadOptions::default()
    };
    let mut model = CausalLm::from_checkpoint(planned.config.clone(), &checkpoint, &options)?;
    let lora = LoraConfig {
        r: settings.rank,
        alpha: 2.0 * settings.rank as f64,
        ..LoraConfig::default()
    };
    model.attach_lora(&lora, settings.seed)?;
    let sizes = model.adapter_sizes();
    let mut optimizer = PagedAdamW::new(
        settings.optim,
        AdamWConfig::default(),
        &sizes,
        None,
        &model.device,
    );
    if gpu {
        device
            .sync()
            .map_err(|e| Error::invalid(format!("the device failed: {e:?}")))?;
    }
    let build_seconds = start.elapsed().as_secs_f64();
    log(&format!(
        "built the model ({} parameters, {} trainable) in {build_seconds:.1} s",
        planned.plan.parameters, planned.plan.trainable_parameters
    ));

    let vocab = planned.config.vocab_size as u64;
    let mut state = settings.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut token = || {
        // xorshift64*: tokens need no more than to be spread over the vocabulary.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) % vocab) as u32
    };
    let ids: Vec<Vec<u32>> = (0..settings.batch_size)
        .map(|_| (0..settings.seq_len).map(|_| token()).collect())
        .collect();
    let labels = ids
        .iter()
        .map(|row| row.iter().map(|&t| i64::from(t)).collect())
        .collect();
    let mask = vec![vec![true; settings.seq_len]; settings.batch_size];
    let batch = TrainBatch::new(ids, labels, mask);

    let rss_reset = !gpu && reset_peak_rss();
    let mut times = StepTimes::default();
    let mut losses = (f64::NAN, f64::NAN);
    for step in 0..=settings.steps {
        // The first step compiles kernels and warms caches and pools.
        profile::enable(step > 0);
        let t = Instant::now();
        let stream = DropoutStream {
            seed: settings.seed,
            step: step as u64,
        };
        let result =
            model.loss_and_grads(&batch, settings.gradient_checkpointing, Some(&stream))?;
        {
            let _span = profile::span(Phase::Optimizer);
            optimizer.step_adapters(&mut model, result.grads.grads, 1.0, 2e-4);
            // Wait for the update (on a GPU it is queued).
            let _ = model.adapters()[0].1.b.clone().into_data();
        }
        let elapsed = t.elapsed().as_secs_f64();
        let loss = result.loss_sum / result.tokens as f64;
        if !loss.is_finite() {
            return Err(Error::invalid(format!(
                "step {step}: the loss is {loss}: the device computed a non-finite value"
            )));
        }
        if step == 0 {
            losses.0 = loss;
        }
        losses.1 = loss;
        log(&format!(
            "step {step}{}: {elapsed:.2} s, loss {loss:.4}",
            if step == 0 { " (warm-up)" } else { "" }
        ));
        if step > 0 {
            times.record(elapsed);
        }
    }
    profile::enable(false);
    let mean = times.mean();
    let (measured_peak, measured_what) = if gpu {
        (
            device_memory(&device).map(|(_, peak)| peak),
            "peak device memory",
        )
    } else {
        (
            peak_rss(),
            if rss_reset {
                "peak RSS over the steps"
            } else {
                "peak RSS of the process"
            },
        )
    };
    Ok(BenchReport {
        plan: planned,
        build_seconds,
        tokens_per_s: (settings.seq_len * settings.batch_size) as f64 / mean,
        step_seconds: mean,
        phases: times.phase_means(),
        losses,
        measured_peak,
        measured_what,
    })
}
