//! A typed client of Anvil's REST API (`/api/v1`), one method per endpoint.
//!
//! Every error status is turned into [`CliError::Api`] carrying the server's
//! RFC 9457 problem, so callers (the commands here, integration tests, other
//! tools) handle exactly one error shape.

use crate::error::CliError;
use anvil_api_types::{
    EventList, EventQuery, Machine, MachineCreate, MachineList, MachinePatch, MachineQuery,
    PasswordChange, Problem, StateChange, Token, TokenCreate, TokenCreated, User, UserCreate,
};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::time::Duration;
use url::Url;
use uuid::Uuid;

/// Long enough for a slow server under load, short enough that a script
/// against a dead address does not hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How much of a non-problem error body is quoted in the message.
const MAX_QUOTED_BODY: usize = 200;

/// An authenticated connection to one Anvil server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

impl Client {
    /// A client for the server at `base` (e.g. `https://anvil.example:8443`,
    /// optionally with a path prefix when behind a reverse proxy) that
    /// authenticates with the API token `token`.
    pub fn new(base: &Url, token: &str) -> Result<Client, CliError> {
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(CliError::Usage(format!(
                "--url must be an http:// or https:// URL, not {base}"
            )));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(CliError::NoToken);
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| CliError::Usage("the API token contains invalid characters".into()))?;
        // Keeps the token out of reqwest's debug output.
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, auth);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, application/problem+json"),
        );

        // reqwest is built without a bundled crypto provider; installing ring
        // fails harmlessly when a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("anvil-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| CliError::Internal(format!("cannot set up the HTTP client: {e}")))?;

        let mut base = base.clone();
        base.set_query(None);
        base.set_fragment(None);
        Ok(Client { http, base })
    }

    /// A client from the global options; fails with [`CliError::NoToken`]
    /// when no token was given.
    pub fn from_opts(g: &crate::GlobalOpts) -> Result<Client, CliError> {
        let token = g.token.as_deref().ok_or(CliError::NoToken)?;
        Client::new(&g.url, token)
    }

    /// `GET /api/v1/machines`: one page.
    pub async fn list_machines(&self, query: &MachineQuery) -> Result<MachineList, CliError> {
        let req = self.request(Method::GET, &["machines"]).query(query);
        self.json(req).await
    }

    /// `POST /api/v1/machines`.
    pub async fn create_machine(&self, body: &MachineCreate) -> Result<Machine, CliError> {
        let req = self.request(Method::POST, &["machines"]).json(body);
        self.json(req).await
    }

    /// `GET /api/v1/machines/{target}`; `target` is an id or a hostname.
    pub async fn get_machine(&self, target: &str) -> Result<Machine, CliError> {
        self.json(self.request(Method::GET, &["machines", target]))
            .await
    }

    /// `PATCH /api/v1/machines/{target}`.
    pub async fn patch_machine(
        &self,
        target: &str,
        patch: &MachinePatch,
    ) -> Result<Machine, CliError> {
        let req = self
            .request(Method::PATCH, &["machines", target])
            .json(&patch_body(patch)?);
        self.json(req).await
    }

    /// `DELETE /api/v1/machines/{target}`.
    pub async fn delete_machine(&self, target: &str) -> Result<(), CliError> {
        self.empty(self.request(Method::DELETE, &["machines", target]))
            .await
    }

    /// `POST /api/v1/machines/{target}/state`.
    pub async fn change_state(
        &self,
        target: &str,
        body: &StateChange,
    ) -> Result<Machine, CliError> {
        let req = self
            .request(Method::POST, &["machines", target, "state"])
            .json(body);
        self.json(req).await
    }

    /// `GET /api/v1/machines/{target}/events`.
    pub async fn machine_events(
        &self,
        target: &str,
        query: &EventQuery,
    ) -> Result<EventList, CliError> {
        let req = self
            .request(Method::GET, &["machines", target, "events"])
            .query(query);
        self.json(req).await
    }

    /// `GET /api/v1/events`.
    pub async fn events(&self, query: &EventQuery) -> Result<EventList, CliError> {
        let req = self.request(Method::GET, &["events"]).query(query);
        self.json(req).await
    }

    /// `GET /api/v1/tokens`.
    pub async fn list_tokens(&self) -> Result<Vec<Token>, CliError> {
        self.json(self.request(Method::GET, &["tokens"])).await
    }

    /// `POST /api/v1/tokens`; the answer holds the secret, shown only this once.
    pub async fn create_token(&self, body: &TokenCreate) -> Result<TokenCreated, CliError> {
        let req = self.request(Method::POST, &["tokens"]).json(body);
        self.json(req).await
    }

    /// `DELETE /api/v1/tokens/{id}`.
    pub async fn revoke_token(&self, id: Uuid) -> Result<(), CliError> {
        let id = id.to_string();
        self.empty(self.request(Method::DELETE, &["tokens", &id]))
            .await
    }

    /// `GET /api/v1/users`.
    pub async fn list_users(&self) -> Result<Vec<User>, CliError> {
        self.json(self.request(Method::GET, &["users"])).await
    }

    /// `POST /api/v1/users`.
    pub async fn create_user(&self, body: &UserCreate) -> Result<User, CliError> {
        let req = self.request(Method::POST, &["users"]).json(body);
        self.json(req).await
    }

    /// `PUT /api/v1/users/{username}/password`.
    pub async fn change_password(
        &self,
        username: &str,
        body: &PasswordChange,
    ) -> Result<(), CliError> {
        let req = self
            .request(Method::PUT, &["users", username, "password"])
            .json(body);
        self.empty(req).await
    }

    /// `POST /api/v1/enroll`.
    pub async fn enroll(
        &self,
        body: &anvil_api_types::EnrollRequest,
    ) -> Result<anvil_api_types::EnrollResult, CliError> {
        self.json(self.request(Method::POST, &["enroll"]).json(body))
            .await
    }

    /// `POST /api/v1/machines/{target}/actions/{action}`.
    pub async fn machine_action(
        &self,
        target: &str,
        action: &str,
    ) -> Result<anvil_api_types::Job, CliError> {
        self.json(self.request(Method::POST, &["machines", target, "actions", action]))
            .await
    }

    /// `POST /api/v1/actions/{action}`.
    pub async fn bulk_action(
        &self,
        action: &str,
        selector: &anvil_api_types::BulkSelector,
    ) -> Result<anvil_api_types::JobList, CliError> {
        self.json(
            self.request(Method::POST, &["actions", action])
                .json(selector),
        )
        .await
    }

    /// `GET /api/v1/jobs/{id}`.
    pub async fn get_job(&self, id: Uuid) -> Result<anvil_api_types::Job, CliError> {
        self.json(self.request(Method::GET, &["jobs", &id.to_string()]))
            .await
    }

    /// `POST /api/v1/machines/{target}/power-state`: read it from the BMC now.
    pub async fn refresh_power(&self, target: &str) -> Result<Machine, CliError> {
        self.json(self.request(Method::POST, &["machines", target, "power-state"]))
            .await
    }

    /// `GET /api/v1/machines/{target}/boot-timeline`.
    pub async fn boot_timeline(
        &self,
        target: &str,
    ) -> Result<anvil_api_types::BootTimeline, CliError> {
        self.json(self.request(Method::GET, &["machines", target, "boot-timeline"]))
            .await
    }

    pub(crate) fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.http.request(method, api_url(&self.base, segments))
    }

    /// Sends a request whose success answer is a JSON body of type `T`.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
    ) -> Result<T, CliError> {
        let resp = self.send(req).await?;
        let body = resp
            .bytes()
            .await
            .map_err(|e| CliError::from_reqwest(e, self.base.as_str()))?;
        serde_json::from_slice(&body).map_err(|e| CliError::Protocol(e.to_string()))
    }

    /// Sends a request whose success answer has no body (204).
    pub(crate) async fn empty(&self, req: RequestBuilder) -> Result<(), CliError> {
        self.send(req).await.map(drop)
    }

    /// Sends a request and turns an error status into [`CliError::Api`].
    async fn send(&self, req: RequestBuilder) -> Result<reqwest::Response, CliError> {
        let resp = req
            .send()
            .await
            .map_err(|e| CliError::from_reqwest(e, self.base.as_str()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The status alone still classifies the error if the body is lost.
        let body = resp.bytes().await.unwrap_or_default();
        Err(CliError::Api {
            status: status.as_u16(),
            problem: Box::new(parse_problem(status, content_type.as_deref(), &body)),
        })
    }
}

/// `base` + `/api/v1/` + the segments, each percent-encoded, so a hostname
/// target can never reach another endpoint.
fn api_url(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    // `Client::new` refused cannot-be-a-base URLs, the only case that fails.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(["api", "v1"]).extend(segments);
    }
    url
}

