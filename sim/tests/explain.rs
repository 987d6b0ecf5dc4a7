//! `sim explain` on a clean seed: exit 0, one page with a lane per host.

use std::process::Command;

#[test]
fn a_clean_seed_explains_to_a_page_with_lanes() {
    let path = std::env::temp_dir().join(format!("keel-sim-explain-{}.html", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args([
            "explain",
            "--scenario",
            "leadership_flap",
            "--seed",
            "3",
            "--html",
            path.to_str().expect("utf8"),
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(path.to_str().expect("utf8")) && text.contains("all invariants held"),
        "{text}"
    );
    let html = std::fs::read_to_string(&path).expect("page written");
    let _ = std::fs::remove_file(&path);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.matches(r#"<g class="lane" data-host=""#).count() >= 3);
    assert!(html.contains(r#"data-host="db""#));
    assert!(html.contains("all invariants held"));
    assert!(!html.contains("http://") && !html.contains("https://"));
}
