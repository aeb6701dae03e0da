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

// Long: one arm per command, each only parsing into a library call and its exit code.
async fn run(cli: Cli) -> anyhow::Result<i32> {
    let path = cli.config.clone();
    match cli.command {
        Command::Tables { destination: true } => {
            print_destination_tables(&load_config(&path)?).await
        }
        Command::Sync(args) => {
            let config = load_config(&path)?;
            let (every, json) = (args.every, args.json);
            sync(&config, &args.into(), every, json).await
        }
        Command::Reload { tables, json } => {
            let config = load_config(&path)?;
            let options = cdc::sync::Options {
                tables,
                strategy: Some(cdc::config::Strategy::Reload),
                jobs: 1,
                ..Default::default()
            };
            sync(&config, &options, None, json).await
        }
        Command::Extract { table, to, delta } => {
            let config = load_config(&path)?;
            let written = cdc::sync::files::extract(&config, &table, &to, delta)
                .await
                .context("extract failed")?;
            println!(
                "Wrote {} rows of {table} to {}",
                written.rows,
                written.data.display()
            );
            Ok(exit::OK)
        }
        Command::Load { table, from } => {
            let config = load_config(&path)?;
            let loaded = cdc::sync::files::load(&config, &table, &from)
                .await
                .context("load failed")?;
            println!("Loaded {loaded} rows into {table}");
            Ok(exit::OK)
        }
        Command::Tables { destination: false } => print_source_tables(&load_config(&path)?).await,
        Command::Init {
            output,
            force,
            from_pgwarehouse,
        } => init(&output, force, from_pgwarehouse.as_deref()),
        Command::Resync { tables, wait } => {
            let config = load_config(&path)?;
            (cdc::snapshot::chunked::resync(&config, &tables, wait).await)
                .context("resync failed")?;
            Ok(exit::OK)
        }
        Command::Teardown { yes } => {
            let config = load_config(&path)?;
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
            let config = load_config(&path)?;
            let report = cdc::snapshot::run(&config, force)
                .await
                .context("snapshot failed")?;
            print!("{report}");
            Ok(exit::OK)
        }
        Command::Run => stream(&load_config(&path)?).await,
        Command::Status {
            json,
            max_lag_bytes,
            max_lag_seconds,
            require_active,
        } => {
            let config = load_config(&path)?;
            status(
                &config,
                json,
                max_lag_bytes,
                max_lag_seconds,
                require_active,
            )
            .await
        }
    }
}

/// `cdc tables --destination`: each destination table with its size and last sync pass.
async fn print_destination_tables(config: &Config) -> anyhow::Result<i32> {
    let tables = cdc::tables::destination(config)
        .await
        .context("cannot list destination tables")?;
    println!(
        "{:<36} {:>12} {:>10}  {:<9} {:<27} position",
        "destination table", "rows", "size", "strategy", "last pass"
    );
    for t in tables {
        let rows = t.rows.map_or("(missing)".into(), |r| r.to_string());
        let size = t
            .bytes
            .map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        let (last, position) = match &t.last_pass {
            Some(s) => (
                s.last_pass.map_or("-".into(), cdc::model::time::format_utc),
                format!(
                    "{} ({} rows, {:.1}s)",
                    s.position.as_deref().unwrap_or("-"),
                    s.rows,
                    s.seconds
                ),
            ),
            None => ("never".into(), "-".into()),
        };
        println!(
            "{:<36} {rows:>12} {size:>10}  {:<9} {last:<27} {position}",
            t.name, t.strategy
        );
    }
    Ok(exit::OK)
}

