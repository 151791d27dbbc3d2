//! NATS routes (issue 16, first step): stanza and Debian's nats-server 2.9 form one cluster,
//! each dialling the other; plain subscribers, wildcards, request/reply, headers and queue
//! groups with members on both servers work across the route; a STAN client connected to the
//! nats-server node is served by stanza's streaming server; the route comes back after the
//! peer is killed and restarted; a route to itself is dropped.

mod common;

use common::{RawClient, Server};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Debian nats-server, killed when dropped.
struct NatsServer {
    child: Child,
    client: u16,
    monitor: u16,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server(client: u16, route: u16, routes: &[String]) -> Option<NatsServer> {
    if !common::available("Debian's nats-server", "nats-server", &["--version"]) {
        return None;
    }
    let monitor = common::free_port();
    let mut cmd = Command::new("nats-server");
    cmd.args(["-a", "127.0.0.1", "-p", &client.to_string()])
        .args(["-m", &monitor.to_string()])
        .args(["--cluster_name", "routes-test"])
        .args(["--cluster", &format!("nats://127.0.0.1:{route}")]);
    if !routes.is_empty() {
        cmd.args(["--routes", &routes.join(",")]);
    }
    Some(launch(cmd, client, monitor))
}

/// Starts a nats-server command and waits until its client port answers.
fn launch(mut cmd: Command, client: u16, monitor: u16) -> NatsServer {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server");
    let server = NatsServer {
        child,
        client,
        monitor,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// Debian's nats-server (B) and a stanza node (A) that dials it, once their route is up;
/// `None` (with the skip reason printed) without nats-server. Also returns B's route port.
fn stanza_routed_to_nats_server() -> Option<(Server, NatsServer, u16)> {
    let (b_client, b_route, a_route) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let b = nats_server(b_client, b_route, &[])?;
    let a = stanza_with_route(a_route, &[format!("nats-route://127.0.0.1:{b_route}")], &[]);
    assert!(
        a.wait_for_log("Route connection created", Duration::from_secs(10)),
        "{}",
        a.log_text()
    );
    Some((a, b, b_route))
}

fn stanza_with_route(route: u16, routes: &[String], extra: &[&str]) -> Server {
    let list: Vec<String> = routes.iter().map(|r| format!("\"{r}\"")).collect();
    let config = format!(
        // A streaming block: without one, the top-level `cluster` would also be read as the
        // streaming server's (raft) cluster, as the reference reads it.
        "cluster {{\n  name: routes-test\n  listen: \"127.0.0.1:{route}\"\n  routes: [{}]\n}}\nstreaming {{ cluster_id: test-cluster }}\n",
        list.join(", ")
    );
    let mut args = vec!["--cores", "2"];
    args.extend_from_slice(extra);
    Server::start_with_config(Some(&config), &args)
}

fn connected(port: u16) -> RawClient {
    let mut c = RawClient::connect(port);
    c.send(b"CONNECT {\"verbose\":false,\"headers\":true,\"protocol\":1}\r\n");
    c.ping_pong();
    c
}

/// Publishes on `from` until `to` receives on `subject` (interest crosses the route
/// asynchronously), then returns that first message's control line.
fn until_received(from: &mut RawClient, to: &mut RawClient, subject: &str) -> String {
    let _ = to.stream.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        from.send(format!("PUB {subject} 5\r\nhello\r\n").as_bytes());
        let mut line = String::new();
        let mut buf = [0u8; 1];
        // Read one protocol line without blocking past the timeout.
        while let Ok(1) = to.stream.read(&mut buf) {
            line.push(buf[0] as char);
            if line.ends_with("\r\n") {
                break;
            }
        }
        if line.starts_with("MSG ") {
            let mut rest = [0u8; 7];
            let _ = to.stream.read_exact(&mut rest);
            let _ = to.stream.set_read_timeout(Some(Duration::from_secs(5)));
            return line.trim_end().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{subject}: nothing crossed the route"
        );
    }
}

fn count_until_quiet(c: &mut RawClient) -> usize {
    let _ = c.stream.set_read_timeout(Some(Duration::from_millis(700)));
    let mut n = 0;
    let mut buf = vec![0u8; 1 << 16];
    let mut text = Vec::new();
    while let Ok(k) = c.stream.read(&mut buf) {
        if k == 0 {
            break;
        }
        text.extend_from_slice(&buf[..k]);
    }
    let s = String::from_utf8_lossy(&text);
    n += s.matches("MSG jobs ").count();
    let _ = c.stream.set_read_timeout(Some(Duration::from_secs(5)));
    n
}

/// The full set of checks across a route between stanza (port `a`) and nats-server (`b`).
fn cross_checks(a: u16, b: u16) {
    // Plain and wildcard subscribers on each side.
    let mut on_b = connected(b);
    on_b.send(b"SUB foo.* 1\r\nSUB svc 2\r\n");
    on_b.ping_pong();
    let mut on_a = connected(a);
    on_a.send(b"SUB bar 1\r\nSUB _INBOX.a 9\r\n");
    on_a.ping_pong();
    let mut pub_a = connected(a);
    let mut pub_b = connected(b);
    let line = until_received(&mut pub_a, &mut on_b, "foo.x");
    assert!(line.starts_with("MSG foo.x 1 5"), "{line}");
    let line = until_received(&mut pub_b, &mut on_a, "bar");
    assert!(line.starts_with("MSG bar 1 5"), "{line}");

    // Request/reply: a request on A, the responder on B, the reply back on A.
    on_a.send(b"PUB svc _INBOX.a 4\r\nping\r\n");
    let (line, payload) = on_b.msg();
    assert_eq!(
        (line.as_str(), payload.as_slice()),
        ("MSG svc 2 _INBOX.a 4", &b"ping"[..])
    );
    on_b.send(b"PUB _INBOX.a 4\r\npong\r\n");
    let (line, payload) = on_a.msg();
    assert_eq!(
        (line.as_str(), payload.as_slice()),
        ("MSG _INBOX.a 9 4", &b"pong"[..])
    );

    // Headers cross as HMSG.
    pub_b.send(b"HPUB bar 18 23\r\nNATS/1.0\r\nX: 1\r\n\r\nhello\r\n");
    let (line, payload) = on_a.msg();
    assert!(line.starts_with("HMSG bar 1 18 23"), "{line}");
    assert!(payload.ends_with(b"hello"));

    // A queue group with a member on each server: every message exactly once.
    let mut worker_a = connected(a);
    worker_a.send(b"SUB jobs workers 1\r\n");
    worker_a.ping_pong();
    let mut worker_b = connected(b);
    worker_b.send(b"SUB jobs workers 1\r\n");
    worker_b.ping_pong();
    std::thread::sleep(Duration::from_millis(500));
    for publisher in [&mut pub_a, &mut pub_b] {
        for i in 0..100 {
            publisher.send(format!("PUB jobs 3\r\n{i:03}\r\n").as_bytes());
        }
        publisher.ping_pong();
    }
    let (na, nb) = (
        count_until_quiet(&mut worker_a),
        count_until_quiet(&mut worker_b),
    );
    assert_eq!(
        na + nb,
        200,
        "each job exactly once: {na} on stanza, {nb} on nats-server"
    );
    assert!(na > 0 && nb > 0, "both members served: {na} / {nb}");

    // Unsubscribe crosses too.
    on_b.send(b"UNSUB 1\r\n");
    on_b.ping_pong();
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn stanza_dials_nats_server() {
    let Some((a, b, _)) = stanza_routed_to_nats_server() else {
        return;
    };
    cross_checks(a.port, b.client);
    let routez = common::http_get(&format!("127.0.0.1:{}", b.monitor), "/routez");
    assert!(routez.contains("\"num_routes\": 1"), "{routez}");
}

#[test]
fn nats_server_dials_stanza() {
    let (b_client, b_route, a_route) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let a = stanza_with_route(a_route, &[], &[]);
    let Some(b) = nats_server(
        b_client,
        b_route,
        &[format!("nats-route://127.0.0.1:{a_route}")],
    ) else {
        return;
    };
    assert!(
        a.wait_for_log("Route connection created", Duration::from_secs(10)),
        "{}",
        a.log_text()
    );
    cross_checks(a.port, b.client);
}

/// The Kubernetes shape: every node lists every node, itself included. The route to itself is
/// dropped (and not dialled again); the one to the peer works.
#[test]
fn a_route_to_itself_is_dropped() {
    let (b_client, b_route, a_route) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let Some(b) = nats_server(b_client, b_route, &[]) else {
        return;
    };
    let a = stanza_with_route(
        a_route,
        &[
            format!("nats-route://127.0.0.1:{a_route}"),
            format!("nats-route://127.0.0.1:{b_route}"),
        ],
        &["-D"],
    );
    assert!(
        a.wait_for_log("Detected route to self", Duration::from_secs(10)),
        "{}",
        a.log_text()
    );
    assert!(a.wait_for_log("Route connection created", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(2500));
    let log = a.log_text();
    assert_eq!(log.matches("Detected route to self").count(), 1, "{log}");
    assert_eq!(log.matches("Route connection created").count(), 1, "{log}");
    let mut on_b = connected(b.client);
    on_b.send(b"SUB foo 1\r\n");
    on_b.ping_pong();
    let mut pub_a = connected(a.port);
    until_received(&mut pub_a, &mut on_b, "foo");
}

/// The peer is killed and started again on the same ports: stanza dials it again and the
/// interest of both sides is exchanged anew.
#[test]
fn the_route_comes_back_after_the_peer_restarts() {
    let Some((a, b, b_route)) = stanza_routed_to_nats_server() else {
        return;
    };
    let b_client = b.client;
    let mut on_a = connected(a.port);
    on_a.send(b"SUB after 1\r\n");
    on_a.ping_pong();
    drop(b);
    assert!(
        a.wait_for_log("Router connection closed", Duration::from_secs(10)),
        "{}",
        a.log_text()
    );
    let Some(b) = nats_server(b_client, b_route, &[]) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.log_text().matches("Route connection created").count() < 2 {
        assert!(Instant::now() < deadline, "{}", a.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut pub_b = connected(b.client);
    let line = until_received(&mut pub_b, &mut on_a, "after");
    assert!(line.starts_with("MSG after 1 5"), "{line}");
}

/// A STAN client connected to the nats-server node is served by stanza's streaming server
/// across the route: connect, publish, subscribe, deliveries and acks all cross it.
#[test]
fn a_stan_client_on_the_other_node_is_served_across_the_route() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    let Some((_a, b, _)) = stanza_routed_to_nats_server() else {
        return;
    };
    // The streaming subjects reach the peer with the route's first interest.
    std::thread::sleep(Duration::from_millis(500));
    let url = format!("nats://127.0.0.1:{}", b.client);
    for case in [
        "item10_publish_sequences",
        "item20_msg_fields",
        "item24_redelivery",
    ] {
        let mut cmd = Command::new(&bin);
        cmd.args([case, &url]);
        common::run_client(cmd, Duration::from_secs(90));
    }
}

/// What nats-server refuses in route authorization is refused with its text; routes with an
/// external NATS server (`-ns`) are refused naming the key.
#[test]
fn route_features_not_built_yet_are_refused() {
    let dir = common::TempDir::new("route-refusals");
    for (body, expected) in [
        (
            "cluster { listen: \"127.0.0.1:-1\" }\nstreaming { ns: \"nats://127.0.0.1:4222\" }\n",
            "'cluster'",
        ),
        (
            "cluster { listen: \"127.0.0.1:-1\", authorization { token: t } }\nstreaming {}\n",
            "Cluster authorization does not support tokens",
        ),
    ] {
        let path = dir.0.join("routes.conf");
        std::fs::write(&path, body).expect("write config");
        let err = common::fails_cleanly(&["-c", path.to_str().expect("utf-8")]);
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

/// Route credentials: stanza accepts a route presenting its cluster user and password and
/// refuses one with the wrong password (nats-server's error; the server keeps serving), and
/// presents the credentials of a route URL to a nats-server that requires them.
#[test]
fn route_credentials() {
    let (b_client, b_route, a_route) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let config = format!(
        "cluster {{\n  name: routes-test\n  listen: \"127.0.0.1:{a_route}\"\n  authorization {{ user: ru, password: rp }}\n}}\nstreaming {{}}\n"
    );
    let a = Server::start_with_config(Some(&config), &["--cores", "2"]);
    {
        let Some(b) = nats_server(
            b_client,
            b_route,
            &[format!("nats-route://ru:wrong@127.0.0.1:{a_route}")],
        ) else {
            return;
        };
        assert!(
            a.wait_for_log("authentication error", Duration::from_secs(10)),
            "{}",
            a.log_text()
        );
        assert_eq!(num_routes(b.monitor), 0);
        connected(a.port).ping_pong();
    }
    let b_client = common::free_port();
    let b_route = common::free_port();
    let Some(b) = nats_server(
        b_client,
        b_route,
        &[format!("nats-route://ru:rp@127.0.0.1:{a_route}")],
    ) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.log_text().matches("Route connection created").count() < 1 {
        assert!(Instant::now() < deadline, "{}", a.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut on_b = connected(b.client);
    on_b.send(b"SUB creds 1\r\n");
    on_b.ping_pong();
    let mut pub_a = connected(a.port);
    until_received(&mut pub_a, &mut on_b, "creds");

    // stanza dials a nats-server whose cluster requires a user.
    let (c_client, c_route, d_route) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let mut cmd = Command::new("nats-server");
    cmd.args(["-a", "127.0.0.1", "-p", &c_client.to_string()])
        .args(["--cluster_name", "routes-test"])
        .args(["--cluster", &format!("nats://cu:cp@127.0.0.1:{c_route}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let c = NatsServer {
        child: cmd.spawn().expect("nats-server"),
        client: c_client,
        monitor: 0,
    };
    let d = stanza_with_route(
        d_route,
        &[format!("nats-route://cu:cp@127.0.0.1:{c_route}")],
        &[],
    );
    assert!(
        d.wait_for_log("Route connection created", Duration::from_secs(10)),
        "{}",
        d.log_text()
    );
    let _ = c.client;
}

fn stanza_node(route: u16, seed: Option<u16>) -> (Server, u16) {
    let monitor = common::free_port();
    let routes: Vec<String> = seed
        .map(|p| vec![format!("nats-route://127.0.0.1:{p}")])
        .unwrap_or_default();
    let m = monitor.to_string();
    // One streaming server per cluster ID on a routed cluster: each node serves its own.
    let cid = format!("node-{route}");
    (
        stanza_with_route(route, &routes, &["-m", &m, "-cid", &cid]),
        monitor,
    )
}

fn num_routes(monitor: u16) -> u64 {
    let routez = common::http_get(&format!("127.0.0.1:{monitor}"), "/routez");
    let v: serde_json::Value = serde_json::from_str(&routez).unwrap_or_default();
    v["num_routes"].as_u64().unwrap_or(0)
}

fn until_routes(monitors: &[u16], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let counts: Vec<u64> = monitors.iter().map(|m| num_routes(*m)).collect();
        if counts.iter().all(|c| *c == n) {
            return;
        }
        assert!(Instant::now() < deadline, "routes per node: {counts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three stanza nodes, two of them listing only the first: gossip makes a full mesh (every
/// node two routes, in /routez), a message published on one node reaches a subscriber on the
/// other non-seed node (one hop), and a queue group with a member on each node gets every
/// message exactly once.
#[test]
fn three_stanza_nodes_form_a_full_mesh_by_gossip() {
    let (ra, rb, rc) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let (a, ma) = stanza_node(ra, None);
    let (b, mb) = stanza_node(rb, Some(ra));
    let (c, mc) = stanza_node(rc, Some(ra));
    until_routes(&[ma, mb, mc], 2);
    let mut on_b = connected(b.port);
    on_b.send(b"SUB news.> 1\r\n");
    on_b.ping_pong();
    let mut pub_c = connected(c.port);
    let line = until_received(&mut pub_c, &mut on_b, "news.today");
    assert!(line.starts_with("MSG news.today 1 5"), "{line}");
    let mut workers: Vec<RawClient> = [a.port, b.port, c.port]
        .iter()
        .map(|p| {
            let mut w = connected(*p);
            w.send(b"SUB jobs workers 1\r\n");
            w.ping_pong();
            w
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut pub_a = connected(a.port);
    for i in 0..150 {
        pub_a.send(format!("PUB jobs 3\r\n{i:03}\r\n").as_bytes());
    }
    pub_a.ping_pong();
    let counts: Vec<usize> = workers.iter_mut().map(count_until_quiet).collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        150,
        "each job exactly once: {counts:?}"
    );
    let routez = common::http_get(&format!("127.0.0.1:{mb}"), "/routez?subs=1");
    assert!(routez.contains("\"subscriptions_list\""), "{routez}");
}

/// A mixed cluster: a stanza seed, Debian's nats-server and another stanza node that both
/// list only the seed. Gossip connects the nats-server and the second stanza node directly.
#[test]
fn a_mixed_cluster_meshes_by_gossip() {
    let (ra, rb, rc) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let (a, ma) = stanza_node(ra, None);
    let b_client = common::free_port();
    let Some(b) = nats_server(b_client, rb, &[format!("nats-route://127.0.0.1:{ra}")]) else {
        return;
    };
    let (c, mc) = stanza_node(rc, Some(ra));
    until_routes(&[ma, mc], 2);
    let deadline = Instant::now() + Duration::from_secs(15);
    while num_routes(b.monitor) != 2 {
        assert!(
            Instant::now() < deadline,
            "nats-server routes: {}",
            num_routes(b.monitor)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut on_b = connected(b.client);
    on_b.send(b"SUB mixed 1\r\n");
    on_b.ping_pong();
    let mut pub_c = connected(c.port);
    until_received(&mut pub_c, &mut on_b, "mixed");
    let mut on_c = connected(c.port);
    on_c.send(b"SUB back 1\r\n");
    on_c.ping_pong();
    let mut pub_b = connected(b.client);
    until_received(&mut pub_b, &mut on_c, "back");
    drop(a);
}

/// Client INFO lists the cluster's client URLs (this server's first, then the peers'); a
/// client that spoke protocol 1 gets a new INFO when a peer goes, so it can fail over.
#[test]
fn clients_learn_the_cluster_urls() {
    let Some((a, b, _)) = stanza_routed_to_nats_server() else {
        return;
    };
    let fresh = RawClient::connect(a.port);
    let urls: Vec<String> = fresh.info["connect_urls"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        urls,
        vec![
            format!("127.0.0.1:{}", a.port),
            format!("127.0.0.1:{}", b.client)
        ],
        "{:?}",
        fresh.info
    );
    let mut watching = connected(a.port);
    drop(b);
    assert!(
        a.wait_for_log("Router connection closed", Duration::from_secs(10)),
        "{}",
        a.log_text()
    );
    let _ = watching
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = watching.line();
        if let Some(json) = line.strip_prefix("INFO ") {
            let info: serde_json::Value = serde_json::from_str(json).expect("INFO json");
            assert!(info.get("connect_urls").is_none(), "{info}");
            break;
        }
        assert!(Instant::now() < deadline, "no INFO after the peer went");
    }
}

fn tls_block(certs: &common::Certs) -> String {
    format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 2 }}",
        certs.path("server-cert.pem"),
        certs.path("server-key.pem"),
        certs.path("ca.pem")
    )
}

/// A nats-server with a TLS cluster port, from a config file.
fn tls_nats_server(
    certs: &common::Certs,
    client: u16,
    route: u16,
    routes: &[String],
) -> Option<NatsServer> {
    if !common::available("Debian's nats-server", "nats-server", &["--version"]) {
        return None;
    }
    let monitor = common::free_port();
    let list: Vec<String> = routes.iter().map(|r| format!("\"{r}\"")).collect();
    let config = format!(
        "listen: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{monitor}\"\ncluster {{\n  name: routes-test\n  listen: \"127.0.0.1:{route}\"\n  {}\n  routes: [{}]\n}}\n",
        tls_block(certs),
        list.join(", ")
    );
    let path = certs.dir.0.join(format!("nats-{client}.conf"));
    std::fs::write(&path, config).expect("write nats-server config");
    let mut cmd = Command::new("nats-server");
    cmd.arg("-c").arg(&path);
    Some(launch(cmd, client, monitor))
}

/// TLS routes with verification both ways, stanza dialling and accepting, against a
/// nats-server with a TLS cluster port; a plain route to the TLS-only port is refused and the
/// server keeps serving.
#[test]
fn tls_routes_with_verification() {
    let certs = common::make_certs();
    let (a_route, b_client, b_route) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let config = format!(
        "cluster {{\n  name: routes-test\n  listen: \"127.0.0.1:{a_route}\"\n  {}\n}}\nstreaming {{}}\n",
        tls_block(&certs)
    );
    let a = Server::start_with_config(Some(&config), &["--cores", "2"]);
    let Some(b) = tls_nats_server(
        &certs,
        b_client,
        b_route,
        &[format!("nats-route://127.0.0.1:{a_route}")],
    ) else {
        return;
    };
    assert!(
        a.wait_for_log("Route connection created", Duration::from_secs(10)),
        "{}",
        a.log_text()
    );
    let mut on_b = connected(b.client);
    on_b.send(b"SUB secure 1\r\n");
    on_b.ping_pong();
    let mut pub_a = connected(a.port);
    until_received(&mut pub_a, &mut on_b, "secure");

    // A plain nats-server dialling the TLS-only route port is refused.
    let (c_client, c_route) = (common::free_port(), common::free_port());
    let Some(_c) = nats_server(
        c_client,
        c_route,
        &[format!("nats-route://127.0.0.1:{a_route}")],
    ) else {
        return;
    };
    assert!(
        a.wait_for_log("TLS route handshake error", Duration::from_secs(10)),
        "{}",
        a.log_text()
    );
    connected(a.port).ping_pong();

    // stanza dials a TLS nats-server.
    let (d_route, e_client, e_route) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let Some(e) = tls_nats_server(&certs, e_client, e_route, &[]) else {
        return;
    };
    let config = format!(
        "cluster {{\n  name: routes-test\n  listen: \"127.0.0.1:{d_route}\"\n  {}\n  routes: [\"nats-route://127.0.0.1:{e_route}\"]\n}}\nstreaming {{}}\n",
        tls_block(&certs)
    );
    let d = Server::start_with_config(Some(&config), &["--cores", "2"]);
    assert!(
        d.wait_for_log("Route connection created", Duration::from_secs(10)),
        "{}",
        d.log_text()
    );
    let mut on_d = connected(d.port);
    on_d.send(b"SUB secure.back 1\r\n");
    on_d.ping_pong();
    let mut pub_e = connected(e.client);
    until_received(&mut pub_e, &mut on_d, "secure.back");
}

/// Two streaming servers with the same cluster ID on one routed cluster: the second refuses to
/// start with the reference's message; one with another cluster ID starts.
#[test]
fn a_second_streaming_server_with_the_same_cluster_id_refuses_to_start() {
    let (a_route, b_route) = (common::free_port(), common::free_port());
    let a = stanza_with_route(a_route, &[], &[]);
    let config = |cid: &str| {
        format!(
            "cluster {{\n  name: routes-test\n  listen: \"127.0.0.1:{b_route}\"\n  routes: [\"nats-route://127.0.0.1:{a_route}\"]\n}}\nstreaming {{ cluster_id: {cid} }}\n"
        )
    };
    let err = common::refused_config(&config("test-cluster"));
    assert!(
        err.contains("discovered another streaming server with cluster ID \"test-cluster\""),
        "{err}"
    );
    connected(a.port).ping_pong();
    let other = Server::start_with_config(Some(&config("other-cluster")), &["--cores", "2"]);
    connected(other.port).ping_pong();
}

/// SIGHUP reloads the route list, as nats-server 2.9 does: a route added is dialled, a route
/// removed is closed and not dialled again.
#[test]
fn sighup_reloads_the_route_list() {
    let (a_route, b_client, b_route) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let Some(b) = nats_server(b_client, b_route, &[]) else {
        return;
    };
    let config = |routes: &str| {
        format!(
            "cluster {{\n  name: routes-test\n  listen: \"127.0.0.1:{a_route}\"\n  routes: [{routes}]\n}}\nstreaming {{}}\n"
        )
    };
    let a = Server::start_with_config(Some(&config("")), &["--cores", "2"]);
    std::fs::write(
        a.config_path(),
        config(&format!("\"nats-route://127.0.0.1:{b_route}\"")),
    )
    .expect("rewrite config");
    a.signal(libc::SIGHUP);
    assert!(
        a.wait_for_log("Route connection created", Duration::from_secs(10)),
        "{}",
        a.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while num_routes(b.monitor) != 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(a.config_path(), config("")).expect("rewrite config");
    a.signal(libc::SIGHUP);
    assert!(
        a.wait_for_log("Router connection closed", Duration::from_secs(10)),
        "{}",
        a.log_text()
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(num_routes(b.monitor), 0, "{}", a.log_text());
    assert!(
        !a.log_text().contains("Changed but not applied"),
        "{}",
        a.log_text()
    );
}

/// kill -9 of one of three stanza nodes and its restart on the same ports: the others keep
/// serving meanwhile, the mesh forms again (gossip reconnects the third node), interest
/// recovers and a queue group spread over the three nodes still gets each message once.
#[test]
fn a_node_killed_and_restarted_rejoins_the_mesh() {
    let (ra, rb, rc) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let (a, ma) = stanza_node(ra, None);
    let (b, mb) = stanza_node(rb, Some(ra));
    let (c, mc) = stanza_node(rc, Some(ra));
    until_routes(&[ma, mb, mc], 2);
    let b_port = b.port;
    let mut b = b;
    b.signal(libc::SIGKILL);
    let _ = b.wait_exit(Duration::from_secs(5));
    until_routes(&[ma, mc], 1);
    // The others keep serving each other.
    let mut on_a = connected(a.port);
    on_a.send(b"SUB during 1\r\n");
    on_a.ping_pong();
    let mut pub_c = connected(c.port);
    until_received(&mut pub_c, &mut on_a, "during");
    drop(b);
    // The same node again, same ports.
    let routes = [format!("nats-route://127.0.0.1:{ra}")];
    let m = mb.to_string();
    let cid = format!("node-{rb}");
    let list: Vec<String> = routes.iter().map(|r| format!("\"{r}\"")).collect();
    let config = format!(
        "cluster {{\n  name: routes-test\n  listen: \"127.0.0.1:{rb}\"\n  routes: [{}]\n}}\nstreaming {{ cluster_id: {cid} }}\n",
        list.join(", ")
    );
    let b = Server::start_on(b_port, Some(&config), &["--cores", "2", "-m", &m]);
    until_routes(&[ma, mb, mc], 2);
    let mut on_b = connected(b.port);
    on_b.send(b"SUB after 1\r\n");
    on_b.ping_pong();
    until_received(&mut pub_c, &mut on_b, "after");
    let mut workers: Vec<RawClient> = [a.port, b.port, c.port]
        .iter()
        .map(|p| {
            let mut w = connected(*p);
            w.send(b"SUB jobs workers 1\r\n");
            w.ping_pong();
            w
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..90 {
        pub_c.send(format!("PUB jobs 3\r\n{i:03}\r\n").as_bytes());
    }
    pub_c.ping_pong();
    let counts: Vec<usize> = workers.iter_mut().map(count_until_quiet).collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        90,
        "each job exactly once: {counts:?}"
    );
}

/// Real clients spread over a routed cluster of stanza and nats-server: nats-py connected to
/// both nodes (pub/sub and wildcards across the route, request/reply, a queue group with a
/// member on each node getting each message once).
#[test]
fn nats_py_clients_spread_over_the_cluster() {
    if !common::available("nats-py", "python3", &["-c", "import nats"]) {
        return;
    }
    let Some((a, b, _)) = stanza_routed_to_nats_server() else {
        return;
    };
    for urls in [
        format!("nats://127.0.0.1:{},nats://127.0.0.1:{}", a.port, b.client),
        format!("nats://127.0.0.1:{},nats://127.0.0.1:{}", b.client, a.port),
    ] {
        let mut cmd = Command::new("python3");
        cmd.arg(common::repo_path("tests/clients/py/core_nats.py"))
            .args(["cluster", &urls]);
        common::run_client(cmd, Duration::from_secs(60));
    }
}

/// The npm `nats` client on both nodes of a stanza/nats-server cluster, and
/// node-nats-streaming connected to the nats-server node served by stanza's streaming server.
#[test]
fn node_clients_over_the_cluster() {
    let modules = common::repo_path("tests/clients/node/node_modules");
    if !modules.join("nats").exists() || !modules.join("node-nats-streaming").exists() {
        common::skip("npm packages nats / node-nats-streaming are not installed (run .ci/run)");
        return;
    }
    if !common::available("node", "node", &["--version"]) {
        return;
    }
    let Some((a, b, _)) = stanza_routed_to_nats_server() else {
        return;
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut cmd = Command::new("node");
    cmd.arg(common::repo_path("tests/clients/node/core_nats.mjs"))
        .args([
            "cluster",
            &format!("nats://127.0.0.1:{},nats://127.0.0.1:{}", a.port, b.client),
        ]);
    common::run_client(cmd, Duration::from_secs(60));
    let mut cmd = Command::new("node");
    cmd.arg(common::repo_path("tests/clients/node/stan_smoke.mjs"))
        .args(["smoke", &format!("nats://127.0.0.1:{}", b.client)]);
    common::run_client(cmd, Duration::from_secs(60));
}

/// The Go nats-streaming-server v0.25.6 with its embedded NATS server as a route peer: each
/// streaming server serves its own cluster ID, and a stan.go client connected to either node
/// is served by the other node's streaming server across the route.
#[test]
fn the_go_streaming_server_is_a_route_peer() {
    let Some(bin) = common::go_program("stan-go") else {
        return;
    };
    if !common::available(
        "the Go nats-streaming-server",
        "nats-streaming-server",
        &["--version"],
    ) {
        return;
    }
    let (a_route, go_client, go_route) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let a = stanza_with_route(a_route, &[], &[]);
    let go = common::spawn_listening(
        Command::new("nats-streaming-server")
            .args(["-a", "127.0.0.1", "-p", &go_client.to_string()])
            .args(["-cid", "go-cluster"])
            .args(["--cluster", &format!("nats://127.0.0.1:{go_route}")])
            .args(["--routes", &format!("nats://127.0.0.1:{a_route}")]),
        go_client,
    );
    let routed = a.wait_for_log("Route connection created", Duration::from_secs(10));
    // Interest (the streaming subjects) crosses with the route's first messages.
    std::thread::sleep(Duration::from_millis(500));
    let run = |url: String, cluster_id: &str| {
        let mut cmd = Command::new(&bin);
        cmd.args(["item10_publish_sequences", &url, cluster_id]);
        common::run_client(cmd, Duration::from_secs(60));
    };
    if routed {
        run(format!("nats://127.0.0.1:{go_client}"), "test-cluster");
        run(a.url(), "go-cluster");
    }
    drop(go);
    assert!(routed, "no route to the Go server:\n{}", a.log_text());
}
