//! Heap measurements under a counting allocator: a binary of their own, since the allocator
//! counts every thread of the process; each test holds `support::alloc::alone()`.

use support::alloc::Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

mod checkpointing;
mod fuzz_readers;
mod load_memory;
mod lora_memory;
mod merge_memory;
mod optimizer_memory;
mod plan_memory;
