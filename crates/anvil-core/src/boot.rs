//! What the boot services need from the application: a MAC → machine
//! snapshot they can read without waiting on the database, a recorder for
//! the boot timeline that never blocks them, discovery of unknown machines,
//! the call-home of the discovery environment, and the lease list.

use crate::error::{Error, Result};
use crate::{App, Principal, now};
use anvil_api_types::{
    BootEvent, BootStep, BootTimeline, CallHome, CallHomeAck, InterfaceInput, Lease, MachineCreate,
    MachinePatch,
};
use anvil_store::StoreError;
use anvil_types::{Architecture, Firmware, MacAddr, MachineState};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, RwLock};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

/// A machine as the boot services see it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedMachine {
    pub id: Uuid,
    pub hostname: String,
    pub state: MachineState,
    pub reserved_ipv4: Option<Ipv4Addr>,
}

/// The steps of a network boot, in the order they happen. `tftp.transfer`
/// only occurs when the firmware's own PXE loads iPXE (an iPXE ROM skips it).
pub const BOOT_STEPS: &[&str] = &[
    "dhcp.discover",
    "dhcp.offer",
    "dhcp.request",
    "dhcp.ack",
    "tftp.transfer",
    "http.script",
    "http.kernel",
    "http.initrd",
    "callhome",
];

const RECORDER_QUEUE: usize = 16_384;
const MAX_CALLHOME_FACTS: usize = 64 * 1024;

type BootRow = (OffsetDateTime, String, String, serde_json::Value);

#[derive(Default)]
struct BootIndex {
    by_mac: HashMap<MacAddr, IndexedMachine>,
    /// Reserved address → the MAC it is reserved for.
    by_reserved_ip: HashMap<Ipv4Addr, MacAddr>,
}

pub(crate) struct BootState {
    index: RwLock<Arc<BootIndex>>,
    dirty: Notify,
    recorder: mpsc::Sender<BootRow>,
    recorder_rx: Mutex<Option<mpsc::Receiver<BootRow>>>,
    discovering: Mutex<HashSet<MacAddr>>,
}

impl BootState {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::channel(RECORDER_QUEUE);
        BootState {
            index: RwLock::new(Arc::new(BootIndex::default())),
            dirty: Notify::new(),
            recorder: tx,
            recorder_rx: Mutex::new(Some(rx)),
            discovering: Mutex::new(HashSet::new()),
        }
    }

    pub(crate) fn mark_dirty(&self) {
        self.dirty.notify_one();
    }
}

/// What DHCP revealed about a client, for discovery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DhcpFacts {
    /// Option 93 (client system architecture).
    pub arch_code: Option<u16>,
    /// Option 60.
    pub vendor_class: Option<String>,
    /// Option 77.
    pub user_class: Option<String>,
    /// Option 97 (machine UUID).
    pub system_uuid: Option<String>,
    /// What revealed the machine: `dhcp`, `http` (its iPXE script), `callhome`.
    pub via: &'static str,
}

/// Architecture and firmware from a PXE client architecture code (RFC 4578,
/// IANA "Processor Architecture Types").
pub fn arch_from_code(code: u16) -> (Option<Architecture>, Option<Firmware>) {
    match code {
        0 => (Some(Architecture::Amd64), Some(Firmware::Bios)),
        6 => (Some(Architecture::I386), Some(Firmware::Uefi)),
        7 | 9 | 16 => (Some(Architecture::Amd64), Some(Firmware::Uefi)),
        11 | 19 => (Some(Architecture::Arm64), Some(Firmware::Uefi)),
        _ => (None, None),
    }
}

impl App {
    /// The machine that owns `mac`, from the snapshot (no database access).
    pub fn lookup_boot(&self, mac: &MacAddr) -> Option<IndexedMachine> {
        let idx = self.boot.index.read().ok()?.clone();
        idx.by_mac.get(mac).cloned()
    }

    /// The MAC an address is reserved for, from the snapshot.
    pub fn reserved_owner(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        let idx = self.boot.index.read().ok()?.clone();
        idx.by_reserved_ip.get(&ip).copied()
    }

