//! The tokio service around [`DhcpCore`]: sockets in, replies out, lease
//! changes written behind with group commit.
//!
//! One loop (this function's) receives from every socket, owns the core and
//! decides, so the lease table needs no lock. Receiving in the loop itself,
//! a burst of datagrams per wake-up, replaced a receiving task per socket and
//! a channel to the loop: that hop cost a task wake-up and an allocation per
//! packet, a quarter of the service's CPU per DORA in the benchmark; the
//! kernel's socket buffer is the queue instead. A reply whose lease must be
//! durable (an ACK) waits for the next batch commit: batches close at
//! `commit_batch_max` changes or `commit_delay_max_ms` after their first
//! change, and one commit is in flight at a time, so one fsync covers every
//! ACK that arrived while the previous one ran. Offers, NAKs and proxy
//! replies go out at once.

use crate::engine::{Decision, DhcpCore, DropReason, Listener, RecvMeta, Reply};
use crate::seams::{BootFacts, DhcpObservation, DhcpObserver, LeaseChange, LeaseStore};
use crate::socket;
use crate::{DhcpConfig, DhcpError, NetworkMode};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Receive buffer: larger than any accepted request, so truncation is seen.
const RECV_BUF: usize = crate::wire::MAX_REQUEST + 1;
/// Datagrams taken from one socket per wake-up before the loop looks at
/// finished commits, timers and the other sockets again.
const RECV_BURST: usize = 64;
/// After a receive error other than "nothing to read" (the socket's
/// interface went away, ENOMEM), wait this long before reading that socket
/// again, rather than spinning on it.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Non-ACK changes (releases, declines, expiries) kept for retry while the
/// store fails, at most.
const MAX_RETRY_CHANGES: usize = 100_000;

struct Sock {
    udp: UdpSocket,
    listener: Listener,
    port: u16,
}

struct PendingReply {
    reply: Reply,
    sock: usize,
    deadline: Instant,
    observations: Vec<DhcpObservation>,
}

#[derive(Default)]
struct Batch {
    changes: Vec<LeaseChange>,
    replies: Vec<PendingReply>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.replies.is_empty()
    }
}

fn count_drop(r: DropReason) {
    metrics::counter!("anvil_dhcp_dropped_packets_total", "reason" => r.as_str()).increment(1);
}

/// Runs the DHCP service until `shutdown` completes.
///
/// With `enabled = false` or no `[[dhcp.network]]`, nothing is bound: the
/// function waits for `shutdown` and returns.
///
/// The service runs on a thread of its own (`anvil-dhcp`) with a
/// single-threaded runtime: receiving, deciding, sending and awaiting
/// commits never hop between threads, except to the store's own. On the
/// caller's multi-threaded runtime the loop's wake-ups moved it between
/// worker threads, and context switches were the largest single item of its
/// CPU profile. The observer is called in the caller's runtime context, so
/// what it spawns runs there.
pub async fn run(
    config: DhcpConfig,
    store: Arc<dyn LeaseStore>,
    facts: Arc<dyn BootFacts>,
    observer: Arc<dyn DhcpObserver>,
    shutdown: impl Future,
) -> Result<(), DhcpError> {
    config.validate()?;
    if !config.serves() {
        info!(
            enabled = config.enabled,
            "DHCP serves nothing: no [[dhcp.network]] configured (or disabled); not binding"
        );
        shutdown.await;
        return Ok(());
    }
    let observer: Arc<dyn DhcpObserver> = match tokio::runtime::Handle::try_current() {
        Ok(handle) => Arc::new(OnRuntime {
            inner: observer,
            handle,
        }),
        Err(_) => observer,
    };
    // Dropped without a send (this future cancelled) also stops the thread.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("anvil-dhcp".into())
        .spawn(move || {
            let res = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(DhcpError::Runtime)
                .and_then(|rt| {
                    rt.block_on(serve(config, store, facts, observer, async move {
                        let _ = stop_rx.await;
                    }))
                });
            let _ = done_tx.send(res);
        })
        .map_err(DhcpError::Runtime)?;
    let ended = |r: Result<Result<(), DhcpError>, _>| {
        r.unwrap_or_else(|_| {
            Err(DhcpError::Runtime(std::io::Error::other(
                "the DHCP thread ended without a result (it panicked)",
            )))
        })
    };
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        r = &mut done_rx => return ended(r),
        _ = &mut shutdown => {}
    }
    let _ = stop_tx.send(());
    ended(done_rx.await)
}

