//! Raft clustering (issue 18) with real processes on loopback: three nodes in the clustering
//! post's shape (`node_id`, `peers`, routes listing every node), on different core counts,
//! elect one leader for the metadata group and every partition group and put them all on one
//! node; after a kill -9 of that node the others elect a new one, within a bound, and all
//! groups follow it; the killed node restarts from its log (its stored name winning over a
//! changed configuration) and catches up. Nodes on an external nats-server (`-ns`) take part
//! the same way. And the reference's start-up refusals, with its texts.

mod common;

use common::{Server, TempDir};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Far above what the nodes need (elections after 0.5-1 s of silence); a miss is a failure
/// to converge, not slowness.
const CONVERGE: Duration = Duration::from_secs(20);

struct Node {
    name: String,
    server: Option<Server>,
    client: u16,
    monitor: u16,
    cores: usize,
    config: String,
    /// Where the store and the raft log live: kept across restarts.
    dir: TempDir,
}

impl Node {
    fn start(&mut self) {
        let m = self.monitor.to_string();
        let cores = self.cores.to_string();
        self.server = Some(Server::start_on(
            self.client,
            Some(&self.config),
            &["--cores", &cores, "-m", &m],
        ));
    }

    fn kill(&mut self) {
        if let Some(s) = self.server.as_ref() {
            s.signal(libc::SIGKILL);
        }
        if let Some(mut s) = self.server.take() {
            let _ = s.wait_exit(Duration::from_secs(5));
        }
    }

    fn clusterz(&self) -> Option<Value> {
        self.server.as_ref()?;
        let body = common::http_get(
            &format!("127.0.0.1:{}", self.monitor),
            "/streaming/clusterz",
        );
        serde_json::from_str(&body).ok()
    }

    fn serverz(&self) -> Value {
        let body = common::http_get(&format!("127.0.0.1:{}", self.monitor), "/streaming/serverz");
        serde_json::from_str(&body).unwrap_or_default()
    }
}

fn cluster_config(name: &str, peers: &[&str], route: u16, routes: &[u16], dir: &TempDir) -> String {
    cluster_config_for("raft-test", name, peers, route, routes, dir)
}

fn cluster_config_for(
    cluster_id: &str,
    name: &str,
    peers: &[&str],
    route: u16,
    routes: &[u16],
    dir: &TempDir,
) -> String {
    let list: Vec<String> = routes
        .iter()
        .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
        .collect();
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "cluster {{\n  name: raft-test\n  listen: \"127.0.0.1:{route}\"\n  routes: [{}]\n  connect_retries: 30\n}}\nstreaming {{\n  cluster_id: {cluster_id}\n  store: file\n  dir: \"{d}/store\"\n  cluster {{\n    node_id: \"{name}\"\n    peers: [{}]\n    log_path: \"{d}/raft\"\n  }}\n}}\n",
        list.join(", "),
        peers.join(", "),
        d = dir.0.display()
    )
}

/// Three nodes a, b, c (on 2, 1 and 2 cores), routes to every node, themselves included.
fn three_nodes() -> Vec<Node> {
    three_nodes_for("raft-test")
}

/// `three_nodes`, started, with an agreed leader; and their client URLs.
fn three_running_nodes() -> (Vec<Node>, Vec<String>) {
    let mut nodes = three_nodes();
    for n in &mut nodes {
        n.start();
    }
    serving_leader(&nodes);
    let urls = nodes
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.client))
        .collect();
    (nodes, urls)
}

fn three_nodes_for(cluster_id: &str) -> Vec<Node> {
    let routes: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    ["a", "b", "c"]
        .iter()
        .zip([2, 1, 2])
        .zip(&routes)
        .map(|((name, cores), route)| {
            let dir = TempDir::new(&format!("raft-{name}"));
            Node {
                name: name.to_string(),
                server: None,
                client: common::free_port(),
                monitor: common::free_port(),
                cores,
                config: cluster_config_for(
                    cluster_id,
                    name,
                    &["a", "b", "c"],
                    *route,
                    &routes,
                    &dir,
                ),
                dir,
            }
        })
        .collect()
}

/// Per running node: group -> (leader name, term, commit index).
type View = BTreeMap<String, BTreeMap<u64, (String, u64, u64)>>;

