//! The UI over plain HTTP: auth, CSRF, forms, errors and headers.

use crate::support::{ADMIN, ADMIN_PASSWORD, TestServer};
use anvil_api_types::{BmcInput, InterfaceInput, MachineCreate, MachineQuery, StateChange};
use anvil_core::Principal;
use anvil_types::{BmcDriver, MachineState};

const BMC_PASSWORD: &str = "Sup3r-Secret-BMC!";

async fn machine_count(server: &TestServer) -> u64 {
    server
        .app
        .list_machines(MachineQuery::default())
        .await
        .expect("list")
        .total
}

async fn seed(server: &TestServer, hostname: &str, mac: &str) -> String {
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
                ..Default::default()
            },
        )
        .await
        .expect("seed machine")
        .id
        .to_string()
}

#[tokio::test]
async fn pages_need_a_session_and_remember_where_they_were() {
    let server = TestServer::start().await;
    let c = server.client();
    let page = c.get("/machines?state=ready&q=node").await;
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location(),
        "/login?next=%2Fmachines%3Fstate%3Dready%26q%3Dnode"
    );
    for path in [
        "/machines/new",
        "/machines/x",
        "/machines/x/edit",
        "/machines/enroll",
        "/machines/x/jobs",
        "/machines/x/boot-timeline",
    ] {
        let page = c.get(path).await;
        assert_eq!(page.status, 303, "{path}");
        assert!(page.location().starts_with("/login?next="), "{path}");
    }
    let page = c.get_with("/machines?q=a", &[("HX-Request", "true")]).await;
    assert_eq!(
        page.header("hx-redirect"),
        "/login?next=%2Fmachines%3Fq%3Da"
    );
    // A polling card whose session ended sends the whole page to login.
    let page = c
        .get_with("/machines/x/jobs", &[("HX-Request", "true")])
        .await;
    assert_eq!(page.status, 204);
    assert!(page.header("hx-redirect").starts_with("/login?next="));

    // A POST without a session changes nothing.
    for path in [
        "/machines",
        "/machines/enroll",
        "/machines/actions",
        "/machines/x/power",
        "/machines/x/power-state",
    ] {
        let page = c.post(path, &[("hostname", "sneaky")]).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location(), "/login", "{path}");
    }
    assert_eq!(machine_count(&server).await, 0);

    // The login page and assets are public.
    let page = c.get("/login").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"password\""));
    assert!(page.session_set_cookie().is_none());
    let css = c.get("/static/anvil.css").await;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").starts_with("text/css"));
    let js = c.get("/static/htmx-2.0.11.min.js").await;
    assert_eq!(js.status, 200);
    assert!(js.body.contains("Zero-Clause BSD"), "licence header kept");
}

#[tokio::test]
async fn wrong_login_is_401_with_one_message_for_both_cases() {
    let server = TestServer::start().await;
    let c = server.client();
    let wrong_password = c
        .post("/login", &[("username", ADMIN), ("password", "nope-nope")])
        .await;
    let unknown_user = c
        .post(
            "/login",
            &[("username", "ghost"), ("password", ADMIN_PASSWORD)],
        )
        .await;
    for (page, user) in [(&wrong_password, ADMIN), (&unknown_user, "ghost")] {
        assert_eq!(page.status, 401);
        assert!(page.body.contains("Invalid username or password."));
        assert!(
            page.body.contains(&format!("value=\"{user}\"")),
            "username kept"
        );
        assert!(page.session_set_cookie().is_none());
    }
}

#[tokio::test]
async fn login_sets_a_strict_cookie_secure_only_behind_https() {
    let server = TestServer::start().await;
    let c = server.client();
    let creds = [("username", ADMIN), ("password", ADMIN_PASSWORD)];

    let page = c.post("/login", &creds).await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location(), "/machines");
    let cookie = page.session_set_cookie().expect("cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{attr} missing in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");

    let page = c
        .post_with("/login", &creds, &[("X-Forwarded-Proto", "https")])
        .await;
    let cookie = page.session_set_cookie().expect("cookie");
    assert!(cookie.contains("Secure"), "{cookie}");
}

