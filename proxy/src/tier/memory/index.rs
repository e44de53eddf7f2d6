//! A shard's index: key hash to slot, open addressing with linear probing
//! in one vector of 8-byte cells. Deletion shifts the following cells back
//! instead of leaving tombstones, so churn at a full shard never makes it
//! grow. A cell also carries the slot's CLOCK flag, which a read sets in
//! the cache line it has just loaded anyway.
//!
//! A cell is `tag << 32 | visited << 31 | slot + 1` (0 is empty); the tag
//! is 32 bits of the key hash and its low bits are the cell the key would
//! like. Two ids may share a tag: the caller tells them apart by the id in
//! the record (`eq`).

/// Cells per entry at most 1 / 0.8: longer probes past that.
const LOAD_NUM: usize = 4;
const LOAD_DEN: usize = 5;
const VISITED: u64 = 1 << 31;
const SLOT: u64 = VISITED - 1;
const MIN_CELLS: usize = 16;

#[derive(Default)]
pub(super) struct Index {
    cells: Vec<u64>,
    len: usize,
}

/// A cell that holds a key: where it is, and the slot it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Found {
    pub cell: usize,
    pub slot: usize,
}

impl Index {
    /// The largest slot number a cell can hold.
    pub const MAX_SLOTS: usize = SLOT as usize - 1;

    /// Cells needed for `entries` keys without growing.
    pub fn cells_for(entries: usize) -> usize {
        (entries.saturating_mul(LOAD_DEN) / LOAD_NUM + 1)
            .next_power_of_two()
            .max(MIN_CELLS)
    }

    #[cfg(test)]
    pub fn cells(&self) -> usize {
        self.cells.len()
    }

