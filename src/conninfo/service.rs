//! libpq's connection service files: `service=NAME` (or `PGSERVICE`) names a `[NAME]` section
//! of `PGSERVICEFILE` (default `~/.pg_service.conf`), else of the system-wide
//! `PGSYSCONFDIR/pg_service.conf`; its `key=value` lines fill the parameters the connection
//! string leaves out.

use std::path::{Path, PathBuf};

use super::ConnInfoError;

/// Where libpq looks for the system-wide file when `PGSYSCONFDIR` is not set (Debian's
/// `sysconfdir`, which its libpq was built with).
const SYSTEM_DIR: &str = "/etc/postgresql-common";

/// The files to look in, in order: the user's, then the system's.
pub fn files(
    env_servicefile: Option<String>,
    home: Option<String>,
    env_sysconfdir: Option<String>,
) -> Vec<PathBuf> {
    let user = env_servicefile
        .map(PathBuf::from)
        .or_else(|| home.map(|h| Path::new(&h).join(".pg_service.conf")));
    let system = Path::new(env_sysconfdir.as_deref().unwrap_or(SYSTEM_DIR)).join("pg_service.conf");
    user.into_iter().chain([system]).collect()
}

/// The parameters of service `name`, from the first of `files` that defines it.
pub fn lookup(name: &str, files: &[PathBuf]) -> Result<Vec<(String, String)>, ConnInfoError> {
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        if let Some(params) = section(&text, name).map_err(|(line, why)| {
            ConnInfoError::Malformed(format!("{}, line {line}: {why}", file.display()))
        })? {
            return Ok(params);
        }
    }
    let looked: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    Err(ConnInfoError::InvalidValue {
        key: "service".into(),
        reason: format!(
            "no service {name:?} in {}; define a [{name}] section in one of them or set PGSERVICEFILE",
            looked.join(" or ")
        ),
    })
}

/// A section's `key=value` lines, in order.
type Params = Vec<(String, String)>;

/// The `key=value` lines of section `[name]` of a service file, or `None` when it has none.
/// An error is `(line number, why)`.
fn section(text: &str, name: &str) -> Result<Option<Params>, (usize, String)> {
    let mut found: Option<Params> = None;
    let mut inside = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header.strip_suffix(']').ok_or((
                i + 1,
                format!("{line:?} opens a section but does not close it"),
            ))?;
            if found.is_some() {
                break;
            }
            inside = header == name;
            if inside {
                found = Some(Vec::new());
            }
            continue;
        }
        if !inside {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or((i + 1, format!("{line:?} is not key=value")))?;
        let key = key.trim();
        if key == "service" {
            return Err((i + 1, "a service cannot name another service".into()));
        }
        if let Some(params) = &mut found {
            params.push((key.to_owned(), value.trim().to_owned()));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_gives_its_lines_and_only_its_own() {
        let text = "# team services\n[other]\nhost=nope\n\n[warehouse]\nhost = db.internal\nport=6432\n dbname=app \n[later]\nhost=no\n";
        assert_eq!(
            section(text, "warehouse").unwrap().unwrap(),
            [
                ("host".to_owned(), "db.internal".to_owned()),
                ("port".to_owned(), "6432".to_owned()),
                ("dbname".to_owned(), "app".to_owned())
            ]
        );
        assert_eq!(section(text, "missing").unwrap(), None);
        assert_eq!(section("[s]\njunk\n", "s").unwrap_err().0, 2);
        assert!(section("[s]\nservice=t\n", "s").is_err());
    }

    #[test]
    fn the_users_file_is_read_before_the_systems() {
        let dir = std::env::temp_dir().join(format!("cdc-service-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let user = dir.join("user.conf");
        let system_dir = dir.join("etc");
        std::fs::create_dir_all(&system_dir).unwrap();
        std::fs::write(&user, "[a]\nhost=from-user\n").unwrap();
        std::fs::write(
            system_dir.join("pg_service.conf"),
            "[a]\nhost=from-system\n[b]\nport=1\n",
        )
        .unwrap();
        let files = files(
            Some(user.display().to_string()),
            None,
            Some(system_dir.display().to_string()),
        );
        assert_eq!(lookup("a", &files).unwrap()[0].1, "from-user");
        assert_eq!(lookup("b", &files).unwrap()[0].1, "1");
        let e = lookup("c", &files).unwrap_err().to_string();
        assert!(
            e.contains("no service \"c\"") && e.contains("user.conf"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
