//! The helper process: a fresh exec of our own binary, single-threaded, that
//! builds the sandbox in the order the kernel needs and `exec`s the agent.
//!
//! ```text
//! supervisor ── spawns ──▶ helper (outside; writes the id maps, forwards signals,
//!                            │        relays the task's stdio: see `stdio`)
//!                            └─ clone(new user, mount, pid, net, ipc, uts, cgroup ns)
//!                                 ▶ PID 1 (mounts, pivot_root; then reaps and forwards)
//!                                      └─ fork ▶ agent (limits, no_new_privs, Landlock,
//!                                                 capabilities dropped, seccomp, exec)
//! ```
//! The control socket (fd 3) carries the spec in and [`HelperMsg`]s out.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use super::spec::{read_frame, HelperMsg, SandboxBase, SandboxSpec};
use super::{landlock, limits, mounts, seccomp, sys};
use crate::event::Enforced;

/// The control socket's descriptor number in the helper.
pub const CONTROL_FD: RawFd = 3;

/// Exit status of the helper when the sandbox could not be built.
pub const SETUP_FAILED: i32 = 125;

struct Control {
    sock: UnixStream,
}

impl Control {
    fn send(&mut self, msg: &HelperMsg) {
        if let Ok(mut line) = serde_json::to_vec(msg) {
            line.push(b'\n');
            // The supervisor may be gone; the parent-death signal ends us then.
            let _ = self.sock.write_all(&line);
        }
    }

    /// Sends `msg` with `fd` attached (`SCM_RIGHTS`).
    fn send_fd(&mut self, msg: &HelperMsg, fd: RawFd) -> std::io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let iov = [std::io::IoSlice::new(&line)];
        let fds = [fd];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(self.sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map(|_| ())
            .map_err(std::io::Error::from)
    }

    fn fail(&mut self, stage: &str, message: impl std::fmt::Display) -> ! {
        self.send(&HelperMsg::Error {
            stage: stage.to_string(),
            message: message.to_string(),
        });
        // SAFETY: _exit skips destructors and atexit handlers of a forked child.
        unsafe { libc::_exit(SETUP_FAILED) }
    }
}

/// Entry point of `airlock __sandbox-helper`.
pub fn main() -> ! {
    // SAFETY: fd 3 was placed there by the supervisor for us alone.
    let sock = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let mut ctl = Control { sock };
    // First what every sandbox of this user looks like; the task's own plan
    // follows, for PID 1, once the supervisor has made it.
    let base: SandboxBase = match read_frame(&ctl.sock) {
        Ok(Some(b)) => b,
        Ok(None) => ctl.fail("read plan", "the supervisor sent no sandbox plan"),
        Err(e) => ctl.fail("read plan", e),
    };
    // The helper dies with the supervisor thread that started it.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // If the supervisor died before that, the signal will never come: the
    // parent it named is no longer ours.
    let parent = std::env::args().nth(2).and_then(|p| p.parse::<i32>().ok());
    if parent.is_some_and(|p| p != nix::unistd::getppid().as_raw()) {
        // SAFETY: exiting our own process.
        unsafe { libc::_exit(SETUP_FAILED) }
    }

    let (go_r, go_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => ctl.fail("create pipe", e),
    };
    // --tty: a pseudo-terminal of the task's own. The agent gets the
    // subsidiary side as its controlling terminal; we relay the main side
    // to our stdio, so the user's terminal is never the agent's.
    let pty = if base.tty {
        let winsize = terminal_size(0);
        match nix::pty::openpty(winsize.as_ref(), None) {
            Ok(p) => {
                TTY_SLAVE.store(std::os::fd::AsRawFd::as_raw_fd(&p.slave), Ordering::Relaxed);
                Some(p)
            }
            Err(e) => ctl.fail("create pseudo-terminal", e),
        }
    } else {
        None
    };
    // Without it, three pipes of the task's own (see `stdio`): the user's
    // descriptors never enter the sandbox.
    let stdio = match pty {
        Some(_) => None,
        None => match super::stdio::TaskStdio::new() {
            Ok(s) => Some(s),
            Err(e) => ctl.fail("create pipes for the task's stdio", e),
        },
    };
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    let outer_uid = nix::unistd::geteuid().as_raw();
    let outer_gid = nix::unistd::getegid().as_raw();
    // SAFETY: the helper is single-threaded.
    let pid = match unsafe { sys::clone_fork(flags) } {
        Ok(p) => p,
        Err(e) => ctl.fail(
            "create namespaces",
            format!("{e} (are unprivileged user namespaces allowed? run `airlock doctor`)"),
        ),
    };
    if pid == 0 {
        drop(go_w);
        let drained = match stdio.map(super::stdio::TaskStdio::enter).transpose() {
            Ok(d) => d,
            Err(e) => ctl.fail("attach the task's stdio", e),
        };
        // Wait until the outside has written our id maps.
        let mut b = [0u8; 1];
        if nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&go_r), &mut b) != Ok(1) {
            // SAFETY: as above.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
        drop(go_r);
        pid1(base, ctl, drained);
    }
    let pipes = stdio.map(super::stdio::TaskStdio::leave);
    drop(go_r);
    if let Err(e) = write_id_maps(pid, &base, outer_uid, outer_gid) {
        // SAFETY: killing our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        ctl.fail("map user ids", e);
    }
    ctl.send(&HelperMsg::Started { pid1: pid as u32 });
    if nix::unistd::write(&go_w, b"g").is_err() {
        ctl.fail("start sandbox", "PID 1 of the sandbox vanished");
    }
    drop(go_w);
    drop(ctl);
    forward_signals_to(pid);
    let status = match (pty, pipes) {
        (Some(p), _) => {
            drop(p.slave);
            relay(p.master, pid)
        }
        (None, Some(r)) => {
            r.run();
            wait_for(pid)
        }
        (None, None) => wait_for(pid),
    };
    std::process::exit(status)
}

