//! HTTP to one BMC: authentication (session or basic), retries with
//! backoff, redirects that never carry credentials elsewhere, and errors
//! that never carry a secret.

use crate::address::Endpoint;
use crate::redact::{Secret, scrub, truncate};
use crate::tls::find_tls_error;
use anvil_power::PowerError;
use reqwest::header::{ACCEPT, ETAG, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use tracing::debug;
use url::Url;

/// A BMC answering with more than this is broken or hostile.
const MAX_BODY: usize = 16 * 1024 * 1024;
const MAX_REDIRECTS: usize = 5;
/// Upper bound for one wait between retries, whatever Retry-After says:
/// a BMC asking for minutes would stall the caller's whole operation.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
const X_AUTH_TOKEN: &str = "x-auth-token";

/// Transport settings taken from `RedfishOptions`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
}

/// What a request authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// Not logged in yet.
    Unset,
    /// No credentials configured.
    Anonymous,
    Basic,
    Session {
        token: Secret,
        /// The session resource, DELETEd on close.
        uri: Option<String>,
    },
}

/// One answer from the BMC, already read.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    /// `ETag` header, else the body's `@odata.etag`.
    pub(crate) etag: Option<String>,
    /// `Location` header (task monitors, new sessions). It is resolved
    /// against the BMC and checked to be on it before any use.
    pub(crate) location: Option<String>,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) token: Option<Secret>,
    /// The JSON body, `Null` when empty or not JSON.
    pub(crate) body: Value,
}

impl Response {
    /// `Ok` for 2xx; otherwise the right `PowerError`, `what` naming the
    /// request (e.g. "GET /redfish/v1/Systems/1").
    pub(crate) fn ok(self, t: &Transport, what: &str) -> Result<Response, PowerError> {
        if self.status.is_success() {
            return Ok(self);
        }
        Err(t.status_error(&self, what))
    }
}

/// How a single attempt failed, before it becomes a `PowerError`.
enum Failure {
    /// Nothing was sent (refused, unreachable, DNS): safe to retry.
    Connect(String),
    ConnectTimeout,
    Tls(String),
    /// Sent, no (complete) answer in time: not retried, the request may
    /// have taken effect.
    Timeout,
    Other(String),
}

pub(crate) struct Transport {
    client: reqwest::Client,
    pub(crate) endpoint: Endpoint,
    username: Option<String>,
    password: Option<Secret>,
    limits: Limits,
    /// Serialises logins, so concurrent calls create one session.
    auth: tokio::sync::Mutex<Auth>,
    /// Where sessions are created; `None` means the service offers none.
    sessions: std::sync::Mutex<Option<String>>,
}

