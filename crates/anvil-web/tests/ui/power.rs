//! The boot timeline, power control, enrolment by BMC and bulk actions,
//! over plain HTTP against a server whose BMCs are in-memory fakes.

use crate::support::{Client, Page, TestServer, inventory};
use anvil_api_types::{BmcInput, EnrollRequest, InterfaceInput, MachineCreate, MachineQuery};
use anvil_core::{App, Principal};
use anvil_power::FakeBmc;
use anvil_types::{BmcDriver, Job, JobStatus, MacAddr};
use serde_json::json;
use std::time::{Duration, Instant};

const BMC_PASSWORD: &str = "calvin-Sup3r-SECRET";

/// Polls `check` until it holds; panics with `what` after 10 s.
async fn eventually<F, Fut, T>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fragment as htmx asks for it.
async fn fragment(c: &Client, path: &str) -> Page {
    let page = c.get_with(path, &[("HX-Request", "true")]).await;
    assert_eq!(page.status, 200, "{path}: {}", page.body);
    assert!(!page.body.contains("<html"), "{path} is a fragment");
    page
}

async fn seed(server: &TestServer, hostname: &str, mac: &str, bmc: Option<&str>) -> String {
    server
        .app
        .create_machine(
            &Principal::System,
            MachineCreate {
                hostname: hostname.to_string(),
                interfaces: vec![InterfaceInput {
                    mac: mac.to_string(),
                    name: None,
                    pxe: None,
                    ipv4: None,
                }],
                bmc: bmc.map(|address| BmcInput {
                    driver: BmcDriver::Redfish,
                    address: address.to_string(),
                    port: None,
                    username: Some("root".into()),
                    password: Some(BMC_PASSWORD.into()),
                    verify_tls: Some(false),
                }),
                ..Default::default()
            },
        )
        .await
        .expect("seed machine")
        .id
        .to_string()
}

/// Enrols the fake BMC at `address` (added first) and returns the machine id.
async fn enroll(app: &App, address: &str) -> String {
    app.enroll(
        &Principal::System,
        EnrollRequest {
            driver: BmcDriver::Redfish,
            address: address.into(),
            port: None,
            username: Some("root".into()),
            password: Some(BMC_PASSWORD.into()),
            hostname: None,
            verify_tls: Some(false),
            tags: vec!["rack1".into()],
            macs: Vec::new(),
        },
    )
    .await
    .expect("enroll")
    .machine
    .id
    .to_string()
}

async fn jobs(app: &App, machine: Option<&str>) -> Vec<Job> {
    app.list_jobs(machine, 100).await.expect("jobs")
}

async fn all_done(app: &App, machine: Option<&str>) -> Option<Vec<Job>> {
    let js = jobs(app, machine).await;
    js.iter()
        .all(|j| matches!(j.status, JobStatus::Succeeded | JobStatus::Failed))
        .then_some(js)
}

