//! COPY FROM STDIN and COPY TO STDOUT over the Postgres protocol, with
//! tokio-postgres: text, CSV and binary formats, errors, atomicity, and
//! concurrent COPYs into one table.

use bytes::Bytes;
use futures::{SinkExt, TryStreamExt};
use streamhouse_testkit::TestServer;
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

/// Sends `data` in chunks of `chunk` bytes to `COPY …` and returns the row count.
async fn copy_in(
    pg: &tokio_postgres::Client,
    statement: &str,
    data: &str,
    chunk: usize,
) -> Result<u64, tokio_postgres::Error> {
    let sink = pg.copy_in(statement).await?;
    futures::pin_mut!(sink);
    for piece in data.as_bytes().chunks(chunk.max(1)) {
        sink.send(Bytes::copy_from_slice(piece)).await?;
    }
    sink.finish().await
}

async fn copy_out(pg: &tokio_postgres::Client, statement: &str) -> anyhow::Result<String> {
    let stream = pg.copy_out(statement).await?;
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    Ok(String::from_utf8(chunks.concat())?)
}

async fn table_text(pg: &tokio_postgres::Client, query: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for message in pg.simple_query(query).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            out.push((0..row.len()).map(|i| row.get(i).unwrap_or("NULL").to_string()).collect::<Vec<_>>().join("|"));
        }
    }
    Ok(out)
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.as_db_error().map(|d| d.code())
}

#[tokio::test]
async fn copy_text_csv_and_binary() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute(
        "CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL, score DOUBLE PRECISION, day DATE, amount NUMERIC(10,2), at TIMESTAMPTZ, tag TEXT DEFAULT 'none')",
    )
    .await?;

    // Text: tabs, \N for NULL, backslash escapes; sent in 7-byte chunks so records straddle messages.
    let text = "1\tone\t1.5\t2024-01-02\t12.34\t2024-01-02 03:04:05+00\tx\n2\ttab\\there\t\\N\t\\N\t\\N\t\\N\t\\N\n";
    assert_eq!(copy_in(&pg, "COPY t FROM STDIN", text, 7).await?, 2);

    // CSV with a header and a column list: missing columns get their DEFAULT or NULL;
    // a quoted empty string is not NULL.
    let csv = "id,name\n3,\"three, quoted \"\"q\"\"\"\n4,\"\"\n";
    assert_eq!(copy_in(&pg, "COPY t (id, name) FROM STDIN WITH (FORMAT csv, HEADER true)", csv, 5).await?, 2);

    // Binary.
    let sink = pg.copy_in("COPY t (id, name, score, day, at) FROM STDIN (FORMAT binary)").await?;
    let types = [Type::INT8, Type::TEXT, Type::FLOAT8, Type::DATE, Type::TIMESTAMPTZ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures::pin_mut!(writer);
    let day = chrono::NaiveDate::from_ymd_opt(2025, 6, 7).unwrap();
    let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    writer.as_mut().write(&[&5i64, &"five", &2.25f64, &day, &at]).await?;
    writer
        .as_mut()
        .write(&[&6i64, &"six", &None::<f64>, &None::<chrono::NaiveDate>, &None::<chrono::DateTime<chrono::Utc>>])
        .await?;
    assert_eq!(writer.finish().await?, 2);

    assert_eq!(
        table_text(&pg, "SELECT id, name, score, day, amount, date_part('epoch', at), tag FROM t ORDER BY id").await?,
        [
            "1|one|1.5|2024-01-02|12.34|1704164645|x",
            "2|tab\there|NULL|NULL|NULL|NULL|NULL",
            "3|three, quoted \"q\"|NULL|NULL|NULL|NULL|none",
            "4||NULL|NULL|NULL|NULL|none",
            "5|five|2.25|2025-06-07|NULL|1700000000|none",
            "6|six|NULL|NULL|NULL|NULL|none",
        ]
    );

    // COPY TO STDOUT: text, CSV with a header, a query, and binary.
    let mut ids: Vec<String> = copy_out(&pg, "COPY t (id) TO STDOUT").await?.lines().map(String::from).collect();
    ids.sort();
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6"]);
    assert_eq!(
        copy_out(&pg, "COPY (SELECT id, name, score FROM t ORDER BY id) TO STDOUT").await?,
        "1\tone\t1.5\n2\ttab\\there\t\\N\n3\tthree, quoted \"q\"\t\\N\n4\t\t\\N\n5\tfive\t2.25\n6\tsix\t\\N\n"
    );
    assert_eq!(
        copy_out(
            &pg,
            "COPY (SELECT id, name FROM t WHERE id IN (3, 4) ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)"
        )
        .await?,
        "id,name\n3,\"three, quoted \"\"q\"\"\"\n4,\"\"\n"
    );
    let stream = pg.copy_out("COPY (SELECT id, name FROM t ORDER BY id) TO STDOUT (FORMAT binary)").await?;
    let rows: Vec<_> = BinaryCopyOutStream::new(stream, &[Type::INT8, Type::TEXT]).try_collect().await?;
    let decoded: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(decoded.len(), 6);
    assert_eq!(decoded[4], (5, "five".to_string()));
    Ok(())
}

