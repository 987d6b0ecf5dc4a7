//! Every Markdown page of the project, checked where it links, quotes code,
//! quotes output or lists names: the pages at the workspace root (`README.md`,
//! `ARCHITECTURE.md`) and every page under `docs/`. A page without markers is
//! only checked for its links.
//!
//! * Links: every relative link (`](path)`, `](path#anchor)`, `](#anchor)`, a
//!   `[label]: path` definition, an HTML `href`/`src`) names a file that exists,
//!   relative to its page, and an anchor into a Markdown page names one of its
//!   headings as GitHub slugs them.
//! * `<!-- check: file PATH -->` or `<!-- check: file PATH#REGION -->`, then a
//!   fenced code block (any info string): the block is the file (PATH from the
//!   root), or the lines between its `docs: begin REGION` and `docs: end REGION`
//!   comment lines, exactly.
//! * `<!-- check: run -->`, then a fenced (`console`) block of `$ command` lines,
//!   each followed by output it quotes. Every command of the block runs, in one
//!   fresh directory, and the quoted lines must appear in its stdout and stderr,
//!   in order (trailing whitespace aside); a line `...` elides and blank quoted
//!   lines are skipped. `# exits N` after a command checks its exit code, which is
//!   otherwise free (a failing run exits 3 by design). The commands:
//!   `cargo run -p sim [--release] -- ARGS` or `sim ARGS` (this build's `sim`),
//!   `cargo run -p sim [--release] --example NAME [-- ARGS]` (the example, built
//!   with this test's profile) and `cat FILE`; anything else is an error, so a
//!   page cannot quote a command nobody runs.
//! * `<!-- check: planted-bugs -->`, then a table: one row per planted bug
//!   (`keel::planted::Bug::ALL`, the first column), its `caught by` column naming
//!   the checker and its `in scenario` column the scenario that
//!   `sim::run::checkers::PLANTED_BUG_CATCHERS` pairs it with (others may follow).
//! * `<!-- check: scenarios -->` and `<!-- check: invariants -->`: every catalog
//!   scenario, or every checker, is named in backticks before the next heading.
//!
//! `KEEL_DOCS_ROOT=DIR` checks the pages of another tree (a copy of the
//! repository, a draft): pages, links and quoted files are read under DIR, while
//! the commands still run this build's binaries and the names come from this
//! build's code.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use keel::planted::Bug;
use sim::run::checkers;

/// The workspace this test was built from.
fn workspace() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize().unwrap_or(dir)
}

/// The tree whose pages are checked: `KEEL_DOCS_ROOT`, else the workspace.
fn root() -> PathBuf {
    std::env::var_os("KEEL_DOCS_ROOT").map_or_else(workspace, PathBuf::from)
}

/// A Markdown page: its name for messages, its lines, and which lines are code.
struct Page {
    /// The path under the root (`docs/simulator.md`).
    name: String,
    /// Where it is on disk.
    path: PathBuf,
    lines: Vec<String>,
    /// Whether each line is a code fence or inside a fenced block.
    code: Vec<bool>,
}

impl Page {
    fn read(root: &Path, path: PathBuf) -> Page {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let name = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        Page {
            name,
            code: code_lines(&lines),
            lines,
            path,
        }
    }

    /// `page:line` of the 0-based line `i`, for messages.
    fn at(&self, i: usize) -> String {
        format!("{}:{}", self.name, i + 1)
    }

    /// The lines outside code blocks, with their 0-based index.
    fn prose(&self) -> impl Iterator<Item = (usize, &str)> {
        self.lines
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.code[*i])
            .map(|(i, l)| (i, l.as_str()))
    }
}

