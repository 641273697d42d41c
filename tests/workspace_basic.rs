//! Review and commit on real overlay upper layers: change kinds, risk
//! flags, conflicts, review hashes, hunks, undo, symlink races, deep paths.

mod workspace_support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use airlock::workspace::risk::Risk;
use airlock::workspace::{self as ws, ChangeKind, CommitOptions, Selection};
use workspace_support::*;

fn alive_none() -> bool {
    true
}

fn commit(f: &Fixture, sel: &Selection) -> Result<ws::CommitReport, airlock::Error> {
    let cs = f.changes();
    ws::commit(
        &f.task,
        0,
        &cs,
        sel,
        f.load_snapshot().as_ref(),
        &alive_none,
        &CommitOptions::default(),
    )
}

#[test]
fn overlay_in_user_namespace_is_available() {
    assert!(
        overlay_works(),
        "these tests need `unshare --user --map-root-user --mount` and overlayfs with userxattr (Linux 5.11+)"
    );
}

#[test]
fn change_kinds_risks_and_commit_all() {
    let f = Fixture::new();
    f.setup(
        "echo one > keep && echo two > mod && echo three > del && mkdir -p d/e && echo x > d/e/f && \
         mkdir ren && echo r > ren/r && echo file > f2d && mkdir d2f && echo y > d2f/y && echo s > script.sh && \
         mkdir -p .git/hooks && echo '[core]' > .git/config",
    );
    f.snapshot();
    f.agent(
        "echo changed >> mod && rm del && rm -r d && mv ren moved && rm f2d && mkdir f2d && echo in > f2d/in && \
         rm -r d2f && echo now-file > d2f && chmod +x script.sh && ln -s keep inside && ln -s ../../etc/passwd outside && \
         mkfifo pipe && ln keep hard && printf '#!/bin/sh\\nexit 0\\n' > .git/hooks/pre-commit && \
         printf '[core]\\n\\tfsmonitor = evil\\n' > .git/config && chmod 4755 keep",
    );
    let cs = f.changes();
    let kind = |p: &str| cs.get(p.as_bytes()).map(|c| c.kind);
    assert_eq!(kind("mod"), Some(ChangeKind::Modified));
    assert_eq!(kind("del"), Some(ChangeKind::Deleted));
    assert_eq!(kind("d"), Some(ChangeKind::Deleted));
    assert_eq!(cs.get(b"d").unwrap().deleted_entries, 2);
    assert_eq!(kind("ren"), Some(ChangeKind::Deleted));
    assert_eq!(kind("moved"), Some(ChangeKind::Added));
    assert_eq!(kind("moved/r"), Some(ChangeKind::Added));
    assert_eq!(kind("f2d"), Some(ChangeKind::TypeChanged));
    assert_eq!(kind("f2d/in"), Some(ChangeKind::Added));
    assert_eq!(kind("d2f"), Some(ChangeKind::TypeChanged));
    assert_eq!(kind("script.sh"), Some(ChangeKind::ModeChanged));
    assert_eq!(kind("pipe"), Some(ChangeKind::Refused));
    assert_eq!(kind("hard"), Some(ChangeKind::Added));
    assert_eq!(kind("keep"), Some(ChangeKind::ModeChanged));
    assert_eq!(kind("d/e"), None, "a deleted folder is one change");
    let risks = |p: &str| cs.get(p.as_bytes()).unwrap().risks.clone();
    assert!(risks("script.sh").contains(&Risk::GainsExecutable));
    assert!(risks("outside").contains(&Risk::SymlinkOutside));
    assert!(!risks("inside").contains(&Risk::SymlinkOutside));
    assert!(risks(".git/hooks/pre-commit")
        .iter()
        .any(|r| matches!(r, Risk::RunsCode(_))));
    assert!(risks(".git/config")
        .iter()
        .any(|r| matches!(r, Risk::RunsCode(_))));
    assert!(risks("keep").contains(&Risk::SpecialBits));
    assert!(risks("pipe").contains(&Risk::SpecialFile));
    assert!(cs.changes.iter().all(|c| !c.conflict));

    let before_outside = tree(&f.outside);
    let rep = commit(&f, &Selection::all()).unwrap();
    assert_eq!(rep.refused, vec![b"pipe".to_vec()]);
    assert!(rep.conflicts.is_empty());
    let mut want = tree(&f.reference);
    want.remove(b"pipe".as_slice());
    // Set-uid is stripped on the way in.
    want.insert(b"keep".to_vec(), Desc::File(b"one\n".to_vec(), 0o755));
    // `hard` is a hard link of keep: a separate file after the commit.
    want.insert(b"hard".to_vec(), Desc::File(b"one\n".to_vec(), 0o755));
    let got = tree(&f.grant);
    assert_eq!(got, want);
    assert_no_temporaries(&got);
    assert_eq!(tree(&f.outside), before_outside);
    // Committing again finds nothing left to do.
    let again = f.changes();
    // Only what can never be committed as asked is left: the fifo, and the
    // set-uid bits that were stripped.
    let left: Vec<&[u8]> = again.changes.iter().map(|c| c.path.as_slice()).collect();
    assert_eq!(left, vec![b"hard".as_slice(), b"keep", b"pipe"]);
    assert!(again
        .changes
        .iter()
        .all(|c| c.kind == ChangeKind::Refused || c.risks.contains(&Risk::SpecialBits)));
}

