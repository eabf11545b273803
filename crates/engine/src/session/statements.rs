//! SQL statements recognised before DataFusion plans them: the ones the
//! session runs itself ([`session_statement`]), the ones refused with a
//! message ([`refuse_unsupported`]), and the parts of CREATE TABLE and INSERT
//! that DataFusion does not take (table options, `ON CONFLICT DO NOTHING`).

use datafusion::common::TableReference;
use datafusion::sql::sqlparser::ast::{self, Statement};

use super::{SessionStatement, cursor, variables};
use crate::catalog::{Procedure, RelationKind};
use crate::error::{Error, Result, StatusCode};

/// The `WITH (...)` options of a CREATE TABLE: keys lower-cased, string
/// values unquoted.
///
/// # Errors
/// Option forms other than `WITH (key = value, …)`.
pub(super) fn table_options(statement: &Statement) -> Result<std::collections::BTreeMap<String, String>> {
    let Statement::CreateTable(create) = statement else { return Ok(std::collections::BTreeMap::new()) };
    option_list(&create.table_options)
}

/// `WITH (key = value, …)` as a map: keys lower-cased, string values unquoted.
fn option_list(list: &ast::CreateTableOptions) -> Result<std::collections::BTreeMap<String, String>> {
    let mut options = std::collections::BTreeMap::new();
    match list {
        ast::CreateTableOptions::None => {}
        ast::CreateTableOptions::With(list) => {
            for option in list {
                match option {
                    ast::SqlOption::KeyValue { key, value } => {
                        options.insert(key.value.to_ascii_lowercase(), expr_text(value));
                    }
                    other => {
                        return Err(Error::invalid(format!(
                            "unsupported table option {other}: use WITH ('key' = 'value')"
                        )));
                    }
                }
            }
        }
        other => {
            return Err(Error::unsupported(format!(
                "table options {other} are not supported: use WITH ('key' = 'value')"
            )));
        }
    }
    Ok(options)
}

/// The statement DataFusion plans: a CREATE TABLE without its options (the
/// catalog gets them, see [`table_options`]).
pub(super) fn without_table_options(statement: Statement) -> Statement {
    match statement {
        Statement::CreateTable(mut create) => {
            create.table_options = ast::CreateTableOptions::None;
            Statement::CreateTable(create)
        }
        other => other,
    }
}

/// Splits `INSERT … ON CONFLICT [(columns)] DO NOTHING` into the plain
/// INSERT and its conflict target (`Some(None)`: no target given).
#[allow(clippy::type_complexity)]
pub(super) fn without_on_conflict(statement: Statement) -> Result<(Statement, Option<Option<Vec<String>>>)> {
    let Statement::Insert(mut insert) = statement else { return Ok((statement, None)) };
    let Some(on) = insert.on.take() else { return Ok((Statement::Insert(insert), None)) };
    let ast::OnInsert::OnConflict(conflict) = on else {
        return Err(Error::unsupported("ON DUPLICATE KEY UPDATE is not supported: INSERT on a keyed table upserts"));
    };
    if let ast::OnConflictAction::DoUpdate(_) = conflict.action {
        return Err(Error::unsupported(
            "ON CONFLICT DO UPDATE is not supported: a plain INSERT on a table with a primary key upserts",
        ));
    }
    let target = match conflict.conflict_target {
        None => None,
        Some(ast::ConflictTarget::Columns(columns)) => Some(columns.iter().map(|c| c.value.clone()).collect()),
        Some(ast::ConflictTarget::OnConstraint(name)) => {
            return Err(Error::unsupported(format!(
                "ON CONFLICT ON CONSTRAINT {name} is not supported: name the primary key columns instead"
            )));
        }
    };
    Ok((Statement::Insert(insert), Some(target)))
}

/// `CALL sys.compact('t')` and `CALL sys.expire_snapshots('t')`.
pub(super) fn call(function: &ast::Function) -> Result<SessionStatement> {
    let name = function.name.to_string().to_ascii_lowercase();
    let procedure = match name.as_str() {
        "sys.compact" => Procedure::Compact,
        "sys.expire_snapshots" => Procedure::ExpireSnapshots,
        _ => {
            return Err(Error::new(
                StatusCode::FunctionNotFound,
                format!("procedure {name} does not exist: available are sys.compact and sys.expire_snapshots"),
            ));
        }
    };
    let usage = || Error::invalid(format!("usage: CALL {name}('table name')"));
    let ast::FunctionArguments::List(list) = &function.args else { return Err(usage()) };
    let [ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Value(value)))] = list.args.as_slice() else {
        return Err(usage());
    };
    let ast::Value::SingleQuotedString(table) = &value.value else { return Err(usage()) };
    Ok(SessionStatement::Call { procedure, table: table.clone() })
}

