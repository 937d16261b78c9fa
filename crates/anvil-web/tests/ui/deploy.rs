//! The Deployment card over plain HTTP: the deploy form with its choices,
//! field errors for bad input (never a 500), CSRF, a deployment followed
//! step by step while the test plays the agent through the application
//! layer (as the agent API would), the cloud-init page with secrets masked,
//! then rescue, exit rescue and release from the same card.

use crate::support::{Client, Page, TestServer};
use anvil_api_types::InterfaceInput;
use anvil_api_types::MachineCreate;
use anvil_api_types::agent::{
    AgentRegister, CommissionRequest, FactsUpload, StepProgress, StepReport, StepStatus,
};
use anvil_api_types::images::ImportImage;
use anvil_core::{App, Principal};
use anvil_types::MachineState;
use serde_json::{Value, json};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example";
const MAC: &str = "52:54:00:de:00:01";
const SERIAL: &str = "VD-0001";

fn report(seq: u32, status: StepStatus) -> StepReport {
    StepReport {
        seq,
        status,
        message: None,
        progress: None,
        result: None,
    }
}

/// The agent of the machine's current run, registered.
async fn agent(app: &App, machine: uuid::Uuid) -> anvil_core::commission::AgentSession {
    let secret = app
        .mint_agent_token(machine)
        .await
        .unwrap()
        .expect("a running run has tokens");
    let s = app.authenticate_agent(&secret).await.unwrap();
    app.agent_register(
        &s,
        AgentRegister {
            mac: MAC.into(),
            system_uuid: None,
            agent_version: "test".into(),
            uptime_secs: None,
        },
    )
    .await
    .unwrap();
    s
}

/// The next step's id and kind, or None when the agent is told to stop.
async fn next_step(
    app: &App,
    s: &anvil_core::commission::AgentSession,
) -> Option<(uuid::Uuid, String)> {
    let next = serde_json::to_value(app.agent_next(s).await.unwrap()).unwrap();
    let step = next.get("step")?;
    Some((
        serde_json::from_value(step["id"].clone()).unwrap(),
        step["kind"].as_str().unwrap().to_string(),
    ))
}

