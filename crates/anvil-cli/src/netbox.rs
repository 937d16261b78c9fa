//! `anvil netbox …`: the NetBox synchronisation.
//!
//! `anvil netbox sync --dry-run` prints the plan (what would be created,
//! updated and written back, and the conflicts) without changing anything;
//! `anvil netbox sync` runs a full reconcile and prints its report;
//! `anvil netbox status` says when the last sync ran, what is pending and
//! which conflicts wait for an operator. `-o json` prints the API's body.
//!
//! A sync that NetBox made fail exits with 8 (like a failed BMC), after
//! printing the report.

use crate::GlobalOpts;
use crate::client::Client;
use crate::error::CliError;
use crate::output::{self, render};
use anvil_api_types::Problem;
use anvil_api_types::problem_types as pt;
use anvil_netbox::{Conflict, NetboxStatus, SyncReport, SyncRunInfo};
use clap::Subcommand;
use reqwest::Method;
use std::fmt::Write;

/// Synchronise with NetBox.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum NetboxCmd {
    /// Reconcile Anvil with NetBox now and print the report.
    Sync {
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Last sync, pending write-backs and conflicts.
    Status,
}

/// How long `anvil netbox sync` waits for the report. The server finishes
/// the sync (and records it in `anvil netbox status`) even when the CLI
/// stops waiting.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

pub async fn run_netbox(g: &GlobalOpts, cmd: NetboxCmd) -> Result<(), CliError> {
    let client = Client::from_opts(g)?;
    match cmd {
        NetboxCmd::Sync { dry_run } => {
            // A first import of a rack, or a sync that creates hundreds of
            // cables, takes minutes (NetBox answers each write in 50-200 ms):
            // the default request timeout would give up on a sync that is
            // still doing its work.
            let req = client
                .request(Method::POST, &["netbox", "sync"])
                .timeout(SYNC_TIMEOUT)
                .json(&serde_json::json!({ "dry_run": dry_run }));
            let report: SyncReport = client.json(req).await?;
            output::print(&render(g.output, &report, report_table)?)?;
            match &report.error {
                None => Ok(()),
                Some(e) => Err(CliError::Api {
                    status: 502,
                    problem: Box::new(Problem {
                        type_: pt::NETBOX.into(),
                        title: "NetBox sync incomplete".into(),
                        status: 502,
                        detail: e.clone(),
                        instance: None,
                        field: None,
                        existing_id: None,
                        current_state: None,
                    }),
                }),
            }
        }
        NetboxCmd::Status => {
            let req = client.request(Method::GET, &["netbox", "status"]);
            let status: NetboxStatus = client.json(req).await?;
            output::print(&render(g.output, &status, status_table)?)
        }
    }
}

fn conflicts_table(out: &mut String, conflicts: &[Conflict]) {
    if conflicts.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nCONFLICTS ({}):", conflicts.len());
    for c in conflicts {
        let kind = serde_json::to_value(c.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(out, "  {kind:<24} {}", c.message);
    }
}

pub(crate) fn report_table(r: &SyncReport) -> String {
    let mut out = String::new();
    let title = if r.dry_run {
        "PLAN (dry run, nothing changed)"
    } else {
        "SYNC"
    };
    let _ = writeln!(out, "{title}");
    if r.dry_run {
        let _ = writeln!(out, "create:    {}", r.created);
        let _ = writeln!(out, "update:    {}", r.updated);
        let _ = writeln!(out, "unchanged: {}", r.unchanged);
        let _ = writeln!(out, "netbox writes: {}", r.pending);
    } else {
        let _ = writeln!(out, "created:   {}", r.created);
        let _ = writeln!(out, "updated:   {}", r.updated);
        let _ = writeln!(out, "unchanged: {}", r.unchanged);
        let _ = writeln!(out, "written to NetBox: {}", r.written);
        if r.pending > 0 {
            let _ = writeln!(out, "pending NetBox writes: {}", r.pending);
        }
    }
    if let Some(p) = &r.plan {
        for c in &p.create {
            let _ = writeln!(
                out,
                "  + {} (device {}, {} interfaces)",
                c.hostname,
                c.device_id,
                c.interfaces.len()
            );
        }
        for u in &p.update {
            let what = if u.changes.is_empty() {
                "link".to_string()
            } else {
                u.changes.join(", ")
            };
            let _ = writeln!(
                out,
                "  ~ machine {} (device {}): {what}",
                u.machine_id, u.device_id
            );
        }
        for d in &p.netbox.devices {
            let mut f = Vec::new();
            if let Some(s) = &d.serial {
                f.push(format!("serial={s}"));
            }
            if let Some(s) = &d.status {
                f.push(format!("status={s}"));
            }
            if let Some(s) = &d.state_field {
                f.push(format!("state={s}"));
            }
            let _ = writeln!(out, "  > device {}: {}", d.device_id, f.join(" "));
        }
        for i in &p.netbox.interfaces {
            let _ = writeln!(
                out,
                "  > device {}: new interface {} {}",
                i.device_id, i.name, i.mac
            );
        }
        for m in &p.netbox.macs {
            let _ = writeln!(
                out,
                "  > device {}: MAC {} on interface {}",
                m.device_id, m.mac, m.interface_id
            );
        }
    }
    cables_lines(&mut out, r);
    conflicts_table(&mut out, &r.conflicts);
    if let Some(e) = &r.error {
        let _ = writeln!(out, "\nERROR: {e}");
    }
    out
}

/// The LLDP cables: counts, then each cable created or planned.
fn cables_lines(out: &mut String, r: &SyncReport) {
    let c = &r.cables;
    if c.created + c.unchanged + c.pending == 0 && c.skipped.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "LLDP cables: {} created, {} unchanged, {} planned",
        c.created, c.unchanged, c.pending
    );
    for k in &c.cables {
        let _ = writeln!(
            out,
            "  = device {} {} <-> {} {}",
            k.device_id, k.interface, k.peer_device, k.peer_interface
        );
    }
    for s in &c.skipped {
        let _ = writeln!(
            out,
            "  . machine {} {}: {}",
            s.machine_id, s.interface, s.reason
        );
    }
}

