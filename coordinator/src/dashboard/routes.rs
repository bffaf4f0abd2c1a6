//! The dashboard's routes on the HTTP port, each a few lines over a view (`views.rs`) and its
//! page (`html.rs`): who may look (`access.rs`), HTML or JSON by `Accept`, the server's time
//! in `Server-Timing`, and the status codes, chosen here.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /` | jobs: `submitter`, `label` (`k=v`), `result` (`running`, `passed`, ...), `after` (a page cursor) |
//! | `GET /jobs/{id}` | a job; `since=SEQ`: only the tests finished after event SEQ (a live page's update) |
//! | `GET /tests/{key}` | a test's runs and flake rate (`key` URL-encoded; `runs=N`: the rate's window) |
//! | `GET /flaky` | tests by flake rate over their last `runs` (default 20) runs |
//! | `POST /flaky/quarantine` | quarantine (`op=add`) or release (`op=remove`) a test; CSRF token required |
//! | `GET /fleet`, `GET /builds`, `GET /builds/{invocation}` | the agents and queue; REAPI invocations |
//! | `GET /events` | server-sent events: `job` (a job's shown events changed), `recorded`, `tick`, `lagged` (changes were dropped) |
//! | `GET /login`, `POST /login`, `POST /logout` | the session (auth on) |
//!
//! Statuses: 400 a parameter that cannot be read (the message names it), 401 no valid login
//! (pages redirect to `/login` instead), 403 a role that may not, or a write without its CSRF
//! token, 404 an unknown job, 500 the metadata store failed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::Stream;
use maud::Markup;
use serde::{Deserialize, Serialize};
use tessera_cas::meta::MetaError;
use tessera_runners::TestId;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::access::{Access, Refusal, Viewer};
use super::html;
use super::views::{self, DEFAULT_FLAKE_RUNS, RESULTS, Scope, Sources};
use crate::auth::{Permission, TokenStore};
use crate::builds::{BuildLog, BuildLogError};
use crate::config::AuthMode;
use crate::execution::scheduler::SchedulerHandle;
use crate::history::{FlakeWindow, JobFilter};
use crate::jobs::quarantine::{QuarantineKey, QuarantineStore};
use crate::jobs::registry::JobRegistry;

/// How often `/events` sends a `tick` (pages that show the fleet refresh on it).
const TICK: Duration = Duration::from_secs(2);

/// Everything the pages read, and who may read them.
#[derive(Clone, Debug)]
pub struct Dashboard {
    sources: Sources,
    scheduler: SchedulerHandle,
    access: Access,
    /// Ends the `/events` streams when the coordinator stops (graceful shutdown waits for them).
    shutdown: CancellationToken,
}

impl Dashboard {
    /// The dashboard over the coordinator's jobs, quarantine, scheduler and build log. `auth` and `tokens`
    /// decide who may look (see `access.rs`); `tls`: the port serves TLS (cookies are `Secure`);
    /// `loopback`: it listens on a loopback address.
    #[expect(
        clippy::too_many_arguments,
        reason = "the coordinator's parts the pages read, each passed once at start"
    )]
    pub fn new(
        registry: JobRegistry,
        quarantine: QuarantineStore,
        scheduler: SchedulerHandle,
        auth: AuthMode,
        tokens: TokenStore,
        tls: bool,
        loopback: bool,
        shutdown: CancellationToken,
        builds: BuildLog,
    ) -> Self {
        Dashboard {
            sources: Sources {
                registry,
                quarantine,
                builds,
            },
            scheduler,
            access: Access::new(auth, tokens, tls, loopback),
            shutdown,
        }
    }
}

type Shared = Arc<Dashboard>;

/// The dashboard's routes, to be merged into the HTTP port's router.
pub fn router(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/tests/{key}", get(test))
        .route("/flaky", get(flaky))
        .route("/flaky/quarantine", post(quarantine))
        .route("/fleet", get(fleet))
        .route("/builds", get(builds))
        .route("/builds/{invocation}", get(build))
        .route("/events", get(events))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/dashboard.css", get(css))
        .route("/assets/dashboard.js", get(js))
        .layer(axum::middleware::from_fn(timing))
        .with_state(Arc::new(dashboard))
}

