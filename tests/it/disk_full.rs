//! A full disk loses nothing acknowledged (issue 9): a real `tessera coordinator` whose data
//! directory (or only its metadata store) is a small tmpfs, filled until writes are refused.
//!
//! | case | what fills the file system | the client sees |
//! | --- | --- | --- |
//! | blob uploads (BatchUpdateBlobs, ByteStream) | the uploads themselves | `RESOURCE_EXHAUSTED`, "blob store" |
//! | action-cache writes, job submissions | a filler file, then the writes | `RESOURCE_EXHAUSTED`, "metadata store" |
//! | the test results a finished batch records | a filler file, while the job runs | its results, as if nothing happened |
//! | blob uploads while only the metadata store is full | a filler file | accepted (the index record waits) |
//!
//! In every case: never `INTERNAL` and never a panic; one warning per episode however many
//! requests are refused, then an info line with the refusal count once space returns; writes
//! accepted again without a restart; no temporary file left behind; and after a clean shutdown
//! on the full disk and a restart, every acknowledged blob (read back, digest verified),
//! action-cache entry and job is still served.
//!
//! The tests mount their tmpfs themselves (root); outside CI a refused mount skips them.
//! `DISK_FULL_ROUNDS` (default 1) repeats the blob and metadata episodes before the shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use serde_json::Value;
use tessera_cas::client::{CasClient, ClientError};
use tessera_cas::digest::{Digest, DigestFunction};
use tessera_proto::reapi::action_cache_client::ActionCacheClient;
use tessera_proto::reapi::command::EnvironmentVariable;
use tessera_proto::reapi::{
    ActionResult, GetActionResultRequest, OutputFile, UpdateActionResultRequest,
};
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{
    JobEvent, JobResult, JobSpec, StatusRequest, StoreSummary, SubmitJobRequest, TestOutcome,
    job_event::Kind,
};
use tessera_runners::{CommandRunner, RunnerConfig};
use tessera_tests::{
    AgentProcess, ChildLog, Filler, ServerProcess, Tmpfs, blob_file, blocking_poll_until,
    free_port, lines, noise, poll_until, visible_tempdir, wait_exit, wait_job_event,
    watch_job_to_end,
};
use tonic::Code;
use tonic::transport::Channel;

/// Size of every blob the blob episode uploads (a whole number of pages).
const BLOB: usize = 1024 * 1024;
/// Room the blob episode leaves: three blobs fit, the fourth does not.
const BLOB_ROOM: u64 = 3 * BLOB as u64 + BLOB as u64 / 2;
/// Most writes tried before a metadata store on a full file system must have refused one.
const MAX_WRITES_TO_FILL: u64 = 5000;
/// How long a wait for a log line or an exit may take.
const LIMIT: Duration = Duration::from_secs(30);
/// Rounds of the blob and metadata episodes. Not a `TESSERA_*` name: the coordinator inherits
/// the test's environment and refuses unknown `TESSERA_*` variables.
const ROUNDS_VAR: &str = "DISK_FULL_ROUNDS";

