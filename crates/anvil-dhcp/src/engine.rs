//! The protocol core: bytes and a clock reading in, a [`Outcome`] out. No
//! sockets, no clock, no await: every decision can be replayed in a unit test
//! or a fuzzer.

use crate::classify::{BootTarget, ClientClass, boot_target, classify};
use crate::config::{BootNetwork, DhcpConfig, NetworkMode};
use crate::seams::{
    BootFacts, DhcpMessageKind, DhcpObservation, HostFacts, Lease, LeaseChange, LeaseState,
};
use crate::table::LeaseTable;
use crate::wire::{self, ReplyBuilder, Request};
use anvil_types::MacAddr;
use dhcproto::v4::MessageType;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// Why a packet got no answer. Counted as
/// `anvil_dhcp_dropped_packets_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Shorter than the BOOTP header and magic cookie.
    Truncated,
    /// Larger than any DHCP request (or cut by the socket buffer).
    Oversize,
    /// op is not BOOTREQUEST.
    NotBootRequest,
    /// Not Ethernet (htype 1, hlen 6).
    BadHardwareAddress,
    /// The magic cookie is wrong (BOOTP, or garbage).
    BadMagic,
    /// dhcproto could not decode it.
    Malformed,
    /// No option 53.
    NoMessageType,
    /// chaddr is zero or multicast.
    InvalidMac,
    /// OFFER/ACK/NAK/lease-query … sent to the server.
    UnexpectedMessageType,
    /// giaddr is not inside any `relay = true` network.
    UnknownRelay,
    /// Received on an interface/address no directly attached network matches.
    NoNetwork,
    /// proxyDHCP answers PXE clients only.
    ProxyNotPxe,
    /// A message proxyDHCP leaves to the site's DHCP server.
    ProxyIgnored,
    /// A request on the PXE port (4011) for a network not in proxy mode.
    NotProxyNetwork,
    /// proxyDHCP has nothing to boot for this client's architecture.
    NoBootFile,
    /// The dynamic range has no free address.
    NoAddress,
    /// Unknown client on a network without a dynamic range.
    NoRange,
    /// The client's reserved address is held by another client.
    ReservedAddressInUse,
    /// REQUEST/DECLINE/RELEASE without the address it is about.
    MissingAddress,
    /// DECLINE/RELEASE of an address the client does not hold.
    NotOurLease,
    /// INFORM from an address outside the network.
    WrongSubnet,
    /// Even the required options do not fit the client's maximum size.
    ReplyTooLarge,
    /// The reply was ready after `reply_timeout_ms` (slow store).
    Late,
    /// The lease commit failed, so the ACK was not sent.
    CommitFailed,
    /// The kernel refused to send the reply.
    SendFailed,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Oversize => "oversize",
            DropReason::NotBootRequest => "not_bootrequest",
            DropReason::BadHardwareAddress => "bad_hardware_address",
            DropReason::BadMagic => "bad_magic",
            DropReason::Malformed => "malformed",
            DropReason::NoMessageType => "no_message_type",
            DropReason::InvalidMac => "invalid_mac",
            DropReason::UnexpectedMessageType => "unexpected_message_type",
            DropReason::UnknownRelay => "unknown_relay",
            DropReason::NoNetwork => "no_network",
            DropReason::ProxyNotPxe => "proxy_not_pxe",
            DropReason::ProxyIgnored => "proxy_ignored",
            DropReason::NotProxyNetwork => "not_proxy_network",
            DropReason::NoBootFile => "no_boot_file",
            DropReason::NoAddress => "no_address",
            DropReason::NoRange => "no_range",
            DropReason::ReservedAddressInUse => "reserved_address_in_use",
            DropReason::MissingAddress => "missing_address",
            DropReason::NotOurLease => "not_our_lease",
            DropReason::WrongSubnet => "wrong_subnet",
            DropReason::ReplyTooLarge => "reply_too_large",
            DropReason::Late => "late",
            DropReason::CommitFailed => "commit_failed",
            DropReason::SendFailed => "send_failed",
        }
    }
}

/// Which socket a packet came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Listener {
    /// The DHCP port (67, or whatever `listen` says).
    Dhcp,
    /// The PXE boot-server port (4011), used by proxyDHCP clients.
    ProxyPxe,
}