fn view(nodes: &[Node]) -> View {
    let mut out = View::new();
    for n in nodes {
        let Some(z) = n.clusterz() else { continue };
        let groups = z["groups"].as_array().cloned().unwrap_or_default();
        let per: BTreeMap<u64, (String, u64, u64)> = groups
            .iter()
            .map(|g| {
                (
                    g["group"].as_u64().unwrap_or(u64::MAX),
                    (
                        g["leader"].as_str().unwrap_or("").to_string(),
                        g["term"].as_u64().unwrap_or(0),
                        g["commit_index"].as_u64().unwrap_or(0),
                    ),
                )
            })
            .collect();
        out.insert(n.name.clone(), per);
    }
    out
}

/// The node every running node names as the leader of all 17 groups, once they agree.
fn agreed_leader(nodes: &[Node]) -> Option<String> {
    agreed_leader_among(nodes, &[])
}

/// `agreed_leader` of the running nodes but those named in `apart`.
fn agreed_leader_among(nodes: &[Node], apart: &[&str]) -> Option<String> {
    let mut v = view(nodes);
    v.retain(|name, _| !apart.contains(&name.as_str()));
    let running = nodes
        .iter()
        .filter(|n| n.server.is_some() && !apart.contains(&n.name.as_str()))
        .count();
    if v.len() != running {
        return None;
    }
    let mut leader = None;
    for groups in v.values() {
        if groups.len() != 17 {
            return None;
        }
        for (name, _, _) in groups.values() {
            if name.is_empty() || leader.get_or_insert(name.clone()) != name {
                return None;
            }
        }
    }
    leader
}

