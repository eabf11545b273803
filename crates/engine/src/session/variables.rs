//! Session variables: what `SET`, `SHOW` and `RESET` read and write.
//!
//! streamhouse keeps the run-time parameters Postgres clients set or ask for
//! on connect (`client_encoding`, `DateStyle`, `TimeZone`, `extra_float_digits`,
//! `application_name`, `search_path`, …) with Postgres' defaults, so drivers
//! work unchanged. A few have an effect: `TimeZone` (timestamp arithmetic and
//! `now()`), `statement_timeout`, and every `datafusion.*` option, which is
//! passed to DataFusion's session configuration. Names are case-insensitive.
//! Unknown names are an error (42704), except custom names containing a dot
//! (`myapp.setting`), which Postgres accepts too.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::{Error, Result, StatusCode};

use crate::settings::{KNOWN, Known};
pub use crate::settings::{SERVER_VERSION, SERVER_VERSION_NUM};

fn known(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.name.eq_ignore_ascii_case(name))
}

/// The canonical spelling of a parameter name (`datestyle` → `DateStyle`).
pub fn canonical_name(name: &str) -> String {
    match name.to_ascii_lowercase().as_str() {
        "time zone" | "timezone" => "TimeZone".to_string(),
        "transaction isolation level" => "transaction_isolation".to_string(),
        "names" => "client_encoding".to_string(),
        "session authorization" => "session_authorization".to_string(),
        lower => known(lower).map(|k| k.name.to_string()).unwrap_or_else(|| lower.to_string()),
    }
}

/// The current values of a session's parameters.
#[derive(Debug, Clone)]
pub struct Variables {
    /// Values that differ from the defaults, by lower-cased name.
    values: BTreeMap<String, String>,
    /// Defaults the server's configuration sets, by lower-cased name.
    server: BTreeMap<String, String>,
    user: String,
}

impl Variables {
    /// Defaults, plus the engine configuration's statement timeout and execution mode.
    /// `RESET` returns to these server defaults too.
    pub fn new(user: &str, config: &crate::config::EngineConfig) -> Self {
        let mut server = BTreeMap::new();
        if config.statement_timeout_ms > 0 {
            server.insert("statement_timeout".to_string(), config.statement_timeout_ms.to_string());
        }
        server.insert("execution_mode".to_string(), config.mode.as_str().to_string());
        server.insert("distributed".to_string(), config.distributed.as_str().to_string());
        Self { values: BTreeMap::new(), server, user: user.to_string() }
    }

    /// The value of a parameter, if it is known or was set.
    pub fn get(&self, name: &str) -> Option<String> {
        let lower = canonical_name(name).to_ascii_lowercase();
        if lower == "session_authorization" {
            return Some(self.user.clone());
        }
        if let Some(v) = self.values.get(&lower).or_else(|| self.server.get(&lower)) {
            return Some(v.clone());
        }
        known(&lower).map(|k| k.default.to_string())
    }

    /// Validates and stores a value; returns the canonical name and stored value.
    ///
    /// # Errors
    /// 42704 for an unknown parameter, 55P02 for a read-only one, 22023 for a bad value.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(String, String)> {
        let canonical = canonical_name(name);
        let lower = canonical.to_ascii_lowercase();
        match known(&lower) {
            Some(k) if !k.settable => {
                // Setting a fixed parameter to its current value is harmless (some drivers do).
                if value.eq_ignore_ascii_case(k.default) {
                    return Ok((canonical, value.to_string()));
                }
                return Err(Error::new(
                    StatusCode::CantChangeRuntimeParam,
                    format!("parameter \"{}\" cannot be changed", k.name),
                ));
            }
            Some(_) => {}
            None if lower.contains('.') => {}
            None => return Err(unknown(name)),
        }
        let value = normalize(&lower, value)?;
        self.values.insert(lower, value.clone());
        Ok((canonical, value))
    }

    /// Restores a parameter to its default.
    ///
    /// # Errors
    /// 42704 for an unknown parameter.
    pub fn reset(&mut self, name: &str) -> Result<String> {
        let canonical = canonical_name(name);
        let lower = canonical.to_ascii_lowercase();
        if known(&lower).is_none() && !lower.contains('.') {
            return Err(unknown(name));
        }
        self.values.remove(&lower);
        Ok(canonical)
    }

    /// Restores every parameter to its default.
    pub fn reset_all(&mut self) {
        self.values.clear();
    }

    /// `(name, setting, description)` of every known parameter, for `SHOW ALL`.
    pub fn all(&self) -> Vec<(String, String, String)> {
        let mut rows: Vec<_> = KNOWN
            .iter()
            .map(|k| (k.name.to_string(), self.get(k.name).unwrap_or_default(), k.description.to_string()))
            .collect();
        rows.extend(
            self.values
                .iter()
                .filter(|(name, _)| known(name).is_none())
                .map(|(name, value)| (name.clone(), value.clone(), String::new())),
        );
        rows.sort_by_key(|r| r.0.to_ascii_lowercase());
        rows
    }

    /// The memory each query may use, in bytes; `None`: only the server's limit.
    pub fn memory_limit(&self) -> Option<u64> {
        self.get("memory_limit")?.parse().ok()
    }

    /// How this session's queries run.
    pub fn execution_mode(&self) -> crate::config::ExecutionMode {
        self.get("execution_mode").and_then(|m| crate::config::ExecutionMode::parse(&m)).unwrap_or_default()
    }

    /// Whether this session's queries run across workers.
    pub fn distributed(&self) -> crate::config::DistributedMode {
        self.get("distributed").and_then(|m| crate::config::DistributedMode::parse(&m)).unwrap_or_default()
    }

    /// How a read of a materialized view treats a view that is behind:
    /// wait up to this long (`None`: read the latest snapshot at once,
    /// `view_staleness = 'allow'`).
    pub fn view_wait(&self) -> Option<Duration> {
        if self.get("view_staleness").is_some_and(|v| v == "allow") {
            return None;
        }
        let ms: u64 = self.get("view_read_timeout").and_then(|v| v.parse().ok()).unwrap_or(5000);
        Some(Duration::from_millis(ms))
    }

    /// The statement timeout, if one is set.
    pub fn statement_timeout(&self) -> Option<Duration> {
        let ms: u64 = self.get("statement_timeout")?.parse().ok()?;
        (ms > 0).then(|| Duration::from_millis(ms))
    }
}

