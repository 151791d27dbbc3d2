//! NATS routes (nats-server 2.9's cluster protocol, shared/reference/clustering.md §1): the
//! connections between this server and the other servers of a NATS cluster. They live on core
//! 0. A peer's `RS+` becomes a local subscription of its route connection there, so the
//! cross-core interest map forwards matching messages to core 0 like to any subscriber, and
//! `Core` writes them as one `RMSG` per route and message. What this server announces (`RS+`,
//! `RS-`) is its own interest: subscriptions of its clients on every core and the streaming
//! server's subjects, never what it learnt from a route (one hop, full mesh).
//!
//! Built: the listener and configured routes (dialled every second until connected, again
//! after a drop), TLS first with the peer's certificate verified both ways, route credentials
//! checked and presented, INFO/CONNECT, the cluster name rule, a route to itself dropped and
//! not dialled again, duplicate routes closed, gossip (a new peer's INFO forwarded to the
//! other routes, which dial it as an implicit route), RS+/RS- (queue weights are the number of
//! this server's member subscriptions and cores), RMSG/HMSG both ways, PING/PONG with the stale
//! check, and the cluster's `connect_urls` in client INFO. Not yet: route permissions, pooling.

use crate::nats::core::{ClientConn, CloseReason, Core, Handled, LocalSub, MsgRef};
use crate::nats::route_proto::{self, RouteOp};
use crate::nats::transport::{SharedStream, Transport};
use crate::util::notify::Notify;
use crate::util::timeout::within;
use bytes::{Bytes, BytesMut};
use futures_lite::AsyncReadExt;
use fxhash::FxHashMap;
use glommio::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// nats-server's route timings (`const.go`).
const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_DELAY: Duration = Duration::from_secs(1);
const FIRST_PING: Duration = Duration::from_secs(1);
const MAX_PINGS_OUT: u32 = 2;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

type Key = (Bytes, Option<Bytes>);

/// The routes of this core and what it has announced to them.
#[derive(Default)]
pub struct RouteHub {
    enabled: Cell<bool>,
    links: RefCell<Vec<Rc<RouteLink>>>,
    /// Keys whose interest changed since the announcing task last looked.
    dirty: RefCell<Vec<Key>>,
    /// What this server announces: key -> weight (1 for a plain subject).
    announced: RefCell<FxHashMap<Key, u32>>,
    /// The streaming server's subjects (announced like subscriptions).
    internal: RefCell<Vec<Bytes>>,
    /// The cluster name in force (a dynamic one adopts a peer's).
    cluster_name: RefCell<String>,
    name_is_dynamic: Cell<bool>,
    /// The port the route listener is bound to.
    bound_port: Cell<Option<u16>>,
    /// Configured route URLs found to be this server itself.
    to_self: RefCell<Vec<String>>,
    /// Servers learnt by gossip that a dialler is working on.
    dialling: RefCell<std::collections::HashSet<String>>,
    /// Route TLS (`cluster { tls {} }`): both sides verify the other's certificate.
    tls: RefCell<Option<RouteTls>>,
    /// The configured routes in force (a reload changes them).
    configured: RefCell<Vec<String>>,
    wake: Notify,
}

/// The TLS configurations of routes: accepting (client certificates required) and dialling
/// (the route's certificate presented), and the handshake's time limit.
#[derive(Clone)]
struct RouteTls {
    accept: futures_rustls::TlsAcceptor,
    dial: futures_rustls::TlsConnector,
    timeout: Duration,
}

impl RouteTls {
    fn from_config(tls: &crate::config::options::TlsConfig) -> Result<RouteTls, String> {
        // nats-server forces verification of the peer's certificate on routes, both ways,
        // with `ca_file` as the root and client CA pool.
        let mut verified = tls.clone();
        verified.verify = true;
        let accept =
            crate::nats::tls::server_config(&verified).map_err(|e| format!("cluster tls: {e}"))?;
        let ca = tls
            .ca_file
            .as_deref()
            .ok_or_else(|| "cluster tls: 'ca_file' is needed to verify route peers".to_string())?;
        let dial = crate::nats::tls::client_config(
            &[ca],
            tls.cert_file.as_deref(),
            tls.key_file.as_deref(),
            false,
        )
        .map_err(|e| format!("cluster tls: {e}"))?;
        Ok(RouteTls {
            accept: futures_rustls::TlsAcceptor::from(accept),
            dial: futures_rustls::TlsConnector::from(dial),
            timeout: tls.timeout.unwrap_or(Duration::from_secs(2)),
        })
    }
}

