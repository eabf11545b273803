//! Inputs a hostile or careless client sends, against a real server: each
//! gets a clean error or a correct result, and the server stays up for
//! everyone.

use std::time::{Duration, Instant};

use streamhouse_testkit::TestServer;
use tokio_postgres::error::SqlState;

/// The server still answers a normal query correctly.
async fn alive(pg: &tokio_postgres::Client) -> anyhow::Result<()> {
    let row = pg.query_one("SELECT 40 + 2", &[]).await?;
    assert_eq!(row.get::<_, i64>(0), 42);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_long_expressions_never_crash_the_server() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute(
        "CREATE TABLE t (x BIGINT PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (5, 'b'), (7, 'c');",
    )
    .await?;
    // Generated at 10x, 100x and 1,000x of what people write, over both
    // protocols (simple query, and prepared: Parse/Describe/Execute).
    let chain = |n: usize, op: &str| vec!["1"; n].join(op);
    for n in [150, 1_500, 15_000, 150_000] {
        let sql = format!("SELECT {}", chain(n, " + "));
        let started = Instant::now();
        match pg.query_one(sql.as_str(), &[]).await {
            Ok(row) => assert_eq!(row.get::<_, i64>(0), n as i64, "{n} terms"),
            Err(e) => assert_eq!(e.code(), Some(&SqlState::STATEMENT_TOO_COMPLEX), "{n} terms: {e}"),
        }
        let err = pg.simple_query(&sql).await;
        if n > 1_000 {
            let e = err.expect_err("past the depth limit");
            assert_eq!(e.code(), Some(&SqlState::STATEMENT_TOO_COMPLEX), "{n} terms: {e}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{n} terms took {:?}", started.elapsed());
        alive(&pg).await?;
    }
    // Right-deep and nested forms.
    for sql in [
        format!("SELECT {}1{}", "(1 + ".repeat(3_000), ")".repeat(3_000)),
        format!("SELECT {}1", "- ".repeat(30_000)),
        format!("SELECT 1{}", "::bigint".repeat(30_000)),
        format!("SELECT {}1{}", "(SELECT ".repeat(2_000), ")".repeat(2_000)),
        format!("SELECT {} 1 {}", "CASE WHEN true THEN ".repeat(5_000), "END ".repeat(5_000)),
        vec!["SELECT 1"; 2_000].join(" UNION ALL "),
    ] {
        let e = pg.simple_query(&sql).await.expect_err("too deep");
        let code = e.code().cloned();
        assert!(
            code == Some(SqlState::STATEMENT_TOO_COMPLEX) || code == Some(SqlState::SYNTAX_ERROR),
            "{}…: {e}",
            &sql[..40]
        );
        alive(&pg).await?;
    }
    // Long OR / IN / CASE lists give the right answer, in time linear enough to finish.
    for n in [100, 1_000, 9_000] {
        let ors: Vec<String> = (0..n).map(|i| format!("x = {}", i * 5)).collect();
        let started = Instant::now();
        let row = pg.query_one(format!("SELECT count(*) FROM t WHERE {}", ors.join(" OR ")).as_str(), &[]).await?;
        assert_eq!(row.get::<_, i64>(0), 1, "of {n} ORs only x = 5 matches");
        let list: Vec<String> = (0..n * 10).map(|i| (i * 7).to_string()).collect();
        let row =
            pg.query_one(format!("SELECT count(*) FROM t WHERE x IN ({})", list.join(", ")).as_str(), &[]).await?;
        assert_eq!(row.get::<_, i64>(0), 1, "x = 7 is in the list");
        let whens: Vec<String> = (0..n).map(|i| format!("WHEN {i} THEN 'w{i}'")).collect();
        let row = pg
            .query_one(format!("SELECT CASE x {} ELSE 'none' END FROM t WHERE x = 7", whens.join(" ")).as_str(), &[])
            .await?;
        assert_eq!(row.get::<_, String>(0), "w7");
        assert!(started.elapsed() < Duration::from_secs(120), "{n}: {:?}", started.elapsed());
    }
    alive(&pg).await?;
    Ok(())
}

/// Deep and long inputs through the other paths a statement takes:
/// continuous views (their analysis and maintenance walk the query again)
/// and pg_catalog queries (rewritten by their own handlers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_inputs_through_views_and_catalog_queries() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute("CREATE TABLE src (x BIGINT PRIMARY KEY, v TEXT); INSERT INTO src VALUES (1, 'a'), (5, 'b')")
        .await?;
    // Past the depth limit: refused before the view exists.
    let deep = format!("CREATE MATERIALIZED VIEW deep AS SELECT x, {} AS total FROM src", vec!["x"; 1_500].join(" + "));
    let e = pg.simple_query(&deep).await.expect_err("too deep for a view");
    assert_eq!(e.code(), Some(&SqlState::STATEMENT_TOO_COMPLEX), "{e}");
    let e = pg.query_one("SELECT count(*) FROM deep", &[]).await.expect_err("no view was left behind");
    assert_eq!(e.code(), Some(&SqlState::UNDEFINED_TABLE), "{e}");
    // Long but flat: a view over a 1,000-term OR and a 100-term sum is
    // created, maintained and equal to its query.
    let ors: Vec<String> = (0..1_000).map(|i| format!("x = {}", i * 5)).collect();
    let sum = vec!["x"; 100].join(" + ");
    pg.simple_query(&format!(
        "CREATE MATERIALIZED VIEW wide AS SELECT x, {sum} AS total FROM src WHERE {}",
        ors.join(" OR ")
    ))
    .await?;
    pg.batch_execute("INSERT INTO src VALUES (10, 'c'), (11, 'd')").await?;
    let expected: Vec<(i64, i64)> = vec![(5, 500), (10, 1_000)];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = pg.query("SELECT x, total FROM wide ORDER BY x", &[]).await?;
        let got: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if got == expected {
            break;
        }
        assert!(Instant::now() < deadline, "the view never caught up: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A catalog query with a long filter, as a BI tool's generated one.
    let names: Vec<String> = (0..1_000).map(|i| format!("relname = 'r{i}'")).collect();
    let sql = format!("SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'src' OR {}", names.join(" OR "));
    let row = pg.query_one(sql.as_str(), &[]).await?;
    assert!(row.get::<_, i64>(0) >= 1, "src is in pg_class");
    alive(&pg).await?;
    Ok(())
}

/// A client that connects and never sends its startup is disconnected after
/// `server.startup_timeout_ms`; the server keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_disconnected_at_the_startup_timeout() -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut config = streamhouse::config::Config::default();
    config.server.startup_timeout_ms = 300;
    let server = TestServer::start_with(config).await?;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.pg_addr()).await?;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await?;
    assert!(matches!(read, Ok(0) | Err(_)), "the server closes the connection: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "not before the timeout: {:?}", started.elapsed());
    let pg = server.pg().await?;
    alive(&pg).await?;
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_statements_portals_and_flight_handles_are_capped() -> anyhow::Result<()> {
    let mut config = streamhouse::Config::default();
    config.execution.max_prepared_statements = 3;
    config.execution.max_cursors = 2;
    config.server.flight_max_prepared_statements = 2;
    let server = TestServer::start_with(config).await?;
    let mut pg = server.pg().await?;
    // Named statements (tokio-postgres names each prepared statement).
    let mut kept = Vec::new();
    for i in 0..3 {
        kept.push(pg.prepare(&format!("SELECT {i}::BIGINT")).await?);
    }
    let e = pg.prepare("SELECT 4").await.expect_err("a fourth named statement");
    assert_eq!(e.as_db_error().map(|d| d.code().clone()), Some(SqlState::CONFIGURATION_LIMIT_EXCEEDED), "{e}");
    let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(message.contains("execution.max_prepared_statements"), "{message}");
    // tokio-postgres names every statement it prepares, so the check is a simple query.
    assert_eq!(pg.simple_query("SELECT 1").await?.len(), 3);
    // Closing one (tokio-postgres sends Close when a statement is dropped) makes room.
    kept.pop();
    let again = pg.prepare("SELECT 5::BIGINT").await?;
    assert_eq!(pg.query_one(&again, &[]).await?.get::<_, i64>(0), 5);
    // Named portals: tokio-postgres binds one per `bind`, inside a transaction.
    drop(again);
    let tx = pg.transaction().await?;
    let statement = tx.prepare("SELECT 1::BIGINT").await?;
    let first = tx.bind(&statement, &[]).await?;
    let second = tx.bind(&statement, &[]).await?;
    let Err(e) = tx.bind(&statement, &[]).await else { panic!("a third named portal was bound") };
    assert_eq!(e.as_db_error().map(|d| d.code().clone()), Some(SqlState::CONFIGURATION_LIMIT_EXCEEDED), "{e}");
    drop((first, second));
    let _ = tx.rollback().await;
    // tokio-postgres names every statement it prepares, so the check is a simple query.
    assert_eq!(pg.simple_query("SELECT 1").await?.len(), 3);

    // Flight SQL: each user within server.flight_max_prepared_statements; others unaffected.
    let mut alice = server.flight().await?;
    alice.set_header("x-streamhouse-user", "alice");
    let _a = alice.prepare("SELECT 1".into(), None).await?;
    let b = alice.prepare("SELECT 2".into(), None).await?;
    let e = alice.prepare("SELECT 3".into(), None).await.expect_err("alice's third handle");
    assert!(e.to_string().contains("server.flight_max_prepared_statements"), "{e}");
    let mut bob = server.flight().await?;
    bob.set_header("x-streamhouse-user", "bob");
    let _bob = bob.prepare("SELECT 1".into(), None).await?;
    b.close().await?;
    let _c = alice.prepare("SELECT 3".into(), None).await?;
    server.stop().await;
    Ok(())
}
