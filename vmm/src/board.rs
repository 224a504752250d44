//! A VM's board: every device it has, where each sits (ports and
//! guest-physical addresses) and how their interrupt lines are wired.
//!
//! Every VM has the port bus ([`LegacyPorts`]) and the virtio-mmio devices
//! its config lists, one 4 KiB window each from [`VIRTIO_BASE`] (block
//! first), on the ISA IRQs [`VIRTIO_IRQS`]. A VM booted with the Linux boot
//! protocol also gets the PC platform its ACPI tables describe
//! (crate::acpi): an IOAPIC at [`IOAPIC_BASE`] with the ISA interrupts on
//! pins 0-15; the kernel learns of its virtio devices from its command line
//! ([`virtio_cmdline`]). Without an IOAPIC the devices raise no interrupts:
//! other guests poll them.
//!
//! The board turns device interrupts into IOAPIC messages; the hypervisor
//! takes them with [`Board::take_messages`] after each access and delivers
//! them to the vCPUs' local APICs. Guest console output, from the UART and
//! from virtio-console, comes out as lines ([`Board::take_line`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::GuestPhysAddr;
use crate::devices::{DeviceSet, LINE_BYTES, LegacyPorts, PortEffect};
use crate::ioapic::{IOAPIC_BASE as IOAPIC_ADDRESS, IOAPIC_LEN, Ioapic, Message};
use crate::memory::GuestMemory;
use crate::mmio::TestDev;
use crate::virtio::Device;
use crate::virtio::blk::Block;
use crate::virtio::blk::{BlockBackend, SECTOR};
use crate::virtio::budget::Budget;
use crate::virtio::console::Console;
use crate::virtio::mmio::{Effect, VirtioMmio};

pub use crate::ioapic::IOAPIC_BASE;

/// The first virtio-mmio window; device `i` is at `VIRTIO_BASE + i * 4 KiB`,
/// above the largest VM RAM (crate::linux::MAX_RAM).
pub const VIRTIO_BASE: u64 = 0xd000_0000;
/// Each virtio-mmio device's window (the transport's registers and its
/// configuration space fit in the first 0x200 bytes).
pub const VIRTIO_WINDOW: u64 = 0x1000;
/// ISA IRQs no emulated ISA device uses (COM1 has 4, the RTC 8, the ACPI
/// SCI 9), for the virtio devices in order.
pub const VIRTIO_IRQS: [u8; 5] = [5, 6, 7, 10, 11];
/// The IOAPIC's ID (MADT, crate::acpi).
pub const IOAPIC_ID: u8 = 0;
/// Messages a board holds before the hypervisor takes them: more than
/// every pin once (a storm is coalesced, never buffered without bound).
const MAX_PENDING: usize = 32;

/// Which devices a board has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoardSpec {
    /// The legacy port devices.
    pub ports: DeviceSet,
    /// The PC platform for the Linux boot protocol: the IOAPIC.
    pub pc: bool,
    /// A virtio-blk device.
    pub virtio_blk: bool,
    /// A virtio-console device.
    pub virtio_console: bool,
    /// The VM's RAM size in bytes.
    pub ram_bytes: u64,
    /// How many vCPUs the VM has.
    pub vcpus: u16,
}

/// A virtio kind, in window order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioKind {
    /// virtio-blk (device ID 2).
    Block,
    /// virtio-console (device ID 3).
    Console,
}

/// Where a virtio device is and which IRQ it raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioPlace {
    /// Which device it is.
    pub kind: VirtioKind,
    /// Its MMIO register page's guest-physical address.
    pub base: u64,
    /// Its IOAPIC input pin.
    pub irq: u8,
}

