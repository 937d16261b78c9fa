//! The Hardware card of a machine page: the facts of a commissioning run
//! (CPU, memory, disks, NICs, DMI, boot mode, LLDP neighbours) with a run
//! selector, the state of the latest run, and the Commission button with its
//! test checkboxes. The card is a fragment the page loads (and reloads while
//! the machine is commissioning).

use super::{fmt_bytes, fmt_time, or_dash};
use crate::auth::{CsrfForm, HasCsrfToken, Session};
use crate::error::PageError;
use anvil_api_types::agent::{
    CommissionRequest, CommissioningRun, HardwareTest, MachineHardware, RunState, StepStatus,
};
use anvil_core::{App, Error, Principal};
use anvil_inventory::HardwareFacts;
use anvil_types::MachineState;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

/// How often the card reloads while the machine is commissioning.
const POLL_SECONDS: u32 = 3;

pub(crate) struct Row {
    pub(crate) cells: Vec<String>,
}

pub(crate) struct Prop {
    pub(crate) key: &'static str,
    pub(crate) value: String,
}

pub(crate) struct RunLink {
    pub(crate) number: i64,
    pub(crate) selected: bool,
}

pub(crate) struct TestBox {
    pub(crate) value: &'static str,
    pub(crate) label: &'static str,
}

pub(crate) struct HardwareView {
    pub(crate) machine_id: String,
    pub(crate) csrf: String,
    pub(crate) polling: bool,
    pub(crate) poll_seconds: u32,
    /// The Commission form is offered when the lifecycle allows it.
    pub(crate) can_commission: bool,
    pub(crate) tests: Vec<TestBox>,
    /// "Run 2 succeeded", "Run 3: cpu_test progress 10/30", …
    pub(crate) run_status: Option<String>,
    /// `running`, `succeeded`, `failed`, `aborted`.
    pub(crate) run_state: &'static str,
    pub(crate) runs: Vec<RunLink>,
    pub(crate) has_facts: bool,
    pub(crate) collected: String,
    pub(crate) summary: Vec<Prop>,
    pub(crate) cpu_flags: String,
    pub(crate) dimms: Vec<Row>,
    pub(crate) disks: Vec<Row>,
    pub(crate) nics: Vec<Row>,
    pub(crate) dmi: Vec<Prop>,
    pub(crate) lldp: Vec<Row>,
    pub(crate) problems: Vec<String>,
}

fn yes_no(b: Option<bool>) -> String {
    match b {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "—".into(),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "—".into())
}

fn run_line(run: &CommissioningRun) -> String {
    let n = run.number;
    match run.state {
        RunState::Running => {
            if run.registered_at.is_none() {
                return format!("Run {n}: booting, waiting for the agent");
            }
            match run.steps.iter().find(|s| !s.status.is_finished()) {
                Some(s) if s.status == StepStatus::Pending => {
                    format!("Run {n}: {} next", s.kind.as_str())
                }
                Some(s) => {
                    let mut line = format!("Run {n}: {} {}", s.kind.as_str(), s.status.as_str());
                    if let Some(p) = s.progress {
                        line.push_str(&format!(" {}/{}", p.done, p.total));
                    }
                    if let Some(m) = &s.message {
                        line.push_str(" — ");
                        line.push_str(m);
                    }
                    line
                }
                None => format!("Run {n}: finishing"),
            }
        }
        RunState::Succeeded => format!("Run {n} succeeded"),
        RunState::Failed | RunState::Aborted => format!(
            "Run {n} {}: {}",
            run.state.as_str(),
            run.failure_reason
                .as_deref()
                .unwrap_or("no reason recorded")
        ),
    }
}

