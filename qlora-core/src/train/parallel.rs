//! The trainer on several ranks ([`crate::distributed`]): the same start on every rank (rank 0's
//! adapters, a fingerprint of what each loaded), the step's rows dealt across ranks, its
//! gradients and counts summed in one all-reduce, evaluation split and summed.

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};

use super::step::StepGradients;
use super::trainer::Trainer;
use crate::data::Batching;
use crate::distributed::{
    Collective, Fingerprint, ReduceStats, STEP_COUNTS as COUNTS, broadcast_f32, share,
    step_reduce_bytes,
};
use crate::error::{Error, Result};
use crate::preference::PreferenceSums;

/// Bytes in decimal megabytes, as MPI's and network figures are quoted.
fn megabytes(bytes: usize) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

/// The values of a tensor on the host, as f32.
fn host_values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

impl Trainer {
    /// Ranks in the run.
    pub fn world(&self) -> usize {
        self.collective.world()
    }

    /// Whether this process writes the run's files and log (rank 0).
    pub fn is_root(&self) -> bool {
        self.collective.rank() == 0
    }

    /// The micro-batch layout of the whole run: each global micro-batch holds
    /// `batch_size × world` rows, so the data order does not depend on the world size.
    pub(super) fn global_batching(&self) -> Batching {
        let mut batching = self.config.batching();
        batching.batch_size *= self.world();
        batching
    }

