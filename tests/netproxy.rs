//! The network proxy from the host side: real servers on the host's
//! loopback (granted by explicit IP entries), clients talking to the proxy's
//! unix socket directly or through a TCP shim (as the in-sandbox forwarder
//! does), `curl` and `openssl` as real clients.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use airlock::event::EventKind;
use airlock::netproxy::ssrf::{LookupFuture, Resolver};
use airlock::netproxy::{ConsentAnswer, ConsentRequest, Proxy, ProxyConfig};
use airlock::policy::{NetMode, NetPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;

static PANICS: AtomicUsize = AtomicUsize::new(0);
static HOOK: Once = Once::new();

/// Counts panics anywhere (connection tasks swallow them otherwise).
fn watch_panics() {
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            prev(info)
        }));
    });
}

/// Names → addresses, for tests that must not touch real DNS.
/// Names and their addresses, and how many lookups were made.
struct FakeDns(HashMap<String, Vec<IpAddr>>, AtomicUsize);

impl Resolver for FakeDns {
    fn lookup<'a>(&'a self, name: &'a str, port: u16) -> LookupFuture<'a> {
        self.1.fetch_add(1, Ordering::SeqCst);
        let r = match self.0.get(name) {
            Some(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such name",
            )),
        };
        Box::pin(async move { r })
    }
}

fn fake(pairs: &[(&str, &[&str])]) -> Arc<FakeDns> {
    Arc::new(FakeDns(
        pairs
            .iter()
            .map(|(n, ips)| {
                (
                    n.to_string(),
                    ips.iter().map(|i| i.parse().unwrap()).collect(),
                )
            })
            .collect(),
        AtomicUsize::new(0),
    ))
}

struct Setup {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    events: mpsc::UnboundedReceiver<EventKind>,
    consent: mpsc::UnboundedReceiver<ConsentRequest>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn policy(mode: NetMode, allow: &[String]) -> NetPolicy {
    NetPolicy {
        mode,
        allow_hosts: allow.to_vec(),
        consent_timeout_secs: 60,
    }
}

fn start(policy: NetPolicy, resolver: Option<Arc<FakeDns>>) -> Setup {
    watch_panics();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("proxy.sock");
    let (etx, erx) = mpsc::unbounded_channel();
    let (ctx, crx) = mpsc::unbounded_channel();
    let mut cfg = ProxyConfig::new(&sock, policy, etx);
    cfg.consent = Some(ctx);
    cfg.connect_timeout = Duration::from_secs(3);
    if let Some(r) = resolver {
        cfg.resolver = r;
    }
    let proxy = Proxy::bind(cfg).unwrap();
    let server = tokio::spawn(proxy.serve());
    Setup {
        _dir: dir,
        sock,
        events: erx,
        consent: crx,
        server,
    }
}

/// A TCP echo server on 127.0.0.1; returns its port.
async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A tiny HTTP server: answers every request with what it received, and
/// keeps the raw request heads for assertions.
async fn http_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = format!(
                    "you sent: {}",
                    String::from_utf8_lossy(&buf[head_end..head_end + len])
                );
                seen.lock().unwrap().push(head);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            });
        }
    });
    (port, seen)
}

async fn read_to_end(s: &mut UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut v))
        .await
        .expect("proxy did not close")
        .ok();
    v
}

/// Reads a response head (up to the blank line) and returns it.
async fn read_head(s: &mut UnixStream) -> String {
    let mut v = Vec::new();
    let mut b = [0u8; 1];
    while !v.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        v.push(b[0]);
    }
    String::from_utf8_lossy(&v).to_string()
}

/// The next Flow event (skipping others).
async fn next_flow(rx: &mut mpsc::UnboundedReceiver<EventKind>) -> EventKind {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no flow event")
            .unwrap();
        if matches!(e, EventKind::Flow { .. }) {
            return e;
        }
    }
}

fn decision(e: &EventKind) -> (String, String) {
    match e {
        EventKind::Flow {
            decision, reason, ..
        } => (decision.clone(), reason.clone()),
        _ => unreachable!(),
    }
}

