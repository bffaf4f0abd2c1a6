//! One step of a job as a remote action: what the coordinator asks an agent to do, and what the
//! agent answers.
//!
//! The coordinator turns each step of a job (prepare, list, run a batch) into a REAPI action
//! whose command is [`BUILTIN_PROGRAM`] followed by [`StepSpec::to_argv`]'s arguments. An agent
//! that sees that program does not start it: it runs [`execute_step`] with its own way of
//! spawning processes ([`Spawn`], sandboxed, with the lease's cancellation), writes the
//! [`StepReport`] as JSON to [`REPORT_PATH`] under the exec root, copies the files a prepare
//! step produced under [`PREPARED_DIR`], and uploads both as the action's declared outputs.
//! So the steps share the scheduler, the leases, retries and the action cache with every other
//! action, and the runner adapters run next to the tools whose output they read.
//!
//! Every step sees the input root at the job's fixed exec root path (DESIGN.md §5: cargo test
//! binaries embed absolute paths), so the paths in [`Prepared`] are valid on every agent.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    Batching, CommandOutput, CommandSpec, Outcome, Prepared, RunnerConfig, RunnerError, TestId,
    TestResult, WorkerInvocation,
};

/// `argv[0]` of a job step's command: the agent runs the step itself instead of a program.
pub const BUILTIN_PROGRAM: &str = "tessera-builtin";

/// `argv[1]`: which builtin (there is one so far; the word leaves room for more).
const STEP_VERB: &str = "run-step";

/// Where the agent writes the [`StepReport`], relative to the exec root; a declared output file
/// of every step action.
pub const REPORT_PATH: &str = ".tessera/report.json";

/// Where the agent copies what a prepare step produced, relative to the exec root; a declared
/// output directory of prepare actions. A file at absolute path `<exec root>/<p>` is copied to
/// `PREPARED_DIR/<p>`, so the coordinator can lay it back at `<p>` in the prepared input root.
pub const PREPARED_DIR: &str = ".tessera/prepared";

/// Per-step scratch directories (JUnit reports, id files) live here, relative to the exec root.
pub const SCRATCH_DIR: &str = ".tessera/scratch";

/// How a secret variable's value starts in a step's Command (`tessera run --secret-env`): this
/// prefix and the hex of a keyed hash of the secret. The action (and so its cache key) holds
/// only that; the agent gives the step the value the lease carries for the variable.
pub const SECRET_PLACEHOLDER_PREFIX: &str = "tessera-secret:";

/// Whether `value` has the form of a secret's placeholder: [`SECRET_PLACEHOLDER_PREFIX`] and 64
/// lowercase hex digits.
pub fn is_secret_placeholder(value: &str) -> bool {
    value
        .strip_prefix(SECRET_PLACEHOLDER_PREFIX)
        .is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// The variable in which the coordinator names a job's trust domain (its submitter's role and
/// instance scope), set on the steps that use what an agent keeps between jobs (persisted
/// directories, workers) when the domain is not empty. The agent keeps those apart by it, and
/// the action's cache key includes it. Clients may not set it.
pub const TRUST_DOMAIN_ENV: &str = "TESSERA_TRUST_DOMAIN";

/// What one step action does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepSpec {
    /// Run the runner's prepare command once and report what it built.
    Prepare {
        /// The runner.
        runner: RunnerConfig,
        /// Directories under the exec root (relative paths) that the agent keeps between
        /// prepare steps of the same exec root on that agent, such as cargo's `target`, so a
        /// rebuild is incremental. The agent may ignore this; the result must not depend on it.
        #[serde(default)]
        persist: Vec<PathBuf>,
    },
    /// Run the runner's list command.
    List {
        /// The runner.
        runner: RunnerConfig,
        /// What the prepare step reported.
        prepared: Prepared,
    },
    /// Run a batch of tests and report one result per test.
    Batch {
        /// The runner.
        runner: RunnerConfig,
        /// What the prepare step reported.
        prepared: Prepared,
        /// The tests, in the order to run them.
        tests: Vec<TestId>,
        /// Deadline of each test; a command running several tests gets the sum.
        test_timeout_ms: u64,
        /// For a runner with a long-lived worker ([`crate::Runner::worker_command`]): the
        /// job (and matrix cell) this batch belongs to. An agent hands the batch to an idle
        /// worker it started for the same job, the same step settings and the same input
        /// root, or starts one; a worker never serves another job. `None`: one process per
        /// batch, as always.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<String>,
    },
}

