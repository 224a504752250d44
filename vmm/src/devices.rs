//! The legacy port devices a VM may have: a 16550A UART on COM1, QEMU's
//! isa-debug-exit and QEMU's fw_cfg (I/O interface), and the PC platform
//! devices of [`crate::legacy`] (8259 PIC, ACPI PM1a, reset control and
//! the 8042's reset line, CMOS RTC, PCI mechanism 1 without devices). Each
//! is a register-level state machine; the port bus routes accesses to them
//! and returns effects (a completed console line, the VM's exit or reset)
//! as values.

use crate::dispatch::Outcome;
use crate::legacy::{self, AcpiPm, PciConfig, Pic, Rtc};

/// Which devices a VM has (from its config's `devices`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSet {
    pub uart: bool,
    pub debug_exit: bool,
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
/// isa-debug-exit's port (QEMU's default iobase).
pub const DEBUG_EXIT: u16 = 0xf4;
/// fw_cfg's selector and data ports (QEMU docs/specs/fw_cfg.txt, "Selector
/// Register IOport: 0x510, Data Register IOport: 0x511").
pub const FW_CFG_SELECTOR: u16 = 0x510;
pub const FW_CFG_DATA: u16 = 0x511;

/// A guest's output byte as the shared console shows it: printable ASCII,
/// space, tab and backspace (so an interactive shell can erase what it
/// echoed) pass; any other byte could drive the operator's terminal and
/// becomes '?'.
pub fn console_byte(b: u8) -> u8 {
    if b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | 0x08) {
        b
    } else {
        b'?'
    }
}

/// Bytes in a console line before it is cut.
pub const LINE_BYTES: usize = 256;

/// A 16550A (National Semiconductor PC16550D datasheet): what Linux's 8250
/// driver needs to find one, drive it by interrupts and loop it back.
///
/// - Transmission is instantaneous: LSR always reports an empty
///   transmitter, and a THR write raises the THRE interrupt again at once.
///   Output is collected into lines for the hypervisor's console.
/// - Input arrives through [`Uart::push_input`] into a receive FIFO of
///   [`RX_FIFO`] bytes (one byte, the 16450 holding register, while FCR
///   bit 0 has the FIFOs off); RBR reads pop it, LSR.DR shows it. There is
///   no trigger level or character timeout: any received byte is
///   "received data available".
/// - IIR reports the highest-priority pending source (datasheet Table
///   IV): receiver line status (overrun) 0x6, received data 0x4, THR empty
///   0x2, modem status 0x0; bits 7:6 are set only while FIFOs are on.
///   Reading IIR clears a THRE interrupt it reports, and setting IER.ETBEI
///   raises one (THR is always empty): Linux's startup test for
///   `UART_BUG_THRE` sees it asserted twice, as on a real part.
/// - MCR bit 4 (loopback): transmitted bytes go to the receiver instead of
///   the console, and MSR's upper bits mirror MCR (CTS = RTS, DSR = DTR,
///   RI = OUT1, DCD = OUT2), with their delta bits.
/// - The interrupt output ([`Uart::interrupt_line`]) is gated by MCR.OUT2,
///   the PC convention, and forced off in loopback (the datasheet forces
///   the OUT2 pin inactive then).
#[derive(Clone, Debug)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    fifo_enabled: bool,
    rx: [u8; RX_FIFO],
    rx_head: usize,
    rx_len: usize,
    /// LSR overrun error, until LSR is read.
    overrun: bool,
    /// A THRE interrupt is pending (cleared by an IIR read reporting it).
    thre_pending: bool,
    /// MSR delta bits 3:0, until MSR is read.
    msr_delta: u8,
    line: [u8; LINE_BYTES],
    len: usize,
    /// Set when `line[..len]` is a finished line waiting to be taken.
    complete: bool,
    /// Where the output is in a terminal control sequence, which is left
    /// out of the console lines.
    escape: Escape,
    /// The last byte output was a carriage return.
    carriage_return: bool,
}

/// Progress through an ECMA-48 control sequence in the output: ESC, then
/// for CSI `[`, parameter and intermediate bytes, and a final byte in
/// 0x40-0x7E (ECMA-48 5.4). Shells send them (busybox asks for the cursor
/// position with ESC [ 6 n); on the shared console they would only show as
/// garbage or drive the operator's terminal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    Esc,
    Csi,
}

