//! The driver of one core's shard: the only code that carries out what the shard asks for
//! (`Shard::ready`) and tells it how that went (`Shard::advance`, `Shard::loaded`). It sends
//! output that waits for nothing at once, runs commits (one task at a time: files to delete,
//! records to write, then the held output released), starts reads from disk in the replay task
//! queue, and ticks the shard. Requests reach the shard through `Streaming` (routing), which calls
//! `flush` after each batch.

use super::streaming::Streaming;
use super::time;
use bytes::Bytes;
use shards::shard::{ChannelDirectory, Commit, Input, OwedAcks, Ready};
use shards::store::file::{FileStore, SliceLimits, WriteOutcome};
use shards::store::file_log::ReadPlan;
use std::rc::Rc;
use std::time::Duration;

/// Ticks between sweeps of the file store for slices of expired messages (about 1 s).
const SLICE_SWEEP_TICKS: u64 = 50;

/// A failed read: its messages, marked unreadable (delivery stops before them).
fn unreadable(plan: &ReadPlan) -> Vec<shards::store::StoredMsg> {
    (0..plan.offsets.len() as u64)
        .map(|i| shards::store::StoredMsg {
            seq: plan.first_seq + i,
            timestamp: 0,
            encoded: Bytes::new(),
        })
        .collect()
}

/// What the driver does after carrying out a `Ready`.
enum Next {
    /// Write the commit that is due.
    Commit,
    /// Ask the shard again (granted channels let waiting requests go on).
    Again,
    Done,
}

impl Streaming {
    /// Carries out what the shard wants done now. A commit is left to its own task, which
    /// first lets the rest of this turn's requests join it (one write per channel per turn);
    /// while it runs, output waits behind it.
    pub fn flush(&self) {
        if self.committing.get() {
            return;
        }
        loop {
            let ready = self.shard.borrow_mut().ready();
            match self.carry_out(ready) {
                Next::Commit => {
                    self.start_commit();
                    return;
                }
                Next::Again => continue,
                Next::Done => return,
            }
        }
    }

    /// Sends what waits for nothing, starts the reads, hands deleted channels back and answers
    /// the grants asked for (on one server: the channel directory, at once); says what comes
    /// next.
    fn carry_out(&self, ready: Ready) -> Next {
        let Ready {
            mut send,
            released,
            grants,
            misplaced_acks,
            write_due,
            reads,
        } = ready;
        for o in send.drain(..) {
            self.publish_out(&o);
        }
        self.start_reads(reads);
        let mut shard = self.shard.borrow_mut();
        shard.recycle(send);
        for name in &released {
            self.dir.unregister(name);
        }
        if !grants.is_empty() {
            let now = time::now();
            for channel in &grants {
                let result = self.dir.register(channel);
                shard.step(now, Input::Granted { channel, result });
            }
        }
        drop(shard);
        for (subject, payload) in misplaced_acks {
            self.pass_ack_to_owner(subject, payload, false);
        }
        if write_due {
            Next::Commit
        } else if grants.is_empty() {
            Next::Done
        } else {
            // What waited for the channels went on: it may want more.
            Next::Again
        }
    }

    fn start_commit(&self) {
        self.committing.set(true);
        if let Some(me) = self.rc() {
            glommio::spawn_local(async move { me.commit_loop(true).await }).detach();
        }
    }

    /// The tick: the shard's timers, then what they made it want; sends and acks journaled
    /// since the last commit are written now (they hold no output back, so they wait for a
    /// commit of messages or for this).
    pub(super) fn tick(&self) {
        let now = time::now();
        self.last_now.set(now);
        {
            let mut shard = self.shard.borrow_mut();
            shard.step(now, Input::Tick);
            shard.write_journal_soon();
        }
        self.flush();
        self.tick_control();
        // About once a second: slices whose messages aged out (max_age) on channels that
        // receive nothing new are deleted too.
        let n = self.ticks.get().wrapping_add(1);
        self.ticks.set(n);
        if n.is_multiple_of(SLICE_SWEEP_TICKS) {
            let store = self.store.borrow().clone();
            if let Some(store) = store {
                let names = self.shard.borrow().channel_names();
                for name in names {
                    self.drop_emptied_slices(&store, &name);
                }
            }
        }
    }