/// The virtio devices of `spec`, in window order (block first).
pub fn virtio_places(spec: &BoardSpec) -> Vec<VirtioPlace> {
    let kinds = [
        (spec.virtio_blk, VirtioKind::Block),
        (spec.virtio_console, VirtioKind::Console),
    ];
    kinds
        .iter()
        .filter(|(wanted, _)| *wanted)
        .zip(VIRTIO_IRQS)
        .enumerate()
        .map(|(i, (&(_, kind), irq))| VirtioPlace {
            kind,
            base: VIRTIO_BASE + i as u64 * VIRTIO_WINDOW,
            irq,
        })
        .collect()
}

/// The Linux command line: the VM's own, then one
/// `virtio_mmio.device=<size>@<base>:<irq>` per virtio device
/// (Linux drivers/virtio/virtio_mmio.c, "cmdline devices").
pub fn virtio_cmdline(cmdline: &str, places: &[VirtioPlace]) -> String {
    let mut out = String::from(cmdline.trim());
    for place in places {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!(
            "virtio_mmio.device=4K@{:#x}:{}",
            place.base, place.irq
        ));
    }
    out
}

/// A virtio device on the board.
struct Slot<D: Device> {
    place: VirtioPlace,
    dev: VirtioMmio<D>,
}

impl<D: Device> Slot<D> {
    fn offset(&self, gpa: GuestPhysAddr) -> Option<u64> {
        let offset = gpa.0.checked_sub(self.place.base)?;
        (offset < VIRTIO_WINDOW).then_some(offset)
    }
}

/// A disk kept in memory the VM cannot reach (for the hypervisor, a range
/// of node memory), addressed from 0. It is volatile: its contents last as
/// long as the machine runs (a VM restart keeps them, a power-off does
/// not), so it does not offer VIRTIO_BLK_F_FLUSH.
#[derive(Clone, Debug)]
pub struct MemoryDisk<M: GuestMemory>(pub M);

impl<M: GuestMemory> BlockBackend for MemoryDisk<M> {
    fn sectors(&self) -> u64 {
        self.0.size() / SECTOR
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ()> {
        self.0.read(GuestPhysAddr(offset), buf).map_err(|_| ())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ()> {
        self.0.write(GuestPhysAddr(offset), data).map_err(|_| ())
    }

    fn durable(&self) -> bool {
        false
    }

    /// Never called (FLUSH is not offered); nothing could make it last.
    fn flush(&mut self) -> Result<(), ()> {
        Err(())
    }
}

/// Console output collected into lines, as the UART does it.
#[derive(Clone, Debug)]
struct Lines {
    line: [u8; LINE_BYTES],
    len: usize,
}

impl Lines {
    /// Adds bytes; each completed line goes to `done`.
    fn push(&mut self, bytes: &[u8], done: &mut Vec<Vec<u8>>) {
        for &b in bytes {
            match b {
                b'\r' => {}
                b'\n' => done.push(self.take()),
                _ => {
                    if let Some(slot) = self.line.get_mut(self.len) {
                        *slot = b;
                        self.len += 1;
                    }
                    if self.len == LINE_BYTES {
                        done.push(self.take());
                    }
                }
            }
        }
    }

    fn take(&mut self) -> Vec<u8> {
        let line = self.line.get(..self.len).unwrap_or(&[]).to_vec();
        self.len = 0;
        line
    }
}

/// One VM's devices.
pub struct Board<B: BlockBackend> {
    /// The port-I/O devices.
    pub ports: LegacyPorts,
    ioapic: Option<Ioapic>,
    blk: Option<Slot<Block<B>>>,
    console: Option<Slot<Console>>,
    console_out: Lines,
    /// Finished virtio-console lines not yet taken (bounded: the oldest go).
    console_lines: Vec<Vec<u8>>,
    /// IOAPIC messages not yet taken by the hypervisor.
    pending: Vec<Message>,
    /// Messages dropped because `pending` was full.
    pub dropped_messages: u64,
    /// Device-work slices the hypervisor ran, as it counts them.
    pub slices: SliceStats,
}

/// Device-work slices as the hypervisor measured them (on its clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SliceStats {
    /// How many slices ran.
    pub count: u64,
    /// The longest slice.
    pub max_ticks: u64,
    /// All slices summed.
    pub total_ticks: u64,
}

impl SliceStats {
    /// Counts one slice of `ticks`.
    pub fn record(&mut self, ticks: u64) {
        self.count = self.count.saturating_add(1);
        self.max_ticks = self.max_ticks.max(ticks);
        self.total_ticks = self.total_ticks.saturating_add(ticks);
    }
}

impl<B: BlockBackend> Board<B> {
    /// A board as `spec` says; `disk` backs virtio-blk (ignored without).
    pub fn new(spec: &BoardSpec, disk: Option<B>) -> Self {
        let mut blk = None;
        let mut console = None;
        let mut disk = disk;
        for place in virtio_places(spec) {
            match place.kind {
                VirtioKind::Block => {
                    if let Some(backend) = disk.take() {
                        let dev = VirtioMmio::new(Block::new(backend, b"atoll-disk"));
                        blk = Some(Slot { place, dev });
                    }
                }
                VirtioKind::Console => {
                    let dev = VirtioMmio::new(Console::default());
                    console = Some(Slot { place, dev });
                }
            }
        }
        Board {
            ports: LegacyPorts::new(spec.ports, spec.ram_bytes, spec.vcpus),
            ioapic: spec.pc.then(|| Ioapic::new(IOAPIC_ID)),
            blk,
            console,
            console_out: Lines {
                line: [0; LINE_BYTES],
                len: 0,
            },
            console_lines: Vec::new(),
            pending: Vec::new(),
            dropped_messages: 0,
            slices: SliceStats::default(),
        }
    }

