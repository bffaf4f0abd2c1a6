//! The small HTTP port beside the gRPC port: `/metrics` (Prometheus/OpenMetrics text),
//! `/healthz` (the process is alive) and `/readyz` (the process accepts work), served by the
//! coordinator and the agent alike.
//!
//! It owns the routes, the optional TLS (the same [`TlsReloader`] as the gRPC port, so the same
//! certificate) and the shape of the access check. It does not know what the metrics are, how
//! readiness is decided or who may read `/metrics`: the caller passes closures for each
//! ([`HttpHandlers`]).
//!
//! | path       | answer                                             | access                |
//! | ---------- | -------------------------------------------------- | --------------------- |
//! | `/metrics` | 200 with the text of [`HttpHandlers::metrics`]     | [`MetricsAccess`]     |
//! | `/healthz` | 200 `ok`                                           | always open           |
//! | `/readyz`  | 200 `ready`, or 503 with the reason not ready      | always open           |
//! | other      | the caller's [`HttpHandlers::extra`] routes, else 404 |                       |

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;

use crate::server::{Conn, Peer, TlsReloader, incoming};

pub use axum::http::{HeaderMap, StatusCode};

/// The content type of `/metrics` for a client that accepts OpenMetrics (Prometheus does):
/// the text of [`HttpHandlers::metrics`] as it is.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of `/metrics` for any other client (`curl`, `promtool check metrics`):
/// the classic Prometheus text format, see [`openmetrics_to_prometheus`].
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why a request for `/metrics` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessDenied {
    /// 401: no credentials, or credentials that are not valid; the message says what to send.
    Unauthorized(String),
    /// 403: valid credentials that may not read metrics; the message names what is missing.
    Forbidden(String),
}

impl AccessDenied {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            AccessDenied::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AccessDenied::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }
}

impl IntoResponse for AccessDenied {
    fn into_response(self) -> Response {
        match self {
            AccessDenied::Unauthorized(message) => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                format!("{message}\n"),
            )
                .into_response(),
            AccessDenied::Forbidden(message) => {
                (StatusCode::FORBIDDEN, format!("{message}\n")).into_response()
            }
        }
    }
}

/// Decides from a request's headers whether it may read `/metrics`.
pub type MetricsAccess = Arc<dyn Fn(&HeaderMap) -> Result<(), AccessDenied> + Send + Sync>;

/// What the HTTP port answers with; each closure is called per request and must be cheap
/// and must not block (they run on the async runtime).
#[derive(Clone)]
pub struct HttpHandlers {
    /// The exposition text for `/metrics`, in OpenMetrics text format (as
    /// `prometheus-client` writes it).
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// `Ok` when ready to accept work; otherwise the reason, sent with a 503.
    pub ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// Who may read `/metrics`; `None` leaves it open.
    pub metrics_access: Option<MetricsAccess>,
    /// More routes served on the same port (the coordinator's dashboard); they must not
    /// claim the paths above.
    pub extra: Option<Router>,
}

impl std::fmt::Debug for HttpHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHandlers")
            .field("metrics_access", &self.metrics_access.is_some())
            .field("extra", &self.extra.is_some())
            .finish_non_exhaustive()
    }
}

/// The routes of the HTTP port, without a listener (for tests and for callers that serve
/// it themselves).
pub fn router(handlers: HttpHandlers) -> Router {
    let extra = handlers.extra.clone();
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(handlers));
    match extra {
        Some(extra) => router.merge(extra),
        None => router,
    }
}

/// Serves the HTTP port on `listener` (with TLS when `tls` is given, offering ALPN `h2` and
/// `http/1.1`; both protocols are served) until `shutdown`
/// completes; connections in progress then finish their current request.
///
/// Errors only if the listener's address cannot be read; failed accepts and handshakes are
/// logged and skipped.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<TlsReloader>,
    handlers: HttpHandlers,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local_addr = listener.local_addr()?;
    let listener = ConnListener {
        conns: Box::pin(incoming(listener, tls.map(|tls| tls.with_http_alpn()))),
        local_addr,
    };
    axum::serve(listener, router(handlers))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(handlers): State<Arc<HttpHandlers>>, headers: HeaderMap) -> Response {
    if let Some(access) = &handlers.metrics_access
        && let Err(denied) = access(&headers)
    {
        return denied.into_response();
    }
    let text = (handlers.metrics)();
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
            openmetrics_to_prometheus(&text),
        )
            .into_response()
    }
}

