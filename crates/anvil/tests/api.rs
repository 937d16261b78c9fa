//! REST API tests over real HTTP against `anvil serve` on port 0.

mod common;

use common::{Server, client};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(s: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    let r = client()
        .post(s.api(path))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap_or(Value::Null))
}

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

async fn patch(s: &Server, path: &str, body: Value) -> (StatusCode, Value) {
    let r = client()
        .patch(s.api(path))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = r.status();
    (st, r.json().await.unwrap_or(Value::Null))
}

fn node(host: &str, mac: &str) -> Value {
    json!({"hostname": host, "tags": ["rack1"], "interfaces": [{"mac": mac, "name": "eno1"}]})
}

#[tokio::test]
async fn machine_crud_and_idempotency() {
    let s = Server::start();
    let (st, m) = post(&s, "/machines", node("Node-01", "52-54-00-00-00-01")).await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    assert_eq!(m["hostname"], "node-01");
    assert_eq!(m["state"], "new");
    assert_eq!(m["interfaces"][0]["mac"], "52:54:00:00:00:01");
    assert_eq!(m["interfaces"][0]["pxe"], true);
    let id = m["id"].as_str().unwrap().to_string();

    // By id and by hostname.
    assert_eq!(
        get(&s, &format!("/machines/{id}")).await.1["id"],
        id.as_str()
    );
    assert_eq!(get(&s, "/machines/node-01").await.1["id"], id.as_str());

    // Re-creating answers 409 naming the existing machine, by hostname or by MAC.
    let (st, p) = post(&s, "/machines", node("node-01", "52:54:00:00:00:99")).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(p["type"], "https://anvil.dev/problems/duplicate");
    assert_eq!(p["existing_id"], id.as_str());
    assert_eq!(p["field"], "hostname");
    let (st, p) = post(&s, "/machines", node("node-02", "52:54:00:00:00:01")).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(p["existing_id"], id.as_str());
    assert_eq!(p["field"], "mac");

    // A PATCH that changes nothing writes no event.
    let events_before = get(&s, &format!("/machines/{id}/events")).await.1["items"]
        .as_array()
        .unwrap()
        .len();
    let (st, same) = patch(
        &s,
        &format!("/machines/{id}"),
        json!({"tags": ["rack1"], "vendor": null}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(same["updated_at"], m["updated_at"]);
    let events_after = get(&s, &format!("/machines/{id}/events")).await.1["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(events_before, events_after);

    // A real change writes one event naming the fields.
    let (st, changed) = patch(
        &s,
        &format!("/machines/{id}"),
        json!({"vendor": "Dell", "tags": ["b", "a"]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{changed}");
    assert_eq!(changed["vendor"], "Dell");
    assert_eq!(changed["tags"], json!(["a", "b"]));
    let ev = get(&s, &format!("/machines/{id}/events")).await.1;
    let last = ev["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "machine.updated");
    assert_eq!(last["data"]["fields"], json!(["vendor", "tags"]));
    assert!(last["actor"].as_str().unwrap().starts_with("token:admin/"));

    // Delete, then it is gone; its history stays readable by id.
    let r = client()
        .delete(s.api(&format!("/machines/{id}")))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(&s, &format!("/machines/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    let ev = get(&s, &format!("/machines/{id}/events")).await.1;
    assert_eq!(
        ev["items"].as_array().unwrap().last().unwrap()["kind"],
        "machine.deleted"
    );
}

#[tokio::test]
async fn lifecycle_transitions() {
    let s = Server::start();
    post(&s, "/machines", node("n1", "52:54:00:00:01:01")).await;
    let (st, p) = post(&s, "/machines/n1/state", json!({"state": "deployed"})).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(p["type"], "https://anvil.dev/problems/invalid-transition");
    assert_eq!(p["current_state"], "new");
    let (st, p) = post(&s, "/machines/n1/state", json!({"state": "failed"})).await;
    assert_eq!(st, StatusCode::CONFLICT, "failed without a reason: {p}");
    let (st, m) = post(
        &s,
        "/machines/n1/state",
        json!({"state": "broken", "reason": "PSU dead"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (m["state"].as_str(), m["state_reason"].as_str()),
        (Some("broken"), Some("PSU dead"))
    );
    let (st, m) = post(&s, "/machines/n1/state", json!({"state": "ready"})).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(m["state_reason"], Value::Null);
    let (st, _) = post(&s, "/machines/n1/state", json!({"state": "sleeping"})).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn list_filters_pages_and_sorts() {
    let s = Server::start();
    for i in 0..12 {
        let mut body = node(&format!("web-{i:02}"), &format!("52:54:00:00:02:{i:02x}"));
        if i % 2 == 0 {
            body["tags"] = json!(["even"]);
        }
        assert_eq!(post(&s, "/machines", body).await.0, StatusCode::CREATED);
    }
    post(&s, "/machines/web-03/state", json!({"state": "broken"})).await;

    let (_, l) = get(&s, "/machines?limit=5").await;
    assert_eq!(l["total"], 12);
    assert_eq!(l["items"].as_array().unwrap().len(), 5);
    assert_eq!(l["next_offset"], 5);
    let (_, last) = get(&s, "/machines?limit=5&offset=10").await;
    assert_eq!(last["items"].as_array().unwrap().len(), 2);
    assert_eq!(last["next_offset"], Value::Null);
    assert_eq!(get(&s, "/machines?tag=even").await.1["total"], 6);
    assert_eq!(
        get(&s, "/machines?state=broken").await.1["items"][0]["hostname"],
        "web-03"
    );
    assert_eq!(get(&s, "/machines?hostname=EB-1").await.1["total"], 2);
    assert_eq!(
        get(&s, "/machines?mac=52-54-00-00-02-0a").await.1["items"][0]["hostname"],
        "web-10"
    );
    assert_eq!(
        get(&s, "/machines?sort=-hostname&limit=1").await.1["items"][0]["hostname"],
        "web-11"
    );
    let (st, p) = get(&s, "/machines?sort=colour").await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["field"], "sort");
    let (st, p) = get(&s, "/machines?mac=zz").await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["field"], "mac");
}

#[tokio::test]
async fn interfaces_and_bmc_secrets() {
    let s = Server::start();
    let mut body = node("bmc-1", "52:54:00:00:03:01");
    body["bmc"] = json!({"driver": "redfish", "address": "10.9.0.1", "username": "root", "password": "calvin-SECRET"});
    let (st, m) = post(&s, "/machines", body).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(m["bmc"]["has_password"], true);
    assert!(!m.to_string().contains("calvin-SECRET"));

    // Nowhere in API answers or the database file does the password appear.
    let (_, list) = get(&s, "/machines").await;
    assert!(!list.to_string().contains("calvin-SECRET"));
    let (_, evs) = get(&s, "/events").await;
    assert!(!evs.to_string().contains("calvin-SECRET"));
    for f in ["anvil.db", "anvil.db-wal"] {
        if let Ok(bytes) = std::fs::read(s.data_path().join(f)) {
            assert!(
                !bytes.windows(13).any(|w| w == b"calvin-SECRET"),
                "{f} holds the password in clear"
            );
        }
    }

    // Changing the BMC address keeps the stored password.
    let (_, m) = patch(
        &s,
        "/machines/bmc-1",
        json!({"bmc": {"driver": "redfish", "address": "10.9.0.2"}}),
    )
    .await;
    assert_eq!(m["bmc"]["has_password"], true);
    assert_eq!(m["bmc"]["address"], "10.9.0.2");

    let (st, i) = post(
        &s,
        "/machines/bmc-1/interfaces",
        json!({"mac": "52:54:00:00:03:02"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{i}");
    assert_eq!(i["name"], "eth0");
    assert_eq!(i["pxe"], false);
    let iid = i["id"].as_str().unwrap();
    let (st, i2) = patch(
        &s,
        &format!("/machines/bmc-1/interfaces/{iid}"),
        json!({"ipv4": "10.0.0.5"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{i2}");
    assert_eq!(i2["ipv4"], "10.0.0.5");
    let (st, p) = patch(
        &s,
        &format!("/machines/bmc-1/interfaces/{iid}"),
        json!({"ipv4": "10.0.0.500"}),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["field"], "ipv4");
    // A MAC taken by another machine is refused naming its holder.
    let (_, other) = post(&s, "/machines", node("bmc-2", "52:54:00:00:03:03")).await;
    let (st, p) = post(
        &s,
        "/machines/bmc-1/interfaces",
        json!({"mac": "52:54:00:00:03:03"}),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(p["existing_id"], other["id"]);
    let r = client()
        .delete(s.api(&format!("/machines/bmc-1/interfaces/{iid}")))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        get(&s, "/machines/bmc-1/interfaces")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn tokens_and_users() {
    let s = Server::start();
    let (st, t) = post(&s, "/tokens", json!({"name": "ansible"})).await;
    assert_eq!(st, StatusCode::CREATED);
    let secret = t["secret"].as_str().unwrap().to_string();
    let r = client()
        .get(s.api("/whoami"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, list) = get(&s, "/tokens").await;
    assert!(
        !list.to_string().contains(&secret),
        "secrets are shown once only"
    );
    let id = t["id"].as_str().unwrap();
    let r = client()
        .delete(s.api(&format!("/tokens/{id}")))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = client()
        .get(s.api("/whoami"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Users: a non-admin cannot create users.
    let (st, _) = post(
        &s,
        "/users",
        json!({"username": "op", "password": "operator-pw"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, p) = post(
        &s,
        "/users",
        json!({"username": "op", "password": "operator-pw"}),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");
    let (st, p) = post(
        &s,
        "/users",
        json!({"username": "weak", "password": "short"}),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["field"], "password");
    let r = client()
        .put(s.api("/users/op/password"))
        .bearer_auth(&s.token)
        .json(&json!({"password": "another-pw"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn health_metrics_openapi() {
    let s = Server::start();
    let c = client();
    assert_eq!(
        c.get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/readyz", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    post(&s, "/machines", node("m1", "52:54:00:00:04:01")).await;
    let m = c
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("anvil_machines{state=\"new\"} 1"), "{m}");
    assert!(m.contains("anvil_http_requests_total"), "{m}");
    let doc: Value = c
        .get(s.api("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/machines"]["post"].is_object());
}

/// The committed spec must equal what the server serves.
#[tokio::test]
async fn committed_openapi_matches_the_server() {
    let s = Server::start();
    let served = client()
        .get(s.api("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../openapi/anvil.json"
    ))
    .expect("openapi/anvil.json is missing: run `cargo run -- openapi > openapi/anvil.json`");
    assert!(
        served == committed,
        "openapi/anvil.json is stale: run `cargo run -- openapi > openapi/anvil.json` and commit it"
    );
}

#[tokio::test]
async fn clean_shutdown_on_sigterm_and_second_server_refused() {
    let mut s = Server::start();
    // A second server on the same data directory (same SQLite file) is refused.
    let out = std::process::Command::new(common::ANVIL)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tftp-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(s.data_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
    let st = s.terminate();
    assert!(st.success(), "exit status {st:?}");
}

#[tokio::test]
async fn first_start_creates_admin_with_private_password_file() {
    let s = Server::start();
    let f = s.data_path().join("admin-password");
    let pw = std::fs::read_to_string(&f).unwrap();
    assert!(pw.trim().len() >= 16);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let log = std::fs::read_to_string(s.data_path().join("serve.log")).unwrap();
    assert!(
        log.contains(pw.trim()),
        "the password is printed once to the log"
    );
}

#[tokio::test]
async fn postgres_backend_serves_the_api() {
    let Some(db) = common::ScratchPg::create("anvil_api").await else {
        return;
    };
    let s = Server::start_with(&["--database-url", &db.url]);
    let (st, m) = post(&s, "/machines", node("pg-1", "52:54:00:00:05:01")).await;
    assert_eq!(st, StatusCode::CREATED, "{m}");
    assert_eq!(get(&s, "/machines/pg-1").await.1["id"], m["id"]);
    let (st, _) = post(&s, "/machines", node("pg-2", "52:54:00:00:05:01")).await;
    assert_eq!(st, StatusCode::CONFLICT);
    // No SQLite file was made: the data lives in PostgreSQL.
    assert!(!s.data_path().join("anvil.db").exists());
}

/// `GET /instances`: the running server is live, leads and answers; after a
/// restart on the same SQLite file the old process is listed as stopped and
/// the new one has taken its place.
#[tokio::test(flavor = "multi_thread")]
async fn instances_list_the_live_leader_and_the_stopped_ones() {
    let mut s = Server::start();
    let c = client();
    let get = |s: &Server| {
        let req = c.get(s.api("/instances")).bearer_auth(&s.token);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()["items"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let first = get(&s).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let me = &first[0];
    assert_eq!(
        (&me["live"], &me["leader"], &me["this"]),
        (&json!(true), &json!(true), &json!(true)),
        "{me}"
    );
    assert!(me["stopped_at"].is_null() && !me["hostname"].as_str().unwrap().is_empty());

    s.terminate();
    let (child, url) = common::spawn_serve(s.data_path(), &[]);
    (s.child, s.url) = (child, url);
    let both = get(&s).await;
    assert_eq!(both.len(), 2, "{both:?}");
    let (new, old) = (&both[0], &both[1]);
    assert_eq!(old["id"], me["id"]);
    assert!(
        old["stopped_at"].is_string(),
        "a clean stop is recorded: {old}"
    );
    assert_eq!(
        (&old["live"], &old["leader"], &old["this"]),
        (&json!(false), &json!(false), &json!(false))
    );
    assert_eq!(
        (&new["live"], &new["leader"], &new["this"]),
        (&json!(true), &json!(true), &json!(true))
    );
}