#[test]
fn user_edit_during_task_is_a_conflict_and_survives() {
    let f = Fixture::new();
    f.setup("echo base > doc && echo other > other");
    f.snapshot();
    f.agent("echo agent > doc && echo agent2 > other");
    // The user edits doc while the agent ran (same size as before!).
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(f.grant.join("doc"), b"user\n").unwrap();
    let cs = f.changes();
    assert!(cs.get(b"doc").unwrap().conflict);
    assert!(!cs.get(b"other").unwrap().conflict);
    let rep = commit(&f, &Selection::all()).unwrap();
    assert_eq!(rep.conflicts, vec![b"doc".to_vec()]);
    assert_eq!(std::fs::read(f.grant.join("doc")).unwrap(), b"user\n");
    assert_eq!(std::fs::read(f.grant.join("other")).unwrap(), b"agent2\n");
    // Explicitly keeping the agent's version overwrites.
    let mut sel = Selection::only([b"doc".to_vec()]);
    sel.keep_agent.insert(b"doc".to_vec());
    let rep = commit(&f, &sel).unwrap();
    assert!(rep.conflicts.is_empty());
    assert_eq!(std::fs::read(f.grant.join("doc")).unwrap(), b"agent\n");
}

#[test]
fn deleted_folder_filled_by_user_is_a_conflict_not_a_recursive_delete() {
    let f = Fixture::new();
    f.setup("mkdir -p box/in && echo a > box/in/a");
    f.snapshot();
    f.agent("rm -r box");
    std::fs::write(f.grant.join("box/in/precious"), b"mine").unwrap();
    let rep = commit(&f, &Selection::all()).unwrap();
    assert_eq!(rep.conflicts, vec![b"box".to_vec()]);
    assert_eq!(
        std::fs::read(f.grant.join("box/in/precious")).unwrap(),
        b"mine"
    );
    assert!(f.grant.join("box/in/a").exists());
    // Keeping the agent's version on purpose deletes it, the user's file
    // too: the commit is not refused as a whole because the folder differs
    // from the task's start by that very change (pass 20B: it always was).
    let mut sel = Selection::all();
    sel.keep_agent.insert(b"box".to_vec());
    let rep = commit(&f, &sel).unwrap();
    assert!(rep.conflicts.is_empty(), "{rep:?}");
    assert!(!f.grant.join("box").exists());
}

#[test]
fn without_snapshot_changes_after_review_still_conflict() {
    let f = Fixture::new();
    f.setup("echo base > doc && mkdir box && echo a > box/a");
    f.agent("echo agent > doc && rm -r box");
    let cs = f.changes();
    std::fs::write(f.grant.join("doc"), b"user edit\n").unwrap();
    std::fs::write(f.grant.join("box/new"), b"mine").unwrap();
    let rep = ws::commit(
        &f.task,
        0,
        &cs,
        &Selection::all(),
        None,
        &alive_none,
        &CommitOptions::default(),
    )
    .unwrap();
    assert_eq!(rep.conflicts, vec![b"box".to_vec(), b"doc".to_vec()]);
    assert_eq!(std::fs::read(f.grant.join("doc")).unwrap(), b"user edit\n");
    assert!(f.grant.join("box/new").exists());
}

