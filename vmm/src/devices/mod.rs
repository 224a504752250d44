//! The port devices a VM may have, on a bus keyed by port ranges
//! ([`bus`]): a 16550A UART on COM1 ([`uart`], its output made into
//! console lines by [`console_line`]), QEMU's isa-debug-exit
//! ([`debug_exit`]) and fw_cfg I/O interface ([`fw_cfg`]), the reset
//! control register and the 8042's reset line ([`reset`]), and the PC
//! platform devices of [`crate::legacy`] (8259 PIC, ACPI PM1a, CMOS RTC,
//! PCI mechanism 1 without devices). Each is a register-level state
//! machine behind [`PortDevice`]; [`LegacyPorts`] routes each access to
//! the device whose range holds the port and returns effects (a completed
//! console line, the VM's exit or reset) as values.
#![deny(missing_docs)]

pub mod bus;
pub mod console_line;
pub mod debug_exit;
pub mod fw_cfg;
pub mod reset;
pub mod uart;

pub use bus::{BusError, PortBus, PortRange};
pub use console_line::{ConsoleLine, LINE_BYTES, console_byte};
pub use debug_exit::DebugExit;
pub use fw_cfg::FwCfg;
pub use reset::{I8042, ResetControl};
pub use uart::{RX_FIFO, Uart, UartOutput};

use crate::dispatch::Outcome;
use crate::legacy::{
    AcpiPm, PCI_ADDRESS, PCI_DATA, PIC_MASTER, PIC_SLAVE, PM1A_CNT, PM1A_EVT, PciConfig, Pic,
    RTC_DATA, RTC_INDEX, Rtc,
};

/// Which devices a VM has (from its config's `devices`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSet {
    /// The 16550A UART on COM1.
    pub uart: bool,
    /// QEMU's isa-debug-exit at 0xF4.
    pub debug_exit: bool,
    /// QEMU's fw_cfg at 0x510/0x511.
    pub fw_cfg: bool,
    /// The testdev MMIO scratch page (crate::mmio::TestDev).
    pub testdev: bool,
    /// The masked dual 8259A at 0x20/0x21, 0xA0/0xA1.
    pub pic: bool,
    /// ACPI PM1a event (0x600) and control (0x604) blocks.
    pub acpi_pm: bool,
    /// The reset control register 0xCF9 and the 8042's command port 0x64
    /// (command 0xFE pulses the reset line).
    pub reset: bool,
    /// The CMOS RTC at 0x70/0x71.
    pub rtc: bool,
    /// PCI configuration mechanism 1 at 0xCF8/0xCFC, with no devices.
    pub pci: bool,
}

impl DeviceSet {
    /// Every port device (not the testdev page).
    pub const ALL: DeviceSet = DeviceSet {
        uart: true,
        debug_exit: true,
        fw_cfg: true,
        testdev: false,
        pic: true,
        acpi_pm: true,
        reset: true,
        rtc: true,
        pci: true,
    };

    /// What a Linux VM gets: the console UART and the platform devices
    /// its boot probes, nothing QEMU-specific.
    pub const LINUX: DeviceSet = DeviceSet {
        uart: true,
        debug_exit: false,
        fw_cfg: false,
        testdev: false,
        pic: true,
        acpi_pm: true,
        reset: true,
        rtc: true,
        pci: true,
    };

    /// No devices at all.
    pub const NONE: DeviceSet = DeviceSet {
        uart: false,
        debug_exit: false,
        fw_cfg: false,
        testdev: false,
        pic: false,
        acpi_pm: false,
        reset: false,
        rtc: false,
        pci: false,
    };
}

/// The reset control register (PIIX/ICH "RST_CNT"): bit 2 starts a reset.
pub const RESET_CONTROL: u16 = 0xcf9;
/// The 8042's status/command port; command 0xFE pulses the reset line.
pub const I8042_COMMAND: u16 = 0x64;

/// COM1's eight registers (PC/AT convention).
pub const COM1: u16 = 0x3f8;
/// COM1's ISA IRQ (PC convention): IOAPIC pin 4.
pub const COM1_IRQ: u8 = 4;
/// isa-debug-exit's port (QEMU's default iobase).
pub const DEBUG_EXIT: u16 = 0xf4;
/// fw_cfg's selector port (QEMU docs/specs/fw_cfg.txt, "Selector Register
/// IOport: 0x510").
pub const FW_CFG_SELECTOR: u16 = 0x510;
/// fw_cfg's data port ("Data Register IOport: 0x511").
pub const FW_CFG_DATA: u16 = 0x511;

