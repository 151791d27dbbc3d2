//! Fault-tolerant mode (`ft_group`), driven from core 0: stand by while another server holds
//! the store lock, take over when it is free, then send heartbeats and watch for a second
//! active server. Who is active is decided by the lock alone (`shards::store::lock`);
//! heartbeats only spare standbys useless lock attempts and let two actives (a lock not
//! honoured by a file system) find each other, the later one exiting.
//!
//! The intervals are far shorter than the reference's (1 s heartbeat, 1.25 s missed) so that a
//! take-over after a crash completes in a few hundred milliseconds: heartbeat every 100 ms and
//! a lock attempt after 250 ms of silence (each ±10 %, drawn once per process, so that
//! standbys do not try in step), repeated every heartbeat interval while the silence lasts.
//! Safety does not depend on them (the lock decides); an active that stalls for longer only
//! costs standbys a failed lock attempt, and ten small messages a second are nothing to NATS.

use super::ft_heartbeat;
use super::messages::ControlMsg;
use super::role::State;
use super::streaming::Streaming;
use crate::util::notify::Notify;
use shards::ack_key::AckKey;
use shards::store::lock::{Attempt, StoreLock};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const HEARTBEAT: Duration = Duration::from_millis(100);
const MISSED: Duration = Duration::from_millis(250);
/// A lock attempt that keeps failing is reported at most this often (the reference's back-off
/// doubles from 1 s up to this).
const REPORT_AT_MOST: Duration = Duration::from_secs(60);

/// Core 0's FT state: what the standby loop waits on, and the active server's identity.
pub struct Ft {
    /// `_STAN.ft.<cid>.<group>`.
    pub subject: String,
    heard: Notify,
    activated: Cell<Option<SystemTime>>,
    /// What the cores said when asked to open their stores (`Ok`, or why not).
    reports: RefCell<Vec<Result<(), String>>>,
    reported: Notify,
}

impl Ft {
    pub fn new(subject: String) -> Ft {
        Ft {
            subject,
            heard: Notify::new(),
            activated: Cell::new(None),
            reports: RefCell::new(Vec::new()),
            reported: Notify::new(),
        }
    }

    /// A core has opened its store (or failed to).
    pub fn core_reported(&self, result: Result<(), String>) {
        self.reports.borrow_mut().push(result);
        self.reported.notify();
    }

    /// A message on the FT subject. A standby counts anything there as a heartbeat (as the
    /// reference does); an active server looks for another active one.
    pub fn on_message(&self, node: &Streaming, payload: &[u8]) {
        match node.role.state() {
            State::Standby => self.heard.notify(),
            State::Activating | State::Active => self.check_other_active(node, payload),
            State::Standalone
            | State::Failed
            | State::Clustered
            | State::ClusterActivating
            | State::ClusterLeader => {}
        }
    }

    fn check_other_active(&self, node: &Streaming, payload: &[u8]) {
        let Some(hb) = ft_heartbeat::decode(payload) else {
            return;
        };
        if hb.server_id == node.role.server_id {
            return;
        }
        let Some(theirs) = hb.activated else {
            log::error!(
                "STAN: ft: error decoding activation time in a heartbeat from serverID {:?}",
                hb.server_id
            );
            return;
        };
        match self.activated.get() {
            Some(ours) if theirs < ours => fatal(
                node,
                &format!(
                    "ft: serverID {:?} claims to be active, aborting",
                    hb.server_id
                ),
            ),
            _ => log::error!("STAN: ft: serverID {:?} claims to be active", hb.server_id),
        }
    }
}

/// Logs a fatal FT error and ends the process, as the reference's panic does: another server
/// serves (or will serve) this store, and this one must not write to it again.
fn fatal(node: &Streaming, why: &str) -> ! {
    node.role.set(State::Failed);
    log::error!("STAN: {why}");
    log::logger().flush();
    std::process::exit(1);
}

fn jittered(d: Duration) -> Duration {
    let percent: i64 = rand::random_range(-10..=10);
    let nanos = d.as_nanos() as i64;
    Duration::from_nanos((nanos + nanos * percent / 100).max(1) as u64)
}

