//! Moving a live connection to another core: the core of the channel its client reads.
//!
//! A connection is placed at accept time, before anything says which channels its client will
//! use. A streaming subscriber on another core than its channel pays for every delivery and
//! every ack twice (a hop between cores each way, and on a busy machine an executor wake-up
//! each); a publisher, for every publish and PubAck. So a plain-TCP connection moves, once, to
//! the core of the channel of its client's first STAN publish or subscription, at an
//! operation boundary of its reader (only once: a second move could meet the stubs of the
//! first, and the notices of two moves could reach a third core in either order):
//!
//! 1. The old core stops reading and writing it, and sends the socket (a duplicate of its
//!    descriptor), its unparsed input, its unwritten output and its subscriptions
//!    (`ConnMove`). From then on the old core's sublist entries for it are stubs that forward
//!    what matches them (`ToConn`) instead of writing it.
//! 2. The new core installs the subscriptions, holds the connection's own output (`held`),
//!    and tells every other core at once that the interest moved (`InterestMove`): each
//!    applies it in one step, so a message goes to one of the two cores, never both, never
//!    neither.
//! 3. The old core, on that notice, has forwarded everything the new core had routed to it
//!    before (mesh rings are FIFO) and says so (`ForwardDone`): the held output follows it,
//!    so the new core's own deliveries keep their order. Third cores confirm
//!    (`MoveApplied`); once all have, nothing more can reach the stubs and they go.
//!
//! Messages a third core published to the connection just before it applied the move may
//! arrive after ones it published just after (forwarded through the old core): per-publisher
//! order holds except across that instant, and only with three or more cores.

use super::mesh_msg::{InterestChange, MeshMsg};
use crate::nats::client;
use crate::nats::core::{ClientConn, ConnectOptions, Core, LocalSub};
use crate::nats::parser::Parser;
use crate::nats::transport::{SharedStream, Transport};
use bytes::{Bytes, BytesMut};
use std::cell::Cell;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;

/// One subscription of a moving connection.
#[derive(Debug)]
pub struct MovedSub {
    pub sid: Bytes,
    pub subject: Bytes,
    pub queue: Option<Bytes>,
    pub max: u64,
    pub delivered: u64,
    /// The old core has no other subscriber on (subject, queue).
    pub drop_left: bool,
}

/// Everything a connection is, in transit between two cores.
pub struct MovedConn {
    /// A duplicate of the socket's descriptor, owned by this value until adopted.
    pub fd: RawFd,
    pub cid: u64,
    pub opts: ConnectOptions,
    pub subs: Vec<MovedSub>,
    /// Output queued and not written yet.
    pub out: Vec<u8>,
    /// Input read and not parsed yet, and the parser's state over it.
    pub unparsed: BytesMut,
    pub parser: Parser,
    pub counters: [u64; 4],
    pub pings_out: u32,
    pub peer: Option<std::net::SocketAddr>,
    pub started: std::time::SystemTime,
}

impl std::fmt::Debug for MovedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MovedConn")
            .field("cid", &self.cid)
            .field("subs", &self.subs.len())
            .finish()
    }
}

impl Drop for MovedConn {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: the descriptor was duplicated for this value and nothing else owns it.
            unsafe {
                libc::close(self.fd);
            }
        }
    }
}

/// What the old core keeps of a connection that left, until every core has applied the move.
pub struct MovingOut {
    pub conn: Rc<ClientConn>,
    pub subs: Vec<(Rc<LocalSub>, bool)>,
    /// Notices still expected: the new core's `InterestMove` and a `MoveApplied` from each
    /// third core.
    pub waiting: usize,
}

/// Why a connection could not be handed over (it is then closed where it is).
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("not a plain TCP connection")]
    NotPlainTcp,
    #[error("cannot duplicate the socket: {0}")]
    Dup(std::io::Error),
}

/// Whether a connection may move: plain TCP, connected, more than one core, and no queue
/// subscription (a queue group's spread over cores is left as it is).
pub fn may_move(core: &Core, conn: &ClientConn) -> bool {
    core.ncores > 1
        && conn.plain_tcp.get()
        && conn.connected.get()
        && !conn.is_closed()
        && conn.subs.borrow().values().all(|s| s.queue.is_none())
}

