//! Helpers shared by the engine's integration tests.

use streamhouse_engine::datafusion::arrow::util::pretty::pretty_format_batches;
use streamhouse_engine::{Output, Session, StatusCode};

/// Runs SQL in `session`; the last statement's rows as a pretty table, or its command tag.
pub async fn run(session: &mut Session, text: &str) -> Result<String, (StatusCode, String)> {
    let (outputs, error) = Box::pin(session.run(text)).await;
    if let Some(e) = error {
        return Err((e.code(), e.message().to_string()));
    }
    match outputs.into_iter().last() {
        Some(Output::Rows(stream)) => {
            let batches: Vec<_> =
                futures::TryStreamExt::try_collect(stream).await.map_err(|e| (StatusCode::Internal, e.to_string()))?;
            Ok(pretty_format_batches(&batches).unwrap().to_string())
        }
        Some(Output::Command(c)) => Ok(c.tag()),
        Some(other) => Err((StatusCode::Internal, format!("unexpected output {other:?}"))),
        None => Ok(String::new()),
    }
}
