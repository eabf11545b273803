//! Write transactions: writes staged as files against a base snapshot,
//! checked for conflicting keys and committed as one snapshot.

use super::*;

/// At most this many rows of a blind transaction's input are kept to
/// replay it when a concurrent commit changed the same keys.
pub(super) const REPLAY_ROWS: usize = 64 * 1024;

/// A write transaction: staged writes, committed as one snapshot.
///
/// Optimistic: writes are staged as files against the snapshot the
/// transaction began on (its base) without holding the commit lock, so
/// transactions and group commits run side by side. At commit, under the
/// commit lock, the keys changed by every commit since the base are checked
/// against the staged keys: disjoint, the staged files are committed as they
/// are; overlapping, a blind transaction ([`Transaction::blind`]) whose input
/// was small enough to keep is staged again against the latest snapshot, and
/// any other transaction fails with [`Error::Conflict`] (40001).
///
/// A big blind transaction on a `deduplicate` or `first-row` table is
/// replayed from its own staged data files instead: they hold the net
/// change per key, which those merge engines apply to any base alike.
///
/// Dropping a transaction without [`Transaction::commit`] commits nothing.
pub struct Transaction<'a> {
    /// Keeps the files it stages from orphan cleanup while it is open.
    pub(super) _open: OpenTransaction,
    pub(super) table: &'a Table,
    pub(super) base: State,
    pub(super) staged: Staged,
    pub(super) blind: bool,
    /// Some write used [`ValueKind::Insert`] (insert if absent).
    pub(super) inserts: bool,
    /// The input of a blind transaction, while it is at most [`REPLAY_ROWS`] rows.
    pub(super) replay: Option<Vec<(RecordBatch, Vec<ValueKind>)>>,
    pub(super) replay_rows: usize,
    /// Snapshot properties to set at commit.
    pub(super) properties: std::collections::BTreeMap<String, String>,
}

