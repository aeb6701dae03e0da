//! The `cdc` binary: parse the command line, set up logging, run a command, map the outcome to
//! an exit code. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use std::path::Path;

use cdc::cli::{exit, verify_exit, Cli, Command, LogFormat, ReportFormat, VerifyArgs};
use cdc::config::{Config, ConfigError, Env, ProcessEnv};
use cdc::conninfo::{ConnInfo, Secret};
use clap::Parser;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap uses 2 for usage errors; 2 means "slot problem" for `cdc status`.
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            return ExitCode::from(code as u8);
        }
    };
    // The demo prints its own progress table; its log would interleave with it.
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    init_logging(cli.log_format, default_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e) as u8)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Tables => {
            let config = load_config(&cli)?;
            let tables = cdc::tables::list(&config)
                .await
                .context("cannot list source tables")?;
            println!(
                "{:<40} {:>12}  {:<34} {:<10} status",
                "table", "est. rows", "identity", "configured"
            );
            for t in tables {
                let status = t
                    .problem
                    .as_deref()
                    .map_or("replicable".to_owned(), |p| format!("NOT replicable: {p}"));
                println!(
                    "{:<40} {:>12}  {:<34} {:<10} {status}",
                    t.name,
                    t.estimated_rows,
                    t.identity,
                    if t.configured { "yes" } else { "no" }
                );
            }
            Ok(exit::OK)
        }
        Command::Init { output, force } => {
            if output.exists() && !force {
                // The command line asks for something unsafe, not an internal failure.
                eprintln!(
                    "error: {} already exists; pass --force to overwrite it",
                    output.display()
                );
                return Ok(exit::USAGE);
            }
            std::fs::write(&output, cdc::config::EXAMPLE)
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!("Wrote {}: set source.url, destination.url and [[tables]], then run `cdc snapshot`.", output.display());
            Ok(exit::OK)
        }
        Command::Teardown { yes } => {
            let config = load_config(&cli)?;
            let dropped = cdc::teardown::run(&config, yes)
                .await
                .context("teardown failed")?;
            for line in dropped {
                println!("{line}");
            }
            Ok(exit::OK)
        }
        Command::Verify(args) => Ok(verify(&cli.config, args).await.unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            verify_exit::ERROR
        })),
        Command::Demo {
            seconds,
            destination,
        } => {
            cdc::demo::run(std::time::Duration::from_secs(seconds), destination).await?;
            Ok(exit::OK)
        }
        Command::Snapshot { force } => {
            let config = load_config(&cli)?;
            let report = cdc::snapshot::run(&config, force)
                .await
                .context("snapshot failed")?;
            print_snapshot_report(&report);
            Ok(exit::OK)
        }
        Command::Run => {
            let config = load_config(&cli)?;
            let (stop, shutdown) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown requested; finishing the batch in flight");
                let _ = stop.send(true);
            });
            cdc::run::run(&config, shutdown)
                .await
                .context("streaming failed")?;
            Ok(exit::OK)
        }
        Command::Status {
            json,
            max_lag_bytes,
            max_lag_seconds,
            require_active,
        } => {
            let config = load_config(&cli)?;
            let bounds = cdc::status::Bounds {
                max_lag_bytes: max_lag_bytes.unwrap_or(config.status.max_lag_bytes),
                max_lag_seconds: max_lag_seconds.unwrap_or(config.status.max_lag_seconds),
                require_active,
            };
            let report = cdc::status::check(&config, &bounds)
                .await
                .context("status check failed")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding status")?
                );
            } else {
                print!("{report}");
            }
            Ok(report.exit_code())
        }
    }
}

