//! Catalog functions that answer from our catalog: `pg_get_indexdef`,
//! `pg_get_constraintdef`, `pg_get_viewdef`, and the ones clients call
//! about objects we do not have (`pg_get_serial_sequence`: no sequences;
//! `pg_function_is_visible`: every function is in `pg_catalog`).

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;

use super::Source;

/// How a catalog function computes one row's value.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// Always a value (NULL where there is none).
    Total(fn(&Source, &[ScalarValue]) -> ScalarValue),
    /// A value, or an error for the statement (an unknown name).
    Fallible(fn(&Source, &[ScalarValue]) -> Result<ScalarValue>),
}

/// A function evaluated row by row against the catalog.
#[derive(Debug)]
struct CatalogFunction {
    name: &'static str,
    signature: Signature,
    returns: DataType,
    body: Body,
    source: Arc<Source>,
}

impl PartialEq for CatalogFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for CatalogFunction {}

impl std::hash::Hash for CatalogFunction {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl ScalarUDFImpl for CatalogFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        row_by_row(&args, &self.returns, |values| match self.body {
            Body::Total(body) => Ok(body(&self.source, values)),
            Body::Fallible(body) => body(&self.source, values),
        })
    }
}

/// Evaluates `body` once per row of `args` (once when all are scalars),
/// casting each value to `returns`.
pub(super) fn row_by_row(
    args: &ScalarFunctionArgs,
    returns: &DataType,
    mut body: impl FnMut(&[ScalarValue]) -> Result<ScalarValue>,
) -> Result<ColumnarValue> {
    let scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let n = if scalar { 1 } else { args.number_rows };
    let mut out = Vec::with_capacity(n);
    for row in 0..n {
        let values = args
            .args
            .iter()
            .map(|a| match a {
                ColumnarValue::Scalar(s) => Ok(s.clone()),
                ColumnarValue::Array(array) => ScalarValue::try_from_array(array, row),
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(body(&values)?.cast_to(returns)?);
    }
    if scalar {
        return Ok(ColumnarValue::Scalar(out.pop().unwrap_or(ScalarValue::try_from(returns)?)));
    }
    if out.is_empty() {
        return Ok(ColumnarValue::Array(datafusion::arrow::array::new_empty_array(returns)));
    }
    Ok(ColumnarValue::Array(ScalarValue::iter_to_array(out)?))
}

fn int(value: &ScalarValue) -> Option<i64> {
    match value.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(v) => v,
        _ => None,
    }
}

fn utf8(value: Option<String>) -> ScalarValue {
    ScalarValue::Utf8(value)
}

/// `pg_get_indexdef(index [, column, pretty])`.
fn indexdef(source: &Source, args: &[ScalarValue]) -> ScalarValue {
    let Some(oid) = args.first().and_then(int).and_then(|v| i32::try_from(v).ok()) else { return utf8(None) };
    let Some(relation) = source.keyed_relation('i', oid) else { return utf8(None) };
    let columns = relation.key_columns();
    if let Some(column) = args.get(1).and_then(int).filter(|&c| c > 0) {
        return utf8(usize::try_from(column - 1).ok().and_then(|c| columns.get(c)).map(|c| quote(c)));
    }
    let columns: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    utf8(Some(format!(
        "CREATE UNIQUE INDEX {} ON {}.{} USING btree ({})",
        quote(&relation.key_name().unwrap_or_default()),
        quote(&relation.schema),
        quote(&relation.name),
        columns.join(", ")
    )))
}

/// `pg_get_constraintdef(constraint [, pretty])`.
fn constraintdef(source: &Source, args: &[ScalarValue]) -> ScalarValue {
    let Some(oid) = args.first().and_then(int).and_then(|v| i32::try_from(v).ok()) else { return utf8(None) };
    let Some(relation) = source.keyed_relation('c', oid) else { return utf8(None) };
    let columns: Vec<String> = relation.key_columns().iter().map(|c| quote(c)).collect();
    utf8(Some(format!("PRIMARY KEY ({})", columns.join(", "))))
}

/// `pg_get_viewdef(view [, pretty])`.
fn viewdef(source: &Source, args: &[ScalarValue]) -> ScalarValue {
    let Some(oid) = args.first().and_then(int).and_then(|v| i32::try_from(v).ok()) else { return utf8(None) };
    utf8(source.user_relation(oid).and_then(|r| r.info.definition))
}

/// `pg_table_is_visible(oid)`: whether the relation is found by its bare
/// name on the default search path (`public`, then `pg_catalog`).
fn table_visible(source: &Source, args: &[ScalarValue]) -> ScalarValue {
    let Some(oid) = args.first().and_then(int).and_then(|v| i32::try_from(v).ok()) else {
        return ScalarValue::Boolean(None);
    };
    let visible = match source.oids.lookup(oid) {
        Some(('r' | 'i', schema, _)) => schema == "public" || schema == "pg_catalog",
        _ => false,
    };
    ScalarValue::Boolean(Some(visible))
}

/// `to_regtype(name)`: the oid of a type streamhouse has, NULL for others.
fn to_regtype(_: &Source, args: &[ScalarValue]) -> ScalarValue {
    let name = match args.first() {
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => s,
        _ => return ScalarValue::Int32(None),
    };
    let name = name.trim().trim_start_matches("pg_catalog.").to_ascii_lowercase();
    ScalarValue::Int32(crate::types::type_oid_by_sql_name(&name))
}

/// `to_regclass(name)`: the oid of a relation (`t`, `schema.t`, a system
/// catalog), NULL when there is none.
fn to_regclass(source: &Source, args: &[ScalarValue]) -> ScalarValue {
    match args.first() {
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => {
            ScalarValue::Int32(source.regclass(s))
        }
        _ => ScalarValue::Int32(None),
    }
}

/// `'name'::regclass`: the oid of a relation, system or user; as in
/// Postgres, a name that resolves to nothing is an error (42P01).
fn regclass(source: &Source, args: &[ScalarValue]) -> Result<ScalarValue> {
    let name = match args.first() {
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => s,
        Some(other) if !other.is_null() => return other.cast_to(&DataType::Int32),
        _ => return Ok(ScalarValue::Int32(None)),
    };
    match source.regclass(name) {
        Some(oid) => Ok(ScalarValue::Int32(Some(oid))),
        None => Err(datafusion::error::DataFusionError::External(Box::new(crate::error::Error::new(
            crate::error::StatusCode::TableNotFound,
            format!("relation \"{name}\" does not exist"),
        )))),
    }
}

/// `pg_get_expr(expr, relation [, pretty])`: the catalogs keep expressions
/// (`pg_attrdef.adbin`) as SQL text already, so the text itself.
fn get_expr(_: &Source, args: &[ScalarValue]) -> ScalarValue {
    match args.first() {
        Some(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s))) => {
            utf8(Some(s.clone()))
        }
        _ => utf8(None),
    }
}

