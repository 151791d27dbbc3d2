//! The embedded NATS server's endpoints: `/varz`, `/connz`, `/routez`, `/subsz`, `/healthz`,
//! with nats-server 2.9's field names (stan-reference.md §3.7).

use super::format::{rfc3339, uptime};
use super::http::{Query, Reply};
use super::{page, paging, Monitor};
use crate::nats::wire::NATS_PROTOCOL_VERSION;
use crate::stan::snapshot::{ConnSnapshot, CoreSnapshot};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn sum(reports: &[CoreSnapshot], f: fn(&CoreSnapshot) -> u64) -> u64 {
    reports.iter().map(f).sum()
}

pub async fn varz(m: &Monitor) -> Reply {
    let reports = m.gather().await;
    let o = &m.opts;
    let core = &m.node.core;
    let connections: usize = reports.iter().map(|r| r.conns.len()).sum();
    let subscriptions: u64 = reports.iter().map(|r| r.sublist.count).sum::<u64>()
        + streaming_subscriptions(m).len() as u64;
    let tls = o.tls.as_ref();
    Reply::Json(json!({
        "server_id": &*core.server_id,
        "server_name": o.server_name.clone().unwrap_or_else(|| core.server_id.to_string()),
        "version": NATS_PROTOCOL_VERSION,
        "proto": 1,
        "go": format!("stanza {} (rust)", env!("CARGO_PKG_VERSION")),
        "host": o.host,
        "port": o.port,
        "auth_required": o.auth.required(),
        "tls_required": tls.is_some(),
        "tls_verify": tls.is_some_and(|t| t.verify),
        "max_connections": o.max_connections,
        "max_subscriptions": o.max_subscriptions,
        "ping_interval": nanos(o.ping_interval),
        "ping_max": o.ping_max,
        "http_host": m.http_host,
        "http_port": m.http_port,
        "http_base_path": o.http_base_path.clone().unwrap_or_default(),
        "https_port": o.https_port.unwrap_or(0),
        "auth_timeout": o.auth_timeout.as_secs_f64(),
        "max_control_line": o.max_control_line,
        "max_payload": o.max_payload,
        "max_pending": o.max_pending,
        "cluster": cluster_json(m),
        "gateway": {},
        "leaf": {},
        "mqtt": {},
        "websocket": {},
        "jetstream": {},
        "tls_timeout": tls.and_then(|t| t.timeout).map(|d| d.as_secs_f64()).unwrap_or(2.0),
        "write_deadline": nanos(o.write_deadline),
        "start": rfc3339(m.started),
        "now": rfc3339(SystemTime::now()),
        "uptime": uptime(m.started.elapsed().unwrap_or(Duration::ZERO)),
        "mem": rss_bytes(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "gomaxprocs": core.ncores,
        "cpu": 0.0,
        "connections": connections,
        "total_connections": sum(&reports, |r| r.total_connections),
        "routes": m.node.core.routes.links().len(),
        "remotes": 0,
        "leafnodes": 0,
        "in_msgs": sum(&reports, |r| r.in_msgs),
        "out_msgs": sum(&reports, |r| r.out_msgs),
        "in_bytes": sum(&reports, |r| r.in_bytes),
        "out_bytes": sum(&reports, |r| r.out_bytes),
        "slow_consumers": sum(&reports, |r| r.slow_consumers),
        "subscriptions": subscriptions,
        "http_req_stats": m.request_counts(),
        "config_load_time": rfc3339(m.started),
        "system_account": "",
    }))
}

fn conn_json(c: &ConnSnapshot, subs: bool) -> Value {
    let start = c.start.unwrap_or_else(SystemTime::now);
    let mut v = json!({
        "cid": c.cid,
        "kind": "Client",
        "type": "nats",
        "ip": c.ip,
        "port": c.port,
        "start": rfc3339(start),
        "last_activity": rfc3339(SystemTime::now()),
        "rtt": "0s",
        "uptime": uptime(start.elapsed().unwrap_or(Duration::ZERO)),
        "idle": "0s",
        "pending_bytes": c.pending_bytes,
        "in_msgs": c.in_msgs,
        "out_msgs": c.out_msgs,
        "in_bytes": c.in_bytes,
        "out_bytes": c.out_bytes,
        "subscriptions": c.subscriptions.len(),
        "name": c.name,
        "lang": c.lang,
        "version": c.version,
    });
    if let Some(o) = v.as_object_mut() {
        if !c.user.is_empty() {
            o.insert("authorized_user".into(), json!(c.user));
        }
        if subs && !c.subscriptions.is_empty() {
            o.insert("subscriptions_list".into(), json!(c.subscriptions));
        }
    }
    v
}

pub async fn connz(m: &Monitor, q: &Query) -> Reply {
    let reports = m.gather().await;
    let mut conns: Vec<&ConnSnapshot> = reports.iter().flat_map(|r| r.conns.iter()).collect();
    conns.sort_by_key(|c| c.cid);
    if let Some(cid) = q.get("cid").and_then(|c| c.parse::<u64>().ok()) {
        conns.retain(|c| c.cid == cid);
    }
    let subs = q
        .get("subs")
        .is_some_and(|v| v == "1" || v == "true" || v == "detail");
    let (offset, limit) = paging(q);
    let total = conns.len();
    let shown = page(conns, offset, limit);
    Reply::Json(json!({
        "server_id": &*m.node.core.server_id,
        "now": rfc3339(SystemTime::now()),
        "num_connections": shown.len(),
        "total": total,
        "offset": offset,
        "limit": limit,
        "connections": shown.iter().map(|c| conn_json(c, subs)).collect::<Vec<_>>(),
    }))
}

/// `/routez` (`?subs=1`): the routes of core 0, with nats-server's fields.
pub fn routez(m: &Monitor, q: &Query) -> Reply {
    let core = &m.node.core;
    let subs = q
        .get("subs")
        .is_some_and(|v| v == "1" || v == "true" || v == "detail");
    let routes: Vec<Value> = core
        .routes
        .links()
        .iter()
        .map(|link| {
            let conn = &link.conn;
            let up = link.started.elapsed().unwrap_or(Duration::ZERO);
            let mut r = json!({
                "rid": conn.cid,
                "remote_id": &*link.remote_id.borrow(),
                "remote_name": &*link.remote_name.borrow(),
                "did_solicit": link.solicited,
                "is_configured": link.configured_url.is_some(),
                "ip": conn.peer.get().map(|p| p.ip().to_string()).unwrap_or_default(),
                "port": conn.peer.get().map(|p| p.port()).unwrap_or(0),
                "start": rfc3339(link.started),
                "last_activity": rfc3339(SystemTime::now()),
                "rtt": "0s",
                "uptime": uptime(up),
                "idle": "0s",
                "pending_size": conn.pending(),
                "in_msgs": conn.in_msgs.get(),
                "out_msgs": conn.out_msgs.get(),
                "in_bytes": conn.in_bytes.get(),
                "out_bytes": conn.out_bytes.get(),
                "subscriptions": link.subscriptions().len(),
            });
            if subs {
                r["subscriptions_list"] = json!(link.subscriptions());
            }
            r
        })
        .collect();
    Reply::Json(json!({
        "server_id": &*core.server_id,
        "server_name": m.opts.server_name.clone().unwrap_or_else(|| core.server_id.to_string()),
        "now": rfc3339(SystemTime::now()),
        "import": null,
        "export": null,
        "num_routes": routes.len(),
        "routes": routes,
    }))
}

/// `/varz` `cluster`: what nats-server shows of its cluster port (empty without routes).
fn cluster_json(m: &Monitor) -> Value {
    let Some(c) = &m.opts.cluster else {
        return json!({});
    };
    let (addr, port) = crate::nats::route::listen_address(c)
        .unwrap_or_else(|| (c.host.clone().unwrap_or_else(|| "0.0.0.0".into()), 0));
    json!({
        "name": m.node.core.routes.cluster_name(),
        "addr": addr,
        "cluster_port": port,
        "auth_timeout": 2,
        "urls": c.routes,
        "tls_timeout": 2,
    })
}

/// The streaming server's own subscriptions on the embedded server (none with `-ns`: they are
/// on the external server, which reports them).
fn streaming_subscriptions(m: &Monitor) -> Vec<String> {
    if m.opts.streaming.nats_server.is_some() {
        return Vec::new();
    }
    m.node.served_subjects()
}

pub async fn subsz(m: &Monitor, q: &Query) -> Reply {
    let reports = m.gather().await;
    let internal = streaming_subscriptions(m);
    let count: u64 = reports.iter().map(|r| r.sublist.count).sum::<u64>() + internal.len() as u64;
    let matches: u64 = reports.iter().map(|r| r.sublist.matches).sum();
    let hits: u64 = reports.iter().map(|r| r.sublist.cache_hits).sum();
    let (offset, limit) = paging(q);
    let mut v = json!({
        "server_id": &*m.node.core.server_id,
        "now": rfc3339(SystemTime::now()),
        "num_subscriptions": count,
        "num_cache": 0,
        "num_inserts": reports.iter().map(|r| r.sublist.inserts).sum::<u64>(),
        "num_removes": reports.iter().map(|r| r.sublist.removes).sum::<u64>(),
        "num_matches": matches,
        "cache_hit_rate": if matches == 0 { 0.0 } else { hits as f64 / matches as f64 },
        "max_fanout": 0,
        "avg_fanout": 0.0,
        "total": count,
        "offset": offset,
        "limit": limit,
    });
    if q.get("subs")
        .is_some_and(|v| v == "1" || v == "true" || v == "detail")
    {
        // The streaming server's subscriptions first, under connection ID 0 (an internal
        // client of the server, not a socket).
        let mut list: Vec<Value> = internal
            .iter()
            .map(|s| json!({"subject": s, "cid": 0}))
            .chain(reports.iter().flat_map(|r| r.conns.iter()).flat_map(|c| {
                c.subscriptions
                    .iter()
                    .map(move |s| json!({"subject": s, "cid": c.cid}))
            }))
            .collect();
        list = page(list, offset, limit);
        if let Some(o) = v.as_object_mut() {
            o.insert("subscriptions_list".into(), Value::Array(list));
        }
    }
    Reply::Json(v)
}

pub fn healthz(_m: &Monitor) -> Reply {
    Reply::Json(json!({"status": "ok"}))
}
