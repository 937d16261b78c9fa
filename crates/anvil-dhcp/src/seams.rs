//! The three seams between the DHCP service and the rest of Anvil: durable
//! lease storage, the inventory snapshot, and the boot timeline.

use crate::DhcpError;
use crate::classify::ClientClass;
use anvil_types::MacAddr;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;

/// Lifecycle of an address binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Held for a client between OFFER and REQUEST. Kept in memory only: the
    /// service never commits offers (a restart just makes clients DISCOVER
    /// again), but a store may return them from `load` and they are honoured.
    Offered,
    /// ACKed: the client owns the address until `expires_at`.
    Bound,
    /// The client RELEASEd it. Free, but remembered so the same client gets
    /// the same address back.
    Released,
    /// A client DECLINEd it (someone else answers ARP for it): not offered
    /// until `expires_at` (the quarantine end).
    Declined,
    /// Bound lease that ran out. Free, remembered like `Released`.
    Expired,
}

impl LeaseState {
    pub const ALL: [LeaseState; 5] = [
        LeaseState::Offered,
        LeaseState::Bound,
        LeaseState::Released,
        LeaseState::Declined,
        LeaseState::Expired,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
            LeaseState::Expired => "expired",
        }
    }
}

impl std::str::FromStr for LeaseState {
    type Err = String;
    /// The inverse of [`LeaseState::as_str`], for stores that keep the state
    /// as text.
    fn from_str(s: &str) -> Result<Self, String> {
        LeaseState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown lease state {s:?}"))
    }
}

/// One address binding. The key is (`network`, `ip`): an address has at most
/// one lease record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Name of the `[[dhcp.network]]`.
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub state: LeaseState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Option 61 as sent by the client (informational: leases follow the MAC,
    /// see the crate docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Vec<u8>>,
    /// End of the lease (bound), of the hold (offered), of the quarantine
    /// (declined); when it was freed (released, expired).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Lease {
    /// Whether the address is unavailable to other clients at `now`.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        matches!(
            self.state,
            LeaseState::Offered | LeaseState::Bound | LeaseState::Declined
        ) && self.expires_at > now
    }
}

/// A change to durable lease state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseChange {
    /// Insert or replace the record of (`network`, `ip`).
    Upsert(Lease),
    /// Forget the record of (`network`, `ip`).
    Remove { network: String, ip: Ipv4Addr },
}

impl LeaseChange {
    pub fn key(&self) -> (&str, Ipv4Addr) {
        match self {
            LeaseChange::Upsert(l) => (&l.network, l.ip),
            LeaseChange::Remove { network, ip } => (network, *ip),
        }
    }
}

/// Durable lease storage. The service keeps the authoritative table in memory
/// and writes behind it in batches (group commit): one `commit` (one fsync)
/// covers many leases, and an ACK is sent only after the commit carrying its
/// lease has returned.
pub trait LeaseStore: Send + Sync {
    /// All leases, once, at start.
    fn load(&self) -> BoxFuture<'_, Result<Vec<Lease>, DhcpError>>;
    /// Applies the changes in order; durable when it returns `Ok`.
    fn commit(&self, batch: Vec<LeaseChange>) -> BoxFuture<'_, Result<(), DhcpError>>;
}

/// A lease store in memory, for tests: also records batch sizes and can be
/// made slow or failing.
#[derive(Debug, Default)]
pub struct MemoryLeaseStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    leases: BTreeMap<(String, Ipv4Addr), Lease>,
    batches: Vec<usize>,
    delay: Duration,
    fail: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("memory lease store: injected failure")]
struct InjectedFailure;

impl MemoryLeaseStore {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_leases(leases: impl IntoIterator<Item = Lease>) -> Self {
        let s = Self::default();
        s.lock().leases = leases
            .into_iter()
            .map(|l| ((l.network.clone(), l.ip), l))
            .collect();
        s
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic in another test thread must not hide this store's state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Every stored lease, in (network, ip) order.
    pub fn leases(&self) -> Vec<Lease> {
        self.lock().leases.values().cloned().collect()
    }
    pub fn get(&self, network: &str, ip: Ipv4Addr) -> Option<Lease> {
        self.lock().leases.get(&(network.to_string(), ip)).cloned()
    }
    /// Sizes of the committed batches, in order.
    pub fn batches(&self) -> Vec<usize> {
        self.lock().batches.clone()
    }
    /// Makes every commit take this long.
    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }
    /// Makes every commit fail.
    pub fn set_fail(&self, fail: bool) {
        self.lock().fail = fail;
    }
}

