//! The `inventory` step: hardware facts from /sys, /proc and the SMBIOS
//! table (`anvil_inventory::collect`), plus the LLDP neighbours heard on
//! every connected interface within the window.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::agent::StepOutput;
use crate::hwtest::{Outcome, Progress};

pub fn run(window: Duration, progress: Progress<'_>) -> StepOutput {
    let started = Instant::now();
    progress(0, 2, "collecting hardware facts".into());
    let mut facts = match anvil_inventory::collect(Path::new("/")) {
        Ok(f) => f,
        Err(e) => return failed(format!("inventory: {e}")),
    };
    let collect_secs = started.elapsed().as_secs_f64();
    // Every NIC with a link: brought up (the boot NIC already is) and given
    // a few seconds of autonegotiation, no longer than the window itself.
    let nics = anvil_inventory::physical_interfaces(Path::new("/"));
    let ifaces =
        match anvil_inventory::connected_interfaces(&nics, window.min(Duration::from_secs(5))) {
            Ok(v) => v,
            Err(e) => {
                facts.problems.push(format!("LLDP: bringing NICs up: {e}"));
                Vec::new()
            }
        };
    progress(
        1,
        2,
        format!(
            "listening for LLDP on {} for up to {} s",
            ifaces.join(", "),
            window.as_secs()
        ),
    );
    if ifaces.is_empty() {
        facts
            .problems
            .push("LLDP: no connected interface to listen on".into());
    } else {
        match anvil_inventory::listen_lldp(&ifaces, window) {
            Ok(neighbours) => facts.lldp = neighbours,
            // A switch without LLDP, or a socket error, is a fact about the
            // site, not a reason to fail commissioning.
            Err(e) => facts.problems.push(format!("LLDP: {e}")),
        }
    }
    if let Err(e) = facts.validate() {
        return failed(format!("inventory: collected facts are invalid: {e}"));
    }
    let result = json!({
        "disks": facts.disks.len(),
        "nics": facts.nics.len(),
        "lldp_neighbours": facts.lldp.len(),
        "lldp_interfaces": ifaces,
        "problems": facts.problems.len(),
        "collect_secs": collect_secs,
        "total_secs": started.elapsed().as_secs_f64(),
    });
    let message = format!(
        "{} CPUs, {} MiB, {} disks, {} NICs, {} LLDP neighbours",
        facts.cpu.threads,
        facts.memory.total_bytes >> 20,
        facts.disks.len(),
        facts.nics.len(),
        facts.lldp.len()
    );
    match serde_json::to_value(&facts) {
        Ok(v) => StepOutput {
            outcome: Outcome {
                ok: true,
                message,
                result,
            },
            facts: Some(v),
        },
        Err(e) => failed(format!("inventory: cannot encode the facts: {e}")),
    }
}

fn failed(message: String) -> StepOutput {
    StepOutput {
        outcome: Outcome {
            ok: false,
            message,
            result: json!({}),
        },
        facts: None,
    }
}
