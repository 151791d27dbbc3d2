//! The shard state machine driven with decoded requests and a fake clock: delivery, windows,
//! acks, redelivery, durables, queue groups and limits, without sockets.

use bytes::Bytes;
use prost::Message;
use shards::limits::StoreLimits;
use shards::pb::{self, Ack, MsgProto, PubAck, PubMsg, SubscriptionRequest, SubscriptionResponse};
use shards::shard::{ChannelDirectory, Incoming, Now, Ready, Shard, ShardConfig, SubEnd};
use shards::store::file::{Landed, WriteOutcome};
use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Default)]
struct Dir(RefCell<Vec<String>>, i64);

impl ChannelDirectory for Dir {
    fn register(&self, name: &str) -> Result<(), String> {
        let mut names = self.0.borrow_mut();
        if self.1 > 0 && names.len() as i64 >= self.1 {
            return Err("too many channels".into());
        }
        names.push(name.to_string());
        Ok(())
    }
    fn unregister(&self, name: &str) {
        self.0.borrow_mut().retain(|n| n != name);
    }
}

const SEC: u64 = 1_000_000_000;

struct H {
    shard: Shard,
    dir: Dir,
    now: Now,
    guid: u64,
    /// What commits wrote, per channel: message records (one slice) and subscription records.
    disk: HashMap<String, (Vec<u8>, Vec<u8>)>,
    /// The next commit fails for these channels (their messages), with this error.
    fail_next: Vec<String>,
}

/// Something the shard had sent: an output, or a PubAck a commit released.
#[derive(Debug, Clone)]
struct Out {
    subject: Bytes,
    payload: Bytes,
}

impl H {
    fn new() -> H {
        Self::with_limits(StoreLimits::default())
    }

    fn with_limits(limits: StoreLimits) -> H {
        let mut shard = Shard::new(ShardConfig {
            shard: 0,
            ack_prefix: "_STAN.ack.c.0.".into(),
            ack_key: shards::ack_key::AckKey::new(&[7; shards::ack_key::KEY_LEN]),
            limits: limits.build().unwrap(),
            replace_durable: false,
        });
        shard.client_added("me", Bytes::from_static(b"conn1"));
        H {
            shard,
            dir: Dir::default(),
            now: Now {
                wall_ns: 1_000 * SEC as i64,
                mono_ns: 1_000 * SEC,
            },
            guid: 0,
            disk: HashMap::new(),
            fail_next: Vec::new(),
        }
    }

    fn advance(&mut self, ns: u64) {
        self.now.mono_ns += ns;
        self.now.wall_ns += ns as i64;
        self.shard.tick(self.now);
    }

    /// A PubMsg of client "me" with the next guid.
    fn pub_msg(&mut self, channel: &str, data: &str) -> Bytes {
        self.guid += 1;
        let pm = PubMsg {
            client_id: "me".into(),
            guid: self.guid.to_string(),
            subject: channel.into(),
            data: Bytes::from(data.to_string()),
            conn_id: Bytes::from_static(b"conn1"),
            ..Default::default()
        };
        Bytes::from(pm.encode_to_vec())
    }

    fn publish(&mut self, channel: &str, data: &str) -> PubAck {
        publish_persisted(self, channel, data);
        let acks: Vec<PubAck> = self
            .drain_to("acks")
            .iter()
            .map(|o| PubAck::decode(o.payload.clone()).unwrap())
            .collect();
        acks.into_iter().last().unwrap()
    }

    /// Answers the channel grants the shard asks for (and nothing else), as the driver does.
    fn grant_all(&mut self) {
        let ready = self.shard.ready();
        assert!(ready.send.is_empty(), "grant_all takes no output");
        for name in &ready.grants {
            let answer = self.dir.register(name);
            self.shard.granted(self.now, name, answer);
        }
    }

