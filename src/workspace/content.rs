//! The content hash of a file as reviewed, and what a review needs to know
//! about its bytes, at a cost that follows the file's data, not its
//! apparent size: an agent's `truncate -s 8G` takes no disk and no quota,
//! and must not take the reviewer's memory or an hour of hashing either.
//!
//! The hash is SHA-256 over the file cut into [`BLOCK`]-sized blocks: each
//! block that is not all zeros with its index, then the total size. Holes
//! read as zeros, so they are skipped (`SEEK_DATA`/`SEEK_HOLE`) without
//! being read, and a hole and written zeros hash the same: the hash
//! depends on the content only, and any change of it (a byte, the size)
//! changes the hash. [`copy`] computes it while the commit copies a file,
//! [`hash_bytes`] for content in memory (a hunk merge's check).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

/// Hash block size.
pub const BLOCK: usize = 4096;
/// How many leading bytes decide whether a file looks binary (a NUL among
/// them), as git does.
pub const HEAD: usize = 8000;
const TAG: &[u8] = b"airlock content v1\0";

/// The content hash, fed block by block or as a stream.
pub struct ContentHasher {
    h: Sha256,
    /// The partial block of a stream.
    buf: Vec<u8>,
    /// Index of the block `buf` fills.
    next: u64,
    len: u64,
}

impl Default for ContentHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ContentHasher {
    pub fn new() -> ContentHasher {
        let mut h = Sha256::new();
        h.update(TAG);
        ContentHasher {
            h,
            buf: Vec::with_capacity(BLOCK),
            next: 0,
            len: 0,
        }
    }

    /// One whole block (the last may be shorter), in increasing order.
    fn block(&mut self, index: u64, b: &[u8]) {
        if b.iter().any(|&x| x != 0) {
            self.h.update(index.to_le_bytes());
            self.h.update(b);
        }
    }

    /// The next bytes of a stream.
    pub fn update(&mut self, mut b: &[u8]) {
        self.len += b.len() as u64;
        while !b.is_empty() {
            if self.buf.is_empty() && b.len() >= BLOCK {
                let (whole, rest) = b.split_at(BLOCK);
                self.block(self.next, whole);
                self.next += 1;
                b = rest;
                continue;
            }
            let take = (BLOCK - self.buf.len()).min(b.len());
            self.buf.extend_from_slice(&b[..take]);
            b = &b[take..];
            if self.buf.len() == BLOCK {
                let full = std::mem::take(&mut self.buf);
                self.block(self.next, &full);
                self.buf = full;
                self.buf.clear();
                self.next += 1;
            }
        }
    }

    /// The hash of a stream fed with [`update`](Self::update).
    pub fn finish(mut self) -> [u8; 32] {
        let tail = std::mem::take(&mut self.buf);
        self.block(self.next, &tail);
        let len = self.len;
        self.finish_with_len(len)
    }

    fn finish_with_len(mut self, len: u64) -> [u8; 32] {
        self.h.update(len.to_le_bytes());
        self.h.finalize().into()
    }
}

/// The content hash of bytes in memory.
pub fn hash_bytes(b: &[u8]) -> [u8; 32] {
    let mut h = ContentHasher::new();
    h.update(b);
    h.finish()
}

/// What a review learns from one read of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub hash: [u8; 32],
    pub size: u64,
    /// The first [`HEAD`] bytes (holes as zeros).
    pub head: Vec<u8>,
    /// Control characters other than tab, newline and the CR of a CRLF, or
    /// invisible/bidi formatting characters (holes count: they are NULs).
    pub controls: bool,
}

