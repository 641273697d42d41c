//! `airlock tasks` and `airlock kill` without the app: the audit store and
//! the task's owner file.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{output_within, text, World};

#[test]
fn tasks_and_kill_of_a_local_run() {
    let w = World::new();
    let o = output_within(w.cmd(&["tasks"]), Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("No tasks yet"), "{}", text(&o));
    let mut run = w.cmd(&["run", "--local", "--", "sh", "-c", "sleep 300"]);
    run.stdout(Stdio::null()).stderr(Stdio::null());
    let mut run = run.spawn().unwrap();
    // Wait for the sandbox to exist.
    let start = Instant::now();
    let task = loop {
        if let Some(t) = w.tasks().pop().filter(|t| t.join("owner.json").exists()) {
            break t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the task did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let id = task.file_name().unwrap().to_string_lossy().into_owned();
    let o = output_within(w.cmd(&["tasks", "--json"]), Duration::from_secs(60));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["id"], id.as_str());
    assert_eq!(line["requested_by"], "cli");
    let o = output_within(w.cmd(&["kill", &id]), Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the killed task kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(137));
    let o = output_within(w.cmd(&["tasks"]), Duration::from_secs(60));
    assert!(
        text(&o).contains(&id) && text(&o).contains("killed"),
        "{}",
        text(&o)
    );
    // A finished task cannot be killed; an unknown one neither.
    let o = output_within(w.cmd(&["kill", &id]), Duration::from_secs(60));
    assert!(!o.status.success());
    let o = output_within(
        w.cmd(&["kill", "20200101-000000-ffff"]),
        Duration::from_secs(60),
    );
    assert!(
        !o.status.success() && text(&o).contains("20200101-000000-ffff"),
        "{}",
        text(&o)
    );
}

/// `kill -9` of `airlock run` mid-task: the sandbox dies with it, nothing
/// reaches the real folder, and the next review marks the task interrupted
/// and shows its changes at once (no other Airlock start needed).
#[test]
fn a_killed_local_run_is_reviewable_at_once() {
    let w = World::new();
    std::fs::write(w.project.join("x.txt"), "x\n").unwrap();
    common::chmod(&w.project.join("x.txt"), 0o666);
    let grant = format!("{}:rw", w.project.display());
    let mut run = w.cmd(&[
        "run",
        "--local",
        "--grant",
        &grant,
        "--",
        "sh",
        "-c",
        "echo changed > x.txt; touch ready; sleep 300",
    ]);
    run.stdout(Stdio::null()).stderr(Stdio::null());
    let mut run = run.spawn().unwrap();
    let start = Instant::now();
    let task = loop {
        if let Some(t) = w.tasks().pop().filter(|t| t.join("upper/0/ready").exists()) {
            break t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the task did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let owner: serde_json::Value =
        serde_json::from_slice(&std::fs::read(task.join("owner.json")).unwrap()).unwrap();
    let helper = owner["helper_pid"].as_u64().unwrap();
    run.kill().unwrap();
    run.wait().unwrap();
    let start = Instant::now();
    while std::path::Path::new(&format!("/proc/{helper}")).exists()
        && !std::fs::read_to_string(format!("/proc/{helper}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the sandbox outlived airlock run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        std::fs::read_to_string(w.project.join("x.txt")).unwrap(),
        "x\n"
    );
    let id = task.file_name().unwrap().to_string_lossy().into_owned();
    let o = output_within(w.cmd(&["changes", &id]), Duration::from_secs(60));
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("x.txt") && t.contains("interrupted"), "{t}");
    let o = output_within(w.cmd(&["commit", &id]), Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(w.project.join("x.txt")).unwrap(),
        "changed\n"
    );
}

/// Commit, undo and reject from the command line reach the audit log, as
/// they do through the app: `airlock tasks` shows the state the files are
/// in, and the log holds the commit and marks it undone.
#[test]
fn review_decisions_on_the_command_line_are_recorded() {
    let w = World::new();
    std::fs::write(w.project.join("a.txt"), "one\n").unwrap();
    common::chmod(&w.project.join("a.txt"), 0o666);
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "echo two >> a.txt",
    );
    assert!(o.status.success(), "{}", text(&o));
    let id = w.tasks().pop().unwrap();
    let id = id.file_name().unwrap().to_string_lossy().to_string();
    let state = || {
        let o = output_within(w.cmd(&["tasks", "--json"]), Duration::from_secs(60));
        let t: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap())
                .unwrap();
        t["state"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(state(), "reviewing");
    let c = output_within(w.cmd(&["commit", &id]), Duration::from_secs(60));
    assert!(c.status.success(), "{}", text(&c));
    assert_eq!(state(), "committed");
    let audit = w.path().join("data/airlock/audit.db");
    let store = airlock::audit::AuditStore::open(&audit).unwrap();
    let task = airlock::task::TaskId::parse(&id).unwrap();
    let commits = store.commits(&task).unwrap();
    assert_eq!(commits.len(), 1, "{commits:?}");
    assert_eq!(commits[0].file_count, 1);
    assert!(commits[0].undone_ms.is_none());
    drop(store);
    let u = output_within(w.cmd(&["undo", &id]), Duration::from_secs(60));
    assert!(u.status.success(), "{}", text(&u));
    assert_eq!(state(), "reviewing");
    let store = airlock::audit::AuditStore::open(&audit).unwrap();
    assert!(store.commits(&task).unwrap()[0].undone_ms.is_some());
    drop(store);
    let r = output_within(w.cmd(&["reject", &id]), Duration::from_secs(60));
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(state(), "rejected");
}
