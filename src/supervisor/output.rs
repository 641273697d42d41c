//! Captured output of tasks that have no terminal: the last bytes in memory
//! for the window and D-Bus, everything in the task's `output.log`.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// Bytes of output kept in memory per task.
pub const RING_BYTES: usize = 256 << 10;

/// The last [`RING_BYTES`] bytes a task printed, and how many were dropped
/// before them.
#[derive(Debug, Default)]
pub struct Ring {
    buf: VecDeque<u8>,
    dropped: u64,
}

impl Ring {
    pub fn push(&mut self, data: &[u8]) {
        if data.len() >= RING_BYTES {
            self.dropped += (self.buf.len() + data.len() - RING_BYTES) as u64;
            self.buf.clear();
            self.buf.extend(&data[data.len() - RING_BYTES..]);
            return;
        }
        let over = (self.buf.len() + data.len()).saturating_sub(RING_BYTES);
        self.buf.drain(..over);
        self.dropped += over as u64;
        self.buf.extend(data);
    }

    /// The kept bytes, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        self.buf.iter().copied().collect()
    }

    /// Bytes that no longer fit (they are in `output.log`).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Bytes of a task's output kept in its `output.log`. The log lives on
/// the user's disk, outside every limit of the task (`--max-upper` counts
/// only its layers): an agent printing without end would fill the disk.
pub const LOG_BYTES: u64 = 64 << 20;

/// Copies `from` into the ring and appends it to `log` until end of file,
/// at most [`LOG_BYTES`] of it (then a line says what was left out).
pub(crate) fn pump(
    from: impl Read,
    ring: Arc<Mutex<Ring>>,
    log: Arc<Mutex<Option<std::fs::File>>>,
) {
    pump_capped(from, ring, log, LOG_BYTES)
}

fn pump_capped(
    mut from: impl Read,
    ring: Arc<Mutex<Ring>>,
    log: Arc<Mutex<Option<std::fs::File>>>,
    cap: u64,
) {
    let mut buf = vec![0u8; 16 << 10];
    let mut logged = 0u64;
    let mut left_out = 0u64;
    let note = |log: &Arc<Mutex<Option<std::fs::File>>>, n: u64| {
        if let Ok(mut l) = log.lock() {
            if let Some(f) = l.as_mut() {
                let _ = writeln!(
                    f,
                    "\n[airlock: {n} more bytes of output were not kept; the log stops at {} MiB]",
                    cap >> 20
                );
            }
        }
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if let Ok(mut r) = ring.lock() {
            r.push(&buf[..n]);
        }
        let keep = (cap.saturating_sub(logged) as usize).min(n);
        left_out += (n - keep) as u64;
        logged += keep as u64;
        if keep == 0 {
            continue;
        }
        if let Ok(mut l) = log.lock() {
            if let Some(f) = l.as_mut() {
                if let Err(e) = f.write_all(&buf[..keep]) {
                    tracing::warn!("task output log: {e}");
                    *l = None;
                }
            }
        }
    }
    if left_out > 0 {
        note(&log, left_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_stops_at_its_cap_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        let f = std::fs::File::create(&path).unwrap();
        let log = Arc::new(Mutex::new(Some(f)));
        let ring = Arc::new(Mutex::new(Ring::default()));
        let input = vec![b'z'; 3 << 20];
        pump_capped(&input[..], ring.clone(), log, 1 << 20);
        let kept = std::fs::read(&path).unwrap();
        assert!(kept.starts_with(&vec![b'z'; 1 << 20]));
        let tail = String::from_utf8_lossy(&kept[1 << 20..]).into_owned();
        assert!(tail.contains("2097152 more bytes"), "{tail}");
        // The window still gets the newest output.
        assert_eq!(ring.lock().unwrap().contents().len(), RING_BYTES);
    }

    #[test]
    fn ring_keeps_the_last_bytes() {
        let mut r = Ring::default();
        r.push(b"hello ");
        r.push(&vec![b'x'; RING_BYTES - 3]);
        let c = r.contents();
        assert_eq!(c.len(), RING_BYTES);
        assert_eq!(&c[..3], b"lo ");
        assert_eq!(r.dropped(), 3);
        r.push(&vec![b'y'; RING_BYTES + 10]);
        assert_eq!(r.contents(), vec![b'y'; RING_BYTES]);
        assert_eq!(r.dropped(), 3 + RING_BYTES as u64 + 10);
    }
}

/// Held while a question is on the user's terminal (network consent in
/// `airlock run --net ask`): the task's output waits, so that the agent
/// cannot draw over the question or print a fake one after it.
#[derive(Debug, Clone, Default)]
pub struct TerminalHold(Arc<Mutex<()>>);

impl TerminalHold {
    pub fn new() -> Self {
        Self::default()
    }

    /// The turn to write to the terminal; output waits while it is held.
    pub fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        // Only the turn is guarded, no data: a poisoned lock is fine.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PartialEq for TerminalHold {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TerminalHold {}

/// Copies a task's output to our own descriptor `to` (1 or 2), a chunk at
/// a time, each written only while no question holds the terminal.
pub(crate) fn relay(mut from: impl Read, to: std::os::fd::RawFd, hold: TerminalHold) {
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: our own standard descriptor, open for the process's life.
    let mut out = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(to)
    });
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let _turn = hold.hold();
        // A closed terminal: the rest is read and dropped, so the task
        // never blocks on a full pipe.
        let _ = out.write_all(&buf[..n]);
    }
}
