//! One client connection on the core that accepted it: a reader task that parses and handles
//! operations, a writer task that flushes the output buffer (filled by this and by other
//! connections' deliveries) with a write deadline, and timers for server PINGs and the
//! authentication timeout.

use crate::nats::auth;
use crate::nats::core::{ClientConn, CloseReason, ConnectOptions, Core, Handled, LocalSub};
use crate::nats::handover;
use crate::nats::parser::{ClientOp, Parser, ParserLimits, ProtocolError, Publish};
use crate::nats::subject;
use crate::nats::transport::{SharedStream, Transport};
use crate::nats::wire::{self, errors};
use crate::util::timeout::within;
use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;

/// Read sizes adapt between these, as nats-server's do: idle connections stay small, busy
/// ones read in large chunks.
const MIN_READ_CHUNK: usize = 1024;
const MAX_READ_CHUNK: usize = 64 * 1024;
/// Consecutive small reads after which the chunk halves.
const SHRINK_AFTER: u32 = 8;
/// How long a PONG to a client that sends PING ahead of its SUBs waits for those SUBs.
const EARLY_PING_GRACE: std::time::Duration = std::time::Duration::from_millis(5);

/// Shuts the socket down so that a pending read returns at once.
fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: plain syscall on a descriptor this connection owns; it stays open until the
    // TcpStream is dropped, after both tasks end.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// Serves one accepted connection until it closes. The caller has counted it on this core
/// (`GlobalCounters::place`).
pub async fn serve(core: Rc<Core>, stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let cid = core.next_cid();
    let conn = Rc::new(ClientConn::new(cid, core.opts.max_pending));
    conn.peer.set(peer);
    core.stats
        .total_connections
        .set(core.stats.total_connections.get() + 1);
    let info = server_info(
        &core,
        cid,
        peer.map(|p| p.ip().to_string()).unwrap_or_default(),
    );
    let transport = match core.tls_acceptor() {
        None => {
            wire::push_info(&mut conn.out.borrow_mut(), &info);
            Transport::Plain(stream)
        }
        Some(acceptor) => match upgrade(&core, acceptor, stream, &info).await {
            Ok(t) => t,
            Err(e) => {
                log::debug!(
                    "{} - cid:{cid} - TLS handshake error: {e}",
                    peer_text(&peer)
                );
                core.global.release(core.id);
                return;
            }
        },
    };
    conn.plain_tcp.set(matches!(transport, Transport::Plain(_)));
    let stream = SharedStream::new(transport);

    if !core.global.try_open(core.opts.max_connections) {
        let writer =
            glommio::spawn_local(write_loop(core.clone(), conn.clone(), stream.clone(), fd));
        conn.send_err(errors::MAX_CONNECTIONS);
        conn.close(CloseReason::MaxConnectionsExceeded);
        writer.await;
        core.global.release(core.id);
        return;
    }
    log::debug!(
        "{} - cid:{cid} - Client connection created",
        peer_text(&peer)
    );
    core.conns.borrow_mut().insert(cid, conn.clone());
    let parser = parser_for(&core);
    run(core, conn, stream, fd, parser, BytesMut::new()).await;
}

fn parser_for(core: &Core) -> Parser {
    Parser::new(ParserLimits {
        max_control_line: core.opts.max_control_line,
        max_payload: core.opts.max_payload,
    })
}

