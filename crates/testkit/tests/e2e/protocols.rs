//! Protocol tests against the real server on free ports, with real clients:
//! tokio-postgres (simple and extended protocol, binary results, parameters,
//! cancel), the arrow-flight Flight SQL client, and psql when installed.

use std::sync::Arc;
use std::time::Duration;

use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, SqlInfo};
use futures::TryStreamExt;
use streamhouse_engine::datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use streamhouse_engine::datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use streamhouse_testkit::TestServer;
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tonic::transport::Channel;

async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> anyhow::Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or_else(|| anyhow::anyhow!("endpoint without ticket"))?;
        let mut stream = client.do_get(ticket).await?;
        while let Some(batch) = stream.try_next().await? {
            batches.push(batch);
        }
    }
    Ok(batches)
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

#[tokio::test]
async fn pg_simple_and_extended_protocol() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT, price DOUBLE PRECISION, ok BOOLEAN, day DATE, at TIMESTAMP, small SMALLINT, n INT, amount NUMERIC(10,2));
         INSERT INTO items VALUES (1, 'one', 1.5, true, '2024-01-02', '2024-01-02 03:04:05', 7, 70, 12.34), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .await?;

    // Extended protocol: parameter and result types from Describe, binary results.
    let statement = pg.prepare("SELECT id, name, price, ok, day, at, small, n FROM items WHERE id = $1").await?;
    assert_eq!(statement.params(), &[Type::INT8]);
    let types: Vec<Type> = statement.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        types,
        [Type::INT8, Type::TEXT, Type::FLOAT8, Type::BOOL, Type::DATE, Type::TIMESTAMP, Type::INT2, Type::INT4]
    );
    let row = pg.query_one(&statement, &[&1i64]).await?;
    assert_eq!(row.get::<_, i64>(0), 1);
    assert_eq!(row.get::<_, &str>(1), "one");
    assert_eq!(row.get::<_, f64>(2), 1.5);
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, chrono::NaiveDate>(4), chrono::NaiveDate::from_ymd_opt(2024, 1, 2).unwrap());
    assert_eq!(
        row.get::<_, chrono::NaiveDateTime>(5),
        chrono::NaiveDate::from_ymd_opt(2024, 1, 2).unwrap().and_hms_opt(3, 4, 5).unwrap()
    );
    assert_eq!(row.get::<_, i16>(6), 7);
    assert_eq!(row.get::<_, i32>(7), 70);

    // NULLs in binary format.
    let row = pg.query_one(&statement, &[&2i64]).await?;
    assert_eq!(row.get::<_, Option<&str>>(1), None);
    assert_eq!(row.get::<_, Option<f64>>(2), None);
    assert_eq!(row.get::<_, Option<chrono::NaiveDate>>(4), None);

    // A statement prepared once runs many times with different parameters.
    let by_price = pg.prepare("SELECT count(*) FROM items WHERE price > $1").await?;
    assert_eq!(by_price.params(), &[Type::FLOAT8]);
    assert_eq!(pg.query_one(&by_price, &[&1.0f64]).await?.get::<_, i64>(0), 1);
    assert_eq!(pg.query_one(&by_price, &[&2.0f64]).await?.get::<_, i64>(0), 0);

    // Parameters whose type only a cast tells, and a type the client chose.
    let cast = pg.prepare("SELECT $1::int").await?;
    assert_eq!(cast.params(), &[Type::INT4]);
    assert_eq!(pg.query_one(&cast, &[&41i32]).await?.get::<_, i32>(0), 41);
    let sum = pg.prepare("SELECT $1::bigint + 1").await?;
    assert_eq!(pg.query_one(&sum, &[&41i64]).await?.get::<_, i64>(0), 42);
    let typed = pg.prepare_typed("SELECT name FROM items WHERE id = $1", &[Type::INT8]).await?;
    assert_eq!(pg.query_one(&typed, &[&1i64]).await?.get::<_, &str>(0), "one");

    // INSERT with parameters, row count from the command tag.
    let inserted =
        pg.execute("INSERT INTO items (id, name, price) VALUES ($1, $2, $3)", &[&3i64, &"three", &3.5f64]).await?;
    assert_eq!(inserted, 1);
    let text: String = pg.query_one("SELECT name FROM items WHERE id = 3", &[]).await?.get(0);
    assert_eq!(text, "three");

    // Numeric and arrays in binary.
    let amount: String = pg.query_one("SELECT amount::text FROM items WHERE id = 1", &[]).await?.get(0);
    assert_eq!(amount, "12.34");
    let array: Vec<i64> = pg.query_one("SELECT make_array(1, 2, 3)", &[]).await?.get(0);
    assert_eq!(array, vec![1, 2, 3]);

    // Simple protocol: several statements, text results, command tags, empty query.
    let messages = pg
        .simple_query("SELECT 1 AS a; INSERT INTO items (id) VALUES (4); SELECT name FROM items WHERE id = 1")
        .await?;
    let complete: Vec<u64> = messages
        .iter()
        .filter_map(|m| if let SimpleQueryMessage::CommandComplete(n) = m { Some(*n) } else { None })
        .collect();
    assert_eq!(complete, vec![1, 1, 1]);
    let texts: Vec<Option<String>> = messages
        .iter()
        .filter_map(|m| if let SimpleQueryMessage::Row(r) = m { Some(r.get(0).map(str::to_string)) } else { None })
        .collect();
    assert_eq!(texts, vec![Some("1".to_string()), Some("one".to_string())]);
    assert!(pg.simple_query("").await?.iter().all(|m| !matches!(m, SimpleQueryMessage::Row(_))));
    pg.batch_execute(";").await?;

    // Session commands drivers send.
    pg.batch_execute("SET extra_float_digits = 3; SET application_name = 'protocol-test'").await?;
    let app: String = pg.query_one("SHOW application_name", &[]).await?.get(0);
    assert_eq!(app, "protocol-test");
    let version: String = pg.query_one("SELECT version()", &[]).await?.get(0);
    assert!(version.starts_with("PostgreSQL 16.6"), "{version}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn pg_errors_keep_the_connection_alive() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut pg = server.pg().await?;
    pg.batch_execute("CREATE TABLE t (id BIGINT)").await?;
    let cases: &[(&str, SqlState)] = &[
        ("SELECT * FROM nope", SqlState::UNDEFINED_TABLE),
        ("SELECT nope FROM t", SqlState::UNDEFINED_COLUMN),
        ("SELEC 1", SqlState::SYNTAX_ERROR),
        ("SELECT 1 / 0", SqlState::DIVISION_BY_ZERO),
        ("SELECT 'a' + 1", SqlState::INVALID_TEXT_REPRESENTATION),
        ("SAVEPOINT x", SqlState::NO_ACTIVE_SQL_TRANSACTION),
        ("SELECT 'x'::int", SqlState::INVALID_TEXT_REPRESENTATION),
    ];
    for (sql, expected) in cases {
        // Both protocols: simple (batch_execute) and extended (query).
        let err = pg.batch_execute(sql).await.expect_err(sql);
        assert_eq!(err.code(), Some(expected), "{sql}: {err:?}");
        let err = pg.query(*sql, &[]).await.expect_err(sql);
        assert_eq!(err.code(), Some(expected), "{sql}: {err:?}");
        assert_eq!(pg.query_one("SELECT count(*) FROM t", &[]).await?.get::<_, i64>(0), 0);
    }
    // A syntax error says where, as Postgres does (1-based, in characters of the query string).
    for sql in ["SELECT 'é', (1 FROM t", "SELECT 1; SUBSCRIBE TO t WITH (snapshot"] {
        let err = pg.batch_execute(sql).await.expect_err(sql);
        let position = err.as_db_error().and_then(|e| e.position()).cloned();
        let expected = if sql.starts_with("SELECT 1;") { sql.chars().count() as u32 + 1 } else { 16 };
        assert_eq!(position, Some(tokio_postgres::error::ErrorPosition::Original(expected)), "{sql}: {err:?}");
    }
    // A failing statement in the middle of a batch: earlier ones ran, later ones did not.
    let err = pg.batch_execute("INSERT INTO t VALUES (1); SELECT * FROM nope; INSERT INTO t VALUES (2)").await;
    assert_eq!(err.expect_err("batch").code(), Some(&SqlState::UNDEFINED_TABLE));
    assert_eq!(pg.query_one("SELECT count(*) FROM t", &[]).await?.get::<_, i64>(0), 1);

    // Transactions through the driver's API: BEGIN/COMMIT, and the failed state until ROLLBACK.
    let tx = pg.transaction().await?;
    tx.execute("INSERT INTO t VALUES (5)", &[]).await?;
    tx.commit().await?;
    let tx = pg.transaction().await?;
    assert!(tx.query("SELECT * FROM nope", &[]).await.is_err());
    let err = tx.query("SELECT 1", &[]).await.expect_err("aborted transaction");
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    tx.rollback().await?;
    assert_eq!(pg.query_one("SELECT count(*) FROM t", &[]).await?.get::<_, i64>(0), 2);
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn pg_cancel_stops_a_running_query() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    let cancel = pg.cancel_token();
    let running = tokio::spawn(async move {
        let result = pg.simple_query("SELECT count(*) FROM generate_series(1, 100000000000)").await;
        (result, pg)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel_query(tokio_postgres::NoTls).await?;
    let (result, pg) = tokio::time::timeout(Duration::from_secs(30), running).await??;
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    // The connection is still usable afterwards.
    assert_eq!(pg.query_one("SELECT 1::bigint", &[]).await?.get::<_, i64>(0), 1);

    // statement_timeout cancels too.
    pg.batch_execute("SET statement_timeout = '200ms'").await?;
    let err = pg.simple_query("SELECT count(*) FROM generate_series(1, 100000000000)").await.expect_err("timeout");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn flight_sql_queries_updates_and_prepared_statements() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut flight = server.flight().await?;

    assert_eq!(flight.execute_update("CREATE TABLE f (id BIGINT, name TEXT)".into(), None).await?, 0);
    assert_eq!(flight.execute_update("INSERT INTO f VALUES (1, 'a'), (2, 'b'), (3, NULL)".into(), None).await?, 3);

    let info = flight.execute("SELECT id, name FROM f ORDER BY id".into(), None).await?;
    let schema = info.clone().try_decode_schema()?;
    assert_eq!(schema.field(0).data_type(), &DataType::Int64);
    let batches = fetch(&mut flight, info).await?;
    assert_eq!(rows(&batches), 3);
    let ids: Vec<i64> =
        batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect();
    assert_eq!(ids, vec![1, 2, 3]);
    assert!(batches.iter().any(|b| b.column(1).null_count() == 1));

    // Prepared query with a parameter.
    let mut prepared = flight.prepare("SELECT name FROM f WHERE id = $1".into(), None).await?;
    assert_eq!(prepared.parameter_schema()?.field(0).data_type(), &DataType::Int64);
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)])),
        vec![Arc::new(Int64Array::from(vec![2]))],
    )?;
    prepared.set_parameters(params)?;
    let info = prepared.execute().await?;
    let batches = fetch(&mut flight, info).await?;
    assert_eq!(rows(&batches), 1);
    let name = batches[0]
        .column(0)
        .as_string_view_opt()
        .map(|a| a.value(0).to_string())
        .or_else(|| batches[0].column(0).as_string_opt::<i32>().map(|a| a.value(0).to_string()));
    assert_eq!(name.as_deref(), Some("b"));
    prepared.close().await?;

    // Prepared update with parameters: one execution per parameter row.
    let mut insert = flight.prepare("INSERT INTO f VALUES ($1, $2)".into(), None).await?;
    let params = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true), Field::new("$2", DataType::Utf8, true)])),
        vec![
            Arc::new(Int64Array::from(vec![10, 11])),
            Arc::new(streamhouse_engine::datafusion::arrow::array::StringArray::from(vec!["x", "y"])),
        ],
    )?;
    insert.set_parameters(params)?;
    assert_eq!(insert.execute_update().await?, 2);
    insert.close().await?;
    let info = flight.execute("SELECT count(*) FROM f".into(), None).await?;
    let batches = fetch(&mut flight, info).await?;
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 5);

    // GetFlightInfo starts the query: its ticket returns the rows as they
    // were then, with the columns it announced, even if the table is
    // replaced before DoGet.
    flight.execute_update("CREATE TABLE g (id BIGINT)".into(), None).await?;
    flight.execute_update("INSERT INTO g VALUES (1)".into(), None).await?;
    let started = flight.execute("SELECT * FROM g".into(), None).await?;
    flight.execute_update("DROP TABLE g".into(), None).await?;
    flight.execute_update("CREATE TABLE g (id BIGINT, label TEXT)".into(), None).await?;
    flight.execute_update("INSERT INTO g VALUES (7, 'new'), (8, 'newer')".into(), None).await?;
    let batches = fetch(&mut flight, started).await?;
    assert_eq!(rows(&batches), 1);
    assert_eq!(batches.iter().find(|b| b.num_rows() > 0).map(|b| b.num_columns()), Some(1));

    // Beyond the few statements a user may have started ahead of their
    // DoGet, tickets keep the plan and DoGet runs it: all answer right,
    // fetched in any order, each once.
    let mut infos = Vec::new();
    for n in 1..=7 {
        infos.push((n, flight.execute(format!("SELECT count(*) FROM generate_series(1, {n})"), None).await?));
    }
    let again = infos[0].1.clone();
    for (n, info) in infos.into_iter().rev() {
        let batches = fetch(&mut flight, info).await?;
        assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), n);
    }
    let err = fetch(&mut flight, again).await.expect_err("a ticket is redeemed once");
    assert!(err.to_string().contains("unknown or expired ticket"), "{err}");

    // A large result arrives as a stream of batches.
    let info = flight.execute("SELECT * FROM generate_series(1, 300000)".into(), None).await?;
    let batches = fetch(&mut flight, info).await?;
    assert_eq!(rows(&batches), 300_000);
    assert!(batches.len() > 1);

    // A few rows picked from a large text column (a top-k, a join's build
    // side) carry only their own bytes, not the column's: 8 MB of text here,
    // twice what a Flight client accepts in one message.
    flight.execute_update("CREATE TABLE wide (id BIGINT PRIMARY KEY, body TEXT)".into(), None).await?;
    let loaded = "INSERT INTO wide SELECT value, repeat(md5(value::text), 4) FROM generate_series(1, 64000)";
    assert_eq!(flight.execute_update(loaded.into(), None).await?, 64_000);
    for sql in [
        "SELECT id, body FROM wide ORDER BY body DESC LIMIT 5",
        "SELECT w.id, w.body FROM wide w JOIN f ON w.id = f.id ORDER BY w.id",
    ] {
        let info = flight.execute(sql.into(), None).await?;
        let batches = fetch(&mut flight, info).await.map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
        assert_eq!(rows(&batches), 5, "{sql}");
        let sent: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        assert!(sent < 1 << 20, "{sql}: {sent} bytes for 5 rows");
    }

    // Errors keep their class and message.
    let err = flight.execute("SELECT * FROM nope".into(), None).await.expect_err("unknown table");
    let status = match err {
        arrow_flight::error::FlightError::Tonic(status) => *status,
        other => panic!("expected a gRPC status, got {other:?}"),
    };
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("nope"), "{}", status.message());
    let err = flight.execute("SELEC 1".into(), None).await.expect_err("syntax");
    assert!(matches!(err, arrow_flight::error::FlightError::Tonic(s) if s.code() == tonic::Code::InvalidArgument));
    server.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_client_that_goes_away_stops_its_query() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut flight = server.flight().await?;
    let info = flight.execute("SELECT value * 2 FROM generate_series(1, 100000000000)".into(), None).await?;
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = flight.do_get(ticket).await?;
    let first = stream.try_next().await?.expect("a first batch");
    assert!(first.num_rows() > 0);
    assert_eq!(server.engine().active_statements(), 1, "the query runs while the client reads");
    drop(stream);
    drop(flight);
    assert!(server.wait_until_idle(Duration::from_secs(20)).await, "the query kept running after the client left");

    // The same over Postgres: a cancelled statement is no longer running.
    let pg = server.pg().await?;
    let cancel = pg.cancel_token();
    let running =
        tokio::spawn(async move { pg.simple_query("SELECT count(*) FROM generate_series(1, 100000000000)").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.engine().active_statements(), 1);
    cancel.cancel_query(tokio_postgres::NoTls).await?;
    assert!(running.await?.is_err());
    assert!(server.wait_until_idle(Duration::from_secs(20)).await);
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn one_engine_behind_both_protocols_and_metadata() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    let mut flight = server.flight().await?;

    // Created over Postgres, seen over Flight (with its schema) …
    pg.batch_execute("CREATE TABLE from_pg (id BIGINT, label TEXT); INSERT INTO from_pg VALUES (1, 'x'); CREATE SCHEMA s2; CREATE VIEW v AS SELECT id FROM from_pg").await?;
    let info = flight
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: true,
        })
        .await?;
    let batches = fetch(&mut flight, info).await?;
    let batch = &batches[0];
    let names: Vec<String> =
        (0..batch.num_rows()).map(|i| batch.column(2).as_string::<i32>().value(i).to_string()).collect();
    assert!(names.contains(&"from_pg".to_string()) && names.contains(&"v".to_string()), "{names:?}");
    let types: Vec<String> =
        (0..batch.num_rows()).map(|i| batch.column(3).as_string::<i32>().value(i).to_string()).collect();
    assert!(types.contains(&"TABLE".to_string()) && types.contains(&"VIEW".to_string()));
    assert_eq!(batch.num_columns(), 5, "include_schema adds table_schema");

    // … and created over Flight, seen over Postgres.
    flight.execute_update("CREATE TABLE from_flight AS SELECT id * 10 AS id FROM from_pg".into(), None).await?;
    assert_eq!(pg.query_one("SELECT id FROM from_flight", &[]).await?.get::<_, i64>(0), 10);

    let info = flight.get_catalogs().await?;
    let batches = fetch(&mut flight, info).await?;
    assert_eq!(batches[0].column(0).as_string::<i32>().value(0), "streamhouse");
    let info = flight.get_db_schemas(CommandGetDbSchemas { catalog: None, db_schema_filter_pattern: None }).await?;
    let batches = fetch(&mut flight, info).await?;
    let schemas: Vec<String> =
        (0..batches[0].num_rows()).map(|i| batches[0].column(1).as_string::<i32>().value(i).to_string()).collect();
    assert!(schemas.contains(&"public".to_string()) && schemas.contains(&"s2".to_string()), "{schemas:?}");
    let info = flight.get_table_types().await?;
    let batches = fetch(&mut flight, info).await?;
    let types: Vec<&str> =
        (0..batches[0].num_rows()).map(|i| batches[0].column(0).as_string::<i32>().value(i)).collect();
    assert_eq!(types, ["MATERIALIZED VIEW", "TABLE", "VIEW"]);
    let info = flight.get_sql_info(vec![SqlInfo::FlightSqlServerName]).await?;
    let batches = fetch(&mut flight, info).await?;
    assert_eq!(rows(&batches), 1);
    server.stop().await;
    Ok(())
}

