//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): one device's
//! register block as a state machine. The hypervisor maps the block at a
//! guest-physical address of its choice, forwards each access at an offset
//! into it, and raises the device's interrupt line whenever a write (or
//! [`VirtioMmio::notify_queue`]) returns [`Effect::Interrupt`].
//!
//! Registers are 32 bits wide and 32-bit aligned (4.2.2.2); any other
//! access below the configuration space reads as 0, is not written, and is
//! counted in [`VirtioMmio::bad_accesses`]. The device-specific
//! configuration space starts at offset 0x100 and takes 1, 2, 4 or 8-byte
//! accesses that lie inside it.

use crate::bits::low_u32;
use alloc::vec::Vec;

use crate::memory::GuestMemory;
use crate::virtio::budget::Budget;
use crate::virtio::queue::{Queue, QueueError};

/// "virt" in little endian (4.2.2, MagicValue).
pub const MAGIC: u32 = 0x7472_6976;
/// The non-legacy interface (4.2.2, Version).
pub const VERSION: u32 = 2;
/// "ATOL" in little endian: the VendorID the devices here report.
pub const VENDOR_ID: u32 = 0x4c4f_5441;
/// VIRTIO_F_VERSION_1 (6): offered by every device, required from drivers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Bytes of the register block, configuration space included.
pub const MMIO_SIZE: u64 = 0x200;
/// Most queues a device here has.
pub const MAX_QUEUES: usize = 4;

/// Device status bits (2.1).
// Each name is the spec's (2.1, without the prefix).
#[allow(missing_docs)]
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// InterruptStatus bit 0 (4.2.2): the device used a buffer in a queue.
pub const INT_USED_BUFFER: u32 = 1;
/// InterruptStatus bit 1 (4.2.2): the configuration space changed.
pub const INT_CONFIG_CHANGE: u32 = 2;

/// Register offsets (4.2.2, table "MMIO Device Register Layout").
// Each name is the spec's register name in upper snake case.
#[allow(missing_docs)]
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// What an access means for the VM beyond the device's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing more to do.
    None,
    /// InterruptStatus gained a bit: raise the device's interrupt line.
    Interrupt,
}

impl Effect {
    /// `Interrupt` if either is.
    pub fn or(self, other: Effect) -> Effect {
        if self == Effect::Interrupt {
            self
        } else {
            other
        }
    }
}

/// A device type behind the transport (virtio 1.2, 5).
pub trait Device {
    /// The virtio device ID (5: 2 block, 3 console).
    fn device_id(&self) -> u32;
    /// Device-specific feature bits offered; the transport adds
    /// VIRTIO_F_VERSION_1.
    fn features(&self) -> u64;
    /// Queues the device has (at most [`MAX_QUEUES`]).
    fn num_queues(&self) -> usize;
    /// The largest size queue `index` may have (a power of 2).
    fn queue_size_max(&self, index: usize) -> u16;
    /// Fills `data` from configuration space `offset`; bytes past its end
    /// read as 0. Returns false if the range is not inside it.
    fn read_config(&self, offset: u64, data: &mut [u8]) -> bool;
    /// Device reset (2.1.2): back to the state before the driver came;
    /// work in progress is dropped.
    fn reset(&mut self);
    /// FEATURES_OK stuck: the driver accepted `features` (3.1.1 step 5).
    fn negotiated(&mut self, _features: u64) {}
    /// Queue `index` was disabled (QueueReady = 0): work on it is dropped.
    fn queue_stopped(&mut self, _index: usize) {}
    /// The driver made buffers available on queue `index` (or became
    /// ready). A device either processes them here, pushing used buffers
    /// to `queue` (bounded, small work), or records the kick for
    /// [`Device::work`].
    fn notify(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &mut impl GuestMemory,
    ) -> Result<(), QueueError>;
    /// Whether recorded work remains for [`Device::work`].
    fn has_work(&self) -> bool {
        false
    }
    /// Serves recorded work on queue `index` until `budget` is spent;
    /// returns whether work remains.
    fn work(
        &mut self,
        _index: usize,
        _queue: &mut Queue,
        _mem: &mut impl GuestMemory,
        _budget: &mut Budget,
    ) -> Result<bool, QueueError> {
        Ok(false)
    }
}

/// One virtio-mmio device: the transport registers, the queues and the
/// device behind them.
#[derive(Clone, Debug)]
pub struct VirtioMmio<D: Device> {
    device: D,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    /// Why the device last needed a reset, if it does.
    pub error: Option<QueueError>,
    /// Accesses with a wrong size or offset, and writes ignored because
    /// the register may not be written now.
    pub bad_accesses: u64,
}

