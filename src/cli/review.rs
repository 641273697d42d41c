//! `airlock changes`, `diff`, `commit`, `reject`, `undo`, and the terminal
//! review that `airlock run --review` ends with. Names and file content are
//! always shown escaped; colour only on a terminal.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::audit::CommitFile;
use crate::event::EventKind;
use crate::i18n::{gettext, gettext_f};
use crate::task::{TaskDir, TaskId, TaskManifest, TaskState};
use crate::workspace::changes::{hex, unhex, Change, ChangeKind, ChangeSet, NodeKind};
use crate::workspace::diff::{self, FileDiff, Tag};
use crate::workspace::names::{self, escape, escape_path};
use crate::workspace::{self as ws, CommitOptions, Selection, Snapshot};

#[derive(Debug, clap::Args)]
pub struct ChangesArgs {
    /// The task id.
    pub task: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    pub task: String,
    /// Only this file (its real path, or relative to the granted folder).
    pub path: Option<PathBuf>,
    /// Before on the left, after on the right.
    #[arg(long)]
    pub side_by_side: bool,
}

#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    pub task: String,
    /// Commit only these files or folders (repeatable).
    #[arg(long, num_args = 1..)]
    pub only: Vec<PathBuf>,
    /// Commit only some hunks of a file: PATH:1,3 (numbers as `airlock diff` shows).
    #[arg(long)]
    pub hunks: Vec<PathBuf>,
    /// For a conflict: overwrite the user's newer file with the agent's version.
    #[arg(long, num_args = 1..)]
    pub keep_agent: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct TaskArg {
    pub task: String,
}

/// One task opened for review.
struct Review {
    dir: TaskDir,
    manifest: TaskManifest,
}

fn open(task: &str) -> Result<Review> {
    let id = TaskId::parse(task)?;
    let dir = TaskDir::new(&crate::dirs::tasks_dir(), &id);
    if !dir.manifest().exists() {
        return Err(crate::Error::NoSuchTask(task.to_string()).into());
    }
    let manifest = dir.read_manifest()?;
    // Its `airlock run` was killed: interrupted, and reviewable now.
    if crate::supervisor::recover_orphan(&dir)? {
        super::say!(
            "{}",
            gettext_f(
                "task {id} was cut off when the process running it was killed; it is marked interrupted and its changes can be reviewed",
                &[("id", manifest.id.as_str())]
            )
        );
    }
    recover_commit(&dir)?;
    Ok(Review { dir, manifest })
}

/// Finishes or rolls back the task's interrupted commit, if any; refuses
/// while a commit or undo of the task is running elsewhere, whose files
/// are in motion.
fn recover_commit(dir: &TaskDir) -> Result<()> {
    match ws::recover(dir)? {
        ws::RecoveryOutcome::Clean => {}
        ws::RecoveryOutcome::RolledBack { seq, kept } => {
            super::say!(
                "{}",
                gettext_f(
                    "An interrupted commit ({seq}) was rolled back.",
                    &[("seq", &seq.to_string())]
                )
            );
            for p in &kept {
                super::say!(
                    "  {}",
                    gettext_f(
                        "changed after the commit was cut off, so kept as: {path}",
                        &[("path", &escape_path(p))]
                    )
                );
            }
        }
        ws::RecoveryOutcome::Completed { seq } => super::say!(
            "{}",
            gettext_f(
                "An interrupted commit ({seq}) was completed.",
                &[("seq", &seq.to_string())]
            )
        ),
        ws::RecoveryOutcome::Busy => {
            return Err(crate::Error::Refused(gettext_f(
                "a commit or undo of this task is running (in the Airlock window or another terminal); try again when it has finished ({path} is locked)",
                &[("path", &escape_path(&dir.path().join("commit.lock")))],
            ))
            .into())
        }
    }
    Ok(())
}

impl Review {
    /// The sandbox writes `exit.json` when the task's last process is gone.
    fn finished(&self) -> bool {
        crate::supervisor::has_ended(&self.dir)
    }

    fn require_finished(&self) -> Result<()> {
        if !self.finished() {
            bail!(gettext_f(
                "task {id} is still running (it has not written {file}); review starts once it has ended",
                &[("id", self.manifest.id.as_str()), ("file", "exit.json")]
            ));
        }
        Ok(())
    }

    fn snapshot(&self, index: usize) -> Result<Option<Snapshot>> {
        let p = ws::snapshot::snapshot_path(&self.dir, index);
        if p.exists() {
            Ok(Some(Snapshot::load(&p)?))
        } else {
            Ok(None)
        }
    }

    /// Change sets of every read-write grant that has an upper layer.
    fn change_sets(&self) -> Result<Vec<(usize, ChangeSet, Option<Snapshot>)>> {
        let mut out = Vec::new();
        for layer in &self.manifest.rw_layers {
            let upper = self.dir.upper(layer.index);
            if !upper.exists() {
                continue;
            }
            let snap = self.snapshot(layer.index)?;
            let mut cs = ChangeSet::compute(&layer.path, &upper, snap.as_ref())?;
            cs.refuse_hidden(&self.manifest.policy.hidden_paths());
            out.push((layer.index, cs, snap));
        }
        Ok(out)
    }

