//! Configuration: the NATS config-file parser, the serde options model (NATS and streaming
//! keys), the TOML/NATS file loader, command-line flags and the startup banner.

pub mod banner;
pub mod cli;
pub mod conf;
pub mod de;
pub mod load;
pub mod options;
pub mod print;
pub mod streaming;

pub use options::Options;
