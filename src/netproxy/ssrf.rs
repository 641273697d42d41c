//! The SSRF guard: which addresses a task may never reach unless the
//! allow-list names them, and name resolution that hands back only checked
//! addresses. Callers connect to the [`SocketAddr`]s returned here and never
//! resolve the name again, so a DNS answer cannot change between the check
//! and the connect (DNS rebinding).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;

use super::hosts::{cidr_contains, AllowList, Host};

/// Why an address is not a public unicast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    Public,
    Loopback,
    /// RFC 1918.
    Private,
    /// 100.64.0.0/10.
    SharedCgnat,
    /// fc00::/7.
    UniqueLocal,
    /// 169.254.0.0/16 (cloud metadata lives here) and fe80::/10.
    LinkLocal,
    Multicast,
    /// 0.0.0.0, ::.
    Unspecified,
    /// 0.0.0.0/8: "this network".
    ThisNetwork,
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32.
    Documentation,
    /// 198.18.0.0/15 (also the sandbox's own transparent-mode pool).
    Benchmarking,
    /// 240.0.0.0/4, 192.0.0.0/24 and other special-purpose blocks.
    Reserved,
}

impl AddrClass {
    pub fn is_public(self) -> bool {
        self == AddrClass::Public
    }

    /// Words for the flow log.
    pub fn describe(self) -> &'static str {
        match self {
            AddrClass::Public => "public address",
            AddrClass::Loopback => "loopback address",
            AddrClass::Private => "private network address (RFC 1918)",
            AddrClass::SharedCgnat => "carrier-grade NAT address (100.64.0.0/10)",
            AddrClass::UniqueLocal => "unique-local IPv6 address (fc00::/7)",
            AddrClass::LinkLocal => "link-local address (includes cloud metadata 169.254.169.254)",
            AddrClass::Multicast => "multicast address",
            AddrClass::Unspecified => "unspecified address",
            AddrClass::ThisNetwork => "\"this network\" address (0.0.0.0/8)",
            AddrClass::Broadcast => "broadcast address",
            AddrClass::Documentation => "documentation address",
            AddrClass::Benchmarking => "benchmarking address (198.18.0.0/15)",
            AddrClass::Reserved => "reserved address",
        }
    }
}

/// Classifies one address. IPv6 forms that embed an IPv4 address
/// (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`) are classified by the embedded address
/// so that `[::ffff:127.0.0.1]` is loopback.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

fn classify_v4(a: Ipv4Addr) -> AddrClass {
    let o = a.octets();
    let v = u32::from(a);
    let net = |base: [u8; 4], len: u8| {
        cidr_contains(IpAddr::V4(Ipv4Addr::from(base)), len, IpAddr::V4(a))
    };
    if v == 0 {
        AddrClass::Unspecified
    } else if o[0] == 0 {
        AddrClass::ThisNetwork
    } else if o[0] == 127 {
        AddrClass::Loopback
    } else if o[0] == 10 || net([172, 16, 0, 0], 12) || net([192, 168, 0, 0], 16) {
        AddrClass::Private
    } else if net([100, 64, 0, 0], 10) {
        AddrClass::SharedCgnat
    } else if net([169, 254, 0, 0], 16) {
        AddrClass::LinkLocal
    } else if v == u32::MAX {
        AddrClass::Broadcast
    } else if net([224, 0, 0, 0], 4) {
        AddrClass::Multicast
    } else if net([192, 0, 2, 0], 24) || net([198, 51, 100, 0], 24) || net([203, 0, 113, 0], 24) {
        AddrClass::Documentation
    } else if net([198, 18, 0, 0], 15) {
        AddrClass::Benchmarking
    } else if net([240, 0, 0, 0], 4) || net([192, 0, 0, 0], 24) || net([192, 88, 99, 0], 24) {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

fn classify_v6(a: Ipv6Addr) -> AddrClass {
    let s = a.segments();
    let v = u128::from(a);
    if a.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if a.is_loopback() {
        return AddrClass::Loopback;
    }
    if let Some(v4) = a.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    // IPv4-compatible (deprecated), ::a.b.c.d.
    if v >> 32 == 0 {
        return classify_v4(Ipv4Addr::from(v as u32));
    }
    // NAT64 well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48.
    if v >> 32 == 0x0064_ff9b_0000_0000_0000_0000 || s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return classify_v4(Ipv4Addr::from(v as u32));
    }
    // 6to4 embeds the IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        let inner = classify_v4(Ipv4Addr::from(((v >> 80) & 0xffff_ffff) as u32));
        if !inner.is_public() {
            return inner;
        }
    }
    if s[0] & 0xfe00 == 0xfc00 {
        AddrClass::UniqueLocal
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddrClass::LinkLocal
    } else if s[0] & 0xffc0 == 0xfec0 {
        // Deprecated site-local: private in practice.
        AddrClass::UniqueLocal
    } else if s[0] & 0xff00 == 0xff00 {
        AddrClass::Multicast
    } else if s[0] == 0x2001 && s[1] == 0x0db8 || s[0] == 0x3fff && s[1] & 0xf000 == 0 {
        AddrClass::Documentation
    } else if s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0 {
        // 100::/64 discard-only.
        AddrClass::Reserved
    } else if s[0] == 0x2001 && s[1] < 0x0200 {
        // 2001::/23 IETF protocol assignments (Teredo, benchmarking, ORCHID…).
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

/// Whether connecting to `addr` is allowed: public addresses always, the
/// others only when an IP or CIDR entry of the allow-list names them for
/// this port. On refusal, the reason.
pub fn check_addr(addr: SocketAddr, allow: &AllowList) -> Result<(), String> {
    let class = classify(addr.ip());
    if class.is_public() || allow.grants_ip(addr.ip(), addr.port()) {
        Ok(())
    } else {
        Err(format!(
            "{} is a {}; only an explicit --allow-host with that IP or network permits it",
            addr.ip(),
            class.describe()
        ))
    }
}

/// The boxed future a [`Resolver`] returns (dyn-compatible async).
pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;

/// Turns a host name into addresses. The system resolver is the only
/// production implementation; tests inject fakes (DNS rebinding).
pub trait Resolver: Send + Sync {
    fn lookup<'a>(&'a self, name: &'a str, port: u16) -> LookupFuture<'a>;
}

/// The host's resolver (`getaddrinfo` through tokio's blocking pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup<'a>(&'a self, name: &'a str, port: u16) -> LookupFuture<'a> {
        Box::pin(async move { Ok(tokio::net::lookup_host((name, port)).await?.collect()) })
    }
}

