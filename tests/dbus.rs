//! The D-Bus API against a private session bus started by the test:
//! `airlock serve` in a child process, driven with `gdbus` and `busctl`;
//! `airlock run` over the API; the introspection matches
//! data/dbus/io.github.airlock.Supervisor1.xml; a sandboxed task cannot
//! reach the bus; `kill -9` of the service mid-task and mid-commit, then a
//! restart, recovers as specified with an intact database.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{output_within, text, World};

const DEST: &str = "io.github.airlock.Airlock";
const SUP: &str = "/io/github/airlock/Supervisor";

/// A private `dbus-daemon --session`, killed on drop.
struct Bus {
    child: Child,
    address: String,
}

impl Bus {
    fn start(dir: &Path) -> Bus {
        let sock = dir.join("bus");
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .arg(format!("--address=unix:path={}", sock.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("unix:"), "{line:?}");
        Bus {
            child,
            address: line.trim().to_string(),
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A world with its own bus and `airlock serve` on it.
struct Env {
    w: World,
    bus: Bus,
    serve: Option<Child>,
}

impl Env {
    fn new() -> Env {
        let w = World::new();
        let rt = w.path().join("runtime");
        std::fs::create_dir_all(&rt).unwrap();
        let bus = Bus::start(&rt);
        let mut e = Env {
            w,
            bus,
            serve: None,
        };
        e.start_serve(&[]);
        e
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.w.cmd(args);
        c.env("DBUS_SESSION_BUS_ADDRESS", &self.bus.address);
        c
    }

    fn start_serve(&mut self, env: &[(&str, &str)]) {
        let mut c = self.cmd(&["serve"]);
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        self.serve = Some(c.spawn().expect("airlock serve"));
        let start = Instant::now();
        while self
            .try_gdbus(&[
                "call",
                "--dest",
                DEST,
                "--object-path",
                SUP,
                "--method",
                "io.github.airlock.Supervisor1.ListTasks",
            ])
            .is_none()
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "airlock serve did not appear on the bus"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the service as a crash would.
    fn kill9(&mut self) -> String {
        let mut c = self.serve.take().unwrap();
        c.kill().unwrap();
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn tool(&self, tool: &str, args: &[&str]) -> Output {
        let mut c = Command::new(tool);
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus.address)
            .stdin(Stdio::null());
        output_within(c, Duration::from_secs(60))
    }

    fn try_gdbus(&self, args: &[&str]) -> Option<String> {
        let mut all = vec![args[0], "--session"];
        all.extend_from_slice(&args[1..]);
        let o = self.tool("gdbus", &all);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn gdbus(&self, args: &[&str]) -> String {
        let mut all = vec![args[0], "--session"];
        all.extend_from_slice(&args[1..]);
        let o = self.tool("gdbus", &all);
        assert!(o.status.success(), "gdbus {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn busctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--user"];
        all.extend_from_slice(args);
        self.tool("busctl", &all)
    }

    fn submit(&self, policy: &str, argv: &str) -> String {
        let out = self.gdbus(&[
            "call",
            "--dest",
            DEST,
            "--object-path",
            SUP,
            "--method",
            "io.github.airlock.Supervisor1.SubmitTask",
            policy,
            argv,
        ]);
        // (objectpath '/io/github/airlock/Task/…',)
        out.split('\'').nth(1).unwrap().to_string()
    }

    fn list(&self) -> Vec<String> {
        let out = self.gdbus(&[
            "call",
            "--dest",
            DEST,
            "--object-path",
            SUP,
            "--method",
            "io.github.airlock.Supervisor1.ListTasks",
        ]);
        out.split('\'')
            .filter(|s| s.starts_with("/io/"))
            .map(|s| s.to_string())
            .collect()
    }

    /// A task property through busctl: its printed value (`s "running"` → `running`).
    fn prop(&self, path: &str, name: &str) -> String {
        let o = self.busctl(&["get-property", DEST, path, "io.github.airlock.Task1", name]);
        assert!(
            o.status.success(),
            "busctl get-property {name}: {}",
            text(&o)
        );
        let t = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let v = t
            .split_once(' ')
            .map(|(_, v)| v)
            .unwrap_or("")
            .trim_matches('"')
            .to_string();
        v
    }

    fn call(&self, path: &str, method: &str, args: &[&str]) -> Output {
        let mut all = vec!["call", DEST, path, "io.github.airlock.Task1", method];
        all.extend_from_slice(args);
        self.busctl(&all)
    }

    fn wait_state(&self, path: &str, want: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let s = self.prop(path, "State");
            if want.contains(&s.as_str()) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{path} stayed {s}, wanted {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn audit(&self) -> PathBuf {
        self.w.path().join("data/airlock/audit.db")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn project_with(e: &Env, name: &str, content: &str) -> PathBuf {
    let p = e.w.project.join(name);
    std::fs::write(&p, content).unwrap();
    common::chmod(&p, 0o666);
    e.w.project.clone()
}

#[test]
fn submit_list_properties_changes_commit_with_gdbus_and_busctl() {
    let e = Env::new();
    let proj = project_with(&e, "a.txt", "old\n");
    let policy = format!(
        "{{'grants': <[('{}', true)]>, 'memory': <'512M'>, 'timeout': <uint64 120>}}",
        proj.display()
    );
    let path = e.submit(
        &policy,
        "['sh', '-c', 'echo new > a.txt; echo b > b.txt; exit 3']",
    );
    assert!(path.starts_with("/io/github/airlock/Task/"), "{path}");
    assert!(e.list().contains(&path));
    e.wait_state(&path, &["reviewing"]);
    assert_eq!(e.prop(&path, "ExitStatus"), "3");
    assert_eq!(e.prop(&path, "ChangedFiles"), "2");
    assert_eq!(e.prop(&path, "DenialCount"), "0");
    assert!(
        e.prop(&path, "RequestedBy").starts_with(':'),
        "the caller's unique name"
    );
    let id = e.prop(&path, "Id");
    assert_eq!(path.rsplit('/').next().unwrap(), id.replace('-', "_"));
    let o = e.call(&path, "Changes", &[]);
    assert!(
        text(&o).contains("a.txt") && text(&o).contains("b.txt"),
        "{}",
        text(&o)
    );
    // Still nothing in the real folder.
    assert_eq!(
        std::fs::read_to_string(proj.join("a.txt")).unwrap(),
        "old\n"
    );
    let o = e.call(&path, "Commit", &["as", "1", "a.txt"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("partly_committed"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(proj.join("a.txt")).unwrap(),
        "new\n"
    );
    assert!(!proj.join("b.txt").exists());
    assert_eq!(e.prop(&path, "State"), "partly_committed");
    let o = e.call(&path, "Undo", &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(proj.join("a.txt")).unwrap(),
        "old\n"
    );
    let o = e.call(&path, "Reject", &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(e.prop(&path, "State"), "rejected");
    // The audit store saw the same.
    let store = airlock::audit::AuditStore::open(&e.audit()).unwrap();
    let t = store.tasks(&Default::default()).unwrap();
    assert_eq!(t.len(), 1);
    assert!(t[0].requested_by.starts_with(':'));
}

#[test]
fn invalid_policy_keys_are_named_in_the_error() {
    let e = Env::new();
    for (policy, key) in [
        ("{'memory': <'lots'>}", "memory"),
        ("{'grants': <[('relative/dir', true)]>}", "grants"),
        ("{'net': <'sometimes'>}", "net"),
        ("{'colour': <'blue'>}", "colour"),
        ("{'pids': <'many'>}", "pids"),
    ] {
        let o = e.tool(
            "gdbus",
            &[
                "call",
                "--session",
                "--dest",
                DEST,
                "--object-path",
                SUP,
                "--method",
                "io.github.airlock.Supervisor1.SubmitTask",
                policy,
                "['true']",
            ],
        );
        assert!(!o.status.success());
        let t = text(&o);
        assert!(
            t.contains("InvalidArgs") && t.contains(&format!("policy key {key}")),
            "{t}"
        );
    }
    assert!(e.list().is_empty(), "no task was created by bad requests");
}

#[test]
fn kill_a_task_over_the_bus_and_see_its_signals() {
    let e = Env::new();
    // Watch the task signals while it runs.
    let mut mon = Command::new("gdbus");
    mon.args(["monitor", "--session", "--dest", DEST])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("DBUS_SESSION_BUS_ADDRESS", &e.bus.address)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut mon = mon.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let path = e.submit("{}", "['sh', '-c', 'sleep 300']");
    e.wait_state(&path, &["running"]);
    let o = e.call(&path, "Kill", &[]);
    assert!(o.status.success(), "{}", text(&o));
    e.wait_state(&path, &["killed"]);
    assert_eq!(e.prop(&path, "ExitStatus"), "137");
    std::thread::sleep(Duration::from_millis(300));
    let _ = mon.kill();
    let out = mon.wait_with_output().unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("io.github.airlock.Task1.StateChanged ('running', 'killed')"),
        "{t}"
    );
    assert!(t.contains("io.github.airlock.Task1.Event"), "{t}");
    assert!(t.contains("org.freedesktop.DBus.Properties.PropertiesChanged ('io.github.airlock.Task1', {'State': <'killed'>}"), "{t}");
    // Killing it again is an error, and `airlock kill` says so too.
    let o = e.call(&path, "Kill", &[]);
    assert!(!o.status.success());
    let id = e.prop(&path, "Id");
    let o = output_within(e.cmd(&["kill", &id]), Duration::from_secs(60));
    assert!(!o.status.success(), "{}", text(&o));
}

#[test]
fn airlock_run_goes_through_the_running_app() {
    let e = Env::new();
    let grant = format!("{}:rw", e.w.project.display());
    let o = output_within(
        e.cmd(&[
            "run",
            "--json-events",
            "-",
            "--grant",
            &grant,
            "--",
            "sh",
            "-c",
            "echo from-agent >&2; echo x > changed.txt; exit 5",
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(text(&o).contains("the task runs there"), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    // The agent's captured output is shown once it has ended, before the
    // summary line, and on stderr: stdout is the events' own.
    let stderr = String::from_utf8_lossy(&o.stderr);
    let shown = stderr.find("from-agent\n");
    let summary = stderr.find("exited with status 5");
    assert!(
        shown.is_some() && summary.is_some() && shown < summary,
        "{stderr}"
    );
    // Once: a task with changes ends twice (exited, then reviewing), and
    // output printed again after the summary could erase it (pass 9B).
    assert_eq!(stderr.matches("from-agent").count(), 1, "{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().any(|e| e["type"] == "exited"), "{stdout}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
    let paths = e.list();
    assert_eq!(paths.len(), 1);
    assert!(e.prop(&paths[0], "RequestedBy").starts_with(':'));
    // `airlock tasks` reads the app.
    let o = output_within(e.cmd(&["tasks", "--json"]), Duration::from_secs(60));
    let t: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(t["exit_status"], 5);
    assert_eq!(t["state"], "reviewing");
    // --local runs here even though the app is running: no new task there.
    let o = output_within(
        e.cmd(&["run", "--local", "--", "sh", "-c", "exit 6"]),
        Duration::from_secs(120),
    );
    assert_eq!(o.status.code(), Some(6));
    assert!(!text(&o).contains("the task runs there"));
    assert_eq!(e.list().len(), 1);
}

#[test]
fn a_sandboxed_task_cannot_reach_the_bus() {
    let e = Env::new();
    let before = e.list();
    let call = format!(
        "gdbus call --session --dest {DEST} --object-path {SUP} --method io.github.airlock.Supervisor1.SubmitTask \"{{}}\" \"['touch', '/tmp/escaped']\" && echo GDBUS-OK; \
         busctl --user call {DEST} {SUP} io.github.airlock.Supervisor1 ListTasks && echo BUSCTL-OK; \
         DBUS_SESSION_BUS_ADDRESS='{addr}' gdbus call --session --dest {DEST} --object-path {SUP} --method io.github.airlock.Supervisor1.ListTasks && echo ADDR-OK; \
         echo tried",
        addr = e.bus.address
    );
    // The caller has the bus address in its environment.
    let o = output_within(
        e.cmd(&["run", "--local", "--", "sh", "-c", &call]),
        Duration::from_secs(120),
    );
    let t = text(&o);
    assert!(t.contains("tried"), "{t}");
    assert!(
        !t.contains("GDBUS-OK") && !t.contains("BUSCTL-OK") && !t.contains("ADDR-OK"),
        "the sandbox reached the bus:\n{t}"
    );
    // And the supervisor saw no call: no new task.
    assert_eq!(e.list(), before);
}

/// Interface → member names in an introspection XML.
fn names(xml: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut iface = String::new();
    for tag in xml.split('<').skip(1) {
        let kind = tag.split([' ', '>', '/']).next().unwrap_or("");
        let name = tag
            .split("name=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        match (kind, name) {
            ("interface", Some(n)) => iface = n.to_string(),
            ("method" | "signal" | "property", Some(n))
                if iface.starts_with("io.github.airlock.") =>
            {
                out.insert(format!("{iface} {kind} {n}"));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn introspection_matches_the_shipped_xml() {
    let e = Env::new();
    let path = e.submit("{}", "['true']");
    let mut live = names(&e.gdbus(&["introspect", "--dest", DEST, "--object-path", SUP, "--xml"]));
    live.extend(names(&e.gdbus(&[
        "introspect",
        "--dest",
        DEST,
        "--object-path",
        &path,
        "--xml",
    ])));
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/dbus/io.github.airlock.Supervisor1.xml"
    ))
    .unwrap();
    assert_eq!(live, names(&file));
    assert!(live.contains("io.github.airlock.Task1 property ExitStatus"));
}

/// A task that changes `x.txt` in a new project and then sleeps, seen
/// running: (project, object path, task folder, helper pid).
fn start_writing_task(e: &Env) -> (PathBuf, String, PathBuf, u32) {
    let proj = project_with(e, "x.txt", "x\n");
    let policy = format!("{{'grants': <[('{}', true)]>}}", proj.display());
    let path = e.submit(
        &policy,
        "['sh', '-c', 'echo changed > x.txt; touch ready; sleep 300']",
    );
    let id = e.prop(&path, "Id");
    let task_dir = e.w.state().join("airlock/tasks").join(&id);
    let start = Instant::now();
    while !task_dir.join("upper/0/ready").exists() {
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(50));
    }
    let helper: u32 = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(task_dir.join("owner.json")).unwrap(),
    )
    .unwrap()["helper_pid"]
        .as_u64()
        .unwrap() as u32;
    (proj, path, task_dir, helper)
}

#[test]
fn kill9_mid_task_then_restart_marks_it_interrupted_with_changes_kept() {
    let mut e = Env::new();
    let (proj, path, task_dir, helper) = start_writing_task(&e);
    e.kill9();
    // The sandbox died with the service (parent-death signal).
    let start = Instant::now();
    while Path::new(&format!("/proc/{helper}")).exists()
        && !std::fs::read_to_string(format!("/proc/{helper}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the sandbox outlived the service"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A folder nobody recorded is reported, never deleted.
    let orphan = e.w.state().join("airlock/tasks/20200101-000000-dead");
    std::fs::create_dir_all(orphan.join("upper/0")).unwrap();
    e.start_serve(&[]);
    assert_eq!(e.prop(&path, "State"), "interrupted");
    assert_eq!(e.prop(&path, "ChangedFiles"), "2");
    assert_eq!(
        std::fs::read_to_string(task_dir.join("upper/0/x.txt")).unwrap(),
        "changed\n"
    );
    assert!(orphan.exists());
    let stderr = e.kill9();
    assert!(
        stderr.contains("20200101-000000-dead") && stderr.contains("no record"),
        "{stderr}"
    );
    assert!(stderr.contains("interrupted"), "{stderr}");
    let store = airlock::audit::AuditStore::open(&e.audit()).unwrap();
    store.integrity_check().unwrap();
    let t = store.tasks(&Default::default()).unwrap();
    assert_eq!(t[0].state, airlock::task::TaskState::Interrupted);
    // The interrupted task can still be reviewed and committed.
    e.start_serve(&[]);
    let o = e.call(&path, "Commit", &["as", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(proj.join("x.txt")).unwrap(),
        "changed\n"
    );
}

/// The session ends: its bus goes away and nobody can reach the service.
/// `airlock serve` stops as on SIGTERM (its running task is killed, every
/// process of it gone, its changes kept for review) instead of lingering.
#[test]
fn the_service_stops_when_its_bus_goes_away() {
    let mut e = Env::new();
    let (_, _, task_dir, helper) = start_writing_task(&e);
    let _ = e.bus.child.kill();
    let _ = e.bus.child.wait();
    let mut serve = e.serve.take().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = serve.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = serve.kill();
            panic!("airlock serve outlived its session bus");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("session bus went away"), "{stderr}");
    let alive =
        std::fs::read_to_string(format!("/proc/{helper}/stat")).is_ok_and(|s| !s.contains(") Z"));
    assert!(!alive, "the task's sandbox outlived the service");
    let store = airlock::audit::AuditStore::open(&e.audit()).unwrap();
    let t = store.tasks(&Default::default()).unwrap();
    // Killed, and waiting for review since it changed a file.
    assert_eq!(t[0].state, airlock::task::TaskState::Reviewing, "{t:?}");
    assert_eq!(t[0].exit.map(|x| x.code), Some(137), "{t:?}");
    assert_eq!(
        std::fs::read_to_string(task_dir.join("upper/0/x.txt")).unwrap(),
        "changed\n"
    );
}

#[test]
fn kill9_mid_commit_then_restart_rolls_the_commit_back() {
    let mut e = Env::new();
    let proj = project_with(&e, "y.txt", "before\n");
    let policy = format!("{{'grants': <[('{}', true)]>}}", proj.display());
    let path = e.submit(
        &policy,
        "['sh', '-c', 'echo after > y.txt; echo n > new.txt']",
    );
    e.wait_state(&path, &["reviewing"]);
    e.kill9();
    // The commit stops after its first durable step, as a kill there would
    // leave it (the workspace's crash hook); then the service is killed.
    e.start_serve(&[("AIRLOCK_COMMIT_STOP_AFTER", "2")]);
    let o = e.call(&path, "Commit", &["as", "0"]);
    assert!(!o.status.success(), "{}", text(&o));
    let id = e.prop(&path, "Id");
    let task_dir = e.w.state().join("airlock/tasks").join(&id);
    assert!(task_dir.join("commit.journal").exists());
    e.kill9();
    e.start_serve(&[]);
    // The journal was resolved: the commit is either whole or absent.
    assert!(!task_dir.join("commit.journal").exists());
    let y = std::fs::read_to_string(proj.join("y.txt")).unwrap();
    let n = proj.join("new.txt").exists();
    assert!(
        (y == "before\n" && !n) || (y == "after\n" && n),
        "half a commit: y={y:?} new={n}"
    );
    let stderr = e.kill9();
    assert!(stderr.contains("interrupted commit"), "{stderr}");
    let store = airlock::audit::AuditStore::open(&e.audit()).unwrap();
    store.integrity_check().unwrap();
    // And the task can be committed for real now.
    e.start_serve(&[]);
    let o = e.call(&path, "Commit", &["as", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(proj.join("y.txt")).unwrap(),
        "after\n"
    );
    assert!(proj.join("new.txt").exists());
}

#[test]
fn ctrl_c_on_a_remote_run_kills_the_task_in_the_app() {
    let e = Env::new();
    let mut c = e.cmd(&["run", "--", "sh", "-c", "sleep 300"]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    let mut run = c.spawn().unwrap();
    let start = Instant::now();
    let path = loop {
        if let Some(p) = e.list().pop() {
            if e.prop(&p, "State") == "running" {
                break p;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the task did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "airlock run did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(137));
    assert_eq!(e.prop(&path, "State"), "killed");
}

#[test]
fn a_second_supervisor_leaves_the_apps_live_tasks_alone() {
    let e = Env::new();
    let a = e.submit("{}", "['sh', '-c', 'sleep 300']");
    let b = e.submit("{}", "['sh', '-c', 'sleep 300']");
    let c = e.submit("{}", "['sh', '-c', 'sleep 300']");
    e.wait_state(&a, &["running"]);
    e.wait_state(&b, &["running"]);
    assert_eq!(e.prop(&c, "State"), "queued");
    // `airlock run --local` starts its own supervisor, with recovery, on the
    // same database and task folders.
    let o = output_within(
        e.cmd(&["run", "--local", "--", "true"]),
        Duration::from_secs(120),
    );
    assert!(o.status.success(), "{}", text(&o));
    let store = airlock::audit::AuditStore::open(&e.audit()).unwrap();
    let states: Vec<_> = store
        .tasks(&Default::default())
        .unwrap()
        .into_iter()
        .map(|t| t.state.as_str().to_string())
        .collect();
    assert_eq!(states[..3], ["running", "running", "queued"], "{states:?}");
    for p in [&a, &b, &c] {
        assert!(e.call(p, "Kill", &[]).status.success());
    }
}

/// A task allowed unix sockets, shown the bus's socket in a grant and told
/// its address, still cannot drive the service: it runs in a user
/// namespace of its own, and every method refuses such callers. Decided on
/// the host: the service has no task afterwards.
#[test]
fn a_sandboxed_task_cannot_drive_the_service() {
    let e = Env::new();
    let rt = e.w.path().join("runtime");
    let victim = e.w.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    common::chmod(&victim, 0o777);
    let submit = format!(
        "gdbus call --session --dest {DEST} --object-path {SUP} --method io.github.airlock.Supervisor1.SubmitTask \"{{'grants': <[('{v}', true)]>}}\" \"['sh', '-c', 'echo PWNED > {v}/x']\"",
        v = victim.display()
    );
    let list = format!(
        "gdbus call --session --dest {DEST} --object-path {SUP} --method io.github.airlock.Supervisor1.ListTasks"
    );
    let o = e.w.run(
        &[
            "--local",
            "--allow-unix-sockets",
            "--grant",
            &format!("{}:ro", rt.display()),
            "--env",
            &format!("DBUS_SESSION_BUS_ADDRESS={}", e.bus.address),
        ],
        &format!("{submit} 2>&1; echo submit=$?; {list} 2>&1; echo list=$?"),
    );
    let t = text(&o);
    assert!(t.contains("submit=1") && t.contains("list=1"), "{t}");
    if !common::is_root() {
        // As root the agent's uid differs and the bus itself turns it away;
        // as the user it reaches the service, which refuses it.
        assert!(t.contains("refused"), "{t}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(e.list().is_empty(), "the task submitted a task: {t}");
    assert!(!victim.join("x").exists(), "{t}");
}

/// The bus our own environment names is hidden from a task even when a
/// grant holds its socket and the task may use unix sockets: it could
/// otherwise read the service's properties or eavesdrop on the bus.
#[test]
fn the_session_bus_socket_is_hidden_inside_a_grant() {
    let e = Env::new();
    let rt = e.w.path().join("runtime");
    let mut c = e.cmd(&[
        "run",
        "--local",
        "--allow-unix-sockets",
        "--grant",
        &format!("{}:ro", rt.display()),
        "--env",
        &format!("DBUS_SESSION_BUS_ADDRESS={}", e.bus.address),
        "--",
        "sh",
        "-c",
        &format!(
            "ls -l {}/bus 2>&1; gdbus introspect --session --dest {DEST} --object-path {SUP} 2>&1; echo rc=$?",
            rt.display()
        ),
    ]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let o = common::output_within(c, Duration::from_secs(120));
    let t = text(&o);
    assert!(t.contains("rc=1"), "{t}");
    assert!(!t.contains("io.github.airlock.Supervisor1"), "{t}");
}