/// The subsidiary side of `--tty`'s pseudo-terminal, for the agent.
static TTY_SLAVE: AtomicI32 = AtomicI32::new(-1);

fn terminal_size(fd: RawFd) -> Option<nix::pty::Winsize> {
    // SAFETY: TIOCGWINSZ fills the struct we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0).then_some(ws)
}

/// Copies between our stdio and the task's terminal until PID 1 ends, in
/// raw mode when our stdin is a terminal (restored on the way out), passing
/// window-size changes on. Returns PID 1's status.
fn relay(master: std::os::fd::OwnedFd, pid1: libc::pid_t) -> i32 {
    use std::os::fd::AsRawFd;
    let m = master.as_raw_fd();
    let saved = nix::sys::termios::tcgetattr(std::io::stdin()).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &raw,
        );
    }
    let mut buf = [0u8; 8192];
    let mut stdin_open = true;
    let mut last_size = terminal_size(0).map(|w| (w.ws_row, w.ws_col));
    let status = loop {
        let mut fds = [
            libc::pollfd {
                fd: m,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds we own.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        let size = terminal_size(0).map(|w| (w.ws_row, w.ws_col));
        if size != last_size {
            if let Some(ws) = terminal_size(0) {
                // SAFETY: TIOCSWINSZ reads the struct we own.
                unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &ws) };
            }
            last_size = size;
        }
        if r > 0 {
            if fds[0].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                match nix::unistd::read(m, &mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = std::io::stdout().write_all(&buf[..n]);
                        let _ = std::io::stdout().flush();
                    }
                    // EIO: every holder of the terminal is gone.
                    _ => {}
                }
            }
            if fds[1].revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                match nix::unistd::read(0, &mut buf) {
                    Ok(n) if n > 0 => {
                        let _ = nix::unistd::write(&master, &buf[..n]);
                    }
                    _ => stdin_open = false,
                }
            }
        }
        let mut st = 0;
        // SAFETY: waitpid on our own child.
        if unsafe { libc::waitpid(pid1, &mut st, libc::WNOHANG) } == pid1 {
            // What the agent printed last is still in the terminal.
            while let Ok(n) = nix::unistd::read(m, &mut buf) {
                if n == 0 {
                    break;
                }
                let _ = std::io::stdout().write_all(&buf[..n]);
            }
            let _ = std::io::stdout().flush();
            break if libc::WIFEXITED(st) {
                libc::WEXITSTATUS(st)
            } else {
                128 + libc::WTERMSIG(st)
            };
        }
    };
    if let Some(t) = &saved {
        let _ =
            nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, t);
    }
    status
}

