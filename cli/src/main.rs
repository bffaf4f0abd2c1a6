//! `tessera`: the one user-facing binary. A doorway: parse the command line, run the command on
//! an async runtime, turn its result into a documented exit code (see [`tessera_cli::exit`]:
//! 0 success, 1 tests failed, 2 usage, bad input or configuration, 3 infrastructure,
//! 130 interrupted). Run with `__agent-spawner`, it is an agent's spawner process instead.

use std::process::ExitCode;

use clap::Parser;
use tessera_cli::command::Cli;
use tessera_cli::exit::{CliError, exit_code};

fn main() -> ExitCode {
    // The agent's spawner is this binary re-executed (see `tessera_agent::spawner`): it must
    // start before any thread exists, so before the runtime.
    if let Some(code) = tessera_agent::spawner::main_if_spawner() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    tessera_agent::spawner::set_command(tessera_agent::spawner::SpawnerCommand::this_binary());
    // Freed transfer buffers are kept for the next, not faulted in afresh.
    tessera_cas::alloc::keep_freed_memory();
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
