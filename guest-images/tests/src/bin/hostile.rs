//! The `hostile` test guest: one misbehaviour per run, chosen by the
//! command line (`case=NAME`; the cases are the table below, each named
//! after the class of guest input it exercises, tests/docs/hostile-inputs.md).
//!
//! Each case ends one of three ways, which the tests check:
//! - Atoll stops the VM (`vm_stopped` with a reason);
//! - Atoll injects a fault, which this guest reports as `guest_exception`
//!   and exits with status 0x100 + vector (`vm_fault` from Atoll too);
//! - the attempt is refused or absorbed, the guest checks that and exits
//!   with status 0 (1 if Atoll answered wrongly), after a `guest_case`
//!   event saying what it saw.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use atoll_guest_rt::hypercall::{self, call};
use atoll_guest_rt::idt::{self, TrapFrame};
use atoll_guest_rt::mem::{read_u8, read_u16, read_u32, write_u16, write_u32, write_u64};
use atoll_guest_rt::{BootInfo, arg, cpuid, port, println, rdtsc, word, x2apic};

atoll_guest_rt::entry!(main);

#[path = "hostile/platform.rs"]
mod platform;

/// A case: what it does, given the boot information; returns the exit
/// status when it returns at all.
type Case = fn(&BootInfo) -> u32;

/// (name, case).
const CASES: &[(&str, Case)] = &[
    // Memory the VM does not own: EPT violations stop the VM.
    ("write-above-ram", |_| write_at(0x4000_0000)),
    ("read-above-ram", |_| read_at(0x3000_0000)),
    ("fetch-above-ram", |_| jump_to(0x2000_0000)),
    ("write-other-vm", |i| {
        write_at(arg(i.cmdline(), "addr").unwrap_or(0x0280_0000))
    }),
    ("write-other-node", |i| {
        write_at(arg(i.cmdline(), "addr").unwrap_or(0x0540_0000))
    }),
    ("write-apic-mmio", |_| write_at(0xfee0_00b0)),
    ("host-address-is-own-ram", |_| own_ram_at_host_address()),
    ("mmio-unsupported-instruction", |_| {
        atoll_guest_rt::mem::add_one(0xfeb0_0000)
    }),
    // MSRs and control registers: #GP.
    ("wrmsr-unknown", |_| wrmsr(0xdead_beef, 0)),
    ("rdmsr-unknown", |_| rdmsr(0x1234_5678)),
    ("efer-reserved-bit", |_| {
        wrmsr(0xc000_0080, x2apic::rdmsr(0xc000_0080) | 1 << 1)
    }),
    ("efer-lme-off-while-paging", |_| {
        wrmsr(0xc000_0080, x2apic::rdmsr(0xc000_0080) & !(1 << 8))
    }),
    ("fs-base-non-canonical", |_| {
        wrmsr(0xc000_0100, 0x8000_0000_0000)
    }),
    ("gs-base-non-canonical", |_| {
        wrmsr(0xc000_0101, 0xdead_0000_0000_0000)
    }),
    ("kernel-gs-base-non-canonical", |_| {
        wrmsr(0xc000_0102, 1 << 63)
    }),
    ("lstar-non-canonical", |_| {
        wrmsr(0xc000_0082, 0x0000_8000_0000_1000)
    }),
    ("sysenter-eip-non-canonical", |_| {
        wrmsr(0x176, 0x00ff_0000_0000_0000)
    }),
    ("pat-invalid-type", |_| wrmsr(0x277, 0x0007_0406_0007_0402)),
    ("apic-base-moved", |_| wrmsr(0x1b, 0xfed0_0900)),
    ("cr4-vmxe", |_| set_cr4_bit(13)),
    ("xsetbv-without-x87", |_| xsetbv_without_x87()),
    ("vmxon", |_| vmxon()),
    // Crashes: the VM is stopped.
    ("triple-fault", |_| triple_fault()),
    ("ram-zeroed-at-start", |_| ram_zeroed_at_start()),
    ("halt-forever", |_| halt_forever()),
    ("string-io", |_| string_io()),
    // Hypercalls: refused with error codes, never a crash.
    ("hypercall-from-user-mode", |_| hypercall_from_user()),
    ("hypercall-boundaries", |_| hypercall_boundaries()),
    ("hypercall-random", |_| hypercall_random()),
    ("hypercall-random-all-vcpus", |_| {
        hypercall_random_all_vcpus()
    }),
    // Storms: absorbed and accounted; neighbours keep running.
    ("io-storm", |i| {
        io_storm(arg(i.cmdline(), "count").unwrap_or(100_000))
    }),
    ("cpuid-storm", |i| {
        cpuid_storm(arg(i.cmdline(), "count").unwrap_or(100_000))
    }),
    ("interrupt-storm", |i| {
        interrupt_storm(arg(i.cmdline(), "count").unwrap_or(20_000))
    }),
    ("signal-flood", |i| {
        signal_flood(arg(i.cmdline(), "count").unwrap_or(10_000))
    }),
    ("init-sipi-to-missing-vcpus", |_| init_sipi_missing()),
    // Virtio rings (tests/docs/hostile-inputs.md, class 8): the device refuses, then still works.
    ("virtio-rings", |_| virtio_rings()),
    // Device work in slices: many multi-MiB requests in one notification
    // complete with the right data while the neighbours run.
    ("virtio-huge", |i| {
        virtio_huge(arg(i.cmdline(), "requests").unwrap_or(16))
    }),
    // A second vCPU rewrites descriptors while the device walks them.
    ("virtio-desc-rewrite-all-vcpus", |i| {
        virtio_rewrite(arg(i.cmdline(), "rounds").unwrap_or(300))
    }),
    // The PC platform, the xAPIC page, cross-CPU races and interrupt
    // shadows (platform.rs).
    ("map-channel-race-all-vcpus", |_| {
        platform::map_channel_race()
    }),
    ("ipi-storm-all-vcpus", |i| {
        platform::ipi_storm(arg(i.cmdline(), "ipis").unwrap_or(5000))
    }),
    ("ioapic-redirection", |_| platform::ioapic_redirection()),
    ("ioapic-level-eoi", |_| platform::ioapic_level_eoi()),
    ("legacy-ports", |_| platform::legacy_ports()),
    ("xapic-page", |_| platform::xapic_page()),
    ("mov-ss-blocking", |i| {
        platform::mov_ss_blocking(arg(i.cmdline(), "rounds").unwrap_or(500))
    }),
    ("sti-blocking", |i| {
        platform::sti_blocking(arg(i.cmdline(), "rounds").unwrap_or(500))
    }),
];

