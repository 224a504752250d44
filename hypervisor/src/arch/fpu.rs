//! A vCPU's x87/SSE/AVX state while another vCPU uses the CPU (thesis
//! 4.5.5, selective switching): Atoll's own code never touches extended
//! state (the bare-metal target has no SSE), so a guest's registers stay
//! in the processor across exits and are saved only when the CPU switches
//! to another vCPU (XSAVE/XRSTOR with XCR0 set to every feature the
//! processor supports, SDM Vol. 1, 13.7; FXSAVE/FXRSTOR without XSAVE).

use super::kmem::KernelMemory;

/// The FXSAVE area's size (SDM Vol. 1, 10.5.1).
const FXSAVE_BYTES: u64 = 512;

/// One vCPU's save area in node memory (page aligned, more than the
/// 64 bytes XSAVE wants), as large as XSAVE needs for every feature the
/// processor has (CPUID.(EAX=0DH,ECX=0):ECX: about 2.7 KiB with AVX-512,
/// more with AMX).
pub struct FpuArea {
    addr: u64,
    bytes: u64,
}

impl FpuArea {
    /// A zeroed area: XRSTOR of it loads the initial state (XSTATE_BV = 0),
    /// FXRSTOR a valid empty one.
    pub fn new(kmem: &mut KernelMemory) -> Option<FpuArea> {
        let xsave = if super::cpu::has_xsave() {
            super::cpu::xsave_area_bytes()
        } else {
            0
        };
        let bytes = xsave.max(FXSAVE_BYTES).next_multiple_of(4096);
        let addr = kmem.alloc_zeroed(bytes, 4096)?;
        Some(FpuArea { addr, bytes })
    }

    /// Saves this CPU's extended state (the running vCPU's) here.
    pub fn save(&mut self, xsave: bool) {
        // SAFETY: the area is this vCPU's own page-aligned memory in its
        // node, as large as XSAVE needs for every feature the processor
        // supports (`new`), so whatever XCR0 enables fits; with `xsave`
        // CR4.OSXSAVE is set (cpu::enable_extended_state).
        unsafe {
            if xsave {
                core::arch::asm!("xsave64 [{0}]", in(reg) self.addr, in("eax") u32::MAX, in("edx") u32::MAX, options(nostack));
            } else {
                core::arch::asm!("fxsave64 [{0}]", in(reg) self.addr, options(nostack));
            }
        }
    }

    /// Loads the state saved here (the vCPU about to run).
    pub fn restore(&self, xsave: bool) {
        // SAFETY: as for `save`; the area holds a state saved by `save` with
        // the same XCR0, or zeroes (a valid initial state).
        unsafe {
            if xsave {
                core::arch::asm!("xrstor64 [{0}]", in(reg) self.addr, in("eax") u32::MAX, in("edx") u32::MAX, options(nostack));
            } else {
                core::arch::asm!("fxrstor64 [{0}]", in(reg) self.addr, options(nostack));
            }
        }
    }

    /// Back to the initial state (a restarted VM).
    pub fn clear(&mut self) {
        // SAFETY: the area is this vCPU's own `bytes` (see `new`).
        unsafe { core::ptr::write_bytes(self.addr as *mut u8, 0, self.bytes as usize) };
    }
}
