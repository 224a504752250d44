//! Hostile cases against the PC platform (`platform = "pc"`: the IOAPIC
//! and the legacy ports a Linux VM gets), the xAPIC page, cross-CPU IPIs,
//! racing hypercalls, and interrupt shadows (MOV SS, STI) across exits.
//! Each ends with a `guest_case` report: Atoll refused or absorbed every
//! attempt, the guest saw the documented answers, and the VM runs on.

use core::sync::atomic::{AtomicI64, AtomicU32, Ordering::SeqCst};

use atoll_guest_rt::hypercall::{self, call};
use atoll_guest_rt::idt::{self, TrapFrame};
use atoll_guest_rt::mem::{read_u32, write_u32};
use atoll_guest_rt::{port, println, rdtsc, shadow, smp, x2apic};

use super::report;

/// Spins until `done` or about `ticks` TSC ticks pass; returns `done()`.
fn wait_until(ticks: u64, done: impl Fn() -> bool) -> bool {
    let deadline = rdtsc().saturating_add(ticks);
    while !done() && rdtsc() < deadline {
        core::hint::spin_loop();
    }
    done()
}

// ---- map_channel from two vCPUs at once ----------------------------------

/// Channels the VM holds (handles 0..CHANNELS), one race each.
const CHANNELS: u32 = 8;
static ARRIVED: AtomicU32 = AtomicU32::new(0);
static GO: AtomicU32 = AtomicU32::new(0);
static AP_RESULT: [AtomicI64; CHANNELS as usize] = [const { AtomicI64::new(1) }; CHANNELS as usize];
static AP_DONE: AtomicU32 = AtomicU32::new(0);

/// Where vCPU `who` maps channel `handle`: two disjoint addresses above
/// RAM, so only "mapped already" can refuse one of them.
fn channel_address(who: u64, handle: u32) -> u64 {
    (1 + who) << 32 | u64::from(handle) << 20
}

fn map(who: u64, handle: u32) -> i64 {
    let (rax, ..) = call(
        hypercall::MAP_CHANNEL,
        u64::from(handle),
        channel_address(who, handle),
        0,
        0,
    );
    hypercall::status(rax)
}

fn race_ap(_id: u32) {
    for round in 0..CHANNELS {
        ARRIVED.fetch_add(1, SeqCst);
        while GO.load(SeqCst) <= round {
            core::hint::spin_loop();
        }
        if let Some(r) = AP_RESULT.get(round as usize) {
            r.store(map(1, round), SeqCst);
        }
        AP_DONE.fetch_add(1, SeqCst);
    }
}

/// Both vCPUs map the same channel at two addresses at the same moment,
/// once per channel: exactly one gets 0, the other `busy` (-6).
pub fn map_channel_race() -> u32 {
    let case = "map-channel-race-all-vcpus";
    x2apic::enable();
    if smp::start_aps(2, race_ap, 4_000_000_000) != 1 {
        return report(case, false, "vCPU 1 did not start");
    }
    let mut wrong = 0;
    for round in 0..CHANNELS {
        while ARRIVED.load(SeqCst) <= round {
            core::hint::spin_loop();
        }
        GO.store(round + 1, SeqCst);
        let mine = map(0, round);
        while AP_DONE.load(SeqCst) <= round {
            core::hint::spin_loop();
        }
        let theirs = AP_RESULT.get(round as usize).map_or(1, |r| r.load(SeqCst));
        let one_won = matches!((mine, theirs), (0, -6) | (-6, 0));
        if !one_won {
            println!("hostile: channel {round}: vCPU 0 got {mine}, vCPU 1 got {theirs}");
            wrong += 1;
        }
    }
    // The winner's mapping stays the only one: mapping again is `busy`.
    let again = (0..CHANNELS).filter(|&h| map(0, h) != -6).count();
    report(
        case,
        wrong == 0 && again == 0,
        "one mapping per channel, the other busy",
    )
}

// ---- an IPI flood to the vCPU on the other CPU ---------------------------

const FLOOD: u8 = 0x41;
const LAST: u8 = 0x42;
static STOP: AtomicU32 = AtomicU32::new(0);

fn storm_ap(_id: u32) {
    while STOP.load(SeqCst) == 0 {
        idt::wait_for_interrupt();
        idt::disable_interrupts();
    }
}