#[tokio::test]
async fn login_from_another_origin_is_refused() {
    let server = TestServer::start().await;
    let c = server.client();
    let creds = [("username", ADMIN), ("password", ADMIN_PASSWORD)];
    let page = c
        .post_with("/login", &creds, &[("Origin", "https://evil.example")])
        .await;
    assert_eq!(page.status, 403);
    assert!(page.session_set_cookie().is_none());

    let own = server.base.clone();
    let page = c.post_with("/login", &creds, &[("Origin", &own)]).await;
    assert_eq!(page.status, 303, "same origin is fine");
}

#[tokio::test]
async fn next_never_leaves_the_site() {
    let server = TestServer::start().await;
    let mut c = server.client();
    for (next, expect) in [
        ("https://evil.example/", "/machines"),
        ("//evil.example/x", "/machines"),
        ("/\\evil.example", "/machines"),
        ("evil.example", "/machines"),
        ("/machines/new", "/machines/new"),
    ] {
        let page = c
            .post(
                "/login",
                &[
                    ("username", ADMIN),
                    ("password", ADMIN_PASSWORD),
                    ("next", next),
                ],
            )
            .await;
        assert_eq!(page.status, 303);
        assert_eq!(page.location(), expect, "next={next}");
    }
    // The login page carries only a safe `next` into its form, and a
    // logged-in visitor is sent on to a safe place too.
    let page = c.get("/login?next=https%3A%2F%2Fevil.example").await;
    assert!(!page.body.contains("evil.example"));
    c.login().await;
    let page = c.get("/login?next=https%3A%2F%2Fevil.example").await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location(), "/machines");
}

#[tokio::test]
async fn posts_without_the_right_csrf_token_are_403_and_change_nothing() {
    let server = TestServer::start().await;
    let mut c = server.client();
    c.login().await;
    let token = c.csrf().await;
    // Same length as the real token, one character off.
    let mut forged = token.clone();
    let last = if forged.ends_with('A') { "B" } else { "A" };
    forged.replace_range(forged.len() - 1.., last);

    let missing = c.post("/machines", &[("hostname", "node-csrf")]).await;
    assert_eq!(missing.status, 403);
    assert!(missing.body.contains("security token"));
    for bad in ["not-the-token", forged.as_str()] {
        let page = c
            .post(
                "/machines",
                &[("hostname", "node-csrf"), ("csrf_token", bad)],
            )
            .await;
        assert_eq!(page.status, 403, "token {bad:?}");
    }
    assert_eq!(machine_count(&server).await, 0);

    let id = seed(&server, "victim", "52:54:00:00:00:99").await;
    let page = c
        .post(
            &format!("/machines/{id}/delete"),
            &[("confirm_hostname", "victim")],
        )
        .await;
    assert_eq!(page.status, 403);
    let page = c
        .post(&format!("/machines/{id}/state"), &[("state", "ready")])
        .await;
    assert_eq!(page.status, 403);
    assert_eq!(
        server
            .app
            .get_machine(&id)
            .await
            .expect("still there")
            .state,
        MachineState::New
    );
    let page = c.post("/logout", &[("csrf_token", "x")]).await;
    assert_eq!(page.status, 403);
    assert_eq!(c.get("/machines").await.status, 200, "still logged in");

    // The real token works.
    let ok = c
        .post(
            "/machines",
            &[("hostname", "node-csrf"), ("csrf_token", &token)],
        )
        .await;
    assert_eq!(ok.status, 303, "{}", ok.body);
    assert_eq!(machine_count(&server).await, 2);
}

