//! Postgres' date/time formatting functions with Postgres' template
//! patterns (`YYYY-MM-DD HH24:MI:SS.US`, `FMMonth DD, YYYY`, `"Q"Q`):
//! `to_char(timestamp | date, text)`, `to_timestamp(text, text)` and
//! `to_date(text, text)`. DataFusion's functions of those names take chrono
//! patterns (`%Y-%m-%d`) and, given a Postgres template, fail or — for
//! `to_char` — return the template unchanged: a silent wrong answer.
//!
//! A template is compiled once per call into [`Part`]s. Each pattern maps
//! to a chrono specifier (formatting and parsing) or to one computed here
//! (quarter, Postgres' day of week, week of year, Julian day, seconds of the
//! day). Text in double quotes and characters that are no pattern are
//! copied; `FM` drops the padding of the pattern after it; `TH`/`th` after a
//! number adds its ordinal suffix. Patterns Postgres has and these functions
//! do not (`Y,YYY`, `RM`, `A.M.`, `TZH`, …) are refused (0A000), never
//! copied as text. `to_timestamp` and `to_date` read the fields chrono can
//! read; a field absent from the template takes Postgres' default (year 1,
//! January, day 1, midnight), and the result is in the session's time zone.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, StringArray, TimestampMicrosecondArray, TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use crate::error::{Error, StatusCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    AsIs,
    Upper,
    Lower,
}

/// One piece of a compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// A chrono specifier, the case of its text, and the width names are
    /// padded to (Postgres pads month and day names to 9 unless `FM`).
    Chrono {
        spec: String,
        case: Case,
        pad: Option<usize>,
    },
    /// A number computed here, zero-padded to `width` unless `FM`.
    Number {
        field: Field,
        width: usize,
        fill: bool,
    },
    /// The ordinal suffix of the number before (`TH`, `th`).
    Ordinal {
        upper: bool,
    },
    Literal(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Quarter,
    /// Day of the week, Sunday 1 to Saturday 7.
    DayOfWeek,
    /// Week of the year counted from January 1 (days 1–7 are week 1).
    WeekOfYear,
    /// Week of the month counted from day 1.
    WeekOfMonth,
    JulianDay,
    SecondsOfDay,
    Century,
}

/// Postgres patterns these functions refuse, upper-cased (`TZ`: zone
/// abbreviations are not known here). One is refused when it is longer
/// than the supported pattern at the same place (`IDDD` over `ID`, `YYY`
/// over `YY`).
const UNSUPPORTED: &[&str] = &[
    "Y,YYY", "A.D.", "B.C.", "A.M.", "P.M.", "TZH", "TZM", "TZ", "RM", "IDDD", "IYYY", "IYY", "IY", "FF1", "FF2",
    "FF4", "FF5", "AD", "BC", "YYY", "Y", "I",
];

fn unsupported(pattern: &str) -> Error {
    Error::new(StatusCode::Unsupported, format!("the template pattern \"{pattern}\" is not supported"))
}

