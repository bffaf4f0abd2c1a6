//! CPU time as the kernel accounts it in `/proc/<pid>/stat`: a process's own time (all its
//! threads, those that already exited included) and its reaped children's; and this process's
//! live threads, for telling apart the parts of a benchmark that run in one process (the
//! in-process coordinator names its threads).
//!
//! A process's own time is read from its CPU-time clock (`clock_getcpuclockid`), exact to the
//! nanosecond; `stat` counts it in clock ticks (`CLK_TCK`, usually 10 ms), which on a round of
//! 24 actions and four processes put up to about ±1.7 ms of rounding on a per-action figure.
//! Children's time has no such clock: it stays in ticks. If the clock cannot be read, `stat`'s
//! ticks are used for the own time too.

use std::collections::BTreeMap;
use std::ops::Sub;
use std::time::Duration;

use crate::error::BenchError;

/// User plus system time of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// The process itself, every thread.
    pub own: Duration,
    /// Its children that it has waited for.
    pub children: Duration,
}

impl Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            own: self.own.saturating_sub(earlier.own),
            children: self.children.saturating_sub(earlier.children),
        }
    }
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;
    fn add(self, other: CpuTimes) -> CpuTimes {
        CpuTimes {
            own: self.own + other.own,
            children: self.children + other.children,
        }
    }
}

/// The CPU times of process `pid` (`"self"` for this one).
pub(crate) fn process(pid: &str) -> Result<CpuTimes, BenchError> {
    let stat = read(&format!("/proc/{pid}/stat"))?;
    let (_, fields) = parse_stat(&stat)?;
    let ticks = ticks_per_second()?;
    Ok(CpuTimes {
        own: exact_cpu(pid).unwrap_or_else(|| ticks_to_duration(fields[0] + fields[1], ticks)),
        children: ticks_to_duration(fields[2] + fields[3], ticks),
    })
}

/// Process `pid`'s CPU time (all its threads, exited ones included) from its CPU-time clock.
fn exact_cpu(pid: &str) -> Option<Duration> {
    use nix::time::{ClockId, clock_getcpuclockid, clock_gettime};
    let clock = match pid {
        "self" => ClockId::CLOCK_PROCESS_CPUTIME_ID,
        pid => clock_getcpuclockid(nix::unistd::Pid::from_raw(pid.parse().ok()?)).ok()?,
    };
    let now = clock_gettime(clock).ok()?;
    Some(Duration::new(
        u64::try_from(now.tv_sec()).ok()?,
        u32::try_from(now.tv_nsec()).ok()?,
    ))
}

/// The live children of process `parent` whose command line holds the argument `arg`: an
/// agent's helper processes (its spawner), whose CPU is the agent's own while they run.
pub(crate) fn helpers_of(parent: u32, arg: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut helpers = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the reads: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if parent_of(&stat) != Some(parent) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()) {
            helpers.push(pid);
        }
    }
    helpers
}

/// The parent pid in a `stat` line (field 4, the second after the name).
fn parent_of(stat: &str) -> Option<u32> {
    let close = stat.rfind(')')?;
    stat[close + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// CPU time of this process's live threads whose name starts with one of `prefixes`. A thread
/// that exits between two samples takes its time with it, so compare long-lived threads only.
pub(crate) fn threads_named(prefixes: &[&str]) -> Result<Duration, BenchError> {
    let ticks = ticks_per_second()?;
    let tasks = std::fs::read_dir("/proc/self/task").map_err(|source| BenchError::Io {
        what: "list this process's threads",
        source,
    })?;
    let mut spent = Duration::ZERO;
    for task in tasks.flatten() {
        // A thread may exit between the listing and the read: skip it.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (name, fields) = parse_stat(&stat)?;
        if prefixes.iter().any(|prefix| name.starts_with(prefix)) {
            spent += ticks_to_duration(fields[0] + fields[1], ticks);
        }
    }
    Ok(spent)
}

/// CPU time of each live thread of process `pid`, exact (from `schedstat`, in nanoseconds;
/// `stat` rounds each thread down to a tick), summed by thread name with its digits dropped,
/// so that a pool's threads count as one kind. A thread that exits takes its time with it.
pub(crate) fn threads_by_kind(pid: u32) -> BTreeMap<String, Duration> {
    let mut by_kind = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_kind;
    };
    for task in tasks.flatten() {
        // A thread may exit between the listing and the reads: skip it.
        let (Ok(stat), Ok(schedstat)) = (
            std::fs::read_to_string(task.path().join("stat")),
            std::fs::read_to_string(task.path().join("schedstat")),
        ) else {
            continue;
        };
        let (Ok((name, _)), Some(ns)) = (
            parse_stat(&stat),
            schedstat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok()),
        ) else {
            continue;
        };
        let kind: String = name.chars().filter(|c| !c.is_ascii_digit()).collect();
        *by_kind.entry(kind).or_insert(Duration::ZERO) += Duration::from_nanos(ns);
    }
    by_kind
}

