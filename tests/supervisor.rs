//! The supervisor in-process, through the library: many tasks at once with
//! every event accounted for, kill, captured output, review through the
//! handle, lag warnings, profiles. Real sandboxes, a real SQLite file.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use airlock::audit::AuditStore;
use airlock::event::{Event, EventKind};
use airlock::policy::{Access, Grant, Policy};
use airlock::supervisor::{
    Config, OutputMode, Subscription, Supervisor, SupervisorHandle, TaskRequest,
};
use airlock::task::{TaskId, TaskState};
use common::World;

/// One world and one supervisor for this test binary: the XDG variables
/// are process-wide, so they are set once, before any thread reads them.
fn world() -> &'static (World, SupervisorHandle) {
    static W: OnceLock<(World, SupervisorHandle)> = OnceLock::new();
    W.get_or_init(|| {
        let w = World::new();
        std::env::set_var("HOME", &w.home);
        std::env::set_var("XDG_STATE_HOME", w.state());
        std::env::set_var("XDG_DATA_HOME", w.path().join("data"));
        std::env::set_var("XDG_CONFIG_HOME", w.path().join("config"));
        let mut c = Config::new().unwrap();
        c.helper_exe = common::airlock_bin();
        c.concurrency = 2;
        let h = Supervisor::start(c).unwrap();
        (w, h)
    })
}

fn req(script: &str) -> TaskRequest {
    TaskRequest {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        policy: Policy::default(),
        requested_by: "test".into(),
        output: OutputMode::Capture,
        helper: None,
    }
}

fn settled(s: TaskState) -> bool {
    matches!(
        s,
        TaskState::Exited
            | TaskState::Failed
            | TaskState::Killed
            | TaskState::Reviewing
            | TaskState::Interrupted
    )
}

/// Collects events of `ids` until each has settled (and, when it changed
/// files, reached review).
fn collect(
    sub: &mut Subscription,
    ids: &[TaskId],
    limit: Duration,
) -> BTreeMap<TaskId, Vec<Event>> {
    let start = Instant::now();
    let mut got: BTreeMap<TaskId, Vec<Event>> =
        ids.iter().map(|i| (i.clone(), Vec::new())).collect();
    let done = |got: &BTreeMap<TaskId, Vec<Event>>| {
        got.values().all(|evs| {
            let changed = evs.iter().find_map(|e| match e.kind {
                EventKind::Exited { changed_files, .. } => Some(changed_files),
                _ => None,
            });
            match evs.last().map(|e| &e.kind) {
                Some(EventKind::StateChanged { to, .. }) => {
                    *to == TaskState::Reviewing || (settled(*to) && changed.unwrap_or(0) == 0)
                }
                _ => false,
            }
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    while !done(&got) {
        assert!(start.elapsed() < limit, "tasks did not finish: {got:#?}");
        let ev = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), sub.recv()).await })
            .ok()
            .flatten();
        if let Some(ev) = ev {
            assert!(
                !matches!(&ev.kind, EventKind::Warning { message } if message.contains("dropped")),
                "lagged: {ev:?}"
            );
            if let Some(v) = got.get_mut(&ev.task) {
                v.push(ev);
            }
        }
    }
    got
}

fn states(evs: &[Event]) -> Vec<TaskState> {
    evs.iter()
        .filter_map(|e| match e.kind {
            EventKind::StateChanged { to, .. } => Some(to),
            _ => None,
        })
        .collect()
}

#[test]
fn twenty_tasks_at_once_all_finish_with_every_event_accounted_for() {
    let (w, h) = world();
    let mut sub = h.subscribe();
    let ids: Vec<TaskId> = (0..20)
        .map(|i| {
            h.submit_blocking(req(&format!(
                "echo out-{i}; echo err-{i} >&2; exit {}",
                i % 5
            )))
            .unwrap()
        })
        .collect();
    let got = collect(&mut sub, &ids, Duration::from_secs(600));
    h.flush_audit_blocking();
    let store = AuditStore::open(&w.path().join("data/airlock/audit.db")).unwrap();
    store.integrity_check().unwrap();
    for (i, id) in ids.iter().enumerate() {
        let evs = &got[id];
        // Gap-free, in order, from 0.
        let seqs: Vec<u64> = evs.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (0..evs.len() as u64).collect::<Vec<_>>(),
            "{id}: {evs:#?}"
        );
        assert_eq!(
            states(evs),
            vec![
                TaskState::Queued,
                TaskState::Starting,
                TaskState::Running,
                TaskState::Exited
            ],
            "{id}"
        );
        let exit = evs.iter().find_map(|e| match &e.kind {
            EventKind::Exited { status, .. } => Some(status.code),
            _ => None,
        });
        assert_eq!(exit, Some((i % 5) as i32));
        // The audit store has exactly the same events.
        let rows = store.events(Some(id), None).unwrap();
        let mut row_seqs: Vec<u64> = rows.iter().map(|e| e.seq).collect();
        row_seqs.sort_unstable();
        assert_eq!(row_seqs, seqs, "{id}: audit rows differ from the bus");
        let rec = store
            .tasks(&airlock::audit::Filter {
                task: Some(id.clone()),
                since_ms: None,
            })
            .unwrap();
        assert_eq!(rec[0].state, TaskState::Exited);
        assert_eq!(rec[0].requested_by, "test");
        // Captured output: in memory and in the task's log.
        let out = String::from_utf8(h.output(id).unwrap()).unwrap();
        assert!(
            out.contains(&format!("out-{i}")) && out.contains(&format!("err-{i}")),
            "{out:?}"
        );
        let log = std::fs::read_to_string(w.state().join(format!("airlock/tasks/{id}/output.log")))
            .unwrap();
        assert_eq!(log, out);
    }
    // Never more than the configured concurrency ran at once: the
    // Starting..end windows of the tasks, by event order on the bus.
    let list = h.tasks();
    assert!(ids.iter().all(|id| list
        .iter()
        .any(|t| &t.id == id && t.state == TaskState::Exited)));
}

