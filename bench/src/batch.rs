//! The fixed overhead of one batch: a job's batch step action (`tessera_runners::step`), built
//! exactly as the job driver (`tessera_coordinator::jobs::driver`) builds it, executed again
//! and again through REAPI Execute on a real agent, with a test that does nothing. Whatever
//! each run takes beyond the test's own duration (from the step report) is what every batch
//! costs the shard planner, which assumes 50 ms (`PlannerConfig::default().batch_overhead`).
//!
//! The same batch is then run on the fixture repository's whole working tree as its input
//! root (as a job's batches are), for context: the agent lays such a root out once, as a
//! shared layer (in the untimed warm-up), and mounts an overlay of it for every batch (see
//! `tessera_agent::layer`).
//!
//! Owns the action, the Execute loop and the rows it yields; the coordinator and agent are
//! started by [`crate::job`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction, digest_message};
use tessera_cas::snapshot::{self, HashCache};
use tessera_coordinator::jobs::planner::PlannerConfig;
use tessera_net::client::{ClientAuth, Link};
use tessera_proto::longrunning::operation;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_proto::reapi::{
    Action, ActionResult, Command, Directory, ExecuteRequest, ExecuteResponse,
    ExecutedActionMetadata, ExecutionPolicy, FileNode, Platform, command::EnvironmentVariable,
    platform::Property,
};
use tessera_runners::step::{REPORT_PATH, StepReport, StepSpec};
use tessera_runners::{CommandRunner, Outcome, Prepared, RunnerConfig, TestId};

use crate::error::BenchError;
use crate::link::{self, Traffic};
use crate::report::{self, Check, Part, Row, Tail};
use crate::suite_repo::{self, LIST_COMMAND, RUN_TEMPLATE, SUITE};

/// The platform property naming the fixed exec root (the coordinator's `EXEC_ROOT_PROPERTY`).
const EXEC_ROOT: &str = "exec-root";
/// The coordinator's default test deadline, which the driver gives a batch when the job names
/// none (`default_action_timeout`).
const TEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The driver's slack on top of a batch's test deadlines (`BATCH_SLACK`).
const BATCH_SLACK: Duration = Duration::from_secs(60);
/// Variables the CLI passes from the submitting environment that a batch here would carry.
const PASSED_ENV: [&str; 4] = ["HOME", "LANG", "PATH", "USER"];

/// How many batches to time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchPlan {
    /// Batches timed, one after another, with the one-file input root.
    pub batches: usize,
    /// Batches timed with the fixture repository as the input root.
    pub repo_batches: usize,
    /// Batches run first and not timed, per input root (the agent's first fetch of the
    /// inputs, connections).
    pub warmup: usize,
}

/// What a batch's input root is.
#[derive(Debug, Clone)]
pub(crate) enum InputRoot {
    /// `suite.sh` alone.
    Suite,
    /// A repository's working tree as `tessera run` snapshots it (git's files).
    Repository(PathBuf),
}

/// One timed batch: wall time and the instants of its execution metadata, ms after the
/// Execute call was sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchTiming {
    /// Execute sent → operation done.
    pub wall_ms: f64,
    /// The test's own duration from the step report.
    pub test_ms: f64,
    /// Worker start, inputs laid out, execution start, execution done, worker done.
    pub marks_ms: [f64; 5],
}

impl BatchTiming {
    /// The batch's cost beyond its test.
    pub(crate) fn overhead_ms(&self) -> f64 {
        self.wall_ms - self.test_ms
    }
}

/// Every timed batch on one input root.
#[derive(Debug, Clone)]
pub(crate) struct BatchRun {
    /// Files in the input root.
    pub files: usize,
    /// In the order they ran.
    pub timings: Vec<BatchTiming>,
    /// The warm-up batches, in the order they ran (the first on an agent that has none of the
    /// input root's blobs yet).
    pub warmups: Vec<BatchTiming>,
    /// The batch's command (`sh suite.sh run --junit FILE ID`) spawned here, outside any
    /// agent and sandbox: median wall time, ms.
    pub bare_command_ms: f64,
}

/// Spawns of the bare command timed for [`BatchRun::bare_command_ms`].
const BARE_SPAWNS: usize = 20;

