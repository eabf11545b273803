//! The warehouse on S3-compatible object storage (a real moto server, see
//! `streamhouse_testkit::s3`): Dynamic Tables checked against a model,
//! two engines racing to commit to one table on one bucket, and the server
//! with `storage.url = "s3://…"` across a restart.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use streamhouse::config::{Config, Secret};
use streamhouse_storage::{Error as StorageError, Table, TableOptions, TableSchema, ValueKind};
use streamhouse_testkit::TestServer;
use streamhouse_testkit::s3::S3Server;

type Model = BTreeMap<i64, Option<String>>;

fn schema() -> TableSchema {
    let arrow =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
    let options = TableOptions {
        compaction_trigger: 3,
        target_file_size: 10_000,
        snapshot_num_retained_min: 2,
        snapshot_num_retained_max: 5,
        row_group_rows: 4,
        ..TableOptions::default()
    };
    TableSchema::new(0, arrow, &["k"], options).unwrap()
}

fn batch(schema: &TableSchema, rows: &[(i64, Option<String>)]) -> (RecordBatch, Vec<ValueKind>) {
    let keys = Int64Array::from_iter_values(rows.iter().map(|(k, _)| *k));
    let values: StringArray = rows.iter().map(|(_, v)| v.clone()).collect();
    let kinds = rows.iter().map(|(_, v)| if v.is_some() { ValueKind::Upsert } else { ValueKind::Delete }).collect();
    (RecordBatch::try_new(Arc::clone(&schema.schema), vec![Arc::new(keys), Arc::new(values)]).unwrap(), kinds)
}

fn rows_of(batches: &[RecordBatch]) -> Model {
    let mut out = Model::new();
    for b in batches {
        let k = b.column(0).as_primitive::<Int64Type>();
        let v = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            assert!(out.insert(k.value(i), v.is_valid(i).then(|| v.value(i).to_string())).is_none(), "duplicate key");
        }
    }
    out
}

/// A small deterministic generator, so a failure replays from its seed.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Writes, deletes, compactions, expiries and reopenings of a table on S3,
/// checked against a model after every step; at the end, after orphan
/// cleanup, every data, changelog and manifest file is referenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_on_s3_match_a_model() -> anyhow::Result<()> {
    let Some(s3) = S3Server::start()? else { return Ok(()) };
    s3.bucket("model")?;
    let store = s3.store("model")?;
    let dir = Path::from("public/t");
    let mut table = Table::create(Arc::clone(&store), dir.clone(), "t", schema()).await?;
    let seed = std::env::var("STREAMHOUSE_S3_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_202);
    eprintln!("seed {seed} (replay with STREAMHOUSE_S3_SEED={seed})");
    let mut random = Random(seed);
    let mut model = Model::new();
    let mut clock = 0;
    for step in 0..60 {
        match random.below(10) {
            0..=5 => {
                let rows: Vec<(i64, Option<String>)> = (0..1 + random.below(12))
                    .map(|_| {
                        let key = random.below(40) as i64;
                        (key, (random.below(5) > 0).then(|| format!("v{step}")))
                    })
                    .collect();
                let (b, kinds) = batch(&table.schema(), &rows);
                table.write(&b, &kinds).await?;
                for (k, v) in rows {
                    match v {
                        Some(v) => model.insert(k, Some(v)),
                        None => model.remove(&k),
                    };
                }
            }
            6 => {
                table.compact(random.below(2) == 0).await?;
            }
            7 => {
                clock += 3_600_001;
                table.expire(clock, None).await?;
            }
            _ => {
                drop(table);
                table = Table::open(Arc::clone(&store), dir.clone(), "t").await?;
            }
        }
        assert_eq!(rows_of(&table.scan(None).await?), model, "step {step}");
    }
    table.remove_orphan_files(i64::MAX).await?;
    let mut referenced = HashSet::new();
    for snapshot in table.snapshots().await? {
        referenced.insert(snapshot.manifest.clone());
        referenced.extend(snapshot.manifest_deltas.iter().cloned());
        referenced.extend(snapshot.changelog_files.iter().map(|f| f.path.clone()));
        referenced.extend(table.files(Some(snapshot.id)).await?.into_iter().map(|f| f.path));
    }
    for folder in ["data", "changelog", "manifest"] {
        let listed: Vec<_> = store.list(Some(&dir.clone().join(folder))).try_collect().await?;
        for meta in listed {
            let name = format!("{folder}/{}", meta.location.filename().unwrap_or_default());
            assert!(referenced.contains(&name), "{name} is stored but no snapshot references it");
        }
    }
    Ok(())
}

