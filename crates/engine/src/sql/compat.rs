//! Postgres expressions DataFusion does not plan, rewritten on the AST into
//! ones it does, with the same result:
//!
//! - `ARRAY(SELECT e FROM … [ORDER BY …])` → `(SELECT array_agg(e [ORDER BY …]) FROM …)`
//!   (an aggregate over the same rows; a subquery that is not a plain
//!   SELECT is wrapped as a derived table first);
//! - `generate_subscripts(a, 1)` → `unnest(generate_series(1, array_length(a, 1)))`;
//! - `x LIKE p ESCAPE 'c'` with `c` other than `\` → `x LIKE pg_like_escape(p, 'c')`,
//!   which rewrites the pattern to DataFusion's backslash escapes when it runs;
//! - `information_schema._pg_expandarray(a)` → `unnest(pg_expandarray(a))`
//!   (records of element and position, row by row);
//! - `'{a,"b c",NULL}'::t[]` → `CAST(ARRAY[CAST('a' AS t), CAST('b c' AS t), CAST(NULL AS t)] AS t[])`:
//!   the literal read as Postgres' array_in reads it (22P02 when malformed);
//! - `(e).field` → `get_field(e, 'field')`: a field of a record-valued expression;
//! - `FROM unnest(a) AS t` → `FROM unnest(a) AS t(t)`: a function returning
//!   one column names that column after its table alias, as in Postgres;
//! - `FROM f(x) AS s` for a scalar `f` → `FROM (SELECT f(x) AS s) AS s`;
//! - an unquoted `user` → `current_user` (a keyword in Postgres);
//! - an integer literal past `u64` of up to 38 digits → `CAST('…' AS numeric(n, 0))`,
//!   exact as in Postgres (DataFusion reads it as a double);
//! - `FROM t AS a CROSS JOIN unnest(a.x) AS u` (and `FROM t AS a, unnest(a.x)
//!   AS u`), where the function reads the row before it (implicitly LATERAL
//!   in Postgres) → `FROM (SELECT a.*, unnest(a.x) AS u FROM t AS a) AS a`.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident, ObjectName,
    Query, Select, SelectItem, SetExpr, Value, visit_expressions_mut,
};

/// System catalogs that never have a row here: no row security policies,
/// publications, extended statistics, inheritance or triggers.
const ALWAYS_EMPTY: &[&str] = &[
    "pg_policy",
    "pg_publication",
    "pg_publication_rel",
    "pg_publication_namespace",
    "pg_statistic_ext",
    "pg_inherits",
    "pg_trigger",
];

/// In each SELECT that inner-joins a catalog that is always empty, replaces
/// the subquery expressions of its select list by NULL and its WHERE clause
/// by FALSE: no
/// row exists to evaluate them on, so their value cannot matter, and psql's
/// `\d` writes some there that could not be planned (correlated by `= ANY`,
/// or a lateral `generate_series` over an outer column).
pub fn skip_subqueries_over_empty_catalogs(statement: &mut ast::Statement) {
    struct Skip;
    impl ast::VisitorMut for Skip {
        type Break = ();
        fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            skip_in(query.body.as_mut());
            ControlFlow::Continue(())
        }
    }
    let _ = ast::VisitMut::visit(statement, &mut Skip);
}

fn skip_in(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) if joins_empty_catalog(select) => {
            let nulls = |expr: &mut Expr| {
                let subquery = matches!(expr, Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. })
                    || matches!(expr, Expr::Function(f) if is_array_subquery(f));
                if subquery {
                    *expr = Expr::value(Value::Null);
                }
                ControlFlow::<()>::Continue(())
            };
            let _ = visit_expressions_mut(&mut select.projection, nulls);
            // The WHERE clause cannot select a row either (psql's compares
            // with untyped literals a function signature would refuse).
            if select.selection.is_some() {
                select.selection = Some(Expr::value(Value::Boolean(false)));
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            skip_in(left);
            skip_in(right);
        }
        _ => {}
    }
}

