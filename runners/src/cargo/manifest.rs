//! Which targets are built with `harness = false`, read from the packages' `Cargo.toml`.
//!
//! cargo says nowhere else (not in `cargo metadata`, not in its JSON messages) that a test
//! target has no libtest harness, and such a binary does not understand `--list`: given it, a
//! plain `main` would simply run. So the prepare step prints the workspace's manifests and the
//! runner treats the targets they mark `harness = false` as one unit each (see
//! [`super::BinaryKind::Plain`]).

use std::collections::BTreeSet;

use serde::Deserialize;

/// Targets without the libtest harness, as (package name, target kind, target name), the kind
/// being cargo's `lib`, `bin`, `test`, `bench` or `example`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PlainTargets(BTreeSet<(String, String, String)>);

#[derive(Deserialize)]
struct Manifest {
    package: Option<Package>,
    lib: Option<Target>,
    #[serde(default)]
    bin: Vec<Target>,
    #[serde(default)]
    test: Vec<Target>,
    #[serde(default)]
    bench: Vec<Target>,
    #[serde(default)]
    example: Vec<Target>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
}

#[derive(Deserialize)]
struct Target {
    name: Option<String>,
    harness: Option<bool>,
}

impl PlainTargets {
    /// Adds the `harness = false` targets of one manifest's text. A manifest that does not
    /// parse, or is a virtual workspace's, adds nothing: cargo has already accepted it.
    pub(super) fn add_manifest(&mut self, text: &str) {
        let Ok(manifest) = toml::from_str::<Manifest>(text) else {
            return;
        };
        let Some(package) = manifest.package else {
            return;
        };
        let lib_default = package.name.replace('-', "_");
        let tables = [
            ("lib", manifest.lib.into_iter().collect::<Vec<_>>()),
            ("bin", manifest.bin),
            ("test", manifest.test),
            ("bench", manifest.bench),
            ("example", manifest.example),
        ];
        for (kind, targets) in tables {
            for target in targets.into_iter().filter(|t| t.harness == Some(false)) {
                let name = match (kind, target.name) {
                    (_, Some(name)) => name,
                    ("lib", None) => lib_default.clone(),
                    // cargo refuses a [[test]] without a name.
                    (_, None) => continue,
                };
                self.0.insert((package.name.clone(), kind.to_owned(), name));
            }
        }
    }

    /// Whether the target `name` of kind `kind` (cargo's first `target.kind`, such as `test`
    /// or `lib`) in `package` has no harness.
    pub(super) fn contains(&self, package: &str, kind: &str, name: &str) -> bool {
        let kind = match kind {
            "rlib" | "dylib" | "cdylib" | "staticlib" | "proc-macro" => "lib",
            other => other,
        };
        self.0
            .contains(&(package.to_owned(), kind.to_owned(), name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_false_targets_are_found_by_package_kind_and_name() {
        let mut plain = PlainTargets::default();
        plain.add_manifest(
            r#"
            [package]
            name = "my-crate"
            version = "0.1.0"

            [lib]
            harness = false

            [[test]]
            name = "custom"
            harness = false

            [[test]]
            name = "normal"
            "#,
        );
        plain.add_manifest("[workspace]\nmembers = [\"a\"]\n");
        plain.add_manifest("not toml [");
        assert!(plain.contains("my-crate", "test", "custom"));
        assert!(!plain.contains("my-crate", "test", "normal"));
        assert!(plain.contains("my-crate", "lib", "my_crate"));
        assert!(plain.contains("my-crate", "rlib", "my_crate"));
        assert!(!plain.contains("other", "test", "custom"));
    }
}
