//! A test driver doing what Linux's virtio_mmio, virtio_ring, virtio_blk
//! and virtio_console do, against the devices over `VecMemory`; then the
//! same devices against hostile drivers.

use std::vec;
use std::vec::Vec;

use super::blk::{self, Block, BlockBackend};
use super::console::{self, Console};
use super::mmio::{INT_CONFIG_CHANGE, INT_USED_BUFFER, VIRTIO_F_VERSION_1, reg, status};
use super::*;
use crate::addr::GuestPhysAddr;
use crate::memory::{GuestMemory, VecMemory};

const RAM: usize = 1 << 20;
/// Where test data buffers start.
const DATA: u64 = 0x80000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A vector as a disk, counting flushes; `volatile` ones offer no FLUSH.
#[derive(Clone, Debug, Default)]
struct Disk {
    bytes: Vec<u8>,
    flushes: u32,
    volatile: bool,
}

impl BlockBackend for Disk {
    fn sectors(&self) -> u64 {
        self.bytes.len() as u64 / blk::SECTOR
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ()> {
        let o = offset as usize;
        buf.copy_from_slice(self.bytes.get(o..o + buf.len()).ok_or(())?);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ()> {
        let o = offset as usize;
        self.bytes
            .get_mut(o..o + data.len())
            .ok_or(())?
            .copy_from_slice(data);
        Ok(())
    }
    fn durable(&self) -> bool {
        !self.volatile
    }
    fn flush(&mut self) -> Result<(), ()> {
        self.flushes += 1;
        Ok(())
    }
}

/// The driver's view of one queue.
#[derive(Clone, Debug)]
struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    next_desc: u16,
    last_used: u16,
}

struct Rig<D: Device> {
    dev: VirtioMmio<D>,
    mem: VecMemory,
    queues: Vec<DriverQueue>,
}

fn disk(sectors: usize) -> Block<Disk> {
    let disk = Disk {
        bytes: vec![0; sectors * 512],
        ..Disk::default()
    };
    Block::new(disk, b"atoll-disk-0")
}

impl<D: Device> Rig<D> {
    fn read(&mut self, offset: u64) -> u32 {
        self.dev.read(offset, 4) as u32
    }

    /// A register write, then the device's recorded work, all of it (the
    /// hypervisor does one slice in the exit and the rest in later ones).
    fn write(&mut self, offset: u64, value: u32) -> Effect {
        let effect = self.dev.write(offset, 4, u64::from(value), &mut self.mem);
        let (done, more) = self.dev.work(&mut self.mem, &mut Budget::unlimited());
        assert!(!more, "an unlimited budget finishes the work");
        effect.or(done)
    }

    fn set_status(&mut self, bits: u32) -> Effect {
        let s = self.read(reg::STATUS);
        self.write(reg::STATUS, s | bits)
    }

    /// virtio_mmio's probe and the core's feature negotiation (3.1.1).
    fn new(device: D, queue_size: u16) -> Self {
        let mut rig = Rig {
            dev: VirtioMmio::new(device),
            mem: VecMemory::new(RAM),
            queues: Vec::new(),
        };
        rig.init(queue_size);
        rig
    }

    fn init(&mut self, queue_size: u16) {
        let rig = self;
        rig.queues.clear();
        assert_eq!(rig.read(reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rig.read(reg::VERSION), 2);
        assert_ne!(rig.read(reg::DEVICE_ID), 0);
        rig.write(reg::STATUS, 0);
        rig.set_status(status::ACKNOWLEDGE);
        rig.set_status(status::DRIVER);
        let offered = rig.device_features();
        assert_ne!(offered & VIRTIO_F_VERSION_1, 0);
        rig.write_driver_features(offered);
        rig.set_status(status::FEATURES_OK);
        assert_ne!(rig.read(reg::STATUS) & status::FEATURES_OK, 0);
        for q in 0..rig.dev.device().num_queues() {
            rig.setup_queue(q as u32, queue_size);
        }
        rig.set_status(status::DRIVER_OK);
    }

    fn device_features(&mut self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        let high = u64::from(self.read(reg::DEVICE_FEATURES));
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        (high << 32) | u64::from(self.read(reg::DEVICE_FEATURES))
    }

    fn write_driver_features(&mut self, features: u64) {
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
    }

    /// vm_setup_vq (version 2).
    fn setup_queue(&mut self, q: u32, size: u16) {
        self.write(reg::QUEUE_SEL, q);
        assert_eq!(self.read(reg::QUEUE_READY), 0);
        let max = self.read(reg::QUEUE_NUM_MAX);
        assert!(max >= u32::from(size));
        let base = 0x10000 * (u64::from(q) + 1);
        self.mem.zero(GuestPhysAddr(base), 0x3000).unwrap();
        let dq = DriverQueue {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            next_desc: 0,
            last_used: 0,
        };
        self.write(reg::QUEUE_NUM, u32::from(size));
        for (reg_low, addr) in [
            (reg::QUEUE_DESC_LOW, dq.desc),
            (reg::QUEUE_DRIVER_LOW, dq.avail),
            (reg::QUEUE_DEVICE_LOW, dq.used),
        ] {
            self.write(reg_low, addr as u32);
            self.write(reg_low + 4, (addr >> 32) as u32);
        }
        self.write(reg::QUEUE_READY, 1);
        assert_eq!(self.read(reg::QUEUE_READY), 1);
        self.queues.push(dq);
    }

    fn put_desc(&mut self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.queues[q].desc + 16 * u64::from(i);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..].copy_from_slice(&next.to_le_bytes());
        self.mem.write(GuestPhysAddr(at), &b).unwrap();
    }

