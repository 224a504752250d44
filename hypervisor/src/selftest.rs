//! The multikernel self-tests, chosen with `selftest=NAME` on the command
//! line, and the idle behaviour when none is chosen.
//!
//! - `ipi`: every node pings every node it shares a read-write channel and
//!   IPI capabilities (both ways) with: it writes a sequence number into the
//!   channel and rings the peer's doorbell; the peer answers through the
//!   same channel and its own capability. Round trips are reported in TSC
//!   cycles (`ipi_rtt`). Then it floods each peer with signals and reports
//!   how few IPIs that took (`signal_flood`).
//! - `isolation`: the last node writes into the boot node's memory; its page
//!   tables must stop the write (`isolation_fault`), the writer's node stops,
//!   and the boot node's heartbeat keeps advancing (`heartbeat`).
//! - `lock`: every CPU of every node takes its node's big lock many times;
//!   each node reports its lock counters (`lock_stats`).
//! - `overflow`: the boot node's first CPU overflows its stack into the guard
//!   page below it; the double fault must be reported (a `panic` naming
//!   `#DF`), not reset the machine.
//! - `node-panic`: the last node panics while the boot node beats; the panic
//!   must stop every CPU of every node (the boot node's beats end, nothing
//!   powers off).
//!
//! Cross-node coordination goes only through the status board, channels and
//! doorbells, like any node-to-node traffic.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use atoll_cluster::plan::{Access, Plan};

use crate::arch::biglock::BigLock;
use crate::arch::status::{self, NodeState};
use crate::arch::{apic, cpu, idt, sharedmem, time};
use crate::console;
use crate::node::Node;

/// The self-test the command line chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selftest {
    None,
    Ipi,
    Isolation,
    Lock,
    Overflow,
    NodePanic,
}

impl Selftest {
    /// The multikernel self-tests by command-line name.
    pub fn from_name(name: &str) -> Option<Selftest> {
        match name {
            "ipi" => Some(Selftest::Ipi),
            "isolation" => Some(Selftest::Isolation),
            "lock" => Some(Selftest::Lock),
            "overflow" => Some(Selftest::Overflow),
            "node-panic" => Some(Selftest::NodePanic),
            _ => None,
        }
    }
}

/// The part of a channel the `ipi` test uses: four words on separate
/// 64-byte lines.
const PING_BYTES: u64 = 256;
/// Round trips per direction in the `ipi` test.
const IPI_ROUNDS: u64 = 16;
/// Signals per peer in the `ipi` test's flood.
const FLOOD_SIGNALS: u64 = 1000;
/// Lock acquisitions per CPU in the `lock` test.
const LOCK_ROUNDS: u64 = 2000;
/// Upper bound on any self-test wait, in microseconds.
const WAIT_US: u64 = 10_000_000;
/// Heartbeats the boot node reports after the isolation fault.
const HEARTBEATS: u64 = 3;

/// Node-local self-test state.
pub struct NodeTest {
    /// The node's big lock, guarding the `lock` test's shared counter.
    pub lock: BigLock<u64>,
    /// CPUs of this node that finished their part.
    finished_cpus: AtomicU32,
    /// Set once the node's first CPU releases the other CPUs.
    go: AtomicBool,
}

impl NodeTest {
    pub fn new() -> Self {
        NodeTest {
            lock: BigLock::new(0),
            finished_cpus: AtomicU32::new(0),
            go: AtomicBool::new(false),
        }
    }
}

/// What a node's first CPU does once its node is up (all but the boot node).
pub fn first_cpu_role(node: &'static Node) -> ! {
    match node.boot.selftest {
        Selftest::Ipi => {
            run_pings(node);
            node.status.test_done.store(1, Ordering::SeqCst);
        }
        Selftest::Lock => {
            run_lock_test(node);
        }
        Selftest::Isolation => {
            if Some(node.index) == isolation_attacker(&node.boot.plan) {
                attack(node);
            }
        }
        Selftest::NodePanic => {
            if Some(node.index) == isolation_attacker(&node.boot.plan) {
                wait_for_heartbeats(node);
                panic!(
                    "selftest=node-panic: a deliberate panic on node {}",
                    node.index
                );
            }
        }
        Selftest::None | Selftest::Overflow => {}
    }
    serve_forever(node)
}

