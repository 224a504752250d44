//! A guest's serial output made into lines for the shared console: the
//! bytes a UART transmits are collected until a newline (or
//! [`LINE_BYTES`] of them), terminal control sequences are left out, and
//! bytes that could drive the operator's terminal are shown as '?'.
#![deny(missing_docs)]

use super::uart::UartOutput;

/// Bytes in a console line before it is cut.
pub const LINE_BYTES: usize = 256;

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

/// The line being collected, bounded: a guest cannot make the host buffer
/// unbounded output.
#[derive(Clone, Debug)]
pub struct ConsoleLine {
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

impl Default for ConsoleLine {
    fn default() -> Self {
        ConsoleLine {
            line: [0; LINE_BYTES],
            len: 0,
            complete: false,
            escape: Escape::None,
            carriage_return: false,
        }
    }
}

impl UartOutput for ConsoleLine {
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
}

impl ConsoleLine {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `text`; how many lines it completed.
    fn send(c: &mut ConsoleLine, text: &[u8]) -> usize {
        text.iter().filter(|b| c.transmit(**b)).count()
    }

    /// The console line made of `output`.
    fn line_of(output: &[u8]) -> std::vec::Vec<u8> {
        let mut c = ConsoleLine::default();
        send(&mut c, output);
        let mut out = [0; LINE_BYTES];
        let n = c.take_line(&mut out).unwrap();
        out[..n].to_vec()
    }

    #[test]
    fn lines_end_at_newlines_and_unfinished_output_is_taken_whole() {
        let mut c = ConsoleLine::default();
        assert_eq!(send(&mut c, b"hi\r\n"), 1);
        let mut out = [0; LINE_BYTES];
        let n = c.take_line(&mut out).unwrap();
        assert_eq!(&out[..n], b"hi");
        assert!(c.take_line(&mut out).is_none());
        assert!(c.take_partial(&mut out).is_none(), "nothing left");
        send(&mut c, b"a\x01b");
        assert!(c.take_line(&mut out).is_none(), "no newline yet");
        let n = c.take_partial(&mut out).unwrap();
        assert_eq!(&out[..n], b"a?b");
    }

    #[test]
    fn long_lines_are_cut_and_never_grow() {
        let mut c = ConsoleLine::default();
        assert_eq!(send(&mut c, &[b'x'; LINE_BYTES]), 1);
        // Not taken: the next byte starts a new line.
        send(&mut c, b"y\n");
        let mut out = [0; LINE_BYTES];
        let n = c.take_line(&mut out).unwrap();
        assert_eq!(&out[..n], b"y");
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
}
