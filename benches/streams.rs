//! Streams in and out, against PostgreSQL on the same machine:
//!
//! - `COPY … FROM STDIN` (text) into a keyed table: streamhouse vs PostgreSQL;
//! - Flight SQL bulk ingest (`CommandStatementIngest`, 5 narrow columns in
//!   10k-row batches, and as many TPC-H lineitem rows, 16 columns, in the
//!   generator's 64k-row batches, for the wide-table rate) vs PostgreSQL's COPY;
//! - durable small writes: 16 connections each running single-row INSERTs
//!   in a loop for 20 s (commits/s, p50/p99 latency) vs PostgreSQL with
//!   `synchronous_commit = on` (its default; fsync on); group commit is how
//!   streamhouse keeps up while syncing every commit;
//! - prepared point selects by primary key over the Postgres protocol,
//!   1 and 16 connections for 10 s each (queries/s, p50/p99 latency) vs
//!   PostgreSQL on the same rows (its primary-key B-tree index);
//! - subscriber latency (commit to a live `COPY (SUBSCRIBE …) TO STDOUT`
//!   reader) at 10k and 100k changes/s.
//!
//! Both servers keep their data in temporary directories on the same disk,
//! and both sync every commit (streamhouse's `storage.sync` default).
//!
//! `cargo run --release -p streamhouse-benches --bin streams -- [rows] [small-write seconds]`
//! PostgreSQL is started from the `initdb`/`pg_ctl` on PATH (or in
//! /usr/lib/postgresql/*/bin) in a temporary directory, as user `postgres`
//! when run as root; without it the PostgreSQL rows are skipped.

// The results table is this program's output.
#![allow(clippy::print_stdout)]

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};

const TABLE: &str = "(id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION, at BIGINT, ok BOOLEAN)";

fn text_rows(from: u64, to: u64) -> String {
    let mut out = String::with_capacity(((to - from) * 40) as usize);
    for i in from..to {
        out.push_str(&format!("{i}\tname-{}\t{}.25\t{}\t{}\n", i % 1000, i % 97, 1_700_000_000 + i, i % 2 == 0));
    }
    out
}

async fn copy_in(client: &tokio_postgres::Client, table: &str, data: &str) -> u64 {
    let sink = client.copy_in(&format!("COPY {table} FROM STDIN")).await.expect("copy starts");
    futures::pin_mut!(sink);
    for chunk in data.as_bytes().chunks(64 * 1024) {
        sink.send(Bytes::copy_from_slice(chunk)).await.expect("copy data");
    }
    sink.finish().await.expect("copy commits")
}

async fn connect(port: u16, user: &str, db: &str) -> tokio_postgres::Client {
    let url = format!("host=127.0.0.1 port={port} user={user} dbname={db}");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connects");
    tokio::spawn(connection);
    client
}

/// A throwaway PostgreSQL server.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    pg_ctl: String,
    as_postgres: bool,
}

impl Postgres {
    fn start() -> Option<Self> {
        let bin = ["/usr/local/bin", "/usr/bin"]
            .iter()
            .map(|d| d.to_string())
            .chain(
                std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| format!("{}/bin", e.path().display())),
            )
            .find(|d| std::path::Path::new(&format!("{d}/initdb")).exists())?;
        let dir = tempfile::tempdir().ok()?;
        let as_postgres = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout.starts_with(b"0"));
        if as_postgres {
            Command::new("chown").args(["-R", "postgres", &dir.path().display().to_string()]).status().ok()?;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        let data = dir.path().join("data").display().to_string();
        let run = |args: &[&str]| {
            let mut command = if as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]);
                c.args(args);
                c
            } else {
                let mut c = Command::new(args[0]);
                c.args(&args[1..]);
                c
            };
            command.output().ok().filter(|o| o.status.success())
        };
        run(&[&format!("{bin}/initdb"), "-D", &data, "-U", "postgres", "-A", "trust"])?;
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.path().display());
        run(&[&format!("{bin}/pg_ctl"), "-D", &data, "-o", &options, "-w", "-l", &format!("{data}.log"), "start"])?;
        Some(Self { dir, port, pg_ctl: format!("{bin}/pg_ctl"), as_postgres })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data").display().to_string();
        let args = [self.pg_ctl.as_str(), "-D", &data, "-m", "immediate", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output()
        } else {
            Command::new(args[0]).args(&args[1..]).output()
        };
    }
}