/// Every page checked: the root's `*.md` and `docs/**/*.md`, in path order.
fn pages(root: &Path) -> Vec<Page> {
    fn markdown(dir: &Path, deep: bool, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path.is_dir() {
                if deep {
                    markdown(&path, deep, out);
                }
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    markdown(root, false, &mut paths);
    markdown(&root.join("docs"), true, &mut paths);
    assert!(
        paths.iter().any(|p| p.ends_with("README.md")),
        "no README.md under {}",
        root.display()
    );
    paths.into_iter().map(|p| Page::read(root, p)).collect()
}

/// Fails the test with every problem found, or passes when there is none.
fn report(what: &str, problems: &[String]) {
    if !problems.is_empty() {
        panic!("{} {what}:\n\n{}", problems.len(), problems.join("\n\n"));
    }
}

// ---------------------------------------------------------------------------
// Code fences and markers
// ---------------------------------------------------------------------------

/// An opening code fence: its indent, its character and length, its info string.
struct Fence {
    indent: usize,
    ch: char,
    len: usize,
    info: String,
}

/// The fence `line` opens, if it is one (three or more backticks or tildes).
fn fence_open(line: &str) -> Option<Fence> {
    let rest = line.trim_start_matches(' ');
    let ch = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = rest.len() - rest.trim_start_matches(ch).len();
    let info = rest[len..].trim();
    (len >= 3 && !(ch == '`' && info.contains('`'))).then(|| Fence {
        indent: line.len() - rest.len(),
        ch,
        len,
        info: info.to_owned(),
    })
}

/// Whether `line` closes `fence`.
fn closes(fence: &Fence, line: &str) -> bool {
    let rest = line.trim_start_matches(' ');
    let len = rest.len() - rest.trim_start_matches(fence.ch).len();
    len >= fence.len && rest[len..].trim().is_empty()
}

/// For each line, whether it is a fence or inside a fenced code block.
fn code_lines(lines: &[String]) -> Vec<bool> {
    let mut code = vec![false; lines.len()];
    let mut open: Option<Fence> = None;
    for (i, line) in lines.iter().enumerate() {
        match &open {
            Some(fence) => {
                code[i] = true;
                if closes(fence, line) {
                    open = None;
                }
            }
            None => {
                open = fence_open(line);
                code[i] = open.is_some();
            }
        }
    }
    code
}

/// A fenced code block: the line of its opening fence, its info string, its
/// content (unindented by the fence's indent).
struct Block {
    line: usize,
    info: String,
    body: Vec<String>,
}

/// The fenced code block after the marker on line `i`; blank lines may come between.
fn block_after(page: &Page, i: usize) -> Result<Block, String> {
    let start = (i + 1..page.lines.len())
        .find(|&j| !page.lines[j].trim().is_empty())
        .and_then(|j| Some((j, fence_open(&page.lines[j])?)));
    let Some((open, fence)) = start else {
        return Err(format!(
            "{}: the marker is not followed by a fenced code block",
            page.at(i)
        ));
    };
    let mut body = Vec::new();
    for line in &page.lines[open + 1..] {
        if closes(&fence, line) {
            return Ok(Block {
                line: open,
                info: fence.info,
                body,
            });
        }
        let spaces = line.len() - line.trim_start_matches(' ').len();
        body.push(line[spaces.min(fence.indent)..].to_owned());
    }
    Err(format!("{}: the code block never closes", page.at(open)))
}

/// What a `<!-- check: ... -->` marker asks.
#[derive(Debug)]
enum Marker {
    /// The next code block is the file at `path` (from the root), or its `region`.
    File {
        path: String,
        region: Option<String>,
    },
    /// The next code block's commands run and print what it quotes.
    Run,
    /// The next table lists every planted bug with its checker and scenario.
    PlantedBugs,
    /// The text up to the next heading names every catalog scenario.
    Scenarios,
    /// The text up to the next heading names every checker.
    Invariants,
}

/// The markers of a page (outside code) with their line; an unknown one is an `Err`.
fn markers(page: &Page) -> Vec<(usize, Result<Marker, String>)> {
    page.prose()
        .filter_map(|(i, line)| {
            let ask = line
                .trim()
                .strip_prefix("<!--")?
                .strip_suffix("-->")?
                .trim()
                .strip_prefix("check:")?
                .trim();
            let words: Vec<&str> = ask.split_whitespace().collect();
            let marker = match words.as_slice() {
                ["file", spec] => Ok(match spec.split_once('#') {
                    Some((path, region)) => Marker::File {
                        path: path.to_owned(),
                        region: Some(region.to_owned()),
                    },
                    None => Marker::File {
                        path: (*spec).to_owned(),
                        region: None,
                    },
                }),
                ["run"] => Ok(Marker::Run),
                ["planted-bugs"] => Ok(Marker::PlantedBugs),
                ["scenarios"] => Ok(Marker::Scenarios),
                ["invariants"] => Ok(Marker::Invariants),
                _ => Err(format!(
                    "{}: unknown marker `check: {ask}` (known: `file PATH`, `file PATH#REGION`, \
                     `run`, `planted-bugs`, `scenarios`, `invariants`)",
                    page.at(i)
                )),
            };
            Some((i, marker))
        })
        .collect()
}

#[test]
fn every_marker_is_known() {
    let problems: Vec<String> = pages(&root())
        .iter()
        .flat_map(markers)
        .filter_map(|(_, m)| m.err())
        .collect();
    report("unknown docs markers", &problems);
}

// ---------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------

/// `line` with the text of its inline code spans blanked, so that no link is
/// read inside one.
fn without_code_spans(line: &str) -> String {
    let bytes = line.as_bytes();
    let run = |at: usize| bytes[at..].iter().take_while(|b| **b == b'`').count();
    let mut out = String::with_capacity(line.len());
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        if bytes[i] != b'`' {
            i += 1;
            continue;
        }
        let ticks = run(i);
        // The span closes at the next run of exactly as many backticks.
        let mut j = i + ticks;
        let mut close = None;
        while j < bytes.len() {
            if bytes[j] == b'`' {
                if run(j) == ticks {
                    close = Some(j);
                    break;
                }
                j += run(j);
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                out.push_str(&line[copied..i]);
                out.push_str(&" ".repeat(j + ticks - i));
                i = j + ticks;
                copied = i;
            }
            None => i += ticks,
        }
    }
    out.push_str(&line[copied..]);
    out
}

/// The link targets on a line of prose: `](target)`, `[label]: target`,
/// `href="target"` and `src="target"`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    for (at, _) in line.match_indices("](") {
        let rest = &line[at + 2..];
        // Up to the parenthesis that closes this one.
        let mut depth = 0;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' if depth == 0 => return true,
                    ')' => depth -= 1,
                    _ => {}
                }
                false
            })
            .map_or(rest.len(), |(i, _)| i);
        targets.push(destination(&rest[..end]));
    }
    let trimmed = line.trim_start();
    if let Some((label, target)) = trimmed.strip_prefix('[').and_then(|r| r.split_once("]:")) {
        if !label.is_empty() && !label.starts_with('^') {
            targets.push(destination(target));
        }
    }
    for attribute in ["href=\"", "src=\""] {
        for (at, _) in line.match_indices(attribute) {
            let rest = &line[at + attribute.len()..];
            targets.push(rest[..rest.find('"').unwrap_or(rest.len())].to_owned());
        }
    }
    targets.retain(|t| !t.is_empty());
    targets
}

