//! Booting a Linux bzImage through its 64-bit entry point, as
//! Documentation/x86/boot.rst ("THE LINUX/x86 BOOT PROTOCOL") describes it:
//! check the setup header ("The Real-Mode Kernel Header"), copy the
//! protected-mode kernel, fill `struct boot_params` (the "zero page",
//! arch/x86/include/uapi/asm/bootparam.h) and build what "64-bit Boot
//! Protocol" requires at entry: long mode with identity-mapped paging, a GDT
//! with `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18), RSI = the zero page.
//!
//! The image and initrd are hostile input: every offset and length is
//! computed with checked arithmetic, every placement is checked against the
//! VM's RAM before anything is written, and every failure is a
//! [`LinuxError`].
//!
//! # Guest-physical layout
//!
//! | range                   | what                                          |
//! |-------------------------|-----------------------------------------------|
//! | [`GDT`] 0x6000          | GDT: null, null, `__BOOT_CS`, `__BOOT_DS`     |
//! | [`ZERO_PAGE`] 0x7000    | `struct boot_params` (4 KiB)                  |
//! | 0x8000                  | free: the notional setup heap (`heap_end_ptr`)|
//! | [`PAGE_TABLES`] 0x9000  | PML4; PDPT at 0xa000; up to 4 PDs at 0xb000   |
//! | [`CMDLINE`] 0x20000     | command line, at most [`CMDLINE_MAX`] bytes   |
//! | 0x9fc00-0xfffff         | reserved in e820 (ACPI tables at 0xe0000)     |
//! | 0x100000 or pref_address| protected-mode kernel, `init_size` bytes      |
//! | highest fitting page    | initrd, below `initrd_addr_max` and RAM's end |
//!
//! Everything below 0x9fc00 is reported as RAM: the kernel copies the zero
//! page and command line early and builds its own GDT and page tables, as
//! it does after any boot loader.

use crate::addr::GuestPhysAddr;
use crate::bits::{low_u16, low_u32, usize_from};
use crate::loader::memory_map;
use crate::memory::{GuestMemory, MemoryError};
use atoll_platform::bytes::{self, put};

/// The boot GDT (descriptors in [`GDT_ENTRIES`]).
pub const GDT: u64 = 0x6000;
/// `struct boot_params`, whose address the kernel finds in RSI.
pub const ZERO_PAGE: u64 = 0x7000;
/// The PML4 (CR3); the PDPT follows, then the page directories.
pub const PAGE_TABLES: u64 = 0x9000;
/// The PDPT: one entry per GiB of RAM.
pub const PDPT: u64 = PAGE_TABLES + PAGE;
/// The first page directory: 2 MiB pages, one directory per GiB.
pub const PAGE_DIRECTORIES: u64 = PDPT + PAGE;
/// Page directories reserved: 4 map all of the low 4 GiB (RAM, at most
/// [`MAX_RAM`], needs 3).
pub const MAX_PAGE_DIRECTORIES: u64 = 4;
/// The kernel command line and the room for it, terminating NUL included.
pub const CMDLINE: u64 = 0x2_0000;
/// The command line's room in bytes, terminating NUL included.
pub const CMDLINE_MAX: u64 = 0x1_0000;
/// Where a kernel is loaded when its preferred address cannot be used
/// (boot.rst "Loading The Rest of The Kernel": bzImage at 0x100000).
pub const KERNEL_LOW: u64 = 0x10_0000;
/// RAM ends at the 32-bit device hole (I/O APIC, local APIC, ...).
pub const MAX_RAM: u64 = 0xc000_0000;
/// The boot selectors boot.rst "64-bit Boot Protocol" requires.
pub const BOOT_CS: u16 = 0x10;
/// The boot data selector (boot.rst "64-bit Boot Protocol": `__BOOT_DS`).
pub const BOOT_DS: u16 = 0x18;
/// The GDT at [`GDT`]: two null entries, then `__BOOT_CS` as a 64-bit code
/// segment (P, S, execute/read, L = 1, G = 1) and `__BOOT_DS` as a flat
/// 4 GiB read/write data segment (P, S, D/B = 1, G = 1) (Intel SDM vol. 3
/// 3.4.5). Both have the accessed bit set so the processor never writes
/// them back.
pub const GDT_ENTRIES: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

const PAGE: u64 = 4096;
const PAGE_2M: u64 = 1 << 21;
/// Page-table entry bits (Intel SDM vol. 3 4.5): present, writable, and
/// page size (a 2 MiB page in a page-directory entry).
const PTE_PRESENT_RW: u64 = 0b11;
const PTE_PAGE_SIZE: u64 = 1 << 7;

/// Setup-header fields: offsets in the image, and in `boot_params`, which
/// holds a copy of the header at the same offsets (boot.rst "The Real-Mode
/// Kernel Header").
mod hdr {
    pub const START: usize = 0x1f1;
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const BOOT_FLAG: usize = 0x1fe;
    /// The jump's displacement byte: the header ends at 0x202 + its value.
    pub const JUMP_DISPLACEMENT: usize = 0x201;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const HEAP_END_PTR: usize = 0x224;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// The end of the last field read here (`init_size`, protocol 2.10).
    pub const NEEDED_END: usize = 0x264;
    /// The end of the header area in `boot_params` (`hdr` and `_pad7`;
    /// `edd_mbr_sig_buffer` follows at 0x290): a longer header is not
    /// copied past it.
    pub const AREA_END: usize = 0x290;
}

/// `boot_params` fields outside the setup header (bootparam.h).
mod bp {
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const E820_TABLE: usize = 0x2d0;
    pub const E820_ENTRY_SIZE: usize = 20;
    pub const SIZE: usize = 4096;
}

/// "HdrS" (boot.rst "The Real-Mode Kernel Header").
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature at 0x1fe (boot.rst `boot_flag`).
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// Protocol 2.12 added `xloadflags`, which says whether the 64-bit entry
/// exists (boot.rst, protocol history).
pub const MIN_PROTOCOL: u16 = 0x020c;
/// `loadflags` bits (boot.rst "loadflags"): LOADED_HIGH (read: a bzImage,
/// loaded at 0x100000) and CAN_USE_HEAP (write: `heap_end_ptr` is valid).
pub const LOADED_HIGH: u8 = 1 << 0;
/// loadflags CAN_USE_HEAP (bit 7): `heap_end_ptr` is valid.
pub const CAN_USE_HEAP: u8 = 1 << 7;
/// `xloadflags` bit 0 (boot.rst "xloadflags"): the 64-bit entry at 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// `type_of_loader` 0xff: a boot loader with no assigned ID.
pub const LOADER_UNDEFINED: u8 = 0xff;
/// The 64-bit entry point's offset in the protected-mode kernel (boot.rst
/// "64-bit Boot Protocol").
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// e820 types (bootparam.h / ACPI "Address Range Types"): RAM, reserved.
pub const E820_RAM: u32 = 1;
/// e820 type 2: reserved.
pub const E820_RESERVED: u32 = 2;

