//! Process start-up: one pinned glommio executor per core, each joined to the channel mesh,
//! each accepting on the client port (SO_REUSEPORT) and placing new connections on the core
//! that owns the fewest; the main thread waits for signals.

use crate::config::options::Authorization;
use crate::config::Options;
use crate::mesh::Batch;
use crate::nats::client;
use crate::nats::core::{CloseReason, Core, GlobalCounters};
use crate::nats::mesh_msg::MeshMsg;
use crate::stan::directory::SharedDirectory;
use crate::stan::role::Role;
use crate::stan::streaming::Streaming;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::{AcceptedTcpStream, TcpListener};
use glommio::{LocalExecutorBuilder, Placement};
use shards::ack_key::AckKey;
use shards::store::lock::{Attempt, StoreLock};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Batches in flight per ring of the mesh.
const MESH_RING_BATCHES: usize = 1024;
/// Accepted connections in flight to another core.
const HANDOFF_RING: usize = 256;
/// glommio's default per-executor registered I/O memory.
const MAX_IO_MEMORY: usize = 10 << 20;
const MIN_IO_MEMORY: usize = 512 << 10;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("Error listening on port: {addr}, {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start a glommio executor (stanza needs io_uring: Linux 5.8 or newer, not blocked by seccomp or kernel.io_uring_disabled): {0}")]
    Executor(String),
    #[error("core {core}: {msg}")]
    Core { core: usize, msg: String },
    #[error("{0}")]
    Tls(#[from] crate::nats::tls::TlsError),
    #[error("stan: store directory {dir:?} is in use by another server ({holder}); one server uses a store directory at a time (FT servers share one with ft_group)")]
    StoreInUse { dir: String, holder: String },
    #[error("{0}")]
    StoreLock(#[from] shards::store::lock::LockError),
    #[error("the server did not become ready within {0:?}")]
    StartTimeout(Duration),
}

/// Per-executor registered memory: glommio locks it, so all executors together must fit in
/// RLIMIT_MEMLOCK (8 MiB by default for non-root users) with room for the rings.
fn io_memory_per_executor(cores: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    if !ok || limit.rlim_cur == libc::RLIM_INFINITY {
        return MAX_IO_MEMORY;
    }
    let budget = (limit.rlim_cur as usize) / 2 / cores.max(1);
    budget.clamp(MIN_IO_MEMORY, MAX_IO_MEMORY)
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn new_server_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::rng();
    let mut id = String::from("N");
    for _ in 0..55 {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// A plain bind (no SO_REUSEPORT) fails if anyone, including another stanza, holds the port;
/// the executors' shared binds would not notice.
///
/// A server killed a moment ago still holds its port for a while: the kernel tears an
/// io_uring instance down after the process is gone, and the accept it had queued keeps the
/// listening socket open until then. So "in use" is retried for up to PORT_RETRY.
fn check_port_free(host: &str, port: u16) -> Result<(), ServerError> {
    let deadline = std::time::Instant::now() + PORT_RETRY;
    loop {
        match std::net::TcpListener::bind((host, port)) {
            Ok(_) => return Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => {
                return Err(ServerError::Listen {
                    addr: format!("{host}:{port}"),
                    source,
                })
            }
        }
    }
}

const PORT_RETRY: Duration = Duration::from_secs(2);

/// This core's listening socket. Every core binds the same port (SO_REUSEPORT: the kernel
/// spreads new connections over them); SO_REUSEADDR lets a restarted server bind while
/// connections of the previous one are in TIME_WAIT, as Go servers can. glommio's own bind
/// sets only the first (and panics on a host that does not resolve).
fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::net::ToSocketAddrs;
    use std::os::fd::{FromRawFd, IntoRawFd};
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address"))?;
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(1024)?;
    // SAFETY: the descriptor was just created, bound and put to listening here, and its
    // ownership moves to the glommio listener.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Checks that this process may create an io_uring (glommio panics when it cannot): the
/// kernel may be too old, or io_uring blocked by seccomp or `kernel.io_uring_disabled`.
fn probe_io_uring() -> Result<(), ServerError> {
    // io_uring_params is 120 bytes; zeroed means "defaults".
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and writes only the params buffer we pass; the returned
    // descriptor is closed right away.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(ServerError::Executor(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: fd is a descriptor this function just created.
    unsafe {
        libc::close(fd as libc::c_int);
    }
    Ok(())
}

/// A running server: its cores are up and accepting.
pub struct Running {
    pub cores: usize,
    streaming_stopped: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    close: Arc<AtomicBool>,
    quiesced: mpsc::Receiver<usize>,
    stopped: mpsc::Receiver<usize>,
    reload: Arc<ReloadSlot>,
    /// A standalone file store's directory lock, held until the process ends.
    _store_lock: Option<StoreLock>,
}

/// Authorization handed from the main thread (SIGHUP) to the cores, which poll `generation`.
/// The lock is taken once per core per reload, never on the data path.
#[derive(Default)]
struct ReloadSlot {
    generation: AtomicU64,
    auth: Mutex<Option<Authorization>>,
    /// A reloaded `cluster.routes` (applied by the core that holds the routes).
    routes: Mutex<Option<Vec<String>>>,
}

/// How often each core looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long a core waits for its connections to flush and close when stopping.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a core's long-lived tasks get to end at shutdown before they are cancelled.
const TASKS_STOP_LIMIT: Duration = Duration::from_secs(1);

impl Running {
    /// Puts a reloaded authorization in force on every core (within one poll interval); each
    /// core then closes connected clients whose credentials no longer pass.
    pub fn reload_authorization(&self, auth: Authorization) {
        match self.reload.auth.lock() {
            Ok(mut slot) => *slot = Some(auth),
            Err(poisoned) => *poisoned.into_inner() = Some(auth),
        }
        self.reload.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Puts a reloaded route list in force (as nats-server 2.9 does): routes added are
    /// dialled, routes removed are closed and no longer dialled.
    pub fn reload_routes(&self, routes: Vec<String>) {
        match self.reload.routes.lock() {
            Ok(mut slot) => *slot = Some(routes),
            Err(poisoned) => *poisoned.into_inner() = Some(routes),
        }
        self.reload.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Graceful stop, in two phases so that nothing already routed is lost: every core stops
    /// accepting and runs a barrier with every other core (afterwards every message it routed
    /// earlier sits in its subscribers' buffers); once all have, every core closes its
    /// connections after flushing what is queued for them. Returns how many cores finished
    /// within `within`.
    pub fn shutdown(self, within: Duration) -> usize {
        let deadline = std::time::Instant::now() + within;
        // The reference stops its streaming side first, then NATS: no STAN request gets an
        // answer from here on (what was already written still gets its PubAck).
        self.streaming_stopped.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        wait_reports(&self.quiesced, self.cores, deadline);
        self.close.store(true, Ordering::Release);
        wait_reports(&self.stopped, self.cores, deadline)
    }
}

/// Starts all cores and returns once every one of them accepts connections.
pub fn start(opts: Options) -> Result<Running, ServerError> {
    let ncores = opts.cores.unwrap_or_else(online_cpus).max(1);
    let online = online_cpus();
    let io_memory = io_memory_per_executor(ncores);
    let spin = opts.spin_before_park();
    probe_io_uring()?;
    let external = opts.streaming.nats_server.is_some();
    if !external {
        check_port_free(&opts.host, opts.port)?;
        // Both listeners bind with SO_REUSEPORT, so the kernel would let them share one port
        // and split connections between them: refuse it, as the reference's bind does.
        let from_addr = |a: &Option<String>| {
            a.as_deref()
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
        };
        let monitors = [
            opts.http_port,
            opts.https_port,
            from_addr(&opts.http),
            from_addr(&opts.https),
        ];
        if monitors
            .into_iter()
            .flatten()
            .any(|m| m != 0 && m == opts.port)
        {
            return Err(ServerError::Listen {
                addr: format!("monitoring on the client port {}", opts.port),
                source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            });
        }
    }
    let ft = opts.streaming.ft_group.is_some();
    let server_nuid = crate::util::nuid::nuid();
    // FT servers share the directory: the one holding its lock is active (stan::ft). Any
    // other server owns its directory alone.
    let store_dir = match (&opts.streaming.store, &opts.streaming.dir) {
        (crate::config::streaming::StoreType::File, Some(dir)) => Some(dir.clone()),
        _ => None,
    };
    let store_lock = match &store_dir {
        Some(dir) if !ft => Some(lock_store_directory(dir, &server_nuid)?),
        _ => None,
    };
    let cluster = opts.streaming.cluster.as_ref();
    // Clustered: the node's name is drawn (a NUID, as the reference's) unless configured; the
    // one kept in server.dat wins.
    let wanted_node = cluster.map(|c| c.node_id.clone().unwrap_or_else(crate::util::nuid::nuid));
    let server_file = match &store_dir {
        Some(dir) if !ft => Some(
            shards::store::file::open_server_file(
                dir,
                &opts.streaming.cluster_id,
                wanted_node.as_deref(),
            )
            .map_err(|msg| ServerError::Core { core: 0, msg })?,
        ),
        _ => None,
    };
    let role = match (cluster, &server_file) {
        (Some(c), Some(file)) => {
            let mut warnings = Vec::new();
            let setup = crate::stan::cluster::setup::prepare(
                &opts.streaming.cluster_id,
                c,
                file,
                ncores,
                &mut warnings,
            )
            .map_err(|e| ServerError::Core {
                core: 0,
                msg: e.to_string(),
            })?;
            for w in warnings {
                log::warn!("STAN: {w}");
            }
            log::info!(
                "STAN: Cluster Node ID : {} (raft ID {})",
                setup.node_name,
                setup.node_id
            );
            log::info!("STAN: Cluster Log Path: {}", setup.log_dir.display());
            log::info!("STAN: Cluster known peers:");
            let peers = setup.names.values().filter(|n| **n != setup.node_name);
            for (n, peer) in peers.enumerate() {
                log::info!("STAN:   peer {}: {peer:?}", n + 1);
            }
            Arc::new(Role::clustered(server_nuid, setup, ncores))
        }
        (Some(_), None) => {
            return Err(ServerError::Core {
                core: 0,
                msg: "stan: clustering mode needs a FILE store with a directory".into(),
            })
        }
        (None, _) => Arc::new(Role::new(ft, server_nuid)),
    };
    let ack_key = match server_file.map(|f| f.ack_key) {
        Some(material) => AckKey::new(&material),
        None => AckKey::random().map_err(|_| ServerError::Core {
            core: 0,
            msg: "no random bytes from the operating system".into(),
        })?,
    };
    // Certificates are read once, before any core starts: a bad file is a start-up error.
    let tls = match &opts.tls {
        Some(t) => Some(crate::nats::tls::server_config(t)?),
        None => None,
    };
    let mesh: MeshBuilder<Batch<MeshMsg>, _> = MeshBuilder::full(ncores, MESH_RING_BATCHES);
    let server_id: Arc<str> = new_server_id().into();
    let global = Arc::new(GlobalCounters::new(ncores));
    let mut shared_directory = SharedDirectory::new(opts.streaming.store_limits.max_channels);
    if let (crate::config::streaming::StoreType::File, Some(dir)) =
        (&opts.streaming.store, &opts.streaming.dir)
    {
        shared_directory = shared_directory.with_store(dir);
    }
    let directory = Arc::new(shared_directory);
    let handoff: MeshBuilder<AcceptedTcpStream, _> = MeshBuilder::full(ncores, HANDOFF_RING);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, ServerError>>();
    let stop = Arc::new(AtomicBool::new(false));
    let streaming_stopped = Arc::new(AtomicBool::new(false));
    let (stopped_tx, stopped_rx) = mpsc::channel::<usize>();
    let (quiesced_tx, quiesced_rx) = mpsc::channel::<usize>();
    let close = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(ReloadSlot::default());
    log::info!("Starting stanza version {}", env!("CARGO_PKG_VERSION"));
    log::info!(
        "Running on {ncores} core(s) ({online} online), {} KiB of io_uring memory each",
        io_memory >> 10
    );
    for i in 0..ncores {
        let opts = opts.clone();
        let mesh = mesh.clone();
        let handoff = handoff.clone();
        let server_id = server_id.clone();
        let global = global.clone();
        let directory = directory.clone();
        let tls = tls.clone();
        let ack_key = ack_key.clone();
        let role = role.clone();
        let ready_tx = ready_tx.clone();
        let lifecycle = Lifecycle {
            streaming_stopped: streaming_stopped.clone(),
            stop: stop.clone(),
            close: close.clone(),
            quiesced: quiesced_tx.clone(),
            stopped: stopped_tx.clone(),
            reload: reload.clone(),
        };
        let placement = if i < online {
            Placement::Fixed(i)
        } else {
            Placement::Unbound
        };
        std::thread::Builder::new()
            .name(format!("stanza-core-{i}"))
            .spawn(move || {
                let mut builder = LocalExecutorBuilder::new(placement)
                    .name(&format!("stanza-core-{i}"))
                    .io_memory(io_memory);
                if !spin.is_zero() {
                    builder = builder.spin_before_park(spin);
                }
                let executor = match builder.make() {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ServerError::Executor(e.to_string())));
                        return;
                    }
                };
                executor.run(async move {
                    if let Err(e) = run_core(
                        opts, mesh, handoff, ncores, server_id, global, directory, ack_key, role,
                        tls, &ready_tx, lifecycle,
                    )
                    .await
                    {
                        let _ = ready_tx.send(Err(e));
                    }
                });
            })
            .map_err(|e| ServerError::Executor(e.to_string()))?;
    }
    drop(ready_tx);
    let timeout = Duration::from_secs(30);
    for _ in 0..ncores {
        match ready_rx.recv_timeout(timeout) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(ServerError::StartTimeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(ServerError::Executor(
                    "a core stopped while starting".into(),
                ))
            }
        }
    }
    if !external {
        log::info!(
            "Listening for client connections on {}:{}",
            opts.host,
            opts.port
        );
    }
    log::info!("Server is ready");
    Ok(Running {
        cores: ncores,
        streaming_stopped,
        stop,
        close,
        quiesced: quiesced_rx,
        stopped: stopped_rx,
        reload,
        _store_lock: store_lock,
    })
}

/// Takes the store directory's lock for this process, waiting up to PORT_RETRY for a server
/// that is still exiting; refuses with who holds it.
fn lock_store_directory(dir: &std::path::Path, server_id: &str) -> Result<StoreLock, ServerError> {
    let me = crate::stan::ft::holder_description(server_id);
    let deadline = std::time::Instant::now() + PORT_RETRY;
    loop {
        match StoreLock::try_acquire(dir, &me)? {
            Attempt::Held(lock) => return Ok(lock),
            Attempt::Busy { holder } if std::time::Instant::now() >= deadline => {
                return Err(ServerError::StoreInUse {
                    dir: dir.display().to_string(),
                    holder: if holder.is_empty() {
                        "a process that did not say who it is".into()
                    } else {
                        holder
                    },
                })
            }
            Attempt::Busy { .. } => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Counts reports from cores until `expected` or the deadline.
fn wait_reports(
    rx: &mpsc::Receiver<usize>,
    expected: usize,
    deadline: std::time::Instant,
) -> usize {
    let mut done = 0;
    while done < expected {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(_) => done += 1,
            Err(_) => break,
        }
    }
    done
}

/// How the main thread asks a core to stop, and hears that it has.
struct Lifecycle {
    /// Set first at a graceful stop: from then on the streaming server answers no request.
    streaming_stopped: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    close: Arc<AtomicBool>,
    quiesced: mpsc::Sender<usize>,
    stopped: mpsc::Sender<usize>,
    reload: Arc<ReloadSlot>,
}

#[allow(clippy::too_many_arguments)]
async fn run_core(
    opts: Options,
    mesh: MeshBuilder<Batch<MeshMsg>, Full>,
    handoff: MeshBuilder<AcceptedTcpStream, Full>,
    ncores: usize,
    server_id: Arc<str>,
    global: Arc<GlobalCounters>,
    directory: Arc<SharedDirectory>,
    ack_key: AckKey,
    role: Arc<Role>,
    tls: Option<Arc<rustls::ServerConfig>>,
    ready: &mpsc::Sender<Result<usize, ServerError>>,
    lifecycle: Lifecycle,
) -> Result<(), ServerError> {
    let (senders, mut receivers) = mesh.join().await.map_err(|_| ServerError::Core {
        core: usize::MAX,
        msg: "cannot join the channel mesh".into(),
    })?;
    let id = senders.peer_id();
    let core = Rc::new(Core::new(
        id,
        ncores,
        Rc::new(opts.clone()),
        Rc::from(&*server_id),
        global,
    ));
    core.outbox.start_flushers(Rc::new(senders), &core.tasks);
    core.set_tls(tls.clone());
    // Registered before the mesh is read, so no streaming message from a peer finds it absent.
    let ft = role.is_ft();
    let clustered = role.cluster.is_some();
    let streaming = Streaming::start(core.clone(), &opts, directory, ack_key, role);
    streaming.stop_answering_when(lifecycle.streaming_stopped.clone());
    // An FT standby opens the store only once it holds the lock; a cluster node opens it
    // for applying the log (`start_raft`), and as the serving node only when it leads.
    if opts.streaming.store == crate::config::streaming::StoreType::File && !ft && !clustered {
        streaming
            .open_store()
            .await
            .map_err(|msg| ServerError::Core { core: id, msg })?;
    }
    if id == 0 && opts.streaming.nats_server.is_none() {
        crate::nats::route::start(&core).map_err(|msg| ServerError::Core { core: id, msg })?;
        // FT servers share a cluster ID by design (the lock decides among them), and so do
        // the nodes of a raft cluster.
        if !ft && !clustered {
            streaming
                .refuse_if_served_elsewhere()
                .await
                .map_err(|msg| ServerError::Core { core: id, msg })?;
        }
    }
    if id == 0 {
        let monitor_tls = match &opts.tls {
            Some(t) => Some(crate::nats::tls::monitoring_server_config(t)?),
            None => None,
        };
        match crate::monitor::start(streaming.clone(), monitor_tls) {
            Ok(bound) => {
                for addr in bound {
                    log::info!("Starting monitoring on {addr}");
                }
            }
            Err(source) => {
                return Err(ServerError::Listen {
                    addr: "monitoring".into(),
                    source,
                });
            }
        }
    }
    for (peer, stream) in receivers.streams() {
        let core_ = core.clone();
        core.tasks.spawn("mesh reader", None, async move {
            let core = core_;
            while let Some(batch) = stream.recv().await {
                for msg in batch {
                    match msg {
                        MeshMsg::ConnMove(moved) => {
                            crate::nats::handover::adopt(&core, peer, moved)
                        }
                        other => core.on_mesh(peer, other),
                    }
                }
            }
        });
    }
    let (handoff_tx, mut handoff_rx) = handoff.join().await.map_err(|_| ServerError::Core {
        core: id,
        msg: "cannot join the connection hand-off mesh".into(),
    })?;
    for (_, incoming) in handoff_rx.streams() {
        let core_ = core.clone();
        core.tasks.spawn("hand-off reader", None, async move {
            while let Some(accepted) = incoming.recv().await {
                let stream = accepted.bind_to_executor();
                glommio::spawn_local(client::serve(core_.clone(), stream)).detach();
            }
        });
    }
    // With an external NATS server (-ns) stanza serves no NATS clients itself.
    let listener = if opts.streaming.nats_server.is_some() {
        streaming
            .start_external()
            .await
            .map_err(|msg| ServerError::Core { core: id, msg })?;
        None
    } else {
        Some(
            listen(&opts.host, opts.port).map_err(|source| ServerError::Listen {
                addr: format!("{}:{}", opts.host, opts.port),
                source,
            })?,
        )
    };
    streaming
        .start_raft()
        .await
        .map_err(|msg| ServerError::Core { core: id, msg })?;
    let _ = ready.send(Ok(id));
    if let (Some(ft), Some(dir)) = (streaming.ft.clone(), opts.streaming.dir.clone()) {
        core.tasks
            .spawn("ft", None, crate::stan::ft::run(streaming.clone(), ft, dir));
    }
    let accepting = async {
        match &listener {
            Some(l) => accept_loop(&core, l, &handoff_tx).await,
            None => std::future::pending::<()>().await,
        }
    };
    let stop_requested = async {
        let mut seen_reload = 0;
        while !lifecycle.stop.load(Ordering::Acquire) {
            glommio::timer::sleep(STOP_POLL).await;
            let generation = lifecycle.reload.generation.load(Ordering::Acquire);
            if generation != seen_reload {
                seen_reload = generation;
                apply_reload(&core, &lifecycle.reload);
            }
        }
    };
    futures_lite::future::or(accepting, stop_requested).await;
    drop(listener);
    core.barrier().await;
    let _ = lifecycle.quiesced.send(id);
    while !lifecycle.close.load(Ordering::Acquire) {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    drain(&core).await;
    // The tick and every other long-lived task end before the store closes (a tick would
    // otherwise start a commit on closed files).
    let late = core.tasks.stop_all(TASKS_STOP_LIMIT).await;
    if !late.is_empty() {
        log::warn!("core {id}: tasks cancelled at shutdown: {late:?}");
    }
    streaming.close_store().await;
    let _ = lifecycle.stopped.send(id);
    Ok(())
}

fn apply_reload(core: &Rc<Core>, slot: &ReloadSlot) {
    let auth = match slot.auth.lock() {
        Ok(a) => a.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    if let Some(auth) = auth {
        *core.auth.borrow_mut() = Rc::new(auth);
        glommio::spawn_local(client::recheck_authorization(core.clone())).detach();
    }
    let routes = match slot.routes.lock() {
        Ok(r) => r.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    if let Some(routes) = routes {
        crate::nats::route::reload_routes(core, routes);
    }
}

/// Closes every connection of this core (each writer flushes what is queued first) and waits
/// for them to finish, at most DRAIN_TIMEOUT.
async fn drain(core: &Core) {
    let conns: Vec<_> = core.conns.borrow().values().cloned().collect();
    for conn in conns {
        conn.close(CloseReason::ServerShutdown);
    }
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    while !core.conns.borrow().is_empty() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

async fn accept_loop(
    core: &Rc<Core>,
    listener: &TcpListener,
    handoff_tx: &glommio::channels::channel_mesh::Senders<AcceptedTcpStream>,
) {
    let id = core.id;
    loop {
        match listener.shared_accept().await {
            Ok(accepted) => {
                // SO_REUSEPORT spreads connections by hash; a few busy connections can land
                // on one core. A new connection goes to the core owning the fewest, once, at
                // accept time; after that it lives there.
                let target = core.global.place(id);
                let keep = if target == id {
                    Some(accepted)
                } else {
                    match handoff_tx.try_send_to(target, accepted) {
                        Ok(()) => None,
                        Err(e) => {
                            core.global.release(target);
                            let back = returned_connection(e);
                            if back.is_some() {
                                core.global.place_on(id);
                            } else {
                                log::error!("core {id}: a connection was lost in hand-off");
                            }
                            back
                        }
                    }
                };
                if let Some(accepted) = keep {
                    let stream = accepted.bind_to_executor();
                    glommio::spawn_local(client::serve(core.clone(), stream)).detach();
                }
            }
            Err(e) => {
                log::error!("core {id}: error accepting client connection: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The connection a failed hand-off gives back (the mesh returns what it could not send).
fn returned_connection(err: glommio::GlommioError<AcceptedTcpStream>) -> Option<AcceptedTcpStream> {
    use glommio::{GlommioError, ResourceType};
    match err {
        GlommioError::Closed(ResourceType::Channel(a))
        | GlommioError::WouldBlock(ResourceType::Channel(a))
        | GlommioError::CanNotBeClosed(ResourceType::Channel(a), _) => Some(a),
        _ => None,
    }
}

/// Blocks the signals the main thread handles, so that executor threads (created after this)
/// never receive them.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for the next blocked signal.
pub fn wait_signal(set: &libc::sigset_t) -> libc::c_int {
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait reads the set and writes the signal number.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}
