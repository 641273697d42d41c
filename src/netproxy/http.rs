//! HTTP/1.x on the proxy: `CONNECT host:port` tunnels and absolute-form
//! requests (`GET http://host/path`), parsed with `httparse`. Plain requests
//! are forwarded one per connection with `Connection: close` on both sides,
//! so every request is checked against the policy on its own connection and
//! a pipelined request can never ride on an approved one.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::hosts::parse_target;
use super::io::{read_head, Head, Prefixed, MAX_HEAD};
use super::proxy::{Flow, Refusal, Shared, REQUEST_TIMEOUT};
use crate::i18n::{gettext, gettext_f};

const MAX_HEADERS: usize = 128;

/// Headers that belong to one hop and are never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

pub(crate) async fn serve<S>(sh: &Shared, mut c: Prefixed<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut flow = Flow::new("http");
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut c)).await {
        Ok(Ok(Head::Complete(h))) => h,
        Ok(Ok(Head::Eof)) | Ok(Err(_)) => return,
        Ok(Ok(Head::Truncated)) => {
            return refuse(
                sh,
                c,
                flow,
                400,
                &gettext("the request ended before its headers did"),
            )
            .await
        }
        Ok(Ok(Head::TooLarge)) => {
            let why = gettext_f(
                "the request headers are larger than {n} KiB",
                &[("n", &(MAX_HEAD / 1024).to_string())],
            );
            return refuse(sh, c, flow, 431, &why).await;
        }
        Err(_) => {
            return refuse(
                sh,
                c,
                flow,
                408,
                &gettext("the request did not arrive in time"),
            )
            .await
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            let why = gettext_f(
                "the request has more than {n} headers",
                &[("n", &MAX_HEADERS.to_string())],
            );
            return refuse(sh, c, flow, 431, &why).await;
        }
        Ok(httparse::Status::Partial) | Err(_) => {
            return refuse(
                sh,
                c,
                flow,
                400,
                &gettext("the request is not valid HTTP/1.x"),
            )
            .await
        }
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    if method.eq_ignore_ascii_case("CONNECT") {
        flow = Flow::new("http-connect");
        return connect(sh, c, flow, &target).await;
    }
    let fields: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    plain(sh, c, flow, &method, &target, &fields).await
}

async fn connect<S>(sh: &Shared, mut c: Prefixed<S>, mut flow: Flow, target: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    flow.target(target, 0);
    let (host, port) = match parse_target(target, None) {
        Ok(t) => t,
        Err(why) => return refuse(sh, c, flow, 400, &why).await,
    };
    flow.target(&host.to_string(), port);
    match sh.open(&host, port, &mut flow).await {
        Err(r) => refuse_for(sh, c, flow, &r).await,
        Ok(up) => {
            if c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                let why = gettext("the client left before the tunnel opened");
                return flow.emit(&sh.events, "fail", &why, 0, 0);
            }
            sh.tunnel(c, up, &host, port, flow).await
        }
    }
}

/// How the request body is delimited.
enum Body {
    None,
    Length(u64),
    /// Chunked: spliced until the client or the server closes.
    Chunked,
}

fn body_framing(fields: &[(String, Vec<u8>)]) -> Result<Body, String> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            let n = v
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| gettext("the Content-Length header is not a number"))?;
            if length.is_some_and(|l| l != n) {
                return Err(gettext(
                    "the request has conflicting Content-Length headers",
                ));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(value).to_ascii_lowercase();
            if v.rsplit(',').next().map(str::trim) != Some("chunked") {
                return Err(gettext("only the chunked transfer encoding is supported"));
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        // Both at once is the classic request-smuggling shape.
        (Some(_), true) => Err(gettext(
            "the request has both Content-Length and Transfer-Encoding",
        )),
        (_, true) => Ok(Body::Chunked),
        (Some(n), false) if n > 0 => Ok(Body::Length(n)),
        _ => Ok(Body::None),
    }
}

/// Splits `http://authority/rest` into the authority and the origin-form
/// target.
fn split_absolute(target: &str) -> Option<(&str, String)> {
    let scheme = target.get(..7)?;
    if !scheme.eq_ignore_ascii_case("http://") {
        return None;
    }
    let rest = &target[7..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let tail = tail.split('#').next().unwrap_or_default();
    let origin = match tail.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{tail}"),
        Some(_) => tail.to_string(),
    };
    Some((authority, origin))
}

