//! `tessera`: the one user-facing binary. A doorway: parse flags, load config, call the
//! library, map the outcome to a documented exit code.
//!
//! Exit codes (see [`tessera_cli::exit`]): 0 success (every test passed, flaky included), 1
//! tests failed or the prepare/list step failed, 2 usage or bad input (including configuration
//! errors), 3 infrastructure failure (coordinator unreachable, cannot bind, cannot open the data
//! directory, ...), 130 interrupted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tessera_cli::cluster::{ClusterLock, ClusterOptions, EmbeddedCluster};
use tessera_cli::exit::{CliError, EXIT_CODES_HELP, Exit};
use tessera_cli::run::{RunArgs, WatchArgs};
use tessera_cli::status::{CancelArgs, StatusArgs};
use tessera_coordinator::{ConfigOverrides, Coordinator, CoordinatorConfig, LogFormat};

/// Exit code for usage errors and bad input.
const EXIT_USAGE: u8 = Exit::Usage as u8;
/// Exit code for infrastructure failures.
const EXIT_INFRA: u8 = Exit::Infrastructure as u8;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a distributed build and test runner with a Remote Execution API v2 cache",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a test suite on the fleet: snapshot the working tree, submit it, show progress and
    /// failures, exit with the result.
    ///
    /// `tessera run -- cargo test`, `-- cargo nextest run`, `-- pytest -k fast`, `-- go test
    /// ./...`, or any command with `--runner command --list-command CMD -- RUN TEMPLATE` (the
    /// template names {tests} or {tests_file}). The project root (git top level, else the
    /// current directory) is seen at /var/tmp/tessera/<its name> on every agent. Without
    /// --coordinator or TESSERA_COORDINATOR, the run joins the embedded cluster of `tessera up`
    /// or starts one for its duration. Ctrl-C (or SIGTERM) cancels the job and exits 130.
    #[command(after_help = EXIT_CODES_HELP)]
    Run(RunArgs),
    /// Follow a job (again) from its first event, shown like `tessera run`, with the same exit
    /// codes.
    #[command(after_help = EXIT_CODES_HELP)]
    Watch(WatchArgs),
    /// Cancel a job.
    Cancel(CancelArgs),
    /// Jobs, agents and the queue of a coordinator.
    Status(StatusArgs),
    /// Run an embedded cluster in the foreground: a coordinator and local agents on loopback,
    /// with state under the user cache directory; `tessera run` on this machine uses it.
    /// Ctrl-C or SIGTERM stops it.
    Up(UpArgs),
    /// Run the coordinator: REAPI CAS, ByteStream, ActionCache, Execution, Operations and
    /// Capabilities, plus the agent protocol, on one port.
    ///
    /// Point Bazel at it with `--remote_cache=grpc://HOST:PORT` or
    /// `--remote_executor=grpc://HOST:PORT` (start agents with `tessera agent`). Settings come
    /// from defaults, then --config FILE, then TESSERA_* environment variables, then these
    /// flags.
    Coordinator(CoordinatorArgs),
    /// Run an agent: connect to a coordinator and run the actions it leases.
    ///
    /// Settings come from defaults, then --config FILE, then TESSERA_AGENT_* (and
    /// TESSERA_COORDINATOR) environment variables, then these flags. SIGTERM or Ctrl-C drains:
    /// no new leases, running ones finish and are reported; a second signal stops them at once.
    Agent(AgentArgs),
}

#[derive(Args)]
struct UpArgs {
    /// In-process agents.
    #[arg(long, value_name = "N", default_value_t = 1)]
    agents: u32,
    /// Slots per agent [default: one per core].
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// Coordinator listen address (loopback unless you mean otherwise).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[derive(Args)]
struct AgentArgs {
    /// TOML configuration file (unknown keys are errors). Also TESSERA_AGENT_CONFIG.
    #[arg(long, env = "TESSERA_AGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Coordinator endpoint [default: http://127.0.0.1:8980]. Also TESSERA_COORDINATOR.
    #[arg(long, value_name = "URL")]
    coordinator: Option<String>,
    /// Directory for the agent's id, blob cache and exec roots [default: ./tessera-agent].
    /// Also TESSERA_AGENT_WORK_DIR.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Actions run at once [default: number of CPUs]. Also TESSERA_AGENT_SLOTS.
    #[arg(long, value_name = "N")]
    slots: Option<u32>,
    /// Extra platform property to advertise, KEY=VALUE; repeatable. Also
    /// TESSERA_AGENT_PROPERTIES=k=v,k=v.
    #[arg(long = "property", value_name = "KEY=VALUE")]
    properties: Vec<String>,
    /// Agent id [default: generated once and kept in the work directory]. Also TESSERA_AGENT_ID.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Byte budget of the local blob cache [default: 10 GiB]. Also
    /// TESSERA_AGENT_MAX_CACHE_BYTES.
    #[arg(long, value_name = "BYTES")]
    max_cache_bytes: Option<u64>,
    /// Sandbox with Linux namespaces: auto (if the host allows) or off [default: auto].
    /// Also TESSERA_AGENT_SANDBOX.
    #[arg(long, value_name = "MODE")]
    sandbox: Option<tessera_agent::SandboxMode>,
    /// Keep the directories of failed leases under WORK_DIR/kept/ for debugging.
    #[arg(long)]
    keep_failed: bool,
    /// When draining, cancel leases still running after this long, e.g. "10m" [default: wait
    /// for their timeouts]. Also TESSERA_AGENT_DRAIN_TIMEOUT.
    #[arg(long, value_name = "DURATION", value_parser = tessera_agent::config::parse_duration_arg)]
    drain_timeout: Option<std::time::Duration>,
    /// Log format: text or json [default: text]. Verbosity comes from RUST_LOG.
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Args)]
struct CoordinatorArgs {
    /// TOML configuration file (unknown keys are errors). Also TESSERA_CONFIG.
    #[arg(long, env = "TESSERA_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:8980]. Also TESSERA_LISTEN.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Directory for all state [default: ./tessera-data]. Also TESSERA_DATA_DIR.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Byte budget for stored blobs; least recently used blobs are evicted beyond it.
    /// Also TESSERA_MAX_CAS_BYTES.
    #[arg(long, value_name = "BYTES")]
    max_cas_bytes: Option<u64>,
    /// Log format: text or json [default: text]. Verbosity comes from RUST_LOG.
    /// Also TESSERA_LOG_FORMAT.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
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

async fn coordinator(args: CoordinatorArgs) -> ExitCode {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let flags = ConfigOverrides {
        listen: args.listen,
        data_dir: args.data_dir,
        max_cas_bytes: args.max_cas_bytes,
        log_format: args.log_format,
    };
    let config = match CoordinatorConfig::load(args.config.as_deref(), &env, &flags) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tessera: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(config.log_format);
    let server = match Coordinator::start(&config).await {
        Ok(server) => server,
        Err(error) => {
            eprintln!("tessera: {error}");
            return ExitCode::from(EXIT_INFRA);
        }
    };
    let token = server.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    match server.run_until_shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tessera: {error}");
            ExitCode::from(EXIT_INFRA)
        }
    }
}

