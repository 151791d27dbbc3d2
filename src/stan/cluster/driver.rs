//! One core's raft loop: ticks, received batches and proposals make turns; each turn's
//! batches go out at once, its records are appended to the raft log, then what waited for
//! the append goes out, committed entries are applied to this node's store (every node, the
//! leader included: the store is the state machine), and proposals are answered. Between
//! turns the core changes role when core 0 asks (`serving.rs`): it opens its store as the
//! serving node (recovered into the shard, exactly as at a restart), or stands down (the
//! shard emptied, the store opened for applying only).

use super::host::RaftHost;
use super::proposals::Settled;
use super::setup::TICK;
use crate::stan::messages::ControlMsg;
use crate::stan::role::State;
use crate::stan::streaming::Streaming;
use bytes::Bytes;
use shards::ack_key::AckKey;
use shards::raft::group::{LEADERSHIP_LOST, NOT_LEADER};
use shards::raft::meta_entry::{self, MetaOp};
use shards::raft::partition_entry::{self, PartitionOp};
use shards::raft::{Entry, EntryType, Turn};
use shards::shard::{ChannelDirectory, Shard};
use shards::store::file::{ChannelBatch, WriteOutcome};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a proposal waits for its group's leadership to come to this node.
const LEADERSHIP_WAIT: Duration = Duration::from_secs(1);

/// A role change core 0 asked this core for, carried out between turns.
pub enum Transition {
    Serve {
        from: usize,
        token: u64,
        key: AckKey,
    },
    StandDown {
        from: usize,
        token: u64,
    },
}

/// Ends the process after an entry this node cannot apply: going on would leave its store
/// without a committed entry (the reference stops too); a restart applies it again.
fn cannot_apply(what: &str) -> ! {
    super::stop(&format!(
        "STAN: raft: {what}; this node stops (a restart applies the log again)"
    ))
}

/// Writes a channel batch (a committed entry's, or messages fetched from the leader) to this
/// node's store and records what landed in `host.stored`.
pub(super) async fn store_batch(
    host: &RaftHost,
    store: &shards::store::file::FileStore,
    batch: ChannelBatch,
) -> WriteOutcome {
    let channel = batch.channel.clone();
    let body_bytes = (batch.records.len() as u64)
        .saturating_sub(batch.msgs * shards::store::record::HEADER_LEN as u64);
    let out = store.write(vec![batch]).await;
    // Known from here on even without messages (a channel of subscriptions only).
    let mut stored = host.stored.borrow_mut();
    let range = stored.entry(channel).or_default();
    for (_, landed) in &out.landed {
        range.took(landed.first_seq, landed.msgs, body_bytes);
    }
    drop(stored);
    out
}

impl Streaming {
    /// Core 0 asked for a role change: it happens between turns of the raft loop.
    pub(in crate::stan) fn request_transition(
        &self,
        from: usize,
        token: u64,
        serve: Option<AckKey>,
    ) {
        let host = self.raft.borrow().clone();
        let Some(host) = host else {
            self.send_control(
                from,
                ControlMsg::ClusterReport {
                    token,
                    result: Err("raft groups not open".into()),
                },
            );
            return;
        };
        *host.transition.borrow_mut() = Some(match serve {
            Some(key) => Transition::Serve { from, token, key },
            None => Transition::StandDown { from, token },
        });
        host.wake();
    }

    /// The raft loop of this core, for the life of the core.
    pub(super) async fn drive_raft(self: Rc<Self>, host: Rc<RaftHost>) {
        let send = |subject: &str, bytes: Bytes| {
            self.publish(subject.as_bytes(), None, &bytes);
        };
        let mut next_tick = Instant::now() + TICK;
        loop {
            host.wait(next_tick).await;
            if Instant::now() >= next_tick {
                host.tick(self.role.metadata_leader.load(Ordering::Acquire));
                next_tick += TICK;
                if next_tick < Instant::now() {
                    // A stalled core does not tick in a burst afterwards.
                    next_tick = Instant::now() + TICK;
                }
            }
            let transition = host.transition.borrow_mut().take();
            if let Some(t) = transition {
                self.carry_out_transition(&host, t).await;
            }
            for (group, keep) in host.snapshots_due() {
                match self.snapshot_data(&host, group) {
                    Ok(data) => host.make_snapshot(group, data, keep),
                    Err(e) => log::error!("STAN: raft: snapshot of group {group}: {e}"),
                }
            }
            host.rewrite_when_mostly_dead().await;
            loop {
                let turn = host.ready();
                if turn.is_empty() {
                    break;
                }
                self.raft_turn(&host, turn, &send).await;
            }
            if let Some(leader) = host.metadata_leader() {
                self.role.metadata_leader.store(leader, Ordering::Release);
            }
            if let Some(flag) = self.role.cores_leading.get(self.core.id) {
                flag.store(host.leads_everything(), Ordering::Release);
            }
        }
    }