const ESC: u8 = 0x1b;

/// Receive FIFO size (a 16550A has 16; more keeps pasted input whole).
pub const RX_FIFO: usize = 64;

/// LSR bits: data ready (0), overrun (1), THR empty (5), transmitter
/// empty (6).
const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_THRE_TEMT: u8 = 0x60;
/// IIR: no interrupt pending (bit 0); FIFOs enabled (7:6).
const IIR_NONE: u8 = 0x01;
const IIR_FIFO: u8 = 0xc0;
const IIR_LINE_STATUS: u8 = 0x06;
const IIR_RX_DATA: u8 = 0x04;
const IIR_THRE: u8 = 0x02;
const IIR_MODEM: u8 = 0x00;
/// IER: received data (0), THR empty (1), line status (2), modem status (3).
const IER_ERBFI: u8 = 0x01;
const IER_ETBEI: u8 = 0x02;
const IER_ELSI: u8 = 0x04;
const IER_EDSSI: u8 = 0x08;
/// MCR: OUT2 (3), loopback (4).
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
/// FCR: FIFO enable (0), receive FIFO reset (1).
const FCR_ENABLE: u8 = 0x01;
const FCR_RX_RESET: u8 = 0x02;
const LCR_DLAB: u8 = 0x80;
/// MSR outside loopback: CTS, DSR and DCD asserted, so polling drivers
/// send.
const MSR_IDLE: u8 = 0xb0;

impl Default for Uart {
    fn default() -> Self {
        Uart {
            ier: 0,
            lcr: 0x03,
            mcr: 0,
            scr: 0,
            divisor: 1,
            fifo_enabled: false,
            rx: [0; RX_FIFO],
            rx_head: 0,
            rx_len: 0,
            overrun: false,
            thre_pending: false,
            msr_delta: 0,
            line: [0; LINE_BYTES],
            len: 0,
            complete: false,
            escape: Escape::None,
            carriage_return: false,
        }
    }
}

