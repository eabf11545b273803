//! The `streamhouse` binary as a user runs it: configuration from file and
//! environment, readiness, and graceful shutdown on SIGTERM.

#[path = "binary/cluster.rs"]
mod cluster;

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

/// Starts the binary on ports the system picks (no race with other tests
/// for a "free" port) and waits for its "ready" log line, which names them.
fn start(dir: &std::path::Path) -> Server {
    let env = [
        ("STREAMHOUSE__SERVER__PG_PORT", "0"),
        ("STREAMHOUSE__SERVER__FLIGHT_PORT", "0"),
        ("STREAMHOUSE__SERVER__SHUTDOWN_TIMEOUT_MS", "5000"),
    ];
    let (child, ready) = spawn_ready(&["serve"], dir, &env, "streamhouse is ready");
    let address = ready.split("\"postgres\":\"127.0.0.1:").nth(1).unwrap_or_else(|| panic!("no address in {ready}"));
    let pg_port: u16 = address[..address.find('"').expect("quoted address")].parse().expect("a port");
    Server { child, pg_port }
}

/// Starts `streamhouse <args>` in `dir` with `env` and JSON logs, and waits
/// for a log line holding `ready`: the process and that line. The rest of
/// its log is drained, so it never blocks on a full pipe.
fn spawn_ready(args: &[&str], dir: &std::path::Path, env: &[(&str, &str)], ready: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamhouse"))
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .env("STREAMHOUSE__LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut log = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "{args:?} did not become ready; its log:\n{}", log.join("\n"));
        let Some(line) = lines.next() else {
            let status = child.wait().expect("exit status");
            panic!("{args:?} exited before ready ({status}); its log:\n{}", log.join("\n"));
        };
        let line = line.expect("readable log");
        log.push(line.clone());
        if line.contains(ready) {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, log.pop().unwrap_or_default())
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

/// A worker needs the server's warehouse on shared object storage (the
/// cluster test checks it refuses a public address).
#[test]
fn a_worker_without_a_shared_warehouse_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output =
        Command::new(env!("CARGO_BIN_EXE_streamhouse")).args(["worker"]).current_dir(dir.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("storage.url") && stderr.contains("s3://"), "{stderr}");
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

/// A second server on a data directory in use exits at start-up, naming
/// the directory and the pid holding it; once the first stops (even by
/// SIGKILL, which leaves no stale lock) the directory is free again.
#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path());
    let output = Command::new(env!("CARGO_BIN_EXE_streamhouse"))
        .args(["serve"])
        .current_dir(dir.path())
        .env("STREAMHOUSE__SERVER__PG_PORT", "0")
        .env("STREAMHOUSE__SERVER__FLIGHT_PORT", "0")
        .output()
        .unwrap();
    assert!(!output.status.success(), "the second server must not start");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is in use by another streamhouse server"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.child.id())), "{stderr}");
    assert!(stderr.contains("data"), "{stderr}");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let second = start(dir.path());
    stop(second);
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
             CREATE SCHEMA other; CREATE TABLE other.log (msg TEXT); INSERT INTO other.log VALUES ('hello');
             CREATE MATERIALIZED VIEW named AS SELECT id FROM kept;
             CREATE OR REPLACE MATERIALIZED VIEW named AS SELECT id, upper(name) AS shout FROM kept",
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
    // The replacing definition of the view is the one that came back, and it is maintained.
    let rows = client.query("SELECT id, shout FROM named ORDER BY id", &[]).await.unwrap();
    let rows: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows, vec![(2, "TWO".to_string()), (3, "THREE".to_string())]);
    drop(client);
    stop(server);
}

/// The seed of the kill moments: `STREAMHOUSE_CRASH_SEED` to replay a
/// failure, else the clock; printed either way (shown when a test fails).
fn crash_seed() -> u64 {
    let seed = std::env::var("STREAMHOUSE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        u64::from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos())
    });
    eprintln!("crash seed {seed} (replay with STREAMHOUSE_CRASH_SEED={seed})");
    seed
}

/// Sleeps between 0.3 and 1.3 seconds, so a SIGKILL lands at a random
/// moment: the `iteration`th of the moments `seed` picks.
async fn pause_a_random_moment(seed: u64, iteration: usize) {
    let mixed = (seed ^ (iteration as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    tokio::time::sleep(Duration::from_millis(300 + (mixed >> 33) % 1000)).await;
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
    let seed = crash_seed();
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
        pause_a_random_moment(seed, iteration).await;
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

/// The rows of `sql` as text, sorted.
async fn sorted_text_rows(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let mut rows: Vec<String> = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some((0..row.len()).map(|i| row.get(i).unwrap_or("NULL").to_string()).collect::<Vec<_>>().join("|"))
            }
            _ => None,
        })
        .collect();
    rows.sort();
    rows
}