/// What each kind grew by from `before` to `after` (kinds that did not grow left out).
pub(crate) fn growth(
    before: &BTreeMap<String, Duration>,
    after: &BTreeMap<String, Duration>,
) -> BTreeMap<String, Duration> {
    after
        .iter()
        .filter_map(|(kind, &spent)| {
            let grew = spent.saturating_sub(before.get(kind).copied().unwrap_or_default());
            (!grew.is_zero()).then(|| (kind.clone(), grew))
        })
        .collect()
}

fn read(path: &str) -> Result<String, BenchError> {
    std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        what: "read CPU times from /proc",
        source,
    })
}

/// The command name and utime, stime, cutime, cstime (in ticks) of a `stat` line. The name is
/// in parentheses and may itself contain spaces or parentheses, so fields are counted from the
/// last `)`.
fn parse_stat(stat: &str) -> Result<(String, [u64; 4]), BenchError> {
    let malformed = || BenchError::Unexpected(format!("malformed /proc stat line: {stat}"));
    let open = stat.find('(').ok_or_else(malformed)?;
    let close = stat.rfind(')').ok_or_else(malformed)?;
    let name = stat.get(open + 1..close).ok_or_else(malformed)?.to_owned();
    // After the name: state (field 3), ..., utime (14), stime (15), cutime (16), cstime (17).
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let mut fields = [0u64; 4];
    for (slot, index) in fields.iter_mut().zip(11..15) {
        *slot = rest
            .get(index)
            .and_then(|field| field.parse().ok())
            .ok_or_else(malformed)?;
    }
    Ok((name, fields))
}

