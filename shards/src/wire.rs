//! The protobuf messages on the publish path, read and written by hand: a `PubMsg` is read as
//! borrowed slices of the received payload (no allocation, no copy of the data), and the
//! `PubAck` and first-delivery `MsgProto` are written straight into one exact-size buffer;
//! an `Ack`, which comes back for every delivery, is read in place too.
//! Everything else goes through prost. The encodings are byte-identical to prost's (tested).

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated protobuf")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintOverflow,
    #[error("field {0} has wire type {1}, expected {2}")]
    WireType(u64, u64, u64),
    #[error("invalid wire type {0}")]
    BadWireType(u64),
}

/// A `PubMsg` as slices of the payload it was read from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PubMsgView<'a> {
    pub client_id: &'a [u8],
    pub guid: &'a [u8],
    pub subject: &'a [u8],
    pub reply: &'a [u8],
    pub data: &'a [u8],
    pub conn_id: &'a [u8],
}

fn read_varint(buf: &[u8], at: &mut usize) -> Result<u64, WireError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let b = *buf.get(*at).ok_or(WireError::Truncated)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintOverflow)
}

fn read_len<'a>(buf: &'a [u8], at: &mut usize) -> Result<&'a [u8], WireError> {
    let len = read_varint(buf, at)?;
    let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
    let end = at.checked_add(len).ok_or(WireError::Truncated)?;
    let slice = buf.get(*at..end).ok_or(WireError::Truncated)?;
    *at = end;
    Ok(slice)
}

/// Nested groups deeper than this are refused rather than recursed into: prost's recursion
/// limit, so that the view and prost agree on what a client may send (the stan_requests fuzz
/// target found a 40-deep nesting prost took and a limit of 32 refused).
const MAX_GROUP_DEPTH: usize = 100;

/// Skips a field of an unknown number (groups, the deprecated wire types 3/4, included).
fn skip(
    buf: &[u8],
    at: &mut usize,
    field: u64,
    wire_type: u64,
    depth: usize,
) -> Result<(), WireError> {
    match wire_type {
        0 => read_varint(buf, at).map(|_| ()),
        1 | 5 => {
            let n = if wire_type == 1 { 8 } else { 4 };
            let end = at.checked_add(n).ok_or(WireError::Truncated)?;
            if end > buf.len() {
                return Err(WireError::Truncated);
            }
            *at = end;
            Ok(())
        }
        2 => read_len(buf, at).map(|_| ()),
        3 if depth < MAX_GROUP_DEPTH => loop {
            let key = read_varint(buf, at)?;
            let (f, wt) = (key >> 3, key & 7);
            if wt == 4 {
                return if f == field {
                    Ok(())
                } else {
                    Err(WireError::BadWireType(wt))
                };
            }
            if f == 0 {
                return Err(WireError::BadWireType(wt));
            }
            skip(buf, at, f, wt, depth + 1)?;
        },
        other => Err(WireError::BadWireType(other)),
    }
}

impl<'a> PubMsgView<'a> {
    /// Reads a `PubMsg`; unknown fields are skipped, a later field replaces an earlier one,
    /// as protobuf requires.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let mut view = PubMsgView::default();
        let mut at = 0;
        while at < buf.len() {
            let key = read_varint(buf, &mut at)?;
            let (field, wire_type) = (key >> 3, key & 7);
            let slot = match field {
                1 => Some(&mut view.client_id),
                2 => Some(&mut view.guid),
                3 => Some(&mut view.subject),
                4 => Some(&mut view.reply),
                5 => Some(&mut view.data),
                6 => Some(&mut view.conn_id),
                _ => None,
            };
            match slot {
                Some(slot) => {
                    if wire_type != 2 {
                        return Err(WireError::WireType(field, wire_type, 2));
                    }
                    *slot = read_len(buf, &mut at)?;
                }
                None => {
                    if field == 0 {
                        return Err(WireError::BadWireType(wire_type));
                    }
                    skip(buf, &mut at, field, wire_type, 0)?;
                }
            }
        }
        Ok(view)
    }
}

/// An `Ack` (subject, sequence) read in place: one arrives for every message delivered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AckView<'a> {
    pub subject: &'a [u8],
    pub sequence: u64,
}