    /// Rebuilds the MAC snapshot from the store.
    pub async fn refresh_boot_index(&self) -> Result<()> {
        let rows = self.store.interface_index().await?;
        let mut idx = BootIndex::default();
        for r in rows {
            let Ok(mac) = r.mac.parse::<MacAddr>() else {
                continue;
            };
            let reserved_ipv4: Option<Ipv4Addr> = r.ipv4.and_then(|ip| ip.parse().ok());
            if let Some(ip) = reserved_ipv4 {
                idx.by_reserved_ip.insert(ip, mac);
            }
            idx.by_mac.insert(
                mac,
                IndexedMachine {
                    id: r.machine_id,
                    hostname: r.hostname,
                    state: r.state,
                    reserved_ipv4,
                },
            );
        }
        if let Ok(mut guard) = self.boot.index.write() {
            *guard = Arc::new(idx);
        }
        Ok(())
    }

    /// Records a boot step for `mac`. Never blocks: if the writer is far
    /// behind the step is dropped and counted.
    pub fn record_boot(&self, mac: MacAddr, kind: &str, detail: serde_json::Value) {
        let row = (now(), mac.to_string(), kind.to_string(), detail);
        if self.boot.recorder.try_send(row).is_err() {
            metrics::counter!("anvil_boot_events_dropped_total").increment(1);
        }
    }

