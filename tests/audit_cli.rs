//! `airlock log` end to end: the real binary against a database in a
//! private `$XDG_DATA_HOME`.

use std::path::Path;
use std::process::{Command, Output};

use airlock::audit::AuditStore;
use airlock::event::{now_ms, Event, EventKind, EVENT_VERSION};
use airlock::policy::Policy;
use airlock::task::{TaskId, TaskManifest, TaskState};

const TASK: &str = "20261127-021500-1a2b";
const EVIL_PATH: &str = "/home/u/\u{1b}[2J\u{1b}]0;owned\u{7}\u{202E}fdp.exe\n\u{9b}31m";

fn airlock(data_home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .env("XDG_DATA_HOME", data_home)
        .env("LC_ALL", "C")
        .env_remove("AIRLOCK_LOG")
        .output()
        .unwrap()
}

fn ev(seq: u64, time_ms: u64, kind: EventKind) -> Event {
    Event {
        v: EVENT_VERSION,
        task: TaskId::parse(TASK).unwrap(),
        seq,
        time_ms,
        kind,
    }
}

fn fill(data_home: &Path) {
    let mut store = AuditStore::open(&data_home.join("airlock/audit.db")).unwrap();
    let day = 86_400_000;
    let old = now_ms() - 3 * day;
    let recent = now_ms() - 60_000;
    store
        .record_task(&TaskManifest {
            id: TaskId::parse(TASK).unwrap(),
            argv: vec!["agent".into(), "fix it".into()],
            policy: Policy::default(),
            rw_layers: vec![],
            created_ms: old,
            requested_by: "cli".into(),
        })
        .unwrap();
    store
        .record_events(&[
            ev(
                0,
                old,
                EventKind::StateChanged {
                    from: Some(TaskState::Queued),
                    to: TaskState::Running,
                },
            ),
            ev(
                1,
                recent,
                EventKind::FileAttempt {
                    op: "open".into(),
                    path: EVIL_PATH.into(),
                    denied: true,
                    pid: 4,
                    count: 7,
                    first_ms: recent,
                    last_ms: recent,
                },
            ),
            ev(
                2,
                recent,
                EventKind::NetAttempt {
                    syscall: "connect".into(),
                    address: "10.0.0.1:22".into(),
                    pid: 4,
                    count: 1,
                    first_ms: recent,
                    last_ms: recent,
                },
            ),
        ])
        .unwrap();
}

fn no_raw_terminal_controls(text: &str) {
    for c in text.chars() {
        let unsafe_char = (c.is_control() && c != '\n')
            || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        assert!(!unsafe_char, "raw {c:?} in output:\n{text}");
    }
}

#[test]
fn without_a_database_it_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = airlock(dir.path(), &["log"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit.db"), "{err}");
    assert!(!dir.path().join("airlock/audit.db").exists());
}

#[test]
fn the_table_is_plain_words_with_names_escaped() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let out = airlock(dir.path(), &["log"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    no_raw_terminal_controls(&text);
    // Header plus three events; the newline in the path forged no line.
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains(TASK));
    assert!(text.contains("state queued → running"), "{text}");
    assert!(text.contains("blocked open of /home/u/\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\u{202e}fdp.exe\\u{a}\\u{9b}31m"), "{text}");
    assert!(text.contains("7 times"), "{text}");
    assert!(
        text.contains("blocked direct connection to 10.0.0.1:22 (connect)"),
        "{text}"
    );

    // --task adds a summary of the task.
    let out = airlock(dir.path(), &["log", "--task", TASK]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("agent 'fix it'"), "{text}");
    assert!(text.contains("8 denials"), "{text}");
}

#[test]
fn json_lines_round_trip_and_since_filters() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let out = airlock(dir.path(), &["log", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    no_raw_terminal_controls(&text);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0]["record"], "task");
    assert_eq!(lines[2]["path"], EVIL_PATH);

    // The transition is 3 days old: an age and an RFC 3339 time both drop it.
    for since in ["1h", "2d"] {
        let out = airlock(dir.path(), &["log", "--json", "--since", since]);
        let text = String::from_utf8(out.stdout).unwrap();
        let types: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["record"] == "event")
            .map(|v| v["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            types,
            vec!["file_attempt", "net_attempt"],
            "--since {since}"
        );
    }
    let out = airlock(
        dir.path(),
        &["log", "--json", "--since", "2100-01-01T00:00:00Z"],
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_arguments_fail_with_a_message_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let out = airlock(dir.path(), &["log", "--task", "20990101-000000-0000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("20990101-000000-0000"));
    let out = airlock(dir.path(), &["log", "--task", "../etc"]);
    assert!(!out.status.success());
    let out = airlock(dir.path(), &["log", "--since", "last tuesday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("last tuesday"));
}
