//! Whole-task limits in a cgroup of the task's own: a transient systemd
//! scope through the user manager when one answers on the session bus,
//! otherwise a cgroup v2 folder below our own when that folder is ours
//! (delegated to us). The helper is placed there before it creates the
//! sandbox, so every process of the task is in it from the start.
//!
//! Nothing is taken on trust: after placement each controller file (`pids.max`,
//! `memory.max`, `cpu.max`) is read back from the cgroup file system, and
//! only the limits found there are reported as enforced by the cgroup. The
//! rlimits the agent carries stay as a second layer either way.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::event::Enforced;
use crate::policy::{format_size, Limits};

/// How long the user manager may take to answer and to move the helper.
const SCOPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The cgroup v2 period `cpu.max` quotas refer to (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The task's cgroup, once the helper is in it.
#[derive(Debug)]
pub struct TaskCgroup {
    /// Absolute path in the cgroup file system.
    pub dir: PathBuf,
    /// `systemd-scope` or `cgroup-v2`.
    pub mechanism: &'static str,
    /// The scope's unit name, or the folder's path below the mount.
    pub name: String,
    /// We made the folder (not systemd): we remove it at the end.
    made_here: bool,
}

impl TaskCgroup {
    /// A folder we made (and must remove), not a systemd scope.
    pub fn made_here(&self) -> bool {
        self.made_here
    }

    /// The limits the task ran into, from the cgroup's event counters:
    /// (limit, what happened). Read before the cgroup goes.
    pub fn limits_hit(&self, l: &Limits) -> Vec<(String, String)> {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let mut hits = Vec::new();
        let killed = counter(&read("memory.events"), "oom_kill");
        if killed > 0 {
            hits.push((
                "memory".to_string(),
                crate::i18n::gettext_f(
                    "the kernel ended {n} processes of the task at its memory cap of {size}",
                    &[("n", &killed.to_string()), ("size", &format_size(l.memory))],
                ),
            ));
        }
        let refused = counter(&read("pids.events"), "max");
        if refused > 0 {
            hits.push((
                "pids".to_string(),
                crate::i18n::gettext_f(
                    "the task was refused a new process {n} times at its cap of {max}",
                    &[("n", &refused.to_string()), ("max", &l.pids.to_string())],
                ),
            ));
        }
        hits
    }

    /// Ends whatever is left in the cgroup and removes a folder we made.
    /// Call once the sandbox is gone.
    pub fn release(&self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        if !self.made_here {
            // systemd collects the scope once it is empty.
            return;
        }
        // The last process may still be leaving.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => return,
            }
        }
    }
}

/// Where the task went and what that enforces.
pub struct Placement {
    pub cgroup: Option<TaskCgroup>,
    /// One entry per limit the cgroup enforces, plus one `cgroup` entry that
    /// names it (or says why there is none and what that means).
    pub report: Vec<Enforced>,
}

/// Places process `pid` (the helper, before it makes the sandbox) in a
/// cgroup of task `task`'s own with `limits`.
pub fn place(pid: u32, task: &str, limits: &Limits) -> Placement {
    let Some(mount) = cgroup2_mount() else {
        return none(&crate::i18n::gettext(
            "this system has no cgroup v2 file system",
        ));
    };
    let scope_err = match start_scope(pid, task, limits, &mount) {
        Ok(cg) => return placed(cg, limits),
        Err(e) => e,
    };
    match make_folder(pid, task, limits, &mount) {
        Ok(cg) => placed(cg, limits),
        Err(folder_err) => none(&crate::i18n::gettext_f(
            "no systemd user manager made a scope ({scope}) and no cgroup v2 folder of ours could hold the task ({folder})",
            &[("scope", &scope_err), ("folder", &folder_err)],
        )),
    }
}

fn none(why: &str) -> Placement {
    Placement {
        cgroup: None,
        report: vec![Enforced {
            what: "cgroup".into(),
            value: "none".into(),
            mechanism: "not-enforced".into(),
            note: Some(crate::i18n::gettext_f(
                "{why}: memory and processes are limited per process (rlimits), CPU time not at all",
                &[("why", why)],
            )),
        }],
    }
}

