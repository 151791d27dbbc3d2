//! `/streaming/serverz`, `/storez`, `/clientsz`, `/channelsz`: the reference's JSON
//! (stan-reference.md §3.2-3.5), built from every core's snapshot.

use super::format::{rfc3339, uptime};
use super::http::{Query, Reply};
use super::{page, paging, Monitor};
use crate::config::banner::COMPATIBLE_WITH;
use crate::stan::snapshot::{ChannelSnapshot, CoreSnapshot, SubSnapshot};
use serde_json::{json, Map, Value};
use std::time::{Duration, SystemTime};

fn now() -> String {
    rfc3339(SystemTime::now())
}

fn channels(reports: &[CoreSnapshot]) -> Vec<&ChannelSnapshot> {
    let mut all: Vec<&ChannelSnapshot> = reports.iter().flat_map(|r| r.channels.iter()).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

fn clients(reports: &[CoreSnapshot]) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = reports
        .iter()
        .flat_map(|r| r.clients.iter().cloned())
        .collect();
    all.sort();
    all
}

/// Open and maximum file descriptors, from /proc and the rlimit.
fn fds() -> (Option<usize>, Option<u64>) {
    let open = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count());
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let max =
        (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur);
    (open, max)
}

/// The header of a paged list (`channelsz`, `clientsz`).
fn list_header(
    m: &Monitor,
    offset: usize,
    limit: usize,
    count: usize,
    total: usize,
) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("cluster_id".into(), json!(m.opts.streaming.cluster_id));
    o.insert("server_id".into(), json!(m.node.role.server_id));
    o.insert("now".into(), json!(now()));
    o.insert("offset".into(), json!(offset));
    o.insert("limit".into(), json!(limit));
    o.insert("count".into(), json!(count));
    o.insert("total".into(), json!(total));
    o
}

pub async fn serverz(m: &Monitor) -> Reply {
    let reports = m.gather().await;
    let chans = channels(&reports);
    let subscriptions: usize = chans.iter().map(|c| c.subs.len()).sum();
    let total_msgs: u64 = chans.iter().map(|c| c.msgs).sum();
    let total_bytes: u64 = chans.iter().map(|c| c.bytes).sum();
    let sum = |f: fn(&CoreSnapshot) -> u64| reports.iter().map(f).sum::<u64>();
    let (open_fds, max_fds) = fds();
    let mut v = json!({
        "cluster_id": m.opts.streaming.cluster_id,
        "server_id": m.node.role.server_id,
        "version": COMPATIBLE_WITH,
        "go": format!("stanza {} (rust)", env!("CARGO_PKG_VERSION")),
        "state": m.node.role.state().name(),
        "now": now(),
        "start_time": rfc3339(m.started),
        "uptime": uptime(m.started.elapsed().unwrap_or(Duration::ZERO)),
        "clients": clients(&reports).len(),
        "subscriptions": subscriptions,
        "channels": chans.len(),
        "total_msgs": total_msgs,
        "total_bytes": total_bytes,
        "in_msgs": sum(|r| r.stan_in_msgs),
        "in_bytes": sum(|r| r.stan_in_bytes),
        "out_msgs": sum(|r| r.stan_out_msgs),
        "out_bytes": sum(|r| r.stan_out_bytes),
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(setup) = &m.node.role.cluster {
            if let Some(role) = super::clusterz::node_role(m) {
                obj.insert("role".into(), json!(role));
            }
            obj.insert("node_id".into(), json!(setup.node_name));
        }
        if let Some(n) = open_fds {
            obj.insert("open_fds".into(), json!(n));
        }
        if let Some(n) = max_fds {
            obj.insert("max_fds".into(), json!(n));
        }
    }
    Reply::Json(v)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn limits_json(l: &shards::limits::ChannelLimits) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("max_msgs".into(), json!(l.max_msgs));
    m.insert("max_bytes".into(), json!(l.max_bytes));
    m.insert("max_age".into(), json!(nanos(l.max_age)));
    m.insert("max_subscriptions".into(), json!(l.max_subs));
    m.insert("max_inactivity".into(), json!(nanos(l.max_inactivity)));
    m
}

pub async fn storez(m: &Monitor) -> Reply {
    let reports = m.gather().await;
    let chans = channels(&reports);
    let mut limits = Map::new();
    if let Ok(built) = m.opts.streaming.store_limits.to_limits().build() {
        limits.insert("max_channels".into(), json!(built.max_channels));
        limits.extend(limits_json(&built.global));
        if !built.entries.is_empty() {
            let per: Map<String, Value> = built
                .entries
                .iter()
                .map(|e| (e.name.clone(), Value::Object(limits_json(&e.limits))))
                .collect();
            limits.insert("channels".into(), Value::Object(per));
        }
    }
    Reply::Json(json!({
        "cluster_id": m.opts.streaming.cluster_id,
        "server_id": m.node.role.server_id,
        "now": now(),
        "type": match &m.node.role.cluster {
            Some(_) => format!("RAFT_{}", m.opts.streaming.store.name()),
            None => m.opts.streaming.store.name().to_string(),
        },
        "limits": limits,
        "total_msgs": chans.iter().map(|c| c.msgs).sum::<u64>(),
        "total_bytes": chans.iter().map(|c| c.bytes).sum::<u64>(),
    }))
}

fn subscription_json(s: &SubSnapshot) -> Value {
    let mut o = Map::new();
    o.insert("client_id".into(), json!(s.client_id));
    o.insert("inbox".into(), json!(s.inbox));
    o.insert("ack_inbox".into(), json!(s.ack_inbox));
    if !s.durable_name.is_empty() {
        o.insert("durable_name".into(), json!(s.durable_name));
    }
    if !s.queue_name.is_empty() {
        o.insert("queue_name".into(), json!(s.queue_name));
    }
    o.insert("is_durable".into(), json!(s.is_durable));
    o.insert("is_offline".into(), json!(s.is_offline));
    o.insert("max_inflight".into(), json!(s.max_inflight));
    o.insert("ack_wait".into(), json!(s.ack_wait_secs));
    o.insert("last_sent".into(), json!(s.last_sent));
    o.insert("pending_count".into(), json!(s.pending_count));
    o.insert("is_stalled".into(), json!(s.is_stalled));
    Value::Object(o)
}

fn channel_json(c: &ChannelSnapshot, with_subs: bool) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(c.name));
    o.insert("msgs".into(), json!(c.msgs));
    o.insert("bytes".into(), json!(c.bytes));
    o.insert("first_seq".into(), json!(c.first_seq));
    o.insert("last_seq".into(), json!(c.last_seq));
    o.insert("subs_count".into(), json!(c.subs.len()));
    if with_subs && !c.subs.is_empty() {
        o.insert(
            "subscriptions".into(),
            Value::Array(c.subs.iter().map(subscription_json).collect()),
        );
    }
    Value::Object(o)
}

