//! What each page shows, gathered from the registry (running jobs), the history (finished
//! ones), the quarantine and the scheduler. The same structs are the pages' JSON answers and
//! what `html.rs` renders, so the two never disagree.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use tessera_cas::meta::MetaError;
use tessera_proto::names::{outcome_name, phase_name, result_name};
use tessera_proto::tessera::v1::{JobPhase, TestFinished, TestOutcome, TestRef};

use crate::builds::{ActionRow, BuildLog, InvocationSummary};
use crate::execution::scheduler::{AgentView, FleetView, RequesterQueue};
use crate::history::{
    BatchSpan, FlakyTest, JobFilter, JobHistory, JobRecord, RunRecord, rerun_command, test_key,
};
use crate::jobs::job::Job;
use crate::jobs::quarantine::QuarantineStore;
use crate::jobs::registry::JobRegistry;

/// The REAPI instances a viewer may see: its token's scope (empty: all).
#[derive(Debug, Clone, Default)]
pub(super) struct Scope(pub Vec<String>);

impl Scope {
    /// Whether `instance` is in the scope.
    pub(super) fn sees(&self, instance: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|i| i == instance)
    }

    /// Whether the scope is every instance.
    pub(super) fn all(&self) -> bool {
        self.0.is_empty()
    }
}

/// The results the jobs list filters by (`result=`), besides `any`.
pub(super) const RESULTS: [&str; 6] = [
    "running",
    "passed",
    "failed",
    "error",
    "infrastructure",
    "cancelled",
];

/// Jobs per page of the jobs list.
pub(super) const JOBS_PER_PAGE: usize = 50;
/// Runs on a test's page.
pub(super) const RUNS_PER_PAGE: usize = 200;
/// Flake rates are over this many newest runs unless the page asks for another number.
pub(super) const DEFAULT_FLAKE_RUNS: u32 = 20;
/// Most tests on the flaky page.
const FLAKY_LIMIT: usize = 500;

/// The link to a job's page.
pub(super) fn job_url(id: &str) -> String {
    format!("/jobs/{}", encode(id))
}

/// The link to a test's page: its key as one path segment.
pub(super) fn test_url(key: &str) -> String {
    format!("/tests/{}", encode(key))
}

/// `text` percent-encoded as one path segment (or query value): everything but unreserved
/// characters.
pub(super) fn encode(text: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, SET).to_string()
}

/// A job as a line of the jobs list (and the head of its page).
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct JobRow {
    pub id: String,
    pub url: String,
    pub submitter: String,
    pub title: String,
    pub project: String,
    pub instance: String,
    pub labels: BTreeMap<String, String>,
    /// `queued`, `preparing`, `listing`, `running` or `done`.
    pub state: String,
    /// The result once done (`passed`, `failed`, ...), empty before.
    pub result: String,
    pub message: String,
    /// Final results so far, and tests planned.
    pub done: u32,
    pub total: u32,
    pub passed: u32,
    pub failed: u32,
    pub flaky: u32,
    pub skipped: u32,
    pub errors: u32,
    pub timed_out: u32,
    pub cached: u32,
    pub not_run: u32,
    pub created_unix_ms: u64,
    /// Accepted to now (running) or to its end, ms.
    pub duration_ms: u64,
    /// Sum of the tests' durations, ms (finished jobs).
    pub serial_ms: u64,
    /// Operations ahead of its next one while it is queued.
    pub queue_position: Option<u32>,
    pub batches: u32,
}

impl JobRow {
    fn from_record(job: &JobRecord) -> Self {
        JobRow {
            id: job.id.clone(),
            url: job_url(&job.id),
            submitter: job.submitter.clone(),
            title: job.title.clone(),
            project: job.project.clone(),
            instance: job.instance.clone(),
            labels: job.labels.clone(),
            state: "done".to_owned(),
            result: job.result.clone(),
            message: job.message.clone(),
            done: job.total,
            total: job.total,
            passed: job.passed,
            failed: job.failed,
            flaky: job.flaky,
            skipped: job.skipped,
            errors: job.errors,
            timed_out: job.timed_out,
            cached: job.cached,
            not_run: job.not_run,
            created_unix_ms: job.created_unix_ms,
            duration_ms: job.wall_ms,
            serial_ms: job.serial_ms,
            queue_position: None,
            batches: job.batches,
        }
    }