// ---------------------------------------------------------------------------------------------
// The coordinator and its log.

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Starts `tessera coordinator` on `addr` with `data`, logging JSON lines (so fields are read
/// by name). Returns it once it listens, or its exit status and log if it exits first.
fn start_coordinator(
    addr: SocketAddr,
    data: &Path,
) -> Result<ServerProcess, (ExitStatus, ChildLog)> {
    let mut server =
        ServerProcess::spawn(addr, data, &["--log-format", "json"], &[], "coordinator");
    // Two events, either may come first (the listening line, the exit): polled for both.
    let exited = blocking_poll_until("the coordinator listening or exited", LIMIT, || {
        if server.log.count(lines::COORDINATOR_LISTENING) > 0 {
            return Some(None);
        }
        server.child.try_wait().expect("poll the child").map(Some)
    });
    match exited {
        None => Ok(server),
        Some(status) => {
            let _ = wait_exit(&mut server.child, LIMIT);
            Err((status, server.log.clone()))
        }
    }
}

/// [`start_coordinator`] for a start that must succeed.
fn coordinator(addr: SocketAddr, data: &Path) -> ServerProcess {
    start_coordinator(addr, data)
        .unwrap_or_else(|(status, _)| panic!("the coordinator did not start: {status}"))
}

/// Stops `server` with SIGTERM (after checking that nothing in it panicked); how it exited.
fn terminate(server: &mut ServerProcess) -> ExitStatus {
    assert_no_panic(&server.log);
    server
        .signal_and_wait(Signal::SIGTERM, LIMIT)
        .expect("the coordinator exits after SIGTERM")
}

/// A clean shutdown ends in an exit code: not a panic (101), not a signal.
#[track_caller]
fn assert_clean_exit(status: ExitStatus, when: &str) {
    assert!(
        status.code().is_some_and(|code| code != 101),
        "{when}: the coordinator ended with {status}"
    );
}

/// Nothing in the process panicked (a panicking task prints "panicked at" and may live on).
#[track_caller]
fn assert_no_panic(log: &ChildLog) {
    assert_eq!(log.count("panicked"), 0, "a panic in the coordinator");
}

/// The JSON log events whose message is `message` for `store` (`blobs` or `metadata`).
async fn store_events(log: &ChildLog, message: &str, store: &str) -> Vec<Value> {
    let mut found = Vec::new();
    for nth in 1..=log.count(message) {
        // Printed already: no wait.
        let line = log.wait_for_nth(message, nth, Duration::ZERO).await;
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if event["fields"]["message"] == message && event["fields"]["store"] == store {
            found.push(event);
        }
    }
    found
}

/// Waits for the `nth` event of `message` for `store` and returns it.
async fn wait_store_event(log: &ChildLog, message: &str, store: &str, nth: usize) -> Value {
    let mut seen = 0;
    let mut line_no = 0;
    loop {
        line_no += 1;
        let line = log.wait_for_nth(message, line_no, LIMIT).await;
        let event: Value = serde_json::from_str(&line).expect("a JSON log line");
        if event["fields"]["message"] == message && event["fields"]["store"] == store {
            seen += 1;
            if seen == nth {
                return event;
            }
        }
    }
}

/// The `refused` count of a "space returned" event.
fn refused(event: &Value) -> u64 {
    event["fields"]["refused"]
        .as_u64()
        .unwrap_or_else(|| panic!("no refused=<count> in {event}"))
}

/// One refusal as the issue asks: `RESOURCE_EXHAUSTED`, "out of space", and the store named
/// (`what`: "blob store" or "metadata store").
#[track_caller]
fn assert_out_of_space(call: &str, (code, message): &(Code, String), what: &str) {
    assert_eq!(
        *code,
        Code::ResourceExhausted,
        "{call} on a full disk: {code:?} {message}"
    );
    assert!(
        message.contains("out of space") && message.contains(what),
        "{call}: the message must say \"out of space\" and name the {what}: {message}"
    );
}

// ---------------------------------------------------------------------------------------------
// Client calls; a refusal is its code and message.

type Refusal = (Code, String);

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_owned())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// The clients of one coordinator.
struct Clients {
    cas: CasClient,
    ac: ActionCacheClient<Channel>,
    jobs: JobsClient<Channel>,
}

impl Clients {
    async fn connect(endpoint: &str) -> Self {
        Clients {
            cas: CasClient::connect(endpoint, "", DigestFunction::Sha256)
                .await
                .expect("cas client"),
            ac: ActionCacheClient::new(channel(endpoint).await),
            jobs: JobsClient::new(channel(endpoint).await),
        }
    }
}

/// The two ways a client uploads a blob.
#[derive(Debug, Clone, Copy)]
enum Via {
    Batch,
    ByteStream,
}

impl Via {
    /// Alternately one and the other.
    fn nth(n: u64) -> Self {
        if n.is_multiple_of(2) {
            Via::Batch
        } else {
            Via::ByteStream
        }
    }
}