/// Where a packet came from, as the socket layer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvMeta {
    pub listener: Listener,
    /// Source address and port of the datagram.
    pub src: SocketAddrV4,
    /// Local port the datagram arrived on. Relayed replies go to giaddr on
    /// this port, direct ones to this port + 1 (67 → 68).
    pub local_port: u16,
    /// Ingress interface (IP_PKTINFO), for sending the reply out of it.
    pub ifindex: Option<u32>,
    /// Name of the ingress interface.
    pub interface: Option<String>,
    /// The local address the packet was received on (IP_PKTINFO
    /// `ipi_spec_dst`: the interface's address, also for broadcasts).
    pub local_addr: Option<Ipv4Addr>,
}

/// A reply ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub dest: SocketAddrV4,
    /// Send out of this interface (IP_PKTINFO), for broadcasts to clients
    /// without an address.
    pub ifindex: Option<u32>,
    /// Source address to use; a local address.
    pub source: Option<Ipv4Addr>,
    pub kind: DhcpMessageKind,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Reply(Reply),
    /// Handled, and the protocol wants no answer (RELEASE, DECLINE, a REQUEST
    /// that chose another server).
    NoReply,
    Drop(DropReason),
}

/// Everything the core decided about one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The message type received, if it got that far.
    pub received: Option<DhcpMessageKind>,
    pub decision: Decision,
    /// Lease changes to commit.
    pub changes: Vec<LeaseChange>,
    /// The changes must be durable before the reply is sent (ACKs).
    pub durable_before_reply: bool,
    /// Events for the observer, the received message first. Emit reply
    /// events only once the reply is sent.
    pub observations: Vec<DhcpObservation>,
}

impl Outcome {
    fn drop(received: Option<DhcpMessageKind>, r: DropReason) -> Self {
        Outcome {
            received,
            decision: Decision::Drop(r),
            changes: Vec::new(),
            durable_before_reply: false,
            observations: Vec::new(),
        }
    }
}

struct Net {
    cfg: BootNetwork,
    /// Dynamic range as integers, inclusive.
    range: Option<(u32, u32)>,
    /// Next-fit allocation cursor inside the range.
    cursor: u32,
}

impl Net {
    /// A host address of the subnet that is not Anvil's or the router's.
    fn assignable(&self, ip: Ipv4Addr) -> bool {
        let s = &self.cfg.subnet;
        s.contains(&ip)
            && ip != s.network()
            && ip != s.broadcast()
            && ip != self.cfg.server_address
            && Some(ip) != self.cfg.router
    }
    fn in_range(&self, ip: Ipv4Addr) -> bool {
        self.range
            .is_some_and(|(a, b)| (a..=b).contains(&u32::from(ip)))
    }
}

/// Per-request context.
struct Ctx<'a> {
    req: &'a Request,
    meta: &'a RecvMeta,
    net: usize,
    class: ClientClass,
    facts: Option<HostFacts>,
    now: OffsetDateTime,
}

impl Ctx<'_> {
    fn mac(&self) -> MacAddr {
        self.req.mac
    }
    fn known(&self) -> bool {
        self.facts.as_ref().is_some_and(|f| f.known)
    }
    fn hostname(&self) -> Option<String> {
        self.facts.as_ref().and_then(|f| f.hostname.clone())
    }
}

/// The DHCP server's state machine over its lease table.
pub struct DhcpCore {
    nets: Vec<Net>,
    table: LeaseTable,
    facts: Arc<dyn BootFacts>,
    offer_hold: Duration,
    quarantine: Duration,
}

fn kind_of(t: MessageType) -> Option<DhcpMessageKind> {
    Some(match t {
        MessageType::Discover => DhcpMessageKind::Discover,
        MessageType::Offer => DhcpMessageKind::Offer,
        MessageType::Request => DhcpMessageKind::Request,
        MessageType::Decline => DhcpMessageKind::Decline,
        MessageType::Ack => DhcpMessageKind::Ack,
        MessageType::Nak => DhcpMessageKind::Nak,
        MessageType::Release => DhcpMessageKind::Release,
        MessageType::Inform => DhcpMessageKind::Inform,
        _ => return None,
    })
}

fn msg_type_code(k: DhcpMessageKind) -> u8 {
    match k {
        DhcpMessageKind::Discover => 1,
        DhcpMessageKind::Offer => 2,
        DhcpMessageKind::Request => 3,
        DhcpMessageKind::Decline => 4,
        DhcpMessageKind::Ack => 5,
        DhcpMessageKind::Nak => 6,
        DhcpMessageKind::Release => 7,
        DhcpMessageKind::Inform => 8,
    }
}

