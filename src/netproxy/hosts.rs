//! Host-name normalisation and allow-list matching.
//!
//! Every name the proxy sees (a CONNECT authority, an absolute URL, a SOCKS5
//! domain, a TLS SNI, an allow-list entry) goes through [`normalize_host`]
//! before it is compared, so that `EXAMPLE.com.`, `example.com` and
//! `Example.COM` are one host and the numeric spellings of an IPv4 address
//! (`2130706433`, `0x7f.1`, `017700000001`) are the address they denote.
//! Internationalised names are refused (use the `xn--` form): IDNA mapping
//! is large and getting it half right would open confusable-name tricks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::i18n::{gettext, gettext_f};
use crate::Error;

/// A normalised host: a lower-case DNS name without trailing dot, or an IP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// The IP address, for an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }
}

impl fmt::Display for Host {
    /// Names as they are, IPv4 dotted, IPv6 in brackets (the form that can be
    /// followed by `:PORT`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
        }
    }
}

/// Normalises one host as written in a request or an allow-list entry
/// (without port). The error is a sentence naming the host.
pub fn normalize_host(input: &str) -> Result<Host, String> {
    let refuse = |why: &str| gettext_f("{host}: {why}", &[("host", input), ("why", why)]);
    if input.is_empty() {
        return Err(gettext("the host name is empty"));
    }
    if !input.is_ascii() {
        return Err(refuse(&gettext(
            "internationalised names are not supported; write the name in its xn-- form",
        )));
    }
    if let Some(inner) = input.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| refuse(&gettext("the IPv6 address has no closing bracket")))?;
        return parse_ipv6(inner)
            .map(|a| Host::Ip(canonical(IpAddr::V6(a))))
            .ok_or_else(|| {
                refuse(&gettext(
                    "not a valid IPv6 address (zone ids are not accepted)",
                ))
            });
    }
    if input.contains(':') {
        return parse_ipv6(input)
            .map(|a| Host::Ip(canonical(IpAddr::V6(a))))
            .ok_or_else(|| {
                refuse(&gettext(
                    "not a valid IPv6 address (zone ids are not accepted)",
                ))
            });
    }
    let lower = input.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() || name.len() > 253 {
        return Err(refuse(&gettext("not a valid host name length")));
    }
    let labels: Vec<&str> = name.split('.').collect();
    // As in the WHATWG URL standard: a name whose last label is numeric is
    // an IPv4 address or nothing, so `1.2.3.4.5` or `1.2.3.09` never reach DNS
    // where some resolver might read them its own way.
    let last = labels[labels.len() - 1];
    if looks_numeric(last) {
        return parse_ipv4_loose(&labels)
            .map(|a| Host::Ip(IpAddr::V4(a)))
            .ok_or_else(|| refuse(&gettext("not a valid IPv4 address")));
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err(refuse(&gettext(
                "a label of the name is empty or longer than 63 characters",
            )));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(refuse(&gettext(
                "the name contains characters not allowed in host names",
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(refuse(&gettext(
                "a label of the name starts or ends with a hyphen",
            )));
        }
    }
    Ok(Host::Name(name.to_string()))
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn parse_ipv6(s: &str) -> Option<Ipv6Addr> {
    // `str::parse` refuses zone ids (`%eth0`) already; stated for the reader.
    s.parse::<Ipv6Addr>().ok()
}

fn looks_numeric(label: &str) -> bool {
    if label.is_empty() {
        return false;
    }
    if let Some(hex) = label.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    label.bytes().all(|b| b.is_ascii_digit())
}

/// `inet_aton` forms: 1 to 4 parts, each decimal, `0x` hex or `0` octal;
/// the last part fills the remaining bytes.
fn parse_ipv4_loose(parts: &[&str]) -> Option<Ipv4Addr> {
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in parts {
        nums.push(parse_ipv4_part(p)?);
    }
    let (last, head) = nums.split_last()?;
    let mut value: u64 = 0;
    for n in head {
        if *n > 255 {
            return None;
        }
        value = (value << 8) | n;
    }
    let rest_bits = 8 * (4 - head.len() as u32);
    if *last >= (1u64 << rest_bits) {
        return None;
    }
    value = (value << rest_bits) | last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_ipv4_part(p: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x") {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() {
        // `0x` alone is 0 in inet_aton; keep it strict instead.
        return if radix == 16 { None } else { Some(0) };
    }
    if digits.len() > 12 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Splits `HOST[:PORT]` (IPv6 in brackets when a port follows). `None`
/// port means "no port given".
pub fn split_host_port(input: &str) -> Result<(&str, Option<u16>), String> {
    let bad_port = || {
        gettext_f(
            "{input}: the port is not a number from 1 to 65535",
            &[("input", input)],
        )
    };
    if input.starts_with('[') {
        let close = input.find(']').ok_or_else(|| {
            gettext_f(
                "{input}: the IPv6 address has no closing bracket",
                &[("input", input)],
            )
        })?;
        let (host, rest) = input.split_at(close + 1);
        return match rest {
            "" => Ok((host, None)),
            r => match r.strip_prefix(':') {
                Some(p) => Ok((host, Some(parse_port(p).ok_or_else(bad_port)?))),
                None => Err(bad_port()),
            },
        };
    }
    match input.matches(':').count() {
        0 => Ok((input, None)),
        1 => {
            let (h, p) = input.split_once(':').unwrap_or((input, ""));
            Ok((h, Some(parse_port(p).ok_or_else(bad_port)?)))
        }
        // A bare IPv6 address: no port can follow it without brackets.
        _ => Ok((input, None)),
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|n| *n != 0)
}

/// Parses a request target `HOST:PORT` (CONNECT authority) or `HOST` with a
/// default port.
pub fn parse_target(input: &str, default_port: Option<u16>) -> Result<(Host, u16), String> {
    let (h, p) = split_host_port(input)?;
    let host = normalize_host(h)?;
    let port = p
        .or(default_port)
        .ok_or_else(|| gettext_f("{input}: a port is required", &[("input", input)]))?;
    Ok((host, port))
}

/// What one allow-list entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this name.
    Exact(String),
    /// `*.suffix`: any name strictly below `suffix`, never `suffix` itself.
    Wildcard(String),
    /// Exactly this address.
    Ip(IpAddr),
    /// Any address of this network.
    Cidr(IpAddr, u8),
}

/// Which ports an entry allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// No port given: 80 and 443.
    Default,
    One(u16),
    /// `:*`
    Any,
}

impl Ports {
    fn allows(self, port: u16) -> bool {
        match self {
            Ports::Default => port == 80 || port == 443,
            Ports::One(p) => p == port,
            Ports::Any => true,
        }
    }
}

/// One parsed `--allow-host` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    pub pattern: Pattern,
    pub ports: Ports,
}

