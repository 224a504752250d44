//! A virtio console (virtio 1.2, 5.3) with a single port: no
//! VIRTIO_CONSOLE_F_MULTIPORT, no VIRTIO_CONSOLE_F_SIZE, no emergency
//! write, so no feature bits and a configuration space that is never read.
//!
//! Queue 0 (receiveq0) carries input to the driver, queue 1 (transmitq0)
//! output from it (5.3.2). Both buffers are bounded: output waits in
//! [`OUTPUT_BYTES`] until the hypervisor takes it, input in [`INPUT_BYTES`]
//! until the driver posts receive buffers; what does not fit is dropped and
//! counted. Transmit buffers are always consumed at once, since Linux
//! busy-waits for them (drivers/char/virtio_console.c, `__send_to_port`).
//! A receive buffer the device would have to read, or a transmit buffer it
//! would have to write, is a driver error (5.3.6.1): the device needs a
//! reset.

use crate::memory::GuestMemory;
use crate::virtio::mmio::{Device, Effect, VirtioMmio};
use crate::virtio::queue::{Chain, Queue, QueueError};

/// The virtio device ID of a console (5).
pub const DEVICE_ID: u32 = 3;
/// The receiveq's index (receiveq0, 5.3.2): input for the driver.
pub const RECEIVEQ: usize = 0;
/// The transmitq's index (transmitq0, 5.3.2): the driver's output.
pub const TRANSMITQ: usize = 1;
/// Each queue's size.
pub const QUEUE_SIZE: u16 = 64;
/// Output kept for the hypervisor.
pub const OUTPUT_BYTES: usize = 4096;
/// Input kept until the driver posts receive buffers.
pub const INPUT_BYTES: usize = 256;
/// struct virtio_console_config: cols, rows (le16), max_nr_ports,
/// emerg_wr (le32) (5.3.4); all zero, none is valid without features.
const CONFIG_BYTES: u64 = 12;

/// The console device model behind a [`VirtioMmio`].
#[derive(Clone, Debug)]
pub struct Console {
    output: [u8; OUTPUT_BYTES],
    output_len: usize,
    input: [u8; INPUT_BYTES],
    input_len: usize,
    /// Bytes lost because a buffer was full.
    pub dropped_output: u64,
    /// Input bytes lost because the input buffer was full.
    pub dropped_input: u64,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            output: [0; OUTPUT_BYTES],
            output_len: 0,
            input: [0; INPUT_BYTES],
            input_len: 0,
            dropped_output: 0,
            dropped_input: 0,
        }
    }
}

impl Console {
    /// Output bytes waiting to be taken.
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Moves up to `out.len()` output bytes, oldest first, into `out`.
    pub fn take_output(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.output_len);
        if let (Some(dst), Some(src)) = (out.get_mut(..n), self.output.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.output.copy_within(n..self.output_len, 0);
        self.output_len -= n;
        n
    }

    /// Keeps as much of `bytes` as fits for the receive queue; returns how
    /// many were kept.
    fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let free = self.input.get_mut(self.input_len..).unwrap_or(&mut []);
        let n = free.len().min(bytes.len());
        if let (Some(dst), Some(src)) = (free.get_mut(..n), bytes.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.input_len += n;
        n
    }

    /// transmitq: appends one chain's bytes to the output.
    fn transmit(&mut self, chain: &Chain, mem: &impl GuestMemory) -> Result<(), QueueError> {
        if chain.writable().next().is_some() {
            return Err(QueueError::BadRequest);
        }
        let len = chain.readable_len() as usize;
        let free = self.output.get_mut(self.output_len..).unwrap_or(&mut []);
        let n = len.min(free.len());
        let copied = free
            .get_mut(..n)
            .map_or(0, |dst| chain.read_at(mem, 0, dst));
        self.output_len += copied;
        let lost = (len - copied) as u64;
        self.dropped_output = self.dropped_output.saturating_add(lost);
        Ok(())
    }

    /// receiveq: fills one chain with waiting input; returns the count.
    fn receive(&mut self, chain: &Chain, mem: &mut impl GuestMemory) -> Result<u32, QueueError> {
        if chain.readable().next().is_some() {
            return Err(QueueError::BadRequest);
        }
        let waiting = self.input.get(..self.input_len).unwrap_or(&[]);
        let n = chain.write_at(mem, 0, waiting);
        self.input.copy_within(n..self.input_len, 0);
        self.input_len -= n;
        u32::try_from(n).map_err(|_| QueueError::BadRequest)
    }
}

impl Device for Console {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        0
    }

    fn num_queues(&self) -> usize {
        2
    }

    fn queue_size_max(&self, _index: usize) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) -> bool {
        let inside = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= CONFIG_BYTES);
        data.fill(0);
        inside
    }

    /// Buffered input and output survive a reset: they belong to the
    /// hypervisor's side of the console, not to the driver.
    fn reset(&mut self) {}

    /// At most a queue's worth of chains per call (see blk's notify).
    fn notify(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &mut impl GuestMemory,
    ) -> Result<(), QueueError> {
        for _ in 0..queue.size() {
            if index == RECEIVEQ && self.input_len == 0 {
                break;
            }
            let Some(chain) = queue.pop(mem)? else {
                break;
            };
            let written = if index == RECEIVEQ {
                self.receive(&chain, mem)?
            } else {
                self.transmit(&chain, mem)?;
                0
            };
            queue.push_used(chain.head, written, mem)?;
        }
        Ok(())
    }
}

impl VirtioMmio<Console> {
    /// Input for the driver: delivered into the receive buffers it has
    /// posted; the rest waits (up to [`INPUT_BYTES`]) for more buffers, and
    /// anything beyond that is dropped and counted.
    pub fn push_input(&mut self, bytes: &[u8], mem: &mut impl GuestMemory) -> Effect {
        let mut rest = bytes;
        let mut effect = Effect::None;
        loop {
            let kept = self.device_mut().queue_input(rest);
            rest = rest.get(kept..).unwrap_or(&[]);
            effect = effect.or(self.notify_queue(RECEIVEQ, mem));
            if kept == 0 || rest.is_empty() {
                break;
            }
        }
        let console = self.device_mut();
        console.dropped_input = console.dropped_input.saturating_add(rest.len() as u64);
        effect
    }
}
