//! Power control through the application layer, with in-memory BMCs.

use anvil_api_types::{BulkSelector, EnrollRequest, MachineCreate};
use anvil_core::power::{DriverFactory, MachineAction, PowerLimits};
use anvil_core::{App, Principal, SecretBox};
use anvil_power::{BmcCredentials, FakeBmc, Inventory, Nic, PowerDriver, PowerError};
use anvil_store::Store;
use anvil_types::{BmcDriver, JobStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Fakes {
    bmcs: Mutex<HashMap<String, FakeBmc>>,
    seen_passwords: Mutex<Vec<Option<String>>>,
}

impl DriverFactory for Fakes {
    fn driver(
        &self,
        _d: BmcDriver,
        creds: BmcCredentials,
    ) -> Result<Arc<dyn PowerDriver>, PowerError> {
        self.seen_passwords
            .lock()
            .unwrap()
            .push(creds.password.clone());
        let bmcs = self.bmcs.lock().unwrap();
        match bmcs.get(&creds.address) {
            Some(b) => Ok(Arc::new(b.clone())),
            None => Err(PowerError::Unreachable {
                address: creds.address,
                reason: "no route".into(),
            }),
        }
    }
}

async fn app(fakes: Arc<Fakes>, action_timeout: Duration) -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("a.db")).await.unwrap();
    let app = App::new(store, SecretBox::from_key([1; 32])).with_power(
        fakes,
        PowerLimits {
            concurrency: 4,
            action_timeout,
            status_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_secs(3600),
        },
    );
    (app, dir)
}

fn inventory(serial: &str, mac: u8) -> Inventory {
    Inventory {
        manufacturer: Some("Dell Inc.".into()),
        model: Some("PowerEdge R650".into()),
        serial: Some(serial.into()),
        nics: vec![
            Nic {
                mac: anvil_types::MacAddr([0x52, 0x54, 0, 0, 1, mac]),
                name: Some("NIC.1".into()),
            },
            Nic {
                mac: anvil_types::MacAddr([0x52, 0x54, 0, 0, 2, mac]),
                name: Some("NIC.2".into()),
            },
        ],
        ..Default::default()
    }
}