    /// A port read.
    pub fn port_read(&mut self, port: u16, size: u8) -> u32 {
        let value = self.ports.read(port, size);
        self.route_isa_edges();
        value
    }

    /// A port write.
    pub fn port_write(&mut self, port: u16, size: u8, value: u32) -> PortEffect {
        let effect = self.ports.write(port, size, value);
        self.route_isa_edges();
        effect
    }

    /// Console input for the UART; how many bytes it took.
    pub fn push_input(&mut self, bytes: &[u8]) -> usize {
        let n = self.ports.push_input(bytes);
        self.route_isa_edges();
        n
    }

    /// Whether a device on the board owns guest-physical `gpa`.
    pub fn claims(&self, gpa: GuestPhysAddr) -> bool {
        self.ioapic_offset(gpa).is_some()
            || self.blk.as_ref().and_then(|s| s.offset(gpa)).is_some()
            || self.console.as_ref().and_then(|s| s.offset(gpa)).is_some()
            || (self.ports.testdev.is_some() && TestDev::claims(gpa, 1))
    }

    fn ioapic_offset(&self, gpa: GuestPhysAddr) -> Option<u64> {
        self.ioapic.as_ref()?;
        let offset = gpa.0.checked_sub(IOAPIC_ADDRESS)?;
        (offset < IOAPIC_LEN).then_some(offset)
    }

    /// An MMIO read of `size` bytes; `None` if no device has all of it.
    pub fn mmio_read(&mut self, gpa: GuestPhysAddr, size: u8) -> Option<u64> {
        if let Some(offset) = self.ioapic_offset(gpa) {
            return self.ioapic.as_mut().map(|io| io.mmio_read(offset, size));
        }
        if let Some(slot) = self.blk.as_mut()
            && let Some(offset) = slot.offset(gpa)
        {
            return Some(slot.dev.read(offset, size));
        }
        if let Some(slot) = self.console.as_mut()
            && let Some(offset) = slot.offset(gpa)
        {
            return Some(slot.dev.read(offset, size));
        }
        let testdev = self.ports.testdev.as_mut()?;
        TestDev::claims(gpa, size).then(|| testdev.read(gpa, size))
    }