async fn upload(cas: &CasClient, via: Via, blob: &(Digest, Bytes)) -> Result<(), Refusal> {
    let (digest, data) = blob;
    let result = match via {
        Via::Batch => cas.batch_update(vec![(*digest, data.clone())], false).await,
        Via::ByteStream => cas.write(digest, data.clone(), false).await.map(|_| ()),
    };
    result.map_err(|error| match error {
        ClientError::Rpc { status, .. } => (status.code(), status.message().to_owned()),
        ClientError::Blob { code, message, .. } => (code, message),
        other => panic!("{via:?} upload failed without a status: {other}"),
    })
}

/// A blob of `len` bytes that zstd cannot shrink, different for each `seed`.
fn blob(seed: u64, len: usize) -> (Digest, Bytes) {
    let data = noise(len, seed);
    (DigestFunction::Sha256.digest_of(&data), data)
}

/// The action-cache entry for made-up action `n`, with `output` as its one output file.
fn ac_entry(n: u64, output: &Digest) -> (Digest, ActionResult) {
    let action = DigestFunction::Sha256.digest_of(format!("disk-full action {n}").as_bytes());
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: format!("out/{n}.bin"),
            digest: Some(output.to_proto()),
            ..Default::default()
        }],
        exit_code: 0,
        ..Default::default()
    };
    (action, result)
}

async fn update_ac(
    ac: &mut ActionCacheClient<Channel>,
    (action, result): &(Digest, ActionResult),
) -> Result<(), Refusal> {
    ac.update_action_result(UpdateActionResultRequest {
        action_digest: Some(action.to_proto()),
        action_result: Some(result.clone()),
        digest_function: DigestFunction::Sha256.to_proto(),
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|s| (s.code(), s.message().to_owned()))
}

/// Writes action-cache entries `*next`, `*next + 1`, ... until one is refused, and returns
/// the refusal; the acknowledged ones go to `acked`. On a full file system the database may
/// still have room inside its file, so a few writes can succeed first.
async fn ac_writes_until_refused(
    ac: &mut ActionCacheClient<Channel>,
    next: &mut u64,
    output: &Digest,
    acked: &mut Vec<(Digest, ActionResult)>,
) -> Refusal {
    for _ in 0..MAX_WRITES_TO_FILL {
        let entry = ac_entry(*next, output);
        *next += 1;
        match update_ac(ac, &entry).await {
            Ok(()) => acked.push(entry),
            Err(refusal) => return refusal,
        }
    }
    panic!("{MAX_WRITES_TO_FILL} action-cache writes accepted on a full file system");
}

/// Calls `write` until it is accepted, as a client would, and returns its answer. Right after
/// space returns the metadata store may refuse a little longer: while its file system was full
/// it tries a write at most every 250 ms and reopens its database at most every 500 ms, so
/// only a write can tell that it is back. Every refusal meanwhile must still be out of space.
async fn until_accepted<T>(what: &str, mut write: impl AsyncFnMut() -> Result<T, Refusal>) -> T {
    poll_until(what, LIMIT, async || match write().await {
        Ok(value) => Some(value),
        Err(refusal) => {
            assert_out_of_space(what, &refusal, "metadata store");
            None
        }
    })
    .await
}

async fn submit(jobs: &mut JobsClient<Channel>, spec: &JobSpec) -> Result<String, Refusal> {
    jobs.submit(SubmitJobRequest {
        spec: Some(spec.clone()),
    })
    .await
    .map(|r| r.into_inner().job_id)
    .map_err(|s| (s.code(), s.message().to_owned()))
}

/// A job running `sh NAME.sh list` and `sh NAME.sh run <test>` from `script`, uploaded
/// through `cas`. Without a JUnit report the command runner runs one test per batch.
async fn script_job(cas: &CasClient, name: &str, script: &str) -> JobSpec {
    let dir = tempfile::tempdir().expect("suite dir");
    let file = format!("{name}.sh");
    std::fs::write(dir.path().join(&file), script).expect("write the suite");
    let root = tessera_tests::upload_dir(cas, dir.path()).await;
    let exec_root = format!("/tmp/tessera-it/{name}");
    let runner = CommandRunner::new(
        &exec_root,
        vec!["sh".into(), file.clone(), "list".into()],
        vec!["sh".into(), file, "run".into(), "{tests}".into()],
    )
    .expect("runner");
    JobSpec {
        digest_function: DigestFunction::Sha256.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Command(runner)).expect("json"),
        exec_root,
        environment: vec![EnvironmentVariable {
            name: "PATH".into(),
            value: "/usr/bin:/bin".into(),
        }],
        submitter: "disk-full".into(),
        ..Default::default()
    }
}

