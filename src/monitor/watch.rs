//! Which syscalls the monitor watches, and how it reads them: the path or
//! address each one names, an operation name for people, and whether the
//! path lies outside what the sandbox shows.

use std::path::{Component, Path, PathBuf};

use crate::policy::WatchLevel;
use crate::sandbox::seccomp::{ArgCond, Op, Rule};

/// `AT_FDCWD` as the low 32 bits the kernel compares.
const AT_FDCWD: u64 = 0xffff_ff9c;

/// Syscalls whose path arguments the file watch reads: (name, indexes of
/// path arguments, index of the directory-fd argument if any, operation).
pub const FILE_SYSCALLS: &[(&str, &[usize], Option<usize>, &str)] = &[
    ("execve", &[0], None, "exec"),
    ("execveat", &[1], Some(0), "exec"),
    ("openat", &[1], Some(0), "open"),
    ("openat2", &[1], Some(0), "open"),
    ("newfstatat", &[1], Some(0), "stat"),
    ("statx", &[1], Some(0), "stat"),
    ("faccessat", &[1], Some(0), "stat"),
    ("faccessat2", &[1], Some(0), "stat"),
    ("readlinkat", &[1], Some(0), "stat"),
    ("unlinkat", &[1], Some(0), "unlink"),
    ("mkdirat", &[1], Some(0), "create"),
    ("mknodat", &[1], Some(0), "create"),
    ("symlinkat", &[2], Some(1), "create"),
    ("linkat", &[1, 3], Some(0), "create"),
    ("renameat", &[1, 3], Some(0), "rename"),
    ("renameat2", &[1, 3], Some(0), "rename"),
    ("fchmodat", &[1], Some(0), "chmod"),
    ("fchownat", &[1], Some(0), "chmod"),
    ("truncate", &[0], None, "write"),
    ("chdir", &[0], None, "stat"),
    // The legacy calls (x86_64 only; names unknown elsewhere are skipped).
    ("open", &[0], None, "open"),
    ("creat", &[0], None, "create"),
    ("stat", &[0], None, "stat"),
    ("lstat", &[0], None, "stat"),
    ("access", &[0], None, "stat"),
    ("readlink", &[0], None, "stat"),
    ("unlink", &[0], None, "unlink"),
    ("rmdir", &[0], None, "unlink"),
    ("mkdir", &[0], None, "create"),
    ("mknod", &[0], None, "create"),
    ("rename", &[0, 1], None, "rename"),
    ("link", &[0, 1], None, "create"),
    ("symlink", &[1], None, "create"),
    ("chmod", &[0], None, "chmod"),
    ("chown", &[0], None, "chmod"),
    ("lchown", &[0], None, "chmod"),
];

/// Network syscalls and the index of their address argument (sendmsg: the
/// address is inside the msghdr).
pub const NET_SYSCALLS: &[&str] = &["connect", "sendto", "sendmsg"];

/// The watch rules for `level`, in the profile model.
///
/// At `denials` (the default) a path call is watched only when it names a
/// path from the working folder or the root (`AT_FDCWD` or no directory fd):
/// a lookup relative to an open directory starts inside something the
/// sandbox already shows, and bulk tools (find, grep -r, tar) walk the tree
/// that way, so they pay nothing. At `all`, every path call is watched.
pub fn rules(level: WatchLevel) -> Vec<Rule> {
    let mut out = Vec::new();
    let rule = |names: Vec<String>, args: Vec<ArgCond>| Rule {
        names,
        action: crate::sandbox::seccomp::Action::Allow,
        args,
        reason: "watched".into(),
    };
    for (name, _, dirfd, _) in FILE_SYSCALLS {
        match (level, dirfd) {
            (WatchLevel::Denials, Some(i)) => out.push(rule(
                vec![name.to_string()],
                vec![ArgCond {
                    index: *i as u8,
                    op: Op::Eq,
                    value: AT_FDCWD,
                    low32: true,
                }],
            )),
            _ => out.push(rule(vec![name.to_string()], vec![])),
        }
    }
    out.push(rule(vec!["connect".into(), "sendmsg".into()], vec![]));
    // sendto on a connected socket names no address: nothing to report.
    out.push(rule(
        vec!["sendto".into()],
        vec![ArgCond {
            index: 4,
            op: Op::Ne,
            value: 0,
            low32: false,
        }],
    ));
    out
}