fn joins_empty_catalog(select: &Select) -> bool {
    let empty = |factor: &ast::TableFactor| match factor {
        ast::TableFactor::Table { name, args: None, .. } => name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| ALWAYS_EMPTY.contains(&i.value.to_ascii_lowercase().as_str())),
        _ => false,
    };
    select.from.iter().any(|from| {
        empty(&from.relation)
            || from.joins.iter().any(|join| {
                matches!(
                    join.join_operator,
                    ast::JoinOperator::Join(_) | ast::JoinOperator::Inner(_) | ast::JoinOperator::CrossJoin(_)
                ) && empty(&join.relation)
            })
    })
}

/// The function `'name'::regclass` is rewritten to.
pub const REGCLASS_FUNCTION: &str = "pg_regclass";

/// `'name'::regclass` (a literal or a parameter) → `pg_regclass('name')`,
/// which finds system catalogs (`'pg_class'::regclass` is 1259, as in
/// Postgres) as well as user relations. Runs before the crate's rules.
pub fn rewrite_regclass(statement: &mut ast::Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Cast { expr: operand, data_type, .. } = expr
            && is_regclass(data_type)
            && is_text_operand(operand)
        {
            let operand = std::mem::replace(operand.as_mut(), Expr::value(Value::Null));
            *expr = call(REGCLASS_FUNCTION, vec![operand]);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// An operand of `::regclass` that is text: a literal, a parameter, a
/// concatenation, or a call of a function that returns text (Metabase casts
/// `format('%I.%I', schema, name)`). An oid column cast to regclass is not.
fn is_text_operand(operand: &Expr) -> bool {
    const TEXT_FUNCTIONS: &[&str] = &["format", "concat", "concat_ws", "quote_ident", "lower", "upper", "trim"];
    match operand {
        Expr::Value(v) => matches!(v.value, Value::SingleQuotedString(_) | Value::Placeholder(_)),
        Expr::BinaryOp { op: ast::BinaryOperator::StringConcat, .. } => true,
        Expr::Function(function) => TEXT_FUNCTIONS.iter().any(|f| is_named(function, f)),
        Expr::Nested(inner) => is_text_operand(inner),
        _ => false,
    }
}

fn is_regclass(data_type: &ast::DataType) -> bool {
    match data_type {
        ast::DataType::Regclass => true,
        ast::DataType::Custom(name, modifiers) if modifiers.is_empty() => {
            let parts: Vec<String> =
                name.0.iter().filter_map(|p| p.as_ident().map(|i| i.value.to_ascii_lowercase())).collect();
            matches!(parts.as_slice(), [t] if t == "regclass")
                || matches!(parts.as_slice(), [s, t] if s == "pg_catalog" && t == "regclass")
        }
        _ => false,
    }
}

/// The function `_pg_expandarray` is rewritten to (under `unnest`).
pub const EXPAND_ARRAY_FUNCTION: &str = "pg_expandarray";

/// The function `LIKE … ESCAPE` patterns are translated with.
pub const LIKE_ESCAPE_FUNCTION: &str = "pg_like_escape";

/// Functions in FROM that return a single column (`unnest` of one array,
/// `generate_series`), aliased without column names: the column is named
/// after the alias, as Postgres names it (`CROSS JOIN unnest(conkey) AS k
/// … WHERE attnum = k`, which the ADBC PostgreSQL driver sends).
pub fn name_single_column_functions(statement: &mut ast::Statement) {
    struct Name;
    impl ast::VisitorMut for Name {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut ast::TableFactor) -> ControlFlow<()> {
            if let Some(derived) = scalar_function_in_from(factor) {
                *factor = derived;
                return ControlFlow::Continue(());
            }
            let alias =
                match factor {
                    ast::TableFactor::UNNEST {
                        alias, array_exprs, with_offset: false, with_ordinality: false, ..
                    } if array_exprs.len() == 1 => alias,
                    ast::TableFactor::Table { name, args: Some(_), alias, with_ordinality: false, .. }
                        if name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| {
                            ["generate_series", "unnest"].iter().any(|f| i.value.eq_ignore_ascii_case(f))
                        }) =>
                    {
                        alias
                    }
                    _ => return ControlFlow::Continue(()),
                };
            if let Some(alias) = alias
                && alias.columns.is_empty()
            {
                alias.columns.push(ast::TableAliasColumnDef::from_name(alias.name.value.clone()));
            }
            ControlFlow::Continue(())
        }
    }
    let _ = ast::VisitMut::visit(statement, &mut Name);
}

