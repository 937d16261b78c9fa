//! The UI in a real headless Chromium, driven through chromedriver:
//! log in, add a machine with the form, find it with the live search, open
//! it, move it through the lifecycle, power a server enrolled by its (fake)
//! BMC and watch its job finish, log out.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (or
//! `ANVIL_CHROMIUM` / `ANVIL_CHROMEDRIVER` pointing at the binaries). Without
//! them the test fails, unless `ANVIL_SKIP_BROWSER=1` says to skip it.
//! Everything stays on 127.0.0.1.

use crate::support::{ADMIN, ADMIN_PASSWORD, FakeBmcs, TestServer, inventory};
use anvil_api_types::{EnrollRequest, InterfaceInput, MachineCreate, StateChange};
use anvil_core::Principal;
use anvil_core::power::MachineAction;
use anvil_power::FakeBmc;
use anvil_types::{Architecture, BmcDriver, JobStatus, MacAddr, MachineState};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BMC_PASSWORD: &str = "browser-bmc-secret";

/// A binary from an env var, else the first of `candidates` that exists.
fn find_binary(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    candidates.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// chromedriver in its own process group. Dropping the guard kills the
/// group, so Chromium and its helpers go too, even when the test panics.
struct Chromedriver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Chromedriver {
    fn start(binary: &Path, log: PathBuf) -> Chromedriver {
        // Take a free port from the kernel, then hand it to chromedriver.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let driver = Chromedriver { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr} within 20 s; log: {}",
                driver.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group id is chromedriver's pid (process_group(0)).
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("ui-screenshots")
}

async fn seed_fleet(server: &TestServer) {
    use MachineState::*;
    let fleet: [(&str, &[MachineState], Option<&str>); 9] = [
        ("compute-01", &[Ready], None),
        ("compute-02", &[Ready, Allocated, Deploying, Deployed], None),
        ("compute-03", &[Ready, Allocated, Deploying], None),
        ("compute-04", &[Commissioning], None),
        ("gpu-01", &[Ready, Allocated], None),
        (
            "gpu-02",
            &[Commissioning, Failed],
            Some("memory test failed on DIMM B2"),
        ),
        (
            "storage-01",
            &[Broken],
            Some("PSU 2 replaced, awaiting burn-in"),
        ),
        ("storage-02", &[], None),
        ("edge-01", &[Ready, Rescue], None),
    ];
    for (i, (host, path, reason)) in fleet.iter().enumerate() {
        let m = server
            .app
            .create_machine(
                &Principal::System,
                MachineCreate {
                    hostname: host.to_string(),
                    architecture: Some(if host.starts_with("edge") {
                        Architecture::Arm64
                    } else {
                        Architecture::Amd64
                    }),
                    vendor: Some("Dell".into()),
                    model: Some(
                        if host.starts_with("gpu") {
                            "XE9680"
                        } else {
                            "PowerEdge R650"
                        }
                        .into(),
                    ),
                    tags: vec![
                        host.split('-').next().unwrap_or("x").to_string(),
                        "rack1".into(),
                    ],
                    interfaces: vec![InterfaceInput {
                        mac: format!("52:54:00:10:00:{:02x}", i + 1),
                        name: None,
                        pxe: None,
                        ipv4: None,
                    }],
                    ..Default::default()
                },
            )
            .await
            .expect("seed");
        for state in *path {
            server
                .app
                .change_state(
                    &Principal::System,
                    &m.id.to_string(),
                    StateChange {
                        state: *state,
                        reason: reason.map(str::to_string),
                    },
                )
                .await
                .expect("move");
        }
    }
}

/// A server enrolled by its BMC, with a finished and a failed power job and
/// a recorded network boot (the firmware runs iPXE itself, so no TFTP).
/// Returns its id.
async fn seed_power(server: &TestServer, fakes: &FakeBmcs) -> String {
    let app = &server.app;
    // First a BMC that fails, for a failed job; then a working one.
    let broken = FakeBmc::new(inventory("7XK2P13", 5), Duration::ZERO);
    fakes.add("10.20.0.5", broken.clone());
    let m = app
        .enroll(
            &Principal::System,
            EnrollRequest {
                driver: BmcDriver::Redfish,
                address: "10.20.0.5".into(),
                port: None,
                username: Some("root".into()),
                password: Some(BMC_PASSWORD.into()),
                hostname: Some("compute-05".into()),
                verify_tls: Some(false),
                tags: vec!["compute".into(), "rack1".into()],
                macs: Vec::new(),
            },
        )
        .await
        .expect("enroll");
    let id = m.machine.id.to_string();
    broken.fail_with("HTTP 503 from /redfish/v1/Systems/System.Embedded.1");
    let admin = app
        .list_users(&Principal::System)
        .await
        .expect("users")
        .into_iter()
        .find(|u| u.username == ADMIN)
        .expect("admin");
    let by = Principal::User(admin);
    app.start_action(&by, &id, MachineAction::PowerCycle)
        .await
        .expect("job");
    wait_jobs(server, &id).await;
    fakes.add(
        "10.20.0.5",
        FakeBmc::new(inventory("7XK2P13", 5), Duration::from_millis(700)),
    );
    app.start_action(&by, &id, MachineAction::PxeBoot)
        .await
        .expect("job");
    wait_jobs(server, &id).await;

    // A boot, compressed in time (each step waits a little, so the
    // timeline has offsets to show).
    let mac = MacAddr([0x52, 0x54, 0, 5, 1, 0x10]);
    let steps = [
        (
            0,
            "dhcp.discover",
            json!({"arch": 7, "vendor_class": "PXEClient:Arch:00007"}),
        ),
        (
            40,
            "dhcp.offer",
            json!({"ip": "10.20.1.45", "network": "boot-lan"}),
        ),
        (60, "dhcp.request", json!({"ip": "10.20.1.45"})),
        (
            20,
            "dhcp.ack",
            json!({"ip": "10.20.1.45", "network": "boot-lan"}),
        ),
        (
            300,
            "http.script",
            json!({"stage": "discovery", "state": "new"}),
        ),
        (
            150,
            "http.kernel",
            json!({"path": "/boot/amd64/vmlinuz", "status": 200, "bytes": 11_534_336}),
        ),
        (
            450,
            "http.initrd",
            json!({"path": "/boot/amd64/initrd.img", "status": 200, "bytes": 64_487_424}),
        ),
        (
            700,
            "callhome",
            json!({"ip": "10.20.1.45", "uptime_secs": 18.4}),
        ),
    ];
    for (wait_ms, kind, detail) in steps {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        app.record_boot(mac, kind, detail);
    }
    eventually("the recorded boot", || async {
        app.boot_timeline(&id).await.is_ok_and(|t| t.complete)
    })
    .await;
    id
}

async fn wait_jobs(server: &TestServer, id: &str) {
    eventually("the power jobs", || async {
        server.app.list_jobs(Some(id), 20).await.is_ok_and(|js| {
            js.iter()
                .all(|j| matches!(j.status, JobStatus::Succeeded | JobStatus::Failed))
        })
    })
    .await;
}

/// Polls `check` until it holds or `what` times out.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the first element `css` matches. Cards that refresh
/// themselves may replace the element between finding and reading it:
/// then it is found again. After a click that submits a form, the next page
/// may still be loading (no such element yet): it is looked for again for up
/// to 5 s, which a loaded CI machine needs.
async fn text_of(c: &Client, css: &str) -> String {
    let mut tries = 0;
    let mut missing = 0;
    loop {
        let e = match c.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) if missing < 50 => {
                missing += 1;
                if missing == 1 {
                    eprintln!("{css}: {e}; waiting for the page");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => panic!("{css}: {e}"),
        };
        match e.text().await {
            Ok(t) => return t,
            Err(e) if tries < 5 => {
                tries += 1;
                eprintln!("{css}: {e}; looking again");
            }
            Err(e) => panic!("{css}: {e}"),
        }
    }
}

async fn path_of(c: &Client) -> String {
    let url = c.current_url().await.expect("url");
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

async fn run(c: &Client, server: &TestServer, power_id: &str) {
    let base = &server.base;

    // Logged out: the machine list sends us to the login page.
    c.goto(&format!("{base}/machines")).await.expect("goto");
    assert!(path_of(c).await.starts_with("/login?next="));
    // The stylesheet applied under the CSP (no inline styles anywhere).
    let bar = c.find(Locator::Css(".topbar")).await.expect("topbar");
    assert_eq!(
        bar.css_value("background-color").await.expect("css"),
        "rgba(27, 36, 48, 1)"
    );

    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(dir.join("login.png"), c.screenshot().await.expect("png")).expect("write");
    let login = c
        .form(Locator::Css("form[action='/login']"))
        .await
        .expect("form");
    login
        .set_by_name("username", ADMIN)
        .await
        .expect("username");
    login
        .set_by_name("password", ADMIN_PASSWORD)
        .await
        .expect("password");
    login.submit().await.expect("submit");
    // Back where we wanted to go (password hashing takes a moment).
    eventually("the machine list after login", || async {
        path_of(c).await == "/machines"
    })
    .await;
    let loaded: bool = c
        .execute("return typeof window.htmx === 'object'", vec![])
        .await
        .expect("js")
        .as_bool()
        .unwrap_or(false);
    assert!(loaded, "htmx did not load under the CSP");

    // Add a machine through the form.
    c.find(Locator::LinkText("Add machine"))
        .await
        .expect("link")
        .click()
        .await
        .expect("click");
    assert_eq!(path_of(c).await, "/machines/new");
    let fill = |name: &'static str, value: &'static str| async move {
        c.find(Locator::Css(&format!("[name='{name}']")))
            .await
            .expect(name)
            .send_keys(value)
            .await
            .expect(name);
    };
    // First with a hostname that is taken: the form comes back with the
    // message and the input kept.
    fill("hostname", "compute-01").await;
    fill("vendor", "Supermicro").await;
    fill("model", "SYS-1029U").await;
    fill("serial", "S1234567").await;
    fill("tags", "web, rack2").await;
    fill("macs", "52:54:00:AB:CD:01\n52:54:00:ab:cd:02").await;
    c.find(Locator::Css("#bmc_driver"))
        .await
        .expect("driver")
        .select_by_value("redfish")
        .await
        .expect("select");
    fill("bmc_address", "10.30.0.21").await;
    fill("bmc_username", "root").await;
    fill("bmc_password", BMC_PASSWORD).await;
    let submit = || async {
        c.find(Locator::Css("button[type='submit'].btn-primary"))
            .await
            .expect("submit")
            .click()
            .await
            .expect("click");
    };
    submit().await;
    eventually("the form's error", || async {
        c.find(Locator::Css(".field-error")).await.is_ok()
    })
    .await;
    assert!(
        text_of(c, ".field-error")
            .await
            .contains("already used by another machine")
    );
    let vendor = c.find(Locator::Css("#vendor")).await.expect("vendor");
    assert_eq!(
        vendor.prop("value").await.expect("value").as_deref(),
        Some("Supermicro")
    );
    std::fs::write(
        dir.join("machine-form-error.png"),
        c.screenshot().await.expect("png"),
    )
    .expect("write");
    c.find(Locator::Css("#hostname"))
        .await
        .expect("hostname")
        .clear()
        .await
        .expect("clear");
    fill("hostname", "web-node-01").await;
    // The password is never sent back, so it is typed again.
    fill("bmc_password", BMC_PASSWORD).await;
    submit().await;
    eventually("the machine page", || async {
        let p = path_of(c).await;
        p != "/machines/new" && p != "/machines"
    })
    .await;
    assert!(path_of(c).await.starts_with("/machines/"));
    assert_eq!(text_of(c, "h1").await, "web-node-01");
    assert!(
        text_of(c, ".interfaces-table")
            .await
            .contains("52:54:00:ab:cd:02")
    );

    // The list, with the fleet; screenshot for the humans.
    c.goto(&format!("{base}/machines")).await.expect("goto");
    let rows = c
        .find_all(Locator::Css(".machines-table tbody tr"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 11);
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join("machines.png"), png).expect("write screenshot");

    // Live search: typing filters the table in place (no page load: a
    // marker set on this page survives) and updates the address bar.
    c.execute("window.__sameDocument = true", vec![])
        .await
        .expect("js");
    c.find(Locator::Css("#search"))
        .await
        .expect("search")
        .send_keys("web-node")
        .await
        .expect("type");
    eventually("the live search", || async {
        c.find_all(Locator::Css(".machines-table tbody tr"))
            .await
            .map(|r| r.len() == 1)
            .unwrap_or(false)
    })
    .await;
    let same: bool = c
        .execute("return window.__sameDocument === true", vec![])
        .await
        .expect("js")
        .as_bool()
        .unwrap_or(false);
    assert!(
        same,
        "the search reloaded the page instead of swapping the table"
    );
    assert!(
        path_of(c).await.contains("q=web-node"),
        "address bar follows the search"
    );
    std::fs::write(
        dir.join("machines-search.png"),
        c.screenshot().await.expect("png"),
    )
    .expect("write screenshot");

    // Open the machine from the results.
    c.find(Locator::LinkText("web-node-01"))
        .await
        .expect("link")
        .click()
        .await
        .expect("click");
    eventually("the machine page", || async {
        text_of(c, "h1").await == "web-node-01"
    })
    .await;
    let html = c.source().await.expect("source");
    assert!(html.contains("password set"));
    assert!(!html.contains(BMC_PASSWORD), "BMC password in the page");
    std::fs::write(dir.join("machine.png"), c.screenshot().await.expect("png"))
        .expect("write screenshot");

    // A lifecycle button, with the CSRF token the browser carries.
    c.find(Locator::XPath("//button[contains(., 'Commission')]"))
        .await
        .expect("commission button")
        .click()
        .await
        .expect("click");
    eventually("the new state", || async {
        text_of(c, ".title-row .badge").await == "Commissioning"
    })
    .await;

    // A server enrolled by its BMC: the boot timeline, power and its jobs.
    // Power it on with the button; the jobs card follows the job by htmx
    // polling, without a page load.
    c.goto(&format!("{base}/machines/{power_id}"))
        .await
        .expect("goto");
    assert_eq!(text_of(c, "h1").await, "compute-05");
    assert!(
        text_of(c, "#boot-timeline .boot-headline").await == "Boot complete",
        "the timeline card is there and says how the boot went"
    );
    assert_eq!(
        c.find_all(Locator::Css("#boot-timeline .step"))
            .await
            .expect("steps")
            .len(),
        9
    );
    c.find(Locator::XPath("//button[normalize-space(.)='Power on']"))
        .await
        .expect("power on button")
        .click()
        .await
        .expect("click");
    eventually("the power-on notice", || async {
        path_of(c).await.ends_with("?power=power-on")
    })
    .await;
    c.execute("window.__sameDocument = true", vec![])
        .await
        .expect("js");
    eventually("the job to finish on the page", || async {
        // The card is replaced while we look: a stale element is a retry.
        match c
            .find(Locator::Css("#jobs tbody tr:first-child .badge"))
            .await
        {
            Ok(e) => e.text().await.is_ok_and(|t| t == "Succeeded"),
            Err(_) => false,
        }
    })
    .await;
    let same: bool = c
        .execute("return window.__sameDocument === true", vec![])
        .await
        .expect("js")
        .as_bool()
        .unwrap_or(false);
    assert!(same, "the jobs card was refreshed in place");
    assert_eq!(
        text_of(c, "#power-status .power-label").await,
        "Powered on",
        "the power state followed the job (out-of-band swap)"
    );
    let html = c.source().await.expect("source");
    assert!(!html.contains(BMC_PASSWORD), "BMC password in the page");
    // The whole page, for the humans.
    let (w, h) = c.get_window_size().await.expect("size");
    c.set_window_size(1440, 1800).await.expect("resize");
    std::fs::write(
        dir.join("machine-power.png"),
        c.screenshot().await.expect("png"),
    )
    .expect("write screenshot");
    c.set_window_size(1440, 2600).await.expect("resize");
    c.find(Locator::Css("#boot-timeline details > summary"))
        .await
        .expect("events toggle")
        .click()
        .await
        .expect("click");
    let png = c
        .find(Locator::Css("#boot-timeline"))
        .await
        .expect("timeline")
        .screenshot()
        .await
        .expect("png");
    std::fs::write(dir.join("boot-timeline.png"), png).expect("write screenshot");
    let (w, h) = (
        u32::try_from(w).unwrap_or(1440),
        u32::try_from(h).unwrap_or(900),
    );
    c.set_window_size(w, h).await.expect("resize");

    // Bulk: tick two machines, the bar counts them.
    c.goto(&format!("{base}/machines?tag=rack1"))
        .await
        .expect("goto");
    for host in ["compute-01", "compute-05"] {
        c.find(Locator::Css(&format!("input[aria-label='Select {host}']")))
            .await
            .expect("checkbox")
            .click()
            .await
            .expect("tick");
    }
    assert_eq!(text_of(c, "[data-bulk-count]").await, "2 machines selected");
    std::fs::write(
        dir.join("machines-bulk.png"),
        c.screenshot().await.expect("png"),
    )
    .expect("write screenshot");
    c.goto(&format!("{base}/machines/enroll"))
        .await
        .expect("goto");
    std::fs::write(dir.join("enroll.png"), c.screenshot().await.expect("png"))
        .expect("write screenshot");

    // A ready machine's Deployment card: without hardware facts (the fleet
    // was never commissioned) it asks for commissioning instead of a form.
    c.goto(&format!("{base}/machines/compute-01"))
        .await
        .expect("goto");
    let note = text_of(c, "#deployment .deploy-needs-facts").await;
    assert!(note.contains("commission it first"), "{note}");
    assert!(
        c.find(Locator::Css("#deployment form[action$='/rescue']"))
            .await
            .is_ok(),
        "rescue is offered"
    );
    c.execute(
        "document.getElementById('deployment').scrollIntoView()",
        vec![],
    )
    .await
    .expect("scroll");
    std::fs::write(
        dir.join("deployment.png"),
        c.screenshot().await.expect("png"),
    )
    .expect("write screenshot");

    // Log out; the list is closed again.
    c.find(Locator::Css(".usermenu button"))
        .await
        .expect("logout")
        .click()
        .await
        .expect("click");
    eventually("the login page", || async { path_of(c).await == "/login" }).await;
    c.goto(&format!("{base}/machines")).await.expect("goto");
    assert!(path_of(c).await.starts_with("/login?next="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_with_a_browser_can_do_the_basics() {
    if std::env::var("ANVIL_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("ANVIL_SKIP_BROWSER=1: browser test skipped");
        return;
    }
    let chromium = find_binary(
        "ANVIL_CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    )
    .expect(
        "Chromium not found: install the Debian packages `chromium` and `chromium-driver`, \
             set ANVIL_CHROMIUM, or set ANVIL_SKIP_BROWSER=1 to skip this test",
    );
    let chromedriver = find_binary("ANVIL_CHROMEDRIVER", &["/usr/bin/chromedriver"]).expect(
        "chromedriver not found: install the Debian package `chromium-driver`, set \
         ANVIL_CHROMEDRIVER, or set ANVIL_SKIP_BROWSER=1 to skip this test",
    );

    let (server, fakes) = TestServer::start_with_power().await;
    seed_fleet(&server).await;
    let power_id = seed_power(&server, &fakes).await;
    // The BMC of the machine the browser adds (web-node-01): its Commission
    // button boots it from the network, and with no BMC there the run failed
    // at once and the machine went back to `new`, sometimes before the page
    // after the form showed `Commissioning`.
    fakes.add(
        "10.30.0.21",
        FakeBmc::new(inventory("WEB0001", 7), Duration::ZERO),
    );
    let scratch = tempfile::tempdir().expect("temp dir");
    let driver = Chromedriver::start(&chromedriver, scratch.path().join("chromedriver.log"));

    let profile = scratch.path().join("profile");
    let args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--no-default-browser-check".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-extensions".into(),
        "--disable-default-apps".into(),
        "--disable-domain-reliability".into(),
        "--disable-dev-shm-usage".into(),
        "--window-size=1440,900".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), "chrome".into());
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": chromium, "args": args }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no WebDriver session: {e}; chromedriver log:\n{}",
                std::fs::read_to_string(&driver.log).unwrap_or_default()
            )
        });

    // Run the steps as a task so a failed assertion still lets us close
    // the browser session before the driver is killed.
    let outcome = tokio::time::timeout(Duration::from_secs(120), async {
        let c = client.clone();
        let steps = async move { run(&c, &server, &power_id).await };
        tokio::spawn(steps).await
    })
    .await;
    let _ = client.close().await;
    drop(driver);
    match outcome {
        Err(_) => panic!("the browser test took longer than 120 s"),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("browser steps did not finish: {e}"),
        Ok(Ok(())) => {}
    }
}
