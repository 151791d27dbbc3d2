//! Raft clustering in the server (issue 18): the start-up decisions (`setup.rs`), one core's
//! groups with their log file and loop (`host.rs`), and here how raft traffic reaches them.
//! Batches travel as NATS messages on `_STAN.raft.<cid>.<node raft ID>.<group>`, over routes
//! or an external NATS server (`-ns`) alike: core 0 announces `_STAN.raft.<cid>.<own ID>.>` to
//! routes and passes each batch to the core owning its group (named by the subject, so it is
//! not decoded on the way); with `-ns` every core subscribes its own groups' subjects.
//!
//! The streaming state goes through the groups (`driver.rs`: a leader's commits and client
//! registrations proposed, every node applying committed entries to its store) and the
//! metadata group's leader serves (`serving.rs`); snapshots hold the state and a node behind
//! catches up from one (`transfer.rs`); nodes join, and are added or removed, through the
//! leader (`membership.rs`).

pub mod driver;
pub mod host;
pub mod membership;
pub mod proposals;
pub mod serving;
pub mod setup;
pub mod transfer;

use super::messages::ControlMsg;
use super::streaming::Streaming;
use bytes::Bytes;
use host::RaftHost;
use shards::raft::partitions::shard_of_group;
use std::rc::Rc;
use std::time::Duration;

/// How often a bootstrapped node announces itself (the reference's 1 s).
const BOOTSTRAP_ANNOUNCE: Duration = Duration::from_secs(1);
/// How often every node says its name and partition count.
const HELLO_EVERY: Duration = Duration::from_secs(2);
/// How long a node ending for a conflict with another lets its last word travel.
const END_LINGER: Duration = Duration::from_millis(300);

/// Ends the process at once, `message` logged first: what the node would do next could not
/// be trusted (each caller says why in the message).
pub(super) fn stop(message: &str) -> ! {
    log::error!("{message}");
    log::logger().flush();
    std::process::exit(1);
}

/// What a node says on the hello subject: its partition count, whether it is a member yet
/// (`member` or `joining`), and its name.
fn hello(setup: &setup::ClusterSetup, joining: bool) -> Bytes {
    let state = if joining { "joining" } else { "member" };
    Bytes::from(format!("{} {state} {}", setup.partitions, setup.node_name))
}

/// A hello's partition count, whether the node is joining, and its name.
fn parse_hello(text: &str) -> Option<(u32, bool, &str)> {
    let (count, rest) = text.split_once(' ')?;
    let (state, name) = rest.split_once(' ')?;
    let joining = match state {
        "joining" => true,
        "member" => false,
        _ => return None,
    };
    Some((count.parse().ok()?, joining, name))
}

impl Streaming {
    /// Clustered: the subjects core 0 announces to routes for raft traffic.
    pub(super) fn cluster_subjects(&self) -> Vec<String> {
        match &self.role.cluster {
            Some(setup) => {
                let mut subjects = vec![
                    self.subjects.raft_for_node(setup.node_id),
                    self.subjects.raft_bootstrap(),
                    self.subjects.raft_hello(),
                    self.subjects.raft_join(),
                ];
                if setup.allow_add_remove_node {
                    subjects.push(self.subjects.raft_node_admin(true));
                    subjects.push(self.subjects.raft_node_admin(false));
                }
                subjects
            }
            None => Vec::new(),
        }
    }

    /// Clustered: opens this core's groups and starts driving them (with `-ns`, after
    /// subscribing their subjects); core 0 of a bootstrapped node starts announcing it.
    pub async fn start_raft(self: &Rc<Self>) -> Result<(), String> {
        let Some(setup) = &self.role.cluster else {
            return Ok(());
        };
        let host = RaftHost::open(
            setup,
            &self.subjects.cluster_id,
            self.core.id,
            self.core.ncores,
        )
        .await
        .map_err(|e| e.to_string())?;
        let host = Rc::new(host);
        *self.raft.borrow_mut() = Some(host.clone());
        let external = self.external.borrow().clone();
        if let Some(ext) = external {
            for subject in host.own_subjects() {
                ext.subscribe(&subject);
            }
            ext.subscribe(&format!(
                "{}>",
                self.subjects
                    .raft_fetched_prefix(setup.node_id, self.core.id)
            ));
            if self.core.id == 0 {
                ext.subscribe(&self.subjects.raft_fetch(setup.node_id));
                for subject in self.cluster_subjects().into_iter().skip(1) {
                    ext.subscribe(&subject);
                }
            }
        }
        self.open_store_for_applying(&host).await?;
        let me = self.clone();
        self.core
            .tasks
            .spawn("raft groups", None, me.drive_raft(host.clone()));
        if self.core.id == 0 {
            let me = self.clone();
            self.core
                .tasks
                .spawn("cluster leadership", None, me.watch_leadership());
        }
        if self.core.id == 0 {
            let said = setup.clone();
            let joining = host.clone();
            self.say_every(
                "raft hello",
                self.subjects.raft_hello(),
                HELLO_EVERY,
                move || hello(&said, joining.joining()),
            );
            if host.joining() {
                log::info!(
                    "STAN: raft: no raft state, peers or bootstrap: joining Raft group {}",
                    self.subjects.cluster_id
                );
                let me = self.clone();
                self.core
                    .tasks
                    .spawn("raft join", None, me.join_cluster(host.clone()));
            }
        }
        if self.core.id == 0 && setup.announces_bootstrap {
            let name = Bytes::from(setup.node_name.clone());
            let subject = self.subjects.raft_bootstrap();
            self.say_every("raft bootstrap", subject, BOOTSTRAP_ANNOUNCE, move || {
                name.clone()
            });
        }
        Ok(())
    }