/// vCPU 0 sends `count` fixed IPIs to vCPU 1 as fast as it can, then one
/// of another vector, which must arrive (no request is lost when kicks
/// coalesce).
pub fn ipi_storm(count: u64) -> u32 {
    let case = "ipi-storm-all-vcpus";
    x2apic::enable();
    if smp::start_aps(2, storm_ap, 4_000_000_000) != 1 {
        return report(case, false, "vCPU 1 did not start");
    }
    for _ in 0..count {
        x2apic::send_ipi(1, 0, FLOOD);
    }
    x2apic::send_ipi(1, 0, LAST);
    let last = wait_until(2_000_000_000, || idt::interrupts(LAST) == 1);
    STOP.store(1, SeqCst);
    x2apic::send_ipi(1, 0, LAST);
    let got = u64::from(idt::interrupts(FLOOD));
    println!("hostile: {count} IPIs sent, {got} taken (pending ones merge)");
    report(
        case,
        last && got >= 1 && got <= count,
        "the flood arrived merged, the last IPI too",
    )
}

// ---- the IOAPIC -------------------------------------------------------------

const IOAPIC: u64 = 0xfec0_0000;
const IOWIN: u64 = IOAPIC + 0x10;
/// COM1's pin, and its redirection entry's low register.
const UART_PIN: u32 = 4;
const UART_REDTBL: u32 = 0x10 + 2 * UART_PIN;
const MASKED: u32 = 1 << 16;
const LEVEL: u32 = 1 << 15;
const REMOTE_IRR: u32 = 1 << 14;

fn io_write(index: u32, value: u32) {
    write_u32(IOAPIC, index);
    write_u32(IOWIN, value);
}

fn io_read(index: u32) -> u32 {
    write_u32(IOAPIC, index);
    read_u32(IOWIN)
}

/// Pin 4 as `low` (vector, delivery mode, ...) to destination `dest`.
/// Masking keeps the trigger mode: switching an entry to edge clears its
/// remote IRR (what Linux's EOI workaround for old IOAPICs relies on),
/// which would hide whether an EOI cleared it.
fn route_uart(low: u32, dest: u8) {
    io_write(UART_REDTBL, MASKED | (low & LEVEL));
    io_write(UART_REDTBL + 1, u32::from(dest) << 24);
    io_write(UART_REDTBL, low);
}

/// One rising edge on IRQ 4: the 16550 raises its THR-empty interrupt as
/// soon as it is enabled (its THR is always empty), OUT2 gates it onto
/// the line, and reading IIR clears it.
fn uart_edge() {
    const COM1: u16 = 0x3f8;
    port::outb(COM1 + 4, 0x08); // MCR: OUT2
    port::outb(COM1 + 1, 0x02); // IER: THR empty
    let _ = port::inb(COM1 + 2); // IIR: clears it
    port::outb(COM1 + 1, 0x00);
    port::outb(COM1 + 4, 0x00);
}

/// Fires pin 4 once as `low` to `dest`, then masks it; how many times
/// `vector` arrived.
fn fire(low: u32, dest: u8, vector: u8) -> u32 {
    let before = idt::interrupts(vector);
    route_uart(low, dest);
    uart_edge();
    // Anything deliverable arrives at the next VM entry; give it time.
    let _ = wait_until(200_000, || idt::interrupts(vector) != before);
    io_write(UART_REDTBL, MASKED | (low & LEVEL));
    idt::interrupts(vector) - before
}