/// A link's destination without its title: `<a b.md> "t"` is `a b.md`, `x.md "t"` is `x.md`.
fn destination(text: &str) -> String {
    let text = text.trim();
    match text.strip_prefix('<') {
        Some(rest) => rest[..rest.find('>').unwrap_or(rest.len())].to_owned(),
        None => text.split_whitespace().next().unwrap_or("").to_owned(),
    }
}

/// Whether a link leaves the repository: it has a scheme (`https:`, `mailto:`)
/// or is protocol-relative.
fn is_external(target: &str) -> bool {
    target.starts_with("//")
        || target.split_once(':').is_some_and(|(scheme, _)| {
            scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        })
}

/// `%XX` escapes decoded (`a%20b.md` names `a b.md`).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The text of an ATX heading (`## Text ##` is `Text`), if `line` is one.
fn heading(line: &str) -> Option<&str> {
    let rest = line.trim_start_matches(' ');
    let level = rest.len() - rest.trim_start_matches('#').len();
    let text = &rest[level..];
    if !(1..=6).contains(&level) || !(text.is_empty() || text.starts_with([' ', '\t'])) {
        return None;
    }
    let text = text.trim();
    let closed = text.trim_end_matches('#');
    Some(if closed.is_empty() || closed.ends_with(' ') {
        closed.trim_end()
    } else {
        text
    })
}

/// The anchor GitHub gives a heading: its text as rendered (link targets and
/// HTML tags dropped), lowercased, without characters other than letters,
/// digits, spaces, `-` and `_`, each space a `-`.
fn slug(heading: &str) -> String {
    let mut text = heading.to_owned();
    while let Some(at) = text.find("](") {
        let end = text[at..].find(')').map_or(text.len(), |e| at + e + 1);
        text.replace_range(at..end, "");
    }
    while let Some(at) = text.find('<') {
        let Some(end) = text[at..].find('>') else {
            break;
        };
        text.replace_range(at..at + end + 1, "");
    }
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page: its headings' slugs, a repeated one numbered as GitHub
/// numbers it (`x`, `x-1`, ...), and the `id`/`name` of its HTML anchors.
fn anchors(page: &Page) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    for (_, line) in page.prose() {
        if let Some(text) = heading(line) {
            let base = slug(text);
            let mut anchor = base.clone();
            let mut n = 0;
            while anchors.contains(&anchor) {
                n += 1;
                anchor = format!("{base}-{n}");
            }
            anchors.insert(anchor);
        }
        for attribute in [" id=\"", " name=\""] {
            for (at, _) in line.match_indices(attribute) {
                let rest = &line[at + attribute.len()..];
                anchors.insert(rest[..rest.find('"').unwrap_or(rest.len())].to_owned());
            }
        }
    }
    anchors
}

#[test]
fn links_resolve() {
    let root = root();
    let pages = pages(&root);
    // Anchors of each Markdown page linked to, read once.
    let mut anchors_of: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let dir = page.path.parent().expect("a page is in a directory");
        for (i, line) in page.prose() {
            for target in link_targets(line) {
                if is_external(&target) {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((path, anchor)) => (path, Some(percent_decoded(anchor))),
                    None => (target.as_str(), None),
                };
                let path = percent_decoded(path.split('?').next().unwrap_or(""));
                let file = if path.is_empty() {
                    page.path.clone()
                } else if let Some(from_root) = path.strip_prefix('/') {
                    root.join(from_root) // GitHub reads `/x` from the repository's root
                } else {
                    dir.join(&path)
                };
                if !file.exists() {
                    problems.push(format!(
                        "{}: `{target}`: no file {}",
                        page.at(i),
                        file.display()
                    ));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                // Anchors into other files (`#L10` of a source) are GitHub's own.
                if file.extension().is_none_or(|e| e != "md") {
                    continue;
                }
                let key = file.canonicalize().unwrap_or_else(|_| file.clone());
                let known = anchors_of
                    .entry(key)
                    .or_insert_with(|| anchors(&Page::read(&root, file.clone())));
                if !known.contains(&anchor) {
                    let near: Vec<&str> = known
                        .iter()
                        .filter(|a| anchor.split('-').any(|w| w.len() > 3 && a.contains(w)))
                        .map(String::as_str)
                        .take(5)
                        .collect();
                    problems.push(format!(
                        "{}: `{target}`: no heading of {} has the anchor `#{anchor}`{}",
                        page.at(i),
                        file.strip_prefix(&root).unwrap_or(&file).display(),
                        if near.is_empty() {
                            String::new()
                        } else {
                            format!(" (close: {})", near.join(", "))
                        }
                    ));
                }
            }
        }
    }
    eprintln!("docs: {checked} relative links on {} pages", pages.len());
    report("broken links", &problems);
}