/// Table functions DataFusion and streamhouse provide (`tumble` and `hop`:
/// window table functions, sql/windows.rs); any other function
/// in FROM is a scalar function.
const TABLE_FUNCTIONS: &[&str] = &["generate_series", "range", "unnest", "table_as_of", "tumble", "hop"];

/// A scalar function in FROM (`FROM string_to_array(x, ',') AS s`, which
/// Grafana sends): one row whose one column is the function's value, named
/// after the alias (or the function) as in Postgres →
/// `(SELECT f(args) AS s) AS s`.
fn scalar_function_in_from(factor: &ast::TableFactor) -> Option<ast::TableFactor> {
    let ast::TableFactor::Table { name, args: Some(args), alias, with_ordinality: false, .. } = factor else {
        return None;
    };
    let function = name.0.last()?.as_ident()?;
    if TABLE_FUNCTIONS.iter().any(|f| function.value.eq_ignore_ascii_case(f)) || args.settings.is_some() {
        return None;
    }
    let (table, column) = match alias {
        Some(alias) => match alias.columns.as_slice() {
            [] => (alias.name.clone(), alias.name.clone()),
            [column] => (alias.name.clone(), column.name.clone()),
            _ => return None,
        },
        None => (function.clone(), function.clone()),
    };
    let mut value = call(&function.value, vec![]);
    if let Expr::Function(f) = &mut value {
        f.name = name.clone();
        if let FunctionArguments::List(list) = &mut f.args {
            list.args = args.args.clone();
        }
    }
    let mut query = template("SELECT NULL AS _column")?;
    let SetExpr::Select(select) = query.body.as_mut() else { return None };
    select.projection = vec![SelectItem::ExprWithAlias { expr: value, alias: column }];
    Some(derived(query, table))
}

/// The query of a constant SQL template, whose pieces a rewrite replaces.
fn template(sql: &str) -> Option<Box<Query>> {
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    let mut statements = datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, sql).ok()?;
    match statements.pop() {
        Some(ast::Statement::Query(query)) => Some(query),
        _ => None,
    }
}

/// `(query) AS name`.
fn derived(query: Box<Query>, name: Ident) -> ast::TableFactor {
    ast::TableFactor::Derived {
        lateral: false,
        subquery: query,
        alias: Some(ast::TableAlias { explicit: true, name, columns: vec![], at: None }),
        sample: None,
    }
}

/// `unnest` in FROM over a column of the relation before it, which
/// DataFusion cannot plan as a lateral join: moved into a derived table over
/// that relation (see the module documentation). Only the first join of a
/// FROM item, or a second FROM item after one without joins, is rewritten:
/// there the expression can only read that relation.
pub fn lateral_unnest(statement: &mut ast::Statement) {
    struct Lateral;
    impl ast::VisitorMut for Lateral {
        type Break = ();
        fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            lateral_unnest_in(query.body.as_mut());
            ControlFlow::Continue(())
        }
    }
    let _ = ast::VisitMut::visit(statement, &mut Lateral);
}

