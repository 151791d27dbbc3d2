//! Where each streaming request goes: `on_publish` classifies a subject on the core that read
//! it and sends the request to the core that owns it (the channel's shard, the control plane
//! on core 0, the core that waits on a reply inbox); requests for one core are batched per
//! turn. On the receiving core, `handle` takes each plane's messages: publishes and acks of a
//! turn together, then subscriptions, registry changes and control messages.

use super::cluster::membership::Core0Request;
use super::messages::{ControlMsg, DataMsg, PublishFrame, RegistryEvent, StanMsg};
use super::requests;
use super::streaming::Streaming;
use super::subjects::Kind;
use super::time;
use crate::nats::core::{Handled, InternalHandler, MsgRef};
use crate::nats::mesh_msg::MeshMsg;
use crate::stan::snapshot::{self};
use crate::util::gathering::Gathering;
use bytes::Bytes;
use prost::Message;
use shards::pb::{Ping, PingResponse};
use shards::shard::{Incoming, Input, SubEnd};

impl Streaming {
    /// An ack whose inbox names a shard that does not hold its channel (handed out under
    /// another core count) goes to the channel's owner, which finds the subscription by
    /// channel. `here_too`: also when that is this core (an inbox naming a shard this run
    /// does not have); an ack this core's shard already put `Elsewhere` is dropped instead.
    pub(super) fn pass_ack_to_owner(&self, subject: Bytes, payload: Bytes, here_too: bool) {
        let Ok(ack) = shards::wire::AckView::parse(&payload) else {
            return;
        };
        let owner = self.core_of_channel(ack.subject);
        if owner != self.core.id || here_too {
            self.send_data(owner, DataMsg::Ack { subject, payload });
        }
    }

    /// Sends a message to a core: handled here if that is this core. Requests batched for
    /// that core this turn go first.
    pub fn send_to(&self, core: usize, msg: StanMsg) {
        if core == self.core.id {
            self.handle(core, msg);
            return;
        }
        if core >= self.core.ncores {
            return;
        }
        self.send_remote_batch(core);
        self.core
            .outbox
            .push(core, MeshMsg::Internal(Box::new(msg)));
    }

    /// Calls every core (this one included) with `msg_for(token)`; their answers are gathered
    /// in `gathering` under that token (`Gathering::wait`).
    pub fn call_every_core<T>(
        &self,
        gathering: &Gathering<T>,
        msg_for: impl Fn(u64) -> StanMsg,
    ) -> u64 {
        let token = gathering.open(self.core.ncores);
        for core in 0..self.core.ncores {
            self.send_to(core, msg_for(token));
        }
        token
    }

    pub fn send_control(&self, core: usize, msg: ControlMsg) {
        self.send_to(core, StanMsg::Control(msg));
    }

    /// A request for the shard that owns its channel: handled here if that is this core, else
    /// kept with the other requests of this turn for that core and sent with them, as one
    /// mesh message, when the task that received them yields.
    pub fn send_data(&self, shard: usize, msg: DataMsg) {
        if shard == self.core.id {
            self.handle_data(msg);
            return;
        }
        if shard >= self.core.ncores {
            return;
        }
        if let Some(batch) = self.remote_batches.borrow_mut().get_mut(shard) {
            batch.push(msg);
        }
        if !self.remote_scheduled.replace(true) {
            if let Some(me) = self.rc() {
                glommio::spawn_local(async move {
                    futures_lite::future::yield_now().await;
                    me.remote_scheduled.set(false);
                    for shard in 0..me.core.ncores {
                        me.send_remote_batch(shard);
                    }
                })
                .detach();
            }
        }
    }

    pub(super) fn send_remote_batch(&self, shard: usize) {
        let batch = match self.remote_batches.borrow_mut().get_mut(shard) {
            Some(b) if !b.is_empty() => std::mem::take(b),
            _ => return,
        };
        self.core
            .outbox
            .push(shard, MeshMsg::Internal(Box::new(StanMsg::Data(batch))));
    }

    pub(super) fn ping(&self, payload: &Bytes, reply: Option<&Bytes>) {
        if payload.is_empty() {
            return;
        }
        let Ok(ping) = Ping::decode(payload.clone()) else {
            return;
        };
        let client = self
            .shard
            .borrow()
            .client_for_conn(&ping.conn_id)
            .map(str::to_string);
        match client {
            Some(client_id) => {
                self.reply(reply, Bytes::new());
                if self.shard.borrow().heartbeat_failed(&client_id) {
                    self.send_control(0, ControlMsg::HurryHeartbeat { client_id });
                }
            }
            None => {
                let r = PingResponse {
                    error: requests::ERR_PING_UNKNOWN.to_string(),
                };
                self.reply(reply, Bytes::from(r.encode_to_vec()));
            }
        }
    }

