//! A virtual local APIC (SDM Vol. 3A, chapter 11): the registers a guest
//! reaches through MSRs 0x800-0x8FF in x2APIC mode (11.12) or through the
//! 4 KiB page at IA32_APIC_BASE in xAPIC mode (11.4.1, Table 11-1), the
//! interrupt request/in-service/trigger-mode state, the timer (one-shot,
//! periodic and TSC-deadline) and IPIs as values. It is a register-level
//! state machine: time comes in as TSC readings, IPIs go out as [`Ipi`]
//! values the hypervisor delivers, interrupts go in through
//! [`Lapic::raise`] / [`Lapic::raise_level`].
//!
//! Both modes share one register file: xAPIC offset 0x10 * n is x2APIC MSR
//! 0x800 + n (Table 11-1 vs. Table 11-6). Where they differ:
//!
//! | register | xAPIC (MMIO) | x2APIC (MSR) |
//! |---|---|---|
//! | ID | ID in bits 31:24, writes ignored | 32-bit ID, read-only |
//! | LDR | writable, bits 31:24 | derived from the ID (11.12.10.2), read-only |
//! | DFR (0xE0) | flat 0xFFFFFFFF / cluster 0x0FFFFFFF | does not exist |
//! | ICR | low half (0x300) sends, high half (0x310) holds the destination in bits 31:24; delivery status reads 0 | one 64-bit write sends |
//! | SELF IPI | does not exist | 0x83F |
//! | bad values | reserved bits dropped, writes to read-only registers ignored | #GP |
//!
//! Linux 6.1 without interrupt remapping keeps xAPIC mode and the flat
//! logical model, so logical destinations ([`Destination::Logical`]) are
//! decoded in both modes and [`Recipient::accepts`] tells which APICs a
//! message reaches.
//!
//! Trigger mode: interrupts raised with [`Lapic::raise_level`] set their
//! TMR bit; the EOI that retires such a vector answers [`Write::Eoi`] so
//! the caller can forward it to the IOAPIC (SDM 11.8.5: EOIs of
//! level-triggered interrupts are broadcast to the I/O APICs). Edge
//! interrupts (every IPI, the timer, ISA IRQs) end silently.
//!
//! The parts, one per file: [`registers`] (the register file, its MSR and
//! MMIO interfaces and their access rules), [`interrupts`] (requests,
//! priorities, in-service and EOI, SDM 11.8), [`timer`] (11.5.4) and
//! [`icr`] (IPIs and message destinations, 11.6 and 11.12.9-10).
#![deny(missing_docs)]

mod icr;
mod interrupts;
mod registers;
mod timer;

pub use icr::{Delivery, Destination, Ipi, Recipient};
pub use registers::{XAPIC_PAGE, offset, reg};
pub use timer::IA32_TSC_DEADLINE;

use registers::{DFR_FLAT, LVT_COUNT, LVT_MASKED};

/// IA32_APIC_BASE (SDM 11.4.4): base 0xFEE00000, BSP (8), x2APIC enable
/// (10), global enable (11).
pub const APIC_BASE_DEFAULT: u64 = 0xfee0_0000;
const BASE_BSP: u64 = 1 << 8;
const BASE_X2APIC: u64 = 1 << 10;
const BASE_ENABLE: u64 = 1 << 11;

/// The result of a register write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Written; nothing more to do.
    Done,
    /// #GP: a read-only or reserved register, reserved bits, or the APIC
    /// not in x2APIC mode. (MMIO writes never fault: the xAPIC ignores
    /// what it does not accept.)
    Fault,
    /// An ICR write sent this IPI.
    Send(Ipi),
    /// An EOI retired this level-triggered vector: the caller forwards it
    /// to the IOAPIC(s) (SDM 11.8.5), which clear their remote IRR.
    Eoi(u8),
}

/// Which interface the APIC answers on (IA32_APIC_BASE EN and EXTD).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Globally disabled: it takes no interrupts and decodes nothing.
    Disabled,
    /// Enabled, registers in the MMIO page (SDM 11.4.1).
    XApic,
    /// Enabled, registers as MSRs 0x800-0x8FF (SDM 11.12).
    X2Apic,
}

