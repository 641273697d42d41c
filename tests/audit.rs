//! The audit store against real SQLite files: dispatch into tables,
//! coalescing, migrations from an old schema, concurrent writers, export,
//! retention, and a writer killed with SIGKILL.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock::audit::{AuditStore, CommitFile, Filter, SCHEMA_VERSION};
use airlock::event::{now_ms, Event, EventKind, ExitStatus, EVENT_VERSION};
use airlock::policy::Policy;
use airlock::task::{TaskId, TaskManifest, TaskState};
use rusqlite::Connection;

fn id(s: &str) -> TaskId {
    TaskId::parse(s).unwrap()
}

fn manifest(task: &str, created_ms: u64) -> TaskManifest {
    TaskManifest {
        id: id(task),
        argv: vec!["agent".into(), "--fix".into(), "bug 12".into()],
        policy: Policy::default(),
        rw_layers: vec![],
        created_ms,
        requested_by: "cli".into(),
    }
}

fn ev(task: &str, seq: u64, time_ms: u64, kind: EventKind) -> Event {
    Event {
        v: EVENT_VERSION,
        task: id(task),
        seq,
        time_ms,
        kind,
    }
}

fn denied(syscall: &str, detail: Option<&str>, time: u64) -> EventKind {
    EventKind::SyscallDenied {
        syscall: syscall.into(),
        detail: detail.map(Into::into),
        pid: 7,
        count: 1,
        first_ms: time,
        last_ms: time,
    }
}

fn transition(from: Option<TaskState>, to: TaskState) -> EventKind {
    EventKind::StateChanged { from, to }
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn events_go_to_their_tables_and_update_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sub/audit.db");
    let mut store = AuditStore::open(&db).unwrap();
    let t = "20261127-021500-1a2b";
    store.record_task(&manifest(t, 1_000)).unwrap();
    let events = vec![
        ev(
            t,
            0,
            1_001,
            transition(Some(TaskState::Queued), TaskState::Starting),
        ),
        ev(
            t,
            1,
            1_002,
            transition(Some(TaskState::Starting), TaskState::Running),
        ),
        ev(
            t,
            2,
            1_003,
            EventKind::Started {
                argv: vec!["agent".into()],
                helper_pid: 42,
            },
        ),
        ev(t, 3, 1_004, denied("ptrace", None, 1_004)),
        ev(t, 4, 1_005, denied("ptrace", None, 1_005)),
        ev(t, 5, 1_006, denied("ioctl", Some("TIOCSTI"), 1_006)),
        ev(
            t,
            6,
            1_007,
            EventKind::FileAttempt {
                op: "open".into(),
                path: "/home/u/.ssh/id_ed25519".into(),
                denied: true,
                pid: 8,
                count: 3,
                first_ms: 1_007,
                last_ms: 1_010,
            },
        ),
        ev(
            t,
            7,
            1_011,
            EventKind::Flow {
                host: "api.example.com".into(),
                port: 443,
                address: Some("192.0.2.1".into()),
                protocol: "connect".into(),
                decision: "allow".into(),
                reason: "allow-list".into(),
                bytes_out: 100,
                bytes_in: 2_000,
                duration_ms: 30,
            },
        ),
        ev(
            t,
            8,
            1_012,
            EventKind::Exited {
                status: ExitStatus {
                    code: 3,
                    signal: None,
                },
                changed_files: 2,
            },
        ),
        ev(
            t,
            9,
            1_013,
            transition(Some(TaskState::Running), TaskState::Exited),
        ),
        ev(
            t,
            10,
            1_020,
            EventKind::Committed {
                files: 2,
                conflicts: 1,
                outcome: "partly_committed".into(),
            },
        ),
        ev(
            t,
            11,
            1_021,
            transition(Some(TaskState::Reviewing), TaskState::PartlyCommitted),
        ),
    ];
    store.record_events(&events).unwrap();

    let tasks = store.tasks(&Filter::default()).unwrap();
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert_eq!(task.id, id(t));
    assert_eq!(task.argv, vec!["agent", "--fix", "bug 12"]);
    assert_eq!(task.requested_by, "cli");
    assert_eq!(task.state, TaskState::PartlyCommitted);
    assert_eq!(
        task.exit,
        Some(ExitStatus {
            code: 3,
            signal: None
        })
    );
    assert_eq!(task.changed_files, Some(2));
    // 2 ptrace + 1 ioctl + 3 file attempts.
    assert_eq!(task.denial_count, 6);
    assert_eq!(task.updated_ms, 1_021);
    let policy: Policy = serde_json::from_value(task.policy.clone()).unwrap();
    assert_eq!(policy, Policy::default());

    assert_eq!(count(&db, "SELECT count(*) FROM transitions"), 4);
    assert_eq!(count(&db, "SELECT count(*) FROM flows"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM commits"), 1);
    // started, ptrace (coalesced), ioctl, file attempt, exited.
    assert_eq!(count(&db, "SELECT count(*) FROM events"), 5);

    let timeline = store.events(Some(&id(t)), None).unwrap();
    assert_eq!(timeline.len(), 11, "{timeline:#?}");
    let seqs: Vec<u64> = timeline.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11]);
    // Everything but the coalesced ptrace comes back exactly as recorded.
    for e in &timeline {
        if e.seq != 3 {
            let original = events.iter().find(|o| o.seq == e.seq).unwrap();
            assert_eq!(e, original);
        }
    }
    match &timeline[3].kind {
        EventKind::SyscallDenied {
            syscall,
            count,
            first_ms,
            last_ms,
            ..
        } => {
            assert_eq!(syscall, "ptrace");
            assert_eq!((*count, *first_ms, *last_ms), (2, 1_004, 1_005));
        }
        other => panic!("expected the coalesced ptrace denial, got {other:?}"),
    }

    // `since` keeps entries at or after the time; a coalesced denial counts
    // by its last occurrence.
    let late = store.events(None, Some(1_005)).unwrap();
    assert_eq!(late.first().map(|e| e.seq), Some(3));
    assert_eq!(late.len(), 8);

    store
        .record_commit_files(
            &id(t),
            10,
            &[
                CommitFile {
                    path: "src/main.rs".into(),
                    decision: "approved".into(),
                },
                CommitFile {
                    path: "README".into(),
                    decision: "conflict".into(),
                },
            ],
        )
        .unwrap();
    store.mark_commit_undone(&id(t), 10, 2_000).unwrap();
    let commits = store.commits(&id(t)).unwrap();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].files.len(), 2);
    assert_eq!(commits[0].file_count, 2);
    assert_eq!(commits[0].conflict_count, 1);
    assert_eq!(commits[0].outcome, "partly_committed");
    assert_eq!(commits[0].undone_ms, Some(2_000));
    assert!(store.mark_commit_undone(&id(t), 99, 2_000).is_err());

    // Recording the manifest again keeps state and history.
    store.record_task(&manifest(t, 1_000)).unwrap();
    assert_eq!(
        store.tasks(&Filter::default()).unwrap()[0].state,
        TaskState::PartlyCommitted
    );
    store.integrity_check().unwrap();
}

