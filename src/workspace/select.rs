//! What the user approved: all changes, some files, or some hunks of a
//! file, and which conflicts they resolved with "keep the agent's version".

use std::collections::{BTreeMap, BTreeSet};

use similar::DiffOp;

use super::changes::{Change, ChangeKind, ChangeSet, NodeKind};
use super::diff;
use crate::Error;

/// How much of one changed path is approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChoice {
    /// The whole change (and, for a folder, everything beneath it).
    Whole,
    /// These hunks (1-based, as shown by the diff) of a modified text file.
    Hunks(BTreeSet<usize>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// `None`: everything. Otherwise the approved paths.
    pub files: Option<BTreeMap<Vec<u8>, FileChoice>>,
    /// Conflicting paths where the user chose the agent's version.
    pub keep_agent: BTreeSet<Vec<u8>>,
    /// Whether approving a folder approves everything beneath it (true
    /// for `--only`; false when each path was answered one by one).
    pub exact: bool,
}

impl Selection {
    pub fn all() -> Selection {
        Selection::default()
    }

    /// Approves `paths` whole (folders with all they hold).
    pub fn only<I: IntoIterator<Item = Vec<u8>>>(paths: I) -> Selection {
        Selection {
            files: Some(paths.into_iter().map(|p| (p, FileChoice::Whole)).collect()),
            keep_agent: BTreeSet::new(),
            exact: false,
        }
    }

    /// Approves exactly `paths`: a folder brings only itself (and the
    /// folders above it that must be created), not what is beneath.
    pub fn exactly<I: IntoIterator<Item = Vec<u8>>>(paths: I) -> Selection {
        Selection {
            exact: true,
            ..Selection::only(paths)
        }
    }

    /// Adds a hunk choice for one file.
    pub fn with_hunks(mut self, path: Vec<u8>, hunks: BTreeSet<usize>) -> Selection {
        self.files
            .get_or_insert_with(BTreeMap::new)
            .insert(path, FileChoice::Hunks(hunks));
        self
    }

    /// The choice for `c`: its own entry, or a whole-folder entry above it.
    pub fn choice(&self, c: &Change) -> Option<FileChoice> {
        let Some(files) = &self.files else {
            return Some(FileChoice::Whole);
        };
        if let Some(ch) = files.get(&c.path) {
            return Some(ch.clone());
        }
        if self.exact {
            return None;
        }
        let mut p: &[u8] = &c.path;
        while let Some(i) = p.iter().rposition(|&b| b == b'/') {
            p = &p[..i];
            if files.get(p) == Some(&FileChoice::Whole) {
                return Some(FileChoice::Whole);
            }
        }
        None
    }