#[tokio::test]
async fn the_boot_timeline_shows_each_step_and_polls_until_the_boot_completes() {
    let server = TestServer::start().await;
    let mut c = server.client();
    c.login().await;
    let id = seed(&server, "node-1", "52:54:00:00:00:01", None).await;
    let page = c.get(&format!("/machines/{id}")).await;
    assert!(page.body.contains("id=\"boot-timeline\""), "timeline card");
    assert!(page.body.contains("No network boot recorded yet"));
    let frag_path = format!("/machines/{id}/boot-timeline");
    assert!(
        page.body.contains(&format!("hx-get=\"{frag_path}\"")),
        "an incomplete boot polls"
    );

    let mac: MacAddr = "52:54:00:00:00:01".parse().expect("mac");
    let app = &server.app;
    app.record_boot(mac, "dhcp.discover", json!({"ip": null, "arch": 7}));
    app.record_boot(
        mac,
        "dhcp.offer",
        json!({"ip": "10.0.0.23", "network": "boot-lan"}),
    );
    app.record_boot(mac, "dhcp.request", json!({"ip": "10.0.0.23"}));
    app.record_boot(mac, "dhcp.ack", json!({"ip": "10.0.0.23"}));
    app.record_boot(
        mac,
        "tftp.transfer",
        json!({"file": "ipxe.efi", "bytes": 1_048_576, "ms": 180, "ok": true}),
    );
    // The background writer stores the steps in batches.
    let frag = eventually("the TFTP step", || async {
        let f = fragment(&c, &frag_path).await;
        f.body.contains("Stopped after TFTP").then_some(f)
    })
    .await;
    let b = &frag.body;
    for text in [
        "DHCP DISCOVER",
        "DHCP OFFER",
        "DHCP REQUEST",
        "DHCP ACK",
        "10.0.0.23 · network boot-lan",
        "ipxe.efi · 1.0 MiB · in 180 ms",
        "Waiting for iPXE script",
        "hx-trigger=\"every 3s\"",
        // The raw events, with their detail.
        "All boot events <span class=\"count\">5</span>",
        "<span class=\"k\">file</span> ipxe.efi",
        "<span class=\"k\">bytes</span> 1.0 MiB",
    ] {
        assert!(b.contains(text), "{text:?} missing from the timeline:\n{b}");
    }
    assert_eq!(b.matches("class=\"step step-done\"").count(), 4);
    assert_eq!(b.matches("class=\"step step-stopped\"").count(), 1);
    assert_eq!(b.matches("class=\"step step-pending\"").count(), 4);
    // Newest last.
    assert!(b.find(">dhcp.discover<") < b.find(">tftp.transfer<"));

    app.record_boot(mac, "http.script", json!({"stage": "discovery"}));
    app.record_boot(
        mac,
        "http.kernel",
        json!({"path": "/boot/vmlinuz", "status": 200, "bytes": 11_534_336}),
    );
    app.record_boot(
        mac,
        "http.initrd",
        json!({"path": "/boot/initrd.img", "status": 200, "bytes": 52_428_800}),
    );
    app.record_boot(
        mac,
        "callhome",
        json!({"ip": "10.0.0.23", "uptime_secs": 21.5}),
    );
    let frag = eventually("the complete boot", || async {
        let f = fragment(&c, &frag_path).await;
        f.body.contains("Boot complete").then_some(f)
    })
    .await;
    assert!(
        !frag.body.contains("hx-trigger"),
        "a complete boot stops polling"
    );
    assert_eq!(frag.body.matches("class=\"step step-done\"").count(), 9);
    assert!(frag.body.contains("/boot/vmlinuz · 11.0 MiB"));
    // The machine page shows the same card.
    let page = c.get(&format!("/machines/{id}")).await;
    assert!(page.body.contains("Boot complete"));
    assert!(page.body.contains("from 10.0.0.23 · up 21.5 s"));
}

