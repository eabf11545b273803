//! K-way merge of sorted runs: newest sequence number wins per key.
//!
//! Every input yields batches sorted by primary key with each key at most
//! once (a sorted run). The merge keeps one batch per input in memory, picks
//! the smallest key among the inputs' current rows (a heap of the inputs:
//! O(log k) comparisons per key; a scan of every input per key made a
//! compaction of 150 overlapping runs of a 10M-row table spend 85% of its
//! time comparing keys), emits the version with
//! the highest `_seq` (dropping it if it is a delete and deletes are to be
//! dropped) and skips the other inputs' versions of that key. Output rows are
//! gathered with `interleave` into batches of `batch_size` rows, so memory is
//! one batch per input plus one output batch, whatever the size of the runs.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::interleave;
use arrow::datatypes::{Int8Type, SchemaRef, UInt64Type};
use arrow::row::{OwnedRow, RowConverter, Rows};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::schema::ValueKind;

/// A stream of batches from one sorted run.
pub(crate) type RunStream = BoxStream<'static, Result<RecordBatch>>;

/// Where the merge finds keys, sequence numbers and kinds in input batches,
/// and what it outputs.
#[derive(Clone)]
pub(crate) struct MergeSpec {
    /// Key columns of the input batches.
    pub key_columns: Vec<usize>,
    /// The `_seq` column of the input batches.
    pub seq_column: usize,
    /// The `_kind` column of the input batches ([`ValueKind`] codes).
    pub kind_column: usize,
    /// Input columns of the output, in order.
    pub output_columns: Vec<usize>,
    /// Schema of the output batches.
    pub output_schema: SchemaRef,
    /// Drop keys whose newest version is a delete (false when compacting
    /// into a run that has older runs below it).
    pub drop_deletes: bool,
    /// Only keys `>= lower` and `< upper`.
    pub lower: Option<OwnedRow>,
    /// See `lower`.
    pub upper: Option<OwnedRow>,
    /// Rows per output batch.
    pub batch_size: usize,
}

struct Cursor {
    input: RunStream,
    batch: RecordBatch,
    keys: Rows,
    seqs: arrow::array::UInt64Array,
    /// `_kind` codes, when the batch holds any tombstone.
    deletes: Option<arrow::array::Int8Array>,
    slot: usize,
    row: usize,
}

struct Merge {
    spec: MergeSpec,
    converter: Arc<RowConverter>,
    /// Per input, its current batch (`None` once the input is done).
    cursors: Vec<Option<Cursor>>,
    /// The live cursors as a binary min-heap by (key, newest `_seq` first):
    /// the next key is found in O(log k) comparisons, not k.
    heap: Vec<usize>,
    pending: Vec<RunStream>,
    held: Vec<RecordBatch>,
    picked: Vec<(usize, usize)>,
    /// Cursors positioned at the key being emitted (reused buffer).
    equal: Vec<usize>,
    done: bool,
}

/// Merges `inputs` per `spec`.
pub(crate) fn merge(inputs: Vec<RunStream>, converter: Arc<RowConverter>, spec: MergeSpec) -> RunStream {
    let merge = Merge {
        spec,
        converter,
        cursors: Vec::new(),
        heap: Vec::new(),
        pending: inputs,
        held: vec![],
        picked: vec![],
        equal: vec![],
        done: false,
    };
    futures::stream::try_unfold(merge, |mut merge| async move {
        let batch = merge.next_batch().await?;
        Ok(batch.map(|b| (b, merge)))
    })
    .boxed()
}

fn kinds(batch: &RecordBatch, column: usize) -> Result<&arrow::array::PrimitiveArray<Int8Type>> {
    batch.column(column).as_primitive_opt::<Int8Type>().ok_or_else(|| Error::Invalid("_kind column is not Int8".into()))
}

