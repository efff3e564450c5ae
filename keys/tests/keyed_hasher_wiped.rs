//! `KeyedHasher` leaves neither its key nor its buffered input behind when it drops, where
//! blake3's own `Hasher` leaves both: this test binary runs on an allocator that looks at
//! each block of the hasher's size as it is freed.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cleave_keys::{Key32, KeyedHasher};

/// The block size under watch: a hasher's (set by the test before it allocates one).
static WATCHED: AtomicUsize = AtomicUsize::new(usize::MAX);
static FREED_CLEAN: AtomicUsize = AtomicUsize::new(0);
static FREED_WITH_SECRET: AtomicUsize = AtomicUsize::new(0);

/// The key: no run of it occurs by chance in a hasher's other fields.
const KEY: [u8; 32] = *b"\x8f\x13\xc7\x5a\xe2\x91\x0b\x6d\x44\xfa\x27\xb8\x3e\x9c\x71\xd5\
\x06\xab\x58\xe3\x1f\x92\xc4\x7d\xb1\x3a\x6e\xf0\x25\x89\xd7\x4c";
/// Input that stays in the hasher's 64-byte block buffer (under one block).
const INPUT: [u8; 40] = [0xC3; 40];

fn holds_secret(block: &[u8]) -> bool {
    let has = |needle: &[u8]| block.windows(needle.len()).any(|w| w == needle);
    has(&KEY[..16]) || has(&KEY[16..]) || has(&INPUT[..16])
}

struct Spy;

// SAFETY: forwards to the system allocator; on dealloc it only reads the block being freed,
// which is still allocated and `layout.size()` bytes long.
unsafe impl GlobalAlloc for Spy {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() == WATCHED.load(Ordering::SeqCst) {
            let bytes = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            let counter = if holds_secret(bytes) { &FREED_WITH_SECRET } else { &FREED_CLEAN };
            counter.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Spy = Spy;

#[test]
fn a_dropped_hasher_holds_neither_key_nor_input_and_blake3s_own_does() {
    assert_eq!(std::mem::size_of::<KeyedHasher>(), std::mem::size_of::<blake3::Hasher>());
    let mut key_bytes = KEY;
    let key = Key32::from_bytes(&mut key_bytes);
    WATCHED.store(std::mem::size_of::<KeyedHasher>(), Ordering::SeqCst);
    let (clean, secret) = (FREED_CLEAN.load(Ordering::SeqCst), FREED_WITH_SECRET.load(Ordering::SeqCst));

    // Control: the spy sees what blake3's hasher leaves behind.
    let mut plain = Box::new(blake3::Hasher::new_keyed(&KEY));
    plain.update(&INPUT);
    drop(std::hint::black_box(plain));
    assert_eq!(FREED_WITH_SECRET.load(Ordering::SeqCst), secret + 1, "the spy must see blake3's hasher's key or input");

    let mut ours = Box::new(KeyedHasher::new(&key));
    ours.update(&INPUT);
    drop(std::hint::black_box(ours));
    assert_eq!(FREED_WITH_SECRET.load(Ordering::SeqCst), secret + 1, "KeyedHasher was freed holding its key or input");
    assert_eq!(FREED_CLEAN.load(Ordering::SeqCst), clean + 1);

    // Derivation mode: the key material is the input.
    let mut derive = Box::new(KeyedHasher::derive("cleave keys test 2026-11 derive"));
    derive.update(&KEY);
    drop(std::hint::black_box(derive));
    assert_eq!(FREED_WITH_SECRET.load(Ordering::SeqCst), secret + 1, "a deriving KeyedHasher was freed holding the key material");
    assert_eq!(FREED_CLEAN.load(Ordering::SeqCst), clean + 2);
}
