//! A deployment's cloud-init network-config built from a real NetBox 4.7
//! (issue #7), through the real `anvil serve` binary.
//!
//! NetBox holds device `net-1`: a LAG `bond0` of `eth0` and `eth1`, the
//! device's address on the LAG, a trunk carrying VLAN 100 with the
//! sub-interface `bond0.100` and its addresses, and a config context with
//! the gateway, a static route, DNS and the bond's LACP rate. Anvil imports
//! the device, the test commissions the machine as its agent (hardware
//! facts with the NICs' kernel names), and the rendered network-config is
//! checked in `GET /machines/{id}/cloud-init` and in the FAT partition the
//! deploy's agent downloads, and read by Debian's cloud-init
//! (`cloud-init devel net-convert`). A NetBox address on a NIC the machine
//! does not have fails the deploy with 422 before anything starts.
//!
//! Skips (with a message) when `scripts/netbox/setup.sh` has not been run;
//! the cloud-init check skips without `ANVIL_CLOUDINIT_ROOT` or
//! `target/cloud-init/root` (scripts/test.sh provides both).

mod common;

use anvil_netbox_testenv::NetBox;
use common::{Server, client};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MAC0: &str = "02:00:00:07:00:01";
const MAC1: &str = "02:00:00:07:00:02";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example";

struct Api {
    c: reqwest::Client,
    s: Server,
}