    /// A job in memory: running, or finished and not yet in the history.
    fn from_live(job: &Job) -> Self {
        let summary = job.summary();
        let mut row = JobRow {
            id: job.id.clone(),
            url: job_url(&job.id),
            submitter: summary.submitter.clone(),
            title: summary.title.clone(),
            project: job.spec.project.clone(),
            instance: job.spec.instance_name.clone(),
            labels: summary.labels.clone().into_iter().collect(),
            // Accepted, before its first phase: queued.
            state: match summary.phase() {
                JobPhase::Unknown => "queued",
                phase => phase_name(phase),
            }
            .to_owned(),
            done: summary.done,
            total: summary.total,
            created_unix_ms: summary.created_unix_ms,
            duration_ms: summary.elapsed_ms,
            ..JobRow::default()
        };
        if let Some(finished) = job.finished_event() {
            row.result = result_name(finished.result()).to_owned();
            row.message = finished.message;
            row.passed = finished.passed;
            row.failed = finished.failed;
            row.flaky = finished.flaky;
            row.skipped = finished.skipped;
            row.errors = finished.errors;
            row.timed_out = finished.timed_out;
            row.cached = finished.cached;
            row.not_run = finished.not_run;
            row.batches = finished.batches;
            row.serial_ms = finished
                .serial
                .as_ref()
                .and_then(tessera_proto::time::from_proto_duration)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        } else {
            let (tests, _) = job.final_tests_after(0);
            for test in &tests {
                match test.outcome() {
                    TestOutcome::Passed => row.passed += 1,
                    TestOutcome::Failed | TestOutcome::NoResult => row.failed += 1,
                    TestOutcome::Flaky => row.flaky += 1,
                    TestOutcome::Skipped => row.skipped += 1,
                    TestOutcome::Error => row.errors += 1,
                    TestOutcome::TimedOut => row.timed_out += 1,
                    TestOutcome::Cancelled | TestOutcome::Unknown => row.not_run += 1,
                }
                if test.cached {
                    row.cached += 1;
                }
            }
            if summary.phase() == JobPhase::Queued {
                row.queue_position = Some(job.queue_ahead());
            }
        }
        row
    }

    /// Whether the row passes `filter`; an unfinished job's result is `running`.
    fn matches(&self, filter: &JobFilter) -> bool {
        let result = if self.state == "done" {
            self.result.clone()
        } else {
            "running".to_owned()
        };
        filter.matches(&JobRecord {
            submitter: self.submitter.clone(),
            labels: self.labels.clone(),
            instance: self.instance.clone(),
            result,
            ..JobRecord::default()
        })
    }
}

/// The jobs page.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct JobsView {
    pub jobs: Vec<JobRow>,
    /// The cursor of the next page (`?after=`), when there is one.
    pub next: Option<String>,
    /// This page's cursor (none on the first).
    pub after: Option<String>,
    pub submitter: String,
    pub label: String,
    pub result: String,
    /// Whether finished jobs are kept (`dashboard_jobs` above 0).
    pub history: bool,
}

/// The jobs list: on the first page the jobs in memory not yet in the history (running ones
/// first), then the history's, newest first.
pub(super) fn jobs_view(
    registry: &JobRegistry,
    filter: &JobFilter,
    after: Option<&str>,
) -> Result<JobsView, MetaError> {
    let mut view = JobsView {
        after: after.map(str::to_owned),
        submitter: filter.submitter.clone().unwrap_or_default(),
        label: filter.label.clone().unwrap_or_default(),
        result: filter.result.clone().unwrap_or_default(),
        history: registry.history().is_some(),
        ..JobsView::default()
    };
    let history = registry.history();
    if after.is_none() {
        let mut live: Vec<(bool, JobRow)> = Vec::new();
        for job in registry.jobs() {
            let finished = job.finished();
            let recorded =
                finished && history.is_some_and(|h| h.contains(job.created_unix_ms, &job.id));
            if !recorded {
                let row = JobRow::from_live(&job);
                if row.matches(filter) {
                    live.push((finished, row));
                }
            }
        }
        live.sort_by(|(a_done, a), (b_done, b)| {
            a_done
                .cmp(b_done)
                .then(b.created_unix_ms.cmp(&a.created_unix_ms))
        });
        view.jobs.extend(live.into_iter().map(|(_, row)| row));
    }
    if let Some(history) = history
        && filter.result.as_deref() != Some("running")
    {
        let page = history.jobs(filter, after, JOBS_PER_PAGE)?;
        let shown: HashSet<String> = view.jobs.iter().map(|j| j.id.clone()).collect();
        view.jobs.extend(
            page.jobs
                .iter()
                .filter(|j| !shown.contains(&j.id))
                .map(JobRow::from_record),
        );
        view.next = page.next;
    }
    Ok(view)
}

