//! Event-time windows as table functions in FROM, as RisingWave and Flink
//! SQL write them:
//!
//! ```sql
//! SELECT window_start, count(*) FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY window_start;
//! SELECT window_start, max(price) FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
//! GROUP BY window_start;
//! ```
//!
//! Both add `window_start` and `window_end` to the table's columns. They are
//! rewritten before planning into plain SQL the view maintainer handles:
//! TUMBLE is a projection with `date_bin`; HOP, whose windows overlap, is a
//! `UNION ALL` of `size / slide` shifted tumbles (each row is in exactly that
//! many windows), so it needs a size that is a multiple of the slide.

use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, Query, SetExpr, Statement, TableFactor,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{Error, Result, StatusCode};

/// Rewrites every `TUMBLE(…)` and `HOP(…)` in the FROM clauses of `statement`.
///
/// # Errors
/// Wrong arguments (42601 naming the function), a HOP size that is not a
/// multiple of its slide (22023).
pub fn rewrite(statement: &mut Statement) -> Result<()> {
    match statement {
        Statement::Query(query) => rewrite_query(query),
        Statement::Insert(insert) => match &mut insert.source {
            Some(query) => rewrite_query(query),
            None => Ok(()),
        },
        Statement::CreateView(view) => rewrite_query(&mut view.query),
        Statement::CreateTable(create) => match &mut create.query {
            Some(query) => rewrite_query(query),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn rewrite_query(query: &mut Query) -> Result<()> {
    if let Some(with) = &mut query.with {
        for cte in &mut with.cte_tables {
            rewrite_query(&mut cte.query)?;
        }
    }
    rewrite_set_expr(&mut query.body)
}

fn rewrite_set_expr(body: &mut SetExpr) -> Result<()> {
    match body {
        SetExpr::Select(select) => {
            for from in &mut select.from {
                rewrite_from(from)?;
            }
            Ok(())
        }
        SetExpr::Query(query) => rewrite_query(query),
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_set_expr(left)?;
            rewrite_set_expr(right)
        }
        _ => Ok(()),
    }
}

fn rewrite_from(from: &mut ast::TableWithJoins) -> Result<()> {
    rewrite_factor(&mut from.relation)?;
    for join in &mut from.joins {
        rewrite_factor(&mut join.relation)?;
    }
    Ok(())
}

fn rewrite_factor(factor: &mut TableFactor) -> Result<()> {
    let (function, exprs, alias) = match factor {
        TableFactor::Table { name, args: Some(args), alias, .. } => {
            let function = name.to_string().to_ascii_lowercase();
            if function != "tumble" && function != "hop" {
                return Ok(());
            }
            let exprs = args.args.iter().map(argument).collect::<Result<Vec<_>>>()?;
            (function, exprs, alias.as_ref().map(|a| a.name.to_string()))
        }
        TableFactor::Derived { subquery, .. } => return rewrite_query(subquery),
        TableFactor::NestedJoin { table_with_joins, .. } => return rewrite_from(table_with_joins),
        _ => return Ok(()),
    };
    let text: Vec<String> = exprs.iter().map(ToString::to_string).collect();
    let sql = match (function.as_str(), text.as_slice()) {
        ("tumble", [table, time, size]) => tumble(table, time, size, 0, size),
        ("hop", [table, time, slide, size]) => hop(table, time, slide, size, &exprs)?,
        _ => {
            let usage = if function == "tumble" {
                "TUMBLE(table, time column, size), as in TUMBLE(bids, date_time, INTERVAL '10' SECOND)"
            } else {
                "HOP(table, time column, slide, size), as in HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
            };
            return Err(Error::new(StatusCode::InvalidSyntax, format!("window function arguments: {usage}")));
        }
    };
    let alias = alias.unwrap_or_else(|| text[0].rsplit('.').next().unwrap_or(&text[0]).to_string());
    let wrapped = format!("SELECT * FROM ({sql}) AS {alias}");
    let mut parsed = Parser::parse_sql(&PostgreSqlDialect {}, &wrapped)
        .map_err(|e| Error::new(StatusCode::InvalidSyntax, format!("window function: {e}")))?;
    let Some(Statement::Query(query)) = parsed.pop() else {
        return Err(Error::internal("window rewrite did not give a query"));
    };
    let SetExpr::Select(select) = *query.body else {
        return Err(Error::internal("window rewrite did not give a SELECT"));
    };
    let Some(from) = select.from.into_iter().next() else {
        return Err(Error::internal("window rewrite lost its FROM"));
    };
    *factor = from.relation;
    Ok(())
}

fn argument(arg: &FunctionArg) -> Result<Expr> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
        other => Err(Error::new(StatusCode::InvalidSyntax, format!("unexpected window argument {other}"))),
    }
}