    /// Makes `head` available and moves avail idx by `step`.
    fn publish(&mut self, q: usize, head: u16, step: u16) {
        let dq = &mut self.queues[q];
        let slot = u64::from(dq.avail_idx % dq.size);
        let (avail, at) = (dq.avail, dq.avail + 4 + 2 * slot);
        dq.avail_idx = dq.avail_idx.wrapping_add(step);
        let idx = dq.avail_idx;
        self.mem
            .write(GuestPhysAddr(at), &head.to_le_bytes())
            .unwrap();
        self.mem
            .write(GuestPhysAddr(avail + 2), &idx.to_le_bytes())
            .unwrap();
    }

    /// virtqueue_add_sgs: a chain of fresh descriptors, then made available.
    fn add(&mut self, q: usize, bufs: &[(u64, u32, bool)]) -> u16 {
        let size = self.queues[q].size;
        let first = self.queues[q].next_desc;
        for (k, &(addr, len, writable)) in bufs.iter().enumerate() {
            let i = (first + k as u16) % size;
            let last = k + 1 == bufs.len();
            let flags = if writable { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.put_desc(q, i, addr, len, flags, (i + 1) % size);
        }
        self.queues[q].next_desc = (first + bufs.len() as u16) % size;
        self.publish(q, first, 1);
        first
    }

    fn notify(&mut self, q: u32) -> Effect {
        self.write(reg::QUEUE_NOTIFY, q)
    }

    /// virtqueue_get_buf: the next used element, if any.
    fn get_used(&mut self, q: usize) -> Option<(u32, u32)> {
        let dq = &mut self.queues[q];
        let mut b = [0u8; 2];
        self.mem.read(GuestPhysAddr(dq.used + 2), &mut b).unwrap();
        if u16::from_le_bytes(b) == dq.last_used {
            return None;
        }
        let at = dq.used + 4 + 8 * u64::from(dq.last_used % dq.size);
        dq.last_used = dq.last_used.wrapping_add(1);
        let id = self.mem.read_u32(GuestPhysAddr(at)).unwrap();
        let len = self.mem.read_u32(GuestPhysAddr(at + 4)).unwrap();
        Some((id, len))
    }

    /// vm_interrupt: read and acknowledge.
    fn ack(&mut self) -> u32 {
        let s = self.read(reg::INTERRUPT_STATUS);
        self.write(reg::INTERRUPT_ACK, s);
        s
    }

    fn needs_reset(&mut self) -> bool {
        self.read(reg::STATUS) & status::DEVICE_NEEDS_RESET != 0
    }

    fn fill(&mut self, at: u64, data: &[u8]) {
        self.mem.write(GuestPhysAddr(at), data).unwrap();
    }

    fn bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.mem.read(GuestPhysAddr(at), &mut b).unwrap();
        b
    }
}

/// Block requests as virtio_blk builds them: header, data, status.
const HDR: u64 = 0x70000;
const STATUS: u64 = 0x7f000;

impl Rig<Block<Disk>> {
    fn header(&mut self, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.fill(HDR, &h);
        self.fill(STATUS, &[0xff]);
    }

    /// Sends one request; returns its status and the used length.
    fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32)], write: bool) -> (u8, u32) {
        self.header(kind, sector);
        let mut bufs = vec![(HDR, 16, false)];
        bufs.extend(data.iter().map(|&(a, l)| (a, l, !write)));
        bufs.push((STATUS, 1, true));
        let head = self.add(0, &bufs);
        assert_eq!(self.notify(0), Effect::Interrupt);
        assert_eq!(self.ack(), INT_USED_BUFFER);
        let (id, len) = self.get_used(0).expect("request completed");
        assert_eq!(id, u32::from(head));
        (self.bytes(STATUS, 1)[0], len)
    }
}

#[test]
fn block_probe_reads_identity_features_and_capacity() {
    let mut rig = Rig::new(disk(100), 8);
    assert_eq!(rig.read(reg::DEVICE_ID), 2);
    assert_eq!(rig.read(reg::VENDOR_ID), mmio::VENDOR_ID);
    let f = rig.device_features();
    assert_eq!(
        f,
        VIRTIO_F_VERSION_1 | blk::VIRTIO_BLK_F_FLUSH | blk::VIRTIO_BLK_F_SEG_MAX
    );
    assert_eq!(rig.dev.negotiated_features(), f);
    // virtio_cread64 as vm_get does it: two 32-bit reads.
    let low = rig.dev.read(reg::CONFIG, 4);
    let high = rig.dev.read(reg::CONFIG + 4, 4);
    assert_eq!(low | high << 32, 100);
    assert_eq!(rig.dev.read(reg::CONFIG, 8), 100);
    assert_eq!(rig.dev.read(reg::CONFIG + 12, 4), u64::from(blk::SEG_MAX));
    assert_eq!(rig.dev.read(reg::CONFIG + 12, 1), u64::from(blk::SEG_MAX));
    assert_eq!(rig.read(reg::CONFIG_GENERATION), 0);
    // No shared memory regions.
    assert_eq!(rig.read(reg::SHM_LEN_LOW), u32::MAX);
    assert_eq!(rig.dev.bad_accesses, 0);
}

