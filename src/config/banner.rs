//! The startup banner: the streaming server's identity, its store and the store limits table
//! in the reference's layout (`*` marks values left at their defaults), and the configured
//! features this build does not serve yet (the server refuses to start with them).

use super::streaming::StoreType;
use super::Options;
use crate::util::go_duration;
use shards::limits::{ChannelLimits, ResolvedLimits, StoreLimits};

/// The reference version whose behaviour stanza matches.
pub const COMPATIBLE_WITH: &str = "0.25.6";

pub fn streaming_lines(o: &Options) -> Vec<String> {
    let s = &o.streaming;
    let mut lines = vec![
        format!(
            "Starting stanza[{}] version {} (nats-streaming-server {COMPATIBLE_WITH} compatible)",
            s.cluster_id,
            env!("CARGO_PKG_VERSION")
        ),
        format!("Message store is {}", s.store.name()),
    ];
    if s.store == StoreType::File {
        if let Some(dir) = &s.dir {
            lines.push(format!("Store location: {}", dir.display()));
        }
    }
    // validate() built these already; an error here cannot happen, but stay quiet if it does.
    if let Ok(limits) = s.store_limits.to_limits().build() {
        lines.extend(limits_table(&limits));
    }
    lines
}

/// A configured feature this build does not serve yet: where it may be set and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbuilt {
    /// Key paths that set it in a configuration file, most specific first.
    pub keys: &'static [&'static str],
    /// The flags (or environment) that set it.
    pub flags: &'static str,
    pub what: &'static str,
}

/// Configured features that this build does not serve: the server refuses to start with them
/// rather than run without them (an FT config on a shared directory would otherwise give
/// several writers on one store).
pub fn unbuilt_features(o: &Options) -> Vec<Unbuilt> {
    let s = &o.streaming;
    let mut out = Vec::new();
    let mut note = |configured: bool, keys, flags, what| {
        if configured {
            out.push(Unbuilt { keys, flags, what });
        }
    };
    // NATS routes are built (not with an external NATS server).
    let cluster = o.cluster.as_ref();
    note(
        cluster.is_some() && s.nats_server.is_some(),
        &["cluster"],
        "--cluster with -ns",
        "routes of the embedded NATS server while using an external one (-ns)",
    );
    note(
        s.store == StoreType::Sql,
        &["streaming.store", "store"],
        "-st / --store",
        "the SQL store",
    );
    note(
        s.encrypt,
        &[
            "streaming.encrypt",
            "encrypt",
            "streaming.encryption_key",
            "encryption_key",
        ],
        "--encrypt / --encryption_key / NATS_STREAMING_ENCRYPTION_KEY",
        "encryption at rest",
    );
    out
}

/// nats-server 2.9 features this build does not have, recognised by their configuration keys
/// (which the options model does not know): a file that sets one refuses to start, since
/// running without it would open what it closes (permissions, accounts) or drop what it
/// connects (gateways, leaf nodes). What the key sets, if `path` (dotted, list items by index)
/// is one of them.
pub fn unbuilt_key(path: &str) -> Option<&'static str> {
    let segments: Vec<String> = path.split('.').map(str::to_ascii_lowercase).collect();
    let first = segments.first().map(String::as_str).unwrap_or("");
    if segments
        .iter()
        .any(|s| s == "permissions" || s == "default_permissions")
    {
        return Some(if first == "cluster" {
            "route permissions"
        } else {
            "publish/subscribe permissions"
        });
    }
    if segments.iter().any(|s| s == "nkey") {
        return Some("nkey authentication");
    }
    match first {
        "accounts" | "no_auth_user" | "system_account" | "operator" | "operators" | "resolver"
        | "resolver_preload" | "trusted" | "trusted_keys" => {
            Some("accounts and JWT authentication")
        }
        "gateway" => Some("gateways (super-clusters)"),
        "leafnodes" | "leaf" => Some("leaf nodes"),
        "websocket" | "ws" => Some("WebSocket clients"),
        "mqtt" => Some("MQTT clients"),
        "jetstream" => Some("JetStream"),
        _ => None,
    }
}

const TITLE: &str = "---------- Store Limits ----------";

fn limits_table(limits: &ResolvedLimits) -> Vec<String> {
    let defaults = StoreLimits::default();
    let mut txt = vec![
        TITLE.to_string(),
        format!(
            "Channels:        {}",
            limit_str(
                true,
                limits.max_channels,
                defaults.max_channels,
                Kind::Count
            )
        ),
        "--------- Channels Limits --------".to_string(),
    ];
    txt.extend(global_lines(&limits.global, &defaults.global));
    let mut max_len = TITLE.len();
    if !limits.entries.is_empty() {
        let max_levels = limits
            .entries
            .iter()
            .map(|e| e.name.split('.').count())
            .max()
            .unwrap_or(1);
        let mut channel_lines = Vec::new();
        for e in &limits.entries {
            let parent = match e.parent {
                Some(p) => &limits.entries[p].limits,
                None => &limits.global,
            };
            let level = e.depth - 1;
            let pad_left = " ".repeat(level);
            let pad_right = " ".repeat(max_levels.saturating_sub(level));
            let mut lines = vec![format!("{pad_left}{}", e.name)];
            for (label, value) in overrides(&e.limits, parent) {
                lines.push(format!("{pad_left} |-> {label}{pad_right}{value}"));
            }
            for l in &lines {
                max_len = max_len.max(l.chars().count());
            }
            channel_lines.extend(lines);
        }
        let title = " List of Channels ";
        let left = (max_len.saturating_sub(title.len())) / 2;
        let right = max_len.saturating_sub(title.len()) - left;
        txt.push(format!("{}{title}{}", "-".repeat(left), "-".repeat(right)));
        txt.extend(channel_lines);
    }
    txt.push("-".repeat(max_len));
    txt
}

