//! A bus of devices keyed by port ranges (the shape of Firecracker's
//! `vstate/bus.rs`): each device is registered at one or more ranges of
//! I/O ports, two devices never share a port (an overlapping range is
//! refused when it is inserted), and an access finds its device by the
//! range that holds the port.
//!
//! The bus is generic over what it stores for a range: a [`super::LegacyPorts`]
//! stores which of its devices answers there.
#![deny(missing_docs)]

use alloc::vec::Vec;
use core::fmt;

/// The ports `first..=last` (never empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// The `len` ports from `first` on; `None` if `len` is 0 or the range
    /// would run past port 0xFFFF.
    pub const fn new(first: u16, len: u16) -> Option<Self> {
        if len == 0 {
            return None;
        }
        match first.checked_add(len - 1) {
            Some(last) => Some(PortRange { first, last }),
            None => None,
        }
    }

    /// The ports from `a` to `b`, both included, in either order.
    pub const fn inclusive(a: u16, b: u16) -> Self {
        if a <= b {
            PortRange { first: a, last: b }
        } else {
            PortRange { first: b, last: a }
        }
    }

    /// The single port `port`.
    pub const fn port(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// The first port of the range.
    pub const fn first(self) -> u16 {
        self.first
    }

    /// The last port of the range.
    pub const fn last(self) -> u16 {
        self.last
    }

    /// Whether `port` is inside the range.
    pub const fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// Whether the two ranges share a port.
    pub const fn overlaps(self, other: PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}-{:#x}", self.first, self.last)
    }
}

/// Why a range could not be inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// The new range shares ports with a range already on the bus.
    Overlap {
        /// The range being inserted.
        new: PortRange,
        /// The range already there.
        existing: PortRange,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::Overlap { new, existing } => {
                write!(f, "ports {new} overlap ports {existing} on the bus")
            }
        }
    }
}

/// Where an access landed: the device's key, the start of the range it
/// was registered at, and the port's offset into that range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit<K> {
    /// What was registered at the range.
    pub key: K,
    /// The range's first port.
    pub base: u16,
    /// The port minus `base`.
    pub offset: u16,
}

/// Ranges of ports and what answers at each, kept sorted by first port and
/// disjoint.
#[derive(Clone, Debug)]
pub struct PortBus<K> {
    ranges: Vec<(PortRange, K)>,
}

impl<K> Default for PortBus<K> {
    fn default() -> Self {
        PortBus { ranges: Vec::new() }
    }
}

impl<K: Copy> PortBus<K> {
    /// Registers `key` at `range`; refused if any port of `range` is
    /// already taken.
    pub fn insert(&mut self, range: PortRange, key: K) -> Result<(), BusError> {
        // The first range that does not lie wholly before `range`: the
        // only one that can overlap it, and where it goes.
        let at = self.ranges.partition_point(|(r, _)| r.last < range.first);
        if let Some(&(existing, _)) = self.ranges.get(at)
            && existing.overlaps(range)
        {
            return Err(BusError::Overlap {
                new: range,
                existing,
            });
        }
        self.ranges.insert(at, (range, key));
        Ok(())
    }

    /// What answers at `port`, if anything.
    pub fn get(&self, port: u16) -> Option<Hit<K>> {
        let at = self.ranges.partition_point(|(r, _)| r.last < port);
        let &(range, key) = self.ranges.get(at)?;
        range.contains(port).then(|| Hit {
            key,
            base: range.first,
            offset: port - range.first,
        })
    }

    /// The registered ranges, lowest first.
    pub fn ranges(&self) -> impl Iterator<Item = (PortRange, K)> + '_ {
        self.ranges.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    fn range(first: u16, len: u16) -> PortRange {
        PortRange::new(first, len).unwrap()
    }

    #[test]
    fn ranges_are_never_empty_and_never_wrap() {
        assert_eq!(PortRange::new(0x10, 0), None);
        assert_eq!(PortRange::new(0xffff, 2), None);
        let r = range(0xfff8, 8);
        assert_eq!((r.first(), r.last()), (0xfff8, 0xffff));
        assert_eq!(PortRange::port(0x64), range(0x64, 1));
        assert_eq!(PortRange::inclusive(0x71, 0x70), range(0x70, 2));
        assert_eq!(PortRange::inclusive(0x70, 0x71), range(0x70, 2));
        assert_eq!(range(0x3f8, 8).to_string(), "0x3f8-0x3ff");
    }