#[tokio::test]
async fn power_buttons_start_jobs_that_the_page_follows() {
    let (server, fakes) = TestServer::start_with_power().await;
    // Power changes take a second, as on real BMCs: long enough to see a
    // job running.
    fakes.add(
        "10.1.0.1",
        FakeBmc::new(inventory("SN1", 1), Duration::from_secs(1)),
    );
    let mut c = server.client();
    c.login().await;
    let id = enroll(&server.app, "10.1.0.1").await;
    let path = format!("/machines/{id}");
    let page = c.get(&path).await;
    for action in ["power-on", "power-off", "power-cycle", "pxe-boot"] {
        assert!(
            page.body
                .contains(&format!("name=\"action\" value=\"{action}\"")),
            "no {action} button"
        );
    }
    for text in [
        format!("action=\"{path}/power-state\""),
        "Check power".into(),
        "Power jobs".into(),
        "No power jobs yet".into(),
        "data-confirm=\"Power off node-sn1 now?".into(),
    ] {
        assert!(page.body.contains(&text), "{text:?} missing");
    }
    let token = page.csrf_token();

    let started = c
        .post(
            &format!("{path}/power"),
            &[("csrf_token", &token), ("action", "power-on")],
        )
        .await;
    assert_eq!(started.status, 303, "{}", started.body);
    assert_eq!(started.location(), format!("{path}?power=power-on"));
    let page = c.get(started.location()).await;
    assert!(page.body.contains("Power on requested."));
    assert!(
        page.body
            .contains("<td class=\"nowrap job-kind\">Power on</td>")
    );
    let js = jobs(&server.app, Some(&id)).await;
    assert_eq!(js.len(), 1);
    assert_eq!(js[0].kind, "power-on");
    assert_eq!(js[0].actor, "user:admin");

    // The jobs card polls while the job runs, then shows its outcome and
    // the new power state (out of band) and stops.
    let jobs_path = format!("{path}/jobs");
    let frag = eventually("the job to finish", || async {
        let f = fragment(&c, &jobs_path).await;
        f.body.contains("Succeeded").then_some(f)
    })
    .await;
    assert!(frag.body.contains("Power is on"));
    assert!(
        !frag.body.contains("hx-trigger"),
        "nothing runs: no polling"
    );
    assert!(frag.body.contains("id=\"power-status\""));
    assert!(frag.body.contains("hx-swap-oob=\"true\""));
    assert!(frag.body.contains(">Powered on</span>"), "{}", frag.body);
    assert!(
        fakes
            .get("10.1.0.1")
            .calls()
            .contains(&"power On".to_string())
    );

    // While a job runs the card polls and says so.
    let started = c
        .post(
            &format!("{path}/power"),
            &[("csrf_token", &token), ("action", "power-off")],
        )
        .await;
    assert_eq!(started.status, 303);
    let frag = fragment(&c, &jobs_path).await;
    assert!(
        frag.body.contains("job-queued") || frag.body.contains("job-running"),
        "{}",
        frag.body
    );
    assert!(frag.body.contains("hx-trigger=\"every 2s\""));
    assert!(frag.body.contains("<span class=\"live\""));
    let frag = eventually("the power-off job", || async {
        let f = fragment(&c, &jobs_path).await;
        (!f.body.contains("hx-trigger")).then_some(f)
    })
    .await;
    assert!(frag.body.contains(">Powered off</span>"), "{}", frag.body);

    let started = c
        .post(
            &format!("{path}/power"),
            &[("csrf_token", &token), ("action", "pxe-boot")],
        )
        .await;
    assert_eq!(started.status, 303);
    let done = eventually("the PXE job", || all_done(&server.app, Some(&id))).await;
    assert!(
        done.iter().all(|j| j.status == JobStatus::Succeeded),
        "{done:?}"
    );
    let calls = fakes.get("10.1.0.1").calls();
    let at = |call: &str| calls.iter().rposition(|c| c == call);
    assert!(
        at("set_boot Pxe once").is_some() && at("set_boot Pxe once") < at("power On"),
        "boot once from the network, then power on: {calls:?}"
    );

    // Check power reads the state now.
    let checked = c
        .post(&format!("{path}/power-state"), &[("csrf_token", &token)])
        .await;
    assert_eq!(checked.status, 303, "{}", checked.body);
    assert_eq!(checked.location(), format!("{path}?checked=1"));
    let page = c.get(checked.location()).await;
    assert!(page.body.contains("Power state read from the BMC: on."));
    assert!(page.body.contains("checked just now"));

    // A broken BMC: the message is on the page, not an error page.
    fakes.get("10.1.0.1").fail_with("internal error 0x42");
    let page = c
        .post(&format!("{path}/power-state"), &[("csrf_token", &token)])
        .await;
    assert_eq!(page.status, 409);
    assert!(page.body.contains("Could not read the power state."));
    assert!(page.body.contains("internal error 0x42"));
    // A made-up action is refused.
    let page = c
        .post(
            &format!("{path}/power"),
            &[("csrf_token", &token), ("action", "self-destruct")],
        )
        .await;
    assert_eq!(page.status, 422);
    assert!(page.body.contains("is not a power action"));
    assert_eq!(jobs(&server.app, Some(&id)).await.len(), 3);
    assert!(!page.body.contains(BMC_PASSWORD));
}

