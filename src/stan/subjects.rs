//! The subjects the streaming server owns, and the classification of a published subject.
//! Request subjects are those of the reference (`_STAN.pub.<cid>`, ...); ack inboxes and the
//! server's own reply inboxes carry the number of the shard that handed them out, so any core
//! routes them without a lookup.

#[derive(Debug, Clone)]
pub struct Subjects {
    pub cluster_id: String,
    pub discover: String,
    pub pings: String,
    pub publish_prefix: String,
    /// `publish_prefix` plus the dot, as it starts a publish subject.
    publish_dotted: String,
    pub subscribe: String,
    pub unsubscribe: String,
    pub sub_close: String,
    pub close: String,
    /// `_STAN.ack.<cid>.`: followed by `<shard>.<sub id>.<generation>`.
    ack_root: String,
    /// `_STAN.reply.<cid>.`: followed by `<shard>.<token>`.
    reply_root: String,
    /// FT mode: `_STAN.ft.<cid>.<group>`, where the active server's heartbeats go.
    pub ft: Option<String>,
    /// Partitioning: `_STAN.part.<cid>`, where servers sharing the cluster ID send their lists.
    pub partitions: String,
    /// Clustering: `_STAN.raft.<cid>.`, followed by `<node raft ID>.<group>` (a raft batch for
    /// that node's group) or `bootstrap` (a bootstrapped node's announcement).
    pub raft_root: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Discover,
    Ping,
    Publish {
        channel: &'a [u8],
    },
    Subscribe,
    Unsubscribe,
    SubClose,
    Close,
    Ack {
        shard: usize,
    },
    Reply {
        shard: usize,
        token: u64,
    },
    /// On the FT subject (a heartbeat, in FT mode).
    Ft,
    /// Another partitioned server's channel list.
    Partitions,
    /// Clustering: a raft batch for a node's group.
    Raft {
        node: u64,
        group: u32,
    },
    /// Clustering: a node started with `bootstrap` says so.
    RaftBootstrap,
    /// Clustering: a node says its name and partition count.
    RaftHello,
    /// Clustering: a new node asks to join (`RaftJoinRequest`).
    RaftJoin,
    /// Clustering: an operator asks the leader to add (`true`) or remove a node.
    RaftNodeAdmin {
        add: bool,
    },
    /// Clustering: a node installing a snapshot asks `node` for a channel's messages.
    RaftFetch {
        node: u64,
    },
    /// Clustering: the answer to a fetch, for the waiter `token` of core `core` of `node`.
    RaftFetched {
        node: u64,
        core: usize,
        token: u64,
    },
}

impl Subjects {
    pub fn new(cluster_id: &str, discover_prefix: &str, ft_group: Option<&str>) -> Self {
        let discover = format!("{discover_prefix}.{cluster_id}");
        Subjects {
            cluster_id: cluster_id.to_string(),
            pings: format!("{discover}.pings"),
            discover,
            publish_prefix: format!("_STAN.pub.{cluster_id}"),
            publish_dotted: format!("_STAN.pub.{cluster_id}."),
            subscribe: format!("_STAN.sub.{cluster_id}"),
            unsubscribe: format!("_STAN.unsub.{cluster_id}"),
            sub_close: format!("_STAN.subclose.{cluster_id}"),
            close: format!("_STAN.close.{cluster_id}"),
            ack_root: format!("_STAN.ack.{cluster_id}."),
            reply_root: format!("_STAN.reply.{cluster_id}."),
            ft: ft_group.map(|g| format!("_STAN.ft.{cluster_id}.{g}")),
            partitions: format!("_STAN.part.{cluster_id}"),
            raft_root: format!("_STAN.raft.{cluster_id}."),
        }
    }

    /// The prefix of the ack inboxes shard `shard` hands out.
    pub fn ack_prefix(&self, shard: usize) -> String {
        format!("{}{shard}.", self.ack_root)
    }

    /// A reply inbox of shard `shard` for the request numbered `token`.
    pub fn reply_inbox(&self, shard: usize, token: u64) -> String {
        format!("{}{shard}.{token}", self.reply_root)
    }

    /// The prefix of the server's reply inboxes of shard `shard` (`reply_inbox`).
    pub fn reply_prefix(&self, shard: usize) -> String {
        format!("{}{shard}.", self.reply_root)
    }

    /// Clustering: where bootstrapped nodes announce themselves.
    pub fn raft_bootstrap(&self) -> String {
        format!("{}bootstrap", self.raft_root)
    }

    /// Clustering: where every node says its name and partition count.
    pub fn raft_hello(&self) -> String {
        format!("{}hello", self.raft_root)
    }

