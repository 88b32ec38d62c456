//! `allowed_outbound_hosts`: where a function's outgoing requests may go,
//! in Spin's syntax (`scheme://host[:port]`).
//!
//! - scheme: `http`, `https`, `tcp`, `udp` (wasi:sockets) or `*` (all);
//! - host: a name (`api.example.com`), a subdomain wildcard
//!   (`*.example.com`: the subdomains, not the name itself), `*` (any
//!   public host), an IP address (`127.0.0.1`, `[::1]`) or a network
//!   (`10.0.0.0/8`);
//! - port: a number, a range (`8000..8100`, end exclusive as in Spin), or
//!   `*`; when left out, the scheme's (80, 443; `*://` needs one).
//!
//! Loopback, private, link-local and other non-public addresses are
//! reachable only when listed as an address or network: no name and no
//! wildcard reaches them, whatever the name resolves to (DNS rebinding).
//!
//! Sockets see addresses, not names: a `tcp`/`udp` entry reaches the
//! addresses its network holds (`*`: any public one), and only those peers
//! may connect to a function's listener or send to its UDP socket (others
//! are dropped before the guest sees them). Binding and listening need an
//! entry of the protocol, on any address the machine lets it bind.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Entries one function may list.
pub const OUTBOUND_HOSTS_MAX: usize = 64;
/// Longest entry: a host name is at most 253 bytes, plus scheme and port.
const ENTRY_BYTES_MAX: usize = 300;

/// Why an `allowed_outbound_hosts` entry is refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid allowed_outbound_hosts entry {entry:?}: {reason}")]
pub struct OutboundHostError {
    pub entry: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemePattern {
    Http,
    Https,
    Tcp,
    Udp,
    Any,
}

/// A wasi:sockets protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketProtocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Any host with a public address.
    Any,
    /// Exactly this name (lowercase, no trailing dot).
    Name(String),
    /// Any subdomain of this suffix (`*.example.com` holds `example.com`).
    Subdomains(String),
    /// Addresses in this network (a single address is a /32 or /128).
    Network { addr: IpAddr, prefix: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    Any,
    /// `start..end`, end exclusive; a single port is `p..p+1`.
    Range(u16, u32),
}

/// One parsed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    pub scheme: SchemePattern,
    pub host: HostPattern,
    pub port: PortPattern,
}

/// A parsed `allowed_outbound_hosts` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    rules: Vec<HostRule>,
    /// The entries as written, for messages.
    listed: Vec<String>,
}