/// Times `batches` batches (after `warmup` untimed) on `root` against the coordinator at
/// `endpoint`.
pub(crate) async fn run(
    endpoint: &str,
    root: &InputRoot,
    batches: usize,
    warmup: usize,
) -> Result<BatchRun, BenchError> {
    let function = DigestFunction::Blake3;
    let cas = link::cas_client(endpoint, &ClientAuth::default(), function, 1).await?;
    let exec_root = format!("/tmp/tessera/bench-batch-{:08x}", rand::random::<u32>());
    let (root_digest, files) = upload_input_root(&cas, root).await?;
    let action = upload_batch_action(&cas, &exec_root, root_digest).await?;
    let channel = link::connect(endpoint, &ClientAuth::default(), Traffic::Calls).await?;
    let mut client = ExecutionClient::new(channel);
    let mut timings = Vec::with_capacity(batches);
    let mut warmups = Vec::with_capacity(warmup);
    for n in 0..warmup + batches {
        let timing = execute_batch(&mut client, &cas, &action, function).await?;
        if n >= warmup {
            timings.push(timing);
        } else {
            warmups.push(timing);
        }
    }
    let bare_command_ms = tokio::task::spawn_blocking(bare_command_ms).await??;
    Ok(BatchRun {
        files,
        timings,
        warmups,
        bare_command_ms,
    })
}

/// Median wall time of the batch's command run directly in a scratch directory, ms.
fn bare_command_ms() -> Result<f64, BenchError> {
    let io = |what| move |source| BenchError::Io { what, source };
    let dir = tempfile::tempdir().map_err(io("create a scratch directory"))?;
    std::fs::write(dir.path().join(SUITE), suite_repo::suite_script(1))
        .map_err(io("write the suite"))?;
    let (group, name) = suite_repo::test_id(0);
    let id = format!("{group}::{name}");
    let mut samples = Vec::with_capacity(BARE_SPAWNS);
    for _ in 0..BARE_SPAWNS {
        let started = Instant::now();
        let status = std::process::Command::new("sh")
            .args([SUITE, "run", "--junit", "junit.xml", &id])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .status()
            .map_err(io("run sh"))?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
        if !status.success() {
            return Err(BenchError::Tool(format!(
                "sh {SUITE} run exited with {status}"
            )));
        }
    }
    Ok(report::percentile(&samples, 0.5))
}

/// Uploads `root`; returns its digest and how many files it holds.
async fn upload_input_root(
    cas: &CasClient,
    root: &InputRoot,
) -> Result<(Digest, usize), BenchError> {
    let function = cas.function();
    match root {
        InputRoot::Suite => {
            let script = suite_repo::suite_script(1);
            let script_digest = function.digest_of(script.as_bytes());
            let directory = Directory {
                files: vec![FileNode {
                    name: SUITE.to_owned(),
                    digest: Some(script_digest.to_proto()),
                    is_executable: false,
                    ..Default::default()
                }],
                ..Default::default()
            };
            let (root_digest, root_bytes) = digest_message(function, &directory);
            let blobs = [
                (script_digest, Bytes::from(script)),
                (root_digest, root_bytes.into()),
            ];
            cas.upload(&blobs, false).await?;
            Ok((root_digest, 1))
        }
        InputRoot::Repository(repo) => {
            let repo = repo.clone();
            let (root_digest, files, blobs) =
                tokio::task::spawn_blocking(move || repository_blobs(&repo, function)).await??;
            cas.upload(&blobs, false).await?;
            Ok((root_digest, files))
        }
    }
}

/// An input root's digest, its file count, and every blob (directories and file contents).
type RootBlobs = (Digest, usize, Vec<(Digest, Bytes)>);

/// The working tree at `repo` as `tessera run` snapshots it.
fn repository_blobs(repo: &Path, function: DigestFunction) -> Result<RootBlobs, BenchError> {
    let tree_error = |e: tessera_cas::tree::TreeError| {
        BenchError::Unexpected(format!("cannot snapshot {}: {e}", repo.display()))
    };
    let files = snapshot::list_files(repo, &[], &[]).map_err(tree_error)?;
    let tree = snapshot::snapshot(repo, &files, function, &mut HashCache::default())
        .map_err(tree_error)?;
    let mut blobs = tree.directories.clone();
    for (digest, path) in &tree.files {
        let bytes = std::fs::read(path).map_err(|source| BenchError::Io {
            what: "read a fixture file",
            source,
        })?;
        blobs.push((*digest, Bytes::from(bytes)));
    }
    Ok((tree.root, files.len(), blobs))
}