/// proxyDHCP option 43: PXE_DISCOVERY_CONTROL (6) = 8, "use the boot file
/// in this reply, do not run boot server discovery", then End.
const PXE_VENDOR_OPTIONS: [u8; 4] = [6, 1, 8, 255];

/// Options sent even when option 55 does not ask for them: without mask,
/// router and DNS a client is not usefully configured, and the boot-protocol
/// options are what PXE firmware keys on.
const ALWAYS_SEND: [u8; 6] = [1, 3, 6, 60, 43, 97];

impl DhcpCore {
    /// A core for a validated configuration.
    pub fn new(config: &DhcpConfig, facts: Arc<dyn BootFacts>) -> Self {
        let nets = config
            .networks
            .iter()
            .map(|n| {
                let range = match (n.range_start, n.range_end) {
                    (Some(a), Some(b)) => Some((u32::from(a), u32::from(b))),
                    _ => None,
                };
                Net {
                    cfg: n.clone(),
                    range,
                    cursor: range.map(|r| r.0).unwrap_or(0),
                }
            })
            .collect();
        DhcpCore {
            nets,
            table: LeaseTable::default(),
            facts,
            offer_hold: Duration::seconds(i64::from(config.offer_hold_secs)),
            quarantine: Duration::seconds(i64::from(config.decline_quarantine_secs)),
        }
    }

    /// Loads leases from the store. Records for networks no longer configured,
    /// or outside their network's subnet, are skipped; returns how many were.
    pub fn load(&mut self, leases: Vec<Lease>) -> usize {
        let mut skipped = 0;
        for l in leases {
            match self
                .nets
                .iter()
                .position(|n| n.cfg.name == l.network && n.cfg.subnet.contains(&l.ip))
            {
                Some(i) => {
                    // Keep the newest record per address if the store has
                    // duplicates.
                    if self
                        .table
                        .get(l.ip)
                        .is_none_or(|o| o.expires_at <= l.expires_at)
                    {
                        self.table.insert(i, l);
                    }
                }
                None => skipped += 1,
            }
        }
        skipped
    }

    /// All lease records currently held in memory.
    pub fn leases(&self) -> Vec<Lease> {
        let mut v: Vec<Lease> = self.table.iter().cloned().collect();
        v.sort_by_key(|l| (l.network.clone(), u32::from(l.ip)));
        v
    }

    pub fn lease(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.table.get(ip)
    }

    /// Number of lease records per state.
    pub fn lease_counts(&self) -> [(LeaseState, usize); 5] {
        self.table.counts()
    }

    /// Reclaims what ran out by `now`: bound leases become expired (kept, so
    /// the client gets the same address back), quarantines end, stale offers
    /// are forgotten. Returns the changes to commit.
    pub fn sweep(&mut self, now: OffsetDateTime) -> Vec<LeaseChange> {
        let mut changes = Vec::new();
        for ip in self.table.ips() {
            let Some(l) = self.table.get_mut(ip) else {
                continue;
            };
            if l.expires_at > now {
                continue;
            }
            match l.state {
                LeaseState::Bound => {
                    l.state = LeaseState::Expired;
                    changes.push(LeaseChange::Upsert(l.clone()));
                }
                LeaseState::Offered => {
                    // Never committed, so nothing to tell the store.
                    self.table.remove(ip);
                }
                LeaseState::Declined => {
                    if let Some(l) = self.table.remove(ip) {
                        changes.push(LeaseChange::Remove {
                            network: l.network,
                            ip,
                        });
                    }
                }
                LeaseState::Released | LeaseState::Expired => {}
            }
        }
        changes
    }

    /// The commit carrying these changes failed, so their ACKs were not sent.
    /// Bindings fall back to offer holds (the client retransmits its REQUEST
    /// and is ACKed after a later commit); the other changes are returned to
    /// be committed again.
    pub fn commit_failed(
        &mut self,
        changes: Vec<LeaseChange>,
        now: OffsetDateTime,
    ) -> Vec<LeaseChange> {
        let mut retry = Vec::new();
        for c in changes {
            match &c {
                LeaseChange::Upsert(l) if l.state == LeaseState::Bound => {
                    if let Some(cur) = self.table.get_mut(l.ip)
                        && cur == l
                    {
                        cur.state = LeaseState::Offered;
                        cur.expires_at = now + self.offer_hold;
                    }
                }
                _ => retry.push(c),
            }
        }
        retry
    }

