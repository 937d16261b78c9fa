//! Adapters that plug the boot services (DHCP, TFTP) into the application:
//! leases in the store, the MAC snapshot as boot facts, and every DHCP and
//! TFTP step on the machine's boot timeline. Only the binary knows both
//! sides; the services stay libraries with no idea of Anvil's store.

use anvil_core::App;
use anvil_core::boot::DhcpFacts;
use anvil_dhcp::{
    BootFacts, DhcpError, DhcpMessageKind, DhcpObservation, DhcpObserver, HostFacts, Lease,
    LeaseChange, LeaseState, LeaseStore,
};
use anvil_store::{LeaseRecord, LeaseWrite, Store};
use anvil_tftp::{TftpObserver, TransferOutcome, TransferReport};
use anvil_types::MacAddr;
use futures::future::BoxFuture;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

/// DHCP leases in Anvil's store: one transaction per batch.
pub struct StoreLeases {
    pub store: Store,
}

fn lease_to_record(l: &Lease) -> LeaseRecord {
    LeaseRecord {
        ip: l.ip.to_string(),
        mac: l.mac.to_string(),
        network: l.network.clone(),
        state: l.state.as_str().to_string(),
        hostname: l.hostname.clone(),
        client_id: l.client_id.as_ref().map(hex::encode),
        expires_at: l.expires_at,
        updated_at: anvil_store::truncate_to_micros(time::OffsetDateTime::now_utc()),
    }
}

fn record_to_lease(r: LeaseRecord) -> Option<Lease> {
    Some(Lease {
        network: r.network,
        ip: r.ip.parse().ok()?,
        mac: r.mac.parse().ok()?,
        state: r.state.parse::<LeaseState>().ok()?,
        hostname: r.hostname,
        client_id: r.client_id.and_then(|c| hex::decode(c).ok()),
        expires_at: r.expires_at,
    })
}

impl LeaseStore for StoreLeases {
    fn load(&self) -> BoxFuture<'_, Result<Vec<Lease>, DhcpError>> {
        Box::pin(async move {
            let records = self
                .store
                .list_leases(None)
                .await
                .map_err(DhcpError::store)?;
            let total = records.len();
            let leases: Vec<Lease> = records.into_iter().filter_map(record_to_lease).collect();
            if leases.len() != total {
                tracing::warn!(
                    skipped = total - leases.len(),
                    "ignored unreadable lease rows"
                );
            }
            Ok(leases)
        })
    }

    fn commit(&self, batch: Vec<LeaseChange>) -> BoxFuture<'_, Result<(), DhcpError>> {
        Box::pin(async move {
            let writes: Vec<LeaseWrite> = batch
                .iter()
                .map(|c| match c {
                    LeaseChange::Upsert(l) => LeaseWrite::Upsert(lease_to_record(l)),
                    LeaseChange::Remove { ip, .. } => LeaseWrite::Remove { ip: ip.to_string() },
                })
                .collect();
            self.store
                .commit_leases(&writes)
                .await
                .map_err(DhcpError::store)
        })
    }
}

/// Boot facts from the application's MAC snapshot (no database access on
/// the DHCP hot path).
pub struct AppFacts {
    pub app: App,
}

impl BootFacts for AppFacts {
    fn lookup(&self, mac: MacAddr) -> Option<HostFacts> {
        self.app.lookup_boot(&mac).map(|m| HostFacts {
            reserved_ipv4: m.reserved_ipv4,
            hostname: Some(m.hostname),
            known: true,
        })
    }

    fn reserved_for(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.app.reserved_owner(ip)
    }
}

/// The address each MAC was last given, so a TFTP transfer (which only
/// shows an IP) lands on the right machine's timeline.
#[derive(Clone, Default)]
pub struct AddressBook {
    inner: Arc<Mutex<HashMap<Ipv4Addr, MacAddr>>>,
}

impl AddressBook {
    fn set(&self, ip: Ipv4Addr, mac: MacAddr) {
        if let Ok(mut m) = self.inner.lock() {
            m.insert(ip, mac);
        }
    }

    fn get(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.inner.lock().ok().and_then(|m| m.get(&ip).copied())
    }
}

/// Puts DHCP steps on the timeline and discovers unknown PXE clients.
pub struct DhcpTimeline {
    pub app: App,
    pub addresses: AddressBook,
}

impl DhcpObserver for DhcpTimeline {
    fn observe(&self, ev: DhcpObservation) {
        let kind = match ev.kind {
            DhcpMessageKind::Discover => "dhcp.discover",
            DhcpMessageKind::Offer => "dhcp.offer",
            DhcpMessageKind::Request => "dhcp.request",
            DhcpMessageKind::Ack => "dhcp.ack",
            DhcpMessageKind::Nak => "dhcp.nak",
            DhcpMessageKind::Decline => "dhcp.decline",
            DhcpMessageKind::Release => "dhcp.release",
            DhcpMessageKind::Inform => "dhcp.inform",
        };
        if ev.kind == DhcpMessageKind::Ack
            && let Some(ip) = ev.ip
        {
            self.addresses.set(ip, ev.mac);
        }
        // The timeline is about network boots: firmware PXE, iPXE, and the
        // machines Anvil knows. Ordinary DHCP traffic of unknown clients
        // (phones of the site, a DHCP load test) is not written, which keeps
        // it off the store's write path.
        let booting = ev.class.is_pxe() || ev.class.kind == anvil_dhcp::ClientKind::Ipxe;
        if !booting && !ev.known {
            return;
        }
        self.app.record_boot(
            ev.mac,
            kind,
            json!({
                "ip": ev.ip,
                "network": ev.network,
                "relay": ev.relay,
                "arch": ev.class.arch,
                "vendor_class": ev.class.vendor_class,
                "user_class": ev.class.user_class,
                "boot": ev.boot,
            }),
        );
        // A PXE client we have never seen becomes a machine (once).
        if ev.kind == DhcpMessageKind::Discover && !ev.known && ev.class.is_pxe() {
            self.app.discover(
                ev.mac,
                DhcpFacts {
                    arch_code: ev.class.arch,
                    vendor_class: ev.class.vendor_class.clone(),
                    user_class: ev.class.user_class.first().cloned(),
                    system_uuid: ev.class.system_uuid.map(|u| u.to_string()),
                    via: "dhcp",
                },
            );
        }
    }
}

/// Puts TFTP transfers on the timeline of the machine at that address.
pub struct TftpTimeline {
    pub app: App,
    pub addresses: AddressBook,
}

impl TftpObserver for TftpTimeline {
    fn transfer_finished(&self, r: &TransferReport) {
        let IpAddr::V4(ip) = r.peer.ip() else { return };
        let Some(mac) = self.addresses.get(ip) else {
            tracing::debug!(peer = %r.peer, file = %r.file, "TFTP transfer from an address with no lease");
            return;
        };
        self.app.record_boot(
            mac,
            "tftp.transfer",
            json!({
                "file": r.file,
                "bytes": r.bytes,
                "blksize": r.blksize,
                "windowsize": r.windowsize,
                "ms": r.duration.as_millis() as u64,
                // UEFI firmware asks for the size first and aborts that
                // transfer on purpose: expected, not a failure.
                "ok": matches!(r.outcome, TransferOutcome::Completed) || r.outcome.label() == "size_probe",
                "outcome": r.outcome.label(),
            }),
        );
    }
}
