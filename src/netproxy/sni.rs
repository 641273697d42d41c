//! A minimal, bounds-checked reader for the TLS ClientHello: just enough to
//! find the server name (SNI) and whether Encrypted Client Hello is offered.
//! It never allocates more than the hello itself and never panics on any
//! input (see the truncation and garbage tests).

/// The most handshake bytes we collect before giving up: a ClientHello with
/// post-quantum key shares is about 2 KiB; 64 KiB is far above real ones.
pub const MAX_HELLO: usize = 64 * 1024;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_ECH: u16 = 0xfe0d;

/// What the first bytes of a tunnel are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not a TLS handshake record: not TLS at all.
    NotTls,
    /// A TLS record whose ClientHello is not complete yet: read more.
    Incomplete,
    /// Starts like TLS but breaks the format.
    Malformed(&'static str),
    /// A complete ClientHello.
    ClientHello {
        /// The `host_name` of the server_name extension, as sent.
        sni: Option<String>,
        /// The encrypted_client_hello extension (0xfe0d) is present.
        ech: bool,
    },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Reads the ClientHello at the start of `buf` (the bytes a client sent
/// first through a tunnel). The handshake message may span several records.
pub fn parse_client_hello(buf: &[u8]) -> Hello {
    match buf.first() {
        None => return Hello::Incomplete,
        Some(&RECORD_HANDSHAKE) => {}
        // Another TLS record (change cipher spec, alert, application data,
        // heartbeat) first: some servers (Go's, BoringSSL's) skip a warning
        // alert and take the ClientHello after it, whose name would then
        // go unchecked.
        Some(20..=24) => {
            return match buf.get(1) {
                None => Hello::Incomplete,
                Some(3) => Hello::Malformed("a TLS record came before the ClientHello"),
                Some(_) => Hello::NotTls,
            }
        }
        // An SSLv2-format ClientHello (two-byte header, message type 1)
        // names no server at all.
        Some(b) if b & 0x80 != 0 => {
            return match buf.get(2) {
                None => Hello::Incomplete,
                Some(1) => Hello::Malformed("an SSLv2 ClientHello, which names no server"),
                Some(_) => Hello::NotTls,
            }
        }
        Some(_) => return Hello::NotTls,
    }
    // Reassemble the handshake bytes from consecutive handshake records.
    let mut handshake = Vec::new();
    let mut r = Reader::new(buf);
    loop {
        let Some(header) = r.take(5) else {
            return Hello::Incomplete;
        };
        if header[0] != RECORD_HANDSHAKE {
            return Hello::Malformed("a non-handshake record before the ClientHello ended");
        }
        if header[1] != 3 {
            return Hello::Malformed("unknown TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Hello::Malformed("TLS record length out of range");
        }
        let Some(body) = r.take(len) else {
            return Hello::Incomplete;
        };
        handshake.extend_from_slice(body);
        if handshake.len() > MAX_HELLO {
            return Hello::Malformed("ClientHello too large");
        }
        if handshake.len() >= 4 {
            if handshake[0] != HANDSHAKE_CLIENT_HELLO {
                return Hello::Malformed("the first handshake message is not a ClientHello");
            }
            let want = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if want > MAX_HELLO {
                return Hello::Malformed("ClientHello too large");
            }
            if handshake.len() >= 4 + want {
                return parse_hello_body(&handshake[4..4 + want]);
            }
        }
    }
}

fn parse_hello_body(body: &[u8]) -> Hello {
    match hello_fields(body) {
        Ok(h) => h,
        Err(why) => Hello::Malformed(why),
    }
}

fn hello_fields(body: &[u8]) -> Result<Hello, &'static str> {
    const SHORT: &str = "ClientHello truncated";
    let mut r = Reader::new(body);
    let version = r.u16().ok_or(SHORT)?;
    if version >> 8 != 3 {
        return Err("unknown ClientHello version");
    }
    r.take(32).ok_or(SHORT)?;
    let session = r.vec8().ok_or(SHORT)?;
    if session.len() > 32 {
        return Err("session id longer than 32 bytes");
    }
    let suites = r.vec16().ok_or(SHORT)?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("bad cipher suite list");
    }
    r.vec8().ok_or(SHORT)?;
    if r.is_empty() {
        // No extensions at all (TLS 1.0 style): no SNI, no ECH.
        return Ok(Hello::ClientHello {
            sni: None,
            ech: false,
        });
    }
    let exts = r.vec16().ok_or(SHORT)?;
    if !r.is_empty() {
        return Err("bytes after the extensions");
    }
    let mut er = Reader::new(exts);
    let mut sni = None;
    let mut seen_sni = false;
    let mut ech = false;
    while !er.is_empty() {
        let ty = er.u16().ok_or(SHORT)?;
        let data = er.vec16().ok_or(SHORT)?;
        match ty {
            EXT_SERVER_NAME => {
                if seen_sni {
                    return Err("two server_name extensions");
                }
                seen_sni = true;
                sni = parse_server_name(data)?;
            }
            EXT_ECH => ech = true,
            _ => {}
        }
    }
    Ok(Hello::ClientHello { sni, ech })
}

fn parse_server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    const BAD: &str = "malformed server_name extension";
    let mut r = Reader::new(data);
    let list = r.vec16().ok_or(BAD)?;
    if !r.is_empty() {
        return Err(BAD);
    }
    let mut lr = Reader::new(list);
    let mut name = None;
    while !lr.is_empty() {
        let ty = lr.u8().ok_or(BAD)?;
        let value = lr.vec16().ok_or(BAD)?;
        if ty == 0 {
            if name.is_some() {
                return Err("two host names in server_name");
            }
            if value.is_empty() || !value.is_ascii() {
                return Err("server name is empty or not ASCII");
            }
            name = Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    Ok(name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ClientHello record with the given extensions.
    pub(crate) fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        let mut e = Vec::new();
        for (ty, data) in exts {
            e.extend_from_slice(&ty.to_be_bytes());
            e.extend_from_slice(&(data.len() as u16).to_be_bytes());
            e.extend_from_slice(data);
        }
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(&e);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    pub(crate) fn sni_ext(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name.as_bytes());
        let mut d = (entry.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&entry);
        (0, d)
    }

    #[test]
    fn finds_sni_and_ech() {
        let h = hello(&[(0x000a, vec![0, 2, 0, 0x1d]), sni_ext("Example.COM")]);
        assert_eq!(
            parse_client_hello(&h),
            Hello::ClientHello {
                sni: Some("Example.COM".into()),
                ech: false
            }
        );
        let h = hello(&[sni_ext("public.example"), (0xfe0d, vec![0; 40])]);
        assert_eq!(
            parse_client_hello(&h),
            Hello::ClientHello {
                sni: Some("public.example".into()),
                ech: true
            }
        );
        assert_eq!(
            parse_client_hello(&hello(&[])),
            Hello::ClientHello {
                sni: None,
                ech: false
            }
        );
    }

    #[test]
    fn split_across_records() {
        let h = hello(&[sni_ext("split.example")]);
        let hs = &h[5..];
        let (a, b) = hs.split_at(10);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[0x16, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(
            parse_client_hello(&two),
            Hello::ClientHello {
                sni: Some("split.example".into()),
                ech: false
            }
        );
    }

    #[test]
    fn every_truncation_is_incomplete_never_a_panic() {
        let h = hello(&[
            sni_ext("trunc.example"),
            (0x0010, vec![0, 3, 2, b'h', b'2']),
        ]);
        for n in 0..h.len() {
            assert_eq!(parse_client_hello(&h[..n]), Hello::Incomplete, "prefix {n}");
        }
    }

    #[test]
    fn not_tls_and_malformed() {
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(parse_client_hello(b"SSH-2.0-x"), Hello::NotTls);
        assert!(matches!(
            parse_client_hello(&[0x16, 9, 9, 0, 1, 0]),
            Hello::Malformed(_)
        ));
        assert!(matches!(
            parse_client_hello(&[0x16, 3, 1, 0, 0]),
            Hello::Malformed(_)
        ));
        assert!(matches!(
            parse_client_hello(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Hello::Malformed(_)
        ));
        let two = hello(&[sni_ext("a.example"), sni_ext("b.example")]);
        assert!(matches!(parse_client_hello(&two), Hello::Malformed(_)));
    }

    /// A warning alert (or any other record) before the ClientHello, then
    /// a hello naming another host: Go's and BoringSSL's servers skip the
    /// alert and take that hello (pass 12B). An SSLv2 hello names no server.
    #[test]
    fn records_before_the_hello_and_sslv2_hellos_are_refused() {
        let mut fronted = vec![0x15, 3, 1, 0, 2, 1, 0x5a];
        fronted.extend(hello(&[sni_ext("evil.example")]));
        assert!(matches!(parse_client_hello(&fronted), Hello::Malformed(_)));
        for t in [20u8, 21, 23, 24] {
            assert!(
                matches!(parse_client_hello(&[t, 3, 3, 0, 1, 0]), Hello::Malformed(_)),
                "{t}"
            );
            assert_eq!(parse_client_hello(&[t]), Hello::Incomplete);
        }
        let v2 = [0x80, 0x2e, 1, 3, 1, 0, 0x15, 0, 0, 0, 0x10];
        assert!(matches!(parse_client_hello(&v2), Hello::Malformed(_)));
        assert_eq!(parse_client_hello(&[0x80, 0x2e]), Hello::Incomplete);
        // Other protocols that happen to start with those bytes pass.
        assert_eq!(parse_client_hello(&[0x15, 0x41, 0x42]), Hello::NotTls);
        assert_eq!(parse_client_hello(&[0x80, 0x01, 0x02]), Hello::NotTls);
    }

    #[test]
    fn mutated_hellos_never_panic() {
        // Deterministic pseudo-random flips over a real-shaped hello.
        let base = hello(&[sni_ext("fuzz.example"), (0xfe0d, vec![1; 8])]);
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut m = base.clone();
            let i = (seed as usize) % m.len();
            m[i] = (seed >> 32) as u8;
            let cut = ((seed >> 40) as usize) % (m.len() + 1);
            let _ = parse_client_hello(&m[..cut]);
            let _ = parse_client_hello(&m);
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let _ = parse_client_hello(&data);
            let mut tls = vec![0x16, 3, 1];
            tls.extend_from_slice(&data);
            let _ = parse_client_hello(&tls);
        }
    }
}
