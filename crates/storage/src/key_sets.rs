//! Exact key sets of row groups: the sorted primary keys of one row group
//! of a data file, kept in memory within a byte budget, so a lookup can
//! tell whether a row group holds a key without reading it (see
//! [`crate::lookup`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use arrow::row::{Row, Rows};

/// Bytes of row-group key sets kept in memory per table. Beyond it, key
/// sets are read when needed and not kept.
pub(crate) const KEY_SET_BYTES: usize = 64 << 20;

/// Bytes of key sets kept by all the tables of the process together, so
/// that many tables cannot add up to more than this.
pub(crate) const PROCESS_KEY_SET_BYTES: usize = 256 << 20;

/// A byte budget shared by several [`KeySets`].
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicUsize::new(0) })
    }

    /// The process-wide budget every table's key sets draw on.
    pub(crate) fn process() -> Arc<Self> {
        static PROCESS: LazyLock<Arc<Budget>> = LazyLock::new(|| Budget::new(PROCESS_KEY_SET_BYTES));
        Arc::clone(&PROCESS)
    }

    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The sorted keys of row groups, by file path and row group.
#[derive(Debug)]
pub(crate) struct KeySets {
    sets: HashMap<String, HashMap<usize, Arc<Rows>>>,
    bytes: usize,
    budget: Arc<Budget>,
}

impl Default for KeySets {
    fn default() -> Self {
        Self::new(Budget::process())
    }
}

impl KeySets {
    pub(crate) fn new(budget: Arc<Budget>) -> Self {
        Self { sets: HashMap::new(), bytes: 0, budget }
    }

    pub(crate) fn get(&self, path: &str, group: usize) -> Option<Arc<Rows>> {
        self.sets.get(path)?.get(&group).cloned()
    }

    /// Keeps `rows` (sorted) unless the table's or the process's budget is spent.
    pub(crate) fn insert(&mut self, path: &str, group: usize, rows: Arc<Rows>) {
        let size = rows.size();
        if self.bytes + size > KEY_SET_BYTES || !self.budget.reserve(size) {
            return;
        }
        if let Some(old) = self.sets.entry(path.to_owned()).or_default().insert(group, rows) {
            self.bytes -= old.size();
            self.budget.release(old.size());
        }
        self.bytes += size;
    }

    /// Drops the key sets of files `live` rejects.
    pub(crate) fn retain(&mut self, live: impl Fn(&str) -> bool) {
        let mut freed = 0;
        self.sets.retain(|path, groups| {
            let keep = live(path);
            if !keep {
                freed += groups.values().map(|r| r.size()).sum::<usize>();
            }
            keep
        });
        self.bytes -= freed;
        self.budget.release(freed);
    }
}