/// Parses a machine target or a username, which become a path segment of
/// the API URL. `.` and `..` would be dropped from the URL and so address
/// another resource.
pub(crate) fn parse_segment(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() || t == "." || t == ".." {
        Err("expected a name or an id (not empty, . or ..)".into())
    } else {
        Ok(t.to_string())
    }
}

/// The problem in an error body. Anything else (a reverse proxy's HTML page,
/// an empty body) becomes an `about:blank` problem describing the status.
pub(crate) fn parse_problem(
    status: StatusCode,
    content_type: Option<&str>,
    body: &[u8],
) -> Problem {
    if let Ok(p) = serde_json::from_slice::<Problem>(body) {
        return p;
    }
    let title = status.canonical_reason().unwrap_or("Error").to_string();
    let is_text = content_type.is_some_and(|ct| ct.starts_with("text/plain"));
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let detail = if is_text && !text.is_empty() {
        let mut quoted: String = text.chars().take(MAX_QUOTED_BODY).collect();
        if quoted.len() < text.len() {
            quoted.push('…');
        }
        format!("the server answered {} {title}: {quoted}", status.as_u16())
    } else {
        format!("the server answered {} {title}", status.as_u16())
    };
    Problem {
        type_: "about:blank".to_string(),
        title,
        status: status.as_u16(),
        detail,
        instance: None,
        field: None,
        existing_id: None,
        current_state: None,
    }
}

