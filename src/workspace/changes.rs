//! The change set of one read-write grant, read from the overlay's upper
//! layer. Only the upper layer is walked (plus the lower entries it
//! shadows), so the cost follows the number of changes, not the size of
//! the user's folder.
//!
//! Upper-layer conventions (overlayfs with `userxattr`, also the
//! `trusted.` spellings): a whiteout is a 0/0 character device, or a
//! zero-size file with `overlay.whiteout`; a folder with `overlay.opaque`
//! = `y` hides everything of the lower folder (`x` only says the folder
//! holds xattr whiteouts). `redirect_dir` and `metacopy` are off, so a
//! renamed folder is a new copy plus a whiteout, and a copied-up file
//! holds its whole content.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::content;
use super::fsx;
use super::risk::{self, Risk};
use super::snapshot::Snapshot;
use crate::Error;

/// What kind of file system object a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl NodeKind {
    pub fn from_mode(mode: u32) -> NodeKind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => NodeKind::Dir,
            libc::S_IFLNK => NodeKind::Symlink,
            libc::S_IFIFO => NodeKind::Fifo,
            libc::S_IFSOCK => NodeKind::Socket,
            libc::S_IFCHR => NodeKind::CharDevice,
            libc::S_IFBLK => NodeKind::BlockDevice,
            _ => NodeKind::File,
        }
    }
    pub fn is_special(self) -> bool {
        matches!(
            self,
            NodeKind::Fifo | NodeKind::Socket | NodeKind::CharDevice | NodeKind::BlockDevice
        )
    }
}

/// One side (before = lower, after = upper) of a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits, including set-uid/set-gid/sticky.
    pub perm: u32,
    pub size: u64,
    #[serde(with = "bytes_opt", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<u8>>,
    pub ino: u64,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Node {
    fn from_stat(st: &libc::stat, target: Option<Vec<u8>>) -> Node {
        Node {
            kind: NodeKind::from_mode(st.st_mode),
            perm: st.st_mode & 0o7777,
            size: st.st_size as u64,
            target,
            ino: st.st_ino,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    /// File ↔ folder ↔ symlink.
    TypeChanged,
    /// Same content, other permission bits.
    ModeChanged,
    /// A device node, fifo or socket: listed, never committed.
    Refused,
}

/// One changed path of a grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    #[serde(with = "bytes")]
    pub path: Vec<u8>,
    pub kind: ChangeKind,
    pub before: Option<Node>,
    pub after: Option<Node>,
    /// SHA-256 of the agent's file as reviewed; commit refuses to copy a
    /// file whose content no longer matches it.
    #[serde(with = "hex_opt", default)]
    pub hash: Option<[u8; 32]>,
    /// For a deleted (or replaced) folder: how many entries go with it.
    pub deleted_entries: u64,
    pub risks: Vec<Risk>,
    /// The user's file changed after the task started.
    pub conflict: bool,
}

impl Change {
    /// Escaped path for display.
    pub fn display(&self) -> String {
        super::names::escape(&self.path)
    }
}

/// All changes of one grant, sorted by path (parents before children).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeSet {
    pub grant: PathBuf,
    pub upper: PathBuf,
    pub changes: Vec<Change>,
}

impl ChangeSet {
    /// Refuses every change under `hidden` (paths a task may never see, such
    /// as `~/.ssh`): they are listed as refused and never committed, whether
    /// or not the folder existed when the task ran.
    pub fn refuse_hidden(&mut self, hidden: &[PathBuf]) {
        use std::os::unix::ffi::OsStrExt;
        for c in &mut self.changes {
            let real = self.grant.join(std::ffi::OsStr::from_bytes(&c.path));
            if hidden.iter().any(|h| real.starts_with(h)) {
                c.kind = ChangeKind::Refused;
                c.risks = vec![Risk::HiddenPath];
            }
        }
    }
}

struct Walker<'a> {
    grant: &'a Path,
    out: Vec<Change>,
}

const OVERLAY_PREFIXES: [&str; 2] = ["user.overlay.", "trusted.overlay."];

fn overlay_xattr(fd: RawFd, name: &str) -> Option<Vec<u8>> {
    OVERLAY_PREFIXES
        .iter()
        .find_map(|p| fsx::fgetxattr(fd, &format!("{p}{name}")))
}

fn is_whiteout(dir: RawFd, name: &[u8], st: &libc::stat) -> bool {
    if st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0 {
        return true;
    }
    if fsx::is_reg(st) && st.st_size == 0 {
        if let Ok(f) = fsx::open_file_at(dir, name) {
            return overlay_xattr(f.as_raw_fd(), "whiteout").is_some();
        }
    }
    false
}

