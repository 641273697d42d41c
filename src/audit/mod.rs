//! The audit store: every task, state change, event, network flow and commit
//! in one SQLite database at `$XDG_DATA_HOME/airlock/audit.db`
//! ([`default_path`]).
//!
//! - Tables: `tasks`, `transitions`, `events`, `flows`, `commits`; the
//!   schema is a list of migrations ([`SCHEMA_VERSION`]).
//! - Denials (`syscall_denied`, `file_attempt`, `net_attempt`) are coalesced:
//!   one row per (task, type, syscall/path/address, detail) whose `count`,
//!   `first_ms` and `last_ms` grow with repeats, so an agent that loops on a
//!   forbidden call cannot grow the database.
//! - [`AuditStore::export_jsonl`] writes JSON lines for a SIEM. Each line is
//!   one object with a `record` field:
//!   - `"task"`: `v`, `task`, `created_ms`, `updated_ms`, `argv`, `policy`,
//!     `requested_by`, `state`, `exit_code`, `exit_signal`, `changed_files`,
//!     `denial_count`;
//!   - `"event"`: the fields of [`crate::event::Event`] (`v`, `task`, `seq`,
//!     `time_ms`, `type`, and the fields of that type); a `committed` event
//!     adds `file_list` (`[{path, decision}]`) and `undone_ms`.
//!
//!   Characters a terminal would interpret (C1 controls, DEL, bidi
//!   overrides) are written as `\uXXXX` escapes, so the output stays valid
//!   JSON and is safe to `cat`.

mod migrations;

pub use migrations::SCHEMA_VERSION;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, ExitStatus, EVENT_VERSION};
use crate::i18n::{gettext, gettext_f};
use crate::task::{TaskId, TaskManifest, TaskState};
use crate::Error;

/// How long a writer waits for another connection's transaction before it
/// gives up. Transactions are short (one batch), so this is generous.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The live tasks. The states are written out, not bound, so that SQLite
/// can see the query is covered by the partial index `tasks_live`
/// (migration 3); a test checks both the plan and the state names.
const LIVE_TASKS: &str = "SELECT id FROM tasks WHERE state IN ('queued', 'starting', 'running') \
     ORDER BY created_ms, id";

/// `$XDG_DATA_HOME/airlock/audit.db`.
pub fn default_path() -> PathBuf {
    crate::dirs::data_dir().join("audit.db")
}

/// Which tasks or events to read. Empty means everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this task.
    pub task: Option<TaskId>,
    /// Only events at or after this time (ms since the epoch); for tasks,
    /// only tasks active (updated) at or after it.
    pub since_ms: Option<u64>,
}

/// One row of `tasks`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub created_ms: u64,
    pub argv: Vec<String>,
    /// Kept as JSON so that rows written by older versions stay readable
    /// when the policy format grows.
    pub policy: serde_json::Value,
    pub requested_by: String,
    pub state: TaskState,
    pub exit: Option<ExitStatus>,
    pub changed_files: Option<u64>,
    /// Sum of the counts of denied syscalls, file and network attempts.
    pub denial_count: u64,
    pub updated_ms: u64,
}

/// One file of a commit and what the user decided about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitFile {
    pub path: String,
    /// `approved`, `partly_approved`, `rejected`, `conflict`, …
    pub decision: String,
}

/// One row of `commits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitRecord {
    pub task: TaskId,
    /// `seq` of the task's `committed` event.
    pub seq: u64,
    pub time_ms: u64,
    pub files: Vec<CommitFile>,
    pub file_count: u64,
    pub conflict_count: u64,
    pub outcome: String,
    pub undone_ms: Option<u64>,
}

/// A connection to the audit database. Writes take `&mut self`; a second
/// writer (another thread or process) opens its own store on the same file.
pub struct AuditStore {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for AuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStore")
            .field("path", &self.path)
            .finish()
    }
}

