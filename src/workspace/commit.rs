//! The commit transaction: approved changes go from the upper layer into
//! the user's folder so that, whatever happens, every file ends up entirely
//! old or entirely new.
//!
//! 1. **Plan**: each approved change becomes an [`Op`]; conflicts (the user
//!    changed the file after the task started) are set aside. The journal
//!    (`commit.journal` in the task folder, fsynced) records the plan.
//! 2. **Prepare**: what will be replaced or deleted is copied into
//!    `commits/<seq>/orig/<k>` (kept for undo); each new file is written
//!    to a temporary beside its target (read from the upper layer with
//!    `O_NOFOLLOW`, hash checked against the review), fsynced. A new
//!    folder is staged whole under a temporary name. Journal: `prepared`.
//! 3. **Apply**: renames (and removals) in path order, each target checked
//!    again just before. Journal: `applied` — the commit point.
//! 4. **Finish**: the undo record and the updated base snapshot are
//!    written, the journal removed.
//!
//! A crash before the commit point is rolled back by [`recover`] (temps
//! removed, replaced originals restored from their copies); after it, the
//! finish is completed. Every path in the grant is resolved with `openat2`
//! beneath the grant without following any symlink.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::changes::{Change, ChangeKind, ChangeSet, NodeKind};
use super::content;
use super::fsx;
use super::select::{self, FileChoice, Selection};
use super::snapshot::{hash_reader, Meta, Snapshot};
use crate::task::TaskDir;
use crate::Error;

/// Knobs of a commit.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// Crash-test hook: stop right after durable step `k`, leaving
    /// everything as a kill would (no clean-up). `AIRLOCK_COMMIT_STOP_AFTER`
    /// sets it from the CLI of a debug build.
    pub stop_after: Option<u64>,
    /// Hashes of files as an earlier review showed them (path → SHA-256);
    /// a file whose content differs is refused.
    pub reviewed: BTreeMap<Vec<u8>, [u8; 32]>,
    /// Permission bits taken away from what the commit creates (new files
    /// and folders): the user's umask. The agent's own umask decided the
    /// modes in its layer, and 0777 there must not become a folder other
    /// users can write into. 0 keeps the agent's modes.
    pub umask: u32,
}

impl CommitOptions {
    /// Reads the crash-test hook from the environment, and our umask.
    pub fn from_env() -> CommitOptions {
        CommitOptions {
            // Only in test builds: in a release, whatever sets the
            // environment of the user's shell (a direnv `.envrc`) could
            // make every commit stop half-way.
            stop_after: if cfg!(debug_assertions) {
                std::env::var("AIRLOCK_COMMIT_STOP_AFTER")
                    .ok()
                    .and_then(|v| v.parse().ok())
            } else {
                None
            },
            reviewed: BTreeMap::new(),
            umask: process_umask(),
        }
    }
}

/// This process's umask, read without changing it (`umask(2)` can only
/// set it, and other threads may be creating files): Linux 4.7 and later
/// show it in /proc/self/status. 022 when it cannot be read.
pub fn process_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
        & 0o777
}

/// What a commit did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Sequence number of the commit (its folder `commits/<seq>`).
    pub seq: u64,
    pub committed: Vec<Vec<u8>>,
    /// Approved but left alone because the user's file changed.
    pub conflicts: Vec<Vec<u8>>,
    /// Device nodes, fifos, sockets: never committed.
    pub refused: Vec<Vec<u8>>,
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// No interrupted commit.
    Clean,
    /// A commit that had not reached its commit point was undone. `kept`:
    /// what it had placed and someone changed since, set aside under these
    /// names instead of removed.
    RolledBack { seq: u64, kept: Vec<PathBuf> },
    /// A commit past its commit point was finished.
    Completed { seq: u64 },
    /// A commit or undo of the task is running in another process: its
    /// journal is live, and was left alone.
    Busy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Action {
    /// Put a file, symlink or staged folder at the path.
    Put,
    /// Remove the path (recursively for a folder).
    Remove,
    /// Change a folder's permission bits.
    Chmod,
}

/// Where the new content of a `Put` comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    None,
    /// The upper layer (whole file, symlink, or a folder with `tree`).
    Upper,
    /// Chosen hunks merged with the user's file.
    Merged,
    /// A backup of an earlier commit (undo): `commits/<seq>/orig/<k>`.
    Backup {
        seq: u64,
        k: usize,
    },
}

/// What was at the target before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Orig {
    pub kind: NodeKind,
    pub ino: u64,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size and modification time when planned: a file the user saves in
    /// place while the commit runs keeps its inode, and must still not be
    /// replaced (pass 19B). Absent in journals of older versions.
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub mtime: Option<(i64, i64)>,
}

/// One entry of a staged new folder (relative to the folder).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TreeEntry {
    #[serde(with = "super::changes::bytes")]
    pub rel: Vec<u8>,
    pub kind: NodeKind,
    /// Permission bits wanted (stripped).
    pub perm: u32,
    #[serde(with = "super::changes::hex_opt", default)]
    pub hash: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Op {
    #[serde(with = "super::changes::bytes")]
    pub path: Vec<u8>,
    pub action: Action,
    pub source: Source,
    /// The kind the path has afterwards (for `Put`).
    pub kind: NodeKind,
    pub orig: Option<Orig>,
    /// Permission bits afterwards (stripped of set-uid/set-gid/sticky).
    pub perm: u32,
    #[serde(with = "super::changes::hex_opt", default)]
    pub hash: Option<[u8; 32]>,
    /// Content of a staged folder from the upper layer.
    pub tree: Vec<TreeEntry>,
    /// Whether a copy of the original is in `orig/<k>`.
    pub backed_up: bool,
    /// The user kept the agent's version over a change of their own
    /// (`--keep-agent`): a folder that goes away is not compared with the
    /// task's start again, which it differs from by that very change.
    #[serde(default)]
    pub forced: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Stage {
    Planned,
    Prepared,
    Applied,
}

/// The journal: intent, then progress, of one transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    seq: u64,
    index: usize,
    grant: PathBuf,
    /// Whether this transaction is an undo of commit `undo_of`.
    undo_of: Option<u64>,
    ops: Vec<Op>,
    stage: Stage,
    /// Inode of each prepared temporary (what the target becomes).
    temp_inos: Vec<Option<u64>>,
    /// [`print_of`] each prepared temporary, for a roll-back to tell
    /// whether the user worked in what the commit had placed.
    #[serde(default)]
    temp_prints: Vec<Option<[u8; 32]>>,
    /// Random part of this transaction's temporary names, so that none
    /// can be foreseen: an agent's file (or the user's) of such a name
    /// would otherwise be taken for ours and removed at the end. 0 in
    /// journals written before it existed.
    #[serde(default)]
    nonce: u64,
}

/// The record an undo reads: what a finished commit replaced and placed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub seq: u64,
    pub index: usize,
    pub grant: PathBuf,
    pub undo_of: Option<u64>,
    pub ops: Vec<Op>,
    /// What each op left at its path (`None`: nothing), and for folders
    /// every entry beneath, to tell later whether someone changed it.
    pub placed: Vec<Option<Placed>>,
    pub undone: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Placed {
    pub ino: u64,
    pub mode: u32,
    pub size: u64,
    pub ctime: (i64, i64),
    /// Not compared by undo; tells a rename back (ctime moves, mtime does
    /// not) from an edit. Absent in records of older versions.
    #[serde(default)]
    pub mtime: Option<(i64, i64)>,
    /// For a folder: (relative path, ino, ctime) of everything beneath.
    pub beneath: Vec<(Vec<u8>, u64, (i64, i64))>,
}

