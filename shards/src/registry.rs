//! The control plane's state machine: the server-wide client registry, the duplicate client
//! ID probe, and heartbeats with their failure counts. No I/O and no clock of its own: checked
//! requests, answers and the time go in; `ready` hands out what to do (`Effect`s) and the I/O
//! side (`stan/control.rs`) reports back how the effects that are waited for went (`stored`,
//! `applied`, `answered`, `no_responders`). Tested with a fake clock (`tests/registry.rs`).
//!
//! A connect is answered only once the client is stored (file store) and every shard has it,
//! so the client's first publish or subscription finds it wherever it lands. A client ID in
//! use is probed first: an empty request to the old owner's heartbeat inbox; an answer within
//! the probe timeout refuses the connect, silence replaces the old client.
//!
//! Generic over `R`, what the I/O side needs back to answer a request (its reply subject and
//! the decoded request): the registry hands it back untouched in the answer.

use crate::shard::ERR_UNKNOWN_CLIENT;
use crate::store::clients::StoredClient;
use bytes::Bytes;
use fxhash::{FxHashMap, FxHashSet};
use std::collections::BTreeSet;

/// The reference's error for a client ID whose owner still answers.
pub const ERR_CLIENT_REGISTERED: &str = "stan: clientID already registered";

/// Heartbeat and probe timing, in nanoseconds of the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    pub hb_interval_ns: u64,
    pub hb_timeout_ns: u64,
    /// Unanswered heartbeats in a row tolerated; one more closes the client.
    pub hb_fail_count: u32,
    /// How long the owner of a client ID has to answer before a new connect takes it over.
    pub probe_timeout_ns: u64,
}

/// What the registry wants done.
#[derive(Debug, PartialEq)]
pub enum Effect<R> {
    /// An empty request to a client's inbox. If an answer comes, report `answered(ask)`; if
    /// nobody subscribes to the inbox, `no_responders(ask)`; `tick` times it out.
    Ask {
        ask: u64,
        inbox: String,
    },
    /// The ask is over (timed out): its answer, if one still comes, is not wanted.
    Forget {
        ask: u64,
    },
    /// Store a new client (file store: `clients.dat`), then report `stored(job, result)`.
    Store {
        job: u64,
        client: StoredClient,
    },
    /// Remove a client from the store (best effort; nothing waits for it).
    Unstore {
        client_id: String,
    },
    /// Apply on every shard, then report `applied(job)`.
    AddOnShards {
        job: u64,
        client_id: String,
        conn_id: Bytes,
    },
    RemoveFromShards {
        job: u64,
        client_id: String,
    },
    /// Tell every shard whether a client misses heartbeats (nothing waits for it).
    HeartbeatState {
        client_id: String,
        failed: bool,
    },
    /// Answer a connect: registered.
    Connected(R),
    /// Answer a connect with an error.
    ConnectRefused(R, String),
    /// Answer a close: "" when closed, else the error.
    Closed(R, &'static str),
}

struct Client {
    record: StoredClient,
    /// Unanswered heartbeats in a row.
    failed: u32,
    /// When the next heartbeat goes out (if none is out).
    due: u64,
    /// The heartbeat out, if any.
    asking: Option<u64>,
}

/// A request out to a client inbox.
enum Asked {
    Heartbeat {
        client_id: String,
        expires: u64,
    },
    /// The old owner of a client ID a connect wants.
    Probe {
        job: u64,
        expires: u64,
    },
}

impl Asked {
    fn expires(&self) -> u64 {
        match self {
            Asked::Heartbeat { expires, .. } | Asked::Probe { expires, .. } => *expires,
        }
    }
}

/// A connect on its way.
struct Connecting<R> {
    client: StoredClient,
    answer: R,
}

/// Work waiting for a report.
enum Job<R> {
    /// The old owner is probed (`Asked::Probe`).
    Probing(Connecting<R>),
    /// The old owner is being removed from every shard; then the new one is stored.
    Replacing(Connecting<R>),
    /// Being stored; then added on every shard.
    Storing(Connecting<R>),
    /// Being added on every shard; then answered.
    Adding(Connecting<R>),
    /// A close being applied on every shard; then answered.
    Closing(R),
    /// A removal nobody waits for (failed heartbeats).
    Removing,
}

/// A timer entry: checked against the current state when it fires (stale ones are skipped).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Beat(String),
    Expire(u64),
}

pub struct Registry<R> {
    cfg: RegistryConfig,
    clients: FxHashMap<String, Client>,
    /// Client IDs a connect is under way for (a second connect for one is refused).
    busy: FxHashSet<String>,
    asks: FxHashMap<u64, Asked>,
    jobs: FxHashMap<u64, Job<R>>,
    timers: BTreeSet<(u64, Timer)>,
    next_id: u64,
    effects: Vec<Effect<R>>,
}