/// Serves a registered connection (new, or moved here from another core with its unparsed
/// input) until it closes or moves on.
pub async fn run(
    core: Rc<Core>,
    conn: Rc<ClientConn>,
    stream: SharedStream,
    fd: RawFd,
    parser: Parser,
    unparsed: BytesMut,
) {
    let cid = conn.cid;
    let peer = conn.peer.get();
    let writer = glommio::spawn_local(write_loop(core.clone(), conn.clone(), stream.clone(), fd));
    let pinger = glommio::spawn_local(ping_loop(core.clone(), conn.clone(), fd));
    let auth_timer = (core.auth.borrow().required() && !conn.connected.get())
        .then(|| glommio::spawn_local(auth_timeout(core.clone(), conn.clone(), fd)));

    let reason = match read_loop(&core, &conn, stream.clone(), parser, unparsed).await {
        ReadEnd::Closed(reason) => reason,
        ReadEnd::Move {
            to,
            parser,
            unparsed,
        } => {
            // Every core has applied this core's interest changes (the connection's own
            // SUBs among them) before the move's notice can reach them, so none applies an
            // older "add" after it.
            core.sync.wait_synced(core.sync.current()).await;
            drop(pinger);
            drop(auth_timer);
            conn.stop_writer.set(true);
            conn.wake_writer.notify();
            writer.await;
            match handover::hand_over(&core, &conn, stream, unparsed, parser, to) {
                Ok(()) => return,
                Err(e) => {
                    // Nothing moved: the socket is still this core's, but its tasks are
                    // gone; the client reconnects.
                    log::warn!("cid:{cid} - could not move to core {to}: {e}");
                    close_here(&core, &conn);
                    shutdown(fd, libc::SHUT_RDWR);
                    return;
                }
            }
        }
    };
    conn.close(reason);
    log::debug!(
        "{} - cid:{cid} - Client connection closed: {:?}",
        peer_text(&peer),
        conn.closed.get().unwrap_or(reason)
    );
    close_here(&core, &conn);
    drop(pinger);
    drop(auth_timer);
    writer.await;
}

/// Unregisters a closed connection from this core.
fn close_here(core: &Core, conn: &ClientConn) {
    let subs: Vec<Rc<LocalSub>> = conn.subs.borrow_mut().drain().map(|(_, s)| s).collect();
    for sub in &subs {
        core.remove_subscription(sub);
    }
    core.conns.borrow_mut().remove(&conn.cid);
    core.forget_stalls(conn.cid);
    core.global.close();
    core.global.release(core.id);
}

/// How a connection's reader stopped.
enum ReadEnd {
    Closed(CloseReason),
    /// At an operation boundary, to move to another core with what it has not parsed.
    Move {
        to: usize,
        parser: Parser,
        unparsed: BytesMut,
    },
}

/// TLS on the client port, as nats-server does it: INFO in the clear, then the client starts
/// the handshake, which must finish within the tls timeout.
async fn upgrade(
    core: &Core,
    acceptor: futures_rustls::TlsAcceptor,
    mut stream: TcpStream,
    info: &wire::ServerInfo,
) -> Result<Transport, String> {
    let mut hello = Vec::new();
    wire::push_info(&mut hello, info);
    stream.write_all(&hello).await.map_err(|e| e.to_string())?;
    let limit = core
        .opts
        .tls
        .as_ref()
        .and_then(|t| t.timeout)
        .unwrap_or(std::time::Duration::from_secs(2));
    match within(limit, acceptor.accept(stream)).await {
        Some(Ok(tls)) => Ok(Transport::TlsServer(Box::new(tls))),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("timed out".into()),
    }
}

/// After a configuration reload: a connected client whose credentials no longer pass is told
/// 'Authorization Violation' and closed, as nats-server does; the others are not touched.
pub async fn recheck_authorization(core: Rc<Core>) {
    let policy = core.auth.borrow().clone();
    let conns: Vec<Rc<ClientConn>> = core.conns.borrow().values().cloned().collect();
    for conn in conns {
        if !conn.connected.get() || conn.is_closed() {
            continue;
        }
        let connect = conn.opts.borrow().clone();
        if !auth::check_off_core(&policy, &connect).await {
            log::info!(
                "cid:{} - no longer authorized after reload, closing",
                conn.cid
            );
            conn.send_err(errors::AUTH_VIOLATION);
            conn.close(CloseReason::AuthenticationViolation);
        }
    }
}

fn peer_text(peer: &Option<std::net::SocketAddr>) -> String {
    peer.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
}

