//! An IP network (`10.0.0.0/8`, `2001:db8::/32`) or a single address (`::1`, taken as a /32 or
//! /128), for the `http.trusted_proxies` list.
//!
//! Invariant: the stored address has no bits set beyond the prefix, so two spellings of one
//! network compare equal and `contains` is a single masked comparison. An IPv4-mapped IPv6
//! peer (`::ffff:10.0.0.1`, as a dual-stack listener reports IPv4 clients) matches IPv4
//! networks.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

fn mask(bits: u32, prefix: u8) -> u128 {
    // Masks over the low `bits` bits of a u128, so one function serves v4 and v6.
    let prefix = u32::from(prefix).min(bits);
    if prefix == 0 {
        0
    } else {
        let all = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
        all & !((1u128 << (bits - prefix)) - 1)
    }
}

fn bits_of(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// Unmaps `::ffff:a.b.c.d` so an IPv4 client seen through a dual-stack socket is an IPv4 one.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let (net, bits) = bits_of(self.addr);
        let (x, xbits) = bits_of(ip);
        bits == xbits && x & mask(bits, self.prefix) == net
    }
}

/// Whether `ip` is in any of `nets`.
pub fn any_contains(nets: &[Cidr], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR (10.0.0.0/8, ::1)"))?;
        let addr = canonical(addr);
        let (raw, bits) = bits_of(addr);
        let prefix = match prefix {
            None => bits as u8,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if u32::from(n) <= bits => n,
                _ => return Err(format!("`{s}`: prefix length must be 0..={bits}")),
            },
        };
        let net = raw & mask(bits, prefix);
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4((net as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(net.into()),
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect(s)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect(s)
    }

    #[test]
    fn v4_networks_and_single_addresses() {
        let n = c("10.0.0.0/8");
        assert!(n.contains(ip("10.255.1.2")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(c("192.168.1.7").contains(ip("192.168.1.7")));
        assert!(!c("192.168.1.7").contains(ip("192.168.1.8")));
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(
            !c("0.0.0.0/0").contains(ip("::1")),
            "a v4 network never holds a v6 address"
        );
        // Host bits are cleared: both spellings are the same network.
        assert_eq!(c("10.1.2.3/8"), n);
        assert_eq!(c("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert!(c("10.0.0.0/31").contains(ip("10.0.0.1")));
        assert!(!c("10.0.0.0/31").contains(ip("10.0.0.2")));
    }

    #[test]
    fn v6_networks_and_mapped_v4() {
        assert!(c("::1").contains(ip("::1")));
        assert!(!c("::1").contains(ip("::2")));
        let n = c("2001:db8::/32");
        assert!(n.contains(ip("2001:db8:ffff::1")));
        assert!(!n.contains(ip("2001:db9::1")));
        assert!(c("::/0").contains(ip("fe80::1")));
        assert!(c("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert_eq!(c("::ffff:10.0.0.1"), c("10.0.0.1"));
    }

    #[test]
    fn rejects_what_is_not_a_network() {
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "example.com",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
