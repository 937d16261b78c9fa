//! A loopback HTTP listener that records what NetBox's RQ worker delivers, and
//! the check of NetBox's `X-Hook-Signature`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use hmac::{Hmac, Mac};
use sha2::Sha512;
use tokio::sync::mpsc;

use crate::Error;

/// One request NetBox sent.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Delivery {
    /// The body as JSON (NetBox sends `application/json`).
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// True if `X-Hook-Signature` is hex(HMAC-SHA512(secret, body)).
    pub fn signature_valid(&self, secret: &str) -> bool {
        self.headers
            .get("x-hook-signature")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|sig| signature_matches(secret, &self.body, sig))
    }
}

/// NetBox's webhook signature: hex(HMAC-SHA512(secret, raw body)), compared in
/// constant time.
pub fn signature_matches(secret: &str, body: &[u8], signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha512>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any size");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// Records every request to 127.0.0.1:<port>/<any path> and answers 200.
/// The server task ends when the listener is dropped.
pub struct WebhookListener {
    addr: SocketAddr,
    received: mpsc::UnboundedReceiver<Delivery>,
    server: tokio::task::JoinHandle<()>,
}

impl WebhookListener {
    /// Binds 127.0.0.1 on a free port; needs a tokio runtime.
    pub async fn start() -> Result<WebhookListener, Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Bind)?;
        let addr = listener.local_addr().map_err(Error::Bind)?;
        let (tx, received) = mpsc::unbounded_channel();
        let app = Router::new().fallback(record).with_state(tx);
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("webhook listener stopped: {e}");
            }
        });
        Ok(WebhookListener {
            addr,
            received,
            server,
        })
    }

    /// `http://127.0.0.1:<port>/netbox`: the URL to give NetBox's webhook.
    pub fn url(&self) -> String {
        format!("http://{}/netbox", self.addr)
    }

    /// The next delivery, or None if none arrives within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Delivery> {
        tokio::time::timeout(timeout, self.received.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits up to `timeout` for a delivery that `pred` accepts, dropping the
    /// others (NetBox coalesces and orders events per request, not globally).
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Delivery) -> bool,
    ) -> Option<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let delivery = self.next(left).await?;
            if pred(&delivery) {
                return Some(delivery);
            }
        }
    }
}

impl Drop for WebhookListener {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(tx): State<mpsc::UnboundedSender<Delivery>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    // A closed receiver only means the test is over.
    let _ = tx.send(Delivery {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha512_of_the_body() {
        // Computed independently: python3 -c 'import hmac,hashlib;
        // print(hmac.new(b"s3cret", b"{\"a\": 1}", hashlib.sha512).hexdigest())'
        let expected = "b9c929237f5323d0fe8618ae45b0f172d92db65df25bf9cd8c9ab5dc7713c7e0e294e0e497d931ccb16a26f1c9c70acf278b1dae91cc1cd0ae6128e354af7b74";
        assert!(signature_matches("s3cret", br#"{"a": 1}"#, expected));
        assert!(!signature_matches("other", br#"{"a": 1}"#, expected));
        assert!(!signature_matches("s3cret", br#"{"a": 2}"#, expected));
        assert!(!signature_matches("s3cret", br#"{"a": 1}"#, "not hex"));
        assert!(!signature_matches("s3cret", br#"{"a": 1}"#, ""));
    }
}
