//! The CNI plugin's parts: what `axoneme-cni` (src/main.rs) runs, as a
//! library so that the parsers can be fuzzed (fuzz/) apart from the binary.

#![forbid(unsafe_code)]

pub mod agent;
pub mod command;
pub mod config;
pub mod env;
pub mod error;
pub mod install;
pub mod result;
