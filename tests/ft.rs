//! Fault-tolerant mode (issue 17), with real processes on loopback: servers sharing one store
//! directory, clustered by routes in the Kubernetes shape (every node lists all of them, itself
//! included) or sharing an external nats-server (`-ns`); exactly one is active (sampled on
//! every node's `/streaming/isFTActive` throughout); kill -9, SIGTERM and SIGSTOP of the active;
//! stan.go publishing and subscribing through a standby while the active is killed again and
//! again; the store lock of standalone servers; heartbeats of a second active.

mod common;

use common::{Server, TempDir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const TAKE_OVER_BOUND: Duration = Duration::from_secs(10);

/// One FT node: its client, route and monitoring ports, the config it was started with.
struct Node {
    server: Option<Server>,
    client: u16,
    monitor: u16,
    config: String,
}

impl Node {
    fn start(&mut self) {
        let m = self.monitor.to_string();
        self.server = Some(Server::start_on(
            self.client,
            Some(&self.config),
            &["--cores", "2", "-m", &m],
        ));
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("node running")
    }

    fn kill(&mut self) {
        if let Some(s) = self.server.as_ref() {
            s.signal(libc::SIGKILL);
        }
        if let Some(mut s) = self.server.take() {
            let _ = s.wait_exit(Duration::from_secs(5));
        }
    }
}

/// `n` nodes with routes to every node (themselves included) and one shared store.
fn ft_cluster(n: usize, store: &TempDir, cluster_id: &str) -> Vec<Node> {
    let routes: Vec<u16> = (0..n).map(|_| common::free_port()).collect();
    let list: Vec<String> = routes
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    let mut nodes: Vec<Node> = routes
        .iter()
        .map(|route| Node {
            server: None,
            client: common::free_port(),
            monitor: common::free_port(),
            config: format!(
                "cluster {{\n  name: ft-test\n  listen: \"127.0.0.1:{route}\"\n  routes: [{}]\n  connect_retries: 10\n}}\nstreaming {{\n  cluster_id: {cluster_id}\n  ft_group: grp\n  store: file\n  dir: \"{}\"\n}}\n",
                list.join(", "),
                store.0.display()
            ),
        })
        .collect();
    for node in &mut nodes {
        node.start();
    }
    nodes
}

/// `Some(true)` when the node answers 200 on `/streaming/isFTActive`, `Some(false)` on 204,
/// `None` when it does not answer in time (stopped or gone).
fn ft_active(monitor: u16) -> Option<bool> {
    let mut s = TcpStream::connect(("127.0.0.1", monitor)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    write!(
        s,
        "GET /streaming/isFTActive HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split_whitespace().nth(1)?;
    match status {
        "200" => Some(true),
        "204" => Some(false),
        other => panic!("isFTActive answered {other}: {text}"),
    }
}

/// Which nodes say they are active; panics if more than one does.
fn actives(nodes: &[Node]) -> Vec<usize> {
    let active: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.server.is_some() && ft_active(n.monitor) == Some(true))
        .map(|(i, _)| i)
        .collect();
    assert!(active.len() <= 1, "two active servers: nodes {active:?}");
    active
}

/// Waits until exactly one node is active and returns it (sampling all of them meanwhile).
fn the_active(nodes: &[Node], within: Duration) -> (usize, Duration) {
    let start = Instant::now();
    loop {
        if let [one] = actives(nodes)[..] {
            return (one, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "no active server after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn state(monitor: u16) -> String {
    let body = common::http_get(&format!("127.0.0.1:{monitor}"), "/streaming/serverz");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["state"].as_str().unwrap_or_default().to_string()
}

/// Three nodes in the Kubernetes shape: one active, the others standing by (and saying so);
/// stan.go clients on the cluster publish, and durable and queue subscribers receive, while the
/// active is killed with SIGKILL ten times (each time restarted as a standby): every
/// acknowledged message is in the channel exactly once and in order, and reached both
/// subscriptions. Never two actives at any sample. Longer loops:
/// `STANZA_FT_KILLS=100 cargo test --release --test ft kill_nine` (README, Testing).
#[test]
fn kill_nine_of_the_active_under_load_ten_times() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let store = TempDir::new("ft-store");
    let mut nodes = ft_cluster(3, &store, "ft-load");
    let (first, _) = the_active(&nodes, TAKE_OVER_BOUND);
    for (i, n) in nodes.iter().enumerate() {
        let want = if i == first {
            "FT_ACTIVE"
        } else {
            "FT_STANDBY"
        };
        assert_eq!(state(n.monitor), want, "node {i}");
    }
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.client))
        .collect();
    let stop = store.0.join("stop-publishing");
    let kills: u32 = std::env::var("STANZA_FT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // About 2 s per kill, then the checks.
    let case_timeout = Duration::from_secs(60 + 3 * u64::from(kills));
    let client = common::start_failover_load(&bin, &urls.join(","), "ft-load", &stop, case_timeout);
    std::thread::sleep(Duration::from_millis(1500));
    let mut take_overs = Vec::new();
    for _ in 0..kills {
        let (active, _) = the_active(&nodes, TAKE_OVER_BOUND);
        nodes[active].kill();
        let (next, took) = the_active(&nodes, TAKE_OVER_BOUND);
        assert_ne!(next, active);
        take_overs.push(took);
        nodes[active].start();
        // Load goes on through the new active for a moment before the next kill.
        let until = Instant::now() + Duration::from_millis(700);
        while Instant::now() < until {
            actives(&nodes);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::fs::write(&stop, b"").expect("stop file");
    eprintln!("take-overs (kill -9 to isFTActive 200 elsewhere): {take_overs:?}");
    let logs: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.server.as_ref().map(|s| s.log_text()))
        .collect();
    let stdout = common::expect_case_success(client, case_timeout, &logs);
    eprintln!("{stdout}");
    actives(&nodes);
}

/// SIGSTOP of the active (hung, the lock still held): no standby becomes active while it is
/// stopped; after SIGCONT it is still the holder and goes on serving. SIGTERM of the active
/// then hands over to the standby.
#[test]
fn a_hung_active_keeps_the_lock_and_sigterm_hands_over() {
    let store = TempDir::new("ft-hung");
    let mut nodes = ft_cluster(2, &store, "ft-hung");
    let (active, _) = the_active(&nodes, TAKE_OVER_BOUND);
    let standby = 1 - active;
    nodes[active].server().signal(libc::SIGSTOP);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(
            ft_active(nodes[standby].monitor),
            Some(false),
            "the standby took over while the lock was held"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nodes[active].server().signal(libc::SIGCONT);
    let (still, _) = the_active(&nodes, TAKE_OVER_BOUND);
    assert_eq!(still, active);
    // Still serving: a streaming request through the standby's port gets its answer.
    assert!(nodes[standby]
        .server()
        .wait_for_log("ft: unable to get store lock", Duration::from_secs(1)));
    let code = nodes[active]
        .server
        .as_mut()
        .expect("running")
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    nodes[active].server = None;
    let (next, took) = the_active(&nodes, TAKE_OVER_BOUND);
    assert_eq!(next, standby);
    eprintln!("take-over after SIGTERM: {took:?}");
    assert!(nodes[standby]
        .server()
        .wait_for_log("STAN: Streaming Server is ready", Duration::from_secs(5)));
}

/// Two standalone servers on one directory: the second refuses, naming the directory and the
/// holder; the first is untouched and still serves.
#[test]
fn a_second_server_on_the_same_directory_refuses_to_start() {
    let store = TempDir::new("one-dir");
    let dir = store.0.to_str().expect("utf-8 path");
    let first = Server::start(&["-st", "file", "--dir", dir]);
    let port = common::free_port().to_string();
    let err = common::fails_cleanly(&["-p", &port, "-st", "file", "--dir", dir]);
    assert!(err.contains("is in use by another server"), "{err}");
    assert!(err.contains(dir), "{err}");
    assert!(
        err.contains(&format!("pid {}", first.pid())),
        "the holder is named: {err}"
    );
    first.raw().ping_pong();
    assert!(!first.log_text().contains("[ERR]"), "{}", first.log_text());
}

/// An active server ignores empty, garbage and undecodable heartbeats on the FT subject; a
/// heartbeat from a server that says it became active earlier makes it exit with the
/// reference's message.
#[test]
fn a_second_active_with_an_earlier_activation_makes_this_one_abort() {
    let store = TempDir::new("ft-two");
    let mut nodes = ft_cluster(1, &store, "ft-two");
    the_active(&nodes, TAKE_OVER_BOUND);
    let mut raw = nodes[0].server().raw();
    raw.send(b"CONNECT {\"verbose\":false}\r\n");
    let subject = "_STAN.ft.ft-two.grp";
    for payload in [
        Vec::new(),
        b"garbage".to_vec(),
        // A heartbeat whose time cannot be decoded.
        vec![0x08, 0x03, 0x12, 0x01, b'x', 0x1a, 0x01, 0x07],
    ] {
        raw.send(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
        raw.send(&payload);
        raw.send(b"\r\n");
    }
    raw.ping_pong();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ft_active(nodes[0].monitor), Some(true));
    let earlier = std::time::UNIX_EPOCH + Duration::from_secs(946_684_800); // 2000-01-01
    let heartbeat = stanza::stan::ft_heartbeat::encode("other-server", earlier);
    raw.send(format!("PUB {subject} {}\r\n", heartbeat.len()).as_bytes());
    raw.send(&heartbeat);
    raw.send(b"\r\n");
    let server = nodes[0].server.as_mut().expect("running");
    assert_eq!(server.wait_exit(Duration::from_secs(5)), Some(1));
    let log = server.log_text();
    assert!(
        log.contains("ft: serverID \"other-server\" claims to be active, aborting"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// FT with `-ns`: two servers on one Debian nats-server and one directory; the standby takes
/// over after kill -9 of the active, and a stan.go client on that nats-server goes on.
#[test]
fn ft_with_an_external_nats_server() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let Some((nats, port)) = common::plain_nats_server() else {
        return;
    };
    let store = TempDir::new("ft-ns");
    let url = format!("nats://127.0.0.1:{port}");
    let start = |monitor: u16| {
        Server::start_external(&[
            "-ns",
            &url,
            "-cid",
            "ft-ns",
            "--ft_group",
            "grp",
            "-st",
            "file",
            "--dir",
            store.0.to_str().expect("utf-8 path"),
            "--cores",
            "2",
            "-m",
            &monitor.to_string(),
        ])
    };
    let mut nodes: Vec<Node> = (0..2)
        .map(|_| {
            let monitor = common::free_port();
            Node {
                server: Some(start(monitor)),
                client: 0,
                monitor,
                config: String::new(),
            }
        })
        .collect();
    let stop = store.0.join("stop-publishing");
    let client = Command::new(&bin)
        .args(["ft_failover_load", &url, "ft-ns"])
        .env("STANZA_STOP_FILE", &stop)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("stan.go case");
    let (active, _) = the_active(&nodes, TAKE_OVER_BOUND);
    std::thread::sleep(Duration::from_millis(1500));
    nodes[active].kill();
    let (next, took) = the_active(&nodes, TAKE_OVER_BOUND);
    assert_ne!(next, active);
    eprintln!("take-over with -ns: {took:?}");
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(&stop, b"").expect("stop file");
    let out = common::finish_bounded(client, Duration::from_secs(60));
    drop(nats);
    assert!(
        out.status.success(),
        "stan.go case failed:\n{}\n{}\nlog of the new active:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        nodes[next].server().log_text()
    );
}

/// The reference's heartbeats (Go nats-streaming-server v0.25.6 in FT mode) decode as stanza
/// reads them: its server ID and an activation time of a moment ago. They also seed the
/// ft_heartbeat fuzz target.
#[test]
fn the_reference_servers_heartbeats_decode() {
    if !common::available(
        "the Go nats-streaming-server",
        "nats-streaming-server",
        &["--version"],
    ) {
        return;
    }
    let port = common::free_port();
    let dir = TempDir::new("go-ft");
    let go = common::spawn_listening(
        Command::new("nats-streaming-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-cid", "ref-ft", "--ft_group", "g", "-st", "FILE", "--dir"])
            .arg(dir.0.join("store")),
        port,
    );
    let mut raw = common::RawClient::connect(port);
    raw.send(b"CONNECT {\"verbose\":false}\r\nSUB _STAN.ft.ref-ft.g 1\r\n");
    raw.ping_pong();
    let (line, payload) = raw.msg();
    drop(go);
    assert!(line.starts_with("MSG _STAN.ft.ref-ft.g 1"), "{line}");
    let hb = stanza::stan::ft_heartbeat::decode(&payload).expect("a heartbeat");
    assert!(!hb.server_id.is_empty());
    let activated = hb.activated.expect("an activation time");
    let age = std::time::SystemTime::now()
        .duration_since(activated)
        .expect("activated in the past");
    assert!(age < Duration::from_secs(60), "activated {age:?} ago");
    let seeds = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-seeds/ft_heartbeat");
    std::fs::create_dir_all(&seeds).expect("seed dir");
    std::fs::write(seeds.join("go-reference"), &payload).expect("seed");
    let ours = stanza::stan::ft_heartbeat::encode("stanza-server", activated);
    std::fs::write(seeds.join("stanza"), &ours).expect("seed");
}

/// node-nats-streaming through a standby's port: its smoke case (publish, subscribe, durable,
/// queue), then messages published through the standby are all there, through the same port,
/// after kill -9 of the active.
#[test]
fn node_clients_through_a_standby() {
    let modules = common::repo_path("tests/clients/node/node_modules");
    if !modules.join("node-nats-streaming").exists() {
        common::skip("npm package node-nats-streaming is not installed (run .ci/run)");
        return;
    }
    if !common::available("node", "node", &["--version"]) {
        return;
    }
    let store = TempDir::new("ft-node");
    // node-nats-streaming's smoke case uses the default cluster ID.
    let mut nodes = ft_cluster(2, &store, "test-cluster");
    let (active, _) = the_active(&nodes, TAKE_OVER_BOUND);
    let standby = 1 - active;
    let url = format!("nats://127.0.0.1:{}", nodes[standby].client);
    let node = |args: &[&str]| {
        let mut cmd = Command::new("node");
        cmd.arg(common::repo_path("tests/clients/node/stan_smoke.mjs"))
            .args(args);
        common::run_client(cmd, Duration::from_secs(60));
    };
    node(&["smoke", &url]);
    node(&["publish", &url, "ft.node", "50"]);
    nodes[active].kill();
    let (next, _) = the_active(&nodes, TAKE_OVER_BOUND);
    assert_eq!(next, standby);
    node(&["consume", &url, "ft.node", "50"]);
}

/// A standby stops promptly on SIGTERM (exit 0) and the active is not disturbed.
#[test]
fn a_standby_stops_promptly() {
    let store = TempDir::new("ft-stop");
    let mut nodes = ft_cluster(2, &store, "ft-stop");
    let (active, _) = the_active(&nodes, TAKE_OVER_BOUND);
    let standby = 1 - active;
    let started = Instant::now();
    let code = nodes[standby]
        .server
        .as_mut()
        .expect("running")
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    nodes[standby].server = None;
    let (still, _) = the_active(&nodes, TAKE_OVER_BOUND);
    assert_eq!(still, active);
    assert_eq!(state(nodes[active].monitor), "FT_ACTIVE");
}
