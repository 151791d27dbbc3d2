//! One core asking several cores something and gathering their answers: a token per round,
//! how many answers are still due, what came back so far. The single rendezvous behind the
//! mesh barrier, the control plane's registry broadcasts and the monitoring snapshots (one
//! executor; the asking and the answering happen on it, the transport is the caller's).

use super::notify::Notify;
use super::timeout::within;
use fxhash::FxHashMap;
use std::cell::{Cell, RefCell};
use std::time::Duration;

pub struct Gathering<T> {
    next: Cell<u64>,
    /// token -> (answers still due, answers so far)
    open: RefCell<FxHashMap<u64, (usize, Vec<T>)>>,
    answered: Notify,
}

impl<T> Default for Gathering<T> {
    fn default() -> Self {
        Gathering {
            next: Cell::new(0),
            open: RefCell::new(FxHashMap::default()),
            answered: Notify::new(),
        }
    }
}

impl<T> Gathering<T> {
    /// Opens a round expecting `expected` answers; send its token with the question.
    pub fn open(&self, expected: usize) -> u64 {
        let token = self.next.get();
        self.next.set(token.wrapping_add(1));
        self.open.borrow_mut().insert(token, (expected, Vec::new()));
        token
    }

    /// An answer for `token` (ignored when the round is over or unknown).
    pub fn answer(&self, token: u64, item: T) {
        let mut open = self.open.borrow_mut();
        if let Some((due, items)) = open.get_mut(&token) {
            items.push(item);
            *due = due.saturating_sub(1);
            if *due == 0 {
                self.answered.notify();
            }
        }
    }

    /// Waits until every answer of `token` is in (or `limit` passed) and closes the round;
    /// returns the answers that came.
    pub async fn wait(&self, token: u64, limit: Option<Duration>) -> Vec<T> {
        let all_in = async {
            while self
                .open
                .borrow()
                .get(&token)
                .is_some_and(|(due, _)| *due > 0)
            {
                self.answered.notified().await;
            }
        };
        match limit {
            Some(limit) => {
                let _ = within(limit, all_in).await;
            }
            None => all_in.await,
        }
        self.open
            .borrow_mut()
            .remove(&token)
            .map(|(_, items)| items)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_ends_with_its_last_answer_and_late_ones_are_ignored() {
        glommio::LocalExecutor::default().run(async {
            let g: Gathering<u32> = Gathering::default();
            let t = g.open(2);
            let other = g.open(1);
            g.answer(t, 1);
            g.answer(other, 9);
            g.answer(t, 2);
            assert_eq!(g.wait(t, None).await, vec![1, 2]);
            g.answer(t, 3);
            assert_eq!(g.wait(other, None).await, vec![9]);
            let short = g.open(2);
            g.answer(short, 5);
            let got = g.wait(short, Some(Duration::from_millis(10))).await;
            assert_eq!(got, vec![5], "what came before the limit");
            assert!(g.open.borrow().is_empty());
        });
    }
}