/// Reads back each controller and reports what is really in force.
fn placed(cg: TaskCgroup, l: &Limits) -> Placement {
    let read = |f: &str| std::fs::read_to_string(cg.dir.join(f)).ok();
    let via = format!("{} {}", cg.mechanism, cg.name);
    let mut report = Vec::new();
    let mut missing = Vec::new();
    let mut enforced = |what: &str, value: String, ok: bool| {
        if ok {
            report.push(Enforced {
                what: what.into(),
                value,
                mechanism: "cgroup".into(),
                note: Some(via.clone()),
            });
        } else {
            missing.push(what.to_string());
        }
    };
    let pids = read("pids.max").is_some_and(|v| v.trim() == l.pids.to_string());
    enforced("pids", l.pids.to_string(), pids);
    // The kernel keeps whole pages.
    let memory = read("memory.max")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|v| v <= l.memory && l.memory - v < 4096 * 16);
    enforced("memory", format_size(l.memory), memory);
    let cpu = read("cpu.max").is_some_and(|v| !v.starts_with("max"));
    enforced("cpu", format!("{:.2} core", l.cpu), cpu);
    let note = (!missing.is_empty()).then(|| {
        crate::i18n::gettext_f(
            "no {controllers} controller in this cgroup: those limits stay per process (rlimits) or unenforced",
            &[("controllers", &missing.join(", "))],
        )
    });
    report.push(Enforced {
        what: "cgroup".into(),
        value: cg.name.clone(),
        mechanism: cg.mechanism.into(),
        note,
    });
    Placement {
        cgroup: Some(cg),
        report,
    }
}

/// The value of `key` in a flat-keyed cgroup file (`memory.events`).
pub(crate) fn counter(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// The cgroup2 mount, from our mount table.
fn cgroup2_mount() -> Option<Mount> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&info)
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
}