/// Two engines (two opens of one table on one bucket) commit at once:
/// conditional creates let exactly one win each snapshot id; the loser's
/// statement fails with a serialization failure and its next one commits
/// on top of the winner. No acknowledged write is lost, no failed one
/// appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_racing_on_one_bucket_never_both_win() -> anyhow::Result<()> {
    let Some(s3) = S3Server::start()? else { return Ok(()) };
    s3.bucket("race")?;
    let store = s3.store("race")?;
    let dir = Path::from("public/t");
    Table::create(Arc::clone(&store), dir.clone(), "t", schema()).await?;
    let engines = [
        Arc::new(Table::open(Arc::clone(&store), dir.clone(), "t").await?),
        Arc::new(Table::open(Arc::clone(&store), dir.clone(), "t").await?),
    ];
    let mut tasks = Vec::new();
    for (e, table) in engines.iter().enumerate() {
        let table = Arc::clone(table);
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut snapshots = Vec::new();
            let mut conflicts = 0;
            for i in 0..25i64 {
                let key = e as i64 * 1000 + i;
                let (b, kinds) = batch(&table.schema(), &[(key, Some(format!("from {e}")))]);
                match table.write(&b, &kinds).await {
                    Ok(snapshot) => {
                        acknowledged.push(key);
                        snapshots.push(snapshot.expect("a new key commits").id);
                    }
                    Err(StorageError::Conflict { .. }) => conflicts += 1,
                    Err(other) => panic!("engine {e}: {other}"),
                }
            }
            (acknowledged, snapshots, conflicts)
        }));
    }
    let mut acknowledged = Vec::new();
    let mut won = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (keys, snapshots, lost) = task.await?;
        acknowledged.extend(keys);
        won.extend(snapshots);
        conflicts += lost;
    }
    eprintln!("{} writes acknowledged, {conflicts} lost a race", acknowledged.len());
    // No snapshot id was won by both engines.
    let distinct: HashSet<u64> = won.iter().copied().collect();
    assert_eq!(distinct.len(), won.len(), "a snapshot id was claimed twice: {won:?}");
    let fresh = Table::open(Arc::clone(&store), dir.clone(), "t").await?;
    let got: Vec<i64> = rows_of(&fresh.scan(None).await?).into_keys().collect();
    acknowledged.sort_unstable();
    assert_eq!(got, acknowledged, "exactly the acknowledged writes, {conflicts} lost the race");
    assert_eq!(got.len() + conflicts, 50);
    Ok(())
}

/// The server with its warehouse on S3: tables, a continuous view and
/// their rows come back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_on_s3() -> anyhow::Result<()> {
    let Some(s3) = S3Server::start()? else { return Ok(()) };
    s3.bucket("warehouse")?;
    let mut config = Config::default();
    config.storage.url = Some("s3://warehouse/prod/wh".to_string());
    config.storage.s3.endpoint = Some(s3.endpoint().to_string());
    config.storage.s3.region = Some("us-east-1".to_string());
    config.storage.s3.access_key_id = Some("test".to_string());
    config.storage.s3.secret_access_key = Some(Secret("test".to_string()));
    let mut server = TestServer::start_with(config).await?;
    let pg = server.pg().await?;
    pg.batch_execute(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT, amount BIGINT);
         INSERT INTO orders VALUES (1, 'a', 10), (2, 'b', 20), (3, 'a', 5);
         CREATE MATERIALIZED VIEW totals AS SELECT customer, sum(amount) AS total FROM orders GROUP BY customer;
         UPDATE orders SET amount = 7 WHERE id = 3;",
    )
    .await?;
    drop(pg);
    server.restart().await?;
    let pg = server.pg().await?;
    let n: i64 = pg.query_one("SELECT count(*) FROM orders", &[]).await?.get(0);
    assert_eq!(n, 3);
    let rows = pg.query("SELECT customer, CAST(total AS BIGINT) FROM totals ORDER BY customer", &[]).await?;
    let rows: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows, vec![("a".to_string(), 17), ("b".to_string(), 20)]);
    // Scans read the Parquet ranges once from the bucket, then from the local cache.
    let first: i64 = pg.query_one("SELECT CAST(sum(amount) AS BIGINT) FROM orders", &[]).await?.get(0);
    let again: i64 = pg.query_one("SELECT CAST(sum(amount) AS BIGINT) FROM orders", &[]).await?.get(0);
    assert_eq!((first, again), (37, 37));
    let cached = std::fs::read_dir(server.config().storage.data_dir.join("cache"))?.count();
    assert!(cached > 0, "no range was cached");
    // The files are in the bucket, under the prefix.
    let listed: Vec<_> = s3.store("warehouse")?.list(Some(&Path::from("prod/wh/public/orders"))).try_collect().await?;
    assert!(listed.iter().any(|m| m.location.as_ref().contains("/snapshot/snapshot-")), "{listed:?}");
    Ok(())
}
