//! SUBSCRIBE over both protocols: a subscriber that replays the changes it
//! receives on an empty map ends with exactly the table's content; named
//! consumers, stopped by a cancel (psql's Ctrl-C) and disconnected, resume
//! after the disconnect and after a server restart with no gap and no repeat.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use streamhouse_engine::datafusion::arrow::array::{AsArray, RecordBatch};
use streamhouse_engine::datafusion::arrow::compute::cast;
use streamhouse_engine::datafusion::arrow::datatypes::{DataType, Int64Type};
use streamhouse_testkit::TestServer;

/// Content rebuilt from changelog rows: `+I`/`+U` add a key that must be
/// absent, `-U`/`-D` remove one that must hold exactly that value.
#[derive(Debug, Default)]
struct Replay {
    rows: BTreeMap<i64, String>,
    last_snapshot: i64,
}

impl Replay {
    fn apply(&mut self, id: i64, value: &str, kind: &str, snapshot: i64) {
        assert!(snapshot >= self.last_snapshot, "snapshot {snapshot} after {}", self.last_snapshot);
        self.last_snapshot = snapshot;
        match kind {
            "+I" | "+U" => assert!(self.rows.insert(id, value.to_string()).is_none(), "{kind} of present key {id}"),
            "-U" | "-D" => assert_eq!(self.rows.remove(&id).as_deref(), Some(value), "{kind} of key {id}"),
            other => panic!("unknown kind {other}"),
        }
    }

    /// Applies COPY text lines `id \t v \t kind \t snapshot`.
    fn apply_lines(&mut self, text: &str) {
        for line in text.lines() {
            let cells: Vec<&str> = line.split('\t').collect();
            let [id, v, kind, snapshot] = cells.as_slice() else { panic!("line {line:?}") };
            self.apply(id.parse().unwrap(), v, kind, snapshot.parse().unwrap());
        }
    }
}

async fn content(pg: &tokio_postgres::Client) -> anyhow::Result<BTreeMap<i64, String>> {
    Ok(pg
        .query("SELECT id, v FROM t", &[])
        .await?
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
        .collect())
}

/// Commits a one-row marker and returns its snapshot: a reader that has
/// seen it has seen every change before it, whole.
async fn latest_snapshot(pg: &tokio_postgres::Client) -> anyhow::Result<i64> {
    pg.execute("INSERT INTO t VALUES (-1, 'marker') ON CONFLICT DO NOTHING", &[]).await?;
    pg.execute("DELETE FROM t WHERE id = -1", &[]).await?;
    pg.execute("INSERT INTO t VALUES (-1, 'marker')", &[]).await?;
    // The last commit with changes (a compaction after it has none to send).
    let last = "SELECT max(snapshot_id) FROM \"t$snapshots\" WHERE changelog_rows > 0";
    Ok(pg.query_one(last, &[]).await?.get::<_, Option<i64>>(0).unwrap_or(0))
}

/// Inserts, updates and deletes in `rounds` statements.
async fn churn(pg: &tokio_postgres::Client, from: i64, rounds: i64) -> anyhow::Result<()> {
    for i in from..from + rounds {
        match i % 4 {
            0 => {
                pg.execute("INSERT INTO t VALUES ($1, $2), ($3, 'pair')", &[&i, &format!("v{i}"), &(i + 1000)]).await?
            }
            1 => pg.execute("UPDATE t SET v = v || '+' WHERE id % 3 = $1", &[&(i % 3)]).await?,
            2 => pg.execute("DELETE FROM t WHERE id = $1", &[&(i - 2)]).await?,
            _ => pg.execute("INSERT INTO t VALUES ($1, 'upserted')", &[&(i - 3)]).await?,
        };
    }
    Ok(())
}

