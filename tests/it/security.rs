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
//! - Bazel 4.2.3 over TLS with a token: a ci token writes the action cache, a developer
//!   token's local results never reach it (Debian's Bazel cannot do `grpcs://` itself: its
//!   netty has no ALPN; the test checks that this is the reason and goes through `tessera
//!   tunnel`, as the README tells users of that Bazel to);
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
use tessera_tests::{
    AgentProcess, ChildLog, Pki, ServerProcess, free_port, lines, visible_tempdir, wait_exit,
};
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
    /// Whether the coordinator requires client certificates: the CLI and gRPC clients here
    /// then present `client` (agents get theirs explicitly).
    mutual: bool,
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
        let mutual = args.contains(&"--tls-client-ca");
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
            url: if addr.ip().is_loopback() {
                format!("https://localhost:{}", addr.port())
            } else {
                format!("https://{addr}")
            },
            server,
            pki,
            admin,
            mutual,
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
        if self.mutual {
            command
                .env("TESSERA_TLS_CLIENT_CERT", self.pki.cert("client"))
                .env("TESSERA_TLS_CLIENT_KEY", self.pki.key("client"));
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
            client_cert: self.mutual.then(|| self.pki.cert("client")),
            client_key: self.mutual.then(|| self.pki.key("client")),
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

/// A blob only this case writes: its digest (proto) and bytes.
fn blob(case: &str) -> (tessera_proto::reapi::Digest, Vec<u8>) {
    let data = format!("security test blob for {case}").into_bytes();
    (DigestFunction::Sha256.digest_of(&data).to_proto(), data)
}

/// Whether the admin sees `digest` missing from instance `instance`'s CAS.
async fn missing(cluster: &Secure, instance: &str, digest: &tessera_proto::reapi::Digest) -> bool {
    let missing = ContentAddressableStorageClient::new(cluster.link(Some(&cluster.admin)).await)
        .find_missing_blobs(FindMissingBlobsRequest {
            instance_name: instance.to_owned(),
            blob_digests: vec![digest.clone()],
            digest_function: DigestFunction::Sha256.to_proto(),
        })
        .await
        .expect("admin FindMissingBlobs")
        .into_inner()
        .missing_blob_digests;
    missing.contains(digest)
}

/// Whether the admin finds no action-cache entry for `digest`.
async fn ac_absent(cluster: &Secure, digest: &tessera_proto::reapi::Digest) -> bool {
    let got = ActionCacheClient::new(cluster.link(Some(&cluster.admin)).await)
        .get_action_result(GetActionResultRequest {
            action_digest: Some(digest.clone()),
            digest_function: DigestFunction::Sha256.to_proto(),
            ..Default::default()
        })
        .await;
    match got {
        Err(status) if status.code() == Code::NotFound => true,
        Err(status) => panic!("admin GetActionResult: {status:?}"),
        Ok(_) => false,
    }
}

fn batch_update(instance: &str, case: &str) -> BatchUpdateBlobsRequest {
    let (digest, data) = blob(case);
    BatchUpdateBlobsRequest {
        instance_name: instance.to_owned(),
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(digest),
            data: data.into(),
            ..Default::default()
        }],
        digest_function: DigestFunction::Sha256.to_proto(),
    }
}

fn update_ac(case: &str) -> UpdateActionResultRequest {
    UpdateActionResultRequest {
        action_digest: Some(blob(case).0),
        action_result: Some(ActionResult {
            exit_code: 0,
            stdout_raw: b"poisoned".to_vec().into(),
            ..Default::default()
        }),
        digest_function: DigestFunction::Sha256.to_proto(),
        ..Default::default()
    }
}

/// One call a role may not make.
#[derive(Debug, Clone, Copy)]
enum Call {
    /// BatchUpdateBlobs of the case's blob on instance "".
    UploadBlob,
    /// BatchUpdateBlobs of the case's blob on instance "b".
    UploadBlobOnB,
    /// FindMissingBlobs on instance "b".
    FindMissingOnB,
    /// UpdateActionResult for the case's digest.
    WriteActionCache,
    /// GetActionResult.
    ReadActionCache,
    /// Execute.
    Execute,
    /// Jobs.Submit.
    SubmitJob,
    /// Admin.CreateToken.
    CreateToken,
    /// Admin.ReadAudit.
    ReadAudit,
}

