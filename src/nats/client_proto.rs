//! The server-to-client side of the NATS protocol, for stanza's own connections to an
//! external NATS server (`-ns`): INFO, MSG, HMSG, PING, PONG, +OK, -ERR read incrementally
//! from a buffer, payloads as `Bytes` slices of it; and the client commands written back.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Longest control line accepted from a server (nats-server's own default limit is 4 KiB;
/// INFO lines with many connect_urls are longer).
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    Info(Bytes),
    Msg {
        subject: Bytes,
        sid: u64,
        reply: Option<Bytes>,
        payload: Bytes,
    },
    Ping,
    Pong,
    Ok,
    Err(String),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClientProtoError {
    #[error("control line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("unknown server operation {0:?}")]
    Unknown(String),
    #[error("malformed {0} line: {1:?}")]
    Malformed(&'static str, String),
}

/// Takes the next complete operation off the front of `buf`; `Ok(None)` if more input is
/// needed.
pub fn next_op(buf: &mut BytesMut) -> Result<Option<ServerOp>, ClientProtoError> {
    let Some(eol) = memchr::memmem::find(buf, b"\r\n") else {
        if buf.len() > MAX_LINE {
            return Err(ClientProtoError::LineTooLong);
        }
        return Ok(None);
    };
    if eol > MAX_LINE {
        return Err(ClientProtoError::LineTooLong);
    }
    let line = &buf[..eol];
    let (verb, rest) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let is = |name: &[u8]| verb.eq_ignore_ascii_case(name);
    if is(b"MSG") || is(b"HMSG") {
        return parse_msg(buf, eol, is(b"HMSG"));
    }
    let verb = verb.to_ascii_uppercase();
    match verb.as_slice() {
        b"PING" => {
            buf.advance(eol + 2);
            Ok(Some(ServerOp::Ping))
        }
        b"PONG" => {
            buf.advance(eol + 2);
            Ok(Some(ServerOp::Pong))
        }
        b"+OK" => {
            buf.advance(eol + 2);
            Ok(Some(ServerOp::Ok))
        }
        b"-ERR" => {
            let text = String::from_utf8_lossy(rest)
                .trim()
                .trim_matches('\'')
                .to_string();
            buf.advance(eol + 2);
            Ok(Some(ServerOp::Err(text)))
        }
        b"INFO" => {
            let start = eol - rest.len();
            let mut line = buf.split_to(eol + 2).freeze();
            line.truncate(eol);
            Ok(Some(ServerOp::Info(line.slice(start..))))
        }
        _ => Err(ClientProtoError::Unknown(
            String::from_utf8_lossy(&verb).into_owned(),
        )),
    }
}

/// The decimal number in `field`, if it is one.
fn number(field: &[u8]) -> Option<usize> {
    if field.is_empty() || field.len() > 19 {
        return None;
    }
    field.iter().try_fold(0usize, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + usize::from(b - b'0'))
    })
}

/// Reads a MSG / HMSG frame in place: a subscriber of a busy channel reads one per message.
fn parse_msg(
    buf: &mut BytesMut,
    eol: usize,
    headers: bool,
) -> Result<Option<ServerOp>, ClientProtoError> {
    let kind = if headers { "HMSG" } else { "MSG" };
    let malformed = |buf: &BytesMut| {
        ClientProtoError::Malformed(kind, String::from_utf8_lossy(&buf[..eol]).into_owned())
    };
    // MSG <subject> <sid> [reply] <size>; HMSG <subject> <sid> [reply] <hdr size> <size>
    let mut fields: [(usize, usize); 6] = [(0, 0); 6];
    let mut count = 0;
    let mut at = 0;
    let line = &buf[..eol];
    while at < line.len() {
        if line[at] == b' ' || line[at] == b'\t' {
            at += 1;
            continue;
        }
        let start = at;
        while at < line.len() && line[at] != b' ' && line[at] != b'\t' {
            at += 1;
        }
        if count == fields.len() {
            return Err(malformed(buf));
        }
        fields[count] = (start, at);
        count += 1;
    }
    // The verb is field 0.
    let field = |i: usize| &line[fields[i].0..fields[i].1];
    let sizes = if headers { 2 } else { 1 };
    let args = count.saturating_sub(1);
    if args < 2 + sizes || args > 3 + sizes {
        return Err(malformed(buf));
    }
    let Some(total) = number(field(count - 1)) else {
        return Err(malformed(buf));
    };
    let header_len = if headers {
        match number(field(count - 2)) {
            Some(n) => n,
            None => return Err(malformed(buf)),
        }
    } else {
        0
    };
    if header_len > total || total > 64 << 20 {
        return Err(malformed(buf));
    }
    let Some(sid) = number(field(2)).map(|n| n as u64) else {
        return Err(malformed(buf));
    };
    let reply_at = (args == 3 + sizes).then_some(fields[3]);
    let subject_at = fields[1];
    let needed = eol + 2 + total + 2;
    if buf.len() < needed {
        return Ok(None);
    }
    if &buf[eol + 2 + total..needed] != b"\r\n" {
        return Err(malformed(buf));
    }
    let mut frame = buf.split_to(needed).freeze();
    frame.truncate(eol + 2 + total);
    let subject = frame.slice(subject_at.0..subject_at.1);
    let reply = reply_at.map(|(a, b)| frame.slice(a..b));
    // Headers are not used by the streaming server: only the payload after them.
    let payload = frame.slice(eol + 2 + header_len..);
    Ok(Some(ServerOp::Msg {
        subject,
        sid,
        reply,
        payload,
    }))
}

