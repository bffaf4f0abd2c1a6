//! Checking a submitted job: every field a client sends is checked here, before the job is
//! accepted, with a message that names the field.

use std::path::{Component, Path, PathBuf};

use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::resource::validate_instance_name;
use tessera_proto::tessera::v1::JobSpec;
use tessera_proto::time::from_proto_duration;
use tessera_runners::RunnerConfig;
use tessera_runners::step::TRUST_DOMAIN_ENV;

use super::cells::is_variable_name;
use super::driver::JobContext;
use super::registry::JobsError;
use crate::execution::execute::PRIORITY_RANGE;

/// Most retries a job may ask for.
const MAX_RETRIES: u32 = 100;

/// Most secret variables one job may pass.
pub(super) const MAX_SECRETS: usize = 64;

/// Largest value of one secret variable.
pub(super) const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Longest project identity (a repository URL or a directory name).
const MAX_PROJECT_BYTES: usize = 4096;

/// Checks every field of `spec`, normalizes its environment and its matrix cells' (sorted by
/// name) and returns its runner.
pub(super) fn validate(spec: &mut JobSpec, ctx: &JobContext) -> Result<RunnerConfig, JobsError> {
    let bad = |field: &'static str, problem: String| JobsError::Invalid { field, problem };
    super::labels::check(&mut spec.labels, &spec.title)
        .map_err(|problem| bad("labels", problem))?;
    validate_instance_name(&spec.instance_name).map_err(|e| bad("instance_name", e.to_string()))?;
    let function = DigestFunction::from_request(spec.digest_function)
        .map_err(|e| bad("digest_function", e.to_string()))?;
    let root = Digest::from_proto_opt(function, spec.input_root_digest.as_ref())
        .map_err(|e| bad("input_root_digest", e.to_string()))?;
    if !ctx.store.contains(&root) {
        return Err(JobsError::InputRootMissing(root));
    }
    let runner: RunnerConfig = serde_json::from_str(&spec.runner_json)
        .map_err(|e| bad("runner_json", format!("not a runner configuration: {e}")))?;
    check_abs_path("exec_root", &spec.exec_root)?;
    for path in &spec.persist {
        let p = Path::new(path);
        if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(bad(
                "persist",
                format!("\"{path}\" must be a relative path without `..`"),
            ));
        }
    }
    spec.environment.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in spec.environment.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(bad(
                "environment",
                format!("variable {} is set twice", pair[0].name),
            ));
        }
    }
    if let Some(var) = spec
        .environment
        .iter()
        .find(|v| v.name.is_empty() || v.name.contains('='))
    {
        return Err(bad(
            "environment",
            format!("invalid variable name \"{}\"", var.name),
        ));
    }
    super::cells::check(&mut spec.cells).map_err(|problem| bad("cells", problem))?;
    if spec.project.len() > MAX_PROJECT_BYTES {
        return Err(bad(
            "project",
            format!("{} bytes; at most {MAX_PROJECT_BYTES}", spec.project.len()),
        ));
    }
    check_reserved(spec)?;
    check_secrets(spec)?;
    if let Some(p) = spec.platform.iter().find(|p| p.name.is_empty()) {
        return Err(bad(
            "platform",
            format!("property with an empty name (value \"{}\")", p.value),
        ));
    }
    if spec.retries > MAX_RETRIES {
        return Err(bad(
            "retries",
            format!("{} is more than the limit of {MAX_RETRIES}", spec.retries),
        ));
    }
    if spec.priority < PRIORITY_RANGE.0 || spec.priority > PRIORITY_RANGE.1 {
        return Err(bad(
            "priority",
            format!(
                "{} is outside {}..={}",
                spec.priority, PRIORITY_RANGE.0, PRIORITY_RANGE.1
            ),
        ));
    }
    if let Some(timeout) = &spec.test_timeout {
        let timeout = from_proto_duration(timeout)
            .ok_or_else(|| bad("test_timeout", "negative or out of range".to_owned()))?;
        if timeout > ctx.max_action_timeout {
            return Err(bad(
                "test_timeout",
                format!(
                    "{} is longer than the coordinator's limit of {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(ctx.max_action_timeout)
                ),
            ));
        }
    }
    Ok(runner)
}

/// No variable of the job's (or a cell's) environment is one the coordinator sets itself: the
/// trust domain is the submitter's, never the client's word.
fn check_reserved(spec: &JobSpec) -> Result<(), JobsError> {
    let cells = spec.cells.iter().flat_map(|c| &c.environment);
    if spec
        .environment
        .iter()
        .chain(cells)
        .any(|v| v.name == TRUST_DOMAIN_ENV)
    {
        return Err(JobsError::Invalid {
            field: "environment",
            problem: format!(
                "{TRUST_DOMAIN_ENV} is set by the coordinator from the submitter's token; remove it"
            ),
        });
    }
    Ok(())
}

