//! The PubAcks a turn's stored messages owe until their records are on disk: each is a reply
//! subject and the publish's guid, copied into one buffer. A copy of a few dozen bytes costs
//! less than sharing the read buffer they came in, since every share and drop of it is an
//! atomic operation; one publisher's acks all go to its ack inbox, so consecutive acks to the
//! same subject keep it once.

use bytes::{Bytes, BytesMut};
use std::ops::Range;

use crate::wire::{encode_pub_ack_into, pub_ack_len};

#[derive(Debug, Default)]
pub struct OwedAcks {
    bytes: Vec<u8>,
    acks: Vec<OwedAck>,
}

#[derive(Debug, Clone)]
struct OwedAck {
    reply: Range<usize>,
    guid: Range<usize>,
}

impl OwedAcks {
    pub fn push(&mut self, reply: &[u8], guid: &[u8]) {
        let reply = match self.acks.last() {
            Some(last) if &self.bytes[last.reply.clone()] == reply => last.reply.clone(),
            _ => self.copy(reply),
        };
        let guid = self.copy(guid);
        self.acks.push(OwedAck { reply, guid });
    }

    fn copy(&mut self, part: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(part);
        start..self.bytes.len()
    }

    pub fn len(&self) -> usize {
        self.acks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    /// (reply subject, guid) of each ack, in the order they were owed.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.acks
            .iter()
            .map(|a| (&self.bytes[a.reply.clone()], &self.bytes[a.guid.clone()]))
    }

    /// Appends `other`'s acks after these.
    pub fn extend(&mut self, other: &OwedAcks) {
        for (reply, guid) in other.iter() {
            self.push(reply, guid);
        }
    }

    /// Every ack's PubAck payload (with `error`, empty for success), encoded back to back in
    /// one buffer, and where each one ends.
    pub fn encode(&self, error: &str) -> (Bytes, Vec<usize>) {
        let total = self.iter().map(|(_, guid)| pub_ack_len(guid, error)).sum();
        let mut out = BytesMut::with_capacity(total);
        let mut ends = Vec::with_capacity(self.acks.len());
        for (_, guid) in self.iter() {
            encode_pub_ack_into(&mut out, guid, error);
            ends.push(out.len());
        }
        (out.freeze(), ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::PubAck;
    use prost::Message;

    #[test]
    fn acks_keep_their_order_subjects_and_guids() {
        let mut owed = OwedAcks::default();
        owed.push(b"_STAN.acks.a", b"g1");
        owed.push(b"_STAN.acks.a", b"g2");
        owed.push(b"_STAN.acks.b", b"g3");
        owed.push(b"_STAN.acks.a", b"g4");
        let got: Vec<(&[u8], &[u8])> = owed.iter().collect();
        assert_eq!(
            got,
            vec![
                (&b"_STAN.acks.a"[..], &b"g1"[..]),
                (b"_STAN.acks.a", b"g2"),
                (b"_STAN.acks.b", b"g3"),
                (b"_STAN.acks.a", b"g4"),
            ]
        );
        let mut more = OwedAcks::default();
        more.push(b"_STAN.acks.b", b"g5");
        owed.extend(&more);
        assert_eq!(owed.len(), 5);
        assert_eq!(owed.iter().last(), Some((&b"_STAN.acks.b"[..], &b"g5"[..])));
    }

    #[test]
    fn encoded_acks_decode_as_pub_acks() {
        let mut owed = OwedAcks::default();
        for g in ["one", "two", ""] {
            owed.push(b"r", g.as_bytes());
        }
        for error in ["", "stan: no space left"] {
            let (bytes, ends) = owed.encode(error);
            assert_eq!(ends.len(), 3);
            assert_eq!(*ends.last().unwrap(), bytes.len());
            let mut start = 0;
            for ((_, guid), end) in owed.iter().zip(&ends) {
                let ack = PubAck::decode(&bytes[start..*end]).unwrap();
                assert_eq!((ack.guid.as_bytes(), ack.error.as_str()), (guid, error));
                start = *end;
            }
        }
    }
}
