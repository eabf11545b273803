//! Layered configuration.
//!
//! Every setting has a built-in default (the `Default` impls of the section
//! structs). A TOML file overrides them: the file given with `--config FILE`,
//! or else `config/default.toml` when it exists in the working directory.
//! Environment variables named `STREAMHOUSE__SECTION__KEY` override both
//! (`STREAMHOUSE__SERVER__PG_PORT=6543`). Values from the environment are read
//! as TOML scalars when they parse as one (`6543`, `true`) and as strings
//! otherwise. Unknown sections or keys, from either source, are an error that
//! names the key: a typo must never silently fall back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use streamhouse_engine::{ByteSize, ClusterConfig, EngineConfig, ViewsConfig};
use streamhouse_server::ServerConfig;
use streamhouse_server::auth::AuthConfig;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "STREAMHOUSE__";

/// The file read when `--config` is not given, relative to the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

/// The whole configuration of a streamhouse server.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening addresses, connection limits, shutdown.
    pub server: ServerConfig,
    /// Where data lives.
    pub storage: StorageConfig,
    /// Query execution: memory, parallelism, timeouts.
    pub execution: EngineConfig,
    /// Materialized view maintenance.
    pub views: ViewsConfig,
    /// A server's workers (`workers`), a worker's address (`listen`).
    pub cluster: ClusterConfig,
    /// Who may connect: authentication methods by client address, the
    /// bootstrap superuser's password, Flight token lifetime.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
}

/// Where streamhouse keeps its data.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Local directory of the server (its lock, spill files, and the
    /// warehouse unless `url` puts it elsewhere); created when missing.
    pub data_dir: PathBuf,
    /// Where the tables live: unset, `<data_dir>/warehouse` on the local
    /// disk; `s3://bucket/prefix`, S3-compatible object storage (see `s3`).
    pub url: Option<String>,
    /// Sync every local write before acknowledging it (the default). `false`
    /// acknowledges commits still in the page cache: a power cut or kernel
    /// crash can then lose or tear acknowledged rows. Only for throwaway
    /// benchmarks. (S3 acknowledges a write only once it is durable.)
    pub sync: bool,
    /// The S3 endpoint and credentials for an `s3://` url.
    pub s3: S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { data_dir: PathBuf::from("data"), url: None, sync: true, s3: S3Config::default() }
    }
}

/// How to reach an S3-compatible object store. Every unset key falls back to
/// the usual `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
/// `AWS_ENDPOINT_URL`), then to AWS's defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// The endpoint, e.g. `http://127.0.0.1:9000` for a local server; unset is AWS.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` when unset everywhere).
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key (never printed).
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary credentials (never printed).
    pub session_token: Option<Secret>,
    /// Address buckets as `bucket.endpoint` instead of `endpoint/bucket`
    /// (path style, the default, which local servers need).
    pub virtual_hosted_style: bool,
    /// Local disk cache of the Parquet ranges read from the bucket, in
    /// `<data_dir>/cache` (emptied at start): `"0"` turns it off.
    pub cache_size: ByteSize,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            virtual_hosted_style: false,
            cache_size: ByteSize::Bytes(1 << 30),
        }
    }
}

pub use streamhouse_engine::config::Secret;

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,streamhouse_server=debug`.
    /// `RUST_LOG`, when set, takes precedence.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info".to_string() }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An environment variable names a key in a way that cannot be applied.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A key is unknown or a value has the wrong type.
    #[error("invalid configuration key `{key}` (from {sources}): {message}")]
    Invalid {
        /// Dotted path of the offending key, e.g. `server.pg_prot`.
        key: String,
        /// Which sources were merged: the file and/or the environment.
        sources: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Config {
    /// Loads the configuration from defaults, then `file` (or
    /// [`DEFAULT_CONFIG_FILE`] when `file` is `None` and that file exists),
    /// then the process environment.
    ///
    /// # Errors
    /// See [`ConfigError`]: unreadable or malformed file, unknown keys, bad values.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match file {
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        Self::load_from(file.as_deref(), std::env::vars())
    }

    /// Like [`Config::load`], with the file and the environment given explicitly.
    ///
    /// # Errors
    /// See [`ConfigError`].
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut sources = Vec::new();
        let mut table = match file {
            Some(path) => {
                sources.push(path.display().to_string());
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Syntax { path: path.to_path_buf(), message: e.to_string() })?
            }
            None => toml::Table::new(),
        };
        let overrides: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        if !overrides.is_empty() {
            sources.push("environment".to_string());
        }
        for (var, raw) in overrides {
            apply_env_override(&mut table, &var, &raw)?;
        }
        let sources = if sources.is_empty() { "defaults".to_string() } else { sources.join(" + ") };
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Invalid {
            key: e.path().to_string(),
            sources,
            message: e.inner().to_string(),
        })
    }
}

/// Sets `section.key` in `table` from `STREAMHOUSE__SECTION__KEY=raw`.
fn apply_env_override(table: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(|part| part.to_ascii_lowercase()).collect();
    if path.len() < 2 || path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            var: var.to_string(),
            message: "expected the form STREAMHOUSE__SECTION__KEY".to_string(),
        });
    }
    let (key, sections) = path.split_last().expect("path has at least two parts");
    let mut current = table;
    for section in sections {
        let entry = current.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Env {
                    var: var.to_string(),
                    message: format!("`{section}` is a value, not a section"),
                });
            }
        };
    }
    current.insert(key.clone(), parse_scalar(raw));
    Ok(())
}

/// Reads an environment value as a TOML scalar when it is one, else as a string.
fn parse_scalar(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Every file in `config/` loads, and `default.toml` states exactly the built-in defaults.
    #[test]
    fn every_config_file_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("config/ exists") {
            let path = entry.expect("readable dir entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config =
                    Config::load_from(Some(&path), env(&[])).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if path.file_name().is_some_and(|n| n == "default.toml") {
                    assert_eq!(config, Config::default(), "default.toml must match the code defaults");
                }
                seen += 1;
            }
        }
        assert!(seen >= 2, "expected default.toml and at least one example in config/");
    }

    #[test]
    fn environment_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\npg_port = 7000\nflight_port = 7001\n").unwrap();
        let config = Config::load_from(
            Some(&path),
            env(&[
                ("STREAMHOUSE__SERVER__PG_PORT", "7100"),
                ("STREAMHOUSE__LOG__FORMAT", "json"),
                ("STREAMHOUSE__SERVER__HOST", "0.0.0.0"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.pg_port, 7100);
        assert_eq!(config.server.flight_port, 7001);
        assert_eq!(config.server.host, "0.0.0.0");
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::load_from(None, env(&[("STREAMHOUSE__SERVER__PG_PROT", "1")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("server.pg_prot") && msg.contains("environment"), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[storage]\ndata_dri = \"x\"\n").unwrap();
        let msg = Config::load_from(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(msg.contains("storage.data_dri") && msg.contains("c.toml"), "{msg}");

        std::fs::write(&path, "[nope]\nx = 1\n").unwrap();
        let msg = Config::load_from(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn bad_values_and_syntax_are_errors() {
        let msg = Config::load_from(None, env(&[("STREAMHOUSE__SERVER__PG_PORT", "many")])).unwrap_err().to_string();
        assert!(msg.contains("server.pg_port"), "{msg}");
        let msg = Config::load_from(None, env(&[("STREAMHOUSE__PORT", "1")])).unwrap_err().to_string();
        assert!(msg.contains("STREAMHOUSE__SECTION__KEY"), "{msg}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server\n").unwrap();
        let msg = Config::load_from(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(msg.contains("not valid TOML"), "{msg}");
    }
}
