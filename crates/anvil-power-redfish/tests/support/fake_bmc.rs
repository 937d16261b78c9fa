//! A small in-test Redfish service (axum on 127.0.0.1:0, plain or TLS) for
//! what sushy-tools does not do: sessions, ETags, injected 503/429, slow
//! answers, redirects with credentials in `Location`, task monitors and
//! vendor-looking systems. Every knob is a field of [`State`].

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const USER: &str = "admin";
pub const PASSWORD: &str = "S3cret pa$$:w@rd/x";

pub struct State {
    pub port: u16,
    /// Offer a SessionService (root `Links.Sessions`).
    pub sessions: bool,
    /// Answer session creation with this status instead of creating one.
    pub session_refusal: Option<StatusCode>,
    /// With sessions: refuse basic auth (proves the token is used).
    pub require_token: bool,
    pub tokens: HashMap<String, u32>,
    pub logins: u32,
    pub deleted_sessions: Vec<u32>,
    /// Serve ETags and check If-Match on PATCH.
    pub etags: bool,
    pub etag: u32,
    /// Answer this many PATCHes with 412 (as if someone else changed the
    /// resource in between).
    pub patch_412s: u32,
    pub if_match_seen: Vec<Option<String>>,
    pub patches: Vec<Value>,
    pub boot: Value,
    pub manufacturer: String,
    pub power: String,
    pub allowed_resets: Vec<&'static str>,
    pub resets: Vec<String>,
    /// Answer `On` while on with 409, as several BMCs do.
    pub refuse_redundant_on: bool,
    /// Answer resets with 202 + a task monitor needing this many polls.
    pub reset_task_polls: Option<u32>,
    pub task_polls: u32,
    /// The next this-many requests (except the root) get this status.
    pub failures: u32,
    pub failure_status: StatusCode,
    pub retry_after: Option<String>,
    pub slow: Option<Duration>,
    pub requests: Vec<String>,
    /// Where `/redfish/v1/Systems/byname` redirects (built from `port`
    /// when `None`: same host, with the credentials in the URL).
    pub redirect_to: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            port: 0,
            sessions: false,
            session_refusal: None,
            require_token: false,
            tokens: HashMap::new(),
            logins: 0,
            deleted_sessions: Vec::new(),
            etags: false,
            etag: 1,
            patch_412s: 0,
            if_match_seen: Vec::new(),
            patches: Vec::new(),
            boot: json!({
                "BootSourceOverrideEnabled": "Disabled",
                "BootSourceOverrideTarget": "None",
                "BootSourceOverrideMode": "UEFI",
                "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "Cd"],
            }),
            manufacturer: "Contoso".into(),
            power: "Off".into(),
            allowed_resets: vec![
                "On",
                "ForceOff",
                "GracefulShutdown",
                "ForceRestart",
                "GracefulRestart",
            ],
            resets: Vec::new(),
            refuse_redundant_on: false,
            reset_task_polls: None,
            task_polls: 0,
            failures: 0,
            failure_status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
            slow: None,
            requests: Vec::new(),
            redirect_to: None,
        }
    }
}

pub type Shared = Arc<Mutex<State>>;