    /// Decides what to do with one received packet.
    pub fn handle(&mut self, packet: &[u8], meta: &RecvMeta, now: OffsetDateTime) -> Outcome {
        let req = match wire::parse(packet) {
            Ok(r) => r,
            Err(r) => return Outcome::drop(None, r),
        };
        let Some(kind) = kind_of(req.msg_type) else {
            return Outcome::drop(None, DropReason::UnexpectedMessageType);
        };
        if kind.is_reply() {
            return Outcome::drop(Some(kind), DropReason::UnexpectedMessageType);
        }
        let class = classify(&req.msg);
        let net = match self.select_network(&req, meta) {
            Ok(n) => n,
            Err(r) => return Outcome::drop(Some(kind), r),
        };
        let mode = self.nets[net].cfg.mode;
        if mode == NetworkMode::Proxy && !class.is_pxe() {
            return Outcome::drop(Some(kind), DropReason::ProxyNotPxe);
        }
        if meta.listener == Listener::ProxyPxe && mode != NetworkMode::Proxy {
            return Outcome::drop(Some(kind), DropReason::NotProxyNetwork);
        }
        let facts = self.facts.lookup(req.mac);
        let ctx = Ctx {
            req: &req,
            meta,
            net,
            class,
            facts,
            now,
        };
        let mut out = Outcome {
            received: Some(kind),
            decision: Decision::NoReply,
            changes: Vec::new(),
            durable_before_reply: false,
            observations: Vec::new(),
        };
        let asked = req
            .requested_ip()
            .or(Some(req.msg.ciaddr()).filter(|a| !a.is_unspecified()));
        out.observations
            .push(self.observation(&ctx, kind, asked, None));

        use DhcpMessageKind as K;
        let result = match (mode, meta.listener, kind) {
            (NetworkMode::Full, _, K::Discover) => self.discover(&ctx, &mut out),
            (NetworkMode::Full, _, K::Request) => self.request(&ctx, &mut out),
            (NetworkMode::Full, _, K::Decline) => self.decline(&ctx, &mut out),
            (NetworkMode::Full, _, K::Release) => self.release(&ctx, &mut out),
            (NetworkMode::Full, _, K::Inform) => self.inform(&ctx, &mut out),
            (NetworkMode::Proxy, Listener::Dhcp, K::Discover) => {
                self.proxy_reply(&ctx, &mut out, K::Offer)
            }
            (NetworkMode::Proxy, Listener::ProxyPxe, K::Request | K::Inform) => {
                self.proxy_reply(&ctx, &mut out, K::Ack)
            }
            (NetworkMode::Proxy, _, _) => Err(DropReason::ProxyIgnored),
            (_, _, _) => Err(DropReason::UnexpectedMessageType),
        };
        if let Err(r) = result {
            out.decision = Decision::Drop(r);
            out.changes.clear();
            out.durable_before_reply = false;
            out.observations.retain(|o| !o.kind.is_reply());
        }
        out
    }

    fn select_network(&self, req: &Request, meta: &RecvMeta) -> Result<usize, DropReason> {
        let gi = req.msg.giaddr();
        if !gi.is_unspecified() {
            return self
                .nets
                .iter()
                .position(|n| n.cfg.relay && n.cfg.subnet.contains(&gi))
                .ok_or(DropReason::UnknownRelay);
        }
        if let Some(ifn) = &meta.interface
            && let Some(i) = self
                .nets
                .iter()
                .position(|n| !n.cfg.relay && n.cfg.interface.as_deref() == Some(ifn.as_str()))
        {
            return Ok(i);
        }
        if let Some(a) = meta.local_addr
            && let Some(i) = self.nets.iter().position(|n| {
                !n.cfg.relay && n.cfg.interface.is_none() && n.cfg.subnet.contains(&a)
            })
        {
            return Ok(i);
        }
        Err(DropReason::NoNetwork)
    }

    fn observation(
        &self,
        ctx: &Ctx<'_>,
        kind: DhcpMessageKind,
        ip: Option<Ipv4Addr>,
        boot: Option<String>,
    ) -> DhcpObservation {
        let gi = ctx.req.msg.giaddr();
        DhcpObservation {
            at: ctx.now,
            kind,
            mac: ctx.mac(),
            ip,
            network: self.nets[ctx.net].cfg.name.clone(),
            relay: Some(gi).filter(|a| !a.is_unspecified()),
            xid: ctx.req.msg.xid(),
            class: ctx.class.clone(),
            boot,
            known: ctx.known(),
        }
    }