fn lateral_unnest_in(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            if let Some(first) = select.from.first_mut()
                && let Some(join) = first.joins.first()
                && matches!(
                    &join.join_operator,
                    ast::JoinOperator::CrossJoin(ast::JoinConstraint::None)
                        | ast::JoinOperator::Inner(ast::JoinConstraint::On(Expr::Value(ast::ValueWithSpan {
                            value: Value::Boolean(true),
                            ..
                        })))
                )
                && let Some((array, column)) = lateral_function(&join.relation)
                && let Some(derived) = over_relation(&first.relation, array, column)
            {
                first.relation = derived;
                first.joins.remove(0);
            } else if select.from.len() == 2
                && select.from[0].joins.is_empty()
                && select.from[1].joins.is_empty()
                && let Some((array, column)) = lateral_function(&select.from[1].relation)
                && let Some(derived) = over_relation(&select.from[0].relation, array, column)
            {
                select.from[0].relation = derived;
                select.from.remove(1);
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            lateral_unnest_in(left);
            lateral_unnest_in(right);
        }
        _ => {}
    }
}

/// The array and result column name of `unnest(array) [AS u[(c)]]` when the
/// array reads a column (a constant array needs no rewrite).
fn lateral_function(factor: &ast::TableFactor) -> Option<(Expr, Ident)> {
    let ast::TableFactor::UNNEST { alias, array_exprs, with_offset: false, with_ordinality: false, .. } = factor else {
        return None;
    };
    let [array] = array_exprs.as_slice() else { return None };
    let reads_column = ast::visit_expressions(array, |e| match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if reads_column.is_continue() {
        return None;
    }
    let column = match alias {
        Some(alias) => match alias.columns.as_slice() {
            [] => alias.name.clone(),
            [column] => column.name.clone(),
            _ => return None,
        },
        None => Ident::new("unnest"),
    };
    Some((array.clone(), column))
}

/// `(SELECT a.*, unnest(array) AS column FROM relation) AS a`, where `a` is
/// the relation's alias or name.
fn over_relation(relation: &ast::TableFactor, array: Expr, column: Ident) -> Option<ast::TableFactor> {
    let name = match relation {
        ast::TableFactor::Table { alias: Some(alias), .. } | ast::TableFactor::Derived { alias: Some(alias), .. }
            if alias.columns.is_empty() =>
        {
            alias.name.clone()
        }
        ast::TableFactor::Table { name, alias: None, args: None, .. } => name.0.last()?.as_ident()?.clone(),
        _ => return None,
    };
    let mut query = template("SELECT _lateral.*, unnest(NULL) AS _column FROM _relation")?;
    let SetExpr::Select(select) = query.body.as_mut() else { return None };
    if let SelectItem::QualifiedWildcard(ast::SelectItemQualifiedWildcardKind::ObjectName(object), _) =
        &mut select.projection[0]
    {
        *object = ObjectName::from(vec![name.clone()]);
    }
    if let SelectItem::ExprWithAlias { expr: Expr::Function(function), alias } = &mut select.projection[1] {
        *alias = column;
        if let FunctionArguments::List(list) = &mut function.args {
            list.args = vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(array))];
        }
    }
    select.from[0].relation = relation.clone();
    Some(derived(query, name))
}

