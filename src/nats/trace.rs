//! NATS protocol traces (`-V`, `trace: true`), in nats-server's layout:
//! `127.0.0.1:52044 - cid:5 - <<- [PUB foo 5]`, `<<- MSG_PAYLOAD: ["hello"]` for what a client
//! sent, `->> [MSG foo 1 5]` for what it is sent. Each call site checks `enabled()` first, so
//! a server without tracing pays one atomic load per operation and formats nothing.

use super::core::ClientConn;
use super::parser::ClientOp;

/// Whether NATS traces are on.
#[inline]
pub fn enabled() -> bool {
    log::log_enabled!(log::Level::Trace)
}

fn who(conn: &ClientConn) -> String {
    let peer = conn
        .peer
        .get()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "?".into());
    format!("{peer} - cid:{}", conn.cid)
}

fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// An operation read from a client.
pub fn inbound(conn: &ClientConn, op: &ClientOp) {
    let who = who(conn);
    match op {
        ClientOp::Connect(json) => log::trace!("{who} - <<- [CONNECT {}]", text(json)),
        ClientOp::Pub(p) => {
            let verb = if p.is_hpub { "HPUB" } else { "PUB" };
            let reply = p
                .reply()
                .map(|r| format!(" {}", text(r)))
                .unwrap_or_default();
            log::trace!(
                "{who} - <<- [{verb} {}{reply} {}]",
                text(p.subject()),
                p.payload().len()
            );
            log::trace!("{who} - <<- MSG_PAYLOAD: [{:?}]", text(p.payload()));
        }
        ClientOp::Sub {
            subject,
            queue,
            sid,
        } => {
            let queue = queue
                .as_ref()
                .map(|q| format!(" {}", text(q)))
                .unwrap_or_default();
            log::trace!("{who} - <<- [SUB {}{queue} {}]", text(subject), text(sid));
        }
        ClientOp::Unsub { sid, max } => {
            let max = max.map(|m| format!(" {m}")).unwrap_or_default();
            log::trace!("{who} - <<- [UNSUB {}{max}]", text(sid));
        }
        ClientOp::Ping => log::trace!("{who} - <<- [PING]"),
        ClientOp::Pong => log::trace!("{who} - <<- [PONG]"),
        ClientOp::Ignored => {}
    }
}

/// A message written to a client.
pub fn outbound_msg(
    conn: &ClientConn,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    len: usize,
) {
    let reply = reply.map(|r| format!(" {}", text(r))).unwrap_or_default();
    log::trace!(
        "{} - ->> [MSG {} {}{reply} {len}]",
        who(conn),
        text(subject),
        text(sid)
    );
}
