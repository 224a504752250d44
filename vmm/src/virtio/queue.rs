//! A split virtqueue (virtio 1.2, 2.7), device side.
//!
//! The driver places three structures in guest RAM and tells the transport
//! where they are: the descriptor table (2.7.5), the available ring (2.7.6)
//! and the used ring (2.7.8). The device pops descriptor chains the driver
//! made available, works on them, and pushes their heads to the used ring.
//!
//! Every field the driver controls is read once into a local copy and only
//! the copy is used. A chain is validated whole before the device touches
//! any of its buffers (2.7.5.2, 2.7.4.2): the head and every `next` index
//! below the queue size, no descriptor visited twice (so at most queue-size
//! descriptors), no INDIRECT descriptors (VIRTIO_RING_F_INDIRECT_DESC is
//! not offered, 2.7.5.3), device-readable descriptors before device-writable
//! ones, every buffer inside guest RAM, and the total length of each part
//! within a u32. Anything else is a [`QueueError`]: the device then needs a
//! reset (2.1.2). VIRTIO_F_EVENT_IDX is not offered, so the used ring's
//! `avail_event` and the available ring's `used_event` are never touched.

use crate::bits::usize_from;
use alloc::vec::Vec;

use crate::addr::GuestPhysAddr;
use crate::memory::{GuestMemory, check_range};

/// The largest queue any device here offers (QueueNumMax, 4.2.2).
pub const QUEUE_SIZE_MAX: u16 = 256;

/// Descriptor flags (2.7.5).
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver does not want used-buffer notifications
/// (2.7.7; only a hint without VIRTIO_F_EVENT_IDX).
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Bytes in one descriptor: addr (le64), len (le32), flags, next (le16).
const DESC_BYTES: u64 = 16;
/// Bytes in one used element: id (le32), len (le32).
const USED_ELEM_BYTES: u64 = 8;
/// The rings' `flags` and `idx` fields before their entries.
const RING_HEADER: u64 = 4;

/// Why a queue cannot be used: each is a driver error that needs a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// QueueNum is 0, above QueueNumMax or not a power of 2 (2.7).
    BadSize,
    /// A ring is misaligned (2.7, table "Virtqueue Part Alignment") or
    /// does not fit in guest RAM.
    BadRing,
    /// The available index moved by more than the queue size (2.7.6).
    AvailJump,
    /// A head or `next` index at or above the queue size (2.7.5.2).
    IndexOutOfRange,
    /// A descriptor was reached twice in one chain (2.7.5.2).
    Loop,
    /// A descriptor with VIRTQ_DESC_F_INDIRECT, not negotiated (2.7.5.3.1).
    Indirect,
    /// A device-readable descriptor after a device-writable one (2.7.4.2).
    Order,
    /// A buffer outside guest RAM, or whose end overflows.
    BufferOutsideMemory,
    /// The readable or writable part of a chain is longer than a u32.
    TooLong,
    /// A chain the device type cannot use: buffers in the wrong direction
    /// (5.3.6), no room for a request's header or status (5.2.6).
    BadRequest,
}

/// One buffer of a chain, as validated by [`Queue::pop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// The buffer's guest-physical address.
    pub gpa: GuestPhysAddr,
    /// The buffer's length in bytes.
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

/// A validated descriptor chain: readable buffers first, then writable ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The head's descriptor index, returned with [`Queue::push_used`].
    pub head: u16,
    /// At most the queue size.
    pub buffers: Vec<Buffer>,
}

impl Chain {
    /// The device-readable buffers.
    pub fn readable(&self) -> impl Iterator<Item = &Buffer> {
        self.buffers.iter().filter(|b| !b.writable)
    }

    /// The device-writable buffers.
    pub fn writable(&self) -> impl Iterator<Item = &Buffer> {
        self.buffers.iter().filter(|b| b.writable)
    }

    /// Total bytes of the readable part (fits in a u32: checked by pop).
    pub fn readable_len(&self) -> u32 {
        self.readable().map(|b| b.len).fold(0, u32::saturating_add)
    }

    /// Total bytes of the writable part (fits in a u32: checked by pop).
    pub fn writable_len(&self) -> u32 {
        self.writable().map(|b| b.len).fold(0, u32::saturating_add)
    }
}

/// Copies bytes across a list of buffers as if they were one: `skip` bytes
/// into them, at most `len` bytes, `f` copying each piece (the guest
/// address and the range of the host-side slice). Returns the bytes copied.
fn span_copy<'a>(
    buffers: impl Iterator<Item = &'a Buffer>,
    skip: u64,
    len: usize,
    mut f: impl FnMut(GuestPhysAddr, core::ops::Range<usize>) -> bool,
) -> usize {
    let mut skip = skip;
    let mut done = 0usize;
    for b in buffers {
        if done == len {
            break;
        }
        let blen = u64::from(b.len);
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let n = usize_from((blen - skip).min((len - done) as u64));
        // Cannot overflow: pop checked gpa + len against guest RAM.
        let Some(at) = b.gpa.checked_add(skip) else {
            break;
        };
        if !f(at, done..done + n) {
            break;
        }
        done += n;
        skip = 0;
    }
    done
}