/// What a port write did beyond changing device state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortEffect {
    /// Nothing beyond the device's state.
    None,
    /// The UART has a complete line for the console.
    ConsoleLine,
    /// isa-debug-exit was written: the VM ends with this status. (QEMU
    /// turns value v into process exit code (v << 1) | 1; Atoll keeps the
    /// value itself as the VM's status.)
    Exit {
        /// The value written (ACPI S5: 0).
        status: u32,
    },
    /// A platform reset (0xCF9 bit 2, the 8042's 0xFE command). ACPI S5
    /// is `Exit { status: 0 }`.
    Reset,
}

impl From<PortEffect> for Option<Outcome> {
    fn from(effect: PortEffect) -> Self {
        match effect {
            PortEffect::Exit { status } => Some(Outcome::PowerOff { status }),
            PortEffect::Reset => Some(Outcome::Reboot),
            _ => None,
        }
    }
}

/// A device on the port bus. It is told the port as the first port of the
/// range it was found at (`base`) and the offset into that range, so the
/// same device can sit at any base, and one device at several ranges
/// (the two 8259s) can tell them apart.
pub trait PortDevice {
    /// A read of `size` bytes (the guest's IN: 1, 2 or 4); `None` when the
    /// device does not decode this access, which then reads as an
    /// unclaimed port.
    fn read(&mut self, base: u16, offset: u16, size: u8) -> Option<u32>;

    /// A write of `size` bytes of `value` (already cut to `size`); `None`
    /// when the device does not decode it.
    fn write(&mut self, base: u16, offset: u16, size: u8, value: u32) -> Option<PortEffect>;
}

/// All ones in an access of `size` bytes: what a port no device drives
/// reads as.
pub(crate) fn ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

/// Which of a VM's port devices answers at a range of the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortId {
    Uart,
    DebugExit,
    FwCfg,
    Pic,
    AcpiPm,
    ResetControl,
    I8042,
    Rtc,
    Pci,
}

impl PortId {
    /// Whether a VM with `set` has this device.
    fn present_in(self, set: DeviceSet) -> bool {
        match self {
            PortId::Uart => set.uart,
            PortId::DebugExit => set.debug_exit,
            PortId::FwCfg => set.fw_cfg,
            PortId::Pic => set.pic,
            PortId::AcpiPm => set.acpi_pm,
            PortId::ResetControl | PortId::I8042 => set.reset,
            PortId::Rtc => set.rtc,
            PortId::Pci => set.pci,
        }
    }
}

/// Where each port device answers (PC/AT conventions, QEMU's ports, and
/// the PM1a blocks the VM's FADT names). The reset control register sits
/// inside the PCI configuration ports (0xCF8-0xCFF), which therefore come
/// as CONFIG_ADDRESS's first byte and the rest.
const PORT_MAP: [(PortRange, PortId); 11] = [
    (PortRange::inclusive(COM1, COM1 + 7), PortId::Uart),
    (PortRange::port(DEBUG_EXIT), PortId::DebugExit),
    (
        PortRange::inclusive(FW_CFG_SELECTOR, FW_CFG_DATA),
        PortId::FwCfg,
    ),
    (
        PortRange::inclusive(PIC_MASTER, PIC_MASTER + 1),
        PortId::Pic,
    ),
    (PortRange::inclusive(PIC_SLAVE, PIC_SLAVE + 1), PortId::Pic),
    (PortRange::inclusive(PM1A_EVT, PM1A_CNT + 1), PortId::AcpiPm),
    (PortRange::port(RESET_CONTROL), PortId::ResetControl),
    (PortRange::port(I8042_COMMAND), PortId::I8042),
    (PortRange::inclusive(RTC_INDEX, RTC_DATA), PortId::Rtc),
    (PortRange::port(PCI_ADDRESS), PortId::Pci),
    (
        PortRange::inclusive(RESET_CONTROL + 1, PCI_DATA + 3),
        PortId::Pci,
    ),
];

