//! Issue 21: reliability and security defects found by hostile testing, each as a test that
//! failed before its fix, against the real binary with real clients (stan.go cases in
//! tests/clients/stan-go/hostile_cases.go, raw sockets, crafted files).

mod common;

use std::time::Duration;

const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// 21.3: ack inboxes carry a secret tag; guessed ones do not ack.
#[test]
fn forged_ack_inboxes_do_not_ack() {
    common::stan_go_case("hostile_forged_ack_is_ignored", None, &[], CASE_TIMEOUT);
}

/// 21.3: the duplicate-ID probe's reply inbox is random; answers sprayed on guessed inboxes
/// do not keep a dead client's ID taken.
#[test]
fn forged_probe_answers_do_not_hold_a_dead_clients_id() {
    common::stan_go_case(
        "hostile_forged_probe_answer_is_ignored",
        None,
        &[],
        CASE_TIMEOUT,
    );
}

/// 21.5: durations beyond Go's range are refused with a message, never a panic, in flags and
/// in the config file.
#[test]
fn out_of_range_durations_are_refused() {
    for flag in [
        "--hb_interval",
        "--max_age",
        "--max_inactivity",
        "--file_slice_max_age",
        "--hb_timeout",
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stanza"));
        cmd.args(["-t", flag, "99999999999999999999s"]);
        let out = common::run_bounded(cmd, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        // Go's flag package exits 2 on a bad flag value.
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains("not a valid duration"), "{flag}: {err}");
    }
    let dir = common::TempDir::new("durations");
    for (key, body) in [
        (
            "hb_interval",
            "streaming { hb_interval: \"99999999999999999999s\" }",
        ),
        ("ping_interval", "ping_interval: \"99999999999999999999s\""),
        ("write_deadline", "write_deadline: 99999999999999999999"),
        (
            "max_age",
            "streaming { store_limits { max_age: \"9999999999h\" } }",
        ),
        (
            "channels max_age",
            "streaming { store_limits { channels { foo { max_age: \"9999999999h\" } } } }",
        ),
    ] {
        let path = dir.0.join("bad.conf");
        std::fs::write(&path, body).unwrap();
        let err = common::fails_cleanly(&["-t", "-c", path.to_str().unwrap()]);
        assert!(err.contains("bad.conf"), "{key}: {err}");
    }
}

/// 21.5: a SIGHUP reload whose file holds an out-of-range duration fails and changes nothing;
/// the server keeps running.
#[test]
fn reload_with_an_out_of_range_duration_changes_nothing() {
    let mut srv = common::Server::start_with_config(Some("ping_interval: \"2m\"\n"), &[]);
    srv.raw().ping_pong();
    std::fs::write(
        srv.config_path(),
        "ping_interval: \"99999999999999999999s\"\nstreaming { hb_interval: \"9999999999h\" }\n",
    )
    .expect("rewrite config");
    srv.signal(libc::SIGHUP);
    assert!(
        srv.wait_for_log(
            "Failed to reload server configuration",
            Duration::from_secs(5)
        ),
        "{}",
        srv.log_text()
    );
    assert_eq!(
        srv.wait_exit(Duration::from_millis(300)),
        None,
        "still running"
    );
    srv.raw().ping_pong();
}

/// 21.7: what arrives on the publish subject is answered as a publish, whatever it decodes as.
#[test]
fn a_control_message_on_the_publish_subject_gets_an_error_puback() {
    common::stan_go_case(
        "hostile_control_message_on_publish_subject",
        None,
        &[],
        CASE_TIMEOUT,
    );
}

/// The server's resident memory, from /proc.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

/// A raw connection that reads as little as the kernel lets it (a tiny receive buffer), for a
/// consumer that never reads.
fn never_reading(port: u16) -> common::RawClient {
    common::RawClient::connect_with_receive_buffer(port, 4096)
}

/// Round trips of a third client while `busy` runs; returns the slowest.
fn slowest_round_trip(port: u16, busy: impl FnOnce() + Send) -> Duration {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            let mut probe = common::RawClient::connect(port);
            let mut worst = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::time::Instant::now();
                probe.ping_pong();
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            worst
        });
        busy();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        prober.join().expect("prober")
    })
}

