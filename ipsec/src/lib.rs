//! Transparent encryption between nodes (IPsec). So far: the key file
//! ([`keys`]), parsed and checked field by field, and the per-node-pair key
//! derivation. The XFRM programming and the datapath's marking are not
//! built yet; the agent refuses `--enable-ipsec` (docs/helm.md).

#![forbid(unsafe_code)]

pub mod keys;
