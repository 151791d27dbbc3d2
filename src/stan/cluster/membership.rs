//! Who is in the cluster (issue 18.6). A node started with no raft state, no `peers` and no
//! `bootstrap` joins: its groups start with no members, and core 0 asks on
//! `_STAN.raft.<cid>.join` (the reference's `RaftJoinRequest`, up to 5 times) until the
//! serving leader has added it to every group; it then catches up from snapshots. With
//! `allow_add_remove_node` the leader also answers `_STAN.raft.<cid>.node.add` / `.node.remove`
//! (payload: the node's name; `+OK` or `-ERR ...`). A change goes to every partition group
//! (on their cores) first, then to the metadata group, whose membership says who is in the
//! cluster: a node that sees itself removed from it shuts down (exit 0), as the reference's
//! removed leader does, and refuses to start again on the same log.

use super::host::RaftHost;
use crate::stan::messages::{ControlMsg, StanMsg};
use crate::stan::role::State;
use crate::stan::streaming::Streaming;
use bytes::Bytes;
use prost::Message as _;
use shards::cluster as pb;
use shards::raft::node_ids::raft_id;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Join requests a new node sends before it gives up (the reference's 5).
const JOIN_ATTEMPTS: u32 = 5;
/// How long each join request waits for the leader: it answers once the node votes in every
/// group, which takes a snapshot and a commit in each.
const JOIN_WAIT: Duration = Duration::from_secs(3);
/// How long a joining node waits to hear a member (whose partition count it checks) first.
const HELLO_WAIT: Duration = Duration::from_secs(5);
/// How long a membership change may take in every group of one core.
const CHANGE_LIMIT: Duration = Duration::from_secs(30);
/// How often a change in progress looks at its groups.
const STEP_EVERY: Duration = Duration::from_millis(20);

/// A raft request that core 0 handles (it has the metadata group).
#[derive(Debug, Clone, Copy)]
pub enum Core0Request {
    Hello,
    Join,
    NodeAdmin { add: bool },
}

/// Why the leader did not change a membership.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    /// The same node's change is under way (a join request sent again): the first answers.
    #[error("a change of this node's membership is in progress")]
    InProgress,
    #[error("invalid node ID")]
    InvalidNodeId,
    #[error("cannot remove the cluster's last node")]
    LastNode,
    #[error("{0}")]
    Failed(String),
}

impl Streaming {
    /// Hands a raft request that needs the metadata group to core 0.
    pub(in crate::stan) fn on_core0_request(
        &self,
        request: Core0Request,
        payload: Bytes,
        reply: Option<Bytes>,
    ) {
        if self.core.id != 0 {
            self.send_control(
                0,
                ControlMsg::RaftCore0 {
                    request,
                    payload,
                    reply,
                },
            );
            return;
        }
        match request {
            Core0Request::Hello => self.on_raft_hello(&payload),
            Core0Request::Join => self.on_raft_join(payload, reply),
            Core0Request::NodeAdmin { add } => self.on_raft_node_admin(add, payload, reply),
        }
    }