fn unknown(name: &str) -> Error {
    Error::new(StatusCode::ObjectNotFound, format!("unrecognized configuration parameter \"{name}\""))
}

fn invalid_value(name: &str, value: &str, expected: &str) -> Error {
    Error::new(
        StatusCode::InvalidParameterValue,
        format!("invalid value for parameter \"{name}\": \"{value}\" ({expected})"),
    )
}

/// Checks and normalises values whose meaning streamhouse depends on.
fn normalize(lower: &str, value: &str) -> Result<String> {
    match lower {
        "client_encoding" => {
            let v = value.trim().to_ascii_uppercase().replace('-', "");
            if v == "UTF8" || v == "UNICODE" {
                Ok("UTF8".to_string())
            } else {
                Err(Error::new(
                    StatusCode::Unsupported,
                    format!("client encoding \"{value}\" is not supported: streamhouse speaks only UTF8"),
                ))
            }
        }
        "view_staleness" => match value.trim().to_ascii_lowercase().as_str() {
            v @ ("wait" | "allow") => Ok(v.to_string()),
            _ => Err(invalid_value(lower, value, "expected wait or allow")),
        },
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" | "view_read_timeout" => {
            parse_duration_ms(value)
                .map(|ms| ms.to_string())
                .ok_or_else(|| invalid_value(lower, value, "expected milliseconds or a duration like '5s', '2min'"))
        }
        "memory_limit" => crate::config::ByteSize::parse(value)
            .map(|size| match size {
                crate::config::ByteSize::Unlimited => "unlimited".to_string(),
                crate::config::ByteSize::Bytes(n) => n.to_string(),
            })
            .map_err(|_| invalid_value(lower, value, "expected a size like '256MB', '2GiB' or 'unlimited'")),
        "execution_mode" => crate::config::ExecutionMode::parse(value)
            .map(|mode| mode.as_str().to_string())
            .ok_or_else(|| invalid_value(lower, value, "expected auto, mpp or bsp")),
        "distributed" => crate::config::DistributedMode::parse(value)
            .map(|mode| mode.as_str().to_string())
            .ok_or_else(|| invalid_value(lower, value, "expected auto, on or off")),
        "extra_float_digits" => match value.trim().parse::<i32>() {
            Ok(n) if (-15..=3).contains(&n) => Ok(n.to_string()),
            _ => Err(invalid_value(lower, value, "expected an integer from -15 to 3")),
        },
        "datestyle" => {
            if value.to_ascii_uppercase().contains("ISO") {
                Ok("ISO, MDY".to_string())
            } else {
                Err(Error::unsupported(format!("DateStyle \"{value}\" is not supported: only ISO output is")))
            }
        }
        "intervalstyle" => {
            if value.eq_ignore_ascii_case("postgres") {
                Ok("postgres".to_string())
            } else {
                Err(Error::unsupported(format!("IntervalStyle \"{value}\" is not supported: only postgres output is")))
            }
        }
        _ => Ok(value.to_string()),
    }
}

/// Parses Postgres-style durations: `5000`, `'5s'`, `'250ms'`, `'2min'`, `'1h'`.
pub fn parse_duration_ms(value: &str) -> Option<u64> {
    let v = value.trim().to_ascii_lowercase();
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1000.0,
        "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        "us" => 0.001,
        _ => return None,
    };
    Some((number * factor) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_show_reset() {
        let mut vars = Variables::new("alice", &crate::config::EngineConfig::default());
        assert_eq!(vars.get("datestyle").as_deref(), Some("ISO, MDY"));
        assert_eq!(vars.get("session authorization").as_deref(), Some("alice"));
        vars.set("application_name", "psql").unwrap();
        assert_eq!(vars.get("APPLICATION_NAME").as_deref(), Some("psql"));
        vars.set("statement_timeout", "2s").unwrap();
        assert_eq!(vars.statement_timeout(), Some(Duration::from_secs(2)));
        vars.reset("statement_timeout").unwrap();
        assert_eq!(vars.statement_timeout(), None);
        assert_eq!(vars.set("nonsense", "1").unwrap_err().code(), StatusCode::ObjectNotFound);
        assert!(vars.set("myapp.tenant", "42").is_ok());
        assert_eq!(vars.get("myapp.tenant").as_deref(), Some("42"));
        assert_eq!(vars.set("server_version", "9.0").unwrap_err().code(), StatusCode::CantChangeRuntimeParam);
        assert_eq!(vars.set("client_encoding", "latin1").unwrap_err().code(), StatusCode::Unsupported);
        assert_eq!(vars.set("client_encoding", "utf-8").unwrap().1, "UTF8");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5000"), Some(5000));
        assert_eq!(parse_duration_ms("5s"), Some(5000));
        assert_eq!(parse_duration_ms("2min"), Some(120_000));
        assert_eq!(parse_duration_ms("soon"), None);
    }
}
