//! Coalescing of repeated denials: one entry per distinct (kind, subject,
//! detail), in bounded memory. The first occurrence is reported at once;
//! repeats are reported at most once per flush interval (and at the end) as
//! one event whose `count` is the number of occurrences between its
//! `first_ms` and `last_ms` — so the counts of all events of a key add up to
//! the exact total, which is how the audit store and the window sum them.

use std::collections::HashMap;

use crate::event::EventKind;

/// How many distinct denials one task may keep apart; beyond that they are
/// counted under one "other" entry, so memory stays bounded.
pub const MAX_KEYS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Syscall {
        name: String,
        detail: Option<String>,
    },
    File {
        op: String,
        path: String,
        denied: bool,
    },
    Net {
        syscall: String,
        address: String,
    },
}

#[derive(Debug)]
struct Entry {
    pid: u32,
    /// Occurrences not yet reported, and their time span.
    count: u64,
    first_ms: u64,
    last_ms: u64,
    total: u64,
}

#[derive(Debug, Default)]
pub struct Coalescer {
    entries: HashMap<Key, Entry>,
}

impl Coalescer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one occurrence; returns the event to emit now (only for the
    /// first occurrence of a key).
    pub fn record(&mut self, key: Key, pid: u32, now_ms: u64) -> Option<EventKind> {
        let key = if self.entries.len() >= MAX_KEYS && !self.entries.contains_key(&key) {
            Key::Syscall {
                name: "other".into(),
                detail: Some(format!("more than {MAX_KEYS} distinct denials")),
            }
        } else {
            key
        };
        if let Some(e) = self.entries.get_mut(&key) {
            if e.count == 0 {
                e.first_ms = now_ms;
            }
            e.count += 1;
            e.total += 1;
            e.last_ms = now_ms;
            e.pid = pid;
            return None;
        }
        let first = Entry {
            pid,
            count: 1,
            first_ms: now_ms,
            last_ms: now_ms,
            total: 1,
        };
        let ev = to_event(&key, &first);
        self.entries.insert(key, Entry { count: 0, ..first });
        Some(ev)
    }

    /// One event per entry with unreported occurrences.
    pub fn flush(&mut self) -> Vec<EventKind> {
        let mut out = Vec::new();
        for (k, e) in self.entries.iter_mut() {
            if e.count > 0 {
                out.push(to_event(k, e));
                e.count = 0;
            }
        }
        out
    }

    /// Total occurrences recorded.
    pub fn total(&self) -> u64 {
        self.entries.values().map(|e| e.total).sum()
    }

    pub fn distinct(&self) -> usize {
        self.entries.len()
    }
}

fn to_event(k: &Key, e: &Entry) -> EventKind {
    match k {
        Key::Syscall { name, detail } => EventKind::SyscallDenied {
            syscall: name.clone(),
            detail: detail.clone(),
            pid: e.pid,
            count: e.count,
            first_ms: e.first_ms,
            last_ms: e.last_ms,
        },
        Key::File { op, path, denied } => EventKind::FileAttempt {
            op: op.clone(),
            path: path.clone(),
            denied: *denied,
            pid: e.pid,
            count: e.count,
            first_ms: e.first_ms,
            last_ms: e.last_ms,
        },
        Key::Net { syscall, address } => EventKind::NetAttempt {
            syscall: syscall.clone(),
            address: address.clone(),
            pid: e.pid,
            count: e.count,
            first_ms: e.first_ms,
            last_ms: e.last_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_and_memory_bounded() {
        let mut c = Coalescer::new();
        let k = Key::Syscall {
            name: "ptrace".into(),
            detail: None,
        };
        assert!(c.record(k.clone(), 1, 10).is_some());
        for i in 0..999_999 {
            assert!(c.record(k.clone(), 1, 11 + i).is_none());
        }
        let ups = c.flush();
        assert_eq!(ups.len(), 1);
        match &ups[0] {
            EventKind::SyscallDenied {
                count,
                first_ms,
                last_ms,
                ..
            } => {
                // 1 reported at once + these = the exact total.
                assert_eq!(*count, 999_999);
                assert_eq!(*first_ms, 11);
                assert_eq!(*last_ms, 10 + 999_999);
            }
            e => panic!("{e:?}"),
        }
        assert!(c.flush().is_empty());
        for i in 0..(MAX_KEYS * 2) {
            c.record(
                Key::File {
                    op: "open".into(),
                    path: format!("/x/{i}"),
                    denied: true,
                },
                1,
                1,
            );
        }
        assert!(c.distinct() <= MAX_KEYS + 1);
        assert_eq!(c.total(), 1_000_000 + (MAX_KEYS * 2) as u64);
    }
}
