//! The vCPU mailbox (thesis 6.4): only the CPU that runs a vCPU changes
//! it, so other CPUs (other vCPUs' IPIs, the VM's IOAPIC messages) post
//! requests into the vCPU's mailbox and kick its CPU; the owner takes them
//! at its next look and applies them to the vCPU's local APIC and run
//! state.
//!
//! The protocol, on plain atomic words:
//!
//! ```text
//!  sender: level bit (if level) -> request bit / INIT / SIPI -> posted := 1
//!  owner:  posted := 0 (swap; nothing to do if it was 0)
//!          -> take request bits, their level bits, INIT, SIPI
//! ```
//!
//! A sender sets `posted` after its request (release), and the owner
//! clears `posted` before it takes (acquire): a request is either taken by
//! a take that saw its `posted`, or leaves `posted` set for the next one,
//! so none is lost. A vector's level bit is set before its request bit, so
//! the owner that takes the request sees whether it was level-triggered.
//! The orderings are checked under the loom model checker
//! (`mailbox::loom_tests`).
//!
//! Every write to a mailbox word is a read-modify-write, so the senders'
//! writes and the owner's swaps of one word fall into one modification
//! order. (Plain stores would do on x86, but loom mis-orders a plain store
//! against a concurrent swap, tokio-rs/loom#389, and the model must check
//! the code as it runs.)

use core::sync::atomic::{AtomicU64, Ordering};

use crate::lapic::{Delivery, Recipient};

/// The atomic operations the mailbox needs on a 64-bit word, so the same
/// protocol runs on `core`'s atomics in the hypervisor and on loom's in
/// the model checker.
pub trait Word: Sync {
    /// A word holding `value`.
    fn new(value: u64) -> Self;
    /// Reads the word ([`core::sync::atomic::AtomicU64::load`]).
    fn load(&self, order: Ordering) -> u64;
    /// Writes the word ([`core::sync::atomic::AtomicU64::store`]).
    fn store(&self, value: u64, order: Ordering);
    /// Writes `value`, returning the old one ([`core::sync::atomic::AtomicU64::swap`]).
    fn swap(&self, value: u64, order: Ordering) -> u64;
    /// Sets `bits`, returning the old word ([`core::sync::atomic::AtomicU64::fetch_or`]).
    fn fetch_or(&self, bits: u64, order: Ordering) -> u64;
    /// Keeps only `bits`, returning the old word ([`core::sync::atomic::AtomicU64::fetch_and`]).
    fn fetch_and(&self, bits: u64, order: Ordering) -> u64;
}

/// Implements [`Word`] by forwarding to an atomic with `core`'s method
/// names.
macro_rules! word {
    ($ty:ty) => {
        impl Word for $ty {
            fn new(value: u64) -> Self {
                <$ty>::new(value)
            }
            fn load(&self, order: Ordering) -> u64 {
                <$ty>::load(self, order)
            }
            fn store(&self, value: u64, order: Ordering) {
                <$ty>::store(self, value, order)
            }
            fn swap(&self, value: u64, order: Ordering) -> u64 {
                <$ty>::swap(self, value, order)
            }
            fn fetch_or(&self, bits: u64, order: Ordering) -> u64 {
                <$ty>::fetch_or(self, bits, order)
            }
            fn fetch_and(&self, bits: u64, order: Ordering) -> u64 {
                <$ty>::fetch_and(self, bits, order)
            }
        }
    };
}

word!(AtomicU64);

/// Words of 64 vectors each: all 256.
const WORDS: usize = 4;

/// What other vCPUs (on any CPU of the node) posted for one vCPU.
pub struct Mailbox<W: Word = AtomicU64> {
    /// Requested interrupt vectors (bit n of word n / 64).
    irr: [W; WORDS],
    /// Those of them that came from a level-triggered IOAPIC entry: the
    /// local APIC sets their TMR bit, so their EOI reaches the IOAPIC and
    /// clears its remote IRR (SDM 11.8.4, 11.8.5).
    level: [W; WORDS],
    /// An INIT IPI arrived (1).
    init: W,
    /// A start-up IPI arrived: its vector + 1 (0 = none).
    sipi: W,
    /// Set after anything above was posted: the owner looks only then.
    posted: W,
    /// How the vCPU's local APIC recognises destinations
    /// ([`Recipient::to_bits`]), published by its owner whenever that may
    /// change, so senders route logical and broadcast IPIs without
    /// touching another CPU's APIC.
    recipient: W,
}

/// What the owner took from its mailbox in one look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    irr: [u64; WORDS],
    level: [u64; WORDS],
    /// An INIT IPI: the vCPU waits for a start-up IPI (SDM 10.4.7.3).
    pub init: bool,
    /// A start-up IPI's vector (the last one posted).
    pub sipi: Option<u8>,
}

