//! Test support: start the real `stanza` binary on a free loopback port, talk raw NATS to it,
//! and run third-party client programs against it, all bounded in time.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: TempDir,
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: Mutex<u32> = Mutex::new(0);
        let n = {
            let mut c = COUNTER.lock().unwrap_or_else(|e| e.into_inner());
            *c += 1;
            *c
        };
        let dir =
            std::env::temp_dir().join(format!("stanza-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    // The kernel may hand the same ephemeral port out again once it is released: a test that
    // asked for a client port and a monitoring port once got one port for both, and its
    // client reached the HTTP listener. No port is handed out twice in one test process.
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut given = given.lock().unwrap_or_else(|p| p.into_inner());
        if given.insert(port) {
            return port;
        }
    }
}

impl Server {
    /// Starts with extra flags (the address and port are chosen here).
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_config(None, args)
    }

    /// Starts with a NATS-format config file holding `config`.
    pub fn start_with_config(config: Option<&str>, args: &[&str]) -> Server {
        Self::start_on(free_port(), config, args)
    }

    /// Starts on a given client port (a restart where clients reconnect).
    pub fn start_on(port: u16, config: Option<&str>, args: &[&str]) -> Server {
        let dir = TempDir::new("srv");
        let log = dir.0.join("server.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stanza"));
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(text) = config {
            let path = dir.0.join("server.conf");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("-c").arg(&path);
        }
        cmd.args(args);
        let log_file = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::null()).stderr(log_file);
        let child = cmd.spawn().expect("spawn stanza");
        let server = Server {
            child,
            port,
            log,
            _dir: dir,
        };
        if args.iter().any(|a| a.contains("syslog"))
            || config.is_some_and(|c| c.contains("logfile") || c.contains("syslog"))
        {
            // Its log goes elsewhere: ready once the client port answers with INFO.
            server.wait_port();
        } else {
            server.wait_ready();
        }
        server
    }

    fn wait_port(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut first = [0u8; 4];
                if s.read_exact(&mut first).is_ok() && &first == b"INFO" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server not answering on port {} in time", self.port);
    }

    /// Starts in external NATS mode (`-ns` among `args`): there is no client port, so
    /// readiness is the streaming banner.
    #[allow(dead_code)]
    pub fn start_external(args: &[&str]) -> Server {
        let dir = TempDir::new("srv");
        let log = dir.0.join("server.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stanza"));
        cmd.args(args);
        let log_file = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::null()).stderr(log_file);
        let child = cmd.spawn().expect("spawn stanza");
        let server = Server {
            child,
            port: 0,
            log,
            _dir: dir,
        };
        assert!(
            server.wait_for_log("STAN: ----------------------------------", START_TIMEOUT),
            "stanza (external mode) not ready:\n{}",
            server.log_text()
        );
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(text) = std::fs::read_to_string(&self.log) {
                if text.contains("Server is ready") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server not ready in time; log:\n{}", self.log_text());
    }

    /// The config file given with `start_with_config` (rewrite it, then send SIGHUP).
    pub fn config_path(&self) -> PathBuf {
        self._dir.0.join("server.conf")
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn raw(&self) -> RawClient {
        RawClient::connect(self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A NATS connection driven byte by byte, for what client libraries cannot express.
pub struct RawClient {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    pub info: serde_json::Value,
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        Self::over(stream)
    }

    /// A client whose socket has a receive buffer of `bytes`, set before it connects (a
    /// consumer that reads slowly, or not at all).
    pub fn connect_with_receive_buffer(port: u16, bytes: usize) -> RawClient {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        socket.connect(&addr.into()).expect("connect");
        Self::over(socket.into())
    }

    fn over(stream: TcpStream) -> RawClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut c = RawClient {
            stream,
            reader,
            info: serde_json::Value::Null,
        };
        let line = c.line();
        let json = line.strip_prefix("INFO ").expect("INFO first");
        c.info = serde_json::from_str(json).expect("INFO json");
        c
    }

    pub fn core(&self) -> u64 {
        self.info["stanza_core"].as_u64().expect("stanza_core")
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next protocol line without its CRLF.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => panic!("connection closed while waiting for a line"),
            Ok(_) => line.trim_end_matches(['\r', '\n']).to_string(),
            Err(e) => panic!("no line: {e}"),
        }
    }

    /// Reads lines until one equals `want`; panics on anything else that is not PING/+OK.
    pub fn expect(&mut self, want: &str) {
        loop {
            let line = self.line();
            if line == want {
                return;
            }
            // An async INFO (the cluster's connect_urls changed) may come at any time.
            assert!(
                line == "PING" || line == "+OK" || line == "PONG" || line.starts_with("INFO "),
                "expected {want:?}, got {line:?}"
            );
        }
    }

    /// A MSG frame: returns (control line, payload).
    pub fn msg(&mut self) -> (String, Vec<u8>) {
        loop {
            let line = self.line();
            if line.starts_with("MSG ") || line.starts_with("HMSG ") {
                let size: usize = line
                    .rsplit(' ')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("size");
                let mut payload = vec![0; size + 2];
                self.reader.read_exact(&mut payload).expect("payload");
                payload.truncate(size);
                return (line, payload);
            }
            // An INFO may come at any time (a connection that moved to another core).
            assert!(
                line == "PING" || line == "+OK" || line == "PONG" || line.starts_with("INFO "),
                "got {line:?}"
            );
        }
    }

    pub fn ping_pong(&mut self) {
        self.send(b"PING\r\n");
        self.expect("PONG");
    }

    /// Whether the server closed the connection within `within` (reads and drops data).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 65536];
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(200)));
        while Instant::now() < deadline {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// Runs a client program, killing it after `timeout`; panics with its output on failure.
pub fn run_client(cmd: Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let out = run_bounded(cmd, timeout);
    let text = format!(
        "{shown}\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "client failed ({:?}):\n{text}",
        out.status
    );
    println!("{text}");
    out
}

/// Runs a program to its end, killing it at `timeout`, and returns what it printed.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    finish_bounded(child, timeout)
}