/// What every other CPU does once up.
pub fn other_cpu_role(node: &'static Node, slot: usize) -> ! {
    if node.boot.selftest == Selftest::Lock {
        while !node.test.go.load(Ordering::Acquire) {
            cpu::wait_for_interrupt();
        }
        if !hammer_lock(node, slot) {
            log::error!("node {}: the node lock refused CPU slot {slot}", node.index);
        }
    }
    loop {
        cpu::wait_for_interrupt();
    }
}

/// The boot node's part, after every node is up; returns the power-off
/// status (0 = passed).
pub fn coordinate(node: &'static Node) -> u8 {
    match node.boot.selftest {
        Selftest::None => 0,
        Selftest::Ipi => {
            let ok = run_pings(node);
            node.status.test_done.store(1, Ordering::SeqCst);
            let all = wait_all_done(node);
            u8::from(!(ok && all))
        }
        Selftest::Lock => {
            let ok = run_lock_test(node);
            u8::from(!(ok && wait_all_done(node)))
        }
        Selftest::Isolation => u8::from(!watch_isolation(node)),
        Selftest::Overflow => overflow_stack(node.index as u64),
        Selftest::NodePanic => beat_until_stopped(node),
    }
}

/// Recurses until the stack runs into its guard page: the page fault cannot
/// push its frame there, so the CPU raises a double fault, which runs on its
/// IST stack and is reported as a panic (`#DF`).
fn overflow_stack(depth: u64) -> ! {
    let frame = core::hint::black_box([depth; 64]);
    if core::hint::black_box(frame[0]) == u64::MAX {
        cpu::halt_forever();
    }
    overflow_stack(depth + 1)
}

/// Answers pings and takes signals until the machine powers off.
fn serve_forever(node: &'static Node) -> ! {
    let peers = ping_peers(node);
    loop {
        serve(node, &peers);
        cpu::wait_for_interrupt();
    }
}

/// Waits (serving pings meanwhile) until every node finished its part.
fn wait_all_done(node: &'static Node) -> bool {
    let peers = ping_peers(node);
    let deadline = deadline();
    let nodes = node.boot.plan.nodes.len();
    loop {
        serve(node, &peers);
        let done = (0..nodes)
            .all(|i| status::page(i).is_some_and(|p| p.test_done.load(Ordering::SeqCst) != 0));
        if done {
            return true;
        }
        if cpu::rdtsc() > deadline {
            report_timeout(node, "waiting for every node to finish the self-test");
            return false;
        }
        cpu::wait_for_interrupt();
    }
}

fn report_timeout(node: &Node, what: &str) {
    console::event("error", |e| {
        e.field("kind", "selftest_timeout")
            .field("msg", format_args!("node {}: timed out {what}", node.index))
    });
}

// ---------------------------------------------------------------- signals

// ---------------------------------------------------------------- ipi test

/// A node this node can ping: a shared read-write channel plus IPI
/// capabilities both ways.
struct Peer {
    node: usize,
    /// Ping/pong words of the two directions, in the channel.
    words: &'static [AtomicU64],
    /// Notification this node may raise in the peer.
    notification: u32,
    /// Whether this node is the lower-numbered one of the pair (decides
    /// which half of the channel is whose).
    lower: bool,
}

impl Peer {
    /// Words at offsets 0/64 belong to the lower node's pings, 128/192 to
    /// the higher node's (separate cache lines).
    fn my_ping(&self) -> &AtomicU64 {
        &self.words[if self.lower { 0 } else { 16 }]
    }
    fn my_pong(&self) -> &AtomicU64 {
        &self.words[if self.lower { 8 } else { 24 }]
    }
    fn their_ping(&self) -> &AtomicU64 {
        &self.words[if self.lower { 16 } else { 0 }]
    }
    fn their_pong(&self) -> &AtomicU64 {
        &self.words[if self.lower { 24 } else { 8 }]
    }
}

