//! Captures every tracing event of the current thread into a buffer, so a
//! test can assert that no secret was logged. `#[tokio::test]` runs on a
//! current-thread runtime: the driver's tasks log on this thread too.

use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

pub struct CapturedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = CapturedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CapturedWriter(self.0.clone())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Everything at TRACE level, from every crate (reqwest, rustls and hyper
/// included, whether they log through `tracing` or `log`).
pub fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    // Process-wide and idempotent: the second call in a process fails, which is fine.
    let _ = tracing_log::LogTracer::init();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}

/// The forms a password can take in text: verbatim, percent-encoded (URL
/// userinfo) and base64 (a basic auth header).
pub fn secret_forms(user: &str, password: &str) -> Vec<String> {
    use base64::Engine;
    let mut encoded = String::new();
    for b in password.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    vec![password.to_string(), encoded, basic]
}

pub fn assert_no_secret(what: &str, text: &str, forms: &[String]) {
    for f in forms {
        assert!(
            !text.contains(f.as_str()),
            "{what} contains a form of the password ({f:?}):\n{text}"
        );
    }
}