/// Builds the batch action (one test) on `root_digest` as `Steps::run` in the job driver
/// does, and uploads its Command and Action.
async fn upload_batch_action(
    cas: &CasClient,
    exec_root: &str,
    root_digest: Digest,
) -> Result<Digest, BenchError> {
    let function = cas.function();

    let runner = CommandRunner::new(
        exec_root,
        vec!["sh".to_owned(), "-c".to_owned(), LIST_COMMAND.to_owned()],
        RUN_TEMPLATE.iter().map(|a| (*a).to_owned()).collect(),
    )
    .map_err(|e| BenchError::Unexpected(format!("the batch's run template is refused: {e}")))?;
    let (group, name) = suite_repo::test_id(0);
    let spec = StepSpec::Batch {
        runner: RunnerConfig::Command(runner),
        prepared: Prepared::default(),
        tests: vec![TestId::new(group, name)],
        test_timeout_ms: u64::try_from(TEST_TIMEOUT.as_millis()).unwrap_or(u64::MAX),
        worker: None,
    };
    let environment: Vec<EnvironmentVariable> = PASSED_ENV
        .iter()
        .filter_map(|name| {
            Some(EnvironmentVariable {
                name: (*name).to_owned(),
                value: std::env::var(name).ok()?,
            })
        })
        .collect();
    let platform = Platform {
        properties: vec![Property {
            name: EXEC_ROOT.to_owned(),
            value: exec_root.to_owned(),
        }],
    };
    #[expect(
        deprecated,
        reason = "the driver fills the pre-2.1 output fields, which agents read"
    )]
    let command = Command {
        arguments: spec.to_argv(),
        environment_variables: environment,
        output_files: vec![REPORT_PATH.to_owned()],
        platform: Some(platform.clone()),
        ..Default::default()
    };
    let (command_digest, command_bytes) = digest_message(function, &command);
    let timeout = TEST_TIMEOUT + BATCH_SLACK;
    let action = Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(root_digest.to_proto()),
        timeout: Some(prost_duration(timeout)),
        do_not_cache: true,
        platform: Some(platform),
        ..Default::default()
    };
    let (action_digest, action_bytes) = digest_message(function, &action);
    let blobs: Vec<(Digest, Bytes)> = vec![
        (command_digest, command_bytes.into()),
        (action_digest, action_bytes.into()),
    ];
    cas.upload(&blobs, false).await?;
    Ok(action_digest)
}

fn prost_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// One Execute of `action`, timed to its final operation; its step report must say the test
/// passed.
async fn execute_batch(
    client: &mut ExecutionClient<Link>,
    cas: &CasClient,
    action: &Digest,
    function: DigestFunction,
) -> Result<BatchTiming, BenchError> {
    let rpc = |status| BenchError::Rpc {
        call: "Execute",
        status,
    };
    let request = ExecuteRequest {
        action_digest: Some(action.to_proto()),
        skip_cache_lookup: true,
        execution_policy: Some(ExecutionPolicy { priority: 0 }),
        digest_function: function.to_proto(),
        ..Default::default()
    };
    let sent_at = SystemTime::now();
    let sent = Instant::now();
    let mut stream = client.execute(request).await.map_err(rpc)?.into_inner();
    let mut response = None;
    while let Some(op) = stream.next().await {
        let op = op.map_err(rpc)?;
        if !op.done {
            continue;
        }
        response = Some(match op.result {
            Some(operation::Result::Response(any)) => ExecuteResponse::decode(any.value.as_slice())
                .map_err(|e| BenchError::Unexpected(format!("undecodable ExecuteResponse: {e}")))?,
            other => {
                return Err(BenchError::Unexpected(format!(
                    "operation {} done without a response: {other:?}",
                    op.name
                )));
            }
        });
        break;
    }
    let wall_ms = sent.elapsed().as_secs_f64() * 1e3;
    let response = response.ok_or_else(|| {
        BenchError::Unexpected("the Execute stream ended before the operation was done".to_owned())
    })?;
    let status = response.status.unwrap_or_default();
    if status.code != 0 {
        return Err(BenchError::Unexpected(format!(
            "the batch action failed: status {} \"{}\"",
            status.code, status.message
        )));
    }
    if response.cached_result {
        return Err(BenchError::Unexpected(
            "a batch action was answered from the action cache".to_owned(),
        ));
    }
    let result = response.result.unwrap_or_default();
    let test_ms = test_duration_ms(cas, function, &result).await?;
    let metadata = result.execution_metadata.unwrap_or_default();
    Ok(BatchTiming {
        wall_ms,
        test_ms,
        marks_ms: marks(&metadata, sent_at)?,
    })
}

