//! The layering invariant of ARCHITECTURE.md, checked on the source text (in the manner of
//! rust-analyzer's tidy tests): every top-level module of `src/` sits in one layer, a module
//! imports only from its own layer or lower ones, and no import circle closes inside a layer.
//! Also the size rule: no file over 600 lines and no function over 100 unless a `// Long:`
//! comment at its top says why.
//!
//! Only code outside `#[cfg(test)]` modules (and `tests.rs` files) counts: tests may reach
//! anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. A new top-level module must be placed here (the test says so).
const LAYERS: &[(&str, &[&str])] = &[
    ("positions", &["lsn"]),
    ("wire format", &["decode"]),
    ("model", &["model"]),
    ("endpoints", &["conninfo", "tls", "endpoint"]),
    ("configuration", &["config"]),
    ("errors and metrics", &["error", "metrics", "http"]),
    ("connections", &["pg"]),
    ("sources", &["source"]),
    ("destinations", &["destination"]),
    (
        "pipelines",
        &["apply", "stream", "snapshot", "sync", "verify"],
    ),
    (
        "commands",
        &[
            "run", "status", "tables", "teardown", "demo", "cli", "local_pg",
        ],
    ),
];

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 100;

/// One `crate::` import: the file it is in, its module, the module it names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    file: String,
    from: String,
    to: String,
}