/// Waits for a started program (its output piped) to end, killing it at `timeout`, and returns
/// what it printed.
pub fn finish_bounded(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                break;
            }
        }
    }
    child.wait_with_output().expect("client output")
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Whether a command runs; prints why a test is skipped when it does not.
pub fn available(what: &str, program: &str, args: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        skip(&format!(
            "{what} is not available ({program} {args:?} failed); run .ci/run to install it"
        ));
    }
    ok
}

impl Server {
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill on the pid of a child this struct owns and has not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Sends a signal and waits (bounded) for the process to exit; returns its exit code.
    pub fn signal_and_wait(&mut self, signal: i32, within: Duration) -> Option<i32> {
        self.signal(signal);
        self.wait_exit(within)
    }

    /// Waits (bounded) until the log holds `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Starts stanza on a free loopback port with a configuration file holding `config`,
/// expecting it to refuse to start (`fails_cleanly`). Returns its stderr.
#[allow(dead_code)]
pub fn refused_config(config: &str) -> String {
    let dir = TempDir::new("refused");
    let path = dir.0.join("refused.conf");
    std::fs::write(&path, config).expect("write config");
    let port = free_port().to_string();
    fails_cleanly(&[
        "-a",
        "127.0.0.1",
        "-p",
        &port,
        "-c",
        path.to_str().expect("utf-8 path"),
    ])
}

/// A child process killed when dropped (a failing assertion must not leave it running).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a Go server (its output discarded) and waits until it listens on `port`.
#[allow(dead_code)]
pub fn spawn_listening(cmd: &mut Command, port: u16) -> ChildGuard {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{cmd:?} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    ChildGuard(child)
}

/// Debian's nats-server alone on a free loopback port (killed by the caller), and that port;
/// `None` (with the skip reason printed) when it is not installed.
#[allow(dead_code)]
pub fn plain_nats_server() -> Option<(ChildGuard, u16)> {
    if !available("Debian's nats-server", "nats-server", &["--version"]) {
        return None;
    }
    let port = free_port();
    let child = spawn_listening(
        Command::new("nats-server").args(["-a", "127.0.0.1", "-p", &port.to_string()]),
        port,
    );
    Some((child, port))
}

/// Runs stanza expecting it to refuse to start: exit status 1, no panic. Returns its stderr.
pub fn fails_cleanly(args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stanza"));
    cmd.args(args);
    // A server that starts instead of failing is stopped after the bound and reported.
    let out = run_bounded(cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Says why a case is skipped where it is seen: written straight to the process's stderr,
/// which the test harness does not capture (its `println!` capture would hide the reason).
#[allow(dead_code)]
pub fn skip(reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
}

#[allow(dead_code)]
pub struct Certs {
    pub dir: TempDir,
}

#[allow(dead_code)]
impl Certs {
    pub fn path(&self, name: &str) -> String {
        self.dir.0.join(name).to_string_lossy().into_owned()
    }
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files.
#[allow(dead_code)]
pub fn make_certs() -> Certs {
    let dir = TempDir::new("certs");
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stanza test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let write = |name: &str, text: String| std::fs::write(dir.0.join(name), text).expect("write");
    write("ca.pem", ca_cert.pem());
    for (name, sans) in [
        (
            "server",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
        ),
        ("client", vec!["client.stanza.test".to_string()]),
    ] {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(sans).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        write(&format!("{name}-cert.pem"), cert.pem());
        write(&format!("{name}-key.pem"), key.serialize_pem());
    }
    Certs { dir }
}

/// Builds the Go program in `tests/clients/<module>` once per test binary; `None` (with a
/// printed reason) when Go or its modules are not available.
#[allow(dead_code)]
pub fn go_program(module: &str) -> Option<PathBuf> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<HashMap<String, Option<PathBuf>>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    built
        .entry(module.to_string())
        .or_insert_with(|| {
            if !available("Go", "go", &["version"]) {
                return None;
            }
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("go-{module}"));
            let status = Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(repo_path(&format!("tests/clients/{module}")))
                .status();
            match status {
                Ok(s) if s.success() => Some(out),
                other => {
                    skip(&format!(
                        "cannot build the Go program in tests/clients/{module} ({other:?}); are Go modules reachable?"
                    ));
                    None
                }
            }
        })
        .clone()
}

/// Starts a two-core server with a monitoring port, `config` and `flags`, and runs one case of
/// the stan.go program (tests/clients/stan-go) against it; without Go, prints the skip reason.
/// The case sees the monitoring address in `STANZA_MONITOR`.
#[allow(dead_code)]
pub fn stan_go_case(name: &str, config: Option<&str>, flags: &[&str], timeout: Duration) {
    let Some(bin) = go_program("stan-go") else {
        return;
    };
    let monitor_port = free_port().to_string();
    let mut args = vec!["--cores", "2", "-m", &monitor_port];
    args.extend_from_slice(flags);
    let srv = Server::start_with_config(config, &args);
    let mut cmd = Command::new(bin);
    cmd.args([name, &srv.url()]);
    cmd.env("STANZA_MONITOR", format!("http://127.0.0.1:{monitor_port}"));
    let out = run_client(cmd, timeout);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(reason) = line.strip_prefix("SKIPPED: ") {
            skip(reason);
        }
    }
}

/// A plain HTTP/1.0 GET on loopback; returns the body.
#[allow(dead_code)]
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).expect("connect to monitoring");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(text)
}

/// Starts the stan.go program's `ft_failover_load` case (tests/clients/stan-go/ft_cases.go) on
/// `urls` for cluster `cluster_id`: it publishes and subscribes until `stop` exists, then
/// checks every acknowledged message. Finish it with `expect_case_success`.
#[allow(dead_code)]
pub fn start_failover_load(
    bin: &Path,
    urls: &str,
    cluster_id: &str,
    stop: &Path,
    timeout: Duration,
) -> Child {
    Command::new(bin)
        .args(["ft_failover_load", urls, cluster_id])
        .env("STANZA_STOP_FILE", stop)
        .env("STANZA_CASE_TIMEOUT", timeout.as_secs().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stan.go case")
}

/// Waits (bounded) for a client case started with piped output; fails with its output and the
/// servers' `logs` unless it succeeded. Returns its standard output.
#[allow(dead_code)]
pub fn expect_case_success(child: Child, timeout: Duration, logs: &[String]) -> String {
    let out = finish_bounded(child, timeout);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client case failed:\n{stdout}\n{stderr}\nlogs:\n{}",
        logs.join("\n----\n")
    );
    stdout
}
