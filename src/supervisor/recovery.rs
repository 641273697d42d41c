//! What the supervisor does at start: retention, tasks whose supervisor
//! died (→ `Interrupted`, upper layer kept), interrupted commits (finished
//! or rolled back from their journal), and task folders the audit store
//! does not know (reported, never deleted).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{info_from_record, Shared};
use crate::audit::Filter;
use crate::event::{EventKind, ExitStatus};
use crate::i18n::gettext_f;
use crate::task::{TaskDir, TaskState};
use crate::workspace::{self as ws, RecoveryOutcome};
use crate::Error;

/// `owner.json` in a task folder: which process runs the task, so that a
/// second supervisor (the app, or `airlock run --local`) never declares
/// another one's live task interrupted. Start times guard against reused
/// pids.
#[derive(Debug, Serialize, Deserialize)]
struct Owner {
    pid: u32,
    start: u64,
    helper_pid: u32,
    helper_start: u64,
}

fn owner_path(dir: &TaskDir) -> std::path::PathBuf {
    dir.path().join("owner.json")
}

/// Field 22 of `/proc/PID/stat`: the process's start time in clock ticks;
/// `None` when there is no such process or only its zombie is left.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Records this process (and the helper, once there is one: `helper_pid`
/// 0 before) as the task's owner.
pub(crate) fn write_owner(dir: &TaskDir, helper_pid: u32) -> Result<(), Error> {
    let me = std::process::id();
    let helper_start = if helper_pid == 0 {
        0
    } else {
        start_time(helper_pid).unwrap_or(0)
    };
    let o = Owner {
        pid: me,
        start: start_time(me).unwrap_or(0),
        helper_pid,
        helper_start,
    };
    let data = serde_json::to_vec(&o).map_err(|e| Error::Invalid(e.to_string()))?;
    // Liveness only: after a power loss no owner is alive anyway.
    crate::dirs::write_replace(&owner_path(dir), &data)
}

/// Whether the process that ran the task (or its sandbox) still exists.
fn owner_alive(dir: &TaskDir) -> bool {
    let Ok(data) = std::fs::read(owner_path(dir)) else {
        return false;
    };
    let Ok(o) = serde_json::from_slice::<Owner>(&data) else {
        return false;
    };
    let alive = |pid: u32, start: u64| pid != 0 && start_time(pid).is_some_and(|s| s == start);
    alive(o.pid, o.start) || alive(o.helper_pid, o.helper_start)
}

/// Removes a task's layer or work folder, whatever the agent left there.
fn remove_tree(p: &Path) -> std::io::Result<()> {
    crate::workspace::fsx::remove_owned_tree(p)
}

