//! A virtio block device (virtio 1.2, 5.2) with one request queue.
//!
//! Features offered: VIRTIO_BLK_F_SEG_MAX (so Linux puts more than one data
//! segment in a request) and, only over a durable backend
//! ([`BlockBackend::durable`]), VIRTIO_BLK_F_FLUSH: a volatile disk (node
//! memory) does not pretend that a flush makes anything last. Requests
//! (5.2.6): T_IN, T_OUT, T_FLUSH (when negotiated) and T_GET_ID; any other
//! type, and T_FLUSH without the feature, is answered with
//! VIRTIO_BLK_S_UNSUPP. The device does not assume any framing (2.6.4):
//! the header is the first 16 bytes of the chain's readable part, the
//! status the last byte of its writable part, and the data whatever lies
//! between.
//!
//! A request without a writable byte for its status cannot be answered: the
//! device needs a reset. Any other bad request fails with
//! VIRTIO_BLK_S_IOERR: a short header, data in the wrong direction, a length
//! that is not a whole number of sectors, sectors beyond the capacity, a
//! backend error. Data moves through a fixed stack buffer, [`CHUNK`] bytes
//! at a time.
//!
//! Work is sliced (crate::virtio::budget): a notification only records that
//! the queue was kicked; [`Device::work`] then serves requests until its
//! [`Budget`] is spent (at most [`budget::SLICE_BYTES`] = 256 KiB and
//! [`budget::SLICE_US`] = 100 us a slice, as the hypervisor sets it, each
//! request also costing [`budget::REQUEST_COST`] bytes)
//! and says whether work remains. A request popped but not finished stays
//! in flight: its chain was validated and copied out of guest memory when
//! it was popped (so the driver rewriting its descriptors changes nothing),
//! its header read once, its progress kept. A reset or a disabled queue
//! drops it.

use crate::memory::GuestMemory;
use crate::virtio::budget::{self, Budget};
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

/// Feature bit (5.2.3): the configuration's seg_max, the most segments a
/// request may have, is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature bit (5.2.3): the device takes flush requests.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request type (5.2.6): read sectors from the device into the
/// request's buffers.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Write: the request's buffers onto the device.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Flush: make earlier writes durable.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Get the device's identifying string (up to 20 bytes).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Request status (5.2.6): the request succeeded.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// The request failed with a device or backend error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// The request type is not supported.
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
    /// Whether completed writes can be made to outlive the machine: only
    /// then is VIRTIO_BLK_F_FLUSH offered.
    fn durable(&self) -> bool;
    /// Makes completed writes durable (called only if [`Self::durable`]).
    fn flush(&mut self) -> Result<(), ()>;
}

/// What a popped request still has to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// T_IN: backend bytes from `start` into the writable part.
    Read { start: u64, len: u32 },
    /// T_OUT: the readable part after the header into the backend.
    Write { start: u64, len: u32 },
    /// Answered without moving data: this status, these bytes written.
    Done { status: u8, written: u32 },
}

/// A request popped from the queue and not yet pushed back.
#[derive(Clone, Debug)]
struct InFlight {
    /// Validated and copied out of guest memory at pop.
    chain: Chain,
    op: Op,
    /// Data bytes moved so far.
    done: u32,
    /// When it was popped (the budget's clock).
    popped: u64,
}