fn is_package_json(path: &[u8]) -> bool {
    path.rsplit(|&b| b == b'/').next() == Some(b"package.json")
}

/// Whether a `package.json` edit changes its scripts; one too large to
/// read for this counts as changed.
fn scripts_changed(old: Option<&std::fs::File>, new: &std::fs::File) -> bool {
    const MAX: u64 = 4 << 20;
    // From the start, whatever read the file before (the content scan
    // leaves the offset at the end: every edit then looked like a change
    // of the scripts, pass 20B).
    let read = |f: &std::fs::File| -> Option<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        let mut f = f;
        f.seek(SeekFrom::Start(0)).ok()?;
        let mut v = Vec::new();
        f.take(MAX + 1).read_to_end(&mut v).ok()?;
        (v.len() as u64 <= MAX).then_some(v)
    };
    let Some(n) = read(new) else { return true };
    match old.map(read) {
        None => risk::package_scripts_changed(None, &n),
        Some(Some(o)) => risk::package_scripts_changed(Some(&o), &n),
        Some(None) => true,
    }
}

impl<'a> Walker<'a> {
    fn err(&self, rel: &[u8], e: std::io::Error) -> Error {
        Error::io(fsx::rel_display(self.grant, rel), e)
    }

    fn lower_node(&self, dir: RawFd, name: &[u8], st: &libc::stat) -> Node {
        let target = if fsx::is_lnk(st) {
            fsx::readlink_at(dir, name).ok()
        } else {
            None
        };
        Node::from_stat(st, target)
    }

