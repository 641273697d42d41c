//! The task's standard streams without `--tty`: three pipes of the task's
//! own, which the helper relays to the descriptors it was given (the
//! user's terminal, pipes or files).
//!
//! Handing the user's descriptors in would hand in their open file
//! descriptions, which no sandbox layer confines:
//! - a stdin pipe reopened through `/proc/self/fd/0` for writing puts text
//!   into that pipe, for whatever reads it next (a shell running a script
//!   piped into it);
//! - a file, folder or terminal on stdio can be chmod'ed, chowned, or have
//!   its times and extended attributes changed (Landlock covers none of
//!   these), and a folder leads on through `..`;
//! - `>>` loses its append flag with one `fcntl`;
//! - a terminal can be left non-blocking, exclusive, world-writable or
//!   stopped.
//!
//! A pipe of the task's own carries bytes and nothing else. stdin is read
//! only when the task has taken everything sent so far, so at most one
//! page is read ahead of it (like `ssh`, a task started from a script fed
//! to a shell on stdin may still take the lines that follow: give it
//! `< /dev/null` there). A terminal on stdin is not read at all: the task
//! sees an empty stdin, and `--tty` gives it a terminal of its own.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// How much output is passed on at once.
const CHUNK: usize = 64 * 1024;
/// The task's stdin pipe holds one page, and one page is read from the
/// user's stdin when the task has taken the last: that bounds the
/// read-ahead, and the pipe reports room (POLLOUT) only once it is empty.
const STDIN_CHUNK: usize = 4096;

/// The three pipes, before the sandbox is created.
pub struct TaskStdio {
    /// The task's ends: stdin's read end, stdout's and stderr's write ends.
    inside: [OwnedFd; 3],
    /// Ours: stdin's write end, stdout's and stderr's read ends (none of
    /// its own when both go into one pipe).
    outside: (OwnedFd, OwnedFd, Option<OwnedFd>),
    /// PID 1 reads this before it reports the exit status, so that the
    /// task's last output is out before `airlock run` says it ended.
    drained_r: OwnedFd,
    drained_w: OwnedFd,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

impl TaskStdio {
    pub fn new() -> std::io::Result<TaskStdio> {
        let (in_r, in_w) = pipe()?;
        // SAFETY: shrinking a pipe we own.
        unsafe {
            libc::fcntl(
                in_w.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                STDIN_CHUNK as libc::c_int,
            )
        };
        let (out_r, out_w) = pipe()?;
        // Where our stdout and stderr are one file (a terminal, `2>&1`),
        // the task writes both into one pipe: two would be relayed in turn
        // and mix up the order of its lines.
        let (err_r, err_w) = if same_file(1, 2) {
            (None, out_w.try_clone()?)
        } else {
            let (r, w) = pipe()?;
            (Some(r), w)
        };
        let (drained_r, drained_w) = pipe()?;
        Ok(TaskStdio {
            inside: [in_r, out_w, err_w],
            outside: (in_w, out_r, err_r),
            drained_r,
            drained_w,
        })
    }

