//! `tessera status` and `tessera cancel`.

use serde_json::json;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{CancelJobRequest, StatusRequest, StatusResponse, StoreSummary};

use crate::connect;
use crate::exit::{CliError, Exit};
use crate::paths;
use crate::report::tally::{phase_name, result_name, seconds};

/// `tessera status` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Coordinator URL [default: TESSERA_COORDINATOR, else the running embedded cluster].
    #[arg(long, value_name = "URL")]
    pub coordinator: Option<String>,
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `tessera cancel` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CancelArgs {
    /// The job's id.
    pub job: String,
    /// Coordinator URL [default: TESSERA_COORDINATOR, else the running embedded cluster].
    #[arg(long, value_name = "URL")]
    pub coordinator: Option<String>,
}

/// `tessera status`.
pub async fn status(args: StatusArgs) -> Result<Exit, CliError> {
    let url = connect::existing(args.coordinator.as_deref(), &paths::cache_dir()).await?;
    let mut jobs = JobsClient::new(connect::channel(&url)?);
    let status = jobs
        .status(StatusRequest {})
        .await
        .map_err(|s| CliError::from_status("Status", &s))?
        .into_inner();
    if args.json {
        println!("{}", status_json(&status));
    } else {
        print!("{}", status_table(&status));
    }
    Ok(Exit::Success)
}

/// `tessera cancel`.
pub async fn cancel(args: CancelArgs) -> Result<Exit, CliError> {
    let url = connect::existing(args.coordinator.as_deref(), &paths::cache_dir()).await?;
    let mut jobs = JobsClient::new(connect::channel(&url)?);
    let response = jobs
        .cancel(CancelJobRequest {
            job_id: args.job.clone(),
        })
        .await
        .map_err(|s| CliError::from_status("Cancel", &s))?
        .into_inner();
    if response.cancelled {
        println!("cancelled job {}", args.job);
    } else {
        println!("job {} had already ended", args.job);
    }
    Ok(Exit::Success)
}

/// The status as JSON: `jobs`, `agents`, `queued_operations`, `running_operations`.
pub fn status_json(status: &StatusResponse) -> serde_json::Value {
    json!({
        "jobs": status.jobs.iter().map(|j| json!({
            "job_id": j.job_id, "submitter": j.submitter, "title": j.title,
            "phase": phase_name(j.phase()), "result": result_name(j.result()),
            "done": j.done, "total": j.total, "created_unix_ms": j.created_unix_ms,
            "elapsed_ms": j.elapsed_ms, "priority": j.priority,
        })).collect::<Vec<_>>(),
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

/// The status as tables: jobs, agents, queue counts.
pub fn status_table(status: &StatusResponse) -> String {
    let mut rows = vec![vec![
        "JOB".to_owned(),
        "PHASE".to_owned(),
        "RESULT".to_owned(),
        "TESTS".to_owned(),
        "ELAPSED".to_owned(),
        "SUBMITTER".to_owned(),
        "TITLE".to_owned(),
    ]];
    for j in &status.jobs {
        rows.push(vec![
            j.job_id.clone(),
            phase_name(j.phase()).to_owned(),
            if j.phase() == tessera_proto::tessera::v1::JobPhase::Done {
                result_name(j.result()).to_owned()
            } else {
                "-".to_owned()
            },
            format!("{}/{}", j.done, j.total),
            seconds(std::time::Duration::from_millis(j.elapsed_ms)),
            j.submitter.clone(),
            j.title.clone(),
        ]);
    }
    let mut out = if status.jobs.is_empty() {
        "no jobs\n".to_owned()
    } else {
        table(&rows)
    };
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

fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use tessera_proto::tessera::v1::{AgentSummary, JobPhase, JobSummary};

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
        let text = status_table(&status);
        assert!(
            text.contains("abc  running  -       3/10   1.50s    ann@box    tessera run -- pytest"),
            "{text}"
        );
        assert!(text.contains("embedded-0  1/2"), "{text}");
        assert!(text.ends_with("queue: 4 operations waiting, 1 running\n"));
        assert_eq!(status_json(&status)["jobs"][0]["phase"], "running");
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
        assert_eq!(status_json(&status)["store"]["metadata_writes_refused"], 7);
    }
}
