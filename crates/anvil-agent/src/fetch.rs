//! Downloads of the deploy steps (the image stream, its zero map, the
//! cloud-init FAT image) from Anvil's agent endpoints, with the per-boot
//! token. Streamed: the caller reads the body as it arrives, so memory does
//! not grow with what is downloaded.

use std::io::Read;
use std::time::Duration;

/// A GET client for absolute URLs, cheap to clone into a step's thread.
#[derive(Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
    token: Option<String>,
}

impl Fetcher {
    pub fn new(token: Option<&str>) -> Fetcher {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(10)))
            // No limit on the whole download (a large image takes long);
            // a stalled connection fails the read instead, and the image
            // writer retries with a fresh stream.
            .timeout_global(None)
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .user_agent(concat!("anvil-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Fetcher {
            agent,
            token: token.map(str::to_string),
        }
    }

    /// `GET url`; a non-2xx answer is an error with its status and the
    /// problem's detail.
    pub fn get(&self, url: &str) -> Result<(Option<u64>, impl Read + Send + 'static), String> {
        let mut req = self.agent.get(url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let resp = req.call().map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status().as_u16();
        let len = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let mut body = resp.into_body();
        if !(200..300).contains(&status) {
            let text = body
                .with_config()
                .limit(64 * 1024)
                .read_to_string()
                .unwrap_or_default();
            let (problem, detail) = crate::client::parse_problem(&text);
            return Err(format!(
                "GET {url}: HTTP {status}{}{}",
                problem.map(|p| format!(" {p}")).unwrap_or_default(),
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            ));
        }
        Ok((len, body.into_reader()))
    }
}
