//! Structured console events: one line `@ev {json}` per fact that tests,
//! tools and users' scripts rely on. The events and their fields are the
//! stable interface documented in `hypervisor/EVENTS.md`.
//!
//! The writer streams straight into a [`core::fmt::Write`] (the serial port),
//! so it needs no buffer and no allocator:
//!
//! ```
//! use atoll_platform::event::{Event, Hex};
//! let mut line = String::new();
//! Event::new(&mut line, "ioapic_found")
//!     .field("id", 0u8)
//!     .field("address", Hex(0xfec0_0000))
//!     .finish()
//!     .unwrap();
//! assert_eq!(line, "@ev {\"ev\":\"ioapic_found\",\"id\":0,\"address\":\"0xfec00000\"}\n");
//! ```

use core::fmt::{self, Write};

/// The prefix that marks an event line on the console.
pub const PREFIX: &str = "@ev ";

/// A value that can be written as JSON.
pub trait JsonValue {
    /// Writes the value as a JSON token.
    fn write_json(&self, out: &mut dyn Write) -> fmt::Result;
}

/// A number written as a hex string (`"0x1f"`): used for addresses and MSR
/// values, which JSON consumers may round above 2^53.
#[derive(Clone, Copy, Debug)]
pub struct Hex(pub u64);

macro_rules! json_integer {
    ($($t:ty),*) => {$(
        impl JsonValue for $t {
            fn write_json(&self, out: &mut dyn Write) -> fmt::Result {
                write!(out, "{self}")
            }
        }
    )*};
}
json_integer!(u8, u16, u32, u64, usize, i32, i64);

impl JsonValue for bool {
    fn write_json(&self, out: &mut dyn Write) -> fmt::Result {
        out.write_str(if *self { "true" } else { "false" })
    }
}

impl JsonValue for Hex {
    fn write_json(&self, out: &mut dyn Write) -> fmt::Result {
        write!(out, "\"{:#x}\"", self.0)
    }
}

impl JsonValue for &str {
    fn write_json(&self, out: &mut dyn Write) -> fmt::Result {
        out.write_char('"')?;
        JsonEscaper(out).write_str(self)?;
        out.write_char('"')
    }
}

/// A half-open address range `[start, end)`, written as the string
/// `"0x100000-0x4100000"`.
#[derive(Clone, Copy, Debug)]
pub struct HexRange(pub u64, pub u64);

impl JsonValue for HexRange {
    fn write_json(&self, out: &mut dyn Write) -> fmt::Result {
        write!(out, "\"{:#x}-{:#x}\"", self.0, self.1)
    }
}

/// A list, written as a JSON array.
impl<T: JsonValue> JsonValue for &[T] {
    fn write_json(&self, out: &mut dyn Write) -> fmt::Result {
        out.write_char('[')?;
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.write_char(',')?;
            }
            item.write_json(out)?;
        }
        out.write_char(']')
    }
}

/// An absent value, written as `null`.
impl<T: JsonValue> JsonValue for Option<T> {
    fn write_json(&self, out: &mut dyn Write) -> fmt::Result {
        match self {
            Some(value) => value.write_json(out),
            None => out.write_str("null"),
        }
    }
}

/// Formatted text (`format_args!`) written as a JSON string, so a panic
/// message can be streamed without first formatting it into a buffer.
impl JsonValue for fmt::Arguments<'_> {
    fn write_json(&self, out: &mut dyn Write) -> fmt::Result {
        out.write_char('"')?;
        JsonEscaper(out).write_fmt(*self)?;
        out.write_char('"')
    }
}

/// Escapes what it is given for use inside a JSON string (RFC 8259, 7).
struct JsonEscaper<'a>(&'a mut dyn Write);

impl Write for JsonEscaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '"' => self.0.write_str("\\\"")?,
                '\\' => self.0.write_str("\\\\")?,
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if (c as u32) < 0x20 => write!(self.0, "\\u{:04x}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// One event line under construction. Fields are written as they are added;
/// the first write error is kept and returned by [`Event::finish`].
pub struct Event<W: Write> {
    out: W,
    result: fmt::Result,
}

impl<W: Write> Event<W> {
    /// Starts the line `@ev {"ev":"<name>"`.
    pub fn new(mut out: W, name: &str) -> Self {
        let result = out
            .write_str(PREFIX)
            .and_then(|()| out.write_str("{\"ev\":"))
            .and_then(|()| name.write_json(&mut out));
        Self { out, result }
    }

    /// Adds `"key":value`.
    pub fn field(mut self, key: &str, value: impl JsonValue) -> Self {
        if self.result.is_ok() {
            let out = &mut self.out;
            self.result = out
                .write_char(',')
                .and_then(|()| key.write_json(out))
                .and_then(|()| out.write_char(':'))
                .and_then(|()| value.write_json(out));
        }
        self
    }

    /// Closes the object and ends the line.
    pub fn finish(mut self) -> fmt::Result {
        self.result?;
        self.out.write_str("}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    #[test]
    fn writes_one_json_object_per_line() {
        let mut s = String::new();
        Event::new(&mut s, "boot")
            .field("cpus", 4u32)
            .field("vmx", true)
            .field("base", Hex(0xfee0_0000))
            .field("neg", -3i64)
            .finish()
            .unwrap();
        assert_eq!(
            s,
            "@ev {\"ev\":\"boot\",\"cpus\":4,\"vmx\":true,\"base\":\"0xfee00000\",\"neg\":-3}\n"
        );
        let v: serde_json::Value = serde_json::from_str(s.strip_prefix(PREFIX).unwrap()).unwrap();
        assert_eq!(v["cpus"], 4);
    }

    #[test]
    fn escapes_strings_so_any_text_stays_valid_json() {
        let nasty = "quote\" back\\ nl\n cr\r tab\t bell\u{7} é";
        let mut s = String::new();
        Event::new(&mut s, "panic")
            .field("msg", nasty)
            .field("fmt", format_args!("{}-{}", nasty, 7))
            .finish()
            .unwrap();
        assert_eq!(s.matches('\n').count(), 1, "one line: {s:?}");
        let v: serde_json::Value = serde_json::from_str(s.strip_prefix(PREFIX).unwrap()).unwrap();
        assert_eq!(v["msg"], nasty);
        assert_eq!(v["fmt"], std::format!("{nasty}-7"));
    }

    #[test]
    fn writes_lists_ranges_and_absent_values() {
        let mut s = String::new();
        let cpus: &[u32] = &[0, 1];
        let mem: &[HexRange] = &[HexRange(0x10_0000, 0x410_0000)];
        Event::new(&mut s, "node_up")
            .field("cpus", cpus)
            .field("mem", mem)
            .field("domain", None::<u32>)
            .field("slot", Some(2u32))
            .finish()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(s.strip_prefix(PREFIX).unwrap()).unwrap();
        assert_eq!(v["cpus"], serde_json::json!([0, 1]));
        assert_eq!(v["mem"], serde_json::json!(["0x100000-0x4100000"]));
        assert!(v["domain"].is_null());
        assert_eq!(v["slot"], 2);
    }

    #[test]
    fn reports_write_errors() {
        struct Full;
        impl Write for Full {
            fn write_str(&mut self, _: &str) -> fmt::Result {
                Err(fmt::Error)
            }
        }
        assert!(Event::new(Full, "x").field("a", 1u8).finish().is_err());
    }
}
