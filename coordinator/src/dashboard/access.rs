//! Who is looking at the dashboard, and whether they may write.
//!
//! | auth | how a request is identified | writes |
//! | --- | --- | --- |
//! | off | anyone; a page still sets a random cookie, whose keyed hash is the CSRF token (no state kept per visitor) | that CSRF token |
//! | tokens | a session cookie from `/login` (a token typed into the form), or `Authorization: Bearer TOKEN` (scripts, JSON) | the token's role, and the session's CSRF token (not needed with a bearer header: a browser never adds one by itself) |
//!
//! The session cookie (`tessera_session`) is `HttpOnly`, `SameSite=Strict`, `Path=/` and
//! `Secure` when the port serves TLS; it holds a random id, never the token. Sessions live in
//! memory: a restart of the coordinator asks for a new login, and a session whose token is
//! revoked or expired ends at its next request. Each session has its own random CSRF token,
//! which every form that writes carries in a hidden field and every write checks (in
//! constant time), besides `SameSite=Strict` and a same-origin check of `Origin`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use rand::RngCore;

use crate::auth::{Permission, Principal, TokenStore};
use crate::config::AuthMode;

/// The session cookie's name.
pub(super) const COOKIE: &str = "tessera_session";
/// How long a session lasts without a request.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; beyond, the least recently used go.
const MAX_SESSIONS: usize = 10_000;

/// The one who makes a request.
#[derive(Debug, Clone)]
pub(super) struct Viewer {
    /// Who they are (the anonymous principal with auth off).
    pub principal: Principal,
    /// Their session's CSRF token (`None` without a session).
    pub csrf: Option<String>,
    /// Identified by an `Authorization` header, which a browser never adds by itself: their
    /// writes need no CSRF token.
    pub bearer: bool,
    /// A `Set-Cookie` to send: a session was just created.
    pub set_cookie: Option<HeaderValue>,
}

