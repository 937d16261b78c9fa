//! Deployment, rescue and release end to end against the real binary, with
//! the test playing the agent over HTTP exactly as `anvil-agent` does: the
//! per-boot token comes from the rendered iPXE script, every step is
//! reported in sequence, and the image, its zero map and the cloud-init
//! partition are fetched from the URLs the steps name. The image bytes are
//! reassembled from the stream and the map and compared with the imported
//! disk; the cloud-init partition is read back with mtools. (The real agent
//! writing a real disk in a QEMU VM is `e2e_deploy.rs`.)
//!
//! Flow: commission → deploy → deployed (boot script boots the disk) →
//! rescue → exit-rescue → deployed → release → ready → a deploy whose
//! write_image fails → failed, never deployed; an image in use cannot be
//! deleted, and can once nothing uses it.

mod common;
#[path = "../../anvil-power-redfish/tests/support/sushy.rs"]
#[allow(dead_code)]
mod sushy;

use common::{Server, anvil_cmd, client};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example";
const MAC: &str = "52:54:00:d0:00:01";
const GIB: u64 = 1 << 30;

struct Api {
    c: reqwest::Client,
    base: String,
    token: String,
    url: String,
}

impl Api {
    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = req.bearer_auth(&self.token).send().await.unwrap();
        let st = r.status();
        if !st.is_success() {
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

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.c.get(format!("{}{path}", self.base))).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.c.post(format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    async fn delete(&self, path: &str) -> StatusCode {
        self.c
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn script(&self, mac: &str) -> String {
        self.c
            .get(format!("{}/boot/{mac}.ipxe", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The token on the kernel command line of the machine's iPXE script:
    /// every agent stage boots the same ramdisk.
    async fn boot_token(&self, mac: &str) -> String {
        let script = self.script(mac).await;
        let kernel = script
            .lines()
            .find(|l| l.starts_with("kernel "))
            .unwrap_or_else(|| panic!("no kernel line in {script}"));
        assert!(
            kernel.contains("/boot/files/commissioning/vmlinuz"),
            "{kernel}"
        );
        kernel
            .split_whitespace()
            .find_map(|w| w.strip_prefix("anvil.token="))
            .unwrap_or_else(|| panic!("no anvil.token in {kernel}"))
            .to_string()
    }

    async fn state(&self, host: &str) -> Value {
        self.get(&format!("/machines/{host}")).await.1
    }

    async fn wait_state(&self, host: &str, want: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = self.state(host).await;
            if m["state"] == want {
                return m;
            }
            assert!(Instant::now() < deadline, "{host} never {want}: {m}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_job(&self, id: &Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, j) = self.get(&format!("/jobs/{}", id.as_str().unwrap())).await;
            if j["status"] == "succeeded" || j["status"] == "failed" {
                return j;
            }
            assert!(Instant::now() < deadline, "job never ended: {j}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

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
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn register(&self) -> Value {
        let (st, v) = self
            .call(
                "/register",
                Some(json!({"mac": MAC, "agent_version": "0.1.0"})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }

    async fn next(&self) -> Value {
        let (st, v) = self.call("/next", None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }

    /// The next step, which must be of `kind`.
    async fn step(&self, kind: &str) -> Value {
        let next = self.next().await;
        assert_eq!(next["step"]["kind"], kind, "{next}");
        assert_eq!(next["step"]["status"], "pending", "{next}");
        next["step"].clone()
    }

    async fn report(&self, step: &Value, body: Value) -> Value {
        let id = step["id"].as_str().unwrap();
        let (st, v) = self.call(&format!("/steps/{id}/report"), Some(body)).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }

    /// started, succeeded; returns the ack of the last report.
    async fn succeed(&self, step: &Value, message: &str) -> Value {
        self.report(step, json!({"seq": 1, "status": "started"}))
            .await;
        self.report(
            step,
            json!({"seq": 2, "status": "succeeded", "message": message}),
        )
        .await
    }

    async fn fetch(&self, url: &str) -> reqwest::Response {
        self.api
            .c
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }
}

fn facts() -> Value {
    let disk = |name: &str, serial: &str, size: u64, removable: bool| json!({"name": name, "serial": serial, "size_bytes": size, "transport": "virtio", "removable": removable});
    json!({
        "schema_version": 1,
        "cpu": {"model": "QEMU Virtual CPU", "vendor": "GenuineIntel", "sockets": 1, "cores": 1, "threads": 1, "flags": []},
        "memory": {"total_bytes": GIB, "dimms": []},
        "disks": [disk("vda", "SMALL-1", 2 * GIB, false), disk("vdb", "BIG-1", 8 * GIB, false), disk("sda", "USB-1", 16 * GIB, true)],
        "nics": [{"name": "ens3", "mac": MAC, "driver": "virtio_net", "link_up": true}],
        "dmi": {"system_vendor": "Anvil Labs"},
        "boot": {"mode": "bios"},
    })
}

/// An 8 MiB disk with data at the start, in the middle and at the end, and
/// zeros in between (so the map has ranges and the stream skips them).
fn make_image(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let mut disk = vec![0u8; 8 << 20];
    for (i, b) in disk[..200_000].iter_mut().enumerate() {
        *b = (i % 253) as u8 | 1;
    }
    disk[3 << 20..(3 << 20) + 70_000].fill(0x5a);
    let n = disk.len();
    disk[n - 4096..].fill(0xa5);
    let path = dir.join("deploy-test.raw");
    std::fs::write(&path, &disk).unwrap();
    (path, disk)
}

/// The raw disk from the non-zero stream and the zero map (`ANVZMAP1`).
fn reassemble(stream: &[u8], map: &[u8]) -> Vec<u8> {
    assert_eq!(&map[..8], b"ANVZMAP1");
    let word = |i: usize| u64::from_le_bytes(map[i..i + 8].try_into().unwrap());
    let raw_size = word(16) as usize;
    let count = word(24) as usize;
    assert_eq!(map.len(), 32 + 16 * count, "map length");
    let mut out = vec![0u8; raw_size];
    let (mut pos, mut taken) = (0usize, 0usize);
    let mut copy_until = |end: usize, pos: &mut usize| {
        let n = end - *pos;
        out[*pos..end].copy_from_slice(&stream[taken..taken + n]);
        taken += n;
        *pos = end;
    };
    for r in 0..count {
        let start = word(32 + 16 * r) as usize;
        let len = word(40 + 16 * r) as usize;
        copy_until(start, &mut pos);
        pos = start + len;
    }
    copy_until(raw_size, &mut pos);
    assert_eq!(
        taken,
        stream.len(),
        "the stream has exactly the non-zero bytes"
    );
    out
}

fn mtools(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_rescue_release_and_a_failed_write() {
    flow(Server::start()).await;
}

/// The same flow on PostgreSQL (a scratch database, dropped afterwards).
#[tokio::test(flavor = "multi_thread")]
async fn deploy_rescue_release_and_a_failed_write_on_postgres() {
    let Some(db) = common::ScratchPg::create("anvil_deploy").await else {
        return;
    };
    flow(Server::start_with(&["--database-url", &db.url])).await;
}

async fn flow(s: Server) {
    let api = Api {
        c: client(),
        base: s.api(""),
        token: s.token.clone(),
        url: s.url.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let (image_path, image_bytes) = make_image(dir.path());
    let image_sha = hex::encode(Sha256::digest(&image_bytes));
    let (st, img) = api
        .post(
            "/images",
            Some(json!({"path": image_path.to_str().unwrap(), "name": "deb-test"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{img}");
    assert_eq!(img["sha256"], image_sha);

    let (st, m) = api
        .post(
            "/machines",
            Some(json!({"hostname": "dep-1", "interfaces": [{"mac": MAC}]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    let machine_id = m["id"].as_str().unwrap().to_string();

    // Never commissioned: `new` cannot deploy.
    let (st, v) = api
        .post(
            "/machines/dep-1/actions/deploy",
            Some(json!({"image": "deb-test"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["type"], "https://anvil.dev/problems/invalid-transition");

    // Commission (no BMC: the test is the operator's power button and the agent).
    let (st, _) = api.post("/machines/dep-1/actions/commission", None).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    assert_eq!(agent.register().await["purpose"], "commissioning");
    let inv = agent.step("inventory").await;
    agent
        .report(&inv, json!({"seq": 1, "status": "started"}))
        .await;
    let (st, v) = agent
        .call(
            "/facts",
            Some(json!({"step_id": inv["id"], "facts": facts()})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    agent
        .report(&inv, json!({"seq": 2, "status": "succeeded"}))
        .await;
    api.wait_state("dep-1", "ready").await;

    // Refusals before anything starts: each names what is wrong.
    for (body, status, needle) in [
        (json!({"image": "nope"}), 422, "no image named \"nope\""),
        (
            json!({"image": "deb-test", "root_disk": "name=sdz"}),
            422,
            "root disk hint name=sdz matches no writable disk",
        ),
        // The removable disk is never a root disk.
        (
            json!({"image": "deb-test", "root_disk": "serial=USB-1"}),
            422,
            "sda (17179869184 bytes, serial USB-1, removable)",
        ),
        (
            json!({"image": "deb-test", "ssh_keys": ["ssh-ed25519 not-base64!"]}),
            422,
            "ssh_keys[0]",
        ),
        (
            json!({"image": "deb-test", "user_data": "x".repeat(64 * 1024 + 1)}),
            413,
            "user_data",
        ),
        (
            json!({"image": "deb-test", "root_disk": "biggest"}),
            422,
            "root disk hint",
        ),
    ] {
        let (st, v) = api.post("/machines/dep-1/actions/deploy", Some(body)).await;
        assert_eq!(st.as_u16(), status, "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains(needle),
            "{needle}: {v}"
        );
    }
    assert_eq!(
        api.state("dep-1").await["state"],
        "ready",
        "nothing started"
    );
    // A deploy needs a body.
    let r = api
        .c
        .post(format!("{}/machines/dep-1/actions/deploy", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());

    // Deploy.
    let user_data = "#cloud-config\npassword: hunter2\nchpasswd: {expire: false}\n";
    let (st, job) = api
        .post(
            "/machines/dep-1/actions/deploy",
            Some(json!({"image": "deb-test", "ssh_keys": [KEY], "user_data": user_data, "root_disk": "largest"})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["kind"], "deploy");
    assert_eq!(api.state("dep-1").await["state"], "deploying");
    // In use from the start of the deployment.
    assert_eq!(api.delete("/images/deb-test").await, StatusCode::CONFLICT);
    assert_eq!(
        api.get("/images/deb-test").await.1["used_by"],
        json!(["dep-1"])
    );
    let (st, v) = api
        .post(
            "/machines/dep-1/actions/deploy",
            Some(json!({"image": "deb-test"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "deploying twice: {v}");

    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    assert_eq!(agent.register().await["purpose"], "deployment");

    let erase = agent.step("erase").await;
    assert_eq!(erase["params"]["mode"], "quick");
    assert_eq!(erase["params"]["disks"][0]["name"], "vdb", "largest");
    assert_eq!(erase["params"]["disks"].as_array().unwrap().len(), 1);
    agent.succeed(&erase, "wiped vdb").await;

    let write = agent.step("write_image").await;
    let p = &write["params"];
    assert_eq!(p["sha256"], image_sha);
    assert_eq!(p["raw_size"], image_bytes.len());
    assert_eq!(p["disk"]["serial"], "BIG-1");
    let url = p["url"].as_str().unwrap();
    assert_eq!(url, format!("{}/api/v1/agent/images/{image_sha}", s.url));
    // The operator's token, another sha: refused.
    let r = api.c.get(url).bearer_auth(&api.token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let other = format!("{}/api/v1/agent/images/{}", s.url, "0".repeat(64));
    assert_eq!(agent.fetch(&other).await.status(), StatusCode::FORBIDDEN);
    let r = agent.fetch(url).await;
    assert_eq!(r.status(), StatusCode::OK);
    let len: u64 = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let stream = r.bytes().await.unwrap();
    assert_eq!(stream.len() as u64, len);
    assert!(
        len < image_bytes.len() as u64 / 2,
        "zero ranges are skipped: {len} of {} bytes",
        image_bytes.len()
    );
    let map = agent.fetch(p["zeromap_url"].as_str().unwrap()).await;
    assert_eq!(map.status(), StatusCode::OK);
    let map = map.bytes().await.unwrap();
    let disk = reassemble(&stream, &map);
    assert!(
        disk == image_bytes,
        "the reassembled image is the imported one"
    );
    assert_eq!(hex::encode(Sha256::digest(&disk)), image_sha);
    agent
        .report(&write, json!({"seq": 1, "status": "started"}))
        .await;
    agent
        .report(
            &write,
            json!({"seq": 2, "status": "progress", "progress": {"done": 4 << 20, "total": 8 << 20}, "message": "4 MiB written"}),
        )
        .await;
    agent
        .report(
            &write,
            json!({"seq": 3, "status": "succeeded", "result": {"sha256": image_sha}}),
        )
        .await;

    let grow = agent.step("grow_root").await;
    assert!(grow["params"]["reserve_end_bytes"].as_u64().unwrap() >= 17 << 20);
    agent.succeed(&grow, "root grown").await;

    let ci = agent.step("cloud_init").await;
    let cp = &ci["params"];
    assert_eq!(cp["label"], "CIDATA");
    assert_eq!(cp["url"], format!("{}/api/v1/agent/cloud-init", s.url));
    let fat = agent.fetch(cp["url"].as_str().unwrap()).await;
    assert_eq!(fat.status(), StatusCode::OK);
    let fat = fat.bytes().await.unwrap();
    assert_eq!(fat.len() as u64, cp["size_bytes"].as_u64().unwrap());
    assert_eq!(hex::encode(Sha256::digest(&fat)), cp["sha256"]);
    let img = dir.path().join("cidata.img");
    std::fs::write(&img, &fat).unwrap();
    let i = img.to_str().unwrap();
    assert!(
        mtools(&["mlabel", "-i", i, "-s", "::"]).contains("CIDATA"),
        "label"
    );
    let meta = mtools(&["mtype", "-i", i, "::meta-data"]);
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["local-hostname"], "dep-1");
    assert_eq!(meta["public-keys"], json!([KEY]));
    assert!(
        meta["instance-id"]
            .as_str()
            .unwrap()
            .starts_with(&machine_id),
        "{meta}"
    );
    // The partition carries the user data unmasked, byte for byte.
    assert_eq!(mtools(&["mtype", "-i", i, "::user-data"]), user_data);
    assert!(mtools(&["mtype", "-i", i, "::network-config"]).contains("52:54:00:d0:00:01"));
    // The operator's view shows the same deployment with the secret masked.
    let (st, view) = api.get("/machines/dep-1/cloud-init").await;
    assert_eq!(st, StatusCode::OK, "{view}");
    let files = view["files"].as_array().unwrap();
    let shown = |p: &str| {
        files
            .iter()
            .find(|f| f["path"] == p)
            .unwrap_or_else(|| panic!("{p} in {view}"))["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(shown("meta-data").contains("ops@example"), "{view}");
    assert!(!shown("user-data").contains("hunter2"), "{view}");
    agent.succeed(&ci, "CIDATA written").await;

    let be = agent.step("boot_entry").await;
    assert_eq!(be["params"]["firmware"], "bios");
    assert_eq!(be["params"]["label"], "anvil deb-test");
    let ack = agent.succeed(&be, "BIOS boots the MBR").await;
    assert_eq!(ack["run_state"], "succeeded", "{ack}");
    assert_eq!(
        agent.next().await,
        json!({"action": "reboot", "run_state": "succeeded"})
    );
    api.wait_state("dep-1", "deployed").await;
    let j = api.wait_job(&job["id"]).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    // The image is done: the agent's token no longer streams it.
    assert_eq!(agent.fetch(url).await.status(), StatusCode::CONFLICT);
    // The machine network-boots first; Anvil hands it to its disk.
    let script = api.script(MAC).await;
    assert!(
        script.contains("sanboot --no-describe --drive 0x80"),
        "{script}"
    );
    assert!(script.contains("\nexit"), "{script}");
    assert!(!script.contains("kernel "), "{script}");
    let runs = api.get("/machines/dep-1/commissioning-runs").await.1;
    let run = &runs["items"][0];
    assert_eq!(run["purpose"], "deployment", "{run}");
    assert_eq!(run["state"], "succeeded");
    assert_eq!(
        run["steps"][1]["progress"],
        json!({"done": 4 << 20, "total": 8 << 20})
    );
    assert_eq!(runs["items"][1]["purpose"], "commissioning");

    // Rescue with the deployment's keys, then back to deployed.
    let (st, v) = api.post("/machines/dep-1/actions/exit-rescue", None).await;
    assert_eq!(st, StatusCode::CONFLICT, "not in rescue: {v}");
    // The answer names the state the action needs, not a target state.
    assert_eq!(
        v["detail"], "the machine is deployed, not rescue",
        "exit-rescue of a deployed machine: {v}"
    );
    assert_eq!(v["current_state"], "deployed", "{v}");
    let (st, rjob) = api.post("/machines/dep-1/actions/rescue", None).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{rjob}");
    assert_eq!(api.state("dep-1").await["state"], "rescue");
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    assert_eq!(agent.register().await["purpose"], "rescue");
    let rs = agent.step("rescue").await;
    assert_eq!(rs["params"]["ssh_keys"], json!([KEY]));
    agent.succeed(&rs, "dropbear listens on 22").await;
    assert_eq!(agent.next().await["action"], "done");
    assert_eq!(api.wait_job(&rjob["id"]).await["status"], "succeeded");
    assert_eq!(api.state("dep-1").await["state"], "rescue", "stays up");
    let (st, xjob) = api.post("/machines/dep-1/actions/exit-rescue", None).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{xjob}");
    assert_eq!(xjob["kind"], "exit-rescue");
    api.wait_state("dep-1", "deployed").await;
    assert_eq!(api.wait_job(&xjob["id"]).await["status"], "succeeded");
    assert!(api.script(MAC).await.contains("sanboot"));
    // Exiting a rescue whose agent never got going aborts its run; the
    // token then only learns that it ended.
    let (st, rjob) = api
        .post(
            "/machines/dep-1/actions/rescue",
            Some(json!({"ssh_keys": [KEY]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{rjob}");
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    agent.register().await;
    let (st, xjob) = api.post("/machines/dep-1/actions/exit-rescue", None).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{xjob}");
    api.wait_state("dep-1", "deployed").await;
    assert_eq!(
        agent.next().await,
        json!({"action": "done", "run_state": "aborted"})
    );
    let rj = api.wait_job(&rjob["id"]).await;
    assert_eq!(rj["status"], "failed", "the rescue never came up: {rj}");
    let runs = api.get("/machines/dep-1/commissioning-runs").await.1;
    assert_eq!(runs["items"][0]["purpose"], "rescue");
    assert_eq!(runs["items"][0]["state"], "aborted");
    assert_eq!(
        runs["items"][0]["failure_reason"],
        "the operator exited rescue"
    );

    // Release: every writable disk erased, then ready; the image is free.
    let (st, rel) = api
        .post(
            "/machines/dep-1/actions/release",
            Some(json!({"erase": "quick"})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{rel}");
    assert_eq!(api.state("dep-1").await["state"], "releasing");
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    assert_eq!(agent.register().await["purpose"], "release");
    let erase = agent.step("erase").await;
    let names: Vec<&str> = erase["params"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["vda", "vdb"], "not the removable one");
    // A release's agent has no image or cloud-init to fetch.
    let ci_url = format!("{}/api/v1/agent/cloud-init", s.url);
    assert_eq!(agent.fetch(&ci_url).await.status(), StatusCode::FORBIDDEN);
    agent
        .report(&erase, json!({"seq": 1, "status": "started"}))
        .await;
    agent
        .report(
            &erase,
            json!({"seq": 2, "status": "succeeded", "message": "erased 2 disk(s)",
                   "result": {"mode": "quick", "disks": [{"disk": "vda", "method": "quick"}, {"disk": "vdb", "method": "quick"}]}}),
        )
        .await;
    // The method used per disk is in the machine's events.
    let events = api.get("/machines/dep-1/events").await.1;
    let erased = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "release.erase")
        .unwrap_or_else(|| panic!("no release.erase in {events}"));
    assert_eq!(
        erased["message"], "erased: vda quick, vdb quick",
        "{erased}"
    );
    assert_eq!(erased["data"]["disks"][1]["method"], "quick", "{erased}");
    assert_eq!(agent.next().await["action"], "poweroff");
    api.wait_state("dep-1", "ready").await;
    assert_eq!(api.wait_job(&rel["id"]).await["status"], "succeeded");
    assert_eq!(api.get("/images/deb-test").await.1["used_by"], json!([]));

    // A deployment whose image write fails ends `failed`, never `deployed`.
    let (st, job) = api
        .post(
            "/machines/dep-1/actions/deploy",
            Some(json!({"image": "deb-test", "ssh_keys": [KEY], "config_drive": "config_drive"})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    agent.register().await;
    // An OpenStack config drive instead of NoCloud: the FAT image is
    // labelled config-2 and holds openstack/latest/meta_data.json.
    let fat = agent
        .fetch(&format!("{}/api/v1/agent/cloud-init", s.url))
        .await;
    assert_eq!(fat.status(), StatusCode::OK);
    let img = dir.path().join("config-2.img");
    std::fs::write(&img, fat.bytes().await.unwrap()).unwrap();
    let i = img.to_str().unwrap();
    assert!(mtools(&["mlabel", "-i", i, "-s", "::"]).contains("config-2"));
    let meta: Value = serde_json::from_str(&mtools(&[
        "mtype",
        "-i",
        i,
        "::openstack/latest/meta_data.json",
    ]))
    .unwrap();
    assert_eq!(meta["hostname"], "dep-1", "{meta}");
    let erase = agent.step("erase").await;
    assert_eq!(
        erase["params"]["disks"][0]["name"], "vda",
        "smallest by default"
    );
    agent.succeed(&erase, "wiped").await;
    let write = agent.step("write_image").await;
    agent
        .report(&write, json!({"seq": 1, "status": "started"}))
        .await;
    let ack = agent
        .report(
            &write,
            json!({"seq": 2, "status": "failed", "message": "sha256 mismatch after 3 attempts"}),
        )
        .await;
    assert_eq!(ack["run_state"], "failed");
    let m = api.wait_state("dep-1", "failed").await;
    assert!(
        m["state_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("write_image failed: sha256 mismatch"),
        "{m}"
    );
    let j = api.wait_job(&job["id"]).await;
    assert_eq!(j["status"], "failed", "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("sha256 mismatch"),
        "{j}"
    );
    assert_eq!(
        agent.next().await,
        json!({"action": "done", "run_state": "failed"})
    );
    assert!(!api.script(MAC).await.contains("anvil.token"));
    let failed_reason = m["state_reason"].clone();
    // A failed machine can be rescued to look at it; leaving rescue puts it
    // back to `failed` with the reason it had.
    let (st, rjob) = api
        .post(
            "/machines/dep-1/actions/rescue",
            Some(json!({"ssh_keys": [KEY]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "rescue from failed: {rjob}");
    assert_eq!(api.state("dep-1").await["state"], "rescue");
    let (st, xjob) = api.post("/machines/dep-1/actions/exit-rescue", None).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{xjob}");
    let m = api.wait_state("dep-1", "failed").await;
    assert_eq!(m["state_reason"], failed_reason, "{m}");
    // Nothing uses the image any more: it can go.
    assert_eq!(api.delete("/images/deb-test").await, StatusCode::NO_CONTENT);
    let events = api.get("/machines/dep-1/events").await.1;
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for k in [
        "deploy.start",
        "deploy.end",
        "rescue.start",
        "rescue.end",
        "release.start",
        "release.end",
    ] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
}

/// Bad input to the deployment routes: malformed JSON, wrong types, unknown
/// fields, a wrong content type, unknown machines, missing tokens. Always a
/// 4xx problem+json, never a 5xx.
#[tokio::test(flavor = "multi_thread")]
async fn deployment_routes_refuse_bad_input_with_problem_json() {
    let s = Server::start();
    let c = client();
    let r = c
        .post(s.api("/machines"))
        .bearer_auth(&s.token)
        .json(&json!({"hostname": "bad-1", "interfaces": [{"mac": "52:54:00:d0:00:02"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let problem = |r: reqwest::Response, what: String| async move {
        let st = r.status();
        assert!(st.is_client_error(), "{what}: {st}");
        assert_eq!(
            r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{what}"
        );
        let v: Value = r.json().await.unwrap();
        assert!(
            v["type"].as_str().is_some() && v["detail"].as_str().is_some(),
            "{what}: {v}"
        );
        (st, v)
    };
    for (action, wrong_type, unknown) in [
        (
            "deploy",
            json!({"image": 7}),
            json!({"image": "x", "disk": "sda"}),
        ),
        (
            "release",
            json!({"erase": "shred"}),
            json!({"erase": "quick", "wipe": true}),
        ),
        (
            "rescue",
            json!({"ssh_keys": "ssh-ed25519 AAAA"}),
            json!({"keys": []}),
        ),
    ] {
        let path = s.api(&format!("/machines/bad-1/actions/{action}"));
        let valid = if action == "deploy" {
            json!({"image": "x"})
        } else {
            json!({})
        };
        for (what, body, ctype) in [
            ("malformed", "{\"image\": ".to_string(), "application/json"),
            ("wrong type", wrong_type.to_string(), "application/json"),
            ("unknown field", unknown.to_string(), "application/json"),
            (
                "not JSON",
                "image=x".to_string(),
                "application/x-www-form-urlencoded",
            ),
        ] {
            let r = c
                .post(&path)
                .bearer_auth(&s.token)
                .header("content-type", ctype)
                .body(body)
                .send()
                .await
                .unwrap();
            problem(r, format!("{action} {what}")).await;
        }
        let r = c
            .post(s.api(&format!("/machines/no-such-machine/actions/{action}")))
            .bearer_auth(&s.token)
            .json(&valid)
            .send()
            .await
            .unwrap();
        let (st, _) = problem(r, format!("{action} unknown machine")).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
        let r = c.post(&path).json(&valid).send().await.unwrap();
        let (st, _) = problem(r, format!("{action} without a token")).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
    // Release and rescue of a `new` machine: the lifecycle refuses.
    for action in ["release", "rescue", "exit-rescue"] {
        let r = c
            .post(s.api(&format!("/machines/bad-1/actions/{action}")))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        let (st, v) = problem(r, format!("{action} of a new machine")).await;
        assert_eq!(st, StatusCode::CONFLICT, "{v}");
    }
    // The agent's downloads need an agent token, whatever the path says.
    for path in [
        format!("/agent/images/{}", "a".repeat(64)),
        format!("/agent/images/{}/zeromap", "a".repeat(64)),
        "/agent/images/..%2F..%2Fetc%2Fpasswd".into(),
        "/agent/cloud-init".into(),
    ] {
        for token in [None, Some(s.token.as_str()), Some("not-a-token")] {
            let mut req = c.get(s.api(&path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let (st, _) = problem(req.send().await.unwrap(), format!("GET {path}")).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{path}");
        }
    }
}

/// `[deploy] timeout_secs`: a deployment whose agent hangs fails at the
/// deadline, naming the step, and the machine never becomes `deployed`.
#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_that_hangs_fails_at_the_deploy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("anvil.toml");
    std::fs::write(&conf, "[deploy]\ntimeout_secs = 3\n").unwrap();
    let s = Server::start_with(&["--config", conf.to_str().unwrap()]);
    let api = Api {
        c: client(),
        base: s.api(""),
        token: s.token.clone(),
        url: s.url.clone(),
    };
    let (image_path, _) = make_image(dir.path());
    let (st, img) = api
        .post(
            "/images",
            Some(json!({"path": image_path.to_str().unwrap(), "name": "hang"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{img}");
    let (st, _) = api
        .post(
            "/machines",
            Some(json!({"hostname": "dep-2", "interfaces": [{"mac": MAC}]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    // Commissioning keeps its own (longer) timeout.
    api.post("/machines/dep-2/actions/commission", None).await;
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    agent.register().await;
    let inv = agent.step("inventory").await;
    agent
        .report(&inv, json!({"seq": 1, "status": "started"}))
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    agent
        .call(
            "/facts",
            Some(json!({"step_id": inv["id"], "facts": facts()})),
        )
        .await;
    agent
        .report(&inv, json!({"seq": 2, "status": "succeeded"}))
        .await;
    api.wait_state("dep-2", "ready").await;

    let (st, job) = api
        .post(
            "/machines/dep-2/actions/deploy",
            Some(json!({"image": "hang"})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    agent.register().await;
    let erase = agent.step("erase").await;
    agent
        .report(
            &erase,
            json!({"seq": 1, "status": "started", "message": "wiping vda"}),
        )
        .await;
    let m = api.wait_state("dep-2", "failed").await;
    let reason = m["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("deployment timed out after 3 s: step 0 erase hung"),
        "{m}"
    );
    assert_eq!(api.wait_job(&job["id"]).await["status"], "failed");
    assert_eq!(api.get("/images/hang").await.1["used_by"], json!([]));
}

/// The real `anvil-agent` binary (built here with cargo, run as a child
/// process with `ANVIL_AGENT_CMDLINE` = the kernel arguments of the iPXE
/// script Anvil rendered) deploys an MBR image onto a regular file standing
/// in for the disk, found by serial in a sysfs-shaped fixture tree: the
/// server's steps and URLs and the agent's executors agree end to end, and
/// the file ends up holding the image, the grown partition and the
/// cloud-init partition Anvil rendered.
#[tokio::test(flavor = "multi_thread")]
async fn the_real_agent_deploys_onto_a_file_disk() {
    const MIB: u64 = 1 << 20;
    let agent_bin = build_agent();
    let s = Server::start();
    let api = Api {
        c: client(),
        base: s.api(""),
        token: s.token.clone(),
        url: s.url.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let disk_bytes = 128 * MIB;
    fixture_disk(&root, disk_bytes);

    let image = mbr_image(&api, dir.path(), "mbr-test").await;
    commission_with_disk(&api, "real-1", disk_bytes).await;

    let (st, job) = api
        .post(
            "/machines/real-1/actions/deploy",
            Some(
                json!({"image": "mbr-test", "ssh_keys": [KEY], "user_data": "#cloud-config\n{}\n"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let log = run_agent(&api, &agent_bin, &root).await;
    let m = api.state("real-1").await;
    assert_eq!(m["state"], "deployed", "{m}\n{log}");
    assert_eq!(api.wait_job(&job["id"]).await["status"], "succeeded");
    let runs = api.get("/machines/real-1/commissioning-runs").await.1;
    let steps = runs["items"][0]["steps"].as_array().unwrap().clone();
    let kinds: Vec<&str> = steps.iter().map(|s| s["kind"].as_str().unwrap()).collect();
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
    assert!(
        steps.iter().all(|s| s["status"] == "succeeded"),
        "{steps:?}"
    );

    // The file holds the image (its partition's bytes) after the MBR…
    let disk = std::fs::read(root.join("dev/vda")).unwrap();
    assert_eq!(
        &disk[MIB as usize..(31 * MIB) as usize],
        &image[MIB as usize..(31 * MIB) as usize]
    );
    assert_eq!(&disk[510..512], &[0x55, 0xaa]);
    // …whose partition grew toward the end, leaving room for cloud-init…
    let grow = &steps[2]["result"];
    assert_eq!(grow["old_end"], 31 * MIB, "{grow}");
    let new_end = grow["new_end"].as_u64().unwrap();
    assert!(
        new_end > 31 * MIB && new_end <= disk_bytes - 17 * MIB,
        "{grow}"
    );
    // …and the cloud-init partition Anvil rendered, at the end.
    let ci = &steps[3]["result"];
    let start = ci["start"].as_u64().unwrap();
    assert!(start >= new_end, "{ci}");
    let image_at = format!("{}@@{start}", root.join("dev/vda").display());
    assert!(mtools(&["mlabel", "-i", &image_at, "-s", "::"]).contains("CIDATA"));
    let meta: Value =
        serde_json::from_str(&mtools(&["mtype", "-i", &image_at, "::meta-data"])).unwrap();
    assert_eq!(meta["local-hostname"], "real-1");
    assert_eq!(meta["public-keys"], json!([KEY]));
    assert!(api.script(MAC).await.contains("sanboot"));
    // The agent's erase result names the method; the event log keeps it.
    let events = api.get("/machines/real-1/events").await.1;
    let erased = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "deploy.erase")
        .unwrap_or_else(|| panic!("no deploy.erase in {events}"));
    assert_eq!(erased["data"]["disks"][0]["disk"], "vda", "{erased}");
    assert!(erased["data"]["disks"][0]["method"].is_string(), "{erased}");
}

/// A 32 MiB MBR disk, imported as `name`: one Linux partition from 1 MiB to
/// 31 MiB holding data at its start and its end, zeros in between.
async fn mbr_image(api: &Api, dir: &Path, name: &str) -> Vec<u8> {
    const MIB: u64 = 1 << 20;
    let mut image = vec![0u8; (32 * MIB) as usize];
    let part_start = MIB;
    let part_sectors = 30 * MIB / 512;
    image[446] = 0x00;
    image[446 + 4] = 0x83;
    image[446 + 8..446 + 12].copy_from_slice(&((part_start / 512) as u32).to_le_bytes());
    image[446 + 12..446 + 16].copy_from_slice(&(part_sectors as u32).to_le_bytes());
    image[510] = 0x55;
    image[511] = 0xaa;
    for (i, b) in image[MIB as usize..(MIB + 300_000) as usize]
        .iter_mut()
        .enumerate()
    {
        *b = (i % 251) as u8 | 1;
    }
    image[(30 * MIB) as usize..(30 * MIB + 5000) as usize].fill(0x77);
    let image_path = dir.join(format!("{name}.raw"));
    std::fs::write(&image_path, &image).unwrap();
    let (st, img) = api
        .post(
            "/images",
            Some(json!({"path": image_path.to_str().unwrap(), "name": name})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{img}");
    image
}

/// Creates `host` and commissions it (the test plays the agent) with one
/// disk, the fixture's `vda` (serial `DEPLOY-1`, `disk_bytes`).
async fn commission_with_disk(api: &Api, host: &str, disk_bytes: u64) {
    let (st, _) = api
        .post(
            "/machines",
            Some(json!({"hostname": host, "interfaces": [{"mac": MAC}]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    // Commissioned by the test (the inventory of the fixture disk).
    api.post(&format!("/machines/{host}/actions/commission"), None)
        .await;
    let sim = Agent {
        api,
        token: api.boot_token(MAC).await,
    };
    sim.register().await;
    let inv = sim.step("inventory").await;
    sim.report(&inv, json!({"seq": 1, "status": "started"}))
        .await;
    let mut f = facts();
    f["disks"] = json!([{"name": "vda", "serial": "DEPLOY-1", "size_bytes": disk_bytes, "transport": "virtio"}]);
    let (st, v) = sim
        .call("/facts", Some(json!({"step_id": inv["id"], "facts": f})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    sim.report(&inv, json!({"seq": 2, "status": "succeeded"}))
        .await;
    api.wait_state(host, "ready").await;
}

/// Runs the real agent with the kernel arguments of the machine's iPXE
/// script until it exits (killed by its PID after 2 minutes); its output.
async fn run_agent(api: &Api, agent_bin: &Path, root: &Path) -> String {
    let script = api.script(MAC).await;
    let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
    let cmdline: Vec<&str> = kernel
        .split_whitespace()
        .filter(|w| w.starts_with("anvil."))
        .collect();
    let mut child = Command::new(agent_bin)
        .env("ANVIL_AGENT_CMDLINE", cmdline.join(" "))
        .env("ANVIL_AGENT_ROOT", root)
        .env("ANVIL_AGENT_NO_NET", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            // Only the child this test started, by its PID.
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = child.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status.is_some(),
        "the agent did not finish in 2 minutes:\n{log}"
    );
    log
}

/// `cargo build -p anvil-agent`, and the binary's path.
fn build_agent() -> std::path::PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "-q",
            "--locked",
            "-p",
            "anvil-agent",
            "--bin",
            "anvil-agent",
            "--message-format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building anvil-agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "anvil-agent")
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .expect("cargo named the anvil-agent executable")
}

/// A virtio disk `vda` with serial `DEPLOY-1` as sysfs shows it, and
/// `dev/vda` a file of `bytes` whose first and last MiB hold the previous
/// tenant's 0xee (sparse in between).
fn fixture_disk(root: &Path, bytes: u64) {
    let dev = root.join("sys/devices/pci0000:00/0000:00:05.0/virtio5/block/vda");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("size"), format!("{}\n", bytes / 512)).unwrap();
    std::fs::write(dev.join("serial"), "DEPLOY-1\n").unwrap();
    std::os::unix::fs::symlink("../../../virtio5", dev.join("device")).unwrap();
    std::fs::create_dir_all(root.join("sys/block")).unwrap();
    std::os::unix::fs::symlink(
        "../devices/pci0000:00/0000:00:05.0/virtio5/block/vda",
        root.join("sys/block/vda"),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let f = std::fs::File::create(root.join("dev/vda")).unwrap();
    f.set_len(bytes).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&vec![0xee; 1 << 20], 0).unwrap();
    f.write_all_at(&vec![0xee; 1 << 20], bytes - (1 << 20))
        .unwrap();
}

/// An image corrupted in the library after import: the server cuts the
/// stream short (never a complete, wrong image), the real agent's
/// write_image retries and fails, and the machine ends `failed` with the
/// reason, never `deployed`.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_image_fails_the_real_agents_deploy() {
    const MIB: u64 = 1 << 20;
    let agent_bin = build_agent();
    let s = Server::start();
    let api = Api {
        c: client(),
        base: s.api(""),
        token: s.token.clone(),
        url: s.url.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fixture_disk(&root, 128 * MIB);
    let image = mbr_image(&api, dir.path(), "rotten").await;
    let sha = hex::encode(Sha256::digest(&image));
    commission_with_disk(&api, "rot-1", 128 * MIB).await;
    // Half of the compressed store goes missing.
    let stored = s.data_path().join("images").join(format!("{sha}.raw.zst"));
    let len = std::fs::metadata(&stored).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let (st, job) = api
        .post(
            "/machines/rot-1/actions/deploy",
            Some(json!({"image": "rotten", "ssh_keys": [KEY]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    // With the boot's token: the promised length never arrives (the
    // connection is cut, before or after the response head, depending on
    // how early the decoder hits the damage).
    let token = api.boot_token(MAC).await;
    let sent = api
        .c
        .get(format!("{}/api/v1/agent/images/{sha}", s.url))
        .bearer_auth(&token)
        .send()
        .await;
    match sent {
        Err(e) => assert!(e.is_request(), "{e:?}"),
        Ok(r) => {
            assert_eq!(r.status(), StatusCode::OK);
            let promised: usize = r.headers()["content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            match r.bytes().await {
                Ok(b) => assert!(b.len() < promised, "a complete body from a broken store"),
                Err(e) => assert!(e.is_body() || e.is_decode(), "{e:?}"),
            }
        }
    }

    let log = run_agent(&api, &agent_bin, &root).await;
    let m = api.wait_state("rot-1", "failed").await;
    let reason = m["state_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("write_image failed"), "{m}\n{log}");
    let j = api.wait_job(&job["id"]).await;
    assert_eq!(j["status"], "failed", "{j}");
    let runs = api.get("/machines/rot-1/commissioning-runs").await.1;
    let steps = &runs["items"][0]["steps"];
    assert_eq!(steps[1]["kind"], "write_image");
    assert_eq!(steps[1]["status"], "failed", "{steps}");
    assert_eq!(steps[2]["status"], "pending", "nothing runs after it");
    assert_eq!(runs["items"][0]["state"], "failed");
    assert_eq!(runs["items"][0]["failed_step"], "write_image");
    // The run is over: no more agent boots for it.
    assert!(!api.script(MAC).await.contains("anvil.token"));
}

/// Benchmark (not a timed test; `cargo test -p anvil --release --test deploy
/// -- --ignored --nocapture image_stream`): the rate of
/// `GET /agent/images/{sha256}` for a 2 GiB image (1 GiB of incompressible
/// data, 1 GiB of zeros) read as fast as the client can, and the server's
/// peak RSS while it streams, against its RSS before. The stream must not
/// hold the image in memory: the peak may grow by a few MiB, never by GiB.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn image_stream_rate_and_server_memory() {
    const MIB: u64 = 1 << 20;
    let s = Server::start();
    let api = Api {
        c: {
            // No timeout: a 2 GiB import takes a while.
            drop(client()); // installs the TLS provider
            reqwest::Client::new()
        },
        base: s.api(""),
        token: s.token.clone(),
        url: s.url.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("big.raw");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&raw).unwrap());
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut block = vec![0u8; MIB as usize];
        for _ in 0..1024 {
            for c in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).unwrap();
        }
        f.flush().unwrap();
        f.get_ref().set_len(2048 * MIB).unwrap();
    }
    let t = Instant::now();
    let (st, img) = api
        .post(
            "/images",
            Some(json!({"path": raw.to_str().unwrap(), "name": "big"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{img}");
    eprintln!("import of 2 GiB: {:.1} s", t.elapsed().as_secs_f64());
    let sha = img["sha256"].as_str().unwrap().to_string();
    commission_with_disk(&api, "bench-1", 64 << 30).await;
    let (st, job) = api
        .post(
            "/machines/bench-1/actions/deploy",
            Some(json!({"image": "big"})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let token = api.boot_token(MAC).await;
    let pid = s.child.id();
    let rss = move || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let before = rss();
    let mut r = api
        .c
        .get(format!("{}/api/v1/agent/images/{sha}", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t = Instant::now();
    let (mut got, mut peak) = (0u64, before);
    while let Some(chunk) = r.chunk().await.unwrap() {
        got += chunk.len() as u64;
        peak = peak.max(rss());
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, 1024 * MIB, "only the non-zero GiB travels");
    eprintln!(
        "stream: {} MiB in {secs:.2} s = {:.0} MiB/s; server RSS {} MiB before, peak {} MiB",
        got / MIB,
        (got / MIB) as f64 / secs,
        before / 1024,
        peak / 1024
    );
    assert!(
        peak < before + 256 * 1024,
        "the server's memory grew with the image: {before} kB → {peak} kB"
    );
}

/// With a Redfish BMC (sushy-tools): deploy boots the machine from the
/// network through it, release powers it off when done, and exit-rescue of
/// a deployed machine network-boots it again (into its local-boot script).
#[tokio::test(flavor = "multi_thread")]
async fn with_a_redfish_bmc_the_jobs_drive_the_power() {
    if sushy::skipped() {
        return;
    }
    let bmc = sushy::Sushy::start(
        &[sushy::FakeSystem {
            uuid: "41414141-4141-4141-4141-414141414141",
            name: "dep-bmc",
            power_on: false,
            macs: &[MAC],
            disk_bytes: None,
        }],
        &[("admin", "pw-dep")],
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
            "dep-bmc",
            "-o",
            "json",
        ])
        .env("BMCPW", "pw-dep")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api = Api {
        c: client(),
        base: s.api(""),
        token: s.token.clone(),
        url: s.url.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let (image_path, _) = make_image(dir.path());
    let (st, img) = api
        .post(
            "/images",
            Some(json!({"path": image_path.to_str().unwrap(), "name": "bmc-img"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{img}");
    let power = |m: &Value| m["power_state"].as_str().unwrap_or("").to_string();

    // Commission (powered on by the job, off when done).
    let (st, job) = api.post("/machines/dep-bmc/actions/commission", None).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    agent.register().await;
    let inv = agent.step("inventory").await;
    agent
        .report(&inv, json!({"seq": 1, "status": "started"}))
        .await;
    agent
        .call(
            "/facts",
            Some(json!({"step_id": inv["id"], "facts": facts()})),
        )
        .await;
    agent
        .report(&inv, json!({"seq": 2, "status": "succeeded"}))
        .await;
    api.wait_job(&job["id"]).await;
    assert_eq!(power(&api.wait_state("dep-bmc", "ready").await), "off");

    // Deploy: the job boots it from the network through the BMC.
    let (st, job) = api
        .post(
            "/machines/dep-bmc/actions/deploy",
            Some(json!({"image": "bmc-img", "ssh_keys": [KEY]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while power(&api.state("dep-bmc").await) != "on" {
        assert!(Instant::now() < deadline, "never powered on for the deploy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    assert_eq!(agent.register().await["purpose"], "deployment");
    for kind in [
        "erase",
        "write_image",
        "grow_root",
        "cloud_init",
        "boot_entry",
    ] {
        let step = agent.step(kind).await;
        agent.succeed(&step, "done").await;
    }
    assert_eq!(agent.next().await["action"], "reboot");
    api.wait_state("dep-bmc", "deployed").await;
    let j = api.wait_job(&job["id"]).await;
    assert_eq!(j["status"], "succeeded", "{j}");

    // Rescue, then exit: a deployed machine is network-booted again.
    let (st, job) = api.post("/machines/dep-bmc/actions/rescue", None).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    agent.register().await;
    let rs = agent.step("rescue").await;
    agent.succeed(&rs, "dropbear listens").await;
    api.wait_job(&job["id"]).await;
    let (st, job) = api
        .post("/machines/dep-bmc/actions/exit-rescue", None)
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let j = api.wait_job(&job["id"]).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["result"]["power"], "pxe-boot", "{j}");
    let m = api.wait_state("dep-bmc", "deployed").await;
    assert_eq!(power(&m), "on", "{m}");

    // Release: powered off through the BMC when the erase is done.
    let (st, job) = api.post("/machines/dep-bmc/actions/release", None).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let agent = Agent {
        api: &api,
        token: api.boot_token(MAC).await,
    };
    agent.register().await;
    let erase = agent.step("erase").await;
    agent.succeed(&erase, "erased").await;
    let j = api.wait_job(&job["id"]).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    assert_eq!(j["result"]["power_state"], "off", "{j}");
    let m = api.wait_state("dep-bmc", "ready").await;
    assert_eq!(power(&m), "off", "{m}");
}