/// Array literals in text form cast to an array type (see the module
/// documentation).
///
/// # Errors
/// 22P02 for a malformed literal, 0A000 for a multidimensional one.
pub fn array_literals(statement: &mut ast::Statement) -> crate::error::Result<()> {
    let mut failed = None;
    let _ = visit_expressions_mut(statement, |expr| {
        let Expr::Cast { expr: operand, data_type: ast::DataType::Array(element), .. } = expr else {
            return ControlFlow::Continue(());
        };
        let element = match element {
            ast::ArrayElemTypeDef::AngleBracket(t)
            | ast::ArrayElemTypeDef::SquareBracket(t, _)
            | ast::ArrayElemTypeDef::Parenthesis(t) => t.as_ref().clone(),
            ast::ArrayElemTypeDef::None => return ControlFlow::Continue(()),
        };
        let Expr::Value(ast::ValueWithSpan { value: Value::SingleQuotedString(text), .. }) = operand.as_ref() else {
            return ControlFlow::Continue(());
        };
        match crate::types::parse_array_text(text) {
            Ok(items) => {
                let elem = items
                    .into_iter()
                    .map(|item| Expr::Cast {
                        kind: ast::CastKind::Cast,
                        expr: Box::new(Expr::value(item.map_or(Value::Null, Value::SingleQuotedString))),
                        data_type: element.clone(),
                        array: false,
                        format: None,
                    })
                    .collect();
                **operand = Expr::Array(ast::Array { elem, named: true });
                ControlFlow::Continue(())
            }
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    });
    failed.map_or(Ok(()), Err)
}

/// `current_user` / `current_role` as written, renamed `user` (the same in
/// Postgres) so that datafusion-pg-catalog's rule, which turns
/// `current_user` into `session_user`, leaves it alone: after `SET ROLE`
/// the two differ. [`rewrite`] makes `user` a call of our `current_user`.
pub fn current_user_as_user(statement: &mut ast::Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Function(function) = expr
            && matches!(function.args, FunctionArguments::None)
            && let [part] = function.name.0.as_mut_slice()
            && let Some(ident) = part.as_ident()
            && ident.quote_style.is_none()
            && (ident.value.eq_ignore_ascii_case("current_user") || ident.value.eq_ignore_ascii_case("current_role"))
        {
            function.name = ast::ObjectName::from(vec![ast::Ident::new("user")]);
        }
        if let Expr::Identifier(ident) = expr
            && ident.quote_style.is_none()
            && ident.value.eq_ignore_ascii_case("current_role")
        {
            let mut user = call("user", vec![]);
            if let Expr::Function(function) = &mut user {
                function.args = FunctionArguments::None;
            }
            *expr = user;
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Rewrites the expressions of `statement` in place.
pub fn rewrite(statement: &mut ast::Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        rewrite_expr(expr);
        ControlFlow::<()>::Continue(())
    });
}

fn rewrite_expr(expr: &mut Expr) {
    match expr {
        // An integer literal past bigint and u64: DataFusion reads it as a
        // double (~17 significant digits, silently); Postgres as an exact
        // numeric. Up to 38 digits it is one here too.
        Expr::Value(ast::ValueWithSpan { value: Value::Number(digits, _), .. })
            if digits.len() <= 38 && digits.bytes().all(|b| b.is_ascii_digit()) && digits.parse::<u64>().is_err() =>
        {
            let precision = digits.len() as u64;
            *expr = Expr::Cast {
                kind: ast::CastKind::Cast,
                expr: Box::new(Expr::value(Value::SingleQuotedString(std::mem::take(digits)))),
                data_type: ast::DataType::Numeric(ast::ExactNumberInfo::PrecisionAndScale(precision, 0)),
                array: false,
                format: None,
            };
        }
        // sqlparser reads the keyword USER as a function without arguments.
        Expr::Function(function)
            if matches!(function.args, FunctionArguments::None)
                && matches!(function.name.0.as_slice(), [part] if part.as_ident().is_some_and(|i| i.quote_style.is_none() && i.value.eq_ignore_ascii_case("user"))) =>
        {
            *expr = call("current_user", vec![]);
        }
        Expr::Function(function) if is_array_subquery(function) => {
            if let FunctionArguments::Subquery(query) = &function.args
                && let Some(transformed) = transform_unnested(query)
            {
                *expr = transformed;
                return;
            }
            let FunctionArguments::Subquery(query) = std::mem::replace(&mut function.args, FunctionArguments::None)
            else {
                return;
            };
            match aggregate_array(*query.clone()) {
                Some(aggregated) => *expr = Expr::Subquery(Box::new(aggregated)),
                None => function.args = FunctionArguments::Subquery(query),
            }
        }
        Expr::Function(function) if is_named(function, "generate_subscripts") => {
            // generate_subscripts(a, 1) → unnest(generate_series(1, array_length(a, 1))):
            // the same subscripts, row by row, zipped with other set-returning calls.
            let FunctionArguments::List(list) = &function.args else { return };
            let args: Vec<Expr> = list
                .args
                .iter()
                .filter_map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
                    _ => None,
                })
                .collect();
            if args.len() != 2 || !list.clauses.is_empty() {
                return;
            }
            let length = call("array_length", args);
            let series = call("generate_series", vec![Expr::value(Value::Number("1".into(), false)), length]);
            *expr = call("unnest", vec![series]);
        }
        Expr::Function(function) if is_expand_array(function) => {
            let FunctionArguments::List(list) = &function.args else { return };
            let [FunctionArg::Unnamed(FunctionArgExpr::Expr(array))] = list.args.as_slice() else { return };
            *expr = call("unnest", vec![call(EXPAND_ARRAY_FUNCTION, vec![array.clone()])]);
        }
        Expr::CompoundFieldAccess { root, access_chain } if matches!(root.as_ref(), Expr::Nested(_)) => {
            let fields: Option<Vec<String>> = access_chain
                .iter()
                .map(|access| match access {
                    ast::AccessExpr::Dot(Expr::Identifier(ident)) => Some(crate::sql::ident_value(ident)),
                    _ => None,
                })
                .collect();
            let Some(fields) = fields else { return };
            let mut out = std::mem::replace(root.as_mut(), Expr::value(Value::Null));
            for field in fields {
                out = call("get_field", vec![out, Expr::value(Value::SingleQuotedString(field))]);
            }
            *expr = out;
        }
        Expr::Like { pattern, escape_char, .. } | Expr::ILike { pattern, escape_char, .. } => {
            let Some(escape) = escape_char.take() else { return };
            let is_backslash = matches!(&escape.value, Value::SingleQuotedString(s) if s == "\\");
            if is_backslash {
                *escape_char = Some(escape);
                return;
            }
            let original = std::mem::replace(pattern.as_mut(), Expr::value(Value::Null));
            **pattern = call(LIKE_ESCAPE_FUNCTION, vec![original, Expr::Value(escape)]);
        }
        _ => {}
    }
}

