//! The IPsec key file, in Cilium's format: one key per line,
//! `SPI[+] ALGORITHM HEX-KEY ICV-BITS` (`3+ rfc4106(gcm(aes)) 0123…cdef 128`),
//! mounted from a Secret in Kubernetes mode. SPI 1–15 (it travels in the
//! packet mark, 4 bits); `+` derives a key per node pair from the global
//! one ([`derive_pair_key`]), so one node's state does not decrypt another
//! pair's traffic. The last line is the key in use; earlier lines are keys
//! still accepted during a rotation. Blank lines and `#` comments are
//! skipped. Every error names the line and the field.

use std::fmt;
use std::net::IpAddr;

use sha2::{Digest, Sha256, Sha512};

/// The one algorithm supported: AES-GCM as ESP's AEAD (RFC 4106).
pub const GCM_AES: &str = "rfc4106(gcm(aes))";

/// One key of the file.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// 1–15.
    pub spi: u8,
    /// Derive a key per node pair (`+`).
    pub per_pair: bool,
    /// [`GCM_AES`].
    pub algorithm: String,
    /// The AES key and its 4-byte salt (20, 28 or 36 bytes).
    pub key: Vec<u8>,
    /// 64, 96 or 128.
    pub icv_bits: u16,
}

// Never print key material.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("spi", &self.spi)
            .field("per_pair", &self.per_pair)
            .field("algorithm", &self.algorithm)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .field("icv_bits", &self.icv_bits)
            .finish()
    }
}

/// The keys of a file, oldest first; the last is in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub keys: Vec<Key>,
}

impl KeyFile {
    /// The key new traffic is encrypted with.
    pub fn current(&self) -> &Key {
        self.keys.last().expect("a key file has a key")
    }
}

/// What is wrong with a key file: the line (1-based) and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("the key file has no key (one line `SPI ALGORITHM HEX-KEY ICV-BITS`, e.g. `3+ {GCM_AES} <40 hex digits> 128`)")]
    Empty,
    #[error("line {line}: {field}: {problem}")]
    Field {
        line: usize,
        field: &'static str,
        problem: String,
    },
}

fn field(line: usize, field: &'static str, problem: impl Into<String>) -> KeyFileError {
    KeyFileError::Field {
        line,
        field,
        problem: problem.into(),
    }
}

/// Parses a key file.
pub fn parse(text: &str) -> Result<KeyFile, KeyFileError> {
    let mut keys: Vec<Key> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let key = parse_line(line, content)?;
        if keys.iter().any(|k| k.spi == key.spi) {
            return Err(field(
                line,
                "SPI",
                format!(
                    "{} is used by an earlier line (each key needs its own SPI)",
                    key.spi
                ),
            ));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty);
    }
    Ok(KeyFile { keys })
}

