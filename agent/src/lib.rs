//! Axoneme node agent.

pub mod datapath;
