//! [`WipedBox`]: a heap slot for a value of a foreign type that holds key material and
//! cannot zeroize itself, wiped where it lies when dropped.
//!
//! Why this exists: ring's AEAD keys (`ring::aead::LessSafeKey`) seal the clinical store's
//! blobs twice as fast as RustCrypto's (bench/README.md, "C-STORE"), but ring keeps its key
//! schedule inline in the key value and neither zeroizes it nor implements `Zeroize`. Held
//! in a `WipedBox`, such a value lives in one heap block for its whole life (it is never
//! moved, so leaves no copies behind as it is passed around) and that block is overwritten
//! with zeros after the value's own `Drop` has run and before the block is freed.
//!
//! What it cannot do: wipe copies made before the value reached the box (build it inside
//! [`WipedBox::new_with`] so that the construction's stack frames are the only ones), or
//! state the value's own code keeps elsewhere. THREATS.md T3 lists what stays readable.
//!
//! The only `unsafe` code in this crate, kept to this one function's worth of pointer work.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::ops::Deref;

use zeroize::Zeroize;

/// A boxed `T` whose memory is zeroed after `T` is dropped. Derefs to `&T` only (no
/// `DerefMut`, so the value cannot be swapped out of the box); no `Debug`, no `Clone`.
pub struct WipedBox<T> {
    // Always `Some` until `drop`, which takes it.
    inner: Option<Box<T>>,
}

impl<T> WipedBox<T> {
    /// Builds the value with `make` and moves it into its heap slot at once.
    pub fn new_with(make: impl FnOnce() -> T) -> Self {
        WipedBox { inner: Some(Box::new(make())) }
    }
}

impl<T> Deref for WipedBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // `inner` is only `None` inside `drop`.
        self.inner.as_deref().expect("a WipedBox holds its value until dropped")
    }
}

impl<T> Drop for WipedBox<T> {
    fn drop(&mut self) {
        let Some(boxed) = self.inner.take() else { return };
        let raw: *mut T = Box::into_raw(boxed);
        // SAFETY:
        // - `raw` comes from `Box::into_raw`, so it is valid, aligned, and owned here alone.
        // - `drop_in_place` runs `T`'s destructor exactly once; afterwards the block holds
        //   no live `T`, only `size_of::<T>()` bytes of storage.
        // - A `[MaybeUninit<u8>]` over those bytes is valid for any contents, and zeroize's
        //   impl for it writes with volatile stores the compiler may not elide.
        // - `Box<MaybeUninit<T>>` has the layout of `Box<T>`, so rebuilding it from the same
        //   pointer frees the block with the layout it was allocated with, without running
        //   `T`'s destructor a second time. Zero-sized `T`: a dangling pointer and an empty
        //   slice, both allowed, and a box that frees nothing.
        unsafe {
            std::ptr::drop_in_place(raw);
            std::slice::from_raw_parts_mut(raw.cast::<MaybeUninit<u8>>(), std::mem::size_of::<T>()).zeroize();
            drop(Box::from_raw(raw.cast::<MaybeUninit<T>>()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static DROPS: AtomicUsize = AtomicUsize::new(0);

    struct Counted([u8; 40]);
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn derefs_to_the_value_and_drops_it_exactly_once() {
        let before = DROPS.load(Ordering::SeqCst);
        let b = WipedBox::new_with(|| Counted([7u8; 40]));
        assert_eq!(b.0, [7u8; 40]);
        drop(b);
        assert_eq!(DROPS.load(Ordering::SeqCst), before + 1);
    }

    #[test]
    fn zero_sized_values_are_fine() {
        let b = WipedBox::new_with(|| ());
        assert_eq!(*b, ());
        drop(b);
    }
}
