//! Property tests of review and commit on a real overlay: random folder
//! trees × random agent edits (create, modify, delete, rename, file ↔
//! folder swaps, symlinks inside and outside, chmod, hard links, fifos,
//! hostile names) → committing everything yields exactly the agent's view;
//! committing a random subset yields exactly the expected mix; nothing
//! outside the grant changes; no temporary is left.

mod workspace_support;

use std::collections::BTreeMap;

use airlock::workspace::{self as ws, ChangeKind, CommitOptions, NodeKind, Selection};
use proptest::prelude::*;
use workspace_support::*;

fn names() -> Vec<Vec<u8>> {
    vec![
        b"a".to_vec(),
        b"b".to_vec(),
        b"dir".to_vec(),
        b"new\nline".to_vec(),
        b"\x1b[31mred".to_vec(),
        b"caf\xe9".to_vec(),
        "\u{202e}gnp.exe".as_bytes().to_vec(),
        vec![b'x'; 255],
        b"sp ace".to_vec(),
    ]
}

const CONTENTS: &[&[u8]] = &[
    b"",
    b"hello\n",
    b"hello\r\nworld\r\n",
    b"bin\x00ary\xff",
    b"line1\nline2\nline3",
    b"one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\n",
];
const TARGETS: &[&[u8]] = &[b"a", b"dir/a", b"../a", b"../../outside", b"caf\xe9"];
// Owner rwx always: a folder the user cannot enter would make the plain
// reference copy (run unprivileged) differ from the overlay (userns root).
const MODES: &[&str] = &["755", "700", "711", "4755", "2775", "777"];

#[derive(Debug, Clone)]
enum Edit {
    Write(Vec<usize>, usize),
    Append(Vec<usize>, usize),
    Rm(Vec<usize>),
    Mv(Vec<usize>, Vec<usize>),
    Mkdir(Vec<usize>),
    Symlink(Vec<usize>, usize),
    Chmod(Vec<usize>, usize),
    Fifo(Vec<usize>),
    Link(Vec<usize>, Vec<usize>),
    /// `rm -rf` then a folder with a file: file → folder swaps.
    ToDir(Vec<usize>, usize),
    /// `rm -rf` then a file: folder → file swaps.
    ToFile(Vec<usize>, usize),
}

/// Mostly a few plain names (so edits meet each other), sometimes hostile.
fn path() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![5 => 0..3usize, 2 => 3..9usize], 1..=3)
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (path(), 0..CONTENTS.len()).prop_map(|(p, c)| Edit::Write(p, c)),
        2 => (path(), 0..CONTENTS.len()).prop_map(|(p, c)| Edit::Append(p, c)),
        2 => path().prop_map(Edit::Rm),
        2 => (path(), path()).prop_map(|(a, b)| Edit::Mv(a, b)),
        2 => path().prop_map(Edit::Mkdir),
        1 => (path(), 0..TARGETS.len()).prop_map(|(p, t)| Edit::Symlink(p, t)),
        1 => (path(), 0..MODES.len()).prop_map(|(p, m)| Edit::Chmod(p, m)),
        1 => path().prop_map(Edit::Fifo),
        1 => (path(), path()).prop_map(|(a, b)| Edit::Link(a, b)),
        2 => (path(), 0..CONTENTS.len()).prop_map(|(p, c)| Edit::ToDir(p, c)),
        2 => (path(), 0..CONTENTS.len()).prop_map(|(p, c)| Edit::ToFile(p, c)),
    ]
}

fn p(ix: &[usize]) -> Vec<u8> {
    let n = names();
    let parts: Vec<Vec<u8>> = ix.iter().map(|&i| n[i].clone()).collect();
    parts.join(&b'/')
}

fn bytes(b: &[u8]) -> String {
    b.iter().map(|c| format!("\\{c:03o}")).collect()
}