impl<'a> AckView<'a> {
    /// Reads an `Ack`; unknown fields are skipped, a later field replaces an earlier one.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let mut view = AckView::default();
        let mut at = 0;
        while at < buf.len() {
            let key = read_varint(buf, &mut at)?;
            let (field, wire_type) = (key >> 3, key & 7);
            match (field, wire_type) {
                (1, 2) => view.subject = read_len(buf, &mut at)?,
                (2, 0) => view.sequence = read_varint(buf, &mut at)?,
                (1, _) => return Err(WireError::WireType(field, wire_type, 2)),
                (2, _) => return Err(WireError::WireType(field, wire_type, 0)),
                (0, _) => return Err(WireError::BadWireType(wire_type)),
                _ => skip(buf, &mut at, field, wire_type, 0)?,
            }
        }
        Ok(view)
    }
}

/// A delivered `MsgProto` read in place (what a client needs: sequence, subject, data and the
/// redelivery flag), for clients that read many messages, such as `stanza bench`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MsgView<'a> {
    pub sequence: u64,
    pub subject: &'a [u8],
    pub data: &'a [u8],
    pub redelivered: bool,
}

impl<'a> MsgView<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let mut view = MsgView::default();
        let mut at = 0;
        while at < buf.len() {
            let key = read_varint(buf, &mut at)?;
            let (field, wire_type) = (key >> 3, key & 7);
            match (field, wire_type) {
                (0, _) => return Err(WireError::BadWireType(wire_type)),
                (1, 0) => view.sequence = read_varint(buf, &mut at)?,
                (2, 2) => view.subject = read_len(buf, &mut at)?,
                (4, 2) => view.data = read_len(buf, &mut at)?,
                (6, 0) => view.redelivered = read_varint(buf, &mut at)? != 0,
                (1 | 5 | 6 | 7 | 10, _) if wire_type != 0 => {
                    return Err(WireError::WireType(field, wire_type, 0))
                }
                (2..=4, _) if wire_type != 2 => {
                    return Err(WireError::WireType(field, wire_type, 2))
                }
                _ => skip(buf, &mut at, field, wire_type, 0)?,
            }
        }
        Ok(view)
    }
}

/// Where `part` lies in `whole`, when it is a slice of it.
pub fn range_within(whole: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// `part` as a slice of `whole` (no copy) when it lies inside it.
pub fn slice_within(whole: &Bytes, part: &[u8]) -> Option<Bytes> {
    range_within(whole, part).map(|r| whole.slice(r))
}

/// Appends an `Ack` of `sequence` on `subject`, encoded as prost would.
pub fn encode_ack_into(out: &mut Vec<u8>, subject: &[u8], sequence: u64) {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    if !subject.is_empty() {
        out.push(0x0a);
        varint(out, subject.len() as u64);
        out.extend_from_slice(subject);
    }
    if sequence != 0 {
        out.push(0x10);
        varint(out, sequence);
    }
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn bytes_field_len(field: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        return 0;
    }
    varint_len(u64::from(field << 3 | 2)) + varint_len(value.len() as u64) + value.len()
}

fn put_bytes_field(out: &mut BytesMut, field: u32, value: &[u8]) {
    if value.is_empty() {
        return;
    }
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, value.len() as u64);
    out.put_slice(value);
}

fn varint_field_len(field: u32, value: u64) -> usize {
    if value == 0 {
        return 0;
    }
    varint_len(u64::from(field << 3)) + varint_len(value)
}

fn put_varint_field(out: &mut BytesMut, field: u32, value: u64) {
    if value == 0 {
        return;
    }
    put_varint(out, u64::from(field << 3));
    put_varint(out, value);
}

/// `PubAck{guid, error}`.
pub fn encode_pub_ack(guid: &[u8], error: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(pub_ack_len(guid, error));
    encode_pub_ack_into(&mut out, guid, error);
    out.freeze()
}

/// The encoded size of `PubAck{guid, error}`.
pub fn pub_ack_len(guid: &[u8], error: &str) -> usize {
    bytes_field_len(1, guid) + bytes_field_len(2, error.as_bytes())
}

/// Appends `PubAck{guid, error}`.
pub fn encode_pub_ack_into(out: &mut BytesMut, guid: &[u8], error: &str) {
    put_bytes_field(out, 1, guid);
    put_bytes_field(out, 2, error.as_bytes());
}

