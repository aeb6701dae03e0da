//! `snowflake://USER@ACCOUNT/DATABASE/SCHEMA?warehouse=W&role=R` destination URLs.
//!
//! The account's endpoint is `https://ACCOUNT.snowflakecomputing.com`; `host=`, `port=` and
//! `protocol=http|https` override it, as Snowflake's own drivers allow (a private link, a
//! proxy, or the emulator the tests use). The password comes from `CDC_DESTINATION_PASSWORD`
//! or `destination.password_file`; key-pair (JWT) authentication from
//! `private_key_file=` (a PKCS#8 PEM file, unencrypted), which most production accounts
//! require. Database and schema fold to upper case unless written in double quotes, as
//! Snowflake folds unquoted names. `?timeout=SECONDS` bounds one statement (600 by default).

use std::path::PathBuf;

use crate::conninfo::Secret;
use crate::endpoint::PercentError;

/// Seconds one statement may take unless `?timeout=` says otherwise.
pub const DEFAULT_TIMEOUT_S: u64 = 600;

/// A parsed Snowflake URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SnowflakeUrl {
    pub user: String,
    /// The account identifier as written (`orgname-account` or `locator.region`).
    pub account: String,
    pub database: String,
    pub schema: String,
    pub warehouse: Option<String>,
    pub role: Option<String>,
    pub host: String,
    pub port: u16,
    pub secure: bool,
    pub password: Option<Secret>,
    pub private_key_file: Option<PathBuf>,
    pub timeout_s: u64,
}

impl std::fmt::Debug for SnowflakeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the password nor the key prints.
        write!(
            f,
            "snowflake://{}@{}/{}/{} ({}://{}:{})",
            self.user,
            self.account,
            self.database,
            self.schema,
            if self.secure { "https" } else { "http" },
            self.host,
            self.port
        )
    }
}

/// Snowflake's folding of an unquoted name; a name in double quotes is kept as written.
fn fold(name: &str) -> String {
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => name.to_uppercase(),
    }
}

impl SnowflakeUrl {
    pub fn is_snowflake(url: &str) -> bool {
        url.starts_with("snowflake://")
    }

    pub fn parse(url: &str) -> Result<SnowflakeUrl, String> {
        const FORM: &str = "snowflake://USER@ACCOUNT/DATABASE/SCHEMA?warehouse=W&role=R";
        let rest = url
            .strip_prefix("snowflake://")
            .ok_or_else(|| format!("a Snowflake URL is {FORM}"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut parts = rest.splitn(3, '/');
        let authority = parts.next().unwrap_or("");
        let database = decode(parts.next().unwrap_or(""))?;
        let schema = decode(parts.next().unwrap_or(""))?;
        let Some((userinfo, account)) = authority.rsplit_once('@') else {
            return Err(format!("name the user and the account: {FORM}"));
        };
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (decode(u)?, Some(Secret::new(decode(p)?))),
            None => (decode(userinfo)?, None),
        };
        let account = decode(account)?;
        if user.is_empty() || account.is_empty() {
            return Err(format!("name the user and the account: {FORM}"));
        }
        if database.is_empty() || schema.is_empty() || schema.contains('/') {
            return Err(format!(
                "name the database and the schema: {FORM} (e.g. .../ANALYTICS/PUBLIC)"
            ));
        }
        let mut out = SnowflakeUrl {
            user,
            host: format!("{}.snowflakecomputing.com", account.to_lowercase()),
            account,
            database: fold(&database),
            schema: fold(&schema),
            warehouse: None,
            role: None,
            port: 443,
            secure: true,
            password,
            private_key_file: None,
            timeout_s: DEFAULT_TIMEOUT_S,
        };
        let mut port = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v)?;
            match k {
                "warehouse" => out.warehouse = Some(fold(&v)),
                "role" => out.role = Some(fold(&v)),
                "host" => out.host = v,
                "port" => {
                    port = Some(
                        v.parse::<u16>()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| format!("port={v} is not a number from 1 to 65535"))?,
                    )
                }
                "protocol" => {
                    out.secure = match v.as_str() {
                        "https" => true,
                        "http" => false,
                        _ => {
                            return Err(format!(
                                "protocol={v}: use protocol=https or protocol=http"
                            ))
                        }
                    }
                }
                "private_key_file" => out.private_key_file = Some(PathBuf::from(v)),
                "timeout" => {
                    out.timeout_s = v.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!("timeout={v}: give whole seconds, e.g. timeout=600")
                    })?
                }
                _ => {
                    return Err(format!(
                    "unknown parameter {k:?}: a Snowflake URL takes warehouse, role, host, port, \
                         protocol, private_key_file and timeout"
                ))
                }
            }
        }
        out.port = port.unwrap_or(if out.secure { 443 } else { 80 });
        Ok(out)
    }

    /// The account name login sends: the identifier before any region or cloud part.
    pub fn account_name(&self) -> String {
        self.account
            .split('.')
            .next()
            .unwrap_or(&self.account)
            .to_uppercase()
    }
}

/// Percent-decoding of one URL part.
fn decode(s: &str) -> Result<String, String> {
    crate::endpoint::percent_decode(s).map_err(|e| match e {
        PercentError::BadEscape => format!("bad percent-encoding in {s:?}"),
        PercentError::NotUtf8 => format!("{s:?} is not UTF-8 once decoded"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_form_and_its_overrides() {
        let u = SnowflakeUrl::parse(
            "snowflake://loader@myorg-acct1/analytics/\"Raw\"?warehouse=load_wh&role=loader",
        )
        .unwrap();
        assert_eq!(
            (
                u.user.as_str(),
                u.account.as_str(),
                u.database.as_str(),
                u.schema.as_str()
            ),
            ("loader", "myorg-acct1", "ANALYTICS", "Raw")
        );
        assert_eq!(u.warehouse.as_deref(), Some("LOAD_WH"));
        assert_eq!(u.role.as_deref(), Some("LOADER"));
        assert_eq!(
            (u.host.as_str(), u.port, u.secure),
            ("myorg-acct1.snowflakecomputing.com", 443, true)
        );
        assert_eq!(u.account_name(), "MYORG-ACCT1");
        let e = SnowflakeUrl::parse(
            "snowflake://u@xy12345.us-east-1/DB/S?host=127.0.0.1&port=8765&protocol=http&private_key_file=/k.p8",
        )
        .unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.secure),
            ("127.0.0.1", 8765, false)
        );
        assert_eq!(e.account_name(), "XY12345");
        assert_eq!(e.private_key_file, Some(PathBuf::from("/k.p8")));
        let p = SnowflakeUrl::parse("snowflake://u:s%40cret@a/DB/S").unwrap();
        assert_eq!(p.password.unwrap().expose(), "s@cret");
        assert!(!format!(
            "{:?}",
            SnowflakeUrl::parse("snowflake://u:pw@a/D/S").unwrap()
        )
        .contains("pw"));
    }

    #[test]
    fn incomplete_urls_say_the_form() {
        for bad in [
            "snowflake://acct/DB/S",
            "snowflake://u@acct/DB",
            "snowflake://u@acct",
            "snowflake://u@acct/DB/S?protocol=ftp",
            "snowflake://u@acct/DB/S?port=x",
            "snowflake://u@acct/DB/S?colour=blue",
        ] {
            assert!(SnowflakeUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(SnowflakeUrl::parse("snowflake://u@acct/DB/S?port=x")
            .unwrap_err()
            .contains("port"));
    }
}