#[test]
fn content_changed_after_review_is_refused() {
    let f = Fixture::new();
    f.setup("echo base > doc");
    f.snapshot();
    f.agent("echo reviewed > doc && echo new > added");
    let cs = f.changes();
    // Something rewrites the upper layer after the review.
    std::fs::write(f.task.upper(0).join("added"), b"swapped\n").unwrap();
    let err = ws::commit(
        &f.task,
        0,
        &cs,
        &Selection::all(),
        f.load_snapshot().as_ref(),
        &alive_none,
        &CommitOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, airlock::Error::ReviewMismatch { .. }),
        "{err}"
    );
    assert_eq!(std::fs::read(f.grant.join("doc")).unwrap(), b"base\n");
    assert!(!f.grant.join("added").exists());
    assert_no_temporaries(&tree(&f.grant));
    // An earlier review recorded by the CLI is checked as well.
    let cs = f.changes();
    let mut opts = CommitOptions::default();
    opts.reviewed.insert(b"doc".to_vec(), [7u8; 32]);
    let err = ws::commit(
        &f.task,
        0,
        &cs,
        &Selection::all(),
        f.load_snapshot().as_ref(),
        &alive_none,
        &opts,
    )
    .unwrap_err();
    assert!(matches!(err, airlock::Error::ReviewMismatch { .. }));
}

#[test]
fn refuses_while_a_process_is_alive() {
    let f = Fixture::new();
    f.setup("echo base > doc");
    f.agent("echo x > doc");
    let cs = f.changes();
    let err = ws::commit(
        &f.task,
        0,
        &cs,
        &Selection::all(),
        None,
        &|| false,
        &CommitOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, airlock::Error::Invalid(_)));
    assert_eq!(std::fs::read(f.grant.join("doc")).unwrap(), b"base\n");
}

#[test]
fn chosen_hunks_give_the_exact_merge() {
    let f = Fixture::new();
    let old: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    std::fs::write(f.grant.join("text"), &old).unwrap();
    std::fs::write(f.reference.join("text"), &old).unwrap();
    f.snapshot();
    f.agent(
        "sed -i -e 's/^line 2$/LINE 2/' -e 's/^line 20$/LINE 20/' -e 's/^line 38$/LINE 38/' text",
    );
    let cs = f.changes();
    let c = cs.get(b"text").unwrap();
    let new = std::fs::read(f.task.upper(0).join("text")).unwrap();
    let d = ws::diff::diff_files(Some(old.as_bytes()), Some(&new));
    let ws::diff::FileDiff::Text { hunks, .. } = d else {
        panic!()
    };
    assert_eq!(hunks.len(), 3);
    assert_eq!(c.kind, ChangeKind::Modified);
    let sel = Selection::all().with_hunks(b"text".to_vec(), BTreeSet::from([1, 3]));
    commit(&f, &sel).unwrap();
    let want = old
        .replace("line 2\n", "LINE 2\n")
        .replace("line 38\n", "LINE 38\n");
    assert_eq!(std::fs::read_to_string(f.grant.join("text")).unwrap(), want);
    // The rest is still pending, and is no conflict: the snapshot followed.
    let cs = f.changes();
    let c = cs.get(b"text").unwrap();
    assert!(!c.conflict);
    commit(&f, &Selection::all()).unwrap();
    assert_eq!(std::fs::read(f.grant.join("text")).unwrap(), new);
}

