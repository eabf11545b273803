//! A server and worker processes over the S3 test server (the same binary,
//! `serve` and `worker`), sharing a cluster secret: TPC-H answers the same
//! in distributed MPP, in distributed BSP and on one node; a worker
//! SIGKILLed during a BSP query costs retried tasks, during an MPP query a
//! re-plan or a 40001, never a wrong or partial answer; a worker of another
//! warehouse, or with another secret, is refused.

use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use streamhouse_testkit::s3::S3Server;
use streamhouse_testkit::tpch;

/// A child process, killed on drop.
struct Process {
    child: Child,
    ready: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `streamhouse <args>` in `dir` and waits for a log line holding `ready`.
fn spawn(args: &[&str], dir: &Path, ready: &str) -> Process {
    let (child, ready) = super::spawn_ready(args, dir, &[], ready);
    Process { child, ready }
}

/// A port nobody listens on now (the workers must be named before they start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a port")
}

/// The `[storage]` of a process on warehouse `prefix` of `s3`'s bucket.
fn storage(s3: &S3Server, prefix: &str, data_dir: &Path) -> String {
    format!(
        "[storage]\nurl = \"s3://warehouse/{prefix}\"\ndata_dir = {data_dir:?}\n\
         [storage.s3]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n",
        s3.endpoint()
    )
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("config written");
    path.display().to_string()
}

/// The secret the test's server and workers share.
const SECRET: &str = "a shared secret";

/// A worker listening on `listen` (`host:port`).
fn worker(dir: &Path, s3: &S3Server, prefix: &str, listen: &str, secret: &str, name: &str) -> Process {
    let config =
        format!("{}[cluster]\nlisten = \"{listen}\"\nsecret = \"{secret}\"\n", storage(s3, prefix, &dir.join(name)));
    let file = write_config(dir, &format!("{name}.toml"), &config);
    spawn(&["worker", "--config", &file], dir, "streamhouse worker is ready")
}

async fn connect(server: &Process) -> tokio_postgres::Client {
    let address = server.ready.split("\"postgres\":\"127.0.0.1:").nth(1).expect("postgres address");
    let port: u16 = address[..address.find('"').expect("quoted")].parse().expect("a port");
    let url = format!("host=127.0.0.1 port={port} user=u dbname=streamhouse");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connects");
    tokio::spawn(connection);
    client
}