fn seqs(batch: &RecordBatch, column: usize) -> Result<&arrow::array::PrimitiveArray<UInt64Type>> {
    batch
        .column(column)
        .as_primitive_opt::<UInt64Type>()
        .ok_or_else(|| Error::Invalid("_seq column is not UInt64".into()))
}

impl Merge {
    /// The next non-empty batch of `input`, with its keys converted.
    async fn load(&mut self, mut input: RunStream) -> Result<Option<Cursor>> {
        while let Some(batch) = input.next().await.transpose()? {
            if batch.num_rows() == 0 {
                continue;
            }
            let columns: Vec<ArrayRef> = self.spec.key_columns.iter().map(|&c| Arc::clone(batch.column(c))).collect();
            let keys = self.converter.convert_columns(&columns)?;
            let seqs = seqs(&batch, self.spec.seq_column)?.clone();
            let kinds = kinds(&batch, self.spec.kind_column)?;
            let deletes = kinds.values().contains(&(ValueKind::Delete as i8)).then(|| kinds.clone());
            let slot = self.held.len();
            self.held.push(batch.clone());
            return Ok(Some(Cursor { input, batch, keys, seqs, deletes, slot, row: 0 }));
        }
        Ok(None)
    }

    fn cursor(&self, c: usize) -> &Cursor {
        self.cursors[c].as_ref().expect("a cursor in the heap is live")
    }

    /// Whether cursor `a` comes before cursor `b`: a smaller key, or the
    /// same key with a higher sequence number.
    fn before(&self, a: usize, b: usize) -> bool {
        let (a, b) = (self.cursor(a), self.cursor(b));
        match a.key().cmp(&b.key()) {
            Ordering::Less => true,
            Ordering::Equal => a.seq() > b.seq(),
            Ordering::Greater => false,
        }
    }

    fn push(&mut self, c: usize) {
        self.heap.push(c);
        let mut at = self.heap.len() - 1;
        while at > 0 {
            let parent = (at - 1) / 2;
            if !self.before(self.heap[at], self.heap[parent]) {
                break;
            }
            self.heap.swap(at, parent);
            at = parent;
        }
    }

    fn pop(&mut self) -> Option<usize> {
        if self.heap.is_empty() {
            return None;
        }
        let top = self.heap.swap_remove(0);
        let mut at = 0;
        loop {
            let (left, right) = (2 * at + 1, 2 * at + 2);
            let mut first = at;
            if left < self.heap.len() && self.before(self.heap[left], self.heap[first]) {
                first = left;
            }
            if right < self.heap.len() && self.before(self.heap[right], self.heap[first]) {
                first = right;
            }
            if first == at {
                break;
            }
            self.heap.swap(at, first);
            at = first;
        }
        Some(top)
    }