/// Adds the server's time (`Server-Timing: app;dur=MS`) and the security headers.
async fn timing(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
        headers.insert("server-timing", value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Who asks, for the pages that read: a request that may not look is answered here (an HTML
/// page redirects to the login form; JSON gets 401 or 403).
struct Look(Viewer);

impl FromRequestParts<Shared> for Look {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, d: &Shared) -> Result<Self, Response> {
        let page = !wants_json(&parts.headers);
        d.access
            .viewer(&parts.headers, page)
            .map(Look)
            .map_err(|r| PageError::Refused(r).respond(&parts.headers, parts.uri.path(), None))
    }
}

/// Whether the client asked for JSON rather than HTML.
fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    match (accept.find("application/json"), accept.find("text/html")) {
        (Some(json), Some(html)) => json < html,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Why a page could not be answered.
#[derive(Debug)]
pub(super) enum PageError {
    /// 400: a parameter is invalid.
    BadRequest(String),
    /// 404.
    NotFound(String),
    /// 401/403.
    Refused(Refusal),
    /// 500: the metadata store failed.
    Store(MetaError),
    /// 500: the page's work did not finish.
    Internal(String),
}

impl From<BuildLogError> for PageError {
    fn from(error: BuildLogError) -> Self {
        match error {
            BuildLogError::Meta(e) => PageError::Store(e),
            other => PageError::Internal(other.to_string()),
        }
    }
}

impl From<MetaError> for PageError {
    fn from(error: MetaError) -> Self {
        PageError::Store(error)
    }
}

impl PageError {
    fn status(&self) -> StatusCode {
        match self {
            PageError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PageError::NotFound(_) => StatusCode::NOT_FOUND,
            PageError::Refused(Refusal::LogIn(_)) => StatusCode::UNAUTHORIZED,
            PageError::Refused(Refusal::Forbidden(_)) => StatusCode::FORBIDDEN,
            PageError::Store(_) | PageError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            PageError::BadRequest(m) | PageError::NotFound(m) | PageError::Internal(m) => m.clone(),
            PageError::Refused(Refusal::LogIn(m) | Refusal::Forbidden(m)) => m.clone(),
            PageError::Store(e) => format!("failed to read the metadata store: {e}"),
        }
    }

    /// The answer: JSON `{"error": ...}` or an HTML page; a page that needs a login redirects
    /// to `/login` (HTML GETs only).
    fn respond(self, headers: &HeaderMap, path: &str, viewer: Option<&Viewer>) -> Response {
        if matches!(self, PageError::Store(_) | PageError::Internal(_)) {
            tracing::warn!(error = %self.message(), path, "dashboard page failed");
        }
        if matches!(self, PageError::Refused(Refusal::LogIn(_))) && !wants_json(headers) {
            return Redirect::to(&format!("/login?next={}", views::encode(path))).into_response();
        }
        let status = self.status();
        let message = self.message();
        if wants_json(headers) {
            json_response(status, &serde_json::json!({ "error": message }))
        } else {
            (
                status,
                page(html::error_page(status.as_u16(), &message, viewer)),
            )
                .into_response()
        }
    }
}

fn page(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// The view as JSON or its page as HTML, with the session cookie when one was just made.
fn answer<T: Serialize>(
    headers: &HeaderMap,
    viewer: &Viewer,
    view: &T,
    render: impl FnOnce(&T) -> Markup,
) -> Response {
    let mut response = if wants_json(headers) {
        json_response(StatusCode::OK, view)
    } else {
        page(render(view))
    };
    if let Some(cookie) = &viewer.set_cookie {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    response
}

/// Runs `work` (metadata reads) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PageError> + Send + 'static,
) -> Result<T, PageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PageError::Internal(format!("the page's work failed: {e}")))?
}

fn nonempty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Query of `/`.
#[derive(Debug, Default, Deserialize)]
struct JobsQuery {
    submitter: Option<String>,
    label: Option<String>,
    result: Option<String>,
    after: Option<String>,
}

async fn jobs(
    State(d): State<Shared>,
    Look(viewer): Look,
    headers: HeaderMap,
    query: Result<Query<JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| PageError::BadRequest(e.body_text()))?;
        let result = nonempty(q.result).filter(|r| r != "any");
        if let Some(r) = &result
            && !RESULTS.contains(&r.as_str())
        {
            return Err(PageError::BadRequest(format!(
                "result \"{r}\" is not one of any, {}",
                RESULTS.join(", ")
            )));
        }
        let filter = JobFilter {
            submitter: nonempty(q.submitter),
            label: nonempty(q.label),
            result,
            instances: viewer.principal.instances.clone(),
        };
        let after = nonempty(q.after);
        if let Some(cursor) = &after
            && hex::decode(cursor).is_err()
        {
            return Err(PageError::BadRequest(format!(
                "after=\"{cursor}\" is not a page cursor: use the link of the page before"
            )));
        }
        let d = Arc::clone(&d);
        blocking(move || {
            Ok(views::jobs_view(
                &d.sources.registry,
                &filter,
                after.as_deref(),
            )?)
        })
        .await
    }
    .await;
    match result {
        Ok(view) => answer(&headers, &viewer, &view, |v| html::jobs_page(v, &viewer)),
        Err(e) => e.respond(&headers, "/", Some(&viewer)),
    }
}

