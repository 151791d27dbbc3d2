//! Reads from disk (file store): the messages readers wait for that are not in memory.

use super::*;

impl Shard {
    /// Reads may be handed out by `ready` from now on: the store they read from is open.
    /// (Before, during recovery, wanted reads stay queued: handing one out marks its block as
    /// being read, and a read nobody makes would leave those messages unreadable for good.)
    pub fn start_reading(&mut self) {
        self.reading = true;
    }

    pub(super) fn want_read(&mut self, channel: &str, seq: u64) {
        self.reads_wanted.push((channel.to_string(), seq));
    }

    /// The reads to make for the readers waiting (each counted as under way until `loaded`).
    pub(super) fn take_reads(&mut self) -> Vec<(String, ReadPlan)> {
        let wanted = std::mem::take(&mut self.reads_wanted);
        let mut plans = Vec::new();
        for (channel, seq) in wanted {
            if let Some(plan) = self
                .channels
                .get_mut(&channel)
                .and_then(|c| c.log.plan_read(seq))
            {
                plans.push((channel, plan));
            }
        }
        plans
    }

    /// A read is back: its messages are kept in memory and the channel's readers go on.
    pub fn loaded(&mut self, now: Now, channel: &str, first_seq: u64, msgs: Vec<StoredMsg>) {
        let Some(ch) = self.channels.get_mut(channel) else {
            return;
        };
        ch.log.loaded(first_seq, msgs);
        let held: Vec<u64> = ch
            .subscription_ids()
            .filter(|id| {
                self.subs
                    .get(id)
                    .is_some_and(|s| s.new_on_hold && !s.offline)
            })
            .collect();
        for id in held {
            self.start_delivery(now, id);
        }
        self.deliver_channel(now, channel);
    }
}