/// Calls an observer inside a given runtime's context.
struct OnRuntime {
    inner: Arc<dyn DhcpObserver>,
    handle: tokio::runtime::Handle,
}

impl DhcpObserver for OnRuntime {
    fn observe(&self, ev: DhcpObservation) {
        let _context = self.handle.enter();
        self.inner.observe(ev);
    }
}

/// The service itself, on the `anvil-dhcp` thread's runtime.
async fn serve(
    config: DhcpConfig,
    store: Arc<dyn LeaseStore>,
    facts: Arc<dyn BootFacts>,
    observer: Arc<dyn DhcpObserver>,
    shutdown: impl Future,
) -> Result<(), DhcpError> {
    let reply_timeout = Duration::from_millis(config.reply_timeout_ms);
    let commit_delay = Duration::from_millis(config.commit_delay_max_ms);

    let mut core = DhcpCore::new(&config, facts);
    let leases = tokio::time::timeout(reply_timeout.max(Duration::from_secs(30)), store.load())
        .await
        .map_err(|_| DhcpError::StoreTimeout(reply_timeout.max(Duration::from_secs(30))))??;
    let loaded = leases.len();
    let skipped = core.load(leases);
    info!(loaded, skipped, "DHCP leases loaded");
    publish_lease_gauges(&core);

    let socks = open_sockets(&config)?;
    let mut rx = Receiver::new();

    let mut pending = Batch::default();
    let mut pending_since: Option<Instant> = None;
    let mut inflight: Option<JoinHandle<(Result<(), DhcpError>, Batch)>> = None;
    let mut sweep =
        tokio::time::interval(Duration::from_secs(u64::from(config.sweep_interval_secs)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_changes: Vec<LeaseChange> = Vec::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        // Start the next commit when none is running and the batch is full
        // or old enough.
        if inflight.is_none() && !pending.is_empty() {
            let full = pending.changes.len() >= config.commit_batch_max;
            let due = pending_since.is_some_and(|t| t.elapsed() >= commit_delay);
            if full || due {
                let mut batch = std::mem::take(&mut pending);
                pending_since = None;
                if !retry_changes.is_empty() {
                    let mut all = std::mem::take(&mut retry_changes);
                    all.append(&mut batch.changes);
                    batch.changes = all;
                }
                inflight = Some(start_commit(store.clone(), batch, reply_timeout));
            }
        }
        let timer = match (&inflight, pending_since) {
            (None, Some(t)) => Some(t + commit_delay),
            _ => None,
        };
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            joined = async {
                match inflight.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            }, if inflight.is_some() => {
                inflight = None;
                match joined {
                    Ok((res, batch)) => {
                        let retry = finish_commit(&mut core, &socks, &*observer, res, batch).await;
                        retry_changes.extend(retry);
                        if retry_changes.len() > MAX_RETRY_CHANGES {
                            let excess = retry_changes.len() - MAX_RETRY_CHANGES;
                            warn!(excess, "lease store failing: oldest unsaved lease changes dropped");
                            retry_changes.drain(..excess);
                        }
                    }
                    Err(e) => warn!(error = %e, "lease commit task failed"),
                }
            }
            i = readable(&socks, rx.next_first) => {
                rx.next_first = (i + 1) % socks.len();
                for _ in 0..RECV_BURST {
                    let Some((len, meta)) = rx.recv(&socks, i) else { break };
                    let bytes = &rx.buf[..len];
                    handle_inbound(&mut core, &socks, &*observer, bytes, &meta, i, reply_timeout, &mut pending, &mut pending_since).await;
                }
                if rx.failed {
                    rx.failed = false;
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                }
            }
            _ = async {
                match timer {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            }, if timer.is_some() => {}
            _ = sweep.tick() => {
                let changes = core.sweep(OffsetDateTime::now_utc());
                if !changes.is_empty() {
                    debug!(n = changes.len(), "expired leases reclaimed");
                    pending.changes.extend(changes);
                    pending_since.get_or_insert_with(Instant::now);
                }
                publish_lease_gauges(&core);
            }
        }
    }

    // No more receiving: make what was decided durable and answer it.
    if let Some(h) = inflight.take()
        && let Ok((res, batch)) = h.await
    {
        let retry = finish_commit(&mut core, &socks, &*observer, res, batch).await;
        retry_changes.extend(retry);
    }
    pending.changes.splice(0..0, retry_changes);
    if !pending.is_empty() {
        let h = start_commit(store.clone(), pending, reply_timeout);
        if let Ok((res, batch)) = h.await {
            let _ = finish_commit(&mut core, &socks, &*observer, res, batch).await;
        }
    }
    info!("DHCP service stopped");
    Ok(())
}

fn publish_lease_gauges(core: &DhcpCore) {
    for (state, n) in core.lease_counts() {
        metrics::gauge!("anvil_dhcp_leases", "state" => state.as_str()).set(n as f64);
    }
}

fn open_sockets(config: &DhcpConfig) -> Result<Vec<Sock>, DhcpError> {
    let devices: Vec<Option<&str>> = if config.interfaces.is_empty() {
        vec![None]
    } else {
        config.interfaces.iter().map(|s| Some(s.as_str())).collect()
    };
    let mut addrs: Vec<(SocketAddr, Listener)> =
        config.listen.iter().map(|a| (*a, Listener::Dhcp)).collect();
    if config.networks.iter().any(|n| n.mode == NetworkMode::Proxy) {
        addrs.push((config.proxy_listen, Listener::ProxyPxe));
    }
    let mut out = Vec::new();
    for (addr, listener) in addrs {
        let SocketAddr::V4(a4) = addr else {
            return Err(DhcpError::Config(format!("{addr} is not IPv4")));
        };
        for d in &devices {
            let std_sock = socket::open(a4, *d)?;
            let udp = UdpSocket::from_std(std_sock)
                .map_err(|e| DhcpError::socket(format!("{a4}: register with tokio"), e))?;
            let port = udp
                .local_addr()
                .map_err(|e| DhcpError::socket(format!("{a4}: local address"), e))?
                .port();
            info!(addr = %a4, port, device = d.unwrap_or("*"), ?listener, "DHCP listening");
            out.push(Sock {
                udp,
                listener,
                port,
            });
        }
    }
    Ok(out)
}

/// The loop's receiving side: one buffer for every socket (a datagram is
/// decided before the next is read), and the interface names seen.
struct Receiver {
    buf: Vec<u8>,
    names: HashMap<u32, String>,
    /// The socket `readable` looks at first, so a busy one does not starve
    /// the others.
    next_first: usize,
    /// A receive failed with a real error during the last burst.
    failed: bool,
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            buf: vec![0u8; RECV_BUF],
            names: HashMap::new(),
            next_first: 0,
            failed: false,
        }
    }

    /// Reads one datagram from socket `i` into `buf` without waiting: its
    /// length and where it came from, or `None` when there is nothing more
    /// to read now. Oversized datagrams are dropped and counted here.
    fn recv(&mut self, socks: &[Sock], i: usize) -> Option<(usize, RecvMeta)> {
        let s = &socks[i];
        let fd = socket::fd_of(&s.udp);
        loop {
            let buf = &mut self.buf;
            let info = match s.udp.try_io(Interest::READABLE, || socket::recv(fd, buf)) {
                Ok(info) => info,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) => {
                    warn!(error = %e, "DHCP receive failed");
                    self.failed = true;
                    return None;
                }
            };
            if info.truncated || info.len > crate::wire::MAX_REQUEST {
                count_drop(DropReason::Oversize);
                continue;
            }
            let interface = info.ifindex.and_then(|ix| {
                if let Some(n) = self.names.get(&ix) {
                    return Some(n.clone());
                }
                let n = socket::ifname(ix)?;
                self.names.insert(ix, n.clone());
                Some(n)
            });
            let meta = RecvMeta {
                listener: s.listener,
                src: info.src,
                local_port: s.port,
                ifindex: info.ifindex,
                interface,
                local_addr: info.local_addr,
            };
            return Some((info.len, meta));
        }
    }
}

