//! [`Collective`] over MPI (the `mpi` crate on the system's Open MPI, MPICH or Intel MPI): what
//! `mpirun`, `mpiexec` and `srun --mpi=pmix` start.

use std::sync::atomic::{AtomicBool, Ordering};

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::Collective;
use crate::error::{Error, Result};

/// Values an all-reduce call sends at most: bigger buffers go in pieces, so the receive copy
/// MPI needs stays small (64 MiB of f32) and counts stay within MPI's `int`.
const PIECE: usize = 16 << 20;

/// Set once MPI is up: a panic then ends every rank ([`abort_world`]).
static UP: AtomicBool = AtomicBool::new(false);

/// MPI's world, and the ranks on this machine.
pub struct MpiCollective {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    /// Dropped last (fields drop in order): finalizes MPI.
    _universe: Universe,
}

impl MpiCollective {
    /// Join the processes the launcher started (`MPI_Init_thread`, funneled: only the main
    /// thread talks to MPI).
    pub fn init() -> Result<Self> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::invalid("MPI was initialized twice in one process"))?;
        let world = universe.world();
        let rank = world.rank() as usize;
        let local = world.split_shared(rank as i32);
        UP.store(true, Ordering::SeqCst);
        Ok(MpiCollective {
            rank,
            size: world.size() as usize,
            local_rank: local.rank() as usize,
            local_size: local.size() as usize,
            world,
            _universe: universe,
        })
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.size
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn local_world(&self) -> usize {
        self.local_size
    }

    fn all_reduce_sum(&self, values: &mut [f32]) {
        for piece in values.chunks_mut(PIECE) {
            let send = piece.to_vec();
            self.world
                .all_reduce_into(&send[..], piece, SystemOperation::sum());
        }
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) {
        for piece in values.chunks_mut(PIECE) {
            let send = piece.to_vec();
            self.world
                .all_reduce_into(&send[..], piece, SystemOperation::sum());
        }
    }

    fn broadcast(&self, bytes: &mut [u8], root: usize) {
        let root = self.world.process_at_rank(root as i32);
        for piece in bytes.chunks_mut(PIECE) {
            root.broadcast_into(piece);
        }
    }

    fn barrier(&self) {
        self.world.barrier();
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// End every process of the MPI job if MPI is up (`MPI_Abort` on the world); otherwise do
/// nothing. For a panic hook, which has no collective at hand.
pub fn abort_world(code: i32) {
    if UP.load(Ordering::SeqCst) {
        SimpleCommunicator::world().abort(code);
    }
}
