//! Following a job to its end: Jobs.Watch from the start (or from the last event seen, when a
//! lost stream is re-attached with backoff, through a restart of the coordinator too), every
//! event handed to the views once, as the tally passes it (`report/tally.rs`: each test once),
//! and Ctrl-C turned into Jobs.Cancel.

use std::time::Duration;

use tessera_net::client::Link;
use tessera_proto::tessera::v1::jobs_client::JobsClient;
use tessera_proto::tessera::v1::{CancelJobRequest, WatchJobRequest};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::connect;
use crate::exit::{CliError, transport_failure};
use crate::report::{EventSink, Tally};

/// How long re-attaching goes on without hearing from the coordinator before giving up: long
/// enough for a coordinator to be restarted (by hand, or by systemd after a crash).
const REATTACH_FOR: Duration = Duration::from_secs(90);
/// First wait before re-attaching; doubles each time, up to [`REATTACH_BACKOFF_MAX`].
const REATTACH_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between two re-attachments.
const REATTACH_BACKOFF_MAX: Duration = Duration::from_secs(3);
/// How long to wait for the finished event after asking to cancel.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// SIGINT (Ctrl-C) and SIGTERM, either of which interrupts a run.
#[derive(Debug)]
pub struct Interrupt {
    int: Signal,
    term: Signal,
}

impl Interrupt {
    /// Starts listening for both signals.
    pub fn listen() -> Result<Self, CliError> {
        let handler =
            |kind| signal(kind).map_err(|e| CliError::infra(format!("cannot handle signals: {e}")));
        Ok(Self {
            int: handler(SignalKind::interrupt())?,
            term: handler(SignalKind::terminate())?,
        })
    }

    /// The next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// How following a job ended.
#[derive(Debug)]
pub enum WatchEnd {
    /// The job finished (the tally has its finished event).
    Finished(Tally),
    /// The user interrupted; the job was asked to cancel.
    Interrupted(Tally),
}

/// Follows `job_id` on `jobs` (the coordinator at `url`), showing events on `sinks`, until it
/// finishes or `interrupt` fires (then cancels it and waits a little for its end).
pub async fn follow(
    jobs: &mut JobsClient<Link>,
    url: &str,
    job_id: &str,
    sinks: &mut [&mut dyn EventSink],
    interrupt: &mut Interrupt,
) -> Result<WatchEnd, CliError> {
    let mut tally = Tally::new(job_id);
    let mut lost = Lost::default();
    let mut cancel_deadline: Option<tokio::time::Instant> = None;
    loop {
        let opened = tokio::select! {
            opened = jobs.watch(WatchJobRequest {
                job_id: job_id.to_owned(),
                after_seq: tally.last_seq,
            }) => opened,
            _ = interrupt.recv(), if cancel_deadline.is_none() => {
                cancel_deadline = Some(cancel(jobs, job_id, sinks).await);
                continue;
            }
        };
        let mut stream = match opened {
            Ok(response) => response.into_inner(),
            Err(status) if is_final(&status) => {
                return Err(connect::call_failed(url, "Watch", &status));
            }
            Err(status) => {
                lost.retry_or_give_up(url, job_id, &status, sinks).await?;
                continue;
            }
        };
        let broken = loop {
            let deadline = cancel_deadline;
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(event)) => {
                        lost = Lost::default();
                        let applied = tally.apply(event);
                        if let Some(note) = &applied.note {
                            for sink in sinks.iter_mut() {
                                sink.note(note);
                            }
                        }
                        if let Some(event) = &applied.event {
                            for sink in sinks.iter_mut() {
                                sink.event(event, &tally);
                            }
                        }
                        if tally.finished.is_some() {
                            for sink in sinks.iter_mut() {
                                sink.close(&tally);
                            }
                            return Ok(if cancel_deadline.is_some() {
                                WatchEnd::Interrupted(tally)
                            } else {
                                WatchEnd::Finished(tally)
                            });
                        }
                    }
                    Ok(None) => break tonic::Status::unavailable("the watch stream ended before the job"),
                    Err(status) => break status,
                },
                _ = interrupt.recv() => {
                    if cancel_deadline.is_some() {
                        // A second Ctrl-C: stop waiting.
                        return Ok(WatchEnd::Interrupted(tally));
                    }
                    cancel_deadline = Some(cancel(jobs, job_id, sinks).await);
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    for sink in sinks.iter_mut() {
                        sink.note("the job did not confirm the cancel in time");
                        sink.close(&tally);
                    }
                    return Ok(WatchEnd::Interrupted(tally));
                }
            }
        };
        if is_final(&broken) {
            return Err(connect::call_failed(url, "Watch", &broken));
        }
        lost.retry_or_give_up(url, job_id, &broken, sinks).await?;
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Errors that re-attaching cannot fix.
fn is_final(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::NotFound
            | tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
    )
}

/// Re-attaching after the watch stream was lost: since when, and how many tries.
#[derive(Debug, Default)]
struct Lost {
    since: Option<tokio::time::Instant>,
    tries: u32,
}

impl Lost {
    /// Waits before the next try (backing off), or gives up once [`REATTACH_FOR`] has passed
    /// without an event: one line saying why and how to follow the job again.
    async fn retry_or_give_up(
        &mut self,
        url: &str,
        job_id: &str,
        status: &tonic::Status,
        sinks: &mut [&mut dyn EventSink],
    ) -> Result<(), CliError> {
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        let cause = match transport_failure(status) {
            Some(cause) => format!("cannot reach the coordinator at {url}: {cause}"),
            None => status.message().to_owned(),
        };
        if since.elapsed() > REATTACH_FOR {
            return Err(CliError::infra(format!(
                "lost the job's watch stream and could not re-attach for {}s ({cause}); \
                 the job may still run: `tessera watch {job_id}` follows it again",
                REATTACH_FOR.as_secs()
            )));
        }
        self.tries += 1;
        let wait = REATTACH_BACKOFF
            .saturating_mul(2u32.saturating_pow(self.tries - 1))
            .min(REATTACH_BACKOFF_MAX);
        for sink in sinks.iter_mut() {
            sink.note(&format!(
                "watch stream lost ({cause}); re-attaching in {} ms",
                wait.as_millis()
            ));
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

async fn cancel(
    jobs: &mut JobsClient<Link>,
    job_id: &str,
    sinks: &mut [&mut dyn EventSink],
) -> tokio::time::Instant {
    for sink in sinks.iter_mut() {
        sink.note(&format!("interrupted: cancelling job {job_id}"));
    }
    let request = CancelJobRequest {
        job_id: job_id.to_owned(),
    };
    match tokio::time::timeout(Duration::from_secs(2), jobs.cancel(request)).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => {
            for sink in sinks.iter_mut() {
                sink.note(&format!("cancel failed: {}", status.message()));
            }
        }
        Err(_) => {
            for sink in sinks.iter_mut() {
                sink.note("cancel timed out");
            }
        }
    }
    tokio::time::Instant::now() + CANCEL_GRACE
}
