//! `tessera quarantine add|remove|list`: the coordinator's quarantined tests, through its
//! Quarantine service. A quarantined test still runs and reports its true outcome; only the
//! job's result (and `tessera run`'s exit code) ignores its failure.
//!
//! A quarantine holds for a project (every matrix cell, laptop and CI alike). The project is
//! the one `tessera run` computes from the checkout (`crate::project`), so these commands run
//! inside the checkout need no `--project`. A test is named as `tessera run` prints it:
//! `GROUP NAME` (split at the first space), or `NAME` alone for runners without groups (or
//! give `--group`). Changing a quarantine needs an `admin` or `ci` token when auth is on;
//! listing, any token that may read jobs.

use serde_json::json;
use tessera_proto::tessera::v1::quarantine_client::QuarantineClient;
use tessera_proto::tessera::v1::{
    AddQuarantineRequest, ListQuarantineRequest, QuarantineEntry, RemoveQuarantineRequest, TestRef,
};

use crate::client_config::{ClientConfig, ClientFlags};
use crate::commands::token::time_text;
use crate::connect::{self, Connection};
use crate::exit::{CliError, Exit};
use crate::paths;
use crate::report::table::table;

/// `tessera quarantine` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum QuarantineCommand {
    /// Quarantine a test of the project: it still runs and reports its outcome, but its
    /// failure no longer fails the job (needs an `admin` or `ci` token when auth is on).
    Add(AddArgs),
    /// End a test's quarantine: its failure fails the job again.
    Remove(RemoveArgs),
    /// List the quarantined tests of the project (or of every project with --all-projects):
    /// test, by whom (a token, or the flake policy), since when, why.
    List(ListArgs),
}

/// Which project and instance.
#[derive(Debug, Clone, clap::Args)]
pub struct Scope {
    /// The project identity [default: the current checkout's, as `tessera run` computes it].
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
    /// The REAPI instance name [default: "", the one `tessera run` uses].
    #[arg(long, value_name = "I", default_value = "")]
    pub instance: String,
}

/// `tessera quarantine add` and `remove` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// The test, as `tessera run` names it: `GROUP NAME`, or `NAME` for tests without a group.
    pub test: String,
    /// The test's group, when TEST is the name alone (a group or name with a space in it).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Project and instance.
    #[command(flatten)]
    pub scope: Scope,
    /// Coordinator, token and TLS.
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera quarantine add` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// The test.
    #[command(flatten)]
    pub test: TestArgs,
    /// Why (shown by `list` and recorded in the audit log).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
}

/// `tessera quarantine remove` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoveArgs {
    /// The test.
    #[command(flatten)]
    pub test: TestArgs,
}

/// `tessera quarantine list` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Project and instance.
    #[command(flatten)]
    pub scope: Scope,
    /// Every project's quarantined tests, not only this checkout's.
    #[arg(long, conflicts_with = "project")]
    pub all_projects: bool,
    /// One JSON object a line for each quarantined test.
    #[arg(long)]
    pub json: bool,
    /// Coordinator, token and TLS.
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera quarantine ...`.
pub async fn quarantine(command: QuarantineCommand) -> Result<Exit, CliError> {
    match command {
        QuarantineCommand::Add(args) => add(args).await,
        QuarantineCommand::Remove(args) => remove(args).await,
        QuarantineCommand::List(args) => list(args).await,
    }
}

async fn client(
    flags: &ClientFlags,
) -> Result<(Connection, QuarantineClient<tessera_net::client::Link>), CliError> {
    let config = ClientConfig::from_process(flags)?;
    let connection = connect::existing(&config, &paths::cache_dir()).await?;
    let client = QuarantineClient::new(connection.link.clone());
    Ok((connection, client))
}

/// The project `scope` names, else the current checkout's.
fn project(scope: &Scope) -> Result<String, CliError> {
    if let Some(project) = &scope.project {
        return Ok(project.clone());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::usage(format!("cannot read the current directory: {e}")))?;
    Ok(crate::project::identify(&paths::project_root(&cwd)))
}

/// The test `args` names: `--group` and TEST, else TEST split at its first space.
pub fn test_ref(args: &TestArgs) -> TestRef {
    match &args.group {
        Some(group) => TestRef {
            group: group.clone(),
            name: args.test.clone(),
        },
        None => match args.test.split_once(' ') {
            Some((group, name)) => TestRef {
                group: group.to_owned(),
                name: name.to_owned(),
            },
            None => TestRef {
                group: String::new(),
                name: args.test.clone(),
            },
        },
    }
}