/// Creates the parents (ignoring failures) and then the entry.
fn parents(ix: &[usize]) -> String {
    (1..ix.len())
        .map(|k| format!("mkdir {} 2>/dev/null; ", q(&p(&ix[..k]))))
        .collect()
}

fn script(edits: &[Edit], with_parents: bool) -> String {
    let mut s = String::new();
    for e in edits {
        let pre = |ix: &[usize]| {
            if with_parents {
                parents(ix)
            } else {
                String::new()
            }
        };
        let line = match e {
            // Never write into a fifo: that would wait for a reader forever.
            Edit::Write(a, c) => format!(
                "{}[ -p {} ] || printf '{}' > {}",
                pre(a),
                q(&p(a)),
                bytes(CONTENTS[*c]),
                q(&p(a))
            ),
            Edit::Append(a, c) => format!(
                "[ -p {} ] || printf '{}' >> {}",
                q(&p(a)),
                bytes(CONTENTS[*c]),
                q(&p(a))
            ),
            Edit::Rm(a) => format!("rm -rf {}", q(&p(a))),
            Edit::Mv(a, b) => format!("mv {} {}", q(&p(a)), q(&p(b))),
            Edit::Mkdir(a) => format!("{}mkdir {}", pre(a), q(&p(a))),
            Edit::Symlink(a, t) => format!("{}ln -s {} {}", pre(a), q(TARGETS[*t]), q(&p(a))),
            Edit::Chmod(a, m) => format!("chmod {} {}", MODES[*m], q(&p(a))),
            Edit::Fifo(a) => format!("mkfifo {}", q(&p(a))),
            Edit::Link(a, b) => format!("ln {} {}", q(&p(a)), q(&p(b))),
            Edit::ToDir(a, c) => format!(
                "rm -rf {0} && mkdir {0} && printf '{1}' > {0}/f",
                q(&p(a)),
                bytes(CONTENTS[*c])
            ),
            Edit::ToFile(a, c) => format!(
                "rm -rf {0} && printf '{1}' > {0}",
                q(&p(a)),
                bytes(CONTENTS[*c])
            ),
        };
        s.push_str(&line);
        s.push_str(" 2>/dev/null; ");
    }
    s.push_str("true");
    s
}

fn initial() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(
        prop_oneof![
            3 => (path(), 0..CONTENTS.len()).prop_map(|(p, c)| Edit::Write(p, c)),
            2 => path().prop_map(Edit::Mkdir),
            1 => (path(), 0..TARGETS.len()).prop_map(|(p, t)| Edit::Symlink(p, t)),
        ],
        3..20,
    )
}

fn strip(d: Desc) -> Desc {
    match d {
        Desc::File(c, m) => Desc::File(c, m & 0o777),
        Desc::Dir(m) => Desc::Dir(m & 0o777),
        d => d,
    }
}

fn remove_beneath(t: &mut BTreeMap<Vec<u8>, Desc>, path: &[u8]) {
    t.remove(path);
    let prefix = [path, b"/"].concat();
    t.retain(|k, _| !k.starts_with(&prefix));
}

fn copy_beneath(from: &BTreeMap<Vec<u8>, Desc>, to: &mut BTreeMap<Vec<u8>, Desc>, path: &[u8]) {
    let prefix = [path, b"/"].concat();
    for (k, v) in from {
        if k.as_slice() == path || k.starts_with(&prefix) {
            to.insert(k.clone(), v.clone());
        }
    }
}

/// Everything outside the grant that a bad commit could reach: the
/// grant's siblings (symlink targets like `../a`, `../outside`) and the
/// folder above them (`../../outside`).
fn surroundings(f: &Fixture) -> BTreeMap<Vec<u8>, Desc> {
    let mut t = tree(&f.base.path().join("g"));
    t.retain(|k, _| k.as_slice() != b"L" && !k.starts_with(b"L/"));
    for name in ["outside", "a"] {
        let p = f.base.path().join(name);
        if let Ok(data) = std::fs::read(&p) {
            t.insert(format!("../{name}").into_bytes(), Desc::File(data, 0));
        }
    }
    t
}

