//! Traces across the three processes (issue 13): an OTLP/gRPC receiver in this test process
//! (the collector's `TraceService`, from the OpenTelemetry protos), a `tessera coordinator` and
//! a `tessera agent` exporting to it with `--otlp-endpoint`, and a `tessera run
//! --otlp-endpoint` of a small suite. The job's spans from the client, the coordinator and
//! the agent share one trace id and form one tree: a single root (the client's `tessera run`),
//! every other span's parent in the same trace, and the hops that cross processes (client to
//! coordinator, coordinator to agent, agent back to the coordinator's CAS) linked parent to
//! child.
//!
//! A REAPI client that sends no trace context (Bazel 4.2 sends none) still gets one trace per
//! action: the coordinator's `Execution/Execute` span is its root, the agent's action its
//! child.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tessera_cas::client::CasClient;
use tessera_cas::digest::DigestFunction;
use tessera_proto::reapi::ExecuteRequest;
use tessera_proto::reapi::execution_client::ExecutionClient;
use tessera_tests::{AgentProcess, ServerProcess, response_of, upload_action, visible_tempdir};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use super::metrics::{QUICK_SUITE, suite_run};

/// How long the spans get to arrive (the servers export every 5 s, the client at exit).
const DEADLINE: Duration = Duration::from_secs(40);

/// One received span: the service that sent it and its ids.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

/// The collector: keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().expect("collector lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace: span.trace_id,
                        id: span.span_id,
                        parent: span.parent_span_id,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves the collector on a free loopback port; returns its address.
    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    fn snapshot(&self) -> Vec<Received> {
        self.spans.lock().expect("collector lock").clone()
    }
}

