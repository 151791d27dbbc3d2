#![recursion_limit = "256"]
//! stanza: a NATS Streaming server, thread-per-core on glommio. See DESIGN.md in the shared
//! project notes for the architecture; each module's comment says what it owns.

pub mod bench;
pub mod config;
pub mod mesh;
pub mod monitor;
pub mod nats;
pub mod server;
pub mod stan;
pub mod util;
