//! The two ways a PC guest resets the machine: the reset control register
//! at 0xCF9 (PIIX/ICH "RST_CNT") and the 8042 keyboard controller's
//! command 0xFE, which pulses the CPU's reset line. Linux tries both
//! (arch/x86/kernel/reboot.c); either is a reboot of the VM.
#![deny(missing_docs)]

use super::{PortDevice, PortEffect};
use crate::bits::low_u8;

/// RST_CNT bit 2: start a reset. Bits 3:1 are kept (full reset, reset
/// CPU, system reset), bit 2 reads back 0 as the reset has happened.
const RESET_CPU: u8 = 0x04;
const KEPT_BITS: u8 = 0x0e;

/// The reset control register: a byte register. Wider accesses read all
/// ones and change nothing, as they do on the PCI configuration ports
/// around it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResetControl {
    /// The last value written, bits 3:1.
    value: u8,
}

impl PortDevice for ResetControl {
    fn read(&mut self, _base: u16, _offset: u16, size: u8) -> Option<u32> {
        Some(if size == 1 {
            u32::from(self.value)
        } else {
            super::ones(size)
        })
    }

    fn write(&mut self, _base: u16, _offset: u16, size: u8, value: u32) -> Option<PortEffect> {
        if size != 1 {
            return Some(PortEffect::None);
        }
        let value = low_u8(value.into());
        self.value = value & KEPT_BITS;
        Some(if value & RESET_CPU != 0 {
            PortEffect::Reset
        } else {
            PortEffect::None
        })
    }
}

/// The 8042's command byte that pulses the reset line.
const PULSE_RESET: u8 = 0xfe;

/// The 8042's status/command port: status reads 0 (both buffers empty, so
/// Linux never waits on it), and command 0xFE resets. Other commands are
/// dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct I8042;

impl PortDevice for I8042 {
    fn read(&mut self, _base: u16, _offset: u16, _size: u8) -> Option<u32> {
        Some(0)
    }

    fn write(&mut self, _base: u16, _offset: u16, _size: u8, value: u32) -> Option<PortEffect> {
        Some(if low_u8(value.into()) == PULSE_RESET {
            PortEffect::Reset
        } else {
            PortEffect::None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rst_cnt_keeps_bits_3_to_1_and_bit_2_resets() {
        let mut r = ResetControl::default();
        assert_eq!(r.write(0xcf9, 0, 1, 0x02), Some(PortEffect::None));
        assert_eq!(r.read(0xcf9, 0, 1), Some(0x02));
        assert_eq!(r.write(0xcf9, 0, 1, 0xf6), Some(PortEffect::Reset));
        assert_eq!(r.read(0xcf9, 0, 1), Some(0x06));
        // Wider accesses: all ones, nothing happens.
        assert_eq!(r.write(0xcf9, 0, 2, 0x04), Some(PortEffect::None));
        assert_eq!(r.read(0xcf9, 0, 2), Some(0xffff));
        assert_eq!(r.read(0xcf9, 0, 1), Some(0x06));
    }

    #[test]
    fn the_8042_is_empty_and_command_fe_resets() {
        let mut k = I8042;
        assert_eq!(k.read(0x64, 0, 1), Some(0));
        assert_eq!(k.write(0x64, 0, 1, 0xad), Some(PortEffect::None));
        assert_eq!(k.write(0x64, 0, 1, 0xfe), Some(PortEffect::Reset));
        assert_eq!(
            k.write(0x64, 0, 2, 0x01fe),
            Some(PortEffect::Reset),
            "the low byte"
        );
    }
}