pub(crate) fn server_info(core: &Core, cid: u64, client_ip: String) -> wire::ServerInfo {
    let opts = &core.opts;
    wire::ServerInfo {
        server_id: core.server_id.to_string(),
        server_name: opts
            .server_name
            .clone()
            .unwrap_or_else(|| core.server_id.to_string()),
        version: wire::NATS_PROTOCOL_VERSION,
        proto: 1,
        go: "stanza",
        host: opts.host.clone(),
        port: opts.port,
        headers: true,
        max_payload: opts.max_payload,
        client_id: cid,
        client_ip,
        auth_required: core.auth.borrow().required(),
        tls_required: core.tls_acceptor().is_some(),
        connect_urls: core.connect_urls.borrow().clone(),
        stanza_version: env!("CARGO_PKG_VERSION"),
        stanza_core: core.id,
        stanza_cores: core.ncores,
    }
}

enum Next {
    Continue,
    /// Answer PONG once every core sees this connection's subscriptions.
    Pong,
    /// A CONNECT to authenticate (possibly slowly, off the core) before going on.
    Connect(Box<ConnectOptions>),
    /// A request found no subscriber: confirm with the other cores before answering 503.
    ConfirmNoResponders(Publish),
    Close(CloseReason),
}

async fn read_loop(
    core: &Rc<Core>,
    conn: &Rc<ClientConn>,
    mut stream: SharedStream,
    mut parser: Parser,
    mut buf: BytesMut,
) -> ReadEnd {
    let mut chunk = vec![0u8; MIN_READ_CHUNK];
    let mut small_reads = 0u32;
    let mut pongs_owed = 0usize;
    loop {
        loop {
            if conn.is_closed() {
                return ReadEnd::Closed(conn.closed.get().unwrap_or(CloseReason::ClientClosed));
            }
            if pongs_owed == 0 {
                if let Some(to) = conn.move_to.take() {
                    return ReadEnd::Move {
                        to,
                        parser,
                        unparsed: buf,
                    };
                }
            }
            match parser.parse(&mut buf) {
                Ok(Some(op)) => match handle(core, conn, op) {
                    Next::Continue => {}
                    Next::Pong if conn.opts.borrow().verbose => {
                        // Verbose clients match +OK and PONG in order: answer in place.
                        core.sync.wait_synced(core.sync.current()).await;
                        conn.send(wire::PONG);
                    }
                    Next::Pong => pongs_owed += 1,
                    Next::Connect(opts) => {
                        if let Next::Close(reason) = finish_connect(core, conn, *opts).await {
                            return ReadEnd::Closed(reason);
                        }
                    }
                    Next::ConfirmNoResponders(p) => {
                        glommio::spawn_local(confirm_no_responders(core.clone(), conn.clone(), p))
                            .detach();
                    }
                    Next::Close(reason) => return ReadEnd::Closed(reason),
                },
                Ok(None) => break,
                Err(e) => return ReadEnd::Closed(protocol_error(conn, &e)),
            }
        }
        if pongs_owed > 0 {
            // nats-py writes a flush PING straight to its socket and the SUBs still in its
            // buffer right after; with nats-server's shared sublist that race is invisible,
            // here the SUB must also reach the other cores. So for that client the PONG waits
            // briefly for bytes that trail the PING, then for every core to see them.
            if conn.writes_ping_early() {
                match within(EARLY_PING_GRACE, stream.read(&mut chunk)).await {
                    Some(Ok(0)) => return ReadEnd::Closed(CloseReason::ClientClosed),
                    Some(Ok(n)) => {
                        buf.extend_from_slice(&chunk[..n]);
                        continue;
                    }
                    Some(Err(_)) => return ReadEnd::Closed(CloseReason::ReadError),
                    None => {}
                }
            }
            core.sync.wait_synced(core.sync.current()).await;
            for _ in 0..pongs_owed {
                conn.send(wire::PONG);
            }
            pongs_owed = 0;
        }
        if let Some(to) = conn.move_to.take() {
            return ReadEnd::Move {
                to,
                parser,
                unparsed: buf,
            };
        }
        core.wait_stalled(conn.cid).await;
        core.outbox.until_uncongested().await;
        let n = match stream.read(&mut chunk).await {
            Ok(0) => return ReadEnd::Closed(CloseReason::ClientClosed),
            Ok(n) => n,
            Err(_) => return ReadEnd::Closed(CloseReason::ReadError),
        };
        buf.extend_from_slice(&chunk[..n]);
        adapt_read_chunk(&mut chunk, n, &mut small_reads);
    }
}

