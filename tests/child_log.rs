//! What a child process prints on stderr, as events a test can wait for.
//!
//! Owns: reading one pipe line by line on a thread of its own, echoing each line to the test's
//! stderr (so a failing test still shows the child's log, labelled), and waking whoever waits
//! for a line that contains a pattern. Not owned here: which lines mean what (the constants in
//! [`crate::lines`]) and the processes themselves ([`crate::process`]).

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many of the last lines a failure message shows.
const TAIL: usize = 30;

/// The stderr of a child process, captured line by line.
#[derive(Clone)]
pub struct ChildLog {
    label: String,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<LogState>,
    /// Wakes blocking waiters.
    changed: Condvar,
    /// Wakes async waiters.
    notify: tokio::sync::Notify,
}

#[derive(Default)]
struct LogState {
    /// Every line so far, without ANSI colour codes.
    lines: Vec<String>,
    /// The pipe reached its end: the process exited (or closed stderr).
    closed: bool,
}

impl ChildLog {
    /// Starts reading `pipe` on a thread of its own; echoed lines are prefixed with `[label]`.
    pub fn capture(label: &str, pipe: impl Read + Send + 'static) -> Self {
        let log = ChildLog {
            label: label.to_owned(),
            shared: Arc::new(Shared {
                state: Mutex::new(LogState::default()),
                changed: Condvar::new(),
                notify: tokio::sync::Notify::new(),
            }),
        };
        let reader = log.clone();
        std::thread::Builder::new()
            .name(format!("log-{label}"))
            .spawn(move || reader.read_all(pipe))
            .expect("spawn a log reader thread");
        log
    }

    fn read_all(&self, pipe: impl Read) {
        let mut pipe = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match pipe.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim_end_matches(['\n', '\r']);
                    eprintln!("[{}] {line}", self.label);
                    self.state().lines.push(without_ansi(line));
                    self.wake();
                }
            }
        }
        self.state().closed = true;
        self.wake();
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wake(&self) {
        self.shared.changed.notify_all();
        self.shared.notify.notify_waiters();
    }

    /// How many lines so far contain `pattern`.
    pub fn count(&self, pattern: &str) -> usize {
        self.state()
            .lines
            .iter()
            .filter(|l| l.contains(pattern))
            .count()
    }

    /// The `nth` (1-based) line containing `pattern`, or `None` while it may still come;
    /// panics if the process closed its stderr first.
    fn find(&self, state: &LogState, pattern: &str, nth: usize) -> Option<String> {
        let found = state
            .lines
            .iter()
            .filter(|l| l.contains(pattern))
            .nth(nth - 1);
        if found.is_none() && state.closed {
            panic!(
                "{} exited without logging {pattern:?} (#{nth}){}",
                self.label,
                tail(state)
            );
        }
        found.cloned()
    }

    fn timed_out(&self, state: &LogState, pattern: &str, nth: usize, limit: Duration) -> ! {
        panic!(
            "{} did not log {pattern:?} (#{nth}) within {limit:?}{}",
            self.label,
            tail(state)
        );
    }

    /// Waits until the `nth` (1-based, counting lines already printed) line containing
    /// `pattern` appears and returns it; panics with the log's last lines after `limit`, or
    /// as soon as the process exits without printing it.
    pub async fn wait_for_nth(&self, pattern: &str, nth: usize, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so a line that lands in between still wakes us.
            notified.as_mut().enable();
            if let Some(line) = self.find(&self.state(), pattern, nth) {
                return line;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let state = self.state();
                return self
                    .find(&state, pattern, nth)
                    .unwrap_or_else(|| self.timed_out(&state, pattern, nth, limit));
            }
        }
    }

    /// [`Self::wait_for_nth`] for the first such line.
    pub async fn wait_for(&self, pattern: &str, limit: Duration) -> String {
        self.wait_for_nth(pattern, 1, limit).await
    }

    /// [`Self::wait_for`] for code that is not async: blocks the calling thread.
    pub fn blocking_wait_for(&self, pattern: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut state = self.state();
        loop {
            if let Some(line) = self.find(&state, pattern, 1) {
                return line;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.timed_out(&state, pattern, 1, limit);
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// The last lines, for a failure message.
fn tail(state: &LogState) -> String {
    let from = state.lines.len().saturating_sub(TAIL);
    let mut out =
        String::from(" (the harness needs tessera's info lines: check RUST_LOG); last lines:");
    for line in &state.lines[from..] {
        out.push_str("\n  ");
        out.push_str(line);
    }
    out
}

/// `line` without ANSI escape sequences (the text log colours field names even into a pipe).
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, then one final byte in '@'..='~'.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_dropped() {
        assert_eq!(
            without_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m agent connected"),
            "2026  INFO agent connected"
        );
    }

    #[tokio::test]
    async fn a_line_printed_later_wakes_the_waiter_and_an_exit_ends_the_wait() {
        use std::io::Write as _;
        let (reader, mut writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let log = ChildLog::capture("fake", reader);
        let waiter = tokio::spawn({
            let log = log.clone();
            async move { log.wait_for("ready", Duration::from_secs(10)).await }
        });
        writeln!(writer, "starting").unwrap();
        writeln!(writer, "now ready to serve").unwrap();
        assert_eq!(waiter.await.unwrap(), "now ready to serve");
        assert_eq!(log.count("ready"), 1);
        drop(writer);
        let gone =
            tokio::spawn(async move { log.wait_for("never", Duration::from_secs(10)).await });
        let panic = gone.await.unwrap_err().into_panic();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("fake exited without logging"), "{message}");
    }
}
