//! LLDP neighbours written back to NetBox as cables (issue 6).
//!
//! Part of every reconcile (full, dry run, webhook, write-back) when
//! `mapping.lldp_cables` is on: the linked machines among the reconciled
//! devices, the LLDP neighbours and NICs of their latest hardware facts, a
//! few NetBox reads (the devices the neighbours name, their interfaces with
//! cables), the pure `anvil_netbox::cables::plan_cables`, then one bulk POST
//! of the new cables. Nothing is read from NetBox when no machine heard a
//! neighbour.

use super::NetboxCtl;
use crate::App;
use crate::error::{Error, Result};
use anvil_inventory::{LldpNeighbor, Nic};
use anvil_netbox::cables::{
    CABLES_PER_REQUEST, CableInput, CablePlan, MachineNeighbours, Neighbour, macs_to_find,
    names_to_find, plan_cables,
};
use anvil_netbox::{CableSummary, Conflict, NbSnapshot, SyncReport};
use anvil_store::EventFilter;
use anvil_types::{MacAddr, Machine};
use serde::Deserialize;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use time::OffsetDateTime;
use uuid::Uuid;

/// The parts of a stored facts document cabling needs (the rest is skipped
/// while parsing).
#[derive(Deserialize, Default)]
#[serde(default)]
struct LldpFacts {
    nics: Vec<Nic>,
    lldp: Vec<LldpNeighbor>,
}

fn neighbour(n: LldpNeighbor) -> Neighbour {
    Neighbour {
        interface: n.interface,
        chassis_id: n.chassis_id,
        chassis_id_subtype: n.chassis_id_subtype,
        port_id: n.port_id,
        port_id_subtype: n.port_id_subtype,
        port_description: n.port_description,
        system_name: n.system_name,
    }
}

