//! SQL type names DataFusion does not know, mapped to Arrow types.
//!
//! `json` and `jsonb` are stored and returned as text (clients receive them
//! as `text`); `uuid` as text too. Everything else goes to pg_catalog's planner
//! (`regclass`, `oid`, `pg_catalog.int4` …) and then to DataFusion; a type
//! name none of them knows is 42704 (`type "x" does not exist`).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::planner::TypePlanner;
use datafusion::sql::sqlparser::ast::DataType as SqlType;
use datafusion_pg_catalog::pg_catalog::oid_type_planner::PgOidTypePlanner;

use crate::error::{Error, StatusCode};

/// Plans Postgres type names.
#[derive(Debug, Default)]
pub struct PostgresTypePlanner {
    pg_catalog: PgOidTypePlanner,
}

impl TypePlanner for PostgresTypePlanner {
    fn plan_type_field(&self, sql_type: &SqlType) -> Result<Option<FieldRef>> {
        let text = match sql_type {
            SqlType::JSON | SqlType::JSONB | SqlType::Uuid => true,
            SqlType::Custom(name, _) => {
                let last = name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_ascii_lowercase());
                matches!(last.as_deref(), Some("json" | "jsonb" | "uuid" | "citext"))
            }
            _ => false,
        };
        if text {
            let declared = match sql_type {
                SqlType::JSON => "json".to_string(),
                SqlType::JSONB => "jsonb".to_string(),
                SqlType::Uuid => "uuid".to_string(),
                other => other.to_string().rsplit('.').next().unwrap_or_default().to_ascii_lowercase(),
            };
            let field = Field::new("", DataType::Utf8, true);
            return Ok(Some(Arc::new(match declared.as_str() {
                name @ ("json" | "jsonb" | "uuid") => declare(field, name, -1),
                _ => field,
            })));
        }
        // Types whose Arrow form forgets what Postgres reports: the declared
        // name and modifier travel as field metadata (see [`PgType::of`]).
        if let Some(field) = declared_string_or_numeric(sql_type) {
            return Ok(Some(Arc::new(field)));
        }
        if let Some(field) = self.pg_catalog.plan_type_field(sql_type)? {
            return Ok(Some(field));
        }
        match sql_type {
            // A name no planner knows (DataFusion plans none of these).
            SqlType::Custom(name, _) => Err(datafusion::error::DataFusionError::External(Box::new(Error::new(
                StatusCode::ObjectNotFound,
                format!("type \"{name}\" does not exist"),
            )))),
            _ => Ok(None),
        }
    }
}

/// The Postgres name of an Arrow type, for messages (`bigint`, `timestamp with time zone`).
pub fn postgres_type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            "numeric".into()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Interval(_) => "interval".into(),
        other => other.to_string(),
    }
}

/// Why `text` did not convert to a value of type `to`, with Postgres'
/// SQLSTATE and wording: an integer-shaped text out of the type's range is
/// 22003, a date-shaped text with a field out of range (`2024-02-30`,
/// `2024-01-01 25:00`) 22008, other text that is no date or timestamp
/// 22007, anything else 22P02.
pub fn conversion_error(text: &str, to: &DataType) -> Error {
    let name = postgres_type_name(to);
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match to {
        t if t.is_integer() && all_digits(digits) => {
            Error::new(StatusCode::NumericOverflow, format!("value \"{text}\" is out of range for type {name}"))
        }
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
            let date = trimmed.split([' ', 'T']).next().unwrap_or("");
            let fields: Vec<&str> = date.split('-').collect();
            if fields.len() == 3 && fields.iter().all(|f| all_digits(f)) {
                Error::new(
                    StatusCode::DatetimeFieldOverflow,
                    format!("date/time field value out of range: \"{text}\" (type {name})"),
                )
            } else {
                Error::new(
                    StatusCode::InvalidDatetimeFormat,
                    format!("invalid input syntax for type {name}: \"{text}\""),
                )
            }
        }
        _ => Error::new(
            StatusCode::InvalidTextRepresentation,
            format!("invalid input syntax for type {name}: \"{text}\""),
        ),
    }
}

/// Field metadata naming a column's declared Postgres type (`varchar`,
/// `bpchar`, `numeric`, `json`, `jsonb`, `uuid`) where its Arrow type alone
/// would say something else.
pub const PG_TYPE_KEY: &str = "pg.type";
/// Field metadata holding the declared type modifier (`atttypmod`).
pub const PG_TYPMOD_KEY: &str = "pg.typmod";

fn declare(field: Field, typname: &str, typmod: i32) -> Field {
    let mut metadata = std::collections::HashMap::from([(PG_TYPE_KEY.to_string(), typname.to_string())]);
    if typmod >= 0 {
        metadata.insert(PG_TYPMOD_KEY.to_string(), typmod.to_string());
    }
    field.with_metadata(metadata)
}

