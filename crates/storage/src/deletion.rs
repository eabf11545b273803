//! Deletion vectors (Paimon's `deletion-vectors.enabled`, merge-on-write):
//! per data file, the positions of its rows that are no longer live.
//!
//! A write of a keyed table already looks up the current version of every
//! key it changes (for its changelog); with deletion vectors on it also
//! notes *where* that version is (file and row position) and marks it
//! deleted in the file's vector, committed with the snapshot that holds
//! the new version. A tombstone a write stores is marked in its own
//! file's vector. So in every snapshot each key has at most one unmarked
//! row in all the table's files, and a scan reads every file on its own,
//! skipping marked rows, with no k-way merge of overlapping runs (and
//! DataFusion's Parquet scan reads such files, with row selections).
//!
//! The vectors only ever *add* to what the sequence numbers say: a reader
//! that ignores them and merges runs by sequence number (point reads,
//! compaction) gets the same answer. That is what keeps concurrent
//! compaction correct: it merges by sequence number as before, and at
//! commit marks in its outputs the keys written since it began.
//!
//! Vectors live in the manifest (in [`crate::FileMeta::deleted`]); a commit's
//! manifest delta carries the new vector of each file it marked rows in.

use std::ops::Range;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The deleted row positions of one file: sorted, distinct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionVector {
    positions: Vec<u64>,
}

impl DeletionVector {
    /// The vector of `positions` (any order, duplicates allowed).
    pub fn from_positions(mut positions: Vec<u64>) -> Self {
        positions.sort_unstable();
        positions.dedup();
        Self { positions }
    }

    /// Deleted rows.
    pub fn len(&self) -> u64 {
        self.positions.len() as u64
    }

    /// Whether no row is deleted.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// This vector with `more` positions deleted too.
    #[must_use]
    pub fn with(&self, more: &[u64]) -> Self {
        let mut positions = self.positions.clone();
        positions.extend_from_slice(more);
        Self::from_positions(positions)
    }

    /// The deleted positions, ascending.
    pub fn positions(&self) -> &[u64] {
        &self.positions
    }

    /// Whether row `position` is deleted.
    pub fn contains(&self, position: u64) -> bool {
        self.positions.binary_search(&position).is_ok()
    }

    /// Deleted rows among `range`.
    pub fn count_in(&self, range: Range<u64>) -> u64 {
        let (start, end) = self.bounds(&range);
        (end - start) as u64
    }

    /// The live rows of `range` (a row group's positions in the file), as
    /// ranges relative to its start, ascending.
    pub fn live_in(&self, range: Range<u64>) -> Vec<Range<usize>> {
        let (start, end) = self.bounds(&range);
        let mut live = Vec::new();
        let mut next = range.start;
        for &deleted in &self.positions[start..end] {
            if deleted > next {
                live.push((next - range.start) as usize..(deleted - range.start) as usize);
            }
            next = deleted + 1;
        }
        if next < range.end {
            live.push((next - range.start) as usize..(range.end - range.start) as usize);
        }
        live
    }

    fn bounds(&self, range: &Range<u64>) -> (usize, usize) {
        let start = self.positions.partition_point(|&p| p < range.start);
        let end = self.positions.partition_point(|&p| p < range.end);
        (start, end)
    }

    /// Encoded as runs of consecutive positions: per run, the gap since the
    /// previous run's end and its length, as LEB128 varints.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut previous_end = 0u64;
        let mut i = 0;
        while i < self.positions.len() {
            let start = self.positions[i];
            let mut len = 1u64;
            while i + (len as usize) < self.positions.len() && self.positions[i + len as usize] == start + len {
                len += 1;
            }
            varint(&mut out, start - previous_end);
            varint(&mut out, len);
            previous_end = start + len;
            i += len as usize;
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut positions = Vec::new();
        let mut at = 0;
        let mut previous_end = 0u64;
        while at < bytes.len() {
            let gap = read_varint(bytes, &mut at)?;
            let len = read_varint(bytes, &mut at)?;
            let start = previous_end.checked_add(gap)?;
            let end = start.checked_add(len)?;
            if len == 0 || len > 1 << 40 {
                return None;
            }
            positions.extend(start..end);
            previous_end = end;
        }
        Some(Self { positions })
    }
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

impl Serialize for DeletionVector {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.encode()))
    }
}

impl<'de> Deserialize<'de> for DeletionVector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| serde::de::Error::custom(format!("deletion vector: {e}")))?;
        Self::decode(&bytes).ok_or_else(|| serde::de::Error::custom("deletion vector: malformed runs"))
    }
}

/// Rows to mark deleted, per file path, gathered by a write or compaction
/// and applied at its commit.
pub(crate) type Marks = std::collections::BTreeMap<String, Vec<u64>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_answers_by_range() {
        let dv = DeletionVector::from_positions(vec![9, 3, 4, 5, 100, 3, 0]);
        assert_eq!(dv.len(), 6);
        let json = serde_json::to_string(&dv).unwrap();
        assert_eq!(serde_json::from_str::<DeletionVector>(&json).unwrap(), dv);
        assert!(dv.contains(4) && !dv.contains(6));
        assert_eq!(dv.count_in(0..10), 5);
        assert_eq!(dv.count_in(10..100), 0);
        assert_eq!(dv.live_in(0..10), vec![1..3, 6..9]);
        assert_eq!(dv.live_in(95..105), vec![0..5, 6..10]);
        assert_eq!(dv.live_in(10..20), vec![0..10]);
        assert_eq!(dv.with(&[6, 7, 8]).live_in(0..10), vec![1..3]);
        assert_eq!(DeletionVector::default().encode(), Vec::<u8>::new());
        assert!(DeletionVector::decode(&[0x80]).is_none(), "truncated varint");
        assert!(DeletionVector::decode(&[1, 0]).is_none(), "empty run");
    }
}
