//! The network path end to end: real clients (curl, git, Python) in a real
//! sandbox, through the forwarder and the proxy, to real servers this test
//! starts on the host's loopback, granted by explicit IP. Ask mode is
//! answered through the supervisor's API, as the window and D-Bus do.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use airlock::event::EventKind;
use airlock::policy::{NetMode, NetPolicy, Policy};
use airlock::supervisor::{Config, OutputMode, Supervisor, SupervisorHandle, TaskRequest};
use airlock::task::{TaskId, TaskState};
use common::{chmod, text, World};
use serde_json::Value;

/// Serves the files under `root` over HTTP/1.0 on `addr` (port 0: any),
/// one thread per connection; returns the port.
fn serve_dir(root: PathBuf, addr: IpAddr) -> u16 {
    let l = TcpListener::bind(SocketAddr::new(addr, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || serve_one(s, &root));
        }
    });
    port
}

fn serve_one(mut s: TcpStream, root: &Path) {
    let mut head = Vec::new();
    let mut b = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let rel = target
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches('/');
    let body = if rel.split('/').any(|c| c == "..") {
        None
    } else {
        std::fs::read(root.join(rel)).ok()
    };
    let reply = match body {
        Some(b) => {
            let mut r = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            )
            .into_bytes();
            r.extend_from_slice(&b);
            r
        }
        None => {
            b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
    };
    let _ = s.write_all(&reply);
}

/// A folder with `index.html` saying `text`, readable by the agent's uid.
fn www(w: &World, name: &str, text: &str) -> PathBuf {
    let d = w.path().join(name);
    std::fs::create_dir_all(&d).unwrap();
    chmod(&d, 0o755);
    std::fs::write(d.join("index.html"), text).unwrap();
    chmod(&d.join("index.html"), 0o644);
    d
}

/// The `--json-events` lines of a run.
fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn of_type<'a>(evs: &'a [Value], t: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["type"] == t).collect()
}

/// `airlock run --json-events FILE ARGS -- sh -c SCRIPT`: (output, events).
fn run(w: &World, args: &[&str], script: &str) -> (String, Vec<Value>) {
    run_with(w, None, args, script)
}

