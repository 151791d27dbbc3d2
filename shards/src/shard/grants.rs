//! Channel creation as a grant: a request for a channel this shard does not have waits while
//! the shard asks for the channel (`Ready::grants`); the driver answers with `granted`, which
//! creates the channel and replays what waited, in order, or refuses them all with the
//! reason. Server-wide rules (`max_channels`, no two names differing only by case) belong to
//! whoever grants: on one server the channel directory, in the same turn; in a cluster, the
//! group that owns the registry. Deleted channels are handed back the same way
//! (`Ready::released`).

use super::*;

/// A request for a channel not created yet, waiting for its grant.
pub(super) enum AwaitingGrant {
    Publish {
        pub_msg: Bytes,
        reply: Option<Bytes>,
    },
    Subscribe {
        req: Box<SubscriptionRequest>,
        reply: Option<Bytes>,
    },
}

impl Shard {
    /// Queues a request behind the grant of `channel`, asking for the grant with its first.
    pub(super) fn await_grant(&mut self, channel: &str, request: AwaitingGrant) {
        match self.awaiting.get_mut(channel) {
            Some(queue) => queue.push(request),
            None => {
                self.awaiting.insert(channel.to_string(), vec![request]);
                self.grants_wanted.push(channel.to_string());
            }
        }
    }

    /// Creates a channel the directory granted or recovery found.
    pub(super) fn create_channel(&mut self, now: Now, name: &str) {
        if self.channels.contains_key(name) {
            return;
        }
        let limits = self.cfg.limits.for_channel(name);
        let on_disk = self.unwritten.is_some();
        let uid = self.next_channel_uid;
        self.next_channel_uid += 1;
        self.channels.insert(
            name.to_string(),
            Channel::new(name, uid, limits, now.mono_ns, on_disk),
        );
    }

    /// The answer to a grant asked for in `Ready::grants`: the channel is created and what
    /// waited for it goes on, in the order it came; or each waiting request is refused with
    /// `result`'s error.
    pub fn granted(&mut self, now: Now, channel: &str, result: Result<(), String>) {
        let waiting = self.awaiting.remove(channel).unwrap_or_default();
        match result {
            Ok(()) => {
                self.create_channel(now, channel);
                for request in waiting {
                    match request {
                        AwaitingGrant::Publish { pub_msg, reply } => {
                            let incoming = Incoming {
                                pub_msg: &pub_msg,
                                reply: reply.as_deref(),
                                frame: Some(&pub_msg),
                            };
                            if let Ok(pm) = PubMsgView::parse(&pub_msg) {
                                self.append_published(now, channel, &incoming, &pm);
                            }
                        }
                        AwaitingGrant::Subscribe { req, reply } => self.subscribe(now, *req, reply),
                    }
                }
            }
            Err(e) => {
                for request in waiting {
                    match request {
                        AwaitingGrant::Publish { pub_msg, reply } => {
                            let guid = PubMsgView::parse(&pub_msg)
                                .map(|pm| pm.guid.to_vec())
                                .unwrap_or_default();
                            let incoming = Incoming {
                                pub_msg: &pub_msg,
                                reply: reply.as_deref(),
                                frame: Some(&pub_msg),
                            };
                            self.pub_ack(&incoming, &guid, &e);
                        }
                        AwaitingGrant::Subscribe { reply, .. } => self.sub_reply(reply, "", &e),
                    }
                }
            }
        }
    }
}
