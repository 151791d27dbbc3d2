//! Small single-threaded building blocks shared by the per-core tasks.

pub mod gathering;
pub mod go_duration;
pub mod logging;
pub mod memory;
pub mod notify;
pub mod nuid;
pub mod process_signal;
pub mod rng;
pub mod subject;
pub mod syslog;
pub mod tasks;
pub mod timeout;
pub mod url;