async fn wait_job(app: &App, id: uuid::Uuid) -> anvil_types::Job {
    for _ in 0..200 {
        let j = app.get_job(id).await.unwrap();
        if matches!(j.status, JobStatus::Succeeded | JobStatus::Failed) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {id} did not finish");
}

fn enroll_req(address: &str) -> EnrollRequest {
    EnrollRequest {
        driver: BmcDriver::Redfish,
        address: address.into(),
        port: None,
        username: Some("root".into()),
        password: Some("calvin-SECRET".into()),
        hostname: None,
        verify_tls: Some(false),
        tags: vec!["rack1".into()],
        macs: Vec::new(),
    }
}

#[tokio::test]
async fn enrolment_is_idempotent_and_nics_become_interfaces() {
    let fakes = Arc::new(Fakes::default());
    fakes.bmcs.lock().unwrap().insert(
        "10.1.0.1".into(),
        FakeBmc::new(inventory("ABC123", 1), Duration::ZERO),
    );
    let (app, _d) = app(fakes.clone(), Duration::from_secs(5)).await;
    let r = app
        .enroll(&Principal::System, enroll_req("10.1.0.1"))
        .await
        .unwrap();
    assert!(r.created);
    let m = r.machine;
    assert_eq!(m.hostname, "node-abc123");
    assert_eq!(m.vendor.as_deref(), Some("Dell Inc."));
    assert_eq!(m.interfaces.len(), 2);
    assert!(m.interfaces[0].pxe);
    assert!(m.bmc.as_ref().unwrap().has_password);
    let again = app
        .enroll(&Principal::System, enroll_req("10.1.0.1"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.machine.id, m.id);
    assert_eq!(
        again.machine.updated_at, m.updated_at,
        "enrolling again changes nothing"
    );
    // An unreachable BMC is a clear error and creates nothing.
    let e = app
        .enroll(&Principal::System, enroll_req("10.1.0.99"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("10.1.0.99"), "{e}");
    assert!(!e.to_string().contains("calvin-SECRET"));
}

#[tokio::test]
async fn pxe_boot_sets_boot_once_then_powers_on_and_secrets_stay_secret() {
    let fakes = Arc::new(Fakes::default());
    let bmc = FakeBmc::new(inventory("S1", 1), Duration::from_millis(200));
    fakes
        .bmcs
        .lock()
        .unwrap()
        .insert("10.1.0.1".into(), bmc.clone());
    let (app, _d) = app(fakes.clone(), Duration::from_secs(10)).await;
    let m = app
        .enroll(&Principal::System, enroll_req("10.1.0.1"))
        .await
        .unwrap()
        .machine;
    let job = app
        .start_action(&Principal::System, &m.hostname, MachineAction::PxeBoot)
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    let done = wait_job(&app, job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.result.unwrap()["power_state"], "on");
    let calls = bmc.calls();
    let pos = |c: &str| {
        calls
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c} not in {calls:?}"))
    };
    assert!(pos("set_boot Pxe once") < pos("power On"), "{calls:?}");
    assert_eq!(
        app.get_machine(&m.hostname)
            .await
            .unwrap()
            .power_state
            .as_deref(),
        Some("on")
    );
    // The driver got the decrypted password; nothing Anvil stored shows it.
    assert!(
        fakes
            .seen_passwords
            .lock()
            .unwrap()
            .contains(&Some("calvin-SECRET".into()))
    );
    let events = app
        .list_events(Some(&m.hostname), Default::default())
        .await
        .unwrap();
    let all = format!("{:?} {:?}", events, app.list_jobs(None, 100).await.unwrap());
    assert!(!all.contains("calvin-SECRET"));
    assert!(events.items.iter().any(|e| e.kind == "power.pxe-boot"));
}

#[tokio::test]
async fn one_hanging_bmc_does_not_hold_up_the_others() {
    let fakes = Arc::new(Fakes::default());
    let (app, _d) = app(fakes.clone(), Duration::from_millis(1500)).await;
    for i in 1..=6u8 {
        // BMC 1 "hangs": its power change never takes effect in time.
        let delay = if i == 1 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(50)
        };
        fakes.bmcs.lock().unwrap().insert(
            format!("10.1.0.{i}"),
            FakeBmc::new(inventory(&format!("S{i}"), i), delay),
        );
        app.enroll(&Principal::System, enroll_req(&format!("10.1.0.{i}")))
            .await
            .unwrap();
    }
    // A broken BMC outside the selection, and one inside.
    fakes
        .bmcs
        .lock()
        .unwrap()
        .get("10.1.0.2")
        .unwrap()
        .fail_with("internal error");
    let start = std::time::Instant::now();
    let jobs = app
        .start_bulk_action(
            &Principal::System,
            BulkSelector {
                tag: Some("rack1".into()),
                ..Default::default()
            },
            MachineAction::PowerOn,
        )
        .await
        .unwrap();
    assert_eq!(jobs.len(), 6);
    let mut ok = 0;
    let mut failed = Vec::new();
    for j in &jobs {
        let d = wait_job(&app, j.id).await;
        match d.status {
            JobStatus::Succeeded => ok += 1,
            _ => failed.push(d.error.unwrap_or_default()),
        }
    }
    assert_eq!(ok, 4, "{failed:?}");
    assert_eq!(failed.len(), 2);
    assert!(
        failed.iter().any(|e| e.contains("internal error")),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|e| e.contains("timed out") || e.contains("did not reach")),
        "{failed:?}"
    );
    // Concurrency 4 and a 1.5 s bound: the hung BMC costs one slot, not the run.
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    let e = app
        .start_bulk_action(
            &Principal::System,
            BulkSelector::default(),
            MachineAction::PowerOn,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("select machines"), "{e}");
}