/// `cdc tables`: each source table and whether it can be replicated.
async fn print_source_tables(config: &Config) -> anyhow::Result<i32> {
    let tables = cdc::tables::list(config)
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

/// `cdc status`: the report, printed or as JSON; its verdict is the exit code.
async fn status(
    config: &Config,
    json: bool,
    max_lag_bytes: Option<u64>,
    max_lag_seconds: Option<u64>,
    require_active: bool,
) -> anyhow::Result<i32> {
    let bounds = cdc::status::Bounds {
        max_lag_bytes: max_lag_bytes.unwrap_or(config.status.max_lag_bytes),
        max_lag_seconds: max_lag_seconds.unwrap_or(config.status.max_lag_seconds),
        require_active,
    };
    let report = cdc::status::check(config, &bounds)
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

/// `cdc init`: the example configuration written out.
fn init(output: &Path, force: bool, from_pgwarehouse: Option<&Path>) -> anyhow::Result<i32> {
    if output.exists() && !force {
        // The command line asks for something unsafe, not an internal failure.
        eprintln!(
            "error: {} already exists; pass --force to overwrite it",
            output.display()
        );
        return Ok(exit::USAGE);
    }
    if let Some(yaml) = from_pgwarehouse {
        let text = std::fs::read_to_string(yaml)
            .with_context(|| format!("cannot read the pgwarehouse config {}", yaml.display()))?;
        let converted = match cdc::config::pgwarehouse::convert(&text) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {}: {e}", yaml.display());
                return Ok(exit::CONFIG);
            }
        };
        std::fs::write(output, &converted.toml)
            .with_context(|| format!("cannot write {}", output.display()))?;
        println!(
            "Wrote {} from {}: check it, then run `cdc sync` (or `cdc sync --every 1h`).",
            output.display(),
            yaml.display()
        );
        for note in &converted.notes {
            eprintln!("not carried over: {note}");
        }
        return Ok(exit::OK);
    }
    std::fs::write(output, cdc::config::EXAMPLE)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "Wrote {}: set source.url, destination.url and [[tables]], then run `cdc snapshot`.",
        output.display()
    );
    Ok(exit::OK)
}

/// `cdc run` until a signal asks it to stop after the batch in flight.
async fn stream(config: &Config) -> anyhow::Result<i32> {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing the batch in flight");
        let _ = stop.send(true);
    });
    cdc::run::run(config, shutdown)
        .await
        .context("streaming failed")?;
    Ok(exit::OK)
}

/// `cdc verify`: compare, print or write the report, exit 0 (equal), 1 (differences), 2 (error).
async fn verify(config_path: &Path, args: VerifyArgs) -> anyhow::Result<i32> {
    use cdc::verify::{self, Options};

    let standalone = match (&args.source, &args.destination) {
        (Some(src), Some(dst)) => Some((
            standalone_conninfo("--source", src, "CDC_SOURCE_PASSWORD")?,
            standalone_target(dst)?,
            verify::pairs_from_args(&args.tables)?,
        )),
        _ => None,
    };
    // Standalone comparisons report the first look; a configured pipeline may be applying
    // the rows still, so differences are looked at again after 5 s.
    let default_recheck_ms = if standalone.is_some() { 0 } else { 5000 };
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
    let (report, pairs) = match standalone {
        Some((source, destination, pairs)) => {
            let report =
                verify::verify_into(&source, &destination, &pairs, &options, &observe_verify)
                    .await?;
            (report, pairs)
        }
        None => {
            let config = Config::load_checked(
                config_path,
                &ProcessEnv,
                cdc::destination::registry::problems,
            )
            .context(
                "cannot use the configuration (or pass --source, --destination and --table)",
            )?;
            verify::configured(&config, &args.tables, &options, &observe_verify).await?
        }
    };
    verify_output(config_path, args, report, pairs).await
}

/// What `cdc verify` logs as it goes.
fn observe_verify(event: &cdc::verify::Event<'_>) {
    use cdc::verify::Event;
    match event {
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
    }
}

async fn verify_output(
    config_path: &Path,
    args: VerifyArgs,
    report: cdc::verify::Report,
    pairs: Vec<cdc::verify::TablePair>,
) -> anyhow::Result<i32> {
    use cdc::verify::report::Format;
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
    if args.repair && !report.equal {
        let config = Config::load_checked(
            config_path,
            &ProcessEnv,
            cdc::destination::registry::problems,
        )
        .context("cannot use the configuration")?;
        let repaired = cdc::sync::repair_report(&config, &pairs, &report).await?;
        for (table, r) in &repaired {
            println!(
                "Repaired {table}: {} inserted, {} updated, {} deleted",
                r.inserted, r.updated, r.deleted
            );
        }
        if report.tables.iter().any(|t| t.truncated) {
            println!("The comparison stopped at --max-differences: run `cdc verify --repair` again for the rest.");
        }
    }
    Ok(if report.equal {
        verify_exit::EQUAL
    } else {
        verify_exit::DIFFERENT
    })
}

