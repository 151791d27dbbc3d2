//! `stanza bench`: stan-bench's flags and run shape (subscribers first, then publishers, one
//! connection per client), plus channels, replay, latency percentiles, progress and JSON.

use super::client::{now_nanos, ClientError, ConnectOptions, StanConn};
use super::stats::{msgs_per_client, Report, Sample};
use super::window::new_histogram;
use clap::Parser;
use hdrhistogram::Histogram;
use shards::pb::StartPosition;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Parser, Clone)]
#[command(
    name = "stanza bench",
    about = "NATS Streaming load generator (stan-bench's flags, and more)"
)]
pub struct BenchArgs {
    /// The NATS server URLs, separated by commas
    #[arg(short = 's', default_value = "nats://127.0.0.1:4222")]
    pub urls: String,
    /// The NATS Streaming cluster ID
    #[arg(short = 'c', long = "cluster", default_value = "test-cluster")]
    pub cluster_id: String,
    /// Base client ID
    #[arg(long = "id", default_value = "benchmark")]
    pub client_id: String,
    /// Number of concurrent publishers
    #[arg(long = "np", default_value_t = 10)]
    pub publishers: usize,
    /// Number of concurrent subscribers
    #[arg(long = "ns", default_value_t = 0)]
    pub subscribers: usize,
    /// Number of messages to publish
    #[arg(short = 'n', default_value_t = 100_000)]
    pub msgs: u64,
    /// Synchronous publishing (wait for each PubAck)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub sync: Option<bool>,
    /// Message size in bytes
    #[arg(long = "ms", default_value_t = 128)]
    pub msg_size: usize,
    /// Subscribers ignore old messages
    #[arg(long = "io", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub ignore_old: Option<bool>,
    /// Max number of published acks in flight
    #[arg(long = "mpa", default_value_t = 512)]
    pub max_pub_acks: usize,
    /// Save bench data to a CSV file
    #[arg(long = "csv")]
    pub csv: Option<PathBuf>,
    /// Queue group name
    #[arg(long = "qgroup", default_value = "")]
    pub queue: String,
    /// Credentials file (NATS 2 JWT; not supported by stanza bench)
    #[arg(long = "creds")]
    pub creds: Option<PathBuf>,
    /// Directory of CA certificates (*.pem) for tls:// URLs
    #[arg(long = "cd")]
    pub cert_dir: Option<PathBuf>,
    /// Client certificate file
    #[arg(long = "cf")]
    pub cert_file: Option<PathBuf>,
    /// Client certificate key
    #[arg(long = "ck")]
    pub cert_key: Option<PathBuf>,
    /// User
    #[arg(short = 'u')]
    pub user: Option<String>,
    /// Password
    #[arg(long = "pw")]
    pub password: Option<String>,
    /// Spread publishers and subscribers over this many channels (<subject>.0 .. <subject>.N-1)
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Publish first, then time fresh deliver-all subscribers from subscribe to last message
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub replay: Option<bool>,
    /// MaxInflight of each subscription
    #[arg(long = "max-inflight", default_value_t = 1024)]
    pub sub_max_inflight: i32,
    /// Print one JSON object instead of the text report
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub json: Option<bool>,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// The channel (subject)
    pub subject: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}: {1}")]
    Client(String, ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("timed out after {0} s: {1}")]
    Timeout(u64, String),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

fn tls_config(args: &BenchArgs) -> Result<Option<Arc<rustls::ClientConfig>>, BenchError> {
    if args.cert_dir.is_none() && args.cert_file.is_none() {
        return Ok(None);
    }
    let mut cas: Vec<PathBuf> = Vec::new();
    if let Some(dir) = &args.cert_dir {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| BenchError::Usage(format!("-cd {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) == Some("pem") {
                cas.push(path);
            }
        }
        cas.sort();
    }
    let ca_refs: Vec<&std::path::Path> = cas.iter().map(PathBuf::as_path).collect();
    crate::nats::tls::client_config(
        &ca_refs,
        args.cert_file.as_deref(),
        args.cert_key.as_deref(),
        ca_refs.is_empty(),
    )
    .map(Some)
    .map_err(|e| BenchError::Usage(e.to_string()))
}

/// The channels publisher `i` of `publishers` publishes on, in turn: one (`i` modulo the
/// channel count) when there are no more channels than publishers, else every
/// `publishers`-th channel from `i` (10,000 channels and 1,000 publishers: 10 each).
fn channels_of(i: usize, publishers: usize, channels: usize) -> Vec<usize> {
    if channels <= publishers {
        return vec![i % channels];
    }
    (i..channels).step_by(publishers.max(1)).collect()
}