/// Why a kernel could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxError {
    /// The image ends before the setup header's fields.
    TooShort {
        /// The image's length in bytes.
        len: usize,
    },
    /// No "HdrS" at 0x202 or no 0xaa55 at 0x1fe: not a bzImage.
    BadMagic,
    /// The boot protocol is older than 2.12.
    ProtocolTooOld {
        /// The image's protocol version.
        version: u16,
    },
    /// `xloadflags` lacks XLF_KERNEL_64: no 64-bit entry point.
    No64BitEntry,
    /// `loadflags` lacks LOADED_HIGH: a zImage, not a bzImage.
    NotBzImage,
    /// The header's own length (0x202 + the byte at 0x201) ends before
    /// the fields protocol 2.12 has.
    HeaderTooShort {
        /// Where the header ends in the image.
        end: usize,
    },
    /// The setup code (`setup_sects`) leaves no protected-mode kernel in
    /// the file.
    NoProtectedMode {
        /// Bytes of boot sector and setup code.
        setup_size: usize,
        /// The image's length in bytes.
        len: usize,
    },
    /// The protected-mode kernel is shorter than `syssize` says.
    Truncated {
        /// The protected-mode kernel's size `syssize` gives, in bytes.
        expected: u64,
        /// The bytes the image holds after the setup code.
        found: u64,
    },
    /// A relocatable kernel's `kernel_alignment` is not a power of two.
    BadAlignment(u32),
    /// A kernel that cannot be relocated wants to run below 1 MiB.
    BadLoadAddress(u64),
    /// The VM's RAM reaches into the device hole at 0xc0000000.
    RamTooLarge {
        /// The VM's RAM size in bytes.
        ram: u64,
    },
    /// The kernel needs RAM up to `needed`.
    RamTooSmall {
        /// The RAM size the kernel needs, in bytes.
        needed: u64,
        /// The VM's RAM size in bytes.
        ram: u64,
    },
    /// The command line is longer than the kernel accepts.
    CmdlineTooLong {
        /// The command line's length in bytes.
        len: usize,
        /// The longest the kernel accepts (`cmdline_size`).
        max: u64,
    },
    /// The command line contains a NUL byte.
    CmdlineHasNul,
    /// The initrd does not fit between the kernel and its highest address.
    InitrdTooBig {
        /// The initrd's length in bytes.
        len: u64,
        /// Bytes between the kernel's end and the highest address the
        /// initrd may take.
        room: u64,
    },
    /// A write to guest memory failed (cannot happen after the checks).
    Memory(MemoryError),
}

impl core::fmt::Display for LinuxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LinuxError::TooShort { len } => {
                write!(
                    f,
                    "the kernel ({len} bytes) is too short for a setup header"
                )
            }
            LinuxError::BadMagic => {
                f.write_str("not a bzImage: no \"HdrS\" at 0x202 or no 0xaa55 at 0x1fe")
            }
            LinuxError::ProtocolTooOld { version } => write!(
                f,
                "boot protocol {}.{:02} is too old: 2.12 or later is needed for the 64-bit entry",
                version >> 8,
                version & 0xff
            ),
            LinuxError::No64BitEntry => {
                f.write_str("the kernel has no 64-bit entry point (xloadflags lacks XLF_KERNEL_64)")
            }
            LinuxError::NotBzImage => {
                f.write_str("a zImage (loadflags lacks LOADED_HIGH): only bzImages are supported")
            }
            LinuxError::HeaderTooShort { end } => write!(
                f,
                "the setup header ends at {end:#x}, before the fields of protocol 2.12"
            ),
            LinuxError::NoProtectedMode { setup_size, len } => write!(
                f,
                "the setup code ({setup_size:#x} bytes) leaves no protected-mode kernel in the {len:#x}-byte file"
            ),
            LinuxError::Truncated { expected, found } => write!(
                f,
                "the protected-mode kernel is truncated: syssize says {expected:#x} bytes, the file has {found:#x}"
            ),
            LinuxError::BadAlignment(align) => {
                write!(f, "kernel_alignment {align:#x} is not a power of two")
            }
            LinuxError::BadLoadAddress(at) => write!(
                f,
                "the kernel is not relocatable and wants to run at {at:#x}, below 1 MiB"
            ),
            LinuxError::RamTooLarge { ram } => write!(
                f,
                "{ram:#x} bytes of RAM reach into the device hole at {MAX_RAM:#x}"
            ),
            LinuxError::RamTooSmall { needed, ram } => write!(
                f,
                "the kernel needs RAM up to {needed:#x}; the VM has {ram:#x} bytes"
            ),
            LinuxError::CmdlineTooLong { len, max } => write!(
                f,
                "the command line ({len} bytes) is longer than the kernel's maximum of {max}"
            ),
            LinuxError::CmdlineHasNul => f.write_str("the command line contains a NUL byte"),
            LinuxError::InitrdTooBig { len, room } => write!(
                f,
                "the initrd ({len:#x} bytes) does not fit in the {room:#x} bytes above the kernel"
            ),
            LinuxError::Memory(e) => write!(f, "{e}"),
        }
    }
}

impl From<MemoryError> for LinuxError {
    fn from(e: MemoryError) -> Self {
        LinuxError::Memory(e)
    }
}

/// The setup-header fields the loader uses (boot.rst "Details of Header
/// Fields").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupHeader {
    /// The boot protocol version (`version`, e.g. 0x020f for 2.15).
    pub version: u16,
    /// Setup sectors after the boot sector (0 in the file means 4).
    pub setup_sects: u8,
    /// The protected-mode kernel's size in 16-byte paragraphs.
    pub syssize: u32,
    /// `loadflags`, as the kernel sets them.
    pub loadflags: u8,
    /// `relocatable_kernel`: the kernel runs at any `kernel_alignment` multiple.
    pub relocatable: bool,
    /// `kernel_alignment`: the load address alignment a relocatable kernel needs.
    pub kernel_alignment: u32,
    /// `xloadflags` (protocol 2.12): XLF_KERNEL_64 says the 64-bit entry exists.
    pub xloadflags: u16,
    /// The command line's maximum length, without the NUL.
    pub cmdline_size: u32,
    /// The highest address the initrd may occupy (its last byte).
    pub initrd_addr_max: u32,
    /// Where the kernel runs from (LOAD_PHYSICAL_ADDR, header.S).
    pub pref_address: u64,
    /// Bytes the kernel needs from its run address while it decompresses.
    pub init_size: u32,
    /// The header's end in the image: 0x202 + the byte at 0x201.
    pub header_end: usize,
}

