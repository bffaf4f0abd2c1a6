//! `tessera run` and `tessera watch`: snapshot, submit, follow, report, exit code; and the
//! embedded cluster's part in them (join a running one, or serve one for the run's duration).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tessera_cas::client::CasClient;
use tessera_net::client::Link;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{JobPhase, StatusRequest, SubmitJobRequest};

use crate::client_config::{ClientConfig, ClientFlags};
use crate::cluster::{ClusterLock, ClusterOptions, EmbeddedCluster};
use crate::connect::{self, Connection};
use crate::exit::{CliError, Exit};
use crate::paths;
use crate::report::EventSink;
use crate::report::human::Human;
use crate::report::json::JsonLines;
use crate::report::junit::JunitReport;
use crate::spec::{self, JobSettings, Placement, RunnerKind};
use crate::upload;
use crate::watch::{self, Interrupt, WatchEnd};

/// How long a run waits for another process's embedded cluster to come up.
const JOIN_DEADLINE: Duration = Duration::from_secs(30);
/// How often the embedded cluster's owner looks for other clients' jobs before stopping.
const IDLE_POLL: Duration = Duration::from_millis(300);

/// `tessera run` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Coordinator, token and TLS (without a coordinator anywhere: the running embedded
    /// cluster, else one started for this run).
    #[command(flatten)]
    pub client: ClientFlags,
    /// With a `ci` token: the pipeline or person this job runs for; the job's submitter
    /// becomes TOKEN/NAME, with its own fair share.
    #[arg(long, value_name = "NAME", env = "TESSERA_ON_BEHALF_OF")]
    pub on_behalf_of: Option<String>,
    /// Pass variable NAME's value from here to every step as a secret: only a keyed hash of it
    /// enters cache keys, and it is never stored, logged or shown; repeatable. NAME must be
    /// set here, and not also given to --env or --matrix.
    #[arg(long = "secret-env", value_name = "NAME")]
    pub secret_env: Vec<String>,
    /// Runner [default: inferred from the command: `cargo test`, `cargo nextest run`,
    /// `pytest` / `python3 -m pytest`, `go test`].
    #[arg(long, value_enum)]
    pub runner: Option<RunnerKind>,
    /// Run a failing test again up to N times; a pass after a failure is reported as flaky.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retries: u32,
    /// Stop at the first test that fails for good.
    #[arg(long)]
    pub fail_fast: bool,
    /// Write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Print one JSON object a line for each event, and nothing else on stdout.
    #[arg(long)]
    pub json: bool,
    /// Priority of the job's actions, -1000..1000 (lower runs first).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    pub priority: i32,
    /// Deadline of one test, e.g. "90s" or "5m" [default: the coordinator's].
    #[arg(long, value_name = "DURATION", value_parser = tessera_config::parse_duration)]
    pub timeout: Option<Duration>,
    /// Environment variable for every step, KEY=VALUE, or KEY to pass its value from here;
    /// repeatable.
    #[arg(long = "env", value_name = "KEY[=VAL]")]
    pub env: Vec<String>,
    /// Run the suite once per combination of values of environment variables, in one job:
    /// NAME=V1,V2,...; repeatable, the cells are the cross product.
    ///
    /// `--matrix FEATURE=on,off --matrix DB=pg,sqlite` runs 4 cells, each with its own prepare
    /// step, cached results and history; results show each cell as `[FEATURE=on,DB=pg]`, and
    /// JUnit has a <testsuite> per cell. A NAME given once is split on commas; a NAME given more
    /// than once takes each occurrence as one value, commas included (`--matrix OPTS=a,b
    /// --matrix OPTS=c` is the two values "a,b" and "c"). NAME must be an environment variable
    /// name (letters, digits, _); values must not be empty or repeated; at most 64 cells. A
    /// matrix value replaces a variable passed from here; a NAME also given to --env is
    /// refused. The exit code is 3 if any cell hit an infrastructure failure, else 1 if any
    /// cell failed, else 0.
    #[arg(long = "matrix", value_name = "NAME=V1,V2")]
    pub matrix: Vec<String>,
    /// Platform property the agents must have, KEY=VALUE; repeatable.
    #[arg(long = "platform", value_name = "K=V")]
    pub platform: Vec<String>,
    /// Give the test steps the host's network (the same as `--platform network=on`); by default
    /// tests run with only loopback.
    #[arg(long)]
    pub network: bool,
    /// Run the prepare step (the build) without network too; by default it may fetch
    /// dependencies, as a build in CI does.
    #[arg(long)]
    pub no_prepare_network: bool,
    /// Only send files matching GLOB (relative to the project root; a directory means all
    /// under it); repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out files matching GLOB; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Run every test even if its result is cached.
    #[arg(long)]
    pub no_cache: bool,
    /// Keep the tests of one file (pytest module, go package) together in one process, in the
    /// order the tool lists them, as pytest-xdist's `--dist loadfile`: for suites whose tests
    /// depend on each other's order. Use --retries to have a test that fails with its
    /// file-mates and passes alone reported as flaky.
    #[arg(long)]
    pub by_file: bool,
    /// Bytes of each failing test's output shown and kept in events and JUnit (its head and
    /// tail; the cut is said) [default: 64 KiB]; `tessera logs JOB TEST` prints all of it.
    #[arg(long, value_name = "BYTES")]
    pub output_limit: Option<u32>,
    /// Label the job, KEY=VALUE; repeatable. Shown by `tessera status` and in --json, and
    /// matched by the coordinator's webhook filters. In CI the branch, commit, pipeline and its
    /// URL are added from the CI system's environment (GitHub Actions, GitLab CI, Buildkite,
    /// Jenkins); a --label of the same key wins. `name` names the job in history and
    /// notifications [default: the runner and the command]. Keys: a-z, 0-9, `_`, `-`, `.`,
    /// starting with a letter, at most 63; values at most 1024 bytes.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// For --runner command: a shell command printing one test id a line.
    #[arg(long, value_name = "CMD")]
    pub list_command: Option<String>,
    /// Export this run's spans to an OTLP/gRPC collector, e.g. http://127.0.0.1:4317: the
    /// job's trace then starts here and goes on in the coordinator and the agents (when they
    /// export too) [default: off]. For https://, the CA is read from
    /// OTEL_EXPORTER_OTLP_CERTIFICATE.
    #[arg(long, value_name = "URL", env = "TESSERA_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The test command: `cargo test ...`, `cargo nextest run ...`, `pytest ...`, `go test
    /// ...`, or a run template naming {tests} or {tests_file} for --runner command.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// `tessera watch` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The job's id.
    pub job: String,
    /// Coordinator, token and TLS (without a coordinator anywhere: the running embedded
    /// cluster).
    #[command(flatten)]
    pub client: ClientFlags,
    /// Write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// One JSON object a line for each event.
    #[arg(long)]
    pub json: bool,
}