impl Uart {
    fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor as u8,
            1 if dlab => (self.divisor >> 8) as u8,
            0 => self.pop(),
            1 => self.ier,
            2 => {
                let iir = self.iir();
                // Reading IIR clears a THRE interrupt it reports (Table IV).
                if iir & 0x0f == IIR_THRE {
                    self.thre_pending = false;
                }
                iir
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => {
                let lsr = self.lsr();
                self.overrun = false;
                lsr
            }
            6 => {
                let msr = self.modem_status() | self.msr_delta;
                self.msr_delta = 0;
                msr
            }
            _ => self.scr,
        }
    }

    /// Returns true when a console line is complete.
    fn write(&mut self, offset: u16, value: u8) -> bool {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            1 if dlab => self.divisor = (self.divisor & 0x00ff) | (u16::from(value) << 8),
            0 => {
                // The byte leaves at once: THR is empty again, and THRE is
                // raised anew (shown if ETBEI is set).
                self.thre_pending = true;
                if self.mcr & MCR_LOOP != 0 {
                    if !self.receive(value) {
                        self.overrun = true;
                    }
                    return false;
                }
                return self.transmit(value);
            }
            1 => {
                let value = value & 0x0f;
                // Enabling ETBEI with THR empty raises THRE at once;
                // disabling it withdraws the request.
                if value & IER_ETBEI != 0 && self.ier & IER_ETBEI == 0 {
                    self.thre_pending = true;
                } else if value & IER_ETBEI == 0 {
                    self.thre_pending = false;
                }
                self.ier = value;
            }
            2 => self.fcr(value),
            3 => self.lcr = value,
            4 => {
                let before = self.modem_status();
                self.mcr = value & 0x1f;
                self.note_modem_change(before);
            }
            7 => self.scr = value,
            _ => {} // the read-only LSR/MSR
        }
        false
    }

    /// FCR: switching the FIFOs on or off, or bit 1, empties the receiver.
    fn fcr(&mut self, value: u8) {
        let enable = value & FCR_ENABLE != 0;
        if enable != self.fifo_enabled || value & FCR_RX_RESET != 0 {
            self.rx_len = 0;
            self.rx_head = 0;
        }
        self.fifo_enabled = enable;
    }

    /// MSR bits 7:4: fixed outside loopback, MCR's low bits inside.
    fn modem_status(&self) -> u8 {
        if self.mcr & MCR_LOOP == 0 {
            return MSR_IDLE;
        }
        let m = self.mcr;
        let cts = (m & 0x02) << 3;
        let dsr = (m & 0x01) << 5;
        let ri = (m & 0x04) << 4;
        let dcd = (m & 0x08) << 4;
        cts | dsr | ri | dcd
    }

    /// Sets MSR's delta bits for what changed since `before`: DCTS, DDSR,
    /// DDCD on any change, TERI on RI's trailing edge.
    fn note_modem_change(&mut self, before: u8) {
        let now = self.modem_status();
        let changed = before ^ now;
        let mut delta = 0;
        if changed & 0x10 != 0 {
            delta |= 0x01;
        }
        if changed & 0x20 != 0 {
            delta |= 0x02;
        }
        if before & 0x40 != 0 && now & 0x40 == 0 {
            delta |= 0x04;
        }
        if changed & 0x80 != 0 {
            delta |= 0x08;
        }
        self.msr_delta |= delta;
    }

    fn lsr(&self) -> u8 {
        let mut lsr = LSR_THRE_TEMT;
        if self.rx_len > 0 {
            lsr |= LSR_DR;
        }
        if self.overrun {
            lsr |= LSR_OE;
        }
        lsr
    }

    /// IIR: the highest-priority pending interrupt among the enabled ones.
    fn iir(&self) -> u8 {
        let id = if self.ier & IER_ELSI != 0 && self.overrun {
            IIR_LINE_STATUS
        } else if self.ier & IER_ERBFI != 0 && self.rx_len > 0 {
            IIR_RX_DATA
        } else if self.ier & IER_ETBEI != 0 && self.thre_pending {
            IIR_THRE
        } else if self.ier & IER_EDSSI != 0 && self.msr_delta != 0 {
            IIR_MODEM
        } else {
            IIR_NONE
        };
        if self.fifo_enabled { id | IIR_FIFO } else { id }
    }

    /// Whether the driver has nothing more to send: it keeps the transmit
    /// interrupt (IER.ETBEI) enabled while its buffer holds output, and a
    /// line it is in the middle of sending must not be cut.
    pub fn transmit_idle(&self) -> bool {
        self.ier & IER_ETBEI == 0
    }

    /// The level of the UART's interrupt output as the PC wires it: some
    /// enabled source pending, and MCR.OUT2 set (outside loopback).
    pub fn interrupt_line(&self) -> bool {
        self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2 && self.iir() & IIR_NONE == 0
    }

    fn capacity(&self) -> usize {
        if self.fifo_enabled { RX_FIFO } else { 1 }
    }

    /// Puts one byte in the receiver; false if it is full.
    fn receive(&mut self, byte: u8) -> bool {
        if self.rx_len >= self.capacity() {
            return false;
        }
        if let Some(slot) = self.rx.get_mut((self.rx_head + self.rx_len) % RX_FIFO) {
            *slot = byte;
            self.rx_len += 1;
        }
        true
    }

    /// RBR: the oldest received byte, or 0 when there is none.
    fn pop(&mut self) -> u8 {
        if self.rx_len == 0 {
            return 0;
        }
        let byte = self.rx.get(self.rx_head).copied().unwrap_or(0);
        self.rx_head = (self.rx_head + 1) % RX_FIFO;
        self.rx_len -= 1;
        byte
    }

    /// Console input for the guest: as many of `bytes` as the receiver
    /// has room for (none in loopback, where the receiver hears only the
    /// transmitter); returns how many it took.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        if self.mcr & MCR_LOOP != 0 {
            return 0;
        }
        bytes.iter().take_while(|b| self.receive(**b)).count()
    }

    /// Adds a byte to the line; returns true when a line is complete.
    fn transmit(&mut self, byte: u8) -> bool {
        self.escape = match (self.escape, byte) {
            (_, ESC) => Escape::Esc,
            (Escape::Esc, b'[') => Escape::Csi,
            // Other two-byte escapes end with their second byte.
            (Escape::Esc, _) => Escape::None,
            (Escape::Csi, 0x40..=0x7e) => Escape::None,
            (Escape::Csi, _) => Escape::Csi,
            (Escape::None, _) => return self.add_to_line(byte),
        };
        false
    }

    fn add_to_line(&mut self, byte: u8) -> bool {
        if self.complete {
            // The caller did not take the last line: start over rather than
            // grow (a guest cannot make the host buffer unbounded output).
            self.len = 0;
            self.complete = false;
        }
        let after_cr = core::mem::take(&mut self.carriage_return);
        match byte {
            b'\r' => {
                self.carriage_return = true;
                return false;
            }
            b'\n' => {
                self.complete = true;
                return true;
            }
            // A carriage return not ending the line starts it over, as on
            // a terminal (a shell redrawing its prompt and input).
            _ if after_cr => self.len = 0,
            _ => {}
        }
        if let Some(slot) = self.line.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
        if self.len == LINE_BYTES {
            self.complete = true;
        }
        self.complete
    }

    /// Takes the completed line, if any (non-ASCII bytes shown as '?').
    pub fn take_line(&mut self, out: &mut [u8; LINE_BYTES]) -> Option<usize> {
        if !self.complete {
            return None;
        }
        let len = self.len;
        for (o, b) in out.iter_mut().zip(self.line.iter().take(len)) {
            *o = console_byte(*b);
        }
        self.len = 0;
        self.complete = false;
        Some(len)
    }

    /// Output not yet ended by a newline (flushed when the VM ends).
    pub fn take_partial(&mut self, out: &mut [u8; LINE_BYTES]) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        self.complete = true;
        self.take_line(out)
    }
}

