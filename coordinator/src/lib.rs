//! The Tessera coordinator.
//!
//! Owns the gRPC services (REAPI Capabilities, ContentAddressableStorage, ByteStream,
//! ActionCache), the action cache on top of the metadata store, the coordinator's configuration
//! and the server lifecycle (start, serve, drain on shutdown). Content addressing itself lives in
//! `tessera-cas`; the coordinator never depends on the agent.

pub mod action_cache;
pub mod auth;
pub mod backup;
pub mod builds;
pub mod config;
pub mod dashboard;
pub mod execution;
pub mod history;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod services;
mod status;

pub use config::{ConfigError, ConfigOverrides, CoordinatorConfig, LogFormat};
pub use server::{Coordinator, ServerError};