/// psql, when installed: `-c`, `\dt`, `\d t`, and an error with its SQLSTATE.
#[tokio::test]
async fn psql_client() -> anyhow::Result<()> {
    if std::process::Command::new("psql").arg("--version").output().is_err() {
        assert!(!streamhouse_testkit::required("STREAMHOUSE_REQUIRE_PSQL"), "psql is required but not installed");
        eprintln!("psql not installed: skipping");
        return Ok(());
    }
    let server = TestServer::start().await?;
    let addr = server.pg_addr();
    let psql = move |args: Vec<&str>| {
        let mut command = std::process::Command::new("psql");
        command
            .args([
                "-X",
                "-h",
                &addr.ip().to_string(),
                "-p",
                &addr.port().to_string(),
                "-d",
                "streamhouse",
                "-v",
                "VERBOSITY=verbose",
            ])
            .env("PGCONNECT_TIMEOUT", "10");
        for arg in &args {
            command.args(["-c", arg]);
        }
        let output = command.output().expect("psql runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let out = tokio::task::spawn_blocking(move || {
        let create = psql(vec![
            "CREATE TABLE readings (id BIGINT PRIMARY KEY, sensor TEXT NOT NULL, value DOUBLE PRECISION)",
            "CREATE TABLE gauges (id INT PRIMARY KEY, unit VARCHAR(8) DEFAULT 'celsius')",
            "INSERT INTO readings VALUES (1, 's1', 0.5), (2, 's2', NULL)",
            "SELECT sensor, value FROM readings ORDER BY id",
            "CREATE VIEW readings_view AS SELECT id, sensor FROM readings",
            "CREATE MATERIALIZED VIEW readings_by_sensor AS SELECT sensor, count(*) AS n FROM readings GROUP BY sensor",
        ]);
        let kinds = psql(vec!["\\dm", "\\dv", "\\di", "\\df"]);
        let dt = psql(vec!["\\dt"]);
        let d = psql(vec!["\\d readings", "\\d gauges", "\\d+ gauges"]);
        let dn = psql(vec!["\\dn"]);
        let l = psql(vec!["\\l"]);
        let typo = psql(vec!["SELECT * FROM readngs"]);
        // \copy sends the client's file with COPY FROM STDIN; a bad line fails it whole.
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("good.csv");
        let csv: String = (10..1010).map(|i| format!("{i},s{},{}.5\n", i % 3, i)).collect();
        std::fs::write(&good, format!("id,sensor,value\n{csv}")).expect("csv written");
        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "5000,s1,1\n5001,s1,oops\n").expect("csv written");
        let copy_good = format!("\\copy readings FROM '{}' WITH (FORMAT csv, HEADER)", good.display());
        let copy_bad = format!("\\copy readings FROM '{}' WITH (FORMAT csv)", bad.display());
        let copied = psql(vec![&copy_good, "SELECT count(*) FROM readings"]);
        let failed = psql(vec![&copy_bad]);
        let counted = psql(vec!["SELECT count(*) FROM readings"]);
        (create, dt, d, dn, l, typo, copied, failed, counted, kinds)
    })
    .await?;
    let (create, dt, d, dn, l, typo, copied, failed, counted, kinds) = out;
    // Materialized views, views and primary key indexes each in their own list.
    assert!(kinds.0 && kinds.1.contains("List of functions"), "{kinds:?}");
    for line in [
        "public | readings_by_sensor | materialized view",
        "public | readings_view | view",
        "public | readings_pkey | index",
    ] {
        let squeezed: String = kinds.1.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(squeezed.contains(line), "missing {line:?} in\n{}", kinds.1);
    }
    assert!(d.1.contains("Indexes:") && d.1.contains("\"readings_pkey\" PRIMARY KEY, btree (id)"), "{}", d.1);
    let squeezed: String = d.1.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(squeezed.contains("unit | character varying(8) | | | 'celsius'"), "the column default: {}", d.1);
    assert!(d.0 && squeezed.contains("'celsius' | extended |") && d.1.contains("Access method: heap"), "\\d+: {d:?}");
    assert!(copied.0 && copied.1.contains("COPY 1000") && copied.1.contains("1002"), "{copied:?}");
    assert!(!failed.0 && failed.2.contains("ERROR:  22P02") && failed.2.contains("line 2, column value"), "{failed:?}");
    assert!(counted.1.contains("1002"), "{counted:?}");
    assert!(create.0, "{create:?}");
    assert!(create.1.contains("INSERT 0 2") && create.1.contains(" s1     |   0.5"), "{}", create.1);
    assert!(dt.0 && dt.1.contains("public | readings | table"), "{dt:?}");
    assert!(d.0, "{d:?}");
    for line in [
        "Table \"public.readings\"",
        "id     | bigint           |           | not null |",
        "sensor | text             |           | not null |",
        "value  | double precision |",
    ] {
        assert!(d.1.contains(line), "missing {line:?} in\n{}", d.1);
    }
    assert!(dn.0 && dn.1.contains("public"), "{dn:?}");
    assert!(l.0 && l.1.contains("streamhouse"), "{l:?}");
    assert!(!typo.0, "{typo:?}");
    assert!(typo.2.contains("ERROR:  42P01") && typo.2.contains("readngs"), "{}", typo.2);
    server.stop().await;
    Ok(())
}

