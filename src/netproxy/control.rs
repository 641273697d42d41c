//! The forwarder's control channel: the forwarder cannot emit events itself
//! (it lives inside the sandbox), so it opens one extra connection on the
//! proxy's socket that starts with [`MAGIC`] and a per-task secret, then
//! sends one JSON [`ControlMessage`] per line. The secret keeps the agent,
//! which can reach the same socket, from injecting fake DNS events.
//!
//! ```text
//! \0AIRLOCK-CONTROL/1 <token>\n
//! {"type":"dns","name":"example.com","answer":"198.18.0.2"}\n
//! ```

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader};

use super::io::Prefixed;
use super::proxy::Shared;
use crate::event::EventKind;
use crate::i18n::gettext;

/// The preamble before the token; its first byte routes the connection.
pub const MAGIC: &[u8] = b"\0AIRLOCK-CONTROL/1 ";
pub(crate) const MAGIC_FIRST: u8 = 0;
/// Longest line accepted (a DNS name is at most 253 bytes).
const MAX_LINE: u64 = 4096;

/// One report from the forwarder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// A DNS lookup answered inside the sandbox.
    Dns { name: String, answer: String },
}

/// The bytes that open a control connection.
pub fn preamble(token: &str) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(token.as_bytes());
    v.push(b'\n');
    v
}

/// One message as a line.
pub fn encode(msg: &ControlMessage) -> Vec<u8> {
    // Serialising a plain enum of strings cannot fail.
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    v
}

fn same_secret(a: &[u8], b: &[u8]) -> bool {
    // Constant time in the content, so the secret cannot be guessed byte by byte.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) async fn serve<S>(sh: &Shared, c: Prefixed<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut r = BufReader::new(c);
    let mut first = Vec::new();
    let read = tokio::time::timeout(
        super::proxy::REQUEST_TIMEOUT,
        (&mut r).take(MAX_LINE).read_until(b'\n', &mut first),
    )
    .await;
    let token_ok = matches!(read, Ok(Ok(_)))
        && first
            .strip_prefix(MAGIC)
            .and_then(|t| t.strip_suffix(b"\n"))
            .is_some_and(|t| {
                sh.control_token
                    .as_ref()
                    .is_some_and(|want| same_secret(t, want.as_bytes()))
            });
    if !token_ok {
        if !sh
            .bad_secret_reported
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let _ = sh.events.send(EventKind::Warning {
                message: gettext(
                    "a connection to the network proxy presented a wrong control secret and was closed (later ones are closed without a word)",
                ),
            });
        }
        return;
    }
    loop {
        let mut line = Vec::new();
        match (&mut r).take(MAX_LINE).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match serde_json::from_slice::<ControlMessage>(&line) {
            Ok(ControlMessage::Dns { name, answer }) => {
                let name: String = name.chars().take(255).collect();
                let _ = sh.events.send(EventKind::DnsQuery { name, answer });
            }
            // Only our own forwarder holds the secret: a bad line is a bug, not an attack.
            Err(e) => tracing::warn!("netproxy control: bad line: {e}"),
        }
    }
}
