//! Configuration files, flags and the startup banner, against the real binary: every example
//! in config/ starts, flags override files, -c/-sc combinations, TOML, `-t`, `--help`.

mod common;

use common::{repo_path, Server, TempDir};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn stanza(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stanza"))
        .args(args)
        .output()
        .expect("run stanza")
}

/// The three-node raft cluster's examples (started together by their own test).
const CLUSTER_EXAMPLES: [&str; 3] = [
    "cluster-node-a.conf",
    "cluster-node-b.conf",
    "cluster-node-c.conf",
];

#[test]
fn a_configured_feature_that_is_not_built_refuses_to_start() {
    // Set by flags, not a file: the flag is named.
    let err = common::fails_cleanly(&["--encryption_key", "secret"]);
    assert!(err.contains("flag --encrypt"), "{err}");
}

/// The cluster examples, moved to free loopback ports and scratch directories, start as a
/// three-node cluster: one node leads and serves (`-t` accepts each file as well).
#[test]
fn the_cluster_examples_elect_a_leader_that_serves() {
    let scratch = TempDir::new("cluster-examples");
    // Route ports move to free ones (client ports are given by the flag).
    let ports: Vec<(String, String)> = (6222..6225)
        .map(|p| (format!(":{p}"), format!(":{}", common::free_port())))
        .collect();
    let mut servers = Vec::new();
    for name in CLUSTER_EXAMPLES {
        let path = repo_path(&format!("config/{name}"));
        let checked = stanza(&["-t", "-c", path.to_str().expect("utf-8 path")]);
        assert!(checked.status.success(), "{name}: {checked:?}");
        let mut text = std::fs::read_to_string(&path)
            .expect("read example")
            .replace("/var/lib/stanza", scratch.0.to_str().expect("utf-8 path"));
        for (from, to) in &ports {
            text = text.replace(from.as_str(), to.as_str());
        }
        servers.push(Server::start_with_config(Some(&text), &[]));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !servers
        .iter()
        .any(|s| s.log_text().contains("Streaming Server is ready"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no node serves: {}",
            servers
                .iter()
                .map(Server::log_text)
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each example starts, takes the values of its file (the cluster ID shows in the banner),
/// serves clients on the port given by the flag that overrides the file, and stops on SIGTERM
/// with exit 0 and its pid file gone.
#[test]
fn every_example_config_starts() {
    let examples = [
        ("single-node.conf", "test-cluster"),
        ("single-node.toml", "test-cluster"),
        ("file-store.conf", "prod"),
        ("tls-auth.conf", "secure-cluster"),
        ("ft-active-standby.conf", "ft-cluster"),
    ];
    // Configuration files only (config/ also holds the systemd unit).
    let found: Vec<String> = std::fs::read_dir(repo_path("config"))
        .expect("config dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".conf") || n.ends_with(".toml"))
        .collect();
    for name in &found {
        assert!(
            examples.iter().any(|(n, _)| n == name) || CLUSTER_EXAMPLES.contains(&name.as_str()),
            "config/{name} is not covered by this test"
        );
    }
    for (name, cluster_id) in examples {
        let scratch = TempDir::new("example");
        let mut path = repo_path(&format!("config/{name}"));
        // The TLS example names certificates under /etc/stanza: point a copy at fresh ones.
        let certs = common::make_certs();
        if name == "tls-auth.conf" {
            let text = std::fs::read_to_string(&path)
                .expect("read example")
                .replace(
                    "/etc/stanza/certs/server-cert.pem",
                    &certs.path("server-cert.pem"),
                )
                .replace(
                    "/etc/stanza/certs/server-key.pem",
                    &certs.path("server-key.pem"),
                )
                .replace("/etc/stanza/certs/ca.pem", &certs.path("ca.pem"));
            path = certs.dir.0.join("tls-auth.conf");
            std::fs::write(&path, text).expect("write copy");
        }
        if name == "ft-active-standby.conf" {
            // Loopback only: its cluster port and its peer (which never answers) move there.
            let text = std::fs::read_to_string(&path)
                .expect("read example")
                .replace(
                    "0.0.0.0:6222",
                    &format!("127.0.0.1:{}", common::free_port()),
                )
                .replace(
                    "peer-host:6222",
                    &format!("127.0.0.1:{}", common::free_port()),
                );
            path = scratch.0.join("ft.conf");
            std::fs::write(&path, text).expect("write copy");
        }
        let pid = scratch.0.join("stanza.pid");
        let monitor_port = common::free_port().to_string();
        let mut srv = Server::start(&[
            "-m",
            &monitor_port,
            "-c",
            path.to_str().expect("utf-8 path"),
            "--dir",
            scratch.0.to_str().expect("utf-8 path"),
            "-P",
            pid.to_str().expect("utf-8 path"),
            "--user",
            "tester",
            "--pass",
            "pw",
        ]);
        let banner = format!("STAN: Starting stanza[{cluster_id}]");
        assert!(
            srv.wait_for_log(&banner, WAIT),
            "{name}:\n{}",
            srv.log_text()
        );
        assert!(
            srv.wait_for_log("---------- Store Limits ----------", WAIT),
            "{name}"
        );
        let log = srv.log_text();
        assert!(!log.contains("unknown configuration key"), "{name}:\n{log}");
        if name != "tls-auth.conf" {
            let mut client = srv.raw();
            client.send(b"CONNECT {\"verbose\":false,\"user\":\"tester\",\"pass\":\"pw\"}\r\n");
            client.ping_pong();
        } else {
            assert_eq!(srv.raw().info["tls_required"], true, "{name}");
        }
        assert!(pid.exists(), "{name}: pid file");
        let code = srv.signal_and_wait(libc::SIGTERM, Duration::from_secs(8));
        assert_eq!(code, Some(0), "{name}:\n{}", srv.log_text());
        assert!(!pid.exists(), "{name}: pid file removed at exit");
        let left: Vec<_> = std::fs::read_dir(&scratch.0)
            .expect("scratch")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // The file store's own files (store examples use --dir here) are expected;
            // nothing else, such as a DMA probe file or a temporary, may remain.
            .filter(|f| {
                ![
                    "server.dat",
                    "channels",
                    "clients.dat",
                    ".rootdir.lck",
                    "ft.conf",
                ]
                .contains(&f.as_str())
            })
            .collect();
        assert!(left.is_empty(), "{name}: files left behind: {left:?}");
    }
}

#[test]
fn flags_override_the_file_and_banner_shows_limits() {
    let conf = "port: 1\nstreaming {\n  cluster_id: from_file\n  store_limits {\n    max_msgs: 10\n    channels { \"foo.>\": { max_msgs: 0 }, \"foo.bar\": { max_age: \"1h\" } }\n  }\n}\n";
    let srv = Server::start_with_config(Some(conf), &["-cid", "from_flag", "-mb", "1KB"]);
    assert!(
        srv.wait_for_log("STAN: Starting stanza[from_flag]", WAIT),
        "{}",
        srv.log_text()
    );
    assert!(srv.wait_for_log("STAN: ----------------------------------", WAIT));
    let log = srv.log_text();
    for line in [
        "STAN: Channels:                  100 *",
        "STAN:   Messages     :            10",
        "STAN:   Bytes        :       1.00 KB",
        "STAN: foo.>",
        "STAN:  |-> Messages            unlimited",
        "STAN:  foo.bar",
        "STAN:   |-> Age                   1h0m0s",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    srv.raw().ping_pong();
}

#[test]
fn nats_and_streaming_files_given_separately() {
    let dir = TempDir::new("twofiles");
    let nats = dir.0.join("nats.conf");
    let stan = dir.0.join("stan.conf");
    std::fs::write(&nats, "max_payload: 2048\n").expect("write");
    std::fs::write(
        &stan,
        "streaming { cluster_id: two_files, hb_fail_count: 2 }\n",
    )
    .expect("write");
    let srv = Server::start(&[
        "-c",
        nats.to_str().expect("utf-8"),
        "-sc",
        stan.to_str().expect("utf-8"),
    ]);
    assert!(
        srv.wait_for_log("Starting stanza[two_files]", WAIT),
        "{}",
        srv.log_text()
    );
    assert_eq!(srv.raw().info["max_payload"], 2048);
}

#[test]
fn check_config_flag() {
    let dir = TempDir::new("check");
    let good = dir.0.join("good.conf");
    std::fs::write(&good, "streaming { id: ok, bogus_key: 1 }\n").expect("write");
    let out = stanza(&["-t", "-c", good.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown configuration key 'streaming.bogus_key'"),
        "{err}"
    );
    let bad = dir.0.join("bad.conf");
    std::fs::write(
        &bad,
        "streaming {\n  store_limits { max_channels: 1, channels { a: {}, b: {} } }\n}\n",
    )
    .expect("write");
    let err = common::fails_cleanly(&["-t", "-c", bad.to_str().expect("utf-8")]);
    assert!(
        err.contains("too many channels defined (2). The max channels limit is set to 1"),
        "{err}"
    );
    let wrong = dir.0.join("wrong.conf");
    std::fs::write(&wrong, "streaming {\n  hb_fail_count: \"many\"\n}\n").expect("write");
    let err = common::fails_cleanly(&["-c", wrong.to_str().expect("utf-8")]);
    assert!(
        err.contains("wrong.conf:2:18: 'hb_fail_count' invalid type"),
        "{err}"
    );
}

#[test]
fn help_and_version() {
    let out = stanza(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for heading in [
        "Streaming Server:",
        "Streaming Server Clustering:",
        "Streaming Server File Store:",
        "Streaming Server SQL Store:",
        "NATS Server:",
        "NATS Server Authorization:",
        "--cluster_id",
        "--stan_config",
    ] {
        assert!(help.contains(heading), "missing {heading}:\n{help}");
    }
    let out = stanza(&["-v"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("stanza "));
}

/// `--signal reload=<pid>` reaches a running server (as `nats-streaming-server --signal`).
#[test]
fn signal_flag_reaches_a_running_server() {
    let srv = Server::start(&[]);
    let spec = format!("reload={}", srv.pid());
    let out = stanza(&["--signal", &spec]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        srv.wait_for_log("Reloading server configuration", WAIT),
        "{}",
        srv.log_text()
    );
    let out = stanza(&["--signal", "bogus"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown signal"));
}