    /// Publishes what `payload` gives on `subject` now and every `every`, for the life of the
    /// core.
    fn say_every(
        self: &Rc<Self>,
        task: &'static str,
        subject: String,
        every: Duration,
        payload: impl Fn() -> Bytes + 'static,
    ) {
        let me = self.clone();
        self.core.tasks.spawn(task, None, async move {
            loop {
                me.publish(subject.as_bytes(), None, &payload());
                glommio::timer::sleep(every).await;
            }
        });
    }

    /// The core that owns a channel: on a clustered node its partition's core (so a core's
    /// commit only holds channels of the groups it drives), else `shard_for`.
    pub fn core_of_channel(&self, channel: &[u8]) -> usize {
        match &self.role.cluster {
            Some(setup) => shard_of_group(
                shards::raft::partitions::group_of_channel(channel, setup.partitions),
                self.core.ncores,
            ),
            None => shards::shard_for_bytes(channel, self.core.ncores),
        }
    }

    /// A raft batch for `node`'s `group`: to the core that owns the group.
    pub(super) fn on_raft(&self, node: u64, group: u32, payload: Bytes) {
        let Some(setup) = &self.role.cluster else {
            return;
        };
        if node != setup.node_id {
            return;
        }
        let owner = shard_of_group(group, self.core.ncores);
        if owner == self.core.id {
            self.raft_receive(&payload);
        } else {
            self.send_control(owner, ControlMsg::Raft { payload });
        }
    }

    pub(super) fn raft_receive(&self, payload: &[u8]) {
        // Before this core's groups are open a batch is dropped: raft sends again.
        let host = self.raft.borrow().clone();
        if let Some(host) = host {
            host.receive(payload);
        }
    }

    /// Another node's hello (core 0). Nodes that map channels to partitions differently
    /// would put a channel's entries in different groups: a joining node that hears a member
    /// with another count ends itself; two members with different counts end each other (the
    /// other ends as well when it hears this one); a member only warns of a joining node,
    /// which ends itself.
    pub(super) fn on_raft_hello(&self, payload: &[u8]) {
        let Some(setup) = &self.role.cluster else {
            return;
        };
        let text = String::from_utf8_lossy(payload);
        let Some((count, other_joining, name)) = parse_hello(&text) else {
            return;
        };
        let host = self.raft.borrow().clone();
        let Some(host) = host else {
            return;
        };
        if name == setup.node_name {
            return;
        }
        host.heard_names
            .borrow_mut()
            .insert(shards::raft::node_ids::raft_id(name), name.to_string());
        if count == setup.partitions {
            if !other_joining {
                host.member_heard.set(true);
            }
            return;
        }
        let mine = setup.partitions;
        match (host.joining(), other_joining) {
            (_, true) => log::warn!(
                "STAN: raft: node {name:?} asks to join with {count} partitions, this cluster has {mine}: it will not be added"
            ),
            (true, false) => stop(&format!(
                "STAN: raft: this cluster's node {name:?} has {count} partitions and this joining node {mine}: set cluster.partitions to {count} and clear this node's raft log"
            )),
            (false, false) => {
                log::error!(
                    "STAN: cluster node {name:?} has {count} partitions and this node {mine} (the count is fixed when a node's raft log is created): clear the raft log of the node that is wrong"
                );
                self.end_after_saying(&self.subjects.raft_hello(), hello(setup, false));
            }
        }
    }

    /// Says `payload` on `subject` once more, then ends the process a moment later: the other
    /// node of a conflict (which may have started after this one last spoke) ends too, instead
    /// of going on alone.
    fn end_after_saying(&self, subject: &str, payload: Bytes) {
        self.publish(subject.as_bytes(), None, &payload);
        glommio::spawn_local(async {
            glommio::timer::sleep(END_LINGER).await;
            log::logger().flush();
            std::process::exit(1);
        })
        .detach();
    }

    /// A bootstrapped node's announcement: two nodes that both bootstrapped would each lead a
    /// cluster of their own, so a bootstrapped node that hears another ends (the reference's
    /// split-brain guard, with its text).
    pub(super) fn on_raft_bootstrap(&self, payload: &[u8]) {
        let Some(setup) = &self.role.cluster else {
            return;
        };
        if !setup.announces_bootstrap || payload == setup.node_name.as_bytes() {
            return;
        }
        log::error!(
            "STAN: Server {:?} was also started with -cluster_bootstrap",
            String::from_utf8_lossy(payload)
        );
        let name = Bytes::from(setup.node_name.clone());
        self.end_after_saying(&self.subjects.raft_bootstrap(), name);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_hello;

    #[test]
    fn hellos_say_count_membership_and_name() {
        assert_eq!(parse_hello("16 member a b"), Some((16, false, "a b")));
        assert_eq!(parse_hello("8 joining d"), Some((8, true, "d")));
        assert_eq!(parse_hello("8 d"), None, "an old form");
        assert_eq!(parse_hello("x member d"), None);
        assert_eq!(parse_hello("8 other d"), None);
    }
}
