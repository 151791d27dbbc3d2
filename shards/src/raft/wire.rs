//! Raft messages on stanza's wire: raft-rs values to and from the prost messages of
//! proto/cluster.proto, field by field. Everything another node sends is decoded here with
//! prost and checked (message and entry types known, no message that only a node may send
//! itself), so rust-protobuf 2, which raft-rs 0.7 uses for its own types, never parses bytes
//! from the network (RUSTSEC-2024-0437; ARCHITECTURE.md, "Accepted advisories").

use crate::cluster as pb;
use bytes::Bytes;
use prost::Message as _;
use raft::prelude::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, Message, MessageType, Snapshot,
};

/// Why bytes from another node were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("raft wire: undecodable batch: {0}")]
    Decode(String),
    #[error("raft wire: unknown message type {0}")]
    UnknownMessageType(u32),
    #[error("raft wire: message type {0:?} never travels between stanza nodes")]
    LocalMessageType(MessageType),
    #[error("raft wire: unknown entry type {0}")]
    UnknownEntryType(u32),
    #[error("raft wire: unknown membership change type {0}")]
    UnknownChangeType(u32),
    #[error("raft wire: unknown membership transition {0}")]
    UnknownTransition(u32),
    #[error("raft wire: group message without a message")]
    MissingMessage,
    #[error("raft wire: inconsistent message: {0}")]
    Inconsistent(&'static str),
}

/// One node's raft traffic for another, decoded.
#[derive(Debug, Default)]
pub struct Batch {
    pub from_node: u64,
    pub to_node: u64,
    pub messages: Vec<(u32, Message)>,
}

/// Encodes every group's messages for one destination into one payload.
pub fn encode_batch(from_node: u64, to_node: u64, messages: &[(u32, Message)]) -> Vec<u8> {
    let batch = pb::RaftBatch {
        from_node,
        to_node,
        messages: messages
            .iter()
            .map(|(group, m)| pb::GroupMessage {
                group: *group,
                message: Some(message_to_pb(m)),
            })
            .collect(),
    };
    batch.encode_to_vec()
}

