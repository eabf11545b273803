//! Hot row groups: decoded row groups that point reads ([`crate::Table::get`])
//! read, kept in memory (least recently used first out, within a byte
//! budget for the whole process), so reading a row by key again costs a
//! lookup in memory instead of fetching, checking and decompressing the
//! group's column chunks. Files never change, so an entry never goes stale;
//! entries are keyed by file, row group and the definition version the rows
//! were decoded for (an added column changes what a group decodes to).
//!
//! A group is decoded whole and kept on its second point read within a
//! while ([`admit`]): random reads over a table far bigger than the budget
//! then keep reading single rows (a page per column), instead of decoding
//! whole groups only to evict them.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use arrow::array::{RecordBatch, UInt32Array};

use crate::error::Result;
use crate::lru::Lru;

/// Bytes of decoded row groups kept by the process.
pub(crate) const HOT_BYTES: usize = 128 << 20;

type Key = (String, usize, u64);

struct Hot {
    groups: Lru<Key, Arc<Vec<RecordBatch>>>,
    /// Groups read once lately (forgotten all at once past [`SEEN`]).
    seen: std::collections::HashSet<Key>,
}

/// Groups remembered as read once.
const SEEN: usize = 4096;

/// Whether a group just read by a point read should be kept: it was read
/// once before lately (else it is remembered as read once).
pub(crate) fn admit(path: &str, group: usize, schema_id: u64) -> bool {
    let mut hot = cache().lock().unwrap_or_else(PoisonError::into_inner);
    let key = (path.to_owned(), group, schema_id);
    if hot.seen.remove(&key) {
        return true;
    }
    if hot.seen.len() >= SEEN {
        hot.seen.clear();
    }
    hot.seen.insert(key);
    false
}

fn cache() -> &'static Mutex<Hot> {
    static HOT: LazyLock<Mutex<Hot>> =
        LazyLock::new(|| Mutex::new(Hot { groups: Lru::new(HOT_BYTES), seen: Default::default() }));
    &HOT
}

/// The decoded rows of row group `group` of file `path`, as definition
/// `schema_id` reads it, if they are in memory.
pub(crate) fn get(path: &str, group: usize, schema_id: u64) -> Option<Arc<Vec<RecordBatch>>> {
    let mut hot = cache().lock().unwrap_or_else(PoisonError::into_inner);
    hot.groups.get(&(path.to_owned(), group, schema_id))
}

/// Keeps the decoded rows of a row group, evicting the least recently used
/// groups to stay within [`HOT_BYTES`] (a group bigger than a quarter of it is not kept).
pub(crate) fn insert(path: &str, group: usize, schema_id: u64, batches: Arc<Vec<RecordBatch>>) {
    let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    let mut hot = cache().lock().unwrap_or_else(PoisonError::into_inner);
    hot.groups.insert((path.to_owned(), group, schema_id), batches, bytes);
}

/// The rows at `rows` (ascending positions in the group; all when `None`)
/// of a decoded row group, as batches.
pub(crate) fn select(group: &[RecordBatch], rows: Option<&[usize]>) -> Result<Vec<RecordBatch>> {
    let Some(rows) = rows else { return Ok(group.to_vec()) };
    let mut out = Vec::new();
    let mut start = 0;
    let mut next = 0;
    for batch in group {
        let end = start + batch.num_rows();
        let from = next;
        while next < rows.len() && rows[next] < end {
            next += 1;
        }
        if next > from {
            let indices: UInt32Array = rows[from..next].iter().map(|&r| (r - start) as u32).collect();
            out.push(arrow::compute::take_record_batch(batch, &indices)?);
        }
        start = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn batch(from: i64, to: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(from..to))]).unwrap()
    }

    #[test]
    fn selects_rows_across_batches_and_keeps_groups_on_their_second_read() {
        let group = vec![batch(0, 4), batch(4, 10)];
        let picked = select(&group, Some(&[1, 3, 4, 9])).unwrap();
        let values: Vec<i64> =
            picked.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
        assert_eq!(values, [1, 3, 4, 9]);
        assert_eq!(select(&group, None).unwrap().len(), 2);

        let path = "data/hot-test.parquet";
        assert!(!admit(path, 0, 7), "first read: remembered only");
        assert!(admit(path, 0, 7), "second read: kept");
        assert!(get(path, 0, 7).is_none());
        insert(path, 0, 7, Arc::new(group));
        assert_eq!(get(path, 0, 7).map(|g| g.len()), Some(2));
        assert!(get(path, 0, 8).is_none(), "another definition decodes anew");
    }
}
