//! The `sim` binary's contract: exit codes and what it prints.

use std::process::Command;

fn sim(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn usage_errors_exit_2_and_list_what_is_valid() {
    let (code, text) = sim(&["replay", "--scenario", "nope", "--seed", "1"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("leadership_flap") && text.contains("stale_retries"),
        "{text}"
    );
    let (code, text) = sim(&["replay", "--scenario", "stale_retries", "--seed", "x"]);
    assert_eq!(code, 2, "{text}");
    let (code, text) = sim(&[
        "sweep",
        "--scenario",
        "stale_retries",
        "--seeds",
        "1",
        "--plant",
        "nope",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("stale_resign") && text.contains("cross_term_stop"),
        "{text}"
    );
}

#[test]
fn a_clean_replay_exits_0_and_writes_its_trace_as_json_lines() {
    let path = std::env::temp_dir().join(format!("keel-sim-cli-{}.jsonl", std::process::id()));
    let (code, text) = sim(&[
        "replay",
        "--scenario",
        "leadership_flap",
        "--seed",
        "3",
        "--trace",
        path.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("SEED=3") && text.contains("all invariants held"),
        "{text}"
    );
    let trace = std::fs::read_to_string(&path).expect("trace written");
    let _ = std::fs::remove_file(&path);
    let first: serde_json::Value =
        serde_json::from_str(trace.lines().next().expect("events")).expect("json");
    assert_eq!(first["event"], "node_boot");
}

#[test]
fn a_violation_exits_3_with_the_invariant_and_a_replay_command() {
    let (code, text) = sim(&[
        "sweep",
        "--scenario",
        "stale_retries",
        "--seeds",
        "50",
        "--plant",
        "stale_resign",
        "--fail-fast",
    ]);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("invariant no_stale_resign violated"),
        "{text}"
    );
    assert!(
        text.contains("replay: cargo run -p sim -- replay --scenario stale_retries --seed"),
        "{text}"
    );
    assert!(text.contains("--plant stale_resign"), "{text}");
}