impl SetupHeader {
    /// Bytes before the protected-mode kernel: boot sector + setup code.
    pub fn setup_size(&self) -> usize {
        (usize::from(self.setup_sects) + 1) * 512
    }
}

/// What to boot.
#[derive(Clone, Copy, Debug)]
pub struct LinuxBoot<'a> {
    /// The bzImage file.
    pub image: &'a [u8],
    /// The initial RAM disk, if any.
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The ACPI RSDP's address, passed in `boot_params.acpi_rsdp_addr`;
    /// without it the kernel scans 0xe0000-0xfffff.
    pub acpi_rsdp: Option<u64>,
}

/// The bootstrap vCPU's state at the 64-bit entry (boot.rst "64-bit Boot
/// Protocol"): CR0.PE|PG, CR4.PAE, EFER.LME|LMA, CR3 = `cr3`, the GDT
/// loaded, CS = `code_selector`, DS/ES/SS = `data_selector`, interrupts
/// disabled, RSI = the zero page, RIP = the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxEntry {
    /// The 64-bit entry point: the load address + 0x200.
    pub rip: u64,
    /// The zero page's address (`boot_params`), in RSI.
    pub rsi: u64,
    /// The identity-mapping page tables' PML4.
    pub cr3: u64,
    /// The boot GDT's address.
    pub gdt_base: u64,
    /// The boot GDT's limit (bytes - 1).
    pub gdt_limit: u16,
    /// CS: [`BOOT_CS`].
    pub code_selector: u16,
    /// DS, ES, SS: [`BOOT_DS`].
    pub data_selector: u16,
}

/// A cheap check for a bzImage's "HdrS" and boot flag: chooses this loader
/// over the multiboot one. [`parse_header`] checks the rest.
pub fn is_bzimage(image: &[u8]) -> bool {
    bytes::u32_at(image, hdr::HEADER) == Some(HDRS_MAGIC)
        && bytes::u16_at(image, hdr::BOOT_FLAG) == Some(BOOT_FLAG_MAGIC)
}

/// Reads and checks the setup header.
pub fn parse_header(image: &[u8]) -> Result<SetupHeader, LinuxError> {
    if image.len() < hdr::NEEDED_END {
        return Err(LinuxError::TooShort { len: image.len() });
    }
    if !is_bzimage(image) {
        return Err(LinuxError::BadMagic);
    }
    let too_short = LinuxError::TooShort { len: image.len() };
    let u8_at = |at: usize| image.get(at).copied().ok_or(too_short);
    let u16_at = |at: usize| bytes::u16_at(image, at).ok_or(too_short);
    let u32_at = |at: usize| bytes::u32_at(image, at).ok_or(too_short);
    let version = u16_at(hdr::VERSION)?;
    if version < MIN_PROTOCOL {
        return Err(LinuxError::ProtocolTooOld { version });
    }
    let header_end = hdr::HEADER + usize::from(u8_at(hdr::JUMP_DISPLACEMENT)?);
    if header_end < hdr::NEEDED_END {
        return Err(LinuxError::HeaderTooShort { end: header_end });
    }
    let header = SetupHeader {
        version,
        // boot.rst "setup_sects": 0 means 4, for backwards compatibility.
        setup_sects: match u8_at(hdr::SETUP_SECTS)? {
            0 => 4,
            n => n,
        },
        syssize: u32_at(hdr::SYSSIZE)?,
        loadflags: u8_at(hdr::LOADFLAGS)?,
        relocatable: u8_at(hdr::RELOCATABLE_KERNEL)? != 0,
        kernel_alignment: u32_at(hdr::KERNEL_ALIGNMENT)?,
        xloadflags: u16_at(hdr::XLOADFLAGS)?,
        cmdline_size: u32_at(hdr::CMDLINE_SIZE)?,
        initrd_addr_max: u32_at(hdr::INITRD_ADDR_MAX)?,
        pref_address: bytes::u64_at(image, hdr::PREF_ADDRESS).ok_or(too_short)?,
        init_size: u32_at(hdr::INIT_SIZE)?,
        header_end,
    };
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::No64BitEntry);
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(LinuxError::NotBzImage);
    }
    Ok(header)
}

/// The protected-mode kernel: everything after the setup code, at least
/// `syssize` paragraphs (boot.rst "syssize", "Loading The Rest of The
/// Kernel").
fn protected_mode<'a>(image: &'a [u8], header: &SetupHeader) -> Result<&'a [u8], LinuxError> {
    let setup_size = header.setup_size();
    let kernel =
        image
            .get(setup_size..)
            .filter(|k| !k.is_empty())
            .ok_or(LinuxError::NoProtectedMode {
                setup_size,
                len: image.len(),
            })?;
    let expected = u64::from(header.syssize) * 16;
    let found = kernel.len() as u64;
    if found < expected {
        return Err(LinuxError::Truncated { expected, found });
    }
    Ok(kernel)
}

/// Where the kernel goes: its load address, and the end of everything it
/// uses while it decompresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KernelPlace {
    load: u64,
    end: u64,
}

/// Loads at `pref_address` when the kernel is relocatable and its
/// `init_size` bytes fit there, else at 0x100000 (boot.rst
/// "pref_address", "init_size"). The kernel then decompresses at its run
/// address (see [`run_address`]), which needs `init_size` bytes too.
fn place_kernel(header: &SetupHeader, file_len: u64, ram: u64) -> Result<KernelPlace, LinuxError> {
    let init_size = u64::from(header.init_size);
    let span = file_len.max(init_size);
    let fits_at = |at: u64| at.checked_add(span).is_some_and(|end| end <= ram);
    let load = if header.relocatable
        && header.pref_address >= KERNEL_LOW
        && fits_at(header.pref_address)
    {
        header.pref_address
    } else {
        KERNEL_LOW
    };
    let run = run_address(header, load)?;
    let too_small = LinuxError::RamTooSmall {
        needed: u64::MAX,
        ram,
    };
    let end = (load.checked_add(file_len).ok_or(too_small)?)
        .max(run.checked_add(init_size).ok_or(too_small)?);
    if end > ram {
        return Err(LinuxError::RamTooSmall { needed: end, ram });
    }
    Ok(KernelPlace { load, end })
}