    /// Core 0 of a node with no membership: asks the leader to add it, and ends the process
    /// with the reference's error when no leader does.
    pub(super) async fn join_cluster(self: Rc<Self>, host: Rc<RaftHost>) {
        let Some(setup) = &self.role.cluster else {
            return;
        };
        let cid = self.subjects.cluster_id.clone();
        let heard_by = Instant::now() + HELLO_WAIT;
        while !host.member_heard.get() && Instant::now() < heard_by {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        if !host.member_heard.get() {
            // Members say hello every 2 s: nobody is there to join (the reference fails
            // the same way after its requests find no responders).
            super::stop(&format!(
                "STAN: failed to join Raft group {cid}: no member of the cluster was heard within {HELLO_WAIT:?}"
            ));
        }
        let request = pb::RaftJoinRequest {
            node_id: setup.node_name.clone(),
            node_addr: setup.node_name.clone(),
        };
        let payload = Bytes::from(request.encode_to_vec());
        let subject = self.subjects.raft_join();
        for attempt in 1..=JOIN_ATTEMPTS {
            if !host.joining() {
                return;
            }
            let answer = self
                .ask_once(&subject, setup.node_id, payload.clone(), JOIN_WAIT)
                .await;
            match answer.map(pb::RaftJoinResponse::decode) {
                Some(Ok(r)) if r.error.is_empty() => {
                    log::info!("STAN: raft: joined Raft group {cid}: catching up from the leader");
                    return;
                }
                Some(Ok(r)) => log::warn!(
                    "STAN: raft: join request {attempt} of {JOIN_ATTEMPTS} refused: {}",
                    r.error
                ),
                Some(Err(e)) => log::warn!(
                    "STAN: raft: join request {attempt} of {JOIN_ATTEMPTS}: undecodable answer: {e}"
                ),
                None => log::warn!(
                    "STAN: raft: join request {attempt} of {JOIN_ATTEMPTS}: no leader answered within {JOIN_WAIT:?}"
                ),
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        super::stop(&format!("STAN: failed to join Raft group {cid}"))
    }

    /// A join request: answered by the serving leader once the node votes in every group.
    fn on_raft_join(&self, payload: Bytes, reply: Option<Bytes>) {
        if self.role.state() != State::ClusterLeader {
            return;
        }
        let (Some(reply), Some(me)) = (reply, self.rc()) else {
            return;
        };
        let answer = move |me: &Streaming, error: String| {
            let bytes = Bytes::from(pb::RaftJoinResponse { error }.encode_to_vec());
            me.publish(&reply, None, &bytes);
        };
        let name = match pb::RaftJoinRequest::decode(payload) {
            Ok(r) => r.node_id,
            Err(e) => return answer(self, format!("invalid join request: {e}")),
        };
        glommio::spawn_local(async move {
            match me.change_membership(&name, true).await {
                Ok(()) => {
                    log::info!("STAN: raft: node {name:?} joined the cluster");
                    answer(&me, String::new());
                }
                Err(MembershipError::InProgress) => {}
                Err(e) => {
                    log::warn!("STAN: raft: node {name:?} could not join: {e}");
                    answer(&me, e.to_string());
                }
            }
        })
        .detach();
    }

    /// `node.add` / `node.remove`: answered by the serving leader, when allowed.
    fn on_raft_node_admin(&self, add: bool, payload: Bytes, reply: Option<Bytes>) {
        let allowed = self
            .role
            .cluster
            .as_ref()
            .is_some_and(|c| c.allow_add_remove_node);
        if !allowed || self.role.state() != State::ClusterLeader {
            return;
        }
        let (Some(reply), Some(me)) = (reply, self.rc()) else {
            return;
        };
        let name = String::from_utf8_lossy(&payload).trim().to_string();
        let verb = if add { "adding" } else { "removing" };
        glommio::spawn_local(async move {
            let text = match me.change_membership(&name, add).await {
                Ok(()) => {
                    log::info!("STAN: raft: {verb} node {name:?}: done");
                    "+OK".to_string()
                }
                Err(e) => format!("-ERR {verb} node {name:?}: {e}"),
            };
            me.publish(&reply, None, &Bytes::from(text));
        })
        .detach();
    }

    /// Core 0 of the leader: adds or removes `name` in every group, the partition groups
    /// (on every core) first, the metadata group last.
    async fn change_membership(
        self: &Rc<Self>,
        name: &str,
        add: bool,
    ) -> Result<(), MembershipError> {
        if name.is_empty() {
            return Err(MembershipError::InvalidNodeId);
        }
        let host = self.raft.borrow().clone();
        let Some(host) = host else {
            return Err(MembershipError::Failed("raft groups not open".into()));
        };
        let node = raft_id(name);
        if !add && host.voters_of(0) == [node] {
            return Err(MembershipError::LastNode);
        }
        if !host.start_change(node) {
            return Err(MembershipError::InProgress);
        }
        let result = self.change_every_group(&host, node, add).await;
        host.end_change(node);
        result.map_err(MembershipError::Failed)
    }

    async fn change_every_group(
        self: &Rc<Self>,
        host: &RaftHost,
        node: u64,
        add: bool,
    ) -> Result<(), String> {
        let token = self.call_every_core(&self.cluster_gathers, |token| {
            StanMsg::Control(ControlMsg::ClusterMembership { token, node, add })
        });
        let limit = CHANGE_LIMIT + Duration::from_secs(5);
        let reports = self.cluster_gathers.wait(token, Some(limit)).await;
        if reports.len() < self.core.ncores {
            return Err(format!(
                "{} of {} cores did not answer within {limit:?}",
                self.core.ncores - reports.len(),
                self.core.ncores
            ));
        }
        if let Some(Err(e)) = reports.into_iter().find(Result::is_err) {
            return Err(e);
        }
        change_groups(host, &[0], node, add).await
    }

    /// Every core: adds or removes `node` in the partition groups this core has.
    pub(in crate::stan) fn change_partition_membership(
        &self,
        from: usize,
        token: u64,
        node: u64,
        add: bool,
    ) {
        let Some(me) = self.rc() else {
            return;
        };
        glommio::spawn_local(async move {
            let host = me.raft.borrow().clone();
            let result = match host {
                None => Err("raft groups not open".to_string()),
                Some(host) => {
                    let groups: Vec<u32> =
                        host.group_ids().into_iter().filter(|g| *g != 0).collect();
                    change_groups(&host, &groups, node, add).await
                }
            };
            me.send_control(from, ControlMsg::ClusterReport { token, result });
        })
        .detach();
    }
}

/// Steps `groups` until `node` votes in each (`add`) or in none, within `CHANGE_LIMIT`.
async fn change_groups(
    host: &RaftHost,
    groups: &[u32],
    node: u64,
    add: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + CHANGE_LIMIT;
    loop {
        let pending: Vec<u32> = groups
            .iter()
            .copied()
            .filter(|g| host.votes_in(*g, node) != Some(add))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "raft groups {pending:?} did not commit the change within {CHANGE_LIMIT:?}"
            ));
        }
        for g in pending {
            host.step_membership(g, node, add)?;
        }
        glommio::timer::sleep(STEP_EVERY).await;
    }
}