    /// Puts cursor `c` back in the heap, first loading its input's next
    /// batch when its batch is used up (an input done leaves the merge).
    async fn requeue(&mut self, c: usize) -> Result<()> {
        let used_up = self.cursor(c).row >= self.cursor(c).batch.num_rows();
        if used_up {
            let cursor = self.cursors[c].take().expect("a requeued cursor is live");
            match self.load(cursor.input).await? {
                Some(next) => self.cursors[c] = Some(next),
                None => return Ok(()),
            }
        }
        self.push(c);
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        for input in std::mem::take(&mut self.pending) {
            if let Some(cursor) = self.load(input).await? {
                self.cursors.push(Some(cursor));
                self.push(self.cursors.len() - 1);
            }
        }
        while !self.done {
            let Some(&best) = self.heap.first() else {
                self.done = true;
                break;
            };
            if self.heap.len() == 1 && self.spec.upper.is_none() && self.spec.lower.is_none() {
                // One run left: its keys are unique, take the rest of its batch.
                let room = (self.spec.batch_size - self.picked.len().min(self.spec.batch_size)).max(1);
                let cursor = self.cursors[best].as_mut().expect("a cursor in the heap is live");
                let end = (cursor.row + room).min(cursor.batch.num_rows());
                for row in cursor.row..end {
                    if !(self.spec.drop_deletes && cursor.is_delete(row)) {
                        self.picked.push((cursor.slot, row));
                    }
                }
                cursor.row = end;
                self.pop();
                self.requeue(best).await?;
                if self.picked.len() >= self.spec.batch_size {
                    return self.flush().map(Some);
                }
                continue;
            }
            if let Some(upper) = &self.spec.upper
                && self.cursor(best).key() >= upper.row()
            {
                self.done = true;
                break;
            }
            // The smallest key, newest version first; then the other
            // cursors at the same key; `second` is the next key's cursor.
            self.pop();
            self.equal.clear();
            while let Some(&top) = self.heap.first()
                && self.cursor(top).key() == self.cursor(best).key()
            {
                self.pop();
                self.equal.push(top);
            }
            let second = self.heap.first().copied();
            // Emit the winner, then keep taking rows from its run while they
            // stay below every other run's key (no comparison with the rest).
            // Borrows of the cursors end before the awaits below (streams are not `Sync`).
            let limit = {
                let cursors = &self.cursors;
                let live = |c: usize| cursors[c].as_ref().expect("a cursor in the heap is live");
                let winner = live(best);
                let limit = if self.equal.is_empty() {
                    let bound = second.map(|s| live(s).key());
                    let mut end = winner.row + 1;
                    let room = self.spec.batch_size.saturating_sub(self.picked.len()).max(1);
                    while end < winner.batch.num_rows()
                        && end - winner.row < room
                        && bound.is_none_or(|b| winner.keys.row(end) < b)
                        && self.spec.upper.as_ref().is_none_or(|u| winner.keys.row(end) < u.row())
                    {
                        end += 1;
                    }
                    end
                } else {
                    winner.row + 1
                };
                for row in winner.row..limit {
                    let in_range = self.spec.lower.as_ref().is_none_or(|lower| winner.keys.row(row) >= lower.row());
                    if in_range && !(self.spec.drop_deletes && winner.is_delete(row)) {
                        self.picked.push((winner.slot, row));
                    }
                }
                limit
            };
            if let Some(cursor) = self.cursors[best].as_mut() {
                cursor.row = limit;
            }
            let equal = std::mem::take(&mut self.equal);
            for &c in &equal {
                if let Some(cursor) = self.cursors[c].as_mut() {
                    cursor.row += 1;
                }
            }
            self.requeue(best).await?;
            for &c in &equal {
                self.requeue(c).await?;
            }
            self.equal = equal;
            if self.picked.len() >= self.spec.batch_size {
                return self.flush().map(Some);
            }
        }
        if self.picked.is_empty() { Ok(None) } else { self.flush().map(Some) }
    }

    /// Gathers the picked rows into an output batch; keeps only the batches cursors still point into.
    fn flush(&mut self) -> Result<RecordBatch> {
        let rows = self.picked.len();
        let mut columns = Vec::with_capacity(self.spec.output_columns.len());
        for &column in &self.spec.output_columns {
            let sources: Vec<&dyn Array> = self.held.iter().map(|b| b.column(column).as_ref()).collect();
            columns.push(interleave(&sources, &self.picked)?);
        }
        self.picked.clear();
        self.held.clear();
        for cursor in self.cursors.iter_mut().flatten() {
            cursor.slot = self.held.len();
            self.held.push(cursor.batch.clone());
        }
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(Arc::clone(&self.spec.output_schema), columns, &options)?)
    }
}

impl Cursor {
    fn key(&self) -> arrow::row::Row<'_> {
        self.keys.row(self.row)
    }

    fn seq(&self) -> u64 {
        self.seqs.value(self.row)
    }

    fn is_delete(&self, row: usize) -> bool {
        self.deletes.as_ref().is_some_and(|k| k.value(row) == ValueKind::Delete as i8)
    }
}