#[tokio::test]
async fn added_machine_is_listed_and_its_page_shows_everything_but_the_password() {
    let server = TestServer::start().await;
    let mut c = server.client();
    c.login().await;
    let token = c.csrf().await;
    let page = c
        .post(
            "/machines",
            &[
                ("csrf_token", &token),
                ("hostname", "Node-07.Rack1"),
                ("architecture", "arm64"),
                ("firmware", "uefi"),
                ("vendor", "Ampere"),
                ("model", "Altra Q80"),
                ("serial", "SN-4711"),
                ("tags", "rack1, gpu ,, zone=a"),
                ("macs", "52:54:00:AA:00:01\r\n52-54-00-aa-00-02\n"),
                ("bmc_driver", "redfish"),
                ("bmc_address", "10.20.0.7"),
                ("bmc_port", "8443"),
                ("bmc_username", "root"),
                ("bmc_password", BMC_PASSWORD),
                ("bmc_verify_tls", "on"),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let detail_path = page.location().to_string();
    let m = server
        .app
        .get_machine("node-07.rack1")
        .await
        .expect("created");
    assert_eq!(detail_path, format!("/machines/{}", m.id));
    assert_eq!(m.tags, ["gpu", "rack1", "zone=a"]);
    assert!(m.bmc.as_ref().is_some_and(|b| b.has_password));

    let list = c.get("/machines").await;
    assert_eq!(list.status, 200);
    assert!(list.body.contains("node-07.rack1"));
    assert!(list.body.contains("badge state-new"));
    assert!(list.body.contains("52:54:00:aa:00:01"));

    let detail = c.get(&detail_path).await;
    assert_eq!(detail.status, 200);
    let b = &detail.body;
    for text in [
        "<td class=\"mono\">52:54:00:aa:00:01</td>",
        "<td class=\"mono\">52:54:00:aa:00:02</td>",
        "eth0",
        "eth1",
        "Ampere",
        "Altra Q80",
        "SN-4711",
        "10.20.0.7",
        "8443",
        "password set",
        "machine.created",
    ] {
        assert!(b.contains(text), "{text:?} missing from the machine page");
    }
    let edit = c.get(&format!("{detail_path}/edit")).await;
    assert_eq!(edit.status, 200);
    assert!(edit.body.contains("A password is stored."));
    for (what, html) in [("list", &list.body), ("detail", b), ("edit", &edit.body)] {
        assert!(
            !html.contains(BMC_PASSWORD),
            "BMC password on the {what} page"
        );
    }
    // The machine is also reachable by hostname.
    assert_eq!(c.get("/machines/node-07.rack1").await.status, 200);
}

#[tokio::test]
async fn search_filters_sorting_and_pages() {
    let server = TestServer::start().await;
    let mut c = server.client();
    c.login().await;
    for i in 0..30u8 {
        seed(
            &server,
            &format!("node-{i:02}"),
            &format!("52:54:00:00:01:{i:02x}"),
        )
        .await;
    }
    let id = seed(&server, "db-01", "52:54:00:00:02:01").await;
    server
        .app
        .update_machine(
            &Principal::System,
            &id,
            anvil_api_types::MachinePatch {
                tags: Some(vec!["database".into()]),
                ..Default::default()
            },
        )
        .await
        .expect("tag");
    server
        .app
        .change_state(
            &Principal::System,
            &id,
            StateChange {
                state: MachineState::Ready,
                reason: None,
            },
        )
        .await
        .expect("ready");

    let page = c.get("/machines?q=db").await;
    assert!(page.body.contains("db-01") && !page.body.contains("node-00"));
    let page = c.get("/machines?q=52:54:00:00:01:05").await;
    assert!(
        page.body.contains("node-05") && !page.body.contains("node-06"),
        "MAC search"
    );
    let page = c.get("/machines?q=52:54:00").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Searching by MAC address"), "half a MAC");
    let page = c
        .get("/machines?page=99999999999999999999&per_page=7")
        .await;
    assert_eq!(page.status, 200, "a silly page number shows the first page");
    assert!(page.body.contains("Showing 1–31 of 31"));
    let page = c.get("/machines?state=ready").await;
    assert!(page.body.contains("db-01") && !page.body.contains("node-00"));
    assert!(page.body.contains("Showing 1–1 of 1"));
    let page = c.get("/machines?tag=database").await;
    assert!(page.body.contains("db-01") && !page.body.contains("node-00"));
    let page = c.get("/machines?state=nonsense").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("There is no state"));

    // Counts per state in the sidebar.
    let all = c.get("/machines").await;
    assert!(all.body.contains("Showing 1–31 of 31"));

    let p1 = c.get("/machines?per_page=25").await;
    assert!(p1.body.contains("Showing 1–25 of 31"));
    assert!(
        p1.body
            .contains("href=\"/machines?per_page=25&#38;page=2\"")
    );
    let p2 = c.get("/machines?per_page=25&page=2").await;
    assert!(p2.body.contains("Showing 26–31 of 31"));
    assert!(p2.body.contains("node-29") && !p2.body.contains("node-00"));
    let past = c.get("/machines?page=9").await;
    assert!(past.body.contains("Nothing on this page"));

    let desc = c.get("/machines?sort=-hostname").await;
    let first = desc.body.find("node-29").expect("node-29");
    let last = desc.body.find("db-01").expect("db-01");
    assert!(first < last, "descending by hostname");

    // htmx asks for the results only; a plain request gets the page.
    let frag = c
        .get_with("/machines?q=node-1", &[("HX-Request", "true")])
        .await;
    assert_eq!(frag.status, 200);
    assert!(!frag.body.contains("<html"));
    assert!(frag.body.contains("id=\"results\""));
    assert!(frag.body.contains("hx-swap-oob=\"true\""));
    assert!(frag.body.contains("node-10") && !frag.body.contains("node-20"));
    assert_eq!(frag.header("vary"), "HX-Request");
}

#[tokio::test]
async fn a_duplicate_hostname_or_bad_input_shows_the_form_again() {
    let server = TestServer::start().await;
    let mut c = server.client();
    c.login().await;
    let existing = seed(&server, "node-1", "52:54:00:00:00:01").await;
    let token = c.csrf().await;
    let page = c
        .post(
            "/machines",
            &[
                ("csrf_token", &token),
                ("hostname", "node-1"),
                ("vendor", "Kept Vendor"),
                ("macs", "52:54:00:00:00:02"),
                ("bmc_password", BMC_PASSWORD),
                ("bmc_driver", "ipmi"),
                ("bmc_address", "10.0.0.1"),
            ],
        )
        .await;
    assert_eq!(page.status, 409);
    assert!(
        page.body
            .contains("The hostname node-1 is already used by another machine.")
    );
    assert!(
        page.body
            .contains(&format!("href=\"/machines/{existing}\""))
    );
    assert!(page.body.contains("value=\"Kept Vendor\""), "input kept");
    assert!(!page.body.contains(BMC_PASSWORD), "password not echoed");

    let page = c
        .post(
            "/machines",
            &[
                ("csrf_token", &token),
                ("hostname", "node-2"),
                ("macs", "52:54:00:00:00:01"),
            ],
        )
        .await;
    assert_eq!(page.status, 409);
    assert!(
        page.body
            .contains("The MAC address 52:54:00:00:00:01 is already used")
    );

    let page = c
        .post(
            "/machines",
            &[
                ("csrf_token", &token),
                ("hostname", "bad_host"),
                ("macs", "not-a-mac"),
                ("bmc_address", "10.0.0.9"),
                ("bmc_port", "70000"),
            ],
        )
        .await;
    assert_eq!(page.status, 422);
    for text in [
        "Not a valid hostname",
        "&#34;not-a-mac&#34; is not a MAC address",
        "Choose how Anvil talks to this BMC.",
        "A port number from 1 to 65535.",
    ] {
        assert!(page.body.contains(text), "{text:?} missing");
    }
    assert_eq!(machine_count(&server).await, 1);
}

#[tokio::test]
async fn lifecycle_buttons_follow_the_state_table() {
    let server = TestServer::start().await;
    let mut c = server.client();
    c.login().await;
    let id = seed(&server, "node-1", "52:54:00:00:00:01").await;
    let path = format!("/machines/{id}");
    let page = c.get(&path).await;
    for to in MachineState::New.next_states() {
        assert!(
            page.body
                .contains(&format!("name=\"state\" value=\"{to}\"")),
            "no button for {to}"
        );
    }
    assert!(!page.body.contains("name=\"state\" value=\"deployed\""));
    let token = page.csrf_token();

    let page = c
        .post(
            &format!("{path}/state"),
            &[("csrf_token", &token), ("state", "commissioning")],
        )
        .await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location(), path);
    let m = server.app.get_machine(&id).await.expect("machine");
    assert_eq!(m.state, MachineState::Commissioning);

    // Not in the table: refused, shown on the page, state kept.
    let page = c
        .post(
            &format!("{path}/state"),
            &[("csrf_token", &token), ("state", "deployed")],
        )
        .await;
    assert_eq!(page.status, 409);
    assert!(
        page.body.contains("cannot move to deployed"),
        "{}",
        page.body
    );
    // `failed` needs a reason.
    let page = c
        .post(
            &format!("{path}/state"),
            &[("csrf_token", &token), ("state", "failed"), ("reason", " ")],
        )
        .await;
    assert_eq!(page.status, 409);
    assert!(page.body.contains("needs a reason"));
    let page = c
        .post(
            &format!("{path}/state"),
            &[("csrf_token", &token), ("state", "nonsense")],
        )
        .await;
    assert_eq!(page.status, 422);
    let m = server.app.get_machine(&id).await.expect("machine");
    assert_eq!(m.state, MachineState::Commissioning);

    let page = c
        .post(
            &format!("{path}/state"),
            &[
                ("csrf_token", &token),
                ("state", "failed"),
                ("reason", "disk 3 died"),
            ],
        )
        .await;
    assert_eq!(page.status, 303);
    let page = c.get(&path).await;
    assert!(page.body.contains("disk 3 died"));
    assert!(
        page.body.contains("commissioning → failed: disk 3 died"),
        "event log"
    );
}