/// psycopg 3 and ADBC's Flight SQL driver, when installed (`.ci/run` installs them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients() -> anyhow::Result<()> {
    if !streamhouse_testkit::python_has("psycopg, adbc_driver_flightsql.dbapi, pyarrow") {
        return Ok(());
    }
    let server = TestServer::start().await?;
    let (pg, flight) = (server.pg_addr().port().to_string(), server.flight_addr().port().to_string());
    streamhouse_testkit::run_client_script("python_clients.py", vec![pg, flight], "python clients ok").await?;
    server.stop().await;
    Ok(())
}

/// SQLAlchemy 2 (default psycopg 3 driver and psycopg2) and pandas: reflection
/// of tables, views and materialized views with types and keys, savepoints,
/// `read_sql`, `read_sql_table` and `to_sql` (`.ci/run` installs them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_and_pandas() -> anyhow::Result<()> {
    if !streamhouse_testkit::python_has("sqlalchemy, pandas, psycopg, psycopg2") {
        return Ok(());
    }
    let server = TestServer::start().await?;
    let pg = server.pg_addr().port().to_string();
    streamhouse_testkit::run_client_script("sqlalchemy_pandas.py", vec![pg], "sqlalchemy ok").await?;
    server.stop().await;
    Ok(())
}

/// ADBC's PostgreSQL driver: its pg_type start-up query and typed Arrow results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adbc_postgresql_driver() -> anyhow::Result<()> {
    if !streamhouse_testkit::python_has("adbc_driver_postgresql.dbapi, pyarrow") {
        return Ok(());
    }
    let server = TestServer::start().await?;
    let pg = server.pg_addr().port().to_string();
    streamhouse_testkit::run_client_script("adbc_postgresql.py", vec![pg], "adbc postgresql ok").await?;
    server.stop().await;
    Ok(())
}

