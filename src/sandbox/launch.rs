//! Starting the helper with `posix_spawn`. `std::process::Command` needs a
//! `pre_exec` hook to place the control socket at fd 3, and a hook makes
//! it `fork()` the whole supervisor (page tables of every thread's memory)
//! instead of the `vfork`-style clone glibc's `posix_spawn` uses: that cost
//! milliseconds on every task start.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::helper::CONTROL_FD;

/// A started helper: its pid, and whether it has been reaped (a reaped
/// pid may belong to someone else, so it is never signalled again).
#[derive(Debug)]
pub struct Helper {
    pid: libc::pid_t,
    status: Option<i32>,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Runs `exe ARGS…` with an empty environment, `stdio[i]` as fd i (`None`:
/// ours), `control` as [`CONTROL_FD`] (3) and no other descriptor.
pub fn spawn(
    exe: &Path,
    args: &[&str],
    stdio: [Option<RawFd>; 3],
    control: RawFd,
) -> io::Result<Helper> {
    let prog = CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the helper's path"))?;
    let mut owned = vec![prog.clone()];
    for a in args {
        owned.push(
            CString::new(*a)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in an argument"))?,
        );
    }
    let mut argv: Vec<*mut libc::c_char> = owned.iter().map(|c| c.as_ptr() as *mut _).collect();
    argv.push(std::ptr::null_mut());
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    // The file actions dup2 in order (stdin, stdout, stderr, control): a
    // source that is itself one of the targets 0..=3 could be overwritten
    // before it is read, and dup2 onto itself keeps close-on-exec. Such
    // sources are moved above them first.
    let mut moved = Vec::new();
    let mut lift = |fd: RawFd| -> io::Result<RawFd> {
        if fd > CONTROL_FD {
            return Ok(fd);
        }
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we were given.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        if new < 0 {
            return Err(io::Error::last_os_error());
        }
        moved.push(new);
        Ok(new)
    };
    let lifted = (|| -> io::Result<([Option<RawFd>; 3], RawFd)> {
        let mut out = [None; 3];
        for (i, fd) in stdio.iter().enumerate() {
            out[i] = fd.map(&mut lift).transpose()?;
        }
        Ok((out, lift(control)?))
    })();
    let result = lifted.and_then(|(stdio, control)| spawn_fds(&prog, &argv, &envp, stdio, control));
    for fd in moved {
        // SAFETY: our own duplicates.
        unsafe { libc::close(fd) };
    }
    result.map(|pid| Helper { pid, status: None })
}

fn spawn_fds(
    prog: &CString,
    argv: &[*mut libc::c_char],
    envp: &[*mut libc::c_char; 1],
    stdio: [Option<RawFd>; 3],
    control: RawFd,
) -> io::Result<libc::pid_t> {
    // SAFETY: the file actions and attributes are initialised before use,
    // destroyed after, and every pointer passed lives until posix_spawn
    // returns.
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut at: libc::posix_spawnattr_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut fa))?;
        let r = (|| {
            check(libc::posix_spawnattr_init(&mut at))?;
            for (i, fd) in stdio.iter().enumerate() {
                if let Some(fd) = fd {
                    check(libc::posix_spawn_file_actions_adddup2(
                        &mut fa, *fd, i as RawFd,
                    ))?;
                }
            }
            check(libc::posix_spawn_file_actions_adddup2(
                &mut fa, control, CONTROL_FD,
            ))?;
            // Nothing else, not even what our own parent left open without
            // close-on-exec (glibc ≥ 2.34).
            check(libc::posix_spawn_file_actions_addclosefrom_np(
                &mut fa,
                CONTROL_FD + 1,
            ))?;
            // As std's Command: an empty signal mask, SIGPIPE back to default.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            let mut pipe: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigmask(&mut at, &none))?;
            check(libc::posix_spawnattr_setsigdefault(&mut at, &pipe))?;
            check(libc::posix_spawnattr_setflags(
                &mut at,
                (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as _,
            ))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                prog.as_ptr(),
                &fa,
                &at,
                argv.as_ptr(),
                envp.as_ptr(),
            ))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut at);
        libc::posix_spawn_file_actions_destroy(&mut fa);
        r
    }
}

impl Helper {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the helper; returns the shell-style status (128 + signal
    /// when killed).
    pub fn wait(&mut self) -> io::Result<i32> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let mut st = 0;
        loop {
            // SAFETY: waitpid on our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut st, 0) };
            if r == self.pid {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
        let code = if libc::WIFEXITED(st) {
            libc::WEXITSTATUS(st)
        } else {
            128 + libc::WTERMSIG(st)
        };
        self.status = Some(code);
        Ok(code)
    }

    /// Sends `sig`, unless the helper has been reaped already.
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: our own, not yet reaped child.
            unsafe { libc::kill(self.pid, sig) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn places_stdio_and_the_control_socket_and_nothing_else() {
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // The child lists its descriptors on stdout and greets fd 3.
        let mut h = spawn(
            Path::new("/bin/sh"),
            &["-c", "echo hello >&3; ls /proc/self/fd"],
            [None, Some(w.as_raw_fd()), None],
            theirs.as_raw_fd(),
        )
        .unwrap();
        drop((w, theirs));
        assert_eq!(h.wait().unwrap(), 0);
        let mut greeting = String::new();
        ours.read_to_string(&mut greeting).unwrap();
        assert_eq!(greeting, "hello\n");
        let mut listing = String::new();
        std::fs::File::from(r).read_to_string(&mut listing).unwrap();
        let fds: Vec<i32> = listing
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        // 0-3 and the one `ls` opens for /proc/self/fd.
        assert!(fds.iter().all(|&fd| fd <= 4), "{fds:?}");
        assert!(fds.contains(&3), "{fds:?}");
    }

    #[test]
    fn a_killed_helper_reports_128_plus_the_signal_and_is_not_signalled_again() {
        let (_ours, theirs) = UnixStream::pair().unwrap();
        let mut h = spawn(
            Path::new("/bin/sleep"),
            &["30"],
            [None, None, None],
            theirs.as_raw_fd(),
        )
        .unwrap();
        h.signal(libc::SIGKILL);
        assert_eq!(h.wait().unwrap(), 128 + libc::SIGKILL);
        assert_eq!(h.wait().unwrap(), 128 + libc::SIGKILL);
        h.signal(libc::SIGKILL);
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let (_ours, theirs) = UnixStream::pair().unwrap();
        let e = spawn(
            Path::new("/nonexistent/helper"),
            &[],
            [None, None, None],
            theirs.as_raw_fd(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