    /// Keeps a publish or an ack for the end of the turn (see `batched`).
    pub(super) fn batch(&self, msg: DataMsg) {
        self.batched.borrow_mut().push(msg);
        self.schedule_batch();
    }

    /// Handles what was kept, once, when the task that read it yields.
    pub(super) fn schedule_batch(&self) {
        if self.batch_scheduled.replace(true) {
            return;
        }
        if let Some(me) = self.rc() {
            // glommio runs a spawned task at once, up to its first wait: yield first, so that
            // the receiving task finishes its whole read before the batch is handled.
            glommio::spawn_local(async move {
                futures_lite::future::yield_now().await;
                me.batch_scheduled.set(false);
                me.handle_batched();
            })
            .detach();
        }
    }

    /// Handles the publishes and acks kept this turn, in the order they came, and fills the
    /// room that acks taken at once made.
    pub(super) fn handle_batched(&self) {
        let batch = std::mem::take(&mut *self.batched.borrow_mut());
        if batch.is_empty() && !self.shard.borrow().has_acked_rooms() {
            return;
        }
        let now = time::now();
        self.last_now.set(now);
        {
            let mut shard = self.shard.borrow_mut();
            for m in &batch {
                match m {
                    DataMsg::Publish(p) => {
                        let channel = std::str::from_utf8(p.channel()).unwrap_or("");
                        let incoming = Incoming {
                            pub_msg: p.payload(),
                            reply: p.reply(),
                            frame: Some(p.frame()),
                        };
                        shard.step(now, Input::Publish { channel, incoming });
                    }
                    DataMsg::Ack { subject, payload } => {
                        shard.step(now, Input::Ack { subject, payload })
                    }
                    DataMsg::Subscribe { .. } | DataMsg::Unsubscribe { .. } => {}
                }
            }
            // The room acks made (this turn's, and those taken in place) is filled once per
            // subscription.
            shard.step(now, Input::EndOfTurn);
        }
        // Keep the buffer's capacity for the next turn.
        let mut batch = batch;
        batch.clear();
        let mut kept = self.batched.borrow_mut();
        if kept.is_empty() {
            *kept = batch;
        }
        drop(kept);
        self.flush();
    }

    pub(super) fn handle(&self, from: usize, msg: StanMsg) {
        match msg {
            StanMsg::Data(msgs) => {
                // Publishes and acks are handled together, at once (they waited on the
                // sending core already); anything else after those before it.
                for m in msgs {
                    match m {
                        DataMsg::Publish(_) | DataMsg::Ack { .. } => {
                            self.batched.borrow_mut().push(m)
                        }
                        other => self.handle_data(other),
                    }
                }
                self.handle_batched();
            }
            // Anything else sees the state the publishes and acks before it left.
            StanMsg::Registry(event) => {
                self.handle_batched();
                self.apply_registry(from, event);
            }
            StanMsg::Control(msg) => {
                self.handle_batched();
                self.handle_control(from, msg);
            }
        }
    }

    pub(super) fn handle_data(&self, msg: DataMsg) {
        let req = match msg {
            DataMsg::Publish(_) | DataMsg::Ack { .. } => {
                self.batch(msg);
                return;
            }
            other => other,
        };
        self.handle_batched();
        let now = time::now();
        match req {
            DataMsg::Publish(_) | DataMsg::Ack { .. } => {}
            DataMsg::Subscribe { req, reply } => {
                if self.partition.is_some() && !self.shard.borrow().knows_client(&req.client_id) {
                    // Another server may have answered the client's connect before this one
                    // registered it: wait for it a moment, as the reference does.
                    if let Some(me) = self.rc() {
                        glommio::spawn_local(me.subscribe_once_known(req, reply)).detach();
                    }
                    return;
                }
                self.shard
                    .borrow_mut()
                    .step(now, Input::Subscribe { req, reply });
                self.flush();
            }
            DataMsg::Unsubscribe { req, end, reply } => {
                let req = &req;
                self.shard
                    .borrow_mut()
                    .step(now, Input::Unsubscribe { req, end, reply });
                self.flush();
            }
        }
    }

    pub(super) fn apply_registry(&self, from: usize, event: RegistryEvent) {
        match event {
            RegistryEvent::ClientAdded {
                client_id,
                conn_id,
                token,
            } => {
                let client_id = &client_id;
                let added = Input::ClientAdded { client_id, conn_id };
                self.shard.borrow_mut().step(time::now(), added);
                self.send_control(from, ControlMsg::Done { token });
            }
            RegistryEvent::ClientRemoved { client_id, token } => {
                self.shard.borrow_mut().step(
                    time::now(),
                    Input::ClientRemoved {
                        client_id: &client_id,
                    },
                );
                self.flush();
                self.send_control(from, ControlMsg::Done { token });
            }
            RegistryEvent::HeartbeatState { client_id, failed } => {
                let client_id = &client_id;
                let state = Input::HeartbeatState { client_id, failed };
                self.shard.borrow_mut().step(time::now(), state);
            }
        }
    }

