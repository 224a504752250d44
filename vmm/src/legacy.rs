//! The small PC platform devices Linux looks for at boot, each only as far
//! as Linux needs it to decide quickly and correctly what the VM has:
//!
//! - [`Pic`]: a dual 8259A (Intel 8259A datasheet) that accepts the ICW
//!   and OCW sequence and reads its mask back, so Linux's `probe_8259A`
//!   (arch/x86/kernel/i8259.c) finds a PIC, masks it and moves on to the
//!   IOAPIC. It never delivers an interrupt.
//! - [`AcpiPm`]: the ACPI PM1a event and control blocks (ACPI 6.x 4.8.3):
//!   nothing ever sets a status bit, SCI_EN reads 1 (the VM is always in
//!   ACPI mode), and sleep type 5 with SLP_EN is the soft-off state.
//! - [`Rtc`]: an MC146818 CMOS clock that always shows the same valid BCD
//!   date and time, never in an update cycle, plus its RAM.
//! - [`PciConfig`]: PCI configuration mechanism 1 with no devices behind
//!   it: the address latch reads back, data reads all ones.
//!
//! Each is a [`PortDevice`] on the VM's port bus ([`crate::devices`]).

use crate::bits::low_u8;
use crate::devices::{PortDevice, PortEffect, ones};

/// The master 8259A's command port (data at +1).
pub const PIC_MASTER: u16 = 0x20;
/// The slave 8259A's command port (data at +1).
pub const PIC_SLAVE: u16 = 0xa0;

/// One 8259A.
#[derive(Clone, Copy, Debug, Default)]
struct Chip {
    imr: u8,
    /// Vector base from ICW2 (kept for completeness; never used).
    base: u8,
    /// The next initialization word expected (2, 3, 4), or 0.
    icw: u8,
    /// ICW1 asked for ICW4 (bit 0) / single mode, so no ICW3 (bit 1).
    icw1: u8,
    /// OCW3 read-register selection: read ISR instead of IRR.
    read_isr: bool,
}

impl Chip {
    fn write(&mut self, data_port: bool, value: u8) {
        if !data_port {
            if value & 0x10 != 0 {
                // ICW1: starts initialization and clears the mask
                // (datasheet, "Initialization Command Words").
                self.icw1 = value;
                self.icw = 2;
                self.imr = 0;
            } else if value & 0x08 != 0 {
                // OCW3: RR (bit 1) with RIS (bit 0) selects the register.
                if value & 0x02 != 0 {
                    self.read_isr = value & 0x01 != 0;
                }
            }
            // OCW2 (EOI, rotation): nothing is ever in service.
            return;
        }
        let single = self.icw1 & 0x02 != 0;
        let want_icw4 = self.icw1 & 0x01 != 0;
        self.icw = match self.icw {
            2 => {
                self.base = value & 0xf8;
                if !single {
                    3
                } else if want_icw4 {
                    4
                } else {
                    0
                }
            }
            3 if want_icw4 => 4,
            3 | 4 => 0,
            _ => {
                // OCW1: the interrupt mask.
                self.imr = value;
                0
            }
        };
    }

    fn read(&self, data_port: bool) -> u8 {
        if data_port {
            self.imr
        } else {
            // IRR or ISR (whichever OCW3 chose): never anything pending.
            let _ = self.read_isr;
            0
        }
    }
}

/// The dual 8259A: master at 0x20/0x21, slave at 0xA0/0xA1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pic {
    master: Chip,
    slave: Chip,
}

impl Pic {
    fn chip(&mut self, port: u16) -> Option<&mut Chip> {
        match port & !1 {
            PIC_MASTER => Some(&mut self.master),
            PIC_SLAVE => Some(&mut self.slave),
            _ => None,
        }
    }

    /// A read of command/data `port` of either chip; other ports read 0xff.
    pub fn read(&mut self, port: u16) -> u8 {
        self.chip(port).map_or(0xff, |c| c.read(port & 1 != 0))
    }

    /// A write to command/data `port` of either chip; other ports are ignored.
    pub fn write(&mut self, port: u16, value: u8) {
        if let Some(c) = self.chip(port) {
            c.write(port & 1 != 0, value);
        }
    }

