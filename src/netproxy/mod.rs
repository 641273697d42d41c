//! The network path out of a sandbox: an allow-list proxy run by the
//! supervisor, and the forwarder that runs inside the sandbox.
//!
//! ```text
//!  agent ──TCP──▶ forwarder (127.0.0.1:PORT, in the sandbox's netns)
//!                    │ unix socket bound into the sandbox
//!                    ▼
//!               proxy (supervisor, host netns) ──▶ policy ──▶ TCP to the world
//! ```
//!
//! - [`hosts`]: host-name normalisation and allow-list matching.
//! - [`ssrf`]: address classification and checked name resolution.
//! - [`consent`]: ask-mode questions, merged and remembered per task.
//! - [`sni`]: the ClientHello reader behind the domain-fronting check.
//! - [`proxy`]: the server (HTTP CONNECT, absolute-form HTTP, SOCKS5).
//! - [`dns`]: the in-sandbox DNS responder of transparent mode.
//! - [`forwarder`]: the in-sandbox process.
//! - [`control`]: the line protocol the forwarder uses to report DNS lookups.
//! - [`session`]: one task's proxy on its own thread, as the supervisor runs it.

pub mod consent;
pub mod control;
pub mod dns;
pub mod forwarder;
pub mod hosts;
mod http;
mod io;
pub mod proxy;
pub mod session;
pub mod sni;
mod socks;
pub mod ssrf;

pub use consent::{ConsentAnswer, ConsentRequest, ConsentSender};
pub use forwarder::{configure_pool_address, run_forwarder, ForwarderConfig, TransparentConfig};
pub use proxy::{Proxy, ProxyConfig};

use crate::event::EventKind;

/// Connections one task may have open through its proxy at once (and its
/// forwarder toward the proxy). Each costs the supervisor two descriptors
/// and two copy buffers; more wait in the listen queue until one ends, so
/// a task cannot take the supervisor's descriptors or memory, which other
/// tasks and the desktop share. A browser opens at most a few dozen.
pub const MAX_CONNECTIONS: usize = 256;

/// Where the proxy sends its events ([`EventKind::Flow`],
/// [`EventKind::ConsentRequested`], [`EventKind::ConsentAnswered`],
/// [`EventKind::DnsQuery`]). A dropped receiver only loses events.
pub type EventSink = tokio::sync::mpsc::UnboundedSender<EventKind>;