    /// The client's reservation on this network, if it has one here.
    fn reservation(&self, ctx: &Ctx<'_>) -> Option<Ipv4Addr> {
        let r = ctx.facts.as_ref()?.reserved_ipv4?;
        self.nets[ctx.net].cfg.subnet.contains(&r).then_some(r)
    }

    /// Whether `ip` may be bound to this client now.
    fn allocatable(&self, ctx: &Ctx<'_>, ip: Ipv4Addr) -> bool {
        let net = &self.nets[ctx.net];
        if !net.assignable(ip) {
            return false;
        }
        let mac = ctx.mac();
        match self.reservation(ctx) {
            // A reserved machine gets its address and no other.
            Some(r) => {
                if ip != r {
                    return false;
                }
            }
            None => {
                if !net.in_range(ip) {
                    return false;
                }
            }
        }
        if let Some(owner) = self.facts.reserved_for(ip)
            && owner != mac
        {
            return false;
        }
        match self.table.get(ip) {
            Some(l) if l.state == LeaseState::Declined && l.expires_at > ctx.now => false,
            Some(l) if l.mac != mac && l.is_active(ctx.now) => false,
            _ => true,
        }
    }

    /// Picks the address to offer: reservation, then the client's previous
    /// address, then the one it asks for, then the next free one.
    fn choose_address(&mut self, ctx: &Ctx<'_>) -> Result<Ipv4Addr, DropReason> {
        if let Some(r) = self.reservation(ctx) {
            return if self.allocatable(ctx, r) {
                Ok(r)
            } else {
                Err(DropReason::ReservedAddressInUse)
            };
        }
        if let Some(prev) = self.table.ip_of(ctx.net, ctx.mac())
            && self.allocatable(ctx, prev)
        {
            return Ok(prev);
        }
        if let Some(want) = ctx.req.requested_ip()
            && self.allocatable(ctx, want)
        {
            return Ok(want);
        }
        let Some((lo, hi)) = self.nets[ctx.net].range else {
            return Err(DropReason::NoRange);
        };
        let size = u64::from(hi - lo) + 1;
        let start = self.nets[ctx.net].cursor.clamp(lo, hi);
        // First pass: addresses no other client remembers (released/expired
        // records keep affinity for their old owner); second pass: any free.
        for pass in 0..2 {
            let mut a = start;
            for _ in 0..size {
                let ip = Ipv4Addr::from(a);
                let remembered = self.table.get(ip).is_some_and(|l| l.mac != ctx.mac());
                if (pass == 1 || !remembered) && self.allocatable(ctx, ip) {
                    self.nets[ctx.net].cursor = if a == hi { lo } else { a + 1 };
                    return Ok(ip);
                }
                a = if a == hi { lo } else { a + 1 };
            }
        }
        Err(DropReason::NoAddress)
    }

    fn discover(&mut self, ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), DropReason> {
        let ip = self.choose_address(ctx)?;
        let hold_until = ctx.now + self.offer_hold;
        // Re-DISCOVER while bound (a reboot): the binding stays as it is.
        let keep_bound = self.table.get(ip).is_some_and(|l| {
            l.mac == ctx.mac() && l.state == LeaseState::Bound && l.expires_at > ctx.now
        });
        if !keep_bound {
            self.table.insert(
                ctx.net,
                Lease {
                    network: self.nets[ctx.net].cfg.name.clone(),
                    ip,
                    mac: ctx.mac(),
                    state: LeaseState::Offered,
                    hostname: ctx.hostname(),
                    client_id: ctx.req.client_id(),
                    expires_at: hold_until,
                },
            );
        }
        let lease = self.nets[ctx.net].cfg.lease_time_secs;
        self.answer(ctx, out, DhcpMessageKind::Offer, ip, Some(lease), false)
    }