fn parse_line(line: usize, content: &str) -> Result<Key, KeyFileError> {
    let fields: Vec<&str> = content.split_whitespace().collect();
    let [spi, algorithm, hex, icv] = fields[..] else {
        let names = ["SPI", "ALGORITHM", "HEX-KEY", "ICV-BITS"];
        let problem = if fields.len() < 4 {
            format!(
                "missing (want 4 fields: SPI ALGORITHM HEX-KEY ICV-BITS; found {})",
                fields.len()
            )
        } else {
            format!(
                "unexpected (want 4 fields: SPI ALGORITHM HEX-KEY ICV-BITS; found {}; \
                 the authentication + encryption form is not supported)",
                fields.len()
            )
        };
        let name = names.get(fields.len()).copied().unwrap_or("field 5");
        return Err(field(line, name, problem));
    };
    let (digits, per_pair) = match spi.strip_suffix('+') {
        Some(d) => (d, true),
        None => (spi, false),
    };
    let spi = match digits.parse::<u8>() {
        Ok(n @ 1..=15) => n,
        _ => {
            return Err(field(
                line,
                "SPI",
                format!("{spi:?} is not a number 1-15 (optionally followed by `+`)"),
            ))
        }
    };
    if algorithm != GCM_AES {
        return Err(field(
            line,
            "ALGORITHM",
            format!("{algorithm:?} is not supported (only {GCM_AES})"),
        ));
    }
    let hex = hex
        .strip_prefix("0x")
        .or_else(|| hex.strip_prefix("0X"))
        .unwrap_or(hex);
    // Checked first: a non-ASCII character would also cut the byte
    // pairs below in the middle of a character.
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(field(line, "HEX-KEY", "not hexadecimal"));
    }
    if hex.len() % 2 != 0 {
        return Err(field(
            line,
            "HEX-KEY",
            format!("{} hex digits: an odd number", hex.len()),
        ));
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| field(line, "HEX-KEY", "not hexadecimal"))?;
    if !matches!(key.len(), 20 | 28 | 36) {
        return Err(field(
            line,
            "HEX-KEY",
            format!(
                "{} bytes; {GCM_AES} takes an AES key of 16, 24 or 32 bytes and a 4-byte salt \
                 (40, 56 or 72 hex digits)",
                key.len()
            ),
        ));
    }
    let icv_bits = match icv.parse::<u16>() {
        Ok(n @ (64 | 96 | 128)) => n,
        _ => {
            return Err(field(
                line,
                "ICV-BITS",
                format!("{icv:?} is not 64, 96 or 128"),
            ))
        }
    };
    Ok(Key {
        spi,
        per_pair,
        algorithm: algorithm.to_string(),
        key,
        icv_bits,
    })
}

/// Length of a boot id as the kernel gives it
/// (`/proc/sys/kernel/random/boot_id`, a UUID).
pub const BOOT_ID_LEN: usize = 36;

