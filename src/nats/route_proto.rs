//! The route protocol of nats-server 2.9 (shared/reference/clustering.md §1.3), as bytes: a
//! reader that turns what a peer server sends into operations, and the writers of what stanza
//! sends. Fields are separated by runs of spaces or tabs; lines end with CRLF; RMSG/HMSG carry
//! a payload and a CRLF after it.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// The largest control line taken from a peer (nats-server's default for routes).
pub const MAX_CONTROL_LINE: usize = 4096;
/// The largest payload taken from a peer (routes themselves do not enforce max_payload; this
/// bounds memory against a broken peer).
pub const MAX_ROUTE_PAYLOAD: usize = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp {
    Info(Bytes),
    Connect(Bytes),
    /// `RS+ <acc> <subject> [<queue> <weight>]`.
    SubAdd {
        account: Bytes,
        subject: Bytes,
        queue: Option<(Bytes, u32)>,
    },
    /// `RS- <acc> <subject> [<queue>]`.
    SubRemove {
        account: Bytes,
        subject: Bytes,
        queue: Option<Bytes>,
    },
    /// `RMSG`/`HMSG`: a message, for local plain subscribers and one member of each queue
    /// group named.
    Msg {
        account: Bytes,
        subject: Bytes,
        reply: Option<Bytes>,
        queues: Vec<Bytes>,
        header_len: usize,
        payload: Bytes,
    },
    Ping,
    Pong,
    Err(String),
    /// `+OK`, and leafnode-origin lines (`LS+`, `LS-`, `LMSG`) a peer sends only to servers
    /// that asked for them: accepted and ignored.
    Ignored,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RouteProtoError {
    #[error("control line too long")]
    ControlLineTooLong,
    #[error("unknown protocol operation {0:?}")]
    Unknown(String),
    #[error("bad arguments for {0}")]
    BadArguments(&'static str),
    #[error("payload of {0} bytes too large")]
    PayloadTooLarge(usize),
}

/// At most this many fields are read from a line (RMSG with many queue groups keeps the
/// first ones; nats-server lists at most a handful).
const MAX_FIELDS: usize = 16;

/// The space- or tab-separated fields of a line, without allocating.
fn fields(line: &[u8]) -> ([&[u8]; MAX_FIELDS], usize) {
    let mut out: [&[u8]; MAX_FIELDS] = [&[]; MAX_FIELDS];
    let mut n = 0;
    for f in line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|f| !f.is_empty())
    {
        if n == MAX_FIELDS {
            break;
        }
        out[n] = f;
        n += 1;
    }
    (out, n)
}

fn number(field: &[u8]) -> Option<usize> {
    if field.is_empty() || field.len() > 12 || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// The next operation in `buf`, consumed; `None` while it is not whole yet.
pub fn next_op(buf: &mut BytesMut) -> Result<Option<RouteOp>, RouteProtoError> {
    let Some(end) = control_line_end(buf) else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(RouteProtoError::ControlLineTooLong);
        }
        return Ok(None);
    };
    if end > MAX_CONTROL_LINE {
        return Err(RouteProtoError::ControlLineTooLong);
    }
    let line = &buf[..end];
    let verb_end = line
        .iter()
        .position(|b| *b == b' ' || *b == b'\t')
        .unwrap_or(line.len());
    let mut verb_buf = [0u8; 8];
    let verb: &[u8] = if verb_end <= verb_buf.len() {
        verb_buf[..verb_end].copy_from_slice(&line[..verb_end]);
        verb_buf[..verb_end].make_ascii_uppercase();
        &verb_buf[..verb_end]
    } else {
        &line[..verb_end]
    };
    let rest = &line[verb_end..];
    let copy = |b: &[u8]| Bytes::copy_from_slice(b);
    let op = match verb {
        b"PING" => RouteOp::Ping,
        b"PONG" => RouteOp::Pong,
        b"+OK" => RouteOp::Ignored,
        b"INFO" => RouteOp::Info(copy(trim(rest))),
        b"CONNECT" => RouteOp::Connect(copy(trim(rest))),
        b"-ERR" => {
            let text = String::from_utf8_lossy(trim(rest));
            RouteOp::Err(text.trim_matches('\'').to_string())
        }
        b"RS+" => {
            let (f, n) = fields(rest);
            match &f[..n] {
                [acc, subject] => RouteOp::SubAdd {
                    account: copy(acc),
                    subject: copy(subject),
                    queue: None,
                },
                [acc, subject, queue, weight] => RouteOp::SubAdd {
                    account: copy(acc),
                    subject: copy(subject),
                    queue: Some((
                        copy(queue),
                        number(weight)
                            .and_then(|w| u32::try_from(w).ok())
                            .ok_or(RouteProtoError::BadArguments("RS+"))?,
                    )),
                },
                // A queue without a weight counts as one member.
                [acc, subject, queue] => RouteOp::SubAdd {
                    account: copy(acc),
                    subject: copy(subject),
                    queue: Some((copy(queue), 1)),
                },
                _ => return Err(RouteProtoError::BadArguments("RS+")),
            }
        }
        b"RS-" => {
            let (f, n) = fields(rest);
            match &f[..n] {
                [acc, subject] => RouteOp::SubRemove {
                    account: copy(acc),
                    subject: copy(subject),
                    queue: None,
                },
                [acc, subject, queue, ..] => RouteOp::SubRemove {
                    account: copy(acc),
                    subject: copy(subject),
                    queue: Some(copy(queue)),
                },
                _ => return Err(RouteProtoError::BadArguments("RS-")),
            }
        }
        b"LS+" | b"LS-" => RouteOp::Ignored,
        b"RMSG" | b"HMSG" | b"LMSG" => {
            let headers = verb != b"RMSG";
            let what = if headers { "HMSG" } else { "RMSG" };
            let (all, n) = fields(rest);
            // LMSG starts with the origin cluster.
            let f = if verb == b"LMSG" && n > 0 {
                &all[1..n]
            } else {
                &all[..n]
            };
            let (total, header_len, args) = if headers {
                let [args @ .., hdr, total] = f else {
                    return Err(RouteProtoError::BadArguments(what));
                };
                let (Some(hdr), Some(total)) = (number(hdr), number(total)) else {
                    return Err(RouteProtoError::BadArguments(what));
                };
                if hdr > total {
                    return Err(RouteProtoError::BadArguments(what));
                }
                (total, hdr, args)
            } else {
                let [args @ .., total] = f else {
                    return Err(RouteProtoError::BadArguments(what));
                };
                let Some(total) = number(total) else {
                    return Err(RouteProtoError::BadArguments(what));
                };
                (total, 0, args)
            };
            if total > MAX_ROUTE_PAYLOAD {
                return Err(RouteProtoError::PayloadTooLarge(total));
            }
            let none: &[&[u8]] = &[];
            let (account, subject, reply, queues) = match args {
                [acc, subject] => (*acc, *subject, None, none),
                [acc, subject, reply] => (*acc, *subject, Some(*reply), none),
                [acc, subject, marker, tail @ ..] if *marker == b"+" && !tail.is_empty() => {
                    let (reply, queues) = tail
                        .split_first()
                        .ok_or(RouteProtoError::BadArguments(what))?;
                    (*acc, *subject, Some(*reply), queues)
                }
                [acc, subject, marker, queues @ ..] if *marker == b"|" && !queues.is_empty() => {
                    (*acc, *subject, None, queues)
                }
                _ => return Err(RouteProtoError::BadArguments(what)),
            };
            let whole = end + 2 + total + 2;
            if buf.len() < whole {
                return Ok(None);
            }
            if &buf[whole - 2..whole] != b"\r\n" {
                return Err(RouteProtoError::BadArguments(what));
            }
            // The parts are shares of the frame, not copies (one message, no allocation).
            let base = buf.as_ptr() as usize;
            let range = |part: &[u8]| {
                let at = part.as_ptr() as usize - base;
                at..at + part.len()
            };
            let (acc_r, subj_r) = (range(account), range(subject));
            let reply_r = reply.map(range);
            let queue_r: Vec<std::ops::Range<usize>> = queues.iter().map(|q| range(q)).collect();
            let frame = buf.split_to(whole).freeze();
            return Ok(Some(RouteOp::Msg {
                account: frame.slice(acc_r),
                subject: frame.slice(subj_r),
                reply: reply_r.map(|r| frame.slice(r)),
                queues: queue_r.into_iter().map(|r| frame.slice(r)).collect(),
                header_len,
                payload: frame.slice(end + 2..end + 2 + total),
            }));
        }
        other => {
            return Err(RouteProtoError::Unknown(
                String::from_utf8_lossy(other).into_owned(),
            ))
        }
    };
    buf.advance(end + 2);
    Ok(Some(op))
}