/// Where the 64-bit entry decompresses the kernel to
/// (arch/x86/boot/compressed/head_64.S, `startup_64`): a relocatable
/// kernel rounds its load address up to `kernel_alignment` and never goes
/// below LOAD_PHYSICAL_ADDR (= `pref_address`); any other kernel runs at
/// LOAD_PHYSICAL_ADDR.
fn run_address(header: &SetupHeader, load: u64) -> Result<u64, LinuxError> {
    if !header.relocatable {
        return match header.pref_address {
            at if at < KERNEL_LOW => Err(LinuxError::BadLoadAddress(at)),
            at => Ok(at),
        };
    }
    let align = u64::from(header.kernel_alignment);
    if !align.is_power_of_two() {
        return Err(LinuxError::BadAlignment(header.kernel_alignment));
    }
    let aligned = load
        .checked_next_multiple_of(align)
        .ok_or(LinuxError::BadAlignment(header.kernel_alignment))?;
    Ok(aligned.max(header.pref_address))
}

/// Checks the command line against `cmdline_size` (boot.rst "cmdline_size":
/// the maximum without the NUL) and against the room at [`CMDLINE`].
fn check_cmdline(cmdline: &str, header: &SetupHeader) -> Result<(), LinuxError> {
    if cmdline.bytes().any(|b| b == 0) {
        return Err(LinuxError::CmdlineHasNul);
    }
    let max = u64::from(header.cmdline_size).min(CMDLINE_MAX - 1);
    if cmdline.len() as u64 > max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    Ok(())
}

/// The initrd's address: page-aligned, as high as possible with its last
/// byte at or below `initrd_addr_max` (boot.rst "initrd_addr_max") and
/// inside RAM, and above the kernel.
fn place_initrd(
    header: &SetupHeader,
    len: u64,
    kernel_end: u64,
    ram: u64,
) -> Result<u64, LinuxError> {
    let top = (u64::from(header.initrd_addr_max) + 1).min(ram);
    let room = top.saturating_sub(kernel_end);
    match top.checked_sub(len) {
        Some(start) if start / PAGE * PAGE >= kernel_end => Ok(start / PAGE * PAGE),
        _ => Err(LinuxError::InitrdTooBig { len, room }),
    }
}

/// Loads the kernel for its 64-bit entry and returns the entry state.
/// Everything is checked before the first byte is written.
pub fn load(mem: &mut impl GuestMemory, boot: &LinuxBoot<'_>) -> Result<LinuxEntry, LinuxError> {
    let header = parse_header(boot.image)?;
    let kernel = protected_mode(boot.image, &header)?;
    let ram = mem.size();
    if ram > MAX_RAM {
        return Err(LinuxError::RamTooLarge { ram });
    }
    check_cmdline(boot.cmdline, &header)?;
    let place = place_kernel(&header, kernel.len() as u64, ram)?;
    let initrd = match boot.initrd {
        Some(bytes) if !bytes.is_empty() => {
            let at = place_initrd(&header, bytes.len() as u64, place.end, ram)?;
            Some((at, bytes))
        }
        _ => None,
    };

    mem.write(GuestPhysAddr(place.load), kernel)?;
    if let Some((at, bytes)) = initrd {
        mem.write(GuestPhysAddr(at), bytes)?;
    }
    write_cmdline(mem, boot.cmdline)?;
    write_gdt(mem)?;
    write_page_tables(mem, ram)?;
    let ramdisk = initrd.map_or((0, 0), |(at, bytes)| (at, bytes.len() as u64));
    let zero_page = boot_params(boot, &header, place.load, ramdisk, ram);
    mem.write(GuestPhysAddr(ZERO_PAGE), &zero_page)?;
    Ok(LinuxEntry {
        rip: place.load + ENTRY_64_OFFSET,
        rsi: ZERO_PAGE,
        cr3: PAGE_TABLES,
        gdt_base: GDT,
        // A descriptor-table limit is 16 bits (SDM Vol. 3A 3.5.1).
        gdt_limit: low_u16((GDT_ENTRIES.len() * 8 - 1) as u64),
        code_selector: BOOT_CS,
        data_selector: BOOT_DS,
    })
}

/// The command line, NUL-terminated (boot.rst "The Kernel Command Line").
fn write_cmdline(mem: &mut impl GuestMemory, cmdline: &str) -> Result<(), MemoryError> {
    mem.write(GuestPhysAddr(CMDLINE), cmdline.as_bytes())?;
    mem.write(GuestPhysAddr(CMDLINE + cmdline.len() as u64), &[0])
}

