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
