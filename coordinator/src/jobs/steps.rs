//! Running one step of a job as an action, and reading what it reports.
//!
//! A step (prepare, list, or a batch of tests: `tessera_runners::step`) becomes a REAPI
//! Command and Action in the CAS and goes through the execution layer ([`Executor`]) like any
//! other client's action, so it shares the scheduler, fair share, leases, retries and the
//! action cache. It is then watched to its end: results a batch reports while it runs go to
//! the request's partial-results sink, and cancelling the job cancels the operation. Last, the
//! step's report file is read from the CAS and decoded.
//!
//! Not here: what the driver does with a report (the phases in `driver.rs`, the tests'
//! lifecycle in `test_state.rs`).

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_proto::reapi::{
    Action, ActionResult, Command, ExecuteRequest, ExecuteResponse, ExecutionPolicy, Platform,
    Tree, command::EnvironmentVariable, platform::Property,
};
use tessera_proto::time::to_proto_duration;
use tessera_runners::TestResult;
use tessera_runners::step::{PREPARED_DIR, REPORT_PATH, StepReport, StepSpec, TRUST_DOMAIN_ENV};
use tonic::Code;

use super::cells::Cell;
use super::driver::{JobContext, Stop};
use super::job::Job;
use super::overlay::overlay;
use crate::execution::execute::{ExecuteError, OperationWatch, Submitted};
use crate::execution::platform::{AVOID_AGENT_PROPERTY, EXEC_ROOT_PROPERTY, NETWORK_PROPERTY};

/// Most bytes of one test's or step's output kept in an event (the tail is kept).
pub(super) const MAX_OUTPUT: usize = 64 * 1024;

/// Receives the results a batch reports while it runs, with the agent that ran them.
pub(super) type PartialSink = Box<dyn Fn(String, Vec<TestResult>) + Send + Sync>;

/// One step to run, and how.
pub(super) struct StepRequest {
    /// What to run.
    pub(super) spec: StepSpec,
    /// The input root it runs on.
    pub(super) root: Digest,
    /// Whether the action cache may answer it and keep its result.
    pub(super) cacheable: bool,
    /// Its action's timeout; `None` (or anything longer) means the coordinator's limit.
    pub(super) timeout: Option<Duration>,
    /// An agent it should not run on where another can take it (a retry avoids the agent
    /// its test failed on).
    pub(super) avoid_agent: Option<String>,
    /// Where results it reports while running go; `None` ignores them.
    pub(super) partial_sink: Option<PartialSink>,
    /// Told when the step is queued to run on the fleet (the action cache did not answer it).
    pub(super) queued: Option<tokio::sync::oneshot::Sender<()>>,
}

impl StepRequest {
    /// A prepare or list step: cacheable like any action, with the coordinator's longest
    /// timeout, on any agent.
    pub(super) fn cacheable(spec: StepSpec, root: Digest) -> Self {
        StepRequest {
            spec,
            root,
            cacheable: true,
            timeout: None,
            avoid_agent: None,
            partial_sink: None,
            queued: None,
        }
    }
}

/// A step action that ran.
pub(super) struct StepRun {
    /// What the step reported.
    pub(super) report: StepReport,
    /// The action's result.
    pub(super) result: ActionResult,
    /// Whether the action cache answered it.
    pub(super) cached: bool,
}

impl StepRun {
    /// The agent that ran it (empty when unknown).
    pub(super) fn agent(&self) -> String {
        self.result
            .execution_metadata
            .as_ref()
            .map(|m| m.worker.clone())
            .unwrap_or_default()
    }
}

/// Runs one job's steps as actions.
pub(super) struct Steps<'a> {
    pub(super) ctx: &'a JobContext,
    pub(super) job: &'a Arc<Job>,
    pub(super) function: DigestFunction,
    /// Platform requirements the job was pinned to (its runner's tool and toolchain).
    pub(super) pinned: Vec<Property>,
    /// The matrix cell these steps run (a plain job's one unnamed cell): its environment is
    /// every step's.
    pub(super) cell: &'a Cell,
}