impl Drop for KeySets {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

pub(crate) fn sorted(rows: &Rows) -> bool {
    (1..rows.num_rows()).all(|i| rows.row(i - 1) <= rows.row(i))
}

/// Whether the sorted key set `set` holds one of `wanted` (sorted).
pub(crate) fn holds_any(set: &Rows, wanted: &[Row<'_>]) -> bool {
    let n = set.num_rows();
    if n == 0 {
        return false;
    }
    let (first, last) = (set.row(0), set.row(n - 1));
    let start = wanted.partition_point(|k| *k < first);
    for key in &wanted[start..] {
        if *key > last {
            break;
        }
        let (mut low, mut high) = (0, n);
        while low < high {
            let mid = low + (high - low) / 2;
            match set.row(mid).cmp(key) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
    }
    false
}

/// The positions in the sorted key set `set` of the keys equal to one of
/// `wanted` (sorted), ascending: the rows of the group that hold them.
pub(crate) fn positions(set: &Rows, wanted: &[Row<'_>]) -> Vec<usize> {
    positions_where(set, wanted, |key, wanted| key == wanted)
}

/// The positions in the sorted key set `set` of the keys that start with
/// one of `wanted` (sorted encoded key prefixes), ascending.
pub(crate) fn prefix_positions(set: &Rows, wanted: &[Row<'_>]) -> Vec<usize> {
    positions_where(set, wanted, <[u8]>::starts_with)
}

/// The positions in `set` of the keys that `matches` one of `wanted`; the
/// keys that match one of them must be consecutive from the first key not
/// below it (equality, or a byte prefix of the row encoding).
fn positions_where(set: &Rows, wanted: &[Row<'_>], matches: impl Fn(&[u8], &[u8]) -> bool) -> Vec<usize> {
    let n = set.num_rows();
    if n == 0 {
        return Vec::new();
    }
    // Only the wanted keys within the set's range are searched: a probe of
    // many keys costs each row group in proportion to the keys it may hold,
    // not to all of them. The one key below the set's first that can match
    // is the largest one, when it is a prefix of that first key (distinct
    // encoded prefixes are never prefixes of each other).
    let (first, last) = (set.row(0), set.row(n - 1));
    let mut start = wanted.partition_point(|k| k.data() < first.data());
    if start > 0 && matches(first.data(), wanted[start - 1].data()) {
        start -= 1;
    }
    let end = start + wanted[start..].partition_point(|k| k.data() <= last.data());
    let mut out = Vec::new();
    for key in &wanted[start..end] {
        let (mut low, mut high) = (0, n);
        while low < high {
            let mid = low + (high - low) / 2;
            if set.row(mid).data() < key.data() {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        while low < n && matches(set.row(low).data(), key.data()) {
            out.push(low);
            low += 1;
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::DataType;
    use arrow::row::{RowConverter, SortField};

    fn rows(converter: &RowConverter, keys: &[i64]) -> Rows {
        let column: ArrayRef = Arc::new(Int64Array::from(keys.to_vec()));
        converter.convert_columns(&[column]).unwrap()
    }

    #[test]
    fn positions_are_the_rows_holding_the_wanted_keys() {
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let set = rows(&converter, &[1, 3, 3, 5, 8, 13]);
        let wanted = rows(&converter, &[0, 3, 8, 9, 20]);
        let wanted: Vec<_> = wanted.iter().collect();
        assert_eq!(positions(&set, &wanted), vec![1, 2, 4]);
        let none = rows(&converter, &[2, 4]);
        assert!(positions(&set, &none.iter().collect::<Vec<_>>()).is_empty());
    }

    #[test]
    fn a_key_set_holds_exactly_its_keys() {
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let set = rows(&converter, &[2, 4, 6, 8, 100]);
        assert!(sorted(&set));
        for (wanted, expected) in [
            (vec![4], true),
            (vec![1, 3, 5, 7, 9, 99, 101], false),
            (vec![-5, 100], true),
            (vec![], false),
            (vec![0, 1], false),
            (vec![200, 300], false),
            (vec![5, 8], true),
        ] {
            let wanted_rows = rows(&converter, &wanted);
            let wanted: Vec<Row<'_>> = wanted_rows.iter().collect();
            assert_eq!(holds_any(&set, &wanted), expected, "{wanted:?}");
        }
        assert!(!sorted(&rows(&converter, &[3, 1])));
        assert!(!holds_any(&rows(&converter, &[]), &rows(&converter, &[1]).iter().collect::<Vec<_>>()));
    }

    #[test]
    fn key_sets_stay_within_their_budget_and_drop_dead_files() {
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let mut sets = KeySets::new(Budget::new(usize::MAX));
        let one = Arc::new(rows(&converter, &(0..1000).collect::<Vec<_>>()));
        let size = one.size();
        let mut inserted = 0;
        for i in 0..(KEY_SET_BYTES / size + 10) {
            sets.insert(&format!("data/f{i}"), 0, Arc::clone(&one));
            inserted += 1;
        }
        assert!(sets.bytes <= KEY_SET_BYTES, "{} bytes", sets.bytes);
        assert!(sets.get("data/f0", 0).is_some());
        assert!(sets.get(&format!("data/f{}", inserted - 1), 0).is_none(), "past the budget nothing is kept");
        sets.retain(|path| path == "data/f0");
        assert_eq!(sets.bytes, size);
        assert!(sets.get("data/f1", 0).is_none());
        sets.insert("data/f0", 0, Arc::clone(&one));
        assert_eq!(sets.bytes, size, "replacing a set does not count it twice");
    }

    #[test]
    fn tables_share_the_process_budget() {
        let converter = RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap();
        let one = Arc::new(rows(&converter, &(0..1000).collect::<Vec<_>>()));
        let size = one.size();
        let budget = Budget::new(3 * size);
        let mut a = KeySets::new(Arc::clone(&budget));
        let mut b = KeySets::new(Arc::clone(&budget));
        a.insert("data/a0", 0, Arc::clone(&one));
        a.insert("data/a1", 0, Arc::clone(&one));
        b.insert("data/b0", 0, Arc::clone(&one));
        b.insert("data/b1", 0, Arc::clone(&one));
        assert!(b.get("data/b0", 0).is_some());
        assert!(b.get("data/b1", 0).is_none(), "the shared budget is spent");
        assert_eq!(budget.used.load(Ordering::Acquire), 3 * size);
        a.retain(|path| path == "data/a0");
        b.insert("data/b1", 0, Arc::clone(&one));
        assert!(b.get("data/b1", 0).is_some(), "what a table freed another can use");
        drop(a);
        drop(b);
        assert_eq!(budget.used.load(Ordering::Acquire), 0, "a dropped table gives its bytes back");
    }
}
