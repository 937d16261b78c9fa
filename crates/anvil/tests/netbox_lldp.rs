//! LLDP neighbours written back to a real NetBox 4.7 as cables (issue 6),
//! through the real `anvil serve` binary and CLI.
//!
//! NetBox holds the server `lldp-1` (site dc1, the sync's scope) with three
//! NICs, and outside the scope the switch `leaf-1` with three ports and a
//! patch panel `patch-1` already cabled to the switch's `Ethernet2`. Anvil
//! imports the server; the test commissions it as its agent, with facts
//! whose LLDP neighbours name:
//! * `leaf-1.dc1.example.net` port `Ethernet1` on the first NIC: a cable is
//!   created (short host name = device name, interface-name port ID);
//! * `leaf-1` with a MAC port ID and the description `Ethernet2` on the
//!   second: that port is cabled to the patch panel, a conflict, and the
//!   panel's cable is left as it is;
//! * `spine-9`, which NetBox does not have, on the third: a conflict.
//!
//! Then: a second sync writes nothing; a dry run after the cable was
//! deleted in NetBox plans it and writes nothing; a sync recreates it.
//! Skips (with a message) when `scripts/netbox/setup.sh` has not been run.

mod common;

use anvil_netbox_testenv::NetBox;
use common::{Server, anvil_cmd, client};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MAC0: &str = "02:00:00:06:00:01";
const MAC1: &str = "02:00:00:06:00:02";
const MAC2: &str = "02:00:00:06:00:03";
const LEAF_CHASSIS: &str = "02:5e:00:00:00:01";