pub struct FakeBmc {
    pub addr: SocketAddr,
    pub state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBmc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBmc {
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// `http://127.0.0.1:port` (or the bare `127.0.0.1:port` for TLS, so
    /// that the driver's https default is what is tested).
    pub fn http_address(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn router(state: Shared) -> Router {
    Router::new().fallback(handle).with_state(state)
}

pub async fn start(state: State) -> FakeBmc {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(Mutex::new(State {
        port: addr.port(),
        ..state
    }));
    let app = router(shared.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    FakeBmc {
        addr,
        state: shared,
        task,
    }
}

/// The same service over TLS with the given certificate chain and key.
pub async fn start_tls(state: State, cert_pem: &str, key_pem: &str) -> FakeBmc {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(Mutex::new(State {
        port: addr.port(),
        ..state
    }));
    let app = router(shared.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A client refusing our certificate ends here: expected.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    FakeBmc {
        addr,
        state: shared,
        task,
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn redfish_error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        json!({"error": {"code": "Base.1.0.GeneralError", "message": message}}),
    )
}

fn basic_ok(headers: &HeaderMap) -> bool {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected)
}

fn authorized(st: &State, headers: &HeaderMap) -> bool {
    if let Some(token) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        return st.tokens.contains_key(token);
    }
    !(st.sessions && st.require_token) && basic_ok(headers)
}

fn system_json(st: &State) -> Value {
    let boot = st.boot.clone();
    let mut v = json!({
        "@odata.id": "/redfish/v1/Systems/1",
        "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
        "Id": "1",
        "Name": "Test system",
        "Manufacturer": st.manufacturer,
        "Model": "T-1000",
        "SerialNumber": "SN-0001",
        "UUID": "4c4c4544-0000-4000-8000-000000000001",
        "BiosVersion": "2.4.1",
        "PowerState": st.power,
        "MemorySummary": {"TotalSystemMemoryGiB": 64},
        "ProcessorSummary": {"Count": 2, "Model": "Summary CPU"},
        "Boot": boot,
        "Processors": {"@odata.id": "/redfish/v1/Systems/1/Processors"},
        "EthernetInterfaces": {"@odata.id": "/redfish/v1/Systems/1/EthernetInterfaces"},
        "Storage": {"@odata.id": "/redfish/v1/Systems/1/Storage"},
        "SimpleStorage": {"@odata.id": "/redfish/v1/Systems/1/SimpleStorage"},
        "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/bmc"}]},
        "Actions": {"#ComputerSystem.Reset": {
            "target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": st.allowed_resets,
        }},
    });
    if st.etags {
        v["@odata.etag"] = json!(format!("W/\"{}\"", st.etag));
    }
    v
}

fn collection(members: &[&str]) -> Value {
    json!({
        "Members@odata.count": members.len(),
        "Members": members.iter().map(|m| json!({"@odata.id": m})).collect::<Vec<_>>(),
    })
}

