//! Accepting, prioritising and ending interrupts (SDM 11.8): the request
//! (IRR), in-service (ISR) and trigger-mode (TMR) sets, the processor
//! priority, and EOI.
#![deny(missing_docs)]

use super::{Lapic, Write};
use crate::bits::{low_u8, low_u32};

/// ESR bit 6: receive illegal vector.
pub(super) const ESR_RECEIVE_ILLEGAL: u32 = 1 << 6;

impl Lapic {
    /// Requests edge-triggered interrupt `vector` (a fixed IPI, the timer,
    /// an edge IOAPIC pin). Vectors 0-15 are illegal (SDM 11.5.3):
    /// counted in the ESR, dropped.
    pub fn raise(&mut self, vector: u8) {
        self.request(vector, false);
    }

    /// Requests level-triggered interrupt `vector` (an IOAPIC pin in level
    /// mode): its TMR bit is set, so its EOI is reported as
    /// [`Write::Eoi`].
    pub fn raise_level(&mut self, vector: u8) {
        self.request(vector, true);
    }

    fn request(&mut self, vector: u8, level: bool) {
        if vector < 16 {
            self.esr |= ESR_RECEIVE_ILLEGAL;
            return;
        }
        set(&mut self.irr, vector);
        // SDM 11.8.4: TMR is set for level, cleared for edge on acceptance.
        if level {
            set(&mut self.tmr, vector);
        } else {
            clear(&mut self.tmr, vector);
        }
    }

    /// The highest-priority requested vector that may be delivered now
    /// (its priority class above the processor priority, SDM 11.8.3.1),
    /// if the APIC is software-enabled.
    pub fn pending(&self) -> Option<u8> {
        if self.svr & 0x100 == 0 {
            return None;
        }
        let vector = highest(&self.irr)?;
        (u32::from(vector) >> 4 > self.ppr() >> 4).then_some(vector)
    }

    /// The guest took `vector` (it was injected): IRR -> ISR.
    pub fn acknowledge(&mut self, vector: u8) {
        clear(&mut self.irr, vector);
        set(&mut self.isr, vector);
    }

    /// Ends the highest in-service interrupt; a level-triggered one is
    /// reported for the IOAPIC's remote IRR (SDM 11.8.5).
    pub(super) fn eoi(&mut self) -> Write {
        let Some(vector) = highest(&self.isr) else {
            return Write::Done;
        };
        clear(&mut self.isr, vector);
        if bit(&self.tmr, vector) {
            clear(&mut self.tmr, vector);
            return Write::Eoi(vector);
        }
        Write::Done
    }

    pub(super) fn ppr(&self) -> u32 {
        let isr_class = highest(&self.isr).map_or(0, |v| u32::from(v) & 0xf0);
        if self.tpr & 0xf0 >= isr_class {
            self.tpr & 0xff
        } else {
            isr_class
        }
    }
}

/// 32-bit word `n` (0..8) of a 256-bit vector set.
pub(super) fn word(bits: &[u64; 4], n: u32) -> u32 {
    let q = bits.get((n / 2) as usize).copied().unwrap_or(0);
    low_u32(q >> (32 * (n % 2)))
}

fn bit(bits: &[u64; 4], vector: u8) -> bool {
    bits.get(usize::from(vector >> 6))
        .is_some_and(|q| q & (1 << (vector & 63)) != 0)
}

fn set(bits: &mut [u64; 4], vector: u8) {
    if let Some(q) = bits.get_mut(usize::from(vector >> 6)) {
        *q |= 1 << (vector & 63);
    }
}

fn clear(bits: &mut [u64; 4], vector: u8) {
    if let Some(q) = bits.get_mut(usize::from(vector >> 6)) {
        *q &= !(1 << (vector & 63));
    }
}

pub(super) fn highest(bits: &[u64; 4]) -> Option<u8> {
    (0..4u8).rev().find_map(|i| {
        let q = *bits.get(usize::from(i))?;
        (q != 0).then(|| low_u8(u64::from(i) * 64 + 63 - u64::from(q.leading_zeros())))
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_apics::{x2, xapic};
    use super::super::*;
    use super::*;

    #[test]
    fn priorities_decide_delivery_and_eoi_retires_the_highest() {
        let mut l = x2(0);
        l.raise(0x31);
        l.raise(0x52);
        assert_eq!(l.pending(), Some(0x52));
        l.acknowledge(0x52);
        assert_eq!(l.pending(), None, "0x31 is below the in-service class");
        l.write(reg::EOI, 0, 0);
        assert_eq!(l.pending(), Some(0x31));
        l.write(reg::TPR, 0x40, 0);
        assert_eq!(l.pending(), None, "TPR masks class 3");
        l.raise(5);
        assert_eq!(l.read(reg::ESR, 0), Some(u64::from(ESR_RECEIVE_ILLEGAL)));
        let mut off = x2(0);
        off.write(reg::SVR, 0xff, 0);
        off.raise(0x40);
        assert_eq!(off.pending(), None, "software-disabled APIC");
    }

    #[test]
    fn level_triggered_eoi_is_reported_for_the_ioapic() {
        let mut l = xapic(0);
        l.raise_level(0x30);
        l.raise(0x40);
        assert_eq!(l.mmio_read(0x180 + 0x10, 0), Some(1 << 16), "TMR 0x30");
        l.acknowledge(0x40);
        assert_eq!(l.mmio_write(offset::EOI, 0, 0), Write::Done, "edge");
        l.acknowledge(0x30);
        assert_eq!(l.mmio_write(offset::EOI, 0x1234, 0), Write::Eoi(0x30));
        assert_eq!(l.mmio_read(0x180 + 0x10, 0), Some(0), "TMR cleared");
        assert_eq!(l.mmio_write(offset::EOI, 0, 0), Write::Done, "nothing");
        let mut x = x2(0);
        x.raise_level(0x50);
        assert_eq!(x.read(reg::TMR0 + 2, 0), Some(1 << 16));
        x.acknowledge(0x50);
        assert_eq!(x.write(reg::EOI, 0, 0), Write::Eoi(0x50));
        // An edge request of the same vector makes it edge again.
        x.raise_level(0x51);
        x.raise(0x51);
        x.acknowledge(0x51);
        assert_eq!(x.write(reg::EOI, 0, 0), Write::Done);
    }
}