    async fn raft_turn(&self, host: &RaftHost, turn: Turn, send: &impl Fn(&str, Bytes)) {
        let Turn {
            send_now,
            write,
            snapshots,
            committed,
            outcomes,
            roles,
            errors,
        } = turn;
        host.send_all(send_now, send);
        let built_shard = matches!(
            self.role.state(),
            State::ClusterActivating | State::ClusterLeader
        );
        if host.note_roles(roles) && built_shard {
            // A partition's entries may now commit under another leader, after this node's
            // shard took their sequences back: the shard no longer matches the log, so the
            // node stops serving and, once it leads again, rebuilds it from the store.
            log::warn!("STAN: raft: this node lost the leadership of a partition while serving");
            self.role.partition_lost.store(true, Ordering::Release);
        }
        if let Some(e) = errors.first() {
            cannot_apply(&e.to_string());
        }
        // A received snapshot is installed (the messages it says this node lacks fetched from
        // the leader) before the turn's records are written: a node that fails to stops
        // without the snapshot in its log, and tries again when restarted.
        for (group, snapshot) in &snapshots {
            let leader = host.leader_of(*group);
            if let Err(e) = self
                .install_snapshot(host, *group, leader, &snapshot.data)
                .await
            {
                cannot_apply(&format!("group {group}: installing a snapshot: {e}"));
            }
        }
        if let Some(write) = write {
            let after = host.append(write).await;
            host.send_all(after, send);
        }
        for (group, entry) in committed {
            self.apply_entry(host, group, entry).await;
        }
        for (_, outcome) in outcomes {
            host.proposals.outcome(outcome);
        }
    }

    async fn apply_entry(&self, host: &RaftHost, group: u32, entry: Entry) {
        if entry.data.is_empty() || entry.get_entry_type() != EntryType::EntryNormal {
            return;
        }
        let outcome = if group == 0 {
            self.apply_meta(&entry.data).await;
            WriteOutcome::default()
        } else {
            self.apply_partition(host, group, &entry.data).await
        };
        host.proposals.applied(group, entry.index, outcome);
    }

    async fn apply_partition(&self, host: &RaftHost, group: u32, data: &[u8]) -> WriteOutcome {
        let op = match partition_entry::decode(data) {
            Ok(op) => op,
            Err(e) => cannot_apply(&format!("group {group}: {e}")),
        };
        let store = self.store.borrow().clone();
        let Some(store) = store else {
            cannot_apply(&format!(
                "group {group}: no store open to apply an entry to"
            ));
        };
        match op {
            PartitionOp::Batch(batch) => {
                let last = host
                    .stored
                    .borrow()
                    .get(&batch.channel)
                    .map_or(0, |r| r.last_seq);
                let batch = partition_entry::without_stored(batch, last);
                if batch.msgs == 0 && batch.sub_records == 0 {
                    return WriteOutcome::default();
                }
                let channel = batch.channel.clone();
                let with_subs = batch.sub_records > 0;
                let out = store_batch(host, &store, batch).await;
                if let Some((name, e)) = out.failed.first().or(out.subs_failed.first()) {
                    cannot_apply(&format!("cannot store channel {name:?}: {e}"));
                }
                // The subscription log holds exactly what was committed: compacted from
                // itself, on the leader as on the followers.
                if with_subs && store.subs_log_compaction_due(&channel) {
                    store.compact_subs_from_log(&channel).await;
                }
                out
            }
            PartitionOp::Delete(channel) => {
                store.delete_channel(&channel).await;
                host.stored.borrow_mut().remove(&channel);
                WriteOutcome::default()
            }
        }
    }