/// `cdc sync` / `cdc reload`: passes until done or stopped, each summarised; the exit code
/// says whether every table synced.
async fn sync(
    config: &Config,
    options: &cdc::sync::Options,
    every: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<i32> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stop requested");
        let _ = stop.send(true);
    });
    // Repeating passes run as a sidecar would: their counts on /metrics, as `cdc run`'s.
    let metrics = std::sync::Arc::new(cdc::metrics::Metrics::default());
    let server = match every {
        Some(_) => Some(
            cdc::http::serve(
                &config.status.listen,
                metrics.clone(),
                config.status.max_lag_bytes,
                config.status.max_lag_seconds,
            )
            .await?,
        ),
        None => None,
    };
    let mut print = |summary: &cdc::sync::Summary| {
        use std::io::Write;
        let rows = summary
            .tables
            .iter()
            .map(|t| t.inserted + t.updated + t.upserted + t.deleted)
            .sum();
        metrics.sync_pass(summary.failed().is_empty(), rows);
        let text = if json {
            serde_json::to_string(summary).unwrap_or_default() + "\n"
        } else {
            summary.to_string()
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        for t in summary.failed() {
            eprintln!(
                "error: {} failed: {}",
                t.destination,
                t.error.as_deref().unwrap_or_default()
            );
        }
    };
    let last = cdc::sync::run(config, options, every, stopped, &mut print).await;
    if let Some(server) = server {
        server.abort();
    }
    let last = last.context("sync failed")?;
    Ok(match last {
        Some(s) if !s.failed().is_empty() => cli_sync_failed(&s),
        _ => exit::OK,
    })
}

fn cli_sync_failed(s: &cdc::sync::Summary) -> i32 {
    let names: Vec<&str> = s.failed().iter().map(|t| t.destination.as_str()).collect();
    eprintln!(
        "error: {} of {} tables failed: {}",
        names.len(),
        s.tables.len(),
        names.join(", ")
    );
    if names.len() == s.tables.len() {
        // Nothing synced: the kind of failure says whether to retry.
        if s.failures_transient() {
            exit::TRANSIENT
        } else {
            exit::DEFINITE
        }
    } else {
        cdc::cli::sync_exit::SOME_TABLES_FAILED
    }
}

/// `--destination`: any URL a destination driver claims; its password may come from
/// `CDC_DESTINATION_PASSWORD`.
fn standalone_target(url: &str) -> anyhow::Result<cdc::destination::registry::Side> {
    use cdc::destination::registry::{driver_of, Settings};
    let driver = driver_of(url).map_err(|e| anyhow::anyhow!("--destination {e}"))?;
    driver
        .check(url)
        .map_err(|e| anyhow::anyhow!("--destination {e}"))?;
    let password = ProcessEnv.var("CDC_DESTINATION_PASSWORD").map(Secret::new);
    Ok(driver.compare_side(&Settings::standalone(url, password))?)
}

/// A connection string from the command line; the password may come from `password_var`.
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

fn load_config(path: &Path) -> anyhow::Result<Config> {
    let config = Config::load_checked(path, &ProcessEnv, cdc::destination::registry::problems)
        .context("cannot use the configuration")?;
    tracing::debug!(config = ?config, "configuration loaded");
    Ok(config)
}

/// The documented exit code for an error (see `cdc::cli::exit`).
fn exit_code(e: &anyhow::Error) -> i32 {
    use cdc::error::Kind;
    for cause in e.chain() {
        if cause.is::<ConfigError>() {
            return exit::CONFIG;
        }
        if let Some(err) = cause.downcast_ref::<cdc::error::Error>() {
            return match err.kind() {
                Kind::Transient => exit::TRANSIENT,
                // A configuration problem met while connecting (unreadable password file) has
                // always exited as definite; CONFIG is for the file as loaded.
                Kind::Definite | Kind::Configuration => exit::DEFINITE,
                Kind::Internal => exit::INTERNAL,
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
