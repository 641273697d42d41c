//! Live denial monitoring end to end: every blocked syscall, file access
//! outside the grants and direct connection attempt arrives as exactly the
//! expected event, repeats are coalesced with exact counts in bounded
//! memory, a racing agent cannot turn a report into access, and events
//! never carry file contents. Runs as root and as an unprivileged user.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const SECRET: &str = "AIRLOCK-MONITOR-SECRET-51c2";

fn events(w: &World, args: &[&str], script: &str) -> (Vec<Value>, String) {
    let mut all = vec!["--json-events", "-"];
    all.extend_from_slice(args);
    let o = w.run(&all, script);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let evs = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (evs, text(&o))
}

fn of_type<'a>(evs: &'a [Value], t: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["type"] == t).collect()
}

fn total(evs: &[&Value]) -> u64 {
    evs.iter().map(|e| e["count"].as_u64().unwrap()).sum()
}

fn plant(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, SECRET).unwrap();
    chmod(path, 0o644);
    chmod(path.parent().unwrap(), 0o755);
}

#[test]
fn every_blocked_group_is_reported_once_with_its_arguments() {
    let w = World::new();
    let calls: Vec<(&str, i64, Vec<u64>, &str)> = vec![
        (
            "ptrace",
            libc::SYS_ptrace,
            vec![16, 1, 0, 0],
            "target pid 1",
        ),
        ("mount", libc::SYS_mount, vec![0, 0, 0, 0, 0], "target"),
        (
            "setns",
            libc::SYS_setns,
            vec![0, libc::CLONE_NEWNET as u64],
            "CLONE_NEWNET",
        ),
        (
            "unshare",
            libc::SYS_unshare,
            vec![libc::CLONE_NEWUSER as u64],
            "CLONE_NEWUSER",
        ),
        (
            "clone",
            libc::SYS_clone,
            vec![libc::CLONE_NEWNS as u64 | 17, 0, 0, 0, 0],
            "CLONE_NEWNS",
        ),
        ("bpf", libc::SYS_bpf, vec![5, 0, 0], "command 5"),
        (
            "perf_event_open",
            libc::SYS_perf_event_open,
            vec![0, 0, 0, 0, 0],
            "",
        ),
        ("keyctl", libc::SYS_keyctl, vec![2, 0], "operation 2"),
        ("userfaultfd", libc::SYS_userfaultfd, vec![0], ""),
        ("io_uring_setup", 425, vec![8, 0], ""),
        ("kexec_load", libc::SYS_kexec_load, vec![0, 0, 0, 0], ""),
        ("init_module", libc::SYS_init_module, vec![0, 0, 0], ""),
        (
            "open_by_handle_at",
            libc::SYS_open_by_handle_at,
            vec![0, 0, 0],
            "",
        ),
        (
            "ioctl",
            libc::SYS_ioctl,
            vec![0, 0xffff_ffff_0000_5412, 0],
            "TIOCSTI",
        ),
        ("socket", libc::SYS_socket, vec![17, 3, 0], "family packet"),
        (
            "socketpair",
            libc::SYS_socketpair,
            vec![1, 2, 0, 0],
            "family unix, type datagram",
        ),
        (
            "personality",
            libc::SYS_personality,
            vec![0x0040000],
            "0x40000",
        ),
        ("syslog", libc::SYS_syslog, vec![3, 0, 0], ""),
    ];
    let script: Vec<String> = calls
        .iter()
        .map(|(_, nr, a, _)| py_syscall(*nr, a))
        .collect();
    let (evs, t) = events(&w, &[], &script.join("; "));
    let denied = of_type(&evs, "syscall_denied");
    for (name, _, _, detail) in &calls {
        let mine: Vec<&&Value> = denied.iter().filter(|e| e["syscall"] == *name).collect();
        assert_eq!(mine.len(), 1, "{name}: {mine:?}\n{t}");
        let e = mine[0];
        assert_eq!(e["count"], 1, "{name}");
        let d = e["detail"].as_str().unwrap_or("");
        assert!(d.contains(detail), "{name}: detail {d:?} lacks {detail:?}");
        // Reported as it happened, not at the end.
        let lag = e["time_ms"].as_u64().unwrap() - e["first_ms"].as_u64().unwrap();
        assert!(lag < 1000, "{name} arrived {lag} ms late");
    }
    // Nothing the agent was allowed to do shows up as a denial.
    assert_eq!(denied.len(), calls.len(), "{denied:?}");
}

