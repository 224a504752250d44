//! The 16550A UART (National Semiconductor PC16550D datasheet), as a
//! register-level state machine generic over where its output goes.
#![deny(missing_docs)]

use super::console_line::{ConsoleLine, LINE_BYTES};
use super::{PortDevice, PortEffect};
use crate::bits::low_u8;

/// Where a UART's transmitted bytes go.
pub trait UartOutput {
    /// Takes one transmitted byte; true when the output now holds
    /// something the caller should collect (a complete console line).
    fn transmit(&mut self, byte: u8) -> bool;
}

/// A 16550A (National Semiconductor PC16550D datasheet): what Linux's 8250
/// driver needs to find one, drive it by interrupts and loop it back.
///
/// - Transmission is instantaneous: LSR always reports an empty
///   transmitter, and a THR write raises the THRE interrupt again at once.
///   Transmitted bytes go to the [`UartOutput`] `O`: by default a
///   [`ConsoleLine`], which makes lines for the hypervisor's console.
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
pub struct Uart<O = ConsoleLine> {
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
    output: O,
}

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

impl<O: UartOutput + Default> Default for Uart<O> {
    fn default() -> Self {
        Uart::new(O::default())
    }
}

impl<O: UartOutput> Uart<O> {
    /// A UART in its reset state, transmitting to `output`.
    pub fn new(output: O) -> Self {
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
            output,
        }
    }

    /// Where the transmitted bytes went.
    pub fn output(&mut self) -> &mut O {
        &mut self.output
    }

    /// A read of the register at `offset` (0-7) from the UART's base port.
    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => low_u8(self.divisor.into()),
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

    /// A write of the register at `offset` (0-7); returns what the
    /// output's [`UartOutput::transmit`] returned for a transmitted byte
    /// (true: a console line is complete), false otherwise.
    pub fn write(&mut self, offset: u16, value: u8) -> bool {
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
                return self.output.transmit(value);
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
}

impl Uart<ConsoleLine> {
    /// Takes the completed console line, if any (see
    /// [`ConsoleLine::take_line`]).
    pub fn take_line(&mut self, out: &mut [u8; LINE_BYTES]) -> Option<usize> {
        self.output.take_line(out)
    }

    /// Output not yet ended by a newline (see
    /// [`ConsoleLine::take_partial`]).
    pub fn take_partial(&mut self, out: &mut [u8; LINE_BYTES]) -> Option<usize> {
        self.output.take_partial(out)
    }
}

/// On the port bus: every access width reaches the byte register at the
/// offset (the upper bytes of a wider read are 0).
impl<O: UartOutput> PortDevice for Uart<O> {
    fn read(&mut self, _base: u16, offset: u16, _size: u8) -> Option<u32> {
        Some(u32::from(Uart::read(self, offset)))
    }

