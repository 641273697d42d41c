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
