//! The module layers point one way: core → identity → config → store → saga
//! → outbox → node/net → cli/bench/audit. A lower layer that names a higher one makes
//! a cycle (the core stops being testable on its own, a change at the top
//! recompiles and can break the bottom). This test reads the source text and
//! fails, naming file and line, when a lower layer's code contains a
//! `crate::<higher>` path, in `use` lines or inline in a body. Comment lines
//! (`//`, so doc links too) are not code and are skipped.

use std::path::{Path, PathBuf};

/// Each lower layer and the layers above it that it must not refer to.
/// node, net, cli, bench and audit sit at the top and are not checked.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "core",
        &[
            "identity", "config", "store", "saga", "outbox", "node", "net", "cli", "bench", "audit",
        ],
    ),
    (
        "identity",
        &[
            "config", "store", "saga", "outbox", "node", "net", "cli", "bench", "audit",
        ],
    ),
    (
        "config",
        &[
            "store", "saga", "outbox", "node", "net", "cli", "bench", "audit",
        ],
    ),
    (
        "store",
        &["saga", "outbox", "node", "net", "cli", "bench", "audit"],
    ),
    ("saga", &["outbox", "node", "net", "cli", "bench", "audit"]),
    ("outbox", &["node", "net", "cli", "bench", "audit"]),
];

/// Most source files walked; far above herald's size, it only stops a
/// runaway walk (a symlink loop).
const SOURCE_FILES_MAX: usize = 10_000;

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        assert!(
            out.len() < SOURCE_FILES_MAX,
            "more than {SOURCE_FILES_MAX} files under src"
        );
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer (top-level module) a file under `src/` belongs to:
/// `core/verify.rs` → `core`, `config.rs` → `config`.
fn layer_of(relative: &Path) -> String {
    let first = relative.components().next().unwrap();
    let first = first.as_os_str().to_str().unwrap();
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

/// The top-level modules a `crate::` path at the start of `rest` names:
/// one for `node::Foo`, several for a grouped `{config::A, node::{B, C}}`.
fn named_modules(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    // The first identifier after `{` and after each comma at depth one.
    let mut names = vec![ident(group)];
    let mut depth = 1usize;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => break,
            '}' => depth -= 1,
            ',' if depth == 1 => names.push(ident(&group[i + 1..])),
            _ => {}
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// Every place in `text` (a file of layer `layer`) that names a layer
/// `layer` must not refer to, as `line: crate::module`.
fn violations(layer: &str, text: &str) -> Vec<(usize, String)> {
    let Some((_, forbidden)) = FORBIDDEN.iter().find(|(l, _)| *l == layer) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        if text[line_start..].trim_start().starts_with("//") {
            continue;
        }
        let line = text[..at].matches('\n').count() + 1;
        for module in named_modules(&text[at + "crate::".len()..]) {
            if forbidden.contains(&module.as_str()) {
                found.push((line, format!("crate::{module}")));
            }
        }
    }
    found
}

#[test]
fn lower_layers_never_name_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut checked = std::collections::BTreeMap::<String, usize>::new();
    let mut problems = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let layer = layer_of(relative);
        let text = std::fs::read_to_string(file).unwrap();
        *checked.entry(layer.clone()).or_default() += 1;
        for (line, path) in violations(&layer, &text) {
            problems.push(format!(
                "src/{}:{line}: layer {layer} refers to {path}, a layer above it",
                relative.display()
            ));
        }
    }
    // A renamed layer would otherwise pass by checking nothing.
    for (layer, _) in FORBIDDEN {
        assert!(
            checked.get(*layer).is_some_and(|n| *n > 0),
            "no source files found for layer {layer} under src/"
        );
    }
    assert!(
        problems.is_empty(),
        "imports pointing up the layers:\n{}",
        problems.join("\n")
    );
}

#[test]
fn scanner_flags_upward_paths_and_skips_comments() {
    let text = "use crate::core::event::EventHeader;\n\
                /// See [`x`](crate::node::Node).\n\
                let a = crate::node::stopped(rx);\n\
                use crate::{\n    config::NodeConfig,\n    core::limits,\n    cli::{glob, x},\n};\n\
                    // crate::cli::glob_match\n";
    assert_eq!(
        violations("core", text),
        vec![
            (3, "crate::node".to_string()),
            (4, "crate::config".to_string()),
            (4, "crate::cli".to_string()),
        ]
    );
    // The same paths are fine from the top layer, and a layer may name itself.
    assert!(violations("node", text).is_empty());
    assert!(violations("saga", "use crate::saga::Saga;\nuse crate::store::Log;\n").is_empty());
    assert_eq!(layer_of(Path::new("config.rs")), "config");
    assert_eq!(layer_of(Path::new("core/verify.rs")), "core");
}

/// What the sans-IO core must not use: storage, async runtimes, sockets,
/// files, threads, the clock or the OS's randomness. Time and randomness
/// are passed in; the store and the node do the I/O.
const CORE_FORBIDDEN_IO: &[&str] = &[
    "rusqlite",
    "tokio",
    "quinn",
    "std::fs",
    "std::net",
    "std::thread",
    "std::time",
    "SystemTime",
    "Instant",
    "clock::now",
    "OsRng",
    "thread_rng",
];

/// Every use of an I/O item in `text` (a core file), as `line: item`,
/// outside comments and the file's inline test module (tests may time
/// themselves).
fn io_uses(text: &str) -> Vec<(usize, &'static str)> {
    let code = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or(text);
    let mut found = Vec::new();
    for (i, line) in code.lines().enumerate() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        for item in CORE_FORBIDDEN_IO {
            if line.contains(item) {
                found.push((i + 1, *item));
            }
        }
    }
    found
}

#[test]
fn the_core_does_no_io() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in &files {
        // Unit tests in their own file (`mod tests;`) are not the core.
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (line, item) in io_uses(&text) {
            problems.push(format!("{}:{line}: {item}", file.display()));
        }
    }
    assert!(files.len() > 10, "no core files found under {core:?}");
    assert!(
        problems.is_empty(),
        "the sans-IO core does I/O:\n{}",
        problems.join("\n")
    );
    // The scanner itself: code is flagged, comments and tests are not.
    let sample = "use rusqlite::Connection;\n// tokio in a comment\n\
                  #[cfg(test)]\nmod tests {\n    use std::time::Instant;\n}\n";
    assert_eq!(io_uses(sample), vec![(1, "rusqlite")]);
}