/// `ALTER TABLE … ADD COLUMN …`; any other alteration is refused.
pub(super) fn alter_table(alter: &ast::AlterTable) -> Result<SessionStatement> {
    let mut columns = Vec::with_capacity(alter.operations.len());
    for operation in &alter.operations {
        let ast::AlterTableOperation::AddColumn { if_not_exists, column_def, column_position: None, .. } = operation
        else {
            return Err(Error::unsupported(format!(
                "ALTER TABLE … {operation} is not supported: ADD COLUMN is the only supported alteration"
            )));
        };
        for option in &column_def.options {
            match &option.option {
                ast::ColumnOption::Null => {}
                ast::ColumnOption::NotNull => {
                    return Err(Error::unsupported(format!(
                        "cannot add NOT NULL column \"{}\": rows already in the table would have no value",
                        column_def.name.value
                    )));
                }
                ast::ColumnOption::Default(_) => {
                    return Err(Error::unsupported(format!(
                        "ADD COLUMN with DEFAULT is not supported yet: rows already stored would read NULL; add \"{}\" without DEFAULT, then UPDATE the existing rows",
                        column_def.name.value
                    )));
                }
                other => {
                    return Err(Error::unsupported(format!(
                        "ADD COLUMN … {other} is not supported: an added column is nullable and has no constraints"
                    )));
                }
            }
        }
        columns.push((ident_value(&column_def.name), column_def.data_type.to_string(), *if_not_exists));
    }
    let table = table_reference(&alter.name)?;
    Ok(SessionStatement::AddColumns { table, if_exists: alter.if_exists, columns })
}

/// A relation name as written, resolved as Postgres resolves identifiers.
pub(crate) fn table_reference(name: &ast::ObjectName) -> Result<TableReference> {
    let parts: Vec<String> = name.0.iter().map(|p| p.as_ident().map_or_else(|| p.to_string(), ident_value)).collect();
    Ok(match parts.as_slice() {
        [table] => TableReference::bare(table.as_str()),
        [schema, table] => TableReference::partial(schema.as_str(), table.as_str()),
        [catalog, schema, table] => TableReference::full(catalog.as_str(), schema.as_str(), table.as_str()),
        _ => return Err(Error::invalid(format!("improper relation name: {name}"))),
    })
}

