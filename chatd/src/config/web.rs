//! The web listener's keys (`http`, `http_host`, `http_port`,
//! `allowed_origins`, `trusted_proxies`): their parsed forms and checks.
//! Kept apart from the chat port's keys because they are lists of
//! addresses and origins, not numbers with ranges.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// How the web listener (PROTOCOL.md §1, "WebSocket transport") runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSettings {
    /// `http`: whether chatd serves the web client, `/ws`, `/metrics` and
    /// the health checks at all.
    pub enabled: bool,
    /// `http_host`: the address to listen on; `host` unless given.
    pub host: String,
    /// `http_port`: 0 picks a free port.
    pub port: u16,
    /// `allowed_origins`: pages on other origins that may open `/ws`
    /// besides the server's own, normalised (`https://chat.example.org`).
    pub allowed_origins: Vec<String>,
    /// `trusted_proxies`: peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
}

/// The web port's default: CHAT/1's 4119 plus 61, clear of common ports.
pub const DEFAULT_HTTP_PORT: u16 = 4180;

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            enabled: true,
            host: "127.0.0.1".into(),
            port: DEFAULT_HTTP_PORT,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// An IP address or a CIDR block (`10.0.0.0/8`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a `trusted_proxies` entry or an `allowed_origins` entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadEntry(pub String);

impl IpNet {
    /// Whether `ip` is inside the block. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`) count as the IPv4 address they carry, as the
    /// connection limits count them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = BadEntry;

    fn from_str(s: &str) -> Result<IpNet, BadEntry> {
        let bad = |why: &str| BadEntry(format!("{s:?}: {why}"));
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IP address or CIDR block"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(bad(&format!("the prefix length must be 0 to {max}"))),
            },
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An `allowed_origins` entry in the form browsers send in `Origin`:
/// `http` or `https`, a host, an optional port, nothing else; lower-cased
/// so that comparison is exact.
pub fn normalize_origin(s: &str) -> Result<String, BadEntry> {
    let bad = |why: &str| BadEntry(format!("{s:?}: {why}"));
    let lower = s.trim().trim_end_matches('/').to_ascii_lowercase();
    let Some((scheme, authority)) = lower.split_once("://") else {
        return Err(bad("must look like https://chat.example.org"));
    };
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    if authority.is_empty()
        || authority
            .chars()
            .any(|c| matches!(c, '/' | '?' | '#' | '@' | ' ') || c.is_control())
    {
        return Err(bad("must be a scheme and a host[:port], without a path"));
    }
    Ok(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_contain_their_addresses() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "example.org", "10.0.0.1/x", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_are_normalised_and_checked() {
        assert_eq!(
            normalize_origin("HTTPS://Chat.Example.org/").unwrap(),
            "https://chat.example.org"
        );
        assert_eq!(
            normalize_origin("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "chat.example.org",
            "ftp://x",
            "https://x/path",
            "https://",
            "https://u@x",
        ] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }
}
