//! Resource limits that the agent process itself carries (rlimits), and the
//! report of what enforces each limit. Whole-task limits (timeout, size of
//! the upper layers) are the supervisor's watchdog; `/tmp` and `$HOME` are
//! size-limited tmpfs mounts.

use nix::sys::resource::{setrlimit, Resource};

use crate::event::Enforced;
use crate::policy::{format_size, Limits};

/// Applies the per-process limits; one entry per limit, saying how it is enforced.
/// With `memory_by_cgroup` the task's cgroup enforces `--memory` for the
/// whole task, and no data-size rlimit is set.
pub fn apply_rlimits(l: &Limits, memory_by_cgroup: bool) -> Vec<Result<Enforced, String>> {
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
    // Only without a memory cgroup: sanitizers reserve terabytes of shadow
    // with read-write mappings, which RLIMIT_DATA counts (pass 19A).
    if !memory_by_cgroup {
        set(
            Resource::RLIMIT_DATA,
            l.memory,
            "memory",
            format_size(l.memory),
            Some("per process: a task of many processes can use more in total; memfds and shared mappings count as a whole (the watchdog); System V segments and kernel memory such as socket buffers are not counted"),
        );
    }
    // One file can never exceed what the whole task may write.
    set(
        Resource::RLIMIT_FSIZE,
        l.max_upper,
        "file-size",
        format_size(l.max_upper),
        None,
    );
    set(Resource::RLIMIT_CORE, 0, "core-dumps", "off".into(), None);
    // Queued signals, locked shared memory and message-queue bytes are
    // counted per host user across user namespaces: a task that queued
    // signals up to the limit left the user's own programs unable to
    // create a POSIX timer until it ended, and one that locked shared
    // memory (SHM_LOCK) left them none to lock. The task gets a quarter of
    // the user's pending signals and locked memory (each process's limit,
    // but the kernel counts them per user namespace, so it is the task's
    // total). It gets no message-queue bytes: it cannot open a queue
    // (Landlock refuses the queue's file), and a refused open still held
    // its bytes until the task ended.
    let quarter = |r: Resource, floor: u64| {
        nix::sys::resource::getrlimit(r)
            .map(|(soft, hard)| (soft / 4).max(floor).min(hard))
            .unwrap_or(floor)
    };
    let sigpending = quarter(Resource::RLIMIT_SIGPENDING, 64);
    let memlock = quarter(Resource::RLIMIT_MEMLOCK, 64 << 10);
    set(
        Resource::RLIMIT_MEMLOCK,
        memlock,
        "locked-memory",
        format_size(memlock),
        None,
    );
    set(
        Resource::RLIMIT_SIGPENDING,
        sigpending,
        "pending-signals",
        sigpending.to_string(),
        None,
    );
    set(
        Resource::RLIMIT_MSGQUEUE,
        0,
        "message-queues",
        "none".into(),
        None,
    );
    // The main thread's stack is not counted by RLIMIT_DATA, and its hard
    // limit was the host's (often unlimited): `ulimit -s unlimited` then
    // grew one process to gigabytes under a small --memory (pass 19A).
    // Capped at a quarter of the memory limit (at least 8 MiB), and never
    // above what the user already had.
    let (soft, hard) =
        nix::sys::resource::getrlimit(Resource::RLIMIT_STACK).unwrap_or((8 << 20, 8 << 20));
    let stack = (l.memory / 4).max(8 << 20).min(hard);
    out.push(
        setrlimit(Resource::RLIMIT_STACK, soft.min(stack), stack)
            .map(|_| Enforced {
                what: "stack".into(),
                value: format_size(stack),
                mechanism: "rlimit".into(),
                note: None,
            })
            .map_err(|e| format!("stack: {e}")),
    );
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

/// A number in a `/proc/sys` file.
fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// inotify instances and watches are counted per user at every level of
/// user namespaces up to the host's, whose limits the user's desktop lives
/// within (128 instances by default): a task could take them all, and file
/// managers, editors and indexers would stop seeing changes. The sandbox's
/// own namespace gets a share of the host's limits, which the kernel then
/// enforces. Run by PID 1 while it holds its capabilities there; failures
/// show in [`inotify_enforced`].
pub fn limit_inotify() {
    let pairs = [
        (
            "/proc/sys/fs/inotify/max_user_instances",
            "/proc/sys/user/max_inotify_instances",
            4,
        ),
        (
            "/proc/sys/fs/inotify/max_user_watches",
            "/proc/sys/user/max_inotify_watches",
            2,
        ),
    ];
    for (host, ours, share) in pairs {
        if let Some(v) = read_number(host) {
            let _ = std::fs::write(ours, (v / share).max(8).to_string());
        }
    }
}

/// What bounds the task's inotify use, read back from its namespace.
pub fn inotify_enforced() -> Enforced {
    let inst = read_number("/proc/sys/user/max_inotify_instances");
    let watches = read_number("/proc/sys/user/max_inotify_watches");
    match (inst, watches) {
        (Some(i), Some(w)) if i < i32::MAX as u64 && w < i32::MAX as u64 => Enforced {
            what: "inotify".into(),
            value: format!("{i} instances, {w} watches"),
            mechanism: "kernel".into(),
            note: None,
        },
        _ => Enforced {
            what: "inotify".into(),
            value: "shared".into(),
            mechanism: "not-enforced".into(),
            note: Some("the task may use up your user's inotify instances and watches: other programs could stop seeing file changes until it ends".into()),
        },
    }
}
