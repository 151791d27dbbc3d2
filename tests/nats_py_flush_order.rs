//! nats-py's flush writes PING before the SUBs still in its buffer (see `client.rs`). In a test
//! binary of its own: it relies on a short window, so it must not share the cores with the
//! heavy tests of `core_protocol.rs` (cargo runs test binaries one after another).

mod common;

use common::{RawClient, Server};
use std::time::Duration;

/// nats-py writes the PING of `flush()` before the SUB still in its buffer. Its subscription
/// must still be visible to publishers on the other core once the PONG arrives.
#[test]
fn sub_written_after_a_python_flush_ping_is_visible_across_cores() {
    let srv = Server::start(&["--cores", "2"]);
    for round in 0..20 {
        let mut clients: Vec<RawClient> = (0..2).map(|_| srv.raw()).collect();
        while clients.iter().all(|c| c.core() == clients[0].core()) {
            clients.push(srv.raw());
        }
        let first_core = clients[0].core();
        let other = clients
            .iter()
            .position(|c| c.core() != first_core)
            .expect("two cores");
        let mut publisher = clients.swap_remove(other);
        let mut sub = clients.swap_remove(0);
        sub.send(b"CONNECT {\"verbose\":false,\"lang\":\"python3\"}\r\nPING\r\n");
        std::thread::sleep(Duration::from_micros(100));
        sub.send(format!("SUB late.{round} 1\r\n").as_bytes());
        sub.expect("PONG");
        publisher.send(
            format!("CONNECT {{\"verbose\":false}}\r\nPUB late.{round} 1\r\nx\r\n").as_bytes(),
        );
        assert_eq!(
            sub.msg().0,
            format!("MSG late.{round} 1 1"),
            "round {round}"
        );
    }
}
