//! Guest RAM as the VMM sees it: guest-physical `[0, size)`, reached only
//! through bounds-checked copies. The hypervisor implements
//! [`GuestMemory`] over the node memory backing the VM; tests use
//! [`VecMemory`].

use crate::bits::usize_from;
use alloc::vec;
use alloc::vec::Vec;

use crate::addr::GuestPhysAddr;

/// An access outside the VM's RAM (or one whose end overflows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryError {
    /// Where the access started.
    pub gpa: GuestPhysAddr,
    /// How many bytes it covered.
    pub len: u64,
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:#x} bytes at guest-physical {} are outside the VM's memory",
            self.len, self.gpa
        )
    }
}

/// A VM's RAM. Implementations check every access against [`size`]
/// with [`check_range`]; an access partly outside fails whole, with no
/// bytes copied.
///
/// [`size`]: GuestMemory::size
pub trait GuestMemory {
    /// Bytes of RAM: guest-physical addresses `[0, size)`.
    fn size(&self) -> u64;
    /// Copies `buf.len()` bytes from guest-physical `gpa`.
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Copies `data` to guest-physical `gpa`.
    fn write(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), MemoryError>;

    /// Fills `len` bytes at `gpa` with zeroes.
    fn zero(&mut self, gpa: GuestPhysAddr, len: u64) -> Result<(), MemoryError> {
        check_range(self.size(), gpa, len)?;
        const CHUNK: [u8; 512] = [0; 512];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK.len() as u64);
            let at = GuestPhysAddr(gpa.0 + done);
            self.write(at, CHUNK.get(..usize_from(n)).unwrap_or(&[]))?;
            done += n;
        }
        Ok(())
    }

    /// Reads a little-endian u32.
    fn read_u32(&self, gpa: GuestPhysAddr) -> Result<u32, MemoryError> {
        let mut b = [0; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian u64.
    fn read_u64(&self, gpa: GuestPhysAddr) -> Result<u64, MemoryError> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// Checks that `[gpa, gpa + len)` lies inside `[0, size)`; returns the
/// start as an offset into RAM.
pub fn check_range(size: u64, gpa: GuestPhysAddr, len: u64) -> Result<u64, MemoryError> {
    match gpa.0.checked_add(len) {
        Some(end) if end <= size => Ok(gpa.0),
        _ => Err(MemoryError { gpa, len }),
    }
}

/// Guest RAM in a host vector: for tests, and for building images before
/// they are copied into a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VecMemory {
    /// The RAM's contents; guest-physical address 0 is index 0.
    pub bytes: Vec<u8>,
}

impl VecMemory {
    /// `size` bytes of zeroed RAM.
    pub fn new(size: usize) -> Self {
        Self {
            bytes: vec![0; size],
        }
    }

    fn span(&self, gpa: GuestPhysAddr, len: usize) -> Result<core::ops::Range<usize>, MemoryError> {
        let start = usize_from(check_range(self.size(), gpa, len as u64)?);
        Ok(start..start + len)
    }
}

impl GuestMemory for VecMemory {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), MemoryError> {
        let span = self.span(gpa, buf.len())?;
        let src = self.bytes.get(span).ok_or(MemoryError {
            gpa,
            len: buf.len() as u64,
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), MemoryError> {
        let span = self.span(gpa, data.len())?;
        let dst = self.bytes.get_mut(span).ok_or(MemoryError {
            gpa,
            len: data.len() as u64,
        })?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_inside_ram_work_and_outside_fail_whole() {
        let mut m = VecMemory::new(4096);
        m.write(GuestPhysAddr(4092), &[1, 2, 3, 4]).unwrap();
        assert_eq!(m.read_u32(GuestPhysAddr(4092)).unwrap(), 0x0403_0201);
        assert!(m.write(GuestPhysAddr(4093), &[9; 4]).is_err());
        assert_eq!(m.bytes[4093], 2, "a failed write copies nothing");
        assert!(m.read_u64(GuestPhysAddr(u64::MAX - 3)).is_err());
        m.zero(GuestPhysAddr(4092), 4).unwrap();
        assert_eq!(m.read_u32(GuestPhysAddr(4092)).unwrap(), 0);
        assert!(m.zero(GuestPhysAddr(1), 4096).is_err());
    }
}