/// The store figures of `Jobs.Status`.
async fn store_summary(jobs: &mut JobsClient<Channel>) -> StoreSummary {
    jobs.status(StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .store
        .expect("Status reports the store")
}

/// Files left in the blob store's temporary directory.
fn temp_files(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("cas/tmp"))
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// What the coordinator acknowledged.

#[derive(Default)]
struct Acknowledged {
    blobs: Vec<(Digest, Bytes)>,
    ac: Vec<(Digest, ActionResult)>,
    jobs: Vec<String>,
}

impl Acknowledged {
    /// After a restart: every acknowledged blob is found and read back (the client verifies
    /// its digest), every acknowledged action-cache entry is answered as written, and every
    /// acknowledged job is known again (no agent ever ran one, so each was resumed).
    async fn check(&self, endpoint: &str, when: &str) {
        let mut c = Clients::connect(endpoint).await;
        let digests: Vec<Digest> = self.blobs.iter().map(|(d, _)| *d).collect();
        let missing = c.cas.find_missing(&digests).await.expect("find missing");
        assert!(
            missing.is_empty(),
            "{when}: {} of {} acknowledged blobs missing: {missing:?}",
            missing.len(),
            digests.len()
        );
        for (digest, data) in &self.blobs {
            let read = c
                .cas
                .read(digest, false)
                .await
                .unwrap_or_else(|e| panic!("{when}: read acknowledged blob {digest}: {e}"));
            assert_eq!(&read, data, "{when}: blob {digest}");
        }
        for (action, result) in &self.ac {
            let answered =
                c.ac.get_action_result(GetActionResultRequest {
                    action_digest: Some(action.to_proto()),
                    digest_function: DigestFunction::Sha256.to_proto(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|s| panic!("{when}: acknowledged AC entry {action}: {s:?}"))
                .into_inner();
            assert_eq!(
                answered.output_files, result.output_files,
                "{when}: AC entry {action}"
            );
        }
        let status = c
            .jobs
            .status(StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let listed: Vec<&str> = status.jobs.iter().map(|j| j.job_id.as_str()).collect();
        let lost: Vec<&String> = self
            .jobs
            .iter()
            .filter(|id| !listed.contains(&id.as_str()))
            .collect();
        assert!(
            lost.is_empty(),
            "{when}: acknowledged jobs {lost:?} are gone (listed: {listed:?}); none of them \
             finished, so a restart must resume them"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Blobs, action cache and jobs on one small file system.

/// A coordinator on a tmpfs of its own, its clients, and what it acknowledged.
struct FullDisk {
    data: PathBuf,
    addr: SocketAddr,
    server: ServerProcess,
    c: Clients,
    acked: Acknowledged,
    /// A job no agent runs: it stays unfinished, so every restart must resume it.
    spec: JobSpec,
    /// The blob every action-cache entry points at.
    output: Digest,
    next_blob: u64,
    next_entry: u64,
    /// Refusals seen by the client: blob uploads, metadata writes.
    refused_uploads: u64,
    refused_metadata: u64,
    /// Last, so it is unmounted after the coordinator has gone.
    fs: Tmpfs,
}

impl FullDisk {
    /// A coordinator on a fresh tmpfs of `size`, with a job, a blob and an action-cache entry
    /// acknowledged; `None` if the test skips.
    async fn start(size: &str) -> Option<Self> {
        let fs = Tmpfs::mount(size)?;
        let data = fs.path().join("data");
        let addr = loopback();
        let server = coordinator(addr, &data);
        let mut c = Clients::connect(&server.endpoint()).await;
        let spec = script_job(
            &c.cas,
            "never-runs",
            "case \"$1\" in list) echo t;; *) exit 0;; esac\n",
        )
        .await;
        let mut acked = Acknowledged::default();
        acked
            .jobs
            .push(submit(&mut c.jobs, &spec).await.expect("submit"));
        let output = blob(0, 4096);
        upload(&c.cas, Via::Batch, &output).await.expect("upload");
        acked.blobs.push(output.clone());
        let entry = ac_entry(0, &output.0);
        update_ac(&mut c.ac, &entry).await.expect("AC write");
        acked.ac.push(entry);
        Some(FullDisk {
            data,
            addr,
            server,
            c,
            acked,
            spec,
            output: output.0,
            next_blob: 1,
            next_entry: 1,
            refused_uploads: 0,
            refused_metadata: 0,
            fs,
        })
    }

    fn fill(&self) -> Filler {
        Filler::fill(self.fs.path().join("filler"))
    }

    fn new_blob(&mut self) -> (Digest, Bytes) {
        self.next_blob += 1;
        blob(self.next_blob, BLOB)
    }

    /// Episode `round` of the blob store: uploads fill the disk until one is refused, more are
    /// refused, then space returns.
    async fn blob_store_fills(&mut self, round: usize) {
        let mut filler = self.fill();
        filler.leave_free(BLOB_ROOM);
        let mut fitted = 0;
        let first = loop {
            let via = Via::nth(self.next_blob);
            let b = self.new_blob();
            match upload(&self.c.cas, via, &b).await {
                Ok(()) => {
                    self.acked.blobs.push(b);
                    fitted += 1;
                }
                Err(refusal) => break (via, refusal),
            }
            assert!(fitted <= 3, "more blobs fitted than the room left");
        };
        assert_eq!(fitted, 3, "the blobs that fit in the room left");
        assert_out_of_space(&format!("{:?} upload", first.0), &first.1, "blob store");
        // Many refused requests, both ways, each leaving nothing behind: one episode.
        let mut refusals = 1;
        for _ in 0..4 {
            let via = Via::nth(self.next_blob);
            let b = self.new_blob();
            let refusal = upload(&self.c.cas, via, &b)
                .await
                .expect_err("refused while the disk is full");
            assert_out_of_space(&format!("{via:?} upload"), &refusal, "blob store");
            assert!(
                blob_file(&self.data, &b.0).is_none(),
                "a refused blob has a file"
            );
            refusals += 1;
        }
        self.refused_uploads += refusals;
        assert_eq!(temp_files(&self.data), Vec::<PathBuf>::new(), "temp files");
        let warning = wait_store_event(&self.server.log, lines::OUT_OF_SPACE, "blobs", round).await;
        assert_eq!(warning["level"], "WARN", "{warning}");
        let store = store_summary(&mut self.c.jobs).await;
        assert!(store.blobs_out_of_space, "Status while full: {store:?}");
        assert_eq!(store.blob_writes_refused, self.refused_uploads, "{store:?}");

        // Space returns: uploads are accepted again, without a restart.
        filler.remove();
        let b = self.new_blob();
        upload(&self.c.cas, Via::ByteStream, &b)
            .await
            .expect("an upload once space has returned");
        self.acked.blobs.push(b);
        let returned =
            wait_store_event(&self.server.log, lines::SPACE_RETURNED, "blobs", round).await;
        assert_eq!(refused(&returned), refusals, "{returned}");
        let store = store_summary(&mut self.c.jobs).await;
        assert!(
            !store.blobs_out_of_space,
            "Status once space returned: {store:?}"
        );
        let warnings = store_events(&self.server.log, lines::OUT_OF_SPACE, "blobs").await;
        assert_eq!(
            warnings.len(),
            round,
            "one warning per episode: {warnings:?}"
        );
    }

    /// Episode `nth` of the metadata store: the file system is full to the last page, then
    /// action-cache writes go on until one is refused.
    async fn metadata_store_fills(&mut self, nth: usize) -> Filler {
        let filler = self.fill();
        let refusal = ac_writes_until_refused(
            &mut self.c.ac,
            &mut self.next_entry,
            &self.output,
            &mut self.acked.ac,
        )
        .await;
        assert_out_of_space("UpdateActionResult", &refusal, "metadata store");
        self.refused_metadata += 1;
        let warning =
            wait_store_event(&self.server.log, lines::OUT_OF_SPACE, "metadata", nth).await;
        assert_eq!(warning["level"], "WARN", "{warning}");
        filler
    }

    /// Episode `round` of the metadata store: action-cache writes and job submissions are
    /// refused, then space returns.
    async fn metadata_writes_refused_then_accepted(&mut self, round: usize) {
        let filler = self.metadata_store_fills(round).await;
        let mut refusals = 1;
        for _ in 0..3 {
            let refusal = update_ac(&mut self.c.ac, &ac_entry(self.next_entry, &self.output))
                .await
                .expect_err("refused while the disk is full");
            self.next_entry += 1;
            assert_out_of_space("UpdateActionResult", &refusal, "metadata store");
            refusals += 1;
        }
        let refusal = submit(&mut self.c.jobs, &self.spec)
            .await
            .expect_err("a submission is refused while the disk is full");
        assert_out_of_space("Jobs.Submit", &refusal, "metadata store");
        refusals += 1;
        self.refused_metadata += refusals - 1;
        let store = store_summary(&mut self.c.jobs).await;
        assert!(store.metadata_out_of_space, "Status while full: {store:?}");
        assert!(
            store.metadata_writes_refused >= self.refused_metadata,
            "{} refused: {store:?}",
            self.refused_metadata
        );

        // Space returns: both are accepted again, without a restart.
        filler.remove();
        let entry = until_accepted("an AC write once space has returned", async || {
            let entry = ac_entry(self.next_entry, &self.output);
            self.next_entry += 1;
            update_ac(&mut self.c.ac, &entry).await.map(|()| entry)
        })
        .await;
        self.acked.ac.push(entry);
        let id = until_accepted("a submission once space has returned", async || {
            submit(&mut self.c.jobs, &self.spec).await
        })
        .await;
        self.acked.jobs.push(id);
        let returned =
            wait_store_event(&self.server.log, lines::SPACE_RETURNED, "metadata", round).await;
        // Background writes (access times) may have been refused as well.
        assert!(
            refused(&returned) >= refusals,
            "{refusals} refused: {returned}"
        );
        let store = store_summary(&mut self.c.jobs).await;
        assert!(
            !store.metadata_out_of_space,
            "Status once space returned: {store:?}"
        );
        let warnings = store_events(&self.server.log, lines::OUT_OF_SPACE, "metadata").await;
        assert_eq!(
            warnings.len(),
            round,
            "one warning per episode: {warnings:?}"
        );
    }

    /// Starts the coordinator again on the same data directory and port.
    async fn restart(&mut self) -> Result<(), (ExitStatus, ChildLog)> {
        self.server = start_coordinator(self.addr, &self.data)?;
        self.c = Clients::connect(&self.server.endpoint()).await;
        Ok(())
    }

    /// [`FullDisk::restart`] for a start that must succeed.
    async fn restart_or_panic(&mut self, when: &str) {
        if let Err((status, _)) = self.restart().await {
            panic!("the coordinator did not start {when}: {status}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_recovers_without_a_restart_and_keeps_what_it_acknowledged() {
    let rounds: usize = std::env::var(ROUNDS_VAR)
        .ok()
        .map_or(1, |v| v.parse().expect("DISK_FULL_ROUNDS is a number"));
    // Each round keeps about 5 MiB of blobs.
    let Some(mut disk) = FullDisk::start(&format!("{}m", 32 + 8 * rounds)).await else {
        return;
    };
    for round in 1..=rounds {
        disk.blob_store_fills(round).await;
        disk.metadata_writes_refused_then_accepted(round).await;
    }

    // A clean shutdown while the disk is full.
    let filler = disk.metadata_store_fills(rounds + 1).await;
    let figures = store_summary(&mut disk.c.jobs).await;
    let status = terminate(&mut disk.server);
    assert_clean_exit(status, "SIGTERM on a full disk");

    // A restart with the disk still full: if the coordinator starts, it serves everything
    // acknowledged; if it cannot, it says why.
    let on_full_disk = match disk.restart().await {
        Ok(()) => {
            disk.acked
                .check(&disk.server.endpoint(), "restarted on a full disk")
                .await;
            let status = terminate(&mut disk.server);
            assert_clean_exit(status, "SIGTERM after a restart on a full disk");
            format!("started and served everything, then exited with {status}")
        }
        Err((status, log)) => {
            assert!(
                log.count("out of space") > 0,
                "a coordinator that cannot start on a full disk must say the disk is full"
            );
            format!("refused to start ({status}), saying it is out of space")
        }
    };

    // Space returns: everything acknowledged is served and writes are accepted; then a plain
    // clean shutdown and restart, with space to spare, keeps it all too.
    filler.remove();
    disk.restart_or_panic("once space has returned").await;
    let endpoint = disk.server.endpoint();
    disk.acked
        .check(&endpoint, "restarted after space returned")
        .await;
    assert_eq!(temp_files(&disk.data), Vec::<PathBuf>::new(), "temp files");
    let b = disk.new_blob();
    upload(&disk.c.cas, Via::Batch, &b)
        .await
        .expect("an upload after the restart");
    disk.acked.blobs.push(b);
    let entry = ac_entry(disk.next_entry, &disk.output);
    update_ac(&mut disk.c.ac, &entry)
        .await
        .expect("an AC write after the restart");
    disk.acked.ac.push(entry);
    let status = terminate(&mut disk.server);
    assert_clean_exit(status, "SIGTERM with space to spare");
    disk.restart_or_panic("after a clean shutdown").await;
    disk.acked
        .check(&disk.server.endpoint(), "restarted once more")
        .await;
    assert_no_panic(&disk.server.log);
    eprintln!(
        "disk-full: {rounds} round(s); refused {} uploads and {} metadata writes seen by the \
         client ({} blob and {} metadata writes refused in all, says Status); after a SIGTERM on \
         the full disk and a restart, served all {} blobs, {} AC entries and {} jobs \
         acknowledged; on the still-full disk the coordinator {on_full_disk}",
        disk.refused_uploads,
        disk.refused_metadata,
        figures.blob_writes_refused,
        figures.metadata_writes_refused,
        disk.acked.blobs.len(),
        disk.acked.ac.len(),
        disk.acked.jobs.len(),
    );
}

// ---------------------------------------------------------------------------------------------
// Test results on a full metadata store.

/// Each test's final outcome and whether it came from the cache, by name.
fn finals(events: &[JobEvent]) -> Vec<(String, TestOutcome, bool)> {
    let mut out: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Test(t)) if t.r#final => Some((
                t.test.clone().unwrap_or_default().name,
                t.outcome(),
                t.cached,
            )),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_metadata_store_loses_no_test_result_the_client_sees_nor_a_blob_it_accepted() {
    // Only the metadata store is on the small file system, so what fills up is the database
    // the results are recorded in (the blob index is in it too; the blob files have room).
    let dir = tempfile::tempdir().expect("data dir");
    let data = dir.path().join("data");
    let meta = data.join("meta");
    std::fs::create_dir_all(&meta).expect("meta dir");
    let Some(fs) = Tmpfs::mount_at(&meta, "16m") else {
        return;
    };
    let addr = loopback();
    let mut server = coordinator(addr, &data);
    let endpoint = server.endpoint();
    let work = tempfile::tempdir().expect("agent dir");
    let agent = AgentProcess::start(&endpoint, work.path(), "agent-0", 4, &[]);
    agent.log.wait_for(lines::AGENT_CONNECTED, LIMIT).await;
    let mut c = Clients::connect(&endpoint).await;

    // Four tests, one per batch, each held at a gate until the disk is full; t4 fails.
    let gate_dir = visible_tempdir();
    let gate = gate_dir.path().join("open");
    let script = format!(
        "case \"$1\" in\n  list) echo t1; echo t2; echo t3; echo t4;;\n  run) while [ ! -e {gate} ]; do sleep 0.05; done; [ \"$2\" != t4 ];;\nesac\n",
        gate = gate.display()
    );
    let spec = script_job(&c.cas, "gated", &script).await;
    let output = blob(1, 4096);
    upload(&c.cas, Via::Batch, &output).await.expect("upload");
    let id = submit(&mut c.jobs, &spec).await.expect("submit");
    wait_job_event(
        &mut c.jobs,
        &id,
        "every test running",
        LIMIT,
        |e| matches!(&e.kind, Some(Kind::Progress(p)) if p.total == 4 && p.busy_slots == 4),
    )
    .await;

    // The disk fills while the tests run (an action-cache write is refused: the database has
    // no room left either); then they finish.
    let filler = Filler::fill(fs.path().join("filler"));
    let mut next = 0;
    let refusal = ac_writes_until_refused(&mut c.ac, &mut next, &output.0, &mut Vec::new()).await;
    assert_out_of_space("UpdateActionResult", &refusal, "metadata store");
    std::fs::write(&gate, b"").expect("open the gate");
    let (events, finished) = watch_job_to_end(&mut c.jobs, &id).await;
    let expected = vec![
        ("t1".to_owned(), TestOutcome::Passed, false),
        ("t2".to_owned(), TestOutcome::Passed, false),
        ("t3".to_owned(), TestOutcome::Passed, false),
        ("t4".to_owned(), TestOutcome::Failed, false),
    ];
    assert_eq!(finals(&events), expected, "{events:#?}");
    assert_eq!(
        (finished.result(), finished.passed, finished.failed),
        (JobResult::Failed, 3, 1),
        "{finished:?}"
    );
    // Said once, not once per test.
    let warnings = store_events(&server.log, lines::OUT_OF_SPACE, "metadata").await;
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the episode: {warnings:?}"
    );
    assert!(
        server.log.count("failed to record test results") <= 1,
        "results that could not be recorded are logged once, not per test"
    );

    // Space returns: nothing was recorded, so the same job runs every test again and this
    // time records the passes; the third run answers them from the cache.
    filler.remove();
    let id = until_accepted("a submission once space has returned", async || {
        submit(&mut c.jobs, &spec).await
    })
    .await;
    let (events, finished) = watch_job_to_end(&mut c.jobs, &id).await;
    assert_eq!(finals(&events), expected, "nothing was cached: {events:#?}");
    assert_eq!(finished.cached, 0, "{finished:?}");
    let returned = wait_store_event(&server.log, lines::SPACE_RETURNED, "metadata", 1).await;
    assert!(refused(&returned) >= 1, "{returned}");
    let id = submit(&mut c.jobs, &spec).await.expect("submit");
    let (events, finished) = watch_job_to_end(&mut c.jobs, &id).await;
    assert_eq!(
        (finished.result(), finished.cached),
        (JobResult::Failed, 3),
        "{events:#?}"
    );

    // A blob accepted while the metadata store is full (its file has room, its index record
    // does not) survives a clean shutdown on the full disk and a restart.
    let filler = Filler::fill(fs.path().join("filler"));
    let refusal = ac_writes_until_refused(&mut c.ac, &mut next, &output.0, &mut Vec::new()).await;
    assert_out_of_space("UpdateActionResult", &refusal, "metadata store");
    let kept = blob(2, BLOB);
    upload(&c.cas, Via::ByteStream, &kept)
        .await
        .expect("a blob upload while only the metadata store is full");
    let status = terminate(&mut server);
    assert_clean_exit(status, "SIGTERM with the metadata store full");
    filler.remove();
    let server = coordinator(addr, &data);
    let opened = server.log.wait_for("blob store opened", LIMIT).await;
    eprintln!("after the restart: {opened}");
    let c = Clients::connect(&server.endpoint()).await;
    let read = c
        .cas
        .read(&kept.0, false)
        .await
        .expect("the blob accepted on the full disk, after a restart");
    assert_eq!(read, kept.1);
    assert_no_panic(&server.log);
}