/// Compiles a Postgres template.
fn compile(template: &str) -> Result<Vec<Part>, Error> {
    let mut parts: Vec<Part> = Vec::new();
    let mut rest = template;
    let mut fill_mode = false;
    let mut literal = String::new();
    let flush = |literal: &mut String, parts: &mut Vec<Part>| {
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(literal)));
        }
    };
    while let Some(c) = rest.chars().next() {
        if c == '"' {
            let mut chars = rest[1..].char_indices();
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            literal.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 2;
                        break;
                    }
                    c => literal.push(c),
                }
            }
            rest = &rest[end.min(rest.len())..];
            continue;
        }
        if c == '\\' && rest.len() > 1 {
            let escaped = rest[1..].chars().next().unwrap_or('\\');
            literal.push(escaped);
            rest = &rest[1 + escaped.len_utf8()..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("FM").or_else(|| rest.strip_prefix("fm")) {
            fill_mode = true;
            rest = after;
            continue;
        }
        if let Some(after) = rest.strip_prefix("FX").or_else(|| rest.strip_prefix("fx")) {
            rest = after;
            continue;
        }
        let matched = pattern(rest, fill_mode);
        let matched_len = matched.as_ref().map_or(0, |(_, len)| *len);
        let upper: String = rest.chars().take(5).collect::<String>().to_ascii_uppercase();
        if let Some(refused) = UNSUPPORTED.iter().find(|p| p.len() > matched_len && upper.starts_with(**p)) {
            return Err(unsupported(refused));
        }
        let Some((part, len)) = matched else {
            literal.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        };
        flush(&mut literal, &mut parts);
        parts.push(part);
        fill_mode = false;
        rest = &rest[len..];
        let ordinal = |p: &Part| {
            matches!(p, Part::Chrono { spec, .. } if !spec.contains(['b', 'B', 'a', 'A', 'p', 'z']))
                || matches!(p, Part::Number { .. })
        };
        if parts.last().is_some_and(ordinal) {
            if let Some(after) = rest.strip_prefix("TH") {
                parts.push(Part::Ordinal { upper: true });
                rest = after;
            } else if let Some(after) = rest.strip_prefix("th") {
                parts.push(Part::Ordinal { upper: false });
                rest = after;
            }
        }
    }
    flush(&mut literal, &mut parts);
    Ok(parts)
}

/// The pattern at the start of `text` and its length.
fn pattern(text: &str, fill_mode: bool) -> Option<(Part, usize)> {
    // Numbers: case-insensitive, as in Postgres.
    let numeric: &[(&str, &str)] = &[
        ("HH24", "H"),
        ("HH12", "I"),
        ("HH", "I"),
        ("MI", "M"),
        ("SS", "S"),
        ("YYYY", "Y"),
        ("YY", "y"),
        ("MM", "m"),
        ("DDD", "j"),
        ("DD", "d"),
        ("IW", "V"),
        ("ID", "u"),
    ];
    let upper: String = text.chars().take(5).collect::<String>().to_ascii_uppercase();
    let chrono = |spec: &str, case: Case, pad: Option<usize>| Part::Chrono { spec: spec.to_string(), case, pad };
    let computed = |field: Field, width: usize| Part::Number { field, width, fill: !fill_mode };
    if upper.starts_with("SSSSS") {
        return Some((computed(Field::SecondsOfDay, 5), 5));
    }
    if upper.starts_with("SSSS") {
        return Some((computed(Field::SecondsOfDay, 5), 4));
    }
    if upper.starts_with("MS") || upper.starts_with("FF3") {
        let len = if upper.starts_with("MS") { 2 } else { 3 };
        return Some((chrono("%3f", Case::AsIs, None), len));
    }
    if upper.starts_with("US") || upper.starts_with("FF6") {
        let len = if upper.starts_with("US") { 2 } else { 3 };
        return Some((chrono("%6f", Case::AsIs, None), len));
    }
    // Names: the case of the pattern is the case of the text.
    let names: &[(&str, &str, Case, Option<usize>)] = &[
        ("MONTH", "%B", Case::Upper, Some(9)),
        ("Month", "%B", Case::AsIs, Some(9)),
        ("month", "%B", Case::Lower, Some(9)),
        ("MON", "%b", Case::Upper, None),
        ("Mon", "%b", Case::AsIs, None),
        ("mon", "%b", Case::Lower, None),
        ("DAY", "%A", Case::Upper, Some(9)),
        ("Day", "%A", Case::AsIs, Some(9)),
        ("day", "%A", Case::Lower, Some(9)),
        ("DY", "%a", Case::Upper, None),
        ("Dy", "%a", Case::AsIs, None),
        ("dy", "%a", Case::Lower, None),
        ("AM", "%p", Case::Upper, None),
        ("PM", "%p", Case::Upper, None),
        ("am", "%p", Case::Lower, None),
        ("pm", "%p", Case::Lower, None),
        ("OF", "%:z", Case::AsIs, None),
    ];
    if let Some((p, spec, case, pad)) = names.iter().find(|(p, ..)| text.starts_with(p)) {
        let pad = if fill_mode { None } else { *pad };
        return Some((chrono(spec, *case, pad), p.len()));
    }
    if let Some((p, spec)) = numeric.iter().find(|(p, _)| upper.starts_with(p)) {
        let flag = if fill_mode { "-" } else { "" };
        return Some((chrono(&format!("%{flag}{spec}"), Case::AsIs, None), p.len()));
    }
    let fields: &[(&str, Field, usize)] = &[
        ("CC", Field::Century, 2),
        ("WW", Field::WeekOfYear, 2),
        ("W", Field::WeekOfMonth, 1),
        ("Q", Field::Quarter, 1),
        ("D", Field::DayOfWeek, 1),
        ("J", Field::JulianDay, 1),
    ];
    if let Some((p, field, width)) = fields.iter().find(|(p, ..)| upper.starts_with(p)) {
        return Some((computed(*field, *width), p.len()));
    }
    None
}

