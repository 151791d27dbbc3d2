//! A channel replicated by a partition group, with the real pieces a node will run: the
//! leader's `Shard` in file mode, its `Commit`s turned into partition entries
//! (`raft::partition_entry`), the raft groups of the deterministic cluster simulation
//! (`cluster/`), and on every node a real `FileStore` that applies committed entries with
//! `FileStore::write`, as the leader's driver writes. Checks what a STAN client relies on: a
//! PubAck only once a quorum holds the message, the reference's error when leadership is lost
//! first, every node's store holding the same messages, and a new leader's store (recovered as
//! a restart recovers it) holding every acknowledged message.

mod cluster;
mod common;

use bytes::Bytes;
use cluster::{Cluster, ELECTION_TICKS};
use common::run;
use prost::Message as _;
use shards::limits::StoreLimits;
use shards::pb::PubMsg;
use shards::raft::meta_entry::{self, MetaOp};
use shards::raft::partition_entry::{self, PartitionOp};
use shards::shard::{ChannelDirectory, Incoming, Now, Shard, ShardConfig};
use shards::store::clients::StoredClient;
use shards::store::file::{FileStore, SliceLimits, WriteOutcome};
use shards::store::journal::CompactPolicy;
use shards::store::record;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

const CHANNEL: &str = "orders";
const SEC: i64 = 1_000_000_000;

struct Grants;

impl ChannelDirectory for Grants {
    fn register(&self, _name: &str) -> Result<(), String> {
        Ok(())
    }
    fn unregister(&self, _name: &str) {}
}

/// One node's side: its store, and how many committed entries it applied to it.
struct Replica {
    store: FileStore,
    root: PathBuf,
    written: usize,
}

struct World {
    cluster: Cluster,
    replicas: BTreeMap<u64, Replica>,
    shard: Shard,
    now: Now,
    guid: u64,
}

impl World {
    async fn new(tag: &str, seed: u64) -> World {
        let mut cluster = Cluster::new(seed, 3, 1);
        cluster
            .run_until(6 * ELECTION_TICKS as u64, |c| c.leader(0).is_some())
            .expect("a leader");
        let mut replicas = BTreeMap::new();
        for node in 1..=3u64 {
            let root = common::scratch(&format!("replicated-{tag}-{seed}-{node}"));
            std::fs::create_dir_all(root.join("channels")).expect("mkdir");
            let store = FileStore::open(
                &root,
                64 << 10,
                SliceLimits::default(),
                CompactPolicy::default(),
                false,
            )
            .await
            .expect("store");
            replicas.insert(
                node,
                Replica {
                    store,
                    root,
                    written: 0,
                },
            );
        }
        World {
            cluster,
            replicas,
            shard: leader_shard(),
            now: Now {
                wall_ns: 1_000 * SEC,
                mono_ns: 1_000 * SEC as u64,
            },
            guid: 0,
        }
    }

    fn publish(&mut self, n: usize) {
        for _ in 0..n {
            self.guid += 1;
            let payload = Bytes::from(
                PubMsg {
                    client_id: "me".into(),
                    guid: self.guid.to_string(),
                    subject: CHANNEL.into(),
                    data: Bytes::from(format!("message {}", self.guid)),
                    conn_id: Bytes::from_static(b"conn1"),
                    ..Default::default()
                }
                .encode_to_vec(),
            );
            self.shard.publish(
                self.now,
                CHANNEL,
                Incoming {
                    pub_msg: &payload,
                    reply: Some(b"acks"),
                    frame: Some(&payload),
                },
            );
            let ready = self.shard.ready();
            for name in &ready.grants {
                self.shard.granted(self.now, name, Grants.register(name));
            }
            self.now.wall_ns += 1_000;
            self.now.mono_ns += 1_000;
        }
    }

    /// Every node that is up applies the entries committed since it last looked, to its
    /// store; returns what the writes of `mine` (entries this leader proposed) did.
    async fn apply_committed(&mut self, mine: &HashSet<Bytes>) -> WriteOutcome {
        let mut outcome = WriteOutcome::default();
        for (id, replica) in self.replicas.iter_mut() {
            let Some(node) = self.cluster.nodes.get(id) else {
                continue;
            };
            if !node.up {
                continue;
            }
            let committed = &node.applied[0];
            for entry in &committed[replica.written..] {
                match partition_entry::decode(entry).expect("an entry this test proposed") {
                    PartitionOp::Batch(batch) => {
                        let out = replica.store.write(vec![batch]).await;
                        if mine.contains(entry) {
                            outcome.landed.extend(out.landed);
                            outcome.failed.extend(out.failed);
                        }
                    }
                    PartitionOp::Delete(channel) => replica.store.delete_channel(&channel).await,
                }
            }
            replica.written = committed.len();
        }
        outcome
    }