impl AllowEntry {
    /// Parses `HOST[:PORT]`, `*.example.com[:PORT]`, `IP[:PORT]`,
    /// `[IPv6][:PORT]`, `CIDR`, `[CIDR]:PORT` (IPv6 CIDR with port),
    /// with `:*` for any port.
    pub fn parse(spec: &str) -> Result<AllowEntry, Error> {
        let invalid = |why: String| {
            Error::Invalid(gettext_f(
                "--allow-host {spec}: {why}",
                &[("spec", spec), ("why", &why)],
            ))
        };
        let (body, ports) = split_entry_port(spec).map_err(invalid)?;
        if let Some((addr, len)) = body.split_once('/') {
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            let len = len.trim_end_matches(']');
            let ip = match normalize_host(addr).map_err(invalid)? {
                Host::Ip(ip) => ip,
                Host::Name(_) => {
                    return Err(invalid(gettext(
                        "a network (CIDR) needs an IP address before the /",
                    )))
                }
            };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| invalid(gettext("the prefix length after / is not valid")))?;
            return Ok(AllowEntry {
                pattern: Pattern::Cidr(ip, len),
                ports,
            });
        }
        if let Some(suffix) = body.strip_prefix("*.") {
            return match normalize_host(suffix).map_err(invalid)? {
                Host::Name(n) if n.contains('.') => Ok(AllowEntry {
                    pattern: Pattern::Wildcard(n),
                    ports,
                }),
                _ => Err(invalid(gettext(
                    "a wildcard needs a domain with at least two labels after *. (like *.example.com)",
                ))),
            };
        }
        if body.contains('*') {
            return Err(invalid(gettext(
                "* is only allowed as the first label (*.example.com)",
            )));
        }
        let pattern = match normalize_host(body).map_err(invalid)? {
            Host::Name(n) => Pattern::Exact(n),
            Host::Ip(ip) => Pattern::Ip(ip),
        };
        Ok(AllowEntry { pattern, ports })
    }

    /// Whether this entry allows `host:port` by name or literal address.
    pub fn matches(&self, host: &Host, port: u16) -> bool {
        if !self.ports.allows(port) {
            return false;
        }
        match (&self.pattern, host) {
            (Pattern::Exact(n), Host::Name(h)) => n == h,
            (Pattern::Wildcard(suffix), Host::Name(h)) => h
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            (Pattern::Ip(_) | Pattern::Cidr(..), Host::Ip(ip)) => self.grants_ip(*ip, port),
            _ => false,
        }
    }

    /// Whether this entry names `ip` (directly or as a network containing
    /// it) for `port`: the explicit grant the SSRF guard asks for.
    pub fn grants_ip(&self, ip: IpAddr, port: u16) -> bool {
        if !self.ports.allows(port) {
            return false;
        }
        let ip = canonical(ip);
        match self.pattern {
            Pattern::Ip(a) => a == ip,
            Pattern::Cidr(net, len) => cidr_contains(net, len, ip),
            _ => false,
        }
    }
}