fn ordinal_suffix(n: i64) -> &'static str {
    match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    }
}

/// Formats `at` (a local date and time, and the offset and zone name it is
/// shown in) with a compiled template.
fn format_parts<T: TimeZone>(parts: &[Part], at: &DateTime<T>) -> String
where
    T::Offset: std::fmt::Display,
{
    let mut out = String::new();
    let mut last_number: Option<i64> = None;
    for part in parts {
        match part {
            Part::Literal(text) => out.push_str(text),
            Part::Chrono { spec, case, pad } => {
                let mut text = at.format(spec).to_string();
                if spec == "%:z" {
                    // Postgres shows whole-hour offsets as `+02`.
                    if let Some(hours) = text.strip_suffix(":00") {
                        text = hours.to_string();
                    }
                }
                last_number = text.trim_start_matches(['-', '+']).parse().ok();
                text = match case {
                    Case::AsIs => text,
                    Case::Upper => text.to_uppercase(),
                    Case::Lower => text.to_lowercase(),
                };
                out.push_str(&text);
                if let Some(width) = pad {
                    for _ in text.chars().count()..*width {
                        out.push(' ');
                    }
                }
            }
            Part::Number { field, width, fill } => {
                let naive = at.naive_local();
                let value = match field {
                    Field::Quarter => i64::from(naive.month0() / 3 + 1),
                    Field::DayOfWeek => i64::from(naive.weekday().num_days_from_sunday() + 1),
                    Field::WeekOfYear => i64::from(naive.ordinal0() / 7 + 1),
                    Field::WeekOfMonth => i64::from(naive.day0() / 7 + 1),
                    Field::JulianDay => i64::from(naive.num_days_from_ce()) + 1_721_425,
                    Field::SecondsOfDay => i64::from(naive.num_seconds_from_midnight()),
                    Field::Century => {
                        let year = i64::from(naive.year());
                        if year > 0 { (year + 99) / 100 } else { (year - 99) / 100 }
                    }
                };
                last_number = Some(value);
                if *fill {
                    out.push_str(&format!("{value:0width$}", width = *width));
                } else {
                    out.push_str(&value.to_string());
                }
            }
            Part::Ordinal { upper } => {
                let suffix = ordinal_suffix(last_number.unwrap_or(0));
                out.push_str(&if *upper { suffix.to_uppercase() } else { suffix.to_string() });
            }
        }
    }
    out
}

