//! The `hello` test guest: greets with its command line, reports what its
//! VM's fw_cfg says (CPUs and RAM) as a `guest_hello` event, and exits with
//! status 0 through isa-debug-exit.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use atoll_guest_rt::{BootInfo, fw_cfg, println};

atoll_guest_rt::entry!(main);

fn main(info: &BootInfo) -> u32 {
    println!("hello from {}", info.cmdline());
    let (cpus, ram_mib) = if fw_cfg::present() {
        (fw_cfg::cpus(), fw_cfg::ram_bytes() >> 20)
    } else {
        (0, 0)
    };
    println!(
        "@ev {{\"ev\":\"guest_hello\",\"cmdline\":\"{}\",\"cpus\":{},\"ram_mib\":{}}}",
        info.cmdline(),
        cpus,
        ram_mib
    );
    0
}
