//! A coordinator you can put on a network (issue 12), shown with real processes: `tessera
//! coordinator` with TLS (certificates made by `openssl`, [`Pki`]) and `--auth tokens`,
//! `tessera agent`s with agent tokens over `https://`, `tessera run`, `tessera token` and
//! `tessera audit` as a user types them, and gRPC calls made directly for the cases a client
//! would never send.
//!
//! - the whole path: tokens created with the CLI, agents joining, a run with a developer
//!   token, and the audit log naming each of them;
//! - bad input and role boundaries, one table: the status, its message, nothing visible
//!   afterwards, a `denied` audit entry; job ownership and `--on-behalf-of`;
//! - Bazel 4.2.3 over `grpcs://` with a token: a ci token writes the action cache, a
//!   developer token's local results never reach it;
//! - a revoked agent token ends the agent's session; mutual TLS for agents; certificates
//!   rotated with SIGHUP during a run; a "laptop" in its own network namespace configured by
//!   its client config file alone.
//!
//! A missing `openssl` (or, for the namespace, root) fails under CI and skips otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_net::client::{self, ClientAuth, Link, Token};
use tessera_proto::reapi::action_cache_client::ActionCacheClient;
use tessera_proto::reapi::batch_update_blobs_request;
use tessera_proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_proto::reapi::{
    ActionResult, BatchUpdateBlobsRequest, ExecuteRequest, FindMissingBlobsRequest,
    GetActionResultRequest, UpdateActionResultRequest,
};
use tessera_proto::tessera::v1::admin_client::AdminClient;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{
    AuditEntry, CancelJobRequest, CreateTokenRequest, JobSpec, ListTokensRequest, ReadAuditRequest,
    Role as ProtoRole, StatusRequest, SubmitJobRequest,
};
use tessera_runners::{CommandRunner, RunnerConfig};
use tessera_tests::{AgentProcess, Pki, ServerProcess, free_port, lines, visible_tempdir};
use tonic::{Code, Request, Status};

/// A suite of two quick tests for `tessera run --runner command`.
const QUICK_SUITE: &str = "case \"$1\" in\n\
    list) echo first; echo second;;\n\
    run) shift; for t in \"$@\"; do echo \"ran $t\"; done;;\n\
    esac\n";

/// A coordinator process with TLS (CA `ca`, certificate `server` of its [`Pki`]) and
/// `--auth tokens`, reached at `https://localhost:PORT`, and the admin token it wrote.
struct Secure {
    /// Declared first: agents stop before the coordinator does.
    agents: Vec<AgentProcess>,
    server: ServerProcess,
    pki: Pki,
    /// `https://localhost:PORT`.
    url: String,
    admin: String,
    /// Scratch: data, agents' work directories, token files, projects.
    dir: TempDir,
}

impl Secure {
    /// A coordinator on loopback with the standard PKI and `extra` flags; `None` when openssl
    /// is missing outside CI.
    fn start(extra: &[&str]) -> Option<Secure> {
        let pki = Pki::standard(&[])?;
        let addr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Some(Secure::start_with(pki, addr, extra))
    }

