//! Guest loading as GRUB's `multiboot` and `multiboot2` commands do it
//! (Multiboot Specification 0.6.96, Multiboot2 Specification 2.0): find the
//! header, copy the ELF's loadable segments, place the modules and the
//! information block, and describe the machine state the kernel starts in
//! (the same for both: 32-bit protected mode, paging off, EAX = the
//! protocol's magic, EBX = the information block). The kernel file is hostile input:
//! every offset, address and length is checked with overflow-safe
//! arithmetic, and everything must land inside the VM's RAM without
//! overlapping.

use crate::bits::low_u32;
use alloc::vec::Vec;
use atoll_platform::bytes;

use crate::addr::GuestPhysAddr;
use crate::memory::{GuestMemory, MemoryError};

/// The multiboot v1 header magic, and the magic the kernel finds in EAX.
pub const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
/// The magic a multiboot v1 kernel finds in EAX (spec 3.2).
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie 4-byte aligned within the first 8 KiB (spec 3.1.1).
const HEADER_SEARCH: usize = 8192;
/// Header flags Atoll honours: page-align modules (0), memory info (1).
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Flag 16 (a.out kludge addresses) is not supported; the other required
/// flags (bits 2-15) ask for things Atoll cannot give (video mode, ...).
const SUPPORTED_REQUIRED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO;
const PAGE: u64 = 4096;
/// Where the memory map's usable memory below 1 MiB ends (the EBDA and
/// BIOS area follow, reserved as on a PC).
const LOW_MEMORY_END: u64 = 0x9_fc00;
const HIGH_MEMORY_START: u64 = 0x10_0000;

/// A boot module: its bytes and its command line.
#[derive(Clone, Copy, Debug)]
pub struct Module<'a> {
    /// The module's contents.
    pub bytes: &'a [u8],
    /// Its command line (its `string` field in the information block).
    pub cmdline: &'a str,
}

/// The vCPU 0 state a multiboot kernel starts in (spec 3.2): 32-bit
/// protected mode, flat segments, paging off, EAX = the boot loader magic,
/// EBX = the information block's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// EIP: the kernel's entry point.
    pub entry: u32,
    /// The boot loader magic for the kernel's protocol.
    pub eax: u32,
    /// The information block's guest-physical address.
    pub ebx: u32,
}

/// Why a kernel could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// No multiboot or Multiboot2 header in the kernel's first bytes.
    NoHeader,
    /// The header's checksum does not make its fields sum to 0.
    BadChecksum,
    /// The header asks for features Atoll does not provide (the flags).
    UnsupportedFlags(u32),
    /// The kernel is not a little-endian x86 ELF file.
    NotElf,
    /// A field of the ELF file is out of range (the field's name).
    BadElf(&'static str),
    /// The entry point is not in a loaded segment below 4 GiB.
    BadEntry(u64),
    /// The command line (`what`: "command line") or a module's
    /// ("module command line") holds a NUL byte: the information block
    /// stores them NUL-terminated, so the kernel would see it cut short.
    StringHasNul(&'static str),
    /// Something does not fit in the VM's RAM, or overlaps.
    DoesNotFit {
        /// What did not fit ("kernel segment", "module", ...).
        what: &'static str,
        /// Its guest-physical address.
        at: u64,
        /// Its length in bytes.
        len: u64,
    },
}

impl core::fmt::Display for LoadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LoadError::NoHeader => {
                f.write_str("no multiboot header (magic 0x1badb002) in the first 8 KiB")
            }
            LoadError::BadChecksum => f.write_str("the multiboot header's checksum is wrong"),
            LoadError::UnsupportedFlags(bits) => {
                write!(
                    f,
                    "the multiboot header requires unsupported features {bits:#x}"
                )
            }
            LoadError::NotElf => f.write_str("the kernel is not a little-endian x86 ELF file"),
            LoadError::BadElf(field) => write!(f, "the kernel's ELF {field} is out of range"),
            LoadError::BadEntry(entry) => {
                write!(
                    f,
                    "the entry point {entry:#x} is not in a loaded segment below 4 GiB"
                )
            }
            LoadError::StringHasNul(what) => {
                write!(f, "the {what} contains a NUL byte")
            }
            LoadError::DoesNotFit { what, at, len } => write!(
                f,
                "the {what} ({len:#x} bytes at {at:#x}) does not fit in the VM's memory"
            ),
        }
    }
}

impl From<MemoryError> for LoadError {
    fn from(e: MemoryError) -> Self {
        LoadError::DoesNotFit {
            what: "image",
            at: e.gpa.0,
            len: e.len,
        }
    }
}

