//! The sandbox's file system, built in the helper's new mount namespace as
//! one linear story (as bubblewrap does): a tmpfs root, the read-only system,
//! a generated `/etc`, fresh `/proc`, minimal `/dev`, `/tmp`, `$HOME`, the
//! grants (overlays for read-write ones), the hidden paths, then
//! `pivot_root` and the old root detached.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::spec::{SandboxBase, SandboxSpec};
use super::sys::{
    bind_fd_with_attrs, bind_with_attrs, open_no_symlinks, To, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC,
    MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};

/// A failed step: what we were doing, and on which path.
#[derive(Debug)]
pub struct StepError {
    pub stage: String,
    pub message: String,
}

fn fail(stage: &str, path: &Path, e: impl std::fmt::Display) -> StepError {
    StepError {
        stage: stage.to_string(),
        message: format!("{}: {e}", path.display()),
    }
}

/// Opens the grant `path` with no symbolic link on the way and checks that
/// it is still the file the supervisor planned (device and inode): a
/// folder renamed or replaced since (say `~/.ssh` moved into its place)
/// is never mounted.
fn open_grant(
    spec: &SandboxSpec,
    path: &Path,
    flags: libc::c_int,
) -> Result<std::os::fd::OwnedFd, StepError> {
    use std::os::fd::AsRawFd;
    let stage = "open grant";
    let fd = open_no_symlinks(path, flags).map_err(|e| fail(stage, path, e))?;
    if let Some(id) = spec.grant_ids.iter().find(|g| g.path == path) {
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| fail(stage, path, e))?;
        if st.st_dev != id.dev || st.st_ino != id.ino {
            return Err(fail(
                stage,
                path,
                "it was renamed or replaced after the task was planned; nothing was mounted (run the task again)",
            ));
        }
    }
    Ok(fd)
}

/// The system folders bound read-only from the host (or re-created as the
/// same symlinks, as on merged-/usr systems).
const SYSTEM: &[&str] = &["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Harmless host files and folders the sandbox's `/etc` borrows read-only:
/// the dynamic linker's cache, CA certificates, alternatives, time zone,
/// protocol tables, shell defaults. Nothing with secrets or identities.
const ETC_BORROWED: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "crypto-policies",
    "localtime",
    "timezone",
    "protocols",
    "services",
    "mime.types",
    "locale.alias",
    "locale.conf",
    "bash.bashrc",
    "profile",
    "inputrc",
    "os-release",
    "debian_version",
    "lsb-release",
    "python3",
    "magic",
    "magic.mime",
];

/// `/proc` files that leak the host kernel's state: masked as Docker does.
const PROC_MASKED_FILES: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "kallsyms",
    "kmsg",
    "kpagecount",
    "kpageflags",
    "kpagecgroup",
    "sysrq-trigger",
    "config.gz",
];
const PROC_MASKED_DIRS: &[&str] = &["acpi", "scsi", "firmware", "asound", "driver"];
const PROC_READ_ONLY: &[&str] = &["sys", "irq", "bus", "fs"];

/// Device nodes bound from the host; everything else in `/dev` is absent.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// `root` + an absolute `path`.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in path.components() {
        if let Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

/// How many files a writable tmpfs of `size` bytes may hold: one per page.
/// Empty files take no page, so without this bound a "4 MB" /tmp holds
/// millions of inodes, each costing unaccounted kernel memory on the host.
fn tmpfs_inodes(size: u64) -> u64 {
    (size / 4096).max(4096)
}

fn mkdir_p(p: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(p)
}

fn tmpfs(target: &Path, flags: MsFlags, opts: &str) -> Result<(), StepError> {
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(opts))
        .map_err(|e| fail("mount tmpfs", target, e))
}