#[test]
fn file_outside_grants_and_denied_folder_inside_a_grant_are_reported() {
    let w = World::new();
    let outside = w.outside.join("report.pdf");
    plant(&outside);
    plant(&w.home.join(".ssh/id_rsa"));
    let script = format!(
        "cat {o}; cat {h}/.ssh/id_rsa; ls {h}/.ssh; cat {h}/project/nothing-here; echo ok > /tmp/fine; cat /tmp/fine",
        o = outside.display(),
        h = w.home.display()
    );
    let (evs, t) = events(&w, &["--grant", &w.home.display().to_string()], &script);
    assert!(!t.contains(SECRET));
    let files = of_type(&evs, "file_attempt");
    let paths: Vec<&str> = files.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&outside.to_str().unwrap()), "{paths:?}");
    let key = w.home.join(".ssh/id_rsa");
    assert!(paths.contains(&key.to_str().unwrap()), "{paths:?}");
    assert!(files.iter().all(|e| e["denied"] == true));
    // Work inside the view is not noise: /tmp, and a missing file in a grant.
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("/tmp/fine") || p.ends_with("nothing-here")),
        "{paths:?}"
    );
    // Paths and metadata only: never what the file holds.
    let all = serde_json::to_string(&evs).unwrap();
    assert!(!all.contains(SECRET));
}

#[test]
fn a_relative_path_into_a_denied_folder_is_reported_with_its_full_path() {
    let w = World::new();
    plant(&w.home.join(".ssh/id_rsa"));
    // From the working folder: no absolute path, no `..` to give it away.
    let script = format!(
        "cd {h} && cat .ssh/id_rsa; cd .ssh 2>/dev/null || cd {h}; cat ./.ssh/../.ssh/id_rsa",
        h = w.home.display()
    );
    let (evs, t) = events(&w, &["--grant", &w.home.display().to_string()], &script);
    assert!(!t.contains(SECRET));
    let key = w.home.join(".ssh/id_rsa");
    let hits: Vec<&Value> = of_type(&evs, "file_attempt")
        .into_iter()
        .filter(|e| e["path"] == key.to_str().unwrap())
        .collect();
    assert!(!hits.is_empty(), "{evs:?}");
    assert!(hits.iter().all(|e| e["denied"] == true));
    // Both cats (the second climbs in and out of the hidden folder).
    assert!(total(&hits) >= 2, "{hits:?}");
}

