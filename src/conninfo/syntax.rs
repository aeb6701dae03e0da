//! The two spellings of a connection string, read into `(key, value)` pairs.

use super::ConnInfoError;
use crate::endpoint::PercentError;

fn percent_decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
    crate::endpoint::percent_decode(s).map_err(|e| {
        ConnInfoError::Malformed(match e {
            PercentError::BadEscape => format!("bad percent-encoding in {what}"),
            PercentError::NotUtf8 => format!("{what} is not valid UTF-8"),
        })
    })
}

/// `[user[:password]@][host][:port][/dbname][?k=v&...]`, after the scheme.
pub(super) fn parse_url(rest: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    // The password may itself contain '@' when not encoded: the last '@' ends the user info.
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    if let Some(ui) = userinfo {
        let (user, password) = ui.split_once(':').map_or((ui, None), |(u, p)| (u, Some(p)));
        if !user.is_empty() {
            pairs.push(("user".into(), percent_decode(user, "user")?));
        }
        if let Some(p) = password {
            pairs.push(("password".into(), percent_decode(p, "password")?));
        }
    }
    // `host1:port1,host2:port2`: a list of servers, as libpq reads it.
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    for one in hostport.split(',') {
        let (host, port) = if let Some(v6) = one.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| ConnInfoError::Malformed("unclosed '[' in IPv6 host".into()))?;
            (h, after.strip_prefix(':'))
        } else {
            match one.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (one, None),
            }
        };
        hosts.push(percent_decode(host, "host")?);
        ports.push(port.unwrap_or("").to_owned());
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        pairs.push(("host".into(), hosts.join(",")));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        pairs.push(("port".into(), ports.join(",")));
    }
    if !path.is_empty() {
        pairs.push(("dbname".into(), percent_decode(path, "database name")?));
    }
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            ConnInfoError::Malformed(format!("query parameter {kv:?} has no '='"))
        })?;
        pairs.push((
            percent_decode(k, "parameter name")?,
            percent_decode(v, "parameter value")?,
        ));
    }
    Ok(pairs)
}

/// `key=value key='quoted \' value'`.
pub(super) fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::Malformed(format!(
                "expected '=' after {key:?}"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or_else(|| {
                        ConnInfoError::Malformed("string ends after '\\'".into())
                    })?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError::Malformed(format!(
                            "unterminated quoted value for {key:?}"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| {
                        ConnInfoError::Malformed("string ends after '\\'".into())
                    })?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}
