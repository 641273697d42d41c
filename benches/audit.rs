//! Events per second the audit store sustains, with coalescing.
//!
//! `cargo bench --bench audit` runs each scenario several times on a fresh
//! database in a temporary folder (same disk as `$TMPDIR`), prints a table
//! and writes it into `docs/benchmarks.md` under `## Audit store`
//! (`--no-write` only prints). Events are built before the clock starts:
//! the numbers are the store's, not serde's or the allocator's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use airlock::audit::AuditStore;
use airlock::event::{Event, EventKind, EVENT_VERSION};
use airlock::policy::Policy;
use airlock::task::{TaskId, TaskManifest};

const RUNS: usize = 5;

struct Scenario {
    name: &'static str,
    what: &'static str,
    events: u64,
    batch: usize,
    make: fn(&TaskId, u64) -> EventKind,
}

fn denial(i: u64, keys: u64) -> EventKind {
    let t = 1_000 + i;
    EventKind::SyscallDenied {
        syscall: ["ptrace", "mount", "bpf", "keyctl", "unshare"][(i % 5) as usize].into(),
        detail: Some(format!("arg {}", i % keys)),
        pid: 100 + (i % 7) as u32,
        count: 1,
        first_ms: t,
        last_ms: t,
    }
}

fn looping(_: &TaskId, i: u64) -> EventKind {
    denial(i, 10)
}

fn mixed(_: &TaskId, i: u64) -> EventKind {
    match i % 10 {
        0 => EventKind::Warning {
            message: format!("note {i}"),
        },
        1 => EventKind::Flow {
            host: "api.example.com".into(),
            port: 443,
            address: Some("192.0.2.1".into()),
            protocol: "connect".into(),
            decision: "allow".into(),
            reason: "allow-list".into(),
            bytes_out: 1_000,
            bytes_in: 20_000,
            duration_ms: 40,
        },
        2 | 3 => EventKind::FileAttempt {
            op: "open".into(),
            path: format!("/home/u/.ssh/key{}", i % 100),
            denied: true,
            pid: 5,
            count: 1,
            first_ms: i,
            last_ms: i,
        },
        _ => denial(i, 100),
    }
}

fn distinct(_: &TaskId, i: u64) -> EventKind {
    EventKind::FileAttempt {
        op: "stat".into(),
        path: format!("/home/u/project/src/file{i}.rs"),
        denied: false,
        pid: 5,
        count: 1,
        first_ms: i,
        last_ms: i,
    }
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "looping agent",
        what: "the same 10 denials repeated",
        events: 200_000,
        batch: 1_000,
        make: looping,
    },
    Scenario {
        name: "mixed",
        what: "60% syscall denials, 20% file attempts, 10% flows, 10% notes",
        events: 200_000,
        batch: 1_000,
        make: mixed,
    },
    Scenario {
        name: "all distinct",
        what: "every event a new row, as at watch level `all`",
        events: 200_000,
        batch: 1_000,
        make: distinct,
    },
    Scenario {
        name: "looping, unbatched",
        what: "the looping agent, one transaction per event",
        events: 10_000,
        batch: 1,
        make: looping,
    },
];

struct Result {
    rate_median: f64,
    rate_min: f64,
    rate_max: f64,
    rows: i64,
    db_bytes: u64,
}

fn run_once(dir: &Path, s: &Scenario, run: usize) -> (f64, i64, u64) {
    let db = dir.join(format!(
        "bench-{}-{run}.db",
        s.name.replace([' ', ','], "-")
    ));
    let mut store = AuditStore::open(&db).expect("open the database");
    let task = TaskId::parse("20261127-000000-beef").expect("task id");
    store
        .record_task(&TaskManifest {
            id: task.clone(),
            argv: vec!["agent".into()],
            policy: Policy::default(),
            rw_layers: vec![],
            created_ms: 1,
            requested_by: "bench".into(),
        })
        .expect("record the task");
    let events: Vec<Event> = (0..s.events)
        .map(|i| Event {
            v: EVENT_VERSION,
            task: task.clone(),
            seq: i,
            time_ms: 1_000 + i,
            kind: (s.make)(&task, i),
        })
        .collect();
    let start = Instant::now();
    for chunk in events.chunks(s.batch) {
        store.record_events(chunk).expect("record a batch");
    }
    let secs = start.elapsed().as_secs_f64();
    drop(store);
    let conn = rusqlite::Connection::open(&db).expect("reopen");
    let rows: i64 = conn
        .query_row(
            "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM flows)",
            [],
            |r| r.get(0),
        )
        .expect("count rows");
    // Fold the WAL into the file so its size is the database's.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    drop(conn);
    let bytes = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    (s.events as f64 / secs, rows, bytes)
}

fn measure(dir: &Path, s: &Scenario) -> Result {
    let mut rates = Vec::new();
    let (mut rows, mut bytes) = (0, 0);
    for run in 0..RUNS {
        let (rate, r, b) = run_once(dir, s, run);
        rates.push(rate);
        rows = r;
        bytes = b;
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    Result {
        rate_median: rates[RUNS / 2],
        rate_min: rates[0],
        rate_max: rates[RUNS - 1],
        rows,
        db_bytes: bytes,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

fn table(results: &[(&Scenario, Result)]) -> String {
    let mut t = String::new();
    t.push_str("## Audit store\n\n");
    t.push_str(&format!(
        "`cargo bench --bench audit` on {}: a fresh WAL database on ext4 per run, \
         `synchronous=NORMAL`, events recorded through `AuditStore::record_events` in \
         transactions of `batch` events (built before the clock starts). Median of {RUNS} \
         runs, with the slowest and fastest run. Target: at least 50,000 events/s with \
         coalescing.\n\n",
        machine()
    ));
    t.push_str(
        "| scenario | events | batch | events/s (median) | slowest–fastest | rows stored | database |\n",
    );
    t.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for (s, r) in results {
        t.push_str(&format!(
            "| **{}**: {} | {} | {} | {:.0} | {:.0}–{:.0} | {} | {} KiB |\n",
            s.name,
            s.what,
            s.events,
            s.batch,
            r.rate_median,
            r.rate_min,
            r.rate_max,
            r.rows,
            r.db_bytes / 1024
        ));
    }
    t.push_str(
        "\nThe looping agent's 200,000 denials leave 10 rows: the database does not grow \
         with repeats. One transaction per event is bounded by the WAL commit, which is \
         why the supervisor hands events over in batches.\n",
    );
    t
}

/// Replaces our section of `docs/benchmarks.md` (from `## Audit store` to
/// the next `## ` heading), leaving the other sections as they are.
fn write_section(file: &Path, section: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(file).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let mut out = String::new();
    let mut lines = old.lines().peekable();
    let mut written = false;
    while let Some(line) = lines.next() {
        if line.trim_end() == "## Audit store" {
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
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(file, out)
}

fn main() {
    // `cargo bench` passes `--bench`; other libtest flags are ignored too.
    let write = !std::env::args().any(|a| a == "--no-write");
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut results = Vec::new();
    for s in SCENARIOS {
        eprintln!("audit bench: {} …", s.name);
        results.push((s, measure(dir.path(), s)));
    }
    let section = table(&results);
    println!("{section}");
    if write {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
        match write_section(&file, &section) {
            Ok(()) => eprintln!("written to {}", file.display()),
            Err(e) => eprintln!("{}: {e}", file.display()),
        }
    }
}
