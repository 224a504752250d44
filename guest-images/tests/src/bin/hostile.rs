//! The `hostile` test guest: one misbehaviour per run, chosen by the
//! command line (`case=NAME`; the cases are the table below, each named
//! after the class of guest input it exercises, ../shared/docs/bad-inputs.md).
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
use atoll_guest_rt::{BootInfo, arg, cpuid, port, println, word, x2apic};

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
    // Virtio rings (bad-inputs 8): the device refuses, then still works.
    ("virtio-rings", |_| virtio_rings()),
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
    // RAM a previous incarnation wrote must read zero after a restart.
    ("dirty-ram-then-crash", |_| platform::dirty_ram_then_crash()),
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

/// The same from every vCPU at once (bad-inputs.md item 3).
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
    write_u32(reg(blk::QUEUE_NUM), u32::from(QUEUE_SIZE));
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
