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
        let path = dir.0.join("p.conf");
        std::fs::write(
            &path,
            format!(
                "streaming {{\n  cluster_id: test-cluster\n{}}}\n",
                channels_block(channels)
            ),
        )
        .expect("config");
        let server = Server::start_external(&[
            "-ns",
            &url,
            "--cores",
            "2",
            "-c",
            path.to_str().expect("utf-8 path"),
        ]);
        (server, dir)
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