    /// What the driver does until the shard wants nothing more: sends what waits for nothing,
    /// and writes each commit (to `disk`; failing the channels in `fail_next`), then sends
    /// what it released. Returns everything sent, in order.
    fn take_out(&mut self) -> Vec<Out> {
        let mut sent = Vec::new();
        loop {
            let Ready {
                send,
                released,
                grants,
                reads,
                ..
            } = self.shard.ready();
            for name in &released {
                self.dir.unregister(name);
            }
            let granted = !grants.is_empty();
            for name in &grants {
                let answer = self.dir.register(name);
                self.shard.granted(self.now, name, answer);
            }
            sent.extend(send.into_iter().map(|o| Out {
                subject: o.subject,
                payload: o.payload,
            }));
            let served = !reads.is_empty();
            for (channel, plan) in reads {
                let records = self.disk.get(&channel).map(|d| &d.0[..]).unwrap_or(&[]);
                let block = records
                    .get(plan.start as usize..plan.end as usize)
                    .unwrap_or(&[]);
                let (msgs, bad) =
                    shards::store::file_log::parse_read(&plan, &Bytes::copy_from_slice(block));
                assert!(bad.is_empty(), "{bad:?}");
                self.shard.loaded(self.now, &channel, plan.first_seq, msgs);
            }
            let Some(commit) = self.shard.take_commit() else {
                if served || granted {
                    continue;
                }
                return sent;
            };
            let mut outcome = WriteOutcome::default();
            for batch in commit.batches {
                let (records, subs) = self.disk.entry(batch.channel.clone()).or_default();
                if self.fail_next.contains(&batch.channel) {
                    outcome
                        .failed
                        .push((batch.channel, std::io::Error::other("disk full")));
                    continue;
                }
                let offset = records.len() as u64;
                records.extend_from_slice(&batch.records);
                subs.extend_from_slice(&batch.subs);
                if batch.msgs > 0 {
                    let landed = Landed {
                        first_seq: batch.first_seq,
                        msgs: batch.msgs,
                        slice: 1,
                        offset,
                    };
                    outcome.landed.push((batch.channel, landed));
                }
            }
            self.fail_next.clear();
            let released = self.shard.advance(self.now, commit.held, &outcome);
            sent.extend(released.out.into_iter().map(|o| Out {
                subject: o.subject,
                payload: o.payload,
            }));
            for (acks, error) in released.pub_acks {
                let (payloads, ends) = acks.encode(&error);
                let mut start = 0;
                for ((reply, _), end) in acks.iter().zip(ends) {
                    sent.push(Out {
                        subject: Bytes::copy_from_slice(reply),
                        payload: payloads.slice(start..end),
                    });
                    start = end;
                }
            }
        }
    }

    /// Takes queued output and keeps the part not addressed to `subject` for later reads.
    fn drain_to(&mut self, subject: &str) -> Vec<Out> {
        let out = self.take_out();
        let (mine, rest): (Vec<Out>, Vec<Out>) = out
            .into_iter()
            .partition(|o| o.subject.as_ref() == subject.as_bytes());
        PENDING.with(|p| p.borrow_mut().extend(rest));
        mine
    }

    fn msgs(&mut self, inbox: &str) -> Vec<MsgProto> {
        let mut all = self.take_out();
        PENDING.with(|p| {
            let mut p = p.borrow_mut();
            let mut kept: Vec<Out> = p.drain(..).collect();
            kept.append(&mut all);
            all = kept;
        });
        let (mine, rest): (Vec<Out>, Vec<Out>) = all
            .into_iter()
            .partition(|o| o.subject.as_ref() == inbox.as_bytes());
        PENDING.with(|p| p.borrow_mut().extend(rest));
        mine.iter()
            .map(|o| MsgProto::decode(o.payload.clone()).unwrap())
            .collect()
    }

    fn subscribe(&mut self, req: SubscriptionRequest) -> SubscriptionResponse {
        self.shard
            .subscribe(self.now, req, Some(Bytes::from_static(b"subreply")));
        let r = self.drain_to("subreply");
        SubscriptionResponse::decode(r[0].payload.clone()).unwrap()
    }

    fn ack(&mut self, ack_inbox: &str, channel: &str, seq: u64) {
        let a = Ack {
            subject: channel.into(),
            sequence: seq,
        };
        self.shard.ack(
            self.now,
            ack_inbox.as_bytes(),
            &Bytes::from(a.encode_to_vec()),
        );
    }
}

thread_local! {
    static PENDING: RefCell<Vec<Out>> = const { RefCell::new(Vec::new()) };
}

fn req(channel: &str, inbox: &str) -> SubscriptionRequest {
    SubscriptionRequest {
        client_id: "me".into(),
        subject: channel.into(),
        inbox: inbox.into(),
        max_in_flight: 1024,
        ack_wait_in_secs: 30,
        ..Default::default()
    }
}

fn seqs(m: &[MsgProto]) -> Vec<u64> {
    m.iter().map(|m| m.sequence).collect()
}

