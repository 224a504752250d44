//! The boot entry: the multiboot2 header, the 32-bit code GRUB jumps to, and
//! the switch to 64-bit long mode.
//!
//! GRUB enters `_start` in 32-bit protected mode with paging off, EAX holding
//! the multiboot2 magic and EBX the physical address of the boot information
//! (Multiboot2 Specification 3.3). The code below:
//!
//! 1. zeroes .bss (it holds the page tables and the stack),
//! 2. builds page tables that identity-map the first 4 GiB with 2 MiB pages
//!    (RAM, the hypervisor image, ACPI tables and the local APIC/IOAPIC MMIO
//!    at 0xFEC00000-0xFEEFFFFF all lie there),
//! 3. enables PAE, sets EFER.LME, enables paging (SDM Vol. 3A, 10.8.5), and
//! 4. far-jumps into a 64-bit code segment and calls `atoll_main(magic, info)`.
//!
//! Boot-time page tables (all in .bss, 4 KiB aligned):
//!
//! ```text
//!  boot_pml4[0] -> boot_pdpt
//!  boot_pdpt[0..4] -> boot_pd + 0x0000, 0x1000, 0x2000, 0x3000
//!  boot_pd[i] = i * 2 MiB | PS | RW | P          for i in 0..2048
//! ```

use core::arch::global_asm;

global_asm!(
    r#"
    .set MB2_MAGIC, 0xe85250d6
    .set MB2_ARCH_I386, 0

    .section .multiboot2, "a"
    .balign 8
mb2_header:
    .long MB2_MAGIC
    .long MB2_ARCH_I386
    .long mb2_header_end - mb2_header
    .long 0x100000000 - (MB2_MAGIC + MB2_ARCH_I386 + (mb2_header_end - mb2_header))
    /* end tag */
    .short 0
    .short 0
    .long 8
mb2_header_end:

    .section .text.boot, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    mov %eax, %ebp              /* multiboot2 magic, kept until atoll_main */
    mov %ebx, %esi              /* boot information address */

    /* Zero .bss: page tables, stack and Rust statics. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    mov $boot_stack_top, %esp

    /* Long mode needs CPUID leaf 0x80000001 EDX.LM[bit 29]. */
    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb no_long_mode
    mov $0x80000001, %eax
    cpuid
    bt $29, %edx
    jnc no_long_mode

    /* PML4[0] -> PDPT */
    mov $boot_pdpt, %eax
    or $0x3, %eax
    mov %eax, boot_pml4

    /* PDPT[0..4] -> the four page directories */
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $boot_pd, %eax
    or $0x3, %eax
    mov %eax, boot_pdpt(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jne 1b

    /* PD entries: 2048 x 2 MiB pages, present + writable + page size */
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b

    mov $boot_pml4, %eax
    mov %eax, %cr3

    mov %cr4, %eax
    or $(1 << 5), %eax          /* CR4.PAE */
    mov %eax, %cr4

    mov $0xc0000080, %ecx       /* IA32_EFER */
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax  /* EFER.LME | EFER.NXE (node tables use NX) */
    wrmsr

    mov %cr0, %eax
    or $((1 << 31) | (1 << 16) | 1), %eax   /* CR0.PG | CR0.WP | CR0.PE */
    mov %eax, %cr0

    lgdt boot_gdt_pointer
    ljmp $0x08, $long_mode_entry

no_long_mode:
    /* Not a 64-bit CPU: say so on COM1 and stop. */
    mov $no_long_mode_msg, %esi
3:  lodsb
    test %al, %al
    jz 4f
    mov $0x3f8, %dx
    out %al, %dx
    jmp 3b
4:  cli
    hlt
    jmp 4b

    .code64
long_mode_entry:
    mov $boot_stack_top, %rsp
    call load_data_segments
    mov %ebp, %edi              /* arg 0: magic (zero-extended) */
    mov %esi, %esi              /* arg 1: boot information address */
    xor %ebp, %ebp              /* end of the frame-pointer chain */
    call atoll_main
5:  cli
    hlt
    jmp 5b

/* The boot GDT's data selector in DS, ES and SS; FS and GS null (GS gets
   its per-CPU base through the MSR). Shared with the AP entry. */
    .global load_data_segments
load_data_segments:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    ret

    .section .rodata
    .balign 8
/* The accessed bits are preset: the CPU would otherwise write them on the
   first segment load (SDM Vol. 3A, 3.4.5.1), and this table is read-only. */
boot_gdt:
    .quad 0                     /* null */
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf93000000ffff    /* 0x10: data, DPL 0 */
boot_gdt_end:
    .global boot_gdt_pointer
boot_gdt_pointer:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt
no_long_mode_msg:
    .asciz "atoll: this CPU has no 64-bit long mode\n"

    .section .bss
    .balign 4096
    .global boot_pml4
boot_pml4:
    .skip 4096
    .global boot_pdpt
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4 * 4096
    .balign 16
boot_stack_bottom:
    .skip 64 * 1024
    .global boot_stack_top
boot_stack_top:
    .code64
"#,
    options(att_syntax)
);

/// The Rust entry point, called by the code above in 64-bit mode with the
/// multiboot2 magic (EAX at entry) and the boot information address (EBX).
#[unsafe(no_mangle)]
extern "C" fn atoll_main(magic: u32, boot_info_addr: u64) -> ! {
    // SAFETY: the boot identity map is active (above), the address is the
    // one GRUB passed, and nothing in Atoll writes to the boot information,
    // the firmware tables or the boot modules.
    let (boot_info, memory) = unsafe {
        (
            super::boot_info_bytes(boot_info_addr),
            super::phys::BootMemory::new(),
        )
    };
    super::hooks::start(magic, boot_info, &memory)
}