    async fn apply_meta(&self, data: &[u8]) {
        let op = match meta_entry::decode(data) {
            Ok(op) => op,
            Err(e) => cannot_apply(&format!("metadata group: {e}")),
        };
        let log = self.client_log.borrow().clone();
        match op {
            MetaOp::ClientAdded(client) => {
                if let Some(log) = log {
                    if let Err(e) = log.add(&client).await {
                        cannot_apply(&format!("cannot store client {:?}: {e}", client.id));
                    }
                }
            }
            MetaOp::ClientRemoved(id) => {
                if let Some(log) = log {
                    if let Err(e) = log.remove(&id).await {
                        cannot_apply(&format!("cannot store the removal of client {id:?}: {e}"));
                    }
                }
            }
            MetaOp::AckKey(key) => {
                let (Some(dir), Some(setup)) = (&self.opts.streaming.dir, &self.role.cluster)
                else {
                    return;
                };
                let written = shards::store::file::write_server_file(
                    dir,
                    &self.subjects.cluster_id,
                    &key,
                    Some(&setup.node_name),
                );
                if let Err(e) = written {
                    cannot_apply(&format!("cannot store the cluster's ack key: {e}"));
                }
                self.role.ack_key_agreed.store(true, Ordering::Release);
            }
            MetaOp::NodeAdded { node, cores } => {
                log::debug!("STAN: raft: node {node} ({cores} cores) added");
            }
            MetaOp::NodeRemoved(node) => log::debug!("STAN: raft: node {node} removed"),
        }
    }

    async fn carry_out_transition(self: &Rc<Self>, host: &RaftHost, t: Transition) {
        let (from, token, result) = match t {
            Transition::Serve { from, token, key } => {
                (from, token, self.serve_from_store(host, key).await)
            }
            Transition::StandDown { from, token } => (from, token, self.stand_down(host).await),
        };
        self.send_control(from, ControlMsg::ClusterReport { token, result });
    }

    /// Opens the store as the serving node: the apply-only store closes, and the shard
    /// (empty: nothing was served since it was made) recovers the store as a restart does.
    async fn serve_from_store(self: &Rc<Self>, host: &RaftHost, key: AckKey) -> Result<(), String> {
        let store = self.store.borrow_mut().take();
        if let Some(s) = store {
            s.close().await;
        }
        self.client_log.borrow_mut().take();
        self.activate(key).await?;
        let mut stored = host.stored.borrow_mut();
        stored.clear();
        for c in self.shard.borrow().channels() {
            let range = super::host::StoredRange {
                first_seq: c.log.first_seq(),
                last_seq: c.log.last_seq(),
                msgs: c.log.count(),
                bytes: c.log.bytes(),
            };
            stored.insert(c.name.clone(), range);
        }
        Ok(())
    }

    /// Stops serving: proposals waiting fail with the reference's text, the shard and the
    /// control plane forget everything (the next leader has it), and the store is opened for
    /// applying only.
    async fn stand_down(self: &Rc<Self>, host: &RaftHost) -> Result<(), String> {
        host.proposals.fail_all(LEADERSHIP_LOST);
        self.commit_settled().await;
        let names = self.shard.borrow().channel_names();
        for name in &names {
            self.dir.unregister(name);
        }
        *self.shard.borrow_mut() = Shard::new(self.shard_config.clone());
        if let Some(cp) = &self.control {
            cp.reset(&self.opts.streaming);
        }
        let store = self.store.borrow_mut().take();
        if let Some(s) = store {
            s.close().await;
        }
        self.client_log.borrow_mut().take();
        let external = self.external.borrow().clone();
        match external {
            // With -ns: the requests and this core's inboxes are left to the next leader.
            Some(ext) => {
                ext.unsubscribe(&format!("{}>", self.subjects.ack_prefix(self.core.id)));
                ext.unsubscribe(&format!("{}>", self.subjects.reply_prefix(self.core.id)));
                if self.core.id == 0 {
                    for subject in self.subjects.request_subjects(self.partition_channels()) {
                        ext.unsubscribe(&subject);
                    }
                }
            }
            None if self.core.id == 0 => self.core.routes.set_internal(self.served_subjects()),
            None => {}
        }
        self.open_store_for_applying(host).await
    }

