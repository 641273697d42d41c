//! The host side of one task's network path: the proxy on its own thread
//! and current-thread runtime (so the task thread that owns the sandbox
//! does not depend on any other runtime), its socket in the task's runtime
//! folder, its events handed to the caller as they happen. Dropping the
//! session stops the proxy (every open connection ends) and removes the
//! socket.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::hosts::{AllowList, Ports};
use super::ssrf::SystemResolver;
use super::{ConsentSender, Proxy, ProxyConfig};
use crate::event::EventKind;
use crate::i18n::{gettext, gettext_f};
use crate::policy::{NetMode, NetPolicy};
use crate::sandbox::spec::NetSpec;
use crate::Error;

/// The forwarder's port inside the sandbox (its own network namespace, so
/// any free port works; this one is the usual proxy port).
pub const FORWARDER_PORT: u16 = 3128;
/// The longest path a unix socket address holds (`sun_path`, with its NUL).
const SUN_PATH_MAX: usize = 107;

/// A running proxy for one task.
pub struct NetSession {
    dir: PathBuf,
    socket: PathBuf,
    token: String,
    extra_ports: Vec<u16>,
    summary: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The folder for a task's runtime files: `$XDG_RUNTIME_DIR/airlock/<task>`,
/// or `<task folder>/run` when there is no runtime folder (root, cron, a
/// variable naming a folder that does not exist).
pub fn runtime_dir(task_id: &str, task_dir: &Path) -> PathBuf {
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| Path::new(d).is_absolute() && Path::new(d).is_dir());
    match runtime {
        Some(d) => PathBuf::from(d).join("airlock").join(task_id),
        None => task_dir.join("run"),
    }
}

/// A fresh secret for the forwarder's control channel.
fn random_token() -> Result<String, Error> {
    let mut b = [0u8; 24];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: getrandom writes into the rest of our buffer.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io("getrandom", e));
            }
            continue;
        }
        got += n as usize;
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl NetSession {
    /// Starts the proxy for a task, or nothing when its network is `none`.
    /// `emit` receives every Flow, DnsQuery and Consent event; questions go
    /// to `consent` (`None` denies them, saying no one can answer).
    pub fn start(
        task_id: &str,
        task_dir: &Path,
        policy: &NetPolicy,
        emit: impl Fn(EventKind) + Send + 'static,
        consent: Option<ConsentSender>,
    ) -> Result<Option<NetSession>, Error> {
        if policy.mode == NetMode::None {
            return Ok(None);
        }
        let allow = AllowList::parse(&policy.allow_hosts)?;
        let mut extra_ports: Vec<u16> = Vec::new();
        for e in allow.entries() {
            if let Ports::One(p) = e.ports {
                // The forwarder's own port is taken on 127.0.0.1 already.
                if p != FORWARDER_PORT && !extra_ports.contains(&p) {
                    extra_ports.push(p);
                }
            }
        }
        let dir = runtime_dir(task_id, task_dir);
        let socket = dir.join("proxy.sock");
        if socket.as_os_str().len() > SUN_PATH_MAX {
            return Err(Error::Invalid(gettext_f(
                "the network proxy's socket path {path} is longer than the 107 bytes a unix socket allows; set XDG_RUNTIME_DIR (or XDG_STATE_HOME) to a shorter folder",
                &[("path", &socket.display().to_string())],
            )));
        }
        crate::dirs::create_private_dir(&dir)?;
        let token = random_token()?;
        let n = policy.allow_hosts.len();
        let summary = match policy.mode {
            NetMode::Ask => gettext_f(
                "ask (allow-list proxy, {n} hosts; others asked)",
                &[("n", &n.to_string())],
            ),
            _ => gettext_f("allow-list proxy ({n} hosts)", &[("n", &n.to_string())]),
        };

        let cfg_socket = socket.clone();
        let cfg_policy = policy.clone();
        let cfg_token = token.clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
        let thread = std::thread::Builder::new()
            .name(format!("airlock-net-{task_id}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = bound_tx.send(Err(Error::io("tokio runtime", e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
                    let bound = Proxy::bind(ProxyConfig {
                        socket_path: cfg_socket,
                        policy: cfg_policy,
                        events: ev_tx,
                        consent,
                        resolver: Arc::new(SystemResolver),
                        control_token: Some(cfg_token),
                        connect_timeout: Duration::from_secs(15),
                    });
                    let proxy = match bound {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = bound_tx.send(Ok(()));
                    let serve = tokio::spawn(proxy.serve());
                    let seen = Arc::new(AtomicU64::new(0));
                    let seen2 = seen.clone();
                    let forward = tokio::spawn(async move {
                        while let Some(ev) = ev_rx.recv().await {
                            seen2.fetch_add(1, Ordering::Relaxed);
                            emit(ev);
                        }
                    });
                    // A dropped sender (the session dropped) stops us too.
                    let _ = stop_rx.await;
                    // The sandbox is gone, so its connections are closing:
                    // give their last flows a moment to be reported.
                    let quiet = async {
                        loop {
                            let before = seen.load(Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if seen.load(Ordering::Relaxed) == before {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(2), quiet).await;
                    serve.abort();
                    let _ = serve.await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), forward).await;
                });
            })
            .map_err(|e| Error::io("thread", e))?;
        match bound_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Unsupported(gettext(
                    "the network proxy's thread ended before it listened",
                )));
            }
        }
        Ok(Some(NetSession {
            dir,
            socket,
            token,
            extra_ports,
            summary,
            stop: Some(stop_tx),
            thread: Some(thread),
        }))
    }

    /// Starts the proxy for the task `spec` describes (its network policy
    /// `policy`) and gives `spec` its end of the path; nothing when the
    /// network is `none`. Keep the session until the sandbox has ended.
    pub fn start_for(
        spec: &mut crate::sandbox::SandboxSpec,
        policy: &NetPolicy,
        task_dir: &Path,
        emit: impl Fn(EventKind) + Send + 'static,
        consent: Option<ConsentSender>,
    ) -> Result<Option<NetSession>, Error> {
        let session = NetSession::start(&spec.task_id, task_dir, policy, emit, consent)?;
        if let Some(s) = &session {
            crate::sandbox::net::attach(spec, s.sandbox_side());
        }
        Ok(session)
    }

    /// What the sandbox needs to reach this proxy.
    pub fn sandbox_side(&self) -> NetSpec {
        NetSpec {
            socket: self.socket.clone(),
            port: FORWARDER_PORT,
            control_token: self.token.clone(),
            extra_ports: self.extra_ports.clone(),
            summary: self.summary.clone(),
        }
    }

    /// The proxy's socket on the host.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

impl Drop for NetSession {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}