/// The test's own duration from the batch's step report (its output file, read from the CAS).
async fn test_duration_ms(
    cas: &CasClient,
    function: DigestFunction,
    result: &ActionResult,
) -> Result<f64, BenchError> {
    let file = result
        .output_files
        .iter()
        .find(|f| f.path == REPORT_PATH)
        .ok_or_else(|| {
            BenchError::Unexpected(format!(
                "the batch returned no {REPORT_PATH} (exit code {})",
                result.exit_code
            ))
        })?;
    let digest = Digest::from_proto_opt(function, file.digest.as_ref())
        .map_err(|e| BenchError::Unexpected(format!("bad digest of the step report: {e}")))?;
    let bytes = cas.read(&digest, false).await?;
    let report: StepReport = serde_json::from_slice(&bytes)
        .map_err(|e| BenchError::Unexpected(format!("the step report does not parse: {e}")))?;
    match report {
        StepReport::Ran { results, .. } => match results.as_slice() {
            [result] if result.outcome == Outcome::Passed => {
                Ok(result.duration.map_or(0.0, |d| d.as_secs_f64() * 1e3))
            }
            other => Err(BenchError::Unexpected(format!(
                "the batch's test did not pass: {other:?}"
            ))),
        },
        other => Err(BenchError::Unexpected(format!(
            "the batch reported {other:?}"
        ))),
    }
}

/// The execution metadata's instants as ms after `sent_at`.
fn marks(metadata: &ExecutedActionMetadata, sent_at: SystemTime) -> Result<[f64; 5], BenchError> {
    let origin = sent_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let at = |ts: Option<&prost_types::Timestamp>, what: &str| {
        let ts = ts.ok_or_else(|| {
            BenchError::Unexpected(format!("the result's execution metadata has no {what}"))
        })?;
        Ok::<f64, BenchError>((ts.seconds as f64 + f64::from(ts.nanos) / 1e9 - origin) * 1e3)
    };
    Ok([
        at(metadata.worker_start_timestamp.as_ref(), "worker start")?,
        at(
            metadata.input_fetch_completed_timestamp.as_ref(),
            "input fetch completed",
        )?,
        at(
            metadata.execution_start_timestamp.as_ref(),
            "execution start",
        )?,
        at(
            metadata.execution_completed_timestamp.as_ref(),
            "execution completed",
        )?,
        at(
            metadata.worker_completed_timestamp.as_ref(),
            "worker completed",
        )?,
    ])
}

/// The overhead row and its breakdown for `run`; held to the planner's assumption if `target`.
pub(crate) fn rows(run: &BatchRun, target: bool) -> Vec<Row> {
    let overheads: Vec<f64> = run.timings.iter().map(BatchTiming::overhead_ms).collect();
    let walls: Vec<f64> = run.timings.iter().map(|t| t.wall_ms).collect();
    let assumed = PlannerConfig::default().batch_overhead.as_secs_f64() * 1e3;
    let median = |values: Vec<f64>| report::percentile(&values, 0.5);
    // Stage k runs from mark k-1 (the send at 0 for k = 0) to mark k; the last, from the
    // worker's end to the client seeing the operation done.
    let stage = |k: usize| {
        median(
            run.timings
                .iter()
                .map(|t| {
                    let end = if k < 5 { t.marks_ms[k] } else { t.wall_ms };
                    let start = if k == 0 { 0.0 } else { t.marks_ms[k - 1] };
                    end - start
                })
                .collect(),
        )
    };
    let names = [
        "dispatch",
        "fetch",
        "exec root",
        "run step",
        "upload",
        "report back",
    ];
    let (measurement, root) = if target {
        (
            "fixed overhead per batch",
            "input root: suite.sh alone".to_owned(),
        )
    } else {
        (
            "fixed overhead per batch, repository input root",
            format!(
                "input root: the fixture repository ({} files)",
                report::thousands(run.files)
            ),
        )
    };
    let workload = format!(
        "1 test per batch (does nothing), 1 agent × 1 slot, {} batches in a row; {root}",
        run.timings.len()
    );
    let mut context = format!(
        "Execute → done p50 {:.1} ms; test's own p50 {:.1} ms",
        median(walls),
        median(run.timings.iter().map(|t| t.test_ms).collect())
    );
    if !target {
        context.push_str(&format!("; the planner assumes {assumed:.0} ms"));
    }
    vec![
        Row {
            measurement: measurement.to_owned(),
            digest: String::new(),
            workload,
            check: Check::Time {
                samples: overheads.len(),
                p50_ms: median(overheads.clone()),
                tail_ms: report::percentile(&overheads, 0.95),
                tail: Tail::P95,
                max_p50_ms: target.then_some(assumed),
                context,
            },
        },
        Row {
            measurement: "  where it goes".to_owned(),
            digest: String::new(),
            workload: "the batches above".to_owned(),
            check: Check::Breakdown {
                samples: run.timings.len(),
                parts: names
                    .iter()
                    .enumerate()
                    .map(|(k, name)| Part {
                        name: (*name).to_owned(),
                        ms: stage(k),
                    })
                    .collect(),
                context: format!(
                    "the command alone, spawned here: {:.1} ms",
                    run.bare_command_ms
                ),
            },
        },
    ]
}