/// A test of a job, as its page lists it.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct TestLine {
    pub key: String,
    pub url: String,
    pub group: String,
    pub name: String,
    pub cell: String,
    pub outcome: String,
    pub duration_ms: f64,
    pub attempts: u32,
    pub agent: String,
    pub cached: bool,
    pub quarantined: bool,
    pub subtest: bool,
    /// What it printed (failures, and a flaky test's failed runs), capped by the job.
    pub output: String,
    pub failed_attempts: Vec<String>,
}

impl TestLine {
    pub(super) fn from_event(event: &TestFinished) -> Self {
        let test = event.test.clone().unwrap_or_default();
        let key = test_key(&test);
        TestLine {
            url: test_url(&key),
            key,
            group: test.group,
            name: test.name,
            cell: event.cell.clone(),
            outcome: outcome_name(event.outcome()).to_owned(),
            duration_ms: event
                .duration
                .as_ref()
                .and_then(tessera_proto::time::from_proto_duration)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            attempts: event.attempt.max(1),
            agent: event.agent.clone(),
            cached: event.cached,
            quarantined: event.quarantined,
            subtest: event.subtest,
            output: event.output.clone(),
            failed_attempts: event.failed_attempts.clone(),
        }
    }

    /// Failures first, then flaky tests, then the rest; slowest first within each.
    fn rank(&self) -> u8 {
        match self.outcome.as_str() {
            "failed" | "error" | "timed_out" | "no_result" => 0,
            "flaky" => 1,
            _ => 2,
        }
    }
}

/// One batch on the timeline, with the lane (slot) of its agent it is drawn in.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct SpanLine {
    #[serde(flatten)]
    pub span: BatchSpan,
    pub lane: u32,
}

/// Lanes for `spans`: per agent, each batch in the first lane free when it starts (as many
/// lanes as the agent had batches at once: its busy slots).
pub(super) fn lanes(mut spans: Vec<BatchSpan>) -> Vec<SpanLine> {
    spans.sort_by(|a, b| {
        (a.agent.as_str(), a.start_ms, a.end_ms).cmp(&(b.agent.as_str(), b.start_ms, b.end_ms))
    });
    let mut ends: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    spans
        .into_iter()
        .map(|span| {
            let lanes = ends.entry(span.agent.clone()).or_default();
            let lane = match lanes.iter().position(|end| *end <= span.start_ms) {
                Some(free) => {
                    lanes[free] = span.end_ms;
                    free
                }
                None => {
                    lanes.push(span.end_ms);
                    lanes.len() - 1
                }
            };
            SpanLine {
                span,
                lane: u32::try_from(lane).unwrap_or(u32::MAX),
            }
        })
        .collect()
}

/// A job's page.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct JobView {
    pub job: JobRow,
    pub tests: Vec<TestLine>,
    pub batches: Vec<SpanLine>,
    /// The command that runs it again.
    pub rerun: String,
    /// The highest event seq the tests include (running jobs; `?since=` continues from it).
    pub seq: u64,
    /// Still running: the page follows it live.
    pub live: bool,
}

/// Job `id`'s page, from memory while the job is there, else from the history; only the tests
/// finished after `since` when given (a live page's update).
pub(super) fn job_view(
    registry: &JobRegistry,
    id: &str,
    since: Option<u64>,
    scope: &Scope,
) -> Result<Option<JobView>, MetaError> {
    if let Some(job) = registry.get(id) {
        if !scope.sees(&job.spec.instance_name) {
            return Ok(None);
        }
        let (events, seq) = job.final_tests_after(since.unwrap_or(0));
        let mut tests: Vec<TestLine> = events.iter().map(TestLine::from_event).collect();
        if since.is_none() {
            sort_tests(&mut tests);
        }
        return Ok(Some(JobView {
            rerun: rerun_command(&job.spec.title),
            job: JobRow::from_live(&job),
            tests,
            batches: lanes(job.batches()),
            seq,
            live: !job.finished(),
        }));
    }
    let Some(history) = registry.history() else {
        return Ok(None);
    };
    let Some(record) = history.job(id)?.filter(|r| scope.sees(&r.instance)) else {
        return Ok(None);
    };
    let mut tests: Vec<TestLine> = if since.is_some() {
        Vec::new()
    } else {
        history
            .tests(id)?
            .iter()
            .map(|row| TestLine::from_event(&row.event))
            .collect()
    };
    sort_tests(&mut tests);
    Ok(Some(JobView {
        rerun: record.rerun_command(),
        job: JobRow::from_record(&record),
        tests,
        batches: lanes(history.spans(id)?),
        seq: 0,
        live: false,
    }))
}

