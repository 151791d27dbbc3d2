//! Small single-threaded building blocks shared by the per-core tasks.

pub mod logging;
pub mod notify;
pub mod rng;
pub mod timeout;