impl AuditStore {
    /// Opens (or creates) the database at `path` and brings its schema up to
    /// date. The parent folder is created private (0700) if missing.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::dirs::create_private_dir(dir)?;
        }
        let err = |e| db_error(path, e);
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // Switching a new database to WAL takes it whole; SQLite answers
        // "locked" at once, without the busy handler, to all but one of
        // several first openers. They wait their turn here instead.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let mode: String = loop {
            match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)) {
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if matches!(
                        f.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(2));
                }
                r => break r.map_err(err)?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            // Some file systems (network mounts) cannot share WAL memory;
            // the store still works, only readers and writers serialise.
            tracing::warn!(path = %path.display(), mode, "audit database not in WAL mode");
        }
        // In WAL mode NORMAL syncs only at checkpoints: a crash or kill of
        // the app loses nothing that was committed, a power cut may lose the
        // last transactions but never corrupts the file. FULL would fsync on
        // every batch, which costs more than the whole insert.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        // The first connection to open the database rebuilds SQLite's index
        // of the write-ahead log by reading every frame written since the
        // last checkpoint. Checkpointing every 128 pages (512 KiB) instead of
        // 1000 keeps that read short for every `airlock run`.
        conn.pragma_update(None, "wal_autocheckpoint", 128)
            .map_err(err)?;
        migrate(&mut conn, path)?;
        Ok(AuditStore {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Where this database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `PRAGMA user_version` of the open database.
    pub fn schema_version(&self) -> Result<u32, Error> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        db_error(&self.path, e)
    }

    fn begin(&mut self) -> Result<rusqlite::Transaction<'_>, Error> {
        // IMMEDIATE takes the write lock up front: a deferred transaction
        // that reads first and then writes can fail with SQLITE_BUSY at once
        // when another connection wrote meanwhile, without waiting.
        let path = self.path.clone();
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_error(&path, e))
    }

    /// Records a new task (state `queued`). Recording the same task again
    /// updates what was asked and keeps its state and history.
    pub fn record_task(&mut self, m: &TaskManifest) -> Result<(), Error> {
        let argv = to_json(&self.path, &m.argv)?;
        let policy = to_json(&self.path, &m.policy)?;
        let path = self.path.clone();
        let err = |e| db_error(&path, e);
        let tx = self.begin()?;
        tx.execute(
            "INSERT INTO tasks (id, created_ms, argv, policy, requested_by, state, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?2)
             ON CONFLICT (id) DO UPDATE SET
                 argv = excluded.argv, policy = excluded.policy,
                 requested_by = excluded.requested_by",
            params![
                m.id.as_str(),
                sql_u64(m.created_ms),
                argv,
                policy,
                m.requested_by,
                TaskState::Queued.as_str()
            ],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Records one event; see [`AuditStore::record_events`].
    pub fn record_event(&mut self, event: &Event) -> Result<(), Error> {
        self.record_events(std::slice::from_ref(event))
    }

    /// Records events in one transaction (all or none), each into its table:
    /// transitions also set the task's state, `exited` its exit status,
    /// denials are coalesced and added to the task's denial count, flows and
    /// commits go to their own tables. Every event's task must have been
    /// recorded with [`AuditStore::record_task`].
    pub fn record_events(&mut self, events: &[Event]) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |e| db_error(&path, e);
        let tx = self.begin()?;
        let mut known: HashSet<&TaskId> = HashSet::new();
        // Per task: denials to add and the latest event time, applied once
        // per batch rather than once per event.
        let mut touched: HashMap<&TaskId, (u64, u64)> = HashMap::new();
        for e in events {
            if !known.contains(&e.task) {
                let exists = tx
                    .prepare_cached("SELECT 1 FROM tasks WHERE id = ?1")
                    .and_then(|mut s| s.exists([e.task.as_str()]))
                    .map_err(err)?;
                if !exists {
                    return Err(Error::Audit {
                        path: path.clone(),
                        message: gettext_f(
                            "an event names task {task}, which was never recorded; record the task before its events",
                            &[("task", e.task.as_str())],
                        ),
                    });
                }
                known.insert(&e.task);
            }
            let denials = write_event(&tx, &path, e)?;
            let t = touched.entry(&e.task).or_insert((0, 0));
            t.0 = t.0.saturating_add(denials);
            t.1 = t.1.max(e.time_ms);
        }
        for (task, (denials, time)) in touched {
            tx.prepare_cached(
                "UPDATE tasks SET denial_count = denial_count + ?1,
                     updated_ms = max(updated_ms, ?2) WHERE id = ?3",
            )
            .and_then(|mut s| s.execute(params![sql_u64(denials), sql_u64(time), task.as_str()]))
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Attaches the per-file decisions to the commit whose `committed` event
    /// has sequence number `seq` (before or after that event is recorded).
    pub fn record_commit_files(
        &mut self,
        task: &TaskId,
        seq: u64,
        files: &[CommitFile],
    ) -> Result<(), Error> {
        let json = to_json(&self.path, files)?;
        let path = self.path.clone();
        let err = |e| db_error(&path, e);
        let tx = self.begin()?;
        tx.execute(
            "INSERT INTO commits (task, seq, time_ms, files) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (task, seq) DO UPDATE SET files = excluded.files",
            params![
                task.as_str(),
                sql_u64(seq),
                sql_u64(crate::event::now_ms()),
                json
            ],
        )
        .map_err(|e| fk_error(&path, e, task))?;
        tx.commit().map_err(err)
    }

    /// Marks a commit as undone at `time_ms`.
    pub fn mark_commit_undone(
        &mut self,
        task: &TaskId,
        seq: u64,
        time_ms: u64,
    ) -> Result<(), Error> {
        let n = self
            .conn
            .execute(
                "UPDATE commits SET undone_ms = ?1 WHERE task = ?2 AND seq = ?3",
                params![sql_u64(time_ms), task.as_str(), sql_u64(seq)],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(Error::Audit {
                path: self.path.clone(),
                message: gettext_f(
                    "task {task} has no recorded commit {seq}",
                    &[("task", task.as_str()), ("seq", &seq.to_string())],
                ),
            });
        }
        Ok(())
    }

    /// The tasks recorded as queued, starting or running.
    pub fn live_task_ids(&self) -> Result<Vec<TaskId>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached(LIVE_TASKS)
            .map_err(|e| self.err(e))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        ids.iter().map(|id| TaskId::parse(id)).collect()
    }

    pub fn tasks(&self, filter: &Filter) -> Result<Vec<TaskRecord>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, created_ms, argv, policy, requested_by, state, exit_code,
                        exit_signal, changed_files, denial_count, updated_ms
                 FROM tasks WHERE (?1 IS NULL OR id = ?1) AND updated_ms >= ?2
                 ORDER BY created_ms, id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![
                    filter.task.as_ref().map(|t| t.as_str()),
                    sql_u64(filter.since_ms.unwrap_or(0))
                ],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, Option<i32>>(6)?,
                        r.get::<_, Option<i32>>(7)?,
                        r.get::<_, Option<i64>>(8)?,
                        r.get::<_, i64>(9)?,
                        r.get::<_, i64>(10)?,
                    ))
                },
            )
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, created, argv, policy, by, state, code, signal, changed, denials, updated) =
                row.map_err(|e| self.err(e))?;
            out.push(TaskRecord {
                id: TaskId::parse(&id)?,
                created_ms: created.max(0) as u64,
                argv: from_json(&self.path, &argv)?,
                policy: from_json(&self.path, &policy)?,
                requested_by: by,
                state: parse_state(&self.path, &state)?,
                exit: code.map(|code| ExitStatus { code, signal }),
                changed_files: changed.map(|c| c.max(0) as u64),
                denial_count: denials.max(0) as u64,
                updated_ms: updated.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// The timeline of one task (or of all tasks) since a time, oldest
    /// first: events, transitions, flows and commits as [`Event`]s, with
    /// coalesced denials carrying their total count and last time.
    pub fn events(
        &self,
        task: Option<&TaskId>,
        since_ms: Option<u64>,
    ) -> Result<Vec<Event>, Error> {
        let filter = Filter {
            task: task.cloned(),
            since_ms,
        };
        let mut out = Vec::new();
        self.visit_timeline(&filter, |event, _| {
            out.push(event);
            Ok(())
        })?;
        Ok(out)
    }

    /// The next free sequence number of a task: one past the highest any
    /// of its rows holds (a coalesced row stands for `count` of them).
    /// Asked of the indexes, not by loading the timeline, which a task
    /// that flooded the log makes gigabytes long.
    pub fn next_seq(&self, task: &TaskId) -> Result<u64, Error> {
        let max: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT max(m) FROM (
                     SELECT max(seq + count - 1) AS m FROM events WHERE task = ?1
                     UNION ALL SELECT max(seq) FROM transitions WHERE task = ?1
                     UNION ALL SELECT max(seq) FROM flows WHERE task = ?1
                     UNION ALL SELECT max(seq) FROM commits WHERE task = ?1)",
            )
            .and_then(|mut st| st.query_row([task.as_str()], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        Ok(max.map_or(0, |m| u64::try_from(m).unwrap_or(0) + 1))
    }

    /// Commits of one task, oldest first.
    pub fn commits(&self, task: &TaskId) -> Result<Vec<CommitRecord>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, time_ms, files, file_count, conflict_count, outcome, undone_ms
                 FROM commits WHERE task = ?1 ORDER BY time_ms, seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([task.as_str()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, time, files, file_count, conflict_count, outcome, undone) =
                row.map_err(|e| self.err(e))?;
            out.push(CommitRecord {
                task: task.clone(),
                seq: seq.max(0) as u64,
                time_ms: time.max(0) as u64,
                files: from_json(&self.path, &files)?,
                file_count: file_count.max(0) as u64,
                conflict_count: conflict_count.max(0) as u64,
                outcome,
                undone_ms: undone.map(|u| u.max(0) as u64),
            });
        }
        Ok(out)
    }

    /// Calls `f` with each timeline entry matching `filter`, oldest first,
    /// and the commit details (`file_list`, `undone_ms`) of `committed`
    /// entries. Streams rows: memory does not grow with the database.
    fn visit_timeline(
        &self,
        filter: &Filter,
        mut f: impl FnMut(Event, Option<serde_json::Value>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT time_ms, seq,
                        CASE WHEN subject IS NULL THEN data
                             ELSE json_set(data, '$.count', count, '$.first_ms', first_ms,
                                           '$.last_ms', last_ms) END,
                        NULL
                   FROM events WHERE (?1 IS NULL OR task = ?1) AND last_ms >= ?2
                 UNION ALL
                 SELECT time_ms, seq,
                        json_object('v', ?3, 'task', task, 'seq', seq, 'time_ms', time_ms,
                                    'type', 'state_changed', 'from', from_state, 'to', to_state),
                        NULL
                   FROM transitions WHERE (?1 IS NULL OR task = ?1) AND time_ms >= ?2
                 UNION ALL
                 SELECT time_ms, seq,
                        json_object('v', ?3, 'task', task, 'seq', seq, 'time_ms', time_ms,
                                    'type', 'flow', 'host', host, 'port', port, 'address', address,
                                    'protocol', protocol, 'decision', decision, 'reason', reason,
                                    'bytes_out', bytes_out, 'bytes_in', bytes_in,
                                    'duration_ms', duration_ms),
                        NULL
                   FROM flows WHERE (?1 IS NULL OR task = ?1) AND time_ms >= ?2
                 UNION ALL
                 SELECT time_ms, seq,
                        json_object('v', ?3, 'task', task, 'seq', seq, 'time_ms', time_ms,
                                    'type', 'committed', 'files', file_count,
                                    'conflicts', conflict_count, 'outcome', outcome),
                        json_object('file_list', json(files), 'undone_ms', undone_ms)
                   FROM commits WHERE (?1 IS NULL OR task = ?1) AND time_ms >= ?2
                 ORDER BY 1, 2",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![
                filter.task.as_ref().map(|t| t.as_str()),
                sql_u64(filter.since_ms.unwrap_or(0)),
                EVENT_VERSION
            ])
            .map_err(|e| self.err(e))?;
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let json: String = row.get(2).map_err(|e| self.err(e))?;
            let extra: Option<String> = row.get(3).map_err(|e| self.err(e))?;
            let event: Event = from_json(&self.path, &json)?;
            let extra = extra.map(|x| from_json(&self.path, &x)).transpose()?;
            f(event, extra)?;
        }
        Ok(())
    }

    /// Writes the tasks and then the timeline matching `filter` as JSON
    /// lines (format in the module documentation). Returns the number of
    /// lines written.
    pub fn export_jsonl(&self, out: &mut dyn Write, filter: &Filter) -> Result<u64, Error> {
        let mut lines = 0u64;
        for t in self.tasks(filter)? {
            let line = serde_json::json!({
                "record": "task",
                "v": EVENT_VERSION,
                "task": t.id,
                "created_ms": t.created_ms,
                "updated_ms": t.updated_ms,
                "argv": t.argv,
                "policy": t.policy,
                "requested_by": t.requested_by,
                "state": t.state,
                "exit_code": t.exit.map(|e| e.code),
                "exit_signal": t.exit.and_then(|e| e.signal),
                "changed_files": t.changed_files,
                "denial_count": t.denial_count,
            });
            self.write_line(out, &line)?;
            lines += 1;
        }
        self.visit_timeline(filter, |event, extra| {
            let mut value = serde_json::to_value(&event).map_err(|e| self.json_error(e))?;
            if let serde_json::Value::Object(map) = &mut value {
                // `record` first makes lines easy to grep; order is cosmetic.
                let mut obj = serde_json::Map::new();
                obj.insert("record".into(), "event".into());
                obj.extend(std::mem::take(map));
                if let Some(serde_json::Value::Object(extra)) = extra {
                    obj.extend(extra);
                }
                value = serde_json::Value::Object(obj);
            }
            self.write_line(out, &value)?;
            lines += 1;
            Ok(())
        })?;
        out.flush().map_err(|e| self.write_error(e))?;
        Ok(lines)
    }

    fn write_line(&self, out: &mut dyn Write, value: &serde_json::Value) -> Result<(), Error> {
        let text = serde_json::to_string(value).map_err(|e| self.json_error(e))?;
        let mut safe = escape_json_for_terminal(&text);
        safe.push('\n');
        out.write_all(safe.as_bytes())
            .map_err(|e| self.write_error(e))
    }

    fn json_error(&self, e: serde_json::Error) -> Error {
        Error::Audit {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn write_error(&self, e: std::io::Error) -> Error {
        Error::Audit {
            path: self.path.clone(),
            message: gettext_f(
                "the export could not be written: {error}",
                &[("error", &e.to_string())],
            ),
        }
    }

    /// Deletes finished tasks not updated for `older_than`, with all their
    /// rows, and returns their ids so the caller removes their task folders
    /// in the same breath. Only tasks with nothing left to review go:
    /// committed, partly committed, rejected, failed, and exited or killed
    /// tasks that changed no file.
    pub fn prune(&mut self, older_than: Duration) -> Result<Vec<TaskId>, Error> {
        self.prune_where(older_than, &mut |_| true)
    }

    /// As [`AuditStore::prune`], asking `may(id)` first for each task (the
    /// supervisor takes the task's commit lock there, and keeps it until
    /// the folder is gone, so that a commit or undo running at that moment
    /// is never pruned from under it).
    pub fn prune_where(
        &mut self,
        older_than: Duration,
        may: &mut dyn FnMut(&TaskId) -> bool,
    ) -> Result<Vec<TaskId>, Error> {
        const PRUNABLE: &str = "updated_ms < ?1 AND (
                         state IN ('committed', 'partly_committed', 'rejected', 'failed')
                         OR (state IN ('exited', 'killed') AND coalesce(changed_files, 0) = 0))";
        let cutoff = crate::event::now_ms().saturating_sub(older_than.as_millis() as u64);
        let path = self.path.clone();
        let err = |e| db_error(&path, e);
        let tx = self.begin()?;
        let ids: Vec<String> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT id FROM tasks WHERE {PRUNABLE} ORDER BY created_ms"
                ))
                .map_err(err)?;
            let rows = stmt
                .query_map([sql_u64(cutoff)], |r| r.get(0))
                .map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)?
        };
        let mut pruned = Vec::with_capacity(ids.len());
        for id in ids {
            let id = TaskId::parse(&id)?;
            if !may(&id) {
                continue;
            }
            // Rows of the other tables go with it (ON DELETE CASCADE).
            tx.execute("DELETE FROM tasks WHERE id = ?1", [id.as_str()])
                .map_err(err)?;
            pruned.push(id);
        }
        tx.commit().map_err(err)?;
        Ok(pruned)
    }

    /// `PRAGMA integrity_check`: `Ok` when SQLite answers `ok`, otherwise an
    /// error listing what it found.
    pub fn integrity_check(&self) -> Result<(), Error> {
        let mut stmt = self
            .conn
            .prepare("PRAGMA integrity_check")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let found: Vec<String> = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        if found.len() == 1 && found[0] == "ok" {
            return Ok(());
        }
        Err(Error::Audit {
            path: self.path.clone(),
            message: gettext_f(
                "the database is damaged ({problems}); move the file away and Airlock starts a new one",
                &[("problems", &found.join("; "))],
            ),
        })
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], one step per transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let err = |e| db_error(path, e);
    let found: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    if found > SCHEMA_VERSION {
        return Err(Error::Audit {
            path: path.to_path_buf(),
            message: gettext_f(
                "it was written by a newer Airlock (schema {found}, this one knows {known}); update Airlock",
                &[("found", &found.to_string()), ("known", &SCHEMA_VERSION.to_string())],
            ),
        });
    }
    for (i, sql) in migrations::MIGRATIONS
        .iter()
        .enumerate()
        .skip(found as usize)
    {
        let target = i as u32 + 1;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        // Another process may have migrated while we waited for the lock.
        let now: u32 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if now >= target {
            continue;
        }
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", target)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::debug!(path = %path.display(), version = target, "audit schema migrated");
    }
    Ok(())
}