impl Transaction<'_> {
    /// Marks the transaction's writes as blind: upserts and deletes that do
    /// not depend on what they replace (INSERT, COPY), so they can be applied
    /// again on top of a concurrent commit that changed the same keys.
    #[must_use]
    pub fn blind(mut self) -> Self {
        self.blind = true;
        self.replay = Some(Vec::new());
        self
    }

    /// Sets a snapshot property at commit ([`Snapshot::properties`]). A
    /// transaction that sets a property commits a snapshot even when it
    /// wrote no rows.
    pub fn set_property(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.properties.insert(key.into(), value.into());
    }

    /// The table's definition at the start of the transaction.
    pub fn table_schema(&self) -> TableSchema {
        self.base.schema.clone()
    }

    /// The snapshot this transaction writes on top of.
    pub fn base_snapshot(&self) -> Option<u64> {
        self.base.latest.as_ref().map(|s| s.id)
    }

    /// Stages upserts and deletes (see [`Table::write`]); later writes of the
    /// transaction see earlier ones. Writes are buffered in memory and staged
    /// as files together, 16 MiB of values at a time by default, so a
    /// transaction of many small writes makes few files.
    ///
    /// # Errors
    /// As [`Table::write`]: rows that do not fit the table at once; what
    /// staging finds (an aggregate's overflow, storage failures) here or
    /// from a later write or [`Transaction::commit`].
    pub async fn write(&mut self, rows: &RecordBatch, kinds: &[ValueKind]) -> Result<()> {
        check_rows(&self.base.schema, rows, kinds)?;
        self.table.check_write(rows, kinds)?;
        self.inserts |= kinds.contains(&ValueKind::Insert);
        if let Some(replay) = &mut self.replay {
            self.replay_rows += rows.num_rows();
            if self.replay_rows <= REPLAY_ROWS {
                replay.push((rows.clone(), kinds.to_vec()));
            } else {
                self.replay = None;
            }
        }
        self.staged.buffer(self.table, &self.base, rows, kinds).await
    }

    /// Truncation of an append-only table (a keyed one deletes its rows with
    /// [`Transaction::write`]): `rows` are rows of the base snapshot, read by
    /// the caller, which go to the changelog as `-D`; at commit every data
    /// file of the base snapshot leaves the table. Rows appended by commits
    /// since the base stay, as if they came after the truncation.
    ///
    /// # Errors
    /// A keyed table (`Invalid`); storage failures.
    pub async fn delete_appended(&mut self, rows: &RecordBatch) -> Result<()> {
        let schema = &self.base.schema;
        if schema.has_primary_key() {
            return Err(Error::Invalid(format!("table {} has a primary key: delete its rows by key", self.table.name)));
        }
        check_rows(schema, rows, &vec![ValueKind::Upsert; rows.num_rows()])?;
        // Appended rows buffered before the truncation take their sequence numbers first.
        self.staged.flush(self.table, &self.base).await?;
        if self.staged.removed.is_empty() {
            self.staged.removed = self.base.manifest.files.clone();
        }
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let next_seq = self.staged.next_seq.unwrap_or_else(|| self.base.latest.as_ref().map_or(1, |s| s.next_sequence));
        let seqs: ArrayRef = Arc::new(UInt64Array::from_iter_values(next_seq..next_seq + rows.num_rows() as u64));
        let changelog = with_system_columns(schema, rows, seqs, RowKind::Delete as i8)?;
        self.staged.changelog.push(self.table.write_file("changelog", 0, vec![], None, schema, &changelog).await?);
        self.staged.next_seq = Some(next_seq + rows.num_rows() as u64);
        Ok(())
    }

    /// Commits everything staged as one snapshot (`None` if nothing changed).
    ///
    /// # Errors
    /// [`Error::Conflict`] when a commit since the transaction began changed
    /// the same keys (and the transaction cannot be replayed) or altered the
    /// table; a concurrent writer in another process; storage failures.
    pub async fn commit(self) -> Result<Option<Snapshot>> {
        let Self { table, base, mut staged, replay, blind, inserts, properties, .. } = self;
        if staged.is_empty() && properties.is_empty() {
            return Ok(None);
        }
        // Staged before taking the commit lock: concurrent commits go on meanwhile.
        if let Err(e) = staged.flush(table, &base).await {
            staged.abort(table).await;
            return Err(e);
        }
        let guard = table.commit_lock.lock().await;
        let current = table.current();
        if current.schema.id != base.schema.id {
            staged.abort(table).await;
            return Err(table.altered());
        }
        let base_id = base.latest.as_ref().map_or(0, |s| s.id);
        let current_id = current.latest.as_ref().map_or(0, |s| s.id);
        if current_id != base_id {
            let conflict = match table.changed_keys_meet(&current.schema, base_id, current_id, &staged.data).await {
                Ok(meet) => meet,
                // The snapshots since the base expired: assume the worst.
                Err(Error::NotFound { .. }) => true,
                Err(e) => {
                    staged.abort(table).await;
                    return Err(e);
                }
            };
            if conflict {
                let engine = current.schema.options.merge_engine;
                let from_files = blind && matches!(engine, MergeEngine::Deduplicate | MergeEngine::FirstRow);
                let replayed = match replay {
                    Some(inputs) => {
                        staged.abort(table).await;
                        let mut again = Staged::default();
                        let mut result = Ok(());
                        for (rows, kinds) in &inputs {
                            result = again.buffer(table, &current, rows, kinds).await;
                            if result.is_err() {
                                break;
                            }
                        }
                        if result.is_ok() {
                            result = again.flush(table, &current).await;
                        }
                        match result {
                            Ok(()) => Ok(again),
                            Err(e) => Err((e, Some(again))),
                        }
                    }
                    None if from_files => {
                        let result = staged.restage(table, &current, inserts).await;
                        staged.abort(table).await;
                        result.map_err(|(e, again)| (e, Some(again)))
                    }
                    None => {
                        staged.abort(table).await;
                        return Err(Error::Conflict {
                            table: table.name.clone(),
                            reason: "a concurrent statement changed the same rows; run it again".into(),
                        });
                    }
                };
                staged = match replayed {
                    Ok(again) => again,
                    Err((e, again)) => {
                        if let Some(again) = again {
                            again.abort(table).await;
                        }
                        return Err(e);
                    }
                };
            }
        }
        if current_id != base_id && current.schema.deletion_vectors() {
            // Rows the staged writes replace, found at the base: a compaction
            // since may have rewritten their files. Then find them again.
            let moved = staged
                .deleted
                .keys()
                .any(|path| !current.manifest.files.iter().chain(&staged.data).any(|f| &f.path == path));
            if moved {
                let committed: Vec<&FileMeta> = current.manifest.files.iter().collect();
                let written: Vec<&FileMeta> = staged.data.iter().collect();
                match table.replaced_rows(&current.schema, &committed, &written).await {
                    Ok(again) => {
                        staged.deleted.retain(|path, _| staged.data.iter().any(|f| &f.path == path));
                        staged.deleted.extend(again);
                    }
                    Err(e) => {
                        staged.abort(table).await;
                        return Err(e);
                    }
                }
            }
        }
        staged.commit_with(table, &guard, properties).await
    }

    /// Drops everything staged and removes its files.
    pub async fn abort(self) {
        let Self { table, staged, .. } = self;
        staged.abort(table).await;
    }
}
