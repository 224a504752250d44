//! What the fuzz targets share: guest memory that records the loaders'
//! writes instead of holding the bytes.

use atoll_vmm::memory::check_range;
use atoll_vmm::{GuestMemory, GuestPhysAddr, MemoryError};

/// Writes up to this long keep their bytes (the boot information, the
/// zero page, command lines); longer ones only their place.
const KEEP: usize = 64 << 10;

/// One write (or zero fill) to guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub at: u64,
    pub len: u64,
    /// The bytes, for short writes; `None` for a long one.
    pub data: Option<Vec<u8>>,
}

impl Write {
    pub fn end(&self) -> u64 {
        self.at + self.len
    }
}

/// Guest RAM of any size, even past the host's: a loader's writes are
/// checked against the size as real guest memory checks them, then
/// recorded, so a run costs nothing per byte of RAM (nothing to allocate
/// or zero) and the target can check where everything went.
pub struct Recorder {
    size: u64,
    pub writes: Vec<Write>,
}

impl Recorder {
    pub fn new(size: u64) -> Self {
        Self {
            size,
            writes: Vec::new(),
        }
    }

    /// Panics unless no two writes overlap: a loader that writes one
    /// thing over another has placed them wrongly.
    pub fn assert_disjoint(&self) {
        let mut spans: Vec<&Write> = self.writes.iter().filter(|w| w.len > 0).collect();
        spans.sort_by_key(|w| w.at);
        for pair in spans.windows(2) {
            assert!(
                pair[0].end() <= pair[1].at,
                "writes overlap: {:#x}+{:#x} and {:#x}+{:#x}",
                pair[0].at,
                pair[0].len,
                pair[1].at,
                pair[1].len
            );
        }
    }

    /// The bytes of the short write that starts at `at`.
    pub fn data_at(&self, at: u64) -> Option<&[u8]> {
        self.writes
            .iter()
            .rev()
            .find(|w| w.at == at)
            .and_then(|w| w.data.as_deref())
    }

    /// The write that starts at `at`.
    pub fn write_at(&self, at: u64) -> Option<&Write> {
        self.writes.iter().rev().find(|w| w.at == at)
    }
}

impl GuestMemory for Recorder {
    fn size(&self) -> u64 {
        self.size
    }

    /// Zeroes, except where a recorded short write put bytes.
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), MemoryError> {
        check_range(self.size, gpa, buf.len() as u64)?;
        buf.fill(0);
        for w in &self.writes {
            let Some(data) = &w.data else { continue };
            for (i, b) in buf.iter_mut().enumerate() {
                let addr = gpa.0 + i as u64;
                if addr >= w.at && addr < w.end() {
                    *b = data[(addr - w.at) as usize];
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), MemoryError> {
        check_range(self.size, gpa, data.len() as u64)?;
        self.writes.push(Write {
            at: gpa.0,
            len: data.len() as u64,
            data: (data.len() <= KEEP).then(|| data.to_vec()),
        });
        Ok(())
    }

    fn zero(&mut self, gpa: GuestPhysAddr, len: u64) -> Result<(), MemoryError> {
        check_range(self.size, gpa, len)?;
        let data = usize::try_from(len)
            .ok()
            .filter(|&n| n <= KEEP)
            .map(|n| vec![0; n]);
        self.writes.push(Write {
            at: gpa.0,
            len,
            data,
        });
        Ok(())
    }
}
