//! Deliberate recovery: a damaged table never takes the server down, is
//! never silently replaced by an older version, and comes back only when an
//! operator rolls it back. Also: one server per data directory.

use streamhouse_testkit::TestServer;
use tokio_postgres::error::SqlState;

async fn count(pg: &tokio_postgres::Client, table: &str) -> anyhow::Result<i64> {
    Ok(pg.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_table_is_refused_and_rolled_back_on_request() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute(
        "CREATE TABLE good (k BIGINT PRIMARY KEY, v TEXT);
         CREATE TABLE bad (k BIGINT PRIMARY KEY, v TEXT);
         INSERT INTO good VALUES (1, 'a'), (2, 'b');
         INSERT INTO bad VALUES (1, 'a');
         INSERT INTO bad VALUES (2, 'b');
         INSERT INTO bad VALUES (3, 'c');",
    )
    .await?;
    drop(pg);
    // Damage bad's latest snapshot (3): flip bytes in the middle of the file.
    server
        .restart_after(|dir| {
            let snapshot = dir.join("warehouse/public/bad/snapshot/snapshot-3");
            let mut bytes = std::fs::read(&snapshot)?;
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(&snapshot, bytes)?;
            Ok(())
        })
        .await?;
    let pg = server.pg().await?;
    // The server is up and the other table fully served.
    assert_eq!(count(&pg, "good").await?, 2);
    // The damaged one: XX001 naming the file, and nothing silently older.
    let err = pg.query_one("SELECT count(*) FROM bad", &[]).await.unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code(), &SqlState::DATA_CORRUPTED, "{db:?}");
    assert!(db.message().contains("snapshot-3"), "{}", db.message());
    assert!(db.message().contains("sys.rollback_to"), "{}", db.message());
    let err = pg.execute("INSERT INTO bad VALUES (4, 'd')", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DATA_CORRUPTED), "{err:?}");
    // Rolling back to a snapshot that does not exist is refused; to 2 works.
    let err = pg.batch_execute("CALL sys.rollback_to('bad', 9)").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PARAMETER_VALUE), "{err:?}");
    pg.batch_execute("CALL sys.rollback_to('bad', 2)").await?;
    assert_eq!(count(&pg, "bad").await?, 2);
    pg.execute("INSERT INTO bad VALUES (4, 'd')", &[]).await?;
    assert_eq!(count(&pg, "bad").await?, 3);
    drop(pg);
    // And it stays repaired across a restart; no file of the lost snapshot remains.
    server.restart().await?;
    let pg = server.pg().await?;
    assert_eq!(count(&pg, "bad").await?, 3);
    assert_eq!(count(&pg, "good").await?, 2);
    let rows = pg.query("SELECT snapshot_id FROM \"bad$snapshots\" ORDER BY snapshot_id", &[]).await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids.last(), Some(&3), "the new commit took id 3 again: {ids:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_files_are_removed_on_request() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute("CREATE TABLE t (k BIGINT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');").await?;
    let data = server.config().storage.data_dir.join("warehouse/public/t/data");
    // What a crash between writing a data file and claiming its snapshot leaves.
    // (The committed files may still be in the write-ahead log, the folder not made yet.)
    let orphan = data.join("00000000-0000-0000-0000-000000000000.parquet");
    std::fs::create_dir_all(&data)?;
    std::fs::write(&orphan, b"an uncommitted file")?;
    // Young files are spared by the default margin (a day).
    pg.batch_execute("CALL sys.remove_orphan_files('t')").await?;
    assert!(orphan.exists());
    pg.batch_execute("CALL sys.remove_orphan_files('t', older_than => INTERVAL '0 seconds')").await?;
    assert!(!orphan.exists(), "the orphan is removed");
    assert_eq!(count(&pg, "t").await?, 1, "and nothing the table needs");
    let err = pg.batch_execute("CALL sys.remove_orphan_files('t', 'yesterday-ish')").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION), "{err:?}");
    Ok(())
}

/// Flips a byte of the first column chunk (the key's, after the 4-byte
/// magic) of every data file of `table` under the data directory `dir`.
fn damage_data_files(dir: &std::path::Path, table: &str) -> std::io::Result<Vec<String>> {
    let mut damaged = Vec::new();
    for entry in std::fs::read_dir(dir.join(format!("warehouse/public/{table}/data")))? {
        let path = entry?.path();
        let mut bytes = std::fs::read(&path)?;
        bytes[8] ^= 0xff;
        std::fs::write(&path, bytes)?;
        damaged.push(path.file_name().unwrap_or_default().to_string_lossy().into_owned());
    }
    Ok(damaged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_file_is_reported_by_every_read_path() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let pg = server.pg().await?;
    // `plain`: one compacted run, read by DataFusion's Parquet scan;
    // `merged`: overlapping runs and a tombstone, merged on read by storage.
    pg.batch_execute(
        "CREATE TABLE plain (k BIGINT PRIMARY KEY, v TEXT);
         INSERT INTO plain SELECT x, 'v' || x FROM generate_series(1, 5000) AS t(x);
         CALL sys.compact('plain');
         CREATE TABLE merged (k BIGINT PRIMARY KEY, v TEXT);
         INSERT INTO merged SELECT x, 'v' || x FROM generate_series(1, 5000) AS t(x);
         INSERT INTO merged SELECT x, 'w' || x FROM generate_series(1, 5000, 2) AS t(x);
         DELETE FROM merged WHERE k = 4;",
    )
    .await?;
    assert_eq!(count(&pg, "plain").await?, 5000);
    assert_eq!(count(&pg, "merged").await?, 4999);
    drop(pg);
    let mut damaged = Vec::new();
    server
        .restart_after(|dir| {
            damaged.extend(damage_data_files(dir, "plain")?);
            damaged.extend(damage_data_files(dir, "merged")?);
            Ok(())
        })
        .await?;
    let pg = server.pg().await?;
    for table in ["plain", "merged"] {
        let err = pg.query(&format!("SELECT sum(k), max(v) FROM {table}"), &[]).await.unwrap_err();
        let db = err.as_db_error().expect("a database error");
        assert_eq!(db.code(), &SqlState::DATA_CORRUPTED, "{table}: {db:?}");
        assert!(
            damaged.iter().any(|file| db.message().contains(file.as_str())),
            "{table}: the message names the damaged file: {}",
            db.message()
        );
    }
    Ok(())
}
