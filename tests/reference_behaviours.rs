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

/// 22.9: `remote_syslog` sends the log lines to a syslog over UDP in Go's format (facility
/// daemon, `[INF]` at notice), as nats-server does.
#[test]
fn remote_syslog_receives_the_log() {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let url = format!("udp://{}", socket.local_addr().expect("addr"));
    let _srv = common::Server::start(&["--remote_syslog", &url]);
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = line.contains("Server is ready");
        lines.push(line);
        if done {
            break;
        }
    }
    let ready = lines
        .iter()
        .find(|l| l.contains("Server is ready"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(ready.starts_with("<29>"), "{ready}");
    assert!(ready.contains(" stanza["), "{ready}");
    assert!(ready.contains("]: [INF] "), "{ready}");
}

/// 22.9: `logfile_size_limit` rotates the log file by size, as nats-server 2.9 does: the full
/// file is kept as `<file>.<date>` and the new one says where it went.
#[test]
fn the_log_file_rotates_by_size() {
    let dir = common::TempDir::new("rotate");
    let log = dir.0.join("stanza.log");
    let config = format!(
        "logfile: \"{}\"\nlogfile_size_limit: 1KB\ndebug: true\n",
        log.display()
    );
    let srv = common::Server::start_with_config(Some(&config), &[]);
    // Connections log debug lines: make enough of them to pass 1 KiB a few times.
    for _ in 0..30 {
        srv.raw().ping_pong();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let backups = loop {
        let backups: Vec<String> = std::fs::read_dir(&dir.0)
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| {
                n.strip_prefix("stanza.log.")
                    .is_some_and(|date| date.starts_with(|c: char| c.is_ascii_digit()))
            })
            .collect();
        if backups.len() >= 2 || std::time::Instant::now() > deadline {
            break backups;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(backups.len() >= 2, "{backups:?}");
    let current = std::fs::read_to_string(&log).expect("log");
    assert!(
        current.contains("Rotated log, backup saved as"),
        "{current}"
    );
    for b in &backups {
        let len = std::fs::metadata(dir.0.join(b)).expect("backup").len();
        assert!((1024..4096).contains(&len), "{b}: {len} bytes");
    }
}

/// 22.8: the duplicate-ID probe waits only when someone listens on the old heartbeat inbox.
#[test]
fn a_vanished_clients_id_is_taken_over_at_once() {
    common::stan_go_case(
        "ref_duplicate_probe_waits_only_for_a_listener",
        None,
        &[],
        CASE_TIMEOUT,
    );
}

/// 22.3: at SIGTERM the streaming side stops first: a request sent just after the signal gets
/// no answer, while the NATS side still serves (PONG) until it closes.
#[test]
fn at_sigterm_streaming_requests_get_no_answer() {
    use prost::Message;
    use std::io::Read;
    let mut srv = common::Server::start(&["--cores", "2"]);
    let mut raw = srv.raw();
    let connect = |id: &str| {
        shards::pb::ConnectRequest {
            client_id: id.into(),
            heartbeat_inbox: format!("_INBOX.hb.{id}"),
            protocol: 1,
            conn_id: bytes::Bytes::copy_from_slice(id.as_bytes()),
            ping_interval: 5,
            ping_max_out: 10,
        }
        .encode_to_vec()
    };
    let request = |raw: &mut common::RawClient, id: &str| {
        let payload = connect(id);
        let mut frame = format!(
            "PUB _STAN.discover.test-cluster _INBOX.reply {}\r\n",
            payload.len()
        )
        .into_bytes();
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\nPING\r\n");
        raw.send(&frame);
    };
    raw.send(b"SUB _INBOX.reply 1\r\n");
    request(&mut raw, "before");
    let (line, _) = raw.msg();
    assert!(line.starts_with("MSG _INBOX.reply"), "{line}");
    srv.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(3));
    request(&mut raw, "after");
    // Whatever arrives until the connection closes: a PONG may, a reply may not.
    let _ = raw
        .stream
        .set_read_timeout(Some(Duration::from_millis(500)));
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        match raw.stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        !seen.contains("MSG _INBOX.reply"),
        "answered after SIGTERM: {seen:?}"
    );
    assert_eq!(srv.wait_exit(Duration::from_secs(8)), Some(0));
}

/// 22.6: `-SDV` logs the streaming side's debug and trace lines (connects and closes,
/// publishes, deliveries, acks, redeliveries, subscriptions), `-DV` the NATS protocol traces;
/// each only its own side, and neither without the flag.
#[test]
fn streaming_and_nats_debug_and_trace_lines() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let stan_debug = [
        "] Connected",
        "Started new subscription, subject=r-logged-ch",
        "Unsubscribed subject=r-logged-ch",
        "[Client:r-logged] Closed",
    ];
    let stan_trace = [
        "Received message from publisher subj=r-logged-ch",
        "Delivering msg to subid=",
        "Processing ack for subid=",
        "Redelivering msg to subid=",
    ];
    let nats = [
        "<<- [CONNECT {",
        "<<- [PUB _STAN.pub.test-cluster.r-logged-ch",
        "->> [MSG ",
    ];
    // (flags, streaming debug, streaming trace, NATS trace)
    for (flags, want_debug, want_trace, want_nats) in [
        (&["-SDV"][..], true, true, false),
        (&["-DV"][..], false, false, true),
        (&["-SD", "-V"][..], true, false, true),
        (&[][..], false, false, false),
    ] {
        let mut args = vec!["--cores", "2"];
        args.extend_from_slice(flags);
        let srv = common::Server::start(&args);
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["ref_logged_session", &srv.url()]);
        common::run_client(cmd, CASE_TIMEOUT);
        std::thread::sleep(Duration::from_millis(200));
        let log = srv.log_text();
        for line in stan_debug {
            assert_eq!(log.contains(line), want_debug, "{flags:?} {line:?}:\n{log}");
        }
        for line in stan_trace {
            assert_eq!(log.contains(line), want_trace, "{flags:?} {line:?}:\n{log}");
        }
        for line in nats {
            assert_eq!(log.contains(line), want_nats, "{flags:?} {line:?}:\n{log}");
        }
    }
}

/// 22.1: the streaming server is one subscriber among others: plain subscribers on `_STAN.>`
/// and on the pings subject receive the requests too, on either core.
#[test]
fn streaming_subjects_are_visible_to_ordinary_subscribers() {
    common::stan_go_case(
        "ref_streaming_subjects_are_visible",
        None,
        &[],
        CASE_TIMEOUT,
    );
}
