//! Commissioning end to end against the real binary: the operator starts a
//! run over the API (or the CLI), the test plays the agent over HTTP with
//! the per-boot token taken from the rendered iPXE script, and the machine's
//! state, stored facts (versioned per run) and job follow. Bad input to the
//! agent API is refused with clear problems and never overwrites good facts.
//! (The real agent in a QEMU VM is `e2e` territory.)

mod common;
#[path = "../../anvil-power-redfish/tests/support/sushy.rs"]
#[allow(dead_code)]
mod sushy;

use common::{Server, anvil_cmd, client};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A server whose `[commissioning]` section is `section` (TOML lines).
fn server_with(section: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("anvil.toml");
    std::fs::write(&conf, format!("[commissioning]\n{section}\n")).unwrap();
    let s = Server::start_with(&["--config", conf.to_str().unwrap()]);
    // The file is read at start; the directory may go.
    drop(dir);
    s
}

struct Api {
    c: reqwest::Client,
    base: String,
    token: String,
    url: String,
}

impl Api {
    fn new(s: &Server) -> Api {
        Api {
            c: client(),
            base: s.api(""),
            token: s.token.clone(),
            url: s.url.clone(),
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .c
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let st = r.status();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .c
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let st = r.status();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn create_machine(&self, host: &str, mac: &str) -> Value {
        let (st, m) = self
            .post(
                "/machines",
                Some(json!({"hostname": host, "interfaces": [{"mac": mac}]})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{m}");
        m
    }

    /// The token on the kernel command line of the machine's iPXE script.
    async fn boot_token(&self, mac: &str) -> String {
        let script = self
            .c
            .get(format!("{}/boot/{mac}.ipxe", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let kernel = script
            .lines()
            .find(|l| l.starts_with("kernel "))
            .unwrap_or_else(|| panic!("no kernel line in {script}"));
        assert!(
            kernel.contains("/boot/files/commissioning/vmlinuz"),
            "{kernel}"
        );
        assert!(kernel.contains(&format!("anvil.mac={mac}")), "{kernel}");
        kernel
            .split_whitespace()
            .find_map(|w| w.strip_prefix("anvil.token="))
            .unwrap_or_else(|| panic!("no anvil.token in {kernel}"))
            .to_string()
    }

    async fn state(&self, host: &str) -> (String, Value) {
        let (_, m) = self.get(&format!("/machines/{host}")).await;
        (m["state"].as_str().unwrap_or("").to_string(), m)
    }

    async fn wait_state(&self, host: &str, want: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (st, m) = self.state(host).await;
            if st == want {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "{host} did not reach {want} within {within:?}: {m}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_job(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, j) = self.get(&format!("/jobs/{id}")).await;
            if j["status"] == "succeeded" || j["status"] == "failed" {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} did not end: {j}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The agent's side of the protocol.
struct Agent<'a> {
    api: &'a Api,
    token: String,
}

impl Agent<'_> {
    async fn call(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .api
            .c
            .post(format!("{}/agent{path}", self.api.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let st = r.status();
        if st != StatusCode::OK {
            assert_eq!(
                r.headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some("application/problem+json"),
                "errors are problem+json"
            );
        }
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn register(&self, mac: &str) -> (StatusCode, Value) {
        self.call(
            "/register",
            Some(json!({"mac": mac, "system_uuid": "4c4c4544-0042-3510-8052-b7c04f4e3232", "agent_version": "0.1.0", "uptime_secs": 3.2})),
        )
        .await
    }

    async fn next(&self) -> Value {
        let (st, v) = self.call("/next", None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }

    async fn report(&self, step: &Value, body: Value) -> (StatusCode, Value) {
        let id = step["id"].as_str().unwrap();
        self.call(&format!("/steps/{id}/report"), Some(body)).await
    }

    async fn report_ok(&self, step: &Value, body: Value) -> Value {
        let (st, v) = self.report(step, body).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }

    async fn facts(&self, step: &Value, facts: Value) -> (StatusCode, Value) {
        self.call(
            "/facts",
            Some(json!({"step_id": step["id"], "facts": facts})),
        )
        .await
    }

    /// Runs the inventory step: started, facts, progress, succeeded.
    async fn inventory(&self, facts: Value) -> Value {
        let next = self.next().await;
        let step = next["step"].clone();
        assert_eq!(step["kind"], "inventory", "{next}");
        assert_eq!(step["status"], "pending");
        self.report_ok(
            &step,
            json!({"seq": 1, "status": "started", "message": "collecting"}),
        )
        .await;
        let (st, v) = self.facts(&step, facts).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        self.report_ok(
            &step,
            json!({"seq": 2, "status": "progress", "message": "listening for LLDP", "progress": {"done": 1, "total": 2}}),
        )
        .await;
        self.report_ok(
            &step,
            json!({"seq": 3, "status": "succeeded", "message": "inventory posted"}),
        )
        .await
    }
}

/// A second NIC per machine that the inventory did not know before
/// commissioning: the boot MAC with its second byte group changed.
fn second_nic(mac: &str) -> String {
    format!("52:54:01{}", &mac[8..])
}

fn facts(mac: &str, disks: &[(&str, &str, u64)]) -> Value {
    json!({
        "schema_version": 1,
        "cpu": {"model": "QEMU Virtual CPU version 2.5+", "vendor": "GenuineIntel", "sockets": 1, "cores": 2, "threads": 2, "flags": ["sse4_2"]},
        "memory": {"total_bytes": 2_147_483_648u64, "dimms": [{"locator": "DIMM 0", "size_bytes": 2_147_483_648u64, "type": "RAM"}]},
        "disks": disks.iter().map(|(name, serial, size)| json!({
            "name": name, "serial": serial, "size_bytes": size, "transport": if name.starts_with("nvme") { "nvme" } else { "virtio" }
        })).collect::<Vec<_>>(),
        "nics": [{"name": "ens3", "mac": mac, "driver": "virtio_net", "link_up": true},
                 {"name": "ens4", "mac": second_nic(mac), "driver": "virtio_net", "link_up": false}],
        "dmi": {"system_vendor": "Anvil Labs", "system_product": "Testbox 9000", "system_serial": "SER-0001",
                "system_uuid": "4c4c4544-0042-3510-8052-b7c04f4e3232", "bios_version": "1.2.3"},
        "boot": {"mode": "bios"},
        "lldp": [{"interface": "ens3", "chassis_id": "aa:bb:cc:dd:ee:ff", "chassis_id_subtype": "mac_address",
                  "port_id": "swp7", "port_id_subtype": "interface_name", "system_name": "leaf1", "vlan_id": 100, "ttl": 120}],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn commission_without_bmc_versioned_facts_and_bad_agent_input() {
    let s = Server::start();
    let api = Api::new(&s);
    let mac = "52:54:00:c0:00:01";
    let m = api.create_machine("cm-1", mac).await;
    assert_eq!(m["state"], "new");
    let (st, v) = api.get("/machines/cm-1/hardware").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["type"], "https://anvil.dev/problems/not-found");

    // Run 1: no body, no BMC (the job waits for the operator's power button).
    let (st, job) = api.post("/machines/cm-1/actions/commission", None).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["kind"], "commission");
    assert_eq!(api.state("cm-1").await.0, "commissioning");
    // Commissioning twice at once is refused by the lifecycle.
    let (st, v) = api.post("/machines/cm-1/actions/commission", None).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["type"], "https://anvil.dev/problems/invalid-transition");

    let agent1 = Agent {
        api: &api,
        token: api.boot_token(mac).await,
    };
    // The MAC must be the token's machine's.
    let (st, v) = agent1.register("52:54:00:ff:ff:ff").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, reg) = agent1.register(mac).await;
    assert_eq!(st, StatusCode::OK, "{reg}");
    assert_eq!(
        (reg["hostname"].as_str(), reg["run_number"].as_i64()),
        (Some("cm-1"), Some(1))
    );
    assert_eq!(agent1.register(mac).await.1, reg, "register is idempotent");
    let (st, hb) = agent1.call("/heartbeat", Some(json!({}))).await;
    assert_eq!((st, &hb["run_state"]), (StatusCode::OK, &json!("running")));
    let ack = agent1
        .inventory(facts(mac, &[("vda", "VIRTIO-1", 10 << 30)]))
        .await;
    assert_eq!(ack["run_state"], "succeeded", "{ack}");
    let m = api
        .wait_state("cm-1", "ready", Duration::from_secs(10))
        .await;
    // Empty identity fields were filled from DMI.
    assert_eq!(
        (m["vendor"].as_str(), m["serial"].as_str()),
        (Some("Anvil Labs"), Some("SER-0001"))
    );
    // The NIC commissioning found became an interface (not a boot one);
    // the boot interface is unchanged.
    let ifaces: Vec<(String, String, bool)> = m["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["mac"].as_str().unwrap().to_string(),
                i["pxe"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        ifaces.contains(&(String::from("eth0"), mac.to_string(), true)),
        "{ifaces:?}"
    );
    assert!(
        ifaces.contains(&(String::from("ens4"), second_nic(mac), false)),
        "{ifaces:?}"
    );
    let j = api
        .wait_job(job["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["result"]["run"], 1);
    // The run is over: the token still learns how it ended, nothing more.
    assert_eq!(agent1.next().await["action"], "poweroff");
    let (st, v) = agent1.register(mac).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["type"], "https://anvil.dev/problems/run-ended");

    let (st, hw1) = api.get("/machines/cm-1/hardware").await;
    assert_eq!(st, StatusCode::OK, "{hw1}");
    assert_eq!(hw1["run_number"], 1);
    assert_eq!(hw1["facts"]["disks"][0]["serial"], "VIRTIO-1");
    assert_eq!(hw1["facts"]["lldp"][0]["system_name"], "leaf1");

    // Run 2, with a CPU test.
    let (st, job2) = api
        .post(
            "/machines/cm-1/actions/commission",
            Some(json!({"tests": ["cpu"]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job2}");
    let agent = Agent {
        api: &api,
        token: api.boot_token(mac).await,
    };
    assert_ne!(agent.token, agent1.token, "a token per boot");
    // Unknown tokens: 401.
    let stranger = Agent {
        api: &api,
        token: "not-a-token".into(),
    };
    let (st, v) = stranger.register(mac).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("agent token"), "{v}");
    let r = api
        .c
        .post(format!("{}/agent/next", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The operator's API token is not an agent token either.
    let op = Agent {
        api: &api,
        token: api.token.clone(),
    };
    assert_eq!(op.call("/next", None).await.0, StatusCode::UNAUTHORIZED);

    assert_eq!(agent.register(mac).await.0, StatusCode::OK);
    let next = agent.next().await;
    let inv = next["step"].clone();
    assert_eq!(inv["kind"], "inventory");
    // The CPU test cannot start before the inventory has finished.
    let runs = api.get("/machines/cm-1/commissioning-runs").await.1;
    assert_eq!(runs["items"][0]["number"], 2);
    assert_eq!(runs["items"][1]["state"], "succeeded");
    let cpu = runs["items"][0]["steps"][1].clone();
    assert_eq!(cpu["kind"], "cpu_test");
    let (st, v) = agent
        .report(&cpu, json!({"seq": 1, "status": "started"}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["type"], "https://anvil.dev/problems/out-of-order");
    // Out of order: a first report that is not `started`, a gap.
    let (st, v) = agent
        .report(&inv, json!({"seq": 1, "status": "succeeded"}))
        .await;
    assert_eq!(
        (st, v["type"].as_str()),
        (
            StatusCode::CONFLICT,
            Some("https://anvil.dev/problems/out-of-order")
        )
    );
    agent
        .report_ok(&inv, json!({"seq": 1, "status": "started"}))
        .await;
    // A replay of an accepted report.
    let (st, v) = agent
        .report(&inv, json!({"seq": 1, "status": "started"}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["type"], "https://anvil.dev/problems/already-reported");
    let (st, v) = agent
        .report(&inv, json!({"seq": 3, "status": "progress"}))
        .await;
    assert_eq!(
        (st, v["type"].as_str()),
        (
            StatusCode::CONFLICT,
            Some("https://anvil.dev/problems/out-of-order")
        ),
        "{v}"
    );
    // The inventory cannot succeed before its facts are posted.
    let (st, v) = agent
        .report(&inv, json!({"seq": 2, "status": "succeeded"}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("facts"), "{v}");
    // Malformed reports: 422 naming the field.
    let (st, v) = agent
        .report(&inv, json!({"seq": 2, "status": "done"}))
        .await;
    assert_eq!(
        (st, v["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("status")),
        "{v}"
    );
    let (st, v) = agent
        .report(
            &inv,
            json!({"seq": 2, "status": "progress", "progress": {"done": 9, "total": 1}}),
        )
        .await;
    assert_eq!(
        (st, v["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("progress")),
        "{v}"
    );
    // Oversize: a report over 256 KiB, facts over 1 MiB.
    let (st, v) = agent
        .report(
            &inv,
            json!({"seq": 2, "status": "progress", "result": {"blob": "x".repeat(300 * 1024)}}),
        )
        .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["type"], "https://anvil.dev/problems/payload-too-large");
    let mut huge = facts(mac, &[("vda", "VIRTIO-1", 1)]);
    huge["problems"] = json!(["y".repeat(1100 * 1024)]);
    let (st, v) = agent.facts(&inv, huge).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // Invalid facts: 422, and the stored facts are untouched.
    let mut bad = facts(mac, &[("vda", "VIRTIO-1", 10 << 30)]);
    bad["nics"][0]["mac"] = json!("52:54:00");
    let (st, v) = agent.facts(&inv, bad).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("nics[0].mac"), "{v}");
    let (st, v) = agent.facts(&inv, json!({"schema_version": 99})).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (st, v) = agent.facts(&inv, json!("not an object")).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (_, still) = api.get("/machines/cm-1/hardware").await;
    assert_eq!(still, hw1, "rejected uploads leave the stored facts alone");
    // Unknown step ids: 404.
    let (st, _) = agent
        .call(
            "/steps/00000000-0000-0000-0000-000000000000/report",
            Some(json!({"seq": 1, "status": "started"})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Facts for the CPU step are refused.
    let (st, _) = agent.facts(&cpu, facts(mac, &[])).await;
    assert_eq!(st, StatusCode::CONFLICT);

    // Now the run proper: a changed disk set, then the CPU test.
    let (st, v) = agent
        .facts(
            &inv,
            facts(
                mac,
                &[
                    ("vda", "VIRTIO-1", 10 << 30),
                    ("nvme0n1", "NVME-2", 20 << 30),
                ],
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["run_number"], 2);
    let ack = agent
        .report_ok(
            &inv,
            json!({"seq": 2, "status": "succeeded", "message": "inventory posted"}),
        )
        .await;
    assert_eq!(ack["run_state"], "running");
    assert_eq!(api.state("cm-1").await.0, "commissioning");
    let next = agent.next().await;
    assert_eq!(next["step"]["id"], cpu["id"]);
    assert_eq!(next["step"]["params"]["duration_secs"], 60);
    agent
        .report_ok(&cpu, json!({"seq": 1, "status": "started"}))
        .await;
    // `next` hands out a started step with its last seq (never to be re-run).
    let again = agent.next().await;
    assert_eq!(
        (
            again["step"]["status"].as_str(),
            again["step"]["last_seq"].as_u64()
        ),
        (Some("started"), Some(1))
    );
    agent
        .report_ok(
            &cpu,
            json!({"seq": 2, "status": "succeeded", "result": {"bogo_ops": 12345, "errors": 0}}),
        )
        .await;
    api.wait_state("cm-1", "ready", Duration::from_secs(10))
        .await;
    // Finished steps take nothing more.
    let (st, v) = agent
        .report(&cpu, json!({"seq": 3, "status": "failed"}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");

    let (_, hw2) = api.get("/machines/cm-1/hardware").await;
    assert_eq!(hw2["run_number"], 2);
    assert_eq!(hw2["runs_with_facts"], json!([2, 1]));
    let serials: Vec<&str> = hw2["facts"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials, ["VIRTIO-1", "NVME-2"]);
    let (st, old) = api.get("/machines/cm-1/hardware?run=1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(old["facts"], hw1["facts"], "run 1's facts are kept");
    let (st, v) = api.get("/machines/cm-1/hardware?run=7").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["type"], "https://anvil.dev/problems/not-found");
    let (st, _) = api.get("/machines/cm-1/hardware?run=x").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let runs = api.get("/machines/cm-1/commissioning-runs").await.1;
    let steps = &runs["items"][0]["steps"];
    assert_eq!(steps[1]["result"]["bogo_ops"], 12345);
    assert_eq!(
        runs["items"][0]["system_uuid"],
        "4c4c4544-0042-3510-8052-b7c04f4e3232"
    );

    // Every accepted report is on the boot timeline.
    let (_, tl) = api.get("/machines/cm-1/boot-timeline").await;
    let kinds: Vec<&str> = tl["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in [
        "http.script",
        "agent.register",
        "agent.step",
        "agent.facts",
        "commission.end",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    // The agent reporting in completes the boot, as a call-home does.
    assert_eq!(tl["complete"], true, "{tl}");
    // The tokens are nowhere in the store's answers or the event log.
    let (_, events) = api.get("/events?limit=1000").await;
    let text = events.to_string() + &runs.to_string();
    assert!(!text.contains(&agent.token));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_hardware_test_fails_the_machine_with_its_result() {
    let s = Server::start();
    let api = Api::new(&s);
    let mac = "52:54:00:c0:00:02";
    api.create_machine("cm-2", mac).await;
    let (st, job) = api
        .post(
            "/machines/cm-2/actions/commission",
            Some(json!({"tests": ["memory", "cpu"]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["params"]["tests"], json!(["cpu", "memory"]));
    let agent = Agent {
        api: &api,
        token: api.boot_token(mac).await,
    };
    assert_eq!(agent.register(mac).await.0, StatusCode::OK);
    agent.inventory(facts(mac, &[("vda", "S1", 1 << 30)])).await;
    let cpu = agent.next().await["step"].clone();
    assert_eq!(cpu["kind"], "cpu_test");
    agent
        .report_ok(&cpu, json!({"seq": 1, "status": "started"}))
        .await;
    agent
        .report_ok(&cpu, json!({"seq": 2, "status": "succeeded"}))
        .await;
    let mem = agent.next().await["step"].clone();
    assert_eq!(mem["kind"], "memory_test");
    assert_eq!(mem["params"]["percent_of_available"], 50);
    agent
        .report_ok(&mem, json!({"seq": 1, "status": "started"}))
        .await;
    let ack = agent
        .report_ok(
            &mem,
            json!({"seq": 2, "status": "failed", "message": "3 mismatches", "result": {"errors": 3, "bytes_tested": 1_073_741_824u64, "summary": "pattern 0x55 at 0x7f001000"}}),
        )
        .await;
    assert_eq!(ack["run_state"], "failed");
    let m = api
        .wait_state("cm-2", "failed", Duration::from_secs(10))
        .await;
    assert_eq!(
        m["state_reason"],
        "memory_test failed: 3 mismatches (pattern 0x55 at 0x7f001000)"
    );
    let j = api
        .wait_job(job["id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(j["status"], "failed");
    assert!(
        j["error"].as_str().unwrap().contains("memory_test failed"),
        "{j}"
    );
    let runs = api.get("/machines/cm-2/commissioning-runs").await.1;
    let run = &runs["items"][0];
    assert_eq!(
        (run["state"].as_str(), run["failed_step"].as_str()),
        (Some("failed"), Some("memory_test"))
    );
    assert_eq!(run["steps"][2]["result"]["errors"], 3);
    // The agent is told the run is over and stays up for the operator.
    let next = agent.next().await;
    assert_eq!(
        (next["action"].as_str(), next["run_state"].as_str()),
        (Some("done"), Some("failed"))
    );
    // Facts of the failed run were stored; a failed machine may be commissioned again.
    assert_eq!(api.get("/machines/cm-2/hardware").await.0, StatusCode::OK);
    let (st, _) = api
        .post("/machines/cm-2/actions/commission", Some(json!({})))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    // Unknown tests are refused.
    let (st, v) = api
        .post(
            "/machines/cm-2/actions/commission",
            Some(json!({"tests": ["gpu"]})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_that_never_end_fail_after_the_timeout_naming_the_step() {
    let s = server_with("timeout_secs = 2");
    let api = Api::new(&s);
    let (silent, hung) = ("52:54:00:c0:00:03", "52:54:00:c0:00:04");
    api.create_machine("silent", silent).await;
    api.create_machine("hung", hung).await;
    let (st, v) = api
        .post(
            "/actions/commission",
            Some(json!({"machines": ["silent", "hung"]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let agent = Agent {
        api: &api,
        token: api.boot_token(hung).await,
    };
    assert_eq!(agent.register(hung).await.0, StatusCode::OK);
    let step = agent.next().await["step"].clone();
    agent
        .report_ok(
            &step,
            json!({"seq": 1, "status": "started", "message": "listening for LLDP"}),
        )
        .await;
    let m = api
        .wait_state("silent", "failed", Duration::from_secs(15))
        .await;
    assert_eq!(
        m["state_reason"],
        "commissioning timed out after 2 s: no agent registered"
    );
    let m = api
        .wait_state("hung", "failed", Duration::from_secs(15))
        .await;
    let reason = m["state_reason"].as_str().unwrap();
    assert!(reason.contains("step 0 inventory hung"), "{reason}");
    assert!(reason.contains("listening for LLDP"), "{reason}");
    for j in v["items"].as_array().unwrap() {
        let j = api
            .wait_job(j["id"].as_str().unwrap(), Duration::from_secs(10))
            .await;
        assert_eq!(j["status"], "failed", "{j}");
    }
    // The late agent learns the run is over.
    let (st, v) = agent
        .report(&step, json!({"seq": 2, "status": "succeeded"}))
        .await;
    assert_eq!(
        (st, v["type"].as_str()),
        (
            StatusCode::CONFLICT,
            Some("https://anvil.dev/problems/run-ended")
        )
    );
    assert_eq!(agent.next().await["action"], "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_abort_ends_the_run_and_the_token() {
    let s = Server::start();
    let api = Api::new(&s);
    let mac = "52:54:00:c0:00:05";
    api.create_machine("ab-1", mac).await;
    // Moving a machine to `commissioning` by its state runs commissioning,
    // exactly as the action does (a run, a job, a token in its script).
    let (st, m) = api
        .post(
            "/machines/ab-1/state",
            Some(json!({"state": "commissioning"})),
        )
        .await;
    assert_eq!(
        (st, m["state"].as_str()),
        (StatusCode::OK, Some("commissioning")),
        "{m}"
    );
    let (_, jobs) = api.get("/machines/ab-1/jobs").await;
    assert_eq!(jobs["items"][0]["kind"], "commission", "{jobs}");
    let agent = Agent {
        api: &api,
        token: api.boot_token(mac).await,
    };
    assert_eq!(agent.register(mac).await.0, StatusCode::OK);
    let (st, v) = api
        .post("/machines/ab-1/state", Some(json!({"state": "new"})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = agent.register(mac).await;
    assert_eq!(
        (st, v["type"].as_str()),
        (
            StatusCode::CONFLICT,
            Some("https://anvil.dev/problems/run-ended")
        ),
        "{v}"
    );
    let (_, hb) = agent.call("/heartbeat", None).await;
    assert_eq!(hb["run_state"], "aborted");
    let runs = api.get("/machines/ab-1/commissioning-runs").await.1;
    assert_eq!(runs["items"][0]["state"], "aborted");
    assert_eq!(api.state("ab-1").await.0, "new");
    // Its boot script no longer carries a token (a `new` machine boots
    // discovery).
    let script = api
        .c
        .get(format!("{}/boot/{mac}.ipxe", api.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!script.contains("anvil.token"), "{script}");
}

/// With a BMC (sushy-tools' Redfish emulator), through the CLI: `anvil
/// machine commission --wait` powers the machine on with network boot, the
/// test's agent commissions it, the machine ends `ready` and powered off.
#[test]
fn cli_commission_with_a_redfish_bmc_powers_on_and_off() {
    if sushy::skipped() {
        return;
    }
    let mac = "52:54:00:aa:00:31";
    let bmc = sushy::Sushy::start(
        &[sushy::FakeSystem {
            uuid: "31313131-3131-3131-3131-313131313131",
            name: "cm-bmc",
            power_on: false,
            macs: &["52:54:00:aa:00:31"],
            disk_bytes: None,
        }],
        &[("admin", "pw-cm")],
    );
    let s = Server::start();
    let out = anvil_cmd(&s)
        .args([
            "enroll",
            "--driver",
            "redfish",
            "--address",
            &bmc.address(),
            "--username",
            "admin",
            "--password-env",
            "BMCPW",
            "--hostname",
            "cm-bmc",
            "-o",
            "json",
        ])
        .env("BMCPW", "pw-cm")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = Api::new(&s);
    // The CLI waits; the agent plays along from another thread.
    let cli = {
        let mut cmd = anvil_cmd(&s);
        cmd.args([
            "machine",
            "commission",
            "cm-bmc",
            "--tests",
            "cpu",
            "--wait",
            "-o",
            "json",
        ]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    rt.block_on(async {
        api.wait_state("cm-bmc", "commissioning", Duration::from_secs(20))
            .await;
        let agent = Agent {
            api: &api,
            token: api.boot_token(mac).await,
        };
        assert_eq!(agent.register(mac).await.0, StatusCode::OK);
        agent
            .inventory(facts(mac, &[("sda", "S-1", 1 << 30)]))
            .await;
        let cpu = agent.next().await["step"].clone();
        agent
            .report_ok(&cpu, json!({"seq": 1, "status": "started"}))
            .await;
        agent
            .report_ok(&cpu, json!({"seq": 2, "status": "succeeded"}))
            .await;
    });
    let out = cli.join().unwrap();
    assert!(
        out.status.success(),
        "commission --wait failed ({:?}): {}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs[0]["status"], "succeeded", "{jobs}");
    assert_eq!(
        jobs[0]["result"]["power_state"], "off",
        "powered off when done"
    );
    rt.block_on(async {
        let (_, m) = api.state("cm-bmc").await;
        assert_eq!(
            (m["state"].as_str(), m["power_state"].as_str()),
            (Some("ready"), Some("off")),
            "{m}"
        );
        // The BMC was asked to boot from the network once.
        let (_, events) = api.get("/machines/cm-bmc/events").await;
        assert!(events.to_string().contains("commission.start"), "{events}");
    });

    // A failing run: the CLI exits with 8 (job failed).
    let cli = {
        let mut cmd = anvil_cmd(&s);
        cmd.args(["machine", "commission", "cm-bmc", "--wait"]);
        std::thread::spawn(move || cmd.output().unwrap())
    };
    rt.block_on(async {
        api.wait_state("cm-bmc", "commissioning", Duration::from_secs(20))
            .await;
        let agent = Agent {
            api: &api,
            token: api.boot_token(mac).await,
        };
        agent.register(mac).await;
        let inv = agent.next().await["step"].clone();
        agent
            .report_ok(&inv, json!({"seq": 1, "status": "started"}))
            .await;
        agent
            .report_ok(
                &inv,
                json!({"seq": 2, "status": "failed", "message": "no disks readable"}),
            )
            .await;
    });
    let out = cli.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inventory failed: no disks readable"), "{err}");
}

/// `[commissioning] on_discovery`: an unknown machine's first iPXE script
/// already boots the commissioning ramdisk with a token, and the machine is
/// created and commissioned in that one boot.
#[tokio::test(flavor = "multi_thread")]
async fn on_discovery_an_unknown_machine_is_commissioned_in_its_first_boot() {
    let s = server_with("on_discovery = true");
    let api = Api::new(&s);
    let mac = "52:54:00:c0:00:06";
    let token = api.boot_token(mac).await;
    let host = "node-525400c00006";
    let m = api
        .wait_state(host, "commissioning", Duration::from_secs(5))
        .await;
    assert_eq!(m["interfaces"][0]["mac"], mac);
    let agent = Agent { api: &api, token };
    assert_eq!(agent.register(mac).await.0, StatusCode::OK);
    agent
        .inventory(facts(mac, &[("vda", "D-1", 1 << 30)]))
        .await;
    api.wait_state(host, "ready", Duration::from_secs(10)).await;
    // A machine that was commissioned once is not commissioned again by
    // booting: ready machines boot their disk.
    let script = api
        .c
        .get(format!("{}/boot/{mac}.ipxe", api.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!script.contains("anvil.token"), "{script}");
    let runs = api
        .get(&format!("/machines/{host}/commissioning-runs"))
        .await
        .1;
    assert_eq!(runs["items"].as_array().unwrap().len(), 1);
    // It was commissioned in the boot it was in, not asked to boot again.
    let events = api
        .get(&format!("/machines/{host}/events"))
        .await
        .1
        .to_string();
    assert!(events.contains("commission.on-discovery"), "{events}");
    assert!(!events.contains("commission.manual-power"), "{events}");
}

/// Creates a machine, starts commissioning it without a BMC and registers
/// its agent: the job's id and the agent's token.
async fn commission_and_register(api: &Api, host: &str, mac: &str) -> (String, String) {
    api.create_machine(host, mac).await;
    let (st, job) = api
        .post(&format!("/machines/{host}/actions/commission"), None)
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let token = api.boot_token(mac).await;
    let agent = Agent {
        api,
        token: token.clone(),
    };
    assert_eq!(agent.register(mac).await.0, StatusCode::OK);
    (job["id"].as_str().unwrap().to_string(), token)
}

/// Anvil crashes (SIGKILL) in the middle of a commissioning run and is
/// started again on the same data directory. The run's job is not failed:
/// the new process takes it over (the run lives in the store), the agent
/// goes on where it was, and the job ends with the run. A power job left
/// hanging on a BMC that never answers is failed as interrupted: whether
/// its BMC call happened cannot be known.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_crash_a_run_job_goes_on_and_a_power_job_is_failed_as_interrupted() {
    let mut s = Server::start();
    let mac = "52:54:00:c0:0e:01";
    // A "BMC" that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = format!("http://{}", silent.local_addr().unwrap());
    let (run_job, power_job, token) = {
        let api = Api::new(&s);
        let (job, token) = commission_and_register(&api, "rs-1", mac).await;

        let (st, m) = api
            .post(
                "/machines",
                Some(json!({"hostname": "rs-2", "interfaces": [{"mac": "52:54:00:c0:0e:02"}],
                    "bmc": {"driver": "redfish", "address": silent_addr, "username": "u", "password": "p"}})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{m}");
        let (st, power) = api.post("/machines/rs-2/actions/power-on", None).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{power}");
        let id = power["id"].as_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while api.get(&format!("/jobs/{id}")).await.1["status"] != "running" {
            assert!(Instant::now() < deadline, "the power job did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (job, id, token)
    };

    // Crash: no clean shutdown, nothing marked.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let (child, url) = common::spawn_serve(s.data_path(), &[]);
    (s.child, s.url) = (child, url);
    let api = Api::new(&s);

    let (_, j) = api.get(&format!("/jobs/{run_job}")).await;
    assert_eq!(j["status"], "running", "the run's job goes on: {j}");
    let (_, p) = api.get(&format!("/jobs/{power_job}")).await;
    assert_eq!(p["status"], "failed", "{p}");
    assert_eq!(
        p["error"], "interrupted: the anvil instance running it stopped",
        "{p}"
    );

    // The agent never noticed: it goes on with the new process.
    let agent = Agent { api: &api, token };
    let ack = agent
        .inventory(facts(mac, &[("vda", "VIRTIO-1", 10 << 30)]))
        .await;
    assert_eq!(ack["run_state"], "succeeded", "{ack}");
    let j = api.wait_job(&run_job, Duration::from_secs(10)).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["result"]["run"], 1, "{j}");
    assert_eq!(api.state("rs-1").await.0, "ready");
    drop(silent);
}

/// Two instances share one PostgreSQL database. Starting the second does
/// not fail the first one's running job (it used to: every start failed
/// all running jobs); once the first stops, the second takes its run's job
/// over and ends it with the run.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_instance_leaves_a_live_ones_jobs_alone_and_takes_them_over_when_it_stops() {
    let Some(db) = common::ScratchPg::create("anvil_instances").await else {
        return;
    };
    let url = db.url.clone();
    let mut first = Server::start_with(&["--database-url", &url]);
    let mac = "52:54:00:c0:0e:11";
    let (run_job, token) = {
        let api = Api::new(&first);
        commission_and_register(&api, "pg-rs-1", mac).await
    };

    let second = Server::start_with(&["--database-url", &url]);
    let api2 = Api::new(&second);
    let (_, j) = api2.get(&format!("/jobs/{run_job}")).await;
    assert_eq!(j["status"], "running", "a live instance's job: {j}");
    // The first, running longer, leads (NetBox sync, power poller).
    let roles = |v: Value| -> Vec<(bool, bool, bool)> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let b = |k: &str| i[k].as_bool().unwrap();
                (b("this"), b("live"), b("leader"))
            })
            .collect()
    };
    assert_eq!(
        roles(api2.get("/instances").await.1),
        [(true, true, false), (false, true, true)],
        "newest first: the second answers, the first leads"
    );

    // The first instance stops cleanly; the second takes the job over at
    // its next look for orphans (every 15 s), and the lead at once.
    first.terminate();
    assert_eq!(
        roles(api2.get("/instances").await.1),
        [(true, true, true), (false, false, false)]
    );
    let agent = Agent { api: &api2, token };
    let ack = agent
        .inventory(facts(mac, &[("vda", "VIRTIO-1", 10 << 30)]))
        .await;
    assert_eq!(ack["run_state"], "succeeded", "{ack}");
    let j = api2.wait_job(&run_job, Duration::from_secs(40)).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    let log = std::fs::read_to_string(second.data_path().join("serve.log")).unwrap();
    assert!(log.contains("took over a run's job"), "{log}");

    drop((first, second, db));
}
