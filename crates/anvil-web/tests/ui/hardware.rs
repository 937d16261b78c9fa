//! The Hardware card and the Commission button, over plain HTTP against a
//! server whose BMC is an in-memory fake; the agent's side is played through
//! the application layer, as the agent API would.

use crate::support::{Client, Page, TestServer, inventory};
use anvil_api_types::EnrollRequest;
use anvil_api_types::agent::{AgentRegister, FactsUpload, StepReport, StepStatus};
use anvil_core::Principal;
use anvil_power::FakeBmc;
use anvil_types::{BmcDriver, MachineState};
use serde_json::json;
use std::time::{Duration, Instant};

async fn fragment(c: &Client, path: &str) -> Page {
    let page = c.get_with(path, &[("HX-Request", "true")]).await;
    assert_eq!(page.status, 200, "{path}: {}", page.body);
    page
}

fn report(seq: u32, status: StepStatus) -> StepReport {
    StepReport {
        seq,
        status,
        message: None,
        progress: None,
        result: None,
    }
}

#[tokio::test]
async fn commission_from_the_machine_page_and_see_the_hardware() {
    let (server, fakes) = TestServer::start_with_power().await;
    let bmc = FakeBmc::new(inventory("HW1", 7), Duration::from_millis(50));
    fakes.add("10.7.0.1", bmc.clone());
    let app = &server.app;
    let m = app
        .enroll(
            &Principal::System,
            EnrollRequest {
                driver: BmcDriver::Redfish,
                address: "10.7.0.1".into(),
                port: None,
                username: Some("root".into()),
                password: Some("pw".into()),
                hostname: Some("hw-1".into()),
                verify_tls: Some(false),
                tags: vec![],
                macs: vec![],
            },
        )
        .await
        .expect("enroll")
        .machine;
    let id = m.id.to_string();
    let mac = m.interfaces[0].mac.to_string();
    let mut c = server.client();
    c.login().await;
    let page = c.get(&format!("/machines/{id}")).await;
    assert!(
        page.body.contains(&format!(
            "hx-get=\"/machines/{id}/hardware\" hx-trigger=\"load\""
        )),
        "the page loads the card"
    );
    let card = fragment(&c, &format!("/machines/{id}/hardware")).await;
    assert!(card.body.contains("No hardware facts yet"), "{}", card.body);
    assert!(card.body.contains("name=\"tests\" value=\"memory\""));
    assert!(
        !card.body.contains("hx-trigger"),
        "nothing runs: no polling"
    );
    let token = page.csrf_token();

    // A wrong CSRF token changes nothing.
    let refused = c
        .post(
            &format!("/machines/{id}/commission"),
            &[("csrf_token", "nope"), ("tests", "cpu")],
        )
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(app.get_machine(&id).await.unwrap().state, MachineState::New);

    let started = c
        .post(
            &format!("/machines/{id}/commission"),
            &[("csrf_token", &token), ("tests", "cpu")],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.body);
    assert_eq!(
        started.location(),
        format!("/machines/{id}?commission=started#hardware")
    );
    assert_eq!(
        app.get_machine(&id).await.unwrap().state,
        MachineState::Commissioning
    );
    let card = fragment(&c, &format!("/machines/{id}/hardware")).await;
    assert!(
        card.body.contains("hx-trigger=\"every 3s\""),
        "polls while commissioning"
    );
    assert!(
        card.body.contains("Run 1: booting, waiting for the agent"),
        "{}",
        card.body
    );
    assert!(
        !card.body.contains("action=\"/machines/"),
        "no Commission button now"
    );
    // The job boots it from the network through the BMC.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bmc.calls().iter().any(|c| c == "power On") {
        assert!(Instant::now() < deadline, "the BMC was never powered on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The agent's side.
    let secret = app
        .mint_agent_token(m.id)
        .await
        .unwrap()
        .expect("a running run has tokens");
    let s = app.authenticate_agent(&secret).await.unwrap();
    app.agent_register(
        &s,
        AgentRegister {
            mac: mac.clone(),
            system_uuid: None,
            agent_version: "test".into(),
            uptime_secs: None,
        },
    )
    .await
    .unwrap();
    let next = serde_json::to_value(app.agent_next(&s).await.unwrap()).unwrap();
    let inv: uuid::Uuid = serde_json::from_value(next["step"]["id"].clone()).unwrap();
    app.agent_report(&s, inv, report(1, StepStatus::Started))
        .await
        .unwrap();
    let mut progress = report(2, StepStatus::Progress);
    progress.message = Some("listening for LLDP".into());
    progress.progress = Some(anvil_api_types::agent::StepProgress { done: 5, total: 30 });
    app.agent_report(&s, inv, progress).await.unwrap();
    let card = fragment(&c, &format!("/machines/{id}/hardware")).await;
    assert!(
        card.body
            .contains("Run 1: inventory progress 5/30 — listening for LLDP"),
        "{}",
        card.body
    );
    app.agent_facts(
        &s,
        FactsUpload {
            step_id: inv,
            facts: json!({
                "schema_version": 1,
                "cpu": {"model": "AMD EPYC 7313", "sockets": 1, "cores": 16, "threads": 32, "flags": ["svm"]},
                "memory": {"total_bytes": 68719476736u64, "dimms": [{"locator": "A1", "size_bytes": 68719476736u64, "type": "DDR4", "speed_mts": 3200}]},
                "disks": [{"name": "nvme0n1", "model": "SAMSUNG MZQL2", "serial": "S64HNE0R", "size_bytes": 960197124096u64, "transport": "nvme"}],
                "nics": [{"name": "eno1", "mac": mac, "driver": "bnxt_en", "link_up": true, "speed_mbps": 25000, "pci_address": "0000:41:00.0"}],
                "dmi": {"system_vendor": "Dell Inc.", "system_product": "PowerEdge R6515", "system_serial": "HW1"},
                "boot": {"mode": "uefi", "secure_boot": false},
                "lldp": [{"interface": "eno1", "chassis_id": "aa:bb:cc:00:00:01", "port_id": "Ethernet12", "port_description": "hw-1 eno1", "system_name": "leaf-07", "vlan_id": 210}],
            }),
        },
    )
    .await
    .unwrap();
    app.agent_report(&s, inv, report(3, StepStatus::Succeeded))
        .await
        .unwrap();
    let next = serde_json::to_value(app.agent_next(&s).await.unwrap()).unwrap();
    let cpu: uuid::Uuid = serde_json::from_value(next["step"]["id"].clone()).unwrap();
    app.agent_report(&s, cpu, report(1, StepStatus::Started))
        .await
        .unwrap();
    app.agent_report(&s, cpu, report(2, StepStatus::Succeeded))
        .await
        .unwrap();
    assert_eq!(
        app.get_machine(&id).await.unwrap().state,
        MachineState::Ready
    );

    let card = fragment(&c, &format!("/machines/{id}/hardware")).await;
    for text in [
        "Run 1 succeeded",
        "AMD EPYC 7313",
        "1 / 16 / 32",
        "64.0 GiB",
        "UEFI",
        "S64HNE0R",
        "894.3 GiB",
        "25000 Mb/s",
        "0000:41:00.0",
        "leaf-07",
        "Ethernet12",
        "210",
        "PowerEdge R6515",
        "DDR4",
        "name=\"tests\" value=\"cpu\"",
    ] {
        assert!(card.body.contains(text), "{text:?} missing: {}", card.body);
    }
    assert!(!card.body.contains("every 3s"), "no polling once ready");
    // The run selector reaches earlier runs; a run without facts is a 404.
    let run1 = fragment(&c, &format!("/machines/{id}/hardware?run=1")).await;
    assert!(run1.body.contains("run-selected"));
    let missing = c
        .get_with(
            &format!("/machines/{id}/hardware?run=9"),
            &[("HX-Request", "true")],
        )
        .await;
    assert_eq!(missing.status, 404);
    let bad = c
        .get_with(
            &format!("/machines/{id}/hardware?run=x"),
            &[("HX-Request", "true")],
        )
        .await;
    assert_eq!(bad.status, 400);
    // Powered off when done (the job follows the run).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bmc.calls().iter().any(|c| c == "power ForceOff") {
        assert!(
            Instant::now() < deadline,
            "not powered off after commissioning: {:?}",
            bmc.calls()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let calls = bmc.calls();
    let pxe = calls
        .iter()
        .position(|c| c == "set_boot Pxe once")
        .expect("PXE once");
    let on = calls
        .iter()
        .position(|c| c == "power On")
        .expect("power on");
    assert!(pxe < on, "network boot is set before power-on: {calls:?}");
}