fn ping_peers(node: &Node) -> Vec<Peer> {
    let plan = &node.boot.plan;
    let me = node.index;
    let Some(my_plan) = plan.nodes.get(me) else {
        return Vec::new();
    };
    let mut peers = Vec::new();
    for (peer, _) in plan.nodes.iter().enumerate().filter(|&(i, _)| i != me) {
        let shared = my_plan.channels.iter().find_map(|&(c, access)| {
            let ch = plan.channels.get(c)?;
            let both_rw = access == Access::ReadWrite
                && ch
                    .grants
                    .iter()
                    .any(|&(n, a)| usize::from(n.0) == peer && a == Access::ReadWrite);
            both_rw.then_some(c)
        });
        let cap = |from: usize, to: usize| {
            plan.signals
                .iter()
                .find(|s| usize::from(s.from.0) == from && usize::from(s.to.0) == to)
                .map(|s| s.notifications)
                .filter(|&bits| bits != 0)
        };
        let words = shared.and_then(|c| sharedmem::channel_words(plan, me, c, PING_BYTES));
        if let (Some(words), Some(out), Some(_)) = (words, cap(me, peer), cap(peer, me)) {
            peers.push(Peer {
                node: peer,
                words,
                notification: out.trailing_zeros(),
                lower: me < peer,
            });
        }
    }
    peers
}

/// Answers every peer whose ping is unanswered; consumes notifications.
fn serve(node: &Node, peers: &[Peer]) {
    for peer in peers {
        let Some(pending) = node.pending.get(peer.node) else {
            continue;
        };
        if pending.swap(0, Ordering::AcqRel) == 0 {
            continue;
        }
        let ping = peer.their_ping().load(Ordering::Acquire);
        if peer.their_pong().load(Ordering::Relaxed) != ping {
            peer.their_pong().store(ping, Ordering::Release);
            if let Err(e) = crate::signals::signal(node, peer.node, peer.notification) {
                log::error!("node {}: cannot answer node {}: {e}", node.index, peer.node);
            }
        }
    }
}

/// Pings every peer `IPI_ROUNDS` times; reports `ipi_rtt` per peer. Returns
/// whether every round trip completed.
fn run_pings(node: &'static Node) -> bool {
    let peers = ping_peers(node);
    if !wait_peers_up(node, &peers) {
        return false;
    }
    if peers.is_empty() && node.boot.plan.nodes.len() > 1 {
        console::event("error", |e| {
            e.field("kind", "selftest")
                .field("msg", format_args!("node {} shares no read-write channel with IPI capabilities both ways with any node; the ipi self-test needs one per pair", node.index))
        });
        return false;
    }
    let mut ok = true;
    for peer in &peers {
        let mut cycles = Vec::new();
        for round in 1..=IPI_ROUNDS {
            let start = cpu::rdtsc();
            peer.my_ping().store(round, Ordering::Release);
            if crate::signals::signal(node, peer.node, peer.notification).is_err()
                || !wait_pong(node, &peers, peer, round)
            {
                ok = false;
                break;
            }
            cycles.push(cpu::rdtsc().saturating_sub(start));
        }
        report_rtt(node.index, peer.node, &mut cycles);
    }
    for peer in &peers {
        ok &= flood(node, peer);
    }
    ok
}

/// Raises `FLOOD_SIGNALS` notifications at a peer as fast as possible and
/// reports how many IPIs that took: coalescing keeps it far below one per
/// signal, so a flooding node cannot starve its target with interrupts.
fn flood(node: &Node, peer: &Peer) -> bool {
    let mut ipis = 0u64;
    for _ in 0..FLOOD_SIGNALS {
        match crate::signals::signal(node, peer.node, peer.notification) {
            Ok(sent) => ipis += u64::from(sent),
            Err(_) => return false,
        }
    }
    console::event("signal_flood", |e| {
        e.field("from", node.index)
            .field("to", peer.node)
            .field("signals", FLOOD_SIGNALS)
            .field("ipis", ipis)
    });
    true
}

