//! Host-based routing: with a base domain configured (`[http] base_domain`),
//! a request for `<tenant>.<base_domain>` is that tenant's, by its plain path,
//! so every tenant's functions are served from an origin of their own and a
//! browser keeps their cookies (and storage) apart. Other hosts, the bare
//! base domain among them, keep path routing (`/~tenant/…`, one origin for
//! all). [`crate::invoke`] asks this module which tenant a `Host` names; the
//! server config (`updraft::config`) validates the domain through
//! [`BaseDomain::parse`].

use http::{HeaderMap, HeaderValue, Uri, header};

/// Longest base domain: a DNS name is at most 253 characters, and a
/// tenant's label (up to 63) and its dot must still fit in front of it.
pub const BASE_DOMAIN_LEN_MAX: usize = 253 - 64;
/// Longest DNS label.
const LABEL_LEN_MAX: usize = 63;

/// Why a base domain was refused; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BaseDomainError {
    #[error("give a domain name, like functions.example")]
    Empty,
    #[error(
        "give the bare domain, like functions.example: no scheme, port, path or `*.` \
         (tenants are served on its subdomains by themselves)"
    )]
    NotBare,
    #[error(
        "a base domain is at most {BASE_DOMAIN_LEN_MAX} characters, to leave room for a tenant's name"
    )]
    TooLong,
    #[error(
        "{0:?} is not a DNS label: use 1-63 letters, digits or '-', not starting or ending with '-'"
    )]
    BadLabel(String),
    #[error(
        "an IP address has no subdomains: give a domain name whose subdomains reach this server"
    )]
    IpAddress,
}

/// The domain whose subdomains name tenants: lowercase, without a trailing
/// dot, a valid DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseDomain(String);

impl BaseDomain {
    pub fn parse(text: &str) -> Result<BaseDomain, BaseDomainError> {
        let name = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err(BaseDomainError::Empty);
        }
        if name.contains(['/', ':', '*', '@', '?', '#', ' ']) {
            return Err(BaseDomainError::NotBare);
        }
        if name.len() > BASE_DOMAIN_LEN_MAX {
            return Err(BaseDomainError::TooLong);
        }
        for label in name.split('.') {
            let valid = (1..=LABEL_LEN_MAX).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return Err(BaseDomainError::BadLabel(label.to_string()));
            }
        }
        // A top-level label is never all digits, so this is an IPv4 address.
        if name
            .rsplit('.')
            .next()
            .is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(BaseDomainError::IpAddress);
        }
        Ok(BaseDomain(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What `host` (a `Host` header's value: any case, maybe a port or a
    /// trailing dot) names under this base domain.
    pub(crate) fn classify<'h>(&self, host: &'h str) -> HostKind<'h> {
        let name = strip_port(host).trim_end_matches('.');
        if name.eq_ignore_ascii_case(&self.0) {
            return HostKind::Base;
        }
        let Some(split) = name.len().checked_sub(self.0.len() + 1) else {
            return HostKind::Other;
        };
        match (name.get(..split), name.get(split..)) {
            (Some(label), Some(rest))
                if rest.starts_with('.') && rest[1..].eq_ignore_ascii_case(&self.0) =>
            {
                HostKind::Tenant(label)
            }
            _ => HostKind::Other,
        }
    }
}