pub(crate) fn remove_layers(dir: &TaskDir, layers: &[crate::task::RwLayer]) -> Result<(), Error> {
    for layer in layers {
        for p in [dir.upper(layer.index), dir.work(layer.index)] {
            remove_tree(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// Finishes or rolls back an interrupted commit, unless another process
/// holds the task's commit lock (its commit is still running).
fn recover_commit(shared: &Shared, dir: &TaskDir) {
    if !dir.path().join("commit.journal").exists() {
        return;
    }
    let id = dir
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match ws::recover(dir) {
        Ok(RecoveryOutcome::Clean | RecoveryOutcome::Busy) => {}
        Ok(RecoveryOutcome::RolledBack { seq, kept }) if kept.is_empty() => shared.warn(gettext_f(
            "task {id}: an interrupted commit ({seq}) was rolled back; your files are as they were before it",
            &[("id", &id), ("seq", &seq.to_string())],
        )),
        Ok(RecoveryOutcome::RolledBack { seq, kept }) => shared.warn(gettext_f(
            "task {id}: an interrupted commit ({seq}) was rolled back; what it had placed and was changed since is kept as: {paths}",
            &[
                ("id", &id),
                ("seq", &seq.to_string()),
                (
                    "paths",
                    &kept
                        .iter()
                        .map(|p| crate::workspace::names::escape_path(p))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            ],
        )),
        Ok(RecoveryOutcome::Completed { seq }) => shared.warn(gettext_f(
            "task {id}: an interrupted commit ({seq}) was completed",
            &[("id", &id), ("seq", &seq.to_string())],
        )),
        Err(e) => shared.warn(gettext_f(
            "task {id}: an interrupted commit could not be recovered: {error}",
            &[("id", &id), ("error", &e.to_string())],
        )),
    }
}

/// All of recovery: retention, every recorded task into the supervisor's
/// table (tasks whose supervisor died become interrupted, interrupted
/// commits are finished or rolled back), and task folders the audit log
/// does not know are reported.
pub(crate) fn recover(shared: &Shared) -> Result<(), Error> {
    retention(shared)?;
    let records = shared.with_reader(|r| r.tasks(&Filter::default()))?;
    let mut known = HashSet::new();
    for r in &records {
        known.insert(r.id.as_str().to_string());
        recover_task(shared, r);
    }
    let tasks_dir = &shared.config.tasks_dir;
    let entries = match std::fs::read_dir(tasks_dir) {
        Ok(rd) => rd.flatten().collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(tasks_dir, e)),
    };
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if !known.contains(&name) {
            shared.warn(gettext_f(
                "the task folder {path} has no record in the audit log; it was left as it is (look at it, then delete it yourself if you do not need it)",
                &[("path", &e.path().display().to_string())],
            ));
        }
    }
    Ok(())
}

/// Recovery of the tasks recorded as live only (and retention): its cost
/// follows the number of live tasks, not of all tasks ever run (see
/// `Supervisor::start_quick`).
pub(crate) fn recover_live(shared: &Shared) -> Result<(), Error> {
    retention(shared)?;
    let records = shared.with_reader(|reader| {
        let mut records = Vec::new();
        for id in reader.live_task_ids()? {
            records.extend(reader.tasks(&Filter {
                task: Some(id),
                since_ms: None,
            })?);
        }
        Ok(records)
    })?;
    for r in &records {
        recover_task(shared, r);
    }
    Ok(())
}

/// One recorded task into the supervisor's table: interrupted if it was
/// live and its supervisor is gone, its commit recovered if it was not.
fn recover_task(shared: &Shared, r: &crate::audit::TaskRecord) {
    shared.insert(info_from_record(r), None);
    let dir = TaskDir::new(&shared.config.tasks_dir, &r.id);
    if !r.state.is_finished_running() {
        if !owner_alive(&dir) {
            interrupt(shared, &dir, r.state);
        }
    } else {
        recover_commit(shared, &dir);
    }
}

/// Tasks older than the retention period leave the audit log, and their
/// folders go (a query, and folder removal only when there is something to
/// remove: cheap enough for every `airlock run`).
fn retention(shared: &Shared) -> Result<(), Error> {
    if shared.config.retention_days == 0 {
        return Ok(());
    }
    let age = Duration::from_secs(shared.config.retention_days * 86_400);
    let cutoff = std::time::SystemTime::now()
        .checked_sub(age)
        .unwrap_or(std::time::UNIX_EPOCH);
    let tasks_dir = &shared.config.tasks_dir;
    // Held until the folders are gone: a commit or undo that starts now
    // waits for nothing, it finds the task gone.
    let mut locks = Vec::new();
    let pruned = shared.with_reader(|r| {
        r.prune_where(age, &mut |id| {
            let dir = TaskDir::new(tasks_dir, id);
            // A commit or undo of it is running, or has just run (its
            // record in the log may not be written yet): not now.
            let recent = ["commits", ""].iter().any(|p| {
                std::fs::metadata(dir.path().join(p))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t > cutoff)
            });
            if recent {
                return false;
            }
            match crate::workspace::commit::lock(dir.path()) {
                Ok(l) => {
                    locks.push(l);
                    true
                }
                Err(_) => !dir.path().exists(),
            }
        })
    })?;
    if !pruned.is_empty() {
        tracing::info!(
            "pruned {} tasks older than {} days",
            pruned.len(),
            shared.config.retention_days
        );
    }
    for id in &pruned {
        let p = TaskDir::new(tasks_dir, id);
        if let Err(e) = remove_tree(p.path()) {
            shared.warn(gettext_f(
                "the folder of pruned task {id} could not be removed: {error}",
                &[
                    ("id", id.as_str()),
                    ("error", &Error::io(p.path(), e).to_string()),
                ],
            ));
        }
    }
    drop(locks);
    Ok(())
}

/// A task whose supervisor died: the sandbox died with it (parent-death
/// signal), its upper layer stays for review.
fn interrupt(shared: &Shared, dir: &TaskDir, was: TaskState) {
    let id = match dir
        .path()
        .file_name()
        .and_then(|n| crate::task::TaskId::parse(&n.to_string_lossy()).ok())
    {
        Some(id) => id,
        None => return,
    };
    let changed = dir
        .read_manifest()
        .map(|m| super::runner::changed_files(dir, &m.rw_layers))
        .unwrap_or(0);
    if was != TaskState::Queued && dir.path().exists() && !dir.path().join("exit.json").exists() {
        // The helper was killed by its parent-death signal (SIGKILL).
        let exit = ExitStatus {
            code: 128 + libc::SIGKILL,
            signal: Some(libc::SIGKILL),
        };
        if let Ok(data) = serde_json::to_vec(&exit) {
            if let Err(e) = crate::dirs::write_atomic(&dir.path().join("exit.json"), &data) {
                shared.warn(e.to_string());
            }
        }
    }
    let message = gettext_f(
        "task {id} was {state} when Airlock stopped; it is marked interrupted and its {n} changed files are kept for review",
        &[("id", id.as_str()), ("state", was.as_str()), ("n", &changed.to_string())],
    );
    shared.emit(
        &id,
        EventKind::Warning {
            message: message.clone(),
        },
    );
    shared.transition(&id, TaskState::Interrupted);
    shared.set_changed_files(&id, changed);
    shared.warn(message);
}

/// A task that never ended because the process running it was killed
/// (`kill -9` of `airlock run`) is marked interrupted now, as the next
/// supervisor start would do, so that its changes can be reviewed at once.
/// `true` when it was.
pub fn recover_orphan(dir: &TaskDir) -> Result<bool, Error> {
    if dir.path().join("exit.json").exists() || owner_alive(dir) {
        return Ok(false);
    }
    // A quick start recovers every live task whose owner is gone; waiting
    // for its audit writer waits for that recovery too.
    let sup = super::Supervisor::start_quick(super::Config::new()?)?;
    sup.flush_audit_blocking();
    let exit = dir.path().join("exit.json");
    if !exit.exists() && dir.manifest().exists() && !owner_alive(dir) {
        // Recorded as ended, yet without exit.json (the disk was full when
        // the task ended): neither its supervisor nor its sandbox is
        // alive, so it has ended, whatever the audit log says. Said here,
        // or it could never be reviewed or rejected.
        let status = ExitStatus {
            code: 128 + libc::SIGKILL,
            signal: Some(libc::SIGKILL),
        };
        // Best effort: with the disk still full this fails, and
        // `has_ended` says the same without the file.
        if let Ok(data) = serde_json::to_vec(&status) {
            let _ = crate::dirs::write_atomic(&exit, &data);
        }
        return Ok(true);
    }
    Ok(exit.exists())
}

/// Whether no process of the task can be alive: it wrote `exit.json`, or
/// neither its supervisor nor its sandbox helper is (the file could not be
/// written on a full disk). A task that never started has ended too.
pub fn has_ended(dir: &TaskDir) -> bool {
    dir.path().join("exit.json").exists() || !owner_alive(dir)
}

/// Left in a task folder by [`kill_local`].
pub(crate) const KILL_MARKER: &str = "kill.requested";

/// Kills the sandbox of a task run by another process (`airlock run
/// --local`) through its owner file; `false` if it is not running.
pub fn kill_local(dir: &TaskDir) -> Result<bool, Error> {
    let p = owner_path(dir);
    let data = match std::fs::read(&p) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(&p, e)),
    };
    let o: Owner = serde_json::from_slice(&data).map_err(|e| Error::Manifest {
        path: p.clone(),
        message: e.to_string(),
    })?;
    if dir.path().join("exit.json").exists()
        || o.helper_pid == 0
        || start_time(o.helper_pid) != Some(o.helper_start)
    {
        return Ok(false);
    }
    // Tells the owning supervisor that the end was a kill, not the agent's.
    let marker = dir.path().join(KILL_MARKER);
    std::fs::write(&marker, b"").map_err(|e| Error::io(&marker, e))?;
    // SAFETY: the pid and its start time match the task's helper; PID 1
    // and the whole sandbox follow it.
    if unsafe { libc::kill(o.helper_pid as i32, libc::SIGKILL) } != 0 {
        return Err(Error::io(&p, std::io::Error::last_os_error()));
    }
    Ok(true)
}