fn sort_tests(tests: &mut [TestLine]) {
    tests.sort_by(|a, b| {
        a.rank()
            .cmp(&b.rank())
            .then(b.duration_ms.total_cmp(&a.duration_ms))
            .then(a.key.cmp(&b.key))
    });
}

/// A test's flake window in one project, with its quarantine.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct FlakeLine {
    pub key: String,
    pub url: String,
    pub group: String,
    pub name: String,
    pub instance: String,
    pub project: String,
    /// Flaky runs over runs, among the newest `runs_considered`.
    pub flake_rate: f64,
    pub flaky: u32,
    pub failed: u32,
    pub runs_considered: u32,
    pub last_unix_ms: u64,
    /// Who quarantined it, when it is quarantined in that project.
    pub quarantined_by: Option<String>,
    pub quarantine_reason: Option<String>,
}

/// Quarantined tests: (instance, project, group, name) → (by, reason).
type Quarantines = BTreeMap<(String, String, String, String), (String, String)>;

/// The quarantines of `instances` (each listed once).
fn quarantines<'a>(
    quarantine: &QuarantineStore,
    instances: impl IntoIterator<Item = &'a str>,
) -> Result<Quarantines, MetaError> {
    let instances: std::collections::BTreeSet<&str> = instances.into_iter().collect();
    let mut all = Quarantines::new();
    for instance in instances {
        for entry in quarantine.list(instance, "")? {
            let test = entry.test.unwrap_or_default();
            all.insert(
                (instance.to_owned(), entry.project, test.group, test.name),
                (entry.by, entry.reason),
            );
        }
    }
    Ok(all)
}

impl FlakeLine {
    /// Test `t`'s line, its rate over its newest `last` runs; `quarantined`: by whom and why.
    fn new(t: FlakyTest, last: u32, quarantined: Option<&(String, String)>) -> Self {
        let (flaky, runs) = t.window.flaky_in(last);
        FlakeLine {
            url: test_url(&t.key),
            flake_rate: t.window.flake_rate(last),
            flaky,
            failed: t.window.failed_in(last),
            runs_considered: runs,
            last_unix_ms: t.window.last_unix_ms,
            quarantined_by: quarantined.map(|(by, _)| by.clone()),
            quarantine_reason: quarantined.map(|(_, reason)| reason.clone()),
            key: t.key,
            group: t.group,
            name: t.name,
            instance: t.instance,
            project: t.project,
        }
    }
}

fn flake_lines(tests: Vec<FlakyTest>, last: u32, quarantined: &Quarantines) -> Vec<FlakeLine> {
    tests
        .into_iter()
        .map(|t| {
            let q = quarantined.get(&(
                t.instance.clone(),
                t.project.clone(),
                t.group.clone(),
                t.name.clone(),
            ));
            FlakeLine::new(t, last, q)
        })
        .collect()
}

/// A run of a test, as its page lists it.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct RunLine {
    #[serde(flatten)]
    pub run: RunRecord,
    pub job_url: String,
    pub duration_ms: f64,
}

/// A test's page.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct TestView {
    pub key: String,
    pub runs: Vec<RunLine>,
    /// Its flake window per project.
    pub projects: Vec<FlakeLine>,
    /// Flaky runs over runs across its projects (newest `flake_runs` of each).
    pub flake_rate: f64,
    pub flake_runs: u32,
    /// Quarantined in any project.
    pub quarantined: bool,
}

