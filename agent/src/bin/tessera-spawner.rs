//! The agent's spawner as a binary of its own, for embedders and tests that run an agent in a
//! process whose `main` does not call `tessera_agent::spawner::main_if_spawner` (the `tessera`
//! binary re-executes itself instead). Serves the socket on stdin; see `spawner`.

fn main() {
    std::process::exit(tessera_agent::spawner::serve_stdin());
}
