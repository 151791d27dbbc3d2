//! A core's subscriptions and the cross-core interest map: adding and removing local
//! subscriptions (and telling other cores and routes), moving them with a connection handed
//! over, and what this core knows of who is interested in a subject.

use super::core::*;
use super::delivery::{is_route_sub, RouteMemo};
use super::mesh_msg::MeshMsg;
use crate::nats::sublist::MatchResult;
use bytes::Bytes;
use std::rc::Rc;

impl Core {
    pub fn add_subscription(&self, sub: Rc<LocalSub>) {
        self.sublist
            .borrow_mut()
            .insert(&sub.subject, sub.queue.as_ref(), SubRef(sub.clone()));
        self.routes.touched(&sub.subject, sub.queue.as_ref());
        let key = (sub.subject.clone(), sub.queue.clone());
        let first = {
            let mut li = self.local_interest.borrow_mut();
            let n = li.entry(key).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.broadcast_interest(&sub, true);
        }
    }

    /// Tells every other core that this core gained (`added`) or lost its interest in the
    /// subscription's (subject, queue).
    pub(super) fn broadcast_interest(&self, sub: &LocalSub, added: bool) {
        if self.ncores < 2 {
            return;
        }
        let epoch = self.sync.next_epoch();
        for peer in self.outbox.peers() {
            let (subject, queue) = (sub.subject.clone(), sub.queue.clone());
            let msg = if added {
                MeshMsg::InterestAdd {
                    subject,
                    queue,
                    epoch,
                }
            } else {
                MeshMsg::InterestRemove {
                    subject,
                    queue,
                    epoch,
                }
            };
            self.outbox.push(peer, msg);
        }
    }

    pub fn remove_subscription(&self, sub: &Rc<LocalSub>) {
        if self.unlist(sub) == Some(0) {
            self.broadcast_interest(sub, false);
        }
    }