    /// The masks (master, slave).
    pub fn masks(&self) -> (u8, u8) {
        (self.master.imr, self.slave.imr)
    }
}

/// The PM1a event block's port (status at +0, enable at +2), as the VM's
/// FADT names it.
pub const PM1A_EVT: u16 = 0x600;
/// The PM1a control block's port.
pub const PM1A_CNT: u16 = 0x604;
/// PM1 control: SCI_EN (0), SLP_TYP (12:10), SLP_EN (13, write-only).
const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;
/// The sleep type of S5 (soft off) in the VM's \_S5 package.
pub const SLP_TYP_S5: u16 = 5;

/// The ACPI fixed-hardware power management registers.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcpiPm {
    enable: u16,
    control: u16,
}

impl AcpiPm {
    /// Byte `i` of the 6-byte block: event status (0-1), enable (2-3),
    /// control (4-5).
    fn byte(&self, i: u16) -> u8 {
        let control = (self.control | SCI_EN) & !SLP_EN;
        let word = match i {
            // Status: write-one-to-clear, and nothing ever sets a bit.
            0 | 1 => 0,
            2 | 3 => self.enable,
            _ => control,
        };
        low_u8((word >> (8 * (i % 2))).into())
    }

    /// A read of `size` bytes at `port` (inside the block; bytes past its
    /// end read all ones).
    pub fn read(&self, port: u16, size: u8) -> u32 {
        let start = port.wrapping_sub(PM1A_EVT);
        (0..u16::from(size.clamp(1, 4))).fold(0, |acc, k| {
            let i = start.wrapping_add(k);
            let b = if i < 6 { self.byte(i) } else { 0xff };
            acc | u32::from(b) << (8 * k)
        })
    }

    /// A write of `size` bytes at `port`; true if it puts the VM in S5
    /// (SLP_EN with SLP_TYP 5): a power-off.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> bool {
        let start = port.wrapping_sub(PM1A_EVT);
        let mut slept = false;
        for k in 0..u16::from(size.clamp(1, 4)) {
            let b = u16::from(low_u8((value >> (8 * k)).into()));
            let shift = 8 * (start.wrapping_add(k) % 2);
            let keep = !(0xff << shift);
            match start.wrapping_add(k) {
                2 | 3 => self.enable = (self.enable & keep) | b << shift,
                4 | 5 => {
                    let control = (self.control & keep) | b << shift;
                    if control & SLP_EN != 0 && (control >> 10) & 7 == SLP_TYP_S5 {
                        slept = true;
                    }
                    self.control = control & !SLP_EN;
                }
                _ => {}
            }
        }
        slept
    }
}

/// The RTC's index port: selects the CMOS register [`RTC_DATA`] reaches.
pub const RTC_INDEX: u16 = 0x70;
/// The RTC's data port: reads and writes the register `RTC_INDEX` selected.
pub const RTC_DATA: u16 = 0x71;

/// The MC146818 clock: a fixed time, 2024-01-01 (a Monday) 12:00:00, in
/// BCD, 24-hour mode; the rest of its 128 bytes is CMOS RAM.
#[derive(Clone, Debug)]
pub struct Rtc {
    index: u8,
    ram: [u8; 128],
}

impl Default for Rtc {
    fn default() -> Self {
        Rtc {
            index: 0,
            ram: [0; 128],
        }
    }
}

impl Rtc {
    /// Register `r` (MC146818 datasheet, address map).
    fn register(&self, r: u8) -> u8 {
        match r {
            0x00 => 0x00,            // seconds
            0x02 => 0x00,            // minutes
            0x04 => 0x12,            // hours
            0x06 => 0x02,            // day of week (Sunday = 1)
            0x07 => 0x01,            // day of month
            0x08 => 0x01,            // month
            0x09 => 0x24,            // year
            0x01 | 0x03 | 0x05 => 0, // alarms
            // A: UIP (bit 7) clear, 32.768 kHz time base, 1024 Hz rate.
            0x0a => 0x26,
            // B: 24-hour (bit 1), BCD (bit 2 clear), no interrupts.
            0x0b => 0x02,
            // C: no interrupt flags; D: VRT, the RAM and time are valid.
            0x0c => 0x00,
            0x0d => 0x80,
            // The century byte ACPI's FADT points at.
            0x32 => 0x20,
            r => self.ram.get(usize::from(r)).copied().unwrap_or(0),
        }
    }

