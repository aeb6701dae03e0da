//! Makes the prebuilt DuckDB library available to the link and at run time.
//!
//! The `duckdb` crate links `libduckdb.so` from `DUCKDB_LIB_DIR` (set in `.cargo/config.toml`
//! to `target/duckdb-lib`). When the library is missing there, it is fetched once with
//! `npm pack` from the npm registry package that ships DuckDB's own build of it (the crate's
//! download options use hosts we cannot reach), and moved into place atomically so that an
//! interrupted fetch never leaves half a library. An rpath to that directory lets `cargo run`
//! and `cargo test` find it; the image puts the library on the system path (see the Dockerfile)
//! and the wheel beside the binary (`$ORIGIN/../lib/cdc`, see scripts/build-wheel).

use std::path::{Path, PathBuf};
use std::process::Command;

/// DuckDB 1.5.6, matching `duckdb = "=1.10506.1"` in Cargo.toml.
const NPM_PACKAGE: &str = "@duckdb/node-bindings-linux-x64@1.5.6-r.1";
const LIBRARY: &str = "libduckdb.so";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    println!("cargo:rerun-if-env-changed=CDC_PORTABLE_RPATH");
    let Some(dir) = std::env::var_os("DUCKDB_LIB_DIR").map(PathBuf::from) else {
        println!("cargo:warning=DUCKDB_LIB_DIR is not set (.cargo/config.toml sets it); linking libduckdb from the system paths");
        return;
    };
    let library = dir.join(LIBRARY);
    if !library.exists() {
        if let Err(e) = fetch(&dir) {
            panic!(
                "could not fetch {LIBRARY} with `npm pack {NPM_PACKAGE}`: {e}. Install npm (Debian: apt-get install -y npm), \
                 or put DuckDB 1.5.6's {LIBRARY} in {} yourself",
                dir.display()
            );
        }
    }
    // A binary to ship (CDC_PORTABLE_RPATH=1, scripts/build-wheel) names no directory of the
    // machine that built it.
    if std::env::var_os("CDC_PORTABLE_RPATH").is_none_or(|v| v != "1") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    // Installed from the wheel (scripts/build-wheel), the binary is PREFIX/bin/cdc and the
    // library PREFIX/lib/cdc/libduckdb.so (a venv, ~/.local, /usr/local alike). The loader
    // expands $ORIGIN itself; no shell sees this argument.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib/cdc");
}

fn fetch(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = (|| {
        run(Command::new("npm")
            .args(["pack", "--silent", NPM_PACKAGE])
            .current_dir(&work))?;
        let archive = std::fs::read_dir(&work)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "tgz"))
            .ok_or("npm pack produced no archive")?;
        // tar keeps the archive's mtime on the file, so cargo does not see a new library on
        // every fetch and rebuild the crates that link it.
        run(Command::new("tar")
            .arg("xzf")
            .arg(&archive)
            .arg(format!("package/{LIBRARY}"))
            .current_dir(&work))?;
        std::fs::rename(work.join("package").join(LIBRARY), dir.join(LIBRARY))
            .map_err(|e| format!("moving the library into place: {e}"))
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
