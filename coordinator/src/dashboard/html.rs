//! The pages' HTML, rendered on the server from the views (`views.rs`) with `maud`: every
//! interpolated value is escaped, the markup is checked at compile time. No JavaScript
//! framework: one small script (`assets/dashboard.js`) follows `/events` and swaps in what
//! changed.
//!
//! The markup is a contract the browser tests and outside checks rely on: `a.skip` first,
//! `nav[aria-label=Main]`, `main#main` with one `h1`; `table#jobs tr[data-job]`,
//! `table#tests tr[data-test][data-outcome]`, `#timeline svg`, `code#rerun`, `table#runs`,
//! `#flake-rate`, `#quarantine`, `table#flaky tr[data-test]`, `form.quarantine` with
//! `input[name=csrf]`, `table#agents tr[data-agent]`, `table#queue`, `table#builds
//! tr[data-invocation]`, `table#actions`, `#hit-ratio`, `form#login input[name=token]`.

use maud::{DOCTYPE, Markup, html};

use super::access::Viewer;
use super::views::{
    BuildView, BuildsView, FlakeLine, FlakyView, FleetPage, JobRow, JobView, JobsView, RESULTS,
    SpanLine, TestLine, TestView, encode, job_url,
};
use crate::auth::Permission;
use crate::builds::{ActionKind, ActionRow};

/// The pages of the main navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Jobs,
    Flaky,
    Fleet,
    Builds,
    Login,
}

/// Milliseconds as people read them: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub(super) fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else if ms < 60_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms < 3_600_000.0 {
        let s = (ms / 1000.0) as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (ms / 60_000.0) as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// A Unix time in ms as UTC, to the second.
pub(super) fn time(unix_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
}