    /// An MMIO write; `false` if no device has all of it. `mem` is the
    /// VM's RAM, where virtio queues live.
    pub fn mmio_write(
        &mut self,
        gpa: GuestPhysAddr,
        size: u8,
        value: u64,
        mem: &mut impl GuestMemory,
    ) -> bool {
        if let Some(offset) = self.ioapic_offset(gpa) {
            if let Some(io) = self.ioapic.as_mut() {
                io.mmio_write(offset, size, value);
            }
            self.drain_ioapic();
            return true;
        }
        if let Some(slot) = self.blk.as_mut()
            && let Some(offset) = slot.offset(gpa)
        {
            let (effect, irq) = (slot.dev.write(offset, size, value, mem), slot.place.irq);
            self.interrupt_if(effect, irq);
            return true;
        }
        if let Some(slot) = self.console.as_mut()
            && let Some(offset) = slot.offset(gpa)
        {
            let (effect, irq) = (slot.dev.write(offset, size, value, mem), slot.place.irq);
            self.collect_console_output();
            self.interrupt_if(effect, irq);
            return true;
        }
        let Some(testdev) = self.ports.testdev.as_mut() else {
            return false;
        };
        if !TestDev::claims(gpa, size) {
            return false;
        }
        testdev.write(gpa, size, value);
        true
    }

    /// Whether a device has work waiting for [`Board::work`].
    pub fn has_device_work(&self) -> bool {
        self.blk.as_ref().is_some_and(|s| s.dev.has_work())
    }

    /// One slice of device work (crate::virtio::budget) over the VM's RAM
    /// `mem`; a completion raises the device's interrupt. Returns whether
    /// work remains.
    pub fn work(&mut self, mem: &mut impl GuestMemory, budget: &mut Budget) -> bool {
        let Some(slot) = self.blk.as_mut() else {
            return false;
        };
        let ((effect, more), irq) = (slot.dev.work(mem, budget), slot.place.irq);
        self.interrupt_if(effect, irq);
        more
    }

    /// The block device's counters: requests, failed ones, the longest
    /// request's ticks (see [`Block`]).
    pub fn blk_stats(&self) -> Option<(u64, u64, u64)> {
        let b = self.blk.as_ref()?.dev.device();
        Some((b.requests, b.failed, b.max_request_ticks))
    }

    /// The local APIC of some vCPU ended level-triggered `vector`.
    pub fn eoi(&mut self, vector: u8) {
        if let Some(io) = self.ioapic.as_mut() {
            io.eoi(vector);
        }
        self.drain_ioapic();
    }

    /// The interrupt messages raised since the last call, in order.
    pub fn take_messages(&mut self) -> Vec<Message> {
        core::mem::take(&mut self.pending)
    }

    /// The next finished virtio-console line, oldest first.
    pub fn take_console_line(&mut self) -> Option<Vec<u8>> {
        (!self.console_lines.is_empty()).then(|| self.console_lines.remove(0))
    }

    fn collect_console_output(&mut self) {
        let Some(slot) = self.console.as_mut() else {
            return;
        };
        let mut buf = [0u8; 512];
        loop {
            let n = slot.dev.device_mut().take_output(&mut buf);
            if n == 0 {
                break;
            }
            self.console_out
                .push(buf.get(..n).unwrap_or(&[]), &mut self.console_lines);
        }
        // A guest that never lets the console drain loses its oldest lines.
        let excess = self.console_lines.len().saturating_sub(MAX_PENDING);
        self.console_lines.drain(..excess);
    }

    fn interrupt_if(&mut self, effect: Effect, irq: u8) {
        if effect == Effect::Interrupt {
            self.raise(irq);
        }
    }

    /// ISA devices' rising edges to the IOAPIC pin of the same number.
    fn route_isa_edges(&mut self) {
        let edges = self.ports.take_irq_edges();
        for irq in 0..16u8 {
            if edges & (1 << irq) != 0 {
                self.raise(irq);
            }
        }
    }

