//! The `callosum` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "callosum",
    version,
    about = "change-data-capture replication between PostgreSQL and MariaDB/MySQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every pipeline until SIGINT/SIGTERM (graceful: finish the batch, flush, acknowledge).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the config, connect, verify server prerequisites; exit 1 listing every problem with its fix.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Per pipeline: state, source position, applied position, lag, pending, dead letters (asks the running agent).
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start throwaway PostgreSQL and MariaDB servers, replicate PostgreSQL → MariaDB and show live counts.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Changes per second the demo workload writes to PostgreSQL.
        #[arg(long, default_value_t = 200)]
        rate: u32,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // the demo prints its own view; its logs would drown it
    let default_filter = match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info,tokio_postgres=warn,mysql_async=warn,sled=warn",
    };
    init_tracing(default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => match load(&config) {
                Ok(config) => report(crate::agent::run_until_signal(config).await),
                Err(code) => code,
            },
            Command::Check { config } => match load(&config) {
                Ok(config) => crate::check::run(&config).await,
                Err(code) => code,
            },
            Command::Status { config } => match load(&config) {
                Ok(config) => report(crate::agent::print_status(&config).await),
                Err(code) => code,
            },
            Command::Demo { seconds, rate } => report(crate::demo::run(seconds, rate).await),
        }
    })
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|err| {
        eprintln!("error: {err}");
        ExitCode::FAILURE
    })
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("CALLOSUM_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