/// The block device model behind a [`crate::virtio::VirtioMmio`].
#[derive(Clone, Debug)]
pub struct Block<B: BlockBackend> {
    backend: B,
    id: [u8; ID_BYTES],
    /// The driver accepted VIRTIO_BLK_F_FLUSH.
    flush_negotiated: bool,
    /// Chains the current notification may still take (a queue's worth:
    /// more need another notification, so a driver cannot keep the device
    /// busy forever on one).
    kicked: u16,
    in_flight: Option<InFlight>,
    /// Requests completed, and how many of them failed.
    pub requests: u64,
    /// Completed requests that failed (status other than VIRTIO_BLK_S_OK).
    pub failed: u64,
    /// The longest time a request took from pop to completion, in ticks of
    /// the budget's clock (across slices).
    pub max_request_ticks: u64,
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
            flush_negotiated: false,
            kicked: 0,
            in_flight: None,
            requests: 0,
            failed: 0,
            max_request_ticks: 0,
        }
    }

    /// The storage behind the device.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The storage behind the device, to change it from outside.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Drops the request in flight and the pending notification.
    fn stop(&mut self) {
        self.in_flight = None;
        self.kicked = 0;
    }

    /// Decides what a freshly popped chain asks for; requests that move no
    /// data are carried out here.
    fn start(&mut self, chain: &Chain, mem: &mut impl GuestMemory) -> Op {
        let Some(header) = read_header(chain, mem) else {
            return Op::Done {
                status: VIRTIO_BLK_S_IOERR,
                written: 0,
            };
        };
        // Bytes around the data: the header before it, the status after.
        let readable = chain.readable_len().saturating_sub(HEADER_BYTES);
        let writable = chain.writable_len().saturating_sub(1);
        let ok = |written| Op::Done {
            status: VIRTIO_BLK_S_OK,
            written,
        };
        let io_error = Op::Done {
            status: VIRTIO_BLK_S_IOERR,
            written: 0,
        };
        match header.kind {
            VIRTIO_BLK_T_IN if readable == 0 => match self.byte_range(header.sector, writable) {
                Ok(start) => Op::Read {
                    start,
                    len: writable,
                },
                Err(()) => io_error,
            },
            VIRTIO_BLK_T_OUT if writable == 0 => match self.byte_range(header.sector, readable) {
                Ok(start) => Op::Write {
                    start,
                    len: readable,
                },
                Err(()) => io_error,
            },
            VIRTIO_BLK_T_FLUSH if self.flush_negotiated => match self.backend.flush() {
                Ok(()) => ok(0),
                Err(()) => io_error,
            },
            VIRTIO_BLK_T_GET_ID => {
                let id = self.id.get(..writable as usize).unwrap_or(&self.id);
                // At most the 20-byte id, so the count fits.
                ok(u32::try_from(chain.write_at(mem, 0, id)).unwrap_or(0))
            }
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => io_error,
            _ => Op::Done {
                status: VIRTIO_BLK_S_UNSUPP,
                written: 0,
            },
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

    /// Moves data for the request in flight until it is done or the budget
    /// is spent (at least one chunk). Returns whether it is done; a failure
    /// turns it into an IOERR answer.
    fn advance(&mut self, mem: &mut impl GuestMemory, budget: &mut Budget) -> bool {
        let Some(req) = self.in_flight.as_mut() else {
            return true;
        };
        let (start, len, read) = match req.op {
            Op::Read { start, len } => (start, len, true),
            Op::Write { start, len } => (start, len, false),
            Op::Done { .. } => return true,
        };
        let mut buf = [0u8; CHUNK];
        while req.done < len {
            let n = (len - req.done).min(u32::try_from(CHUNK).unwrap_or(u32::MAX));
            let step = copy_chunk(
                &mut self.backend,
                &req.chain,
                mem,
                buf.get_mut(..n as usize).unwrap_or(&mut []),
                start.saturating_add(u64::from(req.done)),
                req.done,
                read,
            );
            if step.is_err() {
                req.op = Op::Done {
                    status: VIRTIO_BLK_S_IOERR,
                    written: 0,
                };
                return true;
            }
            req.done += n;
            budget.spend(u64::from(n));
            if req.done < len && budget.spent() {
                return false;
            }
        }
        let written = if read { len } else { 0 };
        req.op = Op::Done {
            status: VIRTIO_BLK_S_OK,
            written,
        };
        true
    }

    /// Answers the request in flight: its status byte, then the used ring
    /// (5.2.6).
    fn complete(
        &mut self,
        queue: &mut Queue,
        mem: &mut impl GuestMemory,
        now: u64,
    ) -> Result<(), QueueError> {
        let Some(req) = self.in_flight.take() else {
            return Ok(());
        };
        let Op::Done { status, written } = req.op else {
            return Ok(());
        };
        let status_at = req.chain.writable_len().saturating_sub(1);
        self.requests = self.requests.saturating_add(1);
        if status != VIRTIO_BLK_S_OK {
            self.failed = self.failed.saturating_add(1);
        }
        let took = now.saturating_sub(req.popped);
        self.max_request_ticks = self.max_request_ticks.max(took);
        if req.chain.write_at(mem, u64::from(status_at), &[status]) != 1 {
            return Err(QueueError::BufferOutsideMemory);
        }
        queue.push_used(req.chain.head, written.saturating_add(1), mem)
    }

    /// Pops the next chain of the current notification, if any.
    fn pop(
        &mut self,
        queue: &mut Queue,
        mem: &mut impl GuestMemory,
        budget: &mut Budget,
    ) -> Result<bool, QueueError> {
        if self.kicked == 0 {
            return Ok(false);
        }
        let Some(chain) = queue.pop(mem)? else {
            self.kicked = 0;
            return Ok(false);
        };
        self.kicked -= 1;
        if chain.writable_len() == 0 {
            return Err(QueueError::BadRequest);
        }
        budget.spend(budget::REQUEST_COST);
        let op = self.start(&chain, mem);
        self.in_flight = Some(InFlight {
            chain,
            op,
            done: 0,
            popped: budget.now(),
        });
        Ok(true)
    }
}

/// One chunk of a request: backend -> chain (`read`) or chain (after the
/// header) -> backend, `buf.len()` bytes at data offset `done`.
fn copy_chunk<B: BlockBackend>(
    backend: &mut B,
    chain: &Chain,
    mem: &mut impl GuestMemory,
    buf: &mut [u8],
    disk_at: u64,
    done: u32,
    read: bool,
) -> Result<(), ()> {
    if read {
        backend.read(disk_at, buf)?;
        if chain.write_at(mem, u64::from(done), buf) != buf.len() {
            return Err(());
        }
    } else {
        let at = u64::from(HEADER_BYTES) + u64::from(done);
        if chain.read_at(mem, at, buf) != buf.len() {
            return Err(());
        }
        backend.write(disk_at, buf)?;
    }
    Ok(())
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
        if self.backend.durable() {
            VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH
        } else {
            VIRTIO_BLK_F_SEG_MAX
        }
    }

    fn negotiated(&mut self, features: u64) {
        self.flush_negotiated = features & VIRTIO_BLK_F_FLUSH != 0;
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

    fn reset(&mut self) {
        self.stop();
        self.flush_negotiated = false;
    }

    /// A request is in flight or a notification is not used up.
    fn has_work(&self) -> bool {
        self.in_flight.is_some() || self.kicked > 0
    }

    fn queue_stopped(&mut self, _index: usize) {
        self.stop();
    }

    /// Only records the kick: [`Device::work`] serves it.
    fn notify(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        _mem: &mut impl GuestMemory,
    ) -> Result<(), QueueError> {
        self.kicked = queue.size();
        Ok(())
    }

    /// Serves requests until the budget is spent: finishes the one in
    /// flight, then pops the next while the notification allows. A queue
    /// error drops everything (the device then needs a reset).
    fn work(
        &mut self,
        _index: usize,
        queue: &mut Queue,
        mem: &mut impl GuestMemory,
        budget: &mut Budget,
    ) -> Result<bool, QueueError> {
        let result = self.serve(queue, mem, budget);
        if result.is_err() {
            self.stop();
        }
        result
    }
}

impl<B: BlockBackend> Block<B> {
    fn serve(
        &mut self,
        queue: &mut Queue,
        mem: &mut impl GuestMemory,
        budget: &mut Budget,
    ) -> Result<bool, QueueError> {
        loop {
            if self.in_flight.is_none() && !self.pop(queue, mem, budget)? {
                return Ok(self.has_work());
            }
            if !self.advance(mem, budget) {
                return Ok(true);
            }
            self.complete(queue, mem, budget.now())?;
            if budget.spent() {
                return Ok(self.has_work());
            }
        }
    }
}
