//! The agent's credentials: it sends its token with the session, and a coordinator that
//! refuses the token (UNAUTHENTICATED or PERMISSION_DENIED), when the agent connects or in the
//! middle of a session, stops the agent with what to do instead of retrying forever.

use tessera_agent::AgentError;
use tonic::Status;

use crate::harness::{FakeCoordinator, TestAgent};

/// The advice a refused agent's error must carry.
const ADVICE: &str = "tessera token create --role agent";

#[tokio::test]
async fn the_agent_sends_its_token_file_with_the_session() {
    let mut coordinator = FakeCoordinator::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("agent-token");
    std::fs::write(&token_file, "tsr_agent_secret\n").unwrap();
    let agent = TestAgent::start(&coordinator.endpoint, |c| c.token_file = Some(token_file));
    let link = coordinator.link().await;
    assert_eq!(
        link.authorization.as_deref(),
        Some("Bearer tsr_agent_secret")
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_refused_token_stops_the_agent_with_what_to_do() {
    for (status, cause) in [
        (Status::unauthenticated("token revoked"), "Unauthenticated"),
        (
            Status::permission_denied("role developer may not join as an agent"),
            "PermissionDenied",
        ),
    ] {
        let coordinator = FakeCoordinator::start().await;
        coordinator.reject_next(status.clone());
        let agent = TestAgent::start(&coordinator.endpoint, |_| {});
        let error = agent.exited().await.expect_err("a refused agent fails");
        let AgentError::Refused(message) = &error else {
            panic!("{error:?}");
        };
        assert!(message.contains(status.message()), "{message}");
        assert!(message.contains(cause), "{message}");
        assert!(message.contains(ADVICE), "{message}");
    }
}

#[tokio::test]
async fn a_token_revoked_during_the_session_stops_the_agent() {
    let mut coordinator = FakeCoordinator::start().await;
    let agent = TestAgent::start(&coordinator.endpoint, |_| {});
    let mut link = coordinator.link().await;
    link.fail(Status::unauthenticated("token \"agent-1\" was revoked"))
        .await;
    let error = agent.exited().await.expect_err("a revoked agent fails");
    let message = error.to_string();
    assert!(
        message.contains("was revoked") && message.contains(ADVICE),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreadable_token_file_fails_at_start_naming_it() {
    let coordinator = FakeCoordinator::start().await;
    let agent = TestAgent::start(&coordinator.endpoint, |c| {
        c.token_file = Some("/nonexistent/agent-token".into());
    });
    let error = agent.exited().await.expect_err("no token, no start");
    assert!(matches!(error, AgentError::Client(_)), "{error:?}");
    assert!(
        error.to_string().contains("/nonexistent/agent-token"),
        "{error}"
    );
}