/// Old core, step 1. The reader has stopped at an operation boundary and the writer has
/// ended; `stream` is the last handle of the socket on this core.
pub fn hand_over(
    core: &Rc<Core>,
    conn: &Rc<ClientConn>,
    stream: SharedStream,
    unparsed: BytesMut,
    parser: Parser,
    to: usize,
) -> Result<(), HandOverError> {
    let fd = match &*stream.0.borrow() {
        Transport::Plain(s) => std::os::fd::AsRawFd::as_raw_fd(s),
        _ => return Err(HandOverError::NotPlainTcp),
    };
    // SAFETY: duplicates a descriptor this connection owns; the copy travels in MovedConn.
    // Close-on-exec, as every socket of the process (an archive script must not inherit it).
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(HandOverError::Dup(std::io::Error::last_os_error()));
    }
    let subs: Vec<Rc<LocalSub>> = conn.subs.borrow().values().cloned().collect();
    let moved_subs = subs
        .iter()
        .map(|s| MovedSub {
            sid: s.sid.clone(),
            subject: s.subject.clone(),
            queue: s.queue.clone(),
            max: s.max.get(),
            delivered: s.delivered.get(),
            drop_left: core.local_interest_count(&s.subject, s.queue.as_ref()) <= 1,
        })
        .collect::<Vec<_>>();
    let drops: Vec<bool> = moved_subs.iter().map(|s| s.drop_left).collect();
    let moved = MovedConn {
        fd: copy,
        cid: conn.cid,
        opts: conn.opts.borrow().clone(),
        subs: moved_subs,
        out: std::mem::take(&mut *conn.out.borrow_mut()),
        unparsed,
        parser,
        counters: [
            conn.in_msgs.get(),
            conn.out_msgs.get(),
            conn.in_bytes.get(),
            conn.out_bytes.get(),
        ],
        pings_out: conn.pings_out.get(),
        peer: conn.peer.get(),
        started: conn.started,
    };
    // From here on what matches its subscriptions on this core is forwarded.
    conn.moved_to.set(Some(to));
    core.conns.borrow_mut().remove(&conn.cid);
    core.forget_stalls(conn.cid);
    core.moving_out.borrow_mut().insert(
        conn.cid,
        MovingOut {
            conn: conn.clone(),
            subs: subs.into_iter().zip(drops).collect(),
            waiting: core.ncores - 1,
        },
    );
    core.global.release(core.id);
    core.global.place_on(to);
    core.outbox.push(to, MeshMsg::ConnMove(Box::new(moved)));
    log::debug!("cid:{} - moved to core {to}", conn.cid);
    drop(stream);
    Ok(())
}

/// New core, step 2: installs the connection at once (messages for it may follow in the same
/// mesh batch) and starts serving it.
pub fn adopt(core: &Rc<Core>, from: usize, mut moved: Box<MovedConn>) {
    let fd = std::mem::replace(&mut moved.fd, -1);
    // SAFETY: the descriptor was duplicated for this transfer and is owned by it alone.
    let stream = unsafe { glommio::net::TcpStream::from_raw_fd(fd) };
    let mut fresh = ClientConn::new(moved.cid, core.opts.max_pending);
    fresh.started = moved.started;
    let conn = Rc::new(fresh);
    *conn.opts.borrow_mut() = std::mem::take(&mut moved.opts);
    conn.connected.set(true);
    conn.plain_tcp.set(true);
    conn.placed.set(true);
    conn.peer.set(moved.peer);
    let [in_msgs, out_msgs, in_bytes, out_bytes] = moved.counters;
    conn.in_msgs.set(in_msgs);
    conn.out_msgs.set(out_msgs);
    conn.in_bytes.set(in_bytes);
    conn.out_bytes.set(out_bytes);
    conn.pings_out.set(moved.pings_out);
    *conn.out.borrow_mut() = std::mem::take(&mut moved.out);
    *conn.held.borrow_mut() = Some(Vec::new());
    core.conns.borrow_mut().insert(conn.cid, conn.clone());
    let mut changes = Vec::with_capacity(moved.subs.len());
    for s in std::mem::take(&mut moved.subs) {
        let sub = Rc::new(LocalSub {
            conn: Rc::downgrade(&conn),
            cid: conn.cid,
            sid: s.sid.clone(),
            subject: s.subject.clone(),
            queue: s.queue.clone(),
            max: Cell::new(s.max),
            delivered: Cell::new(s.delivered),
        });
        conn.subs.borrow_mut().insert(s.sid, sub.clone());
        let add_new = core.install_moved_subscription(sub, from, s.drop_left);
        changes.push(InterestChange {
            subject: s.subject,
            queue: s.queue,
            drop_left: s.drop_left,
            add_new,
        });
    }
    for peer in core.outbox.peers() {
        core.outbox.push(
            peer,
            MeshMsg::InterestMove {
                cid: conn.cid,
                left: from,
                changes: changes.clone(),
            },
        );
    }
    let unparsed = std::mem::take(&mut moved.unparsed);
    let parser = std::mem::replace(&mut moved.parser, Parser::new(Default::default()));
    glommio::spawn_local(client::run(
        core.clone(),
        conn,
        SharedStream::new(Transport::Plain(stream)),
        fd,
        parser,
        unparsed,
    ))
    .detach();
}
