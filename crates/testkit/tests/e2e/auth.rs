//! Who may connect and what they may do, against the real server with real
//! clients: SCRAM-SHA-256 logins (tokio-postgres, psql), the secure-by-default
//! listener check, a read-only reporting role, and authenticated Flight SQL
//! (Handshake with HTTP Basic, bearer tokens, tickets and prepared handles
//! bound to their user).

use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;
use streamhouse::Config;
use streamhouse_server::auth::{Method, Rule};
use streamhouse_testkit::TestServer;
use tokio_postgres::error::SqlState;
use tonic::transport::Channel;

const BOOT_PASSWORD: &str = "boot-pw-123";

/// SCRAM for every client (no trusted addresses), the bootstrap password set.
fn scram_only() -> Config {
    let mut config = Config::default();
    config.auth.method = Method::Scram;
    config.auth.rules = vec![];
    config.auth.bootstrap_password = Some(BOOT_PASSWORD.to_string());
    config
}

fn url(server: &TestServer, user: &str, password: Option<&str>) -> String {
    let addr = server.pg_addr();
    let password = password.map(|p| format!(" password={p}")).unwrap_or_default();
    format!("host={} port={} user={user} dbname=streamhouse{password}", addr.ip(), addr.port())
}

async fn connect(
    server: &TestServer,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(&url(server, user, Some(password)), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn code(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_logins_and_a_reporting_role() -> anyhow::Result<()> {
    let server = TestServer::start_with(scram_only()).await?;
    let admin = connect(&server, "streamhouse", BOOT_PASSWORD).await?;
    admin
        .batch_execute(
            "CREATE TABLE sales (id BIGINT PRIMARY KEY, amount BIGINT);
             INSERT INTO sales VALUES (1, 10), (2, 20);
             CREATE TABLE payroll (id BIGINT PRIMARY KEY, salary BIGINT);
             CREATE ROLE reporter LOGIN PASSWORD 'report-pw';
             CREATE ROLE nologin PASSWORD 'x';
             GRANT SELECT ON sales TO reporter;",
        )
        .await?;

    // A wrong password, an unknown user, a role without LOGIN: 28P01 / 28000, nothing told apart.
    let wrong = connect(&server, "reporter", "nope").await.expect_err("wrong password refused");
    assert_eq!(code(&wrong).as_deref(), Some("28P01"), "{wrong}");
    assert_eq!(message(&wrong), "password authentication failed for user \"reporter\"");
    let unknown = connect(&server, "ghost", "nope").await.expect_err("unknown user refused");
    assert_eq!(code(&unknown).as_deref(), Some("28P01"), "{unknown}");
    assert_eq!(message(&unknown), "password authentication failed for user \"ghost\"");
    let nologin = connect(&server, "nologin", "x").await.expect_err("NOLOGIN refused");
    assert_eq!(code(&nologin).as_deref(), Some("28000"), "{nologin}");
    // No password at all: the client cannot answer the SCRAM challenge.
    let none = tokio_postgres::connect(&url(&server, "reporter", None), tokio_postgres::NoTls).await;
    assert!(none.is_err());

    // The reporting role reads and cannot write or change anything.
    let reporter = connect(&server, "reporter", "report-pw").await?;
    let row = reporter.query_one("SELECT current_user, count(*) FROM sales", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "reporter");
    assert_eq!(row.get::<_, i64>(1), 2);
    let copied = reporter.copy_out("COPY sales TO STDOUT").await?;
    let copied: Vec<bytes::Bytes> = copied.try_collect().await?;
    assert_eq!(copied.iter().map(|b| b.len()).sum::<usize>(), "1\t10\n2\t20\n".len());
    reporter.batch_execute("DECLARE c CURSOR WITH HOLD FOR SUBSCRIBE TO sales").await?;
    let subscribed = reporter.simple_query("FETCH ALL c WITH (timeout = '1s')").await?;
    assert!(subscribed.len() >= 2, "subscription rows: {}", subscribed.len());
    reporter.batch_execute("CLOSE c").await?;
    for (sql, relation) in [
        ("SELECT * FROM payroll", "payroll"),
        ("INSERT INTO sales VALUES (3, 30)", "sales"),
        ("UPDATE sales SET amount = 0", "sales"),
        ("DELETE FROM sales WHERE id = 1", "sales"),
        ("DROP TABLE sales", "sales"),
        ("ALTER TABLE sales ADD COLUMN note TEXT", "sales"),
        ("CALL sys.compact('sales')", "sales"),
        ("SUBSCRIBE TO payroll", "payroll"),
        ("SELECT * FROM \"payroll$changelog\"", "payroll"),
    ] {
        let e = reporter.batch_execute(sql).await.err().unwrap_or_else(|| panic!("{sql} succeeded"));
        assert_eq!(e.as_db_error().map(|d| d.code().clone()), Some(SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {e}");
        assert!(message(&e).contains(relation), "{sql}: {}", message(&e));
    }
    let sink = reporter.copy_in::<_, bytes::Bytes>("COPY sales FROM STDIN").await;
    let e = match sink {
        Err(e) => e,
        Ok(sink) => {
            futures::pin_mut!(sink);
            futures::SinkExt::send(&mut sink, bytes::Bytes::from_static(b"3\t30\n")).await?;
            sink.finish().await.expect_err("COPY FROM refused")
        }
    };
    assert_eq!(e.as_db_error().map(|d| d.code().clone()), Some(SqlState::INSUFFICIENT_PRIVILEGE), "{e}");

    // The connection stays usable, and a REVOKE applies to its next statement,
    // prepared statements included.
    let prepared = reporter.prepare("SELECT count(*) FROM sales").await?;
    assert_eq!(reporter.query_one(&prepared, &[]).await?.get::<_, i64>(0), 2);
    admin.batch_execute("REVOKE SELECT ON sales FROM reporter").await?;
    let e = reporter.query_one(&prepared, &[]).await.expect_err("revoked");
    assert_eq!(e.as_db_error().map(|d| d.code().clone()), Some(SqlState::INSUFFICIENT_PRIVILEGE), "{e}");
    let e = reporter.simple_query("SELECT * FROM sales").await.expect_err("revoked");
    assert_eq!(e.as_db_error().map(|d| d.code().clone()), Some(SqlState::INSUFFICIENT_PRIVILEGE), "{e}");

    // psql, a real libpq client, logs in with SCRAM.
    if std::process::Command::new("psql").arg("--version").output().is_ok() {
        let addr = server.pg_addr();
        let psql = |user: &str, password: &str, sql: &str| {
            let mut command = std::process::Command::new("psql");
            command
                .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-U", user, "-d", "x"])
                .args(["-XAtc", sql])
                .env("PGPASSWORD", password);
            // Blocking: off the runtime that serves the connection.
            tokio::task::spawn_blocking(move || command.output())
        };
        let out = psql("streamhouse", BOOT_PASSWORD, "SELECT count(*) FROM sales").await??;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
        let out = psql("reporter", "wrong", "SELECT 1").await??;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("password authentication failed for user \"reporter\""), "{stderr}");
    } else {
        assert!(!streamhouse_testkit::required("STREAMHOUSE_REQUIRE_PSQL"), "psql is required but not installed");
    }
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn trust_is_loopback_only_and_the_bootstrap_password_is_written_once() -> anyhow::Result<()> {
    // The default: loopback is trusted (any name; a role's name gets the role's rights).
    let server = TestServer::start().await?;
    let pg = server.pg().await?;
    pg.batch_execute("CREATE TABLE t (id BIGINT PRIMARY KEY); CREATE ROLE limited LOGIN").await?;
    let (limited, connection) = tokio_postgres::connect(&url(&server, "limited", None), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let e = limited.simple_query("SELECT * FROM t").await.expect_err("no SELECT");
    assert_eq!(e.as_db_error().map(|d| d.code().clone()), Some(SqlState::INSUFFICIENT_PRIVILEGE));
    // The generated bootstrap password: a 0600 file, and it logs in where SCRAM is asked.
    let file = server.config().storage.data_dir.join(streamhouse::BOOTSTRAP_PASSWORD_FILE);
    let password = std::fs::read_to_string(&file)?.trim().to_string();
    assert!(password.len() >= 16);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&file)?.permissions().mode() & 0o777, 0o600);
    }
    let verifier = server.engine().access().snapshot().role("streamhouse").and_then(|r| r.password.clone());
    let verifier = streamhouse_engine::access::scram::Verifier::parse(&verifier.expect("a verifier")).unwrap();
    assert!(verifier.matches_password(&password));
    server.stop().await;

    // Listening beyond loopback with trust is refused, and says why.
    let mut config = Config::default();
    config.server.host = "0.0.0.0".into();
    config.auth.method = Method::Trust;
    let Err(refused) = TestServer::start_with(config).await else {
        panic!("a trusting listener beyond loopback started")
    };
    assert!(format!("{refused:#}").contains("auth.method = \"trust\""), "{refused:#}");
    let mut config = Config::default();
    config.server.host = "0.0.0.0".into();
    config.auth.rules = vec![Rule { address: "0.0.0.0/0".into(), method: Method::Trust }];
    let Err(refused) = TestServer::start_with(config).await else {
        panic!("a trusting listener beyond loopback started")
    };
    assert!(format!("{refused:#}").contains("0.0.0.0/0"), "{refused:#}");
    // With SCRAM beyond loopback (the default rules), it starts.
    let mut config = Config::default();
    config.server.host = "0.0.0.0".into();
    TestServer::start_with(config).await?.stop().await;
    Ok(())
}

async fn flight(server: &TestServer) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
    server.flight().await
}

fn arrow_code(e: &impl std::fmt::Display) -> String {
    e.to_string()
}

#[tokio::test]
async fn flight_requires_a_login_and_binds_handles_to_their_user() -> anyhow::Result<()> {
    let server = TestServer::start_with(scram_only()).await?;
    let admin = connect(&server, "streamhouse", BOOT_PASSWORD).await?;
    admin
        .batch_execute(
            "CREATE TABLE visible (id BIGINT PRIMARY KEY); INSERT INTO visible VALUES (1);
             CREATE TABLE hidden (id BIGINT PRIMARY KEY);
             CREATE ROLE alice LOGIN PASSWORD 'alice-pw'; CREATE ROLE bob LOGIN PASSWORD 'bob-pw';
             GRANT SELECT ON visible TO alice, bob;",
        )
        .await?;

    // No credentials, a bad password, a forged token: UNAUTHENTICATED.
    let mut anonymous = flight(&server).await?;
    let e = anonymous.execute("SELECT 1".into(), None).await.expect_err("refused");
    assert!(arrow_code(&e).contains("Unauthenticated") || arrow_code(&e).contains("authentication required"), "{e}");
    let mut bad = flight(&server).await?;
    let e = bad.handshake("alice", "wrong").await.expect_err("bad password");
    assert!(arrow_code(&e).contains("password authentication failed"), "{e}");
    let mut forged = flight(&server).await?;
    forged.set_token("forged".into());
    let e = forged.execute("SELECT 1".into(), None).await.expect_err("forged token");
    assert!(arrow_code(&e).contains("invalid or expired bearer token"), "{e}");

    // A login returns a bearer token; queries run as the user.
    let mut alice = flight(&server).await?;
    alice.handshake("alice", "alice-pw").await?;
    let info = alice.execute("SELECT current_user AS u, count(*) AS n FROM visible".into(), None).await?;
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    // The ticket is opaque: not the SQL text.
    assert!(!String::from_utf8_lossy(&ticket.ticket).contains("SELECT"));
    let mut bob = flight(&server).await?;
    bob.handshake("bob", "bob-pw").await?;
    // Another user's ticket: PERMISSION_DENIED.
    let e = bob.do_get(ticket.clone()).await.expect_err("bob cannot redeem alice's ticket");
    assert!(arrow_code(&e).contains("another user"), "{e}");
    let batches: Vec<_> = alice.do_get(ticket).await?.try_collect().await?;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    // Privileges: PERMISSION_DENIED naming the relation.
    let e = alice.execute("SELECT * FROM hidden".into(), None).await.expect_err("no SELECT on hidden");
    assert!(arrow_code(&e).contains("permission denied for table public.hidden"), "{e}");
    // Another user's prepared statement handle: PERMISSION_DENIED.
    let mut statement = alice.prepare("SELECT count(*) FROM visible".into(), None).await?;
    let info = statement.execute().await?;
    let batches: Vec<_> = alice.do_get(info.endpoint[0].ticket.clone().expect("ticket")).await?.try_collect().await?;
    assert_eq!(batches.len(), 1);
    let handle_ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let e = bob.do_get(handle_ticket).await.expect_err("bob cannot use alice's handle");
    assert!(arrow_code(&e).contains("belongs to another user"), "{e}");
    statement.close().await?;
    // GetTables lists only what the user may read.
    let info = alice.get_tables(CommandGetTables::default()).await?;
    let batches: Vec<_> = alice.do_get(info.endpoint[0].ticket.clone().expect("ticket")).await?.try_collect().await?;
    let names: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name("table_name").expect("table_name");
            let column = streamhouse_engine::datafusion::arrow::array::AsArray::as_string::<i32>(column);
            column.iter().flatten().map(str::to_string).collect::<Vec<_>>()
        })
        .collect();
    assert!(names.contains(&"visible".to_string()), "{names:?}");
    assert!(!names.contains(&"hidden".to_string()), "{names:?}");
    server.stop().await;
    Ok(())
}