#[tokio::test]
async fn without_power_control_the_buttons_explain_instead_of_failing() {
    let server = TestServer::start().await;
    let mut c = server.client();
    c.login().await;
    let with = seed(&server, "node-bmc", "52:54:00:00:00:01", Some("10.9.0.1")).await;
    let without = seed(&server, "node-plain", "52:54:00:00:00:02", None).await;

    let page = c.get(&format!("/machines/{without}")).await;
    assert!(!page.body.contains(&format!("/machines/{without}/power")));
    assert!(page.body.contains("No BMC configured"));
    assert!(
        !page.body.contains("id=\"jobs\""),
        "no BMC, no jobs: no card"
    );

    let page = c.get(&format!("/machines/{with}")).await;
    assert!(page.body.contains("Power state unknown"), "never read");
    assert!(page.body.contains("never checked"));
    let token = page.csrf_token();
    let page = c
        .post(
            &format!("/machines/{with}/power"),
            &[("csrf_token", &token), ("action", "power-on")],
        )
        .await;
    assert_eq!(page.status, 409);
    assert!(
        page.body
            .contains("Power control is not enabled on this Anvil server"),
        "{}",
        page.body
    );
    let page = c
        .post(
            &format!("/machines/{with}/power-state"),
            &[("csrf_token", &token)],
        )
        .await;
    assert_eq!(page.status, 409);
    assert!(page.body.contains("Power control is not enabled"));
    let page = c
        .post(
            "/machines/actions",
            &[
                ("csrf_token", &token),
                ("action", "power-off"),
                ("machine", &with),
            ],
        )
        .await;
    assert_eq!(page.status, 409);
    assert!(page.body.contains("Power control is not enabled"));
    let page = c
        .post(
            "/machines/enroll",
            &[
                ("csrf_token", &token),
                ("driver", "ipmi"),
                ("address", "10.9.0.2"),
                ("password", BMC_PASSWORD),
            ],
        )
        .await;
    assert_eq!(page.status, 409);
    assert!(page.body.contains("Power control is not enabled"));
    assert!(!page.body.contains(BMC_PASSWORD));
    assert!(jobs(&server.app, None).await.is_empty());
}

#[tokio::test]
async fn the_new_forms_refuse_a_missing_or_wrong_csrf_token() {
    let (server, fakes) = TestServer::start_with_power().await;
    fakes.add(
        "10.1.0.1",
        FakeBmc::new(inventory("SN1", 1), Duration::ZERO),
    );
    fakes.add(
        "10.1.0.2",
        FakeBmc::new(inventory("SN2", 2), Duration::ZERO),
    );
    let mut c = server.client();
    c.login().await;
    let id = enroll(&server.app, "10.1.0.1").await;
    let calls_before = fakes.get("10.1.0.1").calls().len();
    let posts: [(String, Vec<(&str, &str)>); 4] = [
        (
            format!("/machines/{id}/power"),
            vec![("action", "power-on")],
        ),
        (format!("/machines/{id}/power-state"), vec![]),
        (
            "/machines/enroll".to_string(),
            vec![("driver", "redfish"), ("address", "10.1.0.2")],
        ),
        (
            "/machines/actions".to_string(),
            vec![("action", "power-off"), ("machine", &id)],
        ),
    ];
    for (path, fields) in &posts {
        for token in [None, Some("forged-token")] {
            let mut f = fields.clone();
            if let Some(t) = token {
                f.push(("csrf_token", t));
            }
            let page = c.post(path, &f).await;
            assert_eq!(page.status, 403, "{path} with token {token:?}");
            assert!(page.body.contains("security token"), "{path}");
        }
    }
    assert!(jobs(&server.app, None).await.is_empty(), "no job started");
    assert_eq!(
        fakes.get("10.1.0.1").calls().len(),
        calls_before,
        "BMC untouched"
    );
    assert!(fakes.get("10.1.0.2").calls().is_empty(), "not enrolled");
    let total = server
        .app
        .list_machines(MachineQuery::default())
        .await
        .expect("list")
        .total;
    assert_eq!(total, 1);
}