/// fw_cfg item numbers (QEMU include/standard-headers/linux/qemu_fw_cfg.h).
mod item {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NB_CPUS: u16 = 0x05;
    pub const MAX_CPUS: u16 = 0x0f;
    pub const FILE_DIR: u16 = 0x19;
}

/// QEMU's fw_cfg, legacy I/O interface: a 16-bit write to the selector
/// picks an item and rewinds; byte reads of the data port stream it, and
/// read as 0 past its end. Only the traditional interface (ID bit 0), no
/// DMA.
#[derive(Clone, Debug)]
pub struct FwCfg {
    ram_bytes: u64,
    cpus: u16,
    selected: u16,
    offset: usize,
}

impl FwCfg {
    pub fn new(ram_bytes: u64, cpus: u16) -> Self {
        FwCfg {
            ram_bytes,
            cpus,
            selected: 0,
            offset: 0,
        }
    }

    /// The selected item's bytes (at most 8, held by value).
    fn item(&self) -> ([u8; 8], usize) {
        let mut b = [0; 8];
        let len = match self.selected {
            item::SIGNATURE => {
                b[..4].copy_from_slice(b"QEMU");
                4
            }
            item::ID => {
                b[0] = 1;
                4
            }
            item::RAM_SIZE => {
                b = self.ram_bytes.to_le_bytes();
                8
            }
            item::NB_CPUS | item::MAX_CPUS => {
                b[..2].copy_from_slice(&self.cpus.to_le_bytes());
                2
            }
            // An empty file directory: a big-endian count of 0.
            item::FILE_DIR => 4,
            _ => 0,
        };
        (b, len)
    }

    fn select(&mut self, selector: u16) {
        self.selected = selector;
        self.offset = 0;
    }

    fn read_byte(&mut self) -> u8 {
        let (bytes, len) = self.item();
        let byte = if self.offset < len {
            bytes.get(self.offset).copied().unwrap_or(0)
        } else {
            0
        };
        self.offset = self.offset.saturating_add(1);
        byte
    }
}

/// COM1's ISA IRQ (PC convention): IOAPIC pin 4.
pub const COM1_IRQ: u8 = 4;