/// How many of `count` messages, sent in turn on `mine`, go to each of them.
fn spread(count: u64, mine: &[usize], expected: &mut [u64]) {
    let n = mine.len() as u64;
    for (k, channel) in mine.iter().enumerate() {
        expected[*channel] += count / n + u64::from((k as u64) < count % n);
    }
}

fn channel_names(subject: &str, channels: usize) -> Vec<String> {
    if channels <= 1 {
        return vec![subject.to_string()];
    }
    (0..channels).map(|i| format!("{subject}.{i}")).collect()
}

/// Counters the progress line reads.
#[derive(Default)]
struct Progress {
    published: AtomicU64,
    delivered: AtomicU64,
    done: AtomicBool,
}

fn show_progress(progress: Arc<Progress>, expected_pub: u64, expected_sub: u64) {
    let start = Instant::now();
    while !progress.done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let p = progress.published.load(Ordering::Relaxed);
        let d = progress.delivered.load(Ordering::Relaxed);
        let total = (expected_pub + expected_sub).max(1);
        let fraction = (p + d) as f64 / total as f64;
        let filled = (fraction * 30.0).round().clamp(0.0, 30.0) as usize;
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r[{}{}] {:>3.0}%  published {p}/{expected_pub}  delivered {d}/{expected_sub}  {:.0} msgs/s ",
            "=".repeat(filled),
            " ".repeat(30 - filled),
            fraction * 100.0,
            (p + d) as f64 / secs
        );
    }
    eprint!("\r{}\r", " ".repeat(100));
}

#[derive(Default)]
struct SubTrack {
    received: AtomicU64,
    /// Replay: the end marker has arrived.
    finished: AtomicBool,
    first: AtomicU64,
    last: AtomicU64,
}

struct Subscriber {
    conn: StanConn,
    channel: usize,
    track: Arc<SubTrack>,
    /// When the subscribe request was sent (replay is timed from there).
    subscribed_at: u64,
}

fn connect(base: &ConnectOptions, client_id: String) -> Result<StanConn, BenchError> {
    let opts = ConnectOptions {
        client_id: client_id.clone(),
        ..base.clone()
    };
    StanConn::connect(&opts).map_err(|e| BenchError::Client(client_id, e))
}

#[allow(clippy::too_many_arguments)]
fn start_subscriber(
    base: &ConnectOptions,
    id: String,
    channel: usize,
    subject: &str,
    queue: &str,
    start: StartPosition,
    max_inflight: i32,
    latency: Arc<Mutex<Histogram<u64>>>,
    progress: Arc<Progress>,
    end_marker: Option<Arc<Vec<u8>>>,
) -> Result<Subscriber, BenchError> {
    let conn = connect(base, id.clone())?;
    let track = Arc::new(SubTrack::default());
    let t = track.clone();
    let handler = Box::new(move |msg: &shards::wire::MsgView<'_>| {
        let now = now_nanos();
        if end_marker.as_deref().map(Vec::as_slice) == Some(msg.data) {
            t.last.store(now, Ordering::Relaxed);
            t.finished.store(true, Ordering::Relaxed);
            return;
        }
        if t.received.fetch_add(1, Ordering::Relaxed) == 0 {
            t.first.store(now, Ordering::Relaxed);
        }
        t.last.store(now, Ordering::Relaxed);
        progress.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(stamp) = msg.data.get(..8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(stamp);
            let sent = u64::from_le_bytes(b);
            if sent > 0 && sent <= now {
                if let Ok(mut h) = latency.lock() {
                    let _ = h.record((now - sent).max(1));
                }
            }
        }
    });
    let subscribed_at = now_nanos();
    conn.subscribe(subject, queue, start, max_inflight, handler)
        .map_err(|e| BenchError::Client(id, e))?;
    Ok(Subscriber {
        conn,
        channel,
        track,
        subscribed_at,
    })
}