    /// Deletes (or archives) the slices of `channel` that hold only messages its limits
    /// dropped.
    pub(super) fn drop_emptied_slices(&self, store: &FileStore, channel: &str) {
        let first = self
            .shard
            .borrow()
            .channel(channel)
            .map(|c| c.log.first_seq());
        if let Some(first) = first {
            store.drop_slices_before(channel, first);
        }
    }

    /// Reads back from disk what catching-up subscribers wait for, each read in its own task
    /// (in the replay queue); the messages go to the shard, which delivers them. The shard
    /// hands out reads only once the store is in place (`Shard::start_reading`).
    fn start_reads(&self, plans: Vec<(String, ReadPlan)>) {
        if plans.is_empty() {
            return;
        }
        let store = self.store.borrow().clone();
        let (Some(store), Some(me)) = (store, self.rc()) else {
            log::error!("STAN: reads from disk wanted with no store open");
            return;
        };
        for (channel, plan) in plans {
            let (store, me) = (store.clone(), me.clone());
            let task = async move {
                let msgs = match store.read_block(&channel, &plan).await {
                    Ok(buf) => {
                        let (msgs, bad) = shards::store::file_log::parse_read(&plan, &buf);
                        let path = store.slice_path(&channel, plan.slice);
                        for (offset, why) in bad {
                            log::error!(
                                "STAN: {}: {why} at offset {offset}: a damaged message of channel {channel:?}; its subscribers stop before it (nothing is delivered past it until the channel's limits drop it)",
                                path.display()
                            );
                        }
                        msgs
                    }
                    Err(e) => {
                        log::error!(
                            "STAN: reading channel {channel:?} (slice {}, bytes {}..{}) failed: {e}; its subscribers stop before those messages (a restart reads them again)",
                            plan.slice,
                            plan.start,
                            plan.end
                        );
                        unreadable(&plan)
                    }
                };
                let loaded = Input::Loaded {
                    channel: &channel,
                    first_seq: plan.first_seq,
                    msgs,
                };
                me.shard.borrow_mut().step(time::now(), loaded);
                me.flush();
            };
            let spawned = match self.replay_queue.get() {
                Some(q) => glommio::spawn_local_into(task, q).map(|t| {
                    t.detach();
                }),
                None => {
                    glommio::spawn_local(task).detach();
                    Ok(())
                }
            };
            if let Err(e) = spawned {
                log::error!("STAN: cannot start a read from disk: {e}");
            }
        }
    }

    /// Writes commits until the shard wants none, each one's held output released only once
    /// the write is done. `gather`: let the rest of this turn's requests join the first one.
    async fn commit_loop(self: Rc<Self>, gather: bool) {
        if gather {
            futures_lite::future::yield_now().await;
        }
        let store = self.store.borrow().clone();
        loop {
            if self.role.cluster.is_some() && !self.role.serving() {
                // A clustered node that stopped serving writes nothing more (its shard is
                // about to be emptied; the next leader has what was committed).
                break;
            }
            let commit = self.shard.borrow_mut().take_commit();
            if let Some(commit) = commit {
                self.write_commit(store.as_deref(), commit).await;
            }
            let ready = self.shard.borrow_mut().ready();
            match self.carry_out(ready) {
                Next::Commit | Next::Again => continue,
                Next::Done => break,
            }
        }
        self.committing.set(false);
    }

