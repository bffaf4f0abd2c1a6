//! The scheduler's clock, injected so that lease expiry, heartbeats and retention can be
//! tested without sleeping: [`SystemClock`] in the server, `ManualClock` in unit tests.

use std::fmt::Debug;
#[cfg(test)]
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

/// A point in time on both clocks the scheduler uses: monotonic for deadlines, wall clock
/// (Unix milliseconds) for what it persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time in milliseconds since the Unix epoch.
    pub unix_ms: i64,
}

/// Where the scheduler reads the time.
pub trait Clock: Debug + Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Stamp;
}

/// The real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Stamp {
        Stamp {
            instant: Instant::now(),
            unix_ms: tessera_proto::time::unix_ms(),
        }
    }
}

/// A clock that moves only when told to; clones share the time. For tests.
#[cfg(test)]
#[derive(Debug, Clone)]
pub(crate) struct ManualClock {
    now: Arc<Mutex<Stamp>>,
}

#[cfg(test)]
impl ManualClock {
    /// A clock that starts at the real time.
    pub(crate) fn new() -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(SystemClock.now())),
        }
    }

    /// Moves both clocks forward by `by`.
    pub(crate) fn advance(&self, by: Duration) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        now.instant += by;
        now.unix_ms = now
            .unix_ms
            .saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> Stamp {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let clock = ManualClock::new();
        let other = clock.clone();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        other.advance(Duration::from_secs(3));
        assert_eq!(clock.now().instant, start.instant + Duration::from_secs(3));
        assert_eq!(clock.now().unix_ms, start.unix_ms + 3_000);
    }
}
