//! The `inventory` step: hardware facts from /sys, /proc and the SMBIOS
//! table (`anvil_inventory::collect`), plus the LLDP neighbours heard on
//! every connected interface within the window.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::agent::StepOutput;
use crate::hwtest::{Outcome, Progress};
use crate::net;

/// Physical interfaces with a link (carrier 1): where a switch can be heard.
pub fn connected_interfaces(sys_class_net: &Path) -> Vec<String> {
    net::physical_interfaces(sys_class_net)
        .into_iter()
        .filter(|i| {
            std::fs::read_to_string(sys_class_net.join(i).join("carrier"))
                .is_ok_and(|c| c.trim() == "1")
        })
        .collect()
}

pub fn run(window: Duration, progress: Progress<'_>) -> StepOutput {
    let started = Instant::now();
    progress(0, 2, "collecting hardware facts".into());
    let mut facts = match anvil_inventory::collect(Path::new("/")) {
        Ok(f) => f,
        Err(e) => return failed(format!("inventory: {e}")),
    };
    let collect_secs = started.elapsed().as_secs_f64();
    let ifaces = connected_interfaces(Path::new("/sys/class/net"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_physical_interfaces_with_carrier_are_connected() {
        let d = tempfile::tempdir().unwrap();
        for (name, physical, carrier) in [
            ("eth0", true, Some("1")),
            ("eth1", true, Some("0")),
            ("eth2", true, None),
            ("lo", false, Some("1")),
        ] {
            let p = d.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            if physical {
                std::fs::create_dir_all(p.join("device")).unwrap();
            }
            if let Some(c) = carrier {
                std::fs::write(p.join("carrier"), format!("{c}\n")).unwrap();
            }
        }
        assert_eq!(connected_interfaces(d.path()), ["eth0"]);
    }
}
