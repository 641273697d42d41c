//! The forwarder: the part of the network path that runs inside the
//! sandbox, in its own process (forked from the sandbox's PID 1, never the
//! agent's). It owns no policy: every byte goes to the proxy's unix socket,
//! which decides.
//!
//! - Proxy mode: `127.0.0.1:PORT` and `[::1]:PORT` are spliced to the socket;
//!   the agent's `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` point there.
//! - Transparent mode, for tools that ignore proxy variables: a DNS
//!   responder on `127.0.0.1:53` (UDP and TCP) hands out pool addresses
//!   ([`super::dns`]); listeners on `0.0.0.0:80`, `0.0.0.0:443` and the extra
//!   ports catch connections to pool addresses, read the original
//!   destination with `getsockname`, and open `CONNECT name:port` at the
//!   proxy. Lookups are reported over the control channel
//!   ([`super::control`]).
//!
//! What the caller (the sandbox) does: in the sandbox's network namespace,
//! with `CAP_NET_ADMIN` there, call [`configure_pool_address`] (brings `lo`
//! up and makes 198.18.0.0/15 local), write `nameserver 127.0.0.1` to the
//! sandbox's `/etc/resolv.conf`, bind the proxy socket in, fork, and call
//! [`run_forwarder`] in the child; wait for the byte on
//! [`ForwarderConfig::ready`] before starting the agent.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use super::control::{encode, preamble, ControlMessage};
use super::dns::{self, Pool, POOL_GATEWAY, POOL_PREFIX};
use super::io::{read_head, Head, Prefixed};
use crate::i18n::gettext_f;
use crate::Error;

/// What the forwarder listens on and where it sends everything.
#[derive(Debug)]
pub struct ForwarderConfig {
    /// The proxy's socket as seen inside the sandbox.
    pub socket_path: PathBuf,
    /// The proxy port on 127.0.0.1 and [::1].
    pub port: u16,
    /// The secret of the control channel (same as the proxy's
    /// `control_token`).
    pub control_token: String,
    /// `None`: proxy mode only.
    pub transparent: Option<TransparentConfig>,
    /// Receives one byte once every listener is bound, then is closed.
    pub ready: Option<OwnedFd>,
}

/// The transparent-mode listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransparentConfig {
    /// 53 in production.
    pub dns_port: u16,
    /// Ports caught on 0.0.0.0: 80, 443 and the ports the policy names.
    pub ports: Vec<u16>,
}

impl TransparentConfig {
    /// DNS on 53, and 80, 443 plus `extra` (duplicates removed).
    pub fn new(extra: &[u16]) -> Self {
        let mut ports = vec![80, 443];
        for p in extra {
            if !ports.contains(p) {
                ports.push(*p);
            }
        }
        TransparentConfig {
            dns_port: 53,
            ports,
        }
    }
}

/// Runs the forwarder until the process is killed. Creates its own
/// current-thread tokio runtime, so it may be called in a freshly forked,
/// single-threaded child. Set-up failures are printed to stderr and end the
/// process with status 1 (the ready byte is then never written).
pub fn run_forwarder(cfg: ForwarderConfig) -> ! {
    // The agent runs as the same user: without this it could read the
    // control secret from /proc/<pid>/mem or environ.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    match run(cfg) {
        Ok(never) => match never {},
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "airlock forwarder: {e}");
            std::process::exit(1)
        }
    }
}

enum Never {}

struct Listeners {
    proxy: Vec<std::net::TcpListener>,
    dns_udp: Option<std::net::UdpSocket>,
    dns_tcp: Option<std::net::TcpListener>,
    caught: Vec<std::net::TcpListener>,
}

fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?;
    l.set_nonblocking(true).map_err(|e| bind_error(addr, e))?;
    Ok(l)
}

fn bind_error(addr: SocketAddr, e: std::io::Error) -> Error {
    Error::Sandbox(gettext_f(
        "the forwarder cannot listen on {addr}: {error}",
        &[("addr", &addr.to_string()), ("error", &e.to_string())],
    ))
}

