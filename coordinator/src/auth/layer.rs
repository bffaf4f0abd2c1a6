//! The authentication layer, in front of every service: it finds the caller's [`Principal`]
//! (the bearer token's, or the anonymous one with auth off), checks that the role allows the
//! method ([`permission`]), and puts the principal in the request's extensions for the
//! services' own checks. A refused call never reaches a service: it gets `UNAUTHENTICATED`
//! (no token, a malformed header, an unknown, revoked or expired token) or `PERMISSION_DENIED`
//! (a role without the method), and an audit entry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;

use super::{AuditLog, Permission, Principal, Role, TokenStore};
use crate::config::AuthMode;

/// The permission gRPC method `path` (`/package.Service/Method`) needs. A method not listed
/// needs `Admin`, so a service added later is closed until it is listed here.
pub fn permission(path: &str) -> Permission {
    use Permission as P;
    const REAPI: &str = "/build.bazel.remote.execution.v2.";
    if let Some(rest) = path.strip_prefix(REAPI) {
        return match rest {
            "Capabilities/GetCapabilities" => P::Capabilities,
            "ContentAddressableStorage/FindMissingBlobs"
            | "ContentAddressableStorage/BatchReadBlobs"
            | "ContentAddressableStorage/GetTree" => P::CasRead,
            "ContentAddressableStorage/BatchUpdateBlobs" => P::CasWrite,
            "ActionCache/GetActionResult" => P::AcRead,
            "ActionCache/UpdateActionResult" => P::AcWrite,
            "Execution/Execute" | "Execution/WaitExecution" => P::Execute,
            _ => P::Admin,
        };
    }
    match path {
        "/google.bytestream.ByteStream/Read" => P::CasRead,
        "/google.bytestream.ByteStream/Write"
        | "/google.bytestream.ByteStream/QueryWriteStatus" => P::CasWrite,
        "/google.longrunning.Operations/GetOperation"
        | "/google.longrunning.Operations/ListOperations"
        | "/google.longrunning.Operations/WaitOperation"
        | "/google.longrunning.Operations/CancelOperation"
        | "/google.longrunning.Operations/DeleteOperation" => P::Execute,
        "/tessera.v1.Jobs/Submit" | "/tessera.v1.Jobs/Cancel" => P::JobSubmit,
        "/tessera.v1.Jobs/Watch" | "/tessera.v1.Jobs/Status" => P::JobRead,
        "/tessera.v1.AgentSession/Session" => P::AgentSession,
        "/tessera.v1.Quarantine/Add" | "/tessera.v1.Quarantine/Remove" => P::Quarantine,
        "/tessera.v1.Quarantine/List" => P::JobRead,
        _ => P::Admin,
    }
}

/// The bearer token of an `authorization` header value, or why it is malformed.
pub fn bearer(value: &http::HeaderValue) -> Result<&str, Status> {
    let text = value.to_str().map_err(|_| {
        Status::unauthenticated("malformed authorization header: it is not visible ASCII")
    })?;
    let (scheme, token) = text.trim().split_once(' ').ok_or_else(|| {
        Status::unauthenticated("malformed authorization header: expected `Bearer TOKEN`")
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Status::unauthenticated(format!(
            "malformed authorization header: scheme {:?} is not Bearer (expected `Bearer TOKEN`)",
            scheme.chars().take(20).collect::<String>()
        )));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Status::unauthenticated(
            "malformed authorization header: the token after `Bearer` is empty",
        ));
    }
    Ok(token)
}

/// The caller's address, from the connection info tonic puts in the extensions.
pub fn peer_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    if let Some(peer) = extensions.get::<tessera_net::server::Peer>() {
        return peer.addr;
    }
    extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
}

/// Installs authentication in front of the services.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    mode: AuthMode,
    tokens: TokenStore,
    audit: AuditLog,
}

