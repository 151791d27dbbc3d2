//! Who serves in a cluster, decided on core 0: the node that leads the metadata group serves
//! once it leads every group with everything applied (its store then holds every entry any
//! earlier leader acknowledged). Serving starts with the cluster's ack key agreed (the first
//! leader proposes its own, so that ack inboxes handed out by one leader work on the next),
//! then every core opens its store as the serving node; it stops the moment another node
//! leads the metadata group, or a partition group stops being led here (its shard may then
//! hold sequences another leader commits too), and every core stands down; it serves again,
//! rebuilt from the store, once it leads everything again.

use super::super::messages::{ControlMsg, StanMsg};
use super::super::role::State;
use super::super::streaming::Streaming;
use shards::ack_key::AckKey;
use shards::raft::meta_entry::MetaOp;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often core 0 looks at the groups' leadership.
const WATCH: Duration = Duration::from_millis(20);
/// How long the cores may take to open their stores (recovery reads every channel's index).
const TRANSITION_LIMIT: Duration = Duration::from_secs(120);

fn fatal(why: &str) -> ! {
    super::stop(&format!("STAN: raft: {why}; stopping"))
}

impl Streaming {
    /// Core 0, for the life of the process.
    pub(super) async fn watch_leadership(self: Rc<Self>) {
        let Some(me) = self.role.cluster.as_ref().map(|c| c.node_id) else {
            return;
        };
        let mut was_member = false;
        loop {
            glommio::timer::sleep(WATCH).await;
            let host = self.raft.borrow().clone();
            if let Some(host) = host {
                let member = host.is_member();
                if was_member && !member && !host.joining() {
                    self.leave_when_removed().await;
                }
                was_member = member;
            }
            let leader = self.role.metadata_leader.load(Ordering::Acquire);
            let all_led = self
                .role
                .cores_leading
                .iter()
                .all(|c| c.load(Ordering::Acquire));
            let lost = self.role.partition_lost.load(Ordering::Acquire);
            match self.role.state() {
                State::Clustered if leader == me && all_led => self.start_serving(me).await,
                State::ClusterActivating | State::ClusterLeader if leader != me || lost => {
                    self.stop_serving().await
                }
                _ => {}
            }
        }
    }

    async fn start_serving(self: &Rc<Self>, me: u64) {
        self.role.set(State::ClusterActivating);
        log::info!("STAN: raft: this node leads every group: opening the store to serve");
        let Some(dir) = self.opts.streaming.dir.clone() else {
            fatal("no store directory");
        };
        let cid = self.subjects.cluster_id.clone();
        let read_key = || shards::store::file::check_server_file(&dir, &cid);
        if !self.role.ack_key_agreed.load(Ordering::Acquire) {
            let material = read_key().unwrap_or_else(|e| fatal(&e));
            if let Err(e) = self.replicate_meta(&MetaOp::AckKey(material)).await {
                log::warn!("STAN: raft: the cluster's ack key was not agreed ({e}); not serving");
                self.role.set(State::Clustered);
                return;
            }
        }
        let key = AckKey::new(&read_key().unwrap_or_else(|e| fatal(&e)));
        let token = self.call_every_core(&self.cluster_gathers, |token| {
            StanMsg::Control(ControlMsg::ClusterServe {
                token,
                ack_key: key.clone(),
            })
        });
        let reports = self
            .cluster_gathers
            .wait(token, Some(TRANSITION_LIMIT))
            .await;
        self.check_reports(&reports, "opening the store to serve");
        if self.role.metadata_leader.load(Ordering::Acquire) != me {
            self.stop_serving().await;
            return;
        }
        self.role.set(State::ClusterLeader);
        log::info!("STAN: raft: Streaming Server is ready (serving as the cluster's leader)");
    }

    async fn stop_serving(self: &Rc<Self>) {
        self.role.set(State::Clustered);
        log::info!("STAN: raft: another node leads the cluster: this node stops serving");
        let token = self.call_every_core(&self.cluster_gathers, |token| {
            StanMsg::Control(ControlMsg::ClusterStandDown { token })
        });
        let reports = self
            .cluster_gathers
            .wait(token, Some(TRANSITION_LIMIT))
            .await;
        self.check_reports(&reports, "standing down");
        self.role.partition_lost.store(false, Ordering::Release);
    }

    /// This node is no longer in the metadata group's membership: it was removed (by the
    /// leader, possibly itself): it stops, as the reference's removed node does, after a
    /// moment for its last answers to leave.
    async fn leave_when_removed(&self) {
        log::warn!("STAN: raft: this node was removed from the cluster; shutting down");
        if let Some(setup) = &self.role.cluster {
            let marker = setup.log_dir.join(super::setup::REMOVED_FILE);
            if let Err(e) = std::fs::write(
                &marker,
                "removed from the cluster by its leader
",
            ) {
                log::error!("STAN: raft: cannot write {}: {e}", marker.display());
            }
        }
        glommio::timer::sleep(super::END_LINGER).await;
        log::logger().flush();
        std::process::exit(0);
    }

    fn check_reports(&self, reports: &[Result<(), String>], what: &str) {
        if reports.len() < self.core.ncores {
            fatal(&format!(
                "{what}: {} of {} cores did not answer within {TRANSITION_LIMIT:?}",
                self.core.ncores - reports.len(),
                self.core.ncores
            ));
        }
        if let Some(Err(e)) = reports.iter().find(|r| r.is_err()) {
            fatal(&format!("{what}: {e}"));
        }
    }
}
