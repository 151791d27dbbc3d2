//! The core NATS protocol at the byte level against the real binary: what client libraries
//! hide or cannot send (malformed input, limits, server PINGs, timeouts, verbose mode).

mod common;

use common::{RawClient, Server};
use std::time::Duration;

#[test]
fn verbose_mode_acknowledges_every_operation() {
    let srv = Server::start(&[]);
    let mut c = srv.raw();
    c.send(b"CONNECT {\"verbose\":true}\r\n");
    assert_eq!(c.line(), "+OK");
    c.send(b"SUB foo 1\r\n");
    assert_eq!(c.line(), "+OK");
    c.send(b"PUB foo 2\r\nhi\r\n");
    let mut lines = vec![c.line(), c.line(), c.line()];
    lines.sort();
    assert_eq!(lines, vec!["+OK", "MSG foo 1 2", "hi"]);
    c.send(b"UNSUB 1\r\n");
    assert_eq!(c.line(), "+OK");
    c.send(b"CONNECT {\"verbose\":false}\r\nPING\r\n");
    assert_eq!(c.line(), "PONG", "no +OK once verbose is off");
}

#[test]
fn garbage_gets_unknown_operation_and_others_keep_working() {
    let srv = Server::start(&[]);
    let mut good = srv.raw();
    good.send(b"CONNECT {\"verbose\":false}\r\nSUB x 1\r\n");
    good.ping_pong();
    let mut bad = srv.raw();
    bad.send(b"\x00\x01\x02garbage \xff\r\n");
    assert_eq!(bad.line(), "-ERR 'Unknown Protocol Operation'");
    assert!(bad.closed_within(Duration::from_secs(3)));
    good.send(b"PUB x 2\r\nok\r\n");
    let (line, payload) = good.msg();
    assert_eq!(line, "MSG x 1 2");
    assert_eq!(payload, b"ok");
}

#[test]
fn oversize_control_line_is_refused() {
    let srv = Server::start(&[]);
    let mut c = srv.raw();
    let mut long = b"SUB ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 5000));
    c.send(&long);
    assert_eq!(c.line(), "-ERR 'maximum control line exceeded'");
    assert!(c.closed_within(Duration::from_secs(3)));
    srv.raw().ping_pong();
}

#[test]
fn bad_subjects_get_invalid_subject_and_the_connection_stays() {
    let srv = Server::start(&[]);
    let mut c = srv.raw();
    c.send(b"CONNECT {\"verbose\":false}\r\n");
    for bad in ["foo..bar", "foo.>.bar", ".foo", "foo."] {
        c.send(format!("SUB {bad} 1\r\n").as_bytes());
        assert_eq!(c.line(), "-ERR 'Invalid Subject'", "{bad}");
    }
    c.send(b"CONNECT {\"verbose\":false,\"pedantic\":true}\r\nPUB foo.* 1\r\nx\r\n");
    assert_eq!(c.line(), "-ERR 'Invalid Publish Subject'");
    c.ping_pong();
}

#[test]
fn max_payload_violation_closes_the_connection() {
    let srv = Server::start_with_config(Some("max_payload: 1KB\n"), &[]);
    let mut c = srv.raw();
    assert_eq!(c.info["max_payload"], 1024);
    c.send(b"CONNECT {\"verbose\":false}\r\nPUB foo 1025\r\n");
    assert_eq!(c.line(), "-ERR 'Maximum Payload Violation'");
    assert!(c.closed_within(Duration::from_secs(3)));
    let mut ok = srv.raw();
    ok.send(b"CONNECT {\"verbose\":false}\r\nPUB foo 1024\r\n");
    ok.send(&[b'x'; 1024]);
    ok.send(b"\r\n");
    ok.ping_pong();
}

