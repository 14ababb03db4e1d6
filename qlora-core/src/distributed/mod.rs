//! Training on several processes at once (one a device, on one machine or many): the
//! operations data parallelism needs from a communication library ([`Collective`]), the one
//! process of an ordinary run ([`Single`]), MPI's implementation (feature `mpi`), and how a
//! process learns which launcher started it ([`launch`]).
//!
//! Every rank holds the 4-bit base model and a replica of the adapters; each optimizer step's
//! rows are dealt across the ranks, and the adapters' gradients are summed with one all-reduce
//! a step. An NCCL implementation of [`Collective`] (GPU buffers reduced on the GPUs) is the
//! planned next one: MPI broadcasts NCCL's 128-byte unique id, and each rank joins with
//! cudarc's `Comm::from_rank` on the device cubecl-cuda uses. It is not built yet: on the GPU
//! backends the gradients go through host memory.

pub mod launch;
#[cfg(feature = "mpi")]
pub mod mpi;

use std::rc::Rc;

use crate::error::Result;

/// What data-parallel training needs from a communication library. Every rank calls the
/// same operations in the same order (they are collective); a call returns when every rank
/// has made it.
pub trait Collective {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// Processes in the run.
    fn world(&self) -> usize;
    /// This process's rank among those on its machine (which device it takes).
    fn local_rank(&self) -> usize;
    /// Processes on this machine.
    fn local_world(&self) -> usize;
    /// Replace `values` on every rank by their sum over the ranks (f32: gradients).
    fn all_reduce_sum(&self, values: &mut [f32]);
    /// Replace `values` on every rank by their sum over the ranks (f64: counts and metrics).
    fn all_reduce_sum_f64(&self, values: &mut [f64]);
    /// Copy `bytes` of rank `root` into `bytes` of every other rank (same length everywhere).
    fn broadcast(&self, bytes: &mut [u8], root: usize);
    /// Wait until every rank gets here.
    fn barrier(&self);
    /// End every process of the run with `code` (a rank that failed calls it, so that the
    /// others do not wait for it forever).
    fn abort(&self, code: i32) -> !;
}

/// The one process of a run on one device.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn local_world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
    fn broadcast(&self, _: &mut [u8], _: usize) {}
    fn barrier(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The collective of this process: MPI's when a launcher started several processes (and the
/// build has MPI), else [`Single`]. An environment that launched several processes some other
/// way (torchrun; or `mpirun` for a build without MPI) is an error that says how to launch, so
/// that N processes never run N independent copies of one run into the same output.
pub fn init() -> Result<Rc<dyn Collective>> {
    let env = launch::LaunchEnv::read();
    env.refuse_unsupported()?;
    #[cfg(feature = "mpi")]
    if env.mpi_world.is_some() || env.slurm_tasks.is_some_and(|n| n > 1) {
        let collective = mpi::MpiCollective::init()?;
        env.check(&collective)?;
        return Ok(Rc::new(collective));
    }
    Ok(Rc::new(Single))
}

/// What the all-reduces of a run cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReduceStats {
    /// Bytes each rank contributes to a step's all-reduce.
    pub bytes_per_step: usize,
    /// Steps reduced.
    pub steps: u64,
    /// Seconds spent in them (host staging included).
    pub seconds: f64,
}

/// Counts a training step's all-reduce carries after the adapter gradients: loss sum, target
/// tokens, tokens, positions, whether a rank was asked to stop, and a preference run's seven
/// metric sums.
pub const STEP_COUNTS: usize = 12;

/// Bytes each rank sends in a training step's all-reduce: every adapter gradient and the
/// step's counts, as f32.
pub fn step_reduce_bytes(adapter_values: u64) -> u64 {
    4 * (adapter_values + STEP_COUNTS as u64)
}

/// Make a panic on this rank end every rank of the run (after the panic's message), as a
/// failed rank must: the others would wait for it forever. Without MPI it changes nothing.
pub fn abort_ranks_on_panic(rank: usize) {
    #[cfg(feature = "mpi")]
    {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            crate::stderr::line(format_args!(
                "error: rank {rank} panicked; ending every rank"
            ));
            mpi::abort_world(101);
        }));
    }
    let _ = rank;
}

/// Share this machine's cores among the `local_world` processes on it (the CPU backend's
/// threads), unless `RAYON_NUM_THREADS` already says how many each takes: what torchrun does
/// with `OMP_NUM_THREADS`. Returns the threads each process now uses, if it set them. Call it
/// before anything computes.
pub fn share_cpu_threads(local_world: usize) -> Option<usize> {
    if local_world <= 1 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / local_world).max(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok()
        .map(|()| threads)
}

/// The bytes of `values` (f32, native order) for [`Collective::broadcast`].
pub fn broadcast_f32(collective: &dyn Collective, values: &mut [f32], root: usize) {
    collective.broadcast(bytemuck::cast_slice_mut(values), root);
}

/// The ranks whose `fingerprint` differs from rank 0's (empty when all agree): rank 0's is
/// broadcast and each rank says whether its own matches, so every rank learns the same list
/// and they refuse (or go on) together.
pub fn differing(collective: &dyn Collective, fingerprint: u64) -> Vec<usize> {
    if collective.world() == 1 {
        return Vec::new();
    }
    let mut root = fingerprint.to_le_bytes();
    collective.broadcast(&mut root, 0);
    let mut differs = vec![0f64; collective.world()];
    differs[collective.rank()] = f64::from(u8::from(u64::from_le_bytes(root) != fingerprint));
    collective.all_reduce_sum_f64(&mut differs);
    (0..differs.len()).filter(|&r| differs[r] != 0.0).collect()
}

/// A stable 64-bit fingerprint (FNV-1a) of byte strings: the same on every machine and
/// build, unlike `std`'s hasher.
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    /// Mix in `bytes`, then their length (so that `ab`+`c` differs from `a`+`bc`).
    pub fn add(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().chain(&(bytes.len() as u64).to_le_bytes()) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    /// Mix in token ids.
    pub fn add_u32s(&mut self, values: &[u32]) {
        self.add(bytemuck::cast_slice(values));
    }

    /// The fingerprint so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Which of `n` items rank `rank` of `world` takes when work is split across ranks: every
/// `world`-th, starting at its rank.
pub fn share(n: usize, rank: usize, world: usize) -> impl Iterator<Item = usize> {
    (rank..n).step_by(world.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_where_bytes_split() {
        let of = |parts: &[&[u8]]| {
            let mut f = Fingerprint::default();
            parts.iter().for_each(|p| f.add(p));
            f.value()
        };
        assert_eq!(of(&[b"ab", b"c"]), of(&[b"ab", b"c"]));
        assert_ne!(of(&[b"ab", b"c"]), of(&[b"a", b"bc"]));
        // FNV-1a's published value for "a", before the length is mixed in.
        let mut f = Fingerprint::default();
        f.0 = (f.0 ^ u64::from(b'a')).wrapping_mul(0x100_0000_01b3);
        assert_eq!(f.value(), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn shares_cover_every_item_once() {
        let mut all: Vec<usize> = (0..3).flat_map(|r| share(10, r, 3)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(share(1, 1, 2).count(), 0);
    }
}