/// `varchar(n)`, `char(n)` and unconstrained `numeric`, planned to the Arrow
/// types DataFusion gives them (strings as `Utf8View`, `numeric` as
/// `Decimal128(38, 10)`) but remembering the declared type and modifier.
fn declared_string_or_numeric(sql_type: &SqlType) -> Option<Field> {
    use datafusion::sql::sqlparser::ast::{CharacterLength, ExactNumberInfo};
    let length = |len: &Option<CharacterLength>| match len {
        Some(CharacterLength::IntegerLength { length, .. }) => i32::try_from(*length).ok().map(|n| n.saturating_add(4)),
        _ => None,
    };
    let string = |typname: &str, typmod: Option<i32>| {
        Some(declare(Field::new("", DataType::Utf8View, true), typname, typmod.unwrap_or(-1)))
    };
    match sql_type {
        SqlType::Varchar(len) | SqlType::CharacterVarying(len) | SqlType::CharVarying(len) | SqlType::Nvarchar(len) => {
            string("varchar", length(len))
        }
        // `char` alone is `char(1)`, as in Postgres.
        SqlType::Char(len) | SqlType::Character(len) => string("bpchar", length(len).or(Some(5))),
        SqlType::Numeric(ExactNumberInfo::None) | SqlType::Decimal(ExactNumberInfo::None) => {
            Some(declare(Field::new("", DataType::Decimal128(38, 10), true), "numeric", -1))
        }
        _ => None,
    }
}

/// How Postgres describes a column: `pg_type` oid, `atttypmod`, `typlen`,
/// and the name `format_type` gives it (`numeric(12,2)`, `character varying(20)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    /// The `pg_type` oid.
    pub oid: i32,
    /// The type modifier, -1 for none.
    pub typmod: i32,
}

impl PgType {
    /// The Postgres type of a column: declared metadata first, else the Arrow type.
    pub fn of(field: &Field) -> Self {
        let metadata = field.metadata();
        if let Some(oid) = metadata.get(PG_TYPE_KEY).and_then(|name| type_oid_by_name(name)) {
            let typmod = metadata.get(PG_TYPMOD_KEY).and_then(|m| m.parse().ok()).unwrap_or(-1);
            return Self { oid, typmod };
        }
        Self::of_arrow(field.data_type())
    }

    /// The Postgres type of values of an Arrow type.
    pub fn of_arrow(data_type: &DataType) -> Self {
        let plain = |oid| Self { oid, typmod: -1 };
        match data_type {
            DataType::Boolean => plain(16),
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => plain(21),
            DataType::Int32 | DataType::UInt16 => plain(23),
            DataType::Int64 | DataType::UInt32 | DataType::UInt64 => plain(20),
            DataType::Float16 | DataType::Float32 => plain(700),
            DataType::Float64 => plain(701),
            DataType::Decimal32(p, s)
            | DataType::Decimal64(p, s)
            | DataType::Decimal128(p, s)
            | DataType::Decimal256(p, s) => Self { oid: 1700, typmod: numeric_typmod(i32::from(*p), i32::from(*s)) },
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => plain(17),
            DataType::Date32 | DataType::Date64 => plain(1082),
            DataType::Time32(_) | DataType::Time64(_) => plain(1083),
            DataType::Timestamp(_, None) => plain(1114),
            DataType::Timestamp(_, Some(_)) => plain(1184),
            DataType::Interval(_) | DataType::Duration(_) => plain(1186),
            DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::FixedSizeList(f, _) => {
                let element = Self::of(f);
                plain(array_type_oid(element.oid).unwrap_or(1009))
            }
            DataType::Dictionary(_, value) => Self::of_arrow(value),
            _ => plain(25),
        }
    }

    /// `typlen`: the fixed width in bytes, -1 for variable-width types.
    pub fn typlen(&self) -> i16 {
        match self.oid {
            16 | 18 => 1,
            21 => 2,
            23 | 26 | 700 | 1082 => 4,
            20 | 701 | 1083 | 1114 | 1184 => 8,
            1186 | 2950 => 16,
            19 => 64,
            _ => -1,
        }
    }

    /// Whether values are passed by value (`typbyval`).
    pub fn by_value(&self) -> bool {
        matches!(self.oid, 16 | 18 | 20 | 21 | 23 | 26 | 700 | 701 | 1082 | 1083 | 1114 | 1184)
    }

    /// `typname` in `pg_type` (`int8`, `varchar`, `_int4` for `integer[]`).
    pub fn typname(&self) -> String {
        if let Some((element, _)) = ARRAYS.iter().find(|(_, a)| *a == self.oid) {
            return format!("_{}", PgType { oid: *element, typmod: -1 }.typname());
        }
        TYPES.iter().find(|(oid, ..)| *oid == self.oid).map_or("text", |(_, name, _)| name).to_string()
    }

