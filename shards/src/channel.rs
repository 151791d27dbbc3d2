//! A channel owned by a shard: its message log, its limits, and the index of its
//! subscriptions (plain and durable by id, queue groups by name, durables by key).

use crate::limits::ChannelLimits;
use crate::store::file_log::FileLog;
use crate::store::{ChannelLog, MemoryLog};
use crate::subscription::QueueGroup;
use fxhash::FxHashMap;

#[derive(Debug)]
pub struct Channel {
    pub name: String,
    /// Its number on its shard, never reused (a channel deleted and created again gets a new
    /// one): what the shard's queued deliveries name it by.
    pub uid: u64,
    pub log: ChannelLog,
    pub limits: ChannelLimits,
    /// Plain subscriptions, online or (durables) offline.
    pub plain: Vec<u64>,
    pub queues: FxHashMap<String, QueueGroup>,
    /// Durable key -> subscription (plain durables).
    pub durables: FxHashMap<String, u64>,
    /// Monotonic ns of the last publish or subscription activity (max_inactivity).
    pub last_activity: u64,
    pub msgs_dropped_warned: bool,
}

impl Channel {
    /// A new channel; `on_disk` for the file store (messages read back from disk on demand).
    pub fn new(name: &str, uid: u64, limits: ChannelLimits, now_mono: u64, on_disk: bool) -> Self {
        Channel {
            name: name.to_string(),
            uid,
            log: if on_disk {
                ChannelLog::File(Box::new(FileLog::new()))
            } else {
                ChannelLog::Memory(MemoryLog::new())
            },
            limits,
            plain: Vec::new(),
            queues: FxHashMap::default(),
            durables: FxHashMap::default(),
            last_activity: now_mono,
            msgs_dropped_warned: false,
        }
    }

    /// Every subscription record of the channel: plain ones (incl. offline durables), then
    /// every queue member or shadow.
    pub fn subscription_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.plain
            .iter()
            .chain(self.queues.values().flat_map(|g| g.members.iter()))
            .copied()
    }

    /// Subscription records counted against max_subs: plain (incl. offline durables) and
    /// every queue member or shadow.
    pub fn subscription_count(&self) -> usize {
        self.plain.len() + self.queues.values().map(|q| q.members.len()).sum::<usize>()
    }
}

/// Channel names: not empty, no leading `.`, no empty token, no `/`, no wildcards.
pub fn is_valid_channel(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && name
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(['*', '>']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names() {
        for good in ["foo", "foo.bar", "a b", "ünï.code", "x-y_z"] {
            assert!(is_valid_channel(good), "{good}");
        }
        for bad in [
            "", ".foo", "foo.", "foo..bar", "a/b", "foo.*", "foo.>", "f*o", ">",
        ] {
            assert!(!is_valid_channel(bad), "{bad}");
        }
    }
}