impl<R> Registry<R> {
    pub fn new(cfg: RegistryConfig) -> Self {
        Registry {
            cfg,
            clients: FxHashMap::default(),
            busy: FxHashSet::default(),
            asks: FxHashMap::default(),
            jobs: FxHashMap::default(),
            timers: BTreeSet::new(),
            next_id: 1,
            effects: Vec::new(),
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// What to do, in order.
    pub fn ready(&mut self) -> Vec<Effect<R>> {
        std::mem::take(&mut self.effects)
    }

    /// When `tick` is due next.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.first().map(|t| t.0)
    }

    pub fn knows(&self, client_id: &str) -> bool {
        self.clients.contains_key(client_id)
    }

    /// Every registered client, as stored.
    pub fn clients(&self) -> impl Iterator<Item = &StoredClient> {
        self.clients.values().map(|c| &c.record)
    }

    /// A client read back from the store at start-up (every shard added it itself): its
    /// heartbeats start, the first after a whole interval.
    pub fn restore(&mut self, now: u64, client: StoredClient) {
        self.track(now, client);
    }

    fn track(&mut self, now: u64, client: StoredClient) {
        let due = now + self.cfg.hb_interval_ns;
        let id = client.id.clone();
        self.timers.insert((due, Timer::Beat(id.clone())));
        self.clients.insert(
            id,
            Client {
                record: client,
                failed: 0,
                due,
                asking: None,
            },
        );
    }

    /// A connect request checked for format.
    pub fn connect(&mut self, now: u64, client: StoredClient, answer: R) {
        let id = client.id.clone();
        if self.busy.contains(&id) {
            self.effects
                .push(Effect::ConnectRefused(answer, ERR_CLIENT_REGISTERED.into()));
            return;
        }
        self.busy.insert(id.clone());
        let connecting = Connecting { client, answer };
        let job = self.next_id();
        match self.clients.get(&id).map(|c| c.record.hb_inbox.clone()) {
            Some(old_inbox) => {
                let ask = self.next_id();
                let expires = now + self.cfg.probe_timeout_ns;
                self.asks.insert(ask, Asked::Probe { job, expires });
                self.timers.insert((expires, Timer::Expire(ask)));
                self.jobs.insert(job, Job::Probing(connecting));
                self.effects.push(Effect::Ask {
                    ask,
                    inbox: old_inbox,
                });
            }
            None => self.store(job, connecting),
        }
    }

    fn store(&mut self, job: u64, connecting: Connecting<R>) {
        self.effects.push(Effect::Store {
            job,
            client: connecting.client.clone(),
        });
        self.jobs.insert(job, Job::Storing(connecting));
    }

    /// A close request for `client_id`.
    pub fn close(&mut self, client_id: &str, answer: R) {
        match self.remove(client_id) {
            Some(job) => {
                self.jobs.insert(job, Job::Closing(answer));
            }
            None => self
                .effects
                .push(Effect::Closed(answer, ERR_UNKNOWN_CLIENT)),
        }
    }

    /// Unregisters a client (its heartbeats stop at once): removed from every shard and from
    /// the store. Returns the job that reports when every shard has removed it.
    fn remove(&mut self, client_id: &str) -> Option<u64> {
        let client = self.clients.remove(client_id)?;
        self.timers
            .remove(&(client.due, Timer::Beat(client_id.to_string())));
        if let Some(ask) = client.asking {
            self.drop_ask(ask);
            self.effects.push(Effect::Forget { ask });
        }
        let job = self.next_id();
        self.jobs.insert(job, Job::Removing);
        self.effects.push(Effect::RemoveFromShards {
            job,
            client_id: client_id.to_string(),
        });
        self.effects.push(Effect::Unstore {
            client_id: client_id.to_string(),
        });
        Some(job)
    }

    /// Forgets an ask and its timer.
    fn drop_ask(&mut self, ask: u64) -> Option<Asked> {
        let asked = self.asks.remove(&ask)?;
        self.timers.remove(&(asked.expires(), Timer::Expire(ask)));
        Some(asked)
    }

    /// A client answered an ask.
    pub fn answered(&mut self, now: u64, ask: u64) {
        let Some(asked) = self.drop_ask(ask) else {
            return;
        };
        match asked {
            Asked::Probe { job, .. } => {
                let Some(Job::Probing(c)) = self.jobs.remove(&job) else {
                    return;
                };
                log::debug!(
                    "STAN: [Client:{}] Connect failed; already connected",
                    c.client.id
                );
                self.busy.remove(&c.client.id);
                self.effects.push(Effect::ConnectRefused(
                    c.answer,
                    ERR_CLIENT_REGISTERED.into(),
                ));
            }
            Asked::Heartbeat { client_id, .. } => {
                let due = now + self.cfg.hb_interval_ns;
                let Some(client) = self.clients.get_mut(&client_id) else {
                    return;
                };
                client.asking = None;
                client.due = due;
                if client.failed > 0 {
                    client.failed = 0;
                    self.effects.push(Effect::HeartbeatState {
                        client_id: client_id.clone(),
                        failed: false,
                    });
                }
                self.timers.insert((due, Timer::Beat(client_id)));
            }
        }
    }

    /// Nobody subscribes to an ask's inbox: nobody can answer (the reference learns this
    /// from NATS "no responders" instead of waiting).
    pub fn no_responders(&mut self, now: u64, ask: u64) {
        if let Some(asked) = self.drop_ask(ask) {
            self.unanswered(now, asked);
        }
    }

    fn unanswered(&mut self, now: u64, asked: Asked) {
        match asked {
            Asked::Probe { job, .. } => {
                let Some(Job::Probing(c)) = self.jobs.remove(&job) else {
                    return;
                };
                log::debug!(
                    "STAN: [Client:{}] Replacing old client whose heartbeats went unanswered",
                    c.client.id
                );
                match self.remove(&c.client.id) {
                    Some(removal) => {
                        self.jobs.insert(removal, Job::Replacing(c));
                    }
                    // Closed meanwhile: nothing to replace.
                    None => self.store(job, c),
                }
            }
            Asked::Heartbeat { client_id, .. } => {
                let max = self.cfg.hb_fail_count;
                let due = now + self.cfg.hb_interval_ns;
                let Some(client) = self.clients.get_mut(&client_id) else {
                    return;
                };
                client.asking = None;
                client.failed += 1;
                let failed = client.failed;
                log::debug!("STAN: [Client:{client_id}] Timed out on heartbeats (failed {failed})");
                if failed > max {
                    log::info!("STAN: [Client:{client_id}] Closing because of failed heartbeats");
                    self.remove(&client_id);
                    return;
                }
                client.due = due;
                self.timers.insert((due, Timer::Beat(client_id.clone())));
                if failed == 1 {
                    self.effects.push(Effect::HeartbeatState {
                        client_id,
                        failed: true,
                    });
                }
            }
        }
    }

    /// A client that misses heartbeats showed it is alive (it pinged): it is asked again now
    /// instead of at its next interval.
    pub fn hurry(&mut self, now: u64, client_id: &str) {
        let Some(client) = self.clients.get_mut(client_id) else {
            return;
        };
        if client.failed == 0 || client.asking.is_some() || client.due <= now {
            return;
        }
        let id = client_id.to_string();
        self.timers.remove(&(client.due, Timer::Beat(id.clone())));
        client.due = now;
        self.timers.insert((now, Timer::Beat(id)));
    }

    /// The time: heartbeats due go out, asks expire.
    pub fn tick(&mut self, now: u64) {
        while let Some(first) = self.timers.first() {
            if first.0 > now {
                break;
            }
            let Some((at, timer)) = self.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::Beat(client_id) => self.beat(now, at, client_id),
                Timer::Expire(ask) => {
                    if self.asks.get(&ask).is_some_and(|a| a.expires() == at) {
                        if let Some(asked) = self.asks.remove(&ask) {
                            self.effects.push(Effect::Forget { ask });
                            self.unanswered(now, asked);
                        }
                    }
                }
            }
        }
    }