    /// The cell of the key with `tag` for which `eq(slot)` holds.
    pub fn find(&self, tag: u32, mut eq: impl FnMut(usize) -> bool) -> Option<Found> {
        if self.cells.is_empty() {
            return None;
        }
        let mask = self.cells.len() - 1;
        let mut i = tag as usize & mask;
        loop {
            let c = self.cells[i];
            if c == 0 {
                return None;
            }
            if (c >> 32) as u32 == tag {
                let slot = slot_of(c);
                if eq(slot) {
                    return Some(Found { cell: i, slot });
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Marks a cell read (written only when it was not: a hot id keeps its
    /// cache line shared).
    pub fn visit(&mut self, cell: usize) {
        if self.cells[cell] & VISITED == 0 {
            self.cells[cell] |= VISITED;
        }
    }

    /// Adds a key known to be absent.
    pub fn insert(&mut self, tag: u32, slot: usize) {
        if (self.len + 1) * LOAD_DEN > self.cells.len() * LOAD_NUM {
            self.grow();
        }
        self.place(u64::from(tag) << 32 | (slot as u64 + 1));
        self.len += 1;
    }

    /// Points the cell of (tag, `from`) at slot `to` (the slot moved).
    pub fn repoint(&mut self, tag: u32, from: usize, to: usize) {
        if let Some(f) = self.find(tag, |s| s == from) {
            let c = self.cells[f.cell];
            self.cells[f.cell] = c & !SLOT | (to as u64 + 1);
        }
    }

    /// Empties `cell`, shifting back the cells after it that would rather
    /// be nearer their wanted cell.
    pub fn remove(&mut self, cell: usize) {
        let mask = self.cells.len() - 1;
        let mut hole = cell;
        let mut j = cell;
        loop {
            j = (j + 1) & mask;
            let c = self.cells[j];
            if c == 0 {
                break;
            }
            let want = (c >> 32) as usize & mask;
            // `c` may fill the hole if the hole lies between where it
            // wants to be and where it is.
            if j.wrapping_sub(want) & mask >= j.wrapping_sub(hole) & mask {
                self.cells[hole] = c;
                hole = j;
            }
        }
        self.cells[hole] = 0;
        self.len -= 1;
    }

    /// CLOCK from cell `hand` on: clears the flag of read cells until it
    /// meets one not read, or one `expired` says may go regardless; answers
    /// it. None when the index is empty.
    pub fn sweep(
        &mut self,
        hand: &mut usize,
        mut expired: impl FnMut(usize) -> bool,
    ) -> Option<Found> {
        if self.len == 0 {
            return None;
        }
        let mask = self.cells.len() - 1;
        loop {
            let i = *hand & mask;
            *hand = i + 1;
            let c = self.cells[i];
            if c == 0 {
                continue;
            }
            if c & VISITED != 0 && !expired(slot_of(c)) {
                self.cells[i] = c & !VISITED;
                continue;
            }
            return Some(Found {
                cell: i,
                slot: slot_of(c),
            });
        }
    }

    fn grow(&mut self) {
        let cells = (self.cells.len() * 2).max(MIN_CELLS);
        let old = std::mem::replace(&mut self.cells, vec![0; cells]);
        for c in old.into_iter().filter(|&c| c != 0) {
            self.place(c);
        }
    }

    fn place(&mut self, c: u64) {
        let mask = self.cells.len() - 1;
        let mut i = (c >> 32) as usize & mask;
        while self.cells[i] != 0 {
            i = (i + 1) & mask;
        }
        self.cells[i] = c;
    }
}

fn slot_of(c: u64) -> usize {
    ((c & SLOT) - 1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_want_one_cell_are_all_found_after_removals() {
        let mut ix = Index::default();
        // Tags 0, 16, 32, ... all want cell 0 of a small table.
        for s in 0..10 {
            ix.insert(s * 16, s as usize);
        }
        let at = |ix: &Index, s: u32| ix.find(s * 16, |slot| slot == s as usize);
        let gone = at(&ix, 3).expect("held").cell;
        ix.remove(gone);
        for s in 0..10 {
            assert_eq!(at(&ix, s).is_some(), s != 3, "{s}");
        }
        ix.insert(3 * 16, 3);
        ix.repoint(3 * 16, 3, 30);
        assert!(at(&ix, 3).is_none());
        assert!(ix.find(3 * 16, |s| s == 30).is_some());
    }

    #[test]
    fn removal_keeps_every_other_key_reachable() {
        // A pseudo-random mix of inserts and removals against a model.
        let mut ix = Index::default();
        let mut held: Vec<(u32, usize)> = Vec::new();
        let mut x = 12345u32;
        for n in 0..5000usize {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x % 3 == 0 && !held.is_empty() {
                let (tag, slot) = held.swap_remove(x as usize % held.len());
                let f = ix.find(tag, |s| s == slot).expect("held");
                ix.remove(f.cell);
            } else {
                // Few distinct tags: many collisions and long runs.
                let tag = x % 64;
                ix.insert(tag, n);
                held.push((tag, n));
            }
            if n % 500 == 0 {
                for &(tag, slot) in &held {
                    assert!(ix.find(tag, |s| s == slot).is_some(), "lost {tag}/{slot}");
                }
            }
        }
        assert_eq!(ix.len, held.len());
    }

    #[test]
    fn the_hand_spares_a_read_cell_once() {
        let mut ix = Index::default();
        for s in 0..3 {
            ix.insert(s, s as usize);
        }
        ix.visit(ix.find(0, |s| s == 0).expect("held").cell);
        let mut hand = 0;
        let first = ix.sweep(&mut hand, |_| false).expect("a victim");
        assert_eq!(first.slot, 1, "slot 0 was read");
        ix.remove(first.cell);
        let next = ix.sweep(&mut hand, |_| false).expect("a victim");
        assert_eq!(next.slot, 2);
        ix.remove(next.cell);
        let last = ix.sweep(&mut hand, |_| false).expect("a victim");
        assert_eq!(last.slot, 0, "its flag was cleared on the first pass");
    }

    #[test]
    fn the_table_stays_within_its_load() {
        let mut ix = Index::default();
        for s in 0..1000 {
            ix.insert(s, s as usize);
        }
        assert_eq!(ix.cells(), Index::cells_for(1000));
        assert!(ix.cells() * LOAD_NUM >= 1000 * LOAD_DEN);
    }
}
