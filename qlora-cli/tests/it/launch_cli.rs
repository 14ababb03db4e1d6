//! Launches that would start independent copies of one run are refused with how to launch.

use std::process::Command;

/// `qlora train` with launcher variables set; its exit code and stderr.
fn train_under(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(["train", "--model", "m", "--data", "d", "--out", "o"])
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn torchrun_is_refused_with_the_mpirun_command() {
    let (code, stderr) = train_under(&[("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("mpirun -np 2 qlora train"), "{stderr}");
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_run_as_one_of_several_ranks() {
    let (code, stderr) =
        train_under(&[("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_RANK", "1")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("built without MPI") && stderr.contains("--features mpi"),
        "{stderr}"
    );
}
