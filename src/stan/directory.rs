//! The server-wide channel directory, which grants channels on one server: `max_channels` and
//! "no two channels that differ only by case" span all shards. Each core's driver answers its
//! shard's grants (`Ready::grants`) and releases (`Ready::released`) from it in the same turn;
//! a lock is taken only then, never on the publish path, instead of a round trip to the
//! control plane that would hold back the requests queued behind a new channel's first.

use shards::shard::{ChannelDirectory, ERR_TOO_MANY_CHANNELS};
use std::collections::HashMap;
use std::sync::Mutex;

pub struct SharedDirectory {
    max_channels: i64,
    /// File store: where channel directories are made. A channel whose directory cannot be
    /// made (a name too long for the file system, a full disk) is refused with the system's
    /// error, as the reference's file store refuses it, instead of living only in memory.
    channels_root: Option<std::path::PathBuf>,
    /// Lower-cased name -> name as created.
    names: Mutex<HashMap<String, String>>,
}

impl SharedDirectory {
    pub fn new(max_channels: i64) -> Self {
        SharedDirectory {
            max_channels,
            channels_root: None,
            names: Mutex::new(HashMap::new()),
        }
    }

    /// Channels get their directory under `store_dir/channels` when created.
    pub fn with_store(mut self, store_dir: &std::path::Path) -> Self {
        self.channels_root = Some(store_dir.join("channels"));
        self
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
        if let Some(root) = &self.channels_root {
            let dir = root.join(shards::store::file::channel_dir_name(name));
            std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
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

    /// Issue 21.4: with the file store, a channel whose directory cannot be made is refused
    /// with the system's error (and not counted).
    #[test]
    fn a_channel_without_a_directory_is_refused() {
        let root = std::env::temp_dir().join(format!("stanza-dir-{}", std::process::id()));
        let d = SharedDirectory::new(0).with_store(&root);
        d.register("ok").unwrap();
        assert!(root.join("channels").join("ok").is_dir());
        let long = "x".repeat(300);
        let err = d.register(&long).unwrap_err();
        assert!(
            err.starts_with("mkdir ") && err.contains("too long"),
            "{err}"
        );
        assert_eq!(d.count(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }
}