impl LeaseStore for MemoryLeaseStore {
    fn load(&self) -> BoxFuture<'_, Result<Vec<Lease>, DhcpError>> {
        let leases = self.leases();
        Box::pin(async move { Ok(leases) })
    }

    fn commit(&self, batch: Vec<LeaseChange>) -> BoxFuture<'_, Result<(), DhcpError>> {
        Box::pin(async move {
            let (delay, fail) = {
                let g = self.lock();
                (g.delay, g.fail)
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail {
                return Err(DhcpError::store(InjectedFailure));
            }
            let mut g = self.lock();
            g.batches.push(batch.len());
            for c in batch {
                match c {
                    LeaseChange::Upsert(l) => {
                        g.leases.insert((l.network.clone(), l.ip), l);
                    }
                    LeaseChange::Remove { network, ip } => {
                        g.leases.remove(&(network, ip));
                    }
                }
            }
            Ok(())
        })
    }
}

/// What the inventory knows about a MAC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// The machine's reserved address; it always gets this one on the network
    /// whose subnet contains it.
    pub reserved_ipv4: Option<Ipv4Addr>,
    /// Sent as option 12.
    pub hostname: Option<String>,
    /// The MAC belongs to a machine in the inventory.
    pub known: bool,
}

/// The inventory as the DHCP hot path sees it: synchronous lookups in an
/// in-memory snapshot (refreshed by anvil-core), so a DHCP answer never waits
/// for a database, NetBox or a BMC.
pub trait BootFacts: Send + Sync {
    /// Facts about a MAC, `None` when the inventory has never heard of it.
    fn lookup(&self, mac: MacAddr) -> Option<HostFacts>;

    /// The MAC an address is reserved for, so the dynamic pool never hands a
    /// reserved address to another client. The default knows none: then keep
    /// reservations outside the dynamic ranges.
    fn reserved_for(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        let _ = ip;
        None
    }
}

/// Fixed facts, for tests and for a binary without an inventory.
#[derive(Debug, Clone, Default)]
pub struct StaticBootFacts {
    hosts: HashMap<MacAddr, HostFacts>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
}

impl StaticBootFacts {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a known machine.
    pub fn with_host(mut self, mac: MacAddr, ip: Option<Ipv4Addr>, hostname: Option<&str>) -> Self {
        self.insert(
            mac,
            HostFacts {
                reserved_ipv4: ip,
                hostname: hostname.map(str::to_string),
                known: true,
            },
        );
        self
    }
    pub fn insert(&mut self, mac: MacAddr, facts: HostFacts) {
        if let Some(ip) = facts.reserved_ipv4 {
            self.by_ip.insert(ip, mac);
        }
        self.hosts.insert(mac, facts);
    }
}

impl BootFacts for StaticBootFacts {
    fn lookup(&self, mac: MacAddr) -> Option<HostFacts> {
        self.hosts.get(&mac).cloned()
    }
    fn reserved_for(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.by_ip.get(&ip).copied()
    }
}

/// DHCP message types, as observed and as counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMessageKind {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
}

impl DhcpMessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DhcpMessageKind::Discover => "discover",
            DhcpMessageKind::Offer => "offer",
            DhcpMessageKind::Request => "request",
            DhcpMessageKind::Decline => "decline",
            DhcpMessageKind::Ack => "ack",
            DhcpMessageKind::Nak => "nak",
            DhcpMessageKind::Release => "release",
            DhcpMessageKind::Inform => "inform",
        }
    }
    /// Whether Anvil sends this kind (as opposed to receiving it).
    pub fn is_reply(self) -> bool {
        matches!(
            self,
            DhcpMessageKind::Offer | DhcpMessageKind::Ack | DhcpMessageKind::Nak
        )
    }
}

/// One DHCP event for the machine's boot timeline and for discovering
/// unknown machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhcpObservation {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub kind: DhcpMessageKind,
    pub mac: MacAddr,
    /// Offered/acked address; for requests the address asked for.
    pub ip: Option<Ipv4Addr>,
    pub network: String,
    /// The relay's giaddr, for relayed requests.
    pub relay: Option<Ipv4Addr>,
    pub xid: u32,
    pub class: ClientClass,
    /// Boot file or URL given (replies only).
    pub boot: Option<String>,
    /// The MAC belongs to a machine in the inventory.
    pub known: bool,
}

/// Receives observations. Must not block: the DHCP loop calls it inline.
pub trait DhcpObserver: Send + Sync {
    fn observe(&self, ev: DhcpObservation);
}

/// Ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopObserver;

impl DhcpObserver for NoopObserver {
    fn observe(&self, _ev: DhcpObservation) {}
}

/// Keeps every observation, for tests.
#[derive(Debug, Default)]
pub struct CollectingObserver {
    events: Mutex<Vec<DhcpObservation>>,
}

impl CollectingObserver {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn events(&self) -> Vec<DhcpObservation> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl DhcpObserver for CollectingObserver {
    fn observe(&self, ev: DhcpObservation) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ev);
    }
}