/// `cdc verify`: compare, print or write the report, exit 0 (equal), 1 (differences), 2 (error).
async fn verify(config_path: &Path, args: VerifyArgs) -> anyhow::Result<i32> {
    use cdc::verify::{self, report::Format, Event, Options};

    let (source, destination, pairs, default_recheck_ms) = match (&args.source, &args.destination) {
        (Some(src), Some(dst)) => (
            standalone_conninfo("--source", src, "CDC_SOURCE_PASSWORD")?,
            standalone_target(dst)?,
            verify::pairs_from_args(&args.tables)?,
            0,
        ),
        _ => {
            let config = Config::load(config_path, &ProcessEnv).context(
                "cannot use the configuration (or pass --source, --destination and --table)",
            )?;
            (
                config.source_conninfo().map_err(cdc::error::Error::from)?,
                config
                    .destination_target()
                    .map_err(cdc::error::Error::from)?,
                verify::pairs_from_config(&config, &args.tables)?,
                5000,
            )
        }
    };
    let options = Options {
        key: args.key.clone(),
        leaf_rows: args.leaf_rows,
        max_differences: args.max_differences,
        recheck_after: std::time::Duration::from_millis(
            args.recheck_after_ms.unwrap_or(default_recheck_ms),
        ),
        recheck_rounds: args.recheck_rounds,
        ..Options::default()
    };
    let report = verify::verify_into(&source, &destination, &pairs, &options, &|event| match event {
        Event::TableStarted { pair } => {
            tracing::info!(source = %pair.source, destination = %pair.destination, "comparing")
        }
        Event::PassDone {
            pair,
            differences,
            recheck_in: Some(wait),
            ..
        } => tracing::info!(
            table = %pair.source,
            differences,
            "rows differ; looking at them again in {:.1}s in case the pipeline is still applying them",
            wait.as_secs_f64()
        ),
        Event::PassDone { .. } => {}
    })
    .await?;
    let format = match args.format {
        ReportFormat::Human => Format::Human,
        ReportFormat::Json => Format::Json,
        ReportFormat::Csv => Format::Csv,
    };
    // Written without print!: a reader that stops early (`cdc verify | head`) closes the pipe,
    // and print! would panic on that. The verdict (exit code) stands either way.
    let mut stdout: Vec<u8> = Vec::new();
    match (&args.output, format) {
        (Some(path), _) => {
            let mut file = std::fs::File::create(path)
                .with_context(|| format!("cannot write the report to {}", path.display()))?;
            report.write(format, &mut file)?;
            stdout.extend_from_slice(report.human(20).as_bytes());
            stdout.extend_from_slice(format!("Full report: {}\n", path.display()).as_bytes());
        }
        (None, Format::Human) => {
            stdout.extend_from_slice(report.human(20).as_bytes());
            if report
                .tables
                .iter()
                .any(|t| t.missing.len().max(t.different.len()).max(t.extra.len()) > 20)
            {
                stdout.extend_from_slice(b"Only the first 20 rows of each kind are listed: use --format json|csv --output FILE for all.\n");
            }
        }
        (None, _) => {}
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let written = match (&args.output, format) {
            // Streamed: a full report can be large.
            (None, Format::Json | Format::Csv) => report.write(format, &mut out),
            _ => out.write_all(&stdout),
        };
        match written.and_then(|()| out.flush()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(anyhow::Error::new(e).context("writing the report to standard output"))
            }
            _ => {}
        }
    }
    Ok(if report.equal {
        verify_exit::EQUAL
    } else {
        verify_exit::DIFFERENT
    })
}

/// A connection string from the command line; the password may come from `password_var`.
/// `--destination`: a DuckDB file URL, or a Postgres connection string.
fn standalone_target(url: &str) -> anyhow::Result<cdc::destination::Target> {
    match cdc::destination::Target::duckdb_path(url) {
        Some(path) => Ok(cdc::destination::Target::DuckDb(
            path.map_err(|e| anyhow::anyhow!("--destination {e}"))?,
        )),
        None => Ok(cdc::destination::Target::Postgres(standalone_conninfo(
            "--destination",
            url,
            "CDC_DESTINATION_PASSWORD",
        )?)),
    }
}

fn standalone_conninfo(flag: &str, url: &str, password_var: &str) -> anyhow::Result<ConnInfo> {
    let mut info =
        ConnInfo::parse(url).with_context(|| format!("{flag} is not a valid connection string"))?;
    if let Some(pw) = ProcessEnv.var(password_var) {
        info.password = Some(Secret::new(pw));
    }
    Ok(info)
}

/// SIGTERM (container stop) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn print_snapshot_report(r: &cdc::snapshot::SnapshotReport) {
    if r.already_complete {
        println!("Snapshot already complete (consistent point {}); nothing to do. Use --force to redo it.", r.consistent_lsn);
    } else {
        println!(
            "Snapshot complete in {:.1}s; streaming will start at {}.",
            r.elapsed.as_secs_f64(),
            r.consistent_lsn
        );
    }
    for t in &r.tables {
        print!("  {} -> {}: {} rows", t.source, t.destination, t.rows);
        if t.bytes > 0 {
            print!(", {:.1} MiB", t.bytes as f64 / (1 << 20) as f64);
        }
        if !t.skipped_indexes.is_empty() {
            print!(
                " (indexes not portable, skipped: {})",
                t.skipped_indexes.join(", ")
            );
        }
        println!();
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let config = Config::load(&cli.config, &ProcessEnv).context("cannot use the configuration")?;
    tracing::debug!(config = ?config, "configuration loaded");
    Ok(config)
}

/// The documented exit code for an error (see `cdc::cli::exit`).
fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if cause.is::<ConfigError>() {
            return exit::CONFIG;
        }
        if let Some(err) = cause.downcast_ref::<cdc::error::Error>() {
            return match err {
                cdc::error::Error::NotImplemented(_) => exit::INTERNAL,
                e if e.is_transient() => exit::TRANSIENT,
                _ => exit::DEFINITE,
            };
        }
    }
    exit::INTERNAL
}

/// Logging to stderr: `CDC_LOG` if set, else `default_level` for cdc. The driver logs every
/// server NOTICE at info level ("schema cdc already exists, skipping" on each start); those
/// are left out by default.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CDC_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default_level},tokio_postgres=warn"))
    });
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
