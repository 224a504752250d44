//! The node lock: one MCS queue lock per node serialises the node's CPUs in
//! the kernel (thesis 4.5.3 step 4; Mellor-Crummey and Scott, "Algorithms
//! for Scalable Synchronization on Shared-Memory Multiprocessors", ACM TOCS
//! 9(1), 1991, figure 5).
//!
//! Why MCS: waiters queue in FIFO order (no starvation of a CPU by its
//! neighbours, which a test-and-set lock allows), and each waiter spins on
//! a word of its own, so a hand-off moves one cache line from the releasing
//! CPU to the next one instead of broadcasting to every waiter.
//!
//! The textbook lock links queue nodes by pointer, which safe Rust cannot
//! do across CPUs. Here the queue nodes are a fixed array with one slot per
//! CPU of the node, and the links are slot numbers plus one (0 = none):
//!
//! ```text
//!   tail: 4 (slot 3) ───────────────────────────────┐
//!                                                   ▼
//!   slots[0]             slots[2]             slots[3]
//!   holds the lock       waiting: 1           waiting: 1
//!   next: 3 ───────────▶ next: 4 ───────────▶ next: 0 (none yet)
//!
//!   slots[1]: idle, its CPU is not in the kernel
//! ```
//!
//! A CPU's slot is its position within its node (`NodePlan::cpus`), fixed
//! at boot. The lock only provides mutual exclusion; the hypervisor's arch
//! layer wraps the node state it protects.
//!
//! # Memory ordering
//!
//! On x86-64 (Intel SDM Vol. 3A, 9.2.2 "Memory Ordering in P6 and More
//! Recent Processor Families", i.e. x86-TSO) every load already has acquire
//! and every store release semantics, and `xchg`/`lock cmpxchg` are full
//! barriers, so the orderings below compile to plain `mov`, `xchg` and
//! `lock cmpxchg`. They are still needed: they stop the compiler from
//! moving accesses across the hand-off, and they make the algorithm correct
//! in the C++/Rust model that the loom tests check, i.e. on any hardware.
//! Each use says which happens-before edge it provides.
//!
//! # Statistics
//!
//! The lock counts acquisitions, contended acquisitions (the queue was not
//! empty), and hold and wait times in the units of the caller's [`Clock`]
//! (the hypervisor passes the TSC). Only the holder writes the counters, so
//! plain relaxed loads and stores suffice; [`McsLock::stats`] reads them
//! without the lock and may see a holder's update half done.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The atomic operations the lock needs on a 32-bit word, so one algorithm
/// runs on `core`'s atomics in the hypervisor and on loom's in the model
/// checker.
pub trait LockWord: Sync {
    /// A word holding `value`.
    fn new(value: u32) -> Self;
    /// Atomic load.
    fn load(&self, order: Ordering) -> u32;
    /// Atomic store.
    fn store(&self, value: u32, order: Ordering);
    /// Atomic swap; returns the previous value.
    fn swap(&self, value: u32, order: Ordering) -> u32;
    /// Stores `new` if the word holds `current`; returns the previous value,
    /// `Ok` if it was `current`.
    fn compare_exchange(
        &self,
        current: u32,
        new: u32,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u32, u32>;
    /// Called once per iteration of every wait loop.
    fn spin();
}

/// Implements [`LockWord`] by forwarding to an atomic with `core`'s method
/// names: `$word(self)` reaches the atomic, `$make(value)` builds one.
macro_rules! lock_word {
    ($ty:ty, |$this:ident| $word:expr, |$value:ident| $make:expr, $spin:expr) => {
        impl LockWord for $ty {
            fn new($value: u32) -> Self {
                $make
            }
            fn load(&self, order: Ordering) -> u32 {
                let $this = self;
                $word.load(order)
            }
            fn store(&self, value: u32, order: Ordering) {
                let $this = self;
                $word.store(value, order)
            }
            fn swap(&self, value: u32, order: Ordering) -> u32 {
                let $this = self;
                $word.swap(value, order)
            }
            fn compare_exchange(
                &self,
                current: u32,
                new: u32,
                success: Ordering,
                failure: Ordering,
            ) -> Result<u32, u32> {
                let $this = self;
                $word.compare_exchange(current, new, success, failure)
            }
            fn spin() {
                $spin
            }
        }
    };
}

// PAUSE in wait loops: tells the core this is a spin-wait, which saves power
// and avoids the memory-order mis-speculation flush when the awaited store
// arrives (Intel SDM Vol. 2B, PAUSE).
lock_word!(
    AtomicU32,
    |w| w,
    |v| AtomicU32::new(v),
    core::hint::spin_loop()
);

/// A source of timestamps, read at most twice per acquisition and once per
/// release. Any `Fn() -> u64` is one.
pub trait Clock {
    /// The current time, in the clock's own units.
    fn now(&self) -> u64;
}

impl<F: Fn() -> u64> Clock for F {
    fn now(&self) -> u64 {
        self()
    }
}

/// Why a CPU could not take the lock. Both are bugs in the caller, caught
/// before the lock's state is touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockError {
    /// The slot is not below the lock's number of slots.
    SlotOutOfRange {
        /// The slot asked for.
        slot: usize,
        /// The lock's number of slots.
        slots: usize,
    },
    /// The slot is already queued or holding: a nested acquisition on one
    /// CPU, or two CPUs given the same slot. Going on would corrupt the
    /// queue (the slot's `next` link would be reset while in use).
    SlotBusy {
        /// The slot asked for.
        slot: usize,
    },
}