fn main(info: &BootInfo) -> u32 {
    let name = word(info.cmdline(), "case").unwrap_or("");
    let Some((_, case)) = CASES.iter().find(|(n, _)| *n == name) else {
        println!("hostile: unknown case '{name}'");
        return 2;
    };
    println!("hostile: {name}");
    case(info)
}

fn report(case: &str, ok: bool, detail: &str) -> u32 {
    println!(
        "@ev {{\"ev\":\"guest_case\",\"case\":\"{case}\",\"ok\":{ok},\"detail\":\"{detail}\"}}"
    );
    u32::from(!ok)
}

fn write_at(addr: u64) -> u32 {
    atoll_guest_rt::mem::write_u64(addr, 0x6666_6666_6666_6666);
    report("write", false, "the write went through")
}

fn read_at(addr: u64) -> u32 {
    let _ = atoll_guest_rt::mem::read_u64(addr);
    report("read", false, "the read went through")
}

fn jump_to(addr: u64) -> u32 {
    atoll_guest_rt::mem::jump(addr)
}

/// Writes at the host-physical address of the hypervisor image (2 MiB):
/// EPT maps it to this VM's own RAM, so the value reads back and nothing
/// else changes.
fn own_ram_at_host_address() -> u32 {
    let addr = 0x20_0000;
    atoll_guest_rt::mem::write_u64(addr, 0x1234_5678_9abc_def0);
    let back = atoll_guest_rt::mem::read_u64(addr);
    report(
        "host-address-is-own-ram",
        back == 0x1234_5678_9abc_def0,
        "own RAM",
    )
}

fn wrmsr(msr: u32, value: u64) -> u32 {
    x2apic::wrmsr(msr, value);
    report("wrmsr", false, "the write was accepted")
}

