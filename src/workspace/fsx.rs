//! File-descriptor based file system helpers. Everything in the workspace
//! goes through these: paths are relative byte strings resolved one
//! directory at a time beneath a root fd, never following a symlink, so a
//! hostile tree (symlinks, paths longer than `PATH_MAX`, non-UTF-8 names)
//! cannot steer a read or a write elsewhere.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A path relative to a grant root, as raw bytes with `/` separators.
pub type Rel = [u8];

/// Splits a relative path into its components; empty, `.` and `..`
/// components are refused so a path can only go down.
pub fn components(rel: &Rel) -> io::Result<Vec<&[u8]>> {
    if rel.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == b"." || *p == b"..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad relative path",
        ));
    }
    Ok(parts)
}

/// Parent part and final name of a non-empty relative path.
pub fn split_last(rel: &Rel) -> (&Rel, &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    }
}

/// `a/b` joined from a parent and a name.
pub fn join(parent: &Rel, name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + name.len() + 1);
    v.extend_from_slice(parent);
    if !parent.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens a folder given by an absolute path (the grant, the upper layer).
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: c is a valid C string; the fd returned is owned by us.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const RESOLVE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// `openat2` beneath `dir` with no symlink (or magic link) anywhere.
pub fn openat2(
    dir: RawFd,
    path: &[u8],
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_how is plain old data; zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = mode as u64;
    how.resolve = RESOLVE;
    loop {
        // SAFETY: how and c outlive the call; the size matches the struct.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: r is a new fd.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; the kernel asks to retry.
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

/// Whether the kernel has `openat2` (5.6+). The commit refuses to run
/// without it rather than fall back to a racy path walk.
pub fn openat2_available(root: &OwnedFd) -> bool {
    !matches!(openat2(root.as_raw_fd(), b".", libc::O_PATH | libc::O_DIRECTORY, 0),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS))
}

/// Opens the folder `rel` beneath `root` (chunked so that paths longer
/// than `PATH_MAX` still resolve; every chunk is resolved beneath the
/// previous folder without symlinks).
pub fn open_dir_at(root: &OwnedFd, rel: &Rel) -> io::Result<OwnedFd> {
    let parts = components(rel)?;
    let mut cur: Option<OwnedFd> = None;
    let mut chunk: Vec<u8> = Vec::new();
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    for p in parts {
        if !chunk.is_empty() && chunk.len() + p.len() + 1 > 3000 {
            let base = cur.as_ref().unwrap_or(root).as_raw_fd();
            cur = Some(openat2(base, &chunk, flags, 0)?);
            chunk.clear();
        }
        if !chunk.is_empty() {
            chunk.push(b'/');
        }
        chunk.extend_from_slice(p);
    }
    if chunk.is_empty() {
        chunk.push(b'.');
    }
    let base = cur.as_ref().unwrap_or(root).as_raw_fd();
    openat2(base, &chunk, flags, 0)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstat_at(dir: RawFd, name: &[u8]) -> io::Result<libc::stat> {
    let c = cstr(name)?;
    // SAFETY: st is plain old data written by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

/// `lstat_at` that maps "not there" to `None`.
pub fn lstat_opt(dir: RawFd, name: &[u8]) -> io::Result<Option<libc::stat>> {
    match lstat_at(dir, name) {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if e.raw_os_error() == Some(libc::ENOENT)
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: as in lstat_at.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

/// Names in an open folder, sorted bytewise, without `.` and `..`.
pub fn list_dir(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let dup = nix::unistd::dup(dir.as_raw_fd()).map_err(io::Error::from)?;
    let mut d = nix::dir::Dir::from_fd(dup).map_err(io::Error::from)?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry.map_err(io::Error::from)?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    // The dup shares the offset with `dir`: rewind for the next reader.
    // SAFETY: lseek on our own fd.
    unsafe { libc::lseek(dir.as_raw_fd(), 0, libc::SEEK_SET) };
    names.sort();
    Ok(names)
}

/// Opens `name` in `dir` as a regular file for reading, never following a
/// symlink and never blocking on a fifo.
pub fn open_file_at(dir: RawFd, name: &[u8]) -> io::Result<std::fs::File> {
    let fd = openat2(
        dir,
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        0,
    )?;
    let st = fstat(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(std::fs::File::from(fd))
}

/// Opens the sub-folder `name` of `dir`, no symlink followed.
pub fn open_subdir(dir: RawFd, name: &[u8]) -> io::Result<OwnedFd> {
    openat2(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

pub fn readlink_at(dir: RawFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf is writable for buf.len() bytes.
    let n = unsafe { libc::readlinkat(dir, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Value of an extended attribute on an open fd, `None` when absent.
pub fn fgetxattr(fd: RawFd, name: &str) -> Option<Vec<u8>> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: buf is writable for buf.len() bytes.
    let n = unsafe { libc::fgetxattr(fd, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

pub fn unlink_at(dir: RawFd, name: &[u8], is_dir: bool) -> io::Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: plain syscall on our fd and string.
    cvt(unsafe { libc::unlinkat(dir, c.as_ptr(), flags) }).map(|_| ())
}

pub fn rename_at(dir: RawFd, from: &[u8], to_dir: RawFd, to: &[u8]) -> io::Result<()> {
    let a = cstr(from)?;
    let b = cstr(to)?;
    // SAFETY: plain syscall.
    cvt(unsafe { libc::renameat(dir, a.as_ptr(), to_dir, b.as_ptr()) }).map(|_| ())
}

pub fn mkdir_at(dir: RawFd, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: plain syscall.
    cvt(unsafe { libc::mkdirat(dir, c.as_ptr(), mode as libc::mode_t) }).map(|_| ())
}

pub fn symlink_at(target: &[u8], dir: RawFd, name: &[u8]) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    // SAFETY: plain syscall.
    cvt(unsafe { libc::symlinkat(t.as_ptr(), dir, c.as_ptr()) }).map(|_| ())
}

/// Creates a new regular file (`O_EXCL`, no symlink) in `dir`.
pub fn create_file_at(dir: RawFd, name: &[u8], mode: u32) -> io::Result<std::fs::File> {
    let fd = openat2(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        mode as libc::mode_t,
    )?;
    Ok(std::fs::File::from(fd))
}

pub fn fsync_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::fsync(fd) }).map(|_| ())
}

pub fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::fchmod(fd, mode as libc::mode_t) }).map(|_| ())
}

/// The permission bits a folder's default ACL leaves to what is created in
/// it (its owner, mask or group, and other entries), or `None` when it has
/// none. The kernel ignores the umask there and gives a new entry the
/// default ACL cut down by the mode asked for.
pub fn default_acl_mode(dir: RawFd) -> Option<u32> {
    let name = c"system.posix_acl_default";
    let mut buf = vec![0u8; 4096];
    // SAFETY: fgetxattr writes at most buf.len() bytes into buf.
    let n = unsafe { libc::fgetxattr(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 4 {
        return None;
    }
    // posix_acl_xattr: a 4-byte version, then entries of tag (u16), perm
    // (u16) and id (u32).
    let (mut user, mut group, mut mask, mut other) = (None, None, None, None);
    for e in buf[4..n as usize].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]) as u32 & 0o7;
        match tag {
            0x01 => user = Some(perm),
            0x04 => group = Some(perm),
            0x10 => mask = Some(perm),
            0x20 => other = Some(perm),
            _ => {}
        }
    }
    Some((user? << 6) | (mask.or(group)? << 3) | other?)
}

/// Attributes that vouch for the content they were set on: file
/// capabilities (which the kernel drops when a file is written, as it drops
/// set-id bits) and integrity measurements. Never carried onto new content.
const NOT_FOR_NEW_CONTENT: &[&[u8]] = &[b"security.capability", b"security.ima", b"security.evm"];

/// Copies the extended attributes of `src` onto `dst`, the ACL
/// (`system.posix_acl_access`) only when `with_acl`, and those in
/// `NOT_FOR_NEW_CONTENT` only when `same_content` (a backup, a restore).
/// Best effort: an attribute this user may not set (a security label) is
/// left out.
pub fn copy_xattrs(src: RawFd, dst: RawFd, with_acl: bool, same_content: bool) {
    let mut names = vec![0u8; 4096];
    let n = loop {
        // SAFETY: flistxattr writes at most names.len() bytes into names.
        let n = unsafe { libc::flistxattr(src, names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) && names.len() < 1 << 20
        {
            names.resize(names.len() * 4, 0);
            continue;
        }
        return;
    };
    for name in names[..n].split(|b| *b == 0).filter(|x| !x.is_empty()) {
        if !with_acl && name == b"system.posix_acl_access" {
            continue;
        }
        if !same_content && NOT_FOR_NEW_CONTENT.contains(&name) {
            continue;
        }
        let Ok(cname) = std::ffi::CString::new(name) else {
            continue;
        };
        // SAFETY: a size query, then a read into a buffer of that size.
        let size = unsafe { libc::fgetxattr(src, cname.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            continue;
        }
        let mut value = vec![0u8; size as usize];
        let got =
            unsafe { libc::fgetxattr(src, cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if got < 0 {
            continue;
        }
        // SAFETY: fsetxattr reads `got` bytes of value.
        unsafe { libc::fsetxattr(dst, cname.as_ptr(), value.as_ptr().cast(), got as usize, 0) };
    }
}

/// `fchownat(AT_SYMLINK_NOFOLLOW)`: also sets a symlink's own owner.
pub fn lchown_at(dir: RawFd, name: &[u8], uid: u32, gid: u32) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: plain syscall.
    cvt(unsafe { libc::fchownat(dir, c.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(|_| ())
}

/// Sets access and modification times of `name` without following it.
pub fn set_times_at(dir: RawFd, name: &[u8], st: &libc::stat) -> io::Result<()> {
    let c = cstr(name)?;
    let ts = [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ];
    // SAFETY: ts has the two entries utimensat reads.
    cvt(unsafe { libc::utimensat(dir, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(|_| ())
}

/// Removes `name` in `dir`, recursively when it is a folder, never
/// following a symlink (a symlink is removed, not its target).
pub fn remove_tree_at(dir: RawFd, name: &[u8]) -> io::Result<()> {
    let st = match lstat_opt(dir, name)? {
        Some(st) => st,
        None => return Ok(()),
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let sub = open_subdir(dir, name)?;
        for child in list_dir(&sub)? {
            remove_tree_at(sub.as_raw_fd(), &child)?;
        }
        drop(sub);
        match unlink_at(dir, name, true) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    } else {
        match unlink_at(dir, name, false) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }
}

/// Removes the tree at `path` (a task's layer, or its overlay work
/// folder), whatever the agent left in it: folders without permissions
/// (overlay's `work/work` is mode 000; an agent's `chmod 000`) are opened
/// for their owner first, and the walk goes by directory descriptors, so a
/// tree deeper than PATH_MAX goes too. A missing tree is no error.
pub fn remove_owned_tree(path: &Path) -> io::Result<()> {
    fn remove(dir: RawFd, name: &[u8]) -> io::Result<()> {
        let Some(st) = lstat_opt(dir, name)? else {
            return Ok(());
        };
        if is_dir(&st) {
            if st.st_mode & 0o700 != 0o700 {
                let c = cstr(name)?;
                // SAFETY: fchmodat on a name in a folder we hold. Never
                // through a link, should the name have become one since
                // the lstat.
                unsafe { libc::fchmodat(dir, c.as_ptr(), 0o700, libc::AT_SYMLINK_NOFOLLOW) };
            }
            let sub = open_subdir(dir, name)?;
            for child in list_dir(&sub)? {
                remove(sub.as_raw_fd(), &child)?;
            }
        }
        match unlink_at(dir, name, is_dir(&st)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("not a removable path"));
    };
    let p = match open_dir_path(parent) {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    // Deep trees recurse deep: on a thread with room for it.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(s, || remove(p.as_raw_fd(), name.as_bytes()))?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the removal failed")))
    })
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}
pub fn is_reg(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}
pub fn is_lnk(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// Bytes to a `Path` (for messages).
pub fn rel_display(root: &Path, rel: &Rel) -> std::path::PathBuf {
    root.join(std::ffi::OsStr::from_bytes(rel))
}

/// A second name for `name` in the same folder (no symlink followed).
pub fn link_at(dir: RawFd, name: &[u8], new: &[u8]) -> io::Result<()> {
    let a = cstr(name)?;
    let b = cstr(new)?;
    // SAFETY: plain syscall.
    cvt(unsafe { libc::linkat(dir, a.as_ptr(), dir, b.as_ptr(), 0) }).map(|_| ())
}

/// `renameat2(RENAME_NOREPLACE)` within one folder: fails with `EEXIST`
/// rather than replace something that appeared meanwhile.
pub fn rename_noreplace(dir: RawFd, from: &[u8], to: &[u8]) -> io::Result<()> {
    let a = cstr(from)?;
    let b = cstr(to)?;
    // SAFETY: plain syscall.
    cvt(unsafe { libc::renameat2(dir, a.as_ptr(), dir, b.as_ptr(), libc::RENAME_NOREPLACE) })
        .map(|_| ())
}

/// `syncfs`: everything written to the file system holding `fd` is on
/// disk (and, since Linux 5.8, write-back errors are reported).
pub fn syncfs(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::syncfs(fd) }).map(|_| ())
}
