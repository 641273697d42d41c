//! Agent profiles: the shipped examples load, `airlock run --agent` uses a
//! profile (command, grants, persistent home), and a broken profile is
//! reported with file, line and column.

mod common;

use std::time::Duration;

use airlock::policy::profile;
use airlock::policy::{Access, NetMode};
use common::{output_within, text, World};

#[test]
fn every_shipped_example_loads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/data/agents");
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        let prof = profile::load_file(&name, &p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!prof.command.is_empty());
        names.push((name, prof));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let by = |n: &str| &names.iter().find(|(x, _)| x == n).unwrap().1;
    let coder = by("coding-agent");
    assert_eq!(coder.policy.grants[0].access, Access::Rw);
    assert_eq!(coder.policy.net.mode, NetMode::Allow);
    assert!(coder
        .policy
        .net
        .allow_hosts
        .iter()
        .any(|h| h == "crates.io"));
    let docs = by("document-organiser");
    assert!(docs.policy.grants[0].path.ends_with("Documents"));
    assert_eq!(docs.policy.net.mode, NetMode::None);
    let research = by("read-only-researcher");
    assert!(research
        .policy
        .grants
        .iter()
        .all(|g| g.access == Access::Ro));
    assert_eq!(research.policy.net.mode, NetMode::Ask);
    assert_eq!(names.len(), 3);
}

fn write_profile(w: &World, name: &str, text: &str) {
    let dir = w.path().join("config/airlock/agents");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

#[test]
fn run_with_an_agent_profile() {
    let w = World::new();
    write_profile(
        &w,
        "writer",
        &format!(
            "command = [\"sh\", \"-c\"]\npersistent_home = true\n\n[[grant]]\npath = \"{}\"\naccess = \"rw\"\n\n[env]\nGREETING = \"hello\"\n",
            w.project.display()
        ),
    );
    let run = |script: &str| {
        output_within(
            w.cmd(&["run", "--local", "--agent", "writer", "--", script]),
            Duration::from_secs(120),
        )
    };
    let o = run("echo $GREETING > note.txt; echo remembered > $HOME/memo; pwd");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&w.project.display().to_string()),
        "{}",
        text(&o)
    );
    // The write waits for review in the task's layer.
    assert!(!w.project.join("note.txt").exists());
    let task = w.tasks().pop().unwrap();
    assert_eq!(
        std::fs::read_to_string(task.join("upper/0/note.txt")).unwrap(),
        "hello\n"
    );
    // The agent's home persists from one task to the next.
    let o = run("cat $HOME/memo");
    assert!(text(&o).contains("remembered"), "{}", text(&o));
    assert!(w.state().join("airlock/agents/writer/home/memo").exists());
}

#[test]
fn a_broken_profile_names_file_line_and_column() {
    let w = World::new();
    write_profile(
        &w,
        "broken",
        "command = [\"true\"]\n\n[limits]\nmemory = \"lots\"\n",
    );
    let o = output_within(
        w.cmd(&["run", "--local", "--agent", "broken"]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(125));
    let t = text(&o);
    assert!(
        t.contains("agents/broken.toml:4:10:") && t.contains("lots"),
        "{t}"
    );
    write_profile(&w, "typo", "command = [\"true\"]\nnetwrok = 1\n");
    let o = output_within(
        w.cmd(&["run", "--local", "--agent", "typo"]),
        Duration::from_secs(60),
    );
    let t = text(&o);
    assert!(
        t.contains("agents/typo.toml:2:1:") && t.contains("netwrok"),
        "{t}"
    );
    let o = output_within(
        w.cmd(&["run", "--local", "--agent", "missing"]),
        Duration::from_secs(60),
    );
    assert!(text(&o).contains("missing.toml"), "{}", text(&o));
}

/// A persistent home outlives its tasks, so what an agent keeps there
/// counts against `--max-upper` like its writes in grants: a task that
/// fills its home is stopped, and the next one does not start in a home
/// already over the limit until the user has cleared it.
#[test]
fn a_persistent_home_counts_against_max_upper() {
    let w = World::new();
    write_profile(
        &w,
        "hoarder",
        "command = [\"sh\", \"-c\"]\npersistent_home = true\n\n[limits]\nmax_upper = \"10M\"\n",
    );
    let run = |script: &str| {
        output_within(
            w.cmd(&["run", "--local", "--agent", "hoarder", "--", script]),
            Duration::from_secs(120),
        )
    };
    let home = w.state().join("airlock/agents/hoarder/home");
    let o = run("for i in 1 2 3 4 5 6 7 8; do head -c 4000000 /dev/zero > $HOME/big$i; sleep 0.3; done; echo not stopped");
    let t = text(&o);
    let kept: u64 = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        !o.status.success() && !t.contains("not stopped") && kept < 20_000_000,
        "{kept} bytes went into a home under --max-upper 10M: {t}"
    );
    assert!(t.contains("more than the 10 MiB allowed"), "{t}");
    // The next task is refused, naming the home and what to do.
    let o = run("echo started");
    let t = text(&o);
    assert!(
        !o.status.success() && !t.contains("started") && t.contains(&home.display().to_string()),
        "{t}"
    );
    for e in std::fs::read_dir(&home).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let o = run("echo started");
    assert!(
        o.status.success() && text(&o).contains("started"),
        "{}",
        text(&o)
    );
    // A folder the last task locked (as the user, the watchdog stops that
    // task, since it cannot measure the folder) is opened again for the
    // next one rather than shutting the agent out.
    run("mkdir $HOME/locked && echo x > $HOME/locked/f && chmod 000 $HOME/locked; sleep 1");
    let o = run("cat $HOME/locked/f 2>/dev/null; echo started");
    assert!(
        o.status.success() && text(&o).contains("started"),
        "{}",
        text(&o)
    );
}