fn rdmsr(msr: u32) -> u32 {
    let _ = x2apic::rdmsr(msr);
    report("rdmsr", false, "the read was accepted")
}

fn set_cr4_bit(bit: u32) -> u32 {
    atoll_guest_rt::cr::write_cr4(atoll_guest_rt::cr::read_cr4() | 1 << bit);
    report("cr4", false, "CR4 took the bit")
}

fn xsetbv_without_x87() -> u32 {
    if cpuid(1, 0)[2] & (1 << 26) == 0 {
        // No XSAVE: XSETBV is #UD by the architecture; report it as the
        // #GP this case expects so the test stays one shape.
        println!(
            "@ev {{\"ev\":\"guest_exception\",\"vector\":13,\"error_code\":0,\"rip\":\"0x0\"}}"
        );
        atoll_guest_rt::exit(0x10d);
    }
    atoll_guest_rt::cr::write_cr4(atoll_guest_rt::cr::read_cr4() | 1 << 18);
    atoll_guest_rt::cr::xsetbv(0, 0x2);
    report("xsetbv", false, "XCR0 without x87 was accepted")
}

fn vmxon() -> u32 {
    atoll_guest_rt::cr::vmxon(0x10_0000);
    report("vmxon", false, "VMXON did not fault")
}

fn triple_fault() -> u32 {
    atoll_guest_rt::cr::triple_fault()
}

/// Checks that the top MiB of RAM (where nothing is loaded) is zero, fills
/// it with a pattern, and triple-faults: run with `on_crash = "restart"`,
/// each incarnation checks that none of the last one's bytes survived.
fn ram_zeroed_at_start() -> u32 {
    let end = atoll_guest_rt::fw_cfg::ram_bytes();
    let top = (end.saturating_sub(1 << 20)..end).step_by(8);
    let dirty = top
        .clone()
        .filter(|&a| atoll_guest_rt::mem::read_u64(a) != 0)
        .count();
    for a in top {
        write_u64(a, 0xd1d1_d1d1_d1d1_d1d1);
    }
    report("ram-zeroed-at-start", dirty == 0, "top MiB checked");
    atoll_guest_rt::cr::triple_fault()
}

fn halt_forever() -> u32 {
    idt::disable_interrupts();
    loop {
        idt::halt();
    }
}

fn string_io() -> u32 {
    port::outsb(0x3f8, b"rep outsb\n");
    report("string-io", false, "OUTS was emulated")
}

static USER_RESULT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// VMCALL from ring 3 must come back with "not permitted" (-2).
fn hypercall_from_user() -> u32 {
    idt::set_exception_hook(Some(back_from_user));
    idt::run_user(user_code)
}

extern "C" fn user_code() -> ! {
    let (rax, ..) = call(hypercall::VERSION, 0, 0, 0, 0);
    USER_RESULT.store(rax, core::sync::atomic::Ordering::SeqCst);
    atoll_guest_rt::cr::ud2()
}

fn back_from_user(frame: &mut TrapFrame) {
    let rax = USER_RESULT.load(core::sync::atomic::Ordering::SeqCst) as i64;
    let from_user = frame.cs & 3 == 3 && frame.vector == 6;
    let status = report(
        "hypercall-from-user-mode",
        rax == -2 && from_user,
        "not permitted",
    );
    atoll_guest_rt::exit(status)
}

/// Boundary arguments, each with the answer the ABI promises.
fn hypercall_boundaries() -> u32 {
    let ram = arg_ram();
    let cases: [(u64, u64, u64, i64); 12] = [
        (hypercall::CONSOLE_WRITE, 0, 4097, -4),
        (hypercall::CONSOLE_WRITE, ram - 4095, 4096, -5),
        (hypercall::CONSOLE_WRITE, u64::MAX - 10, 100, -5),
        (hypercall::CONSOLE_WRITE, ram, 0, 0),
        (hypercall::SIGNAL, 1, 0, -3),
        (hypercall::SIGNAL, 0, 1, -4),
        (hypercall::MAP_CHANNEL, 0, 0x1_0000_0000, -3),
        (hypercall::WAIT, 0, 0, 0),
        (hypercall::POWER_OFF, 1 << 32, 0, -4),
        (8, 0, 0, -1),
        (u64::MAX, 0, 0, -1),
        (hypercall::VERSION, 0, 0, 0),
    ];
    let mut wrong = 0;
    for (nr, a0, a1, expected) in cases {
        let (rax, ..) = call(nr, a0, a1, 0, 0);
        if hypercall::status(rax) != expected {
            println!(
                "hostile: call {nr} ({a0:#x}, {a1:#x}) returned {} not {expected}",
                rax as i64
            );
            wrong += 1;
        }
    }
    report(
        "hypercall-boundaries",
        wrong == 0,
        "every boundary refused as documented",
    )
}

