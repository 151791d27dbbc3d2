//! Core NATS: the client protocol, connections, subjects, the sublist, authentication.

pub mod auth;
pub mod client;
pub mod client_proto;
pub mod connections;
pub mod core;
pub mod delivery;
pub mod handover;
pub mod interest;
pub mod mesh_msg;
pub mod parser;
pub mod route;
pub mod route_proto;
/// Subject checks live in `util` (a leaf: config validates subjects too).
pub use crate::util::subject;
pub mod sublist;
pub mod tls;
pub mod trace;
pub mod transport;
pub mod wire;
