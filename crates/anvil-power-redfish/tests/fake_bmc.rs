//! The driver against an in-test Redfish service, for what sushy-tools does
//! not do: sessions, ETags, retries, timeouts, redirects carrying
//! credentials, task monitors, vendor quirks and TLS.

#[path = "support/fake_bmc.rs"]
mod fake;
#[path = "support/logs.rs"]
mod logs;

use anvil_power::{
    BmcCredentials, BootDevice, BootMode, BootOverride, PowerAction, PowerDriver, PowerError,
    PowerState,
};
use anvil_power_redfish::{RedfishDriver, RedfishOptions, Vendor};
use axum::http::StatusCode;
use fake::{FakeBmc, PASSWORD, State, USER, start};
use std::time::{Duration, Instant};

fn init() {
    // What the application does at start-up (shared/notes/crates.md §3);
    // the driver itself does not depend on it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn creds(address: String, password: &str) -> BmcCredentials {
    BmcCredentials {
        address,
        port: None,
        username: Some(USER.into()),
        password: Some(password.into()),
        verify_tls: true,
        ca_pem: None,
    }
}

fn options() -> RedfishOptions {
    RedfishOptions {
        timeout: Duration::from_secs(5),
        retries: 3,
        backoff: Duration::from_millis(20),
        poll_timeout: Duration::from_secs(10),
        ..RedfishOptions::default()
    }
}

fn driver(bmc: &FakeBmc) -> RedfishDriver {
    RedfishDriver::new(creds(bmc.http_address(), PASSWORD), options()).unwrap()
}

fn pxe_once() -> BootOverride {
    BootOverride {
        device: BootDevice::Pxe,
        once: true,
        mode: None,
    }
}

fn count(bmc: &FakeBmc, request: &str) -> usize {
    bmc.state()
        .requests
        .iter()
        .filter(|r| r.as_str() == request)
        .count()
}

