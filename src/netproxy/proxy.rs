//! The proxy server: one per task, on a unix socket in the task's runtime
//! folder. The first byte of a connection picks the protocol: `0x05` SOCKS5,
//! `0x04` SOCKS4 (refused), `0x00` the forwarder's control channel, anything
//! else HTTP (CONNECT or absolute-form requests).
//!
//! Every connection attempt ends in one [`EventKind::Flow`]: denials at once,
//! allowed flows when they close (with the bytes each way).
//!
//! Order of checks for a target `host:port`: normalise the host; the policy
//! verdict (allow-list, earlier answers); in ask mode, ask the user about a
//! name the verdict does not know before it is looked up (a lookup alone
//! carries the name out to the user's resolver); resolve on the host side
//! and keep only addresses the SSRF guard allows (an IP literal it refuses
//! is never asked about); connect to a checked address; for tunnels, check
//! the TLS server name against `host`.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::task::JoinSet;

use super::consent::{ConsentSender, Gate, Verdict};
use super::hosts::{normalize_host, AllowList, Host};
use super::io::{Counted, Prefixed};
use super::sni::{parse_client_hello, Hello, MAX_HELLO};
use super::ssrf::{resolve_checked, Resolved, Resolver, SystemResolver};
use super::{control, http, socks, EventSink};
use crate::event::EventKind;
use crate::i18n::{gettext, gettext_f};
use crate::policy::NetPolicy;
use crate::Error;

/// How long a client may take to send its request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send its TLS ClientHello once it started.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The reason given when ECH is offered.
pub const ECH_REASON: &str = "encrypted client hello hides the real destination";

/// What the proxy needs from its caller.
pub struct ProxyConfig {
    /// Where to listen. A stale socket there is replaced; any other file is
    /// an error.
    pub socket_path: PathBuf,
    pub policy: NetPolicy,
    pub events: EventSink,
    /// Where ask-mode questions go; `None` denies every question.
    pub consent: Option<ConsentSender>,
    /// Name resolution; [`SystemResolver`] in production.
    pub resolver: Arc<dyn Resolver>,
    /// The secret the forwarder presents on its control connection
    /// ([`super::control`]); `None` refuses control connections.
    pub control_token: Option<String>,
    /// Per-address connect timeout.
    pub connect_timeout: Duration,
}

impl ProxyConfig {
    /// A configuration with the system resolver, no consent handler and no
    /// control channel.
    pub fn new(socket_path: impl Into<PathBuf>, policy: NetPolicy, events: EventSink) -> Self {
        ProxyConfig {
            socket_path: socket_path.into(),
            policy,
            events,
            consent: None,
            resolver: Arc::new(SystemResolver),
            control_token: None,
            connect_timeout: Duration::from_secs(15),
        }
    }
}

/// Why a target was not reached.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The policy, the user or the SSRF guard said no.
    Policy(String),
    /// The name did not resolve.
    Resolve(String),
    /// Every checked address refused or timed out; the last error.
    Connect {
        reason: String,
        timed_out: bool,
        errno: Option<i32>,
    },
}

impl Refusal {
    pub(crate) fn reason(&self) -> &str {
        match self {
            Refusal::Policy(r) | Refusal::Resolve(r) | Refusal::Connect { reason: r, .. } => r,
        }
    }
    pub(crate) fn decision(&self) -> &'static str {
        match self {
            Refusal::Policy(_) => "deny",
            _ => "fail",
        }
    }
}

/// The record of one connection attempt, emitted once.
pub(crate) struct Flow {
    host: String,
    port: u16,
    protocol: &'static str,
    start: Instant,
    pub(crate) address: Option<SocketAddr>,
    pub(crate) reason: String,
}

impl Flow {
    pub(crate) fn new(protocol: &'static str) -> Self {
        Flow {
            host: String::new(),
            port: 0,
            protocol,
            start: Instant::now(),
            address: None,
            reason: String::new(),
        }
    }

    pub(crate) fn target(&mut self, host: &str, port: u16) {
        // Raw targets come from the agent: keep the log line bounded.
        self.host = host.chars().take(255).collect();
        self.port = port;
    }

    pub(crate) fn emit(
        self,
        events: &EventSink,
        decision: &str,
        reason: &str,
        bytes_out: u64,
        bytes_in: u64,
    ) {
        let _ = events.send(EventKind::Flow {
            host: self.host,
            port: self.port,
            address: self.address.map(|a| a.to_string()),
            protocol: self.protocol.to_string(),
            decision: decision.to_string(),
            reason: reason.to_string(),
            bytes_out,
            bytes_in,
            duration_ms: self.start.elapsed().as_millis() as u64,
        });
    }
}

