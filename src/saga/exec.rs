//! Running an executable handler (query handlers and saga command
//! handlers): program and arguments without a shell, input on stdin,
//! bounded stdout and stderr. The caller applies its deadline by dropping
//! the future: the child is killed when it is dropped.
//!
//! It sits in the saga layer, the lowest that runs handlers; the node's
//! query handlers use it from above.

use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// What a handler that ran to its exit produced.
pub(crate) struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// At most the caller's stderr limit; the rest was discarded.
    pub stderr: Vec<u8>,
}

/// Why a handler produced no usable output.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecError {
    #[error("handler has an empty command")]
    EmptyCommand,
    #[error("cannot start handler {program:?}: {source}")]
    Start {
        program: String,
        source: std::io::Error,
    },
    #[error("handler pipes were not opened")]
    Pipes,
    #[error("handler wrote more than {limit} bytes to stdout")]
    StdoutOverflow { limit: usize },
    #[error("cannot wait for handler {program:?}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// Runs `command` with `env` added, writes `input` to its stdin, and keeps
/// at most `stdout_max` bytes of stdout (more is an error, and the child is
/// killed) and `stderr_max` of stderr (the rest is drained, so a chatty
/// handler never blocks on a full pipe).
pub(crate) async fn run_bounded(
    command: &[String],
    env: &[(&str, String)],
    input: &[u8],
    stdout_max: usize,
    stderr_max: usize,
) -> Result<ExecOutput, ExecError> {
    let (program, args) = command.split_first().ok_or(ExecError::EmptyCommand)?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| {
            tracing::warn!(program, error = %source, "cannot start handler");
            ExecError::Start {
                program: program.clone(),
                source,
            }
        })?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ExecError::Pipes);
    };
    let feed = async move {
        // A handler may exit without reading its input: a broken pipe is fine.
        let _ = stdin.write_all(input).await;
        drop(stdin);
        Ok::<(), ExecError>(())
    };
    let out = async {
        let bytes = read_at_most(stdout, stdout_max + 1).await;
        if bytes.len() > stdout_max {
            Err(ExecError::StdoutOverflow { limit: stdout_max })
        } else {
            Ok(bytes)
        }
    };
    let err = async {
        let mut stderr = stderr;
        let kept = read_at_most(&mut stderr, stderr_max).await;
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        Ok(kept)
    };
    let (stdout, stderr) = match tokio::try_join!(feed, out, err) {
        Ok(((), stdout, stderr)) => (stdout, stderr),
        Err(e) => {
            let _ = child.start_kill();
            return Err(e);
        }
    };
    let status = child.wait().await.map_err(|source| ExecError::Wait {
        program: program.clone(),
        source,
    })?;
    Ok(ExecOutput {
        status,
        stdout,
        stderr,
    })
}

/// Reads until EOF or `max` bytes, whichever comes first. A read error ends
/// the input (the exit status then says what happened).
async fn read_at_most(reader: impl AsyncRead + Unpin, max: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = reader.take(max as u64).read_to_end(&mut buf).await;
    buf
}