/// The catalog, metadata and time-bucketing queries Grafana, Metabase and
/// Superset send to a Postgres data source (taken from their source code),
/// with the answers Postgres gives: table and column pickers, field sync,
/// time grains and time filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bi_tools_catalog_queries() -> anyhow::Result<()> {
    if !streamhouse_testkit::python_has("sqlalchemy, psycopg, psycopg2") {
        return Ok(());
    }
    let server = TestServer::start().await?;
    let pg = server.pg_addr().port().to_string();
    streamhouse_testkit::run_client_script("bi_catalog_queries.py", vec![pg], "bi catalog queries ok").await?;
    server.stop().await;
    Ok(())
}

/// node-postgres (`pg` from npm): simple and extended queries, named
/// prepared statements, types as node-postgres parses them, transactions,
/// errors with their SQLSTATE, and a pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres() -> anyhow::Result<()> {
    let Some(script) = streamhouse_testkit::node_postgres_script() else { return Ok(()) };
    let server = TestServer::start().await?;
    let pg = server.pg_addr().port().to_string();
    streamhouse_testkit::run_node_script(&script, vec![pg], "node-postgres ok").await?;
    server.stop().await;
    Ok(())
}

/// dbt-postgres: seeds, a table model, a view model reading it, and schema
/// tests, built twice in a row (the second time swapping rebuilt models in
/// with ALTER … RENAME and dropping the old ones with CASCADE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbt_seed_run_test_twice() -> anyhow::Result<()> {
    if !streamhouse_testkit::python_has("dbt.cli.main, psycopg") {
        return Ok(());
    }
    let server = TestServer::start().await?;
    let pg = server.pg_addr().port().to_string();
    streamhouse_testkit::run_client_script("dbt_project.py", vec![pg], "dbt project ok").await?;
    server.stop().await;
    Ok(())
}