pub(crate) fn journal_path(task: &Path) -> PathBuf {
    task.join("commit.journal")
}
pub(crate) fn commit_dir(task: &Path, seq: u64) -> PathBuf {
    task.join("commits").join(seq.to_string())
}
fn temp_name(j: &Journal, k: usize) -> Vec<u8> {
    match j.nonce {
        0 => format!(".airlock-{}-{k}.tmp", j.seq).into_bytes(),
        n => format!(".airlock-{}-{k}-{n:016x}.tmp", j.seq).into_bytes(),
    }
}
/// Where the original is set aside (same folder, same inode) between the
/// apply and the finish, so a roll back is a rename and needs no space.
fn aside_name(j: &Journal, k: usize) -> Vec<u8> {
    match j.nonce {
        0 => format!(".airlock-{}-{k}.orig", j.seq).into_bytes(),
        n => format!(".airlock-{}-{k}-{n:016x}.orig", j.seq).into_bytes(),
    }
}

/// A nonce for [`Journal::nonce`] (never 0).
fn nonce() -> u64 {
    let mut b = [0u8; 8];
    let n = match crate::task::getrandom(&mut b) {
        Ok(()) => u64::from_ne_bytes(b),
        // Unforeseeable enough for names without a random source.
        Err(_) => crate::event::now_ms() ^ ((std::process::id() as u64) << 40),
    };
    n.max(1)
}

/// Counts durable steps for the crash-test hook.
struct Steps {
    n: u64,
    stop_after: Option<u64>,
}

impl Steps {
    fn step(&mut self) -> Result<(), Error> {
        self.n += 1;
        if self.stop_after == Some(self.n) {
            return Err(Error::CommitStopped(self.n));
        }
        Ok(())
    }
}

/// Holds an exclusive `flock` on the task's `commit.lock`.
pub(crate) struct Lock {
    file: std::fs::File,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Unlock explicitly: a child forked meanwhile (before its exec
        // closes the fd) would otherwise keep the lock alive.
        // SAFETY: flock on our own fd.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

pub(crate) fn lock(task: &Path) -> Result<Lock, Error> {
    let p = task.join("commit.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io(&p, e))?;
    // SAFETY: flock on our own fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::Refused(crate::i18n::gettext_f(
            "another commit or undo of this task is running ({path} is locked)",
            &[("path", &p.display().to_string())],
        )));
    }
    Ok(Lock { file: f })
}