/// The card's view. `hw` is `None` when the machine has no facts (yet).
pub(crate) fn hardware_view(
    machine_id: String,
    state: MachineState,
    csrf: String,
    latest_run: Option<&CommissioningRun>,
    hw: Option<&MachineHardware>,
) -> HardwareView {
    let facts: Option<HardwareFacts> =
        hw.and_then(|h| serde_json::from_value(h.facts.clone()).ok());
    let mut v = HardwareView {
        machine_id,
        csrf,
        polling: state == MachineState::Commissioning,
        poll_seconds: POLL_SECONDS,
        can_commission: state.can_move_to(MachineState::Commissioning),
        tests: HardwareTest::ALL
            .iter()
            .map(|t| TestBox {
                value: t.as_str(),
                label: match t {
                    HardwareTest::Cpu => "CPU",
                    HardwareTest::Memory => "Memory",
                    HardwareTest::Disk => "Disk read",
                },
            })
            .collect(),
        run_status: latest_run.map(run_line),
        run_state: latest_run.map_or("none", |r| r.state.as_str()),
        runs: hw
            .map(|h| {
                h.runs_with_facts
                    .iter()
                    .map(|n| RunLink {
                        number: *n,
                        selected: *n == h.run_number,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        has_facts: facts.is_some(),
        collected: hw.map(|h| fmt_time(h.collected_at)).unwrap_or_default(),
        summary: Vec::new(),
        cpu_flags: String::new(),
        dimms: Vec::new(),
        disks: Vec::new(),
        nics: Vec::new(),
        dmi: Vec::new(),
        lldp: Vec::new(),
        problems: Vec::new(),
    };
    let Some(f) = facts else { return v };
    v.summary = vec![
        Prop {
            key: "CPU",
            value: or_dash(f.cpu.model.as_deref()),
        },
        Prop {
            key: "Sockets / cores / threads",
            value: format!("{} / {} / {}", f.cpu.sockets, f.cpu.cores, f.cpu.threads),
        },
        Prop {
            key: "Memory",
            value: fmt_bytes(f.memory.total_bytes),
        },
        Prop {
            key: "Boot mode",
            value: match f.boot.mode {
                anvil_inventory::BootMode::Uefi => "UEFI".into(),
                anvil_inventory::BootMode::Bios => "BIOS".into(),
            },
        },
        Prop {
            key: "Secure Boot",
            value: yes_no(f.boot.secure_boot),
        },
    ];
    v.cpu_flags = f.cpu.flags.join(" ");
    v.dimms = f
        .memory
        .dimms
        .iter()
        .map(|d| Row {
            cells: vec![
                d.locator.clone(),
                fmt_bytes(d.size_bytes),
                or_dash(d.memory_type.as_deref()),
                opt(d.speed_mts.map(|s| format!("{s} MT/s"))),
                or_dash(d.manufacturer.as_deref()),
                or_dash(d.serial.as_deref()),
            ],
        })
        .collect();
    v.disks = f
        .disks
        .iter()
        .map(|d| Row {
            cells: vec![
                d.name.clone(),
                or_dash(d.model.as_deref()),
                or_dash(d.serial.as_deref()),
                or_dash(d.wwn.as_deref()),
                fmt_bytes(d.size_bytes),
                format!("{:?}", d.transport).to_lowercase(),
                if d.rotational { "HDD" } else { "SSD" }.into(),
                or_dash(d.by_path.as_deref()),
            ],
        })
        .collect();
    v.nics = f
        .nics
        .iter()
        .map(|n| Row {
            cells: vec![
                n.name.clone(),
                n.mac.clone(),
                or_dash(n.driver.as_deref()),
                match n.link_up {
                    Some(true) => "up".into(),
                    Some(false) => "down".into(),
                    None => "—".into(),
                },
                opt(n.speed_mbps.map(|s| format!("{s} Mb/s"))),
                or_dash(n.pci_address.as_deref()),
                or_dash(n.firmware_version.as_deref()),
            ],
        })
        .collect();
    let d = &f.dmi;
    v.dmi = [
        ("Vendor", &d.system_vendor),
        ("Product", &d.system_product),
        ("Version", &d.system_version),
        ("Serial", &d.system_serial),
        ("UUID", &d.system_uuid),
        ("Board", &d.board_product),
        ("BIOS vendor", &d.bios_vendor),
        ("BIOS version", &d.bios_version),
        ("BIOS date", &d.bios_date),
        ("Chassis", &d.chassis_type),
        ("Chassis serial", &d.chassis_serial),
    ]
    .into_iter()
    .filter_map(|(key, value)| {
        value.as_ref().map(|value| Prop {
            key,
            value: value.clone(),
        })
    })
    .collect();
    v.lldp = f
        .lldp
        .iter()
        .map(|n| Row {
            cells: vec![
                n.interface.clone(),
                or_dash(n.system_name.as_deref()),
                n.chassis_id.clone(),
                n.port_id.clone(),
                or_dash(n.port_description.as_deref()),
                opt(n.vlan_id),
            ],
        })
        .collect();
    v.problems = f.problems.clone();
    v
}

#[derive(Template, WebTemplate)]
#[template(path = "partials/hardware.html")]
struct HardwarePartial {
    hw: HardwareView,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct HardwareParams {
    run: Option<String>,
}

/// `GET /machines/{id}/hardware[?run=N]`: the card.
pub(crate) async fn fragment(
    session: Session,
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<HardwareParams>,
) -> Result<Response, PageError> {
    let m = app.get_machine(&id).await?;
    let run = match q.run.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => Some(
            r.parse::<i64>()
                .map_err(|_| PageError::BadRequest(format!("{r:?} is not a run number")))?,
        ),
        None => None,
    };
    let runs = app.commissioning_runs(&m.id.to_string()).await?;
    let hw = match app.machine_hardware(&m.id.to_string(), run).await {
        Ok(h) => Some(h),
        Err(Error::NotFound { .. }) if run.is_none() => None,
        Err(e) => return Err(e.into()),
    };
    let hw = hardware_view(
        m.id.to_string(),
        m.state,
        session.csrf_token.clone(),
        runs.items.first(),
        hw.as_ref(),
    );
    Ok(HardwarePartial { hw }.into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct CommissionForm {
    csrf_token: String,
    /// The ticked test checkboxes.
    tests: Vec<String>,
}

impl HasCsrfToken for CommissionForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// `POST /machines/{id}/commission`: starts commissioning with the ticked
/// tests and goes back to the machine, whose Hardware card follows the run.
pub(crate) async fn commission(
    State(app): State<App>,
    Path(id): Path<String>,
    CsrfForm { session, form }: CsrfForm<CommissionForm>,
) -> Result<Response, PageError> {
    let mut tests = Vec::new();
    for t in &form.tests {
        tests.push(
            HardwareTest::parse(t)
                .ok_or_else(|| PageError::BadRequest(format!("{t:?} is not a hardware test")))?,
        );
    }
    let by = Principal::User(session.user.clone());
    let job = app
        .start_commission(&by, &id, CommissionRequest { tests })
        .await?;
    let machine = job.machine_id.map_or(id, |m| m.to_string());
    Ok(Redirect::to(&format!("/machines/{machine}?commission=started#hardware")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    #[test]
    fn facts_become_rows_and_the_selected_run_is_marked() {
        let hw = MachineHardware {
            machine_id: Uuid::nil(),
            run_number: 1,
            run_id: Uuid::nil(),
            collected_at: time::OffsetDateTime::UNIX_EPOCH,
            facts: json!({
                "schema_version": 1,
                "cpu": {"model": "Xeon", "sockets": 2, "cores": 8, "threads": 16, "flags": ["aes", "vmx"]},
                "memory": {"total_bytes": 17179869184u64},
                "disks": [{"name": "nvme0n1", "serial": "S1", "size_bytes": 1073741824u64, "transport": "nvme"}],
                "nics": [{"name": "eno1", "mac": "52:54:00:00:00:01", "link_up": true, "speed_mbps": 10000}],
                "dmi": {"system_vendor": "Dell Inc.", "system_serial": "ABC123"},
                "boot": {"mode": "uefi", "secure_boot": true},
                "lldp": [{"interface": "eno1", "chassis_id": "aa:bb:cc:dd:ee:ff", "port_id": "Ethernet1/7", "system_name": "tor1", "vlan_id": 42}],
            }),
            runs_with_facts: vec![2, 1],
        };
        let v = hardware_view("m".into(), MachineState::Ready, "t".into(), None, Some(&hw));
        assert!(v.has_facts && v.can_commission && !v.polling);
        assert_eq!(v.summary[0].value, "Xeon");
        assert_eq!(v.summary[1].value, "2 / 8 / 16");
        assert_eq!(v.summary[2].value, "16.0 GiB");
        assert_eq!(v.summary[3].value, "UEFI");
        assert_eq!(
            v.disks[0].cells[..5],
            ["nvme0n1", "—", "S1", "—", "1.0 GiB"]
        );
        assert_eq!(v.disks[0].cells[5], "nvme");
        assert_eq!(v.nics[0].cells[3..5], ["up", "10000 Mb/s"]);
        assert_eq!(
            v.lldp[0].cells,
            [
                "eno1",
                "tor1",
                "aa:bb:cc:dd:ee:ff",
                "Ethernet1/7",
                "—",
                "42"
            ]
        );
        assert_eq!(v.dmi.len(), 2);
        assert!(v.runs.iter().any(|r| r.number == 1 && r.selected));
        assert!(v.runs.iter().any(|r| r.number == 2 && !r.selected));

        let none = hardware_view("m".into(), MachineState::Deployed, "t".into(), None, None);
        assert!(!none.has_facts && !none.can_commission);
    }
}