/// What every connection handler shares.
pub(crate) struct Shared {
    pub(crate) gate: Arc<Gate>,
    resolver: Arc<dyn Resolver>,
    pub(crate) events: EventSink,
    pub(crate) control_token: Option<String>,
    /// Whether a wrong control secret was reported: once per task, since
    /// the agent can knock as often as it likes.
    pub(crate) bad_secret_reported: std::sync::atomic::AtomicBool,
    connect_timeout: Duration,
}

impl Shared {
    /// Decides and connects, following the order in the module docs.
    pub(crate) async fn open(
        &self,
        host: &Host,
        port: u16,
        flow: &mut Flow,
    ) -> Result<TcpStream, Refusal> {
        let verdict = self.gate.verdict(host, port);
        if let Verdict::Denied(why) = &verdict {
            return Err(Refusal::Policy(why.clone()));
        }
        let resolve = || async {
            match resolve_checked(self.resolver.as_ref(), host, port, self.gate.allow_list()).await
            {
                Resolved::Ok(a) => Ok(a),
                Resolved::Failed(why) => Err(Refusal::Resolve(why)),
                Resolved::Refused(why) => Err(Refusal::Policy(why)),
            }
        };
        let (reason, addrs) = match verdict {
            Verdict::Allowed(why) => (why, resolve().await?),
            // An address the guard refuses is never asked about: its
            // answer could not help. That needs no lookup for an IP.
            _ if host.ip().is_some() => {
                let addrs = resolve().await?;
                (
                    self.gate.ask(host, port).await.map_err(Refusal::Policy)?,
                    addrs,
                )
            }
            // A name is asked about before it is looked up: a lookup alone
            // carries the name (and what the agent hides in it) to the
            // user's resolver, so no name the user did not allow is
            // resolved.
            _ => {
                let why = self.gate.ask(host, port).await.map_err(Refusal::Policy)?;
                (why, resolve().await?)
            }
        };
        flow.reason = reason;
        let mut last = None;
        for addr in addrs {
            flow.address = Some(addr);
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    // Interactive protocols through the tunnel; Nagle only adds latency here.
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) => last = Some((e.to_string(), false, e.raw_os_error())),
                Err(_) => last = Some((gettext("the connection timed out"), true, None)),
            }
        }
        let (err, timed_out, errno) = last.unwrap_or_default();
        Err(Refusal::Connect {
            reason: gettext_f(
                "cannot connect to {host}:{port}: {error}",
                &[
                    ("host", &host.to_string()),
                    ("port", &port.to_string()),
                    ("error", &err),
                ],
            ),
            timed_out,
            errno,
        })
    }

    /// Splices an established tunnel after the domain-fronting check, then
    /// emits its flow. `client` has been told the tunnel is open.
    pub(crate) async fn tunnel<S>(
        &self,
        mut client: Prefixed<S>,
        upstream: TcpStream,
        host: &Host,
        port: u16,
        flow: Flow,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (first, down) = match first_client_bytes(&mut client, &upstream).await {
            Ok(b) => b,
            Err(e) => {
                flow.emit(&self.events, "fail", &e.to_string(), 0, 0);
                return;
            }
        };
        // Nothing from the client: one side closed before it spoke, and
        // nothing of its will pass.
        if !first.is_empty() {
            if let Err(why) = check_tls(&first, host, port, self.gate.allow_list()) {
                flow.emit(&self.events, "deny", &why, 0, 0);
                return;
            }
        }
        let mut up = Counted::new(upstream);
        let result = async {
            up.write_all(&first).await?;
            super::io::splice(&mut client, &mut up).await
        }
        .await;
        let reason = match result {
            Ok(_) => flow.reason.clone(),
            Err(e) => format!(
                "{}; {}",
                flow.reason,
                gettext_f("ended with an error: {error}", &[("error", &e.to_string())])
            ),
        };
        flow.emit(&self.events, "allow", &reason, up.written, up.read + down);
    }
}

