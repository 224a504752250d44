//! The inter-node signal protocol (thesis 4.5.6, made finer-grained): a
//! doorbell is one 64-bit word in a page that exactly two nodes map, the
//! sender and the target. Bit n set means notification n is pending.
//!
//! ```text
//!  sender (raise)                         target (IPI handler: take)
//!  prev = word.fetch_or(bits)  ---------> bits = word.swap(0)
//!  if prev == 0: send the IPI             deliver `bits` as notifications
//! ```
//!
//! The IPI goes out only on the empty -> non-empty transition, so however
//! fast a sender raises, the target takes at most one interrupt per time it
//! drains the word: a flood cannot starve it. No notification is lost: a
//! raise that finds the word non-empty joins bits that a take has not yet
//! swapped out, and that take is still to come, because whoever made the
//! word non-empty sent an IPI whose handler has not run yet (its swap is
//! what empties the word).
//!
//! Orderings: the sender's `fetch_or` is Release so that what it wrote
//! before raising (a channel message) is visible to the target after its
//! Acquire `swap`; both are read-modify-writes on one word, so they are
//! totally ordered and the argument above holds under any interleaving
//! (every interleaving is checked below).

use core::sync::atomic::{AtomicU64, Ordering};

/// A doorbell word, seen by either of its two nodes.
pub struct Doorbell<'w> {
    word: &'w AtomicU64,
}

impl<'w> Doorbell<'w> {
    /// A view of `word`, the doorbell page's word shared by the two nodes.
    pub fn new(word: &'w AtomicU64) -> Self {
        Doorbell { word }
    }

    /// Sender: marks `bits` pending. Returns whether the caller must send
    /// the IPI (the word was empty, so no IPI is on its way).
    pub fn raise(&self, bits: u64) -> bool {
        bits != 0 && self.word.fetch_or(bits, Ordering::AcqRel) == 0
    }

    /// Target: takes every pending notification, leaving the word empty.
    pub fn take(&self) -> u64 {
        self.word.swap(0, Ordering::AcqRel)
    }
}

/// Why a signal was refused. Checked before the doorbell is touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalError {
    /// Notifications are numbered 0-63.
    NoSuchNotification(u32),
    /// The capability does not include this notification.
    NotAllowed(u32),
}

impl core::fmt::Display for SignalError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SignalError::NoSuchNotification(n) => {
                write!(
                    f,
                    "notification {n} does not exist (notifications are 0-63)"
                )
            }
            SignalError::NotAllowed(n) => {
                write!(f, "the IPI capability does not allow notification {n}")
            }
        }
    }
}

