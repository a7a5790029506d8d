//! The module graph of `replicable-core/src` has layers (DESIGN.md, "Layers"): a file imports only
//! its own layer and the layers before it. This test reads every source file, finds each
//! `crate::<module>` path (in `use` statements, code and intra-doc links) and fails naming the
//! file, the line and the module when one reaches a later layer.

use std::path::{Path, PathBuf};

/// The layers, first to last, with the top-level modules (or file paths under `src`) in each.
const LAYERS: &[(&str, &[&str])] = &[
    ("domain", &["domain"]),
    ("storage", &["storage"]),
    ("link", &["link"]),
    ("strategy", &["strategy", "observer", "model"]),
    ("site and replicator", &["site", "descriptor", "replicator"]),
    ("engine", &["engine", "status"]),
    ("cli, metrics, http", &["cli", "metrics", "http"]),
    ("testing", &["testing"]),
];

/// The layer number of a top-level module, `None` if it has none (a root re-export).
fn layer_of_module(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The layer of a file, from its path under `src` (`None` for the crate root, which is exempt).
fn layer_of_file(relative: &Path) -> Option<usize> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    if module == "lib" {
        return None;
    }
    Some(layer_of_module(module).unwrap_or_else(|| {
        panic!(
            "{} is in no layer: add its module to LAYERS in tests/layers.rs",
            relative.display()
        )
    }))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules `line` names through `crate::`, including each name of a
/// `crate::{a, b::c}` group.
fn crate_references(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        // `$crate::` (macros) names the crate from outside; `somecrate::` is another path.
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        start = false;
                        let name = identifier(&group[i..]);
                        if !name.is_empty() {
                            found.push(name.to_owned());
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = identifier(after);
            if !name.is_empty() {
                found.push(name.to_owned());
            }
        }
    }
    found
}

/// Every reference in `src` that reaches a later layer, or goes through a root re-export.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let Some(own) = layer_of_file(relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for module in crate_references(line) {
                if module == "self" || module == "super" {
                    continue;
                }
                match layer_of_module(&module) {
                    Some(layer) if layer <= own => {}
                    Some(layer) => problems.push(format!(
                        "{}:{}: `crate::{module}` is in layer {} ({}), above the file's layer {} \
                         ({})",
                        relative.display(),
                        n + 1,
                        layer + 1,
                        LAYERS[layer].0,
                        own + 1,
                        LAYERS[own].0,
                    )),
                    None => problems.push(format!(
                        "{}:{}: `crate::{module}` is a root re-export, not a module with a \
                         layer: use the path of the module that defines it",
                        relative.display(),
                        n + 1,
                    )),
                }
            }
        }
    }
    problems
}

#[test]
fn no_file_imports_a_later_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let problems = violations(&src);
    assert!(
        problems.is_empty(),
        "{} upward or aliased imports:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_scanner_finds_paths_groups_and_links() {
    assert_eq!(
        crate_references("use crate::domain::event::{Event, EventId};"),
        ["domain"]
    );
    assert_eq!(
        crate_references("use crate::{site::Site, engine::{cursor, workers}};"),
        ["site", "engine"]
    );
    assert_eq!(
        crate_references("/// [`Site`](crate::site::Site) and crate::replicator::Replicator"),
        ["site", "replicator"]
    );
    assert!(crate_references("$crate::x; other_crate::y").is_empty());
}

#[test]
fn a_later_layer_is_reported_with_file_line_and_module() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("domain")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub use crate::engine::x;\n").unwrap();
    std::fs::write(
        src.join("domain/event.rs"),
        "use crate::domain::retry;\n\nuse crate::site::Site;\n",
    )
    .unwrap();
    std::fs::write(src.join("status.rs"), "use crate::event::Event;\n").unwrap();
    let problems = violations(src);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("domain/event.rs:3: `crate::site` is in layer 5"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("status.rs:1: `crate::event` is a root re-export"),
        "{problems:?}"
    );
}
