//! What a launcher tells a process through its environment: `mpirun` (Open MPI), MPICH's and
//! Intel MPI's `mpiexec`, SLURM's `srun`, and torchrun (which qlora does not use).

use super::Collective;
use crate::error::{Error, Result};

/// The launcher variables of this process that say how many processes were started and which
/// one this is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Processes an MPI launcher started (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`); `Some(0)` when
    /// only a PMIx rank says MPI started it.
    pub mpi_world: Option<usize>,
    /// This process's rank on its machine, as the MPI launcher numbers it
    /// (`OMPI_COMM_WORLD_LOCAL_RANK`, `MPI_LOCALRANKID`).
    pub mpi_local_rank: Option<usize>,
    /// Tasks of the SLURM job step (`SLURM_STEP_NUM_TASKS`, set by `srun`).
    pub slurm_tasks: Option<usize>,
    /// This task's rank on its node (`SLURM_LOCALID`).
    pub slurm_local_rank: Option<usize>,
    /// torchrun's `WORLD_SIZE`.
    pub torch_world: Option<usize>,
}

impl LaunchEnv {
    /// This process's variables.
    pub fn read() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The variables as `var` reports them.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let number = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| var(n).and_then(|v| v.trim().parse::<usize>().ok()))
        };
        let mpi_world =
            number(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]).or_else(|| var("PMIX_RANK").map(|_| 0));
        LaunchEnv {
            mpi_world,
            mpi_local_rank: number(&["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"]),
            slurm_tasks: number(&["SLURM_STEP_NUM_TASKS"]),
            slurm_local_rank: number(&["SLURM_LOCALID"]),
            torch_world: number(&["WORLD_SIZE"]),
        }
    }

    /// Processes the launcher started, as far as the variables tell.
    pub fn launched(&self) -> usize {
        self.mpi_world
            .filter(|&n| n > 0)
            .or(self.slurm_tasks)
            .unwrap_or(1)
    }

    /// Refuse launches that would run independent copies of one run: torchrun's (no MPI
    /// variables, `WORLD_SIZE` > 1), and any multi-process launch of a build without MPI.
    pub fn refuse_unsupported(&self) -> Result<()> {
        let by_mpi = self.mpi_world.is_some() || self.slurm_tasks.is_some();
        if let Some(n) = self.torch_world.filter(|&n| n > 1 && !by_mpi) {
            return Err(Error::invalid(format!(
                "WORLD_SIZE={n} is set (torchrun?), but qlora trains on several processes \
                 through MPI: launch with `mpirun -np {n} qlora train ...` (or `srun --mpi=pmix \
                 qlora train ...` under SLURM), from a build with `--features mpi`"
            )));
        }
        let n = self.launched();
        if !cfg!(feature = "mpi") && (n > 1 || self.mpi_world == Some(0)) {
            return Err(Error::invalid(format!(
                "{} processes were launched, but this qlora was built without MPI and each would \
                 train on its own into the same --out: rebuild with `--features mpi` (it needs \
                 Open MPI: libopenmpi-dev), or run one process",
                if n > 1 {
                    n.to_string()
                } else {
                    "several".into()
                }
            )));
        }
        Ok(())
    }

    /// Check what MPI reports against the launcher's variables: the same number of processes
    /// (`srun` without `--mpi=pmix` starts processes MPI does not join), the same local rank.
    pub fn check(&self, collective: &dyn Collective) -> Result<()> {
        let launched = self.launched();
        if launched != collective.world() {
            return Err(Error::invalid(format!(
                "the launcher started {launched} processes, but MPI joined {} of them (under \
                 SLURM launch with `srun --mpi=pmix`; with mpirun, use the mpirun of the MPI \
                 qlora was built with)",
                collective.world()
            )));
        }
        for (name, value) in [
            (
                "OMPI_COMM_WORLD_LOCAL_RANK/MPI_LOCALRANKID",
                self.mpi_local_rank,
            ),
            ("SLURM_LOCALID", self.slurm_local_rank),
        ] {
            if let Some(v) = value.filter(|&v| v != collective.local_rank()) {
                return Err(Error::invalid(format!(
                    "rank {}: {name} is {v}, but MPI's shared-memory split makes it local rank \
                     {}: the launcher and MPI disagree on which processes share a machine",
                    collective.rank(),
                    collective.local_rank()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> LaunchEnv {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LaunchEnv::from_vars(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn torchrun_is_refused_with_the_mpirun_command() {
        let err = env(&[("WORLD_SIZE", "4"), ("LOCAL_RANK", "1")])
            .refuse_unsupported()
            .unwrap_err()
            .to_string();
        assert!(err.contains("mpirun -np 4 qlora train"), "{err}");
        // One process under torchrun is just one process.
        env(&[("WORLD_SIZE", "1")]).refuse_unsupported().unwrap();
        env(&[]).refuse_unsupported().unwrap();
    }

    #[test]
    fn launchers_are_read() {
        let open_mpi = env(&[
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]);
        assert_eq!(open_mpi.launched(), 2);
        assert_eq!(open_mpi.mpi_local_rank, Some(1));
        let srun = env(&[("SLURM_STEP_NUM_TASKS", "8"), ("SLURM_LOCALID", "3")]);
        assert_eq!(srun.launched(), 8);
        assert_eq!(env(&[("PMI_SIZE", "3")]).launched(), 3);
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn a_build_without_mpi_refuses_several_processes() {
        let err = env(&[("OMPI_COMM_WORLD_SIZE", "2")])
            .refuse_unsupported()
            .unwrap_err()
            .to_string();
        assert!(err.contains("--features mpi"), "{err}");
        env(&[("OMPI_COMM_WORLD_SIZE", "1")])
            .refuse_unsupported()
            .unwrap();
    }
}
