//! Running the real `herald` binary from a test.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `herald ARGS` and waits for it.
pub fn herald(args: &[&str]) -> Output {
    Command::new(super::herald_bin())
        .args(args)
        .output()
        .expect("run herald")
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Asserts `o` exited 0 (printing both streams otherwise); its stdout.
#[track_caller]
pub fn assert_ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {} stderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
