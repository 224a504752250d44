//! The Atoll VM monitor: everything about a VM that does not touch hardware.
//!
//! The hypervisor's arch layer turns each VM exit into a plain value and
//! hands it here; this crate decides what the exit means and answers with
//! plain values too. It reaches guest memory only through [`GuestMemory`],
//! so every module runs, and is tested, on the host with fakes.
//!
//! See `DESIGN.md` next to this crate for the exit flow, the device model
//! shape and the threat model (every guest-supplied value is hostile).
#![no_std]
#![forbid(unsafe_code)]
#![deny(clippy::cast_possible_truncation)]
#![deny(missing_docs)]
// Guest-facing code never panics: no unwrap, expect, panic, todo,
// unimplemented or unchecked indexing outside tests (compiler-checked).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::todo,
    clippy::unimplemented,
    clippy::indexing_slicing
)]
// Tests index, unwrap and cast freely: a panic there is a test failure,
// and their values are small constants chosen to fit.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::todo,
        clippy::indexing_slicing,
        clippy::cast_possible_truncation
    )
)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod acpi;
pub mod addr;
pub mod bits;
pub mod board;
pub mod cpuid;
pub mod devices;
pub mod dispatch;
pub mod exit;
pub mod hypercall;
pub mod ioapic;
pub mod lapic;
pub mod legacy;
pub mod lifecycle;
pub mod linux;
pub mod loader;
pub mod mailbox;
pub mod memory;
pub mod mmio;
pub mod msr;
pub mod routing;
pub mod stats;
pub mod vectoring;
pub mod virtio;
pub mod walk;

pub use addr::{GuestPhysAddr, VcpuId, VmId};
pub use memory::{GuestMemory, MemoryError, VecMemory};
