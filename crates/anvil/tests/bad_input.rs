//! Every API route answers bad input with a 4xx problem+json: never a 5xx,
//! never a panic. Each case is sent to every route it applies to.

mod common;

use common::{Server, client};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Route {
    method: Method,
    path: String,
    /// A body that is valid JSON of the right shape but with a wrong type.
    wrong_type: Option<Value>,
    /// A body with an unknown field.
    unknown_field: Option<Value>,
    /// Whether the route reads a query string.
    query: bool,
}

fn routes(machine: &str, iface: &str, token: &str) -> Vec<Route> {
    let r = |m: Method, p: String, wt: Option<Value>, uf: Option<Value>, q: bool| Route {
        method: m,
        path: p,
        wrong_type: wt,
        unknown_field: uf,
        query: q,
    };
    vec![
        r(Method::GET, "/whoami".into(), None, None, false),
        r(Method::GET, "/machines".into(), None, None, true),
        r(
            Method::POST,
            "/machines".into(),
            Some(json!({"hostname": 42})),
            Some(json!({"hostname": "x", "colour": 1})),
            false,
        ),
        r(
            Method::GET,
            format!("/machines/{machine}"),
            None,
            None,
            false,
        ),
        r(
            Method::PATCH,
            format!("/machines/{machine}"),
            Some(json!({"tags": "a"})),
            Some(json!({"hostnme": "x"})),
            false,
        ),
        r(
            Method::DELETE,
            format!("/machines/{machine}"),
            None,
            None,
            false,
        ),
        r(
            Method::POST,
            format!("/machines/{machine}/state"),
            Some(json!({"state": 1})),
            Some(json!({"state": "ready", "why": "x"})),
            false,
        ),
        r(
            Method::GET,
            format!("/machines/{machine}/events"),
            None,
            None,
            true,
        ),
        r(
            Method::GET,
            format!("/machines/{machine}/interfaces"),
            None,
            None,
            false,
        ),
        r(
            Method::POST,
            format!("/machines/{machine}/interfaces"),
            Some(json!({"mac": []})),
            Some(json!({"mac": "52:54:00:00:00:09", "speed": 1})),
            false,
        ),
        r(
            Method::PATCH,
            format!("/machines/{machine}/interfaces/{iface}"),
            Some(json!({"pxe": "yes"})),
            Some(json!({"mtu": 9000})),
            false,
        ),
        r(
            Method::DELETE,
            format!("/machines/{machine}/interfaces/{iface}"),
            None,
            None,
            false,
        ),
        r(
            Method::GET,
            format!("/machines/{machine}/boot-timeline"),
            None,
            None,
            false,
        ),
        r(Method::GET, "/leases".into(), None, None, true),
        r(
            Method::POST,
            format!("/machines/{machine}/actions/power-on"),
            None,
            None,
            false,
        ),
        r(
            Method::GET,
            format!("/machines/{machine}/jobs"),
            None,
            None,
            false,
        ),
        r(
            Method::POST,
            format!("/machines/{machine}/power-state"),
            None,
            None,
            false,
        ),
        r(
            Method::POST,
            "/actions/pxe-boot".into(),
            Some(json!({"tag": 1})),
            Some(json!({"tag": "a", "rack": "r1"})),
            false,
        ),
        r(Method::GET, "/jobs".into(), None, None, false),
        r(Method::GET, "/instances".into(), None, None, false),
        r(Method::GET, format!("/jobs/{token}"), None, None, false),
        r(
            Method::POST,
            "/enroll".into(),
            Some(json!({"driver": 5, "address": "x"})),
            Some(json!({"driver": "redfish", "address": "x", "colour": 1})),
            false,
        ),
        r(
            Method::POST,
            "/discovery/callhome".into(),
            Some(json!({"mac": 5})),
            Some(json!({"mac": "52:54:00:00:00:01", "cpu": 1})),
            false,
        ),
        r(Method::GET, "/events".into(), None, None, true),
        r(Method::GET, "/tokens".into(), None, None, false),
        r(
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": false})),
            Some(json!({"name": "a", "scope": "all"})),
            false,
        ),
        r(
            Method::DELETE,
            format!("/tokens/{token}"),
            None,
            None,
            false,
        ),
        r(Method::GET, "/users".into(), None, None, false),
        r(
            Method::POST,
            "/users".into(),
            Some(json!({"username": 1, "password": "x"})),
            Some(json!({"username": "u", "password": "password1", "role": "x"})),
            false,
        ),
        r(
            Method::PUT,
            "/users/admin/password".into(),
            Some(json!({"password": 12345678})),
            Some(json!({"password": "password1", "old": "x"})),
            false,
        ),
        // Images: the JSON form of an import (an upload body is not JSON).
        r(Method::GET, "/images".into(), None, None, false),
        r(
            Method::POST,
            "/images".into(),
            Some(json!({"url": 1})),
            Some(json!({"url": "http://127.0.0.1:1/x", "colour": 1})),
            true,
        ),
        r(Method::GET, "/images/nope".into(), None, None, false),
        r(Method::DELETE, "/images/nope".into(), None, None, false),
        // Commissioning. The agent routes authenticate by per-boot token
        // before they read a body, so only the token cases apply to them
        // here; their bodies are refused in tests/commission.rs.
        r(
            Method::POST,
            format!("/machines/{machine}/actions/commission"),
            Some(json!({"tests": "cpu"})),
            Some(json!({"tests": [], "burn_in": true})),
            false,
        ),
        r(
            Method::POST,
            "/actions/commission".into(),
            Some(json!({"machines": "victim"})),
            Some(json!({"machines": ["victim"], "rack": 1})),
            false,
        ),
        r(
            Method::GET,
            format!("/machines/{machine}/hardware"),
            None,
            None,
            true,
        ),
        r(
            Method::GET,
            format!("/machines/{machine}/commissioning-runs"),
            None,
            None,
            false,
        ),
        r(
            Method::GET,
            format!("/machines/{machine}/cloud-init"),
            None,
            None,
            true,
        ),
        r(Method::POST, "/agent/register".into(), None, None, false),
        r(Method::POST, "/agent/heartbeat".into(), None, None, false),
        r(Method::POST, "/agent/next".into(), None, None, false),
        r(
            Method::POST,
            format!("/agent/steps/{token}/report"),
            None,
            None,
            false,
        ),
        r(Method::POST, "/agent/facts".into(), None, None, false),
        // Deployment (docs/deployment.md).
        r(
            Method::POST,
            format!("/machines/{machine}/actions/deploy"),
            Some(json!({"image": 7})),
            Some(json!({"image": "x", "disk": "sda"})),
            false,
        ),
        r(
            Method::POST,
            format!("/machines/{machine}/actions/release"),
            Some(json!({"erase": 1})),
            Some(json!({"erase": "quick", "wipe": true})),
            false,
        ),
        r(
            Method::POST,
            format!("/machines/{machine}/actions/rescue"),
            Some(json!({"ssh_keys": "k"})),
            Some(json!({"ssh_keys": [], "port": 22})),
            false,
        ),
        r(
            Method::POST,
            format!("/machines/{machine}/actions/exit-rescue"),
            None,
            None,
            false,
        ),
        r(
            Method::GET,
            format!("/agent/images/{token}"),
            None,
            None,
            false,
        ),
        r(
            Method::GET,
            format!("/agent/images/{token}/zeromap"),
            None,
            None,
            false,
        ),
        r(Method::GET, "/agent/cloud-init".into(), None, None, false),
        // Installer deploys: the per-boot token is in the path (401 when unknown).
        r(
            Method::GET,
            format!("/installer/{token}/preseed.cfg"),
            None,
            None,
            false,
        ),
        r(
            Method::POST,
            format!("/installer/{token}/done"),
            None,
            None,
            false,
        ),
        // NetBox: the webhook is authenticated by its signature (401 without).
        r(Method::POST, "/netbox/webhook".into(), None, None, false),
        r(Method::GET, "/netbox/status".into(), None, None, false),
        r(
            Method::POST,
            "/netbox/sync".into(),
            Some(json!({"dry_run": "yes"})),
            Some(json!({"dry_run": true, "force": 1})),
            false,
        ),
    ]
}

