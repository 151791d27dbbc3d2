//! External NATS mode (`-ns url[,url]`): each shard holds its own client connection to the
//! NATS server. Shard 0 subscribes the request subjects (and forwards publishes to their
//! owners over the mesh, as in embedded mode); every shard subscribes its own ack and reply
//! inboxes and publishes its PubAcks and deliveries on its own connection. A dropped
//! connection is retried every 250 ms on every URL, subscriptions are made again, and what
//! the shard publishes meanwhile is dropped (a PubAck then times out and the client
//! publishes again: nothing acknowledged is lost).

use super::streaming::Streaming;
use crate::nats::client_proto::{self, ServerOp};
use crate::nats::transport::{SharedStream, Transport};
use crate::util::notify::Notify;
use crate::util::timeout::within;
use crate::util::url::{parse_urls, NatsUrl};
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;

const RECONNECT_WAIT: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 * 1024;

pub struct External {
    node: Weak<Streaming>,
    urls: Vec<NatsUrl>,
    /// Credentials from the options, used when a URL carries none.
    user: Option<String>,
    pass: Option<String>,
    token: Option<String>,
    name: String,
    out: RefCell<Vec<u8>>,
    wake: Notify,
    connected: Cell<bool>,
    /// Subjects to subscribe on every (re)connection; sid = index + 1.
    subjects: RefCell<Vec<String>>,
    next_url: Cell<usize>,
    pongs: Cell<u64>,
    pong: Notify,
    /// TLS to the NATS server (`-secure`, `-tls_client_*`, `tls { client_* }`, `tls://`).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    tls_server_name: Option<String>,
    /// The cluster's client URLs the NATS server has announced (its INFO `connect_urls`).
    known_urls: RefCell<std::collections::BTreeSet<String>>,
    /// How many times an INFO announced a server not known before (nats.go's "discovered
    /// servers" event, on which the reference checks partitioning again).
    discovered: Cell<u64>,
}

/// The part of a NATS server's INFO this connection reads after the handshake.
#[derive(serde::Deserialize)]
struct InfoUrls {
    #[serde(default)]
    connect_urls: Vec<String>,
}

impl External {
    pub fn new(node: &Rc<Streaming>) -> Result<Rc<External>, String> {
        let o = &node.opts;
        let s = &o.streaming;
        let urls = parse_urls(s.nats_server.as_deref().unwrap_or(""))?;
        let wants_tls = s.secure
            || s.tls.client_ca.is_some()
            || s.tls.client_cert.is_some()
            || urls.iter().any(|u| u.tls);
        let tls = if wants_tls {
            Some(
                crate::nats::tls::client_config(
                    s.tls.client_ca.as_deref().as_slice(),
                    s.tls.client_cert.as_deref(),
                    s.tls.client_key.as_deref(),
                    s.secure || s.tls.skip_verify,
                )
                .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        Ok(Rc::new(External {
            tls,
            tls_server_name: s.tls.server_name.clone(),
            node: Rc::downgrade(node),
            urls,
            user: o.auth.user.clone().or_else(|| s.username.clone()),
            pass: o.auth.password.clone().or_else(|| s.password.clone()),
            token: o.auth.token.clone().or_else(|| s.token.clone()),
            name: format!("_NSS-{}-shard{}", s.cluster_id, node.core.id),
            out: RefCell::new(Vec::new()),
            wake: Notify::new(),
            connected: Cell::new(false),
            subjects: RefCell::new(Vec::new()),
            next_url: Cell::new(0),
            pongs: Cell::new(0),
            pong: Notify::new(),
            known_urls: RefCell::new(std::collections::BTreeSet::new()),
            discovered: Cell::new(0),
        }))
    }

    pub fn publish(&self, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
        if !self.connected.get() {
            return;
        }
        client_proto::push_pub(&mut self.out.borrow_mut(), subject, reply, payload);
        self.wake.notify();
    }

    /// Subscribes `subject` (once: a subject already subscribed is left as it is, so a
    /// cluster node that serves again does not get each request twice).
    pub fn subscribe(&self, subject: &str) {
        let sid = {
            let mut subjects = self.subjects.borrow_mut();
            if subjects.iter().any(|s| s == subject) {
                return;
            }
            subjects.push(subject.to_string());
            subjects.len() as u64
        };
        if self.connected.get() {
            client_proto::push_sub(&mut self.out.borrow_mut(), subject, sid);
            self.wake.notify();
        }
    }

    /// Unsubscribes `subject` (a cluster node that stops serving). Its slot stays, empty, so
    /// the other subscriptions keep their IDs.
    pub fn unsubscribe(&self, subject: &str) {
        let sid = {
            let mut subjects = self.subjects.borrow_mut();
            let Some(i) = subjects.iter().position(|s| s == subject) else {
                return;
            };
            subjects[i].clear();
            i as u64 + 1
        };
        if self.connected.get() {
            client_proto::push_unsub(&mut self.out.borrow_mut(), sid);
            self.wake.notify();
        }
    }

    /// Waits until the server has processed everything sent so far (a PING answered).
    pub async fn flush(&self, limit: Duration) -> bool {
        let before = self.pongs.get();
        self.out.borrow_mut().extend_from_slice(b"PING\r\n");
        self.wake.notify();
        within(limit, async {
            while self.pongs.get() == before {
                self.pong.notified().await;
            }
        })
        .await
        .is_some()
    }

    fn connect_line(&self, url: &NatsUrl) -> String {
        let mut o = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": false,
            "name": self.name,
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "echo": true,
            "headers": false,
            "no_responders": false,
        });
        let user = url.user.clone().or_else(|| self.user.clone());
        let pass = url.pass.clone().or_else(|| self.pass.clone());
        if let Some(map) = o.as_object_mut() {
            if let Some(u) = user {
                map.insert("user".into(), u.into());
                map.insert("pass".into(), pass.unwrap_or_default().into());
            } else if let Some(t) = &self.token {
                map.insert("auth_token".into(), t.clone().into());
            }
        }
        format!("CONNECT {o}\r\n")
    }

