//! Transparent encryption between nodes (IPsec). So far: the key file
//! ([`keys`]), parsed and checked field by field, with the per-node-pair
//! key derivation; and XFRM states and policies over netlink ([`xfrm`]),
//! tested in the IPsec VM (`e2e/tests/ipsec_vm.rs`). The agent does not use
//! them yet (no sync unit, no datapath marking): it refuses
//! `--enable-ipsec` (docs/helm.md).

#![forbid(unsafe_code)]

pub mod keys;
pub mod xfrm;