impl StepSpec {
    /// The command line of the step's action.
    pub fn to_argv(&self) -> Vec<String> {
        let json = serde_json::to_string(self).expect("a step spec always serializes");
        vec![BUILTIN_PROGRAM.to_owned(), STEP_VERB.to_owned(), json]
    }

    /// The step an action's command line asks for: `None` if it is not a builtin command at
    /// all, an error if it is one but malformed.
    pub fn from_argv(argv: &[String]) -> Option<Result<Self, StepArgvError>> {
        if argv.first().map(String::as_str) != Some(BUILTIN_PROGRAM) {
            return None;
        }
        Some(match argv {
            [_, verb, json] if verb == STEP_VERB => {
                serde_json::from_str(json).map_err(StepArgvError::Malformed)
            }
            _ => Err(StepArgvError::Arguments { count: argv.len() }),
        })
    }

    /// The runner of the step.
    pub fn runner(&self) -> &RunnerConfig {
        match self {
            Self::Prepare { runner, .. }
            | Self::List { runner, .. }
            | Self::Batch { runner, .. } => runner,
        }
    }
}

/// Why a builtin command line (`argv[0]` is [`BUILTIN_PROGRAM`]) names no step: the action's
/// fault.
#[derive(Debug, Error)]
pub enum StepArgvError {
    /// The arguments are not `tessera-builtin run-step <json>`.
    #[error("{program}: expected `{program} {verb} <json>`, got {count} arguments", program = BUILTIN_PROGRAM, verb = STEP_VERB)]
    Arguments {
        /// How many arguments there are, `argv[0]` included.
        count: usize,
    },
    /// The JSON is not a step spec.
    #[error("{program}: malformed step spec: {0}", program = BUILTIN_PROGRAM)]
    Malformed(#[source] serde_json::Error),
}

/// What a step reported. A step whose tool failed (the build broke, the list command crashed)
/// reports [`StepReport::Failed`]; the agent ends that action with exit code 1, so it is not
/// retried as an infrastructure failure and no action cache keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "report", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepReport {
    /// The prepare step succeeded.
    Prepared {
        /// What later steps need.
        prepared: Prepared,
    },
    /// The list step succeeded.
    Listed {
        /// The tests, in the tool's order.
        tests: Vec<TestId>,
    },
    /// The batch ran: one result per requested test, in request order.
    Ran {
        /// The results.
        results: Vec<TestResult>,
        /// Test-tool processes started for this batch (0 when a running worker served it).
        #[serde(default)]
        startups: u32,
    },
    /// The step could not do its work.
    Failed {
        /// What went wrong, with the end of the tool's output.
        error: String,
    },
}

