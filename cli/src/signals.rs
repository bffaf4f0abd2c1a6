//! The shutdown signal of the long-running commands (`coordinator`, `agent`, `up`): the next
//! SIGTERM or SIGINT. The client commands use [`crate::watch::Interrupt`] instead, which cancels
//! the job they follow.

/// Waits for the next SIGTERM or SIGINT, and logs which one came.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still stops on the default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
}
