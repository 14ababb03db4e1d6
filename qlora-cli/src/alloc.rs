//! The binary's allocator, and what happens when it fails: an allocation the machine cannot
//! satisfy (a memory limit, `ulimit -v`, no overcommit) ends the process with a one-line error
//! and exit code 1, where Rust would print `memory allocation of N bytes failed` and abort
//! (SIGABRT, maybe a core dump). Checkpoints are written whole or not at all, so the run
//! resumes.

use std::alloc::{GlobalAlloc, Layout};

/// The allocator underneath: the feature `mimalloc` or `jemalloc` picks one, else the system's.
#[cfg(feature = "mimalloc")]
const INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
const INNER: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(not(any(feature = "mimalloc", feature = "jemalloc")))]
const INNER: std::alloc::System = std::alloc::System;

/// An allocator whose failures end the process with a message.
pub struct Allocator;

/// Say that `size` bytes could not be allocated and exit 1, allocating nothing.
#[cfg(unix)]
fn out_of_memory(size: usize) -> ! {
    let mut digits = [0u8; 20];
    let (value, unit) = if size >= 1 << 20 {
        (size >> 20, " MiB".as_bytes())
    } else {
        (size, " bytes".as_bytes())
    };
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let parts: [&[u8]; 4] = [
        b"error: out of memory: allocating ",
        &digits[at..],
        unit,
        b" failed (the machine, or this process's memory limit, has no more); `qlora plan` \
          shows what the run needs and the settings that lower it; a run continues from its \
          last checkpoint with --resume\n",
    ];
    for part in parts {
        // SAFETY: writes initialized bytes to stderr; nothing here allocates.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: ends the process without running destructors or atexit handlers, which may
    // allocate.
    unsafe { libc::_exit(1) }
}

/// A failed allocation goes on to Rust's handler where no message can be written safely.
#[cfg(not(unix))]
fn out_of_memory(_size: usize) {}

fn checked(pointer: *mut u8, size: usize) -> *mut u8 {
    if pointer.is_null() {
        out_of_memory(size);
    }
    pointer
}

// SAFETY: every call goes to `INNER` unchanged; only a null result is acted on.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        checked(unsafe { INNER.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        checked(unsafe { INNER.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { INNER.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        checked(unsafe { INNER.realloc(pointer, layout, size) }, size)
    }
}