/// Reads a COPY (SUBSCRIBE …) stream until it has seen snapshot `until`.
async fn read_until(
    stream: &mut std::pin::Pin<Box<tokio_postgres::CopyOutStream>>,
    replay: &mut Replay,
    until: i64,
) -> anyhow::Result<()> {
    let mut pending = String::new();
    while replay.last_snapshot < until {
        let chunk: Bytes = tokio::time::timeout(std::time::Duration::from_secs(30), stream.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!("no change for 30 s after snapshot {} (waiting for {until})", replay.last_snapshot)
            })?
            .ok_or_else(|| anyhow::anyhow!("subscription ended"))??;
        pending.push_str(std::str::from_utf8(&chunk)?);
        if let Some(end) = pending.rfind('\n') {
            let complete: String = pending.drain(..=end).collect();
            replay.apply_lines(&complete);
        }
    }
    assert!(pending.is_empty(), "partial line {pending:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_replay_to_the_final_content() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute(
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t VALUES (1, 'one'), (2, 'two')",
    )
    .await?;

    // COPY (SUBSCRIBE …) TO STDOUT, as psql runs it.
    let copy_client = server.pg().await?;
    let mut copy = Box::pin(copy_client.copy_out("COPY (SUBSCRIBE TO t) TO STDOUT").await?);
    // Rows of a plain SUBSCRIBE query arrive as they are committed (extended protocol).
    let rows_client = server.pg().await?;
    let rows = rows_client.query_raw("SUBSCRIBE TO t", std::iter::empty::<i64>()).await?;
    let mut rows = Box::pin(rows);
    // And over Flight SQL: a DoGet that never ends.
    let mut flight = server.flight().await?;
    let info = flight.execute("SUBSCRIBE TO t".into(), None).await?;
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut batches = flight.do_get(ticket).await?;

    churn(&pg, 10, 40).await?;
    let last = latest_snapshot(&pg).await?;
    let expected = content(&pg).await?;

    let mut from_copy = Replay::default();
    read_until(&mut copy, &mut from_copy, last).await?;
    assert_eq!(from_copy.rows, expected);

    let mut from_rows = Replay::default();
    while from_rows.last_snapshot < last {
        let row = tokio::time::timeout(std::time::Duration::from_secs(30), rows.try_next()).await??.expect("row");
        from_rows.apply(row.get(0), row.get(1), row.get(2), row.get(3));
    }
    assert_eq!(from_rows.rows, expected);

    let mut from_flight = Replay::default();
    while from_flight.last_snapshot < last {
        let batch: RecordBatch =
            tokio::time::timeout(std::time::Duration::from_secs(30), batches.try_next()).await??.expect("batch");
        let text = |c: usize| cast(batch.column(c), &DataType::Utf8).unwrap();
        let (values, kinds) = (text(1), text(2));
        let (values, kinds) = (values.as_string::<i32>(), kinds.as_string::<i32>());
        let (ids, snapshots) =
            (batch.column(0).as_primitive::<Int64Type>(), batch.column(3).as_primitive::<Int64Type>());
        for i in 0..batch.num_rows() {
            from_flight.apply(ids.value(i), values.value(i), kinds.value(i), snapshots.value(i));
        }
    }
    assert_eq!(from_flight.rows, expected);

    // AS OF SNAPSHOT with snapshot = false: only the changes after it,
    // which replayed on the content at that snapshot give the final content.
    let mut later = Box::pin(
        server
            .pg()
            .await?
            .copy_out(format!("COPY (SUBSCRIBE TO t AS OF SNAPSHOT {last} WITH (snapshot = false)) TO STDOUT").as_str())
            .await?,
    );
    pg.execute("INSERT INTO t VALUES (5000, 'late')", &[]).await?;
    let marker = latest_snapshot(&pg).await?;
    let mut tail = Replay { rows: expected.clone(), last_snapshot: last };
    read_until(&mut later, &mut tail, marker).await?;
    assert_eq!(tail.rows, content(&pg).await?);

    // Errors.
    let err = pg.simple_query("SUBSCRIBE TO nope").await.expect_err("unknown table");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE), "{err:?}");
    let err = pg.simple_query("SUBSCRIBE TO t WITH (colour = 'red')").await.expect_err("bad option");
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("colour")), "{err:?}");
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_consumers_resume_without_gaps_or_repeats() -> anyhow::Result<()> {
    let mut server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t VALUES (1, 'one')")
        .await?;
    let statement = "COPY (SUBSCRIBE TO t WITH (consumer = 'etl')) TO STDOUT";
    let mut replay = Replay::default();

    // A first session reads some changes and disconnects.
    let reader = server.pg().await?;
    let mut copy = Box::pin(reader.copy_out(statement).await?);
    churn(&pg, 10, 12).await?;
    let first = latest_snapshot(&pg).await?;
    read_until(&mut copy, &mut replay, first).await?;
    // Stop it as psql's Ctrl-C does (a cancel request), then disconnect.
    wait_for_consumer(&pg, first + 1).await?;
    stop(&reader, &mut copy).await?;
    drop(reader);

    // Changes while no one reads; then resume by name.
    churn(&pg, 100, 12).await?;
    let second = latest_snapshot(&pg).await?;
    let reader = server.pg().await?;
    let mut copy = Box::pin(reader.copy_out(statement).await?);
    read_until(&mut copy, &mut replay, second).await?;
    wait_for_consumer(&pg, second + 1).await?;
    stop(&reader, &mut copy).await?;
    drop(reader);
    assert_eq!(replay.rows, content(&pg).await?);

    // More changes, a server restart, and resume again.
    churn(&pg, 200, 8).await?;
    server.restart().await?;
    let pg = server.pg().await?;
    let third = latest_snapshot(&pg).await?;
    let consumers = pg.query_one("SELECT count(*) FROM \"t$consumers\"", &[]).await?.get::<_, i64>(0);
    assert_eq!(consumers, 1);
    let reader = server.pg().await?;
    let mut copy = Box::pin(reader.copy_out(statement).await?);
    read_until(&mut copy, &mut replay, third).await?;
    assert_eq!(replay.rows, content(&pg).await?);
    server.stop().await;
    Ok(())
}