impl core::fmt::Display for LockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LockError::SlotOutOfRange { slot, slots } => write!(
                f,
                "node lock slot {slot} does not exist (the lock has {slots} slots)"
            ),
            LockError::SlotBusy { slot } => write!(
                f,
                "node lock slot {slot} is already waiting or holding; \
                 nested acquisition or a slot shared by two CPUs"
            ),
        }
    }
}

/// The lock's counters at one moment. Times are in [`Clock`] units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockStats {
    /// Acquisitions since the lock was made.
    pub acquisitions: u64,
    /// Acquisitions that found the queue non-empty and waited.
    pub contended: u64,
    /// Sum of hold times (acquired to release).
    pub hold_total: u64,
    /// Longest single hold.
    pub hold_max: u64,
    /// Sum of waits of contended acquisitions (queued to acquired).
    pub wait_total: u64,
    /// Longest single wait.
    pub wait_max: u64,
}

/// The Intel optimization manual recommends keeping independently written
/// data 128 bytes apart: the L2 spatial prefetcher fetches cache lines in
/// 64-byte pairs (Intel 64 and IA-32 Architectures Optimization Reference
/// Manual, "Data Prefetching", adjacent cache line prefetch).
#[repr(align(128))]
struct Padded<T>(T);

/// Link value for "no slot".
const NONE: u32 = 0;

/// One CPU's queue node.
#[repr(align(128))]
struct Slot<A> {
    /// The successor's slot + 1, written by the successor once it has
    /// queued behind this slot.
    next: A,
    /// 1 while this slot waits for the lock; the predecessor writes 0 to
    /// hand the lock over. Only this slot's CPU spins on it.
    waiting: A,
    /// 1 from acquire to the end of release: guards the slot against reuse
    /// while it is in the queue.
    busy: A,
}

impl<A: LockWord> Slot<A> {
    fn new() -> Self {
        Self {
            next: A::new(NONE),
            waiting: A::new(0),
            busy: A::new(0),
        }
    }
}

/// The counters, on their own cache lines away from the tail, which every
/// arriving CPU writes.
#[repr(align(128))]
struct Counters {
    acquisitions: AtomicU64,
    contended: AtomicU64,
    hold_total: AtomicU64,
    hold_max: AtomicU64,
    wait_total: AtomicU64,
    wait_max: AtomicU64,
}