    /// Starts the background work of the boot services: writing recorded
    /// boot steps in batches, and keeping the MAC snapshot fresh (at once
    /// after a machine changes, and every few seconds for changes made by
    /// other instances sharing a PostgreSQL database).
    pub fn start_background(&self) {
        let rx = self.boot.recorder_rx.lock().ok().and_then(|mut g| g.take());
        if let Some(mut rx) = rx {
            let app = self.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(256);
                while rx.recv_many(&mut buf, 256).await > 0 {
                    if let Err(e) = app.store.append_boot_events(&buf).await {
                        tracing::warn!(error = %e, lost = buf.len(), "cannot write boot events");
                        metrics::counter!("anvil_boot_events_dropped_total")
                            .increment(buf.len() as u64);
                    }
                    buf.clear();
                }
            });
        }
        let app = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = app.refresh_boot_index().await {
                    tracing::warn!(error = %e, "cannot refresh the boot index");
                }
                tokio::select! {
                    _ = app.boot.dirty.notified() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                }
            }
        });
    }

    /// Called by DHCP for a PXE client. An unknown MAC becomes a machine in
    /// state `new`, once: concurrent packets of the same client do not
    /// create it twice (an in-memory guard, then the MAC's unique constraint).
    pub fn discover(&self, mac: MacAddr, facts: DhcpFacts) {
        if self.lookup_boot(&mac).is_some() {
            return;
        }
        {
            let Ok(mut set) = self.boot.discovering.lock() else {
                return;
            };
            if !set.insert(mac) {
                return;
            }
        }
        let app = self.clone();
        tokio::spawn(async move {
            if let Err(e) = app.create_discovered(mac, &facts).await {
                tracing::warn!(%mac, error = %e, "discovery failed");
            }
            if let Ok(mut set) = app.boot.discovering.lock() {
                set.remove(&mac);
            }
        });
    }

    async fn create_discovered(&self, mac: MacAddr, facts: &DhcpFacts) -> Result<Option<Uuid>> {
        if self.store.machine_id_by_mac(&mac).await?.is_some() {
            self.boot.mark_dirty();
            return Ok(None);
        }
        let (architecture, firmware) = facts.arch_code.map(arch_from_code).unwrap_or((None, None));
        let discovered = json!({
            "discovered": {
                "via": facts.via,
                "arch_code": facts.arch_code,
                "vendor_class": facts.vendor_class,
                "user_class": facts.user_class,
                "system_uuid": facts.system_uuid,
            }
        });
        let create = MachineCreate {
            hostname: discovered_hostname(&mac),
            architecture,
            firmware,
            facts: Some(discovered),
            interfaces: vec![InterfaceInput {
                mac: mac.to_string(),
                name: Some("eth0".into()),
                pxe: Some(true),
                ipv4: None,
            }],
            ..Default::default()
        };
        match self.create_machine(&Principal::System, create).await {
            Ok(m) => {
                tracing::info!(%mac, hostname = %m.hostname, "discovered a new machine");
                self.boot.mark_dirty();
                Ok(Some(m.id))
            }
            // Another instance, packet or call-home got there first (the
            // hostname is derived from the MAC, so either may collide).
            Err(Error::Duplicate { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The discovery environment reports in. Creates the machine if DHCP did
    /// not already, and stores what it reported under `facts.callhome`.
    pub async fn call_home(&self, report: CallHome) -> Result<CallHomeAck> {
        let mac: MacAddr = report
            .mac
            .parse()
            .map_err(|e| Error::from_parse("mac", e))?;
        let mut others = Vec::new();
        for (i, m) in report.macs.iter().enumerate().take(64) {
            let parsed: MacAddr = m
                .parse()
                .map_err(|e| Error::from_parse(format!("macs[{i}]"), e))?;
            if parsed != mac && !others.contains(&parsed) {
                others.push(parsed);
            }
        }
        if let Some(ip) = &report.ip {
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| Error::invalid("ip", format!("{ip:?} is not an IP address")))?;
        }
        if let Some(f) = &report.facts {
            if !f.is_object() {
                return Err(Error::invalid("facts", "must be a JSON object"));
            }
            if f.to_string().len() > MAX_CALLHOME_FACTS {
                return Err(Error::invalid("facts", "at most 64 KiB"));
            }
        }
        if let Some(u) = report.uptime_secs
            && !(u.is_finite() && u >= 0.0)
        {
            return Err(Error::invalid("uptime_secs", "a non-negative number"));
        }
        self.record_boot(
            mac,
            "callhome",
            json!({ "ip": report.ip, "uptime_secs": report.uptime_secs }),
        );

        let mut created = false;
        let id =
            match self.store.machine_id_by_mac(&mac).await? {
                Some(id) => id,
                None => match self
                    .create_discovered(
                        mac,
                        &DhcpFacts {
                            via: "callhome",
                            ..Default::default()
                        },
                    )
                    .await?
                {
                    Some(id) => {
                        created = true;
                        id
                    }
                    None => self.store.machine_id_by_mac(&mac).await?.ok_or_else(|| {
                        Error::NotFound {
                            kind: "machine",
                            id: mac.to_string(),
                        }
                    })?,
                },
            };
        for attempt in 0..3 {
            let m = self.get_machine(&id.to_string()).await?;
            let mut facts = m.facts.clone();
            if !facts.is_object() {
                facts = json!({});
            }
            facts["callhome"] = json!({
                "mac": mac.to_string(),
                "macs": report.macs,
                "ip": report.ip,
                "uptime_secs": report.uptime_secs,
                "facts": report.facts,
                "at": now().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            });
            let mut interfaces: Vec<InterfaceInput> =
                m.interfaces.iter().map(crate::machines::to_input).collect();
            for other in others.iter().copied() {
                if m.interfaces.iter().any(|i| i.mac == other) {
                    continue;
                }
                // A MAC another machine owns is a conflict to look at, not to take.
                if let Some(owner) = self.store.machine_id_by_mac(&other).await? {
                    self.store
                        .append_event(&anvil_store::NewEvent {
                            time: now(),
                            actor: "system".into(),
                            machine_id: Some(m.id),
                            kind: "machine.mac_conflict".into(),
                            message: format!(
                                "{} reported {other}, which belongs to machine {owner}",
                                m.hostname
                            ),
                            data: json!({ "mac": other.to_string(), "owner": owner }),
                        })
                        .await?;
                    continue;
                }
                let name = crate::machines::free_input_name(&interfaces);
                interfaces.push(InterfaceInput {
                    mac: other.to_string(),
                    name: Some(name),
                    pxe: Some(false),
                    ipv4: None,
                });
            }
            match self
                .update_machine(
                    &Principal::System,
                    &m.id.to_string(),
                    MachinePatch {
                        facts: Some(facts),
                        interfaces: Some(interfaces),
                        ..Default::default()
                    },
                )
                .await
            {
                // Someone changed the machine between our read and write
                // (discovery, an operator): read again and re-apply.
                Err(Error::Concurrent { .. }) if attempt < 2 => continue,
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            self.boot.mark_dirty();
            return Ok(CallHomeAck {
                machine_id: m.id,
                hostname: m.hostname,
                created,
            });
        }
        Err(Error::Concurrent {
            what: "the machine",
        })
    }

    /// The boot timeline of a machine (by id or hostname).
    pub async fn boot_timeline(&self, ident: &str) -> Result<BootTimeline> {
        let m = self.get_machine(ident).await?;
        let macs: Vec<String> = m.interfaces.iter().map(|i| i.mac.to_string()).collect();
        let events: Vec<BootEvent> = self
            .store
            .boot_events(&macs, 500)
            .await?
            .into_iter()
            .map(|e| BootEvent {
                id: e.id,
                time: e.time,
                mac: e.mac,
                kind: e.kind,
                detail: e.detail,
            })
            .collect();
        // A boot starts at the firmware's (or iPXE's) DISCOVER; the booted
        // ramdisk's own DHCP request is part of that boot, not a new one.
        let is_boot_start = |e: &BootEvent| {
            e.kind == "dhcp.discover"
                && (e.detail["vendor_class"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("PXEClient") || v.starts_with("HTTPClient"))
                    || e.detail["user_class"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|u| u == "iPXE")))
        };
        let start = events
            .iter()
            .rposition(is_boot_start)
            .or_else(|| events.iter().rposition(|e| e.kind == "dhcp.discover"))
            .unwrap_or(0);
        let latest = &events[start.min(events.len())..];
        let steps: Vec<BootStep> = BOOT_STEPS
            .iter()
            .map(|k| BootStep {
                kind: k.to_string(),
                time: latest.iter().find(|e| e.kind == *k).map(|e| e.time),
            })
            .collect();
        let complete = steps
            .iter()
            .any(|s| s.kind == "callhome" && s.time.is_some());
        let stopped_after = if complete || latest.is_empty() {
            None
        } else {
            steps
                .iter()
                .rev()
                .find(|s| s.time.is_some())
                .map(|s| s.kind.clone())
        };
        Ok(BootTimeline {
            machine_id: m.id,
            macs,
            events,
            steps,
            stopped_after,
            complete,
        })
    }

    /// Leases, all or those of one MAC.
    pub async fn list_leases(&self, mac: Option<&str>) -> Result<Vec<Lease>> {
        let mac = mac
            .map(|m| {
                m.parse::<MacAddr>()
                    .map_err(|e| Error::from_parse("mac", e))
            })
            .transpose()?;
        let records = self
            .store
            .list_leases(mac.map(|m| m.to_string()).as_deref())
            .await?;
        Ok(records
            .into_iter()
            .map(|r| {
                let machine_id = r
                    .mac
                    .parse::<MacAddr>()
                    .ok()
                    .and_then(|m| self.lookup_boot(&m))
                    .map(|m| m.id);
                Lease {
                    mac: r.mac,
                    address: r.ip,
                    network: r.network,
                    state: r.state,
                    hostname: r.hostname,
                    expires_at: r.expires_at,
                    machine_id,
                }
            })
            .collect())
    }

    /// The machine that owns `mac`, read from the store (for HTTP boot, which
    /// must see a state change at once).
    pub async fn machine_for_mac(&self, mac: &MacAddr) -> Result<Option<IndexedMachine>> {
        let Some(id) = self.store.machine_id_by_mac(mac).await? else {
            return Ok(None);
        };
        match self.store.get_machine(id).await {
            Ok(Some(m)) => Ok(Some(IndexedMachine {
                id: m.id,
                hostname: m.hostname,
                state: m.state,
                reserved_ipv4: m
                    .interfaces
                    .iter()
                    .find(|i| i.mac == *mac)
                    .and_then(|i| i.ipv4.as_ref())
                    .and_then(|ip| ip.parse().ok()),
            })),
            Ok(None) => Ok(None),
            Err(e @ StoreError::Query { .. }) => Err(Error::Unavailable { source: e }),
            Err(e) => Err(e.into()),
        }
    }
}

/// The hostname a discovered machine gets until an operator names it.
pub fn discovered_hostname(mac: &MacAddr) -> String {
    let o = mac.octets();
    format!(
        "node-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        o[0], o[1], o[2], o[3], o[4], o[5]
    )
}