#[tokio::test]
async fn copy_errors_name_line_and_column_and_commit_nothing() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL); INSERT INTO t VALUES (100, 'kept')")
        .await?;
    let cases = [
        ("COPY t FROM STDIN", "1\ta\n2x\tb\n", SqlState::INVALID_TEXT_REPRESENTATION, "line 2, column id"),
        ("COPY t FROM STDIN", "1\ta\n2\n", SqlState::BAD_COPY_FILE_FORMAT, "missing data for column \"name\""),
        ("COPY t FROM STDIN", "1\ta\tb\n", SqlState::BAD_COPY_FILE_FORMAT, "extra data after last expected column"),
        ("COPY t FROM STDIN", "1\ta\n2\t\\N\n", SqlState::NOT_NULL_VIOLATION, "\"name\""),
        ("COPY t (id) FROM STDIN", "7\n", SqlState::NOT_NULL_VIOLATION, "\"name\""),
        ("COPY t FROM STDIN (FORMAT csv)", "1,\"open\n", SqlState::BAD_COPY_FILE_FORMAT, "unterminated CSV"),
        ("COPY t FROM STDIN (FORMAT binary)", "not binary", SqlState::BAD_COPY_FILE_FORMAT, "signature"),
    ];
    for (statement, data, code, needle) in cases {
        let err = copy_in(&pg, statement, data, 3).await.expect_err(statement);
        assert_eq!(sqlstate(&err), Some(&code), "{statement} {data:?}: {err:?}");
        let message = err.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
        assert!(message.contains(needle), "{statement} {data:?}: {message}");
        // Nothing of the failed COPY is visible, and the connection works.
        assert_eq!(table_text(&pg, "SELECT id, name FROM t").await?, ["100|kept"]);
    }
    let refused = [
        ("COPY nope FROM STDIN", SqlState::UNDEFINED_TABLE),
        ("COPY t (id, nope) FROM STDIN", SqlState::UNDEFINED_COLUMN),
        ("COPY t (id, id) FROM STDIN", SqlState::DUPLICATE_COLUMN),
        ("COPY t FROM '/etc/passwd'", SqlState::FEATURE_NOT_SUPPORTED),
        ("COPY t TO '/tmp/x'", SqlState::FEATURE_NOT_SUPPORTED),
        ("COPY t FROM STDIN (FORMAT xml)", SqlState::INVALID_PARAMETER_VALUE),
    ];
    for (statement, code) in refused {
        let Err(err) = pg.copy_in::<_, Bytes>(statement).await else { panic!("{statement} was accepted") };
        assert_eq!(sqlstate(&err), Some(&code), "{statement}: {err:?}");
    }

    // A client that gives up (CopyFail) commits nothing.
    {
        let sink = pg.copy_in::<_, Bytes>("COPY t FROM STDIN").await?;
        futures::pin_mut!(sink);
        sink.send(Bytes::from_static(b"1\ta\n")).await?;
        // Dropping the sink unfinished sends CopyFail.
    }
    assert_eq!(table_text(&pg, "SELECT id, name FROM t").await?, ["100|kept"]);

    // A large COPY (staged in several parts) that fails at its last line commits nothing either.
    let mut big = String::new();
    for i in 0..300_000 {
        big.push_str(&format!("{i}\tname{i}\n"));
    }
    big.push_str("oops\tlast\n");
    let err = copy_in(&pg, "COPY t FROM STDIN", &big, 64 * 1024).await.expect_err("bad last line");
    assert_eq!(sqlstate(&err), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
    assert!(err.as_db_error().unwrap().message().contains("line 300001"), "{err:?}");
    assert_eq!(table_text(&pg, "SELECT count(*) FROM t").await?, ["1"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_lose_no_rows() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY, writer INT)").await?;
    // Four writers: two big ones (staged transactions) and two small ones
    // (group commit), on disjoint key ranges, plus overlapping upserts of keys 0..100.
    let sizes = [300_000u64, 280_000, 5_000, 3_000];
    let mut tasks = Vec::new();
    for (writer, size) in sizes.into_iter().enumerate() {
        let client = server.pg().await?;
        tasks.push(tokio::spawn(async move {
            let base = writer as u64 * 1_000_000;
            let mut data = String::new();
            for i in 0..size {
                data.push_str(&format!("{}\t{writer}\n", base + i));
            }
            for i in 0..100 {
                data.push_str(&format!("{}\t{writer}\n", 10_000_000 + i));
            }
            copy_in(&client, "COPY t FROM STDIN", &data, 32 * 1024).await
        }));
    }
    let mut total = 0;
    for (task, size) in tasks.into_iter().zip(sizes) {
        // Overlapping keys are not a conflict for upserts: every COPY succeeds.
        assert_eq!(task.await??, size + 100);
        total += size;
    }
    let counted = table_text(&pg, "SELECT count(*) FROM t WHERE id < 10000000").await?;
    assert_eq!(counted, [total.to_string()]);
    assert_eq!(table_text(&pg, "SELECT count(*) FROM t WHERE id >= 10000000").await?, ["100"]);
    Ok(())
}
