//! The one event type of the whole app. Every part that has something to say
//! about a task (the sandbox, the monitor, the proxy, the supervisor, the
//! commit) says it as an [`Event`]; the CLI prints them as JSON lines, the
//! audit store keeps them, the window and D-Bus stream them.
//!
//! The format is versioned ([`EVENT_VERSION`]); fields are only ever added.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::task::{TaskId, TaskState};

/// Bumped when a field changes meaning; new optional fields do not bump it.
pub const EVENT_VERSION: u32 = 1;

/// One thing that happened to one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Format version, [`EVENT_VERSION`].
    pub v: u32,
    pub task: TaskId,
    /// Order within the task, starting at 0; gap-free per emitter.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn new(task: TaskId, seq: u64, kind: EventKind) -> Self {
        Event {
            v: EVENT_VERSION,
            task,
            seq,
            time_ms: now_ms(),
            kind,
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The shell-style code: the exit code, or 128 + signal.
    pub code: i32,
    /// The signal that killed the agent, if one did.
    pub signal: Option<i32>,
}

/// Which mechanism enforced one limit or layer, so the UI can tell the truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enforced {
    /// What is limited or enforced (`memory`, `pids`, `landlock`, …).
    pub what: String,
    /// The value in force, in words (`2 GiB`, `ABI 6`, …).
    pub value: String,
    /// How (`cgroup`, `systemd-scope`, `rlimit`, `watchdog`, `tmpfs`, `kernel`), or
    /// `not-enforced`.
    pub mechanism: String,
    /// A plain sentence for the user when something is weaker than asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What happened. Tagged by `type` in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A lifecycle transition.
    StateChanged {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<TaskState>,
        to: TaskState,
    },
    /// The agent process was started inside the sandbox.
    Started { argv: Vec<String>, helper_pid: u32 },
    /// What the sandbox enforced: one entry per layer and per limit.
    Enforcement { layers: Vec<Enforced> },
    /// A syscall the filter refused. Identical denials are coalesced:
    /// `count` occurrences between `first_ms` and `last_ms`.
    SyscallDenied {
        syscall: String,
        /// Decoded arguments that matter (ioctl request, clone flags, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        pid: u32,
        count: u64,
        first_ms: u64,
        last_ms: u64,
    },
    /// A file access outside the grants (or any access at watch level `all`).
    /// Paths only: never file contents.
    FileAttempt {
        op: String,
        path: String,
        denied: bool,
        pid: u32,
        count: u64,
        first_ms: u64,
        last_ms: u64,
    },
    /// A direct network attempt that bypassed the proxy.
    NetAttempt {
        syscall: String,
        address: String,
        pid: u32,
        count: u64,
        first_ms: u64,
        last_ms: u64,
    },
    /// A limit was reached and the sandbox acted on it.
    LimitHit { limit: String, detail: String },
    /// One connection through the network proxy.
    Flow {
        host: String,
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
        protocol: String,
        decision: String,
        reason: String,
        bytes_out: u64,
        bytes_in: u64,
        duration_ms: u64,
    },
    /// A DNS lookup answered inside the sandbox (transparent mode).
    DnsQuery { name: String, answer: String },
    /// The user is asked whether a host may be reached.
    ConsentRequested { id: u64, host: String, port: u16 },
    /// The answer (or the timeout) for a consent request.
    ConsentAnswered { id: u64, answer: String },
    /// The agent ended; the sandbox is gone.
    Exited {
        status: ExitStatus,
        /// Files changed in read-write grants, waiting for review.
        changed_files: u64,
    },
    /// The task could not be run; nothing of it is left running.
    Failed { error: String },
    /// Something the user should know that is not an error.
    Warning { message: String },
    /// A commit of reviewed changes finished (or was rolled back).
    Committed {
        files: u64,
        conflicts: u64,
        outcome: String,
    },
}