    /// Connects to the next URL that answers; the handshake is complete when it returns.
    async fn connect_once(&self) -> Result<(SharedStream, BytesMut, String), String> {
        let i = self.next_url.get() % self.urls.len();
        self.next_url.set(i + 1);
        let url = &self.urls[i];
        let addr = format!("{}:{}", url.host, url.port);
        let stream = within(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str()))
            .await
            .ok_or_else(|| format!("{addr}: connect timeout"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut stream = SharedStream::new(Transport::Plain(stream));
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let handshake = async move {
            // INFO first, in the clear; then TLS if either side wants it.
            let server_wants_tls = loop {
                if let Some(op) = client_proto::next_op(&mut buf).map_err(|e| e.to_string())? {
                    match op {
                        ServerOp::Info(info) => {
                            self.note_urls(&info, false);
                            break info.windows(19).any(|w| w == b"\"tls_required\":true");
                        }
                        other => return Err(format!("expected INFO, got {other:?}")),
                    }
                }
                read_more(&mut stream, &mut buf).await?;
            };
            if server_wants_tls || url.tls || self.tls.is_some() {
                let config = self.tls.clone().ok_or_else(|| {
                    "the NATS server requires TLS: set tls_client_cacert (or -secure)".to_string()
                })?;
                let name = self.tls_server_name.as_deref().unwrap_or(&url.host);
                let server_name = crate::nats::tls::server_name(name).map_err(|e| e.to_string())?;
                let tcp = match Rc::try_unwrap(stream.0).map(RefCell::into_inner) {
                    Ok(Transport::Plain(tcp)) => tcp,
                    _ => return Err("connection already upgraded".into()),
                };
                let tls = futures_rustls::TlsConnector::from(config)
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with the NATS server: {e}"))?;
                stream = SharedStream::new(Transport::TlsClient(Box::new(tls)));
            }
            let mut hello = self.connect_line(url).into_bytes();
            for (i, subject) in self.subjects.borrow().iter().enumerate() {
                if !subject.is_empty() {
                    client_proto::push_sub(&mut hello, subject, i as u64 + 1);
                }
            }
            hello.extend_from_slice(b"PING\r\n");
            stream.write_all(&hello).await.map_err(|e| e.to_string())?;
            loop {
                while let Some(op) = client_proto::next_op(&mut buf).map_err(|e| e.to_string())? {
                    match op {
                        ServerOp::Pong => return Ok((stream, buf)),
                        ServerOp::Err(e) => return Err(format!("NATS server refused: {e}")),
                        _ => {}
                    }
                }
                read_more(&mut stream, &mut buf).await?;
            }
        };
        let (stream, buf) = within(CONNECT_TIMEOUT, handshake)
            .await
            .ok_or_else(|| format!("{addr}: handshake timeout"))??;
        Ok((stream, buf, addr))
    }

    /// The first connection, made before the server reports ready.
    pub async fn start(self: &Rc<Self>) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..self.urls.len() {
            match self.connect_once().await {
                Ok((stream, buf, addr)) => {
                    log::info!("STAN: Connected to NATS Server at {addr}");
                    self.connected.set(true);
                    let me = self.clone();
                    match self.node.upgrade() {
                        Some(node) => node.core.tasks.spawn("external NATS", None, async move {
                            me.run(stream, buf).await
                        }),
                        None => return Err("the streaming layer is gone".into()),
                    }
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(format!("cannot connect to the NATS server: {last}"))
    }

    /// Serves a connection, then reconnects whenever it drops.
    async fn run(self: Rc<Self>, mut stream: SharedStream, mut buf: BytesMut) {
        loop {
            let reason = self.session(&stream, &mut buf).await;
            self.connected.set(false);
            self.out.borrow_mut().clear();
            log::warn!("STAN: connection to the NATS server lost: {reason}; reconnecting");
            loop {
                glommio::timer::sleep(RECONNECT_WAIT).await;
                if self.node.upgrade().is_none() {
                    return;
                }
                match self.connect_once().await {
                    Ok((s, b, addr)) => {
                        log::info!("STAN: Reconnected to NATS Server at {addr}");
                        stream = s;
                        buf = b;
                        self.connected.set(true);
                        break;
                    }
                    Err(e) => log::debug!("STAN: reconnect failed: {e}"),
                }
            }
        }
    }

    /// Reads and writes until the connection fails; returns why.
    async fn session(&self, stream: &SharedStream, buf: &mut BytesMut) -> String {
        let reader = async {
            let mut rs = SharedStream(stream.0.clone());
            loop {
                loop {
                    match client_proto::next_op(buf) {
                        Ok(Some(op)) => self.on_op(op),
                        Ok(None) => break,
                        Err(e) => return format!("protocol error: {e}"),
                    }
                }
                if let Err(e) = read_more(&mut rs, buf).await {
                    return e;
                }
            }
        };
        let writer = async {
            let mut ws = SharedStream(stream.0.clone());
            loop {
                let chunk = std::mem::take(&mut *self.out.borrow_mut());
                if chunk.is_empty() {
                    self.wake.notified().await;
                    continue;
                }
                if let Err(e) = ws.write_all(&chunk).await {
                    return format!("write failed: {e}");
                }
                let mut out = self.out.borrow_mut();
                if out.is_empty() {
                    // Keep the capacity of the buffer just written.
                    let mut reuse = chunk;
                    reuse.clear();
                    *out = reuse;
                }
            }
        };
        futures_lite::future::or(reader, writer).await
    }

    fn on_op(&self, op: ServerOp) {
        match op {
            ServerOp::Msg {
                subject,
                reply,
                payload,
                ..
            } => {
                if let Some(node) = self.node.upgrade() {
                    node.on_external_msg(&subject, reply.as_ref(), &payload);
                }
            }
            ServerOp::Ping => {
                self.out.borrow_mut().extend_from_slice(b"PONG\r\n");
                self.wake.notify();
            }
            ServerOp::Pong => {
                self.pongs.set(self.pongs.get() + 1);
                self.pong.notify();
            }
            ServerOp::Err(e) => log::error!("STAN: NATS server error: {e}"),
            ServerOp::Info(info) => self.note_urls(&info, true),
            ServerOp::Ok => {}
        }
    }

    /// Takes the `connect_urls` of an INFO; an INFO after the handshake that names a server
    /// not known before counts as servers discovered. An INFO that does not parse is ignored
    /// (the connection does not depend on it).
    fn note_urls(&self, info: &[u8], after_handshake: bool) {
        let Ok(parsed) = serde_json::from_slice::<InfoUrls>(info) else {
            return;
        };
        let mut known = self.known_urls.borrow_mut();
        let mut new = false;
        for url in parsed.connect_urls {
            new |= known.insert(url);
        }
        if new && after_handshake {
            self.discovered.set(self.discovered.get() + 1);
        }
    }

    /// How many "discovered servers" events this connection has seen.
    pub fn discovered(&self) -> u64 {
        self.discovered.get()
    }
}

async fn read_more(stream: &mut SharedStream, buf: &mut BytesMut) -> Result<(), String> {
    let start = buf.len();
    buf.resize(start + READ_CHUNK, 0);
    match stream.read(&mut buf[start..]).await {
        Ok(0) => {
            buf.truncate(start);
            Err("connection closed by the NATS server".into())
        }
        Ok(n) => {
            buf.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e.to_string())
        }
    }
}
