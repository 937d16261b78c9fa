//! The tokio service: a listening socket for requests, one task and one
//! ephemeral socket (the server's TID) per transfer.

use crate::ack_spin::AckSpin;
use crate::config::TftpConfig;
use crate::error::TftpError;
use crate::net::{self, Received};
use crate::observer::{TftpObserver, TransferOutcome, TransferReport};
use crate::proto::{
    Action, ErrorCode, Event, Limits, Mode, Packet, ReadTransfer, TftpOption, error_packet,
};
use crate::reader::Reader;
use crate::source::{FileSource, OpenFile};
use bytes::Bytes;
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

/// Requests larger than this are dropped. RFC 2347 limits a request to 512
/// octets; twice that leaves room for clients that overstep it while keeping
/// parsing work per datagram small.
const MAX_REQUEST: usize = 1024;

/// Transfer sockets only ever receive ACKs and ERRORs; a longer datagram is
/// truncated, which leaves its header intact.
const MAX_REPLY: usize = 1024;

/// Refusals answered at once; beyond that, refused requests are dropped.
const MAX_REFUSALS: usize = 64;

/// How long shutdown waits for requests to finish before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const DROPPED: &str = "anvil_tftp_dropped_packets_total";
const TRANSFERS: &str = "anvil_tftp_transfers_total";
const SENT_BYTES: &str = "anvil_tftp_sent_bytes_total";
const ACTIVE: &str = "anvil_tftp_active_transfers";

