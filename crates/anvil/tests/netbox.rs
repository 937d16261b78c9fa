//! NetBox synchronisation against a real NetBox 4.7 (issue #5), through the
//! real `anvil serve` binary, its API and its CLI.
//!
//! NetBox comes from `anvil-netbox-testenv` (a throw-away instance cloned
//! from a migrated template; skipped with a message when
//! `scripts/netbox/setup.sh` has not been run, which `scripts/test.sh`
//! always does). Anvil reaches NetBox through a TCP relay on loopback that
//! the test can cut, to check that write-backs survive NetBox being down.

mod common;

use anvil_netbox_testenv::{DeviceSpec, NetBox};
use common::{Server, anvil_cmd, client};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A TCP relay 127.0.0.1:port → `upstream` that refuses connections while
/// `down` is set (NetBox "down" without touching NetBox).
struct Relay {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
}

async fn relay(upstream: SocketAddr) -> Relay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if flag.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            let flag = flag.clone();
            tokio::spawn(async move {
                let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                // Going down also cuts the open (keep-alive) connections.
                let cut = async {
                    while !flag.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                    _ = cut => {}
                }
            });
        }
    });
    Relay { addr, down }
}

fn upstream_of(url: &str) -> SocketAddr {
    let u = url::Url::parse(url).unwrap();
    format!("{}:{}", u.host_str().unwrap(), u.port().unwrap())
        .parse()
        .unwrap()
}

const SECRET: &str = "webhook-secret-for-tests";