/// Redirection entries no PC would program: vectors 0-15, delivery modes
/// that send nothing here (SMI, INIT, ExtINT, reserved) or are dropped
/// (NMI: Atoll offers no virtual NMI), destinations nobody has; register
/// indices past the table, read-only registers. Each must be refused
/// without harm; the legal entries around them must still work.
pub fn ioapic_redirection() -> u32 {
    let case = "ioapic-redirection";
    x2apic::enable();
    idt::enable_interrupts();
    let mut wrong = 0u32;
    let mut check = |what: &str, ok: bool| {
        if !ok {
            println!("hostile: ioapic: {what}");
            wrong += 1;
        }
    };
    check("IOAPIC version", io_read(1) == 0x0017_0020);
    // Control: a fixed entry to vCPU 0 delivers.
    check("fixed entry", fire(0x50, 0, 0x50) == 1);
    // Vectors 0-15 are illegal (SDM 11.5.3, 82093AA 3.2.4): a delivered
    // one would arrive as an exception and end this guest.
    for vector in 0..16u32 {
        let _ = fire(vector, 0, 0x50);
    }
    // SMI (2), reserved (3, 6), INIT (5), ExtINT (7): nothing arrives;
    // NMI (4) is dropped. A delivered INIT would reset this vCPU, an NMI
    // would arrive as exception 2.
    for mode in [2u32, 3, 4, 5, 6, 7] {
        check("delivery mode", fire(0x51 | mode << 8, 0, 0x51) == 0);
    }
    // Destinations no vCPU has: physical 7 and 0xfe, logical 0x80 and 0.
    check("physical 7", fire(0x52, 7, 0x52) == 0);
    check("physical 0xfe", fire(0x52, 0xfe, 0x52) == 0);
    check("logical 0x80", fire(0x52 | 1 << 11, 0x80, 0x52) == 0);
    check("logical 0", fire(0x52 | 1 << 11, 0, 0x52) == 0);
    // The broadcast and lowest priority reach vCPU 0.
    check("broadcast", fire(0x53, 0xff, 0x53) == 1);
    check("lowest priority", fire(0x54 | 1 << 8, 0, 0x54) == 1);
    // Registers past the table read 0 and keep nothing.
    for index in [0x40u32, 0x41, 0x7f, 0xff] {
        io_write(index, 0xdead_beef);
        check("index past the table", io_read(index) == 0);
    }
    // IOREGSEL keeps its low 8 bits only.
    write_u32(IOAPIC, 0xffff_ff01);
    check("IOREGSEL width", read_u32(IOAPIC) == 1);
    // Version and arbitration are read-only; the ID keeps bits 27:24.
    io_write(1, 0);
    check("version read-only", io_read(1) == 0x0017_0020);
    io_write(2, 0xffff_ffff);
    io_write(0, 0xffff_ffff);
    check("ID bits", io_read(0) == 0x0f00_0000);
    io_write(0, 0);
    // Delivery status (12) and remote IRR (14) are read-only.
    io_write(UART_REDTBL, MASKED | 1 << 12 | REMOTE_IRR | 0x55);
    check(
        "read-only entry bits",
        io_read(UART_REDTBL) == MASKED | 0x55,
    );
    // Every other byte of the page reads 0.
    let others = (0x04..0x1000u64)
        .step_by(4)
        .filter(|o| *o != 0x10 && *o != 0x40)
        .any(|o| read_u32(IOAPIC + o) != 0);
    check("the rest of the page", !others);
    io_write(UART_REDTBL, MASKED);
    idt::disable_interrupts();
    report(case, wrong == 0, "bad entries refused, good ones delivered")
}

/// A level-triggered entry: its message sets remote IRR, and the local
/// APIC's EOI for its vector must clear it (82093AA 3.2.4; SDM 11.8.5),
/// so the pin fires again.
pub fn ioapic_level_eoi() -> u32 {
    let case = "ioapic-level-eoi";
    x2apic::enable();
    idt::enable_interrupts();
    let low = 0x56 | LEVEL;
    let first = fire(low, 0, 0x56);
    // `fire` masked the pin again; the guest's handler sent the EOI.
    let irr_after_eoi = io_read(UART_REDTBL) & REMOTE_IRR != 0;
    let second = fire(low, 0, 0x56);
    idt::disable_interrupts();
    println!(
        "hostile: level entry: {first} then {second} delivered, remote IRR after EOI {irr_after_eoi}"
    );
    report(
        case,
        first == 1 && second == 1 && !irr_after_eoi,
        "the EOI reached the IOAPIC",
    )
}

// ---- the legacy ports --------------------------------------------------------

