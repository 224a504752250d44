//! The legacy port devices a VM may have: a 16550A UART on COM1, QEMU's
//! isa-debug-exit and QEMU's fw_cfg (I/O interface). Each is a
//! register-level state machine; the port bus routes accesses to them and
//! returns effects (a completed console line, the VM's exit) as values.

use crate::dispatch::Outcome;

/// Which devices a VM has (from its config's `devices`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSet {
    pub uart: bool,
    pub debug_exit: bool,
    pub fw_cfg: bool,
    /// The testdev MMIO scratch page (crate::mmio::TestDev).
    pub testdev: bool,
}

impl DeviceSet {
    /// The default set: the three port devices.
    pub const ALL: DeviceSet = DeviceSet {
        uart: true,
        debug_exit: true,
        fw_cfg: true,
        testdev: false,
    };
}

/// COM1's eight registers (PC/AT convention).
pub const COM1: u16 = 0x3f8;
/// isa-debug-exit's port (QEMU's default iobase).
pub const DEBUG_EXIT: u16 = 0xf4;
/// fw_cfg's selector and data ports (QEMU docs/specs/fw_cfg.txt, "Selector
/// Register IOport: 0x510, Data Register IOport: 0x511").
pub const FW_CFG_SELECTOR: u16 = 0x510;
pub const FW_CFG_DATA: u16 = 0x511;

/// Bytes in a console line before it is cut.
pub const LINE_BYTES: usize = 256;

/// A 16550A (National Semiconductor datasheet, register map). Transmission
/// is instantaneous (LSR always reports an empty transmitter); output is
/// collected into lines for the hypervisor's console. Input arrives with
/// interactive consoles; until then RBR reads 0 and LSR never shows data.
#[derive(Clone, Debug)]
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    line: [u8; LINE_BYTES],
    len: usize,
    /// Set when `line[..len]` is a finished line waiting to be taken.
    complete: bool,
}

/// LSR: transmitter holding register empty (5), transmitter empty (6).
const LSR_THRE_TEMT: u8 = 0x60;
/// IIR: no interrupt pending (bit 0); FIFOs enabled (7:6) as a 16550A.
const IIR_NONE_FIFO: u8 = 0xc1;
const LCR_DLAB: u8 = 0x80;

impl Default for Uart {
    fn default() -> Self {
        Uart {
            ier: 0,
            lcr: 0x03,
            mcr: 0,
            scr: 0,
            divisor: 1,
            line: [0; LINE_BYTES],
            len: 0,
            complete: false,
        }
    }
}

impl Uart {
    fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor as u8,
            1 if dlab => (self.divisor >> 8) as u8,
            0 => 0,
            1 => self.ier,
            2 => IIR_NONE_FIFO,
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_THRE_TEMT,
            // MSR: CTS, DSR and DCD asserted, so polling drivers send.
            6 => 0xb0,
            _ => self.scr,
        }
    }

    fn write(&mut self, offset: u16, value: u8) -> bool {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            1 if dlab => self.divisor = (self.divisor & 0x00ff) | (u16::from(value) << 8),
            0 => return self.transmit(value),
            1 => self.ier = value & 0x0f,
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1f,
            7 => self.scr = value,
            _ => {} // FCR and the read-only LSR/MSR
        }
        false
    }

    /// Adds a byte to the line; returns true when a line is complete.
    fn transmit(&mut self, byte: u8) -> bool {
        if self.complete {
            // The caller did not take the last line: start over rather than
            // grow (a guest cannot make the host buffer unbounded output).
            self.len = 0;
            self.complete = false;
        }
        match byte {
            b'\r' => return false,
            b'\n' => {
                self.complete = true;
                return true;
            }
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
            *o = if b.is_ascii_graphic() || *b == b' ' || *b == b'\t' {
                *b
            } else {
                b'?'
            };
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

/// One VM's port bus.
#[derive(Clone, Debug)]
pub struct LegacyPorts {
    set: DeviceSet,
    pub uart: Uart,
    /// The VM's MMIO test page, if it has one.
    pub testdev: Option<crate::mmio::TestDev>,
    fw_cfg: FwCfg,
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
}

impl LegacyPorts {
    pub fn new(set: DeviceSet, ram_bytes: u64, cpus: u16) -> Self {
        LegacyPorts {
            set,
            testdev: set.testdev.then(crate::mmio::TestDev::default),
            uart: Uart::default(),
            fw_cfg: FwCfg::new(ram_bytes, cpus),
            unclaimed: 0,
        }
    }

    /// A read of `size` bytes; unclaimed ports read as all ones.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        let ones = ones(size);
        match port {
            COM1..=0x3ff if self.set.uart => u32::from(self.uart.read(port - COM1)),
            FW_CFG_DATA if self.set.fw_cfg => {
                let mut value = 0u32;
                for i in 0..u32::from(size.min(4)) {
                    value |= u32::from(self.fw_cfg.read_byte()) << (8 * i);
                }
                value
            }
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
                if self.uart.write(port - COM1, value as u8) {
                    return PortEffect::ConsoleLine;
                }
            }
            DEBUG_EXIT if self.set.debug_exit => return PortEffect::Exit { status: value },
            FW_CFG_SELECTOR if self.set.fw_cfg && size >= 2 => self.fw_cfg.select(value as u16),
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
            ops in proptest::collection::vec((0u16..0x600, 0u8..6, proptest::prelude::any::<u32>(), proptest::prelude::any::<bool>()), 0..300)
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
}
