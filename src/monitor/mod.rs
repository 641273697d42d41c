//! The monitor: denials are events, not silence. The sandbox installs a
//! seccomp filter whose denials and watched calls go to a user-notification
//! listener; [`run`] serves that listener in the supervisor:
//!
//! - a call the profile denies is answered `EPERM` and recorded with the
//!   arguments that matter (the ioctl request, the clone flags, …);
//! - a watched path or network call is only *observed*: its path or address
//!   is read from the agent's memory (`process_vm_readv`, then
//!   `SECCOMP_IOCTL_NOTIF_ID_VALID`), and the call continues
//!   (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`) so that the kernel — mounts and
//!   Landlock — decides. A racing thread that swaps the path can at worst
//!   spoil the report, never the outcome.
//!
//! Repeats are coalesced ([`coalesce`]), so a looping agent costs bounded
//! memory. When the listener goes away (the supervisor dies), the kernel
//! fails the notified calls with `ENOSYS`: the sandbox never hangs.

pub mod coalesce;
pub mod watch;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::event::{now_ms, EventKind};
use crate::policy::WatchLevel;
use crate::sandbox::seccomp::{syscall_name, Rule, RuleIndex};
use coalesce::{Coalescer, Key};
use watch::{Place, View, FILE_SYSCALLS};

/// What the listener needs to know about its task.
#[derive(Debug, Clone)]
pub struct Context {
    pub level: WatchLevel,
    /// Calls answered `EPERM` (the rest of what arrives is observed).
    pub deny_rules: Vec<Rule>,
    pub view: View,
}

/// Counts, for tests and the final report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub notifications: u64,
    pub denied: u64,
    pub observed: u64,
}

const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Serves `listener` until no process of the task uses the filter any
/// more; every event goes to `sink`. Run it on its own thread.
pub fn run(listener: OwnedFd, ctx: Context, mut sink: impl FnMut(EventKind)) -> Stats {
    let fd = listener.as_raw_fd();
    let mut co = Coalescer::new();
    let mut stats = Stats::default();
    let mut last_flush = Instant::now();
    let mut buf = vec![0u8; 4096];
    let deny_index = RuleIndex::new(&ctx.deny_rules);
    // Wake the agent on the CPU we answer from (Linux ≥ 6.6); an older
    // kernel just answers a little slower.
    // SAFETY: ioctl with a u64 flag value.
    unsafe {
        let flags: u64 = 1; // SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
        libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS as _, flags);
    }
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let r = unsafe { libc::poll(&mut pfd, 1, FLUSH_EVERY.as_millis() as i32) };
        if last_flush.elapsed() >= FLUSH_EVERY {
            co.flush().into_iter().for_each(&mut sink);
            last_flush = Instant::now();
        }
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if r == 0 {
            continue;
        }
        if pfd.revents & libc::POLLIN == 0 {
            // POLLHUP: every task using the filter is gone.
            break;
        }
        // SAFETY: the kernel requires a zeroed seccomp_notif.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: RECV fills the struct we own.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV as _, &mut req) } != 0 {
            // ENOENT: the caller died between notify and receive.
            continue;
        }
        stats.notifications += 1;
        let nr = req.data.nr as i64;
        let args = req.data.args;
        let deny = deny_index.matches(nr, &args);
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: 0,
        };
        if deny {
            stats.denied += 1;
            resp.error = -libc::EPERM;
            if let Some(ev) = co.record(
                Key::Syscall {
                    name: syscall_name(nr).unwrap_or("unknown").to_string(),
                    detail: detail(nr, &args, req.pid, fd, req.id, &mut buf),
                },
                req.pid,
                now_ms(),
            ) {
                sink(ev);
            }
        } else {
            stats.observed += 1;
            resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
            for key in observe(&ctx, nr, &args, req.pid, fd, req.id, &mut buf) {
                if let Some(ev) = co.record(key, req.pid, now_ms()) {
                    sink(ev);
                }
            }
        }
        // SAFETY: SEND reads the response we own. ENOENT (the caller died)
        // needs no handling.
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND as _, &mut resp) };
    }
    co.flush().into_iter().for_each(&mut sink);
    stats
}

/// Copies `len` bytes of the agent's memory at `addr` into `buf`, one page
/// at a time (one read may not cross into an unmapped page: a path at the
/// very top of the stack must still be readable); returns how many bytes
/// were read.
fn copy_from(pid: u32, addr: u64, len: usize, buf: &mut [u8], stop_at_nul: bool) -> usize {
    let len = len.min(buf.len());
    let mut done = 0;
    while done < len {
        let at = addr + done as u64;
        let chunk = (4096 - (at as usize % 4096)).min(len - done);
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: chunk,
        };
        let remote = libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: chunk,
        };
        // SAFETY: the local iovec lies inside our buffer; the remote one is
        // only read by the kernel, which checks it.
        let n = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            break;
        }
        let n = n as usize;
        let found = stop_at_nul && buf[done..done + n].contains(&0);
        done += n;
        if found || n < chunk {
            break;
        }
    }
    done
}