/// Parses `text` with a compiled template into a local date and time; the
/// offset when the template reads one (`OF`).
fn parse_parts(parts: &[Part], text: &str, template: &str) -> Result<(NaiveDateTime, Option<i32>), Error> {
    let mut spec = String::new();
    for part in parts {
        match part {
            Part::Literal(literal) => spec.push_str(&literal.replace('%', "%%")),
            Part::Chrono { spec: s, .. } if s == "%3f" || s == "%6f" => {
                // chrono reads fractions after a dot; Postgres' MS/US follow a
                // literal dot in the template, so read the digits as a fraction.
                if spec.ends_with('.') {
                    spec.pop();
                    spec.push_str("%.f");
                } else {
                    return Err(unsupported(if s == "%3f" { "MS" } else { "US" }));
                }
            }
            Part::Chrono { spec: s, .. } => spec.push_str(s),
            Part::Number { field, .. } => {
                return Err(unsupported(match field {
                    Field::Quarter => "Q",
                    Field::DayOfWeek => "D",
                    Field::WeekOfYear => "WW",
                    Field::WeekOfMonth => "W",
                    Field::JulianDay => "J",
                    Field::SecondsOfDay => "SSSS",
                    Field::Century => "CC",
                }));
            }
            Part::Ordinal { .. } => {}
        }
    }
    let mut parsed = chrono::format::Parsed::new();
    let invalid = |why: &dyn std::fmt::Display| {
        Error::new(
            StatusCode::InvalidDatetimeFormat,
            format!("invalid value \"{text}\" for the template \"{template}\": {why}"),
        )
    };
    chrono::format::parse(&mut parsed, text.trim(), chrono::format::StrftimeItems::new(&spec))
        .map_err(|e| invalid(&e))?;
    // Fields the template does not read take Postgres' defaults.
    type Setter = fn(&mut chrono::format::Parsed) -> chrono::format::ParseResult<()>;
    let defaults: [(bool, Setter); 4] = [
        (parsed.year().is_none() && parsed.year_mod_100().is_none() && parsed.isoyear().is_none(), |p| p.set_year(1)),
        (parsed.month().is_none() && parsed.ordinal().is_none() && parsed.isoweek().is_none(), |p| p.set_month(1)),
        (parsed.day().is_none() && parsed.ordinal().is_none() && parsed.isoweek().is_none(), |p| p.set_day(1)),
        (parsed.hour_mod_12().is_none(), |p| p.set_hour(0)),
    ];
    for (missing, set) in defaults {
        if missing {
            set(&mut parsed).map_err(|e| invalid(&e))?;
        }
    }
    if parsed.minute().is_none() {
        parsed.set_minute(0).map_err(|e| invalid(&e))?;
    }
    let date = parsed.to_naive_date().map_err(|e| {
        Error::new(StatusCode::DatetimeFieldOverflow, format!("date/time field value out of range: \"{text}\" ({e})"))
    })?;
    let time = parsed.to_naive_time().map_err(|e| {
        Error::new(StatusCode::DatetimeFieldOverflow, format!("date/time field value out of range: \"{text}\" ({e})"))
    })?;
    Ok((date.and_time(time), parsed.offset()))
}

fn df_error(error: Error) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

fn session_zone(config: &ConfigOptions) -> Result<Tz, Error> {
    let name = config.execution.time_zone.clone().unwrap_or_else(|| "UTC".to_string());
    Tz::from_str(&name)
        .map_err(|_| Error::new(StatusCode::InvalidParameterValue, format!("time zone \"{name}\" not recognized")))
}

fn string_values(value: &ColumnarValue, rows: usize) -> DfResult<StringArray> {
    let array = value.to_array(rows)?;
    let array = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
    Ok(array.as_string::<i32>().clone())
}

/// The template of a call: one for every row when it is a constant.
enum Templates {
    One(Option<(String, Vec<Part>)>),
    Each(StringArray),
}

impl Templates {
    fn new(value: &ColumnarValue, rows: usize) -> DfResult<Self> {
        Ok(match value {
            ColumnarValue::Scalar(scalar) => {
                let text = match scalar {
                    ScalarValue::Utf8(t) | ScalarValue::LargeUtf8(t) | ScalarValue::Utf8View(t) => t.clone(),
                    ScalarValue::Null => None,
                    other => Some(other.to_string()),
                };
                Templates::One(match text {
                    Some(text) => {
                        let parts = compile(&text).map_err(df_error)?;
                        Some((text, parts))
                    }
                    None => None,
                })
            }
            ColumnarValue::Array(_) => Templates::Each(string_values(value, rows)?),
        })
    }

    fn get(&self, row: usize) -> DfResult<Option<(String, Vec<Part>)>> {
        Ok(match self {
            Templates::One(one) => one.clone(),
            Templates::Each(array) if array.is_null(row) => None,
            Templates::Each(array) => {
                let text = array.value(row).to_string();
                let parts = compile(&text).map_err(df_error)?;
                Some((text, parts))
            }
        })
    }
}

