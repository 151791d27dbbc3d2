//! Load generators built into the `stanza` binary.

pub mod frame_counter;
pub mod nats_load;
pub mod stan;
