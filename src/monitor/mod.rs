//! HTTP(S) monitoring: the embedded NATS server's endpoints (`/varz`, `/connz`, ...) and the
//! streaming ones (`/streaming/*`) with the reference's JSON field names, served from core 0
//! with figures gathered from every core.

pub mod clusterz;
pub mod format;
pub mod http;
pub mod nats_endpoints;
pub mod streaming_endpoints;

use crate::config::Options;
use crate::stan::snapshot::CoreSnapshot;
use crate::stan::streaming::Streaming;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// How long a request waits for the other cores' figures.
const GATHER_LIMIT: Duration = Duration::from_secs(2);

pub struct Monitor {
    pub node: Rc<Streaming>,
    pub opts: Rc<Options>,
    pub started: SystemTime,
    pub http_host: String,
    pub http_port: u16,
    requests: RefCell<BTreeMap<String, u64>>,
}

impl Monitor {
    fn count_request(&self, path: &str) {
        let key = if path.is_empty() { "/" } else { path };
        *self
            .requests
            .borrow_mut()
            .entry(key.to_string())
            .or_insert(0) += 1;
    }

    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.requests.borrow().clone()
    }

    pub async fn gather(&self) -> Vec<CoreSnapshot> {
        self.node.gather(GATHER_LIMIT).await
    }
}

/// A monitoring listener address: the `http:`/`https:` key (`[host:]port`) wins over the port
/// flag/key (`-m`/`http_port`, `-ms`/`https_port`); the host defaults to the client host.
fn listen_address(spec: Option<&String>, port: Option<u16>, host: &str) -> Option<(String, u16)> {
    if let Some(spec) = spec {
        return match spec.rsplit_once(':') {
            Some((h, p)) => p.parse().ok().map(|p| (h.to_string(), p)),
            None => spec.parse().ok().map(|p| (host.to_string(), p)),
        };
    }
    port.map(|p| (host.to_string(), p))
}

fn http_address(opts: &Options) -> Option<(String, u16)> {
    listen_address(opts.http.as_ref(), opts.http_port, &opts.host)
}

fn https_address(opts: &Options) -> Option<(String, u16)> {
    listen_address(opts.https.as_ref(), opts.https_port, &opts.host)
}

/// Binds the monitoring port(s) on this core (core 0) and serves them in the background.
/// Returns the addresses bound, "http://..." / "https://...".
pub fn start(
    node: Rc<Streaming>,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> Result<Vec<String>, std::io::Error> {
    let plain = http_address(&node.opts);
    let secure = https_address(&node.opts);
    if plain.is_none() && secure.is_none() {
        return Ok(Vec::new());
    }
    let mut bound = Vec::new();
    let mut listeners = Vec::new();
    for (scheme, addr) in [("http", plain), ("https", secure)] {
        let Some((host, port)) = addr else {
            continue;
        };
        let acceptor = if scheme == "https" {
            match &tls {
                Some(config) => Some(futures_rustls::TlsAcceptor::from(config.clone())),
                None => {
                    return Err(std::io::Error::other(
                        "https monitoring needs a tls { cert_file, key_file } configuration",
                    ))
                }
            }
        } else {
            None
        };
        let listener = glommio::net::TcpListener::bind((host.as_str(), port))
            .map_err(|e| std::io::Error::other(format!("{host}:{port}: {e}")))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
        bound.push(format!("{scheme}://{host}:{port}"));
        listeners.push((listener, acceptor, host, port));
    }
    let (http_host, http_port) = listeners
        .iter()
        .find(|l| l.1.is_none())
        .map(|l| (l.2.clone(), l.3))
        .unwrap_or_default();
    let monitor = Rc::new(Monitor {
        opts: node.opts.clone(),
        node,
        started: SystemTime::now(),
        http_host,
        http_port,
        requests: RefCell::new(BTreeMap::new()),
    });
    for (listener, acceptor, _, _) in listeners {
        let serving = http::serve(listener, monitor.clone(), acceptor);
        monitor.node.core.tasks.spawn("monitoring", None, serving);
    }
    Ok(bound)
}

/// `offset` and `limit` as the reference reads them: negative offset is 0, limit <= 0 is 1024.
pub fn paging(query: &http::Query) -> (usize, usize) {
    let offset = query
        .get("offset")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0)
        .max(0) as usize;
    let limit = query
        .get("limit")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(1024) as usize;
    (offset, limit)
}

/// One page of a sorted list.
pub fn page<T>(items: Vec<T>, offset: usize, limit: usize) -> Vec<T> {
    items.into_iter().skip(offset).take(limit).collect()
}
