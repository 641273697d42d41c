//! Resource limits that the agent process itself carries (rlimits), and the
//! report of what enforces each limit. Whole-task limits (timeout, size of
//! the upper layers) are the supervisor's watchdog; `/tmp` and `$HOME` are
//! size-limited tmpfs mounts.

use nix::sys::resource::{setrlimit, Resource};

use crate::event::Enforced;
use crate::policy::{format_size, Limits};

/// Applies the per-process limits; one entry per limit, saying how it is enforced.
pub fn apply_rlimits(l: &Limits) -> Vec<Result<Enforced, String>> {
    let mut out = Vec::new();
    let mut set = |res: Resource, value: u64, what: &str, shown: String, note: Option<&str>| {
        out.push(
            setrlimit(res, value, value)
                .map(|_| Enforced {
                    what: what.into(),
                    value: shown,
                    mechanism: "rlimit".into(),
                    note: note.map(str::to_string),
                })
                .map_err(|e| format!("{what}: {e}")),
        );
    };
    // RLIMIT_NPROC counts per user *and per user namespace* (Linux ≥ 5.14),
    // so inside our namespace it caps the task's processes, not the user's.
    set(
        Resource::RLIMIT_NPROC,
        l.pids,
        "pids",
        l.pids.to_string(),
        None,
    );
    set(
        Resource::RLIMIT_NOFILE,
        l.nofile,
        "nofile",
        l.nofile.to_string(),
        None,
    );
    // RLIMIT_DATA rather than RLIMIT_AS: runtimes that reserve large address
    // ranges (V8, Go, the JVM) keep working; what is really used is capped.
    set(
        Resource::RLIMIT_DATA,
        l.memory,
        "memory",
        format_size(l.memory),
        Some("per process: a task of many processes can use more in total"),
    );
    // One file can never exceed what the whole task may write.
    set(
        Resource::RLIMIT_FSIZE,
        l.max_upper,
        "file-size",
        format_size(l.max_upper),
        None,
    );
    set(Resource::RLIMIT_CORE, 0, "core-dumps", "off".into(), None);
    out
}

/// The limits that rlimits cannot express, reported honestly.
pub fn unenforced(l: &Limits) -> Vec<Enforced> {
    vec![Enforced {
        what: "cpu".into(),
        value: format!("{:.2} core", l.cpu),
        mechanism: "not-enforced".into(),
        note: Some("a CPU share needs a cgroup with the cpu controller (a systemd user manager or a delegated cgroup v2 folder)".into()),
    }]
}
