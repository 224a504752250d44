//! The hypercall ABI, version 1 (vmm/HYPERCALLS.md): decode, then perform.
//! [`decode`] checks everything that can be checked without side effects
//! (privilege, call number, handles, notification numbers, addresses and
//! lengths, with overflow-safe arithmetic) and yields a [`Hypercall`] whose
//! every field is valid; the hypervisor then performs it and turns the
//! result into registers with [`result_registers`]. A bad argument is an
//! error code in RAX, never a fault, never a panic.

use crate::addr::GuestPhysAddr;

/// Call numbers (RAX).
pub mod number {
    /// `version`: the ABI version, in RDX.
    pub const VERSION: u64 = 0;
    /// `console_write`: print bytes of RAM as the VM's console lines.
    pub const CONSOLE_WRITE: u64 = 1;
    /// `ids`: the VM's number, the calling vCPU and the VM's node.
    pub const IDS: u64 = 2;
    /// `signal`: raise a notification through a signal capability.
    pub const SIGNAL: u64 = 3;
    /// `wait`: block until a notification arrives or a timeout passes.
    pub const WAIT: u64 = 4;
    /// `map_channel`: map a shared-memory channel into the VM.
    pub const MAP_CHANNEL: u64 = 5;
    /// `power_off`: end the VM with an exit status.
    pub const POWER_OFF: u64 = 6;
    /// `report_stats`: print the VM's `stats` event.
    pub const REPORT_STATS: u64 = 7;
}

/// The longest console write.
pub const CONSOLE_MAX: u64 = 4096;
/// Guest-physical addresses a channel may be mapped below (the guest's
/// physical-address width, CPUID 0x80000008).
pub const GUEST_PHYS_LIMIT: u64 = 1 << crate::cpuid::PHYS_BITS;
const PAGE: u64 = 4096;

/// Error codes, returned in RAX as negative numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No call with that number.
    UnknownCall = -1,
    /// Called from CPL 1-3: hypercalls belong to the guest kernel.
    NotPermitted = -2,
    /// No capability with that handle.
    BadHandle = -3,
    /// A notification, length or status out of range.
    BadArgument = -4,
    /// An address that is unaligned, outside the allowed range, or
    /// overlaps RAM, a device or a mapped channel.
    BadAddress = -5,
    /// The channel is mapped already.
    Busy = -6,
    /// The receiving VM is not running.
    Unavailable = -7,
}

impl Error {
    /// The RAX value.
    pub fn code(self) -> u64 {
        self as i64 as u64
    }
}

/// The registers a hypercall reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// The call number.
    pub rax: u64,
    /// Argument 0.
    pub rdi: u64,
    /// Argument 1.
    pub rsi: u64,
    /// Argument 2.
    pub rdx: u64,
    /// Argument 3.
    pub rcx: u64,
    /// The caller's current privilege level; only CPL 0 may call.
    pub cpl: u8,
}

/// A guest-physical range that map_channel must not overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// The range's first guest-physical address.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// What the calling VM holds, for checking a call.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The VM's RAM size in bytes: a channel must be mapped above it.
    pub ram_bytes: u64,
    /// Per signal handle, the notifications it may raise (bit n).
    pub signals: &'a [u64],
    /// Per channel handle, its size in bytes and whether it is mapped.
    pub channels: &'a [(u64, bool)],
    /// Guest-physical ranges taken by devices and mapped channels.
    pub taken: &'a [Region],
}

