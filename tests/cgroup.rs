//! The task's cgroup: the sandbox is where the enforcement report says,
//! checked from the host while the task runs, each limit reported as the
//! cgroup's is in the cgroup's files, and the cgroup is gone afterwards.
//!
//! `AIRLOCK_EXPECT_CGROUP` (set by build-aux/test.sh) names what the machine
//! offers the run: `systemd-scope` (a real `systemd --user`, started by
//! build-aux/with-user-systemd.sh), `cgroup-v2` or `none`. Without it the
//! test checks that the report and the host agree, whatever they say.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::World;

fn cgroup2_mount() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
}

fn unified_path(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

fn events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn the_task_is_in_the_cgroup_its_report_names_and_it_is_gone_after() {
    let w = World::new();
    let log = w.path().join("events.jsonl");
    let mut cmd = w.cmd(&[
        "run",
        "--local",
        "--pids",
        "300",
        "--json-events",
        log.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        // A sanitizer's shadow: a read-write reservation of 1 TiB, which
        // the per-process data limit refuses and a memory cgroup allows.
        "python3 -c 'import ctypes
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
p = libc.mmap(None, 1 << 40, 3, 0x22 | 0x4000, -1, 0)
print(\"reserve\", \"ok\" if p not in (None, ctypes.c_void_p(-1).value) else \"refused\")'; sleep 3",
    ]);
    // The user manager is reached over the session bus, as from a desktop.
    for k in ["DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let evs = loop {
        let evs = events(&log);
        if evs.iter().any(|e| e["type"] == "enforcement") {
            break evs;
        }
        assert!(Instant::now() < deadline, "no enforcement event: {evs:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let helper = evs.iter().find(|e| e["type"] == "started").unwrap()["helper_pid"]
        .as_u64()
        .unwrap()
        .to_string();
    let layers = evs.iter().find(|e| e["type"] == "enforcement").unwrap()["layers"]
        .as_array()
        .unwrap()
        .clone();
    let entry = layers
        .iter()
        .find(|l| l["what"] == "cgroup")
        .unwrap_or_else(|| panic!("no cgroup entry in {layers:?}"));
    let mechanism = entry["mechanism"].as_str().unwrap().to_string();
    let name = entry["value"].as_str().unwrap().to_string();
    // Seen from the host, now, while the task runs.
    let host = unified_path(&helper).expect("the helper's cgroup");
    let dir = match mechanism.as_str() {
        "systemd-scope" => {
            assert!(host.ends_with(&format!("/{name}")), "{host} vs {name}");
            assert!(name.starts_with("airlock-") && name.ends_with(".scope"));
            Some(cgroup2_mount().unwrap().join(host.trim_start_matches('/')))
        }
        "cgroup-v2" => {
            assert_eq!(host, name);
            Some(cgroup2_mount().unwrap().join(host.trim_start_matches('/')))
        }
        "not-enforced" => {
            // Where we are: the sandbox was not moved anywhere.
            assert_eq!(Some(host), unified_path("self"));
            assert!(entry["note"].as_str().unwrap().contains("rlimits"));
            None
        }
        other => panic!("unknown cgroup mechanism {other}: {entry}"),
    };
    if let Ok(expected) = std::env::var("AIRLOCK_EXPECT_CGROUP") {
        let expected = if expected == "none" {
            "not-enforced".to_string()
        } else {
            expected
        };
        assert_eq!(mechanism, expected, "{entry}");
    }
    // Every limit credited to the cgroup is in the cgroup's own files.
    for l in layers.iter().filter(|l| l["mechanism"] == "cgroup") {
        let dir = dir.as_ref().expect("a cgroup limit without a cgroup");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        match l["what"].as_str().unwrap() {
            "pids" => assert_eq!(read("pids.max").trim(), "300"),
            "memory" => assert_ne!(read("memory.max").trim(), "max"),
            "cpu" => assert!(!read("cpu.max").starts_with("max")),
            other => panic!("unexpected cgroup limit {other}"),
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With the memory limit the cgroup's, no data-size rlimit breaks a
    // sanitizer's reservation; without, the rlimit is what limits memory.
    let said = String::from_utf8_lossy(&out.stdout);
    let memory_by_cgroup = layers
        .iter()
        .any(|l| l["what"] == "memory" && l["mechanism"] == "cgroup");
    assert!(
        layers.iter().any(|l| l["what"] == "memory"),
        "the memory limit is reported: {layers:?}"
    );
    let expected = if memory_by_cgroup {
        "reserve ok"
    } else {
        "reserve refused"
    };
    assert!(said.contains(expected), "{said} {layers:?}");
    if let Some(dir) = dir {
        let deadline = Instant::now() + Duration::from_secs(5);
        while dir.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
}