/// A ready machine with hardware facts (one 10 GiB disk and a CD drive),
/// commissioned through the agent protocol.
async fn ready_machine(app: &App) -> String {
    let m = app
        .create_machine(
            &Principal::System,
            MachineCreate {
                hostname: "web-deploy-01".into(),
                interfaces: vec![InterfaceInput {
                    mac: MAC.into(),
                    name: None,
                    pxe: None,
                    ipv4: None,
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = m.id.to_string();
    app.start_commission(&Principal::System, &id, CommissionRequest { tests: vec![] })
        .await
        .unwrap();
    let s = agent(app, m.id).await;
    let (inv, kind) = next_step(app, &s).await.unwrap();
    assert_eq!(kind, "inventory");
    app.agent_report(&s, inv, report(1, StepStatus::Started))
        .await
        .unwrap();
    app.agent_facts(
        &s,
        FactsUpload {
            step_id: inv,
            facts: json!({
                "schema_version": 1,
                "cpu": {"model": "QEMU", "sockets": 1, "cores": 2, "threads": 2},
                "memory": {"total_bytes": 2147483648u64},
                "disks": [
                    {"name": "vda", "serial": SERIAL, "model": "QEMU HARDDISK", "size_bytes": 10737418240u64, "transport": "virtio"},
                    {"name": "sr0", "size_bytes": 1073741824u64, "transport": "sata", "removable": true, "read_only": true}
                ],
                "nics": [{"name": "ens3", "mac": MAC, "link_up": true}],
                "boot": {"mode": "bios"},
            }),
        },
    )
    .await
    .unwrap();
    app.agent_report(&s, inv, report(2, StepStatus::Succeeded))
        .await
        .unwrap();
    assert_eq!(
        app.get_machine(&id).await.unwrap().state,
        MachineState::Ready
    );
    id
}

/// A 4 MiB raw disk image imported as `test-img`.
async fn import_image(app: &App, dir: &std::path::Path) {
    let path = dir.join("test-img.raw");
    let mut disk = vec![0u8; 4 << 20];
    for (i, b) in disk[100_000..300_000].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(&path, &disk).unwrap();
    app.import_image(
        &Principal::System,
        ImportImage {
            path: Some(path.to_str().unwrap().into()),
            name: Some("test-img".into()),
            os: Some("debian".into()),
            release: Some("12".into()),
            firmware: Some("bios".into()),
            ..Default::default()
        },
    )
    .await
    .expect("import");
}

async fn card(c: &Client, id: &str) -> Page {
    let page = c
        .get_with(
            &format!("/machines/{id}/deployment"),
            &[("HX-Request", "true")],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    page
}

fn field_error(page: &Page) -> Vec<String> {
    page.body
        .split("<p class=\"field-error\">")
        .skip(1)
        .map(|s| s.split("</p>").next().unwrap_or("").to_string())
        .collect()
}

/// The message above the Deployment card.
fn card_error(page: &Page) -> Option<String> {
    let start = page.body.find("deploy-error\" role=\"alert\">")?;
    let rest = &page.body[start..];
    let text = &rest[rest.find('>')? + 1..rest.find("</div>")?];
    Some(text.replace("&quot;", "\"").replace("&#34;", "\""))
}

async fn state(app: &App, id: &str) -> MachineState {
    app.get_machine(id).await.unwrap().state
}

#[tokio::test]
async fn deploy_from_the_machine_page_and_follow_it() {
    let server = TestServer::start_with_images().await;
    let app = &server.app;
    let scratch = tempfile::tempdir().unwrap();
    import_image(app, scratch.path()).await;
    let id = ready_machine(app).await;
    let mut c = server.client();
    c.login().await;

    // The card offers the form with the library and the machine's disks.
    let page = c.get(&format!("/machines/{id}")).await;
    assert_eq!(page.status, 200);
    for want in [
        "id=\"deployment\"",
        "action=\"/machines/",
        "<option value=\"test-img\">test-img (debian 12, bios, 4.0 MiB)</option>",
        &format!(
            "<option value=\"serial={SERIAL}\">vda — 10.0 GiB QEMU HARDDISK (serial {SERIAL})</option>"
        ),
        "value=\"config_drive\"",
        &format!("href=\"/machines/{id}/cloud-init\""),
        "action=\"/machines/",
    ] {
        assert!(page.body.contains(want), "{want:?} missing:\n{}", page.body);
    }
    assert!(!page.body.contains("sr0"), "a removable drive is no choice");
    assert!(
        !page.body.contains("name=\"state\" value=\"rescue\""),
        "rescue needs a run: not a bare lifecycle move"
    );
    let token = page.csrf_token();
    let deploy = format!("/machines/{id}/deploy");

    // Without the right CSRF token nothing happens.
    let refused = c
        .post(&deploy, &[("csrf_token", "nope"), ("image", "test-img")])
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(state(app, &id).await, MachineState::Ready);

    // Bad input: each message at its field, the input kept, 422.
    let user_data = "#cloud-config\r\nchpasswd:\r\n  password: hunter2\r\n";
    let bad = c
        .post(
            &deploy,
            &[
                ("csrf_token", &token),
                ("image", ""),
                (
                    "ssh_keys",
                    &format!("{KEY}\r\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
                ),
                ("user_data", user_data),
                ("root_disk", "biggest"),
            ],
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let errors = field_error(&bad);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(errors[0], "Choose an image.");
    assert!(
        errors[1].starts_with("Line 2: key data does not hold"),
        "{errors:?}"
    );
    assert!(errors[2].starts_with("Root disk hint"), "{errors:?}");
    assert!(bad.body.contains("password: hunter2"), "user data kept");
    assert_eq!(state(app, &id).await, MachineState::Ready);

    // The server's own refusals land at the field too: no disk matches.
    let bad = c
        .post(
            &deploy,
            &[
                ("csrf_token", &token),
                ("image", "test-img"),
                ("root_disk", "serial=NOPE"),
            ],
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let errors = field_error(&bad);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("NOPE"), "{errors:?}");
    let bad = c
        .post(&deploy, &[("csrf_token", &token), ("image", "gone-img")])
        .await;
    assert_eq!(bad.status, 422);
    assert!(field_error(&bad)[0].contains("gone-img"), "{}", bad.body);

    // A good form starts the deployment.
    let started = c
        .post(
            &deploy,
            &[
                ("csrf_token", &token),
                ("image", "test-img"),
                ("ssh_keys", &format!("{KEY}\r\n")),
                ("user_data", user_data),
                ("root_disk", &format!("serial={SERIAL}")),
                ("config_drive", "nocloud"),
            ],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.body);
    assert_eq!(
        started.location(),
        format!("/machines/{id}?deployment=deploy#deployment")
    );
    assert_eq!(state(app, &id).await, MachineState::Deploying);
    let page = c.get(started.location()).await;
    assert!(page.body.contains("Deployment started."), "{}", page.body);
    // The deploy job (queued or running by now) is not a BMC call.
    assert!(
        page.body.contains("Following the agent") || page.body.contains("Starting…"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("Talking to the BMC") && !page.body.contains("free BMC slot"));
    let d = card(&c, &id).await;
    assert!(
        d.body.contains("hx-trigger=\"every 3s\""),
        "polls while deploying"
    );
    assert!(
        d.body
            .contains("Booting the machine; waiting for the agent."),
        "{}",
        d.body
    );
    assert!(!d.body.contains("name=\"image\""), "no form while it runs");
    assert_eq!(d.header("hx-refresh"), "", "no reload while it runs");

    // The agent works through the steps; the card follows.
    let s = agent(app, uuid::Uuid::parse_str(&id).unwrap()).await;
    let mut kinds = Vec::new();
    while let Some((step, kind)) = next_step(app, &s).await {
        app.agent_report(&s, step, report(1, StepStatus::Started))
            .await
            .unwrap();
        let mut seq = 2;
        if kind == "write_image" {
            let mut p = report(2, StepStatus::Progress);
            p.message = Some("writing vda".into());
            p.progress = Some(StepProgress {
                done: 1 << 20,
                total: 4 << 20,
            });
            app.agent_report(&s, step, p).await.unwrap();
            seq = 3;
            let d = card(&c, &id).await;
            for want in [
                "Write image…",
                "1.0 MiB of 4.0 MiB · writing vda",
                "<progress max=\"100\" value=\"25\"",
                "deploy-step-succeeded",
            ] {
                assert!(d.body.contains(want), "{want:?} missing:\n{}", d.body);
            }
        }
        app.agent_report(&s, step, report(seq, StepStatus::Succeeded))
            .await
            .unwrap();
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "erase",
            "write_image",
            "grow_root",
            "cloud_init",
            "boot_entry"
        ]
    );
    assert_eq!(state(app, &id).await, MachineState::Deployed);
    let d = card(&c, &id).await;
    assert!(!d.body.contains("hx-trigger"), "no polling once deployed");
    assert_eq!(
        d.header("hx-refresh"),
        "true",
        "the page reloads: its state badge is stale"
    );
    for want in [
        "Deployed image: <strong>test-img</strong>",
        "Deployment, run 2:</strong> Succeeded.",
        "action=\"/machines/",
        "/release\"",
        "/rescue\"",
    ] {
        assert!(d.body.contains(want), "{want:?} missing:\n{}", d.body);
    }

    // The cloud-init data of this deployment, secrets masked.
    let ci = c.get(&format!("/machines/{id}/cloud-init")).await;
    assert_eq!(ci.status, 200, "{}", ci.body);
    for want in [
        "meta-data",
        "web-deploy-01",
        "ops@example",
        "secrets masked",
        "CIDATA",
    ] {
        assert!(ci.body.contains(want), "{want:?} missing:\n{}", ci.body);
    }
    assert!(!ci.body.contains("hunter2"), "the password is masked");
    let cd = c
        .get(&format!("/machines/{id}/cloud-init?flavor=config_drive"))
        .await;
    assert!(cd.body.contains("meta_data.json"), "{}", cd.body);

    // Rescue with the deployment's keys, then back.
    let rescued = c
        .post(&format!("/machines/{id}/rescue"), &[("csrf_token", &token)])
        .await;
    assert_eq!(rescued.status, 303, "{}", rescued.body);
    assert_eq!(state(app, &id).await, MachineState::Rescue);
    let d = card(&c, &id).await;
    assert!(d.body.contains("/exit-rescue\""), "{}", d.body);
    assert!(d.body.contains("Rescue, run 3"), "{}", d.body);
    let back = c
        .post(
            &format!("/machines/{id}/exit-rescue"),
            &[("csrf_token", &token)],
        )
        .await;
    assert_eq!(back.status, 303, "{}", back.body);
    assert_eq!(state(app, &id).await, MachineState::Deployed);

    // Release, secure erase asked for.
    let released = c
        .post(
            &format!("/machines/{id}/release"),
            &[("csrf_token", &token), ("erase", "secure")],
        )
        .await;
    assert_eq!(released.status, 303, "{}", released.body);
    assert_eq!(state(app, &id).await, MachineState::Releasing);
    let runs = app.commissioning_runs(&id).await.unwrap();
    let release: Value = serde_json::to_value(&runs.items[0]).unwrap();
    assert_eq!(release["purpose"], "release");
    assert_eq!(release["steps"][0]["kind"], "erase");
    assert_eq!(release["steps"][0]["params"]["mode"], "secure");
    let d = card(&c, &id).await;
    assert!(d.body.contains("Release, run 4"), "{}", d.body);
    assert!(d.body.contains("hx-trigger=\"every 3s\""));
}

#[tokio::test]
async fn refused_actions_show_the_reason_on_the_card() {
    let server = TestServer::start_with_images().await;
    let app = &server.app;
    let m = app
        .create_machine(
            &Principal::System,
            MachineCreate {
                hostname: "web-new-01".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = m.id.to_string();
    let mut c = server.client();
    c.login().await;
    let page = c.get(&format!("/machines/{id}")).await;
    assert!(
        !page.body.contains("name=\"image\""),
        "a new machine has no deploy form"
    );
    let token = page.csrf_token();

    // Posted anyway (a stale page): the machine page with the reason, 409.
    let refused = c
        .post(
            &format!("/machines/{id}/deploy"),
            &[("csrf_token", &token), ("image", "x")],
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(
        card_error(&refused).as_deref(),
        Some("A machine in state new cannot move to deploying.")
    );
    for (path, want) in [
        ("release", "cannot move to releasing"),
        // The server names the state exit-rescue needs.
        ("exit-rescue", "The machine is new, not rescue"),
    ] {
        let r = c
            .post(&format!("/machines/{id}/{path}"), &[("csrf_token", &token)])
            .await;
        assert!(r.status == 409 || r.status == 422, "{path}: {}", r.status);
        let e = card_error(&r).unwrap_or_else(|| panic!("{path}: no message: {}", r.body));
        assert!(e.contains(want), "{path}: {e}");
    }
    let r = c
        .post(
            &format!("/machines/{id}/release"),
            &[("csrf_token", &token), ("erase", "shred")],
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        card_error(&r).as_deref(),
        Some("\"shred\" is not an erase mode; choose quick or secure.")
    );
    assert_eq!(state(app, &id).await, MachineState::New);

    // No interface: the cloud-init page explains instead of failing.
    let ci = c.get(&format!("/machines/{id}/cloud-init")).await;
    assert_eq!(ci.status, 200);
    assert!(ci.body.contains("alert-error"), "{}", ci.body);
    let missing = c.get("/machines/nope/deployment").await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn the_raid1_checkbox_is_sent_and_the_servers_refusal_shows_at_it() {
    let server = TestServer::start_with_images().await;
    let app = &server.app;
    let scratch = tempfile::tempdir().unwrap();
    import_image(app, scratch.path()).await;
    // One writable disk (vda; sr0 is removable): no mirror possible.
    let id = ready_machine(app).await;
    let mut c = server.client();
    c.login().await;
    let page = c.get(&format!("/machines/{id}")).await;
    assert!(
        page.body.contains("name=\"raid1\""),
        "the form has the RAID 1 checkbox:\n{}",
        page.body
    );
    let token = page.csrf_token();
    let bad = c
        .post(
            &format!("/machines/{id}/deploy"),
            &[
                ("csrf_token", &token),
                ("image", "test-img"),
                ("raid1", "on"),
            ],
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    let errors = field_error(&bad);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("RAID 1 needs two writable disks") && errors[0].contains("vda"),
        "{errors:?}"
    );
    // The box stays ticked for the next try; the machine is untouched.
    assert!(bad.body.contains("name=\"raid1\" checked"), "{}", bad.body);
    assert_eq!(state(app, &id).await, MachineState::Ready);
}