/// Where the first control line ends (its CR of CRLF).
fn control_line_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'\n', &buf[from..]) {
        let nl = from + at;
        if nl > 0 && buf[nl - 1] == b'\r' {
            return Some(nl - 1);
        }
        from = nl + 1;
    }
    None
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// The global account: stanza has no accounts.
pub const GLOBAL_ACCOUNT: &[u8] = b"$G";

/// `RS+ $G <subject>[ <queue> <weight>]`.
pub fn push_sub_add(out: &mut Vec<u8>, subject: &[u8], queue: Option<(&[u8], u32)>) {
    out.extend_from_slice(b"RS+ $G ");
    out.extend_from_slice(subject);
    if let Some((q, weight)) = queue {
        out.push(b' ');
        out.extend_from_slice(q);
        out.push(b' ');
        out.extend_from_slice(itoa::Buffer::new().format(weight).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `RS- $G <subject>[ <queue>]`.
pub fn push_sub_remove(out: &mut Vec<u8>, subject: &[u8], queue: Option<&[u8]>) {
    out.extend_from_slice(b"RS- $G ");
    out.extend_from_slice(subject);
    if let Some(q) = queue {
        out.push(b' ');
        out.extend_from_slice(q);
    }
    out.extend_from_slice(b"\r\n");
}

/// One message for a peer: `RMSG $G <subject> [<reply>] <size>`, with queue groups
/// `RMSG $G <subject> + <reply> <q>... <size>` or `| <q>...`, as `HMSG` with a header size
/// when it has headers and the peer takes them (else the headers are cut off).
pub fn push_msg(
    out: &mut Vec<u8>,
    subject: &[u8],
    reply: Option<&[u8]>,
    queues: &[Bytes],
    header_len: usize,
    payload: &[u8],
    peer_headers: bool,
) {
    let (header_len, payload) = crate::nats::wire::headers_for(header_len, payload, peer_headers);
    out.reserve(subject.len() + payload.len() + 64);
    out.extend_from_slice(if header_len > 0 {
        b"HMSG $G "
    } else {
        b"RMSG $G "
    });
    out.extend_from_slice(subject);
    out.push(b' ');
    if !queues.is_empty() {
        match reply {
            Some(r) => {
                out.extend_from_slice(b"+ ");
                out.extend_from_slice(r);
            }
            None => out.push(b'|'),
        }
        for q in queues {
            out.push(b' ');
            out.extend_from_slice(q);
        }
        out.push(b' ');
    } else if let Some(r) = reply {
        out.extend_from_slice(r);
        out.push(b' ');
    }
    let mut num = itoa::Buffer::new();
    if header_len > 0 {
        out.extend_from_slice(num.format(header_len).as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(num.format(payload.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(text: &[u8]) -> Vec<RouteOp> {
        let mut buf = BytesMut::from(text);
        let mut out = Vec::new();
        while let Some(op) = next_op(&mut buf).unwrap() {
            out.push(op);
        }
        assert!(buf.is_empty(), "left: {buf:?}");
        out
    }

    #[test]
    fn the_reference_byte_sequences() {
        let got = ops(b"INFO {\"server_id\":\"NB\"}\r\nRS+ $SYS $SYS.REQ.SERVER.PING\r\nRS+ $G orders  workers\t2\r\nRS- $G orders workers\r\nPING\r\nPONG\r\n+OK\r\nLS+ c $G x\r\n-ERR 'Authorization Violation'\r\n");
        assert_eq!(
            got[0],
            RouteOp::Info(Bytes::from_static(b"{\"server_id\":\"NB\"}"))
        );
        assert_eq!(
            got[2],
            RouteOp::SubAdd {
                account: Bytes::from_static(b"$G"),
                subject: Bytes::from_static(b"orders"),
                queue: Some((Bytes::from_static(b"workers"), 2))
            }
        );
        assert_eq!(
            got[3],
            RouteOp::SubRemove {
                account: Bytes::from_static(b"$G"),
                subject: Bytes::from_static(b"orders"),
                queue: Some(Bytes::from_static(b"workers"))
            }
        );
        assert_eq!(got[8], RouteOp::Err("Authorization Violation".into()));
        let msgs = ops(b"RMSG $G orders + _INBOX.r1 workers 5\r\nhello\r\nRMSG $G orders | workers audit 5\r\nhello\r\nHMSG $G foo _INBOX.r2 18 23\r\nNATS/1.0\r\nX: 1\r\n\r\nhello\r\nRMSG $G a 0\r\n\r\n");
        assert_eq!(
            msgs[0],
            RouteOp::Msg {
                account: Bytes::from_static(b"$G"),
                subject: Bytes::from_static(b"orders"),
                reply: Some(Bytes::from_static(b"_INBOX.r1")),
                queues: vec![Bytes::from_static(b"workers")],
                header_len: 0,
                payload: Bytes::from_static(b"hello"),
            }
        );
        let RouteOp::Msg { queues, reply, .. } = &msgs[1] else {
            panic!()
        };
        assert_eq!((queues.len(), reply.is_none()), (2, true));
        let RouteOp::Msg {
            header_len,
            payload,
            ..
        } = &msgs[2]
        else {
            panic!()
        };
        assert_eq!((*header_len, payload.len()), (18, 23));
    }

    #[test]
    fn partial_input_waits_and_bad_input_is_an_error() {
        let mut buf = BytesMut::from(&b"RMSG $G foo 5\r\nhel"[..]);
        assert_eq!(next_op(&mut buf), Ok(None));
        buf.extend_from_slice(b"lo\r\n");
        assert!(matches!(next_op(&mut buf), Ok(Some(RouteOp::Msg { .. }))));
        for bad in [
            &b"RMSG $G foo x\r\n"[..],
            b"RMSG $G foo - q 1\r\na\r\n",
            b"HMSG $G foo 9 5\r\n",
            b"RS+ $G\r\n",
            b"WHAT\r\n",
            b"RMSG $G foo 1\r\nab\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(next_op(&mut buf).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writers_produce_what_the_reader_takes() {
        let mut out = Vec::new();
        push_sub_add(&mut out, b"orders", Some((b"workers", 3)));
        push_sub_remove(&mut out, b"orders", None);
        let q = [Bytes::from_static(b"w")];
        push_msg(&mut out, b"foo", Some(b"r"), &q, 0, b"hi", true);
        push_msg(&mut out, b"foo", None, &q, 0, b"hi", true);
        push_msg(&mut out, b"foo", Some(b"r"), &[], 4, b"HDRShi", true);
        push_msg(&mut out, b"foo", None, &[], 4, b"HDRShi", false);
        let got = ops(&out);
        assert_eq!(got.len(), 6);
        assert!(
            matches!(&got[2], RouteOp::Msg { reply: Some(r), queues, .. } if r.as_ref() == b"r" && queues.len() == 1)
        );
        assert!(matches!(&got[3], RouteOp::Msg { reply: None, queues, .. } if queues.len() == 1));
        assert!(matches!(&got[4], RouteOp::Msg { header_len: 4, .. }));
        assert!(
            matches!(&got[5], RouteOp::Msg { header_len: 0, payload, .. } if payload.as_ref() == b"hi")
        );
    }
}