    /// In PID 1, first thing: the task's pipes become 0, 1 and 2 (for PID 1
    /// and everything it starts); the user's descriptors are gone. Returns
    /// what PID 1 waits on before reporting (see [`wait_drained`]).
    pub fn enter(self) -> std::io::Result<OwnedFd> {
        for (i, fd) in self.inside.iter().enumerate() {
            // SAFETY: dup2 onto our own standard descriptors; the new ones
            // are not close-on-exec, so the agent inherits them.
            if unsafe { libc::dup2(fd.as_raw_fd(), i as RawFd) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(self.drained_r)
    }

    /// In the helper, once PID 1 exists: our ends only.
    pub fn leave(self) -> Relay {
        let (in_w, out_r, err_r) = self.outside;
        Relay {
            stdin: Some(in_w),
            outputs: [Some(out_r), err_r],
            drained: self.drained_w,
        }
    }
}

/// PID 1, after it closed its own copies of the task's stdio: waits until
/// the helper has passed everything on (or is gone).
pub fn wait_drained(drained: OwnedFd) {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(drained.as_raw_fd(), &mut b) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// The helper's side of the pipes.
pub struct Relay {
    stdin: Option<OwnedFd>,
    /// stdout's and stderr's read ends, passed to our 1 and 2.
    outputs: [Option<OwnedFd>; 2],
    drained: OwnedFd,
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a pipe end we own (a description nobody else shares).
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

/// Whether descriptors `a` and `b` are the same file.
pub fn same_file(a: RawFd, b: RawFd) -> bool {
    let st = |fd| {
        // SAFETY: fstat fills the struct we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino, st.st_rdev))
    };
    matches!((st(a), st(b)), (Some(x), Some(y)) if x == y)
}

/// Bytes in the pipe that the task has not read yet.
fn unread(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int we own.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

/// Whether the pipe of `fd` holds one page, shrinking it back when the
/// task enlarged it and what it holds allows.
fn one_page_pipe(fd: RawFd) -> bool {
    // SAFETY: fcntl on a pipe end we own.
    unsafe {
        libc::fcntl(fd, libc::F_GETPIPE_SZ) == STDIN_CHUNK as libc::c_int
            || libc::fcntl(fd, libc::F_SETPIPE_SZ, STDIN_CHUNK as libc::c_int)
                == STDIN_CHUNK as libc::c_int
    }
}

/// Whether reading `fd` now is ours to do: not a terminal we are in the
/// background of (the read would stop us with SIGTTIN, and the task's
/// output with us).
fn may_read(fd: RawFd) -> bool {
    // SAFETY: isatty/tcgetpgrp/getpgrp only query.
    unsafe { libc::isatty(fd) == 0 || libc::tcgetpgrp(fd) == libc::getpgrp() }
}

/// Writes all of `buf` to one of the user's descriptors, which may be
/// non-blocking (a description shared with others): waits for room then.
fn write_all(fd: RawFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writing from a buffer we own.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf = &buf[n as usize..];
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one pollfd we own.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            _ => return Err(e),
        }
    }
    Ok(())
}

fn read_some(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

impl Relay {
    /// Copies until every writer of the task's output is gone (PID 1
    /// closes its copies last), then lets go of our own stdio, tells PID 1
    /// and returns.
    pub fn run(mut self) {
        // A reader of our output that went away ends that stream for the
        // task (EPIPE), not the helper. Writing to a terminal from the
        // background is allowed when SIGTTOU is ignored.
        // SAFETY: ignoring signals in our own single-threaded process.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::signal(libc::SIGTTIN, libc::SIG_IGN);
        }
        for fd in self.outputs.iter().flatten() {
            set_nonblocking(fd.as_raw_fd());
        }
        if let Some(fd) = &self.stdin {
            set_nonblocking(fd.as_raw_fd());
        }
        let mut buf = vec![0u8; CHUNK];
        let mut pending: Vec<u8> = Vec::new();
        // A terminal on stdin stays the user's: `airlock run` reads network
        // consent answers from it, and what the user types ahead belongs to
        // the shell. Interactive agents get a terminal of their own with
        // --tty. Only piped or redirected input reaches the task.
        // SAFETY: isatty only queries.
        let mut user_stdin_open = unsafe { libc::isatty(0) } == 0;
        while self.outputs.iter().any(Option::is_some) {
            let unread_now = self.stdin.as_ref().map(|w| unread(w.as_raw_fd()));
            let wants_input =
                user_stdin_open && pending.is_empty() && unread_now == Some(0) && may_read(0);
            // Room in the task's stdin: for what is pending, or (when the
            // task has not taken the last page yet) for the next read. The
            // latter only while the pipe holds one page, where room means
            // empty: the task can enlarge its pipe, and then room with a
            // byte left unread would wake us without end (we then look
            // again at each timeout instead).
            let one_page = || {
                self.stdin
                    .as_ref()
                    .is_some_and(|w| one_page_pipe(w.as_raw_fd()))
            };
            let wants_room = !pending.is_empty()
                || (user_stdin_open && unread_now.is_some_and(|n| n > 0) && one_page());
            let mut fds = [
                pollfd(self.outputs[0].as_ref(), libc::POLLIN),
                pollfd(self.outputs[1].as_ref(), libc::POLLIN),
                libc::pollfd {
                    fd: if wants_input { 0 } else { -1 },
                    events: libc::POLLIN,
                    revents: 0,
                },
                pollfd(self.stdin.as_ref().filter(|_| wants_room), libc::POLLOUT),
            ];
            // SAFETY: pollfds we own. The timeout re-checks who holds the
            // terminal's foreground.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            if r <= 0 {
                continue;
            }
            for (i, target) in [(0usize, 1), (1, 2)] {
                if fds[i].revents == 0 {
                    continue;
                }
                let Some(src) = &self.outputs[i] else {
                    continue;
                };
                match read_some(src.as_raw_fd(), &mut buf) {
                    Ok(0) => self.outputs[i] = None,
                    Ok(n) => {
                        if write_all(target, &buf[..n]).is_err() {
                            // Nobody reads it any more: the task gets EPIPE.
                            self.outputs[i] = None;
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                    Err(_) => self.outputs[i] = None,
                }
            }
            if fds[2].revents != 0 {
                match read_some(0, &mut buf[..STDIN_CHUNK]) {
                    Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                    // End of input, or none to be had (a folder, a closed
                    // or unreadable descriptor): the task sees its end.
                    _ => user_stdin_open = false,
                }
            }
            if !pending.is_empty() {
                if let Some(w) = &self.stdin {
                    // SAFETY: writing from a buffer we own.
                    let n = unsafe {
                        libc::write(w.as_raw_fd(), pending.as_ptr().cast(), pending.len())
                    };
                    if n > 0 {
                        pending.drain(..n as usize);
                    } else if n < 0
                        && !matches!(
                            std::io::Error::last_os_error().raw_os_error(),
                            Some(libc::EAGAIN) | Some(libc::EINTR)
                        )
                    {
                        // The task closed its stdin.
                        pending.clear();
                        self.stdin = None;
                    }
                }
            }
            if !user_stdin_open && pending.is_empty() {
                self.stdin = None;
            }
        }
        self.stdin = None;
        // The user's streams are not ours to hold any longer: a reader of
        // our output must not wait for the helper's own exit.
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for fd in 0..=2 {
                // SAFETY: replacing our own standard descriptors.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        let _ = nix::unistd::write(&self.drained, b"d");
    }
}

fn pollfd(fd: Option<&OwnedFd>, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.map_or(-1, AsRawFd::as_raw_fd),
        events,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fionread_counts_what_the_reader_has_not_taken() {
        let (r, w) = pipe().unwrap();
        assert_eq!(unread(w.as_raw_fd()), 0);
        nix::unistd::write(&w, b"hello").unwrap();
        assert_eq!(unread(w.as_raw_fd()), 5);
        let mut b = [0u8; 3];
        nix::unistd::read(r.as_raw_fd(), &mut b).unwrap();
        assert_eq!(unread(w.as_raw_fd()), 2);
    }
}
