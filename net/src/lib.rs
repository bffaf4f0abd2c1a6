//! Tessera's network edge, shared by the coordinator, the agent and the client commands.
//!
//! - `server`: TLS for the gRPC port (rustls with ring; certificates re-read on demand for
//!   new connections), optional client certificates (mutual TLS), and the accepted
//!   connections' [`server::Peer`] info handed to every request.
//! - `client`: the endpoint for an `http://` or `https://` coordinator URL (trust root,
//!   server name, client certificate) and the [`client::Link`] that carries the bearer token.
//! - `http`: the small HTTP port (`/metrics`, `/healthz`, `/readyz`) with the same TLS as
//!   the gRPC port and a caller-supplied check for who may read `/metrics`.
//! - `trace`: OpenTelemetry spans exported over OTLP, and the W3C trace context carried on
//!   every call and across the coordinator's hand-off of work to an agent.
//! - `post`: one HTTP/1.1 POST over TCP or verified TLS, for outgoing webhooks.
//! - `tunnel`: TLS on behalf of clients that cannot do it (`tessera tunnel`): plain
//!   connections accepted locally, forwarded over verified TLS to the coordinator.
//!
//! It knows nothing of Tessera's services, tokens' roles or configuration files: callers pass
//! paths and tokens in, and decide what a peer may do.

pub mod client;
pub mod http;
pub mod post;
pub mod server;
pub mod trace;
pub mod tunnel;