/// 21.2: a core NATS subscriber that never reads is cut at `max_pending` (counted in /varz,
/// logged as nats-server logs it) without stalling other clients: a third client's round trip
/// stays short, the publisher goes on, and memory comes back once the consumer is gone.
#[test]
fn a_subscriber_that_never_reads_is_cut_at_max_pending_without_stalling_others() {
    let monitor = common::free_port().to_string();
    let srv = common::Server::start_with_config(
        Some("max_pending: 8MB\n"),
        &["--cores", "2", "-m", &monitor],
    );
    let mut slow = never_reading(srv.port);
    slow.send(b"CONNECT {\"verbose\":false}\r\nSUB foo 1\r\n");
    slow.ping_pong();
    let payload = vec![b'x'; 1024];
    let mut frame = format!("PUB foo {}\r\n", payload.len()).into_bytes();
    frame.extend_from_slice(&payload);
    frame.extend_from_slice(b"\r\n");
    let batch: Vec<u8> = frame.repeat(256);
    let mut published = 0usize;
    let worst = slowest_round_trip(srv.port, || {
        let mut publisher = common::RawClient::connect(srv.port);
        publisher.send(b"CONNECT {\"verbose\":false}\r\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        // 48 MiB through an 8 MiB limit, in batches of 256 KiB.
        while published < 48 << 20 && std::time::Instant::now() < deadline {
            publisher.send(&batch);
            published += batch.len();
        }
        publisher.ping_pong();
    });
    eprintln!("slowest round trip of another client while a consumer never read: {worst:?}");
    assert!(
        published >= 48 << 20,
        "the publisher was held back: {published} bytes"
    );
    assert!(
        worst < Duration::from_millis(750),
        "a round trip took {worst:?}"
    );
    assert!(
        srv.wait_for_log(
            "Slow Consumer Detected: MaxPending of",
            Duration::from_secs(5)
        ),
        "{}",
        srv.log_text()
    );
    let varz = common::http_get(&format!("127.0.0.1:{monitor}"), "/varz");
    assert!(varz.contains("\"slow_consumers\": 1"), "{varz}");
    // Reading again: what the kernel holds, then the end of the stream.
    assert!(
        slow.closed_within(Duration::from_secs(5)),
        "the slow consumer was not closed: {}",
        srv.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    let rss = rss_mib(srv.pid());
    eprintln!("RSS after the slow consumer was cut: {rss} MiB");
    assert!(rss < 96, "RSS after the slow consumer went: {rss} MiB");
}

/// 21.2: a STAN subscriber that never reads is held to its MaxInflight (2048 messages of 8 KiB,
/// 16 MiB: past the stall threshold, below max_pending): publishing 64 MiB to its channel (file
/// store) stalls neither the publisher nor another client, and the server does not buffer the
/// channel's backlog for it.
#[test]
fn a_stan_subscriber_that_never_reads_is_held_to_its_window() {
    use prost::Message;
    let store = common::TempDir::new("slow-stan");
    let dir = store.0.to_str().expect("utf-8");
    let srv = common::Server::start(&["--cores", "2", "-st", "file", "--dir", dir]);
    let mut slow = never_reading(srv.port);
    slow.send(b"CONNECT {\"verbose\":false}\r\nSUB _INBOX.r 1\r\n");
    let request = |raw: &mut common::RawClient, subject: &str, payload: Vec<u8>| {
        let mut f = format!("PUB {subject} _INBOX.r {}\r\n", payload.len()).into_bytes();
        f.extend_from_slice(&payload);
        f.extend_from_slice(b"\r\n");
        raw.send(&f);
        raw.msg().1
    };
    let connect = shards::pb::ConnectRequest {
        client_id: "slow".into(),
        heartbeat_inbox: "_INBOX.slow.hb".into(),
        protocol: 1,
        conn_id: bytes::Bytes::from_static(b"slow-conn"),
        ping_interval: 5,
        ping_max_out: 10,
    };
    let resp = shards::pb::ConnectResponse::decode(
        request(
            &mut slow,
            "_STAN.discover.test-cluster",
            connect.encode_to_vec(),
        )
        .as_slice(),
    )
    .expect("connect response");
    let sub = shards::pb::SubscriptionRequest {
        client_id: "slow".into(),
        subject: "backlog".into(),
        inbox: "_INBOX.slow.msgs".into(),
        max_in_flight: 2048,
        ack_wait_in_secs: 30,
        start_position: shards::pb::StartPosition::First as i32,
        ..Default::default()
    };
    slow.send(b"SUB _INBOX.slow.msgs 2\r\n");
    let sub_resp = shards::pb::SubscriptionResponse::decode(
        request(&mut slow, &resp.sub_requests, sub.encode_to_vec()).as_slice(),
    )
    .expect("subscription response");
    assert_eq!(sub_resp.error, "");
    let url = srv.url();
    let mut bench_ok = false;
    let worst = slowest_round_trip(srv.port, || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stanza"));
        cmd.args([
            "bench", "-s", &url, "-np", "1", "-ns", "0", "-n", "8192", "-ms", "8192", "backlog",
        ]);
        bench_ok = common::run_bounded(cmd, Duration::from_secs(60))
            .status
            .success();
    });
    assert!(bench_ok, "the publisher did not finish");
    assert!(
        worst < Duration::from_millis(750),
        "a round trip took {worst:?}"
    );
    let rss = rss_mib(srv.pid());
    eprintln!("slowest round trip with a stalled STAN subscriber: {worst:?}; RSS {rss} MiB");
    assert!(rss < 128, "RSS with a stalled STAN subscriber: {rss} MiB");
    assert!(
        !srv.log_text().contains("Slow Consumer"),
        "{}",
        srv.log_text()
    );
}

/// 21.4: a channel name too long for a directory name is refused on the file store, with the
/// system's error, instead of a subscription answered OK and gone after a restart.
#[test]
fn a_channel_the_file_store_cannot_hold_is_refused() {
    let store = common::TempDir::new("long-name");
    let dir = store.0.to_str().expect("utf-8").to_string();
    common::stan_go_case(
        "hostile_channel_name_too_long_for_the_store",
        None,
        &["-st", "file", "--dir", &dir],
        CASE_TIMEOUT,
    );
}
