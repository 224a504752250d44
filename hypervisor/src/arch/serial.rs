//! The COM1 16550 UART, Atoll's console.
//!
//! Written here rather than taken from the `uart_16550` crate because Atoll
//! needs two things that crate does not give in a stable API: draining the
//! transmitter (LSR.TEMT) before power-off, which Bochs otherwise cuts short
//! by a character or two, and a handle that needs no lock so the panic path
//! can always print.

use super::port::Port;

/// COM1's base port.
// SAFETY: 0x3F8-0x3FF is the COM1 UART on every PC platform Atoll runs on;
// the console owns it, and UART registers cannot change memory.
const COM1: Port = unsafe { Port::new(0x3f8) };

/// Register offsets (PC16550D data sheet, table 2).
mod reg {
    pub const DATA: u16 = 0;
    pub const INTERRUPT_ENABLE: u16 = 1;
    pub const FIFO_CONTROL: u16 = 2;
    pub const LINE_CONTROL: u16 = 3;
    pub const MODEM_CONTROL: u16 = 4;
    pub const LINE_STATUS: u16 = 5;
}

/// Line status bits.
mod lsr {
    /// Data ready: a received byte waits in RBR.
    pub const DATA_READY: u8 = 1 << 0;
    /// Transmitter holding register empty: room for one more byte.
    pub const THRE: u8 = 1 << 5;
    /// Transmitter empty: the last byte has left the shift register.
    pub const TEMT: u8 = 1 << 6;
}

/// How many status polls to wait for the UART before giving up; a missing
/// UART (all ones or all zeroes on the bus) must not hang the hypervisor.
const MAX_POLLS: u32 = 1_000_000;

/// A handle to COM1. Holding one does not imply exclusive access: callers
/// serialise whole lines with the console lock (console.rs), except the
/// panic path, which prints regardless.
#[derive(Clone, Copy)]
pub struct Serial;

impl Serial {
    /// Programs COM1 for 115200 baud, 8N1, FIFOs on, no interrupts.
    pub fn init() -> Self {
        COM1.offset(reg::INTERRUPT_ENABLE).write_u8(0x00);
        COM1.offset(reg::LINE_CONTROL).write_u8(0x80); // DLAB: divisor latch follows
        COM1.offset(reg::DATA).write_u8(0x01); // divisor 1 = 115200 baud
        COM1.offset(reg::INTERRUPT_ENABLE).write_u8(0x00);
        COM1.offset(reg::LINE_CONTROL).write_u8(0x03); // 8 data bits, no parity, 1 stop
        COM1.offset(reg::FIFO_CONTROL).write_u8(0xc7); // enable + clear FIFOs, 14-byte trigger
        COM1.offset(reg::MODEM_CONTROL).write_u8(0x03); // DTR + RTS
        Serial
    }

    fn wait_for(status_bit: u8) {
        for _ in 0..MAX_POLLS {
            if COM1.offset(reg::LINE_STATUS).read_u8() & status_bit != 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// Sends one byte.
    pub fn write_byte(self, byte: u8) {
        Self::wait_for(lsr::THRE);
        COM1.offset(reg::DATA).write_u8(byte);
    }

    /// A received byte, if one is waiting (LSR bit 0, data ready).
    pub fn try_read_byte(self) -> Option<u8> {
        let ready = COM1.offset(reg::LINE_STATUS).read_u8() & lsr::DATA_READY != 0;
        ready.then(|| COM1.offset(reg::DATA).read_u8())
    }

    /// Waits until every byte written so far has left the UART.
    pub fn drain(self) {
        Self::wait_for(lsr::TEMT);
    }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        s.bytes().for_each(|b| self.write_byte(b));
        Ok(())
    }
}