fn batch(schema: &Arc<Schema>, from: i64, rows: i64) -> RecordBatch {
    let ids = Int64Array::from_iter_values(from..from + rows);
    let names: StringArray = (from..from + rows).map(|i| Some(format!("name-{}", i % 1000))).collect();
    let scores = Float64Array::from_iter_values((from..from + rows).map(|i| (i % 97) as f64 + 0.25));
    let at = Int64Array::from_iter_values((from..from + rows).map(|i| 1_700_000_000 + i));
    let ok: BooleanArray = (from..from + rows).map(|i| Some(i % 2 == 0)).collect();
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![Arc::new(ids), Arc::new(names), Arc::new(scores), Arc::new(at), Arc::new(ok)],
    )
    .expect("batch")
}

fn micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Commits `rate` changes/s for `seconds` (a commit every 10 ms) while a
/// live subscriber reads; returns commit-to-receipt latencies in µs.
async fn subscriber_latency(pg_port: u16, rate: u64, seconds: u64, table: &str) -> Vec<i64> {
    let admin = connect(pg_port, "bench", "streamhouse").await;
    admin.batch_execute(&format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, sent BIGINT)")).await.expect("table");
    let reader = connect(pg_port, "bench", "streamhouse").await;
    let copy = reader
        .copy_out(format!("COPY (SUBSCRIBE TO {table} WITH (snapshot = false)) TO STDOUT").as_str())
        .await
        .expect("subscribe");
    let expected = rate * seconds;
    let collector = tokio::spawn(async move {
        futures::pin_mut!(copy);
        let mut latencies = Vec::with_capacity(expected as usize);
        let mut pending = String::new();
        while (latencies.len() as u64) < expected {
            let Some(Ok(chunk)) = copy.next().await else { break };
            let now = micros();
            pending.push_str(std::str::from_utf8(&chunk).unwrap_or_default());
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if let Some(sent) = line.split('\t').nth(1).and_then(|s| s.parse::<i64>().ok()) {
                    latencies.push(now - sent);
                }
            }
        }
        latencies
    });
    let writer = connect(pg_port, "bench", "streamhouse").await;
    let per_commit = (rate / 100).max(1);
    let start = Instant::now();
    let mut next_id = 0u64;
    for tick in 0..seconds * 100 {
        let due = start + Duration::from_millis(tick * 10);
        tokio::time::sleep_until(due.into()).await;
        let sent = micros();
        let mut data = String::new();
        for _ in 0..per_commit {
            data.push_str(&format!("{next_id}\t{sent}\n"));
            next_id += 1;
        }
        copy_in(&writer, table, &data).await;
    }
    let mut latencies =
        tokio::time::timeout(Duration::from_secs(30), collector).await.expect("reader keeps up").expect("reader");
    latencies.sort_unstable();
    latencies
}

/// `connections` clients each INSERT one row at a time into `table` for
/// `seconds`; returns the commit latencies in µs, sorted.
async fn small_writes(port: u16, user: &str, db: &str, table: &str, connections: i64, seconds: u64) -> Vec<i64> {
    let admin = connect(port, user, db).await;
    admin.batch_execute(&format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, v TEXT)")).await.expect("table");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut writers = Vec::new();
    for c in 0..connections {
        let client = connect(port, user, db).await;
        let table = table.to_string();
        writers.push(tokio::spawn(async move {
            let insert = client.prepare(&format!("INSERT INTO {table} VALUES ($1, $2)")).await.expect("prepare");
            let mut latencies = Vec::new();
            let mut i = 0i64;
            while Instant::now() < deadline {
                let started = Instant::now();
                client.execute(&insert, &[&(c * 100_000_000 + i), &"some value"]).await.expect("insert");
                latencies.push(started.elapsed().as_micros() as i64);
                i += 1;
            }
            latencies
        }));
    }
    gather(writers).await
}