/// A CA and a server certificate for localhost / 127.0.0.1, made with openssl.
fn test_certificates(dir: &std::path::Path) -> anyhow::Result<()> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output()?;
        anyhow::ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run(&[&["req", "-x509"], &ec[..], &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca"]]
        .concat())?;
    run(&[&["req"], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat())?;
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_protocols() -> anyhow::Result<()> {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        assert!(!streamhouse_testkit::required("STREAMHOUSE_REQUIRE_PSQL"), "openssl is required but not installed");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    test_certificates(dir.path())?;
    let mut config = scram_only();
    config.server.tls.cert = Some(dir.path().join("server.pem"));
    config.server.tls.key = Some(dir.path().join("server.key"));
    config.server.tls.required = true;
    let server = TestServer::start_with(config).await?;
    let port = server.pg_addr().port();
    let ca = dir.path().join("ca.pem").display().to_string();

    // Plaintext is refused with an error, not a hang.
    let plain = tokio_postgres::connect(&url(&server, "streamhouse", Some(BOOT_PASSWORD)), tokio_postgres::NoTls).await;
    let Err(e) = plain else { panic!("a plaintext client was served") };
    assert!(message(&e).contains("TLS is required"), "{e}");

    // psql with sslmode=verify-full and a password.
    if std::process::Command::new("psql").arg("--version").output().is_ok() {
        let dsn = format!("host=localhost port={port} user=streamhouse dbname=x sslmode=verify-full sslrootcert={ca}");
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("psql")
                .args([&dsn, "-XAtc", "SELECT 'tls ' || 1"])
                .env("PGPASSWORD", BOOT_PASSWORD)
                .output()
        })
        .await??;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tls 1");
    } else {
        assert!(!streamhouse_testkit::required("STREAMHOUSE_REQUIRE_PSQL"), "psql is required but not installed");
    }
    // psycopg (verify-full) and ADBC Flight SQL over grpc+tls://.
    if streamhouse_testkit::python_has("psycopg, adbc_driver_flightsql") {
        let args = vec![port.to_string(), server.flight_addr().port().to_string(), ca, BOOT_PASSWORD.to_string()];
        streamhouse_testkit::run_client_script("tls_clients.py", args, "tls clients done").await?;
    }
    server.stop().await;
    Ok(())
}
