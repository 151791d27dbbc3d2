//! Seed corpora for the fuzz targets (issue 21.8), made from real traffic and real files: a
//! file-store server is driven by `stanza bench` (publishers, plain and queue subscribers,
//! acks, four channels) through a recording proxy; what the clients sent and received, the
//! STAN requests inside it, the store directory it left, and the example configurations are
//! written to `target/tmp/fuzz-seeds/<target>/`, where `.ci/fuzz` starts each fuzzer from.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes kept per direction per connection.
const CAPTURE_LIMIT: usize = 64 << 10;

type Captures = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

/// A proxy on a free port that forwards to `to` and records each connection's first bytes in
/// both directions (client to server, server to client). Runs until the test process ends.
fn recording_proxy(to: u16) -> (u16, Captures) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
    let port = listener.local_addr().expect("addr").port();
    let captures: Captures = Arc::new(Mutex::new(Vec::new()));
    let all = captures.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let slot = {
                let mut all = all.lock().unwrap_or_else(|p| p.into_inner());
                all.push((Vec::new(), Vec::new()));
                all.len() - 1
            };
            for (from, into, upstream) in [
                (client.try_clone(), server.try_clone(), true),
                (server.try_clone(), client.try_clone(), false),
            ] {
                let (Ok(mut from), Ok(mut into)) = (from, into) else {
                    continue;
                };
                let all = all.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 << 10];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let mut all = all.lock().unwrap_or_else(|p| p.into_inner());
                        let record = if upstream {
                            &mut all[slot].0
                        } else {
                            &mut all[slot].1
                        };
                        let room = CAPTURE_LIMIT.saturating_sub(record.len());
                        record.extend_from_slice(&buf[..n.min(room)]);
                    }
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (port, captures)
}

fn seeds_dir(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("seed dir");
    dir
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(seeds_dir(target).join(name), bytes).expect("write seed");
}

/// A store directory packed as the store_recovery target reads it: entries of
/// `kind, channel, first_seq, len u16 LE, bytes` (files over 64 KiB are cut).
fn pack_store(root: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |kind: u8, channel: u8, first: u8, bytes: &[u8]| {
        let bytes = &bytes[..bytes.len().min(u16::MAX as usize)];
        out.extend_from_slice(&[kind, channel, first]);
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    for (kind, name) in [(0u8, "clients.dat"), (1, "server.dat")] {
        if let Ok(b) = std::fs::read(root.join(name)) {
            entry(kind, 0, 0, &b);
        }
    }
    for channel in 0..4u8 {
        let dir = root.join("channels").join(format!("c.{channel}"));
        let Ok(files) = std::fs::read_dir(&dir) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Ok(bytes) = std::fs::read(f.path()) else {
                continue;
            };
            let first = name
                .split('.')
                .nth(1)
                .and_then(|n| n.parse::<u8>().ok())
                .unwrap_or(1);
            let kind = if name == "subs.dat" {
                4
            } else if name.ends_with(".dat") {
                2
            } else if name.ends_with(".idx") {
                3
            } else {
                continue;
            };
            entry(kind, channel, first, &bytes);
        }
    }
    out
}

#[test]
fn seed_corpora_from_real_traffic_and_files() {
    let store = common::TempDir::new("fuzz-seeds");
    let dir = store.0.join("data");
    let dir_text = dir.to_str().expect("utf-8").to_string();
    let srv = common::Server::start(&[
        "--cores", "2", "-st", "file", "--dir", &dir_text, "-mm", "150",
    ]);
    let (proxy, captures) = recording_proxy(srv.port);
    let url = format!("nats://127.0.0.1:{proxy}");
    for extra in [&["-ns", "4"][..], &["-ns", "4", "-qgroup", "q"][..]] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stanza"));
        cmd.args(["bench", "-s", &url, "-np", "4", "-n", "800", "-ms", "48"]);
        cmd.args(extra);
        cmd.args(["--channels", "4", "c"]);
        let out = common::run_bounded(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "bench: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(srv);

    // Protocol, both directions; the parser targets take a first byte saying where to cut.
    let captures = captures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut requests = 0;
    for (i, (up, down)) in captures.iter().enumerate() {
        for (target, bytes) in [("nats_parser", up), ("nats_client_proto", down)] {
            if bytes.is_empty() {
                continue;
            }
            let mut seed = vec![(bytes.len() / 2).min(255) as u8];
            seed.extend_from_slice(&bytes[..bytes.len().min(8 << 10)]);
            write_seed(target, &format!("conn-{i}"), &seed);
        }
        // The STAN requests inside what the clients sent.
        let mut parser = stanza::nats::parser::Parser::new(stanza::nats::parser::ParserLimits {
            max_control_line: 4096,
            max_payload: 1 << 20,
        });
        let mut buf = bytes::BytesMut::from(&up[..]);
        while let Ok(Some(op)) = parser.parse(&mut buf) {
            if let stanza::nats::parser::ClientOp::Pub(p) = op {
                if p.subject().starts_with(b"_STAN.") && requests < 64 {
                    write_seed("stan_requests", &format!("req-{requests}"), p.payload());
                    requests += 1;
                }
            }
        }
    }
    assert!(requests > 0, "no STAN request captured");

    // The store the traffic left, whole and file by file.
    write_seed("store_recovery", "bench-store", &pack_store(&dir));
    write_seed(
        "store_clients_replay",
        "clients.dat",
        &std::fs::read(dir.join("clients.dat")).expect("clients.dat"),
    );
    let mut slices = 0;
    for channel in 0..4 {
        let cdir = dir.join("channels").join(format!("c.{channel}"));
        let Ok(files) = std::fs::read_dir(&cdir) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(f.path()).expect("read");
            let seed = format!("c{channel}-{name}");
            match name.as_str() {
                "subs.dat" => write_seed("store_subs_replay", &seed, &bytes),
                n if n.ends_with(".idx") => write_seed("store_index_decode", &seed, &bytes),
                n if n.ends_with(".dat") => {
                    slices += 1;
                    write_seed("store_record_scan", &seed, &bytes)
                }
                _ => {}
            }
        }
    }
    assert!(slices > 0, "no slice written");

    route_seeds();

    // Configuration files as users write them.
    for f in std::fs::read_dir(common::repo_path("config"))
        .expect("config")
        .flatten()
    {
        let bytes = std::fs::read(f.path()).expect("read config");
        write_seed("nats_conf", &f.file_name().to_string_lossy(), &bytes);
    }
}