/// The JSON of a PATCH body. `MachinePatch` serializes an absent field as
/// `null`, which the server reads as "clear this field"; here absent fields
/// are left out and only `Some(None)` becomes `null`. Destructuring every field
/// makes a new field in `MachinePatch` a compile error here, not a silent clear.
fn patch_body(patch: &MachinePatch) -> Result<Value, CliError> {
    let MachinePatch {
        hostname,
        architecture,
        firmware,
        vendor,
        model,
        serial,
        tags,
        facts,
        interfaces,
        bmc,
    } = patch;
    let mut body = Map::new();
    put(&mut body, "hostname", hostname)?;
    put(&mut body, "architecture", architecture)?;
    put(&mut body, "firmware", firmware)?;
    put(&mut body, "vendor", vendor)?;
    put(&mut body, "model", model)?;
    put(&mut body, "serial", serial)?;
    put(&mut body, "tags", tags)?;
    put(&mut body, "facts", facts)?;
    put(&mut body, "interfaces", interfaces)?;
    put(&mut body, "bmc", bmc)?;
    Ok(Value::Object(body))
}

/// Adds `key` when the outer option is set (the inner value may be `null`).
fn put<T: Serialize>(
    body: &mut Map<String, Value>,
    key: &str,
    v: &Option<T>,
) -> Result<(), CliError> {
    if let Some(v) = v {
        let v = serde_json::to_value(v).map_err(|e| CliError::Internal(e.to_string()))?;
        body.insert(key.to_string(), v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_api_types::problem_types;
    use anvil_types::{BmcDriver, MachineState};
    use serde_json::json;

    #[test]
    fn problem_json_is_parsed() {
        let body = br#"{
            "type": "https://anvil.dev/problems/duplicate",
            "title": "Duplicate",
            "status": 409,
            "detail": "MAC 52:54:00:12:34:56 belongs to node-01",
            "field": "interfaces[0].mac",
            "existing_id": "0190f1e2-7a3b-7c4d-8e5f-0123456789ab"
        }"#;
        let p = parse_problem(StatusCode::CONFLICT, Some("application/problem+json"), body);
        assert_eq!(p.type_, problem_types::DUPLICATE);
        assert_eq!(p.status, 409);
        assert_eq!(p.field.as_deref(), Some("interfaces[0].mac"));
        assert_eq!(
            p.existing_id,
            Some("0190f1e2-7a3b-7c4d-8e5f-0123456789ab".parse().unwrap())
        );

        let body = br#"{"type": "https://anvil.dev/problems/invalid-transition",
            "title": "Invalid transition", "status": 409,
            "detail": "a machine in state new cannot move to deployed",
            "current_state": "new"}"#;
        let p = parse_problem(StatusCode::CONFLICT, Some("application/problem+json"), body);
        assert_eq!(p.current_state, Some(MachineState::New));
    }

    #[test]
    fn a_non_problem_body_becomes_about_blank() {
        let p = parse_problem(
            StatusCode::BAD_GATEWAY,
            Some("text/html"),
            b"<html><body>bad gateway</body></html>",
        );
        assert_eq!(p.type_, "about:blank");
        assert_eq!(p.status, 502);
        assert_eq!(p.title, "Bad Gateway");
        assert_eq!(p.detail, "the server answered 502 Bad Gateway");

        let long = "x".repeat(500);
        let p = parse_problem(
            StatusCode::SERVICE_UNAVAILABLE,
            Some("text/plain; charset=utf-8"),
            long.as_bytes(),
        );
        let quoted = format!("{}…", "x".repeat(MAX_QUOTED_BODY));
        assert_eq!(
            p.detail,
            format!("the server answered 503 Service Unavailable: {quoted}")
        );

        let p = parse_problem(StatusCode::NOT_FOUND, None, b"");
        assert_eq!(p.detail, "the server answered 404 Not Found");
    }

    #[test]
    fn urls_keep_the_prefix_and_encode_targets() {
        let base: Url = "https://h.example/anvil/".parse().unwrap();
        assert_eq!(
            api_url(&base, &["machines", "node-01", "state"]).as_str(),
            "https://h.example/anvil/api/v1/machines/node-01/state"
        );
        let base: Url = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            api_url(&base, &["machines", "a/b?c#d"]).as_str(),
            "http://127.0.0.1:8080/api/v1/machines/a%2Fb%3Fc%23d"
        );
    }

    #[test]
    fn patch_body_leaves_absent_fields_out() {
        let patch = MachinePatch {
            vendor: Some(Some("Dell".into())),
            model: Some(None),
            tags: Some(vec!["rack1".into()]),
            bmc: Some(Some(anvil_api_types::BmcInput {
                driver: BmcDriver::Redfish,
                address: "10.0.0.5".into(),
                port: None,
                username: None,
                password: None,
                verify_tls: None,
            })),
            ..MachinePatch::default()
        };
        assert_eq!(
            patch_body(&patch).unwrap(),
            json!({
                "vendor": "Dell",
                "model": null,
                "tags": ["rack1"],
                "bmc": {"driver": "redfish", "address": "10.0.0.5", "port": null,
                        "username": null, "verify_tls": null},
            })
        );
        assert_eq!(patch_body(&MachinePatch::default()).unwrap(), json!({}));
    }

    #[test]
    fn client_refuses_bad_urls_and_missing_tokens() {
        let ftp: Url = "ftp://h.example".parse().unwrap();
        assert_eq!(Client::new(&ftp, "t").unwrap_err().exit_code(), 2);
        let ok: Url = "http://h.example".parse().unwrap();
        assert!(matches!(Client::new(&ok, "  "), Err(CliError::NoToken)));
        assert_eq!(Client::new(&ok, "bad\ntoken").unwrap_err().exit_code(), 2);
        assert!(Client::new(&ok, "secret").is_ok());
    }
}
