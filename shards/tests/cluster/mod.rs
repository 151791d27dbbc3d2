//! A deterministic simulation of a stanza cluster's raft groups: N nodes, each owning the same
//! G groups (as a shard owns its partitions' groups), a network of links between nodes that
//! can drop messages or be cut, nodes that crash (losing what they had not written) and
//! restart from what they wrote, disks whose writes land a number of steps later, and a fake
//! clock that ticks every node with seeded jitter. Each node is one `ShardGroups` (the code a
//! shard's driver runs) and does what the driver does: `ready`, send now what may go now,
//! append the turn's records to its raft log file (landing `write_delay` rounds later), then
//! `written`, and send what waited for the write. Every byte between nodes is an encoded batch
//! (`raft::wire`), as it will travel over NATS, and a restart replays the node's file.
//!
//! The state machine applied on each node is the list of committed entries' data per group;
//! `check_agreement` and `check_acknowledged` are the two safety properties every scenario ends
//! with: no two nodes applied different things at one index, and nothing a proposer was told
//! committed is missing anywhere once the cluster healed.

#![allow(dead_code)]

use bytes::Bytes;
use shards::raft::{log_file, wire};
use shards::raft::{
    ConfChangeV2, Entry, Group, GroupConfig, GroupLog, Outcome, Outgoing, PendingWrite,
    ShardGroups, StateRole,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

pub const ELECTION_TICKS: usize = 10;
pub const HEARTBEAT_TICKS: usize = 2;
/// Network and disk rounds per tick.
pub const ROUNDS_PER_TICK: u64 = 6;

pub struct Node {
    pub id: u64,
    pub up: bool,
    groups: ShardGroups,
    /// The node's raft log file (`raft::log_file`'s format): what a restart reads back.
    pub file: Vec<u8>,
    /// Per group: the data of every applied normal entry, in log order (the state machine).
    pub applied: Vec<Vec<Bytes>>,
    /// Writes started and not landed yet, with the round they land at.
    writing: VecDeque<(u64, PendingWrite)>,
}

impl Node {
    fn group(&self, g: u32) -> &Group {
        self.groups.group(g).expect("every node has every group")
    }

    fn group_mut(&mut self, g: u32) -> &mut Group {
        self.groups
            .group_mut(g)
            .expect("every node has every group")
    }
}

pub struct Cluster {
    pub nodes: BTreeMap<u64, Node>,
    groups: u32,
    /// Messages in flight, per (from, to), FIFO.
    links: BTreeMap<(u64, u64), VecDeque<Vec<u8>>>,
    cut: HashSet<(u64, u64)>,
    /// Per mille of messages a link loses.
    pub loss_per_mille: u64,
    /// Rounds a write takes to land.
    pub write_delay: u64,
    pub step: u64,
    rng: crate::common::SeededRng,
    /// Every token a proposer was told committed, per group, with its data.
    pub acknowledged: Vec<Vec<Bytes>>,
    /// Every token a proposer was told was lost.
    pub lost: usize,
    next_token: u64,
    proposals: HashMap<u64, Bytes>,
    /// (group, term) -> leader seen, for the one-leader-per-term check.
    leaders: HashMap<(u32, u64), u64>,
    /// Per group: where the nodes' election timeouts start (see `config`).
    offsets: Vec<u64>,
    /// When set, every batch sent is kept here too (fuzz seeds).
    pub recorded: Option<Vec<Vec<u8>>>,
}

/// A group's config on a node. raft-rs would draw each election timeout at random from
/// [ELECTION_TICKS, 2 * ELECTION_TICKS); here each node of a group gets a fixed, distinct one
/// (`offset` is drawn per group from the seed), so a run replays exactly and two nodes never
/// time out together forever (raft-rs redraws at every election; a fixed draw cannot).
fn config(group: u32, node: u64, offset: u64) -> GroupConfig {
    let mut c = GroupConfig::new(group, node);
    c.election_ticks = ELECTION_TICKS;
    c.heartbeat_ticks = HEARTBEAT_TICKS;
    let spread = (offset + node * 3) % ELECTION_TICKS as u64;
    c.fixed_election_timeout = Some(ELECTION_TICKS + spread as usize);
    c.max_size_per_msg = 4096;
    c
}

impl Cluster {
    /// `nodes` nodes (ids 1..=nodes) bootstrapped together, each with `groups` groups.
    pub fn new(seed: u64, nodes: u64, groups: u32) -> Cluster {
        let voters: Vec<u64> = (1..=nodes).collect();
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            groups,
            links: BTreeMap::new(),
            cut: HashSet::new(),
            loss_per_mille: 0,
            write_delay: 1,
            step: 0,
            rng: crate::common::SeededRng::new(seed),
            acknowledged: vec![Vec::new(); groups as usize],
            lost: 0,
            next_token: 1,
            proposals: HashMap::new(),
            leaders: HashMap::new(),
            offsets: Vec::new(),
            recorded: None,
        };
        cluster.offsets = (0..groups).map(|_| cluster.random()).collect();
        for id in 1..=nodes {
            let mut groups = Vec::new();
            for g in 0..cluster.groups {
                let config = config(g, id, cluster.offsets[g as usize]);
                groups.push(
                    Group::new(&config, GroupLog::with_voters(&voters), 0).expect("valid config"),
                );
            }
            let mut node = Self::node(id, groups);
            // The bootstrap membership is durable from the start.
            for g in node.groups.groups() {
                log_file::encode_snapshot(&mut node.file, g.id(), g.log().last_snapshot(), (0, 0));
            }
            cluster.nodes.insert(id, node);
        }
        cluster
    }

    fn node(id: u64, groups: Vec<Group>) -> Node {
        let n = groups.len();
        let mut shard = ShardGroups::new(id);
        for g in groups {
            shard.insert(g);
        }
        Node {
            id,
            up: true,
            groups: shard,
            file: Vec::new(),
            applied: vec![Vec::new(); n],
            writing: VecDeque::new(),
        }
    }

    /// A node that joins later: empty logs, no membership (it learns it from the leader).
    pub fn add_empty_node(&mut self, id: u64) {
        let mut groups = Vec::new();
        for g in 0..self.groups {
            let config = config(g, id, self.offsets[g as usize]);
            groups.push(Group::new(&config, GroupLog::default(), 0).expect("valid config"));
        }
        self.nodes.insert(id, Self::node(id, groups));
    }

    fn random(&mut self) -> u64 {
        self.rng.next()
    }

    pub fn cut(&mut self, a: u64, b: u64) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    /// Cuts every link of `node`.
    pub fn isolate(&mut self, node: u64) {
        let others: Vec<u64> = self.nodes.keys().copied().filter(|n| *n != node).collect();
        for other in others {
            self.cut(node, other);
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// kill -9: everything not written is gone, messages to it are lost.
    pub fn crash(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.up = false;
            node.writing.clear();
        }
        self.links.retain(|(from, to), _| *from != id && *to != id);
    }

    /// Restarts a crashed node from what it wrote; its state machine is rebuilt by applying
    /// the committed log again (the snapshot's data first).
    pub fn restart(&mut self, id: u64) {
        let groups_count = self.groups;
        let offsets = self.offsets.clone();
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let (mut recovered, end) = log_file::replay(&node.file).expect("the node's own log file");
        assert_eq!(end, node.file.len(), "no torn tail: writes land whole here");
        let mut groups = Vec::new();
        let mut applied = Vec::new();
        for g in 0..groups_count {
            let r = recovered.remove(&g).unwrap_or_default();
            let snap_index = r.snapshot.get_metadata().index;
            applied.push(decode_state(&r.snapshot.data));
            let log = r.into_log().expect("a durable log is contiguous");
            let config = config(g, id, offsets[g as usize]);
            groups.push(Group::new(&config, log, snap_index).expect("restart"));
        }
        let mut shard = ShardGroups::new(id);
        for g in groups {
            shard.insert(g);
        }
        node.groups = shard;
        node.applied = applied;
        node.up = true;
    }

    pub fn leader(&self, group: u32) -> Option<u64> {
        self.nodes
            .values()
            .filter(|n| n.up)
            .find(|n| n.group(group).is_leader())
            .map(|n| n.id)
    }

    /// Index and term of the entry before the first one `node` keeps for `group`.
    pub fn log_before(&self, node: u64, group: u32) -> (u64, u64) {
        self.nodes[&node].group(group).log().before()
    }

    pub fn term_of(&self, node: u64, group: u32) -> u64 {
        self.nodes[&node].group(group).term()
    }

    pub fn role(&self, node: u64, group: u32) -> StateRole {
        self.nodes[&node].group(group).role()
    }

    /// Proposes `data` on `node`; false when that node refused (it does not lead).
    pub fn propose_on(&mut self, node: u64, group: u32, data: Bytes) -> bool {
        let token = self.next_token;
        self.next_token += 1;
        let Some(n) = self.nodes.get_mut(&node) else {
            return false;
        };
        if !n.up {
            return false;
        }
        if n.groups.propose(group, data.clone(), token).is_err() {
            return false;
        }
        self.proposals.insert(token, data);
        true
    }

    /// Proposes on whoever leads `group`; false when nobody does.
    pub fn propose(&mut self, group: u32, data: Bytes) -> bool {
        match self.leader(group) {
            Some(leader) => self.propose_on(leader, group, data),
            None => false,
        }
    }

    pub fn propose_membership(&mut self, node: u64, group: u32, change: ConfChangeV2) -> bool {
        self.nodes
            .get_mut(&node)
            .map(|n| n.group_mut(group).propose_membership(change).is_ok())
            .unwrap_or(false)
    }

    pub fn transfer_leader(&mut self, from: u64, group: u32, to: u64) {
        if let Some(n) = self.nodes.get_mut(&from) {
            n.group_mut(group).transfer_leader(to);
        }
    }

    /// Snapshots `group` on `node` at what it applied and compacts its log up to there.
    pub fn compact(&mut self, node: u64, group: u32) {
        self.compact_keeping(node, group, 0);
    }

    /// Snapshots `group` on `node` at what it applied, keeping the last `keep` entries it
    /// covers in the log (`trailing_logs`).
    pub fn compact_keeping(&mut self, node: u64, group: u32, keep: u64) {
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        // The harness applies every committed entry in the turn that hands it out, so the
        // state machine is exactly the log up to `applied`.
        let data = encode_state(&n.applied[group as usize]);
        let _ = n.groups.make_snapshot(group, data, Some(keep));
    }

    pub fn voters(&self, node: u64, group: u32) -> Vec<u64> {
        self.nodes[&node].group(group).voters()
    }

    /// One tick of the world: every up node's clock ticks (with seeded jitter), then
    /// `ROUNDS_PER_TICK` rounds of the links delivering and every node running its turn (a
    /// round trip on a network is much shorter than a raft tick).
    pub fn tick(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            // One node in sixteen misses a tick: clocks drift apart.
            let skip = self.random().is_multiple_of(16);
            let node = self.nodes.get_mut(id).expect("listed");
            if node.up && !skip {
                node.groups.tick();
            }
        }
        for _ in 0..ROUNDS_PER_TICK {
            self.step += 1;
            self.deliver();
            for id in &ids {
                self.turn(*id);
            }
            self.check_one_leader_per_term();
        }
    }

    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.tick();
        }
    }

    /// Runs until `done` holds or `limit` steps passed; returns the steps taken.
    pub fn run_until(&mut self, limit: u64, done: impl Fn(&Cluster) -> bool) -> Option<u64> {
        for n in 0..limit {
            if done(self) {
                return Some(n);
            }
            self.tick();
        }
        done(self).then_some(limit)
    }

    fn deliver(&mut self) {
        let keys: Vec<(u64, u64)> = self.links.keys().copied().collect();
        for (from, to) in keys {
            let batches: Vec<Vec<u8>> = self
                .links
                .get_mut(&(from, to))
                .map(|q| q.drain(..).collect())
                .unwrap_or_default();
            for bytes in batches {
                if self.cut.contains(&(from, to)) {
                    continue;
                }
                if self.loss_per_mille > 0 && self.random() % 1000 < self.loss_per_mille {
                    continue;
                }
                let batch = wire::decode_batch(&bytes).expect("a batch this harness encoded");
                assert_eq!((batch.from_node, batch.to_node), (from, to));
                let Some(node) = self.nodes.get_mut(&to) else {
                    continue;
                };
                if !node.up {
                    continue;
                }
                node.groups.receive(&bytes).expect("a batch for this node");
            }
        }
    }

    fn send(&mut self, from: u64, batches: Vec<Outgoing>) {
        for Outgoing { to, bytes, .. } in batches {
            if let Some(recorded) = &mut self.recorded {
                recorded.push(bytes.clone());
            }
            self.links.entry((from, to)).or_default().push_back(bytes);
        }
    }

    /// What a shard's driver does in one turn for its groups.
    fn turn(&mut self, id: u64) {
        if !self.nodes[&id].up {
            return;
        }
        let round = self.step;
        // Writes that landed: appended to the file, then what waited for them goes out.
        loop {
            let node = self.nodes.get_mut(&id).expect("listed");
            let landed = match node.writing.front() {
                Some((at, _)) if *at <= round => node.writing.pop_front().map(|(_, w)| w),
                _ => None,
            };
            let Some(mut write) = landed else { break };
            node.file.append(&mut write.records);
            let after = node.groups.written(write);
            self.send(id, after);
        }
        // Turns: several, since a landed write makes more ready.
        for _ in 0..4 {
            let node = self.nodes.get_mut(&id).expect("listed");
            for g in node.groups.snapshots_wanted() {
                let data = encode_state(&node.applied[g as usize]);
                let _ = node.groups.make_snapshot(g, data, None);
            }
            let turn = node.groups.ready();
            if turn.is_empty() {
                break;
            }
            assert!(turn.errors.is_empty(), "{:?}", turn.errors);
            for (g, s) in &turn.snapshots {
                node.applied[*g as usize] = decode_state(&s.data);
            }
            for (g, e) in &turn.committed {
                apply(&mut node.applied[*g as usize], std::slice::from_ref(e));
            }
            let delay = self.write_delay;
            let write_now = match turn.write {
                Some(w) if delay > 0 => {
                    node.writing.push_back((round + delay, w));
                    None
                }
                other => other,
            };
            self.send(id, turn.send_now);
            for (g, outcome) in turn.outcomes {
                match outcome {
                    Outcome::Committed(token) => {
                        let data = self.proposals.remove(&token).expect("a token we made");
                        self.acknowledged[g as usize].push(data);
                    }
                    Outcome::Lost(token, _) => {
                        self.proposals.remove(&token);
                        self.lost += 1;
                    }
                }
            }
            if let Some(mut write) = write_now {
                let node = self.nodes.get_mut(&id).expect("listed");
                node.file.append(&mut write.records);
                let after = node.groups.written(write);
                self.send(id, after);
            } else if delay > 0 {
                break;
            }
        }
    }

    fn check_one_leader_per_term(&mut self) {
        for node in self.nodes.values().filter(|n| n.up) {
            for g in node.groups.groups() {
                if g.is_leader() {
                    let seen = *self.leaders.entry((g.id(), g.term())).or_insert(node.id);
                    assert_eq!(
                        seen,
                        node.id,
                        "two leaders of group {} in term {}",
                        g.id(),
                        g.term()
                    );
                }
            }
        }
    }

    /// No two nodes applied different data at one position of one group.
    pub fn check_agreement(&self) {
        for g in 0..self.groups as usize {
            let mut longest: &[Bytes] = &[];
            for node in self.nodes.values() {
                let a = &node.applied[g];
                let common = a.len().min(longest.len());
                assert_eq!(
                    &a[..common],
                    &longest[..common],
                    "node {} applied something else in group {g}",
                    node.id
                );
                if a.len() > longest.len() {
                    longest = a;
                }
            }
        }
    }

    /// Every acknowledged proposal is applied on every node that is up, exactly once.
    pub fn check_acknowledged(&self) {
        for g in 0..self.groups as usize {
            for node in self.nodes.values().filter(|n| n.up) {
                let applied: HashMap<&Bytes, usize> =
                    node.applied[g].iter().fold(HashMap::new(), |mut m, d| {
                        *m.entry(d).or_default() += 1;
                        m
                    });
                for data in &self.acknowledged[g] {
                    assert_eq!(
                        applied.get(data).copied().unwrap_or(0),
                        1,
                        "node {} group {g}: acknowledged {:?} applied once",
                        node.id,
                        data
                    );
                }
            }
        }
    }

    /// Every node that is up applied every acknowledged proposal of every group.
    pub fn caught_up(&self) -> bool {
        (0..self.groups as usize).all(|g| {
            self.nodes.values().filter(|n| n.up).all(|n| {
                let applied: HashSet<&Bytes> = n.applied[g].iter().collect();
                self.acknowledged[g].iter().all(|d| applied.contains(d))
            })
        })
    }

    pub fn all_applied(&self, group: u32, count: usize) -> bool {
        self.nodes
            .values()
            .filter(|n| n.up)
            .all(|n| n.applied[group as usize].len() >= count)
    }
}

fn apply(state: &mut Vec<Bytes>, committed: &[Entry]) {
    for e in committed {
        if e.get_entry_type() == raft::prelude::EntryType::EntryNormal && !e.data.is_empty() {
            state.push(e.data.clone());
        }
    }
}

/// The state machine as snapshot data: each entry's data, length-prefixed.
fn encode_state(state: &[Bytes]) -> Bytes {
    let mut out = Vec::new();
    for d in state {
        out.extend_from_slice(&(d.len() as u32).to_le_bytes());
        out.extend_from_slice(d);
    }
    Bytes::from(out)
}

fn decode_state(data: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 4 <= data.len() {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        at += 4;
        out.push(data.slice(at..at + len));
        at += len;
    }
    out
}