#[test]
fn undo_restores_and_refuses_over_later_edits() {
    let f = Fixture::new();
    f.setup("echo base > doc && mkdir old && echo o > old/o && echo gone > gone && chmod 700 old");
    f.snapshot();
    let before = tree(&f.grant);
    f.agent(
        "echo agent > doc && rm -r old && echo new > added && rm gone && mkdir nd && echo n > nd/n",
    );
    commit(&f, &Selection::all()).unwrap();
    assert_ne!(tree(&f.grant), before);
    let no = || true;
    let rep = ws::undo::undo(&f.task, &no, None).unwrap();
    assert_eq!(rep.undone, 1);
    let after = tree(&f.grant);
    assert_eq!(after, before);
    assert_no_temporaries(&after);
    // Nothing left to undo.
    assert!(ws::undo::undo(&f.task, &no, None).is_err());
    // Commit again, then edit a committed file: undo refuses, changes nothing.
    commit(&f, &Selection::all()).unwrap();
    std::fs::write(f.grant.join("added"), b"user later\n").unwrap();
    let snap = tree(&f.grant);
    let err = ws::undo::undo(&f.task, &no, None).unwrap_err();
    assert!(
        matches!(err, airlock::Error::ChangedSinceCommit { .. }),
        "{err}"
    );
    assert_eq!(tree(&f.grant), snap);
}

#[test]
fn a_folder_swapped_for_a_symlink_is_never_followed() {
    let f = Fixture::new();
    f.setup("mkdir sub && echo a > sub/a");
    f.snapshot();
    f.agent("echo changed > sub/a && echo new > sub/b");
    let cs = f.changes();
    // Between review and commit, someone swaps sub for a symlink outside.
    std::fs::rename(f.grant.join("sub"), f.grant.join("sub.old")).unwrap();
    std::os::unix::fs::symlink(&f.outside, f.grant.join("sub")).unwrap();
    let before = tree(&f.outside);
    let r = ws::commit(
        &f.task,
        0,
        &cs,
        &Selection::all(),
        f.load_snapshot().as_ref(),
        &alive_none,
        &CommitOptions::default(),
    );
    if let Ok(rep) = &r {
        assert!(rep.conflicts.len() == 2, "{rep:?}");
    }
    // Even without a snapshot (no conflict detection), openat2 refuses.
    let r2 = ws::commit(
        &f.task,
        0,
        &cs,
        &Selection::all(),
        None,
        &alive_none,
        &CommitOptions::default(),
    );
    if let Ok(rep) = &r2 {
        assert!(rep.conflicts.len() == 2, "{rep:?}");
    }
    assert_eq!(tree(&f.outside), before);
    assert!(!f.outside.join("b").exists());
}

#[test]
fn deep_paths_and_long_names() {
    let f = Fixture::new();
    let long = "n".repeat(255);
    let deep = format!(
        "i=0; while [ $i -lt 200 ]; do mkdir {long} && cd -P {long} || exit 1; i=$((i+1)); done; echo bottom > f"
    );
    f.setup(&deep);
    f.snapshot();
    let edit = format!(
        "i=0; while [ $i -lt 200 ]; do cd -P {long} || exit 1; i=$((i+1)); done; echo agent >> f && mkdir {long} && echo new > {long}/g"
    );
    f.agent(&edit);
    let cs = f.changes();
    assert_eq!(cs.changes.len(), 3, "modified f, added folder and file");
    assert!(cs.changes.iter().all(|c| c.path.len() > 4096));
    commit(&f, &Selection::all()).unwrap();
    assert_eq!(tree(&f.grant), tree(&f.reference));
}

#[test]
fn hostile_names_are_escaped_in_display() {
    let f = Fixture::new();
    f.setup("true");
    f.snapshot();
    f.agent(&format!(
        "echo x > {} && echo y > {}",
        q(b"a\x1b[2Jb"),
        q("evil\u{202e}txt.sh".as_bytes())
    ));
    let cs = f.changes();
    let shown: Vec<String> = cs.changes.iter().map(|c| c.display()).collect();
    assert!(shown.contains(&"a\\x1b[2Jb".to_string()), "{shown:?}");
    assert!(
        shown.contains(&"evil\\u{202e}txt.sh".to_string()),
        "{shown:?}"
    );
    for s in &shown {
        assert!(!s.chars().any(|c| c.is_control()));
    }
}

#[test]
fn new_files_keep_modes_without_special_bits() {
    let f = Fixture::new();
    f.setup("true");
    f.snapshot();
    f.agent("echo x > suid && chmod 6755 suid && mkdir -m 1777 sticky");
    commit(&f, &Selection::all()).unwrap();
    let m = |p: &str| {
        std::fs::symlink_metadata(f.grant.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(m("suid"), 0o755);
    assert_eq!(m("sticky"), 0o777);
}
