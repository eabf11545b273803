//! Runs every `sql-tests/**/*.slt` file in-process (engine session) once per
//! execution mode (`auto`, `mpp`, `bsp`: the server default, which files may
//! override with `SET execution_mode`), and once over the Postgres protocol
//! against a real server on a free port (in `auto`).
//!
//! `cargo test --test sqllogictests -- --complete` rewrites the expected
//! output of every file from the in-process run; read the diff before
//! committing it. Other arguments filter tests as usual (`-- ddl`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::memory::InMemory;
use streamhouse_engine::warehouse::DynamicCatalog;

use libtest_mimic::{Arguments, Failed, Trial};
use sqllogictest::{Runner, default_column_validator, default_normalizer, default_validator, strict_column_validator};
use streamhouse_engine::{Engine, EngineConfig, ExecutionMode};
use streamhouse_testkit::TestServer;
use streamhouse_testkit::slt::{InProcess, Pg, SltError};

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// An engine over Dynamic Tables in an in-memory object store, like the
/// server's but without a data directory.
async fn engine(mode: ExecutionMode) -> Engine {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let catalog = DynamicCatalog::open(store).await.expect("catalog");
    Engine::with_catalog(EngineConfig { target_partitions: 2, mode, ..EngineConfig::default() }, Arc::new(catalog))
        .expect("engine")
}

fn run_in_process(path: &Path, mode: ExecutionMode, complete: bool) -> Result<(), Failed> {
    runtime().block_on(async {
        let engine = engine(mode).await;
        let mut runner = Runner::new(move || {
            let engine = engine.clone();
            async move { Ok::<_, SltError>(InProcess::new(&engine)) }
        });
        if complete {
            runner
                .update_test_file(path, " ", default_validator, default_normalizer, strict_column_validator)
                .await
                .map_err(|e| Failed::from(e.to_string()))
        } else {
            runner.with_column_validator(strict_column_validator);
            runner.run_file_async(path).await.map_err(|e| Failed::from(e.display(true).to_string()))
        }
    })
}

fn run_over_pgwire(path: &Path) -> Result<(), Failed> {
    runtime().block_on(async {
        let server = TestServer::start().await.map_err(|e| Failed::from(format!("server: {e:#}")))?;
        let url = server.pg_url();
        let mut runner = Runner::new(move || {
            let url = url.clone();
            async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| SltError(format!("connect: {e}")))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok::<_, SltError>(Pg::new(client))
            }
        });
        // Column types come from the simple query protocol as text; the in-process run checks them.
        runner.with_column_validator(default_column_validator);
        let result = runner.run_file_async(path).await.map_err(|e| Failed::from(e.display(true).to_string()));
        server.stop().await;
        result
    })
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let complete = args.iter().any(|a| a == "--complete");
    args.retain(|a| a != "--complete");
    let arguments = Arguments::from_iter(args);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql-tests");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    assert!(!files.is_empty(), "no .slt files under {}", root.display());

    let mut trials = Vec::new();
    for path in files {
        let name = path.strip_prefix(&root).unwrap_or(&path).display().to_string();
        let p = path.clone();
        if complete {
            trials
                .push(Trial::test(format!("inprocess::{name}"), move || run_in_process(&p, ExecutionMode::Auto, true)));
            continue;
        }
        for mode in [ExecutionMode::Auto, ExecutionMode::Mpp, ExecutionMode::Bsp] {
            let p = p.clone();
            let label = mode.as_str();
            trials.push(Trial::test(format!("inprocess[{label}]::{name}"), move || run_in_process(&p, mode, false)));
        }
        {
            trials.push(Trial::test(format!("pgwire::{name}"), move || run_over_pgwire(&path)));
        }
    }
    libtest_mimic::run(&arguments, trials).exit();
}
