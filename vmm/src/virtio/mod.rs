//! Virtio devices over the virtio-mmio transport (virtio 1.2).
//!
//! - [`budget`]: how much work a device does per slice.
//! - [`queue`]: split virtqueues (2.7), device side, validating every chain.
//! - [`mmio`]: the virtio-mmio version 2 register block (4.2.2), generic
//!   over a [`mmio::Device`].
//! - [`blk`]: a block device (5.2) over a [`blk::BlockBackend`].
//! - [`console`]: a single-port console (5.3).
//!
//! Guest RAM holds the rings and buffers; the driver is hostile. A driver
//! error in the rings puts the device into DEVICE_NEEDS_RESET (2.1.2); a
//! bad block request fails with an error status. Nothing here panics, and
//! nothing the guest does makes the device allocate more than a chain's
//! worth of buffer descriptions (at most the queue size). Large work
//! (block data) is done in bounded slices ([`budget`]), never in one go.

pub mod blk;
pub mod budget;
pub mod console;
pub mod mmio;
pub mod queue;

pub use budget::Budget;
pub use mmio::{Device, Effect, VirtioMmio};
pub use queue::{Buffer, Chain, Queue, QueueError};

#[cfg(test)]
mod tests;
