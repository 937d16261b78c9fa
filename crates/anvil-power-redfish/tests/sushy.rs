//! The driver against a real Redfish service: sushy-tools 2.2.0 with its
//! fake driver (power changes land 1–11 s after the request, basic auth
//! only, systems aliased by name with a 307 redirect).

#[path = "support/logs.rs"]
mod logs;
#[path = "support/sushy.rs"]
mod sushy;

use anvil_power::{
    BmcCredentials, BootDevice, BootMode, BootOverride, PowerAction, PowerDriver, PowerError,
    PowerState, wait_for_state,
};
use anvil_power_redfish::{RedfishDriver, RedfishOptions, Vendor};
use std::time::Duration;
use sushy::{FakeSystem, Sushy};

const USER: &str = "anvil";
// Characters that need escaping in URLs, JSON and shell.
const PASSWORD: &str = "c0rrect h0rse:b@ttery/st$ple";
/// sushy applies a power change 1 to 11 s after the request.
const CONVERGE: Duration = Duration::from_secs(40);

fn creds(sushy: &Sushy, password: &str) -> BmcCredentials {
    BmcCredentials {
        address: sushy.address(),
        port: None,
        username: Some(USER.into()),
        password: Some(password.into()),
        verify_tls: true,
        ca_pem: None,
    }
}

fn driver(sushy: &Sushy, system: &str) -> RedfishDriver {
    RedfishDriver::new(
        creds(sushy, PASSWORD),
        RedfishOptions {
            timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            poll_timeout: CONVERGE,
            system_id: Some(system.into()),
            ..RedfishOptions::default()
        },
    )
    .expect("driver")
}

fn systems() -> Vec<FakeSystem> {
    vec![
        FakeSystem {
            uuid: "0c0a0001-0000-4000-8000-000000000001",
            name: "node-1",
            power_on: false,
            macs: &["52:54:00:00:01:01", "52:54:00:00:01:02"],
            disk_bytes: Some(480_103_981_056),
        },
        FakeSystem {
            uuid: "0c0a0002-0000-4000-8000-000000000002",
            name: "node-2",
            power_on: false,
            macs: &["52:54:00:00:02:01"],
            disk_bytes: None,
        },
        FakeSystem {
            uuid: "0c0a0003-0000-4000-8000-000000000003",
            name: "node-3",
            power_on: true,
            macs: &["52:54:00:00:03:01"],
            disk_bytes: None,
        },
        FakeSystem {
            uuid: "0c0a0004-0000-4000-8000-000000000004",
            name: "node-4",
            power_on: true,
            macs: &["52:54:00:00:04:01"],
            disk_bytes: None,
        },
        FakeSystem {
            uuid: "0c0a0005-0000-4000-8000-000000000005",
            name: "node-5",
            power_on: true,
            macs: &["52:54:00:00:05:01"],
            disk_bytes: None,
        },
    ]
}

