//! A virtio block device (virtio 1.2, 5.2) with one request queue.
//!
//! Features offered: VIRTIO_BLK_F_SEG_MAX (so Linux puts more than one data
//! segment in a request) and VIRTIO_BLK_F_FLUSH. Requests (5.2.6): T_IN,
//! T_OUT, T_FLUSH and T_GET_ID; any other type is answered with
//! VIRTIO_BLK_S_UNSUPP. The device does not assume any framing (2.6.4): the
//! header is the first 16 bytes of the chain's readable part, the status the
//! last byte of its writable part, and the data whatever lies between.
//!
//! A request without a writable byte for its status cannot be answered: the
//! device needs a reset. Any other bad request fails with
//! VIRTIO_BLK_S_IOERR: a short header, data in the wrong direction, a length
//! that is not a whole number of sectors, sectors beyond the capacity, a
//! backend error. Data moves through a fixed stack buffer, [`CHUNK`] bytes
//! at a time.

use crate::memory::GuestMemory;
use crate::virtio::mmio::Device;
use crate::virtio::queue::{Chain, Queue, QueueError};

/// The virtio device ID of a block device (5).
pub const DEVICE_ID: u32 = 2;
/// Bytes per sector: the unit of `sector` and `capacity` (5.2.4).
pub const SECTOR: u64 = 512;
/// Bytes copied between guest memory and the backend in one step.
pub const CHUNK: usize = 4096;
/// The request queue's size.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments in one request: with a header and a status descriptor,
/// two requests fit the queue (no indirect descriptors, 5.2.3).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 / 2 - 2;
/// Bytes of the ID string answered to T_GET_ID (5.2.6, VIRTIO_BLK_ID_BYTES).
pub const ID_BYTES: usize = 20;

