//! The sandbox: a single-threaded helper (`airlock-sandbox-helper`) that
//! builds user, mount, pid, net, ipc, uts and cgroup namespaces, an overlay
//! per read-write grant, Landlock, seccomp and limits, then runs the agent.
//! The supervisor side ([`plan`], [`spawn`], [`cgroup`]) resolves a policy
//! into a [`spec::SandboxSpec`], starts the helper with `posix_spawn` (never
//! a `fork()` of the multi-threaded app) and places it in the task's cgroup.

pub mod cgroup;
mod helper;
mod landlock;
mod launch;
mod limits;
mod mounts;
pub mod net;
pub mod plan;
pub mod seccomp;
pub mod spec;
mod stdio;
pub use stdio::same_file;
mod sys;
pub mod syscalls;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

pub use helper::SETUP_FAILED;
pub use landlock::kernel_abi as landlock_abi;
pub use limits::unenforced as unenforced_limits;
pub use spec::{HelperMsg, SandboxBase, SandboxSpec};
pub use sys::effective_capabilities;

use crate::event::{Enforced, EventKind};

/// The hidden first argument that turns our binary into the helper.
pub const HELPER_ARG: &str = "__sandbox-helper";

/// Runs the helper; called from `main` before anything else.
pub fn helper_main() -> ! {
    helper::main()
}

/// The binary to start as the helper: `airlock-sandbox-helper` next to
/// ours when it is installed (it links no GTK, so it starts faster),
/// otherwise our own binary in its hidden helper mode.
pub fn helper_exe() -> Result<std::path::PathBuf, crate::Error> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().map_err(|e| crate::Error::io("/proc/self/exe", e))?;
    let small = exe.with_file_name("airlock-sandbox-helper");
    match std::fs::metadata(&small) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(small),
        _ => Ok(exe),
    }
}

/// A started sandbox.
pub struct Running {
    child: launch::Helper,
    ctl: CtlReader,
    monitor_ctx: Option<crate::monitor::Context>,
    events_tx: Option<std::sync::mpsc::Sender<EventKind>>,
    events_rx: Option<std::sync::mpsc::Receiver<EventKind>>,
    monitor: Option<std::thread::JoinHandle<crate::monitor::Stats>>,
    /// PID 1's status channel ([`HelperMsg::ExitChannel`]).
    exit_rx: Option<OwnedFd>,
    /// Why the plan could not be sent, if it could not.
    plan_lost: Option<std::io::Error>,
}

/// Reads the helper's JSON lines and the descriptors that ride along.
struct CtlReader {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: std::collections::VecDeque<OwnedFd>,
}

impl CtlReader {
    fn next_line(&mut self) -> Option<String> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let mut iov = [std::io::IoSliceMut::new(&mut chunk)];
            let msg = match recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            };
            let n = msg.bytes;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for fd in fds {
                            // SAFETY: the kernel just gave us this descriptor.
                            self.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
            }
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What the helper reported while setting up.
#[derive(Debug, Default)]
pub struct SetupReport {
    pub pid1: Option<u32>,
    pub layers: Vec<Enforced>,
    /// Set when a step failed: (stage, message).
    pub error: Option<(String, String)>,
}

/// A helper started before its task was planned, with our own stdio. The
/// command line starts it first thing, so that the helper's program start
/// overlaps the supervisor's own; it waits for its plan meanwhile. Dropped
/// unused, it is killed and reaped.
pub struct Prestarted {
    parts: Option<(launch::Helper, UnixStream)>,
}

impl std::fmt::Debug for Prestarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prestarted")
            .field("pid", &self.parts.as_ref().map(|(c, _)| c.id()))
            .finish()
    }
}

