//! A virtual I/O APIC after the Intel 82093AA datasheet: 24 interrupt
//! input pins, each with a 64-bit redirection table entry that turns an
//! input into an interrupt message for the local APICs. The guest reaches
//! it through two registers in its MMIO page at 0xFEC00000 (datasheet 3.0):
//! IOREGSEL at offset 0x00 selects a register, IOWIN at 0x10 reads or
//! writes it; version 0x20 parts also have an EOI register at 0x40.
//!
//! | index | register | access |
//! |---|---|---|
//! | 0x00 | IOAPICID, ID in bits 27:24 | R/W |
//! | 0x01 | IOAPICVER: version 0x20, max redirection entry 23 in 23:16 | RO |
//! | 0x02 | IOAPICARB: arbitration ID in 27:24 (= the ID) | RO |
//! | 0x10 + 2n, 0x11 + 2n | IOREDTBLn low / high half | R/W (delivery status, remote IRR RO) |
//!
//! A redirection entry (datasheet 3.2.4): vector 7:0, delivery mode 10:8,
//! destination mode 11 (logical), delivery status 12, polarity 13 (low
//! active), remote IRR 14, trigger mode 15 (level), mask 16, destination
//! 63:56. Entries reset masked.
//!
//! Inputs arrive as logical assertions: device models call [`Ioapic::raise`]
//! for an edge and [`Ioapic::set_level`] for a level line, so polarity is
//! stored for the guest but inverts nothing. Messages go out as values:
//! `raise` returns the message an edge sends at once; for level-triggered
//! pins, whatever becomes deliverable (an unmask, an EOI with the line
//! still asserted) is collected by [`Ioapic::next_message`], which the
//! caller drains after [`Ioapic::mmio_write`], [`Ioapic::eoi`] and
//! `set_level`. Delivery is immediate, so delivery status always reads 0.
//!
//! Masked edge interrupts are lost (datasheet 3.2.4, mask bit); a level
//! pin remembers its request (an asserted line, or a `raise` on a level
//! pin) until it is unmasked and its remote IRR is clear. Remote IRR is set
//! when a level message is sent and cleared by the local APIC's EOI for its
//! vector (the broadcast EOI of SDM 11.8.5, or a write of the vector to the
//! EOI register).

use crate::bits::{low_u8, low_u32};
use crate::lapic::Destination;

/// Guest-physical address of the IOAPIC's registers (PC convention, and
/// what the MADT says).
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The page Atoll claims for it.
pub const IOAPIC_LEN: u64 = 0x1000;
/// Input pins (and redirection table entries).
pub const PINS: usize = PIN_COUNT as usize;
/// [`PINS`] as a pin number's type.
const PIN_COUNT: u8 = 24;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;
/// Version 0x20 (it has the EOI register), max redirection entry 23.
const VERSION: u32 = 0x0017_0020;
const REDTBL: u8 = 0x10;

const MASK: u64 = 1 << 16;
const LEVEL: u64 = 1 << 15;
const REMOTE_IRR: u64 = 1 << 14;
const LOGICAL: u64 = 1 << 11;
/// Bits the guest writes in the low half: vector, delivery mode,
/// destination mode, polarity, trigger mode, mask.
const LOW_WRITABLE: u64 = 0x0001_afff;
/// The high half holds only the destination (63:56).
const HIGH_WRITABLE: u64 = 0xff00_0000 << 32;

/// How a message is delivered (redirection entry bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// To every local APIC the destination names.
    Fixed,
    /// To one of them: Atoll has no priority arbitration, so the caller
    /// delivers it as fixed to the first matching vCPU.
    LowestPriority,
    /// As a non-maskable interrupt; the vector is ignored.
    Nmi,
}

/// An interrupt message the IOAPIC sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    /// The input pin that raised it (0-23).
    pub pin: u8,
    /// The vector (redirection entry bits 7:0).
    pub vector: u8,
    /// How it is delivered (redirection entry bits 10:8).
    pub delivery: Delivery,
    /// The 8-bit destination field (bits 63:56).
    pub destination: u8,
    /// Logical destination mode (bit 11).
    pub logical: bool,
    /// Level-triggered: the receiving APIC sets its TMR bit (so its EOI
    /// comes back here through [`Ioapic::eoi`]).
    pub level: bool,
}