/// Query of `/jobs/{id}`.
#[derive(Debug, Default, Deserialize)]
struct JobQuery {
    since: Option<u64>,
}

async fn job(
    State(d): State<Shared>,
    Look(viewer): Look,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let path = views::job_url(&id);
    let since = match query {
        Ok(Query(q)) => q.since,
        Err(e) => {
            return PageError::BadRequest(e.body_text()).respond(&headers, &path, Some(&viewer));
        }
    };
    let found = {
        let d = Arc::clone(&d);
        let id = id.clone();
        let scope = Scope(viewer.principal.instances.clone());
        blocking(move || Ok(views::job_view(&d.sources.registry, &id, since, &scope)?)).await
    };
    match found {
        Ok(Some(view)) if since.is_some() && !wants_json(&headers) => page(html::job_update(&view)),
        Ok(Some(view)) => answer(&headers, &viewer, &view, |v| html::job_page(v, &viewer)),
        Ok(None) => PageError::NotFound(format!(
            "job \"{id}\" is not known: it never ran here, or it finished long enough ago to \
             be removed (dashboard_jobs keeps the newest ones)"
        ))
        .respond(&headers, &path, Some(&viewer)),
        Err(e) => e.respond(&headers, &path, Some(&viewer)),
    }
}

/// Query of `/tests/{key}` and `/flaky`.
#[derive(Debug, Default, Deserialize)]
struct RunsQuery {
    runs: Option<u32>,
}

fn flake_runs(
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<u32, PageError> {
    let Query(q) = query.map_err(|e| PageError::BadRequest(e.body_text()))?;
    match q.runs {
        None => Ok(DEFAULT_FLAKE_RUNS),
        Some(n) if (1..=FlakeWindow::CAPACITY).contains(&n) => Ok(n),
        Some(n) => Err(PageError::BadRequest(format!(
            "runs={n}: the flake rate is over 1 to {} runs",
            FlakeWindow::CAPACITY
        ))),
    }
}

async fn test(
    State(d): State<Shared>,
    Look(viewer): Look,
    Path(key): Path<String>,
    headers: HeaderMap,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let path = views::test_url(&key);
    let result = async {
        let last = flake_runs(query)?;
        let d = Arc::clone(&d);
        let scope = Scope(viewer.principal.instances.clone());
        blocking(move || {
            Ok(views::test_view(
                d.sources.history(),
                &d.sources.quarantine,
                &key,
                last,
                &scope,
            )?)
        })
        .await
    }
    .await;
    match result {
        Ok(view) => answer(&headers, &viewer, &view, |v| html::test_page(v, &viewer)),
        Err(e) => e.respond(&headers, &path, Some(&viewer)),
    }
}

async fn flaky(
    State(d): State<Shared>,
    Look(viewer): Look,
    headers: HeaderMap,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let last = flake_runs(query)?;
        let d = Arc::clone(&d);
        let scope = Scope(viewer.principal.instances.clone());
        blocking(move || {
            Ok(views::flaky_view(
                d.sources.history(),
                &d.sources.quarantine,
                last,
                &scope,
            )?)
        })
        .await
    }
    .await;
    match result {
        Ok(mut view) => {
            view.can_quarantine = viewer.may(Permission::Quarantine);
            answer(&headers, &viewer, &view, |v| html::flaky_page(v, &viewer))
        }
        Err(e) => e.respond(&headers, "/flaky", Some(&viewer)),
    }
}

/// The quarantine form.
#[derive(Debug, Default, Deserialize)]
struct QuarantineForm {
    csrf: Option<String>,
    #[serde(default)]
    instance: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    name: String,
    /// `add` or `remove` (not `action`: a field of that name hides the form's own `action`
    /// property from scripts).
    #[serde(default)]
    op: String,
    #[serde(default)]
    reason: String,
    back: Option<String>,
}