/// Continuous views and their definitions, checked after every crash.
const CRASH_VIEWS: &[(&str, &str)] = &[
    (
        "country_totals",
        "SELECT c.country, count(*) AS orders, sum(o.amount) AS amount, max(o.amount) AS biggest \
         FROM orders o JOIN customers c ON o.customer_id = c.id GROUP BY c.country",
    ),
    ("big_countries", "SELECT country, amount FROM country_totals WHERE amount > 1000"),
    (
        "loyal_customers",
        "SELECT customer_id, count(*) AS orders, sum(amount) AS amount, count(DISTINCT amount % 7) AS endings \
         FROM orders GROUP BY customer_id HAVING count(*) > 2 AND sum(amount) > 100",
    ),
    (
        "open_orders",
        "SELECT o.id, o.amount, c.country FROM orders o LEFT JOIN customers c ON o.customer_id = c.id WHERE o.amount % 3 = 0",
    ),
];

/// SIGKILL at a random moment while clients change the sources of a chain
/// of continuous views (join + aggregate, a view over it, a HAVING with a
/// COUNT(DISTINCT), an outer join);
/// after each restart every view equals its query on the tables: no change
/// lost or counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_views_are_exact_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let seed = crash_seed();
    for iteration in 0..4 {
        let mut server = start(dir.path());
        let client = connect(&server).await;
        if iteration == 0 {
            client
                .batch_execute(
                    "CREATE TABLE customers (id BIGINT PRIMARY KEY, country TEXT);
                     CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT, amount BIGINT);
                     INSERT INTO customers VALUES (1, 'UK'), (2, 'US'), (3, 'NL'), (4, 'FR');",
                )
                .await
                .unwrap();
            for (name, definition) in CRASH_VIEWS {
                client.batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {definition}")).await.unwrap();
            }
        }
        for (name, definition) in CRASH_VIEWS {
            let view = sorted_text_rows(&client, &format!("SELECT * FROM {name}")).await;
            let query = sorted_text_rows(&client, definition).await;
            assert_eq!(view, query, "iteration {iteration}: view {name} differs from its query");
        }
        let lagging = client
            .query("SELECT count(*) FROM sys.views WHERE lag_snapshots > 0 OR status <> 'running'", &[])
            .await
            .unwrap();
        assert_eq!(lagging[0].get::<_, i64>(0), 0, "iteration {iteration}: a view lags after its read");
        let mut writers = Vec::new();
        for writer in 0..2i64 {
            let client = connect(&server).await;
            writers.push(tokio::spawn(async move {
                for i in 0i64.. {
                    let base = (iteration as i64 * 2 + writer) * 1_000_000 + i * 10;
                    let sql = match i % 4 {
                        0 | 1 => {
                            let values: Vec<String> = (0..10)
                                .map(|j| format!("({}, {}, {})", base + j, 1 + (base + j) % 5, (base + j) % 97))
                                .collect();
                            format!("INSERT INTO orders VALUES {}", values.join(", "))
                        }
                        2 => format!("UPDATE orders SET amount = amount + 1 WHERE id % 13 = {}", i % 13),
                        _ => format!("UPDATE customers SET country = 'C{}' WHERE id = {}", i % 3, 1 + i % 5),
                    };
                    if client.batch_execute(&sql).await.is_err() {
                        return;
                    }
                }
            }));
        }
        pause_a_random_moment(seed, iteration).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        for writer in writers {
            writer.await.unwrap();
        }
    }
    let server = start(dir.path());
    let client = connect(&server).await;
    for (name, definition) in CRASH_VIEWS {
        let view = sorted_text_rows(&client, &format!("SELECT * FROM {name}")).await;
        let query = sorted_text_rows(&client, definition).await;
        assert_eq!(view, query, "after the last crash: view {name} differs from its query");
        assert!(!view.is_empty(), "view {name} is empty");
    }
    drop(client);
    stop(server);
}