async fn expect_problem(resp: reqwest::Response, want: StatusCode, what: &str) -> Value {
    expect_problem_in(resp, &[want], what).await
}

async fn expect_problem_in(resp: reqwest::Response, wants: &[StatusCode], what: &str) -> Value {
    let st = resp.status();
    let want = if wants.contains(&st) { st } else { wants[0] };
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.text().await.unwrap();
    assert_eq!(st, want, "{what}: {body}");
    assert_eq!(ct, "application/problem+json", "{what}: content type");
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body}"));
    assert_eq!(v["status"], want.as_u16(), "{what}");
    assert!(
        v["type"]
            .as_str()
            .unwrap()
            .starts_with("https://anvil.dev/problems/"),
        "{what}"
    );
    assert!(!v["detail"].as_str().unwrap().is_empty(), "{what}");
    v
}

#[tokio::test]
async fn every_route_refuses_bad_input_with_problem_json() {
    let s = Server::start();
    let c = client();
    let m: Value = c
        .post(s.api("/machines"))
        .bearer_auth(&s.token)
        .json(&json!({"hostname": "victim", "interfaces": [{"mac": "52:54:00:00:00:01"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let iface = m["interfaces"][0]["id"].as_str().unwrap().to_string();
    let t: Value = c
        .post(s.api("/tokens"))
        .bearer_auth(&s.token)
        .json(&json!({"name": "other"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token_id = t["id"].as_str().unwrap().to_string();
    let big = format!("{{\"hostname\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));

    for r in routes("victim", &iface, &token_id) {
        let what = format!("{} {}", r.method, r.path);
        let url = s.api(&r.path);
        let has_body = r.wrong_type.is_some();

        // No token, a malformed header, a wrong token (the call-home of the
        // discovery environment is the one route that needs none).
        let needs_token = r.path != "/discovery/callhome";
        if needs_token {
            expect_problem(
                c.request(r.method.clone(), &url).send().await.unwrap(),
                StatusCode::UNAUTHORIZED,
                &format!("{what} without token"),
            )
            .await;
            expect_problem(
                c.request(r.method.clone(), &url)
                    .header("authorization", "Basic YWRtaW46YWRtaW4=")
                    .send()
                    .await
                    .unwrap(),
                StatusCode::UNAUTHORIZED,
                &format!("{what} basic auth"),
            )
            .await;
            expect_problem(
                c.request(r.method.clone(), &url)
                    .bearer_auth("anvil_wrong")
                    .send()
                    .await
                    .unwrap(),
                StatusCode::UNAUTHORIZED,
                &format!("{what} wrong token"),
            )
            .await;
        }

        if has_body {
            let send = |body: String, ct: Option<&str>| {
                let mut rb = c
                    .request(r.method.clone(), &url)
                    .bearer_auth(&s.token)
                    .body(body);
                if let Some(ct) = ct {
                    rb = rb.header("content-type", ct);
                }
                rb.send()
            };
            let json_ct = Some("application/json");
            expect_problem(
                send("{".into(), json_ct).await.unwrap(),
                StatusCode::BAD_REQUEST,
                &format!("{what} truncated JSON"),
            )
            .await;
            expect_problem(
                send("not json at all".into(), json_ct).await.unwrap(),
                StatusCode::BAD_REQUEST,
                &format!("{what} not JSON"),
            )
            .await;
            // serde reports some shape errors as syntax errors: 400 or 422 both say "your body is wrong".
            expect_problem_in(
                send("[1,2,3]".into(), json_ct).await.unwrap(),
                &[StatusCode::UNPROCESSABLE_ENTITY, StatusCode::BAD_REQUEST],
                &format!("{what} array"),
            )
            .await;
            expect_problem(
                send(r.wrong_type.clone().unwrap().to_string(), json_ct)
                    .await
                    .unwrap(),
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("{what} wrong type"),
            )
            .await;
            let p = expect_problem(
                send(r.unknown_field.clone().unwrap().to_string(), json_ct)
                    .await
                    .unwrap(),
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("{what} unknown field"),
            )
            .await;
            assert!(
                p["detail"].as_str().unwrap().contains("unknown field"),
                "{what}: {p}"
            );
            expect_problem(
                send("{}".into(), None).await.unwrap(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("{what} no content type"),
            )
            .await;
            expect_problem(
                send("{}".into(), Some("text/plain")).await.unwrap(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("{what} text/plain"),
            )
            .await;
            oversize(
                &s.url,
                r.method.as_str(),
                &format!("/api/v1{}", r.path),
                &s.token,
                big.as_bytes(),
                &what,
            );
        }
        if r.query {
            for q in [
                "limit=abc",
                "limit=0",
                "limit=100000",
                "since=yesterday",
                "after=x",
                "bogus=1",
                "state=melted",
            ] {
                let resp = c
                    .request(r.method.clone(), format!("{url}?{q}"))
                    .bearer_auth(&s.token)
                    .send()
                    .await
                    .unwrap();
                let st = resp.status();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                // Parameters a route does not know are refused too; those it
                // knows but cannot use are 400 or 422.
                assert!(st.is_client_error(), "{what}?{q}: {st}");
                assert_eq!(ct, "application/problem+json", "{what}?{q}");
            }
        }
    }

    // The victim survived everything above unchanged.
    let after: Value = c
        .get(s.api("/machines/victim"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after["updated_at"], m["updated_at"]);
}

/// Sends an oversize body over a raw socket, reading the answer while still
/// writing: the server answers 413 without reading the whole body and then
/// closes, so a client that first writes everything sees a broken pipe.
fn oversize(base: &str, method: &str, path: &str, token: &str, body: &[u8], what: &str) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").to_string();
    let mut last = String::new();
    for _ in 0..3 {
        let Ok(mut stream) = std::net::TcpStream::connect(&addr) else {
            continue;
        };
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut writer = stream.try_clone().unwrap();
        let payload = [head.as_bytes(), body].concat();
        let t = std::thread::spawn(move || {
            let _ = writer.write_all(&payload);
        });
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stream.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = t.join();
        let text = String::from_utf8_lossy(&buf).to_string();
        if text.starts_with("HTTP/1.1 413") {
            assert!(
                text.to_ascii_lowercase()
                    .contains("content-type: application/problem+json"),
                "{what} oversize: {text}"
            );
            assert!(
                text.contains("payload-too-large"),
                "{what} oversize: {text}"
            );
            return;
        }
        last = text;
    }
    panic!("{what} oversize: expected 413, got {last:?}");
}

#[tokio::test]
async fn unknown_routes_methods_and_ids() {
    let s = Server::start();
    let c = client();
    expect_problem(
        c.get(s.api("/nope")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "unknown route",
    )
    .await;
    expect_problem(
        c.put(s.api("/machines"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "PUT /machines",
    )
    .await;
    expect_problem(
        c.get(s.api("/machines/no-such-host"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "missing machine",
    )
    .await;
    expect_problem(
        c.get(s.api("/machines/%ff%fe"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "garbage id",
    )
    .await;
    expect_problem(
        c.delete(s.api("/tokens/not-a-uuid"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "bad token id",
    )
    .await;
    expect_problem(
        c.patch(s.api("/machines/x/interfaces/not-a-uuid"))
            .bearer_auth(&s.token)
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "bad interface id",
    )
    .await;
    // Validation names the field.
    let p = expect_problem(
        c.post(s.api("/machines"))
            .bearer_auth(&s.token)
            .json(&json!({"hostname": "ok", "interfaces": [{"mac": "52:54:00:00:00:0g"}]}))
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad mac",
    )
    .await;
    assert_eq!(p["field"], "interfaces[0].mac");
    let p = expect_problem(
        c.post(s.api("/machines"))
            .bearer_auth(&s.token)
            .json(&json!({"hostname": "bad_name!"}))
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad hostname",
    )
    .await;
    assert_eq!(p["field"], "hostname");
    let p = expect_problem(
        c.post(s.api("/machines"))
            .bearer_auth(&s.token)
            .json(&json!({"hostname": "ok", "facts": [1]}))
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "facts not an object",
    )
    .await;
    assert_eq!(p["field"], "facts");
    // The server is still healthy after all of it.
    assert_eq!(
        c.get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