#[test]
fn block_writes_sectors_reads_them_back_and_flushes() {
    let mut rig = Rig::new(disk(64), 16);
    // Three segments, one longer than the copy chunk.
    let pattern: Vec<u8> = (0..(4096 + 1024 + 512))
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    rig.fill(DATA, &pattern[..4096 + 1024]);
    rig.fill(DATA + 0x3000, &pattern[4096 + 1024..]);
    let segs = [(DATA, 4096), (DATA + 4096, 1024), (DATA + 0x3000, 512)];
    assert_eq!(rig.request(blk::VIRTIO_BLK_T_OUT, 3, &segs, true), (0, 1));
    assert_eq!(
        &rig.dev.device().backend().bytes[3 * 512..][..pattern.len()],
        &pattern[..]
    );

    let back = [(DATA + 0x10000, 512), (DATA + 0x20000, 5120)];
    let (s, len) = rig.request(blk::VIRTIO_BLK_T_IN, 3, &back, false);
    assert_eq!((s, len), (0, 5632 + 1));
    let mut got = rig.bytes(DATA + 0x10000, 512);
    got.extend(rig.bytes(DATA + 0x20000, 5120));
    assert_eq!(got, pattern);

    assert_eq!(rig.request(blk::VIRTIO_BLK_T_FLUSH, 0, &[], true), (0, 1));
    assert_eq!(rig.dev.device().backend().flushes, 1);
    assert_eq!(rig.dev.device().requests, 3);
}

#[test]
fn block_answers_get_id_and_rejects_what_it_cannot_do() {
    let mut rig = Rig::new(disk(8), 8);
    let (s, len) = rig.request(blk::VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 20)], false);
    assert_eq!((s, len), (blk::VIRTIO_BLK_S_OK, 21));
    assert_eq!(&rig.bytes(DATA, 20)[..13], b"atoll-disk-0\0");

    let io = blk::VIRTIO_BLK_S_IOERR;
    let one = [(DATA, 512)];
    // Out of range, ending past the end, overflowing u64 sector * 512.
    assert_eq!(rig.request(blk::VIRTIO_BLK_T_IN, 8, &one, false).0, io);
    assert_eq!(
        rig.request(blk::VIRTIO_BLK_T_OUT, 7, &[(DATA, 1024)], true)
            .0,
        io
    );
    assert_eq!(
        rig.request(blk::VIRTIO_BLK_T_IN, u64::MAX / 256, &one, false)
            .0,
        io
    );
    assert_eq!(
        rig.request(blk::VIRTIO_BLK_T_IN, u64::MAX, &one, false).0,
        io
    );
    // Not whole sectors.
    assert_eq!(
        rig.request(blk::VIRTIO_BLK_T_IN, 0, &[(DATA, 100)], false)
            .0,
        io
    );
    // Data in the wrong direction: a read whose data the device would read.
    assert_eq!(rig.request(blk::VIRTIO_BLK_T_IN, 0, &one, true).0, io);
    assert_eq!(rig.request(blk::VIRTIO_BLK_T_OUT, 0, &one, false).0, io);
    // Discard, write-zeroes, SCSI: not offered.
    for kind in [2, 11, 13, 0x8000_0000] {
        assert_eq!(rig.request(kind, 0, &[], true).0, blk::VIRTIO_BLK_S_UNSUPP);
    }
    assert!(!rig.needs_reset());
    assert_eq!(rig.dev.device().failed, 11);
}

#[test]
fn block_header_in_a_writable_buffer_fails_the_request() {
    let mut rig = Rig::new(disk(8), 8);
    rig.header(blk::VIRTIO_BLK_T_IN, 0);
    rig.add(0, &[(HDR, 16, true), (STATUS, 1, true)]);
    rig.notify(0);
    assert_eq!(rig.get_used(0), Some((0, 1)));
    assert_eq!(rig.bytes(STATUS, 1)[0], blk::VIRTIO_BLK_S_IOERR);
    // A short header too.
    rig.add(0, &[(HDR, 8, false), (STATUS, 1, true)]);
    rig.notify(0);
    assert_eq!(rig.bytes(STATUS, 1)[0], blk::VIRTIO_BLK_S_IOERR);
    assert!(!rig.needs_reset());
}

/// Runs `bad` against a fresh block device; expects DEVICE_NEEDS_RESET with
/// a configuration change interrupt, and a working device after a reset.
fn expect_needs_reset(size: u16, bad: impl FnOnce(&mut Rig<Block<Disk>>), error: QueueError) {
    let mut rig = Rig::new(disk(8), size);
    bad(&mut rig);
    assert_eq!(rig.notify(0), Effect::Interrupt);
    assert!(rig.needs_reset());
    assert_eq!(rig.dev.error, Some(error));
    assert_eq!(rig.ack() & INT_CONFIG_CHANGE, INT_CONFIG_CHANGE);
    assert_eq!(rig.get_used(0), None);
    // Further notifications are ignored until the driver resets.
    assert_eq!(rig.notify(0), Effect::None);
    rig.init(size);
    assert!(!rig.needs_reset());
    assert_eq!(rig.dev.error, None);
    assert_eq!(rig.request(blk::VIRTIO_BLK_T_FLUSH, 0, &[], true).0, 0);
}