/// Names listed in `Connection:` are hop-by-hop too.
fn connection_tokens(fields: &[(String, Vec<u8>)]) -> Vec<String> {
    fields
        .iter()
        .filter(|(n, _)| {
            n.eq_ignore_ascii_case("connection") || n.eq_ignore_ascii_case("proxy-connection")
        })
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn forwarded(name: &str, tokens: &[String]) -> bool {
    let lower = name.to_ascii_lowercase();
    !HOP_BY_HOP.contains(&lower.as_str()) && !tokens.contains(&lower)
}

async fn plain<S>(
    sh: &Shared,
    mut c: Prefixed<S>,
    mut flow: Flow,
    method: &str,
    target: &str,
    fields: &[(String, Vec<u8>)],
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if target == "*" {
        return refuse(
            sh,
            c,
            flow,
            405,
            &gettext_f("{method} * is not a proxy request", &[("method", method)]),
        )
        .await;
    }
    let Some((authority, origin)) = split_absolute(target) else {
        let why = if target.len() >= 8 && target[..8].eq_ignore_ascii_case("https://") {
            gettext("https:// URLs go through CONNECT; this proxy does not open TLS for the client")
        } else {
            gettext(
                "this is a proxy: the request must name an absolute http:// URL, or use CONNECT",
            )
        };
        return refuse(sh, c, flow, 400, &why).await;
    };
    flow.target(authority, 80);
    if authority.contains('@') {
        return refuse(
            sh,
            c,
            flow,
            400,
            &gettext("user names in proxy URLs are not supported; send an Authorization header"),
        )
        .await;
    }
    let (host, port) = match parse_target(authority, Some(80)) {
        Ok(t) => t,
        Err(why) => return refuse(sh, c, flow, 400, &why).await,
    };
    flow.target(&host.to_string(), port);
    let body = match body_framing(fields) {
        Ok(b) => b,
        Err(why) => return refuse(sh, c, flow, 400, &why).await,
    };
    let mut upstream = match sh.open(&host, port, &mut flow).await {
        Ok(u) => u,
        Err(r) => return refuse_for(sh, c, flow, &r).await,
    };

    let tokens = connection_tokens(fields);
    let mut head = format!("{method} {origin} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
    for (name, value) in fields {
        if forwarded(name, &tokens) && !name.eq_ignore_ascii_case("host") {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");

    let (mut out, mut inb) = (0u64, 0u64);
    let outcome = {
        let (cr, mut cw) = tokio::io::split(&mut c);
        let (ur, mut uw) = upstream.split();
        let out = &mut out;
        let inb = &mut inb;
        let request = async move {
            uw.write_all(&head).await?;
            *out += head.len() as u64;
            let mut cr = cr;
            match body {
                Body::None => Ok(()),
                Body::Length(n) => copy_counted(&mut (&mut cr).take(n), &mut uw, out).await,
                Body::Chunked => copy_counted(&mut cr, &mut uw, out).await,
            }
        };
        let response = async move {
            let mut ur = Prefixed::new(ur);
            loop {
                let head = match read_head(&mut ur).await {
                    Ok(Head::Complete(h)) => h,
                    Ok(_) => {
                        return Err(Upstream::BadHead(gettext(
                            "the server sent no valid response head",
                        )))
                    }
                    Err(e) => return Err(Upstream::BadHead(e.to_string())),
                };
                *inb += head.len() as u64;
                let (rewritten, interim) = rewrite_response(&head).map_err(Upstream::BadHead)?;
                cw.write_all(&rewritten).await.map_err(Upstream::Io)?;
                if !interim {
                    break;
                }
            }
            copy_counted(&mut ur, &mut cw, inb)
                .await
                .map_err(Upstream::Io)?;
            cw.shutdown().await.map_err(Upstream::Io)
        };
        tokio::pin!(request, response);
        let mut request_done = false;
        loop {
            tokio::select! {
                r = &mut request, if !request_done => {
                    request_done = true;
                    if let Err(e) = r {
                        break Err(Upstream::Io(e));
                    }
                }
                r = &mut response => break r,
            }
        }
    };
    match outcome {
        Ok(()) => {
            let why = flow.reason.clone();
            flow.emit(&sh.events, "allow", &why, out, inb)
        }
        Err(Upstream::BadHead(why)) if inb == 0 => {
            let why = gettext_f("bad response from the server: {why}", &[("why", &why)]);
            let _ = write_error(&mut c, 502, &why).await;
            flow.emit(&sh.events, "fail", &why, out, inb)
        }
        Err(e) => {
            let why = format!("{}; {}", flow.reason, e);
            flow.emit(&sh.events, "allow", &why, out, inb)
        }
    }
}

/// How forwarding a plain request failed after the connection opened.
enum Upstream {
    BadHead(String),
    Io(std::io::Error),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::BadHead(why) => f.write_str(why),
            Upstream::Io(e) => write!(
                f,
                "{}",
                gettext_f("ended with an error: {error}", &[("error", &e.to_string())])
            ),
        }
    }
}

/// Rewrites a response head for the client: hop-by-hop headers out,
/// `Connection: close` in. Returns whether it was an interim (1xx) head
/// after which the real one follows.
fn rewrite_response(head: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(gettext("the server's response head is not valid HTTP/1.x")),
    }
    let code = resp.code.unwrap_or_default();
    if (100..200).contains(&code) {
        // Interim and 101 heads pass as they are.
        return Ok((head.to_vec(), code != 101));
    }
    let fields: Vec<(String, Vec<u8>)> = resp
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    let tokens = connection_tokens(&fields);
    let mut out = format!(
        "HTTP/1.{} {} {}\r\n",
        resp.version.unwrap_or(1),
        code,
        resp.reason.unwrap_or_default()
    )
    .into_bytes();
    for (name, value) in &fields {
        // Transfer-Encoding stays: the body is passed through unchanged.
        if forwarded(name, &tokens) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok((out, false))
}

async fn copy_counted<R, W>(r: &mut R, w: &mut W, count: &mut u64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.flush().await;
        }
        w.write_all(&buf[..n]).await?;
        *count += n as u64;
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Writes a complete error response. The reason is also in the
/// `X-Airlock-Reason` header (ASCII only, one line) for scripts.
pub(crate) async fn write_error<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: u16,
    reason: &str,
) -> std::io::Result<()> {
    let header: String = reason
        .chars()
        .map(|ch| {
            if ch.is_ascii_graphic() || ch == ' ' {
                ch
            } else {
                '?'
            }
        })
        .collect();
    let body = format!("{reason}\n");
    let msg = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nX-Airlock-Reason: {header}\r\n\r\n{body}",
        status_text(code),
        body.len()
    );
    w.write_all(msg.as_bytes()).await?;
    w.shutdown().await
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    sh: &Shared,
    mut c: Prefixed<S>,
    flow: Flow,
    code: u16,
    reason: &str,
) {
    let _ = write_error(&mut c, code, reason).await;
    flow.emit(&sh.events, "deny", reason, 0, 0);
}

