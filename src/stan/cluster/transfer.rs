//! Snapshots of the streaming state and catching up from them (issue 18.3/18.6). A group's
//! snapshot says what this node's store holds at the snapshot's index: for a partition group,
//! each of its channels' first and last sequence and subscription log; for the metadata
//! group, the client log and the cluster's ack key. No messages are in it: a node installing
//! one deletes the channels it no longer has, fetches the messages it lacks from the leader
//! (`_STAN.raft.<cid>.<leader>.fetch`, answered from the leader's store files, 1 MiB at a
//! time, each request retried up to 10 times after 2 s as the reference's restore does),
//! then takes the subscription logs as they are.

use super::host::{RaftHost, StoredRange};
use crate::stan::messages::ControlMsg;
use crate::stan::streaming::{Streaming, Waiter};
use bytes::Bytes;
use prost::Message as _;
use shards::cluster as pb;
use shards::raft::partitions::group_of_channel;
use shards::raft::snapshot_data::{self, ChannelState, MetaState};
use shards::store::clients;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Messages per fetch answer, at most about this many bytes.
const FETCH_BYTES: u32 = 1 << 20;
/// A fetch unanswered for this long is sent again, up to `FETCH_ATTEMPTS` times.
const FETCH_WAIT: Duration = Duration::from_secs(2);
const FETCH_ATTEMPTS: u32 = 10;