/// 8259 command sequences, the RTC at indices past its 128 bytes, PCI
/// configuration addresses with reserved bits at every size, ACPI PM1a
/// control with every sleep type but S5, unclaimed ports at every size.
pub fn legacy_ports() -> u32 {
    let case = "legacy-ports";
    let mut wrong = 0u32;
    let mut check = |what: &str, ok: bool| {
        if !ok {
            println!("hostile: ports: {what}");
            wrong += 1;
        }
    };
    // 8259A: ICW1-4, then OCWs, then nonsense; the mask reads back.
    for (cmd, data) in [(0x20u16, 0x21u16), (0xa0, 0xa1)] {
        port::outb(cmd, 0x11);
        port::outb(data, 0x20);
        port::outb(data, 0x04);
        port::outb(data, 0x01);
        port::outb(data, 0xa5);
        check("8259 mask", port::inb(data) == 0xa5);
        for ocw in [0x20u8, 0x60, 0xe7, 0x0a, 0x0b, 0x48, 0x68, 0xff] {
            port::outb(cmd, ocw);
            let _ = port::inb(cmd);
        }
        port::outw(cmd, 0xffff);
        port::outl(cmd, 0xffff_ffff);
        let _ = port::inw(cmd);
        let _ = port::inl(data);
        port::outb(data, 0xff);
    }
    // RTC: indices 0x80-0xff (bit 7 is NMI-disable on a PC), then back.
    for index in [0x80u8, 0x8d, 0xff, 0x7f] {
        port::outb(0x70, index);
        let _ = port::inb(0x71);
        port::outb(0x71, 0x5a);
    }
    port::outw(0x70, 0xffff);
    port::outl(0x70, 0xffff_ffff);
    let _ = port::inl(0x70);
    port::outb(0x70, 0x00);
    check("RTC seconds are BCD", port::inb(0x71) < 0x60);
    // PCI mechanism 1: reserved bits (30:24, 1:0), every size.
    for address in [0x8000_0000u32, 0xff00_0003, 0x7fff_fffc, 0x8000_f8fc] {
        port::outl(0xcf8, address);
        check("no PCI device", port::inl(0xcfc) == 0xffff_ffff);
        check("no PCI device (word)", port::inw(0xcfe) == 0xffff);
        check("no PCI device (byte)", port::inb(0xcff) == 0xff);
        port::outl(0xcfc, 0x1234_5678);
        port::outw(0xcfa, 0xffff);
        port::outb(0xcfb, 0x01);
        let _ = port::inb(0xcfb);
        let _ = port::inw(0xcf8);
    }
    port::outl(0xcf8, 0x8000_0010);
    check("CONFIG_ADDRESS reads back", port::inl(0xcf8) == 0x8000_0010);
    // PM1a control with SLP_EN and each sleep type but 5 (S5 is a
    // power-off), at every size; the enable block too.
    for typ in [0u16, 1, 2, 3, 4, 6, 7] {
        let control = 1 << 13 | typ << 10 | 1;
        port::outw(0x604, control);
        port::outb(0x605, (control >> 8) as u8);
        port::outl(0x604, u32::from(control));
    }
    port::outw(0x602, 0xffff);
    port::outl(0x600, 0xffff_ffff);
    check("PM1 status reads 0", port::inw(0x600) == 0);
    // The reset register without its reset bit (2): kept, no reset.
    port::outb(0xcf9, 0x0a);
    check("reset control", port::inb(0xcf9) == 0x0a);
    port::outb(0xcf9, 0x00);
    // Ports nobody claims (PIT, port B, COM2, LPT, Bochs' 0xe9, 0x100):
    // writes vanish, reads are all ones at every size.
    for p in [0x40u16, 0x43, 0x61, 0x2f8, 0x378, 0xe9, 0x100, 0xffff] {
        port::outb(p, 0xff);
        port::outw(p, 0xffff);
        port::outl(p, 0xffff_ffff);
        check("unclaimed byte", port::inb(p) == 0xff);
        check("unclaimed word", port::inw(p) == 0xffff);
        check("unclaimed dword", port::inl(p) == 0xffff_ffff);
    }
    report(case, wrong == 0, "every port answered as documented")
}

// ---- the xAPIC page ------------------------------------------------------------

const XAPIC: u64 = 0xfee0_0000;

fn apic_read(offset: u64) -> u32 {
    read_u32(XAPIC + offset)
}

fn apic_write(offset: u64, value: u32) {
    write_u32(XAPIC + offset, value);
}