#[derive(Clone, Copy)]
enum Kind {
    Count,
    Bytes,
    Duration,
}

fn global_lines(l: &ChannelLimits, d: &ChannelLimits) -> Vec<String> {
    vec![
        format!(
            "  Subscriptions: {}",
            limit_str(true, l.max_subs, d.max_subs, Kind::Count)
        ),
        format!(
            "  Messages     : {}",
            limit_str(true, l.max_msgs, d.max_msgs, Kind::Count)
        ),
        format!(
            "  Bytes        : {}",
            limit_str(true, l.max_bytes, d.max_bytes, Kind::Bytes)
        ),
        format!(
            "  Age          : {}",
            limit_str(true, nanos(l.max_age), nanos(d.max_age), Kind::Duration)
        ),
        format!(
            "  Inactivity   : {}",
            limit_str(
                true,
                nanos(l.max_inactivity),
                nanos(d.max_inactivity),
                Kind::Duration
            )
        ),
    ]
}

/// The limits of a channel entry that differ from its parent's, labelled.
fn overrides(l: &ChannelLimits, p: &ChannelLimits) -> Vec<(&'static str, String)> {
    [
        (
            "Subscriptions ",
            limit_str(false, l.max_subs, p.max_subs, Kind::Count),
        ),
        (
            "Messages      ",
            limit_str(false, l.max_msgs, p.max_msgs, Kind::Count),
        ),
        (
            "Bytes         ",
            limit_str(false, l.max_bytes, p.max_bytes, Kind::Bytes),
        ),
        (
            "Age           ",
            limit_str(false, nanos(l.max_age), nanos(p.max_age), Kind::Duration),
        ),
        (
            "Inactivity    ",
            limit_str(
                false,
                nanos(l.max_inactivity),
                nanos(p.max_inactivity),
                Kind::Duration,
            ),
        ),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .collect()
}

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// A global value is always printed (with `*` when it equals the default); a per-channel
/// value only when it differs from its parent's.
fn limit_str(global: bool, value: i64, parent: i64, kind: Kind) -> String {
    if !global && value == parent {
        return String::new();
    }
    let inherited = if value == parent { " *" } else { "" };
    let text = if value == 0 {
        "unlimited".to_string()
    } else {
        match kind {
            Kind::Count => value.to_string(),
            Kind::Bytes => friendly_bytes(value),
            Kind::Duration => go_duration::format(std::time::Duration::from_nanos(value as u64)),
        }
    };
    format!("{text:>13}{inherited}")
}

/// Bytes as the reference prints them: `976.56 MB`, `512 B`.
pub fn friendly_bytes(bytes: i64) -> String {
    let b = bytes as f64;
    if b < 1024.0 {
        return format!("{bytes} B");
    }
    let exp = (b.ln() / 1024f64.ln()) as i32;
    let prefix = ["K", "M", "G", "T", "P", "E"][(exp - 1).clamp(0, 5) as usize];
    format!("{:.2} {prefix}B", b / 1024f64.powi(exp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::{normalize_args, Cli};
    use clap::Parser;

    #[test]
    fn default_limits_table_matches_the_reference() {
        let cli = Cli::try_parse_from(normalize_args(["stanza".to_string()])).unwrap();
        let (o, _) = cli.build_options().unwrap();
        let lines = streaming_lines(&o);
        let table: Vec<&str> = lines[2..].iter().map(String::as_str).collect();
        assert_eq!(
            table,
            vec![
                "---------- Store Limits ----------",
                "Channels:                  100 *",
                "--------- Channels Limits --------",
                "  Subscriptions:          1000 *",
                "  Messages     :       1000000 *",
                "  Bytes        :     976.56 MB *",
                "  Age          :     unlimited *",
                "  Inactivity   :     unlimited *",
                "----------------------------------",
            ]
        );
    }

    #[test]
    fn per_channel_lines_show_only_overrides() {
        let text = "streaming { store_limits { max_msgs: 100, channels { \"foo.>\": { max_msgs: 50 }, \"foo.bar\": { max_age: \"1h\", max_msgs: 50 } } } }";
        let root = crate::config::de::document(
            crate::config::conf::parse_str(text, "t.conf").unwrap(),
            "t.conf",
        );
        let mut o = Options::default();
        let block = match &root.value {
            crate::config::conf::Value::Map(m) => crate::config::conf::get(m, "streaming").unwrap(),
            _ => unreachable!(),
        };
        o.streaming = crate::config::de::from_value(block).unwrap();
        let lines = streaming_lines(&o);
        let joined = lines.join("\n");
        assert!(
            joined.contains("  Messages     :           100\n"),
            "{joined}"
        );
        assert!(joined.contains("foo.>\n |-> Messages      "), "{joined}");
        assert!(joined.contains("  |-> Age            "), "{joined}");
        assert!(!joined.contains(" foo.bar\n  |-> Messages"), "{joined}");
    }

    #[test]
    fn friendly_bytes_like_go() {
        assert_eq!(friendly_bytes(1_024_000_000), "976.56 MB");
        assert_eq!(friendly_bytes(512), "512 B");
        assert_eq!(friendly_bytes(1 << 20), "1.00 MB");
    }
}
