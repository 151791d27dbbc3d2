//! A deterministic simulation of one server's cores: N shards, the control plane's registry on
//! core 0, an in-memory FIFO link between every pair of cores (the mesh), per-core disks that
//! can be made to fail, the channel directory, and a fake clock. Each core runs what the
//! server's driver runs (`ready`, grants, commits, `advance`) after every message it takes.
//! Which link delivers next is drawn from a seeded generator, so a scenario explores one
//! interleaving per seed and replays it exactly. Clients are inboxes: what the shards send
//! lands in `inboxes`, by subject.
//!
//! Built to grow: a node would be a `Sim`, a cut link a link that drops, a raft group one more
//! thing each core's driver steps.

#![allow(dead_code)]

use bytes::Bytes;
use prost::Message;
use shards::ack_key::{AckKey, KEY_LEN};
use shards::limits::StoreLimits;
use shards::pb::{PubMsg, SubscriptionRequest};
use shards::registry::{Effect, Registry, RegistryConfig};
use shards::shard::{ChannelDirectory, Incoming, Now, Ready, Shard, ShardConfig};
use shards::store::clients::StoredClient;
use shards::store::file::{Landed, WriteOutcome};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};

pub const MS: u64 = 1_000_000;

/// What travels between cores.
#[derive(Debug)]
enum Msg {
    Publish {
        channel: String,
        pub_msg: Bytes,
        reply: Bytes,
    },
    Subscribe {
        req: Box<SubscriptionRequest>,
        reply: Bytes,
    },
    Ack {
        subject: Bytes,
        payload: Bytes,
    },
    Connect {
        client: StoredClient,
        reply: String,
    },
    Close {
        client_id: String,
        reply: String,
    },
    ClientAdded {
        client_id: String,
        conn_id: Bytes,
        job: u64,
    },
    ClientRemoved {
        client_id: String,
        job: u64,
    },
    Done {
        job: u64,
    },
}

/// The channel directory of one server (the real one is `stan/directory.rs`).
#[derive(Default)]
pub struct SimDirectory {
    names: RefCell<HashMap<String, String>>,
    pub max_channels: usize,
}

impl ChannelDirectory for SimDirectory {
    fn register(&self, name: &str) -> Result<(), String> {
        let mut names = self.names.borrow_mut();
        let lower = name.to_lowercase();
        if let Some(existing) = names.get(&lower) {
            return if existing == name {
                Ok(())
            } else {
                Err(format!("channel {existing:?} exists"))
            };
        }
        if self.max_channels > 0 && names.len() >= self.max_channels {
            return Err("too many channels".into());
        }
        names.insert(lower, name.to_string());
        Ok(())
    }

    fn unregister(&self, name: &str) {
        self.names.borrow_mut().remove(&name.to_lowercase());
    }
}

/// One core's disk: the records it wrote per channel, and channels whose next writes fail.
#[derive(Default)]
pub struct SimDisk {
    pub records: HashMap<String, Vec<u8>>,
    pub full: HashSet<String>,
}

pub struct Core {
    pub shard: Shard,
    pub disk: SimDisk,
}

pub struct Sim {
    pub now: Now,
    pub cores: Vec<Core>,
    registry: Registry<String>,
    /// links[from][to]: FIFO.
    links: Vec<Vec<VecDeque<Msg>>>,
    pub directory: SimDirectory,
    /// What clients received, by subject, in order.
    pub inboxes: HashMap<String, Vec<Bytes>>,
    /// Heartbeat inboxes of clients that answer.
    pub answering: HashSet<String>,
    /// Answers due to registry asks (answered at the next step).
    answers_due: Vec<u64>,
    /// Registry changes in flight: job -> shards still to answer.
    pending_jobs: HashMap<u64, usize>,
    rng: crate::common::SeededRng,
    guid: u64,
}

fn now_at(ns: u64) -> Now {
    Now {
        wall_ns: ns as i64,
        mono_ns: ns,
    }
}

