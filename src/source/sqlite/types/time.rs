//! Dates and timestamps as SQLite files hold them (ISO 8601 text): parsed, checked to exist,
//! and written back as Postgres input text, in UTC where a zone was given.

/// A `YYYY-MM-DD` date: (year, month, day) when it exists.
pub(crate) fn parse_date(t: &str) -> Option<(i64, u32, u32)> {
    let b = t.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = t[..4].parse().ok()?;
    let m: u32 = t[5..7].parse().ok()?;
    let d: u32 = t[8..10].parse().ok()?;
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days).contains(&d).then_some((y, m, d))
}

/// A parsed timestamp: the wall-clock parts and the zone offset, if one was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    date: String,
    hms: (u32, u32, u32),
    /// Fraction of a second, up to 6 digits as written.
    fraction: String,
    pub(crate) offset_seconds: Option<i32>,
    days: i64,
}

impl Stamp {
    pub(crate) fn text(&self, zone: bool) -> String {
        let (h, m, s) = self.hms;
        let mut out = format!("{} {h:02}:{m:02}:{s:02}", self.date);
        if !self.fraction.is_empty() {
            out.push('.');
            out.push_str(&self.fraction);
        }
        if zone {
            let o = self.offset_seconds.unwrap_or(0);
            let sign = if o < 0 { '-' } else { '+' };
            let o = o.abs();
            out.push_str(&format!("{sign}{:02}:{:02}", o / 3600, o / 60 % 60));
            if o % 60 != 0 {
                out.push_str(&format!(":{:02}", o % 60));
            }
        }
        out
    }

    /// The same instant written in UTC (offset zero); the fraction stays as written.
    pub(crate) fn in_utc(&self) -> Stamp {
        let Some(offset) = self.offset_seconds.filter(|o| *o != 0) else {
            return Stamp {
                offset_seconds: Some(0),
                ..self.clone()
            };
        };
        let (h, m, s) = self.hms;
        let secs = self.days * 86_400 + i64::from(h * 3600 + m * 60 + s) - i64::from(offset);
        let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
        let (y, mo, d) = civil_from_days(days);
        Stamp {
            date: format!("{y:04}-{mo:02}-{d:02}"),
            hms: (in_day / 3600, in_day / 60 % 60, in_day % 60),
            fraction: self.fraction.clone(),
            offset_seconds: Some(0),
            days,
        }
    }

    /// Microseconds since 1970-01-01 00:00 UTC (the offset applied when there is one).
    pub(crate) fn micros(&self) -> i128 {
        let (h, m, s) = self.hms;
        let frac: i128 = format!("{:0<6}", self.fraction).parse().unwrap_or(0);
        let secs = self.days as i128 * 86_400 + (h * 3600 + m * 60 + s) as i128
            - self.offset_seconds.unwrap_or(0) as i128;
        secs * 1_000_000 + frac
    }
}

/// `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]][Z|±HH[:MM[:SS]]|±HHMM]`, or a bare date (midnight).
pub(crate) fn parse_timestamp(t: &str) -> Result<Stamp, String> {
    let bad = || "not a timestamp (YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM])".to_owned();
    let t = t.trim();
    if t.len() < 10 {
        return Err(bad());
    }
    let (y, mo, d) = parse_date(&t[..10]).ok_or_else(bad)?;
    let mut rest = &t[10..];
    let mut hms = (0, 0, 0);
    let mut fraction = String::new();
    if let Some(r) = rest.strip_prefix([' ', 'T', 't']) {
        let num = |s: &str| -> Option<u32> {
            (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
        };
        let h = num(r.get(..2).ok_or_else(bad)?).ok_or_else(bad)?;
        let r = r
            .get(2..)
            .ok_or_else(bad)?
            .strip_prefix(':')
            .ok_or_else(bad)?;
        let m = num(r.get(..2).ok_or_else(bad)?).ok_or_else(bad)?;
        let mut r = &r[2..];
        let mut s = 0;
        if let Some(after) = r.strip_prefix(':') {
            s = num(after.get(..2).ok_or_else(bad)?).ok_or_else(bad)?;
            r = &after[2..];
            if let Some(f) = r.strip_prefix('.') {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                if n == 0 {
                    return Err(bad());
                }
                if n > 6 {
                    return Err(
                        "a time with more than microsecond precision (it would be rounded)".into(),
                    );
                }
                fraction = f[..n].to_owned();
                r = &f[n..];
            }
        }
        if h > 23 || m > 59 || s > 59 {
            return Err(bad());
        }
        hms = (h, m, s);
        rest = r;
    }
    let rest = rest.trim_start();
    let offset_seconds = if rest.is_empty() {
        None
    } else if rest.eq_ignore_ascii_case("z") || rest.eq_ignore_ascii_case("utc") {
        Some(0)
    } else {
        let sign = match rest.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let z = &rest[1..];
        let parts: Vec<&str> = if z.contains(':') {
            z.split(':').collect()
        } else if z.len() == 4 {
            vec![&z[..2], &z[2..]]
        } else {
            vec![z]
        };
        let mut secs = 0i32;
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()) || i > 2 {
                return Err(bad());
            }
            secs += p.parse::<i32>().map_err(|_| bad())? * [3600, 60, 1][i];
        }
        if secs > 15 * 3600 + 59 * 60 {
            return Err(bad());
        }
        Some(sign * secs)
    };
    // Trailing zeros of the fraction say nothing.
    let fraction = fraction.trim_end_matches('0').to_owned();
    Ok(Stamp {
        date: t[..10].to_owned(),
        hms,
        fraction,
        offset_seconds,
        days: days_from_civil(y, mo, d),
    })
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
