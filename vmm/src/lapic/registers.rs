//! The register file and its two interfaces (SDM 11.4.1, Table 11-1;
//! 11.12.1, Table 11-6): x2APIC MSRs with their #GP rules, and the xAPIC
//! page, which drops what it does not accept.
#![deny(missing_docs)]

use super::interrupts::word;
#[cfg(test)]
use super::interrupts::{ESR_RECEIVE_ILLEGAL, highest};
use super::{Lapic, Mode, Write};
use crate::bits::{low_u8, low_u32};

/// x2APIC register MSRs (SDM Table 11-6); the xAPIC page has the same
/// register at offset `(msr - 0x800) * 0x10`.
#[allow(missing_docs, reason = "named as in SDM Table 11-6")]
pub mod reg {
    pub const ID: u32 = 0x802;
    pub const VERSION: u32 = 0x803;
    pub const TPR: u32 = 0x808;
    pub const PPR: u32 = 0x80a;
    pub const EOI: u32 = 0x80b;
    pub const LDR: u32 = 0x80d;
    /// xAPIC only (offset 0xE0): the destination format register.
    pub const DFR: u32 = 0x80e;
    pub const SVR: u32 = 0x80f;
    pub const ISR0: u32 = 0x810;
    pub const TMR0: u32 = 0x818;
    pub const IRR0: u32 = 0x820;
    pub const ESR: u32 = 0x828;
    pub const LVT_CMCI: u32 = 0x82f;
    pub const ICR: u32 = 0x830;
    /// xAPIC only (offset 0x310): the ICR's upper half.
    pub const ICR_HIGH: u32 = 0x831;
    pub const LVT_TIMER: u32 = 0x832;
    pub const LVT_ERROR: u32 = 0x837;
    pub const TIMER_INITIAL: u32 = 0x838;
    pub const TIMER_CURRENT: u32 = 0x839;
    pub const TIMER_DIVIDE: u32 = 0x83e;
    pub const SELF_IPI: u32 = 0x83f;
}

/// xAPIC register offsets in the MMIO page (SDM Table 11-1) that differ
/// from a plain `0x10 * n` reading of [`reg`] in name only.
#[allow(missing_docs, reason = "named as in SDM Table 11-1")]
pub mod offset {
    pub const ID: u32 = 0x20;
    pub const TPR: u32 = 0x80;
    pub const EOI: u32 = 0xb0;
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SVR: u32 = 0xf0;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
}

/// Version 0x14 (an integrated APIC), 6 LVT entries (CMCI to error); bit 24
/// clear: no EOI-broadcast suppression, so every level EOI reaches the
/// IOAPIC.
const VERSION: u32 = 0x0005_0014;
pub(super) const LVT_MASKED: u32 = 1 << 16;
pub(super) const LVT_COUNT: usize = 7;
/// DFR after reset: the flat model (SDM 11.6.2.2, Figure 11-14); bits 27:0
/// are reserved and read as ones.
pub(super) const DFR_FLAT: u32 = 0xffff_ffff;
const DFR_RESERVED: u32 = 0x0fff_ffff;
/// The xAPIC register page's size.
pub const XAPIC_PAGE: u32 = 0x1000;

impl Lapic {
    /// RDMSR of an x2APIC register; `None` is #GP.
    pub fn read(&self, msr: u32, now: u64) -> Option<u64> {
        if !self.x2apic() {
            return None;
        }
        let value = match msr {
            reg::ID => self.id,
            reg::LDR => x2apic_ldr(self.id),
            reg::ICR => return Some(self.icr),
            _ => self.read_common(msr, now)?,
        };
        Some(u64::from(value))
    }