#[test]
fn a_batch_naming_an_unknown_task_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let mut store = AuditStore::open(&db).unwrap();
    store.record_task(&manifest("known", 1)).unwrap();
    let err = store
        .record_events(&[
            ev("known", 0, 2, denied("bpf", None, 2)),
            ev("ghost", 0, 2, denied("bpf", None, 2)),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    assert_eq!(count(&db, "SELECT count(*) FROM events"), 0);
    assert_eq!(store.tasks(&Filter::default()).unwrap()[0].denial_count, 0);
    assert!(store.record_commit_files(&id("ghost"), 0, &[]).is_err());
}

#[test]
fn a_looping_agent_leaves_one_row_with_the_exact_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let mut store = AuditStore::open(&db).unwrap();
    let t = "loop";
    store.record_task(&manifest(t, 1)).unwrap();
    let total = 100_000u64;
    let mut batch = Vec::with_capacity(1_000);
    for i in 0..total {
        // Different pids and seqs, same key (task, type, syscall, detail).
        let mut e = ev(
            t,
            i,
            10 + i,
            denied("ptrace", Some("PTRACE_ATTACH"), 10 + i),
        );
        if let EventKind::SyscallDenied { pid, .. } = &mut e.kind {
            *pid = (i % 50) as u32 + 100;
        }
        batch.push(e);
        if batch.len() == 1_000 {
            store.record_events(&batch).unwrap();
            batch.clear();
        }
    }
    assert!(batch.is_empty());
    // A single event through the one-at-a-time path joins the same row.
    store
        .record_event(&ev(
            t,
            total,
            10 + total,
            denied("ptrace", Some("PTRACE_ATTACH"), 10 + total),
        ))
        .unwrap();

    assert_eq!(count(&db, "SELECT count(*) FROM events"), 1);
    assert_eq!(count(&db, "SELECT count FROM events"), 100_001);
    let timeline = store.events(Some(&id(t)), None).unwrap();
    assert_eq!(timeline.len(), 1);
    match &timeline[0].kind {
        EventKind::SyscallDenied {
            count,
            first_ms,
            last_ms,
            detail,
            ..
        } => {
            assert_eq!(*count, 100_001);
            assert_eq!(*first_ms, 10);
            assert_eq!(*last_ms, 10 + total);
            assert_eq!(detail.as_deref(), Some("PTRACE_ATTACH"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        store.tasks(&Filter::default()).unwrap()[0].denial_count,
        100_001
    );

    // A different detail, path or op is a different row.
    let more = [
        ev(t, 0, 5, denied("ptrace", Some("PTRACE_TRACEME"), 5)),
        ev(t, 0, 5, denied("ptrace", None, 5)),
        ev(
            t,
            0,
            5,
            EventKind::FileAttempt {
                op: "open".into(),
                path: "/etc/shadow".into(),
                denied: true,
                pid: 1,
                count: 1,
                first_ms: 5,
                last_ms: 5,
            },
        ),
        ev(
            t,
            0,
            5,
            EventKind::FileAttempt {
                op: "open".into(),
                path: "/etc/shadow".into(),
                denied: false,
                pid: 1,
                count: 1,
                first_ms: 5,
                last_ms: 5,
            },
        ),
        ev(
            t,
            0,
            5,
            EventKind::NetAttempt {
                syscall: "connect".into(),
                address: "10.0.0.1:22".into(),
                pid: 1,
                count: 4,
                first_ms: 5,
                last_ms: 9,
            },
        ),
    ];
    store.record_events(&more).unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM events"), 6);
    // The allowed file access is not a denial.
    assert_eq!(
        store.tasks(&Filter::default()).unwrap()[0].denial_count,
        100_001 + 1 + 1 + 1 + 4
    );
}

#[test]
fn two_connections_write_at_once_without_busy_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    {
        let mut store = AuditStore::open(&db).unwrap();
        store.record_task(&manifest("shared", 1)).unwrap();
    }
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut store = AuditStore::open(&db).unwrap();
                let own = format!("writer{w}");
                store.record_task(&manifest(&own, 1)).unwrap();
                for b in 0..200u64 {
                    let mut batch = Vec::new();
                    for i in 0..50u64 {
                        let seq = b * 50 + i;
                        batch.push(ev(
                            &own,
                            seq,
                            seq,
                            EventKind::Warning {
                                message: format!("w{seq}"),
                            },
                        ));
                        batch.push(ev("shared", seq, seq, denied("mount", None, seq)));
                    }
                    store.record_events(&batch).unwrap();
                    if b % 20 == 0 {
                        // Readers interleave with the writers too.
                        store.tasks(&Filter::default()).unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let store = AuditStore::open(&db).unwrap();
    assert_eq!(
        count(&db, "SELECT count(*) FROM events WHERE task = 'writer0'"),
        10_000
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM events WHERE task = 'writer1'"),
        10_000
    );
    assert_eq!(
        count(&db, "SELECT count FROM events WHERE task = 'shared'"),
        20_000
    );
    let shared = store
        .tasks(&Filter {
            task: Some(id("shared")),
            since_ms: None,
        })
        .unwrap();
    assert_eq!(shared[0].denial_count, 20_000);
    let mode: String = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    store.integrity_check().unwrap();
}

#[test]
fn export_writes_one_terminal_safe_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let mut store = AuditStore::open(&db).unwrap();
    let t = "export";
    store.record_task(&manifest(t, 100)).unwrap();
    let nasty = "/home/u/evil\u{1b}[2J\u{202E}gpj.exe\u{9b}31m\u{7f}";
    store
        .record_events(&[
            ev(
                t,
                0,
                101,
                transition(Some(TaskState::Queued), TaskState::Running),
            ),
            ev(
                t,
                1,
                102,
                EventKind::FileAttempt {
                    op: "unlink".into(),
                    path: nasty.into(),
                    denied: true,
                    pid: 9,
                    count: 1,
                    first_ms: 102,
                    last_ms: 102,
                },
            ),
            ev(
                t,
                2,
                103,
                EventKind::FileAttempt {
                    op: "unlink".into(),
                    path: nasty.into(),
                    denied: true,
                    pid: 9,
                    count: 1,
                    first_ms: 103,
                    last_ms: 103,
                },
            ),
            ev(
                t,
                3,
                104,
                EventKind::Committed {
                    files: 1,
                    conflicts: 0,
                    outcome: "committed".into(),
                },
            ),
        ])
        .unwrap();
    store
        .record_commit_files(
            &id(t),
            3,
            &[CommitFile {
                path: "a.txt".into(),
                decision: "approved".into(),
            }],
        )
        .unwrap();
    let mut out = Vec::new();
    let n = store.export_jsonl(&mut out, &Filter::default()).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains('\u{1b}') && !text.contains('\u{202E}') && !text.contains('\u{9b}'));
    assert!(!text.contains('\u{7f}'));
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(n, 4);
    assert_eq!(lines.len(), 4);

    let keys = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    };
    let task = &lines[0];
    assert_eq!(
        keys(task),
        [
            "record",
            "v",
            "task",
            "created_ms",
            "updated_ms",
            "argv",
            "policy",
            "requested_by",
            "state",
            "exit_code",
            "exit_signal",
            "changed_files",
            "denial_count"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    );
    assert_eq!(task["record"], "task");
    assert_eq!(task["task"], t);
    assert_eq!(task["state"], "running");
    assert_eq!(task["denial_count"], 2);
    assert_eq!(task["argv"][2], "bug 12");

    assert_eq!(lines[1]["record"], "event");
    assert_eq!(lines[1]["type"], "state_changed");
    assert_eq!(lines[1]["from"], "queued");
    assert_eq!(lines[1]["to"], "running");

    let attempt = &lines[2];
    assert_eq!(
        keys(attempt),
        [
            "record", "v", "task", "seq", "time_ms", "type", "op", "path", "denied", "pid",
            "count", "first_ms", "last_ms"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    );
    assert_eq!(attempt["path"], nasty, "escaping must not change the value");
    assert_eq!(attempt["count"], 2);
    assert_eq!(attempt["last_ms"], 103);

    let commit = &lines[3];
    assert_eq!(commit["type"], "committed");
    assert_eq!(commit["files"], 1);
    assert_eq!(commit["file_list"][0]["path"], "a.txt");
    assert_eq!(commit["file_list"][0]["decision"], "approved");
    assert!(commit["undone_ms"].is_null());

    // Filters: another task's export is empty; `since` drops older lines.
    let mut out = Vec::new();
    let other = Filter {
        task: Some(id("nothing")),
        since_ms: None,
    };
    assert_eq!(store.export_jsonl(&mut out, &other).unwrap(), 0);
    assert!(out.is_empty());
    let mut out = Vec::new();
    let late = Filter {
        task: None,
        since_ms: Some(104),
    };
    assert_eq!(
        store.export_jsonl(&mut out, &late).unwrap(),
        2,
        "the task (updated at 104) and the commit"
    );
}

#[test]
fn prune_removes_only_old_finished_tasks_and_all_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let mut store = AuditStore::open(&db).unwrap();
    let old = now_ms() - 40 * 86_400_000;
    let recent = now_ms() - 3_600_000;
    let cases: &[(&str, u64, TaskState, u64, bool)] = &[
        ("old-committed", old, TaskState::Committed, 1, true),
        ("old-rejected", old, TaskState::Rejected, 3, true),
        ("old-failed", old, TaskState::Failed, 0, true),
        ("old-exited-clean", old, TaskState::Exited, 0, true),
        ("old-exited-changes", old, TaskState::Exited, 2, false),
        ("old-reviewing", old, TaskState::Reviewing, 2, false),
        ("old-interrupted", old, TaskState::Interrupted, 1, false),
        ("old-running", old, TaskState::Running, 0, false),
        ("new-committed", recent, TaskState::Committed, 1, false),
    ];
    for (t, time, state, changed, _) in cases {
        store.record_task(&manifest(t, *time)).unwrap();
        store
            .record_events(&[
                ev(t, 0, *time, transition(Some(TaskState::Queued), *state)),
                ev(t, 1, *time, denied("bpf", None, *time)),
                ev(
                    t,
                    2,
                    *time,
                    EventKind::Exited {
                        status: ExitStatus {
                            code: 0,
                            signal: None,
                        },
                        changed_files: *changed,
                    },
                ),
                ev(
                    t,
                    3,
                    *time,
                    EventKind::Flow {
                        host: "h".into(),
                        port: 80,
                        address: None,
                        protocol: "http".into(),
                        decision: "deny".into(),
                        reason: "not listed".into(),
                        bytes_out: 0,
                        bytes_in: 0,
                        duration_ms: 0,
                    },
                ),
                ev(
                    t,
                    4,
                    *time,
                    EventKind::Committed {
                        files: 0,
                        conflicts: 0,
                        outcome: "rolled_back".into(),
                    },
                ),
            ])
            .unwrap();
    }
    let pruned = store.prune(Duration::from_secs(30 * 86_400)).unwrap();
    let expected: Vec<TaskId> = cases.iter().filter(|c| c.4).map(|c| id(c.0)).collect();
    assert_eq!(pruned, expected);
    let left: Vec<TaskId> = store
        .tasks(&Filter::default())
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let kept: Vec<TaskId> = cases.iter().filter(|c| !c.4).map(|c| id(c.0)).collect();
    assert_eq!(
        left.iter().collect::<BTreeSet<_>>(),
        kept.iter().collect::<BTreeSet<_>>()
    );
    for table in ["transitions", "events", "flows", "commits"] {
        let n = count(
            &db,
            &format!("SELECT count(*) FROM {table} WHERE task NOT IN (SELECT id FROM tasks)"),
        );
        assert_eq!(n, 0, "orphaned rows in {table}");
        let n = count(&db, &format!("SELECT count(DISTINCT task) FROM {table}"));
        assert_eq!(n as usize, kept.len(), "{table}");
    }
    // Nothing more to prune a second time.
    assert!(store
        .prune(Duration::from_secs(30 * 86_400))
        .unwrap()
        .is_empty());
    store.integrity_check().unwrap();
}

// The migration test must cross at least one step.
const _: () = assert!(SCHEMA_VERSION > 1);

/// Schema version 1 exactly as it was released; never edit it.
const SCHEMA_V1: &str = r#"
    CREATE TABLE tasks (
        id            TEXT PRIMARY KEY NOT NULL,
        created_ms    INTEGER NOT NULL,
        argv          TEXT NOT NULL,              -- JSON array of strings
        policy        TEXT NOT NULL,              -- JSON of policy::Policy
        requested_by  TEXT NOT NULL,
        state         TEXT NOT NULL,
        exit_code     INTEGER,
        exit_signal   INTEGER,
        changed_files INTEGER,
        denial_count  INTEGER NOT NULL DEFAULT 0,
        updated_ms    INTEGER NOT NULL
    );
    CREATE TABLE transitions (
        id         INTEGER PRIMARY KEY,
        task       TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        seq        INTEGER NOT NULL,
        from_state TEXT,
        to_state   TEXT NOT NULL,
        time_ms    INTEGER NOT NULL
    );
    CREATE INDEX transitions_task ON transitions(task, time_ms);
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY,
        task     TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        time_ms  INTEGER NOT NULL,
        type     TEXT NOT NULL,
        -- Coalescing key beside (task, type): the syscall, path or address,
        -- and the detail. NULL subject: the event is never coalesced.
        subject  TEXT,
        detail   TEXT NOT NULL DEFAULT '',
        count    INTEGER NOT NULL DEFAULT 1,
        first_ms INTEGER NOT NULL,
        last_ms  INTEGER NOT NULL,
        data     TEXT NOT NULL                    -- JSON of event::Event
    );
    CREATE UNIQUE INDEX events_coalesce ON events(task, type, subject, detail)
        WHERE subject IS NOT NULL;
    CREATE INDEX events_task ON events(task, time_ms);
    CREATE TABLE flows (
        id          INTEGER PRIMARY KEY,
        task        TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        time_ms     INTEGER NOT NULL,
        host        TEXT NOT NULL,
        port        INTEGER NOT NULL,
        address     TEXT,
        protocol    TEXT NOT NULL,
        decision    TEXT NOT NULL,
        reason      TEXT NOT NULL,
        bytes_out   INTEGER NOT NULL,
        bytes_in    INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL
    );
    CREATE INDEX flows_task ON flows(task, time_ms);
    CREATE TABLE commits (
        id             INTEGER PRIMARY KEY,
        task           TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        seq            INTEGER NOT NULL,
        time_ms        INTEGER NOT NULL,
        files          TEXT NOT NULL DEFAULT '[]', -- JSON [{path, decision}]
        file_count     INTEGER NOT NULL DEFAULT 0,
        conflict_count INTEGER NOT NULL DEFAULT 0,
        outcome        TEXT NOT NULL DEFAULT '',
        UNIQUE (task, seq)
    );
"#;

/// Tables with their columns, and indexes with their columns, in a stable
/// order: the shape of a schema regardless of how its SQL was spelled.
fn schema_shape(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let mut shape = Vec::new();
    let mut stmt = conn
        .prepare(
            "SELECT m.name, p.name, p.type, p.\"notnull\", coalesce(p.dflt_value, ''), p.pk
             FROM sqlite_master m JOIN pragma_table_info(m.name) p
             WHERE m.type = 'table' ORDER BY m.name, p.cid",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "table {}.{} {} notnull={} default={} pk={}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?
            ))
        })
        .unwrap();
    shape.extend(rows.map(Result::unwrap));
    let mut stmt = conn
        .prepare(
            "SELECT m.name, m.tbl_name, coalesce(i.name, '') FROM sqlite_master m
             JOIN pragma_index_info(m.name) i WHERE m.type = 'index' ORDER BY m.name, i.seqno",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "index {} on {}({})",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?
            ))
        })
        .unwrap();
    shape.extend(rows.map(Result::unwrap));
    shape
}