    /// The name `format_type(oid, typmod)` gives: the SQL-standard spelling
    /// with the modifier (`numeric(12,2)`, `character varying(20)`,
    /// `timestamp without time zone`, `integer[]`).
    pub fn display(&self) -> String {
        format_type(self.oid, self.typmod)
    }

    /// `numeric`'s precision and scale, when the modifier gives them.
    pub fn numeric_precision_scale(&self) -> Option<(i32, i32)> {
        (self.oid == 1700 && self.typmod >= 4).then(|| (((self.typmod - 4) >> 16) & 0xffff, (self.typmod - 4) & 0xffff))
    }

    /// The declared length of `varchar(n)` / `char(n)`.
    pub fn character_length(&self) -> Option<i32> {
        (matches!(self.oid, 1042 | 1043) && self.typmod >= 4).then(|| self.typmod - 4)
    }
}

/// `numeric(p, s)`'s type modifier.
pub fn numeric_typmod(precision: i32, scale: i32) -> i32 {
    ((precision << 16) | (scale & 0xffff)) + 4
}

/// Base types: oid, `typname`, `format_type` name.
const TYPES: &[(i32, &str, &str)] = &[
    (16, "bool", "boolean"),
    (17, "bytea", "bytea"),
    (18, "char", "\"char\""),
    (19, "name", "name"),
    (20, "int8", "bigint"),
    (21, "int2", "smallint"),
    (23, "int4", "integer"),
    (25, "text", "text"),
    (26, "oid", "oid"),
    (114, "json", "json"),
    (700, "float4", "real"),
    (701, "float8", "double precision"),
    (1042, "bpchar", "character"),
    (1043, "varchar", "character varying"),
    (1082, "date", "date"),
    (1083, "time", "time without time zone"),
    (1114, "timestamp", "timestamp without time zone"),
    (1184, "timestamptz", "timestamp with time zone"),
    (1186, "interval", "interval"),
    (1700, "numeric", "numeric"),
    (2950, "uuid", "uuid"),
    (3802, "jsonb", "jsonb"),
];

/// Array types: element oid, array oid.
const ARRAYS: &[(i32, i32)] = &[
    (16, 1000),
    (17, 1001),
    (18, 1002),
    (19, 1003),
    (20, 1016),
    (21, 1005),
    (23, 1007),
    (25, 1009),
    (26, 1028),
    (114, 199),
    (700, 1021),
    (701, 1022),
    (1042, 1014),
    (1043, 1015),
    (1082, 1182),
    (1083, 1183),
    (1114, 1115),
    (1184, 1185),
    (1186, 1187),
    (1700, 1231),
    (2950, 2951),
    (3802, 3807),
];

/// The oid of a type by any name Postgres accepts for it (`int4`,
/// `integer`, `character varying`, `text[]`); `None` for types streamhouse lacks.
pub fn type_oid_by_sql_name(name: &str) -> Option<i32> {
    if let Some(element) = name.strip_suffix("[]") {
        return type_oid_by_sql_name(element).and_then(array_type_oid);
    }
    let alias = match name {
        "int" | "integer" => "int4",
        "smallint" => "int2",
        "bigint" => "int8",
        "real" => "float4",
        "double precision" => "float8",
        "boolean" => "bool",
        "decimal" => "numeric",
        "character varying" => "varchar",
        "character" => "bpchar",
        "timestamp without time zone" => "timestamp",
        "timestamp with time zone" => "timestamptz",
        "time without time zone" => "time",
        other => other,
    };
    type_oid_by_name(alias)
}

fn type_oid_by_name(name: &str) -> Option<i32> {
    TYPES.iter().find(|(_, typname, _)| *typname == name).map(|(oid, ..)| *oid)
}

/// The array type whose elements are `element`.
pub fn array_type_oid(element: i32) -> Option<i32> {
    ARRAYS.iter().find(|(e, _)| *e == element).map(|(_, a)| *a)
}

/// `format_type(oid, typmod)` for the types streamhouse has; `None` for others.
pub fn known_format_type(oid: i32, typmod: i32) -> Option<String> {
    if let Some((element, _)) = ARRAYS.iter().find(|(_, a)| *a == oid) {
        return known_format_type(*element, typmod).map(|e| format!("{e}[]"));
    }
    let (_, _, name) = TYPES.iter().find(|(o, ..)| *o == oid)?;
    let ty = PgType { oid, typmod };
    Some(if let Some((p, s)) = ty.numeric_precision_scale() {
        format!("numeric({p},{s})")
    } else if let Some(n) = ty.character_length() {
        format!("{name}({n})")
    } else {
        (*name).to_string()
    })
}