    /// The registers both modes read alike; `None`: none such.
    fn read_common(&self, msr: u32, now: u64) -> Option<u32> {
        let value = match msr {
            reg::VERSION => VERSION,
            reg::TPR => self.tpr,
            reg::PPR => self.ppr(),
            reg::SVR => self.svr,
            m if (reg::ISR0..reg::ISR0 + 8).contains(&m) => word(&self.isr, m - reg::ISR0),
            m if (reg::TMR0..reg::TMR0 + 8).contains(&m) => word(&self.tmr, m - reg::TMR0),
            m if (reg::IRR0..reg::IRR0 + 8).contains(&m) => word(&self.irr, m - reg::IRR0),
            reg::ESR => self.esr,
            m if (reg::LVT_CMCI..=reg::LVT_ERROR).contains(&m) => *self.lvt.get(lvt_index(m)?)?,
            reg::TIMER_INITIAL => self.timer_initial,
            reg::TIMER_CURRENT => self.current_count(now),
            reg::TIMER_DIVIDE => self.timer_divide,
            _ => return None,
        };
        Some(value)
    }

    /// Whether the xAPIC page decodes accesses: only while the APIC is
    /// globally enabled and in xAPIC mode (SDM 11.4.3; 11.12.1.2: in
    /// x2APIC mode the MMIO interface behaves like a globally disabled
    /// xAPIC).
    pub fn mmio_decoded(&self) -> bool {
        self.mode() == Mode::XApic
    }

    /// A 32-bit read at `offset` in the xAPIC page at TSC `now`. `None`:
    /// the page is not decoded (x2APIC mode or globally disabled), so the
    /// access goes nowhere and the caller reads all ones, as from an
    /// unclaimed bus. Registers sit on 16-byte boundaries (SDM 11.4.1);
    /// other offsets, reserved and write-only registers read 0.
    pub fn mmio_read(&self, offset: u32, now: u64) -> Option<u32> {
        if !self.mmio_decoded() {
            return None;
        }
        let Some(msr) = mmio_register(offset) else {
            return Some(0);
        };
        let value = match msr {
            reg::ID => (self.id & 0xff) << 24,
            reg::LDR => self.ldr,
            reg::DFR => self.dfr,
            // Delivery status (bit 12) reads 0: an IPI is sent at once.
            reg::ICR => low_u32(self.icr) & !(1 << 12),
            reg::ICR_HIGH => (self.icr >> 32) as u32,
            _ => self.read_common(msr, now).unwrap_or(0),
        };
        Some(value)
    }

    /// A 32-bit write at `offset` in the xAPIC page at TSC `now`. Never
    /// [`Write::Fault`]: the xAPIC ignores writes to read-only and
    /// reserved registers, drops reserved bits, and when the page is not
    /// decoded the write goes nowhere.
    pub fn mmio_write(&mut self, offset: u32, value: u32, now: u64) -> Write {
        if !self.mmio_decoded() {
            return Write::Done;
        }
        let Some(msr) = mmio_register(offset) else {
            return Write::Done;
        };
        match msr {
            // The xAPIC ID is writable on some processors; Atoll keeps the
            // ID its MADT gives (software must not rely on changing it,
            // SDM 11.4.6).
            reg::ID => Write::Done,
            reg::LDR => {
                self.ldr = value & 0xff00_0000;
                Write::Done
            }
            reg::DFR => {
                self.dfr = value | DFR_RESERVED;
                Write::Done
            }
            // Any value ends the highest in-service interrupt (11.8.5).
            reg::EOI => self.eoi(),
            reg::ICR => {
                self.icr = (self.icr & !0xffff_ffff) | u64::from(value);
                self.send(self.icr, false)
            }
            reg::ICR_HIGH => {
                self.icr = (self.icr & 0xffff_ffff) | u64::from(value & 0xff00_0000) << 32;
                Write::Done
            }
            // No self-IPI register in xAPIC mode (it is x2APIC only).
            reg::SELF_IPI => Write::Done,
            reg::TPR => self.write_common(msr, value & 0xff, now),
            reg::SVR => self.write_common(msr, value & 0x11ff, now),
            reg::ESR => self.write_common(msr, 0, now),
            reg::TIMER_DIVIDE => self.write_common(msr, value & 0xb, now),
            _ => match self.write_common(msr, value, now) {
                Write::Fault => Write::Done,
                w => w,
            },
        }
    }

