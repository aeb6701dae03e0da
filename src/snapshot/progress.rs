//! Progress of the copy: bars (bytes, rate, ETA per table) on a terminal, and a structured
//! log line per table every 10 seconds otherwise (containers, CI).

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Job;

pub(super) struct Progress {
    bars: Option<Vec<ProgressBar>>,
    ticker: tokio::task::JoinHandle<()>,
    jobs: Arc<Vec<Job>>,
}

impl Progress {
    pub(super) fn start(jobs: Arc<Vec<Job>>) -> Self {
        let estimate = |j: &Job| (j.schema.pages.max(1) as u64) * 8192;
        if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:30} {bar:30} {bytes:>10} {bytes_per_sec:>12} eta {eta:>4} {msg}",
            )
            .expect("valid template");
            let bars: Vec<ProgressBar> = jobs
                .iter()
                .map(|j| {
                    let b = multi.add(ProgressBar::new(estimate(j)).with_style(style.clone()));
                    b.set_prefix(j.destination.to_string());
                    b
                })
                .collect();
            let (ticking, tick_jobs) = (bars.clone(), jobs.clone());
            let ticker = tokio::spawn(async move {
                loop {
                    for (b, j) in ticking.iter().zip(tick_jobs.iter()) {
                        let done = j.bytes.load(Ordering::Relaxed);
                        // Heap size is only an estimate of the COPY volume.
                        if done > b.length().unwrap_or(0) {
                            b.set_length(done);
                        }
                        b.set_position(done);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            Progress {
                bars: Some(bars),
                ticker,
                jobs,
            }
        } else {
            let tick_jobs = jobs.clone();
            let ticker = tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let secs = started.elapsed().as_secs_f64();
                    for j in tick_jobs.iter() {
                        let bytes = j.bytes.load(Ordering::Relaxed);
                        tracing::info!(
                            table = %j.destination,
                            bytes,
                            estimated_bytes = estimate(j),
                            bytes_per_sec = (bytes as f64 / secs) as u64,
                            "snapshot progress"
                        );
                    }
                }
            });
            Progress {
                bars: None,
                ticker,
                jobs,
            }
        }
    }

    /// All rows of table `i` are in; keys and indexes are being built.
    pub(super) fn table_copied(&self, i: usize, rows: u64) {
        match &self.bars {
            Some(bars) => bars[i].set_message(format!("{rows} rows, building indexes")),
            None => {
                tracing::info!(table = %self.jobs[i].destination, rows, "rows copied; building keys and indexes")
            }
        }
    }

    /// Table `i` is complete.
    pub(super) fn table_done(&self, i: usize) {
        match &self.bars {
            Some(bars) => {
                let b = &bars[i];
                b.set_length(b.position());
                b.finish_with_message("done");
            }
            None => tracing::info!(table = %self.jobs[i].destination, "table complete"),
        }
    }

    pub(super) fn finish(self) {
        self.ticker.abort();
    }
}