    /// Clustering: where a new node asks the leader to join.
    pub fn raft_join(&self) -> String {
        format!("{}join", self.raft_root)
    }

    /// Clustering: where an operator asks the leader to add (`node.add`) or remove
    /// (`node.remove`) a node, with `allow_add_remove_node`.
    pub fn raft_node_admin(&self, add: bool) -> String {
        let what = if add { "add" } else { "remove" };
        format!("{}node.{what}", self.raft_root)
    }

    /// Clustering: every raft batch for node `node` (announced to routes).
    pub fn raft_for_node(&self, node: u64) -> String {
        format!("{}{node}.>", self.raft_root)
    }

    /// Clustering: where node `node` answers fetches of messages.
    pub fn raft_fetch(&self, node: u64) -> String {
        format!("{}{node}.fetch", self.raft_root)
    }

    /// Clustering: the inbox of fetch answers of core `core` of node `node` (followed by the
    /// waiter's token).
    pub fn raft_fetched_prefix(&self, node: u64, core: usize) -> String {
        format!("{}{node}.fetched.{core}.", self.raft_root)
    }

    /// The subjects of client requests. With partitioning (`channels`: this server's list)
    /// only the publishes of those channels, and the other servers' lists.
    pub fn request_subjects(&self, channels: Option<&[String]>) -> Vec<String> {
        let mut subjects = vec![
            self.discover.clone(),
            self.subscribe.clone(),
            self.unsubscribe.clone(),
            self.sub_close.clone(),
            self.close.clone(),
            self.pings.clone(),
        ];
        match channels {
            Some(list) => {
                subjects.extend(list.iter().map(|c| format!("{}.{c}", self.publish_prefix)));
                subjects.push(self.partitions.clone());
            }
            None => subjects.push(format!("{}.>", self.publish_prefix)),
        }
        subjects
    }

    /// The subjects the streaming server listens on, as NATS subscriptions of the embedded
    /// server (the reference's streaming connection has these; monitoring reports them, and
    /// readiness checks poll `/subsz` until they appear): the requests, and every shard's
    /// reply and ack inboxes.
    pub fn internal_subscriptions(&self, channels: Option<&[String]>) -> Vec<String> {
        let mut subjects = self.request_subjects(channels);
        subjects.push(format!("{}>", self.reply_root));
        subjects.push(format!("{}>", self.ack_root));
        subjects
    }

    /// What a published subject is for the streaming server, if anything.
    pub fn classify<'a>(&self, subject: &'a [u8]) -> Option<Kind<'a>> {
        if let Some(channel) = subject.strip_prefix(self.publish_dotted.as_bytes()) {
            return Some(Kind::Publish { channel });
        }
        if let Some(rest) = subject.strip_prefix(self.ack_root.as_bytes()) {
            let shard = leading_number(rest)?;
            return Some(Kind::Ack {
                shard: usize::try_from(shard).ok()?,
            });
        }
        if let Some(rest) = subject.strip_prefix(self.reply_root.as_bytes()) {
            let dot = rest.iter().position(|b| *b == b'.')?;
            let shard = usize::try_from(leading_number(&rest[..dot])?).ok()?;
            let token = leading_number(&rest[dot + 1..])?;
            return Some(Kind::Reply { shard, token });
        }
        let exact = [
            (self.discover.as_bytes(), Kind::Discover),
            (self.pings.as_bytes(), Kind::Ping),
            (self.subscribe.as_bytes(), Kind::Subscribe),
            (self.unsubscribe.as_bytes(), Kind::Unsubscribe),
            (self.sub_close.as_bytes(), Kind::SubClose),
            (self.close.as_bytes(), Kind::Close),
        ];
        if self
            .ft
            .as_deref()
            .is_some_and(|ft| ft.as_bytes() == subject)
        {
            return Some(Kind::Ft);
        }
        if self.partitions.as_bytes() == subject {
            return Some(Kind::Partitions);
        }
        if let Some(rest) = subject.strip_prefix(self.raft_root.as_bytes()) {
            if rest == b"bootstrap" {
                return Some(Kind::RaftBootstrap);
            }
            if rest == b"hello" {
                return Some(Kind::RaftHello);
            }
            if rest == b"join" {
                return Some(Kind::RaftJoin);
            }
            if rest == b"node.add" || rest == b"node.remove" {
                return Some(Kind::RaftNodeAdmin {
                    add: rest == b"node.add",
                });
            }
            let dot = rest.iter().position(|b| *b == b'.')?;
            let node = leading_number(&rest[..dot])?;
            let tail = &rest[dot + 1..];
            if tail == b"fetch" {
                return Some(Kind::RaftFetch { node });
            }
            if let Some(inbox) = tail.strip_prefix(b"fetched.") {
                let dot = inbox.iter().position(|b| *b == b'.')?;
                let core = usize::try_from(leading_number(&inbox[..dot])?).ok()?;
                let token = leading_number(&inbox[dot + 1..])?;
                if inbox[dot + 1..].contains(&b'.') {
                    return None;
                }
                return Some(Kind::RaftFetched { node, core, token });
            }
            let group = u32::try_from(leading_number(tail)?).ok()?;
            if tail.contains(&b'.') {
                return None;
            }
            return Some(Kind::Raft { node, group });
        }
        exact
            .into_iter()
            .find(|(s, _)| *s == subject)
            .map(|(_, k)| k)
    }
}