    /// A read of the index or data port.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            RTC_DATA => self.register(self.index),
            // The index port is write-only.
            _ => 0xff,
        }
    }

    /// A write to the index or data port.
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            // Bit 7 is the NMI mask (there are no NMIs to mask here).
            RTC_INDEX => self.index = value & 0x7f,
            // Writes to the clock and control registers are dropped: the
            // time is fixed. The RAM keeps what is written.
            _ if self.index >= 0x0e && self.index != 0x32 => {
                if let Some(b) = self.ram.get_mut(usize::from(self.index)) {
                    *b = value;
                }
            }
            _ => {}
        }
    }
}

/// PCI configuration mechanism 1: CONFIG_ADDRESS (0xCF8, 32-bit) and
/// CONFIG_DATA (0xCFC-0xCFF).
pub const PCI_ADDRESS: u16 = 0xcf8;
/// CONFIG_DATA's first port.
pub const PCI_DATA: u16 = 0xcfc;

/// PCI configuration mechanism 1 with no devices: only the address latch
/// is kept, and CONFIG_DATA reads all ones, so a scan finds nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct PciConfig {
    address: u32,
}

impl PciConfig {
    /// The address latch (dword accesses only, as the mechanism defines).
    pub fn address(&self) -> u32 {
        self.address
    }

    /// Sets the address latch.
    pub fn set_address(&mut self, value: u32) {
        self.address = value;
    }
}

impl PortDevice for Pic {
    fn read(&mut self, base: u16, offset: u16, _size: u8) -> Option<u32> {
        Some(u32::from(Pic::read(self, base.wrapping_add(offset))))
    }

    fn write(&mut self, base: u16, offset: u16, _size: u8, value: u32) -> Option<PortEffect> {
        Pic::write(self, base.wrapping_add(offset), low_u8(value.into()));
        Some(PortEffect::None)
    }
}

/// S5 is the VM's power-off, with status 0.
impl PortDevice for AcpiPm {
    fn read(&mut self, base: u16, offset: u16, size: u8) -> Option<u32> {
        Some(AcpiPm::read(self, base.wrapping_add(offset), size))
    }

    fn write(&mut self, base: u16, offset: u16, size: u8, value: u32) -> Option<PortEffect> {
        Some(
            if AcpiPm::write(self, base.wrapping_add(offset), size, value) {
                PortEffect::Exit { status: 0 }
            } else {
                PortEffect::None
            },
        )
    }
}

impl PortDevice for Rtc {
    fn read(&mut self, base: u16, offset: u16, _size: u8) -> Option<u32> {
        Some(u32::from(Rtc::read(self, base.wrapping_add(offset))))
    }

    fn write(&mut self, base: u16, offset: u16, _size: u8, value: u32) -> Option<PortEffect> {
        Rtc::write(self, base.wrapping_add(offset), low_u8(value.into()));
        Some(PortEffect::None)
    }
}

/// CONFIG_ADDRESS takes dword accesses only; other widths there (the
/// mechanism 2 probe's byte write to 0xCFB) and all of CONFIG_DATA are
/// claimed, and no device answers: reads are all ones.
impl PortDevice for PciConfig {
    fn read(&mut self, base: u16, offset: u16, size: u8) -> Option<u32> {
        Some(if base.wrapping_add(offset) == PCI_ADDRESS && size == 4 {
            self.address()
        } else {
            ones(size)
        })
    }