/// One VM's port bus.
///
/// Interrupts: the bus samples each device's interrupt output after every
/// access it routes and after [`LegacyPorts::push_input`], and remembers
/// rising edges per ISA IRQ; the caller collects them with
/// [`LegacyPorts::take_irq_edges`] after each exit that touched the bus
/// and raises those IOAPIC pins (ISA interrupts are edge-triggered).
#[derive(Clone, Debug)]
pub struct LegacyPorts {
    set: DeviceSet,
    pub uart: Uart,
    /// The UART's interrupt output when last sampled.
    uart_line: bool,
    /// ISA IRQs that rose since the last `take_irq_edges` (bit n = IRQ n).
    irq_edges: u16,
    /// The VM's MMIO test page, if it has one.
    pub testdev: Option<crate::mmio::TestDev>,
    fw_cfg: FwCfg,
    pub pic: Pic,
    pub acpi_pm: AcpiPm,
    pub rtc: Rtc,
    pci: PciConfig,
    /// The last value written to the reset control register.
    reset_control: u8,
    /// Accesses to ports no device claims (a storm shows here).
    pub unclaimed: u64,
}

/// What a port write did beyond changing device state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortEffect {
    None,
    /// The UART has a complete line for the console.
    ConsoleLine,
    /// isa-debug-exit was written: the VM ends with this status. (QEMU
    /// turns value v into process exit code (v << 1) | 1; Atoll keeps the
    /// value itself as the VM's status.)
    Exit {
        status: u32,
    },
    /// A platform reset (0xCF9 bit 2, the 8042's 0xFE command). ACPI S5
    /// is `Exit { status: 0 }`.
    Reset,
}

impl LegacyPorts {
    pub fn new(set: DeviceSet, ram_bytes: u64, cpus: u16) -> Self {
        LegacyPorts {
            set,
            testdev: set.testdev.then(crate::mmio::TestDev::default),
            uart: Uart::default(),
            uart_line: false,
            irq_edges: 0,
            fw_cfg: FwCfg::new(ram_bytes, cpus),
            pic: Pic::default(),
            acpi_pm: AcpiPm::default(),
            rtc: Rtc::default(),
            pci: PciConfig::default(),
            reset_control: 0,
            unclaimed: 0,
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
        let ones = ones(size);
        match port {
            COM1..=0x3ff if self.set.uart => {
                let value = u32::from(self.uart.read(port - COM1));
                self.sample_irqs();
                value
            }
            FW_CFG_DATA if self.set.fw_cfg => {
                let mut value = 0u32;
                for i in 0..u32::from(size.min(4)) {
                    value |= u32::from(self.fw_cfg.read_byte()) << (8 * i);
                }
                value
            }
            0x20 | 0x21 | 0xa0 | 0xa1 if self.set.pic => u32::from(self.pic.read(port)),
            legacy::PM1A_EVT..=0x605 if self.set.acpi_pm => self.acpi_pm.read(port, size),
            RESET_CONTROL if self.set.reset && size == 1 => u32::from(self.reset_control),
            // 8042 status: both buffers empty, so Linux never waits on it.
            I8042_COMMAND if self.set.reset => 0,
            legacy::RTC_INDEX | legacy::RTC_DATA if self.set.rtc => u32::from(self.rtc.read(port)),
            legacy::PCI_ADDRESS if self.set.pci && size == 4 => self.pci.address(),
            // Other CONFIG_ADDRESS widths (mechanism 2's 0xCFB probe) and
            // every CONFIG_DATA read: no device answers.
            legacy::PCI_ADDRESS..=0xcff if self.set.pci => ones,
            _ => {
                self.unclaimed = self.unclaimed.saturating_add(1);
                ones
            }
        }
    }

    pub fn write(&mut self, port: u16, size: u8, value: u32) -> PortEffect {
        let value = value & ones(size);
        match port {
            COM1..=0x3ff if self.set.uart => {
                let line = self.uart.write(port - COM1, value as u8);
                self.sample_irqs();
                if line {
                    return PortEffect::ConsoleLine;
                }
            }
            DEBUG_EXIT if self.set.debug_exit => return PortEffect::Exit { status: value },
            FW_CFG_SELECTOR if self.set.fw_cfg && size >= 2 => self.fw_cfg.select(value as u16),
            0x20 | 0x21 | 0xa0 | 0xa1 if self.set.pic => self.pic.write(port, value as u8),
            legacy::PM1A_EVT..=0x605 if self.set.acpi_pm => {
                if self.acpi_pm.write(port, size, value) {
                    return PortEffect::Exit { status: 0 };
                }
            }
            RESET_CONTROL if self.set.reset && size == 1 => {
                self.reset_control = value as u8 & 0x0e;
                if value & 0x04 != 0 {
                    return PortEffect::Reset;
                }
            }
            I8042_COMMAND if self.set.reset => {
                if value as u8 == 0xfe {
                    return PortEffect::Reset;
                }
            }
            legacy::RTC_INDEX | legacy::RTC_DATA if self.set.rtc => {
                self.rtc.write(port, value as u8)
            }
            legacy::PCI_ADDRESS if self.set.pci && size == 4 => self.pci.set_address(value),
            legacy::PCI_ADDRESS..=0xcff if self.set.pci => {}
            _ => self.unclaimed = self.unclaimed.saturating_add(1),
        }
        PortEffect::None
    }
}

fn ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> LegacyPorts {
        LegacyPorts::new(DeviceSet::ALL, 64 << 20, 2)
    }

