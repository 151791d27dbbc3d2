//! Configuration: the NATS config-file parser, the options model, and command-line flags.

pub mod cli;
pub mod conf;
pub mod options;

pub use options::Options;
