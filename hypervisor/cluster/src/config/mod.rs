//! The cluster config language: a TOML file that assigns the machine's CPUs
//! and memory to nodes, declares shared-memory channels and IPI rights
//! between them, and (from the next stage on) the VMs each node runs.
//!
//! [`ClusterConfig::parse`] checks everything that can be checked without the
//! hardware and returns a typed model in which every value keeps its
//! [`Location`]; the planner ([`crate::plan::plan`]) then checks the model
//! against the machine and reports hardware mismatches at the same
//! locations. The language reference is in this crate's `DESIGN.md`.
//!
//! ```toml
//! [[node]]
//! name = "db"
//! cpus = [0, 1]
//! mem_mib = 256
//!
//! [[node]]
//! name = "log"
//! count = 1
//! mem_mib = 64
//!
//! [[channel]]
//! name = "wal"
//! size_kib = 64
//! access = { db = "rw", log = "r" }
//!
//! [[ipi]]
//! from = "db"
//! to = "log"
//! notifications = [0]
//! ```

mod error;
mod nesting;
mod read;
mod schema;
mod tables;

pub use error::{
    ConfigError, ErrorKind, Located, Location, MAX_ERRORS, MAX_LISTED, MAX_SHOWN, listed, shown,
    utf8,
};
pub(crate) use error::{ErrorList, vm_index as vm_table};
pub use nesting::{MAX_ITEMS, MAX_NESTING, MAX_TABLES};

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::plan::{Access, NodeId};
use crate::topology::{CpuIndex, DomainId};

/// Kernel memory of a node that does not set `kernel_mib`: node heap, page
/// tables, per-CPU blocks and stacks fit comfortably for the CPU counts of
/// today's machines.
pub const DEFAULT_KERNEL_MIB: u64 = 8;
/// Smallest kernel memory: one 2 MiB block.
pub const MIN_KERNEL_MIB: u64 = 2;
/// Largest `mem_mib`, `kernel_mib` and `disk_mib` (16 TiB): keeps every
/// size in bytes far from `u64` overflow.
pub const MAX_MEM_MIB: u64 = 1 << 24;
/// Largest config file in bytes. The hypervisor parses and plans the
/// config in its 2 MiB boot heap; with at most [`MAX_ITEMS`] keys and
/// values and [`MAX_TABLES`] tables, the worst case `tests/limits.rs`
/// measures at this size stays within 5/8 of the heap. The default config is 4 KiB; a VM table about
/// 200 bytes; a 64-node cluster with a ring of channels about 15 KiB.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024;
/// CPUs Atoll can use: its boot discovery records at most this many (the
/// MADT limit of `atoll_platform::acpi`). Bounds `count`, the length of
/// `cpus` and every CPU index (0 to `MAX_CPUS - 1`).
pub const MAX_CPUS: usize = atoll_platform::acpi::MAX_CPUS;
/// Most `[[node]]` tables: every node needs a CPU of its own.
pub const MAX_NODES: usize = MAX_CPUS;
/// Most vCPUs of one VM: Linux runs a VM's local APICs in xAPIC mode,
/// whose APIC IDs are 8 bits with 0xFF the broadcast ID, so vCPUs 0 to
/// 254 are addressable. Also bounds the length of `pin`.
pub const MAX_VCPUS: u16 = 255;
/// Most `[[vm]]` tables of one node.
pub const MAX_VMS_PER_NODE: usize = 64;
/// Most `[[vm]]` tables in all.
pub const MAX_VMS: usize = 256;
/// Most `[[channel]]` tables.
pub const MAX_CHANNELS: usize = 256;
/// Most `[[ipi]]` tables.
pub const MAX_IPIS: usize = 1024;
/// Most `modules` of a VM.
pub const MAX_MODULES: usize = 16;
/// Most `signal` entries of a VM (its IPI capability handles).
pub const MAX_VM_SIGNALS: usize = 64;
/// Most `channels` of a VM (its channel handles).
pub const MAX_VM_CHANNELS: usize = 64;
/// Longest `kernel`, `initrd` or module path, in bytes.
pub const MAX_PATH_LEN: usize = 255;
/// Longest `cmdline`, in bytes: Atoll appends the VM's name and its
/// virtio devices, and Linux takes 2048 bytes in all (x86
/// `COMMAND_LINE_SIZE`).
pub const MAX_CMDLINE_LEN: usize = 1024;
/// Notifications per ordered node pair: the bits of the doorbell word.
pub const NOTIFICATIONS: u8 = 64;
/// Longest node, channel or VM name (they appear in events and tables).
pub const MAX_NAME_LEN: usize = 32;

/// A whole cluster config, checked for everything the hardware does not
/// decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The file name given to [`ClusterConfig::parse`]; errors name it.
    pub file: String,
    /// In file order: `nodes[i].id == NodeId(i)`. Never empty.
    pub nodes: Vec<NodeConfig>,
    /// The `[[channel]]` tables, in file order.
    pub channels: Vec<ChannelConfig>,
    /// As written; [`ClusterConfig::signals`] merges them per node pair.
    pub ipis: Vec<IpiConfig>,
    /// The `[[vm]]` tables, in file order.
    pub vms: Vec<VmConfig>,
}

