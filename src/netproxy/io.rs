//! Stream helpers shared by the proxy and the forwarder.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Largest request or response head we accept (431 beyond it).
pub const MAX_HEAD: usize = 64 * 1024;

/// A stream with bytes pushed back in front of it: what protocol detection
/// and head parsing read too far is served again to the next reader.
pub struct Prefixed<S> {
    front: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(inner: S) -> Self {
        Prefixed {
            front: Vec::new(),
            pos: 0,
            inner,
        }
    }

    /// Puts `bytes` back before whatever is still unread.
    pub fn unread(&mut self, bytes: &[u8]) {
        let mut v = bytes.to_vec();
        v.extend_from_slice(&self.front[self.pos..]);
        self.front = v;
        self.pos = 0;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.front.len() {
            let n = buf.remaining().min(self.front.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.front[start..start + n]);
            self.pos += n;
            if self.pos == self.front.len() {
                self.front.clear();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream that counts the bytes read from and written to it; the counts
/// survive an error in the middle of a copy.
pub struct Counted<S> {
    pub inner: S,
    pub read: u64,
    pub written: u64,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> Self {
        Counted {
            inner,
            read: 0,
            written: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Buffer per direction for tunnels: tokio's default of 8 KiB costs a
/// third of the throughput of a bulk transfer in syscalls.
const SPLICE_BUF: usize = 128 * 1024;

/// Copies both ways until both sides are done; returns (a→b, b→a) bytes.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, SPLICE_BUF, SPLICE_BUF).await
}

/// How reading an HTTP head ended.
#[derive(Debug)]
pub enum Head {
    /// The head bytes (through the blank line); anything after it was
    /// pushed back into the stream.
    Complete(Vec<u8>),
    /// The peer closed before sending anything.
    Eof,
    /// The peer closed or the limit was hit in the middle of a head.
    Truncated,
    TooLarge,
}

/// Reads until `\r\n\r\n`, at most [`MAX_HEAD`] bytes.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut Prefixed<S>) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(if buf.is_empty() {
                Head::Eof
            } else {
                Head::Truncated
            });
        }
        // Search from a little before the new bytes: the terminator may
        // straddle two reads.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find_blank_line(&buf[from..]) {
            let end = from + i + 4;
            if end > MAX_HEAD {
                return Ok(Head::TooLarge);
            }
            s.unread(&buf[end..]);
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

fn find_blank_line(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn head_split_and_pushback() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut p = Prefixed::new(b);
        tokio::spawn(async move {
            for part in [&b"GET / HTTP/1.1\r\nHost: x\r"[..], b"\n", b"\r\nBODY"] {
                a.write_all(part).await.unwrap();
            }
        });
        match read_head(&mut p).await.unwrap() {
            Head::Complete(h) => assert_eq!(h, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            other => panic!("{other:?}"),
        }
        let mut rest = [0u8; 4];
        p.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"BODY");
    }

    #[tokio::test]
    async fn head_too_large() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut p = Prefixed::new(b);
        tokio::spawn(async move {
            let _ = a.write_all(&vec![b'a'; MAX_HEAD + 10]).await;
        });
        assert!(matches!(read_head(&mut p).await.unwrap(), Head::TooLarge));
    }
}
