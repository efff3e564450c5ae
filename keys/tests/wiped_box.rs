//! `WipedBox` really leaves zeros behind: this test binary runs on an allocator that looks
//! at each block of one odd size as it is freed.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use cleave_keys::WipedBox;

/// A size nothing else in this test allocates.
const WATCHED: usize = 4093;
static FREED_ZEROED: AtomicUsize = AtomicUsize::new(0);
static FREED_DIRTY: AtomicUsize = AtomicUsize::new(0);

struct Spy;

// SAFETY: forwards to the system allocator; on dealloc it only reads the block being freed,
// which is still allocated and `layout.size()` bytes long.
unsafe impl GlobalAlloc for Spy {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() == WATCHED {
            let bytes = unsafe { std::slice::from_raw_parts(ptr, WATCHED) };
            let counter = if bytes.iter().all(|&b| b == 0) { &FREED_ZEROED } else { &FREED_DIRTY };
            counter.fetch_add(1, Ordering::SeqCst);
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Spy = Spy;

/// Stands for a foreign key type: key bytes inline, no zeroize of its own.
struct ForeignKey([u8; WATCHED]);

#[test]
fn the_block_is_zero_when_freed_and_a_plain_box_is_not() {
    let (zeroed, dirty) = (FREED_ZEROED.load(Ordering::SeqCst), FREED_DIRTY.load(Ordering::SeqCst));
    // Control: the spy sees what a plain Box leaves behind.
    drop(std::hint::black_box(Box::new(ForeignKey([0xA5; WATCHED]))));
    assert_eq!(FREED_DIRTY.load(Ordering::SeqCst), dirty + 1, "the spy must see a plain Box's key bytes");

    let k = WipedBox::new_with(|| ForeignKey([0xA5; WATCHED]));
    assert_eq!(std::hint::black_box(&k.0)[WATCHED - 1], 0xA5);
    drop(k);
    assert_eq!(FREED_ZEROED.load(Ordering::SeqCst), zeroed + 1, "the WipedBox's block was freed with key bytes in it");
    assert_eq!(FREED_DIRTY.load(Ordering::SeqCst), dirty + 1);
}
