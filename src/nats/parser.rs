//! The client side of the NATS wire protocol: turns bytes read from a socket into operations.
//! Payloads are split off the read buffer as `Bytes` (no copy) so they can travel to other
//! cores and many subscribers. The parser keeps the parsed control line of a message whose
//! payload is still arriving, so large payloads are not re-scanned on every read.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// One operation sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    Connect(Bytes),
    Pub(Publish),
    Sub {
        subject: Bytes,
        queue: Option<Bytes>,
        sid: Bytes,
    },
    Unsub {
        sid: Bytes,
        max: Option<u64>,
    },
    Ping,
    Pong,
    /// `+OK`, `-ERR` and `INFO` sent by a client are accepted and ignored, as nats-server does.
    Ignored,
}

/// A PUB or HPUB. `payload` holds the headers (if any) followed by the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Sent as HPUB (only clients that announced headers may).
    pub is_hpub: bool,
    pub subject: Bytes,
    pub reply: Option<Bytes>,
    pub header_len: usize,
    pub payload: Bytes,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("unknown protocol operation")]
    UnknownOperation,
    #[error("maximum control line exceeded")]
    ControlLineTooLong,
    #[error("maximum payload exceeded: {size} vs {max}")]
    PayloadTooLarge { size: usize, max: usize },
    #[error("{op} parse error: {reason}")]
    BadArguments {
        op: &'static str,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct ParserLimits {
    pub max_control_line: usize,
    pub max_payload: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits {
            max_control_line: 4096,
            max_payload: 1024 * 1024,
        }
    }
}

struct PendingPayload {
    is_hpub: bool,
    subject: Bytes,
    reply: Option<Bytes>,
    header_len: usize,
    total_len: usize,
}

pub struct Parser {
    limits: ParserLimits,
    pending: Option<PendingPayload>,
}

impl Parser {
    pub fn new(limits: ParserLimits) -> Self {
        Parser {
            limits,
            pending: None,
        }
    }

    pub fn set_limits(&mut self, limits: ParserLimits) {
        self.limits = limits;
    }

    /// Takes the next complete operation off `buf`, or `None` when more bytes are needed.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<ClientOp>, ProtocolError> {
        if let Some(pending) = self.pending.take() {
            return self.take_payload(buf, pending);
        }
        let Some(newline) = memchr::memchr(b'\n', buf) else {
            if buf.len() > self.limits.max_control_line {
                return Err(ProtocolError::ControlLineTooLong);
            }
            return Ok(None);
        };
        if newline > self.limits.max_control_line {
            return Err(ProtocolError::ControlLineTooLong);
        }
        let line = buf.split_to(newline + 1).freeze();
        let line = trim_line_end(line);
        let (op, args) = split_op(&line);
        let op = match op.len() {
            3 if op.eq_ignore_ascii_case(b"PUB") => {
                let pending = self.parse_pub(&line, args, false)?;
                return self.take_payload(buf, pending);
            }
            4 if op.eq_ignore_ascii_case(b"HPUB") => {
                let pending = self.parse_pub(&line, args, true)?;
                return self.take_payload(buf, pending);
            }
            3 if op.eq_ignore_ascii_case(b"SUB") => parse_sub(&line, args)?,
            5 if op.eq_ignore_ascii_case(b"UNSUB") => parse_unsub(&line, args)?,
            4 if op.eq_ignore_ascii_case(b"PING") => ClientOp::Ping,
            4 if op.eq_ignore_ascii_case(b"PONG") => ClientOp::Pong,
            7 if op.eq_ignore_ascii_case(b"CONNECT") => ClientOp::Connect(slice_of(&line, args)),
            3 if op.eq_ignore_ascii_case(b"+OK") => ClientOp::Ignored,
            4 if op.eq_ignore_ascii_case(b"-ERR") => ClientOp::Ignored,
            4 if op.eq_ignore_ascii_case(b"INFO") => ClientOp::Ignored,
            _ => return Err(ProtocolError::UnknownOperation),
        };
        Ok(Some(op))
    }

    fn parse_pub(
        &self,
        line: &Bytes,
        args: &[u8],
        with_headers: bool,
    ) -> Result<PendingPayload, ProtocolError> {
        let op = if with_headers { "HPUB" } else { "PUB" };
        let bad = |reason| ProtocolError::BadArguments { op, reason };
        let mut fields: [&[u8]; 4] = [&[]; 4];
        let mut count = 0;
        for field in split_args(args) {
            if count == fields.len() {
                return Err(bad("wrong number of arguments"));
            }
            fields[count] = field;
            count += 1;
        }
        let fields = &fields[..count];
        let sizes = if with_headers { 2 } else { 1 };
        if fields.len() < 1 + sizes || fields.len() > 2 + sizes {
            return Err(bad("wrong number of arguments"));
        }
        let (names, sizes) = fields.split_at(fields.len() - sizes);
        let total_len = parse_size(sizes[sizes.len() - 1]).ok_or(bad("bad or missing size"))?;
        let header_len = if with_headers {
            let h = parse_size(sizes[0]).ok_or(bad("bad or missing header size"))?;
            if h > total_len {
                return Err(bad("header size larger than total size"));
            }
            h
        } else {
            0
        };
        if total_len > self.limits.max_payload {
            return Err(ProtocolError::PayloadTooLarge {
                size: total_len,
                max: self.limits.max_payload,
            });
        }
        Ok(PendingPayload {
            is_hpub: with_headers,
            subject: slice_of(line, names[0]),
            reply: names.get(1).map(|r| slice_of(line, r)),
            header_len,
            total_len,
        })
    }

    fn take_payload(
        &mut self,
        buf: &mut BytesMut,
        pending: PendingPayload,
    ) -> Result<Option<ClientOp>, ProtocolError> {
        let needed = pending.total_len + 2;
        if buf.len() < needed {
            buf.reserve(needed - buf.len());
            self.pending = Some(pending);
            return Ok(None);
        }
        if &buf[pending.total_len..needed] != b"\r\n" {
            return Err(ProtocolError::UnknownOperation);
        }
        let payload = buf.split_to(pending.total_len).freeze();
        buf.advance(2);
        Ok(Some(ClientOp::Pub(Publish {
            is_hpub: pending.is_hpub,
            subject: pending.subject,
            reply: pending.reply,
            header_len: pending.header_len,
            payload,
        })))
    }
}