/// A local path to return to (never another site: `//host`, `/\\host`, `scheme:` and control
/// characters, which browsers drop while parsing a URL, are refused).
fn local(back: Option<&str>, default: &str) -> String {
    match back {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(char::is_control) =>
        {
            path.to_owned()
        }
        _ => default.to_owned(),
    }
}

async fn quarantine(
    State(d): State<Shared>,
    headers: HeaderMap,
    form: Result<Form<QuarantineForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let path = "/flaky";
    let viewer = match d.access.viewer(&headers, !wants_json(&headers)) {
        Ok(v) => v,
        Err(r) => return PageError::Refused(r).respond(&headers, path, None),
    };
    let done = async {
        let Form(form) = form.map_err(|e| PageError::BadRequest(e.body_text()))?;
        d.access
            .check_write(&viewer, &headers, form.csrf.as_deref())
            .map_err(PageError::Refused)?;
        viewer
            .principal
            .check(Permission::Quarantine)
            .and_then(|()| viewer.principal.check_instance(&form.instance))
            .map_err(|s| PageError::Refused(Refusal::Forbidden(s.message().to_owned())))?;
        let key = QuarantineKey {
            instance: form.instance.clone(),
            project: form.project.clone(),
            test: TestId::new(form.group.clone(), form.name.clone()),
        };
        let store = d.sources.quarantine.clone();
        let principal = viewer.principal.clone();
        let op = form.op.clone();
        let reason = form.reason.trim().to_owned();
        blocking(move || {
            let entry = match op.as_str() {
                "add" => store.add(&principal, &key, &reason),
                "remove" => store.remove(&principal, &key),
                other => {
                    return Err(PageError::BadRequest(format!(
                        "op \"{other}\" is not add or remove"
                    )));
                }
            };
            entry.map_err(|e| PageError::BadRequest(e.to_string()))
        })
        .await?;
        Ok::<_, PageError>(local(form.back.as_deref(), path))
    }
    .await;
    match done {
        Ok(_) if wants_json(&headers) => {
            json_response(StatusCode::OK, &serde_json::json!({ "ok": true }))
        }
        Ok(back) => Redirect::to(&back).into_response(),
        Err(e) => e.respond(&headers, path, Some(&viewer)),
    }
}

async fn fleet(State(d): State<Shared>, Look(viewer): Look, headers: HeaderMap) -> Response {
    let view = match d.scheduler.fleet().await {
        Ok(fleet) => views::FleetPage::new(fleet),
        Err(e) => {
            return PageError::Internal(e.to_string()).respond(&headers, "/fleet", Some(&viewer));
        }
    };
    answer(&headers, &viewer, &view, |v| html::fleet_page(v, &viewer))
}

/// Query of `/builds`.
#[derive(Debug, Default, Deserialize)]
struct BuildsQuery {
    before: Option<String>,
}

async fn builds(
    State(d): State<Shared>,
    Look(viewer): Look,
    headers: HeaderMap,
    query: Result<Query<BuildsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let Query(q) = query.map_err(|e| PageError::BadRequest(e.body_text()))?;
        if !Scope(viewer.principal.instances.clone()).all() {
            return Ok(views::BuildsView::default());
        }
        let d = Arc::clone(&d);
        blocking(move || views::builds_view(&d.sources.builds, nonempty(q.before).as_deref())).await
    }
    .await;
    match result {
        Ok(view) => answer(&headers, &viewer, &view, |v| html::builds_page(v, &viewer)),
        Err(e) => e.respond(&headers, "/builds", Some(&viewer)),
    }
}

async fn build(
    State(d): State<Shared>,
    Look(viewer): Look,
    Path(invocation): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = views::build_url(&invocation);
    // Builds are not kept per instance: a token limited to instances sees none.
    let found = if Scope(viewer.principal.instances.clone()).all() {
        let d = Arc::clone(&d);
        let invocation = invocation.clone();
        blocking(move || views::build_view(&d.sources.builds, &invocation)).await
    } else {
        Ok(None)
    };
    match found {
        Ok(Some(view)) => answer(&headers, &viewer, &view, |v| html::build_page(v, &viewer)),
        Ok(None) => PageError::NotFound(format!(
            "invocation \"{invocation}\" is not known: no REAPI call carried it, or it is \
             older than the invocations kept"
        ))
        .respond(&headers, &path, Some(&viewer)),
        Err(e) => e.respond(&headers, &path, Some(&viewer)),
    }
}