impl Chain {
    /// Reads readable bytes from `offset` into `buf`; returns the count.
    pub fn read_at(&self, mem: &impl GuestMemory, offset: u64, buf: &mut [u8]) -> usize {
        let len = buf.len();
        span_copy(self.readable(), offset, len, |gpa, r| {
            buf.get_mut(r).is_some_and(|dst| mem.read(gpa, dst).is_ok())
        })
    }

    /// Writes `data` to the writable part at `offset`; returns the count.
    pub fn write_at(&self, mem: &mut impl GuestMemory, offset: u64, data: &[u8]) -> usize {
        span_copy(self.writable(), offset, data.len(), |gpa, r| {
            data.get(r).is_some_and(|src| mem.write(gpa, src).is_ok())
        })
    }
}

/// One descriptor, copied out of guest memory.
#[derive(Clone, Copy, Debug)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A split virtqueue's device-side state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    max_size: u16,
    /// QueueNum as the driver wrote it (validated when the queue is enabled).
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    /// The next available-ring entry the device will take.
    last_avail: u16,
    /// The used ring's idx as the device last wrote it.
    used_idx: u16,
    /// Used buffers pushed since [`Queue::take_used`] last looked.
    used_pending: bool,
}

impl Queue {
    /// A queue offering at most `max_size` entries (a power of 2).
    pub fn new(max_size: u16) -> Self {
        Queue {
            max_size: max_size.min(QUEUE_SIZE_MAX),
            size: 0,
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
            last_avail: 0,
            used_idx: 0,
            used_pending: false,
        }
    }

    /// Back to the state after a device reset (2.1.2, 4.2.2).
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// The largest size the driver may choose (QueueNumMax, 4.2.2).
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// The size the driver chose (QueueNum, 4.2.2): entries in each ring.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Whether the driver set QueueReady (4.2.2): only a ready queue is used.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// QueueNum. Only while the queue is not enabled; `false` if ignored.
    pub fn set_size(&mut self, size: u16) -> bool {
        !self.ready && {
            self.size = size;
            true
        }
    }

    /// Descriptor table, driver (available) and device (used) area
    /// addresses: `which` is 0, 1 or 2, `high` picks the upper half.
    /// Only while the queue is not enabled (4.2.2.3); `false` if ignored.
    pub fn set_address(&mut self, which: u8, high: bool, half: u32) -> bool {
        if self.ready {
            return false;
        }
        let field = match which {
            0 => &mut self.desc,
            1 => &mut self.avail,
            _ => &mut self.used,
        };
        *field = if high {
            (*field & 0xffff_ffff) | (u64::from(half) << 32)
        } else {
            (*field & !0xffff_ffff) | u64::from(half)
        };
        true
    }

    /// The address `which` (0 descriptors, 1 driver area, 2 device area).
    pub fn address(&self, which: u8) -> u64 {
        match which {
            0 => self.desc,
            1 => self.avail,
            _ => self.used,
        }
    }

    /// QueueReady = 1: checks the size and the rings' alignment and
    /// placement in guest RAM (2.7, "Virtqueue Part Alignment"), then
    /// starts from the first ring entry.
    pub fn enable(&mut self, mem: &impl GuestMemory) -> Result<(), QueueError> {
        let n = self.size;
        if n == 0 || n > self.max_size || !n.is_power_of_two() {
            return Err(QueueError::BadSize);
        }
        let n = u64::from(n);
        // 2 more bytes after each ring: used_event / avail_event (2.7.6, 2.7.8).
        let parts = [
            (self.desc, 16, DESC_BYTES * n),
            (self.avail, 2, RING_HEADER + 2 * n + 2),
            (self.used, 4, RING_HEADER + USED_ELEM_BYTES * n + 2),
        ];
        for (addr, align, len) in parts {
            if addr % align != 0 || check_range(mem.size(), GuestPhysAddr(addr), len).is_err() {
                return Err(QueueError::BadRing);
            }
        }
        self.ready = true;
        self.last_avail = 0;
        self.used_idx = 0;
        Ok(())
    }

    /// QueueReady = 0: the device stops using the queue (4.2.2).
    pub fn disable(&mut self) {
        self.ready = false;
    }