#[tokio::test]
async fn actions_need_a_bmc() {
    let fakes = Arc::new(Fakes::default());
    let (app, _d) = app(fakes, Duration::from_secs(1)).await;
    app.create_machine(
        &Principal::System,
        MachineCreate {
            hostname: "nobmc".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let e = app
        .start_action(&Principal::System, "nobmc", MachineAction::PowerOn)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no BMC"), "{e}");
}

#[tokio::test]
async fn a_bulk_action_with_a_machine_without_bmc_queues_nothing() {
    let fakes = Arc::new(Fakes::default());
    let (app, _d) = app(fakes.clone(), Duration::from_secs(5)).await;
    for i in 1..=3u8 {
        fakes.bmcs.lock().unwrap().insert(
            format!("10.1.0.{i}"),
            FakeBmc::new(inventory(&format!("S{i}"), i), Duration::ZERO),
        );
        app.enroll(&Principal::System, enroll_req(&format!("10.1.0.{i}")))
            .await
            .unwrap();
    }
    // Last in any order: the enrolled machines come first.
    app.create_machine(
        &Principal::System,
        MachineCreate {
            hostname: "zz-nobmc".into(),
            tags: vec!["rack1".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let e = app
        .start_bulk_action(
            &Principal::System,
            BulkSelector {
                tag: Some("rack1".into()),
                ..Default::default()
            },
            MachineAction::PowerOn,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no BMC"), "{e}");
    // Checked before anything was queued: no half-started rack.
    assert!(app.list_jobs(None, 100).await.unwrap().is_empty());
}

#[tokio::test]
async fn enrolling_attaches_the_bmc_to_a_machine_discovered_by_pxe() {
    let fakes = Arc::new(Fakes::default());
    fakes.bmcs.lock().unwrap().insert(
        "10.1.0.5".into(),
        FakeBmc::new(inventory("S5", 5), Duration::ZERO),
    );
    let (app, _d) = app(fakes, Duration::from_secs(5)).await;
    // PXE discovery saw the first NIC before anyone enrolled the BMC.
    let ack = app
        .call_home(anvil_api_types::CallHome {
            mac: "52:54:00:00:01:05".into(),
            macs: vec![],
            ip: None,
            uptime_secs: None,
            facts: None,
        })
        .await
        .unwrap();
    let r = app
        .enroll(&Principal::System, enroll_req("10.1.0.5"))
        .await
        .unwrap();
    assert!(r.created);
    assert_eq!(
        r.machine.id, ack.machine_id,
        "the same machine, not a duplicate"
    );
    assert!(r.machine.bmc.is_some());
    assert_eq!(
        r.machine.interfaces.len(),
        2,
        "the BMC's second NIC was added"
    );
    assert_eq!(r.machine.serial.as_deref(), Some("S5"));
    assert_eq!(
        app.list_machines(Default::default()).await.unwrap().total,
        1
    );
}

/// IPMI BMCs report no NICs: the MACs the enrolment names become the
/// machine's interfaces (the first one PXE), so its PXE boot finds it instead
/// of discovering a second machine; a BMC that reports NICs wins over them.
#[tokio::test]
async fn enrolment_macs_stand_in_for_nics_the_bmc_does_not_report() {
    let fakes = Arc::new(Fakes::default());
    let no_nics = Inventory {
        serial: Some("IPMI1".into()),
        ..Default::default()
    };
    fakes.bmcs.lock().unwrap().insert(
        "10.1.0.7".into(),
        FakeBmc::new(no_nics.clone(), Duration::ZERO),
    );
    fakes.bmcs.lock().unwrap().insert(
        "10.1.0.8".into(),
        FakeBmc::new(inventory("S8", 8), Duration::ZERO),
    );
    fakes
        .bmcs
        .lock()
        .unwrap()
        .insert("10.1.0.9".into(), FakeBmc::new(no_nics, Duration::ZERO));
    let (app, _d) = app(fakes, Duration::from_secs(5)).await;

    let mut req = enroll_req("10.1.0.7");
    req.driver = BmcDriver::Ipmi;
    req.macs = vec![
        "52:54:00:07:00:01".into(),
        "52-54-00-07-00-02".into(),
        "52:54:00:07:00:01".into(),
    ];
    let m = app.enroll(&Principal::System, req).await.unwrap().machine;
    let macs: Vec<String> = m.interfaces.iter().map(|i| i.mac.to_string()).collect();
    assert_eq!(macs, ["52:54:00:07:00:01", "52:54:00:07:00:02"], "{m:?}");
    assert!(m.interfaces[0].pxe && !m.interfaces[1].pxe, "{m:?}");
    // The boot network now knows the machine by its PXE NIC.
    let by_mac = app
        .call_home(anvil_api_types::CallHome {
            mac: "52:54:00:07:00:01".into(),
            macs: vec![],
            ip: None,
            uptime_secs: None,
            facts: None,
        })
        .await
        .unwrap();
    assert_eq!(by_mac.machine_id, m.id);
    assert!(!by_mac.created);

    // The BMC's own NICs win over the request's.
    let mut req = enroll_req("10.1.0.8");
    req.macs = vec!["52:54:00:08:00:99".into()];
    let m8 = app.enroll(&Principal::System, req).await.unwrap().machine;
    assert_eq!(m8.interfaces.len(), 2);
    assert!(
        m8.interfaces
            .iter()
            .all(|i| i.mac.to_string() != "52:54:00:08:00:99")
    );

    // A machine PXE discovered first gets the BMC attached through the MAC.
    let seen = app
        .call_home(anvil_api_types::CallHome {
            mac: "52:54:00:09:00:01".into(),
            macs: vec![],
            ip: None,
            uptime_secs: None,
            facts: None,
        })
        .await
        .unwrap();
    let mut req = enroll_req("10.1.0.9");
    req.driver = BmcDriver::Ipmi;
    req.macs = vec!["52:54:00:09:00:01".into()];
    let m9 = app.enroll(&Principal::System, req).await.unwrap();
    assert!(m9.created);
    assert_eq!(m9.machine.id, seen.machine_id, "no duplicate machine");
    assert!(m9.machine.bmc.is_some());

    // A bad MAC is refused before the BMC is contacted, naming the entry.
    let mut req = enroll_req("10.1.0.99");
    req.macs = vec!["52:54:00:07:00:03".into(), "not-a-mac".into()];
    let e = app.enroll(&Principal::System, req).await.unwrap_err();
    assert!(e.to_string().contains("macs[1]"), "{e}");
    assert_eq!(
        app.list_machines(Default::default()).await.unwrap().total,
        3
    );
}

/// Many Redfish systems behind one address (an emulator, a chassis
/// manager): the address names each system, and each is its own BMC.
#[tokio::test]
async fn a_bmc_url_naming_a_system_is_its_own_bmc() {
    let fakes = Arc::new(Fakes::default());
    let base = "http://10.1.0.20:8000/redfish/v1/Systems";
    for (k, id) in [(0x21u8, "aaaa"), (0x22, "bbbb")] {
        fakes.bmcs.lock().unwrap().insert(
            format!("{base}/{id}"),
            FakeBmc::new(inventory(id, k), Duration::ZERO),
        );
    }
    let (app, _d) = app(fakes, Duration::from_secs(5)).await;
    let a = app
        .enroll(&Principal::System, enroll_req(&format!("{base}/aaaa")))
        .await
        .unwrap();
    let b = app
        .enroll(&Principal::System, enroll_req(&format!("{base}/bbbb")))
        .await
        .unwrap();
    assert!(a.created && b.created);
    assert_ne!(a.machine.id, b.machine.id);
    assert_eq!(
        a.machine.bmc.as_ref().unwrap().address,
        format!("{base}/aaaa")
    );
    let again = app
        .enroll(&Principal::System, enroll_req(&format!("{base}/bbbb")))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.machine.id, b.machine.id);
    // Only a system's path: anything else stays refused.
    let e = app
        .create_machine(
            &Principal::System,
            MachineCreate {
                hostname: "odd-path".into(),
                bmc: Some(anvil_api_types::BmcInput {
                    driver: BmcDriver::Redfish,
                    address: "http://10.1.0.20:8000/redfish/v1/Managers/1".into(),
                    port: None,
                    username: None,
                    password: None,
                    verify_tls: None,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bmc.address"), "{e}");
}
