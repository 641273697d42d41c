//! The sandbox: a single-threaded helper (a hidden mode of our own binary)
//! that builds user, mount, pid, net, ipc, uts and cgroup namespaces, an
//! overlay per read-write grant, Landlock, seccomp and limits, then runs the
//! agent. The supervisor side ([`plan`], [`spawn`]) resolves a policy into a
//! [`spec::SandboxSpec`] and starts the helper with `std::process::Command`
//! — never a `fork()` of the multi-threaded app.

mod helper;
mod landlock;
mod limits;
mod mounts;
pub mod plan;
pub mod seccomp;
pub mod spec;
mod sys;
pub mod syscalls;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub use helper::SETUP_FAILED;
pub use landlock::kernel_abi as landlock_abi;
pub use limits::unenforced as unenforced_limits;
pub use spec::{HelperMsg, SandboxSpec};
pub use sys::effective_capabilities;

use crate::event::Enforced;

/// The hidden first argument that turns our binary into the helper.
pub const HELPER_ARG: &str = "__sandbox-helper";

/// Runs the helper; called from `main` before anything else.
pub fn helper_main() -> ! {
    helper::main()
}

/// A started sandbox.
pub struct Running {
    child: Child,
    ctl: BufReader<UnixStream>,
}

/// What the helper reported while setting up.
#[derive(Debug, Default)]
pub struct SetupReport {
    pub pid1: Option<u32>,
    pub layers: Vec<Enforced>,
    /// Set when a step failed: (stage, message).
    pub error: Option<(String, String)>,
}

/// Starts the helper for `spec`.
///
/// The helper gets a parent-death signal tied to the *calling thread*: call
/// this from a thread that lives until the task ends (the CLI's main thread,
/// or the supervisor's per-task thread), never from a pooled one.
pub fn spawn(
    spec: &SandboxSpec,
    helper_exe: &Path,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<Running, crate::Error> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| crate::Error::io("socketpair", e))?;
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(helper_exe);
    cmd.arg(HELPER_ARG)
        .env_clear()
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == helper::CONTROL_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, helper::CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| crate::Error::io(helper_exe, e))?;
    drop(theirs);
    let mut line = serde_json::to_vec(spec)
        .map_err(|e| crate::Error::Sandbox(format!("cannot encode the plan: {e}")))?;
    line.push(b'\n');
    let mut w = &ours;
    w.write_all(&line)
        .map_err(|e| crate::Error::Sandbox(format!("the helper did not take the plan: {e}")))?;
    Ok(Running {
        child,
        ctl: BufReader::new(ours),
    })
}

impl Running {
    /// The helper's pid (signals sent to it reach the agent).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the helper's reports until the agent has been exec'd (or the
    /// set-up failed).
    pub fn setup(&mut self) -> SetupReport {
        let mut report = SetupReport::default();
        let mut line = String::new();
        loop {
            line.clear();
            match self.ctl.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => match serde_json::from_str::<HelperMsg>(&line) {
                    Ok(HelperMsg::Started { pid1 }) => report.pid1 = Some(pid1),
                    Ok(HelperMsg::Enforced { layers }) => report.layers = layers,
                    Ok(HelperMsg::Error { stage, message }) => {
                        report.error = Some((stage, message))
                    }
                    Err(e) => tracing::warn!("unreadable helper message {line:?}: {e}"),
                },
            }
        }
        report
    }

    /// Waits for the sandbox to end; returns the shell-style status.
    pub fn wait(&mut self) -> std::io::Result<i32> {
        use std::os::unix::process::ExitStatusExt;
        let st = self.child.wait()?;
        Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)))
    }

    /// Ends the whole sandbox at once (PID 1 follows the helper).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Sends `sig` to the helper, which forwards it to the agent.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}