/// The first bytes the client sends through a fresh tunnel: a whole TLS
/// ClientHello when it starts one, whatever arrived first otherwise
/// (nothing when a side closed first); and the bytes relayed from a server
/// that spoke first (SSH, SMTP), which goes on to the client meanwhile.
/// What the client then sends is checked all the same: a server may greet
/// and then start TLS, which must not take just any name.
async fn first_client_bytes<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Prefixed<S>,
    upstream: &TcpStream,
) -> io::Result<(Vec<u8>, u64)> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut from_server = vec![0u8; 16 * 1024];
    let mut down = 0u64;
    loop {
        tokio::select! {
            n = client.read(&mut chunk) => {
                buf.extend_from_slice(&chunk[..n?]);
                break;
            }
            r = upstream.readable() => {
                r?;
                match upstream.try_read(&mut from_server) {
                    Ok(0) => return Ok((buf, down)),
                    Ok(n) => {
                        client.write_all(&from_server[..n]).await?;
                        down += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    while !buf.is_empty()
        && parse_client_hello(&buf) == Hello::Incomplete
        && buf.len() <= MAX_HELLO + 5 * 8
    {
        match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok((buf, down))
}

/// The domain-fronting policy for what a client sends first through a
/// tunnel to `host`:
/// - not TLS: allowed (the host itself was checked);
/// - a ClientHello offering ECH: refused, the outer name is not the
///   destination ([`ECH_REASON`]);
/// - no server name: allowed only when `host` is an IP address that an
///   allow-list entry names (clients send no SNI for IP literals);
/// - a server name: it must normalise to `host`.
pub fn check_tls(first: &[u8], host: &Host, port: u16, allow: &AllowList) -> Result<(), String> {
    match parse_client_hello(first) {
        Hello::NotTls => Ok(()),
        Hello::Incomplete => Err(gettext("the TLS ClientHello was cut off")),
        Hello::Malformed(why) => Err(gettext_f("the TLS ClientHello is malformed: {why}", &[("why", why)])),
        Hello::ClientHello { ech: true, .. } => Err(gettext(ECH_REASON)),
        Hello::ClientHello { sni: None, .. } => match host {
            Host::Ip(ip) if allow.grants_ip(*ip, port) => Ok(()),
            _ => Err(gettext(
                "TLS without a server name (SNI) is allowed only to an IP address named in the allow-list",
            )),
        },
        Hello::ClientHello { sni: Some(name), .. } => match normalize_host(&name) {
            Ok(h) if &h == host => Ok(()),
            _ => Err(gettext_f(
                "the TLS server name {sni} does not match the requested host {host} (domain fronting)",
                &[("sni", &name), ("host", &host.to_string())],
            )),
        },
    }
}

/// A bound proxy, ready to [`serve`](Proxy::serve).
pub struct Proxy {
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Parses the allow-list and binds the socket (mode 0600). Must be called
    /// inside a tokio runtime.
    pub fn bind(cfg: ProxyConfig) -> Result<Proxy, Error> {
        let allow = AllowList::parse(&cfg.policy.allow_hosts)?;
        let path = cfg.socket_path;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?
            }
            Ok(_) => {
                return Err(Error::io(
                    &path,
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        gettext("a file that is not a socket is in the way"),
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        let listener = UnixListener::bind(&path).map_err(|e| Error::io(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(&path, e))?;
        let gate = Gate::new(
            cfg.policy.mode,
            allow,
            Duration::from_secs(cfg.policy.consent_timeout_secs),
            cfg.consent,
            cfg.events.clone(),
        );
        Ok(Proxy {
            listener,
            path,
            shared: Arc::new(Shared {
                gate: Arc::new(gate),
                resolver: cfg.resolver,
                events: cfg.events,
                control_token: cfg.control_token,
                bad_secret_reported: std::sync::atomic::AtomicBool::new(false),
                connect_timeout: cfg.connect_timeout,
            }),
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Serves until the future is dropped (abort the task at the end of the
    /// task); dropping it also ends every open connection.
    pub async fn serve(self) {
        let mut conns = JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(super::MAX_CONNECTIONS));
        let mut said_full = false;
        loop {
            // At the cap, accept nothing until a connection ends: the rest
            // wait in the listen queue, costing us nothing.
            if slots.available_permits() == 0 && !said_full {
                said_full = true;
                let _ = self.shared.events.send(EventKind::Warning {
                    message: gettext_f(
                        "the task has {n} connections open, the most it may; new ones wait until one ends",
                        &[("n", &super::MAX_CONNECTIONS.to_string())],
                    ),
                });
            }
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let shared = Arc::clone(&self.shared);
                        conns.spawn(async move {
                            handle(shared, Prefixed::new(stream)).await;
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        // Out of descriptors, mostly: wait instead of spinning.
                        tracing::warn!("proxy {}: accept failed: {e}", self.path.display());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }
}

async fn handle<S>(shared: Arc<Shared>, mut c: Prefixed<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut first = [0u8; 1];
    match tokio::time::timeout(REQUEST_TIMEOUT, c.read(&mut first)).await {
        Ok(Ok(1)) => c.unread(&first),
        _ => return,
    }
    match first[0] {
        socks::VERSION => socks::serve(&shared, c).await,
        4 => {
            // SOCKS4 reply "request rejected or failed".
            let _ = c.write_all(&[0, 0x5b, 0, 0, 0, 0, 0, 0]).await;
            let mut flow = Flow::new("socks4");
            flow.target("", 0);
            flow.emit(
                &shared.events,
                "deny",
                &gettext("SOCKS4 is not supported; use SOCKS5"),
                0,
                0,
            );
        }
        control::MAGIC_FIRST => control::serve(&shared, c).await,
        _ => http::serve(&shared, c).await,
    }
}
