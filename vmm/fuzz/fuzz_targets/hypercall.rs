//! The hypercall decoder (`hypercall::decode`, vmm/HYPERCALLS.md) on
//! arbitrary registers and capabilities.
//!
//! It may not panic, and a call it accepts is valid in every field, as
//! its doc promises: from CPL 0 only; a console write of at most
//! `CONSOLE_MAX` bytes inside RAM; a signal on a held handle with a
//! notification it grants; a channel mapping of a held, unmapped channel
//! at its size, page-aligned, below the guest-physical limit and clear of
//! RAM and of every taken range, and the same answer as `check_mapping`,
//! which the hypervisor repeats under its mapping lock. A refusal is a
//! negative error code in RAX with the outputs untouched.
//!
//! Input: five 8-byte registers (RAX, RDI, RSI, RDX, RCX; RAX taken modulo
//! 10 so most calls are known ones), one byte of CPL, 8 bytes of RAM size,
//! then up to 4 signal masks (8 bytes each), up to 4 channels (size, 8
//! bytes, with bit 0 = mapped) and up to 4 taken ranges (start and
//! length, 8 bytes each), as counted by one byte each.
#![no_main]

use atoll_vmm::hypercall::{
    self, Args, CONSOLE_MAX, Context, Error, GUEST_PHYS_LIMIT, Hypercall, Output, Region, number,
};
use libfuzzer_sys::fuzz_target;

/// Reads little-endian u64s, zero once the input ends.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u64(&mut self) -> u64 {
        let (now, rest) = self.0.split_at(8.min(self.0.len()));
        self.0 = rest;
        let mut b = [0u8; 8];
        b[..now.len()].copy_from_slice(now);
        u64::from_le_bytes(b)
    }

    fn u8(&mut self) -> u8 {
        let (now, rest) = self.0.split_at(1.min(self.0.len()));
        self.0 = rest;
        now.first().copied().unwrap_or(0)
    }
}

fn overlaps(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

fn check(call: &Hypercall, args: &Args, ctx: &Context<'_>) {
    assert_eq!(args.cpl, 0);
    match *call {
        Hypercall::ConsoleWrite { gpa, len } => {
            assert!(len <= CONSOLE_MAX);
            assert!(
                gpa.0
                    .checked_add(len)
                    .is_some_and(|end| end <= ctx.ram_bytes)
            );
        }
        Hypercall::Signal {
            handle,
            notification,
        } => {
            let allowed = ctx.signals[usize::from(handle)];
            assert!(notification < 64 && allowed & 1 << notification != 0);
        }
        Hypercall::MapChannel { handle, gpa, len } => {
            let (size, mapped) = ctx.channels[usize::from(handle)];
            assert!(!mapped && len == size);
            assert_eq!(gpa.0 % 4096, 0);
            assert!(
                gpa.0
                    .checked_add(len)
                    .is_some_and(|end| end <= GUEST_PHYS_LIMIT)
            );
            assert!(!overlaps(gpa.0, len, 0, ctx.ram_bytes));
            for r in ctx.taken {
                assert!(!overlaps(gpa.0, len, r.start, r.len), "{r:?}");
            }
        }
        Hypercall::PowerOff { status } => assert_eq!(u64::from(status), args.rdi),
        Hypercall::Wait { timeout_us } => {
            assert_eq!(timeout_us, (args.rdi != u64::MAX).then_some(args.rdi))
        }
        Hypercall::Version | Hypercall::Ids | Hypercall::ReportStats => {}
    }
}

/// The decoder's answer to a map_channel call on a held handle is the
/// one `check_mapping` gives, the check the hypervisor repeats under its
/// mapping lock: the two may not drift apart.
fn check_map_channel(result: &Result<Hypercall, Error>, args: &Args, ctx: &Context<'_>) {
    if args.cpl != 0 || args.rax != number::MAP_CHANNEL {
        return;
    }
    let handle = usize::try_from(args.rdi)
        .ok()
        .filter(|&h| h <= usize::from(u16::MAX));
    let Some(&(len, mapped)) = handle.and_then(|h| ctx.channels.get(h)) else {
        return assert_eq!(result, &Err(Error::BadHandle));
    };
    let again = hypercall::check_mapping(mapped, args.rsi, len, ctx.ram_bytes, ctx.taken);
    assert_eq!(result.map(|_| ()), again);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mut args = Args {
        rax: input.u64() % 10,
        rdi: input.u64(),
        rsi: input.u64(),
        rdx: input.u64(),
        rcx: input.u64(),
        cpl: 0,
    };
    args.cpl = input.u8() & 3;
    let ram_bytes = input.u64();
    let signals: Vec<u64> = (0..input.u8() % 5).map(|_| input.u64()).collect();
    let channels: Vec<(u64, bool)> = (0..input.u8() % 5)
        .map(|_| {
            let v = input.u64();
            (v & !1, v & 1 != 0)
        })
        .collect();
    let taken: Vec<Region> = (0..input.u8() % 5)
        .map(|_| Region {
            start: input.u64(),
            len: input.u64(),
        })
        .collect();
    let ctx = Context {
        ram_bytes,
        signals: &signals,
        channels: &channels,
        taken: &taken,
    };
    let result = hypercall::decode(&args, &ctx);
    check_map_channel(&result, &args, &ctx);
    match &result {
        Ok(call) => check(call, &args, &ctx),
        Err(Error::NotPermitted) => assert_ne!(args.cpl, 0),
        Err(_) => assert_eq!(
            args.cpl, 0,
            "a call from CPL {} got past the check",
            args.cpl
        ),
    }
    let out = Output {
        rdx: 1,
        rsi: 2,
        rdi: 3,
    };
    let (rax, regs) = hypercall::result_registers(result.map(|_| out));
    match regs {
        Some(o) => assert_eq!((rax, o), (0, out)),
        None => assert!((rax as i64) < 0),
    }
});