#[test]
fn max_connections_refuses_the_extra_client() {
    let srv = Server::start_with_config(Some("max_connections: 2\n"), &[]);
    let mut a = srv.raw();
    let mut b = srv.raw();
    a.ping_pong();
    b.ping_pong();
    let mut c = srv.raw();
    assert_eq!(c.line(), "-ERR 'maximum connections exceeded'");
    assert!(c.closed_within(Duration::from_secs(3)));
    drop(a);
    // The slot is given back once the server sees the close.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = srv.raw();
        d.send(b"PING\r\n");
        if d.line() == "PONG" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn max_subscriptions_is_enforced_per_connection() {
    let srv = Server::start_with_config(Some("max_subscriptions: 2\n"), &[]);
    let mut c = srv.raw();
    c.send(b"CONNECT {\"verbose\":false}\r\nSUB a 1\r\nSUB b 2\r\nSUB c 3\r\n");
    assert_eq!(c.line(), "-ERR 'maximum subscriptions exceeded'");
    c.ping_pong();
}

#[test]
fn stale_connection_after_unanswered_pings() {
    let srv = Server::start_with_config(Some("ping_interval: \"200ms\"\nping_max: 2\n"), &[]);
    let mut c = srv.raw();
    c.send(b"CONNECT {\"verbose\":false}\r\n");
    assert_eq!(c.line(), "PING");
    assert_eq!(c.line(), "PING");
    assert_eq!(c.line(), "-ERR 'Stale Connection'");
    assert!(c.closed_within(Duration::from_secs(3)));
    // A client that answers stays connected.
    let mut alive = srv.raw();
    alive.send(b"CONNECT {\"verbose\":false}\r\n");
    for _ in 0..5 {
        assert_eq!(alive.line(), "PING");
        alive.send(b"PONG\r\n");
    }
    alive.ping_pong();
}

/// A subscriber on `flood` that never reads, and a publisher that has sent it `megabytes` MB
/// of 1000-byte messages (and seen its PONG). Returns (subscriber, publisher).
fn flood_a_silent_subscriber(srv: &Server, megabytes: usize) -> (RawClient, RawClient) {
    let mut silent = srv.raw();
    silent.send(b"CONNECT {\"verbose\":false}\r\nSUB flood 1\r\n");
    silent.ping_pong();
    let mut publisher = srv.raw();
    publisher.send(b"CONNECT {\"verbose\":false}\r\n");
    let mut frame = b"PUB flood 1000\r\n".to_vec();
    frame.extend_from_slice(&[b'x'; 1000]);
    frame.extend_from_slice(b"\r\n");
    let batch: Vec<u8> = frame.repeat(1000);
    for _ in 0..megabytes {
        publisher.send(&batch);
    }
    publisher.ping_pong();
    (silent, publisher)
}

#[test]
fn slow_consumer_is_closed_and_publishers_keep_going() {
    let srv = Server::start_with_config(
        Some("max_payload: 1KB\nmax_pending: 64KB\nwrite_deadline: \"2s\"\n"),
        &["--cores", "2"],
    );
    // 64 MB is far past the socket buffers plus max_pending.
    let (mut slow, mut publisher) = flood_a_silent_subscriber(&srv, 64);
    let _ = slow
        .stream
        .set_read_timeout(Some(Duration::from_millis(200)));
    // Reading now drains what the kernel buffered; the server must already have given up.
    assert!(
        slow.closed_within(Duration::from_secs(10)),
        "slow consumer not closed"
    );
    assert!(srv.log_text().contains("Slow Consumer Detected"));
    publisher.ping_pong();
}

#[test]
fn auth_timeout_and_violation() {
    let srv = Server::start_with_config(
        Some("authorization { user: alice, password: s3cret, timeout: 0.5 }\n"),
        &[],
    );
    let mut idle = srv.raw();
    assert_eq!(idle.info["auth_required"], true);
    assert_eq!(idle.line(), "-ERR 'Authentication Timeout'");
    assert!(idle.closed_within(Duration::from_secs(3)));

    let mut early = srv.raw();
    early.send(b"SUB foo 1\r\n");
    assert_eq!(early.line(), "-ERR 'Authorization Violation'");

    let mut wrong = srv.raw();
    wrong.send(b"CONNECT {\"user\":\"alice\",\"pass\":\"nope\",\"verbose\":false}\r\n");
    assert_eq!(wrong.line(), "-ERR 'Authorization Violation'");
    assert!(wrong.closed_within(Duration::from_secs(3)));

    let mut right = srv.raw();
    right.send(b"CONNECT {\"user\":\"alice\",\"pass\":\"s3cret\",\"verbose\":false}\r\n");
    right.ping_pong();
}

#[test]
fn unsub_with_max_stops_after_that_many() {
    let srv = Server::start(&[]);
    let mut c = srv.raw();
    c.send(b"CONNECT {\"verbose\":false}\r\nSUB n 7\r\nUNSUB 7 2\r\n");
    for _ in 0..4 {
        c.send(b"PUB n 1\r\nx\r\n");
    }
    c.send(b"SUB after 8\r\nPUB after 1\r\ny\r\n");
    assert_eq!(c.msg().0, "MSG n 7 1");
    assert_eq!(c.msg().0, "MSG n 7 1");
    assert_eq!(
        c.msg().0,
        "MSG after 8 1",
        "only two deliveries before auto-unsubscribe"
    );
}

#[test]
fn no_responders_and_echo_at_the_byte_level() {
    let srv = Server::start(&[]);
    let mut c = srv.raw();
    c.send(
        b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true,\"echo\":false}\r\n",
    );
    c.send(
        b"SUB _INBOX.me.* 1\r\nSUB self 2\r\nPUB self 1\r\nz\r\nPUB nobody _INBOX.me.1 0\r\n\r\n",
    );
    let (line, payload) = c.msg();
    assert_eq!(line, "HMSG _INBOX.me.1 1 16 16");
    assert_eq!(payload, b"NATS/1.0 503\r\n\r\n");
    c.ping_pong();
}

#[test]
fn hpub_requires_headers_in_connect() {
    let srv = Server::start(&[]);
    let mut c = srv.raw();
    c.send(b"CONNECT {\"verbose\":false}\r\nHPUB foo 12 12\r\nNATS/1.0\r\n\r\n\r\n");
    assert_eq!(c.line(), "-ERR 'Unknown Protocol Operation'");
}

#[test]
fn connections_land_on_every_core_and_messages_cross_cores() {
    let srv = Server::start(&["--cores", "2"]);
    let mut clients: Vec<RawClient> = Vec::new();
    while clients.len() < 64 {
        clients.push(srv.raw());
        let mut cores: Vec<u64> = clients.iter().map(|c| c.core()).collect();
        cores.sort();
        cores.dedup();
        if cores == [0, 1] {
            break;
        }
    }
    let sub_idx = clients.len() - 1;
    let pub_idx = clients
        .iter()
        .position(|c| c.core() != clients[sub_idx].core())
        .expect("a connection on the other core");
    let mut sub = clients.swap_remove(sub_idx);
    let mut publisher = clients.swap_remove(pub_idx.min(clients.len().saturating_sub(1)));
    assert_ne!(sub.core(), publisher.core());
    sub.send(b"CONNECT {\"verbose\":false}\r\nSUB cross.> 1\r\n");
    sub.ping_pong();
    publisher.send(b"CONNECT {\"verbose\":false}\r\nPUB cross.a.b 5\r\nhello\r\n");
    let (line, payload) = sub.msg();
    assert_eq!(line, "MSG cross.a.b 1 5");
    assert_eq!(payload, b"hello");
}

/// Routing remembers the last subject's match; a subscription added or removed in between
/// must be seen by the very next publish to that subject.
#[test]
fn repeated_subject_sees_subscription_changes() {
    let srv = Server::start(&["--cores", "2"]);
    let mut publisher = srv.raw();
    let mut sub = srv.raw();
    publisher.send(b"CONNECT {\"verbose\":false}\r\nPUB memo 1\r\na\r\n");
    publisher.ping_pong();
    sub.send(b"CONNECT {\"verbose\":false}\r\nSUB memo 1\r\n");
    sub.ping_pong();
    publisher.send(b"PUB memo 1\r\nb\r\n");
    assert_eq!(sub.msg(), ("MSG memo 1 1".to_string(), b"b".to_vec()));
    sub.send(b"UNSUB 1\r\nSUB memo.other 2\r\n");
    sub.ping_pong();
    publisher.send(b"PUB memo 1\r\nc\r\nPUB memo.other 1\r\nd\r\n");
    assert_eq!(sub.msg(), ("MSG memo.other 2 1".to_string(), b"d".to_vec()));
}

/// New connections go to the core that owns the fewest, whichever core accepted them.
#[test]
fn connections_are_spread_evenly_over_cores() {
    let srv = Server::start(&["--cores", "2"]);
    let clients: Vec<RawClient> = (0..10).map(|_| srv.raw()).collect();
    let on_zero = clients.iter().filter(|c| c.core() == 0).count();
    assert_eq!(on_zero, 5, "10 connections over 2 cores");
    for mut c in clients {
        c.ping_pong();
    }
}

/// A subscriber whose socket stops draining is cut after write_deadline even when max_pending
/// is large, and the publisher it was holding back (flow control) resumes.
#[test]
fn write_deadline_closes_a_stuck_subscriber() {
    let srv = Server::start_with_config(
        Some("max_payload: 1KB\nmax_pending: 256MB\nwrite_deadline: \"500ms\"\n"),
        &["--cores", "2"],
    );
    let (mut stuck, mut publisher) = flood_a_silent_subscriber(&srv, 32);
    // Stay stuck (read nothing) well past the deadline before looking.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        stuck.closed_within(Duration::from_secs(10)),
        "stuck subscriber not closed: {}",
        srv.log_text()
    );
    publisher.ping_pong();
    assert!(
        srv.log_text().contains("WriteDeadline"),
        "{}",
        srv.log_text()
    );
}