/// Whether notification `id` is still live: checked after every read of
/// the agent's memory, so the pid cannot have been reused meanwhile.
fn still_valid(fd: i32, id: u64) -> bool {
    let mut nid = id;
    // SAFETY: ID_VALID reads a u64.
    unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _, &mut nid) == 0 }
}

/// Reads `len` bytes of the agent's memory at `addr`.
fn read_mem(pid: u32, addr: u64, len: usize, fd: i32, id: u64, buf: &mut [u8]) -> Option<usize> {
    if addr == 0 || len == 0 {
        return None;
    }
    let n = copy_from(pid, addr, len, buf, false);
    (n > 0 && still_valid(fd, id)).then_some(n)
}

fn read_path(pid: u32, addr: u64, fd: i32, id: u64, buf: &mut [u8]) -> Option<String> {
    if addr == 0 {
        return None;
    }
    let n = copy_from(pid, addr, buf.len(), buf, true);
    if n == 0 || !still_valid(fd, id) {
        return None;
    }
    let end = buf[..n].iter().position(|&b| b == 0)?;
    Some(crate::workspace::names::escape(&buf[..end]))
}

/// Decoded arguments of a denied call that tell a person what was tried.
fn detail(nr: i64, a: &[u64; 6], pid: u32, fd: i32, id: u64, buf: &mut [u8]) -> Option<String> {
    let name = syscall_name(nr)?;
    Some(match name {
        "ioctl" => {
            let req = a[1] & 0xffff_ffff;
            let what = match req {
                0x5412 => " (TIOCSTI: push keystrokes into a terminal)",
                0x541c => " (TIOCLINUX)",
                _ => "",
            };
            format!("request {req:#x}{what}")
        }
        "clone" | "unshare" => format!("flags {}", clone_flags(a[0])),
        "setns" => format!("namespace type {}", clone_flags(a[1])),
        "ptrace" => format!("request {}, target pid {}", a[0] as i64, a[1] as i64),
        "process_vm_readv" | "process_vm_writev" | "pidfd_getfd" | "kcmp" => {
            format!("target pid {}", a[0] as i64)
        }
        "socket" | "socketpair" => {
            let family = match (a[0] & 0xffff_ffff) as i32 {
                libc::AF_UNIX => "unix".to_string(),
                libc::AF_INET => "inet".to_string(),
                libc::AF_INET6 => "inet6".to_string(),
                libc::AF_NETLINK => "netlink".to_string(),
                libc::AF_PACKET => "packet".to_string(),
                libc::AF_VSOCK => "vsock".to_string(),
                other => other.to_string(),
            };
            let kind = match (a[1] & 0xf) as i32 {
                libc::SOCK_STREAM => "stream".to_string(),
                libc::SOCK_DGRAM => "datagram".to_string(),
                libc::SOCK_SEQPACKET => "seqpacket".to_string(),
                libc::SOCK_RAW => "raw".to_string(),
                other => other.to_string(),
            };
            format!("family {family}, type {kind}")
        }
        "personality" => format!("persona {:#x}", a[0] & 0xffff_ffff),
        "seccomp" => format!("operation {}, flags {:#x}", a[0], a[1]),
        "mount" => format!(
            "target {}",
            read_path(pid, a[1], fd, id, buf).unwrap_or_else(|| "?".into())
        ),
        "umount2" | "pivot_root" | "chroot" | "open_by_handle_at" | "acct" | "swapon" => {
            let idx = usize::from(name == "open_by_handle_at");
            format!(
                "path {}",
                read_path(pid, a[idx], fd, id, buf).unwrap_or_else(|| "?".into())
            )
        }
        "bpf" => format!("command {}", a[0]),
        "keyctl" => format!("operation {}", a[0]),
        _ => return None,
    })
}