/// Sends an ICR (xAPIC: high half first, the low half sends).
fn icr(low: u32, dest: u8) {
    apic_write(0x310, u32::from(dest) << 24);
    apic_write(0x300, low);
}

/// Every offset of the xAPIC page read and written, reserved and
/// read-only registers included; ICRs with illegal vectors and delivery
/// modes; the timer at its extremes; LVT masks. The APIC stays in xAPIC
/// mode (the page is what a Linux VM without x2APIC uses).
pub fn xapic_page() -> u32 {
    let case = "xapic-page";
    x2apic::use_xapic_eoi();
    let mut wrong = 0u32;
    let mut check = |what: &str, ok: bool| {
        if !ok {
            println!("hostile: xapic: {what}");
            wrong += 1;
        }
    };
    apic_write(0xf0, 0x1ff); // SVR: enabled, spurious 0xff
    check("ID", apic_read(0x20) == 0);
    check("version", apic_read(0x30) & 0xff == 0x14);
    // Every offset reads; unaligned ones and reserved registers read 0.
    let mut odd = 0;
    for offset in (0..0x1000u64).step_by(4) {
        let v = apic_read(offset);
        if offset % 16 != 0 && v != 0 {
            odd += 1;
        }
    }
    check("unaligned offsets read 0", odd == 0);
    // Writes to read-only and reserved offsets change nothing.
    let read_only = [0x20u64, 0x30, 0x90, 0xa0, 0xc0, 0x100, 0x180, 0x200, 0x390];
    let before: [u32; 9] = core::array::from_fn(|i| apic_read(read_only[i]));
    for offset in read_only {
        apic_write(offset, 0xffff_ffff);
    }
    let after: [u32; 9] = core::array::from_fn(|i| apic_read(read_only[i]));
    check("read-only registers", before == after);
    for offset in [
        0x000u64, 0x010, 0x040, 0x070, 0x3f0, 0x400, 0xff0, 0x304, 0x3f4,
    ] {
        apic_write(offset, 0xffff_ffff);
    }
    check("SVR kept", apic_read(0xf0) == 0x1ff);
    idt::enable_interrupts();
    // ICR: illegal vectors (0-15) to self and others, reserved delivery
    // modes, NMI (dropped), INIT to a vCPU that does not exist, SIPI to a
    // running vCPU (ignored), an INIT de-assert broadcast (nothing).
    for vector in 0..16u32 {
        icr(vector | 1 << 18, 0); // self
        icr(vector, 0);
    }
    // Atoll's ESR collects errors until written (crate lapic).
    check("ESR: send illegal vector", apic_read(0x280) & (1 << 5) != 0);
    apic_write(0x280, 0);
    check("ESR cleared", apic_read(0x280) == 0);
    for mode in [2u32, 3, 4, 7] {
        icr(0x60 | mode << 8, 0);
        icr(0x60 | mode << 8 | 1 << 18, 0);
    }
    icr(0x500 | 1 << 14, 5); // INIT to vCPU 5: nobody
    icr(0x600 | 0x08 | 1 << 18, 0); // SIPI to self while running
    icr(0x500 | 3 << 18, 0); // INIT de-assert to all but self
    check("no reserved-mode IPI arrived", idt::interrupts(0x60) == 0);
    // The control: a fixed self-IPI through the ICR arrives once.
    icr(0x61 | 1 << 18, 0);
    check(
        "fixed self-IPI",
        wait_until(200_000, || idt::interrupts(0x61) == 1),
    );
    // Timer divide configuration: reserved bits dropped.
    for divide in 0..16u32 {
        apic_write(0x3e0, divide | 0xffff_fff0);
        check("divide bits", apic_read(0x3e0) == divide & 0xb);
    }
    // One-shot, count 1, divide by 1: arrives.
    apic_write(0x3e0, 0xb);
    apic_write(0x320, 0x62);
    apic_write(0x380, 1);
    check(
        "count 1",
        wait_until(1_000_000, || idt::interrupts(0x62) == 1),
    );
    // Count 0xffffffff at divide 128: runs, counts down; count 0 stops it.
    apic_write(0x3e0, 0xa);
    apic_write(0x380, 0xffff_ffff);
    let c1 = apic_read(0x390);
    let c2 = apic_read(0x390);
    check("the count runs down", c1 != 0 && c2 <= c1);
    apic_write(0x380, 0);
    check("count 0 stops it", apic_read(0x390) == 0);
    // Periodic, then masked: the interrupts stop.
    apic_write(0x3e0, 0xb);
    apic_write(0x320, 0x63 | 1 << 17);
    apic_write(0x380, 20_000);
    let ran = wait_until(20_000_000, || idt::interrupts(0x63) >= 3);
    apic_write(0x320, 0x63 | 1 << 17 | 1 << 16);
    let stopped_at = idt::interrupts(0x63);
    let _ = wait_until(200_000, || false);
    check(
        "periodic, then masked",
        ran && idt::interrupts(0x63) <= stopped_at + 1,
    );
    apic_write(0x380, 0);
    // TSC-deadline mode through the xAPIC: the MSR arms it.
    apic_write(0x320, 0x64 | 2 << 17);
    x2apic::wrmsr(0x6e0, rdtsc() + 10_000);
    check(
        "TSC deadline",
        wait_until(20_000_000, || idt::interrupts(0x64) == 1),
    );
    apic_write(0x320, MASKED);
    // LVTs: masks and vectors, with every reserved bit set.
    for offset in [0x2f0u64, 0x330, 0x340, 0x350, 0x360, 0x370] {
        apic_write(offset, 0xffff_ffff);
        check("LVT masked", apic_read(offset) & MASKED != 0);
        apic_write(offset, MASKED);
    }
    idt::disable_interrupts();
    report(case, wrong == 0, "the page answered as the SDM says")
}

