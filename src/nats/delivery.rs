//! How a message reaches subscribers: local ones written straight into their connections'
//! output (with nats-server's stall rules for slow consumers), other cores through the mesh,
//! routes as one `RMSG` per peer (`RouteFanout`); a queue group gets each message once.

use super::core::*;
use super::mesh_msg::{MeshMsg, Routed};
use crate::nats::sublist::MatchResult;
use crate::nats::wire;
use crate::util::timeout::within;
use bytes::Bytes;
use std::rc::Rc;
use std::time::Instant;

/// One route a message goes to: the connection and the queue groups chosen for it (plain
/// interest needs no mark: being listed sends the `RMSG`).
type RouteTarget = (Rc<ClientConn>, Vec<Bytes>);

/// Upper bound of the per-subscriber output that makes a producer wait.
pub(super) const MAX_STALL_THRESHOLD: usize = 4 << 20;

/// Longest a fast producer waits for one stalled subscriber (nats-server 2.9's
/// `stallClientMaxDuration`).
pub(super) const STALL_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a subscription is a route's (interest of another server).
pub(super) fn is_route_sub(sub: &LocalSub) -> bool {
    sub.conn.upgrade().is_some_and(|c| c.route.get())
}

/// The routes one message goes to: each at most once, with the queue groups chosen for it
/// (nats-server sends one `RMSG` per route carrying the union of its queue names).
#[derive(Default)]
pub(super) struct RouteFanout(pub(super) smallvec::SmallVec<[RouteTarget; 2]>);

impl RouteFanout {
    pub(super) fn entry(&mut self, sub: &LocalSub) -> Option<&mut RouteTarget> {
        let conn = sub.conn.upgrade().filter(|c| !c.is_closed())?;
        let at = match self.0.iter().position(|(c, _)| c.cid == conn.cid) {
            Some(at) => at,
            None => {
                self.0.push((conn, Vec::new()));
                self.0.len() - 1
            }
        };
        self.0.get_mut(at)
    }

    pub(super) fn plain(&mut self, sub: &LocalSub) -> bool {
        self.entry(sub).is_some()
    }

    pub(super) fn queue(&mut self, sub: &LocalSub, group: &Bytes) -> bool {
        match self.entry(sub) {
            Some((_, queues)) => {
                if !queues.contains(group) {
                    queues.push(group.clone());
                }
                true
            }
            None => false,
        }
    }

    pub(super) fn write(self, msg: &MsgRef<'_>) {
        for (conn, queues) in self.0 {
            {
                let mut out = conn.out.borrow_mut();
                crate::nats::route_proto::push_msg(
                    &mut out,
                    msg.subject,
                    msg.reply,
                    &queues,
                    msg.header_len,
                    msg.payload,
                    conn.route_headers.get(),
                );
            }
            bump(&conn.out_msgs, 1);
            bump(&conn.out_bytes, msg.payload.len() as u64);
            conn.wake_writer.notify();
        }
    }
}

pub(super) struct RouteMemo {
    pub(super) subject: Vec<u8>,
    pub(super) generations: (u64, u64),
    pub(super) local: Rc<MatchResult<SubRef>>,
    pub(super) remote: Rc<MatchResult<usize>>,
}

impl Core {
    /// Writes one message to a local subscriber; false if it could not take it.
    pub(super) fn deliver(&self, sub: &Rc<LocalSub>, msg: &MsgRef<'_>) -> bool {
        self.deliver_as(sub, msg, false)
    }