#[test]
fn exec_outside_and_connect_to_a_host_address_are_reported() {
    let w = World::new();
    let tool = w.outside.join("tool.sh");
    std::fs::write(&tool, "#!/bin/sh\necho ran\n").unwrap();
    chmod(&tool, 0o755);
    let script = format!(
        "{t}; python3 -c '
import socket
for addr in ((\"192.0.2.7\", 443), (\"127.0.0.1\", 8080)):
    s = socket.socket(); s.settimeout(1)
    try: s.connect(addr)
    except OSError: pass
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try: s.sendto(b\"x\", (\"198.51.100.9\", 53))
except OSError: pass
'",
        t = tool.display()
    );
    let (evs, t) = events(&w, &[], &script);
    assert!(!t.contains("ran"), "{t}");
    let files = of_type(&evs, "file_attempt");
    let execs: Vec<&&Value> = files.iter().filter(|e| e["op"] == "exec").collect();
    assert!(
        execs.iter().any(|e| e["path"] == tool.to_str().unwrap()),
        "{evs:?}"
    );
    let net = of_type(&evs, "net_attempt");
    let addrs: Vec<(&str, &str)> = net
        .iter()
        .map(|e| {
            (
                e["syscall"].as_str().unwrap(),
                e["address"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(addrs.contains(&("connect", "192.0.2.7:443")), "{addrs:?}");
    // The sandbox's own loopback (its local servers) is not "the network".
    assert!(
        !addrs.iter().any(|(_, a)| a.starts_with("127.")),
        "{addrs:?}"
    );
    assert!(addrs.contains(&("sendto", "198.51.100.9:53")), "{addrs:?}");
}

#[test]
fn a_flood_of_denials_is_counted_exactly_in_bounded_memory() {
    let w = World::new();
    let n = 1_000_000u64;
    let prog = format!(
        "python3 -c 'import ctypes; l = ctypes.CDLL(None); f = l.syscall\nfor i in range({n}): f({}, 16, 1, 0, 0)'",
        libc::SYS_ptrace
    );
    let mut cmd = w.cmd(&["run", "--json-events", "-", "--", "sh", "-c", &prog]);
    cmd.stdout(std::process::Stdio::piped());
    let o = output_within(cmd, Duration::from_secs(300));
    let evs: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let ptrace: Vec<&Value> = evs
        .iter()
        .filter(|e| e["type"] == "syscall_denied" && e["syscall"] == "ptrace")
        .collect();
    assert_eq!(total(&ptrace), n);
    // Coalesced: a handful of events, not a million.
    assert!(ptrace.len() < 200, "{} events", ptrace.len());
    // The supervisor side (airlock run) stayed small.
    // SAFETY: getrusage into a struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert!(ru.ru_maxrss < 200 * 1024, "max RSS {} KiB", ru.ru_maxrss);
}

#[test]
fn coalesced_counts_are_exact() {
    let w = World::new();
    let script = format!(
        "python3 -c 'import ctypes; l = ctypes.CDLL(None)\nfor i in range(1234): l.syscall({}, 16, 1, 0, 0)\nfor i in range(77): l.syscall({}, 0x200, 0)'",
        libc::SYS_ptrace,
        libc::SYS_unshare
    );
    let (evs, _) = events(&w, &[], &script);
    let d = of_type(&evs, "syscall_denied");
    let ptrace: Vec<&Value> = d
        .iter()
        .copied()
        .filter(|e| e["syscall"] == "ptrace")
        .collect();
    let unshare: Vec<&Value> = d
        .iter()
        .copied()
        .filter(|e| e["syscall"] == "unshare")
        .collect();
    assert_eq!(total(&ptrace), 1234);
    assert_eq!(
        total(&unshare),
        0,
        "unshare without namespace flags is allowed"
    );
    // seq is gap-free and increasing.
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["seq"].as_u64().unwrap(), i as u64, "{evs:?}");
    }
}

#[test]
fn a_path_race_can_spoil_a_report_but_never_grant_access() {
    let w = World::new();
    plant(&w.home.join(".ssh/id_rsa"));
    let ok = w.project.join("fine.txt");
    std::fs::write(&ok, "granted content").unwrap();
    chmod(&ok, 0o644);
    // Two threads: one flips a shared path buffer between a denied and a
    // granted file, the other opens whatever it currently holds.
    let script = format!(
        "python3 -c '
import ctypes, threading, os
secret = b\"{s}\\0\"; good = b\"{g}\\0\"
size = max(len(secret), len(good))
buf = ctypes.create_string_buffer(size)
stop = False
def flip():
    while not stop:
        ctypes.memmove(buf, secret, len(secret)); ctypes.memmove(buf, good, len(good))
t = threading.Thread(target=flip); t.start()
libc = ctypes.CDLL(None, use_errno=True)
got = set()
for i in range(3000):
    fd = libc.open(buf, 0)
    if fd >= 0:
        data = os.read(fd, 100); os.close(fd); got.add(data)
stop = True; t.join()
print(\"READ\", sorted(got))
'",
        s = w.home.join(".ssh/id_rsa").display(),
        g = ok.display()
    );
    let (evs, t) = events(&w, &["--grant", &w.home.display().to_string()], &script);
    assert!(t.contains("READ"), "{t}");
    assert!(!t.contains(SECRET), "the race granted access:\n{t}");
    assert!(!serde_json::to_string(&evs).unwrap().contains(SECRET));
}

#[test]
fn watch_all_reports_every_access_and_off_reports_none() {
    let w = World::new();
    let f = w.project.join("data.txt");
    // With a newline: the agent shares stdout with the JSON event lines.
    std::fs::write(&f, "x\n").unwrap();
    chmod(&f, 0o666);
    let script = format!("cat {}", f.display());
    let (evs, _) = events(
        &w,
        &[
            "--grant",
            &w.project.display().to_string(),
            "--watch",
            "all",
        ],
        &script,
    );
    let files = of_type(&evs, "file_attempt");
    assert!(
        files
            .iter()
            .any(|e| e["path"] == f.to_str().unwrap() && e["denied"] == false),
        "{files:?}"
    );
    let (evs, _) = events(
        &w,
        &["--watch", "off"],
        &py_syscall(libc::SYS_ptrace, &[16, 1, 0, 0]),
    );
    assert!(of_type(&evs, "syscall_denied").is_empty());
    let enf = of_type(&evs, "enforcement");
    let layers = enf[0]["layers"].as_array().unwrap();
    assert!(
        layers
            .iter()
            .any(|l| l["what"] == "monitor" && l["mechanism"] == "not-enforced"),
        "{layers:?}"
    );
}

#[test]
fn killing_the_supervisor_leaves_nothing_hanging() {
    let w = World::new();
    let marker = format!("airlock-mon-{}", std::process::id());
    let script = format!(
        "exec -a {marker} python3 -c 'import ctypes; l = ctypes.CDLL(None)\nwhile True: l.syscall({}, 16, 1, 0, 0)'",
        libc::SYS_ptrace
    );
    let mut child = w
        .cmd(&["run", "--", "bash", "-c", &script])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    let _ = child.wait();
    let start = std::time::Instant::now();
    loop {
        let o = std::process::Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        if o.stdout.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the sandbox outlived its supervisor"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
