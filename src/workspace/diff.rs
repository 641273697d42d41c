//! Diffs for review: line diffs with hunks and inline word highlights,
//! side-by-side rows for the window, binary and oversized files summarised,
//! non-UTF-8 text and line-ending changes made visible.
//!
//! Hunk numbering comes from [`line_hunks`], which [`super::select`] uses
//! too, so "hunk 3" in the diff is hunk 3 of the merge.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use similar::{Algorithm, ChangeTag, DiffOp};

/// Lines of context around each hunk.
pub const CONTEXT: usize = 3;
/// Files above this size are summarised, not diffed (still committable).
pub const SIZE_CAP: u64 = 8 << 20;
/// Longest a line diff may take before it settles for a coarser result.
const DEADLINE: Duration = Duration::from_secs(5);
/// Time for the word-level marks of one file's changed lines, in all.
const INLINE_BUDGET: Duration = Duration::from_secs(1);

/// How the lines of a text end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineEndings {
    None,
    Lf,
    CrLf,
    Mixed,
}

/// What is known about one side of a text diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextSide {
    pub utf8: bool,
    pub endings: LineEndings,
    pub final_newline: bool,
    pub lines: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    Context,
    Delete,
    Insert,
}

/// A run of text inside a line; `emphasized` runs are what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub text: String,
    pub emphasized: bool,
}

/// One line of a hunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub tag: Tag,
    pub old_no: Option<usize>,
    pub new_no: Option<usize>,
    pub segments: Vec<Segment>,
    /// `"\n"`, `"\r\n"` or `""` (last line without newline).
    pub ending: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hunk {
    /// 1-based number, as `--hunks PATH:1,3` takes it.
    pub number: usize,
    pub old_start: usize,
    pub old_len: usize,
    pub new_start: usize,
    pub new_len: usize,
    pub lines: Vec<Line>,
}

/// One row of a side-by-side view: before on the left, after on the right.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub left: Option<Line>,
    pub right: Option<Line>,
}

impl Hunk {
    /// Pairs deletions with the insertions that replace them.
    pub fn side_by_side(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let mut dels: Vec<Line> = Vec::new();
        let mut ins: Vec<Line> = Vec::new();
        let flush = |rows: &mut Vec<Row>, dels: &mut Vec<Line>, ins: &mut Vec<Line>| {
            let n = dels.len().max(ins.len());
            let mut d = dels.drain(..);
            let mut i = ins.drain(..);
            for _ in 0..n {
                rows.push(Row {
                    left: d.next(),
                    right: i.next(),
                });
            }
        };
        for l in &self.lines {
            match l.tag {
                Tag::Delete => dels.push(l.clone()),
                Tag::Insert => ins.push(l.clone()),
                Tag::Context => {
                    flush(&mut rows, &mut dels, &mut ins);
                    rows.push(Row {
                        left: Some(l.clone()),
                        right: Some(l.clone()),
                    });
                }
            }
        }
        flush(&mut rows, &mut dels, &mut ins);
        rows
    }
}

/// A summary of a file that is not diffed line by line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub size: u64,
    pub type_guess: String,
    #[serde(with = "super::changes::hex_opt")]
    pub sha256: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FileDiff {
    Text {
        old: Option<TextSide>,
        new: Option<TextSide>,
        hunks: Vec<Hunk>,
        /// The diff hit its deadline and is coarser than it could be;
        /// hunks of such a file cannot be picked one by one.
        approximate: bool,
    },
    Binary {
        old: Option<Summary>,
        new: Option<Summary>,
    },
    /// Above [`SIZE_CAP`]: summarised; committable as a whole.
    TooLarge {
        old: Option<Summary>,
        new: Option<Summary>,
    },
}

/// Splits after each `\n`, keeping the terminators, so joining the lines
/// gives back the exact bytes.
pub fn split_lines(b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            out.push(&b[start..=i]);
            start = i + 1;
        }
    }
    if start < b.len() {
        out.push(&b[start..]);
    }
    out
}