// ---------------------------------------------------------------------------
// Code quoted from a file
// ---------------------------------------------------------------------------

/// The text of `line` if it is a comment line (`//`, `#`, `<!-- -->`), trimmed.
fn comment(line: &str) -> Option<&str> {
    let line = line.trim();
    let text = line
        .strip_prefix("//")
        .or_else(|| line.strip_prefix('#'))
        .or_else(|| line.strip_prefix("<!--")?.strip_suffix("-->"))?;
    Some(text.trim())
}

/// The quoted part of a file: its lines between `docs: begin NAME` and
/// `docs: end NAME` comment lines (any other region's markers left out), or all
/// its lines; with the 1-based line number of the first.
fn region<'t>(text: &'t str, name: Option<&str>) -> Result<(usize, Vec<&'t str>), String> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(name) = name else {
        return Ok((1, lines));
    };
    let find = |what: &str| {
        let marker = format!("docs: {what} {name}");
        let at: Vec<usize> = (0..lines.len())
            .filter(|&i| comment(lines[i]) == Some(marker.as_str()))
            .collect();
        match at.as_slice() {
            [i] => Ok(*i),
            [] => Err(format!("no `// {marker}` line")),
            _ => Err(format!("{} `// {marker}` lines", at.len())),
        }
    };
    let (begin, end) = (find("begin")?, find("end")?);
    if end < begin {
        return Err(format!(
            "`docs: end {name}` comes before `docs: begin {name}`"
        ));
    }
    let quoted = lines[begin + 1..end]
        .iter()
        .copied()
        .filter(|l| {
            !comment(l)
                .is_some_and(|c| c.starts_with("docs: begin ") || c.starts_with("docs: end "))
        })
        .collect();
    Ok((begin + 2, quoted))
}

/// Where a quoted block first differs from the file's lines, or `None` if equal.
fn first_difference(quoted: &[String], file: &[&str]) -> Option<usize> {
    (0..quoted.len().max(file.len()))
        .find(|&k| quoted.get(k).map(String::as_str) != file.get(k).copied())
}

/// Checks the block after the `check: file` marker on line `i` of `page`.
fn check_file(
    root: &Path,
    page: &Page,
    i: usize,
    path: &str,
    name: Option<&str>,
) -> Result<(), String> {
    let what = match name {
        Some(name) => format!("{path}#{name}"),
        None => path.to_owned(),
    };
    let block = block_after(page, i)?;
    let text = std::fs::read_to_string(root.join(path))
        .map_err(|e| format!("{}: `check: file {what}`: reading {path}: {e}", page.at(i)))?;
    let (first, lines) = region(&text, name)
        .map_err(|e| format!("{}: `check: file {what}`: {path}: {e}", page.at(i)))?;
    let Some(k) = first_difference(&block.body, &lines) else {
        return Ok(());
    };
    let show = |line: Option<&str>| {
        line.map_or_else(
            || "(nothing: it ends before)".to_owned(),
            |l| format!("`{l}`"),
        )
    };
    Err(format!(
        "{}: the block differs from {what} ({} lines quoted, {} in the file), first at its line {}:\n  \
         {} quotes {}\n  {}:{} has   {}",
        page.at(block.line),
        block.body.len(),
        lines.len(),
        k + 1,
        page.at(block.line + 1 + k),
        show(block.body.get(k).map(String::as_str)),
        path,
        first + k,
        show(lines.get(k).copied()),
    ))
}

#[test]
fn quoted_code_is_the_file() {
    let root = root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages(&root) {
        for (i, marker) in markers(&page) {
            if let Ok(Marker::File { path, region }) = marker {
                checked += 1;
                if let Err(e) = check_file(&root, &page, i, &path, region.as_deref()) {
                    problems.push(e);
                }
            }
        }
    }
    eprintln!("docs: {checked} blocks quoted from files");
    report("quoted code blocks differ from their files", &problems);
}

// ---------------------------------------------------------------------------
// Output quoted from a run
// ---------------------------------------------------------------------------

/// One `$ command` of a console block: its line, the command, the exit code its
/// `# exits N` comment expects, and the output lines it quotes with their lines.
struct Step {
    line: usize,
    command: String,
    exits: Option<i32>,
    quoted: Vec<(usize, String)>,
}

