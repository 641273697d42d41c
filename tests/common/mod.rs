//! Shared helpers for the integration tests: a private home and XDG folders
//! per test, and a way to run the real `airlock` binary with a time limit.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `airlock` binary under test (`AIRLOCK_BIN` when the test script
/// copied it somewhere the unprivileged test user can reach).
pub fn airlock_bin() -> PathBuf {
    std::env::var_os("AIRLOCK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_airlock")))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A private world for one test: HOME, XDG folders, a project folder.
pub struct World {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub project: PathBuf,
    pub outside: PathBuf,
}

pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The overlay's work folder is left mode 000 by the kernel, which the
/// temporary folder's own removal cannot enter: open it up first so that
/// tests leave nothing behind in /tmp.
impl Drop for World {
    fn drop(&mut self) {
        let _ = airlock::workspace::fsx::remove_owned_tree(self.dir.path());
    }
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("airlock-test")
            .tempdir()
            .unwrap();
        // When the tests run as root the agent runs as uid 65534, which must
        // be able to reach the test's folders at all.
        chmod(dir.path(), 0o755);
        let home = dir.path().join("home");
        let project = home.join("project");
        let outside = dir.path().join("outside");
        for d in [&home, &project, &outside] {
            std::fs::create_dir_all(d).unwrap();
            chmod(d, 0o777);
        }
        World {
            dir,
            home,
            project,
            outside,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A command for `airlock ARGS` in this world.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.command(airlock_bin());
        c.args(args);
        c
    }

    /// `program` with this world's environment only (home, XDG folders,
    /// `$AIRLOCK` naming the binary under test), run in its folder with
    /// stdin from /dev/null.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &self.home)
            .env("LANG", "C.UTF-8")
            .env("XDG_STATE_HOME", self.state())
            .env("XDG_DATA_HOME", self.dir.path().join("data"))
            .env("XDG_CONFIG_HOME", self.dir.path().join("config"))
            .env("AIRLOCK", airlock_bin())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    /// `airlock run ARGS -- sh -c SCRIPT`, at most 120 s.
    pub fn run(&self, args: &[&str], script: &str) -> Output {
        let mut all: Vec<&str> = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "sh", "-c", script]);
        output_within(self.cmd(&all), Duration::from_secs(120))
    }

    /// Task folders created so far.
    pub fn tasks(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.state().join("airlock/tasks"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Runs `cmd`, killing it if it takes longer than `limit`.
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("start airlock");
    let start = Instant::now();
    let pid = child.id();
    let guard = std::thread::spawn(move || {
        while start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
            if std::fs::metadata(format!("/proc/{pid}")).is_err() {
                return false;
            }
        }
        // SAFETY: killing our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let out = child.wait_with_output().expect("wait for airlock");
    let _ = guard.join();
    assert!(
        start.elapsed() < limit,
        "airlock took longer than {limit:?}"
    );
    out
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A python3 snippet that makes raw syscall `nr` with integer args and
/// prints `rc errno`.
pub fn py_syscall(nr: i64, args: &[u64]) -> String {
    let a: Vec<String> = args
        .iter()
        .map(|x| format!("ctypes.c_ulong({x})"))
        .collect();
    format!(
        "python3 -c 'import ctypes; l=ctypes.CDLL(None, use_errno=True); l.syscall.restype=ctypes.c_long; r=l.syscall({nr}{}{}); print(\"rc=%d errno=%d\" % (r, ctypes.get_errno()))'",
        if a.is_empty() { "" } else { ", " },
        a.join(", ")
    )
}

/// Starts `c` with a new pseudo-terminal as its stdio; with `controlling`,
/// also as its controlling terminal (so `/dev/tty` is it, as in a terminal
/// window). Returns the child and the terminal's main side.
#[allow(dead_code)]
pub fn spawn_on_pty(mut c: Command, controlling: bool) -> (std::process::Child, std::fs::File) {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::process::CommandExt;
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave.as_raw_fd();
    // SAFETY: duplicates of a descriptor we own, for the child's stdio;
    // setsid and TIOCSCTTY are async-signal-safe.
    unsafe {
        c.stdin(Stdio::from_raw_fd(libc::dup(slave)))
            .stdout(Stdio::from_raw_fd(libc::dup(slave)))
            .stderr(Stdio::from_raw_fd(libc::dup(slave)));
        if controlling {
            c.pre_exec(|| {
                libc::setsid();
                libc::ioctl(0, libc::TIOCSCTTY, 0);
                Ok(())
            });
        }
    }
    let child = c.spawn().unwrap();
    drop(pty.slave);
    (child, std::fs::File::from(pty.master))
}

/// Runs `c` on a pty (see [`spawn_on_pty`]); when the output first shows a trigger,
/// waits `after` and types its keys. Returns everything shown.
#[allow(dead_code)]
pub fn drive_on_pty(c: Command, controlling: bool, steps: &[(&str, &[u8], Duration)]) -> String {
    use std::io::{Read, Write};
    let (mut child, mut master) = spawn_on_pty(c, controlling);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let mut next = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(90) {
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(50)) {
            out.extend_from_slice(&b);
        }
        if let Some((trigger, keys, after)) = steps.get(next) {
            if String::from_utf8_lossy(&out).matches(trigger).count() > 0 {
                std::thread::sleep(*after);
                master.write_all(keys).unwrap();
                next += 1;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(b) = rx.recv_timeout(Duration::from_millis(300)) {
        out.extend_from_slice(&b);
    }
    String::from_utf8_lossy(&out).into_owned()
}
