//! Tables for people: aligned columns, times in UTC (the CLI's and the dashboard's).

use keel::clock::Timestamp;
use keel::storage::{AdminOutcome, CancelResult};

/// What an operator's retry, discard or delete did, in words (the CLI's and
/// the dashboard's).
pub fn admin_said(outcome: AdminOutcome) -> &'static str {
    match outcome {
        AdminOutcome::Done => "done",
        AdminOutcome::Unchanged => "unchanged: already due",
        AdminOutcome::NotFound => "not found",
        AdminOutcome::Running => "refused: running (cancel it, or wait for its attempt to end)",
        AdminOutcome::AlreadyFinished => "refused: already finished",
    }
}

/// What an operator's cancel did, in words.
pub fn cancel_said(result: CancelResult) -> &'static str {
    match result {
        CancelResult::Cancelled => "cancelled",
        CancelResult::Requested => "cancel requested: its worker stops at its next heartbeat",
        CancelResult::AlreadyFinished => "refused: already finished",
        CancelResult::NotFound => "not found",
    }
}

/// A storage time as RFC 3339 UTC, to the millisecond.
pub fn time(t: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(t.0).map_or_else(
        || format!("{} ms", t.0),
        |d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

/// An optional time, `-` when absent.
pub fn time_or_dash(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "-".into(), time)
}

/// A span of milliseconds for people: `850ms`, `12.3s`, `4m05s`.
pub fn span_ms(ms: i64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{:.1}s", ms as f64 / 1_000.0),
        ms => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1_000),
    }
}

/// Columns padded to their widest cell; the header first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A one-line form of a message that may hold newlines (a panic's).
pub fn one_line(text: &str, max_chars: usize) -> String {
    let flat = text.replace(['\n', '\r'], " ");
    if flat.chars().count() <= max_chars {
        return flat;
    }
    let cut: String = flat.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_pads_every_column_to_its_widest_cell() {
        let out = table(
            &["id", "state"],
            &[
                vec!["1".into(), "running".into()],
                vec!["100".into(), "x".into()],
            ],
        );
        assert_eq!(out, "id   state\n1    running\n100  x");
    }

    #[test]
    fn times_and_spans_read_as_people_write_them() {
        assert_eq!(time(Timestamp(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(span_ms(850), "850ms");
        assert_eq!(span_ms(12_300), "12.3s");
        assert_eq!(span_ms(245_000), "4m05s");
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