/// An identifier as Postgres resolves it: unquoted ones fold to lower case.
pub(crate) fn ident_value(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// `CREATE [OR REPLACE] MATERIALIZED VIEW [IF NOT EXISTS] v [(columns)] [WITH (…)] AS query`.
fn materialized_view(create: &ast::CreateView) -> Result<SessionStatement> {
    if create.temporary {
        return Err(Error::unsupported("temporary materialized views are not supported"));
    }
    if create.to.is_some() {
        return Err(Error::unsupported("CREATE MATERIALIZED VIEW … TO table is not supported"));
    }
    let column_names = if create.columns.is_empty() {
        super::naming::postgres_column_names(&Statement::Query(create.query.clone())).unwrap_or_default()
    } else {
        create.columns.iter().map(|c| Some(ident_value(&c.name))).collect()
    };
    Ok(SessionStatement::CreateMaterializedView(Box::new(MaterializedViewStatement {
        name: table_reference(&create.name)?,
        query: create.query.to_string(),
        column_names,
        if_not_exists: create.if_not_exists,
        or_replace: create.or_replace,
        options: option_list(&create.options)?,
    })))
}

/// A parsed `CREATE MATERIALIZED VIEW`.
#[derive(Debug, Clone)]
pub(crate) struct MaterializedViewStatement {
    pub name: TableReference,
    pub query: String,
    pub column_names: Vec<Option<String>>,
    pub if_not_exists: bool,
    pub or_replace: bool,
    pub options: std::collections::BTreeMap<String, String>,
}

/// Statements refused before planning, with a message that says what to do.
pub(super) fn refuse_unsupported(statement: &Statement) -> Result<()> {
    let what = match statement {
        Statement::CreateDatabase { .. } => "CREATE DATABASE",
        Statement::Grant { .. } | Statement::Revoke { .. } => "GRANT/REVOKE",
        Statement::CreateRole { .. } | Statement::CreateUser { .. } => "CREATE ROLE/USER",
        _ => return Ok(()),
    };
    Err(Error::unsupported(format!("{what} is not supported yet")))
}

/// Recognises statements the session handles itself.
pub(super) fn session_statement(statement: &Statement) -> Result<Option<SessionStatement>> {
    use ast::Set;
    let s = match statement {
        Statement::Call(function) => call(function)?,
        Statement::CreateView(create) if create.materialized => materialized_view(create)?,
        Statement::Drop { object_type, if_exists, names, cascade, .. }
            if matches!(
                object_type,
                ast::ObjectType::Table | ast::ObjectType::View | ast::ObjectType::MaterializedView
            ) =>
        {
            let kind = match object_type {
                ast::ObjectType::Table => RelationKind::Table,
                ast::ObjectType::View => RelationKind::View,
                _ => RelationKind::MaterializedView,
            };
            let names = names.iter().map(table_reference).collect::<Result<Vec<_>>>()?;
            SessionStatement::Drop { kind, names, if_exists: *if_exists, cascade: *cascade }
        }
        Statement::AlterTable(alter) => alter_table(alter)?,
        Statement::Declare { stmts } => cursor::declare(stmts)?,
        Statement::Fetch { name, direction, into, .. } => cursor::fetch(name, direction, into.as_ref())?,
        Statement::Close { cursor } => SessionStatement::Close(match cursor {
            ast::CloseCursor::All => None,
            ast::CloseCursor::Specific { name } => Some(ident_value(name)),
        }),
        Statement::Copy { source, to, target, options, legacy_options, values } => {
            if !values.is_empty() {
                return Err(Error::unsupported("COPY with inline data is not supported; send it with COPY FROM STDIN"));
            }
            SessionStatement::Copy(Box::new(crate::copy::CopyStatement::parse(
                source,
                *to,
                target,
                options,
                legacy_options,
            )?))
        }
        Statement::Set(set) => match set {
            Set::SingleAssignment { scope, variable, values, .. } => {
                let local = matches!(scope, Some(ast::ContextModifier::Local));
                let name = variable.to_string();
                let value = values.iter().map(expr_text).collect::<Vec<_>>().join(", ");
                if value.eq_ignore_ascii_case("default") {
                    SessionStatement::Reset(Some(name))
                } else {
                    SessionStatement::Set { name, value, local }
                }
            }
            Set::SetTimeZone { local, value } => {
                let value = expr_text(value);
                if value.eq_ignore_ascii_case("default") || value.eq_ignore_ascii_case("local") {
                    SessionStatement::Reset(Some("TimeZone".into()))
                } else {
                    SessionStatement::Set { name: "TimeZone".into(), value, local: *local }
                }
            }
            Set::SetNames { charset_name, .. } => SessionStatement::Set {
                name: "client_encoding".into(),
                value: charset_name.value.clone(),
                local: false,
            },
            Set::SetNamesDefault {} => SessionStatement::Reset(Some("client_encoding".into())),
            // Every statement is its own transaction, so transaction characteristics have nothing to change.
            Set::SetTransaction { .. } => SessionStatement::NoOp("SET"),
            Set::MultipleAssignments { .. } | Set::ParenthesizedAssignments { .. } => {
                return Err(Error::new(StatusCode::InvalidSyntax, "SET takes one parameter at a time"));
            }
            other => return Err(Error::unsupported(format!("{other} is not supported"))),
        },
        Statement::Reset(reset) => match &reset.reset {
            ast::Reset::ALL => SessionStatement::Reset(None),
            ast::Reset::ConfigurationParameter(name) => SessionStatement::Reset(Some(name.to_string())),
        },
        Statement::ShowVariable { variable } => {
            let name = variable.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(" ");
            if name.eq_ignore_ascii_case("all") {
                SessionStatement::ShowAll
            } else {
                SessionStatement::Show(variables::canonical_name(&name).to_ascii_lowercase())
            }
        }
        Statement::StartTransaction { .. } => SessionStatement::Begin,
        Statement::Commit { .. } => SessionStatement::Commit,
        Statement::Rollback { savepoint: None, .. } => SessionStatement::Rollback,
        Statement::Rollback { savepoint: Some(_), .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => {
            return Err(Error::unsupported("savepoints are not supported: every statement commits on its own"));
        }
        Statement::Discard { .. } => SessionStatement::Discard,
        // Protocol-level statements are freed by the front end; ALL has nothing more to free here.
        Statement::Deallocate { name, .. } if name.value.eq_ignore_ascii_case("all") => {
            SessionStatement::NoOp("DEALLOCATE ALL")
        }
        _ => return Ok(None),
    };
    Ok(Some(s))
}

/// The text of a SET value: string literals unquoted, identifiers as written.
pub(super) fn expr_text(expr: &ast::Expr) -> String {
    match expr {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s)
            | ast::Value::DoubleQuotedString(s)
            | ast::Value::EscapedStringLiteral(s) => s.clone(),
            other => other.to_string(),
        },
        ast::Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

/// Rewrites Flink's `WATERMARK FOR ts AS ts - INTERVAL '5' SECOND` in the
/// column list of a CREATE TABLE into the table option `'watermark' = '…'`
/// (added to, or creating, its `WITH (…)`). Other SQL is returned unchanged
/// (`None`).
///
/// # Errors
/// A watermark expression other than the column, or the column minus a delay (0A000).
pub(super) fn rewrite_watermark(sql: &str) -> Result<Option<String>> {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("watermark") || !lower.contains("create") {
        return Ok(None);
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else { return Ok(None) };
    let is_word = |t: &Token, w: &str| matches!(t, Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w));
    let significant = |from: usize| (from..tokens.len()).find(|&j| !matches!(tokens[j], Token::Whitespace(_)));
    let mut out: Vec<String> = Vec::with_capacity(tokens.len());
    let mut changed = false;
    let mut i = 0;
    // In a CREATE statement; in CREATE … TABLE; the column list's depth.
    let mut in_create = false;
    let mut create_table = false;
    let mut depth = 0usize;
    let mut watermark: Option<String> = None;
    while i < tokens.len() {
        let token = &tokens[i];
        if is_word(token, "create") {
            in_create = true;
        } else if *token == Token::SemiColon {
            (in_create, create_table, depth) = (false, false, 0);
        } else if is_word(token, "table") && depth == 0 {
            create_table = in_create;
        }
        match token {
            Token::LParen if create_table => depth += 1,
            Token::RParen if create_table && depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(token.to_string());
                    i += 1;
                    if let Some(value) = watermark.take() {
                        // The option joins the WITH (…) that follows, or makes one.
                        let option = format!("'watermark' = '{}'", value.replace('\'', "''"));
                        match significant(i) {
                            Some(w) if is_word(&tokens[w], "with") => {
                                let open = significant(w + 1).filter(|&p| tokens[p] == Token::LParen);
                                let Some(open) = open else { return Ok(None) };
                                let empty = significant(open + 1).is_some_and(|p| tokens[p] == Token::RParen);
                                out.extend(tokens[i..=open].iter().map(ToString::to_string));
                                out.push(if empty { option } else { format!("{option}, ") });
                                i = open + 1;
                            }
                            _ => out.push(format!(" WITH ({option})")),
                        }
                    }
                    create_table = false;
                    continue;
                }
            }
            _ => {}
        }
        if create_table && depth == 1 && is_word(token, "watermark") {
            let for_at = significant(i + 1).filter(|&j| is_word(&tokens[j], "for"));
            if let Some(for_at) = for_at {
                let column_at =
                    significant(for_at + 1).ok_or_else(|| Error::invalid("WATERMARK FOR needs a column"))?;
                let Token::Word(column) = &tokens[column_at] else {
                    return Err(Error::invalid("WATERMARK FOR needs a column"));
                };
                let as_at = significant(column_at + 1)
                    .filter(|&j| is_word(&tokens[j], "as"))
                    .ok_or_else(|| Error::invalid(format!("expected AS after WATERMARK FOR {}", column.value)))?;
                // The expression runs to the next comma or the list's end.
                let mut end = as_at + 1;
                let mut nested = 0usize;
                while end < tokens.len() {
                    match &tokens[end] {
                        Token::LParen => nested += 1,
                        Token::RParen if nested == 0 => break,
                        Token::RParen => nested -= 1,
                        Token::Comma if nested == 0 => break,
                        _ => {}
                    }
                    end += 1;
                }
                let expression: String = tokens[as_at + 1..end].iter().map(ToString::to_string).collect();
                let expression = expression.trim().to_string();
                let name =
                    if column.quote_style.is_some() { column.value.clone() } else { column.value.to_lowercase() };
                let mut parts = expression.splitn(2, '-');
                let first = parts.next().unwrap_or_default().trim().trim_matches('"').to_string();
                if !first.eq_ignore_ascii_case(&name) {
                    return Err(Error::unsupported(format!(
                        "WATERMARK FOR {name} AS {expression}: the watermark is {name}, or {name} minus a delay (like {name} - INTERVAL '5' SECOND)"
                    )));
                }
                watermark = Some(match parts.next() {
                    Some(delay) => format!("{name} - {}", delay.trim()),
                    None => name,
                });
                // Drop the clause and the comma before it.
                while out.last().is_some_and(|t| t.trim().is_empty()) {
                    out.pop();
                }
                if out.last().is_some_and(|t| t == ",") {
                    out.pop();
                }
                changed = true;
                i = end;
                continue;
            }
        }
        out.push(token.to_string());
        i += 1;
    }
    Ok(changed.then(|| out.concat()))
}
