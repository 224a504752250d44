//! A node's big kernel lock with the data it guards: the MCS queue lock
//! algorithm (atoll-cluster's `lock`, model-checked there with loom) plus
//! the `UnsafeCell` that only the lock holder may touch.

use atoll_cluster::lock::{Held, LockError, LockStats, McsLock};
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::AtomicU32;

/// The most CPUs a node can have: one lock slot each (the MADT limit).
pub const MAX_NODE_CPUS: usize = atoll_platform::acpi::MAX_CPUS;

type NodeMcs = McsLock<AtomicU32, MAX_NODE_CPUS>;

/// Data guarded by a node's MCS lock. Each CPU passes its slot within the
/// node (its queue node in the lock).
pub struct BigLock<T> {
    lock: NodeMcs,
    data: UnsafeCell<T>,
}

// SAFETY: `data` is reachable only through a `BigLockGuard`, and the MCS
// lock admits one holder at a time (model-checked in atoll-cluster), so T
// is never accessed from two CPUs at once.
unsafe impl<T: Send> Sync for BigLock<T> {}

impl<T> BigLock<T> {
    pub fn new(value: T) -> Self {
        BigLock {
            lock: NodeMcs::new(),
            data: UnsafeCell::new(value),
        }
    }

    /// Takes the lock as the CPU in `slot`; `clock` timestamps the wait and
    /// hold for the lock's counters. Fails only for a slot beyond the
    /// lock's capacity or one already queued (a CPU taking the lock twice).
    pub fn lock(&self, slot: usize, clock: fn() -> u64) -> Result<BigLockGuard<'_, T>, LockError> {
        let held = self.lock.acquire(slot, &clock)?;
        Ok(BigLockGuard {
            owner: self,
            held: Some(held),
            clock,
        })
    }

    /// The lock's counters so far.
    pub fn stats(&self) -> LockStats {
        self.lock.stats()
    }
}

/// Access to the guarded data while the lock is held.
pub struct BigLockGuard<'a, T> {
    owner: &'a BigLock<T>,
    held: Option<Held<'a, AtomicU32, MAX_NODE_CPUS>>,
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
            held.release(&self.clock);
        }
    }
}
