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
