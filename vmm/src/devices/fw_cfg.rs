//! QEMU's fw_cfg device (QEMU docs/specs/fw_cfg.txt), legacy I/O
//! interface: the items test kernels written for QEMU read to learn the
//! machine they run on.
#![deny(missing_docs)]

use super::{PortDevice, PortEffect};
use crate::bits::low_u16;

/// The selector register's offset from the device's base port ("Selector
/// Register IOport: 0x510, Data Register IOport: 0x511").
const SELECTOR: u16 = 0;
/// The data register's offset.
const DATA: u16 = 1;

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
    /// The device for a VM of `ram_bytes` of RAM and `cpus` vCPUs.
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

    /// Picks the item `selector` and rewinds to its first byte.
    pub fn select(&mut self, selector: u16) {
        self.selected = selector;
        self.offset = 0;
    }

    /// The selected item's next byte (0 past its end).
    pub fn read_byte(&mut self) -> u8 {
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

/// On the port bus: data reads stream up to four bytes, lowest first;
/// the selector takes 16- and 32-bit writes. Selector reads, narrower
/// selector writes and data writes are not decoded.
impl PortDevice for FwCfg {
    fn read(&mut self, _base: u16, offset: u16, size: u8) -> Option<u32> {
        if offset != DATA {
            return None;
        }
        let mut value = 0u32;
        for i in 0..u32::from(size.min(4)) {
            value |= u32::from(self.read_byte()) << (8 * i);
        }
        Some(value)
    }

    fn write(&mut self, _base: u16, offset: u16, size: u8, value: u32) -> Option<PortEffect> {
        if offset != SELECTOR || size < 2 {
            return None;
        }
        self.select(low_u16(value.into()));
        Some(PortEffect::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(f: &mut FwCfg, selector: u16, len: usize) -> std::vec::Vec<u8> {
        f.select(selector);
        (0..len).map(|_| f.read_byte()).collect()
    }

    #[test]
    fn serves_signature_cpus_and_ram() {
        let mut f = FwCfg::new(64 << 20, 2);
        assert_eq!(item(&mut f, 0, 5), b"QEMU\0");
        assert_eq!(item(&mut f, 5, 3), [2, 0, 0]);
        assert_eq!(item(&mut f, 0x0f, 2), [2, 0]);
        assert_eq!(item(&mut f, 3, 9), [0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(item(&mut f, 1, 4), [1, 0, 0, 0]);
        assert_eq!(item(&mut f, 0x19, 5), [0; 5]);
        assert_eq!(item(&mut f, 0x4242, 2), [0, 0]);
    }

    #[test]
    fn on_the_bus_data_reads_stream_and_the_selector_wants_16_bits() {
        let mut f = FwCfg::new(0, 1);
        assert_eq!(f.write(0x510, SELECTOR, 2, 0), Some(PortEffect::None));
        assert_eq!(
            PortDevice::read(&mut f, 0x510, DATA, 4),
            Some(u32::from_le_bytes(*b"QEMU"))
        );
        assert_eq!(
            PortDevice::read(&mut f, 0x510, DATA, 1),
            Some(0),
            "past the end"
        );
        assert_eq!(
            f.write(0x510, SELECTOR, 4, 0x1_0000),
            Some(PortEffect::None)
        );
        assert_eq!(
            PortDevice::read(&mut f, 0x510, DATA, 2),
            Some(u32::from(u16::from_le_bytes(*b"QE")))
        );
        assert_eq!(
            f.write(0x510, SELECTOR, 1, 5),
            None,
            "a byte write selects nothing"
        );
        assert_eq!(
            PortDevice::read(&mut f, 0x510, DATA, 1),
            Some(u32::from(b'M'))
        );
        assert_eq!(PortDevice::read(&mut f, 0x510, SELECTOR, 2), None);
        assert_eq!(f.write(0x510, DATA, 1, 0), None);
    }
}