    #[test]
    fn lookups_find_the_range_holding_the_port_and_the_offset_into_it() {
        let mut bus = PortBus::default();
        bus.insert(range(0x3f8, 8), 'u').unwrap();
        bus.insert(range(0x20, 2), 'p').unwrap();
        bus.insert(range(0xa0, 2), 'p').unwrap();
        bus.insert(PortRange::port(0xf4), 'x').unwrap();
        let hit = |port| bus.get(port).map(|h| (h.key, h.base, h.offset));
        assert_eq!(hit(0x3f8), Some(('u', 0x3f8, 0)));
        assert_eq!(hit(0x3ff), Some(('u', 0x3f8, 7)));
        assert_eq!(hit(0xa1), Some(('p', 0xa0, 1)));
        assert_eq!(hit(0xf4), Some(('x', 0xf4, 0)));
        for gap in [0, 0x1f, 0x22, 0x9f, 0xf3, 0xf5, 0x3f7, 0x400, 0xffff] {
            assert_eq!(hit(gap), None, "{gap:#x}");
        }
        let firsts: std::vec::Vec<u16> = bus.ranges().map(|(r, _)| r.first()).collect();
        assert_eq!(firsts, [0x20, 0xa0, 0xf4, 0x3f8], "sorted");
    }

    #[test]
    fn an_overlapping_range_is_refused_and_changes_nothing() {
        let mut bus = PortBus::default();
        bus.insert(range(0xcf8, 8), 1).unwrap();
        for (first, len) in [(0xcf9, 1), (0xcf0, 9), (0xcff, 4), (0xc00, 0x200)] {
            assert_eq!(
                bus.insert(range(first, len), 2),
                Err(BusError::Overlap {
                    new: range(first, len),
                    existing: range(0xcf8, 8)
                })
            );
        }
        // Neighbours on both sides fit.
        bus.insert(range(0xcf0, 8), 3).unwrap();
        bus.insert(range(0xd00, 1), 4).unwrap();
        assert_eq!(bus.get(0xcf9).map(|h| h.key), Some(1));
        assert_eq!(bus.ranges().count(), 3);
        assert_eq!(
            BusError::Overlap {
                new: range(0xcf9, 1),
                existing: range(0xcf8, 8)
            }
            .to_string(),
            "ports 0xcf9-0xcf9 overlap ports 0xcf8-0xcff on the bus"
        );
    }

    proptest::proptest! {
        /// Whatever is inserted, the bus stays disjoint and answers each
        /// port as a linear search over the accepted ranges would.
        #[test]
        fn the_bus_matches_a_linear_search(
            ranges in proptest::collection::vec((0u16..0x200, 1u16..0x20), 0..40),
            ports in proptest::collection::vec(0u16..0x240, 0..64),
        ) {
            let mut bus = PortBus::default();
            let mut accepted: std::vec::Vec<(PortRange, usize)> = std::vec::Vec::new();
            for (key, (first, len)) in ranges.into_iter().enumerate() {
                let r = range(first, len);
                let clash = accepted
                    .iter()
                    .filter(|(a, _)| a.overlaps(r))
                    .min_by_key(|(a, _)| a.first());
                let result = bus.insert(r, key);
                match clash {
                    Some(&(existing, _)) => proptest::prop_assert_eq!(
                        result,
                        Err(BusError::Overlap { new: r, existing })
                    ),
                    None => {
                        proptest::prop_assert_eq!(result, Ok(()));
                        accepted.push((r, key));
                    }
                }
            }
            for port in ports {
                let want = accepted.iter().find(|(r, _)| r.contains(port));
                let got = bus.get(port);
                proptest::prop_assert_eq!(
                    got.map(|h| (h.key, h.base, h.offset)),
                    want.map(|&(r, k)| (k, r.first(), port - r.first()))
                );
            }
        }
    }
}
