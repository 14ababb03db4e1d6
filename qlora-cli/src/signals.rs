//! Ctrl-C (SIGINT) and SIGTERM, what schedulers send before preemption.
//!
//! While `train` runs, the first signal asks the run to stop after its step and save a
//! checkpoint; the command then exits 130 (SIGINT) or 143 (SIGTERM), so `train && merge` does
//! not go on. A second signal exits at once. Any other command removes the outputs it was
//! staging and exits with the same codes.
//!
//! On Unix the handler only writes the signal's number to a pipe (all a handler may safely do);
//! a thread reads it and acts. Elsewhere Ctrl-C goes through the `ctrlc` crate.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use qlora_core::staged_dir::remove_all_in_progress;

/// The first signal received (0: none).
static RECEIVED: AtomicI32 = AtomicI32::new(0);
/// Set while a training run can stop cleanly at a step boundary.
static TRAINING: OnceLock<Arc<AtomicBool>> = OnceLock::new();

#[cfg(not(unix))]
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

/// The exit code of a process stopped by `signal` (128 + its number, as shells report it).
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

/// The signal that stopped a run, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Route the signals of a training run to `interrupt` (checked after every step).
pub fn set_training(interrupt: Arc<AtomicBool>) {
    let _ = TRAINING.set(interrupt);
}

fn handle(signal: i32) {
    let first = RECEIVED
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok();
    match TRAINING.get() {
        Some(interrupt) if first => {
            interrupt.store(true, Ordering::SeqCst);
            let what = if signal == SIGTERM {
                "terminated"
            } else {
                "interrupted"
            };
            eprintln!("\n{what}: saving a checkpoint after this step (Ctrl-C again to quit now)");
        }
        _ => {
            remove_all_in_progress();
            eprintln!("\nstopped by a signal; unfinished outputs were removed");
            std::process::exit(exit_code(signal));
        }
    }
}

#[cfg(unix)]
mod unix {
    use std::sync::atomic::{AtomicI32, Ordering};

    /// Write end of the pipe the handler signals through.
    static PIPE: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_signal(signal: libc::c_int) {
        let byte = signal as u8;
        // SAFETY: write(2) is async-signal-safe; the fd stays open for the process's life.
        unsafe {
            libc::write(PIPE.load(Ordering::Relaxed), (&byte as *const u8).cast(), 1);
        }
    }

    pub fn install() -> std::io::Result<()> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) returns.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        PIPE.store(fds[1], Ordering::Relaxed);
        let read = fds[0];
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                loop {
                    let mut byte = 0u8;
                    // SAFETY: reads one byte into `byte` from the pipe this thread owns.
                    let n = unsafe { libc::read(read, (&mut byte as *mut u8).cast(), 1) };
                    if n == 1 {
                        super::handle(i32::from(byte));
                    } else if n < 0
                        && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                    {
                        return;
                    }
                }
            })?;
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: installs a handler that only calls write(2).
            let previous =
                unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
            if previous == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Install the handlers (once, at start).
pub fn install() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        unix::install()
    }
    #[cfg(not(unix))]
    {
        ctrlc::set_handler(|| handle(SIGINT)).map_err(std::io::Error::other)
    }
}
