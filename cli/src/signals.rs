//! The shutdown signal of the long-running commands (`coordinator`, `agent`, `up`, `tunnel`):
//! SIGTERM or SIGINT. The client commands use [`crate::watch::Interrupt`] instead, which cancels
//! the job they follow.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM and SIGINT handlers, installed when this is made: make it before the command
/// starts serving, so that a signal that comes before anyone waits for it still stops the
/// command cleanly (before the handlers exist, the default action kills the process).
pub struct ShutdownSignal {
    /// `None` if the handlers could not be installed: the default actions then apply.
    handlers: Option<(Signal, Signal)>,
}

impl ShutdownSignal {
    /// Installs the handlers now. Must run inside the runtime.
    pub fn install() -> ShutdownSignal {
        let handlers = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            _ => None,
        };
        ShutdownSignal { handlers }
    }

    /// Waits for the next SIGTERM or SIGINT since the handlers were installed, and logs which
    /// one came.
    pub async fn recv(&mut self) {
        let Some((term, int)) = &mut self.handlers else {
            // Without signal handlers the process still stops on the default action.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
    }
}
