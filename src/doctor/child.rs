//! The probes that change the state of the process running them: they
//! create namespaces, mount file systems and install seccomp filters. Each
//! runs in a fresh `airlock __probe KIND` process (never a `fork()` of the
//! possibly multi-threaded CLI), which is single-threaded, so `unshare` and
//! `fork` are safe here. The result goes to stdout as one line of JSON and
//! into the exit status.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::ExitCode;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getgid, getpid, getuid, ForkResult};
use serde::{Deserialize, Serialize};

/// Which probe a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeKind {
    /// Create a user namespace and the other namespaces a task gets.
    Userns,
    /// Mount an overlay inside a user namespace (needs `--dir`).
    Overlay,
    /// Install a seccomp filter and see it deny a call.
    Seccomp,
    /// Get a seccomp user-notification listener and answer a call with CONTINUE.
    SeccompNotify,
}

impl ProbeKind {
    /// The word on the command line of the child.
    pub fn as_arg(self) -> &'static str {
        match self {
            ProbeKind::Userns => "userns",
            ProbeKind::Overlay => "overlay",
            ProbeKind::Seccomp => "seccomp",
            ProbeKind::SeccompNotify => "seccomp-notify",
        }
    }
}

/// How the overlay recorded a deleted lower file in the upper layer. The
/// review code must understand whichever form this kernel writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Whiteout {
    /// A character device 0/0 (the classic form).
    CharDevice,
    /// A file carrying the `user.overlay.whiteout` extended attribute.
    Xattr,
}

/// What a probe child prints: whether the layer works, the failing step if
/// not, and the facts only some probes find.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildOutput {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whiteout: Option<Whiteout>,
    /// Seccomp notify probe: whether a notified call could be let through
    /// with `SECCOMP_USER_NOTIF_FLAG_CONTINUE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_continue: Option<bool>,
}

type Step<T> = Result<T, String>;

fn step<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Runs one probe in this (fresh, single-threaded) process and reports it.
pub fn main(kind: ProbeKind, dir: Option<&Path>) -> ExitCode {
    let out = match kind {
        ProbeKind::Userns => userns(),
        ProbeKind::Overlay => match dir {
            Some(dir) => overlay(dir),
            None => Err("the overlay probe needs --dir".to_owned()),
        }
        .map(|w| ChildOutput {
            ok: true,
            whiteout: Some(w),
            ..ChildOutput::default()
        }),
        ProbeKind::Seccomp => seccomp_filter(),
        ProbeKind::SeccompNotify => seccomp_notify(),
    };
    let out = out.unwrap_or_else(|error| ChildOutput {
        error: Some(error),
        ..ChildOutput::default()
    });
    let line = serde_json::to_string(&out).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    // If stdout is gone the parent sees a missing line and reports that.
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
    if out.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A probe child killed on timeout takes its own child with it.
fn die_with_parent() {
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// Enters a new user namespace with our uid and gid mapped to themselves,
/// as the sandbox does for an unprivileged user.
fn enter_userns() -> Step<()> {
    let (uid, gid) = (getuid(), getgid());
    unshare(CloneFlags::CLONE_NEWUSER).map_err(step("unshare(CLONE_NEWUSER)"))?;
    fs::write("/proc/self/setgroups", "deny").map_err(step("write /proc/self/setgroups"))?;
    fs::write("/proc/self/uid_map", format!("{uid} {uid} 1"))
        .map_err(step("write /proc/self/uid_map"))?;
    fs::write("/proc/self/gid_map", format!("{gid} {gid} 1"))
        .map_err(step("write /proc/self/gid_map"))?;
    Ok(())
}

/// Enters a private mount namespace (inside the user namespace).
fn enter_mountns() -> Step<()> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(step("unshare(CLONE_NEWNS)"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("make / private"))
}

const PROC_ERRNO_BASE: i32 = 16;

/// Everything a task's namespaces need: the user namespace with our ids,
/// each other namespace, a mount in the new mount namespace, and a fresh
/// `/proc` mounted by PID 1 of the new PID namespace (which fails where
/// `/proc` is partly masked, as in some containers).
fn userns() -> Step<ChildOutput> {
    enter_userns()?;
    enter_mountns()?;
    for (flag, name) in [
        (CloneFlags::CLONE_NEWPID, "unshare(CLONE_NEWPID)"),
        (CloneFlags::CLONE_NEWNET, "unshare(CLONE_NEWNET)"),
        (CloneFlags::CLONE_NEWIPC, "unshare(CLONE_NEWIPC)"),
        (CloneFlags::CLONE_NEWUTS, "unshare(CLONE_NEWUTS)"),
        (CloneFlags::CLONE_NEWCGROUP, "unshare(CLONE_NEWCGROUP)"),
    ] {
        unshare(flag).map_err(step(name))?;
    }
    mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=64k,mode=0700"),
    )
    .map_err(step("mount tmpfs in the new mount namespace"))?;
    // SAFETY: this process is single-threaded (a fresh probe child), so the
    // forked child may run any code.
    match unsafe { fork() }.map_err(step("fork into the new PID namespace"))? {
        ForkResult::Child => {
            die_with_parent();
            // The exit code carries the result: 0, 1 (not PID 1) or
            // PROC_ERRNO_BASE + the errno of mounting /proc.
            let code = if getpid().as_raw() != 1 {
                1
            } else {
                match mount(
                    Some("proc"),
                    "/proc",
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                ) {
                    Ok(()) => 0,
                    Err(errno) => PROC_ERRNO_BASE + errno as i32,
                }
            };
            // SAFETY: leaving the forked child without running the parent's
            // exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(ChildOutput {
                ok: true,
                ..ChildOutput::default()
            }),
            Ok(WaitStatus::Exited(_, 1)) => {
                Err("the first process of the new PID namespace is not PID 1".to_owned())
            }
            Ok(WaitStatus::Exited(_, code)) if code >= PROC_ERRNO_BASE => Err(format!(
                "mount a fresh /proc in the new PID namespace (is /proc partly masked?): {}",
                nix::errno::Errno::from_raw(code - PROC_ERRNO_BASE)
            )),
            Ok(other) => Err(format!("PID namespace child ended as {other:?}")),
            Err(e) => Err(format!("wait for the PID namespace child: {e}")),
        },
    }
}

