//! libpq's password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`): lines of
//! `host:port:database:user:password`, `*` matching anything, `\` escaping `:` and `\`.
//!
//! As libpq: the file is read only when the connection string and `PGPASSWORD` give no password,
//! the first matching line wins, and a file that others may read (or that is not a plain file) is
//! ignored with a warning — a password readable by the group is no longer a secret.

use std::path::{Path, PathBuf};

use super::Secret;

/// What a connection is matched on, as libpq matches it.
pub struct Wanted<'a> {
    pub host: &'a str,
    pub port: u16,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// The password the file at `path` gives for `wanted`, if the file may be used and a line
/// matches.
pub fn lookup(path: &Path, wanted: &Wanted<'_>) -> Option<Secret> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(file = %path.display(), "password file is not a plain file: ignored");
        return None;
    }
    if let Some(mode) = group_or_world_access(&meta) {
        tracing::warn!(file = %path.display(),
            "password file has group or world access ({mode:o}): ignored; run chmod 0600 on it");
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    find(&text, wanted).map(Secret::new)
}

#[cfg(unix)]
fn group_or_world_access(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn group_or_world_access(_: &std::fs::Metadata) -> Option<u32> {
    None
}

/// The file to read: the one named (`passfile=` or `PGPASSFILE`), else `~/.pgpass`.
pub fn path(named: Option<&Path>, home: Option<String>) -> Option<PathBuf> {
    named
        .map(Path::to_owned)
        .or_else(|| home.map(|h| Path::new(&h).join(".pgpass")))
}

/// The password of the first line of `text` matching `wanted`.
pub fn find(text: &str, wanted: &Wanted<'_>) -> Option<String> {
    let port = wanted.port.to_string();
    // A socket in the default directory is "localhost" to the file, as to libpq.
    let host = if super::DEFAULT_SOCKET_DIRS.contains(&wanted.host) {
        "localhost"
    } else {
        wanted.host
    };
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split(line);
        let [h, p, d, u, pw] = &fields[..] else {
            continue;
        };
        let matches = |field: &str, value: &str| field == "*" || field == value;
        if matches(h, host)
            && matches(p, &port)
            && matches(d, wanted.dbname)
            && matches(u, wanted.user)
        {
            return Some(pw.clone());
        }
    }
    None
}

/// A line's five fields, escapes removed; the password takes the rest of the line (colons
/// in it must be escaped too, as libpq reads them).
fn split(line: &str) -> Vec<String> {
    let line = line.trim_end_matches('\r');
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted<'a>(host: &'a str, port: u16, dbname: &'a str, user: &'a str) -> Wanted<'a> {
        Wanted {
            host,
            port,
            dbname,
            user,
        }
    }

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    db.internal:5432:app:reader:first\n\
                    db.internal:*:*:reader:second\n\
                    *:*:*:*:any\n\
                    h\\:x:5432:d:u:pa\\:ss\\\\word\n\
                    short:line\n";
        let find = |w: Wanted<'_>| super::find(text, &w);
        assert_eq!(
            find(wanted("db.internal", 5432, "app", "reader")).as_deref(),
            Some("first")
        );
        assert_eq!(
            find(wanted("db.internal", 6432, "other", "reader")).as_deref(),
            Some("second")
        );
        assert_eq!(
            find(wanted("elsewhere", 1, "x", "y")).as_deref(),
            Some("any")
        );
        assert_eq!(
            super::find(
                "h\\:x:5432:d:u:pa\\:ss\\\\word\n",
                &wanted("h:x", 5432, "d", "u")
            )
            .as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            super::find("short:line\n", &wanted("short", 1, "d", "u")),
            None
        );
    }

    #[test]
    fn a_socket_in_the_default_directory_is_localhost() {
        let text = "localhost:5432:*:*:local\n";
        assert_eq!(
            find(text, &wanted("/var/run/postgresql", 5432, "d", "u")).as_deref(),
            Some("local")
        );
        assert_eq!(find(text, &wanted("/srv/sockets", 5432, "d", "u")), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("cdc-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, "*:*:*:*:pw\n").unwrap();
        let w = wanted("h", 5432, "d", "u");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(lookup(&file, &w).is_none(), "group/world readable");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            lookup(&file, &w).map(|s| s.expose().to_owned()).as_deref(),
            Some("pw")
        );
        assert!(lookup(&dir, &w).is_none(), "a directory");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_is_the_named_one_else_the_homes() {
        assert_eq!(
            path(Some(Path::new("/a")), Some("/h".into())),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            path(None, Some("/h".into())),
            Some(PathBuf::from("/h/.pgpass"))
        );
        assert_eq!(path(None, None), None);
    }
}