/// What the sandbox shows, for deciding whether a path lies outside it.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Folders the host shares with the sandbox (grants, system folders).
    pub visible: Vec<PathBuf>,
    /// Folders that exist only inside (`/tmp`, `$HOME`, `/etc`): a path
    /// there is outside when the host has it and the sandbox does not.
    pub private: Vec<PathBuf>,
    /// Paths hidden even inside grants.
    pub denied: Vec<PathBuf>,
}

/// Where a path falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Visible,
    /// Hidden on purpose (always-denied or `--deny`).
    Denied,
    /// In a folder of the sandbox's own; outside if only the host has it.
    Private,
    /// Not part of the sandbox at all.
    Outside,
}

/// Removes `.` and resolves `..` lexically (inside the sandbox, nothing
/// outside the view exists for a symlink to lead to).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// `p` is `d` or lies below it (both normalised, absolute).
fn under(p: &[u8], d: &[u8]) -> bool {
    d == b"/" || (p.starts_with(d) && (p.len() == d.len() || p[d.len()] == b'/'))
}

impl View {
    /// Where `path` falls. Called for every watched call, so it compares
    /// bytes rather than path components.
    pub fn place(&self, path: &Path) -> Place {
        use std::os::unix::ffi::OsStrExt;
        let norm = normalize(path);
        let p = norm.as_os_str().as_bytes();
        fn b(d: &Path) -> &[u8] {
            d.as_os_str().as_bytes()
        }
        let is_under = |list: &[PathBuf]| list.iter().any(|d| under(p, b(d)));
        if is_under(&self.denied) {
            return Place::Denied;
        }
        if is_under(&self.visible) {
            return Place::Visible;
        }
        if is_under(&self.private) {
            return Place::Private;
        }
        // The skeleton's own folders (ancestors of what is shown).
        if self
            .visible
            .iter()
            .chain(self.private.iter())
            .any(|v| under(b(v), p))
        {
            return Place::Visible;
        }
        Place::Outside
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        View {
            visible: ["/usr", "/home/u/project", "/proc", "/dev"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            private: ["/tmp", "/etc", "/home/u"]
                .iter()
                .map(PathBuf::from)
                .collect(),
            denied: vec![PathBuf::from("/home/u/project/.ssh")],
        }
    }

    #[test]
    fn places() {
        let v = view();
        assert_eq!(v.place(Path::new("/usr/bin/sh")), Place::Visible);
        assert_eq!(v.place(Path::new("/home")), Place::Visible);
        assert_eq!(v.place(Path::new("/home/u/.ssh/id_rsa")), Place::Private);
        assert_eq!(v.place(Path::new("/home/u/project/x")), Place::Visible);
        assert_eq!(
            v.place(Path::new("/home/u/project/.ssh/id_rsa")),
            Place::Denied
        );
        assert_eq!(
            v.place(Path::new("/home/u/project/../project/.ssh/x")),
            Place::Denied
        );
        assert_eq!(v.place(Path::new("/tmp/../etc/shadow")), Place::Private);
        assert_eq!(v.place(Path::new("/opt/tool")), Place::Outside);
    }

    #[test]
    fn rules_compile() {
        for level in [WatchLevel::Denials, WatchLevel::All] {
            let p = crate::sandbox::seccomp::Profile {
                name: "w".into(),
                default_action: crate::sandbox::seccomp::Action::Allow,
                rules: rules(level)
                    .into_iter()
                    .map(|mut r| {
                        r.action = crate::sandbox::seccomp::Action::Errno(1);
                        r
                    })
                    .collect(),
                refuse_foreign_abi: false,
                refuse_unknown: false,
            };
            assert!(crate::sandbox::seccomp::compile(&p).is_ok());
        }
    }
}
