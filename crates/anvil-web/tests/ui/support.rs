//! A real server on 127.0.0.1 with a fresh SQLite store, and a small HTTP
//! client that keeps the session cookie by hand (the workspace's reqwest has
//! no cookie store) and never follows redirects, so tests see every 303.
//! With power control, the BMCs are in-memory `FakeBmc`s behind a driver
//! factory that looks them up by address.

use anvil_core::power::{DriverFactory, PowerLimits};
use anvil_core::{App, Principal, SecretBox};
use anvil_power::{BmcCredentials, FakeBmc, Inventory, Nic, PowerDriver, PowerError};
use anvil_store::Store;
use anvil_types::{BmcDriver, MacAddr};
use reqwest::header::{CONTENT_TYPE, COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// In-memory BMCs by address; an address without one is unreachable.
#[derive(Default)]
pub struct FakeBmcs {
    bmcs: Mutex<HashMap<String, FakeBmc>>,
}

impl FakeBmcs {
    pub fn add(&self, address: &str, bmc: FakeBmc) {
        self.bmcs
            .lock()
            .expect("fakes")
            .insert(address.to_string(), bmc);
    }

    pub fn get(&self, address: &str) -> FakeBmc {
        self.bmcs.lock().expect("fakes")[address].clone()
    }
}

impl DriverFactory for FakeBmcs {
    fn driver(
        &self,
        _driver: BmcDriver,
        creds: BmcCredentials,
    ) -> Result<Arc<dyn PowerDriver>, PowerError> {
        match self.bmcs.lock().expect("fakes").get(&creds.address) {
            Some(b) => Ok(Arc::new(b.clone())),
            None => Err(PowerError::Unreachable {
                address: creds.address,
                reason: "no route to host".into(),
            }),
        }
    }
}

/// What a Dell BMC reports: two NICs, `52:54:00:0n:01:xx` and `…:02:xx`.
pub fn inventory(serial: &str, n: u8) -> Inventory {
    Inventory {
        manufacturer: Some("Dell Inc.".into()),
        model: Some("PowerEdge R650".into()),
        serial: Some(serial.into()),
        nics: vec![
            Nic {
                mac: MacAddr([0x52, 0x54, 0, n, 1, 0x10]),
                name: Some("NIC.Integrated.1-1".into()),
            },
            Nic {
                mac: MacAddr([0x52, 0x54, 0, n, 2, 0x10]),
                name: Some("NIC.Integrated.1-2".into()),
            },
        ],
        ..Default::default()
    }
}

pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "password123";

pub struct TestServer {
    pub base: String,
    pub app: App,
    task: JoinHandle<()>,
    _dir: TempDir,
}

impl TestServer {
    /// A server without power control (as when the binary has no drivers).
    pub async fn start() -> TestServer {
        Self::start_with(|app, _| app).await
    }

    /// A server with an image library in its data directory (deployments).
    pub async fn start_with_images() -> TestServer {
        // The library's download client needs a TLS provider, as in `serve`.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self::start_with(|app, dir| {
            app.with_images(anvil_core::images::ImageLibraryConfig::in_data_dir(dir))
                .expect("image library")
        })
        .await
    }

    /// A server whose BMCs are the returned fakes.
    pub async fn start_with_power() -> (TestServer, Arc<FakeBmcs>) {
        let fakes = Arc::new(FakeBmcs::default());
        let factory = fakes.clone();
        let server = Self::start_with(move |app, _| {
            app.with_power(
                factory,
                PowerLimits {
                    concurrency: 4,
                    action_timeout: Duration::from_secs(10),
                    status_timeout: Duration::from_secs(2),
                    poll_interval: Duration::from_secs(3600),
                },
            )
        })
        .await;
        (server, fakes)
    }

    async fn start_with(configure: impl FnOnce(App, &std::path::Path) -> App) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open_sqlite(&dir.path().join("anvil.db"))
            .await
            .expect("open store");
        let app = configure(App::new(store, SecretBox::from_key([0; 32])), dir.path());
        // The boot-event writer, as `anvil serve` starts it.
        app.start_background();
        app.create_user(&Principal::System, ADMIN, ADMIN_PASSWORD, true)
            .await
            .expect("create admin");
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let router = anvil_web::router(app.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        TestServer {
            base: format!("http://{addr}"),
            app,
            task,
            _dir: dir,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read whole.
pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `Set-Cookie` of the session cookie, if the response set one.
    pub fn session_set_cookie(&self) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("anvil_session="))
            .map(str::to_string)
    }

    /// The CSRF token of the page's first POST form.
    pub fn csrf_token(&self) -> String {
        let marker = "name=\"csrf_token\" value=\"";
        let start = self
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("no csrf_token in page:\n{}", self.body))
            + marker.len();
        let len = self.body[start..].find('"').expect("closing quote");
        self.body[start..start + len].to_string()
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `anvil_session=…` as sent back in `Cookie`.
    pub cookie: Option<String>,
}

/// `application/x-www-form-urlencoded` (the workspace's reqwest has no
/// `form` feature).
pub fn form_body(fields: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Client {
    pub fn new(base: &str) -> Client {
        // reqwest is built with `rustls-no-provider`: a provider must be
        // installed before a client is built, even for plain http.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("http client");
        Client {
            http,
            base: base.to_string(),
            cookie: None,
        }
    }

    async fn read(res: reqwest::Response) -> Page {
        Page {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: res.text().await.expect("body"),
        }
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Page {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::read(req.send().await.expect("GET")).await
    }

    pub async fn get(&self, path: &str) -> Page {
        self.get_with(path, &[]).await
    }

    pub async fn post_with(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Page {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_body(fields));
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Self::read(req.send().await.expect("POST")).await
    }

    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.post_with(path, fields, &[]).await
    }

    /// Logs in and keeps the session cookie; panics if login fails.
    pub async fn login(&mut self) -> Page {
        let page = self
            .post(
                "/login",
                &[("username", ADMIN), ("password", ADMIN_PASSWORD)],
            )
            .await;
        assert_eq!(page.status, 303, "login failed: {}", page.body);
        let set = page.session_set_cookie().expect("session cookie");
        let pair = set.split(';').next().expect("cookie pair").to_string();
        self.cookie = Some(pair);
        page
    }

    /// The CSRF token of the logged-in session, read from a page's form.
    pub async fn csrf(&self) -> String {
        self.get("/machines/new").await.csrf_token()
    }
}
