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

const SECRET: &str = "AIRLOCK-HOME-LINK-SECRET-7d1f";

/// A persistent home is a folder the agent writes, and grants nested in
/// `$HOME` are mounted in it. Links an earlier task left there must not
/// send a grant elsewhere (so that a hidden path inside it is no longer
/// found and covered), nor make the sandbox's set-up create folders or
/// files outside, nor truncate a file. Decided on the host: the secret was
/// not printed, the outside folder and file are as they were.
#[test]
fn escape_links_left_in_a_persistent_home_redirect_no_mount() {
    let w = World::new();
    let project = w.home.join("src/proj");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("notes.txt"), "notes\n").unwrap();
    std::fs::write(project.join(".env"), SECRET).unwrap();
    let victim = w.outside.join("victim.txt");
    std::fs::write(&victim, "keep me\n").unwrap();
    for p in [w.home.join("src"), project.clone()] {
        common::chmod(&p, 0o755);
    }
    for p in [
        project.join("notes.txt"),
        project.join(".env"),
        victim.clone(),
    ] {
        common::chmod(&p, 0o666);
    }
    std::fs::create_dir_all(w.home.join("cfg")).unwrap();
    common::chmod(&w.home.join("cfg"), 0o755);
    std::fs::write(w.home.join("cfg/config"), "[core]\n").unwrap();
    common::chmod(&w.home.join("cfg/config"), 0o644);
    write_profile(
        &w,
        "linker",
        "command = [\"sh\", \"-c\"]\npersistent_home = true\ndeny = [\"~/src/proj/.env\"]\n\n[[grant]]\npath = \"~/src/proj\"\naccess = \"ro\"\n\n[[grant]]\npath = \"~/cfg/config\"\naccess = \"ro\"\n",
    );
    let run = |script: &str| {
        output_within(
            w.cmd(&["run", "--local", "--agent", "linker", "--", script]),
            Duration::from_secs(60),
        )
    };
    let home = w.state().join("airlock/agents/linker/home");
    // A first task sees the hidden file covered.
    let o = run("cat ~/src/proj/notes.txt; cat ~/src/proj/.env; echo done");
    assert!(
        text(&o).contains("notes") && !text(&o).contains(SECRET),
        "{}",
        text(&o)
    );
    let attempts = [
        // A chain through a hidden folder: covering ~/.aws would cut it,
        // and the grant would have landed on ~/Q/proj with .env unhidden.
        "mv ~/src ~/src.old && mkdir -p ~/.aws ~/Q/proj && ln -s ../Q ~/.aws/y && ln -s .aws/y ~/src",
        // A link out of the home: the mount point would be made there.
        &format!("mv ~/src ~/src.old && ln -s {} ~/src", w.outside.display()),
        // A file grant's mount point as a link to a file outside.
        &format!(
            "mv ~/cfg ~/cfg.old; mkdir ~/cfg && ln -s {} ~/cfg/config",
            victim.display()
        ),
    ];
    for plant in attempts {
        // As the user would after such a refusal: a clean home.
        let _ = std::fs::remove_dir_all(&home);
        let o = run(&format!("{plant}; echo planted"));
        assert!(text(&o).contains("planted"), "{plant}: {}", text(&o));
        let o = run("cat ~/Q/proj/.env ~/src/proj/.env 2>&1; echo ran");
        let t = text(&o);
        assert!(
            !t.contains(SECRET),
            "{plant}: the hidden file was read: {t}"
        );
        // Refused, naming the link in the home so the user can remove it.
        // (As root the agent's home is /home/airlock, not the user's: the
        // grants are not in it, and the links lead nowhere that matters.)
        if !common::is_root() {
            assert!(
                !o.status.success() && t.contains(&home.display().to_string()),
                "{plant}: {t}"
            );
        }
        assert!(
            !w.outside.join("proj").exists(),
            "{plant}: a mount point was made outside the home"
        );
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "keep me\n",
            "{plant}: the file outside was changed"
        );
    }
}

/// Tasks of one agent with a persistent home take turns: one running
/// beside the start of another could move the home's folders while the
/// second sandbox's mounts and hidden paths are placed. The second is
/// refused, naming the first; once that has ended, it runs.
#[test]
fn tasks_of_an_agent_with_a_persistent_home_take_turns() {
    let w = World::new();
    write_profile(
        &w,
        "single",
        "command = [\"sh\", \"-c\"]\npersistent_home = true\n",
    );
    let first = w
        .cmd(&[
            "run",
            "--local",
            "--agent",
            "single",
            "--",
            "sleep 4; echo first-done",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the first task has its home.
    let lock = w.state().join("airlock/agents/single/lock");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&lock)
        .unwrap_or_default()
        .is_empty()
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let holder = std::fs::read_to_string(&lock).unwrap();
    let o = output_within(
        w.cmd(&[
            "run",
            "--local",
            "--agent",
            "single",
            "--",
            "echo second-ran",
        ]),
        Duration::from_secs(30),
    );
    let t = text(&o);
    assert!(
        !o.status.success() && !t.contains("second-ran") && t.contains(holder.trim()),
        "{t}"
    );
    let out = first.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("first-done"));
    let o = output_within(
        w.cmd(&[
            "run",
            "--local",
            "--agent",
            "single",
            "--",
            "echo second-ran",
        ]),
        Duration::from_secs(30),
    );
    assert!(
        o.status.success() && text(&o).contains("second-ran"),
        "{}",
        text(&o)
    );
}