fn format_type(oid: i32, typmod: i32) -> String {
    known_format_type(oid, typmod).unwrap_or_else(|| "text".to_string())
}

/// The elements of a one-dimensional Postgres array in its text form
/// (`{a,"b c",NULL}`), as Postgres' `array_in` reads it: whitespace around
/// an element is ignored, an unquoted `NULL` (any case) is null, a quoted
/// `"NULL"` is the string, backslash escapes the next character, and an
/// optional dimension decoration (`[1:3]={…}`) is skipped. Nested arrays
/// are 0A000; anything malformed is 22P02.
pub fn parse_array_text(text: &str) -> std::result::Result<Vec<Option<String>>, Error> {
    let malformed = |why: &str| {
        Error::new(StatusCode::InvalidTextRepresentation, format!("malformed array literal: \"{text}\" ({why})"))
    };
    let mut body = text.trim_start();
    if body.starts_with('[') {
        body = body
            .split_once('=')
            .map(|(_, rest)| rest.trim_start())
            .ok_or_else(|| malformed("missing \"=\" after array dimensions"))?;
    }
    let body = body.trim_end();
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| malformed("array value must start with \"{\" or dimension information"))?;
    let mut elements = Vec::new();
    if inner.trim().is_empty() {
        return Ok(elements);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let mut quoted = false;
        // Trailing unquoted whitespace is dropped; whitespace inside the
        // element or escaped is kept.
        let mut kept = 0;
        loop {
            match chars.peek().copied() {
                None => break,
                Some(',') => break,
                Some('{' | '}') => {
                    return Err(Error::new(
                        StatusCode::Unsupported,
                        format!("multidimensional array values are not supported: \"{text}\""),
                    ));
                }
                Some('"') => {
                    chars.next();
                    quoted = true;
                    loop {
                        match chars.next() {
                            None => return Err(malformed("unexpected end of input")),
                            Some('"') => break,
                            Some('\\') => value.push(chars.next().ok_or_else(|| malformed("unexpected end of input"))?),
                            Some(c) => value.push(c),
                        }
                    }
                    kept = value.len();
                }
                Some('\\') => {
                    chars.next();
                    value.push(chars.next().ok_or_else(|| malformed("unexpected end of input"))?);
                    kept = value.len();
                }
                Some(c) => {
                    chars.next();
                    value.push(c);
                    if !c.is_whitespace() {
                        kept = value.len();
                    }
                }
            }
        }
        value.truncate(kept);
        if value.is_empty() && !quoted {
            return Err(malformed("unexpected \",\" character"));
        }
        elements.push(if !quoted && value.eq_ignore_ascii_case("null") { None } else { Some(value) });
        if chars.next().is_none() {
            return Ok(elements);
        }
    }
}

/// A Postgres array in text form as a list of `element` values, each
/// element converted as a text cast to `element` would convert it.
pub fn array_from_text(text: &str, element: &DataType) -> std::result::Result<ScalarValue, Error> {
    let options = datafusion::arrow::compute::CastOptions { safe: false, ..Default::default() };
    let mut values = Vec::new();
    for item in parse_array_text(text)? {
        values.push(match item {
            None => ScalarValue::try_from(element).map_err(Error::from)?,
            Some(item) => ScalarValue::Utf8(Some(item.clone()))
                .cast_to_with_options(element, &options)
                .map_err(|_| conversion_error(&item, element))?,
        });
    }
    Ok(ScalarValue::List(ScalarValue::new_list_nullable(&values, element)))
}

/// Formats the shortest exact `scientific` form (Rust's `{:e}`) of `value` as Postgres does.
pub fn postgres_float(scientific: &str, limit: i32, value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0".into() } else { "0".into() };
    }
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    if exponent < -4 || exponent >= limit {
        let sign_e = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{mantissa}e{sign_e}{:02}", exponent.abs());
    }
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if exponent < 0 {
        let zeros = "0".repeat((-exponent - 1) as usize);
        return format!("{sign}0.{zeros}{digits}");
    }
    let point = exponent as usize + 1;
    if digits.len() <= point {
        format!("{sign}{digits}{}", "0".repeat(point - digits.len()))
    } else {
        format!("{sign}{}.{}", &digits[..point], &digits[point..])
    }
}

/// A float8 in Postgres' text form (`3`, `1e+20`, `0.30000000000000004`, `Infinity`).
pub fn float8_text(value: f64) -> String {
    postgres_float(&format!("{value:e}"), 15, value)
}

/// A float4 in Postgres' text form.
pub fn float4_text(value: f32) -> String {
    postgres_float(&format!("{value:e}"), 6, f64::from(value))
}
