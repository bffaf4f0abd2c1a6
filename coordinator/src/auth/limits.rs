//! Per-token limits against abuse: token buckets for Execute calls, job submissions and
//! uploaded bytes, and caps on Execute calls and jobs running at once. A call over a limit gets
//! `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` saying when to try again (Bazel and
//! grpc clients back off on it). Only tokens are limited: with auth off there is one caller,
//! and agents' uploads (outputs) are never counted.
//!
//! A bucket lets a call through when it holds the call's amount (at most the burst) and then
//! charges it in full (it may go below zero), so a blob larger than the burst still passes
//! from a full bucket, and what follows waits until the debt is paid.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use tessera_proto::rpc;
use tonic::{Code, Status};

use super::{Principal, Role};
use crate::config::Limits;

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    credit: f64,
    last: Instant,
}

impl Bucket {
    fn new(burst: f64, now: Instant) -> Self {
        Bucket {
            credit: burst,
            last: now,
        }
    }

    /// Charges `amount` if there is credit; otherwise how long until there is.
    fn take(&mut self, amount: f64, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.credit = (self.credit + elapsed * rate).min(burst);
        self.last = now;
        let needed = amount.min(burst);
        if self.credit >= needed {
            self.credit -= amount;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            ((needed - self.credit) / rate).clamp(0.001, 3600.0),
        ))
    }
}

#[derive(Debug)]
struct PerToken {
    execute: Bucket,
    submit: Bucket,
    upload: Bucket,
    executing: Arc<AtomicU32>,
}

/// The limits of every token. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Limiter {
    limits: Limits,
    tokens: Arc<Mutex<HashMap<[u8; 32], PerToken>>>,
}

/// Holds one of a token's running Execute calls; dropping it ends the call's count.
#[derive(Debug)]
pub struct Inflight(Option<Arc<AtomicU32>>);

impl Drop for Inflight {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// `RESOURCE_EXHAUSTED` with `message` and a `RetryInfo` of `delay`.
pub fn exhausted(message: String, delay: Duration) -> Status {
    let retry = rpc::RetryInfo {
        retry_delay: Some(tessera_proto::time::to_proto_duration(delay)),
    };
    let status = rpc::Status {
        code: Code::ResourceExhausted as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".to_owned(),
            value: retry.encode_to_vec(),
        }],
    };
    Status::with_details(
        Code::ResourceExhausted,
        message,
        status.encode_to_vec().into(),
    )
}

impl Limiter {
    /// Limits of `limits` for every token.
    pub fn new(limits: Limits) -> Self {
        Limiter {
            limits,
            tokens: Arc::default(),
        }
    }

    fn with<T>(&self, key: [u8; 32], f: impl FnOnce(&mut PerToken, Instant) -> T) -> T {
        let now = Instant::now();
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let l = &self.limits;
        let entry = tokens.entry(key).or_insert_with(|| PerToken {
            execute: Bucket::new(f64::from(l.execute_burst), now),
            submit: Bucket::new(f64::from(l.submit_burst), now),
            upload: Bucket::new(l.upload_bytes_burst as f64, now),
            executing: Arc::default(),
        });
        f(entry, now)
    }

    /// Admits one Execute call of `principal`, or says when to retry.
    pub fn execute(&self, principal: &Principal) -> Result<Inflight, Status> {
        let Some(key) = principal.token_hash else {
            return Ok(Inflight(None));
        };
        let l = self.limits;
        self.with(key, |t, now| {
            if l.execute_inflight > 0 && t.executing.load(Ordering::Acquire) >= l.execute_inflight
            {
                return Err(exhausted(
                    format!(
                        "token \"{}\" has {} Execute calls running, its limit (limits.execute_inflight)",
                        principal.name, l.execute_inflight
                    ),
                    Duration::from_secs(1),
                ));
            }
            if l.execute_rate > 0 {
                t.execute
                    .take(1.0, f64::from(l.execute_rate), f64::from(l.execute_burst.max(1)), now)
                    .map_err(|delay| {
                        exhausted(
                            format!(
                                "token \"{}\" is over its Execute rate ({} per second, limits.execute_rate)",
                                principal.name, l.execute_rate
                            ),
                            delay,
                        )
                    })?;
            }
            t.executing.fetch_add(1, Ordering::AcqRel);
            Ok(Inflight(Some(Arc::clone(&t.executing))))
        })
    }