#[test]
fn publish_assigns_sequences_and_rejects_bad_requests() {
    let mut h = H::new();
    assert_eq!(h.publish("foo", "a").error, "");
    assert_eq!(h.publish("foo", "b").error, "");
    let ch = h.shard.channel("foo").unwrap();
    assert_eq!((ch.log.first_seq(), ch.log.last_seq()), (1, 2));
    assert_eq!(
        h.publish("foo.*", "x").error,
        "stan: invalid publish request"
    );
    h.shard.publish(
        h.now,
        "foo",
        Incoming {
            pub_msg: b"dummy",
            reply: Some(b"acks"),
            frame: None,
        },
    );
    let bad = h.drain_to("acks");
    assert_eq!(
        PubAck::decode(bad[0].payload.clone()).unwrap().error,
        "stan: invalid publish request"
    );
    // Issue 21.7: payloads that are no PubMsg but decode as a control message of the
    // reference (field 1 a varint, field 2 a string) get their error PubAck too: a request is
    // decoded by its subject, never by trying message types.
    for payload in [&[0x08, 0x03][..], &[0x08, 0x01, 0x12, 0x01, b'x'][..]] {
        h.shard.publish(
            h.now,
            "foo",
            Incoming {
                pub_msg: payload,
                reply: Some(b"acks"),
                frame: None,
            },
        );
        let bad = h.drain_to("acks");
        assert_eq!(bad.len(), 1, "{payload:?} got a PubAck");
        assert_eq!(
            PubAck::decode(bad[0].payload.clone()).unwrap().error,
            "stan: invalid publish request"
        );
    }
}

#[test]
fn start_positions() {
    let mut h = H::new();
    for i in 1..=5 {
        h.publish("foo", &format!("m{i}"));
    }
    let cases: Vec<(i32, u64, Vec<u64>)> = vec![
        (pb::StartPosition::NewOnly as i32, 0, vec![]),
        (pb::StartPosition::LastReceived as i32, 0, vec![5]),
        (pb::StartPosition::First as i32, 0, vec![1, 2, 3, 4, 5]),
        (pb::StartPosition::SequenceStart as i32, 3, vec![3, 4, 5]),
        (
            pb::StartPosition::SequenceStart as i32,
            0,
            vec![1, 2, 3, 4, 5],
        ),
        (pb::StartPosition::SequenceStart as i32, 99, vec![]),
    ];
    for (i, (pos, start, want)) in cases.into_iter().enumerate() {
        let inbox = format!("in{i}");
        let mut r = req("foo", &inbox);
        r.start_position = pos;
        r.start_sequence = start;
        assert_eq!(h.subscribe(r).error, "");
        assert_eq!(seqs(&h.msgs(&inbox)), want, "case {i}");
    }
    let mut r = req("foo", "delta");
    r.start_position = pb::StartPosition::TimeDeltaStart as i32;
    r.start_time_delta = 10 * SEC as i64;
    h.subscribe(r);
    assert_eq!(seqs(&h.msgs("delta")), vec![1, 2, 3, 4, 5]);
}

#[test]
fn window_stalls_and_acks_release() {
    let mut h = H::new();
    let mut r = req("foo", "in");
    r.max_in_flight = 2;
    let ack_inbox = h.subscribe(r).ack_inbox;
    assert!(ack_inbox.starts_with("_STAN.ack.c.0."));
    for i in 0..5 {
        h.publish("foo", &i.to_string());
    }
    let got = h.msgs("in");
    assert_eq!(seqs(&got), vec![1, 2]);
    assert!(!got[0].redelivered);
    h.ack(&ack_inbox, "foo", 1);
    assert_eq!(seqs(&h.msgs("in")), vec![3]);
    h.ack(&ack_inbox, "foo", 77);
    h.ack("_STAN.ack.c.0.999.0", "foo", 2);
    h.ack(&ack_inbox, "bar", 2);
    assert!(h.msgs("in").is_empty(), "bad acks are ignored");
}

/// Issue 21.3: an ack inbox names its subscription and generation, but only the inbox handed
/// out (with its secret tag) acks: guessed ones, with no tag, a wrong tag, or the tag of
/// another subscription, are ignored.
#[test]
fn forged_ack_inboxes_are_ignored() {
    let mut h = H::new();
    let mut r = req("foo", "in");
    r.max_in_flight = 1;
    r.ack_wait_in_secs = 1;
    let ack_inbox = h.subscribe(r).ack_inbox;
    let other = h.subscribe(req("foo", "other")).ack_inbox;
    h.publish("foo", "a");
    assert_eq!(seqs(&h.msgs("in")), vec![1]);
    let (named, tag) = ack_inbox.rsplit_once('.').unwrap();
    assert_eq!(tag.len(), 16, "{ack_inbox}");
    let (_, other_tag) = other.rsplit_once('.').unwrap();
    for forged in [
        named.to_string(),
        format!("{named}.0000000000000000"),
        format!("{named}.{other_tag}"),
        format!("{named}.{tag}.1"),
    ] {
        h.ack(&forged, "foo", 1);
    }
    h.advance(SEC);
    let again = h.msgs("in");
    assert_eq!(seqs(&again), vec![1], "the forged acks did not ack");
    assert!(again[0].redelivered);
    h.ack(&ack_inbox, "foo", 1);
    h.advance(2 * SEC);
    assert!(h.msgs("in").is_empty(), "the real ack did");
}