#[test]
fn a_version_1_database_migrates_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    {
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute_batch(
            r#"
            INSERT INTO tasks VALUES ('20250101-120000-abcd', 1000, '["make","test"]', '{"grants":[]}',
                                      'window', 'committed', 0, NULL, 1, 5, 1500);
            INSERT INTO transitions (task, seq, from_state, to_state, time_ms)
                VALUES ('20250101-120000-abcd', 0, 'queued', 'running', 1001);
            INSERT INTO events (task, seq, time_ms, type, subject, detail, count, first_ms, last_ms, data)
                VALUES ('20250101-120000-abcd', 1, 1002, 'syscall_denied', 'ptrace', '', 5, 1002, 1400,
                        '{"v":1,"task":"20250101-120000-abcd","seq":1,"time_ms":1002,"type":"syscall_denied","syscall":"ptrace","pid":3,"count":1,"first_ms":1002,"last_ms":1002}');
            INSERT INTO flows (task, seq, time_ms, host, port, address, protocol, decision, reason,
                               bytes_out, bytes_in, duration_ms)
                VALUES ('20250101-120000-abcd', 2, 1003, 'crates.io', 443, NULL, 'connect', 'allow',
                        'allow-list', 10, 20, 5);
            INSERT INTO commits (task, seq, time_ms, files, file_count, conflict_count, outcome)
                VALUES ('20250101-120000-abcd', 3, 1500, '[{"path":"a","decision":"approved"}]', 1, 0,
                        'committed');
            PRAGMA user_version = 1;
            "#,
        )
        .unwrap();
    }

    let mut store = AuditStore::open(&db).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);

    let fresh = dir.path().join("fresh.db");
    drop(AuditStore::open(&fresh).unwrap());
    assert_eq!(
        schema_shape(&db),
        schema_shape(&fresh),
        "migrated schema differs from a new one"
    );

    let t = id("20250101-120000-abcd");
    let tasks = store.tasks(&Filter::default()).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].argv, vec!["make", "test"]);
    assert_eq!(tasks[0].requested_by, "window");
    assert_eq!(tasks[0].state, TaskState::Committed);
    assert_eq!(tasks[0].denial_count, 5);
    assert_eq!(
        tasks[0].exit,
        Some(ExitStatus {
            code: 0,
            signal: None
        })
    );
    let timeline = store.events(Some(&t), None).unwrap();
    assert_eq!(timeline.len(), 4);
    assert!(matches!(
        timeline[1].kind,
        EventKind::SyscallDenied {
            count: 5,
            last_ms: 1400,
            ..
        }
    ));
    assert!(matches!(&timeline[2].kind, EventKind::Flow { host, .. } if host == "crates.io"));
    let commits = store.commits(&t).unwrap();
    assert_eq!(commits[0].files[0].path, "a");
    assert_eq!(commits[0].undone_ms, None);

    // The migrated database takes new writes: coalescing onto the old row
    // and the column that version 2 added.
    store
        .record_event(&ev(t.as_str(), 9, 1600, denied("ptrace", None, 1600)))
        .unwrap();
    store.mark_commit_undone(&t, 3, 1700).unwrap();
    assert_eq!(count(&db, "SELECT count FROM events"), 6);
    assert_eq!(store.commits(&t).unwrap()[0].undone_ms, Some(1700));
    store.integrity_check().unwrap();

    // Opening again is a no-op.
    drop(store);
    let store = AuditStore::open(&db).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_database_from_a_newer_airlock_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    drop(AuditStore::open(&db).unwrap());
    Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let err = AuditStore::open(&db).unwrap_err().to_string();
    assert!(err.contains("newer"), "{err}");
    assert!(err.contains(&db.display().to_string()), "{err}");
    let v: u32 = Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION + 1);
}