fn ro_bind(src: &Path, dst: &Path) -> Result<(), StepError> {
    bind_with_attrs(
        src,
        To::Path(dst),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
    .map_err(|e| fail("read-only bind", src, e))
}

/// Creates an empty file or folder at `dst` to mount `src` onto.
fn mountpoint_like(src: &Path, dst: &Path) -> Result<(), StepError> {
    let meta = fs::metadata(src).map_err(|e| fail("inspect", src, e))?;
    if let Some(parent) = dst.parent() {
        mkdir_p(parent, 0o755).map_err(|e| fail("create mount point", parent, e))?;
    }
    if meta.is_dir() {
        mkdir_p(dst, 0o755).map_err(|e| fail("create mount point", dst, e))
    } else if dst.symlink_metadata().is_err() {
        fs::File::create(dst)
            .map(|_| ())
            .map_err(|e| fail("create mount point", dst, e))
    } else {
        Ok(())
    }
}

/// A place inside the new root, held open: found or made beneath the root
/// without following a symbolic link, then mounted on through its
/// descriptor, so that nothing can move it in between.
struct Spot(std::os::fd::OwnedFd);

impl Spot {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.0)
    }

    /// A name for `mount(2)` that leads to exactly this file (`/proc`'s
    /// link to the descriptor, which `mount` follows).
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&self.0)
        ))
    }
}

/// The names of `p`, without its root (callers refuse `..` first).
fn names(p: &Path) -> Vec<&std::ffi::OsStr> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// Lookups beneath the new root: no symbolic link, no `..` out of it.
const BENEATH: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// A link or a file where the sandbox needs a folder: refused, naming it
/// as the user can find it (a persistent home's entry by its host path).
fn in_the_way(spec: &SandboxSpec, shown: &Path) -> StepError {
    let host = spec.persistent_home.as_ref().and_then(|h| {
        shown
            .strip_prefix(&spec.user.home)
            .ok()
            .map(|rest| h.join(rest))
    });
    StepError {
        stage: "create mount point".into(),
        message: match host {
            Some(host) => format!(
                "{}: the agent's persistent home has a symbolic link or a file at {} where the sandbox needs a folder (for a grant or a folder of its own); remove it and run the task again",
                shown.display(),
                host.display()
            ),
            None => format!(
                "{}: a symbolic link or a file is where the sandbox needs a folder (for a grant or a folder of its own)",
                shown.display()
            ),
        },
    }
}

/// The folder at `path` (as seen inside) beneath `root`, or with `file`
/// the file there, made if missing (folders 0755, an empty file 0644;
/// an existing file is never opened for writing, let alone truncated).
fn spot(
    root: std::os::fd::BorrowedFd<'_>,
    path: &Path,
    file: bool,
    in_the_way: &dyn Fn(&Path) -> StepError,
) -> Result<Spot, StepError> {
    use std::os::fd::AsRawFd;
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(fail("create mount point", path, "a path with `..` in it"));
    }
    let names = names(path);
    let mut shown = PathBuf::from("/");
    let mut dir = super::sys::openat2(
        root.as_raw_fd(),
        Path::new("."),
        libc::O_PATH | libc::O_DIRECTORY,
        BENEATH,
    )
    .map_err(|e| fail("open new root", path, e))?;
    for (i, name) in names.iter().enumerate() {
        shown.push(name);
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(*name))
            .map_err(|e| fail("create mount point", &shown, e))?;
        if file && i + 1 == names.len() {
            // SAFETY: openat on a descriptor and a NUL-terminated name we own.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_RDONLY
                        | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd >= 0 {
                // SAFETY: a new descriptor of ours.
                return Ok(Spot(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(fail("create mount point", &shown, e));
            }
            let fd = super::sys::openat2(
                dir.as_raw_fd(),
                Path::new(name),
                libc::O_PATH | libc::O_NOFOLLOW,
                BENEATH,
            )
            .map_err(|e| fail("create mount point", &shown, e))?;
            let st = nix::sys::stat::fstat(fd.as_raw_fd())
                .map_err(|e| fail("create mount point", &shown, e))?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(in_the_way(&shown));
            }
            return Ok(Spot(fd));
        }
        let mut made = false;
        dir = loop {
            match super::sys::openat2(
                dir.as_raw_fd(),
                Path::new(name),
                libc::O_PATH | libc::O_DIRECTORY,
                BENEATH,
            ) {
                Ok(fd) => break fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !made => {
                    made = true;
                    // SAFETY: mkdirat on a descriptor and a name we own;
                    // it never follows a link in the last component.
                    if unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(fail("create mount point", &shown, e));
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ELOOP | libc::ENOTDIR | libc::EXDEV | libc::ENOENT)
                    ) =>
                {
                    return Err(in_the_way(&shown))
                }
                Err(e) => return Err(fail("create mount point", &shown, e)),
            }
        };
    }
    Ok(Spot(dir))
}

