//! The image's section boundaries (linker.ld), for building node page
//! tables that map each part with its own rights.

unsafe extern "C" {
    static __image_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __shared_start: u8;
    static __shared_end: u8;
    static __image_end: u8;
}

/// Page-aligned section boundaries of the loaded image.
pub struct ImageLayout {
    pub start: u64,
    pub text: (u64, u64),
    pub shared: (u64, u64),
    pub end: u64,
}

/// Where the linker put the image's sections.
pub fn layout() -> ImageLayout {
    ImageLayout {
        start: (&raw const __image_start) as u64,
        text: (
            (&raw const __text_start) as u64,
            (&raw const __text_end) as u64,
        ),
        shared: (
            (&raw const __shared_start) as u64,
            (&raw const __shared_end) as u64,
        ),
        end: (&raw const __image_end) as u64,
    }
}