    /// One turn of the leader's driver: the commit's batches proposed as entries, the cluster
    /// run until they committed or were lost, committed entries applied on every node, then
    /// `advance`. Returns (acknowledged, refused with the error) PubAcks.
    async fn commit_turn(&mut self, leader: u64, ticks: u64) -> (usize, Vec<String>) {
        let commit = self.shard.take_commit().expect("a commit is due");
        let entries: Vec<Bytes> = commit
            .batches
            .iter()
            .map(partition_entry::encode_batch)
            .collect();
        let mine: HashSet<Bytes> = entries.iter().cloned().collect();
        let proposed = entries
            .iter()
            .all(|e| self.cluster.propose_on(leader, 0, e.clone()));
        let lost_before = self.cluster.lost;
        self.cluster.run_until(ticks, |c| {
            entries.iter().all(|e| c.acknowledged[0].contains(e)) || c.lost > lost_before
        });
        let committed = proposed
            && entries
                .iter()
                .all(|e| self.cluster.acknowledged[0].contains(e));
        let mut outcome = self.apply_committed(&mine).await;
        if !committed {
            // Not known to be on a quorum: every channel of the commit is refused, with the
            // reference's text, and the shard rolls its sequences back.
            outcome = WriteOutcome::default();
            for b in &commit.batches {
                outcome.failed.push((
                    b.channel.clone(),
                    std::io::Error::other(shards::raft::group::LEADERSHIP_LOST),
                ));
            }
        }
        let released = self.shard.advance(self.now, commit.held, &outcome);
        let mut ok = 0;
        let mut refused = Vec::new();
        for (acks, error) in released.pub_acks {
            let n = acks.iter().count();
            if error.is_empty() {
                ok += n;
            } else {
                refused.extend(std::iter::repeat_n(error, n));
            }
        }
        (ok, refused)
    }

    /// Every message in `node`'s store, (sequence, timestamp, body), read back from its slice
    /// files after a recovery of the store.
    async fn stored(&self, node: u64) -> Vec<(u64, i64, Vec<u8>)> {
        let replica = &self.replicas[&node];
        let recovered = replica
            .store
            .recover(|_| true, false)
            .await
            .expect("the store recovers");
        let mut out = Vec::new();
        for channel in recovered {
            assert_eq!(channel.name, CHANNEL);
            for slice in &channel.slices {
                let path = replica.store.slice_path(CHANNEL, slice.first_seq);
                let bytes = std::fs::read(&path).expect("slice file");
                let (found, _) = record::scan(&bytes).expect("a clean slice");
                for f in found {
                    out.push((f.header.seq, f.header.timestamp, f.body(&bytes).to_vec()));
                }
            }
        }
        out
    }

    async fn close(self) {
        for (_, r) in self.replicas {
            r.store.close().await;
            let _ = std::fs::remove_dir_all(&r.root);
        }
    }
}

fn leader_shard() -> Shard {
    let mut shard = Shard::new(ShardConfig {
        shard: 0,
        ack_prefix: "_STAN.ack.c.0.".into(),
        ack_key: shards::ack_key::AckKey::new(&[7; shards::ack_key::KEY_LEN]),
        limits: StoreLimits::default().build().expect("limits"),
        replace_durable: false,
    });
    shard.persist_messages();
    shard.client_added("me", Bytes::from_static(b"conn1"));
    shard
}

#[test]
fn pub_acks_follow_a_quorum_and_every_store_holds_the_same_messages() {
    run(|| async {
        for seed in 0..4 {
            let mut w = World::new("quorum", seed).await;
            let leader = w.cluster.leader(0).expect("a leader");
            let mut acked = 0;
            for _ in 0..5 {
                w.publish(20);
                let (ok, refused) = w.commit_turn(leader, 100).await;
                assert!(refused.is_empty(), "seed {seed}: {refused:?}");
                acked += ok;
            }
            assert_eq!(acked, 100, "seed {seed}");
            w.cluster.run(20);
            w.apply_committed(&HashSet::new()).await;
            let on_leader = w.stored(leader).await;
            assert_eq!(on_leader.len(), 100, "seed {seed}");
            assert_eq!(
                on_leader.iter().map(|m| m.0).collect::<Vec<_>>(),
                (1..=100).collect::<Vec<u64>>()
            );
            for node in 1..=3 {
                assert_eq!(w.stored(node).await, on_leader, "seed {seed}: node {node}");
            }
            // What a catching-up node fetches: whole records from a sequence on, bounded.
            let store = &w.replicas[&leader].store;
            let got = store.read_records(CHANNEL, 40, 500).expect("read");
            assert_eq!(got.first_seq, 40);
            assert!(got.msgs >= 1 && got.msgs < 61, "{}", got.msgs);
            let mut at = 0;
            for n in 0..got.msgs {
                let h = record::header_at(&got.records, at).expect("a whole record");
                assert_eq!(h.seq, 40 + n);
                assert_eq!(on_leader[(h.seq - 1) as usize].0, h.seq);
                at += record::HEADER_LEN + h.body_len as usize;
            }
            assert_eq!(at, got.records.len());
            let rest = store.read_records(CHANNEL, 95, 1 << 20).expect("read");
            assert_eq!((rest.first_seq, rest.msgs), (95, 6));
            assert_eq!(
                store
                    .read_records(CHANNEL, 101, 1 << 20)
                    .expect("read")
                    .msgs,
                0
            );
            assert_eq!(store.read_records("none", 1, 100).expect("read").msgs, 0);
            if seed == 0 {
                write_snapshot_seeds(store, got);
            }
            if seed == 0 {
                write_fuzz_seeds(&w.cluster);
            }
            w.close().await;
        }
    });
}