#[test]
fn redelivery_counts_and_expiry_order() {
    let mut h = H::new();
    let mut r = req("foo", "in");
    r.ack_wait_in_secs = 1;
    r.max_in_flight = 1;
    let ack_inbox = h.subscribe(r).ack_inbox;
    h.publish("foo", "a");
    h.publish("foo", "b");
    assert_eq!(seqs(&h.msgs("in")), vec![1]);
    h.advance(SEC);
    let again = h.msgs("in");
    assert_eq!(seqs(&again), vec![1]);
    assert!(again[0].redelivered);
    assert_eq!(again[0].redelivery_count, 1);
    h.advance(SEC);
    assert_eq!(h.msgs("in")[0].redelivery_count, 2);
    h.ack(&ack_inbox, "foo", 1);
    assert_eq!(seqs(&h.msgs("in")), vec![2]);
    h.advance(500_000_000);
    assert!(h.msgs("in").is_empty());
}

/// One timer entry per subscription: acks leave it in place (it fires early and finds nothing
/// due, or only what is due), and it always comes back for what is still pending.
#[test]
fn the_subscription_timer_redelivers_only_what_is_due_in_expiry_order() {
    let mut h = H::new();
    let mut r = req("foo", "in");
    r.ack_wait_in_secs = 1;
    r.max_in_flight = 10;
    let ack_inbox = h.subscribe(r).ack_inbox;
    for d in ["a", "b", "c"] {
        h.publish("foo", d);
    }
    assert_eq!(seqs(&h.msgs("in")), vec![1, 2, 3]);
    // Half an ack wait later: 4 and 5 are sent, expiring after 1-3.
    h.advance(500_000_000);
    h.publish("foo", "d");
    h.publish("foo", "e");
    assert_eq!(seqs(&h.msgs("in")), vec![4, 5]);
    // Acks out of order: 2 and 4.
    h.ack(&ack_inbox, "foo", 2);
    h.ack(&ack_inbox, "foo", 4);
    // 1 and 3 expire; 5 is not due yet.
    h.advance(500_000_000);
    let again = h.msgs("in");
    assert_eq!(seqs(&again), vec![1, 3]);
    assert!(again.iter().all(|m| m.redelivered));
    h.ack(&ack_inbox, "foo", 1);
    h.ack(&ack_inbox, "foo", 3);
    // 5 expires next, alone.
    h.advance(500_000_000);
    assert_eq!(seqs(&h.msgs("in")), vec![5]);
    h.ack(&ack_inbox, "foo", 5);
    // Nothing pending: the timer fires (or not) and sends nothing, now or later.
    for _ in 0..4 {
        h.advance(SEC);
        assert!(h.msgs("in").is_empty());
    }
    assert_eq!(h.shard.next_deadline(), None);
}

#[test]
fn durable_close_and_resume() {
    let mut h = H::new();
    let mut r = req("foo", "in1");
    r.durable_name = "dur".into();
    r.start_position = pb::StartPosition::First as i32;
    let ack1 = h.subscribe(r.clone()).ack_inbox;
    h.publish("foo", "1");
    h.publish("foo", "2");
    assert_eq!(seqs(&h.msgs("in1")), vec![1, 2]);
    h.ack(&ack1, "foo", 1);
    assert_eq!(
        h.subscribe(r.clone()).error,
        "stan: duplicate durable registration"
    );
    let unsub = pb::UnsubscribeRequest {
        client_id: "me".into(),
        subject: "foo".into(),
        inbox: ack1.clone(),
        durable_name: "dur".into(),
    };
    h.shard.unsubscribe(h.now, &unsub, SubEnd::Close, None);
    h.publish("foo", "3");
    let mut resume = r.clone();
    resume.inbox = "in2".into();
    resume.start_position = pb::StartPosition::NewOnly as i32;
    let ack2 = h.subscribe(resume).ack_inbox;
    assert_ne!(ack1, ack2);
    let got = h.msgs("in2");
    assert_eq!(seqs(&got), vec![2, 3]);
    assert!(got[0].redelivered && !got[1].redelivered);
    // Unsubscribe deletes it: a new one starts fresh (new only).
    let unsub2 = pb::UnsubscribeRequest {
        inbox: ack2,
        ..unsub
    };
    h.shard
        .unsubscribe(h.now, &unsub2, SubEnd::Unsubscribe, None);
    let mut again = r;
    again.inbox = "in3".into();
    again.start_position = pb::StartPosition::NewOnly as i32;
    h.subscribe(again);
    assert!(h.msgs("in3").is_empty());
}

