//! Parser tests: every form of each statement the dialect adds, names that
//! happen to be our keywords, and error positions.

use std::time::Duration;

use datafusion::common::TableReference;
use datafusion::sql::sqlparser::ast;

use super::*;
use crate::copy::CopyFormat;
use crate::error::StatusCode;

fn one(sql: &str) -> Statement {
    let mut statements = parse(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(statements.len(), 1, "{sql}");
    statements.pop().unwrap()
}

fn error(sql: &str) -> crate::error::Error {
    match parse(sql) {
        Ok(s) => panic!("{sql} parsed: {s:?}"),
        Err(e) => e,
    }
}

fn subscribe(sql: &str) -> Subscribe {
    match one(sql) {
        Statement::Subscribe(s) => s,
        other => panic!("{sql}: {other:?}"),
    }
}

fn is_query(statement: &Statement) -> bool {
    matches!(statement, Statement::Plan(s) if matches!(s.as_ref(), ast::Statement::Query(_)))
}

#[test]
fn subscribe_forms() {
    assert_eq!(
        subscribe("SUBSCRIBE TO t"),
        Subscribe { relation: TableReference::bare("t"), options: SubscribeOptions::default() }
    );
    assert_eq!(subscribe("subscribe t").relation, TableReference::bare("t"));
    let s = subscribe("subscribe public.Orders as of snapshot 5 with (snapshot = false, consumer = 'etl')");
    assert_eq!(s.relation, TableReference::partial("public", "orders"));
    assert_eq!(
        s.options,
        SubscribeOptions { start: Start::Snapshot(5), snapshot: false, consumer: Some("etl".into()) }
    );
    assert_eq!(subscribe("SUBSCRIBE TO t AS OF 7").options.start, Start::Snapshot(7));
    assert_eq!(
        subscribe("SUBSCRIBE TO t AS OF TIMESTAMP '2026-01-01 00:00:00+00'").options.start,
        Start::Timestamp(1_767_225_600_000)
    );
    assert!(!subscribe("SUBSCRIBE TO t WITH (snapshot off)").options.snapshot);
    // A quoted name with a dot is one name, not schema and table.
    assert_eq!(subscribe(r#"SUBSCRIBE TO "odd.name""#).relation, TableReference::bare("odd.name"));
    assert_eq!(subscribe(r#"SUBSCRIBE TO "My Schema"."T""#).relation, TableReference::partial("My Schema", "T"));
    // A table named "to".
    assert_eq!(subscribe("SUBSCRIBE TO to").relation, TableReference::bare("to"));
    assert_eq!(subscribe(r#"SUBSCRIBE "to""#).relation, TableReference::bare("to"));
}

#[test]
fn subscribe_errors() {
    let e = error("SUBSCRIBE TO t WITH (colour = 'red')");
    assert_eq!(e.code(), StatusCode::InvalidArgument);
    assert!(e.message().contains("unknown SUBSCRIBE option \"colour\""), "{e}");
    assert_eq!(error("SUBSCRIBE TO t AS OF SNAPSHOT 0").code(), StatusCode::InvalidArgument);
    assert_eq!(error("SUBSCRIBE TO t AS OF TIMESTAMP 'soon'").code(), StatusCode::InvalidTextRepresentation);
    assert_eq!(error("SUBSCRIBE TO t WITH (snapshot = maybe)").code(), StatusCode::InvalidArgument);
    for bad in ["SUBSCRIBE", "SUBSCRIBE TO", "SUBSCRIBE TO t WITH (snapshot", "SUBSCRIBE TO t garbage"] {
        let e = error(bad);
        assert_eq!(e.code(), StatusCode::InvalidSyntax, "{bad}: {e}");
        assert!(e.position().is_some(), "{bad}: {e}");
    }
}

#[test]
fn subscribe_is_an_ordinary_name_elsewhere() {
    for sql in [
        "SELECT subscribe FROM x",
        "SELECT (subscribe + 1) FROM t",
        "SELECT subscribe(1)",
        "SELECT * FROM subscribe",
        "SELECT * FROM t AS subscribe",
        "WITH subscribe AS (SELECT 1) SELECT * FROM subscribe",
    ] {
        assert!(is_query(&one(sql)), "{sql}");
    }
    assert!(matches!(one("CREATE TABLE subscribe (subscribe INT)"), Statement::CreateTable(_)));
    assert!(matches!(one("INSERT INTO subscribe VALUES (1)"), Statement::Plan(_)));
}

#[test]
fn fetch_forms() {
    let fetch = |sql: &str| match one(sql) {
        Statement::Fetch { name, count, timeout } => (name, count, timeout),
        other => panic!("{sql}: {other:?}"),
    };
    assert_eq!(fetch("FETCH 10 c"), ("c".into(), Some(10), None));
    assert_eq!(fetch("FETCH 3 FROM q"), ("q".into(), Some(3), None));
    assert_eq!(fetch("FETCH NEXT q"), ("q".into(), Some(1), None));
    assert_eq!(fetch("FETCH q"), ("q".into(), Some(1), None));
    assert_eq!(fetch("FETCH ALL IN q"), ("q".into(), None, None));
    assert_eq!(fetch("FETCH FORWARD 5 FROM c"), ("c".into(), Some(5), None));
    assert_eq!(fetch("FETCH FORWARD ALL c"), ("c".into(), None, None));
    assert_eq!(fetch("FETCH FORWARD c"), ("c".into(), Some(1), None));
    assert_eq!(fetch("FETCH ALL c WITH (timeout = '1s')"), ("c".into(), None, Some(Duration::from_secs(1))));
    assert_eq!(fetch("fetch 10 \"C\" with (timeout '50ms')"), ("C".into(), Some(10), Some(Duration::from_millis(50))));
    assert_eq!(error("FETCH BACKWARD 1 c").code(), StatusCode::Unsupported);
    assert_eq!(error("FETCH PRIOR c").code(), StatusCode::Unsupported);
    assert_eq!(error("FETCH ALL c WITH (wait = '1s')").code(), StatusCode::InvalidArgument);
    assert_eq!(error("FETCH ALL c WITH (timeout = 'soon')").code(), StatusCode::InvalidArgument);
}

#[test]
fn fetch_is_an_ordinary_name_elsewhere() {
    for sql in [r#"SELECT "fetch" FROM t"#, r#"SELECT ("fetch") FROM t"#, "SELECT a FROM t FETCH FIRST 2 ROWS ONLY"] {
        assert!(is_query(&one(sql)), "{sql}");
    }
    assert!(matches!(one(r#"CREATE TABLE t ("fetch" INT)"#), Statement::CreateTable(_)));
}

#[test]
fn cursors() {
    match one("DECLARE c CURSOR FOR SUBSCRIBE TO t") {
        Statement::Declare { name, query, hold } => {
            assert_eq!((name.as_str(), hold), ("c", false));
            assert!(matches!(*query, Statement::Subscribe(_)));
        }
        other => panic!("{other:?}"),
    }
    match one("DECLARE q NO SCROLL CURSOR WITH HOLD FOR SELECT * FROM generate_series(1, 10)") {
        Statement::Declare { name, query, hold } => {
            assert_eq!((name.as_str(), hold), ("q", true));
            assert!(is_query(&query));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error("DECLARE c SCROLL CURSOR FOR SELECT 1").code(), StatusCode::Unsupported);
    assert_eq!(error("DECLARE c BINARY CURSOR FOR SELECT 1").code(), StatusCode::Unsupported);
    let two = parse("BEGIN; DECLARE c CURSOR FOR SUBSCRIBE TO t; FETCH 10 c").unwrap();
    assert!(matches!(two.as_slice(), [Statement::Begin, Statement::Declare { .. }, Statement::Fetch { .. }]));
    assert!(matches!(one("CLOSE c"), Statement::Close(Some(c)) if c == "c"));
    assert!(matches!(one("CLOSE ALL"), Statement::Close(None)));
}

#[test]
fn copy_forms() {
    match one("COPY (SUBSCRIBE TO t AS OF SNAPSHOT 3 WITH (snapshot = false)) TO STDOUT") {
        Statement::Copy(copy) => match *copy {
            Copy::QueryTo { query, options } => {
                assert!(matches!(*query, Statement::Subscribe(s) if s.options.start == Start::Snapshot(3)));
                assert_eq!(options.format, CopyFormat::Text);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    match one("COPY \"Odd.T\" (a, \"B\") FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ';')") {
        Statement::Copy(copy) => match *copy {
            Copy::From { table, columns, options } => {
                assert_eq!(table, TableReference::bare("Odd.T"));
                assert_eq!(columns, ["a", "B"]);
                assert_eq!((options.format, options.header, options.delimiter), (CopyFormat::Csv, true, b';'));
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(one("COPY t TO STDOUT (FORMAT binary)"), Statement::Copy(c) if matches!(*c, Copy::TableTo { .. }))
    );
    match one("COPY t FROM STDIN CSV HEADER QUOTE AS '''' NULL 'NA'") {
        Statement::Copy(copy) => match *copy {
            Copy::From { options, .. } => {
                assert_eq!((options.format, options.header, options.quote), (CopyFormat::Csv, true, b'\''));
                assert_eq!(options.null, "NA");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(matches!(one("COPY (SELECT 1) TO STDOUT"), Statement::Copy(c) if matches!(*c, Copy::QueryTo { .. })));
    assert_eq!(error("COPY t FROM '/etc/passwd'").code(), StatusCode::Unsupported);
    assert_eq!(error("COPY t TO PROGRAM 'ls'").code(), StatusCode::Unsupported);
    assert_eq!(error("COPY (SELECT 1) FROM STDIN").code(), StatusCode::InvalidSyntax);
    assert_eq!(error("COPY t TO STDIN").code(), StatusCode::InvalidArgument);
    assert_eq!(error("COPY t FROM STDIN (FORCE_QUOTE *)").code(), StatusCode::Unsupported);
    assert_eq!(error("COPY t FROM STDIN (FORMAT xml)").code(), StatusCode::InvalidArgument);
}

fn create_table(sql: &str) -> CreateTable {
    match one(sql) {
        Statement::CreateTable(create) => *create,
        other => panic!("{sql}: {other:?}"),
    }
}

#[test]
fn create_table_options_and_watermarks() {
    let create =
        create_table("CREATE TABLE t (k INT PRIMARY KEY, v TEXT) WITH ('merge-engine' = 'first-row', 'Bucket' = 4)");
    assert_eq!(
        create.options.into_iter().collect::<Vec<_>>(),
        [("bucket".to_string(), "4".to_string()), ("merge-engine".into(), "first-row".into())]
    );
    let ast::Statement::CreateTable(plain) = &create.statement else { panic!() };
    assert!(matches!(plain.table_options, ast::CreateTableOptions::None));
    assert_eq!(plain.columns.len(), 2);

    let create = create_table(
        "CREATE TABLE taps (id BIGINT PRIMARY KEY, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND, n INT) WITH ('target-file-size' = '1048576')",
    );
    assert_eq!(create.options.get("watermark").map(String::as_str), Some("ts - INTERVAL '5' SECOND"));
    assert_eq!(create.options.len(), 2);
    let ast::Statement::CreateTable(plain) = &create.statement else { panic!() };
    assert_eq!(plain.columns.iter().map(|c| c.name.value.as_str()).collect::<Vec<_>>(), ["id", "ts", "n"]);
    assert_eq!(create_table("CREATE TABLE l (ts TIMESTAMP, WATERMARK FOR ts AS ts)").options["watermark"], "ts");
    // A column named watermark is a column.
    assert!(create_table("CREATE TABLE w (watermark INT, k INT, PRIMARY KEY (k))").options.is_empty());
    let e = error("CREATE TABLE b (ts TIMESTAMP, WATERMARK FOR ts AS now() - INTERVAL '1' SECOND)");
    assert_eq!(e.code(), StatusCode::Unsupported);
    assert!(e.message().starts_with("WATERMARK FOR ts AS now() - INTERVAL '1' SECOND: the watermark is ts"), "{e}");
    let e = error("CREATE TABLE b (ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH ('watermark' = 'ts')");
    assert_eq!(e.code(), StatusCode::InvalidArgument);
    // CREATE TABLE AS, OR REPLACE, IF NOT EXISTS, TEMP.
    let create = create_table("CREATE OR REPLACE TABLE c AS SELECT 1 AS x");
    let ast::Statement::CreateTable(plain) = &create.statement else { panic!() };
    assert!(plain.or_replace && plain.query.is_some());
    let create = create_table("CREATE TEMP TABLE IF NOT EXISTS c (x INT)");
    let ast::Statement::CreateTable(plain) = &create.statement else { panic!() };
    assert!(plain.temporary && plain.if_not_exists);
    assert!(error("CREATE TABLE t (a INT").position().is_some());
}

#[test]
fn inserts_views_calls_and_drops() {
    match one("INSERT INTO t VALUES (1) ON CONFLICT (k) DO NOTHING") {
        Statement::InsertIgnoringConflicts(insert) => {
            assert_eq!(insert.target, Some(vec!["k".to_string()]));
            assert!(matches!(&insert.insert, ast::Statement::Insert(i) if i.on.is_none()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error("INSERT INTO t VALUES (1) ON CONFLICT (k) DO UPDATE SET v = 1").code(), StatusCode::Unsupported);
    match one("CREATE OR REPLACE MATERIALIZED VIEW v (a) WITH ('emit' = 'on-window-close') AS SELECT k FROM t") {
        Statement::CreateMaterializedView(view) => {
            assert_eq!(view.name, TableReference::bare("v"));
            assert_eq!(view.columns, ["a"]);
            assert!(view.or_replace && !view.if_not_exists);
            assert_eq!(view.options["emit"], "on-window-close");
        }
        other => panic!("{other:?}"),
    }
    match one(r#"CALL sys.compact('"Odd.Name"')"#) {
        Statement::Call { procedure, table } => {
            assert_eq!((procedure, table), (Procedure::Compact, TableReference::bare("Odd.Name")));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(one("CALL sys.expire_snapshots('s.t')"),
        Statement::Call { procedure: Procedure::ExpireSnapshots, table } if table == TableReference::partial("s", "t")));
    assert_eq!(error("CALL sys.vacuum('t')").code(), StatusCode::FunctionNotFound);
    let procedure = |sql: &str| match one(sql) {
        Statement::Call { procedure, .. } => procedure,
        other => panic!("{other:?}"),
    };
    use crate::sql::Cutoff;
    assert_eq!(procedure("CALL sys.remove_orphan_files('t')"), Procedure::RemoveOrphanFiles(Cutoff::DEFAULT));
    assert_eq!(
        procedure("CALL sys.remove_orphan_files('t', older_than => INTERVAL '2 hours')"),
        Procedure::RemoveOrphanFiles(Cutoff::AgeMs(7_200_000))
    );
    assert_eq!(
        procedure("CALL sys.remove_orphan_files('t', INTERVAL '1' MINUTE)"),
        Procedure::RemoveOrphanFiles(Cutoff::AgeMs(60_000))
    );
    assert_eq!(
        procedure("CALL sys.remove_orphan_files('t', older_than => '2026-12-01 00:00:00+00')"),
        Procedure::RemoveOrphanFiles(Cutoff::BeforeMs(1_796_083_200_000))
    );
    assert_eq!(procedure("CALL sys.rollback_to('t', 5)"), Procedure::RollbackTo(5));
    assert_eq!(procedure("CALL sys.rollback_to('t', snapshot_id => 7)"), Procedure::RollbackTo(7));
    assert_eq!(error("CALL sys.rollback_to('t')").code(), StatusCode::InvalidArgument);
    assert_eq!(error("CALL sys.rollback_to('t', -1)").code(), StatusCode::InvalidArgument);
    assert_eq!(error("CALL sys.rollback_to('t', older_than => 1)").code(), StatusCode::InvalidArgument);
    assert_eq!(error("CALL sys.compact('t', 1)").code(), StatusCode::InvalidArgument);
    assert_eq!(error("CALL sys.remove_orphan_files('t', 'soon')").code(), StatusCode::InvalidTextRepresentation);
    match one("DROP MATERIALIZED VIEW IF EXISTS a, \"B\" CASCADE") {
        Statement::Drop { kind, names, if_exists, cascade } => {
            assert_eq!(kind, RelationKind::MaterializedView);
            assert_eq!(names, [TableReference::bare("a"), TableReference::bare("B")]);
            assert!(if_exists && cascade);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(one("ALTER TABLE t ADD COLUMN c INT, ADD d TEXT"), Statement::AddColumns { columns, .. } if columns.len() == 2)
    );
    assert_eq!(error("GRANT SELECT ON t TO bob WITH GRANT OPTION").code(), StatusCode::Unsupported);
    assert!(matches!(one("GRANT SELECT, insert ON TABLE s.t TO bob, PUBLIC"), Statement::Grant(g)
        if g.grant && g.grantees == ["bob", "public"]
            && matches!(&g.what, crate::sql::Granted::Relations { privileges, relations }
                if privileges.len() == 2 && relations.len() == 1)));
    assert!(matches!(one("REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA a, b FROM \"Bob\""), Statement::Grant(g)
        if !g.grant && g.grantees == ["Bob"]
            && matches!(&g.what, crate::sql::Granted::AllTablesIn { privileges, schemas }
                if privileges.len() == 4 && schemas.len() == 2)));
    assert!(matches!(one("GRANT readers TO alice"), Statement::Grant(g)
        if matches!(&g.what, crate::sql::Granted::Roles(r) if r == &["readers"])));
    assert!(matches!(one("GRANT CREATE ON SCHEMA s TO alice"), Statement::Grant(g)
        if matches!(&g.what, crate::sql::Granted::Schemas { schemas, .. } if schemas == &["s"])));
    assert!(matches!(one("CREATE USER u WITH PASSWORD 'p' IN ROLE r"), Statement::CreateRole { name, options, .. }
        if name == "u" && options.login == Some(true) && options.password == Some(Some("p".into()))
            && options.in_roles == ["r"]));
    assert!(matches!(one("ALTER ROLE u NOLOGIN PASSWORD NULL"), Statement::AlterRole { options, .. }
        if options.login == Some(false) && options.password == Some(None)));
    assert!(
        matches!(one("DROP ROLE IF EXISTS a, b"), Statement::DropRole { names, if_exists: true } if names.len() == 2)
    );
    assert!(matches!(one("SET ROLE a"), Statement::SetRole(Some(a)) if a == "a"));
    assert!(matches!(one("RESET ROLE"), Statement::SetRole(None)));
    assert_eq!(error("CREATE ROLE u VALID UNTIL 'infinity'").code(), StatusCode::Unsupported);
    // A password never shows in the statement's text (sys.queries).
    assert_eq!(one("CREATE ROLE u PASSWORD 'secret'").to_string(), "CREATE ROLE u");
    assert!(matches!(one("SAVEPOINT a"), Statement::Savepoint(name) if name == "a"));
    assert!(matches!(one("RELEASE SAVEPOINT a"), Statement::Release(name) if name == "a"));
    assert!(matches!(one("ROLLBACK TO SAVEPOINT \"A\""), Statement::RollbackTo(name) if name == "A"));
}

#[test]
fn session_statements() {
    assert!(
        matches!(one("SET LOCAL search_path = 'public'"), Statement::Set { name, value, local: true } if name == "search_path" && value == "public")
    );
    assert!(matches!(one("SET TIME ZONE 'Europe/Berlin'"), Statement::Set { name, .. } if name == "TimeZone"));
    assert!(matches!(one("SET statement_timeout TO DEFAULT"), Statement::Reset(Some(_))));
    assert!(matches!(one("SHOW ALL"), Statement::ShowAll));
    assert!(
        matches!(one("SHOW transaction isolation level"), Statement::Show(n) if n == "transaction isolation level")
    );
    assert!(matches!(one("SHOW TIME ZONE"), Statement::Show(n) if n == "TIME ZONE"));
    assert!(matches!(one("SHOW myapp.tenant"), Statement::Show(n) if n == "myapp.tenant"));
    assert!(
        matches!(one("SHOW datafusion.execution.batch_size"), Statement::Show(n) if n == "datafusion.execution.batch_size")
    );
    assert!(matches!(one("START TRANSACTION"), Statement::Begin));
    assert!(matches!(one("END"), Statement::Commit));
    assert!(matches!(one("ROLLBACK"), Statement::Rollback));
    assert!(matches!(one("DISCARD ALL"), Statement::Discard));
    assert!(parse("  ;; ").unwrap().is_empty());
}

#[test]
fn syntax_errors_carry_their_position() {
    let e = error("SELECT (1 FROM t");
    assert_eq!((e.code(), e.position()), (StatusCode::InvalidSyntax, Some(11)));
    // The end of the input is just past the text, as in Postgres.
    assert_eq!(error("SELECT * FROM t WHERE").position(), Some(22));
    // Positions count characters, across lines and statements.
    let e = error("SELECT 'é';\nSELECT 1 +;");
    assert_eq!(e.position(), Some(23));
    let e = error("FETCH 10 c WITH (timeout");
    assert_eq!((e.code(), e.position()), (StatusCode::InvalidSyntax, Some(25)));
}

/// The depth of the deepest expression of a parsed query, counted in a loop.
fn left_spine(statement: &Statement) -> usize {
    let Statement::Plan(plan) = statement else { panic!("a query") };
    let ast::Statement::Query(query) = &**plan else { panic!("a query") };
    let ast::SetExpr::Select(select) = &*query.body else { panic!("a select") };
    let Some(ast::Expr::BinaryOp { .. }) = select.selection.as_ref() else { panic!("a WHERE of binary ops") };
    let mut depth = 0;
    let mut pending = vec![(select.selection.as_ref().expect("where"), 1usize)];
    while let Some((expr, at)) = pending.pop() {
        depth = depth.max(at);
        if let ast::Expr::BinaryOp { left, right, .. } = expr {
            pending.push((left, at + 1));
            pending.push((right, at + 1));
        }
    }
    depth
}

#[test]
fn deep_expressions_are_refused_or_made_shallow() {
    let chain = |n: usize, op: &str| vec!["1"; n].join(op);
    // Left-deep arithmetic past the depth limit: 54001, at every size.
    for n in [1_500, 15_000, 150_000] {
        let e = error(&format!("SELECT {}", chain(n, " + ")));
        assert_eq!(e.code(), StatusCode::StatementTooComplex, "{n} terms: {e}");
    }
    assert!(parse(&format!("SELECT {}", chain(500, " + "))).is_ok(), "500 terms are fine");
    // Unary minus and casts chain too.
    let e = error(&format!("SELECT {}1", "- ".repeat(50_000)));
    assert_eq!(e.code(), StatusCode::StatementTooComplex, "{e}");
    let e = error(&format!("SELECT 1{}", "::int".repeat(30_000)));
    assert_eq!(e.code(), StatusCode::StatementTooComplex, "{e}");
    // Nested parentheses stop at the parser's recursion limit (54001, as Postgres' stack depth).
    let e = error(&format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000)));
    assert_eq!(e.code(), StatusCode::StatementTooComplex, "{e}");
    // Long OR / AND chains, as tools generate them, become balanced trees.
    for n in [100, 1_000, 9_000] {
        let ors: Vec<String> = (0..n).map(|i| format!("x = {i}")).collect();
        let statement = one(&format!("SELECT * FROM t WHERE {}", ors.join(" OR ")));
        let depth = left_spine(&statement);
        assert!(depth <= 2 + (n as f64).log2().ceil() as usize, "{n} ORs nest {depth} deep");
        let ands: Vec<String> = (0..n).map(|i| format!("x <> {i}")).collect();
        let statement = one(&format!("SELECT * FROM t WHERE {}", ands.join(" AND ")));
        assert!(left_spine(&statement) <= 2 + (n as f64).log2().ceil() as usize);
    }
    // Past the token bound, even an OR chain is refused before it is parsed.
    let ors: Vec<String> = (0..30_000).map(|i| format!("x = {i}")).collect();
    let e = error(&format!("SELECT * FROM t WHERE {}", ors.join(" OR ")));
    assert_eq!(e.code(), StatusCode::StatementTooComplex, "{e}");
    // Flat lists are not chains: a long IN list and many VALUES rows parse.
    let list: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
    assert!(parse(&format!("SELECT * FROM t WHERE x IN ({})", list.join(", "))).is_ok());
    let rows: Vec<String> = (0..20_000).map(|i| format!("({i}, 'v{i}' || 'x')")).collect();
    assert!(parse(&format!("INSERT INTO t VALUES {}", rows.join(", "))).is_ok());
    let whens: Vec<String> = (0..20_000).map(|i| format!("WHEN {i} THEN {i}")).collect();
    assert!(parse(&format!("SELECT CASE x {} END FROM t", whens.join(" "))).is_ok());
    // A UNION chain past the limit; inside a cursor and a COPY too.
    let union = vec!["SELECT 1"; 600].join(" UNION ALL ");
    assert_eq!(error(&union).code(), StatusCode::StatementTooComplex);
    assert_eq!(error(&format!("DECLARE c CURSOR FOR {union}")).code(), StatusCode::StatementTooComplex);
    assert_eq!(error(&format!("COPY ({union}) TO STDOUT")).code(), StatusCode::StatementTooComplex);
    assert!(parse(&vec!["SELECT 1"; 100].join(" UNION ALL ")).is_ok());
    // A deep default in CREATE TABLE.
    let e = error(&format!("CREATE TABLE d (a BIGINT PRIMARY KEY, b BIGINT DEFAULT {})", chain(5_000, " * ")));
    assert_eq!(e.code(), StatusCode::StatementTooComplex, "{e}");
}

#[test]
fn question_marks_are_numbered_parameters_for_flight_sql() {
    use crate::sql::parse_question_mark_parameters;
    let statements = parse_question_mark_parameters("SELECT a FROM t WHERE b = ? AND c > ?").expect("parses");
    let [Statement::Plan(plan)] = statements.as_slice() else { panic!("{statements:?}") };
    assert_eq!(plan.to_string(), "SELECT a FROM t WHERE b = $1 AND c > $2");
    let err = parse_question_mark_parameters("SELECT a FROM t WHERE b = ? AND c > $1").expect_err("mixed");
    assert_eq!(err.code(), StatusCode::InvalidSyntax);
    // Without the Flight SQL convention `?` is Postgres' jsonb operator, not a parameter.
    assert!(parse("SELECT a FROM t WHERE b = ?").is_err());
}
