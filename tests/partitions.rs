//! Partitioning (issue 16.5, conformance 67): streaming servers sharing one cluster ID, each
//! serving the channels its `store_limits.channels` lists, on a routed cluster and on one
//! external nats-server; a stan.go client reaches every channel through one node, requests for
//! a channel nobody lists get no answer, and a server whose list overlaps another's refuses to
//! start with the reference's message.

mod common;

use common::Server;
use std::process::Command;
use std::time::Duration;

fn channels_block(channels: &[&str]) -> String {
    let entries: Vec<String> = channels.iter().map(|c| format!("\"{c}\": {{}}")).collect();
    format!(
        "  partitioning: true\n  store_limits {{ channels {{ {} }} }}\n",
        entries.join(", ")
    )
}

/// A partitioned node with routes to `routes`.
fn partitioned_node(route: u16, routes: &[u16], channels: &[&str]) -> String {
    let list: Vec<String> = routes
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    format!(
        "cluster {{\n  name: part-test\n  listen: \"127.0.0.1:{route}\"\n  routes: [{}]\n}}\nstreaming {{\n  cluster_id: test-cluster\n{}}}\n",
        list.join(", "),
        channels_block(channels)
    )
}

/// A partitioned server on the external NATS server at `url` (`-ns`), its configuration
/// written in `dir`; the directory must outlive the server.
fn ns_node(url: &str, channels: &[&str], dir: &common::TempDir, name: &str) -> Server {
    let path = dir.0.join(name);
    std::fs::write(
        &path,
        format!(
            "streaming {{\n  cluster_id: test-cluster\n{}}}\n",
            channels_block(channels)
        ),
    )
    .expect("config");
    Server::start_external(&[
        "-ns",
        url,
        "--cores",
        "2",
        "-c",
        path.to_str().expect("utf-8 path"),
    ])
}

fn run_case(bin: &std::path::Path, url: &str) {
    let mut cmd = Command::new(bin);
    cmd.args(["partition_channels", url])
        .env("STANZA_CHANNELS", "orders.eu,orders.us.east,audit,users.x")
        .env("STANZA_UNOWNED", "nobody");
    common::run_client(cmd, Duration::from_secs(90));
}

/// Two routed stanza nodes own different channels (wildcards in the lists): a client on
/// either node is served on all of them, requests for an unlisted channel go unanswered, and
/// a third node whose list overlaps refuses to start, naming the channel and the server.
#[test]
fn routed_servers_share_a_cluster_id_by_channel() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let (ra, rb, rc) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let a = Server::start_with_config(
        Some(&partitioned_node(ra, &[], &["orders.>"])),
        &["--cores", "2"],
    );
    let b = Server::start_with_config(
        Some(&partitioned_node(rb, &[ra], &["audit", "users.*"])),
        &["--cores", "2"],
    );
    assert!(
        b.wait_for_log("Route connection created", Duration::from_secs(10)),
        "{}",
        b.log_text()
    );
    // Interest crosses the route asynchronously.
    std::thread::sleep(Duration::from_millis(300));
    run_case(&bin, &a.url());
    run_case(&bin, &b.url());
    let err = common::refused_config(&partitioned_node(rc, &[ra], &["orders.eu"]));
    assert!(
        err.contains("channel \"orders.eu\" causes conflict with channels on server"),
        "{err}"
    );
    // The servers already running go on.
    run_case(&bin, &a.url());
}