fn arg_ram() -> u64 {
    let mut ram = [0u8; 8];
    atoll_guest_rt::fw_cfg::read(atoll_guest_rt::fw_cfg::RAM_SIZE, &mut ram);
    u64::from_le_bytes(ram)
}

/// Random calls and arguments (xorshift), leaving out only what would
/// end or block this VM (power_off, a waiting wait).
fn hypercall_random() -> u32 {
    let errors = random_calls(0x2545_f491_4f6c_dd1d, 5000);
    report("hypercall-random", errors > 0, "random calls answered")
}

static RANDOM_DONE: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// The same from every vCPU at once (tests/docs/hostile-inputs.md, class 3).
fn hypercall_random_all_vcpus() -> u32 {
    x2apic::enable();
    let cpus = u32::from(atoll_guest_rt::fw_cfg::cpus()).max(1);
    let up = atoll_guest_rt::smp::start_aps(
        cpus,
        |id| {
            random_calls(0x9e37_79b9_7f4a_7c15 ^ u64::from(id), 2000);
            RANDOM_DONE.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
        },
        4_000_000_000,
    );
    random_calls(0x2545_f491_4f6c_dd1d, 2000);
    while RANDOM_DONE.load(core::sync::atomic::Ordering::SeqCst) < up {
        core::hint::spin_loop();
    }
    report(
        "hypercall-random-all-vcpus",
        up + 1 == cpus && cpus > 1,
        "every vCPU called",
    )
}

/// `count` random calls from seed `x`; returns how many failed.
fn random_calls(mut x: u64, count: u32) -> u32 {
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut errors = 0u32;
    for _ in 0..count {
        let nr = match next() % 12 {
            6 => 0,
            n => n,
        };
        let a0 = if nr == hypercall::WAIT { 0 } else { next() };
        let (rax, ..) = call(nr, a0, next(), next(), next());
        errors += u32::from(rax != 0);
    }
    errors
}

fn io_storm(count: u64) -> u32 {
    for i in 0..count {
        port::outb(0x80, i as u8);
    }
    report("io-storm", true, "survived")
}

fn cpuid_storm(count: u64) -> u32 {
    let mut sum = 0u32;
    for _ in 0..count {
        sum = sum.wrapping_add(cpuid(0, 0)[0]);
    }
    report("cpuid-storm", sum != 0, "survived")
}

/// Self-IPIs as fast as the guest can send them, each delivered.
fn interrupt_storm(count: u64) -> u32 {
    x2apic::enable();
    idt::enable_interrupts();
    for _ in 0..count {
        x2apic::self_ipi(0x40);
    }
    idt::disable_interrupts();
    let got = u64::from(idt::interrupts(0x40));
    report(
        "interrupt-storm",
        got == count,
        "every self-IPI delivered once",
    )
}

/// Signals through capability 0 as fast as possible.
fn signal_flood(count: u64) -> u32 {
    let mut refused = 0;
    for _ in 0..count {
        let (rax, ..) = call(hypercall::SIGNAL, 0, 0, 0, 0);
        refused += u64::from(rax != 0);
    }
    report("signal-flood", refused == 0, "every signal accepted")
}

/// INIT and SIPI to x2APIC IDs no vCPU has: dropped, nothing breaks.
/// (0xFFFFFFFF is not missing: it is the x2APIC broadcast, SDM 11.12.9,
/// and an INIT to it would reach this vCPU too.)
fn init_sipi_missing() -> u32 {
    x2apic::enable();
    for dest in [5, 200, 0xffff_fffe] {
        x2apic::send_ipi(dest, 5, 0);
        x2apic::send_ipi(dest, 6, 0x10);
    }
    report("init-sipi-to-missing-vcpus", true, "still running")
}

