//! The README's quick start runs, does what it says, and exits cleanly; a wrong
//! URL or an unusable file ends it with an error that says what is wrong.

use std::process::Command;

fn quickstart(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .args(args)
        .output()
        .expect("run quickstart");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_quick_start_runs_its_jobs_on_sqlite_and_shuts_down_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("quick.db");
    let db = db.to_str().expect("utf-8 path");
    let (ok, out) = quickstart(&["--sqlite", db, "--run-for", "4"]);
    assert!(ok, "exit status; output:\n{out}");
    assert!(out.contains("duplicate of"), "unique key answered: {out}");
    assert!(out.contains("send_email"), "handlers ran: {out}");
    assert!(out.contains("clean=true"), "graceful shutdown: {out}");
}

#[test]
fn a_file_that_is_not_a_keel_database_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("notes.db");
    std::fs::write(
        &file,
        "not a database, only some text that fills the header",
    )
    .expect("write");
    let (ok, out) = quickstart(&["--sqlite", file.to_str().expect("utf-8"), "--run-for", "1"]);
    assert!(!ok, "must fail: {out}");
    assert!(out.contains("not a Keel database"), "{out}");
}

#[test]
fn a_malformed_or_unreachable_url_is_refused_without_its_password() {
    let (ok, out) = quickstart(&[
        "--postgres",
        "postgres://u:hunter2@127.0.0.1:1/db",
        "--run-for",
        "1",
    ]);
    assert!(!ok, "must fail: {out}");
    assert!(out.contains("cannot open"), "{out}");
    assert!(!out.contains("hunter2"), "password printed: {out}");
    let (ok, out) = quickstart(&["--postgres", "postgres://[bad", "--run-for", "1"]);
    assert!(!ok, "must fail: {out}");
    assert!(out.contains("url"), "names the URL: {out}");
}
