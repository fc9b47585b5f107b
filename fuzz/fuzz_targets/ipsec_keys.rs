//! The IPsec key file as a Secret may hold it: any bytes. Every file
//! parses into keys within the format's bounds or fails naming a line and
//! a field (or saying it has no key); a parsed key derives per-pair keys
//! of its own length.

#![no_main]

use axoneme_ipsec::keys::{derive_pair_key, parse, KeyFileError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(file) => {
            assert!(!file.keys.is_empty());
            for k in &file.keys {
                assert!((1..=15).contains(&k.spi), "{k:?}");
                assert!(matches!(k.key.len(), 20 | 28 | 36), "{k:?}");
                assert!(matches!(k.icv_bits, 64 | 96 | 128), "{k:?}");
                let pair = derive_pair_key(
                    &k.key,
                    "10.0.0.1".parse().unwrap(),
                    "10.0.0.2".parse().unwrap(),
                    "a",
                    "b",
                );
                assert_eq!(pair.len(), k.key.len());
            }
        }
        Err(KeyFileError::Empty) => {}
        Err(e @ KeyFileError::Field { line, .. }) => {
            let msg = e.to_string();
            assert!(line >= 1 && line <= text.lines().count(), "{msg}");
            assert!(msg.starts_with(&format!("line {line}: ")), "{msg}");
        }
    }
});