    fn beat(&mut self, now: u64, at: u64, client_id: String) {
        let ask = self.next_id;
        let timeout = self.cfg.hb_timeout_ns;
        let Some(client) = self.clients.get_mut(&client_id) else {
            return;
        };
        if client.due != at || client.asking.is_some() {
            return;
        }
        self.next_id += 1;
        client.asking = Some(ask);
        let inbox = client.record.hb_inbox.clone();
        let expires = now + timeout;
        self.asks
            .insert(ask, Asked::Heartbeat { client_id, expires });
        self.timers.insert((expires, Timer::Expire(ask)));
        self.effects.push(Effect::Ask { ask, inbox });
    }

    /// How storing a new client went.
    pub fn stored(&mut self, now: u64, job: u64, result: Result<(), String>) {
        let Some(Job::Storing(c)) = self.jobs.remove(&job) else {
            return;
        };
        if let Err(e) = result {
            log::error!(
                "STAN: [Client:{}] cannot store the client: {e}",
                c.client.id
            );
            self.busy.remove(&c.client.id);
            self.effects.push(Effect::ConnectRefused(
                c.answer,
                format!("stan: unable to store client: {e}"),
            ));
            return;
        }
        self.track(now, c.client.clone());
        self.effects.push(Effect::AddOnShards {
            job,
            client_id: c.client.id.clone(),
            conn_id: c.client.conn_id.clone(),
        });
        self.jobs.insert(job, Job::Adding(c));
    }

    /// Every shard applied the registry change of `job`.
    pub fn applied(&mut self, job: u64) {
        let Some(j) = self.jobs.remove(&job) else {
            return;
        };
        match j {
            Job::Replacing(c) => {
                let next = self.next_id();
                self.store(next, c);
            }
            Job::Adding(c) => {
                log::debug!(
                    "STAN: [Client:{}] Connected (Inbox={})",
                    c.client.id,
                    c.client.hb_inbox
                );
                self.busy.remove(&c.client.id);
                self.effects.push(Effect::Connected(c.answer));
            }
            Job::Closing(answer) => self.effects.push(Effect::Closed(answer, "")),
            // Not waiting for shards (a report that does not belong to it): left as it was.
            other @ (Job::Probing(_) | Job::Storing(_)) => {
                self.jobs.insert(job, other);
            }
            Job::Removing => {}
        }
    }
}