fn run_line(r: &SyncRunInfo) -> String {
    let when = r
        .finished_at
        .unwrap_or(r.started_at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!(
        "{when} {} {}: created {}, updated {}, unchanged {}, written {}, conflicts {}{}",
        r.kind,
        r.status,
        r.created,
        r.updated,
        r.unchanged,
        r.written,
        r.conflicts,
        r.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    )
}

pub(crate) fn status_table(s: &NetboxStatus) -> String {
    let mut out = String::new();
    if !s.enabled {
        return "NetBox synchronisation is not configured on this server ([netbox] in the configuration)\n".into();
    }
    let _ = writeln!(out, "NetBox:        {}", s.url.as_deref().unwrap_or(""));
    let _ = writeln!(
        out,
        "webhooks:      {}",
        if s.webhook {
            "accepted (secret set)"
        } else {
            "refused (no secret)"
        }
    );
    let _ = writeln!(
        out,
        "last sync:     {}",
        s.last_sync
            .as_ref()
            .map(run_line)
            .unwrap_or_else(|| "never".into())
    );
    let _ = writeln!(
        out,
        "last success:  {}",
        s.last_success
            .as_ref()
            .map(run_line)
            .unwrap_or_else(|| "never".into())
    );
    let _ = writeln!(out, "pending write-backs: {}", s.pending_write_backs);
    if let Some(e) = &s.write_back_error {
        let _ = writeln!(out, "write-back error:    {e}");
    }
    conflicts_table(&mut out, &s.conflicts);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_netbox::ConflictKind;

    #[test]
    fn status_table_says_what_an_operator_needs() {
        assert!(status_table(&NetboxStatus::default()).contains("not configured"));
        let s = NetboxStatus {
            enabled: true,
            url: Some("http://127.0.0.1:8000/".into()),
            pending_write_backs: 3,
            write_back_error: Some("NetBox at http://127.0.0.1:8000/ is unreachable".into()),
            conflicts: vec![Conflict {
                kind: ConflictKind::SerialMismatch,
                device_id: Some(1),
                machine_id: None,
                message: "machine n1 has serial \"A\", NetBox device 1 has \"B\"".into(),
            }],
            ..Default::default()
        };
        let t = status_table(&s);
        assert!(t.contains("last sync:     never"), "{t}");
        assert!(t.contains("pending write-backs: 3"));
        assert!(t.contains("unreachable"));
        assert!(t.contains("serial_mismatch"));
    }

    #[test]
    fn dry_run_report_lists_the_plan() {
        let r = SyncReport {
            dry_run: true,
            created: 1,
            plan: Some(anvil_netbox::Plan {
                create: vec![anvil_netbox::MachineImport {
                    device_id: 4,
                    hostname: "n4".into(),
                    serial: None,
                    tags: vec![],
                    bmc_address: None,
                    interfaces: vec![],
                    placement: serde_json::json!({}),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = report_table(&r);
        assert!(t.contains("dry run"));
        assert!(t.contains("+ n4 (device 4"), "{t}");
        assert!(!t.contains("LLDP"), "no cables, no line: {t}");
    }

    #[test]
    fn report_lists_lldp_cables() {
        let r = SyncReport {
            dry_run: true,
            pending: 1,
            cables: anvil_netbox::CableSummary {
                unchanged: 2,
                pending: 1,
                cables: vec![anvil_netbox::CableCreate {
                    machine_id: uuid::Uuid::nil(),
                    device_id: 3,
                    interface_id: 31,
                    interface: "eth0".into(),
                    peer_device_id: 9,
                    peer_device: "leaf-1".into(),
                    peer_interface_id: 91,
                    peer_interface: "Ethernet1".into(),
                }],
                ..Default::default()
            },
            ..Default::default()
        };
        let t = report_table(&r);
        assert!(
            t.contains("LLDP cables: 0 created, 2 unchanged, 1 planned"),
            "{t}"
        );
        assert!(t.contains("device 3 eth0 <-> leaf-1 Ethernet1"), "{t}");
    }
}