/// The encoded size of a first delivery (`encode_msg_into` writes exactly this much).
pub fn msg_len(seq: u64, subject: &[u8], reply: &[u8], data: &[u8], timestamp: i64) -> usize {
    varint_field_len(1, seq)
        + bytes_field_len(2, subject)
        + bytes_field_len(3, reply)
        + bytes_field_len(4, data)
        + varint_field_len(5, timestamp as u64)
}

/// Appends a first delivery, `MsgProto{sequence, subject, reply, data, timestamp}`.
pub fn encode_msg_into(
    out: &mut BytesMut,
    seq: u64,
    subject: &[u8],
    reply: &[u8],
    data: &[u8],
    timestamp: i64,
) {
    put_varint_field(out, 1, seq);
    put_bytes_field(out, 2, subject);
    put_bytes_field(out, 3, reply);
    put_bytes_field(out, 4, data);
    put_varint_field(out, 5, timestamp as u64);
}

/// A first delivery in its own buffer.
pub fn encode_msg(seq: u64, subject: &[u8], reply: &[u8], data: &[u8], timestamp: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(msg_len(seq, subject, reply, data, timestamp));
    encode_msg_into(&mut out, seq, subject, reply, data, timestamp);
    out.freeze()
}

#[cfg(test)]
mod tests {

    /// Found by the stan_requests fuzz target in CI: groups nested 40 deep, which prost takes
    /// (its recursion limit is 100) and the view refused (its limit was 32). The view and
    /// prost must agree on every nesting depth around the limit.
    #[test]
    fn nested_groups_agree_with_prost() {
        use prost::Message;
        for depth in [1usize, 32, 40, 99, 100, 101, 150] {
            let mut buf = Vec::new();
            buf.extend(std::iter::repeat_n(0x73u8, depth)); // start group, field 14
            buf.extend(std::iter::repeat_n(0x74u8, depth)); // end group, field 14
            buf.extend_from_slice(&[0x10, 0x05]); // sequence = 5
            let by_prost = crate::pb::Ack::decode(buf.as_slice()).is_ok();
            let by_view = AckView::parse(&buf).is_ok();
            assert_eq!(by_view, by_prost, "depth {depth}");
            let by_prost = crate::pb::PubMsg::decode(buf.as_slice()).is_ok();
            let by_view = PubMsgView::parse(&buf).is_ok();
            assert!(
                !by_prost || by_view,
                "depth {depth}: prost took a PubMsg the view refused"
            );
        }
    }
    use super::*;
    use crate::pb::{Ack, MsgProto, PubAck, PubMsg};
    use proptest::prelude::*;
    use prost::Message;

    #[test]
    fn parts_are_found_only_inside_their_whole() {
        let whole = b"0123456789".to_vec();
        assert_eq!(range_within(&whole, &whole[2..5]), Some(2..5));
        assert_eq!(range_within(&whole, &whole[10..]), Some(10..10));
        let other = b"0123".to_vec();
        assert_eq!(range_within(&whole, &other), None);
        let bytes = Bytes::from(whole.clone());
        assert_eq!(
            slice_within(&bytes, &bytes[3..4]).as_deref(),
            Some(&b"3"[..])
        );
        assert_eq!(slice_within(&bytes, &whole[3..4]), None);
    }