#[test]
fn kill_a_running_and_a_queued_task() {
    let (_, h) = world();
    let mut sub = h.subscribe();
    let a = h.submit_blocking(req("echo started; sleep 300")).unwrap();
    let b = h.submit_blocking(req("sleep 300")).unwrap();
    let c = h.submit_blocking(req("sleep 300")).unwrap();
    // c waits in the queue behind a and b (concurrency 2).
    let start = Instant::now();
    while h.task(&a).unwrap().state != TaskState::Running
        || h.task(&b).unwrap().state != TaskState::Running
    {
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.task(&c).unwrap().state, TaskState::Queued);
    h.kill_blocking(&c).unwrap();
    h.kill_blocking(&a).unwrap();
    h.kill_blocking(&b).unwrap();
    let got = collect(
        &mut sub,
        &[a.clone(), b.clone(), c.clone()],
        Duration::from_secs(120),
    );
    assert_eq!(states(&got[&c]), vec![TaskState::Queued, TaskState::Killed]);
    assert_eq!(states(&got[&a]).last(), Some(&TaskState::Killed));
    assert_eq!(h.task(&a).unwrap().exit.unwrap().code, 137);
    assert!(
        h.kill_blocking(&a).is_err(),
        "killing a finished task is an error"
    );
}

#[test]
fn review_through_the_handle_commit_and_undo() {
    let (w, h) = world();
    let proj = w.path().join("review-project");
    std::fs::create_dir_all(&proj).unwrap();
    common::chmod(&proj, 0o777);
    std::fs::write(proj.join("keep.txt"), "old\n").unwrap();
    common::chmod(&proj.join("keep.txt"), 0o666);
    let mut sub = h.subscribe();
    let mut r = req("echo new > keep.txt; echo added > added.txt");
    r.policy.grants.push(Grant {
        path: proj.clone(),
        access: Access::Rw,
    });
    let id = h.submit_blocking(r).unwrap();
    let got = collect(
        &mut sub,
        std::slice::from_ref(&id),
        Duration::from_secs(120),
    );
    assert_eq!(states(&got[&id]).last(), Some(&TaskState::Reviewing));
    // Nothing reached the real folder yet.
    assert_eq!(
        std::fs::read_to_string(proj.join("keep.txt")).unwrap(),
        "old\n"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let changes = rt.block_on(h.changes(&id)).unwrap();
    let paths: Vec<&str> = changes[0].changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, vec!["added.txt", "keep.txt"]);
    let sum = rt.block_on(h.commit(&id, vec!["keep.txt".into()])).unwrap();
    assert_eq!(sum.committed, vec!["keep.txt"]);
    assert_eq!(sum.state, Some(TaskState::PartlyCommitted));
    assert_eq!(
        std::fs::read_to_string(proj.join("keep.txt")).unwrap(),
        "new\n"
    );
    assert!(!proj.join("added.txt").exists());
    rt.block_on(h.undo(&id)).unwrap();
    assert_eq!(
        std::fs::read_to_string(proj.join("keep.txt")).unwrap(),
        "old\n"
    );
    assert_eq!(h.task(&id).unwrap().state, TaskState::Reviewing);
    rt.block_on(h.reject(&id)).unwrap();
    assert_eq!(h.task(&id).unwrap().state, TaskState::Rejected);
    h.flush_audit_blocking();
    let store = AuditStore::open(&w.path().join("data/airlock/audit.db")).unwrap();
    let commits = store.commits(&id).unwrap();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].files[0].path, "keep.txt");
    assert!(commits[0].undone_ms.is_some());
    let rec = store
        .tasks(&airlock::audit::Filter {
            task: Some(id.clone()),
            since_ms: None,
        })
        .unwrap();
    assert_eq!(rec[0].state, TaskState::Rejected);
}