/// Writes one event into its table; returns how many denials it adds to the
/// task's count.
fn write_event(tx: &Connection, path: &Path, e: &Event) -> Result<u64, Error> {
    let err = |x| db_error(path, x);
    let task = e.task.as_str();
    let seq = sql_u64(e.seq);
    let time = sql_u64(e.time_ms);
    // (subject, detail, count, first, last, denials) of a coalesced event.
    let coalesce = match &e.kind {
        EventKind::StateChanged { from, to } => {
            tx.prepare_cached(
                "INSERT INTO transitions (task, seq, from_state, to_state, time_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    task,
                    seq,
                    from.map(|f| f.as_str()),
                    to.as_str(),
                    time
                ])
            })
            .map_err(err)?;
            tx.prepare_cached("UPDATE tasks SET state = ?1 WHERE id = ?2")
                .and_then(|mut s| s.execute(params![to.as_str(), task]))
                .map_err(err)?;
            return Ok(0);
        }
        EventKind::Flow {
            host,
            port,
            address,
            protocol,
            decision,
            reason,
            bytes_out,
            bytes_in,
            duration_ms,
        } => {
            tx.prepare_cached(
                "INSERT INTO flows (task, seq, time_ms, host, port, address, protocol, decision,
                                    reason, bytes_out, bytes_in, duration_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    task,
                    seq,
                    time,
                    host,
                    port,
                    address,
                    protocol,
                    decision,
                    reason,
                    sql_u64(*bytes_out),
                    sql_u64(*bytes_in),
                    sql_u64(*duration_ms)
                ])
            })
            .map_err(err)?;
            return Ok(0);
        }
        EventKind::Committed {
            files,
            conflicts,
            outcome,
        } => {
            tx.prepare_cached(
                "INSERT INTO commits (task, seq, time_ms, file_count, conflict_count, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (task, seq) DO UPDATE SET time_ms = excluded.time_ms,
                     file_count = excluded.file_count, conflict_count = excluded.conflict_count,
                     outcome = excluded.outcome",
            )
            .and_then(|mut s| {
                s.execute(params![
                    task,
                    seq,
                    time,
                    sql_u64(*files),
                    sql_u64(*conflicts),
                    outcome
                ])
            })
            .map_err(err)?;
            return Ok(0);
        }
        EventKind::Exited {
            status,
            changed_files,
        } => {
            tx.prepare_cached("UPDATE tasks SET exit_code = ?1, exit_signal = ?2, changed_files = ?3 WHERE id = ?4")
                .and_then(|mut s| s.execute(params![status.code, status.signal, sql_u64(*changed_files), task]))
                .map_err(err)?;
            None
        }
        EventKind::SyscallDenied {
            syscall,
            detail,
            count,
            first_ms,
            last_ms,
            ..
        } => Some((
            syscall.as_str(),
            detail.clone().unwrap_or_default(),
            *count,
            *first_ms,
            *last_ms,
            *count,
        )),
        EventKind::FileAttempt {
            op,
            path,
            denied,
            count,
            first_ms,
            last_ms,
            ..
        } => Some((
            path.as_str(),
            format!("{op} {}", if *denied { "denied" } else { "allowed" }),
            *count,
            *first_ms,
            *last_ms,
            if *denied { *count } else { 0 },
        )),
        EventKind::NetAttempt {
            syscall,
            address,
            count,
            first_ms,
            last_ms,
            ..
        } => Some((
            address.as_str(),
            syscall.clone(),
            *count,
            *first_ms,
            *last_ms,
            *count,
        )),
        _ => None,
    };
    let data = to_json(path, e)?;
    let (subject, detail, count, first, last, denials) = match coalesce {
        Some((s, d, c, f, l, n)) => (Some(s), d, c, f, l, n),
        None => (None, String::new(), 1, e.time_ms, e.time_ms, 0),
    };
    tx.prepare_cached(
        "INSERT INTO events (task, seq, time_ms, type, subject, detail, count, first_ms, last_ms, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (task, type, subject, detail) WHERE subject IS NOT NULL DO UPDATE SET
             count = count + excluded.count,
             first_ms = min(first_ms, excluded.first_ms),
             last_ms = max(last_ms, excluded.last_ms)",
    )
    .and_then(|mut s| {
        s.execute(params![
            task,
            seq,
            time,
            kind_name(&e.kind),
            subject,
            detail,
            sql_u64(count),
            sql_u64(first),
            sql_u64(last),
            data
        ])
    })
    .map_err(err)?;
    Ok(denials)
}