    /// A coordinator on `addr` with `pki`'s `server` certificate, tokens and `extra` flags.
    fn start_with(pki: Pki, addr: std::net::SocketAddr, extra: &[&str]) -> Secure {
        let dir = visible_tempdir();
        let data_dir = dir.path().join("data");
        let cert = pki.cert("server");
        let key = pki.key("server");
        let mut args = vec![
            "--auth",
            "tokens",
            "--tls-cert",
            cert.to_str().expect("utf-8 path"),
            "--tls-key",
            key.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        let server = ServerProcess::start_on(addr, &data_dir, &args, &[]);
        let admin_file = data_dir.join("admin-token");
        let admin = std::fs::read_to_string(&admin_file)
            .unwrap_or_else(|e| panic!("{}: {e}", admin_file.display()))
            .trim()
            .to_owned();
        assert!(admin.starts_with("tsr_"), "admin token {:?}", admin.len());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&admin_file)
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "admin-token is private");
        }
        assert!(
            server.log.count(&admin_file.display().to_string()) > 0,
            "the log says where the admin token is"
        );
        assert_eq!(server.log.count(&admin), 0, "the log never shows a token");
        Secure {
            agents: Vec::new(),
            url: format!("https://localhost:{}", addr.port()),
            server,
            pki,
            admin,
            dir,
        }
    }

    /// `tessera ARGS` as a user on this machine runs it: `TESSERA_TOKEN` set to `token` (if
    /// any), no other `TESSERA_*` variable, no client config file, `--coordinator` and
    /// `--tls-ca` after `args` when `connect` is set.
    fn tessera(&self, args: &[&str], token: Option<&str>) -> Command {
        let mut command = Command::new(tessera_tests::tessera_bin());
        command.args(args).stdin(Stdio::null());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TESSERA_") {
                command.env_remove(name);
            }
        }
        command
            .env("XDG_CONFIG_HOME", self.dir.path().join("no-config"))
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"));
        if let Some(token) = token {
            command.env("TESSERA_TOKEN", token);
        }
        command
    }

    /// `tessera SUBCOMMAND... --coordinator URL --tls-ca CA` with `token`: its output.
    fn client(&self, args: &[&str], token: Option<&str>) -> Output {
        self.tessera(args, token)
            .arg("--coordinator")
            .arg(&self.url)
            .arg("--tls-ca")
            .arg(self.pki.cert("ca"))
            .output()
            .expect("run tessera")
    }

    /// `tessera token create --role ROLE --name NAME EXTRA` with the admin token: the new
    /// token. Its stdout must be exactly the token and a newline.
    fn create_token(&self, role: &str, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["token", "create", "--role", role, "--name", name];
        args.extend_from_slice(extra);
        let out = self.client(&args, Some(&self.admin));
        assert!(out.status.success(), "token create: {}", transcript(&out));
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        let token = stdout
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("no final newline: {stdout:?}"));
        assert!(
            token.starts_with("tsr_") && !token.contains(char::is_whitespace),
            "stdout is the token alone: {stdout:?}"
        );
        token.to_owned()
    }

    /// Writes `token` to `DIR/NAME.token` and returns the path.
    fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&path, format!("{token}\n")).expect("write the token file");
        path
    }

    /// Starts `tessera agent` with id `id`, 2 slots, `token` in a token file, the CA and
    /// `extra` flags; waits until it has connected.
    async fn add_agent(&mut self, id: &str, token: &str, extra: &[&str]) {
        let agent = self.spawn_agent(id, token, extra);
        agent
            .log
            .wait_for(lines::AGENT_CONNECTED, Duration::from_secs(30))
            .await;
        self.agents.push(agent);
    }

    /// Starts `tessera agent` like [`Secure::add_agent`] without waiting for it.
    fn spawn_agent(&self, id: &str, token: &str, extra: &[&str]) -> AgentProcess {
        let token_file = self.token_file(id, token);
        let ca = self.pki.cert("ca");
        let mut args = vec![
            "--token-file",
            token_file.to_str().expect("utf-8 path"),
            "--tls-ca",
            ca.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        AgentProcess::start(&self.url, &self.dir.path().join(id), id, 2, &args)
    }

    /// A gRPC link over TLS that sends `token` (none: no `authorization` header).
    async fn link(&self, token: Option<&str>) -> Link {
        let auth = ClientAuth {
            tls_ca: Some(self.pki.cert("ca")),
            token: token.map(|t| Token::new(t.to_owned()).expect("a valid token")),
            ..ClientAuth::default()
        };
        let channel = client::endpoint(&self.url, &auth)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect over TLS");
        client::link(channel, &auth)
    }

    /// The admin's Admin client.
    async fn admin(&self) -> AdminClient<Link> {
        AdminClient::new(self.link(Some(&self.admin)).await)
    }

    /// The whole audit log, read with the admin token over gRPC.
    async fn audit(&self) -> Vec<AuditEntry> {
        self.admin()
            .await
            .read_audit(ReadAuditRequest::default())
            .await
            .expect("read the audit log")
            .into_inner()
            .entries
    }

    /// A project directory `DIR/NAME` holding `suite.sh` = `script`.
    fn project(&self, name: &str, script: &str) -> PathBuf {
        let project = self.dir.path().join(name);
        std::fs::create_dir_all(&project).expect("project dir");
        std::fs::write(project.join("suite.sh"), script).expect("write suite.sh");
        project
    }

    /// `tessera run --json [EXTRA] --runner command ... -- sh suite.sh run {tests}` in
    /// `project`, with `token`.
    fn run_command(&self, project: &Path, token: &str, extra: &[&str]) -> Command {
        let mut command = self.tessera(&["run", "--json"], Some(token));
        command
            .arg("--coordinator")
            .arg(&self.url)
            .arg("--tls-ca")
            .arg(self.pki.cert("ca"))
            .args(extra)
            .args(run_suite_args())
            .current_dir(project);
        command
    }
}