/// Whether no two ranges of `map` share a port.
const fn disjoint(map: &[(PortRange, PortId)]) -> bool {
    let [(first, _), rest @ ..] = map else {
        return true;
    };
    let mut others = rest;
    while let [(other, _), tail @ ..] = others {
        if first.overlaps(*other) {
            return false;
        }
        others = tail;
    }
    disjoint(rest)
}

// Every subset of a disjoint map is disjoint, so the bus of any
// `DeviceSet` takes all its ranges.
const _: () = assert!(disjoint(&PORT_MAP));

/// One VM's port devices and the bus that routes to them.
///
/// Interrupts: the bus samples each device's interrupt output after every
/// access it routes and after [`LegacyPorts::push_input`], and remembers
/// rising edges per ISA IRQ; the caller collects them with
/// [`LegacyPorts::take_irq_edges`] after each exit that touched the bus
/// and raises those IOAPIC pins (ISA interrupts are edge-triggered).
#[derive(Clone, Debug)]
pub struct LegacyPorts {
    set: DeviceSet,
    bus: PortBus<PortId>,
    /// The UART on COM1 (present on the bus if the set has it).
    pub uart: Uart,
    /// The UART's interrupt output when last sampled.
    uart_line: bool,
    /// ISA IRQs that rose since the last `take_irq_edges` (bit n = IRQ n).
    irq_edges: u16,
    /// The VM's MMIO test page, if it has one.
    pub testdev: Option<crate::mmio::TestDev>,
    debug_exit: DebugExit,
    fw_cfg: FwCfg,
    /// The 8259 pair.
    pub pic: Pic,
    /// The ACPI PM1a blocks.
    pub acpi_pm: AcpiPm,
    reset_control: ResetControl,
    i8042: I8042,
    /// The CMOS clock.
    pub rtc: Rtc,
    pci: PciConfig,
    /// Accesses to ports no device claims (a storm shows here).
    pub unclaimed: u64,
}

impl LegacyPorts {
    /// The devices of `set`, for a VM of `ram_bytes` of RAM and `cpus`
    /// vCPUs (which fw_cfg reports).
    pub fn new(set: DeviceSet, ram_bytes: u64, cpus: u16) -> Self {
        let mut bus = PortBus::default();
        for (range, id) in PORT_MAP {
            if id.present_in(set) {
                // Never refused: PORT_MAP is disjoint (asserted above).
                let _ = bus.insert(range, id);
            }
        }
        LegacyPorts {
            set,
            bus,
            testdev: set.testdev.then(crate::mmio::TestDev::default),
            uart: Uart::default(),
            uart_line: false,
            irq_edges: 0,
            debug_exit: DebugExit,
            fw_cfg: FwCfg::new(ram_bytes, cpus),
            pic: Pic::default(),
            acpi_pm: AcpiPm::default(),
            reset_control: ResetControl::default(),
            i8042: I8042,
            rtc: Rtc::default(),
            pci: PciConfig::default(),
            unclaimed: 0,
        }
    }

    fn device(&mut self, id: PortId) -> &mut dyn PortDevice {
        match id {
            PortId::Uart => &mut self.uart,
            PortId::DebugExit => &mut self.debug_exit,
            PortId::FwCfg => &mut self.fw_cfg,
            PortId::Pic => &mut self.pic,
            PortId::AcpiPm => &mut self.acpi_pm,
            PortId::ResetControl => &mut self.reset_control,
            PortId::I8042 => &mut self.i8042,
            PortId::Rtc => &mut self.rtc,
            PortId::Pci => &mut self.pci,
        }
    }

    /// Samples the interrupt outputs and records rising edges.
    fn sample_irqs(&mut self) {
        let line = self.set.uart && self.uart.interrupt_line();
        if line && !self.uart_line {
            self.irq_edges |= 1 << COM1_IRQ;
        }
        self.uart_line = line;
    }

    /// The ISA IRQs whose line rose since the last call (bit n = IRQ n).
    pub fn take_irq_edges(&mut self) -> u16 {
        core::mem::take(&mut self.irq_edges)
    }