/// How [`execute_step`] runs a command: the agent's sandboxed process runner in production, a
/// plain local process in tests.
pub trait Spawn {
    /// Why a command did not run to an end (it could not be started, the run was cancelled,
    /// ...): the spawner's own type, which [`execute_step`] hands back as it is, so the caller
    /// tells these cases apart by matching, not by digging in an `io::Error`.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Runs `command` to its end, or until `timeout` passes (then it is killed, whole process
    /// group, and the output says [`Termination::TimedOut`]).
    fn spawn(
        &self,
        command: &CommandSpec,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<CommandOutput, Self::Error>> + Send;

    /// Runs one batch on a long-lived worker of this step's job ([`StepSpec::Batch`]'s
    /// `worker`): hands `request` to an idle worker this spawner started earlier with the same
    /// `start` for the same job and input root, or starts one with `start` first. Returns what
    /// the worker printed while it ran the batch (its exit, if it died or was stopped at
    /// `timeout`) and whether a worker was started; `None` when this spawner keeps no workers,
    /// and the batch then runs as a process of its own. The default keeps none.
    fn worker_batch(
        &self,
        start: &WorkerInvocation,
        request: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<(CommandOutput, bool)>, Self::Error>> + Send {
        let _ = (start, request, timeout);
        async { Ok(None) }
    }

    /// Starts a worker for `start` ahead of the job's first batches, if this spawner keeps
    /// workers and has none for it yet (see [`StepSpec::Batch`] with no tests); whether one was
    /// started. The default keeps none.
    fn warm_worker(
        &self,
        start: &WorkerInvocation,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send {
        let _ = start;
        async { Ok(false) }
    }

    /// Called with each group of results as a batch step reads them, before the step ends, so
    /// the caller can report tests as they finish. The default ignores them.
    fn results(&self, _results: &[TestResult]) {}
}

/// Why [`execute_step`] ended without a report.
#[derive(Debug, Error)]
pub enum ExecuteError<E> {
    /// The spawner's error, as it returned it.
    #[error(transparent)]
    Spawn(E),
    /// A batch's scratch directory or the files its command reads could not be written.
    #[error("failed to write the step's scratch files in {}: {source}", .dir.display())]
    Scratch {
        /// The batch's scratch directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs `spec` with `spawn`, with the batches' scratch directories under `scratch` (usually
/// `<exec root>/`[`SCRATCH_DIR`]). Tool failures become [`StepReport::Failed`]; an error from
/// `spawn` (cancelled, could not start) is returned as it is, in [`ExecuteError::Spawn`]. The
/// caller writes and reads scratch files at the same paths the commands see them at, so
/// `scratch` must be valid for both: an agent whose commands see the exec root in a mount
/// namespace of their own passes a path they share with it.
pub async fn execute_step<S: Spawn + Sync>(
    spec: &StepSpec,
    scratch: &Path,
    spawn: &S,
) -> Result<StepReport, ExecuteError<S::Error>> {
    let runner = spec.runner().runner();
    match spec {
        StepSpec::Prepare { .. } => {
            let Some(command) = runner.prepare_command() else {
                return Ok(StepReport::Prepared {
                    prepared: Prepared::default(),
                });
            };
            let output = spawn
                .spawn(&command, None)
                .await
                .map_err(ExecuteError::Spawn)?;
            Ok(match runner.parse_prepare(&output) {
                Ok(prepared) => StepReport::Prepared { prepared },
                Err(e) => StepReport::Failed {
                    error: e.to_string(),
                },
            })
        }
        StepSpec::List { prepared, .. } => {
            let output = spawn
                .spawn(&runner.list_command(prepared), None)
                .await
                .map_err(ExecuteError::Spawn)?;
            Ok(match runner.parse_list(prepared, &output) {
                Ok(tests) => StepReport::Listed { tests },
                Err(e) => StepReport::Failed {
                    error: e.to_string(),
                },
            })
        }
        StepSpec::Batch {
            prepared,
            tests,
            test_timeout_ms,
            worker,
            ..
        } => {
            let per_test = Duration::from_millis((*test_timeout_ms).max(1));
            let mut results = Vec::with_capacity(tests.len());
            let mut startups = 0u32;
            let on_worker = worker.is_some() && runner.long_lived_worker();
            if on_worker && tests.is_empty() {
                // No tests: start the job's worker early (while its tests are being listed),
                // for the usual rootdir, the project root.
                let dir = worker_dir(scratch, "");
                if let Some(start) = runner.worker_command(prepared, "", &dir) {
                    let started = spawn
                        .warm_worker(&start)
                        .await
                        .map_err(ExecuteError::Spawn)?;
                    startups += u32::from(started);
                }
            }
            let mut groups = runner.batching().split(tests);
            if on_worker {
                // One worker runs the tests of one group (a pytest rootdir).
                groups = groups
                    .iter()
                    .flat_map(|group| Batching::PerGroup.split(group))
                    .collect();
            }
            for (i, group) in groups.into_iter().enumerate() {
                let scratch = scratch.join(i.to_string());
                let scratch_error = |source| ExecuteError::<S::Error>::Scratch {
                    dir: scratch.clone(),
                    source,
                };
                // A worker's directory serves batch after batch: start each one empty.
                match std::fs::remove_dir_all(&scratch) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(scratch_error(e));
                    }
                    _ => {}
                }
                std::fs::create_dir_all(&scratch).map_err(scratch_error)?;
                let timeout =
                    per_test.saturating_mul(u32::try_from(group.len()).unwrap_or(u32::MAX));
                let served = if on_worker {
                    let dir = worker_dir(scratch.parent().unwrap_or(&scratch), &group[0].group);
                    run_on_worker(runner, prepared, &group, &scratch, &dir, timeout, spawn).await?
                } else {
                    None
                };
                let ran = match served {
                    Some((ran, started)) => {
                        startups += u32::from(started);
                        ran
                    }
                    None => match runner.run_command(prepared, &group, &scratch) {
                        Ok(invocation) => {
                            invocation.write_files().map_err(scratch_error)?;
                            startups += 1;
                            let output = spawn
                                .spawn(&invocation.command, Some(timeout))
                                .await
                                .map_err(ExecuteError::Spawn)?;
                            runner
                                .parse_results(prepared, &group, &output, &scratch)
                                .map(|mut ran| {
                                    if !runner.times_tests_itself() {
                                        for result in &mut ran {
                                            result.duration = Some(output.elapsed);
                                        }
                                    }
                                    ran
                                })
                        }
                        Err(e) => Err(e),
                    },
                };
                let ran = match ran {
                    Ok(ran) => ran,
                    Err(e) => group.iter().map(|id| no_result(id, &e)).collect(),
                };
                spawn.results(&ran);
                results.extend(ran);
            }
            Ok(StepReport::Ran { results, startups })
        }
    }
}

/// The directory of the worker for tests of `group`, beside the batches' scratch directories
/// (under `scratch`): the same for every batch of the group, so its files outlive a batch.
fn worker_dir(scratch: &Path, group: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same name for the same group on every call.
    let mut hasher = std::hash::DefaultHasher::new();
    group.hash(&mut hasher);
    scratch.join(format!("worker-{:016x}", hasher.finish()))
}

/// Runs `group` on a worker (see [`Spawn::worker_batch`]): its results and whether a worker
/// was started, or `None` when the runner or the spawner has no worker.
async fn run_on_worker<S: Spawn + Sync>(
    runner: &dyn crate::Runner,
    prepared: &Prepared,
    group: &[TestId],
    scratch: &Path,
    dir: &Path,
    timeout: Duration,
    spawn: &S,
) -> Result<Option<(Result<Vec<TestResult>, RunnerError>, bool)>, ExecuteError<S::Error>> {
    let Some(start) = runner.worker_command(prepared, &group[0].group, dir) else {
        return Ok(None);
    };
    let request = match runner.worker_request(group, scratch) {
        Ok(request) => request,
        Err(e) => return Ok(Some((Err(e), false))),
    };
    let Some((output, started)) = spawn
        .worker_batch(&start, &request, timeout)
        .await
        .map_err(ExecuteError::Spawn)?
    else {
        return Ok(None);
    };
    Ok(Some((
        runner.parse_results(prepared, group, &output, scratch),
        started,
    )))
}

/// The result of a test whose run could not be read.
fn no_result(id: &TestId, error: &RunnerError) -> TestResult {
    TestResult {
        id: id.clone(),
        outcome: Outcome::NoResult,
        duration: None,
        output: format!("tessera could not read this test's result: {error}"),
    }
}

/// Where a file the prepare step produced goes in the prepared input root: its path relative to
/// `exec_root`, or `None` for a file outside it (which later steps could not see anyway).
pub fn prepared_path(exec_root: &Path, file: &Path) -> Option<PathBuf> {
    let relative = file.strip_prefix(exec_root).ok()?;
    let clean = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    (clean && !relative.as_os_str().is_empty()).then(|| relative.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PytestRunner;

    #[test]
    fn argv_round_trips() {
        let spec = StepSpec::Batch {
            runner: RunnerConfig::Pytest(PytestRunner::new("/tmp/root")),
            prepared: Prepared::default(),
            tests: vec![TestId::ungrouped("t.py::a")],
            test_timeout_ms: 1000,
            worker: None,
        };
        let argv = spec.to_argv();
        assert_eq!(argv[0], BUILTIN_PROGRAM);
        assert!(matches!(StepSpec::from_argv(&argv), Some(Ok(parsed)) if parsed == spec));
        assert!(StepSpec::from_argv(&["sh".into()]).is_none());
        let bad = StepSpec::from_argv(&[BUILTIN_PROGRAM.into(), "run-step".into(), "{".into()]);
        assert!(
            bad.unwrap()
                .unwrap_err()
                .to_string()
                .contains("malformed step spec")
        );
        let short = StepSpec::from_argv(&[BUILTIN_PROGRAM.into(), "run-step".into()]);
        assert_eq!(
            short.unwrap().unwrap_err().to_string(),
            "tessera-builtin: expected `tessera-builtin run-step <json>`, got 2 arguments"
        );
    }

    #[test]
    fn prepared_paths_stay_inside_the_exec_root() {
        let root = Path::new("/tmp/root");
        assert_eq!(
            prepared_path(root, Path::new("/tmp/root/target/debug/t")),
            Some(PathBuf::from("target/debug/t"))
        );
        assert_eq!(prepared_path(root, Path::new("/usr/bin/t")), None);
        assert_eq!(prepared_path(root, Path::new("/tmp/root/../x")), None);
        assert_eq!(prepared_path(root, root), None);
    }
}
