//! The layer order of ARCHITECTURE.md, checked on the sources: a module imports only from the
//! layers below it, and the `shards` crate (state machines) never touches a socket. Reads the
//! source tree; starts nothing.

use std::path::{Path, PathBuf};

/// Lowest first; a layer may use its own and lower ones.
const LAYERS: &[(&str, usize)] = &[
    ("util", 0),
    ("config", 1),
    ("mesh", 2),
    ("nats", 3),
    ("stan", 4),
    ("monitor", 5),
    ("server", 6),
    ("bench", 6),
];

/// What marks network I/O in the shards crate.
const SOCKET_MARKS: &[&str] = &[
    "std::net",
    "socket2",
    "glommio::net",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "stanza::",
];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The lines that are code (comments dropped).
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let code = match l.find("//") {
                Some(at) => &l[..at],
                None => l,
            };
            (!code.trim().is_empty()).then(|| (i + 1, code.to_string()))
        })
        .collect()
}

/// The layer a file under `src/` belongs to: its top folder, or its name for `server.rs`.
fn layer_of(root: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    Some(first.trim_end_matches(".rs").to_string())
}

#[test]
fn every_module_imports_only_from_layers_below() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() > 50,
        "sources not found under {}",
        root.display()
    );
    let mut broken = Vec::new();
    for file in &files {
        let Some(layer) = layer_of(&root, file) else {
            continue;
        };
        let Some(mine) = rank(&layer) else {
            continue; // lib.rs, main.rs: above everything
        };
        for (n, line) in code_lines(file) {
            for (other, theirs) in LAYERS {
                let used = line.contains(&format!("crate::{other}::"))
                    || line.contains(&format!("crate::{other};"))
                    || line.contains(&format!("crate::{other}}}"))
                    || line.contains(&format!("crate::{other},"));
                if used && *theirs > mine {
                    broken.push(format!(
                        "{}:{n}: {layer} uses {other}: {}",
                        file.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against the layer order (ARCHITECTURE.md):\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_shards_crate_has_no_sockets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("shards")
        .join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() > 10,
        "sources not found under {}",
        root.display()
    );
    let mut found = Vec::new();
    for file in &files {
        for (n, line) in code_lines(file) {
            for mark in SOCKET_MARKS {
                if line.contains(mark) {
                    found.push(format!("{}:{n}: {}", file.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the shards crate holds state machines and stores, no network I/O:\n{}",
        found.join("\n")
    );
}
