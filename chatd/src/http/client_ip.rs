//! The client address of a web request, for the connection limits and the
//! login lockout: the TCP peer's, unless the peer is a trusted proxy; then
//! the rightmost `X-Forwarded-For` entry that is not itself a trusted
//! proxy. Entries left of it were written by the client and prove nothing.

use std::net::IpAddr;

use axum::http::HeaderMap;

use crate::config::IpNet;

/// The address limits and lockout count for a request from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return peer;
    }
    // Every X-Forwarded-For header, in order, is one list.
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_entry(entry) else {
            // Our proxy wrote something we cannot read: count the proxy,
            // not a guess.
            tracing::debug!(%peer, entry, "unreadable X-Forwarded-For entry");
            return peer;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = entry.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_trusted_proxies_are_believed() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        let h = xff(&["6.6.6.6, 1.2.3.4"]);
        // An untrusted peer's header is ignored.
        assert_eq!(client_ip(ip("5.5.5.5"), &h, &trusted), ip("5.5.5.5"));
        // A trusted peer: the rightmost entry it appended.
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("1.2.3.4"));
        // Chains of trusted proxies are skipped, right to left; what the
        // client wrote itself (6.6.6.6) is never reached.
        let h = xff(&["6.6.6.6, 1.2.3.4", "10.0.0.7"]);
        assert_eq!(client_ip(ip("::1"), &h, &trusted), ip("1.2.3.4"));
        // No header: the peer.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &xff(&[]), &trusted),
            ip("10.0.0.2")
        );
        // Ports and brackets are accepted; garbage counts the proxy.
        let h = xff(&["[2001:db8::1]:443"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("2001:db8::1"));
        let h = xff(&["1.2.3.4:80"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("1.2.3.4"));
        let h = xff(&["1.2.3.4, unknown"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("10.0.0.2"));
        // Everything trusted: the leftmost.
        let h = xff(&["10.1.1.1, 10.2.2.2"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &trusted), ip("10.1.1.1"));
    }
}