async fn handle(
    AxumState(state): AxumState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    let slow = {
        let mut st = state.lock().unwrap();
        st.requests.push(format!("{method} {path}"));
        st.slow
    };
    if let Some(d) = slow
        && path != "/redfish/v1"
    {
        tokio::time::sleep(d).await;
    }
    let mut st = state.lock().unwrap();
    if st.failures > 0 && path != "/redfish/v1" {
        st.failures -= 1;
        let mut r = redfish_error(st.failure_status, "try again later");
        if let Some(ra) = &st.retry_after {
            r.headers_mut().insert("retry-after", ra.parse().unwrap());
        }
        return r;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);

    if path == "/redfish/v1" {
        let mut root = json!({
            "@odata.id": "/redfish/v1/",
            "RedfishVersion": "1.15.0",
            "Systems": {"@odata.id": "/redfish/v1/Systems"},
            "Managers": {"@odata.id": "/redfish/v1/Managers"},
        });
        if st.sessions {
            root["SessionService"] = json!({"@odata.id": "/redfish/v1/SessionService"});
            root["Links"] =
                json!({"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}});
        }
        return json_response(StatusCode::OK, root);
    }
    if method == Method::POST && path == "/redfish/v1/SessionService/Sessions" {
        if let Some(status) = st.session_refusal {
            return redfish_error(status, "sessions are not available");
        }
        if body["UserName"] != USER || body["Password"] != PASSWORD {
            return redfish_error(StatusCode::UNAUTHORIZED, "bad credentials");
        }
        st.logins += 1;
        let id = st.logins;
        let token = format!("token-{id}-{}", st.port);
        st.tokens.insert(token.clone(), id);
        let location = format!("/redfish/v1/SessionService/Sessions/{id}");
        let mut r = json_response(
            StatusCode::CREATED,
            json!({"@odata.id": location, "Id": id.to_string(), "UserName": USER}),
        );
        r.headers_mut()
            .insert("x-auth-token", token.parse().unwrap());
        r.headers_mut()
            .insert("location", location.parse().unwrap());
        return r;
    }
    if !authorized(&st, &headers) {
        return redfish_error(StatusCode::UNAUTHORIZED, "authentication required");
    }

    match (method.clone(), path.as_str()) {
        (Method::DELETE, p) if p.starts_with("/redfish/v1/SessionService/Sessions/") => {
            let id: u32 = p.rsplit('/').next().unwrap().parse().unwrap();
            st.tokens.retain(|_, v| *v != id);
            st.deleted_sessions.push(id);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/redfish/v1/Systems") => {
            json_response(StatusCode::OK, collection(&["/redfish/v1/Systems/1"]))
        }
        (Method::GET, "/redfish/v1/Systems/byname") => {
            let to = st.redirect_to.clone().unwrap_or_else(|| {
                let enc: String = PASSWORD
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                format!(
                    "http://{USER}:{enc}@127.0.0.1:{}/redfish/v1/Systems/1",
                    st.port
                )
            });
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            r.headers_mut().insert("location", to.parse().unwrap());
            r
        }
        (Method::GET, "/redfish/v1/Systems/1") => {
            let mut r = json_response(StatusCode::OK, system_json(&st));
            if st.etags {
                r.headers_mut()
                    .insert("etag", format!("\"{}\"", st.etag).parse().unwrap());
            }
            r
        }
        (Method::PATCH, "/redfish/v1/Systems/1") => {
            let if_match = headers
                .get("if-match")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            st.if_match_seen.push(if_match.clone());
            if st.etags {
                let Some(tag) = if_match else {
                    return redfish_error(StatusCode::PRECONDITION_REQUIRED, "If-Match required");
                };
                if st.patch_412s > 0 {
                    // Someone else changed the resource meanwhile.
                    st.patch_412s -= 1;
                    st.etag += 1;
                    return redfish_error(StatusCode::PRECONDITION_FAILED, "ETag mismatch");
                }
                if tag != format!("\"{}\"", st.etag) {
                    return redfish_error(StatusCode::PRECONDITION_FAILED, "ETag mismatch");
                }
            }
            st.patches.push(body.clone());
            if let Some(b) = body.get("Boot").and_then(Value::as_object) {
                for (k, v) in b {
                    st.boot[k] = v.clone();
                }
            }
            st.etag += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset") => {
            let t = body["ResetType"].as_str().unwrap_or("").to_string();
            if !st.allowed_resets.contains(&t.as_str()) {
                return redfish_error(StatusCode::BAD_REQUEST, "ResetType not allowed");
            }
            if st.refuse_redundant_on && t == "On" && st.power == "On" {
                return redfish_error(StatusCode::CONFLICT, "the server is already on");
            }
            st.power = match t.as_str() {
                "ForceOff" | "GracefulShutdown" => "Off",
                _ => "On",
            }
            .into();
            st.resets.push(t);
            match st.reset_task_polls {
                Some(_) => {
                    st.task_polls = 0;
                    let mut r = json_response(StatusCode::ACCEPTED, json!({}));
                    r.headers_mut()
                        .insert("location", "/redfish/v1/TaskMonitors/1".parse().unwrap());
                    r
                }
                None => StatusCode::NO_CONTENT.into_response(),
            }
        }
        (Method::GET, "/redfish/v1/TaskMonitors/1") => {
            st.task_polls += 1;
            if st.task_polls < st.reset_task_polls.unwrap_or(0) {
                let mut r = json_response(StatusCode::ACCEPTED, json!({"TaskState": "Running"}));
                r.headers_mut().insert("retry-after", "0".parse().unwrap());
                r
            } else {
                json_response(
                    StatusCode::OK,
                    json!({"TaskState": "Completed", "TaskStatus": "OK"}),
                )
            }
        }
        (Method::GET, "/redfish/v1/Systems/1/Processors") => json_response(
            StatusCode::OK,
            collection(&[
                "/redfish/v1/Systems/1/Processors/CPU1",
                "/redfish/v1/Systems/1/Processors/CPU2",
                "/redfish/v1/Systems/1/Processors/GPU1",
            ]),
        ),
        (Method::GET, p) if p.starts_with("/redfish/v1/Systems/1/Processors/CPU") => json_response(
            StatusCode::OK,
            json!({"ProcessorType": "CPU", "Model": "Xeon Test 6000", "TotalCores": 16, "TotalThreads": 32}),
        ),
        (Method::GET, "/redfish/v1/Systems/1/Processors/GPU1") => json_response(
            StatusCode::OK,
            json!({"ProcessorType": "GPU", "Model": "Accelerator"}),
        ),
        (Method::GET, "/redfish/v1/Systems/1/EthernetInterfaces") => {
            // Paged: the second member comes with the next link.
            let mut c = collection(&["/redfish/v1/Systems/1/EthernetInterfaces/1"]);
            c["Members@odata.nextLink"] = json!("/redfish/v1/Systems/1/EthernetInterfaces?page=2");
            if uri.query() == Some("page=2") {
                c = collection(&[
                    "/redfish/v1/Systems/1/EthernetInterfaces/2",
                    "/redfish/v1/Systems/1/EthernetInterfaces/3",
                ]);
            }
            json_response(StatusCode::OK, c)
        }
        (Method::GET, "/redfish/v1/Systems/1/EthernetInterfaces/1") => json_response(
            StatusCode::OK,
            json!({"Id": "1", "Name": "NIC 1", "MACAddress": "B8:59:9F:00:00:01"}),
        ),
        (Method::GET, "/redfish/v1/Systems/1/EthernetInterfaces/2") => json_response(
            StatusCode::OK,
            json!({"Id": "2", "PermanentMACAddress": "b8:59:9f:00:00:02", "MACAddress": ""}),
        ),
        (Method::GET, "/redfish/v1/Systems/1/EthernetInterfaces/3") => json_response(
            StatusCode::OK,
            // A virtual interface without a MAC: skipped.
            json!({"Id": "3", "Name": "USB NIC"}),
        ),
        (Method::GET, "/redfish/v1/Systems/1/Storage") => json_response(
            StatusCode::OK,
            collection(&["/redfish/v1/Systems/1/Storage/RAID"]),
        ),
        (Method::GET, "/redfish/v1/Systems/1/Storage/RAID") => json_response(
            StatusCode::OK,
            json!({"Drives": [
                {"@odata.id": "/redfish/v1/Systems/1/Storage/RAID/Drives/0"},
                {"@odata.id": "/redfish/v1/Systems/1/Storage/RAID/Drives/1"},
            ]}),
        ),
        (Method::GET, "/redfish/v1/Systems/1/Storage/RAID/Drives/0") => json_response(
            StatusCode::OK,
            json!({"Name": "Disk 0", "Model": "SSD-960", "SerialNumber": "S0", "CapacityBytes": 960197124096_u64}),
        ),
        (Method::GET, "/redfish/v1/Systems/1/Storage/RAID/Drives/1") => {
            // A broken sub-resource does not break the inventory.
            redfish_error(StatusCode::NOT_FOUND, "gone")
        }
        (Method::GET, "/redfish/v1/Managers/bmc") => json_response(
            StatusCode::OK,
            json!({"Id": "bmc", "FirmwareVersion": "7.10.30.00"}),
        ),
        (Method::GET, "/redfish/v1/Managers") => {
            json_response(StatusCode::OK, collection(&["/redfish/v1/Managers/bmc"]))
        }
        _ => redfish_error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// A CA, and a server certificate for 127.0.0.1 signed by it.
pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

pub fn pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Anvil test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        server_cert_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
    }
}

/// A self-signed certificate for 127.0.0.1 (what BMCs ship).
pub fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}