/// The views of one run or watch.
struct Views {
    human: Option<Human<std::io::Stdout>>,
    json: Option<JsonLines<std::io::Stdout>>,
    junit: Option<(JunitReport, PathBuf)>,
}

impl Views {
    fn new(json: bool, junit: Option<PathBuf>) -> Self {
        Self {
            human: (!json).then(|| Human::stdout(std::io::stdout().is_terminal())),
            json: json.then(|| JsonLines::new(std::io::stdout())),
            junit: junit.map(|path| (JunitReport::new(), path)),
        }
    }

    fn note(&mut self, text: &str) {
        if let Some(human) = &mut self.human {
            human.note(text);
        }
    }

    /// A note that must be seen even with `--json`: on stderr then.
    fn warn(&mut self, text: &str) {
        match &mut self.human {
            Some(human) => human.note(&format!("warning: {text}")),
            None => eprintln!("tessera: warning: {text}"),
        }
    }

    fn sinks(&mut self) -> Vec<&mut dyn EventSink> {
        let mut sinks: Vec<&mut dyn EventSink> = Vec::new();
        if let Some(h) = &mut self.human {
            sinks.push(h);
        }
        if let Some(j) = &mut self.json {
            sinks.push(j);
        }
        if let Some((r, _)) = &mut self.junit {
            sinks.push(r);
        }
        sinks
    }

    /// Writes the JUnit report, if asked for.
    fn finish(&self) -> Result<(), CliError> {
        if let Some((report, path)) = &self.junit {
            report.write_to(path).map_err(|e| {
                CliError::usage(format!(
                    "cannot write the JUnit report {}: {e}",
                    path.display()
                ))
            })?;
        }
        Ok(())
    }
}

