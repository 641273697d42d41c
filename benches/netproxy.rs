//! Network proxy benchmark: throughput of 1 GiB through a CONNECT tunnel
//! against direct loopback, and the latency a connection gains through the
//! proxy (median of 1,000 connects), side by side in one run. Writes the
//! table to `docs/benchmarks.md` under `## Network proxy`.
//!
//! Run: `cargo bench --bench netproxy` (release build).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock::netproxy::{Proxy, ProxyConfig};
use airlock::policy::{NetMode, NetPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

const TOTAL: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;
const CONNECTS: usize = 1000;

/// Reads everything, then answers with one byte: the sender's clock stops
/// only when the last byte has arrived.
async fn sink_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                while s.read(&mut buf).await.unwrap_or(0) > 0 {}
                let _ = s.write_all(b"k").await;
            });
        }
    });
    port
}

async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// The forwarder's hop: TCP on loopback spliced to the proxy socket.
async fn forwarder_hop(sock: PathBuf) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            let sock = sock.clone();
            tokio::spawn(async move { airlock::netproxy::forwarder::splice(tcp, &sock).await });
        }
    });
    port
}

async fn send_all<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S) -> Duration {
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < TOTAL {
        s.write_all(&buf).await.unwrap();
        sent += CHUNK as u64;
    }
    s.shutdown().await.unwrap();
    let mut k = [0u8; 1];
    s.read_exact(&mut k).await.unwrap();
    start.elapsed()
}

async fn open_tunnel<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S, port: u16) {
    s.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

async fn ping<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S) {
    s.write_all(b"p").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn gbps(d: Duration) -> f64 {
    TOTAL as f64 * 8.0 / d.as_secs_f64() / 1e9
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sink = sink_server().await;
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("proxy.sock");
    let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move { while erx.recv().await.is_some() {} });
    let policy = NetPolicy {
        mode: NetMode::Allow,
        allow_hosts: vec![format!("127.0.0.1:{sink}"), format!("127.0.0.1:{echo}")],
        consent_timeout_secs: 60,
    };
    let proxy = Proxy::bind(ProxyConfig::new(&sock, policy, etx)).unwrap();
    tokio::spawn(proxy.serve());
    let hop = forwarder_hop(sock.clone()).await;

    // Throughput.
    let mut direct = TcpStream::connect(("127.0.0.1", sink)).await.unwrap();
    let t_direct = send_all(&mut direct).await;
    let mut via_unix = UnixStream::connect(&sock).await.unwrap();
    open_tunnel(&mut via_unix, sink).await;
    let t_unix = send_all(&mut via_unix).await;
    let mut via_hop = TcpStream::connect(("127.0.0.1", hop)).await.unwrap();
    open_tunnel(&mut via_hop, sink).await;
    let t_hop = send_all(&mut via_hop).await;

    // Connection latency: connect, (tunnel), one byte there and back.
    let mut l_direct = Vec::with_capacity(CONNECTS);
    let mut l_unix = Vec::with_capacity(CONNECTS);
    let mut l_hop = Vec::with_capacity(CONNECTS);
    for _ in 0..CONNECTS {
        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", echo)).await.unwrap();
        s.set_nodelay(true).unwrap();
        ping(&mut s).await;
        l_direct.push(t.elapsed());

        let t = Instant::now();
        let mut s = UnixStream::connect(&sock).await.unwrap();
        open_tunnel(&mut s, echo).await;
        ping(&mut s).await;
        l_unix.push(t.elapsed());

        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", hop)).await.unwrap();
        s.set_nodelay(true).unwrap();
        open_tunnel(&mut s, echo).await;
        ping(&mut s).await;
        l_hop.push(t.elapsed());
    }
    let (m_direct, m_unix, m_hop) = (median(l_direct), median(l_unix), median(l_hop));

    let pct = |d: Duration| 100.0 * t_direct.as_secs_f64() / d.as_secs_f64();
    let added = |m: Duration| ms(m.saturating_sub(m_direct));
    let table = format!(
        "| path | 1 GiB transfer | throughput | % of direct | median connect + first byte (n = {CONNECTS}) | added latency |\n\
         |---|---|---|---|---|---|\n\
         | direct loopback TCP | {:.2} s | {:.2} Gbit/s | 100 % | {} | — |\n\
         | CONNECT tunnel, client on the proxy socket | {:.2} s | {:.2} Gbit/s | {:.0} % | {} | {} |\n\
         | CONNECT tunnel through the forwarder hop (TCP → unix → proxy) | {:.2} s | {:.2} Gbit/s | {:.0} % | {} | {} |\n",
        t_direct.as_secs_f64(),
        gbps(t_direct),
        ms(m_direct),
        t_unix.as_secs_f64(),
        gbps(t_unix),
        pct(t_unix),
        ms(m_unix),
        added(m_unix),
        t_hop.as_secs_f64(),
        gbps(t_hop),
        pct(t_hop),
        ms(m_hop),
        added(m_hop),
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let section = format!(
        "## Network proxy\n\n\
         `cargo bench --bench netproxy` (release), {cores} cores, everything on one machine's loopback; \
         the proxy, the forwarder hop and the servers share one tokio runtime with 2 workers. \
         Targets: ≥ 50 % of direct throughput, < 1 ms added latency.\n\n{table}"
    );
    print!("{section}");
    write_section(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs/benchmarks.md")
            .as_path(),
        &section,
    );
}

/// Replaces (or appends) our section, leaving every other section as it is.
fn write_section(path: &Path, section: &str) {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let mut out = String::new();
    let mut skipping = false;
    let mut replaced = false;
    for line in old.lines() {
        if line.starts_with("## ") {
            skipping = line.trim_end() == "## Network proxy";
            if skipping {
                out.push_str(section);
                out.push('\n');
                replaced = true;
                continue;
            }
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        if !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(section);
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
}
