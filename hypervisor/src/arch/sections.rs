//! The hypervisor image's own sections (linker.ld): where each starts
//! and ends, for building node page tables that map each part with its
//! own rights (`atoll_cluster::isolation`). The guest images the boot
//! loader brought are `images.rs`.

pub use atoll_cluster::isolation::ImageLayout;

unsafe extern "C" {
    static __image_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __shared_start: u8;
    static __shared_end: u8;
    static __status_start: u8;
    static __status_end: u8;
    static __image_end: u8;
}

/// Where the linker put the image's sections.
pub fn layout() -> ImageLayout {
    let at = |symbol: *const u8| symbol as u64;
    ImageLayout {
        start: at(&raw const __image_start),
        text: (at(&raw const __text_start), at(&raw const __text_end)),
        shared: (at(&raw const __shared_start), at(&raw const __shared_end)),
        board: (at(&raw const __status_start), at(&raw const __status_end)),
        end: at(&raw const __image_end),
    }
}