/// The hunks of a line diff, as groups of indices into the op list.
pub struct LineHunks<'a> {
    pub old: Vec<&'a [u8]>,
    pub new: Vec<&'a [u8]>,
    pub ops: Vec<DiffOp>,
    /// For each hunk, the indices of its non-equal ops.
    pub hunks: Vec<Vec<usize>>,
    pub approximate: bool,
}

/// The line diff of `old` → `new` and its hunks (changes closer than
/// two contexts are merged into one hunk).
pub fn line_hunks<'a>(old: &'a [u8], new: &'a [u8]) -> LineHunks<'a> {
    let ol = split_lines(old);
    let nl = split_lines(new);
    let deadline = Instant::now() + DEADLINE;
    let ops = similar::capture_diff_slices_deadline(Algorithm::Myers, &ol, &nl, Some(deadline));
    let approximate = Instant::now() >= deadline;
    let mut hunks: Vec<Vec<usize>> = Vec::new();
    let mut gap_since_last: Option<usize> = None;
    for (i, op) in ops.iter().enumerate() {
        match op {
            DiffOp::Equal { len, .. } => {
                if let Some(g) = gap_since_last.as_mut() {
                    *g += len;
                }
            }
            _ => {
                match gap_since_last {
                    Some(g) if g <= 2 * CONTEXT => {
                        if let Some(h) = hunks.last_mut() {
                            h.push(i);
                        }
                    }
                    _ => hunks.push(vec![i]),
                }
                gap_since_last = Some(0);
            }
        }
    }
    LineHunks {
        old: ol,
        new: nl,
        ops,
        hunks,
        approximate,
    }
}

fn text_side(b: &[u8]) -> TextSide {
    let lines = split_lines(b);
    let crlf = lines.iter().filter(|l| l.ends_with(b"\r\n")).count();
    let lf = lines.iter().filter(|l| l.ends_with(b"\n")).count() - crlf;
    let endings = match (lf, crlf) {
        (0, 0) => LineEndings::None,
        (_, 0) => LineEndings::Lf,
        (0, _) => LineEndings::CrLf,
        _ => LineEndings::Mixed,
    };
    TextSide {
        utf8: std::str::from_utf8(b).is_ok(),
        endings,
        final_newline: b.is_empty() || b.ends_with(b"\n"),
        lines: lines.len(),
    }
}

/// Whether the first bytes of a file make it binary: a NUL among them,
/// unless it starts with `#!` (a shell ignores a NUL after the first line,
/// so a script with one must still be read as text).
pub fn looks_binary(b: &[u8]) -> bool {
    !b.starts_with(b"#!") && b[..b.len().min(super::content::HEAD)].contains(&0)
}

/// Whether a change is diffed as text (NULs and other controls shown as
/// escapes): unless every side that exists looks binary. A file that was
/// text stays text, whatever the agent wrote into it.
pub fn shown_as_text(old: Option<&[u8]>, new: Option<&[u8]>) -> bool {
    let sides = [old, new];
    let mut present = sides.iter().flatten().peekable();
    present.peek().is_none() || present.any(|b| !looks_binary(b))
}

/// A guess at a binary file's type from its first bytes.
pub fn type_guess(b: &[u8]) -> &'static str {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "PNG image"),
        (b"\xff\xd8\xff", "JPEG image"),
        (b"GIF8", "GIF image"),
        (b"%PDF-", "PDF document"),
        (b"PK\x03\x04", "ZIP archive (or office document, jar)"),
        (b"\x1f\x8b", "gzip data"),
        (b"\x7fELF", "ELF executable"),
        (b"MZ", "Windows executable"),
        (b"SQLite format 3\0", "SQLite database"),
        (b"\0asm", "WebAssembly"),
        (b"BZh", "bzip2 data"),
        (b"\xfd7zXZ\0", "xz data"),
        (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
        (b"\x28\xb5\x2f\xfd", "zstd data"),
        (b"RIFF", "RIFF media (WAV, AVI, WebP)"),
        (b"OggS", "Ogg media"),
        (b"fLaC", "FLAC audio"),
        (b"ID3", "MP3 audio"),
        (b"#!", "script"),
    ];
    MAGIC
        .iter()
        .find(|(m, _)| b.starts_with(m))
        .map(|(_, t)| *t)
        .unwrap_or("data")
}