/// Waits until consumer `etl` needs snapshot `next` (its progress is
/// recorded right after a snapshot is sent).
async fn wait_for_consumer(pg: &tokio_postgres::Client, next: i64) -> anyhow::Result<()> {
    for _ in 0..500 {
        let row = pg.query_opt("SELECT next_snapshot_id FROM \"t$consumers\" WHERE consumer_id = 'etl'", &[]).await?;
        if row.is_some_and(|r| r.get::<_, i64>(0) >= next) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    anyhow::bail!("consumer etl never reached snapshot {next}")
}

/// Cancels a running COPY (SUBSCRIBE …) and reads it to its end: the
/// cancellation error must come after every row already sent, none of which
/// may be a change the reader has not accounted for.
async fn stop(
    client: &tokio_postgres::Client,
    copy: &mut std::pin::Pin<Box<tokio_postgres::CopyOutStream>>,
) -> anyhow::Result<()> {
    client.cancel_token().cancel_query(tokio_postgres::NoTls).await?;
    match tokio::time::timeout(std::time::Duration::from_secs(30), copy.next()).await? {
        Some(Ok(chunk)) => anyhow::bail!("unexpected change after the last snapshot: {chunk:?}"),
        Some(Err(e)) => {
            assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{e:?}");
            Ok(())
        }
        None => anyhow::bail!("the subscription ended without the cancellation error"),
    }
}

/// Rows of a simple-protocol statement, cells joined with `|`.
async fn rows_of(pg: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for message in pg.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            out.push((0..row.len()).map(|i| row.get(i).unwrap_or("NULL")).collect::<Vec<_>>().join("|"));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_fetch_from_subscriptions_and_queries() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT NOT NULL); INSERT INTO t VALUES (1, 'one')")
        .await?;
    let reader = server.pg().await?;
    reader.batch_execute("BEGIN; DECLARE c CURSOR FOR SUBSCRIBE TO t").await?;
    // The snapshot first; then a FETCH waits for the next change.
    let first = rows_of(&reader, "FETCH ALL c WITH (timeout = '1s')").await?;
    let snapshot: i64 = first[0].rsplit('|').next().unwrap().parse()?;
    assert_eq!(first, [format!("1|one|+I|{snapshot}")]);
    let writer = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        pg.execute("UPDATE t SET v = 'uno' WHERE id = 1", &[]).await
    };
    let (fetched, written) = tokio::join!(rows_of(&reader, "FETCH 10 c"), writer);
    written?;
    let fetched = fetched?;
    assert_eq!(fetched.len(), 2, "{fetched:?}");
    assert!(fetched[0].starts_with("1|one|-U|") && fetched[1].starts_with("1|uno|+U|"), "{fetched:?}");
    // Nothing new: a timeout returns no rows.
    assert!(rows_of(&reader, "FETCH 10 c WITH (timeout = '50ms')").await?.is_empty());
    reader.batch_execute("CLOSE c; COMMIT").await?;

    // A cursor over a query.
    reader.batch_execute("BEGIN; DECLARE q CURSOR FOR SELECT * FROM generate_series(1, 10)").await?;
    assert_eq!(rows_of(&reader, "FETCH 3 FROM q").await?, ["1", "2", "3"]);
    assert_eq!(rows_of(&reader, "FETCH NEXT q").await?, ["4"]);
    assert_eq!(rows_of(&reader, "FETCH ALL q").await?.len(), 6);
    assert!(rows_of(&reader, "FETCH ALL q").await?.is_empty());
    reader.batch_execute("COMMIT").await?;

    // Errors.
    let err = reader.simple_query("DECLARE x CURSOR FOR SELECT 1").await.expect_err("outside a block");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::NO_ACTIVE_SQL_TRANSACTION), "{err:?}");
    let err = reader.simple_query("FETCH 1 nope").await.expect_err("unknown cursor");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INVALID_CURSOR_NAME), "{err:?}");
    // COMMIT closed q.
    let err = reader.simple_query("FETCH 1 q").await.expect_err("closed by COMMIT");
    assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INVALID_CURSOR_NAME), "{err:?}");
    server.stop().await;
    Ok(())
}