/// The `type` tag serde gives each kind (checked by a test).
pub fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::StateChanged { .. } => "state_changed",
        EventKind::Started { .. } => "started",
        EventKind::Enforcement { .. } => "enforcement",
        EventKind::SyscallDenied { .. } => "syscall_denied",
        EventKind::FileAttempt { .. } => "file_attempt",
        EventKind::NetAttempt { .. } => "net_attempt",
        EventKind::LimitHit { .. } => "limit_hit",
        EventKind::Flow { .. } => "flow",
        EventKind::DnsQuery { .. } => "dns_query",
        EventKind::ConsentRequested { .. } => "consent_requested",
        EventKind::ConsentAnswered { .. } => "consent_answered",
        EventKind::Exited { .. } => "exited",
        EventKind::Failed { .. } => "failed",
        EventKind::Warning { .. } => "warning",
        EventKind::Committed { .. } => "committed",
    }
}

/// SQLite integers are signed; times and counts never reach 2^63, and if
/// one did, saturating keeps ordering right.
fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn parse_state(path: &Path, s: &str) -> Result<TaskState, Error> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| Error::Audit {
        path: path.to_path_buf(),
        message: gettext_f(
            "unknown task state {state:?} in the database",
            &[("state", s)],
        ),
    })
}

fn to_json<T: Serialize + ?Sized>(path: &Path, v: &T) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|e| Error::Audit {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn from_json<T: serde::de::DeserializeOwned>(path: &Path, s: &str) -> Result<T, Error> {
    serde_json::from_str(s).map_err(|e| Error::Audit {
        path: path.to_path_buf(),
        message: gettext_f(
            "a stored record cannot be read: {error}",
            &[("error", &e.to_string())],
        ),
    })
}

/// A foreign-key failure means the task row is missing: say so by name.
fn fk_error(path: &Path, e: rusqlite::Error, task: &TaskId) -> Error {
    if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) {
        return Error::Audit {
            path: path.to_path_buf(),
            message: gettext_f(
                "task {task} was never recorded; record the task first",
                &[("task", task.as_str())],
            ),
        };
    }
    db_error(path, e)
}

