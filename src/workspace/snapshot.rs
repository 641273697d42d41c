//! The base snapshot: what the user's files were when the task started.
//!
//! Taken before the agent runs, from metadata only (`lstat`: kind, mode,
//! size, mtime, ctime, inode). A file whose mtime is too close to the
//! capture time could still change within the same timestamp tick, so its
//! content is hashed too ("racily clean", as git calls it). At commit, a
//! file whose metadata (or, where recorded, content) differs from the
//! snapshot was changed by someone else while the agent ran: a conflict.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::fsx;
use crate::Error;

const MAGIC: &[u8; 8] = b"AIRSNAP1";

/// Metadata of one entry of the grant at snapshot time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub uid: u32,
    pub gid: u32,
    /// SHA-256 of the content, only for racily clean regular files.
    pub hash: Option<[u8; 32]>,
}

impl Meta {
    pub fn from_stat(st: &libc::stat) -> Meta {
        Meta {
            mode: st.st_mode,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            ino: st.st_ino,
            uid: st.st_uid,
            gid: st.st_gid,
            hash: None,
        }
    }
}

/// The base snapshot of one grant: relative path → metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub entries: BTreeMap<Vec<u8>, Meta>,
    /// Capture time, seconds since the epoch.
    pub taken_s: i64,
}

/// Hashes an open regular file.
pub fn hash_reader(mut r: impl Read) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

impl Snapshot {
    /// Records the grant folder `root` (same file system only: the overlay's
    /// lower layer does not show other mounts either).
    pub fn capture(root: &Path) -> Result<Snapshot, Error> {
        super::with_deep_stack(|| Self::capture_here(root))
    }

    fn capture_here(root: &Path) -> Result<Snapshot, Error> {
        let fd = fsx::open_dir_path(root).map_err(|e| Error::io(root, e))?;
        let st = fsx::fstat(fd.as_raw_fd()).map_err(|e| Error::io(root, e))?;
        let taken_s = crate::event::now_ms() as i64 / 1000;
        let mut snap = Snapshot {
            entries: BTreeMap::new(),
            taken_s,
        };
        snap.walk(root, &fd, Vec::new(), st.st_dev)?;
        Ok(snap)
    }

    fn walk(&mut self, root: &Path, dir: &OwnedFd, rel: Vec<u8>, dev: u64) -> Result<(), Error> {
        if rel.iter().filter(|&&b| b == b'/').count() >= super::MAX_DEPTH {
            return Err(super::changes::too_deep(root, &rel));
        }
        let names = fsx::list_dir(dir).map_err(|e| Error::io(fsx::rel_display(root, &rel), e))?;
        for name in names {
            let child = fsx::join(&rel, &name);
            let st = match fsx::lstat_opt(dir.as_raw_fd(), &name) {
                Ok(Some(st)) => st,
                // Vanished while we looked: not part of the base.
                Ok(None) => continue,
                Err(e) => return Err(Error::io(fsx::rel_display(root, &child), e)),
            };
            let mut meta = Meta::from_stat(&st);
            // A file modified in the capture's own second could change again
            // without its mtime moving: metadata cannot decide, hash it.
            if fsx::is_reg(&st) && st.st_mtime >= self.taken_s - 1 {
                if let Ok(f) = fsx::open_file_at(dir.as_raw_fd(), &name) {
                    meta.hash = hash_reader(f).ok();
                }
            }
            self.entries.insert(child.clone(), meta);
            if fsx::is_dir(&st) && st.st_dev == dev {
                match fsx::open_subdir(dir.as_raw_fd(), &name) {
                    Ok(sub) => self.walk(root, &sub, child, dev)?,
                    // An unreadable folder stays recorded by its metadata.
                    Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
                    Err(e) => return Err(Error::io(fsx::rel_display(root, &child), e)),
                }
            }
        }
        Ok(())
    }

    /// Whether the entry now at `rel` (`st`) is the one the snapshot saw.
    /// `content` hashes the current file; it is called only when the
    /// snapshot recorded a hash and the metadata alone cannot decide.
    pub fn unchanged(
        &self,
        rel: &[u8],
        st: &libc::stat,
        content: impl FnOnce() -> Option<[u8; 32]>,
    ) -> bool {
        let Some(m) = self.entries.get(rel) else {
            return false;
        };
        let now = Meta::from_stat(st);
        if now.mode != m.mode || now.size != m.size || now.ino != m.ino {
            return false;
        }
        let times_same = now.mtime == m.mtime && now.ctime == m.ctime;
        match m.hash {
            Some(h) => content() == Some(h),
            None => times_same,
        }
    }

    /// Records the new state of `rel` after a commit wrote it.
    pub fn set(&mut self, rel: &[u8], st: &libc::stat) {
        self.entries.insert(rel.to_vec(), Meta::from_stat(st));
    }

