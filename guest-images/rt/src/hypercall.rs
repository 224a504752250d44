//! Atoll's hypercalls (vmm/HYPERCALLS.md): VMCALL with the number in RAX,
//! arguments in RDI, RSI, RDX, RCX; RAX returns 0 or a negative error,
//! RDX, RSI, RDI return values.

use core::arch::asm;

pub const VERSION: u64 = 0;
pub const CONSOLE_WRITE: u64 = 1;
pub const IDS: u64 = 2;
pub const SIGNAL: u64 = 3;
pub const WAIT: u64 = 4;
pub const MAP_CHANNEL: u64 = 5;
pub const POWER_OFF: u64 = 6;
pub const REPORT_STATS: u64 = 7;

/// What a hypercall returned: (RAX, RDX, RSI, RDI).
pub type Returned = (u64, u64, u64, u64);

/// VMCALL with `nr` and four arguments.
pub fn call(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> Returned {
    let (rax, rdx, rsi, rdi): (u64, u64, u64, u64);
    // SAFETY: VMCALL exits to Atoll, which changes only RAX, RDX, RSI and
    // RDI (the ABI); outside a VM it raises #UD, which the IDT reports.
    unsafe {
        asm!(
            "vmcall",
            inlateout("rax") nr => rax,
            inlateout("rdi") a0 => rdi,
            inlateout("rsi") a1 => rsi,
            inlateout("rdx") a2 => rdx,
            in("rcx") a3,
            options(nostack)
        );
    }
    (rax, rdx, rsi, rdi)
}

/// The error code of a result, as a signed number (0 = success).
pub fn status(rax: u64) -> i64 {
    rax as i64
}