impl Counters {
    const fn new() -> Self {
        Self {
            acquisitions: AtomicU64::new(0),
            contended: AtomicU64::new(0),
            hold_total: AtomicU64::new(0),
            hold_max: AtomicU64::new(0),
            wait_total: AtomicU64::new(0),
            wait_max: AtomicU64::new(0),
        }
    }

    // Only the lock holder calls these, and successive holders are ordered
    // by the lock's own acquire/release edges, so each holder sees the last
    // holder's values: relaxed loads and stores, no read-modify-write.
    fn add(counter: &AtomicU64, value: u64) {
        let sum = counter.load(Ordering::Relaxed).saturating_add(value);
        counter.store(sum, Ordering::Relaxed);
    }

    fn max(counter: &AtomicU64, value: u64) {
        if value > counter.load(Ordering::Relaxed) {
            counter.store(value, Ordering::Relaxed);
        }
    }
}

/// An MCS queue lock with `N` slots, one per CPU that may take it.
pub struct McsLock<A, const N: usize> {
    /// The last queued slot + 1, or [`NONE`] when the lock is free.
    tail: Padded<A>,
    slots: [Slot<A>; N],
    counters: Counters,
}

impl<A: LockWord, const N: usize> Default for McsLock<A, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The lock, held by the CPU of `slot`. Give it back with
/// [`Held::release`]; dropping it leaves the lock held for ever.
#[must_use = "the lock stays held until `release` is called"]
pub struct Held<'l, A: LockWord, const N: usize> {
    lock: &'l McsLock<A, N>,
    slot: usize,
    tag: u32,
    since: u64,
}

impl<A: LockWord, const N: usize> McsLock<A, N> {
    /// A free lock.
    pub fn new() -> Self {
        Self {
            tail: Padded(A::new(NONE)),
            slots: core::array::from_fn(|_| Slot::new()),
            counters: Counters::new(),
        }
    }

    /// The number of slots.
    pub const fn slots(&self) -> usize {
        N
    }

    /// The slot's queue node and its link value (slot + 1).
    fn slot(&self, slot: usize) -> Option<(&Slot<A>, u32)> {
        let tag = u32::try_from(slot.checked_add(1)?).ok()?;
        Some((self.slots.get(slot)?, tag))
    }

    /// The queue node a link value names. Links only ever hold values made
    /// by [`Self::slot`] from a checked slot, so `None` here means "no
    /// slot", never a bad one.
    fn linked(&self, tag: u32) -> Option<&Slot<A>> {
        let index = usize::try_from(tag).ok()?.checked_sub(1)?;
        self.slots.get(index)
    }

