//! Core NATS: the client protocol, connections, subjects, the sublist, authentication.

pub mod auth;
pub mod client;
pub mod client_proto;
pub mod core;
pub mod handover;
pub mod parser;
pub mod route;
pub mod route_proto;
pub mod subject;
pub mod sublist;
pub mod tls;
pub mod trace;
pub mod transport;
pub mod wire;
