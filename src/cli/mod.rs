//! The `herald` command line. `main` parses arguments, runs one command and
//! maps the outcome to an exit code with a documented meaning:
//!
//! * 0: success (for `verify`: the log is valid);
//! * 1: the command ran and found problems (for `verify`: the log is not valid);
//! * 2: the command could not run (bad input, missing files, usage errors).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod demo;
pub mod demo_api;
pub mod demo_live;
pub mod demo_outbox;
pub mod demo_trust;
pub mod export;
pub mod init;
pub mod keygen;
pub mod log;
pub mod ndjson;
pub mod node;
pub mod outbox;
pub mod prove;
pub mod publish;
pub mod query;
pub mod reload;
pub mod saga;
pub mod status;
pub mod tail;
pub mod verify;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command ran and found problems.
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit code: the command could not run.
pub const EXIT_FAILED: u8 = 2;

/// Any error a command reports; printed with its whole cause chain.
pub type CliError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "A cryptographically signed, distributed event log"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a CA, node, client or channel key, or revoke a certificate.
    #[command(subcommand)]
    Keygen(keygen::KeygenCommand),
    /// Provision a whole local cluster: keys and one config file per node.
    Init(init::InitArgs),
    /// Proclaim events into the node's log and print their receipts.
    Publish(publish::PublishArgs),
    /// Print the events the node holds, decrypted where it has the key.
    Log(log::LogArgs),
    /// Print events in arrival order from a start point; with --follow, keep printing new ones.
    Tail(tail::TailArgs),
    /// Write a self-contained audit bundle of every feed the node holds.
    Export(export::ExportArgs),
    /// Verify an export, a data directory or a proof file offline (exit 0 valid, 1 problems, 2 could not run).
    Verify(verify::VerifyArgs),
    /// Write a proof that an event is in its feed, or that a feed's checkpoint extends an older one.
    Prove(prove::ProveArgs),
    /// Run a peer node in the foreground until SIGINT or SIGTERM.
    Node(node::NodeArgs),
    /// Show peers (connected, backlog, retries, errors) and feed heads.
    Status(status::StatusArgs),
    /// Make the running node reread its CA, revocation list, certificate and channel keys (exit 0 done, 1 refused, 2 could not ask).
    Reload(reload::ReloadArgs),
    /// Ask a service a synchronous question through the running node.
    Query(query::QueryArgs),
    /// Create the outbox table of a source in the service's database (or print its DDL).
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Create the inbox table of a sink in the service's database (or print its DDL).
    #[command(subcommand)]
    Inbox(outbox::InboxCommand),
    /// Start sagas, show their state, rebuild their history offline.
    #[command(subcommand)]
    Saga(saga::SagaCommand),
    /// Measure throughput and latency against the signature ceiling.
    Bench(bench::BenchArgs),
    /// Provision a scratch cluster and run real traffic through every feature.
    Demo(demo::DemoArgs),
}

/// Entry point used by `src/main.rs`.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // `--help` and `--version`: clap prints them to stdout; exit 0.
            let _ = e.print();
            return ExitCode::from(EXIT_OK);
        }
        Err(e) => {
            // A usage error: one line in the documented format, naming the
            // flag and value at fault, exit 2 (clap's own rendering spans
            // several lines: usage, tips, a help hint).
            eprintln!("herald: error: {}", usage_error(&e, &args));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match &cli.command {
        Command::Node(args) => init_tracing("info", args.log_format == node::LogFormat::Json),
        _ => init_tracing("warn", false),
    }
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(e.as_ref()) => {
            // The reader went away (`herald log | head`): not an error.
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("herald: error: {}", one_line(&render_error(e.as_ref())));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Runs one command and returns its exit code.
pub fn run(command: Command) -> Result<u8, CliError> {
    match command {
        Command::Keygen(cmd) => keygen::run(cmd),
        Command::Init(args) => init::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Log(args) => log::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Export(args) => export::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Prove(args) => prove::run(args),
        Command::Node(args) => node::run(args),
        Command::Status(args) => status::run(args),
        Command::Reload(args) => reload::run(args),
        Command::Query(args) => query::run(args),
        Command::Saga(cmd) => saga::run(cmd),
        Command::Outbox(cmd) => outbox::run_outbox(cmd),
        Command::Inbox(cmd) => outbox::run_inbox(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
    }
}

/// Asks the running node of `config` one question through its client
/// endpoint (see [`NodeClient::request_one`](crate::node::client::NodeClient::request_one)).
/// Refuses with a hint when the node is not running.
pub fn ask_running_node<T>(
    config_path: &std::path::Path,
    config: &crate::config::NodeConfig,
    request: &crate::node::client::ClientRequest,
    what: &str,
    pick: impl Fn(crate::node::client::ClientResponse) -> Option<T>,
) -> Result<T, CliError> {
    if !crate::store::is_locked(&config.data_dir) {
        return Err(format!(
            "node {} is not running; start it with `herald node --config {}`",
            config.service,
            config_path.display()
        )
        .into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = crate::node::client::NodeClient::connect(config).await?;
        let answer = client.request_one(request, what, pick).await;
        // Close on every path, so the node frees this tool's slot at once.
        client.finish().await;
        Ok(answer?)
    })
}

/// Opens the store of the node of `config` read-only (beside a running node,
/// without its lock). A node that never ran has no store: that is said in
/// those words, with the command that starts it, rather than as a failure
/// to open a file.
pub fn open_store_read_only(
    config_path: &std::path::Path,
    config: &crate::config::NodeConfig,
) -> Result<rusqlite::Connection, CliError> {
    let db = config.data_dir.join(crate::store::DB_FILE);
    if !db.exists() {
        return Err(format!(
            "node {} has never run (no store at {}); start it with `herald node --config {}`",
            config.service,
            db.display(),
            config_path.display()
        )
        .into());
    }
    Ok(crate::store::open_read_only(&config.data_dir)?)
}

/// Parses `key=value` metadata arguments.
pub fn parse_meta(entries: &[String]) -> Result<Vec<(String, String)>, CliError> {
    entries
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("--meta {e:?} must look like key=value").into()),
        })
        .collect()
}

