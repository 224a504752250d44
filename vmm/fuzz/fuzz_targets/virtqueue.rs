//! A virtio-blk device over virtio-mmio against arbitrary guest memory and
//! an arbitrary sequence of register accesses, notifications and memory
//! pokes. The device must never panic, whatever the driver does. Device
//! work runs in slices of an op-chosen budget after each access, as the
//! hypervisor runs it, so requests stay in flight across pokes.
//!
//! Input: one flags byte (bit 0: start from a driver that has already
//! set the device up, with an 8-entry queue at 0x1000/0x2000/0x3000), two
//! bytes of memory-image length, the image, then 7-byte operations (after
//! each, one slice of device work of 512 << (op byte 0 >> 4) bytes).
#![no_main]

use atoll_vmm::GuestPhysAddr;
use atoll_vmm::memory::{GuestMemory, VecMemory};
use atoll_vmm::virtio::blk::{Block, BlockBackend};
use atoll_vmm::virtio::mmio::{VIRTIO_F_VERSION_1, reg, status};
use atoll_vmm::virtio::{Budget, VirtioMmio};
use libfuzzer_sys::fuzz_target;

const RAM: usize = 0x10000;

struct Disk(Vec<u8>);

impl BlockBackend for Disk {
    fn sectors(&self) -> u64 {
        self.0.len() as u64 / 512
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ()> {
        let o = usize::try_from(offset).map_err(|_| ())?;
        let src = self
            .0
            .get(o..o.checked_add(buf.len()).ok_or(())?)
            .ok_or(())?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ()> {
        let o = usize::try_from(offset).map_err(|_| ())?;
        let dst = self
            .0
            .get_mut(o..o.checked_add(data.len()).ok_or(())?)
            .ok_or(())?;
        dst.copy_from_slice(data);
        Ok(())
    }
    fn durable(&self) -> bool {
        true
    }
    fn flush(&mut self) -> Result<(), ()> {
        Ok(())
    }
}

fn w(dev: &mut VirtioMmio<Block<Disk>>, mem: &mut VecMemory, offset: u64, value: u32) {
    dev.write(offset, 4, u64::from(value), mem);
}

/// What Linux does before its first request.
fn set_up(dev: &mut VirtioMmio<Block<Disk>>, mem: &mut VecMemory) {
    w(dev, mem, reg::STATUS, 0);
    w(dev, mem, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(dev, mem, reg::DRIVER_FEATURES_SEL, 1);
    w(
        dev,
        mem,
        reg::DRIVER_FEATURES,
        (VIRTIO_F_VERSION_1 >> 32) as u32,
    );
    w(
        dev,
        mem,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    w(dev, mem, reg::QUEUE_SEL, 0);
    w(dev, mem, reg::QUEUE_NUM, 8);
    w(dev, mem, reg::QUEUE_DESC_LOW, 0x1000);
    w(dev, mem, reg::QUEUE_DRIVER_LOW, 0x2000);
    w(dev, mem, reg::QUEUE_DEVICE_LOW, 0x3000);
    w(dev, mem, reg::QUEUE_READY, 1);
    w(dev, mem, reg::STATUS, 0x0f);
}

fuzz_target!(|data: &[u8]| {
    let [flags, l0, l1, rest @ ..] = data else {
        return;
    };
    let image_len = usize::from(u16::from_le_bytes([*l0, *l1])).min(rest.len());
    let (image, ops) = rest.split_at(image_len);
    let mut mem = VecMemory::new(RAM);
    mem.bytes[..image.len()].copy_from_slice(image);
    let mut dev = VirtioMmio::new(Block::new(Disk(vec![0; 64 * 512]), b"fuzz"));
    if flags & 1 != 0 {
        set_up(&mut dev, &mut mem);
    }
    for op in ops.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) & 0x1ff);
        let value = u32::from_le_bytes([op[3], op[4], op[5], op[6]]);
        let size = [1u8, 2, 4, 8][usize::from(op[0] >> 2 & 3)];
        match op[0] & 3 {
            0 => {
                dev.write(offset, size, u64::from(value), &mut mem);
            }
            1 => {
                dev.read(offset, size);
            }
            2 => {
                w(&mut dev, &mut mem, reg::QUEUE_NOTIFY, value & 3);
            }
            _ => {
                let at = GuestPhysAddr(u64::from(value) % RAM as u64);
                let _ = mem.write(at, &[op[1], op[2]]);
            }
        }
        let bytes = 512u64 << (op[0] >> 4);
        dev.work(&mut mem, &mut Budget::new(bytes, u64::MAX, || 0));
    }
});
