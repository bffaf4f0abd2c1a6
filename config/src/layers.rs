//! The loader: defaults, then the TOML file, then the environment, then the flags, then one
//! check of the result. Written once here; each command says only what its settings are
//! ([`Settings`]), not in which order they are read.
//!
//! The check runs on the final settings, so a lower layer may hold a value that a higher one
//! overrides (a file's `slots = 0` replaced by `--slots 4` is fine).

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{BadValue, ConfigError, EnvScope, EnvUse, UnknownEnvVar};

/// A command's settings, as [`load`] builds them layer by layer.
pub trait Settings: Default {
    /// The file form: every key optional, `#[serde(deny_unknown_fields)]` so a typo is an
    /// error, not a silent default.
    type File: DeserializeOwned;
    /// The values given on the command line; `None` leaves the lower layers' value.
    type Flags;
    /// The environment variables the command reads, and which others are its typos.
    const ENV: EnvScope;

    /// Applies what the file sets.
    fn merge_file(&mut self, file: Self::File) -> Result<(), ConfigError>;
    /// Applies one variable of [`Settings::ENV`]'s `reads` (those read before loading, such as
    /// the config file's own variable, are no-ops).
    fn merge_env(&mut self, var: &str, value: &str) -> Result<(), BadValue>;
    /// Applies the flags.
    fn merge_flags(&mut self, flags: &Self::Flags) -> Result<(), ConfigError>;
    /// Checks values that parse but make no sense, alone or together.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads settings: defaults, then `file` (if any), then the variables of `env` that the command
/// reads (in name order; an unknown one under its prefix is an error), then `flags`; then
/// checks the result.
pub fn load<S: Settings>(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
    flags: &S::Flags,
) -> Result<S, ConfigError> {
    let mut settings = S::default();
    if let Some(path) = file {
        settings.merge_file(read_file(path)?)?;
    }
    for (var, value) in env {
        match S::ENV.classify(var) {
            EnvUse::Read => settings
                .merge_env(var, value)
                .map_err(|bad| bad.for_env(var))?,
            EnvUse::Unknown => {
                return Err(ConfigError::UnknownEnv(UnknownEnvVar::new(
                    var.as_str(),
                    S::ENV.reads,
                )));
            }
            EnvUse::Ignore => {}
        }
    }
    settings.merge_flags(flags)?;
    settings.validate()?;
    Ok(settings)
}

/// Reads and parses a TOML file into `F`.
pub fn read_file<F: DeserializeOwned>(path: &Path) -> Result<F, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(path, &text)
}

/// Parses `text`, the content of TOML file `path`, into `F`.
pub fn parse_file<F: DeserializeOwned>(path: &Path, text: &str) -> Result<F, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;
    use crate::{file_duration, parse, parse_duration};

    /// A command with two settings, to watch the layers stack.
    #[derive(Debug, Default, PartialEq)]
    struct Toy {
        slots: u32,
        grace: Duration,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ToyFile {
        slots: Option<u32>,
        grace: Option<String>,
    }

    impl Settings for Toy {
        type File = ToyFile;
        type Flags = Option<u32>;
        const ENV: EnvScope = EnvScope {
            reads: &["TOY_SLOTS", "TOY_GRACE"],
            prefix: "TOY_",
            others: &["TOY_OTHER_*"],
        };

        fn merge_file(&mut self, file: ToyFile) -> Result<(), ConfigError> {
            if let Some(v) = file.slots {
                self.slots = v;
            }
            if let Some(v) = file.grace {
                self.grace = file_duration("grace", &v)?;
            }
            Ok(())
        }

        fn merge_env(&mut self, var: &str, value: &str) -> Result<(), BadValue> {
            match var {
                "TOY_SLOTS" => self.slots = parse(value)?,
                "TOY_GRACE" => self.grace = parse_duration(value)?,
                _ => {}
            }
            Ok(())
        }

        fn merge_flags(&mut self, flags: &Option<u32>) -> Result<(), ConfigError> {
            if let Some(v) = *flags {
                self.slots = v;
            }
            Ok(())
        }

        fn validate(&self) -> Result<(), ConfigError> {
            if self.slots == 0 {
                return Err(BadValue::new("0", "must be at least 1").for_key("slots"));
            }
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn each_layer_overrides_the_one_below_and_only_the_result_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("toy.toml");
        std::fs::write(&file, "slots = 0\ngrace = \"1s\"\n").unwrap();
        let e = env(&[("TOY_GRACE", "2s"), ("TOY_OTHER_X", "y"), ("PATH", "/bin")]);
        let toy: Toy = load(Some(&file), &e, &Some(4)).unwrap();
        assert_eq!(
            toy,
            Toy {
                slots: 4,
                grace: Duration::from_secs(2)
            }
        );
        let err = load::<Toy>(Some(&file), &e, &None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for slots: \"0\": must be at least 1"
        );
    }

    #[test]
    fn each_mistake_names_its_source() {
        let none = BTreeMap::new();
        let missing = Path::new("/nonexistent/toy.toml");
        let err = load::<Toy>(Some(missing), &none, &None).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");

        let err = parse_file::<ToyFile>(Path::new("t.toml"), "slot = 1\n").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("slot"), "{err}");

        let err = load::<Toy>(None, &env(&[("TOY_SLOT", "1")]), &Some(1)).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownEnv(ref v) if v == "TOY_SLOT"));
        assert_eq!(
            err.to_string(),
            "unknown environment variable TOY_SLOT (known: TOY_SLOTS, TOY_GRACE)"
        );

        let err = load::<Toy>(None, &env(&[("TOY_SLOTS", "many")]), &None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for TOY_SLOTS: \"many\": invalid digit found in string"
        );
    }
}