/// What the lock file says about this process (a refused server names its holder).
pub fn holder_description(server_id: &str) -> String {
    format!(
        "pid {} on host {}, stanza server {server_id}",
        std::process::id(),
        crate::util::syslog::hostname()
    )
}

/// Core 0: the standby loop, then the take-over. Runs for the life of the process.
pub async fn run(node: Rc<Streaming>, ft: Rc<Ft>, dir: PathBuf) {
    let heartbeat = jittered(HEARTBEAT);
    let missed = jittered(MISSED);
    log::info!("STAN: Starting in standby mode");
    let me = holder_description(&node.role.server_id);
    let mut wait = missed;
    let mut next_report = Instant::now();
    let mut report_every = Duration::from_secs(1);
    let lock = loop {
        let silent = futures_lite::future::or(
            async {
                ft.heard.notified().await;
                false
            },
            async {
                glommio::timer::sleep(wait).await;
                true
            },
        )
        .await;
        if !silent {
            wait = missed;
            continue;
        }
        // Silence: try the lock, and again every heartbeat interval while it lasts.
        wait = heartbeat;
        let (dir, me) = (dir.clone(), me.clone());
        let attempt = glommio::executor()
            .spawn_blocking(move || StoreLock::try_acquire(&dir, &me))
            .await;
        let report = Instant::now() >= next_report;
        match attempt {
            Ok(Attempt::Held(lock)) => break lock,
            Ok(Attempt::Busy { holder }) if report => log::info!(
                "STAN: ft: unable to get store lock at this time, going back to standby (held by {})",
                if holder.is_empty() { "an unknown process" } else { &holder }
            ),
            Err(e) if report => {
                log::error!("STAN: ft: error attempting to get the store lock: {e}")
            }
            _ => {}
        }
        if report {
            next_report = Instant::now() + report_every;
            report_every = (report_every * 2).min(REPORT_AT_MOST);
        }
    };
    take_over(&node, &ft, Arc::new(lock), &dir, heartbeat).await;
}

async fn take_over(
    node: &Rc<Streaming>,
    ft: &Rc<Ft>,
    lock: Arc<StoreLock>,
    dir: &Path,
    hb: Duration,
) {
    let activated = SystemTime::now();
    ft.activated.set(Some(activated));
    node.role.set(State::Activating);
    log::info!(
        "STAN: Server is active (store lock {} held)",
        lock.path().display()
    );
    // Heartbeats before recovery, so that standbys stop trying the lock at once.
    glommio::spawn_local(send_heartbeats(
        node.clone(),
        ft.clone(),
        lock,
        activated,
        hb,
    ))
    .detach();
    let cid = node.subjects.cluster_id.clone();
    let root = dir.to_path_buf();
    let key = glommio::executor()
        .spawn_blocking(move || shards::store::file::check_server_file(&root, &cid))
        .await;
    let key = match key {
        Ok(material) => AckKey::new(&material),
        Err(why) => fatal(node, &why),
    };
    for core in 0..node.core.ncores {
        node.send_control(
            core,
            ControlMsg::Activate {
                ack_key: key.clone(),
            },
        );
    }
    loop {
        let failed = ft.reports.borrow().iter().find_map(|r| r.clone().err());
        if let Some(why) = failed {
            fatal(node, &why);
        }
        if ft.reports.borrow().len() >= node.core.ncores {
            break;
        }
        ft.reported.notified().await;
    }
    node.role.set(State::Active);
    if node.partition.is_some() {
        if let Err(e) = node.check_partitions().await {
            fatal(node, &format!("Partitioning error: {e}"));
        }
        node.watch_partitions();
    }
    log::info!("STAN: Streaming Server is ready");
}

async fn send_heartbeats(
    node: Rc<Streaming>,
    ft: Rc<Ft>,
    lock: Arc<StoreLock>,
    activated: SystemTime,
    every: Duration,
) {
    let payload = ft_heartbeat::encode(&node.role.server_id, activated);
    loop {
        node.publish(ft.subject.as_bytes(), None, &payload);
        glommio::timer::sleep(every).await;
        let held = lock.clone();
        let still = glommio::executor()
            .spawn_blocking(move || held.still_held())
            .await;
        if !still {
            fatal(
                &node,
                &format!(
                    "ft: lost the store lock {}, aborting",
                    lock.path().display()
                ),
            );
        }
    }
}