/// The name a dialled route's certificate must carry: the URL's host or, when that is an IP
/// address, the first host name among the configured routes (as nats-server picks it).
fn tls_server_name(core: &Core, address: &str) -> String {
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(address)
        .trim_matches(|c| c == '[' || c == ']');
    if host.parse::<std::net::IpAddr>().is_err() {
        return host.to_string();
    }
    core.opts
        .cluster
        .iter()
        .flat_map(|c| c.routes.iter())
        .filter_map(|r| crate::util::url::route_address(r))
        .filter_map(|(a, _)| a.rsplit_once(':').map(|(h, _)| h.to_string()))
        .find(|h| h.parse::<std::net::IpAddr>().is_err())
        .unwrap_or_else(|| host.to_string())
}

/// One route connection.
pub struct RouteLink {
    pub conn: Rc<ClientConn>,
    pub remote_id: RefCell<String>,
    pub remote_name: RefCell<String>,
    pub solicited: bool,
    /// The configured route this connection was dialled for (not an implicit one).
    pub configured_url: Option<String>,
    /// The peer's first INFO (forwarded to the other routes: gossip).
    info: RefCell<serde_json::Value>,
    pub started: std::time::SystemTime,
    subs: RefCell<FxHashMap<Key, Rc<LocalSub>>>,
    next_sid: Cell<u64>,
    fd: Cell<Option<std::os::fd::RawFd>>,
}

impl RouteLink {
    pub fn subscriptions(&self) -> Vec<String> {
        self.subs
            .borrow()
            .keys()
            .map(|(s, q)| match q {
                Some(q) => format!(
                    "{} {}",
                    String::from_utf8_lossy(s),
                    String::from_utf8_lossy(q)
                ),
                None => String::from_utf8_lossy(s).into_owned(),
            })
            .collect()
    }
}

impl RouteHub {
    /// Records an interest change for the announcing task (only where routes live).
    pub fn touched(&self, subject: &Bytes, queue: Option<&Bytes>) {
        if !self.enabled.get() {
            return;
        }
        self.dirty
            .borrow_mut()
            .push((subject.clone(), queue.cloned()));
        self.wake.notify();
    }

    /// The streaming server's subjects, announced to routes as its interest.
    pub fn set_internal(&self, subjects: Vec<String>) {
        let subjects: Vec<Bytes> = subjects.into_iter().map(Bytes::from).collect();
        for s in &subjects {
            self.touched(s, None);
        }
        *self.internal.borrow_mut() = subjects;
    }

    pub fn links(&self) -> Vec<Rc<RouteLink>> {
        self.links.borrow().clone()
    }

    pub fn cluster_name(&self) -> String {
        self.cluster_name.borrow().clone()
    }

    fn registered(&self, remote_id: &str) -> bool {
        self.links
            .borrow()
            .iter()
            .any(|l| *l.remote_id.borrow() == remote_id)
    }

    /// What `key` weighs in this server's own interest now.
    fn weight(&self, core: &Core, key: &Key) -> u32 {
        let internal = key.1.is_none() && self.internal.borrow().contains(&key.0);
        core.own_interest(&key.0, key.1.as_ref()) + u32::from(internal)
    }

    /// Announces what changed now, if anything did, before a message goes to the routes (the
    /// announcing task would do it only after this turn).
    pub fn announce_pending(&self, core: &Core) {
        if !self.dirty.borrow().is_empty() {
            self.announce_dirty(core);
        }
    }

    /// Announces the changed keys to every registered route.
    fn announce_dirty(&self, core: &Core) {
        let mut dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        dirty.sort();
        dirty.dedup();
        let mut out = Vec::new();
        for key in dirty {
            let weight = self.weight(core, &key);
            let before = self.announced.borrow().get(&key).copied().unwrap_or(0);
            let changed = match key.1 {
                None => (weight > 0) != (before > 0),
                Some(_) => weight != before,
            };
            if !changed {
                continue;
            }
            if weight == 0 {
                self.announced.borrow_mut().remove(&key);
                route_proto::push_sub_remove(&mut out, &key.0, key.1.as_deref());
            } else {
                self.announced.borrow_mut().insert(key.clone(), weight);
                route_proto::push_sub_add(&mut out, &key.0, key.1.as_deref().map(|q| (q, weight)));
            }
        }
        if out.is_empty() {
            return;
        }
        for link in self.links.borrow().iter() {
            link.conn.send(&out);
        }
    }

    /// Everything announced, as `RS+` lines, for a route just registered.
    fn all_announced(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for ((subject, queue), weight) in self.announced.borrow().iter() {
            route_proto::push_sub_add(&mut out, subject, queue.as_deref().map(|q| (q, *weight)));
        }
        out
    }
}