impl Streaming {
    /// What this node's store holds for `group` now (its applied state), as snapshot data.
    pub(super) fn snapshot_data(&self, host: &RaftHost, group: u32) -> Result<Bytes, String> {
        let store = self.store.borrow().clone();
        let Some(dir) = self.opts.streaming.dir.clone() else {
            return Err("no store directory".into());
        };
        if group == 0 {
            let clients_log = match std::fs::read(dir.join(clients::FILE_NAME)) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(format!("reading the client log: {e}")),
            };
            let key = shards::store::file::check_server_file(&dir, &self.subjects.cluster_id)?;
            return Ok(snapshot_data::encode_meta(&MetaState {
                clients_log: Bytes::from(clients_log),
                ack_key: key,
            }));
        }
        let Some(store) = store else {
            return Err("no store open".into());
        };
        let partitions = self.partitions();
        let stored: Vec<(String, StoredRange)> = host
            .stored
            .borrow()
            .iter()
            .filter(|(name, _)| group_of_channel(name.as_bytes(), partitions) == group)
            .map(|(n, r)| (n.clone(), *r))
            .collect();
        let mut channels = Vec::with_capacity(stored.len());
        for (name, range) in stored {
            let subs_log = store
                .subs_log_bytes(&name)
                .map_err(|e| format!("reading the subscriptions of {name:?}: {e}"))?;
            channels.push(ChannelState {
                name,
                first_seq: range.first_seq,
                last_seq: range.last_seq,
                subs_log: Bytes::from(subs_log),
            });
        }
        Ok(snapshot_data::encode_partition(&channels))
    }

    fn partitions(&self) -> u32 {
        self.role.cluster.as_ref().map_or(1, |c| c.partitions)
    }

    /// Makes this node's state what a snapshot of `group` from `leader` says (before the
    /// entries after it are applied).
    pub(super) async fn install_snapshot(
        &self,
        host: &RaftHost,
        group: u32,
        leader: u64,
        data: &[u8],
    ) -> Result<(), String> {
        if group == 0 {
            return self.install_meta_snapshot(data).await;
        }
        let channels = snapshot_data::decode_partition(data)
            .map_err(|e| format!("group {group}: snapshot: {e}"))?;
        let store = self.store.borrow().clone();
        let Some(store) = store else {
            return Err("no store open".into());
        };
        let partitions = self.partitions();
        let mine: Vec<String> = host
            .stored
            .borrow()
            .keys()
            .filter(|name| group_of_channel(name.as_bytes(), partitions) == group)
            .cloned()
            .collect();
        for name in mine {
            if !channels.iter().any(|c| c.name == name) {
                store.delete_channel(&name).await;
                host.stored.borrow_mut().remove(&name);
            }
        }
        for channel in channels {
            let local = host
                .stored
                .borrow()
                .get(&channel.name)
                .copied()
                .unwrap_or_default();
            // Messages this store holds past the snapshot, or a gap before its first: the
            // channel is taken again whole from the leader.
            let gap = local.last_seq + 1 < channel.first_seq;
            if local.msgs > 0 && (gap || local.last_seq > channel.last_seq) {
                store.delete_channel(&channel.name).await;
                host.stored.borrow_mut().remove(&channel.name);
            }
            let have = host
                .stored
                .borrow()
                .get(&channel.name)
                .map_or(0, |r| r.last_seq);
            if channel.last_seq > have && channel.last_seq >= channel.first_seq {
                let from = (have + 1).max(channel.first_seq);
                self.fetch_messages(host, leader, &channel.name, from, channel.last_seq)
                    .await?;
            }
            store
                .replace_subs(&channel.name, channel.subs_log.to_vec())
                .await
                .map_err(|e| format!("subscriptions of {:?}: {e}", channel.name))?;
        }
        log::info!("STAN: raft: group {group}: caught up from a snapshot of node {leader}");
        Ok(())
    }

    async fn install_meta_snapshot(&self, data: &[u8]) -> Result<(), String> {
        let snap = snapshot_data::decode_meta(data)
            .map_err(|e| format!("metadata group: snapshot: {e}"))?;
        let (Some(dir), Some(setup)) = (&self.opts.streaming.dir, &self.role.cluster) else {
            return Err("no store directory".into());
        };
        // The client log is replaced whole (written aside, then renamed), then opened again.
        self.client_log.borrow_mut().take();
        let path = dir.join(clients::FILE_NAME);
        let tmp = dir.join(format!("{}.tmp", clients::FILE_NAME));
        std::fs::write(&tmp, &snap.clients_log)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("replacing {}: {e}", path.display()))?;
        let (log, _) = self.open_client_log(dir, false).await?;
        *self.client_log.borrow_mut() = Some(Rc::new(log));
        shards::store::file::write_server_file(
            dir,
            &self.subjects.cluster_id,
            &snap.ack_key,
            Some(&setup.node_name),
        )?;
        self.role.ack_key_agreed.store(true, Ordering::Release);
        log::info!("STAN: raft: metadata group: caught up from a snapshot");
        Ok(())
    }

    /// Fetches `channel`'s messages `from..=to` from `leader` into this node's store.
    async fn fetch_messages(
        &self,
        host: &RaftHost,
        leader: u64,
        channel: &str,
        mut from: u64,
        to: u64,
    ) -> Result<(), String> {
        let store = self.store.borrow().clone();
        let (Some(store), Some(setup)) = (store, &self.role.cluster) else {
            return Err("no store open".into());
        };
        let subject = self.subjects.raft_fetch(leader);
        while from <= to {
            let request = pb::FetchRequest {
                channel: channel.to_string(),
                from_seq: from,
                to_seq: to,
                max_bytes: FETCH_BYTES,
            };
            let answer = self
                .ask_node(&subject, setup.node_id, Bytes::from(request.encode_to_vec()))
                .await
                .ok_or_else(|| {
                    format!("fetching {channel:?} from node {leader}: no answer after {FETCH_ATTEMPTS} attempts")
                })?;
            let batch = match snapshot_data::decode_fetched(&answer, channel) {
                Ok(Ok(Some(batch))) => batch,
                // The leader holds nothing more (expired since the snapshot).
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(format!("fetching {channel:?} from node {leader}: {e}")),
                Err(e) => return Err(format!("fetching {channel:?} from node {leader}: {e}")),
            };
            let got = (batch.first_seq, batch.msgs);
            if got.0 < from {
                return Err(format!(
                    "fetching {channel:?} from node {leader}: answered from {} when asked from {from}",
                    got.0
                ));
            }
            if got.0 > from && host.stored.borrow().contains_key(channel) {
                // Older messages are gone on the leader: the channel restarts where it has
                // them.
                store.delete_channel(channel).await;
                host.stored.borrow_mut().remove(channel);
            }
            let out = super::driver::store_batch(host, &store, batch).await;
            if let Some((_, e)) = out.failed.first() {
                return Err(format!("storing fetched messages of {channel:?}: {e}"));
            }
            from = got.0 + got.1;
        }
        Ok(())
    }

    /// A request to another node on `subject`, answered on this core's fetch inbox; sent
    /// again after `FETCH_WAIT` without an answer, `FETCH_ATTEMPTS` times at most.
    async fn ask_node(&self, subject: &str, me: u64, payload: Bytes) -> Option<Bytes> {
        for _ in 0..FETCH_ATTEMPTS {
            let answer = self
                .ask_once(subject, me, payload.clone(), FETCH_WAIT)
                .await;
            if answer.is_some() {
                return answer;
            }
        }
        None
    }

    /// One request on `subject`, answered on this core's inbox for raft answers within `wait`.
    pub(super) async fn ask_once(
        &self,
        subject: &str,
        me: u64,
        payload: Bytes,
        wait: Duration,
    ) -> Option<Bytes> {
        let waiter = Rc::new(Waiter::default());
        let (_, token) = self.new_reply_inbox(|_| false);
        self.waiters.borrow_mut().insert(token, waiter.clone());
        let inbox = format!(
            "{}{token}",
            self.subjects.raft_fetched_prefix(me, self.core.id)
        );
        self.publish(subject.as_bytes(), Some(inbox.as_bytes()), &payload);
        if self.wait_answer(token, &waiter, wait).await {
            return waiter.answers.borrow_mut().pop();
        }
        None
    }

    /// A fetch for this node: answered by the core that owns the channel.
    pub(in crate::stan) fn on_raft_fetch(&self, node: u64, payload: Bytes, reply: Option<Bytes>) {
        let Some(setup) = &self.role.cluster else {
            return;
        };
        if node != setup.node_id {
            return;
        }
        let Ok(request) = pb::FetchRequest::decode(payload.clone()) else {
            return;
        };
        let core = self.core_of_channel(request.channel.as_bytes());
        if core == self.core.id {
            self.answer_fetch(&payload, reply);
        } else {
            self.send_control(core, ControlMsg::RaftFetch { payload, reply });
        }
    }

    /// Answers a fetch from this core's store: whole records from the asked sequence on,
    /// none past `to_seq`.
    pub(in crate::stan) fn answer_fetch(&self, payload: &[u8], reply: Option<Bytes>) {
        let Some(reply) = reply else {
            return;
        };
        let Ok(request) = pb::FetchRequest::decode(payload) else {
            return;
        };
        let store = self.store.borrow().clone();
        let answer = match store {
            None => snapshot_data::encode_fetched(0, 0, Vec::new(), "no store open"),
            Some(store) => {
                let max = request.max_bytes.clamp(1, FETCH_BYTES) as usize;
                match store.read_records(&request.channel, request.from_seq, max) {
                    Ok(found) => {
                        let found = found.up_to(request.to_seq);
                        snapshot_data::encode_fetched(
                            found.first_seq,
                            found.msgs,
                            found.records,
                            "",
                        )
                    }
                    Err(e) => snapshot_data::encode_fetched(0, 0, Vec::new(), &e.to_string()),
                }
            }
        };
        self.publish(&reply, None, &answer);
    }
}