/// The key of the pair `src` → `dst` (the sending node first) derived
/// from a `+` key: the first `global.len()` bytes of SHA-256 (SHA-512 for
/// keys over 32 bytes) of the global key, both nodes' addresses and both
/// boot ids (their first 36 bytes). Each direction of a pair has its own
/// key, and a node that reboots gets new ones.
pub fn derive_pair_key(
    global: &[u8],
    src: IpAddr,
    dst: IpAddr,
    src_boot_id: &str,
    dst_boot_id: &str,
) -> Vec<u8> {
    let octets = |ip: IpAddr| match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let boot = |id: &str| {
        let mut b = id.as_bytes().to_vec();
        b.resize(BOOT_ID_LEN, 0);
        b
    };
    let mut input = global.to_vec();
    input.extend(octets(src));
    input.extend(octets(dst));
    input.extend(boot(src_boot_id));
    input.extend(boot(dst_boot_id));
    let hash = if global.len() <= 32 {
        Sha256::digest(&input).to_vec()
    } else {
        Sha512::digest(&input).to_vec()
    };
    hash[..global.len()].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX40: &str = "0123456789abcdef0123456789abcdef01234567";

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn cilium_lines_parse() {
        let f = parse(&format!(
            "# rotated\n3 {GCM_AES} {HEX40} 128\n\n4+ {GCM_AES} 0x{HEX40}{} 96\n",
            &HEX40[..32]
        ))
        .unwrap();
        assert_eq!(f.keys.len(), 2);
        let (old, new) = (&f.keys[0], f.current());
        assert_eq!(
            (old.spi, old.per_pair, old.icv_bits, old.key.len()),
            (3, false, 128, 20)
        );
        assert_eq!(
            (new.spi, new.per_pair, new.icv_bits, new.key.len()),
            (4, true, 96, 36)
        );
        assert_eq!(old.key[..4], [0x01, 0x23, 0x45, 0x67]);
        // Key material never shows in debug output.
        assert!(!format!("{f:?}").contains("0123"), "{f:?}");
    }

    #[test]
    fn malformed_lines_name_the_line_and_field() {
        for (text, want) in [
            (String::new(), "no key".to_string()),
            ("# only a comment\n".into(), "no key".into()),
            (
                format!("0 {GCM_AES} {HEX40} 128"),
                "line 1: SPI: \"0\" is not a number 1-15".into(),
            ),
            (
                format!("\n16 {GCM_AES} {HEX40} 128"),
                "line 2: SPI: \"16\"".into(),
            ),
            (
                format!("x+ {GCM_AES} {HEX40} 128"),
                "line 1: SPI: \"x+\"".into(),
            ),
            (
                format!("3 {GCM_AES} {} 128", &HEX40[..39]),
                "line 1: HEX-KEY: 39 hex digits: an odd number".into(),
            ),
            (
                format!("3 {GCM_AES} {}zz 128", &HEX40[..38]),
                "line 1: HEX-KEY: not hexadecimal".into(),
            ),
            // Found by the fuzz target: a two-byte character cut in half.
            (
                format!("3 {GCM_AES} 0x012345678\u{1e7}bcd 128"),
                "line 1: HEX-KEY: not hexadecimal".into(),
            ),
            (
                format!("3 {GCM_AES} {} 128", &HEX40[..32]),
                "line 1: HEX-KEY: 16 bytes".into(),
            ),
            (
                format!("3 cbc(aes) {HEX40} 128"),
                "line 1: ALGORITHM: \"cbc(aes)\" is not supported".into(),
            ),
            (
                format!("3 {GCM_AES} {HEX40}"),
                "line 1: ICV-BITS: missing".into(),
            ),
            (
                format!("3 {GCM_AES} {HEX40} 127"),
                "line 1: ICV-BITS: \"127\" is not 64, 96 or 128".into(),
            ),
            (
                format!("3 hmac(sha256) {HEX40} cbc(aes) {HEX40}"),
                "line 1: field 5: unexpected".into(),
            ),
            (
                format!("3 {GCM_AES} {HEX40} 128\n3 {GCM_AES} {HEX40} 128"),
                "line 2: SPI: 3 is used by an earlier line".into(),
            ),
        ] {
            let got = err(&text);
            assert!(got.contains(&want), "{text:?}: {got}");
            assert!(!got.contains(HEX40), "key material in an error: {got}");
        }
    }

    const VECTOR_AB: &str = "b0c541d2b491990ee1b99ca07a0c4ad9b6acb0a7";
    const VECTOR_BA: &str = "444819439441cb0826c752f85a11e30967bd64eb";
    const VECTOR_V6_LONG: &str =
        "a7ab7794bc755a9c488ca200eba3cc74e0981fffc1bb83d3e6d22f2f405ade37b2fd6e42";

    /// Fixed vectors, computed independently (Python's hashlib):
    /// `sha256(key + src + dst + boot_src + boot_dst)[:len(key)]`.
    #[test]
    fn pair_keys_match_fixed_vectors_and_differ_per_pair_and_direction() {
        let global: Vec<u8> = (0u8..20).collect();
        let (a, b): (IpAddr, IpAddr) = (
            "192.168.77.1".parse().unwrap(),
            "192.168.77.2".parse().unwrap(),
        );
        let (boot_a, boot_b) = (
            "3f0b7c2e-5b1a-4a57-9d55-6a3c9a8f4e21",
            "b7d3c1a9-0e2f-4c6b-8a17-2f5e9d4c3b10",
        );
        let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(derive_pair_key(&global, a, b, boot_a, boot_b)),
            VECTOR_AB
        );
        assert_eq!(
            hex(derive_pair_key(&global, b, a, boot_b, boot_a)),
            VECTOR_BA
        );
        let long: Vec<u8> = (0u8..36).collect();
        let v6: (IpAddr, IpAddr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        assert_eq!(
            hex(derive_pair_key(&long, v6.0, v6.1, boot_a, boot_b)),
            VECTOR_V6_LONG
        );
        // A reboot changes the key.
        assert_ne!(
            derive_pair_key(&global, a, b, boot_a, boot_b),
            derive_pair_key(
                &global,
                a,
                b,
                boot_a,
                "00000000-0000-0000-0000-000000000000"
            )
        );
    }
}
