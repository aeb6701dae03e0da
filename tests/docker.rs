//! The container files, checked without Docker (not available on our machines).

use std::path::PathBuf;

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn compose_file_wires_source_destination_and_the_cdc_sidecar() {
    let text = std::fs::read_to_string(root().join("docker/compose.yaml")).unwrap();
    let doc = &YamlLoader::load_from_str(&text).expect("valid YAML")[0];
    let services = &doc["services"];
    for name in ["source", "destination", "cdc"] {
        assert!(!services[name].is_badvalue(), "service {name} missing");
    }
    let command: Vec<&str> = services["source"]["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(command.contains(&"wal_level=logical"), "{command:?}");
    let cdc = &services["cdc"];
    assert_eq!(cdc["command"][0].as_str(), Some("run"));
    for dep in ["source", "destination"] {
        assert_eq!(
            cdc["depends_on"][dep]["condition"].as_str(),
            Some("service_healthy")
        );
    }
    let env = &cdc["environment"];
    for var in [
        "CDC_SOURCE_URL",
        "CDC_SOURCE_PASSWORD",
        "CDC_DESTINATION_URL",
        "CDC_DESTINATION_PASSWORD",
        "CDC_CONFIG",
    ] {
        assert!(env[var].as_str().is_some(), "{var} not set for cdc");
    }
    // Secrets come from the environment, never written into the file.
    assert!(env["CDC_SOURCE_PASSWORD"]
        .as_str()
        .unwrap()
        .starts_with("${"));
    for var in ["CDC_SOURCE_URL", "CDC_DESTINATION_URL"] {
        let userinfo = env[var]
            .as_str()
            .unwrap()
            .trim_start_matches("postgresql://")
            .split('@')
            .next()
            .unwrap();
        assert!(!userinfo.contains(':'), "{var} must not carry a password");
    }
    let volume = cdc["volumes"][0].as_str().unwrap();
    assert!(
        volume.starts_with("./config.compose.toml:/etc/cdc/config.toml"),
        "{volume}"
    );
}

#[test]
fn the_compose_config_is_valid_for_cdc() {
    let path = root().join("docker/config.compose.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let env = [
        ("CDC_SOURCE_PASSWORD", "x"),
        ("CDC_DESTINATION_PASSWORD", "y"),
    ];
    let config = cdc::config::Config::from_toml(&text, &path, &env).expect("valid config");
    assert_eq!(config.status.listen, "0.0.0.0:9187");
}

#[test]
fn dockerfile_builds_a_non_root_image_with_a_status_health_check() {
    let text = std::fs::read_to_string(root().join("docker/Dockerfile")).unwrap();
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages,
        [
            "FROM debian:bookworm-slim AS base",
            "FROM base AS runtime",
            "FROM rust:1-bookworm AS build",
            "FROM base",
        ],
        "a shared base, a runtime stage for a binary built outside, and the multi-stage build"
    );
    // Both images end as the non-root user, with the library beside the binary.
    assert_eq!(
        text.matches("\nUSER cdc\n").count(),
        2,
        "runs as a non-root user"
    );
    assert_eq!(text.matches("\nRUN ldconfig\n").count(), 2);
    assert!(text.contains("HEALTHCHECK") && text.contains("\"status\", \"--require-active\""));
    assert!(text.contains("cargo build --release --locked --bin cdc"));
    assert!(
        text.contains("COPY --from=build /src/target/duckdb-lib/libduckdb.so /usr/local/lib/"),
        "the image carries the DuckDB library the binary links"
    );
}
