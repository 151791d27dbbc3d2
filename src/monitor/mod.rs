//! HTTP(S) monitoring: the embedded NATS server's endpoints (`/varz`, `/connz`, ...) and the
//! streaming ones (`/streaming/*`) with the reference's JSON field names, served from core 0
//! with figures gathered from every core.

pub mod format;
pub mod http;
pub mod nats_endpoints;
pub mod snapshot;
pub mod streaming_endpoints;

use crate::config::Options;
use crate::stan::node::Node;
use snapshot::CoreSnapshot;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// How long a request waits for the other cores' figures.
const GATHER_LIMIT: Duration = Duration::from_secs(2);

pub struct Monitor {
    pub node: Rc<Node>,
    pub opts: Rc<Options>,
    pub started: SystemTime,
    /// The streaming server's ID (a NUID made at each start, as the reference does).
    pub stan_server_id: String,
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

/// The monitoring listener address from `-m`/`http_port` or `http: [host:]port`.
pub fn http_address(opts: &Options) -> Option<(String, u16)> {
    if let Some(http) = &opts.http {
        return match http.rsplit_once(':') {
            Some((host, port)) => port.parse().ok().map(|p| (host.to_string(), p)),
            None => http.parse().ok().map(|p| (opts.host.clone(), p)),
        };
    }
    opts.http_port.map(|p| (opts.host.clone(), p))
}

/// Binds the monitoring port on this core (core 0) and serves it in the background.
pub fn start(node: Rc<Node>) -> Result<Option<(String, u16)>, std::io::Error> {
    let Some((host, port)) = http_address(&node.opts) else {
        return Ok(None);
    };
    let listener = glommio::net::TcpListener::bind((host.as_str(), port))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let bound = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    let monitor = Rc::new(Monitor {
        opts: node.opts.clone(),
        node,
        started: SystemTime::now(),
        stan_server_id: format::nuid(),
        http_host: host.clone(),
        http_port: bound,
        requests: RefCell::new(BTreeMap::new()),
    });
    glommio::spawn_local(http::serve(listener, monitor)).detach();
    Ok(Some((host, bound)))
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