    fn raise(&mut self, pin: u8) {
        let message = self.ioapic.as_mut().and_then(|io| io.raise(pin));
        if let Some(m) = message {
            self.queue(m);
        }
    }

    /// Messages the IOAPIC held back (level pins unmasked or EOI'd).
    fn drain_ioapic(&mut self) {
        for _ in 0..crate::ioapic::PINS {
            match self.ioapic.as_mut().and_then(|io| io.next_message()) {
                Some(m) => self.queue(m),
                None => break,
            }
        }
    }

    fn queue(&mut self, message: Message) {
        if self.pending.len() >= MAX_PENDING {
            self.dropped_messages = self.dropped_messages.saturating_add(1);
        } else {
            self.pending.push(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VecMemory;
    use crate::ioapic::Delivery;

    fn linux_spec() -> BoardSpec {
        BoardSpec {
            ports: DeviceSet::ALL,
            pc: true,
            virtio_blk: true,
            virtio_console: true,
            ram_bytes: 64 << 20,
            vcpus: 2,
        }
    }

    fn board() -> Board<MemoryDisk<VecMemory>> {
        Board::new(&linux_spec(), Some(MemoryDisk(VecMemory::new(1 << 20))))
    }

    /// Programs IOAPIC pin `pin` to `vector`, edge, physical APIC 0.
    fn route(b: &mut Board<MemoryDisk<VecMemory>>, pin: u8, vector: u8) {
        let mut mem = VecMemory::new(4096);
        let reg = 0x10 + 2 * u64::from(pin);
        let io = GuestPhysAddr(IOAPIC_BASE);
        let win = GuestPhysAddr(IOAPIC_BASE + 0x10);
        assert!(b.mmio_write(io, 4, reg + 1, &mut mem));
        assert!(b.mmio_write(win, 4, 0, &mut mem));
        assert!(b.mmio_write(io, 4, reg, &mut mem));
        assert!(b.mmio_write(win, 4, u64::from(vector), &mut mem));
    }

    #[test]
    fn virtio_devices_get_windows_and_irqs_in_order_and_the_cmdline_names_them() {
        let places = virtio_places(&linux_spec());
        assert_eq!(places.len(), 2);
        assert_eq!((places[0].base, places[0].irq), (VIRTIO_BASE, 5));
        assert_eq!(places[1].kind, VirtioKind::Console);
        assert_eq!((places[1].base, places[1].irq), (VIRTIO_BASE + 0x1000, 6));
        assert_eq!(
            virtio_cmdline(" console=ttyS0 ", &places),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        let console_only = BoardSpec {
            pc: false,
            virtio_blk: false,
            ..linux_spec()
        };
        let places = virtio_places(&console_only);
        assert_eq!((places.len(), places[0].base), (1, VIRTIO_BASE));
        assert_eq!(virtio_cmdline("x", &[]), "x");
    }

    #[test]
    fn the_board_claims_its_windows_only() {
        let b = board();
        assert!(b.claims(GuestPhysAddr(IOAPIC_BASE)));
        assert!(b.claims(GuestPhysAddr(IOAPIC_BASE + 0xfff)));
        assert!(!b.claims(GuestPhysAddr(IOAPIC_BASE + 0x1000)));
        assert!(b.claims(GuestPhysAddr(VIRTIO_BASE + 0x1ff)));
        assert!(b.claims(GuestPhysAddr(VIRTIO_BASE + 0x1000)));
        assert!(!b.claims(GuestPhysAddr(VIRTIO_BASE + 0x2000)));
        assert!(
            !b.claims(GuestPhysAddr(0xfee0_0000)),
            "the local APIC is per vCPU"
        );
        let plain = Board::<MemoryDisk<VecMemory>>::new(
            &BoardSpec {
                pc: false,
                ..linux_spec()
            },
            None,
        );
        assert!(!plain.claims(GuestPhysAddr(IOAPIC_BASE)));
        assert!(
            !plain.claims(GuestPhysAddr(VIRTIO_BASE)),
            "virtio-blk without a disk is left out"
        );
        assert!(plain.claims(GuestPhysAddr(VIRTIO_BASE + 0x1000)));
    }

    #[test]
    fn virtio_registers_answer_through_the_board() {
        let mut b = board();
        assert_eq!(
            b.mmio_read(GuestPhysAddr(VIRTIO_BASE), 4),
            Some(u64::from(crate::virtio::mmio::MAGIC))
        );
        // Device IDs: 2 = block, 3 = console (virtio 1.2, 5).
        assert_eq!(b.mmio_read(GuestPhysAddr(VIRTIO_BASE + 8), 4), Some(2));
        assert_eq!(b.mmio_read(GuestPhysAddr(VIRTIO_BASE + 0x1008), 4), Some(3));
        // Capacity: 1 MiB of disk = 2048 sectors.
        assert_eq!(
            b.mmio_read(GuestPhysAddr(VIRTIO_BASE + 0x100), 4),
            Some(2048)
        );
        assert_eq!(b.mmio_read(GuestPhysAddr(VIRTIO_BASE + 0x2000), 4), None);
    }

    #[test]
    fn a_uart_interrupt_reaches_the_ioapic_as_a_message_for_its_vector() {
        let mut b = board();
        route(&mut b, 4, 0x24);
        assert!(b.take_messages().is_empty());
        // 8250 driver: OUT2 on (MCR bit 3), receive interrupts on (IER bit 0).
        b.port_write(0x3fc, 1, 0x0b);
        b.port_write(0x3f9, 1, 0x01);
        assert!(b.take_messages().is_empty(), "nothing received yet");
        assert_eq!(b.push_input(b"x"), 1);
        let messages = b.take_messages();
        assert_eq!(messages.len(), 1);
        assert_eq!((messages[0].pin, messages[0].vector), (4, 0x24));
        assert_eq!(messages[0].delivery, Delivery::Fixed);
        assert_eq!(b.port_read(0x3f8, 1), u32::from(b'x'));
        assert!(b.take_messages().is_empty(), "reading drops the line");
    }

    #[test]
    fn a_masked_pin_sends_nothing_and_storms_are_bounded() {
        let mut b = board();
        b.port_write(0x3fc, 1, 0x0b);
        b.port_write(0x3f9, 1, 0x01);
        b.push_input(b"x");
        assert!(b.take_messages().is_empty(), "pin 4 is masked after reset");
        route(&mut b, 4, 0x24);
        for _ in 0..1000 {
            b.raise(4);
        }
        assert_eq!(b.take_messages().len(), MAX_PENDING);
        assert_eq!(b.dropped_messages, 1000 - MAX_PENDING as u64);
    }

    #[test]
    fn console_lines_are_cut_at_newlines_and_bounded() {
        let mut lines = Lines {
            line: [0; LINE_BYTES],
            len: 0,
        };
        let mut done = Vec::new();
        lines.push(b"ab\r\ncd", &mut done);
        assert_eq!(done, [b"ab".to_vec()]);
        lines.push(&[b'x'; LINE_BYTES], &mut done);
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].len(), LINE_BYTES);
        assert_eq!(&done[1][..2], b"cd");
    }

    #[test]
    fn the_memory_disk_is_its_memory_in_sectors() {
        let mut disk = MemoryDisk(VecMemory::new(4096));
        assert_eq!(disk.sectors(), 8);
        disk.write(512, b"abc").unwrap();
        let mut buf = [0; 3];
        disk.read(512, &mut buf).unwrap();
        assert_eq!(&buf, b"abc");
        assert!(disk.read(4095, &mut buf).is_err());
        assert!(!disk.durable(), "node memory does not outlive the machine");
    }
}
