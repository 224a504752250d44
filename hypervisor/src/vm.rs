//! VMs as node objects: a VM belongs to one node, its RAM is a range of
//! that node's memory, its EPT is built from the node's kernel memory, and
//! its vCPUs run only on the node's CPUs.
//!
//! A VM's record is shared by the CPUs that run its vCPUs; everything in
//! it that changes is atomic, or (the devices) behind the node lock. The
//! life of a VM (running, ending, restarted or ended) is decided by
//! `atoll_vmm::lifecycle`, the requests between its vCPUs by
//! `atoll_vmm::mailbox` and where an interrupt goes by
//! `atoll_vmm::routing`: this file carries the decisions out (reloading
//! images, kicking CPUs, printing events).
//!
//! ```text
//!  Running --(a vCPU: exit status / stop reason)--> Ending
//!  Ending: every CPU with a vCPU of the VM sees it at its next exit (a
//!          kick IPI makes that prompt), parks its vCPU and checks out;
//!          the last one out finishes the VM:
//!     reboot, or crash and on_crash = "restart" --> images reloaded
//!                 --> Running (new generation: each CPU resets its vCPUs)
//!     otherwise   --> Ended (events, node count down)
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use atoll_cluster::config::{OnCrash, Platform};
use atoll_cluster::plan::{Access, NodePlan, Plan, VmSignalPlan};
use atoll_cluster::topology::PhysRange;
use atoll_platform::ept::{self, Ept, RegionKind};
use atoll_platform::event::{Hex, HexRange};
use atoll_vmm::GuestMemory;
use atoll_vmm::acpi::{self, AcpiConfig};
use atoll_vmm::board::{self, Board, BoardSpec, MemoryDisk};
use atoll_vmm::devices::DeviceSet;
use atoll_vmm::exit::ExitReason;
use atoll_vmm::hypercall::{self, Error as HypercallError, Region};
use atoll_vmm::ioapic;
use atoll_vmm::lapic::{Ipi, Lapic};
use atoll_vmm::lifecycle::{Cause, End, Finish, Lifecycle, MAX_RESTARTS};
use atoll_vmm::linux::{self, LinuxBoot, LinuxEntry};
use atoll_vmm::loader::{self, EntryState, Module};
use atoll_vmm::mailbox::Mailbox;
use atoll_vmm::routing::{self, Route};
use atoll_vmm::stats::{self, REASONS, Snapshot};
use spin::Mutex;

use crate::arch::cpu;
use crate::arch::guestram::{self, GuestRam};
use crate::arch::images;
use crate::arch::kmem::{KernelMemory, SharedFrames};
use crate::console;
use crate::node::Node;

/// What the config and the plan say about a VM.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u16,
    /// Its RAM: guest-physical 0 maps here.
    pub memory: PhysRange,
    /// The CPU (MADT index) each vCPU runs on.
    pub vcpu_cpus: Vec<u32>,
    pub kernel: String,
    /// The initial ramdisk (Linux boot protocol only).
    pub initrd: Option<String>,
    pub modules: Vec<String>,
    pub cmdline: String,
    pub devices: DeviceSet,
    pub virtio_blk: bool,
    pub virtio_console: bool,
    /// The node memory holding its virtio-blk disk.
    pub disk: Option<PhysRange>,
    pub on_crash: OnCrash,
    /// `platform = "pc"`: the PC platform even for a multiboot kernel.
    pub pc: bool,
    /// Its index in the plan's VM list (what `Plan::receiver` names).
    pub global: usize,
    /// Its IPI capabilities, by handle.
    pub signals: Vec<VmSignalPlan>,
    /// Its channels, by handle: the memory and the access its node has.
    pub channels: Vec<(PhysRange, Access)>,
}