/// Checks `notification` against a capability's `allowed` mask (the plan's
/// `SignalPlan::notifications`) and returns its bit.
pub fn check(allowed: u64, notification: u32) -> Result<u64, SignalError> {
    let bit = 1u64
        .checked_shl(notification)
        .filter(|_| notification < 64)
        .ok_or(SignalError::NoSuchNotification(notification))?;
    if allowed & bit == 0 {
        return Err(SignalError::NotAllowed(notification));
    }
    Ok(bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_allows_only_granted_notifications() {
        assert_eq!(check(0b101, 0), Ok(1));
        assert_eq!(check(0b101, 2), Ok(4));
        assert_eq!(check(0b101, 1), Err(SignalError::NotAllowed(1)));
        assert_eq!(check(u64::MAX, 63), Ok(1 << 63));
        assert_eq!(
            check(u64::MAX, 64),
            Err(SignalError::NoSuchNotification(64))
        );
        assert_eq!(
            check(u64::MAX, u32::MAX),
            Err(SignalError::NoSuchNotification(u32::MAX))
        );
    }

    #[test]
    fn only_the_first_raise_after_a_take_asks_for_an_ipi() {
        let word = AtomicU64::new(0);
        let bell = Doorbell::new(&word);
        assert!(bell.raise(1));
        assert!(!bell.raise(1));
        assert!(!bell.raise(4));
        assert_eq!(bell.take(), 5);
        assert_eq!(bell.take(), 0);
        assert!(!bell.raise(0), "raising nothing sends nothing");
        assert!(bell.raise(2));
    }

    #[test]
    fn a_flood_costs_one_ipi_per_take() {
        let word = AtomicU64::new(0);
        let bell = Doorbell::new(&word);
        let mut ipis = 0;
        for round in 0..10 {
            for _ in 0..1000 {
                ipis += u32::from(bell.raise(1 << (round % 64)));
            }
            assert_ne!(bell.take(), 0);
        }
        assert_eq!(ipis, 10);
    }
}

/// Every interleaving of two senders and the target, explored exhaustively.
///
/// The protocol's only shared accesses are read-modify-writes of one word
/// (locked instructions on x86, which are sequentially consistent, SDM Vol.
/// 3A, 10.2.3.8) and the interrupt line, so interleavings of these steps are
/// all the behaviours there are. Each sender raises its bit twice; a raise
/// is two steps (the `fetch_or`, then the IPI if the word was empty). The
/// target may run its handler between any two steps, as often as it likes
/// up to a bound, and once more at the end if the line is still pending
/// (a pending interrupt is always delivered eventually).
#[cfg(test)]
mod interleavings {
    use super::*;
    use std::vec::Vec;

    #[derive(Clone, Copy, Default)]
    struct Sender {
        raises_left: u8,
        /// Between the `fetch_or` that found the word empty and the IPI.
        ipi_due: bool,
    }

    #[derive(Clone, Default)]
    struct State {
        word: u64,
        irq: bool,
        received: u64,
        ipis: u32,
        takes: u32,
        handles_left: u8,
        senders: [Sender; 2],
    }

    const BITS: [u64; 2] = [0b01, 0b10];

    /// Runs one step of sender `i`; false if it has nothing left to do.
    fn sender_step(state: &mut State, i: usize) -> bool {
        let s = state.senders[i];
        if s.ipi_due {
            state.ipis += 1;
            state.irq = true;
            state.senders[i].ipi_due = false;
        } else if s.raises_left > 0 {
            let word = AtomicU64::new(state.word);
            let send = Doorbell::new(&word).raise(BITS[i]);
            state.word = word.into_inner();
            state.senders[i] = Sender {
                raises_left: s.raises_left - 1,
                ipi_due: send,
            };
        } else {
            return false;
        }
        true
    }

    fn handle(state: &mut State) {
        if std::mem::take(&mut state.irq) {
            let word = AtomicU64::new(state.word);
            state.received |= Doorbell::new(&word).take();
            state.word = word.into_inner();
            state.takes += 1;
        }
    }

    /// Explores every schedule from `state`, collecting the end states.
    fn explore(state: State, finals: &mut Vec<State>) {
        let mut moved = false;
        for i in 0..2 {
            let mut next = state.clone();
            if sender_step(&mut next, i) {
                moved = true;
                explore(next, finals);
            }
        }
        if state.handles_left > 0 && state.irq {
            let mut next = state.clone();
            next.handles_left -= 1;
            handle(&mut next);
            moved = true;
            explore(next, finals);
        }
        if !moved
            || state
                .senders
                .iter()
                .all(|s| s.raises_left == 0 && !s.ipi_due)
        {
            let mut done = state;
            handle(&mut done);
            finals.push(done);
        }
    }

    #[test]
    fn no_notification_is_lost_and_ipis_never_outnumber_takes() {
        let start = State {
            handles_left: 3,
            senders: [Sender {
                raises_left: 2,
                ipi_due: false,
            }; 2],
            ..State::default()
        };
        let mut finals = Vec::new();
        explore(start, &mut finals);
        assert!(finals.len() > 100, "explored {} schedules", finals.len());
        for end in &finals {
            assert_eq!(end.received, 0b11, "a notification was lost");
            assert_eq!(end.word, 0, "bits left pending with no IPI on its way");
            assert!(!end.irq);
            assert!(
                end.ipis <= end.takes,
                "{} IPIs, {} takes",
                end.ipis,
                end.takes
            );
        }
        // Coalescing happens: some schedules need fewer IPIs than raises.
        assert!(finals.iter().any(|e| e.ipis == 1));
    }
}
