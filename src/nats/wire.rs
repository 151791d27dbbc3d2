//! Encoders for what the server writes to clients: MSG/HMSG frames, INFO, -ERR, +OK.

use serde::Serialize;

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";
pub const OK: &[u8] = b"+OK\r\n";
/// The header block nats-server sends for "no responders".
pub const NO_RESPONDERS_HEADER: &[u8] = b"NATS/1.0 503\r\n\r\n";

/// Client-facing error texts, exactly as nats-server 2.9 writes them.
pub mod errors {
    pub const UNKNOWN_OP: &str = "Unknown Protocol Operation";
    pub const AUTH_VIOLATION: &str = "Authorization Violation";
    pub const AUTH_TIMEOUT: &str = "Authentication Timeout";
    pub const MAX_PAYLOAD: &str = "Maximum Payload Violation";
    pub const MAX_CONTROL_LINE: &str = "maximum control line exceeded";
    pub const MAX_CONNECTIONS: &str = "maximum connections exceeded";
    pub const MAX_SUBSCRIPTIONS: &str = "maximum subscriptions exceeded";
    pub const INVALID_SUBJECT: &str = "Invalid Subject";
    pub const INVALID_PUBLISH_SUBJECT: &str = "Invalid Publish Subject";
    pub const STALE_CONNECTION: &str = "Stale Connection";
}

pub fn push_err(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"-ERR '");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"'\r\n");
}

fn push_num(out: &mut Vec<u8>, n: usize) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(n).as_bytes());
}

/// A message's headers and payload as a receiver gets them: cut off when it does not take
/// headers (a client without `headers`, a route peer without them).
pub fn headers_for(header_len: usize, payload: &[u8], takes_headers: bool) -> (usize, &[u8]) {
    if header_len > 0 && !takes_headers {
        (0, &payload[header_len.min(payload.len())..])
    } else {
        (header_len, payload)
    }
}

/// Writes a MSG (or HMSG when `header_len` > 0) frame. A client that did not ask for headers
/// gets the body only, as nats-server does.
pub fn push_msg(
    out: &mut Vec<u8>,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    header_len: usize,
    payload: &[u8],
    client_headers: bool,
) {
    let (header_len, payload) = headers_for(header_len, payload, client_headers);
    out.reserve(subject.len() + sid.len() + payload.len() + 48);
    out.extend_from_slice(if header_len > 0 { b"HMSG " } else { b"MSG " });
    out.extend_from_slice(subject);
    out.push(b' ');
    out.extend_from_slice(sid);
    out.push(b' ');
    if let Some(reply) = reply {
        out.extend_from_slice(reply);
        out.push(b' ');
    }
    if header_len > 0 {
        push_num(out, header_len);
        out.push(b' ');
    }
    push_num(out, payload.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// The INFO a client receives when it connects.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub server_id: String,
    pub server_name: String,
    pub version: &'static str,
    pub proto: u32,
    pub go: &'static str,
    pub host: String,
    pub port: u16,
    pub headers: bool,
    pub max_payload: usize,
    pub client_id: u64,
    pub client_ip: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auth_required: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_required: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connect_urls: Vec<String>,
    /// stanza's own version (the `version` field states the NATS protocol level served).
    pub stanza_version: &'static str,
    /// The core (shard) that owns this connection.
    pub stanza_core: usize,
    /// How many cores (shards) the server runs: with `stanza_core`, a load tool can tell
    /// whether a connection lives on the core of the channel it uses.
    pub stanza_cores: usize,
}

/// The nats-server release whose client protocol stanza speaks; clients gate features
/// (headers, no responders) on this version.
pub const NATS_PROTOCOL_VERSION: &str = "2.9.24";

pub fn push_info(out: &mut Vec<u8>, info: &ServerInfo) {
    out.extend_from_slice(b"INFO ");
    if serde_json::to_writer(&mut *out, info).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_frames() {
        let mut out = Vec::new();
        push_msg(&mut out, b"foo", b"1", None, 0, b"hi", false);
        push_msg(&mut out, b"foo", b"2", Some(b"r"), 0, b"", false);
        assert_eq!(out, b"MSG foo 1 2\r\nhi\r\nMSG foo 2 r 0\r\n\r\n");
        let mut out = Vec::new();
        push_msg(
            &mut out,
            b"foo",
            b"1",
            None,
            12,
            b"NATS/1.0\r\n\r\nhi",
            true,
        );
        assert_eq!(out, b"HMSG foo 1 12 14\r\nNATS/1.0\r\n\r\nhi\r\n");
        let mut out = Vec::new();
        push_msg(
            &mut out,
            b"foo",
            b"1",
            None,
            12,
            b"NATS/1.0\r\n\r\nhi",
            false,
        );
        assert_eq!(out, b"MSG foo 1 2\r\nhi\r\n");
    }

    #[test]
    fn errors() {
        let mut out = Vec::new();
        push_err(&mut out, errors::AUTH_VIOLATION);
        assert_eq!(out, b"-ERR 'Authorization Violation'\r\n");
    }
}