/// The steps of the console block after the `check: run` marker on line `i`.
fn steps(page: &Page, i: usize) -> Result<Vec<Step>, String> {
    let block = block_after(page, i)?;
    let mut steps: Vec<Step> = Vec::new();
    for (k, text) in block.body.iter().enumerate() {
        let line = block.line + 1 + k;
        if let Some(command) = text.strip_prefix("$ ") {
            let (command, note) = match command.find(" #") {
                Some(at) => (&command[..at], Some(command[at + 2..].trim())),
                None => (command, None),
            };
            let exits = match note.and_then(|n| n.strip_prefix("exits")) {
                Some(rest) => {
                    let digits: String = rest
                        .trim_start()
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    Some(digits.parse().map_err(|_| {
                        format!(
                            "{}: `# exits` wants an exit code: `# exits 3`",
                            page.at(line)
                        )
                    })?)
                }
                None => None,
            };
            steps.push(Step {
                line,
                command: command.trim().to_owned(),
                exits,
                quoted: Vec::new(),
            });
        } else if let Some(step) = steps.last_mut() {
            if !text.trim().is_empty() {
                step.quoted.push((line, text.trim_end().to_owned()));
            }
        } else if !text.trim().is_empty() {
            return Err(format!(
                "{}: output before any `$ command` in a `check: run` block",
                page.at(line)
            ));
        }
    }
    if steps.is_empty() {
        return Err(format!(
            "{}: a `check: run` block ({}) has no `$ command` line",
            page.at(block.line),
            if block.info.is_empty() {
                "no info string"
            } else {
                &block.info
            }
        ));
    }
    Ok(steps)
}

/// A command a page may quote.
#[derive(Debug)]
enum Invocation {
    /// The `sim` binary with these arguments.
    Sim(Vec<String>),
    /// An example of package `sim` with these arguments.
    Example { name: String, args: Vec<String> },
    /// Print a file of the block's directory.
    Cat(String),
}

/// What `command` runs; an error says why it is not one of the known commands.
fn invocation(command: &str) -> Result<Invocation, String> {
    if let Some(c) = command.chars().find(|c| "'\"|<>;&`$\\*?~".contains(*c)) {
        return Err(format!(
            "`{c}`: quoting, pipes and redirections are not supported"
        ));
    }
    let words: Vec<&str> = command.split_whitespace().collect();
    let owned = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    match words.as_slice() {
        ["sim", args @ ..] => Ok(Invocation::Sim(owned(args))),
        ["cat", file] => Ok(Invocation::Cat((*file).to_owned())),
        ["cargo", "run", rest @ ..] => {
            let (mut package, mut example, mut args) = (None, None, Vec::new());
            let mut k = 0;
            while k < rest.len() {
                match rest[k] {
                    "--" => {
                        args = owned(&rest[k + 1..]);
                        break;
                    }
                    "-p" | "--package" => package = rest.get(k + 1).copied(),
                    "--example" => example = rest.get(k + 1).copied(),
                    "--release" | "-q" | "--quiet" => {
                        k += 1;
                        continue;
                    }
                    other => return Err(format!("`cargo run` option `{other}` is not supported")),
                }
                k += 2;
            }
            if package != Some("sim") {
                return Err("only `cargo run -p sim` is supported".into());
            }
            Ok(match example {
                Some(name) => Invocation::Example {
                    name: name.to_owned(),
                    args,
                },
                None => Invocation::Sim(args),
            })
        }
        _ => Err("not a command this test runs (`cargo run -p sim [--release] [--example NAME] -- ...`, \
                  `sim ...`, `cat FILE`)"
            .into()),
    }
}