/// The folder of process `pid`'s cgroup (`0::PATH` in its cgroup file).
fn folder_of(pid: &str, mount: &Mount) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroup_folder(mount, &own_cgroup(&text)?)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// Parses `/proc/self/mountinfo` into (root, mount point, fs type).
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            Some(Mount {
                root: unescape(fields.get(3)?),
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: right.split(' ').next()?.to_owned(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0')))
            .and_then(|n| u8::try_from(n).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path from `/proc/self/cgroup` (the `0::/path` line).
pub(crate) fn own_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The folder of cgroup `path` under the cgroup2 mount, minding a mount
/// whose root is not the hierarchy's root.
pub(crate) fn cgroup_folder(mount: &Mount, path: &str) -> Option<PathBuf> {
    let rel = if mount.root == "/" {
        path
    } else {
        path.strip_prefix(mount.root.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))?
    };
    let rel = rel.trim_start_matches('/');
    // A path that leaves the mount ("/../x" under a cgroup namespace) is
    // not ours to use.
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.mount_point.clone()
    } else {
        mount.mount_point.join(rel)
    })
}

// ---- systemd scope -------------------------------------------------------

fn start_scope(pid: u32, task: &str, l: &Limits, mount: &Mount) -> Result<TaskCgroup, String> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
        && !std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).join("bus").exists())
    {
        return Err(crate::i18n::gettext("no session bus"));
    }
    let unit = format!("airlock-{task}.scope");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        tokio::time::timeout(SCOPE_TIMEOUT, ask_for_scope(pid, task, &unit, l))
            .await
            .map_err(|_| crate::i18n::gettext("the user manager did not answer in time"))?
            .map_err(|e| e.to_string())
    })?;
    // The job moves the helper; wait until it has.
    let deadline = Instant::now() + SCOPE_TIMEOUT;
    loop {
        if let Some(dir) = folder_of(&pid.to_string(), mount).filter(|d| d.ends_with(&unit)) {
            return Ok(TaskCgroup {
                dir,
                mechanism: "systemd-scope",
                name: unit,
                made_here: false,
            });
        }
        if Instant::now() > deadline {
            return Err(crate::i18n::gettext_f(
                "the user manager made {unit} but did not move the sandbox into it",
                &[("unit", &unit)],
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

async fn ask_for_scope(pid: u32, task: &str, unit: &str, l: &Limits) -> zbus::Result<()> {
    use zbus::zvariant::Value;
    let conn = zbus::Connection::session().await?;
    // Asking a bus without a user manager must not make it try to start one.
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let manager = zbus::names::BusName::try_from("org.freedesktop.systemd1")?;
    if !dbus.name_has_owner(manager).await? {
        return Err(zbus::Error::Failure(crate::i18n::gettext(
            "no systemd user manager on the session bus",
        )));
    }
    let props: Vec<(&str, Value)> = vec![
        ("Description", Value::from(format!("Airlock task {task}"))),
        ("PIDs", Value::from(vec![pid])),
        // Gone from systemd's tables as soon as it is empty, failed or not.
        ("CollectMode", Value::from("inactive-or-failed")),
        ("TasksMax", Value::from(l.pids)),
        ("MemoryMax", Value::from(l.memory)),
        // The memory cap is a cap on RAM and swap together.
        ("MemorySwapMax", Value::from(0u64)),
        (
            "CPUQuotaPerSecUSec",
            Value::from((l.cpu * 1_000_000.0) as u64),
        ),
    ];
    let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
    conn.call_method(
        Some("org.freedesktop.systemd1"),
        "/org/freedesktop/systemd1",
        Some("org.freedesktop.systemd1.Manager"),
        "StartTransientUnit",
        &(unit, "fail", props, aux),
    )
    .await?;
    Ok(())
}

// ---- a cgroup v2 folder of our own ---------------------------------------

fn make_folder(pid: u32, task: &str, l: &Limits, mount: &Mount) -> Result<TaskCgroup, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| own_cgroup(&t))
        .ok_or_else(|| crate::i18n::gettext("no cgroup v2 path"))?;
    let parent = cgroup_folder(mount, &own)
        .ok_or_else(|| crate::i18n::gettext("our cgroup is outside the cgroup v2 mount"))?;
    let euid = nix::unistd::geteuid().as_raw();
    let md = std::fs::metadata(&parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    // Only a folder delegated to us (ours), never one that is merely
    // writable to root.
    if md.uid() != euid || !writable(&parent.join("cgroup.procs")) {
        return Err(crate::i18n::gettext_f(
            "{path} is not delegated to us",
            &[("path", &parent.display().to_string())],
        ));
    }
    sweep(&parent);
    let name = format!("airlock-{task}");
    let dir = parent.join(&name);
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cg = TaskCgroup {
        dir: dir.clone(),
        mechanism: "cgroup-v2",
        name: format!("{}/{name}", own.trim_end_matches('/')),
        made_here: true,
    };
    // Controllers the parent has and passes down; fails (EBUSY) when the
    // parent holds processes itself, and then the folder only groups.
    let available = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    for c in ["pids", "memory", "cpu"] {
        if available.split_whitespace().any(|a| a == c) {
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
    let _ = std::fs::write(dir.join("pids.max"), l.pids.to_string());
    let _ = std::fs::write(dir.join("memory.max"), l.memory.to_string());
    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
    let quota = ((l.cpu * CPU_PERIOD_US as f64) as u64).max(1000);
    let _ = std::fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"));
    if let Err(e) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
        cg.release();
        return Err(format!("{}: {e}", dir.join("cgroup.procs").display()));
    }
    Ok(cg)
}

fn writable(p: &Path) -> bool {
    CString::new(p.as_os_str().as_bytes())
        // SAFETY: access on a NUL-terminated path we own.
        .is_ok_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0)
}

/// Removes the empty folders of earlier tasks whose supervisor was killed
/// before it could (rmdir fails on a cgroup that still holds anything).
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let ours = name
            .to_str()
            .and_then(|n| n.strip_prefix("airlock-"))
            .is_some_and(|id| crate::task::TaskId::parse(id).is_ok());
        if ours {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /media/my\\040disk rw - ext4 /dev/sdb1 rw
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_machine() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 4);
        let v2 = mounts.iter().find(|m| m.fstype == "cgroup2").unwrap();
        assert_eq!(v2.mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert!(mounts.iter().any(|m| m.fstype == "cgroup"));
        assert_eq!(mounts[3].mount_point, Path::new("/media/my disk"));
    }

    #[test]
    fn reads_event_counters() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 3\n";
        assert_eq!(counter(events, "oom_kill"), 3);
        assert_eq!(counter(events, "max"), 12);
        assert_eq!(counter(events, "oom_group_kill"), 0);
        assert_eq!(counter("", "max"), 0);
    }

    #[test]
    fn own_cgroup_is_the_v2_line() {
        let text = "4:memory:/x\n0::/user.slice/user-1000.slice/app.scope\n";
        assert_eq!(
            own_cgroup(text).as_deref(),
            Some("/user.slice/user-1000.slice/app.scope")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn cgroup_folder_joins_under_the_mount() {
        let root = Mount {
            root: "/".into(),
            mount_point: "/sys/fs/cgroup".into(),
            fstype: "cgroup2".into(),
        };
        assert_eq!(
            cgroup_folder(&root, "/user.slice/a.scope"),
            Some(PathBuf::from("/sys/fs/cgroup/user.slice/a.scope"))
        );
        assert_eq!(
            cgroup_folder(&root, "/"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup_folder(&root, "/../outside"), None);
        let sub = Mount {
            root: "/user.slice".into(),
            ..root
        };
        assert_eq!(
            cgroup_folder(&sub, "/user.slice/a.scope"),
            Some(PathBuf::from("/sys/fs/cgroup/a.scope"))
        );
        assert_eq!(cgroup_folder(&sub, "/system.slice/b"), None);
        assert_eq!(cgroup_folder(&sub, "/user.slicex/b"), None);
    }
}
