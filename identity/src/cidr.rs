//! CIDR label keys (`cidr:10.0.0.0/8`, `cidr:fd00::/64`; Cilium also writes
//! IPv6 with `-` for `:`, which is accepted).

use std::net::IpAddr;

/// Parses and checks a CIDR label key, returning the network and prefix length.
pub fn parse_cidr_label_key(key: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = key
        .split_once('/')
        .ok_or_else(|| format!("{key:?} is not a CIDR (want address/prefix-length)"))?;
    let addr: IpAddr = addr
        .parse()
        .or_else(|_| addr.replace('-', ":").parse())
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{len:?} is not a prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("prefix length {len} is larger than {max}"));
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6() {
        assert_eq!(parse_cidr_label_key("10.0.0.0/8").unwrap().1, 8);
        assert_eq!(parse_cidr_label_key("fd00::/64").unwrap().1, 64);
        assert_eq!(parse_cidr_label_key("fd00--/64").unwrap().1, 64);
        assert!(parse_cidr_label_key("10.0.0.0").is_err());
        assert!(parse_cidr_label_key("10.0.0.0/33").is_err());
        assert!(parse_cidr_label_key("fd00::/129").is_err());
        assert!(parse_cidr_label_key("x/8").is_err());
    }
}