/// The VM's virtio-blk device (its first virtio-mmio window) and its
/// registers (virtio 1.2, 4.2.2).
mod blk {
    pub const BASE: u64 = 0xd000_0000;
    pub const DEVICE_ID: u64 = 0x008;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC: u64 = 0x080;
    pub const QUEUE_DRIVER: u64 = 0x090;
    pub const QUEUE_DEVICE: u64 = 0x0a0;
    /// Configuration space: capacity in sectors (le64, 5.2.4).
    pub const CAPACITY: u64 = 0x100;
    /// Status bits (2.1): ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK,
    /// DEVICE_NEEDS_RESET.
    pub const ACK_DRIVER: u32 = 1 | 2;
    pub const FEATURES_OK: u32 = 8;
    pub const DRIVER_OK: u32 = 4;
    pub const NEEDS_RESET: u32 = 64;
}

/// The queue's memory, in the guest's RAM: descriptors, available ring,
/// used ring, then buffers.
const DESC: u64 = 0x38_0000;
const AVAIL: u64 = DESC + 0x1000;
const USED: u64 = DESC + 0x2000;
const BUF: u64 = DESC + 0x3000;
const QUEUE_SIZE: u16 = 8;
/// Descriptor flags (2.7.5): NEXT, WRITE.
const NEXT: u16 = 1;
const WRITE: u16 = 2;

fn reg(offset: u64) -> u64 {
    blk::BASE + offset
}

/// Resets the device and sets queue 0 up as a driver does (3.1.1).
fn virtio_setup() -> bool {
    virtio_setup_sized(QUEUE_SIZE)
}

/// The same with a queue of `size` entries (at most 256: the descriptor
/// table fills its page).
fn virtio_setup_sized(size: u16) -> bool {
    write_u32(reg(blk::STATUS), 0);
    for page in [DESC, AVAIL, USED, BUF] {
        for off in (0..0x1000).step_by(8) {
            write_u64(page + off, 0);
        }
    }
    write_u32(reg(blk::STATUS), blk::ACK_DRIVER);
    write_u32(reg(blk::DRIVER_FEATURES_SEL), 1);
    write_u32(reg(blk::DRIVER_FEATURES), 1); // VIRTIO_F_VERSION_1 (bit 32)
    write_u32(reg(blk::DRIVER_FEATURES_SEL), 0);
    write_u32(reg(blk::DRIVER_FEATURES), 0);
    write_u32(reg(blk::STATUS), blk::ACK_DRIVER | blk::FEATURES_OK);
    if read_u32(reg(blk::STATUS)) & blk::FEATURES_OK == 0 {
        return false;
    }
    write_u32(reg(blk::QUEUE_SEL), 0);
    write_u32(reg(blk::QUEUE_NUM), u32::from(size));
    for (register, at) in [
        (blk::QUEUE_DESC, DESC),
        (blk::QUEUE_DRIVER, AVAIL),
        (blk::QUEUE_DEVICE, USED),
    ] {
        write_u32(reg(register), at as u32);
        write_u32(reg(register + 4), 0);
    }
    write_u32(reg(blk::QUEUE_READY), 1);
    write_u32(
        reg(blk::STATUS),
        blk::ACK_DRIVER | blk::FEATURES_OK | blk::DRIVER_OK,
    );
    read_u32(reg(blk::STATUS)) & blk::DRIVER_OK != 0
}

fn descriptor(index: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let at = DESC + 16 * u64::from(index);
    write_u64(at, addr);
    write_u32(at + 8, len);
    write_u16(at + 12, flags);
    write_u16(at + 14, next);
}

/// Makes chain `head` available as entry `idx - 1` and notifies.
fn offer(head: u16, idx: u16) {
    write_u16(AVAIL + 4, head);
    write_u16(AVAIL + 2, idx);
    write_u32(reg(blk::QUEUE_NOTIFY), 0);
}

fn needs_reset() -> bool {
    read_u32(reg(blk::STATUS)) & blk::NEEDS_RESET != 0
}

