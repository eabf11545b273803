//! The run-time parameters streamhouse knows, with Postgres' names and
//! defaults: what sessions `SET` and `SHOW` ([`crate::session::variables`])
//! and what `pg_catalog.pg_settings` lists.

/// The `server_version` streamhouse reports. Drivers parse it; catalog
/// queries from psql and others adapt to it.
pub const SERVER_VERSION: &str = "16.6";
/// `server_version_num` to match [`SERVER_VERSION`].
pub const SERVER_VERSION_NUM: &str = "160006";

/// A known run-time parameter.
pub struct Known {
    /// Postgres' name.
    pub name: &'static str,
    /// Its default.
    pub default: &'static str,
    /// `pg_settings.short_desc`.
    pub description: &'static str,
    /// Whether clients may change it.
    pub settable: bool,
}

const fn var(name: &'static str, default: &'static str, description: &'static str) -> Known {
    Known { name, default, description, settable: true }
}

const fn fixed(name: &'static str, default: &'static str, description: &'static str) -> Known {
    Known { name, default, description, settable: false }
}

/// Parameters known to streamhouse, with Postgres' names and defaults.
pub const KNOWN: &[Known] = &[
    var("application_name", "", "Sets the application name reported in statistics and logs."),
    var("bytea_output", "hex", "Sets the output format for bytea."),
    var("client_encoding", "UTF8", "Sets the client's character set encoding (only UTF8 is supported)."),
    var("client_min_messages", "notice", "Sets the message levels sent to the client."),
    var("DateStyle", "ISO, MDY", "Sets the display format for date and time values."),
    var("default_transaction_isolation", "read committed", "Sets the isolation level of new transactions."),
    var("default_transaction_read_only", "off", "Sets the default read-only status of new transactions."),
    var("extra_float_digits", "1", "Sets the number of digits displayed for floating-point values."),
    var("idle_in_transaction_session_timeout", "0", "Accepted for compatibility; has no effect."),
    var("IntervalStyle", "postgres", "Sets the display format for interval values."),
    var("lc_messages", "C", "Sets the language in which messages are displayed."),
    var("lc_monetary", "C", "Sets the locale for formatting monetary amounts."),
    var("lc_numeric", "C", "Sets the locale for formatting numbers."),
    var("lc_time", "C", "Sets the locale for formatting date and time values."),
    var("lock_timeout", "0", "Accepted for compatibility; streamhouse statements take no user-visible locks."),
    var("search_path", "\"$user\", public", "Sets the schema search order for names that are not schema-qualified."),
    var("statement_timeout", "0", "Sets the maximum allowed duration of any statement (0 disables)."),
    var("synchronous_commit", "on", "Accepted for compatibility."),
    var("TimeZone", "UTC", "Sets the time zone for displaying and interpreting time stamps."),
    var("transaction_isolation", "read committed", "Shows the current transaction's isolation level."),
    var("transaction_read_only", "off", "Shows whether the current transaction is read-only."),
    var("row_security", "on", "Accepted for compatibility."),
    var("jit", "off", "Accepted for compatibility."),
    var("max_parallel_workers_per_gather", "2", "Accepted for compatibility."),
    var("work_mem", "4MB", "Accepted for compatibility; see memory_limit."),
    var(
        "memory_limit",
        "unlimited",
        "Sets the memory each query of this session may use (e.g. '256MB'); all queries together stay within the server's execution.memory_limit.",
    ),
    var(
        "execution_mode",
        "auto",
        "Sets how queries run: auto (MPP, or staged BSP when memory is short), mpp (pipelined, in memory) or bsp (stage by stage, spilled between stages).",
    ),
    var(
        "distributed",
        "auto",
        "Sets whether queries run across the server's workers: auto (when their scans read at least execution.distributed_min_bytes), on (whenever a worker is up) or off.",
    ),
    var(
        "view_read_timeout",
        "5000",
        "How long a read of a materialized view waits for it to reflect its sources' commits before failing with 55000 (milliseconds, or a duration like '10s').",
    ),
    var(
        "view_staleness",
        "wait",
        "wait: a read of a materialized view reflects every source commit made before it began (or fails after view_read_timeout); allow: read the view's latest snapshot at once, with a NOTICE giving its lag.",
    ),
    var("geqo", "on", "Accepted for compatibility."),
    var(
        "default_table_access_method",
        "heap",
        "Accepted for compatibility: tables are Dynamic Tables whatever it says.",
    ),
    fixed("block_size", "8192", "Shows the size of a disk block."),
    fixed("integer_datetimes", "on", "Shows whether datetimes are integer based."),
    fixed("is_superuser", "on", "Shows whether the current user is a superuser."),
    fixed("max_identifier_length", "63", "Shows the maximum identifier length."),
    fixed("max_index_keys", "32", "Shows the maximum number of index keys."),
    fixed("server_encoding", "UTF8", "Shows the server (database) character set encoding."),
    fixed("server_version", SERVER_VERSION, "Shows the server version."),
    fixed("server_version_num", SERVER_VERSION_NUM, "Shows the server version as an integer."),
    fixed("standard_conforming_strings", "on", "Causes '...' strings to treat backslashes literally."),
    fixed("in_hot_standby", "off", "Shows whether hot standby is currently active."),
];