    /// Takes the lock for the CPU of `slot`, waiting in FIFO order behind
    /// the CPUs already queued. The hold time starts when the lock is
    /// granted; for a contended acquisition, the wait time runs from
    /// joining the queue to that moment.
    pub fn acquire<C: Clock + ?Sized>(
        &self,
        slot: usize,
        clock: &C,
    ) -> Result<Held<'_, A, N>, LockError> {
        let (me, tag) = self
            .slot(slot)
            .ok_or(LockError::SlotOutOfRange { slot, slots: N })?;
        // Only this slot's CPU uses it, so this orders nothing; it is a
        // guard, and an RMW so two CPUs sharing a slot are caught too.
        if me.busy.swap(1, Ordering::Relaxed) != 0 {
            return Err(LockError::SlotBusy { slot });
        }
        // Relaxed: published by the Release half of the swap below, before
        // any other CPU can learn this slot's number.
        me.next.store(NONE, Ordering::Relaxed);
        me.waiting.store(1, Ordering::Relaxed);
        // Join the queue. Release: a successor that reads our tag from the
        // tail will write our `next`, which must come after our reset of
        // it above. Acquire: if the lock was free, this reads the tail the
        // last holder cleared with Release, so its critical section
        // happens-before ours.
        let pred = self.tail.0.swap(tag, Ordering::AcqRel);
        let mut wait = None;
        if let Some(pred) = self.linked(pred) {
            let queued = clock.now();
            // Release: the predecessor reads this with Acquire before it
            // writes our `waiting`, so our `waiting = 1` above is ordered
            // before its `waiting = 0`.
            pred.next.store(tag, Ordering::Release);
            // Acquire: pairs with the predecessor's Release hand-off, so
            // its critical section happens-before ours.
            while me.waiting.load(Ordering::Acquire) != 0 {
                A::spin();
            }
            wait = Some(queued);
        }
        let since = clock.now();
        let c = &self.counters;
        Counters::add(&c.acquisitions, 1);
        if let Some(queued) = wait {
            let waited = since.saturating_sub(queued);
            Counters::add(&c.contended, 1);
            Counters::add(&c.wait_total, waited);
            Counters::max(&c.wait_max, waited);
        }
        Ok(Held {
            lock: self,
            slot,
            tag,
            since,
        })
    }

    /// Runs `f` holding the lock.
    pub fn with<C: Clock + ?Sized, R>(
        &self,
        slot: usize,
        clock: &C,
        f: impl FnOnce() -> R,
    ) -> Result<R, LockError> {
        let held = self.acquire(slot, clock)?;
        let result = f();
        held.release(clock);
        Ok(result)
    }

    /// A snapshot of the counters; exact when taken while holding the lock.
    pub fn stats(&self) -> LockStats {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LockStats {
            acquisitions: get(&c.acquisitions),
            contended: get(&c.contended),
            hold_total: get(&c.hold_total),
            hold_max: get(&c.hold_max),
            wait_total: get(&c.wait_total),
            wait_max: get(&c.wait_max),
        }
    }

    fn release_slot<C: Clock + ?Sized>(&self, slot: usize, tag: u32, since: u64, clock: &C) {
        let held = clock.now().saturating_sub(since);
        // Still holding: the counters are ours to write.
        Counters::add(&self.counters.hold_total, held);
        Counters::max(&self.counters.hold_max, held);
        let Some(me) = self.slots.get(slot) else {
            return; // `Held` is only made for a checked slot.
        };
        // Acquire: pairs with the successor's Release link, so its
        // `waiting = 1` is ordered before our `waiting = 0` below.
        let mut next = me.next.load(Ordering::Acquire);
        if next == NONE {
            // No successor linked yet. If the tail is still us, nobody is
            // queued: free the lock. Release: the next CPU to take the free
            // lock swaps the tail with Acquire and sees our critical
            // section. Failure is Relaxed: it only tells us a successor
            // exists, whose link we then read with Acquire.
            if self
                .tail
                .0
                .compare_exchange(tag, NONE, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                me.busy.store(0, Ordering::Relaxed);
                return;
            }
            // A successor swapped the tail but has not linked itself yet;
            // it does so in a few instructions.
            loop {
                next = me.next.load(Ordering::Acquire);
                if next != NONE {
                    break;
                }
                A::spin();
            }
        }
        if let Some(successor) = self.linked(next) {
            // Release: the hand-off; our critical section happens-before
            // the successor's Acquire load of `waiting` that sees 0.
            successor.waiting.store(0, Ordering::Release);
        }
        // After the hand-off nobody else touches our slot until we queue it
        // again, which this same CPU does later in program order.
        me.busy.store(0, Ordering::Relaxed);
    }
}