impl Steps<'_> {
    /// Executes `request` and reads its report, in a span of its own (the parent of the
    /// agent's spans for it).
    #[tracing::instrument(
        name = "step",
        skip_all,
        fields(otel.name = %format!("{} step", step_name(&request.spec)), cell = %self.cell.name)
    )]
    pub(super) async fn run(&self, mut request: StepRequest) -> Result<StepRun, Stop> {
        let step = step_name(&request.spec);
        let execute = self.store_action(&request)?;
        let submitter = if self.job.spec.submitter.is_empty() {
            "anonymous".to_owned()
        } else {
            self.job.spec.submitter.clone()
        };
        let submitted = self
            .ctx
            .executor
            .submit_step(
                &self.job.id,
                submitter,
                execute,
                self.job.secrets.for_lease(),
            )
            .await
            .map_err(|error| not_accepted(step, error))?;
        let (response, cached) = match submitted {
            Submitted::Cached(snapshot) => (snapshot.response, true),
            Submitted::Queued(watch) => {
                if let Some(queued) = request.queued.take() {
                    let _ = queued.send(());
                }
                (
                    self.follow(watch, request.partial_sink.as_ref()).await?,
                    false,
                )
            }
        };
        let response = response.ok_or_else(|| {
            Stop::Infrastructure(format!(
                "{} while a step was running",
                ExecuteError::Stopped
            ))
        })?;
        let status = response.status.unwrap_or_default();
        if status.code == Code::Cancelled as i32 {
            return Err(Stop::Cancelled);
        }
        if status.code != 0 {
            return Err(Stop::Infrastructure(format!(
                "the {step} step failed on the fleet: {}",
                status.message
            )));
        }
        let result = response.result.unwrap_or_default();
        let report = self.report(&result)?;
        Ok(StepRun {
            report,
            result,
            cached: cached || response.cached_result,
        })
    }

    /// Writes the step's Command and Action to the CAS and returns the request that runs it.
    fn store_action(&self, request: &StepRequest) -> Result<ExecuteRequest, Stop> {
        let spec = &self.job.spec;
        let mut env: Vec<EnvironmentVariable> = self.cell.environment.clone();
        // Placeholders, never values: the Command is stored and is the action's cache key.
        let secrets = self.job.secrets.environment().map_err(|lost| Stop::Error {
            message: format!("the {} step cannot run: {lost}", step_name(&request.spec)),
            log: String::new(),
        })?;
        env.extend(secrets);
        if keeps_between_jobs(&request.spec) && !spec.trust_domain.is_empty() {
            env.push(EnvironmentVariable {
                name: TRUST_DOMAIN_ENV.to_owned(),
                value: spec.trust_domain.clone(),
            });
        }
        env.sort_by(|a, b| a.name.cmp(&b.name));
        let mut properties: Vec<Property> = spec
            .platform
            .iter()
            .filter(|p| p.name != EXEC_ROOT_PROPERTY && p.name != AVOID_AGENT_PROPERTY)
            .chain(&self.pinned)
            .cloned()
            .collect();
        if let Some(agent) = request.avoid_agent.as_ref().filter(|a| !a.is_empty()) {
            properties.push(Property {
                name: AVOID_AGENT_PROPERTY.to_owned(),
                value: agent.clone(),
            });
        }
        properties.push(Property {
            name: EXEC_ROOT_PROPERTY.to_owned(),
            value: spec.exec_root.clone(),
        });
        let prepare = matches!(request.spec, StepSpec::Prepare { .. });
        if prepare && spec.prepare_network {
            // The build may fetch dependencies, as in any CI; tests keep the job's platform.
            properties.retain(|p| p.name != NETWORK_PROPERTY);
            properties.push(Property {
                name: NETWORK_PROPERTY.to_owned(),
                value: "on".to_owned(),
            });
        }
        properties.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)));
        let platform = Platform { properties };
        #[expect(
            deprecated,
            reason = "agents and v2.0 clients read the pre-2.1 output fields"
        )]
        let command = Command {
            arguments: request.spec.to_argv(),
            environment_variables: env,
            output_files: vec![REPORT_PATH.to_owned()],
            output_directories: if prepare {
                vec![PREPARED_DIR.to_owned()]
            } else {
                Vec::new()
            },
            platform: Some(platform.clone()),
            ..Default::default()
        };
        let command_bytes = command.encode_to_vec();
        let command_digest = self.function.digest_of(&command_bytes);
        let max = self.ctx.max_action_timeout;
        let timeout = request.timeout.unwrap_or(max).min(max);
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(request.root.to_proto()),
            timeout: Some(to_proto_duration(timeout)),
            do_not_cache: !request.cacheable,
            platform: Some(platform),
            ..Default::default()
        };
        let action_bytes = action.encode_to_vec();
        let action_digest = self.function.digest_of(&action_bytes);
        for (digest, bytes) in [
            (command_digest, command_bytes),
            (action_digest, action_bytes),
        ] {
            self.ctx
                .store
                .write(&digest, &bytes)
                .map_err(|e| Stop::Infrastructure(format!("failed to store a step action: {e}")))?;
        }
        Ok(ExecuteRequest {
            instance_name: spec.instance_name.clone(),
            skip_cache_lookup: !request.cacheable,
            action_digest: Some(action_digest.to_proto()),
            execution_policy: Some(ExecutionPolicy {
                priority: spec.priority,
            }),
            digest_function: self.function.to_proto(),
            ..Default::default()
        })
    }

    /// Watches a queued step to its end, handing on new partial results; `Ok(None)` if the
    /// scheduler stopped first. Cancelling the job cancels the operation.
    async fn follow(
        &self,
        mut watch: OperationWatch,
        partial_sink: Option<&PartialSink>,
    ) -> Result<Option<ExecuteResponse>, Stop> {
        let name = watch.name();
        self.job.add_operation(&name);
        let mut cancelled = false;
        let mut partials_seen = 0;
        let response = loop {
            // Only what is new: the snapshot's partial results grow with the batch.
            let response = {
                let snapshot = watch.latest();
                if let Some(sink) = partial_sink {
                    for partial in snapshot.partial.iter().skip(partials_seen) {
                        match serde_json::from_str::<Vec<TestResult>>(&partial.results_json) {
                            Ok(results) => sink(partial.agent.clone(), results),
                            Err(error) => tracing::warn!(%error, "undecodable step progress"),
                        }
                    }
                    partials_seen = snapshot.partial.len();
                }
                snapshot.response.clone()
            };
            if let Some(response) = response {
                break Some(response);
            }
            tokio::select! {
                changed = watch.changed() => if changed.is_err() { break None },
                () = self.job.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    let _ = self.ctx.scheduler.cancel(&name).await;
                }
            }
        };
        self.job.remove_operation(&name);
        if cancelled {
            return Err(Stop::Cancelled);
        }
        Ok(response)
    }

    /// The step's report, from its output file.
    fn report(&self, result: &ActionResult) -> Result<StepReport, Stop> {
        let Some(file) = result.output_files.iter().find(|f| f.path == REPORT_PATH) else {
            let stderr =
                self.read_inline_or_blob(&result.stderr_raw, result.stderr_digest.as_ref());
            return Err(Stop::Infrastructure(format!(
                "the step's agent returned no report (exit code {}): {}; is the agent a Tessera agent of this version?",
                result.exit_code,
                tail(&stderr, 2000)
            )));
        };
        let bytes = self.read(file.digest.as_ref())?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Stop::Infrastructure(format!("the step's report does not parse: {e}")))
    }

    fn read(&self, digest: Option<&tessera_proto::reapi::Digest>) -> Result<Vec<u8>, Stop> {
        let digest = Digest::from_proto_opt(self.function, digest)
            .map_err(|e| Stop::Infrastructure(format!("bad digest in a step result: {e}")))?;
        self.ctx
            .store
            .read(&digest)
            .map_err(|e| Stop::Infrastructure(format!("failed to read {digest}: {e}")))?
            .map(|b| b.to_vec())
            .ok_or_else(|| {
                Stop::Infrastructure(format!("blob {digest} of a step result is missing"))
            })
    }

    fn read_inline_or_blob(
        &self,
        inline: &[u8],
        digest: Option<&tessera_proto::reapi::Digest>,
    ) -> String {
        if !inline.is_empty() {
            return String::from_utf8_lossy(inline).into_owned();
        }
        self.read(digest)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The input root with what the prepare step built laid over it.
    pub(super) async fn prepared_root(
        &self,
        input_root: &Digest,
        result: &ActionResult,
    ) -> Result<Digest, Stop> {
        let Some(dir) = result
            .output_directories
            .iter()
            .find(|d| d.path == PREPARED_DIR)
        else {
            return Ok(*input_root);
        };
        let tree_bytes = self.read(dir.tree_digest.as_ref())?;
        let tree = Tree::decode(tree_bytes.as_slice()).map_err(|e| {
            Stop::Infrastructure(format!("the prepare step's tree does not decode: {e}"))
        })?;
        let store = Arc::clone(&self.ctx.store);
        let function = self.function;
        let base = *input_root;
        tokio::task::spawn_blocking(move || overlay(store.as_ref(), function, &base, &tree))
            .await
            .map_err(|e| Stop::Infrastructure(format!("overlay panicked: {e}")))?
            .map_err(|e| {
                Stop::Infrastructure(format!("failed to build the prepared input root: {e}"))
            })
    }
}