/// The VMs of node `node` as the plan gives them.
pub fn specs_for_node(plan: &Plan, node: usize) -> Vec<VmSpec> {
    plan.vms
        .iter()
        .enumerate()
        .filter(|(_, vm)| usize::from(vm.node.0) == node)
        .map(|(global, vm)| VmSpec {
            name: vm.name.clone(),
            // At most MAX_VCPUS (255): the parser's bound, kept in the type.
            vcpus: vm.vcpus,
            memory: vm.memory,
            vcpu_cpus: vm.vcpu_cpus.iter().map(|c| c.0).collect(),
            kernel: vm.kernel.clone(),
            initrd: vm.initrd.clone(),
            modules: vm.modules.clone(),
            cmdline: vm.cmdline.clone(),
            virtio_blk: vm.devices.iter().any(|d| d == "virtio-blk"),
            virtio_console: vm.devices.iter().any(|d| d == "virtio-console"),
            disk: vm.disk,
            devices: DeviceSet {
                uart: vm.devices.iter().any(|d| d == "uart"),
                debug_exit: vm.devices.iter().any(|d| d == "debug-exit"),
                fw_cfg: vm.devices.iter().any(|d| d == "fw-cfg"),
                testdev: vm.devices.iter().any(|d| d == "testdev"),
                // The PC platform devices come with the Linux boot
                // protocol or `platform = "pc"` (Vm::board_spec).
                ..DeviceSet::NONE
            },
            on_crash: vm.on_crash,
            pc: vm.platform == Platform::Pc,
            global,
            signals: vm.signals.clone(),
            channels: vm
                .channels
                .iter()
                .filter_map(|&(i, access)| plan.channels.get(i).map(|c| (c.range, access)))
                .collect(),
        })
        .collect()
}

/// How vCPU 0 starts: the state a boot protocol leaves.
#[derive(Clone, Copy, Debug)]
pub enum Boot {
    /// Multiboot: 32-bit protected mode at `entry`, EAX/EBX set.
    Multiboot(EntryState),
    /// The Linux 64-bit boot protocol.
    Linux(LinuxEntry),
}

/// A VM's devices, its disk in node memory.
pub type VmBoard = Board<MemoryDisk<GuestRam>>;

pub struct Vm {
    /// Index among the node's VMs (where the node keeps its devices, under the node lock).
    pub local: usize,
    pub spec: VmSpec,
    pub ram: GuestRam,
    pub eptp: u64,
    /// The EPT, for mappings added later (channels).
    ept: Mutex<Ept<SharedFrames>>,
    /// Where each channel (by handle) is mapped, once it is.
    mapped: Mutex<Vec<Option<u64>>>,
    /// Bumped when a mapping is removed: each CPU running a vCPU of the VM
    /// invalidates its cached translations when it sees a new value.
    pub ept_generation: AtomicU32,
    /// Notifications raised in this VM and not yet taken by `wait`.
    notifications: AtomicU64,
    /// Non-zero, unique among the VMs of a node (so of a CPU).
    pub vpid: u16,
    kernel: &'static [u8],
    initrd: Option<&'static [u8]>,
    modules: Vec<(&'static [u8], String)>,
    boot: Mutex<Boot>,
    /// Its virtio-blk disk's node memory.
    disk: Option<GuestRam>,
    /// Running, ending or ended; its generation, checked-in and blocked
    /// vCPUs and restarts.
    pub life: Lifecycle,
    mailboxes: Vec<Mailbox>,
    /// IPIs to vCPUs that do not exist (dropped).
    pub lost_ipis: AtomicU64,
    /// Kick interrupts sent to other CPUs for this VM, and kicks not sent
    /// because one was on its way to that CPU already.
    kicks_sent: AtomicU64,
    kicks_coalesced: AtomicU64,
    /// Faults injected so far (the first few are reported).
    pub faults: AtomicU32,
    end: Mutex<Option<End>>,
    counts: [AtomicU64; REASONS.len()],
    root_ticks: [AtomicU64; REASONS.len()],
    guest_ticks: AtomicU64,
    /// The last time its memory was cleared (first start or restart).
    cleared: Mutex<Cleared>,
}

/// Memory cleared before a VM (re)starts, and what that cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cleared {
    pub bytes: u64,
    pub ticks: u64,
}

/// Zeroes `ram` and, if given, `disk`: nothing a VM finds in its memory
/// comes from before it started.
fn clear(ram: GuestRam, disk: Option<GuestRam>) -> Cleared {
    let start = cpu::rdtsc();
    let mut bytes = 0;
    for mut memory in core::iter::once(ram).chain(disk) {
        memory.zero();
        bytes += memory.size();
    }
    Cleared {
        bytes,
        ticks: cpu::rdtsc().saturating_sub(start),
    }
}

