//! The hypervisor's side of exit handling: the services the dispatcher's
//! [`atoll_vmm::dispatch::ExitEnv`] asks for, carried out with this node's
//! state (devices under the node lock) and this CPU's hardware (CPUID,
//! the current VMCS).

use atoll_vmm::devices::{LINE_BYTES, PortEffect};
use atoll_vmm::dispatch::Outcome;
use atoll_vmm::exit::{Registers, gpr};
use x86::vmx::vmcs::guest;

use crate::arch::{cpu, vmx};
use crate::node::Node;
use crate::vm::{self, Vm};

/// CPUID as a guest sees it: the host's answer with VMX, SMX and MONITOR
/// hidden and "hypervisor present" set (leaf 1), its own APIC ID and
/// count (leaf 1 EBX), and Atoll's signature at 0x40000000 (SDM Vol. 2A,
/// CPUID).
pub fn cpuid(vm: &Vm, vcpu: u16, leaf: u32, subleaf: u32) -> [u32; 4] {
    let [mut a, mut b, mut c, d] = cpu::cpuid(leaf, subleaf);
    match leaf {
        1 => {
            c &= !(1 << 5 | 1 << 6 | 1 << 3);
            c |= 1 << 31;
            b = (b & 0x0000_ffff) | (u32::from(vcpu) << 24) | (u32::from(vm.spec.vcpus) << 16);
        }
        0x4000_0000 => {
            let sig = *b"AtollHV\0\0\0\0\0";
            let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
            return [0x4000_0010, word(0), word(4), word(8)];
        }
        0x4000_0001..=0x4000_00ff => return [0; 4],
        _ => {}
    }
    let _ = &mut a;
    [a, b, c, d]
}

/// A port read through the VM's bus (all ones if no device answers).
pub fn port_in(node: &Node, vm: &Vm, port: u16, size: u8) -> u32 {
    node.with_devices(vm.local, |devices| devices.read(port, size))
        .unwrap_or(u32::MAX)
}

/// A port write through the VM's bus; a finished console line is printed
/// with the VM's name, isa-debug-exit ends the VM.
pub fn port_out(node: &Node, vm: &Vm, port: u16, size: u8, value: u32) -> Option<Outcome> {
    let mut line = [0u8; LINE_BYTES];
    let (effect, len) = node
        .with_devices(vm.local, |devices| {
            let effect = devices.write(port, size, value);
            let len = if effect == PortEffect::ConsoleLine {
                devices.uart.take_line(&mut line)
            } else {
                None
            };
            (effect, len)
        })
        .unwrap_or((PortEffect::None, None));
    if let Some(len) = len {
        vm::print_guest_line(&vm.spec.name, line.get(..len).unwrap_or(&[]));
    }
    effect.into()
}

/// MSRs (SDM Vol. 4) a guest may use whose guest value lives in the VMCS.
const IA32_EFER: u32 = 0xc000_0080;
const IA32_PAT: u32 = 0x277;
const IA32_FS_BASE: u32 = 0xc000_0100;
const IA32_GS_BASE: u32 = 0xc000_0101;

fn vmcs_field(msr: u32) -> Option<u32> {
    match msr {
        IA32_EFER => Some(guest::IA32_EFER_FULL),
        IA32_PAT => Some(guest::IA32_PAT_FULL),
        IA32_FS_BASE => Some(guest::FS_BASE),
        IA32_GS_BASE => Some(guest::GS_BASE),
        _ => None,
    }
}

/// RDMSR: the VMCS-held MSRs; anything else is #GP.
pub fn rdmsr(msr: u32) -> Option<u64> {
    vmcs_field(msr).map(vmx::read)
}

/// WRMSR: EFER (SCE, LME, NXE; LMA is the processor's), PAT (valid memory
/// types only), FS/GS base (canonical); anything else is #GP.
pub fn wrmsr(msr: u32, value: u64) -> bool {
    let ok = match msr {
        IA32_EFER => value & !(1 | 1 << 8 | 1 << 10 | 1 << 11) == 0,
        IA32_PAT => value
            .to_le_bytes()
            .iter()
            .all(|t| matches!(t, 0 | 1 | 4..=7)),
        IA32_FS_BASE | IA32_GS_BASE => is_canonical(value),
        _ => false,
    };
    let Some(field) = vmcs_field(msr).filter(|_| ok) else {
        return false;
    };
    let value = if msr == IA32_EFER {
        // LMA is not the guest's to write: keep the current one.
        (value & !(1 << 10)) | (vmx::read(field) & (1 << 10))
    } else {
        value
    };
    vmx::write(field, value).is_ok()
}

fn is_canonical(addr: u64) -> bool {
    ((addr as i64) << 16 >> 16) as u64 == addr
}

/// The hypercall ABI: not offered yet; every call returns "unknown call".
pub fn hypercall(_node: &Node, _vm: &Vm, _vcpu: u16, regs: &mut Registers) -> Outcome {
    regs.set(gpr::RAX, u64::MAX);
    Outcome::Resume
}
