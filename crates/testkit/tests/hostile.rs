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
