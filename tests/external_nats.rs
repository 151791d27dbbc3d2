//! External NATS mode (`-ns`): stanza as a client of Debian's Go `nats-server`, STAN clients
//! connected to that server; the standalone check against another streaming server (a second
//! stanza, and the Go nats-streaming-server); a NATS server restart mid-stream.

mod common;

use common::{available, free_port, run_client, Server, TempDir};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    fn start(port: u16) -> NatsServer {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        NatsServer { child, port }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server_ready() -> bool {
    available("Debian's nats-server", "nats-server", &["--version"])
}

fn stan_go() -> Option<PathBuf> {
    common::go_program("stan-go")
}

/// stanza in external mode: waits for its banner, as there is no client port to probe.
fn stanza_external(url: &str, extra: &[&str]) -> Server {
    let mut args = vec!["-ns", url, "--cores", "2"];
    args.extend_from_slice(extra);
    Server::start_external(&args)
}

#[test]
fn stan_clients_through_an_external_nats_server() {
    if !nats_server_ready() {
        return;
    }
    let Some(bin) = stan_go() else {
        return;
    };
    let nats = NatsServer::start(free_port());
    let _stanza = stanza_external(&nats.url(), &[]);
    for case in [
        "item10_publish_sequences",
        "item17_start_positions",
        "item24_redelivery",
        "item27_durable_resume",
        "item32_queue_one_member",
    ] {
        let mut cmd = Command::new(&bin);
        cmd.args([case, &nats.url()]);
        run_client(cmd, Duration::from_secs(90));
    }
}

#[test]
fn item60_second_stanza_refuses_to_start() {
    if !nats_server_ready() {
        return;
    }
    let nats = NatsServer::start(free_port());
    let _first = stanza_external(&nats.url(), &[]);
    let err = common::fails_cleanly(&["-ns", &nats.url(), "--cores", "2"]);
    assert!(
        err.contains("discovered another streaming server with cluster ID \"test-cluster\""),
        "{err}"
    );
    // Another cluster ID on the same NATS server is fine.
    let _other = stanza_external(&nats.url(), &["-cid", "other"]);
}

#[test]
fn item60_refuses_next_to_the_go_reference_server() {
    if !available(
        "the Go nats-streaming-server",
        "nats-streaming-server",
        &["--version"],
    ) {
        return;
    }
    let port = free_port();
    let dir = TempDir::new("gostan");
    let log = std::fs::File::create(dir.0.join("go.log")).expect("log");
    let mut go = Command::new("nats-streaming-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nats-streaming-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(dir.0.join("go.log"))
        .unwrap_or_default()
        .contains("Streaming Server is ready")
    {
        assert!(Instant::now() < deadline, "the Go server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = common::fails_cleanly(&["-ns", &format!("nats://127.0.0.1:{port}")]);
    let _ = go.kill();
    let _ = go.wait();
    assert!(
        err.contains("discovered another streaming server with cluster ID \"test-cluster\""),
        "{err}"
    );
}

#[test]
fn nats_server_restart_loses_nothing_acknowledged() {
    if !nats_server_ready() {
        return;
    }
    let Some(bin) = stan_go() else {
        return;
    };
    let port = free_port();
    let mut nats = Some(NatsServer::start(port));
    let url = format!("nats://127.0.0.1:{port}");
    let stanza = stanza_external(&url, &[]);
    let mut cmd = Command::new(&bin);
    cmd.args(["external_publish_through_restart", &url]);
    let client = std::thread::spawn(move || run_client(cmd, Duration::from_secs(90)));
    std::thread::sleep(Duration::from_millis(1200));
    drop(nats.take());
    std::thread::sleep(Duration::from_millis(500));
    let _restarted = NatsServer::start(port);
    let joined = client.join();
    assert!(
        stanza.wait_for_log("Reconnected to NATS Server", Duration::from_secs(5)),
        "{}",
        stanza.log_text()
    );
    if let Err(e) = joined {
        std::panic::resume_unwind(e);
    }
}
