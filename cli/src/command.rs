//! `tessera`'s command line: the parser, its subcommands with their `--help` texts, and the one
//! `match` that runs each. The commands themselves live in [`crate::commands`].

use clap::{Parser, Subcommand};

use crate::commands::agent::{self, AgentArgs};
use crate::commands::audit::{self, AuditArgs};
use crate::commands::backup::{self, BackupArgs, RestoreArgs};
use crate::commands::coordinator::{self, CoordinatorArgs};
use crate::commands::logs::{self, LogsArgs};
use crate::commands::quarantine::{self, QuarantineCommand};
use crate::commands::run::{self, RunArgs, WatchArgs};
use crate::commands::status::{self, CancelArgs, StatusArgs};
use crate::commands::token::{self, TokenCommand};
use crate::commands::tunnel::{self, TunnelArgs};
use crate::commands::up::{self, UpArgs};
use crate::commands::webhook::{self, WebhookCommand};
use crate::exit::{CliError, EXIT_CODES_HELP, Exit};
use crate::{logging, spec};
use tessera_coordinator::LogFormat;

/// The `tessera` command line.
#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a distributed build and test runner with a Remote Execution API v2 cache",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A `tessera` subcommand and its flags.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a test suite on the fleet: snapshot the working tree, submit it, show progress and
    /// failures, exit with the result.
    ///
    /// `tessera run -- cargo test`, `-- cargo nextest run`, `-- pytest -k fast`, `-- go test
    /// ./...`, or any command with `--runner command --list-command CMD -- RUN TEMPLATE` (the
    /// template names {tests} or {tests_file}). The project root (git top level, else the
    /// current directory) is seen at /var/tmp/tessera/<its name> on every agent. Without a
    /// coordinator (--coordinator, TESSERA_COORDINATOR or the client config file), the run
    /// joins the embedded cluster of `tessera up` or starts one for its duration. Ctrl-C (or
    /// SIGTERM) cancels the job and exits 130.
    ///
    /// Client config file: $XDG_CONFIG_HOME/tessera/config.toml (else
    /// ~/.config/tessera/config.toml; TESSERA_CLIENT_CONFIG names another), keys `coordinator`
    /// (a URL or a list tried in order), `token_file`, `tls_ca`, `tls_client_cert`,
    /// `tls_client_key`; relative paths are from the file's directory. TESSERA_COORDINATOR,
    /// TESSERA_TOKEN (the token itself), TESSERA_TOKEN_FILE, TESSERA_TLS_CA,
    /// TESSERA_TLS_CLIENT_CERT and TESSERA_TLS_CLIENT_KEY override it, and the flags override
    /// those. Every client command (watch, cancel, status, logs, token, audit) reads it.
    #[command(after_help = EXIT_CODES_HELP)]
    Run(RunArgs),
    /// Follow a job (again) from its first event, shown like `tessera run`, with the same exit
    /// codes.
    #[command(after_help = EXIT_CODES_HELP)]
    Watch(WatchArgs),
    /// Cancel a job.
    Cancel(CancelArgs),
    /// Jobs, agents and the queue of a coordinator.
    Status(StatusArgs),
    /// Print the whole output of each run of one test of a job (events keep its head and tail
    /// only, at most --output-limit bytes).
    Logs(LogsArgs),
    /// Create, list and revoke the coordinator's tokens (needs an `admin` token: TESSERA_TOKEN,
    /// --token-file or the client config file).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Add, list and remove webhook subscriptions (needs an `admin` token): signed JSON (or
    /// Slack) POSTs for job.finished, job.failed, test.flaky, branch.broken, branch.fixed,
    /// agent.lost and queue.stalled, from a durable outbox with retries for 24 h.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Read the coordinator's audit log: job submit and cancel, action-cache writes, token
    /// create and revoke, agent join and leave, denied calls; with time, token, role, peer,
    /// instance and object (needs an `admin` token).
    Audit(AuditArgs),
    /// Quarantine flaky tests of a project (run inside its checkout, or give --project): a
    /// quarantined test still runs and reports its true outcome, but its failure does not fail
    /// the job. Changes need an `admin` or `ci` token when auth is on and are audited.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Back a coordinator up while it serves: a consistent snapshot of its metadata (action
    /// cache, jobs, test history, tokens, audit log) and every blob that the kept action-cache
    /// entries and jobs need, written to --to DIR on this machine (needs an `admin` token when
    /// auth is on).
    ///
    /// Each backup is a snapshot under DIR/snapshots/<UTC time> with a manifest and a
    /// checksum per file; blobs are shared by the snapshots in DIR, so only blobs DIR lacks are
    /// copied. An entry whose blobs were already evicted is left out (and said so), so
    /// everything in the backup has its blobs. The coordinator keeps the backup's blobs from
    /// eviction until the copy ends. For daily backups by the coordinator itself, see
    /// `tessera coordinator --backup-dir DIR --backup-interval 24h`.
    Backup(BackupArgs),
    /// Restore a coordinator's state from a backup directory into a new data directory, then
    /// start the coordinator on it.
    ///
    /// Every checksum of the snapshot (the newest, or --snapshot NAME) is verified before
    /// anything is written: a damaged backup is refused with the first bad file named (exit
    /// 2), and so is a data directory that already holds a coordinator's state. Stop the
    /// coordinator first; restore into an empty directory, then point --data-dir at it.
    Restore(RestoreArgs),
    /// Forward a local plain-text port to a TLS coordinator, for REAPI clients that cannot do
    /// TLS themselves.
    ///
    /// Debian's bazel-bootstrap (Bazel 4.2.3) cannot use grpcs://: its netty's JDK TLS provider
    /// lacks ALPN ("JDK provider does not support ALPN protocol" in OUTPUT_BASE/java.log, exit
    /// 37). Run `tessera tunnel --coordinator https://HOST:PORT --tls-ca ca.pem` and point
    /// Bazel at grpc://127.0.0.1:8981 with its usual --remote_header=authorization=Bearer
    /// TOKEN: the header goes through the tunnel unchanged. The tunnel listens on loopback
    /// only, so the plain-text hop never leaves this machine; each connection gets its own TLS
    /// connection to the coordinator, verified against the CA and the URL's host name. The
    /// client certificate for mutual TLS comes from TESSERA_TLS_CLIENT_CERT and
    /// TESSERA_TLS_CLIENT_KEY or the client config file (see `tessera run --help`). Ctrl-C or
    /// SIGTERM stops it (exit 0); bad settings (a non-loopback --listen, an http:// URL, an
    /// unreadable CA) exit 2, a port already in use exits 3.
    Tunnel(TunnelArgs),
    /// Run an embedded cluster in the foreground: a coordinator and local agents on loopback,
    /// with state under the user cache directory; `tessera run` on this machine uses it.
    /// Ctrl-C or SIGTERM stops it.
    Up(UpArgs),
    /// Run the coordinator: REAPI CAS, ByteStream, ActionCache, Execution, Operations and
    /// Capabilities, plus the agent protocol, on one port.
    ///
    /// Point Bazel at it with `--remote_cache=grpc://HOST:PORT` or
    /// `--remote_executor=grpc://HOST:PORT` (start agents with `tessera agent`). Settings come
    /// from defaults, then --config FILE, then TESSERA_* environment variables, then these
    /// flags.
    Coordinator(CoordinatorArgs),
    /// Run an agent: connect to a coordinator and run the actions it leases.
    ///
    /// Settings come from defaults, then --config FILE, then TESSERA_AGENT_* (and
    /// TESSERA_COORDINATOR) environment variables, then these flags. SIGTERM or Ctrl-C drains:
    /// no new leases, running ones finish and are reported; a second signal stops them at once.
    Agent(AgentArgs),
}

