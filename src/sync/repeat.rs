//! `cdc sync --every`: passes repeated on a schedule until a stop is asked for, and the
//! durations the flag is written in.

use std::time::{Duration, Instant};

use super::{pass, Options, Summary};
use crate::config::Config;
use crate::error::Result;

/// `cdc sync`: one pass, or one every `every` until `stop` turns true. A stop during a pass
/// abandons it (its committed batches stand; the stored positions are those of the last
/// finished pass, so nothing is skipped); a stop between passes ends at once. `report` hears
/// each finished pass. Returns the last pass's summary (`None` if stopped before any ended).
pub async fn run(
    config: &Config,
    options: &Options,
    every: Option<Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    report: &mut (dyn FnMut(&Summary) + Send),
) -> Result<Option<Summary>> {
    let mut last = None;
    loop {
        let started = Instant::now();
        tokio::select! {
            result = pass(config, options) => {
                let summary = match result {
                    Ok(s) => s,
                    // A pass that could not start is retried at the next tick when repeating.
                    Err(e) if every.is_some() && e.is_transient() => {
                        tracing::warn!(error = %e, "sync pass could not run; trying again at the next one");
                        Summary::default()
                    }
                    Err(e) => return Err(e),
                };
                report(&summary);
                last = Some(summary);
            }
            _ = stop.wait_for(|s| *s) => {
                tracing::info!("stop requested: the pass in flight is abandoned; its committed batches stand");
                return Ok(last);
            }
        }
        let Some(every) = every else {
            return Ok(last);
        };
        let wait = every.saturating_sub(started.elapsed());
        tracing::info!(
            next_in_s = wait.as_secs(),
            "pass done; waiting for the next one"
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return Ok(last),
        }
    }
}

/// `--every` durations: `90s`, `15m`, `1h30m`, `2d`, or plain seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 30s, 15m, 1h30m or 1d");
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let (mut total, mut number) = (0u64, String::new());
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            number.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total += n * unit;
        number.clear();
    }
    if !number.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("15x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