    fn request(&mut self, ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), DropReason> {
        let ours = self.nets[ctx.net].cfg.server_address;
        let ciaddr = Some(ctx.req.msg.ciaddr()).filter(|a| !a.is_unspecified());
        let ip = match ctx.req.server_id() {
            // SELECTING, but the client chose another server's offer: let
            // our held address go, silently (RFC 2131 §4.3.2).
            Some(sid) if sid != ours => {
                if let Some(prev) = self.table.ip_of(ctx.net, ctx.mac())
                    && self
                        .table
                        .get(prev)
                        .is_some_and(|l| l.state == LeaseState::Offered)
                {
                    self.table.remove(prev);
                }
                out.decision = Decision::NoReply;
                return Ok(());
            }
            // SELECTING (our offer). Some clients put the address in ciaddr.
            Some(_) => ctx.req.requested_ip().or(ciaddr),
            // INIT-REBOOT (requested IP), else RENEWING/REBINDING (ciaddr).
            None => ctx.req.requested_ip().or(ciaddr),
        }
        .ok_or(DropReason::MissingAddress)?;

        if !self.allocatable(ctx, ip) {
            return self.nak(ctx, out);
        }
        let net = &self.nets[ctx.net];
        let lease_secs = net.cfg.lease_time_secs;
        let lease = Lease {
            network: net.cfg.name.clone(),
            ip,
            mac: ctx.mac(),
            state: LeaseState::Bound,
            hostname: ctx.hostname(),
            client_id: ctx.req.client_id(),
            expires_at: ctx.now + Duration::seconds(i64::from(lease_secs)),
        };
        // One address per client and network: a client moving to a new
        // address (its reservation changed) gives up the old one.
        if let Some(prev) = self.table.ip_of(ctx.net, ctx.mac())
            && prev != ip
            && let Some(old) = self.table.get_mut(prev)
            && old.mac == ctx.mac()
        {
            match old.state {
                LeaseState::Bound => {
                    old.state = LeaseState::Released;
                    old.expires_at = ctx.now;
                    out.changes.push(LeaseChange::Upsert(old.clone()));
                }
                LeaseState::Offered => {
                    self.table.remove(prev);
                }
                _ => {}
            }
        }
        self.table.insert(ctx.net, lease.clone());
        out.changes.push(LeaseChange::Upsert(lease));
        out.durable_before_reply = true;
        self.answer(
            ctx,
            out,
            DhcpMessageKind::Ack,
            ip,
            Some(lease_secs),
            ciaddr.is_some(),
        )
    }

    fn decline(&mut self, ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), DropReason> {
        if ctx
            .req
            .server_id()
            .is_some_and(|s| s != self.nets[ctx.net].cfg.server_address)
        {
            return Ok(());
        }
        let ip = ctx.req.requested_ip().ok_or(DropReason::MissingAddress)?;
        // Only the holder may decline: otherwise any host could empty the
        // pool with forged DECLINEs.
        if !self
            .table
            .get(ip)
            .is_some_and(|l| l.mac == ctx.mac() && l.state != LeaseState::Declined)
        {
            return Err(DropReason::NotOurLease);
        }
        let q = Lease {
            network: self.nets[ctx.net].cfg.name.clone(),
            ip,
            mac: ctx.mac(),
            state: LeaseState::Declined,
            hostname: None,
            client_id: ctx.req.client_id(),
            expires_at: ctx.now + self.quarantine,
        };
        self.table.insert(ctx.net, q.clone());
        // The client must not be offered the same address again.
        self.table.unlink(ctx.net, ctx.mac(), ip);
        out.changes.push(LeaseChange::Upsert(q));
        Ok(())
    }

    fn release(&mut self, ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), DropReason> {
        if ctx
            .req
            .server_id()
            .is_some_and(|s| s != self.nets[ctx.net].cfg.server_address)
        {
            return Ok(());
        }
        let ip = Some(ctx.req.msg.ciaddr())
            .filter(|a| !a.is_unspecified())
            .ok_or(DropReason::MissingAddress)?;
        let Some(l) = self.table.get_mut(ip) else {
            return Err(DropReason::NotOurLease);
        };
        if l.mac != ctx.mac() || !matches!(l.state, LeaseState::Bound | LeaseState::Offered) {
            return Err(DropReason::NotOurLease);
        }
        l.state = LeaseState::Released;
        l.expires_at = ctx.now;
        out.changes.push(LeaseChange::Upsert(l.clone()));
        Ok(())
    }

    fn inform(&self, ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), DropReason> {
        let ci = ctx.req.msg.ciaddr();
        if !self.nets[ctx.net].cfg.subnet.contains(&ci) || ci.is_unspecified() {
            return Err(DropReason::WrongSubnet);
        }
        self.answer(
            ctx,
            out,
            DhcpMessageKind::Ack,
            Ipv4Addr::UNSPECIFIED,
            None,
            true,
        )
    }