/// A subscription to a continuous view over a view: the view's changes
/// arrive as -U/+U pairs (its key is the group key), without hidden columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_a_view_over_a_view_see_update_pairs() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute(
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, amount INT);
         INSERT INTO orders VALUES (1, 'ada', 10), (2, 'ada', 5), (3, 'bob', 7);
         CREATE MATERIALIZED VIEW per_customer AS SELECT customer, sum(amount) AS total FROM orders GROUP BY customer;
         CREATE MATERIALIZED VIEW big AS SELECT customer, total FROM per_customer WHERE total > 6",
    )
    .await?;
    let reader = server.pg().await?;
    reader.batch_execute("BEGIN; DECLARE c CURSOR FOR SUBSCRIBE TO big").await?;
    let mut first = rows_of(&reader, "FETCH ALL c WITH (timeout = '1s')").await?;
    first.sort();
    let snapshot: i64 = first[0].rsplit('|').next().unwrap().parse()?;
    assert_eq!(first, [format!("ada|15|+I|{snapshot}"), format!("bob|7|+I|{snapshot}")]);
    let writer = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        pg.execute("UPDATE orders SET amount = 1 WHERE id = 3", &[]).await?;
        pg.execute("INSERT INTO orders VALUES (4, 'ada', 100)", &[]).await
    };
    let (fetched, written) = tokio::join!(rows_of(&reader, "FETCH 10 c WITH (timeout = '2s')"), writer);
    written?;
    let mut fetched = fetched?;
    // bob drops below the HAVING-like filter: -D; ada's total changes: -U/+U.
    while fetched.len() < 3 {
        let more = rows_of(&reader, "FETCH 10 c WITH (timeout = '2s')").await?;
        anyhow::ensure!(!more.is_empty(), "no more changes after {fetched:?}");
        fetched.extend(more);
    }
    let changes: Vec<String> = fetched.iter().map(|r| r.rsplit_once('|').unwrap().0.to_string()).collect();
    assert_eq!(changes, ["bob|7|-D", "ada|15|-U", "ada|115|+U"], "{fetched:?}");
    reader.batch_execute("CLOSE c; COMMIT").await?;
    Ok(())
}
