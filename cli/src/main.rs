//! `tessera`: the one user-facing binary. A doorway: parse the command line, run the command on
//! an async runtime, turn its result into a documented exit code (see [`tessera_cli::exit`]:
//! 0 success, 1 tests failed, 2 usage, bad input or configuration, 3 infrastructure,
//! 130 interrupted).

use std::process::ExitCode;

use clap::Parser;
use tessera_cli::command::Cli;
use tessera_cli::exit::{CliError, exit_code};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        // The error is printed inside the runtime, before dropping it waits for blocking tasks.
        Ok(runtime) => runtime.block_on(async {
            let result = cli.command.run().await;
            // The last spans, when they are exported, leave before the runtime does.
            tessera_net::trace::shutdown().await;
            exit_code(result)
        }),
        Err(error) => exit_code(Err(CliError::infra(format!(
            "failed to start the async runtime: {error}"
        )))),
    }
}
