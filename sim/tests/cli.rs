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

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("keel-sim-cli-{}-{name}", std::process::id()))
}

#[test]
fn a_parallel_sweep_exits_0_and_prints_the_summary_table() {
    let (code, text) = sim(&[
        "sweep",
        "--scenario",
        "leadership_flap",
        "--seeds",
        "3",
        "--jobs",
        "2",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("scenario") && text.contains("nondet") && text.contains("sim-s/s"),
        "table header: {text}"
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("leadership_flap"))
        .unwrap_or_else(|| panic!("a row for the scenario: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..6], ["mem", "3", "3", "0", "0"], "{row}");
}

#[test]
fn failures_file_round_trips_through_replay_from() {
    let path = temp("failures.txt");
    let file = path.to_str().expect("utf8");
    let (code, text) = sim(&[
        "sweep",
        "--scenario",
        "stale_retries",
        "--seeds",
        "3",
        "--plant",
        "stale_resign",
        "--jobs",
        "2",
        "--failures",
        file,
    ]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains(file), "prints the path: {text}");
    let written = std::fs::read_to_string(&path).expect("failures written");
    assert!(
        written.contains("scenario=stale_retries seed=0 storage=mem plant=stale_resign"),
        "{written}"
    );
    let (code, text) = sim(&["replay", "--from", file]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("invariant no_stale_resign violated") && text.contains("FAILED"),
        "{text}"
    );
}

#[test]
fn a_malformed_replay_file_exits_2_naming_the_line_and_field() {
    let path = temp("malformed.txt");
    std::fs::write(
        &path,
        "# ok so far\nscenario=stale_retries seed=1\nscenario=stale_retries seed=x\n",
    )
    .expect("write");
    let (code, text) = sim(&["replay", "--from", path.to_str().expect("utf8")]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("line 3: seed"), "{text}");
}

/// Three shards of one range, each writing its results: every seed runs once,
/// `merge` adds them up, and a missing shard or a second copy is refused.
#[test]
fn sharded_results_merge_and_refuse_what_does_not_add_up() {
    let files: Vec<String> = (1..=3)
        .map(|k| {
            temp(&format!("shard{k}.jsonl"))
                .to_str()
                .expect("utf8")
                .to_owned()
        })
        .collect();
    for (k, file) in files.iter().enumerate() {
        let shard = format!("{}/3", k + 1);
        let (code, text) = sim(&[
            "sweep",
            "--scenario",
            "stale_retries",
            "--seeds",
            "5",
            "--plant",
            "stale_resign",
            "--shard",
            &shard,
            "--results",
            file,
        ]);
        assert!(code == 0 || code == 3, "{text}");
    }
    let seeds_in = |file: &str| {
        std::fs::read_to_string(file)
            .expect("written")
            .matches("\"kind\":\"seed\"")
            .count()
    };
    assert_eq!(
        files.iter().map(|f| seeds_in(f)).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    let all: Vec<&str> = std::iter::once("merge")
        .chain(files.iter().map(String::as_str))
        .collect();
    let (code, text) = sim(&all);
    assert_eq!(code, 3, "seed 0 breaks no_stale_resign: {text}");
    assert!(text.contains("5 seeds, each once"), "{text}");
    assert!(
        text.contains("replay --scenario stale_retries --seed 0 --plant stale_resign"),
        "{text}"
    );
    let (code, text) = sim(&["merge", &files[0], &files[1]]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("missing shard(s): 3/3"), "{text}");
    let (code, text) = sim(&["merge", &files[0], &files[1], &files[2], &files[2]]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("appears twice"), "{text}");
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let (code, text) = sim(&["sweep", "--scenario", "stale_retries", "--shard", "4/3"]);
    assert_eq!(code, 2, "{text}");
    let (code, text) = sim(&["sweep", "--scenario", "stale_retries", "--shard-from-env"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("SIM_SHARD"), "{text}");
}

/// A user's scenario file runs without a rebuild, replays by its path, and a
/// broken one is a usage error naming the field and its line.
#[test]
fn a_scenario_file_runs_and_a_broken_one_names_field_and_line() {
    let catalog = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scenarios/catalog/leadership_flap.toml"
    ))
    .expect("catalog file");
    let mine = temp("mine.toml");
    std::fs::write(
        &mine,
        catalog.replace("name = \"leadership_flap\"", "name = \"mine\""),
    )
    .expect("write");
    let path = mine.to_str().expect("utf8");
    let (code, text) = sim(&["sweep", "--scenario-file", path, "--seeds", "2"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.lines().any(|l| l.starts_with("mine ")), "{text}");
    let (code, text) = sim(&["replay", "--scenario-file", path, "--seed", "1"]);
    assert_eq!(code, 0, "{text}");
    let broken = temp("broken.toml");
    let line = 1 + catalog
        .lines()
        .position(|l| l.starts_with("partition_ms"))
        .expect("there");
    std::fs::write(
        &broken,
        catalog.replace("partition_ms = [500, 7000]", "partition_ms = [7000, 500]"),
    )
    .expect("write");
    let (code, text) = sim(&["sweep", "--scenario-file", broken.to_str().expect("utf8")]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("faults.partition_ms") && text.contains(&format!("line {line}")),
        "{text}"
    );
    let _ = std::fs::remove_file(&mine);
    let _ = std::fs::remove_file(&broken);
}

#[test]
fn a_hunt_is_reproducible_and_its_findings_replay_from_their_scripts() {
    let out = temp("hunt");
    let _ = std::fs::remove_dir_all(&out);
    let args = [
        "hunt",
        "--seed",
        "2",
        "--runs",
        "24",
        "--plant",
        "burst_ticks",
        "--invariant",
        "no_tick_burst",
        "--fail-fast",
        "--out",
        out.to_str().expect("utf8"),
    ];
    let (code, text) = sim(&args);
    assert_eq!(code, 3, "a finding exits 3: {text}");
    let runs = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("  run"))
            .map(str::to_owned)
            .collect()
    };
    let mut one_thread = args.to_vec();
    one_thread.extend(["--jobs", "1"]);
    let (_, again) = sim(&one_thread);
    assert_eq!(
        runs(&text),
        runs(&again),
        "same seed, same path, on 1 thread or many"
    );
    let replay = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("sim replay --script "))
        .unwrap_or_else(|| panic!("a replay line: {text}"));
    let (code, shown) = sim(&["replay", "--script", replay]);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("violation:no_tick_burst"), "{shown}");
    let (code, text) = sim(&["hunt", "--minutes", "0"]);
    assert_eq!(code, 2, "{text}");
    let (code, text) = sim(&["hunt", "--invariant", "no_such_check"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("no_double_execution"),
        "names the valid ones: {text}"
    );
}