fn write_config(dir: &std::path::Path, url: &str, token: &str) -> std::path::PathBuf {
    let token_file = dir.join("netbox-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let secret_file = dir.join("netbox-webhook-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let cfg = dir.join("anvil.toml");
    std::fs::write(
        &cfg,
        format!(
            "[netbox]\nurl = \"{url}\"\ntoken_file = \"{}\"\nwebhook_secret_file = \"{}\"\ntimeout_secs = 30\nreconcile_interval_secs = 3600\n[netbox.scope]\nsite = \"dc1\"\n",
            token_file.display(),
            secret_file.display()
        ),
    )
    .unwrap();
    cfg
}

fn cli_json(s: &Server, args: &[&str]) -> (Value, i32) {
    let out = anvil_cmd(s)
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "anvil {args:?} printed no JSON (exit {code}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, code)
}

async fn get(s: &Server, path: &str) -> Value {
    client()
        .get(s.api(path))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `check` every 250 ms until it returns Some, or panics after `secs`.
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

async fn wait_for_first_sync(s: &Server) {
    eventually(60, "the start-up reconcile", || async {
        let st = get(s, "/netbox/status").await;
        st["last_sync"]["status"]
            .as_str()
            .filter(|s| *s != "running")
            .map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_write_back_conflicts_webhooks_and_outage() {
    let Some(nb) = NetBox::start() else { return };
    let relay = relay(upstream_of(&nb.url)).await;
    let dir = tempfile::tempdir().unwrap();
    // The v1 token: the header is chosen from the token's form (Token …).
    let cfg = write_config(dir.path(), &format!("http://{}", relay.addr), &nb.token_v1);
    // The site first: NetBox answers 400 to a filter on a site it lacks.
    let basics = nb.seed_basics("dc1").await.unwrap();
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    wait_for_first_sync(&s).await;
    let st = get(&s, "/netbox/status").await;
    assert_eq!(st["last_sync"]["status"], "succeeded", "{st}");

    let d1 = nb
        .create_device(&basics, &DeviceSpec::numbered(1, 2))
        .await
        .unwrap();
    let d2 = nb
        .create_device(&basics, &DeviceSpec::numbered(2, 2))
        .await
        .unwrap();
    let mut spec3 = DeviceSpec::numbered(3, 2);
    spec3.serial = None;
    let d3 = nb.create_device(&basics, &spec3).await.unwrap();

    // Dry run: the plan, nothing changed.
    let (plan, code) = cli_json(&s, &["netbox", "sync", "--dry-run"]);
    assert_eq!(code, 0, "{plan}");
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["created"], 3, "{plan}");
    assert_eq!(plan["plan"]["create"].as_array().unwrap().len(), 3);
    assert_eq!(
        get(&s, "/machines").await["total"],
        0,
        "a dry run changes nothing"
    );

    // Import, by a caller that stops waiting after 100 ms (a CLI or a
    // playbook whose request timed out during a long first import): the
    // server finishes the sync anyway and records it.
    let before = get(&s, "/netbox/status").await["last_sync"]["id"]
        .as_i64()
        .unwrap();
    let gave_up = client()
        .post(s.api("/netbox/sync"))
        .bearer_auth(&s.token)
        .timeout(Duration::from_millis(100))
        .json(&json!({"dry_run": false}))
        .send()
        .await;
    assert!(
        gave_up.as_ref().is_err_and(|e| e.is_timeout()),
        "the import should outlast 100 ms: {gave_up:?}"
    );
    let report = eventually(120, "the abandoned import to finish", || async {
        let st = get(&s, "/netbox/status").await;
        let last = &st["last_sync"];
        (last["id"].as_i64() > Some(before) && last["status"] != "running").then(|| last.clone())
    })
    .await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["created"], 3, "{report}");
    assert_eq!(report["conflicts"], 0, "{report}");
    assert!(
        report["written"].as_u64().unwrap() >= 3,
        "state field written: {report}"
    );
    let m1 = get(&s, "/machines/node-00001").await;
    assert_eq!(m1["serial"], "SN-000001");
    assert_eq!(m1["bmc"]["address"], "10.128.0.1");
    let ifaces = m1["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 2, "{m1}");
    assert_eq!(ifaces[0]["name"], "eth0");
    assert_eq!(ifaces[0]["mac"], "02:00:00:00:01:00");
    assert_eq!(ifaces[0]["pxe"], true);
    assert_eq!(ifaces[0]["ipv4"], "10.64.0.1");
    assert_eq!(ifaces[1]["mac"], "02:00:00:00:01:01");
    assert_eq!(m1["facts"]["netbox"]["device_id"], d1.id);
    // The custom field was created, set to `new`; the status is untouched.
    let dev1 = nb
        .get(&format!("/api/dcim/devices/{}/", d1.id))
        .await
        .unwrap();
    assert_eq!(dev1["custom_fields"]["anvil_state"], "new");
    assert_eq!(dev1["status"]["value"], "planned");

    // Running it again changes nothing.
    let (again, code) = cli_json(&s, &["netbox", "sync"]);
    assert_eq!(code, 0);
    assert_eq!(
        (
            &again["created"],
            &again["updated"],
            &again["unchanged"],
            &again["written"]
        ),
        (&json!(0), &json!(0), &json!(3), &json!(0)),
        "{again}"
    );

    // Write-back: a state change, a discovered interface, a discovered serial.
    let http = client();
    let r = http
        .post(s.api("/machines/node-00001/state"))
        .bearer_auth(&s.token)
        .json(&json!({"state": "ready"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = http
        .post(s.api("/machines/node-00001/interfaces"))
        .bearer_auth(&s.token)
        .json(&json!({"mac": "02:00:00:00:01:02", "name": "eth2", "pxe": false}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = http
        .patch(s.api("/machines/node-00003"))
        .bearer_auth(&s.token)
        .json(&json!({"serial": "SN-FOUND-3"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    eventually(30, "the write-back of node-00001", || async {
        let d = nb
            .get(&format!("/api/dcim/devices/{}/", d1.id))
            .await
            .ok()?;
        (d["custom_fields"]["anvil_state"] == "ready" && d["status"]["value"] == "inventory")
            .then_some(())
    })
    .await;
    let iface = eventually(30, "eth2 with its MAC object in NetBox", || async {
        let l = nb
            .get(&format!(
                "/api/dcim/interfaces/?device_id={}&name=eth2",
                d1.id
            ))
            .await
            .ok()?;
        let i = l["results"].get(0)?.clone();
        i["primary_mac_address"].is_object().then_some(i)
    })
    .await;
    assert_eq!(
        iface["primary_mac_address"]["mac_address"],
        "02:00:00:00:01:02"
    );
    eventually(30, "node-00003's serial in NetBox", || async {
        let d = nb
            .get(&format!("/api/dcim/devices/{}/", d3.id))
            .await
            .ok()?;
        (d["serial"] == "SN-FOUND-3").then_some(())
    })
    .await;

    // A conflict is reported, not overwritten.
    nb.patch(
        &format!("/api/dcim/devices/{}/", d2.id),
        &json!({"serial": "SN-OTHER"}),
    )
    .await
    .unwrap();
    let (report, _) = cli_json(&s, &["netbox", "sync"]);
    let conflicts = report["conflicts"].as_array().unwrap();
    assert!(
        conflicts
            .iter()
            .any(|c| c["kind"] == "serial_mismatch" && c["device_id"] == d2.id),
        "{report}"
    );
    let dev2 = nb
        .get(&format!("/api/dcim/devices/{}/", d2.id))
        .await
        .unwrap();
    assert_eq!(dev2["serial"], "SN-OTHER");
    assert_eq!(get(&s, "/machines/node-00002").await["serial"], "SN-000002");
    let status = get(&s, "/netbox/status").await;
    assert!(
        status["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["kind"] == "serial_mismatch"),
        "{status}"
    );
    let events = get(&s, "/events?limit=1000").await;
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "netbox.conflict"),
        "a conflict is an event"
    );

    // Webhooks: unsigned or wrongly signed → 401; signed → applied within seconds.
    let hook = s.api("/netbox/webhook");
    let body = json!({"event": "updated", "object_type": "dcim.device", "data": {"id": d1.id}})
        .to_string();
    let r = http
        .post(&hook)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = http
        .post(&hook)
        .header("content-type", "application/json")
        .header(
            "x-hook-signature",
            anvil_netbox::webhook::sign(b"wrong", body.as_bytes()),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    nb.create_webhook_rule(&hook, SECRET).await.unwrap();
    nb.patch(
        &format!("/api/dcim/devices/{}/", d1.id),
        &json!({"name": "renamed-1"}),
    )
    .await
    .unwrap();
    let t = Instant::now();
    eventually(20, "the rename to arrive by webhook", || async {
        let m = get(&s, "/machines/renamed-1").await;
        (m["hostname"] == "renamed-1").then_some(())
    })
    .await;
    eprintln!("rename applied by webhook in {:?}", t.elapsed());

    // NetBox down: the write-back waits (visible in the status), then lands.
    relay.down.store(true, Ordering::SeqCst);
    let r = http
        .post(s.api("/machines/node-00002/state"))
        .bearer_auth(&s.token)
        .json(&json!({"state": "broken", "reason": "disk"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let st = eventually(30, "a failed write-back in the status", || async {
        let st = get(&s, "/netbox/status").await;
        (st["pending_write_backs"].as_u64()? >= 1 && st["write_back_error"].is_string())
            .then_some(st)
    })
    .await;
    eprintln!("while NetBox is down: {}", st["write_back_error"]);
    let out = anvil_cmd(&s).args(["netbox", "sync"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(8),
        "a sync while NetBox is down fails"
    );
    relay.down.store(false, Ordering::SeqCst);
    eventually(60, "the queued write-back after NetBox is back", || async {
        let d = nb
            .get(&format!("/api/dcim/devices/{}/", d2.id))
            .await
            .ok()?;
        (d["custom_fields"]["anvil_state"] == "broken" && d["status"]["value"] == "failed")
            .then_some(())
    })
    .await;
    eventually(30, "an empty outbox", || async {
        let st = get(&s, "/netbox/status").await;
        (st["pending_write_backs"] == 0).then_some(())
    })
    .await;
}

/// Without NetBox at all: a sync fails with exit 8 and the status says why.
#[tokio::test]
async fn unreachable_netbox_is_reported() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!("http://127.0.0.1:{port}"),
        "nbt_abcdefghijkl.0123456789012345678901234567890123456789",
    );
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let out = anvil_cmd(&s).args(["netbox", "sync"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));
    let out = anvil_cmd(&s).args(["netbox", "status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("failed") && text.contains("unreachable"),
        "{text}"
    );
}