/// pgjdbc, the driver under DBeaver, DataGrip and Metabase: batched
/// inserts, DatabaseMetaData (tables, views and materialized views, columns
/// with precision and scale, primary keys, indexes, types) and typed reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgjdbc_metadata() -> anyhow::Result<()> {
    let Some(jar) = streamhouse_testkit::pgjdbc_jar() else { return Ok(()) };
    let server = TestServer::start().await?;
    streamhouse_testkit::run_jdbc_client(&jar, server.pg_addr().port()).await?;
    server.stop().await;
    Ok(())
}

/// A prepared single-row `INSERT … VALUES ($1, …)` (the fast path that
/// skips planning) gives what the planned INSERT gives: same rows, DEFAULTs,
/// NULLs, upserts by key, and the same errors with the same SQLSTATEs; a
/// table altered after PREPARE and a view as target still behave.
#[tokio::test]
async fn prepared_single_row_inserts_match_planned_inserts() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute(
        "CREATE TABLE fast (id BIGINT PRIMARY KEY, name TEXT NOT NULL, n INT DEFAULT 7, x DOUBLE PRECISION);
         CREATE TABLE slow (id BIGINT PRIMARY KEY, name TEXT NOT NULL, n INT DEFAULT 7, x DOUBLE PRECISION);
         CREATE MATERIALIZED VIEW fast_view AS SELECT id, name FROM fast;",
    )
    .await?;
    let all = pg.prepare("INSERT INTO fast VALUES ($1, $2, $3, $4)").await?;
    let some = pg.prepare("INSERT INTO fast (name, id) VALUES ($1, $2)").await?;
    assert_eq!(pg.execute(&all, &[&1i64, &"one", &10i32, &1.5f64]).await?, 1);
    assert_eq!(pg.execute(&some, &[&"two", &2i64]).await?, 1);
    assert_eq!(pg.execute(&all, &[&3i64, &"three", &None::<i32>, &None::<f64>]).await?, 1);
    // Upsert by key, as the planned INSERT does.
    assert_eq!(pg.execute(&all, &[&1i64, &"uno", &11i32, &2.5f64]).await?, 1);
    pg.batch_execute(
        "INSERT INTO slow VALUES (1, 'one', 10, 1.5); INSERT INTO slow (name, id) VALUES ('two', 2);
         INSERT INTO slow VALUES (3, 'three', NULL, NULL); INSERT INTO slow VALUES (1, 'uno', 11, 2.5);",
    )
    .await?;
    let show = |table: &str| format!("SELECT id, name, n, x FROM {table} ORDER BY id");
    let fast: Vec<(i64, String, Option<i32>, Option<f64>)> =
        pg.query(&show("fast"), &[]).await?.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let slow: Vec<(i64, String, Option<i32>, Option<f64>)> =
        pg.query(&show("slow"), &[]).await?.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(fast, slow);
    assert_eq!(fast[1], (2, "two".to_string(), Some(7), None), "the DEFAULT of an omitted column");

    // NULL into NOT NULL: 23502, nothing written.
    let err = pg.execute(&some, &[&None::<String>, &4i64]).await.expect_err("NOT NULL");
    assert_eq!(err.code(), Some(&SqlState::NOT_NULL_VIOLATION), "{err:?}");
    let err = pg.execute(&all, &[&None::<i64>, &"x", &1i32, &1.0f64]).await.expect_err("NULL key");
    assert_eq!(err.code(), Some(&SqlState::NOT_NULL_VIOLATION), "{err:?}");
    assert_eq!(pg.query_one("SELECT count(*) FROM fast", &[]).await?.get::<_, i64>(0), 3);

    // Text parameters converted to the column types; a bad one is 22P02.
    let texts = pg.prepare_typed("INSERT INTO fast (id, name) VALUES ($1, $2)", &[Type::TEXT, Type::TEXT]).await?;
    assert_eq!(pg.execute(&texts, &[&"8", &"eight"]).await?, 1);
    let err = pg.execute(&texts, &[&"not a number", &"y"]).await.expect_err("bad number");
    assert!(err.code().is_some_and(|c| c != &SqlState::INTERNAL_ERROR), "{err:?}");
    assert_eq!(pg.query_one("SELECT n FROM fast WHERE id = 8", &[]).await?.get::<_, Option<i32>>(0), Some(7));
    pg.batch_execute("DELETE FROM fast WHERE id = 8").await?;

    // The table altered after PREPARE: the statement still inserts (the new column NULL).
    pg.batch_execute("ALTER TABLE fast ADD COLUMN extra TEXT").await?;
    assert_eq!(pg.execute(&some, &[&"five", &5i64]).await?, 1);
    let extra: Option<String> = pg.query_one("SELECT extra FROM fast WHERE id = 5", &[]).await?.get(0);
    assert_eq!(extra, None);

    // A view is not a table, prepared or not.
    let into_view = pg.prepare("INSERT INTO fast_view VALUES ($1, $2)").await;
    let err = match into_view {
        Ok(statement) => pg.execute(&statement, &[&9i64, &"v"]).await.expect_err("INSERT into a view"),
        Err(e) => e,
    };
    assert!(err.code().is_some_and(|c| c != &SqlState::INTERNAL_ERROR), "{err:?}");

    // In a transaction block the insert counts as a write of the block.
    let all = pg.prepare("INSERT INTO fast VALUES ($1, $2, $3, $4, $5)").await?;
    pg.batch_execute("BEGIN").await?;
    assert_eq!(pg.execute(&all, &[&6i64, &"six", &6i32, &6.0f64, &"e"]).await?, 1);
    pg.batch_execute("COMMIT").await?;
    assert_eq!(pg.query_one("SELECT count(*) FROM fast", &[]).await?.get::<_, i64>(0), 5);
    Ok(())
}