async fn add(args: AddArgs) -> Result<Exit, CliError> {
    let project = project(&args.test.scope)?;
    let (connection, mut client) = client(&args.test.client).await?;
    let entry = client
        .add(AddQuarantineRequest {
            instance_name: args.test.scope.instance.clone(),
            project,
            test: Some(test_ref(&args.test)),
            reason: args.reason.clone(),
        })
        .await
        .map_err(|s| connection.failed("Quarantine.Add", &s))?
        .into_inner()
        .entry
        .unwrap_or_default();
    println!(
        "quarantined {} in project {}",
        test_name(&entry),
        entry.project
    );
    Ok(Exit::Success)
}

async fn remove(args: RemoveArgs) -> Result<Exit, CliError> {
    let project = project(&args.test.scope)?;
    let (connection, mut client) = client(&args.test.client).await?;
    let entry = client
        .remove(RemoveQuarantineRequest {
            instance_name: args.test.scope.instance.clone(),
            project,
            test: Some(test_ref(&args.test)),
        })
        .await
        .map_err(|s| connection.failed("Quarantine.Remove", &s))?
        .into_inner()
        .entry
        .unwrap_or_default();
    println!(
        "removed {} from quarantine in project {}",
        test_name(&entry),
        entry.project
    );
    Ok(Exit::Success)
}

async fn list(args: ListArgs) -> Result<Exit, CliError> {
    let project = if args.all_projects {
        String::new()
    } else {
        project(&args.scope)?
    };
    let (connection, mut client) = client(&args.client).await?;
    let entries = client
        .list(ListQuarantineRequest {
            instance_name: args.scope.instance.clone(),
            project,
        })
        .await
        .map_err(|s| connection.failed("Quarantine.List", &s))?
        .into_inner()
        .entries;
    if args.json {
        for entry in &entries {
            println!("{}", entry_json(entry));
        }
    } else {
        print!("{}", entry_table(&entries));
    }
    Ok(Exit::Success)
}

/// The test as `tessera run` names it.
fn test_name(entry: &QuarantineEntry) -> String {
    let test = entry.test.clone().unwrap_or_default();
    if test.group.is_empty() {
        test.name
    } else {
        format!("{} {}", test.group, test.name)
    }
}

/// One entry as JSON: `instance`, `project`, `group`, `name`, `test` (as `tessera run` names
/// it), `by` (a token name, `-` with auth off, or `policy:...`), `since` (RFC 3339), `reason`.
pub fn entry_json(entry: &QuarantineEntry) -> serde_json::Value {
    let test = entry.test.clone().unwrap_or_default();
    json!({
        "instance": entry.instance_name,
        "project": entry.project,
        "group": test.group,
        "name": test.name,
        "test": test_name(entry),
        "by": entry.by,
        "since": time_text(entry.since.as_ref()),
        "reason": entry.reason,
    })
}

/// The entries as a table.
pub fn entry_table(entries: &[QuarantineEntry]) -> String {
    if entries.is_empty() {
        return "no quarantined tests\n".to_owned();
    }
    let mut rows = vec![
        ["PROJECT", "TEST", "BY", "SINCE", "REASON"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for e in entries {
        rows.push(vec![
            e.project.clone(),
            test_name(e),
            e.by.clone(),
            time_text(e.since.as_ref()),
            if e.reason.is_empty() {
                "-".to_owned()
            } else {
                e.reason.clone()
            },
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(test: &str, group: Option<&str>) -> TestArgs {
        TestArgs {
            test: test.to_owned(),
            group: group.map(str::to_owned),
            scope: Scope {
                project: None,
                instance: String::new(),
            },
            client: ClientFlags::default(),
        }
    }

    #[test]
    fn a_test_is_named_as_tessera_run_prints_it() {
        let named = |t: TestRef| (t.group, t.name);
        assert_eq!(
            named(test_ref(&args("tests.test_math test_add", None))),
            ("tests.test_math".to_owned(), "test_add".to_owned())
        );
        assert_eq!(
            named(test_ref(&args("tests/test_a.py::test_x[a b]", None))),
            ("tests/test_a.py::test_x[a".to_owned(), "b]".to_owned())
        );
        // A name with a space: --group says where the group ends.
        assert_eq!(
            named(test_ref(&args("test_x[a b]", Some("")))),
            (String::new(), "test_x[a b]".to_owned())
        );
        assert_eq!(
            named(test_ref(&args("TestAdd", None))),
            (String::new(), "TestAdd".to_owned())
        );
    }
}
