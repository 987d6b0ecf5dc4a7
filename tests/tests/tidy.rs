//! Determinism hygiene that clippy cannot see.
//!
//! clippy.toml forbids the OS clock, global RNGs, threads and hash maps. What it
//! cannot forbid: a `tokio::select!` without `biased;`, which polls its branches
//! in random order. turmoil seeds that order under `tokio_unstable`, but keel runs
//! in production too, and a branch order that depends on luck is a bug waiting
//! for the day it matters; so every `select!` in keel and sim states its order.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("readable")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_select_in_keel_and_sim_is_biased() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["core/src", "sim/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "found the sources");
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("utf8 source");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if !line.contains("select!") || line.trim_start().starts_with("//") {
                continue;
            }
            let next = lines.get(i + 1).map_or("", |l| l.trim());
            if !line.contains("biased;") && next != "biased;" {
                offenders.push(format!("{}:{}", file.display(), i + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "select! without `biased;`: {offenders:?}"
    );
}