/// A prepared point select by the whole primary key (the fast path that
/// skips planning) gives what the planned SELECT gives: the row or none,
/// every column or some, in the order asked, composite keys in any order,
/// NULL and missing keys, fresh after upserts and deletes, the same
/// described columns; other shapes, transaction blocks and an ALTERed
/// table still answer correctly.
#[tokio::test]
async fn prepared_point_selects_match_planned_selects() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute(
        "CREATE TABLE pt (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION);
         INSERT INTO pt VALUES (1, 'one', 1.5), (2, NULL, 2.5), (3, 'three', NULL);
         CREATE TABLE pair (a INT, b TEXT, v BIGINT, PRIMARY KEY (a, b));
         INSERT INTO pair VALUES (1, 'x', 10), (1, 'y', 11), (2, 'x', 20);",
    )
    .await?;
    // The planned answer of `sql` with `$n` replaced by literals, as text.
    async fn planned(pg: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let mut rows = Vec::new();
        for message in pg.simple_query(sql).await? {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                rows.push((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect());
            }
        }
        Ok(rows)
    }
    let star = pg.prepare("SELECT * FROM pt WHERE id = $1").await?;
    assert_eq!(star.columns().iter().map(|c| c.name()).collect::<Vec<_>>(), ["id", "name", "score"]);
    let some = pg.prepare("SELECT score, id FROM pt WHERE $1 = id").await?;
    assert_eq!(some.columns().iter().map(|c| c.name()).collect::<Vec<_>>(), ["score", "id"]);
    for id in [1i64, 2, 3, 4] {
        let fast: Vec<(i64, Option<String>, Option<f64>)> =
            pg.query(&star, &[&id]).await?.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        let slow = planned(&pg, &format!("SELECT id, name, score FROM pt WHERE id = {id}")).await?;
        assert_eq!(fast.len(), slow.len(), "id {id}");
        for (f, s) in fast.iter().zip(&slow) {
            assert_eq!(Some(f.0.to_string()), s[0]);
            assert_eq!(f.1, s[1]);
            assert_eq!(f.2.map(|x| x.to_string()), s[2]);
        }
        let fast: Vec<(Option<f64>, i64)> =
            pg.query(&some, &[&id]).await?.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(fast.len(), slow.len(), "id {id}");
    }
    assert!(pg.query(&star, &[&None::<i64>]).await?.is_empty(), "key = NULL matches nothing");
    // Fresh after writes.
    pg.batch_execute("INSERT INTO pt VALUES (1, 'uno', 9.5); DELETE FROM pt WHERE id = 3").await?;
    let row = pg.query_one(&star, &[&1i64]).await?;
    assert_eq!((row.get::<_, Option<String>>(1), row.get::<_, Option<f64>>(2)), (Some("uno".into()), Some(9.5)));
    assert!(pg.query(&star, &[&3i64]).await?.is_empty(), "a deleted row is gone");
    // Composite keys, compared in either order.
    let pair = pg.prepare("SELECT v FROM pair WHERE b = $1 AND a = $2").await?;
    let v: Vec<i64> = pg.query(&pair, &[&"y", &1i32]).await?.iter().map(|r| r.get(0)).collect();
    assert_eq!(v, [11]);
    assert!(pg.query(&pair, &[&"z", &1i32]).await?.is_empty());
    // Part of a composite key is not a point select; it still answers.
    let part = pg.prepare("SELECT v FROM pair WHERE a = $1 ORDER BY v").await?;
    let v: Vec<i64> = pg.query(&part, &[&1i32]).await?.iter().map(|r| r.get(0)).collect();
    assert_eq!(v, [10, 11]);
    // In a transaction block, and after the table changed shape.
    pg.batch_execute("BEGIN").await?;
    assert_eq!(pg.query(&star, &[&2i64]).await?.len(), 1);
    pg.batch_execute("COMMIT; ALTER TABLE pt ADD COLUMN extra TEXT").await?;
    let row = pg.query_one("SELECT * FROM pt WHERE id = $1", &[&2i64]).await?;
    assert_eq!(row.len(), 4, "the new column is there");
    let recent =
        pg.query_one("SELECT count(*) FROM sys.queries WHERE query = 'SELECT * FROM pt WHERE id = $1'", &[]).await?;
    assert!(recent.get::<_, i64>(0) >= 4, "point selects are in sys.queries");
    Ok(())
}