/// Passwords may be bcrypt hashes in the config, as `nats server passwd` writes them; the
/// slow comparison runs off the core, so other connections keep being served meanwhile.
#[test]
fn bcrypt_passwords_from_config() {
    let hash = bcrypt::hash("pa55", 10).expect("hash");
    let srv = Server::start_with_config(
        Some(&format!(
            "authorization {{ users: [ {{ user: ops, password: \"{hash}\" }} ] }}\n"
        )),
        &["--cores", "1"],
    );
    let mut good = srv.raw();
    good.send(b"CONNECT {\"user\":\"ops\",\"pass\":\"pa55\",\"verbose\":false}\r\n");
    good.ping_pong();
    let mut wrong = srv.raw();
    let mut other = srv.raw();
    other.send(b"CONNECT {\"user\":\"ops\",\"pass\":\"pa55\",\"verbose\":false}\r\n");
    other.ping_pong();
    wrong.send(b"CONNECT {\"user\":\"ops\",\"pass\":\"nope\",\"verbose\":false}\r\n");
    // While that hash is being checked, the single core still answers others.
    good.ping_pong();
    assert_eq!(wrong.line(), "-ERR 'Authorization Violation'");
    let mut raw_hash = srv.raw();
    raw_hash.send(
        format!("CONNECT {{\"user\":\"ops\",\"pass\":\"{hash}\",\"verbose\":false}}\r\n")
            .as_bytes(),
    );
    assert_eq!(raw_hash.line(), "-ERR 'Authorization Violation'");
}
