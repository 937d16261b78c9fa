//! `GET /api/v1/machines/{id}/cloud-init` against the real binary: the
//! default rendering of a machine (DHCP on its boot NIC, no keys), both
//! flavors, and refusals (unknown machine 404, bad flavor 400, a machine
//! without an interface 422). What the files contain is checked in depth, and
//! by Debian's cloud-init, in crates/anvil-cloudinit.

mod common;

use common::{Server, client};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn get(s: &Server, path: &str) -> (StatusCode, Value) {
    let r = client()
        .get(s.api(path))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap_or(Value::Null))
}

fn file<'a>(view: &'a Value, path: &str) -> &'a Value {
    view["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("no {path} in {view}"))
}

#[tokio::test]
async fn machine_cloud_init_defaults_and_refusals() {
    let s = Server::start();
    let r = client()
        .post(s.api("/machines"))
        .bearer_auth(&s.token)
        .json(&json!({"hostname": "ci-1", "interfaces": [{"mac": "52:54:00:AA:00:01"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let machine: Value = r.json().await.unwrap();
    let id = machine["id"].as_str().unwrap();

    let (st, v) = get(&s, "/machines/ci-1/cloud-init").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["flavor"], "nocloud");
    assert_eq!(v["label"], "CIDATA");
    let meta: Value =
        serde_json::from_str(file(&v, "meta-data")["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        meta,
        json!({"instance-id": id, "local-hostname": "ci-1", "public-keys": []})
    );
    assert_eq!(file(&v, "user-data")["content"], "");
    let nc: Value =
        serde_json::from_str(file(&v, "network-config")["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        nc,
        json!({"version": 2, "ethernets": {"enx525400aa0001": {
            "match": {"macaddress": "52:54:00:aa:00:01"},
            "set-name": "enx525400aa0001", "dhcp4": true}}})
    );

    let (st, v) = get(
        &s,
        &format!("/machines/{id}/cloud-init?flavor=config-drive"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["label"], "config-2");
    let meta: Value = serde_json::from_str(
        file(&v, "openstack/latest/meta_data.json")["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(meta["uuid"], id);
    assert_eq!(meta["hostname"], "ci-1");
    file(&v, "openstack/latest/network_data.json");

    let (st, v) = get(&s, "/machines/nope/cloud-init").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    let (st, v) = get(&s, "/machines/ci-1/cloud-init?flavor=iso").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = get(&s, "/machines/ci-1/cloud-init?colour=red").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    let r = client()
        .post(s.api("/machines"))
        .bearer_auth(&s.token)
        .json(&json!({"hostname": "ci-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (st, v) = get(&s, "/machines/ci-2/cloud-init").await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("no network interface"),
        "{v}"
    );
}