/// One `[[node]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Its position among the `[[node]]` tables.
    pub id: NodeId,
    /// Unique, 1 to [`MAX_NAME_LEN`] characters of `a-z`, `0-9`, `_`, `-`.
    pub name: Located<String>,
    /// Which CPUs; located at the `cpus`, `numa` or `count` value.
    pub cpus: Located<CpuSelection>,
    /// All memory of the node in MiB, kernel memory included.
    pub mem_mib: Located<u64>,
    /// `kernel_mib` when the file sets it.
    pub kernel_mib: Option<Located<u64>>,
    /// The table itself (its `[[node]]` header).
    pub at: Location,
}

impl NodeConfig {
    /// Kernel memory in MiB: `kernel_mib`, or [`DEFAULT_KERNEL_MIB`].
    pub fn kernel_mib(&self) -> u64 {
        self.kernel_mib
            .as_ref()
            .map_or(DEFAULT_KERNEL_MIB, |k| k.value)
    }

    /// Where the kernel memory size comes from: `kernel_mib` if set, else
    /// `mem_mib` (the default applies to it).
    pub fn kernel_at(&self) -> &Location {
        self.kernel_mib.as_ref().map_or(&self.mem_mib.at, |k| &k.at)
    }
}

/// How a node chooses its CPUs: exactly one of `cpus`, `numa`, `count`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuSelection {
    /// `cpus = [..]`: these CPUs (MADT order of enabled CPUs), non-empty,
    /// without duplicates, none shared with another node's list.
    List(Vec<Located<CpuIndex>>),
    /// `numa = K`: every CPU of NUMA domain K; memory from domain K.
    Numa(DomainId),
    /// `count = N`: N CPUs the planner picks (N >= 1).
    Count(u32),
}

/// One `[[channel]]`: memory shared by two or more nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Unique among channels, same characters as node names.
    pub name: Located<String>,
    /// A multiple of 4 (whole 4 KiB pages), at least 4.
    pub size_kib: Located<u64>,
    /// In file order; at least two nodes, each once, at least one `rw`.
    pub access: Vec<ChannelGrant>,
    /// The table itself (its `[[channel]]` header).
    pub at: Location,
}

impl ChannelConfig {
    /// The size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_kib.value.saturating_mul(1024)
    }
}

/// One `node = "r" | "rw"` entry of a channel's `access`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelGrant {
    /// Located at the node name (the key).
    pub node: Located<NodeId>,
    /// Located at the `"r"` / `"rw"` value.
    pub access: Located<Access>,
}

/// One `[[ipi]]`: node `from` may raise `notifications` in node `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpiConfig {
    /// The node that raises.
    pub from: Located<NodeId>,
    /// The node that receives.
    pub to: Located<NodeId>,
    /// Non-empty, each in 0..64, no notification granted twice for the same
    /// ordered pair (across all `[[ipi]]` tables of that pair).
    pub notifications: Vec<Located<u8>>,
    /// The table itself (its `[[ipi]]` header).
    pub at: Location,
}

impl IpiConfig {
    /// The notifications as a bit mask (bit n = notification n).
    pub fn mask(&self) -> u64 {
        notification_mask(&self.notifications)
    }
}

/// A VM's fate when it crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnCrash {
    /// The VM stays stopped; the rest of the node runs on.
    #[default]
    Stop,
    /// The VM is booted again from its images.
    Restart,
}

/// The platform a VM's board has besides its `devices`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Platform {
    /// Only what `devices` lists (multiboot guests' default).
    #[default]
    Minimal,
    /// The PC platform: an IOAPIC, a masked 8259 pair, the ACPI PM1a
    /// blocks, the reset register, the CMOS RTC and an empty PCI
    /// configuration space. A bzImage guest always gets it.
    Pc,
}

/// One `[[vm]]`. Only its shape is checked at this stage; fitting it into
/// its node (vCPUs on the node's CPUs, memory within the node's guest
/// memory) is the VM loader's job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Unique among VMs, same characters as node names.
    pub name: Located<String>,
    /// The node the VM lives in.
    pub node: Located<NodeId>,
    /// 1 to [`MAX_VCPUS`].
    pub vcpus: Located<u16>,
    /// At least 1.
    pub mem_mib: Located<u64>,
    /// Path of the guest kernel image, non-empty.
    pub kernel: Located<String>,
    /// Path of the initial ramdisk, when the file sets one.
    pub initrd: Option<Located<String>>,
    /// The guest's command line, when the file sets one.
    pub cmdline: Option<Located<String>>,
    /// Paths of further boot modules (multiboot), in order.
    pub modules: Vec<Located<String>>,
    /// Device names, each from [`crate::plan::DEVICES`]; the defaults when
    /// empty.
    pub devices: Vec<Located<String>>,
    /// The virtio-blk disk's size in MiB, at least 1, when the file sets it.
    pub disk_mib: Option<Located<u64>>,
    /// `pin[i]` is the CPU vCPU i runs on; empty when not pinned.
    pub pin: Vec<Located<CpuIndex>>,
    /// `on_crash` when the file sets it.
    pub on_crash: Option<Located<OnCrash>>,
    /// `platform` when the file sets it.
    pub platform: Option<Located<Platform>>,
    /// The IPI capabilities it holds, in order (a capability's handle is
    /// its index).
    pub signals: Vec<VmSignalConfig>,
    /// The channels it may map, in order (handle = index).
    pub channels: Vec<Located<String>>,
    /// The table itself (its `[[vm]]` header).
    pub at: Location,
}