fn clone_flags(f: u64) -> String {
    let names = [
        (libc::CLONE_NEWUSER as u64, "CLONE_NEWUSER"),
        (libc::CLONE_NEWNS as u64, "CLONE_NEWNS"),
        (libc::CLONE_NEWPID as u64, "CLONE_NEWPID"),
        (libc::CLONE_NEWNET as u64, "CLONE_NEWNET"),
        (libc::CLONE_NEWIPC as u64, "CLONE_NEWIPC"),
        (libc::CLONE_NEWUTS as u64, "CLONE_NEWUTS"),
        (libc::CLONE_NEWCGROUP as u64, "CLONE_NEWCGROUP"),
        (0x80, "CLONE_NEWTIME"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        format!("{f:#x}")
    } else {
        set.join("|")
    }
}

/// What an observed call touched, as report keys (none when it stayed in
/// the sandbox's view at watch level `denials`).
fn observe(
    ctx: &Context,
    nr: i64,
    a: &[u64; 6],
    pid: u32,
    fd: i32,
    id: u64,
    buf: &mut [u8],
) -> Vec<Key> {
    let Some(name) = syscall_name(nr) else {
        return vec![];
    };
    if let Some((_, paths, dirfd, op)) = FILE_SYSCALLS.iter().find(|(n, ..)| *n == name) {
        let mut keys = Vec::new();
        let op = open_op(name, a).unwrap_or(op);
        for &i in paths.iter() {
            let Some(path) = read_path(pid, a[i], fd, id, buf) else {
                continue;
            };
            let relative_to_dir = dirfd.is_some_and(|d| (a[d] & 0xffff_ffff) != 0xffff_ff9c);
            // A path relative to the working folder is placed from it: a
            // `cd` next to a hidden folder must not make `.ssh/id_rsa` look
            // harmless. One relative to an open folder is not watched at
            // `denials` (the bulk tools' walks); `all` reports it as it is.
            let (place, full) = if path.starts_with('/') {
                (ctx.view.place(Path::new(&path)), path.clone())
            } else if relative_to_dir {
                (Place::Visible, path.clone())
            } else {
                match cwd_of(pid) {
                    Some(cwd) => {
                        let joined = watch::normalize(&cwd.join(&path));
                        let text = crate::workspace::names::escape(joined.as_os_str().as_bytes());
                        (ctx.view.place(&joined), text)
                    }
                    None => (Place::Visible, path.clone()),
                }
            };
            // Worth asking only for a path in no shown folder: the host has
            // it and the sandbox hid it — not a search along PATH, nor the
            // loader probing for an optional file.
            let hidden =
                matches!(place, Place::Private | Place::Outside) && hidden_from_sandbox(pid, &full);
            let report = match (ctx.level, place) {
                (WatchLevel::All, _) | (_, Place::Denied) => true,
                (_, Place::Visible) => false,
                (WatchLevel::Denials, Place::Private | Place::Outside) => hidden,
            };
            if report {
                let denied = match place {
                    Place::Visible => false,
                    Place::Denied => true,
                    Place::Private | Place::Outside => hidden,
                };
                keys.push(Key::File {
                    op: op.to_string(),
                    path: if denied { full } else { path },
                    denied,
                });
            }
        }
        return keys;
    }
    let (addr, len) = match name {
        "connect" => (a[1], a[2] as usize),
        "sendto" => (a[4], a[5] as usize),
        "sendmsg" => {
            // struct msghdr starts with msg_name and msg_namelen.
            let mut hdr = [0u8; 16];
            match read_mem(pid, a[1], 16, fd, id, &mut hdr) {
                Some(16) => (
                    u64::from_ne_bytes(hdr[0..8].try_into().unwrap_or_default()),
                    u32::from_ne_bytes(hdr[8..12].try_into().unwrap_or_default()) as usize,
                ),
                _ => (0, 0),
            }
        }
        _ => return vec![],
    };
    let mut sa = [0u8; 128];
    let Some(n) = read_mem(pid, addr, len.min(128), fd, id, &mut sa) else {
        return vec![];
    };
    match sockaddr_text(&sa[..n]) {
        // The sandbox's loopback is its own (its local servers, the
        // proxy's forwarder): only addresses beyond it are reported.
        Some((text, _port, loopback)) if !loopback => {
            vec![Key::Net {
                syscall: name.to_string(),
                address: text,
            }]
        }
        _ => vec![],
    }
}

/// The host has `path` and the agent's view of it does not. The agent
/// chooses the path: looking it up must not mount an automounted folder
/// (`/net/HOST`) on the host.
fn hidden_from_sandbox(pid: u32, path: &str) -> bool {
    use nix::fcntl::AtFlags;
    let exists = |p: &str| {
        nix::sys::stat::fstatat(
            None,
            p,
            AtFlags::AT_SYMLINK_NOFOLLOW | AtFlags::AT_NO_AUTOMOUNT,
        )
        .is_ok()
    };
    if !path.starts_with('/') || !exists(path) {
        return false;
    }
    !exists(&format!("/proc/{pid}/root{path}"))
}

fn open_op(name: &str, a: &[u64; 6]) -> Option<&'static str> {
    let flags = match name {
        "openat" => a[2],
        "open" => a[1],
        _ => return None,
    };
    let flags = flags as i32;
    Some(if flags & libc::O_CREAT != 0 {
        "create"
    } else if flags & (libc::O_WRONLY | libc::O_RDWR) != 0 {
        "write"
    } else {
        "open"
    })
}

fn cwd_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// An IPv4/IPv6 socket address as `addr:port` (unix sockets are not network).
fn sockaddr_text(sa: &[u8]) -> Option<(String, u16, bool)> {
    let family = u16::from_ne_bytes(sa.get(0..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(sa.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip = std::net::Ipv4Addr::from(<[u8; 4]>::try_from(sa.get(4..8)?).ok()?);
            // Transparent-mode pool addresses live on the sandbox's `lo` too:
            // the forwarder catches them and the proxy logs the flow.
            let local = ip.is_loopback() || crate::netproxy::dns::Pool::contains(ip);
            Some((format!("{ip}:{port}"), port, local))
        }
        libc::AF_INET6 => {
            let ip = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(sa.get(8..24)?).ok()?);
            Some((format!("[{ip}]:{port}"), port, ip.is_loopback()))
        }
        _ => None,
    }
}
