//! The parser of streamhouse's dialect: sqlparser's Postgres parser, with
//! our statements recognised by their first keyword (as DataFusion's
//! `DFParser` extends sqlparser) and parsed into typed nodes; everything
//! else is parsed by sqlparser and then classified ([`classify`]).
//!
//! Standard statements also go through datafusion-pg-catalog's
//! compatibility rules (AST rewrites that let psql's, JDBC's and BI tools'
//! catalog queries plan), as sessions always did.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{self, helpers::stmt_create_table::CreateTableBuilder};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};
use datafusion_pg_catalog::sql::rules::{self, SqlStatementRewriteRule};

use super::statement::{
    AddColumn, Copy, CreateMaterializedView, CreateTable, Cutoff, InsertIgnoringConflicts, Procedure, RelationKind,
    Start, Statement, Subscribe, SubscribeOptions, ViewAlteration,
};
use super::{ident_value, table_reference};
use crate::copy::{CopyOption, CopyOptions};
use crate::error::{Error, Result, StatusCode};

mod dcl;

/// datafusion-pg-catalog's rewrite rules, in its order
/// (`PostgresCompatibilityParser::new`), without `RemoveSubqueryFromProjection`,
/// which replaces correlated subqueries of a select list by NULL (a silent
/// wrong answer), and `FixArrayLiteral`, which splits `'{…}'::t[]` on commas
/// keeping quotes and taking `NULL` for a string (ours is
/// [`super::compat::array_literals`]). (Re-check this list when upgrading the crate.)
static RULES: LazyLock<Vec<Arc<dyn SqlStatementRewriteRule>>> = LazyLock::new(|| {
    vec![
        Arc::new(rules::AliasDuplicatedProjectionRewrite),
        Arc::new(rules::ResolveUnqualifiedIdentifier),
        Arc::new(rules::RewriteArrayAnyAllOperation),
        Arc::new(rules::PrependUnqualifiedPgTableName),
        Arc::new(rules::StripCallableQualifier),
        Arc::new(rules::CurrentUserVariableToSessionUserFunctionCall),
        Arc::new(rules::StripCollate),
        Arc::new(rules::RewritePgCatalogOperator),
        Arc::new(rules::RewriteRegCastToSubquery::new()),
        Arc::new(rules::FixVersionColumnName),
    ]
});

/// The compatibility rewrite for a statement with source text `text`.
fn rewrite(mut statement: ast::Statement) -> Result<ast::Statement> {
    super::compat::array_literals(&mut statement)?;
    super::compat::skip_subqueries_over_empty_catalogs(&mut statement);
    super::compat::rewrite_regclass(&mut statement);
    super::compat::current_user_as_user(&mut statement);
    for rule in RULES.iter() {
        statement = rule.rewrite(statement);
    }
    super::compat::rewrite(&mut statement);
    super::compat::name_single_column_functions(&mut statement);
    super::compat::lateral_unnest(&mut statement);
    Ok(statement)
}

/// Parses SQL text that may hold several statements separated by `;`.
///
/// # Errors
/// 42601 with the position of the offending token; other SQLSTATEs for
/// statements that parse but ask for something streamhouse refuses
/// (0A000 for `FETCH BACKWARD`, 22023 for an unknown SUBSCRIBE option …).
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    parse_in(sql, &PostgreSqlDialect {})
}

/// Parses SQL in which `?` is a positional parameter, as Flight SQL and
/// JDBC clients write them (`WHERE id = ?`), numbered `$1`, `$2`, … in order.
/// Postgres' jsonb `?` operators are then not available, as in those clients.
///
/// # Errors
/// As [`parse`]; mixing `?` with `$n` is 42601.
pub fn parse_question_mark_parameters(sql: &str) -> Result<Vec<Statement>> {
    let mut statements = parse_in(sql, &QuestionMarkParameters(PostgreSqlDialect {}))?;
    for statement in &mut statements {
        number_question_marks(statement)?;
    }
    Ok(statements)
}

