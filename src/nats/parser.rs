//! The client side of the NATS wire protocol: turns bytes read from a socket into operations.
//! Payloads are split off the read buffer as `Bytes` (no copy) so they can travel to other
//! cores and many subscribers. The parser keeps the parsed control line of a message whose
//! payload is still arriving, so large payloads are not re-scanned on every read.

use bytes::{Bytes, BytesMut};
use std::ops::Range;
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

/// A PUB or HPUB: the whole frame as read (control line, payload, CRLF) and where its parts
/// lie in it. Nothing is copied or reference-counted until a part must leave the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Sent as HPUB (only clients that announced headers may).
    pub is_hpub: bool,
    pub frame: Bytes,
    subject: Range<usize>,
    reply: Option<Range<usize>>,
    /// Headers (if any) followed by the body.
    payload: Range<usize>,
    pub header_len: usize,
}

impl Publish {
    pub fn subject(&self) -> &[u8] {
        &self.frame[self.subject.clone()]
    }

    pub fn reply(&self) -> Option<&[u8]> {
        self.reply.clone().map(|r| &self.frame[r])
    }

    /// Headers (if any) followed by the body.
    pub fn payload(&self) -> &[u8] {
        &self.frame[self.payload.clone()]
    }
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

/// A PUB whose control line is parsed but whose payload has not fully arrived. The control
/// line stays at the front of the buffer so the frame can be split off whole.
struct PendingPayload {
    is_hpub: bool,
    line_len: usize,
    subject: Range<usize>,
    reply: Option<Range<usize>>,
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
        let line_end = trimmed_end(&buf[..newline]);
        let (op, args) = split_op(&buf[..line_end]);
        let hpub = op.len() == 4 && op.eq_ignore_ascii_case(b"HPUB");
        if hpub || (op.len() == 3 && op.eq_ignore_ascii_case(b"PUB")) {
            let args_start = args.as_ptr() as usize - buf.as_ptr() as usize;
            let pending = self.parse_pub(args, args_start, newline + 1, hpub)?;
            return self.take_payload(buf, pending);
        }
        let line = buf.split_to(newline + 1).freeze();
        let line = line.slice(..line_end);
        let (op, args) = split_op(&line);
        let op = match op.len() {
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

    /// `args` lies in the buffer at `args_start`; ranges are offsets into the frame.
    fn parse_pub(
        &self,
        args: &[u8],
        args_start: usize,
        line_len: usize,
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
        let range = |field: &[u8]| {
            let start = args_start + (field.as_ptr() as usize - args.as_ptr() as usize);
            start..start + field.len()
        };
        Ok(PendingPayload {
            is_hpub: with_headers,
            line_len,
            subject: range(names[0]),
            reply: names.get(1).map(|r| range(r)),
            header_len,
            total_len,
        })
    }

    /// Splits the whole frame off once its payload is in.
    fn take_payload(
        &mut self,
        buf: &mut BytesMut,
        pending: PendingPayload,
    ) -> Result<Option<ClientOp>, ProtocolError> {
        let payload_start = pending.line_len;
        let needed = payload_start + pending.total_len + 2;
        if buf.len() < needed {
            buf.reserve(needed - buf.len());
            self.pending = Some(pending);
            return Ok(None);
        }
        if &buf[needed - 2..needed] != b"\r\n" {
            return Err(ProtocolError::UnknownOperation);
        }
        let frame = buf.split_to(needed).freeze();
        Ok(Some(ClientOp::Pub(Publish {
            is_hpub: pending.is_hpub,
            frame,
            subject: pending.subject,
            reply: pending.reply,
            payload: payload_start..payload_start + pending.total_len,
            header_len: pending.header_len,
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

/// The length of a control line without its trailing CR/LF characters.
fn trimmed_end(line: &[u8]) -> usize {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    end
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

    fn as_pub(op: &ClientOp) -> (&[u8], Option<&[u8]>, usize, &[u8]) {
        match op {
            ClientOp::Pub(p) => (p.subject(), p.reply(), p.header_len, p.payload()),
            other => panic!("not a PUB: {other:?}"),
        }
    }

    #[test]
    fn pub_with_and_without_reply() {
        let ops = parse_all(b"PUB foo 5\r\nhello\r\npub foo.bar INBOX.1 0\r\n\r\n").unwrap();
        assert_eq!(as_pub(&ops[0]), (&b"foo"[..], None, 0, &b"hello"[..]));
        assert_eq!(
            as_pub(&ops[1]),
            (&b"foo.bar"[..], Some(&b"INBOX.1"[..]), 0, &b""[..])
        );
    }

    #[test]
    fn hpub() {
        let ops = parse_all(b"HPUB foo r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n").unwrap();
        assert_eq!(
            as_pub(&ops[0]),
            (&b"foo"[..], Some(&b"r"[..]), 12, &b"NATS/1.0\r\n\r\nhi"[..])
        );
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
                ClientOp::Pub(p) => {
                    prop_assert_eq!(p.payload(), &payload[..]);
                    prop_assert_eq!(p.subject(), b"a.b");
                    prop_assert_eq!(p.reply(), Some(&b"r"[..]));
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