/// Feature bits (5.2.3).
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request types (5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request status values (5.2.6).
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// struct virtio_blk_req's header: type (le32), reserved (le32), sector
/// (le64).
const HEADER_BYTES: u32 = 16;
/// struct virtio_blk_config as far as version 1.2 goes, without zoned
/// fields (5.2.4): capacity at 0, size_max at 8, seg_max at 12.
const CONFIG_BYTES: usize = 64;

/// The storage behind a block device, in bytes. The hypervisor implements
/// it over node memory; tests use a vector. A failure has no detail: the
/// request fails with VIRTIO_BLK_S_IOERR, which carries none either.
#[allow(clippy::result_unit_err)]
pub trait BlockBackend {
    /// Size in 512-byte sectors.
    fn sectors(&self) -> u64;
    /// Fills `buf` from byte `offset` (inside the device: checked first).
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ()>;
    /// Stores `data` at byte `offset` (inside the device: checked first).
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ()>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> Result<(), ()>;
}

/// The block device model behind a [`crate::virtio::VirtioMmio`].
#[derive(Clone, Debug)]
pub struct Block<B: BlockBackend> {
    backend: B,
    id: [u8; ID_BYTES],
    /// Requests completed, and how many of them failed.
    pub requests: u64,
    pub failed: u64,
}

/// A request's header fields, copied out of guest memory once.
#[derive(Clone, Copy, Debug)]
struct Header {
    kind: u32,
    sector: u64,
}

impl<B: BlockBackend> Block<B> {
    /// A device over `backend` answering T_GET_ID with `id` (cut to 20
    /// bytes, zero-padded).
    pub fn new(backend: B, id: &[u8]) -> Self {
        let mut padded = [0u8; ID_BYTES];
        padded.iter_mut().zip(id).for_each(|(d, s)| *d = *s);
        Block {
            backend,
            id: padded,
            requests: 0,
            failed: 0,
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Carries out one request; returns its status and the bytes written
    /// into the chain before the status byte.
    fn execute(&mut self, chain: &Chain, mem: &mut impl GuestMemory) -> (u8, u32) {
        let Some(header) = read_header(chain, mem) else {
            return (VIRTIO_BLK_S_IOERR, 0);
        };
        // Bytes around the data: the header before it, the status after.
        let readable = chain.readable_len().saturating_sub(HEADER_BYTES);
        let writable = chain.writable_len().saturating_sub(1);
        let result = match header.kind {
            VIRTIO_BLK_T_IN if readable == 0 => {
                self.read_sectors(header.sector, writable, chain, mem)
            }
            VIRTIO_BLK_T_OUT if writable == 0 => {
                self.write_sectors(header.sector, readable, chain, mem)
            }
            VIRTIO_BLK_T_FLUSH => self.backend.flush().map(|()| 0),
            VIRTIO_BLK_T_GET_ID => {
                let id = self.id.get(..writable as usize).unwrap_or(&self.id);
                Ok(chain.write_at(mem, 0, id) as u32)
            }
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => Err(()),
            _ => return (VIRTIO_BLK_S_UNSUPP, 0),
        };
        match result {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(()) => (VIRTIO_BLK_S_IOERR, 0),
        }
    }

    /// The byte offset of `len` bytes at `sector`, if they are whole
    /// sectors inside the device.
    fn byte_range(&self, sector: u64, len: u32) -> Result<u64, ()> {
        let len = u64::from(len);
        let start = sector.checked_mul(SECTOR).ok_or(())?;
        let end = start.checked_add(len).ok_or(())?;
        let capacity = self.backend.sectors().checked_mul(SECTOR).ok_or(())?;
        if len % SECTOR != 0 || end > capacity {
            return Err(());
        }
        Ok(start)
    }

    /// T_IN: backend -> the writable part, `len` bytes.
    fn read_sectors(
        &mut self,
        sector: u64,
        len: u32,
        chain: &Chain,
        mem: &mut impl GuestMemory,
    ) -> Result<u32, ()> {
        let start = self.byte_range(sector, len)?;
        let mut buf = [0u8; CHUNK];
        let mut done = 0u32;
        while done < len {
            let n = (len - done).min(CHUNK as u32);
            let chunk = buf.get_mut(..n as usize).ok_or(())?;
            self.backend.read(start + u64::from(done), chunk)?;
            if chain.write_at(mem, u64::from(done), chunk) != chunk.len() {
                return Err(());
            }
            done += n;
        }
        Ok(len)
    }

    /// T_OUT: the readable part after the header -> backend, `len` bytes.
    fn write_sectors(
        &mut self,
        sector: u64,
        len: u32,
        chain: &Chain,
        mem: &impl GuestMemory,
    ) -> Result<u32, ()> {
        let start = self.byte_range(sector, len)?;
        let mut buf = [0u8; CHUNK];
        let mut done = 0u32;
        while done < len {
            let n = (len - done).min(CHUNK as u32);
            let chunk = buf.get_mut(..n as usize).ok_or(())?;
            let at = u64::from(HEADER_BYTES + done);
            if chain.read_at(mem, at, chunk) != chunk.len() {
                return Err(());
            }
            self.backend.write(start + u64::from(done), chunk)?;
            done += n;
        }
        Ok(0)
    }

    /// Serves one chain: executes it and writes its status (5.2.6).
    fn serve(
        &mut self,
        chain: &Chain,
        queue: &mut Queue,
        mem: &mut impl GuestMemory,
    ) -> Result<(), QueueError> {
        let Some(status_at) = chain.writable_len().checked_sub(1) else {
            return Err(QueueError::BadRequest);
        };
        let (status, written) = self.execute(chain, mem);
        self.requests = self.requests.saturating_add(1);
        if status != VIRTIO_BLK_S_OK {
            self.failed = self.failed.saturating_add(1);
        }
        if chain.write_at(mem, u64::from(status_at), &[status]) != 1 {
            return Err(QueueError::BufferOutsideMemory);
        }
        queue.push_used(chain.head, written.saturating_add(1), mem)
    }
}

/// Copies the header out of the readable part (`None` if it is short).
fn read_header(chain: &Chain, mem: &impl GuestMemory) -> Option<Header> {
    let mut b = [0u8; HEADER_BYTES as usize];
    if chain.readable_len() < HEADER_BYTES || chain.read_at(mem, 0, &mut b) != b.len() {
        return None;
    }
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = b;
    Some(Header {
        kind: u32::from_le_bytes([t0, t1, t2, t3]),
        sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
    })
}

impl<B: BlockBackend> Device for Block<B> {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn queue_size_max(&self, _index: usize) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) -> bool {
        let mut config = [0u8; CONFIG_BYTES];
        let (capacity, rest) = config.split_at_mut(8);
        capacity.copy_from_slice(&self.backend.sectors().to_le_bytes());
        if let Some(seg_max) = rest.get_mut(4..8) {
            seg_max.copy_from_slice(&SEG_MAX.to_le_bytes());
        }
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| config.get(start..start.checked_add(data.len())?));
        src.map(|s| data.copy_from_slice(s)).is_some()
    }

    fn reset(&mut self) {}

    /// Serves at most a queue's worth of requests: more need another
    /// notification, so a driver cannot keep the device busy forever.
    fn notify(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &mut impl GuestMemory,
    ) -> Result<(), QueueError> {
        for _ in 0..queue.size() {
            let Some(chain) = queue.pop(mem)? else {
                break;
            };
            self.serve(&chain, queue, mem)?;
        }
        Ok(())
    }
}