/// The cluster listen address from `cluster { listen | host + port }` as configured (`listen`
/// may be a URL, `host:port` or a bare port; port -1 means random). Routes bind it; `/varz`
/// shows it.
pub fn listen_address(c: &crate::config::options::RouteCluster) -> Option<(String, i32)> {
    if let Some(listen) = &c.listen {
        let (hostport, _) = crate::util::url::route_address(listen)
            .or_else(|| Some((format!("0.0.0.0:{}", listen.parse::<i32>().ok()?), false)))?;
        let (host, port) = hostport.rsplit_once(':')?;
        return Some((host.to_string(), port.parse().ok()?));
    }
    let port = c.port?;
    Some((
        c.host.clone().unwrap_or_else(|| "0.0.0.0".to_string()),
        i32::from(port),
    ))
}

fn new_cluster_name() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..22)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Starts the routes of core 0 when `cluster {}` is configured: the listener, a dialler per
/// configured route, the task that announces interest changes. Returns the bound address.
pub fn start(core: &Rc<Core>) -> Result<Option<String>, String> {
    let Some(cluster) = core.opts.cluster.clone() else {
        return Ok(None);
    };
    let hub = &core.routes;
    match &cluster.name {
        Some(name) => *hub.cluster_name.borrow_mut() = name.clone(),
        None => {
            *hub.cluster_name.borrow_mut() = new_cluster_name();
            hub.name_is_dynamic.set(true);
            log::warn!("Cluster name was dynamically generated, consider setting one");
        }
    }
    log::info!("Cluster name is {}", hub.cluster_name.borrow());
    if let Some(tls) = &cluster.tls {
        *hub.tls.borrow_mut() = Some(RouteTls::from_config(tls)?);
    }
    hub.enabled.set(true);
    // What this server's clients already subscribe to (and the streaming subjects).
    for key in core.own_interest_keys() {
        hub.dirty.borrow_mut().push(key);
    }
    for s in hub.internal.borrow().iter() {
        hub.dirty.borrow_mut().push((s.clone(), None));
    }
    hub.announce_dirty(core);
    let mut bound = None;
    if let Some((host, port)) = listen_address(&cluster) {
        // -1 (random) binds port 0.
        let port = u16::try_from(port).unwrap_or(0);
        let listener = TcpListener::bind((host.as_str(), port))
            .map_err(|e| format!("Error listening on router port: {host}:{port}: {e}"))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
        hub.bound_port.set(Some(port));
        let addr = format!("{host}:{port}");
        log::info!("Listening for route connections on {addr}");
        bound = Some(addr);
        let accepting = core.clone();
        core.tasks.spawn("route listener", None, async move {
            let core = accepting;
            while let Ok(stream) = listener.accept().await {
                let core = core.clone();
                glommio::spawn_local(async move {
                    let port = listen_port(&core);
                    serve(core, stream, None, false, port).await;
                })
                .detach();
            }
        });
    }
    let announcer = core.clone();
    core.tasks.spawn("route announcer", None, async move {
        loop {
            if announcer.routes.dirty.borrow().is_empty() {
                announcer.routes.wake.notified().await;
            }
            // Let the rest of the turn's changes join this announcement.
            futures_lite::future::yield_now().await;
            announcer.routes.announce_dirty(&announcer);
        }
    });
    let own_port = bound
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok());
    *hub.configured.borrow_mut() = cluster.routes.clone();
    for url in &cluster.routes {
        spawn_configured(core, url, own_port);
    }
    Ok(bound)
}

fn spawn_configured(core: &Rc<Core>, url: &str, own_port: Option<u16>) {
    let Some((address, _)) = crate::util::url::route_address(url) else {
        log::error!("Error parsing route URL {url:?}");
        return;
    };
    let dialing = core.clone();
    let url = url.to_string();
    core.tasks.spawn("route dialer", None, async move {
        dial_loop(dialing, url, address, own_port, Dial::Configured).await
    });
}

/// A reloaded `cluster.routes`: new routes are dialled; removed ones are closed and their
/// diallers stop.
pub fn reload_routes(core: &Rc<Core>, routes: Vec<String>) {
    let hub = &core.routes;
    if !hub.enabled.get() {
        return;
    }
    let old = std::mem::replace(&mut *hub.configured.borrow_mut(), routes.clone());
    for url in routes.iter().filter(|u| !old.contains(u)) {
        log::info!("Reloaded: cluster route {url:?} added");
        spawn_configured(core, url, hub.bound_port.get());
    }
    for url in old.iter().filter(|u| !routes.contains(u)) {
        log::info!("Reloaded: cluster route {url:?} removed");
        for link in hub.links() {
            if link.configured_url.as_deref() == Some(url.as_str()) {
                link.conn.close(CloseReason::ClientClosed);
                // The reader learns of it at its next read; shut the socket to wake it.
                if let Some(fd) = link.fd.get() {
                    // SAFETY: shuts down a socket this route owns; it stays open until the
                    // route's tasks end.
                    unsafe {
                        libc::shutdown(fd, libc::SHUT_RDWR);
                    }
                }
            }
        }
    }
}