/// One `signal = [{ vm = ..., notifications = [...] }]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSignalConfig {
    /// The receiving VM's name (resolved by the planner).
    pub vm: Located<String>,
    /// The notifications it may raise there, each in 0..64.
    pub notifications: Vec<Located<u8>>,
    /// The entry itself.
    pub at: Location,
}

impl VmSignalConfig {
    /// The notifications as a bit mask.
    pub fn mask(&self) -> u64 {
        notification_mask(&self.notifications)
    }
}

/// Notification numbers (0..64) as a bit mask; others are ignored.
fn notification_mask(notifications: &[Located<u8>]) -> u64 {
    notifications.iter().fold(0, |m, n| {
        m | 1u64.checked_shl(u32::from(n.value)).unwrap_or(0)
    })
}

impl VmConfig {
    /// `on_crash`, or [`OnCrash::Stop`].
    pub fn on_crash(&self) -> OnCrash {
        self.on_crash.as_ref().map(|o| o.value).unwrap_or_default()
    }

    /// `platform`, or [`Platform::Minimal`].
    pub fn platform(&self) -> Platform {
        self.platform.as_ref().map(|p| p.value).unwrap_or_default()
    }
}

/// The IPI rights of one ordered node pair, merged over its `[[ipi]]` tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    /// The node that raises.
    pub from: NodeId,
    /// The node that receives.
    pub to: NodeId,
    /// Bit n set: `from` may raise notification n in `to`.
    pub notifications: u64,
}

impl ClusterConfig {
    /// Parses and checks a config. `file_name` is only used in errors.
    ///
    /// Returns the errors found, sorted by position: at most
    /// [`MAX_ERRORS`], then one [`ErrorKind::More`] line counting the
    /// rest. A text over [`MAX_CONFIG_BYTES`], nested deeper than
    /// [`MAX_NESTING`], or with more than [`MAX_ITEMS`] items or
    /// [`MAX_TABLES`] tables, is one error, and is not parsed. A TOML syntax error stops the checks (the rest of the
    /// document is unreliable); any other error lets the remaining checks
    /// run.
    pub fn parse(file_name: &str, text: &str) -> Result<ClusterConfig, Vec<ConfigError>> {
        Self::parse_skipping(file_name, text, &BTreeSet::new()).map_err(ErrorList::into_sorted)
    }

    /// Parses, leaving out the `[[vm]]` tables whose indices are in `skip`
    /// (refused VMs: see [`crate::plan::admit`]).
    pub(crate) fn parse_skipping(
        file_name: &str,
        text: &str,
        skip: &BTreeSet<usize>,
    ) -> Result<ClusterConfig, ErrorList> {
        if let Err(e) =
            check_size(file_name, text.len()).and_then(|()| nesting::check(file_name, text))
        {
            let mut list = ErrorList::new(file_name);
            list.push(e);
            return Err(list);
        }
        tables::parse(file_name, text, skip)
    }

    /// The node `id`, if the config has it.
    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.get(usize::from(id.0))
    }

    /// The node named `name`.
    pub fn node_id(&self, name: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|n| n.name.value == name)
            .map(|n| n.id)
    }

    /// The node's name, or `?` for an ID outside the config.
    pub fn node_name(&self, id: NodeId) -> &str {
        self.node(id).map_or("?", |n| n.name.value.as_str())
    }

    /// IPI rights per ordered node pair: several `[[ipi]]` tables for the
    /// same `from`/`to` merge into one entry. Ordered by first appearance.
    pub fn signals(&self) -> Vec<Signal> {
        let mut out: Vec<Signal> = Vec::new();
        for ipi in &self.ipis {
            let (from, to) = (ipi.from.value, ipi.to.value);
            match out.iter_mut().find(|s| s.from == from && s.to == to) {
                Some(s) => s.notifications |= ipi.mask(),
                None => out.push(Signal {
                    from,
                    to,
                    notifications: ipi.mask(),
                }),
            }
        }
        out
    }
}

/// A config of `len` bytes is within [`MAX_CONFIG_BYTES`]; else the error
/// (checked before anything is parsed, and by `check-config` before the
/// file is read).
pub fn check_size(file: &str, len: usize) -> Result<(), ConfigError> {
    if len <= MAX_CONFIG_BYTES {
        return Ok(());
    }
    Err(ConfigError::new(
        file,
        &Location::start_of_file(),
        ErrorKind::File,
        format!("the config is {len} bytes, more than the {MAX_CONFIG_BYTES} Atoll reads"),
        "split the cluster, or shorten the config (comments and blank lines count too)".into(),
    ))
}

#[cfg(test)]
mod tests;