/// A fully checked call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Report the ABI version.
    Version,
    /// Print `len` bytes (at most [`CONSOLE_MAX`]) of RAM at `gpa`.
    ConsoleWrite {
        /// Where the bytes are.
        gpa: GuestPhysAddr,
        /// How many bytes.
        len: u64,
    },
    /// Report the VM's number, the calling vCPU and the VM's node.
    Ids,
    /// Raise `notification` through signal capability `handle`.
    Signal {
        /// The signal capability (its position in the VM's `signal` list).
        handle: u16,
        /// The notification to raise (0-63).
        notification: u8,
    },
    /// Wait for a notification; `None` = forever, `Some(0)` = poll.
    Wait {
        /// How long to wait in microseconds.
        timeout_us: Option<u64>,
    },
    /// Map channel `handle`, all `len` bytes of it, at `gpa`.
    MapChannel {
        /// The channel capability (its position in the VM's `channels` list).
        handle: u16,
        /// Where to map it (page aligned, checked clear of RAM and devices).
        gpa: GuestPhysAddr,
        /// The channel's size in bytes.
        len: u64,
    },
    /// End the VM.
    PowerOff {
        /// Its exit status.
        status: u32,
    },
    /// Print the VM's exit statistics as a `stats` event.
    ReportStats,
}

/// Checks a call; see the module doc.
pub fn decode(args: &Args, ctx: &Context<'_>) -> Result<Hypercall, Error> {
    if args.cpl != 0 {
        return Err(Error::NotPermitted);
    }
    match args.rax {
        number::VERSION => Ok(Hypercall::Version),
        number::CONSOLE_WRITE => console_write(args, ctx),
        number::IDS => Ok(Hypercall::Ids),
        number::SIGNAL => signal(args, ctx),
        number::WAIT => Ok(Hypercall::Wait {
            timeout_us: (args.rdi != u64::MAX).then_some(args.rdi),
        }),
        number::MAP_CHANNEL => map_channel(args, ctx),
        number::POWER_OFF => u32::try_from(args.rdi)
            .map(|status| Hypercall::PowerOff { status })
            .map_err(|_| Error::BadArgument),
        number::REPORT_STATS => Ok(Hypercall::ReportStats),
        _ => Err(Error::UnknownCall),
    }
}

fn console_write(args: &Args, ctx: &Context<'_>) -> Result<Hypercall, Error> {
    let (gpa, len) = (args.rdi, args.rsi);
    if len > CONSOLE_MAX {
        return Err(Error::BadArgument);
    }
    match gpa.checked_add(len) {
        Some(end) if end <= ctx.ram_bytes => Ok(Hypercall::ConsoleWrite {
            gpa: GuestPhysAddr(gpa),
            len,
        }),
        _ => Err(Error::BadAddress),
    }
}

fn signal(args: &Args, ctx: &Context<'_>) -> Result<Hypercall, Error> {
    let handle = u16::try_from(args.rdi).map_err(|_| Error::BadHandle)?;
    let allowed = *ctx
        .signals
        .get(usize::from(handle))
        .ok_or(Error::BadHandle)?;
    let notification = u8::try_from(args.rsi).ok().filter(|&n| n < 64);
    match notification {
        Some(n) if allowed & (1 << n) != 0 => Ok(Hypercall::Signal {
            handle,
            notification: n,
        }),
        _ => Err(Error::BadArgument),
    }
}

fn map_channel(args: &Args, ctx: &Context<'_>) -> Result<Hypercall, Error> {
    let handle = u16::try_from(args.rdi).map_err(|_| Error::BadHandle)?;
    let &(len, mapped) = ctx
        .channels
        .get(usize::from(handle))
        .ok_or(Error::BadHandle)?;
    let gpa = args.rsi;
    check_mapping(mapped, gpa, len, ctx.ram_bytes, ctx.taken)?;
    Ok(Hypercall::MapChannel {
        handle,
        gpa: GuestPhysAddr(gpa),
        len,
    })
}

/// Whether a channel of `len` bytes, `mapped` already or not, may be
/// mapped at `gpa`: not mapped yet (else [`Error::Busy`]); page aligned,
/// above the VM's `ram_bytes`, below [`GUEST_PHYS_LIMIT`] and clear of
/// every region `taken` (else [`Error::BadAddress`]). The decoder checks
/// it on what it sees; the hypervisor checks it again with its mapping
/// lock held, since another vCPU may have mapped something in between.
pub fn check_mapping(
    mapped: bool,
    gpa: u64,
    len: u64,
    ram_bytes: u64,
    taken: &[Region],
) -> Result<(), Error> {
    if mapped {
        return Err(Error::Busy);
    }
    let end = gpa.checked_add(len).ok_or(Error::BadAddress)?;
    let overlaps = |start: u64, size: u64| gpa < start.saturating_add(size) && start < end;
    if !gpa.is_multiple_of(PAGE)
        || end > GUEST_PHYS_LIMIT
        || overlaps(0, ram_bytes)
        || taken.iter().any(|r| overlaps(r.start, r.len))
    {
        return Err(Error::BadAddress);
    }
    Ok(())
}

