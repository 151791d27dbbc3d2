//! `stanza nats-bench`: a core NATS load generator (plain threads and blocking sockets, so it
//! measures any NATS server the same way). Publishers write pre-built PUB frames in large
//! batches; subscribers count MSG frames. Every run is bounded by `--timeout`.

use super::frame_counter::FrameCounter;
use clap::Parser;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[derive(Debug, Parser, Clone)]
#[command(name = "stanza nats-bench", about = "Core NATS load generator")]
pub struct LoadArgs {
    /// Server address (host:port)
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub server: String,
    /// Where subscribers connect (another node of the cluster; default: --server)
    #[arg(long = "sub-server")]
    pub sub_server: Option<String>,
    /// Number of publishers
    #[arg(long = "np", default_value_t = 1)]
    pub publishers: usize,
    /// Number of subscribers
    #[arg(long = "ns", default_value_t = 0)]
    pub subscribers: usize,
    /// Messages per publisher
    #[arg(long = "n", default_value_t = 1_000_000)]
    pub msgs: u64,
    /// Payload size in bytes
    #[arg(long = "ms", default_value_t = 128)]
    pub size: usize,
    /// Subject
    #[arg(long, default_value = "bench")]
    pub subject: String,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub publishers: usize,
    pub subscribers: usize,
    pub size: usize,
    pub published: u64,
    pub received: u64,
    pub seconds: f64,
    pub pub_msgs_per_sec: f64,
    pub sub_msgs_per_sec: f64,
    pub timed_out: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("server error: {0}")]
    Server(String),
}

fn connect(server: &str) -> Result<TcpStream, LoadError> {
    let mut s = TcpStream::connect(server).map_err(|e| LoadError::Connect(server.into(), e))?;
    s.set_nodelay(true)?;
    s.write_all(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"stanza-nats-bench\"}\r\n",
    )?;
    Ok(s)
}

/// Sends PING and reads until its PONG (answering server PINGs on the way).
fn flush(s: &mut TcpStream, deadline: Instant) -> Result<(), LoadError> {
    s.write_all(b"PING\r\n")?;
    let mut counter = FrameCounter::default();
    let mut buf = vec![0u8; 64 * 1024];
    while counter.pongs == 0 {
        if Instant::now() > deadline {
            return Err(LoadError::Server("no PONG before the deadline".into()));
        }
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        match s.read(&mut buf) {
            Ok(0) => return Err(LoadError::Server("connection closed".into())),
            Ok(n) => counter.feed(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(err) = counter.errors.first() {
            return Err(LoadError::Server(err.clone()));
        }
    }
    Ok(())
}

fn pub_batch(subject: &str, size: usize, count: usize) -> Vec<u8> {
    let mut frame = format!("PUB {subject} {size}\r\n").into_bytes();
    frame.extend(std::iter::repeat_n(b'x', size));
    frame.extend_from_slice(b"\r\n");
    frame.repeat(count)
}

/// Subscribers on another node: their interest crosses a route asynchronously. A probe
/// subscription made after theirs on the same node reaches the publishers' node after theirs
/// (a route is one FIFO link), so once a probe published there arrives, theirs has too.
fn await_route_interest(
    server: &str,
    sub_server: &str,
    deadline: Instant,
) -> Result<(), LoadError> {
    let mut probe_sub = connect(sub_server)?;
    probe_sub.write_all(b"SUB _STANZA_BENCH_PROBE 1\r\n")?;
    flush(&mut probe_sub, deadline)?;
    let mut probe_pub = connect(server)?;
    probe_sub.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = vec![0u8; 4096];
    loop {
        probe_pub.write_all(b"PUB _STANZA_BENCH_PROBE 0\r\n\r\n")?;
        flush(&mut probe_pub, deadline)?;
        let mut counter = FrameCounter::default();
        if let Ok(n) = probe_sub.read(&mut buf) {
            counter.feed(&buf[..n]);
        }
        if counter.msgs > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LoadError::Server(
                "the subscribers' interest never reached the publishers' server".into(),
            ));
        }
    }
}