/// The file at `path` (as seen inside) beneath `root` and its type, if a
/// name with no symbolic link on the way leads to one; a trailing link is
/// itself the answer (`S_IFLNK`).
fn existing(
    root: std::os::fd::BorrowedFd<'_>,
    path: &Path,
) -> Result<Option<(Spot, libc::mode_t)>, StepError> {
    use std::os::fd::AsRawFd;
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(fail("hide", path, "a path with `..` in it"));
    }
    let rel: PathBuf = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    if rel.as_os_str().is_empty() {
        return Ok(None);
    }
    match super::sys::openat2(
        root.as_raw_fd(),
        &rel,
        libc::O_PATH | libc::O_NOFOLLOW,
        BENEATH,
    ) {
        Ok(fd) => {
            let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| fail("hide", path, e))?;
            Ok(Some((Spot(fd), st.st_mode & libc::S_IFMT)))
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::EXDEV)
            ) =>
        {
            Ok(None)
        }
        // Behind a folder PID 1 may not search, as the agent may not: in a
        // grant a whiteout hides the name already (see `Masks::layer`).
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Ok(None),
        Err(e) => Err(fail("hide", path, e)),
    }
}

/// The hidden paths inside the grant `grant` (not the grant itself, and
/// not those inside a grant nested in it, which that one hides).
fn hidden_inside<'a>(spec: &'a SandboxSpec, grant: &Path) -> Vec<&'a Path> {
    let nested = |d: &Path| {
        spec.ro
            .iter()
            .chain(spec.rw.iter().map(|m| &m.path))
            .any(|g| g != grant && g.starts_with(grant) && d.starts_with(g))
    };
    let mut v: Vec<&Path> = spec
        .deny
        .iter()
        .map(PathBuf::as_path)
        .filter(|d| d.starts_with(grant) && *d != grant && !nested(d))
        .collect();
    // Parents first: a hidden folder's whiteout hides all below it.
    v.sort_by_key(|d| d.components().count());
    v
}

/// Where the whiteout layers of read-only grants are made: a small tmpfs
/// in the skeleton, detached again before the pivot (each overlay keeps
/// its own reference to its layer).
#[derive(Default)]
struct Masks {
    dir: Option<std::os::fd::OwnedFd>,
    made: usize,
}

/// Where [`Masks`] lives while the grants are mounted.
const MASKS_AT: &str = "/.airlock-masks";