fn write_id_maps(
    pid: libc::pid_t,
    sandbox: &SandboxBase,
    uid: u32,
    gid: u32,
) -> std::io::Result<()> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    if sandbox.outer_root {
        // Root keeps uid 0 for building the mounts (files it creates in our
        // tmpfs must be owned by a mapped id) and maps the agent's
        // unprivileged id; the agent drops to it before exec.
        let u = sandbox.user.uid;
        let g = sandbox.user.gid;
        std::fs::write(base.join("uid_map"), format!("0 0 1\n{u} {u} 1\n"))?;
        std::fs::write(base.join("gid_map"), format!("0 0 1\n{g} {g} 1\n"))?;
    } else {
        std::fs::write(base.join("setgroups"), "deny")?;
        std::fs::write(base.join("uid_map"), format!("{uid} {uid} 1\n"))?;
        std::fs::write(base.join("gid_map"), format!("{gid} {gid} 1\n"))?;
    }
    Ok(())
}

/// The pid signals are forwarded to (PID 1 from the helper, the agent from PID 1).
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn forward_signals_to(pid: libc::pid_t) {
    FORWARD_TO.store(pid, Ordering::Relaxed);
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: installing a handler that only calls kill().
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Waits for `pid`, reaping any other child on the way; returns the
/// shell-style status (code, or 128 + signal).
fn wait_for(pid: libc::pid_t) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own children.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return SETUP_FAILED;
        }
        if r == pid {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status);
            }
            if libc::WIFSIGNALED(status) {
                return 128 + libc::WTERMSIG(status);
            }
        }
    }
}

/// PID 1 of the sandbox.
fn pid1(base: SandboxBase, mut ctl: Control, drained: Option<std::os::fd::OwnedFd>) -> ! {
    // SAFETY: prctl with integer arguments; PID 1 dies with the helper.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // What no task decides is built while the supervisor plans the task.
    // Before /proc/sys becomes read-only with the new root.
    limits::limit_inotify();
    if let Err(e) = mounts::build_base(&base) {
        ctl.fail(&e.stage, e.message);
    }
    if let Err(e) = nix::unistd::sethostname(&base.hostname) {
        ctl.fail("set host name", e);
    }
    if let Err(e) = sys::loopback_up() {
        ctl.fail("bring up loopback", e);
    }
    let spec: SandboxSpec = match read_frame(&ctl.sock) {
        Ok(Some(s)) => s,
        // The supervisor gave the task up (its plan failed): nothing ran.
        // SAFETY: exiting our own process.
        Ok(None) => unsafe { libc::_exit(SETUP_FAILED) },
        Err(e) => ctl.fail("read plan", e),
    };
    if spec.base() != base {
        ctl.fail(
            "read plan",
            "the plan does not match the sandbox it was sent to",
        );
    }
    let hidden = match mounts::build_rest(&spec) {
        Ok(h) => h,
        Err(e) => ctl.fail(&e.stage, e.message),
    };
    // The forwarder listens before the agent exists; PID 1 reaps it.
    if let Err(e) = super::net::start_forwarder(&spec) {
        ctl.fail("start the network forwarder", e);
    }
    // Nobody inside may read or write PID 1's memory through /proc.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };

    // The status channel: without a terminal to relay, the supervisor need
    // not wait for the namespaces' teardown (unmounting the whole tree waits
    // for RCU grace periods) once every process of the task has ended.
    // That takes PID 1 killing every process left, which it may without any
    // capability only when they all share its uid: not when Airlock runs as
    // root (the agent is uid 65534, PID 1 and the forwarder are not).
    let exit_tx = if spec.tty || spec.outer_root {
        None
    } else {
        match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok((r, w)) => {
                if let Err(e) =
                    ctl.send_fd(&HelperMsg::ExitChannel, std::os::fd::AsRawFd::as_raw_fd(&r))
                {
                    ctl.fail("pass the status channel", e);
                }
                Some(w)
            }
            Err(e) => ctl.fail("create pipe", e),
        }
    };
    // The agent hands its seccomp listener to us over `sync`: it cannot
    // send it to the supervisor itself, because once its filter is in place
    // its own sendmsg would wait for that very listener.
    let (mut sync_ours, sync_agent) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => ctl.fail("create socket pair", e),
    };
    // SAFETY: PID 1 is single-threaded.
    let agent = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(sync_ours);
            agent(&spec, &hidden, ctl, sync_agent)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child.as_raw(),
        Err(e) => ctl.fail("start agent", e),
    };
    drop(sync_agent);
    if spec.watch.is_some() {
        pass_listener(agent, &mut sync_ours, &mut ctl);
    }
    drop(sync_ours);
    drop(ctl);
    // PID 1 needs no privilege to reap, forward and end the rest.
    let _ = sys::drop_bounding_and_ambient();
    let _ = sys::clear_capabilities();
    forward_signals_to(agent);
    let status = wait_for(agent);
    // When the agent ends, so does every process left (a daemonised child
    // cannot outlive the task). Once they are all reaped nothing can write
    // into the task's layers any more, so the status may go out.
    if let Some(tx) = exit_tx {
        if end_the_rest() {
            // Nor may our copies of the task's stdio hold back the end of
            // its output.
            for fd in 0..=2 {
                // SAFETY: closing descriptors PID 1 no longer uses.
                unsafe { libc::close(fd) };
            }
            // Its last output is passed on before anyone hears it ended.
            if let Some(d) = drained {
                super::stdio::wait_drained(d);
            }
            let _ = nix::unistd::write(&tx, &status.to_ne_bytes());
        }
    }
    // Our own exit makes the kernel kill anything still there.
    // SAFETY: _exit in a forked process.
    unsafe { libc::_exit(status) }
}

