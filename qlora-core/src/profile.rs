//! Where a training step's time goes. The step's pieces run inside [`span`]s; while profiling
//! is on ([`enable`]) each span adds its own time (minus that of the spans it contains) to its
//! phase. Everything inside a [`Phase::Recompute`] span counts as recompute. Off by default: a
//! span then costs one relaxed atomic load. Spans are per thread; the step's ops are called
//! from one thread (their kernels fan out to the thread pool inside).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A part of the training step, as `train_bench` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The token embedding.
    Embedding,
    /// The frozen linears' products.
    BaseForward,
    /// The adapters, forward and backward.
    Lora,
    /// Attention, forward and backward.
    Attention,
    /// RMSNorm, RoPE, SwiGLU, residual adds.
    Elementwise,
    /// The output head and the loss.
    HeadAndLoss,
    /// Layers recomputed in the backward pass (gradient checkpointing).
    Recompute,
    /// The frozen linears' input gradients.
    BaseBackward,
    /// The optimizer's update.
    Optimizer,
}

impl Phase {
    /// Every phase, in the step's order.
    pub const ALL: [Phase; 9] = [
        Phase::Embedding,
        Phase::BaseForward,
        Phase::Lora,
        Phase::Attention,
        Phase::Elementwise,
        Phase::HeadAndLoss,
        Phase::Recompute,
        Phase::BaseBackward,
        Phase::Optimizer,
    ];

    /// The phase's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Embedding => "embedding",
            Phase::BaseForward => "base projections forward",
            Phase::Lora => "LoRA",
            Phase::Attention => "attention",
            Phase::Elementwise => "norms/RoPE/SwiGLU",
            Phase::HeadAndLoss => "head and loss",
            Phase::Recompute => "recompute",
            Phase::BaseBackward => "backward through the base",
            Phase::Optimizer => "optimizer",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; Phase::ALL.len()] = [const { AtomicU64::new(0) }; Phase::ALL.len()];

struct Open {
    phase: Phase,
    start: Instant,
    inner: Duration,
}

thread_local! {
    static OPEN: RefCell<Vec<Open>> = const { RefCell::new(Vec::new()) };
}

/// Turn profiling on or off (and zero the totals).
pub fn enable(on: bool) {
    reset();
    ENABLED.store(on, Ordering::Relaxed);
}

/// Set every phase's time to zero.
pub fn reset() {
    for n in &NANOS {
        n.store(0, Ordering::Relaxed);
    }
}

/// The time of each phase since the last reset.
pub fn totals() -> Vec<(Phase, Duration)> {
    Phase::ALL
        .iter()
        .map(|&p| {
            (
                p,
                Duration::from_nanos(NANOS[p as usize].load(Ordering::Relaxed)),
            )
        })
        .collect()
}

/// Timed steps: each one's seconds, and the phases' totals over them.
#[derive(Debug, Clone, Default)]
pub struct StepTimes {
    seconds: Vec<f64>,
    phases: Vec<Duration>,
}

impl StepTimes {
    /// Count a step of `seconds`, with the phases' totals gathered since the last reset (the
    /// step's own when profiling was enabled at its start).
    pub fn record(&mut self, seconds: f64) {
        self.seconds.push(seconds);
        self.phases.resize(Phase::ALL.len(), Duration::ZERO);
        for (total, (_, d)) in self.phases.iter_mut().zip(totals()) {
            *total += d;
        }
    }

    /// The mean step, in seconds.
    pub fn mean(&self) -> f64 {
        self.seconds.iter().sum::<f64>() / self.seconds.len() as f64
    }

    /// Each phase's mean time a step.
    pub fn phase_means(&self) -> Vec<(Phase, Duration)> {
        let steps = self.seconds.len().max(1) as u32;
        Phase::ALL
            .iter()
            .zip(&self.phases)
            .map(|(&p, &d)| (p, d / steps))
            .collect()
    }
}

/// A running span; its time is counted when it drops.
#[must_use = "a span measures until it is dropped"]
pub struct Span {
    active: bool,
}

/// The lines of a per-phase table of a step of `step`: each phase's milliseconds and share,
/// then what no phase accounts for ("other"), each line indented by two spaces.
pub fn table(phases: &[(Phase, Duration)], step: Duration) -> Vec<String> {
    let step = step.as_secs_f64();
    let row =
        |name: &str, s: f64| format!("  {name:<28} {:>9.1} {:>6.1}%", s * 1e3, 100.0 * s / step);
    let mut lines = vec![format!("  {:<28} {:>9} {:>7}", "phase", "ms", "share")];
    let mut accounted = 0.0;
    for (phase, d) in phases {
        accounted += d.as_secs_f64();
        lines.push(row(phase.name(), d.as_secs_f64()));
    }
    lines.push(row("other", (step - accounted).max(0.0)));
    lines
}

/// Count the time until the returned span drops towards `phase`.
pub fn span(phase: Phase) -> Span {
    if !ENABLED.load(Ordering::Relaxed) {
        return Span { active: false };
    }
    let active = OPEN.with(|open| {
        let mut open = open.borrow_mut();
        if open.iter().any(|o| o.phase == Phase::Recompute) {
            return false;
        }
        open.push(Open {
            phase,
            start: Instant::now(),
            inner: Duration::ZERO,
        });
        true
    });
    Span { active }
}

impl Drop for Span {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        OPEN.with(|open| {
            let mut open = open.borrow_mut();
            let done = open.pop().expect("spans close in order");
            let elapsed = done.start.elapsed();
            let own = elapsed.saturating_sub(done.inner);
            NANOS[done.phase as usize].fetch_add(own.as_nanos() as u64, Ordering::Relaxed);
            if let Some(parent) = open.last_mut() {
                parent.inner += elapsed;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_spans_count_their_own_time() {
        enable(true);
        {
            let _outer = span(Phase::Lora);
            std::thread::sleep(Duration::from_millis(20));
            {
                let _inner = span(Phase::Attention);
                std::thread::sleep(Duration::from_millis(20));
            }
            let _re = span(Phase::Recompute);
            let _absorbed = span(Phase::BaseForward);
            std::thread::sleep(Duration::from_millis(20));
        }
        let t: Vec<Duration> = totals().into_iter().map(|(_, d)| d).collect();
        enable(false);
        let ms = |p: Phase| t[p as usize].as_millis();
        assert!((20..35).contains(&ms(Phase::Lora)), "{t:?}");
        assert!((20..35).contains(&ms(Phase::Attention)), "{t:?}");
        assert!((20..35).contains(&ms(Phase::Recompute)), "{t:?}");
        assert_eq!(ms(Phase::BaseForward), 0);
    }
}
