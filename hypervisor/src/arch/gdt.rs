//! Each CPU's own GDT and TSS, for the interrupt stack table (SDM Vol. 3A,
//! 8.7 and 7.14.5): a double fault and an NMI switch to known-good stacks,
//! so a kernel stack overflow (which hits the unmapped guard page below the
//! stack) is reported as a `#DF` panic instead of a triple-fault reset.
//!
//! The selectors match the boot GDT (0x08 code, 0x10 data), so loading this
//! table keeps the segment registers valid; 0x18 is the TSS.

/// The 64-bit TSS (SDM Vol. 3A, Figure 8-11).
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    io_map_base: u16,
}

const _: () = assert!(core::mem::size_of::<Tss>() == 104);

/// A CPU's descriptor tables; lives in its node's kernel memory.
#[repr(C, align(16))]
pub struct CpuTables {
    gdt: [u64; 5],
    tss: Tss,
}

/// IST slot (1-based, as IDT gates name it) for double faults.
pub const IST_DOUBLE_FAULT: u8 = 1;
/// IST slot for NMIs.
pub const IST_NMI: u8 = 2;

const CODE64: u64 = 0x00af_9b00_0000_ffff;
const DATA: u64 = 0x00cf_9300_0000_ffff;
const TSS_SELECTOR: u16 = 0x18;
/// Present, DPL 0, type 9 (available 64-bit TSS).
const TSS_TYPE_PRESENT: u64 = 0x89;

impl CpuTables {
    /// Tables whose TSS switches to `double_fault_stack` and `nmi_stack`
    /// (stack tops) for the two IST slots.
    pub fn new(double_fault_stack: u64, nmi_stack: u64) -> Self {
        let mut ist = [0; 7];
        ist[usize::from(IST_DOUBLE_FAULT - 1)] = double_fault_stack;
        ist[usize::from(IST_NMI - 1)] = nmi_stack;
        CpuTables {
            gdt: [0, CODE64, DATA, 0, 0],
            tss: Tss {
                reserved0: 0,
                rsp: [0; 3],
                reserved1: 0,
                ist,
                reserved2: 0,
                reserved3: 0,
                // No I/O permission bitmap: the base points past the limit.
                io_map_base: 104,
            },
        }
    }

    /// Loads the tables on this CPU: LGDT, then LTR.
    pub fn load(&'static mut self) {
        let base = &raw const self.tss as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        // 16-byte TSS descriptor (SDM Vol. 3A, Figure 8-4).
        self.gdt[3] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (TSS_TYPE_PRESENT << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        self.gdt[4] = base >> 32;
        let pointer = x86::dtables::DescriptorTablePointer::new(&self.gdt);
        // SAFETY: the GDT is 'static (node kernel memory, never freed); its
        // code and data descriptors equal the boot GDT's at the same
        // selectors, so the loaded segment registers stay valid, and the
        // TSS descriptor names this CPU's own TSS, loaded once here.
        unsafe {
            x86::dtables::lgdt(&pointer);
            x86::task::load_tr(x86::segmentation::SegmentSelector::from_raw(TSS_SELECTOR));
        }
    }
}

/// Gives the boot CPU tables of its own for part 1 (from the boot heap),
/// so an NMI or double fault then also lands on a good stack.
pub fn load_boot_tables() {
    let stack = || {
        let stack: &'static mut [u8] = alloc::vec![0u8; IST_BOOT_STACK_BYTES].leak();
        (stack.as_ptr() as u64 + stack.len() as u64) & !0xf
    };
    let (double_fault, nmi) = (stack(), stack());
    alloc::boxed::Box::leak(alloc::boxed::Box::new(CpuTables::new(double_fault, nmi))).load();
}

const IST_BOOT_STACK_BYTES: usize = 16 * 1024;