fn is_named(function: &Function, name: &str) -> bool {
    let [part] = function.name.0.as_slice() else { return false };
    part.as_ident().is_some_and(|i| i.value.eq_ignore_ascii_case(name))
        && matches!(function.args, FunctionArguments::List(_))
        && function.over.is_none()
}

/// `[information_schema.]_pg_expandarray(a)`.
fn is_expand_array(function: &Function) -> bool {
    let parts: Vec<String> =
        function.name.0.iter().filter_map(|p| p.as_ident().map(|i| i.value.to_ascii_lowercase())).collect();
    let named = match parts.as_slice() {
        [name] => name == "_pg_expandarray",
        [schema, name] => schema == "information_schema" && name == "_pg_expandarray",
        _ => false,
    };
    named && matches!(function.args, FunctionArguments::List(_)) && function.over.is_none()
}

fn is_array_subquery(function: &Function) -> bool {
    matches!(function.args, FunctionArguments::Subquery(_))
        && function.name.0.len() == 1
        && function.name.0[0].as_ident().is_some_and(|i| i.value.eq_ignore_ascii_case("array"))
}

fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args.into_iter().map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a))).collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// `ARRAY(SELECT e FROM unnest(a) [AS] x)` (psql's `\\d+` writes one with a
/// correlated `a`) as `array_transform(coalesce(a, []), x -> e)`: the same
/// elements in the same order, without a lateral subquery; empty for a NULL
/// array, as `unnest(NULL)` gives no rows.
fn transform_unnested(query: &Query) -> Option<Expr> {
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else { return None };
    if !is_plain(select) || select.selection.is_some() {
        return None;
    }
    let [SelectItem::UnnamedExpr(element) | SelectItem::ExprWithAlias { expr: element, .. }] =
        select.projection.as_slice()
    else {
        return None;
    };
    let [from] = select.from.as_slice() else { return None };
    if !from.joins.is_empty() {
        return None;
    }
    let is_unnest = |name: &ObjectName| {
        name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| i.value.eq_ignore_ascii_case("unnest"))
    };
    let (array, alias) = match &from.relation {
        ast::TableFactor::UNNEST {
            alias: Some(alias),
            array_exprs,
            with_offset: false,
            with_ordinality: false,
            ..
        } => match array_exprs.as_slice() {
            [array] => (array, alias),
            _ => return None,
        },
        ast::TableFactor::Table { name, args: Some(args), alias: Some(alias), with_ordinality: false, .. }
            if is_unnest(name) && args.settings.is_none() =>
        {
            match args.args.as_slice() {
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(array))] => (array, alias),
                _ => return None,
            }
        }
        _ => return None,
    };
    if !alias.columns.is_empty() {
        return None;
    }
    let array = call("coalesce", vec![array.clone(), call("make_array", vec![])]);
    let lambda = Expr::Lambda(ast::LambdaFunction {
        params: ast::OneOrManyWithParens::One(ast::LambdaFunctionParameter {
            name: alias.name.clone(),
            data_type: None,
        }),
        body: Box::new(element.clone()),
        syntax: ast::LambdaSyntax::Arrow,
    });
    Some(call("array_transform", vec![array, lambda]))
}