fn nic_macs(n: &Nic) -> Vec<MacAddr> {
    [Some(n.mac.as_str()), n.permanent_mac.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(|m| m.parse().ok())
        .collect()
}

impl App {
    /// The linked machines among `devices` whose latest facts heard LLDP
    /// neighbours.
    async fn lldp_machines(
        &self,
        devices: &HashSet<u64>,
        machines: &[Machine],
    ) -> Result<Vec<(MachineNeighbours, OffsetDateTime)>> {
        let hostnames: HashMap<Uuid, &str> = machines
            .iter()
            .map(|m| (m.id, m.hostname.as_str()))
            .collect();
        let mut links: Vec<(Uuid, u64)> = self
            .store
            .netbox_links()
            .await?
            .into_iter()
            .filter(|(_, d)| devices.contains(d))
            .collect();
        links.sort();
        let mut out = Vec::new();
        for (machine_id, device_id) in links {
            let Some(rec) = self.store.hardware_facts(machine_id, None).await? else {
                continue;
            };
            // Validated before it was stored; a document this build cannot
            // read is skipped, not an error for the whole sync.
            let facts: LldpFacts = match serde_json::from_str(&rec.facts) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(%machine_id, error = %e, "stored facts unreadable; no LLDP cables for this machine");
                    continue;
                }
            };
            if facts.lldp.is_empty() {
                continue;
            }
            // Machines imported by this very reconcile are not in `machines`
            // (read before it); conflicts name machines by hostname.
            let hostname = match hostnames.get(&machine_id) {
                Some(h) => h.to_string(),
                None => match self.store.get_machine(machine_id).await? {
                    Some(m) => m.hostname,
                    None => continue,
                },
            };
            out.push((
                MachineNeighbours {
                    machine_id,
                    hostname,
                    device_id,
                    nics: facts
                        .nics
                        .iter()
                        .map(|n| (n.name.clone(), nic_macs(n)))
                        .collect(),
                    neighbours: facts.lldp.into_iter().map(neighbour).collect(),
                },
                rec.collected_at,
            ));
        }
        Ok(out)
    }

    /// Records each cable conflict once per machine and facts: LLDP
    /// conflicts last as long as the facts they come from, and every
    /// write-back of a machine re-plans its cables, so one already recorded
    /// for this machine since its facts were collected is not repeated (the
    /// report and `anvil netbox status` still list it at every run).
    async fn record_cable_conflicts(
        &self,
        conflicts: &[Conflict],
        facts_at: &HashMap<Uuid, OffsetDateTime>,
    ) {
        let mut fresh = Vec::new();
        let mut seen: HashMap<Uuid, HashSet<String>> = HashMap::new();
        for c in conflicts {
            let (Some(m), Some(since)) =
                (c.machine_id, c.machine_id.and_then(|m| facts_at.get(&m)))
            else {
                fresh.push(c.clone());
                continue;
            };
            let known = match seen.entry(m) {
                Entry::Occupied(o) => o.into_mut(),
                Entry::Vacant(v) => {
                    let recorded = self
                        .store
                        .list_events(&EventFilter {
                            machine_id: Some(m),
                            since: Some(*since),
                            limit: 1000,
                            ..Default::default()
                        })
                        .await
                        .map(|events| {
                            events
                                .into_iter()
                                .filter(|e| e.kind == "netbox.conflict")
                                .map(|e| e.message)
                                .collect()
                        })
                        .unwrap_or_default();
                    v.insert(recorded)
                }
            };
            if known.insert(c.message.clone()) {
                fresh.push(c.clone());
            }
        }
        self.record_conflicts(&fresh).await;
    }

    /// Reads what the plan needs from NetBox and plans the cables.
    async fn plan_lldp_cables(
        &self,
        ctl: &NetboxCtl,
        snapshot: &NbSnapshot,
        machines: &[Machine],
    ) -> Result<(CablePlan, HashMap<Uuid, OffsetDateTime>)> {
        let devices: HashSet<u64> = snapshot.devices.iter().map(|d| d.id).collect();
        let (lldp, facts_at): (Vec<MachineNeighbours>, HashMap<Uuid, OffsetDateTime>) = self
            .lldp_machines(&devices, machines)
            .await?
            .into_iter()
            .map(|(m, at)| {
                let id = m.machine_id;
                (m, (id, at))
            })
            .unzip();
        if lldp.is_empty() {
            return Ok((CablePlan::default(), facts_at));
        }
        let client = &ctl.settings.client;
        let nb = |e: anvil_netbox::Error| Error::Netbox(crate::error_chain(&e));
        let names = names_to_find(&lldp);
        let named = if names.is_empty() {
            Vec::new()
        } else {
            client.devices_named(&names).await.map_err(nb)?
        };
        let macs = macs_to_find(&lldp, &named);
        let by_mac = if macs.is_empty() {
            Vec::new()
        } else {
            client.devices_with_macs(&macs).await.map_err(nb)?
        };
        // The machines' interfaces with their cable paths' ends; the
        // switches' without (cheaper, and the plan does not need them).
        let own: HashSet<u64> = lldp.iter().map(|m| m.device_id).collect();
        let switches: Vec<u64> = named
            .iter()
            .map(|d| d.id)
            .chain(by_mac.iter().map(|(_, d)| d.id))
            .filter(|d| !own.contains(d))
            .collect();
        let own: Vec<u64> = own.into_iter().collect();
        let mut interfaces = client.cable_interfaces(&own, true).await.map_err(nb)?;
        if !switches.is_empty() {
            interfaces.extend(
                client
                    .cable_interfaces(&switches, false)
                    .await
                    .map_err(nb)?,
            );
        }
        let plan = plan_cables(&CableInput {
            machines: &lldp,
            named: &named,
            by_mac: &by_mac,
            interfaces: &interfaces,
        });
        Ok((plan, facts_at))
    }

    /// Plans the LLDP cables of a reconcile and, unless `dry_run`, creates
    /// them; counts, cables and conflicts go into `report`. Returns the
    /// error to add to the report's, if any.
    pub(super) async fn reconcile_cables(
        &self,
        ctl: &NetboxCtl,
        snapshot: &NbSnapshot,
        machines: &[Machine],
        dry_run: bool,
        report: &mut SyncReport,
    ) -> Option<String> {
        if !ctl.settings.mapping.lldp_cables {
            return None;
        }
        let (plan, facts_at) = match self.plan_lldp_cables(ctl, snapshot, machines).await {
            Ok(p) => p,
            Err(e) => return Some(format!("LLDP cables: {e}")),
        };
        let planned = plan.create.len() as u64;
        report.cables = CableSummary {
            created: 0,
            unchanged: plan.unchanged,
            pending: planned,
            cables: plan.create.clone(),
            skipped: plan.skipped,
        };
        report.conflicts.extend(plan.conflicts.iter().cloned());
        if dry_run {
            report.pending += planned;
            return None;
        }
        self.record_cable_conflicts(&plan.conflicts, &facts_at)
            .await;
        if plan.create.is_empty() {
            return None;
        }
        // Chunk by chunk, so a failure still counts what was created.
        let mut error = None;
        for chunk in plan.create.chunks(CABLES_PER_REQUEST) {
            if let Err(e) = ctl.settings.client.create_cables(chunk).await {
                error = Some(format!("LLDP cables: {}", crate::error_chain(&e)));
                break;
            }
            let n = chunk.len() as u64;
            report.cables.created += n;
            report.written += n;
            for c in chunk {
                self.netbox_note(
                    Some(c.machine_id),
                    "netbox.cable_created",
                    format!(
                        "NetBox cable created from LLDP: device {} interface {} to {} {}",
                        c.device_id, c.interface, c.peer_device, c.peer_interface
                    ),
                )
                .await;
            }
        }
        report.cables.pending = planned - report.cables.created;
        report.pending += report.cables.pending;
        error
    }
}