fn rows_of(args: &[ColumnarValue]) -> usize {
    args.iter()
        .find_map(|a| match a {
            ColumnarValue::Array(array) => Some(array.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1)
}

fn all_scalar(args: &[ColumnarValue]) -> bool {
    args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)))
}

fn result(array: ArrayRef, scalar: bool) -> DfResult<ColumnarValue> {
    Ok(if scalar {
        ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
    } else {
        ColumnarValue::Array(array)
    })
}

/// `to_char(timestamp | timestamptz | date, template)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToChar {
    signature: Signature,
}

/// The `to_char` every session uses ([`ToChar`]).
pub fn to_char_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ToChar { signature: Signature::user_defined(Volatility::Stable) })
}

impl ScalarUDFImpl for ToChar {
    fn name(&self) -> &str {
        "to_char"
    }

    /// DataFusion's `to_char` is also registered as `date_format`; the
    /// alias must point here too, or rebuilding a session state from its
    /// function map can bring DataFusion's `to_char` back under its name.
    fn aliases(&self) -> &[String] {
        static ALIASES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| vec!["date_format".into()]);
        &ALIASES
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        match arg_types {
            [DataType::Timestamp(..) | DataType::Date32 | DataType::Null, template] => {
                let first = if arg_types[0] == DataType::Null { DataType::Date32 } else { arg_types[0].clone() };
                let template = if matches!(template, DataType::Null) { DataType::Utf8 } else { template.clone() };
                Ok(vec![first, template])
            }
            [DataType::Date64, _] => Ok(vec![DataType::Date32, DataType::Utf8]),
            [other, _] => Err(df_error(Error::new(
                StatusCode::FunctionNotFound,
                format!(
                    "function to_char({}, text) does not exist (to_char formats dates and timestamps here)",
                    crate::types::postgres_type_name(other)
                ),
            ))),
            _ => Err(df_error(Error::new(
                StatusCode::FunctionNotFound,
                format!("function to_char takes 2 arguments, not {}", arg_types.len()),
            ))),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = rows_of(&args.args);
        let scalar = all_scalar(&args.args);
        let templates = Templates::new(&args.args[1], rows)?;
        let values = args.args[0].to_array(rows)?;
        let zone = match values.data_type() {
            DataType::Timestamp(_, Some(_)) => Some(session_zone(&args.config_options).map_err(df_error)?),
            _ => None,
        };
        let micros = match values.data_type() {
            DataType::Timestamp(..) => {
                Some(datafusion::arrow::compute::cast(&values, &DataType::Timestamp(TimeUnit::Microsecond, None))?)
            }
            _ => None,
        };
        let mut out = datafusion::arrow::array::StringBuilder::new();
        for row in 0..rows {
            let Some((_, parts)) = templates.get(row)? else {
                out.append_null();
                continue;
            };
            if values.is_null(row) {
                out.append_null();
                continue;
            }
            let naive = match &micros {
                Some(micros) => {
                    let micros = micros.as_any().downcast_ref::<TimestampMicrosecondArray>().map(|a| a.value(row));
                    micros.and_then(DateTime::from_timestamp_micros).map(|d| d.naive_utc())
                }
                None => values
                    .as_any()
                    .downcast_ref::<Date32Array>()
                    .and_then(|a| a.value_as_date(row))
                    .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default()),
            };
            let Some(naive) = naive else {
                return Err(df_error(Error::new(StatusCode::DatetimeFieldOverflow, "timestamp out of range")));
            };
            let text = match &zone {
                Some(zone) => format_parts(&parts, &zone.from_utc_datetime(&naive)),
                None => format_parts(&parts, &naive.and_utc()),
            };
            out.append_value(text);
        }
        result(Arc::new(out.finish()), scalar)
    }
}

/// `to_timestamp(text, template)` and `to_date(text, template)` with
/// Postgres templates; every other form goes to DataFusion's function.
#[derive(Debug)]
pub struct FromText {
    inner: Arc<ScalarUDF>,
    date: bool,
}

impl PartialEq for FromText {
    fn eq(&self, other: &Self) -> bool {
        self.date == other.date && self.inner == other.inner
    }
}

impl Eq for FromText {}