fn parse_sub(line: &Bytes, args: &[u8]) -> Result<ClientOp, ProtocolError> {
    let fields: Vec<&[u8]> = split_args(args).collect();
    let (subject, queue, sid) = match fields.as_slice() {
        [subject, sid] => (subject, None, sid),
        [subject, queue, sid] => (subject, Some(queue), sid),
        _ => {
            return Err(ProtocolError::BadArguments {
                op: "SUB",
                reason: "wrong number of arguments",
            })
        }
    };
    Ok(ClientOp::Sub {
        subject: slice_of(line, subject),
        queue: queue.map(|q| slice_of(line, q)),
        sid: slice_of(line, sid),
    })
}

fn parse_unsub(line: &Bytes, args: &[u8]) -> Result<ClientOp, ProtocolError> {
    let bad = |reason| ProtocolError::BadArguments {
        op: "UNSUB",
        reason,
    };
    let fields: Vec<&[u8]> = split_args(args).collect();
    match fields.as_slice() {
        [sid] => Ok(ClientOp::Unsub {
            sid: slice_of(line, sid),
            max: None,
        }),
        [sid, max] => Ok(ClientOp::Unsub {
            sid: slice_of(line, sid),
            max: Some(parse_size(max).ok_or(bad("bad max"))? as u64),
        }),
        _ => Err(bad("wrong number of arguments")),
    }
}

fn trim_line_end(mut line: Bytes) -> Bytes {
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.truncate(line.len() - 1);
    }
    line
}

