//! The `attune` command line as a library: `run_from` parses arguments and runs the command, so
//! that the binary (`main.rs`) and the benchmark (which re-executes itself as `attune`) share it.
//!
//! `attune`: one binary for every role (`up`, `server`, `worker`) and for the command line that
//! talks to a running server. Exit codes: 0 success; 1 the execution did not succeed (`run --wait`)
//! or a command failed; 2 bad input (a usage error or a 4xx from the server); 3 the server could
//! not be reached.

mod cmds;
mod events;
mod keys;
mod output;
mod roles;
mod settings;
mod tokens;
mod watch;
mod workflows;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use output::Format;

#[derive(Parser)]
#[command(name = "attune", version, about = "Attune: run actions on a fleet of workers, with guarantees.")]
#[command(
    after_help = "Start everything on one machine:  attune up\nThen try:                         attune run core.echo message=hello --wait"
)]
pub struct Cli {
    /// Server to talk to (for `attune worker`, a comma-separated list of replicas to fail over between).
    #[arg(long, global = true, env = "ATTUNE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    output: Format,
    /// Configuration file (YAML); ATTUNE__SECTION__KEY variables override it, flags override both.
    #[arg(long, global = true, env = "ATTUNE_CONFIG")]
    config: Option<PathBuf>,
    /// API token; else `client.token` of the configuration, else ./.attune/admin.token (which the
    /// first `attune up` or `attune server` in this directory wrote).
    #[arg(long, global = true, env = "ATTUNE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM certificates to trust for an https:// server besides the system's: its own certificate
    /// when self-signed, or its CA (else `client.ca_file`, or for `attune worker` `worker.ca_file`).
    #[arg(long, global = true, env = "ATTUNE_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Server and workers in one process on SQLite, with the packs under ./packs: the quick start.
    Up(roles::UpArgs),
    /// Run the API server (and its monitors).
    Server(roles::ServerArgs),
    /// Run a worker (`attune worker`), or list workers (`attune worker list`).
    Worker(WorkerCmd),
    /// Load and list packs.
    #[command(subcommand)]
    Pack(cmds::PackCmd),
    /// List and show actions.
    #[command(subcommand)]
    Action(cmds::ActionCmd),
    /// Run an action: attune run core.echo message=hello --wait
    Run(cmds::RunArgs),
    /// List, show and cancel executions; a workflow's tree, pause and resume.
    #[command(subcommand, alias = "executions")]
    Execution(cmds::ExecutionCmd),
    /// Dead letters: work that expired in the queue, was abandoned, or ran out of attempts.
    #[command(subcommand)]
    Dlq(cmds::DlqCmd),
    /// API tokens: create (the secret is shown once), list, revoke. Administrators only.
    #[command(subcommand)]
    Token(tokens::TokenCmd),
    /// The key store: values parameters use as {{ key('NAME') }}; secrets encrypted at rest.
    #[command(subcommand)]
    Key(keys::KeyCmd),
    /// Trigger types: what events can be of.
    #[command(subcommand)]
    Trigger(events::TriggerCmd),
    /// Rules: when an event of its trigger matches its criteria, run its action.
    #[command(subcommand)]
    Rule(events::RuleCmd),
    /// Stored events (webhook calls, timer ticks, emitted events) and what rules did with them.
    #[command(subcommand)]
    Event(events::EventCmd),
    /// Sensors: packs' programs that watch something and emit events; each runs on one worker.
    #[command(subcommand)]
    Sensor(events::SensorCmd),
    /// Inquiries: questions workflows ask people (core.ask); list and answer them.
    #[command(subcommand, alias = "inquiries")]
    Inquiry(workflows::InquiryCmd),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct WorkerCmd {
    #[command(subcommand)]
    list: Option<WorkerSub>,
    #[command(flatten)]
    run: roles::WorkerArgs,
}

#[derive(Subcommand)]
enum WorkerSub {
    /// List registered workers.
    List {
        /// Include deregistered workers.
        #[arg(long)]
        all: bool,
    },
}

pub struct Ctx {
    pub client: attune_client::Client,
    pub output: Format,
}

/// Parses `args` (program name first) and runs the command; returns the exit code.
pub fn run_from<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let rt =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("start the tokio runtime");
    rt.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> i32 {
    let first = cli.server.split(',').next().unwrap_or_default().trim().to_owned();
    let config = cli.config.as_deref();
    let access = match &cli.command {
        Command::Up(_) | Command::Server(_) | Command::Worker(WorkerCmd { list: None, .. }) => {
            Ok((None, attune_client::Trust::default()))
        }
        _ => settings::client_token(cli.token.clone(), config)
            .and_then(|t| Ok((t, settings::client_trust(cli.ca_file.as_deref(), config)?))),
    };
    let (token, trust) = match access {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let client = attune_client::Client::with_trust(&first, &trust).with_token(token);
    let ctx = Ctx { client, output: cli.output };
    let result = match cli.command {
        Command::Up(a) => roles::up(config, a).await,
        Command::Server(a) => roles::server(config, a).await,
        Command::Worker(WorkerCmd { list: None, run }) => {
            roles::worker(config, &cli.server, cli.ca_file.as_deref(), run).await
        }
        Command::Worker(WorkerCmd { list: Some(WorkerSub::List { all }), .. }) => {
            cmds::worker_list(&ctx, all).await
        }
        Command::Pack(c) => cmds::pack(&ctx, c).await,
        Command::Action(c) => cmds::action(&ctx, c).await,
        Command::Run(a) => cmds::run(&ctx, a).await,
        Command::Execution(c) => cmds::execution(&ctx, c).await,
        Command::Dlq(c) => cmds::dlq(&ctx, c).await,
        Command::Token(c) => tokens::run(&ctx, c).await,
        Command::Key(c) => keys::run(&ctx, c).await,
        Command::Trigger(c) => events::trigger(&ctx, c).await,
        Command::Rule(c) => events::rule(&ctx, c).await,
        Command::Event(c) => events::event(&ctx, c).await,
        Command::Sensor(c) => events::sensor(&ctx, c).await,
        Command::Inquiry(c) => workflows::inquiry(&ctx, c).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code(&e);
            eprintln!("error: {}", render(&e));
            code
        }
    }
}

fn render(e: &anyhow::Error) -> String {
    if let Some(attune_client::ClientError::Api { message, details, status, .. }) = e.downcast_ref() {
        let mut s = format!("{message} (HTTP {status})");
        if *status == 401 {
            s.push_str("\n  hint: pass --token, set ATTUNE_TOKEN, or run from the directory whose .attune/admin.token \
                        the server wrote");
        }
        for d in details {
            s.push_str(&format!("\n  - {d}"));
        }
        return s;
    }
    let mut s = format!("{e:#}");
    if let Some(attune_client::ClientError::Unreachable { message, .. }) = e.downcast_ref() {
        if message.contains("CaUsedAsEndEntity") {
            s.push_str(
                "\n  hint: the server's certificate is marked as a CA (basicConstraints CA:TRUE); a server \
                        needs one made with CA:FALSE, signed by that CA or self-signed",
            );
        } else if message.contains("certificate") {
            s.push_str(
                "\n  hint: to trust the server's certificate, pass --ca-file with it (or its CA), or set \
                        ATTUNE_CA_FILE or client.ca_file",
            );
        }
    }
    s
}

fn exit_code(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<attune_client::ClientError>() {
        Some(attune_client::ClientError::Api { status, .. }) if (400..500).contains(status) => 2,
        Some(attune_client::ClientError::Unreachable { .. }) => 3,
        _ => match e.downcast_ref::<cmds::UsageError>() {
            Some(_) => 2,
            None => 1,
        },
    }
}
