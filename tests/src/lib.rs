//! The Atoll emulator harness, shared by `cargo xtask` and the integration
//! tests in `tests/tests/`.
//!
//! It builds the hypervisor, makes a GRUB ISO with the cluster config as a
//! multiboot2 module, boots it in Bochs (VMX/EPT) or QEMU TCG (fast, NUMA, no
//! VMX), streams the serial console line by line, parses `@ev {json}` event
//! lines (hypervisor/EVENTS.md) and decides how the run ended. It hides the
//! emulators' quirks (see `tests/README.md`), enforces timeouts and runs at
//! most two emulators at once on this machine.
#![forbid(unsafe_code)]

pub mod build;
pub mod console;
pub mod cpio;
pub mod emulator;
pub mod event;
pub mod events_doc;
pub mod guests;
pub mod iso;
pub mod linux;
pub mod packages;
pub mod run;
pub mod slots;

pub use console::ConsoleInput;
pub use emulator::{Emulator, NumaNode};
pub use event::Event;
pub use run::{ConfigModule, Ending, RunOutcome, RunSpec, run};