/// Whether a step uses what an agent keeps between jobs (persisted directories, a long-lived
/// worker), so the job's trust domain must enter its Command: the agent keeps those apart by
/// it, and the action cache never answers one domain's step with another's result.
fn keeps_between_jobs(spec: &StepSpec) -> bool {
    match spec {
        StepSpec::Prepare { persist, .. } => !persist.is_empty(),
        StepSpec::Batch { worker, .. } => worker.is_some(),
        StepSpec::List { .. } => false,
    }
}

/// Why the execution layer did not accept a step, as a reason to stop the job: the job's own
/// spec or snapshot is at fault (the user fixes it), or the coordinator is.
fn not_accepted(step: &str, error: ExecuteError) -> Stop {
    match error {
        ExecuteError::InstanceName(_)
        | ExecuteError::DigestFunction(_)
        | ExecuteError::ActionDigest(_)
        | ExecuteError::Priority(_)
        | ExecuteError::MissingInputs(_)
        | ExecuteError::InvalidAction(_)
        | ExecuteError::UnknownPlatformKey { .. } => Stop::Error {
            message: format!("the {step} step was refused: {error}"),
            log: String::new(),
        },
        ExecuteError::NotFound(_)
        | ExecuteError::Stopped
        | ExecuteError::ActionCache(_)
        | ExecuteError::Store(_)
        | ExecuteError::Meta(_)
        | ExecuteError::Persist(_)
        | ExecuteError::Task(_) => {
            Stop::Infrastructure(format!("the {step} step could not be queued: {error}"))
        }
    }
}

