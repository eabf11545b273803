//! Consumers: named readers of a table's changelog (Paimon's consumers).
//!
//! A consumer records the next snapshot it needs in
//! `consumer/consumer-<name>` (checksummed JSON, overwritten as it
//! advances). Snapshot expiry never removes that snapshot or a later one,
//! so a reader that resumes by name loses nothing. A consumer not updated
//! for `consumer.expiration-time` (when set) is considered abandoned: it no
//! longer holds snapshots back, and expiry removes it.

use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file::ChildPath;
use crate::table::{Table, now_ms};

/// A named reader's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    /// Its name.
    pub name: String,
    /// The next snapshot it reads (everything before was received).
    pub next_snapshot: u64,
    /// When it last advanced, in milliseconds since the epoch.
    pub updated_ms: i64,
}

fn consumer_path(name: &str) -> String {
    format!("consumer/consumer-{name}")
}

/// Consumer names are file names: letters, digits, `_`, `-` and `.`.
fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.');
    if valid {
        return Ok(());
    }
    Err(Error::Invalid(format!("invalid consumer name '{name}': use up to 128 letters, digits, '_', '-' or '.'")))
}

impl Table {
    /// Records that consumer `name` has received everything before
    /// `next_snapshot` (creating the consumer).
    ///
    /// # Errors
    /// An invalid name; storage failures.
    pub async fn set_consumer(&self, name: &str, next_snapshot: u64) -> Result<Consumer> {
        check_name(name)?;
        let consumer = Consumer { name: name.to_owned(), next_snapshot, updated_ms: now_ms() };
        let location = self.dir.child_path(&consumer_path(name));
        self.store
            .put(&location, PutPayload::from(crate::frame::encode(&consumer)?))
            .await
            .map_err(|e| Error::store(&location, e))?;
        Ok(consumer)
    }

    /// Consumer `name`, if registered.
    ///
    /// # Errors
    /// An invalid name; a damaged consumer file; storage failures.
    pub async fn consumer(&self, name: &str) -> Result<Option<Consumer>> {
        check_name(name)?;
        let location = self.dir.child_path(&consumer_path(name));
        match self.store.get(&location).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| Error::store(&location, e))?;
                Ok(Some(crate::frame::decode(location.as_ref(), &bytes)?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store(&location, e)),
        }
    }

    /// Removes consumer `name`; returns whether it existed.
    ///
    /// # Errors
    /// An invalid name; storage failures.
    pub async fn drop_consumer(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let location = self.dir.child_path(&consumer_path(name));
        match self.store.delete(&location).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::store(&location, e)),
        }
    }

    /// Every registered consumer, by name.
    ///
    /// # Errors
    /// A damaged consumer file; storage failures.
    pub async fn consumers(&self) -> Result<Vec<Consumer>> {
        let dir = self.dir.clone().join("consumer");
        let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await.map_err(|e| Error::store(&dir, e))?;
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas {
            let Some(name) = meta.location.filename().and_then(|f| f.strip_prefix("consumer-")) else { continue };
            if let Some(consumer) = self.consumer(name).await? {
                out.push(consumer);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The oldest snapshot a live consumer needs; abandoned consumers (see
    /// the module docs) are removed.
    pub(crate) async fn consumers_need(&self, now_ms: i64) -> Result<Option<u64>> {
        let expiration = self.schema().options.consumer_expiration_ms;
        let mut need: Option<u64> = None;
        for consumer in self.consumers().await? {
            if expiration.is_some_and(|e| now_ms.saturating_sub(consumer.updated_ms) > e as i64) {
                self.drop_consumer(&consumer.name).await?;
                continue;
            }
            need = Some(need.map_or(consumer.next_snapshot, |n| n.min(consumer.next_snapshot)));
        }
        Ok(need)
    }
}