    /// Checks that every named path is a change of `cs` and every hunk
    /// number exists, so a typo never silently commits less.
    pub fn validate(&self, cs: &ChangeSet) -> Result<(), Error> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        for (p, ch) in files {
            let prefix = [p.as_slice(), b"/"].concat();
            let known =
                cs.get(p).is_some() || cs.changes.iter().any(|c| c.path.starts_with(&prefix));
            if !known {
                return Err(Error::Invalid(crate::i18n::gettext_f(
                    "{path} is not among the task's changes",
                    &[("path", &super::names::escape(p))],
                )));
            }
            // A path inside a folder the agent made where the user had a
            // file: committing it needs that folder, which deletes the
            // user's file. Only when the user names the folder too.
            let mut a: &[u8] = p;
            while let Some(k) = a.iter().rposition(|&b| b == b'/') {
                a = &a[..k];
                let replaces_file = cs.get(a).is_some_and(|c| {
                    c.kind == ChangeKind::TypeChanged
                        && c.before.as_ref().is_some_and(|b| b.kind != NodeKind::Dir)
                });
                if replaces_file && !files.contains_key(a) {
                    return Err(Error::Invalid(crate::i18n::gettext_f(
                        "{path} is in {folder}, which the agent made a folder in place of your file: name {folder} too to replace that file, or leave {path} out",
                        &[
                            ("path", &super::names::escape(p)),
                            ("folder", &super::names::escape(a)),
                        ],
                    )));
                }
            }
            if let FileChoice::Hunks(h) = ch {
                let c = cs.get(p).filter(|c| {
                    c.kind == ChangeKind::Modified
                        && c.after.as_ref().is_some_and(|a| a.kind == NodeKind::File)
                });
                if c.is_none() || h.is_empty() || h.contains(&0) {
                    return Err(Error::Invalid(crate::i18n::gettext_f(
                        "hunks can only be chosen (numbered from 1) in a modified file: {path}",
                        &[("path", &super::names::escape(p))],
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The selected changes of `cs` in path order, plus the folders they need
/// (an approved file inside a new folder brings that folder along).
pub fn selected<'a>(cs: &'a ChangeSet, sel: &Selection) -> Vec<(&'a Change, FileChoice)> {
    let mut picked: BTreeMap<usize, FileChoice> = BTreeMap::new();
    for (i, c) in cs.changes.iter().enumerate() {
        if c.kind == ChangeKind::Refused {
            continue;
        }
        if let Some(ch) = sel.choice(c) {
            picked.insert(i, ch);
            // Ancestors that create a folder must come along.
            let mut p: &[u8] = &c.path;
            while let Some(k) = p.iter().rposition(|&b| b == b'/') {
                p = &p[..k];
                if let Ok(j) = cs
                    .changes
                    .binary_search_by(|x| super::changes::path_order(&x.path, p))
                {
                    let a = &cs.changes[j];
                    let makes_dir = matches!(a.kind, ChangeKind::Added | ChangeKind::TypeChanged)
                        && a.after.as_ref().is_some_and(|n| n.kind == NodeKind::Dir);
                    if makes_dir {
                        picked.entry(j).or_insert(FileChoice::Whole);
                    }
                }
            }
        }
    }
    picked
        .into_iter()
        .map(|(i, ch)| (&cs.changes[i], ch))
        .collect()
}

/// The content of `old` with the chosen hunks of `old → new` applied and
/// the others left as they were: byte for byte.
pub fn merge(old: &[u8], new: &[u8], hunks: &BTreeSet<usize>) -> Result<Vec<u8>, Error> {
    let lh = diff::line_hunks(old, new);
    if lh.approximate {
        return Err(Error::Invalid(crate::i18n::gettext(
            "this file's diff is too large to choose hunks: approve or skip it whole",
        )));
    }
    if let Some(&max) = hunks.iter().next_back() {
        if max > lh.hunks.len() {
            return Err(Error::Invalid(crate::i18n::gettext_f(
                "there is no hunk {n} (the file has {count})",
                &[
                    ("n", &max.to_string()),
                    ("count", &lh.hunks.len().to_string()),
                ],
            )));
        }
    }
    let mut take_new = vec![false; lh.ops.len()];
    for (hi, ids) in lh.hunks.iter().enumerate() {
        if hunks.contains(&(hi + 1)) {
            for &i in ids {
                take_new[i] = true;
            }
        }
    }
    let mut out = Vec::with_capacity(old.len().max(new.len()));
    for (i, op) in lh.ops.iter().enumerate() {
        let (src, range) = match op {
            DiffOp::Equal { .. } => (&lh.old, op.old_range()),
            _ if take_new[i] => (&lh.new, op.new_range()),
            _ => (&lh.old, op.old_range()),
        };
        for l in &src[range] {
            out.extend_from_slice(l);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(lines: &[u8]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|&l| vec![b'a' + l % 6, b'\n'])
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// All hunks give the new file, none the old one, and any subset
        /// equals applying those hunks' line changes by hand.
        #[test]
        fn merge_is_exact(a in proptest::collection::vec(0u8..6, 0..60),
                          b in proptest::collection::vec(0u8..6, 0..60),
                          pick in proptest::collection::vec(any::<bool>(), 0..30),
                          crlf in any::<bool>()) {
            let mut old = text(&a);
            let mut new = text(&b);
            if crlf { new = new.iter().flat_map(|&c| if c == b'\n' { vec![b'\r', b'\n'] } else { vec![c] }).collect(); }
            if pick.first() == Some(&true) { old.pop(); }
            let lh = diff::line_hunks(&old, &new);
            let n = lh.hunks.len();
            let all: BTreeSet<usize> = (1..=n).collect();
            prop_assert_eq!(merge(&old, &new, &all).unwrap(), new.clone());
            prop_assert_eq!(merge(&old, &new, &BTreeSet::new()).unwrap(), old.clone());
            let sub: BTreeSet<usize> = (1..=n).filter(|i| pick.get(*i).copied().unwrap_or(false)).collect();
            let merged = merge(&old, &new, &sub).unwrap();
            // Reference: walk the ops, hunk by hunk.
            let mut expect = Vec::new();
            let mut hunk_of = vec![None; lh.ops.len()];
            for (h, ids) in lh.hunks.iter().enumerate() { for &i in ids { hunk_of[i] = Some(h + 1); } }
            for (i, op) in lh.ops.iter().enumerate() {
                let use_new = hunk_of[i].is_some_and(|h| sub.contains(&h));
                let lines = if use_new { &lh.new[op.new_range()] } else { &lh.old[op.old_range()] };
                for l in lines { expect.extend_from_slice(l); }
            }
            prop_assert_eq!(merged, expect);
        }
    }
}
