//! The work the execution benchmarks submit: distinct trivial actions (a program plus a marker
//! argument naming the action, an empty input root), uploaded before anything is timed, and
//! the clients that Execute them through real gRPC, many in flight over several connections,
//! each call a fresh action with `skip_cache_lookup` so nothing is answered from the cache or
//! merged with another execution.
//!
//! The marker lets whoever receives the action (a simulated agent) say which one it is, so
//! [`Timeline`] can pair the moment it was submitted with the moment it was leased.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tessera_cas::client::CasClient;
use tessera_cas::digest::{Digest, digest_message};
use tessera_net::client::{ClientAuth, Link};
use tessera_proto::longrunning::operation;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_proto::reapi::{Action, Command, Directory, ExecuteRequest, ExecuteResponse, command};
use tokio::task::JoinSet;

use crate::error::BenchError;
use crate::link::{self, Traffic};

/// Blobs per BatchUpdateBlobs call when uploading actions.
const UPLOAD_BATCH: usize = 2_000;
/// Prefix of the marker argument: `tessera-bench:RUN:INDEX`.
const MARKER: &str = "tessera-bench:";

/// Distinct actions running `program` with an empty input root, uploaded to the CAS.
#[derive(Debug, Clone)]
pub(crate) struct ActionSet {
    digests: Arc<Vec<Digest>>,
}

impl ActionSet {
    /// Builds `count` actions `program... tessera-bench:RUN:i` (RUN random, so a reused
    /// store holds none of them) and uploads each Command and Action and the empty root
    /// directory through `client`.
    pub(crate) async fn upload(
        client: &CasClient,
        program: &[&str],
        count: usize,
    ) -> Result<Self, BenchError> {
        let function = client.function();
        let run: u64 = rand::random();
        let (root_digest, root_bytes) = digest_message(function, &Directory::default());
        let mut blobs: Vec<(Digest, Bytes)> = vec![(root_digest, root_bytes.into())];
        let mut digests = Vec::with_capacity(count);
        for index in 0..count {
            let command = Command {
                arguments: program
                    .iter()
                    .map(|a| (*a).to_owned())
                    .chain([format!("{MARKER}{run:016x}:{index}")])
                    .collect(),
                environment_variables: vec![command::EnvironmentVariable {
                    name: "PATH".to_owned(),
                    value: "/usr/bin:/bin".to_owned(),
                }],
                ..Default::default()
            };
            let (command_digest, command_bytes) = digest_message(function, &command);
            let action = Action {
                command_digest: Some(command_digest.to_proto()),
                input_root_digest: Some(root_digest.to_proto()),
                ..Default::default()
            };
            let (action_digest, action_bytes) = digest_message(function, &action);
            blobs.push((command_digest, command_bytes.into()));
            blobs.push((action_digest, action_bytes.into()));
            digests.push(action_digest);
        }
        for batch in blobs.chunks(UPLOAD_BATCH) {
            client.batch_update(batch.to_vec(), false).await?;
        }
        Ok(ActionSet {
            digests: Arc::new(digests),
        })
    }

    /// How many actions there are.
    pub(crate) fn len(&self) -> usize {
        self.digests.len()
    }
}

/// Which action of an [`ActionSet`] a command is, from its marker argument.
pub(crate) fn index_of(command: Option<&Command>) -> Option<usize> {
    let marker = command?.arguments.last()?.strip_prefix(MARKER)?;
    marker.rsplit(':').next()?.parse().ok()
}

/// When each action was submitted and when it was leased, as nanoseconds since a common
/// start (0: not yet). Written by clients and agents from any thread.
#[derive(Debug)]
pub(crate) struct Timeline {
    start: Instant,
    submitted: Vec<AtomicU64>,
    leased: Vec<AtomicU64>,
}