#[test]
fn descriptor_loops_need_a_reset() {
    expect_needs_reset(
        8,
        |r| {
            r.put_desc(0, 0, HDR, 16, F_NEXT, 1);
            r.put_desc(0, 1, STATUS, 1, F_NEXT | F_WRITE, 0);
            r.publish(0, 0, 1);
        },
        QueueError::Loop,
    );
    expect_needs_reset(
        8,
        |r| {
            r.put_desc(0, 3, HDR, 16, F_NEXT, 3);
            r.publish(0, 3, 1);
        },
        QueueError::Loop,
    );
}

#[test]
fn chains_longer_than_the_queue_need_a_reset() {
    // All four descriptors used, the last pointing back: five would be needed.
    expect_needs_reset(
        4,
        |r| {
            for i in 0..4 {
                r.put_desc(0, i, HDR, 16, F_NEXT, (i + 1) % 4);
            }
            r.publish(0, 0, 1);
        },
        QueueError::Loop,
    );
    expect_needs_reset(
        4,
        |r| {
            r.put_desc(0, 0, HDR, 16, F_NEXT, 4);
            r.publish(0, 0, 1);
        },
        QueueError::IndexOutOfRange,
    );
    expect_needs_reset(4, |r| r.publish(0, 9, 1), QueueError::IndexOutOfRange);
}

#[test]
fn buffers_outside_ram_need_a_reset() {
    for (addr, len) in [
        (RAM as u64, 1),
        (RAM as u64 - 8, 16),
        (u64::MAX - 3, 16),
        (u64::MAX, 1),
        (0, u32::MAX),
    ] {
        expect_needs_reset(
            8,
            |r| {
                r.put_desc(0, 0, addr, len, 0, 0);
                r.publish(0, 0, 1);
            },
            QueueError::BufferOutsideMemory,
        );
    }
}

#[test]
fn avail_index_jumps_indirect_and_misordered_descriptors_need_a_reset() {
    expect_needs_reset(8, |r| r.publish(0, 0, 9), QueueError::AvailJump);
    expect_needs_reset(8, |r| r.publish(0, 0, 0x8000), QueueError::AvailJump);
    expect_needs_reset(
        8,
        |r| {
            r.put_desc(0, 0, HDR, 16, F_INDIRECT, 0);
            r.publish(0, 0, 1);
        },
        QueueError::Indirect,
    );
    // Device-writable before device-readable (2.7.4.2).
    expect_needs_reset(
        8,
        |r| {
            r.header(blk::VIRTIO_BLK_T_FLUSH, 0);
            r.add(0, &[(STATUS, 1, true), (HDR, 16, false)]);
        },
        QueueError::Order,
    );
    // No writable byte for the status.
    expect_needs_reset(
        8,
        |r| {
            r.header(blk::VIRTIO_BLK_T_FLUSH, 0);
            r.add(0, &[(HDR, 16, false), (STATUS, 1, false)]);
        },
        QueueError::BadRequest,
    );
}

#[test]
fn avail_index_wraps_around_u16() {
    let mut rig = Rig::new(disk(8), 4);
    for _ in 0..70_000u32 / 1000 {
        for _ in 0..1000 {
            rig.header(blk::VIRTIO_BLK_T_FLUSH, 0);
            rig.add(0, &[(HDR, 16, false), (STATUS, 1, true)]);
            rig.notify(0);
            rig.get_used(0).unwrap();
        }
    }
    assert_eq!(rig.dev.device().requests, 70_000);
    assert!(!rig.needs_reset());
}