impl Masks {
    /// A layer that hides `hidden` (paths inside `grant`, whose folder is
    /// open as `lower`): a whiteout per name, in folders as deep as needed;
    /// with `missing_only`, only for names the grant does not have now.
    fn layer(
        &mut self,
        root: std::os::fd::BorrowedFd<'_>,
        hidden: &[&Path],
        grant: &Path,
        lower: &std::os::fd::OwnedFd,
        missing_only: bool,
        in_the_way: &dyn Fn(&Path) -> StepError,
    ) -> Result<std::os::fd::OwnedFd, StepError> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let stage = "hide paths in a read-only grant";
        if self.dir.is_none() {
            let at = spot(root, Path::new(MASKS_AT), false, in_the_way)?;
            tmpfs(
                &at.proc_path(),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                "mode=0700,size=1m,nr_inodes=65536",
            )?;
            // The tmpfs just mounted, not the folder under it.
            let top = super::sys::openat2(
                root.as_raw_fd(),
                Path::new(MASKS_AT.trim_start_matches('/')),
                libc::O_PATH | libc::O_DIRECTORY,
                BENEATH,
            )
            .map_err(|e| fail(stage, Path::new(MASKS_AT), e))?;
            self.dir = Some(top);
        }
        let Some(top) = &self.dir else {
            return Err(fail(stage, grant, "no layer folder"));
        };
        let name = self.made.to_string();
        self.made += 1;
        let layer = spot(
            std::os::fd::AsFd::as_fd(top),
            Path::new(&name),
            false,
            in_the_way,
        )?;
        let mut made: Vec<PathBuf> = Vec::new();
        for d in hidden {
            let Ok(rel) = d.strip_prefix(grant) else {
                continue;
            };
            if rel.components().any(|c| c == Component::ParentDir) {
                return Err(fail(stage, d, "a path with `..` in it"));
            }
            let names = names(rel);
            // The whiteout goes where the grant's tree stops: at the hidden
            // name, or at its first folder missing now (hiding whatever is
            // made there later). A folder of the layer would stand in for
            // the grant's own entry, so one is made only where the grant has
            // a real folder; a link or a file on the way ends the search
            // (the hidden path's real path is listed on its own).
            let mut at = PathBuf::new();
            let mut whiteout = None;
            for (i, name) in names.iter().enumerate() {
                at.push(name);
                let last = i + 1 == names.len();
                match super::sys::openat2(
                    lower.as_raw_fd(),
                    &at,
                    libc::O_PATH | libc::O_NOFOLLOW,
                    BENEATH,
                ) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        whiteout = Some(at.clone());
                        break;
                    }
                    // A folder on the way we may not search: the agent
                    // could not either, but in a read-write grant it may
                    // change the folder's mode (its own copy). Hidden at
                    // this name, whether it is there or not.
                    Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                        whiteout = Some(at.clone());
                        break;
                    }
                    Err(e) => return Err(fail(stage, d, e)),
                    Ok(_) if last => {
                        if !missing_only {
                            whiteout = Some(at.clone());
                        }
                    }
                    Ok(fd) => {
                        let st =
                            nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|e| fail(stage, d, e))?;
                        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                            break;
                        }
                    }
                }
            }
            let Some(w) = whiteout else {
                continue;
            };
            let (Some(last), parent) = (w.file_name(), w.parent()) else {
                continue;
            };
            let parent = match parent.filter(|p| !p.as_os_str().is_empty()) {
                None => None,
                // A parent already whited out hides this one.
                Some(p) => match super::sys::openat2(
                    layer.0.as_raw_fd(),
                    p,
                    libc::O_PATH | libc::O_DIRECTORY,
                    BENEATH,
                ) {
                    Ok(fd) => Some(fd),
                    Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
                    Err(_) => {
                        made.push(p.to_path_buf());
                        Some(spot(layer.fd(), p, false, in_the_way)?.0)
                    }
                },
            };
            let dirfd = parent
                .as_ref()
                .map_or(layer.0.as_raw_fd(), |p| p.as_raw_fd());
            let c = std::ffi::CString::new(last.as_bytes()).map_err(|e| fail(stage, d, e))?;
            // SAFETY: mknodat on a descriptor and a name we own; a character
            // device 0:0 is overlayfs's whiteout (allowed without privilege).
            let r = unsafe { libc::mknodat(dirfd, c.as_ptr(), libc::S_IFCHR, 0) };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(fail(stage, d, e));
                }
            }
        }
        // Last, and deepest first: a folder given mode 000 cannot be
        // entered to fill it, nor to reach the folders below it.
        let mut folders: Vec<PathBuf> = made
            .iter()
            .flat_map(|p| p.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        folders.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        folders.dedup();
        for f in &folders {
            like_the_grant(&layer.0, lower, f);
        }
        // The layer's top shows as the grant's own folder.
        like_the_grant(&layer.0, lower, Path::new("."));
        Ok(layer.0)
    }

    /// Detaches the layers' tmpfs and removes its mount point.
    fn finish(self, root: std::os::fd::BorrowedFd<'_>) -> Result<(), StepError> {
        use std::os::fd::AsRawFd;
        let Some(top) = self.dir else {
            return Ok(());
        };
        drop(top);
        let at = Path::new(MASKS_AT);
        let fd = super::sys::openat2(
            root.as_raw_fd(),
            Path::new(MASKS_AT.trim_start_matches('/')),
            libc::O_PATH | libc::O_DIRECTORY,
            BENEATH,
        )
        .map_err(|e| fail("detach the hidden paths' layers", at, e))?;
        let spot = Spot(fd);
        umount2(&spot.proc_path(), MntFlags::MNT_DETACH)
            .map_err(|e| fail("detach the hidden paths' layers", at, e))?;
        drop(spot);
        // The empty folder goes too, unless a grant's recursive bind copied
        // the tmpfs while it was there (the root is built inside the state
        // folder, which a grant may hold): then it stays, empty.
        if let Ok(name) = std::ffi::CString::new(MASKS_AT.trim_start_matches('/')) {
            // SAFETY: unlinkat of an empty folder in the skeleton we own.
            unsafe { libc::unlinkat(root.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) };
        }
        Ok(())
    }
}