    fn send(p: &mut LegacyPorts, text: &[u8]) -> usize {
        text.iter()
            .filter(|b| p.write(COM1, 1, u32::from(**b)) == PortEffect::ConsoleLine)
            .count()
    }

    #[test]
    fn uart_collects_lines_and_reports_an_empty_transmitter() {
        let mut p = ports();
        assert_eq!(p.read(COM1 + 5, 1) & 0x60, 0x60);
        assert_eq!(send(&mut p, b"hi\r\n"), 1);
        let mut out = [0; LINE_BYTES];
        let n = p.uart.take_line(&mut out).unwrap();
        assert_eq!(&out[..n], b"hi");
        assert!(p.uart.take_line(&mut out).is_none());
        send(&mut p, b"a\x01b");
        let n = p.uart.take_partial(&mut out).unwrap();
        assert_eq!(&out[..n], b"a?b");
    }

    #[test]
    fn uart_cuts_long_lines_and_never_grows() {
        let mut p = ports();
        assert_eq!(send(&mut p, &[b'x'; LINE_BYTES]), 1);
        // Not taken: the next byte starts a new line.
        send(&mut p, b"y\n");
        let mut out = [0; LINE_BYTES];
        let n = p.uart.take_line(&mut out).unwrap();
        assert_eq!(&out[..n], b"y");
    }

    #[test]
    fn uart_divisor_latch_hides_the_data_registers() {
        let mut p = ports();
        p.write(COM1 + 3, 1, 0x83);
        p.write(COM1, 1, 0x01);
        p.write(COM1 + 1, 1, 0x02);
        assert_eq!(p.read(COM1 + 1, 1), 0x02);
        p.write(COM1 + 3, 1, 0x03);
        assert_eq!(p.read(COM1 + 1, 1), 0, "IER untouched");
        assert_eq!(p.read(COM1 + 3, 1), 0x03);
        assert_eq!(p.read(COM1 + 2, 1) & 1, 1, "no interrupt pending");
        p.write(COM1 + 7, 1, 0x5a);
        assert_eq!(p.read(COM1 + 7, 1), 0x5a);
    }

    /// Reads a UART register (offset from COM1).
    fn uart_in(p: &mut LegacyPorts, offset: u16) -> u8 {
        p.read(COM1 + offset, 1) as u8
    }

    fn uart_out(p: &mut LegacyPorts, offset: u16, value: u8) -> PortEffect {
        p.write(COM1 + offset, 1, u32::from(value))
    }