/// Mounts an overlay with `userxattr` in a new user and mount namespace,
/// with its upper and work folders in `dir` (on the file system where task
/// folders live), writes and deletes through it and checks where each change
/// landed. `dir` holds `lower/` (with `kept` and `gone`), `upper/`, `work/`
/// and `merged/`, prepared by the parent.
fn overlay(dir: &Path) -> Step<Whiteout> {
    enter_userns()?;
    enter_mountns()?;
    // Relative layer paths: no escaping of ',' or ':' in the options.
    std::env::set_current_dir(dir).map_err(step("enter the scratch folder"))?;
    mount(
        Some("overlay"),
        "merged",
        Some("overlay"),
        MsFlags::empty(),
        Some("lowerdir=lower,upperdir=upper,workdir=work,userxattr"),
    )
    .map_err(step("mount overlay with userxattr"))?;

    fs::write("merged/new", b"airlock").map_err(step("write through the overlay"))?;
    if fs::read("upper/new").map_err(step("read the new file in the upper layer"))? != b"airlock" {
        return Err("the file written through the overlay is not in the upper layer".to_owned());
    }
    if Path::new("lower/new").exists() {
        return Err("a write through the overlay reached the lower layer".to_owned());
    }
    if fs::read("merged/kept").map_err(step("read a lower file through the overlay"))? != b"kept" {
        return Err("a lower file reads differently through the overlay".to_owned());
    }

    fs::remove_file("merged/gone").map_err(step("delete a lower file through the overlay"))?;
    if !Path::new("lower/gone").exists() {
        return Err("a delete through the overlay removed the lower file".to_owned());
    }
    if Path::new("merged/gone").exists() {
        return Err("a deleted file is still visible in the overlay".to_owned());
    }
    let meta = fs::symlink_metadata("upper/gone").map_err(step("find the whiteout"))?;
    if meta.file_type().is_char_device() && meta.rdev() == 0 {
        Ok(Whiteout::CharDevice)
    } else if has_xattr(Path::new("upper/gone"), "user.overlay.whiteout") {
        Ok(Whiteout::Xattr)
    } else {
        Err("deleting a lower file left no whiteout in the upper layer".to_owned())
    }
}

