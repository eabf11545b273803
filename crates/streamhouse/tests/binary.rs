//! The `streamhouse` binary as a user runs it: configuration from file and
//! environment, readiness, and graceful shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    pg_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the binary and waits for its "ready" log line.
fn start(dir: &std::path::Path) -> Server {
    let pg_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamhouse"))
        .args(["serve"])
        .current_dir(dir)
        .env("STREAMHOUSE__SERVER__PG_PORT", pg_port.to_string())
        .env("STREAMHOUSE__SERVER__FLIGHT_PORT", free_port().to_string())
        .env("STREAMHOUSE__LOG__FORMAT", "json")
        .env("STREAMHOUSE__SERVER__SHUTDOWN_TIMEOUT_MS", "5000")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "server did not become ready");
        let line = lines.next().expect("server exited before ready").expect("readable log");
        if line.contains("streamhouse is ready") {
            assert!(line.contains(&format!("127.0.0.1:{pg_port}")), "{line}");
            break;
        }
    }
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, pg_port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_running_queries_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    assert!(dir.path().join("data").is_dir(), "the default data directory is created");
    let url = format!("host=127.0.0.1 port={} user=u dbname=streamhouse", server.pg_port);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("CREATE TABLE t (id BIGINT); INSERT INTO t VALUES (1)").await.unwrap();
    let running =
        tokio::spawn(async move { client.simple_query("SELECT count(*) FROM generate_series(1, 100000000000)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    let result = tokio::time::timeout(Duration::from_secs(20), running).await.unwrap().unwrap();
    let err = result.expect_err("the running query ends with an error");
    let db = err.as_db_error().unwrap_or_else(|| panic!("expected an error from the server, got {err:?}"));
    assert_eq!(db.code().code(), "57P01", "{db:?}");
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn unknown_configuration_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_streamhouse"))
        .args(["serve"])
        .current_dir(dir.path())
        .env("STREAMHOUSE__SERVER__PG_PROT", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.pg_prot"), "{stderr}");

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[execution]\nmemory_limt = \"1GiB\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_streamhouse"))
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("execution.memory_limt") && stderr.contains("bad.toml"), "{stderr}");
}

fn stop(mut server: Server) {
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn connect(server: &Server) -> tokio_postgres::Client {
    let url = format!("host=127.0.0.1 port={} user=u dbname=streamhouse", server.pg_port);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE kept (id BIGINT PRIMARY KEY, name TEXT, n INT DEFAULT 5);
             INSERT INTO kept (id, name) VALUES (1, 'one'), (2, 'two');
             INSERT INTO kept VALUES (2, 'TWO', 20);
             DELETE FROM kept WHERE id = 1;
             CREATE SCHEMA other; CREATE TABLE other.log (msg TEXT); INSERT INTO other.log VALUES ('hello')",
        )
        .await
        .unwrap();
    drop(client);
    stop(server);

    let server = start(dir.path());
    let client = connect(&server).await;
    let rows = client.query("SELECT id, name, n FROM kept ORDER BY id", &[]).await.unwrap();
    let rows: Vec<(i64, String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(rows, vec![(2, "TWO".to_string(), 20)]);
    let msg: String = client.query_one("SELECT msg FROM other.log", &[]).await.unwrap().get(0);
    assert_eq!(msg, "hello");
    // The stored DEFAULT still applies after the restart.
    client.batch_execute("INSERT INTO kept (id, name) VALUES (3, 'three')").await.unwrap();
    let n: i32 = client.query_one("SELECT n FROM kept WHERE id = 3", &[]).await.unwrap().get(0);
    assert_eq!(n, 5);
    drop(client);
    stop(server);
}

/// Every acknowledged batch has all its rows; no batch is partly visible.
async fn check_batches(client: &tokio_postgres::Client, acknowledged: &[i64], iteration: usize) {
    let rows = client.query("SELECT batch, count(*) FROM crash GROUP BY batch", &[]).await.unwrap();
    let present: std::collections::HashMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (batch, count) in &present {
        assert_eq!(*count, 10, "iteration {iteration}: batch {batch} is partly visible ({count} of 10 rows)");
    }
    for batch in acknowledged {
        assert!(present.contains_key(batch), "iteration {iteration}: acknowledged batch {batch} was lost");
    }
}

/// SIGKILL at a random moment while four clients insert concurrently and
/// background compaction runs; after each restart every acknowledged row is
/// there and no commit is partly visible. Several iterations on one data
/// directory, so later crashes hit compacted and expired state too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_during_inserts_and_compaction() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let acknowledged: Arc<Mutex<Vec<i64>>> = Arc::default();
    let mut compactions = 0;
    for iteration in 0..4 {
        let mut server = start(dir.path());
        let client = connect(&server).await;
        if iteration == 0 {
            client
                .batch_execute(
                    "CREATE TABLE crash (id BIGINT PRIMARY KEY, batch BIGINT NOT NULL, payload TEXT) WITH (
                       'num-sorted-run.compaction-trigger' = '2',
                       'snapshot.num-retained.min' = '2', 'snapshot.num-retained.max' = '4')",
                )
                .await
                .unwrap();
        }
        let so_far = acknowledged.lock().unwrap().clone();
        check_batches(&client, &so_far, iteration).await;
        let mut writers = Vec::new();
        for writer in 0..4i64 {
            let client = connect(&server).await;
            let acknowledged = Arc::clone(&acknowledged);
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let batch = (iteration as i64 * 10 + writer) * 100_000 + i;
                    let values: Vec<String> =
                        (0..10).map(|j| format!("({}, {batch}, 'row {j} of {batch}')", batch * 10 + j)).collect();
                    let sql = format!("INSERT INTO crash VALUES {}", values.join(", "));
                    if client.batch_execute(&sql).await.is_err() {
                        return;
                    }
                    acknowledged.lock().unwrap().push(batch);
                }
            }));
        }
        // Kill somewhere between 0.3 and 1.3 seconds in.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        tokio::time::sleep(Duration::from_millis(300 + u64::from(nanos % 1000))).await;
        let kinds = client.query("SELECT commit_kind FROM \"crash$snapshots\"", &[]).await.unwrap();
        compactions += kinds.iter().filter(|r| r.get::<_, &str>(0) == "compact").count();
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        for writer in writers {
            writer.await.unwrap();
        }
    }
    let server = start(dir.path());
    let client = connect(&server).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    check_batches(&client, &acknowledged, 4).await;
    assert!(acknowledged.len() > 20, "the writers got few writes through: {}", acknowledged.len());
    assert!(compactions > 0, "no compaction ran while writing");
    drop(client);
    stop(server);
}