impl AllowedHosts {
    /// Parses and checks every entry.
    pub fn parse(entries: &[String]) -> Result<AllowedHosts, OutboundHostError> {
        if entries.len() > OUTBOUND_HOSTS_MAX {
            return Err(OutboundHostError {
                entry: format!("({} entries)", entries.len()),
                reason: format!("at most {OUTBOUND_HOSTS_MAX} entries are allowed"),
            });
        }
        let rules = entries
            .iter()
            .map(|e| parse_rule(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowedHosts {
            rules,
            listed: entries.to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The entries as the manifest wrote them.
    pub fn listed(&self) -> &[String] {
        &self.listed
    }

    /// Whether a request to `scheme://host:port` passes the list by its
    /// name (or literal address). `https` is `true` for https.
    pub fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        let host = normalize_host(host);
        let literal = parse_ip(&host);
        self.rules.iter().any(|r| {
            r.scheme_matches(https)
                && r.port_matches(port)
                && match (&r.host, literal) {
                    // An address literal: public ones pass `*`, others
                    // only their own network (see `address_allowed`).
                    (_, Some(ip)) => r.host_holds_ip(ip, true),
                    (HostPattern::Any, None) => true,
                    (HostPattern::Name(name), None) => *name == host,
                    (HostPattern::Subdomains(suffix), None) => host
                        .strip_suffix(suffix.as_str())
                        .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                    (HostPattern::Network { .. }, None) => false,
                }
        })
    }

    /// Whether an address a name resolved to may be connected to: public
    /// addresses may (the name passed [`Self::allows`], scheme and port
    /// included); others only when an entry lists the address or its
    /// network.
    pub fn address_allowed(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.rules.iter().any(|r| r.host_holds_ip(ip, false))
    }

    /// Whether any entry grants sockets of `protocol` (and with them
    /// name lookups and the implicit bind of a client socket).
    pub fn grants_sockets(&self, protocol: SocketProtocol) -> bool {
        self.rules.iter().any(|r| r.protocol_matches(protocol))
    }

    /// Whether a socket may connect to, send to, accept or receive from the
    /// peer `ip:port`: an entry's network holds it, or `*` and it is public.
    pub fn socket_peer_allowed(&self, protocol: SocketProtocol, ip: IpAddr, port: u16) -> bool {
        let ip = canonical(ip);
        self.rules.iter().any(|r| {
            r.protocol_matches(protocol) && r.port_matches(port) && r.host_holds_ip(ip, true)
        })
    }
}

impl HostRule {
    fn scheme_matches(&self, https: bool) -> bool {
        match self.scheme {
            SchemePattern::Any => true,
            SchemePattern::Https => https,
            SchemePattern::Http => !https,
            SchemePattern::Tcp | SchemePattern::Udp => false,
        }
    }

    fn protocol_matches(&self, protocol: SocketProtocol) -> bool {
        matches!(
            (self.scheme, protocol),
            (SchemePattern::Any, _)
                | (SchemePattern::Tcp, SocketProtocol::Tcp)
                | (SchemePattern::Udp, SocketProtocol::Udp)
        )
    }

    fn port_matches(&self, port: u16) -> bool {
        match self.port {
            PortPattern::Any => true,
            PortPattern::Range(start, end) => port >= start && u32::from(port) < end,
        }
    }

    /// Whether this rule's host holds `ip`: its network does; `*` does
    /// for a public address when `wildcard_public` (a literal in the URL).
    fn host_holds_ip(&self, ip: IpAddr, wildcard_public: bool) -> bool {
        match &self.host {
            HostPattern::Network { addr, prefix } => in_network(ip, *addr, *prefix),
            HostPattern::Any => wildcard_public && is_public(ip),
            _ => false,
        }
    }
}

fn normalize_host(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => inner.to_string(),
        None => host,
    }
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    host.parse::<IpAddr>().ok().map(canonical)
}

/// An IPv4-mapped IPv6 address is its IPv4 address: `::ffff:127.0.0.1`
/// must not slip past a rule about loopback.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (canonical(ip), net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Whether `ip` is a public unicast address: not loopback, private,
/// link-local (cloud metadata lives there: 169.254.169.254), shared
/// (CGNAT), unspecified, broadcast, multicast, documentation or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => public_v6(v6),
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b // NAT64: may embed any IPv4
        || first == 0x2002 // 6to4: may embed any IPv4
        || first == 0) // IPv4-compatible and other reserved
}

