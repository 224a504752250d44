//! A node's big kernel lock with the data it guards: the MCS queue lock
//! algorithm (atoll-cluster's `lock`, model-checked there) plus the
//! `UnsafeCell` that only the lock holder may touch.

use atoll_cluster::lock::{Held, LockStats, McsLock};
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

/// Data guarded by a node's MCS lock. Each CPU passes its slot within the
/// node (its queue node in the lock).
pub struct BigLock<T> {
    lock: McsLock,
    data: UnsafeCell<T>,
}

// SAFETY: `data` is reachable only through a `BigLockGuard`, and the MCS
// lock admits one holder at a time, so T is never accessed concurrently.
unsafe impl<T: Send> Sync for BigLock<T> {}

impl<T> BigLock<T> {
    pub const fn new(value: T) -> Self {
        BigLock {
            lock: McsLock::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// Takes the lock as the CPU in `slot`; `clock` timestamps the hold for
    /// the lock's counters. Panics only if `slot` is beyond the lock's
    /// capacity, which the planner rules out (a node has at most that many
    /// CPUs).
    pub fn lock(&self, slot: usize, clock: fn() -> u64) -> BigLockGuard<'_, T> {
        let held = match self.lock.acquire(slot, clock()) {
            Ok(held) => held,
            Err(e) => panic!("node lock: CPU slot {slot} is out of range: {e:?}"),
        };
        BigLockGuard {
            owner: self,
            held: Some(held),
            clock,
        }
    }

    /// The lock's counters so far.
    pub fn stats(&self) -> LockStats {
        self.lock.stats()
    }
}

/// Access to the guarded data while the lock is held.
pub struct BigLockGuard<'a, T> {
    owner: &'a BigLock<T>,
    held: Option<Held>,
    clock: fn() -> u64,
}

impl<T> Deref for BigLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock, so no other reference exists.
        unsafe { &*self.owner.data.get() }
    }
}

impl<T> DerefMut for BigLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this guard holds the lock exclusively (see Deref).
        unsafe { &mut *self.owner.data.get() }
    }
}

impl<T> Drop for BigLockGuard<'_, T> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.owner.lock.release(held, (self.clock)());
        }
    }
}