fn summary(b: &[u8]) -> Summary {
    Summary {
        size: b.len() as u64,
        type_guess: type_guess(b).to_string(),
        sha256: super::snapshot::hash_reader(b).ok(),
    }
}

fn split_ending(l: &[u8]) -> (&[u8], &'static str) {
    if let Some(x) = l.strip_suffix(b"\r\n") {
        (x, "\r\n")
    } else if let Some(x) = l.strip_suffix(b"\n") {
        (x, "\n")
    } else {
        (l, "")
    }
}

fn plain_line(tag: Tag, old_no: Option<usize>, new_no: Option<usize>, l: &[u8]) -> Line {
    let (body, ending) = split_ending(l);
    Line {
        tag,
        old_no,
        new_no,
        segments: vec![Segment {
            text: String::from_utf8_lossy(body).into_owned(),
            emphasized: false,
        }],
        ending: ending.to_string(),
    }
}

/// Word-level highlights of an old/new line pair.
fn inline(old: &[u8], new: &[u8], until: Instant) -> (Vec<Segment>, Vec<Segment>) {
    let a = String::from_utf8_lossy(old);
    let b = String::from_utf8_lossy(new);
    if a.len() > 2000 || b.len() > 2000 || Instant::now() >= until {
        let whole = |s: &str| {
            vec![Segment {
                text: s.to_string(),
                emphasized: true,
            }]
        };
        return (whole(&a), whole(&b));
    }
    let d = similar::TextDiff::configure()
        .algorithm(Algorithm::Myers)
        .deadline(until)
        .diff_unicode_words(a.as_ref(), b.as_ref());
    let (mut l, mut r): (Vec<Segment>, Vec<Segment>) = (Vec::new(), Vec::new());
    let push = |v: &mut Vec<Segment>, t: &str, e: bool| match v.last_mut() {
        Some(s) if s.emphasized == e => s.text.push_str(t),
        _ => v.push(Segment {
            text: t.to_string(),
            emphasized: e,
        }),
    };
    for c in d.iter_all_changes() {
        match c.tag() {
            ChangeTag::Equal => {
                push(&mut l, c.value(), false);
                push(&mut r, c.value(), false);
            }
            ChangeTag::Delete => push(&mut l, c.value(), true),
            ChangeTag::Insert => push(&mut r, c.value(), true),
        }
    }
    (l, r)
}

/// One side of a file to diff: its first bytes (all of them up to
/// [`SIZE_CAP`]) and its real size.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub bytes: &'a [u8],
    pub size: u64,
}