    pub(super) fn handle_control(&self, from: usize, msg: ControlMsg) {
        match msg {
            ControlMsg::Reply { token, payload } => {
                if self.control_answer(token) {
                    return;
                }
                // The waiter stays registered until its owner drops it: a request may gather
                // several answers.
                if let Some(w) = self.waiters.borrow().get(&token) {
                    w.answered.set(true);
                    w.answers.borrow_mut().push(payload);
                    w.notify.notify();
                }
            }
            ControlMsg::Connect { payload, reply } => self.on_connect(payload, reply),
            ControlMsg::Close { payload, reply } => self.on_close(payload, reply),
            ControlMsg::Done { token } => self.on_done(token),
            ControlMsg::HurryHeartbeat { client_id } => self.hurry_heartbeat(&client_id),
            ControlMsg::Activate { ack_key } => {
                if let Some(me) = self.rc() {
                    glommio::spawn_local(async move {
                        let result = me.activate(ack_key).await;
                        me.send_control(0, ControlMsg::Activated { result });
                    })
                    .detach();
                }
            }
            ControlMsg::FtMessage { payload } => {
                if let Some(ft) = &self.ft {
                    ft.on_message(self, &payload);
                }
            }
            ControlMsg::Activated { result } => {
                if let Some(ft) = &self.ft {
                    ft.core_reported(result);
                }
            }
            ControlMsg::Raft { payload } => self.raft_receive(&payload),
            ControlMsg::RaftFetch { payload, reply } => self.answer_fetch(&payload, reply),
            ControlMsg::ClusterServe { token, ack_key } => {
                self.request_transition(from, token, Some(ack_key))
            }
            ControlMsg::ClusterStandDown { token } => self.request_transition(from, token, None),
            ControlMsg::RaftCore0 {
                request,
                payload,
                reply,
            } => self.on_core0_request(request, payload, reply),
            ControlMsg::ClusterMembership { token, node, add } => {
                self.change_partition_membership(from, token, node, add)
            }
            ControlMsg::ClusterReport { token, result } => {
                self.cluster_gathers.answer(token, result)
            }
            ControlMsg::Snapshot { token } => {
                let snapshot = Box::new(snapshot::take(self));
                self.send_control(from, ControlMsg::SnapshotReply { token, snapshot });
            }
            ControlMsg::SnapshotReply { token, snapshot } => self.gathers.answer(token, *snapshot),
        }
    }
}