#[test]
fn queue_group_one_member_each_and_reassign_on_leave() {
    let mut h = H::new();
    let mut a = req("foo", "qa");
    a.q_group = "g".into();
    a.ack_wait_in_secs = 30;
    let ack_a = h.subscribe(a.clone()).ack_inbox;
    let mut b = a.clone();
    b.inbox = "qb".into();
    h.subscribe(b);
    for i in 0..10 {
        h.publish("foo", &i.to_string());
    }
    let got_a = h.msgs("qa");
    let got_b = h.msgs("qb");
    assert_eq!(got_a.len() + got_b.len(), 10);
    assert!(!got_a.is_empty() && !got_b.is_empty());
    let unsub = pb::UnsubscribeRequest {
        client_id: "me".into(),
        subject: "foo".into(),
        inbox: ack_a,
        durable_name: String::new(),
    };
    h.shard.unsubscribe(h.now, &unsub, SubEnd::Close, None);
    h.advance(100_000_000);
    let moved = h.msgs("qb");
    assert_eq!(seqs(&moved).len(), got_a.len());
    assert!(moved.iter().all(|m| m.redelivered));
}

#[test]
fn durable_queue_group_survives_last_close() {
    let mut h = H::new();
    let mut a = req("foo", "qa");
    a.q_group = "g".into();
    a.durable_name = "d".into();
    a.max_in_flight = 1;
    let ack = h.subscribe(a.clone()).ack_inbox;
    h.publish("foo", "1");
    h.publish("foo", "2");
    assert_eq!(seqs(&h.msgs("qa")), vec![1]);
    h.shard.client_removed(h.now, "me");
    h.shard.client_added("other", Bytes::from_static(b"conn2"));
    let mut b = a.clone();
    b.client_id = "other".into();
    b.inbox = "qb".into();
    let _ = ack;
    h.subscribe(b);
    let got = h.msgs("qb");
    assert_eq!(seqs(&got), vec![1], "pending first, window 1");
    assert!(got[0].redelivered);
    let mut bad = a;
    bad.durable_name = "x:y".into();
    h.shard.client_added("me", Bytes::from_static(b"conn1"));
    assert_eq!(
        h.subscribe(bad).error,
        "stan: durable name of a durable queue subscriber can't contain the character ':'"
    );
}

#[test]
fn limits_drop_oldest_and_count_subscriptions() {
    let mut limits = StoreLimits::default();
    limits.global.max_msgs = 3;
    limits.global.max_subs = 1;
    let mut h = H::with_limits(limits);
    for i in 0..5 {
        h.publish("foo", &i.to_string());
    }
    let ch = h.shard.channel("foo").unwrap();
    assert_eq!((ch.log.first_seq(), ch.log.count()), (3, 3));
    assert_eq!(h.subscribe(req("foo", "a")).error, "");
    assert_eq!(
        h.subscribe(req("foo", "b")).error,
        "too many subscriptions per channel"
    );
    let mut first = req("foo", "c");
    first.start_position = pb::StartPosition::First as i32;
    let _ = first;
    let mut unknown = req("foo", "d");
    unknown.client_id = "ghost".into();
    assert_eq!(h.subscribe(unknown).error, "stan: unknown clientID");
}

#[test]
fn max_channels_via_directory() {
    let mut h = H::new();
    h.dir.1 = 1;
    assert_eq!(h.publish("a", "x").error, "");
    assert_eq!(h.publish("b", "x").error, "too many channels");
}

