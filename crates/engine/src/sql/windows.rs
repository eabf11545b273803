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
//! expanded before planning, syntax tree to syntax tree, into plain SQL the
//! view maintainer handles:
//! TUMBLE is a projection with `date_bin`; HOP, whose windows overlap, is a
//! `UNION ALL` of `size / slide` shifted tumbles (each row is in exactly that
//! many windows), so it needs a size that is a multiple of the slide.

use std::ops::ControlFlow;

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
            (function, exprs, alias.as_ref().map(|a| a.name.clone()))
        }
        TableFactor::Derived { subquery, .. } => return rewrite_query(subquery),
        TableFactor::NestedJoin { table_with_joins, .. } => return rewrite_from(table_with_joins),
        _ => return Ok(()),
    };
    let usage = || {
        let usage = if function == "tumble" {
            "TUMBLE(table, time column, size), as in TUMBLE(bids, date_time, INTERVAL '10' SECOND)"
        } else {
            "HOP(table, time column, slide, size), as in HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
        };
        Error::new(StatusCode::InvalidSyntax, format!("window function arguments: {usage}"))
    };
    let (table, time, slide, size, shifts) = match (function.as_str(), exprs.as_slice()) {
        ("tumble", [table, time, size]) => (table, time, size, size, vec![0]),
        ("hop", [table, time, slide, size]) => (table, time, slide, size, hop_shifts(slide, size)?),
        _ => return Err(usage()),
    };
    // The windowed relation: a table, or a table function such as table_as_of.
    let (table, table_args) = match table {
        Expr::Identifier(ident) => (ast::ObjectName::from(vec![ident.clone()]), None),
        Expr::CompoundIdentifier(idents) => (ast::ObjectName::from(idents.clone()), None),
        Expr::Function(ast::Function { name, args: ast::FunctionArguments::List(list), .. }) => {
            (name.clone(), Some(ast::TableFunctionArgs { args: list.args.clone(), settings: None }))
        }
        other => {
            return Err(Error::new(
                StatusCode::InvalidSyntax,
                format!("the first argument of {} must be a table name, not {other}", function.to_ascii_uppercase()),
            ));
        }
    };
    let alias = match alias {
        Some(alias) => alias,
        None => table.0.last().and_then(|part| part.as_ident()).cloned().ok_or_else(usage)?,
    };
    let relation = (table, table_args);
    let mut tumbles = shifts
        .into_iter()
        .map(|shift_ms| tumble(&relation, time, slide, size, shift_ms))
        .collect::<Result<Vec<_>>>()?;
    if tumbles.is_empty() {
        return Err(Error::internal("window without a tumble"));
    }
    let mut query = tumbles.remove(0);
    query.body = tumbles.into_iter().fold(query.body.clone(), |left, right| {
        Box::new(SetExpr::SetOperation {
            left,
            op: ast::SetOperator::Union,
            set_quantifier: ast::SetQuantifier::All,
            right: right.body,
        })
    });
    *factor = TableFactor::Derived {
        lateral: false,
        subquery: query,
        alias: Some(ast::TableAlias { explicit: true, name: alias, columns: vec![], at: None }),
        sample: None,
    };
    Ok(())
}

fn argument(arg: &FunctionArg) -> Result<Expr> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
        other => Err(Error::new(StatusCode::InvalidSyntax, format!("unexpected window argument {other}"))),
    }
}