    fn pub_msg() -> impl Strategy<Value = PubMsg> {
        (
            ".{0,12}",
            ".{0,24}",
            ".{0,16}",
            ".{0,8}",
            prop::collection::vec(any::<u8>(), 0..300),
            prop::collection::vec(any::<u8>(), 0..24),
            prop::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(
                |(client_id, guid, subject, reply, data, conn_id, sha)| PubMsg {
                    client_id,
                    guid,
                    subject,
                    reply,
                    data: data.into(),
                    conn_id: conn_id.into(),
                    sha256: sha.into(),
                },
            )
    }

    proptest! {
        #[test]
        fn view_reads_what_prost_writes(pm in pub_msg()) {
            let buf = pm.encode_to_vec();
            let v = PubMsgView::parse(&buf).unwrap();
            prop_assert_eq!(v.client_id, pm.client_id.as_bytes());
            prop_assert_eq!(v.guid, pm.guid.as_bytes());
            prop_assert_eq!(v.subject, pm.subject.as_bytes());
            prop_assert_eq!(v.reply, pm.reply.as_bytes());
            prop_assert_eq!(v.data, pm.data.as_ref());
            prop_assert_eq!(v.conn_id, pm.conn_id.as_ref());
        }

        #[test]
        fn view_never_panics_and_agrees_with_prost_on_failure(buf in prop::collection::vec(any::<u8>(), 0..200)) {
            let ours = PubMsgView::parse(&buf);
            if PubMsg::decode(buf.as_slice()).is_ok() {
                // prost also checks UTF-8 (which the reference does not); structure must agree.
                prop_assert!(ours.is_ok());
            }
        }

        #[test]
        fn ack_view_reads_what_prost_writes(subject in ".{0,30}", sequence in any::<u64>()) {
            let buf = Ack { subject: subject.clone(), sequence }.encode_to_vec();
            let v = AckView::parse(&buf).unwrap();
            prop_assert_eq!(v.subject, subject.as_bytes());
            prop_assert_eq!(v.sequence, sequence);
        }

        #[test]
        fn ack_view_never_panics_and_agrees_with_prost(buf in prop::collection::vec(any::<u8>(), 0..64)) {
            let ours = AckView::parse(&buf);
            if let Ok(theirs) = Ack::decode(buf.as_slice()) {
                let ours = ours.unwrap();
                prop_assert_eq!(ours.subject, theirs.subject.as_bytes());
                prop_assert_eq!(ours.sequence, theirs.sequence);
            }
        }

        #[test]
        fn msg_view_reads_what_prost_writes(seq in any::<u64>(), subject in ".{0,20}", reply in ".{0,10}",
                                            data in prop::collection::vec(any::<u8>(), 0..100), ts in any::<i64>(),
                                            redelivered in any::<bool>(), count in any::<u32>(), crc in any::<u32>()) {
            let m = MsgProto { sequence: seq, subject: subject.clone(), reply, data: data.clone().into(), timestamp: ts, redelivered, redelivery_count: count, crc32: crc };
            let buf = m.encode_to_vec();
            let v = MsgView::parse(&buf).unwrap();
            prop_assert_eq!(v, MsgView { sequence: seq, subject: subject.as_bytes(), data: &data, redelivered });
        }

        #[test]
        fn msg_view_never_panics_and_agrees_with_prost(buf in prop::collection::vec(any::<u8>(), 0..120)) {
            let ours = MsgView::parse(&buf);
            if let Ok(m) = MsgProto::decode(buf.as_slice()) {
                let v = ours.unwrap();
                prop_assert_eq!(v.sequence, m.sequence);
                prop_assert_eq!(v.subject, m.subject.as_bytes());
                prop_assert_eq!(v.data, m.data.as_ref());
                prop_assert_eq!(v.redelivered, m.redelivered);
            }
        }

        #[test]
        fn ack_encoding_matches_prost(subject in ".{0,30}", sequence in any::<u64>()) {
            let mut ours = Vec::new();
            encode_ack_into(&mut ours, subject.as_bytes(), sequence);
            prop_assert_eq!(ours, Ack { subject, sequence }.encode_to_vec());
        }

        #[test]
        fn encodings_match_prost(seq in any::<u64>(), subject in ".{0,20}", reply in ".{0,10}",
                                 data in prop::collection::vec(any::<u8>(), 0..200), ts in any::<i64>(),
                                 guid in ".{0,24}", error in ".{0,30}") {
            let m = MsgProto { sequence: seq, subject: subject.clone(), reply: reply.clone(), data: data.clone().into(), timestamp: ts, ..Default::default() };
            prop_assert_eq!(encode_msg(seq, subject.as_bytes(), reply.as_bytes(), &data, ts).to_vec(), m.encode_to_vec());
            let a = PubAck { guid: guid.clone(), error: error.clone() };
            prop_assert_eq!(encode_pub_ack(guid.as_bytes(), &error).to_vec(), a.encode_to_vec());
        }
    }

    #[test]
    fn malformed_inputs() {
        assert!(PubMsgView::parse(b"dummy").is_err());
        assert_eq!(
            PubMsgView::parse(&[0x08, 0x01]).unwrap_err(),
            WireError::WireType(1, 0, 2)
        );
        assert_eq!(
            PubMsgView::parse(&[0xff; 11]).unwrap_err(),
            WireError::VarintOverflow
        );
        assert_eq!(
            PubMsgView::parse(&[0x12, 0x05, b'a']).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(PubMsgView::parse(&[]).unwrap(), PubMsgView::default());
    }
}
