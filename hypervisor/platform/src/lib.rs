//! Hardware-independent boot logic of the Atoll hypervisor.
//!
//! Everything here works on plain bytes and values handed in by the
//! hypervisor's arch layer, so it runs, and is tested, on the host:
//!
//! - [`multiboot2`]: the boot loader's information block (memory map, command
//!   line, modules, ACPI RSDP), parsed from a byte slice and checked as hostile
//!   input.
//! - [`acpi`]: RSDP, RSDT/XSDT, MADT (local APIC, x2APIC and I/O APIC entries),
//!   the FADT/DSDT facts needed for ACPI S5 power-off and, in [`acpi::numa`],
//!   the SRAT and SLIT (NUMA domains and distances), read through the narrow
//!   [`acpi::PhysMemory`] trait.
//! - [`vmx`]: the VMX capability MSRs and what they allow (EPT, VPID,
//!   unrestricted guest), read through [`vmx::MsrRead`].
//! - [`ept`]: a VM's extended page tables (guest-physical to host-physical)
//!   and their memory-type policy, built through [`paging::TableMemory`].
//! - [`vmcs`]: the VMCS execution controls and a vCPU's initial guest state,
//!   as data the arch layer writes.
//! - [`cmdline`]: the hypervisor command line.
//! - [`event`]: the `@ev {json}` console event lines documented in
//!   `hypervisor/EVENTS.md`.
//!
//! See `DESIGN.md` next to this crate for why these are hand-written.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
// Tests index and unwrap freely: a panic there is a test failure.
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)
)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod acpi;
pub mod bytes;
pub mod cmdline;
pub mod ept;
pub mod event;
pub mod multiboot2;
pub mod paging;
pub mod vmcs;
pub mod vmx;

/// A host-physical address: the address space the hypervisor itself runs in.
///
/// Kept distinct from guest-physical addresses (which later issues add) so the
/// type system stops one being used as the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HostPhysAddr(pub u64);

impl HostPhysAddr {
    /// The address `offset` bytes further on, or `None` on overflow.
    pub fn checked_add(self, offset: u64) -> Option<Self> {
        self.0.checked_add(offset).map(Self)
    }
}

impl core::fmt::Display for HostPhysAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
