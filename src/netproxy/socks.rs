//! SOCKS5 (RFC 1928) without authentication: CONNECT to a domain name,
//! IPv4 or IPv6 address. BIND and UDP ASSOCIATE are answered with
//! "command not supported" (0x07); the network is TCP through the proxy only.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::hosts::{normalize_host, Host};
use super::io::Prefixed;
use super::proxy::{Flow, Refusal, Shared, REQUEST_TIMEOUT};
use crate::i18n::{gettext, gettext_f};

pub(crate) const VERSION: u8 = 5;

const NO_AUTH: u8 = 0x00;
const NO_ACCEPTABLE: u8 = 0xff;

const REP_OK: u8 = 0x00;
const REP_FAILURE: u8 = 0x01;
const REP_NOT_ALLOWED: u8 = 0x02;
const REP_NET_UNREACHABLE: u8 = 0x03;
const REP_HOST_UNREACHABLE: u8 = 0x04;
const REP_REFUSED: u8 = 0x05;
const REP_TTL_EXPIRED: u8 = 0x06;
const REP_CMD_UNSUPPORTED: u8 = 0x07;
const REP_ATYP_UNSUPPORTED: u8 = 0x08;

/// A request that was read completely.
enum Request {
    Connect(String, Result<Host, String>, u16),
    /// Reply code and reason for anything else.
    Refused(u8, String),
}

pub(crate) async fn serve<S>(sh: &Shared, mut c: Prefixed<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut flow = Flow::new("socks5");
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut c)).await {
        Ok(Ok(Some(r))) => r,
        // Greeting refused (reply already sent) or the client left.
        Ok(Ok(None)) | Ok(Err(_)) => {
            flow.emit(
                &sh.events,
                "deny",
                &gettext("SOCKS5 handshake failed or offered no usable method"),
                0,
                0,
            );
            return;
        }
        Err(_) => {
            flow.emit(
                &sh.events,
                "deny",
                &gettext("the SOCKS5 request did not arrive in time"),
                0,
                0,
            );
            return;
        }
    };
    let (raw, host, port) = match request {
        Request::Refused(code, why) => {
            let _ = reply(&mut c, code, None).await;
            flow.emit(&sh.events, "deny", &why, 0, 0);
            return;
        }
        Request::Connect(raw, host, port) => (raw, host, port),
    };
    flow.target(&raw, port);
    let host = match host {
        Ok(h) => h,
        Err(why) => {
            let _ = reply(&mut c, REP_NOT_ALLOWED, None).await;
            flow.emit(&sh.events, "deny", &why, 0, 0);
            return;
        }
    };
    flow.target(&host.to_string(), port);
    match sh.open(&host, port, &mut flow).await {
        Err(r) => {
            let code = match &r {
                Refusal::Policy(_) => REP_NOT_ALLOWED,
                Refusal::Resolve(_) => REP_HOST_UNREACHABLE,
                Refusal::Connect {
                    timed_out: true, ..
                } => REP_TTL_EXPIRED,
                Refusal::Connect {
                    errno: Some(libc::ECONNREFUSED),
                    ..
                } => REP_REFUSED,
                Refusal::Connect {
                    errno: Some(libc::ENETUNREACH),
                    ..
                } => REP_NET_UNREACHABLE,
                Refusal::Connect { .. } => REP_HOST_UNREACHABLE,
            };
            let _ = reply(&mut c, code, None).await;
            flow.emit(&sh.events, r.decision(), r.reason(), 0, 0);
        }
        Ok(up) => {
            let bound = up.local_addr().ok();
            if reply(&mut c, REP_OK, bound).await.is_err() {
                let why = gettext("the client left before the tunnel opened");
                return flow.emit(&sh.events, "fail", &why, 0, 0);
            }
            sh.tunnel(c, up, &host, port, flow).await
        }
    }
}

/// Reads the greeting and the request. `Ok(None)`: the greeting was refused
/// (already answered) or was not SOCKS5.
async fn read_request<S>(c: &mut Prefixed<S>) -> std::io::Result<Option<Request>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hdr = [0u8; 2];
    c.read_exact(&mut hdr).await?;
    if hdr[0] != VERSION {
        return Ok(None);
    }
    let mut methods = vec![0u8; usize::from(hdr[1])];
    c.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        c.write_all(&[VERSION, NO_ACCEPTABLE]).await?;
        return Ok(None);
    }
    c.write_all(&[VERSION, NO_AUTH]).await?;

    let mut req = [0u8; 4];
    c.read_exact(&mut req).await?;
    if req[0] != VERSION {
        let why = gettext_f(
            "SOCKS request with version {v}",
            &[("v", &req[0].to_string())],
        );
        return Ok(Some(Request::Refused(REP_FAILURE, why)));
    }
    let raw = match req[3] {
        0x01 => {
            let mut a = [0u8; 4];
            c.read_exact(&mut a).await?;
            Ipv4Addr::from(a).to_string()
        }
        0x04 => {
            let mut a = [0u8; 16];
            c.read_exact(&mut a).await?;
            format!("[{}]", Ipv6Addr::from(a))
        }
        0x03 => {
            let mut len = [0u8; 1];
            c.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            c.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        other => {
            let why = gettext_f(
                "SOCKS address type {t} is not supported",
                &[("t", &other.to_string())],
            );
            return Ok(Some(Request::Refused(REP_ATYP_UNSUPPORTED, why)));
        }
    };
    let mut port = [0u8; 2];
    c.read_exact(&mut port).await?;
    let port = u16::from_be_bytes(port);
    match req[1] {
        0x01 => {}
        0x02 => {
            return Ok(Some(Request::Refused(
                REP_CMD_UNSUPPORTED,
                gettext("SOCKS BIND is not supported"),
            )))
        }
        0x03 => {
            return Ok(Some(Request::Refused(
                REP_CMD_UNSUPPORTED,
                gettext("SOCKS UDP ASSOCIATE is not supported: only TCP goes through the proxy"),
            )))
        }
        other => {
            let why = gettext_f(
                "SOCKS command {c} is not supported",
                &[("c", &other.to_string())],
            );
            return Ok(Some(Request::Refused(REP_CMD_UNSUPPORTED, why)));
        }
    }
    let host = if port == 0 {
        Err(gettext("port 0 cannot be connected"))
    } else {
        normalize_host(&raw)
    };
    Ok(Some(Request::Connect(raw, host, port)))
}

async fn reply<S: AsyncWrite + Unpin>(
    c: &mut S,
    code: u8,
    bound: Option<SocketAddr>,
) -> std::io::Result<()> {
    let mut msg = vec![VERSION, code, 0];
    match bound {
        Some(SocketAddr::V6(a)) => {
            msg.push(0x04);
            msg.extend_from_slice(&a.ip().octets());
            msg.extend_from_slice(&a.port().to_be_bytes());
        }
        Some(SocketAddr::V4(a)) => {
            msg.push(0x01);
            msg.extend_from_slice(&a.ip().octets());
            msg.extend_from_slice(&a.port().to_be_bytes());
        }
        None => msg.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0]),
    }
    c.write_all(&msg).await?;
    if code != REP_OK {
        c.shutdown().await?;
    }
    Ok(())
}