/// Kills every other process of the namespace and reaps them all; true when
/// none is left (PID 1's children are all of them: orphans come to it).
fn end_the_rest() -> bool {
    // SAFETY: kill(-1) from PID 1 reaches exactly the processes of its
    // namespace (and those below), never PID 1 itself.
    let r = unsafe { libc::kill(-1, libc::SIGKILL) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
        return false;
    }
    loop {
        let mut st = 0;
        // SAFETY: waitpid on our own children.
        if unsafe { libc::waitpid(-1, &mut st, libc::__WALL) } < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => return true,
                _ => return false,
            }
        }
    }
}

/// Takes the agent's listener (by its descriptor number, through
/// `pidfd_getfd`) and sends it to the supervisor, then lets the agent go on.
fn pass_listener(agent: libc::pid_t, sync: &mut UnixStream, ctl: &mut Control) {
    use std::io::Read;
    let mut num = [0u8; 4];
    if sync.read_exact(&mut num).is_err() {
        // The agent failed before; it reported why.
        return;
    }
    let target = i32::from_ne_bytes(num);
    if target >= 0 {
        // SAFETY: pidfd syscalls on our own child; the descriptors are
        // closed below.
        unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, agent, 0) as i32;
            let fd = if pidfd >= 0 {
                libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) as i32
            } else {
                -1
            };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                libc::kill(agent, libc::SIGKILL);
                ctl.fail("pass the monitor's listener", e);
            }
            let sent = ctl.send_fd(&HelperMsg::Listener, fd);
            libc::close(fd);
            if pidfd >= 0 {
                libc::close(pidfd);
            }
            if let Err(e) = sent {
                libc::kill(agent, libc::SIGKILL);
                ctl.fail("pass the monitor's listener", e);
            }
        }
    }
    let _ = sync.write_all(b"k");
}