    /// WRMSR of an x2APIC register at TSC `now`.
    pub fn write(&mut self, msr: u32, value: u64, now: u64) -> Write {
        if !self.x2apic() {
            return Write::Fault;
        }
        // Every register but the ICR is 32 bits; writing the upper half is
        // a reserved-bit violation.
        if msr == reg::ICR {
            return self.send(value, true);
        }
        let Ok(v) = u32::try_from(value) else {
            return Write::Fault;
        };
        match msr {
            reg::TPR if v > 0xff => Write::Fault,
            reg::SVR if v & !0x11ff != 0 => Write::Fault,
            reg::ESR if v != 0 => Write::Fault,
            reg::EOI if v != 0 => Write::Fault,
            reg::TIMER_DIVIDE if v & !0xb != 0 => Write::Fault,
            reg::SELF_IPI if v <= 0xff => {
                self.raise(low_u8(v.into()));
                Write::Done
            }
            reg::EOI => self.eoi(),
            _ => self.write_common(msr, v, now),
        }
    }

    /// The writes both modes share, with the value already checked or
    /// masked; `Fault` for registers that are not writable.
    fn write_common(&mut self, msr: u32, v: u32, now: u64) -> Write {
        match msr {
            reg::TPR => self.tpr = v,
            reg::SVR => self.svr = v,
            reg::ESR => self.esr = 0,
            reg::LVT_TIMER => {
                self.lvt[1] = v & 0x0007_10ff;
                self.arm_timer(now);
            }
            m if (reg::LVT_CMCI..=reg::LVT_ERROR).contains(&m) => {
                match lvt_index(m).and_then(|i| self.lvt.get_mut(i)) {
                    Some(slot) => *slot = v & 0x0001_17ff,
                    None => return Write::Fault,
                }
            }
            reg::TIMER_INITIAL => {
                self.timer_initial = v;
                self.arm_timer(now);
            }
            reg::TIMER_DIVIDE => self.timer_divide = v,
            _ => return Write::Fault,
        }
        Write::Done
    }
}

/// The x2APIC logical ID of `id` (SDM 11.12.10.2): cluster ID << 16 | a
/// bit for the member.
fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | (1 << (id & 0xf))
}

/// xAPIC page offset -> the register's x2APIC MSR number; `None` for
/// offsets that are not a register's first byte or lie outside the page.
fn mmio_register(offset: u32) -> Option<u32> {
    (offset.is_multiple_of(0x10) && offset < XAPIC_PAGE).then(|| 0x800 + offset / 0x10)
}