/// Gives the layer's folder `rel` the mode and owner of the grant's own (a merged folder shows the top layer's): the agent must see
/// and may use them as they are. An owner the sandbox cannot map stays
/// ours; the agent was not that owner either.
fn like_the_grant(layer: &std::os::fd::OwnedFd, lower: &std::os::fd::OwnedFd, rel: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(real) = super::sys::openat2(
        lower.as_raw_fd(),
        rel,
        libc::O_PATH | libc::O_NOFOLLOW,
        BENEATH,
    ) else {
        return;
    };
    let (Ok(st), Ok(ours)) = (
        nix::sys::stat::fstat(real.as_raw_fd()),
        super::sys::openat2(
            layer.as_raw_fd(),
            rel,
            libc::O_RDONLY | libc::O_DIRECTORY,
            BENEATH,
        ),
    ) else {
        return;
    };
    // SAFETY: fchown/fchmod on a descriptor of our own layer's folder.
    unsafe {
        libc::fchown(ours.as_raw_fd(), st.st_uid, st.st_gid);
        libc::fchmod(ours.as_raw_fd(), st.st_mode & 0o7777);
    }
}

/// A read-only grant with hidden paths in it: an overlay of `layer` (its
/// whiteouts) over the grant, with no upper layer. Unlike a cover mounted
/// on a file, a whiteout hides the name for the whole task, whatever the
/// user's programs create, replace or mount there meanwhile.
fn read_only_overlay(
    layer: &std::os::fd::OwnedFd,
    lower: &std::os::fd::OwnedFd,
    dst: &Spot,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    let opts = format!(
        "lowerdir=/proc/self/fd/{}:/proc/self/fd/{},userxattr",
        layer.as_raw_fd(),
        lower.as_raw_fd()
    );
    mount(
        Some("overlay"),
        &dst.proc_path(),
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
}

/// Links at the paths grants were given by (see [`SandboxSpec::aliases`]),
/// where the sandbox's own folders hold them: never in a grant or a
/// persistent home (host folders), never over something there. A
/// convenience only, so a place that does not suit is skipped.
fn make_aliases(spec: &SandboxSpec, root: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let in_host_folder = |p: &Path| {
        spec.ro.iter().any(|g| p.starts_with(g))
            || spec.rw.iter().any(|g| p.starts_with(&g.path))
            || (spec.persistent_home.is_some() && p.starts_with(&spec.user.home))
    };
    for (given, real) in &spec.aliases {
        let (Some(parent), Some(name)) = (given.parent(), given.file_name()) else {
            continue;
        };
        if in_host_folder(given) || spec.deny.iter().any(|d| given.starts_with(d)) {
            continue;
        }
        let refuse = |_: &Path| StepError {
            stage: String::new(),
            message: String::new(),
        };
        let Ok(dir) = spot(root, parent, false, &refuse) else {
            continue;
        };
        let (Ok(target), Ok(name)) = (
            std::ffi::CString::new(real.as_os_str().as_bytes()),
            std::ffi::CString::new(name.as_bytes()),
        ) else {
            continue;
        };
        // SAFETY: symlinkat on a descriptor and strings we own; it never
        // replaces what is there.
        unsafe { libc::symlinkat(target.as_ptr(), dir.0.as_raw_fd(), name.as_ptr()) };
    }
}

/// One mount of the user's area (tmp, home, grants), applied parents first.
enum Item<'a> {
    Tmp,
    Home,
    Ro(&'a Path),
    Rw(&'a super::spec::RwMount),
}

impl Item<'_> {
    fn path<'b>(&'b self, spec: &'b SandboxSpec) -> &'b Path {
        match self {
            Item::Tmp => Path::new("/tmp"),
            Item::Home => &spec.user.home,
            Item::Ro(p) => p,
            Item::Rw(m) => &m.path,
        }
    }
}

/// Builds what no task decides under `base.root_mount`: the tmpfs root,
/// the read-only system, `/etc` (but `resolv.conf`), `/proc` and `/dev`.
/// PID 1 does this before its plan arrives; [`build_rest`] finishes.
pub fn build_base(base: &SandboxBase) -> Result<(), StepError> {
    let r = base.root_mount.as_path();
    // Nothing we mount may propagate back to the host, nor anything the
    // host mounts later into the sandbox (a vault opened over a folder with
    // a hidden path in a grant would show through a slave mount).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("make mounts private", Path::new("/"), e))?;
    tmpfs(
        r,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755,size=16m",
    )?;

    // The read-only system.
    for name in SYSTEM {
        let host = Path::new("/").join(name);
        let dst = r.join(name);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&host).map_err(|e| fail("read link", &host, e))?;
                symlink(&target, &dst).map_err(|e| fail("create link", &dst, e))?;
            }
            Ok(m) if m.is_dir() => {
                mkdir_p(&dst, 0o755).map_err(|e| fail("create mount point", &dst, e))?;
                ro_bind(&host, &dst)?;
            }
            _ => {}
        }
    }
    build_etc(base, &r.join("etc"))?;
    build_proc(&r.join("proc"))?;
    build_dev(&r.join("dev"))
}