/// Splits a control line into the operation name and the rest (leading blanks removed).
fn split_op(line: &[u8]) -> (&[u8], &[u8]) {
    let start = line
        .iter()
        .position(|b| !is_blank(*b))
        .unwrap_or(line.len());
    let line = &line[start..];
    let end = line.iter().position(|b| is_blank(*b)).unwrap_or(line.len());
    let (op, rest) = line.split_at(end);
    let rest_start = rest
        .iter()
        .position(|b| !is_blank(*b))
        .unwrap_or(rest.len());
    (op, &rest[rest_start..])
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn split_args(args: &[u8]) -> impl Iterator<Item = &[u8]> {
    args.split(|b| is_blank(*b)).filter(|t| !t.is_empty())
}

/// A `Bytes` view of `part`, which must lie inside `line`: shares `line`'s storage.
fn slice_of(line: &Bytes, part: &[u8]) -> Bytes {
    line.slice_ref(part)
}

fn parse_size(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0usize, |n, d| {
        n.checked_mul(10)?.checked_add((d - b'0') as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Result<Vec<ClientOp>, ProtocolError> {
        let mut parser = Parser::new(ParserLimits::default());
        let mut buf = BytesMut::from(input);
        let mut ops = Vec::new();
        while let Some(op) = parser.parse(&mut buf)? {
            ops.push(op);
        }
        Ok(ops)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn pub_with_and_without_reply() {
        let ops = parse_all(b"PUB foo 5\r\nhello\r\npub foo.bar INBOX.1 0\r\n\r\n").unwrap();
        assert_eq!(
            ops,
            vec![
                ClientOp::Pub(Publish {
                    is_hpub: false,
                    subject: b("foo"),
                    reply: None,
                    header_len: 0,
                    payload: b("hello")
                }),
                ClientOp::Pub(Publish {
                    is_hpub: false,
                    subject: b("foo.bar"),
                    reply: Some(b("INBOX.1")),
                    header_len: 0,
                    payload: b("")
                }),
            ]
        );
    }

    #[test]
    fn hpub() {
        let ops = parse_all(b"HPUB foo r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n").unwrap();
        match &ops[0] {
            ClientOp::Pub(p) => {
                assert_eq!(p.header_len, 12);
                assert_eq!(&p.payload[..], b"NATS/1.0\r\n\r\nhi");
                assert_eq!(p.reply, Some(b("r")));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_all(b"HPUB foo 20 14\r\n"),
            Err(ProtocolError::BadArguments { .. })
        ));
    }

    #[test]
    fn sub_unsub_ping_connect() {
        let ops =
            parse_all(b"CONNECT {\"verbose\":false}\r\nSUB foo 1\r\nsub  foo\tq  2\r\nUNSUB 1\r\nUNSUB 2 10\r\nPING\r\nPONG\r\n+OK\r\n")
                .unwrap();
        assert_eq!(ops[0], ClientOp::Connect(b("{\"verbose\":false}")));
        assert_eq!(
            ops[1],
            ClientOp::Sub {
                subject: b("foo"),
                queue: None,
                sid: b("1")
            }
        );
        assert_eq!(
            ops[2],
            ClientOp::Sub {
                subject: b("foo"),
                queue: Some(b("q")),
                sid: b("2")
            }
        );
        assert_eq!(
            ops[3],
            ClientOp::Unsub {
                sid: b("1"),
                max: None
            }
        );
        assert_eq!(
            ops[4],
            ClientOp::Unsub {
                sid: b("2"),
                max: Some(10)
            }
        );
        assert_eq!(
            &ops[5..],
            &[ClientOp::Ping, ClientOp::Pong, ClientOp::Ignored]
        );
    }

    #[test]
    fn partial_input_waits() {
        let mut parser = Parser::new(ParserLimits::default());
        let mut buf = BytesMut::from(&b"PUB foo 11\r\nhel"[..]);
        assert_eq!(parser.parse(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"lo worl");
        assert_eq!(parser.parse(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"d\r\nPI");
        assert!(matches!(
            parser.parse(&mut buf).unwrap(),
            Some(ClientOp::Pub(_))
        ));
        assert_eq!(parser.parse(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"NG\r\n");
        assert_eq!(parser.parse(&mut buf).unwrap(), Some(ClientOp::Ping));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse_all(b"FOO bar\r\n"),
            Err(ProtocolError::UnknownOperation)
        );
        assert_eq!(
            parse_all(b"PUB foo 3\r\nabcXY"),
            Err(ProtocolError::UnknownOperation)
        );
        assert!(matches!(
            parse_all(b"PUB foo\r\n"),
            Err(ProtocolError::BadArguments { .. })
        ));
        assert!(matches!(
            parse_all(b"PUB foo -1\r\n"),
            Err(ProtocolError::BadArguments { .. })
        ));
        assert!(matches!(
            parse_all(b"PUB foo 2000000\r\n"),
            Err(ProtocolError::PayloadTooLarge { .. })
        ));
        assert!(matches!(
            parse_all(b"SUB\r\n"),
            Err(ProtocolError::BadArguments { .. })
        ));
        let long = vec![b'x'; 5000];
        assert_eq!(parse_all(&long), Err(ProtocolError::ControlLineTooLong));
        assert!(matches!(
            parse_all(b"UNSUB 1 x\r\n"),
            Err(ProtocolError::BadArguments { .. })
        ));
    }

    proptest! {
        /// Arbitrary bytes never panic the parser, and it always makes progress or stops.
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut parser = Parser::new(ParserLimits { max_control_line: 64, max_payload: 128 });
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..1000 {
                let before = buf.len();
                match parser.parse(&mut buf) {
                    Ok(Some(_)) => prop_assert!(buf.len() < before || before == 0),
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// Any PUB split at any point parses to the same message.
        #[test]
        fn split_reads(payload in proptest::collection::vec(any::<u8>(), 0..64), cut in 0usize..100) {
            let mut wire = format!("PUB a.b r {}\r\n", payload.len()).into_bytes();
            wire.extend_from_slice(&payload);
            wire.extend_from_slice(b"\r\n");
            let cut = cut.min(wire.len());
            let mut parser = Parser::new(ParserLimits::default());
            let mut buf = BytesMut::from(&wire[..cut]);
            let first = parser.parse(&mut buf).unwrap();
            let op = match first {
                Some(op) => op,
                None => {
                    buf.extend_from_slice(&wire[cut..]);
                    parser.parse(&mut buf).unwrap().unwrap()
                }
            };
            match op {
                ClientOp::Pub(p) => prop_assert_eq!(&p.payload[..], &payload[..]),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