/// The name of a step in messages.
pub(super) fn step_name(spec: &StepSpec) -> &'static str {
    match spec {
        StepSpec::Prepare { .. } => "prepare",
        StepSpec::List { .. } => "list",
        StepSpec::Batch { .. } => "batch",
    }
}

/// The reason to stop when a prepare or list step reported something other than success.
pub(super) fn step_failed(step: &str, report: StepReport, had_network: bool) -> Stop {
    match report {
        StepReport::Failed { error } => Stop::Error {
            message: match no_network_hint(&error, had_network) {
                Some(_) if step == "prepare" => format!(
                    "the {step} step failed, and it looks like it needed the network it ran \
                     without: drop --no-prepare-network, or vendor the dependencies"
                ),
                Some(hint) => format!("the {step} step failed; {hint}"),
                None => format!(
                    "the {step} step failed; fix the build or the test command and run again"
                ),
            },
            log: tail(&error, MAX_OUTPUT),
        },
        other => Stop::Infrastructure(format!("unexpected report from the {step} step: {other:?}")),
    }
}

/// What tools print when a name does not resolve or no route leads out: the marks of a step that
/// needed the network inside a sandbox that has only loopback.
const NO_NETWORK_MARKS: &[&str] = &[
    "Temporary failure in name resolution",
    "failed to lookup address information",
    "Could not resolve host",
    "Name or service not known",
    "Network is unreachable",
    "No address associated with hostname",
    "nodename nor servname provided",
    "dial tcp: lookup ",
    "getaddrinfo failed",
    "NameResolutionError",
    "Failed to establish a new connection",
];

/// One line telling the user that a failure looks like a missing network, when the step ran
/// without it; `None` otherwise.
pub(super) fn no_network_hint(output: &str, had_network: bool) -> Option<&'static str> {
    (!had_network && NO_NETWORK_MARKS.iter().any(|mark| output.contains(mark))).then_some(
        "it ran without network (tests get only loopback by default) and its output looks like \
         it needed it: run with --network if it does",
    )
}

/// Whether the job's test steps (and list step) run with the host's network.
pub(super) fn tests_have_network(spec: &tessera_proto::tessera::v1::JobSpec) -> bool {
    spec.platform
        .iter()
        .any(|p| p.name == NETWORK_PROPERTY && p.value == "on")
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub(super) fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]\n{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_that_is_really_no_network_says_so() {
        let cargo = "error: failed to get `serde` as a dependency\nCaused by:\n  [6] Could not resolve host: index.crates.io";
        assert!(no_network_hint(cargo, false).is_some());
        assert!(no_network_hint(cargo, true).is_none());
        assert!(no_network_hint("assertion failed: 1 == 2", false).is_none());
        let Stop::Error { message, .. } = step_failed(
            "prepare",
            StepReport::Failed {
                error: cargo.to_owned(),
            },
            false,
        ) else {
            panic!("not an error")
        };
        assert!(message.contains("--no-prepare-network"), "{message}");
    }

    #[test]
    fn tails_cut_at_character_boundaries() {
        assert_eq!(tail("short", 10), "short");
        let cut = tail("ééééé", 3);
        assert!(cut.ends_with('é'), "{cut}");
        assert!(cut.starts_with("[... "), "{cut}");
    }

    #[test]
    fn a_refused_step_is_the_jobs_fault_and_a_stopped_coordinator_is_not() {
        let refused = not_accepted("batch", ExecuteError::Priority(5000));
        assert!(
            matches!(&refused, Stop::Error { message, .. } if message.starts_with("the batch step was refused: priority 5000")),
            "{refused:?}"
        );
        let stopped = not_accepted("list", ExecuteError::Stopped);
        assert!(
            matches!(&stopped, Stop::Infrastructure(m) if m == "the list step could not be queued: the coordinator stopped"),
            "{stopped:?}"
        );
    }
}