#[test]
fn a_file_that_is_not_a_database_is_reported_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    std::fs::write(&db, vec![b'x'; 8192]).unwrap();
    let err = AuditStore::open(&db).unwrap_err().to_string();
    assert!(err.contains(&db.display().to_string()), "{err}");
}

const WRITER_ENV: &str = "AIRLOCK_TEST_AUDIT_WRITER_DB";
const WRITER_BATCH: u64 = 200;

/// Not a test of its own: the body of the child that `kill_9_of_a_writer…`
/// spawns (this test binary re-executed with the env variable set). It
/// writes batches forever and prints the number of each committed batch.
#[test]
fn audit_writer_child() {
    let Some(db) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    use std::io::Write;
    let mut store = AuditStore::open(Path::new(&db)).unwrap();
    store.record_task(&manifest("victim", 1)).unwrap();
    let stdout = std::io::stdout();
    for b in 0u64.. {
        let mut batch = Vec::with_capacity(2 * WRITER_BATCH as usize);
        for i in 0..WRITER_BATCH {
            let seq = b * WRITER_BATCH + i;
            batch.push(ev(
                "victim",
                seq,
                seq,
                EventKind::Warning {
                    message: format!("m{seq}"),
                },
            ));
            batch.push(ev("victim", seq, seq, denied("ptrace", None, seq)));
        }
        store.record_events(&batch).unwrap();
        let mut out = stdout.lock();
        writeln!(out, "committed {b}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill_9_of_a_writer_leaves_an_intact_database_with_every_committed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "audit_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last = None;
    for line in lines.by_ref() {
        if let Some(n) = line.unwrap().strip_prefix("committed ") {
            let n: u64 = n.trim().parse().unwrap();
            last = Some(n);
            if n >= 30 {
                break;
            }
        }
    }
    // The child is inside its next batch's transaction (it never pauses).
    child.kill().unwrap();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // Lines the child printed before it died are commits too.
    for line in lines {
        if let Some(n) = line.unwrap().strip_prefix("committed ") {
            last = Some(n.trim().parse().unwrap());
        }
    }
    let last = last.expect("the writer committed nothing");

    let store = AuditStore::open(&db).unwrap();
    store.integrity_check().unwrap();
    let warnings = count(&db, "SELECT count(*) FROM events WHERE type = 'warning'") as u64;
    let denials = count(
        &db,
        "SELECT count FROM events WHERE type = 'syscall_denied'",
    ) as u64;
    assert!(
        warnings >= (last + 1) * WRITER_BATCH,
        "{warnings} rows, {last} batches committed"
    );
    // Batches are whole: the coalesced count and the row count moved
    // together, and the task's total matches both.
    assert_eq!(warnings % WRITER_BATCH, 0);
    assert_eq!(denials, warnings);
    let task = &store.tasks(&Filter::default()).unwrap()[0];
    assert_eq!(task.denial_count, denials);
}

#[test]
fn a_new_database_opened_by_several_at_once_opens_for_all() {
    // Two `airlock run` on first use, or the app and a command: each
    // switches the new file to WAL and migrates it.
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let start = std::sync::Arc::new(std::sync::Barrier::new(6));
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let (db, start) = (db.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    AuditStore::open(&db).map(|s| s.schema_version().unwrap())
                })
            })
            .collect();
        for o in openers {
            let v = o.join().unwrap();
            assert_eq!(
                v.as_ref().ok(),
                Some(&SCHEMA_VERSION),
                "round {round}: {:?}",
                v.as_ref().err().map(|e| e.to_string())
            );
        }
    }
}