    /// Console input for the UART (see [`Uart::push_input`]); 0 if the VM
    /// has none.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        if !self.set.uart {
            return 0;
        }
        let n = self.uart.push_input(bytes);
        self.sample_irqs();
        n
    }

    /// A read of `size` bytes; unclaimed ports read as all ones.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let value = match self.bus.get(port) {
            Some(hit) => self.device(hit.key).read(hit.base, hit.offset, size),
            None => None,
        };
        self.sample_irqs();
        value.unwrap_or_else(|| {
            self.unclaimed = self.unclaimed.saturating_add(1);
            ones(size)
        })
    }

    /// A write of the low `size` bytes of `value`; writes to unclaimed
    /// ports are dropped.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> PortEffect {
        let value = value & ones(size);
        let effect = match self.bus.get(port) {
            Some(hit) => self
                .device(hit.key)
                .write(hit.base, hit.offset, size, value),
            None => None,
        };
        self.sample_irqs();
        effect.unwrap_or_else(|| {
            self.unclaimed = self.unclaimed.saturating_add(1);
            PortEffect::None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> LegacyPorts {
        LegacyPorts::new(DeviceSet::ALL, 64 << 20, 2)
    }

    /// Sends `text` to COM1; how many console lines it completed.
    fn send(p: &mut LegacyPorts, text: &[u8]) -> usize {
        text.iter()
            .filter(|b| p.write(COM1, 1, u32::from(**b)) == PortEffect::ConsoleLine)
            .count()
    }

    #[test]
    fn the_uart_answers_at_com1_and_its_lines_reach_the_caller() {
        let mut p = ports();
        assert_eq!(p.read(COM1 + 5, 1) & 0x60, 0x60);
        assert_eq!(p.read(COM1 + 5, 4) & !0xff, 0, "one byte register");
        assert_eq!(send(&mut p, b"hi\r\n"), 1);
        let mut out = [0; LINE_BYTES];
        let n = p.uart.take_line(&mut out).unwrap();
        assert_eq!(&out[..n], b"hi");
        p.write(COM1 + 7, 2, 0x1_235a);
        assert_eq!(p.read(COM1 + 7, 1), 0x5a, "the write cut to its byte");
        assert_eq!(p.unclaimed, 0);
        // No UART: neither its ports nor input.
        let mut none = LegacyPorts::new(
            DeviceSet {
                uart: false,
                ..DeviceSet::ALL
            },
            0,
            1,
        );
        assert_eq!(none.push_input(b"a"), 0);
        assert_eq!(none.write(COM1, 1, u32::from(b'\n')), PortEffect::None);
        assert_eq!(none.read(COM1 + 5, 1), 0xff);
        assert_eq!(none.unclaimed, 2);
    }

    /// Reads a UART register (offset from COM1).
    fn uart_in(p: &mut LegacyPorts, offset: u16) -> u8 {
        p.read(COM1 + offset, 1) as u8
    }

    fn uart_out(p: &mut LegacyPorts, offset: u16, value: u8) -> PortEffect {
        p.write(COM1 + offset, 1, u32::from(value))
    }

    #[test]
    fn uart_interrupt_line_rising_edges_are_reported_once() {
        let mut p = ports();
        uart_out(&mut p, 1, 0x01);
        p.push_input(b"a");
        assert!(!p.uart.interrupt_line(), "OUT2 clear");
        assert_eq!(p.take_irq_edges(), 0);
        uart_out(&mut p, 4, 0x0b);
        assert!(p.uart.interrupt_line());
        assert_eq!(p.take_irq_edges(), 1 << COM1_IRQ);
        assert_eq!(p.take_irq_edges(), 0, "taken");
        uart_in(&mut p, 0);
        assert!(!p.uart.interrupt_line());
        assert_eq!(p.push_input(b"b"), 1);
        assert_eq!(p.take_irq_edges(), 1 << COM1_IRQ, "a new edge");
        // A line that stays up is one edge.
        p.push_input(b"c");
        assert_eq!(p.take_irq_edges(), 0);
        // THRE: enabling ETBEI with data drained rises the line again.
        uart_in(&mut p, 0);
        uart_in(&mut p, 0);
        uart_out(&mut p, 1, 0x02);
        assert_eq!(p.take_irq_edges(), 1 << COM1_IRQ);
        uart_in(&mut p, 2);
        assert!(!p.uart.interrupt_line(), "IIR read cleared THRE");
        uart_out(&mut p, 0, b'x');
        assert_eq!(p.take_irq_edges(), 1 << COM1_IRQ, "sent: THRE again");
        // Loopback forces the output off.
        uart_out(&mut p, 4, 0x1b);
        assert!(!p.uart.interrupt_line());
    }

    #[test]
    fn linux_platform_devices_on_the_bus() {
        let mut p = LegacyPorts::new(DeviceSet::LINUX, 64 << 20, 1);
        // PIC probe.
        p.write(0x21, 1, 0x5a);
        assert_eq!(p.read(0x21, 1), 0x5a);
        p.write(0xa1, 1, 0xff);
        assert_eq!(p.pic.masks(), (0x5a, 0xff));
        // ACPI: SCI_EN, S5 is a power-off.
        assert_eq!(p.read(0x604, 2), 1);
        assert_eq!(p.write(0x602, 2, 0x100), PortEffect::None);
        assert_eq!(p.read(0x600, 4), 0x100 << 16);
        assert_eq!(
            p.write(0x604, 2, 0x2000 | 5 << 10),
            PortEffect::Exit { status: 0 }
        );
        // Resets: 0xCF9 bit 2 and 8042 command 0xFE.
        assert_eq!(p.write(0xcf9, 1, 0x02), PortEffect::None);
        assert_eq!(p.read(0xcf9, 1), 0x02);
        assert_eq!(p.write(0xcf9, 1, 0x06), PortEffect::Reset);
        assert_eq!(p.read(0x64, 1), 0, "8042 buffers empty");
        assert_eq!(p.write(0x64, 1, 0xad), PortEffect::None);
        assert_eq!(p.write(0x64, 1, 0xfe), PortEffect::Reset);
        assert_eq!(
            Option::<Outcome>::from(PortEffect::Reset),
            Some(Outcome::Reboot)
        );
        // RTC.
        p.write(0x70, 1, 0x0b);
        assert_eq!(p.read(0x71, 1), 0x02);
        // PCI mechanism 1: the latch reads back, no device answers.
        p.write(0xcfb, 1, 0x01);
        p.write(0xcf8, 4, 0x8000_0000);
        assert_eq!(p.read(0xcf8, 4), 0x8000_0000);
        assert_eq!(p.read(0xcfc, 4), u32::MAX);
        assert_eq!(p.read(0xcfe, 2), 0xffff);
        assert_eq!(p.read(0xcf9, 2), 0xffff, "not RST_CNT's width");
        p.write(0xcfc, 4, 0);
        assert_eq!(p.unclaimed, 0, "all claimed");
        // None of it without the devices.
        let mut bare = LegacyPorts::new(DeviceSet::NONE, 0, 1);
        assert_eq!(bare.write(0xcf9, 1, 0x06), PortEffect::None);
        assert_eq!(bare.write(0x64, 1, 0xfe), PortEffect::None);
        assert_eq!(bare.write(0x604, 2, 0x3400), PortEffect::None);
        assert_eq!(bare.read(0x21, 1), 0xff);
        assert_eq!(bare.read(0xcf8, 4), u32::MAX);
        assert_eq!(bare.read(0x71, 1), 0xff);
        assert_eq!(bare.unclaimed, 6);
    }

    #[test]
    fn debug_exit_reports_the_value_written() {
        let mut p = ports();
        assert_eq!(
            p.write(DEBUG_EXIT, 1, 0x1ff),
            PortEffect::Exit { status: 0xff }
        );
        assert_eq!(p.write(DEBUG_EXIT, 4, 7), PortEffect::Exit { status: 7 });
        assert_eq!(p.read(DEBUG_EXIT, 1), 0xff, "reads are unclaimed");
        assert_eq!(p.unclaimed, 1);
        let mut none = LegacyPorts::new(
            DeviceSet {
                debug_exit: false,
                ..DeviceSet::ALL
            },
            0,
            1,
        );
        assert_eq!(none.write(DEBUG_EXIT, 1, 0), PortEffect::None);
        assert_eq!(none.unclaimed, 1);
    }

    fn fw_item(p: &mut LegacyPorts, selector: u32, len: usize) -> std::vec::Vec<u8> {
        p.write(FW_CFG_SELECTOR, 2, selector);
        (0..len).map(|_| p.read(FW_CFG_DATA, 1) as u8).collect()
    }

    #[test]
    fn fw_cfg_serves_signature_cpus_and_ram() {
        let mut p = ports();
        assert_eq!(fw_item(&mut p, 0, 5), b"QEMU\0");
        assert_eq!(fw_item(&mut p, 5, 3), [2, 0, 0]);
        assert_eq!(fw_item(&mut p, 3, 8), (64u64 << 20).to_le_bytes());
        assert_eq!(fw_item(&mut p, 1, 4), [1, 0, 0, 0]);
        assert_eq!(fw_item(&mut p, 0x19, 4), [0; 4]);
        assert_eq!(fw_item(&mut p, 0x4242, 2), [0, 0]);
        // A 4-byte read streams four bytes.
        p.write(FW_CFG_SELECTOR, 2, 0);
        assert_eq!(p.read(FW_CFG_DATA, 4), u32::from_le_bytes(*b"QEMU"));
        assert_eq!(p.unclaimed, 0);
        // The selector is write-only, the data port read-only.
        p.read(FW_CFG_SELECTOR, 2);
        p.write(FW_CFG_DATA, 1, 0);
        p.write(FW_CFG_SELECTOR, 1, 0);
        assert_eq!(p.unclaimed, 3);
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_are_counted() {
        let mut p = ports();
        assert_eq!(p.read(0x60, 1), 0xff);
        assert_eq!(p.read(0x60, 2), 0xffff);
        assert_eq!(p.write(0x80, 1, 1), PortEffect::None);
        assert_eq!(p.unclaimed, 3);
    }

    /// Each device's ports are on the bus exactly when the set has it.
    #[test]
    fn the_bus_holds_the_ranges_of_the_devices_in_the_set() {
        let ids = [
            PortId::Uart,
            PortId::DebugExit,
            PortId::FwCfg,
            PortId::Pic,
            PortId::AcpiPm,
            PortId::ResetControl,
            PortId::I8042,
            PortId::Rtc,
            PortId::Pci,
        ];
        for id in ids {
            let mut only = DeviceSet::NONE;
            match id {
                PortId::Uart => only.uart = true,
                PortId::DebugExit => only.debug_exit = true,
                PortId::FwCfg => only.fw_cfg = true,
                PortId::Pic => only.pic = true,
                PortId::AcpiPm => only.acpi_pm = true,
                PortId::ResetControl | PortId::I8042 => only.reset = true,
                PortId::Rtc => only.rtc = true,
                PortId::Pci => only.pci = true,
            }
            let p = LegacyPorts::new(only, 0, 1);
            for (range, owner) in PORT_MAP {
                for port in range.first()..=range.last() {
                    let want = owner.present_in(only).then_some(owner);
                    assert_eq!(p.bus.get(port).map(|h| h.key), want, "{id:?} {port:#x}");
                }
            }
        }
        let all = ports();
        assert_eq!(all.bus.ranges().count(), PORT_MAP.len());
        // The check PORT_MAP passes at compile time refuses a map with the
        // reset register inside a whole PCI window.
        assert!(!disjoint(&[
            (PortRange::inclusive(PCI_ADDRESS, PCI_DATA + 3), PortId::Pci),
            (PortRange::port(RESET_CONTROL), PortId::ResetControl),
        ]));
    }

    proptest::proptest! {
        /// Random traffic never panics, and every read fits its width.
        #[test]
        fn random_port_traffic_reads_fit_their_width(
            ops in proptest::collection::vec((0u16..0x1000, 0u8..6, proptest::prelude::any::<u32>(), proptest::prelude::any::<bool>()), 0..300)
        ) {
            let mut p = ports();
            let mut out = [0; LINE_BYTES];
            for (port, size, value, write) in ops {
                if write {
                    p.write(port, size, value);
                } else {
                    let read = p.read(port, size);
                    proptest::prop_assert!(read <= ones(size), "{port:#x}/{size}: {read:#x}");
                }
                if let Some(n) = p.uart.take_line(&mut out) {
                    proptest::prop_assert!(n <= LINE_BYTES);
                }
            }
        }
    }
}