impl<A: LockWord, const N: usize> Held<'_, A, N> {
    /// The slot holding the lock.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// When the lock was granted, in [`Clock`] units.
    pub fn since(&self) -> u64 {
        self.since
    }

    /// Gives the lock to the next queued CPU, or frees it.
    pub fn release<C: Clock + ?Sized>(self, clock: &C) {
        self.lock
            .release_slot(self.slot, self.tag, self.since, clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::vec::Vec;

    /// A clock that ticks by one per reading.
    fn ticker() -> impl Fn() -> u64 {
        let t = AtomicU64::new(0);
        move || t.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn out_of_range_and_busy_slots_are_errors_before_any_change() {
        let lock = McsLock::<AtomicU32, 2>::new();
        let clock = || 0;
        assert_eq!(
            lock.acquire(2, &clock).err(),
            Some(LockError::SlotOutOfRange { slot: 2, slots: 2 })
        );
        assert_eq!(
            lock.acquire(usize::MAX, &clock).err(),
            Some(LockError::SlotOutOfRange {
                slot: usize::MAX,
                slots: 2
            })
        );
        assert_eq!(lock.tail.0.load(Ordering::Relaxed), NONE);
        let held = lock.acquire(1, &clock).unwrap();
        assert_eq!(
            lock.acquire(1, &clock).err(),
            Some(LockError::SlotBusy { slot: 1 })
        );
        // The failed nested attempt left the queue alone.
        assert_eq!(lock.tail.0.load(Ordering::Relaxed), 2);
        held.release(&clock);
        assert_eq!(lock.tail.0.load(Ordering::Relaxed), NONE);
        assert!(lock.acquire(1, &clock).is_ok());
        let empty = McsLock::<AtomicU32, 0>::new();
        assert!(empty.acquire(0, &clock).is_err());
    }

    #[test]
    fn uncontended_acquisitions_count_hold_times() {
        let lock = McsLock::<AtomicU32, 4>::default();
        for (slot, (start, end)) in [(0, (10, 25)), (3, (100, 101)), (0, (200, 200))] {
            let held = lock.acquire(slot, &|| start).unwrap();
            assert_eq!((held.slot(), held.since()), (slot, start));
            held.release(&|| end);
        }
        assert_eq!(
            lock.stats(),
            LockStats {
                acquisitions: 3,
                contended: 0,
                hold_total: 16,
                hold_max: 15,
                wait_total: 0,
                wait_max: 0,
            }
        );
        // A clock that goes backwards counts as zero, not as a huge hold.
        lock.acquire(1, &|| 50).unwrap().release(&|| 40);
        assert_eq!(lock.stats().hold_max, 15);
        assert_eq!(lock.with(2, &|| 0, || 7), Ok(7));
        assert_eq!(lock.stats().acquisitions, 5);
    }

    #[test]
    fn a_queued_cpu_gets_the_lock_on_release_and_counts_as_contended() {
        let lock = Arc::new(McsLock::<AtomicU32, 2>::new());
        let held = lock.acquire(0, &|| 0).unwrap();
        let waiter = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                let held = lock.acquire(1, &|| 5).unwrap();
                held.release(&|| 8);
            })
        };
        // Wait until slot 1 is queued (the tail names it), then hand over.
        while lock.tail.0.load(Ordering::Acquire) != 2 {
            std::thread::yield_now();
        }
        held.release(&|| 3);
        waiter.join().unwrap();
        let stats = lock.stats();
        assert_eq!((stats.acquisitions, stats.contended), (2, 1));
        assert_eq!((stats.hold_total, stats.hold_max), (3 + 3, 3));
        assert_eq!(lock.tail.0.load(Ordering::Relaxed), NONE);
    }

    /// `core`'s atomics with a spin that yields, so the stress test with more
    /// threads than host cores does not wait out whole time slices.
    struct Yielding(AtomicU32);

    lock_word!(
        Yielding,
        |w| w.0,
        |v| Yielding(AtomicU32::new(v)),
        std::thread::yield_now()
    );

    #[test]
    fn threads_hammering_the_lock_never_overlap() {
        const THREADS: usize = 6;
        const ROUNDS: u64 = 3_000;
        let lock = Arc::new(McsLock::<Yielding, THREADS>::new());
        let clock = Arc::new(ticker());
        // The counter is updated with a separate load and store, which loses
        // updates unless the lock really excludes.
        let count = Arc::new(AtomicU64::new(0));
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..THREADS)
            .map(|slot| {
                let (lock, clock) = (Arc::clone(&lock), Arc::clone(&clock));
                let (count, inside) = (Arc::clone(&count), Arc::clone(&inside));
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        let held = lock.acquire(slot, &*clock).unwrap();
                        assert_eq!(inside.swap(1, Ordering::Relaxed), 0);
                        let n = count.load(Ordering::Relaxed);
                        count.store(n + 1, Ordering::Relaxed);
                        inside.store(0, Ordering::Relaxed);
                        held.release(&*clock);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = THREADS as u64 * ROUNDS;
        assert_eq!(count.load(Ordering::Relaxed), total);
        let stats = lock.stats();
        assert_eq!(stats.acquisitions, total);
        assert!(stats.contended <= total);
        // Every hold lasts at least one tick of the shared clock and at most
        // all of them; the maxima are within the totals.
        let ticks = (*clock)();
        assert!(stats.hold_total >= total && stats.hold_total <= ticks);
        assert!(stats.hold_max >= 1 && stats.hold_max <= stats.hold_total);
        assert!(stats.wait_max <= stats.wait_total && stats.wait_total <= ticks * THREADS as u64);
        assert_eq!(stats.contended == 0, stats.wait_total == 0);
        assert_eq!(lock.tail.0.load(Ordering::Relaxed), NONE);
    }
}

