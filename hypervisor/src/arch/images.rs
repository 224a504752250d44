//! The guest images the boot loader brought: multiboot2 modules whose
//! command line is `vm-image:<name>`, where `<name>` is the `kernel` or
//! `modules` value of a `[[vm]]`. Part 1 records them; each node maps the
//! images its VMs use read-only, and reloads them from there on restart.

use alloc::string::String;
use alloc::vec::Vec;
use spin::Once;

/// The module command-line prefix that marks a guest image.
pub const PREFIX: &str = "vm-image:";

/// One guest image in boot-module memory.
#[derive(Clone, Debug)]
pub struct Image {
    pub name: String,
    pub start: u64,
    pub len: u64,
}

static IMAGES: Once<Vec<Image>> = Once::new();

/// Part 1: records the images (modules named `vm-image:...`). Module memory
/// is reserved from every node by the planner and never written.
pub fn record(modules: impl Iterator<Item = (String, u64, u64)>) {
    IMAGES.call_once(|| {
        modules
            .filter_map(|(cmdline, start, len)| {
                let name = cmdline.strip_prefix(PREFIX)?;
                Some(Image {
                    name: String::from(name),
                    start,
                    len,
                })
            })
            .collect()
    });
}

/// Every recorded image.
pub fn all() -> &'static [Image] {
    IMAGES.get().map_or(&[], Vec::as_slice)
}

/// The bytes of image `name`.
pub fn find(name: &str) -> Option<&'static [u8]> {
    let image = all().iter().find(|i| i.name == name)?;
    // SAFETY: the range is a boot module GRUB loaded, recorded in part 1;
    // the planner reserves module memory from every node, nothing writes
    // it, and each node maps the images of its VMs read-only (nodeboot.rs)
    // before building VMs.
    Some(unsafe { core::slice::from_raw_parts(image.start as *const u8, image.len as usize) })
}