fn has_xattr(path: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(path), Ok(name)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated; a zero-sized read only asks
    // for the value's length.
    unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Installs a seccomp filter (built by seccompiler, as the sandbox does)
/// that makes `getppid` fail with a chosen errno, and checks that it does.
fn seccomp_filter() -> Step<ChildOutput> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    use std::collections::BTreeMap;

    // An errno no kernel returns from getppid, so seeing it proves the filter.
    const MARK: u32 = 4095;
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(step("seccomp arch"))?;
    let rules = BTreeMap::from([(libc::SYS_getppid, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(MARK),
        arch,
    )
    .map_err(step("build the seccomp filter"))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(step("compile the seccomp filter"))?;
    // SAFETY: plain prctl; no_new_privs is what an unprivileged filter needs.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "prctl(PR_SET_NO_NEW_PRIVS): {}",
            std::io::Error::last_os_error()
        ));
    }
    seccompiler::apply_filter(&program).map_err(step("install the seccomp filter"))?;
    // SAFETY: getppid has no arguments.
    let r = unsafe { libc::syscall(libc::SYS_getppid) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    if r == -1 && errno == Some(MARK as i32) {
        Ok(ChildOutput {
            ok: true,
            ..ChildOutput::default()
        })
    } else {
        Err("the seccomp filter was installed but did not act".to_owned())
    }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7;

/// The filter the notify probe installs: `getppid` of the native arch goes
/// to the listener, everything else is allowed.
fn notify_program() -> [libc::sock_filter; 6] {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt,
        jf,
        k,
    };
    [
        // seccomp_data.arch is at offset 4, .nr at offset 0.
        stmt(BPF_LD | BPF_W | BPF_ABS, 4),
        jeq(AUDIT_ARCH_NATIVE, 0, 3),
        stmt(BPF_LD | BPF_W | BPF_ABS, 0),
        jeq(libc::SYS_getppid as u32, 0, 1),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_USER_NOTIF),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Gets a listener with `SECCOMP_FILTER_FLAG_NEW_LISTENER` (raw `seccomp()`:
/// seccompiler cannot), then lets a forked child call the notified
/// `getppid` and answers it with `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: the
/// call must then run for real. Kernels before 5.5 refuse the flag.
fn seccomp_notify() -> Step<ChildOutput> {
    use std::os::fd::{FromRawFd, OwnedFd};

    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "prctl(PR_SET_NO_NEW_PRIVS): {}",
            std::io::Error::last_os_error()
        ));
    }
    let filter = notify_program();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at a valid program that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(format!(
            "seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    let listener = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    let me = getpid().as_raw() as libc::c_long;
    // SAFETY: single-threaded process; the child only makes raw syscalls.
    let child = match unsafe { fork() }.map_err(step("fork"))? {
        ForkResult::Child => {
            die_with_parent();
            // SAFETY: getppid has no arguments; _exit skips exit handlers.
            unsafe {
                let ppid = libc::syscall(libc::SYS_getppid);
                libc::_exit(if ppid == me { 0 } else { 1 })
            }
        }
        ForkResult::Parent { child } => child,
    };
    let answered = answer_with_continue(&listener);
    if answered.is_err() {
        // The child may still be blocked in the notified call.
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    }
    let status = waitpid(child, None).map_err(step("wait for the notified child"))?;
    let continue_ok = answered?;
    let ran = matches!(status, WaitStatus::Exited(_, 0));
    if continue_ok && !ran {
        return Err("a call answered with CONTINUE did not run".to_owned());
    }
    Ok(ChildOutput {
        ok: true,
        notify_continue: Some(continue_ok),
        ..ChildOutput::default()
    })
}

/// Receives one notification and answers CONTINUE. Returns whether the
/// kernel took the flag; if not, the call is failed so the child ends.
fn answer_with_continue(listener: &std::os::fd::OwnedFd) -> Step<bool> {
    use std::os::fd::AsRawFd;
    let fd = listener.as_raw_fd();

    let mut sizes = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    // SAFETY: `sizes` is a valid out-pointer of the right type.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            &mut sizes as *mut libc::seccomp_notif_sizes,
        )
    };
    if r != 0 {
        return Err(format!(
            "seccomp(SECCOMP_GET_NOTIF_SIZES): {}",
            std::io::Error::last_os_error()
        ));
    }

    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, 2000) } != 1 {
        return Err("no seccomp notification arrived within 2 seconds".to_owned());
    }

    // The kernel may use larger structs than libc knows; it insists the
    // receive buffer is zeroed. u64 words keep the buffers aligned.
    let words = |n: usize| n.div_ceil(8);
    let req_size = (sizes.seccomp_notif as usize).max(std::mem::size_of::<libc::seccomp_notif>());
    let mut req = vec![0u64; words(req_size)];
    // SAFETY: `req` is zeroed and at least as large as the kernel's struct.
    if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, req.as_mut_ptr()) } != 0 {
        return Err(format!(
            "ioctl(SECCOMP_IOCTL_NOTIF_RECV): {}",
            std::io::Error::last_os_error()
        ));
    }
    let id = req[0];

    let resp_words = words(
        (sizes.seccomp_notif_resp as usize).max(std::mem::size_of::<libc::seccomp_notif_resp>()),
    );
    let send = |error: i32, flags: u32| -> bool {
        let mut buf = vec![0u64; resp_words];
        let resp = buf.as_mut_ptr() as *mut libc::seccomp_notif_resp;
        // SAFETY: `buf` is aligned and large enough for the struct; the
        // ioctl reads it.
        unsafe {
            (*resp).id = id;
            (*resp).val = 0;
            (*resp).error = error;
            (*resp).flags = flags;
            libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, resp) == 0
        }
    };
    if send(0, libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32) {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(format!("ioctl(SECCOMP_IOCTL_NOTIF_SEND): {err}"));
    }
    // Older kernel: no CONTINUE. Fail the call so the child can finish.
    send(-libc::ENOSYS, 0);
    Ok(false)
}
