//! The command-line contract: `cdc [--config PATH] <command>`.
//!
//! Parsing lives in the library so tests can check it; `main.rs` only runs the commands and
//! maps errors to the exit codes below (also in the README).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes, shared by every command.
pub mod exit {
    /// Success; for `status`, healthy.
    pub const OK: i32 = 0;
    /// `status`: replication lag above the configured bound.
    pub const LAGGING: i32 = 1;
    /// `status`: the slot is missing, invalid, or inactive when it should be streaming.
    pub const SLOT_PROBLEM: i32 = 2;
    /// `status`: cannot connect to a database.
    pub const UNREACHABLE: i32 = 3;
    /// The command line is wrong (unknown flag, missing argument).
    pub const USAGE: i32 = 64;
    /// A definite problem a human must fix (permissions, wal_level, missing table, ...).
    pub const DEFINITE: i32 = 65;
    /// A transient problem persisted (server down, connection lost): retrying later may work.
    pub const TRANSIENT: i32 = 69;
    /// Internal error or a command that is not implemented yet.
    pub const INTERNAL: i32 = 70;
    /// The configuration is missing or invalid.
    pub const CONFIG: i32 = 78;
}

/// Postgres change-data-capture: keep destination tables identical to source tables.
#[derive(Debug, Parser)]
#[command(name = "cdc", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "CDC_CONFIG",
        default_value = "config.toml",
        value_name = "PATH"
    )]
    pub config: PathBuf,

    /// Log format: human-readable, JSON lines, or auto (human on a terminal, JSON otherwise).
    #[arg(long, global = true, env = "CDC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the slot and copy every configured table into the destination (one-off, exits when done).
    Snapshot {
        /// Redo the snapshot even if one has completed.
        #[arg(long)]
        force: bool,
    },
    /// Stream changes into the destination, snapshotting first if needed (long-running).
    Run,
    /// Report slot lag and pipeline state; the exit code tells health checks the verdict.
    Status {
        /// Print JSON for scripts instead of the human summary.
        #[arg(long)]
        json: bool,
        /// Unhealthy above this many bytes of WAL lag (default: status.max_lag_bytes).
        #[arg(long, value_name = "BYTES")]
        max_lag_bytes: Option<u64>,
        /// Unhealthy when the last applied transaction is older (default: status.max_lag_seconds).
        #[arg(long, value_name = "SECONDS")]
        max_lag_seconds: Option<u64>,
        /// Also unhealthy (exit 2) when no process consumes the slot: for `cdc run` health checks.
        #[arg(long)]
        require_active: bool,
    },
    /// List the source's tables: row estimates, key or replica identity, replicable or not.
    Tables {
        /// List the destination's tables instead: rows, size, sync strategy, last pass and its position.
        #[arg(long)]
        destination: bool,
    },
    /// Bring tables over by query, without a replication slot: one pass, or one every --every.
    ///
    /// Needs only SELECT on the source (any wal_level, a hot standby works). Each table's
    /// `strategy` says how: new_rows, modified, xmin, reload, diff (default with a key; also
    /// deletes), skip. Exit code: 0 every table synced, 1 some tables failed (named on stderr;
    /// the others synced and committed), 65/69/78 as elsewhere.
    Sync(SyncArgs),
    /// Copy tables whole into new destination tables and swap them in (= `cdc sync --strategy reload`).
    Reload {
        /// Configured tables to reload (source or destination names).
        #[arg(required = true, value_name = "TABLE")]
        tables: Vec<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a configured table's rows to files (CSV with a header, plus a schema file).
    Extract {
        /// The configured table (source or destination name).
        #[arg(value_name = "TABLE")]
        table: String,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Only the rows the table's sync strategy would move now (from its stored position).
        #[arg(long)]
        delta: bool,
    },
    /// Load files written by `cdc extract` into the destination table (created if missing; rows upserted by key).
    Load {
        /// The configured table (source or destination name).
        #[arg(value_name = "TABLE")]
        table: String,
        /// Directory `cdc extract` wrote.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
    /// Write a commented configuration template (every option with its default).
    Init {
        /// Where to write it.
        #[arg(long, default_value = "config.toml", value_name = "PATH")]
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
        /// Write the config from a pgwarehouse `pgwarehouse_conf.yaml` (its credentials,
        /// warehouse and tables with their strategies), saying what could not be carried over.
        #[arg(long, value_name = "FILE")]
        from_pgwarehouse: Option<PathBuf>,
    },
    /// Copy tables of a streaming pipeline again, in chunks, while it keeps streaming.
    ///
    /// Records the request on the destination: a running `cdc run` starts the copy within 10 s
    /// (else the next `cdc run` does). The destination table is emptied by the first chunk and
    /// refills in key order; `cdc status` shows the progress.
    Resync {
        /// Source (or destination) table names, as in [[tables]].
        #[arg(required = true, value_name = "TABLE")]
        tables: Vec<String>,
        /// Wait until every copy is done, printing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Drop the replication slot and the publication on the source (so nothing pins WAL).
    Teardown {
        /// Confirm: without it, only say what would be dropped.
        #[arg(long)]
        yes: bool,
    },
    /// Compare source and destination tables row by row (by key): missing, different, extra rows.
    ///
    /// Exit code: 0 equal, 1 differences found, 2 error. Uses the config's tables and
    /// connections, or --source/--destination with --table for any two databases.
    Verify(VerifyArgs),
    /// Start throwaway local Postgres servers and show changes streaming through cdc (no config needed).
    Demo {
        /// How long to run the sample write load.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        seconds: u64,
        /// Where the rows go: a throwaway Postgres, or a DuckDB file in a temporary directory.
        #[arg(long, value_enum, default_value_t = DemoDestination::Postgres)]
        destination: DemoDestination,
    },
}

/// `cdc sync` flags.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// Configured tables to sync (source or destination names); default: all of them.
    #[arg(value_name = "TABLE")]
    pub tables: Vec<String>,
    /// Use this strategy for every table of this run instead of the configured ones.
    #[arg(long, value_enum, value_name = "STRATEGY")]
    pub strategy: Option<crate::config::Strategy>,
    /// Repeat forever, a pass every DURATION (e.g. 30s, 15m, 1h); SIGTERM stops cleanly.
    #[arg(long, value_name = "DURATION", value_parser = crate::sync::parse_duration)]
    pub every: Option<std::time::Duration>,
    /// Tables synced in parallel (Postgres destinations; a DuckDB file takes one at a time).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub jobs: usize,
    /// Print each pass's summary as JSON (one object per line) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A value that does not fit its destination column (SQLite sources): `fail` stops the
    /// table naming the row, `skip` writes the row to the rejects file and goes on.
    #[arg(long, value_enum, default_value = "fail", value_name = "fail|skip")]
    pub on_error: crate::sync::OnError,
    /// Where `--on-error skip` appends rejected rows (one JSON object per line).
    #[arg(long, default_value = "cdc-rejects.jsonl", value_name = "FILE")]
    pub rejects: std::path::PathBuf,
}

/// Exit codes of `cdc sync` besides the shared ones.
pub mod sync_exit {
    /// Some tables failed (they are named on stderr); the others synced and committed.
    pub const SOME_TABLES_FAILED: i32 = 1;
}

/// The destination of `cdc demo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoDestination {
    Postgres,
    Duckdb,
}