/// Why a VM could not be built.
#[derive(Debug)]
pub enum BuildError {
    MissingImage(String),
    /// The plan gave the VM memory its node does not own (a planner bug).
    NotNodeMemory,
    Load(loader::LoadError),
    Linux(linux::LinuxError),
    /// The ACPI tables do not fit the VM's RAM.
    Acpi,
    /// An initrd for a kernel that is not booted with the Linux protocol.
    InitrdWithoutLinux,
    Ept(atoll_platform::ept::EptError),
    /// The node heap cannot hold the VM's state (checked before the build,
    /// and every allocation that grows with the config is fallible).
    OutOfHeap {
        needed: usize,
        free: usize,
    },
    /// More VMs in the node than VPIDs (the config allows far fewer).
    TooManyVms,
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::MissingImage(name) => write!(
                f,
                "no boot module `vm-image:{name}`: the ISO must carry every kernel and module a [[vm]] names"
            ),
            BuildError::NotNodeMemory => {
                f.write_str("the VM's memory is not its node's guest memory")
            }
            BuildError::Load(e) => write!(f, "{e}"),
            BuildError::Linux(e) => write!(f, "{e}"),
            BuildError::Acpi => f.write_str(
                "the ACPI tables need RAM up to 1 MiB: give the VM more memory",
            ),
            BuildError::InitrdWithoutLinux => f.write_str(
                "`initrd` is for Linux kernels (bzImage); give a multiboot kernel its files as `modules`",
            ),
            BuildError::Ept(e) => write!(f, "{e}"),
            BuildError::OutOfHeap { needed, free } => write!(
                f,
                "the node heap has {free} bytes free, but the VM needs about {needed}: raise kernel_mib of its node, or give it fewer vCPUs"
            ),
            BuildError::TooManyVms => f.write_str("the node has more VMs than VPIDs"),
        }
    }
}

/// Node-heap bytes the loaders may take for a while during a build (the
/// multiboot information, the Linux command line).
const LOAD_SLACK: usize = 64 << 10;

impl Vm {
    /// About the node-heap bytes a VM of `spec` takes: its record and
    /// devices, and per vCPU its mailbox, its `HostedVcpu` record and its
    /// entries in the CPU lists. Checked against the heap's free bytes
    /// before the build, so a config the heap cannot hold stops that VM,
    /// not the host.
    pub fn heap_needed(spec: &VmSpec) -> usize {
        let per_vcpu = size_of::<Mailbox>()
            + size_of::<crate::sched::HostedVcpu>()
            + size_of::<u32>()
            + size_of::<(&Vm, u16)>();
        usize::from(spec.vcpus)
            .saturating_mul(per_vcpu)
            .saturating_add(size_of::<Vm>() + size_of::<VmBoard>() + LOAD_SLACK)
            .saturating_add(spec.cmdline.len().saturating_mul(4))
    }