/// The decimal number at the start of `bytes` (up to a dot or the end).
fn leading_number(bytes: &[u8]) -> Option<u64> {
    let end = bytes.iter().position(|b| *b == b'.').unwrap_or(bytes.len());
    let digits = &bytes[..end];
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_kind() {
        let s = Subjects::new("test-cluster", "_STAN.discover", Some("g"));
        assert_eq!(
            s.classify(b"_STAN.discover.test-cluster"),
            Some(Kind::Discover)
        );
        assert_eq!(
            s.classify(b"_STAN.discover.test-cluster.pings"),
            Some(Kind::Ping)
        );
        assert_eq!(
            s.classify(b"_STAN.pub.test-cluster.foo.bar"),
            Some(Kind::Publish {
                channel: b"foo.bar"
            })
        );
        assert_eq!(s.classify(b"_STAN.sub.test-cluster"), Some(Kind::Subscribe));
        assert_eq!(
            s.classify(b"_STAN.unsub.test-cluster"),
            Some(Kind::Unsubscribe)
        );
        assert_eq!(
            s.classify(b"_STAN.subclose.test-cluster"),
            Some(Kind::SubClose)
        );
        assert_eq!(s.classify(b"_STAN.close.test-cluster"), Some(Kind::Close));
        let ack = format!("{}12.0", s.ack_prefix(1));
        assert_eq!(s.classify(ack.as_bytes()), Some(Kind::Ack { shard: 1 }));
        let reply = s.reply_inbox(0, 77);
        assert_eq!(
            s.classify(reply.as_bytes()),
            Some(Kind::Reply {
                shard: 0,
                token: 77
            })
        );
        assert_eq!(s.classify(b"_STAN.ft.test-cluster.g"), Some(Kind::Ft));
        assert_eq!(s.classify(b"_STAN.ft.test-cluster.h"), None);
        assert_eq!(
            s.classify(b"_STAN.part.test-cluster"),
            Some(Kind::Partitions)
        );
        assert_eq!(
            s.classify(b"_STAN.raft.test-cluster.123.4"),
            Some(Kind::Raft {
                node: 123,
                group: 4
            })
        );
        assert_eq!(
            s.classify(b"_STAN.raft.test-cluster.bootstrap"),
            Some(Kind::RaftBootstrap)
        );
        assert_eq!(s.classify(b"_STAN.raft.test-cluster.123.4.5"), None);
        assert_eq!(s.classify(s.raft_hello().as_bytes()), Some(Kind::RaftHello));
        assert_eq!(s.classify(s.raft_join().as_bytes()), Some(Kind::RaftJoin));
        assert_eq!(
            s.classify(s.raft_node_admin(false).as_bytes()),
            Some(Kind::RaftNodeAdmin { add: false })
        );
        assert_eq!(
            s.classify(s.raft_node_admin(true).as_bytes()),
            Some(Kind::RaftNodeAdmin { add: true })
        );
        assert_eq!(
            s.classify(s.raft_fetch(9).as_bytes()),
            Some(Kind::RaftFetch { node: 9 })
        );
        let fetched = format!("{}77", s.raft_fetched_prefix(9, 1));
        assert_eq!(
            s.classify(fetched.as_bytes()),
            Some(Kind::RaftFetched {
                node: 9,
                core: 1,
                token: 77
            })
        );
        assert_eq!(
            s.classify(b"_STAN.raft.test-cluster.9.fetched.1.77.8"),
            None
        );
        assert_eq!(s.classify(b"_STAN.raft.test-cluster.x.4"), None);
        assert_eq!(s.classify(b"_STAN.discover.other"), None);
        assert_eq!(s.classify(b"_STAN.ack.test-cluster.x.1"), None);
        assert_eq!(s.classify(b"foo"), None);
    }
}
