//! `tessera audit`: the coordinator's audit log (job submit and cancel, action-cache writes,
//! token create and revoke, agent join and leave, denied calls), oldest first, as a table or
//! JSON lines. Needs an `admin` token.

use std::time::{Duration, SystemTime};

use serde_json::json;
use tessera_proto::tessera::v1::{AuditEntry, ReadAuditRequest};

use crate::client_config::ClientFlags;
use crate::commands::token::{admin, time_text};
use crate::exit::{CliError, Exit};
use crate::report::table::table;

/// `tessera audit` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Only entries of the last DURATION, e.g. "1h" or "7d" [default: all that are kept].
    #[arg(long, value_name = "DURATION", value_parser = tessera_config::parse_duration)]
    pub since: Option<Duration>,
    /// At most N entries, the newest ones [default: the coordinator's, 10000].
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// One JSON object a line for each entry.
    #[arg(long)]
    pub json: bool,
    /// Coordinator, admin token and TLS.
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera audit`.
pub async fn audit(args: AuditArgs) -> Result<Exit, CliError> {
    let since = match args.since {
        Some(ago) => Some(since_timestamp(SystemTime::now(), ago)?),
        None => None,
    };
    let (connection, mut admin) = admin(&args.client).await?;
    let entries = admin
        .read_audit(ReadAuditRequest {
            since,
            limit: args.limit.unwrap_or(0),
        })
        .await
        .map_err(|s| connection.failed("ReadAudit", &s))?
        .into_inner()
        .entries;
    if args.json {
        for entry in &entries {
            println!("{}", entry_json(entry));
        }
    } else {
        print!("{}", audit_table(&entries));
    }
    Ok(Exit::Success)
}

/// The moment `ago` before `now`, as a protobuf timestamp.
fn since_timestamp(now: SystemTime, ago: Duration) -> Result<prost_types::Timestamp, CliError> {
    let at = now
        .checked_sub(ago)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .ok_or_else(|| CliError::usage("--since reaches back before 1970; give a shorter time"))?;
    Ok(prost_types::Timestamp {
        seconds: i64::try_from(at.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(at.subsec_nanos()).unwrap_or(0),
    })
}

/// `allowed` or `denied` (a denial's status and reason are in the detail).
fn outcome(entry: &AuditEntry) -> &'static str {
    if entry.allowed { "allowed" } else { "denied" }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// One entry as JSON: `time` (RFC 3339), `action`, `token`, `role`, `peer`, `instance`,
/// `object`, `allowed`, `detail`.
pub fn entry_json(entry: &AuditEntry) -> serde_json::Value {
    json!({
        "time": time_text(entry.time.as_ref()),
        "action": entry.action,
        "token": entry.token,
        "role": entry.role,
        "peer": entry.peer,
        "instance": entry.instance,
        "object": entry.object,
        "allowed": entry.allowed,
        "detail": entry.detail,
    })
}

/// The entries as a table.
pub fn audit_table(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no audit entries\n".to_owned();
    }
    let mut rows = vec![
        [
            "TIME", "ACTION", "TOKEN", "ROLE", "PEER", "INSTANCE", "OBJECT", "RESULT", "DETAIL",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for e in entries {
        rows.push(vec![
            time_text(e.time.as_ref()),
            or_dash(&e.action),
            or_dash(&e.token),
            or_dash(&e.role),
            or_dash(&e.peer),
            or_dash(&e.instance),
            or_dash(&e.object),
            outcome(e).to_owned(),
            e.detail.clone(),
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use super::*;

    #[test]
    fn audit_entries_as_a_table_and_json_lines() {
        let entries = vec![
            AuditEntry {
                time: Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                action: "job.submit".into(),
                token: "nightly/ann".into(),
                role: "ci".into(),
                peer: "10.0.0.7:51234".into(),
                object: "j-1".into(),
                allowed: true,
                ..AuditEntry::default()
            },
            AuditEntry {
                time: Some(Timestamp {
                    seconds: 1_700_000_060,
                    nanos: 0,
                }),
                action: "denied".into(),
                token: "laptop".into(),
                role: "developer".into(),
                peer: "10.0.0.8:40000".into(),
                instance: "main".into(),
                object: "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult".into(),
                allowed: false,
                detail: "PERMISSION_DENIED: developer tokens cannot write the action cache".into(),
            },
        ];
        let text = audit_table(&entries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TIME  "), "{text}");
        assert!(
            lines[1].starts_with("2023-11-14T22:13:20Z  job.submit  nightly/ann  ci  "),
            "{text}"
        );
        assert!(
            lines[1].contains("  j-1  ") && lines[1].ends_with("  allowed"),
            "{text}"
        );
        assert!(
            lines[2].contains("  denied   PERMISSION_DENIED: developer"),
            "{text}"
        );
        let json = entry_json(&entries[1]);
        assert_eq!(json["time"], "2023-11-14T22:14:20Z");
        assert_eq!(json["allowed"], false);
        assert_eq!(json["instance"], "main");
        assert_eq!(audit_table(&[]), "no audit entries\n");
    }

    #[test]
    fn since_is_that_long_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let t = since_timestamp(now, Duration::from_secs(3_600)).unwrap();
        assert_eq!((t.seconds, t.nanos), (6_400, 0));
        let err = since_timestamp(now, Duration::from_secs(20_000)).unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);
    }
}
