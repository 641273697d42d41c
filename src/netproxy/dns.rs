//! The DNS responder of transparent mode, inside the sandbox. It answers
//! every A query with an address from a private pool (198.18.0.0/15, see
//! [`POOL_PREFIX`]), remembers which name got which address, and forwards
//! nothing: a lookup cannot carry data out of the sandbox, and every lookup
//! is reported. AAAA and other types get an empty NOERROR answer so clients
//! fall back to IPv4. Connections to pool addresses are caught by the
//! forwarder and turned back into `CONNECT name:port`.
//!
//! The message handling is a minimal, bounds-checked reader of RFC 1035
//! queries: one question, no compression in it (queries never use any).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::hosts::normalize_host;

/// The pool network and its prefix length.
pub const POOL_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const POOL_PREFIX: u8 = 15;
/// The address put on `lo` to make the whole pool local
/// ([`super::forwarder::configure_pool_address`]); never handed out.
pub const POOL_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The TTL of answers: the mapping lives as long as the forwarder.
const TTL: u32 = 300;

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;

/// Name ↔ address table of the pool.
#[derive(Debug, Default)]
pub struct Pool {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    /// Offset of the next free address from [`POOL_NET`].
    next: u32,
}

impl Pool {
    pub fn new() -> Self {
        Pool::default()
    }

    /// Whether `ip` lies in the pool network.
    pub fn contains(ip: Ipv4Addr) -> bool {
        u32::from(ip) >> (32 - POOL_PREFIX) == u32::from(POOL_NET) >> (32 - POOL_PREFIX)
    }

    /// The address of `name` (normalised), allocating one the first time;
    /// `None` when the pool is used up.
    pub fn address_for(&mut self, name: &str) -> Option<Ipv4Addr> {
        if let Some(a) = self.by_name.get(name) {
            return Some(*a);
        }
        let size = 1u32 << (32 - POOL_PREFIX);
        // Skip the network address and the gateway; stop before broadcast.
        let offset = self.next.max(2);
        if offset >= size - 1 {
            return None;
        }
        self.next = offset + 1;
        let a = Ipv4Addr::from(u32::from(POOL_NET) + offset);
        self.by_name.insert(name.to_string(), a);
        self.by_addr.insert(a, name.to_string());
        Some(a)
    }

    /// The name an address was handed out for.
    pub fn name_for(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&ip).map(String::as_str)
    }
}

/// A response and what to report about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message: Vec<u8>,
    /// (name, answer in words) for the DNS event; `None` when no name
    /// could be read.
    pub lookup: Option<(String, String)>,
}

/// Answers one DNS query message. `None`: not worth an answer (shorter than
/// a header, or itself a response).
pub fn answer(pool: &mut Pool, query: &[u8]) -> Option<Reply> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let opcode = (query[2] >> 3) & 0x0f;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    if opcode != 0 {
        return Some(Reply {
            message: header_only(query, RCODE_NOTIMP),
            lookup: None,
        });
    }
    if qdcount != 1 {
        return Some(Reply {
            message: header_only(query, RCODE_FORMERR),
            lookup: None,
        });
    }
    let Some((labels, q_end)) = read_question(query) else {
        return Some(Reply {
            message: header_only(query, RCODE_FORMERR),
            lookup: None,
        });
    };
    let qtype = u16::from_be_bytes([query[q_end - 4], query[q_end - 3]]);
    let qclass = u16::from_be_bytes([query[q_end - 2], query[q_end - 1]]);
    let question = &query[12..q_end];
    let raw_name = labels.join(".");
    let shown: String = raw_name.chars().take(255).collect();
    let name = match normalize_host(&raw_name) {
        Ok(h) => h.to_string(),
        Err(_) => {
            let msg = response(query, question, RCODE_NXDOMAIN, None);
            return Some(Reply {
                message: msg,
                lookup: Some((shown, "NXDOMAIN (not a valid host name)".into())),
            });
        }
    };
    if qtype != TYPE_A || qclass != CLASS_IN {
        let msg = response(query, question, 0, None);
        let words = format!("no records of type {qtype} (IPv4 only)");
        return Some(Reply {
            message: msg,
            lookup: Some((name, words)),
        });
    }
    match pool.address_for(&name) {
        Some(a) => Some(Reply {
            message: response(query, question, 0, Some(a)),
            lookup: Some((name, a.to_string())),
        }),
        None => Some(Reply {
            message: response(query, question, RCODE_SERVFAIL, None),
            lookup: Some((name, "SERVFAIL (address pool used up)".into())),
        }),
    }
}