/// Runs the TFTP service until `shutdown` completes, then cancels the
/// transfers in flight (their clients get ERROR 0) and returns.
///
/// With `enabled = false` it only waits for `shutdown`, so the caller can
/// treat every service alike. See [`TftpServer::serve`] for the thread the
/// service runs on.
pub async fn run(
    config: TftpConfig,
    source: Arc<dyn FileSource>,
    observer: Arc<dyn TftpObserver>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TftpError> {
    if !config.enabled {
        shutdown.await;
        return Ok(());
    }
    TftpServer::bind(config, source, observer)?
        .serve(shutdown)
        .await
}

/// A bound TFTP service: [`run`] in two steps, for callers that need the
/// local address before serving (e.g. after binding port 0).
pub struct TftpServer {
    socket: std::net::UdpSocket,
    local: SocketAddr,
    ctx: Arc<Ctx>,
}

struct Ctx {
    limits: Limits,
    source: Arc<dyn FileSource>,
    observer: Arc<dyn TftpObserver>,
    permits: Arc<Semaphore>,
    max_transfers: usize,
    /// `[tftp] ack_polling`: poll for fast clients' ACKs (see `AckSpin`).
    ack_polling: bool,
    /// CPUs this process may run on (polling for ACKs needs a spare one).
    cpus: usize,
    /// Bounds the refusals (write requests, "busy") being answered at once:
    /// each takes a socket, and a flood must not exhaust file descriptors.
    refusals: Arc<Semaphore>,
    /// Clients (address and port) with a transfer in progress: a repeated
    /// RRQ from one of them is a retransmission, not a new transfer.
    active: Mutex<HashSet<SocketAddr>>,
}

impl TftpServer {
    /// Validates `config` and binds the listening socket.
    pub fn bind(
        config: TftpConfig,
        source: Arc<dyn FileSource>,
        observer: Arc<dyn TftpObserver>,
    ) -> Result<TftpServer, TftpError> {
        config.validate()?;
        let bind_err = |source| TftpError::Bind {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        let local = socket.local_addr().map_err(bind_err)?;
        if local.ip().is_unspecified() {
            net::enable_pktinfo(&socket).map_err(|source| TftpError::SocketOption {
                option: if local.is_ipv4() {
                    "IP_PKTINFO"
                } else {
                    "IPV6_RECVPKTINFO"
                },
                source,
            })?;
        }
        Ok(TftpServer {
            socket,
            local,
            ctx: Arc::new(Ctx {
                limits: config.limits(),
                source,
                observer,
                permits: Arc::new(Semaphore::new(config.max_transfers)),
                max_transfers: config.max_transfers,
                ack_polling: config.ack_polling,
                cpus: std::thread::available_parallelism().map_or(1, usize::from),
                refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
                active: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The address the listening socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves requests until `shutdown` completes, then cancels the
    /// transfers in flight and waits for them to report.
    ///
    /// The service runs on its own thread ("anvil-tftp") with a
    /// single-threaded tokio runtime; this future only waits. TFTP is
    /// latency-bound — lock-step sends one block per round trip, RFC 7440
    /// one window — and on a multi-threaded runtime each ACK's wake-up may
    /// hop between workers: measured on 2 vCPUs, a 64 MiB lock-step
    /// transfer took 0.86–4 s on the shared runtime against a steady ~0.9 s
    /// on its own thread. The thread also keeps boot traffic responsive
    /// while the API is busy. One thread sends several hundred MB/s, far
    /// beyond what booting a rack of iPXE binaries needs.
    ///
    /// [`FileSource::open`] futures run on that thread's runtime (tokio
    /// sockets and timers from the caller's runtime keep working there).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), TftpError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = oneshot::channel();
        let thread_err = |source| TftpError::ServiceThread { source };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("anvil-tftp-blocking")
            .build()
            .map_err(thread_err)?;
        std::thread::Builder::new()
            .name("anvil-tftp".into())
            .spawn(move || {
                runtime.block_on(self.serve_here(stop_rx));
                // The receiver is gone only if the caller stopped waiting.
                let _ = done_tx.send(());
            })
            .map_err(thread_err)?;
        tokio::pin!(done_rx);
        tokio::select! {
            () = shutdown => {
                // A send error means the service already ended.
                let _ = stop_tx.send(true);
            }
            _ = &mut done_rx => {}
        }
        done_rx.await.map_err(|_| TftpError::ServiceThread {
            source: std::io::Error::other("the TFTP service thread panicked"),
        })
    }

    /// The service loop, on the current (service) runtime.
    async fn serve_here(self, mut stop: watch::Receiver<bool>) {
        let socket = match UdpSocket::from_std(self.socket) {
            Ok(socket) => socket,
            Err(e) => {
                error!(listen = %self.local, error = %e, "cannot register the TFTP socket");
                return;
            }
        };
        let listener = Listener {
            socket,
            local: self.local,
            ctx: self.ctx,
        };
        info!(listen = %listener.local, "TFTP service listening");
        let mut tasks = JoinSet::new();
        let mut buf = vec![0u8; MAX_REQUEST + 1];
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        warn!(error = %e, "TFTP transfer task failed");
                    }
                }
                received = net::recv_with_local(&listener.socket, &mut buf) => match received {
                    Ok(rx) => listener.on_datagram(&rx, &buf, &mut tasks, &stop),
                    // Errors here are per-datagram (e.g. ICMP reports) or
                    // resource shortages: keep serving, but do not spin.
                    Err(e) => {
                        metrics::counter!(DROPPED, "reason" => "receive_error").increment(1);
                        debug!(error = %e, "TFTP receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
        info!(active = tasks.len(), "TFTP service stopping");
        // Transfers end at once on cancellation (after sending their ERROR);
        // only a source still opening a file can hold things up.
        let drain = async {
            while let Some(done) = tasks.join_next().await {
                if let Err(e) = done {
                    warn!(error = %e, "TFTP transfer task failed");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            warn!("TFTP requests still pending after {SHUTDOWN_GRACE:?}; aborting them");
            tasks.shutdown().await;
        }
    }
}

/// The listening socket on the service runtime.
struct Listener {
    socket: UdpSocket,
    local: SocketAddr,
    ctx: Arc<Ctx>,
}

impl Listener {
    fn on_datagram(
        &self,
        rx: &Received,
        buf: &[u8],
        tasks: &mut JoinSet<()>,
        cancel: &watch::Receiver<bool>,
    ) {
        if rx.truncated || rx.len > MAX_REQUEST {
            metrics::counter!(DROPPED, "reason" => "oversize").increment(1);
            return;
        }
        let packet = match Packet::decode(buf.get(..rx.len).unwrap_or_default()) {
            Ok(packet) => packet,
            Err(e) => {
                metrics::counter!(DROPPED, "reason" => e.reason()).increment(1);
                debug!(peer = %rx.peer, error = %e, "malformed TFTP request dropped");
                return;
            }
        };
        let (request, write) = match packet {
            Packet::Rrq(req) => (req, false),
            Packet::Wrq(req) => (req, true),
            _ => {
                metrics::counter!(DROPPED, "reason" => "not_a_request").increment(1);
                return;
            }
        };
        let request = OwnedRequest {
            filename: request.filename.to_string(),
            mode: request.mode,
            options: request
                .options
                .iter()
                .map(|o| (o.name.to_string(), o.value.to_string()))
                .collect(),
        };
        // Reply from the address the client talked to: the listening
        // address, or the request's destination when listening on any.
        let local = rx
            .local
            .unwrap_or_else(|| SocketAddr::new(self.local.ip(), 0));
        let start = Start {
            ctx: Arc::clone(&self.ctx),
            request,
            peer: rx.peer,
            local,
            started: SystemTime::now(),
            clock: Instant::now(),
        };
        if write {
            self.refuse(tasks, start, TransferOutcome::WriteRefused);
            return;
        }
        let Some(active) = ActiveGuard::claim(&self.ctx, rx.peer) else {
            metrics::counter!(DROPPED, "reason" => "duplicate_request").increment(1);
            return;
        };
        match Arc::clone(&self.ctx.permits).try_acquire_owned() {
            Ok(permit) => {
                tasks.spawn(start.transfer(cancel.clone(), permit, active));
            }
            Err(_) => self.refuse(tasks, start, TransferOutcome::Busy),
        }
    }

    fn refuse(&self, tasks: &mut JoinSet<()>, start: Start, outcome: TransferOutcome) {
        match Arc::clone(&self.ctx.refusals).try_acquire_owned() {
            Ok(permit) => {
                tasks.spawn(async move {
                    start.refuse(outcome).await;
                    drop(permit);
                });
            }
            Err(_) => {
                metrics::counter!(DROPPED, "reason" => "refusal_overload").increment(1);
            }
        }
    }
}

impl Ctx {
    /// Transfers holding a permit, i.e. running.
    fn active_transfers(&self) -> usize {
        self.max_transfers
            .saturating_sub(self.permits.available_permits())
    }
}

struct OwnedRequest {
    filename: String,
    mode: Mode,
    options: Vec<(String, String)>,
}

/// Marks a client as having a transfer in progress until dropped.
struct ActiveGuard {
    ctx: Arc<Ctx>,
    peer: SocketAddr,
}

impl ActiveGuard {
    fn claim(ctx: &Arc<Ctx>, peer: SocketAddr) -> Option<ActiveGuard> {
        let mut active = ctx.active.lock().unwrap_or_else(PoisonError::into_inner);
        active.insert(peer).then(|| ActiveGuard {
            ctx: Arc::clone(ctx),
            peer,
        })
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut active = self
            .ctx
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        active.remove(&self.peer);
    }
}

/// Everything a request's task needs.
struct Start {
    ctx: Arc<Ctx>,
    request: OwnedRequest,
    peer: SocketAddr,
    local: SocketAddr,
    started: SystemTime,
    clock: Instant,
}

impl Start {
    fn report(&self, outcome: TransferOutcome) -> TransferReport {
        TransferReport {
            peer: self.peer,
            local_ip: self.local.ip(),
            file: self.request.filename.clone(),
            mode: self.request.mode,
            blksize: 512,
            windowsize: 1,
            size: None,
            started: self.started,
            duration: self.clock.elapsed(),
            bytes: 0,
            outcome,
        }
    }

    /// Answers a request that will not be served (write, busy) with one
    /// ERROR from a fresh socket, as a transfer's first packet would be.
    async fn refuse(self, outcome: TransferOutcome) {
        let (code, message) = match outcome {
            TransferOutcome::WriteRefused => (ErrorCode::AccessViolation, "read-only server"),
            _ => (ErrorCode::NotDefined, "server busy, try again"),
        };
        match UdpSocket::bind(self.local).await {
            Ok(sock) => send_error(&sock, self.peer, code, message).await,
            Err(e) => warn!(local = %self.local, error = %e, "cannot bind a TFTP reply socket"),
        }
        finish(&self.ctx, self.report(outcome));
    }

    async fn transfer(
        self,
        mut cancel: watch::Receiver<bool>,
        _permit: OwnedSemaphorePermit,
        _active: ActiveGuard,
    ) {
        let _gauge = ActiveGauge::new();
        let sockets = net::transfer_sockets(self.local, self.peer).and_then(|pair| {
            let strangers = pair.strangers.map(UdpSocket::from_std).transpose()?;
            Ok((UdpSocket::from_std(pair.main)?, strangers))
        });
        let (sock, strangers) = match sockets {
            Ok(sockets) => sockets,
            Err(e) => {
                warn!(local = %self.local, error = %e, "cannot bind a TFTP transfer socket");
                finish(&self.ctx, self.report(TransferOutcome::SocketFailed));
                return;
            }
        };
        let sockets = Sockets {
            main: sock,
            strangers,
        };
        let sock = &sockets.main;
        debug!(peer = %self.peer, file = %self.request.filename, "TFTP read request");
        let report = match self
            .ctx
            .source
            .open(&self.request.filename, self.peer)
            .await
        {
            Ok(Some(file)) => self.send_file(&sockets, file, &mut cancel).await,
            Ok(None) => {
                send_error(sock, self.peer, ErrorCode::FileNotFound, "file not found").await;
                self.report(TransferOutcome::NotFound)
            }
            Err(e @ TftpError::AccessDenied { .. }) => {
                info!(peer = %self.peer, error = %e, "TFTP request refused");
                send_error(
                    sock,
                    self.peer,
                    ErrorCode::AccessViolation,
                    "access violation",
                )
                .await;
                self.report(TransferOutcome::AccessDenied)
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %ErrorChain(&e), "TFTP source failed");
                send_error(sock, self.peer, ErrorCode::NotDefined, "cannot open file").await;
                self.report(TransferOutcome::OpenFailed)
            }
        };
        finish(&self.ctx, report);
    }

    /// Drives the protocol state machine over the transfer socket.
    async fn send_file(
        &self,
        sockets: &Sockets,
        file: OpenFile,
        cancel: &mut watch::Receiver<bool>,
    ) -> TransferReport {
        let sock = &sockets.main;
        let options: Vec<TftpOption<'_>> = self
            .request
            .options
            .iter()
            .map(|(name, value)| TftpOption { name, value })
            .collect();
        let size = file.size();
        let mut machine = ReadTransfer::new(
            Instant::now(),
            self.request.mode,
            &options,
            size,
            &self.ctx.limits,
        );
        let window_bytes = usize::from(machine.blksize()) * usize::from(machine.windowsize());
        let mut reader = Reader::new(file.content, window_bytes);
        let mut batch: Vec<Bytes> = Vec::with_capacity(usize::from(machine.windowsize()) + 1);
        let mut sender = net::Sender::new(sockets.strangers.is_some());
        let mut buf = vec![0u8; MAX_REPLY];
        let mut stranger_buf = [0u8; 4];
        // The machine moves its deadline at every window. Resetting a tokio
        // timer that often costs more than the rest of an ACK's handling,
        // so the timer only ever moves earlier; when it fires before the
        // machine's deadline it is re-armed for the rest.
        let idle = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        let timer = tokio::time::sleep_until(idle());
        tokio::pin!(timer);
        let mut deadline: Option<Instant> = None;
        let mut armed: Option<Instant> = None;
        let mut spin = AckSpin::default();

        let outcome = 'transfer: loop {
            while let Some(action) = machine.poll_action() {
                match action {
                    Action::Send(pkt) => batch.push(pkt),
                    Action::Read { offset, len } => {
                        // Send what is ready before waiting on the disk.
                        self.flush(sock, &mut sender, &mut batch).await;
                        match reader.read(offset, len).await {
                            Ok(data) => machine.handle(Instant::now(), Event::Data(&data)),
                            Err(e) => {
                                warn!(peer = %self.peer, file = %self.request.filename,
                                      error = %e, "TFTP read failed");
                                machine.handle(Instant::now(), Event::ReadFailed);
                            }
                        }
                    }
                    Action::SetTimer(at) => {
                        deadline = Some(at);
                        if armed.is_none_or(|t| at < t) {
                            timer.as_mut().reset(at.into());
                            armed = Some(at);
                        }
                    }
                    Action::Finished => {
                        self.flush(sock, &mut sender, &mut batch).await;
                        break 'transfer TransferOutcome::Completed;
                    }
                    Action::Failed(failure) => {
                        self.flush(sock, &mut sender, &mut batch).await;
                        break 'transfer TransferOutcome::Failed(failure);
                    }
                }
            }
            self.flush(sock, &mut sender, &mut batch).await;
            let sent_at = Instant::now();
            let due = deadline.is_some_and(|at| at <= sent_at);
            let budget = if self.ctx.ack_polling {
                spin.budget(self.ctx.active_transfers(), self.ctx.cpus)
            } else {
                None
            };
            if let Some(budget) = budget.filter(|_| !due && !cancel.has_changed().unwrap_or(true))
                && let Some(received) = poll_for_reply(sock, &mut buf, budget, spin.spin_only())
            {
                self.on_reply(sock, &mut machine, &mut spin, sent_at, received, &buf)
                    .await;
                continue;
            }
            tokio::select! {
                biased;
                _ = cancel.changed() => machine.cancel("server shutting down"),
                received = sock.recv_from(&mut buf) => {
                    self.on_reply(sock, &mut machine, &mut spin, sent_at, received, &buf).await;
                }
                received = sockets.recv_stranger(&mut stranger_buf) => {
                    if let Ok((_, stranger)) = received {
                        sockets.answer_stranger(stranger).await;
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    match deadline {
                        Some(at) if at > now => {
                            timer.as_mut().reset(at.into());
                            armed = Some(at);
                        }
                        due => {
                            timer.as_mut().reset(idle());
                            armed = None;
                            deadline = None;
                            if due.is_some() {
                                machine.handle(now, Event::Timeout);
                            }
                        }
                    }
                }
            }
        };
        TransferReport {
            blksize: machine.blksize(),
            windowsize: machine.windowsize(),
            size,
            bytes: machine.bytes_acked(),
            ..self.report(outcome)
        }
    }

    /// Hands a datagram received on the transfer socket to the machine, and
    /// the client's reply time (since `sent_at`) to the polling decisions.
    async fn on_reply(
        &self,
        sock: &UdpSocket,
        machine: &mut ReadTransfer,
        spin: &mut AckSpin,
        sent_at: Instant,
        received: std::io::Result<(usize, SocketAddr)>,
        buf: &[u8],
    ) {
        match received {
            Ok((n, from)) if net::canonical(from) == self.peer => {
                let now = Instant::now();
                spin.record_reply(now.saturating_duration_since(sent_at));
                machine.handle(now, Event::Packet(buf.get(..n).unwrap_or_default()));
            }
            // Only an unconnected socket (see `Sockets`) gets these.
            Ok((_, stranger)) => answer_stranger(sock, stranger).await,
            // E.g. an ICMP error for an earlier datagram: the timer
            // takes care of whatever was lost.
            Err(e) => debug!(peer = %self.peer, error = %e, "TFTP receive failed"),
        }
    }

    async fn flush(&self, sock: &UdpSocket, sender: &mut net::Sender, batch: &mut Vec<Bytes>) {
        if batch.is_empty() {
            return;
        }
        match sender.send_all(sock, self.peer, batch).await {
            Ok(()) => {
                let bytes: usize = batch.iter().map(Bytes::len).sum();
                metrics::counter!(SENT_BYTES).increment(bytes as u64);
            }
            // Lost like any datagram; the retransmission timer recovers.
            Err(e) => debug!(peer = %self.peer, error = %e, "TFTP send failed"),
        }
        batch.clear();
    }
}

/// A transfer's sockets (see `net::TransferSockets`).
struct Sockets {
    /// The TID: connected to the client when `strangers` is there.
    main: UdpSocket,
    /// Everyone else's datagrams to the TID.
    strangers: Option<UdpSocket>,
}

impl Sockets {
    /// The next datagram from a stranger; never, without a strangers'
    /// socket. Its content does not matter: only its sender is answered.
    async fn recv_stranger(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        match &self.strangers {
            Some(sock) => sock.recv_from(buf).await,
            None => std::future::pending().await,
        }
    }

    async fn answer_stranger(&self, stranger: SocketAddr) {
        answer_stranger(self.strangers.as_ref().unwrap_or(&self.main), stranger).await;
    }
}

/// RFC 1350: a datagram to a transfer's TID from anyone but its client gets
/// ERROR 5, and the transfer carries on.
async fn answer_stranger(sock: &UdpSocket, stranger: SocketAddr) {
    metrics::counter!(DROPPED, "reason" => "unknown_tid").increment(1);
    send_error(sock, stranger, ErrorCode::UnknownTid, "unknown transfer ID").await;
}

/// Polls `sock` without blocking until a datagram (or a receive error)
/// comes or `budget` has passed (`None`). Blocks the service thread for at
/// most `budget`; see `AckSpin` for when that is worth it.
///
/// Between two polls it yields the CPU rather than spinning: a socket
/// wake-up tends to move the woken thread (here: the client, when local)
/// onto the waker's CPU, and a spinning server would keep it from running
/// there. With nothing else runnable the yield returns at once, but still
/// passes through the scheduler; `spin_only` (a client answering within a
/// few µs, so running elsewhere) skips it.
fn poll_for_reply(
    sock: &UdpSocket,
    buf: &mut [u8],
    budget: Duration,
    spin_only: bool,
) -> Option<std::io::Result<(usize, SocketAddr)>> {
    let start = Instant::now();
    loop {
        match net::recv_from_now(sock, buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            received => return Some(received),
        }
        if start.elapsed() >= budget {
            return None;
        }
        if spin_only {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Sends one ERROR. This awaits writability rather than using `try_send_to`:
/// a socket bound a moment ago is not yet known to tokio as writable, and
/// the error would be silently lost. A failed send is lost like any
/// datagram, which the client survives by timing out.
async fn send_error(sock: &UdpSocket, to: SocketAddr, code: ErrorCode, message: &str) {
    if let Err(e) = sock.send_to(&error_packet(code, message), to).await {
        debug!(peer = %to, error = %e, "cannot send TFTP error");
    }
}

fn finish(ctx: &Ctx, report: TransferReport) {
    let result = report.outcome.label();
    metrics::counter!(TRANSFERS, "result" => result).increment(1);
    info!(
        peer = %report.peer,
        file = %report.file,
        result,
        bytes = report.bytes,
        blksize = report.blksize,
        windowsize = report.windowsize,
        duration_ms = report.duration.as_millis() as u64,
        "TFTP transfer ended"
    );
    ctx.observer.transfer_finished(&report);
}

/// Keeps `anvil_tftp_active_transfers` in step with running transfers.
struct ActiveGauge;

impl ActiveGauge {
    fn new() -> ActiveGauge {
        metrics::gauge!(ACTIVE).increment(1.0);
        ActiveGauge
    }
}

impl Drop for ActiveGauge {
    fn drop(&mut self) {
        metrics::gauge!(ACTIVE).decrement(1.0);
    }
}

/// Displays an error followed by its `source()` chain, for one log field.
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_shows_every_cause_once() {
        let e = TftpError::Open {
            path: "/srv/x".into(),
            source: std::io::Error::other("disk on fire"),
        };
        assert_eq!(
            ErrorChain(&e).to_string(),
            "cannot open /srv/x: disk on fire"
        );
    }
}