/// `sys.workers` as (address, state) pairs, sorted.
async fn workers(client: &tokio_postgres::Client) -> Vec<(String, String)> {
    let rows = client.query("SELECT address, state FROM sys.workers ORDER BY address", &[]).await.expect("sys.workers");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Waits until `sys.workers` shows `up` workers up.
async fn wait_for_up(client: &tokio_postgres::Client, up: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = workers(client).await;
        if now.iter().filter(|(_, s)| s == "up").count() == up {
            return;
        }
        assert!(Instant::now() < deadline, "expected {up} workers up: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The plan EXPLAIN shows for `sql`, and its execution mode line.
async fn explain(client: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let rows = super::sorted_text_rows(client, &format!("EXPLAIN {sql}")).await;
    let mode = rows.iter().find(|r| r.starts_with("execution_mode|")).cloned().unwrap_or_default();
    (rows.join("\n"), mode)
}

/// The bytes an `execution_mode` line says joins and windows need ("about 1.5 MiB").
fn needed_bytes(mode: &str) -> u64 {
    let about = mode.split("need about ").nth(1).unwrap_or_else(|| panic!("no estimate in {mode}"));
    let mut words = about.split_whitespace();
    let value: f64 = words.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{mode}"));
    let unit = match words.next().map(|u| u.trim_end_matches(',')) {
        Some("bytes") => 1.0,
        Some("KiB") => 1024.0,
        Some("MiB") => 1024.0 * 1024.0,
        Some("GiB") => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other:?} in {mode}"),
    };
    (value * unit) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpch_runs_across_worker_processes_with_the_same_answers() {
    let Some(s3) = S3Server::start().expect("moto_server") else { return };
    s3.bucket("warehouse").expect("bucket");
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::prefix::PrefixStore::new(s3.store("warehouse").expect("store"), "tpch"));
    // Small row groups: scans have splits enough for every task.
    let options = streamhouse_storage::TableOptions { row_group_rows: 2048, ..Default::default() };
    tpch::load_all(&store, 0.01, &options).await;

    // Three workers (one listening on every address), a fourth on another
    // warehouse and a fifth with another secret; the server names all five.
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let addresses: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let server_config = format!(
        "{}[server]\npg_port = 0\nflight_port = 0\n[execution]\ndistributed = \"on\"\n\
         [cluster]\nworkers = [{}]\nheartbeat_interval_ms = 200\nlost_after_ms = 1000\nsecret = \"{SECRET}\"\n",
        storage(&s3, "tpch", &dir.path().join("server")),
        addresses.join(", ")
    );
    let file = write_config(dir.path(), "server.toml", &server_config);
    let server = spawn(&["serve", "--config", &file], dir.path(), "streamhouse is ready");
    // The other warehouse gets its id from a server of its own, stopped again.
    let other_config =
        format!("{}[server]\npg_port = 0\nflight_port = 0\n", storage(&s3, "other", &dir.path().join("other")));
    let other_file = write_config(dir.path(), "other.toml", &other_config);
    drop(spawn(&["serve", "--config", &other_file], dir.path(), "streamhouse is ready"));

    // A worker on a public address without a secret is refused.
    let public = format!("{}[cluster]\nlisten = \"0.0.0.0:0\"\n", storage(&s3, "tpch", &dir.path().join("public")));
    let public = write_config(dir.path(), "public.toml", &public);
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_streamhouse"))
        .args(["worker", "--config", &public])
        .current_dir(dir.path())
        .output()
        .expect("binary runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("not a loopback address"), "{stderr}");

    let start_worker = |i: usize| {
        // With the secret, a worker may listen beyond loopback.
        let listen = if i == 0 { format!("0.0.0.0:{}", ports[0]) } else { format!("127.0.0.1:{}", ports[i]) };
        worker(dir.path(), &s3, "tpch", &listen, SECRET, &format!("worker{i}"))
    };
    let mut workers_running: Vec<Option<Process>> = (0..3).map(|i| Some(start_worker(i))).collect();
    let stranger = worker(dir.path(), &s3, "other", &format!("127.0.0.1:{}", ports[3]), SECRET, "stranger");
    let impostor = worker(dir.path(), &s3, "tpch", &format!("127.0.0.1:{}", ports[4]), "another secret", "impostor");
    let client = connect(&server).await;
    wait_for_up(&client, 3).await;
    for (port, why) in [(ports[3], "warehouse"), (ports[4], "cluster.secret")] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let rows = client
                .query("SELECT state, error FROM sys.workers WHERE address LIKE $1", &[&format!("%:{port}/")])
                .await
                .expect("sys.workers");
            let (state, error): (String, Option<String>) = (rows[0].get(0), rows[0].get(1));
            if state == "refused" {
                let error = error.unwrap_or_default();
                assert!(error.contains("refused") && error.contains(why), "{error}");
                break;
            }
            assert!(Instant::now() < deadline, "the worker on port {port} is {state}, not refused for its {why}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(stranger);
    drop(impostor);

    // All 22 queries: the same rows across the workers as on the server alone.
    let mut distributed = 0;
    let mut local_modes = Vec::new();
    let mut answers = std::collections::HashMap::new();
    for (name, sql) in tpch::QUERIES {
        client.batch_execute("SET distributed = off").await.expect("set");
        let local = super::sorted_text_rows(&client, sql).await;
        answers.insert(*name, local.clone());
        client.batch_execute("SET distributed = on").await.expect("set");
        let (plan, mode) = explain(&client, sql).await;
        if mode.contains("|distributed:") {
            distributed += 1;
            assert!(plan.contains("NetworkShuffleExec") || plan.contains("NetworkCoalesceExec"), "{name}: {plan}");
        } else {
            local_modes.push(format!("{name}: {mode}"));
        }
        let across = super::sorted_text_rows(&client, sql).await;
        assert_eq!(local, across, "{name} answers differently across the workers");
    }
    assert!(distributed >= 18, "only {distributed} of 22 queries ran distributed: {local_modes:#?}");
    let (plan, _) = explain(&client, tpch::query("q1")).await;
    assert!(plan.contains("distributed_stages|") && plan.contains("Stage 1"), "{plan}");
    // Every task of the scan stage reads a share of lineitem's splits.
    let shares: Vec<&str> =
        plan.lines().filter(|l| l.contains(": DynamicTableScan: table=lineitem") && !l.contains("LeafExec")).collect();
    assert_eq!(shares.len(), 3, "{plan}");
    assert!(shares.iter().all(|l| !l.contains("splits=0")), "{plan}");
    eprintln!("{plan}\n{:?}", super::sorted_text_rows(&client, "SELECT * FROM sys.workers").await);
    // EXPLAIN ANALYZE gathers the workers' metrics and counts what crossed the network.
    let analyzed = super::sorted_text_rows(&client, &format!("EXPLAIN ANALYZE {}", tpch::query("q3"))).await.join("\n");
    let moved: u64 = analyzed
        .split("bytes between tasks: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {analyzed}"));
    assert!(moved > 0 && analyzed.contains("output_rows="), "{analyzed}");

    // Distributed BSP: every stage's tasks on the workers, the same rows.
    client.batch_execute("SET execution_mode = bsp").await.expect("set");
    let mut staged = 0;
    let mut other_modes = Vec::new();
    for (name, sql) in tpch::QUERIES {
        let (plan, mode) = explain(&client, sql).await;
        if mode.contains("|distributed_bsp:") {
            staged += 1;
            assert!(plan.contains("stages|") && plan.contains("StageExchange"), "{name}: {plan}");
        } else {
            other_modes.push(format!("{name}: {mode}"));
        }
        let across = super::sorted_text_rows(&client, sql).await;
        assert_eq!(answers[name], across, "{name} answers differently in distributed BSP");
    }
    eprintln!("{staged} of 22 in distributed BSP; the others: {other_modes:#?}");
    assert!(staged >= 18, "only {staged} of 22 queries ran in distributed BSP: {other_modes:#?}");
    // `auto` weighs the plan's memory against one machine's limit, then
    // against the workers' together: distributed MPP when it fits them,
    // distributed BSP when it does not.
    client.batch_execute("SET execution_mode = auto; SET memory_limit = '1kB'").await.expect("set");
    let (_, mode) = explain(&client, tpch::query("q3")).await;
    assert!(mode.contains("|distributed_bsp: distributed BSP, because joins and windows need about"), "{mode}");
    let needed = needed_bytes(&mode);
    // Too much for one machine (70% of the limit), within three (3 × 70%).
    let limit = (needed as f64 / 1.4) as u64;
    client.batch_execute(&format!("SET memory_limit = '{limit}'")).await.expect("set");
    let (_, mode) = explain(&client, tpch::query("q3")).await;
    assert!(mode.contains("|distributed: distributed MPP") && mode.contains("within 3 workers' memory"), "{mode}");
    client.batch_execute("RESET memory_limit; SET execution_mode = bsp").await.expect("set");
    let analyzed = super::sorted_text_rows(&client, &format!("EXPLAIN ANALYZE {}", tpch::query("q3"))).await;
    let analyzed = analyzed.join("\n");
    assert!(analyzed.contains(&format!("127.0.0.1:{}", ports[1])) && analyzed.contains("retried=0"), "{analyzed}");

    // A worker SIGKILLed while a BSP query runs: its tasks run again on the
    // others (the stages before stay written), the answer is right, and
    // sys.queries counts the retried tasks. The kill lands once the query's
    // first tasks went out; should it miss them all, the worker is started
    // again and the query run again.
    let q9 = tpch::query("q9");
    let mut retried = 0;
    for round in 0..3 {
        let runner = connect(&server).await;
        runner.batch_execute("SET execution_mode = bsp; SET distributed = on").await.expect("set");
        let running = tokio::spawn(async move { super::sorted_text_rows(&runner, q9).await });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = client
                .query(
                    "SELECT task_attempts FROM sys.queries WHERE state = 'running' AND mode = 'distributed_bsp'",
                    &[],
                )
                .await
                .expect("sys.queries");
            if rows.iter().any(|r| r.get::<_, i64>(0) >= 1) {
                break;
            }
            assert!(Instant::now() < deadline && !running.is_finished(), "the BSP query sent no task");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut victim = workers_running[2].take().expect("running");
        victim.child.kill().expect("SIGKILL");
        let _ = victim.child.wait();
        assert_eq!(running.await.expect("the query ran"), answers["q9"], "q9 answered wrong after a worker died");
        let rows = client
            .query(
                "SELECT retried_tasks, workers, mode_reason FROM sys.queries WHERE mode = 'distributed_bsp' \
                 ORDER BY query_id DESC LIMIT 1",
                &[],
            )
            .await
            .expect("sys.queries");
        let (count, workers, reason): (i64, Option<String>, String) = (rows[0].get(0), rows[0].get(1), rows[0].get(2));
        eprintln!("round {round}: retried {count}, workers {workers:?}, {reason}");
        workers_running[2] = Some(start_worker(2));
        wait_for_up(&client, 3).await;
        if count > 0 {
            retried = count;
            break;
        }
    }
    assert!(retried > 0, "no kill landed while the BSP query's tasks ran");
    client.batch_execute("SET execution_mode = auto").await.expect("set");

    // A worker killed: the next queries re-plan on the others or fail with
    // 40001, and never answer wrong.
    let q3 = tpch::query("q3");
    let expected = answers["q3"].clone();
    client.batch_execute("SET distributed = on").await.expect("set");
    let mut killed = workers_running[1].take().expect("running");
    killed.child.kill().expect("SIGKILL");
    let _ = killed.child.wait();
    for _ in 0..3 {
        match client.simple_query(q3).await {
            Ok(messages) => {
                let mut rows: Vec<String> = messages
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                            (0..row.len())
                                .map(|i| row.get(i).unwrap_or("NULL").to_string())
                                .collect::<Vec<_>>()
                                .join("|"),
                        ),
                        _ => None,
                    })
                    .collect();
                rows.sort();
                assert_eq!(rows, expected, "q3 answered wrong after a worker was killed");
            }
            Err(e) => {
                let code = e.code().map(|c| c.code().to_string());
                assert_eq!(code.as_deref(), Some("40001"), "q3 failed otherwise after a worker was killed: {e:?}");
            }
        }
    }
    wait_for_up(&client, 2).await;
    let states = workers(&client).await;
    assert!(states.iter().any(|(a, s)| a.contains(&format!(":{}", ports[1])) && s == "lost"), "{states:?}");
    let (_, mode) = explain(&client, q3).await;
    assert!(mode.contains("2 workers up"), "{mode}");
    assert_eq!(super::sorted_text_rows(&client, q3).await, expected);
}