/// `cdc verify` flags.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Table to compare, `schema.table` or `source_table=destination_table`; repeatable.
    /// With a config: one of the configured tables (default: all of them).
    #[arg(long = "table", value_name = "TABLE[=DEST]")]
    pub tables: Vec<String>,
    /// Source connection string: compare without a config (needs --destination and --table).
    /// The password may come from CDC_SOURCE_PASSWORD.
    #[arg(long, value_name = "URL", requires_all = ["destination", "tables"])]
    pub source: Option<String>,
    /// Destination connection string (password from CDC_DESTINATION_PASSWORD).
    #[arg(long, value_name = "URL", requires = "source")]
    pub destination: Option<String>,
    /// Match rows by these columns instead of the primary key (one table only).
    #[arg(long, value_delimiter = ',', value_name = "COLUMNS")]
    pub key: Vec<String>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Human)]
    pub format: ReportFormat,
    /// Write the report here instead of standard output (a summary still prints).
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Look at differing rows again after this long and report only those that persist
    /// (for a running pipeline). Default: 5000 with a config, 0 (no second look) without.
    #[arg(long, value_name = "MS")]
    pub recheck_after_ms: Option<u64>,
    /// At most this many second looks.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub recheck_rounds: u32,
    /// Stop looking in a table after this many differing rows.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_differences: usize,
    /// Key ranges of at most this many rows are fetched and compared row by row.
    #[arg(long, default_value_t = 256, value_name = "ROWS")]
    pub leaf_rows: i64,
    /// Then make the destination equal: insert missing rows, update different ones, delete
    /// extra ones (values read from the source by key), and report what changed.
    #[arg(long, conflicts_with = "source")]
    pub repair: bool,
}

/// Output format of `cdc verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Human,
    Json,
    Csv,
}

/// Exit codes of `cdc verify` (documented in the issue tracker and README): not the shared
/// ones, because diff tools use 0/1/2.
pub mod verify_exit {
    pub const EQUAL: i32 = 0;
    pub const DIFFERENT: i32 = 1;
    pub const ERROR: i32 = 2;
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_lists_every_command() {
        let help = Cli::command().render_help().to_string();
        for cmd in ["snapshot", "run", "status", "demo", "--config"] {
            assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
        }
    }

    #[test]
    fn parses_global_flags_after_the_command() {
        let cli =
            Cli::try_parse_from(["cdc", "status", "--json", "--config", "/etc/cdc.toml"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("/etc/cdc.toml"));
        assert!(matches!(cli.command, Command::Status { json: true, .. }));
        assert!(Cli::try_parse_from(["cdc", "bogus"]).is_err());
    }

    #[test]
    fn verify_standalone_needs_both_urls_and_a_table() {
        assert!(Cli::try_parse_from(["cdc", "verify", "--source", "postgres://a/b"]).is_err());
        assert!(Cli::try_parse_from([
            "cdc",
            "verify",
            "--source",
            "postgres://a/b",
            "--destination",
            "postgres://c/d"
        ])
        .is_err());
        let cli = Cli::try_parse_from([
            "cdc",
            "verify",
            "--source",
            "postgres://a/b",
            "--destination",
            "postgres://c/d",
            "--table",
            "public.t",
            "--key",
            "a,b",
            "--format",
            "csv",
        ])
        .unwrap();
        let Command::Verify(args) = cli.command else {
            panic!("not verify")
        };
        assert_eq!(args.key, vec!["a", "b"]);
        assert_eq!(args.format, ReportFormat::Csv);
    }
}

/// What `cdc sync`'s arguments ask of a pass.
impl From<SyncArgs> for crate::sync::Options {
    fn from(args: SyncArgs) -> Self {
        crate::sync::Options {
            tables: args.tables,
            strategy: args.strategy,
            jobs: args.jobs,
            on_error: args.on_error,
            rejects: args.rejects,
        }
    }
}
