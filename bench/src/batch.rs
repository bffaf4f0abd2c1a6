//! The fixed overhead of one batch: a job's batch step action (`tessera_runners::step`), built
//! exactly as the job driver (`tessera_coordinator::jobs::driver`) builds it, executed again
//! and again through REAPI Execute on a real agent, with a test that does nothing. Whatever
//! each run takes beyond the test's own duration (from the step report) is what every batch
//! costs the shard planner, which assumes 50 ms (`PlannerConfig::default().batch_overhead`).
//!
//! Owns the action, the Execute loop and the rows it yields; the coordinator and agent are
//! started by [`crate::job`].

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, DigestFunction, digest_message};
use tessera_coordinator::jobs::planner::PlannerConfig;
use tessera_proto::longrunning::operation;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_proto::reapi::{
    Action, ActionResult, Command, Directory, ExecuteRequest, ExecuteResponse,
    ExecutedActionMetadata, ExecutionPolicy, FileNode, Platform, command::EnvironmentVariable,
    platform::Property,
};
use tessera_runners::step::{REPORT_PATH, StepReport, StepSpec};
use tessera_runners::{CommandRunner, Outcome, Prepared, RunnerConfig, TestId};
use tonic::transport::{Channel, Endpoint};

use crate::error::BenchError;
use crate::job::JobPlan;
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
pub struct BatchPlan {
    /// Batches timed, one after another.
    pub batches: usize,
    /// Batches run first and not timed (the agent's first fetch of the inputs, connections).
    pub warmup: usize,
}

/// One timed batch: wall time and the instants of its execution metadata, ms after the
/// Execute call was sent.
#[derive(Debug, Clone, Copy)]
pub struct BatchTiming {
    /// Execute sent → operation done.
    pub wall_ms: f64,
    /// The test's own duration from the step report.
    pub test_ms: f64,
    /// Worker start, inputs laid out, execution start, execution done, worker done.
    pub marks_ms: [f64; 5],
}

impl BatchTiming {
    /// The batch's cost beyond its test.
    pub fn overhead_ms(&self) -> f64 {
        self.wall_ms - self.test_ms
    }
}

/// Every timed batch.
#[derive(Debug, Clone)]
pub struct BatchRun {
    /// In the order they ran.
    pub timings: Vec<BatchTiming>,
}

/// Runs `plan` against the coordinator at `endpoint` (one agent with one slot).
pub async fn run(plan: &BatchPlan, endpoint: &str) -> Result<BatchRun, BenchError> {
    let function = DigestFunction::Blake3;
    let cas = CasClient::connect(endpoint, "", function).await?;
    let exec_root = format!("/tmp/tessera/bench-batch-{:08x}", rand::random::<u32>());
    let action = upload_batch_action(&cas, &exec_root).await?;
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|source| BenchError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| BenchError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let mut client = ExecutionClient::new(channel);
    let mut timings = Vec::with_capacity(plan.batches);
    for n in 0..plan.warmup + plan.batches {
        let timing = execute_batch(&mut client, &cas, &action, function).await?;
        if n >= plan.warmup {
            timings.push(timing);
        }
    }
    Ok(BatchRun { timings })
}

/// Builds the batch action (one test) as `Steps::run` in the job driver does, and uploads the
/// input root, Command and Action.
async fn upload_batch_action(cas: &CasClient, exec_root: &str) -> Result<Digest, BenchError> {
    let function = cas.function();
    let script = suite_repo::suite_script(1);
    let script_digest = function.digest_of(script.as_bytes());
    let root = Directory {
        files: vec![FileNode {
            name: SUITE.to_owned(),
            digest: Some(script_digest.to_proto()),
            is_executable: false,
            ..Default::default()
        }],
        ..Default::default()
    };
    let (root_digest, root_bytes) = digest_message(function, &root);

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
        (script_digest, Bytes::from(script)),
        (root_digest, root_bytes.into()),
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
    client: &mut ExecutionClient<Channel>,
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
        StepReport::Ran { results } => match results.as_slice() {
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

/// The overhead row and its breakdown.
pub fn rows(plan: &JobPlan, run: &BatchRun) -> Vec<Row> {
    let overheads: Vec<f64> = run.timings.iter().map(BatchTiming::overhead_ms).collect();
    let walls: Vec<f64> = run.timings.iter().map(|t| t.wall_ms).collect();
    let target = PlannerConfig::default().batch_overhead.as_secs_f64() * 1e3;
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
    let workload = format!(
        "1 test per batch (does nothing), 1 agent × 1 slot, {} batches in a row",
        plan.batch.batches
    );
    vec![
        Row {
            measurement: "fixed overhead per batch".to_owned(),
            digest: String::new(),
            workload: workload.clone(),
            check: Check::Time {
                samples: overheads.len(),
                p50_ms: median(overheads.clone()),
                tail_ms: report::percentile(&overheads, 0.95),
                tail: Tail::P95,
                max_p50_ms: Some(target),
                context: format!(
                    "Execute → done p50 {:.1} ms; test's own p50 {:.1} ms",
                    median(walls),
                    median(run.timings.iter().map(|t| t.test_ms).collect())
                ),
            },
        },
        Row {
            measurement: "  where it goes".to_owned(),
            digest: String::new(),
            workload,
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
                context: String::new(),
            },
        },
    ]
}