/// LVT register -> index in `lvt`: CMCI 0x82F, timer 0x832 .. error 0x837.
fn lvt_index(msr: u32) -> Option<usize> {
    match msr {
        reg::LVT_CMCI => Some(0),
        0x832..=0x837 => Some((msr - 0x831) as usize),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_apics::{x2, xapic};
    use super::super::*;
    use super::*;

    #[test]
    fn registers_need_x2apic_mode_and_follow_their_access_rules() {
        let mut l = Lapic::new(3);
        assert_eq!(l.read(reg::ID, 0), None, "xAPIC mode: MSRs #GP");
        assert_eq!(l.write(reg::TPR, 0, 0), Write::Fault);
        assert!(
            !l.set_apic_base(APIC_BASE_DEFAULT | BASE_X2APIC),
            "x2APIC needs EN"
        );
        assert!(
            !l.set_apic_base(0x1234_0000 | BASE_ENABLE | BASE_X2APIC),
            "base is fixed"
        );
        let mut l = x2(3);
        assert_eq!(l.read(reg::ID, 0), Some(3));
        assert_eq!(l.read(reg::LDR, 0), Some(1 << 3));
        assert_eq!(l.write(reg::ID, 5, 0), Write::Fault, "read-only");
        assert_eq!(l.read(reg::EOI, 0), None, "write-only");
        assert_eq!(l.write(reg::TPR, 1 << 32, 0), Write::Fault);
        assert_eq!(l.write(reg::EOI, 1, 0), Write::Fault, "EOI takes 0 only");
        assert_eq!(l.read(0x8ff, 0), None);
        assert_eq!(l.read(0x831, 0), None, "reserved");
        assert_eq!(l.write(0x831, 0, 0), Write::Fault);
    }

    #[test]
    fn xapic_page_registers() {
        let mut l = xapic(3);
        assert_eq!(l.mode(), Mode::XApic);
        assert_eq!(l.read(reg::ID, 0), None, "MSRs #GP in xAPIC mode");
        assert_eq!(l.mmio_read(offset::ID, 0), Some(3 << 24));
        assert_eq!(l.mmio_write(offset::ID, 7 << 24, 0), Write::Done);
        assert_eq!(l.mmio_read(offset::ID, 0), Some(3 << 24), "ID kept");
        assert_eq!(l.mmio_read(0x30, 0), Some(VERSION));
        assert_eq!(l.mmio_write(0x30, 0, 0), Write::Done, "read-only: ignored");
        assert_eq!(l.mmio_read(0x30, 0), Some(VERSION));
        assert_eq!(l.mmio_read(offset::SVR, 0), Some(0x1ff));
        // LDR: bits 31:24 only; DFR: flat after reset, reserved bits ones.
        assert_eq!(l.mmio_read(offset::LDR, 0), Some(0));
        l.mmio_write(offset::LDR, 0x08ff_ffff, 0);
        assert_eq!(l.mmio_read(offset::LDR, 0), Some(0x0800_0000));
        assert_eq!(l.mmio_read(offset::DFR, 0), Some(0xffff_ffff));
        l.mmio_write(offset::DFR, 0, 0);
        assert_eq!(l.mmio_read(offset::DFR, 0), Some(0x0fff_ffff));
        assert!(l.recipient().cluster);
        // TPR masks to 8 bits; PPR follows it.
        l.mmio_write(offset::TPR, 0x1234, 0);
        assert_eq!(l.mmio_read(offset::TPR, 0), Some(0x34));
        assert_eq!(l.mmio_read(0xa0, 0), Some(0x34));
        // Timer through the page: divide, LVT, initial and current count.
        l.set_timer_clock(1);
        l.mmio_write(0x3e0, 0xb, 0);
        assert_eq!(l.mmio_read(0x3e0, 0), Some(0xb));
        l.mmio_write(offset::LVT_TIMER, 0x30, 0);
        assert_eq!(l.mmio_read(offset::LVT_TIMER, 0), Some(0x30));
        l.mmio_write(0x380, 100, 0);
        assert_eq!(l.mmio_read(0x380, 0), Some(100));
        assert_eq!(l.mmio_read(0x390, 40), Some(60));
        l.tick(100);
        assert_eq!(l.mmio_read(0x200 + 0x10, 0), Some(1 << 16), "IRR: 0x30");
        // LVT LINT0 / error keep their defined bits.
        l.mmio_write(0x350, 0xffff_ffff, 0);
        assert_eq!(l.mmio_read(0x350, 0), Some(0x0001_17ff));
        // ESR: any write clears it.
        l.raise(3);
        assert_eq!(l.mmio_read(0x280, 0), Some(ESR_RECEIVE_ILLEGAL));
        l.mmio_write(0x280, 0x1234, 0);
        assert_eq!(l.mmio_read(0x280, 0), Some(0));
        // Write-only, reserved, unaligned and out-of-page offsets.
        assert_eq!(l.mmio_read(offset::EOI, 0), Some(0));
        assert_eq!(l.mmio_read(0x3f0, 0), Some(0), "no SELF IPI register");
        assert_eq!(l.mmio_write(0x3f0, 0x40, 0), Write::Done);
        assert_eq!(highest(&l.irr), Some(0x30), "SELF IPI write ignored");
        assert_eq!(l.mmio_read(0x3a0, 0), Some(0));
        assert_eq!(l.mmio_read(0x24, 0), Some(0));
        assert_eq!(l.mmio_read(0x1000, 0), Some(0));
        assert_eq!(l.mmio_write(0x84, 0xff, 0), Write::Done);
        assert_eq!(l.mmio_write(u32::MAX, 0xff, 0), Write::Done);
        assert_eq!(l.mmio_read(offset::TPR, 0), Some(0x34));
    }

    #[test]
    fn mmio_is_not_decoded_in_x2apic_mode_or_when_disabled() {
        let mut l = x2(1);
        assert!(!l.mmio_decoded());
        assert_eq!(l.mmio_read(offset::ID, 0), None);
        assert_eq!(l.mmio_write(offset::TPR, 0x20, 0), Write::Done);
        assert_eq!(l.mmio_write(offset::ICR_LOW, 0x40, 0), Write::Done);
        assert_eq!(l.read(reg::TPR, 0), Some(0), "the write went nowhere");
        let mut off = Lapic::new(1);
        assert!(off.set_apic_base(APIC_BASE_DEFAULT));
        assert_eq!(off.mode(), Mode::Disabled);
        assert_eq!(off.mmio_read(offset::SVR, 0), None);
        assert_eq!(off.mmio_write(offset::SVR, 0x1ff, 0), Write::Done);
        assert!(off.set_apic_base(APIC_BASE_DEFAULT | BASE_ENABLE));
        assert_eq!(off.mmio_read(offset::SVR, 0), Some(0xff), "still reset");
        // xAPIC state the page wrote is gone after x2APIC and back.
        let mut l = xapic(1);
        l.mmio_write(offset::LDR, 0x0100_0000, 0);
        assert!(l.set_apic_base(APIC_BASE_DEFAULT | BASE_ENABLE | BASE_X2APIC));
        assert_eq!(l.read(reg::LDR, 0), Some(2), "x2APIC LDR is derived");
        assert_eq!(l.write(reg::DFR, 0, 0), Write::Fault, "no DFR MSR");
        assert_eq!(l.read(reg::ICR_HIGH, 0), None);
    }

    proptest::proptest! {
        /// Random MSR traffic: only legal vectors are ever pending.
        #[test]
        fn random_register_traffic_keeps_the_apic_itself(
            ops in proptest::collection::vec((0x800u32..0x840, proptest::prelude::any::<u64>(), proptest::prelude::any::<bool>(), 0u64..1 << 40), 0..200)
        ) {
            let mut l = x2(1);
            for (msr, value, write, now) in ops {
                if write {
                    let _ = l.write(msr, value, now);
                } else {
                    let _ = l.read(msr, now);
                }
                l.tick(now);
                if let Some(v) = l.pending() {
                    proptest::prop_assert!(v >= 16, "illegal vector {v} pending");
                    l.acknowledge(v);
                }
                // No register write changes the APIC's identity or mode.
                proptest::prop_assert_eq!(l.read(reg::ID, now), Some(1));
                proptest::prop_assert_eq!(l.mode(), Mode::X2Apic);
            }
        }

        /// Page writes never fault, and never change identity or mode.
        #[test]
        fn random_page_traffic_keeps_the_apic_itself(
            ops in proptest::collection::vec((0u32..0x1100, proptest::prelude::any::<u32>(), proptest::prelude::any::<bool>(), 0u64..1 << 40), 0..200)
        ) {
            let mut l = xapic(1);
            for (offset, value, write, now) in ops {
                if write {
                    proptest::prop_assert_ne!(l.mmio_write(offset, value, now), Write::Fault);
                } else {
                    let _ = l.mmio_read(offset, now);
                }
                l.tick(now);
                if let Some(v) = l.pending() {
                    proptest::prop_assert!(v >= 16, "illegal vector {v} pending");
                    l.acknowledge(v);
                }
                proptest::prop_assert_eq!(l.mmio_read(offset::ID, now), Some(1 << 24));
                proptest::prop_assert_eq!(l.mode(), Mode::XApic);
            }
        }
    }
}
