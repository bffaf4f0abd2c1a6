//! `tessera token create|list|revoke`: the coordinator's tokens, through its Admin service
//! (an `admin` token is needed: TESSERA_TOKEN, --token-file or the client config file).
//!
//! `create` prints the new token alone on stdout (so `TOKEN=$(tessera token create ...)`
//! works); everything said about it goes to stderr. The coordinator keeps only a hash: the
//! token is shown this once.

use std::time::{Duration, SystemTime};

use serde_json::json;
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::{
    CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, Role, TokenInfo,
};
use tessera_proto::time::to_proto_duration;

use crate::client_config::{ClientConfig, ClientFlags};
use crate::connect::{self, Connection};
use crate::exit::{CliError, Exit};
use crate::paths;
use crate::report::table::table;

/// `tessera token` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it, alone, on stdout (it is shown only this once).
    ///
    /// Roles: `reader` (read the CAS and action cache, watch jobs), `developer` (reader plus
    /// uploads, Execute and `tessera run`; never writes the action cache directly), `ci`
    /// (developer plus action-cache writes and --on-behalf-of), `agent` (the agent session and
    /// the CAS, nothing else), `admin` (everything, tokens and the audit log included).
    Create(CreateArgs),
    /// List tokens (not their secrets): name, role, instances, created, expires, revoked,
    /// created by.
    List(ListArgs),
    /// Revoke a token by name: its next call is refused, a running agent session included.
    Revoke(RevokeArgs),
}

/// `--role`: what a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Read the CAS and the action cache, watch jobs, status.
    Reader,
    /// `reader` plus uploads, Execute and jobs.
    Developer,
    /// `developer` plus action-cache writes and naming who a job runs for.
    Ci,
    /// An agent: its session plus CAS reads and writes.
    Agent,
    /// Everything.
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Reader => Role::Reader,
            RoleArg::Developer => Role::Developer,
            RoleArg::Ci => Role::Ci,
            RoleArg::Agent => Role::Agent,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// `tessera token create` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// What the token may do.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// The token's name, unique among live tokens: 1 to 64 letters, digits, `.`, `_`, `-`, `@`
    /// (jobs it submits are recorded under it).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// An instance name the token is good for; repeatable [default: all instances].
    #[arg(long = "instance", value_name = "I")]
    pub instances: Vec<String>,
    /// Expire the token after this long, e.g. "90d" or "12h" [default: never].
    #[arg(long, value_name = "DURATION", value_parser = tessera_config::parse_duration)]
    pub expires: Option<Duration>,
    /// Coordinator, admin token and TLS.
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera token list` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Also list revoked and expired tokens.
    #[arg(long)]
    pub all: bool,
    /// One JSON object a line for each token.
    #[arg(long)]
    pub json: bool,
    /// Coordinator, admin token and TLS.
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera token revoke` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RevokeArgs {
    /// The token's name.
    pub name: String,
    /// Coordinator, admin token and TLS.
    #[command(flatten)]
    pub client: ClientFlags,
}

/// `tessera token ...`.
pub async fn token(command: TokenCommand) -> Result<Exit, CliError> {
    match command {
        TokenCommand::Create(args) => create(args).await,
        TokenCommand::List(args) => list(args).await,
        TokenCommand::Revoke(args) => revoke(args).await,
    }
}

/// The Admin service of the configured coordinator (or the embedded cluster).
pub async fn admin(
    flags: &ClientFlags,
) -> Result<(Connection, AdminClient<tessera_net::client::Link>), CliError> {
    let config = ClientConfig::from_process(flags)?;
    let connection = connect::existing(&config, &paths::cache_dir()).await?;
    let client = AdminClient::new(connection.link.clone());
    Ok((connection, client))
}

async fn create(args: CreateArgs) -> Result<Exit, CliError> {
    let (connection, mut admin) = admin(&args.client).await?;
    let response = admin
        .create_token(CreateTokenRequest {
            name: args.name.clone(),
            role: Role::from(args.role) as i32,
            instances: args.instances.clone(),
            expires_in: args.expires.map(to_proto_duration),
        })
        .await
        .map_err(|s| connection.failed("CreateToken", &s))?
        .into_inner();
    if response.token.is_empty() {
        return Err(CliError::infra(
            "the coordinator created the token but sent no secret; revoke it (`tessera token \
             revoke NAME`) and create it again",
        ));
    }
    println!("{}", response.token);
    if let Some(info) = &response.info {
        eprintln!(
            "tessera: created token {} ({}); it is shown only this once",
            info.name,
            describe(info)
        );
    }
    Ok(Exit::Success)
}

async fn list(args: ListArgs) -> Result<Exit, CliError> {
    let (connection, mut admin) = admin(&args.client).await?;
    let tokens = admin
        .list_tokens(ListTokensRequest { all: args.all })
        .await
        .map_err(|s| connection.failed("ListTokens", &s))?
        .into_inner()
        .tokens;
    if args.json {
        for info in &tokens {
            println!("{}", token_json(info));
        }
    } else {
        print!("{}", token_table(&tokens));
    }
    Ok(Exit::Success)
}