pub fn push_pub(out: &mut Vec<u8>, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject);
    out.push(b' ');
    if let Some(r) = reply {
        out.extend_from_slice(r);
        out.push(b' ');
    }
    out.extend_from_slice(itoa::Buffer::new().format(payload.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

pub fn push_sub(out: &mut Vec<u8>, subject: &str, sid: u64) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

pub fn push_unsub(out: &mut Vec<u8>, sid: u64) {
    out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(input: &[u8]) -> Result<Vec<ServerOp>, ClientProtoError> {
        let mut buf = BytesMut::from(input);
        let mut ops = Vec::new();
        while let Some(op) = next_op(&mut buf)? {
            ops.push(op);
        }
        Ok(ops)
    }

    #[test]
    fn server_operations() {
        let ops = all(b"INFO {\"a\":1}\r\nPING\r\n+OK\r\nMSG foo 1 5\r\nhello\r\nMSG foo.bar 2 _INBOX.x 0\r\n\r\nHMSG h 3 12 14\r\nNATS/1.0\r\n\r\nhi\r\n-ERR 'Stale Connection'\r\npong\r\n").unwrap();
        assert_eq!(ops[0], ServerOp::Info(Bytes::from_static(b"{\"a\":1}")));
        assert_eq!(ops[1], ServerOp::Ping);
        assert_eq!(ops[2], ServerOp::Ok);
        assert_eq!(
            ops[3],
            ServerOp::Msg {
                subject: Bytes::from_static(b"foo"),
                sid: 1,
                reply: None,
                payload: Bytes::from_static(b"hello")
            }
        );
        assert!(
            matches!(&ops[4], ServerOp::Msg { reply: Some(r), payload, .. } if r == "_INBOX.x" && payload.is_empty())
        );
        assert!(matches!(&ops[5], ServerOp::Msg { payload, .. } if payload == "hi"));
        assert_eq!(ops[6], ServerOp::Err("Stale Connection".into()));
        assert_eq!(ops[7], ServerOp::Pong);
    }

    #[test]
    fn partial_and_bad_input() {
        let mut buf = BytesMut::from(&b"MSG foo 1 5\r\nhel"[..]);
        assert_eq!(next_op(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"lo\r\n");
        assert!(matches!(
            next_op(&mut buf).unwrap(),
            Some(ServerOp::Msg { .. })
        ));
        assert!(all(b"BOGUS\r\n").is_err());
        assert!(all(b"MSG foo x 5\r\nhello\r\n").is_err());
        assert!(all(b"MSG foo 1 5\r\nhelloXX").is_err());
        assert!(all(&vec![b'a'; MAX_LINE + 10]).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut buf = BytesMut::new();
            for c in chunks {
                buf.extend_from_slice(&c);
                while let Ok(Some(_)) = next_op(&mut buf) {}
            }
        }

        #[test]
        fn msg_round_trip(subject in "[a-z]{1,8}(\\.[a-z]{1,8}){0,3}", sid in 1u64..1000,
                          payload in prop::collection::vec(any::<u8>(), 0..200), split in 0usize..300) {
            let mut wire = format!("MSG {subject} {sid} {}\r\n", payload.len()).into_bytes();
            wire.extend_from_slice(&payload);
            wire.extend_from_slice(b"\r\n");
            let cut = split.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = next_op(&mut buf).unwrap();
            if got.is_none() {
                buf.extend_from_slice(&wire[cut..]);
                got = next_op(&mut buf).unwrap();
            }
            prop_assert_eq!(got, Some(ServerOp::Msg { subject: Bytes::from(subject), sid, reply: None, payload: Bytes::from(payload) }));
        }
    }
}