fn listen_port(core: &Core) -> Option<u16> {
    core.routes.bound_port.get()
}

/// How a route URL is dialled: a configured one every second until it is connected and again
/// after it drops; an implicit one (learnt by gossip) once plus `connect_retries` more times,
/// and again only when it lost a duplicate-route race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dial {
    Configured,
    Implicit { retries: u64 },
}

/// Dials `url` as `how` says; stops for good once it turns out to be this server.
async fn dial_loop(core: Rc<Core>, url: String, address: String, own_port: Option<u16>, how: Dial) {
    let mut attempt: u64 = 0;
    loop {
        if core.routes.to_self.borrow().contains(&url) {
            return;
        }
        if how == Dial::Configured && !core.routes.configured.borrow().contains(&url) {
            return; // removed by a reload
        }
        attempt += 1;
        let connected = within(DIAL_TIMEOUT, TcpStream::connect(address.as_str())).await;
        match connected {
            Some(Ok(stream)) => {
                attempt = 0;
                let configured = how == Dial::Configured;
                let ended = serve(
                    core.clone(),
                    stream,
                    Some(url.clone()),
                    configured,
                    own_port,
                )
                .await;
                match &ended {
                    Ended::Duplicate(remote) => {
                        // The peer dialled us too and that route won: dial again only once
                        // it is gone (both sides may have dropped opposite connections).
                        while core.routes.registered(remote) {
                            glommio::timer::sleep(CONNECT_DELAY).await;
                        }
                        let jitter = Duration::from_millis(rand::random::<u64>() % 100);
                        glommio::timer::sleep(jitter).await;
                        continue;
                    }
                    Ended::ToSelf => {
                        core.routes.to_self.borrow_mut().push(url.clone());
                        return;
                    }
                    Ended::Closed if !configured => return,
                    Ended::Closed => {}
                }
                let jitter = Duration::from_millis(rand::random::<u64>() % 100);
                glommio::timer::sleep(CONNECT_DELAY + jitter).await;
            }
            failed => {
                if let Dial::Implicit { retries } = how {
                    if attempt > retries {
                        log::debug!(
                            "Giving up on implicit route {url:?} after {attempt} attempt(s)"
                        );
                        return;
                    }
                }
                if attempt == 1 || attempt.is_multiple_of(3600) {
                    let why = match failed {
                        Some(Err(e)) => e.to_string(),
                        _ => "i/o timeout".to_string(),
                    };
                    log::error!(
                        "Error trying to connect to route (attempt {attempt}): dial tcp {address}: {why}"
                    );
                }
                glommio::timer::sleep(CONNECT_DELAY).await;
            }
        }
    }
}

/// An INFO about another server, forwarded by a route peer: dial it unless it is this
/// server, already connected, being dialled, or one of the configured routes.
fn implicit_route(core: &Rc<Core>, info: &serde_json::Value) {
    let id = info["server_id"].as_str().unwrap_or_default();
    if id.is_empty() || id == &*core.server_id || core.routes.registered(id) {
        return;
    }
    let Some(url) = info["ip"].as_str().map(str::to_string) else {
        return;
    };
    let Some((address, _)) = crate::util::url::route_address(&url) else {
        return;
    };
    let configured = core.opts.cluster.as_ref().is_some_and(|c| {
        c.routes.iter().any(|r| {
            crate::util::url::route_address(r)
                .is_some_and(|(a, _)| a.eq_ignore_ascii_case(&address))
        })
    });
    if configured || !core.routes.dialling.borrow_mut().insert(id.to_string()) {
        return;
    }
    let retries = core
        .opts
        .cluster
        .as_ref()
        .map_or(0, |c| u64::try_from(c.connect_retries).unwrap_or(0));
    let own_port = core.routes.bound_port.get();
    let core = core.clone();
    let id = id.to_string();
    glommio::spawn_local(async move {
        dial_loop(
            core.clone(),
            url,
            address,
            own_port,
            Dial::Implicit { retries },
        )
        .await;
        core.routes.dialling.borrow_mut().remove(&id);
    })
    .detach();
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    Closed,
    Duplicate(String),
    ToSelf,
}