impl Transport {
    pub(crate) fn new(
        endpoint: Endpoint,
        username: Option<String>,
        password: Option<String>,
        tls: rustls::ClientConfig,
        limits: Limits,
    ) -> Result<Self, PowerError> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // Redirects are followed by hand: only on the BMC itself, and
            // never with the Location (which may carry credentials) logged.
            .redirect(reqwest::redirect::Policy::none())
            // Retries are ours: we know which requests may be repeated.
            .retry(reqwest::retry::never())
            // BMC networks are management networks: no proxy from the
            // environment may see BMC credentials.
            .no_proxy()
            .timeout(limits.timeout)
            .connect_timeout(limits.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("anvil/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PowerError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Transport {
            client,
            endpoint,
            username: username.filter(|u| !u.is_empty()),
            password: password.map(Secret::new),
            limits,
            auth: tokio::sync::Mutex::new(Auth::Unset),
            sessions: std::sync::Mutex::new(None),
        })
    }

    pub(crate) fn address(&self) -> &str {
        &self.endpoint.display
    }

    /// Removes everything secret from text that came from outside.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let password = self.password.as_ref().map(Secret::expose).unwrap_or("");
        truncate(scrub(text, &[password]), 400)
    }

    pub(crate) fn set_sessions_uri(&self, uri: Option<String>) {
        if let Ok(mut s) = self.sessions.lock() {
            *s = uri;
        }
    }

    /// Resolves a path (or an absolute URL from the BMC) on the BMC, and
    /// refuses anything pointing elsewhere.
    fn resolve(&self, target: &str) -> Result<Url, PowerError> {
        let mut url = self
            .endpoint
            .base
            .join(target)
            .map_err(|_| self.protocol(format!("invalid URI {:?}", self.scrub(target))))?;
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if !self.endpoint.same_origin(&url) {
            return Err(self.protocol("the BMC pointed to another host; not followed".into()));
        }
        Ok(url)
    }

    fn protocol(&self, detail: String) -> PowerError {
        PowerError::Protocol {
            address: self.address().to_string(),
            detail,
        }
    }

    /// The `PowerError` for a non-2xx answer.
    pub(crate) fn status_error(&self, r: &Response, what: &str) -> PowerError {
        let address = self.address().to_string();
        let message = redfish_message(&r.body)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        match r.status {
            StatusCode::UNAUTHORIZED => PowerError::AuthFailed { address },
            StatusCode::NOT_IMPLEMENTED => PowerError::NotSupported {
                address,
                what: self.scrub(&format!("{what}{message}")),
            },
            s => PowerError::Protocol {
                address,
                detail: self.scrub(&format!("{what} answered {s}{message}")),
            },
        }
    }

    /// Sends a request with authentication, retries and redirects. Returns
    /// any final HTTP status except 401 (→ `AuthFailed` once a session
    /// re-login did not help); callers judge the others.
    pub(crate) async fn send(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Response, PowerError> {
        self.send_keeping(method, target, body, if_match, Keep::All)
            .await
    }

    /// [`Transport::send`], keeping only some members of a successful
    /// answer's JSON object (see [`Keep`]).
    pub(crate) async fn send_keeping(
        &self,
        method: Method,
        target: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        keep: Keep,
    ) -> Result<Response, PowerError> {
        let url = self.resolve(target)?;
        let mut relogged = false;
        loop {
            let auth = self.current_auth().await?;
            let resp = self
                .send_with_retries(&method, &url, body, if_match, &auth, keep)
                .await?;
            if resp.status != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            // An expired or revoked session: log in again, once.
            if matches!(auth, Auth::Session { .. }) && !relogged {
                debug!(bmc = %self.address(), "session refused; logging in again");
                self.invalidate(&auth).await;
                relogged = true;
                continue;
            }
            return Err(PowerError::AuthFailed {
                address: self.address().to_string(),
            });
        }
    }

    /// Sends without credentials (the service root is public per DSP0266).
    pub(crate) async fn send_anonymous(&self, target: &str) -> Result<Response, PowerError> {
        let url = self.resolve(target)?;
        self.send_with_retries(&Method::GET, &url, None, None, &Auth::Anonymous, Keep::All)
            .await
    }

    async fn current_auth(&self) -> Result<Auth, PowerError> {
        let mut auth = self.auth.lock().await;
        if *auth == Auth::Unset {
            *auth = self.login().await?;
        }
        Ok(auth.clone())
    }

    async fn invalidate(&self, used: &Auth) {
        let mut auth = self.auth.lock().await;
        // Another call may already have logged in again.
        if *auth == *used {
            *auth = Auth::Unset;
        }
    }

    /// Creates a session if the service offers them, else basic auth.
    async fn login(&self) -> Result<Auth, PowerError> {
        let (Some(user), Some(password)) = (&self.username, &self.password) else {
            return Ok(Auth::Anonymous);
        };
        let sessions = self.sessions.lock().ok().and_then(|s| s.clone());
        let Some(sessions) = sessions else {
            debug!(bmc = %self.address(), "no session service; using basic auth");
            return Ok(Auth::Basic);
        };
        let url = self.resolve(&sessions)?;
        let body = json!({ "UserName": user, "Password": password.expose() });
        let resp = self
            .send_with_retries(
                &Method::POST,
                &url,
                Some(&body),
                None,
                &Auth::Anonymous,
                Keep::All,
            )
            .await?;
        match resp.status {
            s if s.is_success() => match resp.token {
                Some(token) => {
                    let uri = resp
                        .location
                        .clone()
                        .or_else(|| odata_id(&resp.body).map(str::to_string));
                    debug!(bmc = %self.address(), "session created");
                    Ok(Auth::Session { token, uri })
                }
                None => {
                    debug!(bmc = %self.address(), "session created without a token; using basic auth");
                    Ok(Auth::Basic)
                }
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(PowerError::AuthFailed {
                address: self.address().to_string(),
            }),
            s => {
                // Sessions disabled, all slots taken, or not implemented:
                // basic auth still works on every Redfish service.
                debug!(bmc = %self.address(), status = s.as_u16(), "session refused; using basic auth");
                Ok(Auth::Basic)
            }
        }
    }

    /// Logs out: DELETEs the session, if any. Best effort.
    pub(crate) async fn logout(&self) {
        let old = {
            let mut auth = self.auth.lock().await;
            std::mem::replace(&mut *auth, Auth::Unset)
        };
        if let Auth::Session { uri: Some(uri), .. } = &old {
            let Ok(url) = self.resolve(uri) else {
                return;
            };
            match self
                .send_with_retries(&Method::DELETE, &url, None, None, &old, Keep::All)
                .await
            {
                Ok(r) => {
                    debug!(bmc = %self.address(), status = r.status.as_u16(), "session closed")
                }
                Err(e) => debug!(bmc = %self.address(), error = %e, "closing the session failed"),
            }
        }
    }

    /// Takes the session without waiting, for `Drop`: the caller deletes it
    /// from a spawned task with [`delete_session_detached`].
    pub(crate) fn take_session(&self) -> Option<(reqwest::Client, Url, Secret)> {
        let mut auth = self.auth.try_lock().ok()?;
        if let Auth::Session {
            token,
            uri: Some(uri),
        } = std::mem::replace(&mut *auth, Auth::Unset)
        {
            let url = self.resolve(&uri).ok()?;
            return Some((self.client.clone(), url, token));
        }
        None
    }

    async fn send_with_retries(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        if_match: Option<&str>,
        auth: &Auth,
        keep: Keep,
    ) -> Result<Response, PowerError> {
        let mut attempt: u32 = 0;
        loop {
            let result = self
                .send_once(method, url, body, if_match, auth, keep)
                .await;
            let last = attempt >= self.limits.retries;
            let wait = match &result {
                Ok(r) if retryable(r.status) && !last => Some(r.retry_after),
                Err(Failure::Connect(_) | Failure::ConnectTimeout) if !last => None,
                _ => {
                    return result.map_err(|f| self.failure(f));
                }
            };
            let backoff = self.limits.backoff.saturating_mul(1 << attempt.min(16));
            let delay = wait.flatten().map_or(backoff, |ra| ra.max(backoff));
            let delay = delay.min(MAX_RETRY_WAIT);
            match &result {
                Ok(r) => debug!(
                    bmc = %self.address(), path = url.path(), status = r.status.as_u16(),
                    attempt, delay_ms = delay.as_millis() as u64, "retrying"
                ),
                Err(_) => debug!(
                    bmc = %self.address(), path = url.path(),
                    attempt, delay_ms = delay.as_millis() as u64, "cannot connect; retrying"
                ),
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    fn failure(&self, f: Failure) -> PowerError {
        let address = self.address().to_string();
        match f {
            Failure::Connect(reason) => PowerError::Unreachable {
                address,
                reason: self.scrub(&reason),
            },
            Failure::ConnectTimeout | Failure::Timeout => PowerError::Timeout {
                address,
                after: self.limits.timeout,
            },
            Failure::Tls(reason) => PowerError::Tls {
                address,
                reason: self.scrub(&reason),
            },
            Failure::Other(detail) => PowerError::Protocol {
                address,
                detail: self.scrub(&detail),
            },
        }
    }

    /// One attempt, following same-origin redirects.
    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        if_match: Option<&str>,
        auth: &Auth,
        keep: Keep,
    ) -> Result<Response, Failure> {
        let mut method = method.clone();
        let mut body = body;
        let mut url = url.clone();
        for hop in 0..=MAX_REDIRECTS {
            debug!(bmc = %self.address(), method = %method, path = url.path(), "request");
            let mut req = self
                .client
                .request(method.clone(), url.clone())
                .header(ACCEPT, "application/json")
                .header("OData-Version", "4.0");
            req = match auth {
                Auth::Basic => match (&self.username, &self.password) {
                    (Some(u), Some(p)) => req.basic_auth(u, Some(p.expose())),
                    _ => req,
                },
                Auth::Session { token, .. } => {
                    let mut value = HeaderValue::from_str(token.expose()).map_err(|_| {
                        Failure::Other("the BMC issued an unusable session token".into())
                    })?;
                    value.set_sensitive(true);
                    req.header(HeaderName::from_static(X_AUTH_TOKEN), value)
                }
                Auth::Unset | Auth::Anonymous => req,
            };
            if let Some(tag) = if_match {
                req = req.header("If-Match", tag);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(classify)?;
            let status = resp.status();
            if status.is_redirection()
                && let Some(loc) = resp.headers().get(LOCATION)
            {
                if hop == MAX_REDIRECTS {
                    return Err(Failure::Other("too many redirects".into()));
                }
                // The target is never logged nor put in an error: sushy-tools
                // puts the credentials into it.
                let loc = loc
                    .to_str()
                    .map_err(|_| Failure::Other("a redirect with an unreadable Location".into()))?;
                let mut next = url
                    .join(loc)
                    .map_err(|_| Failure::Other("a redirect with an invalid Location".into()))?;
                let _ = next.set_username("");
                let _ = next.set_password(None);
                if !self.endpoint.same_origin(&next) {
                    return Err(Failure::Other(
                        "the BMC redirected to another host; not followed".into(),
                    ));
                }
                debug!(bmc = %self.address(), status = status.as_u16(), "following a redirect");
                if status == StatusCode::SEE_OTHER {
                    method = Method::GET;
                    body = None;
                }
                url = next;
                continue;
            }
            return read_response(resp, keep).await;
        }
        Err(Failure::Other("too many redirects".into()))
    }
}

/// Deletes a session from a detached task (used by `Drop`).
pub(crate) fn delete_session_detached(client: reqwest::Client, url: Url, token: Secret) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let Ok(mut value) = HeaderValue::from_str(token.expose()) else {
            return;
        };
        value.set_sensitive(true);
        let result = client
            .delete(url)
            .header(HeaderName::from_static(X_AUTH_TOKEN), value)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        debug!(ok = result.is_ok(), "session closed on drop");
    });
}

fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS
            | StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

fn classify(e: reqwest::Error) -> Failure {
    if let Some(tls) = find_tls_error(&e) {
        return Failure::Tls(tls);
    }
    let reason = source_chain(&e);
    if e.is_connect() {
        if e.is_timeout() {
            Failure::ConnectTimeout
        } else {
            Failure::Connect(reason)
        }
    } else if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Other(reason)
    }
}

