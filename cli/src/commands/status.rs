//! `tessera status` and `tessera cancel`.
//!
//! `tessera status` shows recent jobs, not all of them: the running ones, then the last
//! [`DEFAULT_LIMIT`] finished ones (`--limit N`, `--all`), with a line saying how many older
//! ones were left out; `--json` holds the same jobs and the count left out.

use serde_json::json;
use tessera_coordinator::jobs::labels;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{
    CancelJobRequest, JobPhase, JobSummary, StatusRequest, StatusResponse, StoreSummary,
};

use crate::client_config::{ClientConfig, ClientFlags};
use crate::connect;
use crate::exit::{CliError, Exit};
use crate::paths;
use crate::report::table::table;
use crate::report::tally::{phase_name, result_name, seconds};

/// Finished jobs `tessera status` shows unless told otherwise.
pub const DEFAULT_LIMIT: usize = 20;

/// `tessera status` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Coordinator, token and TLS (without a coordinator anywhere: the running embedded
    /// cluster).
    #[command(flatten)]
    pub client: ClientFlags,
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Show the N most recent finished jobs (running ones are always shown).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT, conflicts_with = "all")]
    pub limit: usize,
    /// Show every finished job the coordinator still keeps.
    #[arg(long)]
    pub all: bool,
}

/// `tessera cancel` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CancelArgs {
    /// The job's id.
    pub job: String,
    /// Coordinator, token and TLS (without a coordinator anywhere: the running embedded
    /// cluster).
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera status`.
pub async fn status(args: StatusArgs) -> Result<Exit, CliError> {
    let config = ClientConfig::from_process(&args.client)?;
    let connection = connect::existing(&config, &paths::cache_dir()).await?;
    let mut jobs = JobsClient::new(connection.link.clone());
    let mut status = jobs
        .status(StatusRequest {})
        .await
        .map_err(|s| connection.failed("Status", &s))?
        .into_inner();
    let left_out = recent(&mut status, (!args.all).then_some(args.limit));
    if args.json {
        println!("{}", status_json(&status, left_out));
    } else {
        print!("{}", status_table(&status, left_out));
    }
    Ok(Exit::Success)
}

/// Keeps the running jobs and the `limit` most recent finished ones (all with `None`), running
/// first, then newest first; returns how many finished jobs were left out.
pub fn recent(status: &mut StatusResponse, limit: Option<usize>) -> usize {
    let (mut running, mut finished): (Vec<JobSummary>, Vec<JobSummary>) =
        std::mem::take(&mut status.jobs)
            .into_iter()
            .partition(|j| j.phase() != JobPhase::Done);
    running.sort_by_key(|j| std::cmp::Reverse(j.created_unix_ms));
    finished.sort_by_key(|j| std::cmp::Reverse(j.created_unix_ms));
    let keep = limit.unwrap_or(usize::MAX).min(finished.len());
    let left_out = finished.len() - keep;
    finished.truncate(keep);
    running.append(&mut finished);
    status.jobs = running;
    left_out
}

/// `tessera cancel`.
pub async fn cancel(args: CancelArgs) -> Result<Exit, CliError> {
    let config = ClientConfig::from_process(&args.client)?;
    let connection = connect::existing(&config, &paths::cache_dir()).await?;
    let mut jobs = JobsClient::new(connection.link.clone());
    let response = jobs
        .cancel(CancelJobRequest {
            job_id: args.job.clone(),
        })
        .await
        .map_err(|s| connection.failed("Cancel", &s))?
        .into_inner();
    if response.cancelled {
        println!("cancelled job {}", args.job);
    } else {
        println!("job {} had already ended", args.job);
    }
    Ok(Exit::Success)
}

/// The status as JSON: `jobs` (each with `prepare_network`: whether its build may use the
/// network, and `labels`, an object), `finished_jobs_not_shown`, `agents`, `queued_operations`, `running_operations`,
/// `store`.
pub fn status_json(status: &StatusResponse, left_out: usize) -> serde_json::Value {
    json!({
        "jobs": status.jobs.iter().map(|j| json!({
            "job_id": j.job_id, "submitter": j.submitter, "title": j.title,
            "phase": phase_name(j.phase()), "result": result_name(j.result()),
            "done": j.done, "total": j.total, "created_unix_ms": j.created_unix_ms,
            "elapsed_ms": j.elapsed_ms, "priority": j.priority,
            "prepare_network": j.prepare_network,
            "labels": j.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "finished_jobs_not_shown": left_out,
        "agents": status.agents.iter().map(|a| json!({
            "agent_id": a.agent_id, "slots": a.slots, "busy": a.busy,
            "properties": a.properties.iter().map(|p| (p.name.clone(), json!(p.value))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "queued_operations": status.queued_operations,
        "running_operations": status.running_operations,
        "store": status.store.as_ref().map(|s| json!({
            "blobs": s.blobs, "stored_bytes": s.stored_bytes, "budget_bytes": s.budget_bytes,
            "blobs_out_of_space": s.blobs_out_of_space,
            "blob_writes_refused": s.blob_writes_refused,
            "metadata_out_of_space": s.metadata_out_of_space,
            "metadata_writes_refused": s.metadata_writes_refused,
        })),
    })
}

/// A job's labels but `name`, as `key=value` in key order (`-` when none).
fn label_text(job_labels: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = job_labels
        .iter()
        .filter(|(k, _)| k.as_str() != labels::NAME)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if pairs.is_empty() {
        return "-".to_owned();
    }
    pairs.sort();
    pairs.join(" ")
}

/// The status as tables: jobs (`net` under NET: the job's build may use the network; NAME is
/// the `name` label; LABELS the others), a line on the finished jobs left out, agents, queue
/// counts.
pub fn status_table(status: &StatusResponse, left_out: usize) -> String {
    let mut rows = vec![vec![
        "JOB".to_owned(),
        "PHASE".to_owned(),
        "RESULT".to_owned(),
        "TESTS".to_owned(),
        "ELAPSED".to_owned(),
        "NET".to_owned(),
        "SUBMITTER".to_owned(),
        "NAME".to_owned(),
        "LABELS".to_owned(),
    ]];
    for j in &status.jobs {
        rows.push(vec![
            j.job_id.clone(),
            phase_name(j.phase()).to_owned(),
            if j.phase() == JobPhase::Done {
                result_name(j.result()).to_owned()
            } else {
                "-".to_owned()
            },
            format!("{}/{}", j.done, j.total),
            seconds(std::time::Duration::from_millis(j.elapsed_ms)),
            if j.prepare_network { "net" } else { "-" }.to_owned(),
            j.submitter.clone(),
            j.labels
                .get(labels::NAME)
                .cloned()
                .unwrap_or_else(|| j.title.clone()),
            label_text(&j.labels),
        ]);
    }
    let mut out = if status.jobs.is_empty() {
        "no jobs\n".to_owned()
    } else {
        table(&rows)
    };
    if left_out > 0 {
        let s = if left_out == 1 { "" } else { "s" };
        out.push_str(&format!(
            "({left_out} older finished job{s} not shown; --limit N or --all shows them)\n"
        ));
    }
    out.push('\n');
    let mut rows = vec![vec![
        "AGENT".to_owned(),
        "BUSY".to_owned(),
        "PROPERTIES".to_owned(),
    ]];
    for a in &status.agents {
        rows.push(vec![
            a.agent_id.clone(),
            format!("{}/{}", a.busy, a.slots),
            a.properties
                .iter()
                .map(|p| format!("{}={}", p.name, p.value))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    if status.agents.is_empty() {
        out.push_str("no agents\n");
    } else {
        out.push_str(&table(&rows));
    }
    out.push_str(&format!(
        "\nqueue: {} operations waiting, {} running\n",
        status.queued_operations, status.running_operations
    ));
    if let Some(store) = &status.store {
        out.push_str(&store_line(store));
    }
    out
}

/// One line on the coordinator's storage; a full disk is said loudly, with what to do.
fn store_line(store: &StoreSummary) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut line = format!(
        "store: {} blobs, {:.1} MiB",
        store.blobs,
        mib(store.stored_bytes)
    );
    if store.budget_bytes > 0 {
        line.push_str(&format!(" of {:.1} MiB", mib(store.budget_bytes)));
    }
    line.push('\n');
    let full: Vec<&str> = [
        (store.blobs_out_of_space, "blob store"),
        (store.metadata_out_of_space, "metadata store"),
    ]
    .into_iter()
    .filter_map(|(full, name)| full.then_some(name))
    .collect();
    if !full.is_empty() {
        line.push_str(&format!(
            "OUT OF SPACE: the {} refuses writes; free space in the coordinator's data directory (writes resume by themselves)\n",
            full.join(" and the ")
        ));
    }
    let refused = store.blob_writes_refused + store.metadata_writes_refused;
    if refused > 0 {
        line.push_str(&format!(
            "writes refused for lack of space since start: {} blob, {} metadata\n",
            store.blob_writes_refused, store.metadata_writes_refused
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use tessera_proto::tessera::v1::{AgentSummary, JobResult};

    use super::*;

    #[test]
    fn the_status_table_lines_up() {
        let status = StatusResponse {
            jobs: vec![JobSummary {
                job_id: "abc".into(),
                submitter: "ann@box".into(),
                title: "tessera run -- pytest".into(),
                phase: JobPhase::Running as i32,
                done: 3,
                total: 10,
                elapsed_ms: 1500,
                prepare_network: true,
                ..JobSummary::default()
            }],
            agents: vec![AgentSummary {
                agent_id: "embedded-0".into(),
                slots: 2,
                busy: 1,
                properties: vec![],
            }],
            queued_operations: 4,
            running_operations: 1,
            store: None,
        };
        let text = status_table(&status, 0);
        assert!(
            text.contains(
                "abc  running  -       3/10   1.50s    net  ann@box    tessera run -- pytest"
            ),
            "{text}"
        );
        assert!(text.contains("embedded-0  1/2"), "{text}");
        assert!(text.ends_with("queue: 4 operations waiting, 1 running\n"));
        let json = status_json(&status, 0);
        assert_eq!(json["jobs"][0]["phase"], "running");
        assert_eq!(json["jobs"][0]["prepare_network"], true);
    }

    #[test]
    fn status_shows_running_jobs_then_the_most_recent_finished_ones() {
        let job = |id: &str, created: u64, phase: JobPhase| JobSummary {
            job_id: id.into(),
            created_unix_ms: created,
            phase: phase as i32,
            result: JobResult::Passed as i32,
            ..JobSummary::default()
        };
        let mut all = vec![job("old-running", 1, JobPhase::Running)];
        for i in 0..30 {
            all.push(job(&format!("done-{i:02}"), 10 + i, JobPhase::Done));
        }
        all.push(job("new-running", 100, JobPhase::Queued));
        let mut status = StatusResponse {
            jobs: all.clone(),
            ..StatusResponse::default()
        };
        let left_out = recent(&mut status, Some(DEFAULT_LIMIT));
        assert_eq!(left_out, 10);
        let ids: Vec<&str> = status.jobs.iter().map(|j| j.job_id.as_str()).collect();
        assert_eq!(ids.len(), 22);
        assert_eq!(
            &ids[..4],
            ["new-running", "old-running", "done-29", "done-28"]
        );
        assert_eq!(ids[21], "done-10");
        let text = status_table(&status, left_out);
        assert!(
            text.contains("(10 older finished jobs not shown; --limit N or --all shows them)"),
            "{text}"
        );
        assert_eq!(
            status_json(&status, left_out)["finished_jobs_not_shown"],
            10
        );

        let mut status = StatusResponse {
            jobs: all,
            ..StatusResponse::default()
        };
        assert_eq!(recent(&mut status, None), 0);
        assert_eq!(status.jobs.len(), 32);
        assert!(!status_table(&status, 0).contains("not shown"));
    }

    #[test]
    fn a_full_disk_is_said_loudly_with_what_to_do() {
        let mut store = StoreSummary {
            blobs: 12,
            stored_bytes: 3 << 20,
            ..StoreSummary::default()
        };
        assert_eq!(store_line(&store), "store: 12 blobs, 3.0 MiB\n");
        store.metadata_out_of_space = true;
        store.metadata_writes_refused = 7;
        let line = store_line(&store);
        assert!(
            line.contains("OUT OF SPACE: the metadata store refuses writes; free space"),
            "{line}"
        );
        assert!(line.contains("since start: 0 blob, 7 metadata"), "{line}");
        let status = StatusResponse {
            store: Some(store),
            ..StatusResponse::default()
        };
        assert_eq!(
            status_json(&status, 0)["store"]["metadata_writes_refused"],
            7
        );
    }
}