fn run_case(init: &[Edit], edits: &[Edit], pick: Option<&[bool]>) -> Result<(), TestCaseError> {
    let f = Fixture::new();
    f.setup(&script(init, true));
    f.snapshot();
    let before = tree(&f.grant);
    f.agent(&script(edits, true));
    let agent_view = tree(&f.reference);
    let cs = f.changes();
    prop_assert!(
        cs.changes.iter().all(|c| !c.conflict),
        "no user edits, no conflicts"
    );
    let sel = match pick {
        None => Selection::all(),
        Some(bits) => {
            let mut picked: std::collections::BTreeSet<Vec<u8>> = cs
                .changes
                .iter()
                .enumerate()
                .filter(|(i, _)| bits[i % bits.len()])
                .map(|(_, c)| c.path.clone())
                .collect();
            // A path inside a folder that replaced a user's file is only
            // committed with that folder named too (the commit refuses to
            // delete the file unasked): pick such folders along.
            for p in picked.clone() {
                let mut a: &[u8] = &p;
                while let Some(k) = a.iter().rposition(|&b| b == b'/') {
                    a = &a[..k];
                    if cs.get(a).is_some_and(|c| {
                        c.kind == ChangeKind::TypeChanged
                            && c.before.as_ref().is_some_and(|b| b.kind != NodeKind::Dir)
                    }) {
                        picked.insert(a.to_vec());
                    }
                }
            }
            Selection::only(picked)
        }
    };
    // The expected result, built from the plain trees.
    let mut want = before.clone();
    for (c, _) in ws::select::selected(&cs, &sel) {
        match (c.kind, c.after.as_ref().map(|a| a.kind)) {
            (ChangeKind::Deleted, _) => remove_beneath(&mut want, &c.path),
            (ChangeKind::ModeChanged, Some(NodeKind::Dir)) => {
                want.insert(c.path.clone(), strip(agent_view[&c.path].clone()));
            }
            _ => {
                remove_beneath(&mut want, &c.path);
                want.insert(c.path.clone(), strip(agent_view[&c.path].clone()));
            }
        }
    }
    if pick.is_none() {
        // Everything but the refused fifos is the agent's view.
        let mut all: BTreeMap<Vec<u8>, Desc> = agent_view
            .iter()
            .filter(|(_, d)| **d != Desc::Special)
            .map(|(k, d)| (k.clone(), strip(d.clone())))
            .collect();
        for c in cs.changes.iter().filter(|c| c.kind == ChangeKind::Refused) {
            copy_beneath(&before, &mut all, &c.path);
        }
        prop_assert_eq!(&want, &all);
    }
    let around = surroundings(&f);
    let rep = ws::commit(
        &f.task,
        0,
        &cs,
        &sel,
        f.load_snapshot().as_ref(),
        &|| true,
        &CommitOptions::default(),
    );
    let rep = rep.map_err(|e| TestCaseError::fail(format!("commit failed: {e}")))?;
    prop_assert!(rep.conflicts.is_empty());
    let got = tree(&f.grant);
    assert_no_temporaries(&got);
    prop_assert_eq!(surroundings(&f), around);
    for (k, d) in &got {
        if let Desc::File(_, m) | Desc::Dir(m) = d {
            prop_assert!(m & 0o7000 == 0, "special bits on {:?}", k);
        }
    }
    prop_assert_eq!(got, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn committing_everything_gives_the_agents_view(init in initial(), edits in proptest::collection::vec(edit(), 2..16)) {
        run_case(&init, &edits, None)?;
    }

    #[test]
    fn committing_a_subset_gives_the_expected_mix(init in initial(),
                                                   edits in proptest::collection::vec(edit(), 2..16),
                                                   pick in proptest::collection::vec(any::<bool>(), 1..16)) {
        run_case(&init, &edits, Some(&pick))?;
    }
}