#[test]
fn a_lagging_subscriber_is_told_how_many_events_it_lost() {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    let (_, h) = world();
    let mut slow = h.subscribe();
    let mut fast = h.subscribe();
    // Many small tasks' events while `slow` reads nothing: more than the bus
    // holds (about 11,000 events from the failed plans of bad requests).
    // `fast` reads all the time and must miss nothing.
    let ids: Arc<Mutex<(HashSet<TaskId>, bool)>> = Arc::default();
    let seen = ids.clone();
    let reader = std::thread::spawn(move || {
        let mut failed: HashSet<TaskId> = HashSet::new();
        loop {
            let ev = fast.blocking_recv().expect("the bus closed");
            if let EventKind::Warning { message } = &ev.kind {
                assert!(
                    !message.contains("dropped"),
                    "the reading subscriber lagged: {message}"
                );
            }
            if let EventKind::StateChanged {
                to: TaskState::Failed,
                ..
            } = ev.kind
            {
                failed.insert(ev.task);
            }
            let (ids, done) = &*seen.lock().unwrap();
            if *done && ids.is_subset(&failed) {
                return;
            }
        }
    });
    for _ in 0..2800 {
        let mut r = req("true");
        r.policy.grants.push(Grant {
            path: "/nonexistent/airlock-lag".into(),
            access: Access::Ro,
        });
        let id = h.submit_blocking(r).unwrap();
        ids.lock().unwrap().0.insert(id);
    }
    ids.lock().unwrap().1 = true;
    // One more event wakes the reader if it already saw everything.
    let mut r = req("true");
    r.policy.grants.push(Grant {
        path: "/nonexistent/airlock-lag".into(),
        access: Access::Ro,
    });
    h.submit_blocking(r).unwrap();
    reader.join().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let first = rt.block_on(slow.recv()).unwrap();
    match first.kind {
        EventKind::Warning { message } => assert!(message.contains("were dropped"), "{message}"),
        other => panic!("expected a lag warning, got {other:?}"),
    }
}

