//! Agent protocol versions: a real coordinator refuses a Hello of another protocol version,
//! saying which versions meet; an agent refused for good exits with the reason instead of
//! retrying in silence; any other refusal is retried.

use tessera_agent::AgentError;
use tessera_coordinator::{Coordinator, CoordinatorConfig};
use tessera_proto::AGENT_PROTOCOL_VERSION;
use tessera_proto::tessera::v1::agent_message::Kind as AgentKind;
use tessera_proto::tessera::v1::agent_session_client::AgentSessionClient;
use tessera_proto::tessera::v1::coordinator_message::Kind as CoordinatorKind;
use tessera_proto::tessera::v1::{AgentMessage, CoordinatorMessage, Hello};
use tonic::Code;

use crate::harness::{FakeCoordinator, PATIENCE, TestAgent};

/// Says `hello` to a coordinator at `endpoint`; returns everything it answers until it ends
/// the stream.
async fn say_hello(endpoint: &str, hello: Hello) -> Vec<CoordinatorMessage> {
    let mut client = AgentSessionClient::connect(endpoint.to_owned())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(AgentMessage {
        kind: Some(AgentKind::Hello(hello)),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    // `tx` stays open: the coordinator, not the agent, ends this stream.
    while let Some(message) = tokio::time::timeout(PATIENCE, inbound.message())
        .await
        .expect("the coordinator neither answered nor closed the stream")
        .unwrap()
    {
        answers.push(message);
    }
    drop(tx);
    answers
}

fn refusal(answers: &[CoordinatorMessage]) -> (Code, &str) {
    match answers {
        [
            CoordinatorMessage {
                kind: Some(CoordinatorKind::Refused(status)),
            },
        ] => (Code::from(status.code), status.message.as_str()),
        other => panic!("expected one refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_coordinator_refuses_an_agent_of_another_protocol_naming_the_versions() {
    let data = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&CoordinatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().join("data"),
        ..CoordinatorConfig::default()
    })
    .await
    .expect("coordinator starts");
    let endpoint = format!("http://{}", coordinator.local_addr());
    let release = env!("CARGO_PKG_VERSION");

    let older = Hello {
        agent_id: "a1".into(),
        slots: 1,
        version: "0.1.0".into(),
        protocol_version: 1,
        ..Hello::default()
    };
    let answers = say_hello(&endpoint, older).await;
    let (code, message) = refusal(&answers);
    assert_eq!(code, Code::FailedPrecondition);
    assert_eq!(
        message,
        format!(
            "agent \"a1\" speaks agent protocol 1 (tessera 0.1.0); this coordinator (tessera \
             {release}) speaks protocol {AGENT_PROTOCOL_VERSION} only: run agents from the \
             coordinator's release (see README \"Upgrading a fleet\")"
        )
    );

    // An agent from before version checks sends no protocol version at all.
    let ancient = Hello {
        agent_id: "a0".into(),
        slots: 1,
        version: "0.0.9".into(),
        ..Hello::default()
    };
    let answers = say_hello(&endpoint, ancient).await;
    let (code, message) = refusal(&answers);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(
        message.starts_with(
            "agent \"a0\" speaks agent protocol 0, from before version checks (tessera 0.0.9); "
        ),
        "{message}"
    );

    coordinator.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_agent_refused_for_good_exits_with_the_reason() {
    let coordinator = FakeCoordinator::start().await;
    coordinator.refuse_next(Code::FailedPrecondition, "speaks protocol 9 only");
    let agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let error = agent.exited().await.expect_err("a refused agent fails");
    assert!(
        matches!(&error, AgentError::Refused(message) if message == "speaks protocol 9 only"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "the coordinator refused this agent: speaks protocol 9 only"
    );
}

#[tokio::test]
async fn other_refusals_are_retried() {
    let mut coordinator = FakeCoordinator::start().await;
    coordinator.refuse_next(Code::Unavailable, "not now");
    let agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let link = coordinator.link().await;
    assert_eq!(link.hello.agent_id, "test-agent");
    agent.stop().await;
}