/// Makes `call` over `link`; `case` names what it writes.
async fn make(call: Call, link: Link, case: &str) -> Result<(), Status> {
    let sha256 = DigestFunction::Sha256.to_proto();
    match call {
        Call::UploadBlob => ContentAddressableStorageClient::new(link)
            .batch_update_blobs(batch_update("", case))
            .await
            .map(drop),
        Call::UploadBlobOnB => ContentAddressableStorageClient::new(link)
            .batch_update_blobs(batch_update("b", case))
            .await
            .map(drop),
        Call::FindMissingOnB => ContentAddressableStorageClient::new(link)
            .find_missing_blobs(FindMissingBlobsRequest {
                instance_name: "b".to_owned(),
                blob_digests: vec![blob(case).0],
                digest_function: sha256,
            })
            .await
            .map(drop),
        Call::WriteActionCache => ActionCacheClient::new(link)
            .update_action_result(update_ac(case))
            .await
            .map(drop),
        Call::ReadActionCache => ActionCacheClient::new(link)
            .get_action_result(GetActionResultRequest {
                action_digest: Some(blob(case).0),
                digest_function: sha256,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::Execute => ExecutionClient::new(link)
            .execute(ExecuteRequest {
                action_digest: Some(blob(case).0),
                digest_function: sha256,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::SubmitJob => JobsClient::new(link)
            .submit(SubmitJobRequest {
                spec: Some(JobSpec::default()),
            })
            .await
            .map(drop),
        Call::CreateToken => AdminClient::new(link)
            .create_token(CreateTokenRequest {
                name: format!("made-by-{case}"),
                role: ProtoRole::Admin as i32,
                ..Default::default()
            })
            .await
            .map(drop),
        Call::ReadAudit => AdminClient::new(link)
            .read_audit(ReadAuditRequest::default())
            .await
            .map(drop),
    }
}

/// A job of one test that sleeps `secs` seconds, uploaded with `cas`.
async fn sleeping_job(cas: &CasClient, name: &str, secs: u32) -> JobSpec {
    let dir = tempfile::tempdir().expect("suite dir");
    let script = format!("case \"$1\" in list) echo nap;; *) sleep {secs};; esac\n");
    std::fs::write(dir.path().join("suite.sh"), script).expect("write suite");
    let root = tessera_tests::upload_dir(cas, dir.path()).await;
    let exec_root = format!("/tmp/tessera-it/{name}");
    let sh = |verb: &str| vec!["sh".to_owned(), "suite.sh".to_owned(), verb.to_owned()];
    let runner = CommandRunner::new(&exec_root, sh("list"), {
        let mut run = sh("run");
        run.push("{tests}".to_owned());
        run
    })
    .expect("runner");
    JobSpec {
        digest_function: DigestFunction::Sha256.to_proto(),
        input_root_digest: Some(root.to_proto()),
        runner_json: serde_json::to_string(&RunnerConfig::Command(runner)).expect("json"),
        exec_root,
        // What the client claims is ignored: the token names the submitter.
        submitter: "someone-else".to_owned(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_unauthenticated_and_roles_stop_at_their_boundaries() {
    let Some(cluster) = Secure::start(&[]) else {
        return;
    };
    let expiring = cluster.create_token("developer", "short-lived", &["--expires", "1s"]);
    let created = std::time::Instant::now();
    let revoked = cluster.create_token("developer", "revoked-dev", &[]);
    let out = cluster.client(&["token", "revoke", "revoked-dev"], Some(&cluster.admin));
    assert!(out.status.success(), "{}", transcript(&out));
    let reader = cluster.create_token("reader", "reader", &[]);
    let developer = cluster.create_token("developer", "dev", &[]);
    let ci = cluster.create_token("ci", "ci", &[]);
    let agent = cluster.create_token("agent", "agent", &[]);
    let scoped = cluster.create_token("developer", "scoped-a", &["--instance", "a"]);

    // Real time must pass for the expiry.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(created.elapsed())).await;

    // Bad credentials: UNAUTHENTICATED naming the problem, and the upload did not happen.
    let unknown = format!("Bearer tsr_{}", "0".repeat(64));
    let unauthenticated: [(&str, Option<String>, &str); 6] = [
        ("no-token", None, "no token"),
        (
            "basic",
            Some("Basic dXNlcjpwYXNz".into()),
            "scheme \"Basic\" is not Bearer",
        ),
        (
            "bearer-alone",
            Some("Bearer".into()),
            "expected `Bearer TOKEN`",
        ),
        ("unknown", Some(unknown), "unknown token"),
        (
            "revoked",
            Some(format!("Bearer {revoked}")),
            "token \"revoked-dev\" was revoked at",
        ),
        (
            "expired",
            Some(format!("Bearer {expiring}")),
            "token \"short-lived\" expired at",
        ),
    ];
    let bare = cluster.link(None).await;
    for (case, header, says) in &unauthenticated {
        let mut request = Request::new(batch_update("", case));
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().expect("header value"));
        }
        let status = ContentAddressableStorageClient::new(bare.clone())
            .batch_update_blobs(request)
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert!(status.message().contains(says), "{case}: {status:?}");
        assert!(
            missing(&cluster, "", &blob(case).0).await,
            "{case}: the blob was stored"
        );
    }

    // Known tokens past their role or scope: PERMISSION_DENIED, and nothing changed.
    let denied: [(&str, &str, Call, &str); 12] = [
        (
            "reader",
            &reader,
            Call::UploadBlob,
            "does not allow CAS writes",
        ),
        (
            "reader",
            &reader,
            Call::WriteActionCache,
            "does not allow action cache writes",
        ),
        (
            "reader",
            &reader,
            Call::Execute,
            "does not allow remote execution",
        ),
        (
            "reader",
            &reader,
            Call::SubmitJob,
            "does not allow submitting jobs",
        ),
        (
            "dev",
            &developer,
            Call::WriteActionCache,
            "does not allow action cache writes",
        ),
        (
            "agent",
            &agent,
            Call::ReadActionCache,
            "does not allow action cache reads",
        ),
        (
            "dev",
            &developer,
            Call::CreateToken,
            "does not allow administration",
        ),
        (
            "ci",
            &ci,
            Call::CreateToken,
            "does not allow administration",
        ),
        ("ci", &ci, Call::ReadAudit, "does not allow administration"),
        (
            "agent",
            &agent,
            Call::ReadAudit,
            "does not allow administration",
        ),
        (
            "scoped-a",
            &scoped,
            Call::FindMissingOnB,
            "not allowed on instance \"b\"",
        ),
        (
            "scoped-a",
            &scoped,
            Call::UploadBlobOnB,
            "not allowed on instance \"b\"",
        ),
    ];
    for (name, token, call, says) in denied {
        let case = format!("{name}-{call:?}");
        let status = make(call, cluster.link(Some(token)).await, &case)
            .await
            .expect_err(&case);
        assert_eq!(status.code(), Code::PermissionDenied, "{case}: {status:?}");
        assert!(status.message().contains(says), "{case}: {status:?}");
        assert!(
            status.message().contains(&format!("token \"{name}\"")),
            "{case}: {status:?}"
        );
        let (digest, _) = blob(&case);
        match call {
            Call::UploadBlob => assert!(missing(&cluster, "", &digest).await, "{case}"),
            Call::UploadBlobOnB => assert!(missing(&cluster, "b", &digest).await, "{case}"),
            Call::WriteActionCache => assert!(ac_absent(&cluster, &digest).await, "{case}"),
            _ => {}
        }
    }
    let mut admin = cluster.admin().await;
    let tokens = admin
        .list_tokens(ListTokensRequest { all: true })
        .await
        .expect("list tokens")
        .into_inner()
        .tokens;
    assert!(
        !tokens.iter().any(|t| t.name.starts_with("made-by-")),
        "a non-admin created a token: {tokens:?}"
    );
    let mut jobs = JobsClient::new(cluster.link(Some(&cluster.admin)).await);
    let status = jobs
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(
        status.jobs.is_empty(),
        "a reader submitted a job: {:?}",
        status.jobs
    );

    // Every refusal is in the audit log, by token name where the token was known.
    let entries = cluster.audit().await;
    let refusals: Vec<&AuditEntry> = entries.iter().filter(|e| e.action == "denied").collect();
    for (case, _, says) in &unauthenticated {
        assert!(
            refusals.iter().any(|e| !e.allowed
                && e.detail.contains("Unauthenticated")
                && e.detail.contains(says)),
            "no denied entry for {case}:\n{}",
            show(&entries)
        );
    }
    for (name, _, call, says) in denied {
        assert!(
            refusals.iter().any(|e| e.token == name
                && e.detail.contains("PermissionDenied")
                && e.detail.contains(says)),
            "no denied entry for {name} {call:?}:\n{}",
            show(&entries)
        );
    }
    assert!(
        refusals
            .iter()
            .any(|e| e.token == "scoped-a" && e.instance == "b"),
        "the instance is recorded:\n{}",
        show(&entries)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_jobs_submitter_or_an_admin_cancels_it_and_only_ci_speaks_for_others() {
    let Some(cluster) = Secure::start(&[]) else {
        return;
    };
    let dev_a = cluster.create_token("developer", "dev-a", &[]);
    let dev_b = cluster.create_token("developer", "dev-b", &[]);
    let ci = cluster.create_token("ci", "ci-pipe", &[]);
    let cas = CasClient::from_link(cluster.link(Some(&dev_a)).await, "", DigestFunction::Sha256)
        .await
        .expect("cas client");
    let spec = sleeping_job(&cas, "security-cancel", 30).await;
    // No agent: the jobs wait in the queue, where cancelling them is all that happens.
    let submit = async |token: &str, spec: JobSpec| {
        JobsClient::new(cluster.link(Some(token)).await)
            .submit(SubmitJobRequest { spec: Some(spec) })
            .await
            .map(|r| r.into_inner().job_id)
    };
    let cancel = async |token: &str, job_id: &str| {
        JobsClient::new(cluster.link(Some(token)).await)
            .cancel(CancelJobRequest {
                job_id: job_id.to_owned(),
            })
            .await
            .map(|r| r.into_inner().cancelled)
    };

    let first = submit(&dev_a, spec.clone()).await.expect("dev-a submits");
    let status = cancel(&dev_b, &first)
        .await
        .expect_err("dev-b may not cancel");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("belongs to \"dev-a\""),
        "{status:?}"
    );
    assert!(
        cancel(&dev_a, &first)
            .await
            .expect("dev-a cancels its own job")
    );
    let second = submit(&dev_a, spec.clone()).await.expect("dev-a submits");
    assert!(
        cancel(&cluster.admin, &second)
            .await
            .expect("the admin cancels anyone's job")
    );

    // --on-behalf-of: refused for a developer (the CLI exits 2 naming why), recorded as
    // TOKEN/NAME for ci.
    let status = submit(
        &dev_a,
        JobSpec {
            on_behalf_of: "ann".to_owned(),
            ..spec.clone()
        },
    )
    .await
    .expect_err("a developer may not speak for others");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("--on-behalf-of"), "{status:?}");
    let project = cluster.project("security-behalf", QUICK_SUITE);
    let out = cluster
        .run_command(&project, &dev_a, &["--on-behalf-of", "ann"])
        .output()
        .expect("tessera run");
    assert_eq!(out.status.code(), Some(2), "{}", transcript(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only ci and admin tokens"),
        "{}",
        transcript(&out)
    );
    let third = submit(
        &ci,
        JobSpec {
            on_behalf_of: "ann".to_owned(),
            ..spec.clone()
        },
    )
    .await
    .expect("ci submits for ann");
    let out = cluster.client(&["status", "--json"], Some(&dev_b));
    assert!(out.status.success(), "{}", transcript(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let submitters: BTreeMap<String, String> = status["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| {
            (
                j["job_id"].as_str().unwrap_or_default().to_owned(),
                j["submitter"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        submitters.get(&first).map(String::as_str),
        Some("dev-a"),
        "{status}"
    );
    assert_eq!(
        submitters.get(&third).map(String::as_str),
        Some("ci-pipe/ann"),
        "{status}"
    );
    assert!(
        cancel(&ci, &third)
            .await
            .expect("ci cancels what it submitted")
    );

    let entries = cluster.audit().await;
    assert!(
        has_entry(&entries, "job.cancel", "dev-a", &first),
        "{}",
        show(&entries)
    );
    assert!(
        has_entry(&entries, "job.cancel", "admin", &second),
        "{}",
        show(&entries)
    );
    assert!(
        entries
            .iter()
            .any(|e| e.action == "denied" && e.token == "dev-b" && e.object == "Jobs.Cancel"),
        "{}",
        show(&entries)
    );
    assert!(
        entries.iter().any(|e| e.action == "job.submit"
            && e.object == third
            && e.detail.contains("ci-pipe/ann")),
        "{}",
        show(&entries)
    );
}

/// `tessera tunnel`'s start line, up to the addresses (`cli/src/commands/tunnel.rs`).
const TUNNEL_LISTENING: &str = "tunnel listening on";

/// A `tessera tunnel` child process (killed on drop).
struct TunnelProcess {
    child: std::process::Child,
    /// Where the client connects in plain text: `127.0.0.1:PORT`.
    addr: String,
    log: ChildLog,
}

impl Secure {
    /// Starts `tessera tunnel` to this coordinator on a free loopback port as a user runs it
    /// (`--coordinator URL --tls-ca CA`, no token), and waits until it listens.
    fn start_tunnel(&self) -> TunnelProcess {
        let ca = self.pki.cert("ca");
        let mut child = self
            .tessera(
                &[
                    "tunnel",
                    "--coordinator",
                    &self.url,
                    "--tls-ca",
                    &ca.to_string_lossy(),
                    "--listen",
                    "127.0.0.1:0",
                ],
                None,
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tessera tunnel");
        let log = ChildLog::capture("tunnel", child.stderr.take().expect("piped stderr"));
        let line = log.blocking_wait_for(TUNNEL_LISTENING, Duration::from_secs(30));
        let addr = line
            .split_once("point Bazel at grpc://")
            .map(|(_, addr)| addr.trim().to_owned())
            .unwrap_or_else(|| panic!("the start line names the address: {line}"));
        assert!(
            line.contains(&format!("-> {}", self.url)),
            "the start line names the coordinator: {line}"
        );
        TunnelProcess { child, addr, log }
    }
}

impl TunnelProcess {
    /// SIGTERM: the tunnel stops and exits 0.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid")),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal the tunnel");
        let status = wait_exit(&mut self.child, Duration::from_secs(10))
            .expect("the tunnel exits on SIGTERM");
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for TunnelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the Bazel test builds: genrules (several outputs, a 5 MiB one, a chain) and a
/// directory output; quick to build locally and remotely.
const BAZEL_TARGETS: [&str; 2] = ["//gen/...", "//tree/..."];

#[test]
fn bazel_over_tls_with_tokens_ci_writes_the_action_cache_and_a_developer_cannot() {
    use crate::bazel::{Checkout, assert_all_remote, bazel_or_skip, non_internal, serial};
    let _serial = serial();
    let Some(bazel) = bazel_or_skip() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let Some(mut cluster) = Secure::start(&[]) else {
        return;
    };
    let ci = cluster.create_token("ci", "ci-bazel", &[]);
    let developer = cluster.create_token("developer", "dev-bazel", &[]);
    for id in ["agent-1", "agent-2"] {
        let token = cluster.create_token("agent", id, &[]);
        runtime.block_on(cluster.add_agent(id, &token, &[]));
    }
    let mut checkout = Checkout::new(&bazel, cluster.dir.path(), "bazel");
    let grpcs = format!("grpcs://localhost:{}", cluster.server.addr.port());
    let ca = format!("--tls_certificate={}", cluster.pki.cert("ca").display());
    let header = |token: &str| format!("--remote_header=authorization=Bearer {token}");

    // Bazel's own TLS first. Debian's Bazel 4.2.3 cannot do it (its netty lacks ALPN on the
    // JDK provider); then Bazel goes through `tessera tunnel` to the same port instead, and
    // the rest of the test (tokens, roles, the action cache) holds the same.
    let probe = checkout.run(&[
        "build",
        "//gen:multi",
        &format!("--remote_cache={grpcs}"),
        &ca,
        &header(&developer),
        "--noremote_upload_local_results",
    ]);
    let mut tunnel = None;
    let (endpoint, tls_flag) = if probe.status.success() {
        (grpcs, ca)
    } else {
        let java_log =
            std::fs::read_to_string(cluster.dir.path().join("bazel/output-base/java.log"))
                .unwrap_or_default();
        assert!(
            java_log.contains("JDK provider does not support ALPN protocol"),
            "Bazel failed over grpcs:// for another reason than its missing ALPN: {}\n{}",
            probe.stderr,
            java_log
                .lines()
                .filter(|l| l.contains("Exception"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        println!(
            "bazel: this Bazel cannot do TLS itself (JDK provider does not support ALPN); \
             connecting through `tessera tunnel` to the coordinator's TLS port"
        );
        let started = cluster.start_tunnel();
        let endpoint = format!("grpc://{}", started.addr);
        tunnel = Some(started);
        // A harmless flag in place of --tls_certificate.
        (endpoint, "--remote_retries=0".to_owned())
    };
    let ca = tls_flag;
    let cache = format!("--remote_cache={endpoint}");
    let build = |flags: &[&str]| -> Vec<String> {
        let mut args = vec!["build".to_owned()];
        args.extend(BAZEL_TARGETS.iter().map(|t| (*t).to_owned()));
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        args
    };
    let mut bazel_run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        checkout.run(&args)
    };
    bazel_run(vec!["clean".to_owned()]).ok();

    // 1. Remote execution with a ci token, on its own instance (its action cache is apart
    //    from the default instance's, which the rest of the test is about).
    let remote = bazel_run(build(&[
        &format!("--remote_executor={endpoint}"),
        &ca,
        &header(&ci),
        "--remote_instance_name=rbe",
        "--remote_retries=0",
    ]))
    .ok();
    remote.report("remote execution over TLS with a ci token");
    assert!(assert_all_remote(&remote) >= 5, "{:?}", remote.processes());
    bazel_run(vec!["clean".to_owned()]).ok();

    // 2. A developer's local build with --remote_upload_local_results: it builds, uploads
    //    blobs, and its action-cache writes are refused.
    let dev = bazel_run(build(&[
        &cache,
        &ca,
        &header(&developer),
        "--remote_upload_local_results",
    ]));
    assert!(dev.status.success(), "{}", dev.stderr);
    let dev_counts = dev.processes();
    assert_eq!(dev_counts.get("remote cache hit"), None, "{dev_counts:?}");
    let actions = non_internal(&dev_counts);
    bazel_run(vec!["clean".to_owned()]).ok();

    // 3. The same build with a ci token: no hit (the developer run left nothing), and its
    //    uploads are accepted.
    let ci_run = bazel_run(build(&[
        &cache,
        &ca,
        &header(&ci),
        "--remote_upload_local_results",
    ]))
    .ok();
    let ci_counts = ci_run.processes();
    assert_eq!(
        ci_counts.get("remote cache hit"),
        None,
        "the developer's run wrote the action cache: {ci_counts:?}"
    );
    bazel_run(vec!["clean".to_owned()]).ok();

    // 4. Anyone reading the cache now gets the ci run's results.
    let reread = bazel_run(build(&[
        &cache,
        &ca,
        &header(&developer),
        "--noremote_upload_local_results",
    ]))
    .ok();
    let counts = reread.processes();
    assert_eq!(
        counts.get("remote cache hit").copied(),
        Some(actions),
        "every action answered from what the ci token wrote: {counts:?}"
    );

    let entries = runtime.block_on(cluster.audit());
    assert!(
        entries.iter().any(|e| e.action == "denied"
            && e.token == "dev-bazel"
            && e.object.ends_with("UpdateActionResult")),
        "{}",
        show(&entries)
    );
    assert!(
        entries
            .iter()
            .any(|e| e.action == "ac.update" && e.token == "ci-bazel"),
        "{}",
        show(&entries)
    );
    if let Some(tunnel) = tunnel {
        assert_eq!(
            tunnel.log.count("WARN"),
            0,
            "no connection through the tunnel failed TLS"
        );
        tunnel.stop();
    }
    drop(checkout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_token_ends_the_agents_session() {
    let Some(mut cluster) = Secure::start(&[]) else {
        return;
    };
    let token = cluster.create_token("agent", "doomed", &[]);
    cluster.add_agent("doomed", &token, &[]).await;
    let mut agent = cluster.agents.pop().expect("the agent");

    let out = cluster.client(&["token", "revoke", "doomed"], Some(&cluster.admin));
    assert!(out.status.success(), "{}", transcript(&out));
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("the agent exits once its token is revoked");
    assert!(!status.success(), "{status}");
    let line = agent
        .log
        .wait_for("the coordinator refused this agent", Duration::from_secs(5))
        .await;
    assert!(
        line.contains("token \"doomed\" was revoked at"),
        "the log names the cause: {line}"
    );
    assert_eq!(agent.log.count(&token), 0, "the agent logged its token");

    let entries = cluster.audit().await;
    assert!(
        has_entry(&entries, "token.revoke", "admin", "doomed"),
        "{}",
        show(&entries)
    );
    assert!(
        has_entry(&entries, "agent.leave", "doomed", "doomed"),
        "{}",
        show(&entries)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_an_agent_needs_a_client_certificate_as_well_as_its_token() {
    let Some(pki) = Pki::standard(&[]) else {
        return;
    };
    let client_ca = pki.cert("ca");
    let addr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let client_ca = client_ca.to_str().expect("utf-8 path").to_owned();
    let mut cluster = Secure::start_with(pki, addr, &["--tls-client-ca", &client_ca]);
    let token = cluster.create_token("agent", "fleet", &[]);

    // Its token is good, but without a certificate the handshake fails: it keeps trying.
    let anonymous = cluster.spawn_agent("no-cert", &token, &[]);
    anonymous
        .log
        .wait_for("cannot reach the coordinator", Duration::from_secs(30))
        .await;

    let cert = cluster.pki.cert("client");
    let key = cluster.pki.key("client");
    cluster
        .add_agent(
            "with-cert",
            &token,
            &[
                "--tls-client-cert",
                cert.to_str().expect("utf-8 path"),
                "--tls-client-key",
                key.to_str().expect("utf-8 path"),
            ],
        )
        .await;
    let out = cluster.client(&["status", "--json"], Some(&cluster.admin));
    assert!(out.status.success(), "{}", transcript(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let agents: Vec<&str> = status["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    assert_eq!(agents, ["with-cert"], "{status}");
    assert_eq!(anonymous.log.count(lines::AGENT_CONNECTED), 0);

    // The CLI without a certificate cannot even ask.
    let out = cluster
        .tessera(&["status"], Some(&cluster.admin))
        .env_remove("TESSERA_TLS_CLIENT_CERT")
        .env_remove("TESSERA_TLS_CLIENT_KEY")
        .arg("--coordinator")
        .arg(&cluster.url)
        .arg("--tls-ca")
        .arg(cluster.pki.cert("ca"))
        .output()
        .expect("tessera status");
    assert!(!out.status.success(), "{}", transcript(&out));
}

/// A suite of four tests of 2 s each: about 4 s on an agent with 2 slots.
const SLOW_SUITE: &str = "case \"$1\" in\n\
    list) for t in a b c d; do echo $t; done;;\n\
    run) shift; for t in \"$@\"; do sleep 2; echo \"ran $t\"; done;;\n\
    esac\n";

/// The serial number of the certificate `addr` presents (for `localhost`), read with
/// `openssl s_client` on a new connection.
fn served_serial(addr: std::net::SocketAddr, ca: &Path) -> String {
    let mut s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(s_client.stdout.take().expect("piped stdout"))
        .output()
        .expect("openssl x509");
    let _ = s_client.wait();
    String::from_utf8_lossy(&x509.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_sighup_while_a_run_goes_on() {
    let Some(mut cluster) = Secure::start(&[]) else {
        return;
    };
    let agent_token = cluster.create_token("agent", "agent-1", &[]);
    let developer = cluster.create_token("developer", "dev", &[]);
    cluster.add_agent("agent-1", &agent_token, &[]).await;
    let old_serial = cluster.pki.serial("server");
    let ca = cluster.pki.cert("ca");
    assert_eq!(served_serial(cluster.server.addr, &ca), old_serial);

    let project = cluster.project("security-rotation", SLOW_SUITE);
    let mut run = cluster
        .run_command(&project, &developer, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tessera run");
    cluster.agents[0]
        .log
        .wait_for(lines::LEASE_ACCEPTED, Duration::from_secs(30))
        .await;

    // Mid-run: a new certificate from the same CA in the same files, then SIGHUP.
    cluster
        .pki
        .server("server", "ca", &["localhost", "127.0.0.1"]);
    let new_serial = cluster.pki.serial("server");
    assert_ne!(new_serial, old_serial);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(cluster.server.child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
    assert!(
        run.try_wait().expect("poll tessera run").is_none(),
        "the run was still going when the certificate changed"
    );
    cluster
        .server
        .log
        .wait_for("TLS certificate reloaded", Duration::from_secs(10))
        .await;
    assert_eq!(
        served_serial(cluster.server.addr, &ca),
        new_serial,
        "a new connection gets the new certificate"
    );

    let out = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .expect("join")
        .expect("tessera run");
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    let finished = finished_line(&out.stdout);
    assert_eq!(finished["result"], "passed", "{}", transcript(&out));
    assert_eq!(
        cluster.agents[0].log.count("lost the coordinator"),
        0,
        "the agent's connection survived the reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_laptop_in_its_own_network_namespace_runs_with_its_client_config_alone() {
    let Some(netns) = tessera_tests::Netns::create(9) else {
        assert!(
            !tessera_tests::in_ci(),
            "network namespaces are required under CI (root and iproute2)"
        );
        eprintln!("SKIP: network namespaces need root and iproute2");
        return;
    };
    let Some(pki) = Pki::standard(&[&netns.host_ip]) else {
        return;
    };
    let addr: std::net::SocketAddr = format!("{}:{}", netns.host_ip, free_port())
        .parse()
        .expect("addr");

    // Beyond loopback, no TLS is refused, naming the flag that would allow it.
    let scratch = tempfile::tempdir().expect("scratch");
    let mut plain = ServerProcess::spawn(
        addr,
        &scratch.path().join("data"),
        &["--auth", "tokens"],
        &[],
        "plain",
    );
    let status = tessera_tests::wait_exit(&mut plain.child, Duration::from_secs(30))
        .expect("the coordinator refuses to start");
    assert_eq!(status.code(), Some(2), "{status}");
    plain
        .log
        .wait_for("--insecure-no-tls", Duration::from_secs(5))
        .await;

    let mut cluster = Secure::start_with(pki, addr, &[]);
    assert!(cluster.url.contains(&netns.host_ip), "{}", cluster.url);
    let agent_token = cluster.create_token("agent", "agent-1", &[]);
    let developer = cluster.create_token("developer", "laptop", &[]);
    cluster.add_agent("agent-1", &agent_token, &[]).await;

    // The laptop's config: the coordinator, its token and CA, paths relative to the file.
    let config_home = cluster.dir.path().join("laptop-config");
    let config_dir = config_home.join("tessera");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::copy(cluster.pki.cert("ca"), config_dir.join("ca.pem")).expect("copy the CA");
    std::fs::write(config_dir.join("token"), format!("{developer}\n")).expect("token file");
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "coordinator = \"{}\"\ntoken_file = \"token\"\ntls_ca = \"ca.pem\"\n",
            cluster.url
        ),
    )
    .expect("config.toml");
    let project = cluster.project("security-laptop", QUICK_SUITE);
    let mut laptop = netns.command(tessera_tests::tessera_bin());
    laptop
        .args(["run", "--json"])
        .args(run_suite_args())
        .current_dir(&project)
        .stdin(Stdio::null())
        .env("XDG_CONFIG_HOME", &config_home)
        .env("XDG_CACHE_HOME", cluster.dir.path().join("laptop-cache"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            laptop.env_remove(name);
        }
    }
    let out = tokio::task::spawn_blocking(move || laptop.output())
        .await
        .expect("join")
        .expect("ip netns exec tessera run");
    assert_eq!(out.status.code(), Some(0), "{}", transcript(&out));
    assert_eq!(
        finished_line(&out.stdout)["result"],
        "passed",
        "{}",
        transcript(&out)
    );

    // It came from the namespace, as the laptop's token.
    let entries = cluster.audit().await;
    assert!(
        entries.iter().any(|e| e.action == "job.submit"
            && e.token == "laptop"
            && e.peer.starts_with(&format!("{}:", netns.peer_ip))),
        "{}",
        show(&entries)
    );
}