/// Numbers a statement's `?` parameters `$1`, `$2`, … in the order they appear.
fn number_question_marks(statement: &mut Statement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions_mut};
    let mut next = 0usize;
    let mut numbered = false;
    let mut mixed = false;
    let mut visit = |plan: &mut ast::Statement| {
        let _ = visit_expressions_mut(plan, |expr| {
            if let Expr::Value(value) = expr
                && let Value::Placeholder(name) = &mut value.value
            {
                if name == "?" {
                    next += 1;
                    *name = format!("${next}");
                } else {
                    numbered = true;
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        mixed |= numbered && next > 0;
    };
    match statement {
        Statement::Plan(plan) => visit(plan),
        Statement::CreateTable(create) => visit(&mut create.statement),
        Statement::InsertIgnoringConflicts(insert) => visit(&mut insert.insert),
        _ => {}
    }
    if mixed {
        return Err(syntax("a statement may use ? or $n parameters, not both"));
    }
    Ok(())
}

/// Postgres' grammar, with `?` tokenized as a parameter instead of jsonb's
/// operators: every other rule is Postgres' own (this dialect says it is
/// Postgres to the parser's dialect checks and delegates every choice).
#[derive(Debug)]
struct QuestionMarkParameters(PostgreSqlDialect);

impl datafusion::sql::sqlparser::dialect::Dialect for QuestionMarkParameters {
    fn dialect(&self) -> std::any::TypeId {
        std::any::TypeId::of::<PostgreSqlDialect>()
    }
    fn supports_geometric_types(&self) -> bool {
        false
    }
    fn identifier_quote_style(&self, identifier: &str) -> Option<char> {
        self.0.identifier_quote_style(identifier)
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        self.0.is_delimited_identifier_start(ch)
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        self.0.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        self.0.is_identifier_part(ch)
    }
    fn supports_unicode_string_literal(&self) -> bool {
        self.0.supports_unicode_string_literal()
    }
    fn is_reserved_for_identifier(&self, kw: Keyword) -> bool {
        self.0.is_reserved_for_identifier(kw)
    }
    fn is_custom_operator_part(&self, ch: char) -> bool {
        self.0.is_custom_operator_part(ch)
    }
    fn get_next_precedence(&self, parser: &Parser) -> Option<std::result::Result<u8, ParserError>> {
        self.0.get_next_precedence(parser)
    }
    fn supports_filter_during_aggregation(&self) -> bool {
        self.0.supports_filter_during_aggregation()
    }
    fn supports_group_by_expr(&self) -> bool {
        self.0.supports_group_by_expr()
    }
    fn prec_value(&self, prec: datafusion::sql::sqlparser::dialect::Precedence) -> u8 {
        self.0.prec_value(prec)
    }
    fn allow_extract_custom(&self) -> bool {
        self.0.allow_extract_custom()
    }
    fn allow_extract_single_quotes(&self) -> bool {
        self.0.allow_extract_single_quotes()
    }
    fn supports_create_index_with_clause(&self) -> bool {
        self.0.supports_create_index_with_clause()
    }
    fn supports_explain_with_utility_options(&self) -> bool {
        self.0.supports_explain_with_utility_options()
    }
    fn supports_listen_notify(&self) -> bool {
        self.0.supports_listen_notify()
    }
    fn supports_factorial_operator(&self) -> bool {
        self.0.supports_factorial_operator()
    }
    fn supports_bitwise_shift_operators(&self) -> bool {
        self.0.supports_bitwise_shift_operators()
    }
    fn supports_comment_on(&self) -> bool {
        self.0.supports_comment_on()
    }
    fn supports_load_extension(&self) -> bool {
        self.0.supports_load_extension()
    }
    fn supports_named_fn_args_with_colon_operator(&self) -> bool {
        self.0.supports_named_fn_args_with_colon_operator()
    }
    fn supports_named_fn_args_with_expr_name(&self) -> bool {
        self.0.supports_named_fn_args_with_expr_name()
    }
    fn supports_empty_projections(&self) -> bool {
        self.0.supports_empty_projections()
    }
    fn supports_nested_comments(&self) -> bool {
        self.0.supports_nested_comments()
    }
    fn supports_string_escape_constant(&self) -> bool {
        self.0.supports_string_escape_constant()
    }
    fn supports_numeric_literal_underscores(&self) -> bool {
        self.0.supports_numeric_literal_underscores()
    }
    fn supports_array_typedef_with_brackets(&self) -> bool {
        self.0.supports_array_typedef_with_brackets()
    }
    fn supports_set_names(&self) -> bool {
        self.0.supports_set_names()
    }
    fn supports_alter_column_type_using(&self) -> bool {
        self.0.supports_alter_column_type_using()
    }
    fn supports_notnull_operator(&self) -> bool {
        self.0.supports_notnull_operator()
    }
    fn supports_interval_options(&self) -> bool {
        self.0.supports_interval_options()
    }
    fn supports_insert_table_alias(&self) -> bool {
        self.0.supports_insert_table_alias()
    }
    fn supports_create_table_like_parenthesized(&self) -> bool {
        self.0.supports_create_table_like_parenthesized()
    }
    fn supports_select_wildcard_with_alias(&self) -> bool {
        self.0.supports_select_wildcard_with_alias()
    }
    fn supports_comma_separated_trim(&self) -> bool {
        self.0.supports_comma_separated_trim()
    }
    fn supports_xml_expressions(&self) -> bool {
        self.0.supports_xml_expressions()
    }
    fn supports_comment_optimizer_hint(&self) -> bool {
        self.0.supports_comment_optimizer_hint()
    }
}

fn parse_in(sql: &str, dialect: &dyn datafusion::sql::sqlparser::dialect::Dialect) -> Result<Vec<Statement>> {
    let tokens = Tokenizer::new(dialect, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(|e| locate(sql, ParserError::from(e).into()))?;
    super::limits::check_tokens(&tokens)?;
    let parser = Parser::new(dialect).with_tokens_with_locations(tokens);
    let mut parser = DialectParser { parser };
    let mut out = Vec::new();
    loop {
        while parser.parser.consume_token(&Token::SemiColon) {}
        if parser.parser.peek_token_ref().token == Token::EOF {
            return Ok(out);
        }
        let statement = parser.statement().map_err(|e| locate(sql, e))?;
        let next = parser.parser.peek_token();
        if !matches!(next.token, Token::SemiColon | Token::EOF) {
            let err: Error = parser.parser.expected::<()>("end of statement", next).unwrap_err().into();
            return Err(locate(sql, err));
        }
        out.push(statement);
    }
}

/// Sets the position (1-based, in characters, as Postgres reports it) of a
/// syntax error from the line and column sqlparser puts in its message.
fn locate(sql: &str, err: Error) -> Error {
    if err.code() != StatusCode::InvalidSyntax || err.position().is_some() {
        return err;
    }
    let message = err.message();
    let Some(at) = message.rfind("Line: ") else {
        // The end of the input has no location: Postgres points just past the text.
        if message.ends_with("found: EOF") {
            let end = sql.chars().count() + 1;
            return err.with_position(end);
        }
        return err;
    };
    let mut numbers = message[at + "Line: ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().unwrap_or(0));
    let (Some(line), Some(column)) = (numbers.next(), numbers.next()) else { return err };
    let position = char_offset(sql, Location { line, column }).map(|(chars, _)| chars + 1);
    match position {
        Some(position) => err.with_position(position),
        None => err,
    }
}

/// The (character, byte) offset of a location (1-based line and column).
fn char_offset(sql: &str, location: Location) -> Option<(usize, usize)> {
    if location.line == 0 || location.column == 0 {
        return None;
    }
    let (mut line, mut column, mut chars) = (1u64, 1u64, 0usize);
    for (byte, c) in sql.char_indices() {
        if line == location.line && column == location.column {
            return Some((chars, byte));
        }
        chars += 1;
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line == location.line && column == location.column).then_some((chars, sql.len()))
}

fn is_word(token: &TokenWithSpan, word: &str) -> bool {
    matches!(&token.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

fn syntax(message: impl Into<String>) -> Error {
    Error::new(StatusCode::InvalidSyntax, message)
}

struct DialectParser<'a> {
    parser: Parser<'a>,
}

impl DialectParser<'_> {
    fn statement(&mut self) -> Result<Statement> {
        let first = self.parser.peek_token();
        if is_word(&first, "subscribe") {
            self.parser.next_token();
            return Ok(Statement::Subscribe(self.subscribe()?));
        }
        let keyword = match &first.token {
            Token::Word(w) => w.keyword,
            _ => Keyword::NoKeyword,
        };
        match keyword {
            Keyword::FETCH => {
                self.parser.next_token();
                self.fetch()
            }
            Keyword::DECLARE => {
                self.parser.next_token();
                self.declare()
            }
            Keyword::COPY => {
                self.parser.next_token();
                self.copy()
            }
            Keyword::CREATE if self.create_role_ahead() => self.create_role(),
            Keyword::ALTER if self.role_statement_ahead() => self.alter_role(),
            Keyword::DROP if self.role_statement_ahead() => self.drop_role(),
            Keyword::GRANT | Keyword::REVOKE => self.grant(),
            Keyword::ALTER if self.alter_view_ahead() => {
                self.parser.next_token();
                self.alter_view()
            }
            Keyword::CREATE if self.materialized_table_ahead() => {
                self.parser.next_token();
                self.materialized_table()
            }
            Keyword::CREATE if self.create_table_ahead() => {
                self.parser.next_token();
                self.create_table()
            }
            _ => self.standard(),
        }
    }

    /// A statement sqlparser parses, through the compatibility rules, classified.
    fn standard(&mut self) -> Result<Statement> {
        let statement = self.parser.parse_statement()?;
        classify(compatible(statement)?)
    }

    /// `ALTER [MATERIALIZED] VIEW` is next.
    fn alter_view_ahead(&self) -> bool {
        let word = |n: usize, w: &str| is_word(self.parser.peek_nth_token_ref(n), w);
        word(1, "view") || (word(1, "materialized") && word(2, "view"))
    }

    /// `ALTER` (consumed) `[MATERIALIZED] VIEW [IF EXISTS] name RENAME TO new_name`,
    /// which sqlparser does not parse; other view alterations are refused.
    fn alter_view(&mut self) -> Result<Statement> {
        let kind = if self.parser.parse_keyword(Keyword::MATERIALIZED) {
            RelationKind::MaterializedView
        } else {
            RelationKind::View
        };
        self.parser.expect_keyword(Keyword::VIEW)?;
        let if_exists = self.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = self.parser.parse_object_name(false)?;
        let statement = match kind {
            RelationKind::MaterializedView => "ALTER MATERIALIZED VIEW",
            _ => "ALTER VIEW",
        };
        if kind == RelationKind::MaterializedView
            && let Some(action) = self.view_alteration()?
        {
            return Ok(Statement::AlterMaterializedView { name: table_reference(&name)?, if_exists, action });
        }
        if !self.parser.parse_keyword(Keyword::RENAME) {
            let others = match kind {
                RelationKind::MaterializedView => {
                    "RENAME TO, SUSPEND, RESUME, REFRESH and SET (…) are the supported \
                                                   alterations"
                }
                _ => "RENAME TO is the only supported alteration",
            };
            return Err(Error::unsupported(format!(
                "{statement} … {} is not supported: {others} (to change the query, CREATE OR REPLACE the view)",
                self.parser.peek_token_ref()
            )));
        }
        if self.parser.parse_keyword(Keyword::COLUMN) || !self.parser.peek_keyword(Keyword::TO) {
            return Err(Error::unsupported(format!(
                "{statement} … RENAME COLUMN is not supported: a view's columns are named by its query (CREATE OR \
                 REPLACE it with an alias)"
            )));
        }
        self.parser.expect_keyword(Keyword::TO)?;
        let new_name = self.parser.parse_identifier()?;
        Ok(Statement::Rename {
            kind: Some(kind),
            name: table_reference(&name)?,
            new_name: ident_value(&new_name),
            if_exists,
        })
    }

    /// `SUSPEND | RESUME | REFRESH | SET (option = value, …)` after
    /// `ALTER MATERIALIZED VIEW name`; `None` when another alteration follows.
    fn view_alteration(&mut self) -> Result<Option<ViewAlteration>> {
        let next = self.parser.peek_token_ref();
        let action = if is_word(next, "suspend") {
            ViewAlteration::Suspend
        } else if is_word(next, "resume") {
            ViewAlteration::Resume
        } else if is_word(next, "refresh") {
            ViewAlteration::Refresh
        } else if is_word(next, "set") {
            self.parser.next_token();
            let options = self.option_list("ALTER MATERIALIZED VIEW … SET")?;
            if options.is_empty() {
                return Err(syntax("ALTER MATERIALIZED VIEW … SET needs at least one option"));
            }
            return Ok(Some(ViewAlteration::Set(options.into_iter().collect())));
        } else {
            return Ok(None);
        };
        self.parser.next_token();
        Ok(Some(action))
    }

    /// `CREATE [OR REPLACE] MATERIALIZED TABLE` is next (Flink's spelling).
    fn materialized_table_ahead(&self) -> bool {
        let word = |n: usize, w: &str| is_word(self.parser.peek_nth_token_ref(n), w);
        let n = if word(1, "or") && word(2, "replace") { 3 } else { 1 };
        word(n, "materialized") && word(n + 1, "table")
    }

    /// `CREATE` (consumed) `[OR REPLACE] MATERIALIZED TABLE [IF NOT EXISTS] name
    /// [(columns)] [FRESHNESS = INTERVAL 'n' unit] [REFRESH_MODE = CONTINUOUS |
    /// FULL] [WITH (…)] AS query`: Flink's materialized table, as a
    /// materialized view with those options.
    fn materialized_table(&mut self) -> Result<Statement> {
        let or_replace = self.parser.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
        self.parser.expect_keyword(Keyword::MATERIALIZED)?;
        self.parser.expect_keyword(Keyword::TABLE)?;
        let if_not_exists = self.parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = self.parser.parse_object_name(false)?;
        let mut columns = Vec::new();
        if self.parser.consume_token(&Token::LParen) {
            loop {
                columns.push(ident_value(&self.parser.parse_identifier()?));
                if self.parser.consume_token(&Token::RParen) {
                    break;
                }
                self.parser.expect_token(&Token::Comma)?;
            }
        }
        let mut options = BTreeMap::new();
        loop {
            let next = self.parser.peek_token_ref();
            if is_word(next, "freshness") {
                self.parser.next_token();
                self.parser.expect_token(&Token::Eq)?;
                let interval = match self.parser.parse_expr()? {
                    ast::Expr::Interval(interval) => interval,
                    other => {
                        return Err(syntax(format!(
                            "FRESHNESS takes an interval, as in FRESHNESS = INTERVAL '5' MINUTE, not {other}"
                        )));
                    }
                };
                let value = expr_text(&interval.value);
                let unit = interval.leading_field.map(|f| f.to_string()).unwrap_or_default();
                options.insert("freshness".to_string(), format!("{value} {unit}").trim().to_string());
            } else if is_word(next, "refresh_mode") {
                self.parser.next_token();
                self.parser.expect_token(&Token::Eq)?;
                let mode = self.parser.next_token();
                let mode = match &mode.token {
                    Token::Word(w) => w.value.to_ascii_lowercase(),
                    Token::SingleQuotedString(s) => s.to_ascii_lowercase(),
                    _ => return self.parser.expected("CONTINUOUS or FULL after REFRESH_MODE =", mode)?,
                };
                options.insert("refresh_mode".to_string(), mode);
            } else if self.parser.parse_keyword(Keyword::WITH) {
                self.parser.prev_token();
                let with = self.parser.parse_options(Keyword::WITH)?;
                options.extend(sql_options(&with)?);
            } else {
                break;
            }
        }
        self.parser.expect_keyword(Keyword::AS)?;
        let query = self.parser.parse_query()?;
        Ok(Statement::CreateMaterializedView(Box::new(CreateMaterializedView {
            name: table_reference(&name)?,
            query,
            columns,
            if_not_exists,
            or_replace,
            options,
        })))
    }

    /// `CREATE [OR REPLACE] [TEMP | TEMPORARY] TABLE` is next.
    fn create_table_ahead(&self) -> bool {
        let mut n = 1;
        let word = |n: usize, w: &str| is_word(self.parser.peek_nth_token_ref(n), w);
        if word(n, "or") && word(n + 1, "replace") {
            n += 2;
        }
        if word(n, "temp") || word(n, "temporary") {
            n += 1;
        }
        word(n, "table")
    }

    /// `SUBSCRIBE` (already consumed) `[TO] rel [AS OF …] [WITH (…)]`.
    fn subscribe(&mut self) -> Result<Subscribe> {
        // `TO` is optional; a table named "to" is `SUBSCRIBE TO to` or `SUBSCRIBE "to"`.
        let _ = self.parser.parse_keyword(Keyword::TO);
        if matches!(self.parser.peek_token_ref().token, Token::EOF | Token::SemiColon | Token::RParen) {
            return self.parser.expected_ref("a table name after SUBSCRIBE TO", self.parser.peek_token_ref())?;
        }
        let relation = table_reference(&self.parser.parse_object_name(false)?)?;
        let mut options = SubscribeOptions::default();
        if self.parser.parse_keywords(&[Keyword::AS, Keyword::OF]) {
            let timestamp = self.parser.parse_keyword(Keyword::TIMESTAMP);
            if !timestamp {
                let _ = self.parser.parse_keyword(Keyword::SNAPSHOT);
            }
            let token = self.parser.next_token();
            options.start = match (&token.token, timestamp) {
                (Token::Number(n, _), false) => {
                    Start::Snapshot(n.parse::<u64>().ok().filter(|&id| id > 0).ok_or_else(|| {
                        Error::invalid(format!("AS OF SNAPSHOT needs a positive snapshot id, got \"{n}\""))
                    })?)
                }
                (Token::SingleQuotedString(s), true) => Start::Timestamp(timestamp_ms(s)?),
                (_, false) => return self.parser.expected("a snapshot id after AS OF SNAPSHOT", token)?,
                (_, true) => return self.parser.expected("a timestamp string after AS OF TIMESTAMP", token)?,
            };
        }
        if self.parser.parse_keyword(Keyword::WITH) {
            for (key, value) in self.option_list("SUBSCRIBE … WITH")? {
                match key.as_str() {
                    "snapshot" => {
                        options.snapshot = parse_bool(&value).ok_or_else(|| {
                            Error::invalid(format!("SUBSCRIBE option snapshot takes true or false, got \"{value}\""))
                        })?;
                    }
                    "consumer" => {
                        if value.is_empty() {
                            return Err(Error::invalid("SUBSCRIBE option consumer needs a name"));
                        }
                        options.consumer = Some(value);
                    }
                    other => {
                        return Err(Error::invalid(format!(
                            "unknown SUBSCRIBE option \"{other}\" (options: snapshot, consumer)"
                        )));
                    }
                }
            }
        }
        Ok(Subscribe { relation, options })
    }

    /// `( key [=] value, … )`: keys lower-cased, values as written (strings unquoted).
    fn option_list(&mut self, statement: &str) -> Result<Vec<(String, String)>> {
        self.parser.expect_token(&Token::LParen)?;
        let mut options = Vec::new();
        if self.parser.consume_token(&Token::RParen) {
            return Ok(options);
        }
        loop {
            let key = self.parser.next_token();
            let key = match &key.token {
                Token::Word(w) => w.value.to_ascii_lowercase(),
                Token::SingleQuotedString(s) => s.to_ascii_lowercase(),
                _ => return self.parser.expected(&format!("an option name in {statement} (…)"), key)?,
            };
            let _ = self.parser.consume_token(&Token::Eq);
            let value = self.parser.next_token();
            let value = match &value.token {
                Token::Word(w) => w.value.clone(),
                Token::SingleQuotedString(s) => s.clone(),
                Token::Number(n, _) => n.clone(),
                _ => return self.parser.expected(&format!("a value for {statement} option {key}"), value)?,
            };
            options.push((key, value));
            if self.parser.consume_token(&Token::RParen) {
                return Ok(options);
            }
            if !self.parser.consume_token(&Token::Comma) {
                return self
                    .parser
                    .expected_ref(&format!(", or ) in {statement} (…)"), self.parser.peek_token_ref())?;
            }
        }
    }

    /// `FETCH` (already consumed) `[direction] [FROM | IN] cursor [WITH (timeout = …)]`.
    fn fetch(&mut self) -> Result<Statement> {
        let count = if self.parser.parse_keyword(Keyword::NEXT) {
            Some(1)
        } else if self.parser.parse_keyword(Keyword::ALL) {
            None
        } else if self.parser.parse_keyword(Keyword::FORWARD) {
            if self.parser.parse_keyword(Keyword::ALL) {
                None
            } else if matches!(self.parser.peek_token_ref().token, Token::Number(..)) {
                Some(self.fetch_count()?)
            } else {
                Some(1)
            }
        } else if matches!(self.parser.peek_token_ref().token, Token::Number(..)) {
            Some(self.fetch_count()?)
        } else if let Some(keyword) = self.parser.parse_one_of_keywords(&[
            Keyword::PRIOR,
            Keyword::FIRST,
            Keyword::LAST,
            Keyword::ABSOLUTE,
            Keyword::RELATIVE,
            Keyword::BACKWARD,
        ]) {
            return Err(unsupported_fetch(&format!("FETCH {keyword:?}")));
        } else {
            Some(1)
        };
        let _ = self.parser.parse_one_of_keywords(&[Keyword::FROM, Keyword::IN]);
        let name = ident_value(&self.parser.parse_identifier()?);
        let mut timeout = None;
        if self.parser.parse_keyword(Keyword::WITH) {
            for (key, value) in self.option_list("FETCH … WITH")? {
                if key != "timeout" {
                    return Err(Error::invalid(format!(
                        "unknown FETCH option \"{key}\" (FETCH … WITH (timeout = '1s'))"
                    )));
                }
                timeout = Some(parse_duration(&value)?);
            }
        }
        Ok(Statement::Fetch { name, count, timeout })
    }

    fn fetch_count(&mut self) -> Result<u64> {
        let token = self.parser.next_token();
        match &token.token {
            Token::Number(n, _) => n.parse::<u64>().map_err(|_| Error::invalid(format!("invalid FETCH count {n}"))),
            _ => self.parser.expected("a row count", token)?,
        }
    }

    /// `DECLARE` (already consumed) `c [BINARY] [INSENSITIVE] [[NO] SCROLL] CURSOR [WITH | WITHOUT HOLD] FOR …`.
    fn declare(&mut self) -> Result<Statement> {
        let name = ident_value(&self.parser.parse_identifier()?);
        loop {
            if self.parser.parse_keyword(Keyword::BINARY) {
                return Err(Error::unsupported("BINARY cursors are not supported"));
            } else if self.parser.parse_keywords(&[Keyword::NO, Keyword::SCROLL])
                || self.parser.parse_one_of_keywords(&[Keyword::INSENSITIVE, Keyword::ASENSITIVE]).is_some()
            {
            } else if self.parser.parse_keyword(Keyword::SCROLL) {
                return Err(unsupported_fetch("SCROLL cursors"));
            } else {
                break;
            }
        }
        if !self.parser.parse_keyword(Keyword::CURSOR) {
            return Err(Error::unsupported("DECLARE is only supported for cursors: DECLARE c CURSOR FOR query"));
        }
        let hold = if self.parser.parse_keywords(&[Keyword::WITH, Keyword::HOLD]) {
            true
        } else {
            let _ = self.parser.parse_keywords(&[Keyword::WITHOUT, Keyword::HOLD]);
            false
        };
        self.parser.expect_keyword(Keyword::FOR)?;
        let query = self.query_or_subscribe()?;
        Ok(Statement::Declare { name, query: Box::new(query), hold })
    }

    /// A query, or `SUBSCRIBE …` where one may stand (cursors, COPY).
    fn query_or_subscribe(&mut self) -> Result<Statement> {
        if is_word(self.parser.peek_token_ref(), "subscribe") {
            self.parser.next_token();
            return Ok(Statement::Subscribe(self.subscribe()?));
        }
        let query = self.parser.parse_query()?;
        match compatible(ast::Statement::Query(query))? {
            ast::Statement::Query(query) => Ok(Statement::Plan(Box::new(ast::Statement::Query(query)))),
            _ => Err(Error::internal("a compatibility rule turned a query into another statement")),
        }
    }

    /// `COPY` (already consumed) `{ t [(columns)] | (query) } { FROM STDIN | TO STDOUT } [[WITH] (options)] [options]`.
    fn copy(&mut self) -> Result<Statement> {
        enum Source {
            Table(datafusion::common::TableReference, Vec<String>),
            Query(Statement),
        }
        let source = if self.parser.consume_token(&Token::LParen) {
            let query = self.query_or_subscribe()?;
            self.parser.expect_token(&Token::RParen)?;
            Source::Query(query)
        } else {
            let table = table_reference(&self.parser.parse_object_name(false)?)?;
            let columns = if self.parser.consume_token(&Token::LParen) {
                let columns = self.parser.parse_comma_separated(Parser::parse_identifier)?;
                self.parser.expect_token(&Token::RParen)?;
                columns.iter().map(ident_value).collect()
            } else {
                vec![]
            };
            Source::Table(table, columns)
        };
        let to = match self.parser.parse_one_of_keywords(&[Keyword::FROM, Keyword::TO]) {
            Some(Keyword::TO) => true,
            Some(_) => false,
            None => return self.parser.expected_ref("FROM or TO", self.parser.peek_token_ref())?,
        };
        let target = self.parser.next_token();
        let direction = if to { "TO" } else { "FROM" };
        let stream = if to { "TO STDOUT" } else { "FROM STDIN" };
        match &target.token {
            Token::Word(w) if w.keyword == Keyword::STDIN && !to => {}
            Token::Word(w) if w.keyword == Keyword::STDOUT && to => {}
            Token::Word(w) if w.keyword == Keyword::STDIN => {
                return Err(Error::invalid("COPY TO writes to STDOUT, not STDIN"));
            }
            Token::Word(w) if w.keyword == Keyword::STDOUT => {
                return Err(Error::invalid("COPY FROM reads from STDIN, not STDOUT"));
            }
            Token::Word(w) if w.keyword == Keyword::PROGRAM => {
                let command = self.parser.parse_literal_string()?;
                return Err(refuse_files(direction, &format!("PROGRAM '{command}'"), stream));
            }
            Token::SingleQuotedString(file) => return Err(refuse_files(direction, &format!("'{file}'"), stream)),
            _ => return self.parser.expected("STDIN or STDOUT", target)?,
        }
        let options = CopyOptions::from_options(&self.copy_options()?)?;
        match (source, to) {
            (Source::Table(table, columns), false) => {
                Ok(Statement::Copy(Box::new(Copy::From { table, columns, options })))
            }
            (Source::Table(table, columns), true) => {
                Ok(Statement::Copy(Box::new(Copy::TableTo { table, columns, options })))
            }
            (Source::Query(query), true) => {
                Ok(Statement::Copy(Box::new(Copy::QueryTo { query: Box::new(query), options })))
            }
            (Source::Query(_), false) => {
                Err(syntax("COPY ... FROM does not support query as a source: a query can only be copied TO"))
            }
        }
    }

    /// COPY options: `[WITH] (name [value], …)` and the older unparenthesized forms.
    fn copy_options(&mut self) -> Result<Vec<CopyOption>> {
        let mut options = Vec::new();
        let with = self.parser.parse_keyword(Keyword::WITH);
        if self.parser.consume_token(&Token::LParen) {
            loop {
                let name = self.parser.next_token();
                let name = match &name.token {
                    Token::Word(w) => w.value.to_ascii_lowercase(),
                    _ => return self.parser.expected("a COPY option", name)?,
                };
                let value = match &self.parser.peek_token_ref().token {
                    Token::Comma | Token::RParen => None,
                    _ => {
                        let token = self.parser.next_token();
                        Some(match &token.token {
                            Token::Word(w) => w.value.clone(),
                            Token::SingleQuotedString(s) | Token::EscapedStringLiteral(s) => s.clone(),
                            Token::Number(n, _) => n.clone(),
                            _ => {
                                return Err(Error::unsupported(format!(
                                    "COPY option {} {} is not supported",
                                    name.to_ascii_uppercase(),
                                    token.token
                                )));
                            }
                        })
                    }
                };
                options.push(copy_option(&name, value)?);
                if self.parser.consume_token(&Token::RParen) {
                    break;
                }
                if !self.parser.consume_token(&Token::Comma) {
                    return self.parser.expected_ref(", or ) in COPY options", self.parser.peek_token_ref())?;
                }
            }
        } else if with && !self.legacy_option_ahead() {
            return self.parser.expected_ref("( after COPY … WITH", self.parser.peek_token_ref())?;
        }
        // The syntax before Postgres 9.0: `BINARY`, `DELIMITER 'x'`, `CSV HEADER QUOTE '"'` …
        while self.legacy_option_ahead() {
            let word = self.parser.next_token();
            let Token::Word(w) = &word.token else { break };
            let name = w.value.to_ascii_lowercase();
            match name.as_str() {
                "binary" => options.push(CopyOption::Format("binary".into())),
                "csv" => options.push(CopyOption::Format("csv".into())),
                "header" => options.push(CopyOption::Header(true)),
                "delimiter" | "null" | "quote" | "escape" => {
                    let _ = self.parser.parse_keyword(Keyword::AS);
                    let value = self.parser.parse_literal_string()?;
                    options.push(copy_option(&name, Some(value))?);
                }
                other => {
                    return Err(Error::unsupported(format!(
                        "COPY option {} is not supported",
                        other.to_ascii_uppercase()
                    )));
                }
            }
        }
        Ok(options)
    }

    fn legacy_option_ahead(&self) -> bool {
        ["binary", "csv", "header", "delimiter", "null", "quote", "escape", "force", "oids"]
            .iter()
            .any(|w| is_word(self.parser.peek_token_ref(), w))
    }

    /// `CREATE` (already consumed) `[OR REPLACE] [TEMP] TABLE [IF NOT EXISTS] t [(elements)] [WITH (…)] [AS query]`,
    /// where an element is a column, a table constraint or `WATERMARK FOR column AS expression`.
    fn create_table(&mut self) -> Result<Statement> {
        let or_replace = self.parser.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
        let temporary = self.parser.parse_one_of_keywords(&[Keyword::TEMP, Keyword::TEMPORARY]).is_some();
        self.parser.expect_keyword(Keyword::TABLE)?;
        let if_not_exists = self.parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = self.parser.parse_object_name(false)?;
        let (mut columns, mut constraints) = (Vec::new(), Vec::new());
        let mut watermark: Option<String> = None;
        if self.parser.consume_token(&Token::LParen) && !self.parser.consume_token(&Token::RParen) {
            loop {
                if is_word(self.parser.peek_token_ref(), "watermark")
                    && is_word(self.parser.peek_nth_token_ref(1), "for")
                {
                    self.parser.next_token();
                    self.parser.next_token();
                    if watermark.is_some() {
                        return Err(syntax("a table has at most one WATERMARK FOR clause"));
                    }
                    watermark = Some(self.watermark()?);
                } else if let Some(constraint) = self.parser.parse_optional_table_constraint()? {
                    constraints.push(constraint);
                } else {
                    columns.push(self.parser.parse_column_def()?);
                }
                if self.parser.consume_token(&Token::RParen) {
                    break;
                }
                if !self.parser.consume_token(&Token::Comma) {
                    return self
                        .parser
                        .expected_ref("',' or ')' after column definition", self.parser.peek_token_ref())?;
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for column in &columns {
            let folded = ident_value(&column.name);
            if !names.insert(folded.clone()) {
                return Err(Error::new(
                    StatusCode::DuplicateColumn,
                    format!("column \"{folded}\" specified more than once"),
                ));
            }
        }
        let mut options = BTreeMap::new();
        if self.parser.peek_keyword(Keyword::WITH) {
            options = sql_options(&self.parser.parse_options(Keyword::WITH)?)?;
        }
        if let Some(watermark) = watermark {
            if options.contains_key("watermark") {
                return Err(Error::invalid(
                    "the watermark is declared twice: as WATERMARK FOR and as the 'watermark' option",
                ));
            }
            options.insert("watermark".into(), watermark);
        }
        let query = if self.parser.parse_keyword(Keyword::AS) { Some(self.parser.parse_query()?) } else { None };
        let create = CreateTableBuilder::new(name)
            .or_replace(or_replace)
            .temporary(temporary)
            .if_not_exists(if_not_exists)
            .columns(columns)
            .constraints(constraints)
            .query(query)
            .build();
        let mut statement = ast::Statement::CreateTable(create);
        super::limits::shape(&mut statement)?;
        let statement = rewrite(statement)?;
        Ok(Statement::CreateTable(Box::new(CreateTable { statement, options })))
    }

    /// `WATERMARK FOR` (consumed) `column AS column [- delay]`, as the `watermark` option's value.
    fn watermark(&mut self) -> Result<String> {
        let column = ident_value(&self.parser.parse_identifier()?);
        self.parser.expect_keyword(Keyword::AS)?;
        let expression = self.parser.parse_expr()?;
        let is_column = |e: &ast::Expr| matches!(e, ast::Expr::Identifier(i) if ident_value(i) == column);
        match &expression {
            e if is_column(e) => Ok(column),
            ast::Expr::BinaryOp { left, op: ast::BinaryOperator::Minus, right } if is_column(left) => {
                Ok(format!("{column} - {right}"))
            }
            other => Err(Error::unsupported(format!(
                "WATERMARK FOR {column} AS {other}: the watermark is {column}, or {column} minus a delay (like {column} - INTERVAL '5' SECOND)"
            ))),
        }
    }
}

/// COPY to or from a server-side file or program (0A000).
fn refuse_files(direction: &str, target: &str, stream: &str) -> Error {
    Error::unsupported(format!(
        "COPY {direction} {target} is not supported: the server does not read or write files; use COPY … {stream} (psql's \\copy does)"
    ))
}

fn unsupported_fetch(what: &str) -> Error {
    Error::unsupported(format!("{what}: cursors only move forward (FETCH n, FETCH ALL, FETCH NEXT)"))
}

/// One `WITH (…)` COPY option by name.
fn copy_option(name: &str, value: Option<String>) -> Result<CopyOption> {
    let need = |value: Option<String>| {
        value.ok_or_else(|| syntax(format!("COPY option {} needs a value", name.to_ascii_uppercase())))
    };
    Ok(match name {
        "format" => CopyOption::Format(need(value)?.to_ascii_lowercase()),
        "delimiter" => CopyOption::Delimiter(need(value)?),
        "null" => CopyOption::Null(need(value)?),
        "quote" => CopyOption::Quote(need(value)?),
        "escape" => CopyOption::Escape(need(value)?),
        "encoding" => CopyOption::Encoding(need(value)?),
        "header" | "freeze" => {
            let on = match &value {
                None => true,
                Some(v) => parse_bool(v)
                    .ok_or_else(|| Error::invalid(format!("{} requires a Boolean value", name.to_ascii_uppercase())))?,
            };
            if name == "header" { CopyOption::Header(on) } else { CopyOption::Freeze(on) }
        }
        other => {
            return Err(Error::unsupported(format!("COPY option {} is not supported", other.to_ascii_uppercase())));
        }
    })
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" | "1" | "yes" => Some(true),
        "false" | "off" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// `500ms`, `1s`, `2 seconds`, `1min`; a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim().to_ascii_lowercase();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || Error::invalid(format!("invalid FETCH timeout \"{text}\" (e.g. '500ms', '1s')"));
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "second" | "seconds" => value,
        "ms" | "millisecond" | "milliseconds" => value / 1000.0,
        "m" | "min" | "minute" | "minutes" => value * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// A timestamp literal (`AS OF TIMESTAMP '…'`) as ms since the epoch.
fn timestamp_ms(text: &str) -> Result<i64> {
    use datafusion::arrow::array::{Array, AsArray, StringArray};
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
    let parsed = cast(&StringArray::from(vec![text]), &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())));
    match parsed {
        Ok(array) if array.is_valid(0) => Ok(array.as_primitive::<TimestampMillisecondType>().value(0)),
        _ => Err(Error::new(
            StatusCode::InvalidTextRepresentation,
            format!("invalid input syntax for type timestamp with time zone: \"{text}\""),
        )),
    }
}

/// A standard statement, its shape checked ([`super::limits::shape`]),
/// after the compatibility rules: a client catalog query that
/// datafusion-pg-catalog replaces whole (they all read `pg_catalog`) is
/// parsed by it from the statement's own text.
fn compatible(mut statement: ast::Statement) -> Result<ast::Statement> {
    super::limits::shape(&mut statement)?;
    reserved_relation_names(&statement)?;
    rewrite(statement)
}

/// Postgres' reserved words that the SQL parser accepts as a bare table
/// name: `SELECT FROM WHERE x` must be a syntax error, not a table `where`.
const RESERVED: &[&str] = &[
    "where",
    "group",
    "order",
    "having",
    "limit",
    "offset",
    "union",
    "intersect",
    "except",
    "select",
    "from",
    "window",
    "fetch",
    "into",
    "on",
    "using",
    "and",
    "or",
    "not",
    "case",
    "when",
    "then",
    "else",
    "end",
];

fn reserved_relation_names(statement: &ast::Statement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::Visit;
    struct Reserved;
    impl ast::Visitor for Reserved {
        type Break = String;
        fn pre_visit_relation(&mut self, relation: &ast::ObjectName) -> std::ops::ControlFlow<String> {
            match relation.0.as_slice() {
                [ast::ObjectNamePart::Identifier(ident)]
                    if ident.quote_style.is_none() && RESERVED.contains(&ident.value.to_ascii_lowercase().as_str()) =>
                {
                    std::ops::ControlFlow::Break(ident.value.to_ascii_uppercase())
                }
                _ => std::ops::ControlFlow::Continue(()),
            }
        }
    }
    match statement.visit(&mut Reserved) {
        std::ops::ControlFlow::Break(word) => {
            Err(Error::new(StatusCode::InvalidSyntax, format!("syntax error at or near \"{word}\"")))
        }
        std::ops::ControlFlow::Continue(()) => Ok(()),
    }
}

/// `WITH (key = value, …)` as a map: keys lower-cased, string values unquoted.
fn sql_options(list: &[ast::SqlOption]) -> Result<BTreeMap<String, String>> {
    let mut options = BTreeMap::new();
    for option in list {
        match option {
            ast::SqlOption::KeyValue { key, value } => {
                options.insert(key.value.to_ascii_lowercase(), expr_text(value));
            }
            other => {
                return Err(Error::invalid(format!("unsupported table option {other}: use WITH ('key' = 'value')")));
            }
        }
    }
    Ok(options)
}

fn create_table_options(options: &ast::CreateTableOptions) -> Result<BTreeMap<String, String>> {
    match options {
        ast::CreateTableOptions::None => Ok(BTreeMap::new()),
        ast::CreateTableOptions::With(list) => sql_options(list),
        other => Err(Error::unsupported(format!("options {other} are not supported: use WITH ('key' = 'value')"))),
    }
}

/// The text of an option or SET value: string literals unquoted, identifiers as written.
fn expr_text(expr: &ast::Expr) -> String {
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

/// Sorts a statement sqlparser parsed into ours: statements the session
/// runs itself become typed nodes, statements streamhouse refuses are
/// refused here (the one place), the rest is left to DataFusion.
fn classify(statement: ast::Statement) -> Result<Statement> {
    use ast::Statement as S;
    Ok(match statement {
        S::Call(function) => call(&function)?,
        S::CreateView(create) if create.materialized => materialized_view(create)?,
        S::Drop { object_type, if_exists, names, cascade, .. }
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
            Statement::Drop { kind, names, if_exists, cascade }
        }
        S::AlterTable(alter) => alter_table(&alter)?,
        S::Insert(mut insert) => match insert.on.take() {
            None => Statement::Plan(Box::new(S::Insert(insert))),
            Some(on) => {
                let target = on_conflict(on)?;
                Statement::InsertIgnoringConflicts(Box::new(InsertIgnoringConflicts {
                    insert: S::Insert(insert),
                    target,
                }))
            }
        },
        S::Close { cursor } => Statement::Close(match cursor {
            ast::CloseCursor::All => None,
            ast::CloseCursor::Specific { name } => Some(ident_value(&name)),
        }),
        S::Set(set) => set_statement(set)?,
        S::Reset(reset) => match reset.reset {
            ast::Reset::ALL => Statement::Reset(None),
            ast::Reset::ConfigurationParameter(name) if name.to_string().eq_ignore_ascii_case("role") => {
                Statement::SetRole(None)
            }
            ast::Reset::ConfigurationParameter(name) => Statement::Reset(Some(name.to_string())),
        },
        S::ShowVariable { variable } => {
            // The parser gives `SHOW a.b` and `SHOW a b` as the same words:
            // Postgres' few multi-word names are words, anything else one
            // (qualified) parameter name.
            let words = variable.iter().map(|i| i.value.as_str()).collect::<Vec<_>>();
            let spaced = words.join(" ");
            let multi_word = ["time zone", "transaction isolation level", "session authorization"];
            let name = if words.len() == 1 || multi_word.iter().any(|m| spaced.eq_ignore_ascii_case(m)) {
                spaced
            } else {
                words.join(".")
            };
            if name.eq_ignore_ascii_case("all") { Statement::ShowAll } else { Statement::Show(name) }
        }
        S::StartTransaction { .. } => Statement::Begin,
        S::Commit { .. } => Statement::Commit,
        S::Rollback { savepoint: None, .. } => Statement::Rollback,
        S::Rollback { savepoint: Some(name), .. } => Statement::RollbackTo(ident_value(&name)),
        S::Savepoint { name } => Statement::Savepoint(ident_value(&name)),
        S::ReleaseSavepoint { name } => Statement::Release(ident_value(&name)),
        S::Discard { .. } => Statement::Discard,
        // Protocol-level statements are freed by the front end; ALL has nothing more to free here.
        S::Deallocate { name, .. } if name.value.eq_ignore_ascii_case("all") => Statement::NoOp("DEALLOCATE ALL"),
        S::CreateDatabase { .. } => return Err(Error::unsupported("CREATE DATABASE is not supported yet")),
        S::Grant { .. } | S::Revoke { .. } => return Err(Error::unsupported("GRANT/REVOKE is not supported yet")),
        S::CreateRole { .. } | S::CreateUser { .. } => {
            return Err(Error::unsupported("CREATE ROLE/USER is not supported yet"));
        }
        S::Copy { .. } | S::Declare { .. } | S::Fetch { .. } => {
            return Err(Error::internal("COPY, DECLARE and FETCH are parsed by the dialect parser"));
        }
        other => Statement::Plan(Box::new(other)),
    })
}

/// `ON CONFLICT [(columns)] DO NOTHING`: the conflict target's columns.
fn on_conflict(on: ast::OnInsert) -> Result<Option<Vec<String>>> {
    let ast::OnInsert::OnConflict(conflict) = on else {
        return Err(Error::unsupported("ON DUPLICATE KEY UPDATE is not supported: INSERT on a keyed table upserts"));
    };
    if let ast::OnConflictAction::DoUpdate(_) = conflict.action {
        return Err(Error::unsupported(
            "ON CONFLICT DO UPDATE is not supported: a plain INSERT on a table with a primary key upserts",
        ));
    }
    match conflict.conflict_target {
        None => Ok(None),
        Some(ast::ConflictTarget::Columns(columns)) => Ok(Some(columns.iter().map(|c| c.value.clone()).collect())),
        Some(ast::ConflictTarget::OnConstraint(name)) => Err(Error::unsupported(format!(
            "ON CONFLICT ON CONSTRAINT {name} is not supported: name the primary key columns instead"
        ))),
    }
}

/// `CALL sys.compact('t')`, `CALL sys.expire_snapshots('t')`,
/// `CALL sys.remove_orphan_files('t' [, older_than => INTERVAL '…' | 'timestamp'])`,
/// `CALL sys.rollback_to('t', snapshot_id)`; later arguments by position or
/// by name (`=>`), as in Paimon.
fn call(function: &ast::Function) -> Result<Statement> {
    let name = function.name.to_string().to_ascii_lowercase();
    let (usage, parameter) = match name.as_str() {
        "sys.compact" | "sys.expire_snapshots" => ("('table name')", None),
        "sys.remove_orphan_files" => ("('table name' [, older_than => INTERVAL '1 day'])", Some("older_than")),
        "sys.rollback_to" => ("('table name', snapshot_id)", Some("snapshot_id")),
        _ => {
            return Err(Error::new(
                StatusCode::FunctionNotFound,
                format!(
                    "procedure {name} does not exist: available are sys.compact, sys.expire_snapshots, \
                     sys.remove_orphan_files and sys.rollback_to"
                ),
            ));
        }
    };
    let usage = || Error::invalid(format!("usage: CALL {name}{usage}"));
    let ast::FunctionArguments::List(list) = &function.args else { return Err(usage()) };
    let (first, rest) = list.args.split_first().ok_or_else(usage)?;
    let ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Value(value))) = first else {
        return Err(usage());
    };
    let ast::Value::SingleQuotedString(table) = &value.value else { return Err(usage()) };
    // The second argument, by position or by its name.
    let argument = match (rest, parameter) {
        ([], _) => None,
        ([ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e))], Some(_)) => Some(e),
        ([ast::FunctionArg::Named { name: arg, arg: ast::FunctionArgExpr::Expr(e), .. }], Some(parameter))
            if arg.value.eq_ignore_ascii_case(parameter) =>
        {
            Some(e)
        }
        // The Postgres dialect reads `name => value` with the name as an expression.
        (
            [
                ast::FunctionArg::ExprNamed {
                    name: ast::Expr::Identifier(arg),
                    arg: ast::FunctionArgExpr::Expr(e),
                    ..
                },
            ],
            Some(parameter),
        ) if arg.value.eq_ignore_ascii_case(parameter) => Some(e),
        _ => return Err(usage()),
    };
    let procedure = match (name.as_str(), argument) {
        ("sys.compact", _) => Procedure::Compact,
        ("sys.expire_snapshots", _) => Procedure::ExpireSnapshots,
        ("sys.remove_orphan_files", None) => Procedure::RemoveOrphanFiles(Cutoff::DEFAULT),
        ("sys.remove_orphan_files", Some(ast::Expr::Interval(_))) => {
            let age = super::windows::interval_ms(argument.ok_or_else(usage)?)?;
            Procedure::RemoveOrphanFiles(Cutoff::AgeMs(age))
        }
        ("sys.remove_orphan_files", Some(ast::Expr::Value(v))) => match &v.value {
            ast::Value::SingleQuotedString(time) => Procedure::RemoveOrphanFiles(Cutoff::BeforeMs(timestamp_ms(time)?)),
            _ => return Err(usage()),
        },
        ("sys.rollback_to", Some(ast::Expr::Value(v))) => match &v.value {
            ast::Value::Number(n, _) => Procedure::RollbackTo(n.parse().map_err(|_| {
                Error::new(StatusCode::InvalidParameterValue, format!("snapshot id {n} is not a snapshot id"))
            })?),
            _ => return Err(usage()),
        },
        _ => return Err(usage()),
    };
    // The argument is a relation name as written in SQL: `'s.t'`, `'"Mixed Case"'`.
    let name = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(table)
        .and_then(|mut p| {
            let name = p.parse_object_name(false)?;
            p.expect_token(&Token::EOF)?;
            Ok(name)
        })
        .map_err(|_| Error::invalid(format!("CALL {name}: '{table}' is not a table name")))?;
    Ok(Statement::Call { procedure, table: table_reference(&name)? })
}

/// `ALTER TABLE … ADD COLUMN …`, `ALTER TABLE … RENAME TO …` and `ALTER
/// TABLE … RENAME COLUMN … TO …`; any other alteration is refused.
fn alter_table(alter: &ast::AlterTable) -> Result<Statement> {
    if let [ast::AlterTableOperation::RenameColumn { old_column_name, new_column_name }] = alter.operations.as_slice() {
        return Ok(Statement::RenameColumn {
            table: table_reference(&alter.name)?,
            column: ident_value(old_column_name),
            new_name: ident_value(new_column_name),
            if_exists: alter.if_exists,
        });
    }
    if let [ast::AlterTableOperation::RenameTable { table_name }] = alter.operations.as_slice() {
        let (ast::RenameTableNameKind::To(new_name) | ast::RenameTableNameKind::As(new_name)) = table_name;
        let [new_name] = new_name.0.as_slice() else {
            return Err(syntax(format!("RENAME TO takes a name without a schema, not {new_name}")));
        };
        let new_name = new_name.as_ident().map(ident_value).unwrap_or_else(|| new_name.to_string());
        return Ok(Statement::Rename {
            kind: None,
            name: table_reference(&alter.name)?,
            new_name,
            if_exists: alter.if_exists,
        });
    }
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
        columns.push(AddColumn {
            name: ident_value(&column_def.name),
            data_type: column_def.data_type.clone(),
            if_not_exists: *if_not_exists,
        });
    }
    Ok(Statement::AddColumns { table: table_reference(&alter.name)?, if_exists: alter.if_exists, columns })
}

/// `CREATE [OR REPLACE] MATERIALIZED VIEW [IF NOT EXISTS] v [(columns)] [WITH (…)] AS query`.
fn materialized_view(create: ast::CreateView) -> Result<Statement> {
    if create.temporary {
        return Err(Error::unsupported("temporary materialized views are not supported"));
    }
    if create.to.is_some() {
        return Err(Error::unsupported("CREATE MATERIALIZED VIEW … TO table is not supported"));
    }
    Ok(Statement::CreateMaterializedView(Box::new(CreateMaterializedView {
        name: table_reference(&create.name)?,
        columns: create.columns.iter().map(|c| ident_value(&c.name)).collect(),
        if_not_exists: create.if_not_exists,
        or_replace: create.or_replace,
        options: create_table_options(&create.options)?,
        query: create.query,
    })))
}

fn set_statement(set: ast::Set) -> Result<Statement> {
    use ast::Set;
    Ok(match set {
        Set::SingleAssignment { scope, variable, values, .. } => {
            let local = matches!(scope, Some(ast::ContextModifier::Local));
            let name = variable.to_string();
            let value = values.iter().map(expr_text).collect::<Vec<_>>().join(", ");
            if value.eq_ignore_ascii_case("default") {
                Statement::Reset(Some(name))
            } else {
                Statement::Set { name, value, local }
            }
        }
        Set::SetTimeZone { local, value } => {
            let value = expr_text(&value);
            if value.eq_ignore_ascii_case("default") || value.eq_ignore_ascii_case("local") {
                Statement::Reset(Some("TimeZone".into()))
            } else {
                Statement::Set { name: "TimeZone".into(), value, local }
            }
        }
        Set::SetNames { charset_name, .. } => {
            Statement::Set { name: "client_encoding".into(), value: charset_name.value.clone(), local: false }
        }
        Set::SetNamesDefault {} => Statement::Reset(Some("client_encoding".into())),
        Set::SetRole { context_modifier: Some(ast::ContextModifier::Local), .. } => {
            return Err(Error::unsupported("SET LOCAL ROLE is not supported: use SET ROLE and RESET ROLE"));
        }
        Set::SetRole { role_name, .. } => Statement::SetRole(role_name.as_ref().map(ident_value)),
        // Every statement is its own transaction, so transaction characteristics have nothing to change.
        Set::SetTransaction { .. } => Statement::NoOp("SET"),
        Set::MultipleAssignments { .. } | Set::ParenthesizedAssignments { .. } => {
            return Err(syntax("SET takes one parameter at a time"));
        }
        other => return Err(Error::unsupported(format!("{other} is not supported"))),
    })
}