    /// Forgets `rel` and everything beneath it.
    pub fn remove_tree(&mut self, rel: &[u8]) {
        self.entries.remove(rel);
        let mut prefix = rel.to_vec();
        prefix.push(b'/');
        let doomed: Vec<Vec<u8>> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.entries.remove(&k);
        }
    }

    /// Entries beneath `rel` (not `rel` itself).
    pub fn beneath<'a>(&'a self, rel: &[u8]) -> impl Iterator<Item = (&'a Vec<u8>, &'a Meta)> + 'a {
        let mut prefix = rel.to_vec();
        prefix.push(b'/');
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// Writes the snapshot atomically (compact binary, one record a line's
    /// worth of fields; 100,000 entries take a few MiB).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let mut out = BufWriter::new(Vec::with_capacity(self.entries.len() * 96));
        let io = |e| Error::io(path, e);
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&self.taken_s.to_le_bytes()).map_err(io)?;
        out.write_all(&(self.entries.len() as u64).to_le_bytes())
            .map_err(io)?;
        for (k, m) in &self.entries {
            let mut rec = Vec::with_capacity(k.len() + 100);
            rec.extend_from_slice(&(k.len() as u32).to_le_bytes());
            rec.extend_from_slice(k);
            rec.extend_from_slice(&m.mode.to_le_bytes());
            rec.extend_from_slice(&m.size.to_le_bytes());
            for v in [m.mtime.0, m.mtime.1, m.ctime.0, m.ctime.1] {
                rec.extend_from_slice(&v.to_le_bytes());
            }
            rec.extend_from_slice(&m.ino.to_le_bytes());
            rec.extend_from_slice(&m.uid.to_le_bytes());
            rec.extend_from_slice(&m.gid.to_le_bytes());
            match m.hash {
                Some(h) => {
                    rec.push(1);
                    rec.extend_from_slice(&h);
                }
                None => rec.push(0),
            }
            out.write_all(&rec).map_err(io)?;
        }
        let data = out
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        // Durable with the rest of the task folder (TaskDir::sync).
        crate::dirs::write_replace(path, &data)
    }

    pub fn load(path: &Path) -> Result<Snapshot, Error> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut r = BufReader::new(f);
        let bad = || {
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not an Airlock snapshot"),
            )
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(|_| bad())?;
        if &magic != MAGIC {
            return Err(bad());
        }
        let taken_s = read_i64(&mut r).map_err(|_| bad())?;
        let n = read_u64(&mut r).map_err(|_| bad())?;
        let mut entries = BTreeMap::new();
        for _ in 0..n {
            let rec = (|| -> std::io::Result<(Vec<u8>, Meta)> {
                let len = read_u32(&mut r)? as usize;
                if len > 1 << 20 {
                    return Err(std::io::ErrorKind::InvalidData.into());
                }
                let mut k = vec![0u8; len];
                r.read_exact(&mut k)?;
                let mode = read_u32(&mut r)?;
                let size = read_u64(&mut r)?;
                let mtime = (read_i64(&mut r)?, read_i64(&mut r)?);
                let ctime = (read_i64(&mut r)?, read_i64(&mut r)?);
                let ino = read_u64(&mut r)?;
                let uid = read_u32(&mut r)?;
                let gid = read_u32(&mut r)?;
                let mut flag = [0u8; 1];
                r.read_exact(&mut flag)?;
                let hash = if flag[0] == 1 {
                    let mut h = [0u8; 32];
                    r.read_exact(&mut h)?;
                    Some(h)
                } else {
                    None
                };
                Ok((
                    k,
                    Meta {
                        mode,
                        size,
                        mtime,
                        ctime,
                        ino,
                        uid,
                        gid,
                        hash,
                    },
                ))
            })()
            .map_err(|_| bad())?;
            entries.insert(rec.0, rec.1);
        }
        Ok(Snapshot { entries, taken_s })
    }
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}
fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}
fn read_i64(r: &mut impl Read) -> std::io::Result<i64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(i64::from_le_bytes(b))
}

/// Where the supervisor keeps the snapshot of read-write grant `index`.
pub fn snapshot_path(task: &crate::task::TaskDir, index: usize) -> std::path::PathBuf {
    task.path().join(format!("base-{index}.snap"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_change_detection() {
        let d = tempfile::tempdir().unwrap();
        let g = d.path().join("g");
        std::fs::create_dir_all(g.join("sub")).unwrap();
        std::fs::write(g.join("a"), b"hello").unwrap();
        std::fs::write(g.join("sub/b\nc"), b"x").unwrap();
        let snap = Snapshot::capture(&g).unwrap();
        assert_eq!(snap.entries.len(), 3);
        // Just written: racily clean, so hashed.
        assert!(snap.entries[&b"a".to_vec()].hash.is_some());
        let p = d.path().join("s.snap");
        snap.save(&p).unwrap();
        let back = Snapshot::load(&p).unwrap();
        assert_eq!(back, snap);

        let root = fsx::open_dir_path(&g).unwrap();
        let st = fsx::lstat_at(root.as_raw_fd(), b"a").unwrap();
        assert!(snap.unchanged(b"a", &st, || Some(hash_reader(&b"hello"[..]).unwrap())));
        // Same size, same second, other content: the hash decides.
        std::fs::write(g.join("a"), b"world").unwrap();
        let st = fsx::lstat_at(root.as_raw_fd(), b"a").unwrap();
        assert!(!snap.unchanged(b"a", &st, || Some(hash_reader(&b"world"[..]).unwrap())));
        let mut s2 = snap.clone();
        s2.remove_tree(b"sub");
        assert_eq!(s2.entries.len(), 1);
    }
}