#[test]
fn failed_write_takes_the_messages_back() {
    let mut h = H::new();
    h.shard.persist_messages();
    let ack_inbox = h.subscribe(req("foo", "in")).ack_inbox;
    let publish = |h: &mut H, data: &str| publish_persisted(h, "foo", data);
    publish(&mut h, "one");
    let Ready {
        send, write_due, ..
    } = h.shard.ready();
    assert!(send.is_empty(), "nothing goes out before its write");
    assert!(write_due);
    let commit = h.shard.take_commit().expect("a commit");
    assert_eq!(commit.batches.len(), 1);
    assert_eq!(
        (commit.batches[0].first_seq, commit.batches[0].msgs),
        (1, 1)
    );
    assert_eq!(commit.held.len(), 1, "the delivery of 1");
    let landed = WriteOutcome {
        landed: vec![(
            "foo".into(),
            Landed {
                first_seq: 1,
                msgs: 1,
                slice: 1,
                offset: 0,
            },
        )],
        ..Default::default()
    };
    let released = h.shard.advance(h.now, commit.held, &landed);
    assert_eq!(released.out.len(), 1, "the delivery of 1, once written");
    assert_eq!(released.pub_acks.len(), 1);
    assert_eq!(released.pub_acks[0].0.len(), 1);
    assert_eq!(released.pub_acks[0].1, "");
    // 2 and 3 are taken for writing; 4 comes in while the write is under way; the write fails.
    publish(&mut h, "two");
    publish(&mut h, "three");
    let commit = h.shard.take_commit().expect("a commit");
    assert_eq!((commit.batches[0].first_seq, commit.held.len()), (2, 2));
    publish(&mut h, "four");
    let meanwhile = h.shard.ready();
    assert!(
        meanwhile.send.is_empty() && h.shard.take_commit().is_none(),
        "nothing more is handed out while a write is out"
    );
    let failed = WriteOutcome {
        failed: vec![("foo".into(), std::io::Error::other("disk full"))],
        ..Default::default()
    };
    let released = h.shard.advance(h.now, commit.held, &failed);
    assert!(released.out.is_empty(), "no delivery of 2 or 3 goes out");
    assert_eq!(released.pub_acks.len(), 1);
    let (acks, error) = &released.pub_acks[0];
    assert_eq!(
        (acks.len(), error.as_str()),
        (3, "disk full"),
        "the PubAcks of 2 and 3, and of 4 owed later, carry the error"
    );
    let after = h.shard.ready();
    assert!(after.send.is_empty(), "nor of 4");
    if let Some(commit) = h.shard.take_commit() {
        assert!(
            commit.batches.iter().all(|b| b.msgs == 0) && commit.held.is_empty(),
            "no message waits; only the subscription's position moved back"
        );
        let _ = h
            .shard
            .advance(h.now, commit.held, &WriteOutcome::default());
    }
    let ch = h.shard.channel("foo").unwrap();
    assert_eq!((ch.log.first_seq(), ch.log.last_seq()), (1, 1));
    // Publishing goes on from 2; only 1 waits for an ack.
    publish(&mut h, "two again");
    let got = h.msgs("in");
    assert_eq!(seqs(&got), vec![2]);
    assert_eq!(got[0].data.as_ref(), b"two again");
    h.ack(&ack_inbox, "foo", 1);
    h.ack(&ack_inbox, "foo", 2);
    h.advance(60 * SEC);
    assert!(h.msgs("in").is_empty(), "nothing taken back is redelivered");
}

/// A publish of client "me" on `channel`, PubAck to "acks", as the shard takes it (nothing
/// else done: on a shard that persists, the PubAck is owed by the disk, not queued).
fn publish_persisted(h: &mut H, channel: &str, data: &str) {
    let payload = h.pub_msg(channel, data);
    h.shard.publish(
        h.now,
        channel,
        Incoming {
            pub_msg: &payload,
            reply: Some(b"acks"),
            frame: Some(&payload),
        },
    );
}

/// What commits wrote for `channel` so far: its records and its subscription log.
fn written(h: &mut H, channel: &str, records: &mut Vec<u8>, subs_log: &mut Vec<u8>) {
    // As at a clean stop: sends and acks journaled since the last commit are written too.
    h.shard.write_journal_soon();
    let out = h.take_out();
    PENDING.with(|p| p.borrow_mut().extend(out));
    if let Some((r, subs)) = h.disk.get(channel) {
        records.extend_from_slice(r);
        subs_log.extend_from_slice(subs);
    }
}

/// A shard started again from what `written` collected: the channel from its index only.
fn restarted(records: &[u8], subs_log: &[u8], clients: &[&str]) -> H {
    let mut h = H::new();
    h.now.mono_ns += 3600 * SEC;
    h.now.wall_ns += 3600 * SEC as i64;
    h.shard.persist_messages();
    h.shard.client_removed(h.now, "me");
    for c in clients {
        h.shard.client_added(c, Bytes::from_static(b"conn1"));
    }
    let (found, _) = shards::store::record::scan(records).unwrap();
    let idx = shards::store::index::SliceIndex::from_found(1, &found);
    let now = h.now;
    h.shard
        .restore_channel(now, "foo", vec![idx], &h.dir)
        .unwrap();
    let (subs, _, _) = shards::store::subs::replay(subs_log).unwrap();
    h.shard
        .restore_subscriptions(now, "foo", subs.into_values().collect());
    serve_reads(&mut h, records);
    h
}