impl Message {
    /// The local APICs it goes to: physical 0xFF is the broadcast (also
    /// for x2APIC-mode receivers, as an xAPIC-format message without
    /// interrupt remapping).
    pub fn destination(&self) -> Destination {
        match (self.logical, self.destination) {
            (false, 0xff) => Destination::AllIncludingSelf,
            (false, d) => Destination::Apic(u32::from(d)),
            (true, d) => Destination::Logical(u32::from(d)),
        }
    }
}

/// One VM's IOAPIC.
#[derive(Clone, Debug)]
pub struct Ioapic {
    id: u32,
    select: u8,
    redirection: [u64; PINS],
    /// Level lines held asserted by [`Ioapic::set_level`], one bit a pin.
    lines: u32,
    /// Requests on level-triggered pins not yet sent (masked, or remote
    /// IRR still set), from [`Ioapic::raise`].
    latched: u32,
}

impl Default for Ioapic {
    fn default() -> Self {
        Ioapic::new(0)
    }
}

impl Ioapic {
    /// An IOAPIC with ID `id` after reset: every entry masked.
    pub fn new(id: u8) -> Self {
        Ioapic {
            id: u32::from(id & 0xf) << 24,
            select: 0,
            redirection: [MASK; PINS],
            lines: 0,
            latched: 0,
        }
    }

    /// Redirection table entry `pin`, if it exists.
    pub fn entry(&self, pin: u8) -> Option<u64> {
        self.redirection.get(usize::from(pin)).copied()
    }