fn db_error(path: &Path, e: rusqlite::Error) -> Error {
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => Some(gettext(
            "the file is damaged or not an Airlock database; move it away and Airlock starts a new one",
        )),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            Some(gettext("another program kept it locked for too long; try again"))
        }
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            Some(gettext("check that its folder exists and that you may write to it"))
        }
        Some(ErrorCode::DiskFull) => Some(gettext("the disk is full; free some space")),
        _ => None,
    };
    Error::Audit {
        path: path.to_path_buf(),
        message: match hint {
            Some(h) => format!("{e} ({h})"),
            None => e.to_string(),
        },
    }
}

/// Characters a terminal may act on or that reorder text: C0/C1 controls,
/// DEL, and the Unicode bidi controls (Trojan Source).
pub fn is_terminal_unsafe(c: char) -> bool {
    // Zero-width, tag and other invisible characters too (pass 20B): the
    // same set the review shows escaped.
    c.is_control() || crate::workspace::names::is_hidden_format(c)
}

/// serde_json leaves DEL, C1 controls and bidi controls raw; inside JSON
/// strings (the only place non-ASCII can occur) `\uXXXX` means the same.
pub fn escape_json_for_terminal(json: &str) -> String {
    // A raw newline is the layout of pretty-printed JSON: serde_json never
    // leaves one inside a string.
    let unsafe_here = |c: char| c != '\n' && is_terminal_unsafe(c);
    if !json.chars().any(unsafe_here) {
        return json.to_string();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if unsafe_here(c) {
            // Controls below U+0020 were already escaped by serde_json, and
            // none of these is outside the BMP.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_tasks_are_read_through_their_index() {
        for state in [TaskState::Queued, TaskState::Starting, TaskState::Running] {
            assert!(LIVE_TASKS.contains(&format!("'{}'", state.as_str())));
        }
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(&dir.path().join("audit.db")).unwrap();
        let plan: Vec<String> = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {LIVE_TASKS}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|s| s.contains("USING INDEX tasks_live")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|s| s.contains("TEMP B-TREE")), "{plan:?}");
    }

    #[test]
    fn kind_names_match_serde_tags() {
        let kinds = vec![
            EventKind::StateChanged {
                from: None,
                to: TaskState::Running,
            },
            EventKind::Started {
                argv: vec![],
                helper_pid: 1,
            },
            EventKind::Enforcement { layers: vec![] },
            EventKind::SyscallDenied {
                syscall: "ptrace".into(),
                detail: None,
                pid: 1,
                count: 1,
                first_ms: 0,
                last_ms: 0,
            },
            EventKind::FileAttempt {
                op: "open".into(),
                path: "/x".into(),
                denied: true,
                pid: 1,
                count: 1,
                first_ms: 0,
                last_ms: 0,
            },
            EventKind::NetAttempt {
                syscall: "connect".into(),
                address: "1.2.3.4:80".into(),
                pid: 1,
                count: 1,
                first_ms: 0,
                last_ms: 0,
            },
            EventKind::LimitHit {
                limit: "memory".into(),
                detail: String::new(),
            },
            EventKind::Flow {
                host: "h".into(),
                port: 1,
                address: None,
                protocol: "http".into(),
                decision: "allow".into(),
                reason: String::new(),
                bytes_out: 0,
                bytes_in: 0,
                duration_ms: 0,
            },
            EventKind::DnsQuery {
                name: "h".into(),
                answer: String::new(),
            },
            EventKind::ConsentRequested {
                id: 1,
                host: "h".into(),
                port: 1,
            },
            EventKind::ConsentAnswered {
                id: 1,
                answer: "deny".into(),
            },
            EventKind::Exited {
                status: ExitStatus {
                    code: 0,
                    signal: None,
                },
                changed_files: 0,
            },
            EventKind::Failed {
                error: String::new(),
            },
            EventKind::Warning {
                message: String::new(),
            },
            EventKind::Committed {
                files: 0,
                conflicts: 0,
                outcome: String::new(),
            },
        ];
        for kind in kinds {
            let v = serde_json::to_value(&kind).unwrap();
            assert_eq!(v["type"], kind_name(&kind), "{kind:?}");
        }
    }

    #[test]
    fn json_escape_keeps_json_valid_and_terminal_safe() {
        let s = "a\u{202E}b\u{7f}c\u{9b}d\u{1b}[31m";
        let json = serde_json::to_string(&s).unwrap();
        let safe = escape_json_for_terminal(&json);
        assert!(!safe.chars().any(is_terminal_unsafe), "{safe:?}");
        let back: String = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, s);
    }
}