impl std::fmt::Display for BaseDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a request's host puts it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostKind<'h> {
    /// `<label>.<base_domain>`: the label (as sent: compare it lowercased)
    /// names the tenant, which may not exist.
    Tenant(&'h str),
    /// The base domain itself: path routing.
    Base,
    /// Any other host (an address, `localhost`): path routing.
    Other,
}

/// The request's host: the URI's authority (HTTP/2, absolute-form
/// requests, where it wins over `Host`), else the `Host` header.
pub(crate) fn request_host<'r>(uri: &'r Uri, headers: &'r HeaderMap) -> Option<&'r str> {
    uri.host()
        .or_else(|| headers.get(header::HOST)?.to_str().ok())
}

/// `host` without its `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Makes every cookie of a function's response host-only: a `Domain`
/// attribute would let a tenant set cookies on the base domain, which the
/// browser then sends to every other tenant's host (cookie tossing).
pub(crate) fn host_only_cookies(headers: &mut HeaderMap) {
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    if !cookies.iter().any(|c| has_domain(c.as_bytes())) {
        return;
    }
    headers.remove(header::SET_COOKIE);
    for cookie in cookies {
        let kept: Vec<&[u8]> = cookie
            .as_bytes()
            .split(|&b| b == b';')
            .enumerate()
            .filter(|(i, part)| *i == 0 || !is_domain_attribute(part))
            .map(|(_, part)| part)
            .collect();
        // The parts came from a valid header value and lost only whole
        // attributes, so this cannot fail; a cookie that did is dropped.
        if let Ok(value) = HeaderValue::from_bytes(&kept.join(&b';')) {
            headers.append(header::SET_COOKIE, value);
        }
    }
}

fn has_domain(cookie: &[u8]) -> bool {
    cookie
        .split(|&b| b == b';')
        .skip(1)
        .any(is_domain_attribute)
}

fn is_domain_attribute(part: &[u8]) -> bool {
    let name = part.split(|&b| b == b'=').next().unwrap_or_default();
    name.trim_ascii().eq_ignore_ascii_case(b"domain")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn base_domains_are_validated() {
        let ok = BaseDomain::parse("Functions.Example.").unwrap();
        assert_eq!(ok.as_str(), "functions.example");
        assert_eq!(
            BaseDomain::parse("localhost").unwrap().as_str(),
            "localhost"
        );
        for (bad, expected) in [
            ("", BaseDomainError::Empty),
            ("https://functions.example", BaseDomainError::NotBare),
            ("*.functions.example", BaseDomainError::NotBare),
            ("functions.example:8080", BaseDomainError::NotBare),
            ("functions.example/x", BaseDomainError::NotBare),
            ("fn_s.example", BaseDomainError::BadLabel("fn_s".into())),
            ("a..example", BaseDomainError::BadLabel(String::new())),
            ("-a.example", BaseDomainError::BadLabel("-a".into())),
            ("127.0.0.1", BaseDomainError::IpAddress),
        ] {
            assert_eq!(BaseDomain::parse(bad), Err(expected), "{bad}");
        }
        let long = format!("{}.example", "a.".repeat(100));
        assert_eq!(BaseDomain::parse(&long), Err(BaseDomainError::TooLong));
    }

    #[test]
    fn hosts_are_classified_whatever_their_case_and_port() {
        let base = BaseDomain::parse("functions.example").unwrap();
        for (host, kind) in [
            ("acme.functions.example", HostKind::Tenant("acme")),
            ("ACME.Functions.Example:8080", HostKind::Tenant("ACME")),
            ("acme.functions.example.", HostKind::Tenant("acme")),
            ("a.b.functions.example", HostKind::Tenant("a.b")),
            ("functions.example", HostKind::Base),
            ("FUNCTIONS.EXAMPLE:443", HostKind::Base),
            ("xfunctions.example", HostKind::Other),
            ("functions.example.evil", HostKind::Other),
            (".functions.example", HostKind::Tenant("")),
            ("127.0.0.1:8080", HostKind::Other),
            ("[::1]:8080", HostKind::Other),
            ("localhost", HostKind::Other),
        ] {
            assert_eq!(base.classify(host), kind, "{host}");
        }
    }

    #[test]
    fn a_cookie_loses_its_domain_and_nothing_else() {
        let mut headers = HeaderMap::new();
        for value in [
            "a=1; Path=/; Domain=functions.example; HttpOnly",
            "b=2; path=/",
            "c=3;domain=.functions.example",
        ] {
            headers.append(header::SET_COOKIE, HeaderValue::from_static(value));
        }
        host_only_cookies(&mut headers);
        let seen: Vec<_> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(seen, ["a=1; Path=/; HttpOnly", "b=2; path=/", "c=3"]);
    }
}
