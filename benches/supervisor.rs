//! The supervisor's event path and its idle footprint.
//!
//! `cargo bench --bench supervisor` (release) measures:
//! - events per second from `SupervisorHandle::report` through the event
//!   bus into the SQLite audit store (batched writer, coalesced denials),
//!   until the store has them all;
//! - the same with the D-Bus service on a private `dbus-daemon`, one client
//!   receiving every `Event` signal;
//! - the resident memory of `airlock serve` once started and idle.
//!
//! It prints a table and writes it into `docs/benchmarks.md` under
//! `## Supervisor` (`--no-write` only prints).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock::event::EventKind;
use airlock::policy::{Access, Grant, Policy};
use airlock::supervisor::{Config, OutputMode, Supervisor, SupervisorHandle, TaskRequest};
use airlock::task::{TaskId, TaskState};
use zbus::export::futures_util::StreamExt;

const EVENTS: u64 = 200_000;
const RUNS: usize = 3;

fn denial(i: u64) -> EventKind {
    let t = 1_000 + i;
    EventKind::SyscallDenied {
        syscall: ["ptrace", "mount", "bpf", "keyctl", "unshare"][(i % 5) as usize].into(),
        detail: Some(format!("arg {}", i % 10)),
        pid: 100,
        count: 1,
        first_ms: t,
        last_ms: t,
    }
}

fn mixed(i: u64) -> EventKind {
    if i % 4 == 0 {
        EventKind::Warning {
            message: format!("note {i}"),
        }
    } else {
        denial(i)
    }
}

