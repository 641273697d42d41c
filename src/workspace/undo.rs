//! Undo of the last commit of a task: puts back exactly what that commit
//! replaced or deleted (from the copies it kept), and removes what it
//! added, but only if none of it changed since; otherwise nothing is
//! touched. The undo is itself a journaled transaction.

use std::os::fd::AsRawFd;
use std::path::Path;

use super::commit::{self, Action, Op, Placed, Record, Source};
use super::fsx;
use crate::task::TaskDir;
use crate::Error;

/// What an undo did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndoReport {
    /// The commit that was undone.
    pub undone: u64,
    pub restored: Vec<Vec<u8>>,
    /// Sockets, fifos and device nodes the commit replaced or removed:
    /// never copied, so they cannot come back (what the commit put in
    /// their place is removed). The rest of the commit is undone.
    pub lost: Vec<Vec<u8>>,
}

fn record_path(task: &Path, seq: u64) -> std::path::PathBuf {
    commit::commit_dir(task, seq).join("record.json")
}

fn load(task: &Path, seq: u64) -> Result<Record, Error> {
    let p = record_path(task, seq);
    let data = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_slice(&data).map_err(|e| Error::Manifest {
        path: p,
        message: e.to_string(),
    })
}

/// The latest commit (not an undo) that has not been undone yet.
fn last_commit(task: &Path) -> Result<Option<Record>, Error> {
    let dir = task.join("commits");
    let mut seqs: Vec<u64> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    seqs.sort_unstable();
    for seq in seqs.into_iter().rev() {
        if !record_path(task, seq).exists() {
            continue;
        }
        let r = load(task, seq)?;
        if r.undo_of.is_none() && !r.undone {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

pub(crate) fn mark_undone(task: &Path, seq: u64) -> Result<(), Error> {
    let mut r = load(task, seq)?;
    r.undone = true;
    let p = record_path(task, seq);
    let data = serde_json::to_vec(&r).map_err(|e| Error::io(&p, std::io::Error::other(e)))?;
    crate::dirs::write_atomic(&p, &data)
}

/// Whether what the commit placed at `rel` is still exactly there.
fn unchanged(
    root: &std::os::fd::OwnedFd,
    rel: &[u8],
    placed: &Option<Placed>,
) -> std::io::Result<bool> {
    let (parent, name) = fsx::split_last(rel);
    let dir = match fsx::open_dir_at(root, parent) {
        Ok(d) => d,
        Err(_) => return Ok(placed.is_none()),
    };
    let cur = fsx::lstat_opt(dir.as_raw_fd(), name)?;
    let (Some(p), Some(st)) = (placed, cur) else {
        return Ok(placed.is_none() && cur.is_none());
    };
    if p.ino != st.st_ino
        || p.mode != st.st_mode
        || p.size != st.st_size as u64
        || p.ctime != (st.st_ctime, st.st_ctime_nsec)
    {
        return Ok(false);
    }
    if fsx::is_dir(&st) {
        let mut now = Vec::new();
        list(&fsx::open_subdir(dir.as_raw_fd(), name)?, b"", &mut now)?;
        return Ok(now == p.beneath);
    }
    Ok(true)
}

fn list(
    dir: &std::os::fd::OwnedFd,
    rel: &[u8],
    out: &mut Vec<(Vec<u8>, u64, (i64, i64))>,
) -> std::io::Result<()> {
    for name in fsx::list_dir(dir)? {
        let child = fsx::join(rel, &name);
        let st = fsx::lstat_at(dir.as_raw_fd(), &name)?;
        out.push((child.clone(), st.st_ino, (st.st_ctime, st.st_ctime_nsec)));
        if fsx::is_dir(&st) {
            list(&fsx::open_subdir(dir.as_raw_fd(), &name)?, &child, out)?;
        }
    }
    Ok(())
}

/// Undoes the last commit of the task. `no_process_alive` as for commit.
pub fn undo(
    task_dir: &TaskDir,
    no_process_alive: &dyn Fn() -> bool,
    stop_after: Option<u64>,
) -> Result<UndoReport, Error> {
    if !no_process_alive() {
        return Err(Error::Invalid(crate::i18n::gettext(
            "the task is still running: undo once it has ended",
        )));
    }
    super::with_deep_stack(|| undo_here(task_dir, stop_after))
}

fn undo_here(task_dir: &TaskDir, stop_after: Option<u64>) -> Result<UndoReport, Error> {
    let task = task_dir.path();
    let _lock = commit::lock(task)?;
    commit::recover_here(task)?;
    let Some(rec) = last_commit(task)? else {
        return Err(Error::Invalid(crate::i18n::gettext(
            "this task has no commit to undo",
        )));
    };
    let root = fsx::open_dir_path(&rec.grant).map_err(|e| Error::io(&rec.grant, e))?;
    let mut ops = Vec::new();
    let mut restored = Vec::new();
    let mut lost = Vec::new();
    for (k, (op, placed)) in rec.ops.iter().zip(&rec.placed).enumerate() {
        let err = |e| Error::io(fsx::rel_display(&rec.grant, &op.path), e);
        if !unchanged(&root, &op.path, placed).map_err(err)? {
            return Err(Error::ChangedSinceCommit {
                path: fsx::rel_display(&rec.grant, &op.path),
            });
        }
        let (parent, name) = fsx::split_last(&op.path);
        let cur = fsx::open_dir_at(&root, parent)
            .and_then(|d| fsx::lstat_opt(d.as_raw_fd(), name))
            .map_err(err)?;
        let current = cur.map(|st| commit::orig_of(&st));
        // A special file the commit replaced or removed has no copy (older
        // records said it had, and the undo then failed as a whole, pass
        // 19B): said, and what the commit put there removed.
        if op.orig.as_ref().is_some_and(|o| o.kind.is_special()) {
            lost.push(op.path.clone());
            if current.is_some() && op.action == Action::Put {
                ops.push(Op {
                    path: op.path.clone(),
                    action: Action::Remove,
                    source: Source::None,
                    kind: op.kind,
                    backed_up: true,
                    orig: current,
                    perm: op.perm,
                    hash: None,
                    tree: Vec::new(),
                    forced: false,
                });
            }
            continue;
        }
        let back = Op {
            path: op.path.clone(),
            action: Action::Put,
            source: Source::Backup { seq: rec.seq, k },
            kind: op.orig.as_ref().map(|o| o.kind).unwrap_or(op.kind),
            backed_up: current.is_some(),
            orig: current,
            perm: op.orig.as_ref().map(|o| o.perm).unwrap_or(op.perm),
            hash: None,
            tree: Vec::new(),
            forced: false,
        };
        let back = match (op.action, &op.orig) {
            (Action::Chmod, _) => Op {
                action: Action::Chmod,
                source: Source::None,
                backed_up: false,
                ..back
            },
            (Action::Put, None) => Op {
                action: Action::Remove,
                source: Source::None,
                ..back
            },
            _ => back,
        };
        restored.push(op.path.clone());
        ops.push(back);
    }
    if !ops.is_empty() {
        commit::run(
            task,
            rec.index,
            &rec.grant,
            root,
            None,
            ops,
            Default::default(),
            Some(rec.seq),
            None,
            stop_after,
        )?;
    } else {
        mark_undone(task, rec.seq)?;
    }
    Ok(UndoReport {
        undone: rec.seq,
        restored,
        lost,
    })
}