    /// Builds the VM: its EPT (from `kmem`), its images loaded into its RAM.
    /// `heap_free` is what the node heap has free.
    pub fn build(
        local: usize,
        spec: VmSpec,
        node_plan: &NodePlan,
        kmem: &'static Mutex<KernelMemory>,
        heap_free: usize,
    ) -> Result<Vm, BuildError> {
        let needed = Self::heap_needed(&spec);
        if needed > heap_free {
            return Err(BuildError::OutOfHeap {
                needed,
                free: heap_free,
            });
        }
        let vpid = u16::try_from(local)
            .ok()
            .and_then(|l| l.checked_add(1))
            .ok_or(BuildError::TooManyVms)?;
        let kernel =
            images::find(&spec.kernel).ok_or(BuildError::MissingImage(spec.kernel.clone()))?;
        let modules = spec
            .modules
            .iter()
            .map(|m| {
                images::find(m)
                    .map(|bytes| (bytes, alloc::format!("vm-image:{m}")))
                    .ok_or_else(|| BuildError::MissingImage(m.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let initrd = match &spec.initrd {
            Some(name) => {
                Some(images::find(name).ok_or_else(|| BuildError::MissingImage(name.clone()))?)
            }
            None => None,
        };
        let disk = match spec.disk {
            Some(range) => {
                Some(guestram::for_vm(node_plan, range).ok_or(BuildError::NotNodeMemory)?)
            }
            None => None,
        };
        let mut ept = Ept::new(SharedFrames(kmem)).map_err(BuildError::Ept)?;
        ept.map(
            0,
            spec.memory.start.0,
            spec.memory.len,
            ept::Access::RWX,
            RegionKind::Ram,
        )
        .map_err(BuildError::Ept)?;
        let eptp = ept.pointer();
        let ram = guestram::for_vm(node_plan, spec.memory).ok_or(BuildError::NotNodeMemory)?;
        let cleared = clear(ram, disk);
        let vcpus = spec.vcpus;
        let channels = spec.channels.len();
        let mut mailboxes = Vec::new();
        mailboxes
            .try_reserve_exact(usize::from(vcpus))
            .map_err(|_| BuildError::OutOfHeap {
                needed,
                free: heap_free,
            })?;
        mailboxes.extend((0..vcpus).map(|id| Mailbox::new(Lapic::new(u32::from(id)).recipient())));
        let vm = Vm {
            local,
            vpid,
            spec,
            ram,
            eptp,
            ept: Mutex::new(ept),
            mapped: Mutex::new(alloc::vec![None; channels]),
            ept_generation: AtomicU32::new(0),
            notifications: AtomicU64::new(0),
            kernel,
            initrd,
            modules,
            boot: Mutex::new(Boot::Multiboot(EntryState {
                entry: 0,
                eax: 0,
                ebx: 0,
            })),
            disk,
            life: Lifecycle::new(vcpus),
            mailboxes,
            lost_ipis: AtomicU64::new(0),
            kicks_sent: AtomicU64::new(0),
            kicks_coalesced: AtomicU64::new(0),
            faults: AtomicU32::new(0),
            end: Mutex::new(None),
            counts: [const { AtomicU64::new(0) }; REASONS.len()],
            root_ticks: [const { AtomicU64::new(0) }; REASONS.len()],
            guest_ticks: AtomicU64::new(0),
            cleared: Mutex::new(cleared),
        };
        vm.load_images()?;
        Ok(vm)
    }

    /// Whether the kernel is booted with the Linux boot protocol (a
    /// bzImage), which also gives the VM the PC platform (ACPI, IOAPIC,
    /// virtio-mmio) its tables describe.
    pub fn is_linux(&self) -> bool {
        linux::is_bzimage(self.kernel)
    }

    /// Loads the kernel and its files into RAM (again, on restart).
    fn load_images(&self) -> Result<(), BuildError> {
        let boot = if self.is_linux() {
            Boot::Linux(self.load_linux()?)
        } else {
            if self.initrd.is_some() {
                return Err(BuildError::InitrdWithoutLinux);
            }
            let modules: Vec<Module<'_>> = self
                .modules
                .iter()
                .map(|(bytes, cmdline)| Module { bytes, cmdline })
                .collect();
            let mut ram = self.ram;
            let entry = loader::load(&mut ram, self.kernel, &modules, &self.spec.cmdline)
                .map_err(BuildError::Load)?;
            Boot::Multiboot(entry)
        };
        *self.boot.lock() = boot;
        Ok(())
    }

    /// ACPI tables for the VM's vCPUs, then the kernel, its initrd and its
    /// command line with the virtio devices appended.
    fn load_linux(&self) -> Result<LinuxEntry, BuildError> {
        let mut ram = self.ram;
        let acpi = AcpiConfig::new(u32::from(self.spec.vcpus));
        let rsdp = acpi::build(&mut ram, &acpi).map_err(|_| BuildError::Acpi)?;
        let places = board::virtio_places(&self.board_spec());
        // The guest learns its VM's name too (Atoll's guest names its host
        // after it); Linux leaves `atoll.vm` to /proc/cmdline.
        let own = alloc::format!("{} atoll.vm={}", self.spec.cmdline, self.spec.name);
        let cmdline = board::virtio_cmdline(&own, &places);
        let boot = LinuxBoot {
            image: self.kernel,
            initrd: self.initrd,
            cmdline: &cmdline,
            acpi_rsdp: Some(rsdp),
        };
        linux::load(&mut ram, &boot).map_err(BuildError::Linux)
    }

    /// How vCPU 0 starts (the loaded kernel's entry state).
    pub fn boot(&self) -> Boot {
        *self.boot.lock()
    }

    /// The board: what the config lists, plus the PC platform for a Linux
    /// kernel (always) or a VM with `platform = "pc"`. (A multiboot guest
    /// gets no ACPI tables: it finds the devices where a PC has them.)
    fn board_spec(&self) -> BoardSpec {
        let pc = self.is_linux() || self.spec.pc;
        let ports = if pc {
            // What the ACPI tables (atoll_vmm::acpi) describe, and what
            // Linux probes: a masked 8259 pair, the ACPI PM1a blocks, the
            // reset register, the CMOS RTC (without one Linux spins on its
            // update-in-progress bit, 20000 port accesses at each boot),
            // PCI configuration space with nothing in it.
            DeviceSet {
                pic: true,
                acpi_pm: true,
                reset: true,
                rtc: true,
                pci: true,
                ..self.spec.devices
            }
        } else {
            self.spec.devices
        };
        BoardSpec {
            ports,
            pc,
            virtio_blk: self.spec.virtio_blk,
            virtio_console: self.spec.virtio_console,
            ram_bytes: self.spec.memory.len,
            vcpus: self.spec.vcpus,
        }
    }

    /// The devices this VM starts with.
    pub fn new_devices(&self) -> VmBoard {
        Board::new(&self.board_spec(), self.disk.map(MemoryDisk))
    }

    pub fn is_running(&self) -> bool {
        self.life.is_running()
    }

    /// Counts one exit and the ticks around it.
    pub fn record_exit(&self, reason: ExitReason, guest: u64, root: u64) {
        let row = stats::row(reason);
        if let (Some(c), Some(t)) = (self.counts.get(row), self.root_ticks.get(row)) {
            c.fetch_add(1, Ordering::Relaxed);
            t.fetch_add(root, Ordering::Relaxed);
        }
        self.guest_ticks.fetch_add(guest, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (dst, src) in s.counts.iter_mut().zip(&self.counts) {
            *dst = src.load(Ordering::Relaxed);
        }
        for (dst, src) in s.root_ticks.iter_mut().zip(&self.root_ticks) {
            *dst = src.load(Ordering::Relaxed);
        }
        s.guest_ticks = self.guest_ticks.load(Ordering::Relaxed);
        s
    }

    /// Raises notifications `bits` in this VM (an inter-node signal) and
    /// wakes its vCPUs' CPUs, one of which may be waiting for them.
    pub fn notify(&self, node: &Node, bits: u64) {
        self.notifications.fetch_or(bits, Ordering::AcqRel);
        self.kick_cpus(node);
    }

    /// Takes the pending notifications (the `wait` hypercall).
    pub fn take_notifications(&self) -> u64 {
        self.notifications.swap(0, Ordering::AcqRel)
    }

    pub fn has_notifications(&self) -> bool {
        self.notifications.load(Ordering::Acquire) != 0
    }

    /// Per channel handle: its size and whether it is mapped.
    pub fn channel_state(&self) -> Vec<(u64, bool)> {
        let mapped = self.mapped.lock();
        self.spec
            .channels
            .iter()
            .zip(mapped.iter())
            .map(|((range, _), at)| (range.len, at.is_some()))
            .collect()
    }

    /// Guest-physical ranges a channel may not be mapped over: the local
    /// APIC page, the board's device windows (IOAPIC, virtio) and the
    /// channels mapped so far.
    pub fn taken_regions(&self) -> Vec<Region> {
        let mapped = self.mapped.lock();
        self.taken_with(&mapped)
    }

    /// [`taken_regions`](Self::taken_regions) with the mappings `mapped`
    /// (the `mapped` lock held by the caller).
    fn taken_with(&self, mapped: &[Option<u64>]) -> Vec<Region> {
        let mut taken = alloc::vec![Region {
            start: atoll_vmm::lapic::APIC_BASE_DEFAULT,
            len: 4096,
        }];
        if self.board_spec().pc {
            taken.push(Region {
                start: board::IOAPIC_BASE,
                len: ioapic::IOAPIC_LEN,
            });
        }
        for place in board::virtio_places(&self.board_spec()) {
            taken.push(Region {
                start: place.base,
                len: board::VIRTIO_WINDOW,
            });
        }
        for ((range, _), at) in self.spec.channels.iter().zip(mapped.iter()) {
            if let Some(gpa) = at {
                taken.push(Region {
                    start: *gpa,
                    len: range.len,
                });
            }
        }
        taken
    }

    /// Maps channel `handle` at `gpa`. The decoder checked the call on a
    /// snapshot; another vCPU may have mapped this channel, or another one
    /// over `gpa`, since: the check is made again here, with the `mapped`
    /// lock held until the mapping is recorded, so of two racing calls for
    /// one channel exactly one maps it and the other gets `Busy`.
    pub fn map_channel(&self, handle: u16, gpa: u64) -> Result<u64, HypercallError> {
        let Some(&(range, access)) = self.spec.channels.get(usize::from(handle)) else {
            return Err(HypercallError::BadHandle);
        };
        let mut mapped = self.mapped.lock();
        let taken = self.taken_with(&mapped);
        let mapping = mapped
            .get_mut(usize::from(handle))
            .ok_or(HypercallError::BadHandle)?;
        hypercall::check_mapping(
            mapping.is_some(),
            gpa,
            range.len,
            self.spec.memory.len,
            &taken,
        )?;
        let rights = match access {
            Access::ReadWrite => ept::Access::RW,
            Access::Read => ept::Access::R,
        };
        self.ept
            .lock()
            .map(gpa, range.start.0, range.len, rights, RegionKind::Channel)
            .map_err(|_| HypercallError::BadAddress)?;
        *mapping = Some(gpa);
        Ok(range.len)
    }

    /// Removes every channel mapping (a restart): the CPUs invalidate their
    /// cached translations when they reset their vCPUs.
    fn unmap_channels(&self) {
        let mut mapped = self.mapped.lock();
        let mut ept = self.ept.lock();
        for ((range, _), at) in self.spec.channels.iter().zip(mapped.iter_mut()) {
            if let Some(gpa) = at.take() {
                ept.unmap(gpa, range.len);
            }
        }
        self.ept_generation.fetch_add(1, Ordering::Release);
    }

    /// vCPU `id`'s mailbox.
    pub fn mailbox(&self, id: u16) -> Option<&Mailbox> {
        self.mailboxes.get(usize::from(id))
    }

    /// vCPU `id`'s local APIC may now recognise other destinations (a
    /// mode or logical ID change, a reset): publishes them for senders.
    pub fn publish_recipient(&self, id: u16, lapic: &Lapic) {
        if let Some(mailbox) = self.mailbox(id) {
            mailbox.publish(lapic.recipient());
        }
    }

    /// Delivers an IPI from vCPU `from` (its local APIC's ICR): posts it to
    /// each target's mailbox and kicks the target's CPU if it is another.
    /// A physical destination is a vCPU by APIC ID (= vCPU number); logical
    /// and broadcast destinations are matched against the recipients the
    /// vCPUs published. A destination no vCPU has is counted and dropped,
    /// as a real APIC bus would drop it.
    pub fn post_ipi(&self, node: &Node, from: u16, ipi: Ipi) {
        let route = routing::ipi(ipi, from, self.spec.vcpus, |t| self.recipient(t));
        self.post(node, &route);
    }

    /// Delivers interrupt messages from the VM's IOAPIC, raised while vCPU
    /// `from` ran: fixed ones to every local APIC the destination names,
    /// lowest-priority ones to the first of them (Atoll does not arbitrate
    /// priorities). Level-triggered messages set the receiver's TMR bit,
    /// so the EOI that ends them comes back to the IOAPIC.
    pub fn post_interrupts(&self, node: &Node, from: u16, messages: &[ioapic::Message]) {
        for m in messages {
            let route = routing::interrupt(m, from, self.spec.vcpus, |t| self.recipient(t));
            self.post(node, &route);
        }
    }

    /// What vCPU `id`'s local APIC last published it recognises.
    fn recipient(&self, id: u16) -> Option<atoll_vmm::lapic::Recipient> {
        self.mailbox(id).map(Mailbox::recipient)
    }

    /// Posts a routed message to each target's mailbox and kicks the
    /// target's CPU if it is another. No target, or a delivery the mailbox
    /// drops (NMI), counts as a lost IPI.
    fn post(&self, node: &Node, route: &Route) {
        if route.targets.is_empty() {
            self.lost_ipis.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let me = crate::arch::percpu::current().map(|c| c.cpu);
        for &target in &route.targets {
            let Some(mailbox) = self.mailbox(target) else {
                continue;
            };
            if !mailbox.post(route.delivery, route.level) {
                self.lost_ipis.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let cpu = self.spec.vcpu_cpus.get(usize::from(target)).copied();
            if cpu.is_some() && cpu != me {
                self.kick_cpu(node, cpu);
            }
        }
    }

    /// Kicks CPU `cpu` of the node, unless a kick is on its way to it
    /// already (Node::kick); counts either way.
    fn kick_cpu(&self, node: &Node, cpu: Option<u32>) {
        match cpu.and_then(|c| node.kick(c)) {
            Some(true) => self.kicks_sent.fetch_add(1, Ordering::Relaxed),
            Some(false) => self.kicks_coalesced.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }

    /// Asks the VM to end (the first request wins) and kicks the CPUs that
    /// run its vCPUs, so each parks its vCPU at once (thesis 6.4: only the
    /// owning CPU changes a vCPU).
    pub fn request_end(&self, node: &Node, end: End) {
        if !self.life.request_end() {
            return;
        }
        *self.end.lock() = Some(end);
        self.kick_cpus(node);
    }

    fn kick_cpus(&self, node: &Node) {
        let me = crate::arch::percpu::current().map(|c| c.cpu);
        let Some(plan) = node.plan.get() else { return };
        for cpu in plan.cpus.iter().filter(|c| Some(c.index.0) != me) {
            if self.spec.vcpu_cpus.contains(&cpu.index.0) {
                self.kick_cpu(node, Some(cpu.index.0));
            }
        }
    }

    /// A vCPU that can never run (its CPU could not set it up) checks out
    /// at once; the last one out finishes the VM.
    pub fn check_out(&self, node: &Node) {
        if self.life.check_out() {
            self.finish(node);
        }
    }

    /// The last vCPU out of an ending VM: reports how it ended, then
    /// restarts it or lets it stay down, as `lifecycle::decide` says.
    pub fn finish(&self, node: &Node) {
        let end = self.end.lock().take();
        self.flush_console(node);
        if let Some(end) = end {
            report_end(self, node, &end);
        }
        let restart_on_crash = self.spec.on_crash == OnCrash::Restart;
        match self.life.decide(end.as_ref(), restart_on_crash) {
            Finish::Restart(cause) if self.restart(node, cause) => return,
            Finish::Restart(_) => {}
            Finish::Stay {
                restarts_exhausted: true,
            } => log::warn!(
                "VM '{}' crashed after {MAX_RESTARTS} restarts; it stays stopped",
                self.spec.name
            ),
            Finish::Stay { .. } => {}
        }
        report_stats(self, node);
        crate::devwork::report(self, node);
        self.life.end();
        node.vm_ended(end.is_none_or(|e| e.is_failure()));
    }

    /// Reloads the images and starts a new generation; false if the images
    /// no longer load (then the VM stays down). Only crashes count against
    /// [`MAX_RESTARTS`]; the disk (node memory) keeps its contents.
    fn restart(&self, node: &Node, cause: Cause) -> bool {
        let fresh = self.new_devices();
        node.with_devices(self.local, |board| *board = fresh);
        self.unmap_channels();
        // RAM is cleared; the disk is the VM's own and survives, as a
        // disk survives a reset.
        let cleared = clear(self.ram, None);
        *self.cleared.lock() = cleared;
        if let Err(e) = self.load_images() {
            log::error!("VM '{}' cannot restart: {e}", self.spec.name);
            return false;
        }
        self.notifications.store(0, Ordering::Relaxed);
        let restarts = self.life.restart(cause);
        console::event("vm_restarted", |e| {
            e.field("vm", self.spec.name.as_str())
                .field("node", node.index)
                .field("restarts", restarts)
                .field("cause", cause.name())
                .field("cleared_mib", cleared.bytes >> 20)
                .field("clear_ticks", cleared.ticks)
        });
        self.kick_cpus(node);
        true
    }

    /// Prints what the guest wrote without a final newline.
    fn flush_console(&self, node: &Node) {
        let mut line = [0u8; atoll_vmm::devices::LINE_BYTES];
        let len = node
            .with_devices(self.local, |board| board.ports.uart.take_partial(&mut line))
            .flatten();
        if let Some(len) = len {
            print_guest_line(self, line.get(..len).unwrap_or(&[]));
        }
    }

    /// A vCPU of the VM went idle: if the VM has the keyboard and its UART
    /// driver has sent all it had, what the UART holds of an unfinished
    /// line (a prompt) is shown, the line left open for the rest. (A driver
    /// idles between chunks of a line too: those stay until the line ends.)
    pub fn show_prompt(&self, node: &Node) {
        if !console::has_focus(self.spec.global) {
            return;
        }
        let mut line = [0u8; atoll_vmm::devices::LINE_BYTES];
        let len = node
            .with_devices(self.local, |board| {
                let uart = &mut board.ports.uart;
                if uart.transmit_idle() {
                    uart.take_partial(&mut line)
                } else {
                    None
                }
            })
            .flatten();
        if let Some(len) = len {
            let text = core::str::from_utf8(line.get(..len).unwrap_or(&[])).unwrap_or("?");
            console::guest_partial(self.spec.global, &self.spec.name, text);
        }
    }

    /// Hands console input typed for this VM to its UART (the rest waits
    /// while the UART's FIFO is full), raising its interrupt. Called by
    /// the CPU of vCPU `vcpu`.
    pub fn take_console_input(&self, node: &Node, vcpu: u16) {
        let mut buf = [0u8; 16];
        let n = console::take_input(self.spec.global, &mut buf);
        let typed = buf.get(..n).unwrap_or(&[]);
        if typed.is_empty() {
            return;
        }
        let (taken, messages) = node
            .with_devices(self.local, |board| {
                (board.push_input(typed), board.take_messages())
            })
            .unwrap_or((0, Vec::new()));
        console::untake_input(self.spec.global, typed.get(taken..).unwrap_or(&[]));
        self.post_interrupts(node, vcpu, &messages);
    }

    /// Reports the VM when it starts (`vm_start`).
    pub fn report_start(&self, node: &Node) {
        let entry = match self.boot() {
            Boot::Multiboot(e) => u64::from(e.entry),
            Boot::Linux(e) => e.rip,
        };
        let mem = HexRange(self.spec.memory.start.0, self.spec.memory.end());
        let cleared = *self.cleared.lock();
        console::event("vm_start", |e| {
            e.field("vm", self.spec.name.as_str())
                .field("node", node.index)
                .field("vcpus", self.spec.vcpus)
                .field("cpus", self.spec.vcpu_cpus.as_slice())
                .field("mem", mem)
                .field("entry", Hex(entry))
                .field("cleared_mib", cleared.bytes >> 20)
                .field("clear_ticks", cleared.ticks)
        });
    }
}

/// A guest console line, prefixed with its VM's name.
/// Every source (UART, virtio-console, the console hypercall) goes
/// through `console_byte`: no guest byte reaches the operator's terminal
/// as a control character.
pub fn print_guest_line(vm: &Vm, line: &[u8]) {
    let shown: Vec<u8> = line
        .iter()
        .map(|&b| atoll_vmm::devices::console_byte(b))
        .collect();
    let text = core::str::from_utf8(&shown).unwrap_or("?");
    console::guest_line(vm.spec.global, &vm.spec.name, text);
}

fn report_end(vm: &Vm, node: &Node, end: &End) {
    let name = vm.spec.name.as_str();
    match *end {
        // Reported by `vm_restarted` (cause "reboot").
        End::Rebooted => {}
        End::Exited { status, vcpu } => console::event("vm_exit", |e| {
            e.field("vm", name)
                .field("node", node.index)
                .field("vcpu", vcpu)
                .field("status", status)
        }),
        End::Stopped { reason, vcpu, regs } => console::event("vm_stopped", |e| {
            let e = e
                .field("vm", name)
                .field("node", node.index)
                .field("vcpu", vcpu)
                .field("reason", reason.name())
                .field("detail", format_args!("{reason:?}"))
                .field("rip", Hex(regs.rip))
                .field("rsp", Hex(regs.gpr[4]))
                .field("rflags", Hex(regs.rflags))
                .field("cr0", Hex(regs.cr0))
                .field("cr3", Hex(regs.cr3))
                .field("cr4", Hex(regs.cr4))
                .field("efer", Hex(regs.efer))
                .field("cpl", regs.cpl);
            e.field(
                "on_crash",
                match vm.spec.on_crash {
                    OnCrash::Stop => "stop",
                    OnCrash::Restart => "restart",
                },
            )
        }),
    }
}

/// The `stats` event: exits per reason and the time outside the VM.
pub fn report_stats(vm: &Vm, node: &Node) {
    let s = vm.snapshot();
    let rows: Vec<(&str, u64, u64)> = s.rows().collect();
    let reasons: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let counts: Vec<u64> = rows.iter().map(|r| r.1).collect();
    let ticks: Vec<u64> = rows.iter().map(|r| r.2).collect();
    console::event("stats", |e| {
        e.field("vm", vm.spec.name.as_str())
            .field("node", node.index)
            .field("exits", s.exits())
            .field("guest_ticks", s.guest_ticks)
            .field("root_ticks", s.root_total())
            .field("outside_ppm", s.outside_ppm())
            .field("reasons", reasons.as_slice())
            .field("counts", counts.as_slice())
            .field("ticks", ticks.as_slice())
            .field("kicks", vm.kicks_sent.load(Ordering::Relaxed))
            .field(
                "kicks_coalesced",
                vm.kicks_coalesced.load(Ordering::Relaxed),
            )
            .field("lost_ipis", vm.lost_ipis.load(Ordering::Relaxed))
    });
}
