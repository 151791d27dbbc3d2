//! `/streaming/clusterz`, stanza's extension for raft clustering: per raft group (the
//! metadata group 0 and one per partition), this node's role, the leader it knows, term,
//! commit and applied indexes, its log's range, and on the leader each member's matched index
//! and lag. Also the `role` that `/streaming/serverz` reports (the metadata group's).

use super::format::rfc3339;
use super::http::Reply;
use super::Monitor;
use crate::stan::cluster::host::GroupStatus;
use serde_json::{json, Value};
use shards::raft::StateRole;
use std::time::SystemTime;

/// A role as the reference names hashicorp raft's states.
pub fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "Leader",
        StateRole::Follower => "Follower",
        StateRole::Candidate | StateRole::PreCandidate => "Candidate",
    }
}

/// `serverz`'s `role`: this node's role in the metadata group (on core 0).
pub fn node_role(m: &Monitor) -> Option<&'static str> {
    let host = m.node.raft.borrow().clone()?;
    host.role_of(0).map(role_name)
}

pub async fn clusterz(m: &Monitor) -> Reply {
    let Some(setup) = &m.node.role.cluster else {
        return Reply::NotFound("not clustered\n".into());
    };
    let reports = m.gather().await;
    let heard = m
        .node
        .raft
        .borrow()
        .as_ref()
        .map(|h| h.heard_names.borrow().clone())
        .unwrap_or_default();
    let mut groups: Vec<&GroupStatus> = reports.iter().flat_map(|r| r.raft.iter()).collect();
    groups.sort_by_key(|g| g.group);
    let name = |id: u64| -> Value {
        match setup.names.get(&id).or_else(|| heard.get(&id)) {
            Some(n) => json!(n),
            None if id == 0 => Value::Null,
            None => json!(id.to_string()),
        }
    };
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|g| {
            let peers: Vec<Value> = g
                .matched
                .iter()
                .map(|(id, matched)| {
                    json!({
                        "node_id": name(*id),
                        "matched_index": matched,
                        "lag": g.last_index.saturating_sub(*matched),
                    })
                })
                .collect();
            let mut o = json!({
                "group": g.group,
                "kind": if g.group == 0 { "metadata" } else { "partition" },
                "role": role_name(g.role),
                "leader": name(g.leader),
                "term": g.term,
                "commit_index": g.commit,
                "applied_index": g.applied,
                "first_index": g.first_index,
                "last_index": g.last_index,
                "voters": g.voters.iter().map(|v| name(*v)).collect::<Vec<_>>(),
            });
            if let Some(obj) = o.as_object_mut() {
                if g.group > 0 {
                    obj.insert("partition".into(), json!(g.group - 1));
                }
                if !peers.is_empty() {
                    obj.insert("peers".into(), Value::Array(peers));
                }
            }
            o
        })
        .collect();
    Reply::Json(json!({
        "cluster_id": m.opts.streaming.cluster_id,
        "server_id": m.node.role.server_id,
        "node_id": setup.node_name,
        "raft_id": setup.node_id.to_string(),
        "now": rfc3339(SystemTime::now()),
        "partitions": setup.partitions,
        "groups": groups,
    }))
}