/// Decodes a payload made by `encode_batch` on another node.
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, WireError> {
    let batch = pb::RaftBatch::decode(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
    let mut messages = Vec::with_capacity(batch.messages.len());
    for gm in batch.messages {
        let m = gm.message.ok_or(WireError::MissingMessage)?;
        messages.push((gm.group, message_from_pb(m)?));
    }
    Ok(Batch {
        from_node: batch.from_node,
        to_node: batch.to_node,
        messages,
    })
}

fn message_type(raw: u32) -> Result<MessageType, WireError> {
    use MessageType::*;
    let t = match raw {
        0 => MsgHup,
        1 => MsgBeat,
        2 => MsgPropose,
        3 => MsgAppend,
        4 => MsgAppendResponse,
        5 => MsgRequestVote,
        6 => MsgRequestVoteResponse,
        7 => MsgSnapshot,
        8 => MsgHeartbeat,
        9 => MsgHeartbeatResponse,
        10 => MsgUnreachable,
        11 => MsgSnapStatus,
        12 => MsgCheckQuorum,
        13 => MsgTransferLeader,
        14 => MsgTimeoutNow,
        15 => MsgReadIndex,
        16 => MsgReadIndexResp,
        17 => MsgRequestPreVote,
        18 => MsgRequestPreVoteResponse,
        other => return Err(WireError::UnknownMessageType(other)),
    };
    // Only what raft needs between nodes travels. Proposals are made on the leader only
    // (stanza forwards client requests, not raft proposals); hup, beat, unreachable, snapshot
    // status and check-quorum are a node's own timers and reports; leadership transfers are
    // asked of the leader on its own node; stanza does not use read-index reads.
    match t {
        MsgAppend
        | MsgAppendResponse
        | MsgRequestVote
        | MsgRequestVoteResponse
        | MsgSnapshot
        | MsgHeartbeat
        | MsgHeartbeatResponse
        | MsgTimeoutNow
        | MsgRequestPreVote
        | MsgRequestPreVoteResponse => Ok(t),
        _ => Err(WireError::LocalMessageType(t)),
    }
}

/// Indices and terms above this are not from a real log (and would overflow raft-rs's
/// arithmetic on them).
const MAX_INDEX: u64 = 1 << 62;

fn inconsistent(what: &'static str) -> WireError {
    WireError::Inconsistent(what)
}

/// What an honest node's message always satisfies, checked before raft-rs sees it: raft-rs
/// trusts its peers and aborts on some of these.
fn check_message(m: &Message) -> Result<(), WireError> {
    let t = m.get_msg_type();
    // Every message a node sends carries its term (raft-rs sets it; term 0 means a local
    // message to raft-rs, which aborts when it must answer one).
    if m.term == 0 {
        return Err(inconsistent("no term"));
    }
    let numbers = [
        m.term,
        m.log_term,
        m.index,
        m.commit,
        m.commit_term,
        m.reject_hint,
        m.request_snapshot,
    ];
    if numbers.iter().any(|n| *n > MAX_INDEX) {
        return Err(inconsistent("index or term out of range"));
    }
    // The entry before an append is a real one (term >= 1) unless the append starts the log.
    if t == MessageType::MsgAppend && m.index > 0 && m.log_term == 0 {
        return Err(inconsistent("append after an entry without a term"));
    }
    if m.log_term > m.term && t != MessageType::MsgRequestPreVote {
        return Err(inconsistent("log term after the message's term"));
    }
    let mut prev_term = m.log_term;
    for (k, e) in m.get_entries().iter().enumerate() {
        if t == MessageType::MsgAppend && Some(e.index) != m.index.checked_add(1 + k as u64) {
            return Err(inconsistent("append entries not contiguous"));
        }
        // Entries are made by leaders, in a term >= 1 (raft-rs reads term 0 as "no entry here").
        if e.term == 0 || e.term > m.term || e.term < prev_term || e.index > MAX_INDEX {
            return Err(inconsistent("entry terms out of order"));
        }
        prev_term = e.term;
    }
    if t == MessageType::MsgSnapshot {
        check_snapshot(m)?;
    }
    Ok(())
}

/// A snapshot from a leader: a real position in the log, and a membership stanza makes (it
/// proposes one change at a time, so never a joint configuration).
fn check_snapshot(m: &Message) -> Result<(), WireError> {
    if !m.has_snapshot() {
        return Err(inconsistent("snapshot message without a snapshot"));
    }
    let meta = m.get_snapshot().get_metadata();
    if meta.index == 0 || meta.index > MAX_INDEX || meta.term == 0 || meta.term > m.term {
        return Err(inconsistent("snapshot position"));
    }
    let cs = meta.get_conf_state();
    let joint = !cs.voters_outgoing.is_empty() || !cs.learners_next.is_empty() || cs.auto_leave;
    let zero = cs.voters.contains(&0) || cs.learners.contains(&0);
    let both = cs.voters.iter().any(|v| cs.learners.contains(v));
    let mut voters = cs.voters.clone();
    voters.sort_unstable();
    voters.dedup();
    if joint || zero || both || cs.voters.is_empty() || voters.len() != cs.voters.len() {
        return Err(inconsistent("snapshot membership"));
    }
    Ok(())
}

fn entry_type(raw: u32) -> Result<EntryType, WireError> {
    match raw {
        0 => Ok(EntryType::EntryNormal),
        1 => Ok(EntryType::EntryConfChange),
        2 => Ok(EntryType::EntryConfChangeV2),
        other => Err(WireError::UnknownEntryType(other)),
    }
}

fn message_to_pb(m: &Message) -> pb::RaftMessage {
    pb::RaftMessage {
        msg_type: m.get_msg_type() as u32,
        to: m.to,
        from: m.from,
        term: m.term,
        log_term: m.log_term,
        index: m.index,
        entries: m.get_entries().iter().map(entry_to_pb).collect(),
        commit: m.commit,
        commit_term: m.commit_term,
        snapshot: if m.has_snapshot() {
            Some(snapshot_to_pb(m.get_snapshot()))
        } else {
            None
        },
        request_snapshot: m.request_snapshot,
        reject: m.reject,
        reject_hint: m.reject_hint,
        context: m.context.clone(),
        deprecated_priority: m.deprecated_priority,
        priority: m.priority,
    }
}

fn message_from_pb(p: pb::RaftMessage) -> Result<Message, WireError> {
    let mut m = Message::default();
    m.set_msg_type(message_type(p.msg_type)?);
    m.to = p.to;
    m.from = p.from;
    m.term = p.term;
    m.log_term = p.log_term;
    m.index = p.index;
    let entries = p
        .entries
        .into_iter()
        .map(entry_from_pb)
        .collect::<Result<Vec<_>, _>>()?;
    m.set_entries(entries.into());
    m.commit = p.commit;
    m.commit_term = p.commit_term;
    if let Some(s) = p.snapshot {
        m.set_snapshot(snapshot_from_pb(s));
    }
    m.request_snapshot = p.request_snapshot;
    m.reject = p.reject;
    m.reject_hint = p.reject_hint;
    m.context = p.context;
    m.deprecated_priority = p.deprecated_priority;
    m.priority = p.priority;
    check_message(&m)?;
    Ok(m)
}

/// The prost form of an entry (on the wire and in the log file).
pub fn entry_to_pb(e: &Entry) -> pb::RaftEntry {
    pb::RaftEntry {
        entry_type: e.get_entry_type() as u32,
        term: e.term,
        index: e.index,
        data: e.data.clone(),
        context: e.context.clone(),
    }
}

/// An entry as stored or received (the log file uses the same encoding).
pub fn entry_from_pb(p: pb::RaftEntry) -> Result<Entry, WireError> {
    let mut e = Entry::default();
    e.set_entry_type(entry_type(p.entry_type)?);
    e.term = p.term;
    e.index = p.index;
    e.data = p.data;
    e.context = p.context;
    Ok(e)
}

fn conf_state_to_pb(c: &ConfState) -> pb::RaftConfState {
    pb::RaftConfState {
        voters: c.voters.clone(),
        learners: c.learners.clone(),
        voters_outgoing: c.voters_outgoing.clone(),
        learners_next: c.learners_next.clone(),
        auto_leave: c.auto_leave,
    }
}

fn conf_state_from_pb(p: pb::RaftConfState) -> ConfState {
    let mut c = ConfState::default();
    c.voters = p.voters;
    c.learners = p.learners;
    c.voters_outgoing = p.voters_outgoing;
    c.learners_next = p.learners_next;
    c.auto_leave = p.auto_leave;
    c
}

pub(super) fn snapshot_to_pb(s: &Snapshot) -> pb::RaftSnapshot {
    let meta = s.get_metadata();
    pb::RaftSnapshot {
        data: s.data.clone(),
        metadata: Some(pb::RaftSnapshotMetadata {
            conf_state: Some(conf_state_to_pb(meta.get_conf_state())),
            index: meta.index,
            term: meta.term,
        }),
    }
}

pub(super) fn snapshot_from_pb(p: pb::RaftSnapshot) -> Snapshot {
    let mut s = Snapshot::default();
    s.data = p.data;
    if let Some(meta) = p.metadata {
        let m = s.mut_metadata();
        m.index = meta.index;
        m.term = meta.term;
        if let Some(c) = meta.conf_state {
            m.set_conf_state(conf_state_from_pb(c));
        }
    }
    s
}

/// Decodes the membership change in a conf-change entry (either form), with prost.
pub fn conf_change_from_entry(entry: &Entry) -> Result<ConfChangeV2, WireError> {
    let decode_err = |e: prost::DecodeError| WireError::Decode(e.to_string());
    let mut cc = ConfChangeV2::default();
    match entry.get_entry_type() {
        EntryType::EntryConfChangeV2 => {
            let p = pb::RaftConfChangeV2::decode(entry.data.as_ref()).map_err(decode_err)?;
            cc.set_transition(match p.transition {
                0 => ConfChangeTransition::Auto,
                1 => ConfChangeTransition::Implicit,
                2 => ConfChangeTransition::Explicit,
                other => return Err(WireError::UnknownTransition(other)),
            });
            let mut changes = Vec::with_capacity(p.changes.len());
            for c in p.changes {
                let mut single = ConfChangeSingle::default();
                single.set_change_type(change_type(c.change_type)?);
                single.node_id = c.node_id;
                changes.push(single);
            }
            cc.set_changes(changes.into());
            cc.context = p.context;
        }
        EntryType::EntryConfChange => {
            let p = pb::RaftConfChange::decode(entry.data.as_ref()).map_err(decode_err)?;
            let mut single = ConfChangeSingle::default();
            single.set_change_type(change_type(p.change_type)?);
            single.node_id = p.node_id;
            cc.set_changes(vec![single].into());
            cc.context = p.context;
        }
        EntryType::EntryNormal => {}
    }
    Ok(cc)
}

/// Encodes a membership change the way raft-rs does (so `propose_conf_change` and this agree).
pub fn conf_change_to_bytes(cc: &ConfChangeV2) -> Bytes {
    let p = pb::RaftConfChangeV2 {
        transition: cc.get_transition() as u32,
        changes: cc
            .get_changes()
            .iter()
            .map(|c| pb::RaftConfChangeSingle {
                change_type: c.get_change_type() as u32,
                node_id: c.node_id,
            })
            .collect(),
        context: cc.context.clone(),
    };
    Bytes::from(p.encode_to_vec())
}

fn change_type(raw: u32) -> Result<ConfChangeType, WireError> {
    match raw {
        0 => Ok(ConfChangeType::AddNode),
        1 => Ok(ConfChangeType::RemoveNode),
        2 => Ok(ConfChangeType::AddLearnerNode),
        other => Err(WireError::UnknownChangeType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        m.log_term = 6;
        m.index = 41;
        m.commit = 40;
        m.commit_term = 6;
        m.reject_hint = 3;
        m.priority = -1;
        m.context = Bytes::from_static(b"ctx");
        let mut e = Entry::default();
        e.term = 7;
        e.index = 42;
        e.data = Bytes::from_static(b"payload");
        let mut cc = Entry::default();
        cc.set_entry_type(EntryType::EntryConfChangeV2);
        cc.term = 7;
        cc.index = 43;
        m.set_entries(vec![e, cc].into());
        let mut snap = Snapshot::default();
        snap.data = Bytes::from_static(b"snap");
        snap.mut_metadata().index = 30;
        snap.mut_metadata().term = 5;
        snap.mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3], vec![4])));
        m.set_snapshot(snap);
        m
    }

    #[test]
    fn a_batch_round_trips_field_by_field() {
        let m = sample();
        let bytes = encode_batch(1, 2, &[(5, m.clone()), (0, Message::default())]);
        // MsgHup (type 0) is local: a default message must not be accepted from the wire.
        assert_eq!(
            decode_batch(&bytes).unwrap_err(),
            WireError::LocalMessageType(MessageType::MsgHup)
        );
        let bytes = encode_batch(1, 2, &[(5, m.clone())]);
        let batch = decode_batch(&bytes).unwrap();
        assert_eq!((batch.from_node, batch.to_node), (1, 2));
        assert_eq!(batch.messages, vec![(5, m)]);
    }

    #[test]
    fn raft_rs_and_stanza_encodings_agree() {
        // Same field numbers: raft-rs's own encoding of a message decodes here.
        use protobuf::Message as _;
        let m = sample();
        let raft_bytes = m.write_to_bytes().unwrap();
        let p = pb::RaftMessage::decode(raft_bytes.as_slice()).unwrap();
        assert_eq!(message_from_pb(p).unwrap(), m);

        let mut cc = ConfChangeV2::default();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::AddLearnerNode);
        single.node_id = 9;
        cc.set_changes(vec![single].into());
        cc.set_transition(ConfChangeTransition::Explicit);
        let mut entry = Entry::default();
        entry.set_entry_type(EntryType::EntryConfChangeV2);
        entry.data = Bytes::from(cc.write_to_bytes().unwrap());
        assert_eq!(conf_change_from_entry(&entry).unwrap(), cc);
        assert_eq!(conf_change_to_bytes(&cc), entry.data);
    }

    #[test]
    fn bad_input_is_refused_not_trusted() {
        assert!(matches!(
            decode_batch(b"\xff\xff"),
            Err(WireError::Decode(_))
        ));
        let bad_type = pb::RaftBatch {
            from_node: 1,
            to_node: 2,
            messages: vec![pb::GroupMessage {
                group: 0,
                message: Some(pb::RaftMessage {
                    msg_type: 99,
                    ..Default::default()
                }),
            }],
        };
        assert_eq!(
            decode_batch(&bad_type.encode_to_vec()).unwrap_err(),
            WireError::UnknownMessageType(99)
        );
        let propose = pb::RaftBatch {
            messages: vec![pb::GroupMessage {
                group: 0,
                message: Some(pb::RaftMessage {
                    msg_type: 2,
                    ..Default::default()
                }),
            }],
            ..Default::default()
        };
        assert_eq!(
            decode_batch(&propose.encode_to_vec()).unwrap_err(),
            WireError::LocalMessageType(MessageType::MsgPropose)
        );
        let no_message = pb::RaftBatch {
            messages: vec![pb::GroupMessage {
                group: 0,
                message: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            decode_batch(&no_message.encode_to_vec()).unwrap_err(),
            WireError::MissingMessage
        );
    }
}
