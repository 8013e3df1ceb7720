//! `HOST:PORT` addresses, as given on the command line and written in configs.
//!
//! The host is an IP literal (IPv6 in brackets: `[::1]:4433`) or a DNS name; the port is a
//! number. A name is kept as written (it is resolved by whoever connects or binds), so the same
//! type serves listen addresses and remote addresses.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A validated `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    host: String,
    port: u16,
}

/// Why a `HOST:PORT` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid HOST:PORT {input:?}: {why}")]
pub struct HostPortError {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl HostPort {
    /// Parse `host:port` or `[v6]:port`. Port 0 is accepted here (a listener may ask the OS
    /// for a port); a remote address should be checked with [`HostPort::require_port`].
    pub fn parse(s: &str) -> Result<Self, HostPortError> {
        let err = |why| HostPortError {
            input: s.to_owned(),
            why,
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once("]:").ok_or(err("expected [IPv6]:PORT"))?;
            let ip: std::net::Ipv6Addr = h.parse().map_err(|_| err("not an IPv6 address"))?;
            (ip.to_string(), p)
        } else {
            let (h, p) = s
                .rsplit_once(':')
                .ok_or(err("expected HOST:PORT, e.g. 127.0.0.1:4433"))?;
            if h.contains(':') {
                return Err(err("write an IPv6 host in brackets, e.g. [::1]:4433"));
            }
            (h.to_owned(), p)
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("the port is not a number"));
        }
        let port: u16 = port
            .parse()
            .map_err(|_| err("the port is larger than 65535"))?;
        if host.is_empty() {
            return Err(err("the host is empty"));
        }
        if host.parse::<IpAddr>().is_err() && !is_dns_name(&host) {
            return Err(err("the host is neither an IP address nor a DNS name"));
        }
        Ok(HostPort {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Refuse port 0 (for addresses something connects to).
    pub fn require_port(self) -> Result<Self, HostPortError> {
        if self.port == 0 {
            Err(HostPortError {
                input: self.to_string(),
                why: "port 0 is not a real port",
            })
        } else {
            Ok(self)
        }
    }

    /// The host as written (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// The address as a socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// True for `127.0.0.0/8`, `::1` and `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self.ip() {
            Some(ip) => ip.is_loopback(),
            None => self.host == "localhost",
        }
    }

    /// True for `0.0.0.0` and `::` (listen on every interface; names no host).
    pub fn is_unspecified(&self) -> bool {
        self.ip().is_some_and(|ip| ip.is_unspecified())
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens.
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // An all-numeric last label would be a mistyped IP address.
        && !s.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = HostPortError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPort::parse(s)
    }
}

impl TryFrom<String> for HostPort {
    type Error = HostPortError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        HostPort::parse(&s)
    }
}

impl From<HostPort> for String {
    fn from(h: HostPort) -> String {
        h.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (s, host, port) in [
            ("127.0.0.1:4433", "127.0.0.1", 4433),
            ("[::1]:8443", "::1", 8443),
            ("Hub.Kerbside.example:443", "hub.kerbside.example", 443),
            ("localhost:0", "localhost", 0),
        ] {
            let h = HostPort::parse(s).unwrap();
            assert_eq!((h.host(), h.port()), (host, port), "{s}");
            assert_eq!(HostPort::parse(&h.to_string()).unwrap(), h);
        }
        assert!(HostPort::parse("[::1]:1").unwrap().is_loopback());
        assert!(HostPort::parse("0.0.0.0:1").unwrap().is_unspecified());
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "",
            "4433",
            "host",
            ":4433",
            "host:",
            "host:x",
            "host:70000",
            "::1:4433",
            "[::1]4433",
            "a b:1",
            "-a:1",
            "1.2.3:1",
            "1.2.3.4.5:1",
            "[zz]:1",
        ] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
        assert!(HostPort::parse("h:0").unwrap().require_port().is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics_and_round_trips(s in "\\PC{0,40}") {
            if let Ok(h) = HostPort::parse(&s) {
                proptest::prop_assert_eq!(HostPort::parse(&h.to_string()).unwrap(), h);
            }
        }
    }
}