/// The result of [`resolve_checked`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Addresses that passed the guard, in the resolver's order.
    Ok(Vec<SocketAddr>),
    /// The name did not resolve.
    Failed(String),
    /// Every address was refused; the reason names the first.
    Refused(String),
}

/// Resolves `host:port` (an IP literal needs no lookup) and keeps only the
/// addresses the guard allows. When a name resolves to a mix, the refused
/// ones are dropped: a rebinding answer that adds a private address never
/// leads to a connection to it.
pub async fn resolve_checked(
    resolver: &dyn Resolver,
    host: &Host,
    port: u16,
    allow: &AllowList,
) -> Resolved {
    let addrs = match host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Name(name) => match resolver.lookup(name, port).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => return Resolved::Failed(format!("{name} has no addresses")),
            Err(e) => return Resolved::Failed(format!("{name} cannot be resolved: {e}")),
        },
    };
    let mut good = Vec::new();
    let mut first_refusal = None;
    for a in addrs {
        // The port of the request, whatever the resolver put there.
        let a = SocketAddr::new(a.ip(), port);
        match check_addr(a, allow) {
            Ok(()) => {
                if !good.contains(&a) {
                    good.push(a)
                }
            }
            Err(why) => {
                first_refusal.get_or_insert(why);
            }
        }
    }
    match (good.is_empty(), first_refusal) {
        (false, _) => Resolved::Ok(good),
        (true, Some(why)) => Resolved::Refused(why),
        (true, None) => Resolved::Failed(format!("{host} has no addresses")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> AddrClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classification_table() {
        use AddrClass::*;
        let table = [
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", Public),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("100.128.0.1", Public),
            ("169.254.169.254", LinkLocal),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", ThisNetwork),
            ("255.255.255.255", Broadcast),
            ("192.0.2.1", Documentation),
            ("198.51.100.1", Documentation),
            ("203.0.113.9", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("198.20.0.1", Public),
            ("240.0.0.1", Reserved),
            ("::", Unspecified),
            ("::1", Loopback),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.1.1", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::127.0.0.1", Loopback),
            ("::ffff:8.8.8.8", Public),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("2002:7f00:1::1", Loopback),
            ("2002:0808:0808::1", Public),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("2606:4700::1111", Public),
            ("2a00:1450:4001::200e", Public),
        ];
        for (a, want) in table {
            assert_eq!(c(a), want, "{a}");
        }
    }

    #[test]
    fn explicit_grants_open_only_what_they_name() {
        let allow = AllowList::parse(&["127.0.0.1:8080", "10.0.0.0/8:*"]).unwrap();
        assert!(check_addr("127.0.0.1:8080".parse().unwrap(), &allow).is_ok());
        assert!(check_addr("[::ffff:127.0.0.1]:8080".parse().unwrap(), &allow).is_ok());
        assert!(check_addr("127.0.0.1:8081".parse().unwrap(), &allow).is_err());
        assert!(check_addr("127.0.0.2:8080".parse().unwrap(), &allow).is_err());
        assert!(check_addr("10.9.9.9:22".parse().unwrap(), &allow).is_ok());
        assert!(check_addr("169.254.169.254:80".parse().unwrap(), &allow).is_err());
        assert!(check_addr("93.184.216.34:443".parse().unwrap(), &AllowList::default()).is_ok());
    }

    struct Fake(Vec<IpAddr>);
    impl Resolver for Fake {
        fn lookup<'a>(&'a self, _name: &'a str, port: u16) -> LookupFuture<'a> {
            let v = self.0.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
            Box::pin(async move { Ok(v) })
        }
    }

    #[tokio::test]
    async fn rebinding_to_private_is_refused_and_dropped() {
        let host = Host::Name("rebind.example".into());
        let none = AllowList::default();
        let r = resolve_checked(&Fake(vec!["127.0.0.1".parse().unwrap()]), &host, 443, &none).await;
        assert!(
            matches!(r, Resolved::Refused(ref w) if w.contains("loopback")),
            "{r:?}"
        );
        let mixed = Fake(vec![
            "169.254.169.254".parse().unwrap(),
            "93.184.216.34".parse().unwrap(),
        ]);
        let r = resolve_checked(&mixed, &host, 443, &none).await;
        assert_eq!(r, Resolved::Ok(vec!["93.184.216.34:443".parse().unwrap()]));
        let r = resolve_checked(&Fake(vec![]), &host, 443, &none).await;
        assert!(matches!(r, Resolved::Failed(_)));
    }
}
