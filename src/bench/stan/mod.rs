//! `stanza bench`: a NATS Streaming load generator on a small blocking Rust STAN client.

pub mod client;
pub mod link;
pub mod run;
pub mod stats;
pub mod window;