fn wait_agreed_leader(nodes: &[Node], not: Option<&str>) -> (String, Duration) {
    let start = Instant::now();
    loop {
        if let Some(l) = agreed_leader(nodes) {
            if Some(l.as_str()) != not {
                return (l, start.elapsed());
            }
        }
        assert!(
            start.elapsed() < CONVERGE,
            "no agreed leader after {CONVERGE:?}: {:#?}",
            view(nodes)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Exactly one node says `role: Leader` in serverz, and it is `leader`.
fn check_roles(nodes: &[Node], leader: &str) {
    for n in nodes.iter().filter(|n| n.server.is_some()) {
        let z = n.serverz();
        assert_eq!(z["state"], "CLUSTERED", "{z}");
        assert_eq!(z["node_id"], n.name.as_str(), "{z}");
        let want = if n.name == leader {
            "Leader"
        } else {
            "Follower"
        };
        assert_eq!(z["role"], want, "node {}: {z}", n.name);
    }
}

#[test]
fn three_nodes_put_every_group_on_one_leader_and_fail_over_after_kill_nine() {
    let mut nodes = three_nodes();
    for n in &mut nodes {
        n.start();
    }
    let (first, took) = wait_agreed_leader(&nodes, None);
    eprintln!("first leader {first} of all 17 groups after {took:?}");
    check_roles(&nodes, &first);
    let storez = common::http_get(
        &format!("127.0.0.1:{}", nodes[0].monitor),
        "/streaming/storez",
    );
    assert!(storez.contains("\"RAFT_FILE\""), "{storez}");
    // A follower's clusterz names the leader; the leader's lists how far each member is.
    let leader_at = nodes.iter().position(|n| n.name == first).expect("a node");
    let z = nodes[leader_at].clusterz().expect("clusterz");
    let meta = &z["groups"][0];
    assert_eq!(meta["kind"], "metadata");
    assert_eq!(meta["role"], "Leader");
    assert_eq!(meta["peers"].as_array().map(Vec::len), Some(3), "{z}");

    let mut leader = first;
    for round in 0..3 {
        let at = nodes
            .iter()
            .position(|n| n.name == leader)
            .expect("the leader is a node");
        nodes[at].kill();
        let (next, took) = wait_agreed_leader(&nodes, Some(&leader));
        eprintln!("round {round}: {leader} killed; {next} leads all groups after {took:?}");
        assert_ne!(next, leader);
        check_roles(&nodes, &next);
        // The old leader restarts from its log as a follower and catches up.
        nodes[at].start();
        let (again, _) = wait_agreed_leader(&nodes, None);
        assert_eq!(
            again, next,
            "a restarted node does not take leadership back"
        );
        let deadline = Instant::now() + CONVERGE;
        loop {
            let v = view(&nodes);
            let metas: Vec<(u64, u64)> = v
                .values()
                .filter_map(|g| g.get(&0).map(|(_, t, c)| (*t, *c)))
                .collect();
            if metas.len() == 3 && metas.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
            assert!(Instant::now() < deadline, "no catch-up: {v:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        check_roles(&nodes, &next);
        leader = next;
    }
    // Restarted with another name configured: the stored one wins.
    let at = nodes
        .iter()
        .position(|n| n.name != leader)
        .expect("a follower");
    nodes[at].kill();
    nodes[at].config = nodes[at].config.replace(
        &format!("node_id: \"{}\"", nodes[at].name),
        "node_id: \"renamed\"",
    );
    nodes[at].start();
    let log = nodes[at].server.as_ref().expect("running").log_text();
    assert!(log.contains("using the stored one"), "{log}");
    assert_eq!(nodes[at].serverz()["node_id"], nodes[at].name.as_str());
    wait_agreed_leader(&nodes, None);
}

/// stan.go clients on the three nodes' URLs publish asynchronously (PubAck waited for) and
/// receive on a durable and a queue group while the serving leader is killed with SIGKILL
/// again and again (each time restarted from its store and log): every acknowledged message
/// is in the channel exactly once and in publish order, and reached both subscriptions.
/// 20 kills by default (the CI count); longer: `STANZA_RAFT_KILLS=50 cargo test --release --test raft_cluster kill_nine`.
#[test]
fn kill_nine_of_the_leader_under_load() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let (mut nodes, urls) = three_running_nodes();
    let stop = nodes[0].dir.0.join("stop-publishing");
    let kills: u32 = std::env::var("STANZA_RAFT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let case_timeout = Duration::from_secs(60 + 4 * u64::from(kills));
    let client =
        common::start_failover_load(&bin, &urls.join(","), "raft-test", &stop, case_timeout);
    std::thread::sleep(Duration::from_millis(1500));
    let mut fail_overs = Vec::new();
    for _ in 0..kills {
        let (leader, _) = wait_agreed_leader(&nodes, None);
        let at = nodes.iter().position(|n| n.name == leader).expect("a node");
        nodes[at].kill();
        let (_, took) = wait_agreed_leader(&nodes, Some(&leader));
        fail_overs.push(took);
        nodes[at].start();
        std::thread::sleep(Duration::from_millis(1000));
    }
    std::fs::write(&stop, b"").expect("stop file");
    eprintln!("fail-overs (kill -9 to every group led by one other node): {fail_overs:?}");
    let stdout = common::expect_case_success(client, case_timeout, &logs_of(&nodes));
    eprintln!("{stdout}");
    // Every node, the restarted ones included, caught up: the same messages in its store.
    let held = wait_same_channel_everywhere(&nodes, "ftload");
    eprintln!("every node holds ftload (first, last, msgs) = {held:?}");
}

/// The logs of the running nodes (shown when a client case fails).
fn logs_of(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|n| n.server.as_ref().map(|s| s.log_text()))
        .collect()
}

/// Waits (bounded) until every node reports the same non-empty (first, last, msgs) for
/// `channel`, and returns it.
fn wait_same_channel_everywhere(nodes: &[Node], channel: &str) -> (u64, u64, u64) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let views: Vec<(u64, u64, u64)> = nodes.iter().map(|n| channel_range(n, channel)).collect();
        if views[0].1 > 0 && views.windows(2).all(|w| w[0] == w[1]) {
            return views[0];
        }
        assert!(Instant::now() < deadline, "stores differ: {views:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (first_seq, last_seq, msgs) of `channel` in a node's `/streaming/channelsz`.
fn channel_range(n: &Node, channel: &str) -> (u64, u64, u64) {
    let body = common::http_get(
        &format!("127.0.0.1:{}", n.monitor),
        &format!("/streaming/channelsz?channel={channel}"),
    );
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    (
        v["first_seq"].as_u64().unwrap_or(0),
        v["last_seq"].as_u64().unwrap_or(0),
        v["msgs"].as_u64().unwrap_or(0),
    )
}

/// node-nats-streaming through the followers: its smoke case (connect, publish, subscribe,
/// durable, queue) on one, 50 messages published on another, the leader killed, and the 50
/// read back through the third node.
#[test]
fn node_nats_streaming_through_every_node_across_a_fail_over() {
    if !common::available("node", "node", &["--version"]) {
        return;
    }
    // node-nats-streaming's cases use the default cluster ID.
    let mut nodes = three_nodes_for("test-cluster");
    for n in &mut nodes {
        n.start();
    }
    let leader = serving_leader(&nodes);
    let followers: Vec<usize> = (0..3).filter(|i| nodes[*i].name != leader).collect();
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.client))
        .collect();
    let url = |i: usize| urls[i].clone();
    let node = |args: &[&str]| {
        let mut cmd = std::process::Command::new("node");
        cmd.arg(common::repo_path("tests/clients/node/stan_smoke.mjs"))
            .args(args);
        common::run_client(cmd, Duration::from_secs(60));
    };
    node(&["smoke", &url(followers[0])]);
    node(&["publish", &url(followers[1]), "raft.node", "50"]);
    let at = nodes.iter().position(|n| n.name == leader).expect("a node");
    nodes[at].kill();
    wait_agreed_leader(&nodes, Some(&leader));
    node(&["consume", &url(followers[0]), "raft.node", "50"]);
}

/// A node down while the others' logs were compacted past it (`trailing_logs: 10`) catches
/// up from snapshots when it comes back: the channels it lacks, their messages fetched from
/// the leader, and their subscriptions, and the client registry; every node then holds the
/// same messages.
#[test]
fn a_node_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let mut nodes = three_nodes();
    for n in &mut nodes {
        n.config = n
            .config
            .replace("    log_path:", "    trailing_logs: 10\n    log_path:");
        n.start();
    }
    let leader = serving_leader(&nodes);
    let behind = nodes
        .iter()
        .position(|n| n.name != leader)
        .expect("a follower");
    let url = format!("nats://127.0.0.1:{}", nodes[(behind + 1) % 3].client);
    let publish = |channel: &str, count: &str, durable: &str| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["publish_sync", &url, "raft-test"])
            .env("STANZA_CHANNEL", channel)
            .env("STANZA_COUNT", count)
            .env("STANZA_DURABLE", durable);
        common::run_client(cmd, Duration::from_secs(60));
    };
    publish("early", "50", "");
    nodes[behind].kill();
    // Each synchronous publish is an entry of its own: far more than the 80 a leader keeps
    // for a member behind; so are 100 clients' registrations and removals.
    publish("early", "400", "");
    publish("later", "300", "dur");
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["connect_many", &url, "raft-test"])
        .env("STANZA_COUNT", "100");
    common::run_client(cmd, Duration::from_secs(60));
    nodes[behind].start();
    wait_same_channel_everywhere(&nodes, "early");
    let later = wait_same_channel_everywhere(&nodes, "later");
    assert_eq!(later, (1, 300, 300));
    let deadline = Instant::now() + CONVERGE;
    loop {
        let log = nodes[behind].server.as_ref().expect("running").log_text();
        let partition = log.contains("caught up from a snapshot of node");
        let metadata = log.contains("metadata group: caught up from a snapshot");
        if partition && metadata {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Conformance 65 and 63: a durable created for new messages only, with two messages
/// delivered and acked, resumes after every node was killed and restarted at the next
/// message, neither skipping nor repeating; then with two nodes of three killed no publish
/// succeeds.
#[test]
fn a_durable_survives_a_full_restart_and_no_quorum_acknowledges_nothing() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let (mut nodes, urls) = three_running_nodes();
    let mut child = std::process::Command::new(&bin)
        .args([
            "cluster_restart_and_no_quorum",
            &urls.join(","),
            "raft-test",
        ])
        .env("STANZA_CASE_TIMEOUT", "120")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("stan.go case");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let expect_ready = |lines: &mut std::io::BufReader<std::process::ChildStdout>| {
        use std::io::BufRead;
        let mut line = String::new();
        let _ = lines.read_line(&mut line);
        assert_eq!(line.trim(), "ready", "the case said {line:?}");
    };
    expect_ready(&mut lines);
    for n in &mut nodes {
        n.kill();
    }
    for n in &mut nodes {
        n.start();
    }
    wait_agreed_leader(&nodes, None);
    writeln!(stdin, "restarted").expect("tell the case");
    expect_ready(&mut lines);
    let (leader, _) = wait_agreed_leader(&nodes, None);
    // Two of three gone, the leader among them when it is not the last.
    let mut killed = 0;
    for n in nodes.iter_mut().filter(|n| n.name == leader) {
        n.kill();
        killed += 1;
    }
    for n in nodes.iter_mut() {
        if killed < 2 && n.server.is_some() {
            n.kill();
            killed += 1;
        }
    }
    writeln!(stdin, "two gone").expect("tell the case");
    drop(stdin);
    let mut rest = String::new();
    let _ = lines.read_to_string(&mut rest);
    common::expect_case_success(child, Duration::from_secs(60), &logs_of(&nodes));
    assert!(rest.contains("done"), "{rest}");
}

/// Three nodes a, b, c on 2 cores each, started with `-ns`, node i on `url(i)`.
fn ns_nodes(cluster_id: &str, url: impl Fn(usize) -> String) -> Vec<Node> {
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let dir = TempDir::new(&format!("{cluster_id}-{name}"));
            let config = format!(
                "streaming {{\n  cluster_id: {cluster_id}\n  nats_server_url: \"{}\"\n  store: file\n  dir: \"{d}/store\"\n  cluster {{\n    node_id: \"{name}\"\n    peers: [\"a\", \"b\", \"c\"]\n    log_path: \"{d}/raft\"\n  }}\n}}\n",
                url(i),
                d = dir.0.display()
            );
            Node {
                name: name.to_string(),
                server: None,
                client: 0,
                monitor: common::free_port(),
                cores: 2,
                config,
                dir,
            }
        })
        .collect();
    for n in &mut nodes {
        let path = n.dir.0.join("node.conf");
        std::fs::write(&path, &n.config).expect("config");
        let m = n.monitor.to_string();
        n.server = Some(Server::start_external(&[
            "-c",
            path.to_str().expect("utf-8"),
            "--cores",
            "2",
            "-m",
            &m,
        ]));
    }
    nodes
}