#[tokio::test]
async fn session_is_used_renewed_once_and_deleted() {
    init();
    let bmc = start(State {
        sessions: true,
        require_token: true,
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    // Concurrent first calls create a single session.
    let states = futures::future::join_all((0..4).map(|_| d.power_state())).await;
    assert!(
        states.iter().all(|s| matches!(s, Ok(PowerState::Off))),
        "{states:?}"
    );
    assert_eq!(bmc.state().logins, 1);

    // The session expires on the BMC: one re-login, transparently.
    bmc.state().tokens.clear();
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(bmc.state().logins, 2);

    d.close().await;
    assert_eq!(bmc.state().deleted_sessions, [2]);
    assert!(bmc.state().tokens.is_empty());

    // Usable after close (logs in again); dropping it deletes that session.
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(bmc.state().logins, 3);
    drop(d);
    let start = Instant::now();
    while bmc.state().deleted_sessions.len() < 2 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bmc.state().deleted_sessions, [2, 3]);
}

#[tokio::test]
async fn refused_session_falls_back_to_basic_auth() {
    init();
    let bmc = start(State {
        sessions: true,
        session_refusal: Some(StatusCode::METHOD_NOT_ALLOWED),
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(bmc.state().logins, 0);
    assert_eq!(count(&bmc, "POST /redfish/v1/SessionService/Sessions"), 1);
}

#[tokio::test]
async fn wrong_password_is_auth_failed_without_fallback_attempts() {
    init();
    let (logs, _guard) = logs::capture();
    let wrong = "Wr0ng pa$$:w@rd";
    for sessions in [true, false] {
        let bmc = start(State {
            sessions,
            ..State::default()
        })
        .await;
        let d = RedfishDriver::new(creds(bmc.http_address(), wrong), options()).unwrap();
        let e = d.power_state().await.unwrap_err();
        assert!(matches!(e, PowerError::AuthFailed { .. }), "{e}");
        logs::assert_no_secret(
            "the error",
            &format!("{e} {e:?}"),
            &logs::secret_forms(USER, wrong),
        );
        // One refused login, no retry with other credentials or methods:
        // BMCs lock accounts after a few failures.
        let refusals = bmc.state().requests.len() - 1; // minus the service root
        assert_eq!(refusals, 1, "{:?}", bmc.state().requests);
    }
    logs::assert_no_secret("the logs", &logs.text(), &logs::secret_forms(USER, wrong));
}

#[tokio::test]
async fn if_match_carries_the_etag_and_a_412_is_retried_once() {
    init();
    let bmc = start(State {
        etags: true,
        patch_412s: 1,
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    d.set_boot(pxe_once()).await.unwrap();
    {
        let st = bmc.state();
        assert_eq!(
            st.if_match_seen,
            [Some("\"1\"".to_string()), Some("\"2\"".to_string())]
        );
        assert_eq!(st.boot["BootSourceOverrideTarget"], "Pxe");
        assert_eq!(st.boot["BootSourceOverrideEnabled"], "Once");
    }

    // Always changed under our feet: one retry, then a clear error.
    bmc.state().patch_412s = 10;
    bmc.state().if_match_seen.clear();
    let e = d.set_boot(pxe_once()).await.unwrap_err();
    assert!(
        matches!(&e, PowerError::Protocol { detail, .. } if detail.contains("412")),
        "{e}"
    );
    assert_eq!(bmc.state().if_match_seen.len(), 2);
}

#[tokio::test]
async fn no_if_match_without_an_etag() {
    init();
    let bmc = start(State::default()).await;
    let d = driver(&bmc);
    d.set_boot(BootOverride {
        device: BootDevice::Disk,
        once: false,
        mode: Some(BootMode::Legacy),
    })
    .await
    .unwrap();
    let st = bmc.state();
    assert_eq!(st.if_match_seen, [None]);
    assert_eq!(
        st.patches[0],
        serde_json::json!({"Boot": {"BootSourceOverrideTarget": "Hdd",
            "BootSourceOverrideEnabled": "Continuous", "BootSourceOverrideMode": "Legacy"}})
    );
}

#[tokio::test]
async fn unavailable_and_throttled_answers_are_retried() {
    init();
    // 503 with Retry-After: 1 → the wait honours it.
    let bmc = start(State {
        failures: 1,
        retry_after: Some("1".into()),
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    let t = Instant::now();
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(count(&bmc, "GET /redfish/v1/Systems"), 2);

    // 429 twice, no Retry-After: exponential backoff from 20 ms.
    let bmc = start(State {
        failures: 2,
        failure_status: StatusCode::TOO_MANY_REQUESTS,
        ..State::default()
    })
    .await;
    assert_eq!(driver(&bmc).power_state().await.unwrap(), PowerState::Off);
    assert_eq!(count(&bmc, "GET /redfish/v1/Systems"), 3);

    // Still failing after the retries: an error naming the status.
    let bmc = start(State {
        failures: 100,
        ..State::default()
    })
    .await;
    let e = driver(&bmc).power_state().await.unwrap_err();
    assert!(
        matches!(&e, PowerError::Protocol { detail, .. } if detail.contains("503")),
        "{e}"
    );
    assert_eq!(count(&bmc, "GET /redfish/v1/Systems"), 4, "1 + 3 retries");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    init();
    let bmc = start(State {
        failures: 1,
        failure_status: StatusCode::BAD_REQUEST,
        ..State::default()
    })
    .await;
    let e = driver(&bmc).power_state().await.unwrap_err();
    assert!(matches!(e, PowerError::Protocol { .. }), "{e}");
    assert_eq!(count(&bmc, "GET /redfish/v1/Systems"), 1);
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    init();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = RedfishDriver::new(
        creds(format!("http://127.0.0.1:{port}"), PASSWORD),
        RedfishOptions {
            retries: 2,
            backoff: Duration::from_millis(10),
            ..options()
        },
    )
    .unwrap();
    let e = d.power_state().await.unwrap_err();
    assert!(matches!(e, PowerError::Unreachable { .. }), "{e}");
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_and_is_not_retried() {
    init();
    let bmc = start(State {
        slow: Some(Duration::from_secs(3)),
        ..State::default()
    })
    .await;
    let d = RedfishDriver::new(
        creds(bmc.http_address(), PASSWORD),
        RedfishOptions {
            timeout: Duration::from_millis(300),
            ..options()
        },
    )
    .unwrap();
    let t = Instant::now();
    let e = d.power_state().await.unwrap_err();
    assert!(
        matches!(e, PowerError::Timeout { after, .. } if after == Duration::from_millis(300)),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(count(&bmc, "GET /redfish/v1/Systems"), 1);
}

/// sushy-tools' habit: a 307 whose Location carries the credentials.
#[tokio::test]
async fn a_redirect_with_credentials_is_followed_without_leaking_them() {
    init();
    let (logs, _guard) = logs::capture();
    let forms = logs::secret_forms(USER, PASSWORD);
    let bmc = start(State::default()).await;
    let d = RedfishDriver::new(
        creds(bmc.http_address(), PASSWORD),
        RedfishOptions {
            system_id: Some("byname".into()),
            ..options()
        },
    )
    .unwrap();
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(d.system_uri().await.unwrap(), "/redfish/v1/Systems/1");
    assert_eq!(count(&bmc, "GET /redfish/v1/Systems/byname"), 1);

    // A redirect to another host is refused, and its URL not repeated.
    let other = start(State {
        redirect_to: Some(format!(
            "http://{USER}:{PASSWORD}@127.0.0.2:9/redfish/v1/Systems/1"
        )),
        ..State::default()
    })
    .await;
    let d2 = RedfishDriver::new(
        creds(other.http_address(), PASSWORD),
        RedfishOptions {
            system_id: Some("byname".into()),
            ..options()
        },
    )
    .unwrap();
    let e = d2.power_state().await.unwrap_err();
    assert!(matches!(e, PowerError::Protocol { .. }), "{e}");
    let text = format!("{e} {e:?}");
    logs::assert_no_secret("the error", &text, &forms);
    assert!(!text.contains("127.0.0.2"), "{text}");

    let logged = logs.text();
    assert!(logged.contains("redirect"), "{logged}");
    logs::assert_no_secret("the logs", &logged, &forms);
    assert!(
        !logged.contains("127.0.0.2"),
        "the redirect target was logged"
    );
}

/// One address per system (`…/redfish/v1/Systems/<id>`): the driver
/// manages that system without listing the collection, and it wins over a
/// configured `system_id`.
#[tokio::test]
async fn an_address_naming_a_system_manages_that_system() {
    init();
    let bmc = start(State::default()).await;
    let d = RedfishDriver::new(
        creds(
            format!("{}/redfish/v1/Systems/1", bmc.http_address()),
            PASSWORD,
        ),
        RedfishOptions {
            system_id: Some("other".into()),
            ..options()
        },
    )
    .unwrap();
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(d.system_uri().await.unwrap(), "/redfish/v1/Systems/1");
    assert_eq!(count(&bmc, "GET /redfish/v1/Systems"), 0);
    assert!(count(&bmc, "GET /redfish/v1/Systems/1") >= 1);
    // Errors still name the BMC by host and port.
    assert_eq!(format!("http://{}", d.address()), bmc.http_address());
    // A path that names no system is refused up front.
    let e = RedfishDriver::new(
        creds(
            format!("{}/redfish/v1/Managers/1", bmc.http_address()),
            PASSWORD,
        ),
        options(),
    )
    .expect_err("refused");
    assert!(matches!(e, PowerError::Config(_)), "{e}");
}

#[tokio::test]
async fn power_actions_use_the_advertised_reset_types() {
    init();
    // Cycle with PowerCycle advertised: one request.
    let bmc = start(State {
        power: "On".into(),
        allowed_resets: vec!["On", "ForceOff", "PowerCycle"],
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    d.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(bmc.state().resets, ["PowerCycle"]);

    // Without it: ForceOff, wait for Off, On.
    let bmc = start(State {
        power: "On".into(),
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    d.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(bmc.state().resets, ["ForceOff", "On"]);
    // Already on: nothing sent. Reset: ForceRestart.
    d.power(PowerAction::On).await.unwrap();
    d.power(PowerAction::Reset).await.unwrap();
    d.power(PowerAction::SoftOff).await.unwrap();
    assert_eq!(
        bmc.state().resets,
        ["ForceOff", "On", "ForceRestart", "GracefulShutdown"]
    );
    // Off already: ForceOff is a no-op; a reset of an off machine starts it.
    d.power(PowerAction::ForceOff).await.unwrap();
    d.power(PowerAction::Reset).await.unwrap();
    assert_eq!(bmc.state().resets.last().map(String::as_str), Some("On"));
    assert_eq!(bmc.state().resets.len(), 5);

    // A type the system does not offer.
    let bmc = start(State {
        power: "On".into(),
        allowed_resets: vec!["On"],
        ..State::default()
    })
    .await;
    let e = driver(&bmc).power(PowerAction::ForceOff).await.unwrap_err();
    assert!(matches!(e, PowerError::NotSupported { .. }), "{e}");
    assert!(bmc.state().resets.is_empty());
}

#[tokio::test]
async fn an_accepted_task_is_polled_until_done() {
    init();
    let bmc = start(State {
        reset_task_polls: Some(3),
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    d.power(PowerAction::On).await.unwrap();
    assert_eq!(bmc.state().task_polls, 3);
    assert_eq!(bmc.state().resets, ["On"]);
}

#[tokio::test]
async fn inventory_collects_the_system() {
    init();
    let bmc = start(State {
        manufacturer: "Dell Inc.".into(),
        power: "On".into(),
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    let inv = d.inventory().await.unwrap();
    assert_eq!(d.vendor().await.unwrap(), Vendor::Dell);
    assert_eq!(inv.manufacturer.as_deref(), Some("Dell Inc."));
    assert_eq!(inv.model.as_deref(), Some("T-1000"));
    assert_eq!(inv.serial.as_deref(), Some("SN-0001"));
    assert_eq!(
        inv.system_uuid.as_deref(),
        Some("4c4c4544-0000-4000-8000-000000000001")
    );
    assert_eq!(inv.bios_version.as_deref(), Some("2.4.1"));
    assert_eq!(inv.bmc_firmware.as_deref(), Some("7.10.30.00"));
    assert_eq!(inv.memory_bytes, Some(64 << 30));
    assert_eq!(inv.power_state, Some(PowerState::On));
    // Two CPUs (the GPU is not one), with cores and threads.
    assert_eq!(inv.cpus.len(), 2);
    assert_eq!(inv.cpus[0].cores, Some(16));
    assert_eq!(inv.cpus[0].threads, Some(32));
    // Paged collection; the MAC-less interface is skipped.
    let macs: Vec<String> = inv.nics.iter().map(|n| n.mac.to_string()).collect();
    assert_eq!(macs, ["b8:59:9f:00:00:01", "b8:59:9f:00:00:02"]);
    // The broken drive is skipped, the good one reported.
    assert_eq!(inv.disks.len(), 1);
    assert_eq!(inv.disks[0].serial.as_deref(), Some("S0"));
    assert_eq!(inv.disks[0].size_bytes, Some(960_197_124_096));
}

#[tokio::test]
async fn vendor_quirks_shape_the_boot_patch() {
    init();
    // Supermicro: the mode is always sent (echoed when not asked for).
    let bmc = start(State {
        manufacturer: "Supermicro".into(),
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    d.set_boot(pxe_once()).await.unwrap();
    assert_eq!(d.vendor().await.unwrap(), Vendor::Supermicro);
    assert_eq!(
        bmc.state().patches[0]["Boot"]["BootSourceOverrideMode"],
        "UEFI"
    );

    // HPE: never written; a different mode is refused before any PATCH.
    let bmc = start(State {
        manufacturer: "HPE".into(),
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    let e = d
        .set_boot(BootOverride {
            mode: Some(BootMode::Legacy),
            ..pxe_once()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, PowerError::NotSupported { .. }), "{e}");
    assert!(bmc.state().patches.is_empty());
    d.set_boot(BootOverride {
        mode: Some(BootMode::Uefi),
        ..pxe_once()
    })
    .await
    .unwrap();
    assert!(
        bmc.state().patches[0]["Boot"]
            .get("BootSourceOverrideMode")
            .is_none()
    );

    // Generic: standard PATCH, only what was asked; configured vendor wins.
    let bmc = start(State {
        manufacturer: "Supermicro".into(),
        ..State::default()
    })
    .await;
    let d = RedfishDriver::new(
        creds(bmc.http_address(), PASSWORD),
        RedfishOptions {
            vendor: Some(Vendor::Generic),
            ..options()
        },
    )
    .unwrap();
    d.set_boot(pxe_once()).await.unwrap();
    assert!(
        bmc.state().patches[0]["Boot"]
            .get("BootSourceOverrideMode")
            .is_none()
    );

    // A target the BMC does not offer: refused before any PATCH.
    bmc.state().boot["BootSourceOverrideTarget@Redfish.AllowableValues"] =
        serde_json::json!(["None", "Pxe"]);
    let e = d
        .set_boot(BootOverride {
            device: BootDevice::Disk,
            ..pxe_once()
        })
        .await
        .unwrap_err();
    assert!(matches!(e, PowerError::NotSupported { .. }), "{e}");
    assert_eq!(bmc.state().patches.len(), 1);
}

#[tokio::test]
async fn tls_verification_pinning_and_opt_out() {
    init();
    let options = || RedfishOptions {
        retries: 0,
        ..options()
    };
    // A self-signed certificate, as BMCs ship them.
    let (cert, key) = fake::self_signed();
    let bmc = fake::start_tls(State::default(), &cert, &key).await;
    let address = format!("127.0.0.1:{}", bmc.addr.port()); // https by default
    let e = RedfishDriver::new(creds(address.clone(), PASSWORD), options())
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(matches!(e, PowerError::Tls { .. }), "{e}");
    assert_eq!(
        bmc.state().requests.len(),
        0,
        "no request may pass a failed handshake"
    );

    let insecure = BmcCredentials {
        verify_tls: false,
        ..creds(address.clone(), PASSWORD)
    };
    let d = RedfishDriver::new(insecure, options()).unwrap();
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);

    // A private CA, pinned: verified, and only that CA is trusted.
    let pki = fake::pki();
    let chained =
        fake::start_tls(State::default(), &pki.server_cert_pem, &pki.server_key_pem).await;
    let address = format!("127.0.0.1:{}", chained.addr.port());
    let pinned = BmcCredentials {
        ca_pem: Some(pki.ca_pem.clone()),
        ..creds(address.clone(), PASSWORD)
    };
    let d = RedfishDriver::new(pinned, options()).unwrap();
    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);

    let wrong_ca = BmcCredentials {
        ca_pem: Some(cert),
        ..creds(address, PASSWORD)
    };
    let e = RedfishDriver::new(wrong_ca, options())
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(matches!(e, PowerError::Tls { .. }), "{e}");
}

/// A driver that treats every remembered document as old (`system_cache_ttl`
/// zero), discovered and with its request log cleared: what the power job
/// finds when the enrolment or the poller read the system minutes ago.
async fn discovered_with_old_document(bmc: &FakeBmc) -> RedfishDriver {
    let d = RedfishDriver::new(
        creds(bmc.http_address(), PASSWORD),
        RedfishOptions {
            system_cache_ttl: Duration::ZERO,
            ..options()
        },
    )
    .unwrap();
    d.system_uri().await.unwrap();
    bmc.state().requests.clear();
    d
}

/// `set_boot_and_power_on` of a PXE-once override on a new BMC in `state`,
/// through a driver whose remembered document is old.
async fn pxe_power_on_with_old_document(state: State) -> (FakeBmc, Result<(), PowerError>) {
    let bmc = start(state).await;
    let d = discovered_with_old_document(&bmc).await;
    let r = d.set_boot_and_power_on(pxe_once()).await;
    (bmc, r)
}

#[tokio::test]
async fn pxe_and_power_on_sends_two_requests_when_the_layout_is_known() {
    init();
    let (bmc, r) = pxe_power_on_with_old_document(State::default()).await;
    r.unwrap();
    assert_eq!(
        bmc.state().requests,
        [
            "PATCH /redfish/v1/Systems/1",
            "POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        ]
    );
    assert_eq!(bmc.state().resets, ["On"]);
    assert_eq!(bmc.state().boot["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(bmc.state().boot["BootSourceOverrideEnabled"], "Once");
    assert_eq!(bmc.state().power, "On");

    // A fresh document (the default freshness, just discovered) takes the
    // careful way, which costs no more: the override, then On only if the
    // machine is off.
    let bmc = start(State {
        power: "On".into(),
        ..State::default()
    })
    .await;
    let d = driver(&bmc);
    d.system_uri().await.unwrap();
    bmc.state().requests.clear();
    d.set_boot_and_power_on(pxe_once()).await.unwrap();
    assert_eq!(bmc.state().requests, ["PATCH /redfish/v1/Systems/1"]);
    assert!(bmc.state().resets.is_empty());
}

#[tokio::test]
async fn refused_quick_steps_are_done_again_from_a_fresh_read() {
    init();
    // On while on answered 409: read, see On, done.
    let (bmc, r) = pxe_power_on_with_old_document(State {
        power: "On".into(),
        refuse_redundant_on: true,
        ..State::default()
    })
    .await;
    r.unwrap();
    assert_eq!(
        bmc.state().requests,
        [
            "PATCH /redfish/v1/Systems/1",
            "POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
            "GET /redfish/v1/Systems/1"
        ]
    );
    assert!(bmc.state().resets.is_empty());
    assert_eq!(bmc.state().boot["BootSourceOverrideTarget"], "Pxe");

    // A BMC that demands If-Match (428): read for the ETag, PATCH again
    // with it, then power on.
    let (bmc, r) = pxe_power_on_with_old_document(State {
        etags: true,
        ..State::default()
    })
    .await;
    r.unwrap();
    assert_eq!(
        bmc.state().requests,
        [
            "PATCH /redfish/v1/Systems/1",
            "GET /redfish/v1/Systems/1",
            "PATCH /redfish/v1/Systems/1",
            "POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        ]
    );
    let seen = bmc.state().if_match_seen.clone();
    assert_eq!(seen[0], None);
    assert!(seen[1].is_some(), "{seen:?}");
    assert_eq!(bmc.state().resets, ["On"]);
    assert_eq!(bmc.state().boot["BootSourceOverrideTarget"], "Pxe");

    // Something else wrong with the quick POST (a 400 for a type the BMC
    // stopped taking): the careful way reads and reports what it offers.
    let bmc = start(State::default()).await;
    let d = discovered_with_old_document(&bmc).await;
    bmc.state().allowed_resets = vec!["ForceOff"];
    let e = d.set_boot_and_power_on(pxe_once()).await.unwrap_err();
    assert!(matches!(e, PowerError::NotSupported { .. }), "{e}");
    assert_eq!(
        bmc.state().requests.last().map(String::as_str),
        Some("GET /redfish/v1/Systems/1")
    );
}

#[tokio::test]
async fn vendors_whose_boot_patch_depends_on_the_system_always_read_first() {
    init();
    // Supermicro echoes the current boot mode: read it now, not from an
    // old document.
    let (bmc, r) = pxe_power_on_with_old_document(State {
        manufacturer: "Supermicro".into(),
        ..State::default()
    })
    .await;
    r.unwrap();
    let requests = bmc.state().requests.clone();
    assert_eq!(requests[0], "GET /redfish/v1/Systems/1", "{requests:?}");
    assert_eq!(
        bmc.state().patches[0]["Boot"]["BootSourceOverrideMode"],
        "UEFI"
    );
    assert_eq!(bmc.state().resets, ["On"]);

    // Asking for a boot mode also reads first.
    let bmc = start(State::default()).await;
    let d = discovered_with_old_document(&bmc).await;
    d.set_boot_and_power_on(BootOverride {
        mode: Some(BootMode::Uefi),
        ..pxe_once()
    })
    .await
    .unwrap();
    assert_eq!(
        bmc.state().requests[0],
        "GET /redfish/v1/Systems/1",
        "{:?}",
        bmc.state().requests
    );
}