/// Real route traffic: two Debian nats-server 2.9 nodes routed through the recording proxy,
/// with a subscriber (plain and queue) on one and a publisher (with reply and headers) on the
/// other; both directions become route_proto seeds.
fn route_seeds() {
    if !common::available("Debian's nats-server", "nats-server", &["--version"]) {
        return;
    }
    let (b_client, b_route) = (common::free_port(), common::free_port());
    let (a_client, a_route) = (common::free_port(), common::free_port());
    let spawn = |args: Vec<String>| {
        std::process::Command::new("nats-server")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server")
    };
    let mut b = spawn(vec![
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        b_client.to_string(),
        "--cluster_name".into(),
        "seeds".into(),
        "--cluster".into(),
        format!("nats://127.0.0.1:{b_route}"),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let (proxy, captures) = recording_proxy(b_route);
    let mut a = spawn(vec![
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        a_client.to_string(),
        "--cluster_name".into(),
        "seeds".into(),
        "--cluster".into(),
        format!("nats://127.0.0.1:{a_route}"),
        "--routes".into(),
        format!("nats-route://127.0.0.1:{proxy}"),
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let mut sub = common::RawClient::connect(b_client);
    sub.send(b"CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB orders 1\r\nSUB orders workers 2\r\nSUB _INBOX.> 3\r\n");
    sub.ping_pong();
    std::thread::sleep(Duration::from_millis(300));
    let mut publisher = common::RawClient::connect(a_client);
    publisher.send(b"CONNECT {\"verbose\":false,\"headers\":true}\r\nPUB orders _INBOX.r1 5\r\nhello\r\nHPUB orders 18 23\r\nNATS/1.0\r\nX: 1\r\n\r\nhello\r\nPUB _INBOX.x 2\r\nhi\r\n");
    publisher.ping_pong();
    sub.send(b"UNSUB 2\r\n");
    std::thread::sleep(Duration::from_millis(500));
    let _ = a.kill();
    let _ = b.kill();
    let _ = a.wait();
    let _ = b.wait();
    let captures = captures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // stanza's route reader takes every byte a real 2.9 server sends on a route.
    let mut seen = std::collections::BTreeSet::new();
    for (up, down) in &captures {
        for bytes in [up, down] {
            let mut buf = bytes::BytesMut::from(&bytes[..]);
            loop {
                match stanza::nats::route_proto::next_op(&mut buf) {
                    Ok(Some(op)) => {
                        use stanza::nats::route_proto::RouteOp;
                        seen.insert(match op {
                            RouteOp::Info(_) => "INFO",
                            RouteOp::Connect(_) => "CONNECT",
                            RouteOp::SubAdd { queue: Some(_), .. } => "RS+ queue",
                            RouteOp::SubAdd { .. } => "RS+",
                            RouteOp::SubRemove { .. } => "RS-",
                            RouteOp::Msg {
                                header_len, queues, ..
                            } if header_len > 0 => {
                                if queues.is_empty() {
                                    "HMSG"
                                } else {
                                    "HMSG queue"
                                }
                            }
                            RouteOp::Msg { queues, .. } if !queues.is_empty() => "RMSG queue",
                            RouteOp::Msg { .. } => "RMSG",
                            RouteOp::Ping => "PING",
                            RouteOp::Pong => "PONG",
                            RouteOp::Err(_) => "-ERR",
                            RouteOp::Ignored => "ignored",
                        });
                    }
                    Ok(None) => break,
                    Err(e) => panic!("a real route's bytes do not parse: {e}"),
                }
            }
        }
    }
    for want in [
        "INFO",
        "CONNECT",
        "RS+",
        "RS+ queue",
        "RS-",
        "RMSG queue",
        "HMSG queue",
    ] {
        assert!(
            seen.contains(want),
            "no {want} in the captured route traffic: {seen:?}"
        );
    }
    for (i, (up, down)) in captures.iter().enumerate() {
        for (dir, bytes) in [("out", up), ("in", down)] {
            if bytes.is_empty() {
                continue;
            }
            let mut seed = vec![(bytes.len() / 2).min(255) as u8];
            seed.extend_from_slice(&bytes[..bytes.len().min(16 << 10)]);
            write_seed("route_proto", &format!("route-{i}-{dir}"), &seed);
        }
    }
}
