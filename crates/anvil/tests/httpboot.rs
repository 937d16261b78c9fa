//! HTTP boot, discovery, call-home and the boot timeline, over real HTTP.

mod common;

use common::{Server, client};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

async fn api_get(s: &Server, path: &str) -> (StatusCode, Value) {
    let r = client()
        .get(s.api(path))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap_or(Value::Null))
}

async fn wait_for_machine(s: &Server, mac: &str) -> Value {
    for _ in 0..100 {
        let (_, l) = api_get(s, &format!("/machines?mac={mac}")).await;
        if let Some(m) = l["items"].as_array().and_then(|a| a.first()) {
            return m.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("machine with {mac} was not discovered");
}

#[tokio::test]
async fn unknown_mac_gets_discovery_script_and_is_discovered_once() {
    let s = Server::start();
    let c = client();
    let mac = "52:54:00:b0:00:01";
    let r = c
        .get(format!("{}/boot/52-54-00-B0-00-01.ipxe", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let script = r.text().await.unwrap();
    let host = s.url.trim_start_matches("http://");
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(
        script.contains(&format!(
            "kernel http://{host}/boot/files/discovery/vmlinuz?mac={mac}"
        )),
        "{script}"
    );
    assert!(
        script.contains(&format!("anvil.url=http://{host} anvil.mac={mac}")),
        "{script}"
    );
    // Many requests of the same client create one machine.
    for _ in 0..5 {
        c.get(format!("{}/boot/{mac}.ipxe", s.url))
            .send()
            .await
            .unwrap();
    }
    let m = wait_for_machine(&s, mac).await;
    assert_eq!(m["state"], "new");
    assert_eq!(m["hostname"], "node-525400b00001");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, all) = api_get(&s, "/machines").await;
    assert_eq!(all["total"], 1);
    // Garbage names are 404, not 500.
    for bad in [
        "zz.ipxe",
        "..%2f..%2fetc%2fpasswd",
        "52:54:00:b0:00:01.ipxe.bak",
    ] {
        let r = c.get(format!("{}/boot/{bad}", s.url)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }
}

#[tokio::test]
async fn known_machine_script_follows_its_state_and_overrides() {
    let s = Server::start();
    let c = client();
    let r = c
        .post(s.api("/machines"))
        .bearer_auth(&s.token)
        .json(&json!({"hostname": "n1", "interfaces": [{"mac": "52:54:00:b0:00:02"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let script = |s: &Server| {
        let url = format!("{}/boot/52:54:00:b0:00:02.ipxe", s.url);
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    // A new machine (known, not yet described) boots discovery.
    let disc = script(&s).await;
    assert!(disc.contains("/boot/files/discovery/vmlinuz"), "{disc}");
    c.post(s.api("/machines/n1/state"))
        .bearer_auth(&s.token)
        .json(&json!({"state": "ready"}))
        .send()
        .await
        .unwrap();
    let local = script(&s).await;
    assert!(local.contains("n1 is ready, booting from disk"), "{local}");
    assert!(local.contains("sanboot"), "{local}");
    c.post(s.api("/machines/n1/state"))
        .bearer_auth(&s.token)
        .json(&json!({"state": "commissioning"}))
        .send()
        .await
        .unwrap();
    let comm = script(&s).await;
    assert!(
        comm.contains("/boot/files/commissioning/vmlinuz?mac=52:54:00:b0:00:02"),
        "{comm}"
    );

    // An operator's override wins without a restart; a broken one is reported.
    let dir = s.data_path().join("ipxe");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("commissioning.ipxe"),
        "#!ipxe\necho custom {{ hostname }} {{ state }}\n",
    )
    .unwrap();
    assert_eq!(script(&s).await, "#!ipxe\necho custom n1 commissioning\n");
    std::fs::write(dir.join("commissioning.ipxe"), "#!ipxe\n{{ nope }}\n").unwrap();
    let r = c
        .get(format!("{}/boot/52:54:00:b0:00:02.ipxe", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("commissioning.ipxe template is broken")
    );
}

#[tokio::test]
async fn boot_files_support_range_head_and_etags() {
    let s = Server::start();
    let dir = s.data_path().join("boot/discovery");
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("vmlinuz"), &data).unwrap();
    let c = client();
    let url = format!("{}/boot/files/discovery/vmlinuz", s.url);
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r
        .headers()
        .get("etag")
        .expect("ETag")
        .to_str()
        .unwrap()
        .to_string();
    assert!(r.headers().get("last-modified").is_some());
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());
    let r = c
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[1000..2000]);
    let r = c.head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    let r = c
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    for bad in [
        "../anvil.db",
        "..%2fanvil.db",
        "discovery/../../anvil.db",
        "nope",
    ] {
        let r = c
            .get(format!("{}/boot/files/{bad}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }
}

#[tokio::test]
async fn ipxe_binaries_come_from_configured_directories() {
    let bin = tempfile::tempdir().unwrap();
    std::fs::write(bin.path().join("ipxe.efi"), b"MZ fake efi").unwrap();
    let cfg = bin.path().join("anvil.toml");
    std::fs::write(
        &cfg,
        format!("[boot]\nipxe_dirs = [\"{}\"]\n", bin.path().display()),
    )
    .unwrap();
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let r = c
        .get(format!("{}/boot/ipxe.efi", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"MZ fake efi");
    assert_eq!(
        c.get(format!("{}/boot/snponly.efi", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn call_home_completes_the_timeline() {
    let s = Server::start();
    let c = client();
    let mac = "52:54:00:b0:00:03";
    let dir = s.data_path().join("boot/discovery");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(dir.join("initrd.img"), b"initrd").unwrap();
    c.get(format!("{}/boot/{mac}.ipxe", s.url))
        .send()
        .await
        .unwrap();
    c.get(format!("{}/boot/files/discovery/vmlinuz?mac={mac}", s.url))
        .send()
        .await
        .unwrap();
    c.get(format!(
        "{}/boot/files/discovery/initrd.img?mac={mac}",
        s.url
    ))
    .send()
    .await
    .unwrap();
    let r = c
        .post(s.api("/discovery/callhome"))
        .json(&json!({"mac": mac, "macs": [mac, "52:54:00:b0:00:04"], "ip": "10.77.0.100", "uptime_secs": 4.2, "facts": {"kernel": "6.1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ack: Value = r.json().await.unwrap();
    let id = ack["machine_id"].as_str().unwrap().to_string();
    let (_, m) = api_get(&s, &format!("/machines/{id}")).await;
    assert_eq!(m["facts"]["callhome"]["ip"], "10.77.0.100");
    assert_eq!(m["facts"]["callhome"]["facts"]["kernel"], "6.1");
    assert_eq!(m["interfaces"].as_array().unwrap().len(), 2, "{m}");

    // The recorder writes in the background.
    let mut timeline = Value::Null;
    for _ in 0..50 {
        let (st, t) = api_get(&s, &format!("/machines/{id}/boot-timeline")).await;
        assert_eq!(st, 200);
        if t["complete"] == true && t["events"].as_array().unwrap().len() >= 4 {
            timeline = t;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(timeline["complete"], true, "{timeline}");
    let kinds: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["http.script", "http.kernel", "http.initrd", "callhome"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }

    // Bad call-homes are refused with the field named and change nothing.
    let r = c
        .post(s.api("/discovery/callhome"))
        .json(&json!({"mac": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["field"], "mac");
    let r = c
        .post(s.api("/discovery/callhome"))
        .json(&json!({"mac": mac, "facts": [1]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = c
        .post(s.api("/discovery/callhome"))
        .json(&json!({"mac": mac, "uptime": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    let (st, leases) = api_get(&s, &format!("/leases?mac={mac}")).await;
    assert_eq!(st, 200);
    assert!(leases.as_array().unwrap().is_empty());
    let (st, _) = api_get(&s, "/leases?mac=zz").await;
    assert_eq!(st, 422);
}