/// Loads `kernel` with `modules` and `cmdline` into `mem`; returns the
/// entry state. A Multiboot2 header is preferred when the kernel has both
/// (as GRUB's `multiboot2` command would be used for it).
pub fn load(
    mem: &mut impl GuestMemory,
    kernel: &[u8],
    modules: &[Module<'_>],
    cmdline: &str,
) -> Result<EntryState, LoadError> {
    check_strings(cmdline, modules)?;
    let protocol = match multiboot2_header(kernel)? {
        Some(header) => Protocol::Multiboot2(header),
        None => Protocol::Multiboot(find_header(kernel)?),
    };
    let segments = elf_segments(kernel)?;
    let mut placed = Placement::new(mem.size());
    for s in &segments {
        placed.claim("kernel segment", s.paddr, s.memsz)?;
    }
    let entry = match protocol {
        Protocol::Multiboot2(Mb2Header { entry: Some(e) }) => e,
        _ => elf_entry(kernel, &segments)?,
    };
    for s in &segments {
        let bytes = slice(kernel, s.offset, s.filesz, "segment offset")?;
        mem.write(GuestPhysAddr(s.paddr), bytes)?;
        // The rest of the segment (its .bss) reads as zeroes (ELF gABI).
        mem.zero(GuestPhysAddr(s.paddr + s.filesz), s.memsz - s.filesz)?;
    }
    let page_align = match protocol {
        Protocol::Multiboot(flags) => flags & FLAG_PAGE_ALIGN != 0,
        Protocol::Multiboot2(_) => true,
    };
    let mut next = placed.end.next_multiple_of(PAGE);
    let mut module_entries = Vec::with_capacity(modules.len());
    for m in modules {
        let start = if page_align {
            next.next_multiple_of(PAGE)
        } else {
            next
        };
        placed.claim("module", start, m.bytes.len() as u64)?;
        mem.write(GuestPhysAddr(start), m.bytes)?;
        module_entries.push((start, start + m.bytes.len() as u64, m.cmdline));
        next = start + m.bytes.len() as u64;
    }
    let info_at = next.next_multiple_of(PAGE);
    let (info, eax) = match protocol {
        Protocol::Multiboot(_) => (
            InfoBlock::build(info_at, mem.size(), cmdline, &module_entries),
            MULTIBOOT_BOOTLOADER_MAGIC,
        ),
        Protocol::Multiboot2(_) => (
            multiboot2_info(mem.size(), cmdline, &module_entries),
            MULTIBOOT2_BOOTLOADER_MAGIC,
        ),
    };
    placed.claim("boot information", info_at, info.len() as u64)?;
    mem.write(GuestPhysAddr(info_at), &info)?;
    // The block's pointers to its own parts are 32 bits: all of it must
    // lie below 4 GiB, not only its start.
    let len = info.len() as u64;
    let below_4g = info_at.checked_add(len).is_some_and(|end| end <= 1 << 32);
    let ebx = u32::try_from(info_at)
        .ok()
        .filter(|_| below_4g)
        .ok_or(LoadError::DoesNotFit {
            what: "boot information",
            at: info_at,
            len,
        })?;
    Ok(EntryState { entry, eax, ebx })
}

/// The information block holds C strings (spec 3.3, 3.6.3): a NUL
/// inside one would cut it short without a word, so it is refused, as
/// the Linux loader refuses one in its command line.
fn check_strings(cmdline: &str, modules: &[Module<'_>]) -> Result<(), LoadError> {
    if cmdline.contains('\0') {
        return Err(LoadError::StringHasNul("command line"));
    }
    if modules.iter().any(|m| m.cmdline.contains('\0')) {
        return Err(LoadError::StringHasNul("module command line"));
    }
    Ok(())
}

/// Which boot protocol a kernel asks for.
#[derive(Clone, Copy)]
enum Protocol {
    /// Multiboot (v1) with its header flags.
    Multiboot(u32),
    Multiboot2(Mb2Header),
}

/// What a Multiboot2 header asks for that Atoll honours.
#[derive(Clone, Copy)]
struct Mb2Header {
    /// The entry address tag (type 3), overriding the ELF entry.
    entry: Option<u32>,
}

/// The Multiboot2 header magic (spec 3.1.1) and the magic in EAX (3.3).
pub const MULTIBOOT2_MAGIC: u32 = 0xe852_50d6;
/// The magic a Multiboot2 kernel finds in EAX (spec 3.3).
pub const MULTIBOOT2_BOOTLOADER_MAGIC: u32 = 0x36d7_6289;
/// The header must lie 8-byte aligned within the first 32 KiB.
const MB2_SEARCH: usize = 32768;

/// Header tags (spec 3.1.3 onwards) and what Atoll does with them.
mod mb2_tag {
    pub const END: u16 = 0;
    pub const INFORMATION_REQUEST: u16 = 1;
    pub const ADDRESS: u16 = 2;
    pub const ENTRY_ADDRESS: u16 = 3;
    pub const CONSOLE_FLAGS: u16 = 4;
    pub const MODULE_ALIGN: u16 = 6;
    pub const RELOCATABLE: u16 = 10;
    pub const OPTIONAL: u16 = 1;
}

/// Information tags Atoll provides (spec 3.6): command line (1), boot
/// loader name (2), modules (3), basic memory (4), memory map (6).
const MB2_PROVIDED: [u32; 5] = [1, 2, 3, 4, 6];

/// Finds and checks a Multiboot2 header; `None` when there is none.
fn multiboot2_header(kernel: &[u8]) -> Result<Option<Mb2Header>, LoadError> {
    let search = kernel.get(..MB2_SEARCH.min(kernel.len())).unwrap_or(&[]);
    let Some(at) = (0..search.len())
        .step_by(8)
        .find(|&at| bytes::u32_at(search, at) == Some(MULTIBOOT2_MAGIC))
    else {
        return Ok(None);
    };
    let field = |o: usize| bytes::u32_at(kernel, at + o).ok_or(LoadError::BadChecksum);
    let (arch, length, checksum) = (field(4)?, field(8)?, field(12)?);
    let sum = MULTIBOOT2_MAGIC
        .wrapping_add(arch)
        .wrapping_add(length)
        .wrapping_add(checksum);
    if sum != 0 || arch != 0 || length < 24 {
        return Err(LoadError::BadChecksum);
    }
    let end = at.saturating_add(length as usize).min(kernel.len());
    let mut header = Mb2Header { entry: None };
    let mut tag = at + 16;
    while tag + 8 <= end {
        let kind = bytes::u16_at(kernel, tag).unwrap_or(0);
        let flags = bytes::u16_at(kernel, tag + 2).unwrap_or(0);
        let size = bytes::u32_at(kernel, tag + 4).unwrap_or(0) as usize;
        let optional = flags & mb2_tag::OPTIONAL != 0;
        // A tag lies inside the header (spec 3.1.3): its size bounds every
        // loop over it, so it is checked first.
        let tag_end = tag
            .checked_add(size)
            .filter(|&e| size >= 8 && e <= end)
            .ok_or(LoadError::BadChecksum)?;
        match kind {
            mb2_tag::END => break,
            mb2_tag::INFORMATION_REQUEST if !optional => {
                let requested = (tag + 8..tag_end).step_by(4);
                for r in requested.filter_map(|o| bytes::u32_at(kernel, o)) {
                    if !MB2_PROVIDED.contains(&r) {
                        return Err(LoadError::UnsupportedFlags(r));
                    }
                }
            }
            mb2_tag::ENTRY_ADDRESS => header.entry = bytes::u32_at(kernel, tag + 8),
            mb2_tag::ADDRESS if !optional => return Err(LoadError::UnsupportedFlags(1 << 16)),
            mb2_tag::INFORMATION_REQUEST
            | mb2_tag::CONSOLE_FLAGS
            | mb2_tag::MODULE_ALIGN
            | mb2_tag::RELOCATABLE => {}
            _ if optional => {}
            other => return Err(LoadError::UnsupportedFlags(u32::from(other) << 16)),
        }
        tag = tag_end.next_multiple_of(8);
    }
    Ok(Some(header))
}

/// The Multiboot2 information structure (spec 3.6), position-independent.
fn multiboot2_info(ram: u64, cmdline: &str, modules: &[(u64, u64, &str)]) -> Vec<u8> {
    let mut out = alloc::vec![0u8; 8];
    let tag = |out: &mut Vec<u8>, kind: u32, body: &[u8]| {
        out.extend_from_slice(&kind.to_le_bytes());
        let size = u32::try_from(8 + body.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(body);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
    };
    let cstr = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        b
    };
    tag(&mut out, 1, &cstr(cmdline));
    tag(&mut out, 2, LOADER_NAME);
    // Module addresses are 32-bit fields (spec 3.6.6); their low halves are
    // kept, and `load` rejects a block that does not lie below 4 GiB, which
    // the modules (placed before it) then do too.
    for (start, end, name) in modules {
        let mut body = Vec::new();
        body.extend_from_slice(&low_u32(*start).to_le_bytes());
        body.extend_from_slice(&low_u32(*end).to_le_bytes());
        body.extend_from_slice(&cstr(name));
        tag(&mut out, 3, &body);
    }
    let upper = u32::try_from(ram.saturating_sub(HIGH_MEMORY_START) / 1024).unwrap_or(u32::MAX);
    let mut basic = Vec::new();
    basic.extend_from_slice(&low_u32(LOW_MEMORY_END / 1024).to_le_bytes());
    basic.extend_from_slice(&upper.to_le_bytes());
    tag(&mut out, 4, &basic);
    let mut mmap = Vec::new();
    mmap.extend_from_slice(&24u32.to_le_bytes());
    mmap.extend_from_slice(&0u32.to_le_bytes());
    for (base, len, kind) in memory_map(ram) {
        mmap.extend_from_slice(&base.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&kind.to_le_bytes());
        mmap.extend_from_slice(&0u32.to_le_bytes());
    }
    tag(&mut out, 6, &mmap);
    tag(&mut out, 0, &[]);
    let total = u32::try_from(out.len()).unwrap_or(u32::MAX);
    if let Some(head) = out.get_mut(..4) {
        head.copy_from_slice(&total.to_le_bytes());
    }
    out
}

/// The header's flags, after the magic and checksum check.
fn find_header(kernel: &[u8]) -> Result<u32, LoadError> {
    let search = kernel.get(..HEADER_SEARCH.min(kernel.len())).unwrap_or(&[]);
    let header = (0..search.len())
        .step_by(4)
        .find(|&at| bytes::u32_at(search, at) == Some(MULTIBOOT_MAGIC))
        .ok_or(LoadError::NoHeader)?;
    let flags = bytes::u32_at(kernel, header + 4).ok_or(LoadError::NoHeader)?;
    let checksum = bytes::u32_at(kernel, header + 8).ok_or(LoadError::NoHeader)?;
    if MULTIBOOT_MAGIC.wrapping_add(flags).wrapping_add(checksum) != 0 {
        return Err(LoadError::BadChecksum);
    }
    let required_unsupported = flags & 0xffff & !SUPPORTED_REQUIRED;
    if required_unsupported != 0 || flags & (1 << 16) != 0 {
        return Err(LoadError::UnsupportedFlags(
            required_unsupported | flags & (1 << 16),
        ));
    }
    Ok(flags)
}

/// One PT_LOAD segment.
#[derive(Clone, Copy, Debug)]
struct Segment {
    offset: u64,
    paddr: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
}

const PT_LOAD: u32 = 1;

/// The loadable segments of an ELF32 (EM_386) or ELF64 (EM_X86_64) file
/// (System V ABI, ELF header and program header layouts).
fn elf_segments(elf: &[u8]) -> Result<Vec<Segment>, LoadError> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(5) != Some(&1) {
        return Err(LoadError::NotElf);
    }
    let class64 = match (elf.get(4), bytes::u16_at(elf, 18)) {
        (Some(1), Some(3)) => false,
        (Some(2), Some(62)) => true,
        _ => return Err(LoadError::NotElf),
    };
    let (phoff, phentsize, phnum) = if class64 {
        (
            bytes::u64_at(elf, 32),
            bytes::u16_at(elf, 54),
            bytes::u16_at(elf, 56),
        )
    } else {
        (
            bytes::u32_at(elf, 28).map(u64::from),
            bytes::u16_at(elf, 42),
            bytes::u16_at(elf, 44),
        )
    };
    let bad = LoadError::BadElf("program header table");
    let (phoff, phentsize, phnum) = (phoff.ok_or(bad)?, phentsize.ok_or(bad)?, phnum.ok_or(bad)?);
    let min_entry = if class64 { 56 } else { 32 };
    if phentsize < min_entry {
        return Err(bad);
    }
    let mut segments = Vec::new();
    for i in 0..u64::from(phnum) {
        let at = u64::from(phentsize)
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(bad)?;
        let ph = slice(elf, at as u64, u64::from(phentsize), "program header")?;
        if bytes::u32_at(ph, 0) != Some(PT_LOAD) {
            continue;
        }
        let s = if class64 {
            Segment {
                offset: bytes::u64_at(ph, 8).ok_or(bad)?,
                vaddr: bytes::u64_at(ph, 16).ok_or(bad)?,
                paddr: bytes::u64_at(ph, 24).ok_or(bad)?,
                filesz: bytes::u64_at(ph, 32).ok_or(bad)?,
                memsz: bytes::u64_at(ph, 40).ok_or(bad)?,
            }
        } else {
            let field = |o| bytes::u32_at(ph, o).map(u64::from).ok_or(bad);
            Segment {
                offset: field(4)?,
                vaddr: field(8)?,
                paddr: field(12)?,
                filesz: field(16)?,
                memsz: field(20)?,
            }
        };
        if s.filesz > s.memsz {
            return Err(LoadError::BadElf("segment file size"));
        }
        slice(elf, s.offset, s.filesz, "segment offset")?;
        if s.memsz > 0 {
            segments.push(s);
        }
    }
    if segments.is_empty() {
        return Err(LoadError::BadElf("loadable segment list"));
    }
    Ok(segments)
}

/// The entry point as a physical address: the ELF entry is virtual, so it
/// is moved by its segment's (paddr - vaddr), as GRUB does.
fn elf_entry(elf: &[u8], segments: &[Segment]) -> Result<u32, LoadError> {
    let entry = if elf.get(4) == Some(&2) {
        bytes::u64_at(elf, 24)
    } else {
        bytes::u32_at(elf, 24).map(u64::from)
    }
    .ok_or(LoadError::BadElf("entry"))?;
    let physical = segments
        .iter()
        .find(|s| entry >= s.vaddr && entry - s.vaddr < s.memsz)
        .and_then(|s| s.paddr.checked_add(entry - s.vaddr));
    physical
        .and_then(|p| u32::try_from(p).ok())
        .ok_or(LoadError::BadEntry(entry))
}

/// What has been placed in guest RAM so far: checks each new range is
/// inside RAM and overlaps nothing placed before.
struct Placement {
    ram: u64,
    taken: Vec<(u64, u64)>,
    end: u64,
}

impl Placement {
    fn new(ram: u64) -> Self {
        Placement {
            ram,
            taken: Vec::new(),
            end: HIGH_MEMORY_START,
        }
    }

    fn claim(&mut self, what: &'static str, at: u64, len: u64) -> Result<(), LoadError> {
        let fail = LoadError::DoesNotFit { what, at, len };
        let end = at.checked_add(len).ok_or(fail)?;
        if end > self.ram || self.taken.iter().any(|&(s, e)| at < e && s < end) {
            return Err(fail);
        }
        self.taken.push((at, end));
        self.end = self.end.max(end);
        Ok(())
    }
}

/// The multiboot information structure (spec 3.3) with its strings,
/// module list and memory map, laid out for address `at`.
struct InfoBlock;

/// Information flags: mem_lower/upper (0), cmdline (2), mods (3), mmap (6),
/// boot_loader_name (9).
const INFO_FLAGS: u32 = 1 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9;
const INFO_SIZE: usize = 88;
const LOADER_NAME: &[u8] = b"Atoll\0";

impl InfoBlock {
    fn build(at: u64, ram: u64, cmdline: &str, modules: &[(u64, u64, &str)]) -> Vec<u8> {
        let mut out = alloc::vec![0u8; INFO_SIZE];
        // Addresses here are 32-bit fields (Multiboot 3.3); `load` rejects a
        // block that does not lie below 4 GiB, so the low halves are exact.
        let addr = |out: &Vec<u8>| low_u32(at + out.len() as u64);
        let cmdline_at = addr(&out);
        out.extend_from_slice(cmdline.as_bytes());
        out.push(0);
        let loader_at = addr(&out);
        out.extend_from_slice(LOADER_NAME);
        let mut names = Vec::with_capacity(modules.len());
        for (_, _, name) in modules {
            names.push(addr(&out));
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        pad4(&mut out);
        let mods_at = addr(&out);
        for ((start, end, _), name) in modules.iter().zip(&names) {
            for word in [low_u32(*start), low_u32(*end), *name, 0] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        let mmap_at = addr(&out);
        for (base, len, kind) in memory_map(ram) {
            out.extend_from_slice(&20u32.to_le_bytes());
            out.extend_from_slice(&base.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&kind.to_le_bytes());
        }
        let mmap_len = addr(&out) - mmap_at;
        let mem_upper_kib = ram.saturating_sub(HIGH_MEMORY_START) / 1024;
        let header: [(usize, u32); 10] = [
            (0, INFO_FLAGS),
            (4, low_u32(LOW_MEMORY_END / 1024)),
            (8, u32::try_from(mem_upper_kib).unwrap_or(u32::MAX)),
            (16, cmdline_at),
            (20, u32::try_from(modules.len()).unwrap_or(u32::MAX)),
            (24, mods_at),
            (44, mmap_len),
            (48, mmap_at),
            (64, loader_at),
            (12, 0xffff_ffff), // boot_device: none
        ];
        for (offset, value) in header {
            if let Some(slot) = out.get_mut(offset..offset + 4) {
                slot.copy_from_slice(&value.to_le_bytes());
            }
        }
        out
    }
}

/// The VM's memory map: `(base, length, type)` with type 1 = available,
/// 2 = reserved, as a PC's firmware reports it.
pub fn memory_map(ram: u64) -> [(u64, u64, u32); 3] {
    [
        (0, LOW_MEMORY_END.min(ram), 1),
        (LOW_MEMORY_END, HIGH_MEMORY_START - LOW_MEMORY_END, 2),
        (HIGH_MEMORY_START, ram.saturating_sub(HIGH_MEMORY_START), 1),
    ]
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn slice<'a>(
    bytes: &'a [u8],
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<&'a [u8], LoadError> {
    let start = usize::try_from(offset).map_err(|_| LoadError::BadElf(what))?;
    let len = usize::try_from(len).map_err(|_| LoadError::BadElf(what))?;
    start
        .checked_add(len)
        .and_then(|end| bytes.get(start..end))
        .ok_or(LoadError::BadElf(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::VecMemory;
    use std::vec::Vec;

    const MIB: u64 = 1 << 20;

    /// A minimal ELF64 with one PT_LOAD segment at `paddr` whose bytes
    /// start with a multiboot header (flags `flags`), entry `entry`.
    fn elf64(paddr: u64, flags: u32, body: &[u8], memsz_extra: u64, entry: u64) -> Vec<u8> {
        let mut f = std::vec![0u8; 0x1000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let mut seg = Vec::new();
        for w in [
            MULTIBOOT_MAGIC,
            flags,
            0u32.wrapping_sub(MULTIBOOT_MAGIC).wrapping_sub(flags),
        ] {
            seg.extend_from_slice(&w.to_le_bytes());
        }
        seg.extend_from_slice(body);
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&0x1000u64.to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&(seg.len() as u64).to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&(seg.len() as u64 + memsz_extra).to_le_bytes());
        // The header must be in the first 8 KiB of the file: put the
        // segment at file offset 0x1000.
        f.extend_from_slice(&seg);
        f
    }

    fn u32_at(m: &VecMemory, at: u64) -> u32 {
        m.read_u32(GuestPhysAddr(at)).unwrap()
    }

    fn cstr(m: &VecMemory, at: u64) -> std::string::String {
        let b: Vec<u8> = m.bytes[at as usize..]
            .iter()
            .take_while(|b| **b != 0)
            .copied()
            .collect();
        std::string::String::from_utf8(b).unwrap()
    }

    #[test]
    fn loads_an_elf64_kernel_with_modules_and_a_full_info_block() {
        let kernel = elf64(MIB, 3, b"code", 0x2000, MIB + 12);
        let mut mem = VecMemory::new(16 * MIB as usize);
        let modules = [Module {
            bytes: b"module-bytes",
            cmdline: "vm-image:data",
        }];
        let e = load(&mut mem, &kernel, &modules, "quiet x=1").unwrap();
        assert_eq!(e.entry, MIB as u32 + 12);
        assert_eq!(e.eax, MULTIBOOT_BOOTLOADER_MAGIC);
        assert_eq!(&mem.bytes[MIB as usize + 12..MIB as usize + 16], b"code");
        let info = u64::from(e.ebx);
        assert_eq!(u32_at(&mem, info), INFO_FLAGS);
        assert_eq!(u32_at(&mem, info + 4), 639);
        assert_eq!(u32_at(&mem, info + 8), 15 * 1024);
        assert_eq!(cstr(&mem, u64::from(u32_at(&mem, info + 16))), "quiet x=1");
        assert_eq!(cstr(&mem, u64::from(u32_at(&mem, info + 64))), "Atoll");
        assert_eq!(u32_at(&mem, info + 20), 1);
        let m = u64::from(u32_at(&mem, info + 24));
        let (start, end) = (u64::from(u32_at(&mem, m)), u64::from(u32_at(&mem, m + 4)));
        assert_eq!(start % 4096, 0, "page-aligned modules were asked for");
        assert!(start >= MIB + 0x100c, "after the kernel's bss");
        assert_eq!(&mem.bytes[start as usize..end as usize], b"module-bytes");
        assert_eq!(cstr(&mem, u64::from(u32_at(&mem, m + 8))), "vm-image:data");
        let (mmap_len, mmap) = (u32_at(&mem, info + 44), u64::from(u32_at(&mem, info + 48)));
        assert_eq!(mmap_len, 3 * 24);
        assert_eq!(u32_at(&mem, mmap), 20);
        assert_eq!(mem.read_u64(GuestPhysAddr(mmap + 24 * 2 + 4)).unwrap(), MIB);
        assert_eq!(
            mem.read_u64(GuestPhysAddr(mmap + 24 * 2 + 12)).unwrap(),
            15 * MIB
        );
    }

    #[test]
    fn refuses_what_does_not_fit_or_is_malformed() {
        let mut mem = VecMemory::new(2 * MIB as usize);
        let cases: [(Vec<u8>, LoadError); 5] = [
            (std::vec![0u8; 100], LoadError::NoHeader),
            (
                elf64(MIB, 1 << 2, b"", 0, MIB),
                LoadError::UnsupportedFlags(4),
            ),
            (
                elf64(MIB, 1 << 16, b"", 0, MIB),
                LoadError::UnsupportedFlags(1 << 16),
            ),
            (elf64(MIB, 0, b"", 0, 0x5000), LoadError::BadEntry(0x5000)),
            (
                elf64(2 * MIB - 8, 0, b"", 0, 2 * MIB - 8),
                LoadError::DoesNotFit {
                    what: "kernel segment",
                    at: 2 * MIB - 8,
                    len: 12,
                },
            ),
        ];
        for (kernel, expected) in cases {
            assert_eq!(load(&mut mem, &kernel, &[], ""), Err(expected));
        }
        let mut bad_sum = elf64(MIB, 0, b"", 0, MIB);
        bad_sum[0x1008] ^= 1;
        assert_eq!(
            load(&mut mem, &bad_sum, &[], ""),
            Err(LoadError::BadChecksum)
        );
        // A segment whose file range leaves the file.
        let mut truncated = elf64(MIB, 0, b"", 0, MIB);
        truncated.truncate(0x1006);
        assert!(load(&mut mem, &truncated, &[], "").is_err());
    }

    #[test]
    fn a_segment_ending_at_the_end_of_ram_fits_and_one_byte_more_does_not() {
        let ram = 4 * MIB;
        // 12 header bytes + 0 body; memsz extends to exactly the end.
        let fits = elf64(MIB, 0, b"", ram - MIB - 12 - 0x2000, MIB);
        let mut mem = VecMemory::new(ram as usize);
        // The info block needs room too: leave it 8 KiB.
        assert!(load(&mut mem, &fits, &[], "").is_ok());
        let too_big = elf64(MIB, 0, b"", ram - MIB - 12 + 1, MIB);
        assert!(matches!(
            load(&mut mem, &too_big, &[], ""),
            Err(LoadError::DoesNotFit { .. })
        ));
    }

    /// `elf64` with a Multiboot2 header (information request for `asks`,
    /// an optional framebuffer tag, end tag) in front of the v1 header.
    fn elf64_mb2(asks: &[u32], entry_tag: Option<u32>) -> Vec<u8> {
        let mut tags: Vec<u8> = Vec::new();
        let mut push_tag = |kind: u16, flags: u16, body: &[u8]| {
            tags.extend_from_slice(&kind.to_le_bytes());
            tags.extend_from_slice(&flags.to_le_bytes());
            tags.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            tags.extend_from_slice(body);
            while !tags.len().is_multiple_of(8) {
                tags.push(0);
            }
        };
        let request: Vec<u8> = asks.iter().flat_map(|a| a.to_le_bytes()).collect();
        push_tag(1, 0, &request);
        push_tag(5, 1, &[0; 12]);
        if let Some(e) = entry_tag {
            push_tag(3, 0, &e.to_le_bytes());
        }
        push_tag(0, 0, &[]);
        let length = 16 + tags.len() as u32;
        let mut header = Vec::new();
        for w in [
            MULTIBOOT2_MAGIC,
            0,
            length,
            0u32.wrapping_sub(MULTIBOOT2_MAGIC).wrapping_sub(length),
        ] {
            header.extend_from_slice(&w.to_le_bytes());
        }
        header.extend_from_slice(&tags);
        let mut kernel = elf64(MIB, 0, b"", 0x100, MIB);
        // The headers go into the zero gap before the segment's file offset.
        kernel[0x800..0x800 + header.len()].copy_from_slice(&header);
        kernel
    }

    #[test]
    fn multiboot2_kernels_get_a_multiboot2_info_block() {
        let mut mem = VecMemory::new(8 * MIB as usize);
        let kernel = elf64_mb2(&[1, 6], Some(MIB as u32 + 4));
        let modules = [Module {
            bytes: b"abc",
            cmdline: "vm-image:m",
        }];
        let e = load(&mut mem, &kernel, &modules, "hello mb2").unwrap();
        assert_eq!(e.eax, MULTIBOOT2_BOOTLOADER_MAGIC);
        assert_eq!(e.entry, MIB as u32 + 4, "the entry address tag wins");
        let info = u64::from(e.ebx);
        let total = u64::from(u32_at(&mem, info));
        let mut at = info + 8;
        let mut seen = Vec::new();
        while at < info + total {
            let (kind, size) = (u32_at(&mem, at), u64::from(u32_at(&mem, at + 4)));
            seen.push(kind);
            match kind {
                1 => assert_eq!(cstr(&mem, at + 8), "hello mb2"),
                3 => {
                    let start = u64::from(u32_at(&mem, at + 8));
                    assert_eq!(&mem.bytes[start as usize..start as usize + 3], b"abc");
                    assert_eq!(cstr(&mem, at + 16), "vm-image:m");
                }
                6 => assert_eq!((u32_at(&mem, at + 8), size), (24, 16 + 3 * 24)),
                _ => {}
            }
            at += size.next_multiple_of(8);
        }
        assert_eq!(seen, [1, 2, 3, 4, 6, 0]);
    }

    #[test]
    fn multiboot2_requests_atoll_cannot_serve_are_refused() {
        let mut mem = VecMemory::new(8 * MIB as usize);
        // Tag 8: framebuffer info, required.
        let kernel = elf64_mb2(&[1, 8], None);
        assert_eq!(
            load(&mut mem, &kernel, &[], ""),
            Err(LoadError::UnsupportedFlags(8))
        );
        let mut bad = elf64_mb2(&[1], None);
        bad[0x80c] ^= 1;
        assert_eq!(load(&mut mem, &bad, &[], ""), Err(LoadError::BadChecksum));
    }

    #[test]
    fn a_segment_bss_is_zeroed_even_in_used_memory() {
        let mut mem = VecMemory::new(4 * MIB as usize);
        mem.bytes[MIB as usize + 0x20..MIB as usize + 0x40].fill(0xaa);
        load(&mut mem, &elf64(MIB, 0, b"", 0x100, MIB), &[], "").unwrap();
        assert!(
            mem.bytes[MIB as usize + 0x20..MIB as usize + 0x40]
                .iter()
                .all(|b| *b == 0)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_files_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5000)) {
            let mut mem = VecMemory::new(MIB as usize);
            let _ = load(&mut mem, &bytes, &[], "");
        }

        #[test]
        fn mutated_kernels_never_panic(flips in proptest::collection::vec((0usize..0x1020, proptest::prelude::any::<u8>()), 1..12), mb2: bool) {
            let mut kernel = if mb2 { elf64_mb2(&[1, 6], None) } else { elf64(MIB, 3, b"body", 64, MIB + 12) };
            for (at, value) in flips {
                let len = kernel.len();
                kernel[at % len] = value;
            }
            let mut mem = VecMemory::new(4 * MIB as usize);
            let _ = load(&mut mem, &kernel, &[Module { bytes: b"m", cmdline: "m" }], "c");
        }
    }

    #[test]
    fn a_multiboot2_tag_larger_than_its_header_is_refused() {
        let mut image = elf64_mb2(&[1], None);
        // The information request is the first tag, 16 bytes into the
        // header at 0x800; a size of nearly 4 GiB must not be walked.
        image[0x814..0x818].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let mut mem = VecMemory::new(16 << 20);
        assert!(matches!(
            load(&mut mem, &image, &[], ""),
            Err(LoadError::BadChecksum)
        ));
    }

    #[test]
    fn a_nul_in_a_command_line_is_refused_before_anything_is_written() {
        let kernel = elf64(MIB, 0, b"", 0, MIB);
        let mut mem = VecMemory::new(4 * MIB as usize);
        assert_eq!(
            load(&mut mem, &kernel, &[], "hello\0world"),
            Err(LoadError::StringHasNul("command line"))
        );
        let module = Module {
            bytes: b"m",
            cmdline: "initrd\0x",
        };
        assert_eq!(
            load(&mut mem, &kernel, &[module], "hello"),
            Err(LoadError::StringHasNul("module command line"))
        );
        assert!(mem.bytes.iter().all(|&b| b == 0), "something was written");
        // The Multiboot2 block is checked the same way.
        assert_eq!(
            load(&mut mem, &elf64_mb2(&[1], None), &[], "a\0"),
            Err(LoadError::StringHasNul("command line"))
        );
    }
}
