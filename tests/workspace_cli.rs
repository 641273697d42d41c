//! The review commands of the `airlock` binary: changes, diff, commit
//! (--only, --hunks, --keep-agent), reject, undo; names always escaped.

mod workspace_support;

use std::process::{Command, Output};

use workspace_support::*;

fn airlock(f: &Fixture, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .env("XDG_STATE_HOME", &f.state)
        .env("HOME", f.base.path())
        .env("LANG", "C")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn changes_and_diff_show_escaped_names_and_hunks() {
    let f = Fixture::new();
    f.setup("printf 'a\\nb\\nc\\n' > doc");
    f.snapshot();
    f.agent(&format!(
        "printf 'a\\nB\\nc\\n' > doc && echo x > {} && mkdir -p .git/hooks && echo hook > .git/hooks/post-checkout",
        q(b"evil\x1b[2J\xff")
    ));
    let o = airlock(&f, &["changes", f.id.as_str()]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("M doc"), "{t}");
    assert!(t.contains("A evil\\x1b[2J\\xff"), "{t}");
    assert!(
        !t.contains('\x1b'),
        "no raw escape reaches the terminal: {t:?}"
    );
    assert!(t.contains("runs code later: git hook"), "{t}");

    let o = airlock(&f, &["changes", f.id.as_str(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let changes = v[0]["changes"].as_array().unwrap();
    assert!(changes
        .iter()
        .any(|c| c["display"] == "evil\\x1b[2J\\xff" && c["kind"] == "added"));

    let o = airlock(&f, &["diff", f.id.as_str(), "doc"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("hunk 1"), "{t}");
    assert!(t.contains("-b") && t.contains("+B"), "{t}");
    let o = airlock(&f, &["diff", f.id.as_str(), "doc", "--side-by-side"]);
    assert!(o.status.success());
    let grant_doc = f.grant.join("doc");
    let o = airlock(&f, &["diff", f.id.as_str(), grant_doc.to_str().unwrap()]);
    assert!(o.status.success(), "a real path works too: {}", text(&o));
    let o = airlock(&f, &["diff", f.id.as_str(), "nope"]);
    assert!(!o.status.success());
}

#[test]
fn commit_only_hunks_and_conflicts() {
    let f = Fixture::new();
    let old: String = (1..=30).map(|i| format!("{i}\n")).collect();
    for d in [&f.grant, &f.reference] {
        std::fs::write(d.join("t"), &old).unwrap();
        std::fs::write(d.join("u"), b"user\n").unwrap();
    }
    f.snapshot();
    f.agent("sed -i -e 's/^2$/two/' -e 's/^28$/twenty-eight/' t && echo agent > u && echo new > n");
    std::fs::write(f.grant.join("u"), b"user edit\n").unwrap();

    let o = airlock(&f, &["commit", f.id.as_str(), "--hunks", "t:2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(f.grant.join("t")).unwrap(),
        old.replace("28\n", "twenty-eight\n")
    );
    assert!(
        !f.grant.join("n").exists(),
        "--hunks alone commits only that file"
    );

    let o = airlock(&f, &["commit", f.id.as_str()]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "conflicts are reported: {}",
        text(&o)
    );
    assert!(text(&o).contains("conflict"), "{}", text(&o));
    assert_eq!(std::fs::read(f.grant.join("u")).unwrap(), b"user edit\n");
    assert_eq!(std::fs::read(f.grant.join("n")).unwrap(), b"new\n");

    let o = airlock(
        &f,
        &["commit", f.id.as_str(), "--only", "u", "--keep-agent", "u"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(f.grant.join("u")).unwrap(), b"agent\n");

    let o = airlock(&f, &["undo", f.id.as_str()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(f.grant.join("u")).unwrap(), b"user edit\n");
}

#[test]
fn reject_discards_the_upper_layer_and_running_tasks_are_refused() {
    let f = Fixture::new();
    f.setup("echo a > a");
    f.agent("echo b > a && mkdir x && echo y > x/y");
    std::fs::remove_file(f.task.path().join("exit.json")).unwrap();
    // Still running: its owner (this test process) is alive.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    std::fs::write(
        f.task.path().join("owner.json"),
        format!(
            "{{\"pid\":{},\"start\":{start},\"helper_pid\":0,\"helper_start\":0}}",
            std::process::id()
        ),
    )
    .unwrap();
    let o = airlock(&f, &["changes", f.id.as_str()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("still running"), "{}", text(&o));
    let o = airlock(&f, &["commit", f.id.as_str()]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(f.grant.join("a")).unwrap(), b"a\n");
    f.finish_task();
    let o = airlock(&f, &["reject", f.id.as_str()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!f.task.upper(0).exists() && !f.task.work(0).exists());
    assert!(f.task.manifest().exists());
    assert_eq!(std::fs::read(f.grant.join("a")).unwrap(), b"a\n");
    let o = airlock(&f, &["changes", f.id.as_str()]);
    assert!(text(&o).contains("No changes"), "{}", text(&o));
    let o = airlock(&f, &["changes", "no-such-task"]);
    assert!(!o.status.success());
}
