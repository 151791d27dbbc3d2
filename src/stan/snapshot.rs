//! What each core reports for monitoring: its connections and NATS counters, and its shard's
//! channels and subscriptions. Core 0 asks every core (over the mesh) and builds the JSON from
//! the answers, so no figure is read across threads.

use super::streaming::Streaming;
use crate::nats::sublist::SublistStats;
use std::time::SystemTime;

#[derive(Debug, Clone, Default)]
pub struct ConnSnapshot {
    pub cid: u64,
    pub ip: String,
    pub port: u16,
    pub start: Option<SystemTime>,
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub pending_bytes: usize,
    pub subscriptions: Vec<String>,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub user: String,
}

#[derive(Debug, Clone, Default)]
pub struct SubSnapshot {
    pub client_id: String,
    pub inbox: String,
    pub ack_inbox: String,
    pub durable_name: String,
    pub queue_name: String,
    pub is_durable: bool,
    pub is_offline: bool,
    pub max_inflight: usize,
    pub ack_wait_secs: u64,
    pub last_sent: u64,
    pub pending_count: usize,
    pub is_stalled: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ChannelSnapshot {
    pub name: String,
    pub msgs: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub subs: Vec<SubSnapshot>,
}

#[derive(Debug, Clone, Default)]
pub struct CoreSnapshot {
    pub core: usize,
    pub in_msgs: u64,
    pub in_bytes: u64,
    pub out_msgs: u64,
    pub out_bytes: u64,
    pub slow_consumers: u64,
    pub total_connections: u64,
    pub sublist: SublistStats,
    pub conns: Vec<ConnSnapshot>,
    pub stan_in_msgs: u64,
    pub stan_in_bytes: u64,
    pub stan_out_msgs: u64,
    pub stan_out_bytes: u64,
    pub channels: Vec<ChannelSnapshot>,
    /// Registered clients (id, heartbeat inbox): core 0 only, where the registry lives.
    pub clients: Vec<(String, String)>,
    /// Clustered: this core's raft groups.
    pub raft: Vec<crate::stan::cluster::host::GroupStatus>,
}

/// This core's report.
pub fn take(node: &Streaming) -> CoreSnapshot {
    let core = &node.core;
    let s = &core.stats;
    let mut snap = CoreSnapshot {
        core: core.id,
        in_msgs: s.in_msgs.get(),
        in_bytes: s.in_bytes.get(),
        out_msgs: s.out_msgs.get(),
        out_bytes: s.out_bytes.get(),
        slow_consumers: s.slow_consumers.get(),
        total_connections: s.total_connections.get(),
        sublist: core.sublist.borrow().stats(),
        ..Default::default()
    };
    for conn in core.conns.borrow().values() {
        let opts = conn.opts.borrow();
        let peer = conn.peer.get();
        snap.conns.push(ConnSnapshot {
            cid: conn.cid,
            ip: peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            port: peer.map(|p| p.port()).unwrap_or(0),
            start: Some(conn.started),
            in_msgs: conn.in_msgs.get(),
            out_msgs: conn.out_msgs.get(),
            in_bytes: conn.in_bytes.get(),
            out_bytes: conn.out_bytes.get(),
            pending_bytes: conn.pending(),
            subscriptions: conn
                .subs
                .borrow()
                .values()
                .map(|sub| String::from_utf8_lossy(&sub.subject).into_owned())
                .collect(),
            name: opts.name.clone(),
            lang: opts.lang.clone(),
            version: opts.version.clone(),
            user: opts.user.clone().unwrap_or_default(),
        });
    }
    if let Some(host) = node.raft.borrow().as_ref() {
        snap.raft = host.status();
        if !node.role.serving() {
            // A follower has no shard state: its store's channels, as applied.
            for (name, r) in host.stored.borrow().iter() {
                snap.channels.push(ChannelSnapshot {
                    name: name.clone(),
                    msgs: r.msgs,
                    bytes: r.bytes,
                    first_seq: r.first_seq,
                    last_seq: r.last_seq,
                    subs: Vec::new(),
                });
            }
            return snap;
        }
    }
    let shard = node.shard.borrow();
    snap.stan_in_msgs = shard.stats.in_msgs;
    snap.stan_in_bytes = shard.stats.in_bytes;
    snap.stan_out_msgs = shard.stats.out_msgs;
    snap.stan_out_bytes = shard.stats.out_bytes;
    for ch in shard.channels() {
        let mut subs = Vec::new();
        let ids = ch.plain.iter().map(|id| (*id, None)).chain(
            ch.queues
                .values()
                .flat_map(|g| g.members.iter().map(move |id| (*id, Some(g.last_sent)))),
        );
        for (id, group_last_sent) in ids {
            let Some(sub) = shard.subscription(id) else {
                continue;
            };
            subs.push(SubSnapshot {
                client_id: sub.client_id.clone(),
                inbox: String::from_utf8_lossy(&sub.inbox).into_owned(),
                ack_inbox: shard.ack_inbox_of(sub),
                durable_name: sub.durable_name.clone(),
                queue_name: sub.queue.clone(),
                is_durable: sub.is_durable,
                is_offline: sub.offline,
                max_inflight: sub.max_in_flight,
                ack_wait_secs: sub.ack_wait_ns / 1_000_000_000,
                last_sent: group_last_sent.unwrap_or(sub.last_sent),
                pending_count: sub.pending.len(),
                is_stalled: sub.is_stalled(),
            });
        }
        snap.channels.push(ChannelSnapshot {
            name: ch.name.clone(),
            msgs: ch.log.count(),
            bytes: ch.log.bytes(),
            first_seq: ch.log.first_seq(),
            last_seq: ch.log.last_seq(),
            subs,
        });
    }
    if let Some(cp) = &node.control {
        snap.clients = cp.clients_list();
    }
    snap
}