fn bind_all(cfg: &ForwarderConfig) -> Result<Listeners, Error> {
    let mut proxy = vec![bind_tcp(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        cfg.port,
    ))?];
    // IPv6 may be disabled in the namespace; IPv4 alone still works.
    match bind_tcp(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), cfg.port)) {
        Ok(l) => proxy.push(l),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "airlock forwarder: {e}");
        }
    }
    let mut l = Listeners {
        proxy,
        dns_udp: None,
        dns_tcp: None,
        caught: Vec::new(),
    };
    if let Some(t) = &cfg.transparent {
        let dns_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), t.dns_port);
        let udp = std::net::UdpSocket::bind(dns_addr).map_err(|e| bind_error(dns_addr, e))?;
        udp.set_nonblocking(true)
            .map_err(|e| bind_error(dns_addr, e))?;
        l.dns_udp = Some(udp);
        l.dns_tcp = Some(bind_tcp(dns_addr)?);
        for p in &t.ports {
            l.caught.push(bind_tcp(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                *p,
            ))?);
        }
    }
    Ok(l)
}

fn run(cfg: ForwarderConfig) -> Result<Never, Error> {
    let listeners = bind_all(&cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::Sandbox(gettext_f(
                "the forwarder cannot start its runtime: {error}",
                &[("error", &e.to_string())],
            ))
        })?;
    let path = Arc::new(cfg.socket_path);
    rt.block_on(async move {
        let to_tokio = |l: std::net::TcpListener| {
            TcpListener::from_std(l).map_err(|e| Error::Sandbox(e.to_string()))
        };
        let mut tasks = tokio::task::JoinSet::new();
        // One budget for every listener, a little above the proxy's, so
        // that the proxy is the one to reach its cap and say so.
        let slots = Arc::new(Semaphore::new(super::MAX_CONNECTIONS + 16));
        for l in listeners.proxy {
            let l = to_tokio(l)?;
            tasks.spawn(accept_loop(l, path.clone(), None, slots.clone()));
        }
        if listeners.dns_udp.is_some() || !listeners.caught.is_empty() {
            let pool = Arc::new(Mutex::new(Pool::new()));
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.spawn(control_writer(path.clone(), cfg.control_token.clone(), rx));
            if let Some(u) = listeners.dns_udp {
                let u = UdpSocket::from_std(u).map_err(|e| Error::Sandbox(e.to_string()))?;
                tasks.spawn(dns_udp(u, pool.clone(), tx.clone()));
            }
            if let Some(t) = listeners.dns_tcp {
                tasks.spawn(dns_tcp(to_tokio(t)?, pool.clone(), tx.clone()));
            }
            for l in listeners.caught {
                tasks.spawn(accept_loop(
                    to_tokio(l)?,
                    path.clone(),
                    Some(pool.clone()),
                    slots.clone(),
                ));
            }
        }
        if let Some(fd) = cfg.ready {
            // SAFETY: writing one byte from a valid buffer to an fd we own.
            unsafe { libc::write(fd.as_raw_fd(), b"1".as_ptr().cast(), 1) };
        }
        // The loops never end; should one die, keep the others serving.
        loop {
            if tasks.join_next().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
    })
}

/// Accepts forever. With a pool, connections are transparent-mode catches.
async fn accept_loop(
    l: TcpListener,
    path: Arc<PathBuf>,
    pool: Option<Arc<Mutex<Pool>>>,
    slots: Arc<Semaphore>,
) {
    loop {
        // At the cap, further connections wait in the listen queue.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, _) = match l.accept().await {
            Ok(c) => c,
            Err(_) => {
                // Out of descriptors, mostly: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let path = path.clone();
        match &pool {
            None => {
                tokio::spawn(async move {
                    splice(tcp, &path).await;
                    drop(slot);
                });
            }
            Some(pool) => {
                let target = match tcp.local_addr() {
                    Ok(SocketAddr::V4(a)) => pool_name(pool, *a.ip()).map(|n| (n, a.port())),
                    _ => None,
                };
                // Not a pool address (e.g. 127.0.0.1:80): nothing to catch.
                if let Some((name, port)) = target {
                    tokio::spawn(async move {
                        transparent(tcp, &path, &name, port).await;
                        drop(slot);
                    });
                }
            }
        }
    }
}

fn pool_name(pool: &Mutex<Pool>, ip: Ipv4Addr) -> Option<String> {
    let p = pool.lock().unwrap_or_else(|e| e.into_inner());
    p.name_for(ip).map(str::to_string)
}

/// Copies a TCP connection to the proxy socket and back.
pub async fn splice(mut tcp: TcpStream, path: &std::path::Path) {
    if let Ok(mut unix) = UnixStream::connect(path).await {
        let _ = super::io::splice(&mut tcp, &mut unix).await;
    }
}

/// Opens `CONNECT name:port` at the proxy for a caught connection.
async fn transparent(mut tcp: TcpStream, path: &std::path::Path, name: &str, port: u16) {
    let Ok(unix) = UnixStream::connect(path).await else {
        return;
    };
    let mut unix = Prefixed::new(unix);
    let req = format!("CONNECT {name}:{port} HTTP/1.1\r\nHost: {name}:{port}\r\n\r\n");
    if unix.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let Ok(Head::Complete(head)) = read_head(&mut unix).await else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    if !matches!(resp.parse(&head), Ok(httparse::Status::Complete(_))) || resp.code != Some(200) {
        // Refused: the client sees the connection close.
        return;
    }
    let _ = super::io::splice(&mut tcp, &mut unix).await;
}

async fn dns_udp(
    sock: UdpSocket,
    pool: Arc<Mutex<Pool>>,
    report: mpsc::UnboundedSender<ControlMessage>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = answer(&pool, &buf[..n], &report) {
            let _ = sock.send_to(&reply, peer).await;
        }
    }
}