async fn events(State(d): State<Shared>, headers: HeaderMap) -> Response {
    let viewer = d.access.viewer(&headers, false);
    if let Err(r) = viewer {
        // An EventSource cannot follow a redirect to a login form: plain 401/403.
        return PageError::Refused(r).respond(
            &{
                let mut h = HeaderMap::new();
                h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
                h
            },
            "/events",
            None,
        );
    }
    let scope = viewer
        .map(|v| Scope(v.principal.instances))
        .unwrap_or_default();
    Sse::new(event_stream(
        d.sources.registry.feed().subscribe(),
        scope,
        d.shutdown.clone(),
    ))
    .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    .into_response()
}

/// The feed's changes as events, a `tick` every [`TICK`], until the coordinator stops.
fn event_stream(
    feed: tokio::sync::broadcast::Receiver<crate::history::LiveChange>,
    scope: Scope,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let tick = tokio::time::interval(TICK);
    futures::stream::unfold(
        (feed, tick, scope, shutdown),
        |(mut feed, mut tick, scope, shutdown)| async move {
            loop {
                let event = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    _ = tick.tick() => Event::default().event("tick").data("{}"),
                    change = feed.recv() => match change {
                        // Jobs of instances outside the viewer's scope are not told.
                        Ok(change) if !scope.sees(change.instance()) => continue,
                        Ok(change) => Event::default()
                            .event(change.name())
                            .data(serde_json::to_string(&change).unwrap_or_default()),
                        // Too slow to follow every change: the page reloads what it shows.
                        Err(RecvError::Lagged(_)) => Event::default().event("lagged").data("{}"),
                        Err(RecvError::Closed) => return None,
                    },
                };
                return Some((Ok(event), (feed, tick, scope, shutdown)));
            }
        },
    )
}

/// Query of `/login`.
#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_form(State(d): State<Shared>, Query(q): Query<LoginQuery>) -> Response {
    let next = local(q.next.as_deref(), "/");
    if !d.access.login_required() {
        return Redirect::to(&next).into_response();
    }
    page(html::login_page(None, &next))
}

/// The login form.
#[derive(Debug, Default, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

async fn login(
    State(d): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = local(form.next.as_deref(), "/");
    // Another site must not log a browser in to its own token.
    if let Err(Refusal::Forbidden(message) | Refusal::LogIn(message)) =
        d.access.check_origin(&headers)
    {
        return (
            StatusCode::FORBIDDEN,
            page(html::login_page(Some(&message), &next)),
        )
            .into_response();
    }
    match d.access.log_in(&form.token) {
        Ok(cookie) => {
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().append(header::SET_COOKIE, cookie);
            response
        }
        Err(refusal) => {
            let (status, message) = match refusal {
                Refusal::LogIn(m) => (StatusCode::UNAUTHORIZED, m),
                Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            };
            (status, page(html::login_page(Some(&message), &next))).into_response()
        }
    }
}

/// The logout form.
#[derive(Debug, Default, Deserialize)]
struct LogoutForm {
    csrf: Option<String>,
}

async fn logout(
    State(d): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Ok(viewer) = d.access.viewer(&headers, true)
        && let Err(r) = d
            .access
            .check_write(&viewer, &headers, form.csrf.as_deref())
    {
        return PageError::Refused(r).respond(&headers, "/", Some(&viewer));
    }
    let cookie = d.access.log_out(&headers);
    let target = if d.access.login_required() {
        "/login"
    } else {
        "/"
    };
    let mut response = Redirect::to(target).into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", html::CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", html::JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn json_only_when_asked_for_before_html() {
        assert!(wants_json(&accept("application/json")));
        assert!(wants_json(&accept("application/json, text/html;q=0.5")));
        assert!(!wants_json(&accept(
            "text/html,application/xhtml+xml,application/json;q=0.9"
        )));
        assert!(!wants_json(&accept("*/*")));
        assert!(!wants_json(&HeaderMap::new()));
    }

    #[test]
    fn a_return_path_never_leaves_the_site() {
        assert_eq!(local(Some("/flaky?runs=5"), "/"), "/flaky?runs=5");
        for outside in [
            "//evil.example/x",
            "https://evil.example",
            "/\\evil",
            "/\t/evil.example",
            "/\n/evil.example",
            "",
        ] {
            assert_eq!(local(Some(outside), "/"), "/", "{outside}");
        }
        assert_eq!(local(None, "/flaky"), "/flaky");
    }
}
