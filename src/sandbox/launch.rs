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
/// ours), `control` as fd 3 and no other descriptor of ours (everything
/// else is close-on-exec in this process).
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
    // dup2 onto itself would keep close-on-exec: move a control socket that
    // happens to be fd 0..=3 out of the way first.
    let moved;
    let control = if control <= 3 {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own.
        let fd = unsafe { libc::fcntl(control, libc::F_DUPFD_CLOEXEC, 10) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        moved = Some(fd);
        fd
    } else {
        moved = None;
        control
    };
    // SAFETY: the file actions and attributes are initialised before use,
    // destroyed after, and every pointer passed lives until posix_spawn
    // returns.
    let result = unsafe {
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
            check(libc::posix_spawn_file_actions_adddup2(&mut fa, control, 3))?;
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
    };
    if let Some(fd) = moved {
        // SAFETY: our own duplicate.
        unsafe { libc::close(fd) };
    }
    result.map(|pid| Helper { pid, status: None })
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