fn next_seq(task: &Path) -> u64 {
    std::fs::read_dir(task.join("commits"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1
}

fn is_enospc(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Opens the parent folder of `rel` beneath `root`, and gives the name.
fn parent_of<'a>(root: &OwnedFd, rel: &'a [u8]) -> std::io::Result<(OwnedFd, &'a [u8])> {
    let (parent, name) = fsx::split_last(rel);
    Ok((fsx::open_dir_at(root, parent)?, name))
}

/// Whether `c` is a conflict: the user's side changed since the snapshot.
pub(crate) fn is_conflict(lower: &OwnedFd, snap: &Snapshot, c: &Change) -> std::io::Result<bool> {
    let (dir, name) = match parent_of(lower, &c.path) {
        Ok(x) => x,
        // The parent vanished or became a symlink: the user moved things.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
            ) =>
        {
            return Ok(c.before.is_some() || snap.entries.contains_key(&c.path))
        }
        // Anything else (no permission, an I/O error) is said as itself,
        // not passed off as a change by the user.
        Err(e) => return Err(e),
    };
    let cur = fsx::lstat_opt(dir.as_raw_fd(), name)?;
    match (&c.before, cur) {
        (None, None) => Ok(snap.entries.contains_key(&c.path)),
        (None, Some(_)) | (Some(_), None) => Ok(true),
        (Some(_), Some(st)) => {
            if fsx::is_dir(&st) {
                let Some(m) = snap.entries.get(&c.path) else {
                    return Ok(true);
                };
                if m.mode != st.st_mode || m.ino != st.st_ino {
                    return Ok(true);
                }
                // A folder that goes away: nothing inside may be new or changed.
                let goes_away = !matches!(&c.after, Some(a) if a.kind == NodeKind::Dir);
                if goes_away {
                    let sub = fsx::open_subdir(dir.as_raw_fd(), name)?;
                    return subtree_changed(&sub, &c.path, snap);
                }
                Ok(false)
            } else {
                let unchanged = snap.unchanged(&c.path, &st, || {
                    fsx::open_file_at(dir.as_raw_fd(), name)
                        .ok()
                        .and_then(|f| hash_reader(f).ok())
                });
                Ok(!unchanged)
            }
        }
    }
}

fn subtree_changed(dir: &OwnedFd, rel: &[u8], snap: &Snapshot) -> std::io::Result<bool> {
    for name in fsx::list_dir(dir)? {
        let child = fsx::join(rel, &name);
        let Some(st) = fsx::lstat_opt(dir.as_raw_fd(), &name)? else {
            continue;
        };
        if fsx::is_dir(&st) {
            match snap.entries.get(&child) {
                Some(m) if m.mode == st.st_mode && m.ino == st.st_ino => {}
                _ => return Ok(true),
            }
            let sub = fsx::open_subdir(dir.as_raw_fd(), &name)?;
            if subtree_changed(&sub, &child, snap)? {
                return Ok(true);
            }
        } else {
            let same = snap.unchanged(&child, &st, || {
                fsx::open_file_at(dir.as_raw_fd(), &name)
                    .ok()
                    .and_then(|f| hash_reader(f).ok())
            });
            if !same {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Without a snapshot: the user's side must still be what the change set
/// saw (same inode, size, times), and a folder must hold as many entries.
fn differs_from_review(lower: &OwnedFd, c: &Change) -> std::io::Result<bool> {
    let Ok((dir, name)) = parent_of(lower, &c.path) else {
        return Ok(c.before.is_some());
    };
    let cur = fsx::lstat_opt(dir.as_raw_fd(), name)?;
    match (&c.before, cur) {
        (None, None) => Ok(false),
        (None, Some(_)) | (Some(_), None) => Ok(true),
        (Some(b), Some(st)) => {
            if b.ino != st.st_ino
                || b.kind != NodeKind::from_mode(st.st_mode)
                || b.perm != st.st_mode & 0o7777
            {
                return Ok(true);
            }
            if fsx::is_dir(&st) {
                let goes_away = !matches!(&c.after, Some(a) if a.kind == NodeKind::Dir);
                if goes_away {
                    let n = count(&fsx::open_subdir(dir.as_raw_fd(), name)?)?;
                    return Ok(n != c.deleted_entries);
                }
                return Ok(false);
            }
            Ok(b.size != st.st_size as u64
                || b.mtime != (st.st_mtime, st.st_mtime_nsec)
                || b.ctime != (st.st_ctime, st.st_ctime_nsec))
        }
    }
}

fn count(dir: &OwnedFd) -> std::io::Result<u64> {
    let mut n = 0;
    for name in fsx::list_dir(dir)? {
        n += 1;
        if let Some(st) = fsx::lstat_opt(dir.as_raw_fd(), &name)? {
            if fsx::is_dir(&st) {
                n += count(&fsx::open_subdir(dir.as_raw_fd(), &name)?)?;
            }
        }
    }
    Ok(n)
}

pub(crate) fn orig_of(st: &libc::stat) -> Orig {
    Orig {
        kind: NodeKind::from_mode(st.st_mode),
        ino: st.st_ino,
        perm: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: Some(st.st_size as u64),
        mtime: Some((st.st_mtime, st.st_mtime_nsec)),
    }
}

/// Whether `st` is still the entry `o` was taken from: the same inode and
/// kind, and for anything but a folder the same size and modification
/// time (not the change time: setting a hard link of it aside moves that).
fn still_orig(o: &Orig, st: &libc::stat) -> bool {
    o.ino == st.st_ino
        && o.kind == NodeKind::from_mode(st.st_mode)
        && (o.kind == NodeKind::Dir
            || (o.size.map_or(true, |n| n == st.st_size as u64)
                && o.mtime
                    .map_or(true, |m| m == (st.st_mtime, st.st_mtime_nsec))))
}

/// What a prepared temporary looked like, to tell at a roll-back whether
/// anyone changed it since it was placed: kind, size and modification
/// time of it and of everything beneath.
fn print_of(dir: RawFd, name: &[u8]) -> std::io::Result<[u8; 32]> {
    fn walk(dir: RawFd, name: &[u8], rel: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        let st = fsx::lstat_at(dir, name)?;
        out.extend_from_slice(rel);
        out.push(0);
        for v in [st.st_mode as i64, st.st_size, st.st_mtime, st.st_mtime_nsec] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if fsx::is_dir(&st) {
            let sub = fsx::open_subdir(dir, name)?;
            let mut names = fsx::list_dir(&sub)?;
            names.sort();
            for n in names {
                walk(sub.as_raw_fd(), &n, &fsx::join(rel, &n), out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, name, b"", &mut out)?;
    Ok(content::hash_bytes(&out))
}

/// The last parent folder opened: ops come in path order, so most share
/// it (one `openat2` walk per folder instead of one per file).
#[derive(Default)]
struct ParentCache {
    key: Option<Vec<u8>>,
    fd: Option<Rc<OwnedFd>>,
}

impl ParentCache {
    fn get(&mut self, root: &OwnedFd, rel: &[u8]) -> std::io::Result<Rc<OwnedFd>> {
        let (parent, _) = fsx::split_last(rel);
        if let (Some(k), Some(fd)) = (&self.key, &self.fd) {
            if k.as_slice() == parent {
                return Ok(fd.clone());
            }
        }
        let fd = Rc::new(fsx::open_dir_at(root, parent)?);
        self.key = Some(parent.to_vec());
        self.fd = Some(fd.clone());
        Ok(fd)
    }
}

/// Everything one transaction needs at hand.
struct Txn<'a> {
    task: &'a Path,
    grant: &'a Path,
    root: OwnedFd,
    /// The upper layer (commit) — `None` for an undo.
    upper: Option<OwnedFd>,
    /// Owner for new files when running as root.
    new_owner: Option<(u32, u32)>,
    /// Merged contents of hunk selections, by op index.
    merged: BTreeMap<usize, Vec<u8>>,
    journal: Journal,
    steps: Steps,
    /// Parents in the grant and in the upper layer. A phase never moves a
    /// folder that a later op of the same phase has as parent.
    gcache: ParentCache,
    ucache: ParentCache,
    /// The base snapshot of the task (a commit), for folders that go away.
    snapshot: Option<&'a Snapshot>,
}

impl<'a> Txn<'a> {
    fn gerr(&self, rel: &[u8], e: std::io::Error) -> Error {
        let path = fsx::rel_display(self.grant, rel);
        if is_enospc(&e) {
            Error::DiskFull { path }
        } else {
            Error::io(path, e)
        }
    }

    fn write_journal(&mut self) -> Result<(), Error> {
        let p = journal_path(self.task);
        let data = serde_json::to_vec(&self.journal)
            .map_err(|e| Error::io(&p, std::io::Error::other(e)))?;
        crate::dirs::write_atomic(&p, &data).map_err(|e| match e {
            Error::Io { path, source } if is_enospc(&source) => Error::DiskFull { path },
            e => e,
        })?;
        self.steps.step()
    }

    fn backup_dir(&self) -> PathBuf {
        commit_dir(self.task, self.journal.seq).join("orig")
    }

    /// Phase 2: backups and temporaries.
    fn prepare(&mut self) -> Result<(), Error> {
        let bdir = self.backup_dir();
        crate::dirs::create_private_dir(&bdir)?;
        let bfd = fsx::open_dir_path(&bdir).map_err(|e| Error::io(&bdir, e))?;
        for k in 0..self.journal.ops.len() {
            let op = self.journal.ops[k].clone();
            let dir = self
                .gcache
                .get(&self.root, &op.path)
                .map_err(|e| self.gerr(&op.path, e))?;
            let name = fsx::split_last(&op.path).1;
            if op.backed_up {
                let kname = k.to_string().into_bytes();
                copy_node(dir.as_raw_fd(), name, bfd.as_raw_fd(), &kname, None)
                    .map_err(|e| map_copy_err(e, &bdir, self.grant, &op.path))?;
                self.steps.step()?;
            }
            if op.action == Action::Put {
                let tmp = temp_name(&self.journal, k);
                self.make_temp(k, &op, &dir, &tmp)?;
                let st =
                    fsx::lstat_at(dir.as_raw_fd(), &tmp).map_err(|e| self.gerr(&op.path, e))?;
                self.journal.temp_inos[k] = Some(st.st_ino);
                self.journal.temp_prints[k] =
                    Some(print_of(dir.as_raw_fd(), &tmp).map_err(|e| self.gerr(&op.path, e))?);
                self.steps.step()?;
            }
        }
        // Every temporary and backup must be on disk before the journal
        // says `prepared`. One syncfs per file system gives that for all
        // of them at once (an fsync per file would cost a journal commit
        // of the file system each: seconds for a thousand files).
        fsx::syncfs(self.root.as_raw_fd()).map_err(|e| self.gerr(b"", e))?;
        fsx::syncfs(bfd.as_raw_fd()).map_err(|e| Error::io(&bdir, e))?;
        self.journal.stage = Stage::Prepared;
        self.write_journal()
    }

    fn make_temp(&mut self, k: usize, op: &Op, dir: &OwnedFd, tmp: &[u8]) -> Result<(), Error> {
        let owner = match &op.orig {
            Some(o) => Some((o.uid, o.gid)),
            None => self.new_owner,
        };
        match &op.source {
            Source::Backup { seq, k: bk } => {
                let b = commit_dir(self.task, *seq).join("orig");
                let bfd = fsx::open_dir_path(&b).map_err(|e| Error::io(&b, e))?;
                copy_node(
                    bfd.as_raw_fd(),
                    bk.to_string().as_bytes(),
                    dir.as_raw_fd(),
                    tmp,
                    None,
                )
                // Written into the grant: a full disk is the grant's.
                .map_err(|e| self.gerr(&op.path, e))?;
            }
            Source::Merged => {
                let data = self.merged.get(&k).cloned().unwrap_or_default();
                write_file(dir.as_raw_fd(), tmp, &mut &data[..], op.perm, owner, None)
                    .map_err(|e| self.gerr(&op.path, e))?;
            }
            Source::Upper => {
                let upper = self.upper.as_ref().ok_or_else(|| {
                    Error::Invalid(crate::i18n::gettext(
                        "this task has no upper layer to commit from",
                    ))
                })?;
                let udir = self
                    .ucache
                    .get(upper, &op.path)
                    .map_err(|e| self.gerr(&op.path, e))?;
                let uname = fsx::split_last(&op.path).1;
                match op.kind {
                    NodeKind::File => self.put_upper_file(
                        udir.as_raw_fd(),
                        uname,
                        dir.as_raw_fd(),
                        tmp,
                        op,
                        owner,
                    )?,
                    NodeKind::Symlink => {
                        let t = fsx::readlink_at(udir.as_raw_fd(), uname)
                            .map_err(|e| self.gerr(&op.path, e))?;
                        fsx::symlink_at(&t, dir.as_raw_fd(), tmp)
                            .map_err(|e| self.gerr(&op.path, e))?;
                        if let Some((u, g)) = owner {
                            chown_ok(fsx::lchown_at(dir.as_raw_fd(), tmp, u, g))
                                .map_err(|e| self.gerr(&op.path, e))?;
                        }
                    }
                    _ => {
                        fsx::mkdir_at(dir.as_raw_fd(), tmp, 0o700)
                            .map_err(|e| self.gerr(&op.path, e))?;
                        let tfd = fsx::open_subdir(dir.as_raw_fd(), tmp)
                            .map_err(|e| self.gerr(&op.path, e))?;
                        let usub = fsx::open_subdir(udir.as_raw_fd(), uname)
                            .map_err(|e| self.gerr(&op.path, e))?;
                        for entry in &op.tree {
                            self.stage_entry(&usub, &tfd, op, entry)?;
                        }
                        // Permissions last and deepest first: a 0500 folder
                        // would refuse its own children.
                        for entry in op.tree.iter().rev().filter(|e| e.kind == NodeKind::Dir) {
                            let full = fsx::join(&op.path, &entry.rel);
                            fsx::open_dir_at(&tfd, &entry.rel)
                                .and_then(|f| set_dir_meta(&f, entry.perm, self.new_owner))
                                .map_err(|e| self.gerr(&full, e))?;
                        }
                        set_dir_meta(&tfd, op.perm, owner).map_err(|e| self.gerr(&op.path, e))?;
                    }
                }
            }
            Source::None => {}
        }
        // A file the agent edited keeps the user's ACL and extended
        // attributes (the new content goes in a new inode): an ACL that kept
        // other users out must still keep them out. The agent's own
        // attributes never come along. The ACL only while the mode is the
        // one it was made for.
        if let (Some(o), Source::Upper | Source::Merged) = (&op.orig, &op.source) {
            if o.kind == NodeKind::File && op.kind == NodeKind::File {
                let name = fsx::split_last(&op.path).1;
                let orig = fsx::open_file_at(dir.as_raw_fd(), name);
                let new = fsx::open_file_at(dir.as_raw_fd(), tmp);
                // An original we cannot open (mode 0200) has nothing we
                // could read back either.
                if let (Ok(orig), Ok(new)) = (orig, new) {
                    // Not the user's file capabilities: they were granted
                    // to the user's content, not the agent's.
                    fsx::copy_xattrs(
                        orig.as_raw_fd(),
                        new.as_raw_fd(),
                        op.perm & 0o777 == o.perm & 0o777,
                        false,
                    );
                }
            }
        }
        Ok(())
    }

    fn put_upper_file(
        &self,
        udir: RawFd,
        uname: &[u8],
        dir: RawFd,
        tmp: &[u8],
        op: &Op,
        owner: Option<(u32, u32)>,
    ) -> Result<(), Error> {
        let uf = fsx::open_file_at(udir, uname).map_err(|e| self.gerr(&op.path, e))?;
        let ust = fsx::fstat(uf.as_raw_fd()).map_err(|e| self.gerr(&op.path, e))?;
        // The review's content hash, of exactly the bytes copied.
        let mut got = [0u8; 32];
        write_file_with(dir, tmp, op.perm, owner, Some(&ust), |f| {
            got = content::copy(&uf, f)?;
            Ok(())
        })
        .map_err(|e| self.gerr(&op.path, e))?;
        if op.hash.is_some_and(|h| h != got) {
            return Err(Error::ReviewMismatch {
                path: fsx::rel_display(self.grant, &op.path),
            });
        }
        Ok(())
    }

    fn stage_entry(
        &self,
        usub: &OwnedFd,
        tfd: &OwnedFd,
        op: &Op,
        e: &TreeEntry,
    ) -> Result<(), Error> {
        let full = fsx::join(&op.path, &e.rel);
        let (uparent, uname) = parent_of(usub, &e.rel).map_err(|x| self.gerr(&full, x))?;
        let (tparent, tname) = parent_of(tfd, &e.rel).map_err(|x| self.gerr(&full, x))?;
        let owner = self.new_owner;
        match e.kind {
            NodeKind::Dir => {
                fsx::mkdir_at(tparent.as_raw_fd(), tname, 0o700)
                    .map_err(|x| self.gerr(&full, x))?;
            }
            NodeKind::File => {
                // Not `..op.clone()`: that copied the folder's whole list
                // once per file in it (minutes for 200,000 new files).
                let sub = Op {
                    path: full.clone(),
                    action: op.action,
                    source: op.source.clone(),
                    kind: op.kind,
                    orig: op.orig.clone(),
                    // As reviewed, less the user's umask (see `plan`).
                    perm: e.perm,
                    hash: e.hash,
                    tree: Vec::new(),
                    backed_up: op.backed_up,
                    forced: false,
                };
                self.put_upper_file(
                    uparent.as_raw_fd(),
                    uname,
                    tparent.as_raw_fd(),
                    tname,
                    &sub,
                    owner,
                )?;
            }
            NodeKind::Symlink => {
                let t = fsx::readlink_at(uparent.as_raw_fd(), uname)
                    .map_err(|x| self.gerr(&full, x))?;
                fsx::symlink_at(&t, tparent.as_raw_fd(), tname).map_err(|x| self.gerr(&full, x))?;
                if let Some((u, g)) = owner {
                    chown_ok(fsx::lchown_at(tparent.as_raw_fd(), tname, u, g))
                        .map_err(|x| self.gerr(&full, x))?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Phase 3: renames and removals, each target checked just before.
    fn apply(&mut self) -> Result<(), Error> {
        self.gcache = ParentCache::default();
        for k in 0..self.journal.ops.len() {
            let op = self.journal.ops[k].clone();
            let dir = self
                .gcache
                .get(&self.root, &op.path)
                .map_err(|e| self.gerr(&op.path, e))?;
            let name = fsx::split_last(&op.path).1;
            let cur = fsx::lstat_opt(dir.as_raw_fd(), name).map_err(|e| self.gerr(&op.path, e))?;
            let still = match (&op.orig, &cur) {
                (None, None) => true,
                (Some(o), Some(st)) => {
                    still_orig(o, st)
                        // A folder that goes away: nothing new or changed
                        // inside it since the task started, checked again
                        // now (the user may have saved a file in it since
                        // the plan).
                        && !(o.kind == NodeKind::Dir
                            && !op.forced
                            && !(op.action == Action::Put && op.kind == NodeKind::Dir)
                            && op.action != Action::Chmod
                            && match self.snapshot {
                                Some(snap) => fsx::open_subdir(dir.as_raw_fd(), name)
                                    .and_then(|sub| subtree_changed(&sub, &op.path, snap))
                                    .map_err(|e| self.gerr(&op.path, e))?,
                                None => false,
                            })
                }
                _ => false,
            };
            if !still {
                return Err(Error::Conflict {
                    path: fsx::rel_display(self.grant, &op.path),
                });
            }
            let d = dir.as_raw_fd();
            let aside = aside_name(&self.journal, k);
            let tmp = temp_name(&self.journal, k);
            let in_place =
                matches!(&op.orig, Some(o) if o.kind != NodeKind::Dir) && op.kind != NodeKind::Dir;
            match op.action {
                Action::Put if in_place => {
                    // Keep the original's inode under a second name, then
                    // replace atomically: readers see old or new, never none.
                    if fsx::link_at(d, name, &aside).is_err() {
                        fsx::rename_at(d, name, d, &aside).map_err(|e| self.gerr(&op.path, e))?;
                    }
                    self.steps.step()?;
                    fsx::rename_at(d, &tmp, d, name).map_err(|e| self.gerr(&op.path, e))?;
                }
                Action::Put => {
                    if op.orig.is_some() {
                        fsx::rename_at(d, name, d, &aside).map_err(|e| self.gerr(&op.path, e))?;
                        self.steps.step()?;
                    }
                    fsx::rename_noreplace(d, &tmp, name).map_err(|e| self.gerr(&op.path, e))?;
                }
                Action::Remove => {
                    fsx::rename_at(d, name, d, &aside).map_err(|e| self.gerr(&op.path, e))?
                }
                Action::Chmod => fsx::open_subdir(d, name)
                    .and_then(|f| fsx::fchmod(f.as_raw_fd(), op.perm))
                    .map_err(|e| self.gerr(&op.path, e))?,
            }
            self.steps.step()?;
        }
        // The renames must be durable before the commit point.
        fsx::syncfs(self.root.as_raw_fd()).map_err(|e| self.gerr(b"", e))?;
        self.journal.stage = Stage::Applied;
        self.write_journal()
    }
}

/// Without root, a file cannot be given away: keep it ours then.
fn chown_ok(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && nix::unistd::geteuid().as_raw() != 0 => {
            Ok(())
        }
        r => r,
    }
}

/// Writes a new file `name` in `dir` from `src`: owner, permission bits
/// (`perm`, already stripped), times of `times_of` when given, fsynced.
fn write_file(
    dir: RawFd,
    name: &[u8],
    src: &mut impl Read,
    perm: u32,
    owner: Option<(u32, u32)>,
    times_of: Option<&libc::stat>,
) -> std::io::Result<()> {
    write_file_with(dir, name, perm, owner, times_of, |f| {
        copy_sparse(src, f).map(|_| ())
    })
}

/// [`write_file`] with the content written by `fill`.
fn write_file_with(
    dir: RawFd,
    name: &[u8],
    perm: u32,
    owner: Option<(u32, u32)>,
    times_of: Option<&libc::stat>,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut f = fsx::create_file_at(dir, name, 0o600)?;
    fill(&mut f)?;
    f.flush()?;
    if let Some((u, g)) = owner {
        chown_ok(fsx::lchown_at(dir, name, u, g))?;
    }
    // chmod after chown: chown clears set-id bits, and ours are stripped anyway.
    fsx::fchmod(f.as_raw_fd(), perm)?;
    if let Some(st) = times_of {
        fsx::set_times_at(dir, name, st)?;
    }
    // Made durable by the syncfs at the end of the prepare phase.
    Ok(())
}

/// Copies `src` to the new, empty file `dst`, leaving every block of zeros
/// a hole: an agent's sparse file (`truncate -s 100G`) takes no more room
/// in the real folder than it took in the sandbox. The content is the same
/// byte for byte.
pub(crate) fn copy_sparse(src: &mut impl Read, dst: &mut std::fs::File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom, Write};
    const BLOCK: usize = 4096;
    let mut buf = vec![0u8; 32 * BLOCK];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for block in buf[..n].chunks(BLOCK) {
            if block.iter().all(|&b| b == 0) {
                dst.seek(SeekFrom::Current(block.len() as i64))?;
            } else {
                dst.write_all(block)?;
            }
        }
        total += n as u64;
    }
    // A trailing hole needs the length set; so does an all-zero file.
    dst.set_len(total)?;
    Ok(total)
}

fn set_dir_meta(dir: &OwnedFd, perm: u32, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    if let Some((u, g)) = owner {
        // SAFETY: fchown on our own fd.
        let r = unsafe { libc::fchown(dir.as_raw_fd(), u, g) };
        chown_ok(if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        })?;
    }
    fsx::fchmod(dir.as_raw_fd(), perm)
}

fn map_copy_err(e: std::io::Error, backup: &Path, grant: &Path, rel: &[u8]) -> Error {
    if is_enospc(&e) {
        Error::DiskFull {
            path: backup.to_path_buf(),
        }
    } else {
        Error::io(fsx::rel_display(grant, rel), e)
    }
}

/// Copies the node `sname` of `sdir` (file, symlink or folder tree) to the
/// new name `dname` of `ddir`, keeping permissions, owner (where allowed)
/// and times. Not synced: the caller syncs the file system once.
/// `perm_override` sets the top node's permissions.
pub(crate) fn copy_node(
    sdir: RawFd,
    sname: &[u8],
    ddir: RawFd,
    dname: &[u8],
    perm_override: Option<u32>,
) -> std::io::Result<()> {
    let st = fsx::lstat_at(sdir, sname)?;
    let perm = perm_override.unwrap_or(st.st_mode & 0o7777);
    match NodeKind::from_mode(st.st_mode) {
        NodeKind::File => {
            let src = fsx::open_file_at(sdir, sname)?;
            let f = fsx::create_file_at(ddir, dname, 0o600)?;
            // Only the data is read: a backup of a big sparse file costs
            // what it holds.
            content::copy(&src, &f)?;
            chown_ok(fsx::lchown_at(ddir, dname, st.st_uid, st.st_gid))?;
            fsx::fchmod(f.as_raw_fd(), perm)?;
            // Backups and what undo restores from them keep ACLs and
            // extended attributes.
            fsx::copy_xattrs(
                src.as_raw_fd(),
                f.as_raw_fd(),
                perm_override.is_none(),
                true,
            );
            fsx::set_times_at(ddir, dname, &st)
        }
        NodeKind::Symlink => {
            let t = fsx::readlink_at(sdir, sname)?;
            fsx::symlink_at(&t, ddir, dname)?;
            chown_ok(fsx::lchown_at(ddir, dname, st.st_uid, st.st_gid))?;
            fsx::set_times_at(ddir, dname, &st)
        }
        NodeKind::Dir => {
            fsx::mkdir_at(ddir, dname, 0o700)?;
            let s = fsx::open_subdir(sdir, sname)?;
            let d = fsx::open_subdir(ddir, dname)?;
            for child in fsx::list_dir(&s)? {
                copy_node(s.as_raw_fd(), &child, d.as_raw_fd(), &child, None)?;
            }
            chown_ok(fsx::lchown_at(ddir, dname, st.st_uid, st.st_gid))?;
            fsx::fchmod(d.as_raw_fd(), perm)?;
            fsx::copy_xattrs(s.as_raw_fd(), d.as_raw_fd(), perm_override.is_none(), true);
            fsx::set_times_at(ddir, dname, &st)
        }
        // Special files are never part of a grant we write; skip them.
        _ => Ok(()),
    }
}

/// Undoes whatever part of the journal's transaction reached the grant,
/// then removes temporaries, backups of this transaction and the journal.
fn roll_back(task: &Path, j: &Journal, steps: &mut Steps) -> Result<Vec<PathBuf>, Error> {
    let grant = &j.grant;
    let mut set_aside = Vec::new();
    let root = fsx::open_dir_path(grant).map_err(|e| Error::io(grant, e))?;
    let prepared = j.stage != Stage::Planned;
    for (k, op) in j.ops.iter().enumerate().rev() {
        let err = |e| Error::io(fsx::rel_display(grant, &op.path), e);
        let (dir, name) = match parent_of(&root, &op.path) {
            Ok(x) => x,
            // The parent is gone: nothing of ours can be inside it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(err(e)),
        };
        let d = dir.as_raw_fd();
        fsx::remove_tree_at(d, &temp_name(j, k)).map_err(err)?;
        if !prepared {
            // Before `prepared` nothing but temporaries reached the grant.
            continue;
        }
        let aside = aside_name(j, k);
        let cur = fsx::lstat_opt(d, name).map_err(err)?;
        let kept = fsx::lstat_opt(d, &aside).map_err(err)?;
        let mut ours = cur.is_some_and(|st| Some(st.st_ino) == j.temp_inos[k]);
        // What the commit placed, changed since (the user saved a file in
        // it, or into it, after the commit was cut off): set aside under a
        // name of its own and said, never removed (pass 19B).
        if ours
            && j.temp_prints
                .get(k)
                .copied()
                .flatten()
                .is_some_and(|p| print_of(d, name).map_or(true, |now| now != p))
        {
            let to = keep_aside(d, name, j.seq).map_err(err)?;
            set_aside.push(fsx::rel_display(
                grant,
                &fsx::join(fsx::split_last(&op.path).0, &to),
            ));
            ours = false;
        }
        match op.action {
            Action::Chmod => {
                if let (Some(o), Some(st)) = (&op.orig, cur) {
                    if st.st_ino == o.ino {
                        let f = fsx::open_subdir(d, name).map_err(err)?;
                        fsx::fchmod(f.as_raw_fd(), o.perm).map_err(err)?;
                    }
                }
            }
            Action::Put | Action::Remove => match (kept, cur) {
                // A hard link of the original, still in place: drop the link.
                (Some(a), Some(c)) if a.st_ino == c.st_ino => {
                    fsx::unlink_at(d, &aside, false).map_err(err)?
                }
                (Some(a), cur) => {
                    if ours && (fsx::is_dir(&a) || cur.is_some_and(|c| fsx::is_dir(&c))) {
                        fsx::remove_tree_at(d, name).map_err(err)?;
                    }
                    if ours || fsx::lstat_opt(d, name).map_err(err)?.is_none() {
                        fsx::rename_at(d, &aside, d, name).map_err(err)?;
                    }
                    // Otherwise someone else put something there: the
                    // original stays set aside, never renamed over theirs.
                }
                (None, Some(_)) if ours => fsx::remove_tree_at(d, name).map_err(err)?,
                _ => {}
            },
        }
        steps.step()?;
    }
    fsx::syncfs(root.as_raw_fd()).map_err(|e| Error::io(grant, e))?;
    refresh_snapshot_ctimes(task, j, &root)?;
    if let Some(orig) = j.undo_of {
        refresh_record_ctimes(task, orig, j, &root)?;
    }
    // The copies of this transaction are not needed: nothing was replaced.
    let cdir = commit_dir(task, j.seq);
    if cdir.exists() {
        std::fs::remove_dir_all(&cdir).map_err(|e| Error::io(&cdir, e))?;
    }
    let jp = journal_path(task);
    std::fs::remove_file(&jp).map_err(|e| Error::io(&jp, e))?;
    std::fs::File::open(task)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(task, e))?;
    steps.step()?;
    Ok(set_aside)
}

/// Renames `name` in `dir` to `NAME.airlock-kept-SEQ` (or `-SEQ-2`, …:
/// never over anything); returns the new name's path under the folder.
fn keep_aside(dir: RawFd, name: &[u8], seq: u64) -> std::io::Result<Vec<u8>> {
    for i in 1u32..1000 {
        let mut suffix = format!(".airlock-kept-{seq}");
        if i > 1 {
            suffix.push_str(&format!("-{i}"));
        }
        // Within a name's 255 bytes, however long the agent made it (pass
        // 20B: ENAMETOOLONG left the recovery failing for good).
        let stem = &name[..name.len().min(255 - suffix.len())];
        let mut to = stem.to_vec();
        to.extend_from_slice(suffix.as_bytes());
        match fsx::rename_noreplace(dir, name, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::EEXIST))
}

/// Setting an original aside and back (rename, link) moves its ctime
/// although nothing changed: the base snapshot follows, for the originals
/// that are still the same inode with the same size and mtime, so a retry
/// does not see a false conflict.
fn refresh_snapshot_ctimes(task: &Path, j: &Journal, root: &OwnedFd) -> Result<(), Error> {
    let sp = task.join(format!("base-{}.snap", j.index));
    if !sp.exists() {
        return Ok(());
    }
    let mut snap = Snapshot::load(&sp)?;
    let mut changed = false;
    for op in &j.ops {
        let Some(o) = &op.orig else { continue };
        let Ok((dir, name)) = parent_of(root, &op.path) else {
            continue;
        };
        let Ok(Some(st)) = fsx::lstat_opt(dir.as_raw_fd(), name) else {
            continue;
        };
        if let Some(m) = snap.entries.get_mut(&op.path) {
            let now = Meta::from_stat(&st);
            if st.st_ino == o.ino
                && m.ino == now.ino
                && m.mode == now.mode
                && m.size == now.size
                && m.mtime == now.mtime
                && m.ctime != now.ctime
            {
                m.ctime = now.ctime;
                changed = true;
            }
        }
    }
    if changed {
        snap.save(&sp)?;
    }
    Ok(())
}

/// An undo rolled back has set what commit `orig` placed aside and back,
/// which moved their ctimes: its record follows for entries that are
/// still the same inode with the same mode, size and mtime, or every later
/// undo would see a change that nobody made.
fn refresh_record_ctimes(task: &Path, orig: u64, j: &Journal, root: &OwnedFd) -> Result<(), Error> {
    let rp = commit_dir(task, orig).join("record.json");
    let Ok(data) = std::fs::read(&rp) else {
        return Ok(());
    };
    let mut rec: Record = serde_json::from_slice(&data).map_err(|e| Error::Manifest {
        path: rp.clone(),
        message: e.to_string(),
    })?;
    let mut changed = false;
    for (op, placed) in rec.ops.iter().zip(rec.placed.iter_mut()) {
        let Some(p) = placed else { continue };
        if !j.ops.iter().any(|u| u.path == op.path) {
            continue;
        }
        let Ok((dir, name)) = parent_of(root, &op.path) else {
            continue;
        };
        let Ok(Some(st)) = fsx::lstat_opt(dir.as_raw_fd(), name) else {
            continue;
        };
        if st.st_ino == p.ino
            && st.st_mode == p.mode
            && st.st_size as u64 == p.size
            && p.mtime == Some((st.st_mtime, st.st_mtime_nsec))
            && p.ctime != (st.st_ctime, st.st_ctime_nsec)
        {
            p.ctime = (st.st_ctime, st.st_ctime_nsec);
            changed = true;
        }
    }
    if changed {
        let data =
            serde_json::to_vec(&rec).map_err(|e| Error::io(&rp, std::io::Error::other(e)))?;
        crate::dirs::write_atomic(&rp, &data)?;
    }
    Ok(())
}

/// What a path holds now, for the undo record.
fn placed_at(
    cache: &mut ParentCache,
    root: &OwnedFd,
    rel: &[u8],
) -> std::io::Result<Option<Placed>> {
    let dir = cache.get(root, rel)?;
    let name = fsx::split_last(rel).1;
    let Some(st) = fsx::lstat_opt(dir.as_raw_fd(), name)? else {
        return Ok(None);
    };
    let mut beneath = Vec::new();
    if fsx::is_dir(&st) {
        list_tree(&fsx::open_subdir(dir.as_raw_fd(), name)?, b"", &mut beneath)?;
    }
    Ok(Some(Placed {
        ino: st.st_ino,
        mode: st.st_mode,
        size: st.st_size as u64,
        ctime: (st.st_ctime, st.st_ctime_nsec),
        mtime: Some((st.st_mtime, st.st_mtime_nsec)),
        beneath,
    }))
}

fn list_tree(
    dir: &OwnedFd,
    rel: &[u8],
    out: &mut Vec<(Vec<u8>, u64, (i64, i64))>,
) -> std::io::Result<()> {
    for name in fsx::list_dir(dir)? {
        let child = fsx::join(rel, &name);
        let st = fsx::lstat_at(dir.as_raw_fd(), &name)?;
        out.push((child.clone(), st.st_ino, (st.st_ctime, st.st_ctime_nsec)));
        if fsx::is_dir(&st) {
            list_tree(&fsx::open_subdir(dir.as_raw_fd(), &name)?, &child, out)?;
        }
    }
    Ok(())
}

/// Phase 4 (also run by recovery after the commit point): the undo record,
/// the base snapshot brought up to date, the journal removed.
fn finish(task: &Path, j: &Journal, steps: &mut Steps) -> Result<(), Error> {
    let root = fsx::open_dir_path(&j.grant).map_err(|e| Error::io(&j.grant, e))?;
    // The set-aside originals go: their copies for undo are in the task.
    let mut cache = ParentCache::default();
    for (k, op) in j.ops.iter().enumerate() {
        let err = |e| Error::io(fsx::rel_display(&j.grant, &op.path), e);
        if let Ok(dir) = cache.get(&root, &op.path) {
            fsx::remove_tree_at(dir.as_raw_fd(), &aside_name(j, k)).map_err(err)?;
        }
    }
    fsx::syncfs(root.as_raw_fd()).map_err(|e| Error::io(&j.grant, e))?;
    steps.step()?;
    let mut placed = Vec::with_capacity(j.ops.len());
    for op in &j.ops {
        placed.push(
            placed_at(&mut cache, &root, &op.path)
                .map_err(|e| Error::io(fsx::rel_display(&j.grant, &op.path), e))?,
        );
    }
    let rec = Record {
        seq: j.seq,
        index: j.index,
        grant: j.grant.clone(),
        undo_of: j.undo_of,
        ops: j.ops.clone(),
        placed,
        undone: false,
    };
    let rp = commit_dir(task, j.seq).join("record.json");
    crate::dirs::create_private_dir(&commit_dir(task, j.seq))?;
    let data = serde_json::to_vec(&rec).map_err(|e| Error::io(&rp, std::io::Error::other(e)))?;
    crate::dirs::write_atomic(&rp, &data)?;
    steps.step()?;
    if let Some(orig) = j.undo_of {
        super::undo::mark_undone(task, orig)?;
    }
    let sp = task.join(format!("base-{}.snap", j.index));
    if sp.exists() {
        let mut snap = Snapshot::load(&sp)?;
        for op in &j.ops {
            snap.remove_tree(&op.path);
            if let Ok((dir, name)) = parent_of(&root, &op.path) {
                if let Ok(Some(st)) = fsx::lstat_opt(dir.as_raw_fd(), name) {
                    snap.set(&op.path, &st);
                    if fsx::is_dir(&st) && op.action == Action::Put {
                        add_tree(&mut snap, dir.as_raw_fd(), name, &op.path);
                    }
                }
            }
        }
        snap.save(&sp)?;
        steps.step()?;
    }
    let jp = journal_path(task);
    std::fs::remove_file(&jp).map_err(|e| Error::io(&jp, e))?;
    std::fs::File::open(task)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(task, e))?;
    steps.step()
}

fn add_tree(snap: &mut Snapshot, dir: RawFd, name: &[u8], rel: &[u8]) {
    let Ok(sub) = fsx::open_subdir(dir, name) else {
        return;
    };
    let Ok(names) = fsx::list_dir(&sub) else {
        return;
    };
    for n in names {
        let child = fsx::join(rel, &n);
        if let Ok(st) = fsx::lstat_at(sub.as_raw_fd(), &n) {
            snap.entries.insert(child.clone(), Meta::from_stat(&st));
            if fsx::is_dir(&st) {
                add_tree(snap, sub.as_raw_fd(), &n, &child);
            }
        }
    }
}

/// Completes or rolls back an interrupted commit (or undo) of a task. The
/// supervisor calls it at start for every task folder; the CLI before each
/// review command.
pub fn recover(task_dir: &TaskDir) -> Result<RecoveryOutcome, Error> {
    if !journal_path(task_dir.path()).exists() {
        return Ok(RecoveryOutcome::Clean);
    }
    // Only under the commit lock: the journal may belong to a commit that
    // is running in another process (the window, a second terminal), and
    // rolling that back underneath it would delete the user's originals.
    let Ok(_lock) = lock(task_dir.path()) else {
        return Ok(RecoveryOutcome::Busy);
    };
    super::with_deep_stack(|| {
        recover_with(
            task_dir.path(),
            &mut Steps {
                n: 0,
                stop_after: None,
            },
        )
    })
}

fn recover_with(task: &Path, steps: &mut Steps) -> Result<RecoveryOutcome, Error> {
    let jp = journal_path(task);
    let data = match std::fs::read(&jp) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RecoveryOutcome::Clean),
        Err(e) => return Err(Error::io(&jp, e)),
    };
    let j: Journal = serde_json::from_slice(&data).map_err(|e| Error::Manifest {
        path: jp.clone(),
        message: e.to_string(),
    })?;
    if j.stage == Stage::Applied {
        finish(task, &j, steps)?;
        Ok(RecoveryOutcome::Completed { seq: j.seq })
    } else {
        let kept = roll_back(task, &j, steps)?;
        Ok(RecoveryOutcome::RolledBack { seq: j.seq, kept })
    }
}

/// Contents of hunk selections, by op index.
type Merged = BTreeMap<usize, Vec<u8>>;

/// Plans the ops of a commit; returns them with merged contents.
fn plan(
    root: &OwnedFd,
    cs: &ChangeSet,
    sel: &Selection,
    snapshot: Option<&Snapshot>,
    opts: &CommitOptions,
    report: &mut CommitReport,
) -> Result<(Vec<Op>, Merged), Error> {
    sel.validate(cs)?;
    let picked = select::selected(cs, sel);
    let mut ops: Vec<Op> = Vec::new();
    // Folder permission changes go last, deepest first, so that a folder
    // made read-only does not refuse the changes inside it.
    let mut chmods: Vec<Op> = Vec::new();
    let mut merged = BTreeMap::new();
    // Folders staged whole (their selected content goes inside) or skipped,
    // found by the ancestors of each path (a scan of the lists per change
    // was quadratic in the number of new folders).
    let mut staged: HashMap<Vec<u8>, (usize, u32)> = HashMap::new();
    let mut skipped: HashSet<Vec<u8>> = HashSet::new();
    let ancestors = |p: &[u8]| -> Vec<usize> {
        p.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(|(i, _)| i)
            .collect()
    };
    for c in cs.changes.iter().filter(|c| c.kind == ChangeKind::Refused) {
        report.refused.push(c.path.clone());
    }
    // The bits a new entry may have: what the user's umask leaves, or in a
    // folder with a default ACL, what that ACL leaves (the kernel ignores
    // the umask there; its chmod must not undo the ACL's restrictions).
    let allowed_in = |dir: RawFd| fsx::default_acl_mode(dir).unwrap_or(!opts.umask & 0o777);
    for (c, choice) in picked {
        let ends = ancestors(&c.path);
        if ends.iter().any(|&e| skipped.contains(&c.path[..e])) {
            continue;
        }
        if let Some((top_len, i, allowed)) = ends
            .iter()
            .find_map(|&e| staged.get(&c.path[..e]).map(|(i, a)| (e, *i, *a)))
        {
            let kind = c.after.as_ref().map(|a| a.kind).unwrap_or(NodeKind::File);
            ops[i].tree.push(TreeEntry {
                rel: c.path[top_len + 1..].to_vec(),
                kind,
                perm: c
                    .after
                    .as_ref()
                    .map(|a| a.perm & allowed)
                    .unwrap_or(0o755 & allowed),
                hash: c.hash,
            });
            report.committed.push(c.path.clone());
            continue;
        }
        let gerr = |e| Error::io(fsx::rel_display(&cs.grant, &c.path), e);
        let conflict = match snapshot {
            Some(s) => is_conflict(root, s, c).map_err(gerr)?,
            None => differs_from_review(root, c).map_err(gerr)?,
        };
        let forced = conflict;
        if conflict && !sel.keep_agent.contains(&c.path) {
            report.conflicts.push(c.path.clone());
            skipped.insert(c.path.clone());
            continue;
        }
        if let (Some(h), Some(r)) = (c.hash, opts.reviewed.get(&c.path)) {
            if h != *r {
                return Err(Error::ReviewMismatch {
                    path: fsx::rel_display(&cs.grant, &c.path),
                });
            }
        }
        let (dir, name) = parent_of(root, &c.path).map_err(gerr)?;
        let orig = fsx::lstat_opt(dir.as_raw_fd(), name)
            .map_err(gerr)?
            .map(|st| orig_of(&st));
        let after = c.after.as_ref();
        let is_new = orig.is_none();
        // Read only where it decides something: new entries, and folders
        // whose contents are staged new (an edited file keeps its mode).
        let allowed = if is_new || after.is_some_and(|a| a.kind == NodeKind::Dir) {
            allowed_in(dir.as_raw_fd())
        } else {
            0o777
        };
        let mut op = Op {
            path: c.path.clone(),
            action: Action::Put,
            source: Source::Upper,
            kind: after.map(|a| a.kind).unwrap_or(NodeKind::File),
            // A special file is never copied (nothing could be restored
            // from a copy of a socket): undo says so instead.
            backed_up: orig.as_ref().is_some_and(|o| !o.kind.is_special()),
            orig,
            perm: after
                .map(|a| {
                    if is_new {
                        a.perm & allowed
                    } else {
                        a.perm & 0o777
                    }
                })
                .unwrap_or(0),
            hash: c.hash,
            tree: Vec::new(),
            forced,
        };
        match (c.kind, after.map(|a| a.kind)) {
            (ChangeKind::Deleted, _) => {
                if op.orig.is_none() {
                    // Already gone: nothing to do.
                    continue;
                }
                op.action = Action::Remove;
                op.source = Source::None;
            }
            (ChangeKind::ModeChanged, Some(NodeKind::Dir)) => {
                op.action = Action::Chmod;
                op.source = Source::None;
                op.backed_up = false;
                report.committed.push(c.path.clone());
                chmods.push(op);
                continue;
            }
            (_, Some(NodeKind::Dir)) => {
                staged.insert(c.path.clone(), (ops.len(), allowed));
            }
            _ => {}
        }
        if let FileChoice::Hunks(h) = &choice {
            let (udir, uname) = parent_of(
                &fsx::open_dir_path(&cs.upper).map_err(|e| Error::io(&cs.upper, e))?,
                &c.path,
            )
            .map_err(gerr)?;
            let mut new = Vec::new();
            fsx::open_file_at(udir.as_raw_fd(), uname)
                .and_then(|mut f| f.read_to_end(&mut new))
                .map_err(gerr)?;
            if c.hash.is_some_and(|hh| content::hash_bytes(&new) != hh) {
                return Err(Error::ReviewMismatch {
                    path: fsx::rel_display(&cs.grant, &c.path),
                });
            }
            let mut old = Vec::new();
            fsx::open_file_at(dir.as_raw_fd(), name)
                .and_then(|mut f| f.read_to_end(&mut old))
                .map_err(gerr)?;
            merged.insert(ops.len(), select::merge(&old, &new, h)?);
            op.source = Source::Merged;
        }
        report.committed.push(c.path.clone());
        ops.push(op);
    }
    ops.extend(chmods.into_iter().rev());
    Ok((ops, merged))
}

/// Commits the approved part of grant `index`'s change set.
///
/// `no_process_alive` is asked first: review and commit only happen once
/// no process of the task can still write to the upper layer. Conflicts
/// are left out (listed in the report) unless in `sel.keep_agent`.
pub fn commit(
    task_dir: &TaskDir,
    index: usize,
    cs: &ChangeSet,
    sel: &Selection,
    snapshot: Option<&Snapshot>,
    no_process_alive: &dyn Fn() -> bool,
    opts: &CommitOptions,
) -> Result<CommitReport, Error> {
    if !no_process_alive() {
        return Err(Error::Invalid(crate::i18n::gettext(
            "the task is still running: its changes can be committed once it has ended",
        )));
    }
    super::with_deep_stack(|| commit_here(task_dir, index, cs, sel, snapshot, opts))
}

fn commit_here(
    task_dir: &TaskDir,
    index: usize,
    cs: &ChangeSet,
    sel: &Selection,
    snapshot: Option<&Snapshot>,
    opts: &CommitOptions,
) -> Result<CommitReport, Error> {
    let task = task_dir.path();
    let _lock = lock(task)?;
    recover_with(
        task,
        &mut Steps {
            n: 0,
            stop_after: None,
        },
    )?;
    let root = fsx::open_dir_path(&cs.grant).map_err(|e| Error::io(&cs.grant, e))?;
    if !fsx::openat2_available(&root) {
        return Err(Error::Unsupported(crate::i18n::gettext(
            "this kernel lacks openat2 (Linux 5.6 or newer is needed to commit safely)",
        )));
    }
    let mut report = CommitReport::default();
    let (ops, merged) = plan(&root, cs, sel, snapshot, opts, &mut report)?;
    let upper = fsx::open_dir_path(&cs.upper).map_err(|e| Error::io(&cs.upper, e))?;
    if ops.is_empty() {
        return Ok(report);
    }
    report.seq = run(
        task,
        index,
        &cs.grant,
        root,
        Some(upper),
        ops,
        merged,
        None,
        snapshot,
        opts.stop_after,
    )?;
    Ok(report)
}

/// Runs a planned transaction (a commit, or an undo) to its end, rolling
/// it back on any error except the crash-test stop.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    task: &Path,
    index: usize,
    grant: &Path,
    root: OwnedFd,
    upper: Option<OwnedFd>,
    ops: Vec<Op>,
    merged: BTreeMap<usize, Vec<u8>>,
    undo_of: Option<u64>,
    snapshot: Option<&Snapshot>,
    stop_after: Option<u64>,
) -> Result<u64, Error> {
    let seq = next_seq(task);
    let n = ops.len();
    let new_owner = if nix::unistd::geteuid().is_root() {
        fsx::fstat(root.as_raw_fd())
            .ok()
            .map(|st| (st.st_uid, st.st_gid))
    } else {
        None
    };
    let mut t = Txn {
        task,
        grant,
        root,
        upper,
        new_owner,
        merged,
        journal: Journal {
            seq,
            index,
            grant: grant.to_path_buf(),
            undo_of,
            ops,
            stage: Stage::Planned,
            temp_inos: vec![None; n],
            temp_prints: vec![None; n],
            nonce: nonce(),
        },
        steps: Steps { n: 0, stop_after },
        gcache: ParentCache::default(),
        ucache: ParentCache::default(),
        snapshot,
    };
    let result = (|| {
        t.write_journal()?;
        t.prepare()?;
        t.apply()
    })();
    match result {
        Ok(()) => {}
        Err(Error::CommitStopped(k)) => return Err(Error::CommitStopped(k)),
        Err(e) => {
            // The journal is the truth: roll back exactly what it says.
            if journal_path(task).exists() {
                match recover_with(
                    task,
                    &mut Steps {
                        n: 0,
                        stop_after: None,
                    },
                ) {
                    // The error came after the commit point (the journal
                    // already said `applied`): the commit was finished, and
                    // saying "rolled back" would be false.
                    Ok(RecoveryOutcome::Completed { seq }) => {
                        // Not `e` itself: its text says "rolled back".
                        tracing::debug!("commit {seq} finished by recovery after an error past its commit point");
                        return Ok(seq);
                    }
                    Ok(_) => {}
                    Err(rb) => tracing::error!("rollback after a failed commit failed too: {rb}"),
                }
            }
            return Err(match e {
                Error::DiskFull { path } if undo_of.is_some() => Error::UndoDiskFull { path },
                e => e,
            });
        }
    }
    finish(task, &t.journal, &mut t.steps)?;
    Ok(seq)
}

/// Recovery on the current thread (the caller holds the lock).
pub(crate) fn recover_here(task: &Path) -> Result<RecoveryOutcome, Error> {
    recover_with(
        task,
        &mut Steps {
            n: 0,
            stop_after: None,
        },
    )
}

/// Test support: recovery that counts its own steps, so a crash during
/// recovery can be tested too.
pub fn recover_stopping_after(
    task_dir: &TaskDir,
    stop_after: u64,
) -> Result<RecoveryOutcome, Error> {
    super::with_deep_stack(|| {
        recover_with(
            task_dir.path(),
            &mut Steps {
                n: 0,
                stop_after: Some(stop_after),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_sparse_copy_keeps_the_content_and_the_holes() {
        let dir = tempfile::tempdir().unwrap();
        // 8 MiB of zeros, a few bytes, 8 MiB of zeros: a trailing hole too.
        let mut data = vec![0u8; 16 << 20];
        data[(8 << 20) + 5..(8 << 20) + 10].copy_from_slice(b"hello");
        let path = dir.path().join("out");
        let mut f = std::fs::File::create(&path).unwrap();
        assert_eq!(
            copy_sparse(&mut &data[..], &mut f).unwrap(),
            data.len() as u64
        );
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let m = std::fs::metadata(&path).unwrap();
        assert!(
            m.blocks() * 512 <= 64 << 10,
            "{} bytes allocated",
            m.blocks() * 512
        );
        // Nothing but zeros, and nothing at all.
        for len in [0usize, 3, 4096, 10000] {
            let zeros = vec![0u8; len];
            let mut f = std::fs::File::create(&path).unwrap();
            copy_sparse(&mut &zeros[..], &mut f).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), zeros);
        }
    }
}