/// Three hostile rings, each of which must put the device in
/// DEVICE_NEEDS_RESET (and nothing else: the VM runs on), then a valid
/// GET_ID request after a reset, which must work.
fn virtio_rings() -> u32 {
    let case = "virtio-rings";
    if read_u32(reg(blk::DEVICE_ID)) != 2 || !virtio_setup() {
        return report(case, false, "no virtio-blk at 0xd0000000");
    }
    // A descriptor loop: 0 -> 1 -> 0.
    descriptor(0, BUF, 16, NEXT, 1);
    descriptor(1, BUF + 16, 16, NEXT, 0);
    offer(0, 1);
    let refused_loop = needs_reset();
    // A buffer at the top of the address space, wrapping past it.
    let _ = virtio_setup();
    descriptor(0, 0xffff_ffff_ffff_f000, 0x2000, 0, 0);
    offer(0, 1);
    let refused_wrap = needs_reset();
    // An available index far ahead of what the queue can hold.
    let _ = virtio_setup();
    descriptor(0, BUF, 16, 0, 0);
    offer(0, 1000);
    let refused_jump = needs_reset();
    // After a reset, a real request: GET_ID (type 8) into 20 bytes.
    let _ = virtio_setup();
    write_u32(BUF, 8);
    descriptor(0, BUF, 16, NEXT, 1);
    descriptor(1, BUF + 0x100, 20, WRITE | NEXT, 2);
    descriptor(2, BUF + 0x200, 1, WRITE, 0);
    write_u64(BUF + 0x200, 0xff);
    offer(0, 1);
    let served = read_u16(USED + 2) == 1
        && read_u8(BUF + 0x200) == 0
        && read_u8(BUF + 0x100) == b'a'
        && !needs_reset();
    println!(
        "virtio-rings: loop {refused_loop}, wrap {refused_wrap}, jump {refused_jump}, served {served}"
    );
    report(
        case,
        refused_loop && refused_wrap && refused_jump && served,
        "bad rings refused, a good one served",
    )
}

/// Request types and the OK status (virtio 1.2, 5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const S_OK: u8 = 0;
/// How long a request may take before the case gives up (TSC ticks).
const REQUEST_TIMEOUT: u64 = 20_000_000_000;

/// The disk word at byte `offset`: no two words of the disk alike.
fn disk_word(offset: u64) -> u32 {
    (offset as u32).wrapping_mul(0x9e37_79b1) ^ 0x5a5a_5a5a
}

/// Header `k` (at `BUF + 16 k`): type and sector.
fn header(k: u16, kind: u32, sector: u64) -> u64 {
    let at = BUF + 16 * u64::from(k);
    write_u32(at, kind);
    write_u32(at + 4, 0);
    write_u64(at + 8, sector);
    at
}

/// Status byte `k` (at `BUF + 0x800 + k`), set to 0xff (not an answer).
fn status_byte(k: u16) -> u64 {
    let at = BUF + 0x800 + u64::from(k);
    let word = at & !1;
    write_u16(word, read_u16(word) | 0xff << ((at & 1) * 8));
    at
}

