//! Figures of one `stanza bench` run: per-client samples (messages over a time span), their
//! aggregate rates in stan-bench's report layout, latency percentiles, CSV and JSON.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// One client's messages over the span from its first to its last message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub msgs: u64,
    pub msg_size: usize,
    /// Start and end in nanoseconds on a clock shared by every sample of a run.
    pub start: u64,
    pub end: u64,
}

impl Sample {
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end.saturating_sub(self.start).max(1))
    }

    pub fn rate(&self) -> f64 {
        self.msgs as f64 / self.duration().as_secs_f64()
    }

    pub fn bytes_per_sec(&self) -> f64 {
        self.rate() * self.msg_size as f64
    }
}

/// Several clients' samples together: total messages over the union of their spans.
pub fn aggregate(samples: &[Sample]) -> Option<Sample> {
    let first = samples.first()?;
    Some(Sample {
        msgs: samples.iter().map(|s| s.msgs).sum(),
        msg_size: first.msg_size,
        start: samples.iter().map(|s| s.start).min().unwrap_or(first.start),
        end: samples.iter().map(|s| s.end).max().unwrap_or(first.end),
    })
}

/// Minimum, mean, maximum and population standard deviation of the clients' rates.
pub fn rate_spread(samples: &[Sample]) -> (f64, f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    let rates: Vec<f64> = samples.iter().map(Sample::rate).collect();
    let n = rates.len() as f64;
    let mean = rates.iter().sum::<f64>() / n;
    let var = rates.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / n;
    let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rates.iter().copied().fold(0.0, f64::max);
    (min, mean, max, var.sqrt())
}

/// `n` messages split over `clients` as stan-bench does: the remainder goes to the first ones.
pub fn msgs_per_client(n: u64, clients: usize) -> Vec<u64> {
    if clients == 0 {
        return Vec::new();
    }
    let base = n / clients as u64;
    let extra = (n % clients as u64) as usize;
    (0..clients).map(|i| base + u64::from(i < extra)).collect()
}

/// 1234567.8 -> "1,234,568".
pub fn commas(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes per second in the units nats bench prints.
pub fn human_bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = v;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |nanos: u64| nanos as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        })
    }

    fn line(&self, what: &str) -> String {
        format!(
            "{what} latency (us): p50 {:.0} | p90 {:.0} | p99 {:.0} | p99.9 {:.0} | max {:.0} ({} msgs)\n",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us, self.count
        )
    }
}

/// What a run measured, as printed and as `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct RateFigures {
    pub msgs: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub bytes_per_sec: f64,
    pub clients: Vec<f64>,
}

impl RateFigures {
    pub fn of(samples: &[Sample]) -> Option<RateFigures> {
        let all = aggregate(samples)?;
        Some(RateFigures {
            msgs: all.msgs,
            seconds: all.duration().as_secs_f64(),
            msgs_per_sec: all.rate(),
            bytes_per_sec: all.bytes_per_sec(),
            clients: samples.iter().map(Sample::rate).collect(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub msg_size: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub channels: usize,
    pub overall: Option<RateFigures>,
    #[serde(rename = "pub")]
    pub publish: Option<RateFigures>,
    #[serde(rename = "sub")]
    pub subscribe: Option<RateFigures>,
    pub replay: Option<RateFigures>,
    pub publish_to_puback: Option<Latency>,
    pub publish_to_delivery: Option<Latency>,
    /// For a stanza server, per subscriber (the replaying ones in a replay run): the core
    /// holding its connection and the core owning its channel. Figures differ with them: a
    /// subscriber on its channel's core costs no hop between cores.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscriber_cores: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channel_cores: Vec<u64>,
    #[serde(skip)]
    pub pub_samples: Vec<Sample>,
    #[serde(skip)]
    pub sub_samples: Vec<Sample>,
}

impl Report {
    pub fn new(
        pub_samples: Vec<Sample>,
        sub_samples: Vec<Sample>,
        replay: &[Sample],
        acks: &Histogram<u64>,
        deliveries: &Histogram<u64>,
        channels: usize,
    ) -> Report {
        let all: Vec<Sample> = pub_samples.iter().chain(&sub_samples).copied().collect();
        Report {
            msg_size: all
                .first()
                .or(replay.first())
                .map(|s| s.msg_size)
                .unwrap_or(0),
            publishers: pub_samples.len(),
            subscribers: sub_samples.len(),
            channels,
            overall: RateFigures::of(&all),
            publish: RateFigures::of(&pub_samples),
            subscribe: RateFigures::of(&sub_samples),
            replay: RateFigures::of(replay),
            publish_to_puback: Latency::from_histogram(acks),
            publish_to_delivery: Latency::from_histogram(deliveries),
            subscriber_cores: Vec::new(),
            channel_cores: Vec::new(),
            pub_samples,
            sub_samples,
        }
    }

    /// The text report, laid out as stan-bench's so that scripts reading it keep working.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let kind = match (self.publishers, self.subscribers) {
            (_, 0) => "Pub",
            (0, _) => "Sub",
            _ => "Pub/Sub",
        };
        if let Some(all) = &self.overall {
            let _ = writeln!(
                out,
                "NATS Streaming {kind} stats: {} msgs/sec ~ {}/sec",
                commas(all.msgs_per_sec),
                human_bytes(all.bytes_per_sec)
            );
        }
        group(&mut out, " Pub stats", &self.pub_samples);
        group(&mut out, " Sub stats", &self.sub_samples);
        if let Some(r) = &self.replay {
            let _ = writeln!(
                out,
                "Replay stats: {} msgs/sec ~ {}/sec ({} msgs in {:.3} s)",
                commas(r.msgs_per_sec),
                human_bytes(r.bytes_per_sec),
                r.msgs,
                r.seconds
            );
        }
        if let Some(l) = &self.publish_to_puback {
            out.push_str(&l.line("Publish->PubAck"));
        }
        if let Some(l) = &self.publish_to_delivery {
            out.push_str(&l.line("Publish->delivery"));
        }
        out
    }

    /// The CSV layout of stan-bench's `-csv`.
    pub fn csv(&self, run_id: &str) -> String {
        let mut out = String::from(
            "#RunID, ClientID, MsgCount, MsgBytes, MsgsPerSec, BytesPerSec, DurationSecs\n",
        );
        for (prefix, samples) in [("P", &self.pub_samples), ("S", &self.sub_samples)] {
            for (i, s) in samples.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{run_id},{prefix}{i},{},{},{:.0},{:.2},{:.6}",
                    s.msgs,
                    s.msgs * s.msg_size as u64,
                    s.rate(),
                    s.bytes_per_sec(),
                    s.duration().as_secs_f64()
                );
            }
        }
        out
    }
}