/// `pg_my_temp_schema()`: 0, there are no temporary schemas.
fn no_temp_schema(_: &Source, _: &[ScalarValue]) -> ScalarValue {
    ScalarValue::Int32(Some(0))
}

/// `pg_get_function_result` / `pg_get_function_arguments`: streamhouse has
/// no user-defined functions, and psql's `\df` lists only those.
fn no_function_text(_: &Source, _: &[ScalarValue]) -> ScalarValue {
    ScalarValue::Utf8(None)
}

fn no_sequence(_: &Source, _: &[ScalarValue]) -> ScalarValue {
    utf8(None)
}

fn visible(_: &Source, args: &[ScalarValue]) -> ScalarValue {
    ScalarValue::Boolean(args.first().and_then(int).map(|_| true))
}

/// An identifier as Postgres prints it: quoted when it must be.
fn quote(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

/// Registers the functions on `ctx`, replacing the crate's of the same name.
pub(super) fn register(ctx: &SessionContext, source: &Arc<Source>) -> Result<()> {
    let any =
        |arity: &[usize]| Signature::one_of(arity.iter().map(|&n| TypeSignature::Any(n)).collect(), Volatility::Stable);
    let functions: [(&'static str, Signature, DataType, Body); 21] = [
        // No object has a comment (COMMENT ON is not supported).
        ("col_description", any(&[2]), DataType::Utf8, Body::Total(no_function_text)),
        ("obj_description", any(&[1, 2]), DataType::Utf8, Body::Total(no_function_text)),
        ("shobj_description", any(&[2]), DataType::Utf8, Body::Total(no_function_text)),
        ("pg_get_expr", any(&[2, 3]), DataType::Utf8, Body::Total(get_expr)),
        (crate::sql::compat::REGCLASS_FUNCTION, any(&[1]), DataType::Int32, Body::Fallible(regclass)),
        ("pg_get_function_result", any(&[1]), DataType::Utf8, Body::Total(no_function_text)),
        ("pg_get_function_arguments", any(&[1]), DataType::Utf8, Body::Total(no_function_text)),
        ("pg_get_function_identity_arguments", any(&[1]), DataType::Utf8, Body::Total(no_function_text)),
        ("pg_my_temp_schema", Signature::nullary(Volatility::Stable), DataType::Int32, Body::Total(no_temp_schema)),
        ("pg_collation_is_visible", any(&[1]), DataType::Boolean, Body::Total(visible)),
        ("pg_operator_is_visible", any(&[1]), DataType::Boolean, Body::Total(visible)),
        ("pg_opclass_is_visible", any(&[1]), DataType::Boolean, Body::Total(visible)),
        ("pg_table_is_visible", any(&[1]), DataType::Boolean, Body::Total(table_visible)),
        ("to_regtype", any(&[1]), DataType::Int32, Body::Total(to_regtype)),
        ("to_regclass", any(&[1]), DataType::Int32, Body::Total(to_regclass)),
        ("pg_get_indexdef", any(&[1, 3]), DataType::Utf8, Body::Total(indexdef)),
        ("pg_get_constraintdef", any(&[1, 2]), DataType::Utf8, Body::Total(constraintdef)),
        ("pg_get_viewdef", any(&[1, 2]), DataType::Utf8, Body::Total(viewdef)),
        ("pg_get_serial_sequence", any(&[2]), DataType::Utf8, Body::Total(no_sequence)),
        ("pg_function_is_visible", any(&[1]), DataType::Boolean, Body::Total(visible)),
        ("pg_type_is_visible", any(&[1]), DataType::Boolean, Body::Total(visible)),
    ];
    for (name, signature, returns, body) in functions {
        ctx.register_udf(ScalarUDF::new_from_impl(CatalogFunction {
            name,
            signature,
            returns,
            body,
            source: Arc::clone(source),
        }));
    }
    Ok(())
}
