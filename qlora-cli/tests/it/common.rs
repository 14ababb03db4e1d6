//! Running the `qlora` binary the way a user does.

use std::process::Command;

/// Exit code, stdout and stderr of `qlora ARGS`.
pub fn qlora(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(args)
        .output()
        .expect("run qlora");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