#[test]
fn network_questions_queue_at_the_supervisor_until_answered() {
    use airlock::netproxy::consent::Gate;
    use airlock::netproxy::hosts::{normalize_host, AllowList};
    use airlock::policy::NetMode;
    use std::sync::Arc;
    let (_, h) = world();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (ev_tx, _ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(Gate::new(
        NetMode::Ask,
        AllowList::parse::<&str>(&[]).unwrap(),
        Duration::from_secs(60),
        Some(h.consent_sender()),
        ev_tx,
    ));
    let host = normalize_host("example.org").unwrap();
    let g = gate.clone();
    let asked = rt.spawn(async move { g.ask(&host, 443).await });
    // The question shows up in the queue.
    let pending = loop {
        let p = rt.block_on(h.pending_consents()).unwrap();
        if !p.is_empty() {
            break p;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(pending[0].host, "example.org");
    assert_eq!(pending[0].port, 443);
    assert!(rt
        .block_on(h.answer_consent(pending[0].id, "sometimes"))
        .is_err());
    rt.block_on(h.answer_consent(pending[0].id, "allow_task"))
        .unwrap();
    assert!(
        rt.block_on(asked).unwrap().is_ok(),
        "the held connection proceeds"
    );
    assert!(rt.block_on(h.pending_consents()).unwrap().is_empty());
    // An unknown id is an error, not a silent success.
    assert!(rt.block_on(h.answer_consent(999_999, "deny")).is_err());
}

/// An audit store and task folders under `w/name` with one task per
/// `(final state, time)`, as an earlier supervisor left them; returns the
/// task ids and a supervisor configuration for them (30 days' retention).
fn recorded(w: &World, name: &str, tasks: &[(TaskState, u64)]) -> (Vec<TaskId>, Config) {
    let root = w.path().join(name);
    let dirs = root.join("tasks");
    let db = root.join("audit.db");
    let mut store = AuditStore::open(&db).unwrap();
    let mut ids = Vec::new();
    for (n, (end, when)) in tasks.iter().enumerate() {
        let id = TaskId::parse(&format!("20200101-00000{n}-beef")).unwrap();
        store
            .record_task(&airlock::task::TaskManifest {
                id: id.clone(),
                argv: vec!["true".into()],
                policy: Policy::default(),
                rw_layers: Vec::new(),
                created_ms: *when,
                requested_by: "cli".into(),
            })
            .unwrap();
        let mut ev = Event::new(
            id.clone(),
            0,
            EventKind::StateChanged {
                from: None,
                to: *end,
            },
        );
        ev.time_ms = *when;
        store.record_event(&ev).unwrap();
        let dir = dirs.join(id.as_str());
        std::fs::create_dir_all(dir.join("upper/0")).unwrap();
        // The folder as old as the task (retention leaves a folder touched
        // lately alone).
        let t = std::time::UNIX_EPOCH + Duration::from_millis(*when);
        std::fs::File::open(&dir).unwrap().set_modified(t).unwrap();
        ids.push(id);
    }
    let mut c = Config::new().unwrap();
    c.audit_path = db;
    c.tasks_dir = dirs;
    c.retention_days = 30;
    (ids, c)
}

#[test]
fn retention_prunes_old_finished_tasks_with_their_folders_and_keeps_reviews() {
    let (w, _) = world();
    let old = airlock::event::now_ms() - 40 * 86_400_000;
    let (ids, c) = recorded(
        w,
        "retention",
        &[(TaskState::Rejected, old), (TaskState::Reviewing, old)],
    );
    let (tasks, db) = (c.tasks_dir.clone(), c.audit_path.clone());
    let h = Supervisor::start(c).unwrap();
    // The rejected task and its folder went together; the one waiting for
    // review stays, however old.
    assert!(!tasks.join(ids[0].as_str()).exists());
    assert!(h.task(&ids[0]).is_none());
    assert!(tasks.join(ids[1].as_str()).exists());
    assert_eq!(h.task(&ids[1]).unwrap().state, TaskState::Reviewing);
    let store = AuditStore::open(&db).unwrap();
    let left: Vec<TaskId> = store
        .tasks(&Default::default())
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(left, vec![ids[1].clone()]);
}

#[test]
fn quick_start_prunes_and_interrupts_dead_live_tasks_but_reads_no_other_task() {
    let (w, _) = world();
    let (old, now) = (
        airlock::event::now_ms() - 40 * 86_400_000,
        airlock::event::now_ms(),
    );
    // An old rejected task (pruned), a task left "running" by a supervisor
    // that died (interrupted), one waiting for review (left alone).
    let (ids, c) = recorded(
        w,
        "quick",
        &[
            (TaskState::Rejected, old),
            (TaskState::Running, now),
            (TaskState::Reviewing, now),
        ],
    );
    let (tasks, db) = (c.tasks_dir.clone(), c.audit_path.clone());
    let h = Supervisor::start_quick(c).unwrap();
    h.flush_audit_blocking();
    assert!(!tasks.join(ids[0].as_str()).exists());
    assert_eq!(h.task(&ids[1]).unwrap().state, TaskState::Interrupted);
    assert!(tasks.join(ids[1].as_str()).join("exit.json").exists());
    // Finished tasks are not read at all by a quick start.
    assert!(h.task(&ids[2]).is_none());
    assert!(tasks.join(ids[2].as_str()).exists());
    let store = AuditStore::open(&db).unwrap();
    let states: Vec<(TaskId, TaskState)> = store
        .tasks(&Default::default())
        .unwrap()
        .into_iter()
        .map(|t| (t.id, t.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (ids[1].clone(), TaskState::Interrupted),
            (ids[2].clone(), TaskState::Reviewing),
        ]
    );
}

/// Pass 9B: retention pruned a committed task while the user was undoing
/// its commit (the undo restored the files, then its record, its folder
/// and the agent's changes were gone). A task whose commit lock is held,
/// or whose commits changed lately, is left for a later start.
#[test]
fn retention_leaves_a_task_being_committed_or_undone() {
    use std::os::fd::AsRawFd;
    let (w, _) = world();
    let old = airlock::event::now_ms() - 40 * 86_400_000;
    let (ids, c) = recorded(
        w,
        "retention-busy",
        &[(TaskState::Committed, old), (TaskState::Committed, old)],
    );
    let tasks = c.tasks_dir.clone();
    let busy = tasks.join(ids[0].as_str());
    let lock = std::fs::File::create(busy.join("commit.lock")).unwrap();
    // SAFETY: flock on our own descriptor.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    std::fs::File::open(&busy)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_millis(old))
        .unwrap();
    // An undo that has just finished: its record is in commits/.
    let undone = tasks.join(ids[1].as_str());
    std::fs::create_dir_all(undone.join("commits/2")).unwrap();
    let h = Supervisor::start(c.clone()).unwrap();
    assert!(busy.exists() && undone.exists());
    assert!(h.task(&ids[0]).is_some() && h.task(&ids[1]).is_some());
    drop(h);
    drop(lock);
    std::fs::File::open(&busy)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_millis(old))
        .unwrap();
    let h = Supervisor::start(c).unwrap();
    assert!(!busy.exists() && h.task(&ids[0]).is_none());
    assert!(undone.exists());
}