/// The classic Prometheus text format (0.0.4) of OpenMetrics text as `prometheus-client`
/// writes it, for clients that did not ask for OpenMetrics. The samples are the same; only
/// the metadata differs: a counter family is named with its `_total` suffix (OpenMetrics
/// names the family without it, which the classic parser and `promtool check metrics` read
/// as a family without samples and samples without help), and the `# UNIT` and `# EOF`
/// lines, which the classic format does not have, are dropped. Exemplars and info metrics
/// are not converted (Tessera exposes none).
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // HELP comes before TYPE: hold it until the type says whether to rename the family.
    let mut help: Option<(&str, &str)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), "");
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" && !name.ends_with("_total") {
                "_total"
            } else {
                ""
            };
            match help.take() {
                Some(held) if held.0 == name => flush_help(&mut out, Some(held), suffix),
                other => flush_help(&mut out, other, ""),
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        flush_help(&mut out, help.take(), "");
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, help, "");
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: &str) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
    }
}

async fn readyz(State(handlers): State<Arc<HttpHandlers>>) -> Response {
    match (handlers.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

/// The accepted connections (plain or TLS) as an axum listener.
struct ConnListener {
    conns: Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>,
    local_addr: SocketAddr,
}

impl axum::serve::Listener for ConnListener {
    type Io = Conn;
    type Addr = Peer;

    async fn accept(&mut self) -> (Conn, Peer) {
        loop {
            match self.conns.next().await {
                Some(Ok(conn)) => {
                    let peer = conn.peer().clone();
                    return (conn, peer);
                }
                // `incoming` already backs off on errors that concern the listener.
                Some(Err(error)) => tracing::debug!(%error, "HTTP port: accept failed"),
                // `incoming` never ends; should it, stop accepting rather than spin.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: Some(self.local_addr),
            tls: false,
            client_cert: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends one HTTP/1.1 GET and returns the status code and the body.
    async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
        let auth = auth
            .map(|token| format!("Authorization: Bearer {token}\r\n"))
            .unwrap_or_default();
        get_with(addr, path, &auth).await
    }

    /// Like `get`, with extra header lines (each ending in CRLF).
    async fn get_with(addr: SocketAddr, path: &str, auth: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[test]
    fn openmetrics_counters_get_their_total_name_in_the_classic_format() {
        let openmetrics = "# HELP jobs Jobs finished.\n\
                           # TYPE jobs counter\n\
                           jobs_total{result=\"passed\"} 1\n\
                           # HELP wait_seconds Wait.\n\
                           # TYPE wait_seconds histogram\n\
                           # UNIT wait_seconds seconds\n\
                           wait_seconds_count 0\n\
                           # HELP up Up.\n\
                           # TYPE up gauge\n\
                           up 1\n\
                           # EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(openmetrics),
            "# HELP jobs_total Jobs finished.\n\
             # TYPE jobs_total counter\n\
             jobs_total{result=\"passed\"} 1\n\
             # HELP wait_seconds Wait.\n\
             # TYPE wait_seconds histogram\n\
             wait_seconds_count 0\n\
             # HELP up Up.\n\
             # TYPE up gauge\n\
             up 1\n"
        );
    }

    fn handlers(ready: Result<(), String>) -> HttpHandlers {
        HttpHandlers {
            metrics: Arc::new(|| "# TYPE up gauge\nup 1\n# EOF\n".to_owned()),
            ready: Arc::new(move || ready.clone()),
            metrics_access: Some(Arc::new(|headers: &HeaderMap| {
                match headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) {
                    None => Err(AccessDenied::Unauthorized("send a bearer token".into())),
                    Some(b"Bearer good") => Ok(()),
                    Some(_) => Err(AccessDenied::Forbidden("token may not read metrics".into())),
                }
            })),
            extra: None,
        }
    }

    async fn start(handlers: HttpHandlers) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_http(listener, None, handlers, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    #[tokio::test]
    async fn routes_answer_and_metrics_access_is_checked() {
        let (addr, _stop) = start(handlers(Ok(()))).await;
        assert_eq!(get(addr, "/healthz", None).await, (200, "ok\n".into()));
        assert_eq!(get(addr, "/readyz", None).await, (200, "ready\n".into()));
        assert_eq!(get(addr, "/metrics", None).await.0, 401);
        assert_eq!(get(addr, "/metrics", Some("bad")).await.0, 403);
        let (status, body) = get(addr, "/metrics", Some("good")).await;
        assert_eq!(status, 200);
        assert!(body.contains("up 1"), "{body}");
        assert!(
            !body.contains("# EOF"),
            "classic text format without Accept: {body}"
        );
        let accept = "Authorization: Bearer good\r\n\
                      Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n";
        let (status, body) = get_with(addr, "/metrics", accept).await;
        assert_eq!(status, 200);
        assert!(
            body.ends_with("# EOF\n"),
            "OpenMetrics when asked for: {body}"
        );
        assert_eq!(get(addr, "/nope", None).await.0, 404);
    }

    #[tokio::test]
    async fn readyz_gives_the_reason_with_503() {
        let (addr, _stop) = start(handlers(Err("shutting down".into()))).await;
        assert_eq!(
            get(addr, "/readyz", None).await,
            (503, "shutting down\n".into())
        );
        assert_eq!(get(addr, "/healthz", None).await.0, 200);
    }
}
