//! The shard's one way in: every request, answer and tick the server gives a shard is an
//! `Input`, applied by `step` (the way out is `ready` / `take_commit` / `advance`,
//! `commit.rs`). Setting a shard up (`persist_messages`, `set_ack_key`, `restore_*`,
//! `start_reading`) is not an input: it happens before the shard serves. The methods `step`
//! calls stay public for the state-machine tests, which drive them one by one.

use super::*;

/// Something that happened that the shard must take into account.
pub enum Input<'a> {
    /// A publish for `channel` (its subject's suffix).
    Publish {
        channel: &'a str,
        incoming: Incoming<'a>,
    },
    /// An ack to one of the shard's ack inboxes: its message leaves the window at once; the
    /// room it makes is filled at `EndOfTurn`. One for a channel of another shard (an inbox of
    /// another core count) comes back in `Ready::misplaced_acks`.
    Ack {
        subject: &'a [u8],
        payload: &'a [u8],
    },
    /// The requests of this turn are in: subscriptions that acks gave room are filled, once
    /// each, instead of once per ack.
    EndOfTurn,
    Subscribe {
        req: Box<SubscriptionRequest>,
        reply: Option<Bytes>,
    },
    Unsubscribe {
        req: &'a pb::UnsubscribeRequest,
        end: SubEnd,
        reply: Option<Bytes>,
    },
    /// The time: redeliveries due, max_age and max_inactivity.
    Tick,
    /// Messages read back from disk (`Ready::reads`).
    Loaded {
        channel: &'a str,
        first_seq: u64,
        msgs: Vec<StoredMsg>,
    },
    /// The answer to a channel asked for in `Ready::grants`.
    Granted {
        channel: &'a str,
        result: Result<(), String>,
    },
    /// Changes of the client registry (the control plane's, replicated to every shard).
    ClientAdded {
        client_id: &'a str,
        conn_id: Bytes,
    },
    ClientRemoved {
        client_id: &'a str,
    },
    HeartbeatState {
        client_id: &'a str,
        failed: bool,
    },
}

impl Shard {
    /// Applies one input at `now`. What it leads to is handed out by `ready`.
    pub fn step(&mut self, now: Now, input: Input<'_>) {
        match input {
            Input::Publish { channel, incoming } => self.publish(now, channel, incoming),
            Input::Ack { subject, payload } => {
                if self.take_ack_now(subject, payload) == AckPlace::Elsewhere {
                    self.misplaced_acks.push((
                        Bytes::copy_from_slice(subject),
                        Bytes::copy_from_slice(payload),
                    ));
                }
            }
            Input::EndOfTurn => self.fill_acked(now),
            Input::Subscribe { req, reply } => self.subscribe(now, *req, reply),
            Input::Unsubscribe { req, end, reply } => self.unsubscribe(now, req, end, reply),
            Input::Tick => self.tick(now),
            Input::Loaded {
                channel,
                first_seq,
                msgs,
            } => self.loaded(now, channel, first_seq, msgs),
            Input::Granted { channel, result } => self.granted(now, channel, result),
            Input::ClientAdded { client_id, conn_id } => self.client_added(client_id, conn_id),
            Input::ClientRemoved { client_id } => self.client_removed(now, client_id),
            Input::HeartbeatState { client_id, failed } => {
                self.set_heartbeat_failed(client_id, failed)
            }
        }
    }
}
