//! `airlock doctor` on this machine (Debian 12 userland, Linux 6.x): the
//! real probes must find user namespaces, overlayfs in a user namespace,
//! Landlock, seccomp and seccomp user notification. Runs as root and as an
//! unprivileged user alike; the state folder is a temporary one.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

fn airlock(state: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airlock"));
    cmd.args(args)
        .env("XDG_STATE_HOME", state)
        .env("AIRLOCK_LOG", "airlock=warn");
    cmd
}

fn doctor_json(cmd: &mut Command) -> (Output, Value) {
    let out = cmd.output().unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

fn check<'a>(json: &'a Value, id: &str) -> &'a Value {
    json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {json:#}"))
}

#[test]
fn real_probes_find_every_required_layer() {
    let state = tempfile::tempdir().unwrap();
    let (out, json) = doctor_json(
        airlock(state.path(), &["doctor", "--json"]).env_remove("DBUS_SESSION_BUS_ADDRESS"),
    );
    assert!(out.status.success(), "{json:#}");
    assert_eq!(json["can_run"], true, "{json:#}");

    for id in ["userns", "overlay", "seccomp", "seccomp_notify", "landlock"] {
        assert_eq!(check(&json, id)["status"], "ok", "{:#}", check(&json, id));
    }
    let probes = &json["probes"];
    assert_eq!(probes["userns"]["ok"], true);
    assert_eq!(probes["overlay"]["ok"], true);
    // Linux 6.x records deletions as 0/0 character devices.
    assert_eq!(probes["overlay"]["whiteout"], "char_device");
    assert!(
        probes["landlock"]["abi"].as_u64().unwrap() >= 1,
        "{probes:#}"
    );
    assert_eq!(probes["seccomp"]["ok"], true);
    assert_eq!(probes["seccomp_notify"]["listener"], true);
    assert_eq!(probes["seccomp_notify"]["continue_flag"], true);

    let uid = probes["uid"].as_u64().unwrap();
    let user = check(&json, "user")["consequence"].as_str().unwrap();
    if uid == 0 {
        assert!(user.contains("65534"), "{user}");
    } else {
        assert!(user.contains(&format!("uid {uid}")), "{user}");
    }

    // The overlay probe worked under the state folder and left nothing.
    let airlock_state = state.path().join("airlock");
    assert_eq!(
        Path::new(probes["overlay"]["state_dir"].as_str().unwrap()),
        airlock_state
    );
    let left: Vec<_> = std::fs::read_dir(&airlock_state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}

#[test]
fn plain_output_has_one_symbol_line_per_check_and_exits_zero() {
    let state = tempfile::tempdir().unwrap();
    let out = airlock(state.path(), &["doctor"])
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for title in [
        "User namespaces",
        "Overlay file system in a user namespace",
        "Seccomp filter",
        "Seccomp user notification",
        "Landlock",
        "Resource limits",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("✓ {title}:"))
                || (title == "Resource limits" && l.starts_with("! Resource limits:"))),
            "no line for {title} in\n{text}"
        );
    }
    assert!(!text.contains('✗'), "{text}");
    assert!(text.contains("Airlock can run sandboxed tasks on this machine."));
}

