//! The `smp` test guest: starts every other vCPU the way an operating
//! system does (INIT, start-up IPI, real mode to long mode), each of which
//! reports a `guest_cpu_up` event with its x2APIC ID; then vCPU 0 reports
//! `guest_smp` with the count fw_cfg gave and the count that came up, and
//! exits with status 0 if they match.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use atoll_guest_rt::{BootInfo, fw_cfg, println, smp, x2apic};

atoll_guest_rt::entry!(main);

fn main(_info: &BootInfo) -> u32 {
    x2apic::enable();
    let cpus = u32::from(fw_cfg::cpus()).max(1);
    let up = smp::start_aps(cpus, ap_main, 4_000_000_000);
    println!("@ev {{\"ev\":\"guest_smp\",\"cpus\":{cpus},\"aps_up\":{up}}}");
    u32::from(up + 1 != cpus)
}

fn ap_main(apic_id: u32) {
    println!("@ev {{\"ev\":\"guest_cpu_up\",\"apic_id\":{apic_id}}}");
}
