//! Where Airlock keeps its state, following the XDG base directory spec, and
//! the one safe way we write small files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::Error;

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
                .unwrap_or_else(|| PathBuf::from("/"))
        })
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        // The spec says relative values are invalid and must be ignored.
        Some(v) if Path::new(&v).is_absolute() => PathBuf::from(v),
        _ => home().join(fallback),
    }
}

/// The user's home folder.
pub fn home_dir() -> PathBuf {
    home()
}

/// `$XDG_STATE_HOME/airlock`: task folders and their pending changes.
pub fn state_dir() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state").join("airlock")
}

/// `$XDG_STATE_HOME/airlock/tasks`.
pub fn tasks_dir() -> PathBuf {
    state_dir().join("tasks")
}

/// `$XDG_DATA_HOME/airlock`: the audit database.
pub fn data_dir() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share").join("airlock")
}

/// `$XDG_CONFIG_HOME/airlock`: agent profiles.
pub fn config_dir() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("airlock")
}

/// Creates `path` and its parents with mode 0700 for the new ones.
pub fn create_private_dir(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(path, e))
}

/// `p` with every symlink resolved, even when its end does not exist yet:
/// the nearest existing ancestor is resolved and the rest appended. With a
/// symlinked home (`/home` -> `/var/home`), `~/.ssh` and its real path are
/// then both known before anything creates it.
pub fn canonical_lenient(p: &Path) -> PathBuf {
    Canonicalizer::default().resolve(p)
}

/// [`canonical_lenient`] for many paths that share ancestors (the hidden
/// paths: a hundred names under a few folders). Each folder is resolved
/// once, and a missing name costs one `lstat` instead of a full walk.
#[derive(Default)]
pub struct Canonicalizer {
    known: std::collections::HashMap<PathBuf, Option<PathBuf>>,
}

impl Canonicalizer {
    pub fn resolve(&mut self, p: &Path) -> PathBuf {
        let mut rest = Vec::new();
        let mut cur = p;
        loop {
            if let Some(real) = self.real(cur) {
                return rest.iter().rev().fold(real, |acc, c| acc.join(c));
            }
            match (cur.parent(), cur.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    cur = parent;
                }
                _ => return p.to_path_buf(),
            }
        }
    }

    fn real(&mut self, p: &Path) -> Option<PathBuf> {
        if let Some(known) = self.known.get(p) {
            return known.clone();
        }
        // Most hidden names do not exist; lstat says so in one call, where
        // a failing realpath would first read every ancestor as a link.
        let real = fs::symlink_metadata(p)
            .ok()
            .and_then(|_| p.canonicalize().ok());
        self.known.insert(p.to_path_buf(), real.clone());
        real
    }
}

/// Writes `data` to `path` so that a reader sees the old or the new content,
/// never a mix: a temporary beside it, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    write_via_temp(path, data, true)
}

/// Like [`write_atomic`] without the two fsyncs: readers and a crash of
/// any process still see the old or the new content whole, but after a
/// power loss the file may be missing or empty. For files whose writer
/// makes them durable later in one `syncfs` (a task's files before it
/// ends) or that only matter while the machine is up (the owner record).
pub fn write_replace(path: &Path, data: &[u8]) -> Result<(), Error> {
    write_via_temp(path, data, false)
}

fn write_via_temp(path: &Path, data: &[u8], durable: bool) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn lenient_paths_resolve_through_symlinked_ancestors() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().canonicalize().unwrap();
        fs::create_dir_all(base.join("var/home/me")).unwrap();
        fs::create_dir_all(base.join("elsewhere/cfg")).unwrap();
        symlink(base.join("var/home"), base.join("home")).unwrap();
        symlink(base.join("elsewhere/cfg"), base.join("var/home/me/.config")).unwrap();
        symlink("/nonexistent/target", base.join("var/home/me/.aws")).unwrap();
        let home = base.join("home/me");
        let cases = [
            (home.join(".ssh"), base.join("var/home/me/.ssh")),
            (
                home.join(".ssh/id_rsa"),
                base.join("var/home/me/.ssh/id_rsa"),
            ),
            (
                home.join(".config/gcloud"),
                base.join("elsewhere/cfg/gcloud"),
            ),
            (home.join(".config"), base.join("elsewhere/cfg")),
            // A dangling link: its own name, under the real parent.
            (home.join(".aws"), base.join("var/home/me/.aws")),
            (home.clone(), base.join("var/home/me")),
        ];
        let mut shared = Canonicalizer::default();
        for (p, want) in &cases {
            assert_eq!(&canonical_lenient(p), want, "{}", p.display());
            assert_eq!(&shared.resolve(p), want, "{} (shared)", p.display());
        }
    }
}
