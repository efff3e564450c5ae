//! The allocator the broker process runs on: every heap block is wiped when it is freed.
//!
//! Our own secret types zeroize on drop, but most bytes of a request are not ours: hyper's
//! read buffers, the TLS record buffers, the `serde_json` values a body is parsed into,
//! the response JSON. Freed without wiping, they stay readable in the heap until reused;
//! the threat model's T3 attack found a registered family name five times in an idle
//! broker's memory that way. Wiping on free covers all of them at once, including memory
//! a growing `Vec` leaves behind when it moves (reallocation goes through alloc, copy and
//! a wiping free).
//!
//! The wrapper is `secmem-alloc`'s `ZeroizeAlloc` over the system allocator, so this crate
//! stays free of `unsafe`. Binaries opt in with one line:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: broker::ZeroingAllocator = broker::zeroing_allocator();
//! ```
//!
//! What it does not cover, written down in THREATS.md (T3): memory that is still in use
//! (the master key, an open store's keys until its idle close), SQLite's own page cache
//! (C code using libc directly; it holds only sealed fields and blind indexes), and kernel
//! socket buffers.
use std::alloc::System;

use secmem_alloc::zeroizing_alloc::ZeroizeAlloc;

/// The system allocator, wiping each block on free.
pub type ZeroingAllocator = ZeroizeAlloc<System>;

/// The allocator for `#[global_allocator]` in the broker's binaries.
pub const fn zeroing_allocator() -> ZeroingAllocator {
    ZeroizeAlloc::new(System)
}