async fn converge(d: &RedfishDriver, wanted: PowerState) {
    wait_for_state(d, d.address(), wanted, CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Every action, each on its own system and all concurrently, so the suite
/// waits out sushy's random delay at most twice in a row.
#[tokio::test]
async fn power_actions_converge() {
    if sushy::skipped() {
        return;
    }
    let sushy = Sushy::start(&systems(), &[(USER, PASSWORD)]);
    let on_off = driver(&sushy, "0c0a0001-0000-4000-8000-000000000001");
    let reset = driver(&sushy, "0c0a0003-0000-4000-8000-000000000003");
    let soft_off = driver(&sushy, "0c0a0004-0000-4000-8000-000000000004");
    let cycle = driver(&sushy, "0c0a0005-0000-4000-8000-000000000005");

    let a = async {
        assert_eq!(on_off.power_state().await.unwrap(), PowerState::Off);
        on_off.power(PowerAction::On).await.unwrap();
        converge(&on_off, PowerState::On).await;
        on_off.power(PowerAction::ForceOff).await.unwrap();
        converge(&on_off, PowerState::Off).await;
    };
    // ForceRestart: sushy shows Off at once, then On again later.
    let b = async {
        assert_eq!(reset.power_state().await.unwrap(), PowerState::On);
        reset.power(PowerAction::Reset).await.unwrap();
        assert_eq!(reset.power_state().await.unwrap(), PowerState::Off);
        converge(&reset, PowerState::On).await;
    };
    let c = async {
        soft_off.power(PowerAction::SoftOff).await.unwrap();
        converge(&soft_off, PowerState::Off).await;
    };
    // sushy offers no PowerCycle: the driver does ForceOff, waits for Off,
    // then On; `power` returns once the On was accepted.
    let d = async {
        cycle.power(PowerAction::Cycle).await.unwrap();
        converge(&cycle, PowerState::On).await;
    };
    tokio::join!(a, b, c, d);
    assert_eq!(on_off.vendor().await.unwrap(), Vendor::Generic);
    for d in [on_off, reset, soft_off, cycle] {
        d.close().await;
    }
}

#[tokio::test]
async fn boot_override_pxe_once_reads_back() {
    if sushy::skipped() {
        return;
    }
    let sushy = Sushy::start(&systems(), &[(USER, PASSWORD)]);
    let d = driver(&sushy, "0c0a0002-0000-4000-8000-000000000002");
    d.set_boot(BootOverride {
        device: BootDevice::Pxe,
        once: true,
        mode: Some(BootMode::Uefi),
    })
    .await
    .unwrap();
    let boot = d.boot_settings().await.unwrap();
    assert_eq!(boot.target.as_deref(), Some("Pxe"));
    assert_eq!(boot.mode.as_deref(), Some("UEFI"));
    // sushy-tools stores no frequency: Enabled always reads "Continuous".
    assert!(boot.enabled.is_some());

    d.set_boot(BootOverride {
        device: BootDevice::Disk,
        once: false,
        mode: Some(BootMode::Legacy),
    })
    .await
    .unwrap();
    let boot = d.boot_settings().await.unwrap();
    assert_eq!(boot.target.as_deref(), Some("Hdd"));
    assert_eq!(boot.mode.as_deref(), Some("Legacy"));
}

#[tokio::test]
async fn inventory_reports_the_configured_hardware() {
    if sushy::skipped() {
        return;
    }
    let sushy = Sushy::start(&systems(), &[(USER, PASSWORD)]);
    let d = driver(&sushy, "0c0a0001-0000-4000-8000-000000000001");
    let inv = d.inventory().await.unwrap();
    let macs: Vec<String> = inv.nics.iter().map(|n| n.mac.to_string()).collect();
    assert_eq!(macs, ["52:54:00:00:01:01", "52:54:00:00:01:02"]);
    assert_eq!(
        inv.system_uuid.as_deref(),
        Some("0c0a0001-0000-4000-8000-000000000001")
    );
    assert_eq!(inv.manufacturer.as_deref(), Some("Sushy Emulator"));
    assert_eq!(inv.bmc_firmware.as_deref(), Some("1.00"));
    assert_eq!(inv.power_state, Some(PowerState::Off));
    assert_eq!(inv.disks.len(), 1, "{:?}", inv.disks);
    assert_eq!(inv.disks[0].size_bytes, Some(480_103_981_056));
    assert_eq!(inv.disks[0].model.as_deref(), Some("C123"));

    // A system without storage configured (sushy answers its Storage with
    // 500): the inventory still comes back, without disks.
    let d2 = driver(&sushy, "0c0a0002-0000-4000-8000-000000000002");
    let inv2 = d2.inventory().await.unwrap();
    assert_eq!(inv2.nics.len(), 1);
    assert!(inv2.disks.is_empty());
}

/// Wrong password → AuthFailed; a system named by alias is reached through
/// sushy's 307; and the password is in no error and no log line.
#[tokio::test]
async fn credentials_never_leak() {
    if sushy::skipped() {
        return;
    }
    let (logs, _guard) = logs::capture();
    let forms = logs::secret_forms(USER, PASSWORD);
    let sushy = Sushy::start(&systems(), &[(USER, PASSWORD)]);

    let wrong = RedfishDriver::new(
        creds(&sushy, "not the password"),
        RedfishOptions {
            backoff: Duration::from_millis(50),
            ..RedfishOptions::default()
        },
    )
    .unwrap();
    let e = wrong.power_state().await.unwrap_err();
    assert!(matches!(e, PowerError::AuthFailed { .. }), "{e}");
    assert!(!format!("{e} {e:?}").contains("not the password"));

    // By name: sushy redirects to the UUID URL.
    let d = driver(&sushy, "node-3");
    assert_eq!(d.power_state().await.unwrap(), PowerState::On);
    assert_eq!(
        d.system_uri().await.unwrap(),
        "/redfish/v1/Systems/0c0a0003-0000-4000-8000-000000000003"
    );
    // Errors from the real service: an unknown system, an unsupported action.
    let missing = driver(&sushy, "no-such-node");
    let e = missing.inventory().await.unwrap_err();
    logs::assert_no_secret("an error", &format!("{e} {e:?}"), &forms);

    let text = logs.text();
    assert!(
        text.contains("redirect"),
        "the redirect was not logged at all"
    );
    logs::assert_no_secret("the logs", &text, &forms);
}