/// The example `name` of package `sim`, built first with this test's profile
/// (cargo rebuilds only what changed, so a stale example is never run).
fn example(name: &str) -> Result<PathBuf, String> {
    // This test runs as target/<profile>/deps/docs-<hash>.
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("the test executable is not in target/<profile>/deps")?;
    let target_dir = profile_dir.parent().ok_or("no target directory")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => return Err("the profile directory has no name".into()),
    };
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args([
            "build",
            "--quiet",
            "-p",
            "sim",
            "--example",
            name,
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build -p sim --example {name} --profile {profile}` failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "cargo built the example, but not at {}",
            path.display()
        ))
    }
}

/// Runs `invocation` in `dir`: its exit code (`None` if killed) and its stdout
/// and stderr as one text, interleaved as written.
fn execute(
    invocation: &Invocation,
    dir: &Path,
    examples: &mut BTreeMap<String, PathBuf>,
) -> Result<(Option<i32>, String), String> {
    let (program, args) = match invocation {
        Invocation::Cat(file) => {
            return Ok(match std::fs::read_to_string(dir.join(file)) {
                Ok(text) => (Some(0), text),
                Err(e) => (Some(1), format!("cat: {file}: {e}\n")),
            })
        }
        Invocation::Sim(args) => (PathBuf::from(env!("CARGO_BIN_EXE_sim")), args),
        Invocation::Example { name, args } => {
            let path = match examples.get(name) {
                Some(path) => path.clone(),
                None => {
                    let path = example(name)?;
                    examples.insert(name.clone(), path.clone());
                    path
                }
            };
            (path, args)
        }
    };
    let (mut reader, writer) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let mut command = Command::new(&program);
    command
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().map_err(|e| format!("pipe: {e}"))?)
        .stderr(writer);
    // The test's own seed and scenario overrides are not the page's.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SIM_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    drop(command); // its ends of the pipe, or the read below never ends
    let mut output = Vec::new();
    reader
        .read_to_end(&mut output)
        .map_err(|e| format!("reading the output: {e}"))?;
    let status = child.wait().map_err(|e| format!("waiting: {e}"))?;
    Ok((status.code(), String::from_utf8_lossy(&output).into_owned()))
}

/// The first quoted line that is not found, in order, among the lines of
/// `output` (trailing whitespace aside; a `...` line matches nothing): its index,
/// and the index of the output line the search for it started from.
fn unmatched(quoted: &[(usize, String)], output: &str) -> Option<(usize, usize)> {
    let actual: Vec<&str> = output.lines().map(str::trim_end).collect();
    let mut next = 0;
    for (k, (_, line)) in quoted.iter().enumerate() {
        if line.trim() == "..." {
            continue;
        }
        match actual[next..].iter().position(|a| a == line) {
            Some(at) => next += at + 1,
            None => return Some((k, next)),
        }
    }
    None
}

/// The output line from index `from` on most like `quoted` (characters equal
/// in place, less the difference in length), if it is at least half alike: most
/// drift is a number changed within a line.
fn nearest<'o>(quoted: &str, output: &'o str, from: usize) -> Option<&'o str> {
    let len = |s: &str| s.chars().count();
    let alike = |a: &str| {
        let same = a
            .chars()
            .zip(quoted.chars())
            .filter(|(x, y)| x == y)
            .count();
        same.saturating_sub(len(a).abs_diff(len(quoted)))
    };
    let best = output
        .lines()
        .skip(from)
        .map(str::trim_end)
        .max_by_key(|a| alike(a))?;
    (alike(best) * 2 >= len(quoted)).then_some(best)
}

/// `output` for a message: indented, at most 60 lines.
fn excerpt(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let mut text: String = lines
        .iter()
        .take(60)
        .map(|l| format!("    | {l}\n"))
        .collect();
    if lines.len() > 60 {
        text.push_str(&format!("    | ... {} more lines\n", lines.len() - 60));
    }
    text
}

/// Runs one step in `dir` and checks its exit code and what it quotes.
fn check_step(
    page: &Page,
    step: &Step,
    dir: &Path,
    examples: &mut BTreeMap<String, PathBuf>,
) -> Result<(), String> {
    let invocation = invocation(&step.command)?;
    #[allow(
        clippy::disallowed_methods,
        reason = "timing a command the test runs, for the log"
    )]
    let started = std::time::Instant::now();
    let (code, output) = execute(&invocation, dir, examples)?;
    eprintln!(
        "docs: {}: {:.1}s `{}`",
        page.at(step.line),
        started.elapsed().as_secs_f64(),
        step.command
    );
    let shown = code.map_or_else(|| "killed".to_owned(), |c| format!("exit {c}"));
    if let Some(expected) = step.exits {
        if code != Some(expected) {
            return Err(format!(
                "`# exits {expected}`, but {shown}; its output:\n{}",
                excerpt(&output)
            ));
        }
    }
    let Some((k, from)) = unmatched(&step.quoted, &output) else {
        return Ok(());
    };
    let (line, text) = &step.quoted[k];
    let near = nearest(text, &output, from)
        .map(|n| format!("\n  nearest: `{n}`"))
        .unwrap_or_default();
    Err(format!(
        "{shown}, and its output lacks the quoted line (the ones before it matched, in order)\n  \
         {}: `{text}`{near}\n  its output ({} lines):\n{}",
        page.at(*line),
        output.lines().count(),
        excerpt(&output)
    ))
}