fn write_config(dir: &Path, url: &str, token: &str) -> PathBuf {
    let token_file = dir.join("netbox-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let cfg = dir.join("anvil.toml");
    std::fs::write(
        &cfg,
        format!(
            "[netbox]\nurl = \"{url}\"\ntoken_file = \"{}\"\ntimeout_secs = 30\nreconcile_interval_secs = 3600\n\
             [netbox.scope]\nsite = \"dc1\"\n[netbox.mapping]\nlldp_cables = true\n",
            token_file.display(),
        ),
    )
    .unwrap();
    cfg
}

fn id(v: &Value) -> u64 {
    v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
}

struct Seeded {
    device: u64,
    eth: [u64; 3],
    leaf: [u64; 3],
    panel_cable: u64,
    panel_port: u64,
}

async fn seed(nb: &NetBox) -> Seeded {
    let basics = nb.seed_basics("dc1").await.unwrap();
    let net_site = nb.create_site("dc1-net").await.unwrap();
    let leaf_role = nb.create_role("leaf").await.unwrap();
    let dev = |name: &str, site: i64, role: i64| {
        json!({"name": name, "status": "active", "site": site,
               "device_type": basics.device_type, "role": role})
    };
    let server = id(&nb
        .post(
            "/api/dcim/devices/",
            &dev("lldp-1", basics.site, basics.role),
        )
        .await
        .unwrap());
    let leaf = id(&nb
        .post("/api/dcim/devices/", &dev("leaf-1", net_site, leaf_role))
        .await
        .unwrap());
    let panel = id(&nb
        .post("/api/dcim/devices/", &dev("patch-1", net_site, leaf_role))
        .await
        .unwrap());
    let eths = nb
        .post(
            "/api/dcim/interfaces/",
            &json!([
                {"device": server, "name": "eth0", "type": "10gbase-x-sfpp", "mac_address": MAC0},
                {"device": server, "name": "eth1", "type": "10gbase-x-sfpp", "mac_address": MAC1},
                {"device": server, "name": "eth2", "type": "10gbase-x-sfpp", "mac_address": MAC2},
            ]),
        )
        .await
        .unwrap();
    let ports = nb
        .post(
            "/api/dcim/interfaces/",
            &json!([
                {"device": leaf, "name": "Ethernet1", "type": "10gbase-x-sfpp"},
                {"device": leaf, "name": "Ethernet2", "type": "10gbase-x-sfpp"},
                {"device": leaf, "name": "Ethernet3", "type": "10gbase-x-sfpp"},
            ]),
        )
        .await
        .unwrap();
    let panel_port = id(&nb
        .post(
            "/api/dcim/interfaces/",
            &json!({"device": panel, "name": "p1", "type": "10gbase-x-sfpp"}),
        )
        .await
        .unwrap());
    let ids = |v: &Value| -> [u64; 3] {
        let a = v.as_array().unwrap();
        [id(&a[0]), id(&a[1]), id(&a[2])]
    };
    let (eth, leaf_ports) = (ids(&eths), ids(&ports));
    let cable = nb
        .post(
            "/api/dcim/cables/",
            &json!({"a_terminations": [{"object_type": "dcim.interface", "object_id": panel_port}],
                    "b_terminations": [{"object_type": "dcim.interface", "object_id": leaf_ports[1]}],
                    "status": "connected", "label": "documented"}),
        )
        .await
        .unwrap();
    Seeded {
        device: server,
        eth,
        leaf: leaf_ports,
        panel_cable: id(&cable),
        panel_port,
    }
}

fn facts() -> Value {
    let nic = |name: &str, mac: &str| json!({"name": name, "mac": mac, "driver": "ixgbe", "link_up": true});
    json!({
        "schema_version": 1,
        "cpu": {"model": "QEMU Virtual CPU", "vendor": "GenuineIntel", "sockets": 1, "cores": 1, "threads": 1, "flags": []},
        "memory": {"total_bytes": 1u64 << 30, "dimms": []},
        "disks": [{"name": "vda", "serial": "LLDP-1", "size_bytes": 4u64 << 30, "transport": "virtio"}],
        "nics": [nic("enp1s0f0", MAC0), nic("enp1s0f1", MAC1), nic("enp1s0f2", MAC2)],
        "dmi": {"system_vendor": "Anvil Labs"},
        "boot": {"mode": "bios"},
        "lldp": [
            {"interface": "enp1s0f0", "chassis_id": LEAF_CHASSIS, "chassis_id_subtype": "mac_address",
             "port_id": "Ethernet1", "port_id_subtype": "interface_name",
             "system_name": "leaf-1.dc1.example.net", "vlan_id": 100, "ttl": 120},
            {"interface": "enp1s0f1", "chassis_id": LEAF_CHASSIS, "chassis_id_subtype": "mac_address",
             "port_id": "02:5e:00:00:01:02", "port_id_subtype": "mac_address",
             "port_description": "Ethernet2", "system_name": "leaf-1", "ttl": 120},
            {"interface": "enp1s0f2", "chassis_id": "02:5e:00:00:09:09", "chassis_id_subtype": "mac_address",
             "port_id": "Ethernet7", "port_id_subtype": "interface_name",
             "system_name": "spine-9", "ttl": 120},
        ],
    })
}

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

    async fn agent(&self, token: &str, path: &str, body: Option<Value>) -> Value {
        let mut req = self.c.post(self.s.api(&format!("/agent{path}")));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (st, v) = self.send(req, token).await;
        assert_eq!(st, StatusCode::OK, "agent {path}: {v}");
        v
    }

    async fn report(&self, token: &str, step: &Value, seq: u64, status: &str) {
        let id = step["id"].as_str().unwrap();
        self.agent(
            token,
            &format!("/steps/{id}/report"),
            Some(json!({"seq": seq, "status": status})),
        )
        .await;
    }

    /// Commissions `lldp-1` as its agent would: register, the inventory
    /// step with `facts()`, success.
    async fn commission(&self) {
        let (st, v) = self
            .send(
                self.c
                    .post(self.s.api("/machines/lldp-1/actions/commission"))
                    .json(&json!({})),
                &self.s.token,
            )
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        let script = self
            .c
            .get(format!("{}/boot/{MAC0}.ipxe", self.s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let token = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("anvil.token="))
            .unwrap_or_else(|| panic!("no anvil.token in {script}"))
            .to_string();
        self.agent(
            &token,
            "/register",
            Some(json!({"mac": MAC0, "agent_version": "0.1.0"})),
        )
        .await;
        let next = self.agent(&token, "/next", None).await;
        let step = next["step"].clone();
        assert_eq!(step["kind"], "inventory", "{next}");
        self.report(&token, &step, 1, "started").await;
        self.agent(
            &token,
            "/facts",
            Some(json!({"step_id": step["id"], "facts": facts()})),
        )
        .await;
        self.report(&token, &step, 2, "succeeded").await;
    }

    /// `POST /netbox/sync` without the CLI's 60 s limit: a sync creating
    /// hundreds of cables on a loaded machine takes longer.
    async fn sync_long(&self) -> Value {
        let long = reqwest::Client::builder()
            .timeout(Duration::from_secs(900))
            .build()
            .unwrap();
        let (st, v) = self
            .send(
                long.post(self.s.api("/netbox/sync")).json(&json!({})),
                &self.s.token,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }

    /// `anvil netbox sync [--dry-run] -o json`: the report.
    fn sync(&self, dry_run: bool) -> Value {
        let mut cmd = anvil_cmd(&self.s);
        cmd.args(["netbox", "sync", "-o", "json"]);
        if dry_run {
            cmd.arg("--dry-run");
        }
        let out = cmd.output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "no JSON: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(out.status.success(), "anvil netbox sync: {v}");
        v
    }
}

async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The NetBox cables touching device `device`.
async fn cables_of(nb: &NetBox, device: u64) -> Vec<Value> {
    let page = nb
        .get(&format!("/api/dcim/cables/?device_id={device}"))
        .await
        .unwrap();
    page["results"].as_array().unwrap().clone()
}

/// The interface ids at both ends of a cable.
fn ends(cable: &Value) -> BTreeSet<u64> {
    ["a_terminations", "b_terminations"]
        .iter()
        .flat_map(|k| cable[k].as_array().unwrap().iter())
        .map(|t| {
            assert_eq!(t["object_type"], "dcim.interface", "{cable}");
            t["object_id"].as_u64().unwrap()
        })
        .collect()
}

fn kinds(report: &Value) -> Vec<String> {
    let mut k: Vec<String> = report["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap().to_string())
        .collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lldp_neighbours_become_cables_conflicts_are_reported() {
    let Some(nb) = tokio::task::spawn_blocking(NetBox::start).await.unwrap() else {
        return;
    };
    let seeded = seed(&nb).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &nb.url, &nb.token_v2);
    let api = Api {
        c: client(),
        s: Server::start_with(&["--config", cfg.to_str().unwrap()]),
    };
    eventually(60, "lldp-1 imported", || async {
        (api.get("/machines/lldp-1").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    // The switch is out of scope: not imported.
    assert_eq!(api.get("/machines/leaf-1").await.0, StatusCode::NOT_FOUND);
    assert!(cables_of(&nb, seeded.device).await.is_empty());

    // Commissioning hears the neighbours; the next reconcile (the write-back
    // that follows the machine's change to `ready`, or the start-up one if
    // it is still running) cables the first NIC within seconds.
    api.commission().await;
    let cable = eventually(60, "the LLDP cable in NetBox", || async {
        cables_of(&nb, seeded.device).await.into_iter().next()
    })
    .await;
    assert_eq!(
        ends(&cable),
        BTreeSet::from([seeded.eth[0], seeded.leaf[0]]),
        "lldp-1 eth0 <-> leaf-1 Ethernet1: {cable}"
    );
    assert_eq!(cable["status"]["value"], "connected", "{cable}");
    // Let the write-back finish (state written) before the next sync.
    eventually(60, "the write-back", || async {
        let (_, st) = api.get("/netbox/status").await;
        let d = nb
            .get(&format!("/api/dcim/devices/{}/", seeded.device))
            .await
            .ok()?;
        (st["pending_write_backs"] == 0 && d["custom_fields"]["anvil_state"] == "ready")
            .then_some(())
    })
    .await;

    // A sync now: the cable is there, nothing is written; the two other
    // neighbours are conflicts.
    let report = api.sync(false);
    assert_eq!(report["error"], Value::Null, "{report}");
    assert_eq!(report["written"], 0, "nothing to write: {report}");
    assert_eq!(report["cables"]["created"], 0, "{report}");
    assert_eq!(report["cables"]["unchanged"], 1, "{report}");
    assert_eq!(
        kinds(&report),
        vec!["cable_on_switch_interface", "lldp_unknown_device"],
        "{report}"
    );
    let conflicts = report["conflicts"].as_array().unwrap();
    let on_switch = conflicts
        .iter()
        .find(|c| c["kind"] == "cable_on_switch_interface")
        .unwrap();
    let msg = on_switch["message"].as_str().unwrap();
    assert!(
        msg.contains("lldp-1")
            && msg.contains("eth1")
            && msg.contains("Ethernet2")
            && msg.contains("patch-1"),
        "{msg}"
    );
    assert_eq!(on_switch["device_id"], seeded.device);
    assert!(
        conflicts.iter().any(|c| c["kind"] == "lldp_unknown_device"
            && c["message"].as_str().unwrap().contains("spine-9")),
        "{report}"
    );
    // The documented cable is untouched.
    let panel = nb
        .get(&format!("/api/dcim/cables/{}/", seeded.panel_cable))
        .await
        .unwrap();
    assert_eq!(
        ends(&panel),
        BTreeSet::from([seeded.panel_port, seeded.leaf[1]])
    );
    assert_eq!(panel["label"], "documented");
    assert_eq!(
        nb.get("/api/dcim/cables/").await.unwrap()["count"],
        2,
        "only the LLDP cable was added"
    );
    // Conflicts are events and in the status.
    let (_, events) = api.get("/events?limit=1000").await;
    let conflict_events: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "netbox.conflict")
        .collect();
    assert!(
        conflict_events
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("patch-1")),
        "{events}"
    );
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "netbox.cable_created"),
        "{events}"
    );
    let (_, status) = api.get("/netbox/status").await;
    assert!(
        status["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "lldp_unknown_device"),
        "{status}"
    );

    // Again: still nothing to write, and the conflicts, still reported, are
    // not recorded as events a second time.
    let again = api.sync(false);
    assert_eq!(again["written"], 0, "{again}");
    assert_eq!(again["cables"]["unchanged"], 1, "{again}");
    assert_eq!(kinds(&again), kinds(&report), "{again}");
    let (_, events) = api.get("/events?limit=1000").await;
    let spine_events = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] == "netbox.conflict" && e["message"].as_str().unwrap().contains("spine-9")
        })
        .count();
    assert_eq!(spine_events, 1, "{events}");

    // The operator deletes the cable in NetBox. A dry run plans it again
    // and writes nothing.
    nb.delete(&format!("/api/dcim/cables/{}/", id(&cable)))
        .await
        .unwrap();
    let plan = api.sync(true);
    assert_eq!(plan["dry_run"], true, "{plan}");
    assert_eq!(plan["cables"]["pending"], 1, "{plan}");
    assert_eq!(plan["cables"]["created"], 0, "{plan}");
    let planned = &plan["cables"]["cables"][0];
    assert_eq!(planned["interface_id"], seeded.eth[0], "{plan}");
    assert_eq!(planned["peer_interface_id"], seeded.leaf[0], "{plan}");
    assert_eq!(planned["peer_device"], "leaf-1", "{plan}");
    assert!(plan["pending"].as_u64().unwrap() >= 1, "{plan}");
    assert!(
        cables_of(&nb, seeded.device).await.is_empty(),
        "a dry run writes nothing"
    );

    // A sync creates it again, between the same two interfaces.
    let report = api.sync(false);
    assert_eq!(report["error"], Value::Null, "{report}");
    assert_eq!(report["cables"]["created"], 1, "{report}");
    assert_eq!(report["written"], 1, "{report}");
    let now = cables_of(&nb, seeded.device).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(
        ends(&now[0]),
        BTreeSet::from([seeded.eth[0], seeded.leaf[0]])
    );
    // Ethernet3 stayed free.
    let e3 = nb
        .get(&format!("/api/dcim/interfaces/{}/", seeded.leaf[2]))
        .await
        .unwrap();
    assert_eq!(e3["cable"], Value::Null);
    tokio::task::spawn_blocking(move || drop(nb)).await.unwrap();
}

