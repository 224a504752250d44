//! The machine as the boot CPU discovered it: CPUs (MADT), NUMA domains
//! (SRAT), distances (SLIT) and usable RAM (multiboot2 memory map).
//!
//! CPUs are numbered 0.. in MADT order of the enabled processors; that number
//! (a [`CpuIndex`]) is what a config's `cpus = [..]` lists. The APIC ID is
//! what the hardware uses to address an IPI.

use alloc::vec::Vec;
use atoll_platform::HostPhysAddr;

/// A CPU's position among the enabled processors of the MADT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuIndex(pub u32);

/// A NUMA proximity domain as the SRAT names it (0 when there is no SRAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainId(pub u32);

/// A half-open range of host-physical memory `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysRange {
    pub start: HostPhysAddr,
    pub len: u64,
}

impl PhysRange {
    pub const fn new(start: u64, len: u64) -> Self {
        Self {
            start: HostPhysAddr(start),
            len,
        }
    }

    /// One past the last byte, saturating at `u64::MAX`.
    pub fn end(&self) -> u64 {
        self.start.0.saturating_add(self.len)
    }

    pub fn overlaps(&self, other: &PhysRange) -> bool {
        self.start.0 < other.end() && other.start.0 < self.end()
    }

    pub fn contains(&self, other: &PhysRange) -> bool {
        self.start.0 <= other.start.0 && other.end() <= self.end()
    }
}

/// One processor the platform reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    pub index: CpuIndex,
    pub apic_id: u32,
    pub domain: DomainId,
}

/// A range of RAM and the domain it is close to (SRAT memory affinity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainMemory {
    pub range: PhysRange,
    pub domain: DomainId,
}

/// Everything the planner needs to know about the machine.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Topology {
    /// Enabled processors, in MADT order (`cpus[i].index == CpuIndex(i)`).
    pub cpus: Vec<Cpu>,
    /// The CPU running part 1 of the boot; it becomes the first CPU of the
    /// first node.
    pub boot_cpu: Option<CpuIndex>,
    /// Memory affinity from the SRAT. Empty when the platform has no SRAT:
    /// then all RAM is in domain 0.
    pub domain_memory: Vec<DomainMemory>,
    /// SLIT distances, row-major `domains x domains`, if the platform has one.
    pub distances: Option<Vec<u8>>,
    /// RAM the boot loader reported as available (multiboot2 memory map).
    pub ram: Vec<PhysRange>,
    /// Memory nothing may be planned into: the hypervisor image, boot modules,
    /// the multiboot2 information, the boot CPU's page tables and stack.
    pub reserved: Vec<PhysRange>,
}