/// How [`build_rest`] hid the hidden paths inside read-only grants.
#[derive(Debug, Default)]
pub struct HiddenReport {
    /// Grants laid over with a layer of whiteouts.
    pub whiteouts: usize,
    /// Grants holding other file systems, whose hidden paths were covered
    /// as they were at the start.
    pub covered_at_start: Vec<PathBuf>,
}

/// Adds what the plan decides to the root [`build_base`] made (the
/// resolver's configuration, `/tmp`, `$HOME`, the grants, the hidden
/// paths, the proxy's socket), makes it read-only and pivots into it.
pub fn build_rest(spec: &SandboxSpec) -> Result<HiddenReport, StepError> {
    let mut report = HiddenReport::default();
    let r = spec.root_mount.as_path();
    write_file(&r.join("etc").join("resolv.conf"), &spec.resolv_conf)?;

    // Every place below is found from the root's descriptor without
    // following a symbolic link: the persistent home (bound at `$HOME`) is
    // a folder the agent wrote, and a link it left there must not send a
    // grant, a new mount point or a hidden path's cover anywhere else.
    let root = fs::File::open(r).map_err(|e| fail("open new root", r, e))?;
    let root = std::os::fd::AsFd::as_fd(&root);
    let in_the_way = |shown: &Path| in_the_way(spec, shown);

    let mut masks = Masks::default();

    // The user's area, parents before children so a nested grant lands on
    // top of the folder that contains it.
    let mut items: Vec<Item> = Vec::new();
    let covered = |p: &Path| {
        spec.ro.iter().any(|g| p.starts_with(g)) || spec.rw.iter().any(|g| p.starts_with(&g.path))
    };
    if !covered(Path::new("/tmp")) {
        items.push(Item::Tmp);
    }
    if !covered(&spec.user.home) {
        items.push(Item::Home);
    }
    items.extend(spec.ro.iter().map(|p| Item::Ro(p.as_path())));
    items.extend(spec.rw.iter().map(Item::Rw));
    items.sort_by_key(|i| i.path(spec).components().count());
    for item in &items {
        let path = item.path(spec);
        match item {
            Item::Tmp => {
                let dst = spot(root, path, false, &in_the_way)?;
                tmpfs(
                    &dst.proc_path(),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    &format!(
                        "mode=1777,size={},nr_inodes={}",
                        spec.limits.tmp_size.max(4096),
                        tmpfs_inodes(spec.limits.tmp_size)
                    ),
                )?;
            }
            Item::Home => {
                let dst = spot(root, path, false, &in_the_way)?;
                if let Some(src) = &spec.persistent_home {
                    bind_with_attrs(src, To::Fd(dst.fd()), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
                        .map_err(|e| fail("bind home", src, e))?;
                } else {
                    let owner = if spec.outer_root {
                        format!(",uid={},gid={}", spec.user.uid, spec.user.gid)
                    } else {
                        String::new()
                    };
                    tmpfs(
                        &dst.proc_path(),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        &format!(
                            "mode=0700,size={},nr_inodes={}{owner}",
                            spec.limits.tmp_size.max(4096),
                            tmpfs_inodes(spec.limits.tmp_size)
                        ),
                    )?;
                }
            }
            Item::Ro(src) => {
                let fd = open_grant(spec, src, libc::O_PATH)?;
                let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd))
                    .map_err(|e| fail("open grant", src, e))?;
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                let dst = spot(root, path, !is_dir, &in_the_way)?;
                let hidden = hidden_inside(spec, src);
                if is_dir && !hidden.is_empty() {
                    let layer = masks.layer(root, &hidden, src, &fd, false, &in_the_way)?;
                    match read_only_overlay(&layer, &fd, &dst) {
                        Ok(()) => {
                            report.whiteouts += 1;
                            continue;
                        }
                        // Other file systems mounted inside the grant: the
                        // kernel will not lay an overlay over a folder with
                        // mounts it must keep (locked in our namespace).
                        // Covers at the start it is, and the report says so.
                        Err(nix::errno::Errno::EINVAL) => {
                            report.covered_at_start.push(src.to_path_buf())
                        }
                        Err(e) => {
                            return Err(fail("mount read-only grant with hidden paths", src, e))
                        }
                    }
                }
                bind_fd_with_attrs(
                    std::os::fd::AsFd::as_fd(&fd),
                    To::Fd(dst.fd()),
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                )
                .map_err(|e| fail("read-only bind", src, e))?;
            }
            Item::Rw(m) => {
                let lower = open_grant(spec, &m.path, libc::O_RDONLY | libc::O_DIRECTORY)?;
                let dst = spot(root, path, false, &in_the_way)?;
                // Hidden names missing now get whiteouts, so that one the
                // user makes on the host meanwhile does not show through;
                // those there now are covered below, on the overlay's own
                // entries (which the host's renames leave in place).
                let hidden = hidden_inside(spec, &m.path);
                let layer = match hidden.is_empty() {
                    true => None,
                    false => {
                        Some(masks.layer(root, &hidden, &m.path, &lower, true, &in_the_way)?)
                    }
                };
                overlay(m, layer.as_ref(), lower, &dst.proc_path())?;
            }
        }
    }

    masks.finish(root)?;
    make_aliases(spec, root);

    // Hidden paths: an empty, read-only, unlistable folder, or /dev/null
    // bound read-only on a nodev mount (so it cannot even be opened). Each
    // is looked up by its own name with no link on the way. A name that
    // leads through a link is not the real path: the supervisor listed the
    // real path of every hidden path too, and grants are mounted at their
    // real paths, so that one is found and covered.
    for d in &spec.deny {
        let Some((dst, kind)) = existing(root, d)? else {
            continue;
        };
        if kind == libc::S_IFDIR {
            tmpfs(
                &dst.proc_path(),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                "mode=0000,size=4k",
            )?;
        } else if kind == libc::S_IFLNK {
            // A mount cannot cover a symlink itself; its target was added to
            // the deny list by the supervisor, so it leads nowhere.
            continue;
        } else {
            bind_with_attrs(
                Path::new("/dev/null"),
                To::Fd(dst.fd()),
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            )
            .map_err(|e| fail("read-only bind", Path::new("/dev/null"), e))?;
        }
    }

    super::net::before_pivot(spec, r)?;

    // The skeleton itself becomes read-only, then we enter it.
    mount(
        None::<&str>,
        r,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=16m"),
    )
    .map_err(|e| fail("make root read-only", r, e))?;
    pivot(r)?;
    Ok(report)
}