/// `SELECT e FROM … ORDER BY o` as `SELECT array_agg(e ORDER BY o) FROM …`;
/// any other query `q` as `SELECT array_agg(_e) FROM (q) AS _array(_e)`.
fn aggregate_array(mut query: Query) -> Option<Query> {
    let plain = matches!(query.body.as_ref(), SetExpr::Select(select) if is_plain(select))
        && query.limit_clause.is_none()
        && query.fetch.is_none()
        && query.with.is_none();
    if !plain {
        return over_derived(query);
    }
    let order_by = query.order_by.take();
    if let SetExpr::Select(select) = query.body.as_mut()
        && let Some(SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = select.projection.first()
    {
        let mut aggregate = call("array_agg", vec![e.clone()]);
        if let (Expr::Function(f), Some(order_by)) = (&mut aggregate, order_by)
            && let FunctionArguments::List(list) = &mut f.args
            && let ast::OrderByKind::Expressions(exprs) = order_by.kind
        {
            list.clauses.push(ast::FunctionArgumentClause::OrderBy(exprs));
        }
        select.projection = vec![SelectItem::UnnamedExpr(aggregate)];
    }
    Some(query)
}

/// A SELECT with one output column and nothing that changes its row set
/// beyond FROM/WHERE: aggregating its column gives what ARRAY() would.
fn is_plain(select: &Select) -> bool {
    let single = match select.projection.as_slice() {
        [SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }] => Some(e),
        _ => None,
    };
    single.is_some_and(|e| !contains_aggregate(e))
        && select.distinct.is_none()
        && select.having.is_none()
        && matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty())
}

fn contains_aggregate(expr: &Expr) -> bool {
    const AGGREGATES: &[&str] =
        &["count", "sum", "min", "max", "avg", "array_agg", "string_agg", "bool_and", "bool_or", "every"];
    let found = ast::visit_expressions(expr, |e| match e {
        Expr::Function(f)
            if f.over.is_none()
                && f.name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .is_some_and(|i| AGGREGATES.iter().any(|a| i.value.eq_ignore_ascii_case(a))) =>
        {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    found.is_break()
}

/// `SELECT array_agg(_array._e) FROM (query) AS _array(_e)`.
fn over_derived(query: Query) -> Option<Query> {
    let mut outer = template("SELECT array_agg(_array._e) FROM (SELECT 1) AS _array(_e)")?;
    let SetExpr::Select(select) = outer.body.as_mut() else { return None };
    let ast::TableFactor::Derived { subquery, .. } = &mut select.from.first_mut()?.relation else { return None };
    **subquery = query;
    Some(*outer)
}