/// How many machines the by-hand measurement commissions (default 200).
fn bench_machines() -> usize {
    std::env::var("ANVIL_LLDP_BENCH_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// What the LLDP cables cost a reconcile (run by hand, figures in
/// docs/netbox-sync.md):
///
/// ```text
/// eval "$(scripts/netbox/setup.sh)"
/// cargo test --release -p anvil --test netbox_lldp -- --ignored --nocapture
/// ```
///
/// N servers (one NIC each) commissioned with one LLDP neighbour each, a
/// leaf with N ports created afterwards; then the sync that creates the N
/// cables, and no-change reconciles, against NetBox answering the reads the
/// cable step sends (devices by name, interfaces with cables) and those of
/// the rest of the reconcile, with the bare client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand, see the doc comment"]
async fn measure_lldp_cables() {
    let Some(nb) = tokio::task::spawn_blocking(NetBox::start).await.unwrap() else {
        return;
    };
    let n = bench_machines();
    let basics = nb.seed_basics("dc1").await.unwrap();
    let t = Instant::now();
    let devices: Vec<Value> = (0..n)
        .map(|i| {
            json!({"name": format!("srv-{i:04}"), "status": "active", "site": basics.site,
                   "device_type": basics.device_type, "role": basics.role})
        })
        .collect();
    let created = nb
        .post("/api/dcim/devices/", &Value::Array(devices))
        .await
        .unwrap();
    let ids: Vec<u64> = created.as_array().unwrap().iter().map(id).collect();
    let mac = |i: usize| format!("02:00:00:16:{:02x}:{:02x}", i / 256, i % 256);
    let ifaces: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"device": d, "name": "eth0", "type": "10gbase-x-sfpp", "mac_address": mac(i)}))
        .collect();
    nb.post("/api/dcim/interfaces/", &Value::Array(ifaces))
        .await
        .unwrap();
    eprintln!("seeded {n} servers in {:.1?}", t.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &nb.url, &nb.token_v2);
    let api = Api {
        c: client(),
        s: Server::start_with(&["--config", cfg.to_str().unwrap()]),
    };
    eventually(300, "the import", || async {
        let (_, st) = api.get("/netbox/status").await;
        (st["last_sync"]["status"] == "succeeded").then_some(())
    })
    .await;
    let t = Instant::now();
    for i in 0..n {
        let host = format!("srv-{i:04}");
        let m = mac(i);
        let (st, v) = api
            .send(
                api.c
                    .post(api.s.api(&format!("/machines/{host}/actions/commission")))
                    .json(&json!({})),
                &api.s.token,
            )
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        let script = api
            .c
            .get(format!("{}/boot/{m}.ipxe", api.s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let token = script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("anvil.token="))
            .unwrap()
            .to_string();
        api.agent(
            &token,
            "/register",
            Some(json!({"mac": m, "agent_version": "0.1.0"})),
        )
        .await;
        let next = api.agent(&token, "/next", None).await;
        let step = next["step"].clone();
        api.report(&token, &step, 1, "started").await;
        let mut f = facts();
        f["nics"] = json!([{"name": "enp1s0", "mac": m, "link_up": true}]);
        f["lldp"] = json!([{"interface": "enp1s0", "chassis_id": LEAF_CHASSIS,
            "chassis_id_subtype": "mac_address", "port_id": format!("Ethernet{}", i + 1),
            "port_id_subtype": "interface_name", "system_name": "leaf-1.dc1.example.net", "ttl": 120}]);
        api.agent(
            &token,
            "/facts",
            Some(json!({"step_id": step["id"], "facts": f})),
        )
        .await;
        api.report(&token, &step, 2, "succeeded").await;
    }
    eprintln!("commissioned {n} machines in {:.1?}", t.elapsed());
    // The write-backs (the leaf is not in NetBox yet: no cables, conflicts):
    // changes are queued from the event log every 2 s, so settled means
    // nothing pending and no new run for 6 s.
    let settled = || async {
        let (_, st) = api.get("/netbox/status").await;
        (st["pending_write_backs"] == 0).then(|| st["recent"][0]["id"].clone())
    };
    loop {
        let before = eventually(600, "the write-backs", settled).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        if settled().await == Some(before) {
            break;
        }
    }

    // Now the leaf appears in NetBox, with a port per server.
    let net_site = nb.create_site("dc1-net").await.unwrap();
    let leaf_role = nb.create_role("leaf").await.unwrap();
    let leaf = id(&nb
        .post(
            "/api/dcim/devices/",
            &json!({"name": "leaf-1", "status": "active", "site": net_site,
                    "device_type": basics.device_type, "role": leaf_role}),
        )
        .await
        .unwrap());
    let ports: Vec<Value> = (0..n)
        .map(|i| json!({"device": leaf, "name": format!("Ethernet{}", i + 1), "type": "10gbase-x-sfpp"}))
        .collect();
    nb.post("/api/dcim/interfaces/", &Value::Array(ports))
        .await
        .unwrap();

    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let t = Instant::now();
    let first = api.sync_long().await;
    let first_took = t.elapsed();
    assert_eq!(first["cables"]["created"], n, "{}", first["error"]);
    eprintln!(
        "sync creating {n} cables: {:.2} s through the API ({} ms inside the server); load {}",
        first_took.as_secs_f64(),
        first["duration_ms"],
        load()
    );

    let bare = anvil_netbox::NetBoxClient::new(anvil_netbox::ClientConfig::new(
        nb.url.clone(),
        nb.token_v2.clone(),
    ))
    .unwrap();
    let scope = anvil_netbox::Scope {
        site: Some("dc1".into()),
        ..Default::default()
    };
    let mapping = anvil_netbox::Mapping::default();
    let (mut with, mut main_reads, mut cable_reads) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let snap = bare.snapshot(&scope, &mapping).await.unwrap();
        main_reads.push(t.elapsed());
        let t = Instant::now();
        let named = bare
            .devices_named(&["leaf-1".into(), "leaf-1.dc1.example.net".into()])
            .await
            .unwrap();
        let devs: Vec<u64> = snap.devices.iter().map(|d| d.id).collect();
        let switches: Vec<u64> = named.iter().map(|d| d.id).collect();
        let mut ifs = bare.cable_interfaces(&devs, true).await.unwrap();
        ifs.extend(bare.cable_interfaces(&switches, false).await.unwrap());
        cable_reads.push(t.elapsed());
        assert_eq!(ifs.len(), 2 * n);
        let r = api.sync_long().await;
        assert_eq!(r["cables"]["unchanged"], n, "{r}");
        assert_eq!(r["written"], 0, "{r}");
        with.push(Duration::from_millis(r["duration_ms"].as_u64().unwrap()));
    }
    let (with, main_reads, cable_reads) = (median(with), median(main_reads), median(cable_reads));
    eprintln!(
        "no-change reconcile of {n} machines with {n} LLDP cables: {:.2} s inside the server; \
         NetBox's reads: {:.2} s for the devices and interfaces, {:.2} s for the cable step; \
         ratio reconcile / all reads {:.2}; load {}",
        with.as_secs_f64(),
        main_reads.as_secs_f64(),
        cable_reads.as_secs_f64(),
        with.as_secs_f64() / (main_reads + cable_reads).as_secs_f64(),
        load()
    );
    tokio::task::spawn_blocking(move || drop(nb)).await.unwrap();
}