#[tokio::test]
async fn enrolling_by_bmc_creates_the_machine_with_its_nics_and_never_shows_the_password() {
    let (server, fakes) = TestServer::start_with_power().await;
    fakes.add(
        "10.1.0.7",
        FakeBmc::new(inventory("ABC123", 7), Duration::ZERO),
    );
    fakes.add(
        "10.1.0.8",
        FakeBmc::new(inventory("XYZ789", 8), Duration::ZERO),
    );
    let mut c = server.client();
    c.login().await;
    let list = c.get("/machines").await;
    assert!(list.body.contains("href=\"/machines/enroll\""));
    assert!(list.body.contains("Add server by BMC"));

    let form = c.get("/machines/enroll").await;
    assert_eq!(form.status, 200);
    for text in [
        "<option value=\"redfish\" selected>Redfish</option>",
        "<option value=\"ipmi\">IPMI</option>",
        "name=\"address\"",
        "name=\"port\"",
        "name=\"username\"",
        "name=\"password\" type=\"password\"",
        "name=\"hostname\"",
        "name=\"tags\"",
        "name=\"verify_tls\" value=\"on\" checked",
    ] {
        assert!(form.body.contains(text), "{text:?} missing from the form");
    }
    let token = form.csrf_token();
    let fields = |address: &'static str, hostname: &'static str| {
        vec![
            ("csrf_token", token.clone()),
            ("driver", "redfish".to_string()),
            ("address", address.to_string()),
            ("port", String::new()),
            ("username", "root".to_string()),
            ("password", BMC_PASSWORD.to_string()),
            ("hostname", hostname.to_string()),
            ("verify_tls", "on".to_string()),
            ("tags", "rack1, gpu".to_string()),
        ]
    };
    let post = |f: Vec<(&'static str, String)>| {
        let c = &c;
        async move {
            let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.post("/machines/enroll", &pairs).await
        }
    };

    let page = post(fields("10.1.0.7", "")).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let m = server
        .app
        .get_machine("node-abc123")
        .await
        .expect("enrolled");
    assert_eq!(page.location(), format!("/machines/{}?enrolled=new", m.id));
    let macs: Vec<String> = m.interfaces.iter().map(|i| i.mac.to_string()).collect();
    assert_eq!(macs, ["52:54:00:07:01:10", "52:54:00:07:02:10"]);
    assert!(m.interfaces[0].pxe);
    assert_eq!(m.tags, ["gpu", "rack1"]);
    let bmc = m.bmc.as_ref().expect("bmc");
    assert!(bmc.has_password && bmc.verify_tls);
    assert_eq!(m.vendor.as_deref(), Some("Dell Inc."));
    let shown = c.get(page.location()).await;
    for text in [
        "Enrolled node-abc123 from its BMC with 2 network interfaces.",
        "52:54:00:07:01:10",
        "52:54:00:07:02:10",
        "password set",
    ] {
        assert!(shown.body.contains(text), "{text:?} missing");
    }

    // The same BMC again: its machine, unchanged.
    let again = post(fields("10.1.0.7", "")).await;
    assert_eq!(again.status, 303);
    assert_eq!(
        again.location(),
        format!("/machines/{}?enrolled=already", m.id)
    );
    let shown_again = c.get(again.location()).await;
    assert!(
        shown_again
            .body
            .contains("This BMC was already enrolled as node-abc123; nothing was changed.")
    );

    // An unreachable BMC: the form again, with why, and without the password.
    let unreachable = post(fields("10.1.0.99", "")).await;
    assert_eq!(unreachable.status, 409);
    assert!(
        unreachable
            .body
            .contains("cannot reach the BMC at 10.1.0.99: no route to host")
    );
    assert!(
        unreachable.body.contains("value=\"10.1.0.99\""),
        "input kept"
    );
    assert!(unreachable.body.contains("value=\"rack1, gpu\""));
    // A hostname that is taken.
    let taken = post(fields("10.1.0.8", "node-abc123")).await;
    assert_eq!(taken.status, 409);
    assert!(
        taken
            .body
            .contains("The hostname node-abc123 is already used by another machine.")
    );
    // Mistakes found before the BMC is asked, all at once.
    let mut bad = fields("", "bad_name");
    bad[3].1 = "70000".into();
    let mistakes = post(bad).await;
    assert_eq!(mistakes.status, 422);
    for text in [
        "The BMC&#39;s host name or IP address is required.",
        "A port number from 1 to 65535.",
        "Not a valid hostname",
    ] {
        assert!(mistakes.body.contains(text), "{text:?} missing");
    }
    for (what, html) in [
        ("form", &form.body),
        ("machine page", &shown.body),
        ("unreachable", &unreachable.body),
        ("taken", &taken.body),
        ("mistakes", &mistakes.body),
    ] {
        assert!(
            !html.contains(BMC_PASSWORD),
            "BMC password on the {what} page"
        );
    }
    assert!(fakes.get("10.1.0.8").calls().len() == 1, "probed once");
    let total = server
        .app
        .list_machines(MachineQuery::default())
        .await
        .expect("list")
        .total;
    assert_eq!(total, 1);
}

