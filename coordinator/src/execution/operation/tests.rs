use std::time::Duration;

use tessera_proto::longrunning::operation;

use super::*;

fn stamp() -> Stamp {
    Stamp {
        instant: Instant::now(),
        unix_ms: 1_700_000_000_000,
    }
}

fn queued(attempts: u32) -> OpState {
    OpState::Queued { attempts }
}

fn leased(attempt: u32) -> OpState {
    OpState::Leased {
        agent: "a".into(),
        attempt,
        deadline: stamp().instant,
    }
}

fn done() -> OpState {
    OpState::Done {
        attempts: 1,
        response: Box::default(),
        completed_unix_ms: 1,
        completed_at: stamp().instant,
    }
}

/// One of every event.
fn events() -> Vec<OpEvent> {
    let deadline = stamp().instant + Duration::from_secs(10);
    vec![
        OpEvent::Leased {
            agent: "b".into(),
            deadline,
        },
        OpEvent::Recovered {
            agent: "b".into(),
            deadline,
        },
        OpEvent::Heartbeat { deadline },
        OpEvent::Refused,
        OpEvent::Requeued,
        OpEvent::Finished {
            response: Box::default(),
            at: stamp(),
        },
        OpEvent::Cancelled { at: stamp() },
    ]
}

fn name(event: &OpEvent) -> &'static str {
    match event {
        OpEvent::Leased { .. } => "leased",
        OpEvent::Recovered { .. } => "recovered",
        OpEvent::Heartbeat { .. } => "heartbeat",
        OpEvent::Refused => "refused",
        OpEvent::Requeued => "requeued",
        OpEvent::Finished { .. } => "finished",
        OpEvent::Cancelled { .. } => "cancelled",
    }
}