async fn agent(args: AgentArgs) -> ExitCode {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let flags = tessera_agent::AgentOverrides {
        coordinator: args.coordinator,
        work_dir: args.work_dir,
        slots: args.slots,
        properties: args.properties,
        id: args.id,
        max_cache_bytes: args.max_cache_bytes,
        sandbox: args.sandbox,
        keep_failed: args.keep_failed,
        drain_timeout: args.drain_timeout,
    };
    let config = match tessera_agent::AgentConfig::load(args.config.as_deref(), &env, &flags) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tessera: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(args.log_format);
    let shutdown = tessera_agent::CancellationToken::new();
    let abort = tessera_agent::CancellationToken::new();
    tokio::spawn({
        let (shutdown, abort) = (shutdown.clone(), abort.clone());
        async move {
            shutdown_signal().await;
            shutdown.cancel();
            shutdown_signal().await;
            tracing::warn!("second signal: stopping running actions now");
            abort.cancel();
        }
    });
    match tessera_agent::Agent::run_with_abort(config, shutdown, abort).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tessera: {error}");
            ExitCode::from(EXIT_INFRA)
        }
    }
}

/// Logging for the client commands: warnings only unless RUST_LOG says otherwise, so the
/// embedded cluster stays quiet.
fn init_client_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Maps a client command's result to its exit code, printing the error.
fn client_exit(result: Result<Exit, CliError>) -> ExitCode {
    match result {
        Ok(exit) => exit.into(),
        Err(error) => {
            eprintln!("tessera: {error}");
            error.exit().into()
        }
    }
}

async fn up(args: UpArgs) -> ExitCode {
    init_logging(LogFormat::Text);
    let cache_dir = tessera_cli::paths::cache_dir();
    let lock = match ClusterLock::try_acquire(&cache_dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            let running = tessera_cli::connect::running_cluster(&cache_dir).await;
            eprintln!(
                "tessera: an embedded cluster already runs{} (it holds {})",
                running.map(|u| format!(" at {u}")).unwrap_or_default(),
                tessera_cli::paths::cluster_dir(&cache_dir)
                    .join("lock")
                    .display()
            );
            return ExitCode::from(EXIT_USAGE);
        }
        Err(error) => {
            eprintln!("tessera: {error}");
            return error.exit().into();
        }
    };
    let options = ClusterOptions {
        agents: args.agents,
        slots: args.slots,
        listen: args.listen,
        ..ClusterOptions::new(cache_dir.clone())
    };
    let cluster = match EmbeddedCluster::start(&options, lock).await {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("tessera: {error}");
            return error.exit().into();
        }
    };
    println!(
        "tessera: embedded cluster at {} ({} agent(s)), started in {} ms; state in {}",
        cluster.url(),
        args.agents,
        cluster.started_in().as_millis(),
        tessera_cli::paths::cluster_dir(&cache_dir).display()
    );
    shutdown_signal().await;
    match cluster.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tessera: {error}");
            error.exit().into()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tessera: failed to start the async runtime: {error}");
            return ExitCode::from(EXIT_INFRA);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Coordinator(args) => coordinator(args).await,
            Command::Agent(args) => agent(args).await,
            Command::Up(args) => up(args).await,
            Command::Run(args) => {
                init_client_logging();
                let title = tessera_cli::spec::title(&std::env::args().skip(1).collect::<Vec<_>>());
                client_exit(tessera_cli::run::run(args, format!("tessera {title}")).await)
            }
            Command::Watch(args) => {
                init_client_logging();
                client_exit(tessera_cli::run::watch(args).await)
            }
            Command::Cancel(args) => {
                init_client_logging();
                client_exit(tessera_cli::status::cancel(args).await)
            }
            Command::Status(args) => {
                init_client_logging();
                client_exit(tessera_cli::status::status(args).await)
            }
        }
    })
}