/// Doubles the chunk when a read fills it; halves it after several reads under a quarter.
fn adapt_read_chunk(chunk: &mut Vec<u8>, last_read: usize, small_reads: &mut u32) {
    let len = chunk.len();
    if last_read == len && len < MAX_READ_CHUNK {
        chunk.resize(len * 2, 0);
        *small_reads = 0;
    } else if last_read < len / 4 && len > MIN_READ_CHUNK {
        *small_reads += 1;
        if *small_reads >= SHRINK_AFTER {
            chunk.truncate(len / 2);
            chunk.shrink_to_fit();
            *small_reads = 0;
        }
    } else {
        *small_reads = 0;
    }
}

fn protocol_error(conn: &ClientConn, e: &ProtocolError) -> CloseReason {
    log::debug!("cid:{} - protocol error: {e}", conn.cid);
    match e {
        ProtocolError::UnknownOperation => {
            conn.send_err(errors::UNKNOWN_OP);
            CloseReason::ProtocolViolation
        }
        ProtocolError::ControlLineTooLong => {
            conn.send_err(errors::MAX_CONTROL_LINE);
            CloseReason::MaxControlLineExceeded
        }
        ProtocolError::PayloadTooLarge { .. } => {
            conn.send_err(errors::MAX_PAYLOAD);
            CloseReason::MaxPayloadExceeded
        }
        ProtocolError::BadArguments { .. } => CloseReason::ProtocolViolation,
    }
}

fn handle(core: &Core, conn: &ClientConn, op: ClientOp) -> Next {
    if super::trace::enabled() {
        super::trace::inbound(conn, &op);
    }
    if !conn.connected.get() && core.auth.borrow().required() && !matches!(op, ClientOp::Connect(_))
    {
        conn.send_err(errors::AUTH_VIOLATION);
        return Next::Close(CloseReason::AuthenticationViolation);
    }
    match op {
        ClientOp::Connect(json) => return handle_connect(conn, &json),
        ClientOp::Pub(p) => return handle_pub(core, conn, p),
        ClientOp::Sub {
            subject,
            queue,
            sid,
        } => handle_sub(core, conn, subject, queue, sid),
        ClientOp::Unsub { sid, max } => {
            handle_unsub(core, conn, &sid, max);
            send_ok(conn);
        }
        ClientOp::Ping => return Next::Pong,
        ClientOp::Pong => conn.pings_out.set(0),
        ClientOp::Ignored => {}
    }
    Next::Continue
}

fn send_ok(conn: &ClientConn) {
    if conn.opts.borrow().verbose {
        conn.send(wire::OK);
    }
}

fn handle_connect(conn: &ClientConn, json: &Bytes) -> Next {
    match serde_json::from_slice::<ConnectOptions>(json) {
        Ok(o) => Next::Connect(Box::new(o)),
        Err(e) => {
            log::debug!("cid:{} - invalid CONNECT: {e}", conn.cid);
            conn.send_err(errors::UNKNOWN_OP);
            Next::Close(CloseReason::ProtocolViolation)
        }
    }
}

async fn finish_connect(core: &Core, conn: &ClientConn, opts: ConnectOptions) -> Next {
    let policy = core.auth.borrow().clone();
    if !auth::check_off_core(&policy, &opts).await {
        log::error!(
            "cid:{} - authentication error{}",
            conn.cid,
            opts.user
                .as_deref()
                .map(|u| format!(" - User \"{u}\""))
                .unwrap_or_default()
        );
        conn.send_err(errors::AUTH_VIOLATION);
        return Next::Close(CloseReason::AuthenticationViolation);
    }
    *conn.opts.borrow_mut() = opts;
    conn.connected.set(true);
    send_ok(conn);
    Next::Continue
}

