//! The `callosum` command line.

use clap::{ArgGroup, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, LogFormat};
use crate::dead_letter::api as dlq;
use crate::dead_letter::DiscardSelection;

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
    /// Inspect, replay or discard the dead-letter queues (asks the running agent).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
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

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List the dead letters of every pipeline, or of one: position, commit time, tables, reason.
    List {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this pipeline.
        #[arg(long, short)]
        pipeline: Option<String>,
    },
    /// Show one dead letter and its row changes (with their values).
    Show {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        pipeline: String,
        /// The dead letter's id (`callosum dlq list`).
        id: u64,
        /// Index (from 0) of the first event to show.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Events to show at most.
        #[arg(long, default_value_t = dlq::DEFAULT_EVENT_LIMIT)]
        limit: u64,
    },
    /// Apply the queued transactions to the target, oldest first; stop at the first that fails (exit 1).
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        pipeline: String,
        /// Replay up to and including this id (default: the whole queue).
        #[arg(long)]
        through: Option<u64>,
    },
    /// Drop dead letters without applying them: one by id, or all.
    #[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
    Discard {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        pipeline: String,
        /// The dead letter to drop.
        id: Option<u64>,
        /// Drop every dead letter of the pipeline.
        #[arg(long)]
        all: bool,
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
    // the agent logs as its config says; a config that does not load is
    // reported (in text) below
    let log_format = match &cli.command {
        Command::Run { config } => Config::load(config)
            .map(|c| c.log_format)
            .unwrap_or_default(),
        _ => LogFormat::Text,
    };
    init_tracing(default_filter, log_format);
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
    let code = runtime.block_on(async move {
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
            Command::Dlq { command } => run_dlq(command).await,
            Command::Demo { seconds, rate } => report(crate::demo::run(seconds, rate).await),
        }
    });
    // a worker stuck in a failed disk's flush never returns: do not wait
    // for it on the way out
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn run_dlq(command: DlqCommand) -> ExitCode {
    match command {
        DlqCommand::List { config, pipeline } => match load(&config) {
            Ok(config) => report(dlq::print_dead_letters(&config, pipeline.as_deref()).await),
            Err(code) => code,
        },
        DlqCommand::Show {
            config,
            pipeline,
            id,
            offset,
            limit,
        } => match load(&config) {
            Ok(config) => {
                report(dlq::print_dead_letter(&config, &pipeline, id, offset, limit).await)
            }
            Err(code) => code,
        },
        DlqCommand::Replay {
            config,
            pipeline,
            through,
        } => match load(&config) {
            Ok(config) => match dlq::print_replay(&config, &pipeline, through).await {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(err) => report(Err(err)),
            },
            Err(code) => code,
        },
        DlqCommand::Discard {
            config,
            pipeline,
            id,
            all,
        } => {
            // clap's group `which` lets exactly one of them through
            debug_assert!(id.is_some() != all);
            let which = id.map_or(DiscardSelection::All, DiscardSelection::One);
            match load(&config) {
                Ok(config) => report(dlq::print_discard(&config, &pipeline, which).await),
                Err(code) => code,
            }
        }
    }
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

fn init_tracing(default_filter: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("CALLOSUM_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // one JSON object per line, with the span fields (`pipeline`,
        // `store`) of every enclosing span, for log shippers
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
        // colours only for a person at a terminal: a log file or journald
        // gets plain text (and NO_COLOR turns them off anywhere)
        LogFormat::Text => builder
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .try_init(),
    };
    crate::panics::install_hook();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("callosum").chain(args.iter().copied()))
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn dlq_subcommands_parse() {
        let cli = parse(&["dlq", "list", "-c", "c.toml"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Dlq {
                command: DlqCommand::List { pipeline: None, .. }
            }
        ));
        let cli = parse(&[
            "dlq", "show", "-c", "c.toml", "-p", "p", "3", "--offset", "100",
        ])
        .unwrap();
        match cli.command {
            Command::Dlq {
                command:
                    DlqCommand::Show {
                        pipeline,
                        id,
                        offset,
                        limit,
                        ..
                    },
            } => assert_eq!((pipeline.as_str(), id, offset, limit), ("p", 3, 100, 100)),
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "dlq",
            "replay",
            "-c",
            "c.toml",
            "--pipeline",
            "p",
            "--through",
            "4",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Dlq {
                command: DlqCommand::Replay {
                    through: Some(4),
                    ..
                }
            }
        ));
        assert!(
            parse(&["dlq", "replay", "-c", "c.toml"]).is_err(),
            "needs --pipeline"
        );
    }

    #[test]
    fn dlq_discard_takes_exactly_one_of_id_and_all() {
        let cli = parse(&["dlq", "discard", "-c", "c.toml", "-p", "p", "7"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Dlq {
                command: DlqCommand::Discard {
                    id: Some(7),
                    all: false,
                    ..
                }
            }
        ));
        let cli = parse(&["dlq", "discard", "-c", "c.toml", "-p", "p", "--all"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Dlq {
                command: DlqCommand::Discard {
                    id: None,
                    all: true,
                    ..
                }
            }
        ));
        assert!(parse(&["dlq", "discard", "-c", "c.toml", "-p", "p"]).is_err());
        assert!(parse(&["dlq", "discard", "-c", "c.toml", "-p", "p", "7", "--all"]).is_err());
    }
}