pub async fn channelsz(m: &Monitor, q: &Query) -> Reply {
    let reports = m.gather().await;
    let chans = channels(&reports);
    let with_subs = q.get("subs").is_some_and(|v| v == "1");
    if let Some(name) = q.get("channel") {
        return match chans.iter().find(|c| &c.name == name) {
            Some(c) => Reply::Json(channel_json(c, with_subs)),
            None => Reply::NotFound(format!("Channel {name} not found\n")),
        };
    }
    let (offset, limit) = paging(q);
    let total = chans.len();
    let shown = page(chans, offset, limit);
    let mut obj = list_header(m, offset, limit, shown.len(), total);
    {
        if with_subs {
            obj.insert(
                "channels".into(),
                Value::Array(shown.iter().map(|c| channel_json(c, true)).collect()),
            );
        } else {
            obj.insert(
                "names".into(),
                Value::Array(shown.iter().map(|c| json!(c.name)).collect()),
            );
        }
    }
    Reply::Json(Value::Object(obj))
}

fn client_json(id: &str, hb: &str, chans: &[&ChannelSnapshot], with_subs: bool) -> Value {
    let mut per_channel = Map::new();
    let mut count = 0;
    for c in chans {
        let mine: Vec<Value> = c
            .subs
            .iter()
            .filter(|s| s.client_id == id && !s.is_offline)
            .map(subscription_json)
            .collect();
        count += mine.len();
        if !mine.is_empty() {
            per_channel.insert(c.name.clone(), Value::Array(mine));
        }
    }
    let mut o = Map::new();
    o.insert("id".into(), json!(id));
    o.insert("hb_inbox".into(), json!(hb));
    o.insert("subs_count".into(), json!(count));
    if with_subs && !per_channel.is_empty() {
        o.insert("subscriptions".into(), Value::Object(per_channel));
    }
    Value::Object(o)
}

pub async fn clientsz(m: &Monitor, q: &Query) -> Reply {
    let reports = m.gather().await;
    let chans = channels(&reports);
    let all = clients(&reports);
    let with_subs = q.get("subs").is_some_and(|v| v == "1");
    if let Some(id) = q.get("client") {
        return match all.iter().find(|(c, _)| c == id) {
            Some((c, hb)) => Reply::Json(client_json(c, hb, &chans, with_subs)),
            None => Reply::NotFound(format!("Client {id} not found\n")),
        };
    }
    let (offset, limit) = paging(q);
    let total = all.len();
    let shown = page(all, offset, limit);
    let mut obj = list_header(m, offset, limit, shown.len(), total);
    obj.insert(
        "clients".into(),
        Value::Array(
            shown
                .iter()
                .map(|(c, hb)| client_json(c, hb, &chans, with_subs))
                .collect(),
        ),
    );
    Reply::Json(Value::Object(obj))
}