/// A row of the transition table: state label, state, event name, and what follows (`None`
/// for an illegal pair, else the kind of state and its attempts).
type Row = (
    &'static str,
    OpState,
    &'static str,
    Option<(&'static str, u32)>,
);

/// What each (state, event) pair gives: the attempts after it, and the kind of state, or
/// `None` for an illegal pair. Every pair is listed.
#[test]
fn every_state_and_event_pair() {
    // (state label, state, event name, expected: None = illegal, Some((kind, attempts)))
    let table: Vec<Row> = vec![
        ("queued(0)", queued(0), "leased", Some(("leased", 1))),
        ("queued(0)", queued(0), "recovered", None),
        ("queued(0)", queued(0), "heartbeat", None),
        ("queued(0)", queued(0), "refused", None),
        ("queued(0)", queued(0), "requeued", None),
        ("queued(0)", queued(0), "finished", None),
        ("queued(0)", queued(0), "cancelled", Some(("done", 0))),
        ("queued(2)", queued(2), "leased", Some(("leased", 3))),
        ("queued(2)", queued(2), "recovered", Some(("leased", 2))),
        ("queued(2)", queued(2), "heartbeat", None),
        ("queued(2)", queued(2), "refused", None),
        ("queued(2)", queued(2), "requeued", None),
        ("queued(2)", queued(2), "finished", None),
        ("queued(2)", queued(2), "cancelled", Some(("done", 2))),
        ("leased(2)", leased(2), "leased", None),
        ("leased(2)", leased(2), "recovered", None),
        ("leased(2)", leased(2), "heartbeat", Some(("leased", 2))),
        ("leased(2)", leased(2), "refused", Some(("queued", 1))),
        ("leased(2)", leased(2), "requeued", Some(("queued", 2))),
        ("leased(2)", leased(2), "finished", Some(("done", 2))),
        ("leased(2)", leased(2), "cancelled", Some(("done", 2))),
        ("done", done(), "leased", None),
        ("done", done(), "recovered", None),
        ("done", done(), "heartbeat", None),
        ("done", done(), "refused", None),
        ("done", done(), "requeued", None),
        ("done", done(), "finished", None),
        ("done", done(), "cancelled", None),
    ];
    // The table covers every event for every state it lists.
    for label in ["queued(0)", "queued(2)", "leased(2)", "done"] {
        let covered: Vec<&str> = table
            .iter()
            .filter(|row| row.0 == label)
            .map(|row| row.2)
            .collect();
        let all: Vec<&str> = events().iter().map(name).collect();
        assert_eq!(covered, all, "{label}");
    }
    for (label, state, event_name, expected) in table {
        let event = events()
            .into_iter()
            .find(|e| name(e) == event_name)
            .unwrap();
        let got = transition(&state, event.clone());
        match (expected, got) {
            (None, Err(error)) => {
                assert_eq!(error.state, state);
                assert_eq!(error.event, event);
            }
            (Some((kind, attempts)), Ok(next)) => {
                let (got_kind, got_attempts) = match &next {
                    OpState::Queued { attempts } => ("queued", *attempts),
                    OpState::Leased { attempt, .. } => ("leased", *attempt),
                    OpState::Done { attempts, .. } => ("done", *attempts),
                };
                assert_eq!(
                    (got_kind, got_attempts),
                    (kind, attempts),
                    "{label} + {event_name}"
                );
            }
            (expected, got) => panic!("{label} + {event_name}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[test]
fn leases_and_heartbeats_carry_their_agent_and_deadline() {
    let later = stamp().instant + Duration::from_secs(60);
    let s = transition(
        &queued(0),
        OpEvent::Leased {
            agent: "x".into(),
            deadline: later,
        },
    )
    .unwrap();
    assert!(
        matches!(&s, OpState::Leased { agent, attempt: 1, deadline } if agent == "x" && *deadline == later)
    );
    let even_later = later + Duration::from_secs(5);
    let s = transition(
        &s,
        OpEvent::Heartbeat {
            deadline: even_later,
        },
    )
    .unwrap();
    assert!(
        matches!(&s, OpState::Leased { agent, attempt: 1, deadline } if agent == "x" && *deadline == even_later)
    );
}

#[test]
fn cancelling_answers_cancelled_by_the_client() {
    let s = transition(&queued(0), OpEvent::Cancelled { at: stamp() }).unwrap();
    let OpState::Done { response, .. } = s else {
        panic!("not done: {s:?}");
    };
    let status = response.status.unwrap();
    assert_eq!(status.code, tonic::Code::Cancelled as i32);
    assert_eq!(status.message, "cancelled by the client");
}

fn spec() -> OperationRecord {
    OperationRecord {
        name: "operations/abc".into(),
        instance_name: "main".into(),
        priority: 3,
        requester: "r".into(),
        created_unix_ms: 5,
        timeout_ms: 1000,
        ..Default::default()
    }
}

#[test]
fn the_record_is_derived_from_the_state() {
    let now = stamp();
    let mut op = Operation::new(spec(), Platform::default());
    assert_eq!(op.record(), spec());
    op.apply(OpEvent::Leased {
        agent: "agent-1".into(),
        deadline: now.instant,
    })
    .unwrap();
    let record = op.record();
    assert_eq!((record.attempts, record.leased_to.as_str()), (1, "agent-1"));
    assert_eq!(op.lease(), Some(("abc#1".to_owned(), "agent-1")));
    op.apply(OpEvent::Requeued).unwrap();
    let record = op.record();
    assert_eq!((record.attempts, record.leased_to.as_str()), (1, ""));
    op.apply(OpEvent::Leased {
        agent: "agent-2".into(),
        deadline: now.instant,
    })
    .unwrap();
    op.apply(OpEvent::Finished {
        response: Box::default(),
        at: now,
    })
    .unwrap();
    let record = op.record();
    assert!(record.done);
    assert_eq!(record.attempts, 2);
    assert_eq!(record.completed_unix_ms, now.unix_ms);
    assert_eq!(record.response, Some(ExecuteResponse::default()));
    assert_eq!(record.name, "operations/abc");
    assert_eq!(record.priority, 3);
}

#[test]
fn an_illegal_event_leaves_the_state_alone() {
    let mut op = Operation::new(spec(), Platform::default());
    assert!(op.apply(OpEvent::Requeued).is_err());
    assert_eq!(op.state(), &OpState::Queued { attempts: 0 });
}

#[test]
fn restored_records_resume_where_they_were() {
    let now = stamp();
    let timeout = Duration::from_secs(30);
    // Leased when the coordinator stopped: the same lease, valid for another lease timeout.
    let mut record = spec();
    record.attempts = 2;
    record.leased_to = "agent-7".into();
    let op = Operation::restore(record.clone(), now, timeout);
    assert_eq!(
        op.state(),
        &OpState::Leased {
            agent: "agent-7".into(),
            attempt: 2,
            deadline: now.instant + timeout,
        }
    );
    assert_eq!(op.record(), record);
    // Queued again after one attempt.
    record.leased_to.clear();
    record.attempts = 1;
    let op = Operation::restore(record.clone(), now, timeout);
    assert_eq!(op.state(), &OpState::Queued { attempts: 1 });
    assert_eq!(op.record(), record);
    // Finished: kept with its answer.
    record.done = true;
    record.completed_unix_ms = 42;
    record.response = Some(ExecuteResponse::default());
    let op = Operation::restore(record.clone(), now, timeout);
    assert!(op.is_done());
    assert_eq!(op.record(), record);
    assert_eq!(op.snapshot().stage, execution_stage::Value::Completed);
}

#[test]
fn snapshots_never_set_operation_error() {
    let snap = OpSnapshot {
        name: "operations/x".into(),
        stage: execution_stage::Value::Completed,
        action_digest: ProtoDigest::default(),
        digest_function: 1,
        response: Some(ExecuteResponse::default()),
        partial: Vec::new(),
    };
    let op = snap.to_operation();
    assert!(op.done);
    assert!(matches!(op.result, Some(operation::Result::Response(_))));
}