fn group(out: &mut String, title: &str, samples: &[Sample]) {
    let Some(all) = aggregate(samples) else {
        return;
    };
    let _ = writeln!(
        out,
        "{title}: {} msgs/sec ~ {}/sec",
        commas(all.rate()),
        human_bytes(all.bytes_per_sec())
    );
    if samples.len() > 1 {
        for (i, s) in samples.iter().enumerate() {
            let _ = writeln!(
                out,
                "  [{}] {} msgs/sec ~ {}/sec ({} msgs)",
                i + 1,
                commas(s.rate()),
                human_bytes(s.bytes_per_sec()),
                s.msgs
            );
        }
        let (min, avg, max, dev) = rate_spread(samples);
        let _ = writeln!(
            out,
            "  min {} | avg {} | max {} | stddev {} msgs",
            commas(min),
            commas(avg),
            commas(max),
            commas(dev)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(msgs: u64, start_ms: u64, end_ms: u64) -> Sample {
        Sample {
            msgs,
            msg_size: 128,
            start: start_ms * 1_000_000,
            end: end_ms * 1_000_000,
        }
    }

    #[test]
    fn rates_and_aggregates() {
        let a = s(1000, 0, 500);
        assert!((a.rate() - 2000.0).abs() < 1e-6);
        assert!((a.bytes_per_sec() - 256_000.0).abs() < 1e-3);
        let all = aggregate(&[a, s(3000, 250, 1000)]).unwrap();
        assert_eq!((all.msgs, all.start, all.end), (4000, 0, 1_000_000_000));
        assert!((all.rate() - 4000.0).abs() < 1e-6);
        assert_eq!(aggregate(&[]), None);
        // A zero-length span counts as one nanosecond instead of dividing by zero.
        assert!(s(1, 5, 5).rate().is_finite());
    }

    #[test]
    fn spread_of_client_rates() {
        let (min, avg, max, dev) = rate_spread(&[s(1000, 0, 1000), s(3000, 0, 1000)]);
        assert_eq!((min, avg, max, dev), (1000.0, 2000.0, 3000.0, 1000.0));
        assert_eq!(rate_spread(&[]), (0.0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn split_like_stan_bench() {
        assert_eq!(msgs_per_client(10, 3), vec![4, 3, 3]);
        assert_eq!(msgs_per_client(9, 3), vec![3, 3, 3]);
        assert_eq!(msgs_per_client(2, 4), vec![1, 1, 0, 0]);
        assert!(msgs_per_client(5, 0).is_empty());
    }

    #[test]
    fn number_formats() {
        assert_eq!(commas(1_234_567.8), "1,234,568");
        assert_eq!(commas(999.0), "999");
        assert_eq!(commas(1000.0), "1,000");
        assert_eq!(commas(0.0), "0");
        assert_eq!(human_bytes(512.0), "512.00 B");
        assert_eq!(human_bytes(15.07 * 1024.0 * 1024.0), "15.07 MB");
    }

    #[test]
    fn percentiles_from_histogram() {
        let mut h = crate::bench::stan::window::new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::from_histogram(&h).unwrap();
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() <= 1.0, "{l:?}");
        assert!((l.p90_us - 900.0).abs() <= 1.0, "{l:?}");
        assert!((l.p99_us - 990.0).abs() <= 1.0, "{l:?}");
        assert!((l.max_us - 1000.0).abs() <= 1.0, "{l:?}");
        assert_eq!(
            Latency::from_histogram(&crate::bench::stan::window::new_histogram()),
            None
        );
    }

    #[test]
    fn report_layout_matches_stan_bench() {
        let empty = crate::bench::stan::window::new_histogram();
        let r = Report::new(
            vec![s(1000, 0, 1000), s(1000, 0, 500)],
            vec![s(2000, 0, 1000)],
            &[],
            &empty,
            &empty,
            1,
        );
        let text = r.text();
        assert!(
            text.starts_with("NATS Streaming Pub/Sub stats: 4,000 msgs/sec"),
            "{text}"
        );
        assert!(text.contains("\n Pub stats: 2,000 msgs/sec"), "{text}");
        assert!(text.contains("  [2] 2,000 msgs/sec"), "{text}");
        assert!(
            text.contains("  min 1,000 | avg 1,500 | max 2,000 | stddev 500 msgs"),
            "{text}"
        );
        assert!(text.contains("\n Sub stats: 2,000 msgs/sec"), "{text}");
        let csv = r.csv("run1");
        assert_eq!(csv.lines().count(), 4);
        assert!(
            csv.contains("run1,P1,1000,128000,2000,256000.00,0.500000"),
            "{csv}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["pub"]["msgs"], 2000);
        assert_eq!(json["sub"]["msgs_per_sec"], 2000.0);
        assert!(json["replay"].is_null());
    }
}