    /// This rank's rows of a global micro-batch: `batch_size` consecutive rows from
    /// `rank × batch_size` (the last micro-batch of an epoch may leave a rank none).
    pub(super) fn my_rows<'a>(&self, rows: &'a [Vec<usize>]) -> &'a [Vec<usize>] {
        let per = self.config.batch_size;
        let start = (self.collective.rank() * per).min(rows.len());
        &rows[start..(start + per).min(rows.len())]
    }

    /// Zero gradients for every adapter (a rank without rows in a micro-batch).
    pub(super) fn zero_grads(&self) -> Vec<(Tensor<2>, Tensor<2>)> {
        self.model
            .adapters()
            .iter()
            .map(|(_, a)| {
                (
                    Tensor::zeros(a.a.dims(), &self.model.device),
                    Tensor::zeros(a.b.dims(), &self.model.device),
                )
            })
            .collect()
    }

    /// Values of every adapter's A and B, in model order, on the host.
    fn adapter_values(&self) -> Vec<f32> {
        let mut values = Vec::new();
        for (_, a) in self.model.adapters() {
            values.extend(host_values(a.a.clone()));
            values.extend(host_values(a.b.clone()));
        }
        values
    }

    /// Every rank takes rank 0's adapter values (fresh, continued or resumed).
    pub(super) fn sync_adapters(&mut self) {
        if self.world() == 1 {
            return;
        }
        let mut values = self.adapter_values();
        broadcast_f32(self.collective.as_ref(), &mut values, 0);
        let device = self.model.device.clone();
        let mut at = 0;
        let mut take = |shape: [usize; 2]| {
            let n = shape[0] * shape[1];
            let data = TensorData::new(values[at..at + n].to_vec(), shape);
            at += n;
            Tensor::<2>::from_data(data, &device)
        };
        for (_, linear) in self.model.linears_mut() {
            if let Some(adapter) = &mut linear.lora {
                adapter.a = take(adapter.a.dims());
                adapter.b = take(adapter.b.dims());
            }
        }
    }

    /// A fingerprint of what this rank loaded: the settings, the model's configuration and
    /// adapter shapes, and every token and label of the data.
    pub(super) fn fingerprint(&self) -> u64 {
        let mut f = Fingerprint::default();
        f.add(self.config.to_toml().as_bytes());
        f.add(format!("{:?}", self.model.config).as_bytes());
        f.add(format!("{:?}", self.model.adapter_sizes()).as_bytes());
        let pairs = self
            .pairs
            .iter()
            .flat_map(|run| run.train.iter().chain(&run.eval));
        let pair_examples = pairs.flat_map(|p| [&p.chosen, &p.rejected]);
        for e in self.train.iter().chain(&self.eval).chain(pair_examples) {
            f.add_u32s(&e.ids);
            f.add(bytemuck::cast_slice(&e.labels));
        }
        f.value()
    }

    /// A fingerprint of the adapter values (to check that the ranks still agree).
    fn adapter_fingerprint(&self) -> u64 {
        let mut f = Fingerprint::default();
        f.add(bytemuck::cast_slice(&self.adapter_values()));
        f.value()
    }

    /// Refuse to go on unless every rank holds the same adapter values as rank 0.
    pub fn check_ranks_agree(&self) -> Result<()> {
        let ranks =
            crate::distributed::differing(self.collective.as_ref(), self.adapter_fingerprint());
        if ranks.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "the adapters of rank {ranks:?} differ from rank 0's after step {}: the ranks \
             diverged (a bug: please report it with the command)",
            self.position.step
        )))
    }

    /// Sum the step's gradients and counts over the ranks, in one all-reduce; `stop` is this
    /// rank's request to stop after the step, returned as any rank's.
    pub(super) fn reduce(&mut self, g: StepGradients, stop: bool) -> (StepGradients, bool) {
        if self.world() == 1 {
            return (g, stop);
        }
        let start = Instant::now();
        let shapes: Vec<([usize; 2], [usize; 2])> =
            g.grads.iter().map(|(a, b)| (a.dims(), b.dims())).collect();
        let mut flat = Vec::with_capacity(self.reduce_stats.bytes_per_step / 4);
        for (a, b) in g.grads {
            flat.extend(host_values(a));
            flat.extend(host_values(b));
        }
        flat.extend([
            g.loss_sum as f32,
            g.targets as f32,
            g.tokens as f32,
            g.positions as f32,
            f32::from(u8::from(stop)),
        ]);
        flat.extend(g.preference.to_array().map(|v| v as f32));
        self.collective.all_reduce_sum(&mut flat);
        let counts = flat.split_off(flat.len() - COUNTS);
        let device = self.model.device.clone();
        let mut at = 0;
        let mut take = |shape: [usize; 2]| {
            let n = shape[0] * shape[1];
            let t =
                Tensor::<2>::from_data(TensorData::new(flat[at..at + n].to_vec(), shape), &device);
            at += n;
            t
        };
        let grads = shapes
            .into_iter()
            .map(|(a, b)| (take(a), take(b)))
            .collect();
        self.reduce_stats.steps += 1;
        self.reduce_stats.seconds += start.elapsed().as_secs_f64();
        let mut preference = [0f64; 7];
        for (p, &c) in preference.iter_mut().zip(&counts[5..]) {
            *p = f64::from(c);
        }
        let reduced = StepGradients {
            grads,
            loss_sum: f64::from(counts[0]),
            targets: counts[1].round() as usize,
            tokens: counts[2].round() as u64,
            positions: counts[3].round() as u64,
            preference: PreferenceSums::from_array(preference),
        };
        (reduced, counts[4] > 0.0)
    }

    /// Bytes a rank sends in a step's all-reduce: every adapter value and the counts, as f32.
    pub fn reduce_bytes_per_step(&self) -> usize {
        step_reduce_bytes(self.model.adapter_sizes().iter().sum::<usize>() as u64) as usize
    }

    /// The all-reduces of the run so far.
    pub fn reduce_stats(&self) -> ReduceStats {
        self.reduce_stats
    }

    /// The examples of `examples` this rank evaluates.
    pub(super) fn my_share<T: Clone>(&self, items: &[T]) -> Vec<T> {
        share(items.len(), self.collective.rank(), self.world())
            .map(|i| items[i].clone())
            .collect()
    }

    /// Sum `values` over the ranks (evaluation's sums and counts).
    pub(super) fn sum_over_ranks(&self, values: &mut [f64]) {
        self.collective.all_reduce_sum_f64(values);
    }

    /// The run's header line on several ranks: the global batch and the all-reduce's size.
    pub(super) fn parallel_header(&self) -> String {
        let c = &self.config;
        let values = self.model.adapter_sizes().iter().sum::<usize>();
        format!(
            "data parallel on {} ranks: --batch-size {} x --grad-accum {} x {} ranks = {} rows \
             a step; one all-reduce a step of {} ({values} adapter gradients + {COUNTS} counts, \
             f32)",
            self.world(),
            c.batch_size,
            c.grad_accum,
            self.world(),
            c.batch_size * c.grad_accum * self.world(),
            megabytes(self.reduce_stats.bytes_per_step),
        )
    }

    /// The run's closing line on several ranks: the ranks agree, and the all-reduce's time.
    pub(super) fn parallel_footer(&self) -> String {
        let s = self.reduce_stats;
        format!(
            "all {} ranks hold the same adapter; all-reduce: {:.1} ms a step on average over {} \
             steps ({} a step)",
            self.world(),
            1000.0 * s.seconds / s.steps.max(1) as f64,
            s.steps,
            megabytes(s.bytes_per_step),
        )
    }

    /// The collective the run reduces with.
    pub fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }
}