/// What a performed call returns besides success.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Result register RDX.
    pub rdx: u64,
    /// Result register RSI.
    pub rsi: u64,
    /// Result register RDI.
    pub rdi: u64,
}

/// The registers a call writes back: RAX = 0 and the outputs, or RAX = the
/// error code and the outputs unchanged (`None`).
pub fn result_registers(result: Result<Output, Error>) -> (u64, Option<Output>) {
    match result {
        Ok(out) => (0, Some(out)),
        Err(e) => (e.code(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ctx() -> Context<'static> {
        Context {
            ram_bytes: 16 * MIB,
            signals: &[0b1, 1 << 63],
            channels: &[(64 * 1024, false), (4096, true)],
            taken: &[Region {
                start: 0xfee0_0000,
                len: 4096,
            }],
        }
    }

    fn call(rax: u64, rdi: u64, rsi: u64) -> Result<Hypercall, Error> {
        decode(
            &Args {
                rax,
                rdi,
                rsi,
                ..Args::default()
            },
            &ctx(),
        )
    }

    #[test]
    fn console_write_bounds() {
        use number::CONSOLE_WRITE as W;
        assert!(call(W, 0, 0).is_ok());
        assert!(call(W, 16 * MIB - 4096, 4096).is_ok());
        assert_eq!(call(W, 0, 4097), Err(Error::BadArgument));
        assert_eq!(call(W, 16 * MIB - 4095, 4096), Err(Error::BadAddress));
        assert_eq!(call(W, u64::MAX - 10, 100), Err(Error::BadAddress));
        assert_eq!(
            call(W, 16 * MIB, 0),
            Ok(Hypercall::ConsoleWrite {
                gpa: GuestPhysAddr(16 * MIB),
                len: 0
            })
        );
        assert_eq!(call(W, 16 * MIB + 1, 0), Err(Error::BadAddress));
    }

    #[test]
    fn signal_handles_and_notifications() {
        use number::SIGNAL as S;
        assert_eq!(
            call(S, 0, 0),
            Ok(Hypercall::Signal {
                handle: 0,
                notification: 0
            })
        );
        assert_eq!(call(S, 0, 1), Err(Error::BadArgument), "not granted");
        assert_eq!(
            call(S, 1, 63),
            Ok(Hypercall::Signal {
                handle: 1,
                notification: 63
            })
        );
        assert_eq!(call(S, 1, 64), Err(Error::BadArgument));
        assert_eq!(call(S, 1, u64::MAX), Err(Error::BadArgument));
        assert_eq!(call(S, 2, 0), Err(Error::BadHandle));
        assert_eq!(call(S, 1 << 16, 0), Err(Error::BadHandle));
    }

    #[test]
    fn map_channel_placement() {
        use number::MAP_CHANNEL as M;
        let ok = call(M, 0, 0x40_0000_0000 - 0x1_0000);
        assert_eq!(
            ok,
            Ok(Hypercall::MapChannel {
                handle: 0,
                gpa: GuestPhysAddr(0x40_0000_0000 - 0x1_0000),
                len: 0x1_0000
            })
        );
        assert_eq!(call(M, 0, 0x80_0000_0000 - 0x1_0000).map(|_| ()), Ok(()));
        assert_eq!(
            call(M, 0, 0x80_0000_0000 - 0x8000),
            Err(Error::BadAddress),
            "crosses the limit"
        );
        assert_eq!(
            call(M, 0, 16 * MIB - 4096),
            Err(Error::BadAddress),
            "overlaps RAM"
        );
        assert!(call(M, 0, 16 * MIB).is_ok(), "just above RAM");
        assert_eq!(call(M, 0, 0x1000_0800), Err(Error::BadAddress), "unaligned");
        assert_eq!(
            call(M, 0, 0xfedf_8000),
            Err(Error::BadAddress),
            "overlaps the APIC page"
        );
        assert_eq!(call(M, 0, !0xfffu64), Err(Error::BadAddress));
        assert_eq!(call(M, 1, 0x1_0000_0000), Err(Error::Busy));
        assert_eq!(call(M, 2, 0x1_0000_0000), Err(Error::BadHandle));
    }

    #[test]
    fn a_mapping_is_checked_again_against_what_is_mapped_now() {
        // What a second vCPU sees under the lock after the first mapped
        // the channel at 4 GiB: its own decode said "free", this says no.
        let channel = Region {
            start: 0x1_0000_0000,
            len: 0x1_0000,
        };
        let ram = 16 * MIB;
        assert_eq!(
            check_mapping(false, 0x2_0000_0000, 0x1_0000, ram, &[channel]),
            Ok(())
        );
        assert_eq!(
            check_mapping(true, 0x2_0000_0000, 0x1_0000, ram, &[channel]),
            Err(Error::Busy),
            "the same channel at a second address"
        );
        assert_eq!(
            check_mapping(false, 0x1_0000_8000, 0x1_0000, ram, &[channel]),
            Err(Error::BadAddress),
            "another channel over the first"
        );
        assert_eq!(
            check_mapping(false, 0x0_ffff_0000, 0x1_0000, ram, &[channel]),
            Ok(()),
            "just below it"
        );
        assert_eq!(
            check_mapping(false, !0xfff, 0x2000, ram, &[]),
            Err(Error::BadAddress),
            "wraps"
        );
    }

    #[test]
    fn the_rest_and_privilege() {
        assert_eq!(call(number::VERSION, 0, 0), Ok(Hypercall::Version));
        assert_eq!(
            call(number::WAIT, u64::MAX, 0),
            Ok(Hypercall::Wait { timeout_us: None })
        );
        assert_eq!(
            call(number::WAIT, 0, 0),
            Ok(Hypercall::Wait {
                timeout_us: Some(0)
            })
        );
        assert_eq!(
            call(number::POWER_OFF, 7, 0),
            Ok(Hypercall::PowerOff { status: 7 })
        );
        assert_eq!(call(number::POWER_OFF, 1 << 32, 0), Err(Error::BadArgument));
        assert_eq!(call(8, 0, 0), Err(Error::UnknownCall));
        assert_eq!(call(u64::MAX, 0, 0), Err(Error::UnknownCall));
        let user = Args {
            rax: number::VERSION,
            cpl: 3,
            ..Args::default()
        };
        assert_eq!(decode(&user, &ctx()), Err(Error::NotPermitted));
        assert_eq!(Error::NotPermitted.code(), u64::MAX - 1);
        assert_eq!(
            result_registers(Err(Error::BadHandle)),
            (u64::MAX - 2, None)
        );
    }

    proptest::proptest! {
        /// Any registers, any CPL: an answer, never a panic; CPL 1-3 is
        /// always refused; a decoded console write is always inside RAM.
        #[test]
        fn decode_is_total(rax in 0u64..10, rdi: u64, rsi: u64, rdx: u64, rcx: u64, cpl in 0u8..4) {
            let args = Args { rax, rdi, rsi, rdx, rcx, cpl };
            let result = decode(&args, &ctx());
            if cpl != 0 {
                proptest::prop_assert_eq!(result, Err(Error::NotPermitted));
            }
            if let Ok(Hypercall::ConsoleWrite { gpa, len }) = result {
                proptest::prop_assert!(gpa.0 + len <= 16 * MIB);
            }
            if let Ok(Hypercall::MapChannel { gpa, len, .. }) = result {
                proptest::prop_assert!(gpa.0 >= 16 * MIB && gpa.0 + len <= GUEST_PHYS_LIMIT);
            }
        }
    }
}