/// The agent's last steps before `exec`, most powerful first.
fn agent(
    spec: &SandboxSpec,
    hidden: &mounts::HiddenReport,
    mut ctl: Control,
    mut sync: UnixStream,
) -> ! {
    // Handlers installed by PID 1 must not leak into the agent.
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: restoring default dispositions.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // A new session: no controlling terminal, so TIOCSTI has nothing to push into.
    if let Err(e) = nix::unistd::setsid() {
        ctl.fail("new session", e);
    }
    let slave = TTY_SLAVE.load(Ordering::Relaxed);
    if slave >= 0 {
        // SAFETY: the pseudo-terminal made for this task becomes its stdio
        // and controlling terminal.
        let ok = unsafe {
            libc::dup2(slave, 0) >= 0
                && libc::dup2(slave, 1) >= 0
                && libc::dup2(slave, 2) >= 0
                && libc::ioctl(0, libc::TIOCSCTTY, 0) == 0
        };
        if !ok {
            ctl.fail("attach pseudo-terminal", std::io::Error::last_os_error());
        }
        // SAFETY: closing our copy; 0-2 keep it open.
        unsafe { libc::close(slave) };
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };

    let mut layers: Vec<Enforced> = Vec::new();
    fn enforced(what: &str, value: String, mechanism: &str, note: Option<String>) -> Enforced {
        Enforced {
            what: what.into(),
            value,
            mechanism: mechanism.into(),
            note,
        }
    }

    if let Err(e) = sys::drop_bounding_and_ambient() {
        ctl.fail("drop capabilities", e);
    }
    if spec.outer_root {
        let (u, g) = (spec.user.uid, spec.user.gid);
        // SAFETY: plain credential syscalls.
        let ok = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(g, g, g) == 0
                && libc::setresuid(u, u, u) == 0
        };
        if !ok {
            ctl.fail("drop to unprivileged user", std::io::Error::last_os_error());
        }
    }
    // PID 1 made itself non-dumpable (inherited by this fork) and changing
    // ids does the same: either keeps PID 1 from taking our seccomp listener
    // with pidfd_getfd, as an unprivileged user too. exec resets it anyway.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    for l in limits::apply_rlimits(&spec.limits, spec.memory_by_cgroup) {
        match l {
            Ok(e) => layers.push(e),
            Err(e) => ctl.fail("set resource limits", e),
        }
    }
    let cwd = if spec.cwd.is_dir() {
        spec.cwd.clone()
    } else {
        spec.user.home.clone()
    };
    if let Err(e) = nix::unistd::chdir(&cwd) {
        ctl.fail("enter working folder", format!("{}: {e}", cwd.display()));
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        ctl.fail("no_new_privs", std::io::Error::last_os_error());
    }
    layers.push(enforced("no_new_privs", "on".into(), "kernel", None));
    match landlock::restrict(spec) {
        Ok(o) => layers.push(enforced(
            "landlock",
            format!("ABI {}", o.kernel_abi),
            if o.status == "not enforced" {
                "not-enforced"
            } else {
                "kernel"
            },
            (o.status != "fully enforced")
                .then(|| format!("Landlock is {} on this kernel", o.status)),
        )),
        Err(e) => ctl.fail("Landlock", e),
    }
    if let Err(e) = sys::clear_capabilities() {
        ctl.fail("drop capabilities", e);
    }
    layers.push(enforced("capabilities", "none".into(), "kernel", None));
    let monitored = match spec.watch {
        Some(level) => {
            match seccomp::compile_monitored(&spec.seccomp, &crate::monitor::watch::rules(level)) {
                Ok(m) => Some(m),
                Err(e) => ctl.fail("seccomp", e),
            }
        }
        None => None,
    };
    let compiled = match &monitored {
        Some(m) => seccomp::Compiled {
            programs: m.plain.programs.clone(),
            unknown_names: m.plain.unknown_names.clone(),
        },
        None => match seccomp::compile(&spec.seccomp) {
            Ok(c) => c,
            Err(e) => ctl.fail("seccomp", e),
        },
    };
    layers.push(enforced(
        "seccomp",
        format!(
            "{} ({} filters)",
            spec.seccomp.name,
            compiled.programs.len()
        ),
        "kernel",
        (!compiled.unknown_names.is_empty()).then(|| {
            format!(
                "not on this architecture: {}",
                compiled.unknown_names.join(", ")
            )
        }),
    ));
    layers.push(limits::inotify_enforced());
    if hidden.whiteouts > 0 || !hidden.covered_at_start.is_empty() {
        let covered: Vec<String> = hidden
            .covered_at_start
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        layers.push(enforced(
            "hidden-paths",
            format!(
                "whiteouts over {} of {} read-only grants",
                hidden.whiteouts,
                hidden.whiteouts + hidden.covered_at_start.len()
            ),
            if covered.is_empty() { "overlayfs" } else { "mounts" },
            (!covered.is_empty()).then(|| {
                format!(
                    "other file systems are mounted in {}: hidden paths there are covered as they were at the start, so one created or replaced there during the task is not hidden",
                    covered.join(", ")
                )
            }),
        ));
    }
    for (what, value) in [
        ("namespaces", "user, mount, pid, net, ipc, uts, cgroup"),
        ("network", super::net::summary(spec)),
    ] {
        layers.push(enforced(what, value.into(), "kernel", None));
    }
    let program = match resolve_program(&spec.argv[0], &spec.env) {
        Some(p) => p,
        None => {
            ctl.send(&HelperMsg::Error {
                stage: "run command".into(),
                message: format!("{}: command not found in the sandbox", spec.argv[0]),
            });
            // SAFETY: _exit in a forked process; 127 as a shell would.
            unsafe { libc::_exit(127) }
        }
    };
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let envp: Vec<CString> = spec
        .env
        .iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    let Ok(prog) = CString::new(program.as_os_str().as_bytes()) else {
        ctl.fail("run command", "the command contains a NUL byte");
    };
    // Every descriptor beyond stdio, the control socket included, is closed
    // by exec; until then we can still report a failed exec.
    if let Err(e) = sys::cloexec_from(3) {
        ctl.fail("close descriptors", e);
    }
    // A monitored profile comes as one program with the listener, unless it
    // could not be folded (then the plain filters go first).
    if !monitored.as_ref().is_some_and(|m| m.includes_plain) {
        if let Err(e) = seccomp::install(&compiled) {
            ctl.fail("seccomp", e);
        }
    }
    let mut listener = None;
    if let Some(m) = &monitored {
        match seccomp::install_with_listener(&m.notify) {
            Ok(fd) => {
                listener = Some(fd);
                layers.push(enforced(
                    "monitor",
                    format!("{:?}", spec.watch.unwrap_or_default()).to_lowercase(),
                    "seccomp-notify",
                    None,
                ));
            }
            Err(e) => {
                // No user notification here: the denials still hold, as
                // plain errno filters, but nobody will see them.
                if m.includes_plain {
                    if let Err(e) = seccomp::install(&compiled) {
                        ctl.fail("seccomp", e);
                    }
                }
                let fallback = seccomp::Profile {
                    name: "denials".into(),
                    default_action: seccomp::Action::Allow,
                    rules: m.deny_rules.clone(),
                    refuse_foreign_abi: false,
                    refuse_unknown: false,
                };
                match seccomp::compile(&fallback).map(|c| seccomp::install(&c)) {
                    Ok(Ok(())) => layers.push(enforced(
                        "monitor",
                        "off".into(),
                        "not-enforced",
                        Some(format!(
                            "seccomp user notification is unavailable ({e}): denials are enforced but invisible"
                        )),
                    )),
                    Ok(Err(e)) => ctl.fail("seccomp", e),
                    Err(e) => ctl.fail("seccomp", e),
                }
            }
        }
    } else {
        layers.push(enforced(
            "monitor",
            "off".into(),
            "not-enforced",
            Some("monitoring was turned off for this task: denials are invisible".into()),
        ));
    }
    ctl.send(&HelperMsg::Enforced { layers });
    if spec.watch.is_some() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let num = listener.as_ref().map_or(-1, |l| l.as_raw_fd());
        let mut ack = [0u8; 1];
        if sync.write_all(&num.to_ne_bytes()).is_err() || sync.read_exact(&mut ack).is_err() {
            // SAFETY: _exit in a forked process.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
    }
    drop(listener);
    drop(sync);
    let err = match nix::unistd::execve(&prog, &argv, &envp) {
        Err(e) => e,
        Ok(i) => match i {},
    };
    let code = if err == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    };
    ctl.send(&HelperMsg::Error {
        stage: "run command".into(),
        message: format!("{}: {err}", program.display()),
    });
    // SAFETY: _exit in a forked process.
    unsafe { libc::_exit(code) }
}

/// Finds `cmd` on the sandbox's `PATH` (not ours: the agent's environment
/// decides), as execvp would.
fn resolve_program(cmd: &str, env: &[(String, String)]) -> Option<PathBuf> {
    if cmd.contains('/') {
        return Some(PathBuf::from(cmd));
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(cmd))
        .find(|p| {
            let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
                return false;
            };
            // SAFETY: access(2) on a NUL-terminated path.
            unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
        })
}