fn handle_pub(core: &Core, conn: &ClientConn, p: Publish) -> Next {
    let (pedantic, headers, no_responders) = {
        let o = conn.opts.borrow();
        (o.pedantic, o.headers, o.no_responders)
    };
    if p.is_hpub && !headers {
        conn.send_err(errors::UNKNOWN_OP);
        return Next::Close(CloseReason::ProtocolViolation);
    }
    if pedantic && !subject::is_valid_literal_subject(p.subject()) {
        conn.send_err(errors::INVALID_PUBLISH_SUBJECT);
        return Next::Continue;
    }
    conn.in_msgs.set(conn.in_msgs.get() + 1);
    conn.in_bytes
        .set(conn.in_bytes.get() + p.payload().len() as u64);
    if let Some(handler) = core.internal_handler() {
        let handled = handler.on_publish(&p.msg_ref());
        if handled != Handled::No && core.may_have_subscribers(p.subject()) {
            // The streaming server is one subscriber among others, as in the reference: a
            // plain subscription on `_STAN.>` (or on a request subject) sees the request too.
            core.route(Some(conn), &p.msg_ref());
        }
        match handled {
            Handled::No => {}
            Handled::Yes => {
                send_ok(conn);
                return Next::Continue;
            }
            Handled::Channel { core: home } => {
                if !conn.placed.replace(true)
                    && home != core.id
                    && home < core.ncores
                    && handover::may_move(core, conn)
                {
                    conn.move_to.set(Some(home));
                }
                send_ok(conn);
                return Next::Continue;
            }
        }
    }
    let found = core.publish(Some(conn), &p.msg_ref());
    send_ok(conn);
    if !found && headers && no_responders && p.reply().is_some() {
        return Next::ConfirmNoResponders(p);
    }
    Next::Continue
}

/// A subscriber may have appeared on another core whose interest has not reached this one
/// yet (clients such as nats-py send SUB after the PING of their flush). After a barrier this
/// core knows what the others had; the request is routed again, and 503 only if still unheard.
async fn confirm_no_responders(core: Rc<Core>, conn: Rc<ClientConn>, p: Publish) {
    core.barrier().await;
    if conn.is_closed() {
        return;
    }
    if !core.route(Some(&conn), &p.msg_ref()) {
        if let Some(reply) = p.reply() {
            core.send_no_responders(&conn, reply);
        }
    }
}

fn handle_sub(core: &Core, conn: &ClientConn, subject: Bytes, queue: Option<Bytes>, sid: Bytes) {
    let valid_queue = queue.as_deref().is_none_or(subject::is_valid_queue);
    if !subject::is_valid_subject(&subject) || !valid_queue {
        conn.send_err(errors::INVALID_SUBJECT);
        return;
    }
    if conn.subs.borrow().contains_key(&sid) {
        send_ok(conn);
        return;
    }
    let max = core.opts.max_subscriptions;
    if max > 0 && conn.subs.borrow().len() >= max {
        log::error!("cid:{} - {}", conn.cid, errors::MAX_SUBSCRIPTIONS);
        conn.send_err(errors::MAX_SUBSCRIPTIONS);
        return;
    }
    let Some(me) = core.conns.borrow().get(&conn.cid).map(Rc::downgrade) else {
        return;
    };
    let sub = Rc::new(LocalSub {
        conn: me,
        cid: conn.cid,
        sid: sid.clone(),
        subject,
        queue,
        max: Cell::new(0),
        delivered: Cell::new(0),
    });
    conn.subs.borrow_mut().insert(sid, sub.clone());
    core.add_subscription(sub);
    send_ok(conn);
}

fn handle_unsub(core: &Core, conn: &ClientConn, sid: &Bytes, max: Option<u64>) {
    let sub = conn.subs.borrow().get(sid).cloned();
    let Some(sub) = sub else {
        return;
    };
    match max {
        Some(max) if max > 0 && sub.delivered.get() < max => sub.max.set(max),
        _ => core.unsubscribe(conn, sid),
    }
}