impl std::hash::Hash for FromText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.date.hash(state);
        self.inner.name().hash(state);
    }
}

/// The `to_timestamp` every session uses ([`FromText`]).
pub fn to_timestamp_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(FromText {
        inner: datafusion::functions::datetime::to_timestamp(&ConfigOptions::default()),
        date: false,
    })
}

/// The `to_date` every session uses ([`FromText`]).
pub fn to_date_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(FromText { inner: datafusion::functions::datetime::to_date(), date: true })
}

fn is_text(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null)
}

impl ScalarUDFImpl for FromText {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(FromText { inner: Arc::new(inner), date: self.date }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let types: Vec<DataType> = args.args.iter().map(ColumnarValue::data_type).collect();
        if !matches!(types.as_slice(), [a, b] if is_text(a) && is_text(b)) {
            return self.inner.invoke_with_args(args);
        }
        let rows = rows_of(&args.args);
        let scalar = all_scalar(&args.args);
        let texts = string_values(&args.args[0], rows)?;
        let templates = Templates::new(&args.args[1], rows)?;
        let zone = if self.date { None } else { Some(session_zone(&args.config_options).map_err(df_error)?) };
        let mut dates = Vec::with_capacity(rows);
        let mut stamps = Vec::with_capacity(rows);
        for row in 0..rows {
            let Some((template, parts)) = templates.get(row)? else {
                dates.push(None);
                stamps.push(None);
                continue;
            };
            if texts.is_null(row) {
                dates.push(None);
                stamps.push(None);
                continue;
            }
            let (local, offset) = parse_parts(&parts, texts.value(row), &template).map_err(df_error)?;
            if self.date {
                let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
                dates.push(i32::try_from((local.date() - epoch).num_days()).ok());
                continue;
            }
            let utc = match (offset, &zone) {
                (Some(offset), _) => Some(local - chrono::Duration::seconds(i64::from(offset))),
                (None, Some(zone)) => zone.from_local_datetime(&local).earliest().map(|d| d.naive_utc()),
                (None, None) => Some(local),
            };
            let nanos = utc.and_then(|u| u.and_utc().timestamp_nanos_opt()).ok_or_else(|| {
                df_error(Error::new(
                    StatusCode::DatetimeFieldOverflow,
                    format!("timestamp out of range: \"{}\"", texts.value(row)),
                ))
            })?;
            stamps.push(Some(nanos));
        }
        let array: ArrayRef = if self.date {
            Arc::new(Date32Array::from(dates))
        } else {
            let DataType::Timestamp(_, tz) = self.inner.return_type(&types)? else {
                return Err(DataFusionError::Internal("to_timestamp returns a timestamp".into()));
            };
            Arc::new(TimestampNanosecondArray::from(stamps).with_timezone_opt(tz))
        };
        result(array, scalar)
    }
}

/// `interval * factor` (or `/ factor` when `divide`), as Postgres'
/// interval_mul computes it: the fraction of a month carries into days (30
/// to a month), the fraction of a day into time (24 hours to a day), time is
/// rounded to microseconds; a result out of range is 22008.
pub fn interval_scale(
    interval: datafusion::logical_expr::Expr,
    factor: datafusion::logical_expr::Expr,
    divide: bool,
) -> datafusion::logical_expr::Expr {
    static UDF: std::sync::LazyLock<Arc<ScalarUDF>> = std::sync::LazyLock::new(|| {
        Arc::new(ScalarUDF::new_from_impl(IntervalScale { signature: Signature::any(3, Volatility::Immutable) }))
    });
    let factor = datafusion::logical_expr::cast(factor, DataType::Float64);
    let interval = datafusion::logical_expr::cast(
        interval,
        DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
    );
    UDF.call(vec![interval, factor, datafusion::logical_expr::lit(divide)])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct IntervalScale {
    signature: Signature,
}

fn scale_one(
    value: datafusion::arrow::datatypes::IntervalMonthDayNano,
    factor: f64,
) -> Option<datafusion::arrow::datatypes::IntervalMonthDayNano> {
    if !factor.is_finite() {
        return None;
    }
    let months = f64::from(value.months) * factor;
    let whole_months = months.trunc();
    let days = f64::from(value.days) * factor + (months - whole_months) * 30.0;
    let whole_days = days.trunc();
    let micros = (value.nanoseconds as f64 / 1000.0) * factor + (days - whole_days) * 86_400_000_000.0;
    let micros = micros.round();
    let in_i32 = |v: f64| (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&v);
    if !in_i32(whole_months) || !in_i32(whole_days) || micros.abs() >= 9.2e15 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)]
    Some(datafusion::arrow::datatypes::IntervalMonthDayNano::new(
        whole_months as i32,
        whole_days as i32,
        micros as i64 * 1000,
    ))
}