fn ticks_per_second() -> Result<u64, BenchError> {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => Ok(u64::try_from(ticks).unwrap_or(100)),
        other => Err(BenchError::Unexpected(format!(
            "sysconf(CLK_TCK) returned {other:?}"
        ))),
    }
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_summed_by_kind_and_only_growth_is_kept() {
        // A thread of this process named with digits, spinning until the kernel has charged it
        // 30 ms of CPU (its own clock, not the wall's: on a loaded machine 30 ms of wall time
        // may be a few ms of CPU), then waiting (alive, so it is listed) until told to end.
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let (spun, spinning) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("kind-worker-7".to_owned())
            .spawn(move || {
                let own = || {
                    Duration::from(
                        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
                            .expect("this thread's CPU-time clock"),
                    )
                };
                let start = own();
                while own().saturating_sub(start) < Duration::from_millis(30) {
                    std::hint::black_box(0u64);
                }
                let _ = spun.send(());
                let _ = wait.recv();
            })
            .expect("spawn");
        spinning.recv().expect("the worker spun");
        let kinds = threads_by_kind(std::process::id());
        let _ = done.send(());
        worker.join().expect("the worker ends");
        assert!(
            kinds
                .get("kind-worker-")
                .is_some_and(|spent| *spent >= Duration::from_millis(10)),
            "{kinds:?}"
        );

        let ms = Duration::from_millis;
        let before = BTreeMap::from([("a".to_owned(), ms(5)), ("b".to_owned(), ms(7))]);
        let after = BTreeMap::from([
            ("a".to_owned(), ms(9)),
            ("b".to_owned(), ms(7)),
            ("c".to_owned(), ms(2)),
        ]);
        assert_eq!(
            growth(&before, &after),
            BTreeMap::from([("a".to_owned(), ms(4)), ("c".to_owned(), ms(2))])
        );
    }

    #[test]
    fn another_processs_own_time_is_read_to_the_nanosecond_and_agrees_with_stat() {
        let mut busy = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("spawn a busy shell");
        let pid = busy.id().to_string();
        // However loaded the machine, wait until it has been charged a few ticks' worth.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while exact_cpu(&pid).expect("its CPU clock reads") < Duration::from_millis(30)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let exact = exact_cpu(&pid).expect("its CPU clock reads");
        let times = process(&pid).expect("its times read");
        let stat = read(&format!("/proc/{pid}/stat")).expect("stat");
        let _ = busy.kill();
        let _ = busy.wait();
        let (_, fields) = parse_stat(&stat).expect("parses");
        let ticked = ticks_to_duration(fields[0] + fields[1], ticks_per_second().unwrap());
        assert!(exact >= Duration::from_millis(30), "{exact:?}");
        // Read one after the other: the clock and the ticks agree within a few ticks.
        assert!(times.own >= exact, "{:?} < {exact:?}", times.own);
        assert!(
            times.own.abs_diff(ticked) <= Duration::from_millis(60),
            "clock {:?}, stat {ticked:?}",
            times.own
        );
        // Not rounded to ticks: a busy process's time is almost never a whole tick count.
        let tick = Duration::from_secs(1) / u32::try_from(ticks_per_second().unwrap()).unwrap();
        assert_ne!(times.own.as_nanos() % tick.as_nanos(), 0, "{:?}", times.own);
    }

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    17 5 3 2 20 0 4 0 100 1000 10 18446744073709551615";
        let (name, fields) = parse_stat(line).expect("parses");
        assert_eq!(name, "a (b) c");
        assert_eq!(fields, [17, 5, 3, 2]);
    }

    #[test]
    fn helpers_are_found_by_parent_and_argument() {
        let line = "4243 (tessera) S 4242 4242 4242 0 -1 4194560 100 0 0 0 1 2 3 4 20 0";
        assert_eq!(parent_of(line), Some(4242));
        // `$0` of the shell: the marker is in its command line.
        let mut shell = std::process::Command::new("sh")
            .args(["-c", "sleep 5; true", "tessera-bench-helper-marker"])
            .spawn()
            .expect("sh");
        // Until the child has exec'd, its command line is still this test's: wait for it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut found = helpers_of(std::process::id(), "tessera-bench-helper-marker");
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            found = helpers_of(std::process::id(), "tessera-bench-helper-marker");
        }
        let _ = shell.kill();
        let _ = shell.wait();
        assert_eq!(found, [shell.id()]);
        assert!(helpers_of(std::process::id(), "no-such-argument").is_empty());
    }

    #[test]
    fn this_process_has_cpu_time() {
        // Spin until the kernel has charged at least one tick (on a loaded machine 30 ms of
        // wall time can be less than a tick of CPU), for at most 10 s.
        let spin = std::time::Instant::now();
        while process("self").expect("own times").own == Duration::ZERO
            && spin.elapsed() < Duration::from_secs(10)
        {
            for _ in 0..100_000 {
                std::hint::black_box(0u64);
            }
        }
        // Threads first: the process total read afterwards can only have grown (read in the
        // other order, a thread's time could pass the earlier total, which was flaky).
        let threads = threads_named(&[""]).expect("threads");
        let times = process("self").expect("own times");
        assert!(times.own > Duration::ZERO);
        assert!(threads <= times.own, "{threads:?} > {:?}", times.own);
    }
}