/// `tessera run`.
///
/// The whole run is one span, the root of the job's trace when spans are exported
/// (`--otlp-endpoint`): the upload, the submission and the watch are its children, and the
/// coordinator's and agents' spans hang below them.
#[tracing::instrument(name = "tessera run", skip_all, fields(otel.kind = "client"))]
pub async fn run(args: RunArgs, title: String) -> Result<Exit, CliError> {
    let mut interrupt = Interrupt::listen()?;
    let cwd = std::env::current_dir()
        .and_then(|d| d.canonicalize())
        .map_err(|e| CliError::usage(format!("cannot read the current directory: {e}")))?;
    let root = paths::project_root(&cwd);
    let root = root.canonicalize().unwrap_or(root);
    let exec_root = paths::exec_root(&root);
    let placement = Placement::new(&root, &cwd, exec_root.clone());
    let runner = spec::choose_runner(
        args.runner,
        args.list_command.as_deref(),
        &args.args,
        &placement,
    )?;
    let config = ClientConfig::from_process(&args.client)?;
    let lookup = |k: &str| std::env::var(k).ok();
    let fail_fast = args.fail_fast || runner.fail_fast;
    if args.by_file && runner.config.runner().batching() == tessera_runners::Batching::PerTest {
        return Err(CliError::usage(format!(
            "--by-file needs a runner that runs many tests in one process (pytest, go test, \
             or --runner command with a {{junit}} report); the {} runner runs each test in \
             its own process, so its tests cannot depend on each other's order",
            runner.config.runner().name()
        )));
    }
    let runner_name = runner.config.runner().name();
    let settings = JobSettings {
        runner,
        exec_root,
        environment: spec::environment(lookup, &args.env)?,
        platform: spec::platform(&args.platform, args.network)?,
        prepare_network: !args.no_prepare_network,
        output_limit: args.output_limit.unwrap_or(0),
        keep_files_together: args.by_file,
        matrix: spec::matrix(&args.matrix, &args.env)?,
        retries: args.retries,
        fail_fast,
        timeout: args.timeout,
        priority: args.priority,
        submitter: spec::submitter(lookup),
        title,
        no_cache: args.no_cache,
        project: crate::project::identify(&root),
        on_behalf_of: args.on_behalf_of.clone().unwrap_or_default(),
        secrets: spec::secrets(lookup, &args.secret_env, &args.env, &args.matrix)?,
        labels: spec::labels(
            &args.labels,
            crate::ci_env::labels(&std::env::vars().collect()),
            &format!("{}: {}", runner_name, args.args.join(" ")),
        )?,
    };
    let cache_dir = paths::cache_dir();
    let mut views = Views::new(args.json, args.junit.clone());

    let (connection, cluster) = match connect::configured(&config).await? {
        Some(connection) => (connection, None),
        None => {
            let (url, cluster) = join_or_start(&cache_dir, &mut views).await?;
            (connect::connect_embedded(&url).await?, cluster)
        }
    };
    let mut jobs = JobsClient::new(connection.link.clone());
    let outcome = submit_and_follow(
        &mut jobs,
        &connection,
        &root,
        &args,
        &settings,
        &cache_dir,
        &mut views,
        &mut interrupt,
    )
    .await;
    if let Some(cluster) = cluster {
        serve_until_idle(cluster, &mut jobs, &mut views, &mut interrupt).await;
    }
    outcome
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the pieces of one run"
)]
async fn submit_and_follow(
    jobs: &mut JobsClient<Link>,
    connection: &Connection,
    root: &std::path::Path,
    args: &RunArgs,
    settings: &JobSettings,
    cache_dir: &std::path::Path,
    views: &mut Views,
    interrupt: &mut Interrupt,
) -> Result<Exit, CliError> {
    let uploaded = tokio::select! {
        uploaded = async {
            let cas = CasClient::from_link(connection.link.clone(), "", upload::DIGEST_FUNCTION)
                .await
                .map_err(|e| upload::cas_failed("cannot reach the CAS", e))?;
            upload::snapshot_and_upload(&cas, root, &args.include, &args.exclude, cache_dir).await
        } => uploaded,
        _ = interrupt.recv() => return Ok(Exit::Interrupted),
    };
    let (input_root, stats, notes) = uploaded?;
    if !notes.left_out.is_empty() {
        views.note(&format!(
            "left out of the snapshot as tool outputs: {} (name one with --include to send it)",
            notes.left_out.join(", ")
        ));
    }
    if let Some(large) = &notes.large {
        views.warn(large);
    }
    views.note(&format!(
        "snapshot of {}: {} files in {} ms, {} new blobs ({} KiB) uploaded in {} ms",
        root.display(),
        stats.files,
        stats.snapshot_time.as_millis(),
        stats.uploaded_blobs,
        stats.uploaded_bytes.div_ceil(1024),
        stats.upload_time.as_millis()
    ));
    let spec = spec::job_spec(settings, &input_root)?;
    let job_id = jobs
        .submit(SubmitJobRequest { spec: Some(spec) })
        .await
        .map_err(|s| connection.failed("Submit", &s))?
        .into_inner()
        .job_id;
    if let Some(json) = &mut views.json {
        json.submitted(&job_id, &settings.labels);
    }
    views.note(&format!(
        "job {job_id} (`tessera watch {job_id}` follows it too)"
    ));
    follow(jobs, &connection.url, &job_id, views, interrupt).await
}