/// Runs the steps of the block after the `check: run` marker on line `i` of
/// `page` in a fresh directory (left in place when a step fails) and checks
/// what each quotes.
fn check_run(
    page: &Page,
    i: usize,
    examples: &mut BTreeMap<String, PathBuf>,
    problems: &mut Vec<String>,
) {
    let steps = match steps(page, i) {
        Ok(steps) => steps,
        Err(e) => return problems.push(e),
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("docs")
        .join(format!(
            "{}-{}",
            page.name.replace(['/', '\\', '.'], "_"),
            i + 1
        ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("clearing the block's directory");
    }
    std::fs::create_dir_all(&dir).expect("creating the block's directory");
    let before = problems.len();
    for step in &steps {
        if let Err(e) = check_step(page, step, &dir, examples) {
            problems.push(format!("{}: `$ {}`: {e}", page.at(step.line), step.command));
        }
    }
    if problems.len() == before {
        std::fs::remove_dir_all(&dir).expect("removing the block's directory");
    }
}

#[test]
fn quoted_output_is_what_the_commands_print() {
    let mut examples = BTreeMap::new();
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages(&root()) {
        for (i, marker) in markers(&page) {
            if let Ok(Marker::Run) = marker {
                checked += 1;
                check_run(&page, i, &mut examples, &mut problems);
            }
        }
    }
    eprintln!("docs: {checked} blocks of commands run");
    report(
        "quoted outputs drifted from what the commands print",
        &problems,
    );
}

// ---------------------------------------------------------------------------
// Names that must agree with the code
// ---------------------------------------------------------------------------

/// The names in backticks in `text`.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The lines after the marker on line `i` up to the next heading, as one text.
fn section(page: &Page, i: usize) -> String {
    let end = (i + 1..page.lines.len())
        .find(|&j| !page.code[j] && heading(&page.lines[j]).is_some())
        .unwrap_or(page.lines.len());
    page.lines[i + 1..end].join("\n")
}

/// The cells of a table row (`| a | b |`), trimmed; `\|` does not split.
fn cells(line: &str) -> Vec<String> {
    let line = line.trim();
    let line = line.strip_prefix('|').unwrap_or(line);
    let line = line
        .strip_suffix('|')
        .filter(|l| !l.ends_with('\\'))
        .unwrap_or(line);
    let mut cells = vec![String::new()];
    let mut escaped = false;
    for c in line.chars() {
        match c {
            '|' if !escaped => cells.push(String::new()),
            _ => cells.last_mut().expect("a cell").push(c),
        }
        escaped = c == '\\';
    }
    cells.iter().map(|c| c.trim().replace("\\|", "|")).collect()
}

/// The table after the marker on line `i`: its header cells, lowercased, and its
/// rows with their line (the delimiter row left out).
type Table = (Vec<String>, Vec<(usize, Vec<String>)>);

/// The Markdown table after the marker on line `i` (blank lines may come between).
fn table_after(page: &Page, i: usize) -> Result<Table, String> {
    let start = (i + 1..page.lines.len())
        .find(|&j| !page.lines[j].trim().is_empty())
        .filter(|&j| page.lines[j].trim_start().starts_with('|'))
        .ok_or_else(|| format!("{}: the marker is not followed by a table", page.at(i)))?;
    let header: Vec<String> = cells(&page.lines[start])
        .iter()
        .map(|c| c.to_lowercase())
        .collect();
    let rows = (start + 1..page.lines.len())
        .take_while(|&j| page.lines[j].trim_start().starts_with('|'))
        .map(|j| (j, cells(&page.lines[j])))
        .filter(|(_, row)| {
            !row.iter()
                .all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
        })
        .collect();
    Ok((header, rows))
}

/// Checks the planted-bug table after the marker on line `i`: one row per bug,
/// each naming its checker and scenario, every name a real one.
fn check_planted_bugs(page: &Page, i: usize, problems: &mut Vec<String>) {
    let (header, rows) = match table_after(page, i) {
        Ok(table) => table,
        Err(e) => return problems.push(e),
    };
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(caught_by), Some(in_scenario)) = (column("caught by"), column("in scenario")) else {
        return problems.push(format!(
            "{}: the planted-bug table needs `caught by` and `in scenario` columns, has {header:?}",
            page.at(i)
        ));
    };
    let scenarios: Vec<String> = sim::scenarios::all().into_iter().map(|s| s.name).collect();
    let mut seen = BTreeSet::new();
    for (line, row) in rows {
        let at = page.at(line);
        let cell = |c: usize| row.get(c).map_or("", String::as_str);
        let [bug] = backticked(cell(0))[..] else {
            problems.push(format!(
                "{at}: the first cell should name one planted bug in backticks: `{}`",
                cell(0)
            ));
            continue;
        };
        let Some(known) = Bug::ALL.iter().copied().find(|b| b.name() == bug) else {
            problems.push(format!(
                "{at}: `{bug}` is not a planted bug (keel::planted::Bug::ALL)"
            ));
            continue;
        };
        if !seen.insert(known.name()) {
            problems.push(format!("{at}: `{bug}` has a second row"));
        }
        let (_, scenario, invariant) = checkers::PLANTED_BUG_CATCHERS
            .iter()
            .copied()
            .find(|(b, _, _)| *b == known)
            .expect("PLANTED_BUG_CATCHERS pairs every bug");
        let named = backticked(cell(caught_by));
        for checker in &named {
            if checkers::by_name(checker).is_none() {
                problems.push(format!(
                    "{at}: `{bug}` is caught by `{checker}`, which is not a checker"
                ));
            }
        }
        if !named.contains(&invariant) {
            problems.push(format!(
                "{at}: `{bug}`'s `caught by` should name `{invariant}` (PLANTED_BUG_CATCHERS), names {named:?}"
            ));
        }
        let named = backticked(cell(in_scenario));
        for name in &named {
            if !scenarios.iter().any(|s| s == name) {
                problems.push(format!(
                    "{at}: `{bug}` is caught in `{name}`, which is not a catalog scenario"
                ));
            }
        }
        if !named.contains(&scenario) {
            problems.push(format!(
                "{at}: `{bug}`'s `in scenario` should name `{scenario}` (PLANTED_BUG_CATCHERS), names {named:?}"
            ));
        }
    }
    let missing: Vec<&str> = Bug::ALL
        .iter()
        .map(|b| b.name())
        .filter(|b| !seen.contains(b))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{}: the planted-bug table has no row for {missing:?}",
            page.at(i)
        ));
    }
}