/// Resolves to the index of a socket with a datagram waiting, looking at
/// `first` first.
fn readable(socks: &[Sock], first: usize) -> impl Future<Output = usize> + '_ {
    std::future::poll_fn(move |cx| {
        let n = socks.len();
        for k in 0..n {
            let i = (first + k) % n;
            // An error is readiness too: `recv` reports it.
            if socks[i].udp.poll_recv_ready(cx).is_ready() {
                return std::task::Poll::Ready(i);
            }
        }
        std::task::Poll::Pending
    })
}

#[allow(clippy::too_many_arguments)]
async fn handle_inbound(
    core: &mut DhcpCore,
    socks: &[Sock],
    observer: &dyn DhcpObserver,
    bytes: &[u8],
    meta: &RecvMeta,
    sock: usize,
    reply_timeout: Duration,
    pending: &mut Batch,
    pending_since: &mut Option<Instant>,
) {
    let deadline = Instant::now() + reply_timeout;
    let out = core.handle(bytes, meta, OffsetDateTime::now_utc());
    if let Some(k) = out.received {
        metrics::counter!("anvil_dhcp_packets_total", "type" => k.as_str()).increment(1);
    }
    let (incoming, replies): (Vec<_>, Vec<_>) = out
        .observations
        .into_iter()
        .partition(|o| !o.kind.is_reply());
    for o in incoming {
        observer.observe(o);
    }
    if !out.changes.is_empty() {
        pending.changes.extend(out.changes);
        pending_since.get_or_insert_with(Instant::now);
    }
    match out.decision {
        Decision::Drop(r) => {
            debug!(reason = r.as_str(), src = %meta.src, "DHCP packet dropped");
            count_drop(r);
        }
        Decision::NoReply => {}
        Decision::Reply(reply) => {
            let p = PendingReply {
                reply,
                sock,
                deadline,
                observations: replies,
            };
            if out.durable_before_reply {
                pending.replies.push(p);
                pending_since.get_or_insert_with(Instant::now);
            } else {
                send_reply(socks, observer, p).await;
            }
        }
    }
}