fn write_gdt(mem: &mut impl GuestMemory) -> Result<(), MemoryError> {
    let mut bytes = [0u8; GDT_ENTRIES.len() * 8];
    for (slot, entry) in bytes.chunks_exact_mut(8).zip(GDT_ENTRIES) {
        slot.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write(GuestPhysAddr(GDT), &bytes)
}

/// Identity-maps `[0, ram)` rounded up to 2 MiB with 2 MiB pages: boot.rst
/// "64-bit Boot Protocol" wants the kernel's `init_size` range, the zero
/// page and the command line identity-mapped; all of RAM covers them and
/// the initrd. One PML4 entry, one PDPT entry per GiB (Intel SDM vol. 3
/// 4.5, IA-32e paging).
fn write_page_tables(mem: &mut impl GuestMemory, ram: u64) -> Result<(), MemoryError> {
    let tables = usize_from((2 + MAX_PAGE_DIRECTORIES) * PAGE);
    let mut bytes = alloc::vec![0u8; tables];
    put(&mut bytes, 0, &(PDPT | PTE_PRESENT_RW).to_le_bytes());
    let pages = ram.div_ceil(PAGE_2M);
    for page in 0..pages.min(MAX_PAGE_DIRECTORIES * 512) {
        let directory = page / 512;
        if page % 512 == 0 {
            let pd = PAGE_DIRECTORIES + directory * PAGE;
            let slot = usize_from(PAGE + directory * 8);
            put(&mut bytes, slot, &(pd | PTE_PRESENT_RW).to_le_bytes());
        }
        let entry = (page * PAGE_2M) | PTE_PAGE_SIZE | PTE_PRESENT_RW;
        let slot = usize_from(2 * PAGE + page * 8);
        put(&mut bytes, slot, &entry.to_le_bytes());
    }
    mem.write(GuestPhysAddr(PAGE_TABLES), &bytes)
}

/// `struct boot_params`: zeroed, the image's setup header copied in at
/// 0x1f1 (boot.rst "64-bit Boot Protocol"), then the fields a boot loader
/// writes (boot.rst "Details of Header Fields", Documentation/x86/
/// zero-page.rst).
fn boot_params(
    boot: &LinuxBoot<'_>,
    header: &SetupHeader,
    load: u64,
    (ramdisk_at, ramdisk_len): (u64, u64),
    ram: u64,
) -> [u8; bp::SIZE] {
    let mut page = [0u8; bp::SIZE];
    let end = header.header_end.min(hdr::AREA_END);
    if let (Some(dst), Some(src)) = (
        page.get_mut(hdr::START..end),
        boot.image.get(hdr::START..end),
    ) {
        dst.copy_from_slice(src);
    }
    put(&mut page, hdr::TYPE_OF_LOADER, &[LOADER_UNDEFINED]);
    let loadflags = header.loadflags | LOADED_HIGH | CAN_USE_HEAP;
    put(&mut page, hdr::LOADFLAGS, &[loadflags]);
    // The 64-bit entry runs no real-mode setup code, so nothing uses the
    // heap; the field still names free memory: the zero page stands where
    // the real-mode code would start, the page after it is the heap.
    let heap_end = low_u16(PAGE_TABLES - ZERO_PAGE - 0x200);
    put(&mut page, hdr::HEAP_END_PTR, &heap_end.to_le_bytes());
    // A 32-bit field; the 64-bit entry does not use it.
    put(&mut page, hdr::CODE32_START, &low_u32(load).to_le_bytes());
    put_split(&mut page, hdr::CMD_LINE_PTR, bp::EXT_CMD_LINE_PTR, CMDLINE);
    put_split(
        &mut page,
        hdr::RAMDISK_IMAGE,
        bp::EXT_RAMDISK_IMAGE,
        ramdisk_at,
    );
    put_split(
        &mut page,
        hdr::RAMDISK_SIZE,
        bp::EXT_RAMDISK_SIZE,
        ramdisk_len,
    );
    if let Some(rsdp) = boot.acpi_rsdp {
        put(&mut page, bp::ACPI_RSDP_ADDR, &rsdp.to_le_bytes());
    }
    put_e820(&mut page, ram);
    page
}

/// The e820 map (bootparam.h `boot_e820_entry`: u64 address, u64 size,
/// u32 type, packed): the same map the multiboot loader reports.
fn put_e820(page: &mut [u8], ram: u64) {
    let map = memory_map(ram);
    put(
        page,
        bp::E820_ENTRIES,
        &[u8::try_from(map.len()).unwrap_or(u8::MAX)],
    );
    for (i, (base, len, kind)) in map.into_iter().enumerate() {
        let at = bp::E820_TABLE + i * bp::E820_ENTRY_SIZE;
        put(page, at, &base.to_le_bytes());
        put(page, at + 8, &len.to_le_bytes());
        put(page, at + 16, &kind.to_le_bytes());
    }
}

/// A 64-bit value split over a header field (low half) and its
/// `boot_params` `ext_*` extension (high half, protocol 2.12).
fn put_split(page: &mut [u8], low: usize, high: usize, value: u64) {
    put(page, low, &low_u32(value).to_le_bytes());
    put(page, high, &((value >> 32) as u32).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::VecMemory;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;
    /// The fake kernel: 7 setup sectors (0x1000 bytes of setup area).
    const SETUP_SECTS: u8 = 7;
    const SETUP_SIZE: usize = 0x1000;
    const PAYLOAD: usize = 0x3000;

    /// Header fields of a synthetic bzImage.
    #[derive(Clone, Copy, Debug)]
    struct Fake {
        version: u16,
        setup_sects: u8,
        xloadflags: u16,
        loadflags: u8,
        relocatable: u8,
        kernel_alignment: u32,
        pref_address: u64,
        init_size: u32,
        cmdline_size: u32,
        initrd_addr_max: u32,
        jump: u8,
    }

    impl Default for Fake {
        fn default() -> Self {
            Fake {
                version: 0x020f,
                setup_sects: SETUP_SECTS,
                xloadflags: XLF_KERNEL_64 | 2,
                loadflags: LOADED_HIGH,
                relocatable: 1,
                kernel_alignment: 0x20_0000,
                pref_address: 16 * MIB,
                init_size: 4 * MIB as u32,
                cmdline_size: 2047,
                initrd_addr_max: 0x7fff_ffff,
                jump: 0x6a,
            }
        }
    }

    impl Fake {
        fn image(&self) -> Vec<u8> {
            let mut f = std::vec![0u8; SETUP_SIZE + PAYLOAD];
            f[0x1f1] = self.setup_sects;
            f[0x1f4..0x1f8].copy_from_slice(&((PAYLOAD / 16) as u32).to_le_bytes());
            f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
            f[0x200] = 0xeb;
            f[0x201] = self.jump;
            f[0x202..0x206].copy_from_slice(b"HdrS");
            f[0x206..0x208].copy_from_slice(&self.version.to_le_bytes());
            f[0x211] = self.loadflags;
            f[0x22c..0x230].copy_from_slice(&self.initrd_addr_max.to_le_bytes());
            f[0x230..0x234].copy_from_slice(&self.kernel_alignment.to_le_bytes());
            f[0x234] = self.relocatable;
            f[0x236..0x238].copy_from_slice(&self.xloadflags.to_le_bytes());
            f[0x238..0x23c].copy_from_slice(&self.cmdline_size.to_le_bytes());
            f[0x258..0x260].copy_from_slice(&self.pref_address.to_le_bytes());
            f[0x260..0x264].copy_from_slice(&self.init_size.to_le_bytes());
            // A recognisable header byte the loader must copy untouched.
            f[0x23c] = 0x5a;
            for (i, b) in f[SETUP_SIZE..].iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            f
        }
    }

    fn boot<'a>(image: &'a [u8], initrd: Option<&'a [u8]>, cmdline: &'a str) -> LinuxBoot<'a> {
        LinuxBoot {
            image,
            initrd,
            cmdline,
            acpi_rsdp: Some(0xe0000),
        }
    }

    fn u8_at(m: &VecMemory, at: u64) -> u8 {
        m.bytes[at as usize]
    }
    fn u16_at(m: &VecMemory, at: u64) -> u16 {
        u16::from_le_bytes(m.bytes[at as usize..at as usize + 2].try_into().unwrap())
    }
    fn u32_at(m: &VecMemory, at: u64) -> u32 {
        m.read_u32(GuestPhysAddr(at)).unwrap()
    }
    fn u64_at(m: &VecMemory, at: u64) -> u64 {
        m.read_u64(GuestPhysAddr(at)).unwrap()
    }
    fn zp(field: usize) -> u64 {
        ZERO_PAGE + field as u64
    }

    #[test]
    fn loads_at_pref_address_and_fills_boot_params() {
        let image = Fake::default().image();
        let mut mem = VecMemory::new(64 * MIB as usize);
        let initrd = [0x11u8; 5000];
        let e = load(
            &mut mem,
            &boot(&image, Some(&initrd), "console=ttyS0 quiet"),
        )
        .unwrap();
        let load_at = 16 * MIB;
        assert_eq!(
            e,
            LinuxEntry {
                rip: load_at + 0x200,
                rsi: ZERO_PAGE,
                cr3: PAGE_TABLES,
                gdt_base: GDT,
                gdt_limit: 31,
                code_selector: 0x10,
                data_selector: 0x18,
            }
        );
        let at = load_at as usize;
        assert_eq!(&mem.bytes[at..at + PAYLOAD], &image[SETUP_SIZE..]);
        // The header is copied; the loader's fields are written over it.
        assert_eq!(&mem.bytes[zp(0x202) as usize..][..4], b"HdrS");
        assert_eq!(u8_at(&mem, zp(0x23c)), 0x5a);
        assert_eq!(u8_at(&mem, zp(0x1f1)), SETUP_SECTS);
        assert_eq!(u16_at(&mem, zp(0x206)), 0x020f);
        assert_eq!(u8_at(&mem, zp(hdr::TYPE_OF_LOADER)), 0xff);
        assert_eq!(u8_at(&mem, zp(hdr::LOADFLAGS)), LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!(u16_at(&mem, zp(hdr::HEAP_END_PTR)), 0x1e00);
        assert_eq!(u32_at(&mem, zp(hdr::CODE32_START)), load_at as u32);
        assert_eq!(u32_at(&mem, zp(hdr::CMD_LINE_PTR)), CMDLINE as u32);
        assert_eq!(u32_at(&mem, zp(bp::EXT_CMD_LINE_PTR)), 0);
        assert_eq!(
            &mem.bytes[CMDLINE as usize..][..20],
            b"console=ttyS0 quiet\0"
        );
        assert_eq!(u64_at(&mem, zp(bp::ACPI_RSDP_ADDR)), 0xe0000);
        let rd = u64::from(u32_at(&mem, zp(hdr::RAMDISK_IMAGE)));
        assert_eq!(u32_at(&mem, zp(hdr::RAMDISK_SIZE)), 5000);
        assert_eq!(u32_at(&mem, zp(bp::EXT_RAMDISK_IMAGE)), 0);
        assert_eq!(u32_at(&mem, zp(bp::EXT_RAMDISK_SIZE)), 0);
        assert_eq!(&mem.bytes[rd as usize..rd as usize + 5000], &initrd[..]);
        // The sentinel (0x1ef) stays zero, so the kernel keeps the fields.
        assert_eq!(u8_at(&mem, zp(0x1ef)), 0);
        assert_eq!(
            u32_at(&mem, zp(0x26c)),
            0,
            "nothing past the header's end is copied"
        );
    }

    #[test]
    fn the_e820_map_has_low_ram_the_bios_hole_and_high_ram() {
        let image = Fake::default().image();
        let mut mem = VecMemory::new(64 * MIB as usize);
        load(&mut mem, &boot(&image, None, "")).unwrap();
        assert_eq!(u8_at(&mem, zp(bp::E820_ENTRIES)), 3);
        let expected = [
            (0, 0x9fc00, E820_RAM),
            (0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
            (0x100000, 63 * MIB, E820_RAM),
        ];
        for (i, (base, len, kind)) in expected.into_iter().enumerate() {
            let at = zp(bp::E820_TABLE + i * 20);
            assert_eq!(
                (
                    u64_at(&mem, at),
                    u64_at(&mem, at + 8),
                    u32_at(&mem, at + 16)
                ),
                (base, len, kind)
            );
        }
        assert_eq!(u32_at(&mem, zp(hdr::RAMDISK_IMAGE)), 0, "no initrd");
        assert_eq!(u8_at(&mem, CMDLINE), 0, "an empty command line is a NUL");
    }

    /// Walks the 4-level tables for `va` as the MMU would; `None` when a
    /// level is not present. Only 2 MiB leaves are expected.
    fn translate(mem: &VecMemory, cr3: u64, va: u64) -> Option<u64> {
        let pml4e = u64_at(mem, cr3 + (va >> 39 & 511) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = u64_at(mem, (pml4e & !0xfff) + (va >> 30 & 511) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        assert_eq!(pdpte & PTE_PAGE_SIZE, 0, "no 1 GiB pages");
        let pde = u64_at(mem, (pdpte & !0xfff) + (va >> 21 & 511) * 8);
        if pde & 1 == 0 {
            return None;
        }
        assert_eq!(pde & 0x83, 0x83, "present, writable, 2 MiB");
        Some((pde & !(PAGE_2M - 1) & ((1 << 52) - 1)) + (va & (PAGE_2M - 1)))
    }

    #[test]
    fn page_tables_identity_map_all_of_ram_with_2mib_pages() {
        let image = Fake::default().image();
        for ram in [64 * MIB, 1024 * MIB + 3 * MIB] {
            let mut mem = VecMemory::new(ram as usize);
            let e = load(&mut mem, &boot(&image, None, "")).unwrap();
            for va in (0..ram).step_by(PAGE_2M as usize) {
                assert_eq!(translate(&mem, e.cr3, va + 0x1234), Some(va + 0x1234));
            }
            let mapped_end = ram.next_multiple_of(PAGE_2M);
            assert_eq!(translate(&mem, e.cr3, mapped_end), None);
            assert_eq!(translate(&mem, e.cr3, 4 << 30), None);
        }
    }

    #[test]
    fn three_gib_of_ram_needs_three_page_directories() {
        // A 3 GiB VecMemory is too big for a test: build the tables for
        // MAX_RAM into a small one holding just the low pages.
        let mut mem = VecMemory::new(0x2_0000);
        write_page_tables(&mut mem, MAX_RAM).unwrap();
        assert_eq!(translate(&mem, PAGE_TABLES, MAX_RAM - 1), Some(MAX_RAM - 1));
        assert_eq!(translate(&mem, PAGE_TABLES, MAX_RAM), None);
        assert_eq!(u64_at(&mem, PDPT + 3 * 8), 0, "the fourth PD is unused");
    }

    #[test]
    fn the_gdt_has_64_bit_code_at_0x10_and_flat_data_at_0x18() {
        let image = Fake::default().image();
        let mut mem = VecMemory::new(64 * MIB as usize);
        let e = load(&mut mem, &boot(&image, None, "")).unwrap();
        let desc = |sel: u16| u64_at(&mem, e.gdt_base + u64::from(sel));
        assert_eq!(desc(0), 0);
        assert_eq!(desc(8), 0);
        let (cs, ds) = (desc(e.code_selector), desc(e.data_selector));
        let access = |d: u64| (d >> 40) as u8;
        let flags = |d: u64| (d >> 52) as u8 & 0xf;
        let limit = |d: u64| (d & 0xffff) | (d >> 32 & 0xf_0000);
        assert_eq!(access(cs), 0x9b, "present, code, execute/read");
        assert_eq!(flags(cs), 0b1010, "G, L");
        assert_eq!(access(ds), 0x93, "present, data, read/write");
        assert_eq!(flags(ds), 0b1100, "G, D/B");
        assert_eq!((limit(cs), limit(ds)), (0xfffff, 0xfffff));
        assert_eq!(u64::from(e.gdt_limit) + 1, 4 * 8);
    }

    #[test]
    fn the_initrd_goes_high_page_aligned_and_clear_of_the_kernel() {
        let image = Fake::default().image();
        let ram = 64 * MIB;
        let mut mem = VecMemory::new(ram as usize);
        let initrd = std::vec![7u8; 3 * MIB as usize + 5];
        load(&mut mem, &boot(&image, Some(&initrd), "")).unwrap();
        let at = u64::from(u32_at(&mem, zp(hdr::RAMDISK_IMAGE)));
        assert_eq!(at % PAGE, 0);
        assert!(at + initrd.len() as u64 <= ram);
        assert!(
            ram - (at + initrd.len() as u64) < PAGE,
            "as high as it goes"
        );
        assert!(at >= 16 * MIB + 4 * MIB, "above the kernel's init_size");

        // initrd_addr_max is the highest byte the initrd may occupy.
        let low_max = Fake {
            initrd_addr_max: 32 * MIB as u32 - 1,
            ..Fake::default()
        };
        load(&mut mem, &boot(&low_max.image(), Some(&initrd), "")).unwrap();
        let at = u64::from(u32_at(&mem, zp(hdr::RAMDISK_IMAGE)));
        assert_eq!(at, (32 * MIB - initrd.len() as u64) / PAGE * PAGE);
    }

    #[test]
    fn a_kernel_still_needs_init_size_at_its_run_address() {
        // pref_address 4 MiB does not fit in 5 MiB, so the kernel is
        // loaded at 1 MiB; but its decompressor moves to
        // max(align_up(1 MiB, 2 MiB), pref_address) = 4 MiB and needs
        // init_size (2 MiB) from there.
        let image = Fake {
            pref_address: 4 * MIB,
            init_size: 2 * MIB as u32,
            ..Fake::default()
        }
        .image();
        let mut mem = VecMemory::new(5 * MIB as usize);
        assert_eq!(
            load(&mut mem, &boot(&image, None, "")),
            Err(LinuxError::RamTooSmall {
                needed: 6 * MIB,
                ram: 5 * MIB
            })
        );
        let mut mem = VecMemory::new(6 * MIB as usize);
        assert_eq!(
            load(&mut mem, &boot(&image, None, "")).unwrap().rip,
            4 * MIB + 0x200
        );
    }

    #[test]
    fn kernels_that_run_at_1mib_load_there() {
        let fixed = Fake {
            relocatable: 0,
            pref_address: MIB,
            init_size: 2 * MIB as u32,
            ..Fake::default()
        };
        let relocatable = Fake {
            pref_address: MIB,
            kernel_alignment: 0x1000,
            init_size: 7 * MIB as u32,
            ..Fake::default()
        };
        for (fake, ram) in [(fixed, 4 * MIB), (relocatable, 8 * MIB)] {
            let mut mem = VecMemory::new(ram as usize);
            let e = load(&mut mem, &boot(&fake.image(), None, "")).unwrap();
            assert_eq!(e.rip, MIB + 0x200);
            assert_eq!(u32_at(&mem, zp(hdr::CODE32_START)), MIB as u32);
            // One byte less RAM than 1 MiB + init_size is too little.
            let needed = MIB + u64::from(fake.init_size);
            let mut small = VecMemory::new(needed as usize - 1);
            assert_eq!(
                load(&mut small, &boot(&fake.image(), None, "")),
                Err(LinuxError::RamTooSmall {
                    needed,
                    ram: needed - 1
                })
            );
        }
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let mut image = Fake {
            setup_sects: 0,
            ..Fake::default()
        }
        .image();
        // syssize must fit after 5 * 512 bytes of setup.
        image[0x1f4..0x1f8].copy_from_slice(&0u32.to_le_bytes());
        let header = parse_header(&image).unwrap();
        assert_eq!(header.setup_sects, 4);
        assert_eq!(header.setup_size(), 5 * 512);
        let mut mem = VecMemory::new(64 * MIB as usize);
        load(&mut mem, &boot(&image, None, "")).unwrap();
        assert_eq!(mem.bytes[16 * MIB as usize], image[5 * 512]);
    }

    #[test]
    fn each_malformed_image_gets_its_error() {
        let good = Fake::default();
        let with = |f: &dyn Fn(&mut Fake)| {
            let mut fake = good;
            f(&mut fake);
            fake.image()
        };
        let mut bad_magic = good.image();
        bad_magic[0x202] = b'X';
        let mut bad_flag = good.image();
        bad_flag[0x1fe] = 0;
        let mut truncated = good.image();
        truncated.truncate(SETUP_SIZE + PAYLOAD - 16);
        let setup_only = good.image()[..SETUP_SIZE].to_vec();
        let cases: Vec<(Vec<u8>, LinuxError)> = std::vec![
            (std::vec![0u8; 0x200], LinuxError::TooShort { len: 0x200 }),
            (bad_magic, LinuxError::BadMagic),
            (bad_flag, LinuxError::BadMagic),
            (
                with(&|f| f.version = 0x020b),
                LinuxError::ProtocolTooOld { version: 0x020b }
            ),
            (with(&|f| f.xloadflags = 2), LinuxError::No64BitEntry),
            (with(&|f| f.loadflags = 0), LinuxError::NotBzImage),
            (
                with(&|f| f.jump = 0x40),
                LinuxError::HeaderTooShort { end: 0x242 }
            ),
            (
                with(&|f| f.setup_sects = 0xff),
                LinuxError::NoProtectedMode {
                    setup_size: 0x20000,
                    len: SETUP_SIZE + PAYLOAD
                }
            ),
            (
                setup_only,
                LinuxError::NoProtectedMode {
                    setup_size: SETUP_SIZE,
                    len: SETUP_SIZE
                }
            ),
            (
                truncated,
                LinuxError::Truncated {
                    expected: PAYLOAD as u64,
                    found: PAYLOAD as u64 - 16
                }
            ),
            (
                with(&|f| f.kernel_alignment = 0x30_0000),
                LinuxError::BadAlignment(0x30_0000)
            ),
            (
                with(&|f| {
                    f.relocatable = 0;
                    f.pref_address = 0x1_0000;
                }),
                LinuxError::BadLoadAddress(0x1_0000)
            ),
            (
                with(&|f| f.init_size = u32::MAX),
                LinuxError::RamTooSmall {
                    needed: 16 * MIB + u64::from(u32::MAX),
                    ram: 64 * MIB
                }
            ),
        ];
        for (image, expected) in cases {
            let mut mem = VecMemory::new(64 * MIB as usize);
            assert_eq!(load(&mut mem, &boot(&image, None, "")), Err(expected));
            assert!(
                mem.bytes.iter().all(|b| *b == 0),
                "{expected}: nothing written"
            );
        }
    }

    #[test]
    fn bad_command_lines_ram_sizes_and_initrds_are_refused() {
        let image = Fake {
            cmdline_size: 8,
            ..Fake::default()
        }
        .image();
        let mut mem = VecMemory::new(64 * MIB as usize);
        assert!(load(&mut mem, &boot(&image, None, "12345678")).is_ok());
        assert_eq!(
            load(&mut mem, &boot(&image, None, "123456789")),
            Err(LinuxError::CmdlineTooLong { len: 9, max: 8 })
        );
        assert_eq!(
            load(&mut mem, &boot(&image, None, "a\0b")),
            Err(LinuxError::CmdlineHasNul)
        );
        let huge = Fake {
            cmdline_size: u32::MAX,
            ..Fake::default()
        }
        .image();
        let long = "x".repeat(CMDLINE_MAX as usize);
        assert_eq!(
            load(&mut mem, &boot(&huge, None, &long)),
            Err(LinuxError::CmdlineTooLong {
                len: CMDLINE_MAX as usize,
                max: CMDLINE_MAX - 1
            })
        );

        let good = Fake::default().image();
        let mut tiny = VecMemory::new(MIB as usize);
        assert!(matches!(
            load(&mut tiny, &boot(&good, None, "")),
            Err(LinuxError::RamTooSmall { .. })
        ));

        // RAM above 3 GiB is refused before anything is touched; a fake
        // memory saves allocating it.
        struct Big;
        impl GuestMemory for Big {
            fn size(&self) -> u64 {
                MAX_RAM + PAGE
            }
            fn read(&self, gpa: GuestPhysAddr, _: &mut [u8]) -> Result<(), MemoryError> {
                Err(MemoryError { gpa, len: 0 })
            }
            fn write(&mut self, gpa: GuestPhysAddr, _: &[u8]) -> Result<(), MemoryError> {
                Err(MemoryError { gpa, len: 0 })
            }
        }
        assert_eq!(
            load(&mut Big, &boot(&good, None, "")),
            Err(LinuxError::RamTooLarge {
                ram: MAX_RAM + PAGE
            })
        );

        // 64 MiB - (16 MiB + 4 MiB) = 44 MiB of room above the kernel.
        let initrd = std::vec![1u8; 44 * MIB as usize + 1];
        assert_eq!(
            load(&mut mem, &boot(&good, Some(&initrd), "")),
            Err(LinuxError::InitrdTooBig {
                len: 44 * MIB + 1,
                room: 44 * MIB
            })
        );
        assert!(load(&mut mem, &boot(&good, Some(&initrd[1..]), "")).is_ok());
    }

    #[test]
    fn is_bzimage_tells_bzimages_from_other_files() {
        assert!(is_bzimage(&Fake::default().image()));
        assert!(!is_bzimage(b"\x7fELF"));
        assert!(!is_bzimage(&[0; 0x300]));
    }

    #[test]
    fn errors_read_well() {
        let e = LinuxError::ProtocolTooOld { version: 0x020b };
        assert_eq!(
            std::format!("{e}"),
            "boot protocol 2.11 is too old: 2.12 or later is needed for the 64-bit entry"
        );
    }

    fn arb_fake() -> impl proptest::strategy::Strategy<Value = Fake> {
        use proptest::prelude::*;
        (
            (
                any::<u16>(),
                any::<u8>(),
                any::<u16>(),
                any::<u8>(),
                any::<u8>(),
            ),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
            ),
            any::<u8>(),
        )
            .prop_map(
                |((version, setup_sects, xlf, lf, reloc), (align, pref, init, cmd, rd), jump)| {
                    Fake {
                        version: version | 0x0200,
                        setup_sects: setup_sects % 16,
                        xloadflags: xlf,
                        loadflags: lf,
                        relocatable: reloc,
                        kernel_alignment: if align % 2 == 0 {
                            1 << (align % 32)
                        } else {
                            align
                        },
                        pref_address: if pref % 2 == 0 {
                            pref % (64 * MIB)
                        } else {
                            pref
                        },
                        init_size: init % (64 * MIB as u32),
                        cmdline_size: cmd % 64,
                        initrd_addr_max: rd,
                        jump,
                    }
                },
            )
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..0x1400),
            initrd in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut mem = VecMemory::new(8 * MIB as usize);
            let _ = load(&mut mem, &boot(&bytes, Some(&initrd), "c"));
        }

        #[test]
        fn random_header_fields_never_panic(
            fake in arb_fake(),
            ram_mib in 1u64..40,
            initrd_len in 0usize..0x10_0000,
            cmdline in "[a-z ]{0,80}",
        ) {
            let image = fake.image();
            let initrd = std::vec![0u8; initrd_len];
            let mut mem = VecMemory::new((ram_mib * MIB) as usize);
            if let Ok(e) = load(&mut mem, &boot(&image, Some(&initrd), &cmdline)) {
                // Whatever loads, loads where it said, above 1 MiB.
                proptest::prop_assert!(e.rip >= KERNEL_LOW + 0x200);
                let load_at = e.rip - 0x200;
                proptest::prop_assert!(load_at + PAYLOAD as u64 <= ram_mib * MIB);
                let rd = u64::from(u32_at(&mem, zp(hdr::RAMDISK_IMAGE)));
                if initrd_len > 0 {
                    let kernel_end = load_at + u64::from(fake.init_size).max(PAYLOAD as u64);
                    proptest::prop_assert!(rd >= kernel_end && rd % PAGE == 0);
                    proptest::prop_assert!(rd + initrd_len as u64 <= ram_mib * MIB);
                }
            }
        }
    }
}