/// One vCPU's local APIC.
#[derive(Clone, Debug)]
pub struct Lapic {
    id: u32,
    base: u64,
    tpr: u32,
    svr: u32,
    esr: u32,
    icr: u64,
    /// xAPIC logical destination and destination format registers.
    ldr: u32,
    dfr: u32,
    irr: [u64; 4],
    isr: [u64; 4],
    /// Trigger mode of each requested/in-service vector: set = level.
    tmr: [u64; 4],
    /// LVT CMCI, timer, thermal, performance, LINT0, LINT1, error.
    lvt: [u32; LVT_COUNT],
    timer_initial: u32,
    timer_divide: u32,
    /// TSC at which the armed timer fires next.
    timer_deadline: Option<u64>,
    /// TSC ticks per timer count at divide-by-1.
    tsc_per_count: u64,
}

impl Lapic {
    /// The APIC of vCPU `id` after reset (SDM 11.4.7.1): xAPIC mode,
    /// enabled, software-disabled, every LVT masked, LDR 0, DFR flat.
    pub fn new(id: u32) -> Self {
        Lapic {
            id,
            base: APIC_BASE_DEFAULT | BASE_ENABLE | if id == 0 { BASE_BSP } else { 0 },
            tpr: 0,
            svr: 0xff,
            esr: 0,
            icr: 0,
            ldr: 0,
            dfr: DFR_FLAT,
            irr: [0; 4],
            isr: [0; 4],
            tmr: [0; 4],
            lvt: [LVT_MASKED; LVT_COUNT],
            timer_initial: 0,
            timer_divide: 0,
            timer_deadline: None,
            tsc_per_count: 1,
        }
    }

    /// The APIC ID (the vCPU's index, as the MADT gives it).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether the APIC is enabled in x2APIC mode.
    pub fn x2apic(&self) -> bool {
        self.base & (BASE_ENABLE | BASE_X2APIC) == BASE_ENABLE | BASE_X2APIC
    }

    /// Which interface the APIC answers on.
    pub fn mode(&self) -> Mode {
        if self.base & BASE_ENABLE == 0 {
            Mode::Disabled
        } else if self.base & BASE_X2APIC != 0 {
            Mode::X2Apic
        } else {
            Mode::XApic
        }
    }

    /// How this APIC recognises message destinations, now.
    pub fn recipient(&self) -> Recipient {
        Recipient {
            mode: self.mode(),
            id: self.id,
            logical_id: (self.ldr >> 24) as u8,
            cluster: self.dfr >> 28 == 0,
        }
    }

    /// Whether a message to `dest` reaches this APIC (see
    /// [`Recipient::accepts`]).
    pub fn accepts(&self, dest: Destination, from_self: bool) -> bool {
        self.recipient().accepts(dest, from_self)
    }

    /// RDMSR IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.base
    }

    /// WRMSR IA32_APIC_BASE: only the enable bits may change, and only along
    /// the architectural transitions (SDM Figure 11-27: no x2APIC without
    /// the global enable; no x2APIC -> xAPIC without disabling first).
    pub fn set_apic_base(&mut self, value: u64) -> bool {
        let fixed = !(BASE_X2APIC | BASE_ENABLE);
        if value & fixed != self.base & fixed {
            return false;
        }
        let (enable, x2) = (value & BASE_ENABLE != 0, value & BASE_X2APIC != 0);
        if x2 && !enable || self.x2apic() && enable && !x2 {
            return false;
        }
        self.base = value;
        if !enable {
            *self = Lapic {
                base: value,
                ..Lapic::new(self.id)
            };
        }
        true
    }
}

/// APICs the tests of every part start from.
#[cfg(test)]
mod test_apics {
    use super::*;

    /// An APIC in x2APIC mode, software-enabled.
    pub fn x2(id: u32) -> Lapic {
        let mut l = Lapic::new(id);
        assert!(l.set_apic_base(
            APIC_BASE_DEFAULT | BASE_ENABLE | BASE_X2APIC | if id == 0 { BASE_BSP } else { 0 }
        ));
        assert_eq!(l.write(reg::SVR, 0x1ff, 0), Write::Done);
        l
    }

    /// An APIC in xAPIC mode, software-enabled through the page.
    pub fn xapic(id: u32) -> Lapic {
        let mut l = Lapic::new(id);
        assert_eq!(l.mmio_write(offset::SVR, 0x1ff, 0), Write::Done);
        l
    }
}