    /// `forwarded`: sent on by the core the connection left, ahead of any held output.
    pub(super) fn deliver_as(&self, sub: &Rc<LocalSub>, msg: &MsgRef<'_>, forwarded: bool) -> bool {
        let Some(conn) = sub.conn.upgrade() else {
            return false;
        };
        if let Some(to) = conn.moved_to.get() {
            self.outbox.push(
                to,
                MeshMsg::ToConn {
                    cid: conn.cid,
                    sid: sub.sid.clone(),
                    msg: Routed {
                        subject: msg.share(msg.subject),
                        reply: msg.reply.map(|r| msg.share(r)),
                        header_len: msg.header_len,
                        payload: msg.share(msg.payload),
                        plain: true,
                        queues: Vec::new(),
                    },
                },
            );
            return true;
        }
        if conn.is_closed() {
            return false;
        }
        let max = sub.max.get();
        let delivered = sub.delivered.get() + 1;
        if max > 0 && delivered > max {
            return false;
        }
        sub.delivered.set(delivered);
        let headers = conn.opts.borrow().headers;
        let pending = {
            let mut out = conn.output(forwarded);
            wire::push_msg(
                &mut out,
                msg.subject,
                &sub.sid,
                msg.reply,
                msg.header_len,
                msg.payload,
                headers,
            );
            out.len()
        } + conn.writing.get();
        if super::trace::enabled() {
            super::trace::outbound_msg(&conn, msg.subject, &sub.sid, msg.reply, msg.payload.len());
        }
        bump(&conn.out_msgs, 1);
        bump(&conn.out_bytes, msg.payload.len() as u64);
        bump(&self.stats.out_msgs, 1);
        bump(&self.stats.out_bytes, msg.payload.len() as u64);
        if max > 0 && delivered == max {
            self.unsubscribe(&conn, &sub.sid);
        }
        if pending > self.stall_threshold && pending <= conn.max_pending {
            if let Some(producer) = self.producing.get().filter(|p| *p != conn.cid) {
                let mut stalled = self.stalled.borrow_mut();
                if !stalled
                    .iter()
                    .any(|(p, c)| *p == producer && c.cid == conn.cid)
                {
                    stalled.push((producer, conn.clone()));
                }
            }
        }
        if pending > conn.max_pending {
            bump(&self.stats.slow_consumers, 1);
            log::warn!(
                "{} - cid:{} - Slow Consumer Detected: MaxPending of {} Exceeded",
                conn.peer
                    .get()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "?".into()),
                conn.cid,
                conn.max_pending
            );
            // Give the memory back now, not when the writer finishes.
            *conn.out.borrow_mut() = Vec::new();
            *conn.held.borrow_mut() = None;
            conn.close(CloseReason::SlowConsumerPendingBytes);
        }
        conn.wake_writer.notify();
        true
    }

    /// Flow control, as nats-server 2.9 stalls fast producers: the client whose publish filled
    /// a subscriber's buffer past the stall threshold waits (before reading more input) until
    /// that subscriber's writer drains it, it closes, or `STALL_MAX` passed (nats-server's
    /// `stallClientMaxDuration`). Only that producer waits: other connections, the server's
    /// own messages and what other cores forward go on, and a subscriber that still does not
    /// read is cut at `max_pending`.
    pub async fn wait_stalled(&self, own_cid: u64) {
        loop {
            let next = {
                let mut stalled = self.stalled.borrow_mut();
                let at = stalled.iter().position(|(p, _)| *p == own_cid);
                at.map(|i| stalled.swap_remove(i).1)
            };
            let Some(conn) = next else {
                return;
            };
            let give_up = Instant::now() + STALL_MAX;
            while !conn.is_closed() && conn.pending() > self.stall_threshold {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if within(left, conn.drained.notified()).await.is_none() {
                    break;
                }
            }
        }
    }

    /// Forgets the stalls a closed connection caused or suffered.
    pub fn forget_stalls(&self, cid: u64) {
        self.stalled
            .borrow_mut()
            .retain(|(p, c)| *p != cid && c.cid != cid);
    }

    /// Delivers to one member of a queue group, trying others if the first cannot take it.
    /// Delivers to plain subscribers (but `skip_cid`); a route's subscription adds that route
    /// to `fanout` instead (`None`: the message came from a route and goes to no route).
    /// Returns whether any subscriber was found.
    pub(super) fn deliver_plain(
        &self,
        subs: &[SubRef],
        msg: &MsgRef<'_>,
        skip_cid: Option<u64>,
        fanout: &mut Option<RouteFanout>,
    ) -> bool {
        let mut found = false;
        for sub in subs {
            if Some(sub.0.cid) == skip_cid {
                continue;
            }
            found |= match (is_route_sub(&sub.0), fanout.as_mut()) {
                (false, _) => self.deliver(&sub.0, msg),
                (true, Some(f)) => f.plain(&sub.0),
                (true, None) => false,
            };
        }
        found
    }

    /// A member that is a route's subscription adds the group to that route's message in
    /// `fanout` instead (`None`: the message came from a route and goes to no route).
    pub(super) fn deliver_to_one(
        &self,
        members: &[SubRef],
        group: &Bytes,
        msg: &MsgRef<'_>,
        skip_cid: Option<u64>,
        fanout: &mut Option<RouteFanout>,
    ) -> bool {
        if members.is_empty() {
            return false;
        }
        let start = self.rng.below(members.len());
        (0..members.len()).any(|i| {
            let sub = &members[(start + i) % members.len()].0;
            if Some(sub.cid) == skip_cid {
                return false;
            }
            match (is_route_sub(sub), fanout.as_mut()) {
                (false, _) => self.deliver(sub, msg),
                (true, Some(f)) => f.queue(sub, group),
                (true, None) => false,
            }
        })
    }

    /// Routes a message published by a local connection (or by the server itself when
    /// `origin` is `None`). Returns whether any subscriber, here or on another core, was
    /// found.
    pub fn publish(&self, origin: Option<&ClientConn>, msg: &MsgRef<'_>) -> bool {
        bump(&self.stats.in_msgs, 1);
        bump(&self.stats.in_bytes, msg.payload.len() as u64);
        self.route(origin, msg)
    }

    /// Routes a message (already counted as received) to local and remote subscribers.
    pub fn route(&self, origin: Option<&ClientConn>, msg: &MsgRef<'_>) -> bool {
        let producing = self.producing.replace(origin.map(|c| c.cid));
        let found = self.route_from(origin, msg, None);
        self.producing.set(producing);
        found
    }

    /// A message from the route `from`: to local subscribers and other cores, and to one
    /// member of each queue group it names (only those), never to a route.
    pub fn route_from_peer(&self, from: &ClientConn, msg: &MsgRef<'_>, queues: &[Bytes]) -> bool {
        // The route is the producer: a subscriber it fills past the stall threshold holds its
        // reading back, as a client's would (TCP then slows the peer down).
        let producing = self.producing.replace(Some(from.cid));
        let found = self.route_from(Some(from), msg, Some(queues));
        self.producing.set(producing);
        found
    }

    /// `only_queues`: a message from a route serves just the queue groups it names.
    pub(super) fn route_from(
        &self,
        origin: Option<&ClientConn>,
        msg: &MsgRef<'_>,
        only_queues: Option<&[Bytes]>,
    ) -> bool {
        let from_route = origin.is_some_and(|c| c.route.get());
        let skip_cid = origin
            .filter(|c| c.route.get() || !c.opts.borrow().echo)
            .map(|c| c.cid);
        let (local, remote) = self.match_both(msg.subject);
        let mut found = false;
        let mut fanout = (!from_route).then(RouteFanout::default);
        found |= self.deliver_plain(&local.plain, msg, skip_cid, &mut fanout);
        // Per remote core: (deliver to plain subscribers, queue groups it must serve).
        let mut targets: Vec<(usize, bool, Vec<Bytes>)> = Vec::new();
        for &core in &remote.plain {
            match targets.iter_mut().find(|t| t.0 == core) {
                Some(t) => t.1 = true,
                None => targets.push((core, true, Vec::new())),
            }
        }
        let mut groups: Vec<&Bytes> = local.queues.iter().map(|(q, _)| q).collect();
        for (q, _) in &remote.queues {
            if !groups.contains(&q) {
                groups.push(q);
            }
        }
        if let Some(named) = only_queues {
            groups.retain(|g| named.contains(g));
        }
        for group in groups {
            let local_members: &[SubRef] = local
                .queues
                .iter()
                .find(|(q, _)| q == group)
                .map(|(_, m)| m.as_slice())
                .unwrap_or(&[]);
            let mut cores: Vec<usize> = remote
                .queues
                .iter()
                .find(|(q, _)| q == group)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            cores.sort_unstable();
            cores.dedup();
            let local_slot = usize::from(!local_members.is_empty());
            let pick = self.rng.below(local_slot + cores.len());
            if pick < local_slot
                && self.deliver_to_one(local_members, group, msg, skip_cid, &mut fanout)
            {
                found = true;
                continue;
            }
            if cores.is_empty() {
                continue;
            }
            let core = cores[pick.saturating_sub(local_slot) % cores.len()];
            found = true;
            match targets.iter_mut().find(|t| t.0 == core) {
                Some(t) => t.2.push(group.clone()),
                None => targets.push((core, false, vec![group.clone()])),
            }
        }
        if let Some(f) = fanout.filter(|f| !f.0.is_empty()) {
            // Interest this message's sender announced first goes out first: a peer's
            // streaming server answers a subscription request at once, to an inbox it must
            // already know we listen on.
            self.routes.announce_pending(self);
            f.write(msg);
        }
        if targets.is_empty() {
            return found;
        }
        let subject = msg.share(msg.subject);
        let reply = msg.reply.map(|r| msg.share(r));
        let payload = msg.share(msg.payload);
        for (core, plain, queues) in targets {
            self.outbox.push(
                core,
                MeshMsg::Deliver(Routed {
                    subject: subject.clone(),
                    reply: reply.clone(),
                    header_len: msg.header_len,
                    payload: payload.clone(),
                    plain,
                    queues,
                }),
            );
        }
        true
    }
}