/// A supervisor in `dir` and a finished task to report events on (a plan
/// that fails at once: no sandbox is needed to measure the event path).
fn setup(dir: &Path) -> (SupervisorHandle, TaskId) {
    let config = Config {
        concurrency: 2,
        retention_days: 0,
        audit_path: dir.join("audit.db"),
        tasks_dir: dir.join("tasks"),
        helper_exe: PathBuf::from(env!("CARGO_BIN_EXE_airlock")),
    };
    let h = Supervisor::start(config).expect("supervisor");
    let mut policy = Policy::default();
    policy.grants.push(Grant {
        path: "/nonexistent/airlock-bench".into(),
        access: Access::Ro,
    });
    let id = h
        .submit_blocking(TaskRequest {
            argv: vec!["true".into()],
            policy,
            requested_by: "bench".into(),
            output: OutputMode::Capture,
            helper: None,
        })
        .expect("submit");
    while h.task(&id).map(|t| t.state) != Some(TaskState::Failed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    h.flush_audit_blocking();
    (h, id)
}

/// Events per second into the store, with one in-process subscriber.
fn through_bus(make: fn(u64) -> EventKind) -> f64 {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (h, id) = setup(dir.path());
    let mut sub = h.subscribe();
    // The reader stops at the last event; if it fell behind, the bus told it
    // so with a warning (counted) instead of the lost events.
    let last = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let target = last.clone();
    let task = id.clone();
    let reader = std::thread::spawn(move || {
        let mut lagged = 0u64;
        while let Some(ev) = sub.blocking_recv() {
            if ev.task != task {
                lagged += 1;
                continue;
            }
            if ev.seq >= target.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
        }
        lagged
    });
    let start = Instant::now();
    let mut seq = 0;
    for i in 0..EVENTS {
        seq = h.report(&id, make(i)).expect("report");
    }
    last.store(seq, std::sync::atomic::Ordering::SeqCst);
    h.flush_audit_blocking();
    let secs = start.elapsed().as_secs_f64();
    // One more event wakes a reader that already passed `seq` unknowingly.
    let _ = h.report(&id, make(0));
    if let Ok(lagged) = reader.join() {
        if lagged > 0 {
            eprintln!("supervisor bench: the subscriber fell behind {lagged} times (told by a warning each time)");
        }
    }
    EVENTS as f64 / secs
}

/// Events per second into the store and out as D-Bus signals to a client
/// that receives them all.
fn through_dbus() -> f64 {
    let dir = tempfile::tempdir().expect("temporary folder");
    // A bus of its own per run: the service keeps its name while the
    // supervisor lives.
    let (mut daemon, address) = dbus_daemon(dir.path());
    let address = address.as_str();
    let (h, id) = setup(dir.path());
    let rt = h.runtime().clone();
    let conn = rt
        .block_on(async {
            let c = zbus::connection::Builder::address(address)?.build().await?;
            Ok::<_, zbus::Error>(c)
        })
        .expect("connect");
    rt.block_on(async { airlock::api::service::serve(h.clone(), &conn).await })
        .expect("serve");
    let client = rt
        .block_on(async { zbus::connection::Builder::address(address)?.build().await })
        .expect("client");
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("io.github.airlock.Task1")
        .expect("rule")
        .member("Event")
        .expect("rule")
        .build();
    let mut stream = rt
        .block_on(zbus::MessageStream::for_match_rule(
            rule,
            &client,
            Some(1 << 20),
        ))
        .expect("match rule");
    let n = EVENTS / 4;
    let counter = rt.spawn(async move {
        let mut got = 0u64;
        while got < n {
            match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                Ok(Some(Ok(_))) => got += 1,
                _ => break,
            }
        }
        got
    });
    let start = Instant::now();
    for i in 0..n {
        h.report(&id, mixed(i)).expect("report");
    }
    h.flush_audit_blocking();
    let got = rt.block_on(counter).unwrap_or(0);
    let secs = start.elapsed().as_secs_f64();
    if got < n {
        eprintln!("supervisor bench: the D-Bus client received {got} of {n} signals");
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    got as f64 / secs
}

fn dbus_daemon(dir: &Path) -> (std::process::Child, String) {
    let mut child = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .arg(format!("--address=unix:path={}", dir.join("bus").display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    BufReader::new(out).read_line(&mut line).expect("address");
    (child, line.trim().to_string())
}

/// Resident memory of `airlock serve` one second after it owns its name.
fn idle_rss_kib(address: &str) -> u64 {
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut serve = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .arg("serve")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("DBUS_SESSION_BUS_ADDRESS", address)
        .stderr(Stdio::piped())
        .spawn()
        .expect("airlock serve");
    let mut line = String::new();
    let err = serve.stderr.take().expect("stderr");
    let mut r = BufReader::new(err);
    while r.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("serving") {
        line.clear();
    }
    std::thread::sleep(Duration::from_secs(1));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", serve.id())).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let _ = serve.kill();
    let _ = serve.wait();
    kib
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Replaces our section of `docs/benchmarks.md` (from `## Supervisor` to
/// the next `## ` heading), leaving the other sections as they are.
fn write_section(file: &Path, section: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(file).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let mut out = String::new();
    let mut lines = old.lines().peekable();
    let mut written = false;
    while let Some(line) = lines.next() {
        if line.trim_end() == "## Supervisor" {
            out.push_str(section);
            written = true;
            while lines.peek().is_some_and(|l| !l.starts_with("## ")) {
                lines.next();
            }
            if lines.peek().is_some() {
                out.push('\n');
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !written {
        if !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(section);
    }
    std::fs::write(file, out)
}

fn main() {
    let write = !std::env::args().any(|a| a == "--no-write");
    let bus_dir = tempfile::tempdir().expect("temporary folder");
    let (mut daemon, address) = dbus_daemon(bus_dir.path());
    eprintln!("supervisor bench: denials through the event bus …");
    let loop_rate = median((0..RUNS).map(|_| through_bus(denial)).collect());
    eprintln!("supervisor bench: mixed events through the event bus …");
    let mixed_rate = median((0..RUNS).map(|_| through_bus(mixed)).collect());
    eprintln!("supervisor bench: mixed events through D-Bus …");
    let dbus_rate = median((0..RUNS).map(|_| through_dbus()).collect());
    eprintln!("supervisor bench: idle memory …");
    let rss = idle_rss_kib(&address);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let section = format!(
        "## Supervisor\n\n\
         `cargo bench --bench supervisor` (release), 2 cores, median of {RUNS} runs, a fresh \
         SQLite database (WAL) per run. Events enter with `SupervisorHandle::report` (what the \
         monitor and the proxy use), get their sequence number, go to one in-process subscriber \
         and to the audit writer, which writes them in batches; the clock stops when the store \
         has them all. Target: ≥ 50,000 events/s.\n\n\
         | path | events | events/s |\n|---|---|---|\n\
         | event bus → SQLite, a looping agent (denials of 10 kinds, coalesced) | {EVENTS} | {loop_rate:.0} |\n\
         | event bus → SQLite, mixed (1 in 4 a new row, the rest coalesced) | {EVENTS} | {mixed_rate:.0} |\n\
         | event bus → SQLite and out as D-Bus `Event` signals to one client (private dbus-daemon) | {} | {dbus_rate:.0} |\n\n\
         | idle `airlock serve` (supervisor + D-Bus service, no task) | resident memory |\n|---|---|\n\
         | after start | {:.1} MiB |\n",
        EVENTS / 4,
        rss as f64 / 1024.0
    );
    println!("{section}");
    if write {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
        match write_section(&file, &section) {
            Ok(()) => eprintln!("written to {}", file.display()),
            Err(e) => eprintln!("{}: {e}", file.display()),
        }
    }
}