    fn reviewed_path(&self) -> PathBuf {
        self.dir.path().join("reviewed.json")
    }

    fn load_reviewed(&self) -> Result<Reviewed> {
        let p = self.reviewed_path();
        match std::fs::read(&p) {
            Ok(d) => serde_json::from_slice(&d).with_context(|| escape_path(&p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Reviewed::default()),
            Err(e) => Err(crate::Error::io(&p, e).into()),
        }
    }

    /// Remembers the hashes of what was just shown, for the commit check.
    fn record_shown<'a>(&self, shown: impl IntoIterator<Item = (usize, &'a Change)>) -> Result<()> {
        let mut r = self.load_reviewed()?;
        // Keyed by (layer, path), the newest hash winning (a retain over
        // all entries per shown change made 200,000 changes take minutes).
        let mut by_path: std::collections::BTreeMap<(usize, Vec<u8>), String> = r
            .entries
            .drain(..)
            .map(|e| ((e.layer, e.path), e.sha256))
            .collect();
        for (layer, c) in shown {
            if let Some(h) = c.hash {
                by_path.insert((layer, c.path.clone()), hex(h));
            }
        }
        r.entries = by_path
            .into_iter()
            .map(|((layer, path), sha256)| ReviewedEntry {
                layer,
                path,
                sha256,
            })
            .collect();
        let data = serde_json::to_vec(&r)?;
        crate::dirs::write_atomic(&self.reviewed_path(), &data)?;
        Ok(())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Reviewed {
    entries: Vec<ReviewedEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ReviewedEntry {
    layer: usize,
    #[serde(with = "crate::workspace::changes::bytes")]
    path: Vec<u8>,
    sha256: String,
}

/// A path typed by the user: the real path (under a grant) or one relative
/// to the granted folder.
fn to_rel(grant: &Path, p: &Path) -> Option<Vec<u8>> {
    let rel = if p.is_absolute() {
        p.strip_prefix(grant).ok()?.to_path_buf()
    } else {
        p.to_path_buf()
    };
    let b = rel.as_os_str().as_bytes();
    let b = b.strip_suffix(b"/").unwrap_or(b);
    let b = b.strip_prefix(b"./").unwrap_or(b);
    Some(b.to_vec())
}

struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

fn kind_letter(c: &Change) -> &'static str {
    match c.kind {
        ChangeKind::Added => "A",
        ChangeKind::Modified => "M",
        ChangeKind::Deleted => "D",
        ChangeKind::TypeChanged => "T",
        ChangeKind::ModeChanged => "m",
        ChangeKind::Refused => "!",
    }
}

fn describe(c: &Change) -> String {
    let mut parts = Vec::new();
    if let (Some(b), Some(a)) = (&c.before, &c.after) {
        if b.kind != a.kind {
            parts.push(format!("{:?} → {:?}", b.kind, a.kind).to_lowercase());
        } else if b.perm != a.perm {
            parts.push(format!("{:o} → {:o}", b.perm, a.perm));
        }
    }
    if let Some(t) = c.after.as_ref().and_then(|a| a.target.as_ref()) {
        parts.push(format!("→ {}", escape(t)));
    }
    if c.deleted_entries > 0 {
        parts.push(gettext_f(
            "{n} entries inside",
            &[("n", &c.deleted_entries.to_string())],
        ));
    }
    parts.join(", ")
}

fn print_change(st: &Style, c: &Change) {
    let letter = kind_letter(c);
    let colour = match c.kind {
        ChangeKind::Added => "32",
        ChangeKind::Deleted => "31",
        ChangeKind::Refused => "35",
        _ => "33",
    };
    let mut line = format!("{} {}", st.paint(colour, letter), c.display());
    let d = describe(c);
    if !d.is_empty() {
        line.push_str(&format!("  ({d})"));
    }
    if c.conflict {
        line.push_str(&format!(
            "  {}",
            st.paint("1;31", &gettext("CONFLICT: changed by you meanwhile"))
        ));
    }
    for r in &c.risks {
        line.push_str(&format!(
            "  {}",
            st.paint("1;33", &format!("[{}]", r.describe()))
        ));
    }
    super::tell!("{line}");
}

pub fn changes(args: ChangesArgs) -> ExitCode {
    report(changes_inner(args))
}

fn changes_inner(args: ChangesArgs) -> Result<ExitCode> {
    let r = open(&args.task)?;
    r.require_finished()?;
    let sets = r.change_sets()?;
    r.record_shown(
        sets.iter()
            .flat_map(|(i, cs, _)| cs.changes.iter().map(move |c| (*i, c))),
    )?;
    if args.json {
        let mut out = Vec::new();
        for (_, cs, _) in &sets {
            let mut items = Vec::new();
            for c in &cs.changes {
                let mut v = serde_json::to_value(c)?;
                v["display"] = serde_json::Value::String(c.display());
                items.push(v);
            }
            out.push(serde_json::json!({ "grant": escape_path(&cs.grant), "changes": items }));
        }
        super::tell!(
            "{}",
            crate::audit::escape_json_for_terminal(&serde_json::to_string_pretty(&out)?)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let st = Style {
        on: std::io::stdout().is_terminal(),
    };
    let mut any = false;
    for (_, cs, _) in &sets {
        if cs.changes.is_empty() {
            continue;
        }
        any = true;
        super::tell!(
            "{}",
            gettext_f("In {path}:", &[("path", &escape_path(&cs.grant))])
        );
        for c in &cs.changes {
            print_change(&st, c);
        }
    }
    if !any {
        super::tell!("{}", gettext("No changes."));
    }
    Ok(ExitCode::SUCCESS)
}

/// One side of a file for the diff: all of it up to the diff's size cap,
/// only its first bytes above it (decided from its size before reading:
/// an agent's sparse file can claim gigabytes without using any disk),
/// and its size.
fn read_side(root: &Path, rel: &[u8]) -> Result<(Vec<u8>, u64)> {
    use std::io::Read;
    let fd = ws::fsx::open_dir_path(root).map_err(|e| crate::Error::io(root, e))?;
    let (parent, name) = ws::fsx::split_last(rel);
    let mut out = Vec::new();
    let size = ws::fsx::open_dir_at(&fd, parent)
        .and_then(|d| ws::fsx::open_file_at(std::os::fd::AsRawFd::as_raw_fd(&d), name))
        .and_then(|f| {
            let size = f.metadata()?.len();
            let want = if size > diff::SIZE_CAP {
                ws::content::HEAD as u64
            } else {
                // It may grow meanwhile: one byte more tells.
                diff::SIZE_CAP + 1
            };
            f.take(want).read_to_end(&mut out)?;
            Ok(size.max(out.len() as u64))
        })
        .map_err(|e| crate::Error::io(ws::fsx::rel_display(root, rel), e))?;
    Ok((out, size))
}

/// The diff of one change, when it has file content on either side.
pub fn file_diff(cs: &ChangeSet, c: &Change) -> Result<Option<FileDiff>> {
    let is_file = |n: Option<&ws::Node>| n.is_some_and(|n| n.kind == NodeKind::File);
    let before = is_file(c.before.as_ref());
    let after = is_file(c.after.as_ref());
    if !before && !after {
        return Ok(None);
    }
    let old = if before {
        Some(read_side(&cs.grant, &c.path)?)
    } else {
        None
    };
    let new = if after {
        Some(read_side(&cs.upper, &c.path)?)
    } else {
        None
    };
    fn side(s: &(Vec<u8>, u64)) -> diff::Side<'_> {
        diff::Side {
            bytes: &s.0,
            size: s.1,
        }
    }
    Ok(Some(diff::diff_sides(
        old.as_ref().map(side),
        new.as_ref().map(side),
    )))
}

/// How escapes (a real control character shown as `\r`, `\x1b`…) look on
/// a terminal, so they differ from the same characters typed as text.
const ESCAPE_STYLE: &str = "1;4;35";

/// A line's text as characters with their style (emphasis, escapes, the
/// line-end notes), so a line can be cut into rows without losing either.
/// How trailing spaces and tabs of a changed line look (see
/// [`styled_chars`]).
const TRAILING_STYLE: &str = "41";

/// The characters of `l` with their styles. With `mark_trailing`, the
/// spaces and tabs a changed line ends with are shown (`·`, `→`, on red
/// when coloured): a change made only of them, or text pushed past them,
/// must not read as an unchanged line.
fn styled_chars(
    l: &diff::Line,
    expand_tabs: bool,
    mark_trailing: bool,
) -> Vec<(char, &'static str)> {
    // The characters as they are, then where the trailing run begins.
    let mut chars: Vec<(char, &'static str)> = Vec::new();
    for seg in &l.segments {
        for (t, escaped) in names::escape_text_runs(&seg.text) {
            let style = if escaped {
                ESCAPE_STYLE
            } else if seg.emphasized {
                "7"
            } else {
                ""
            };
            chars.extend(t.chars().map(|c| (c, style)));
        }
    }
    let trailing_from = if mark_trailing && l.tag != Tag::Context {
        chars
            .iter()
            .rposition(|(c, _)| *c != ' ' && *c != '\t')
            .map_or(0, |i| i + 1)
    } else {
        chars.len()
    };
    let mut out = Vec::new();
    for (i, (c, style)) in chars.into_iter().enumerate() {
        let marked = i >= trailing_from;
        if c == '\t' && expand_tabs {
            // Columns must stay aligned.
            let n = 8 - out.len() % 8;
            if marked {
                out.push(('→', TRAILING_STYLE));
                out.extend(std::iter::repeat((' ', TRAILING_STYLE)).take(n - 1));
            } else {
                out.extend(std::iter::repeat((' ', style)).take(n));
            }
        } else if marked {
            out.push((if c == '\t' { '→' } else { '·' }, TRAILING_STYLE));
        } else {
            out.push((c, style));
        }
    }
    match l.ending.as_str() {
        "\r\n" => out.push(('␍', "2")),
        "" => out.extend(
            format!(" {}", gettext("(no newline at end)"))
                .chars()
                .map(|c| (c, "2")),
        ),
        _ => {}
    }
    out
}

fn render(st: &Style, chars: &[(char, &'static str)]) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < chars.len() {
        let style = chars[i].1;
        let run: String = chars[i..]
            .iter()
            .take_while(|c| c.1 == style)
            .map(|c| c.0)
            .collect();
        i += run.chars().count();
        s.push_str(&if style.is_empty() {
            run
        } else {
            st.paint(style, &run)
        });
    }
    s
}

fn line_text(st: &Style, l: &diff::Line) -> String {
    render(st, &styled_chars(l, false, true))
}

/// Width of one side of `diff --side-by-side`; longer lines continue on
/// the next rows, never cut.
const SIDE_WIDTH: usize = 60;

/// The rows of one side-by-side pair: both lines whole, wrapped.
fn side_rows(st: &Style, row: &diff::Row) -> Vec<String> {
    let cells = |l: &Option<diff::Line>| -> Vec<String> {
        let Some(l) = l else {
            return vec![format!("{:w$}", "", w = SIDE_WIDTH + 6)];
        };
        let no = l
            .old_no
            .or(l.new_no)
            .map(|n| n.to_string())
            .unwrap_or_default();
        let chars = styled_chars(l, true, true);
        let mut out = Vec::new();
        for (k, part) in chars.chunks(SIDE_WIDTH).enumerate() {
            let pad = " ".repeat(SIDE_WIDTH - part.len());
            let no = if k == 0 { no.as_str() } else { "↳" };
            out.push(format!("{no:>5} {}{pad}", render(st, part)));
        }
        if out.is_empty() {
            out.push(format!("{no:>5} {:w$}", "", w = SIDE_WIDTH));
        }
        out
    };
    let (left, right) = (cells(&row.left), cells(&row.right));
    let changed = row.left.as_ref().map(|l| l.tag) != Some(Tag::Context);
    let mark = if changed {
        st.paint("33", "|")
    } else {
        " ".into()
    };
    let blank = format!("{:w$}", "", w = SIDE_WIDTH + 6);
    let mut out: Vec<String> = (0..left.len().max(right.len()))
        .map(|k| {
            let l = left.get(k).unwrap_or(&blank);
            let r = right.get(k).unwrap_or(&blank);
            format!("{l} {mark} {r}").trim_end().to_string()
        })
        .collect();
    // A changed pair that reads the same (trailing spaces, bytes that are
    // not UTF-8): say so rather than show two equal lines.
    if let (true, Some(l), Some(r)) = (changed, &row.left, &row.right) {
        let plain = |l: &diff::Line| -> String {
            styled_chars(l, true, false).iter().map(|c| c.0).collect()
        };
        if plain(l).trim_end() == plain(r).trim_end() {
            out.push(format!(
                "{:>5} {}",
                "",
                st.paint(
                    "1;33",
                    &gettext("(these lines differ only in trailing spaces or in bytes that are not UTF-8)")
                )
            ));
        }
    }
    out
}

fn print_diff(st: &Style, d: &FileDiff, side: bool) {
    match d {
        FileDiff::Text {
            old,
            new,
            hunks,
            approximate,
        } => {
            if let (Some(o), Some(n)) = (old, new) {
                if o.endings != n.endings {
                    super::tell!(
                        "  {}",
                        gettext_f(
                            "line endings: {a} → {b}",
                            &[
                                ("a", &format!("{:?}", o.endings)),
                                ("b", &format!("{:?}", n.endings))
                            ]
                        )
                    );
                }
                if o.final_newline != n.final_newline {
                    super::tell!("  {}", gettext("final newline changed"));
                }
            }
            for (label, s) in [("before", old), ("after", new)] {
                if s.as_ref().is_some_and(|s| !s.utf8) {
                    super::tell!(
                        "  {}",
                        gettext_f(
                            "{side}: not UTF-8 text (shown with replacement characters)",
                            &[("side", label)]
                        )
                    );
                }
            }
            if *approximate {
                super::tell!(
                    "  {}",
                    gettext("(large diff shown coarsely; hunks cannot be picked one by one)")
                );
            }
            for h in hunks {
                super::tell!(
                    "{}",
                    st.paint(
                        "36",
                        &format!(
                            "@@ {} {} -{},{} +{},{} @@",
                            gettext("hunk"),
                            h.number,
                            h.old_start,
                            h.old_len,
                            h.new_start,
                            h.new_len
                        )
                    )
                );
                if side {
                    for row in h.side_by_side() {
                        for line in side_rows(st, &row) {
                            super::tell!("{line}");
                        }
                    }
                } else {
                    for l in &h.lines {
                        let (p, colour) = match l.tag {
                            Tag::Context => (" ", ""),
                            Tag::Delete => ("-", "31"),
                            Tag::Insert => ("+", "32"),
                        };
                        let text = format!("{p}{}", line_text(st, l));
                        super::tell!(
                            "{}",
                            if colour.is_empty() {
                                text
                            } else {
                                st.paint(colour, &text)
                            }
                        );
                    }
                }
            }
        }
        FileDiff::Binary { old, new } | FileDiff::TooLarge { old, new } => {
            let what = if matches!(d, FileDiff::Binary { .. }) {
                gettext("binary file")
            } else {
                gettext("large file, not diffed")
            };
            super::tell!("  {what}");
            for (label, s) in [("before", old), ("after", new)] {
                if let Some(s) = s {
                    match s.sha256 {
                        Some(h) => super::tell!(
                            "  {label}: {} bytes, {}, sha256 {}",
                            s.size,
                            s.type_guess,
                            hex(h)
                        ),
                        None => super::tell!("  {label}: {} bytes, {}", s.size, s.type_guess),
                    }
                }
            }
        }
    }
}

pub fn diff(args: DiffArgs) -> ExitCode {
    report(diff_inner(args))
}

fn diff_inner(args: DiffArgs) -> Result<ExitCode> {
    let r = open(&args.task)?;
    r.require_finished()?;
    let st = Style {
        on: std::io::stdout().is_terminal(),
    };
    let mut shown = Vec::new();
    let sets = r.change_sets()?;
    let mut found = args.path.is_none();
    for (i, cs, _) in &sets {
        let want = args.path.as_ref().and_then(|p| to_rel(&cs.grant, p));
        for c in &cs.changes {
            if let Some(w) = &want {
                if &c.path != w {
                    continue;
                }
                found = true;
            } else if args.path.is_some() {
                continue;
            }
            print_change(&st, c);
            if let Some(d) = file_diff(cs, c)? {
                print_diff(&st, &d, args.side_by_side);
            }
            shown.push((*i, c));
        }
    }
    if !found {
        bail!(gettext_f(
            "{path} is not among the task's changes",
            &[(
                "path",
                &args.path.as_deref().map(escape_path).unwrap_or_default()
            )]
        ));
    }
    r.record_shown(shown)?;
    Ok(ExitCode::SUCCESS)
}

fn parse_hunks(spec: &Path) -> Result<(PathBuf, BTreeSet<usize>)> {
    let b = spec.as_os_str().as_bytes();
    let i = b
        .iter()
        .rposition(|&c| c == b':')
        .ok_or_else(|| anyhow!(gettext("--hunks takes PATH:1,3")))?;
    let nums =
        std::str::from_utf8(&b[i + 1..]).map_err(|_| anyhow!(gettext("--hunks takes PATH:1,3")))?;
    let set = nums
        .split(',')
        .map(|n| n.trim().parse::<usize>())
        .collect::<Result<BTreeSet<_>, _>>()
        .map_err(|_| anyhow!(gettext_f("not a list of hunk numbers: {n}", &[("n", nums)])))?;
    Ok((PathBuf::from(std::ffi::OsStr::from_bytes(&b[..i])), set))
}

/// Ctrl+C, a closed terminal (SIGHUP) and SIGTERM wait until a commit or
/// an undo has finished and been logged, then take effect: cut off half-way
/// it would leave the user's folder half-committed until the next review
/// command rolls it back (pass 20B). Blocked, not ignored, so the signal
/// still ends the command afterwards; threads started meanwhile inherit the
/// mask. SIGKILL still cuts it off, and recovery handles that.
pub(crate) struct HeldSignals(Option<nix::sys::signal::SigSet>);

impl HeldSignals {
    pub(crate) fn new() -> HeldSignals {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            set.add(s);
        }
        let mut old = SigSet::empty();
        HeldSignals(
            pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
                .ok()
                .map(|()| old),
        )
    }
}

impl Drop for HeldSignals {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(old),
                None,
            );
        }
    }
}