    fn write(&mut self, base: u16, offset: u16, size: u8, value: u32) -> Option<PortEffect> {
        if base.wrapping_add(offset) == PCI_ADDRESS && size == 4 {
            self.set_address(value);
        }
        Some(PortEffect::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pic_takes_the_init_sequence_and_reads_its_mask_back() {
        let mut p = Pic::default();
        // Linux init_8259A: mask all, ICW1-4 on both, then restore masks.
        p.write(0x21, 0xff);
        p.write(0xa1, 0xff);
        assert_eq!(p.masks(), (0xff, 0xff));
        p.write(0x20, 0x11);
        assert_eq!(p.read(0x21), 0, "ICW1 clears the mask");
        p.write(0x21, 0x30); // ICW2
        p.write(0x21, 0x04); // ICW3
        p.write(0x21, 0x01); // ICW4
        p.write(0xa0, 0x11);
        p.write(0xa1, 0x38);
        p.write(0xa1, 0x02);
        p.write(0xa1, 0x01);
        assert_eq!(p.masks(), (0, 0), "ICWs are not masks");
        // probe_8259A: the mask reads back.
        p.write(0x21, 0x5a);
        assert_eq!(p.read(0x21), 0x5a);
        p.write(0xa1, 0xfb);
        assert_eq!(p.read(0xa1), 0xfb);
        // OCW2 (EOI) and OCW3 (read ISR): nothing pending.
        p.write(0x20, 0x20);
        p.write(0x20, 0x0b);
        assert_eq!(p.read(0x20), 0);
        assert_eq!(p.read(0x21), 0x5a);
        // Single mode without ICW4: only ICW2 follows.
        p.write(0x20, 0x12);
        p.write(0x21, 0x08);
        p.write(0x21, 0x77);
        assert_eq!(p.read(0x21), 0x77);
        assert_eq!(p.read(0x30), 0xff, "not a PIC port");
    }

    #[test]
    fn acpi_pm_reads_sci_en_remembers_enables_and_powers_off_in_s5() {
        let mut pm = AcpiPm::default();
        assert_eq!(pm.read(PM1A_EVT, 4), 0);
        assert_eq!(pm.read(PM1A_CNT, 2), 1, "SCI_EN");
        assert!(!pm.write(PM1A_EVT + 2, 2, 0x0121));
        assert_eq!(pm.read(PM1A_EVT, 4), 0x0121 << 16, "status stays 0");
        assert!(!pm.write(PM1A_EVT, 2, 0xffff), "clearing status: nothing");
        assert_eq!(pm.read(PM1A_EVT + 2, 1), 0x21);
        // S3 (type 1) is not offered; SLP_TYP without SLP_EN does nothing.
        assert!(!pm.write(PM1A_CNT, 2, 1 << 13 | 1 << 10));
        assert!(!pm.write(PM1A_CNT, 2, 5 << 10));
        assert_eq!(pm.read(PM1A_CNT, 2), 5 << 10 | 1, "SLP_EN reads 0");
        assert!(pm.write(PM1A_CNT, 2, 1 << 13 | 5 << 10));
        // Byte-wise too (the high byte holds SLP_EN and SLP_TYP).
        let mut pm = AcpiPm::default();
        assert!(pm.write(PM1A_CNT + 1, 1, 0x34));
        assert_eq!(pm.read(PM1A_CNT, 4), 0xffff_0000 | 0x1401);
    }

    #[test]
    fn rtc_shows_a_fixed_valid_bcd_time() {
        let mut rtc = Rtc::default();
        let reg = |rtc: &mut Rtc, r: u8| {
            rtc.write(RTC_INDEX, r | 0x80);
            rtc.read(RTC_DATA)
        };
        assert_eq!(reg(&mut rtc, 0x0a) & 0x80, 0, "UIP clear");
        assert_eq!(reg(&mut rtc, 0x0b), 0x02);
        assert_eq!(reg(&mut rtc, 0x0d), 0x80);
        let time: std::vec::Vec<u8> = [0, 2, 4, 7, 8, 9, 0x32]
            .iter()
            .map(|&r| reg(&mut rtc, r))
            .collect();
        assert_eq!(time, [0x00, 0x00, 0x12, 0x01, 0x01, 0x24, 0x20]);
        // Clock writes are dropped, RAM keeps its bytes.
        rtc.write(RTC_INDEX, 0x04);
        rtc.write(RTC_DATA, 0x23);
        assert_eq!(reg(&mut rtc, 0x04), 0x12);
        rtc.write(RTC_INDEX, 0x40);
        rtc.write(RTC_DATA, 0x99);
        assert_eq!(reg(&mut rtc, 0x40), 0x99);
        assert_eq!(reg(&mut rtc, 0x7f), 0);
        assert_eq!(rtc.read(RTC_INDEX), 0xff);
    }
}