/// The job's secrets: at most [`MAX_SECRETS`], each a valid and unique variable name that the
/// environment (the job's or any cell's) does not also set, with a value of at most
/// [`MAX_SECRET_BYTES`]. Messages name the variable, never the value.
fn check_secrets(spec: &JobSpec) -> Result<(), JobsError> {
    let bad = |problem: String| JobsError::Invalid {
        field: "secrets",
        problem,
    };
    if spec.secrets.len() > MAX_SECRETS {
        return Err(bad(format!(
            "{} secret variables is more than the limit of {MAX_SECRETS}",
            spec.secrets.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for secret in &spec.secrets {
        let name = &secret.name;
        if !is_variable_name(name) || name == TRUST_DOMAIN_ENV {
            return Err(bad(format!(
                "\"{name}\" is not a valid variable name (letters, digits and _, not starting with a digit)"
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(bad(format!("variable {name} is passed twice")));
        }
        if secret.value.len() > MAX_SECRET_BYTES {
            return Err(bad(format!(
                "the value of {name} is {} bytes, more than the limit of {MAX_SECRET_BYTES}",
                secret.value.len()
            )));
        }
        if spec.environment.iter().any(|v| &v.name == name) {
            return Err(bad(format!(
                "{name} is also set in the environment; pass it one way only"
            )));
        }
        if let Some(cell) = spec
            .cells
            .iter()
            .find(|c| c.environment.iter().any(|v| &v.name == name))
        {
            return Err(bad(format!(
                "{name} is also set by matrix cell {}; pass it one way only",
                cell.name
            )));
        }
    }
    Ok(())
}

/// `path` is absolute, normalized (no `.`, `..`, doubled or trailing `/`) and not `/` itself.
fn check_abs_path(field: &'static str, path: &str) -> Result<(), JobsError> {
    let p = Path::new(path);
    let normal = p.is_absolute()
        && p.components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && p.components().count() > 1
        && p.components().collect::<PathBuf>().as_os_str() == p.as_os_str();
    if normal {
        Ok(())
    } else {
        Err(JobsError::Invalid {
            field,
            problem: format!("\"{path}\" must be an absolute, normalized path other than /"),
        })
    }
}

#[cfg(test)]
mod tests {
    use tessera_proto::reapi::command::EnvironmentVariable;
    use tessera_proto::tessera::v1::{MatrixCell, SecretEnv};

    use super::*;

    const VALUE: &str = "do-not-show-me";

    fn secret(name: &str, value: &str) -> SecretEnv {
        SecretEnv {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    fn var(name: &str) -> EnvironmentVariable {
        EnvironmentVariable {
            name: name.to_owned(),
            value: "x".to_owned(),
        }
    }

    #[test]
    fn secrets_are_checked_without_showing_their_values() {
        let ok = JobSpec {
            secrets: vec![secret("TOKEN", VALUE), secret("_OTHER2", "")],
            environment: vec![var("PATH")],
            ..JobSpec::default()
        };
        assert!(check_secrets(&ok).is_ok());
        let too_many = JobSpec {
            secrets: (0..=MAX_SECRETS)
                .map(|i| secret(&format!("S{i}"), VALUE))
                .collect(),
            ..JobSpec::default()
        };
        let cases: Vec<(JobSpec, &str)> = vec![
            (
                JobSpec {
                    secrets: vec![secret("1BAD", VALUE)],
                    ..JobSpec::default()
                },
                "secrets: \"1BAD\" is not a valid variable name",
            ),
            (
                JobSpec {
                    secrets: vec![secret("A=B", VALUE)],
                    ..JobSpec::default()
                },
                "secrets: \"A=B\" is not a valid variable name",
            ),
            (
                JobSpec {
                    secrets: vec![secret(TRUST_DOMAIN_ENV, VALUE)],
                    ..JobSpec::default()
                },
                "secrets: \"TESSERA_TRUST_DOMAIN\" is not a valid",
            ),
            (
                JobSpec {
                    secrets: vec![secret("TOKEN", VALUE), secret("TOKEN", VALUE)],
                    ..JobSpec::default()
                },
                "secrets: variable TOKEN is passed twice",
            ),
            (
                JobSpec {
                    secrets: vec![secret("TOKEN", VALUE)],
                    environment: vec![var("TOKEN")],
                    ..JobSpec::default()
                },
                "secrets: TOKEN is also set in the environment",
            ),
            (
                JobSpec {
                    secrets: vec![secret("TOKEN", VALUE)],
                    cells: vec![MatrixCell {
                        name: "TOKEN=x".into(),
                        environment: vec![var("TOKEN")],
                    }],
                    ..JobSpec::default()
                },
                "secrets: TOKEN is also set by matrix cell TOKEN=x",
            ),
            (
                JobSpec {
                    secrets: vec![secret("BIG", &VALUE.repeat(MAX_SECRET_BYTES))],
                    ..JobSpec::default()
                },
                "secrets: the value of BIG is 917504 bytes, more than the limit of 65536",
            ),
            (
                too_many,
                "secrets: 65 secret variables is more than the limit of 64",
            ),
        ];
        for (spec, expected) in cases {
            let message = check_secrets(&spec).unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message}");
            assert!(!message.contains(VALUE), "{message}");
        }
    }

    #[test]
    fn clients_cannot_name_a_trust_domain() {
        let in_env = JobSpec {
            environment: vec![var(TRUST_DOMAIN_ENV)],
            ..JobSpec::default()
        };
        let in_cell = JobSpec {
            cells: vec![MatrixCell {
                name: "c".into(),
                environment: vec![var(TRUST_DOMAIN_ENV)],
            }],
            ..JobSpec::default()
        };
        for spec in [in_env, in_cell] {
            let message = check_reserved(&spec).unwrap_err().to_string();
            assert!(
                message.starts_with("environment: TESSERA_TRUST_DOMAIN is set by the coordinator"),
                "{message}"
            );
        }
        assert!(check_reserved(&JobSpec::default()).is_ok());
    }

    #[test]
    fn exec_roots_must_be_absolute_and_normal() {
        assert!(check_abs_path("exec_root", "/tmp/tessera/x").is_ok());
        for bad in [
            "",
            "/",
            "tmp/x",
            "/tmp/../etc",
            "/tmp/./x",
            "/tmp//x",
            "/tmp/x/",
        ] {
            let err = check_abs_path("exec_root", bad).expect_err(bad);
            assert!(err.to_string().starts_with("exec_root:"), "{bad}: {err}");
        }
    }
}