    /// Takes a subscription out of the sublist and off the local count of its (subject,
    /// queue); says how many local ones are left on it, None if it was not listed.
    pub(super) fn unlist(&self, sub: &Rc<LocalSub>) -> Option<usize> {
        let removed = self.sublist.borrow_mut().remove(
            &sub.subject,
            sub.queue.as_ref(),
            &SubRef(sub.clone()),
        );
        if !removed {
            return None;
        }
        self.routes.touched(&sub.subject, sub.queue.as_ref());
        let key = (sub.subject.clone(), sub.queue.clone());
        let mut li = self.local_interest.borrow_mut();
        Some(match li.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                *n
            }
            Some(_) => {
                li.remove(&key);
                0
            }
            None => 0,
        })
    }

    /// How many local subscriptions share (subject, queue).
    pub fn local_interest_count(&self, subject: &Bytes, queue: Option<&Bytes>) -> usize {
        self.local_interest
            .borrow()
            .get(&(subject.clone(), queue.cloned()))
            .copied()
            .unwrap_or(0)
    }

    /// A subscription of a connection moved here from `left`: into the sublist, counted, and
    /// `left` out of this core's interest map when it has no other subscriber; the other
    /// cores learn it from one `InterestMove`. Says whether it is this core's first on it.
    pub fn install_moved_subscription(
        &self,
        sub: Rc<LocalSub>,
        left: usize,
        drop_left: bool,
    ) -> bool {
        self.sublist
            .borrow_mut()
            .insert(&sub.subject, sub.queue.as_ref(), SubRef(sub.clone()));
        self.routes.touched(&sub.subject, sub.queue.as_ref());
        if drop_left {
            self.interest
                .borrow_mut()
                .remove(&sub.subject, sub.queue.as_ref(), &left);
        }
        let mut li = self.local_interest.borrow_mut();
        let n = li
            .entry((sub.subject.clone(), sub.queue.clone()))
            .or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Applies another core's `InterestMove`; on the core the connection left, counts the
    /// notice and tells the new core that everything before it was forwarded.
    pub(super) fn apply_interest_move(
        &self,
        from: usize,
        cid: u64,
        left: usize,
        changes: &[super::mesh_msg::InterestChange],
    ) {
        {
            let mut interest = self.interest.borrow_mut();
            for c in changes {
                if c.drop_left && left != self.id {
                    interest.remove(&c.subject, c.queue.as_ref(), &left);
                }
                if c.add_new {
                    interest.insert(&c.subject, c.queue.as_ref(), from);
                }
                self.routes.touched(&c.subject, c.queue.as_ref());
            }
        }
        if left == self.id {
            self.outbox.push(from, MeshMsg::ForwardDone { cid });
            self.move_notice(cid);
        } else {
            self.outbox.push(left, MeshMsg::MoveApplied { cid });
        }
    }

    /// One more core will send nothing to a moved connection's stubs; after the last, they
    /// leave the sublist.
    pub(super) fn move_notice(&self, cid: u64) {
        let done = {
            let mut moving = self.moving_out.borrow_mut();
            match moving.get_mut(&cid) {
                Some(m) => {
                    m.waiting = m.waiting.saturating_sub(1);
                    if m.waiting == 0 {
                        moving.remove(&cid)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        let Some(gone) = done else {
            return;
        };
        for (sub, announced_dropped) in &gone.subs {
            let Some(left) = self.unlist(sub) else {
                continue;
            };
            // The move told the others what this core had then; correct them if a local
            // subscriber came or went since.
            if *announced_dropped && left > 0 {
                self.broadcast_interest(sub, true);
            } else if !announced_dropped && left == 0 {
                self.broadcast_interest(sub, false);
            }
        }
    }

    /// Removes a subscription from its connection and the sublist.
    pub fn unsubscribe(&self, conn: &ClientConn, sid: &Bytes) {
        let sub = conn.subs.borrow_mut().remove(sid);
        if let Some(sub) = sub {
            self.remove_subscription(&sub);
        }
    }

    /// This server's own interest in exactly `subject` (and `queue`), for its routes: its
    /// subscriptions on this core that are not a route's, plus the other cores that have some.
    pub fn own_interest(&self, subject: &[u8], queue: Option<&Bytes>) -> u32 {
        let here = self
            .sublist
            .borrow()
            .exact(subject, queue)
            .iter()
            .filter(|s| !is_route_sub(&s.0))
            .count();
        let mut cores = self.interest.borrow().exact(subject, queue);
        cores.sort_unstable();
        cores.dedup();
        u32::try_from(here + cores.len()).unwrap_or(u32::MAX)
    }

    /// Every (subject, queue) this server has some own interest in.
    pub fn own_interest_keys(&self) -> Vec<(Bytes, Option<Bytes>)> {
        let mut keys: Vec<(Bytes, Option<Bytes>)> = self
            .sublist
            .borrow()
            .entries()
            .into_iter()
            .filter(|(_, _, subs)| subs.iter().any(|s| !is_route_sub(&s.0)))
            .map(|(s, q, _)| (s, q))
            .chain(
                self.interest
                    .borrow()
                    .entries()
                    .into_iter()
                    .map(|(s, q, _)| (s, q)),
            )
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Whether any subscriber, here or on another core, may match a subject starting with
    /// `subject`'s first token. Cheap (two root-level lookups): the streaming front asks it
    /// for every request it takes, to pass the request on to ordinary subscribers as well.
    pub fn may_have_subscribers(&self, subject: &[u8]) -> bool {
        let first = subject.split(|b| *b == b'.').next().unwrap_or_default();
        self.sublist.borrow().may_match_first_token(first)
            || (self.ncores > 1 && self.interest.borrow().may_match_first_token(first))
    }

    /// Local subscribers and interested cores for a subject, through the one-entry memo.
    pub(super) fn match_both(
        &self,
        subject: &[u8],
    ) -> (Rc<MatchResult<SubRef>>, Rc<MatchResult<usize>>) {
        let generations = (
            self.sublist.borrow().generation(),
            self.interest.borrow().generation(),
        );
        if let Some(memo) = self.last_route.borrow().as_ref() {
            if memo.generations == generations && memo.subject == subject {
                return (memo.local.clone(), memo.remote.clone());
            }
        }
        let local = self.sublist.borrow_mut().matches(subject);
        let remote = if self.ncores > 1 {
            self.interest.borrow_mut().matches(subject)
        } else {
            Rc::new(MatchResult::default())
        };
        let mut memo = self.last_route.borrow_mut();
        match memo.as_mut() {
            // Reuse the subject buffer: publishers cycling through subjects do not allocate.
            Some(m) => {
                m.subject.clear();
                m.subject.extend_from_slice(subject);
                m.generations = generations;
                m.local = local.clone();
                m.remote = remote.clone();
            }
            None => {
                *memo = Some(RouteMemo {
                    subject: subject.to_vec(),
                    generations,
                    local: local.clone(),
                    remote: remote.clone(),
                })
            }
        }
        (local, remote)
    }
}
