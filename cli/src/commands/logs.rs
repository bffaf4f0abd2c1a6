//! `tessera logs JOB TEST`: the whole output of each run of one test of a job.
//!
//! Events carry a test's output capped at the job's `--output-limit` (head and tail, the cut
//! said); when a run's output was cut, the whole of it is a CAS blob named in its event
//! (`TestFinished.output_digest`). This command replays the job's events, picks the runs of the
//! test, and prints each run's whole output. It is there while the coordinator keeps the job
//! (the last finished jobs; see README "Test output") and the CAS keeps the blob (LRU). For a
//! running job it waits until the test has its final result.

use tessera_cas::client::CasClient;
use tessera_cas::digest::Digest;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{TestFinished, WatchJobRequest, job_event::Kind};

use crate::client_config::{ClientConfig, ClientFlags};
use crate::connect;
use crate::exit::{CliError, Exit};
use crate::paths;
use crate::report::tally::{outcome_name, test_name};
use crate::upload::{DIGEST_FUNCTION, cas_failed};

/// `tessera logs` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The job's id.
    pub job: String,
    /// The test, as `tessera run` names it (`GROUP NAME`, or the name alone when it has no
    /// group or the name is unique in the job).
    pub test: String,
    /// Only this attempt (1 for the first run).
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
    /// Coordinator, token and TLS (without a coordinator anywhere: the running embedded
    /// cluster).
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera logs`.
pub async fn logs(args: LogsArgs) -> Result<Exit, CliError> {
    let config = ClientConfig::from_process(&args.client)?;
    let connection = connect::existing(&config, &paths::cache_dir()).await?;
    let mut jobs = JobsClient::new(connection.link.clone());
    let mut events = jobs
        .watch(WatchJobRequest {
            job_id: args.job.clone(),
            after_seq: 0,
        })
        .await
        .map_err(|s| connection.failed("Watch", &s))?
        .into_inner();
    let mut runs: Vec<TestFinished> = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    while let Some(event) = events
        .message()
        .await
        .map_err(|s| connection.failed("Watch", &s))?
    {
        match event.kind {
            Some(Kind::Test(test)) => {
                let name = test_name(&test);
                let short = test
                    .test
                    .as_ref()
                    .map(|t| t.name.clone())
                    .unwrap_or_default();
                if name == args.test || short == args.test {
                    names.insert(name);
                    let done = test.r#final;
                    runs.push(test);
                    if done && names.len() == 1 && name_is_full(&runs, &args.test) {
                        break;
                    }
                }
            }
            Some(Kind::Finished(_)) => break,
            _ => {}
        }
    }
    if names.len() > 1 {
        return Err(CliError::usage(format!(
            "`{}` names {} tests of job {}: {}; give the whole name",
            args.test,
            names.len(),
            args.job,
            names.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    runs.retain(|r| args.attempt.is_none_or(|a| r.attempt == a));
    if runs.is_empty() {
        return Err(CliError::usage(format!(
            "job {} has no result for `{}`{}; `tessera watch {}` lists its tests",
            args.job,
            args.test,
            args.attempt
                .map(|a| format!(" at attempt {a}"))
                .unwrap_or_default(),
            args.job
        )));
    }
    let cas = CasClient::from_link(connection.link, "", DIGEST_FUNCTION)
        .await
        .map_err(|e| cas_failed(&format!("cannot reach the CAS at {}", connection.url), e))?;
    for run in &runs {
        println!("{}", header(run));
        let text = match run
            .output_digest
            .as_ref()
            .map(|d| Digest::from_proto(DIGEST_FUNCTION, d))
        {
            Some(Ok(digest)) => match cas.read(&digest, false).await {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(e) => format!(
                    "(the whole output is gone from the CAS ({e}); what the event kept:)\n{}",
                    run.output
                ),
            },
            Some(Err(e)) => format!("(bad output digest: {e})\n{}", run.output),
            None if run.output.is_empty() => "(no output kept: passes and skips keep none)".into(),
            None => run.output.clone(),
        };
        println!("{}", text.trim_end());
    }
    Ok(Exit::Success)
}

/// Whether the runs found so far are of the test named exactly (so no other test with the same
/// short name can follow).
fn name_is_full(runs: &[TestFinished], wanted: &str) -> bool {
    runs.iter().all(|r| test_name(r) == wanted)
}

/// `== NAME: attempt N, failed, on AGENT ==`.
fn header(run: &TestFinished) -> String {
    let agent = if run.agent.is_empty() {
        String::new()
    } else {
        format!(", on {}", run.agent)
    };
    format!(
        "== {}: attempt {}, {}{agent} ==",
        test_name(run),
        run.attempt,
        outcome_name(run.outcome())
    )
}