#[tokio::test]
async fn a_bulk_action_starts_one_job_per_selected_machine_with_a_bmc() {
    let (server, fakes) = TestServer::start_with_power().await;
    let mut ids = Vec::new();
    for n in 1..=3u8 {
        let address = format!("10.1.0.{n}");
        fakes.add(
            &address,
            FakeBmc::new(inventory(&format!("SN{n}"), n), Duration::from_millis(50)),
        );
        ids.push(enroll(&server.app, &address).await);
    }
    let plain = seed(&server, "node-plain", "52:54:00:99:00:01", None).await;
    let mut c = server.client();
    c.login().await;

    let list = c.get("/machines?tag=rack1").await;
    assert!(list.body.contains("action=\"/machines/actions?tag=rack1\""));
    for id in &ids {
        assert!(
            list.body
                .contains(&format!("name=\"machine\" value=\"{id}\"")),
            "no checkbox for {id}"
        );
    }
    for action in ["power-on", "power-off", "pxe-boot"] {
        assert!(
            list.body
                .contains(&format!("name=\"action\" value=\"{action}\"")),
            "no bulk {action}"
        );
    }
    let all = c.get("/machines").await;
    assert!(
        all.body.contains("title=\"No BMC: Anvil cannot power it\""),
        "the power column marks machines without a BMC"
    );
    let token = list.csrf_token();

    let mut fields = vec![("csrf_token", token.as_str()), ("action", "power-on")];
    for id in ids.iter().chain([&plain, &ids[0]]) {
        fields.push(("machine", id));
    }
    let page = c.post("/machines/actions?tag=rack1", &fields).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        page.location(),
        "/machines?tag=rack1&action=power-on&started=3&skipped=1"
    );
    let js = jobs(&server.app, None).await;
    assert_eq!(js.len(), 3, "one job per machine with a BMC, once each");
    assert!(js.iter().all(|j| j.kind == "power-on"));
    let shown = c.get(page.location()).await;
    assert!(shown.body.contains(
        "Power on: 3 jobs started, one per machine. Each machine&#39;s page shows how its job \
         went. 1 selected machine was skipped: no BMC."
    ));
    let done = eventually("the bulk jobs", || all_done(&server.app, None)).await;
    assert!(
        done.iter().all(|j| j.status == JobStatus::Succeeded),
        "{done:?}"
    );
    let list = c.get("/machines?tag=rack1").await;
    assert_eq!(
        list.body.matches("power-dot power-on").count(),
        3,
        "the power column shows the new state"
    );

    // Nothing ticked, or only machines without a BMC: the list again, why.
    let page = c
        .post(
            "/machines/actions",
            &[("csrf_token", &token), ("action", "power-off")],
        )
        .await;
    assert_eq!(page.status, 422);
    assert!(page.body.contains("Select the machines to power off first"));
    let page = c
        .post(
            "/machines/actions",
            &[
                ("csrf_token", &token),
                ("action", "pxe-boot"),
                ("machine", &plain),
            ],
        )
        .await;
    assert_eq!(page.status, 422);
    assert!(
        page.body
            .contains("None of the selected machines has a BMC")
    );
    assert!(page.body.contains("id=\"results\""), "the list is shown");
    assert_eq!(jobs(&server.app, None).await.len(), 3);
}