async fn follow(
    jobs: &mut JobsClient<Link>,
    url: &str,
    job_id: &str,
    views: &mut Views,
    interrupt: &mut Interrupt,
) -> Result<Exit, CliError> {
    let end = {
        let mut sinks = views.sinks();
        watch::follow(jobs, url, job_id, &mut sinks, interrupt).await?
    };
    views.finish()?;
    Ok(match end {
        WatchEnd::Finished(tally) => tally.exit().unwrap_or(Exit::Infrastructure),
        WatchEnd::Interrupted(_) => Exit::Interrupted,
    })
}

/// `tessera watch`.
pub async fn watch(args: WatchArgs) -> Result<Exit, CliError> {
    let mut interrupt = Interrupt::listen()?;
    let config = ClientConfig::from_process(&args.client)?;
    let connection = connect::existing(&config, &paths::cache_dir()).await?;
    let mut jobs = JobsClient::new(connection.link);
    let mut views = Views::new(args.json, args.junit);
    follow(
        &mut jobs,
        &connection.url,
        &args.job,
        &mut views,
        &mut interrupt,
    )
    .await
}

/// Joins the running embedded cluster, or starts one in this process.
async fn join_or_start(
    cache_dir: &std::path::Path,
    views: &mut Views,
) -> Result<(String, Option<EmbeddedCluster>), CliError> {
    if let Some(url) = connect::running_cluster(cache_dir).await {
        return Ok((url, None));
    }
    let deadline = Instant::now() + JOIN_DEADLINE;
    loop {
        if let Some(lock) = ClusterLock::try_acquire(cache_dir)? {
            let cluster =
                EmbeddedCluster::start(&ClusterOptions::new(cache_dir.to_owned()), lock).await?;
            views.note(&format!(
                "started an embedded cluster at {} in {} ms (state in {})",
                cluster.url(),
                cluster.started_in().as_millis(),
                paths::cluster_dir(cache_dir).display()
            ));
            return Ok((cluster.url().to_owned(), Some(cluster)));
        }
        // Another process holds the lock: it is starting the cluster, or serving it.
        if let Some(url) = connect::running_cluster(cache_dir).await {
            return Ok((url, None));
        }
        if Instant::now() > deadline {
            return Err(CliError::infra(format!(
                "another tessera process holds {} but its cluster does not answer",
                paths::cluster_dir(cache_dir).join("lock").display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keeps the embedded cluster serving while other clients' jobs run on it, then stops it.
async fn serve_until_idle(
    cluster: EmbeddedCluster,
    jobs: &mut JobsClient<Link>,
    views: &mut Views,
    interrupt: &mut Interrupt,
) {
    let mut told = false;
    let mut unpublished = false;
    loop {
        let running = match jobs.status(StatusRequest {}).await {
            Ok(status) => status
                .into_inner()
                .jobs
                .iter()
                .filter(|j| j.phase() != JobPhase::Done)
                .count(),
            Err(_) => 0,
        };
        if running == 0 {
            if unpublished {
                break;
            }
            // Look once more after unpublishing: a client may have submitted meanwhile.
            cluster.unpublish();
            unpublished = true;
            continue;
        }
        if !told {
            views.note(&format!(
                "keeping the embedded cluster up for {running} job(s) of other clients (Ctrl-C stops it)"
            ));
            told = true;
        }
        tokio::select! {
            () = tokio::time::sleep(IDLE_POLL) => {}
            _ = interrupt.recv() => break,
        }
    }
    if let Err(error) = cluster.shutdown().await {
        views.note(&error.to_string());
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied())).map(|c| c.run)
    }

    #[test]
    fn flags_come_before_the_test_command_after_double_dash() {
        let args = parse(&[
            "--retries",
            "2",
            "--priority",
            "-5",
            "--timeout",
            "90s",
            "--env",
            "A=1",
            "--env",
            "B",
            "--matrix",
            "MODE=a,b",
            "--matrix",
            "OPTS=x,y",
            "--platform",
            "os=linux",
            "--exclude",
            "docs",
            "--runner",
            "cargo",
            "--",
            "cargo",
            "test",
            "--",
            "--nocapture",
        ])
        .unwrap();
        assert_eq!(args.retries, 2);
        assert_eq!(args.priority, -5);
        assert_eq!(args.timeout, Some(Duration::from_secs(90)));
        assert_eq!(args.env, vec!["A=1", "B"]);
        assert_eq!(args.matrix, vec!["MODE=a,b", "OPTS=x,y"]);
        assert_eq!(args.runner, Some(RunnerKind::Cargo));
        // Everything after the first `--` belongs to the test command, `--` included.
        assert_eq!(args.args, vec!["cargo", "test", "--", "--nocapture"]);
        assert!(parse(&["--runner", "maven", "--", "x"]).is_err());
        assert!(parse(&["--timeout", "soon", "--", "x"]).is_err());
    }
}