#[tokio::test]
async fn edit_keeps_what_the_form_does_not_show() {
    let server = TestServer::start().await;
    let mut c = server.client();
    c.login().await;
    let m = server
        .app
        .create_machine(
            &Principal::System,
            MachineCreate {
                hostname: "node-1".into(),
                interfaces: vec![InterfaceInput {
                    mac: "52:54:00:00:00:01".into(),
                    name: Some("eno1".into()),
                    pxe: Some(true),
                    ipv4: Some("10.0.0.5".into()),
                }],
                bmc: Some(BmcInput {
                    driver: BmcDriver::Ipmi,
                    address: "10.1.0.1".into(),
                    port: None,
                    username: Some("admin".into()),
                    password: Some(BMC_PASSWORD.into()),
                    verify_tls: None,
                }),
                facts: Some(serde_json::json!({"cpus": 64})),
                ..Default::default()
            },
        )
        .await
        .expect("machine");
    let path = format!("/machines/{}/edit", m.id);
    let form = c.get(&path).await;
    assert!(form.body.contains("52:54:00:00:00:01</textarea>"));
    let token = form.csrf_token();
    let page = c
        .post(
            &path,
            &[
                ("csrf_token", &token),
                ("hostname", "node-1"),
                ("vendor", "Supermicro"),
                ("macs", "52:54:00:00:00:01\n52:54:00:00:00:02"),
                ("bmc_driver", "ipmi"),
                ("bmc_address", "10.1.0.1"),
                ("bmc_username", "admin"),
                ("bmc_password", ""),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let after = server.app.get_machine("node-1").await.expect("machine");
    assert_eq!(after.vendor.as_deref(), Some("Supermicro"));
    let eno1 = &after.interfaces[0];
    assert_eq!(
        (eno1.name.as_str(), eno1.ipv4.as_deref()),
        ("eno1", Some("10.0.0.5"))
    );
    assert_eq!(after.interfaces[1].name, "eth0");
    assert!(!after.interfaces[1].pxe);
    assert_eq!(after.facts, serde_json::json!({"cpus": 64}));
    assert_eq!(
        server
            .app
            .bmc_password(m.id)
            .await
            .expect("secret")
            .as_deref(),
        Some(BMC_PASSWORD),
        "an empty password field keeps the stored password"
    );

    // Emptying the BMC fields removes the BMC.
    let page = c
        .post(
            &path,
            &[
                ("csrf_token", &token),
                ("hostname", "node-1"),
                ("macs", "52:54:00:00:00:01"),
            ],
        )
        .await;
    assert_eq!(page.status, 303);
    assert!(
        server
            .app
            .get_machine("node-1")
            .await
            .expect("m")
            .bmc
            .is_none()
    );
}

#[tokio::test]
async fn delete_asks_for_the_hostname() {
    let server = TestServer::start().await;
    let mut c = server.client();
    c.login().await;
    let id = seed(&server, "node-1", "52:54:00:00:00:01").await;
    let path = format!("/machines/{id}");
    let token = c.get(&path).await.csrf_token();
    let page = c
        .post(
            &format!("{path}/delete"),
            &[("csrf_token", &token), ("confirm_hostname", "node-2")],
        )
        .await;
    assert_eq!(page.status, 422);
    assert!(page.body.contains("Type the hostname"));
    assert_eq!(machine_count(&server).await, 1);
    let page = c
        .post(
            &format!("{path}/delete"),
            &[("csrf_token", &token), ("confirm_hostname", "node-1")],
        )
        .await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location(), "/machines?deleted=node-1");
    assert_eq!(machine_count(&server).await, 0);
    let page = c.get(page.location()).await;
    assert!(page.body.contains("<strong>node-1</strong> was deleted"));
    assert_eq!(c.get(&path).await.status, 404);
}

#[tokio::test]
async fn logout_ends_the_session_on_the_server() {
    let server = TestServer::start().await;
    let mut c = server.client();
    c.login().await;
    let token = c.csrf().await;
    let page = c.post("/logout", &[("csrf_token", &token)]).await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location(), "/login");
    let cleared = page.session_set_cookie().expect("clearing cookie");
    assert!(cleared.starts_with("anvil_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The old cookie is dead even if a browser kept it.
    let page = c.get("/machines").await;
    assert_eq!(page.status, 303);
    assert!(page.location().starts_with("/login"));
}

#[tokio::test]
async fn headers_errors_and_assets() {
    let server = TestServer::start().await;
    let mut c = server.client();
    for path in ["/login", "/static/anvil.css", "/nowhere"] {
        let page = c.get(path).await;
        let csp = page.header("content-security-policy");
        assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(page.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(page.header("referrer-policy"), "same-origin", "{path}");
    }
    assert_eq!(c.get("/login").await.header("cache-control"), "no-store");
    let missing = c.get("/nowhere").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("There is no page at /nowhere."));

    let css = c.get("/static/anvil.css").await;
    let etag = css.header("etag").to_string();
    assert!(etag.starts_with('"') && etag.len() > 60, "{etag}");
    let again = c
        .get_with("/static/anvil.css", &[("If-None-Match", &etag)])
        .await;
    assert_eq!(again.status, 304);
    assert_eq!(c.get("/static/../Cargo.toml").await.status, 404);
    assert_eq!(c.get("/static/nope.css").await.status, 404);

    c.login().await;
    assert_eq!(c.get("/").await.location(), "/machines");
    let page = c.get("/machines/no-such-host").await;
    assert_eq!(page.status, 404);
    assert!(page.body.contains("not found"));
    // Every asset the pages reference is served.
    let list = c.get("/machines").await;
    for asset in [
        "/static/anvil.css",
        "/static/anvil-logo.svg",
        "/static/htmx-2.0.11.min.js",
        "/static/anvil.js",
    ] {
        assert!(list.body.contains(asset), "{asset} not referenced");
        assert_eq!(c.get(asset).await.status, 200, "{asset}");
    }
    assert!(
        !list.body.contains("http://") && !list.body.contains("https://"),
        "no external URL"
    );
}
