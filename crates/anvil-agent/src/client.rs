//! Calls to Anvil's agent API (`/api/v1/agent/…`): JSON over HTTP(S) with
//! the per-boot bearer token, retried with backoff on connection errors,
//! timeouts and 5xx (every agent call is safe to retry, see
//! docs/agent-protocol.md). The decision what to retry is pure
//! ([`classify`]); the transport is ureq (blocking: PID 1 needs no runtime).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backoff::{Backoff, Jitter};
use crate::log;

/// One call's outcome other than success.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No HTTP answer (connection refused, reset, timeout, DNS, TLS).
    Transport(String),
    /// An HTTP answer that is not 2xx, with the problem+json `type` (its
    /// last path segment, e.g. `already-reported`) and `detail` if any.
    Status {
        status: u16,
        problem: Option<String>,
        detail: String,
    },
    /// A 2xx whose body is not what the protocol says.
    BadAnswer(String),
}

impl CallError {
    pub fn problem(&self) -> Option<&str> {
        match self {
            CallError::Status { problem, .. } => problem.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "no answer: {e}"),
            CallError::Status {
                status,
                problem,
                detail,
            } => write!(
                f,
                "HTTP {status} {}: {detail}",
                problem.as_deref().unwrap_or("(no problem type)")
            ),
            CallError::BadAnswer(e) => write!(f, "unexpected answer: {e}"),
        }
    }
}

/// What to do after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try the same request again after a backoff delay.
    Again,
    /// Give up and hand the error to the caller.
    GiveUp,
}

/// Connection errors, 5xx, 408 and 429 are worth retrying; any other answer
/// is the server's decision and retrying would not change it.
pub fn classify(err: &CallError) -> Retry {
    match err {
        CallError::Transport(_) => Retry::Again,
        CallError::Status { status, .. } if *status >= 500 || *status == 408 || *status == 429 => {
            Retry::Again
        }
        CallError::Status { .. } | CallError::BadAnswer(_) => Retry::GiveUp,
    }
}

/// The last path segment of a problem+json `type` URI
/// (`https://anvil.dev/problems/already-reported` → `already-reported`),
/// and its `detail` (else `title`).
pub fn parse_problem(body: &str) -> (Option<String>, String) {
    let v: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => return (None, body.chars().take(300).collect()),
    };
    let problem = v["type"]
        .as_str()
        .map(|t| t.rsplit('/').next().unwrap_or(t).to_string());
    let detail = v["detail"]
        .as_str()
        .or_else(|| v["title"].as_str())
        .unwrap_or("")
        .to_string();
    (problem, detail)
}

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    jitter: Jitter,
    /// Retry delays: 1 s doubling to 30 s (docs/agent-protocol.md).
    backoff_base: Duration,
    backoff_cap: Duration,
}

