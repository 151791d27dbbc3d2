//! Issue 22: behaviours that differed from nats-streaming-server v0.25.6, each as a test that
//! failed before its fix, through the real binary and real clients (stan.go cases in
//! tests/clients/stan-go/reference_cases.go, raw sockets, HTTP).

mod common;

use std::time::Duration;

const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// 22.4: a closed durable (plain or queue) closed again is an invalid subscription.
#[test]
fn closing_a_closed_durable_is_an_invalid_subscription() {
    common::stan_go_case("ref_close_closed_durable", None, &[], CASE_TIMEOUT);
}

/// 22.5: a flag given twice keeps its last value, as Go's flag package does.
#[test]
fn a_repeated_flag_keeps_its_last_value() {
    let port = common::free_port();
    let text = port.to_string();
    let srv = common::Server::start_on(
        port,
        None,
        &[
            "-a",
            "localhost",
            "-a",
            "127.0.0.1",
            "-p",
            "1",
            "-p",
            &text,
            "-cid",
            "first",
            "-cid",
            "second",
        ],
    );
    let mut raw = common::RawClient::connect(port);
    raw.ping_pong();
    assert!(
        srv.log_text().contains("second"),
        "the last cluster ID is used: {}",
        srv.log_text()
    );
}

/// 22.2: a fresh server reports the streaming server's own subscriptions in `/subsz` (count
/// and list) and in `/varz` `subscriptions`, as the reference does; readiness checks poll for
/// them.
#[test]
fn the_streaming_servers_subscriptions_are_reported() {
    let monitor = common::free_port().to_string();
    let _srv = common::Server::start(&["-m", &monitor]);
    let addr = format!("127.0.0.1:{monitor}");
    let number = |body: &str, key: &str| -> u64 {
        let at = body
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key}: {body}"));
        body[at + key.len() + 3..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("{key}: {body}"))
    };
    let subsz = common::http_get(&addr, "/subsz?subs=1");
    assert!(number(&subsz, "num_subscriptions") >= 8, "{subsz}");
    for subject in [
        "_STAN.discover.test-cluster",
        "_STAN.discover.test-cluster.pings",
        "_STAN.pub.test-cluster.>",
        "_STAN.sub.test-cluster",
        "_STAN.unsub.test-cluster",
        "_STAN.subclose.test-cluster",
        "_STAN.close.test-cluster",
    ] {
        assert!(
            subsz.contains(&format!("\"{subject}\"")),
            "{subject}: {subsz}"
        );
    }
    let varz = common::http_get(&addr, "/varz");
    assert!(number(&varz, "subscriptions") >= 8, "{varz}");
}