fn route_info(core: &Core, port: Option<u16>) -> Vec<u8> {
    let opts = &core.opts;
    let cluster = opts.cluster.as_ref();
    let hub = &core.routes;
    let (host, port) = match cluster.and_then(|c| c.advertise.as_deref()) {
        Some(adv) => match adv.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(port.unwrap_or(0))),
            None => (adv.to_string(), port.unwrap_or(0)),
        },
        None => (
            cluster
                .and_then(listen_address)
                .map(|(h, _)| h)
                .unwrap_or_default(),
            port.unwrap_or(0),
        ),
    };
    let mut info = serde_json::json!({
        "server_id": &*core.server_id,
        "server_name": opts.server_name.clone().unwrap_or_else(|| core.server_id.to_string()),
        "version": crate::nats::wire::NATS_PROTOCOL_VERSION,
        "proto": 2,
        "go": "stanza",
        "host": host,
        "port": port,
        "headers": true,
        "max_payload": opts.max_payload,
        "cluster": hub.cluster_name(),
    });
    if cluster.is_some_and(|c| c.authorization.user.is_some()) {
        info["auth_required"] = serde_json::Value::Bool(true);
    }
    if hub.tls.borrow().is_some() {
        info["tls_required"] = serde_json::Value::Bool(true);
        info["tls_verify"] = serde_json::Value::Bool(true);
    }
    if hub.name_is_dynamic.get() {
        info["cluster_dynamic"] = serde_json::Value::Bool(true);
    }
    if cluster.is_some_and(|c| c.advertise.is_some()) {
        info["ip"] = serde_json::json!(format!("nats-route://{host}:{port}/"));
    }
    if !cluster.is_some_and(|c| c.no_advertise) {
        info["connect_urls"] = serde_json::json!(own_client_urls(core));
    }
    let mut out = b"INFO ".to_vec();
    out.extend_from_slice(info.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// The credentials a dialled route presents: those of its URL, else (a route learnt by gossip)
/// this server's own cluster user.
fn credentials(core: &Core, url: Option<&str>) -> Option<(String, String)> {
    if let Some(userinfo) = url
        .and_then(|u| u.split_once("://").map(|(_, r)| r))
        .and_then(|r| r.rsplit_once('@').map(|(c, _)| c))
    {
        let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        return Some((user.to_string(), pass.to_string()));
    }
    let auth = &core.opts.cluster.as_ref()?.authorization;
    Some((
        auth.user.clone()?,
        auth.password.clone().unwrap_or_default(),
    ))
}

fn route_connect(core: &Core, url: Option<&str>) -> Vec<u8> {
    let hub = &core.routes;
    let mut connect = serde_json::json!({
        "echo": true,
        "verbose": false,
        "pedantic": false,
        "tls_required": hub.tls.borrow().is_some(),
        "headers": true,
        "name": &*core.server_id,
        "cluster": hub.cluster_name(),
    });
    if hub.name_is_dynamic.get() {
        connect["cluster_dynamic"] = serde_json::Value::Bool(true);
    }
    if let Some((user, pass)) = credentials(core, url) {
        connect["user"] = serde_json::json!(user);
        connect["pass"] = serde_json::json!(pass);
    }
    let mut out = b"CONNECT ".to_vec();
    out.extend_from_slice(connect.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// Serves one route connection (dialled when `url` is given, else accepted) until it ends.
async fn serve(
    core: Rc<Core>,
    stream: TcpStream,
    url: Option<String>,
    configured: bool,
    own_port: Option<u16>,
) -> Ended {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let conn = Rc::new(ClientConn::new(
        core.next_cid(),
        core.opts.max_pending.max(64 << 20),
    ));
    conn.route.set(true);
    conn.connected.set(true);
    conn.peer.set(peer);
    let link = Rc::new(RouteLink {
        conn: conn.clone(),
        remote_id: RefCell::new(String::new()),
        remote_name: RefCell::new(String::new()),
        solicited: url.is_some(),
        configured_url: url.clone().filter(|_| configured),
        info: RefCell::new(serde_json::Value::Null),
        started: std::time::SystemTime::now(),
        subs: RefCell::new(FxHashMap::default()),
        next_sid: Cell::new(1),
        fd: Cell::new(Some(fd)),
    });
    let who = format!(
        "{} - rid:{}",
        peer.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        conn.cid
    );
    let tls = core.routes.tls.borrow().clone();
    let transport = match tls {
        None => Transport::Plain(stream),
        // TLS first, both ways, before anything is sent in the clear.
        Some(tls) => {
            let handshake = async {
                match &url {
                    Some(u) => {
                        let address = crate::util::url::route_address(u)
                            .map(|(a, _)| a)
                            .unwrap_or_default();
                        let name = tls_server_name(&core, &address);
                        let server_name =
                            crate::nats::tls::server_name(&name).map_err(|e| e.to_string())?;
                        tls.dial
                            .connect(server_name, stream)
                            .await
                            .map(|s| Transport::TlsClient(Box::new(s)))
                            .map_err(|e| e.to_string())
                    }
                    None => tls
                        .accept
                        .accept(stream)
                        .await
                        .map(|s| Transport::TlsServer(Box::new(s)))
                        .map_err(|e| e.to_string()),
                }
            };
            match within(tls.timeout, handshake).await {
                Some(Ok(t)) => t,
                failed => {
                    let why = match failed {
                        Some(Err(e)) => e,
                        _ => "timeout".to_string(),
                    };
                    log::error!(
                        "{} - TLS route handshake error: {why}",
                        peer.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
                    );
                    return Ended::Closed;
                }
            }
        }
    };
    let shared = SharedStream::new(transport);
    let writer = glommio::spawn_local(crate::nats::client::write_loop(
        core.clone(),
        conn.clone(),
        shared.clone(),
        fd,
    ));
    if url.is_some() {
        conn.send(&route_connect(&core, url.as_deref()));
    }
    conn.send(&route_info(&core, own_port));
    let pinger = glommio::spawn_local(ping_loop(conn.clone()));
    let ended = read_loop(&core, &link, shared, &who, url.as_deref()).await;
    // Unregister: what the peer subscribed to, and the link.
    let subs: Vec<Rc<LocalSub>> = link.subs.borrow_mut().drain().map(|(_, s)| s).collect();
    for sub in &subs {
        core.remove_subscription(sub);
    }
    let was_registered = core
        .routes
        .links
        .borrow()
        .iter()
        .any(|l| Rc::ptr_eq(l, &link));
    core.routes
        .links
        .borrow_mut()
        .retain(|l| !Rc::ptr_eq(l, &link));
    if was_registered {
        refresh_connect_urls(&core);
    }
    let reason = match &ended {
        (Ended::Duplicate(_), _) => "Duplicate Route".to_string(),
        (Ended::ToSelf, _) => "Duplicate Route".to_string(),
        (Ended::Closed, why) => why.clone(),
    };
    if was_registered {
        log::info!("{who} - Router connection closed: {reason}");
    } else {
        log::debug!("{who} - Router connection closed: {reason}");
    }
    conn.close(CloseReason::ClientClosed);
    drop(pinger);
    writer.await;
    ended.0
}

async fn ping_loop(conn: Rc<ClientConn>) {
    glommio::timer::sleep(FIRST_PING + Duration::from_millis(rand::random::<u64>() % 200)).await;
    loop {
        if conn.is_closed() {
            return;
        }
        let out = conn.pings_out.get() + 1;
        if out > MAX_PINGS_OUT {
            conn.send(b"-ERR 'Stale Connection'\r\n");
            conn.close(CloseReason::StaleConnection);
            return;
        }
        conn.pings_out.set(out);
        conn.send(b"PING\r\n");
        glommio::timer::sleep(Duration::from_secs(120)).await;
    }
}

/// Reads the route until it ends: the handshake (its INFO, and CONNECT first on an accepted
/// route), then interest and messages. Returns how it ended and why.
async fn read_loop(
    core: &Rc<Core>,
    link: &Rc<RouteLink>,
    mut stream: SharedStream,
    who: &str,
    url: Option<&str>,
) -> (Ended, String) {
    let conn = &link.conn;
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 32 << 10];
    let mut registered = false;
    let mut got_connect = url.is_some();
    let handshake_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        loop {
            let op = match route_proto::next_op(&mut buf) {
                Ok(Some(op)) => op,
                Ok(None) => break,
                Err(e) => {
                    log::error!("{who} - Route parse error: {e}");
                    conn.send(b"-ERR 'Protocol Error'\r\n");
                    return (Ended::Closed, "Parse Error".into());
                }
            };
            if !got_connect && !matches!(op, RouteOp::Connect(_)) {
                conn.send(b"-ERR 'Authorization Violation'\r\n");
                return (Ended::Closed, "Authentication Failure".into());
            }
            match op {
                RouteOp::Connect(json) => {
                    let v: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
                    if v.get("lang").is_some() {
                        conn.send(b"-ERR 'attempted to connect to route port'\r\n");
                        return (Ended::Closed, "Incorrect Port".into());
                    }
                    if !route_authorized(core, &v) {
                        log::error!("{who} - authentication error");
                        conn.send(b"-ERR 'Authorization Violation'\r\n");
                        return (Ended::Closed, "Authentication Failure".into());
                    }
                    got_connect = true;
                }
                RouteOp::Info(json) if !registered => {
                    let v: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
                    let remote_id = v["server_id"].as_str().unwrap_or_default().to_string();
                    if remote_id.is_empty() {
                        return (Ended::Closed, "Parse Error".into());
                    }
                    if remote_id == *core.server_id {
                        if let Some(url) = url {
                            log::debug!("{who} - Detected route to self, ignoring {url:?}");
                        }
                        return (Ended::ToSelf, String::new());
                    }
                    let theirs = v["cluster"].as_str().unwrap_or_default().to_string();
                    let their_dynamic = v["cluster_dynamic"].as_bool().unwrap_or(false);
                    let ours = core.routes.cluster_name();
                    if theirs != ours {
                        let adopt =
                            core.routes.name_is_dynamic.get() && (!their_dynamic || theirs > ours);
                        if !adopt {
                            conn.send(
                                format!(
                                    "-ERR 'Rejecting connection, cluster name {theirs:?} does not match {ours:?}'\r\n"
                                )
                                .as_bytes(),
                            );
                            log::error!(
                                "{who} - Rejecting connection, cluster name {theirs:?} does not match {ours:?}"
                            );
                            return (Ended::Closed, "Cluster Name Conflict".into());
                        }
                        *core.routes.cluster_name.borrow_mut() = theirs.clone();
                        core.routes.name_is_dynamic.set(their_dynamic);
                        log::info!("Cluster name updated to {theirs}");
                    }
                    if core.routes.registered(&remote_id) {
                        log::debug!("{who} - Detected duplicate remote route {remote_id:?}");
                        return (Ended::Duplicate(remote_id), String::new());
                    }
                    conn.route_headers
                        .set(v["headers"].as_bool().unwrap_or(false));
                    *link.remote_id.borrow_mut() = remote_id.clone();
                    *link.remote_name.borrow_mut() =
                        v["server_name"].as_str().unwrap_or_default().to_string();
                    *link.info.borrow_mut() = v.clone();
                    gossip(core, link);
                    core.routes.links.borrow_mut().push(link.clone());
                    registered = true;
                    let all = core.routes.all_announced();
                    if !all.is_empty() {
                        conn.send(&all);
                    }
                    log::info!("{who} - Route connection created");
                    refresh_connect_urls(core);
                    log::debug!("{who} - Registering remote route {remote_id:?}");
                }
                // An INFO about another server (gossip): an implicit route. Permission
                // updates and lame-duck notices are not acted on yet.
                RouteOp::Info(json) => {
                    let v: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
                    if v["server_id"].as_str() != Some(link.remote_id.borrow().as_str()) {
                        implicit_route(core, &v);
                    }
                }
                RouteOp::SubAdd {
                    account,
                    subject,
                    queue,
                } => {
                    if account.as_ref() != route_proto::GLOBAL_ACCOUNT
                        || !crate::nats::subject::is_valid_subject(&subject)
                    {
                        continue;
                    }
                    let key = (subject.clone(), queue.as_ref().map(|(q, _)| q.clone()));
                    if link.subs.borrow().contains_key(&key) {
                        continue; // a queue weight update
                    }
                    let sid = link.next_sid.get();
                    link.next_sid.set(sid + 1);
                    let sub = Rc::new(LocalSub {
                        conn: Rc::downgrade(conn),
                        cid: conn.cid,
                        sid: Bytes::from(format!("R{sid}")),
                        subject,
                        queue: key.1.clone(),
                        max: Cell::new(0),
                        delivered: Cell::new(0),
                    });
                    link.subs.borrow_mut().insert(key, sub.clone());
                    core.add_subscription(sub);
                }
                RouteOp::SubRemove {
                    account,
                    subject,
                    queue,
                } => {
                    if account.as_ref() != route_proto::GLOBAL_ACCOUNT {
                        continue;
                    }
                    let removed = link.subs.borrow_mut().remove(&(subject, queue));
                    if let Some(sub) = removed {
                        core.remove_subscription(&sub);
                    }
                }
                RouteOp::Msg {
                    account,
                    subject,
                    reply,
                    queues,
                    header_len,
                    payload,
                } => {
                    conn.in_msgs.set(conn.in_msgs.get() + 1);
                    conn.in_bytes
                        .set(conn.in_bytes.get() + payload.len() as u64);
                    if account.as_ref() != route_proto::GLOBAL_ACCOUNT {
                        continue;
                    }
                    let msg = MsgRef {
                        subject: &subject,
                        reply: reply.as_deref(),
                        header_len,
                        payload: &payload,
                        backing: Some(&payload),
                        subject_backing: Some(&subject),
                    };
                    deliver_from_route(core, conn, &msg, &queues);
                }
                RouteOp::Ping => conn.send(b"PONG\r\n"),
                RouteOp::Pong => conn.pings_out.set(0),
                RouteOp::Err(text) => {
                    log::error!("{who} - Route Error {text}");
                    return (Ended::Closed, "Client Closed".into());
                }
                RouteOp::Ignored => {}
            }
        }
        if conn.is_closed() {
            return (Ended::Closed, "Stale Connection".into());
        }
        // Back-pressure, as on a client connection: wait while what this route delivered
        // stalls a subscriber here, or the mesh to the other cores is congested.
        core.wait_stalled(conn.cid).await;
        core.outbox.until_uncongested().await;
        let read = if registered {
            Some(stream.read(&mut chunk).await)
        } else {
            let left = handshake_deadline.saturating_duration_since(Instant::now());
            within(left, stream.read(&mut chunk)).await
        };
        match read {
            None => {
                conn.send(b"-ERR 'Authentication Timeout'\r\n");
                return (Ended::Closed, "Authentication Timeout".into());
            }
            Some(Ok(0)) | Some(Err(_)) => return (Ended::Closed, "Client Closed".into()),
            Some(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn own_client_urls(core: &Core) -> Vec<String> {
    let o = &core.opts;
    crate::util::url::client_urls(&o.host, o.port, o.client_advertise.as_deref())
}

/// Recomputes the cluster's client URLs (this server's first, then each peer's, unless
/// `no_advertise`) after a route came or went, and hands them to every core.
fn refresh_connect_urls(core: &Core) {
    let no_advertise = core.opts.cluster.as_ref().is_some_and(|c| c.no_advertise);
    let links = core.routes.links();
    let urls = if no_advertise || links.is_empty() {
        Vec::new()
    } else {
        let mut urls = own_client_urls(core);
        for link in &links {
            let info = link.info.borrow();
            for u in info["connect_urls"].as_array().into_iter().flatten() {
                if let Some(u) = u.as_str().filter(|u| !urls.iter().any(|x| x == u)) {
                    urls.push(u.to_string());
                }
            }
        }
        urls
    };
    for peer in core.outbox.peers() {
        core.outbox
            .push(peer, super::mesh_msg::MeshMsg::ConnectUrls(urls.clone()));
    }
    core.set_connect_urls(urls);
}

/// An accepted route's CONNECT against the cluster's user (none configured: no check).
fn route_authorized(core: &Core, connect: &serde_json::Value) -> bool {
    let Some(auth) = core.opts.cluster.as_ref().map(|c| &c.authorization) else {
        return true;
    };
    let Some(user) = &auth.user else {
        return true;
    };
    let given_user = connect["user"].as_str().unwrap_or_default();
    let given_pass = connect["pass"].as_str().unwrap_or_default();
    given_user == user
        && crate::nats::auth::secret_matches(auth.password.as_deref().unwrap_or(""), given_pass)
}

/// Tells the other routes about a newly registered peer (its INFO, nonce removed, with the
/// `ip` to dial it at), so that a server that listed one seed ends up in a full mesh.
fn gossip(core: &Core, new: &RouteLink) {
    let links = core.routes.links();
    if links.is_empty() {
        return;
    }
    let mut info = new.info.borrow().clone();
    if let Some(o) = info.as_object_mut() {
        o.remove("nonce");
        let has_ip = o
            .get("ip")
            .and_then(|v| v.as_str())
            .is_some_and(|s| !s.is_empty());
        if !has_ip {
            let ip = new
                .conn
                .peer
                .get()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let port = o.get("port").and_then(|p| p.as_u64()).unwrap_or(0);
            o.insert(
                "ip".into(),
                serde_json::json!(format!("nats-route://{ip}:{port}/")),
            );
        }
    }
    let mut out = b"INFO ".to_vec();
    out.extend_from_slice(info.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for link in links {
        link.conn.send(&out);
    }
}

/// A message from a route: the streaming server takes its requests (and ordinary subscribers
/// see them too), everything else goes to this server's subscribers and the queue groups the
/// message names.
fn deliver_from_route(core: &Core, route: &ClientConn, msg: &MsgRef<'_>, queues: &[Bytes]) {
    if let Some(handler) = core.internal_handler() {
        if handler.on_publish(msg) != Handled::No {
            if core.may_have_subscribers(msg.subject) {
                core.route_from_peer(route, msg, queues);
            }
            return;
        }
    }
    core.route_from_peer(route, msg, queues);
}