    /// Opens this core's part of the store to apply committed entries to it: every channel's
    /// end found (where the next records go, the last sequence it holds), nothing loaded into
    /// the shard; core 0 also opens the client log.
    pub(super) async fn open_store_for_applying(&self, host: &RaftHost) -> Result<(), String> {
        let s = &self.opts.streaming;
        let Some(dir) = s.dir.clone() else {
            return Err("clustering needs a FILE store with a directory".into());
        };
        let store = self.open_file_store(&dir).await?;
        let me = self.core.id;
        let recovered = self.recover_own_channels(&store).await?;
        let mut stored = fxhash::FxHashMap::default();
        for r in recovered {
            let mut range = super::host::StoredRange::default();
            for slice in r.slices.iter().filter(|s| !s.is_empty()) {
                let msgs = slice.last_seq() + 1 - slice.first_seq;
                range.took(slice.first_seq, msgs, slice.body_bytes());
            }
            stored.insert(r.name.clone(), range);
            store
                .open_subs(&r.name, r.subs_log, None)
                .await
                .map_err(|e| {
                    format!(
                        "cannot open the subscriptions log of channel {:?}: {e}",
                        r.name
                    )
                })?;
        }
        *host.stored.borrow_mut() = stored;
        *self.store.borrow_mut() = Some(Rc::new(store));
        if me == 0 {
            let (log, _) = self.open_client_log(&dir, s.file.truncate_bad_eof).await?;
            *self.client_log.borrow_mut() = Some(Rc::new(log));
        }
        Ok(())
    }

    /// The leader's commit: each channel batch (and deletion) proposed to its partition's
    /// group, answered once committed on a quorum and applied here (its `WriteOutcome`), or
    /// with the reference's error for every channel of an entry not known to be committed.
    pub(in crate::stan) async fn replicate_commit(
        &self,
        deleted: &[String],
        batches: Vec<ChannelBatch>,
    ) -> WriteOutcome {
        let mut out = WriteOutcome::default();
        let host = self.raft.borrow().clone();
        let Some(host) = host else {
            return out;
        };
        let partitions = self.role.cluster.as_ref().map_or(1, |c| c.partitions);
        let group_of =
            |name: &str| shards::raft::partitions::group_of_channel(name.as_bytes(), partitions);
        let mut waiting = Vec::new();
        for channel in deleted {
            let entry = partition_entry::encode_delete(channel);
            match self
                .propose_when_leading(&host, group_of(channel), entry)
                .await
            {
                Ok(w) => waiting.push((None, w)),
                Err(e) => {
                    log::error!("STAN: raft: deletion of channel {channel:?} not replicated: {e}")
                }
            }
        }
        for batch in batches {
            let channel = batch.channel.clone();
            let entry = partition_entry::encode_batch(&batch);
            match self
                .propose_when_leading(&host, group_of(&channel), entry)
                .await
            {
                Ok(w) => waiting.push((Some(channel), w)),
                Err(e) => out.failed.push((channel, std::io::Error::other(e))),
            }
        }
        for (channel, w) in waiting {
            match (w.settled().await, channel) {
                (Settled::Applied(applied), _) => {
                    out.landed.extend(applied.landed);
                    out.failed.extend(applied.failed);
                    out.subs_failed.extend(applied.subs_failed);
                }
                (Settled::Lost(why), Some(channel)) => {
                    out.failed.push((channel, std::io::Error::other(why)))
                }
                (Settled::Lost(why), None) => {
                    log::error!("STAN: raft: a channel deletion was not replicated: {why}")
                }
            }
        }
        out
    }

    /// Proposes on `group`, waiting a moment (while this node serves) for its leadership if
    /// the group is not led here yet (it is being handed over after an election), then the
    /// reference's `node is not the leader`.
    async fn propose_when_leading(
        &self,
        host: &RaftHost,
        group: u32,
        data: Bytes,
    ) -> Result<Rc<super::proposals::Waiter>, String> {
        let deadline = Instant::now() + LEADERSHIP_WAIT;
        loop {
            match host.propose(group, data.clone()) {
                Err(e) if e == NOT_LEADER && self.role.serving() && Instant::now() < deadline => {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }

    /// The control plane's change of the client registry, through the metadata group;
    /// applied (to `clients.dat`) on every node once committed.
    pub(in crate::stan) async fn replicate_meta(&self, op: &MetaOp) -> Result<(), String> {
        let host = self.raft.borrow().clone();
        let Some(host) = host else {
            return Err("raft groups not open".into());
        };
        let waiter = self
            .propose_when_leading(&host, 0, meta_entry::encode(op))
            .await?;
        match waiter.settled().await {
            Settled::Applied(_) => Ok(()),
            Settled::Lost(why) => Err(why),
        }
    }
}
