//! The dependency rule of DESIGN.md §2, checked: `proto` and `cas` know nothing of the
//! coordinator or the agent; the agent and the coordinator never depend on each other;
//! `config` (configuration loading, shared by every command) depends on nothing of ours and
//! stays tiny; `net` (TLS and the client link) depends on nothing of ours either.

use std::path::Path;

/// The names of a crate's normal and build dependencies (none if the crate does not exist).
fn deps(crate_dir: &str) -> Vec<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("Cargo.toml");
    let Ok(text) = std::fs::read_to_string(&manifest) else {
        return Vec::new(); // the crate does not exist (yet)
    };
    let doc: toml::Table = text.parse().expect("manifest parses");
    ["dependencies", "build-dependencies"]
        .iter()
        .filter_map(|section| doc.get(*section).and_then(|v| v.as_table()))
        .flat_map(|table| table.keys().cloned())
        .collect()
}

fn tessera_deps(crate_dir: &str) -> Vec<String> {
    deps(crate_dir)
        .into_iter()
        .filter(|name| name.starts_with("tessera-"))
        .collect()
}

#[test]
fn crates_depend_only_downwards() {
    let forbidden: &[(&str, &[&str])] = &[
        (
            "proto",
            &[
                "tessera-cas",
                "tessera-coordinator",
                "tessera-agent",
                "tessera-runners",
                "tessera-cli",
            ],
        ),
        (
            "cas",
            &[
                "tessera-coordinator",
                "tessera-agent",
                "tessera-runners",
                "tessera-cli",
            ],
        ),
        ("coordinator", &["tessera-agent", "tessera-cli"]),
        ("agent", &["tessera-coordinator", "tessera-cli"]),
        (
            "runners",
            &["tessera-coordinator", "tessera-agent", "tessera-cli"],
        ),
    ];
    for leaf in ["config", "net"] {
        assert!(
            tessera_deps(leaf).is_empty(),
            "{leaf}/ must not depend on our other crates: {:?}",
            tessera_deps(leaf)
        );
    }
    for (crate_dir, not_allowed) in forbidden {
        for dep in tessera_deps(crate_dir) {
            assert!(
                !not_allowed.contains(&dep.as_str()),
                "{crate_dir}/ must not depend on {dep} (DESIGN.md §2)"
            );
        }
    }
}

/// Every crate may depend on `tessera-config`, so it must stay small: no async runtime, no gRPC,
/// only what reading TOML, durations and errors takes.
#[test]
fn the_config_crate_stays_tiny() {
    let allowed = ["serde", "toml", "humantime", "thiserror"];
    let deps = deps("config");
    assert!(!deps.is_empty(), "config/Cargo.toml is missing");
    for dep in deps {
        assert!(
            allowed.contains(&dep.as_str()),
            "config/ must not depend on {dep}: only {allowed:?}"
        );
    }
}
