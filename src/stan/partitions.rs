//! Partitioning (`partitioning: true`): several streaming servers share one cluster ID on one
//! NATS network, each serving the channels its `store_limits.channels` list names (wildcards
//! allowed). Requests for other channels are left to the others, unanswered here. At start-up
//! (and when a new route joins) a server sends its list on `_STAN.part.<cid>` as the
//! reference does (`CtrlMsg` of type Partitioning whose data is `[u16 LE length][name]` runs)
//! and every other server answers with the first channel both lists claim, or nothing; a clash
//! refuses the start with the reference's message.

use bytes::Bytes;
use prost::Message;
use shards::pb::{ctrl_msg, CtrlMsg};

/// This server's channel list, and the test of a channel against it.
#[derive(Debug, Clone)]
pub struct Partition {
    channels: Vec<String>,
}

impl Partition {
    pub fn new(channels: Vec<String>) -> Partition {
        Partition { channels }
    }

    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// Whether this server serves `channel` (a literal channel name).
    pub fn owns(&self, channel: &[u8]) -> bool {
        let Ok(channel) = std::str::from_utf8(channel) else {
            return false;
        };
        self.channels.iter().any(|p| pattern_matches(p, channel))
    }

    /// The first channel that both lists claim, checked both ways as the reference does: a
    /// name of theirs matched by one of our patterns, then one of ours matched by theirs (names
    /// with wildcards are matched as they are written).
    pub fn first_conflict(&self, theirs: &[String]) -> Option<String> {
        for c in theirs {
            if self.channels.iter().any(|p| pattern_matches(p, c)) {
                return Some(c.clone());
            }
        }
        for c in &self.channels {
            if theirs.iter().any(|p| pattern_matches(p, c)) {
                return Some(c.clone());
            }
        }
        None
    }
}

/// NATS subject matching with `subject`'s tokens taken literally: `*` in the pattern matches
/// one token, a final `>` one or more.
fn pattern_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (t, Some(s)) if t == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// The list as one or more messages, each within `max_payload` (the reference splits it
/// likewise). An error when a single name cannot fit.
pub fn encode_list(
    server_id: &str,
    channels: &[String],
    max_payload: usize,
) -> Result<Vec<Bytes>, String> {
    // The message without data, plus the data field's tag and a generous length prefix.
    let overhead = ctrl(server_id, Vec::new()).encoded_len() + 1 + 8;
    let mut out = Vec::new();
    let mut data = Vec::new();
    for c in channels {
        let name = c.as_bytes();
        let len = u16::try_from(name.len())
            .map_err(|_| format!("channel name of {} bytes in the partition", name.len()))?;
        if overhead + 2 + name.len() > max_payload {
            return Err("message payload too small to send partitioning channels list".into());
        }
        if overhead + data.len() + 2 + name.len() > max_payload {
            out.push(Bytes::from(
                ctrl(server_id, std::mem::take(&mut data)).encode_to_vec(),
            ));
        }
        data.extend_from_slice(&len.to_le_bytes());
        data.extend_from_slice(name);
    }
    if !data.is_empty() {
        out.push(Bytes::from(ctrl(server_id, data).encode_to_vec()));
    }
    Ok(out)
}

fn ctrl(server_id: &str, data: Vec<u8>) -> CtrlMsg {
    CtrlMsg {
        msg_type: ctrl_msg::Type::Partitioning as i32,
        server_id: server_id.to_string(),
        data: data.into(),
        ref_id: String::new(),
    }
}

/// A partitioning message: who sent it, and its data (a list, or a reply's clashing channel).
pub fn decode(payload: &[u8]) -> Result<(String, Bytes), String> {
    let msg = CtrlMsg::decode(payload).map_err(|e| format!("not a control message: {e}"))?;
    if msg.msg_type != ctrl_msg::Type::Partitioning as i32 {
        return Err(format!("control message of type {}", msg.msg_type));
    }
    Ok((msg.server_id, msg.data))
}

/// `[u16 LE length][name]` runs.
pub fn decode_list(mut data: &[u8]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (len, rest) = data.split_first_chunk::<2>().ok_or_else(|| {
            format!(
                "partitioning: unable to decode size, {} byte left",
                data.len()
            )
        })?;
        let len = usize::from(u16::from_le_bytes(*len));
        let name = rest.get(..len).ok_or_else(|| {
            format!(
                "partitioning: unable to decode channel of {len} bytes, {} left",
                rest.len()
            )
        })?;
        out.push(String::from_utf8_lossy(name).into_owned());
        data = &rest[len..];
    }
    Ok(out)
}

/// The answer to another server's list: empty data, or the first clashing channel.
pub fn encode_reply(server_id: &str, conflict: Option<&str>) -> Bytes {
    let data = conflict.map(|c| c.as_bytes().to_vec()).unwrap_or_default();
    Bytes::from(ctrl(server_id, data).encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wildcards_in_the_list_own_channels() {
        let p = Partition::new(list(&["orders.>", "audit.*", "plain"]));
        assert!(p.owns(b"orders.eu"));
        assert!(p.owns(b"orders.eu.paris"));
        assert!(!p.owns(b"orders"));
        assert!(p.owns(b"audit.x"));
        assert!(!p.owns(b"audit.x.y"));
        assert!(p.owns(b"plain"));
        assert!(!p.owns(b"plainer"));
        assert!(!p.owns(b"\xff"));
    }

    #[test]
    fn conflicts_are_found_both_ways_as_the_reference_does() {
        let ours = Partition::new(list(&["foo.bar", "baz"]));
        assert_eq!(
            ours.first_conflict(&list(&["foo.>"])),
            Some("foo.bar".into())
        );
        assert_eq!(
            ours.first_conflict(&list(&["qux", "baz"])),
            Some("baz".into())
        );
        assert_eq!(ours.first_conflict(&list(&["foo.baz", "bar"])), None);
        let wild = Partition::new(list(&["foo.*"]));
        assert_eq!(wild.first_conflict(&list(&["foo.>"])), Some("foo.>".into()));
    }

    #[test]
    fn lists_split_to_fit_and_read_back() {
        let channels: Vec<String> = (0..100).map(|i| format!("channel.{i:03}")).collect();
        let msgs = encode_list("srv", &channels, 200).expect("fits");
        assert!(msgs.len() > 1);
        let mut back = Vec::new();
        for m in &msgs {
            assert!(m.len() <= 200, "{}", m.len());
            let (id, data) = decode(m).expect("decodes");
            assert_eq!(id, "srv");
            back.extend(decode_list(&data).expect("list"));
        }
        assert_eq!(back, channels);
        assert!(encode_list("srv", &list(&[&"x".repeat(300)]), 200).is_err());
        assert!(decode_list(&[5, 0, b'a']).is_err());
        assert!(decode_list(&[5]).is_err());
        let (_, data) = decode(&encode_reply("b", Some("foo"))).expect("reply");
        assert_eq!(&data[..], b"foo");
        assert!(decode(b"\x08\x03").is_err(), "a heartbeat is not a list");
    }
}
