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
    Tables,
    /// Write a commented configuration template (every option with its default).
    Init {
        /// Where to write it.
        #[arg(long, default_value = "config.toml", value_name = "PATH")]
        output: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Drop the replication slot and the publication on the source (so nothing pins WAL).
    Teardown {
        /// Confirm: without it, only say what would be dropped.
        #[arg(long)]
        yes: bool,
    },
    /// Start throwaway local Postgres servers and show changes streaming through cdc (no config needed).
    Demo {
        /// How long to run the sample write load.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        seconds: u64,
    },
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
}