/// The runner arguments of the suites here.
fn run_suite_args() -> [&'static str; 9] {
    [
        "--runner",
        "command",
        "--list-command",
        "sh suite.sh list",
        "--",
        "sh",
        "suite.sh",
        "run",
        "{tests}",
    ]
}

/// A process's exit status, stdout and stderr, for failure messages.
fn transcript(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `finished` line of a `tessera run --json` output.
fn finished_line(stdout: &[u8]) -> serde_json::Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "finished")
        .unwrap_or(serde_json::Value::Null)
}

/// Whether `entries` has one with `action`, token name `token` and `object`.
fn has_entry(entries: &[AuditEntry], action: &str, token: &str, object: &str) -> bool {
    entries
        .iter()
        .any(|e| e.action == action && e.token == token && e.object == object)
}

/// The audit log as lines, for failure messages.
fn show(entries: &[AuditEntry]) -> String {
    entries
        .iter()
        .map(|e| {
            format!(
                "{} token={} role={} object={} allowed={} detail={}",
                e.action, e.token, e.role, e.object, e.allowed, e.detail
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_agents_and_a_run_over_tls_are_all_in_the_audit_log() {
    let Some(mut cluster) = Secure::start(&[]) else {
        return;
    };
    let agent_1 = cluster.create_token("agent", "agent-1", &[]);
    let agent_2 = cluster.create_token("agent", "agent-2", &[]);
    let developer = cluster.create_token("developer", "dev-ann", &[]);
    let _ci = cluster.create_token("ci", "ci-nightly", &[]);
    let _reader = cluster.create_token("reader", "reader-bob", &[]);

    cluster.add_agent("agent-1", &agent_1, &[]).await;
    cluster.add_agent("agent-2", &agent_2, &[]).await;

    let project = cluster.project("security-quick", QUICK_SUITE);
    let out = cluster
        .run_command(&project, &developer, &[])
        .output()
        .expect("tessera run");
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let finished = finished_line(&out.stdout);
    assert_eq!(finished["result"], "passed", "{}", transcript(&out));
    let job_id = finished["job_id"].as_str().unwrap_or_default().to_owned();

    // `tessera audit --json` as the admin runs it.
    let out = cluster.client(&["audit", "--json"], Some(&cluster.admin));
    assert!(out.status.success(), "{}", transcript(&out));
    let entries: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |action: &str, token: &str, object: &str| {
        entries.iter().find(|e| {
            e["action"] == action
                && e["token"] == token
                && (object.is_empty() || e["object"] == object)
        })
    };
    let log = String::from_utf8_lossy(&out.stdout);
    for name in ["agent-1", "agent-2", "dev-ann", "ci-nightly", "reader-bob"] {
        let entry = find("token.create", "admin", name)
            .unwrap_or_else(|| panic!("no token.create of {name}:\n{log}"));
        assert_eq!(entry["role"], "admin", "{entry}");
        assert_eq!(entry["allowed"], true, "{entry}");
    }
    for agent in ["agent-1", "agent-2"] {
        let entry = find("agent.join", agent, agent)
            .unwrap_or_else(|| panic!("no agent.join of {agent}:\n{log}"));
        assert_eq!(entry["role"], "agent", "{entry}");
        assert!(
            entry["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{entry}"
        );
    }
    let entry = find("job.submit", "dev-ann", &job_id)
        .unwrap_or_else(|| panic!("no job.submit of {job_id} by dev-ann:\n{log}"));
    assert_eq!(entry["role"], "developer", "{entry}");
    for token in [&agent_1, &agent_2, &developer, &cluster.admin] {
        assert!(!log.contains(token.as_str()), "the audit log shows a token");
        assert_eq!(
            cluster.server.log.count(token),
            0,
            "the coordinator logged a token"
        );
    }
}