impl InternalHandler for Streaming {
    /// Publishes and subscription requests name the core of their channel: the sender's
    /// connection is best served from there (deliveries, acks and PubAcks then never cross
    /// between cores).
    fn on_publish(&self, msg: &MsgRef<'_>) -> Handled {
        let Some(kind) = self.subjects.classify(msg.subject) else {
            return Handled::No;
        };
        if kind == Kind::Ft {
            // Core 0 watches the FT subject (routes and the external connection deliver there;
            // a local publisher's message is passed on); the message still goes to whoever
            // else subscribes.
            match &self.ft {
                Some(ft) => ft.on_message(self, msg.payload),
                None if self.role.is_ft() => {
                    let payload = msg.share(msg.payload);
                    self.send_control(0, ControlMsg::FtMessage { payload });
                }
                None => {}
            }
            return Handled::No;
        }
        match kind {
            Kind::Raft { node, group } if self.role.cluster.is_some() => {
                self.on_raft(node, group, msg.share(msg.payload));
                return Handled::Yes;
            }
            Kind::RaftBootstrap => {
                self.on_raft_bootstrap(msg.payload);
                return Handled::No;
            }
            Kind::RaftHello | Kind::RaftJoin | Kind::RaftNodeAdmin { .. }
                if self.role.cluster.is_some() =>
            {
                let request = match kind {
                    Kind::RaftJoin => Core0Request::Join,
                    Kind::RaftNodeAdmin { add } => Core0Request::NodeAdmin { add },
                    _ => Core0Request::Hello,
                };
                let reply = msg.reply.map(|r| msg.share(r));
                self.on_core0_request(request, msg.share(msg.payload), reply);
                return Handled::No;
            }
            Kind::RaftFetch { node } if self.role.cluster.is_some() => {
                let reply = msg.reply.map(|r| msg.share(r));
                self.on_raft_fetch(node, msg.share(msg.payload), reply);
                return Handled::Yes;
            }
            Kind::RaftFetched { node, core, token } if self.role.cluster.is_some() => {
                if self
                    .role
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.node_id == node)
                {
                    let payload = msg.share(msg.payload);
                    self.send_control(core, ControlMsg::Reply { token, payload });
                }
                return Handled::Yes;
            }
            Kind::Raft { .. }
            | Kind::RaftFetch { .. }
            | Kind::RaftFetched { .. }
            | Kind::RaftHello
            | Kind::RaftJoin
            | Kind::RaftNodeAdmin { .. } => return Handled::No,
            _ => {}
        }
        if self.is_stopped() {
            return Handled::No;
        }
        if kind
            == (Kind::Ack {
                shard: self.core.id,
            })
        {
            // An ack for this core is taken at once, in place (nothing is kept but who got
            // room); only filling that room waits for the end of the turn.
            let ack = Input::Ack {
                subject: msg.subject,
                payload: msg.payload,
            };
            // Taking an ack reads no time: the turn's last reading does, and saves a clock
            // read per ack on the hottest path.
            self.shard.borrow_mut().step(self.last_now.get(), ack);
            self.schedule_batch();
            return Handled::Yes;
        }
        let ncores = self.core.ncores;
        if let Kind::Publish { channel } = kind {
            if !self.serves_channel(channel) {
                return Handled::No;
            }
            let shard = self.core_of_channel(channel);
            let Some(frame) = PublishFrame::new(msg.backing, channel, msg.reply, msg.payload)
            else {
                log::warn!("STAN: publish of 4 GiB or more on {channel:?} dropped");
                return Handled::Yes;
            };
            self.send_data(shard, DataMsg::Publish(frame));
            return Handled::Channel { core: shard };
        }
        if kind == Kind::Partitions {
            // Lists reach core 0 (its routes, its external connection).
            if self.core.id == 0 {
                self.answer_partition_list(msg.payload, msg.reply);
            }
            return Handled::No;
        }
        let reply = msg.reply.map(|r| msg.share(r));
        let payload = msg.share(msg.payload);
        match kind {
            Kind::Publish { .. } => {}
            Kind::Subscribe => match requests::check_subscription(&payload) {
                Ok(req) if !self.serves_channel(req.subject.as_bytes()) => return Handled::No,
                Ok(req) => {
                    let shard = self.core_of_channel(req.subject.as_bytes());
                    self.send_data(
                        shard,
                        DataMsg::Subscribe {
                            req: Box::new(req),
                            reply,
                        },
                    );
                    return Handled::Channel { core: shard };
                }
                Err(e) => self.reply(reply.as_ref(), requests::sub_error(e)),
            },
            Kind::Unsubscribe | Kind::SubClose => {
                let end = if kind == Kind::Unsubscribe {
                    SubEnd::Unsubscribe
                } else {
                    SubEnd::Close
                };
                match requests::decode_unsubscribe(&payload) {
                    Ok(req) if !self.serves_channel(req.subject.as_bytes()) => return Handled::No,
                    Ok(req) => {
                        let shard = self.core_of_channel(req.subject.as_bytes());
                        self.send_data(
                            shard,
                            DataMsg::Unsubscribe {
                                req: Box::new(req),
                                end,
                                reply,
                            },
                        );
                    }
                    Err(e) => self.reply(reply.as_ref(), requests::sub_error(e)),
                }
            }
            Kind::Ack { shard } => {
                let subject = msg.share(msg.subject);
                if shard < ncores {
                    self.send_data(shard, DataMsg::Ack { subject, payload });
                } else {
                    // An inbox of a larger core count than this run's.
                    self.pass_ack_to_owner(subject, payload, true);
                }
            }
            Kind::Reply { shard, token } => {
                self.send_control(shard, ControlMsg::Reply { token, payload })
            }
            Kind::Discover => self.send_control(0, ControlMsg::Connect { payload, reply }),
            Kind::Close => self.send_control(0, ControlMsg::Close { payload, reply }),
            Kind::Ping => self.ping(&payload, reply.as_ref()),
            Kind::Ft
            | Kind::Partitions
            | Kind::Raft { .. }
            | Kind::RaftBootstrap
            | Kind::RaftHello
            | Kind::RaftJoin
            | Kind::RaftNodeAdmin { .. }
            | Kind::RaftFetch { .. }
            | Kind::RaftFetched { .. } => {}
        }
        Handled::Yes
    }

    fn on_mesh(&self, from: usize, msg: Box<dyn std::any::Any + Send>) {
        if let Ok(m) = msg.downcast::<StanMsg>() {
            self.handle(from, *m);
        }
    }
}
