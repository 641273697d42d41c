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

/// Copies `from` into the ring and appends it to `log` until end of file.
pub(crate) fn pump(
    mut from: impl Read,
    ring: Arc<Mutex<Ring>>,
    log: Arc<Mutex<Option<std::fs::File>>>,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if let Ok(mut r) = ring.lock() {
            r.push(&buf[..n]);
        }
        if let Ok(mut l) = log.lock() {
            if let Some(f) = l.as_mut() {
                if let Err(e) = f.write_all(&buf[..n]) {
                    tracing::warn!("task output log: {e}");
                    *l = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