/// Checks that the text after the marker on line `i` names each of `names` in backticks.
fn check_named(page: &Page, i: usize, what: &str, names: &[String], problems: &mut Vec<String>) {
    let text = section(page, i);
    let named: BTreeSet<&str> = backticked(&text).into_iter().collect();
    let missing: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !named.contains(n))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{}: the text up to the next heading should name every {what} in backticks; it lacks {missing:?}",
            page.at(i)
        ));
    }
}

#[test]
fn names_agree_with_the_code() {
    let scenarios: Vec<String> = sim::scenarios::all().into_iter().map(|s| s.name).collect();
    let checkers: Vec<String> = checkers::names().into_iter().map(str::to_owned).collect();
    let mut problems = Vec::new();
    let mut checked = 0;
    // Each list must exist somewhere: dropping its marker must not silence it.
    let (mut bugs, mut catalog, mut invariants) = (0, 0, 0);
    for page in pages(&root()) {
        for (i, marker) in markers(&page) {
            match &marker {
                Ok(Marker::PlantedBugs) => bugs += 1,
                Ok(Marker::Scenarios) => catalog += 1,
                Ok(Marker::Invariants) => invariants += 1,
                _ => {}
            }
            match marker {
                Ok(Marker::PlantedBugs) => check_planted_bugs(&page, i, &mut problems),
                Ok(Marker::Scenarios) => {
                    check_named(&page, i, "catalog scenario", &scenarios, &mut problems)
                }
                Ok(Marker::Invariants) => {
                    check_named(&page, i, "checker", &checkers, &mut problems)
                }
                _ => continue,
            }
            checked += 1;
        }
    }
    for (count, marker) in [
        (bugs, "planted-bugs"),
        (catalog, "scenarios"),
        (invariants, "invariants"),
    ] {
        if count == 0 {
            problems.push(format!("no page carries `<!-- check: {marker} -->`"));
        }
    }
    eprintln!("docs: {checked} lists of names");
    report("lists of names disagree with the code", &problems);
}

// ---------------------------------------------------------------------------
// The parsers, on small cases
// ---------------------------------------------------------------------------

#[test]
fn the_parsers_read_what_the_pages_write() {
    assert_eq!(
        slug("Real processes, real faults: `chaos`"),
        "real-processes-real-faults-chaos"
    );
    assert_eq!(
        slug("Operating a Keel database: the `keel` command"),
        "operating-a-keel-database-the-keel-command"
    );
    assert_eq!(
        slug("See [the map](ARCHITECTURE.md) <a id=\"x\"></a>"),
        "see-the-map"
    );
    assert_eq!(heading("## Two commands ##"), Some("Two commands"));
    assert_eq!(heading("#hashtag"), None);
    assert_eq!(
        link_targets("a [x](docs/a.md#b \"t\") `[no](c.md)` ![i](<d e.png>) [y](https://z)"),
        ["docs/a.md#b", "d e.png", "https://z"]
    );
    assert_eq!(link_targets("[label]: ../x.md"), ["../x.md"]);
    assert!(is_external("mailto:a@b") && is_external("https://x") && !is_external("docs/a.md"));
    assert_eq!(percent_decoded("a%20b.md"), "a b.md");
    assert_eq!(cells("| `a` | b \\| c |"), ["`a`", "b | c"]);
    assert_eq!(
        backticked("`zombies`, and `swarm` on its own seeds"),
        ["zombies", "swarm"]
    );
    let text = "x\n// docs: begin r\na\n  # docs: begin inner\nb\n// docs: end r\n";
    assert_eq!(region(text, Some("r")), Ok((3, vec!["a", "b"])));
    assert!(region(text, Some("nope")).is_err());
    assert!(matches!(
        invocation("cargo run --release -p sim -- sweep --seeds 64"),
        Ok(Invocation::Sim(args)) if args == ["sweep", "--seeds", "64"]
    ));
    assert!(matches!(
        invocation("cargo run -p sim --example idempotent_handler"),
        Ok(Invocation::Example { name, args }) if name == "idempotent_handler" && args.is_empty()
    ));
    assert!(invocation("rm -rf x").is_err());
    assert!(invocation("sim sweep > out").is_err());
    let quoted = |lines: &[&str]| {
        lines
            .iter()
            .map(|l| (0, (*l).to_owned()))
            .collect::<Vec<_>>()
    };
    assert_eq!(unmatched(&quoted(&["a", "...", "c"]), "a\nb\nc  \n"), None);
    assert_eq!(unmatched(&quoted(&["c", "a"]), "a\nb\nc\n"), Some((1, 3)));
    assert_eq!(
        nearest("order 56 charged", "x\norder 33 charged\norder 5", 0),
        Some("order 33 charged")
    );
}