// ---- interrupt shadows across exits -------------------------------------------

const SHADOW_TIMER: u8 = 0x70;

/// A periodic x2APIC timer of `count` TSC ticks: an interrupt is pending
/// at most exits.
fn periodic_timer(count: u32) {
    x2apic::enable();
    x2apic::wrmsr(0x83e, 0xb);
    x2apic::wrmsr(0x832, u64::from(SHADOW_TIMER) | 1 << 17);
    x2apic::wrmsr(0x838, u64::from(count));
}

fn stop_timer() {
    x2apic::wrmsr(0x838, 0);
    x2apic::wrmsr(0x832, 1 << 16);
}

static SKIPPED: AtomicU32 = AtomicU32::new(0);

/// The exception hook of the shadow cases: a #GP from the WRMSR in the
/// shadow is skipped (WRMSR is 2 bytes).
fn skip_wrmsr(frame: &mut TrapFrame) {
    if frame.vector == 13 {
        SKIPPED.fetch_add(1, SeqCst);
        frame.rip += 2;
        return;
    }
    println!(
        "@ev {{\"ev\":\"guest_exception\",\"vector\":{},\"error_code\":{},\"rip\":\"{:#x}\"}}",
        frame.vector, frame.error_code, frame.rip
    );
    atoll_guest_rt::exit(0x100 | frame.vector as u32);
}

/// Instructions that exit (CPUID, OUT, VMCALL, a refused WRMSR) right
/// after MOV SS, with the timer's interrupt pending: Atoll must not inject
/// into the shadow (VM entry would fail, SDM 26.3.1.5) and must end the
/// shadow when it moves RIP past the instruction.
pub fn mov_ss_blocking(count: u64) -> u32 {
    shadows("mov-ss-blocking", count, shadow::mov_ss_exits)
}

/// The same after STI (interrupts were off before it).
pub fn sti_blocking(count: u64) -> u32 {
    shadows("sti-blocking", count, shadow::sti_exits)
}

fn shadows(case: &str, count: u64, round: fn()) -> u32 {
    idt::set_exception_hook(Some(skip_wrmsr));
    periodic_timer(3000);
    idt::enable_interrupts();
    for _ in 0..count {
        round();
    }
    idt::disable_interrupts();
    stop_timer();
    idt::set_exception_hook(None);
    let ticks = idt::interrupts(SHADOW_TIMER);
    let skipped = u64::from(SKIPPED.load(SeqCst));
    println!("hostile: {count} rounds, {ticks} timer interrupts, {skipped} #GP skipped");
    report(
        case,
        ticks > 0 && skipped == count,
        "interrupts arrived after each shadow, never in it",
    )
}