/// Waits until every peer node is up: only then may it be signalled.
fn wait_peers_up(node: &Node, peers: &[Peer]) -> bool {
    let deadline = deadline();
    let up = |peer: &Peer| status::page(peer.node).is_some_and(|p| p.state() == NodeState::Up);
    while !peers.iter().all(up) {
        if cpu::rdtsc() > deadline {
            report_timeout(node, "waiting for the other nodes to come up");
            return false;
        }
        cpu::wait_for_interrupt();
    }
    true
}

fn wait_pong(node: &Node, peers: &[Peer], peer: &Peer, round: u64) -> bool {
    let deadline = deadline();
    loop {
        serve(node, peers);
        if peer.my_pong().load(Ordering::Acquire) == round {
            return true;
        }
        if cpu::rdtsc() > deadline {
            report_timeout(node, "waiting for a pong");
            return false;
        }
        cpu::wait_for_interrupt();
    }
}

fn report_rtt(from: usize, to: usize, cycles: &mut [u64]) {
    cycles.sort_unstable();
    let median = cycles.get(cycles.len() / 2).copied().unwrap_or(0);
    console::event("ipi_rtt", |e| {
        e.field("from", from)
            .field("to", to)
            .field("rounds", cycles.len())
            .field("min_cycles", cycles.first().copied().unwrap_or(0))
            .field("median_cycles", median)
            .field("max_cycles", cycles.last().copied().unwrap_or(0))
    });
}

// ---------------------------------------------------------- isolation test

/// The node that attempts the stray write: the last node that is not the
/// boot node (`None` with a single node).
fn isolation_attacker(plan: &Plan) -> Option<usize> {
    (0..plan.nodes.len())
        .rev()
        .find(|&i| i != usize::from(plan.boot_node.0))
}

/// Writes into the boot node's memory; the write must fault (node.rs turns
/// the fault into `isolation_fault` and stops this node).
fn attack(node: &Node) {
    let plan = &node.boot.plan;
    let victim = usize::from(plan.boot_node.0);
    let Some(addr) = plan.nodes.get(victim).and_then(unused_word) else {
        return;
    };
    console::event("isolation_probe", |e| {
        e.field("node", node.index)
            .field("target", victim)
            .field("addr", atoll_platform::event::Hex(addr))
    });
    if !sharedmem::write_into_other_node(plan, node.index, addr) {
        log::error!(
            "node {}: no probe address in node {victim}'s memory",
            node.index
        );
        return;
    }
    console::event("error", |e| {
        e.field("kind", "isolation_broken").field(
            "msg",
            format_args!(
                "node {} wrote into node {victim}'s memory at {addr:#x} without a fault",
                node.index
            ),
        )
    });
}

/// Waits (bounded) until the boot node has beaten a few times, so its
/// beats are seen both before and (were the stop broken) after the panic.
fn wait_for_heartbeats(node: &Node) {
    let deadline = deadline();
    let boot = status::page(usize::from(node.boot.plan.boot_node.0));
    // One beat more than needed: the boot node counts a beat before it
    // prints it, so beat HEARTBEATS is whole on the console only once the
    // next one is counted.
    while boot.is_some_and(|p| p.heartbeat.load(Ordering::SeqCst) <= HEARTBEATS) {
        if cpu::rdtsc() > deadline {
            return;
        }
        cpu::wait_for_interrupt();
    }
}

/// `node-panic`, the boot node's side: beat until another node's panic
/// stops this CPU too (its NMI). Still running at the deadline means the
/// stop failed: the run powers off with a failure status.
fn beat_until_stopped(node: &Node) -> u8 {
    let deadline = deadline();
    while cpu::rdtsc() < deadline {
        let beat = node.status.heartbeat.fetch_add(1, Ordering::SeqCst) + 1;
        console::event("heartbeat", |e| {
            e.field("node", node.index).field("count", beat)
        });
        time::delay_us(10_000);
    }
    console::event("error", |e| {
        e.field("kind", "selftest")
            .field("msg", "a panic on another node did not stop the boot node")
    });
    1
}

