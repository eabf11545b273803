//! What the TPC-H benchmarks share: loading the tables, sessions, running
//! a query, and comparing answers.

use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use object_store::ObjectStore;
use streamhouse_engine::{Engine, Error, Output, Session, SessionInfo};

/// Generates and stores the eight tables at `scale`, printing how long each took.
pub async fn load_all(store: &Arc<dyn ObjectStore>, scale: f64) {
    let started = Instant::now();
    let options = streamhouse_storage::TableOptions::default();
    for (name, loaded) in streamhouse_testkit::tpch::load_all(store, scale, &options).await {
        println!(
            "{name:<8} {:>10} rows: generated in {:.1}s, written in {:.1}s, compacted in {:.1}s",
            loaded.rows,
            loaded.generate.as_secs_f64(),
            loaded.write.as_secs_f64(),
            loaded.compact.as_secs_f64()
        );
    }
    println!("loaded all tables in {:.1}s", started.elapsed().as_secs_f64());
}

/// A new session with `settings` applied (`SET name = 'value'`, in order).
pub async fn open_session(engine: &Engine, settings: &[(&str, &str)]) -> Session {
    let mut session = engine.new_session(SessionInfo::default());
    for (name, value) in settings {
        let sql = format!("SET {name} = '{value}'");
        let (_, error) = session.run(&sql).await;
        assert!(error.is_none(), "{sql}: {error:?}");
    }
    session
}

/// Runs one query and reads all its rows.
pub async fn query(session: &mut Session, sql: &str) -> Result<Vec<RecordBatch>, Error> {
    let (mut outputs, error) = session.run(sql).await;
    if let Some(error) = error {
        return Err(error);
    }
    let Some(Output::Rows(mut stream)) = outputs.pop() else {
        return Err(Error::internal(format!("the statement returned no rows: {sql}")));
    };
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch.map_err(Error::from)?);
    }
    Ok(batches)
}

/// An answer, as compared across modes: its row count and a hash of its
/// rows as text, sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub rows: usize,
    pub hash: u64,
}

pub fn fingerprint(batches: &[RecordBatch]) -> Fingerprint {
    let mut rows: Vec<String> = batches.iter().flat_map(rows_as_text).collect();
    rows.sort_unstable();
    let mut hasher = DefaultHasher::new();
    rows.hash(&mut hasher);
    Fingerprint { rows: rows.len(), hash: hasher.finish() }
}

/// Each row of `batch` as `value|value|…`, floats rounded to 2 decimals
/// (their last digits depend on the order partial sums are combined in).
pub fn rows_as_text(batch: &RecordBatch) -> Vec<String> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| if c.data_type().is_floating() { cast(c, &DataType::Float64).expect("float") } else { Arc::clone(c) })
        .collect();
    let options = FormatOptions::default().with_null("NULL");
    let formatters: Vec<ArrayFormatter> =
        columns.iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter")).collect();
    (0..batch.num_rows())
        .map(|row| {
            let mut line = String::new();
            for (column, formatter) in columns.iter().zip(&formatters) {
                let _ = match column.as_primitive_opt::<Float64Type>() {
                    // `+ 0.0` turns -0.00 into 0.00.
                    Some(floats) if floats.is_valid(row) => {
                        write!(line, "{:.2}|", (floats.value(row) * 100.0).round() / 100.0 + 0.0)
                    }
                    _ => write!(line, "{}|", formatter.value(row)),
                };
            }
            line
        })
        .collect()
}

/// The scale factor (default 1) and runs per query (default 3) the
/// command line gives, and the machine's cores.
pub fn scale_runs_cores(args: &mut impl Iterator<Item = String>) -> (f64, usize, usize) {
    let scale: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (scale, runs, cores)
}
