//! Taking the low bits of a wider value, said once.
//!
//! Registers and guest-written values are wider than the fields they feed:
//! an 8-bit port write arrives in a `u32`, a vector is the low byte of an
//! LVT or redirection entry (SDM Vol. 3A 11.5.1, 82093AA 3.2.4), an MSR
//! index is ECX, the low half of RCX (SDM Vol. 2B RDMSR). Dropping the upper
//! bits is then the defined meaning, not an accident, and these helpers are
//! the only place the crate truncates with `as`. Where dropping bits would
//! be a bug the code uses `try_from` instead.
//!
//! Every helper gives exactly what a plain `as` cast gives.

// Atoll runs only on x86-64 (the host for tests, x86_64-unknown-none for
// the hypervisor), so a `u64` always fits in a `usize`.
const _: () = assert!(usize::BITS >= u64::BITS);

/// The low 8 bits of `v` (a byte register, a vector field, a port byte).
#[allow(clippy::cast_possible_truncation)]
pub const fn low_u8(v: u64) -> u8 {
    (v & 0xff) as u8
}

/// The low 16 bits of `v` (a port number, a 16-bit field).
#[allow(clippy::cast_possible_truncation)]
pub const fn low_u16(v: u64) -> u16 {
    (v & 0xffff) as u16
}

/// The low 32 bits of `v` (EAX/ECX of a 64-bit register, a 32-bit MMIO
/// register window onto a 64-bit value).
#[allow(clippy::cast_possible_truncation)]
pub const fn low_u32(v: u64) -> u32 {
    (v & 0xffff_ffff) as u32
}

/// `v` as a `usize`: lossless, because `usize` is 64 bits wide on every
/// target Atoll builds for (checked at compile time above).
#[allow(clippy::cast_possible_truncation)]
pub const fn usize_from(v: u64) -> usize {
    v as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_bits_match_a_plain_cast() {
        for v in [0, 1, 0xff, 0x100, 0x1234_5678_9abc_def0, u64::MAX] {
            assert_eq!(low_u8(v), v as u8);
            assert_eq!(low_u16(v), v as u16);
            assert_eq!(low_u32(v), v as u32);
            assert_eq!(usize_from(v), v as usize);
        }
        assert_eq!(low_u8(0x1ab), 0xab);
        assert_eq!(low_u16(0x1_2345), 0x2345);
        assert_eq!(low_u32(0x1_0000_0002), 2);
    }
}