async fn revoke(args: RevokeArgs) -> Result<Exit, CliError> {
    let (connection, mut admin) = admin(&args.client).await?;
    admin
        .revoke_token(RevokeTokenRequest {
            name: args.name.clone(),
        })
        .await
        .map_err(|s| connection.failed("RevokeToken", &s))?;
    println!("revoked token {}", args.name);
    Ok(Exit::Success)
}

/// A role as users write it (`ci`), `-` when unknown.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Reader => "reader",
        Role::Developer => "developer",
        Role::Ci => "ci",
        Role::Agent => "agent",
        Role::Admin => "admin",
        Role::Unspecified => "-",
    }
}

/// A protobuf timestamp as RFC 3339 UTC to the second; `-` when absent or out of range.
pub fn time_text(time: Option<&prost_types::Timestamp>) -> String {
    time.and_then(system_time)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// A protobuf timestamp as a `SystemTime`, if it is one.
pub fn system_time(time: &prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(time.seconds).ok()?;
    let nanos = u32::try_from(time.nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn instances_text(info: &TokenInfo) -> String {
    if info.instances.is_empty() {
        "all".to_owned()
    } else {
        info.instances.join(",")
    }
}

/// `role ci, instances all, expires 2025-01-01T00:00:00Z`.
fn describe(info: &TokenInfo) -> String {
    let expires = match &info.expires {
        Some(t) => format!("expires {}", time_text(Some(t))),
        None => "never expires".to_owned(),
    };
    format!(
        "role {}, instances {}, {expires}",
        role_name(info.role()),
        instances_text(info)
    )
}

/// One token as JSON: `name`, `role`, `instances` (empty: all), `created`, `expires`,
/// `revoked` (RFC 3339, null when absent), `created_by`.
pub fn token_json(info: &TokenInfo) -> serde_json::Value {
    let time = |t: Option<&prost_types::Timestamp>| {
        t.map(|t| time_text(Some(t)))
            .map_or(serde_json::Value::Null, serde_json::Value::from)
    };
    json!({
        "name": info.name,
        "role": role_name(info.role()),
        "instances": info.instances,
        "created": time(info.created.as_ref()),
        "expires": time(info.expires.as_ref()),
        "revoked": time(info.revoked.as_ref()),
        "created_by": info.created_by,
    })
}

/// The tokens as a table.
pub fn token_table(tokens: &[TokenInfo]) -> String {
    if tokens.is_empty() {
        return "no tokens\n".to_owned();
    }
    let mut rows = vec![
        [
            "NAME",
            "ROLE",
            "INSTANCES",
            "CREATED",
            "EXPIRES",
            "REVOKED",
            "CREATED BY",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for info in tokens {
        rows.push(vec![
            info.name.clone(),
            role_name(info.role()).to_owned(),
            instances_text(info),
            time_text(info.created.as_ref()),
            time_text(info.expires.as_ref()),
            time_text(info.revoked.as_ref()),
            if info.created_by.is_empty() {
                "-".to_owned()
            } else {
                info.created_by.clone()
            },
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use super::*;

    #[test]
    fn tokens_list_as_a_table_and_as_json() {
        let tokens = vec![
            TokenInfo {
                name: "admin".into(),
                role: Role::Admin as i32,
                created: Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                ..TokenInfo::default()
            },
            TokenInfo {
                name: "nightly".into(),
                role: Role::Ci as i32,
                instances: vec!["main".into(), "release".into()],
                created: Some(Timestamp {
                    seconds: 1_700_000_100,
                    nanos: 0,
                }),
                expires: Some(Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 0,
                }),
                created_by: "admin".into(),
                ..TokenInfo::default()
            },
        ];
        let text = token_table(&tokens);
        assert_eq!(
            text,
            "NAME     ROLE   INSTANCES     CREATED               EXPIRES               REVOKED  CREATED BY\n\
             admin    admin  all           2023-11-14T22:13:20Z  -                     -        -\n\
             nightly  ci     main,release  2023-11-14T22:15:00Z  2027-01-15T08:00:00Z  -        admin\n"
        );
        let json = token_json(&tokens[1]);
        assert_eq!(json["role"], "ci");
        assert_eq!(json["instances"][1], "release");
        assert_eq!(json["revoked"], serde_json::Value::Null);
        assert_eq!(json["expires"], "2027-01-15T08:00:00Z");
        assert_eq!(
            describe(&tokens[1]),
            "role ci, instances main,release, expires 2027-01-15T08:00:00Z"
        );
        assert_eq!(token_table(&[]), "no tokens\n");
    }

    #[test]
    fn a_bad_timestamp_is_a_dash() {
        let bad = Timestamp {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(time_text(Some(&bad)), "-");
        assert_eq!(time_text(None), "-");
    }
}
