//! How much device work one slice may do.
//!
//! A request can be as large as the disk (a u32 of bytes per chain part,
//! up to 256 chains per notification); the hypervisor serves device work
//! under its node lock, which every other vCPU of the node needs for its
//! own device accesses. So devices work in slices: each slice gets a
//! [`Budget`] of bytes and of time and stops once either is spent, after
//! at least one step (a [`crate::virtio::blk::CHUNK`] of data or one small
//! request), so work always progresses. What is left waits for the next
//! slice; the hypervisor drops the lock in between.

/// Bytes a slice may move (between guest RAM and a backend).
pub const SLICE_BYTES: u64 = 256 * 1024;
/// Microseconds a slice may take, checked after each step.
pub const SLICE_US: u64 = 100;
/// What one request costs of a slice's bytes besides its data: its
/// descriptors, header and status (so a queue of tiny requests is sliced
/// too).
pub const REQUEST_COST: u64 = 512;

/// The budget of one slice: bytes left and a deadline on a clock the
/// caller gives (the hypervisor's TSC; a counter in tests).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    bytes: u64,
    deadline: u64,
    now: fn() -> u64,
}

/// A clock that never moves, for budgets without a deadline.
fn never() -> u64 {
    0
}

impl Budget {
    /// `bytes` to move, and `ticks` of `now` from now.
    pub fn new(bytes: u64, ticks: u64, now: fn() -> u64) -> Self {
        Budget {
            bytes,
            deadline: now().saturating_add(ticks),
            now,
        }
    }

    /// No limit: everything available is served at once.
    pub fn unlimited() -> Self {
        Budget {
            bytes: u64::MAX,
            deadline: u64::MAX,
            now: never,
        }
    }

    /// Counts `n` bytes as spent.
    pub fn spend(&mut self, n: u64) {
        self.bytes = self.bytes.saturating_sub(n);
    }

    /// Bytes left.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the slice must end: no bytes left, or its time is up.
    pub fn spent(&self) -> bool {
        self.bytes == 0 || (self.now)() >= self.deadline
    }

    /// The clock's current value.
    pub fn now(&self) -> u64 {
        (self.now)()
    }
}