pub fn commit(args: CommitArgs) -> ExitCode {
    report(commit_inner(args))
}

fn commit_inner(args: CommitArgs) -> Result<ExitCode> {
    let _held = HeldSignals::new();
    let r = open(&args.task)?;
    r.require_finished()?;
    let hunks = args
        .hunks
        .iter()
        .map(|h| parse_hunks(h))
        .collect::<Result<Vec<_>>>()?;
    let reviewed = r.load_reviewed()?;
    let sets = r.change_sets()?;
    // Each named path must be a change of some grant; a typo must never
    // quietly commit less (or, with several grants, fail half-way).
    let named = args.only.iter().chain(hunks.iter().map(|(p, _)| p));
    for p in named {
        let grants: Vec<&Path> = sets
            .iter()
            .filter(|(_, cs, _)| {
                to_rel(&cs.grant, p).is_some_and(|rel| {
                    let prefix = [rel.as_slice(), b"/"].concat();
                    cs.changes
                        .iter()
                        .any(|c| c.path == rel || c.path.starts_with(&prefix))
                })
            })
            .map(|(_, cs, _)| cs.grant.as_path())
            .collect();
        if grants.is_empty() {
            bail!(gettext_f(
                "{path} is not among the task's changes",
                &[("path", &escape_path(p))]
            ));
        }
        // A relative name is looked up in every grant: one that names a
        // change in two would commit both, though the user may have
        // looked at one (pass 19B).
        if grants.len() > 1 && p.is_relative() {
            bail!(gettext_f(
                "{path} is a change in more than one granted folder; name it by its full path, such as {full}",
                &[
                    ("path", &escape_path(p)),
                    ("full", &escape_path(&grants[0].join(p))),
                ]
            ));
        }
    }
    let mut conflicts = 0;
    // What the log records: each grant's commit, and whether anything was
    // left out (a selection, a conflict, a refused special file).
    let mut commits = Vec::new();
    let mut partial = !args.only.is_empty() || !hunks.is_empty();
    for (index, cs, snap) in sets {
        let known = |p: &Vec<u8>| {
            let prefix = [p.as_slice(), b"/"].concat();
            cs.changes
                .iter()
                .any(|c| &c.path == p || c.path.starts_with(&prefix))
        };
        let rel = |p: &PathBuf| to_rel(&cs.grant, p).filter(|r| known(r));
        let mut sel = if args.only.is_empty() && hunks.is_empty() {
            Selection::all()
        } else {
            Selection::only(args.only.iter().filter_map(rel))
        };
        for (p, h) in &hunks {
            if let Some(p) = rel(p) {
                sel = sel.with_hunks(p, h.clone());
            }
        }
        sel.keep_agent = args.keep_agent.iter().filter_map(rel).collect();
        let mut opts = CommitOptions::from_env();
        opts.reviewed = reviewed
            .entries
            .iter()
            .filter(|e| e.layer == index)
            .filter_map(|e| Some((e.path.clone(), unhex(&e.sha256)?)))
            .collect::<BTreeMap<_, _>>();
        let finished = || r.finished();
        let rep = ws::commit(&r.dir, index, &cs, &sel, snap.as_ref(), &finished, &opts)?;
        super::tell!(
            "{}",
            gettext_f(
                "{path}: {n} changes committed.",
                &[
                    ("path", &escape_path(&cs.grant)),
                    ("n", &rep.committed.len().to_string())
                ]
            )
        );
        for p in &rep.conflicts {
            super::tell!(
                "  {}",
                gettext_f(
                    "conflict, left as it is: {path} (commit it with --keep-agent to overwrite your version)",
                    &[("path", &escape(p))]
                )
            );
        }
        for p in &rep.refused {
            let why = cs
                .changes
                .iter()
                .find(|c| c.path == *p)
                .map_or(ws::risk::Risk::HiddenPath, ws::risk::refusal);
            super::tell!(
                "  {}",
                gettext_f(
                    "refused: {path} ({why})",
                    &[("path", &escape(p)), ("why", &why.describe())]
                )
            );
        }
        conflicts += rep.conflicts.len();
        partial |= !rep.conflicts.is_empty() || !rep.refused.is_empty();
        if !rep.committed.is_empty() || !rep.conflicts.is_empty() {
            commits.push(commit_entry(&rep));
        }
    }
    let to = if partial {
        TaskState::PartlyCommitted
    } else {
        TaskState::Committed
    };
    record_decision(&r.manifest.id, to, commits, false);
    Ok(if conflicts > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// One grant's commit as the audit log keeps it: files committed and in
/// conflict, and each file's decision.
fn commit_entry(rep: &ws::CommitReport) -> (u64, u64, Vec<CommitFile>) {
    let files = rep
        .committed
        .iter()
        .map(|p| (p, "approved"))
        .chain(rep.conflicts.iter().map(|p| (p, "conflict")))
        .map(|(p, d)| CommitFile {
            path: escape(p),
            decision: d.into(),
        })
        .collect();
    (
        rep.committed.len() as u64,
        rep.conflicts.len() as u64,
        files,
    )
}

/// Records a decision taken here in the audit log, as the app records its
/// own: each commit with its files, an undo, the task's new state. The
/// files are done by then, so a log that cannot be written is only said.
fn record_decision(
    id: &TaskId,
    to: TaskState,
    commits: Vec<(u64, u64, Vec<CommitFile>)>,
    undone: bool,
) {
    let result = (|| -> Result<(), crate::Error> {
        let path = crate::supervisor::Config::new()?.audit_path;
        let mut store = crate::audit::AuditStore::open(&path)?;
        let filter = crate::audit::Filter {
            task: Some(id.clone()),
            since_ms: None,
        };
        // A task the log never knew (its database was moved away): nothing
        // to bring up to date.
        let Some(rec) = store.tasks(&filter)?.into_iter().next() else {
            return Ok(());
        };
        let mut seq = crate::supervisor::next_seq(&store, id)?;
        for (files, conflicts, list) in commits {
            let outcome = if conflicts == 0 {
                "committed"
            } else {
                "partly_committed"
            };
            let kind = EventKind::Committed {
                files,
                conflicts,
                outcome: outcome.into(),
            };
            store.record_event(&crate::event::Event::new(id.clone(), seq, kind))?;
            store.record_commit_files(id, seq, &list)?;
            seq += 1;
        }
        if undone {
            let last = store
                .commits(id)?
                .into_iter()
                .rev()
                .find(|c| c.undone_ms.is_none());
            if let Some(c) = last {
                store.mark_commit_undone(id, c.seq, crate::event::now_ms())?;
            }
        }
        if rec.state != to {
            let kind = EventKind::StateChanged {
                from: Some(rec.state),
                to,
            };
            store.record_event(&crate::event::Event::new(id.clone(), seq, kind))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        crate::cli::say!(
            "airlock: {}",
            gettext_f(
                "the audit log was not brought up to date: {error}",
                &[("error", &e.to_string())]
            )
        );
    }
}

/// Makes a tree removable (overlay leaves `work/work` with mode 000).
pub fn reject(args: TaskArg) -> ExitCode {
    report(reject_inner(args))
}

fn reject_inner(args: TaskArg) -> Result<ExitCode> {
    let r = open(&args.task)?;
    r.require_finished()?;
    for layer in &r.manifest.rw_layers {
        for p in [r.dir.upper(layer.index), r.dir.work(layer.index)] {
            crate::workspace::fsx::remove_owned_tree(&p).map_err(|e| crate::Error::io(&p, e))?;
        }
    }
    let _ = std::fs::remove_file(r.reviewed_path());
    record_decision(&r.manifest.id, TaskState::Rejected, Vec::new(), false);
    super::tell!(
        "{}",
        gettext_f(
            "The changes of task {id} were discarded.",
            &[("id", r.manifest.id.as_str())]
        )
    );
    Ok(ExitCode::SUCCESS)
}

pub fn undo(args: TaskArg) -> ExitCode {
    report(undo_inner(args))
}

fn undo_inner(args: TaskArg) -> Result<ExitCode> {
    let _held = HeldSignals::new();
    let r = open(&args.task)?;
    let finished = || r.finished();
    let stop = CommitOptions::from_env().stop_after;
    let rep = ws::undo::undo(&r.dir, &finished, stop)?;
    record_decision(&r.manifest.id, TaskState::Reviewing, Vec::new(), true);
    super::tell!(
        "{}",
        gettext_f(
            "Commit {seq} undone: {n} paths restored.",
            &[
                ("seq", &rep.undone.to_string()),
                ("n", &rep.restored.len().to_string())
            ]
        )
    );
    for p in &rep.lost {
        super::tell!(
            "  {}",
            gettext_f(
                "not brought back (a socket, pipe or device is never copied): {path}",
                &[("path", &escape(p))]
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn report(r: Result<ExitCode>) -> ExitCode {
    match r {
        Ok(c) => c,
        Err(e) => {
            super::say!("airlock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Folders committed though not approved (new folders the user skipped),
/// each with an approved path inside that needed it: the count of
/// committed changes includes them, so the review says why.
fn created_for<'a>(
    committed: &'a [Vec<u8>],
    wanted: &'a BTreeSet<Vec<u8>>,
) -> Vec<(&'a [u8], &'a [u8])> {
    committed
        .iter()
        .filter(|p| !wanted.contains(*p))
        .filter_map(|dir| {
            let prefix = [dir.as_slice(), b"/"].concat();
            let by = wanted.iter().find(|p| p.starts_with(&prefix))?;
            Some((dir.as_slice(), by.as_slice()))
        })
        .collect()
}

/// The terminal review `airlock run --review` ends with: each change is
/// shown and the user approves, skips, looks at the diff, or quits (which
/// commits nothing). Approved changes are committed at the end.
pub fn interactive_review(task_dir: &TaskDir) -> Result<()> {
    let manifest = task_dir.read_manifest()?;
    recover_commit(task_dir)?;
    let r = Review {
        dir: task_dir.clone(),
        manifest,
    };
    r.require_finished()?;
    let st = Style {
        on: std::io::stdout().is_terminal(),
    };
    // SAFETY: our own stdin (a terminal: checked by the caller), open for
    // the process's life.
    let stdin = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
    let mut commits = Vec::new();
    let mut partial = false;
    // Grant by grant: whatever ends the review (the user quits, an error
    // in a later grant), what was committed before is logged (pass 19B: an
    // earlier grant's commit went unrecorded).
    let mut each = || -> Result<bool> {
        for (index, cs, snap) in r.change_sets()? {
            if cs.changes.is_empty() {
                continue;
            }
            super::tell!(
                "{}",
                gettext_f("In {path}:", &[("path", &escape_path(&cs.grant))])
            );
            let mut approved = Vec::new();
            let mut keep = BTreeSet::new();
            let mut shown = Vec::new();
            for c in cs.changes.iter().filter(|c| c.kind != ChangeKind::Refused) {
                loop {
                    print_change(&st, c);
                    let prompt = if c.conflict {
                        gettext(
                        "[a]pprove anyway (keep the agent's version) / [s]kip / [d]iff / [q]uit? ",
                    )
                    } else {
                        gettext("[a]pprove / [s]kip / [d]iff / [q]uit? ")
                    };
                    {
                        let _ = write!(std::io::stdout(), "{prompt}");
                    }
                    let _ = std::io::stdout().flush();
                    // Only keys typed after the question count: the agent may
                    // have asked for "a" itself while it ran.
                    let Some(answer) =
                        super::terminal::answer(stdin, &mut std::io::stdout(), &prompt, None, None)
                    else {
                        super::tell!();
                        return Ok(true);
                    };
                    match answer.trim() {
                        "a" | "A" => {
                            approved.push(c.path.clone());
                            if c.conflict {
                                keep.insert(c.path.clone());
                            }
                            shown.push((index, c));
                            break;
                        }
                        "s" | "S" => break,
                        "d" | "D" => {
                            if let Some(d) = file_diff(&cs, c)? {
                                print_diff(&st, &d, false);
                            }
                        }
                        "q" | "Q" => return Ok(true),
                        _ => {}
                    }
                }
            }
            r.record_shown(shown)?;
            let reviewable = cs
                .changes
                .iter()
                .filter(|c| c.kind != ChangeKind::Refused)
                .count();
            partial |= approved.len() < reviewable;
            if approved.is_empty() {
                continue;
            }
            let wanted: BTreeSet<Vec<u8>> = approved.iter().cloned().collect();
            let mut sel = Selection::exactly(approved);
            sel.keep_agent = keep;
            let finished = || r.finished();
            let rep = ws::commit(
                &r.dir,
                index,
                &cs,
                &sel,
                snap.as_ref(),
                &finished,
                // The user's umask for what the commit creates, as for
                // `airlock commit`.
                &CommitOptions::from_env(),
            )?;
            super::tell!(
                "{}",
                gettext_f(
                    "{n} changes committed.",
                    &[("n", &rep.committed.len().to_string())]
                )
            );
            for (dir, by) in created_for(&rep.committed, &wanted) {
                super::tell!(
                    "  {}",
                    gettext_f(
                        "also created {dir}/, needed by {path}",
                        &[("dir", &escape(dir)), ("path", &escape(by))]
                    )
                );
            }
            for p in &rep.conflicts {
                super::tell!(
                    "  {}",
                    gettext_f("conflict, left as it is: {path}", &[("path", &escape(p))])
                );
            }
            partial |= !rep.conflicts.is_empty();
            commits.push(commit_entry(&rep));
        }
        Ok(false)
    };
    let outcome = each();
    let any = !commits.is_empty();
    if any {
        let to = if partial || !matches!(outcome, Ok(false)) {
            TaskState::PartlyCommitted
        } else {
            TaskState::Committed
        };
        record_decision(&r.manifest.id, to, commits, false);
    }
    if outcome? {
        super::tell!(
            "{}",
            if any {
                gettext("Nothing more was committed.")
            } else {
                gettext("Nothing was committed.")
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> diff::Line {
        diff::Line {
            tag: Tag::Insert,
            old_no: None,
            new_no: Some(1),
            segments: vec![diff::Segment {
                text: text.into(),
                emphasized: false,
            }],
            ending: "\n".into(),
        }
    }

    #[test]
    fn trailing_spaces_and_tabs_of_a_changed_line_are_shown() {
        let off = Style { on: false };
        let plain = |chars: Vec<(char, &str)>| -> String { chars.iter().map(|c| c.0).collect() };
        assert_eq!(line_text(&off, &line("a  \t ")), "a··→·");
        // Expanded for side by side: the tab keeps its columns.
        assert_eq!(plain(styled_chars(&line("a  \t"), true, true)), "a··→    ");
        assert_eq!(plain(styled_chars(&line(" \t "), true, true)), "·→      ·");
        // Inner spaces, unchanged lines and the comparison view: as they are.
        assert_eq!(line_text(&off, &line("a b")), "a b");
        let mut context = line("a  ");
        context.tag = Tag::Context;
        assert_eq!(line_text(&off, &context), "a  ");
        assert_eq!(plain(styled_chars(&line("a  "), true, false)), "a  ");
    }

    #[test]
    fn a_real_control_character_looks_unlike_its_spelling() {
        let on = Style { on: true };
        // The two characters `\r`, then a real CR.
        let t = line_text(&on, &line("a\\r\rb"));
        assert_eq!(t, format!("a\\r\x1b[{ESCAPE_STYLE}m\\r\x1b[0mb"));
        let off = Style { on: false };
        assert_eq!(line_text(&off, &line("a\\r\rb")), "a\\r\\rb");
    }

    #[test]
    fn side_by_side_wraps_and_never_cuts() {
        let st = Style { on: false };
        let long: String = (0..150)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let row = diff::Row {
            left: None,
            right: Some(line(&long)),
        };
        let rows = side_rows(&st, &row);
        assert_eq!(rows.len(), 3);
        let shown: String = rows
            .iter()
            .map(|r| {
                r.rsplit("    ")
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches(['↳', ' ', '1'])
            })
            .collect();
        assert_eq!(shown, long);
    }

    #[test]
    fn skipped_folders_created_for_an_approved_path_are_named() {
        let committed = vec![b"nd".to_vec(), b"nd/sub".to_vec(), b"x".to_vec()];
        let wanted: BTreeSet<Vec<u8>> = [b"nd/sub".to_vec(), b"x".to_vec()].into();
        assert_eq!(
            created_for(&committed, &wanted),
            vec![(&b"nd"[..], &b"nd/sub"[..])]
        );
    }
}