impl Api {
    async fn send(&self, req: reqwest::RequestBuilder, token: &str) -> (StatusCode, Value) {
        let r = req.bearer_auth(token).send().await.unwrap();
        let st = r.status();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.c.get(self.s.api(path)), &self.s.token).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.c.post(self.s.api(path)).json(&body), &self.s.token)
            .await
    }

    async fn agent(&self, token: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.c.post(self.s.api(&format!("/agent{path}")));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (st, v) = self.send(req, token).await;
        assert_eq!(st, StatusCode::OK, "agent {path}: {v}");
        (st, v)
    }

    /// The per-boot token on the kernel line of the machine's iPXE script.
    async fn boot_token(&self) -> String {
        let script = self
            .c
            .get(format!("{}/boot/{MAC0}.ipxe", self.s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("anvil.token="))
            .unwrap_or_else(|| panic!("no anvil.token in {script}"))
            .to_string()
    }

    async fn next_step(&self, token: &str, kind: &str) -> Value {
        let (_, next) = self.agent(token, "/next", None).await;
        assert_eq!(next["step"]["kind"], kind, "{next}");
        next["step"].clone()
    }

    async fn report(&self, token: &str, step: &Value, seq: u64, body: Value) {
        let mut body = body;
        body["seq"] = json!(seq);
        let id = step["id"].as_str().unwrap();
        self.agent(token, &format!("/steps/{id}/report"), Some(body))
            .await;
    }

    async fn succeed(&self, token: &str, step: &Value, result: Value) {
        self.report(token, step, 1, json!({"status": "started"}))
            .await;
        self.report(
            token,
            step,
            2,
            json!({"status": "succeeded", "result": result}),
        )
        .await;
    }

    async fn wait_state(&self, host: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, m) = self.get(&format!("/machines/{host}")).await;
            if m["state"] == want {
                return;
            }
            assert!(Instant::now() < deadline, "{host} never {want}: {m}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn write_config(dir: &Path, url: &str, token: &str) -> PathBuf {
    let token_file = dir.join("netbox-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let cfg = dir.join("anvil.toml");
    std::fs::write(
        &cfg,
        format!(
            "[netbox]\nurl = \"{url}\"\ntoken_file = \"{}\"\ntimeout_secs = 30\nreconcile_interval_secs = 3600\n[netbox.scope]\nsite = \"dc1\"\n",
            token_file.display(),
        ),
    )
    .unwrap();
    cfg
}

fn id(v: &Value) -> i64 {
    v["id"].as_i64().unwrap_or_else(|| panic!("no id in {v}"))
}

/// The device and its network, in the order NetBox requires (LAG before
/// its members, VLAN before the interfaces using it, IPs last). Returns the
/// id of an interface with a MAC the machine will not have.
async fn seed(nb: &NetBox) -> i64 {
    let basics = nb.seed_basics("dc1").await.unwrap();
    let dev = nb
        .post(
            "/api/dcim/devices/",
            &json!({"name": "net-1", "status": "planned", "site": basics.site,
                    "device_type": basics.device_type, "role": basics.role}),
        )
        .await
        .unwrap();
    let device = id(&dev);
    let vlan = id(&nb
        .post("/api/ipam/vlans/", &json!({"vid": 100, "name": "storage"}))
        .await
        .unwrap());
    let bond = id(&nb
        .post(
            "/api/dcim/interfaces/",
            &json!({"device": device, "name": "bond0", "type": "lag", "mtu": 9000,
                    "mode": "tagged", "tagged_vlans": [vlan]}),
        )
        .await
        .unwrap());
    // 4.7 takes the MAC as a string on create (the MAC object, made primary).
    nb.post(
        "/api/dcim/interfaces/",
        &json!([
            {"device": device, "name": "eth0", "type": "10gbase-x-sfpp", "lag": bond, "mac_address": MAC0},
            {"device": device, "name": "eth1", "type": "10gbase-x-sfpp", "lag": bond, "mac_address": MAC1},
        ]),
    )
    .await
    .unwrap();
    let sub = id(&nb
        .post(
            "/api/dcim/interfaces/",
            &json!({"device": device, "name": "bond0.100", "type": "virtual", "parent": bond,
                    "mode": "access", "untagged_vlan": vlan}),
        )
        .await
        .unwrap());
    // A spare port whose MAC is not the machine's (nothing on it yet).
    let spare = id(&nb
        .post(
            "/api/dcim/interfaces/",
            &json!({"device": device, "name": "eth9", "type": "1000base-t", "mac_address": "02:99:00:00:00:09"}),
        )
        .await
        .unwrap());
    let ip = |addr: &str, iface: i64| json!({"address": addr, "status": "active", "assigned_object_type": "dcim.interface", "assigned_object_id": iface});
    nb.post(
        "/api/ipam/ip-addresses/",
        &json!([
            ip("10.64.0.10/24", bond),
            ip("192.168.100.10/24", sub),
            ip("2001:db8:100::10/64", sub),
        ]),
    )
    .await
    .unwrap();
    nb.post(
        "/api/extras/config-contexts/",
        &json!({"name": "anvil-network", "sites": [basics.site], "data": {"anvil": {
            "gateway4": "10.64.0.1",
            "routes": [{"to": "172.16.0.0/12", "via": "192.168.100.1", "metric": 100}],
            "dns": {"nameservers": ["10.64.0.53"], "search": ["lab.example.com"]},
            "bonds": {"bond0": {"lacp_rate": "fast", "transmit_hash_policy": "layer3+4"}}
        }}}),
    )
    .await
    .unwrap();
    spare
}

fn facts() -> Value {
    let nic = |name: &str, mac: &str| json!({"name": name, "mac": mac, "driver": "ixgbe", "link_up": true});
    json!({
        "schema_version": 1,
        "cpu": {"model": "QEMU Virtual CPU", "vendor": "GenuineIntel", "sockets": 1, "cores": 1, "threads": 1, "flags": []},
        "memory": {"total_bytes": 1u64 << 30, "dimms": []},
        "disks": [{"name": "vda", "serial": "NET-1", "size_bytes": 4u64 << 30, "transport": "virtio"}],
        "nics": [nic("enp1s0f0", MAC0), nic("enp1s0f1", MAC1)],
        "dmi": {"system_vendor": "Anvil Labs"},
        "boot": {"mode": "bios"},
    })
}

/// What the NetBox data above must become, by netplan v2 key.
fn check_network_config(nc: &Value) {
    assert_eq!(nc["version"], 2, "{nc}");
    let eths = nc["ethernets"].as_object().unwrap();
    assert_eq!(eths.len(), 2, "only the bond members: {nc}");
    for (name, mac) in [("enp1s0f0", MAC0), ("enp1s0f1", MAC1)] {
        assert_eq!(eths[name]["match"]["macaddress"], mac, "{nc}");
        assert!(eths[name].get("addresses").is_none(), "{nc}");
        assert!(eths[name].get("dhcp4").is_none_or(|d| d == false), "{nc}");
    }
    let bond = &nc["bonds"]["bond0"];
    assert_eq!(bond["interfaces"], json!(["enp1s0f0", "enp1s0f1"]), "{nc}");
    assert_eq!(bond["parameters"]["mode"], "802.3ad", "{nc}");
    assert_eq!(bond["parameters"]["lacp-rate"], "fast", "{nc}");
    assert_eq!(
        bond["parameters"]["transmit-hash-policy"], "layer3+4",
        "{nc}"
    );
    assert_eq!(bond["mtu"], 9000, "{nc}");
    assert_eq!(bond["addresses"], json!(["10.64.0.10/24"]), "{nc}");
    let text = nc.to_string();
    assert!(text.contains("10.64.0.1"), "gateway: {nc}");
    let vlan = &nc["vlans"]["bond0.100"];
    assert_eq!(vlan["id"], 100, "{nc}");
    assert_eq!(vlan["link"], "bond0", "{nc}");
    assert_eq!(
        vlan["addresses"],
        json!(["192.168.100.10/24", "2001:db8:100::10/64"]),
        "{nc}"
    );
    assert_eq!(vlan["routes"][0]["to"], "172.16.0.0/12", "{nc}");
    assert_eq!(vlan["routes"][0]["via"], "192.168.100.1", "{nc}");
    assert_eq!(vlan["routes"][0]["metric"], 100, "{nc}");
    assert!(text.contains("10.64.0.53"), "DNS: {nc}");
    assert!(text.contains("lab.example.com"), "search: {nc}");
    assert!(
        !text.contains("02:99:00:00:00:09"),
        "the unused port is not listed: {nc}"
    );
}

/// Debian's cloud-init, unpacked by `crates/anvil-cloudinit/scripts/cloud-init-env.sh`
/// (the same tree and command the anvil-cloudinit tests use).
fn cloud_init_root() -> Option<PathBuf> {
    let root = std::env::var_os("ANVIL_CLOUDINIT_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/cloud-init/root")
        });
    if root.join("usr/bin/cloud-init").exists() {
        Some(root)
    } else {
        eprintln!(
            "SKIPPED net-convert: cloud-init not unpacked; run crates/anvil-cloudinit/scripts/cloud-init-env.sh \
             (scripts/test.sh does) and export ANVIL_CLOUDINIT_ROOT"
        );
        None
    }
}