#[test]
fn a_new_leader_holds_every_acknowledged_message_and_a_cut_off_one_acknowledges_none() {
    run(|| async {
        for seed in 0..4 {
            let mut w = World::new("failover", seed).await;
            let leader = w.cluster.leader(0).expect("a leader");
            w.publish(30);
            let (acked, refused) = w.commit_turn(leader, 100).await;
            assert_eq!((acked, refused.len()), (30, 0), "seed {seed}");
            // The leader is cut off mid-traffic: what it takes now cannot reach a quorum.
            w.cluster.isolate(leader);
            w.publish(10);
            let (acked, refused) = w.commit_turn(leader, 200).await;
            assert_eq!(acked, 0, "seed {seed}: acknowledged without a quorum");
            assert_eq!(refused.len(), 10, "seed {seed}");
            assert!(
                refused
                    .iter()
                    .all(|e| e.contains("leadership lost while committing log")),
                "seed {seed}: {refused:?}"
            );
            // The others elected a new leader; its store, recovered, holds exactly the 30.
            let new = w
                .cluster
                .run_until(20 * ELECTION_TICKS as u64, |c| {
                    c.leader(0).is_some_and(|l| l != leader)
                })
                .and_then(|_| w.cluster.leader(0))
                .unwrap_or_else(|| panic!("seed {seed}: no new leader"));
            w.apply_committed(&HashSet::new()).await;
            let on_new = w.stored(new).await;
            assert_eq!(
                on_new.iter().map(|m| m.0).collect::<Vec<_>>(),
                (1..=30).collect::<Vec<u64>>(),
                "seed {seed}"
            );
            // Healed, the old leader's log is overwritten: its store too holds only those 30.
            w.cluster.heal();
            w.cluster.run(100);
            w.apply_committed(&HashSet::new()).await;
            assert_eq!(w.stored(leader).await, on_new, "seed {seed}");
            w.close().await;
        }
    });
}

/// Seeds for the `raft_partition_entry` fuzz target: the committed entries of a run.
fn write_fuzz_seeds(cluster: &Cluster) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-seeds")
        .join("raft_partition_entry");
    std::fs::create_dir_all(&dir).expect("seed dir");
    let Some(node) = cluster.nodes.values().next() else {
        return;
    };
    for (k, entry) in node.applied[0].iter().enumerate() {
        std::fs::write(dir.join(format!("entry-{k}")), entry).expect("write seed");
    }
    std::fs::write(dir.join("delete"), partition_entry::encode_delete(CHANNEL))
        .expect("write seed");
    let meta = dir.with_file_name("raft_meta_entry");
    std::fs::create_dir_all(&meta).expect("seed dir");
    let ops = [
        MetaOp::ClientAdded(StoredClient {
            id: "me".into(),
            hb_inbox: "_INBOX.hb".into(),
            conn_id: Bytes::from_static(b"conn1"),
        }),
        MetaOp::ClientRemoved("me".into()),
        MetaOp::NodeAdded { node: 3, cores: 4 },
        MetaOp::NodeRemoved(3),
    ];
    for (k, op) in ops.iter().enumerate() {
        std::fs::write(meta.join(format!("op-{k}")), meta_entry::encode(op)).expect("write seed");
    }
}

/// Seeds for the `raft_snapshot_data` fuzz target: a partition snapshot and a metadata
/// snapshot as a node makes them, and a fetch answer read from a store.
fn write_snapshot_seeds(store: &FileStore, fetched: shards::store::file::StoredRecords) {
    use shards::raft::snapshot_data::{self, ChannelState, MetaState};
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-seeds")
        .join("raft_snapshot_data");
    std::fs::create_dir_all(&dir).expect("seed dir");
    let subs_log = store.subs_log_bytes(CHANNEL).expect("subs log");
    let partition = snapshot_data::encode_partition(&[ChannelState {
        name: CHANNEL.into(),
        first_seq: 1,
        last_seq: 100,
        subs_log: Bytes::from(subs_log),
    }]);
    std::fs::write(dir.join("partition"), partition).expect("write seed");
    let mut clients_log = Vec::new();
    shards::store::clients::encode_add(
        &mut clients_log,
        &StoredClient {
            id: "me".into(),
            hb_inbox: "_INBOX.hb".into(),
            conn_id: Bytes::from_static(b"conn1"),
        },
    );
    let meta = snapshot_data::encode_meta(&MetaState {
        clients_log: Bytes::from(clients_log),
        ack_key: [7; shards::ack_key::KEY_LEN],
    });
    std::fs::write(dir.join("meta"), meta).expect("write seed");
    let answer =
        snapshot_data::encode_fetched(fetched.first_seq, fetched.msgs, fetched.records, "");
    std::fs::write(dir.join("fetched"), answer).expect("write seed");
}