impl Requests {
    /// The requested vectors, lowest first, each with whether it is
    /// level-triggered.
    pub fn interrupts(&self) -> impl Iterator<Item = (u8, bool)> + '_ {
        (0u32..)
            .zip(self.irr.iter().zip(&self.level))
            .flat_map(|(word, (&irr, &level))| {
                let mut rest = irr;
                core::iter::from_fn(move || {
                    let bit = (rest != 0).then(|| rest.trailing_zeros())?;
                    rest &= rest - 1;
                    let vector = u8::try_from(word * 64 + bit).ok()?;
                    Some((vector, level & 1 << bit != 0))
                })
            })
    }
}

impl<W: Word> Mailbox<W> {
    /// An empty mailbox of a vCPU whose local APIC recognises
    /// `recipient`.
    pub fn new(recipient: Recipient) -> Self {
        Mailbox {
            irr: core::array::from_fn(|_| W::new(0)),
            level: core::array::from_fn(|_| W::new(0)),
            init: W::new(0),
            sipi: W::new(0),
            posted: W::new(0),
            recipient: W::new(recipient.to_bits()),
        }
    }

    /// Posts `delivery` (level-triggered if `level`). False if it is
    /// dropped: virtual NMIs are not offered. After a true, the caller
    /// kicks the owner's CPU if it is another.
    pub fn post(&self, delivery: Delivery, level: bool) -> bool {
        match delivery {
            Delivery::Fixed(vector) => {
                let word = usize::from(vector >> 6);
                let bit = 1u64 << (vector & 63);
                if level && let Some(w) = self.level.get(word) {
                    w.fetch_or(bit, Ordering::AcqRel);
                }
                if let Some(w) = self.irr.get(word) {
                    w.fetch_or(bit, Ordering::AcqRel);
                }
            }
            Delivery::Init => {
                self.init.fetch_or(1, Ordering::AcqRel);
            }
            Delivery::Startup(vector) => {
                self.sipi.swap(u64::from(vector) + 1, Ordering::AcqRel);
            }
            Delivery::Nmi => return false,
        }
        // After the request itself: the owner that sees `posted` sees it.
        self.posted.fetch_or(1, Ordering::AcqRel);
        true
    }

    /// The owner takes what was posted since its last look; `None` if
    /// nothing was.
    pub fn take(&self) -> Option<Requests> {
        if self.posted.swap(0, Ordering::AcqRel) == 0 {
            return None;
        }
        let mut taken = Requests::default();
        for (i, (irr, level)) in self.irr.iter().zip(&self.level).enumerate() {
            let bits = irr.swap(0, Ordering::AcqRel);
            // Only the level bits of the vectors taken: a sender sets a
            // vector's level bit before its request bit, so it is there.
            let level = level.fetch_and(!bits, Ordering::AcqRel) & bits;
            if let (Some(t), Some(l)) = (taken.irr.get_mut(i), taken.level.get_mut(i)) {
                *t = bits;
                *l = level;
            }
        }
        taken.init = self.init.swap(0, Ordering::AcqRel) != 0;
        let sipi = self.sipi.swap(0, Ordering::AcqRel);
        taken.sipi = sipi.checked_sub(1).and_then(|v| u8::try_from(v).ok());
        Some(taken)
    }

    /// The owner publishes what its local APIC now recognises (a mode or
    /// logical ID change, a reset).
    pub fn publish(&self, recipient: Recipient) {
        self.recipient.store(recipient.to_bits(), Ordering::Release);
    }

