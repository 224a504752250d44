//! The machine as the boot CPU discovered it: CPUs (MADT), NUMA domains
//! (SRAT), distances (SLIT) and usable RAM (multiboot2 memory map).
//!
//! CPUs are numbered 0.. in MADT order of the enabled processors; that number
//! (a [`CpuIndex`]) is what a config's `cpus = [..]` lists. The APIC ID is
//! what the hardware uses to address an IPI.

mod spec;

pub use spec::SpecError;

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
    /// First byte.
    pub start: HostPhysAddr,
    /// Length in bytes.
    pub len: u64,
}

impl PhysRange {
    /// `[start, start + len)`.
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

    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &PhysRange) -> bool {
        self.start.0 < other.end() && other.start.0 < self.end()
    }

    /// Whether every byte of `other` is in `self`.
    pub fn contains(&self, other: &PhysRange) -> bool {
        self.start.0 <= other.start.0 && other.end() <= self.end()
    }
}

/// One processor the platform reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    /// Its position among the MADT's enabled processors.
    pub index: CpuIndex,
    /// Its local APIC ID as the MADT gives it (the x2APIC ID for x2APIC
    /// entries).
    pub apic_id: u32,
    /// Its SRAT proximity domain (0 without an SRAT).
    pub domain: DomainId,
}

/// A range of RAM and the domain it is close to (SRAT memory affinity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainMemory {
    /// The memory.
    pub range: PhysRange,
    /// The domain it is close to.
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

impl Topology {
    /// The boot CPU: [`Topology::boot_cpu`], or CPU 0 when unknown.
    pub fn boot_cpu_or_default(&self) -> CpuIndex {
        self.boot_cpu.unwrap_or(CpuIndex(0))
    }

    /// Whether the platform described its NUMA memory (an SRAT). Without
    /// one, all RAM is one domain and no node is tied to a domain.
    pub fn has_srat(&self) -> bool {
        !self.domain_memory.is_empty()
    }

    /// The CPU at `index`, if the platform has one.
    pub fn cpu(&self, index: CpuIndex) -> Option<&Cpu> {
        self.cpus.get(usize::try_from(index.0).ok()?)
    }

    /// Every domain that has a CPU or memory, sorted, each once.
    pub fn domains(&self) -> Vec<DomainId> {
        let mut domains: Vec<DomainId> = self
            .cpus
            .iter()
            .map(|c| c.domain)
            .chain(self.domain_memory.iter().map(|m| m.domain))
            .collect();
        domains.sort_unstable();
        domains.dedup();
        domains
    }

    /// A synthetic machine for tools and tests, from a spec such as
    /// `cpus=8,numa=2,mem-mib=4096`:
    ///
    /// - `cpus=N` (1 to 4096, required): CPUs 0..N, APIC ID = index.
    /// - `numa=D` (1 to `cpus`, default 1): CPUs split evenly over D domains
    ///   in index order (CPU i is in domain `i * D / N`).
    /// - `mem-mib=M` (alias `ram-mib`; 2 to 2^24, required): RAM is the
    ///   PC's low memory `0..0x9f000` plus `1 MiB..M MiB`. With D > 1 the
    ///   machine has an SRAT: `1 MiB..M MiB` is split evenly over the
    ///   domains at MiB boundaries and low memory is in domain 0. With D = 1
    ///   there is no SRAT (`domain_memory` is empty), as on a machine or
    ///   emulator without NUMA tables.
    /// - `boot-cpu=B` (default 0): the CPU that runs part 1 of the boot.
    ///
    /// Reserved: the first page (real-mode IVT and BIOS data) and
    /// `0x200000..0x600000`, where the hypervisor image is loaded.
    pub fn from_spec(spec: &str) -> Result<Topology, SpecError> {
        spec::parse(spec)
    }
}