impl<'a> Side<'a> {
    pub fn whole(bytes: &'a [u8]) -> Side<'a> {
        Side {
            bytes,
            size: bytes.len() as u64,
        }
    }
}

/// The diff of one file. `old`/`new` are `None` when the file does not
/// exist on that side.
pub fn diff_files(old: Option<&[u8]>, new: Option<&[u8]>) -> FileDiff {
    diff_sides(old.map(Side::whole), new.map(Side::whole))
}

/// [`diff_files`] for sides that may have been read only in part: a side
/// above [`SIZE_CAP`] is summarised from its size and first bytes (its
/// hash is not computed: that would read it all).
pub fn diff_sides(old: Option<Side>, new: Option<Side>) -> FileDiff {
    let too_large = |s: Option<Side>| s.is_some_and(|s| s.size > SIZE_CAP);
    if too_large(old) || too_large(new) {
        let sum = |s: Side| Summary {
            size: s.size,
            type_guess: type_guess(s.bytes).to_string(),
            sha256: (s.size <= SIZE_CAP)
                .then(|| super::snapshot::hash_reader(s.bytes).ok())
                .flatten(),
        };
        return FileDiff::TooLarge {
            old: old.map(sum),
            new: new.map(sum),
        };
    }
    let (old, new) = (old.map(|s| s.bytes), new.map(|s| s.bytes));
    if !shown_as_text(old, new) {
        return FileDiff::Binary {
            old: old.map(summary),
            new: new.map(summary),
        };
    }
    let o = old.unwrap_or(b"");
    let n = new.unwrap_or(b"");
    let lh = line_hunks(o, n);
    // Word-level marks of changed lines share one time budget per file: a
    // file of thousands of lines rewritten into words that match nowhere
    // took Myers 12 to 33 s (pass 19B). Past it, changed lines are marked
    // whole, as lines too long to compare are.
    let inline_until = Instant::now() + INLINE_BUDGET;
    let mut hunks = Vec::new();
    for (hi, ids) in lh.hunks.iter().enumerate() {
        let first = ids[0];
        let last = *ids.last().unwrap_or(&first);
        let (o0, n0) = (
            lh.ops[first].old_range().start,
            lh.ops[first].new_range().start,
        );
        let (o1, n1) = (lh.ops[last].old_range().end, lh.ops[last].new_range().end);
        // Context before and after, clipped to the file.
        let cb = CONTEXT.min(o0).min(n0);
        let ca = CONTEXT.min(lh.old.len() - o1).min(lh.new.len() - n1);
        let mut lines = Vec::new();
        for k in 0..cb {
            let (oi, ni) = (o0 - cb + k, n0 - cb + k);
            lines.push(plain_line(
                Tag::Context,
                Some(oi + 1),
                Some(ni + 1),
                lh.old[oi],
            ));
        }
        for op in &lh.ops[first..=last] {
            match *op {
                DiffOp::Equal {
                    old_index,
                    new_index,
                    len,
                } => {
                    for k in 0..len {
                        lines.push(plain_line(
                            Tag::Context,
                            Some(old_index + k + 1),
                            Some(new_index + k + 1),
                            lh.old[old_index + k],
                        ));
                    }
                }
                DiffOp::Delete {
                    old_index, old_len, ..
                } => {
                    for k in 0..old_len {
                        lines.push(plain_line(
                            Tag::Delete,
                            Some(old_index + k + 1),
                            None,
                            lh.old[old_index + k],
                        ));
                    }
                }
                DiffOp::Insert {
                    new_index, new_len, ..
                } => {
                    for k in 0..new_len {
                        lines.push(plain_line(
                            Tag::Insert,
                            None,
                            Some(new_index + k + 1),
                            lh.new[new_index + k],
                        ));
                    }
                }
                DiffOp::Replace {
                    old_index,
                    old_len,
                    new_index,
                    new_len,
                } => {
                    let mut dels = Vec::new();
                    let mut ins = Vec::new();
                    for k in 0..old_len.max(new_len) {
                        let ol = (k < old_len).then(|| lh.old[old_index + k]);
                        let nl = (k < new_len).then(|| lh.new[new_index + k]);
                        match (ol, nl) {
                            (Some(a), Some(b)) => {
                                let (sa, ea) = split_ending(a);
                                let (sb, eb) = split_ending(b);
                                let (la, lb) = inline(sa, sb, inline_until);
                                dels.push(Line {
                                    tag: Tag::Delete,
                                    old_no: Some(old_index + k + 1),
                                    new_no: None,
                                    segments: la,
                                    ending: ea.into(),
                                });
                                ins.push(Line {
                                    tag: Tag::Insert,
                                    old_no: None,
                                    new_no: Some(new_index + k + 1),
                                    segments: lb,
                                    ending: eb.into(),
                                });
                            }
                            (Some(a), None) => {
                                dels.push(plain_line(Tag::Delete, Some(old_index + k + 1), None, a))
                            }
                            (None, Some(b)) => {
                                ins.push(plain_line(Tag::Insert, None, Some(new_index + k + 1), b))
                            }
                            (None, None) => {}
                        }
                    }
                    lines.extend(dels);
                    lines.extend(ins);
                }
            }
        }
        for k in 0..ca {
            let (oi, ni) = (o1 + k, n1 + k);
            lines.push(plain_line(
                Tag::Context,
                Some(oi + 1),
                Some(ni + 1),
                lh.old[oi],
            ));
        }
        hunks.push(Hunk {
            number: hi + 1,
            old_start: o0 - cb + 1,
            old_len: o1 + ca - (o0 - cb),
            new_start: n0 - cb + 1,
            new_len: n1 + ca - (n0 - cb),
            lines,
        });
    }
    FileDiff::Text {
        old: old.map(text_side),
        new: new.map(text_side),
        hunks,
        approximate: lh.approximate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_marks_past_their_budget_mark_the_whole_line() {
        let later = Instant::now() + Duration::from_secs(60);
        let (l, _) = inline(b"alpha beta gamma", b"alpha BETA gamma", later);
        assert!(l.iter().any(|s| !s.emphasized), "{l:?}");
        let (l, r) = inline(b"alpha beta gamma", b"alpha BETA gamma", Instant::now());
        assert_eq!(l.len(), 1);
        assert!(l[0].emphasized && r[0].emphasized);
        assert_eq!(r[0].text, "alpha BETA gamma");
    }

    #[test]
    fn hunks_context_and_inline() {
        let old: Vec<u8> = (1..=30)
            .map(|i| format!("line {i}\n"))
            .collect::<String>()
            .into_bytes();
        let mut new = old.clone();
        new.splice(0..6, b"LINE 1\n".iter().copied());
        let new = [new, b"tail".to_vec()].concat();
        let FileDiff::Text {
            hunks,
            new: Some(ns),
            ..
        } = diff_files(Some(&old), Some(&new))
        else {
            panic!("text expected")
        };
        assert_eq!(hunks.len(), 2);
        assert!(!ns.final_newline);
        let del = &hunks[0].lines[0];
        assert_eq!(del.tag, Tag::Delete);
        assert!(del
            .segments
            .iter()
            .any(|s| s.emphasized && s.text == "line"));
        assert_eq!(hunks[1].lines.last().map(|l| l.ending.as_str()), Some(""));
        let rows = hunks[0].side_by_side();
        assert!(rows[0].left.is_some() && rows[0].right.is_some());
    }

    #[test]
    fn line_endings_binary_and_non_utf8() {
        let FileDiff::Text {
            old: Some(o),
            new: Some(n),
            hunks,
            ..
        } = diff_files(Some(b"a\nb\n"), Some(b"a\r\nb\r\n"))
        else {
            panic!()
        };
        assert_eq!((o.endings, n.endings), (LineEndings::Lf, LineEndings::CrLf));
        assert_eq!(
            hunks[0].lines.iter().filter(|l| l.ending == "\r\n").count(),
            2
        );
        assert!(
            matches!(diff_files(None, Some(b"\x89PNG\r\n\x1a\n\0\0")), FileDiff::Binary { new: Some(Summary { ref type_guess, .. }), .. } if type_guess == "PNG image")
        );
        let FileDiff::Text { new: Some(n), .. } = diff_files(None, Some(b"caf\xe9\n")) else {
            panic!()
        };
        assert!(!n.utf8);
    }

    #[test]
    fn scripts_and_former_text_stay_text_and_size_decides_too_large() {
        // A NUL after a shebang, or in a file that was text: still text.
        assert!(matches!(
            diff_files(None, Some(b"#!/bin/sh\n# \0\ntouch x\n")),
            FileDiff::Text { .. }
        ));
        assert!(matches!(
            diff_files(Some(b"notes\n"), Some(b"notes\0x\n")),
            FileDiff::Text { .. }
        ));
        assert!(matches!(
            diff_files(Some(b"\0old"), Some(b"\0new")),
            FileDiff::Binary { .. }
        ));
        // Only the first bytes were read: the size says it is too large.
        let d = diff_sides(
            None,
            Some(Side {
                bytes: b"#!/bin/sh\n",
                size: 8 << 30,
            }),
        );
        let FileDiff::TooLarge { new: Some(n), .. } = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            (n.size, n.sha256, n.type_guess.as_str()),
            (8 << 30, None, "script")
        );
    }
}