impl Command {
    /// Runs the command. The servers set up their own logging (after their configuration is
    /// loaded, in its format); the client commands log warnings only.
    pub async fn run(self) -> Result<Exit, CliError> {
        match self {
            Command::Coordinator(args) => coordinator::coordinator(args).await,
            Command::Agent(args) => agent::agent(args).await,
            Command::Up(args) => up::up(args).await,
            Command::Run(args) => {
                logging::init_client(args.otlp_endpoint.as_deref())?;
                let title = spec::title(&std::env::args().skip(1).collect::<Vec<_>>());
                run::run(args, format!("tessera {title}")).await
            }
            Command::Watch(args) => {
                logging::init_client(None)?;
                run::watch(args).await
            }
            Command::Cancel(args) => {
                logging::init_client(None)?;
                status::cancel(args).await
            }
            Command::Status(args) => {
                logging::init_client(None)?;
                status::status(args).await
            }
            Command::Logs(args) => {
                logging::init_client(None)?;
                logs::logs(args).await
            }
            Command::Token(command) => {
                logging::init_client(None)?;
                token::token(command).await
            }
            Command::Webhook(command) => {
                logging::init_client(None)?;
                webhook::webhook(command).await
            }
            Command::Audit(args) => {
                logging::init_client(None)?;
                audit::audit(args).await
            }
            Command::Quarantine(command) => {
                logging::init_client(None)?;
                quarantine::quarantine(command).await
            }
            Command::Backup(args) => {
                logging::init_client(None)?;
                backup::backup(args).await
            }
            Command::Restore(args) => {
                logging::init_client(None)?;
                backup::restore(args).await
            }
            Command::Tunnel(args) => {
                // A long-running command: its start line and failed connections are logged.
                logging::init_server(LogFormat::Text, "tessera-tunnel", None)?;
                tunnel::tunnel(args).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn token_create_takes_the_contract_flags() {
        let cli = Cli::try_parse_from([
            "tessera",
            "token",
            "create",
            "--coordinator",
            "https://ci.example:9090",
            "--role",
            "ci",
            "--name",
            "nightly",
            "--instance",
            "main",
            "--instance",
            "release",
            "--expires",
            "30d",
        ])
        .unwrap();
        let Command::Token(TokenCommand::Create(args)) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.role, token::RoleArg::Ci);
        assert_eq!(args.name, "nightly");
        assert_eq!(args.instances, ["main", "release"]);
        assert_eq!(
            args.expires,
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(
            args.client.coordinator.as_deref(),
            Some("https://ci.example:9090")
        );
        let err = Cli::try_parse_from([
            "tessera", "token", "create", "--role", "root", "--name", "x",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), Exit::Usage as i32);
    }

    #[test]
    fn client_commands_share_the_client_flags() {
        for command in [
            &["status"][..],
            &["cancel", "J"],
            &["watch", "J"],
            &["logs", "J", "T"],
            &["audit"],
            &["quarantine", "list"],
            &["quarantine", "add", "g t"],
            &["quarantine", "remove", "t"],
            &["token", "list"],
            &["token", "revoke", "N"],
        ] {
            let mut argv = vec!["tessera"];
            argv.extend_from_slice(command);
            argv.extend([
                "--coordinator",
                "https://c:1",
                "--token-file",
                "t",
                "--tls-ca",
                "ca.pem",
            ]);
            assert!(Cli::try_parse_from(&argv).is_ok(), "{argv:?}");
        }
        let cli = Cli::try_parse_from([
            "tessera",
            "run",
            "--secret-env",
            "API_KEY",
            "--secret-env",
            "DB_PASSWORD",
            "--on-behalf-of",
            "ann",
            "--",
            "cargo",
            "test",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.secret_env, ["API_KEY", "DB_PASSWORD"]);
        assert_eq!(args.on_behalf_of.as_deref(), Some("ann"));
    }

    #[test]
    fn tunnel_listens_on_loopback_by_default() {
        let cli = Cli::try_parse_from([
            "tessera",
            "tunnel",
            "--coordinator",
            "https://build.example.com:8980",
            "--tls-ca",
            "ca.pem",
        ])
        .unwrap();
        let Command::Tunnel(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.listen.to_string(), tunnel::DEFAULT_LISTEN);
        assert_eq!(
            args.coordinator.as_deref(),
            Some("https://build.example.com:8980")
        );
        let err = Cli::try_parse_from(["tessera", "tunnel", "--token-file", "t"]).unwrap_err();
        assert_eq!(
            err.exit_code(),
            Exit::Usage as i32,
            "the client's own token goes through; the tunnel takes none"
        );
    }

    #[test]
    fn duration_flags_share_the_config_parser() {
        let cli = Cli::try_parse_from(["tessera", "agent", "--drain-timeout", "10m"]).unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(
            args.drain_timeout,
            Some(std::time::Duration::from_secs(600))
        );
        let err = Cli::try_parse_from(["tessera", "agent", "--drain-timeout", "soon"]).unwrap_err();
        assert_eq!(err.exit_code(), Exit::Usage as i32);
        assert!(
            err.to_string().contains(tessera_config::DURATION_HINT),
            "{err}"
        );
    }
}
