//! Answers typed on the user's terminal: network consent while a task
//! runs, `airlock run --review` after it. The agent has had that terminal
//! as its screen, and it may have printed a question of its own just
//! before ours. So an answer counts only when typed after our question
//! was shown: what was typed earlier, or within [`SETTLE`] of it (in
//! rhythm with the agent's prompt), is dropped, and the question is asked
//! again.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::i18n::gettext;

/// How long after a question is shown keys still count as typed before
/// it: shorter than anyone takes to read a question.
pub const SETTLE: Duration = Duration::from_millis(350);

/// Puts the terminal's drawing back to what a question needs to be seen:
/// the agent may have left text concealed (SGR 8) or black on black, the
/// palette or the default colours changed, another character set, the
/// cursor hidden, the alternate screen, a scrolling region, bracketed
/// paste, or Enter sending CR LF. A soft reset (DECSTR) and then, for
/// terminals without it, each of these one by one.
pub const RESET_DRAWING: &str = "\x1b[!p\x1b[0m\x1b(B\x0f\x1b[?1049l\x1b[r\x1b[?7h\x1b[?25h\x1b[?2004l\x1b[20l\x1b]104\x07\x1b]110\x07\x1b]111\x07";

/// Drops what was typed on terminal `fd` but not read yet.
pub fn discard_typeahead(fd: BorrowedFd) {
    // Fails only when `fd` is not a terminal: nothing to drop then.
    let _ = nix::sys::termios::tcflush(fd, nix::sys::termios::FlushArg::TCIFLUSH);
}

/// Polls `fd` for `ms` milliseconds (-1: no end): whether a read would not
/// block (input, its end, or an error the read will tell), and whether
/// that is input. A signal counts as nothing yet.
fn pending(fd: BorrowedFd, ms: i32) -> (bool, bool) {
    let mut fds = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll on one descriptor the caller keeps open.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
    let failed = n < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINTR;
    (n > 0 || failed, n > 0 && fds[0].revents & libc::POLLIN != 0)
}

/// Reads the answer to `question`, which the caller has just written to
/// `out`. One line, ended by Enter in either terminal mode (`\n`, or `\r`
/// in raw mode). `None`: end of input, or nothing within `timeout`.
/// `withdrawn`: asked every 100 ms; true when the question no longer
/// stands (the task it was about has ended), and then `None` at once.
pub fn answer(
    fd: BorrowedFd,
    out: &mut dyn Write,
    question: &str,
    timeout: Option<Duration>,
    withdrawn: Option<&dyn Fn() -> bool>,
) -> Option<String> {
    let start = Instant::now();
    let cancelled = || withdrawn.is_some_and(|w| w());
    discard_typeahead(fd);
    // Bounded: a terminal that hung up reports input for ever.
    for _ in 0..20 {
        std::thread::sleep(SETTLE);
        if cancelled() {
            return None;
        }
        if !pending(fd, 0).1 {
            break;
        }
        discard_typeahead(fd);
        let _ = write!(
            out,
            "\n{}\n{question}",
            gettext("(keys typed before this question appeared were ignored)")
        );
        let _ = out.flush();
    }
    let mut line = Vec::new();
    loop {
        if cancelled() {
            return None;
        }
        let ms = match timeout {
            None if withdrawn.is_none() => -1,
            None => 100,
            Some(t) => {
                let left = t.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return None;
                }
                // In slices, to notice a withdrawal.
                left.as_millis().min(100) as i32
            }
        };
        if !pending(fd, ms).0 {
            continue;
        }
        let mut buf = [0u8; 256];
        let n = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(_) => 0,
        };
        if n == 0 {
            return (!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned());
        }
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            line.push(b);
        }
    }
}