    async fn write_commit(&self, store: Option<&FileStore>, commit: Commit) {
        let Commit {
            deleted,
            mut batches,
            held,
        } = commit;
        let clustered = self.role.cluster.is_some();
        if let Some(s) = store {
            if !clustered {
                for channel in &deleted {
                    s.delete_channel(channel).await;
                }
            }
            for batch in &mut batches {
                batch.slice_limits = self.auto_slice_limits(s, &batch.channel);
            }
        }
        let written: Vec<String> = batches.iter().map(|b| b.channel.clone()).collect();
        // Clustered, every node (this one too) compacts subscription logs from its own
        // records as it applies committed entries (`cluster/driver.rs`): the shard may hold
        // sends and acks that are not committed yet.
        let with_subs: Vec<String> = batches
            .iter()
            .filter(|b| b.sub_records > 0 && !clustered)
            .map(|b| b.channel.clone())
            .collect();
        // Clustered, the batches go through the channels' raft groups, and every node (this
        // one too) writes them once committed: the PubAcks then mean a quorum has them.
        let outcome = match store {
            Some(_) if clustered => self.replicate_commit(&deleted, batches).await,
            Some(s) => s.write(batches).await,
            None => WriteOutcome::default(),
        };
        let released = self.shard.borrow_mut().advance(time::now(), held, &outcome);
        if let Some(s) = store {
            for channel in &written {
                self.drop_emptied_slices(s, channel);
            }
            self.compact_subs(s, &with_subs).await;
        }
        for o in &released.out {
            self.publish_out(o);
        }
        for (acks, error) in &released.pub_acks {
            self.send_pub_acks(acks, error);
        }
    }

    /// With no slice limit configured, a channel's slices follow its own limits: a quarter of
    /// each (the reference's automatic limits).
    fn auto_slice_limits(&self, store: &FileStore, channel: &str) -> Option<SliceLimits> {
        let configured = store.slice_limits();
        if !configured.is_unset() {
            return None;
        }
        let shard = self.shard.borrow();
        let limits = shard.channel(channel)?.limits;
        Some(configured.auto_for(
            u64::try_from(limits.max_msgs).unwrap_or(0),
            u64::try_from(limits.max_bytes).unwrap_or(0),
            limits.max_age,
        ))
    }

    /// Compacts the subscription logs (of channels just written to) that the compact* options
    /// say are due. Runs in the commit task, the logs' only writer.
    async fn compact_subs(&self, store: &FileStore, channels: &[String]) {
        for channel in channels {
            let live = self.shard.borrow().sub_live_records(channel);
            if store.subs_compaction_due(channel, live) {
                let (contents, records) = self.shard.borrow().sub_snapshot(channel);
                store.rewrite_subs(channel, contents, records).await;
            }
        }
    }

    /// Clean shutdown of the file store: the journal's sends and acks not written yet go to
    /// disk before the files close.
    pub async fn close_store(&self) {
        if let Some(me) = self.rc() {
            self.commit_settled().await;
            // Clustered, the raft groups have stopped by now: what the journal holds is not
            // replicated (the next leader redelivers what it does not know was acknowledged).
            if !self.committing.get() && self.role.cluster.is_none() {
                self.shard.borrow_mut().write_journal_soon();
                if self.shard.borrow().wants_write() {
                    self.committing.set(true);
                    me.commit_loop(false).await;
                }
            }
        }
        let store = self.store.borrow().clone();
        if let Some(s) = store {
            s.close().await;
        }
    }

    /// Waits (at most 2 s) for the commit in progress, if any, to end.
    pub(super) async fn commit_settled(&self) {
        for _ in 0..200 {
            if !self.committing.get() {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends the PubAcks a commit owed, with `error` (empty: stored). Their payloads are
    /// encoded into one buffer, each sent as a part of it.
    fn send_pub_acks(&self, acks: &OwedAcks, error: &str) {
        if acks.is_empty() {
            return;
        }
        let (payloads, ends) = acks.encode(error);
        let mut start = 0;
        for ((reply, _), end) in acks.iter().zip(ends) {
            self.publish_with(reply, None, None, &payloads[start..end], &payloads);
            start = end;
        }
    }
}
