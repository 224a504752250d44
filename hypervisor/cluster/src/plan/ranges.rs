//! Sets of physical memory ranges: the planner's free lists.
//!
//! A [`RangeSet`] is sorted, disjoint and merged (no two ranges touch), and
//! every bound is 4 KiB aligned, so whatever the planner carves out of it is
//! page-aligned by construction. All arithmetic saturates or is checked: the
//! ranges come from firmware tables and may be absurd.

use alloc::vec::Vec;

use crate::topology::PhysRange;

pub(crate) const PAGE: u64 = 0x1000;
pub(crate) const MIB: u64 = 1 << 20;

pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

pub(crate) fn align_down(x: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    x & !(align - 1)
}

/// `[start, end)`; callers guarantee `start <= end`.
fn span(start: u64, end: u64) -> PhysRange {
    PhysRange::new(start, end.saturating_sub(start))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSet {
    ranges: Vec<PhysRange>,
}

impl RangeSet {
    /// The pages wholly inside `ranges` (bounds rounded inwards), as for
    /// usable RAM: a partial page is not usable.
    pub(crate) fn inner_pages(ranges: impl IntoIterator<Item = PhysRange>) -> Self {
        let mut set = Self::default();
        for r in ranges {
            if let Some(start) = align_up(r.start.0, PAGE) {
                let end = align_down(r.end(), PAGE);
                if start < end {
                    set.insert(start, end);
                }
            }
        }
        set
    }

    /// The pages touched by `ranges` (bounds rounded outwards), as for
    /// reserved memory: a page with one reserved byte is reserved.
    pub(crate) fn outer_pages(ranges: impl IntoIterator<Item = PhysRange>) -> Self {
        let mut set = Self::default();
        for r in ranges.into_iter().filter(|r| r.len > 0) {
            let start = align_down(r.start.0, PAGE);
            // A range reaching into the last page of the address space
            // stops at its start: that page cannot be free RAM anyway.
            let end = align_up(r.end(), PAGE).unwrap_or(align_down(u64::MAX, PAGE));
            if start < end {
                set.insert(start, end);
            }
        }
        set
    }

    /// `[start, end)` as a set; both bounds must be page aligned.
    pub(crate) fn between(start: u64, end: u64) -> Self {
        let mut set = Self::default();
        if start < end {
            set.insert(start, end);
        }
        set
    }

    pub(crate) fn ranges(&self) -> &[PhysRange] {
        &self.ranges
    }

    pub(crate) fn total(&self) -> u64 {
        self.ranges.iter().fold(0, |t, r| t.saturating_add(r.len))
    }

    /// Adds `[start, end)`, merging with overlapping or touching ranges.
    fn insert(&mut self, start: u64, end: u64) {
        let (mut start, mut end) = (start, end);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for r in &self.ranges {
            if r.end() < start {
                out.push(*r);
            } else if end < r.start.0 {
                if !placed {
                    out.push(span(start, end));
                    placed = true;
                }
                out.push(*r);
            } else {
                start = start.min(r.start.0);
                end = end.max(r.end());
            }
        }
        if !placed {
            out.push(span(start, end));
        }
        self.ranges = out;
    }

    pub(crate) fn union(&self, other: &RangeSet) -> RangeSet {
        let mut out = self.clone();
        for r in &other.ranges {
            out.insert(r.start.0, r.end());
        }
        out
    }

    /// Everything in `self` outside `other`.
    pub(crate) fn minus(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::with_capacity(self.ranges.len());
        for r in &self.ranges {
            let mut start = r.start.0;
            let end = r.end();
            for o in other.ranges.iter().filter(|o| o.overlaps(r)) {
                if start < o.start.0 {
                    out.push(span(start, o.start.0));
                }
                start = start.max(o.end());
            }
            if start < end {
                out.push(span(start, end));
            }
        }
        RangeSet { ranges: out }
    }

    pub(crate) fn remove(&mut self, range: PhysRange) {
        let cut = RangeSet {
            ranges: alloc::vec![range],
        };
        *self = self.minus(&cut);
    }

    pub(crate) fn intersect(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        let (mut a, mut b) = (
            self.ranges.iter().peekable(),
            other.ranges.iter().peekable(),
        );
        while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
            let start = x.start.0.max(y.start.0);
            let end = x.end().min(y.end());
            if start < end {
                out.push(span(start, end));
            }
            if x.end() < y.end() {
                a.next();
            } else {
                b.next();
            }
        }
        RangeSet { ranges: out }
    }

    /// The lowest `len` bytes starting at an `align`-aligned address.
    pub(crate) fn lowest_block(&self, len: u64, align: u64) -> Option<PhysRange> {
        self.ranges.iter().find_map(|r| {
            let start = align_up(r.start.0, align)?;
            let end = start.checked_add(len)?;
            (end <= r.end()).then(|| PhysRange::new(start, len))
        })
    }

    /// The highest `len` bytes starting at an `align`-aligned address.
    pub(crate) fn highest_block(&self, len: u64, align: u64) -> Option<PhysRange> {
        self.ranges.iter().rev().find_map(|r| {
            let start = align_down(r.end().checked_sub(len)?, align);
            (start >= r.start.0).then(|| PhysRange::new(start, len))
        })
    }

    /// The longest block starting at an `align`-aligned address whose length
    /// is a multiple of `align`: what [`Self::lowest_block`] could still
    /// give, for error messages.
    pub(crate) fn largest_block(&self, align: u64) -> u64 {
        self.ranges
            .iter()
            .filter_map(|r| {
                let start = align_up(r.start.0, align)?;
                Some(align_down(r.end().saturating_sub(start), align))
            })
            .max()
            .unwrap_or(0)
    }

    /// The lowest `len` bytes, in as many pieces as it takes; `None` when
    /// the set holds less.
    pub(crate) fn lowest_bytes(&self, len: u64) -> Option<RangeSet> {
        let mut out = RangeSet::default();
        let mut left = len;
        for r in &self.ranges {
            if left == 0 {
                break;
            }
            let take = r.len.min(left);
            out.ranges.push(PhysRange::new(r.start.0, take));
            left -= take;
        }
        (left == 0).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(u64, u64)]) -> RangeSet {
        RangeSet::inner_pages(ranges.iter().map(|&(s, e)| span(s, e)))
    }

    fn pairs(s: &RangeSet) -> Vec<(u64, u64)> {
        s.ranges().iter().map(|r| (r.start.0, r.end())).collect()
    }

    #[test]
    fn inner_pages_round_in_merge_and_sort() {
        let s = set(&[
            (0x3000, 0x5000),
            (0x1001, 0x2fff),
            (0x2000, 0x3000),
            (0x9000, 0x9001),
        ]);
        assert_eq!(pairs(&s), [(0x2000, 0x5000)]);
        let s = set(&[(0x8000, 0xa000), (0x1000, 0x2000)]);
        assert_eq!(pairs(&s), [(0x1000, 0x2000), (0x8000, 0xa000)]);
    }

    #[test]
    fn outer_pages_round_out() {
        let s = RangeSet::outer_pages([span(0x1001, 0x1002), PhysRange::new(u64::MAX - 5, 5)]);
        // The last page of the address space cannot be written as a
        // half-open range; no RAM range can hold it either (inner_pages
        // rounds every end down), so it is dropped.
        assert_eq!(pairs(&s), [(0x1000, 0x2000)]);
    }

    #[test]
    fn minus_and_intersect() {
        let a = set(&[(0x0, 0x10000), (0x20000, 0x30000)]);
        let b = set(&[(0x1000, 0x2000), (0x8000, 0x21000)]);
        assert_eq!(
            pairs(&a.minus(&b)),
            [(0x0, 0x1000), (0x2000, 0x8000), (0x21000, 0x30000)]
        );
        assert_eq!(
            pairs(&a.intersect(&b)),
            [(0x1000, 0x2000), (0x8000, 0x10000), (0x20000, 0x21000)]
        );
        assert_eq!(a.minus(&b).total() + a.intersect(&b).total(), a.total());
        assert_eq!(pairs(&a.union(&b)), [(0x0, 0x30000)]);
    }

    #[test]
    fn blocks_respect_alignment() {
        let s = set(&[(0x1000, 0x5000), (0x100000, 0x500000)]);
        assert_eq!(
            s.lowest_block(0x200000, 0x200000),
            Some(PhysRange::new(0x200000, 0x200000))
        );
        assert_eq!(
            s.highest_block(0x1000, 0x1000),
            Some(PhysRange::new(0x4ff000, 0x1000))
        );
        assert_eq!(s.lowest_block(0x400000, 0x200000), None);
        assert_eq!(s.largest_block(0x200000), 0x200000);
        assert_eq!(
            pairs(&s.lowest_bytes(0x5000).unwrap()),
            [(0x1000, 0x5000), (0x100000, 0x101000)]
        );
        assert!(s.lowest_bytes(0x1_000_000).is_none());
    }
}