impl Client {
    /// A client of `<base>/api/v1/`; with a token, every call carries
    /// `Authorization: Bearer <token>`.
    pub fn new(base: &str, token: Option<&str>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(60)))
            // Non-2xx answers are data here (problem+json), not errors.
            .http_status_as_error(false)
            .user_agent(concat!("anvil-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client {
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
            agent,
            jitter: Jitter::from_entropy(),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(30),
        }
    }

    /// `POST <base>/api/v1/<path>` once.
    pub fn post_once<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, CallError> {
        let url = format!("{}/api/v1/{path}", self.base);
        let mut req = self.agent.post(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let resp = req.send_json(body);
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => return Err(CallError::Transport(e.to_string())),
        };
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(4 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| CallError::Transport(format!("reading the answer: {e}")))?;
        if !(200..300).contains(&status) {
            let (problem, detail) = parse_problem(&text);
            return Err(CallError::Status {
                status,
                problem,
                detail,
            });
        }
        serde_json::from_str(&text).map_err(|e| {
            CallError::BadAnswer(format!(
                "{path}: {e}: {}",
                text.chars().take(200).collect::<String>()
            ))
        })
    }

    /// `POST` with retries: connection errors and 5xx are retried with
    /// backoff and jitter, for at most `give_up_after` (None: for ever, as
    /// PID 1 has nothing better to do than wait for its server).
    pub fn post<B: Serialize, R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
        give_up_after: Option<Duration>,
    ) -> Result<R, CallError> {
        let started = std::time::Instant::now();
        let mut backoff = Backoff::new(self.backoff_base, self.backoff_cap);
        loop {
            match self.post_once(path, body) {
                Ok(r) => return Ok(r),
                Err(e) if classify(&e) == Retry::Again => {
                    if give_up_after.is_some_and(|g| started.elapsed() >= g) {
                        return Err(e);
                    }
                    let delay = backoff.next_delay(self.jitter.unit());
                    log!(
                        "{path}: {e}; retry {} in {:.1} s",
                        backoff.attempts(),
                        delay.as_secs_f64()
                    );
                    std::thread::sleep(delay);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> CallError {
        CallError::Status {
            status: s,
            problem: None,
            detail: String::new(),
        }
    }

    #[test]
    fn retries_what_a_retry_can_fix_only() {
        assert_eq!(
            classify(&CallError::Transport("refused".into())),
            Retry::Again
        );
        for s in [500, 502, 503, 504, 408, 429] {
            assert_eq!(classify(&status(s)), Retry::Again, "{s}");
        }
        for s in [400, 401, 403, 404, 409, 413, 422] {
            assert_eq!(classify(&status(s)), Retry::GiveUp, "{s}");
        }
        assert_eq!(classify(&CallError::BadAnswer("x".into())), Retry::GiveUp);
    }

    #[test]
    fn problem_type_and_detail_from_problem_json() {
        let (p, d) = parse_problem(
            r#"{"type":"https://anvil.dev/problems/already-reported","title":"Already reported","status":409,"detail":"seq 3 was accepted"}"#,
        );
        assert_eq!(p.as_deref(), Some("already-reported"));
        assert_eq!(d, "seq 3 was accepted");
        let (p, d) = parse_problem(r#"{"type":"about:blank","title":"Unauthorized"}"#);
        assert_eq!(p.as_deref(), Some("about:blank"));
        assert_eq!(d, "Unauthorized");
        let (p, d) = parse_problem("<html>bad gateway</html>");
        assert_eq!(p, None);
        assert_eq!(d, "<html>bad gateway</html>");
    }

    /// A real HTTP server on loopback that fails twice with 503, then
    /// answers: the client retries (with backoff) and gets the answer, and
    /// sends the bearer token every time.
    #[test]
    fn retries_503_then_succeeds_with_the_token() {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut auths = Vec::new();
            for i in 0..3 {
                let (mut s, _) = listener.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    let l = line.trim_end().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if l.starts_with("authorization:") {
                        auths.push(line.trim_end().to_string());
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let (st, b) = if i < 2 {
                    (
                        "503 Service Unavailable",
                        r#"{"type":"https://anvil.dev/problems/unavailable","title":"x"}"#,
                    )
                } else {
                    ("200 OK", r#"{"run_state":"running","heartbeat_secs":10}"#)
                };
                write!(
                    s,
                    "HTTP/1.1 {st}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                    b.len()
                )
                .unwrap();
            }
            auths
        });
        let mut c = Client::new(&format!("http://{addr}"), Some("tok-1"));
        c.backoff_base = Duration::from_millis(20);
        let ack: serde_json::Value = c
            .post(
                "agent/heartbeat",
                &serde_json::json!({}),
                Some(Duration::from_secs(10)),
            )
            .unwrap();
        assert_eq!(ack["run_state"], "running");
        let auths = server.join().unwrap();
        assert_eq!(auths.len(), 3);
        assert!(
            auths.iter().all(|a| a.ends_with("Bearer tok-1")),
            "{auths:?}"
        );
    }

    #[test]
    fn gives_up_on_transport_errors_after_the_limit() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener); // nothing listens: connection refused
        let mut c = Client::new(&format!("http://{addr}"), Some("t"));
        c.backoff_base = Duration::from_millis(10);
        let t = std::time::Instant::now();
        let e = c
            .post::<_, serde_json::Value>(
                "agent/next",
                &serde_json::json!({}),
                Some(Duration::from_millis(200)),
            )
            .unwrap_err();
        assert!(matches!(e, CallError::Transport(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
