//! Guest page walks (SDM Vol. 3A, chapter 5): a guest-linear address to a
//! guest-physical one, the way the guest's own MMU would, for fetching the
//! instruction behind an MMIO exit. Every table entry is read through
//! [`GuestMemory`] (bounds-checked); a table outside RAM or an absent entry
//! is an error, never a guess (tests/docs/hostile-inputs.md, class 2).

use crate::addr::GuestPhysAddr;
use crate::memory::GuestMemory;

const PRESENT: u64 = 1 << 0;
const LARGE: u64 = 1 << 7;
/// Address bits of a 64-bit entry (up to 52 physical bits).
const ADDR: u64 = 0x000f_ffff_ffff_f000;

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;

/// The paging state a walk needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    /// Guest CR0 (PG: paging on).
    pub cr0: u64,
    /// Guest CR3: the top-level paging structure's address.
    pub cr3: u64,
    /// Guest CR4 (PAE, PSE).
    pub cr4: u64,
    /// Guest IA32_EFER (LMA: IA-32e paging).
    pub efer: u64,
}

/// Why a walk failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// An entry on the way is not present.
    NotPresent {
        /// The address being translated.
        linear: u64,
    },
    /// A table lies outside the VM's RAM.
    TableOutsideRam {
        /// The table's guest-physical address.
        table: u64,
    },
}

/// Translates `linear` under `paging`.
pub fn translate(
    mem: &impl GuestMemory,
    paging: &Paging,
    linear: u64,
) -> Result<GuestPhysAddr, WalkError> {
    if paging.cr0 & CR0_PG == 0 {
        return Ok(GuestPhysAddr(linear & 0xffff_ffff));
    }
    if paging.efer & EFER_LMA != 0 {
        return walk64(mem, paging.cr3 & ADDR, linear, 4);
    }
    if paging.cr4 & CR4_PAE != 0 {
        // PAE: a 4-entry PDPT at CR3[31:5], then two 512-entry levels.
        let pdpte_at = (paging.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8;
        let pdpte = entry(mem, pdpte_at)?;
        if pdpte & PRESENT == 0 {
            return Err(WalkError::NotPresent { linear });
        }
        return walk64(mem, pdpte & ADDR, linear & 0xffff_ffff, 2);
    }
    walk32(mem, paging, linear & 0xffff_ffff)
}

fn entry(mem: &impl GuestMemory, at: u64) -> Result<u64, WalkError> {
    mem.read_u64(GuestPhysAddr(at))
        .map_err(|_| WalkError::TableOutsideRam { table: at & !0xfff })
}

/// 64-bit entries, `levels` levels below the table at `table`.
fn walk64(
    mem: &impl GuestMemory,
    mut table: u64,
    linear: u64,
    levels: u32,
) -> Result<GuestPhysAddr, WalkError> {
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let e = entry(mem, table + ((linear >> shift) & 0x1ff) * 8)?;
        if e & PRESENT == 0 {
            return Err(WalkError::NotPresent { linear });
        }
        // A large page at level 2 (2 MiB) or 3 (1 GiB).
        if level > 1 && level < 4 && e & LARGE != 0 {
            let size = 1u64 << shift;
            return Ok(GuestPhysAddr(
                (e & ADDR & !(size - 1)) | (linear & (size - 1)),
            ));
        }
        table = e & ADDR;
    }
    Ok(GuestPhysAddr(table | (linear & 0xfff)))
}