fn overlay(
    m: &super::spec::RwMount,
    mask: Option<&std::os::fd::OwnedFd>,
    lower: std::os::fd::OwnedFd,
    dst: &Path,
) -> Result<(), StepError> {
    use std::os::fd::AsRawFd;
    // Layers are named through /proc/self/fd so that no file name (commas,
    // colons, backslashes, newlines) can be read as a mount option.
    let open = |p: &Path| fs::File::open(p).map_err(|e| fail("open overlay layer", p, e));
    let (upper, work) = (open(&m.upper)?, open(&m.work)?);
    let mask = mask.map_or(String::new(), |f| {
        format!("/proc/self/fd/{}:", f.as_raw_fd())
    });
    let opts = format!(
        "lowerdir={mask}/proc/self/fd/{},upperdir=/proc/self/fd/{},workdir=/proc/self/fd/{},userxattr",
        lower.as_raw_fd(),
        upper.as_raw_fd(),
        work.as_raw_fd()
    );
    mount(
        Some("overlay"),
        dst,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| fail("mount overlay for read-write grant", &m.path, e))
}

fn write_file(path: &Path, content: &str) -> Result<(), StepError> {
    fs::write(path, content).map_err(|e| fail("write", path, e))
}

fn build_etc(base: &SandboxBase, etc: &Path) -> Result<(), StepError> {
    mkdir_p(etc, 0o755).map_err(|e| fail("create", etc, e))?;
    let u = &base.user;
    let name = sanitize_name(&u.name);
    let home = u.home.to_string_lossy().replace([':', '\n'], "_");
    let mut passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n{name}:x:{}:{}:{name}:{home}:/bin/sh\n",
        u.uid, u.gid
    );
    if u.uid != 65534 {
        passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    }
    write_file(&etc.join("passwd"), &passwd)?;
    let mut group = format!("root:x:0:\n{name}:x:{}:\n", u.gid);
    if u.gid != 65534 {
        group.push_str("nogroup:x:65534:\n");
    }
    write_file(&etc.join("group"), &group)?;
    write_file(
        &etc.join("hosts"),
        &format!(
            "127.0.0.1\tlocalhost {h}\n::1\tlocalhost ip6-localhost ip6-loopback {h}\n",
            h = base.hostname
        ),
    )?;
    write_file(&etc.join("hostname"), &format!("{}\n", base.hostname))?;
    write_file(
        &etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n",
    )?;
    write_file(
        &etc.join("machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )?;
    for name in ETC_BORROWED {
        let host = Path::new("/etc").join(name);
        let dst = etc.join(name);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let t = fs::read_link(&host).map_err(|e| fail("read link", &host, e))?;
                symlink(&t, &dst).map_err(|e| fail("create link", &dst, e))?;
            }
            Ok(_) => {
                mountpoint_like(&host, &dst)?;
                ro_bind(&host, &dst)?;
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// A user name safe for passwd(5).
fn sanitize_name(n: &str) -> String {
    let s: String = n
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(32)
        .collect();
    if s.is_empty() {
        "agent".into()
    } else {
        s
    }
}

fn build_proc(proc_: &Path) -> Result<(), StepError> {
    mkdir_p(proc_, 0o555).map_err(|e| fail("create", proc_, e))?;
    mount(
        Some("proc"),
        proc_,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| fail("mount /proc", proc_, e))?;
    for name in PROC_READ_ONLY {
        let p = proc_.join(name);
        if p.exists() {
            ro_bind(&p, &p)?;
        }
    }
    for name in PROC_MASKED_FILES {
        let p = proc_.join(name);
        if p.exists() {
            ro_bind(Path::new("/dev/null"), &p)?;
        }
    }
    for name in PROC_MASKED_DIRS {
        let p = proc_.join(name);
        if p.is_dir() {
            tmpfs(
                &p,
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                "mode=0555,size=4k",
            )?;
        }
    }
    Ok(())
}

fn build_dev(dev: &Path) -> Result<(), StepError> {
    mkdir_p(dev, 0o755).map_err(|e| fail("create", dev, e))?;
    tmpfs(
        dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        // A few nodes and links; writable by the agent when unprivileged.
        "mode=0755,size=64k,nr_inodes=256",
    )?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        let dst = dev.join(name);
        if host.exists() {
            fs::File::create(&dst).map_err(|e| fail("create", &dst, e))?;
            bind_with_attrs(&host, To::Path(&dst), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC)
                .map_err(|e| fail("bind device", &host, e))?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        symlink(target, dev.join(link)).map_err(|e| fail("create link", &dev.join(link), e))?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts, 0o755).map_err(|e| fail("create", &pts, e))?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        // Every devpts instance but the host's draws on one pool for the
        // whole machine (kernel.pty.max less the host's reserve, 3072 by
        // default): a task could take every pseudo-terminal containers
        // and other tasks get. `--tty` takes its terminal from the host.
        Some("newinstance,ptmxmode=0666,mode=620,max=64"),
    )
    .map_err(|e| fail("mount devpts", &pts, e))?;
    let shm = dev.join("shm");
    mkdir_p(&shm, 0o755).map_err(|e| fail("create", &shm, e))?;
    tmpfs(
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "mode=1777,size=64m,nr_inodes=16384",
    )?;
    let _ = fs::set_permissions(dev, fs::Permissions::from_mode(0o755));
    Ok(())
}

/// Enters `new_root` and detaches the host's tree (`pivot_root(".", ".")`,
/// then unmounting the old root stacked underneath).
fn pivot(new_root: &Path) -> Result<(), StepError> {
    nix::unistd::chdir(new_root).map_err(|e| fail("enter new root", new_root, e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| fail("pivot_root", new_root, e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detach old root", Path::new("/"), e))?;
    nix::unistd::chdir("/").map_err(|e| fail("enter /", Path::new("/"), e))?;
    Ok(())
}
