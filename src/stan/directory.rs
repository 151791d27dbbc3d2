//! The server-wide channel directory: `max_channels` and "no two channels that differ only by
//! case" span all shards. A lock is taken only when a channel is created or deleted, never on
//! the publish path; it replaces a round trip to the control plane that would otherwise have
//! to hold back the publishes queued behind the first one.

use shards::shard::{ChannelDirectory, ERR_TOO_MANY_CHANNELS};
use std::collections::HashMap;
use std::sync::Mutex;

pub struct SharedDirectory {
    max_channels: i64,
    /// Lower-cased name -> name as created.
    names: Mutex<HashMap<String, String>>,
}

impl SharedDirectory {
    pub fn new(max_channels: i64) -> Self {
        SharedDirectory {
            max_channels,
            names: Mutex::new(HashMap::new()),
        }
    }

    pub fn count(&self) -> usize {
        self.names.lock().map(|n| n.len()).unwrap_or(0)
    }
}

impl ChannelDirectory for SharedDirectory {
    fn register(&self, name: &str) -> Result<(), String> {
        let mut names = self
            .names
            .lock()
            .map_err(|_| "channel directory unavailable".to_string())?;
        let lower = name.to_lowercase();
        if let Some(existing) = names.get(&lower) {
            if existing != name {
                // The reference's text, typo included: clients may match on it.
                return Err(format!(
                    "rejecting channel {name:?} because channel {existing:?} alreay exists (different cases not allowed)"
                ));
            }
            return Ok(());
        }
        if self.max_channels > 0 && names.len() as i64 >= self.max_channels {
            return Err(ERR_TOO_MANY_CHANNELS.to_string());
        }
        names.insert(lower, name.to_string());
        Ok(())
    }

    fn unregister(&self, name: &str) {
        if let Ok(mut names) = self.names.lock() {
            names.remove(&name.to_lowercase());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_count() {
        let d = SharedDirectory::new(2);
        d.register("foo").unwrap();
        assert_eq!(
            d.register("Foo").unwrap_err(),
            "rejecting channel \"Foo\" because channel \"foo\" alreay exists (different cases not allowed)"
        );
        d.register("bar").unwrap();
        assert_eq!(d.register("baz").unwrap_err(), "too many channels");
        d.unregister("bar");
        d.register("baz").unwrap();
        assert_eq!(d.count(), 2);
    }
}
