//! `herald node`: run one peer in the foreground until SIGINT or SIGTERM.
//! SIGHUP makes it reread its CA, revocation list, certificate and channel
//! keys (see `node/reload.rs`; `herald reload` asks the same and prints the
//! answer).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{CliError, EXIT_OK};
use crate::config::NodeConfig;
use crate::node::Node;

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Log format on stderr (level from HERALD_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

pub fn run(args: NodeArgs) -> Result<u8, CliError> {
    let config = NodeConfig::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let node = Node::start(&config).await?;
        tracing::info!(service = %config.service, "running; stop with Ctrl-C or SIGTERM, reload trust files with SIGHUP");
        let stop = wait_for_signal();
        tokio::pin!(stop);
        let failed = tokio::select! {
            _ = &mut stop => None,
            reason = node.failed() => Some(reason),
            // Never resolves: reloads on SIGHUP until one of the above.
            _ = reload_on_hangup(&node) => None,
        };
        tracing::info!("shutting down");
        node.shutdown().await;
        match failed {
            // A background task cannot recover: stop with its reason and a
            // non-zero exit, rather than run without it.
            Some(reason) => Err(CliError::from(format!("node stopped: {reason}"))),
            None => Ok::<_, CliError>(()),
        }
    })?;
    Ok(EXIT_OK)
}

/// Reloads the node's trust files on every SIGHUP (the outcome is logged
/// by the reload itself: info when installed, warn when refused). Never
/// resolves, unless SIGHUP cannot be listened for (logged).
async fn reload_on_hangup(node: &Node) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; use `herald reload` to reload");
                return std::future::pending().await;
            }
        };
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the trust files");
            let _ = node.reload().await;
        }
    }
    std::future::pending().await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