    /// Takes the next available chain, validated; `None` if there is none.
    pub fn pop(&mut self, mem: &impl GuestMemory) -> Result<Option<Chain>, QueueError> {
        if !self.ready {
            return Ok(None);
        }
        let avail_idx = self.read_u16(self.avail.checked_add(2), mem)?;
        let pending = avail_idx.wrapping_sub(self.last_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::AvailJump);
        }
        let slot = u64::from(self.last_avail % self.size.max(1));
        let entry = self.avail.checked_add(RING_HEADER + 2 * slot);
        let head = self.read_u16(entry, mem)?;
        let chain = self.walk(head, mem)?;
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    /// Follows a chain from `head`, validating every descriptor.
    fn walk(&self, head: u16, mem: &impl GuestMemory) -> Result<Chain, QueueError> {
        let mut seen = [0u64; QUEUE_SIZE_MAX as usize / 64];
        let mut buffers = Vec::new();
        let (mut readable, mut writable) = (0u64, 0u64);
        let mut index = head;
        loop {
            mark_seen(&mut seen, index, self.size)?;
            let d = self.descriptor(index, mem)?;
            let buffer = check_descriptor(&d, mem.size())?;
            let in_writable = buffers.last().is_some_and(|b: &Buffer| b.writable);
            if in_writable && !buffer.writable {
                return Err(QueueError::Order);
            }
            let total = if buffer.writable {
                &mut writable
            } else {
                &mut readable
            };
            *total += u64::from(buffer.len);
            if *total > u64::from(u32::MAX) {
                return Err(QueueError::TooLong);
            }
            buffers.push(buffer);
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(Chain { head, buffers });
            }
            index = d.next;
        }
    }

    /// Reads descriptor `index` (already checked below the queue size).
    fn descriptor(&self, index: u16, mem: &impl GuestMemory) -> Result<Descriptor, QueueError> {
        let at = self
            .desc
            .checked_add(DESC_BYTES * u64::from(index))
            .ok_or(QueueError::BadRing)?;
        let mut b = [0u8; usize_from(DESC_BYTES)];
        mem.read(GuestPhysAddr(at), &mut b)
            .map_err(|_| QueueError::BadRing)?;
        let [
            a0,
            a1,
            a2,
            a3,
            a4,
            a5,
            a6,
            a7,
            l0,
            l1,
            l2,
            l3,
            f0,
            f1,
            n0,
            n1,
        ] = b;
        Ok(Descriptor {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        })
    }

    /// Returns chain `head` to the driver with `written` bytes written into
    /// its writable part (2.7.8): the element first, then the index.
    pub fn push_used(
        &mut self,
        head: u16,
        written: u32,
        mem: &mut impl GuestMemory,
    ) -> Result<(), QueueError> {
        let slot = u64::from(self.used_idx % self.size.max(1));
        let mut elem = [0u8; usize_from(USED_ELEM_BYTES)];
        let (id, len) = elem.split_at_mut(4);
        id.copy_from_slice(&u32::from(head).to_le_bytes());
        len.copy_from_slice(&written.to_le_bytes());
        let at = self
            .used
            .checked_add(RING_HEADER + USED_ELEM_BYTES * slot)
            .ok_or(QueueError::BadRing)?;
        mem.write(GuestPhysAddr(at), &elem)
            .map_err(|_| QueueError::BadRing)?;
        let idx = self.used_idx.wrapping_add(1);
        let at = self.used.checked_add(2).ok_or(QueueError::BadRing)?;
        mem.write(GuestPhysAddr(at), &idx.to_le_bytes())
            .map_err(|_| QueueError::BadRing)?;
        self.used_idx = idx;
        self.used_pending = true;
        Ok(())
    }

    /// Whether buffers were used since the last call (and clears that).
    pub fn take_used(&mut self) -> bool {
        core::mem::take(&mut self.used_pending)
    }

    /// Whether the driver wants a used-buffer notification: the available
    /// ring's VIRTQ_AVAIL_F_NO_INTERRUPT hint (2.7.7) is honoured.
    pub fn wants_interrupt(&self, mem: &impl GuestMemory) -> bool {
        self.read_u16(Some(self.avail), mem)
            .map_or(true, |flags| flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
    }

    fn read_u16(&self, at: Option<u64>, mem: &impl GuestMemory) -> Result<u16, QueueError> {
        let mut b = [0u8; 2];
        let at = at.ok_or(QueueError::BadRing)?;
        mem.read(GuestPhysAddr(at), &mut b)
            .map_err(|_| QueueError::BadRing)?;
        Ok(u16::from_le_bytes(b))
    }
}

/// Marks descriptor `index` visited: an error if it is out of range or was
/// visited before (so a chain has at most `size` descriptors).
fn mark_seen(seen: &mut [u64], index: u16, size: u16) -> Result<(), QueueError> {
    if index >= size {
        return Err(QueueError::IndexOutOfRange);
    }
    let word = seen
        .get_mut(usize::from(index / 64))
        .ok_or(QueueError::IndexOutOfRange)?;
    let bit = 1u64 << (index % 64);
    if *word & bit != 0 {
        return Err(QueueError::Loop);
    }
    *word |= bit;
    Ok(())
}

/// Checks one descriptor's flags and buffer against guest RAM.
fn check_descriptor(d: &Descriptor, ram: u64) -> Result<Buffer, QueueError> {
    if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
        return Err(QueueError::Indirect);
    }
    let gpa = GuestPhysAddr(d.addr);
    check_range(ram, gpa, u64::from(d.len)).map_err(|_| QueueError::BufferOutsideMemory)?;
    Ok(Buffer {
        gpa,
        len: d.len,
        writable: d.flags & VIRTQ_DESC_F_WRITE != 0,
    })
}