/// One tumble of `slide`, shifted back by `shift_ms`, each window `size` long.
fn tumble(table: &str, time: &str, slide: &str, shift_ms: i64, size: &str) -> String {
    let start = if shift_ms == 0 {
        format!("date_bin({slide}, {time})")
    } else {
        format!("date_bin({slide}, {time}) - INTERVAL '{shift_ms} milliseconds'")
    };
    format!("SELECT *, {start} AS window_start, {start} + {size} AS window_end FROM {table}")
}

fn hop(table: &str, time: &str, slide: &str, size: &str, exprs: &[Expr]) -> Result<String> {
    let (slide_ms, size_ms) = match exprs {
        [_, _, slide, size] => (interval_ms(slide)?, interval_ms(size)?),
        _ => return Err(Error::internal("HOP arguments")),
    };
    if slide_ms <= 0 || size_ms <= 0 || size_ms % slide_ms != 0 {
        return Err(Error::new(
            StatusCode::InvalidParameterValue,
            format!("HOP needs a size that is a positive multiple of its slide (slide {slide}, size {size})"),
        ));
    }
    let windows = size_ms / slide_ms;
    Ok((0..windows).map(|i| tumble(table, time, slide, i * slide_ms, size)).collect::<Vec<_>>().join(" UNION ALL "))
}

/// The length of an interval literal such as `INTERVAL '10' SECOND` or
/// `INTERVAL '1 minute'`, in milliseconds.
fn interval_ms(expr: &Expr) -> Result<i64> {
    let unsupported = || {
        Error::new(
            StatusCode::InvalidParameterValue,
            format!("HOP needs interval literals in days, hours, minutes, seconds or milliseconds, not {expr}"),
        )
    };
    let Expr::Interval(interval) = expr else { return Err(unsupported()) };
    let text = interval.value.to_string();
    let text = text.trim_matches('\'');
    let (number, unit) = match &interval.leading_field {
        Some(field) => (text.trim().to_string(), field.to_string()),
        None => {
            let mut parts = text.split_whitespace();
            let number = parts.next().unwrap_or_default().to_string();
            (number, parts.next().unwrap_or("second").to_string())
        }
    };
    let number: f64 = number.parse().map_err(|_| unsupported())?;
    let unit_ms = match unit.to_ascii_lowercase().trim_end_matches('s') {
        "day" => 86_400_000.0,
        "hour" => 3_600_000.0,
        "minute" | "min" => 60_000.0,
        "second" | "sec" => 1_000.0,
        "millisecond" | "m" => 1.0,
        _ => return Err(unsupported()),
    };
    Ok((number * unit_ms).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        rewrite(&mut statements[0]).unwrap();
        statements[0].to_string()
    }

    #[test]
    fn tumble_and_hop_become_plain_sql() {
        let tumble = rewritten("SELECT window_start, count(*) FROM TUMBLE(bids, ts, INTERVAL '10' SECOND) GROUP BY 1");
        assert!(tumble.contains("date_bin(INTERVAL '10' SECOND, ts) AS window_start"), "{tumble}");
        assert!(tumble.contains("FROM bids) AS bids"), "{tumble}");
        let hop = rewritten("SELECT * FROM HOP(bids, ts, INTERVAL '2' SECOND, INTERVAL '6' SECOND) AS h");
        assert_eq!(hop.matches("UNION ALL").count(), 2, "{hop}");
        assert!(hop.contains("INTERVAL '4000 milliseconds'"), "{hop}");
        let mut bad = Parser::parse_sql(
            &PostgreSqlDialect {},
            "SELECT * FROM HOP(b, ts, INTERVAL '4' SECOND, INTERVAL '6' SECOND)",
        )
        .unwrap();
        let err = rewrite(&mut bad[0]).unwrap_err();
        assert_eq!(err.code(), StatusCode::InvalidParameterValue);
    }
}