impl AuthLayer {
    /// Authentication by `mode` against `tokens`; refusals go to `audit`.
    pub fn new(mode: AuthMode, tokens: TokenStore, audit: AuditLog) -> Self {
        AuthLayer {
            state: Arc::new(State {
                mode,
                tokens,
                audit,
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    inner: S,
    state: Arc<State>,
}

impl State {
    /// The principal of a call to `path` with `headers` from `peer`, or the refusal.
    fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Principal, Status> {
        if self.mode == AuthMode::None {
            return Ok(Principal::anonymous(peer));
        }
        let unknown = || Principal {
            name: "?".to_owned(),
            role: Role::Reader,
            instances: Vec::new(),
            token_hash: None,
            peer,
        };
        let refuse = |principal: &Principal, status: Status| {
            self.audit.denied(principal, path, "", &status);
            status
        };
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(refuse(
                &unknown(),
                Status::unauthenticated(
                    "no token: this coordinator needs `authorization: Bearer TOKEN` on every \
                     call (tessera: TESSERA_TOKEN or --token-file; Bazel: \
                     --remote_header=authorization=\"Bearer TOKEN\")",
                ),
            ));
        };
        let principal = bearer(value)
            .and_then(|token| self.tokens.authenticate(token, peer))
            .map_err(|status| refuse(&unknown(), status))?;
        principal
            .check(permission(path))
            .map_err(|status| refuse(&principal, status))?;
        Ok(principal)
    }
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let peer = peer_addr(request.extensions());
        match self
            .state
            .admit(request.uri().path(), request.headers(), peer)
        {
            Ok(principal) => {
                request.extensions_mut().insert(Arc::new(principal));
                // The service that was made ready is the one that must be called.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_has_its_permission() {
        use Permission as P;
        for (path, want) in [
            (
                "/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
                P::Capabilities,
            ),
            (
                "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs",
                P::CasRead,
            ),
            (
                "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs",
                P::CasWrite,
            ),
            (
                "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult",
                P::AcWrite,
            ),
            (
                "/build.bazel.remote.execution.v2.ActionCache/GetActionResult",
                P::AcRead,
            ),
            (
                "/build.bazel.remote.execution.v2.Execution/Execute",
                P::Execute,
            ),
            ("/google.bytestream.ByteStream/Write", P::CasWrite),
            ("/google.bytestream.ByteStream/Read", P::CasRead),
            ("/google.longrunning.Operations/CancelOperation", P::Execute),
            ("/tessera.v1.Jobs/Submit", P::JobSubmit),
            ("/tessera.v1.Jobs/Status", P::JobRead),
            ("/tessera.v1.AgentSession/Session", P::AgentSession),
            ("/tessera.v1.Quarantine/Add", P::Quarantine),
            ("/tessera.v1.Quarantine/Remove", P::Quarantine),
            ("/tessera.v1.Quarantine/List", P::JobRead),
            ("/tessera.v1.Admin/CreateToken", P::Admin),
            ("/some.New/Method", P::Admin),
            ("/build.bazel.remote.execution.v2.Unknown/X", P::Admin),
        ] {
            assert_eq!(permission(path), want, "{path}");
        }
    }

    #[test]
    fn malformed_headers_are_named() {
        let ok = http::HeaderValue::from_static("Bearer tsr_abc");
        assert_eq!(bearer(&ok).unwrap(), "tsr_abc");
        let lower = http::HeaderValue::from_static("bearer tsr_abc");
        assert_eq!(bearer(&lower).unwrap(), "tsr_abc");
        for (value, says) in [
            ("tsr_abc", "expected `Bearer TOKEN`"),
            ("Basic dXNlcjpwYXNz", "is not Bearer"),
            ("Bearer  ", "expected `Bearer TOKEN`"),
        ] {
            let err = bearer(&http::HeaderValue::from_static(value)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            assert!(err.message().contains(says), "{value}: {}", err.message());
        }
        let binary = http::HeaderValue::from_bytes(b"Bearer \xff").unwrap();
        assert!(bearer(&binary).unwrap_err().message().contains("ASCII"));
    }
}
