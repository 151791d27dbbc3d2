//! Message stores owned by a shard. The memory store lives here; the file store joins it.

pub mod clients;
pub mod file;
pub mod journal;
pub mod memory;
pub mod record;
pub mod slice;
pub mod subs;

pub use memory::{MemoryLog, StoredMsg};
