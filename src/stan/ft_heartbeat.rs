//! The FT heartbeat as the reference sends it on `_STAN.ft.<cid>.<group>`: a `CtrlMsg` of type
//! `FTHeartbeat` with the sender's server ID and its activation time in Go's
//! `time.MarshalBinary` layout (version 1, seconds since 0001-01-01 UTC as i64 BE, nanoseconds
//! as i32 BE, zone offset in minutes as i16 BE, -1 meaning UTC). Keeping the reference's bytes
//! lets operators watch the subject with the tools they have.

use bytes::Bytes;
use prost::Message;
use shards::pb::{ctrl_msg, CtrlMsg};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 0001-01-01 to 1970-01-01 (Go's `unixToInternal`).
const UNIX_TO_GO: i64 = 62_135_596_800;

/// What an FT message said, if it is a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub server_id: String,
    /// `None` when the time in it could not be decoded.
    pub activated: Option<SystemTime>,
}

pub fn encode(server_id: &str, activated: SystemTime) -> Bytes {
    CtrlMsg {
        msg_type: ctrl_msg::Type::FtHeartbeat as i32,
        server_id: server_id.to_string(),
        data: go_time_binary(activated).into(),
        ref_id: String::new(),
    }
    .encode_to_vec()
    .into()
}

/// `None` for anything that is not a heartbeat (undecodable, another control message).
pub fn decode(payload: &[u8]) -> Option<Heartbeat> {
    let msg = CtrlMsg::decode(payload).ok()?;
    if msg.msg_type != ctrl_msg::Type::FtHeartbeat as i32 {
        return None;
    }
    Some(Heartbeat {
        activated: time_from_go_binary(&msg.data),
        server_id: msg.server_id,
    })
}

fn go_time_binary(t: SystemTime) -> Vec<u8> {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i32),
        Err(e) => {
            // Before 1970: whole seconds down, nanoseconds up, as Go keeps them.
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut nanos = d.subsec_nanos() as i32;
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs, nanos)
        }
    };
    let mut out = Vec::with_capacity(15);
    out.push(1);
    out.extend_from_slice(&(secs + UNIX_TO_GO).to_be_bytes());
    out.extend_from_slice(&nanos.to_be_bytes());
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Versions 1 and 2 (2 adds a seconds part to the zone offset); the zone does not change the
/// instant.
fn time_from_go_binary(b: &[u8]) -> Option<SystemTime> {
    let len = match b.first()? {
        1 => 15,
        2 => 16,
        _ => return None,
    };
    if b.len() != len {
        return None;
    }
    let secs = i64::from_be_bytes(b.get(1..9)?.try_into().ok()?).checked_sub(UNIX_TO_GO)?;
    let nanos = i32::from_be_bytes(b.get(9..13)?.try_into().ok()?);
    let nanos = u32::try_from(nanos).ok().filter(|n| *n < 1_000_000_000)?;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_matches_gos_bytes() {
        // time.Unix(1700000000, 5).UTC().MarshalBinary() in Go.
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        let b = go_time_binary(t);
        assert_eq!(
            b,
            [1, 0, 0, 0, 14, 220, 229, 232, 0, 0, 0, 0, 5, 255, 255],
            "{b:?}"
        );
        let hb = decode(&encode("srv", t)).expect("heartbeat");
        assert_eq!(hb.server_id, "srv");
        assert_eq!(hb.activated, Some(t));
    }

    #[test]
    fn other_messages_and_bad_times_are_told_apart() {
        assert_eq!(decode(b"\xff\xff garbage"), None);
        assert_eq!(decode(b""), None, "an empty CtrlMsg is a SubUnsubscribe");
        let bad_time = CtrlMsg {
            msg_type: ctrl_msg::Type::FtHeartbeat as i32,
            server_id: "x".into(),
            data: Bytes::from_static(&[1, 2, 3]),
            ref_id: String::new(),
        }
        .encode_to_vec();
        assert_eq!(
            decode(&bad_time),
            Some(Heartbeat {
                server_id: "x".into(),
                activated: None
            })
        );
        let before_1970 = UNIX_EPOCH - Duration::new(10, 250);
        assert_eq!(
            time_from_go_binary(&go_time_binary(before_1970)),
            Some(before_1970)
        );
    }
}
