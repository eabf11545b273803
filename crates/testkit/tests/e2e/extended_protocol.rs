//! The extended query protocol is truthful: for every kind of statement,
//! Describe (of the statement and of the portal) answers exactly the
//! RowDescription or NoData that Execute then honours — which is what
//! drivers that prepare statements (psycopg past its threshold, asyncpg,
//! pgjdbc, tokio-postgres) rely on to decode rows. Checked message by
//! message, then with the real drivers on cursors and subscriptions.

use streamhouse_testkit::TestServer;
use streamhouse_testkit::wire::{
    RawSession, bind, close, data_row_columns, describe, error_field, execute, parse, query, row_description, sync,
};

/// What a Describe answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Description {
    Rows(Vec<String>),
    NoData,
}

/// One statement through Parse, Describe statement, Bind, Describe portal,
/// Execute, Close, Sync.
#[derive(Debug)]
struct Exchange {
    statement: Option<Description>,
    portal: Option<Description>,
    /// Columns of each DataRow.
    rows: Vec<usize>,
    /// The CommandComplete tag.
    tag: Option<String>,
    /// The SQLSTATE of an ErrorResponse.
    error: Option<String>,
    /// Whether a RowDescription came after Execute (never in this protocol).
    described_again: bool,
}

async fn exchange(session: &mut RawSession, sql: &str, params: &[Option<&str>]) -> anyhow::Result<Exchange> {
    let mut out = Vec::new();
    out.extend(parse("s", sql));
    out.extend(describe(b'S', "s"));
    out.extend(bind("", "s", params));
    out.extend(describe(b'P', ""));
    out.extend(execute("", 0));
    out.extend(close(b'S', "s"));
    out.extend(sync());
    session.send(&out).await?;
    let mut result =
        Exchange { statement: None, portal: None, rows: Vec::new(), tag: None, error: None, described_again: false };
    for (kind, body) in session.until_ready().await? {
        let description = match kind {
            b'T' => Some(Description::Rows(row_description(&body).expect("a well-formed RowDescription"))),
            b'n' => Some(Description::NoData),
            b'D' => {
                result.rows.push(data_row_columns(&body).expect("a well-formed DataRow"));
                None
            }
            b'C' => {
                result.tag = Some(String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned());
                None
            }
            b'E' => {
                result.error = error_field(&body, b'C');
                None
            }
            _ => None,
        };
        if let Some(description) = description {
            if result.statement.is_none() {
                result.statement = Some(description);
            } else if result.portal.is_none() {
                result.portal = Some(description);
            } else {
                result.described_again = true;
            }
        }
    }
    Ok(result)
}