/// SIGKILL while `CREATE MATERIALIZED VIEW` backfills a big table, at a
/// random moment. After the restart the view either does not exist (its
/// CREATE was never acknowledged) or equals its query — a half-done
/// backfill is never served; and it can then be created (again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_killed_during_backfill_is_whole_or_absent() {
    let dir = tempfile::tempdir().unwrap();
    let seed = crash_seed();
    const DEFINITION: &str = "SELECT k % 97 AS g, count(*) AS n, sum(x) AS total FROM big GROUP BY k % 97";
    for iteration in 0..4 {
        let mut server = start(dir.path());
        let client = connect(&server).await;
        if iteration == 0 {
            client.batch_execute("CREATE TABLE big (k BIGINT PRIMARY KEY, x BIGINT)").await.unwrap();
            for part in 0..4i64 {
                client
                    .batch_execute(&format!(
                        "INSERT INTO big SELECT value, value % 1000 FROM generate_series({}, {})",
                        part * 50_000,
                        part * 50_000 + 49_999
                    ))
                    .await
                    .unwrap();
            }
        }
        client.batch_execute("DROP MATERIALIZED VIEW IF EXISTS backfilled").await.unwrap();
        let creating = {
            let client = connect(&server).await;
            tokio::spawn(async move {
                client.batch_execute(&format!("CREATE MATERIALIZED VIEW backfilled AS {DEFINITION}")).await.is_ok()
            })
        };
        // Between 10 and 400 ms: before, during or after the backfill (about 0.3 s here).
        let mixed =
            (seed ^ (iteration as u64 + 7).wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        tokio::time::sleep(Duration::from_millis(10 + (mixed >> 33) % 390)).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let acknowledged = creating.await.unwrap();
        let server = start(dir.path());
        let client = connect(&server).await;
        let exists = client
            .query_one("SELECT count(*) FROM sys.views WHERE \"view\" LIKE '%backfilled'", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            > 0;
        eprintln!("iteration {iteration}: CREATE acknowledged {acknowledged}, view exists after the crash {exists}");
        assert!(exists || !acknowledged, "iteration {iteration}: the acknowledged view is gone");
        if exists {
            let view = sorted_text_rows(&client, "SELECT * FROM backfilled").await;
            let query = sorted_text_rows(&client, DEFINITION).await;
            assert_eq!(view, query, "iteration {iteration}: the view differs from its query after the crash");
        }
        drop(client);
        stop(server);
    }
}

/// A three-level pipeline, continuous → full → full (refreshed on schedule,
/// every second, end to end).
const PIPELINE: &[(&str, &str, &str)] = &[
    ("p_clean", "", "SELECT id, customer_id, amount FROM orders WHERE amount > 0"),
    (
        "p_by_customer",
        "WITH (freshness = '1 second', refresh_mode = 'full') ",
        "SELECT customer_id, count(*) AS n, sum(amount) AS total FROM p_clean GROUP BY customer_id",
    ),
    (
        "p_top",
        "WITH (freshness = '1 second') ",
        "SELECT customer_id, total FROM p_by_customer ORDER BY total DESC, customer_id LIMIT 3",
    ),
];

/// Each view of [`PIPELINE`] equals its query on the source snapshots it
/// records (read at the view snapshot that records them): no view is half
/// refreshed or half maintained. After a restart views resume in the
/// background (`status` 'starting' until their query is planned): this
/// waits up to 60 s for each to show what it reflects.
async fn check_pipeline(client: &tokio_postgres::Client, when: &str) {
    for (name, _, definition) in PIPELINE {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (source, position, snapshot) = loop {
            let recorded = client
                .query(
                    "SELECT source, source_snapshot, view_snapshot, status FROM sys.views WHERE view = $1",
                    &[&format!("public.{name}")],
                )
                .await
                .unwrap();
            assert_eq!(recorded.len(), 1, "{when}: {name} reads one source");
            let row: (Option<String>, Option<i64>, Option<i64>, String) =
                (recorded[0].get(0), recorded[0].get(1), recorded[0].get(2), recorded[0].get(3));
            match row {
                (Some(source), Some(position), Some(snapshot), _) => break (source, position, snapshot),
                (.., status) => {
                    assert!(Instant::now() < deadline, "{when}: {name} has not started in 60 s: {status}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let source = source.trim_start_matches("public.");
        let view = sorted_text_rows(client, &format!("SELECT * FROM table_as_of('{name}', {snapshot})")).await;
        let oracle =
            definition.replacen(&format!("FROM {source}"), &format!("FROM table_as_of('{source}', {position})"), 1);
        let query = sorted_text_rows(client, &oracle).await;
        assert_eq!(view, query, "{when}: {name} at snapshot {snapshot} differs from its query on {source}@{position}");
    }
}

/// SIGKILL at a random moment while orders stream in and the scheduler
/// refreshes a pipeline mixing continuous and full views (each refresh of
/// the big aggregate takes a while): after each restart no view is half
/// refreshed, the next round brings the pipeline up to date, and every
/// view then equals its query on the tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_round_killed_midway_is_redone_whole() {
    let dir = tempfile::tempdir().unwrap();
    let seed = crash_seed();
    for iteration in 0..3 {
        let mut server = start(dir.path());
        let client = connect(&server).await;
        if iteration == 0 {
            client
                .batch_execute(
                    "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT, amount BIGINT);
                     INSERT INTO orders SELECT value, value % 5000, value % 101 FROM generate_series(1, 200000);",
                )
                .await
                .unwrap();
            for (name, with, definition) in PIPELINE {
                client.batch_execute(&format!("CREATE MATERIALIZED VIEW {name} {with}AS {definition}")).await.unwrap();
            }
        } else {
            check_pipeline(&client, &format!("iteration {iteration}, right after the restart")).await;
        }
        let writer = {
            let client = connect(&server).await;
            tokio::spawn(async move {
                for i in 0i64.. {
                    let base = 1_000_000 + (iteration as i64) * 10_000_000 + i * 1000;
                    let sql = if i % 3 == 2 {
                        format!("UPDATE orders SET amount = amount + 7 WHERE id % 1000 = {}", i % 1000)
                    } else {
                        format!(
                            "INSERT INTO orders SELECT value, value % 5000, value % 89 FROM generate_series({base}, {})",
                            base + 999
                        )
                    };
                    if client.batch_execute(&sql).await.is_err() {
                        return;
                    }
                }
            })
        };
        // Between 1 and 4 s: rounds run every second or so.
        pause_a_random_moment(seed, iteration).await;
        tokio::time::sleep(Duration::from_millis(700 + (seed >> (iteration * 8)) % 2000)).await;
        let refreshes = sorted_text_rows(
            &client,
            "SELECT status, count(*) FROM sys.refreshes WHERE trigger = 'schedule' GROUP BY status",
        )
        .await;
        eprintln!("iteration {iteration}: scheduled refreshes by status just before the kill: {refreshes:?}");
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        writer.await.unwrap();
    }
    let server = start(dir.path());
    let client = connect(&server).await;
    check_pipeline(&client, "after the last restart").await;
    // No more writes: the round completes, and the pipeline equals its queries on the tables.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lagging = client
            .query_one(
                "SELECT count(*) FROM sys.views WHERE lag_snapshots > 0 OR status <> 'running' OR source_snapshot IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if lagging == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the pipeline did not catch up after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let top = sorted_text_rows(&client, "SELECT * FROM p_top").await;
    let expected = sorted_text_rows(
        &client,
        "SELECT customer_id, sum(amount) AS total FROM orders WHERE amount > 0 GROUP BY customer_id \
         ORDER BY total DESC, customer_id LIMIT 3",
    )
    .await;
    assert_eq!(top, expected, "p_top differs from its query on the tables");
    check_pipeline(&client, "once caught up").await;
    drop(client);
    stop(server);
}

/// The server's resident set size in KiB, from `/proc/<pid>/status`.
fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).expect("the server's status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB")
}

/// What one soak client did, and anything that went wrong.
#[derive(Default)]
struct SoakTally {
    operations: u64,
    reconnects: u64,
    errors: Vec<String>,
}

/// One soak client: prepared point selects, upserts, aggregates, view reads
/// and SUBSCRIBE cursors, reconnecting every so often. Every answer is
/// checked against what must hold whatever the interleaving (the key set
/// never changes, only values do).
async fn soak_client(server_port: u16, id: u64, until: Instant, keys: i64) -> SoakTally {
    let mut tally = SoakTally::default();
    let mut rng = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let url = format!("host=127.0.0.1 port={server_port} user=soak{id} dbname=streamhouse");
    while Instant::now() < until {
        let (client, connection) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(e) => {
                tally.errors.push(format!("client {id}: connect: {e}"));
                return tally;
            }
        };
        tokio::spawn(connection);
        tally.reconnects += 1;
        let run = async {
            let point = client.prepare("SELECT k, v, g FROM soak WHERE k = $1").await?;
            let upsert = client.prepare("INSERT INTO soak VALUES ($1, $2, $3)").await?;
            // Churn: a connection lives for 5 to 50 operations.
            for _ in 0..5 + next(45) {
                if Instant::now() >= until {
                    break;
                }
                let k = next(keys as u64) as i64;
                match next(10) {
                    0..=4 => {
                        let row = client.query_one(&point, &[&k]).await?;
                        if row.get::<_, i64>(0) != k || row.get::<_, i32>(2) != (k % 10) as i32 {
                            return Err(SoakError(format!("point select of {k} answered another row")));
                        }
                    }
                    5..=6 => {
                        let v = next(1_000_000) as i64;
                        if client.execute(&upsert, &[&k, &v, &((k % 10) as i32)]).await? != 1 {
                            return Err(SoakError(format!("upsert of {k} did not report one row")));
                        }
                    }
                    7 => {
                        let row = client.query_one("SELECT count(*), count(DISTINCT g) FROM soak", &[]).await?;
                        if (row.get::<_, i64>(0), row.get::<_, i64>(1)) != (keys, 10) {
                            return Err(SoakError(format!("aggregate saw {} rows", row.get::<_, i64>(0))));
                        }
                    }
                    8 => {
                        let rows: i64 =
                            client.query_one("SELECT CAST(sum(n) AS BIGINT) FROM soak_groups", &[]).await?.get(0);
                        if rows != keys {
                            return Err(SoakError(format!("the view counts {rows} rows, not {keys}")));
                        }
                    }
                    _ => {
                        client.batch_execute("BEGIN; DECLARE c CURSOR FOR SUBSCRIBE TO soak_groups").await?;
                        let fetch = client.prepare("FETCH 20 c WITH (timeout = '200ms')").await?;
                        let first = client.query(&fetch, &[]).await?;
                        if first.is_empty() {
                            return Err(SoakError("a subscription's first FETCH had no snapshot rows".into()));
                        }
                        client.query(&fetch, &[]).await?;
                        client.batch_execute("COMMIT").await?;
                    }
                }
                tally.operations += 1;
            }
            Ok::<_, SoakError>(())
        };
        if let Err(SoakError(e)) = run.await {
            tally.errors.push(format!("client {id}: {e}"));
        }
    }
    tally
}

impl From<tokio_postgres::Error> for SoakError {
    fn from(e: tokio_postgres::Error) -> Self {
        SoakError(format!("{e} (SQLSTATE {:?})", e.code().map(|c| c.code())))
    }
}

/// An unexpected error of a soak client.
struct SoakError(String);

/// A soak of 32 clients (`STREAMHOUSE_SOAK_SECS`, default 20 s): prepared
/// point selects, upserts, aggregates, view reads and SUBSCRIBE cursors
/// with connection churn. No unexpected error, every answer consistent,
/// the server's memory after the run within twice what it was once warm,
/// and the view equal to its query at the end. (Throughput is not asserted;
/// `benches/streams.rs` measures it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_of_mixed_clients_has_no_errors_and_bounded_memory() {
    let secs: u64 = std::env::var("STREAMHOUSE_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let (clients, keys) = (32u64, 2_000i64);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let client = connect(&server).await;
    client
        .batch_execute(
            "CREATE TABLE soak (k BIGINT PRIMARY KEY, v BIGINT, g INT);
             INSERT INTO soak SELECT value, value, CAST(value % 10 AS INT) FROM generate_series(0, 1999);
             CREATE MATERIALIZED VIEW soak_groups AS SELECT g, count(*) AS n, max(v) AS top FROM soak GROUP BY g",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients).map(|id| tokio::spawn(soak_client(server.pg_port, id, until, keys))).collect();
    // Warm: a third of the way in, every kind of statement has run many times.
    tokio::time::sleep(Duration::from_secs(secs / 3)).await;
    let warm = rss_kib(&server);
    let mut peak = warm;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_kib(&server));
    }
    let mut total = SoakTally::default();
    for task in tasks {
        let tally = task.await.unwrap();
        total.operations += tally.operations;
        total.reconnects += tally.reconnects;
        total.errors.extend(tally.errors);
    }
    let end = rss_kib(&server);
    eprintln!(
        "soak: {clients} clients, {secs} s: {} operations, {} connections, {} errors; RSS warm {warm} KiB, peak {peak} KiB, end {end} KiB",
        total.operations,
        total.reconnects,
        total.errors.len()
    );
    assert!(total.errors.is_empty(), "unexpected errors: {:#?}", &total.errors[..total.errors.len().min(20)]);
    assert!(total.operations > clients, "the clients did next to nothing: {} operations", total.operations);
    assert!(peak <= 2 * warm, "memory grew from {warm} KiB once warm to a peak of {peak} KiB");
    // The server still answers, and the view caught up with its query.
    let query = "SELECT g, count(*), max(v) FROM soak GROUP BY g ORDER BY g";
    let expected = sorted_text_rows(&client, query).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = sorted_text_rows(&client, "SELECT g, n, top FROM soak_groups").await;
        if view == expected {
            break;
        }
        assert!(Instant::now() < deadline, "the view never caught up: {view:?} vs {expected:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    stop(server);
}