    #[test]
    fn uart_receive_fifo_feeds_rbr_and_lsr() {
        let mut p = ports();
        assert_eq!(uart_in(&mut p, 5) & 1, 0, "no data");
        assert_eq!(uart_in(&mut p, 0), 0);
        // FIFOs off: a single holding register.
        assert_eq!(p.push_input(b"ab"), 1);
        assert_eq!(uart_in(&mut p, 5) & 1, 1);
        assert_eq!(uart_in(&mut p, 0), b'a');
        assert_eq!(uart_in(&mut p, 5) & 1, 0);
        uart_out(&mut p, 2, 0x01);
        let long = [b'x'; 100];
        assert_eq!(p.push_input(b"hello"), 5);
        assert_eq!(p.push_input(&long), RX_FIFO - 5, "bounded");
        assert_eq!(p.push_input(b"z"), 0);
        let got: std::vec::Vec<u8> = (0..5).map(|_| uart_in(&mut p, 0)).collect();
        assert_eq!(got, b"hello");
        // RX reset empties the FIFO; the FIFOs stay on.
        uart_out(&mut p, 2, 0x03);
        assert_eq!(uart_in(&mut p, 5) & 1, 0);
        assert_eq!(p.push_input(b"12"), 2);
        // Turning the FIFOs off empties them too.
        uart_out(&mut p, 2, 0x00);
        assert_eq!(uart_in(&mut p, 5) & 1, 0);
        // No UART: no input.
        let mut none = LegacyPorts::new(
            DeviceSet {
                uart: false,
                ..DeviceSet::ALL
            },
            0,
            1,
        );
        assert_eq!(none.push_input(b"a"), 0);
    }

    #[test]
    fn uart_iir_priorities_and_fifo_bits() {
        let mut p = ports();
        assert_eq!(uart_in(&mut p, 2), 0x01, "no FIFO bits before FCR");
        uart_out(&mut p, 2, 0x01);
        assert_eq!(uart_in(&mut p, 2), 0xc1);
        uart_out(&mut p, 1, 0x0f);
        assert_eq!(uart_in(&mut p, 1), 0x0f);
        // THRE is raised by enabling ETBEI and cleared by reading IIR.
        assert_eq!(uart_in(&mut p, 2), 0xc2);
        assert_eq!(uart_in(&mut p, 2), 0xc1);
        // Received data outranks THRE; a THR write raises THRE again.
        p.push_input(b"k");
        uart_out(&mut p, 0, b'x');
        assert_eq!(uart_in(&mut p, 2), 0xc4);
        assert_eq!(uart_in(&mut p, 2), 0xc4, "until the data is read");
        assert_eq!(uart_in(&mut p, 0), b'k');
        assert_eq!(uart_in(&mut p, 2), 0xc2);
        assert_eq!(uart_in(&mut p, 2), 0xc1);
        // Overrun (loopback into a full FIFO) is the line-status source,
        // above everything, until LSR is read.
        uart_out(&mut p, 4, 0x10);
        for _ in 0..=RX_FIFO {
            uart_out(&mut p, 0, b'o');
        }
        assert_eq!(uart_in(&mut p, 2), 0xc6);
        assert_eq!(uart_in(&mut p, 5) & 0x03, 0x03, "OE and DR");
        assert_eq!(uart_in(&mut p, 5) & 0x02, 0, "OE cleared by reading");
        assert_eq!(uart_in(&mut p, 2), 0xc4);
        uart_out(&mut p, 2, 0x03);
        assert_eq!(uart_in(&mut p, 2), 0xc2, "the loopback writes' THRE");
        // Entering loopback changed MSR (0xB0 -> 0): DCTS, DDSR, DDCD.
        assert_eq!(uart_in(&mut p, 2), 0xc0, "modem status");
        assert_eq!(uart_in(&mut p, 6), 0x0b);
        uart_out(&mut p, 4, 0x11);
        assert_eq!(uart_in(&mut p, 2), 0xc0, "modem status");
        assert_eq!(uart_in(&mut p, 6) & 0x0f, 0x02, "DDSR");
        assert_eq!(uart_in(&mut p, 2), 0xc1, "deltas cleared by reading MSR");
        // Disabled sources are not reported.
        uart_out(&mut p, 1, 0);
        p.write(COM1 + 4, 1, 0);
        p.push_input(b"q");
        assert_eq!(uart_in(&mut p, 2), 0xc1);
    }