/// The code of a file that counts: comments dropped, test modules cut off.
fn live_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The first identifier of `s` (after whitespace).
fn ident(s: &str) -> &str {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules that `crate::…` paths in `code` name (`crate::{a::x, b}` names a, b).
fn named_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        out.push(ident(&group[i..]).to_owned());
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest).to_owned());
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// The top-level module a file under `src/` belongs to (`None` for the crate roots).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn edges(files: &[(String, String)]) -> Vec<Edge> {
    let mut out = BTreeSet::new();
    for (rel, text) in files {
        let Some(from) = module_of(Path::new(rel)) else {
            continue;
        };
        // A test module kept in a file of its own (`mod tests;`): tests may reach anywhere.
        if Path::new(rel).file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        for to in named_modules(&live_code(text)) {
            if to != from {
                out.insert(Edge {
                    file: rel.clone(),
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    out.into_iter().collect()
}

/// Everything wrong with these files' imports, one line each.
fn layering_problems(files: &[(String, String)]) -> Vec<String> {
    let layer_of: BTreeMap<&str, (usize, &str)> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (name, mods))| mods.iter().map(move |m| (*m, (i, *name))))
        .collect();
    let mut problems = Vec::new();
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|(rel, _)| module_of(Path::new(rel)))
        .collect();
    for m in &modules {
        if !layer_of.contains_key(m.as_str()) {
            problems.push(format!(
                "src/{m}: a top-level module in no layer: add it to LAYERS in tests/layers.rs and to ARCHITECTURE.md"
            ));
        }
    }
    let all = edges(files);
    let mut same_layer: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in &all {
        let (Some(&(lf, fname)), Some(&(lt, tname))) =
            (layer_of.get(e.from.as_str()), layer_of.get(e.to.as_str()))
        else {
            continue;
        };
        if lt > lf {
            problems.push(format!(
                "src/{}: `crate::{}` runs upward, from layer '{fname}' to '{tname}': move what it uses down a layer",
                e.file, e.to
            ));
        } else if lt == lf {
            same_layer.entry(&e.from).or_default().insert(&e.to);
        }
    }
    // A circle inside a layer: a module that reaches itself.
    for start in same_layer.keys() {
        let mut path = vec![*start];
        if let Some(circle) = reaches(&same_layer, start, &mut path) {
            problems.push(format!("import circle: {}", circle.join(" -> ")));
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

/// A path from the last module of `path` back to `path[0]`, if any.
fn reaches<'a>(
    graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    start: &'a str,
    path: &mut Vec<&'a str>,
) -> Option<Vec<&'a str>> {
    let here = *path.last()?;
    for &next in graph.get(here).into_iter().flatten() {
        if next == start {
            let mut circle = path.clone();
            circle.push(start);
            // Report each circle once: from its smallest module.
            return (path.iter().all(|m| *m >= start)).then_some(circle);
        }
        if !path.contains(&next) {
            path.push(next);
            if let Some(c) = reaches(graph, start, path) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

/// Files and functions over the size rule without a `// Long:` reason at their top: each as
/// its key (`path` or `path fn name`) and a message.
fn size_problems(files: &[(String, String)]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (rel, text) in files {
        let lines: Vec<&str> = text.lines().collect();
        let reason_at = |i: usize| {
            lines[i.saturating_sub(3)..i]
                .iter()
                .any(|l| l.trim_start().starts_with("// Long:"))
        };
        if lines.len() > MAX_FILE_LINES
            && !lines
                .iter()
                .take(20)
                .any(|l| l.trim_start().starts_with("//! Long:"))
        {
            problems.push((
                format!("src/{rel}"),
                format!(
                    "src/{rel}: {} lines (over {MAX_FILE_LINES}): split it, or say why at its top (`//! Long: …`)",
                    lines.len()
                ),
            ));
        }
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = fn_name(line) else { continue };
            let indent = line.len() - line.trim_start().len();
            let close = format!("{}}}", " ".repeat(indent));
            let Some(len) = lines[i..].iter().position(|l| l.trim_end() == close) else {
                continue;
            };
            if len + 1 > MAX_FN_LINES && !reason_at(i) {
                problems.push((
                    format!("src/{rel} fn {name}"),
                    format!(
                        "src/{rel}:{}: fn {name} has {} lines (over {MAX_FN_LINES}): split it, or say why above it (`// Long: …`)",
                        i + 1,
                        len + 1
                    ),
                ));
            }
        }
    }
    problems
}

/// The name of the function a line starts (with a body), if it does.
fn fn_name(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    for word in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(word).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    (!line.trim_end().ends_with(';')).then(|| ident(rest))
}

fn source_files() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

#[test]
fn no_import_runs_upward_or_closes_a_circle() {
    let files = source_files();
    assert!(
        edges(&files).len() > 50,
        "the reader found too few imports to be reading src/"
    );
    let problems = layering_problems(&files);
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

/// What was over the size rule when the rule came in (the layers issue), still to split. The
/// list only shrinks: anything new over the rule fails, and so does an entry that no longer is.
/// Empty since every file and function was brought within the rule.
const NOT_YET_SPLIT: &[&str] = &[];

#[test]
fn no_file_or_function_over_the_size_rule_without_a_reason() {
    let problems = size_problems(&source_files());
    let new: Vec<&str> = problems
        .iter()
        .filter(|(key, _)| !NOT_YET_SPLIT.contains(&key.as_str()))
        .map(|(_, message)| message.as_str())
        .collect();
    assert!(new.is_empty(), "too long:\n{}", new.join("\n"));
    let fixed: Vec<&&str> = NOT_YET_SPLIT
        .iter()
        .filter(|k| !problems.iter().any(|(key, _)| key == **k))
        .collect();
    assert!(
        fixed.is_empty(),
        "within the size rule now: remove from NOT_YET_SPLIT: {fixed:?}"
    );
}

#[test]
fn the_checker_finds_upward_imports_circles_and_unplaced_modules() {
    let file = |rel: &str, text: &str| (rel.to_owned(), text.to_owned());
    let files = vec![
        // destination -> status runs upward.
        file(
            "destination/mod.rs",
            "use crate::{model::schema::X, status::format};\n",
        ),
        // snapshot -> sync -> snapshot is a circle inside the pipelines layer.
        file("snapshot/mod.rs", "use crate::sync::Strategy;\n"),
        file("sync/mod.rs", "fn f() { crate::snapshot::run() }\n"),
        // Not counted: a comment, a test module.
        file(
            "model/mod.rs",
            "// crate::run\n#[cfg(test)]\nmod tests { use crate::run; }\n",
        ),
        file("gadget.rs", "use crate::lsn::Lsn;\n"),
    ];
    let problems = layering_problems(&files);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert_eq!(problems[0], "import circle: snapshot -> sync -> snapshot");
    assert!(problems[1].contains("runs upward, from layer 'destinations' to 'commands'"));
    assert!(problems[2].starts_with("src/gadget: a top-level module in no layer"));

    let long_fn = format!("fn big() {{\n{}}}\n", "    x();\n".repeat(MAX_FN_LINES));
    let reasoned = format!("// Long: one arm per message type.\n{long_fn}");
    let sizes = size_problems(&[file("a.rs", &long_fn), file("b.rs", &reasoned)]);
    assert_eq!(sizes.len(), 1, "{sizes:#?}");
    assert_eq!(sizes[0].0, "src/a.rs fn big");
    assert!(sizes[0].1.starts_with("src/a.rs:1: fn big has 102 lines"));
}

/// Code outside a destination's folder that may still name it, and why.
const NAMED_OUTSIDE: &[(&str, &str, &str)] = &[(
    "demo.rs",
    "duckdb",
    "`cdc demo` opens the DuckDB file it wrote to show the rows (and waits out a lock)",
)];

/// The destination folders under `src/destination/`, and the names the registry line lists.
fn destinations(files: &[(String, String)]) -> (BTreeSet<String>, Vec<String>) {
    let folders = files
        .iter()
        .filter_map(|(rel, _)| {
            let mut parts = rel.strip_prefix("destination/")?.split('/');
            let (folder, _file) = (parts.next()?, parts.next()?);
            Some(folder.to_owned())
        })
        .collect();
    let registry = files
        .iter()
        .find(|(rel, _)| rel == "destination/mod.rs")
        .and_then(|(_, text)| {
            let code = live_code(text);
            let at = code.find("\nregistry!(")? + "\nregistry!(".len();
            let end = at + code[at..].find(')')?;
            Some(
                code[at..end]
                    .split(',')
                    .map(|n| n.trim().to_owned())
                    .filter(|n| !n.is_empty())
                    .collect(),
            )
        })
        .unwrap_or_default();
    (folders, registry)
}

/// Every place a destination's folder is named from outside it (but in [`NAMED_OUTSIDE`]),
/// and every folder the registry line leaves out or names without a folder.
fn folder_problems(files: &[(String, String)]) -> Vec<String> {
    let (folders, registry) = destinations(files);
    let mut problems = Vec::new();
    let listed: BTreeSet<String> = registry.iter().cloned().collect();
    if listed != folders {
        problems.push(format!(
            "the registry line in destination/mod.rs lists {registry:?}, the folders are {folders:?}"
        ));
    }
    for (rel, text) in files {
        let code = live_code(text);
        for kind in &folders {
            if rel.starts_with(&format!("destination/{kind}/"))
                || NAMED_OUTSIDE.iter().any(|(f, k, _)| f == rel && k == kind)
            {
                continue;
            }
            let inside_destination = rel.starts_with("destination/");
            let named = code.contains(&format!("destination::{kind}"))
                || (inside_destination && code.contains(&format!("super::{kind}::")));
            if named {
                problems.push(format!(
                    "{rel} names the {kind} destination: what it needs belongs in \
                     destination/{kind}/ (behind a trait of the seam) or in a shared module"
                ));
            }
        }
    }
    problems
}

#[test]
fn a_destination_is_its_folder_and_its_name_on_the_registry_line() {
    let files = source_files();
    let (folders, _) = destinations(&files);
    assert!(
        folders.contains("snowflake") && folders.len() >= 4,
        "the reader found the destination folders: {folders:?}"
    );
    let problems = folder_problems(&files);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The checker finds a pipeline or another folder reaching into one, and a folder the
    // registry leaves out.
    let file = |rel: &str, text: &str| (rel.to_owned(), text.to_owned());
    let registry = file("destination/mod.rs", "x\nregistry!(duckdb, snowflake);\n");
    let found = folder_problems(&[
        registry.clone(),
        file(
            "destination/duckdb/mod.rs",
            "use super::snowflake::client::Client;\n",
        ),
        file("destination/snowflake/mod.rs", "use super::duckdb;\n"),
        file(
            "sync/mod.rs",
            "use crate::destination::snowflake::SnowflakeUrl;\n",
        ),
        file(
            "demo.rs",
            "use crate::destination::duckdb::is_lock_conflict;\n",
        ),
        file("destination/postgres/mod.rs", ""),
    ]);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].contains("registry line"), "{found:#?}");
    assert!(found[1].contains("destination/duckdb/mod.rs names the snowflake"));
    assert!(found[2].contains("sync/mod.rs names the snowflake"));
}
