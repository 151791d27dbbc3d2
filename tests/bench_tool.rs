//! `stanza bench` against the real server: every scenario of the side-by-side comparison
//! (benches/compare) runs briefly on the memory store and on the file store with sync
//! on and off, and its JSON report must account for every message. A smoke, not a benchmark:
//! no rate is asserted. Also: TLS with user/password, -csv, and a refused publish is an error.

mod common;

use common::{make_certs, Server, TempDir};
use std::process::Command;

struct Scenario {
    name: &'static str,
    args: &'static [&'static str],
    /// Messages the publishers must get PubAcks for, and the subscribers must receive.
    published: u64,
    delivered: u64,
    replayed: u64,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "async publish, 1 channel",
        args: &["-np", "1", "-n", "20000"],
        published: 20000,
        delivered: 0,
        replayed: 0,
    },
    Scenario {
        name: "1 pub + 1 sub",
        args: &["-np", "1", "-ns", "1", "-n", "20000"],
        published: 20000,
        delivered: 20000,
        replayed: 0,
    },
    Scenario {
        name: "4 channels x (1 pub + 1 sub)",
        args: &["-np", "4", "-ns", "4", "--channels", "4", "-n", "20000"],
        published: 20000,
        delivered: 20000,
        replayed: 0,
    },
    Scenario {
        name: "1000 channels x 1 pub",
        args: &["-np", "1000", "--channels", "1000", "-n", "2000"],
        published: 2000,
        delivered: 0,
        replayed: 0,
    },
    Scenario {
        name: "1 sync publisher",
        args: &["-np", "1", "-sync", "-n", "500"],
        published: 500,
        delivered: 0,
        replayed: 0,
    },
    Scenario {
        name: "64 sync publishers",
        args: &["-np", "64", "-sync", "-n", "3200"],
        published: 3200,
        delivered: 0,
        replayed: 0,
    },
    Scenario {
        name: "replay",
        args: &["-np", "1", "--replay", "-n", "20000"],
        published: 20000,
        delivered: 0,
        replayed: 20000,
    },
];

fn bench(url: &str, subject: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_stanza"))
        .arg("bench")
        .args(["-s", url, "--json", "--timeout", "60"])
        .args(args)
        .arg(subject)
        .output()
        .expect("run stanza bench");
    assert!(
        out.status.success(),
        "stanza bench {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn msgs(report: &serde_json::Value, part: &str) -> u64 {
    report[part]["msgs"].as_u64().unwrap_or(0)
}

fn run_all(server: &Server, store: &str) {
    for (i, s) in SCENARIOS.iter().enumerate() {
        let report = bench(&server.url(), &format!("smoke.{i}"), s.args);
        let what = format!("{store}: {}", s.name);
        assert_eq!(msgs(&report, "pub"), s.published, "{what}: {report}");
        assert_eq!(msgs(&report, "sub"), s.delivered, "{what}: {report}");
        assert_eq!(msgs(&report, "replay"), s.replayed, "{what}: {report}");
        assert_eq!(
            report["publish_to_puback"]["count"].as_u64(),
            Some(s.published),
            "{what}: every PubAck has a latency"
        );
        if s.delivered > 0 {
            assert_eq!(
                report["publish_to_delivery"]["count"].as_u64(),
                Some(s.delivered),
                "{what}"
            );
        }
        // Each subscriber (replaying, in a replay run) names the server core holding it and
        // the core owning its channel.
        let subscribers = report["subscribers"]
            .as_u64()
            .unwrap_or(0)
            .max(u64::from(s.replayed > 0));
        let cores = |key: &str| -> Vec<u64> {
            report[key]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_u64()).collect())
                .unwrap_or_default()
        };
        let (held_by, owners) = (cores("subscriber_cores"), cores("channel_cores"));
        assert_eq!(held_by.len() as u64, subscribers, "{what}: {report}");
        assert!(held_by.iter().all(|c| *c < 2), "{what}: {report}");
        // A subscriber's connection moves to its channel's core at its first subscription.
        assert_eq!(held_by, owners, "{what}: {report}");
    }
}

#[test]
fn every_scenario_on_the_memory_store() {
    let srv = Server::start(&["--cores", "2", "-mc", "2000"]);
    run_all(&srv, "memory");
}

#[test]
fn every_scenario_on_the_file_store_sync_on_and_off() {
    for sync in ["true", "false"] {
        let dir = TempDir::new("bench-file");
        let dir_arg = dir.0.to_string_lossy().into_owned();
        let file_sync = format!("--file_sync={sync}");
        let srv = Server::start(&[
            "--cores", "2", "-mc", "2000", "-st", "file", "--dir", &dir_arg, &file_sync,
        ]);
        run_all(&srv, &format!("file sync={sync}"));
        drop(srv);
        // Recovery: the store comes back with what was published, and replays it.
        let srv = Server::start(&[
            "--cores", "2", "-mc", "2000", "-st", "file", "--dir", &dir_arg,
        ]);
        let report = bench(
            &srv.url(),
            "smoke.0",
            &["-np", "1", "-n", "1", "--replay", "-id", "again"],
        );
        assert_eq!(
            msgs(&report, "replay"),
            20001,
            "recovered and replayed: {report}"
        );
    }
}

#[test]
fn tls_user_password_and_csv() {
    let certs = make_certs();
    let conf_dir = TempDir::new("bench-tls");
    let conf = conf_dir.0.join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\nauthorization {{ user: bench, password: s3cret }}\n",
            certs.path("server-cert.pem"),
            certs.path("server-key.pem")
        ),
    )
    .expect("write conf");
    let srv = Server::start(&["--cores", "2", "-c", conf.to_str().expect("utf-8")]);
    let ca_dir = TempDir::new("bench-ca");
    std::fs::copy(certs.path("ca.pem"), ca_dir.0.join("ca.pem")).expect("copy ca");
    let csv = conf_dir.0.join("out.csv");
    let url = format!("tls://127.0.0.1:{}", srv.port);
    let cd = ca_dir.0.to_string_lossy().into_owned();
    let csv_arg = csv.to_string_lossy().into_owned();
    let report = bench(
        &url,
        "secure",
        &[
            "-cd", &cd, "-u", "bench", "-pw", "s3cret", "-np", "2", "-ns", "1", "-n", "5000",
            "-csv", &csv_arg,
        ],
    );
    assert_eq!(msgs(&report, "pub"), 5000);
    assert_eq!(msgs(&report, "sub"), 5000);
    let text = std::fs::read_to_string(&csv).expect("csv written");
    assert!(text.starts_with("#RunID, ClientID, MsgCount"), "{text}");
    assert_eq!(text.lines().count(), 4, "{text}");

    // Wrong password: a clear error, exit status 1.
    let out = Command::new(env!("CARGO_BIN_EXE_stanza"))
        .args([
            "bench", "-s", &url, "-cd", &cd, "-u", "bench", "-pw", "wrong",
        ])
        .args(["-np", "1", "-n", "10", "--timeout", "20", "x"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stanza bench:"), "{err}");
}

#[test]
fn refused_publishes_fail_the_run() {
    // One channel allowed: publishing to a second one gets an error PubAck.
    let srv = Server::start(&["--cores", "2", "-mc", "1"]);
    bench(&srv.url(), "first", &["-np", "1", "-n", "10"]);
    let out = Command::new(env!("CARGO_BIN_EXE_stanza"))
        .args([
            "bench",
            "-s",
            &srv.url(),
            "-np",
            "1",
            "-n",
            "10",
            "--timeout",
            "20",
        ])
        .arg("second")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("publish refused by the server"), "{err}");
}