async fn dns_tcp(
    l: TcpListener,
    pool: Arc<Mutex<Pool>>,
    report: mpsc::UnboundedSender<ControlMessage>,
) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let pool = pool.clone();
        let report = report.clone();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if s.read_exact(&mut msg).await.is_err() {
                    return;
                }
                let Some(reply) = answer(&pool, &msg, &report) else {
                    return;
                };
                let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&reply);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn answer(
    pool: &Mutex<Pool>,
    query: &[u8],
    report: &mpsc::UnboundedSender<ControlMessage>,
) -> Option<Vec<u8>> {
    let reply = {
        let mut p = pool.lock().unwrap_or_else(|e| e.into_inner());
        dns::answer(&mut p, query)?
    };
    if let Some((name, answer)) = reply.lookup {
        let _ = report.send(ControlMessage::Dns { name, answer });
    }
    Some(reply.message)
}

/// Sends reports to the proxy, reconnecting when the connection breaks.
/// Reports made while the proxy is unreachable wait in the channel.
async fn control_writer(
    path: Arc<PathBuf>,
    token: String,
    mut rx: mpsc::UnboundedReceiver<ControlMessage>,
) {
    let mut pending: Option<ControlMessage> = None;
    loop {
        let mut conn = match UnixStream::connect(path.as_ref()).await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if conn.write_all(&preamble(&token)).await.is_err() {
            continue;
        }
        loop {
            let msg = match pending.take() {
                Some(m) => m,
                None => match rx.recv().await {
                    Some(m) => m,
                    None => return,
                },
            };
            if conn.write_all(&encode(&msg)).await.is_err() {
                pending = Some(msg);
                break;
            }
        }
    }
}

/// Brings `lo` up and adds 198.18.0.1/15 to it (as the alias `lo:1`), which
/// makes the whole pool local, so transparent-mode listeners on 0.0.0.0
/// receive connections to any pool address. Needs `CAP_NET_ADMIN` in the
/// network namespace (the sandbox's user namespace grants it). Idempotent.
pub fn configure_pool_address() -> Result<(), Error> {
    let fail = |what: &str| {
        let e = std::io::Error::last_os_error();
        Error::Sandbox(gettext_f(
            "cannot set up the transparent-mode address ({what}): {error}",
            &[("what", what), ("error", &e.to_string())],
        ))
    };
    // SAFETY: plain socket(2); the fd is owned right after.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(fail("socket"));
    }
    // SAFETY: raw is a fresh, valid descriptor that nothing else owns.
    let fd: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) };

    let mut ifr = ifreq("lo");
    // SAFETY: ifr is a valid ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(fail("SIOCGIFFLAGS lo"));
    }
    // SAFETY: the flags member was filled by the kernel above.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(fail("SIOCSIFFLAGS lo"));
    }

    let mut ifr = ifreq("lo:1");
    ifr.ifr_ifru.ifru_addr = sockaddr(POOL_GATEWAY);
    // SAFETY: ifr holds a valid AF_INET address for SIOCSIFADDR.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFADDR, &ifr) } < 0 {
        return Err(fail("SIOCSIFADDR lo:1"));
    }
    let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(POOL_PREFIX)));
    ifr.ifr_ifru.ifru_netmask = sockaddr(mask);
    // SAFETY: ifr holds a valid AF_INET netmask for SIOCSIFNETMASK.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFNETMASK, &ifr) } < 0 {
        return Err(fail("SIOCSIFNETMASK lo:1"));
    }
    Ok(())
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux; this is
    // how the ioctl interface expects the address.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}
