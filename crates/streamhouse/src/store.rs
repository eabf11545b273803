//! The object store the warehouse lives in: a durable local directory by
//! default, or S3-compatible object storage for `storage.url = "s3://…"`.
//!
//! On S3 a put is durable once acknowledged, and commits stay atomic with
//! conditional creates (`If-None-Match: *`): two servers racing for one
//! snapshot id never both win it. Parquet files are read by ranged gets of
//! the column chunks a scan needs, kept in a local disk cache
//! ([`RangeCache`], `storage.s3.cache_size`) so repeated scans read locally.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use streamhouse_storage::cache::RangeCache;
use streamhouse_storage::durable::log::{LogOptions, LogStore};
use streamhouse_storage::durable::{self, DurableStore};

use crate::config::StorageConfig;

/// The opened warehouse: its store, and the write-ahead log inside it when
/// it is a durable local directory (flushed into plain files at shutdown).
#[derive(Debug)]
pub struct Warehouse {
    pub store: Arc<dyn ObjectStore>,
    pub log: Option<LogStore>,
}

/// Opens the warehouse `storage` names; `local` is the directory used when
/// it names none (it is created, and must be locked by the caller: crashed
/// writes' staged files in it are removed, and its write-ahead log replayed).
///
/// # Errors
/// A malformed url, an S3 configuration object_store refuses, or a local
/// directory that cannot be created or cleaned.
pub async fn open(storage: &StorageConfig, local: &Path) -> anyhow::Result<Warehouse> {
    let store = match storage.url.as_deref() {
        None => return open_local(local, storage.sync).await,
        Some(url) => match url.strip_prefix("s3://") {
            Some(rest) => {
                let store = open_s3(storage, rest)?;
                match storage.s3.cache_size.bytes() {
                    Some(0) => store,
                    size => {
                        let dir = storage.data_dir.join("cache");
                        let cache = RangeCache::new(store, dir.clone(), size.unwrap_or(u64::MAX))
                            .with_context(|| format!("cannot prepare the range cache in {}", dir.display()))?;
                        Arc::new(cache)
                    }
                }
            }
            None if url.starts_with("file://") || url.starts_with('/') => {
                return open_local(Path::new(url.trim_start_matches("file://")), storage.sync).await;
            }
            None => anyhow::bail!("storage.url {url:?} is not supported: use s3://bucket/prefix, or leave it unset"),
        },
    };
    Ok(Warehouse { store, log: None })
}

async fn open_local(dir: &Path, sync: bool) -> anyhow::Result<Warehouse> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create warehouse directory {}", dir.display()))?;
    // Writes a crash interrupted left staged files no listing shows; with the lock held they are nobody's.
    let staged = durable::remove_staged_local_files(dir)
        .with_context(|| format!("cannot clean up staged files in {}", dir.display()))?;
    if staged > 0 {
        tracing::info!(files = staged, "removed the staged files of writes interrupted by a crash");
    }
    if sync {
        let store = DurableStore::local(dir).with_context(|| format!("cannot open warehouse {}", dir.display()))?;
        // Small writes go through the write-ahead log (one synced append per group of
        // commits); opening it replays what a crash left there.
        let store = LogStore::open(store, LogOptions::default())
            .await
            .with_context(|| format!("cannot recover the write-ahead log in {}/_log", dir.display()))?;
        return Ok(Warehouse { store: Arc::new(store.clone()), log: Some(store) });
    }
    tracing::warn!("storage.sync = false: acknowledged writes are not synced and can be lost in a power cut");
    let store = LocalFileSystem::new_with_prefix(dir)
        .with_context(|| format!("cannot open warehouse {}", dir.display()))?
        .with_automatic_cleanup(true);
    Ok(Warehouse { store: Arc::new(store), log: None })
}

fn open_s3(storage: &StorageConfig, bucket_and_prefix: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let (bucket, prefix) = bucket_and_prefix.split_once('/').unwrap_or((bucket_and_prefix, ""));
    anyhow::ensure!(!bucket.is_empty(), "storage.url s3://{bucket_and_prefix} names no bucket");
    let s3 = &storage.s3;
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_virtual_hosted_style_request(s3.virtual_hosted_style);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
    } else if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|e| e.starts_with("http://")) {
        builder = builder.with_allow_http(true);
    }
    if let Some(region) = &s3.region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &s3.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &s3.secret_access_key {
        builder = builder.with_secret_access_key(&secret.0);
    }
    if let Some(token) = &s3.session_token {
        builder = builder.with_token(&token.0);
    }
    let store = builder.build().with_context(|| format!("cannot open S3 bucket {bucket}"))?;
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(Arc::new(store));
    }
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

/// Where the warehouse's id is kept, at the root of its store.
const WAREHOUSE_ID: &str = "_warehouse_id";

/// The warehouse's id, made (and stored) on the first start: workers show
/// it, and a coordinator refuses a worker that reads another warehouse.
///
/// # Errors
/// The store cannot be read or written.
pub async fn warehouse_id(store: &Arc<dyn ObjectStore>) -> anyhow::Result<String> {
    if let Some(id) = read_warehouse_id(store).await? {
        return Ok(id);
    }
    let id = streamhouse_engine::access::scram::random_token::<12>();
    let put = store
        .put_opts(
            &object_store::path::Path::from(WAREHOUSE_ID),
            object_store::PutPayload::from(id.clone().into_bytes()),
            object_store::PutMode::Create.into(),
        )
        .await;
    match put {
        Ok(_) => Ok(id),
        // Another server made it first.
        Err(object_store::Error::AlreadyExists { .. }) => {
            read_warehouse_id(store).await?.context("the warehouse id vanished after it was made")
        }
        Err(e) => Err(e).context("cannot store the warehouse id"),
    }
}

/// The warehouse's id, `None` when no server has started on it yet.
///
/// # Errors
/// The store cannot be read.
pub async fn read_warehouse_id(store: &Arc<dyn ObjectStore>) -> anyhow::Result<Option<String>> {
    use object_store::ObjectStoreExt as _;
    match store.get(&object_store::path::Path::from(WAREHOUSE_ID)).await {
        Ok(got) => {
            let bytes = got.bytes().await.context("cannot read the warehouse id")?;
            Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string()))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e).context("cannot read the warehouse id"),
    }
}