#[test]
fn probe_children_report_by_exit_status_and_json() {
    let state = tempfile::tempdir().unwrap();
    let out = airlock(state.path(), &["__probe", "userns"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["ok"], true);

    // The overlay probe without its scratch folder fails, and says so.
    let out = airlock(state.path(), &["__probe", "overlay"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["ok"], false);
    assert!(line["error"].as_str().unwrap().contains("--dir"));

    // Hidden from --help.
    let help = airlock(state.path(), &["--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("doctor"));
    assert!(!help.contains("__probe"));
}

#[test]
fn an_unusable_state_folder_makes_the_overlay_layer_missing() {
    // Upper layers live in the state folder: if Airlock cannot write there
    // (here a file stands where the folder should be, which stops root as
    // well as anyone), it cannot run tasks and must say where and why.
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("airlock"), "not a folder").unwrap();
    let (out, json) = doctor_json(
        airlock(state.path(), &["doctor", "--json"]).env_remove("DBUS_SESSION_BUS_ADDRESS"),
    );
    assert_eq!(out.status.code(), Some(1), "{json:#}");
    assert_eq!(json["can_run"], false);
    let overlay = check(&json, "overlay");
    assert_eq!(overlay["status"], "missing");
    let airlock_state = state.path().join("airlock").display().to_string();
    assert!(
        overlay["detail"].as_str().unwrap().contains(&airlock_state),
        "{overlay:#}"
    );
    assert!(
        overlay["fix"].as_str().unwrap().contains(&airlock_state),
        "{overlay:#}"
    );
    assert!(
        overlay["fix"].as_str().unwrap().contains("XDG_STATE_HOME"),
        "{overlay:#}"
    );
    assert_eq!(check(&json, "userns")["status"], "ok");
}

/// A private session bus (`dbus-daemon --session`), killed on drop.
struct PrivateBus {
    daemon: Child,
    address: String,
}

impl PrivateBus {
    fn start() -> PrivateBus {
        let mut daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (package dbus) is needed for this test");
        let mut address = String::new();
        BufReader::new(daemon.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        PrivateBus {
            daemon,
            address: address.trim().to_owned(),
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

struct Watcher;

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }
}

struct Manager;

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    #[zbus(property)]
    fn version(&self) -> String {
        "252-test".to_owned()
    }
}

#[test]
fn session_bus_probes_find_a_tray_host_and_a_user_systemd() {
    let bus = PrivateBus::start();
    let state = tempfile::tempdir().unwrap();

    // Nothing on the bus yet: no watcher.
    let (_, json) = doctor_json(
        airlock(state.path(), &["doctor", "--json"]).env("DBUS_SESSION_BUS_ADDRESS", &bus.address),
    );
    assert_eq!(json["probes"]["session_bus"]["state"], "connected");
    assert_eq!(check(&json, "session_bus")["status"], "ok");
    assert_eq!(json["probes"]["tray"]["state"], "no_watcher", "{json:#}");

    // A watcher with a host, and a user systemd manager, served by us.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _services = rt.block_on(async {
        let watcher = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .name("org.kde.StatusNotifierWatcher")
            .unwrap()
            .serve_at("/StatusNotifierWatcher", Watcher)
            .unwrap()
            .build()
            .await
            .unwrap();
        let systemd = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .name("org.freedesktop.systemd1")
            .unwrap()
            .serve_at("/org/freedesktop/systemd1", Manager)
            .unwrap()
            .build()
            .await
            .unwrap();
        (watcher, systemd)
    });
    let (out, json) = doctor_json(
        airlock(state.path(), &["doctor", "--json"]).env("DBUS_SESSION_BUS_ADDRESS", &bus.address),
    );
    assert!(out.status.success());
    assert_eq!(json["probes"]["tray"]["state"], "watcher", "{json:#}");
    assert_eq!(json["probes"]["tray"]["host_registered"], true);
    assert_eq!(check(&json, "tray")["status"], "ok");
    assert_eq!(json["probes"]["systemd_user"]["version"], "252-test");
    // The manager's scopes get the controllers this machine's cgroup has:
    // on a hybrid-cgroup machine none, and the doctor must not claim them.
    let controllers = json["probes"]["cgroup"]["controllers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let all = ["memory", "pids", "cpu"]
        .iter()
        .all(|c| controllers.iter().any(|have| have == c));
    let limits = check(&json, "limits");
    if all {
        assert_eq!(limits["status"], "ok");
        assert!(limits["consequence"]
            .as_str()
            .unwrap()
            .contains("systemd 252-test"));
    } else {
        assert_eq!(limits["status"], "warning", "{limits:#}");
        assert!(
            limits["detail"]
                .as_str()
                .unwrap()
                .contains("(systemd 252-test) makes each task a scope, without the"),
            "{limits:#}"
        );
    }
}