/// The causes of a reqwest error, without reqwest's own message (which
/// contains the URL).
fn source_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = std::error::Error::source(e);
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        cur = s.source();
    }
    if parts.is_empty() {
        "request failed".into()
    } else {
        parts.join(": ")
    }
}

async fn read_response(mut resp: reqwest::Response, keep: Keep) -> Result<Response, Failure> {
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(Failure::Other("the BMC's answer is too large".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
    let body: Value = if bytes.is_empty() {
        Value::Null
    } else {
        // Error answers are always read whole: their `error` member is
        // what the caller reports.
        match keep {
            Keep::Only(members) if status.is_success() => parse_keeping(&bytes, members)
                .unwrap_or_else(|| serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
            _ => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    };
    let etag = header(&headers, ETAG.as_str()).or_else(|| {
        body.get("@odata.etag")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    Ok(Response {
        status,
        etag,
        location: header(&headers, LOCATION.as_str()),
        retry_after: header(&headers, RETRY_AFTER.as_str()).and_then(|v| parse_retry_after(&v)),
        token: header(&headers, X_AUTH_TOKEN).map(Secret::new),
        body,
    })
}

/// How much of a successful answer's JSON object to keep.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keep {
    All,
    /// Only these top-level members (with everything below them): a
    /// ComputerSystem is a few kilobytes of which a power step reads five
    /// members, and building the rest as a `serde_json::Value` (a `String`
    /// and a map node per member, all freed again) was the largest share
    /// of Anvil's CPU per action in the profile of the Redfish benchmark.
    Only(&'static [&'static str]),
}

/// Parses a JSON object keeping only `members` (skipped members are
/// scanned, not built). `None` when `bytes` is not one JSON object or a key
/// is not a plain string (escapes): the caller then parses it whole.
pub(crate) fn parse_keeping(bytes: &[u8], members: &[&str]) -> Option<Value> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    struct Members<'m>(&'m [&'m str]);

    impl<'de> DeserializeSeed<'de> for Members<'_> {
        type Value = serde_json::Map<String, Value>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Members<'_> {
        type Value = serde_json::Map<String, Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            // Borrowed keys: no allocation for the members skipped.
            while let Some(key) = map.next_key::<&'de str>()? {
                if self.0.contains(&key) {
                    let value: Value = map.next_value()?;
                    out.insert(key.to_string(), value);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(out)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let kept = Members(members).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(Value::Object(kept))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at =
        time::OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc2822)
            .ok()?;
    let delta = at - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(delta).unwrap_or(Duration::ZERO))
}

pub(crate) fn odata_id(v: &Value) -> Option<&str> {
    v.get("@odata.id").and_then(Value::as_str)
}

/// The human part of a Redfish error body (`error.message` and the
/// `@Message.ExtendedInfo` messages).
pub(crate) fn redfish_message(body: &Value) -> Option<String> {
    let err = body.get("error")?;
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = err.get("message").and_then(Value::as_str) {
        parts.push(m.to_string());
    }
    if let Some(infos) = err.get("@Message.ExtendedInfo").and_then(Value::as_array) {
        for m in infos
            .iter()
            .filter_map(|i| i.get("Message").and_then(Value::as_str))
        {
            if !parts.iter().any(|p| p == m) {
                parts.push(m.to_string());
            }
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_keeps_only_the_members_asked_for() {
        let doc = br#"{
            "@odata.id": "/redfish/v1/Systems/1",
            "Name": "big",
            "ProcessorSummary": {"Count": 2, "Model": "x"},
            "PowerState": "On",
            "Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Hdd"]},
            "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/1"}]}
        }"#;
        let kept = parse_keeping(doc, &["@odata.id", "PowerState", "Boot", "Actions"]).unwrap();
        assert_eq!(
            kept,
            json!({
                "@odata.id": "/redfish/v1/Systems/1",
                "PowerState": "On",
                "Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Hdd"]},
            })
        );
        // Not one object, trailing bytes, an escaped key: parsed whole by
        // the caller instead.
        assert_eq!(parse_keeping(b"[1, 2]", &["a"]), None);
        assert_eq!(parse_keeping(b"{\"a\": 1} x", &["a"]), None);
        assert_eq!(
            parse_keeping(br#"{"P\u006fwerState": "On"}"#, &["PowerState"]),
            None
        );
        assert_eq!(parse_keeping(b"{}", &["a"]), Some(json!({})));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn redfish_error_messages() {
        let body = json!({"error": {"code": "Base.1.0.GeneralError", "message": "A general error",
            "@Message.ExtendedInfo": [{"Message": "The value X is not allowed"}, {"Message": "A general error"}]}});
        assert_eq!(
            redfish_message(&body).as_deref(),
            Some("A general error; The value X is not allowed")
        );
        assert_eq!(redfish_message(&json!({})), None);
    }

    #[test]
    fn retryable_statuses() {
        assert!(retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!retryable(StatusCode::NOT_IMPLEMENTED));
        assert!(!retryable(StatusCode::BAD_REQUEST));
        assert!(!retryable(StatusCode::PRECONDITION_FAILED));
    }
}