pub(crate) async fn write_loop(
    core: Rc<Core>,
    conn: Rc<ClientConn>,
    mut stream: SharedStream,
    fd: RawFd,
) {
    let deadline = core.opts.write_deadline;
    let mut spare: Vec<u8> = Vec::new();
    loop {
        if conn.stop_writer.get() {
            // Moving: what is left in `out` travels with the connection.
            return;
        }
        if conn.out.borrow().is_empty() {
            if conn.is_closed() {
                break;
            }
            conn.wake_writer.notified().await;
            continue;
        }
        if matches!(
            conn.closed.get(),
            Some(CloseReason::SlowConsumerPendingBytes)
        ) {
            break;
        }
        std::mem::swap(&mut *conn.out.borrow_mut(), &mut spare);
        conn.writing.set(spare.len());
        // A subscriber cut at max_pending while this write waits on its full socket is closed
        // at once, not when the write deadline passes.
        let cut = async {
            loop {
                if matches!(
                    conn.closed.get(),
                    Some(CloseReason::SlowConsumerPendingBytes)
                ) {
                    return Err(std::io::Error::other("slow consumer cut off"));
                }
                conn.wake_writer.notified().await;
            }
        };
        let written = within(
            deadline,
            futures_lite::future::or(stream.write_all(&spare), cut),
        )
        .await;
        conn.writing.set(0);
        match written {
            Some(Ok(())) => {}
            Some(Err(_)) => {
                conn.close(CloseReason::WriteError);
                break;
            }
            None => {
                core.stats
                    .slow_consumers
                    .set(core.stats.slow_consumers.get() + 1);
                log::warn!(
                    "cid:{} - Slow Consumer Detected: WriteDeadline of {:?} exceeded",
                    conn.cid,
                    deadline
                );
                conn.close(CloseReason::SlowConsumerWriteDeadline);
                break;
            }
        }
        spare.clear();
        if spare.capacity() > 8 * 1024 * 1024 {
            spare = Vec::new();
        }
        conn.drained.notify();
    }
    shutdown(fd, libc::SHUT_RDWR);
    conn.drained.notify();
    if matches!(
        conn.closed.get(),
        Some(CloseReason::SlowConsumerPendingBytes | CloseReason::SlowConsumerWriteDeadline)
    ) {
        // Its buffers were the largest allocations around: return them to the system, so
        // that memory goes back down once a slow consumer is gone.
        drop(spare);
        crate::util::memory::release_free_memory();
    }
}

async fn ping_loop(core: Rc<Core>, conn: Rc<ClientConn>, fd: RawFd) {
    loop {
        Timer::new(core.opts.ping_interval).await;
        if conn.is_closed() {
            return;
        }
        let out = conn.pings_out.get() + 1;
        if out > core.opts.ping_max {
            log::debug!("cid:{} - Stale Client Connection - Closing", conn.cid);
            conn.send_err(errors::STALE_CONNECTION);
            conn.close(CloseReason::StaleConnection);
            shutdown(fd, libc::SHUT_RD);
            return;
        }
        conn.pings_out.set(out);
        conn.send(wire::PING);
    }
}

async fn auth_timeout(core: Rc<Core>, conn: Rc<ClientConn>, fd: RawFd) {
    Timer::new(core.opts.auth_timeout).await;
    if !conn.connected.get() && !conn.is_closed() {
        conn.send_err(errors::AUTH_TIMEOUT);
        conn.close(CloseReason::AuthenticationTimeout);
        shutdown(fd, libc::SHUT_RD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_chunk_grows_when_full_and_shrinks_when_idle() {
        let mut chunk = vec![0u8; MIN_READ_CHUNK];
        let mut small = 0;
        while chunk.len() < MAX_READ_CHUNK {
            let full = chunk.len();
            adapt_read_chunk(&mut chunk, full, &mut small);
        }
        assert_eq!(chunk.len(), MAX_READ_CHUNK);
        adapt_read_chunk(&mut chunk, MAX_READ_CHUNK, &mut small);
        assert_eq!(chunk.len(), MAX_READ_CHUNK, "never above the maximum");
        for _ in 0..SHRINK_AFTER {
            adapt_read_chunk(&mut chunk, 10, &mut small);
        }
        assert_eq!(chunk.len(), MAX_READ_CHUNK / 2);
        for _ in 0..1000 {
            adapt_read_chunk(&mut chunk, 10, &mut small);
        }
        assert_eq!(chunk.len(), MIN_READ_CHUNK, "never below the minimum");
    }
}