impl Sim {
    /// `cores` cores, each with a file store (`persist`) or a memory store; `seed` picks the
    /// interleaving.
    pub fn new(cores: usize, persist: bool, seed: u64) -> Sim {
        let limits = StoreLimits::default().build().expect("default limits");
        let cores: Vec<Core> = (0..cores)
            .map(|i| {
                let mut shard = Shard::new(ShardConfig {
                    shard: i,
                    ack_prefix: format!("_STAN.ack.sim.{i}."),
                    ack_key: AckKey::new(&[9; KEY_LEN]),
                    limits: limits.clone(),
                    replace_durable: false,
                });
                if persist {
                    shard.persist_messages();
                    shard.start_reading();
                }
                Core {
                    shard,
                    disk: SimDisk::default(),
                }
            })
            .collect();
        let n = cores.len();
        Sim {
            now: now_at(1_000_000 * MS),
            cores,
            registry: Registry::new(RegistryConfig {
                hb_interval_ns: 1_000 * MS,
                hb_timeout_ns: 100 * MS,
                hb_fail_count: 1,
                probe_timeout_ns: 500 * MS,
            }),
            links: (0..n)
                .map(|_| (0..n).map(|_| VecDeque::new()).collect())
                .collect(),
            directory: SimDirectory::default(),
            inboxes: HashMap::new(),
            answering: HashSet::new(),
            answers_due: Vec::new(),
            pending_jobs: HashMap::new(),
            rng: crate::common::SeededRng::new(seed),
            guid: 0,
        }
    }

    fn n(&self) -> usize {
        self.cores.len()
    }

    fn next_random(&mut self) -> u64 {
        self.rng.next()
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.links[from][to].push_back(msg);
    }

    // ---- what clients do (each request enters at core `at`, the core its connection is on) ----

    pub fn connect(&mut self, at: usize, client_id: &str) {
        let hb_inbox = format!("hb.{client_id}");
        self.answering.insert(hb_inbox.clone());
        let client = StoredClient {
            id: client_id.into(),
            hb_inbox,
            conn_id: Bytes::from(format!("conn.{client_id}")),
        };
        let reply = format!("connected.{client_id}");
        self.send(at, 0, Msg::Connect { client, reply });
    }

    pub fn close(&mut self, at: usize, client_id: &str) {
        let reply = format!("closed.{client_id}");
        let client_id = client_id.to_string();
        self.send(at, 0, Msg::Close { client_id, reply });
    }

    /// A publish of `client_id` on `channel`; its PubAck goes to `acks.<client_id>`.
    pub fn publish(&mut self, at: usize, client_id: &str, channel: &str, data: &str) {
        self.guid += 1;
        let pm = PubMsg {
            client_id: client_id.into(),
            guid: self.guid.to_string(),
            subject: channel.into(),
            data: Bytes::from(data.to_string()),
            conn_id: Bytes::from(format!("conn.{client_id}")),
            ..Default::default()
        };
        let owner = shards::shard_for(channel, self.n());
        let msg = Msg::Publish {
            channel: channel.into(),
            pub_msg: Bytes::from(pm.encode_to_vec()),
            reply: Bytes::from(format!("acks.{client_id}")),
        };
        self.send(at, owner, msg);
    }

    /// A subscription of `client_id` on `channel` delivering to `inbox`; the answer goes to
    /// `subreply.<inbox>`.
    pub fn subscribe(&mut self, at: usize, client_id: &str, channel: &str, inbox: &str) {
        let req = SubscriptionRequest {
            client_id: client_id.into(),
            subject: channel.into(),
            inbox: inbox.into(),
            max_in_flight: 100,
            ack_wait_in_secs: 30,
            ..Default::default()
        };
        let owner = shards::shard_for(channel, self.n());
        let reply = Bytes::from(format!("subreply.{inbox}"));
        let req = Box::new(req);
        self.send(at, owner, Msg::Subscribe { req, reply });
    }