impl ScalarUDFImpl for IntervalScale {
    fn name(&self) -> &str {
        "pg_interval_scale"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        use datafusion::arrow::array::{Float64Array, IntervalMonthDayNanoArray};
        let rows = rows_of(&args.args);
        let scalar = all_scalar(&args.args);
        let intervals = args.args[0].to_array(rows)?;
        let factors = args.args[1].to_array(rows)?;
        let divide = matches!(&args.args[2], ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))));
        let intervals = intervals
            .as_any()
            .downcast_ref::<IntervalMonthDayNanoArray>()
            .ok_or_else(|| DataFusionError::Internal("pg_interval_scale: interval expected".into()))?;
        let factors = factors
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| DataFusionError::Internal("pg_interval_scale: float8 expected".into()))?;
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            if intervals.is_null(row) || factors.is_null(row) {
                out.push(None);
                continue;
            }
            let mut factor = factors.value(row);
            if divide {
                if factor == 0.0 {
                    return Err(df_error(Error::new(StatusCode::DivisionByZero, "division by zero")));
                }
                factor = 1.0 / factor;
            }
            let scaled = scale_one(intervals.value(row), factor)
                .ok_or_else(|| df_error(Error::new(StatusCode::DatetimeFieldOverflow, "interval out of range")))?;
            out.push(Some(scaled));
        }
        result(Arc::new(IntervalMonthDayNanoArray::from(out)), scalar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(template: &str, at: &str) -> String {
        let naive = NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        format_parts(&compile(template).unwrap(), &naive.and_utc())
    }

    #[test]
    fn formats_like_postgres() {
        let at = "2024-03-05 14:07:09.123456";
        assert_eq!(format("YYYY-MM-DD HH24:MI:SS.US", at), "2024-03-05 14:07:09.123456");
        assert_eq!(format("YYYY-MM-DD HH:MI:SS AM", at), "2024-03-05 02:07:09 PM");
        assert_eq!(format("Month DD", at), "March     05");
        assert_eq!(format("FMMonth FMDDth, YYYY", at), "March 5th, 2024");
        assert_eq!(format("DY dy Day MON", at), "TUE tue Tuesday   MAR");
        assert_eq!(format("\"Q\"Q WW D DDD J CC", at), "Q1 10 3 065 2460375 21");
        assert_eq!(format("HH24:MI:SS.MS", at), "14:07:09.123");
        assert_eq!(format("SSSS", at), "50829");
    }

    #[test]
    fn parses_like_postgres() {
        let parse = |text: &str, template: &str| {
            parse_parts(&compile(template).unwrap(), text, template).map(|(t, _)| t.to_string())
        };
        assert_eq!(
            parse("2024-01-02 03:04:05.123456", "YYYY-MM-DD HH24:MI:SS.US").unwrap(),
            "2024-01-02 03:04:05.123456"
        );
        assert_eq!(parse("05 Mar 2024", "DD Mon YYYY").unwrap(), "2024-03-05 00:00:00");
        assert_eq!(parse("2024-3-5", "YYYY-MM-DD").unwrap(), "2024-03-05 00:00:00");
        assert_eq!(parse("10:30", "HH24:MI").unwrap(), "0001-01-01 10:30:00");
        assert_eq!(parse("02:00 PM", "HH:MI AM").unwrap(), "0001-01-01 14:00:00");
        assert!(parse("2024-13-01", "YYYY-MM-DD").is_err());
        assert!(compile("Y,YYY").is_err());
    }
}
