//! Node names and raft IDs. The reference names nodes with strings (`node_id`, `peers`: any
//! text, a NUID by default); raft-rs numbers them with non-zero u64s. Every node derives a
//! peer's number from its name the same way, so a name is all a configuration gives and all
//! a join request carries; two names that would share a number are refused at start-up.

use std::collections::BTreeMap;

/// Why a cluster's node list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeIdError {
    #[error("cluster node ID must not be empty")]
    Empty,
    #[error("cluster node IDs {0:?} and {1:?} cannot both be used (they map to one raft ID); rename one")]
    Collision(String, String),
}

/// The raft ID of a node name: a mixed 64-bit hash of its bytes, never 0 (raft-rs's "none").
pub fn raft_id(name: &str) -> u64 {
    let h = super::partitions::stable_hash(name.as_bytes());
    // Below 2^62 (the wire refuses larger numbers as no real index or term; one check for
    // everything numeric) and never 0.
    (h >> 2).max(1)
}

/// The voters a node bootstraps with: itself and its `peers`, each with its raft ID, in name
/// order, its own name once even when the list names it (the reference drops it). A peer
/// name with a comma is kept but reported, as the reference warns (a list given as one
/// string): the caller logs the returned warnings.
pub fn voters(
    me: &str,
    peers: &[String],
) -> Result<(BTreeMap<String, u64>, Vec<String>), NodeIdError> {
    let mut warnings = Vec::new();
    let mut by_name = BTreeMap::new();
    let mut by_id: BTreeMap<u64, String> = BTreeMap::new();
    for name in std::iter::once(me).chain(peers.iter().map(String::as_str)) {
        if name.is_empty() {
            return Err(NodeIdError::Empty);
        }
        if name.contains(',') {
            warnings.push(format!(
                "Peer name {name:?} contains ',' make sure you provided an array of peer names, not a string with commas"
            ));
        }
        let id = raft_id(name);
        match by_id.get(&id) {
            Some(other) if other != name => {
                return Err(NodeIdError::Collision(other.clone(), name.to_string()));
            }
            _ => {}
        }
        by_id.insert(id, name.to_string());
        by_name.insert(name.to_string(), id);
    }
    Ok((by_name, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_stable_non_zero_ids() {
        assert_eq!(raft_id("a"), raft_id("a"));
        assert_ne!(raft_id("a"), raft_id("b"));
        assert_ne!(raft_id(""), 0);
        assert!(raft_id("pi-1") < 1 << 62);
        // Every node and every release must agree: pinned.
        assert_eq!([raft_id("a"), raft_id("node-1")], [PINNED_A, PINNED_NODE_1],);
    }

    const PINNED_A: u64 = 4_427_624_862_149_335_972;
    const PINNED_NODE_1: u64 = 1_713_739_463_358_718_617;

    #[test]
    fn the_voters_are_me_and_my_peers_once_each() {
        let peers = vec!["b".to_string(), "a".to_string(), "c,d".to_string()];
        let (listed, warnings) = voters("a", &peers).unwrap();
        assert_eq!(
            listed.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b", "c,d"]
        );
        assert_eq!(listed["b"], raft_id("b"));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("contains ','"), "{}", warnings[0]);
        assert_eq!(voters("", &[]), Err(NodeIdError::Empty));
        assert_eq!(voters("a", &[String::new()]), Err(NodeIdError::Empty));
    }
}