/// Waits until the used ring's index reaches `idx` or the device needs a
/// reset; true if it got there.
fn wait_used(idx: u16) -> bool {
    let start = rdtsc();
    while read_u16(USED + 2) != idx {
        if needs_reset() || rdtsc().wrapping_sub(start) > REQUEST_TIMEOUT {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// Where `virtio-huge` keeps data: a 2 MiB buffer at 4 MiB, then 4 KiB
/// tails, one per request, at 6 MiB.
const HUGE_BUF: u64 = 0x40_0000;
const HUGE_TAILS: u64 = 0x60_0000;
const REGION: u64 = 2 << 20;
const PAGE: u64 = 4096;

/// Many multi-MiB requests in one notification: the disk is first written
/// with a pattern (a 2 MiB request per region), then `requests` reads of
/// 2 MiB each (its region's first 2 MiB - 4 KiB into the shared buffer,
/// its last 4 KiB into its own tail) are made available at once and
/// notified once. Every request must complete with status OK, every tail
/// must hold its region's bytes, and the buffer the last region's.
fn virtio_huge(requests: u64) -> u32 {
    let case = "virtio-huge";
    let n = requests.clamp(1, 64) as u16;
    if read_u32(reg(blk::DEVICE_ID)) != 2 || !virtio_setup_sized(256) {
        return report(case, false, "no virtio-blk at 0xd0000000");
    }
    let regions = u64::from(read_u32(reg(blk::CAPACITY))) * 512 / REGION;
    if regions == 0 {
        return report(case, false, "the disk is smaller than 2 MiB");
    }
    for r in 0..regions {
        for off in (0..REGION).step_by(4) {
            write_u32(HUGE_BUF + off, disk_word(r * REGION + off));
        }
        let h = header(0, T_OUT, r * REGION / 512);
        let st = status_byte(0);
        descriptor(0, h, 16, NEXT, 1);
        descriptor(1, HUGE_BUF, REGION as u32, NEXT, 2);
        descriptor(2, st, 1, WRITE, 0);
        let idx = r as u16 + 1;
        offer(0, idx);
        if !wait_used(idx) || read_u8(st) != S_OK {
            return report(case, false, "a 2 MiB write failed");
        }
    }
    let written = regions as u16;
    let region_of = |k: u16| u64::from(k) % regions;
    for k in 0..n {
        let h = header(k, T_IN, region_of(k) * REGION / 512);
        let tail = HUGE_TAILS + u64::from(k) * PAGE;
        let st = status_byte(k);
        let d = 4 * k;
        descriptor(d, h, 16, NEXT, d + 1);
        descriptor(d + 1, HUGE_BUF, (REGION - PAGE) as u32, WRITE | NEXT, d + 2);
        descriptor(d + 2, tail, PAGE as u32, WRITE | NEXT, d + 3);
        descriptor(d + 3, st, 1, WRITE, 0);
        let slot = (written + k) % 256;
        write_u16(AVAIL + 4 + 2 * u64::from(slot), d);
    }
    let start = rdtsc();
    let idx = written + n;
    write_u16(AVAIL + 2, idx);
    write_u32(reg(blk::QUEUE_NOTIFY), 0);
    let served = wait_used(idx);
    let ticks = rdtsc().wrapping_sub(start);
    let statuses = (0..n).all(|k| read_u8(BUF + 0x800 + u64::from(k)) == S_OK);
    let tails = (0..n).all(|k| {
        let tail = HUGE_TAILS + u64::from(k) * PAGE;
        let from = region_of(k) * REGION + REGION - PAGE;
        (0..PAGE)
            .step_by(4)
            .all(|off| read_u32(tail + off) == disk_word(from + off))
    });
    let last = region_of(n - 1) * REGION;
    let buffer = (0..REGION - PAGE)
        .step_by(4)
        .all(|off| read_u32(HUGE_BUF + off) == disk_word(last + off));
    println!(
        "virtio-huge: {n} requests of 2 MiB in one notification: served {served} in {ticks} ticks, statuses {statuses}, tails {tails}, buffer {buffer}"
    );
    report(
        case,
        served && statuses && tails && buffer && !needs_reset(),
        "every huge request served with its data",
    )
}

/// The good chain `virtio-desc-rewrite-all-vcpus` offers: a read of
/// sector 0 into one 512-byte buffer; descriptor `i` as (addr, len, flags,
/// next).
const RW_DATA: u64 = BUF + 0x1000;
const RW_GOOD: [(u64, u32, u16, u16); 3] = [
    (BUF, 16, NEXT, 1),
    (RW_DATA, 512, WRITE | NEXT, 2),
    (BUF + 0x800, 1, WRITE, 0),
];

static RW_STOP: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
static RW_DONE: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// The rewriting vCPU: over and over, one field of one descriptor gets a
/// bad value, then its good one back. Every bad value makes the request
/// refused (DEVICE_NEEDS_RESET: outside RAM, INDIRECT, an index out of
/// range, a loop, readable after writable) or failed (IOERR: a short
/// header, a length not in sectors, data the device would read), never
/// served differently. Each bad value differs from the good one in a
/// single byte (or, for `next`, in both bytes of an index either of whose
/// halves is out of range): the device may copy a descriptor byte by byte
/// while it changes, and a mix of good and bad bytes must still be good
/// or bad, not a third value (an address elsewhere in RAM, which the
/// device would rightly use).
fn rewriter(_id: u32) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while !RW_STOP.load(core::sync::atomic::Ordering::SeqCst) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % 3) as u16;
        let at = DESC + 16 * u64::from(i);
        let Some(&(addr, len, flags, next)) = RW_GOOD.get(usize::from(i)) else {
            continue;
        };
        match (x >> 8) % 6 {
            0 => write_u64(at, addr ^ 1 << 40),
            1 => write_u32(at + 8, len | 0xff00_0000),
            2 => write_u16(at + 12, flags | 4),
            3 if i < 2 => write_u16(at + 14, if x & 1 == 0 { 0xffff } else { i }),
            4 if i == 0 => write_u32(at + 8, 8),
            4 if i == 1 => write_u32(at + 8, 513),
            5 => write_u16(at + 12, flags ^ WRITE),
            _ => {}
        }
        for _ in 0..(x >> 20) % 64 {
            core::hint::spin_loop();
        }
        descriptor(i, addr, len, flags, next);
    }
    RW_DONE.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
}