/// Three nodes on one external nats-server (`-ns`): their raft traffic goes through it.
#[test]
fn nodes_on_an_external_nats_server_elect_and_fail_over() {
    let Some((_nats, port)) = common::plain_nats_server() else {
        return;
    };
    let url = format!("nats://127.0.0.1:{port}");
    let mut nodes = ns_nodes("raft-ns", |_| url.clone());
    let (first, _) = wait_agreed_leader(&nodes, None);
    check_roles(&nodes, &first);
    let at = nodes.iter().position(|n| n.name == first).expect("a node");
    nodes[at].kill();
    let (next, took) = wait_agreed_leader(&nodes, Some(&first));
    eprintln!("-ns: {first} killed; {next} leads all groups after {took:?}");
    check_roles(&nodes, &next);
}

/// A TCP proxy on loopback to `upstream` that the test can cut (every connection through it
/// closed, new ones refused) and heal. Its threads end when it is dropped.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn new(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, s, o) = (cut.clone(), stop.clone(), open.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if c.load(Ordering::Acquire) {
                    continue; // dropped: refused while cut
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
                let mut list = o.lock().unwrap_or_else(|p| p.into_inner());
                list.push(client);
                list.push(server);
            }
        });
        Proxy {
            port,
            cut,
            stop,
            open,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        let mut list = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for s in list.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut();
    }
}

