//! Process start-up: running as an ordinary user under the default 8 MiB RLIMIT_MEMLOCK, and
//! clear errors (never a panic) when the server cannot start.

mod common;

use common::{fails_cleanly, free_port, TempDir};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Four executors under an 8 MiB memlock limit, as user `nobody`: glommio's locked io_uring
/// memory must be sized to fit.
#[test]
fn starts_as_non_root_under_default_memlock_limit() {
    if !is_root() {
        common::skip("needs root to switch to an unprivileged user");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        common::skip("setpriv (util-linux) is not installed");
        return;
    }
    let dir = TempDir::new("memlock");
    let bin = dir.0.join("stanza");
    std::fs::copy(env!("CARGO_BIN_EXE_stanza"), &bin).expect("copy binary");
    let _ = Command::new("chmod")
        .args(["755", dir.0.to_str().unwrap_or(".")])
        .status();
    let port = free_port();
    let mut child = Command::new("prlimit")
        .args(["--memlock=8388608:8388608", "--"])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ])
        .arg(&bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--cores", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut connected = false;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().expect("output");
            panic!(
                "server exited ({status}):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            connected = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    assert!(
        connected,
        "never accepted a connection:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn port_in_use_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let port = port.to_string();
    let err = fails_cleanly(&["-a", "127.0.0.1", "-p", &port]);
    assert!(err.contains("Error listening on port: 127.0.0.1:"), "{err}");
}

/// Both listeners bind with SO_REUSEPORT: on one port they would share it and split the
/// connections between NATS and HTTP.
#[test]
fn monitoring_on_the_client_port_is_refused() {
    let port = common::free_port().to_string();
    for flag in ["-m", "-ms"] {
        let err = fails_cleanly(&["-a", "127.0.0.1", "-p", &port, flag, &port]);
        assert!(
            err.contains(&format!("monitoring on the client port {port}")),
            "{flag}: {err}"
        );
    }
}

#[test]
fn bad_config_is_a_clear_error_with_position() {
    let dir = TempDir::new("badconf");
    let path = dir.0.join("bad.conf");
    std::fs::write(&path, "port: 4222\nauthorization {\n  user: a\n").expect("write");
    let err = fails_cleanly(&["-c", path.to_str().expect("utf-8 temp path")]);
    assert!(err.contains("bad.conf:4:1"), "{err}");
}

/// SIGTERM: stop accepting, deliver what is already queued to clients, close, exit 0. The
/// subscriber reads nothing until after the signal, so megabytes are still queued in the
/// server when it arrives.
#[test]
fn sigterm_flushes_clients_and_exits_zero() {
    const COUNT: usize = 200_000;
    let mut srv = common::Server::start(&["--cores", "2"]);
    let mut sub = srv.raw();
    sub.send(b"CONNECT {\"verbose\":false}\r\nSUB drain 1\r\n");
    sub.ping_pong();
    let mut publisher = srv.raw();
    publisher.send(b"CONNECT {\"verbose\":false}\r\n");
    publisher.send(&b"PUB drain 3\r\nabc\r\n".repeat(COUNT));
    publisher.ping_pong();
    srv.signal(libc::SIGTERM);
    for i in 0..COUNT {
        let (line, _) = sub.msg();
        assert_eq!(line, "MSG drain 1 3", "message {i}");
    }
    assert!(
        sub.closed_within(Duration::from_secs(2)),
        "closed after the flush"
    );
    let code = srv.wait_exit(Duration::from_secs(8));
    assert_eq!(code, Some(0), "log:\n{}", srv.log_text());
    assert!(srv.log_text().contains("Server Exiting"));
}

/// SIGINT behaves the same with no clients at all.
#[test]
fn sigint_exits_zero() {
    let mut srv = common::Server::start(&[]);
    let code = srv.signal_and_wait(libc::SIGINT, Duration::from_secs(8));
    assert_eq!(code, Some(0), "log:\n{}", srv.log_text());
}

/// SIGHUP re-reads the config: a changed password takes effect at once, the client whose
/// credentials no longer pass is told 'Authorization Violation', the others stay connected,
/// and a broken file changes nothing.
#[test]
fn sighup_reloads_authorization_without_dropping_others() {
    let conf = |alice_pw: &str| {
        format!(
            "authorization {{ users: [ {{user: alice, password: {alice_pw}}}, {{user: bob, password: b0b}} ] }}\n"
        )
    };
    let srv = common::Server::start_with_config(Some(&conf("old")), &["--cores", "2"]);
    let connect = |user: &str, pass: &str| {
        let mut c = srv.raw();
        c.send(
            format!("CONNECT {{\"user\":\"{user}\",\"pass\":\"{pass}\",\"verbose\":false}}\r\n")
                .as_bytes(),
        );
        c
    };
    let mut alice = connect("alice", "old");
    alice.ping_pong();
    let mut bobs: Vec<common::RawClient> = (0..4).map(|_| connect("bob", "b0b")).collect();
    for b in &mut bobs {
        b.ping_pong();
    }

    std::fs::write(srv.config_path(), conf("new")).expect("rewrite config");
    srv.signal(libc::SIGHUP);
    assert_eq!(alice.line(), "-ERR 'Authorization Violation'");
    assert!(alice.closed_within(Duration::from_secs(3)));
    // Every core polls for a reload every 50 ms; give the other core time too.
    std::thread::sleep(Duration::from_millis(300));
    for b in &mut bobs {
        b.ping_pong();
    }
    let mut refused = connect("alice", "old");
    assert_eq!(refused.line(), "-ERR 'Authorization Violation'");
    connect("alice", "new").ping_pong();

    std::fs::write(srv.config_path(), "authorization {\n").expect("break config");
    srv.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    connect("alice", "new").ping_pong();
    for b in &mut bobs {
        b.ping_pong();
    }
    let log = srv.log_text();
    assert!(
        log.contains("Failed to reload server configuration"),
        "{log}"
    );
}

/// `-l` logs to a file that SIGUSR1 reopens after logrotate moved it; `-P` writes the pid
/// and a graceful stop removes it; `-T=false` drops timestamps.
#[test]
fn log_file_reopen_and_pid_file() {
    let dir = TempDir::new("logfile");
    let log = dir.0.join("stanza.log");
    let rotated = dir.0.join("stanza.log.1");
    let pid_file = dir.0.join("stanza.pid");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stanza"))
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-T=false", "-l"])
        .arg(&log)
        .arg("-P")
        .arg(&pid_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id() as i32;
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let wait_for = |p: &std::path::Path, text: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !read(p).contains(text) {
            std::thread::sleep(Duration::from_millis(20));
        }
        read(p).contains(text)
    };
    assert!(wait_for(&log, "Server is ready"), "{}", read(&log));
    assert!(wait_for(&pid_file, &pid.to_string()));
    assert!(
        read(&log).starts_with(&format!("[{pid}] [INF] ")),
        "no timestamp with -T=false: {}",
        read(&log)
    );

    std::fs::rename(&log, &rotated).expect("rotate");
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert!(
        wait_for(&log, "Reopened log file"),
        "new file after SIGUSR1"
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(8);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(read(&log).contains("Server Exiting"));
    assert!(read(&rotated).contains("Server is ready"));
    assert!(!pid_file.exists(), "pid file removed on exit");
}