/// The latencies the clients measured, together and sorted.
async fn gather(clients: Vec<tokio::task::JoinHandle<Vec<i64>>>) -> Vec<i64> {
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.expect("client"));
    }
    all.sort_unstable();
    all
}

/// `connections` clients each run a prepared `SELECT … WHERE id = $1` of a
/// random existing key of `table` (keys `0..rows`) for `seconds`; returns
/// the latencies in µs, sorted. Every answer must be the one row asked for.
async fn point_selects(
    port: u16,
    user: &str,
    db: &str,
    table: &str,
    rows: u64,
    connections: u64,
    seconds: u64,
) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut readers = Vec::new();
    for c in 0..connections {
        let client = connect(port, user, db).await;
        let table = table.to_string();
        readers.push(tokio::spawn(async move {
            let select =
                client.prepare(&format!("SELECT id, name, score FROM {table} WHERE id = $1")).await.expect("prepare");
            let mut latencies = Vec::new();
            let mut key = c.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            while Instant::now() < deadline {
                key ^= key << 13;
                key ^= key >> 7;
                key ^= key << 17;
                let id = (key % rows) as i64;
                let started = Instant::now();
                let row = client.query_one(&select, &[&id]).await.expect("point select");
                latencies.push(started.elapsed().as_micros() as i64);
                assert_eq!(row.get::<_, i64>(0), id);
            }
            latencies
        }));
    }
    gather(readers).await
}

/// Prints a line of operations/s and p50/p99 latency (ms) for `latencies`
/// (µs, sorted) measured over `seconds`, with the ratio to `baseline`'s rate
/// (`None`: this is the baseline; `Some(None)`: there is none); returns the rate.
fn latency_line(name: &str, latencies: &[i64], seconds: u64, baseline: Option<Option<f64>>) -> f64 {
    let rate = latencies.len() as f64 / seconds as f64;
    let ratio = match baseline {
        None => "1.00x".to_string(),
        Some(None) => "n/a".to_string(),
        Some(Some(base)) => format!("{:.2}x", rate / base),
    };
    println!(
        "{name:<48} {rate:>12.0} {:>9.3} {:>9.3} {ratio:>10}",
        percentile(latencies, 0.5),
        percentile(latencies, 0.99)
    );
    rate
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

/// The narrow table's rows for Flight ingest, in 10k-row batches.
fn narrow_batches(rows: u64) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("at", DataType::Int64, true),
        Field::new("ok", DataType::Boolean, true),
    ]));
    (0..rows as i64).step_by(10_000).map(|from| batch(&schema, from, 10_000.min(rows as i64 - from))).collect()
}

/// Creates `table` keyed by `id` from the ingested batches' schema.
fn narrow_command(table: &str) -> CommandStatementIngest {
    CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: TableNotExistOption::Create as i32,
            if_exists: TableExistsOption::Fail as i32,
        }),
        table: table.into(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: HashMap::from([("primary-key".to_string(), "id".to_string())]),
    }
}

/// TPC-H lineitem rows (16 columns) in the generator's own batches: slices
/// of one big batch would each carry all of its string views' buffers over IPC.
fn wide_batches(rows: u64) -> Vec<RecordBatch> {
    streamhouse_testkit::tpch::generator("lineitem", rows as f64 / 6_001_215.0).map(|b| b.expect("generate")).collect()
}

/// Creates `table` keyed by (l_orderkey, l_linenumber).
fn wide_command(table: &str) -> CommandStatementIngest {
    CommandStatementIngest {
        options: HashMap::from([("primary-key".to_string(), "l_orderkey,l_linenumber".to_string())]),
        ..narrow_command(table)
    }
}