/// Renders a clap usage error as one line that names the culprit: the flag
/// and its value, the unknown argument, the missing arguments, or the
/// argument that is not UTF-8, followed by where to find the usage.
pub fn usage_error(error: &clap::Error, args: &[std::ffi::OsString]) -> String {
    use clap::error::ErrorKind;
    let rendered = error.render().to_string();
    // clap's usage line (`Usage: herald publish [OPTIONS] --config ...`),
    // when it has one.
    let usage = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(str::trim);
    let command = command_path(args);
    let hint = format!("see `{command} --help`");
    match error.kind() {
        ErrorKind::InvalidUtf8 => {
            use std::os::unix::ffi::OsStrExt;
            let culprit = args
                .iter()
                .enumerate()
                .skip(1)
                .find(|(_, a)| a.to_str().is_none());
            match culprit {
                Some((i, arg)) => {
                    let bytes = arg.as_bytes();
                    // `--type=VALUE` or `--type VALUE`.
                    let inline = bytes
                        .starts_with(b"--")
                        .then(|| bytes.iter().position(|&b| b == b'='))
                        .flatten()
                        .and_then(|eq| std::str::from_utf8(&bytes[..eq]).ok());
                    let before = args
                        .get(i - 1)
                        .and_then(|p| p.to_str())
                        .filter(|p| i > 1 && p.starts_with("--") && !p.contains('='));
                    // Debug escapes the bytes that are not UTF-8 (`\xFF`).
                    match inline.or(before) {
                        Some(flag) => {
                            format!("the value of {flag} is not valid UTF-8: {arg:?} ({hint})")
                        }
                        None => format!("argument {i} is not valid UTF-8: {arg:?} ({hint})"),
                    }
                }
                None => format!("an argument is not valid UTF-8 ({hint})"),
            }
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            format!(
                "{command} needs a command; usage: {} ({hint})",
                usage.unwrap_or("herald <COMMAND>")
            )
        }
        ErrorKind::UnknownArgument => {
            // `--count -1`: clap reads `-1` as an unknown flag; say that it
            // is a negative value of the flag before it.
            let invalid = match error.get(clap::error::ContextKind::InvalidArg) {
                Some(clap::error::ContextValue::String(s)) => Some(s.as_str()),
                _ => None,
            };
            let negative_of = invalid
                .filter(|a| {
                    a.strip_prefix('-')
                        .is_some_and(|n| n.parse::<f64>().is_ok())
                })
                .and_then(|a| {
                    let i = args.iter().position(|x| x.to_str() == Some(a))?;
                    let flag = args.get(i.checked_sub(1)?)?.to_str()?;
                    flag.starts_with("--").then_some((flag, a))
                });
            match negative_of {
                Some((flag, value)) => {
                    format!("invalid value '{value}' for '{flag}': must not be negative ({hint})")
                }
                None => format!("{} ({hint})", flatten_clap(&rendered)),
            }
        }
        _ => format!("{} ({hint})", flatten_clap(&rendered)),
    }
}

/// The command being parsed (`herald saga start`): the subcommand names in
/// `args`, followed down clap's command tree.
fn command_path(args: &[std::ffi::OsString]) -> String {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut path = vec!["herald".to_string()];
    for arg in args.iter().skip(1).filter_map(|a| a.to_str()) {
        if arg.starts_with('-') {
            continue;
        }
        match command.find_subcommand(arg) {
            Some(sub) => {
                path.push(sub.get_name().to_string());
                let sub = sub.clone();
                command = sub;
            }
            None => continue,
        }
    }
    path.join(" ")
}

/// clap's message without its `error: ` prefix, usage and help hint, its
/// indented lists and tips joined into one line.
fn flatten_clap(rendered: &str) -> String {
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty());
    let head = lines
        .next()
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .unwrap_or("invalid arguments")
        .to_string();
    let (tips, items): (Vec<&str>, Vec<&str>) = lines.partition(|l| l.starts_with("tip:"));
    let mut text = head;
    if !items.is_empty() {
        text.push_str(if text.ends_with(':') { " " } else { ": " });
        text.push_str(&items.join(", "));
    }
    for tip in tips {
        text.push_str("; ");
        text.push_str(tip);
    }
    text
}

fn is_broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Renders an error and its causes as one line: `what: because: because`.
pub fn render_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Many errors already include their source's message; don't repeat it.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Joins a message that spans several lines into one (the error contract is
/// one line per error; some library errors embed line breaks).
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Logs to stderr at `HERALD_LOG` (or `default_level`), as JSON lines if
/// asked.
fn init_tracing(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_needs_key_and_equals() {
        assert_eq!(
            parse_meta(&["correlation_id=42".into(), "k=a=b".into()]).unwrap(),
            vec![
                ("correlation_id".into(), "42".into()),
                ("k".into(), "a=b".into())
            ]
        );
        assert!(parse_meta(&["novalue".into()]).is_err());
        assert!(parse_meta(&["=x".into()]).is_err());
    }
}