    fn write(&mut self, _base: u16, offset: u16, _size: u8, value: u32) -> Option<PortEffect> {
        Some(if Uart::write(self, offset, low_u8(value.into())) {
            PortEffect::ConsoleLine
        } else {
            PortEffect::None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uart() -> Uart {
        Uart::default()
    }

    /// Reads the register at `offset`.
    fn uart_in(u: &mut Uart, offset: u16) -> u8 {
        u.read(offset)
    }

    /// Writes the register at `offset`; true when a console line is done.
    fn uart_out(u: &mut Uart, offset: u16, value: u8) -> bool {
        u.write(offset, value)
    }

    #[test]
    fn transmitted_bytes_make_console_lines_and_the_transmitter_is_empty() {
        let mut u = uart();
        assert_eq!(uart_in(&mut u, 5) & 0x60, 0x60);
        let done: std::vec::Vec<bool> = b"hi\r\n".iter().map(|&b| uart_out(&mut u, 0, b)).collect();
        assert_eq!(done, [false, false, false, true]);
        let mut out = [0; LINE_BYTES];
        let n = u.take_line(&mut out).unwrap();
        assert_eq!(&out[..n], b"hi");
        assert!(u.take_line(&mut out).is_none());
        for &b in b"a\x01b" {
            uart_out(&mut u, 0, b);
        }
        let n = u.take_partial(&mut out).unwrap();
        assert_eq!(&out[..n], b"a?b");
    }

    /// The output is whatever the UART was built with.
    #[test]
    fn output_goes_to_the_given_sink() {
        #[derive(Default)]
        struct Record(std::vec::Vec<u8>);
        impl UartOutput for Record {
            fn transmit(&mut self, byte: u8) -> bool {
                self.0.push(byte);
                byte == b'!'
            }
        }
        let mut u = Uart::new(Record::default());
        assert!(!u.write(0, b'o'));
        assert!(u.write(0, b'!'));
        // Loopback: to the receiver, not the output.
        u.write(4, 0x10);
        assert!(!u.write(0, b'x'));
        assert_eq!(u.output().0, b"o!");
        assert_eq!(u.read(0), b'x');
    }

    #[test]
    fn the_divisor_latch_hides_the_data_registers() {
        let mut u = uart();
        uart_out(&mut u, 3, 0x83);
        uart_out(&mut u, 0, 0x01);
        uart_out(&mut u, 1, 0x02);
        assert_eq!(uart_in(&mut u, 1), 0x02);
        assert_eq!(uart_in(&mut u, 0), 0x01);
        uart_out(&mut u, 3, 0x03);
        assert_eq!(uart_in(&mut u, 1), 0, "IER untouched");
        assert_eq!(uart_in(&mut u, 3), 0x03);
        assert_eq!(uart_in(&mut u, 2) & 1, 1, "no interrupt pending");
        uart_out(&mut u, 7, 0x5a);
        assert_eq!(uart_in(&mut u, 7), 0x5a);
        let mut out = [0; LINE_BYTES];
        assert!(u.take_partial(&mut out).is_none(), "divisor bytes not sent");
    }

    #[test]
    fn the_receive_fifo_feeds_rbr_and_lsr() {
        let mut u = uart();
        assert_eq!(uart_in(&mut u, 5) & 1, 0, "no data");
        assert_eq!(uart_in(&mut u, 0), 0);
        // FIFOs off: a single holding register.
        assert_eq!(u.push_input(b"ab"), 1);
        assert_eq!(uart_in(&mut u, 5) & 1, 1);
        assert_eq!(uart_in(&mut u, 0), b'a');
        assert_eq!(uart_in(&mut u, 5) & 1, 0);
        uart_out(&mut u, 2, 0x01);
        let long = [b'x'; 100];
        assert_eq!(u.push_input(b"hello"), 5);
        assert_eq!(u.push_input(&long), RX_FIFO - 5, "bounded");
        assert_eq!(u.push_input(b"z"), 0);
        let got: std::vec::Vec<u8> = (0..5).map(|_| uart_in(&mut u, 0)).collect();
        assert_eq!(got, b"hello");
        // RX reset empties the FIFO; the FIFOs stay on.
        uart_out(&mut u, 2, 0x03);
        assert_eq!(uart_in(&mut u, 5) & 1, 0);
        assert_eq!(u.push_input(b"12"), 2);
        // Turning the FIFOs off empties them too.
        uart_out(&mut u, 2, 0x00);
        assert_eq!(uart_in(&mut u, 5) & 1, 0);
    }

    #[test]
    fn iir_priorities_and_fifo_bits() {
        let mut u = uart();
        assert_eq!(uart_in(&mut u, 2), 0x01, "no FIFO bits before FCR");
        uart_out(&mut u, 2, 0x01);
        assert_eq!(uart_in(&mut u, 2), 0xc1);
        uart_out(&mut u, 1, 0x0f);
        assert_eq!(uart_in(&mut u, 1), 0x0f);
        // THRE is raised by enabling ETBEI and cleared by reading IIR.
        assert_eq!(uart_in(&mut u, 2), 0xc2);
        assert_eq!(uart_in(&mut u, 2), 0xc1);
        // Received data outranks THRE; a THR write raises THRE again.
        u.push_input(b"k");
        uart_out(&mut u, 0, b'x');
        assert_eq!(uart_in(&mut u, 2), 0xc4);
        assert_eq!(uart_in(&mut u, 2), 0xc4, "until the data is read");
        assert_eq!(uart_in(&mut u, 0), b'k');
        assert_eq!(uart_in(&mut u, 2), 0xc2);
        assert_eq!(uart_in(&mut u, 2), 0xc1);
        // Overrun (loopback into a full FIFO) is the line-status source,
        // above everything, until LSR is read.
        uart_out(&mut u, 4, 0x10);
        for _ in 0..=RX_FIFO {
            uart_out(&mut u, 0, b'o');
        }
        assert_eq!(uart_in(&mut u, 2), 0xc6);
        assert_eq!(uart_in(&mut u, 5) & 0x03, 0x03, "OE and DR");
        assert_eq!(uart_in(&mut u, 5) & 0x02, 0, "OE cleared by reading");
        assert_eq!(uart_in(&mut u, 2), 0xc4);
        uart_out(&mut u, 2, 0x03);
        assert_eq!(uart_in(&mut u, 2), 0xc2, "the loopback writes' THRE");
        // Entering loopback changed MSR (0xB0 -> 0): DCTS, DDSR, DDCD.
        assert_eq!(uart_in(&mut u, 2), 0xc0, "modem status");
        assert_eq!(uart_in(&mut u, 6), 0x0b);
        uart_out(&mut u, 4, 0x11);
        assert_eq!(uart_in(&mut u, 2), 0xc0, "modem status");
        assert_eq!(uart_in(&mut u, 6) & 0x0f, 0x02, "DDSR");
        assert_eq!(uart_in(&mut u, 2), 0xc1, "deltas cleared by reading MSR");
        // Disabled sources are not reported.
        uart_out(&mut u, 1, 0);
        uart_out(&mut u, 4, 0);
        u.push_input(b"q");
        assert_eq!(uart_in(&mut u, 2), 0xc1);
    }

    /// serial8250_do_startup's THRE test and TXEN test (Linux 6.1
    /// drivers/tty/serial/8250/8250_port.c) must see a sane 16550A.
    #[test]
    fn passes_linux_thre_and_txen_tests() {
        let mut u = uart();
        uart_out(&mut u, 2, 0x07);
        uart_out(&mut u, 2, 0x00);
        assert_ne!(uart_in(&mut u, 5), 0xff, "LSR safety check");
        uart_out(&mut u, 1, 0x02);
        let iir1 = uart_in(&mut u, 2);
        uart_out(&mut u, 1, 0);
        uart_out(&mut u, 1, 0x02);
        let iir = uart_in(&mut u, 2);
        uart_out(&mut u, 1, 0);
        assert!(
            !(iir1 & 1 == 0 && iir & 1 != 0),
            "UART_BUG_THRE: {iir1:#x} {iir:#x}"
        );
        assert_eq!(iir & 1, 0);
        uart_out(&mut u, 1, 0x02);
        let lsr = uart_in(&mut u, 5);
        let iir = uart_in(&mut u, 2);
        uart_out(&mut u, 1, 0);
        assert!(!(lsr & 0x40 != 0 && iir & 1 != 0), "UART_BUG_TXEN");
    }

    #[test]
    fn loopback_echoes_and_mirrors_mcr() {
        let mut u = uart();
        // autoconfig's loopback test: MCR = LOOP | OUT2 | RTS -> 0x90.
        uart_out(&mut u, 4, 0x1a);
        assert_eq!(uart_in(&mut u, 6) & 0xf0, 0x90);
        uart_out(&mut u, 4, 0x1f);
        assert_eq!(uart_in(&mut u, 6) & 0xf0, 0xf0);
        uart_out(&mut u, 4, 0x1b);
        assert_eq!(uart_in(&mut u, 6), 0xb4, "RI fell: TERI");
        assert!(!uart_out(&mut u, 0, b'\n'), "no console line");
        assert_eq!(uart_in(&mut u, 5) & 1, 1);
        assert_eq!(uart_in(&mut u, 0), b'\n');
        assert_eq!(u.push_input(b"x"), 0, "outside input is cut off");
        let mut out = [0; LINE_BYTES];
        assert!(u.take_partial(&mut out).is_none(), "nothing output");
        uart_out(&mut u, 4, 0x03);
        assert_eq!(uart_in(&mut u, 6) & 0xf0, 0xb0);
    }

    #[test]
    fn the_interrupt_line_needs_out2_and_an_enabled_source() {
        let mut u = uart();
        uart_out(&mut u, 1, 0x01);
        u.push_input(b"a");
        assert!(!u.interrupt_line(), "OUT2 clear");
        uart_out(&mut u, 4, 0x0b);
        assert!(u.interrupt_line());
        uart_in(&mut u, 0);
        assert!(!u.interrupt_line(), "data taken");
        uart_out(&mut u, 1, 0x02);
        assert!(u.interrupt_line(), "THRE");
        uart_in(&mut u, 2);
        assert!(!u.interrupt_line(), "IIR read cleared THRE");
        uart_out(&mut u, 0, b'x');
        assert!(u.interrupt_line(), "sent: THRE again");
        // Loopback forces the output off.
        uart_out(&mut u, 4, 0x1b);
        assert!(!u.interrupt_line());
    }

    #[test]
    fn the_transmitter_is_idle_only_while_the_driver_sends_nothing() {
        let mut u = uart();
        assert!(u.transmit_idle());
        uart_out(&mut u, 1, 0x02); // IER.ETBEI: the driver has output
        assert!(!u.transmit_idle());
        uart_out(&mut u, 1, 0x01);
        assert!(u.transmit_idle());
    }
}
