//! x86 port I/O (SDM Vol. 1, 19.3).
//!
//! A [`Port`] is made with an `unsafe` constructor whose caller vouches for
//! the device behind the port number; reading and writing it is then safe.
//! Port I/O touches no memory Rust knows about, but a write to the wrong
//! device (a DMA controller, say) could, hence the vouching.

/// One I/O port of a device the holder owns.
#[derive(Clone, Copy, Debug)]
pub struct Port(u16);

impl Port {
    /// # Safety
    /// `number` must be a port of a device whose register writes cannot
    /// change memory (a UART, the ACPI PM1 control block, an emulator's
    /// debug or shutdown port), and the caller must own that device.
    pub const unsafe fn new(number: u16) -> Self {
        Port(number)
    }

    /// The port `offset` registers further on, on the same device.
    pub const fn offset(self, offset: u16) -> Self {
        Port(self.0.wrapping_add(offset))
    }

    pub fn write_u8(self, value: u8) {
        // SAFETY: `Port::new`'s contract: the port belongs to an owned device
        // whose registers cannot change memory.
        unsafe { x86::io::outb(self.0, value) }
    }

    pub fn read_u8(self) -> u8 {
        // SAFETY: as for `write_u8`.
        unsafe { x86::io::inb(self.0) }
    }

    pub fn write_u16(self, value: u16) {
        // SAFETY: as for `write_u8`.
        unsafe { x86::io::outw(self.0, value) }
    }

    pub fn read_u16(self) -> u16 {
        // SAFETY: as for `write_u8`.
        unsafe { x86::io::inw(self.0) }
    }

    pub fn write_u32(self, value: u32) {
        // SAFETY: as for `write_u8`.
        unsafe { x86::io::outl(self.0, value) }
    }
}