    /// serial8250_do_startup's THRE test and TXEN test (Linux 6.1
    /// drivers/tty/serial/8250/8250_port.c) must see a sane 16550A.
    #[test]
    fn uart_passes_linux_thre_and_txen_tests() {
        let mut p = ports();
        uart_out(&mut p, 2, 0x07);
        uart_out(&mut p, 2, 0x00);
        assert_ne!(uart_in(&mut p, 5), 0xff, "LSR safety check");
        uart_out(&mut p, 1, 0x02);
        let iir1 = uart_in(&mut p, 2);
        uart_out(&mut p, 1, 0);
        uart_out(&mut p, 1, 0x02);
        let iir = uart_in(&mut p, 2);
        uart_out(&mut p, 1, 0);
        assert!(
            !(iir1 & 1 == 0 && iir & 1 != 0),
            "UART_BUG_THRE: {iir1:#x} {iir:#x}"
        );
        assert_eq!(iir & 1, 0);
        uart_out(&mut p, 1, 0x02);
        let lsr = uart_in(&mut p, 5);
        let iir = uart_in(&mut p, 2);
        uart_out(&mut p, 1, 0);
        assert!(!(lsr & 0x40 != 0 && iir & 1 != 0), "UART_BUG_TXEN");
    }

    #[test]
    fn uart_loopback_echoes_and_mirrors_mcr() {
        let mut p = ports();
        // autoconfig's loopback test: MCR = LOOP | OUT2 | RTS -> 0x90.
        uart_out(&mut p, 4, 0x1a);
        assert_eq!(uart_in(&mut p, 6) & 0xf0, 0x90);
        uart_out(&mut p, 4, 0x1f);
        assert_eq!(uart_in(&mut p, 6) & 0xf0, 0xf0);
        uart_out(&mut p, 4, 0x1b);
        assert_eq!(uart_in(&mut p, 6), 0xb4, "RI fell: TERI");
        assert_eq!(uart_out(&mut p, 0, b'\n'), PortEffect::None);
        assert_eq!(uart_in(&mut p, 5) & 1, 1);
        assert_eq!(uart_in(&mut p, 0), b'\n');
        assert_eq!(p.push_input(b"x"), 0, "outside input is cut off");
        let mut out = [0; LINE_BYTES];
        assert!(p.uart.take_partial(&mut out).is_none(), "nothing output");
        uart_out(&mut p, 4, 0x03);
        assert_eq!(uart_in(&mut p, 6) & 0xf0, 0xb0);
    }

    #[test]
    fn uart_interrupt_line_needs_out2_and_reports_rising_edges() {
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
    }

    #[test]
    fn unclaimed_ports_read_all_ones_and_are_counted() {
        let mut p = ports();
        assert_eq!(p.read(0x60, 1), 0xff);
        assert_eq!(p.read(0x60, 2), 0xffff);
        assert_eq!(p.write(0x80, 1, 1), PortEffect::None);
        assert_eq!(p.unclaimed, 3);
    }

    proptest::proptest! {
        #[test]
        fn random_port_traffic_never_panics(
            ops in proptest::collection::vec((0u16..0x1000, 0u8..6, proptest::prelude::any::<u32>(), proptest::prelude::any::<bool>()), 0..300)
        ) {
            let mut p = ports();
            let mut out = [0; LINE_BYTES];
            for (port, size, value, write) in ops {
                if write {
                    p.write(port, size, value);
                } else {
                    p.read(port, size);
                }
                let _ = p.uart.take_line(&mut out);
            }
        }
    }

    /// The console line the UART makes of `output`.
    fn line_of(output: &[u8]) -> std::vec::Vec<u8> {
        let mut p = ports();
        send(&mut p, output);
        let mut out = [0; LINE_BYTES];
        let n = p.uart.take_line(&mut out).unwrap();
        out[..n].to_vec()
    }

    #[test]
    fn a_carriage_return_inside_a_line_starts_it_over() {
        assert_eq!(line_of(b"po\rprompt# poweroff\r\n"), b"prompt# poweroff");
    }

    #[test]
    fn terminal_control_sequences_stay_off_the_console() {
        assert_eq!(line_of(b"a\x1b[6nb\x1b[1;32mc\x1bMd\n"), b"abcd");
        assert_eq!(console_byte(0x07), b'?');
        assert_eq!(console_byte(0x08), 0x08);
    }

    #[test]
    fn the_transmitter_is_idle_only_while_the_driver_sends_nothing() {
        let mut p = ports();
        assert!(p.uart.transmit_idle());
        p.write(COM1 + 1, 1, 0x02); // IER.ETBEI: the driver has output
        assert!(!p.uart.transmit_idle());
        p.write(COM1 + 1, 1, 0x01);
        assert!(p.uart.transmit_idle());
    }
}