/// One tumble of `slide` over `table`, shifted back by `shift_ms`, each
/// window `size` long: our fixed template, into which the user's table name
/// and expressions go as syntax trees (never as text).
fn tumble(
    (table, table_args): &(ast::ObjectName, Option<ast::TableFunctionArgs>),
    time: &Expr,
    slide: &Expr,
    size: &Expr,
    shift_ms: i64,
) -> Result<Box<Query>> {
    const UNSHIFTED: &str = "SELECT *, date_bin(__slide, __time) AS window_start, \
        date_bin(__slide, __time) + __size AS window_end FROM __table";
    const SHIFTED: &str = "SELECT *, date_bin(__slide, __time) - __shift AS window_start, \
        date_bin(__slide, __time) - __shift + __size AS window_end FROM __table";
    let template = if shift_ms == 0 { UNSHIFTED } else { SHIFTED };
    let mut parsed = Parser::parse_sql(&PostgreSqlDialect {}, template)
        .map_err(|e| Error::internal(format!("window template: {e}")))?;
    let Some(Statement::Query(mut query)) = parsed.pop() else {
        return Err(Error::internal("window template is not a query"));
    };
    let shift = Expr::Interval(ast::Interval {
        value: Box::new(Expr::value(ast::Value::SingleQuotedString(format!("{shift_ms} milliseconds")))),
        leading_field: None,
        leading_precision: None,
        last_field: None,
        fractional_seconds_precision: None,
    });
    if let SetExpr::Select(select) = query.body.as_mut()
        && let Some(TableFactor::Table { name, args, .. }) = select.from.first_mut().map(|from| &mut from.relation)
    {
        *name = table.clone();
        args.clone_from(table_args);
    } else {
        return Err(Error::internal("window template has no table"));
    }
    let _ = ast::visit_expressions_mut(&mut query, |expr| {
        if let Expr::Identifier(ident) = expr {
            let replacement = match ident.value.as_str() {
                "__slide" => Some(slide),
                "__time" => Some(time),
                "__size" => Some(size),
                "__shift" => Some(&shift),
                _ => None,
            };
            if let Some(replacement) = replacement {
                *expr = replacement.clone();
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(query)
}

/// The shifts (ms) of the `size / slide` tumbles a HOP is the union of.
fn hop_shifts(slide: &Expr, size: &Expr) -> Result<Vec<i64>> {
    let (slide_ms, size_ms) = (interval_ms(slide)?, interval_ms(size)?);
    if slide_ms <= 0 || size_ms <= 0 || size_ms % slide_ms != 0 {
        return Err(Error::new(
            StatusCode::InvalidParameterValue,
            format!("HOP needs a size that is a positive multiple of its slide (slide {slide}, size {size})"),
        ));
    }
    Ok((0..size_ms / slide_ms).map(|i| i * slide_ms).collect())
}

/// The length of an interval literal such as `INTERVAL '10' SECOND` or
/// `INTERVAL '1 minute'`, in milliseconds.
pub(crate) fn interval_ms(expr: &Expr) -> Result<i64> {
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

    #[test]
    fn names_and_expressions_go_in_as_trees() {
        // A quoted name with a dot stays one name, and is the default alias.
        let quoted = rewritten(r#"SELECT * FROM TUMBLE(s."my.bids", "t s", INTERVAL '1' MINUTE)"#);
        assert!(quoted.contains(r#"FROM s."my.bids") AS "my.bids""#), "{quoted}");
        assert!(quoted.contains(r#"date_bin(INTERVAL '1' MINUTE, "t s") AS window_start"#), "{quoted}");
        // An expression as the time column is kept whole.
        let expr = rewritten("SELECT * FROM TUMBLE(b, ts + INTERVAL '1' SECOND, INTERVAL '10' SECOND) AS w");
        assert!(expr.contains("date_bin(INTERVAL '10' SECOND, ts + INTERVAL '1' SECOND)"), "{expr}");
        // A table function is windowed as it is.
        let function = rewritten("SELECT * FROM TUMBLE(table_as_of('ev', 2), ts, INTERVAL '10' SECOND) w");
        assert!(function.contains("FROM table_as_of('ev', 2)) AS w"), "{function}");
        // Anything but a table name first is a syntax error.
        let mut bad =
            Parser::parse_sql(&PostgreSqlDialect {}, "SELECT * FROM TUMBLE(1, ts, INTERVAL '1' SECOND)").unwrap();
        assert_eq!(rewrite(&mut bad[0]).unwrap_err().code(), StatusCode::InvalidSyntax);
    }
}