/// The same with `-ns`: two partitioned servers on one Debian nats-server.
#[test]
fn partitioned_servers_on_an_external_nats_server() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let Some((nats, port)) = common::plain_nats_server() else {
        return;
    };
    let url = format!("nats://127.0.0.1:{port}");
    let start = |channels: &[&str]| {
        let dir = common::TempDir::new("part-ns");
        (ns_node(&url, channels, &dir, "p.conf"), dir)
    };
    let _a = start(&["orders.>"]);
    // The second server's list and the first one's answer, as seeds of the partition_list
    // fuzz target.
    let mut watch = common::RawClient::connect(port);
    watch.send(b"CONNECT {\"verbose\":false}\r\nSUB _STAN.part.test-cluster 1\r\nSUB _STAN.reply.test-cluster.> 2\r\n");
    watch.ping_pong();
    let _b = start(&["audit", "users.*"]);
    let seeds = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-seeds/partition_list");
    std::fs::create_dir_all(&seeds).expect("seed dir");
    for name in ["list", "answer"] {
        let (_, payload) = watch.msg();
        std::fs::write(seeds.join(name), payload).expect("seed");
    }
    run_case(&bin, &url);
    drop(nats);
}

/// `-ns`, servers discovered later: two partitioned servers whose lists overlap start on two
/// separate Debian nats-servers (neither sees the other). When the nats-servers are routed
/// together (a route added to one of them by a configuration reload), each announces the
/// other's client URL to its clients, and the streaming servers check their lists again, as
/// the reference does 500 ms after NATS reports new servers: both stop with its
/// "Partitioning error".
#[test]
fn servers_discovered_through_the_external_nats_server_are_checked_again() {
    if !common::available("Debian's nats-server", "nats-server", &["--version"]) {
        return;
    }
    let dir = common::TempDir::new("part-discover");
    let (pa, ca, pb, cb) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let nats_conf = |port: u16, cluster: u16, routes: &[u16]| {
        let routes: Vec<String> = routes
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect();
        format!(
            "host: 127.0.0.1\nport: {port}\ncluster {{\n  name: discover\n  listen: \"127.0.0.1:{cluster}\"\n  routes: [{}]\n}}\n",
            routes.join(", ")
        )
    };
    let conf_a = dir.0.join("a.conf");
    let conf_b = dir.0.join("b.conf");
    std::fs::write(&conf_a, nats_conf(pa, ca, &[])).expect("config");
    std::fs::write(&conf_b, nats_conf(pb, cb, &[])).expect("config");
    let _nats_a = common::spawn_listening(
        Command::new("nats-server").args(["-c", conf_a.to_str().expect("utf-8")]),
        pa,
    );
    let nats_b = common::spawn_listening(
        Command::new("nats-server").args(["-c", conf_b.to_str().expect("utf-8")]),
        pb,
    );
    let start = |port: u16, channels: &[&str], name: &str| {
        ns_node(&format!("nats://127.0.0.1:{port}"), channels, &dir, name)
    };
    let mut s1 = start(pa, &["orders.>"], "s1.conf");
    let mut s2 = start(pb, &["orders.eu"], "s2.conf");
    // Apart, both serve.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s1.wait_exit(Duration::from_millis(10)).is_none(),
        "{}",
        s1.log_text()
    );
    assert!(
        s2.wait_exit(Duration::from_millis(10)).is_none(),
        "{}",
        s2.log_text()
    );
    // Route B to A by reloading B's configuration.
    std::fs::write(&conf_b, nats_conf(pb, cb, &[ca])).expect("config");
    let reloaded = Command::new("kill")
        .args(["-HUP", &nats_b.0.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(reloaded.success());
    // The first to check again finds the clash and stops; the other may find it too, or
    // check after the first is gone and find nobody to clash with (as with the reference).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut stopped = Vec::new();
    while stopped.is_empty() && std::time::Instant::now() < deadline {
        for (name, server) in [("s1", &mut s1), ("s2", &mut s2)] {
            if let Some(code) = server.wait_exit(Duration::from_millis(50)) {
                stopped.push((name, code, server.log_text()));
            }
        }
    }
    assert!(
        !stopped.is_empty(),
        "neither stopped:\n{}\n{}",
        s1.log_text(),
        s2.log_text()
    );
    for (name, code, log) in stopped {
        assert_eq!(code, 1, "{name}: {log}");
        assert!(log.contains("Partitioning error"), "{name}: {log}");
        assert!(
            log.contains("causes conflict with channels on server"),
            "{name}: {log}"
        );
    }
}