    fn walk(
        &mut self,
        upper: &OwnedFd,
        lower: Option<&OwnedFd>,
        rel: &[u8],
        opaque: bool,
    ) -> Result<(), Error> {
        if rel.iter().filter(|&&b| b == b'/').count() >= super::MAX_DEPTH {
            return Err(too_deep(self.grant, rel));
        }
        let names = fsx::list_dir(upper).map_err(|e| self.err(rel, e))?;
        if opaque {
            if let Some(l) = lower {
                // An opaque folder hides every lower entry it does not hold.
                for name in fsx::list_dir(l).map_err(|e| self.err(rel, e))? {
                    if names.binary_search(&name).is_err() {
                        let child = fsx::join(rel, &name);
                        if let Some(st) =
                            fsx::lstat_opt(l.as_raw_fd(), &name).map_err(|e| self.err(&child, e))?
                        {
                            self.deleted(l.as_raw_fd(), &name, child, &st)?;
                        }
                    }
                }
            }
        }
        for name in names {
            let child = fsx::join(rel, &name);
            let ust = fsx::lstat_at(upper.as_raw_fd(), &name).map_err(|e| self.err(&child, e))?;
            let lst = match lower {
                Some(l) => fsx::lstat_opt(l.as_raw_fd(), &name).map_err(|e| self.err(&child, e))?,
                None => None,
            };
            let lfd = lower.map(|l| l.as_raw_fd());
            if is_whiteout(upper.as_raw_fd(), &name, &ust) {
                if let (Some(st), Some(l)) = (lst, lfd) {
                    self.deleted(l, &name, child, &st)?;
                }
                continue;
            }
            let kind = NodeKind::from_mode(ust.st_mode);
            let before = match (lst, lfd) {
                (Some(st), Some(l)) => Some((self.lower_node(l, &name, &st), st)),
                _ => None,
            };
            match kind {
                NodeKind::Dir => {
                    let usub = fsx::open_subdir(upper.as_raw_fd(), &name)
                        .map_err(|e| self.err(&child, e))?;
                    let child_opaque = opaque
                        || overlay_xattr(usub.as_raw_fd(), "opaque").as_deref() == Some(b"y");
                    let after = Node::from_stat(&ust, None);
                    match before {
                        Some((b, _)) if b.kind == NodeKind::Dir => {
                            if b.perm != after.perm {
                                self.push(
                                    child.clone(),
                                    ChangeKind::ModeChanged,
                                    Some(b),
                                    Some(after),
                                    None,
                                    0,
                                );
                            }
                            let lsub = lfd
                                .map(|l| fsx::open_subdir(l, &name))
                                .transpose()
                                .map_err(|e| self.err(&child, e))?;
                            self.walk(&usub, lsub.as_ref(), &child, child_opaque)?;
                        }
                        Some((b, _)) => {
                            self.push(
                                child.clone(),
                                ChangeKind::TypeChanged,
                                Some(b),
                                Some(after),
                                None,
                                0,
                            );
                            self.walk(&usub, None, &child, true)?;
                        }
                        None => {
                            self.push(child.clone(), ChangeKind::Added, None, Some(after), None, 0);
                            self.walk(&usub, None, &child, true)?;
                        }
                    }
                }
                NodeKind::File => {
                    let uf = fsx::open_file_at(upper.as_raw_fd(), &name)
                        .map_err(|e| self.err(&child, e))?;
                    // Hashed by its data only: a sparse file costs what it
                    // holds, not its apparent size (see `content`).
                    let scan = content::scan(&uf).map_err(|e| self.err(&child, e))?;
                    let after = Node::from_stat(&ust, None);
                    let lower_file = match (&before, lfd) {
                        (Some((b, _)), Some(l)) if b.kind == NodeKind::File => {
                            Some(fsx::open_file_at(l, &name).map_err(|e| self.err(&child, e))?)
                        }
                        _ => None,
                    };
                    let old_head = match &lower_file {
                        Some(lf) => Some(
                            content::head(lf, content::HEAD).map_err(|e| self.err(&child, e))?,
                        ),
                        None => None,
                    };
                    let facts = risk::Content {
                        old_head: old_head.as_deref(),
                        new: Some(&scan),
                        scripts_changed: is_package_json(&child)
                            && scripts_changed(lower_file.as_ref(), &uf),
                    };
                    match before {
                        Some((b, _)) if b.kind == NodeKind::File => {
                            let same = match &lower_file {
                                Some(lf) if b.size == after.size => {
                                    content::scan(lf).map_err(|e| self.err(&child, e))?.hash
                                        == scan.hash
                                }
                                _ => false,
                            };
                            let kind = if !same {
                                ChangeKind::Modified
                            } else if b.perm != after.perm {
                                ChangeKind::ModeChanged
                            } else {
                                // Copied up (touched, opened for writing) but equal.
                                continue;
                            };
                            self.push_with(
                                child,
                                kind,
                                Some(b),
                                Some(after),
                                Some(scan.hash),
                                0,
                                &facts,
                            );
                        }
                        before => {
                            self.replace_or_add(
                                lfd,
                                &name,
                                child,
                                before,
                                after,
                                Some(scan.hash),
                                &facts,
                            )?;
                        }
                    }
                }
                NodeKind::Symlink => {
                    let t = fsx::readlink_at(upper.as_raw_fd(), &name)
                        .map_err(|e| self.err(&child, e))?;
                    let after = Node::from_stat(&ust, Some(t));
                    match before {
                        Some((b, _)) if b.kind == NodeKind::Symlink => {
                            if b.target != after.target {
                                self.push(
                                    child,
                                    ChangeKind::Modified,
                                    Some(b),
                                    Some(after),
                                    None,
                                    0,
                                );
                            }
                        }
                        before => self.replace_or_add(
                            lfd,
                            &name,
                            child,
                            before,
                            after,
                            None,
                            &risk::Content::default(),
                        )?,
                    }
                }
                _ => {
                    let after = Node::from_stat(&ust, None);
                    self.push(
                        child,
                        ChangeKind::Refused,
                        before.map(|b| b.0),
                        Some(after),
                        None,
                        0,
                    );
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn replace_or_add(
        &mut self,
        lower: Option<RawFd>,
        name: &[u8],
        child: Vec<u8>,
        before: Option<(Node, libc::stat)>,
        after: Node,
        hash: Option<[u8; 32]>,
        facts: &risk::Content,
    ) -> Result<(), Error> {
        match before {
            None => self.push_with(child, ChangeKind::Added, None, Some(after), hash, 0, facts),
            Some((b, _)) => {
                let n = if b.kind == NodeKind::Dir {
                    count_tree(lower.unwrap_or(-1), name).map_err(|e| self.err(&child, e))?
                } else {
                    0
                };
                self.push_with(
                    child,
                    ChangeKind::TypeChanged,
                    Some(b),
                    Some(after),
                    hash,
                    n,
                    facts,
                )
            }
        }
        Ok(())
    }

    fn deleted(
        &mut self,
        lower: RawFd,
        name: &[u8],
        child: Vec<u8>,
        st: &libc::stat,
    ) -> Result<(), Error> {
        let b = self.lower_node(lower, name, st);
        let n = if b.kind == NodeKind::Dir {
            count_tree(lower, name).map_err(|e| self.err(&child, e))?
        } else {
            0
        };
        self.push(child, ChangeKind::Deleted, Some(b), None, None, n);
        Ok(())
    }

    fn push(
        &mut self,
        path: Vec<u8>,
        kind: ChangeKind,
        before: Option<Node>,
        after: Option<Node>,
        hash: Option<[u8; 32]>,
        deleted_entries: u64,
    ) {
        let facts = risk::Content::default();
        self.push_with(path, kind, before, after, hash, deleted_entries, &facts)
    }

    /// [`push`](Self::push) with what is known of a file's content.
    #[allow(clippy::too_many_arguments)]
    fn push_with(
        &mut self,
        path: Vec<u8>,
        kind: ChangeKind,
        before: Option<Node>,
        after: Option<Node>,
        hash: Option<[u8; 32]>,
        deleted_entries: u64,
        facts: &risk::Content,
    ) {
        let mut c = Change {
            path,
            kind,
            before,
            after,
            hash,
            deleted_entries,
            risks: Vec::new(),
            conflict: false,
        };
        c.risks = risk::assess(self.grant, &c, facts);
        self.out.push(c);
    }
}

pub(crate) fn too_deep(root: &Path, rel: &[u8]) -> Error {
    Error::io(
        fsx::rel_display(root, rel),
        std::io::Error::other(format!(
            "folders nested more than {} levels deep",
            super::MAX_DEPTH
        )),
    )
}

/// Entries beneath the folder `name` of `dir`.
fn count_tree(dir: RawFd, name: &[u8]) -> std::io::Result<u64> {
    let sub = fsx::open_subdir(dir, name)?;
    let mut n = 0;
    for child in fsx::list_dir(&sub)? {
        n += 1;
        if let Some(st) = fsx::lstat_opt(sub.as_raw_fd(), &child)? {
            if fsx::is_dir(&st) {
                n += count_tree(sub.as_raw_fd(), &child)?;
            }
        }
    }
    Ok(n)
}

impl ChangeSet {
    /// Reads the changes of the upper layer `upper` over the grant `grant`.
    /// With the base `snapshot`, changes to files the user touched since
    /// the task started are marked as conflicts.
    pub fn compute(
        grant: &Path,
        upper: &Path,
        snapshot: Option<&Snapshot>,
    ) -> Result<ChangeSet, Error> {
        super::with_deep_stack(|| Self::compute_here(grant, upper, snapshot))
    }

    fn compute_here(
        grant: &Path,
        upper: &Path,
        snapshot: Option<&Snapshot>,
    ) -> Result<ChangeSet, Error> {
        let ufd = fsx::open_dir_path(upper).map_err(|e| Error::io(upper, e))?;
        let lfd = fsx::open_dir_path(grant).map_err(|e| Error::io(grant, e))?;
        let mut w = Walker {
            grant,
            out: Vec::new(),
        };
        w.walk(&ufd, Some(&lfd), b"", false)?;
        let mut changes = w.out;
        changes.sort_by(|a, b| path_order(&a.path, &b.path));
        if let Some(snap) = snapshot {
            for c in &mut changes {
                c.conflict = super::commit::is_conflict(&lfd, snap, c).unwrap_or(true);
            }
        }
        Ok(ChangeSet {
            grant: grant.to_path_buf(),
            upper: upper.to_path_buf(),
            changes,
        })
    }

    pub fn get(&self, path: &[u8]) -> Option<&Change> {
        self.changes
            .binary_search_by(|c| path_order(&c.path, path))
            .ok()
            .map(|i| &self.changes[i])
    }
}

/// Orders paths component by component, so that a folder comes right
/// before everything inside it (`a`, `a/b`, `a-b`).
pub fn path_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// Serde for byte paths: a string when UTF-8, a byte array otherwise.
pub mod bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(v) {
            Ok(t) => s.serialize_str(t),
            Err(_) => s.collect_seq(v),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        B(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Either::deserialize(d)? {
            Either::S(s) => s.into_bytes(),
            Either::B(b) => b,
        })
    }
}

mod bytes_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    struct W<'a>(#[serde(with = "super::bytes")] &'a Vec<u8>);
    #[derive(Deserialize)]
    struct R(#[serde(with = "super::bytes")] Vec<u8>);

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(W).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<R>::deserialize(d)?.map(|r| r.0))
    }
}

/// Serde for optional SHA-256 values as lowercase hex.
pub mod hex_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        v.map(super::hex).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        Ok(s.and_then(|s| super::unhex(&s)))
    }
}

pub fn hex(h: [u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
