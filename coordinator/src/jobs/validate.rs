//! Checking a submitted job: every field a client sends is checked here, before the job is
//! accepted, with a message that names the field.

use std::path::{Component, Path, PathBuf};

use tessera_cas::digest::{Digest, DigestFunction};
use tessera_cas::resource::validate_instance_name;
use tessera_proto::tessera::v1::JobSpec;
use tessera_proto::time::from_proto_duration;
use tessera_runners::RunnerConfig;

use super::driver::JobContext;
use super::registry::JobsError;
use crate::execution::execute::PRIORITY_RANGE;

/// Most retries a job may ask for.
const MAX_RETRIES: u32 = 100;

/// Checks every field of `spec`, normalizes its environment and its matrix cells' (sorted by
/// name) and returns its runner.
pub(super) fn validate(spec: &mut JobSpec, ctx: &JobContext) -> Result<RunnerConfig, JobsError> {
    let bad = |field: &'static str, problem: String| JobsError::Invalid { field, problem };
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
    use super::*;

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