/// Ingests `batches` with `command`; rows per second.
async fn ingest_rate(
    flight: &mut FlightSqlServiceClient<tonic::transport::Channel>,
    command: CommandStatementIngest,
    batches: Vec<RecordBatch>,
) -> f64 {
    let started = Instant::now();
    let ingested =
        flight.execute_ingest(command, futures::stream::iter(batches.into_iter().map(Ok))).await.expect("ingest");
    ingested as f64 / started.elapsed().as_secs_f64()
}

/// `STREAMS_ONLY=ingest`: Flight ingest only, narrow and wide tables in
/// turn, three times each into new tables (for profiling and a steadier
/// ratio).
async fn ingest_only(server: &streamhouse::Server, rows: u64) {
    let mut flight = common::flight_client(server).await;
    let which = std::env::var("STREAMS_TABLES").unwrap_or_else(|_| "narrow,wide".into());
    // Arrow bytes per row of what is sent (a wide row carries several times a narrow one's).
    let row_bytes = |batches: &[RecordBatch]| {
        batches.iter().map(RecordBatch::get_array_memory_size).sum::<usize>() as f64 / rows as f64
    };
    let (mut narrow, mut wide) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for is_wide in [false, true] {
            let (name, label) = if is_wide {
                ("wide", "wide (lineitem, 16 columns, 64k-row batches)")
            } else {
                ("narrow", "narrow (5 columns, 10k-row batches)")
            };
            if !which.contains(name) {
                continue;
            }
            let table = format!("{name}{round}");
            let (batches, command) = if is_wide {
                (wide_batches(rows), wide_command(&table))
            } else {
                (narrow_batches(rows), narrow_command(&table))
            };
            let bytes = row_bytes(&batches);
            let rate = ingest_rate(&mut flight, command, batches).await;
            println!("round {round}: {label} {rate:>12.0} rows/s, {:>6.1} MB/s ({bytes:.0} B/row)", rate * bytes / 1e6);
            if is_wide { &mut wide } else { &mut narrow }.push((rate, bytes));
        }
    }
    let best = |rates: &[(f64, f64)]| rates.iter().copied().fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
    if !narrow.is_empty() && !wide.is_empty() {
        let ((n, nb), (w, wb)) = (best(&narrow), best(&wide));
        println!(
            "best: narrow {n:.0}, wide {w:.0} rows/s: narrow / wide {:.2}x in rows/s, {:.2}x in bytes/s",
            n / w,
            (n * nb) / (w * wb)
        );
    }
    println!("peak RSS {} MiB (this process: server and clients)", common::peak_rss_mib());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rows: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let small_seconds: u64 = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(20);
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut config = streamhouse::config::Config::default();
    config.server.pg_port = 0;
    config.server.flight_port = 0;
    config.storage.data_dir = data_dir.path().join("data");
    // STREAMHOUSE_BENCH_SYNC=false measures what syncing costs (unsafe; never the default).
    config.storage.sync = std::env::var("STREAMHOUSE_BENCH_SYNC").map_or(true, |v| v != "false");
    let server = streamhouse::start(&config).await.expect("streamhouse starts");
    let sh_port = server.pg_addr().port();
    if std::env::var("STREAMS_ONLY").is_ok_and(|v| v == "ingest") {
        ingest_only(&server, rows).await;
        server.shutdown().await;
        return;
    }
    let text = text_rows(0, rows);
    println!("{rows} rows, 5 columns (bigint key, text, double, bigint, boolean), keyed table, one connection");

    // COPY FROM STDIN.
    let sh = connect(sh_port, "bench", "streamhouse").await;
    sh.batch_execute(&format!("CREATE TABLE copied {TABLE}")).await.expect("table");
    let started = Instant::now();
    assert_eq!(copy_in(&sh, "copied", &text).await, rows);
    let sh_copy = rows as f64 / started.elapsed().as_secs_f64();

    let postgres = Postgres::start();
    let pg_copy = match &postgres {
        Some(pg) => {
            let client = connect(pg.port, "postgres", "postgres").await;
            client.batch_execute(&format!("CREATE TABLE copied {TABLE}")).await.expect("pg table");
            let started = Instant::now();
            assert_eq!(copy_in(&client, "copied", &text).await, rows);
            Some(rows as f64 / started.elapsed().as_secs_f64())
        }
        None => None,
    };

    // Flight SQL ingest, 10k-row batches.
    let mut flight = common::flight_client(&server).await;
    let batches = narrow_batches(rows);
    let command = narrow_command("ingested");
    let flight_rate = ingest_rate(&mut flight, command, batches).await;

    // The same through a wide table: TPC-H lineitem (16 columns, keyed by
    // (l_orderkey, l_linenumber)), as many rows, in the generator's batches.
    // The generator's own batches: slices of one big batch would each carry
    // all of its string views' buffers over IPC.
    let wide = wide_batches(rows);
    let wide_rate = ingest_rate(&mut flight, wide_command("ingested_wide"), wide).await;

    println!("{:<48} {:>12} {:>12}", "path", "rows/s", "vs PG COPY");
    let ratio = |r: f64| pg_copy.map_or("n/a".to_string(), |pg| format!("{:.2}x", r / pg));
    if let Some(pg) = pg_copy {
        println!("{:<48} {:>12.0} {:>12}", "PostgreSQL 15 COPY FROM STDIN (baseline)", pg, "1.00x");
    } else {
        println!("PostgreSQL not found: no baseline");
    }
    println!("{:<48} {:>12.0} {:>12}", "streamhouse COPY FROM STDIN (text)", sh_copy, ratio(sh_copy));
    println!(
        "{:<48} {:>12.0} {:>12}",
        "streamhouse Flight SQL ingest (10k-row batches)",
        flight_rate,
        ratio(flight_rate)
    );
    println!(
        "{:<48} {:>12.0} {:>12}   narrow / wide rows/s: {:.2}x",
        "  wide table (TPC-H lineitem, 16 cols, 64k rows)",
        wide_rate,
        ratio(wide_rate),
        flight_rate / wide_rate
    );

    println!();
    println!("durable small writes: 16 connections, single-row INSERT (prepared) in a loop, {small_seconds} s");
    println!("{:<48} {:>12} {:>9} {:>9} {:>10}", "server", "commits/s", "p50 ms", "p99 ms", "vs PG");
    let pg_small = match &postgres {
        Some(pg) => {
            let latencies = small_writes(pg.port, "postgres", "postgres", "small", 16, small_seconds).await;
            Some(latency_line("PostgreSQL 15, synchronous_commit = on (baseline)", &latencies, small_seconds, None))
        }
        None => None,
    };
    let latencies = small_writes(sh_port, "bench", "streamhouse", "small", 16, small_seconds).await;
    let name = if config.storage.sync {
        "streamhouse, storage.sync = true (group commit)"
    } else {
        "streamhouse, storage.sync = false (UNSAFE)"
    };
    latency_line(name, &latencies, small_seconds, Some(pg_small));
    println!();

    println!("prepared point select by primary key over {rows} rows, 10 s per line");
    println!("{:<48} {:>12} {:>9} {:>9} {:>10}", "server, connections", "queries/s", "p50 ms", "p99 ms", "vs PG");
    for connections in [1, 16] {
        let pg_rate = match &postgres {
            Some(pg) => {
                let latencies = point_selects(pg.port, "postgres", "postgres", "copied", rows, connections, 10).await;
                Some(latency_line(&format!("PostgreSQL 15, {connections} (baseline)"), &latencies, 10, None))
            }
            None => None,
        };
        let latencies = point_selects(sh_port, "bench", "streamhouse", "copied", rows, connections, 10).await;
        latency_line(&format!("streamhouse, {connections}"), &latencies, 10, Some(pg_rate));
    }
    println!();

    for (rate, table) in [(10_000, "lat10k"), (100_000, "lat100k")] {
        let latencies = subscriber_latency(sh_port, rate, 5, table).await;
        println!(
            "subscriber latency at {rate} changes/s: {} changes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0)
        );
    }
    println!("peak RSS {} MiB (this process: server and clients)", common::peak_rss_mib());
    drop(postgres);
    server.shutdown().await;
}
