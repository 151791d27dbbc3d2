//! Whether this process's streaming server answers requests, one value shared by every core.
//! A standalone server answers from start-up. In FT mode it stands by (serving NATS and
//! monitoring only) until core 0 holds the store lock and every core has opened its part of
//! the store (`ft.rs`). A clustered node (`cluster/`) reports CLUSTERED and answers only
//! while it leads the cluster and has opened its store as the serving node.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Standalone,
    /// FT mode, waiting for the store lock.
    Standby,
    /// FT mode, lock held, the store being recovered (`serverz` already says FT_ACTIVE, as the
    /// reference's does; `isFTActive` waits for `Active`).
    Activating,
    Active,
    /// FT mode, the take-over failed (the process is exiting).
    Failed,
    /// Raft clustering, not serving (a follower, or a leader not ready yet).
    Clustered,
    /// Raft clustering: this node leads, its cores are opening their stores to serve.
    ClusterActivating,
    /// Raft clustering: this node leads and serves.
    ClusterLeader,
}

impl State {
    /// The name `/streaming/serverz` reports (`state`).
    pub fn name(self) -> &'static str {
        match self {
            State::Standalone => "STANDALONE",
            State::Standby => "FT_STANDBY",
            State::Activating | State::Active => "FT_ACTIVE",
            State::Failed => "FAILED",
            State::Clustered | State::ClusterActivating | State::ClusterLeader => "CLUSTERED",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Standalone,
            1 => State::Standby,
            2 => State::Activating,
            3 => State::Active,
            5 => State::Clustered,
            6 => State::ClusterActivating,
            7 => State::ClusterLeader,
            _ => State::Failed,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            State::Standalone => 0,
            State::Standby => 1,
            State::Activating => 2,
            State::Active => 3,
            State::Failed => 4,
            State::Clustered => 5,
            State::ClusterActivating => 6,
            State::ClusterLeader => 7,
        }
    }
}

pub struct Role {
    state: AtomicU8,
    /// The streaming server's ID: a NUID made at each start, as the reference's (monitoring
    /// reports it; FT heartbeats carry it).
    pub server_id: String,
    /// Clustered: this node's name, log and timers, decided at start-up.
    pub cluster: Option<crate::stan::cluster::setup::ClusterSetup>,
    /// Clustered: the metadata group's leader as core 0 last saw it (raft ID, 0: none).
    pub metadata_leader: AtomicU64,
    /// Clustered: per core, whether this node leads all of the core's groups with everything
    /// applied (the node serves once all say so).
    pub cores_leading: Box<[AtomicBool]>,
    /// Clustered: the cluster's ack key was applied since this process started.
    pub ack_key_agreed: AtomicBool,
    /// Clustered: a partition group stopped being led here while this node served.
    pub partition_lost: AtomicBool,
}

impl Role {
    pub fn new(ft: bool, server_id: String) -> Role {
        let state = if ft {
            State::Standby
        } else {
            State::Standalone
        };
        Role {
            state: AtomicU8::new(state.to_u8()),
            server_id,
            cluster: None,
            metadata_leader: AtomicU64::new(0),
            cores_leading: Box::new([]),
            ack_key_agreed: AtomicBool::new(false),
            partition_lost: AtomicBool::new(false),
        }
    }

    /// A clustered node's role.
    pub fn clustered(
        server_id: String,
        setup: crate::stan::cluster::setup::ClusterSetup,
        cores: usize,
    ) -> Role {
        Role {
            state: AtomicU8::new(State::Clustered.to_u8()),
            server_id,
            cluster: Some(setup),
            metadata_leader: AtomicU64::new(0),
            cores_leading: (0..cores).map(|_| AtomicBool::new(false)).collect(),
            ack_key_agreed: AtomicBool::new(false),
            partition_lost: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set(&self, state: State) {
        self.state.store(state.to_u8(), Ordering::Release);
    }

    pub fn is_ft(&self) -> bool {
        matches!(
            self.state(),
            State::Standby | State::Activating | State::Active | State::Failed
        )
    }

    /// Whether streaming requests are answered.
    pub fn serving(&self) -> bool {
        matches!(
            self.state(),
            State::Standalone | State::Active | State::ClusterLeader
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standalone_and_active_serve() {
        let role = Role::new(true, "id".into());
        assert_eq!(role.state().name(), "FT_STANDBY");
        assert!(!role.serving());
        role.set(State::Activating);
        assert_eq!(role.state().name(), "FT_ACTIVE");
        assert!(!role.serving());
        role.set(State::Active);
        assert!(role.serving());
        role.set(State::Failed);
        assert!(!role.serving());
        let standalone = Role::new(false, "id".into());
        assert!(standalone.serving());
        assert!(!standalone.is_ft());
        assert_eq!(standalone.state().name(), "STANDALONE");
    }
}