    /// An ack to an ack inbox, routed by the shard the inbox names, as any core routes it.
    pub fn ack(&mut self, at: usize, ack_inbox: &str, channel: &str, seq: u64) {
        let shard = ack_inbox
            .strip_prefix("_STAN.ack.sim.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0);
        let payload = shards::pb::Ack {
            subject: channel.into(),
            sequence: seq,
        };
        let msg = Msg::Ack {
            subject: Bytes::from(ack_inbox.to_string()),
            payload: Bytes::from(payload.encode_to_vec()),
        };
        self.send(at, shard, msg);
    }

    // ---- running ----

    /// Delivers one message (from a link drawn at random) and runs the receiving core.
    /// Returns false when nothing is in flight.
    pub fn step(&mut self) -> bool {
        for ask in std::mem::take(&mut self.answers_due) {
            self.registry.answered(self.now.mono_ns, ask);
            self.run_registry();
        }
        let busy: Vec<(usize, usize)> = (0..self.n())
            .flat_map(|f| (0..self.n()).map(move |t| (f, t)))
            .filter(|&(f, t)| !self.links[f][t].is_empty())
            .collect();
        if busy.is_empty() {
            return false;
        }
        let pick = busy[(self.next_random() % busy.len() as u64) as usize];
        let Some(msg) = self.links[pick.0][pick.1].pop_front() else {
            return true;
        };
        self.receive(pick.0, pick.1, msg);
        true
    }

    /// Steps until nothing is in flight (at most `limit` steps).
    pub fn run(&mut self) {
        for _ in 0..100_000 {
            if !self.step() && self.answers_due.is_empty() {
                return;
            }
        }
        panic!("the simulation did not settle");
    }

    /// Moves the clock: every shard and the registry tick, then everything settles.
    pub fn advance(&mut self, ns: u64) {
        self.now = now_at(self.now.mono_ns + ns);
        for i in 0..self.n() {
            let now = self.now;
            self.cores[i].shard.tick(now);
            self.cores[i].shard.write_journal_soon();
            self.drive(i);
        }
        self.registry.tick(self.now.mono_ns);
        self.run_registry();
        self.run();
    }

    fn receive(&mut self, from: usize, to: usize, msg: Msg) {
        let now = self.now;
        match msg {
            Msg::Publish {
                channel,
                pub_msg,
                reply,
            } => {
                let incoming = Incoming {
                    pub_msg: &pub_msg,
                    reply: Some(&reply),
                    frame: Some(&pub_msg),
                };
                self.cores[to].shard.publish(now, &channel, incoming);
            }
            Msg::Subscribe { req, reply } => {
                self.cores[to].shard.subscribe(now, *req, Some(reply));
            }
            Msg::Ack { subject, payload } => {
                self.cores[to].shard.ack(now, &subject, &payload);
            }
            Msg::ClientAdded {
                client_id,
                conn_id,
                job,
            } => {
                self.cores[to].shard.client_added(&client_id, conn_id);
                self.send(to, from, Msg::Done { job });
            }
            Msg::ClientRemoved { client_id, job } => {
                self.cores[to].shard.client_removed(now, &client_id);
                self.send(to, from, Msg::Done { job });
            }
            Msg::Done { job } => {
                let left = self.pending_jobs.entry(job).or_insert(1);
                *left -= 1;
                if *left == 0 {
                    self.pending_jobs.remove(&job);
                    self.registry.applied(job);
                    self.run_registry();
                }
            }
            Msg::Connect { client, reply } => {
                self.registry.connect(now.mono_ns, client, reply);
                self.run_registry();
            }
            Msg::Close { client_id, reply } => {
                self.registry.close(&client_id, reply);
                self.run_registry();
            }
        }
        self.drive(to);
    }

    /// What core 0 does with the registry's effects.
    fn run_registry(&mut self) {
        loop {
            let effects = self.registry.ready();
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::Ask { ask, inbox } => {
                        if self.answering.contains(&inbox) {
                            self.answers_due.push(ask);
                        } else {
                            self.registry.no_responders(self.now.mono_ns, ask);
                        }
                    }
                    Effect::Forget { .. } | Effect::Unstore { .. } => {}
                    Effect::Store { job, .. } => {
                        self.registry.stored(self.now.mono_ns, job, Ok(()))
                    }
                    Effect::AddOnShards {
                        job,
                        client_id,
                        conn_id,
                    } => {
                        self.pending_jobs.insert(job, self.n());
                        for to in 0..self.n() {
                            let msg = Msg::ClientAdded {
                                client_id: client_id.clone(),
                                conn_id: conn_id.clone(),
                                job,
                            };
                            self.send(0, to, msg);
                        }
                    }
                    Effect::RemoveFromShards { job, client_id } => {
                        self.pending_jobs.insert(job, self.n());
                        for to in 0..self.n() {
                            let msg = Msg::ClientRemoved {
                                client_id: client_id.clone(),
                                job,
                            };
                            self.send(0, to, msg);
                        }
                    }
                    Effect::HeartbeatState { client_id, failed } => {
                        for core in &mut self.cores {
                            core.shard.set_heartbeat_failed(&client_id, failed);
                        }
                    }
                    Effect::Connected(reply) => self.deliver(&reply, Bytes::from_static(b"ok")),
                    Effect::ConnectRefused(reply, e) => self.deliver(&reply, Bytes::from(e)),
                    Effect::Closed(reply, e) => {
                        let text = if e.is_empty() { "ok" } else { e };
                        self.deliver(&reply, Bytes::from(text))
                    }
                }
            }
        }
    }

    fn deliver(&mut self, subject: &str, payload: Bytes) {
        self.inboxes
            .entry(subject.to_string())
            .or_default()
            .push(payload);
    }

    /// What the server's driver does on core `i` until the shard wants nothing more.
    fn drive(&mut self, i: usize) {
        loop {
            let Ready {
                send,
                released,
                grants,
                ..
            } = self.cores[i].shard.ready();
            for o in send {
                self.deliver(&String::from_utf8_lossy(&o.subject), o.payload);
            }
            for name in &released {
                self.directory.unregister(name);
            }
            for name in &grants {
                let answer = self.directory.register(name);
                self.cores[i].shard.granted(self.now, name, answer);
            }
            let commit = self.cores[i].shard.take_commit();
            let Some(commit) = commit else {
                if grants.is_empty() {
                    return;
                }
                continue;
            };
            let mut outcome = WriteOutcome::default();
            let core = &mut self.cores[i];
            for batch in commit.batches {
                // As `FileStore::write`: message records and subscription records are two
                // writes, each of which may fail.
                if core.disk.full.contains(&batch.channel) {
                    let full = || std::io::Error::other("no space left on device");
                    if batch.msgs > 0 {
                        outcome.failed.push((batch.channel.clone(), full()));
                    }
                    if batch.sub_records > 0 {
                        outcome.subs_failed.push((batch.channel, full()));
                    }
                    continue;
                }
                let records = core.disk.records.entry(batch.channel.clone()).or_default();
                let offset = records.len() as u64;
                records.extend_from_slice(&batch.records);
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
            let released = core.shard.advance(self.now, commit.held, &outcome);
            for o in released.out {
                self.deliver(&String::from_utf8_lossy(&o.subject), o.payload);
            }
            for (acks, error) in released.pub_acks {
                let (payloads, ends) = acks.encode(&error);
                let mut start = 0;
                for ((reply, _), end) in acks.iter().zip(ends) {
                    let subject = String::from_utf8_lossy(reply).to_string();
                    self.deliver(&subject, payloads.slice(start..end));
                    start = end;
                }
            }
        }
    }

    // ---- what tests look at ----

    /// Takes what `subject` received so far.
    pub fn take(&mut self, subject: &str) -> Vec<Bytes> {
        self.inboxes.remove(subject).unwrap_or_default()
    }

    /// Whether every shard knows the client.
    pub fn known_everywhere(&self, client_id: &str) -> bool {
        self.cores.iter().all(|c| c.shard.knows_client(client_id))
    }

    pub fn known_anywhere(&self, client_id: &str) -> bool {
        self.cores.iter().any(|c| c.shard.knows_client(client_id))
    }

    /// Messages still in flight between cores.
    pub fn in_flight(&self) -> usize {
        self.links.iter().flatten().map(VecDeque::len).sum()
    }
}