impl Drop for Prestarted {
    fn drop(&mut self) {
        if let Some((mut child, _sock)) = self.parts.take() {
            child.signal(libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Starts a helper ahead of its task (see [`Prestarted`]), with our stdio
/// as its own. The parent-death rule of [`spawn`] applies from here on:
/// the calling thread must outlive the task.
pub fn prestart(helper_exe: &Path) -> Result<Prestarted, crate::Error> {
    let (child, ours) = launch_helper(helper_exe, [None, None, None])?;
    Ok(Prestarted {
        parts: Some((child, ours)),
    })
}

/// Starts the helper program with `stdio` and a fresh control socket.
fn launch_helper(
    helper_exe: &Path,
    stdio: [Option<std::os::fd::RawFd>; 3],
) -> Result<(launch::Helper, UnixStream), crate::Error> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| crate::Error::io("socketpair", e))?;
    // The helper checks that this is still its parent after arming its
    // parent-death signal (it may have died in between).
    let parent = std::process::id().to_string();
    let child = launch::spawn(
        helper_exe,
        &[HELPER_ARG, &parent],
        stdio,
        theirs.as_raw_fd(),
    )
    .map_err(|e| crate::Error::io(helper_exe, e))?;
    Ok((child, ours))
}

/// How [`spawn`] gets its helper.
pub enum Launch<'a> {
    /// Started now, with these descriptors as its stdio (`None`: ours).
    New {
        exe: &'a Path,
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    /// Started earlier with our stdio, waiting for its plan.
    Prestarted(Prestarted),
}

/// A helper that has its [`SandboxBase`] and builds the namespaces and the
/// task-independent root while the supervisor plans the task; [`plan`]
/// hands it the rest. Dropped without a plan, it is killed and reaped.
///
/// [`plan`]: Starting::plan
pub struct Starting {
    parts: Option<(launch::Helper, UnixStream)>,
    base: SandboxBase,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some((mut child, _sock)) = self.parts.take() {
            child.signal(libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Starts the helper and gives it `base`.
///
/// The helper gets a parent-death signal tied to the *calling thread*: call
/// this from a thread that lives until the task ends (the CLI's main thread,
/// or the supervisor's per-task thread), never from a pooled one. For a
/// [`Prestarted`] helper, that is the thread that started it.
///
/// `before_start` runs before the helper has anything to build from:
/// whatever it does to the helper (a cgroup) happens to every process of
/// the sandbox, and an error ends the helper unstarted.
pub fn start(
    base: &SandboxBase,
    launch: Launch<'_>,
    before_start: impl FnOnce(u32) -> Result<(), crate::Error>,
) -> Result<Starting, crate::Error> {
    let (child, ours) = match launch {
        Launch::New {
            exe,
            stdin,
            stdout,
            stderr,
        } => {
            let raw = |s: &Option<OwnedFd>| s.as_ref().map(|f| f.as_raw_fd());
            let started = launch_helper(exe, [raw(&stdin), raw(&stdout), raw(&stderr)])?;
            drop((stdin, stdout, stderr));
            started
        }
        Launch::Prestarted(mut p) => match p.parts.take() {
            Some(parts) => parts,
            None => return Err(crate::Error::Sandbox("the helper was used already".into())),
        },
    };
    let starting = Starting {
        parts: Some((child, ours)),
        base: base.clone(),
    };
    before_start(starting.pid())?;
    if let Some((_, sock)) = &starting.parts {
        spec::write_frame(sock, base)
            .map_err(|e| crate::Error::Sandbox(format!("the helper did not take the plan: {e}")))?;
    }
    Ok(starting)
}

impl Starting {
    /// The helper's pid.
    pub fn pid(&self) -> u32 {
        self.parts.as_ref().map_or(0, |(c, _)| c.id())
    }

    /// Sends the task's plan; the sandbox is finished and the agent runs
    /// once [`Running::setup`] has heard so. `spec` must be for the same
    /// [`SandboxBase`] (the helper refuses another).
    pub fn plan(mut self, spec: &SandboxSpec) -> Result<Running, crate::Error> {
        if spec.base() != self.base {
            return Err(crate::Error::Sandbox(
                "the plan does not match the sandbox being built".into(),
            ));
        }
        // Encoded first: a plan that cannot be (a name that is not UTF-8)
        // ends the helper here, which would otherwise wait for it forever.
        let frame = spec::frame(spec)
            .map_err(|e| crate::Error::Sandbox(format!("cannot encode the plan: {e}")))?;
        let Some((child, ours)) = self.parts.take() else {
            return Err(crate::Error::Sandbox("the helper was used already".into()));
        };
        // A helper that failed while building the base has said why on the
        // socket, and `setup` reads it: its refusal of the plan is no more
        // than a consequence.
        let plan_lost = {
            use std::io::Write;
            (&ours).write_all(&frame).err()
        };
        // Needed once the agent's listener arrives; made while the helper
        // builds the sandbox.
        let monitor_ctx = spec.watch.map(|level| monitor_context(spec, level));
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        Ok(Running {
            child,
            ctl: CtlReader {
                sock: ours,
                buf: Vec::new(),
                fds: Default::default(),
            },
            monitor_ctx,
            events_tx: Some(events_tx),
            events_rx: Some(events_rx),
            monitor: None,
            exit_rx: None,
            plan_lost,
        })
    }
}

/// The status PID 1 wrote; `None` at end of file (it was killed first).
fn read_status(fd: OwnedFd) -> Option<i32> {
    use std::io::Read;
    let mut b = [0u8; 4];
    std::fs::File::from(fd).read_exact(&mut b).ok()?;
    Some(i32::from_ne_bytes(b))
}

/// What the monitor needs to know about `spec`'s sandbox.
fn monitor_context(
    spec: &SandboxSpec,
    level: crate::policy::WatchLevel,
) -> crate::monitor::Context {
    let deny_rules = seccomp::compile_monitored(&spec.seccomp, &[])
        .map(|m| m.deny_rules)
        .unwrap_or_default();
    let mut visible: Vec<std::path::PathBuf> = [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/dev",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .collect();
    visible.extend(spec.ro.iter().cloned());
    visible.extend(spec.rw.iter().map(|m| m.path.clone()));
    crate::monitor::Context {
        level,
        deny_rules,
        view: crate::monitor::watch::View {
            visible,
            private: vec!["/tmp".into(), "/etc".into(), spec.user.home.clone()],
            denied: spec.deny.clone(),
        },
    }
}

impl Running {
    /// The helper's pid (signals sent to it reach the agent).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The monitor's events (denials, file and network attempts), in the
    /// order they happened; taken once. Drain it on a thread of your own:
    /// it ends when the monitor has reported everything (after [`wait`]).
    ///
    /// [`wait`]: Running::wait
    pub fn take_events(&mut self) -> Option<std::sync::mpsc::Receiver<EventKind>> {
        self.events_rx.take()
    }

    /// Reads the helper's reports until the agent has been exec'd (or the
    /// set-up failed). The monitor starts here, as soon as its listener
    /// arrives: the agent's own `exec` already waits for it.
    pub fn setup(&mut self) -> SetupReport {
        let mut report = SetupReport::default();
        while let Some(line) = self.ctl.next_line() {
            match serde_json::from_str::<HelperMsg>(&line) {
                Ok(HelperMsg::Started { pid1 }) => report.pid1 = Some(pid1),
                Ok(HelperMsg::Enforced { layers }) => report.layers = layers,
                Ok(HelperMsg::Error { stage, message }) => report.error = Some((stage, message)),
                Ok(HelperMsg::ExitChannel) => match self.ctl.fds.pop_front() {
                    Some(fd) => self.exit_rx = Some(fd),
                    None => tracing::warn!("the helper sent no status channel"),
                },
                Ok(HelperMsg::Listener) => {
                    let (Some(fd), Some(ctx)) =
                        (self.ctl.fds.pop_front(), self.monitor_ctx.clone())
                    else {
                        tracing::warn!("the helper sent a listener message without a listener");
                        continue;
                    };
                    let Some(tx) = self.events_tx.clone() else {
                        continue;
                    };
                    self.monitor = Some(std::thread::spawn(move || {
                        crate::monitor::run(fd, ctx, move |ev| {
                            let _ = tx.send(ev);
                        })
                    }));
                }
                Err(e) => tracing::warn!("unreadable helper message {line:?}: {e}"),
            }
        }
        // From now on only the monitor thread holds a sender: the event
        // channel closes when the monitor has said everything.
        self.events_tx = None;
        if let (None, Some(e)) = (&report.error, self.plan_lost.take()) {
            report.error = Some((
                "start sandbox".into(),
                format!("the helper did not take the plan: {e}"),
            ));
        }
        report
    }

    /// Waits until every process of the task has ended; returns the
    /// shell-style status. The namespaces may still be being torn down:
    /// [`reap`](Running::reap) waits for that.
    pub fn wait(&mut self) -> std::io::Result<i32> {
        let st = match self.exit_rx.take().and_then(read_status) {
            Some(st) => st,
            // No channel (`--tty`), or PID 1 was killed before it could
            // report: its end is the helper's.
            None => self.child.wait()?,
        };
        // Every process of the task is gone: the monitor sees its listener
        // hang up, reports what it still holds, and ends.
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
        Ok(st)
    }

    /// Waits for the helper itself, after [`wait`](Running::wait).
    pub fn reap(&mut self) {
        let _ = self.child.wait();
    }

    /// Ends the whole sandbox at once (PID 1 follows the helper).
    pub fn kill(&mut self) {
        self.child.signal(libc::SIGKILL);
    }

    /// Sends `sig` to the helper, which forwards it to the agent.
    pub fn signal(&self, sig: i32) {
        self.child.signal(sig);
    }
}