    /// Admits one job submission of `principal`, who has `running` jobs already.
    pub fn submit(&self, principal: &Principal, running: usize) -> Result<(), Status> {
        let Some(key) = principal.token_hash else {
            return Ok(());
        };
        let l = self.limits;
        if l.jobs_inflight > 0 && running >= l.jobs_inflight as usize {
            return Err(exhausted(
                format!(
                    "token \"{}\" has {running} jobs running, its limit (limits.jobs_inflight): \
                     wait for one to finish",
                    principal.name
                ),
                Duration::from_secs(5),
            ));
        }
        if l.submit_rate == 0 {
            return Ok(());
        }
        self.with(key, |t, now| {
            t.submit
                .take(
                    1.0,
                    f64::from(l.submit_rate),
                    f64::from(l.submit_burst.max(1)),
                    now,
                )
                .map_err(|delay| {
                    exhausted(
                        format!(
                            "token \"{}\" is over its job submission rate ({} per second, \
                             limits.submit_rate)",
                            principal.name, l.submit_rate
                        ),
                        delay,
                    )
                })
        })
    }

    /// Admits an upload of `bytes` by `principal` (agents are not limited).
    pub fn upload(&self, principal: &Principal, bytes: u64) -> Result<(), Status> {
        let Some(key) = principal.token_hash else {
            return Ok(());
        };
        let l = self.limits;
        if principal.role == Role::Agent || l.upload_bytes_rate == 0 || bytes == 0 {
            return Ok(());
        }
        self.with(key, |t, now| {
            t.upload
                .take(
                    bytes as f64,
                    l.upload_bytes_rate as f64,
                    l.upload_bytes_burst.max(1) as f64,
                    now,
                )
                .map_err(|delay| {
                    exhausted(
                        format!(
                            "token \"{}\" is over its upload rate ({} bytes per second, \
                             limits.upload_bytes_rate)",
                            principal.name, l.upload_bytes_rate
                        ),
                        delay,
                    )
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role) -> Principal {
        Principal {
            name: "t".into(),
            role,
            instances: vec![],
            token_hash: Some([7; 32]),
            peer: None,
        }
    }

    fn retry_delay(status: &Status) -> Duration {
        let details = rpc::Status::decode(status.details()).unwrap();
        let any = &details.details[0];
        assert_eq!(any.type_url, "type.googleapis.com/google.rpc.RetryInfo");
        let info = rpc::RetryInfo::decode(any.value.as_slice()).unwrap();
        tessera_proto::time::from_proto_duration(&info.retry_delay.unwrap()).unwrap()
    }

    #[test]
    fn rates_refuse_past_the_burst_with_a_retry_delay() {
        let limiter = Limiter::new(Limits {
            submit_rate: 1,
            submit_burst: 2,
            ..Limits::default()
        });
        let p = principal(Role::Developer);
        limiter.submit(&p, 0).unwrap();
        limiter.submit(&p, 0).unwrap();
        let refused = limiter.submit(&p, 0).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(
            refused.message().contains("submit_rate"),
            "{}",
            refused.message()
        );
        let delay = retry_delay(&refused);
        assert!(
            delay > Duration::ZERO && delay <= Duration::from_secs(2),
            "{delay:?}"
        );
        // Anonymous callers (auth off) are never limited.
        let anonymous = Principal::anonymous(None);
        for _ in 0..100 {
            limiter.submit(&anonymous, 0).unwrap();
        }
        let jobs = limiter.submit(&principal(Role::Ci), 100).unwrap_err();
        assert!(
            jobs.message().contains("jobs_inflight"),
            "{}",
            jobs.message()
        );
    }

    #[test]
    fn inflight_executions_are_counted_until_dropped() {
        let limiter = Limiter::new(Limits {
            execute_inflight: 2,
            ..Limits::default()
        });
        let p = principal(Role::Developer);
        let a = limiter.execute(&p).unwrap();
        let _b = limiter.execute(&p).unwrap();
        let refused = limiter.execute(&p).unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        drop(a);
        limiter.execute(&p).unwrap();
    }

    #[test]
    fn uploads_charge_bytes_and_a_large_blob_passes_once() {
        let limiter = Limiter::new(Limits {
            upload_bytes_rate: 1000,
            upload_bytes_burst: 1000,
            ..Limits::default()
        });
        let p = principal(Role::Developer);
        limiter.upload(&p, 5000).unwrap();
        let refused = limiter.upload(&p, 1).unwrap_err();
        assert!(retry_delay(&refused) >= Duration::from_secs(3));
        // Agents upload outputs unlimited.
        for _ in 0..10 {
            limiter.upload(&principal(Role::Agent), 1 << 30).unwrap();
        }
    }
}
