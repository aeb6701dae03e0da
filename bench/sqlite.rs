//! `cargo bench --bench sqlite`: a SQLite file into Postgres, `cdc sync` against `pgloader`,
//! same run.
//!
//! Source: three related tables, `BENCH_ROWS` rows in all (default 1,000,000): authors (5%),
//! books (25%, a foreign key to authors) and reviews (70%, a foreign key to books), with
//! text, REAL, DATETIME and NULLs. Each repetition (`BENCH_REPS`, default 3) loads it into a
//! fresh database with `cdc sync` (first pass, then a second pass with nothing changed) and
//! with `pgloader sqlite:///… postgresql:///…` (when installed). Prints each step, medians,
//! ratios, and peak RSS, and checks the doubles arrived exactly. `BENCH_LOG` sets cdc's log
//! filter (warn by default).

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use cdc::local_pg::SUPERUSER;
use common::{cdc_binary, env_or, median, psql, start_servers, timed, which};

fn make_source(path: &Path, rows: u64) {
    let _ = std::fs::remove_file(path);
    let conn = rusqlite::Connection::open(path).unwrap();
    let (authors, books) = (rows / 20, rows / 4);
    let reviews = rows - authors - books;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = wal;
         CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, born DATE, bio TEXT);
         CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL REFERENCES authors (id),
             title TEXT NOT NULL, price REAL, published DATETIME);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, book_id INTEGER NOT NULL REFERENCES books (id),
             stars INTEGER NOT NULL, score REAL NOT NULL, body TEXT, created_at DATETIME NOT NULL);
         CREATE INDEX books_author ON books (author_id);
         CREATE INDEX reviews_book ON reviews (book_id);
         BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {authors})
           INSERT INTO authors SELECT i, 'Author ' || i, printf('19%02d-%02d-%02d', i % 100, i % 12 + 1, i % 28 + 1),
               CASE WHEN i % 3 = 0 THEN NULL ELSE 'Wrote things, number ' || i END FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {books})
           INSERT INTO books SELECT i, i % {authors} + 1, 'Title ' || i, (i % 10000) / 7.0,
               printf('20%02d-%02d-%02d %02d:%02d:%02d', i % 24, i % 12 + 1, i % 28 + 1, i % 24, i % 60, i % 60) FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {reviews})
           INSERT INTO reviews SELECT i, i % {books} + 1, i % 5 + 1, 0.5657108450925572 + i % 1000,
               CASE WHEN i % 4 = 0 THEN NULL ELSE 'A review saying something about it, ' || i END,
               printf('2024-%02d-%02d %02d:%02d:%02d', i % 12 + 1, i % 28 + 1, i % 24, i % 60, i % 60) FROM n;
         COMMIT;"
    ))
    .unwrap();
}

fn main() {
    let rows = env_or("BENCH_ROWS", 1_000_000);
    let reps = env_or("BENCH_REPS", 3);
    let dir = std::env::temp_dir().join(format!("cdc-bench-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("app.db");
    println!("making a SQLite file of {rows} rows over three tables");
    make_source(&file, rows);
    let (_unused, dest) = start_servers(
        &["max_wal_size = '4GB'", "checkpoint_timeout = '30min'"],
        (false, false),
    );
    let pgloader = which("pgloader");
    let (mut first, mut second, mut loader) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rss_first, mut rss_second, mut rss_loader) = (0, 0, 0);
    for rep in 0..reps {
        let db = format!("cdc_{rep}");
        psql(&dest, "postgres", &format!("CREATE DATABASE {db}"));
        let config = dir.join(format!("{db}.toml"));
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = \"sqlite://{}\"\n[destination]\nurl = {:?}\n\
                 [[tables]]\nsource = \"main.authors\"\n[[tables]]\nsource = \"main.books\"\n[[tables]]\nsource = \"main.reviews\"\n",
                file.display(),
                dest.url(&db)
            ),
        )
        .unwrap();
        let cdc = || {
            let mut c = Command::new(cdc_binary());
            c.args(["--config", config.to_str().unwrap(), "sync"])
                .env("CDC_LOG", common::bench_log());
            c
        };
        let (t, rss) = timed(cdc());
        println!(
            "rep {rep}: cdc sync first pass {t:.2} s, peak RSS {} MiB",
            rss / 1024
        );
        first.push(t);
        rss_first = rss_first.max(rss);
        let (t, rss) = timed(cdc());
        println!(
            "rep {rep}: cdc sync second pass (no change) {t:.2} s, peak RSS {} MiB",
            rss / 1024
        );
        second.push(t);
        rss_second = rss_second.max(rss);
        if let Some(pgloader) = &pgloader {
            let db = format!("pgloader_{rep}");
            psql(&dest, "postgres", &format!("CREATE DATABASE {db}"));
            let mut c = Command::new(pgloader);
            c.args([
                "--quiet",
                &format!("sqlite://{}", file.display()),
                &format!(
                    "postgresql://{SUPERUSER}:{}@127.0.0.1:{}/{db}",
                    dest.password(),
                    dest.port()
                ),
            ])
            .stderr(std::process::Stdio::null());
            let (t, rss) = timed(c);
            println!("rep {rep}: pgloader {t:.2} s, peak RSS {} MiB", rss / 1024);
            loader.push(t);
            rss_loader = rss_loader.max(rss);
        }
    }
    let f = median(first);
    let s = median(second);
    println!(
        "cdc sync first pass: median {f:.2} s, peak RSS {} MiB",
        rss_first / 1024
    );
    println!(
        "cdc sync no-change pass: median {s:.2} s ({:.2}x the first), peak RSS {} MiB",
        s / f,
        rss_second / 1024
    );
    if !loader.is_empty() {
        let l = median(loader);
        println!(
            "pgloader: median {l:.2} s, peak RSS {} MiB; cdc first pass / pgloader = {:.2}",
            rss_loader / 1024,
            f / l
        );
        psql(
            &dest,
            "pgloader_0",
            "DO $$ BEGIN RAISE NOTICE 'pgloader score type: %, sample %', \
             (SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'reviews'::regclass AND attname = 'score'), \
             (SELECT score FROM reviews WHERE id = 1000); END $$",
        );
    }
    psql(
        &dest,
        "cdc_0",
        "DO $$ BEGIN RAISE NOTICE 'cdc score type: %, sample %', \
         (SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'main.reviews'::regclass AND attname = 'score'), \
         (SELECT score FROM main.reviews WHERE id = 1000); END $$",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