impl Timeline {
    /// A timeline for `count` actions.
    pub(crate) fn new(count: usize) -> Self {
        Timeline {
            start: Instant::now(),
            submitted: (0..count).map(|_| AtomicU64::new(0)).collect(),
            leased: (0..count).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn submitted(&self, index: usize) {
        if let Some(slot) = self.submitted.get(index) {
            slot.store(self.now(), Ordering::Relaxed);
        }
    }

    /// Action `index` reached an agent (the first lease counts).
    pub(crate) fn leased(&self, index: usize) {
        if let Some(slot) = self.leased.get(index) {
            let _ = slot.compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Submit-to-lease times of the actions in `range`, milliseconds; an error if one was
    /// never leased.
    pub(crate) fn submit_to_lease_ms(&self, range: Range<usize>) -> Result<Vec<f64>, BenchError> {
        range
            .map(|index| {
                let submitted = self.submitted[index].load(Ordering::Relaxed);
                let leased = self.leased[index].load(Ordering::Relaxed);
                if submitted == 0 || leased == 0 {
                    return Err(BenchError::Unexpected(format!(
                        "action {index} was never leased to a simulated agent"
                    )));
                }
                Ok(leased.saturating_sub(submitted) as f64 / 1e6)
            })
            .collect()
    }
}

/// `count` HTTP/2 connections to `endpoint`, as separate clients would have, each connected
/// now so that no timed call pays for it, each presenting `auth`.
pub(crate) async fn connect(
    endpoint: &str,
    auth: &ClientAuth,
    count: usize,
) -> Result<Vec<Link>, BenchError> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(link::connect(endpoint, auth, Traffic::Calls).await?);
    }
    Ok(channels)
}

/// What executing a range of actions took.
#[derive(Debug, Clone)]
pub(crate) struct Executed {
    /// From the first Execute sent to the last operation done.
    pub elapsed: Duration,
    /// Per action, from Execute sent to its operation done, milliseconds.
    pub latencies_ms: Vec<f64>,
}

impl Executed {
    /// Actions completed per second.
    pub(crate) fn per_s(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Executes actions `range` of `actions`, `in_flight` at a time spread over `channels`, each
/// to the end of its operation stream; every one must pass (exit code 0). Marks submit times
/// on `timeline` if given.
pub(crate) async fn execute(
    channels: &[Link],
    actions: &ActionSet,
    range: Range<usize>,
    in_flight: usize,
    timeline: Option<Arc<Timeline>>,
) -> Result<Executed, BenchError> {
    let next = Arc::new(AtomicUsize::new(range.start));
    let start = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..in_flight.max(1) {
        let mut client = ExecutionClient::new(channels[worker % channels.len()].clone());
        let digests = Arc::clone(&actions.digests);
        let next = Arc::clone(&next);
        let timeline = timeline.clone();
        let end = range.end;
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= end {
                    return Ok::<_, BenchError>(latencies);
                }
                let request = ExecuteRequest {
                    action_digest: Some(digests[index].to_proto()),
                    skip_cache_lookup: true,
                    ..Default::default()
                };
                let sent = Instant::now();
                if let Some(timeline) = &timeline {
                    timeline.submitted(index);
                }
                execute_one(&mut client, request).await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1e3);
            }
        });
    }
    let mut latencies_ms = Vec::with_capacity(range.len());
    while let Some(joined) = workers.join_next().await {
        latencies_ms.extend(joined??);
    }
    Ok(Executed {
        elapsed: start.elapsed(),
        latencies_ms,
    })
}

/// One Execute, read to its final operation, which must report a command that exited 0.
async fn execute_one(
    client: &mut ExecutionClient<Link>,
    request: ExecuteRequest,
) -> Result<(), BenchError> {
    let rpc = |status| BenchError::Rpc {
        call: "Execute",
        status,
    };
    let mut stream = client.execute(request).await.map_err(rpc)?.into_inner();
    while let Some(operation) = stream.next().await {
        let operation = operation.map_err(rpc)?;
        if !operation.done {
            continue;
        }
        let response = match operation.result {
            Some(operation::Result::Response(any)) => ExecuteResponse::decode(any.value.as_slice())
                .map_err(|e| BenchError::Unexpected(format!("undecodable ExecuteResponse: {e}")))?,
            other => {
                return Err(BenchError::Unexpected(format!(
                    "operation {} done without a response: {other:?}",
                    operation.name
                )));
            }
        };
        let status = response.status.unwrap_or_default();
        let exit_code = response.result.map(|r| r.exit_code);
        if status.code != 0 || exit_code != Some(0) {
            return Err(BenchError::Unexpected(format!(
                "operation {} ended with status {} \"{}\" and exit code {exit_code:?}",
                operation.name, status.code, status.message
            )));
        }
        return Ok(());
    }
    Err(BenchError::Unexpected(
        "the Execute stream ended before the operation was done".to_owned(),
    ))
}