    fn proxy_reply(
        &self,
        ctx: &Ctx<'_>,
        out: &mut Outcome,
        kind: DhcpMessageKind,
    ) -> Result<(), DropReason> {
        let net = &self.nets[ctx.net].cfg;
        let boot = boot_target(&ctx.class, net, ctx.mac()).ok_or(DropReason::NoBootFile)?;
        let mut rb = ReplyBuilder::for_request(ctx.req);
        if kind == DhcpMessageKind::Ack {
            rb.ciaddr = ctx.req.msg.ciaddr();
        }
        rb.push(53, vec![msg_type_code(kind)], true);
        rb.push(54, net.server_address.octets().to_vec(), true);
        let vc: &[u8] = if ctx.class.is_http_boot() {
            b"HTTPClient"
        } else {
            b"PXEClient"
        };
        let mut avail: Vec<(u8, Vec<u8>, bool)> = vec![(60, vc.to_vec(), true)];
        if !ctx.class.is_http_boot() {
            avail.push((43, PXE_VENDOR_OPTIONS.to_vec(), true));
        }
        // PXE firmware matches the proxy reply to itself by its UUID.
        if let Some(id) = ctx.req.machine_id() {
            avail.push((97, id, false));
        }
        self.boot_options(&boot, net, &mut avail);
        self.finish(ctx, out, rb, avail, kind, Some(boot))
    }

    /// Boot fields for OFFER/ACK: siaddr, file, and options 66/67 for the
    /// clients that read those instead.
    fn boot_options(
        &self,
        boot: &BootTarget,
        net: &BootNetwork,
        avail: &mut Vec<(u8, Vec<u8>, bool)>,
    ) {
        if let BootTarget::Tftp(_) = boot {
            avail.push((66, net.server_address.to_string().into_bytes(), false));
        }
        avail.push((67, boot.as_str().as_bytes().to_vec(), false));
    }

    /// OFFER or ACK in full mode.
    fn answer(
        &self,
        ctx: &Ctx<'_>,
        out: &mut Outcome,
        kind: DhcpMessageKind,
        yiaddr: Ipv4Addr,
        lease_secs: Option<u32>,
        copy_ciaddr: bool,
    ) -> Result<(), DropReason> {
        let net = &self.nets[ctx.net].cfg;
        let mut rb = ReplyBuilder::for_request(ctx.req);
        rb.yiaddr = yiaddr;
        if copy_ciaddr {
            rb.ciaddr = ctx.req.msg.ciaddr();
        }
        rb.push(53, vec![msg_type_code(kind)], true);
        rb.push(54, net.server_address.octets().to_vec(), true);
        if let Some(secs) = lease_secs {
            rb.push(51, secs.to_be_bytes().to_vec(), true);
            rb.push(58, (secs / 2).to_be_bytes().to_vec(), true);
            rb.push(59, (secs / 8 * 7).to_be_bytes().to_vec(), true);
        }
        let mut avail: Vec<(u8, Vec<u8>, bool)> = Vec::new();
        avail.push((1, net.subnet.netmask().octets().to_vec(), true));
        if let Some(r) = net.router {
            avail.push((3, r.octets().to_vec(), false));
        }
        if !net.dns.is_empty() {
            avail.push((6, net.dns.iter().flat_map(|a| a.octets()).collect(), false));
        }
        if let Some(h) = ctx.hostname() {
            avail.push((12, h.into_bytes(), false));
        }
        if let Some(d) = &net.domain {
            avail.push((15, d.clone().into_bytes(), false));
        }
        if let Some(m) = net.mtu {
            avail.push((26, m.to_be_bytes().to_vec(), false));
        }
        avail.push((28, net.subnet.broadcast().octets().to_vec(), false));
        if !net.ntp.is_empty() {
            avail.push((42, net.ntp.iter().flat_map(|a| a.octets()).collect(), false));
        }
        let boot = boot_target(&ctx.class, net, ctx.mac());
        if let Some(b) = &boot {
            // UEFI HTTP boot only accepts offers that echo its class.
            if ctx.class.is_http_boot() {
                avail.push((60, b"HTTPClient".to_vec(), true));
            }
            self.boot_options(b, net, &mut avail);
        }
        // iPXE waits ~3 s for ProxyDHCP offers after every DHCP exchange
        // unless told there are none: option 175 (iPXE encapsulated),
        // sub-option 176 "no-pxedhcp" = 1. Full mode answers everything a
        // ProxyDHCP server would, so the wait buys nothing.
        if ctx.class.kind == crate::ClientKind::Ipxe {
            avail.push((175, vec![176, 1, 1], true));
        }
        self.finish(ctx, out, rb, avail, kind, boot)
    }