/// The page around `content`.
pub(super) fn layout(
    title: &str,
    section: Section,
    body: BodyData,
    viewer: Option<&Viewer>,
    content: Markup,
) -> Markup {
    let link = |href: &str, name: &str, this: Section| {
        html! {
            li { a href=(href) aria-current=[(section == this).then_some("page")] { (name) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tessera" }
                link rel="stylesheet" href="/assets/dashboard.css";
                script src="/assets/dashboard.js" defer {}
            }
            body data-page=(body.page) data-job=[body.job.as_deref()] data-seq=[body.seq] data-live=[body.live.then_some("1")] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Tessera" }
                    nav aria-label="Main" {
                        ul {
                            (link("/", "Jobs", Section::Jobs))
                            (link("/flaky", "Flaky tests", Section::Flaky))
                            (link("/fleet", "Fleet", Section::Fleet))
                            (link("/builds", "Builds", Section::Builds))
                        }
                    }
                    @if let Some(viewer) = viewer.filter(|v| !v.principal.is_anonymous()) {
                        div.who {
                            span { (viewer.principal.name) " (" (viewer.principal.role) ")" }
                            @if let Some(csrf) = &viewer.csrf {
                                form method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(csrf);
                                    button type="submit" { "Log out" }
                                }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    (content)
                }
            }
        }
    }
}

/// What the page's script needs to know: which page, which job, from which event it follows.
#[derive(Debug, Clone, Default)]
pub(super) struct BodyData {
    pub page: &'static str,
    pub job: Option<String>,
    pub seq: Option<u64>,
    pub live: bool,
}

impl BodyData {
    pub(super) fn page(page: &'static str) -> Self {
        BodyData {
            page,
            ..BodyData::default()
        }
    }
}

/// A table's caption (for screen readers) and its header row.
fn head(caption: &str, columns: &[&str]) -> Markup {
    html! {
        caption.visually-hidden { (caption) }
        thead { tr { @for column in columns { th scope="col" { (column) } } } }
    }
}

fn badge(text: &str) -> Markup {
    let label = text.replace('_', " ");
    html! { span class={ "badge " (text) } { (label) } }
}

fn state_badge(job: &JobRow) -> Markup {
    if job.state == "done" {
        badge(&job.result)
    } else {
        badge(&job.state)
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn counts(job: &JobRow) -> Markup {
    html! {
        span.counts {
            (job.done) "/" (job.total)
            @if job.failed + job.errors + job.timed_out > 0 {
                " · " span.bad { (job.failed + job.errors + job.timed_out) " failed" }
            }
            @if job.flaky > 0 { " · " span.warn { (job.flaky) " flaky" } }
            @if job.cached > 0 { " · " (job.cached) " cached" }
        }
    }
}

fn labels(labels: &std::collections::BTreeMap<String, String>) -> Markup {
    html! {
        @for (k, v) in labels {
            a.label href={ "/?label=" (encode(&format!("{k}={v}"))) } { (k) "=" (v) }
            " "
        }
    }
}

/// `/`: running and recent jobs.
pub(super) fn jobs_page(view: &JobsView, viewer: &Viewer) -> Markup {
    let query = |after: Option<&str>| {
        let mut parts = Vec::new();
        for (name, value) in [
            ("submitter", view.submitter.as_str()),
            ("label", view.label.as_str()),
            ("result", view.result.as_str()),
        ] {
            if !value.is_empty() && value != "any" {
                parts.push(format!("{name}={}", encode(value)));
            }
        }
        if let Some(after) = after {
            parts.push(format!("after={}", encode(after)));
        }
        if parts.is_empty() {
            "/".to_owned()
        } else {
            format!("/?{}", parts.join("&"))
        }
    };
    let content = html! {
        h1 { "Jobs" }
        form #filters method="get" action="/" {
            div.field {
                label for="f-submitter" { "Submitter" }
                input #f-submitter type="text" name="submitter" value=(view.submitter) placeholder="ci";
            }
            div.field {
                label for="f-label" { "Label" }
                input #f-label type="text" name="label" value=(view.label) placeholder="branch=main";
            }
            div.field {
                label for="f-result" { "Result" }
                select #f-result name="result" {
                    @for r in std::iter::once("any").chain(RESULTS) {
                        option value=(r) selected[view.result == r || (view.result.is_empty() && r == "any")] { (r) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if !view.history {
            p.note { "Finished jobs are not kept (dashboard_jobs = 0): only jobs in memory are listed." }
        }
        div #jobs-list data-live="1" {
            @if view.jobs.is_empty() {
                p.empty { "No jobs match. Run one with " code { "tessera run -- <your test command>" } "." }
            } @else {
                table #jobs {
                    (head("Jobs, running first, then newest first", &["Job", "Submitter", "Labels", "State", "Tests", "Duration", "Queue", "Started (UTC)"]))
                    tbody {
                        @for job in &view.jobs {
                            tr data-job=(job.id) {
                                td {
                                    a href=(job.url) { code { (short(&job.id)) } }
                                    @if !job.title.is_empty() { br; span.title { (job.title) } }
                                }
                                td { (job.submitter) }
                                td { (labels(&job.labels)) }
                                td { (state_badge(job)) }
                                td { (counts(job)) }
                                td.num { (duration(job.duration_ms as f64)) }
                                td.num { @if let Some(p) = job.queue_position { (p) " ahead" } }
                                td { (time(job.created_unix_ms)) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if view.after.is_some() { a rel="prev" href=(query(None)) { "← Newest" } }
            @if let Some(next) = &view.next { a rel="next" href=(query(Some(next))) { "Older →" } }
        }
    };
    layout(
        "Jobs",
        Section::Jobs,
        BodyData::page("jobs"),
        Some(viewer),
        content,
    )
}

/// One test's row on its job's page (also sent alone to a live page).
pub(super) fn test_row(test: &TestLine) -> Markup {
    html! {
        tr data-test=(test.key) data-cell=(test.cell) data-outcome=(test.outcome) {
            td {
                a href=(test.url) { (test.key) }
                @if !test.cell.is_empty() { " " span.cell { "[" (test.cell) "]" } }
                @if test.quarantined { " " span.badge.quarantined { "quarantined" } }
                @if !test.output.is_empty() || !test.failed_attempts.is_empty() {
                    details.output {
                        summary { "Output" }
                        @for (i, attempt) in test.failed_attempts.iter().enumerate() {
                            p { "Failed attempt " (i + 1) }
                            pre { (attempt) }
                        }
                        @if !test.output.is_empty() { pre { (test.output) } }
                    }
                }
            }
            td { (badge(&test.outcome)) }
            td.num { (duration(test.duration_ms)) }
            td.num { (test.attempts) }
            td { @if test.cached { "cached" } @else { (test.agent) } }
        }
    }
}

fn summary(view: &JobView) -> Markup {
    let job = &view.job;
    html! {
        section #summary data-live="1" aria-label="Summary" {
            dl.summary {
                div { dt { "State" } dd { (state_badge(job)) } }
                div { dt { "Submitter" } dd { (job.submitter) } }
                @if !job.project.is_empty() { div { dt { "Project" } dd { code { (short(&job.project)) } } } }
                @if !job.labels.is_empty() { div { dt { "Labels" } dd { (labels(&job.labels)) } } }
                div { dt { "Tests" } dd { (counts(job)) } }
                div { dt { "Wall time" } dd { (duration(job.duration_ms as f64)) } }
                @if job.serial_ms > 0 {
                    div { dt { "Serial time" } dd {
                        (duration(job.serial_ms as f64))
                        @if job.duration_ms > 0 {
                            " (" (format!("{:.1}", job.serial_ms as f64 / job.duration_ms as f64)) "× speed-up)"
                        }
                    } }
                }
                @if job.batches > 0 { div { dt { "Batches" } dd { (job.batches) } } }
                @if let Some(p) = job.queue_position { div { dt { "Queue" } dd { (p) " operations ahead" } } }
                div { dt { "Started (UTC)" } dd { (time(job.created_unix_ms)) } }
            }
            @if !job.message.is_empty() { p.message { (job.message) } }
        }
    }
}

/// The timeline: one row per agent slot, a bar per batch, time across.
fn timeline(batches: &[SpanLine], wall_ms: u64) -> Markup {
    const LEFT: f64 = 170.0;
    const WIDTH: f64 = 800.0;
    const ROW: f64 = 22.0;
    let end = batches
        .iter()
        .map(|b| b.span.end_ms)
        .max()
        .unwrap_or(0)
        .max(wall_ms)
        .max(1) as f64;
    let mut rows: Vec<(String, u32)> = batches
        .iter()
        .map(|b| (b.span.agent.clone(), b.lane))
        .collect();
    rows.sort();
    rows.dedup();
    let row_of = |agent: &str, lane: u32| {
        rows.iter()
            .position(|(a, l)| a == agent && *l == lane)
            .unwrap_or(0) as f64
    };
    let height = ROW * rows.len() as f64 + 24.0;
    let x = |ms: u64| LEFT + WIDTH * (ms as f64 / end);
    let busy: u64 = batches
        .iter()
        .map(|b| b.span.end_ms.saturating_sub(b.span.start_ms))
        .sum();
    let description = format!(
        "{} batches on {} agent slots over {}; slots busy {} in total",
        batches.len(),
        rows.len(),
        duration(end),
        duration(busy as f64)
    );
    html! {
        section #timeline aria-labelledby="timeline-h" {
            h2 #timeline-h { "Timeline" }
            @if batches.is_empty() {
                p.empty { "No batch ran on an agent (cached, or not started yet)." }
            } @else {
                p.note { (description) }
                div.timeline-scroll {
                    svg viewBox={ "0 0 " (LEFT + WIDTH + 10.0) " " (height) } role="img" aria-labelledby="timeline-title" preserveAspectRatio="xMinYMin meet" {
                        title #timeline-title { (description) }
                        @for (i, (agent, lane)) in rows.iter().enumerate() {
                            text x="4" y=((i as f64) * ROW + 15.0) class="lane" {
                                (agent.chars().take(18).collect::<String>()) " #" (lane + 1)
                            }
                        }
                        @for tick in 0..=4u64 {
                            line x1=(x(end as u64 * tick / 4)) x2=(x(end as u64 * tick / 4)) y1="0" y2=(height - 18.0) class="tick" {}
                            text x=(x(end as u64 * tick / 4)) y=(height - 4.0) class="tick-label" text-anchor="middle" {
                                (duration((end as u64 * tick / 4) as f64))
                            }
                        }
                        @for b in batches {
                            rect x=(x(b.span.start_ms)) y=(row_of(&b.span.agent, b.lane) * ROW + 3.0)
                                width=(((x(b.span.end_ms) - x(b.span.start_ms)).max(1.5)))
                                height=(ROW - 6.0)
                                class=(if b.span.failed > 0 { "batch failed" } else { "batch" }) {
                                title {
                                    (b.span.agent) ": " (b.span.tests) " tests, " (duration(b.span.start_ms as f64))
                                    " to " (duration(b.span.end_ms as f64))
                                    @if b.span.failed > 0 { ", " (b.span.failed) " failed" }
                                    @if !b.span.cell.is_empty() { " [" (b.span.cell) "]" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `/jobs/{id}`.
pub(super) fn job_page(view: &JobView, viewer: &Viewer) -> Markup {
    let job = &view.job;
    let title = if job.title.is_empty() {
        format!("Job {}", short(&job.id))
    } else {
        format!("Job {}: {}", short(&job.id), job.title)
    };
    let content = html! {
        h1 { "Job " code { (short(&job.id)) } }
        @if !job.title.is_empty() { p.lead { code { (job.title) } } }
        (summary(view))
        @if !view.rerun.is_empty() {
            p.rerun { "Run it again: " code #rerun { (view.rerun) } }
        }
        (timeline(&view.batches, job.duration_ms))
        section aria-labelledby="tests-h" {
            h2 #tests-h { "Tests" }
            table #tests {
                (head("Tests of this job, failures first, then slowest first", &["Test", "Outcome", "Duration", "Attempts", "Agent"]))
                tbody #test-rows {
                    @for test in &view.tests { (test_row(test)) }
                }
            }
            @if view.tests.is_empty() {
                p.empty #no-tests { @if view.live { "No test has finished yet." } @else { "This job reported no tests." } }
            }
        }
    };
    let body = BodyData {
        page: "job",
        job: Some(job.id.clone()),
        seq: Some(view.seq),
        live: view.live,
    };
    layout(&title, Section::Jobs, body, Some(viewer), content)
}

/// A live job page's update: the summary and the rows of the tests finished since its last.
pub(super) fn job_update(view: &JobView) -> Markup {
    html! {
        (DOCTYPE)
        html { body data-seq=(view.seq) data-live=[view.live.then_some("1")] {
            (summary(view))
            table { tbody #test-rows { @for test in &view.tests { (test_row(test)) } } }
        } }
    }
}

fn quarantine_form(line: &FlakeLine, viewer: &Viewer, back: &str) -> Markup {
    let Some(csrf) = &viewer.csrf else {
        return html! {};
    };
    if !viewer.may(Permission::Quarantine) || line.project.is_empty() {
        return html! {};
    }
    let add = line.quarantined_by.is_none();
    html! {
        form.quarantine method="post" action="/flaky/quarantine" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="instance" value=(line.instance);
            input type="hidden" name="project" value=(line.project);
            input type="hidden" name="group" value=(line.group);
            input type="hidden" name="name" value=(line.name);
            input type="hidden" name="back" value=(back);
            @if add {
                input type="hidden" name="op" value="add";
                label.visually-hidden for={ "reason-" (encode(&line.key)) (encode(&line.project)) } { "Reason to quarantine " (line.key) }
                input type="text" name="reason" id={ "reason-" (encode(&line.key)) (encode(&line.project)) } placeholder="reason" required;
                button type="submit" { "Quarantine" }
            } @else {
                input type="hidden" name="op" value="remove";
                button type="submit" { "Release" span.visually-hidden { " " (line.key) } }
            }
        }
    }
}

fn percent(rate: f64) -> String {
    format!("{:.0} %", rate * 100.0)
}

/// `/tests/{key}`.
pub(super) fn test_page(view: &TestView, viewer: &Viewer) -> Markup {
    let back = super::views::test_url(&view.key);
    let flaky: u32 = view.projects.iter().map(|p| p.flaky).sum();
    let runs: u32 = view.projects.iter().map(|p| p.runs_considered).sum();
    let content = html! {
        h1 { "Test " code { (view.key) } }
        p #flake-rate {
            "Flake rate: " strong { (percent(view.flake_rate)) }
            " (" (flaky) " flaky of its last " (runs) " runs; up to " (view.flake_runs) " per project)"
        }
        section #quarantine aria-labelledby="quarantine-h" {
            h2 #quarantine-h { "Quarantine" }
            @if view.projects.is_empty() {
                p { "Not quarantined; no run recorded yet." }
            } @else {
                ul {
                    @for p in &view.projects {
                        li {
                            "Project " code { (short(&p.project)) }
                            @if !p.instance.is_empty() { " (instance " (p.instance) ")" }
                            ": "
                            @if let Some(by) = &p.quarantined_by {
                                span.badge.quarantined { "quarantined" } " by " (by)
                                @if let Some(reason) = &p.quarantine_reason { @if !reason.is_empty() { ": " (reason) } }
                            } @else {
                                "not quarantined"
                            }
                            " · " (p.flaky) " flaky, " (p.failed) " failed of " (p.runs_considered) " runs"
                            (quarantine_form(p, viewer, &back))
                        }
                    }
                }
            }
        }
        section aria-labelledby="runs-h" {
            h2 #runs-h { "Runs" }
            @if view.runs.is_empty() {
                p.empty { "No finished job ran this test (is the key the id `tessera run` prints?)." }
            } @else {
                table #runs {
                    (head("Runs of this test, newest first", &["Job", "Started (UTC)", "Outcome", "Duration", "Attempts", "Agent", "Submitter"]))
                    tbody {
                        @for run in &view.runs {
                            tr data-job=(run.run.job) data-outcome=(run.run.outcome) {
                                td { a href=(run.job_url) { code { (short(&run.run.job)) } }
                                     @if !run.run.cell.is_empty() { " [" (run.run.cell) "]" } }
                                td { (time(run.run.created_unix_ms)) }
                                td { (badge(&run.run.outcome)) }
                                td.num { (duration(run.duration_ms)) }
                                td.num { (run.run.attempts) }
                                td { @if run.run.cached { "cached" } @else { (run.run.agent) } }
                                td { (run.run.submitter) }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(
        &format!("Test {}", view.key),
        Section::Flaky,
        BodyData::page("test"),
        Some(viewer),
        content,
    )
}

fn flaky_table(
    id: &str,
    caption: &str,
    lines: &[FlakeLine],
    viewer: &Viewer,
    back: &str,
) -> Markup {
    html! {
        table id=(id) {
            (head(caption, &["Test", "Project", "Flake rate", "Flaky / runs", "Failed", "Last run (UTC)", "Quarantine"]))
            tbody {
                @for line in lines {
                    tr data-test=(line.key) data-project=(line.project) {
                        td { a href=(line.url) { (line.key) } }
                        td { code { (short(&line.project)) } }
                        td.num { (percent(line.flake_rate)) }
                        td.num { (line.flaky) " / " (line.runs_considered) }
                        td.num { (line.failed) }
                        td { @if line.last_unix_ms > 0 { (time(line.last_unix_ms)) } }
                        td {
                            @if let Some(by) = &line.quarantined_by { span.badge.quarantined { "quarantined" } " by " (by) " " }
                            (quarantine_form(line, viewer, back))
                        }
                    }
                }
            }
        }
    }
}

/// `/flaky`.
pub(super) fn flaky_page(view: &FlakyView, viewer: &Viewer) -> Markup {
    let back = format!("/flaky?runs={}", view.runs);
    let content = html! {
        h1 { "Flaky tests" }
        form #flaky-runs method="get" action="/flaky" {
            div.field {
                label for="f-runs" { "Flake rate over each test's last" }
                select #f-runs name="runs" {
                    @for n in [5u32, 10, 20, 50, 64] {
                        option value=(n) selected[view.runs == n] { (n) " runs" }
                    }
                }
            }
            button type="submit" { "Show" }
        }
        div #flaky-list data-live="1" {
            @if view.tests.is_empty() {
                p.empty { "No test was flaky in its last " (view.runs) " runs." }
            } @else {
                (flaky_table("flaky", "Flaky tests, highest flake rate first", &view.tests, viewer, &back))
            }
            @if !view.quarantined.is_empty() {
                h2 { "Quarantined, not flaky lately" }
                (flaky_table("quarantined", "Quarantined tests without a flaky run lately", &view.quarantined, viewer, &back))
            }
        }
    };
    layout(
        "Flaky tests",
        Section::Flaky,
        BodyData::page("flaky"),
        Some(viewer),
        content,
    )
}

/// `/fleet`.
pub(super) fn fleet_page(view: &FleetPage, viewer: &Viewer) -> Markup {
    let age = |unix_ms: u64| duration(view.now_unix_ms.saturating_sub(unix_ms) as f64);
    let content = html! {
        h1 { "Fleet" }
        div #fleet-live data-live="1" {
            p.note {
                (view.agents.len()) " agents, " (view.busy) " of " (view.slots) " slots busy; "
                (view.queued) " operations queued"
            }
            @if view.agents.is_empty() {
                p.empty { "No agent is connected. Start one with " code { "tessera agent --coordinator URL --slots N" } "." }
            }
            table #agents {
                (head("Connected agents", &["Agent", "Slots busy / total", "Idle", "State", "Last heard", "Connected", "Leases", "Properties"]))
                tbody {
                    @for a in &view.agents {
                        tr data-agent=(a.agent.id) {
                            td { code { (a.agent.id) } }
                            td.num { (a.busy) " / " (a.agent.slots) }
                            td.num { (a.idle) }
                            td { @if a.agent.draining { span.badge.cancelled { "draining" } } @else { span.badge.passed { "serving" } } }
                            td { (age(a.agent.last_heard_unix_ms)) " ago" }
                            td { (time(a.agent.connected_unix_ms)) }
                            td {
                                @if a.agent.leases.is_empty() { span.note { "none" } }
                                ul.leases {
                                    @for lease in &a.agent.leases {
                                        li {
                                            @if let Some(job) = &lease.job {
                                                a href=(job_url(job)) { "job " code { (job.get(..12).unwrap_or(job)) } }
                                            } @else {
                                                code { (lease.operation.rsplit('/').next().unwrap_or(&lease.operation).get(..12).unwrap_or("")) }
                                            }
                                            " · " (lease.requester)
                                            @if lease.attempt > 1 { " · attempt " (lease.attempt) }
                                            " · " (age(lease.leased_unix_ms))
                                        }
                                    }
                                }
                            }
                            td { @for (k, v) in &a.agent.properties { span.label { (k) "=" (v) } " " } }
                        }
                    }
                }
            }
            h2 { "Queue" }
            @if view.queue.is_empty() {
                p.empty { "Nothing is waiting for a slot." }
            }
            table #queue {
                (head("Queued work by requester, in fair-share order", &["Position", "Requester", "Queued", "Oldest wait", "Weight", "Service received"]))
                tbody {
                    @for q in &view.queue {
                        tr data-requester=(q.requester) {
                            td.num { (q.position) }
                            td { (q.requester) }
                            td.num { (q.queued) }
                            td.num { (duration(q.oldest_wait_ms as f64)) }
                            td.num { (format!("{:.1}", q.weight)) }
                            td.num { (format!("{:.2}", q.virtual_time)) }
                        }
                    }
                }
            }
        }
    };
    layout(
        "Fleet",
        Section::Fleet,
        BodyData::page("fleet"),
        Some(viewer),
        content,
    )
}

fn action_kind(kind: &ActionKind) -> Markup {
    match kind {
        ActionKind::CacheHit => badge("cache_hit"),
        ActionKind::CacheMiss => badge("cache_miss"),
        ActionKind::Executed { cached: true, .. } => badge("cache_hit"),
        ActionKind::Executed { exit_code: 0, .. } => badge("passed"),
        ActionKind::Executed { exit_code, .. } => {
            html! { span.badge.failed { "exit " (exit_code) } }
        }
    }
}

fn action_table(id: &str, caption: &str, actions: &[ActionRow]) -> Markup {
    html! {
        table id=(id) {
            (head(caption, &["Target", "Mnemonic", "Outcome", "Ran for", "Agent", "Action"]))
            tbody {
                @for a in actions {
                    tr data-action=(a.action_digest) {
                        td { @if a.target_id.is_empty() { span.note { "unknown" } } @else { code { (a.target_id) } } }
                        td { (a.mnemonic) }
                        td { (action_kind(&a.kind)) }
                        td.num { @if let ActionKind::Executed { cached: false, duration_ms, .. } = &a.kind { (duration(*duration_ms as f64)) } }
                        td { @if let ActionKind::Executed { agent, .. } = &a.kind { (agent) } }
                        td { code { (a.action_digest.get(..12).unwrap_or(&a.action_digest)) } }
                    }
                }
            }
        }
    }
}

/// `/builds`.
pub(super) fn builds_page(view: &BuildsView, viewer: &Viewer) -> Markup {
    let content = html! {
        h1 { "Builds" }
        p.note { "Invocations of REAPI clients (Bazel, Buck2, ...) by their build id "
            "(RequestMetadata's correlated invocations id, else the tool invocation id)." }
        div #builds-list data-live="1" {
            @if view.builds.is_empty() {
                p.empty { "No build has used this coordinator yet. Point Bazel at it with "
                    code { "--remote_executor=grpc://HOST:PORT" } "." }
            } @else {
                table #builds {
                    (head("Builds, newest first", &["Invocation", "Tool", "Started (UTC)", "Duration", "Actions", "Cache hits", "Executed", "Failed"]))
                    tbody {
                        @for b in &view.builds {
                            tr data-invocation=(b.summary.id) {
                                td { a href=(b.url) { code { (b.summary.id.get(..13).unwrap_or(&b.summary.id)) } }
                                     @if !b.summary.tool_invocation_id.is_empty() && b.summary.tool_invocation_id != b.summary.id {
                                         br; span.title { "tool id " (b.summary.tool_invocation_id) } } }
                                td { (b.summary.tool) }
                                td { (time(b.summary.started_unix_ms)) }
                                td.num { (duration(b.summary.last_unix_ms.saturating_sub(b.summary.started_unix_ms) as f64)) }
                                td.num { (b.summary.actions) }
                                td.num { (b.summary.cache_hits) " (" (percent(b.hit_ratio)) ")" }
                                td.num { (b.summary.executed) }
                                td.num { @if b.summary.failed > 0 { span.bad { (b.summary.failed) } } @else { "0" } }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if view.before.is_some() { a rel="prev" href="/builds" { "← Newest" } }
            @if let Some(next) = &view.next { a rel="next" href={ "/builds?before=" (encode(next)) } { "Older →" } }
        }
    };
    layout(
        "Builds",
        Section::Builds,
        BodyData::page("builds"),
        Some(viewer),
        content,
    )
}

/// `/builds/{invocation}`.
pub(super) fn build_page(view: &BuildView, viewer: &Viewer) -> Markup {
    let s = &view.build.summary;
    let content = html! {
        h1 { "Build " code { (s.id) } }
        dl.summary {
            div { dt { "Tool" } dd { (s.tool) } }
            @if !s.tool_invocation_id.is_empty() { div { dt { "Tool invocation id" } dd { code { (s.tool_invocation_id) } } } }
            div { dt { "Started (UTC)" } dd { (time(s.started_unix_ms)) } }
            div { dt { "Actions" } dd { (s.actions) } }
            div { dt { "Cache hit ratio" } dd #hit-ratio { (percent(view.build.hit_ratio)) " (" (s.cache_hits) " hits, " (s.executed) " executed)" } }
            div { dt { "Failed" } dd { (s.failed) } }
        }
        @if !view.slowest.is_empty() {
            section aria-labelledby="slowest-h" {
                h2 #slowest-h { "Slowest actions" }
                (action_table("slowest", "The actions that ran longest", &view.slowest))
            }
        }
        section aria-labelledby="actions-h" {
            h2 #actions-h { "Actions" }
            (action_table("actions", "Every action of this build", &view.actions))
        }
    };
    layout(
        &format!("Build {}", s.id),
        Section::Builds,
        BodyData::page("build"),
        Some(viewer),
        content,
    )
}

/// `/login`.
pub(super) fn login_page(message: Option<&str>, next: &str) -> Markup {
    let content = html! {
        h1 { "Log in" }
        p { "The dashboard needs a token (role reader or better). "
            "An administrator makes one with " code { "tessera token create NAME --role reader" } "." }
        @if let Some(message) = message { p.error role="alert" { (message) } }
        form #login method="post" action="/login" {
            input type="hidden" name="next" value=(next);
            div.field {
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
            }
            button type="submit" { "Log in" }
        }
    };
    layout(
        "Log in",
        Section::Login,
        BodyData::page("login"),
        None,
        content,
    )
}

/// A page for an error: what happened and what to do.
pub(super) fn error_page(status: u16, message: &str, viewer: Option<&Viewer>) -> Markup {
    let content = html! {
        h1 { (status) }
        p.error { (message) }
        p { a href="/" { "Back to the jobs" } }
    };
    layout(
        "Error",
        Section::Jobs,
        BodyData::page("error"),
        viewer,
        content,
    )
}

/// The style sheet.
pub(super) const CSS: &str = include_str!("assets/dashboard.css");
/// The script.
pub(super) const JS: &str = include_str!("assets/dashboard.js");