/// Waits until every subscriber (or, for queue groups, every channel's group) has its
/// expected count.
fn wait_subscribers(
    subs: &[Subscriber],
    expected: &[u64],
    queue: bool,
    replay: bool,
    deadline: Instant,
    timeout: u64,
) -> Result<(), BenchError> {
    loop {
        let done = if replay {
            subs.iter()
                .all(|s| s.track.finished.load(Ordering::Relaxed))
        } else if queue {
            expected.iter().enumerate().all(|(ch, want)| {
                subs.iter()
                    .filter(|s| s.channel == ch)
                    .map(|s| s.track.received.load(Ordering::Relaxed))
                    .sum::<u64>()
                    >= *want
            })
        } else {
            subs.iter()
                .all(|s| s.track.received.load(Ordering::Relaxed) >= expected[s.channel])
        };
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            let got: u64 = subs
                .iter()
                .map(|s| s.track.received.load(Ordering::Relaxed))
                .sum();
            return Err(BenchError::Timeout(
                timeout,
                format!("subscribers received {got} messages"),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct PublishOutcome {
    samples: Vec<Sample>,
    ack_latency: Histogram<u64>,
}

fn publish_all(
    args: &BenchArgs,
    base: &ConnectOptions,
    channels: &[String],
    progress: &Arc<Progress>,
) -> Result<PublishOutcome, BenchError> {
    let counts = msgs_per_client(args.msgs, args.publishers);
    let mut conns = Vec::new();
    for i in 0..args.publishers {
        conns.push(connect(base, format!("{}-pub-{i}", args.client_id))?);
    }
    let barrier = Arc::new(Barrier::new(args.publishers));
    let sync = args.sync.unwrap_or(false);
    let timeout = Duration::from_secs(args.timeout);
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let barrier = barrier.clone();
            let subjects: Vec<String> = channels_of(i, args.publishers, channels.len())
                .into_iter()
                .map(|c| channels[c].clone())
                .collect();
            let count = counts[i];
            let size = args.msg_size;
            let progress = progress.clone();
            std::thread::spawn(move || -> Result<(Sample, Histogram<u64>), ClientError> {
                barrier.wait();
                let mut payload = vec![0u8; size];
                let mut batch = Vec::with_capacity(128 * 1024);
                let start = now_nanos();
                for n in 0..count {
                    if size >= 8 {
                        payload[..8].copy_from_slice(&now_nanos().to_le_bytes());
                    }
                    let subject = &subjects[(n % subjects.len() as u64) as usize];
                    conn.publish(subject, &payload, &mut batch)?;
                    if sync {
                        conn.flush(&mut batch)?;
                        conn.wait_acks(timeout)?;
                    } else if batch.len() >= 64 * 1024 {
                        conn.flush(&mut batch)?;
                    }
                    progress.published.fetch_add(1, Ordering::Relaxed);
                }
                conn.flush(&mut batch)?;
                conn.wait_acks(timeout)?;
                let end = now_nanos();
                let latency = conn.window().latency();
                conn.close()?;
                Ok((
                    Sample {
                        msgs: count,
                        msg_size: size,
                        start,
                        end,
                    },
                    latency,
                ))
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut ack_latency = new_histogram();
    for (i, h) in handles.into_iter().enumerate() {
        let who = format!("{}-pub-{i}", args.client_id);
        match h.join() {
            Ok(Ok((sample, latency))) => {
                samples.push(sample);
                let _ = ack_latency.add(&latency);
            }
            Ok(Err(e)) => return Err(BenchError::Client(who, e)),
            Err(_) => return Err(BenchError::Usage(format!("{who}: thread panicked"))),
        }
    }
    Ok(PublishOutcome {
        samples,
        ack_latency,
    })
}

/// Runs the benchmark and returns its report.
pub fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.creds.is_some() {
        return Err(BenchError::Usage(
            "-creds (NATS 2 JWT credentials) is not supported by stanza bench; use -u/-pw".into(),
        ));
    }
    if args.channels == 0 {
        return Err(BenchError::Usage("--channels must be at least 1".into()));
    }
    let replay = args.replay.unwrap_or(false);
    if args.publishers == 0 && args.subscribers == 0 {
        return Err(BenchError::Usage("nothing to do: -np 0 and -ns 0".into()));
    }
    let base = ConnectOptions {
        urls: args.urls.split(',').map(str::to_string).collect(),
        cluster_id: args.cluster_id.clone(),
        client_id: String::new(),
        user: args.user.clone(),
        password: args.password.clone(),
        tls: tls_config(args)?,
        max_pub_acks_inflight: if args.sync.unwrap_or(false) {
            1
        } else {
            args.max_pub_acks
        },
        // Connect, subscribe and close requests; a loaded server (1000 channels syncing) can
        // take seconds to answer a close.
        timeout: Duration::from_secs(30),
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let channels = channel_names(&args.subject, args.channels);
    let counts = msgs_per_client(args.msgs, args.publishers);
    let mut expected = vec![0u64; channels.len()];
    for (i, c) in counts.iter().enumerate() {
        spread(
            *c,
            &channels_of(i, args.publishers, channels.len()),
            &mut expected,
        );
    }
    let progress = Arc::new(Progress::default());
    let subscribers_total = if replay {
        args.subscribers.max(channels.len())
    } else {
        args.subscribers
    };
    let expected_sub: u64 = (0..subscribers_total)
        .map(|i| expected[i % channels.len()])
        .sum();
    let progress_thread = if std::io::stderr().is_terminal() && args.json != Some(true) {
        let p = progress.clone();
        let expected_pub = args.msgs;
        Some(std::thread::spawn(move || {
            show_progress(p, expected_pub, expected_sub)
        }))
    } else {
        None
    };
    let result = run_phases(
        args,
        &base,
        &channels,
        &expected,
        replay,
        subscribers_total,
        &progress,
        deadline,
    );
    progress.done.store(true, Ordering::Relaxed);
    if let Some(t) = progress_thread {
        let _ = t.join();
    }
    let report = result?;
    if let Some(path) = &args.csv {
        std::fs::write(path, report.csv(&args.client_id))
            .map_err(|e| BenchError::Write(path.clone(), e))?;
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn run_phases(
    args: &BenchArgs,
    base: &ConnectOptions,
    channels: &[String],
    expected: &[u64],
    replay: bool,
    subscribers_total: usize,
    progress: &Arc<Progress>,
    deadline: Instant,
) -> Result<Report, BenchError> {
    let delivery_latency = Arc::new(Mutex::new(new_histogram()));
    let start_position = if args.ignore_old.unwrap_or(false) {
        StartPosition::NewOnly
    } else {
        StartPosition::First
    };
    let subscribe =
        |i: usize, latency: Arc<Mutex<Histogram<u64>>>, end_marker: Option<Arc<Vec<u8>>>| {
            let channel = i % channels.len();
            start_subscriber(
                base,
                format!("{}-sub-{i}", args.client_id),
                channel,
                &channels[channel],
                if end_marker.is_some() {
                    ""
                } else {
                    &args.queue
                },
                if replay {
                    StartPosition::First
                } else {
                    start_position
                },
                args.sub_max_inflight,
                latency,
                progress.clone(),
                end_marker,
            )
        };
    let queue = !args.queue.is_empty();
    let mut live = Vec::new();
    if !replay {
        for i in 0..subscribers_total {
            live.push(subscribe(i, delivery_latency.clone(), None)?);
        }
    }
    let published = if args.publishers > 0 {
        publish_all(args, base, channels, progress)?
    } else {
        PublishOutcome {
            samples: Vec::new(),
            ack_latency: new_histogram(),
        }
    };
    wait_subscribers(&live, expected, queue, false, deadline, args.timeout)?;
    let sub_samples = samples_of(&live, args.msg_size, false);
    let mut placement = placement_of(&live, channels);
    for s in live {
        let _ = s.conn.close();
    }
    let mut replay_samples = Vec::new();
    if replay {
        // Replay latency since publish would only measure how long the fill took.
        let ignored = Arc::new(Mutex::new(new_histogram()));
        // The channels may hold more than this run published: each replayer reads until a
        // marker published after the fill, which is not counted.
        let marker =
            Arc::new(format!("stanza-bench-replay-end-{}", crate::util::nuid::nuid()).into_bytes());
        publish_markers(args, base, channels, &marker)?;
        let mut replayers = Vec::new();
        for i in 0..subscribers_total {
            replayers.push(subscribe(i, ignored.clone(), Some(marker.clone()))?);
        }
        wait_subscribers(&replayers, expected, false, true, deadline, args.timeout)?;
        replay_samples = samples_of(&replayers, args.msg_size, true);
        placement = placement_of(&replayers, channels);
        for s in replayers {
            let _ = s.conn.close();
        }
    }
    let delivery = delivery_latency
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| new_histogram());
    let mut report = Report::new(
        published.samples,
        sub_samples,
        &replay_samples,
        &published.ack_latency,
        &delivery,
        channels.len(),
    );
    (report.subscriber_cores, report.channel_cores) = placement.into_iter().unzip();
    Ok(report)
}

fn publish_markers(
    args: &BenchArgs,
    base: &ConnectOptions,
    channels: &[String],
    marker: &[u8],
) -> Result<(), BenchError> {
    let id = format!("{}-marker", args.client_id);
    let conn = connect(base, id.clone())?;
    let mut batch = Vec::new();
    let sent = channels
        .iter()
        .try_for_each(|c| conn.publish(c, marker, &mut batch))
        .and_then(|()| conn.flush(&mut batch))
        .and_then(|()| conn.wait_acks(Duration::from_secs(args.timeout)));
    sent.and_then(|()| conn.close())
        .map_err(|e| BenchError::Client(id, e))
}

/// (core holding the connection, core owning the channel) of each subscriber, when the
/// server is stanza.
fn placement_of(subs: &[Subscriber], channels: &[String]) -> Vec<(u64, u64)> {
    subs.iter()
        .filter_map(|s| {
            let (core, cores) = s.conn.server_core()?;
            let owner = shards::shard_for(channels.get(s.channel)?, cores as usize) as u64;
            Some((core, owner))
        })
        .collect()
}

fn samples_of(subs: &[Subscriber], msg_size: usize, from_subscribe: bool) -> Vec<Sample> {
    subs.iter()
        .filter(|s| s.track.received.load(Ordering::Relaxed) > 0)
        .map(|s| Sample {
            msgs: s.track.received.load(Ordering::Relaxed),
            msg_size,
            start: if from_subscribe {
                s.subscribed_at
            } else {
                s.track.first.load(Ordering::Relaxed)
            },
            end: s.track.last.load(Ordering::Relaxed),
        })
        .collect()
}

/// Entry point for `stanza bench ...`; returns the process exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let argv = crate::config::cli::normalize_args(argv);
    let args = match BenchArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if args.json != Some(true) {
        eprintln!(
            "Starting benchmark [msgs={}, msgsize={}, pubs={}, subs={}, channels={}{}]",
            args.msgs,
            args.msg_size,
            args.publishers,
            args.subscribers,
            args.channels,
            if args.replay == Some(true) {
                ", replay"
            } else {
                ""
            }
        );
    }
    match run(&args) {
        Ok(report) => {
            if args.json == Some(true) {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("stanza bench: {e}");
                        return 1;
                    }
                }
            } else {
                print!("{}", report.text());
                if let Some(path) = &args.csv {
                    println!("Saved metric data in csv file {}", path.display());
                }
            }
            0
        }
        Err(e) => {
            eprintln!("stanza bench: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> BenchArgs {
        let argv = crate::config::cli::normalize_args(
            std::iter::once("stanza-bench")
                .chain(args.iter().copied())
                .map(String::from),
        );
        BenchArgs::try_parse_from(argv).unwrap()
    }

    #[test]
    fn publishers_take_turns_on_their_share_of_the_channels() {
        assert_eq!(channels_of(3, 4, 2), vec![1]);
        assert_eq!(channels_of(3, 1000, 10_000).len(), 10);
        assert_eq!(channels_of(3, 1000, 10_000)[..2], [3, 1003]);
        let mut expected = vec![0u64; 10_000];
        for i in 0..1000 {
            spread(25, &channels_of(i, 1000, 10_000), &mut expected);
        }
        assert_eq!(expected.iter().sum::<u64>(), 25_000);
        assert_eq!((expected[3], expected[9003]), (3, 2));
    }

    #[test]
    fn stan_bench_command_lines_carry_over() {
        let a = parse(&[
            "-s",
            "nats://127.0.0.1:5000",
            "-c",
            "other",
            "-id",
            "b",
            "-np",
            "4",
            "-ns",
            "2",
            "-n",
            "1000",
            "-ms",
            "64",
            "-sync",
            "-mpa",
            "100",
            "-io",
            "-qgroup",
            "q",
            "-u",
            "me",
            "-pw",
            "secret",
            "foo",
        ]);
        assert_eq!(a.urls, "nats://127.0.0.1:5000");
        assert_eq!(a.cluster_id, "other");
        assert_eq!(
            (a.publishers, a.subscribers, a.msgs, a.msg_size),
            (4, 2, 1000, 64)
        );
        assert_eq!(
            (a.sync, a.ignore_old, a.max_pub_acks),
            (Some(true), Some(true), 100)
        );
        assert_eq!((a.queue.as_str(), a.subject.as_str()), ("q", "foo"));
        assert_eq!(
            (a.user.as_deref(), a.password.as_deref()),
            (Some("me"), Some("secret"))
        );
        let a = parse(&[
            "-sync=false",
            "--channels",
            "4",
            "--replay",
            "--json",
            "bar",
        ]);
        assert_eq!(
            (a.sync, a.channels, a.replay, a.json),
            (Some(false), 4, Some(true), Some(true))
        );
        assert_eq!((a.publishers, a.msgs, a.max_pub_acks), (10, 100_000, 512));
    }

    #[test]
    fn channels_are_numbered_only_when_several() {
        assert_eq!(channel_names("foo", 1), vec!["foo"]);
        assert_eq!(channel_names("foo", 3), vec!["foo.0", "foo.1", "foo.2"]);
    }
}
