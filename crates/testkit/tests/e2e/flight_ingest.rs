//! Flight SQL bulk ingest with the arrow-flight client: `CommandStatementIngest`
//! (ADBC's create / append / replace modes) and prepared INSERT statements
//! bound to parameter batches.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption};
use futures::TryStreamExt;
use streamhouse_engine::datafusion::arrow::array::{
    AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use streamhouse_engine::datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use streamhouse_testkit::TestServer;
use tonic::transport::Channel;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]))
}

fn batch(schema: &SchemaRef, ids: std::ops::Range<i64>) -> RecordBatch {
    let names: StringArray = ids.clone().map(|i| Some(format!("n{i}"))).collect();
    let scores: Float64Array = ids.clone().map(|i| Some(i as f64 / 2.0)).collect();
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![Arc::new(Int64Array::from_iter_values(ids)), Arc::new(names), Arc::new(scores)],
    )
    .unwrap()
}

fn command(table: &str, if_missing: TableNotExistOption, if_exists: TableExistsOption) -> CommandStatementIngest {
    CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: if_missing as i32,
            if_exists: if_exists as i32,
        }),
        table: table.into(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: HashMap::new(),
    }
}

async fn ingest(
    flight: &mut FlightSqlServiceClient<Channel>,
    command: CommandStatementIngest,
    batches: Vec<RecordBatch>,
) -> Result<i64, tonic::Status> {
    let stream = futures::stream::iter(batches.into_iter().map(Ok));
    flight.execute_ingest(command, stream).await.map_err(|e| match e {
        arrow_flight::error::FlightError::Tonic(status) => *status,
        other => tonic::Status::unknown(other.to_string()),
    })
}

async fn scalar(flight: &mut FlightSqlServiceClient<Channel>, sql: &str) -> anyhow::Result<i64> {
    let info = flight.execute(sql.into(), None).await?;
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let batches: Vec<RecordBatch> = flight.do_get(ticket).await?.try_collect().await?;
    Ok(batches[0].column(0).as_primitive::<Int64Type>().value(0))
}

#[tokio::test]
async fn flight_ingest_modes_and_errors() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut flight = server.flight().await?;
    let schema = schema();
    use TableExistsOption as Exists;
    use TableNotExistOption as Missing;

    // create: a new table from the data's schema, three 10k-row batches.
    let batches = vec![batch(&schema, 0..10_000), batch(&schema, 10_000..20_000), batch(&schema, 20_000..30_000)];
    assert_eq!(ingest(&mut flight, command("events", Missing::Create, Exists::Fail), batches).await?, 30_000);
    assert_eq!(scalar(&mut flight, "SELECT count(*) FROM events").await?, 30_000);
    assert_eq!(scalar(&mut flight, "SELECT CAST(sum(id) AS BIGINT) FROM events WHERE name = 'n123'").await?, 123);
    // The same table through the Postgres protocol.
    let pg = server.pg().await?;
    let row = pg.query_one("SELECT name, score FROM events WHERE id = 7", &[]).await?;
    assert_eq!((row.get::<_, String>(0), row.get::<_, f64>(1)), ("n7".to_string(), 3.5));

    // create on an existing table fails; append adds; append to a missing table fails.
    let err = ingest(&mut flight, command("events", Missing::Create, Exists::Fail), vec![batch(&schema, 0..1)]).await;
    assert_eq!(err.expect_err("exists").code(), tonic::Code::AlreadyExists);
    assert_eq!(
        ingest(&mut flight, command("events", Missing::Fail, Exists::Append), vec![batch(&schema, 30_000..30_005)])
            .await?,
        5
    );
    assert_eq!(scalar(&mut flight, "SELECT count(*) FROM events").await?, 30_005);
    let err = ingest(&mut flight, command("nope", Missing::Fail, Exists::Append), vec![batch(&schema, 0..1)]).await;
    assert_eq!(err.expect_err("missing").code(), tonic::Code::NotFound);

    // replace: the table is created again from the new data.
    assert_eq!(
        ingest(&mut flight, command("events", Missing::Create, Exists::Replace), vec![batch(&schema, 0..3)]).await?,
        3
    );
    assert_eq!(scalar(&mut flight, "SELECT count(*) FROM events").await?, 3);

    // Schema mismatches name the column and commit nothing.
    let extra = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("colour", DataType::Utf8, true),
    ]));
    let rows = RecordBatch::try_new(
        Arc::clone(&extra),
        vec![Arc::new(Int64Array::from(vec![9])), Arc::new(StringArray::from(vec!["red"]))],
    )?;
    let err =
        ingest(&mut flight, command("events", Missing::Fail, Exists::Append), vec![rows]).await.expect_err("extra");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("colour"), "{}", err.message());
    let wrong = Arc::new(Schema::new(vec![Field::new("score", DataType::Boolean, true)]));
    let rows = RecordBatch::try_new(Arc::clone(&wrong), vec![Arc::new(BooleanArray::from(vec![true]))])?;
    let err = ingest(&mut flight, command("events", Missing::Fail, Exists::Append), vec![rows]).await;
    // Boolean casts to a double in Arrow; a string that is not a number does not.
    if let Ok(n) = err {
        assert_eq!(n, 1);
    }
    let text =
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true), Field::new("score", DataType::Utf8, true)]));
    let rows = RecordBatch::try_new(
        Arc::clone(&text),
        vec![Arc::new(Int64Array::from(vec![50, 51])), Arc::new(StringArray::from(vec!["1.5", "high"]))],
    )?;
    let err =
        ingest(&mut flight, command("events", Missing::Fail, Exists::Append), vec![rows]).await.expect_err("bad value");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("score"), "{}", err.message());
    assert_eq!(scalar(&mut flight, "SELECT count(*) FROM events WHERE id >= 50").await?, 0);

    // A primary key from the `primary-key` option: appends upsert.
    let mut keyed = command("keyed", Missing::Create, Exists::Append);
    keyed.options.insert("primary-key".into(), "id".into());
    assert_eq!(ingest(&mut flight, keyed.clone(), vec![batch(&schema, 0..100)]).await?, 100);
    assert_eq!(ingest(&mut flight, keyed, vec![batch(&schema, 50..150)]).await?, 100);
    assert_eq!(scalar(&mut flight, "SELECT count(*) FROM keyed").await?, 150);
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn flight_prepared_insert_takes_parameter_batches_as_rows() -> anyhow::Result<()> {
    let server = TestServer::start().await?;
    let mut flight = server.flight().await?;
    flight
        .execute_update("CREATE TABLE p (id BIGINT PRIMARY KEY, name TEXT, score DOUBLE PRECISION)".into(), None)
        .await?;
    let mut insert = flight.prepare("INSERT INTO p (id, name, score) VALUES ($1, $2, $3)".into(), None).await?;
    let params = Arc::new(Schema::new(vec![
        Field::new("$1", DataType::Int64, true),
        Field::new("$2", DataType::Utf8, true),
        Field::new("$3", DataType::Float64, true),
    ]));
    insert.set_parameters(batch(&params, 0..20_000))?;
    assert_eq!(insert.execute_update().await?, 20_000);
    insert.close().await?;
    assert_eq!(scalar(&mut flight, "SELECT count(*) FROM p").await?, 20_000);
    assert_eq!(scalar(&mut flight, "SELECT id FROM p WHERE name = 'n19999'").await?, 19_999);
    server.stop().await;
    Ok(())
}
