//! Little-endian fields of untrusted images (kernels, boot headers), read
//! with checked bounds (`None` when the field does not fit the bytes), and
//! fields of the tables Atoll writes for its guests.

/// Copies `bytes` to `buf[at..]`; callers pass offsets of their own
/// layouts, inside `buf`, and a field that would not fit is left out.
pub fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    let end = at.saturating_add(bytes.len());
    if let Some(slot) = buf.get_mut(at..end) {
        slot.copy_from_slice(bytes);
    }
}

pub fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_inside_read_and_fields_past_the_end_do_not() {
        let b = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(read_u16(&b, 0), Some(0x0201));
        assert_eq!(read_u32(&b, 5), Some(0x0908_0706));
        assert_eq!(read_u64(&b, 1), Some(0x0908_0706_0504_0302));
        assert_eq!(read_u32(&b, 6), None);
        assert_eq!(read_u64(&b, usize::MAX), None, "no overflow");
    }
}