async fn refuse_for<S: AsyncRead + AsyncWrite + Unpin>(
    sh: &Shared,
    c: Prefixed<S>,
    flow: Flow,
    r: &Refusal,
) {
    let code = match r {
        Refusal::Policy(_) => 403,
        Refusal::Connect {
            timed_out: true, ..
        } => 504,
        _ => 502,
    };
    let mut c = c;
    let _ = write_error(&mut c, code, r.reason()).await;
    flow.emit(&sh.events, r.decision(), r.reason(), 0, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn absolute_targets() {
        assert_eq!(
            split_absolute("http://a.example/x?y"),
            Some(("a.example", "/x?y".into()))
        );
        assert_eq!(
            split_absolute("HTTP://a.example:8080"),
            Some(("a.example:8080", "/".into()))
        );
        assert_eq!(
            split_absolute("http://a.example?q=1"),
            Some(("a.example", "/?q=1".into()))
        );
        assert_eq!(
            split_absolute("http://a.example/p#frag"),
            Some(("a.example", "/p".into()))
        );
        assert_eq!(
            split_absolute("http://ok.example@evil.example/"),
            Some(("ok.example@evil.example", "/".into()))
        );
        assert_eq!(split_absolute("/relative"), None);
        assert_eq!(split_absolute("https://a.example/"), None);
    }

    #[test]
    fn framing() {
        assert!(matches!(
            body_framing(&f(&[("Content-Length", "5")])),
            Ok(Body::Length(5))
        ));
        assert!(matches!(
            body_framing(&f(&[("Content-Length", "0")])),
            Ok(Body::None)
        ));
        assert!(matches!(
            body_framing(&f(&[("Transfer-Encoding", "gzip, chunked")])),
            Ok(Body::Chunked)
        ));
        assert!(body_framing(&f(&[("Content-Length", "5"), ("Content-Length", "6")])).is_err());
        assert!(body_framing(&f(&[("Content-Length", "-1")])).is_err());
        assert!(body_framing(&f(&[
            ("Content-Length", "5"),
            ("Transfer-Encoding", "chunked")
        ]))
        .is_err());
        assert!(body_framing(&f(&[("Transfer-Encoding", "gzip")])).is_err());
    }

    #[test]
    fn response_rewrite() {
        let (h, interim) = rewrite_response(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\nKeep-Alive: t=5\r\nContent-Length: 2\r\n\r\n").unwrap();
        assert!(!interim);
        assert_eq!(
            h,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        let (_, interim) = rewrite_response(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        assert!(interim);
        assert!(rewrite_response(b"garbage\r\n\r\n").is_err());
    }
}