fn parse_rule(entry: &str) -> Result<HostRule, OutboundHostError> {
    let err = |reason: &str| OutboundHostError {
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    if entry.len() > ENTRY_BYTES_MAX {
        return Err(err(&format!("longer than {ENTRY_BYTES_MAX} bytes")));
    }
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Err(err(
            "name a scheme: \"https://api.example.com\", \"http://127.0.0.1:8080\" or \"*://host:port\"",
        ));
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => SchemePattern::Http,
        "https" => SchemePattern::Https,
        "tcp" => SchemePattern::Tcp,
        "udp" => SchemePattern::Udp,
        "*" => SchemePattern::Any,
        other => {
            return Err(err(&format!(
                "scheme {other:?} is not supported: use http, https, tcp, udp or *"
            )));
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) && !is_network(rest) {
        return Err(err(
            "only a scheme, a host and a port: no path, query or user",
        ));
    }
    let (host, port) = split_host_port(rest).map_err(|r| err(&r))?;
    let host = parse_host(&host).map_err(|r| err(&r))?;
    let port = match port.as_deref() {
        None => match scheme {
            SchemePattern::Http => PortPattern::Range(80, 81),
            SchemePattern::Https => PortPattern::Range(443, 444),
            SchemePattern::Any | SchemePattern::Tcp | SchemePattern::Udp => {
                return Err(err(
                    "with the scheme \"*\", \"tcp\" or \"udp\", name the port (\":443\", \":*\")",
                ));
            }
        },
        Some("*") => PortPattern::Any,
        Some(p) => parse_port(p).map_err(|r| err(&r))?,
    };
    Ok(HostRule { scheme, host, port })
}

fn is_network(rest: &str) -> bool {
    // `10.0.0.0/8` or `10.0.0.0/8:80`: the one place a `/` belongs.
    let host = rest.rsplit_once(':').map_or(rest, |(h, p)| {
        if p == "*" || p.chars().all(|c| c.is_ascii_digit() || c == '.') {
            h
        } else {
            rest
        }
    });
    host.split_once('/')
        .is_some_and(|(ip, len)| ip.parse::<IpAddr>().is_ok() && len.parse::<u8>().is_ok())
}

/// `host[:port]`, where an IPv6 host is bracketed.
fn split_host_port(rest: &str) -> Result<(String, Option<String>), String> {
    if let Some(inner) = rest.strip_prefix('[') {
        let Some((host, after)) = inner.split_once(']') else {
            return Err("an IPv6 address needs its closing ']'".into());
        };
        return match after {
            "" => Ok((host.to_string(), None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host.to_string(), Some(port.to_string()))),
                None => Err(format!("unexpected {after:?} after the address")),
            },
        };
    }
    match rest.rsplit_once(':') {
        // An unbracketed IPv6 network has colons of its own.
        Some((host, port)) if !host.contains(':') => Ok((host.to_string(), Some(port.to_string()))),
        Some(_) => Err("write an IPv6 address in brackets: \"http://[::1]:8080\"".into()),
        None => Ok((rest.to_string(), None)),
    }
}

fn parse_host(host: &str) -> Result<HostPattern, String> {
    let host = host.to_ascii_lowercase();
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some((ip, len)) = host.split_once('/') {
        let addr = ip
            .parse::<IpAddr>()
            .map_err(|_| format!("{ip:?} before '/' is not an IP address"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = len
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= bits)
            .ok_or_else(|| format!("the prefix length {len:?} must be 0-{bits}"))?;
        return Ok(HostPattern::Network {
            addr: canonical(addr),
            prefix,
        });
    }
    if let Ok(addr) = host.parse::<IpAddr>() {
        let addr = canonical(addr);
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        return Ok(HostPattern::Network { addr, prefix });
    }
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(suffix) => (true, suffix),
        None => (false, host.as_str()),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{host:?} is not a host name: letters, digits, '-' and '.', a '*.' prefix for subdomains, or '*' alone"
        ));
    }
    Ok(match wildcard {
        true => HostPattern::Subdomains(name.to_string()),
        false => HostPattern::Name(name.to_string()),
    })
}