/// Does what the driver does once the store is open: reads from disk (from `slice`, the
/// channel's one slice) until no reader waits.
fn serve_reads(h: &mut H, slice: &[u8]) {
    h.disk.entry("foo".into()).or_default().0 = slice.to_vec();
    h.shard.start_reading();
    let out = h.take_out();
    PENDING.with(|p| p.borrow_mut().extend(out));
}

#[test]
fn subscriptions_and_pending_acks_come_back_from_their_log() {
    let mut h = H::new();
    h.shard.persist_messages();
    let mut durable = req("foo", "dur.in");
    durable.durable_name = "dur".into();
    durable.max_in_flight = 3;
    let ack_inbox = h.subscribe(durable.clone()).ack_inbox;
    let plain_ack = h.subscribe(req("foo", "plain.in")).ack_inbox;
    for i in 1..=5 {
        publish_persisted(&mut h, "foo", &format!("m{i}"));
    }
    assert_eq!(seqs(&h.msgs("dur.in")), vec![1, 2, 3], "a window of 3");
    assert_eq!(seqs(&h.msgs("plain.in")), vec![1, 2, 3, 4, 5]);
    h.ack(&ack_inbox, "foo", 1);
    h.ack(&plain_ack, "foo", 2);
    assert_eq!(seqs(&h.msgs("dur.in")), vec![4]);
    let (mut records, mut subs_log) = (Vec::new(), Vec::new());
    written(&mut h, "foo", &mut records, &mut subs_log);

    // The client is still registered: both come back; what each had pending is redelivered,
    // flagged, before anything new, and its acks go to the same ack inbox as before.
    let mut h = restarted(&records, &subs_log, &["me"]);
    let again = h.msgs("dur.in");
    assert_eq!(seqs(&again), vec![2, 3, 4]);
    assert!(again.iter().all(|m| m.redelivered));
    let plain = h.msgs("plain.in");
    assert_eq!(seqs(&plain), vec![1, 3, 4, 5]);
    assert!(plain.iter().all(|m| m.redelivered));
    h.ack(&ack_inbox, "foo", 2);
    serve_reads(&mut h, &records);
    let next = h.msgs("dur.in");
    assert_eq!(seqs(&next), vec![5]);
    assert!(!next[0].redelivered);
    assert_eq!(h.shard.channel("foo").unwrap().subscription_count(), 2);

    // The client is gone: the plain subscription is dropped, the durable is offline, and a
    // resume gets the unacked messages first.
    let mut h = restarted(&records, &subs_log, &[]);
    assert!(h.msgs("dur.in").is_empty() && h.msgs("plain.in").is_empty());
    let ch = h.shard.channel("foo").unwrap();
    assert_eq!(ch.subscription_count(), 1);
    h.shard.client_added("me", Bytes::from_static(b"conn2"));
    durable.inbox = "dur.new".into();
    let resumed = h.subscribe(durable);
    assert_eq!(resumed.error, "");
    serve_reads(&mut h, &records);
    assert_eq!(seqs(&h.msgs("dur.new")), vec![2, 3, 4]);
}

#[test]
fn a_durable_queue_group_comes_back_as_its_shadow() {
    let mut h = H::new();
    h.shard.persist_messages();
    let mut member = req("foo", "q.in");
    member.q_group = "grp".into();
    member.durable_name = "dur".into();
    h.subscribe(member.clone());
    for i in 1..=3 {
        publish_persisted(&mut h, "foo", &format!("m{i}"));
    }
    assert_eq!(seqs(&h.msgs("q.in")), vec![1, 2, 3]);
    let (mut records, mut subs_log) = (Vec::new(), Vec::new());
    written(&mut h, "foo", &mut records, &mut subs_log);
    let mut h = restarted(&records, &subs_log, &[]);
    let ch = h.shard.channel("foo").unwrap();
    assert_eq!(ch.queues["dur:grp"].last_sent, 3);
    assert_eq!(ch.queues["dur:grp"].members.len(), 1);
    // A new member of another client takes the group over at its position.
    h.shard.client_added("other", Bytes::from_static(b"conn9"));
    member.client_id = "other".into();
    member.inbox = "q.other".into();
    assert_eq!(h.subscribe(member).error, "");
    serve_reads(&mut h, &records);
    assert_eq!(
        seqs(&h.msgs("q.other")),
        vec![1, 2, 3],
        "the unacked ones first"
    );
}