/// Same, with `XDG_RUNTIME_DIR` set to `runtime`.
fn run_with(
    w: &World,
    runtime: Option<&Path>,
    args: &[&str],
    script: &str,
) -> (String, Vec<Value>) {
    let ev = w.path().join(format!("events-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&ev);
    let evs = ev.to_str().unwrap().to_string();
    let mut all = vec!["run", "--local", "--json-events", evs.as_str()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", "sh", "-c", script]);
    let mut c = w.cmd(&all);
    if let Some(r) = runtime {
        c.env("XDG_RUNTIME_DIR", r);
    }
    let o = common::output_within(c, Duration::from_secs(120));
    (text(&o), events(&ev))
}

/// The machine's host name and the address the host resolves it to: a
/// name that the sandbox can only look up through its own DNS responder.
fn host_name_and_addr() -> (String, IpAddr) {
    let name = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let addr = (name.as_str(), 0)
        .to_socket_addrs()
        .unwrap_or_else(|e| {
            panic!("this test needs the host name {name} to resolve on the host: {e}")
        })
        .map(|a| a.ip())
        .find(IpAddr::is_ipv4)
        .unwrap_or_else(|| panic!("the host name {name} has no IPv4 address"));
    (name, addr)
}

/// Kills a server child at the end of a test.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "server on {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
}

#[test]
fn https_through_connect_with_a_test_ca() {
    let w = World::new();
    let site = www(&w, "tls", "secret-over-tls\n");
    // A self-signed certificate for 127.0.0.1, used as the test's own CA.
    check(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=Airlock test",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .args(["-keyout", "key.pem", "-out", "ca.pem"])
            .current_dir(&site)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    chmod(&site.join("ca.pem"), 0o644);
    let port = free_port();
    let _server = Server(
        Command::new("openssl")
            .args([
                "s_server", "-quiet", "-WWW", "-cert", "ca.pem", "-key", "key.pem",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .current_dir(&site)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port);
    let grant = site.to_str().unwrap().to_string();
    let allow = format!("127.0.0.1:{port}");
    let (out, evs) = run(
        &w,
        &["--net", "allow", "--allow-host", &allow, "--grant", &grant],
        &format!(
            "unset NO_PROXY no_proxy; curl -sS --cacert {grant}/ca.pem https://127.0.0.1:{port}/index.html"
        ),
    );
    assert!(out.contains("secret-over-tls"), "{out}");
    let flows = of_type(&evs, "flow");
    assert!(
        flows.iter().any(|f| f["protocol"] == "http-connect"
            && f["decision"] == "allow"
            && f["port"] == port
            && f["bytes_in"].as_u64().unwrap_or(0) > 0),
        "{flows:?}"
    );
}

#[test]
fn plain_http_socks5_and_python_urllib_through_the_proxy() {
    let w = World::new();
    let port = serve_dir(
        www(&w, "www", "hello-airlock\n"),
        "127.0.0.1".parse().unwrap(),
    );
    let allow = format!("127.0.0.1:{port}");
    let url = format!("http://127.0.0.1:{port}/index.html");
    let (out, evs) = run(
        &w,
        &["--net", "allow", "--allow-host", &allow],
        &format!(
            "unset NO_PROXY no_proxy; \
             echo http=$(curl -sS {url}); \
             echo socks=$(curl -sS --socks5-hostname 127.0.0.1:3128 {url}); \
             echo py=$(python3 -c 'import urllib.request as u; print(u.urlopen(\"{url}\").read().decode())'); \
             echo caps=$(cat /proc/[0-9]*/status | grep CapEff | sort -u | tr -d '\t '); \
             echo vars=$(env | grep -c -i -e '^http_proxy=http://127.0.0.1:3128$' \
                -e '^https_proxy=http://127.0.0.1:3128$' -e '^all_proxy=socks5h://127.0.0.1:3128$')"
        ),
    );
    // PID 1, the forwarder, the shell and its children: none keeps a capability.
    for want in [
        "http=hello-airlock",
        "socks=hello-airlock",
        "py=hello-airlock",
        "caps=CapEff:0000000000000000\n",
        // Upper and lower case.
        "vars=6\n",
    ] {
        assert!(out.contains(want), "{want} missing in: {out}");
    }
    assert!(of_type(&evs, "net_attempt").is_empty(), "{evs:?}");
    let flows = of_type(&evs, "flow");
    for proto in ["http", "socks5"] {
        assert!(
            flows
                .iter()
                .filter(|f| f["protocol"] == proto && f["decision"] == "allow")
                .count()
                >= 1,
            "{proto}: {flows:?}"
        );
    }
    // curl and Python: two plain HTTP flows.
    assert_eq!(
        flows
            .iter()
            .filter(|f| f["protocol"] == "http" && f["decision"] == "allow")
            .count(),
        2,
        "{flows:?}"
    );
    let enf = of_type(&evs, "enforcement");
    let net = enf[0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["what"] == "network")
        .cloned()
        .unwrap();
    assert_eq!(net["value"], "allow-list proxy (1 hosts)");
    // The socket is gone with the task.
    for t in w.tasks() {
        assert!(!t.join("run").exists(), "{}", t.display());
    }
}

#[test]
fn git_clone_over_http() {
    let w = World::new();
    let src = w.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("README"), "cloned through airlock\n").unwrap();
    let git = |dir: &Path, args: &[&str]| {
        check(
            Command::new("git")
                .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
                .args(["-c", "init.defaultBranch=main"])
                .args(args)
                .current_dir(dir)
                .env("HOME", &w.home)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    git(&src, &["init", "-q"]);
    git(&src, &["add", "README"]);
    git(&src, &["commit", "-q", "-m", "first"]);
    let served = w.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    git(
        &served,
        &["clone", "-q", "--bare", src.to_str().unwrap(), "repo.git"],
    );
    // The "dumb" HTTP protocol: static files, made listable by this.
    git(&served.join("repo.git"), &["update-server-info"]);
    let port = serve_dir(served, "127.0.0.1".parse().unwrap());
    let allow = format!("127.0.0.1:{port}");
    // A desktop session's runtime folder holds the proxy's socket.
    let runtime = w.path().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    chmod(&runtime, 0o700);
    let (out, evs) = run_with(
        &w,
        Some(&runtime),
        &["--net", "allow", "--allow-host", &allow],
        &format!(
            "unset NO_PROXY no_proxy; ls /run/airlock; \
             cd /tmp && git clone -q http://127.0.0.1:{port}/repo.git c && cat c/README"
        ),
    );
    assert!(out.contains("proxy.sock"), "{out}");
    assert!(out.contains("cloned through airlock"), "{out}");
    // Used while the task ran, removed with it.
    assert!(runtime.join("airlock").is_dir());
    let left = std::fs::read_dir(runtime.join("airlock")).unwrap().count();
    assert_eq!(left, 0);
    let flows = of_type(&evs, "flow");
    assert!(flows.iter().any(|f| f["decision"] == "allow"), "{flows:?}");
    assert!(flows.iter().all(|f| f["decision"] == "allow"), "{flows:?}");
}

#[test]
fn transparent_mode_catches_a_tool_that_ignores_proxy_variables() {
    let w = World::new();
    let (name, addr) = host_name_and_addr();
    let port = serve_dir(www(&w, "www", "caught-transparently\n"), addr);
    let by_name = format!("{name}:{port}");
    let by_ip = format!("{addr}:{port}");
    let (out, evs) = run(
        &w,
        &[
            "--net",
            "allow",
            "--allow-host",
            &by_name,
            "--allow-host",
            &by_ip,
        ],
        // --noproxy '*': curl ignores every proxy variable.
        &format!("curl -sS --noproxy '*' http://{name}:{port}/index.html"),
    );
    assert!(out.contains("caught-transparently"), "{out}");
    // A caught connection is a flow, not a direct connection attempt.
    assert!(of_type(&evs, "net_attempt").is_empty(), "{evs:?}");
    let dns = of_type(&evs, "dns_query");
    assert!(
        dns.iter().any(|d| d["name"] == name.to_lowercase().as_str()
            && d["answer"].as_str().unwrap_or("").starts_with("198.1")),
        "{dns:?}"
    );
    assert!(
        of_type(&evs, "flow")
            .iter()
            .any(|f| f["host"] == name.to_lowercase().as_str()
                && f["decision"] == "allow"
                && f["address"] == by_ip.as_str()),
        "{evs:?}"
    );
}

#[test]
fn unlisted_host_gets_403_and_loopback_needs_an_explicit_grant() {
    let w = World::new();
    let (name, addr) = host_name_and_addr();
    let port = serve_dir(www(&w, "www", "must-not-be-read\n"), addr);
    // The name is on the list, its (loopback or private) address is not.
    let by_name = format!("{name}:{port}");
    let (out, evs) = run(
        &w,
        &["--net", "allow", "--allow-host", &by_name],
        &format!(
            "unset NO_PROXY no_proxy; \
             echo unlisted=$(curl -s -o /dev/null -w '%{{http_code}}' http://unlisted.example/); \
             echo loop=$(curl -s -o /dev/null -w '%{{http_code}}' http://{name}:{port}/index.html); \
             echo direct=$(curl -s --noproxy '*' -w '%{{http_code}}' http://127.0.0.1:{port}/index.html)"
        ),
    );
    assert!(out.contains("unlisted=403"), "{out}");
    assert!(out.contains("loop=403"), "{out}");
    assert!(!out.contains("must-not-be-read"), "{out}");
    // Without the proxy there is no route: the sandbox's own loopback.
    assert!(out.contains("direct=000"), "{out}");
    let flows = of_type(&evs, "flow");
    assert!(
        flows.iter().any(|f| f["host"] == "unlisted.example"
            && f["decision"] == "deny"
            && f["reason"]
                .as_str()
                .unwrap_or("")
                .contains("not on the allow-list")),
        "{flows:?}"
    );
    assert!(
        flows
            .iter()
            .any(|f| f["host"] == name.to_lowercase().as_str() && f["decision"] == "deny"),
        "{flows:?}"
    );
    assert!(!flows.iter().any(|f| f["decision"] == "allow"), "{flows:?}");
}

/// An agent that opens hundreds of tunnels to an allowed host and holds
/// them gets at most `MAX_CONNECTIONS` at once; the rest wait. Checked on
/// the host: the server never sees more, so the supervisor never holds
/// more descriptors and buffers for the task (it reached 20,000 and 1 GB).
#[test]
fn a_task_cannot_hold_more_than_its_share_of_connections() {
    let w = World::new();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let open = std::sync::Arc::new(AtomicUsize::new(0));
    let most = std::sync::Arc::new(AtomicUsize::new(0));
    {
        let (open, most) = (open.clone(), most.clone());
        std::thread::spawn(move || {
            for mut s in server.incoming().flatten() {
                most.fetch_max(open.fetch_add(1, SeqCst) + 1, SeqCst);
                let open = open.clone();
                // Open until the proxy closes it.
                std::thread::spawn(move || {
                    let _ = s.read(&mut [0u8; 16]);
                    open.fetch_sub(1, SeqCst);
                });
            }
        });
    }
    let allow = format!("127.0.0.1:{port}");
    let (out, evs) = run(
        &w,
        &["--net", "allow", "--allow-host", &allow],
        &format!(
            "python3 -c 'import os, socket, time
proxy = os.environ[\"HTTPS_PROXY\"].split(\"//\")[1].rstrip(\"/\")
ph, pp = proxy.rsplit(\":\", 1)
socks = []
for i in range(420):
    # Past the cap and the listen queue, a connect waits: give up on it.
    try:
        s = socket.create_connection((ph, int(pp)), timeout=0.05)
        s.sendall(b\"CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\n\\r\\n\")
        socks.append(s)
    except OSError:
        pass
print(\"connected\", len(socks))
time.sleep(2)
ok = 0
for s in socks:
    s.settimeout(0.01)
    try:
        ok += s.recv(64).startswith(b\"HTTP/1.1 200\")
    except OSError:
        pass
print(\"tunnels\", ok)'"
        ),
    );
    let most = most.load(SeqCst);
    let cap = airlock::netproxy::MAX_CONNECTIONS;
    assert!(
        most <= cap,
        "the host saw {most} connections at once: {out}"
    );
    let tunnels: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("tunnels "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(tunnels <= cap && tunnels >= cap - 8, "{tunnels}: {out}");
    assert!(
        of_type(&evs, "warning").iter().any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .contains("the most it may")),
        "{evs:?}"
    );
}

#[test]
fn net_none_has_no_proxy_and_no_route_out() {
    let w = World::new();
    let port = serve_dir(
        www(&w, "www", "unreachable\n"),
        "127.0.0.1".parse().unwrap(),
    );
    let (out, evs) = run(
        &w,
        &[],
        &format!(
            "env | grep -i _proxy; ls /run/airlock 2>&1; cat /etc/resolv.conf; \
             echo curl=$(curl -s -m 5 -w '%{{http_code}}' http://127.0.0.1:{port}/index.html); \
             python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); print(\"out\", s.connect_ex((\"192.0.2.1\", 53)))'"
        ),
    );
    assert!(!out.to_lowercase().contains("http_proxy="), "{out}");
    assert!(out.contains("No such file"), "{out}");
    assert!(out.contains("curl=000"), "{out}");
    assert!(!out.contains("unreachable\n"), "{out}");
    // ENETUNREACH: no route at all, not a refused connection.
    assert!(out.contains("out 101"), "{out}");
    assert!(of_type(&evs, "flow").is_empty());
    let enf = of_type(&evs, "enforcement");
    assert!(
        enf[0]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["what"] == "network" && l["value"] == "loopback only"),
        "{enf:?}"
    );
    // No socket left anywhere in the task folder.
    for t in w.tasks() {
        assert!(!t.join("run").exists());
    }
}

#[test]
fn ask_mode_without_a_terminal_denies_and_says_why() {
    let w = World::new();
    let (name, addr) = host_name_and_addr();
    let port = serve_dir(www(&w, "www", "must-not-be-read\n"), addr);
    let by_ip = format!("{addr}:{port}");
    let (out, evs) = run(
        &w,
        &["--net", "ask", "--allow-host", &by_ip],
        &format!("unset NO_PROXY no_proxy; echo code=$(curl -s -o /dev/null -w '%{{http_code}}' http://{name}:{port}/index.html)"),
    );
    assert!(out.contains("code=403"), "{out}");
    assert!(out.contains("no terminal"), "{out}");
    assert_eq!(of_type(&evs, "consent_requested").len(), 1, "{evs:?}");
    let answered = of_type(&evs, "consent_answered");
    assert!(
        !answered.is_empty() && answered.iter().all(|a| a["answer"] == "deny"),
        "{answered:?}"
    );
}

#[test]
fn bad_network_options_are_clear_errors() {
    let w = World::new();
    let deep = w.path().join("s".repeat(90));
    std::fs::create_dir_all(&deep).unwrap();
    chmod(&deep, 0o755);
    let mut c = w.cmd(&["run", "--local", "--net", "allow", "--", "true"]);
    c.env("XDG_STATE_HOME", &deep);
    let o = common::output_within(c, Duration::from_secs(60));
    assert!(!o.status.success());
    assert!(text(&o).contains("107 bytes"), "{}", text(&o));
    let o = w.run(
        &["--local", "--net", "none", "--allow-host", "example.org"],
        "true",
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("--net allow"), "{}", text(&o));
    let o = w.run(&["--local", "--net", "sometimes"], "true");
    assert!(text(&o).contains("use none, allow or ask"), "{}", text(&o));
}

/// One supervisor for the ask-mode tests: the XDG variables are
/// process-wide, so they are set once, before its threads read them.
fn supervisor() -> &'static (World, SupervisorHandle) {
    static S: OnceLock<(World, SupervisorHandle)> = OnceLock::new();
    S.get_or_init(|| {
        let w = World::new();
        std::env::set_var("HOME", &w.home);
        std::env::set_var("XDG_STATE_HOME", w.state());
        std::env::set_var("XDG_DATA_HOME", w.path().join("data"));
        std::env::set_var("XDG_CONFIG_HOME", w.path().join("config"));
        std::env::remove_var("XDG_RUNTIME_DIR");
        let mut c = Config::new().unwrap();
        c.helper_exe = common::airlock_bin();
        (w, Supervisor::start(c).unwrap())
    })
}

/// Runs `curl http://NAME:PORT/` in ask mode through the supervisor and
/// answers its question with `answer` (`None`: never). Returns the output
/// and the task's events.
fn ask_and_answer(answer: Option<&str>) -> (String, Vec<EventKind>) {
    ask_and_answer_as(answer, None)
}

/// [`ask_and_answer`] for a task started from agent profile `agent`.
fn ask_and_answer_as(answer: Option<&str>, agent: Option<&str>) -> (String, Vec<EventKind>) {
    let (w, h) = supervisor();
    let (name, addr) = host_name_and_addr();
    let port = serve_dir(
        www(
            w,
            &format!("ask-{}", answer.unwrap_or("none")),
            "held-then-allowed\n",
        ),
        addr,
    );
    let mut sub = h.subscribe();
    let policy = Policy {
        net: NetPolicy {
            mode: NetMode::Ask,
            // The address is granted (it is loopback or private); the name
            // is not on the list, so it is asked about.
            allow_hosts: vec![format!("{addr}:{port}")],
            consent_timeout_secs: 3,
        },
        agent: agent.map(str::to_string),
        ..Policy::default()
    };
    let script = format!(
        "unset NO_PROXY no_proxy; curl -sS -w ' code=%{{http_code}}' http://{name}:{port}/index.html"
    );
    let id: TaskId = h
        .submit_blocking(TaskRequest {
            argv: vec!["sh".into(), "-c".into(), script],
            policy,
            requested_by: "test".into(),
            output: OutputMode::Capture,
            helper: None,
        })
        .unwrap();
    let mut evs = Vec::new();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "task did not end: {evs:?}"
        );
        let ev = sub.blocking_recv().unwrap();
        if ev.task != id {
            continue;
        }
        if let (EventKind::ConsentRequested { id: q, port: p, .. }, Some(a)) = (&ev.kind, answer) {
            assert_eq!(*p, port);
            h.runtime().block_on(h.answer_consent(*q, a)).unwrap();
        }
        let end = matches!(
            ev.kind,
            EventKind::StateChanged {
                to: TaskState::Exited | TaskState::Failed | TaskState::Killed,
                ..
            }
        );
        evs.push(ev.kind);
        if end {
            break;
        }
    }
    let out = String::from_utf8_lossy(&h.output(&id).unwrap_or_default()).into_owned();
    (out, evs)
}

fn flow_decisions(evs: &[EventKind]) -> Vec<(String, String)> {
    evs.iter()
        .filter_map(|e| match e {
            EventKind::Flow {
                decision, reason, ..
            } => Some((decision.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

fn answers(evs: &[EventKind]) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match e {
            EventKind::ConsentAnswered { answer, .. } => Some(answer.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn ask_mode_held_connection_proceeds_after_allow() {
    let (out, evs) = ask_and_answer(Some("allow_once"));
    assert!(
        out.contains("held-then-allowed") && out.contains("code=200"),
        "{out}"
    );
    assert_eq!(answers(&evs), ["allow_once"]);
    assert!(
        flow_decisions(&evs).iter().any(|(d, _)| d == "allow"),
        "{evs:?}"
    );
}

#[test]
fn ask_mode_held_connection_fails_after_deny() {
    let (out, evs) = ask_and_answer(Some("deny"));
    assert!(
        out.contains("code=403") && !out.contains("held-then-allowed"),
        "{out}"
    );
    assert_eq!(answers(&evs), ["deny"]);
    assert!(
        flow_decisions(&evs)
            .iter()
            .any(|(d, r)| d == "deny" && r.contains("denied by the user")),
        "{evs:?}"
    );
}

#[test]
fn ask_mode_held_connection_fails_after_the_timeout() {
    let (out, evs) = ask_and_answer(None);
    assert!(
        out.contains("code=403") && !out.contains("held-then-allowed"),
        "{out}"
    );
    assert_eq!(answers(&evs), ["timeout"]);
    assert!(
        flow_decisions(&evs)
            .iter()
            .any(|(d, r)| d == "deny" && r.contains("no answer within 3 seconds")),
        "{evs:?}"
    );
}

#[test]
fn ask_mode_prompts_on_the_terminal_and_always_lasts_for_the_task() {
    let w = World::new();
    let (name, addr) = host_name_and_addr();
    let port = serve_dir(www(&w, "www", "allowed-on-the-terminal\n"), addr);
    let ev = w.path().join("events.json");
    let cmdline = format!(
        "{bin} run --local --json-events {ev} --net ask --allow-host {addr}:{port} -- \
         sh -c 'unset NO_PROXY no_proxy; curl -sS http://{name}:{port}/index.html; \
         curl -sS http://{name}:{port}/index.html'",
        bin = common::airlock_bin().display(),
        ev = ev.display(),
    );
    // `script` gives the run a terminal; the answer is typed once the
    // question is there (keys typed earlier do not count).
    let mut c = w.command("script");
    c.args(["-qec", &cmdline, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // Kept open until the end: an early end of input would end the terminal.
    let mut typing = child.stdin.take().unwrap();
    let mut shown = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut told = 0;
        while let Ok(n) = shown.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let t = String::from_utf8_lossy(&all).into_owned();
            for (k, prompt) in ["(d in 60s)? ", "Type yes to confirm: "].iter().enumerate() {
                if told == k && t.contains(prompt) {
                    let _ = tx.send(k);
                    told = k + 1;
                }
            }
        }
        all
    });
    let typist = std::thread::spawn(move || {
        // "Always" is asked twice.
        for answer in [&b"a\n"[..], b"yes\n"] {
            if rx.recv_timeout(Duration::from_secs(100)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(700));
            let _ = typing.write_all(answer);
        }
        typing
    });
    let pid = child.id();
    let guard = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(50));
            if std::fs::metadata(format!("/proc/{pid}")).is_err() {
                return;
            }
        }
        // SAFETY: killing our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let o = child.wait_with_output().unwrap();
    drop(typist.join());
    let _ = guard.join();
    let mut o = o;
    o.stdout = reader.join().unwrap();
    let out = text(&o);
    assert!(out.contains("wants to reach"), "{out}");
    assert!(out.contains("[d]eny (d in 60s)"), "{out}");
    assert!(out.contains("allowed for this task only"), "{out}");
    // Asked once, allowed twice: "always" lasts for the task.
    assert_eq!(out.matches("allowed-on-the-terminal").count(), 2, "{out}");
    let evs = events(&ev);
    let answered = of_type(&evs, "consent_answered");
    assert_eq!(answered.len(), 1, "{evs:?}");
    assert_eq!(answered[0]["answer"], "allow_always");
    // Not started from an agent profile: the answer lasts for the task.
    assert!(
        of_type(&evs, "warning").iter().any(|w| w["message"]
            .as_str()
            .unwrap_or("")
            .contains("for this task only")),
        "{evs:?}"
    );
}

#[test]
fn ask_mode_always_is_saved_to_the_agent_profile() {
    let (w, _) = supervisor();
    let dir = w.path().join("config/airlock/agents");
    std::fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("asker.toml");
    let original = "# my agent\ncommand = [\"sh\"]\n\n[network]\nmode = \"ask\"\nallow_hosts = [\"pypi.org\"]\n";
    std::fs::write(&profile, original).unwrap();
    let (out, evs) = ask_and_answer_as(Some("allow_always"), Some("asker"));
    assert!(out.contains("held-then-allowed"), "{out}");
    let (name, _) = host_name_and_addr();
    let saved = std::fs::read_to_string(&profile).unwrap();
    assert!(saved.starts_with("# my agent\n"), "{saved}");
    assert!(saved.contains("pypi.org"), "{saved}");
    let loaded = airlock::policy::profile::load("asker").unwrap();
    assert!(
        loaded
            .policy
            .net
            .allow_hosts
            .iter()
            .any(|h| h.to_lowercase().starts_with(&name.to_lowercase())),
        "{saved}"
    );
    assert!(
        evs.iter().any(|e| matches!(e, EventKind::Warning { message } if message.contains("always allowed for agent asker"))),
        "{evs:?}"
    );
    // Without a profile, "always" lasts for the task and says so.
    let (_, evs) = ask_and_answer_as(Some("allow_always"), None);
    assert!(
        evs.iter().any(|e| matches!(e, EventKind::Warning { message } if message.contains("for this task only"))),
        "{evs:?}"
    );
}

/// Pass 8B: the agent printed a question of its own ("Apply [a]ll?") and
/// opened a connection once the user had typed "a": the waiting key
/// answered Airlock's question with "always". And output printed while
/// the question was open could draw over it. Keys typed before the
/// question now count for nothing, and the task's output waits until the
/// question is answered.
#[test]
fn an_answer_typed_before_the_network_question_does_not_count() {
    let w = World::new();
    let (name, addr) = host_name_and_addr();
    let port = serve_dir(www(&w, "www", "must-not-be-read\n"), addr);
    let by_ip = format!("{addr}:{port}");
    let script = format!(
        "unset NO_PROXY no_proxy; echo 'Agent: Apply [a]ll / [n]one?'; sleep 1; \
         (sleep 1; echo DRAWN-WHILE-ASKED) & \
         echo code=$(curl -s -o /dev/null -w '%{{http_code}}' http://{name}:{port}/index.html); wait"
    );
    let c = w.cmd(&[
        "run",
        "--local",
        "--net",
        "ask",
        "--allow-host",
        &by_ip,
        "--consent-timeout",
        "4",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    // The user answers the agent's question.
    let t = common::drive_on_pty(c, true, &[("Apply [a]ll", b"a\n", Duration::ZERO)]);
    assert!(t.contains("wants to reach"), "no question: {t}");
    assert!(
        t.contains("no answer in time: denied") && t.contains("code=403"),
        "{t}"
    );
    assert!(!t.contains("allowed"), "{t}");
    // The agent's output waited for the question to be answered.
    let asked = t.find("wants to reach").unwrap();
    let denied = t.find("no answer in time").unwrap();
    let drawn = t.find("DRAWN-WHILE-ASKED").expect("the held output");
    assert!(drawn > denied && denied > asked, "{t}");
    // With --tty the agent reads this terminal itself: questions cannot
    // share it, so the combination is refused before anything runs.
    let c = w.cmd(&[
        "run", "--local", "--tty", "--net", "ask", "--", "echo", "RAN",
    ]);
    let t = common::drive_on_pty(c, true, &[]);
    assert!(t.contains("--allow-host") && !t.contains("RAN"), "{t}");
}

/// Pass 9A: the agent left the terminal drawing concealed text, black on
/// black, so Airlock's question was invisible and the user's "a" for the
/// agent's own prompt, typed seconds later, saved "always". The question
/// now resets the drawing first, and "always" needs a typed "yes". And a
/// question that outlived its task went on reading the terminal during
/// the review: it is withdrawn when the task ends.
#[test]
fn a_hidden_or_orphaned_network_question_cannot_be_answered_by_accident() {
    let w = World::new();
    let (name, addr) = host_name_and_addr();
    let port = serve_dir(www(&w, "www", "must-not-be-read\n"), addr);
    let by_ip = format!("{addr}:{port}");
    let url = format!("http://{name}:{port}/index.html");
    let hidden = format!(
        "unset NO_PROXY no_proxy; echo 'Agent: Apply [a]ll / [n]one?'; printf '\\033[8m\\033[30;40m\\033[?25l'; \
         echo code=$(curl -s -o /dev/null -w '%{{http_code}}' {url})"
    );
    let c = w.cmd(&[
        "run",
        "--local",
        "--net",
        "ask",
        "--allow-host",
        &by_ip,
        "--consent-timeout",
        "6",
        "--",
        "sh",
        "-c",
        &hidden,
    ]);
    // The user answers the agent's prompt, well after the question came.
    let t = common::drive_on_pty(
        c,
        true,
        &[("wants to reach", b"a\n", Duration::from_millis(1500))],
    );
    let asked = t.find("wants to reach").expect(&t);
    let reset = t[..asked].rfind("\x1b[!p\x1b[0m\x1b(B").expect(&t);
    assert!(reset > t.find("\x1b[8m").unwrap(), "{t:?}");
    assert!(t.contains("Type yes to confirm"), "{t}");
    assert!(t.contains("code=403") && !t.contains("allowed"), "{t}");
    // The task asks, then ends at once: its question must not outlive it.
    let late = format!(
        "unset NO_PROXY no_proxy; (curl -s -m 30 -o /dev/null {url} &) ; sleep 1; echo AGENT-DONE"
    );
    let c = w.cmd(&[
        "run",
        "--local",
        "--net",
        "ask",
        "--allow-host",
        &by_ip,
        "--consent-timeout",
        "60",
        "--",
        "sh",
        "-c",
        &late,
    ]);
    let start = Instant::now();
    let t = common::drive_on_pty(c, true, &[]);
    assert!(start.elapsed() < Duration::from_secs(30), "{t}");
    assert!(t.contains("the question is withdrawn"), "{t}");
    let withdrawn = t.find("the question is withdrawn").unwrap();
    let summary = t.find("exited with status").expect(&t);
    assert!(summary > withdrawn && t.contains("AGENT-DONE"), "{t}");
}
