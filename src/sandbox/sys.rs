//! Thin, checked wrappers over the syscalls the helper needs that `nix` does
//! not wrap (the new mount API, raw clone, capabilities). Each returns an
//! `io::Error` carrying errno; callers add what they were doing.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Opens the absolute `path` with no symbolic link in any component.
pub fn open_no_symlinks(path: &Path, flags: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
    openat2(
        libc::AT_FDCWD,
        path,
        flags,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

/// Binds `src` (recursively) onto `dst` with `attrs` set on every mount of
/// the copy, atomically: a read-only bind never shows a writable submount.
pub fn bind_with_attrs(src: &Path, dst: To<'_>, attrs: u64) -> io::Result<()> {
    bind_tree(libc::AT_FDCWD, &cstr(src)?, 0, dst, attrs)
}

/// `openat2` of `path` relative to `dirfd` with `resolve` flags, retried
/// while a concurrent rename makes the kernel ask for it (EAGAIN).
pub fn openat2(
    dirfd: libc::c_int,
    path: &Path,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = cstr(path)?;
    // SAFETY: open_how is plain old data; zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    loop {
        // SAFETY: how and c outlive the call; the size matches the struct.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: r is a new descriptor of ours.
            return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

/// [`bind_with_attrs`] of the file or folder open as `src` (an `O_PATH`
/// descriptor is enough): what was checked is what gets mounted.
pub fn bind_fd_with_attrs(
    src: std::os::fd::BorrowedFd<'_>,
    dst: To<'_>,
    attrs: u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    bind_tree(
        src.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH as libc::c_uint,
        dst,
        attrs,
    )
}

/// Where a bind lands: a path, or the very file a descriptor holds (found
/// without following any link, so nothing can be swapped in between).
#[derive(Clone, Copy)]
pub enum To<'a> {
    Path(&'a Path),
    Fd(std::os::fd::BorrowedFd<'a>),
}

const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

fn bind_tree(
    dirfd: libc::c_int,
    s: &std::ffi::CStr,
    extra: libc::c_uint,
    dst: To<'_>,
    attrs: u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (to_fd, d, to_flags) = match dst {
        To::Path(p) => (libc::AT_FDCWD, cstr(p)?, 0),
        To::Fd(fd) => (fd.as_raw_fd(), CString::default(), MOVE_MOUNT_T_EMPTY_PATH),
    };
    // SAFETY: plain syscalls on NUL-terminated paths we own.
    unsafe {
        let fd = check(libc::syscall(
            libc::SYS_open_tree,
            dirfd,
            s.as_ptr(),
            OPEN_TREE_CLONE
                | libc::O_CLOEXEC as libc::c_uint
                | libc::AT_RECURSIVE as libc::c_uint
                | extra,
        ))? as libc::c_int;
        let attr = MountAttr {
            attr_set: attrs,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let empty = c"";
        let r = check(libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ))
        .and_then(|_| {
            check(libc::syscall(
                libc::SYS_move_mount,
                fd,
                empty.as_ptr(),
                to_fd,
                d.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | to_flags,
            ))
        });
        libc::close(fd);
        r.map(|_| ())
    }
}

/// `clone(flags | SIGCHLD)` used like fork: returns 0 in the child.
///
/// # Safety
/// The calling process must be single-threaded (the helper is).
pub unsafe fn clone_fork(flags: libc::c_int) -> io::Result<libc::pid_t> {
    let rc = libc::syscall(
        libc::SYS_clone,
        (flags | libc::SIGCHLD) as libc::c_ulong,
        0usize,
        0usize,
        0usize,
        0usize,
    );
    check(rc).map(|p| p as libc::pid_t)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability from the bounding and ambient sets.
pub fn drop_bounding_and_ambient() -> io::Result<()> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: the kernel does not know this capability.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    // SAFETY: as above.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clears the effective, permitted and inheritable sets.
pub fn clear_capabilities() -> io::Result<()> {
    let mut hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: header and two data structs as capset(2) v3 expects.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    check(rc).map(|_| ())
}

/// Reads the effective capability mask of the calling thread (for tests and
/// the enforcement report).
pub fn effective_capabilities() -> io::Result<u64> {
    let mut hdr = CapHeader {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: as capget(2) expects.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    check(rc)?;
    Ok(data[0].effective as u64 | ((data[1].effective as u64) << 32))
}

/// Brings the loopback interface up in the current network namespace.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket used only for the ioctl, closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let e = io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(e);
        }
    }
    Ok(())
}

/// Marks every descriptor from `first` upwards close-on-exec.
pub fn cloexec_from(first: libc::c_uint) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with flags only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    check(rc).map(|_| ())
}