fn start_commit(
    store: Arc<dyn LeaseStore>,
    batch: Batch,
    timeout: Duration,
) -> JoinHandle<(Result<(), DhcpError>, Batch)> {
    metrics::histogram!("anvil_dhcp_commit_batch_size").record(batch.changes.len() as f64);
    tokio::spawn(async move {
        if batch.changes.is_empty() {
            return (Ok(()), batch);
        }
        let started = Instant::now();
        let res = match tokio::time::timeout(timeout, store.commit(batch.changes.clone())).await {
            Ok(r) => r,
            Err(_) => Err(DhcpError::StoreTimeout(timeout)),
        };
        metrics::histogram!("anvil_dhcp_commit_seconds").record(started.elapsed().as_secs_f64());
        (res, batch)
    })
}

/// After a commit: send its replies (or drop them if it failed) and return
/// the changes to retry.
async fn finish_commit(
    core: &mut DhcpCore,
    socks: &[Sock],
    observer: &dyn DhcpObserver,
    res: Result<(), DhcpError>,
    batch: Batch,
) -> Vec<LeaseChange> {
    match res {
        Ok(()) => {
            for p in batch.replies {
                send_reply(socks, observer, p).await;
            }
            Vec::new()
        }
        Err(e) => {
            warn!(error = %e, changes = batch.changes.len(), acks = batch.replies.len(),
                "lease commit failed: ACKs withheld");
            for _ in &batch.replies {
                count_drop(DropReason::CommitFailed);
            }
            core.commit_failed(batch.changes, OffsetDateTime::now_utc())
        }
    }
}

async fn send_reply(socks: &[Sock], observer: &dyn DhcpObserver, p: PendingReply) {
    if Instant::now() > p.deadline {
        count_drop(DropReason::Late);
        return;
    }
    let Some(s) = socks.get(p.sock) else {
        return;
    };
    let fd = socket::fd_of(&s.udp);
    let r = &p.reply;
    let sent = s
        .udp
        .async_io(Interest::WRITABLE, || {
            socket::send(fd, &r.bytes, r.dest, r.ifindex, r.source)
        })
        .await;
    match sent {
        Ok(_) => {
            metrics::counter!("anvil_dhcp_packets_total", "type" => r.kind.as_str()).increment(1);
            for o in p.observations {
                observer.observe(o);
            }
        }
        Err(e) => {
            debug!(error = %e, dest = %r.dest, "DHCP reply not sent");
            count_drop(DropReason::SendFailed);
        }
    }
}