    /// A read of `size` bytes at `offset` in the page. IOREGSEL and IOWIN
    /// are 32-bit registers (datasheet 3.0); narrower reads see their
    /// bytes, anything else in the page reads 0.
    pub fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
        let value = match offset & !3 {
            IOREGSEL => u32::from(self.select),
            IOWIN => self.register(self.select),
            _ => 0,
        };
        let shifted = u64::from(value) >> (8 * (offset & 3));
        shifted & mask(size)
    }

    /// A write of `size` bytes at `offset` in the page; narrower writes
    /// change only their bytes, writes elsewhere are ignored. Drain
    /// [`Ioapic::next_message`] afterwards: an unmask can release a held
    /// level request.
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u64) {
        let shift = 8 * (offset & 3);
        let bytes = mask(size) << shift;
        let merge = |old: u32| {
            let new = (u64::from(old) & !bytes) | ((value << shift) & bytes);
            low_u32(new)
        };
        match offset & !3 {
            IOREGSEL => self.select = low_u8(merge(u32::from(self.select)).into()),
            IOWIN => {
                let select = self.select;
                let new = merge(self.register(select));
                self.set_register(select, new);
            }
            // Version 0x20 EOI register: bits 7:0 are the vector.
            EOI => self.eoi(low_u8(merge(0).into())),
            _ => {}
        }
    }

    /// The register at index `select`; undefined ones read 0.
    fn register(&self, select: u8) -> u32 {
        match select {
            0 => self.id,
            1 => VERSION,
            2 => self.id,
            s if s >= REDTBL => match self.entry((s - REDTBL) / 2) {
                Some(e) if s % 2 == 0 => low_u32(e),
                Some(e) => (e >> 32) as u32,
                None => 0,
            },
            _ => 0,
        }
    }

    fn set_register(&mut self, select: u8, value: u32) {
        match select {
            0 => self.id = value & 0x0f00_0000,
            s if s >= REDTBL => {
                let Some(entry) = self.redirection.get_mut(usize::from((s - REDTBL) / 2)) else {
                    return;
                };
                let value = u64::from(value);
                *entry = if s % 2 == 0 {
                    (*entry & !LOW_WRITABLE) | (value & LOW_WRITABLE)
                } else {
                    (*entry & !HIGH_WRITABLE) | ((value << 32) & HIGH_WRITABLE)
                };
                // Remote IRR means nothing for edge entries; clearing it
                // on a switch to edge is what Linux's EOI workaround for
                // pre-0x20 parts relies on (io_apic.c __eoi_ioapic_pin).
                if *entry & LEVEL == 0 {
                    *entry &= !REMOTE_IRR;
                }
            }
            // Version and arbitration are read-only; others undefined.
            _ => {}
        }
    }

    /// An edge on input `pin`. An edge-triggered entry sends its message
    /// now unless masked (then it is lost); a level-triggered entry takes
    /// it as a request held until it can be sent, and the message is
    /// returned if that is now. Pins past 23 are ignored.
    pub fn raise(&mut self, pin: u8) -> Option<Message> {
        let entry = self.entry(pin)?;
        if entry & LEVEL == 0 {
            return (entry & MASK == 0).then(|| message(pin, entry)).flatten();
        }
        self.latched |= 1 << pin;
        self.deliver_level(pin)
    }

    /// Sets the level of input `pin` (a level-triggered device's line);
    /// returns the message an assertion sends now, if any. Lowering the
    /// line withdraws a request not yet sent.
    pub fn set_level(&mut self, pin: u8, asserted: bool) -> Option<Message> {
        let entry = self.entry(pin)?;
        if !asserted {
            self.lines &= !(1 << pin);
            return None;
        }
        let was = self.lines & (1 << pin) != 0;
        self.lines |= 1 << pin;
        if entry & LEVEL == 0 {
            // An edge-triggered entry sees the rising edge only.
            return if was { None } else { self.raise(pin) };
        }
        self.deliver_level(pin)
    }

    /// The local APICs ended `vector` (a level-triggered interrupt):
    /// clears remote IRR of every level entry with that vector. Drain
    /// [`Ioapic::next_message`] afterwards: a line still asserted sends
    /// again.
    pub fn eoi(&mut self, vector: u8) {
        for entry in self.redirection.iter_mut() {
            if *entry & LEVEL != 0 && low_u8(*entry) == vector {
                *entry &= !REMOTE_IRR;
            }
        }
    }

    /// The next level-triggered message that can be sent now (a request
    /// held while its pin was masked or awaiting EOI), if any.
    pub fn next_message(&mut self) -> Option<Message> {
        (0..PIN_COUNT).find_map(|pin| self.deliver_level(pin))
    }

    /// Sends level pin `pin`'s message if it has a request, is unmasked
    /// and its remote IRR is clear; sets remote IRR.
    fn deliver_level(&mut self, pin: u8) -> Option<Message> {
        let bit = 1u32 << pin;
        if (self.lines | self.latched) & bit == 0 {
            return None;
        }
        let entry = self.redirection.get_mut(usize::from(pin))?;
        if *entry & (LEVEL | MASK | REMOTE_IRR) != LEVEL {
            return None;
        }
        let sent = message(pin, *entry);
        // A delivery mode that sends nothing must not wait for an EOI.
        if sent.is_some() {
            *entry |= REMOTE_IRR;
        }
        self.latched &= !bit;
        sent
    }
}

/// The message entry `entry` of `pin` sends; SMI, INIT, ExtINT and the
/// reserved delivery modes send nothing (Atoll has no SMM, no 8259 behind
/// the IOAPIC, and INIT comes from IPIs only).
fn message(pin: u8, entry: u64) -> Option<Message> {
    let delivery = match (entry >> 8) & 7 {
        0 => Delivery::Fixed,
        1 => Delivery::LowestPriority,
        4 => Delivery::Nmi,
        _ => return None,
    };
    Some(Message {
        pin,
        vector: low_u8(entry),
        delivery,
        destination: (entry >> 56) as u8,
        logical: entry & LOGICAL != 0,
        level: entry & LEVEL != 0,
    })
}

fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_reg(io: &mut Ioapic, index: u8, value: u32) {
        io.mmio_write(IOREGSEL, 4, u64::from(index));
        io.mmio_write(IOWIN, 4, u64::from(value));
    }

    fn read_reg(io: &mut Ioapic, index: u8) -> u32 {
        io.mmio_write(IOREGSEL, 4, u64::from(index));
        io.mmio_read(IOWIN, 4) as u32
    }

    /// Programs `pin`: low half, then destination.
    fn route(io: &mut Ioapic, pin: u8, low: u32, dest: u8) {
        write_reg(io, REDTBL + 2 * pin + 1, u32::from(dest) << 24);
        write_reg(io, REDTBL + 2 * pin, low);
    }

    #[test]
    fn id_version_arbitration_and_undefined_registers() {
        let mut io = Ioapic::new(2);
        assert_eq!(read_reg(&mut io, 0), 2 << 24);
        write_reg(&mut io, 0, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, 0), 0x0f00_0000, "ID is bits 27:24");
        assert_eq!(read_reg(&mut io, 1), 0x0017_0020);
        write_reg(&mut io, 1, 0);
        assert_eq!(read_reg(&mut io, 1), 0x0017_0020, "read-only");
        assert_eq!(read_reg(&mut io, 2), 0x0f00_0000);
        for index in [3, 0x0f, 0x40, 0xff] {
            assert_eq!(read_reg(&mut io, index), 0, "{index:#x}");
            write_reg(&mut io, index, 0x1234);
        }
        // IOREGSEL reads back; other offsets read 0, writes ignored.
        io.mmio_write(IOREGSEL, 4, 0x1ff);
        assert_eq!(io.mmio_read(IOREGSEL, 4), 0xff);
        assert_eq!(io.mmio_read(0x20, 4), 0);
        io.mmio_write(0x20, 4, 0x5555);
        assert_eq!(io.mmio_read(0xffc, 4), 0);
    }

    #[test]
    fn redirection_entries_reset_masked_and_keep_their_read_only_bits() {
        let mut io = Ioapic::default();
        for pin in 0..PINS as u8 {
            assert_eq!(read_reg(&mut io, REDTBL + 2 * pin), 1 << 16);
            assert_eq!(read_reg(&mut io, REDTBL + 2 * pin + 1), 0);
        }
        write_reg(&mut io, REDTBL + 2, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, REDTBL + 2), 0x0001_afff);
        write_reg(&mut io, REDTBL + 3, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, REDTBL + 3), 0xff00_0000);
        assert_eq!(io.entry(1), Some(0xff00_0000_0001_afff));
        assert_eq!(io.entry(24), None);
        // Byte writes change one byte of the selected register.
        io.mmio_write(IOWIN + 1, 1, 0x00);
        assert_eq!(read_reg(&mut io, REDTBL + 3), 0xff00_0000);
        io.mmio_write(IOREGSEL, 1, u64::from(REDTBL + 2));
        io.mmio_write(IOWIN, 1, 0x31);
        assert_eq!(io.mmio_read(IOWIN, 4), 0x0001_af31);
        assert_eq!(io.mmio_read(IOWIN + 1, 1), 0xaf);
        assert_eq!(io.mmio_read(IOWIN, 2), 0xaf31);
    }

    #[test]
    fn edges_send_messages_unless_masked() {
        let mut io = Ioapic::default();
        assert_eq!(io.raise(4), None, "masked at reset: lost");
        route(&mut io, 4, 0x0000_0034, 0x01);
        assert_eq!(
            io.raise(4),
            Some(Message {
                pin: 4,
                vector: 0x34,
                delivery: Delivery::Fixed,
                destination: 1,
                logical: false,
                level: false
            })
        );
        assert_eq!(
            io.raise(4).map(|m| m.destination()),
            Some(Destination::Apic(1))
        );
        assert_eq!(io.next_message(), None, "edges are not held");
        // Logical flat destination, lowest priority.
        route(&mut io, 5, 1 << 11 | 1 << 8 | 0x35, 0x0f);
        let m = io.raise(5).unwrap();
        assert_eq!(m.delivery, Delivery::LowestPriority);
        assert_eq!(m.destination(), Destination::Logical(0x0f));
        // Physical 0xFF is the broadcast.
        route(&mut io, 6, 0x36, 0xff);
        assert_eq!(
            io.raise(6).unwrap().destination(),
            Destination::AllIncludingSelf
        );
        route(&mut io, 7, 4 << 8, 0);
        assert_eq!(io.raise(7).unwrap().delivery, Delivery::Nmi);
        for mode in [2, 3, 5, 6, 7] {
            route(&mut io, 8, mode << 8 | 0x38, 0);
            assert_eq!(io.raise(8), None, "mode {mode}");
        }
        assert_eq!(io.raise(24), None);
        assert_eq!(io.raise(u8::MAX), None);
        assert_eq!(io.set_level(200, true), None);
        // A level line on an edge entry sends on the rising edge only.
        route(&mut io, 9, 0x39, 0);
        assert!(io.set_level(9, true).is_some());
        assert!(io.set_level(9, true).is_none());
        assert!(io.set_level(9, false).is_none());
        assert!(io.set_level(9, true).is_some());
    }

    #[test]
    fn level_pins_wait_for_unmask_and_eoi() {
        let mut io = Ioapic::default();
        let low = |mask: u32| 1 << 15 | mask << 16 | 0x50;
        route(&mut io, 10, low(1), 2);
        assert_eq!(io.set_level(10, true), None, "masked: held");
        write_reg(&mut io, REDTBL + 20, low(0));
        let m = io.next_message().unwrap();
        assert_eq!((m.pin, m.vector, m.level), (10, 0x50, true));
        assert_ne!(read_reg(&mut io, REDTBL + 20) & 1 << 14, 0, "remote IRR");
        assert_eq!(io.next_message(), None, "remote IRR holds it");
        write_reg(&mut io, REDTBL + 20, low(0) | 1 << 14);
        assert_ne!(read_reg(&mut io, REDTBL + 20) & 1 << 14, 0, "read-only");
        // EOI with the line still asserted: sent again.
        io.eoi(0x51);
        assert_eq!(io.next_message(), None, "other vector");
        io.eoi(0x50);
        assert_eq!(io.next_message().map(|m| m.pin), Some(10));
        // Line lowered, then EOI through the EOI register: nothing more.
        io.set_level(10, false);
        io.mmio_write(EOI, 4, 0x50);
        assert_eq!(read_reg(&mut io, REDTBL + 20) & 1 << 14, 0);
        assert_eq!(io.next_message(), None);
        // A raise on a level pin is one request, held across the mask.
        route(&mut io, 11, low(1) | 0x1, 0);
        assert_eq!(io.raise(11), None);
        write_reg(&mut io, REDTBL + 22, low(0) | 1);
        assert_eq!(io.next_message().map(|m| m.vector), Some(0x51));
        io.eoi(0x51);
        assert_eq!(io.next_message(), None, "the request was used up");
        assert!(io.raise(11).is_some());
        // Switching to edge clears remote IRR (Linux's EOI workaround).
        write_reg(&mut io, REDTBL + 22, 0x51 | 1 << 16);
        assert_eq!(read_reg(&mut io, REDTBL + 22) & 1 << 14, 0);
    }

    proptest::proptest! {
        #[test]
        fn random_traffic_sends_a_level_pin_once_until_its_eoi(
            // Mostly the real registers (IOREGSEL, IOWIN, EOI), dword
            // wide, so programmed level entries and raised lines meet.
            ops in proptest::collection::vec((
                proptest::prop_oneof![
                    3 => proptest::sample::select(std::vec![IOREGSEL, IOWIN, EOI]),
                    1 => 0u64..0x1000,
                ],
                proptest::prop_oneof![3 => proptest::strategy::Just(4u8), 1 => 0u8..9],
                proptest::prelude::any::<u64>(),
                0u8..4,
            ), 0..300)
        ) {
            let mut io = Ioapic::default();
            for (offset, size, value, op) in ops {
                match op {
                    0 => { io.mmio_read(offset, size); }
                    1 => io.mmio_write(offset, size, value),
                    2 => { io.raise(value as u8); io.set_level((value >> 8) as u8, value & 1 << 16 != 0); }
                    _ => io.eoi(value as u8),
                }
                // Whatever the guest programmed: only level-triggered
                // pins wait here, and remote IRR holds each one until its
                // EOI, so one drain sends a pin at most once.
                let mut sent = 0u32;
                while let Some(m) = io.next_message() {
                    proptest::prop_assert!(usize::from(m.pin) < PINS);
                    proptest::prop_assert!(m.level);
                    proptest::prop_assert_eq!(sent & 1 << m.pin, 0);
                    sent |= 1 << m.pin;
                }
            }
        }
    }
}