pub fn run(args: &LoadArgs) -> Result<LoadReport, LoadError> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let expected = args.msgs * args.publishers as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(args.publishers + args.subscribers + 1));
    let mut subs = Vec::new();
    let sub_server = args.sub_server.as_deref().unwrap_or(&args.server);
    for _ in 0..args.subscribers {
        let mut s = connect(sub_server)?;
        s.write_all(format!("SUB {} 1\r\n", args.subject).as_bytes())?;
        flush(&mut s, deadline)?;
        let stop = stop.clone();
        let start = start.clone();
        subs.push(std::thread::spawn(move || -> (u64, Option<Instant>) {
            start.wait();
            let mut counter = FrameCounter::default();
            let mut buf = vec![0u8; 256 * 1024];
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            while counter.msgs < expected && !stop.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => counter.feed(&buf[..n]),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
                if counter.pings > 0 {
                    let _ = s.write_all(b"PONG\r\n");
                    counter.pings = 0;
                }
            }
            let done = (counter.msgs >= expected).then(Instant::now);
            (counter.msgs, done)
        }));
    }
    if sub_server != args.server && args.subscribers > 0 {
        await_route_interest(&args.server, sub_server, deadline)?;
    }
    let batch_msgs = (256 * 1024 / (args.size + 32)).clamp(1, 4096);
    let batch = Arc::new(pub_batch(&args.subject, args.size, batch_msgs));
    let mut pubs = Vec::new();
    for _ in 0..args.publishers {
        let mut s = connect(&args.server)?;
        flush(&mut s, deadline)?;
        let start = start.clone();
        let batch = batch.clone();
        let stop = stop.clone();
        let msgs = args.msgs;
        let size = args.size;
        let subject = args.subject.clone();
        pubs.push(std::thread::spawn(move || -> Result<u64, LoadError> {
            start.wait();
            let mut sent = 0u64;
            while sent < msgs && !stop.load(Ordering::Relaxed) {
                let left = (msgs - sent) as usize;
                if left >= batch_msgs {
                    s.write_all(&batch)?;
                    sent += batch_msgs as u64;
                } else {
                    s.write_all(&pub_batch(&subject, size, left))?;
                    sent += left as u64;
                }
            }
            flush(&mut s, deadline)?;
            Ok(sent)
        }));
    }
    let began = Instant::now();
    start.wait();
    let watchdog = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut published = 0;
    for p in pubs {
        published += p
            .join()
            .map_err(|_| LoadError::Server("publisher panicked".into()))??;
    }
    let pub_done = began.elapsed();
    let mut received = 0;
    let mut last = None::<Instant>;
    let mut timed_out = false;
    for s in subs {
        let (n, done) = s
            .join()
            .map_err(|_| LoadError::Server("subscriber panicked".into()))?;
        received += n;
        match done {
            Some(t) => last = Some(last.map_or(t, |l| l.max(t))),
            None => timed_out = true,
        }
    }
    let seconds = match last {
        Some(t) if !timed_out => t.duration_since(began).as_secs_f64(),
        _ => pub_done.as_secs_f64(),
    };
    stop.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    let secs = seconds.max(1e-9);
    Ok(LoadReport {
        publishers: args.publishers,
        subscribers: args.subscribers,
        size: args.size,
        published,
        received,
        seconds,
        pub_msgs_per_sec: published as f64 / secs,
        sub_msgs_per_sec: received as f64 / secs,
        timed_out,
    })
}

/// Entry point for `stanza nats-bench ...`; returns the process exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let args = match LoadArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    match run(&args) {
        Ok(r) => {
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                println!(
                    "{} pub x {} sub, {} B: published {} in {:.3}s = {:.0} msgs/s; received {} = {:.0} msgs/s{}",
                    r.publishers,
                    r.subscribers,
                    r.size,
                    r.published,
                    r.seconds,
                    r.pub_msgs_per_sec,
                    r.received,
                    r.sub_msgs_per_sec,
                    if r.timed_out { " (TIMED OUT)" } else { "" }
                );
            }
            i32::from(r.timed_out)
        }
        Err(e) => {
            eprintln!("nats-bench: {e}");
            1
        }
    }
}
