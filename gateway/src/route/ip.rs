//! Address sets for route `remote_addrs` and the `ipmatch` operator: plain IPv4/IPv6 addresses
//! and CIDRs, as APISIX's ipmatcher takes them.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: u128,
    /// Leading bits that must match; counted in the address family's width.
    mask: u128,
    v4: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    nets: Box<[Net]>,
}

impl IpSet {
    /// Every entry parsed, or the first that is not an address or CIDR.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<IpSet, &'a str> {
        let mut nets = Vec::new();
        for entry in entries {
            nets.push(parse_net(entry).ok_or(entry)?);
        }
        Ok(IpSet { nets: nets.into() })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`, from a dual-stack listener) counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (addr, v4) = bits(ip.to_canonical());
        self.nets
            .iter()
            .any(|n| n.v4 == v4 && addr & n.mask == n.addr)
    }
}

fn bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), true),
        IpAddr::V6(v6) => (u128::from(v6), false),
    }
}

fn parse_net(entry: &str) -> Option<Net> {
    let (addr, len) = match entry.split_once('/') {
        Some((addr, len)) => {
            if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (addr, Some(len.parse::<u32>().ok()?))
        }
        None => (entry, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let (addr, v4) = bits(ip);
    let width = if v4 { 32 } else { 128 };
    let len = len.unwrap_or(width);
    if len > width {
        return None;
    }
    let all = if v4 { u128::from(u32::MAX) } else { u128::MAX };
    let mask = if len == 0 {
        0
    } else {
        (all >> (width - len)) << (width - len)
    };
    Some(Net {
        addr: addr & mask,
        mask,
        v4,
    })
}