/// `cloud-init devel net-convert` to netplan and networkd; their output.
fn net_convert(root: &Path, config: &[u8], input_kind: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("network-config");
    std::fs::write(&input, config).unwrap();
    let mut all = String::new();
    for kind in ["netplan", "networkd"] {
        let out = dir.path().join(kind);
        let result = Command::new("/usr/bin/python3")
            .env("PYTHONPATH", root.join("usr/lib/python3/dist-packages"))
            .arg(root.join("usr/bin/cloud-init"))
            .args(["devel", "net-convert", "--network-data"])
            .arg(&input)
            .args([
                "--kind",
                input_kind,
                "--distro",
                "debian",
                "--output-kind",
                kind,
            ])
            .arg("--directory")
            .arg(&out)
            .args(["--mac", &format!("enp1s0f0,{MAC0}")])
            .args(["--mac", &format!("enp1s0f1,{MAC1}")])
            .output()
            .expect("run cloud-init");
        assert!(
            result.status.success(),
            "net-convert --output-kind {kind} refused\n{}\n--- stderr:\n{}",
            String::from_utf8_lossy(config),
            String::from_utf8_lossy(&result.stderr)
        );
        for entry in walk(&out) {
            all.push_str(&std::fs::read_to_string(entry).unwrap_or_default());
        }
    }
    all
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn mtype(image: &Path, file: &str) -> Vec<u8> {
    let out = Command::new("mtype")
        .args(["-i", image.to_str().unwrap(), &format!("::{file}")])
        .output()
        .expect("run mtype (mtools)");
    assert!(
        out.status.success(),
        "mtype {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_config_from_netbox_lag_vlan_addresses_routes_dns() {
    let Some(nb) = tokio::task::spawn_blocking(NetBox::start).await.unwrap() else {
        return;
    };
    let spare = seed(&nb).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &nb.url, &nb.token_v2);
    let api = Api {
        c: client(),
        s: Server::start_with(&["--config", cfg.to_str().unwrap()]),
    };

    // The start-up reconcile imports the device with its two MACs.
    let deadline = Instant::now() + Duration::from_secs(60);
    let machine = loop {
        let (st, m) = api.get("/machines/net-1").await;
        if st == StatusCode::OK {
            break m;
        }
        assert!(Instant::now() < deadline, "net-1 never imported: {m}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let macs: Vec<&str> = machine["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["mac"].as_str().unwrap())
        .collect();
    assert!(macs.contains(&MAC0) && macs.contains(&MAC1), "{machine}");

    // Commission: the agent reports the NICs' kernel names.
    let (st, v) = api
        .post("/machines/net-1/actions/commission", json!({}))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let token = api.boot_token().await;
    api.agent(
        &token,
        "/register",
        Some(json!({"mac": MAC0, "agent_version": "0.1.0"})),
    )
    .await;
    let inv = api.next_step(&token, "inventory").await;
    api.report(&token, &inv, 1, json!({"status": "started"}))
        .await;
    api.agent(
        &token,
        "/facts",
        Some(json!({"step_id": inv["id"], "facts": facts()})),
    )
    .await;
    api.report(&token, &inv, 2, json!({"status": "succeeded"}))
        .await;
    api.wait_state("net-1", "ready").await;

    // The operator's view already shows NetBox's network (timed: it is
    // mostly the three NetBox reads).
    let started = Instant::now();
    let (st, view) = api.get("/machines/net-1/cloud-init").await;
    eprintln!(
        "cloud-init view with the NetBox network reads: {:?}",
        started.elapsed()
    );
    assert_eq!(st, StatusCode::OK, "{view}");
    let shown = view["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "network-config")
        .unwrap_or_else(|| panic!("no network-config in {view}"))["content"]
        .as_str()
        .unwrap()
        .to_string();
    check_network_config(&serde_json::from_str(&shown).unwrap());

    // The config-drive flavor carries the same network as network_data.json.
    let (st, view) = api
        .get("/machines/net-1/cloud-init?flavor=config-drive")
        .await;
    assert_eq!(st, StatusCode::OK, "{view}");
    let network_data = view["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "openstack/latest/network_data.json")
        .unwrap_or_else(|| panic!("no network_data.json in {view}"))["content"]
        .as_str()
        .unwrap()
        .to_string();
    let nd: Value = serde_json::from_str(&network_data).unwrap();
    let text = nd.to_string();
    for needle in [
        "bond",
        "802.3ad",
        "vlan",
        "10.64.0.10",
        "192.168.100.10",
        "10.64.0.53",
    ] {
        assert!(text.contains(needle), "{needle} in {nd}");
    }
    if let Some(root) = cloud_init_root() {
        let rendered = net_convert(&root, network_data.as_bytes(), "network_data.json");
        for needle in ["802.3ad", "192.168.100.10/24", "172.16.0.0/12"] {
            assert!(rendered.contains(needle), "{needle} in\n{rendered}");
        }
    }

    // An image to deploy.
    let image = dir.path().join("tiny.raw");
    let mut disk = vec![0u8; 4 << 20];
    disk[..4096].fill(0x5a);
    std::fs::write(&image, &disk).unwrap();
    let (st, img) = api
        .post(
            "/images",
            json!({"path": image.to_str().unwrap(), "name": "tiny"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{img}");

    // A NetBox address on a port whose MAC the machine does not have: the
    // deploy is refused before anything starts, and says why.
    let bad = nb
        .post(
            "/api/ipam/ip-addresses/",
            &json!({"address": "10.99.0.10/24", "status": "active",
                    "assigned_object_type": "dcim.interface", "assigned_object_id": spare}),
        )
        .await
        .unwrap();
    let (st, v) = api
        .post(
            "/machines/net-1/actions/deploy",
            json!({"image": "tiny", "ssh_keys": [KEY]}),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("eth9") && detail.contains("not one of the machine's NICs"),
        "{v}"
    );
    let (_, m) = api.get("/machines/net-1").await;
    assert_eq!(m["state"], "ready", "nothing started: {m}");
    nb.delete(&format!("/api/ipam/ip-addresses/{}/", id(&bad)))
        .await
        .unwrap();

    // Deploy; the test is the agent up to the cloud-init step. The request
    // includes the NetBox reads (timed for docs/cloud-init.md, not asserted).
    let started = Instant::now();
    let (st, job) = api
        .post(
            "/machines/net-1/actions/deploy",
            json!({"image": "tiny", "ssh_keys": [KEY]}),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{job}");
    eprintln!(
        "deploy request with the NetBox network reads: {:?}",
        started.elapsed()
    );
    let token = api.boot_token().await;
    let (_, reg) = api
        .agent(
            &token,
            "/register",
            Some(json!({"mac": MAC0, "agent_version": "0.1.0"})),
        )
        .await;
    assert_eq!(reg["purpose"], "deployment", "{reg}");
    let erase = api.next_step(&token, "erase").await;
    api.succeed(&token, &erase, json!(null)).await;
    let write = api.next_step(&token, "write_image").await;
    let sha = write["params"]["sha256"].clone();
    api.succeed(&token, &write, json!({"sha256": sha})).await;
    let grow = api.next_step(&token, "grow_root").await;
    api.succeed(&token, &grow, json!(null)).await;
    let ci = api.next_step(&token, "cloud_init").await;
    let fat = api
        .c
        .get(ci["params"]["url"].as_str().unwrap())
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(fat.status(), StatusCode::OK);
    let fat_path = dir.path().join("cidata.img");
    std::fs::write(&fat_path, fat.bytes().await.unwrap()).unwrap();
    let written = mtype(&fat_path, "network-config");
    let nc: Value = serde_json::from_slice(&written).unwrap();
    check_network_config(&nc);
    // The operator sees what the machine got (no secrets in it to mask).
    let (_, view) = api.get("/machines/net-1/cloud-init").await;
    let shown = view["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "network-config")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        serde_json::from_str::<Value>(&shown).unwrap(),
        nc,
        "view = partition"
    );
    let meta: Value = serde_json::from_slice(&mtype(&fat_path, "meta-data")).unwrap();
    assert_eq!(meta["local-hostname"], "net-1");

    // Debian's cloud-init reads it into the bond, the VLAN and the routes.
    if let Some(root) = cloud_init_root() {
        let rendered = net_convert(&root, &written, "yaml");
        for needle in [
            "bond0",
            "802.3ad",
            "bond0.100",
            "192.168.100.10/24",
            "2001:db8:100::10/64",
            "172.16.0.0/12",
            "10.64.0.53",
            "lab.example.com",
        ] {
            assert!(rendered.contains(needle), "{needle} in\n{rendered}");
        }
    }

    // NetBox gone: the view of the deployment still shows what the agent
    // got (kept with the run); another flavor would need NetBox: 502.
    tokio::task::spawn_blocking(move || drop(nb)).await.unwrap();
    let (st, view) = api.get("/machines/net-1/cloud-init").await;
    assert_eq!(st, StatusCode::OK, "{view}");
    let kept = view["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "network-config")
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(serde_json::from_str::<Value>(&kept).unwrap(), nc);
    let (st, v) = api
        .get("/machines/net-1/cloud-init?flavor=config-drive")
        .await;
    assert_eq!(st, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["type"], "https://anvil.dev/problems/netbox", "{v}");
}
