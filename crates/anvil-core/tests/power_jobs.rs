//! Power jobs as the API shows them: how often a job reads the power state
//! while the BMC applies a change, and that a bulk action's outcomes (job,
//! power state, event), written in group commits, are all there together.

use anvil_api_types::{BulkSelector, EnrollRequest};
use anvil_core::power::{DriverFactory, MachineAction, PowerLimits};
use anvil_core::{App, Principal, SecretBox};
use anvil_power::{BmcCredentials, FakeBmc, Inventory, Nic, PowerDriver, PowerError};
use anvil_store::Store;
use anvil_types::{BmcDriver, Job, JobStatus, MacAddr};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Fakes {
    bmcs: Mutex<HashMap<String, FakeBmc>>,
}

impl DriverFactory for Fakes {
    fn driver(
        &self,
        _d: BmcDriver,
        creds: BmcCredentials,
    ) -> Result<Arc<dyn PowerDriver>, PowerError> {
        match self.bmcs.lock().unwrap().get(&creds.address) {
            Some(b) => Ok(Arc::new(b.clone())),
            None => Err(PowerError::Unreachable {
                address: creds.address,
                reason: "no route".into(),
            }),
        }
    }
}

async fn app(fakes: Arc<Fakes>, concurrency: usize) -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("a.db")).await.unwrap();
    let app = App::new(store, SecretBox::from_key([7; 32])).with_power(
        fakes,
        PowerLimits {
            concurrency,
            action_timeout: Duration::from_secs(30),
            status_timeout: Duration::from_secs(2),
            poll_interval: Duration::from_secs(3600),
        },
    );
    (app, dir)
}

async fn enroll(app: &App, fakes: &Fakes, i: u16, delay: Duration) -> FakeBmc {
    let address = format!("10.9.{}.{}", i / 250, i % 250 + 1);
    let bmc = FakeBmc::new(
        Inventory {
            serial: Some(format!("PJ{i:04}")),
            nics: vec![Nic {
                mac: MacAddr([0x52, 0x54, 0, 9, (i >> 8) as u8, i as u8]),
                name: None,
            }],
            ..Default::default()
        },
        delay,
    );
    fakes
        .bmcs
        .lock()
        .unwrap()
        .insert(address.clone(), bmc.clone());
    app.enroll(
        &Principal::System,
        EnrollRequest {
            driver: BmcDriver::Redfish,
            address,
            port: None,
            username: Some("root".into()),
            password: Some("pw".into()),
            hostname: None,
            verify_tls: Some(false),
            tags: vec!["bulk".into()],
            macs: Vec::new(),
        },
    )
    .await
    .unwrap();
    bmc
}

async fn wait_job(app: &App, id: uuid::Uuid) -> Job {
    for _ in 0..600 {
        let j = app.get_job(id).await.unwrap();
        if matches!(j.status, JobStatus::Succeeded | JobStatus::Failed) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {id} did not finish");
}

/// The BMC applies the power-on 2.5 s after accepting it. The job reads
/// the state once before (to choose On or Reset), then at 1, 2 and 3 s
/// after the acceptance, and stops at the read that shows On. The old
/// backoff read at 0.25, 0.75, 1.75 and 2.75 s: one read more, two of them
/// before any BMC applies a change.
#[tokio::test]
async fn a_job_reads_the_power_state_once_a_second_until_it_changed() {
    let fakes = Arc::new(Fakes::default());
    let (app, _d) = app(fakes.clone(), 4).await;
    let bmc = enroll(&app, &fakes, 1, Duration::from_millis(2500)).await;
    let before = bmc.calls().len();
    let job = app
        .start_action(&Principal::System, "node-pj0001", MachineAction::PxeBoot)
        .await
        .unwrap();
    let done = wait_job(&app, job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    let calls = bmc.calls()[before..].to_vec();
    assert_eq!(
        calls,
        [
            "power_state",
            "set_boot Pxe once",
            "power On",
            "power_state",
            "power_state",
            "power_state"
        ],
        "{calls:?}"
    );
    let took = (done.finished_at.unwrap() - done.started_at.unwrap()).as_seconds_f64();
    assert!((2.9..6.0).contains(&took), "{took} s");
}

/// "Power on, PXE once" sets the override and powers on without reading
/// the state first (`PowerDriver::set_boot_and_power_on`; a driver may do
/// both in fewer requests), then waits for On like every action.
#[tokio::test]
async fn pxe_power_on_needs_no_state_read_first() {
    let fakes = Arc::new(Fakes::default());
    let (app, _d) = app(fakes.clone(), 4).await;
    let bmc = enroll(&app, &fakes, 2, Duration::from_millis(300)).await;
    let before = bmc.calls().len();
    let job = app
        .start_action(&Principal::System, "node-pj0002", MachineAction::PxePowerOn)
        .await
        .unwrap();
    assert_eq!(job.kind, "pxe-power-on");
    let done = wait_job(&app, job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(
        done.result.as_ref().map(|r| r["power_state"].clone()),
        Some(serde_json::json!("on"))
    );
    let calls = bmc.calls()[before..].to_vec();
    assert_eq!(
        calls,
        ["set_boot Pxe once", "power On", "power_state"],
        "{calls:?}"
    );
    assert_eq!(
        MachineAction::parse("pxe-power-on"),
        Some(MachineAction::PxePowerOn)
    );
}

/// 120 machines through one bulk action: every job ends succeeded with its
/// result, its one completion event and the machine's power state, and
/// whenever a reader sees a job finished, its event and power state are
/// already there (they are written in the same commit).
#[tokio::test]
async fn a_bulk_action_records_every_outcome_with_its_event_and_power_state() {
    let fakes = Arc::new(Fakes::default());
    let (app, _d) = app(fakes.clone(), 16).await;
    for i in 0..120 {
        // Delays 0.0-1.19 s: the jobs finish spread over two poll rounds.
        enroll(&app, &fakes, i, Duration::from_millis(u64::from(i) * 10)).await;
    }
    let jobs = app
        .start_bulk_action(
            &Principal::System,
            BulkSelector {
                tag: Some("bulk".into()),
                ..Default::default()
            },
            MachineAction::PxeBoot,
        )
        .await
        .unwrap();
    assert_eq!(jobs.len(), 120);
    let mut pending: Vec<Job> = jobs.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(std::time::Instant::now() < deadline, "jobs did not finish");
        let mut still = Vec::new();
        for j in pending {
            let now = app.get_job(j.id).await.unwrap();
            if now.status != JobStatus::Succeeded && now.status != JobStatus::Failed {
                still.push(now);
                continue;
            }
            assert_eq!(now.status, JobStatus::Succeeded, "{now:?}");
            assert_eq!(now.result.as_ref().unwrap()["power_state"], "on");
            assert!(now.started_at.unwrap() <= now.finished_at.unwrap());
            let m = app
                .get_machine(&now.machine_id.unwrap().to_string())
                .await
                .unwrap();
            assert_eq!(m.power_state.as_deref(), Some("on"), "{}", m.hostname);
            let events = app
                .list_events(Some(&m.hostname), Default::default())
                .await
                .unwrap();
            let ends: Vec<_> = events
                .items
                .iter()
                .filter(|e| e.data["job"] == now.id.to_string())
                .map(|e| e.kind.as_str())
                .collect();
            assert_eq!(ends, ["power.pxe-boot"], "{}", m.hostname);
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
