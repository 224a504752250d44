//! The node status board: one 4 KiB page per node in the image's `.status`
//! section (linker.ld). A node's page tables map its own page read-write
//! and every other node's read-only, so each node publishes its state
//! (booted, CPUs up, heartbeat) and anyone may read it, but no node can
//! write another's. The boot node waits on it before powering off.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The most nodes a cluster may have (the board's size): one per CPU the
/// MADT parser accepts, so a plan never has more.
pub const MAX_NODES: usize = atoll_platform::acpi::MAX_CPUS;

/// A node's published state.
#[repr(C, align(4096))]
pub struct StatusPage {
    /// [`NodeState`] as a number.
    state: AtomicU32,
    /// CPUs of the node that have come up.
    pub cpus_up: AtomicU32,
    /// Advanced by the node while it runs (self-tests watch it).
    pub heartbeat: AtomicU64,
    /// Set when the node has finished its part of the self-test.
    pub test_done: AtomicU32,
    /// The node's VMs that have not ended yet.
    pub vms_running: AtomicU32,
    /// The node's VMs that ended other than by exiting with status 0.
    pub vms_failed: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<StatusPage>() == 4096);

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    NotStarted = 0,
    /// Part 2 is done and every CPU of the node is up.
    Up = 1,
    /// The node stopped itself after a fault.
    Stopped = 2,
}

impl StatusPage {
    const fn new() -> Self {
        StatusPage {
            state: AtomicU32::new(0),
            cpus_up: AtomicU32::new(0),
            heartbeat: AtomicU64::new(0),
            test_done: AtomicU32::new(0),
            vms_running: AtomicU32::new(0),
            vms_failed: AtomicU32::new(0),
        }
    }

    pub fn state(&self) -> NodeState {
        match self.state.load(Ordering::Acquire) {
            1 => NodeState::Up,
            2 => NodeState::Stopped,
            _ => NodeState::NotStarted,
        }
    }

    pub fn set_state(&self, state: NodeState) {
        self.state.store(state as u32, Ordering::Release);
    }
}

// SAFETY: `.status` lies inside .bss (linker.ld), zeroed by the boot code;
// an all-zero StatusPage is `StatusPage::new()`. Node page tables give each
// node write access to its own page only.
#[unsafe(link_section = ".status")]
static BOARD: [StatusPage; MAX_NODES] = [const { StatusPage::new() }; MAX_NODES];

/// Node `index`'s page, if the board has one.
pub fn page(index: usize) -> Option<&'static StatusPage> {
    BOARD.get(index)
}