#[test]
fn a_subscription_whose_put_is_not_stored_is_refused() {
    let mut h = H::new();
    h.shard.persist_messages();
    let reply = Some(Bytes::from_static(b"subreply"));
    h.shard.subscribe(h.now, req("foo", "in"), reply);
    h.grant_all();
    let Ready { send, .. } = h.shard.ready();
    assert!(send.is_empty(), "the OK waits for the put");
    let commit = h.shard.take_commit().expect("the put is written first");
    assert_eq!(commit.held.len(), 1);
    let outcome = WriteOutcome {
        subs_failed: vec![("foo".into(), std::io::Error::other("disk full"))],
        ..Default::default()
    };
    let released = h.shard.advance(h.now, commit.held, &outcome);
    assert_eq!(released.out.len(), 1);
    let answer = SubscriptionResponse::decode(released.out[0].payload.clone()).unwrap();
    assert_eq!(
        (answer.error.as_str(), answer.ack_inbox.as_str()),
        ("disk full", "")
    );
    assert!(
        h.shard.channel("foo").is_none_or(|c| c.plain.is_empty()),
        "the subscription is gone"
    );
}

#[test]
fn requests_for_a_new_channel_wait_for_its_grant_and_keep_their_order() {
    let mut h = H::new();
    publish_persisted(&mut h, "new", "one");
    publish_persisted(&mut h, "new", "two");
    let mut first = req("new", "in");
    first.start_position = pb::StartPosition::First as i32;
    h.shard
        .subscribe(h.now, first, Some(Bytes::from_static(b"subreply")));
    publish_persisted(&mut h, "new", "three");
    let ready = h.shard.ready();
    assert_eq!(ready.grants, vec!["new".to_string()], "asked for once");
    assert!(
        ready.send.is_empty(),
        "nothing is answered before the grant"
    );
    assert!(h.shard.channel("new").is_none());
    h.shard.granted(h.now, "new", Ok(()));
    let sent = h.take_out();
    let to = |subject: &str| {
        sent.iter()
            .filter(|o| o.subject.as_ref() == subject.as_bytes())
            .cloned()
            .collect::<Vec<_>>()
    };
    let acks: Vec<PubAck> = to("acks")
        .iter()
        .map(|o| PubAck::decode(o.payload.clone()).unwrap())
        .collect();
    assert_eq!(acks.len(), 3);
    assert!(acks.iter().all(|a| a.error.is_empty()), "{acks:?}");
    let sub = to("subreply");
    assert!(SubscriptionResponse::decode(sub[0].payload.clone())
        .unwrap()
        .error
        .is_empty());
    let got: Vec<MsgProto> = to("in")
        .iter()
        .map(|o| MsgProto::decode(o.payload.clone()).unwrap())
        .collect();
    assert_eq!(seqs(&got), vec![1, 2, 3], "in the order they came");
    assert_eq!(got[0].data.as_ref(), b"one");
    assert!(
        h.shard.ready().grants.is_empty(),
        "a known channel asks nothing"
    );
}

#[test]
fn a_refused_grant_answers_everything_that_waited_with_the_reason() {
    let mut h = H::new();
    publish_persisted(&mut h, "full", "one");
    h.shard.subscribe(
        h.now,
        req("full", "in"),
        Some(Bytes::from_static(b"subreply")),
    );
    let ready = h.shard.ready();
    assert_eq!(ready.grants, vec!["full".to_string()]);
    h.shard
        .granted(h.now, "full", Err("too many channels".into()));
    let sent = h.take_out();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let ack = PubAck::decode(sent[0].payload.clone()).unwrap();
    assert_eq!(ack.error, "too many channels");
    let sub = SubscriptionResponse::decode(sent[1].payload.clone()).unwrap();
    assert_eq!(
        (sub.error.as_str(), sub.ack_inbox.as_str()),
        ("too many channels", "")
    );
    assert!(h.shard.channel("full").is_none());
    // The next request asks again.
    publish_persisted(&mut h, "full", "two");
    assert_eq!(h.shard.ready().grants, vec!["full".to_string()]);
}

#[test]
fn a_channel_deleted_for_inactivity_is_handed_back() {
    let mut limits = StoreLimits::default();
    limits.global.max_inactivity = std::time::Duration::from_secs(1);
    let mut h = H::with_limits(limits);
    assert_eq!(h.publish("idle", "x").error, "");
    assert_eq!(h.dir.0.borrow().len(), 1);
    h.advance(2 * SEC);
    let _ = h.take_out();
    assert!(h.shard.channel("idle").is_none());
    assert!(h.dir.0.borrow().is_empty(), "its name is free again");
}
