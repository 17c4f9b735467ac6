//! The `moonx-ws` command line: `serve`, `create-topics`, `produce`, `tail`, `dlq`.
//! Every option can also come from its environment variable (see `config`).

mod create_topics;
pub mod dev;
pub mod dlq;
mod produce;
mod tail;

use crate::config::{DevArgs, ServeArgs};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "moonx-ws", version, about = "MoonX real-time event gateway: one Kafka topic in, entitled WebSocket clients out")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: consume Kafka, validate, route, and serve /ws, /health, /metrics, / (dashboard).
    Serve(Box<ServeArgs>),
    /// Try it without Kafka: the whole gateway on an embedded in-memory bus (`--demo` adds a live feed).
    Dev(Box<DevArgs>),
    /// Create the main, dead-letter and legacy topics (idempotent; reports drift).
    CreateTopics(create_topics::Args),
    /// Build events with the factory, validate them, and send them.
    Produce(produce::Args),
    /// Decode and pretty-print the topic (or the DLQ), with filters.
    Tail(tail::Args),
    /// Dead letters: `list` (summary), `show ID`, `replay` (re-validate, re-publish the ones that pass).
    Dlq(dlq::Args),
}

/// Parses the command line, runs the command, and maps failures to a
/// non-zero exit with a clear message.
pub fn main() -> ExitCode {
    crate::telemetry::init_logging();
    let cli = match parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Like clap's parse, but a bad value that came from the environment is
/// reported by the variable's name (clap names only the flag).
pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = Cli::command();
    let matches = cmd.try_get_matches_from_mut(args).map_err(|e| name_env_var(&cmd, e))?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

fn name_env_var(cmd: &clap::Command, err: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(err.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return err;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else { return err };
    let flag = arg.split_whitespace().next().unwrap_or_default().trim_start_matches('-').to_owned();
    let mut found = None;
    let mut stack = vec![cmd];
    while let Some(c) = stack.pop() {
        for a in c.get_arguments() {
            if a.get_long() == Some(flag.as_str())
                && let Some(env) = a.get_env() {
                    let env = env.to_string_lossy().into_owned();
                    if std::env::var_os(&env).is_some() {
                        found = Some(env);
                    }
                }
        }
        stack.extend(c.get_subcommands());
    }
    match found {
        Some(env) => clap::Error::raw(
            err.kind(),
            format!("invalid value in environment variable {env} (for {arg}): {}\n", err.to_string().trim_start_matches("error: ").trim()),
        ),
        None => err,
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let shutdown = crate::server::shutdown_on_signals();
            crate::server::Gateway::new(*args).run(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(args) => dev::run(*args).await,
        Command::CreateTopics(args) => create_topics::run(args).await,
        Command::Produce(args) => produce::run(args).await,
        Command::Tail(args) => tail::run(args).await,
        Command::Dlq(args) => dlq::run(args).await,
    }
}
