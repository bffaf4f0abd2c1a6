//! One file per gRPC service; each method is a thin adapter over an inner function that
//! returns the service's domain `Result`, and each file maps its errors to status codes in one
//! `From` impl.

pub mod action_cache;
pub mod admin;
pub mod agent_session;
pub mod bytestream;
pub mod capabilities;
pub mod cas;
pub mod execution;
pub mod jobs;
pub mod operations;
pub mod quarantine;
pub mod webhooks;
