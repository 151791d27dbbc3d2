//! Message stores owned by a shard. The memory store lives here; the file store joins it.

mod cached_slice;
pub mod clients;
pub mod file;
pub mod file_log;
pub mod index;
pub mod journal;
pub mod lock;
pub mod log;
pub mod memory;
pub mod record;
pub mod slice;
pub mod subs;

pub use file_log::Lookup;
pub use log::ChannelLog;
pub use memory::{MemoryLog, StoredMsg};
