//! State the interpreter lock already serializes.
//!
//! The engine's state is only touched by threads attached to the
//! interpreter, and no Python code runs while it is borrowed (a borrow never
//! outlives the Rust code that took it). With the GIL — which the module
//! declares it uses, so a free-threaded interpreter turns the GIL on when it
//! imports oxloop — at most one thread is attached at a time, so borrows
//! never overlap and need no lock: a mutex here cost two atomic
//! read-modify-writes per borrow, several per callback. A second borrow
//! (Python code re-entering the loop while the state is borrowed, a bug)
//! panics instead of aliasing.

use std::cell::{Cell, UnsafeCell};
use std::ops::{Deref, DerefMut};

/// A value only attached threads touch, borrowed one at a time.
pub struct GilCell<T> {
    value: UnsafeCell<T>,
    borrowed: Cell<bool>,
}

// SAFETY: only threads attached to the interpreter touch the cell, and with
// the GIL (see the module documentation) one at a time; the GIL's release
// and acquisition order their accesses, the flag's included.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        Self {
            value: UnsafeCell::new(value),
            borrowed: Cell::new(false),
        }
    }

    /// Borrows the value.
    ///
    /// # Panics
    /// While it is already borrowed.
    pub fn lock(&self) -> GilGuard<'_, T> {
        self.try_lock().expect("engine state borrowed twice")
    }

    /// Borrows the value unless it is already borrowed (the garbage
    /// collector may traverse the loop while Rust code holds its state).
    pub fn try_lock(&self) -> Option<GilGuard<'_, T>> {
        (!self.borrowed.replace(true)).then_some(GilGuard { cell: self })
    }
}

/// A borrow of a [`GilCell`]'s value, returned when dropped.
pub struct GilGuard<'a, T> {
    cell: &'a GilCell<T>,
}

impl<T> Deref for GilGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: this guard is the only borrow (the flag is set).
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> DerefMut for GilGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard is the only borrow (the flag is set).
        unsafe { &mut *self.cell.value.get() }
    }
}

impl<T> Drop for GilGuard<'_, T> {
    fn drop(&mut self) {
        self.cell.borrowed.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_borrow_at_a_time() {
        let cell = GilCell::new(1);
        {
            let mut a = cell.lock();
            *a += 1;
            assert!(cell.try_lock().is_none());
        }
        assert_eq!(*cell.lock(), 2);
    }
}