/// 32-bit paging: two levels of 32-bit entries, 4 MiB pages with PSE.
fn walk32(
    mem: &impl GuestMemory,
    paging: &Paging,
    linear: u64,
) -> Result<GuestPhysAddr, WalkError> {
    let read = |at: u64| {
        mem.read_u32(GuestPhysAddr(at))
            .map(u64::from)
            .map_err(|_| WalkError::TableOutsideRam { table: at & !0xfff })
    };
    let pde = read((paging.cr3 & 0xffff_f000) + ((linear >> 22) & 0x3ff) * 4)?;
    if pde & PRESENT == 0 {
        return Err(WalkError::NotPresent { linear });
    }
    if paging.cr4 & CR4_PSE != 0 && pde & LARGE != 0 {
        return Ok(GuestPhysAddr((pde & 0xffc0_0000) | (linear & 0x3f_ffff)));
    }
    let pte = read((pde & 0xffff_f000) + ((linear >> 12) & 0x3ff) * 4)?;
    if pte & PRESENT == 0 {
        return Err(WalkError::NotPresent { linear });
    }
    Ok(GuestPhysAddr((pte & 0xffff_f000) | (linear & 0xfff)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::VecMemory;

    fn put(m: &mut VecMemory, at: u64, v: u64) {
        m.write(GuestPhysAddr(at), &v.to_le_bytes()).unwrap();
    }

    #[test]
    fn long_mode_4k_2m_and_1g_pages() {
        let mut m = VecMemory::new(1 << 20);
        let (pml4, pdpt, pd, pt) = (0x1000, 0x2000, 0x3000, 0x4000);
        put(&mut m, pml4, pdpt | 3);
        put(&mut m, pdpt, pd | 3); // 0..1 GiB through a PD
        put(&mut m, pdpt + 8, 0x4000_0000 | 0x83); // 1-2 GiB: a 1 GiB page
        put(&mut m, pd, pt | 3); // 0..2 MiB through a PT
        put(&mut m, pd + 8, 0x0060_0000 | 0x83); // 2-4 MiB: a 2 MiB page
        put(&mut m, pt + 5 * 8, 0x7000 | 3);
        let p = Paging {
            cr0: CR0_PG | 1,
            cr3: pml4,
            cr4: CR4_PAE,
            efer: EFER_LMA | 1 << 8,
        };
        assert_eq!(translate(&m, &p, 0x5123), Ok(GuestPhysAddr(0x7123)));
        assert_eq!(translate(&m, &p, 0x20_1234), Ok(GuestPhysAddr(0x60_1234)));
        assert_eq!(
            translate(&m, &p, 0x4123_4567),
            Ok(GuestPhysAddr(0x4123_4567))
        );
        assert_eq!(
            translate(&m, &p, 0x6000),
            Err(WalkError::NotPresent { linear: 0x6000 })
        );
        // A table pointer outside RAM is an error, not a read elsewhere.
        put(&mut m, pt + 6 * 8, 0x7000_0000 | 3);
        put(&mut m, pd + 16, 0x9000_0000 | 3);
        assert!(matches!(
            translate(&m, &p, 0x40_0000),
            Err(WalkError::TableOutsideRam { .. })
        ));
    }

    #[test]
    fn paging_off_pae_and_32_bit() {
        let mut m = VecMemory::new(1 << 20);
        let off = Paging {
            cr0: 1,
            cr3: 0,
            cr4: 0,
            efer: 0,
        };
        assert_eq!(
            translate(&m, &off, 0x1_2345_6789),
            Ok(GuestPhysAddr(0x2345_6789))
        );
        // PAE: PDPT at 0x1000, PD at 0x2000 with a 2 MiB page.
        put(&mut m, 0x1000, 0x2000 | 1);
        put(&mut m, 0x2000 + 8, 0x0080_0000 | 0x83);
        let pae = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PAE,
            efer: 0,
        };
        assert_eq!(translate(&m, &pae, 0x20_0042), Ok(GuestPhysAddr(0x80_0042)));
        // 32-bit: PD at 0x5000, a 4 MiB page (PSE) and a 4 KiB one.
        m.write(
            GuestPhysAddr(0x5000 + 4),
            &(0x0080_0000u32 | 0x83).to_le_bytes(),
        )
        .unwrap();
        m.write(GuestPhysAddr(0x5000), &(0x6000u32 | 3).to_le_bytes())
            .unwrap();
        m.write(GuestPhysAddr(0x6000 + 8), &(0x9000u32 | 3).to_le_bytes())
            .unwrap();
        let flat32 = Paging {
            cr0: CR0_PG | 1,
            cr3: 0x5000,
            cr4: CR4_PSE,
            efer: 0,
        };
        assert_eq!(
            translate(&m, &flat32, 0x40_1234),
            Ok(GuestPhysAddr(0x80_1234))
        );
        assert_eq!(translate(&m, &flat32, 0x2abc), Ok(GuestPhysAddr(0x9abc)));
    }

    proptest::proptest! {
        #[test]
        fn any_tables_any_address_never_panic(words in proptest::collection::vec(proptest::prelude::any::<u64>(), 64), linear: u64, cr3 in 0u64..0x2000, cr4: u64, efer: u64) {
            let mut m = VecMemory::new(0x2000);
            for (i, w) in words.iter().enumerate() {
                put(&mut m, (i as u64) * 8 * 4, *w);
            }
            let p = Paging { cr0: CR0_PG | 1, cr3, cr4, efer };
            // Every page size (4 KiB up) keeps the offset in its page.
            if let Ok(gpa) = translate(&m, &p, linear) {
                proptest::prop_assert_eq!(gpa.0 & 0xfff, linear & 0xfff);
            }
        }
    }
}