    /// Orders the options (option 55 order first), adds option 82, sets the
    /// boot fields, encodes within the size limit and addresses the reply.
    fn finish(
        &self,
        ctx: &Ctx<'_>,
        out: &mut Outcome,
        mut rb: ReplyBuilder,
        mut avail: Vec<(u8, Vec<u8>, bool)>,
        kind: DhcpMessageKind,
        boot: Option<BootTarget>,
    ) -> Result<(), DropReason> {
        let net = &self.nets[ctx.net].cfg;
        if ctx.req.prl.is_empty() {
            // No request list: send everything configured, in code order.
            avail.sort_by_key(|o| o.0);
            for (c, d, r) in avail {
                rb.push(c, d, r);
            }
        } else {
            for &c in &ctx.req.prl {
                if let Some(i) = avail.iter().position(|o| o.0 == c) {
                    let (c, d, r) = avail.remove(i);
                    rb.push(c, d, r);
                }
            }
            for (c, d, r) in avail {
                if r || ALWAYS_SEND.contains(&c) {
                    rb.push(c, d, r);
                }
            }
        }
        if let Some(ri) = &ctx.req.relay_info {
            rb.push(82, ri.clone(), true);
        }
        if let Some(b) = &boot {
            rb.siaddr = net.server_address;
            rb.file = Some(b.as_str().to_string());
        }
        let yiaddr = rb.yiaddr;
        let bytes = rb
            .encode(ctx.req.max_payload)
            .ok_or(DropReason::ReplyTooLarge)?;
        let (dest, ifindex, source) = self.destination(ctx, kind);
        let ip = if yiaddr.is_unspecified() {
            None
        } else {
            Some(yiaddr)
        };
        out.observations.push(self.observation(
            ctx,
            kind,
            ip,
            boot.as_ref().map(|b| b.as_str().to_string()),
        ));
        out.decision = Decision::Reply(Reply {
            bytes,
            dest,
            ifindex,
            source,
            kind,
        });
        Ok(())
    }

    fn nak(&self, ctx: &Ctx<'_>, out: &mut Outcome) -> Result<(), DropReason> {
        let net = &self.nets[ctx.net].cfg;
        let mut rb = ReplyBuilder::for_request(ctx.req);
        // A relay must broadcast a NAK: the client may have no usable address.
        if !rb.giaddr.is_unspecified() {
            rb.flags |= 0x8000;
        }
        rb.push(53, vec![msg_type_code(DhcpMessageKind::Nak)], true);
        rb.push(54, net.server_address.octets().to_vec(), true);
        rb.push(56, b"address not valid for this client".to_vec(), false);
        if let Some(ri) = &ctx.req.relay_info {
            rb.push(82, ri.clone(), true);
        }
        let bytes = rb
            .encode(ctx.req.max_payload)
            .ok_or(DropReason::ReplyTooLarge)?;
        let (dest, ifindex, source) = self.destination(ctx, DhcpMessageKind::Nak);
        out.observations
            .push(self.observation(ctx, DhcpMessageKind::Nak, None, None));
        out.decision = Decision::Reply(Reply {
            bytes,
            dest,
            ifindex,
            source,
            kind: DhcpMessageKind::Nak,
        });
        Ok(())
    }

    /// RFC 2131 §4.1 reply addressing. Direct clients without an address get
    /// broadcasts (not unicast to yiaddr, which would need an ARP entry
    /// inserted first): simplest, and every client accepts them.
    fn destination(
        &self,
        ctx: &Ctx<'_>,
        kind: DhcpMessageKind,
    ) -> (SocketAddrV4, Option<u32>, Option<Ipv4Addr>) {
        let meta = ctx.meta;
        let direct = (meta.ifindex, meta.local_addr);
        if meta.listener == Listener::ProxyPxe {
            return (meta.src, direct.0, direct.1);
        }
        let gi = ctx.req.msg.giaddr();
        if !gi.is_unspecified() {
            return (SocketAddrV4::new(gi, meta.local_port), None, None);
        }
        let client_port = if meta.local_port == 67 {
            68
        } else {
            meta.local_port.saturating_add(1)
        };
        let ci = ctx.req.msg.ciaddr();
        let to = if kind != DhcpMessageKind::Nak && !ci.is_unspecified() {
            ci
        } else {
            Ipv4Addr::BROADCAST
        };
        (SocketAddrV4::new(to, client_port), direct.0, direct.1)
    }
}
