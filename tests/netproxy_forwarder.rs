//! The in-sandbox forwarder, run in a fresh user+net+mount namespace
//! (`unshare` from util-linux) through `examples/forwarder_probe.rs`, against
//! the real proxy on the host side. A client inside the namespace (curl)
//! reaches a server on the host's loopback only through forwarder → unix
//! socket → proxy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use airlock::event::EventKind;
use airlock::netproxy::ssrf::{LookupFuture, Resolver};
use airlock::netproxy::{Proxy, ProxyConfig};
use airlock::policy::{NetMode, NetPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const TOKEN: &str = "test-control-secret";

struct FakeDns(HashMap<String, IpAddr>);

impl Resolver for FakeDns {
    fn lookup<'a>(&'a self, name: &'a str, port: u16) -> LookupFuture<'a> {
        let r = self
            .0
            .get(name)
            .map(|ip| vec![SocketAddr::new(*ip, port)])
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"));
        Box::pin(async move { r })
    }
}

/// The probe binary, brought up to date first (`cargo test --test` alone
/// does not build examples; a full `cargo test` does).
fn probe() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join("forwarder_probe");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--example", "forwarder_probe"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(path.exists(), "cannot build {}", path.display());
    if !built {
        eprintln!(
            "warning: rebuilding forwarder_probe failed; using the existing {}",
            path.display()
        );
    }
    path
}

/// Whether this machine lets us create the namespaces at all.
fn namespaces_available() -> bool {
    std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--mount", "true"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

async fn http_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = "hello from the host";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            });
        }
    });
    port
}

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
    events: Vec<EventKind>,
}

/// Starts the proxy, runs `cmd` inside the namespaces behind the forwarder.
async fn run_inside(
    allow: Vec<String>,
    names: &[(&str, &str)],
    extra_ports: &str,
    cmd: &[&str],
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("proxy.sock");
    let (etx, mut erx) = mpsc::unbounded_channel();
    let mut cfg = ProxyConfig::new(
        &sock,
        NetPolicy {
            mode: NetMode::Allow,
            allow_hosts: allow,
            consent_timeout_secs: 60,
        },
        etx,
    );
    cfg.control_token = Some(TOKEN.into());
    cfg.resolver = Arc::new(FakeDns(
        names
            .iter()
            .map(|(n, ip)| (n.to_string(), ip.parse().unwrap()))
            .collect(),
    ));
    let proxy = Proxy::bind(cfg).unwrap();
    let server = tokio::spawn(proxy.serve());
    let probe = probe();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--net", "--mount", "--"])
            .arg(&probe)
            .arg(&sock)
            .args(["3128", TOKEN, extra_ports, "--"])
            .args(cmd)
            .output(),
    )
    .await
    .expect("the probe finished")
    .unwrap();
    // Let the last flow events arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.abort();
    let mut events = Vec::new();
    while let Ok(e) = erx.try_recv() {
        events.push(e);
    }
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        events,
    }
}

fn flows(r: &Run) -> Vec<(String, u16, String)> {
    r.events
        .iter()
        .filter_map(|e| match e {
            EventKind::Flow {
                host,
                port,
                decision,
                ..
            } => Some((host.clone(), *port, decision.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn curl_inside_reaches_the_host_only_through_the_proxy() {
    if !namespaces_available() {
        eprintln!("SKIPPED: unshare --user --net --mount is not permitted on this machine");
        return;
    }
    let port = http_server().await;
    let url = format!("http://127.0.0.1:{port}/");
    let r = run_inside(
        vec![format!("127.0.0.1:{port}")],
        &[],
        "-",
        &[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-x",
            "http://127.0.0.1:3128",
            &url,
        ],
    )
    .await;
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "hello from the host");
    assert_eq!(
        flows(&r),
        vec![("127.0.0.1".to_string(), port, "allow".to_string())]
    );

    // Through [::1] as well, and a refused host gets the proxy's 403.
    let r = run_inside(
        vec![format!("127.0.0.1:{port}")],
        &[],
        "-",
        &[
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-x",
            "http://[::1]:3128",
            "http://blocked.example/",
        ],
    )
    .await;
    assert_eq!(r.stdout, "403", "{}", r.stderr);
    assert_eq!(
        flows(&r),
        vec![("blocked.example".to_string(), 80, "deny".to_string())]
    );

    // Without the proxy there is no way out: the host's loopback is not the sandbox's.
    let r = run_inside(
        vec![format!("127.0.0.1:{port}")],
        &[],
        "-",
        &["curl", "-sS", "--max-time", "5", &url],
    )
    .await;
    assert_ne!(r.status, 0);
    assert!(flows(&r).is_empty());
}

#[tokio::test]
async fn transparent_mode_maps_names_back_and_reports_lookups() {
    if !namespaces_available() {
        eprintln!("SKIPPED: unshare --user --net --mount is not permitted on this machine");
        return;
    }
    let port = http_server().await;
    let allow = vec![format!("web.test:{port}"), format!("127.0.0.1:{port}")];
    let names = [("web.test", "127.0.0.1"), ("blocked.test", "127.0.0.1")];
    // No proxy variables: curl resolves through the sandbox's DNS responder
    // and connects to a pool address, which the forwarder catches.
    let script = format!(
        "curl -sS --max-time 20 http://web.test:{port}/; echo; curl -sS --max-time 20 http://blocked.test:{port}/; echo \" exit=$?\""
    );
    let r = run_inside(allow, &names, &port.to_string(), &["sh", "-c", &script]).await;
    assert_eq!(r.status, 0, "{}", r.stderr);
    let mut lines = r.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("hello from the host"),
        "{} / {}",
        r.stdout,
        r.stderr
    );
    let second = lines.next().unwrap_or_default();
    assert!(
        !second.contains("hello"),
        "blocked.test must not get through: {second}"
    );
    assert!(!second.ends_with("exit=0"), "{second}");

    let dns: Vec<(String, String)> = r
        .events
        .iter()
        .filter_map(|e| match e {
            EventKind::DnsQuery { name, answer } => Some((name.clone(), answer.clone())),
            _ => None,
        })
        .collect();
    assert!(
        dns.contains(&("web.test".into(), "198.18.0.2".into())),
        "{dns:?}"
    );
    assert!(
        dns.iter()
            .any(|(n, a)| n == "blocked.test" && a.starts_with("198.18.")),
        "{dns:?}"
    );
    let f = flows(&r);
    assert!(
        f.contains(&("web.test".to_string(), port, "allow".to_string())),
        "{f:?}"
    );
    assert!(
        f.contains(&("blocked.test".to_string(), port, "deny".to_string())),
        "{f:?}"
    );
}