impl<D: Device> VirtioMmio<D> {
    /// The transport for `device`, in the reset state (no queue ready, status 0).
    pub fn new(device: D) -> Self {
        let n = device.num_queues().min(MAX_QUEUES);
        let queues = (0..n)
            .map(|i| Queue::new(device.queue_size_max(i)))
            .collect();
        VirtioMmio {
            device,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            error: None,
            bad_accesses: 0,
        }
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device behind the transport, to change its state from outside (input, backend).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The Status register (2.1).
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Features both sides agreed on (valid once FEATURES_OK is set).
    pub fn negotiated_features(&self) -> u64 {
        self.driver_features
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn bad(&mut self) {
        self.bad_accesses = self.bad_accesses.saturating_add(1);
    }

    /// A read of `size` bytes at `offset` into the block.
    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= reg::CONFIG {
            return self.read_config(offset - reg::CONFIG, size);
        }
        if size != 4 || !offset.is_multiple_of(4) {
            self.bad();
            return 0;
        }
        match self.read_register(offset) {
            Some(v) => u64::from(v),
            None => {
                self.bad();
                0
            }
        }
    }

    fn read_register(&self, offset: u64) -> Option<u32> {
        let queue = self.selected();
        Some(match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => self.device_features_word(),
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_NUM => queue.map_or(0, |q| u32::from(q.size())),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::QUEUE_DESC_LOW..=reg::QUEUE_DEVICE_HIGH => {
                let (which, high) = queue_address_register(offset)?;
                let addr = queue.map_or(0, |q| q.address(which));
                low_u32(if high { addr >> 32 } else { addr })
            }
            // No shared memory regions: a length (and base) of all ones
            // says region SHMSel does not exist (4.2.2).
            reg::SHM_LEN_LOW..=reg::SHM_BASE_HIGH => u32::MAX,
            // The configuration space never changes under the driver.
            reg::CONFIG_GENERATION => 0,
            _ => return None,
        })
    }

    fn device_features_word(&self) -> u32 {
        match self.device_features_sel {
            0 => low_u32(self.offered_features()),
            1 => (self.offered_features() >> 32) as u32,
            _ => 0,
        }
    }

    fn read_config(&mut self, offset: u64, size: u8) -> u64 {
        let mut bytes = [0u8; 8];
        let ok = matches!(size, 1 | 2 | 4 | 8)
            && bytes
                .get_mut(..usize::from(size))
                .is_some_and(|b| self.device.read_config(offset, b));
        if !ok {
            self.bad();
            return 0;
        }
        u64::from_le_bytes(bytes)
    }

    fn selected(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn selected_mut(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A write of `size` bytes at `offset`.
    pub fn write(
        &mut self,
        offset: u64,
        size: u8,
        value: u64,
        mem: &mut impl GuestMemory,
    ) -> Effect {
        // The configuration space has no writable fields for the features
        // offered here (5.2.4, 5.3.4).
        if offset >= reg::CONFIG || size != 4 || !offset.is_multiple_of(4) {
            self.bad();
            return Effect::None;
        }
        let value = low_u32(value);
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => self.write_queue_num(value),
            reg::QUEUE_READY => return self.write_queue_ready(value, mem),
            reg::QUEUE_NOTIFY => return self.write_queue_notify(value, mem),
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => return self.write_status(value, mem),
            reg::QUEUE_DESC_LOW..=reg::QUEUE_DEVICE_HIGH => self.write_queue_address(offset, value),
            reg::SHM_SEL => {}
            _ => self.bad(),
        }
        Effect::None
    }

    /// DriverFeatures: only before FEATURES_OK (3.1.1 step 5), words 0, 1.
    fn write_driver_features(&mut self, value: u32) {
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return self.bad(),
        };
        if self.status & status::FEATURES_OK != 0 {
            return self.bad();
        }
        let mask = 0xffff_ffffu64 << shift;
        self.driver_features = (self.driver_features & !mask) | (u64::from(value) << shift);
    }

    /// Whether queue registers may change: the selected queue exists, is
    /// not enabled, and the driver has not set DRIVER_OK (4.2.2.3).
    fn queue_writable(&self) -> bool {
        self.status & status::DRIVER_OK == 0 && self.selected().is_some_and(|q| !q.ready())
    }

    fn write_queue_num(&mut self, value: u32) {
        let size = u16::try_from(value).ok();
        match (self.queue_writable(), size, self.selected_mut()) {
            (true, Some(size), Some(q)) => {
                q.set_size(size);
            }
            _ => self.bad(),
        }
    }

    fn write_queue_address(&mut self, offset: u64, value: u32) {
        let register = queue_address_register(offset);
        let writable = self.queue_writable();
        match (register, self.selected_mut()) {
            (Some((which, high)), Some(q)) if writable => {
                q.set_address(which, high, value);
            }
            _ => self.bad(),
        }
    }

