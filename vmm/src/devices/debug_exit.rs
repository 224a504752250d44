//! QEMU's isa-debug-exit: a write to its port ends the VM, the value
//! written being its status. Test kernels end themselves with it.
#![deny(missing_docs)]

use super::{PortDevice, PortEffect};

/// isa-debug-exit. It has no state: reads are not decoded, and every write
/// is the VM's exit. (QEMU turns value v into process exit code
/// (v << 1) | 1; Atoll keeps the value itself as the VM's status.)
#[derive(Clone, Copy, Debug, Default)]
pub struct DebugExit;

impl PortDevice for DebugExit {
    fn read(&mut self, _base: u16, _offset: u16, _size: u8) -> Option<u32> {
        None
    }

    fn write(&mut self, _base: u16, _offset: u16, _size: u8, value: u32) -> Option<PortEffect> {
        Some(PortEffect::Exit { status: value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_end_the_vm_with_the_value_and_reads_are_not_decoded() {
        let mut d = DebugExit;
        assert_eq!(
            d.write(0xf4, 0, 1, 0xff),
            Some(PortEffect::Exit { status: 0xff })
        );
        assert_eq!(d.write(0xf4, 0, 4, 7), Some(PortEffect::Exit { status: 7 }));
        assert_eq!(d.read(0xf4, 0, 1), None);
    }
}