/// Reads the first `n` bytes of `f` (fewer when it is shorter).
pub fn head(f: &File, n: usize) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match f.read_at(&mut out[got..], got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.truncate(got);
    Ok(out)
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`; `None` past the last data.
fn seek(f: &File, off: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on an fd we own; it only moves the file offset.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Calls `each(offset, bytes)` for the data of `f` up to `size` in whole
/// blocks (the last may be shorter), in order, skipping holes; `gap()`
/// when zeros that were not read lie before the next bytes or at the end.
fn each_data(
    f: &File,
    size: u64,
    mut gap: impl FnMut(),
    mut each: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let b = BLOCK as u64;
    let mut buf = vec![0u8; 16 * BLOCK];
    // Everything before `off` is done.
    let mut off = 0u64;
    while off < size {
        let (data, hole) = match seek(f, off, libc::SEEK_DATA) {
            Ok(Some(d)) if d < size => {
                let h = seek(f, d, libc::SEEK_HOLE)?;
                (d, h.unwrap_or(size).min(size))
            }
            // Only a hole is left.
            Ok(_) => {
                gap();
                break;
            }
            // A file system that cannot tell: all of it is data.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                (off, size)
            }
            Err(e) => return Err(e),
        };
        let start = (data / b * b).max(off);
        if start > off {
            gap();
        }
        let end = hole.div_ceil(b).saturating_mul(b).min(size).max(start);
        let mut pos = start;
        while pos < end {
            let want = ((end - pos) as usize).min(buf.len());
            let mut got = 0;
            while got < want {
                match f.read_at(&mut buf[got..want], pos + got as u64) {
                    Ok(0) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the file shrank while it was read",
                        ))
                    }
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            each(pos, &buf[..want])?;
            pos += want as u64;
        }
        off = end;
    }
    Ok(())
}

/// Hashes and scans the open regular file `f`, reading only its data
/// extents (whole blocks around them).
pub fn scan(f: &File) -> std::io::Result<Scan> {
    let size = f.metadata()?.len();
    let head = head(f, HEAD.min(size as usize))?;
    let mut h = ContentHasher::new();
    let ctl = std::cell::RefCell::new(Controls::default());
    each_data(
        f,
        size,
        || {
            // Zeros: NULs, and no line runs across them.
            let mut c = ctl.borrow_mut();
            c.found = true;
            c.reset();
        },
        |pos, bytes| {
            for (i, blk) in bytes.chunks(BLOCK).enumerate() {
                h.block(pos / BLOCK as u64 + i as u64, blk);
            }
            ctl.borrow_mut().feed(bytes);
            Ok(())
        },
    )?;
    let mut ctl = ctl.into_inner();
    ctl.end();
    Ok(Scan {
        hash: h.finish_with_len(size),
        size,
        head,
        controls: ctl.found,
    })
}

/// Copies the regular file `src` into the new, empty file `dst` and
/// returns its content hash: only data extents are read, and blocks of
/// zeros stay holes, so an agent's sparse file costs the commit what it
/// holds, not its apparent size. The bytes are the same.
pub fn copy(src: &File, dst: &File) -> std::io::Result<[u8; 32]> {
    let size = src.metadata()?.len();
    let mut h = ContentHasher::new();
    each_data(
        src,
        size,
        || {},
        |pos, bytes| {
            for (i, blk) in bytes.chunks(BLOCK).enumerate() {
                if blk.iter().any(|&x| x != 0) {
                    let at = pos + (i * BLOCK) as u64;
                    h.block(at / BLOCK as u64, blk);
                    dst.write_all_at(blk, at)?;
                }
            }
            Ok(())
        },
    )?;
    // A trailing hole needs the length set; so does an all-zero file.
    dst.set_len(size)?;
    Ok(h.finish_with_len(size))
}

/// Finds control characters in a stream of bytes: C0 controls other than
/// tab and newline, a carriage return not followed by a newline, DEL, and
/// every character that [`super::names::escape`] shows escaped (C1
/// controls, bidi and zero-width formats, blank-drawing letters). UTF-8 is
/// decoded across the chunks it is fed in.
#[derive(Default)]
struct Controls {
    found: bool,
    after_cr: bool,
    /// The UTF-8 sequence being read, and how many bytes it still needs.
    seq: [u8; 4],
    len: usize,
    need: usize,
    /// The last character read whole (for emoji presentation selectors).
    prev: Option<char>,
}

impl Controls {
    fn reset(&mut self) {
        self.after_cr = false;
        self.len = 0;
        self.need = 0;
        self.prev = None;
    }

    fn feed(&mut self, b: &[u8]) {
        if self.found {
            return;
        }
        for &c in b {
            if self.after_cr && c != b'\n' {
                self.found = true;
                return;
            }
            self.after_cr = c == b'\r';
            if self.need > 0 {
                if c & 0xc0 == 0x80 {
                    self.seq[self.len] = c;
                    self.len += 1;
                    self.need -= 1;
                    if self.need == 0 && self.hidden() {
                        self.found = true;
                        return;
                    }
                    if self.need == 0 {
                        self.prev = self.decoded();
                    }
                    continue;
                }
                // Not UTF-8 after all: this byte starts afresh.
                self.need = 0;
            }
            let (bad, need) = match c {
                b'\t' | b'\n' | b'\r' => (false, 0),
                0..=0x1f | 0x7f => (true, 0),
                0xc0..=0xdf => (false, 1),
                0xe0..=0xef => (false, 2),
                0xf0..=0xf7 => (false, 3),
                _ => (false, 0),
            };
            if bad {
                self.found = true;
                return;
            }
            self.seq[0] = c;
            self.len = 1;
            self.need = need;
            if need == 0 {
                self.prev = Some(char::from(c));
            }
        }
    }

    /// The character of the sequence just completed.
    fn decoded(&self) -> Option<char> {
        std::str::from_utf8(&self.seq[..self.len])
            .ok()
            .and_then(|s| s.chars().next())
    }

    /// Whether the sequence just completed is a character shown escaped.
    fn hidden(&self) -> bool {
        self.decoded().is_some_and(|c| {
            super::names::is_hidden_format(c) && !super::names::emoji_presentation(self.prev, c)
        })
    }

    fn end(&mut self) {
        if self.after_cr {
            self.found = true;
        }
    }
}

/// Whether `b` holds control characters as [`Scan::controls`] counts them.
pub fn has_controls(b: &[u8]) -> bool {
    let mut c = Controls::default();
    c.feed(b);
    c.end();
    c.found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn stream_block_and_file_hashes_agree() {
        let mut t = tempfile::tempfile().unwrap();
        // Data, a hole, data in the middle of a block, a trailing hole.
        t.write_all(b"#!/bin/sh\necho hi\n").unwrap();
        t.seek(SeekFrom::Start(1 << 20)).unwrap();
        t.write_all(b"payload").unwrap();
        t.set_len(3 << 20).unwrap();
        let s = scan(&t).unwrap();
        let mut all = Vec::new();
        t.seek(SeekFrom::Start(0)).unwrap();
        std::io::Read::read_to_end(&mut t, &mut all).unwrap();
        assert_eq!(s.size, all.len() as u64);
        assert_eq!(s.hash, hash_bytes(&all));
        // Fed in odd pieces.
        let mut h = ContentHasher::new();
        for c in all.chunks(1000) {
            h.update(c);
        }
        assert_eq!(h.finish(), s.hash);
        assert!(s.controls, "holes are NULs");
        // Copied: same bytes, same hash, holes kept.
        let d = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(copy(&t, d.as_file()).unwrap(), s.hash);
        assert_eq!(std::fs::read(d.path()).unwrap(), all);
        let blocks = std::os::unix::fs::MetadataExt::blocks(&d.as_file().metadata().unwrap());
        assert!(blocks * 512 <= 64 << 10, "{} bytes allocated", blocks * 512);
        for len in [0usize, 3, 4096, 10000] {
            let z = tempfile::tempfile().unwrap();
            z.set_len(len as u64).unwrap();
            let d = tempfile::NamedTempFile::new().unwrap();
            assert_eq!(copy(&z, d.as_file()).unwrap(), hash_bytes(&vec![0u8; len]));
            assert_eq!(std::fs::read(d.path()).unwrap(), vec![0u8; len]);
        }
        assert_eq!(&s.head[..2], b"#!");
        // Any change shows: a byte, the size, a zero becoming data.
        let mut other = all.clone();
        other[(1 << 20) + 2] ^= 1;
        assert_ne!(hash_bytes(&other), s.hash);
        assert_ne!(hash_bytes(&all[..all.len() - 1]), s.hash);
        let mut z = all.clone();
        z[2 << 20] = 1;
        assert_ne!(hash_bytes(&z), s.hash);
        assert_ne!(hash_bytes(b""), hash_bytes(b"\0"));
        assert_ne!(hash_bytes(b"\0"), hash_bytes(b"\0\0"));
    }

    #[test]
    fn control_characters() {
        assert!(!has_controls(b"a\tb\r\nc\n"));
        assert!(has_controls(b"# x\rimport os\n"));
        assert!(has_controls(b"end\r"));
        assert!(has_controls(b"\x1b[2J"));
        assert!(has_controls(b"a\0b"));
        assert!(has_controls("x\u{202e}y".as_bytes()));
        assert!(has_controls("x\u{85}y".as_bytes()));
        assert!(!has_controls("Größe € \u{2019}".as_bytes()));
        assert!(has_controls("timeout,\u{3164}}".as_bytes()));
        assert!(has_controls("a\u{1d175}b".as_bytes()));
        assert!(!has_controls("한국어 ⠁".as_bytes()));
        assert!(!has_controls("love ❤\u{fe0f} 1\u{fe0f}\u{20e3}".as_bytes()));
        assert!(has_controls("isAdmin\u{fe00} = true".as_bytes()));
        assert!(has_controls("isAdmin\u{fe0f} = true".as_bytes()));
        assert!(has_controls("app\u{e0100}.js".as_bytes()));
        // Across the chunks a stream is fed in.
        let mut c = Controls::default();
        c.feed(b"x\xe3\x85");
        c.feed(b"\xa4y");
        c.end();
        assert!(c.found);
    }
}