/// Writes the good chain and sector 0's pattern (before the rewriter runs).
fn rw_write_sector() -> bool {
    for off in (0..512).step_by(4) {
        write_u32(RW_DATA + off, disk_word(off));
    }
    header(0, T_OUT, 0);
    let st = status_byte(0);
    descriptor(0, BUF, 16, NEXT, 1);
    descriptor(1, RW_DATA, 512, NEXT, 2);
    descriptor(2, st, 1, WRITE, 0);
    offer(0, 1);
    wait_used(1) && read_u8(st) == S_OK
}

/// Two vCPUs: one rewrites descriptors, the other offers a read of
/// sector 0 `rounds` times while it does. Each request must be served
/// correctly (status OK and the sector's bytes), failed with an error
/// status, or refused with DEVICE_NEEDS_RESET (the driver then resets).
fn virtio_rewrite(rounds: u64) -> u32 {
    let case = "virtio-desc-rewrite-all-vcpus";
    if read_u32(reg(blk::DEVICE_ID)) != 2 || !virtio_setup() || !rw_write_sector() {
        return report(case, false, "no working virtio-blk at 0xd0000000");
    }
    x2apic::enable();
    let cpus = u32::from(atoll_guest_rt::fw_cfg::cpus()).max(1);
    let up = atoll_guest_rt::smp::start_aps(cpus, rewriter, 4_000_000_000);
    let (mut served, mut failed, mut refused, mut wrong) = (0u32, 0u32, 0u32, 0u32);
    let mut idx = 0u16;
    for _ in 0..rounds {
        if needs_reset() || idx == 0 {
            let _ = virtio_setup();
            idx = 0;
        }
        for off in (0..512).step_by(4) {
            write_u32(RW_DATA + off, 0xeeee_eeee);
        }
        header(0, T_IN, 0);
        let st = status_byte(0);
        for (i, &(addr, len, flags, next)) in RW_GOOD.iter().enumerate() {
            descriptor(i as u16, addr, len, flags, next);
        }
        idx = idx.wrapping_add(1);
        write_u16(AVAIL + 4 + 2 * u64::from((idx - 1) % QUEUE_SIZE), 0);
        write_u16(AVAIL + 2, idx);
        write_u32(reg(blk::QUEUE_NOTIFY), 0);
        if !wait_used(idx) {
            if needs_reset() {
                refused += 1;
            } else {
                wrong += 1;
            }
            continue;
        }
        if read_u8(st) != S_OK {
            failed += 1;
            continue;
        }
        let right = (0..512)
            .step_by(4)
            .all(|off| read_u32(RW_DATA + off) == disk_word(off));
        if right {
            served += 1;
        } else {
            wrong += 1;
        }
    }
    RW_STOP.store(true, core::sync::atomic::Ordering::SeqCst);
    while RW_DONE.load(core::sync::atomic::Ordering::SeqCst) < up {
        core::hint::spin_loop();
    }
    println!(
        "virtio-desc-rewrite: {rounds} requests: served {served}, failed {failed}, refused {refused}, wrong {wrong}"
    );
    report(
        case,
        up == 1 && wrong == 0 && served + failed + refused == rounds as u32,
        "every request served right, failed or refused",
    )
}