/// Test `key`'s page: its newest runs and its flake windows.
pub(super) fn test_view(
    history: Option<&JobHistory>,
    quarantine: &QuarantineStore,
    key: &str,
    last: u32,
    scope: &Scope,
) -> Result<TestView, MetaError> {
    let mut view = TestView {
        key: key.to_owned(),
        flake_runs: last,
        ..TestView::default()
    };
    let Some(history) = history else {
        return Ok(view);
    };
    view.runs = history
        .runs(key, RUNS_PER_PAGE)?
        .into_iter()
        .filter(|run| scope.sees(&run.instance))
        .map(|run| RunLine {
            job_url: job_url(&run.job),
            duration_ms: run.duration_us as f64 / 1000.0,
            run,
        })
        .collect();
    let windows: Vec<FlakyTest> = history
        .flake(key)?
        .into_iter()
        .filter(|t| scope.sees(&t.instance))
        .collect();
    let quarantined = quarantines(quarantine, windows.iter().map(|t| t.instance.as_str()))?;
    view.projects = flake_lines(windows, last, &quarantined);
    let (flaky, runs) = view
        .projects
        .iter()
        .fold((0, 0), |(f, r), p| (f + p.flaky, r + p.runs_considered));
    view.flake_rate = if runs == 0 {
        0.0
    } else {
        f64::from(flaky) / f64::from(runs)
    };
    view.quarantined = view.projects.iter().any(|p| p.quarantined_by.is_some());
    Ok(view)
}

/// The flaky tests page.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct FlakyView {
    /// Rates are over each test's newest `runs` runs.
    pub runs: u32,
    pub tests: Vec<FlakeLine>,
    /// Quarantined tests that have not been flaky lately (still listed, to release them).
    pub quarantined: Vec<FlakeLine>,
    /// Whether the viewer may quarantine.
    pub can_quarantine: bool,
}

/// Tests ranked by flake rate over their last `last` runs.
pub(super) fn flaky_view(
    history: Option<&JobHistory>,
    quarantine: &QuarantineStore,
    last: u32,
    scope: &Scope,
) -> Result<FlakyView, MetaError> {
    let mut view = FlakyView {
        runs: last,
        ..FlakyView::default()
    };
    let Some(history) = history else {
        return Ok(view);
    };
    let flaky: Vec<FlakyTest> = history
        .flaky(last, FLAKY_LIMIT)?
        .into_iter()
        .filter(|t| scope.sees(&t.instance))
        .collect();
    // The default instance's quarantines too: a quarantined test no longer flaky is listed
    // apart, so it can be released.
    let instances = flaky.iter().map(|t| t.instance.as_str()).chain([""]);
    let quarantined = quarantines(quarantine, instances.filter(|i| scope.sees(i)))?;
    view.tests = flake_lines(flaky, last, &quarantined);
    let ranked: HashSet<(&str, &str, &str, &str)> = view
        .tests
        .iter()
        .map(|t| {
            (
                t.instance.as_str(),
                t.project.as_str(),
                t.group.as_str(),
                t.name.as_str(),
            )
        })
        .collect();
    for ((instance, project, group, name), entry) in &quarantined {
        if ranked.contains(&(
            instance.as_str(),
            project.as_str(),
            group.as_str(),
            name.as_str(),
        )) {
            continue;
        }
        let key = test_key(&TestRef {
            group: group.clone(),
            name: name.clone(),
        });
        let window = history
            .flake(&key)?
            .into_iter()
            .find(|t| &t.instance == instance && &t.project == project)
            .map(|t| t.window)
            .unwrap_or_default();
        let test = FlakyTest {
            key,
            group: group.clone(),
            name: name.clone(),
            instance: instance.clone(),
            project: project.clone(),
            window,
        };
        view.quarantined
            .push(FlakeLine::new(test, last, Some(entry)));
    }
    Ok(view)
}

/// `/fleet`: the agents with their leases, and the queue in fair-share order.
#[derive(Debug, Clone, Serialize)]
pub(super) struct FleetPage {
    pub agents: Vec<AgentLine>,
    pub queue: Vec<RequesterQueue>,
    /// Operations queued, slots in all, slots busy.
    pub queued: usize,
    pub slots: usize,
    pub busy: usize,
    /// When this was taken, Unix ms (the heartbeats' ages are against it).
    pub now_unix_ms: u64,
}

/// An agent on the fleet page.
#[derive(Debug, Clone, Serialize)]
pub(super) struct AgentLine {
    #[serde(flatten)]
    pub agent: AgentView,
    pub busy: usize,
    pub idle: usize,
}

impl FleetPage {
    pub(super) fn new(fleet: FleetView) -> Self {
        let agents: Vec<AgentLine> = fleet
            .agents
            .into_iter()
            .map(|agent| AgentLine {
                busy: agent.busy(),
                idle: agent.idle(),
                agent,
            })
            .collect();
        FleetPage {
            slots: agents.iter().map(|a| a.agent.slots as usize).sum(),
            busy: agents.iter().map(|a| a.busy).sum(),
            agents,
            queue: fleet.queue,
            queued: fleet.queued,
            now_unix_ms: u64::try_from(tessera_proto::time::unix_ms()).unwrap_or(0),
        }
    }
}