#[test]
fn notify_with_a_bad_queue_index_is_ignored_and_counted() {
    let mut rig = Rig::new(disk(8), 8);
    rig.header(blk::VIRTIO_BLK_T_FLUSH, 0);
    rig.add(0, &[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(rig.notify(1), Effect::None);
    assert_eq!(rig.notify(u32::MAX), Effect::None);
    assert_eq!(rig.dev.bad_accesses, 2);
    assert_eq!(rig.get_used(0), None);
    assert_eq!(rig.notify(0), Effect::Interrupt);
}

#[test]
fn bad_queue_sizes_need_a_reset() {
    for size in [0u32, 3, 12, 512] {
        let mut rig = Rig::new(disk(8), 8);
        rig.write(reg::STATUS, 0);
        rig.write(reg::QUEUE_SEL, 0);
        rig.write(reg::QUEUE_NUM, size);
        assert_eq!(rig.write(reg::QUEUE_READY, 1), Effect::None);
        assert_eq!(rig.read(reg::QUEUE_READY), 0);
        assert!(rig.needs_reset());
        assert_eq!(rig.dev.error, Some(QueueError::BadSize));
    }
    let mut rig = Rig::new(disk(8), 8);
    rig.write(reg::STATUS, 0);
    rig.write(reg::QUEUE_NUM, 0x1_0000);
    assert_eq!(rig.dev.bad_accesses, 1);
    // Rings that do not fit in RAM, or are misaligned.
    for (reg_low, addr) in [
        (reg::QUEUE_DESC_LOW, RAM as u32 - 16),
        (reg::QUEUE_DESC_LOW, 0x1008),
        (reg::QUEUE_DEVICE_LOW, 0x1002),
    ] {
        rig.write(reg::STATUS, 0);
        rig.write(reg::QUEUE_NUM, 8);
        rig.write(reg_low, addr);
        rig.write(reg::QUEUE_READY, 1);
        assert_eq!(rig.dev.error, Some(QueueError::BadRing));
    }
}

#[test]
fn queue_registers_are_frozen_once_ready() {
    let mut rig = Rig::new(disk(8), 8);
    let before = rig.dev.bad_accesses;
    rig.write(reg::QUEUE_DESC_LOW, 0x40000);
    rig.write(reg::QUEUE_DRIVER_HIGH, 1);
    rig.write(reg::QUEUE_NUM, 4);
    assert_eq!(rig.dev.bad_accesses, before + 3);
    assert_eq!(rig.read(reg::QUEUE_DESC_LOW), 0x10000);
    assert_eq!(rig.read(reg::QUEUE_NUM), 8);
    assert_eq!(rig.request(blk::VIRTIO_BLK_T_FLUSH, 0, &[], true).0, 0);
    // Disabling the queue is allowed, and then so is changing it.
    rig.write(reg::QUEUE_READY, 0);
    assert_eq!(rig.read(reg::QUEUE_READY), 0);
    assert_eq!(rig.write(reg::QUEUE_DESC_LOW, 0x40000), Effect::None);
    // ... but not while DRIVER_OK is set.
    assert_eq!(rig.read(reg::QUEUE_DESC_LOW), 0x10000);
}

#[test]
fn wrong_register_sizes_and_offsets_read_zero_and_are_ignored() {
    let mut rig = Rig::new(disk(8), 8);
    let mem = &mut rig.mem;
    assert_eq!(rig.dev.read(reg::MAGIC_VALUE, 2), 0);
    assert_eq!(rig.dev.read(reg::MAGIC_VALUE + 1, 4), 0);
    assert_eq!(rig.dev.read(0x0c4, 4), 0);
    assert_eq!(rig.dev.read(reg::QUEUE_DESC_LOW + 8, 4), 0);
    assert_eq!(rig.dev.read(reg::CONFIG + 60, 8), 0);
    assert_eq!(rig.dev.read(reg::CONFIG, 3), 0);
    assert_eq!(rig.dev.read(u64::MAX, 8), 0);
    assert_eq!(rig.dev.write(reg::STATUS, 1, 0, mem), Effect::None);
    assert_eq!(rig.dev.write(reg::STATUS + 2, 4, 0, mem), Effect::None);
    assert_eq!(rig.dev.write(reg::CONFIG, 4, 0, mem), Effect::None);
    assert_eq!(rig.dev.write(reg::MAGIC_VALUE, 4, 0, mem), Effect::None);
    assert_eq!(rig.dev.bad_accesses, 11);
    assert_ne!(rig.dev.status() & status::DRIVER_OK, 0);
}

#[test]
fn features_ok_needs_version_1_and_only_offered_features() {
    for features in [
        blk::VIRTIO_BLK_F_FLUSH,
        VIRTIO_F_VERSION_1 | 1 << 28,
        VIRTIO_F_VERSION_1 | 1 << 40,
    ] {
        let mut rig = Rig::new(disk(8), 8);
        rig.write(reg::STATUS, 0);
        rig.set_status(status::ACKNOWLEDGE | status::DRIVER);
        rig.write_driver_features(features);
        rig.set_status(status::FEATURES_OK);
        assert_eq!(rig.read(reg::STATUS) & status::FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK does not stick either.
        rig.set_status(status::DRIVER_OK);
        assert_eq!(rig.read(reg::STATUS) & status::DRIVER_OK, 0);
    }
    // Features are frozen after FEATURES_OK; status bits cannot be cleared.
    let mut rig = Rig::new(disk(8), 8);
    rig.write_driver_features(0);
    assert_eq!(
        rig.dev.negotiated_features() & VIRTIO_F_VERSION_1,
        VIRTIO_F_VERSION_1
    );
    rig.write(reg::STATUS, status::ACKNOWLEDGE);
    assert_ne!(rig.read(reg::STATUS) & status::DRIVER_OK, 0);
}

#[test]
fn requests_before_driver_ok_wait_for_it() {
    let mut rig = Rig::new(disk(8), 8);
    rig.write(reg::STATUS, 0);
    rig.queues.clear();
    rig.set_status(status::ACKNOWLEDGE | status::DRIVER);
    rig.write_driver_features(VIRTIO_F_VERSION_1);
    rig.set_status(status::FEATURES_OK);
    rig.setup_queue(0, 8);
    rig.header(blk::VIRTIO_BLK_T_FLUSH, 0);
    rig.add(0, &[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(rig.notify(0), Effect::None);
    assert_eq!(rig.get_used(0), None);
    assert_eq!(rig.set_status(status::DRIVER_OK), Effect::Interrupt);
    assert_eq!(rig.get_used(0), Some((0, 1)));
}

#[test]
fn no_interrupt_hint_suppresses_the_interrupt() {
    let mut rig = Rig::new(disk(8), 8);
    let avail = rig.queues[0].avail;
    rig.fill(avail, &1u16.to_le_bytes());
    rig.header(blk::VIRTIO_BLK_T_FLUSH, 0);
    rig.add(0, &[(HDR, 16, false), (STATUS, 1, true)]);
    assert_eq!(rig.notify(0), Effect::None);
    assert_eq!(rig.get_used(0), Some((0, 1)));
    assert_eq!(rig.read(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn console_collects_output() {
    let mut rig = Rig::new(Console::default(), 8);
    assert_eq!(rig.read(reg::DEVICE_ID), 3);
    assert_eq!(rig.device_features(), VIRTIO_F_VERSION_1);
    rig.fill(DATA, b"hello, ");
    rig.fill(DATA + 0x100, b"world\n");
    let q = console::TRANSMITQ;
    rig.add(q, &[(DATA, 7, false), (DATA + 0x100, 6, false)]);
    assert_eq!(rig.notify(q as u32), Effect::Interrupt);
    assert_eq!(rig.get_used(q), Some((0, 0)));
    let mut out = [0u8; 64];
    let n = rig.dev.device_mut().take_output(&mut out[..5]);
    assert_eq!(&out[..n], b"hello");
    let n = rig.dev.device_mut().take_output(&mut out);
    assert_eq!(&out[..n], b", world\n");
    assert_eq!(rig.dev.device().output_len(), 0);
}

#[test]
fn console_output_is_bounded_but_always_consumed() {
    let mut rig = Rig::new(Console::default(), 8);
    let q = console::TRANSMITQ;
    for _ in 0..3 {
        rig.add(q, &[(DATA, 2000, false)]);
        rig.notify(q as u32);
        assert!(rig.get_used(q).is_some());
    }
    assert_eq!(rig.dev.device().output_len(), console::OUTPUT_BYTES);
    assert_eq!(rig.dev.device().dropped_output, 6000 - 4096);
    // A device-writable transmit buffer is a driver error.
    rig.add(q, &[(DATA, 1, true)]);
    rig.notify(q as u32);
    assert!(rig.needs_reset());
}

#[test]
fn console_input_waits_for_receive_buffers() {
    let mut rig = Rig::new(Console::default(), 8);
    let q = console::RECEIVEQ;
    let mem = &mut rig.mem;
    assert_eq!(rig.dev.push_input(b"early", mem), Effect::None);
    rig.add(q, &[(DATA, 3, true)]);
    rig.add(q, &[(DATA + 0x100, 64, true)]);
    assert_eq!(rig.notify(q as u32), Effect::Interrupt);
    assert_eq!(rig.get_used(q), Some((0, 3)));
    assert_eq!(rig.get_used(q), Some((1, 2)));
    assert_eq!(rig.bytes(DATA, 3), b"ear");
    assert_eq!(rig.bytes(DATA + 0x100, 2), b"ly");
    // With a buffer posted, input goes straight in.
    rig.add(q, &[(DATA + 0x200, 64, true)]);
    assert_eq!(rig.notify(q as u32), Effect::None);
    assert_eq!(
        rig.dev.push_input(b"typed", &mut rig.mem),
        Effect::Interrupt
    );
    assert_eq!(rig.get_used(q), Some((2, 5)));
    assert_eq!(rig.bytes(DATA + 0x200, 5), b"typed");
}

#[test]
fn console_input_beyond_its_buffer_is_dropped() {
    let mut rig = Rig::new(Console::default(), 8);
    let q = console::RECEIVEQ;
    rig.add(q, &[(DATA, 100, true)]);
    rig.notify(q as u32);
    let big = vec![b'x'; 1000];
    assert_eq!(rig.dev.push_input(&big, &mut rig.mem), Effect::Interrupt);
    assert_eq!(rig.get_used(q), Some((0, 100)));
    assert_eq!(
        rig.dev.device().dropped_input,
        1000 - 100 - console::INPUT_BYTES as u64
    );
    // A device-readable receive buffer is a driver error.
    rig.add(q, &[(DATA, 8, false)]);
    rig.notify(q as u32);
    assert!(rig.needs_reset());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// A register access: offset, size, value, write?
    fn access() -> impl Strategy<Value = (u64, u8, u64, bool)> {
        (0u64..0x140, 0u8..9, any::<u64>(), any::<bool>()).prop_map(|(o, s, v, w)| {
            // Mostly aligned 32-bit accesses, with small values where they
            // select something.
            let (o, s) = if s < 6 { (o & !3, 4) } else { (o, s) };
            let v = if v % 3 == 0 { v % 0x100 } else { v };
            (o, s, v, w)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn random_register_traffic_never_panics(
            ops in proptest::collection::vec(access(), 0..200),
            seed in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let mut dev = VirtioMmio::new(disk(16));
            let mut mem = VecMemory::new(0x4000);
            mem.bytes[..seed.len()].copy_from_slice(&seed);
            for (o, s, v, w) in ops {
                if w {
                    dev.write(o, s, v, &mut mem);
                    dev.work(&mut mem, &mut Budget::new(8192, 2, clock));
                } else {
                    dev.read(o, s);
                }
            }
        }

        #[test]
        fn random_ring_contents_never_panic(
            ring in proptest::collection::vec(any::<u8>(), 0x3000),
            rounds in 1usize..6,
        ) {
            let mut rig = Rig::new(disk(16), 8);
            let base = rig.queues[0].desc;
            rig.fill(base, &ring);
            let mut con = Rig::new(Console::default(), 8);
            con.fill(0x10000, &ring);
            con.fill(0x20000, &ring);
            for _ in 0..rounds {
                rig.notify(0);
                con.notify(0);
                con.notify(1);
                con.dev.push_input(b"input", &mut con.mem);
            }
        }
    }
}

/// RAM that claims to be 1 TiB (only its first megabyte is backed), so
/// descriptors may describe buffers of 4 GiB each.
struct HugeMemory(VecMemory);

impl GuestMemory for HugeMemory {
    fn size(&self) -> u64 {
        1 << 40
    }
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), crate::MemoryError> {
        self.0.read(gpa, buf)
    }
    fn write(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), crate::MemoryError> {
        self.0.write(gpa, data)
    }
}

#[test]
fn chain_lengths_beyond_a_u32_are_refused() {
    let mut mem = HugeMemory(VecMemory::new(RAM));
    let mut q = Queue::new(8);
    q.set_size(8);
    q.set_address(0, false, 0x1000);
    q.set_address(1, false, 0x2000);
    q.set_address(2, false, 0x3000);
    q.enable(&mem).unwrap();
    for i in 0..2u64 {
        let mut d = [0u8; 16];
        d[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        d[12..14].copy_from_slice(&(if i == 0 { F_NEXT } else { 0 }).to_le_bytes());
        d[14..].copy_from_slice(&1u16.to_le_bytes());
        mem.write(GuestPhysAddr(0x1000 + 16 * i), &d).unwrap();
    }
    mem.write(GuestPhysAddr(0x2002), &1u16.to_le_bytes())
        .unwrap();
    assert_eq!(q.pop(&mem), Err(QueueError::TooLong));
    // One 4 GiB buffer is fine.
    mem.write(GuestPhysAddr(0x100c), &0u16.to_le_bytes())
        .unwrap();
    let chain = q.pop(&mem).unwrap().unwrap();
    assert_eq!(chain.readable_len(), u32::MAX);
    q.push_used(chain.head, 0, &mut mem).unwrap();
    assert!(q.take_used());
    assert!(!q.take_used());
}

std::thread_local! {
    static CLOCK: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// A test clock: one tick per look.
fn clock() -> u64 {
    CLOCK.with(|c| {
        let now = c.get();
        c.set(now + 1);
        now
    })
}

/// A budget of `bytes` and no deadline to speak of.
fn bytes_budget(bytes: u64) -> Budget {
    Budget::new(bytes, u64::MAX / 2, clock)
}

/// Disk bytes `i`: a pattern no two sectors share.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i / 512 * 31 + i * 7) as u8).collect()
}

/// A rig over a disk of 2048 sectors (1 MiB) holding `pattern`, whose
/// driver posted `n` reads of the whole disk (one 1 MiB buffer each, all
/// at `DATA`... `DATA + n MiB`), without the device having worked yet.
fn big_reads(n: u64) -> Rig<Block<Disk>> {
    let mut block = disk(2048);
    block.backend_mut().bytes = pattern(1 << 20);
    let mut rig = Rig::new(block, 16);
    rig.mem = VecMemory::new((n as usize + 1) << 20);
    rig.init(16);
    rig.header(blk::VIRTIO_BLK_T_IN, 0);
    for k in 0..n {
        rig.add(
            0,
            &[
                (HDR, 16, false),
                (DATA + (k << 20), 1 << 20, true),
                (STATUS, 1, true),
            ],
        );
    }
    rig.dev.write(reg::QUEUE_NOTIFY, 4, 0, &mut rig.mem);
    rig
}

#[test]
fn a_notification_only_records_the_work() {
    let mut rig = big_reads(1);
    assert!(rig.dev.has_work());
    assert_eq!(rig.get_used(0), None, "nothing served in the notification");
    assert_eq!(rig.dev.device().requests, 0);
}

#[test]
fn a_huge_request_served_in_slices_gives_the_bytes_of_one_go() {
    let n = 3;
    let mut sliced = big_reads(n);
    let mut whole = big_reads(n);
    let (effect, more) = whole.dev.work(&mut whole.mem, &mut Budget::unlimited());
    assert_eq!((effect, more), (Effect::Interrupt, false));
    let (mut slices, mut interrupts) = (0, 0);
    loop {
        slices += 1;
        let (effect, more) = sliced
            .dev
            .work(&mut sliced.mem, &mut bytes_budget(64 * 1024));
        interrupts += u32::from(effect == Effect::Interrupt);
        if !more {
            break;
        }
        assert!(slices < 1000);
    }
    // 3 MiB at 64 KiB a slice, then one to find the ring empty; each
    // completion interrupts.
    assert_eq!((slices, interrupts), (3 * 16 + 1, 3));
    assert_eq!(sliced.bytes(DATA, 3 << 20), whole.bytes(DATA, 3 << 20));
    for k in 0..n {
        assert_eq!(sliced.bytes(DATA + (k << 20), 1 << 20), pattern(1 << 20));
        assert_eq!(sliced.get_used(0), Some((3 * k as u32, (1 << 20) + 1)));
    }
    assert_eq!(sliced.bytes(STATUS, 1)[0], blk::VIRTIO_BLK_S_OK);
    assert_eq!(sliced.dev.device().requests, 3);
    assert!(sliced.dev.device().max_request_ticks > 0);
}

#[test]
fn a_slice_keeps_to_its_byte_and_time_budgets() {
    let mut rig = big_reads(1);
    // Bytes: a slice stops once its bytes are spent (whole chunks; the
    // request's own cost counts first).
    let mut budget = bytes_budget(10_000);
    assert!(rig.dev.work(&mut rig.mem, &mut budget).1);
    let moved = |rig: &Rig<Block<Disk>>| {
        let got = rig.bytes(DATA, 1 << 20);
        got.iter()
            .zip(pattern(1 << 20))
            .take_while(|(a, b)| **a == *b)
            .count()
    };
    let first = moved(&rig);
    assert_eq!(first, 3 * blk::CHUNK);
    assert_eq!(budget.bytes(), 0);
    // Time: a slice whose deadline has passed at its first look gets one
    // chunk (work always progresses) and then stops.
    let mut budget = Budget::new(u64::MAX, 1, clock);
    assert!(rig.dev.work(&mut rig.mem, &mut budget).1);
    assert_eq!(moved(&rig), first + blk::CHUNK);
    // Many tiny requests are sliced too: each costs REQUEST_COST.
    let mut rig = Rig::new(disk(8), 64);
    for _ in 0..32 {
        rig.header(blk::VIRTIO_BLK_T_GET_ID, 0);
        rig.add(0, &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    }
    rig.dev.write(reg::QUEUE_NOTIFY, 4, 0, &mut rig.mem);
    let mut budget = bytes_budget(4 * budget::REQUEST_COST);
    assert!(rig.dev.work(&mut rig.mem, &mut budget).1);
    assert_eq!(rig.dev.device().requests, 4);
}

#[test]
fn a_reset_or_a_disabled_queue_mid_request_drops_it() {
    let mut rig = big_reads(2);
    assert!(rig.dev.work(&mut rig.mem, &mut bytes_budget(8192)).1);
    rig.dev.write(reg::STATUS, 4, 0, &mut rig.mem);
    assert!(!rig.dev.has_work(), "the reset dropped the request");
    let (effect, more) = rig.dev.work(&mut rig.mem, &mut Budget::unlimited());
    assert_eq!((effect, more), (Effect::None, false));
    assert_eq!(rig.get_used(0), None);
    assert_eq!(rig.dev.device().requests, 0);
    // The device works again after the driver sets it up anew.
    rig.init(16);
    let (s, len) = rig.request(blk::VIRTIO_BLK_T_IN, 0, &[(DATA, 512)], false);
    assert_eq!((s, len), (blk::VIRTIO_BLK_S_OK, 513));
    assert_eq!(rig.bytes(DATA, 512), pattern(512));

    let mut rig = big_reads(2);
    assert!(rig.dev.work(&mut rig.mem, &mut bytes_budget(8192)).1);
    rig.dev.write(reg::QUEUE_SEL, 4, 0, &mut rig.mem);
    rig.dev.write(reg::QUEUE_READY, 4, 0, &mut rig.mem);
    assert!(
        !rig.dev.has_work(),
        "disabling the queue dropped the request"
    );
    assert_eq!(rig.get_used(0), None);
}

#[test]
fn rewriting_descriptors_or_data_mid_request_stays_inside_ram() {
    let mut rig = big_reads(1);
    let ram = rig.mem.size();
    assert!(rig.dev.work(&mut rig.mem, &mut bytes_budget(8192)).1);
    // The driver points every descriptor outside RAM, past the end, at a
    // loop, and rewrites the header: the request in flight was copied at
    // pop and goes on as it was.
    for i in 0..16 {
        rig.put_desc(0, i, ram - 16, 0xffff_0000, F_NEXT | F_INDIRECT, i);
    }
    rig.header(blk::VIRTIO_BLK_T_OUT, 1000);
    rig.fill(DATA + 0x8000, &[0xee; 0x1000]);
    let (_, more) = rig.dev.work(&mut rig.mem, &mut Budget::unlimited());
    assert!(!more);
    assert!(!rig.needs_reset());
    assert_eq!(rig.get_used(0), Some((0, (1 << 20) + 1)));
    // Data the driver overwrote before the device reached it is
    // overwritten again by the device; nothing beyond the buffer moved.
    assert_eq!(
        rig.bytes(DATA + 0x8000, 0x1000),
        pattern(1 << 20)[0x8000..0x9000]
    );
    assert_eq!(rig.dev.device().backend().bytes, pattern(1 << 20));
    // The next request sees the rewritten descriptors: a reset.
    rig.publish(0, 0, 1);
    rig.notify(0);
    assert!(rig.needs_reset());
    assert_eq!(rig.dev.error, Some(QueueError::Indirect));
}

#[test]
fn a_volatile_disk_offers_no_flush_and_refuses_one() {
    let volatile = Disk {
        bytes: vec![0; 8 * 512],
        volatile: true,
        ..Disk::default()
    };
    let mut rig = Rig::new(Block::new(volatile, b"v"), 8);
    let offered = rig.device_features();
    assert_eq!(offered & blk::VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(offered, VIRTIO_F_VERSION_1 | blk::VIRTIO_BLK_F_SEG_MAX);
    let answer = rig.request(blk::VIRTIO_BLK_T_FLUSH, 0, &[], true);
    assert_eq!(answer, (blk::VIRTIO_BLK_S_UNSUPP, 1));
    assert_eq!(rig.dev.device().backend().flushes, 0);
    // A durable disk whose driver did not take the feature refuses too.
    let mut rig = Rig::new(disk(8), 8);
    rig.write(reg::STATUS, 0);
    rig.set_status(status::ACKNOWLEDGE | status::DRIVER);
    rig.write_driver_features(VIRTIO_F_VERSION_1);
    rig.set_status(status::FEATURES_OK);
    rig.queues.clear();
    rig.setup_queue(0, 8);
    rig.set_status(status::DRIVER_OK);
    let answer = rig.request(blk::VIRTIO_BLK_T_FLUSH, 0, &[], true);
    assert_eq!(answer, (blk::VIRTIO_BLK_S_UNSUPP, 1));
    assert_eq!(rig.dev.device().backend().flushes, 0);
}