/// The spans of the client's `tessera run` trace, once it forms a whole tree holding spans of
/// all three services; `Err` says what is still missing.
fn job_trace(spans: &[Received]) -> Result<Vec<Received>, String> {
    let root = spans
        .iter()
        .find(|s| s.service == "tessera-cli" && s.name == "tessera run")
        .ok_or("no `tessera run` span from tessera-cli yet")?;
    let trace: Vec<Received> = spans
        .iter()
        .filter(|s| s.trace == root.trace)
        .cloned()
        .collect();
    let ids: HashSet<&[u8]> = trace.iter().map(|s| s.id.as_slice()).collect();
    let orphans: Vec<String> = trace
        .iter()
        .filter(|s| !s.parent.is_empty() && !ids.contains(s.parent.as_slice()))
        .map(|s| format!("{}:{}", s.service, s.name))
        .collect();
    if !orphans.is_empty() {
        return Err(format!("spans whose parent has not arrived: {orphans:?}"));
    }
    for (service, name) in [
        ("tessera-coordinator", "job"),
        ("tessera-coordinator", "batch step"),
        ("tessera-agent", "action"),
        ("tessera-agent", "command"),
    ] {
        if !trace.iter().any(|s| s.service == service && s.name == name) {
            return Err(format!("no `{name}` span from {service} in the trace yet"));
        }
    }
    Ok(trace)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_jobs_spans_from_client_coordinator_and_agent_form_one_tree() {
    let dir = visible_tempdir();
    let collector = Collector::default();
    let otlp = format!("http://{}", collector.serve().await);
    let server = ServerProcess::start(&dir.path().join("data"), &["--otlp-endpoint", &otlp]);
    let _agent = AgentProcess::start_connected(
        &server.endpoint(),
        &dir.path().join("agent"),
        "traced",
        2,
        &["--otlp-endpoint", &otlp],
    )
    .await;

    let project = dir.path().join("project");
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::write(project.join("suite.sh"), QUICK_SUITE).expect("suite.sh");
    let run = suite_run(
        dir.path(),
        &project,
        &server.endpoint(),
        &["--otlp-endpoint", &otlp],
    )
    .output()
    .expect("tessera run");
    assert!(
        run.status.success(),
        "tessera run: {}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    let started = Instant::now();
    let trace = loop {
        match job_trace(&collector.snapshot()) {
            Ok(trace) => break trace,
            Err(missing) if started.elapsed() > DEADLINE => panic!(
                "the job's trace is not whole after {DEADLINE:?}: {missing}; received: {:#?}",
                collector
                    .snapshot()
                    .iter()
                    .map(|s| format!("{} {} {}", s.service, s.name, hex(&s.trace)))
                    .collect::<Vec<_>>()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };

    // One root: the client's run.
    let roots: Vec<&Received> = trace.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root, got {roots:#?}");
    assert_eq!(
        (roots[0].service.as_str(), roots[0].name.as_str()),
        ("tessera-cli", "tessera run")
    );
    // Each hop between processes is a parent-child link.
    let by_id: HashMap<&[u8], &Received> = trace.iter().map(|s| (s.id.as_slice(), s)).collect();
    let parent_of = |s: &Received| by_id.get(s.parent.as_slice()).copied();
    let crossings: HashSet<(&str, &str)> = trace
        .iter()
        .filter_map(|s| {
            let parent = parent_of(s)?;
            (parent.service != s.service).then_some((parent.service.as_str(), s.service.as_str()))
        })
        .collect();
    for hop in [
        ("tessera-cli", "tessera-coordinator"),
        ("tessera-coordinator", "tessera-agent"),
        ("tessera-agent", "tessera-coordinator"),
    ] {
        assert!(
            crossings.contains(&hop),
            "no span of {} is the child of one of {}: crossings {crossings:?}",
            hop.1,
            hop.0
        );
    }
    // The agent's action hangs from the coordinator's step, which hangs from the job.
    let action = trace
        .iter()
        .find(|s| s.service == "tessera-agent" && s.name == "action")
        .expect("agent action span");
    let step = parent_of(action).expect("the action's parent");
    assert!(step.name.ends_with(" step"), "action's parent: {step:?}");
    assert_eq!(parent_of(step).map(|s| s.name.as_str()), Some("job"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reapi_action_without_a_trace_context_is_traced_from_the_execute_call() {
    let dir = visible_tempdir();
    let collector = Collector::default();
    let otlp = format!("http://{}", collector.serve().await);
    let server = ServerProcess::start(&dir.path().join("data"), &["--otlp-endpoint", &otlp]);
    let _agent = AgentProcess::start_connected(
        &server.endpoint(),
        &dir.path().join("agent"),
        "traced",
        1,
        &["--otlp-endpoint", &otlp],
    )
    .await;
    let cas = CasClient::connect(&server.endpoint(), "", DigestFunction::Sha256)
        .await
        .expect("connect the CAS client");
    let action = upload_action(&cas, &["/bin/true"], &[], &[], true).await;
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut stream = ExecutionClient::new(channel)
        .execute(ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .expect("execute accepted")
        .into_inner();
    loop {
        let op = stream
            .next()
            .await
            .expect("the stream lasts until the action is done")
            .expect("the stream does not fail");
        if let Some(response) = response_of(&op) {
            assert_eq!(response.status.unwrap_or_default().code, 0);
            break;
        }
    }

    let started = Instant::now();
    let (execute, action) = loop {
        let spans = collector.snapshot();
        let execute = spans
            .iter()
            .find(|s| s.service == "tessera-coordinator" && s.name == "Execution/Execute");
        let action = spans
            .iter()
            .find(|s| s.service == "tessera-agent" && s.name == "action");
        if let (Some(execute), Some(action)) = (execute, action) {
            break (execute.clone(), action.clone());
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no Execute span from the coordinator or no action span from the agent after \
             {DEADLINE:?}: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(execute.parent.is_empty(), "the Execute call is the root");
    assert_eq!(action.trace, execute.trace, "one trace for the action");
    assert_eq!(
        action.parent, execute.id,
        "the agent's action is the call's child"
    );
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
