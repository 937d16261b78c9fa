//! Installer deploys against the real binary over HTTP: an installer image
//! is registered (small dummy kernel and initrd: the files are served, not
//! booted; no distribution installer runs here, and nothing is downloaded),
//! a commissioned machine is deployed with it, its iPXE script boots the
//! installer with the answer-file URL, the answer file names the host, the
//! key, the root disk and the completion URL, and the completion call makes
//! the machine `deployed`, after which its script boots the local disk. A
//! second completion call, an unknown token and a deployment that never
//! calls back are refused or failed.

mod common;

use common::{Server, client};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example";
const MAC: &str = "52:54:00:e0:00:01";
const GIB: u64 = 1 << 30;

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

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = req.send().await.unwrap();
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
        self.send(
            self.c
                .get(format!("{}{path}", self.base))
                .bearer_auth(&self.token),
        )
        .await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(
            self.c
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(&body),
        )
        .await
    }

    /// A call the installer makes: no Authorization header.
    async fn installer_post(&self, url: &str) -> (StatusCode, Value) {
        self.send(self.c.post(url)).await
    }

    async fn fetch(&self, url: &str) -> (StatusCode, String) {
        let r = self.c.get(url).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    async fn script(&self) -> (StatusCode, String) {
        self.fetch(&format!("{}/boot/{MAC}.ipxe", self.url)).await
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

    /// Creates the machine and commissions it as the agent would, so it is
    /// `ready` with hardware facts (two disks: vda 2 GiB, vdb 8 GiB).
    async fn ready_machine(&self, host: &str) {
        let (st, m) = self
            .post(
                "/machines",
                json!({"hostname": host, "interfaces": [{"mac": MAC}]}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{m}");
        let (st, v) = self
            .post(&format!("/machines/{host}/actions/commission"), json!({}))
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        let (_, script) = self.script().await;
        let token = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("anvil.token="))
            .unwrap_or_else(|| panic!("no agent token in {script}"))
            .to_string();
        let agent = |path: &str, body: Option<Value>| {
            let mut req = self
                .c
                .post(format!("{}/agent{path}", self.base))
                .bearer_auth(&token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            req
        };
        let r = agent(
            "/register",
            Some(json!({"mac": MAC, "agent_version": "0.1.0"})),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let next: Value = agent("/next", None)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let step = next["step"].clone();
        assert_eq!(step["kind"], "inventory", "{next}");
        let report = |seq: u32, status: &str| {
            agent(
                &format!("/steps/{}/report", step["id"].as_str().unwrap()),
                Some(json!({"seq": seq, "status": status})),
            )
        };
        assert!(
            report(1, "started")
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
        let disk = |name: &str, serial: &str, size: u64| json!({"name": name, "serial": serial, "size_bytes": size, "transport": "virtio", "removable": false});
        let facts = json!({
            "schema_version": 1,
            "cpu": {"model": "QEMU Virtual CPU", "vendor": "GenuineIntel", "sockets": 1, "cores": 1, "threads": 1, "flags": []},
            "memory": {"total_bytes": GIB, "dimms": []},
            "disks": [disk("vda", "SMALL-1", 2 * GIB), disk("vdb", "BIG-1", 8 * GIB)],
            "nics": [{"name": "ens3", "mac": MAC, "driver": "virtio_net", "link_up": true}],
            "dmi": {"system_vendor": "Anvil Labs"},
            "boot": {"mode": "uefi"},
        });
        let r = agent(
            "/facts",
            Some(json!({"step_id": step["id"], "facts": facts})),
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            report(2, "succeeded")
                .send()
                .await
                .unwrap()
                .status()
                .is_success()
        );
        self.wait_state(host, "ready").await;
    }
}

/// The kernel line of a script and the answer-file base URL on it.
fn kernel_line(script: &str) -> &str {
    script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line in {script}"))
}

fn arg<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn dummy_files(dir: &std::path::Path) -> (String, String, Vec<u8>) {
    let kernel: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let k = dir.join("linux");
    let i = dir.join("initrd.gz");
    std::fs::write(&k, &kernel).unwrap();
    std::fs::write(&i, b"dummy initrd: served, never booted in this test").unwrap();
    (
        k.to_str().unwrap().into(),
        i.to_str().unwrap().into(),
        kernel,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_installer_deploy_ends_deployed_by_its_completion_call() {
    flow(Server::start()).await;
}

/// The same flow on PostgreSQL (a scratch database, dropped afterwards).
#[tokio::test(flavor = "multi_thread")]
async fn an_installer_deploy_ends_deployed_by_its_completion_call_on_postgres() {
    let Some(db) = common::ScratchPg::create("anvil_installer").await else {
        return;
    };
    flow(Server::start_with(&["--database-url", &db.url])).await;
}

async fn flow(s: Server) {
    let api = Api::new(&s);
    let dir = tempfile::tempdir().unwrap();
    let (kernel_path, initrd_path, kernel) = dummy_files(dir.path());

    // Registration: checked, stored, listed like other images, idempotent.
    let body = json!({
        "kind": "installer", "name": "debian-12-netinst", "os": "debian", "release": "12",
        "kernel_path": kernel_path, "initrd_path": initrd_path,
        "repo_url": "http://mirror.example/debian",
    });
    let (st, img) = api.post("/images", body.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{img}");
    assert_eq!(img["kind"], "installer");
    assert_eq!(img["os"], "debian");
    assert_eq!(img["login_user"], "root");
    let (st, again) = api.post("/images", body).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again["id"], img["id"]);
    let (_, list) = api.get("/images").await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "debian-12-netinst" && i["kind"] == "installer"),
        "{list}"
    );
    for (body, needle) in [
        (
            json!({"kind": "installer", "name": "u", "os": "ubuntu", "kernel_path": kernel_path, "initrd_path": initrd_path}),
            "live-server ISO",
        ),
        (
            json!({"kind": "installer", "name": "w", "os": "windows", "kernel_path": kernel_path, "initrd_path": initrd_path}),
            "debian, ubuntu, rocky or alma",
        ),
        (
            json!({"kind": "installer", "name": "d", "os": "debian", "initrd_path": initrd_path}),
            "give exactly one of kernel_url and kernel_path",
        ),
    ] {
        let (st, v) = api.post("/images", body).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(
            v["detail"].as_str().unwrap().contains(needle),
            "{needle}: {v}"
        );
    }

    api.ready_machine("inst-1").await;
    // The installed system has no password: keys are required.
    let (st, v) = api
        .post(
            "/machines/inst-1/actions/deploy",
            json!({"image": "debian-12-netinst"}),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("SSH key"), "{v}");
    let (st, job) = api
        .post(
            "/machines/inst-1/actions/deploy",
            json!({"image": "debian-12-netinst", "ssh_keys": [KEY], "root_disk": "largest"}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    assert_eq!(api.state("inst-1").await["state"], "deploying");
    // No agent run was started for it.
    let (_, runs) = api.get("/machines/inst-1/commissioning-runs").await;
    assert!(
        runs.to_string()
            .matches("\"purpose\":\"deployment\"")
            .count()
            == 0,
        "{runs}"
    );

    // An override in the data directory wins; a broken one says so.
    let overrides = s.data_path().join("ipxe").join("installer");
    std::fs::create_dir_all(&overrides).unwrap();
    std::fs::write(
        overrides.join("debian.ipxe"),
        "#!ipxe\necho site override for {{ hostname }}\nkernel {{ kernel_url }} url={{ answer_url }}preseed.cfg\nboot\n",
    )
    .unwrap();
    let (st, script) = api.script().await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        script.contains("echo site override for inst-1\n"),
        "{script}"
    );
    std::fs::write(overrides.join("debian.ipxe"), "#!ipxe\n{{ nosuchvar }}\n").unwrap();
    let (st, script) = api.script().await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        script.contains("cannot render the installer script"),
        "{script}"
    );
    std::fs::remove_file(overrides.join("debian.ipxe")).unwrap();

    // The built-in script boots the Debian installer with its preseed URL.
    let (st, script) = api.script().await;
    assert_eq!(st, StatusCode::OK);
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(!script.contains("anvil.token"), "no agent: {script}");
    let k = kernel_line(&script);
    let kernel_url = k.split_whitespace().nth(1).unwrap();
    assert!(
        kernel_url.starts_with(&format!(
            "{}/boot/files/installer/{}/vmlinuz",
            api.url,
            img["id"].as_str().unwrap()
        )),
        "{k}"
    );
    for a in ["auto=true", "priority=critical", "hostname=inst-1"] {
        assert!(k.split_whitespace().any(|w| w == a), "{a}: {k}");
    }
    let preseed_url = arg(k, "url=");
    let prefix = format!("{}/api/v1/installer/", api.url);
    let token = preseed_url
        .strip_prefix(&prefix)
        .and_then(|r| r.strip_suffix("/preseed.cfg"))
        .unwrap_or_else(|| panic!("{preseed_url}"))
        .to_string();
    // The files are served as registered.
    let r = api.c.get(kernel_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &kernel[..]);
    let initrd_line = script.lines().find(|l| l.starts_with("initrd ")).unwrap();
    let (st, initrd) = api
        .fetch(initrd_line.split_whitespace().last().unwrap())
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(initrd.starts_with("dummy initrd"));

    // The answer file, for this machine and this boot.
    let (st, preseed) = api.fetch(preseed_url).await;
    assert_eq!(st, StatusCode::OK, "{preseed}");
    assert!(
        preseed.contains("d-i netcfg/get_hostname string inst-1\n"),
        "{preseed}"
    );
    assert!(
        preseed.contains("d-i mirror/http/hostname string mirror.example\n"),
        "{preseed}"
    );
    // "largest" resolved against the facts: vdb.
    assert!(
        preseed.contains("d-i partman-auto/disk string /dev/vdb\n"),
        "{preseed}"
    );
    let done_url = format!("{prefix}{token}/done");
    let late = preseed
        .lines()
        .find(|l| l.starts_with("d-i preseed/late_command string "))
        .unwrap();
    assert!(late.contains(&format!("'{KEY}'")), "{late}");
    assert!(
        late.ends_with(&format!("curl -fsS -X POST '{done_url}'")),
        "{late}"
    );
    let (st, v) = api.installer_post(&format!("{prefix}{token}/ks.cfg")).await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    let r = api
        .c
        .get(format!("{prefix}{token}/ks.cfg"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // An unknown token is refused and changes nothing.
    let (st, v) = api
        .installer_post(&format!("{prefix}not-a-token/done"))
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("installer token"),
        "{v}"
    );
    assert_eq!(api.state("inst-1").await["state"], "deploying");

    // The completion call: deployed, the job succeeds, the disk boots.
    let (st, v) = api.installer_post(&done_url).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(api.state("inst-1").await["state"], "deployed");
    let j = api.wait_job(&job["id"]).await;
    assert_eq!(j["status"], "succeeded", "{j}");
    let (_, script) = api.script().await;
    assert!(
        script.contains("sanboot --no-describe --drive 0x80"),
        "{script}"
    );
    assert!(!script.contains("/installer/"), "{script}");

    // Only once: a second call and the answer file are 409 run-ended.
    let (st, v) = api.installer_post(&done_url).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["type"], "https://anvil.dev/problems/run-ended");
    let r = api.c.get(preseed_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // The image is in use by the deployed machine; events tell the story.
    let r = api
        .c
        .delete(format!("{}/images/debian-12-netinst", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // Rescue without keys takes the installer deployment's keys; leaving it
    // returns the machine to deployed.
    let (st, v) = api.post("/machines/inst-1/actions/rescue", json!({})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let (_, runs) = api.get("/machines/inst-1/commissioning-runs").await;
    assert!(runs.to_string().contains(KEY), "{runs}");
    let (st, v) = api
        .post("/machines/inst-1/actions/exit-rescue", json!({}))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    api.wait_state("inst-1", "deployed").await;
    let (_, events) = api.get("/machines/inst-1/events").await;
    let kinds = events.to_string();
    assert!(
        kinds.contains("deploy.start") && kinds.contains("deploy.succeeded"),
        "{events}"
    );
}

/// An installer that never calls back fails at the deploy timeout; the
/// machine ends `failed`, never `deployed`, and its token no longer counts.
#[tokio::test(flavor = "multi_thread")]
async fn an_installer_that_never_calls_back_fails_at_the_deploy_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("anvil.toml");
    std::fs::write(&conf, "[deploy]\ntimeout_secs = 3\n").unwrap();
    let s = Server::start_with(&["--config", conf.to_str().unwrap()]);
    let api = Api::new(&s);
    let (kernel_path, initrd_path, _) = dummy_files(dir.path());
    let (st, img) = api
        .post(
            "/images",
            json!({
                "kind": "installer", "name": "rocky-9", "os": "rocky", "release": "9",
                "kernel_path": kernel_path, "initrd_path": initrd_path,
                "repo_url": "http://mirror.example/rocky/9/BaseOS/x86_64/os/",
            }),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{img}");
    api.ready_machine("inst-2").await;
    let (st, job) = api
        .post(
            "/machines/inst-2/actions/deploy",
            json!({"image": "rocky-9", "ssh_keys": [KEY], "root_disk": "serial=SMALL-1"}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    let (_, script) = api.script().await;
    let k = kernel_line(&script);
    assert_eq!(
        arg(k, "inst.repo="),
        "http://mirror.example/rocky/9/BaseOS/x86_64/os/"
    );
    let ks_url = arg(k, "inst.ks=").to_string();
    let (st, ks) = api.fetch(&ks_url).await;
    assert_eq!(st, StatusCode::OK, "{ks}");
    assert!(ks.contains("ignoredisk --only-use=vda\n"), "{ks}");
    assert!(
        ks.contains(&format!("sshkey --username=root '{KEY}'\n")),
        "{ks}"
    );
    let m = api.wait_state("inst-2", "failed").await;
    assert!(
        m["state_reason"]
            .as_str()
            .unwrap()
            .contains("did not call back"),
        "{m}"
    );
    let j = api.wait_job(&job["id"]).await;
    assert_eq!(j["status"], "failed", "{j}");
    let done = ks_url.replace("/ks.cfg", "/done");
    let (st, v) = api.installer_post(&done).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(api.state("inst-2").await["state"], "failed");
}

/// `anvil image import --installer OS …` registers an installer image
/// (the existing `anvil image import PATH|URL` form is unchanged), and an
/// Ubuntu deploy serves its NoCloud `user-data` and `meta-data`.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_registers_an_installer_and_ubuntu_gets_autoinstall_data() {
    let s = Server::start();
    let api = Api::new(&s);
    let dir = tempfile::tempdir().unwrap();
    let (kernel_path, initrd_path, _) = dummy_files(dir.path());
    let iso = "http://mirror.example/ubuntu-24.04-live-server-amd64.iso";
    let run = |args: &[&str]| common::anvil_cmd(&s).args(args).output().unwrap();
    // Without a source and without --installer: a usage error.
    let out = run(&["image", "import"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // --installer needs its kernel and initrd.
    let out = run(&["image", "import", "--installer", "ubuntu", "--name", "u"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = run(&[
        "image",
        "import",
        "--installer",
        "ubuntu",
        "--name",
        "ubuntu-24.04",
        "--release",
        "24.04",
        "--kernel",
        &kernel_path,
        "--initrd",
        &initrd_path,
        "--repo",
        iso,
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            img["kind"].as_str(),
            img["os"].as_str(),
            img["login_user"].as_str()
        ),
        (Some("installer"), Some("ubuntu"), Some("ubuntu"))
    );

    api.ready_machine("inst-3").await;
    // `anvil machine deploy --wait` follows the job (there is no agent run)
    // until the completion call below.
    let key_file = dir.path().join("key.pub");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let mut deploy = common::anvil_cmd(&s)
        .args([
            "machine",
            "deploy",
            "inst-3",
            "--image",
            "ubuntu-24.04",
            "--wait",
            "-o",
            "json",
        ])
        .arg("--ssh-key")
        .arg(&key_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    api.wait_state("inst-3", "deploying").await;
    let (_, script) = api.script().await;
    let k = kernel_line(&script);
    assert_eq!(arg(k, "url="), iso);
    assert!(k.split_whitespace().any(|w| w == "autoinstall"), "{k}");
    let base = arg(k, "ds=nocloud-net;s=").to_string();
    assert!(base.ends_with('/'), "{base}");
    let (st, ud) = api.fetch(&format!("{base}user-data")).await;
    assert_eq!(st, StatusCode::OK, "{ud}");
    assert!(ud.starts_with("#cloud-config\n"), "{ud}");
    // "smallest" (the default) resolved against the facts: vda, by serial.
    assert!(ud.contains("match: {\"serial\":\"SMALL-1\"}"), "{ud}");
    assert!(ud.contains(&format!("- \"{KEY}\"")), "{ud}");
    assert!(ud.contains("- name: \"ubuntu\""), "{ud}");
    let done = format!("{base}done");
    assert!(ud.contains(&format!("curl -fsS -X POST '{done}'")), "{ud}");
    let (st, md) = api.fetch(&format!("{base}meta-data")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(md.contains("local-hostname: inst-3\n"), "{md}");
    let (st, v) = api.installer_post(&done).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    api.wait_state("inst-3", "deployed").await;
    // The CLI ends with the job, successfully; killed by its PID if it hangs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = deploy.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = deploy.kill();
            panic!("anvil machine deploy --wait did not end");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = deploy.wait_with_output().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs[0]["status"], "succeeded", "{jobs}");
}

/// A server restart ends the deploy job but not the installer run: the
/// watcher of the restarted server still fails it at its deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_still_fails_an_installer_that_never_calls_back() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("anvil.toml");
    std::fs::write(&conf, "[deploy]\ntimeout_secs = 4\n").unwrap();
    let args = ["--config", conf.to_str().unwrap()];
    let mut s = Server::start_with(&args);
    let (kernel_path, initrd_path, _) = dummy_files(dir.path());
    {
        let api = Api::new(&s);
        let (st, img) = api
            .post(
                "/images",
                json!({
                    "kind": "installer", "name": "debian-12", "os": "debian",
                    "kernel_path": kernel_path, "initrd_path": initrd_path,
                }),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{img}");
        api.ready_machine("inst-4").await;
        let (st, job) = api
            .post(
                "/machines/inst-4/actions/deploy",
                json!({"image": "debian-12", "ssh_keys": [KEY]}),
            )
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    }
    assert!(s.terminate().success());
    let (child, url) = common::spawn_serve(s.data_path(), &args);
    s.child = child;
    s.url = url;
    let api = Api::new(&s);
    assert_eq!(api.state("inst-4").await["state"], "deploying");
    let m = api.wait_state("inst-4", "failed").await;
    assert!(
        m["state_reason"]
            .as_str()
            .unwrap()
            .contains("did not call back"),
        "{m}"
    );
}