impl Viewer {
    /// Whether they may do `permission`.
    pub(super) fn may(&self, permission: Permission) -> bool {
        self.principal.check(permission).is_ok()
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No valid session or token: log in (pages redirect to `/login`).
    LogIn(String),
    /// Identified, but not allowed.
    Forbidden(String),
}

#[derive(Debug, Clone)]
struct Session {
    principal: Principal,
    csrf: String,
    last_used: Instant,
}

/// Sessions and the token check.
#[derive(Clone)]
pub(super) struct Access {
    mode: AuthMode,
    tokens: TokenStore,
    /// The port serves TLS: cookies are `Secure`.
    secure: bool,
    /// Auth is off and the port listens on loopback: only requests addressed to a loopback
    /// name are answered (a page of another site that rebinds its name to 127.0.0.1 would
    /// otherwise be same-origin with the dashboard).
    loopback_only: bool,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    /// Derives the CSRF token of an anonymous visitor (auth off) from their cookie.
    key: [u8; 32],
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("mode", &self.mode)
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Equal, compared in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Access {
    /// `loopback`: the HTTP port listens on a loopback address.
    pub(super) fn new(mode: AuthMode, tokens: TokenStore, secure: bool, loopback: bool) -> Self {
        Access {
            loopback_only: loopback && mode == AuthMode::None,
            mode,
            tokens,
            secure,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            key: {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                key
            },
        }
    }

    /// Whether the pages need a login.
    pub(super) fn login_required(&self) -> bool {
        self.mode == AuthMode::Tokens
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who makes the request with `headers`; every role but `agent` may read the pages.
    /// `page`: the answer is an HTML page (with auth off, it gets a session for its forms).
    pub(super) fn viewer(&self, headers: &HeaderMap, page: bool) -> Result<Viewer, Refusal> {
        self.check_host(headers)?;
        if self.mode == AuthMode::Tokens
            && let Some(value) = headers.get(header::AUTHORIZATION)
        {
            let principal = crate::auth::layer::bearer(value)
                .and_then(|secret| self.tokens.authenticate(secret, None))
                .map_err(|s| Refusal::LogIn(s.message().to_owned()))?;
            principal
                .check(Permission::JobRead)
                .map_err(|s| Refusal::Forbidden(s.message().to_owned()))?;
            return Ok(Viewer {
                principal,
                csrf: None,
                bearer: true,
                set_cookie: None,
            });
        }
        if self.mode == AuthMode::None {
            return Ok(self.anonymous(headers, page));
        }
        if let Some(id) = cookie(headers, COOKIE)
            && let Some(session) = self.touch(id)?
        {
            return Ok(Viewer {
                principal: session.principal,
                csrf: Some(session.csrf),
                bearer: false,
                set_cookie: None,
            });
        }
        Err(Refusal::LogIn(
            "log in with a token (`tessera token create NAME --role reader` makes one)".to_owned(),
        ))
    }

    /// Auth off: everyone may look. A page (which may hold forms) gets a random cookie and
    /// the CSRF token derived from it with this process's key, so no state is kept per
    /// visitor; a JSON or event-stream client without the cookie gets none (and cannot write
    /// without one).
    fn anonymous(&self, headers: &HeaderMap, page: bool) -> Viewer {
        let (id, set_cookie) = match cookie(headers, COOKIE) {
            Some(id) if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (Some(id.to_owned()), None)
            }
            _ if page => {
                let id = random_hex();
                let set = self.cookie_for(&id);
                (Some(id), Some(set))
            }
            _ => (None, None),
        };
        Viewer {
            principal: Principal::anonymous(None),
            csrf: id.map(|id| hex::encode(blake3::keyed_hash(&self.key, id.as_bytes()).as_bytes())),
            bearer: false,
            set_cookie,
        }
    }

    /// The session `id`, used now; `Err` if its token no longer holds.
    fn touch(&self, id: &str) -> Result<Option<Session>, Refusal> {
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(id) else {
            return Ok(None);
        };
        if session.last_used.elapsed() > IDLE {
            sessions.remove(id);
            return Ok(None);
        }
        if let Err(status) = self.tokens.still_valid(&session.principal) {
            sessions.remove(id);
            return Err(Refusal::LogIn(format!(
                "{}: log in again",
                status.message()
            )));
        }
        session.last_used = Instant::now();
        Ok(Some(session.clone()))
    }

    fn open(&self, principal: Principal) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            principal,
            csrf: random_hex(),
            last_used: Instant::now(),
        };
        let mut sessions = self.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.retain(|_, s| s.last_used.elapsed() <= IDLE);
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), session.clone());
        (id, session)
    }

    /// Logs in with `secret`: a session cookie to set, or why not.
    pub(super) fn log_in(&self, secret: &str) -> Result<HeaderValue, Refusal> {
        let principal = self
            .tokens
            .authenticate(secret.trim(), None)
            .map_err(|s| Refusal::LogIn(s.message().to_owned()))?;
        principal
            .check(Permission::JobRead)
            .map_err(|s| Refusal::Forbidden(s.message().to_owned()))?;
        let (id, _) = self.open(principal);
        Ok(self.cookie_for(&id))
    }

    /// Ends the session of `headers`; the cookie that clears it.
    pub(super) fn log_out(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(id) = cookie(headers, COOKIE) {
            self.lock().remove(id);
        }
        self.cookie_value("", 0)
    }

    fn cookie_for(&self, id: &str) -> HeaderValue {
        self.cookie_value(id, IDLE.as_secs())
    }

    fn cookie_value(&self, id: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let text =
            format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
        // Hex and fixed text: always a valid header value.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Checks a write by `viewer`: the form's `csrf` field matches the session's token (a
    /// bearer-header caller needs none), and the request comes from this origin.
    pub(super) fn check_write(
        &self,
        viewer: &Viewer,
        headers: &HeaderMap,
        csrf: Option<&str>,
    ) -> Result<(), Refusal> {
        let valid = match &viewer.csrf {
            Some(expected) => csrf.is_some_and(|given| same(given, expected)),
            None => viewer.bearer,
        };
        if !valid {
            return Err(Refusal::Forbidden(
                "the form's CSRF token is missing or stale: reload the page and try again"
                    .to_owned(),
            ));
        }
        self.check_origin(headers)
    }

    /// With auth off on a loopback port, refuses a request addressed to any other name than
    /// `localhost` (and its subdomains) or a loopback address.
    pub(super) fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if !self.loopback_only {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        let loopback = name.eq_ignore_ascii_case("localhost")
            || name.to_ascii_lowercase().ends_with(".localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback || host.is_empty() {
            Ok(())
        } else {
            Err(Refusal::Forbidden(format!(
                "the dashboard answers only to localhost while authentication is off (this \
                 request was for {host:?}); start the coordinator with --auth tokens to serve \
                 it under other names"
            )))
        }
    }

    /// Refuses a request whose `Origin` is another host than the one it was sent to.
    pub(super) fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST))
        {
            let origin = origin.to_str().unwrap_or("");
            let host = host.to_str().unwrap_or("");
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            if origin != "null" && origin_host != host {
                return Err(Refusal::Forbidden(format!(
                    "a write from another origin ({origin}) is refused"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tessera_cas::meta::MemoryMetaStore;

    use super::*;
    use crate::auth::Role;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn session_of(cookie: &HeaderValue) -> String {
        let text = cookie.to_str().unwrap();
        text.split(';').next().unwrap().to_owned()
    }

    #[tokio::test]
    async fn with_tokens_a_login_gives_a_strict_http_only_session_with_its_own_csrf_token() {
        let tokens = TokenStore::open(Arc::new(MemoryMetaStore::new())).unwrap();
        let (reader, _) = tokens
            .create("r", Role::Reader, Vec::new(), None, "test")
            .await
            .unwrap();
        let access = Access::new(AuthMode::Tokens, tokens.clone(), true, true);
        assert!(matches!(
            access.viewer(&HeaderMap::new(), true),
            Err(Refusal::LogIn(_))
        ));
        assert!(matches!(access.log_in("wrong"), Err(Refusal::LogIn(_))));
        let set = access.log_in(&reader).unwrap();
        let text = set.to_str().unwrap();
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(text.contains(part), "{text}");
        }
        let with_cookie = headers(&[(header::COOKIE, &session_of(&set))]);
        let viewer = access.viewer(&with_cookie, true).unwrap();
        assert_eq!(viewer.principal.name, "r");
        assert!(!viewer.may(Permission::Quarantine));
        let csrf = viewer.csrf.clone().unwrap();
        assert!(access.check_write(&viewer, &with_cookie, None).is_err());
        assert!(
            access
                .check_write(&viewer, &with_cookie, Some("x"))
                .is_err()
        );
        assert!(
            access
                .check_write(&viewer, &with_cookie, Some(&csrf))
                .is_ok()
        );
        let cross = headers(&[
            (header::ORIGIN, "https://evil.example"),
            (header::HOST, "dash:8080"),
        ]);
        assert!(access.check_write(&viewer, &cross, Some(&csrf)).is_err());

        // A bearer header works without a session; a revoked token ends the session.
        let bearer = headers(&[(header::AUTHORIZATION, &format!("Bearer {reader}"))]);
        let by_header = access.viewer(&bearer, false).unwrap();
        assert_eq!(by_header.principal.name, "r");
        assert!(
            access
                .check_write(&by_header, &HeaderMap::new(), None)
                .is_ok()
        );
        tokens.revoke("r").await.unwrap();
        assert!(matches!(
            access.viewer(&with_cookie, true),
            Err(Refusal::LogIn(_))
        ));
        let out = access.log_out(&with_cookie);
        assert!(out.to_str().unwrap().contains("Max-Age=0"));
    }

    #[tokio::test]
    async fn with_auth_off_everyone_reads_and_writes_still_need_the_csrf_token() {
        let tokens = TokenStore::open(Arc::new(MemoryMetaStore::new())).unwrap();
        let access = Access::new(AuthMode::None, tokens, false, true);
        // Another name for this loopback port (DNS rebinding) is refused.
        for host in ["evil.example", "evil.example:8080", "10.0.0.1:80"] {
            assert!(
                access
                    .viewer(&headers(&[(header::HOST, host)]), true)
                    .is_err(),
                "{host}"
            );
        }
        for host in [
            "localhost:9464",
            "127.0.0.1:9464",
            "[::1]:9464",
            "dash.localhost",
        ] {
            assert!(
                access
                    .viewer(&headers(&[(header::HOST, host)]), true)
                    .is_ok(),
                "{host}"
            );
        }
        let first = access.viewer(&HeaderMap::new(), true).unwrap();
        let set = first
            .set_cookie
            .clone()
            .expect("a session for the CSRF token");
        assert!(!set.to_str().unwrap().contains("Secure"));
        let again = access
            .viewer(&headers(&[(header::COOKIE, &session_of(&set))]), true)
            .unwrap();
        assert!(again.set_cookie.is_none(), "the same session");
        assert_eq!(again.csrf, first.csrf);
        assert!(access.check_write(&again, &HeaderMap::new(), None).is_err());
        // A script without a session gets none, and cannot write without one.
        let script = access.viewer(&HeaderMap::new(), false).unwrap();
        assert!(script.set_cookie.is_none() && script.csrf.is_none());
        assert!(
            access
                .check_write(&script, &HeaderMap::new(), None)
                .is_err()
        );
    }
}
