//! Engine settings (`[execution]` in the configuration file).

use serde::Deserialize;

/// Query execution settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Memory available to query execution across all running queries, as a
    /// size (`"4GiB"`, `"512MiB"`, a number of bytes) or `"unlimited"`.
    /// Operators that can spill (sorts, aggregations) spill when it is reached;
    /// others fail the query with SQLSTATE 53200.
    pub memory_limit: ByteSize,
    /// Partitions each query runs with; 0 means the number of CPU cores.
    pub target_partitions: usize,
    /// Rows per Arrow record batch inside execution.
    pub batch_size: usize,
    /// Default statement timeout in milliseconds; 0 disables it. Sessions may
    /// change it with `SET statement_timeout`.
    pub statement_timeout_ms: u64,
    /// Name of the one database (DataFusion catalog) clients connect to.
    pub database: String,
    /// How queries run unless a session sets `execution_mode`: `auto`, `mpp`
    /// or `bsp` (see [`ExecutionMode`]).
    pub mode: ExecutionMode,
    /// Directory for the stage files of BSP queries; emptied at start-up.
    /// Unset: `<storage.data_dir>/spill` for the server, a temporary
    /// directory for an embedded engine.
    pub spill_dir: Option<std::path::PathBuf>,
    /// How many more times a failed BSP task is run before the query fails.
    pub task_retries: usize,
    /// Tasks of one BSP stage that run at once; 0 means the number of CPU cores.
    pub stage_concurrency: usize,
    /// In `auto` mode, a query that has not produced its first row after this
    /// many milliseconds in MPP is re-run in BSP; 0 disables the switch on time
    /// (running out of memory always switches).
    pub bsp_after_ms: u64,
    /// The longest statement text a session takes, in bytes (longer is 54000).
    pub max_statement_bytes: usize,
    /// Cursors one session may hold open at once (more is 53400).
    pub max_cursors: usize,
    /// Statements one session may hold prepared with SQL `PREPARE` at once (more is 53400).
    pub max_prepared_statements: usize,
    /// Whether queries run across the workers of `[cluster]`: `auto` (when
    /// their scans read at least `distributed_min_bytes`), `on` (whenever a
    /// worker is up) or `off`. Only what can run on a worker is sent there.
    pub distributed: DistributedMode,
    /// In `auto`: the least bytes a query's Dynamic Table scans read for it
    /// to be distributed.
    pub distributed_min_bytes: ByteSize,
    /// Bytes of Dynamic Table files each task of a distributed scan reads
    /// (a scan runs on at most as many workers as are up).
    pub distributed_bytes_per_task: ByteSize,
}

/// Whether queries run across workers (`execution.distributed`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DistributedMode {
    /// When a worker is up and the query's scans read at least
    /// `execution.distributed_min_bytes`.
    #[default]
    Auto,
    /// Whenever a worker is up.
    On,
    /// Never.
    Off,
}

impl DistributedMode {
    /// `auto`, `on` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            DistributedMode::Auto => "auto",
            DistributedMode::On => "on",
            DistributedMode::Off => "off",
        }
    }

    /// Parses `auto`, `on` or `off` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(DistributedMode::Auto),
            "on" => Some(DistributedMode::On),
            "off" => Some(DistributedMode::Off),
            _ => None,
        }
    }
}

/// A server's workers, and a worker's own address (`[cluster]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The workers this server runs distributed queries on: `host:port` or
    /// `http://host:port` of each `streamhouse worker`.
    pub workers: Vec<String>,
    /// Where `streamhouse worker` listens for coordinators (`host:port`).
    pub listen: String,
    /// How often the server asks each worker how it is (ms).
    pub heartbeat_interval_ms: u64,
    /// A worker that has not answered for this long (ms) is lost: it is
    /// given no work until it answers again.
    pub lost_after_ms: u64,
    /// The secret servers and workers of a cluster share: a worker takes
    /// work only from callers that present it, and a worker without one
    /// listens on loopback only.
    pub secret: Option<Secret>,
}

/// A configuration value that is never printed (`streamhouse config`, logs).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<secret>\"")
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            workers: Vec::new(),
            listen: "127.0.0.1:7100".to_string(),
            heartbeat_interval_ms: 1000,
            lost_after_ms: 3000,
            secret: None,
        }
    }
}