/// A word of `node`'s memory outside its kernel memory: memory the node
/// does not use yet, so even a broken isolation would corrupt nothing live.
fn unused_word(node: &atoll_cluster::plan::NodePlan) -> Option<u64> {
    let kernel = node.kernel_memory;
    node.memory.iter().find_map(|range| {
        [range.end() - 8, range.start.0]
            .into_iter()
            .find(|&addr| !(kernel.start.0 <= addr && addr < kernel.end()))
    })
}

/// The boot node's side: wait for the fault, then show its heartbeat still
/// advancing. Returns whether the test passed.
fn watch_isolation(node: &Node) -> bool {
    let Some(attacker) = isolation_attacker(&node.boot.plan) else {
        console::event("error", |e| {
            e.field("kind", "selftest")
                .field("msg", "the isolation self-test needs at least two nodes")
        });
        return false;
    };
    let deadline = deadline();
    while crate::arch::shared::ISOLATION_FAULTS.load(Ordering::SeqCst) == 0 {
        if cpu::rdtsc() > deadline {
            report_timeout(node, "waiting for the isolation fault");
            return false;
        }
        cpu::wait_for_interrupt();
    }
    for _ in 0..HEARTBEATS {
        let beat = node.status.heartbeat.fetch_add(1, Ordering::SeqCst) + 1;
        console::event("heartbeat", |e| {
            e.field("node", node.index).field("count", beat)
        });
        time::delay_us(1000);
    }
    let stopped = status::page(attacker).is_some_and(|p| p.state() == NodeState::Stopped);
    log::info!("node {attacker} stopped after its stray write: {stopped}");
    stopped
}

// ---------------------------------------------------------------- lock test

/// The first CPU's part: release the other CPUs, hammer, wait for them,
/// report. Returns whether the counter came out exact.
fn run_lock_test(node: &'static Node) -> bool {
    node.test.go.store(true, Ordering::Release);
    let cpus = node.plan.get().map_or(1, |p| p.cpus.len()) as u32;
    for cpu in node.plan.get().iter().flat_map(|p| p.cpus.iter().skip(1)) {
        // Wake the others from HLT at once rather than at their next tick.
        let _ = apic::send_fixed(cpu.apic_id, idt::TIMER_VECTOR);
    }
    let mut ok = hammer_lock(node, 0);
    let deadline = deadline();
    while node.test.finished_cpus.load(Ordering::Acquire) < cpus {
        if cpu::rdtsc() > deadline {
            report_timeout(node, "waiting for the lock test's CPUs");
            return false;
        }
        core::hint::spin_loop();
    }
    // Counters first: reading the counter takes the lock once more.
    let stats = node.test.lock.stats();
    let counter = node.test.lock.lock(0, cpu::rdtsc).map_or(0, |c| *c);
    let expected = u64::from(cpus) * LOCK_ROUNDS;
    console::event("lock_stats", |e| {
        e.field("node", node.index)
            .field("cpus", cpus)
            .field("acquisitions", stats.acquisitions)
            .field("contended", stats.contended)
            .field("hold_cycles", stats.hold_total)
            .field("max_hold_cycles", stats.hold_max)
            .field("wait_cycles", stats.wait_total)
            .field("max_wait_cycles", stats.wait_max)
            .field("counter", counter)
            .field("expected", expected)
    });
    node.status.test_done.store(1, Ordering::SeqCst);
    ok &= counter == expected;
    ok
}

/// Takes the node lock `LOCK_ROUNDS` times as the CPU in `slot`; false if
/// the lock refused the slot.
fn hammer_lock(node: &Node, slot: usize) -> bool {
    let mut ok = true;
    for _ in 0..LOCK_ROUNDS {
        let Ok(mut counter) = node.test.lock.lock(slot, cpu::rdtsc) else {
            ok = false;
            break;
        };
        // A read-modify-write that is not atomic: only mutual exclusion
        // keeps increments from getting lost.
        let value = *counter;
        core::hint::spin_loop();
        *counter = value + 1;
    }
    node.test.finished_cpus.fetch_add(1, Ordering::AcqRel);
    ok
}

/// The TSC value at which a self-test wait gives up.
fn deadline() -> u64 {
    cpu::rdtsc().saturating_add(WAIT_US.saturating_mul(time::tsc_per_us()))
}