    /// What the vCPU's local APIC recognises, as last published.
    pub fn recipient(&self) -> Recipient {
        Recipient::from_bits(self.recipient.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lapic::{Destination, Lapic, Mode};
    use std::vec::Vec;

    fn mailbox() -> Mailbox {
        Mailbox::new(Lapic::new(1).recipient())
    }

    #[test]
    fn nothing_posted_nothing_taken() {
        assert_eq!(mailbox().take(), None);
    }

    #[test]
    fn vectors_arrive_once_with_their_trigger_mode() {
        let m = mailbox();
        assert!(m.post(Delivery::Fixed(0x30), false));
        assert!(m.post(Delivery::Fixed(0xff), true));
        assert!(m.post(Delivery::Fixed(0x41), false));
        let taken = m.take().unwrap();
        let got: Vec<_> = taken.interrupts().collect();
        assert_eq!(got, [(0x30, false), (0x41, false), (0xff, true)]);
        assert!(!taken.init && taken.sipi.is_none());
        assert_eq!(m.take(), None);
    }

    #[test]
    fn a_level_bit_stays_with_a_vector_not_yet_requested() {
        let m = mailbox();
        // A level bit whose request bit is not there yet (a sender between
        // its two writes) is left for the take that gets the request.
        m.level[0].fetch_or(1 << 5, Ordering::AcqRel);
        m.post(Delivery::Fixed(6), false);
        let taken = m.take().unwrap();
        assert_eq!(taken.interrupts().collect::<Vec<_>>(), [(6, false)]);
        m.irr[0].fetch_or(1 << 5, Ordering::AcqRel);
        m.posted.store(1, Ordering::Release);
        let taken = m.take().unwrap();
        assert_eq!(taken.interrupts().collect::<Vec<_>>(), [(5, true)]);
    }

    #[test]
    fn init_and_sipi_arrive() {
        let m = mailbox();
        m.post(Delivery::Init, false);
        m.post(Delivery::Startup(0), false);
        let taken = m.take().unwrap();
        assert!(taken.init);
        assert_eq!(taken.sipi, Some(0));
        m.post(Delivery::Startup(0x9f), false);
        assert_eq!(m.take().unwrap().sipi, Some(0x9f));
    }

    #[test]
    fn an_nmi_is_dropped() {
        let m = mailbox();
        assert!(!m.post(Delivery::Nmi, false));
        assert_eq!(m.take(), None);
    }

    #[test]
    fn the_published_recipient_is_what_senders_see() {
        let m = mailbox();
        assert_eq!(m.recipient(), Lapic::new(1).recipient());
        let recipient = Recipient {
            mode: Mode::XApic,
            id: 1,
            logical_id: 0x04,
            cluster: false,
        };
        m.publish(recipient);
        assert_eq!(m.recipient(), recipient);
        assert!(m.recipient().accepts(Destination::Logical(0x04), false));
    }
}

/// The protocol under the loom model checker: every interleaving of a
/// sender and the owner, and the weak-memory behaviours the orderings
/// allow.
#[cfg(test)]
mod loom_tests {
    use super::*;
    use crate::lapic::Lapic;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicU64 as LoomU64;
    use std::vec::Vec;

    word!(LoomU64);

    type LoomMailbox = Mailbox<LoomU64>;

    /// What the owner collects over its takes.
    #[derive(Default)]
    struct Seen {
        interrupts: Vec<(u8, bool)>,
        init: bool,
        sipi: Option<u8>,
    }

    impl Seen {
        fn add(&mut self, taken: Option<Requests>) {
            if let Some(t) = taken {
                self.interrupts.extend(t.interrupts());
                self.init |= t.init;
                self.sipi = t.sipi.or(self.sipi);
            }
        }
    }

    /// Each sender posts its deliveries while the owner takes once; after
    /// the senders are done (and their kick arrived) the owner takes once
    /// more. Everything posted is seen exactly once, with its trigger mode.
    fn model(senders: Vec<Vec<(Delivery, bool)>>, check: fn(&Seen)) {
        loom::model(move || {
            let mailbox = Arc::new(LoomMailbox::new(Lapic::new(0).recipient()));
            let threads: Vec<_> = senders
                .clone()
                .into_iter()
                .map(|posts| {
                    let mailbox = Arc::clone(&mailbox);
                    loom::thread::spawn(move || {
                        for (delivery, level) in posts {
                            mailbox.post(delivery, level);
                        }
                    })
                })
                .collect();
            let mut seen = Seen::default();
            seen.add(mailbox.take());
            for t in threads {
                t.join().unwrap();
            }
            seen.add(mailbox.take());
            check(&seen);
        });
    }

    #[test]
    fn loom_no_interrupt_lost_or_doubled() {
        model(
            alloc::vec![alloc::vec![
                (Delivery::Fixed(0x30), false),
                (Delivery::Fixed(0x31), true),
            ]],
            |seen| {
                let mut got = seen.interrupts.clone();
                got.sort_unstable();
                assert_eq!(got, [(0x30, false), (0x31, true)]);
            },
        );
    }

    #[test]
    fn loom_two_senders() {
        model(
            alloc::vec![
                alloc::vec![(Delivery::Fixed(0x40), true)],
                alloc::vec![(Delivery::Fixed(0x80), false)],
            ],
            |seen| {
                let mut got = seen.interrupts.clone();
                got.sort_unstable();
                assert_eq!(got, [(0x40, true), (0x80, false)]);
            },
        );
    }

    #[test]
    fn loom_init_then_startup() {
        model(
            alloc::vec![alloc::vec![
                (Delivery::Init, false),
                (Delivery::Startup(0x9f), false),
            ]],
            |seen| {
                assert!(seen.init);
                assert_eq!(seen.sipi, Some(0x9f));
                assert!(seen.interrupts.is_empty());
            },
        );
    }
}