    /// QueueReady: 1 enables the selected queue after checking its size
    /// and rings; a bad queue needs a reset (2.1.2). 0 disables it.
    fn write_queue_ready(&mut self, value: u32, mem: &impl GuestMemory) -> Effect {
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            self.bad();
            return Effect::None;
        };
        match value {
            0 => {
                q.disable();
                let index = self.queue_sel as usize;
                self.device.queue_stopped(index);
            }
            1 if q.ready() => {}
            1 => {
                if let Err(e) = q.enable(mem) {
                    return self.needs_reset(e);
                }
            }
            _ => self.bad(),
        }
        Effect::None
    }

    fn write_queue_notify(&mut self, value: u32, mem: &mut impl GuestMemory) -> Effect {
        let index = value as usize;
        if index >= self.queues.len() {
            self.bad();
            return Effect::None;
        }
        self.notify_queue(index, mem)
    }

    /// Lets the device process queue `index` now: after a QueueNotify, or
    /// when the device has something for the driver (console input).
    /// Nothing happens before DRIVER_OK (3.1.1), after the device needs a
    /// reset, or while the queue is not enabled.
    pub fn notify_queue(&mut self, index: usize, mem: &mut impl GuestMemory) -> Effect {
        let live =
            self.status & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET) == status::DRIVER_OK;
        let Some(queue) = self.queues.get_mut(index) else {
            return Effect::None;
        };
        if !live || !queue.ready() {
            return Effect::None;
        }
        let result = self.device.notify(index, queue, mem);
        let used = queue.take_used() && queue.wants_interrupt(mem);
        let effect = if used {
            self.interrupt_status |= INT_USED_BUFFER;
            Effect::Interrupt
        } else {
            Effect::None
        };
        match result {
            Ok(()) => effect,
            Err(e) => effect.or(self.needs_reset(e)),
        }
    }

    /// Whether the device has work waiting for [`VirtioMmio::work`].
    pub fn has_work(&self) -> bool {
        self.device.has_work()
    }

    /// One slice of the device's recorded work (see
    /// crate::virtio::budget): served until `budget` is spent. Returns
    /// the interrupt to raise, if any, and whether work remains.
    pub fn work(&mut self, mem: &mut impl GuestMemory, budget: &mut Budget) -> (Effect, bool) {
        let live =
            self.status & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET) == status::DRIVER_OK;
        let mut effect = Effect::None;
        let mut more = false;
        for index in 0..self.queues.len() {
            let Some(queue) = self.queues.get_mut(index) else {
                break;
            };
            if !live || !queue.ready() {
                // Work recorded before the device stopped is dropped.
                self.device.queue_stopped(index);
                continue;
            }
            let result = self.device.work(index, queue, mem, budget);
            if queue.take_used() && queue.wants_interrupt(mem) {
                self.interrupt_status |= INT_USED_BUFFER;
                effect = Effect::Interrupt;
            }
            match result {
                Ok(left) => more |= left,
                Err(e) => {
                    effect = effect.or(self.needs_reset(e));
                    return (effect, false);
                }
            }
        }
        (effect, more)
    }

    /// Sets DEVICE_NEEDS_RESET (2.1.2) and, once the driver is running,
    /// tells it with a configuration change notification.
    fn needs_reset(&mut self, error: QueueError) -> Effect {
        self.error = Some(error);
        self.status |= status::DEVICE_NEEDS_RESET;
        if self.status & status::DRIVER_OK == 0 {
            return Effect::None;
        }
        self.interrupt_status |= INT_CONFIG_CHANGE;
        Effect::Interrupt
    }

    /// Status (2.1, 3.1.1): 0 resets the device; otherwise the driver adds
    /// bits. FEATURES_OK sticks only if the features written are a subset
    /// of those offered and include VIRTIO_F_VERSION_1; DRIVER_OK makes
    /// the device look at every enabled queue once (buffers the driver
    /// made available before it).
    fn write_status(&mut self, value: u32, mem: &mut impl GuestMemory) -> Effect {
        if value == 0 {
            self.reset();
            return Effect::None;
        }
        let known = status::ACKNOWLEDGE
            | status::DRIVER
            | status::DRIVER_OK
            | status::FEATURES_OK
            | status::FAILED;
        let old = self.status;
        // The driver may not clear bits without a reset (2.1.1).
        let mut new = old | (value & known);
        if new & !old & status::FEATURES_OK != 0 {
            if self.features_acceptable() {
                self.device.negotiated(self.driver_features);
            } else {
                new &= !status::FEATURES_OK;
            }
        }
        if new & !old & status::DRIVER_OK != 0 && new & status::FEATURES_OK == 0 {
            // DRIVER_OK without negotiated features (3.1.1 step 8).
            new &= !status::DRIVER_OK;
            self.bad();
        }
        self.status = new;
        if new & !old & status::DRIVER_OK == 0 {
            return Effect::None;
        }
        (0..self.queues.len()).fold(Effect::None, |e, i| e.or(self.notify_queue(i, mem)))
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.offered_features() == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    /// Device reset (2.1.2, 4.2.2: writing 0 to Status).
    pub fn reset(&mut self) {
        self.device.reset();
        self.queues.iter_mut().for_each(Queue::reset);
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        self.error = None;
    }
}

/// QueueDescLow..QueueDeviceHigh: which address (0 descriptors, 1 driver
/// area, 2 device area) and whether the upper half; `None` for the gaps.
fn queue_address_register(offset: u64) -> Option<(u8, bool)> {
    let rel = offset.checked_sub(reg::QUEUE_DESC_LOW)?;
    let which = u8::try_from(rel / 0x10).ok().filter(|w| *w <= 2)?;
    match rel % 0x10 {
        0 => Some((which, false)),
        4 => Some((which, true)),
        _ => None,
    }
}
