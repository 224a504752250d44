//! Bounds-checked little-endian fields of byte slices.
//!
//! Firmware tables, boot-loader blocks and the kernel images a VM boots are
//! untrusted input: every read goes through these helpers, which return
//! `None` instead of panicking when the slice is too short. [`put`] writes
//! the fields of the tables Atoll builds itself (a VM's ACPI tables and
//! boot parameters).

/// Reads a `u8` at `offset`.
pub fn u8_at(bytes: &[u8], offset: usize) -> Option<u8> {
    bytes.get(offset).copied()
}

/// Reads a little-endian `u16` at `offset`.
pub fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    array_at::<2>(bytes, offset).map(u16::from_le_bytes)
}

/// Reads a little-endian `u32` at `offset`.
pub fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    array_at::<4>(bytes, offset).map(u32::from_le_bytes)
}

/// Reads a little-endian `u64` at `offset`.
pub fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    array_at::<8>(bytes, offset).map(u64::from_le_bytes)
}

/// Copies `bytes` to `buf[offset..]`. Callers pass offsets of their own
/// layouts, inside `buf`; a field that would not fit is left out.
pub fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    let end = offset.saturating_add(bytes.len());
    if let Some(field) = buf.get_mut(offset..end) {
        field.copy_from_slice(bytes);
    }
}

/// Copies `N` bytes starting at `offset`.
pub fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    let end = offset.checked_add(N)?;
    bytes.get(offset..end)?.try_into().ok()
}

/// The sub-slice `offset..offset + len`.
pub fn slice_at(bytes: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    bytes.get(offset..offset.checked_add(len)?)
}

/// The bytes before the first NUL, as UTF-8; `None` when there is no NUL or
/// the text is not UTF-8.
pub fn c_str(bytes: &[u8]) -> Option<&str> {
    let nul = bytes.iter().position(|&b| b == 0)?;
    core::str::from_utf8(bytes.get(..nul)?).ok()
}

/// True when the bytes add up to zero modulo 256, the checksum rule of ACPI
/// tables and the RSDP (ACPI 6.5, 5.2.5.3 and 5.2.6).
pub fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_of_the_slice() {
        let b = [1, 2, 3, 4, 5];
        assert_eq!(u32_at(&b, 0), Some(0x0403_0201));
        assert_eq!(u32_at(&b, 1), Some(0x0504_0302));
        assert_eq!(u32_at(&b, 2), None);
        assert_eq!(u64_at(&b, 0), None);
        assert_eq!(u16_at(&b, usize::MAX), None);
        assert_eq!(slice_at(&b, usize::MAX, 2), None);
    }

    #[test]
    fn put_writes_fields_that_fit_and_leaves_out_the_rest() {
        let mut b = [0u8; 6];
        put(&mut b, 1, &[1, 2]);
        put(&mut b, 4, &[3, 4, 5]);
        put(&mut b, usize::MAX, &[6]);
        assert_eq!(b, [0, 1, 2, 0, 0, 0]);
        put(&mut b, 4, &[3, 4]);
        assert_eq!(b, [0, 1, 2, 0, 3, 4]);
    }

    #[test]
    fn c_str_needs_a_nul_and_utf8() {
        assert_eq!(c_str(b"abc\0def"), Some("abc"));
        assert_eq!(c_str(b"abc"), None);
        assert_eq!(c_str(b"\xff\0"), None);
    }

    #[test]
    fn checksum() {
        assert!(checksum_ok(&[0x10, 0xf0]));
        assert!(!checksum_ok(&[0x10, 0xf1]));
    }
}