/// Splits the port off an allow-list entry; `:*` means any port.
fn split_entry_port(spec: &str) -> Result<(&str, Ports), String> {
    if let Some(body) = spec.strip_suffix(":*") {
        return Ok((body, Ports::Any));
    }
    // `fd00::/8` has colons but no port; a port after IPv6 needs brackets.
    if !spec.starts_with('[') && spec.matches(':').count() > 1 {
        return Ok((spec, Ports::Default));
    }
    let (h, p) = split_host_port(spec)?;
    Ok((h, p.map_or(Ports::Default, Ports::One)))
}

/// Whether `ip` lies in `net/len` (same family only; mapped forms are
/// canonicalised before).
pub fn cidr_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            (u32::from(n) & mask) == (u32::from(a) & mask)
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            (u128::from(n) & mask) == (u128::from(a) & mask)
        }
        _ => false,
    }
}

/// The parsed allow-list of one task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<AllowEntry>,
}

impl AllowList {
    pub fn parse<S: AsRef<str>>(specs: &[S]) -> Result<AllowList, Error> {
        let entries = specs
            .iter()
            .map(|s| AllowEntry::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList { entries })
    }

    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }

    /// Whether some entry allows `host:port`.
    pub fn allows(&self, host: &Host, port: u16) -> bool {
        self.entries.iter().any(|e| e.matches(host, port))
    }

    /// Whether some IP or CIDR entry names `ip` for `port`.
    pub fn grants_ip(&self, ip: IpAddr, port: u16) -> bool {
        self.entries.iter().any(|e| e.grants_ip(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Host {
        Host::Name(s.to_string())
    }
    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    #[test]
    fn normalisation_table() {
        let ok: &[(&str, Host)] = &[
            ("Example.COM", n("example.com")),
            ("example.com.", n("example.com")),
            ("a-b_c.example.com", n("a-b_c.example.com")),
            ("xn--bcher-kva.example", n("xn--bcher-kva.example")),
            ("127.0.0.1", ip("127.0.0.1")),
            ("2130706433", ip("127.0.0.1")),
            ("0x7f.1", ip("127.0.0.1")),
            ("0x7F.0.0.1", ip("127.0.0.1")),
            ("017700000001", ip("127.0.0.1")),
            ("0177.0.0.1", ip("127.0.0.1")),
            ("127.1", ip("127.0.0.1")),
            ("10.1.257", ip("10.1.1.1")),
            ("0", ip("0.0.0.0")),
            ("0x7f000001", ip("127.0.0.1")),
            ("169.254.43518", ip("169.254.169.254")),
            ("127.0.0.1.", ip("127.0.0.1")),
            ("[::1]", ip("::1")),
            ("::1", ip("::1")),
            ("[::ffff:127.0.0.1]", ip("127.0.0.1")),
            ("[::FFFF:7f00:1]", ip("127.0.0.1")),
            ("[2001:DB8::1]", ip("2001:db8::1")),
        ];
        for (input, want) in ok {
            assert_eq!(&normalize_host(input).unwrap(), want, "{input}");
        }
        let bad = [
            "",
            ".",
            "..",
            "a..b",
            ".example.com",
            "exa mple.com",
            "bücher.example",
            "1.2.3.4.5",
            "256.1.1.1",
            "1.2.3.256",
            "1.16777216",
            "08.1.1.1",
            "0x",
            "example.123",
            "[::1",
            "[fe80::1%eth0]",
            "fe80::1%25eth0",
            "-lead.example.com",
            "trail-.example.com",
            "a/b.example.com",
            "user@example.com",
            "99999999999999999999",
        ];
        for input in bad {
            assert!(normalize_host(input).is_err(), "{input} should be refused");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(normalize_host(&long).is_err());
    }

    #[test]
    fn non_ascii_reason_says_xn() {
        let e = normalize_host("bücher.de").unwrap_err();
        assert!(e.contains("xn--"), "{e}");
    }

    #[test]
    fn targets_and_ports() {
        assert_eq!(
            parse_target("Example.com:8443", None).unwrap(),
            (n("example.com"), 8443)
        );
        assert_eq!(
            parse_target("example.com", Some(80)).unwrap(),
            (n("example.com"), 80)
        );
        assert_eq!(parse_target("[::1]:22", None).unwrap(), (ip("::1"), 22));
        assert!(parse_target("example.com", None).is_err());
        assert!(parse_target("example.com:0", None).is_err());
        assert!(parse_target("example.com:65536", None).is_err());
        assert!(parse_target("example.com:+80", None).is_err());
        assert!(parse_target("example.com:", None).is_err());
        assert!(parse_target("[::1]x", None).is_err());
        // A bare IPv6 address cannot carry a port.
        assert!(parse_target("::1:80", None).is_err());
    }

    #[test]
    fn allow_list_table() {
        let list = AllowList::parse(&[
            "example.com",
            "*.allowed.org",
            "api.service.net:8443",
            "127.0.0.1:8080",
            "10.0.0.0/8:*",
            "fd00::/8",
            "[::1]:9000",
            "ANY.port.test:*",
        ])
        .unwrap();
        let cases: &[(&str, u16, bool)] = &[
            ("example.com", 443, true),
            ("EXAMPLE.COM.", 80, true),
            ("example.com", 8080, false),
            ("www.example.com", 443, false),
            ("evilexample.com", 443, false),
            ("example.com.evil.net", 443, false),
            ("a.allowed.org", 443, true),
            ("a.b.allowed.org", 80, true),
            ("allowed.org", 443, false),
            ("evilallowed.org", 443, false),
            ("allowed.org.evil.net", 443, false),
            ("api.service.net", 8443, true),
            ("api.service.net", 443, false),
            ("127.0.0.1", 8080, true),
            ("2130706433", 8080, true),
            ("0x7f.1", 8080, true),
            ("127.0.0.1", 80, false),
            ("[::ffff:127.0.0.1]", 8080, true),
            ("10.200.3.4", 5432, true),
            ("11.0.0.1", 443, false),
            ("[fd12::1]", 443, true),
            ("[fd12::1]", 22, false),
            ("[::1]", 9000, true),
            ("any.port.test", 1, true),
        ];
        for (host, port, want) in cases {
            let h = normalize_host(host).unwrap();
            assert_eq!(list.allows(&h, *port), *want, "{host}:{port}");
        }
        assert!(list.grants_ip("10.1.2.3".parse().unwrap(), 1));
        assert!(!list.grants_ip("127.0.0.2".parse().unwrap(), 8080));
        // A name entry never grants an address.
        let names = AllowList::parse(&["localhost:*"]).unwrap();
        assert!(!names.grants_ip("127.0.0.1".parse().unwrap(), 80));
    }

    #[test]
    fn bad_entries() {
        for spec in [
            "*",
            "*.com",
            "a.*.com",
            "*example.com",
            "10.0.0.0/33",
            "example.com/8",
            "host:0",
            "host:x",
            "[::1",
            "bücher.de",
            "fe80::/129",
        ] {
            assert!(AllowEntry::parse(spec).is_err(), "{spec}");
        }
    }
}