/// Three nodes on one nats-server (`-ns`), each through a proxy of its own, so that cutting
/// its proxy cuts the node off from everyone. stan.go publishes and subscribes on the
/// nats-server while the serving leader is cut off twice: it stops serving within a few
/// election timeouts, the other two elect a leader and serve, and after healing the cut
/// node follows and catches up; every acknowledged message is in the channel once, in order,
/// and on every node.
#[test]
fn a_leader_cut_off_stops_serving_and_the_majority_goes_on() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let Some((_nats, port)) = common::plain_nats_server() else {
        return;
    };
    let proxies: Vec<Proxy> = (0..3).map(|_| Proxy::new(port)).collect();
    let nodes = ns_nodes("raft-cut", |i| {
        format!("nats://127.0.0.1:{}", proxies[i].port)
    });
    wait_agreed_leader(&nodes, None);
    let stop = nodes[0].dir.0.join("stop-publishing");
    let case_timeout = Duration::from_secs(90);
    let url = format!("nats://127.0.0.1:{port}");
    let client = common::start_failover_load(&bin, &url, "raft-cut", &stop, case_timeout);
    std::thread::sleep(Duration::from_millis(1500));
    for round in 0..2 {
        let (leader, _) = wait_agreed_leader(&nodes, None);
        let at = nodes.iter().position(|n| n.name == leader).expect("a node");
        proxies[at].cut();
        let start = Instant::now();
        let (next, took) = loop {
            if let Some(l) = agreed_leader_among(&nodes, &[&leader]) {
                if l != leader {
                    break (l, start.elapsed());
                }
            }
            assert!(start.elapsed() < CONVERGE, "the majority elected no leader");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The cut-off node stopped leading: no PubAck can come from it.
        let deadline = Instant::now() + CONVERGE;
        while nodes[at].serverz()["role"] == "Leader" {
            assert!(Instant::now() < deadline, "the cut-off leader still leads");
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("round {round}: {leader} cut off; {next} leads the others after {took:?}");
        std::thread::sleep(Duration::from_millis(1500));
        proxies[at].heal();
        let (again, _) = wait_agreed_leader(&nodes, None);
        assert_eq!(again, next, "the healed node follows");
        std::thread::sleep(Duration::from_millis(700));
    }
    std::fs::write(&stop, b"").expect("stop file");
    let stdout = common::expect_case_success(client, case_timeout, &logs_of(&nodes));
    eprintln!("{stdout}");
    wait_same_channel_everywhere(&nodes, "ftload");
}

fn refused_with(config: &str) -> String {
    common::refused_config(config)
}

#[test]
fn the_references_start_up_refusals() {
    let dir = TempDir::new("raft-refusals");
    let d = dir.0.display();
    let clustered = |extra: &str| {
        format!(
            "streaming {{\n  cluster_id: refusals\n  store: file\n  dir: \"{d}/store\"\n  cluster {{\n    node_id: a\n    log_path: \"{d}/raft\"\n    {extra}\n  }}\n}}\n"
        )
    };
    // A store written by a standalone server.
    let standalone =
        format!("streaming {{\n  cluster_id: refusals\n  store: file\n  dir: \"{d}/store\"\n}}\n");
    drop(Server::start_with_config(Some(&standalone), &[]));
    let err = refused_with(&clustered("peers: [a, b]"));
    assert!(
        err.contains(
            "stan: cannot restart server in clustered mode if it was not previously clustered"
        ),
        "{err}"
    );
    // A clustered store whose raft log was removed (the Docker pitfall).
    std::fs::remove_dir_all(dir.0.join("store")).expect("clean");
    let first = Server::start_with_config(Some(&clustered("peers: [a, b]")), &[]);
    drop(first);
    std::fs::remove_dir_all(dir.0.join("raft")).expect("remove the log");
    let err = refused_with(&clustered("peers: [a, b]"));
    assert!(
        err.contains(&format!(
            "streaming state was recovered but cluster log path \"{d}/raft\" is empty"
        )),
        "{err}"
    );
    // Nothing to bootstrap with and nobody to join (the reference's TestClusteringNoSeed).
    std::fs::remove_dir_all(dir.0.join("store")).expect("clean");
    let err = refused_with(&clustered(""));
    assert!(err.contains("failed to join Raft group refusals"), "{err}");
    // The MEMORY store.
    let err = refused_with(
        "streaming {\n  cluster_id: refusals\n  store: memory\n  cluster { node_id: a, peers: [a, b] }\n}\n",
    );
    assert!(
        err.contains("stan: clustering mode not supported with MEMORY store type"),
        "{err}"
    );
}

/// Nodes created with different partition counts would put a channel's entries in different
/// groups: they end, naming each other's counts.
#[test]
fn nodes_with_different_partition_counts_refuse_each_other() {
    let routes: Vec<u16> = (0..2).map(|_| common::free_port()).collect();
    let mut servers = Vec::new();
    for (i, (name, partitions)) in [("p", 16), ("q", 8)].iter().enumerate() {
        let dir = TempDir::new(&format!("raft-parts-{name}"));
        let config = cluster_config(name, &["p", "q"], routes[i], &routes, &dir).replace(
            "    log_path:",
            &format!("    partitions: {partitions}\n    log_path:"),
        );
        servers.push((Server::start_with_config(Some(&config), &[]), dir));
    }
    for (server, _) in servers.iter_mut() {
        let code = server.wait_exit(Duration::from_secs(15));
        assert_eq!(code, Some(1), "{}", server.log_text());
        assert!(
            server.log_text().contains("partitions and this node"),
            "{}",
            server.log_text()
        );
    }
}

/// Two nodes both started with `bootstrap` would each make a cluster: the reference's guard
/// ends them, naming the other.
#[test]
fn two_bootstrapped_nodes_refuse_each_other() {
    let routes: Vec<u16> = (0..2).map(|_| common::free_port()).collect();
    let mut servers = Vec::new();
    for (i, name) in ["x", "y"].iter().enumerate() {
        let dir = TempDir::new(&format!("raft-boot-{name}"));
        let config = cluster_config(name, &[], routes[i], &routes, &dir)
            .replace("peers: []", "bootstrap: true");
        servers.push((Server::start_with_config(Some(&config), &[]), dir));
    }
    for ((server, _), other) in servers.iter_mut().zip(["y", "x"]) {
        let code = server.wait_exit(Duration::from_secs(15));
        assert_eq!(code, Some(1), "{}", server.log_text());
        assert!(
            server.log_text().contains(&format!(
                "Server \"{other}\" was also started with -cluster_bootstrap"
            )),
            "{}",
            server.log_text()
        );
    }
}

/// The agreed leader of freshly started nodes, once it serves clients (a client connecting
/// before that finds no one answering).
fn serving_leader(nodes: &[Node]) -> String {
    let (leader, _) = wait_agreed_leader(nodes, None);
    let at = nodes.iter().position(|n| n.name == leader).expect("a node");
    wait_serving(&nodes[at]);
    leader
}

/// Waits until `n` serves clients (it leads every group and opened its store).
fn wait_serving(n: &Node) {
    let server = n.server.as_ref().expect("running");
    assert!(
        server.wait_for_log("Streaming Server is ready", CONVERGE),
        "{}",
        server.log_text()
    );
}

/// Sends `payload` on `subject` through the node's client port and returns the answer.
fn request(n: &Node, subject: &str, payload: &str) -> String {
    let mut c = common::RawClient::connect(n.client);
    c.send(
        format!(
            "CONNECT {{\"verbose\":false}}\r\nSUB _INBOX.admin 1\r\nPUB {subject} _INBOX.admin {}\r\n{payload}\r\n",
            payload.len()
        )
        .as_bytes(),
    );
    let (_, answer) = c.msg();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Issue 18.6 and the reference's TestClusteringAddRemoveClusterNodes: a fourth node started
/// with no peers and no bootstrap joins the running cluster (a join request, then every
/// group's snapshot and the messages fetched from the leader); an operator's `node.remove`
/// of the leader itself answers `+OK`, the old leader exits 0 and refuses to start again on
/// its log, and the two remaining nodes with the joined one elect a leader that serves:
/// every message published before and after is on each of them. A follower removed by the
/// new leader stops as well.
#[test]
fn a_node_joins_and_the_leader_removes_itself() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let routes: Vec<u16> = (0..4).map(|_| common::free_port()).collect();
    let mut nodes: Vec<Node> = ["a", "b", "c", "d"]
        .iter()
        .zip(&routes)
        .map(|(name, route)| {
            let dir = TempDir::new(&format!("raft-join-{name}"));
            let peers: &[&str] = if *name == "d" { &[] } else { &["a", "b", "c"] };
            let config = cluster_config(name, peers, *route, &routes, &dir).replace(
                "    log_path:",
                "    allow_add_remove_node: true\n    log_path:",
            );
            Node {
                name: name.to_string(),
                server: None,
                client: common::free_port(),
                monitor: common::free_port(),
                cores: 1 + usize::from(*name == "d"),
                config,
                dir,
            }
        })
        .collect();
    for n in nodes.iter_mut().take(3) {
        n.start();
    }
    let leader = serving_leader(&nodes[..3]);
    let at = nodes.iter().position(|n| n.name == leader).expect("leader");
    let publish = |n: &Node, count: &str| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args([
            "publish_sync",
            &format!("nats://127.0.0.1:{}", n.client),
            "raft-test",
        ])
        .env("STANZA_CHANNEL", "joined")
        .env("STANZA_COUNT", count)
        .env("STANZA_DURABLE", "");
        common::run_client(cmd, Duration::from_secs(60));
    };
    publish(&nodes[(at + 1) % 3], "200");
    nodes[3].start();
    assert!(
        nodes[3]
            .server
            .as_ref()
            .expect("running")
            .wait_for_log("joined Raft group raft-test", CONVERGE),
        "{}",
        nodes[3].server.as_ref().expect("running").log_text()
    );
    assert_eq!(
        wait_same_channel_everywhere(&nodes, "joined"),
        (1, 200, 200)
    );
    wait_agreed_leader(&nodes, None);
    let z = nodes[at].clusterz().expect("clusterz");
    for g in z["groups"].as_array().expect("groups") {
        let mut voters: Vec<&str> = g["voters"]
            .as_array()
            .expect("voters")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        voters.sort_unstable();
        assert_eq!(voters, ["a", "b", "c", "d"], "{g}");
    }
    assert_eq!(
        request(&nodes[at], "_STAN.raft.raft-test.node.add", ""),
        "-ERR adding node \"\": invalid node ID"
    );
    assert_eq!(
        request(&nodes[at], "_STAN.raft.raft-test.node.remove", &leader),
        "+OK"
    );
    let server = nodes[at].server.as_mut().expect("running");
    assert_eq!(server.wait_exit(CONVERGE), Some(0), "{}", server.log_text());
    assert!(server.log_text().contains("removed from the cluster"));
    nodes[at].server = None;
    let (next, _) = wait_agreed_leader(&nodes, Some(&leader));
    eprintln!("after {leader} removed itself, {next} leads");
    let next_at = nodes.iter().position(|n| n.name == next).expect("leader");
    wait_serving(&nodes[next_at]);
    let rest: Vec<usize> = (0..4).filter(|i| *i != at).collect();
    publish(&nodes[rest[0]], "50");
    let left: Vec<&Node> = rest.iter().map(|i| &nodes[*i]).collect();
    for n in &left {
        let z = n.clusterz().expect("clusterz");
        for g in z["groups"].as_array().expect("groups") {
            assert_eq!(g["voters"].as_array().map(Vec::len), Some(3), "{g}");
        }
    }
    let deadline = Instant::now() + CONVERGE;
    while left
        .iter()
        .any(|n| channel_range(n, "joined") != (1, 250, 250))
    {
        assert!(Instant::now() < deadline, "not every node has the 250");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A follower removed by the new leader learns it and stops too.
    let follower = *rest.iter().find(|i| **i != next_at).expect("a follower");
    let name = nodes[follower].name.clone();
    assert_eq!(
        request(&nodes[next_at], "_STAN.raft.raft-test.node.remove", &name),
        "+OK"
    );
    let server = nodes[follower].server.as_mut().expect("running");
    assert_eq!(server.wait_exit(CONVERGE), Some(0), "{}", server.log_text());
    nodes[follower].server = None;
    let z = nodes[next_at].clusterz().expect("clusterz");
    for g in z["groups"].as_array().expect("groups") {
        assert_eq!(g["voters"].as_array().map(Vec::len), Some(2), "{g}");
    }
    let err = {
        let n = &nodes[at];
        let path = n.dir.0.join("removed.conf");
        std::fs::write(&path, &n.config).expect("config");
        let port = common::free_port().to_string();
        let cores = n.cores.to_string();
        common::fails_cleanly(&[
            "--cores",
            &cores,
            "-p",
            &port,
            "-c",
            path.to_str().expect("utf-8"),
        ])
    };
    assert!(
        err.contains("this node was removed from the cluster"),
        "{err}"
    );
}

/// A joining node whose partition count differs from the cluster's ends itself, naming the
/// cluster's count; the running node goes on.
#[test]
fn a_joining_node_with_another_partition_count_ends_alone() {
    let routes: Vec<u16> = (0..2).map(|_| common::free_port()).collect();
    let mut servers = Vec::new();
    for (i, (name, extra)) in [("p", "bootstrap: true"), ("q", "partitions: 8")]
        .iter()
        .enumerate()
    {
        let dir = TempDir::new(&format!("raft-join-parts-{name}"));
        let config = cluster_config(name, &[], routes[i], &routes, &dir)
            .replace("    log_path:", &format!("    {extra}\n    log_path:"));
        servers.push((Server::start_with_config(Some(&config), &[]), dir));
    }
    let (joiner, _) = &mut servers[1];
    assert_eq!(joiner.wait_exit(CONVERGE), Some(1), "{}", joiner.log_text());
    assert!(
        joiner.log_text().contains("set cluster.partitions to 16"),
        "{}",
        joiner.log_text()
    );
    let (running, _) = &mut servers[0];
    assert_eq!(
        running.wait_exit(Duration::from_secs(3)),
        None,
        "{}",
        running.log_text()
    );
    assert!(running
        .log_text()
        .contains("asks to join with 8 partitions"));
}