/// Invocations per page of `/builds`.
pub(super) const BUILDS_PER_PAGE: usize = 50;

/// The link to an invocation's page.
pub(super) fn build_url(id: &str) -> String {
    format!("/builds/{}", encode(id))
}

/// An invocation as `/builds` lists it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct BuildLine {
    #[serde(flatten)]
    pub summary: InvocationSummary,
    pub url: String,
    /// Cache hits over hits and executions.
    pub hit_ratio: f64,
}

impl BuildLine {
    fn new(summary: InvocationSummary) -> Self {
        BuildLine {
            url: build_url(&summary.id),
            hit_ratio: summary.hit_ratio(),
            summary,
        }
    }
}

/// `/builds`: REAPI invocations, newest first.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct BuildsView {
    pub builds: Vec<BuildLine>,
    /// The cursor of the next page (`?before=`), when there may be one.
    pub next: Option<String>,
    pub before: Option<String>,
}

pub(super) fn builds_view(
    builds: &BuildLog,
    before: Option<&str>,
) -> Result<BuildsView, super::routes::PageError> {
    let page = builds.list(BUILDS_PER_PAGE + 1, before)?;
    let more = page.len() > BUILDS_PER_PAGE;
    let lines: Vec<BuildLine> = page
        .into_iter()
        .take(BUILDS_PER_PAGE)
        .map(BuildLine::new)
        .collect();
    Ok(BuildsView {
        next: more
            .then(|| lines.last().map(|l| l.summary.id.clone()))
            .flatten(),
        before: before.map(str::to_owned),
        builds: lines,
    })
}

/// `/builds/{invocation}`: one invocation's actions.
#[derive(Debug, Clone, Serialize)]
pub(super) struct BuildView {
    #[serde(flatten)]
    pub build: BuildLine,
    pub actions: Vec<ActionRow>,
    pub slowest: Vec<ActionRow>,
}

/// Invocation `id`'s page; `id` may also be the id the tool printed (Bazel's `Invocation ID`,
/// its tool invocation id).
pub(super) fn build_view(
    builds: &BuildLog,
    id: &str,
) -> Result<Option<BuildView>, super::routes::PageError> {
    let detail = match builds.invocation(id)? {
        Some(detail) => Some(detail),
        None => match builds
            .list(usize::MAX, None)?
            .into_iter()
            .find(|s| !s.tool_invocation_id.is_empty() && s.tool_invocation_id == id)
        {
            Some(summary) => builds.invocation(&summary.id)?,
            None => None,
        },
    };
    Ok(detail.map(|detail| BuildView {
        build: BuildLine::new(detail.summary),
        actions: detail.actions,
        slowest: detail.slowest,
    }))
}

/// Shared handles the views read.
#[derive(Clone, Debug)]
pub(super) struct Sources {
    pub registry: JobRegistry,
    pub quarantine: QuarantineStore,
    pub builds: BuildLog,
}

impl Sources {
    pub(super) fn history(&self) -> Option<&JobHistory> {
        self.registry.history()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_slashes_colons_and_brackets_are_one_path_segment() {
        assert_eq!(
            test_url("tests/a.py::test_x[1/2]"),
            "/tests/tests%2Fa.py%3A%3Atest_x%5B1%2F2%5D"
        );
        assert_eq!(test_url("bin a::b c"), "/tests/bin%20a%3A%3Ab%20c");
    }

    #[test]
    fn batches_take_the_first_free_lane_of_their_agent() {
        let span = |agent: &str, start, end| BatchSpan {
            agent: agent.to_owned(),
            start_ms: start,
            end_ms: end,
            ..BatchSpan::default()
        };
        let lines = lanes(vec![
            span("a", 0, 10),
            span("a", 5, 20),
            span("a", 10, 15),
            span("b", 0, 30),
            span("a", 21, 22),
        ]);
        let got: Vec<(&str, u64, u32)> = lines
            .iter()
            .map(|l| (l.span.agent.as_str(), l.span.start_ms, l.lane))
            .collect();
        assert_eq!(
            got,
            [
                ("a", 0, 0),
                ("a", 5, 1),
                ("a", 10, 0),
                ("a", 21, 0),
                ("b", 0, 0)
            ]
        );
    }
}