async fn connect_via(sock: &Path, target: &str) -> (UnixStream, String) {
    let mut s = UnixStream::connect(sock).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

#[tokio::test]
async fn connect_tunnel_to_granted_ip_and_flow_counts_bytes() {
    let port = echo_server().await;
    let mut p = start(policy(NetMode::Allow, &[format!("127.0.0.1:{port}")]), None);
    let (mut s, head) = connect_via(&p.sock, &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = [0u8; 23];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the tunnel");
    drop(s);
    match next_flow(&mut p.events).await {
        EventKind::Flow {
            host,
            port: fport,
            address,
            protocol,
            decision,
            bytes_out,
            bytes_in,
            ..
        } => {
            assert_eq!((host.as_str(), fport), ("127.0.0.1", port));
            assert_eq!(address, Some(format!("127.0.0.1:{port}")));
            assert_eq!(protocol, "http-connect");
            assert_eq!(decision, "allow");
            assert_eq!((bytes_out, bytes_in), (23, 23));
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn host_not_on_list_gets_403_and_deny_event() {
    let mut p = start(
        policy(NetMode::Allow, &["allowed.example".into()]),
        Some(fake(&[])),
    );
    let (mut s, head) = connect_via(&p.sock, "other.example:443").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("not on the allow-list"), "{head}");
    read_to_end(&mut s).await;
    match next_flow(&mut p.events).await {
        EventKind::Flow {
            host,
            port,
            decision,
            ..
        } => {
            assert_eq!(
                (host.as_str(), port, decision.as_str()),
                ("other.example", 443, "deny")
            );
        }
        _ => unreachable!(),
    }
    // Suffix tricks do not pass either.
    for t in [
        "allowed.example.evil.net:443",
        "evilallowed.example:443",
        "allowed.example:8443",
    ] {
        let (_s, head) = connect_via(&p.sock, t).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{t}: {head}");
    }
}

#[tokio::test]
async fn loopback_without_explicit_ip_grant_is_refused() {
    let port = echo_server().await;
    // The name is allowed, but it resolves to loopback, which is not named.
    let mut p = start(
        policy(
            NetMode::Allow,
            &[format!("localhost:{port}"), "*.example.com:*".into()],
        ),
        Some(fake(&[("localhost", &["127.0.0.1"])])),
    );
    let (_s, head) = connect_via(&p.sock, &format!("localhost:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (d, why) = decision(&next_flow(&mut p.events).await);
    assert_eq!(d, "deny");
    assert!(why.contains("loopback"), "{why}");
    // IP literals in odd spellings are the same address.
    for t in [
        format!("127.0.0.1:{port}"),
        format!("2130706433:{port}"),
        format!("0x7f.1:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
    ] {
        let (_s, head) = connect_via(&p.sock, &t).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{t}: {head}");
    }
}

#[tokio::test]
async fn dns_rebinding_is_refused_and_the_checked_address_is_connected() {
    let port = echo_server().await;
    let dns = fake(&[
        ("rebind.example", &["127.0.0.1"]),
        ("mixed.example", &["169.254.169.254", "127.0.0.1"]),
        ("other-loop.example", &["127.0.0.2"]),
    ]);
    let allow = vec![
        format!("rebind.example:{port}"),
        format!("mixed.example:{port}"),
        format!("other-loop.example:{port}"),
    ];
    let mut p = start(policy(NetMode::Allow, &allow), Some(dns.clone()));
    let (_s, head) = connect_via(&p.sock, &format!("rebind.example:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(decision(&next_flow(&mut p.events).await)
        .1
        .contains("loopback"));

    // With 127.0.0.1 granted, the metadata address of a mixed answer is dropped
    // and the granted one is what gets connected.
    let mut allow2 = allow.clone();
    allow2.push(format!("127.0.0.1:{port}"));
    let mut p = start(policy(NetMode::Allow, &allow2), Some(dns));
    let (mut s, head) = connect_via(&p.sock, &format!("mixed.example:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    match next_flow(&mut p.events).await {
        EventKind::Flow {
            address, decision, ..
        } => {
            assert_eq!(decision, "allow");
            assert_eq!(address, Some(format!("127.0.0.1:{port}")));
        }
        _ => unreachable!(),
    }
    // A grant for 127.0.0.1 does not cover 127.0.0.2.
    let (_s, head) = connect_via(&p.sock, &format!("other-loop.example:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

/// Captures the ClientHello `openssl s_client` sends for `servername`
/// (`None`: no SNI).
async fn captured_hello(servername: Option<&str>) -> Vec<u8> {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")]);
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl is installed");
    let (mut s, _) = l.accept().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // Read until the record is complete (length from the record header).
    while buf.len() < 5 || buf.len() < 5 + u16::from_be_bytes([buf[3], buf[4]]) as usize {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    let _ = child.kill().await;
    buf
}

#[tokio::test]
async fn sni_must_match_the_connect_host() {
    let port = echo_server().await;
    let dns = fake(&[("good.example", &["127.0.0.1"])]);
    let allow = vec![format!("good.example:{port}"), format!("127.0.0.1:{port}")];
    let mut p = start(policy(NetMode::Allow, &allow), Some(dns));

    // Matching SNI (case and trailing dot normalised): bytes reach the server.
    let hello = captured_hello(Some("Good.Example")).await;
    let (mut s, head) = connect_via(&p.sock, &format!("good.example.:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, hello);
    drop(s);
    assert_eq!(decision(&next_flow(&mut p.events).await).0, "allow");

    // Fronting: CONNECT to an allowed host, SNI for another.
    let hello = captured_hello(Some("evil.example")).await;
    let (mut s, head) = connect_via(&p.sock, &format!("good.example:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(&hello).await.unwrap();
    assert!(
        read_to_end(&mut s).await.is_empty(),
        "nothing may come back"
    );
    let (d, why) = decision(&next_flow(&mut p.events).await);
    assert_eq!(d, "deny");
    assert!(why.contains("evil.example"), "{why}");

    // No SNI: allowed to an IP literal named in the allow-list, not to a name.
    let bare = captured_hello(None).await;
    let (mut s, _) = connect_via(&p.sock, &format!("127.0.0.1:{port}")).await;
    s.write_all(&bare).await.unwrap();
    let mut back = vec![0u8; bare.len()];
    s.read_exact(&mut back).await.unwrap();
    drop(s);
    assert_eq!(decision(&next_flow(&mut p.events).await).0, "allow");
    let (mut s, _) = connect_via(&p.sock, &format!("good.example:{port}")).await;
    s.write_all(&bare).await.unwrap();
    assert!(read_to_end(&mut s).await.is_empty());
    assert_eq!(decision(&next_flow(&mut p.events).await).0, "deny");

    // ECH (extension 0xfe0d appended to a real hello) is refused.
    let ech = with_extension(
        &captured_hello(Some("good.example")).await,
        0xfe0d,
        &[0u8; 16],
    );
    let (mut s, _) = connect_via(&p.sock, &format!("good.example:{port}")).await;
    s.write_all(&ech).await.unwrap();
    assert!(read_to_end(&mut s).await.is_empty());
    let (d, why) = decision(&next_flow(&mut p.events).await);
    assert_eq!(d, "deny");
    assert!(why.contains("encrypted client hello"), "{why}");
}

/// Appends one extension to a single-record ClientHello, fixing the lengths.
fn with_extension(hello: &[u8], ty: u16, data: &[u8]) -> Vec<u8> {
    let add = 4 + data.len();
    let mut v = hello.to_vec();
    let bump = |v: &mut Vec<u8>, at: usize, width: usize| {
        let mut n = 0usize;
        for i in 0..width {
            n = (n << 8) | v[at + i] as usize;
        }
        n += add;
        for i in 0..width {
            v[at + i] = (n >> (8 * (width - 1 - i))) as u8;
        }
    };
    bump(&mut v, 3, 2); // record length
    bump(&mut v, 6, 3); // handshake length
                        // Extensions length: after version, random, session id, suites, compression.
    let mut at = 9 + 2 + 32;
    at += 1 + v[at] as usize;
    at += 2 + u16::from_be_bytes([v[at], v[at + 1]]) as usize;
    at += 1 + v[at] as usize;
    bump(&mut v, at, 2);
    v.extend_from_slice(&ty.to_be_bytes());
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

#[tokio::test]
async fn plain_http_is_forwarded_in_origin_form_with_connection_close() {
    let (port, seen) = http_server().await;
    let mut p = start(policy(NetMode::Allow, &[format!("127.0.0.1:{port}")]), None);
    let mut s = UnixStream::connect(&p.sock).await.unwrap();
    let req = format!(
        "POST http://127.0.0.1:{port}/submit?x=1 HTTP/1.1\r\nHost: ignored.example\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic c2VjcmV0\r\nX-Keep: yes\r\nContent-Length: 5\r\n\r\nhello"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let resp = String::from_utf8(read_to_end(&mut s).await).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("Connection: close\r\n"), "{resp}");
    assert!(!resp.to_ascii_lowercase().contains("keep-alive"), "{resp}");
    assert!(resp.ends_with("you sent: hello"), "{resp}");
    let head = seen.lock().unwrap()[0].clone();
    assert!(head.starts_with("POST /submit?x=1 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
        "{head}"
    );
    assert!(head.contains("X-Keep: yes\r\n"));
    assert!(head.contains("Connection: close\r\n"));
    assert!(!head.contains("Proxy-"), "{head}");
    match next_flow(&mut p.events).await {
        EventKind::Flow {
            protocol,
            decision,
            bytes_out,
            bytes_in,
            ..
        } => {
            assert_eq!((protocol.as_str(), decision.as_str()), ("http", "allow"));
            assert!(bytes_out > 5 && bytes_in > 15);
        }
        _ => unreachable!(),
    }

    // Userinfo tricks and non-allowed hosts.
    let mut s = UnixStream::connect(&p.sock).await.unwrap();
    s.write_all(format!("GET http://127.0.0.1:{port}@evil.example/ HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&read_to_end(&mut s).await).starts_with("HTTP/1.1 400"));
    let mut s = UnixStream::connect(&p.sock).await.unwrap();
    s.write_all(b"GET http://8.8.8.8/ HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&read_to_end(&mut s).await).starts_with("HTTP/1.1 403"));
}

async fn socks_connect(sock: &Path, atyp: u8, addr: &[u8], port: u16) -> (UnixStream, Vec<u8>) {
    let mut s = UnixStream::connect(sock).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut g = [0u8; 2];
    s.read_exact(&mut g).await.unwrap();
    assert_eq!(g, [5, 0]);
    let mut req = vec![5, 1, 0, atyp];
    if atyp == 3 {
        req.push(addr.len() as u8);
    }
    req.extend_from_slice(addr);
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut rep = [0u8; 4];
    s.read_exact(&mut rep).await.unwrap();
    let rest = match rep[3] {
        1 => 6,
        4 => 18,
        _ => 0,
    };
    let mut tail = vec![0u8; rest];
    s.read_exact(&mut tail).await.unwrap();
    (s, rep.to_vec())
}

#[tokio::test]
async fn socks5_connect_by_name_ipv4_ipv6_and_refused_commands() {
    let port = echo_server().await;
    let dns = fake(&[("good.example", &["127.0.0.1"])]);
    let allow = vec![
        format!("good.example:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    let mut p = start(policy(NetMode::Allow, &allow), Some(dns));

    let (mut s, rep) = socks_connect(&p.sock, 3, b"good.example", port).await;
    assert_eq!(rep[1], 0);
    s.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hi");
    drop(s);
    match next_flow(&mut p.events).await {
        EventKind::Flow {
            host,
            protocol,
            decision,
            ..
        } => {
            assert_eq!(
                (host.as_str(), protocol.as_str(), decision.as_str()),
                ("good.example", "socks5", "allow")
            );
        }
        _ => unreachable!(),
    }
    let (_s, rep) = socks_connect(&p.sock, 1, &[127, 0, 0, 1], port).await;
    assert_eq!(rep[1], 0);
    // IPv6 loopback: refused by policy only if not granted; here it is, so the
    // answer is success or, without IPv6 on this host, a connect failure.
    let (_s, rep) = socks_connect(
        &p.sock,
        4,
        &"::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        port,
    )
    .await;
    assert_ne!(rep[1], 2, "granted [::1] must not be refused by policy");
    // Not allowed → 0x02.
    let (_s, rep) = socks_connect(&p.sock, 3, b"other.example", 443).await;
    assert_eq!(rep[1], 2);
    let (_s, rep) = socks_connect(&p.sock, 1, &[10, 0, 0, 1], 443).await;
    assert_eq!(rep[1], 2);

    // BIND and UDP ASSOCIATE → 0x07.
    for cmd in [2u8, 3] {
        let mut s = UnixStream::connect(&p.sock).await.unwrap();
        s.write_all(&[5, 1, 0, 5, cmd, 0, 1, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let out = read_to_end(&mut s).await;
        assert_eq!(&out[..2], &[5, 0]);
        assert_eq!(out[3], 7, "cmd {cmd}");
    }
    // No acceptable method → 0xFF.
    let mut s = UnixStream::connect(&p.sock).await.unwrap();
    s.write_all(&[5, 1, 2]).await.unwrap();
    assert_eq!(read_to_end(&mut s).await, vec![5, 0xff]);
    // SOCKS4 → 0x5B.
    let mut s = UnixStream::connect(&p.sock).await.unwrap();
    s.write_all(&[4, 1, 0, 80, 1, 2, 3, 4, 0]).await.unwrap();
    assert_eq!(read_to_end(&mut s).await[1], 0x5b);
}

async fn ask_setup(timeout_secs: u64) -> (Setup, u16) {
    let port = echo_server().await;
    let dns = fake(&[("ask.example", &["127.0.0.1"])]);
    let mut pol = policy(NetMode::Ask, &[format!("127.0.0.1:{port}")]);
    pol.consent_timeout_secs = timeout_secs;
    (start(pol, Some(dns)), port)
}

#[tokio::test]
async fn ask_mode_holds_until_allow_once() {
    let (mut p, port) = ask_setup(60).await;
    let sock = p.sock.clone();
    let client =
        tokio::spawn(async move { connect_via(&sock, &format!("ask.example:{port}")).await });
    let req = tokio::time::timeout(Duration::from_secs(10), p.consent.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((req.host.as_str(), req.port), ("ask.example", port));
    assert!(
        !client.is_finished(),
        "the connection is held while the user decides"
    );
    req.answer(ConsentAnswer::AllowOnce);
    let (mut s, head) = client.await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"ok").await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    let mut kinds = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), p.events.recv())
            .await
            .unwrap()
            .unwrap();
        let done = matches!(e, EventKind::Flow { .. });
        kinds.push(e);
        if done {
            break;
        }
    }
    assert!(
        matches!(kinds[0], EventKind::ConsentRequested { ref host, .. } if host == "ask.example")
    );
    assert!(
        matches!(kinds[1], EventKind::ConsentAnswered { ref answer, .. } if answer == "allow_once")
    );
    assert_eq!(decision(&kinds[2]).0, "allow");
    // Once means once: the next connection asks again.
    let sock = p.sock.clone();
    let again =
        tokio::spawn(async move { connect_via(&sock, &format!("ask.example:{port}")).await });
    let req = tokio::time::timeout(Duration::from_secs(10), p.consent.recv())
        .await
        .unwrap()
        .unwrap();
    req.answer(ConsentAnswer::AllowTask);
    assert!(again.await.unwrap().1.starts_with("HTTP/1.1 200"));
    // For the task: no further question.
    let (_s, head) = connect_via(&p.sock, &format!("ask.example:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"));
    assert!(p.consent.try_recv().is_err());
}

#[tokio::test]
async fn ask_mode_fails_after_deny_and_is_not_asked_again() {
    let (mut p, port) = ask_setup(60).await;
    let sock = p.sock.clone();
    let client =
        tokio::spawn(async move { connect_via(&sock, &format!("ask.example:{port}")).await });
    let req = tokio::time::timeout(Duration::from_secs(10), p.consent.recv())
        .await
        .unwrap()
        .unwrap();
    req.answer(ConsentAnswer::Deny);
    let (_s, head) = client.await.unwrap();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (_s, head) = connect_via(&p.sock, &format!("ask.example:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(p.consent.try_recv().is_err());
}

#[tokio::test]
async fn ask_mode_times_out_to_deny() {
    let (mut p, port) = ask_setup(1).await;
    let (_s, head) = connect_via(&p.sock, &format!("ask.example:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // The question was asked (and left unanswered).
    let _req = p.consent.recv().await.unwrap();
    let mut answered = None;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), p.events.recv()).await {
        if let EventKind::ConsentAnswered { answer, .. } = e {
            answered = Some(answer);
            break;
        }
    }
    assert_eq!(answered.as_deref(), Some("timeout"));
}

/// A server that speaks first (SSH's banner, SMTP's greeting) gets its
/// tunnel: the client has sent nothing that could be a ClientHello (pass
/// 11B found such tunnels always refused as "cut off").
#[tokio::test]
async fn a_server_that_speaks_first_gets_its_tunnel() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"SSH-2.0-test\r\n").await.unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&b).await.unwrap();
    });
    let p = start(policy(NetMode::Allow, &[format!("127.0.0.1:{port}")]), None);
    let (mut s, head) = connect_via(&p.sock, &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut banner = [0u8; 14];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut banner))
        .await
        .expect("the banner came through")
        .unwrap();
    assert_eq!(&banner, b"SSH-2.0-test\r\n");
    s.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello");
}

/// A server that greets first and then starts TLS (STARTTLS-style, or a
/// multiplexer) must not take a ClientHello for another name: what the
/// client sends after the banner is checked all the same (pass 12B).
#[tokio::test]
async fn after_a_server_greeting_the_client_hello_is_still_checked() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    {
        let got = got.clone();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"220 ready\r\n").await.unwrap();
            let mut b = vec![0u8; 4096];
            while let Ok(n) = s.read(&mut b).await {
                if n == 0 {
                    break;
                }
                got.lock().unwrap().extend_from_slice(&b[..n]);
            }
        });
    }
    let mut p = start(policy(NetMode::Allow, &[format!("127.0.0.1:{port}")]), None);
    let (mut s, head) = connect_via(&p.sock, &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut banner = [0u8; 11];
    s.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
    let hello = captured_hello(Some("evil.example")).await;
    s.write_all(&hello).await.unwrap();
    assert!(
        read_to_end(&mut s).await.is_empty(),
        "nothing may come back"
    );
    let (d, why) = decision(&next_flow(&mut p.events).await);
    assert_eq!(d, "deny", "{why}");
    assert!(why.contains("evil.example"), "{why}");
    assert!(
        got.lock().unwrap().is_empty(),
        "the hello reached the server"
    );
}

#[tokio::test]
async fn ask_mode_never_asks_about_refused_addresses() {
    let port = echo_server().await;
    let mut p = start(policy(NetMode::Ask, &[]), None);
    let (_s, head) = connect_via(&p.sock, &format!("169.254.169.254:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(p.consent.try_recv().is_err());
}

/// A name the user has not allowed is never looked up: the lookup alone
/// would carry it (and whatever the agent encoded in it) to the user's
/// resolver, with no question asked (pass 11B).
#[tokio::test]
async fn ask_mode_looks_up_no_name_before_the_answer() {
    let dns = fake(&[]);
    let mut p = start(policy(NetMode::Ask, &[]), Some(dns.clone()));
    let client = tokio::spawn({
        let sock = p.sock.clone();
        async move {
            connect_via(&sock, "secret-in-a-label.exfil.example:443")
                .await
                .1
        }
    });
    let q = tokio::time::timeout(Duration::from_secs(10), p.consent.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no question; {} lookups", dns.1.load(Ordering::SeqCst)));
    assert_eq!(dns.1.load(Ordering::SeqCst), 0);
    q.answer(ConsentAnswer::Deny);
    let head = client.await.unwrap();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(dns.1.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_corpus_gets_replies_and_never_panics() {
    let port = echo_server().await;
    let p = start(policy(NetMode::Allow, &[format!("127.0.0.1:{port}")]), None);
    let huge = format!(
        "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let many = format!(
        "GET http://127.0.0.1:{port}/ HTTP/1.1\r\n{}\r\n",
        "X: y\r\n".repeat(200)
    );
    let cases: Vec<(Vec<u8>, &[u8])> = vec![
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), b"HTTP/1.1 400"),
        (b"OPTIONS * HTTP/1.1\r\n\r\n".to_vec(), b"HTTP/1.1 405"),
        (b"GET https://a.example/ HTTP/1.1\r\n\r\n".to_vec(), b"HTTP/1.1 400"),
        (b"CONNECT nohost HTTP/1.1\r\n\r\n".to_vec(), b"HTTP/1.1 400"),
        (b"CONNECT a.example:99999 HTTP/1.1\r\n\r\n".to_vec(), b"HTTP/1.1 400"),
        (b"CONNECT [::1 HTTP/1.1\r\n\r\n".to_vec(), b"HTTP/1.1 400"),
        (b"CONNECT b\xc3\xbccher.example:443 HTTP/1.1\r\n\r\n".to_vec(), b"HTTP/1.1 400"),
        (b"GET\x00 / HTTP/1.1\r\n\r\n".to_vec(), b"HTTP/1.1 400"),
        (b"GET http://a.example/ HTTP/9.9\r\n\r\n".to_vec(), b"HTTP/1.1 400"),
        (b"GET http://a.example/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), b"HTTP/1.1 400"),
        (b"GET http://a.example/ HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(), b"HTTP/1.1 400"),
        (b"GET http://a.example/ HTTP/1.1\r\nHost: x\r\n".to_vec(), b"HTTP/1.1 400"),
        (huge.into_bytes(), b"HTTP/1.1 431"),
        (many.into_bytes(), b"HTTP/1.1 431"),
        (b"\x16\x03\x01\x00\x05hello".to_vec(), b"HTTP/1.1 400"),
        (vec![0xff; 100], b"HTTP/1.1 400"),
        // SOCKS5 greeting then a request with version 4: general failure.
        (vec![5, 1, 0, 4, 1, 0, 1, 127, 0, 0, 1, 0, 80], &[5, 0, 5, 1]),
        // Unknown address type.
        (vec![5, 1, 0, 5, 1, 0, 9, 0, 0], &[5, 0, 5, 8]),
        // Empty domain name.
        (vec![5, 1, 0, 5, 1, 0, 3, 0, 0, 80], &[5, 0, 5, 2]),
        // Truncated SOCKS: the proxy just closes.
        (vec![5, 2], b""),
        (vec![5, 1, 0, 5, 1], &[5, 0]),
        // A control connection with a wrong secret is closed.
        (b"\0AIRLOCK-CONTROL/1 wrong\n".to_vec(), b""),
    ];
    for (input, want) in &cases {
        let mut s = UnixStream::connect(&p.sock).await.unwrap();
        let _ = s.write_all(input).await;
        let _ = s.shutdown().await;
        let out = read_to_end(&mut s).await;
        assert!(
            out.starts_with(want),
            "{:?} → {:?}",
            String::from_utf8_lossy(&input[..input.len().min(60)]),
            String::from_utf8_lossy(&out)
        );
    }
    // Pseudo-random garbage, whole and truncated.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..300 {
        let mut data = Vec::new();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 300) as usize;
        for i in 0..len {
            data.push((seed.rotate_left(i as u32 % 64) >> 3) as u8);
        }
        if let Some(b) = data.first_mut() {
            *b = [5u8, b'C', b'G', 4, 0x16][(seed % 5) as usize];
        }
        let mut s = UnixStream::connect(&p.sock).await.unwrap();
        let _ = s.write_all(&data).await;
        let _ = s.shutdown().await;
        read_to_end(&mut s).await;
    }
    // Still serving.
    let (_s, head) = connect_via(&p.sock, &format!("127.0.0.1:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200"));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
}

/// A TCP listener on 127.0.0.1 whose connections are spliced to the proxy
/// socket, as the in-sandbox forwarder does; returns its port.
async fn tcp_shim(sock: &Path) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let sock = sock.to_path_buf();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let sock = sock.clone();
            tokio::spawn(async move { airlock::netproxy::forwarder::splice(tcp, &sock).await });
        }
    });
    port
}

async fn curl(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args)
            .output(),
    )
    .await
    .unwrap()
    .expect("curl is installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A TLS server (`openssl s_server -www`) for `good.example` with a
/// self-signed certificate made now; returns (port, certificate path, guard).
async fn tls_server(dir: &Path) -> (u16, PathBuf, tokio::process::Child) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=good.example",
        ])
        .args(["-addext", "subjectAltName=DNS:good.example", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl req failed");
    // Find a free port, then let s_server take it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new("openssl")
        .args([
            "s_server",
            "-www",
            "-quiet",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
        ])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return (port, cert, child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("openssl s_server did not start");
}

#[tokio::test]
async fn curl_end_to_end_http_https_socks5_and_denials() {
    let (hport, _seen) = http_server().await;
    let dir = tempfile::tempdir().unwrap();
    let (tport, cert, _server) = tls_server(dir.path()).await;
    let dns = fake(&[
        ("good.example", &["127.0.0.1"]),
        ("web.example", &["127.0.0.1"]),
    ]);
    let allow = vec![
        format!("good.example:{tport}"),
        format!("127.0.0.1:{tport}"),
        format!("web.example:{hport}"),
        format!("127.0.0.1:{hport}"),
    ];
    let mut p = start(policy(NetMode::Allow, &allow), Some(dns));
    let shim = tcp_shim(&p.sock).await;
    let proxy = format!("http://127.0.0.1:{shim}");
    let cert = cert.to_str().unwrap().to_string();

    // Plain HTTP through the proxy.
    let (code, out, err) =
        curl(&["-x", &proxy, &format!("http://web.example:{hport}/plain")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "you sent: ");
    // HTTPS through CONNECT; the SNI check sees a matching name.
    let (code, out, err) = curl(&[
        "-x",
        &proxy,
        "--cacert",
        &cert,
        &format!("https://good.example:{tport}/"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("s_server"), "{out}");
    // HTTP through a CONNECT tunnel (curl -p).
    let (code, out, err) = curl(&[
        "-p",
        "-x",
        &proxy,
        &format!("http://web.example:{hport}/tunnel"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "you sent: ");
    // SOCKS5 with the name resolved by the proxy.
    let socks = format!("127.0.0.1:{shim}");
    let (code, out, err) = curl(&[
        "--socks5-hostname",
        &socks,
        &format!("http://web.example:{hport}/socks"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "you sent: ");
    let (code, _, err) = curl(&[
        "--socks5-hostname",
        &socks,
        "--cacert",
        &cert,
        &format!("https://good.example:{tport}/"),
    ])
    .await;
    assert_eq!(code, 0, "{err}");

    // Denied: a host not on the list.
    let (_, out, _) = curl(&[
        "-x",
        &proxy,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://blocked.example/",
    ])
    .await;
    assert_eq!(out, "403");
    let (code, _, _) = curl(&["-x", &proxy, "https://blocked.example/"]).await;
    assert_eq!(code, 56, "curl reports the refused CONNECT");
    let (code, _, _) = curl(&["--socks5-hostname", &socks, "http://blocked.example/"]).await;
    assert_ne!(code, 0);

    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), p.events.recv()).await
    {
        if let EventKind::Flow {
            host,
            protocol,
            decision,
            ..
        } = e
        {
            seen.push((host, protocol, decision));
        }
    }
    for want in [
        ("web.example", "http", "allow"),
        ("good.example", "http-connect", "allow"),
        ("web.example", "http-connect", "allow"),
        ("web.example", "socks5", "allow"),
        ("good.example", "socks5", "allow"),
        ("blocked.example", "http", "deny"),
        ("blocked.example", "http-connect", "deny"),
        ("blocked.example", "socks5", "deny"),
    ] {
        assert!(
            seen.iter()
                .any(|(h, p, d)| (h.as_str(), p.as_str(), d.as_str()) == want),
            "{want:?} not in {seen:?}"
        );
    }
}