/// The lock under the loom model checker: every interleaving (up to a
/// preemption bound) and the weak-memory behaviours the orderings allow.
#[cfg(test)]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicU32 as LoomU32, AtomicUsize};
    use std::vec::Vec;

    // Yielding tells loom this thread waits for another, so it schedules
    // others instead of exploring an unbounded spin.
    lock_word!(
        LoomU32,
        |w| w,
        |v| LoomU32::new(v),
        loom::thread::yield_now()
    );

    /// What the critical sections share. `count` is incremented by a
    /// relaxed load then store: loom reports a lost update (or a stale
    /// read) unless the lock's orderings make each section happen-before
    /// the next. `inside` catches two sections at once.
    struct Shared {
        lock: McsLock<LoomU32, 3>,
        count: AtomicUsize,
        inside: AtomicUsize,
    }

    fn critical_section(shared: &Shared, slot: usize) {
        let clock = || 0;
        let held = shared.lock.acquire(slot, &clock).unwrap();
        assert_eq!(shared.inside.load(Ordering::Relaxed), 0);
        shared.inside.store(1, Ordering::Relaxed);
        let n = shared.count.load(Ordering::Relaxed);
        shared.count.store(n + 1, Ordering::Relaxed);
        shared.inside.store(0, Ordering::Relaxed);
        held.release(&clock);
    }

    /// `threads` threads (slots 0..threads) each take the lock `rounds`
    /// times.
    fn model(threads: usize, rounds: usize, preemption_bound: usize) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(preemption_bound);
        builder.max_branches = 100_000;
        builder.check(move || {
            let shared = Arc::new(Shared {
                lock: McsLock::new(),
                count: AtomicUsize::new(0),
                inside: AtomicUsize::new(0),
            });
            let others: Vec<_> = (1..threads)
                .map(|slot| {
                    let shared = Arc::clone(&shared);
                    loom::thread::spawn(move || {
                        for _ in 0..rounds {
                            critical_section(&shared, slot);
                        }
                    })
                })
                .collect();
            for _ in 0..rounds {
                critical_section(&shared, 0);
            }
            for t in others {
                t.join().unwrap();
            }
            let total = threads * rounds;
            assert_eq!(shared.count.load(Ordering::Relaxed), total);
            assert_eq!(shared.lock.stats().acquisitions, total as u64);
            assert_eq!(shared.lock.tail.0.load(Ordering::Relaxed), NONE);
        });
    }

    #[test]
    fn loom_two_cpus_twice_each() {
        // Two rounds: a slot is queued again after a release, on both the
        // free-the-lock and the hand-off paths.
        model(2, 2, 4);
    }

    #[test]
    fn loom_three_cpus() {
        model(3, 1, 2);
    }
}