fn parse_port(port: &str) -> Result<PortPattern, String> {
    let num = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("port {p:?} is not a number from 0 to 65535"))
    };
    match port.split_once("..") {
        Some((start, end)) => {
            let (start, end) = (num(start)?, num(end)?);
            if start >= end {
                return Err(format!(
                    "the port range {start}..{end} is empty (the end is exclusive)"
                ));
            }
            Ok(PortPattern::Range(start, u32::from(end)))
        }
        None => {
            let p = num(port)?;
            Ok(PortPattern::Range(p, u32::from(p) + 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn names_schemes_and_ports_match_as_spin_reads_them() {
        let l = list(&[
            "https://api.example.com",
            "http://*.internal.test:8000..8002",
            "*://any.test:*",
        ]);
        assert!(l.allows(true, "api.example.com", 443));
        assert!(l.allows(true, "API.Example.com.", 443));
        assert!(!l.allows(false, "api.example.com", 80));
        assert!(!l.allows(true, "api.example.com", 8443));
        assert!(!l.allows(true, "evil-api.example.com", 443));
        assert!(l.allows(false, "a.internal.test", 8001));
        assert!(!l.allows(false, "a.internal.test", 8002));
        assert!(!l.allows(false, "internal.test", 8000));
        assert!(!l.allows(false, "ainternal.test", 8000));
        assert!(l.allows(false, "any.test", 1));
        assert!(l.allows(true, "any.test", 65535));
    }

    #[test]
    fn non_public_addresses_need_an_entry_of_their_own() {
        let l = list(&["*://*:*"]);
        assert!(l.allows(true, "example.com", 443));
        assert!(l.allows(true, "93.184.216.34", 443));
        for ip in [
            "127.0.0.1",
            "[::1]",
            "10.1.2.3",
            "169.254.169.254",
            "[::ffff:127.0.0.1]",
            "0.0.0.0",
            "[fd00::1]",
            "100.64.0.1",
        ] {
            assert!(!l.allows(false, ip, 80), "{ip}");
        }
        let resolved: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!l.address_allowed(resolved));
        assert!(l.address_allowed("93.184.216.34".parse().unwrap()));

        let l = list(&[
            "http://127.0.0.1:*",
            "http://10.0.0.0/8:80",
            "http://[::1]:8080",
        ]);
        assert!(l.allows(false, "127.0.0.1", 9000));
        assert!(!l.allows(true, "127.0.0.1", 9000));
        assert!(l.allows(false, "10.9.9.9", 80));
        assert!(l.allows(false, "[::1]", 8080));
        assert!(l.address_allowed(resolved));
        assert!(l.address_allowed("::ffff:127.0.0.1".parse().unwrap()));
        assert!(l.address_allowed("10.0.0.1".parse().unwrap()));
        assert!(!l.address_allowed("192.168.0.1".parse().unwrap()));
        // A name is not an address: `localhost` is not listed.
        assert!(!l.allows(false, "localhost", 9000));
    }

    #[test]
    fn sockets_reach_listed_networks_only() {
        use SocketProtocol::{Tcp, Udp};
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let l = list(&["tcp://127.0.0.1:*", "udp://10.0.0.0/8:53", "tcp://*:443"]);
        assert!(l.grants_sockets(Tcp) && l.grants_sockets(Udp));
        assert!(l.socket_peer_allowed(Tcp, ip("127.0.0.1"), 9000));
        assert!(l.socket_peer_allowed(Tcp, ip("::ffff:127.0.0.1"), 9000));
        assert!(!l.socket_peer_allowed(Udp, ip("127.0.0.1"), 9000));
        assert!(l.socket_peer_allowed(Udp, ip("10.1.2.3"), 53));
        assert!(!l.socket_peer_allowed(Udp, ip("10.1.2.3"), 54));
        assert!(l.socket_peer_allowed(Tcp, ip("93.184.216.34"), 443));
        assert!(!l.socket_peer_allowed(Tcp, ip("192.168.1.1"), 443));
        // http entries grant no sockets, socket entries no http.
        let h = list(&["http://127.0.0.1:*"]);
        assert!(!h.grants_sockets(Tcp));
        assert!(!h.socket_peer_allowed(Tcp, ip("127.0.0.1"), 80));
        assert!(!l.allows(false, "127.0.0.1", 80));
        assert!(list(&["*://127.0.0.1:*"]).socket_peer_allowed(Udp, ip("127.0.0.1"), 1));
    }

    #[test]
    fn bad_entries_say_what_to_write() {
        for (entry, says) in [
            ("api.example.com", "name a scheme"),
            ("ftp://example.com", "not supported"),
            ("https://example.com/path", "no path"),
            ("*://example.com", "name the port"),
            ("http://example.com:99999", "0 to 65535"),
            ("http://example.com:80..80", "empty"),
            ("http://exa mple.com", "not a host name"),
            ("http://10.0.0.0/33", "prefix length"),
            ("http://::1:80", "brackets"),
            ("https://", "empty"),
        ] {
            let e = AllowedHosts::parse(&[entry.to_string()]).unwrap_err();
            assert!(e.to_string().contains(says), "{entry}: {e}");
        }
        assert!(AllowedHosts::parse(&["https://example.com/".to_string()]).is_ok());
    }
}