/// How materialized views are maintained (`[views]` in the configuration file).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ViewsConfig {
    /// The most source changelog rows one maintenance step takes in. A view
    /// that is behind catches up in steps of about this many rows, each
    /// committed (and visible in `sys.views`) on its own; a single source
    /// commit bigger than this is read in pieces of this size within its
    /// step, so a view's memory stays bounded whatever the backlog.
    pub step_rows: usize,
    /// Rows a Top-N view keeps per partition beyond its first N, to move
    /// up when one of those goes, before it reads the partition again from
    /// its sources ([`crate::views::spares`]).
    pub top_n_spares: usize,
    /// A view created with a freshness and `refresh_mode = 'auto'` (the
    /// default) is maintained continuously when its freshness is below
    /// this, and refreshed in full on a schedule otherwise (Flink's 30
    /// minutes by default), as a duration (`"30 min"`, `"1 h"`).
    #[serde(deserialize_with = "duration")]
    pub full_refresh_threshold: std::time::Duration,
    /// Full refreshes that run at once (a pipeline's refreshes run in
    /// dependency order within this).
    pub refresh_concurrency: usize,
    /// How many more times a failed refresh is tried (after 1, 2, 4 … times
    /// `refresh_retry_backoff_ms`) before it is marked failed.
    pub refresh_retries: u32,
    /// The first pause before a failed refresh is tried again, in ms.
    pub refresh_retry_backoff_ms: u64,
    /// Memory one full refresh may use (its query runs in BSP, stage by
    /// stage, when it would need more), or `"unlimited"`.
    pub refresh_memory_limit: ByteSize,
}

impl Default for ViewsConfig {
    fn default() -> Self {
        Self {
            step_rows: 100_000,
            top_n_spares: 16,
            full_refresh_threshold: std::time::Duration::from_secs(30 * 60),
            refresh_concurrency: 2,
            refresh_retries: 3,
            refresh_retry_backoff_ms: 1000,
            refresh_memory_limit: ByteSize::Bytes(1 << 30),
        }
    }
}

/// A duration written as `"30 min"`, `"1 h"`, `"10 s"`, `"500 ms"` (a bare
/// number is milliseconds).
fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<std::time::Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Number(u64),
        Text(String),
    }
    match Text::deserialize(deserializer)? {
        Text::Number(ms) => Ok(std::time::Duration::from_millis(ms)),
        Text::Text(text) => streamhouse_storage::options::parse_duration_ms(&text)
            .map(std::time::Duration::from_millis)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid duration \"{text}\" (e.g. \"30 min\", \"1 h\")"))),
    }
}

/// How a query runs.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    /// MPP unless the plan's statistics say it needs more memory than it may
    /// use, and BSP again if MPP runs out of memory before its first row.
    #[default]
    Auto,
    /// Pipelined: every operator at once, in memory.
    Mpp,
    /// Stage by stage, each stage's output written to the spill directory.
    Bsp,
}

impl ExecutionMode {
    /// `auto`, `mpp` or `bsp`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionMode::Auto => "auto",
            ExecutionMode::Mpp => "mpp",
            ExecutionMode::Bsp => "bsp",
        }
    }

    /// Parses `auto`, `mpp` or `bsp` (any case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(ExecutionMode::Auto),
            "mpp" => Some(ExecutionMode::Mpp),
            "bsp" => Some(ExecutionMode::Bsp),
            _ => None,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            memory_limit: ByteSize::Unlimited,
            target_partitions: 0,
            batch_size: 8192,
            statement_timeout_ms: 0,
            database: "streamhouse".to_string(),
            mode: ExecutionMode::Auto,
            spill_dir: None,
            task_retries: 3,
            stage_concurrency: 0,
            bsp_after_ms: 0,
            max_statement_bytes: 16 << 20,
            max_cursors: 256,
            max_prepared_statements: 1024,
            distributed: DistributedMode::Auto,
            distributed_min_bytes: ByteSize::Bytes(64 << 20),
            distributed_bytes_per_task: ByteSize::Bytes(64 << 20),
        }
    }
}

/// A size in bytes, written as a number of bytes or with a unit
/// (`KiB`, `MiB`, `GiB`, `TiB`, or `KB`/`MB`/`GB` as powers of 1000), or
/// `"unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteSize {
    /// No limit.
    Unlimited,
    /// A limit in bytes.
    Bytes(u64),
}

impl ByteSize {
    /// The limit in bytes, if any.
    pub fn bytes(self) -> Option<u64> {
        match self {
            ByteSize::Unlimited => None,
            ByteSize::Bytes(n) => Some(n),
        }
    }

    /// Parses `"4GiB"`, `"512 MB"`, `"1048576"` or `"unlimited"`.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("unlimited") {
            return Ok(ByteSize::Unlimited);
        }
        let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad_size(text))?;
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "mb" => 1000u64.pow(2),
            "gb" => 1000u64.pow(3),
            "tb" => 1000u64.pow(4),
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            _ => return Err(bad_size(text)),
        };
        Ok(ByteSize::Bytes((number * factor as f64) as u64))
    }
}

fn bad_size(text: &str) -> String {
    format!("invalid size {text:?}: expected bytes, a size like \"512MiB\" or \"4GiB\", or \"unlimited\"")
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize::Bytes(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("unlimited"), Ok(ByteSize::Unlimited));
        assert_eq!(ByteSize::parse("1024"), Ok(ByteSize::Bytes(1024)));
        assert_eq!(ByteSize::parse("4GiB"), Ok(ByteSize::Bytes(4 << 30)));
        assert_eq!(ByteSize::parse("512 MB"), Ok(ByteSize::Bytes(512_000_000)));
        assert_eq!(ByteSize::parse("1.5k"), Ok(ByteSize::Bytes(1536)));
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("5 parsecs").is_err());
    }
}
