//! Axoneme node agent.

pub mod datapath;
pub mod node;