/// Runs `sql` prepared and checks the protocol's promises: both Describes
/// agree, the rows have the columns described (none after NoData), and the
/// description is `expected` (column names, or `None` for NoData).
async fn check(
    session: &mut RawSession,
    sql: &str,
    params: &[Option<&str>],
    expected: Option<&[&str]>,
    // The CommandComplete tag; empty for `SELECT <rows>`.
    tag: &str,
) -> anyhow::Result<usize> {
    // Rows are tagged `SELECT n` whatever the statement (Postgres says
    // `FETCH n`, `SHOW`, `EXPLAIN`); the count is what drivers read.
    let got = exchange(session, sql, params).await?;
    assert_eq!(got.error, None, "{sql}: {got:?}");
    let want = match expected {
        Some(names) => Description::Rows(names.iter().map(|n| n.to_string()).collect()),
        None => Description::NoData,
    };
    assert_eq!(got.statement.as_ref(), Some(&want), "{sql}: statement Describe: {got:?}");
    assert_eq!(got.portal.as_ref(), Some(&want), "{sql}: portal Describe: {got:?}");
    assert!(!got.described_again, "{sql}: a RowDescription after Execute: {got:?}");
    let columns = expected.map_or(0, <[&str]>::len);
    assert!(expected.is_some() || got.rows.is_empty(), "{sql}: rows after NoData: {got:?}");
    assert!(got.rows.iter().all(|c| *c == columns), "{sql}: rows of another width than described: {got:?}");
    if tag.is_empty() {
        assert_eq!(got.tag, Some(format!("SELECT {}", got.rows.len())), "{sql}: {got:?}");
    } else {
        assert_eq!(got.tag.as_deref(), Some(tag), "{sql}: {got:?}");
    }
    Ok(got.rows.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_matches_execute_for_every_statement_kind() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut s = RawSession::connect(server.pg_addr(), "describer").await?;
    s.send(&query(
        "CREATE TABLE dt (k BIGINT PRIMARY KEY, v TEXT); INSERT INTO dt VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    ))
    .await?;
    s.until_ready().await?;

    // Queries and writes, with and without parameters.
    assert_eq!(check(&mut s, "SELECT k, v FROM dt ORDER BY k", &[], Some(&["k", "v"]), "SELECT 3").await?, 3);
    assert_eq!(check(&mut s, "SELECT v FROM dt WHERE k = $1", &[Some("2")], Some(&["v"]), "SELECT 1").await?, 1);
    check(&mut s, "INSERT INTO dt VALUES ($1, $2)", &[Some("4"), Some("d")], None, "INSERT 0 1").await?;
    check(&mut s, "INSERT INTO dt SELECT k + 10, v FROM dt WHERE k < $1", &[Some("3")], None, "INSERT 0 2").await?;
    check(&mut s, "UPDATE dt SET v = $1 WHERE k = 4", &[Some("x")], None, "UPDATE 1").await?;
    check(&mut s, "DELETE FROM dt WHERE k > $1", &[Some("3")], None, "DELETE 3").await?;
    // DDL, settings, SHOW, EXPLAIN.
    check(&mut s, "CREATE TABLE dt2 (a INT PRIMARY KEY)", &[], None, "CREATE TABLE").await?;
    check(&mut s, "SET application_name = 'describer'", &[], None, "SET").await?;
    check(&mut s, "SHOW application_name", &[], Some(&["application_name"]), "").await?;
    check(&mut s, "SHOW ALL", &[], Some(&["name", "setting", "description"]), "").await?;
    check(&mut s, "EXPLAIN SELECT * FROM dt", &[], Some(&["plan_type", "plan"]), "").await?;
    // SQL-level PREPARE / EXECUTE: a query's rows, a write's count.
    check(&mut s, "PREPARE q(BIGINT) AS SELECT v, k FROM dt WHERE k = $1", &[], None, "PREPARE").await?;
    assert_eq!(check(&mut s, "EXECUTE q(1)", &[], Some(&["v", "k"]), "SELECT 1").await?, 1);
    check(&mut s, "PREPARE w(BIGINT, TEXT) AS INSERT INTO dt VALUES ($1, $2)", &[], None, "PREPARE").await?;
    check(&mut s, "EXECUTE w(7, 'g')", &[], None, "INSERT 0 1").await?;
    check(&mut s, "DEALLOCATE q", &[], None, "DEALLOCATE").await?;

    // Cursors: FETCH is described by the cursor it reads.
    check(&mut s, "BEGIN", &[], None, "BEGIN").await?;
    check(&mut s, "DECLARE c CURSOR FOR SELECT k, v FROM dt ORDER BY k", &[], None, "DECLARE CURSOR").await?;
    assert_eq!(check(&mut s, "FETCH 2 FROM c", &[], Some(&["k", "v"]), "").await?, 2);
    assert_eq!(check(&mut s, "FETCH ALL FROM c", &[], Some(&["k", "v"]), "").await?, 2);
    assert_eq!(check(&mut s, "FETCH ALL FROM c", &[], Some(&["k", "v"]), "").await?, 0);
    check(&mut s, "CLOSE c", &[], None, "CLOSE CURSOR").await?;
    check(&mut s, "COMMIT", &[], None, "COMMIT").await?;
    // A subscription cursor: the snapshot's rows with the change columns.
    check(&mut s, "DECLARE sub CURSOR WITH HOLD FOR SUBSCRIBE TO dt", &[], None, "DECLARE CURSOR").await?;
    let got = exchange(&mut s, "FETCH ALL sub WITH (timeout = '1s')", &[]).await?;
    assert_eq!(got.error, None, "{got:?}");
    let Some(Description::Rows(columns)) = &got.statement else { panic!("FETCH of a subscription: {got:?}") };
    assert!(columns.contains(&"k".to_string()) && columns.contains(&"v".to_string()), "{columns:?}");
    assert_eq!(got.portal, got.statement, "{got:?}");
    assert_eq!(got.rows.len(), 4, "the snapshot's four rows: {got:?}");
    assert!(got.rows.iter().all(|c| *c == columns.len()), "{got:?}");
    check(&mut s, "CLOSE sub", &[], None, "CLOSE CURSOR").await?;
    // FETCH of no open cursor: NoData, then 34000 from Execute.
    let got = exchange(&mut s, "FETCH 1 FROM gone", &[]).await?;
    assert_eq!((got.statement.clone(), got.error.as_deref()), (Some(Description::NoData), Some("34000")), "{got:?}");
    check(&mut s, "DISCARD ALL", &[], None, "DISCARD ALL").await?;
    // DISCARD ALL deallocated the SQL-level statements: the name is free again.
    check(&mut s, "PREPARE w(BIGINT) AS SELECT $1", &[], None, "PREPARE").await?;

    // Describing what does not exist names the right thing.
    for (target, code) in [(b'P', "34000"), (b'S', "26000")] {
        let mut out = describe(target, "nope");
        out.extend(sync());
        s.send(&out).await?;
        let replies = s.until_ready().await?;
        let error = replies.iter().find(|(k, _)| *k == b'E').and_then(|(_, b)| error_field(b, b'C'));
        assert_eq!(error.as_deref(), Some(code), "Describe {}: {replies:?}", target as char);
    }
    Ok(())
}

/// tokio-postgres prepares every statement (Parse + Describe, then Bind +
/// Execute): FETCH from a query cursor and from a subscription decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_fetch_with_tokio_postgres() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute(
        "CREATE TABLE tf (k BIGINT PRIMARY KEY, v TEXT); INSERT INTO tf VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    )
    .await?;
    pg.batch_execute("BEGIN; DECLARE c CURSOR FOR SELECT k, v FROM tf ORDER BY k").await?;
    let fetch = pg.prepare("FETCH 2 FROM c").await?;
    assert_eq!(fetch.columns().iter().map(|c| c.name()).collect::<Vec<_>>(), ["k", "v"]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        for row in pg.query(&fetch, &[]).await? {
            seen.push((row.get::<_, i64>(0), row.get::<_, String>(1)));
        }
    }
    assert_eq!(seen, [(1, "a".into()), (2, "b".into()), (3, "c".into())]);
    pg.batch_execute("COMMIT").await?;

    // Describe types a statement as Execute will: sum of bigint is numeric.
    let err = pg.prepare("SELECT sum(k > 1) FROM tf").await.expect_err("sum of a boolean");
    assert!(err.code().is_some_and(|c| c != &tokio_postgres::error::SqlState::INTERNAL_ERROR), "{err:?}");
    for (sql, expected) in [
        ("SELECT sum(k) FROM tf", tokio_postgres::types::Type::NUMERIC),
        ("SELECT sum(CAST(k AS INT)) FROM tf", tokio_postgres::types::Type::INT8),
    ] {
        let statement = pg.prepare(sql).await?;
        assert_eq!(statement.columns()[0].type_(), &expected, "{sql}");
    }
    let total: i64 = pg.query_one("SELECT CAST(sum(k) AS BIGINT) FROM tf", &[]).await?.get(0);
    assert_eq!(total, 6);

    pg.batch_execute("DECLARE s CURSOR WITH HOLD FOR SUBSCRIBE TO tf").await?;
    let fetch = pg.prepare("FETCH ALL s WITH (timeout = '1s')").await?;
    let k = fetch.columns().iter().position(|c| c.name() == "k").expect("a k column");
    let mut keys: Vec<i64> = pg.query(&fetch, &[]).await?.iter().map(|r| r.get(k)).collect();
    keys.sort_unstable();
    assert_eq!(keys, [1, 2, 3]);
    pg.batch_execute("INSERT INTO tf VALUES (4, 'd')").await?;
    let more: Vec<i64> = pg.query(&fetch, &[]).await?.iter().map(|r| r.get(k)).collect();
    assert_eq!(more, [4], "the change after the snapshot");
    Ok(())
}

/// psycopg 3 past its prepare threshold and asyncpg (which prepares every
/// statement) on query cursors and subscription cursors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_cursors_with_python_drivers() -> anyhow::Result<()> {
    if !streamhouse_testkit::python_has("psycopg, asyncpg") {
        return Ok(());
    }
    let server = TestServer::start().await?;
    let port = server.pg_addr().port().to_string();
    streamhouse_testkit::run_client_script("prepared_cursors.py", vec![port], "prepared cursors ok").await?;
    Ok(())
}