/// Reads the one question: its labels (as text, bytes outside printable
/// ASCII refused) and where it ends.
fn read_question(msg: &[u8]) -> Option<(Vec<String>, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    let mut total = 0usize;
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        // Compression pointers and the reserved label types: not in a query.
        if len > 63 {
            return None;
        }
        total += len + 1;
        if total > 255 {
            return None;
        }
        let label = msg.get(pos..pos + len)?;
        if !label.iter().all(|b| b.is_ascii_graphic() && *b != b'.') {
            return None;
        }
        labels.push(String::from_utf8_lossy(label).into_owned());
        pos += len;
    }
    let end = pos.checked_add(4)?;
    if end > msg.len() || labels.is_empty() {
        return None;
    }
    Some((labels, end))
}

fn flags(query: &[u8], rcode: u8) -> [u8; 2] {
    // QR, the query's opcode and RD, AA; RA; rcode.
    [0x80 | (query[2] & 0x79) | 0x04, 0x80 | (rcode & 0x0f)]
}

fn header_only(query: &[u8], rcode: u8) -> Vec<u8> {
    let mut m = Vec::with_capacity(12);
    m.extend_from_slice(&query[..2]);
    m.extend_from_slice(&flags(query, rcode));
    m.extend_from_slice(&[0; 8]);
    m
}

fn response(query: &[u8], question: &[u8], rcode: u8, a: Option<Ipv4Addr>) -> Vec<u8> {
    let mut m = Vec::with_capacity(12 + question.len() + 16);
    m.extend_from_slice(&query[..2]);
    m.extend_from_slice(&flags(query, rcode));
    m.extend_from_slice(&[0, 1, 0, u8::from(a.is_some()), 0, 0, 0, 0]);
    m.extend_from_slice(question);
    if let Some(a) = a {
        // Name: pointer to the question at offset 12.
        m.extend_from_slice(&[0xc0, 12]);
        m.extend_from_slice(&TYPE_A.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&TTL.to_be_bytes());
        m.extend_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&a.octets());
    }
    m
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.').filter(|l| !l.is_empty()) {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn a_queries_get_stable_pool_addresses() {
        let mut pool = Pool::new();
        let r = answer(&mut pool, &query(7, "Example.COM", 1)).unwrap();
        assert_eq!(r.lookup, Some(("example.com".into(), "198.18.0.2".into())));
        let m = &r.message;
        assert_eq!(&m[..2], &[0, 7]);
        assert_eq!(m[2] & 0x80, 0x80);
        assert_eq!(m[3] & 0x0f, 0);
        assert_eq!(&m[6..8], &[0, 1]);
        assert_eq!(&m[m.len() - 4..], &[198, 18, 0, 2]);
        let again = answer(&mut pool, &query(8, "example.com.", 1)).unwrap();
        assert_eq!(&again.message[again.message.len() - 4..], &[198, 18, 0, 2]);
        let other = answer(&mut pool, &query(9, "other.example", 1)).unwrap();
        assert_eq!(other.lookup.unwrap().1, "198.18.0.3");
        assert_eq!(
            pool.name_for(Ipv4Addr::new(198, 18, 0, 3)),
            Some("other.example")
        );
        assert!(Pool::contains(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!Pool::contains(Ipv4Addr::new(198, 20, 0, 0)));
    }

    #[test]
    fn aaaa_is_empty_noerror_and_bad_names_nxdomain() {
        let mut pool = Pool::new();
        let r = answer(&mut pool, &query(1, "v6.example", 28)).unwrap();
        assert_eq!(r.message[3] & 0x0f, 0);
        assert_eq!(&r.message[6..8], &[0, 0]);
        assert!(r.lookup.unwrap().1.contains("28"));
        let r = answer(&mut pool, &query(1, "bad!name.example", 1)).unwrap();
        assert_eq!(r.message[3] & 0x0f, RCODE_NXDOMAIN);
    }

    #[test]
    fn malformed_queries_never_panic() {
        let mut pool = Pool::new();
        assert!(answer(&mut pool, &[0; 5]).is_none());
        let good = query(3, "trunc.example", 1);
        for n in 0..good.len() {
            let _ = answer(&mut pool, &good[..n]);
        }
        let mut ptr = good.clone();
        ptr[12] = 0xc0;
        assert_eq!(
            answer(&mut pool, &ptr).unwrap().message[3] & 0x0f,
            RCODE_FORMERR
        );
        let mut notimp = good.clone();
        notimp[2] = 0x10;
        assert_eq!(
            answer(&mut pool, &notimp).unwrap().message[3] & 0x0f,
            RCODE_NOTIMP
        );
        let mut resp = good;
        resp[2] |= 0x80;
        assert!(answer(&mut pool, &resp).is_none());
    }

    proptest::proptest! {
        #[test]
        fn random_messages_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut pool = Pool::new();
            let _ = answer(&mut pool, &data);
        }
    }
}
