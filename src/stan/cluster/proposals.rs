//! This core's proposals waiting for their fate: each is answered once raft says it
//! committed (with what applying it to this node's store did) or that leadership went first.
//! The shard's commit (`driver.rs`) and the control plane's client log (`control.rs`) wait
//! here instead of on a write.

use crate::util::notify::Notify;
use fxhash::FxHashMap;
use shards::raft::Outcome;
use shards::store::file::WriteOutcome;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// How a proposal ended.
#[derive(Debug)]
pub enum Settled {
    /// Committed on a quorum and applied here: what the apply did.
    Applied(WriteOutcome),
    /// Not known to be committed (the reference's error text).
    Lost(String),
}

/// One proposal's wait.
#[derive(Default)]
pub struct Waiter {
    applied: RefCell<Option<WriteOutcome>>,
    settled: RefCell<Option<Settled>>,
    notify: Notify,
}

impl Waiter {
    /// Waits until the proposal is settled.
    pub async fn settled(&self) -> Settled {
        loop {
            if let Some(s) = self.settled.borrow_mut().take() {
                return s;
            }
            self.notify.notified().await;
        }
    }

    fn settle(&self, s: Settled) {
        *self.settled.borrow_mut() = Some(s);
        self.notify.notify();
    }
}

/// Group and index of an entry.
type LogPosition = (u32, u64);

#[derive(Default)]
pub struct Proposals {
    next_token: Cell<u64>,
    /// A waiting proposal's token -> its waiter and where it went.
    by_token: RefCell<FxHashMap<u64, (Rc<Waiter>, LogPosition)>>,
    /// Where a waiting proposal went -> its token.
    by_index: RefCell<FxHashMap<LogPosition, u64>>,
}

impl Proposals {
    /// A token for the next proposal.
    pub fn token(&self) -> u64 {
        let t = self.next_token.get().wrapping_add(1);
        self.next_token.set(t);
        t
    }

    /// The proposal `token` went in at `index` of `group`.
    pub fn register(&self, group: u32, index: u64, token: u64) -> Rc<Waiter> {
        let w = Rc::new(Waiter::default());
        self.by_token
            .borrow_mut()
            .insert(token, (w.clone(), (group, index)));
        self.by_index.borrow_mut().insert((group, index), token);
        w
    }

    /// An entry was applied here: if it is a waiting proposal, what the apply did is kept for
    /// its answer.
    pub fn applied(&self, group: u32, index: u64, outcome: WriteOutcome) {
        let Some(token) = self.by_index.borrow_mut().remove(&(group, index)) else {
            return;
        };
        if let Some((w, _)) = self.by_token.borrow().get(&token) {
            *w.applied.borrow_mut() = Some(outcome);
        }
    }

    /// Raft's answer for a proposal of this node.
    pub fn outcome(&self, outcome: Outcome) {
        let (token, lost) = match outcome {
            Outcome::Committed(t) => (t, None),
            Outcome::Lost(t, why) => (t, Some(why)),
        };
        let Some((w, at)) = self.by_token.borrow_mut().remove(&token) else {
            return;
        };
        // Still there when the entry was not applied here (lost).
        self.by_index.borrow_mut().remove(&at);
        match lost {
            Some(why) => w.settle(Settled::Lost(why.to_string())),
            None => {
                let applied = w.applied.borrow_mut().take().unwrap_or_default();
                w.settle(Settled::Applied(applied));
            }
        }
    }

    /// Every waiting proposal fails with `why` (this node stops serving).
    pub fn fail_all(&self, why: &str) {
        let waiting: Vec<Rc<Waiter>> = self
            .by_token
            .borrow_mut()
            .drain()
            .map(|(_, (w, _))| w)
            .collect();
        self.by_index.borrow_mut().clear();
        for w in waiting {
            w.settle(Settled::Lost(why.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proposal_is_answered_with_its_apply_or_its_loss() {
        let p = Proposals::default();
        let (a, b) = (p.token(), p.token());
        let wa = p.register(1, 10, a);
        let wb = p.register(1, 11, b);
        let mut out = WriteOutcome::default();
        out.failed
            .push(("c".into(), std::io::Error::other("disk full")));
        p.applied(1, 10, out);
        p.outcome(Outcome::Committed(a));
        p.outcome(Outcome::Lost(b, "leadership lost while committing log"));
        match wa.settled.borrow_mut().take() {
            Some(Settled::Applied(o)) => assert_eq!(o.failed.len(), 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            wb.settled.borrow_mut().take(),
            Some(Settled::Lost(w)) if w.contains("leadership lost")
        ));
        let c = p.token();
        let wc = p.register(2, 1, c);
        p.fail_all("node is not the leader");
        assert!(matches!(
            wc.settled.borrow_mut().take(),
            Some(Settled::Lost(_))
        ));
    }
}
