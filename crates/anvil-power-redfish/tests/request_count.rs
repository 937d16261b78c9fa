//! How many HTTP requests a power action costs against a real sushy-tools
//! emulator, counted on the wire by a reverse proxy on loopback between the
//! driver and sushy (sushy answers every request with `Connection: close`,
//! so each request is also a new TCP connection: the cost the Redfish
//! benchmark measures).
//!
//! "PXE boot now" is read state + boot override + power on/reset. The
//! driver remembers the ComputerSystem for `system_cache_ttl`, so the
//! action is one GET, one PATCH and one POST; without the cache it was five
//! requests (the override and the power action each GET the system again).

#[path = "support/sushy.rs"]
mod sushy;

use anvil_power::{
    BmcCredentials, BootDevice, BootOverride, PowerAction, PowerDriver, PowerState, wait_for_state,
};
use anvil_power_redfish::{RedfishDriver, RedfishOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sushy::{FakeSystem, Sushy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USER: &str = "anvil";
const PASSWORD: &str = "count-me";
const OFF_SYSTEM: &str = "0c0a0011-0000-4000-8000-000000000011";
const ON_SYSTEM: &str = "0c0a0012-0000-4000-8000-000000000012";
const STALE_SYSTEM: &str = "0c0a0013-0000-4000-8000-000000000013";
const NO_CACHE_SYSTEM: &str = "0c0a0014-0000-4000-8000-000000000014";
const POLL_SYSTEM: &str = "0c0a0015-0000-4000-8000-000000000015";
/// sushy applies a power change 1 to 11 s after the request.
const CONVERGE: Duration = Duration::from_secs(40);

fn systems() -> Vec<FakeSystem> {
    let system = |uuid, name, power_on| FakeSystem {
        uuid,
        name,
        power_on,
        macs: &[],
        disk_bytes: None,
    };
    vec![
        system(OFF_SYSTEM, "count-off", false),
        system(ON_SYSTEM, "count-on", true),
        system(STALE_SYSTEM, "count-stale", false),
        system(NO_CACHE_SYSTEM, "count-nocache", false),
        system(POLL_SYSTEM, "count-poll", false),
    ]
}

/// A TCP proxy on 127.0.0.1 that records the request line of every HTTP
/// request the client sends through it.
struct CountingProxy {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl CountingProxy {
    /// `upstream`: `http://host:port` of the service behind the proxy.
    async fn start(upstream: &str) -> CountingProxy {
        let upstream = upstream
            .strip_prefix("http://")
            .expect("a plain-HTTP upstream")
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let seen = seen.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream.as_str()).await {
                        relay(client, server, seen).await;
                    }
                });
            }
        });
        CountingProxy {
            port,
            requests,
            accept,
        }
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests seen since the last call ("METHOD /path").
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

/// Copies both ways; the client's bytes are scanned for request lines.
/// Requests can be pipelined on a kept-alive connection, so every request
/// line in the stream counts, not just connections.
async fn relay(client: TcpStream, server: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let upstream = async move {
        let mut stream = Vec::new();
        let mut scanned = 0;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            stream.extend_from_slice(&buf[..n]);
            scanned = record_request_lines(&stream, scanned, &seen);
            if server_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_tx.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// Records each request line (`METHOD target HTTP/1.x`) that ends after
/// `from`; returns where the next scan starts. Only the driver's JSON
/// bodies sit between request lines, and they never contain " HTTP/1.".
fn record_request_lines(stream: &[u8], from: usize, seen: &Mutex<Vec<String>>) -> usize {
    const MARK: &[u8] = b" HTTP/1.";
    let mut at = from;
    while let Some(i) = stream[at..].windows(MARK.len()).position(|w| w == MARK) {
        let end = at + i;
        // The request line starts after the previous line end; a JSON body
        // without a trailing CRLF may precede the method, so keep only the
        // last two words (method, target).
        let start = stream[..end]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let line = String::from_utf8_lossy(&stream[start..end]).to_string();
        let words: Vec<&str> = line.split(['}', ' ']).filter(|w| !w.is_empty()).collect();
        let method_target = words[words.len().saturating_sub(2)..].join(" ");
        seen.lock().unwrap().push(method_target);
        at = end + MARK.len();
    }
    // A mark split across two reads is found on the next one.
    stream.len().saturating_sub(MARK.len()).max(at)
}

fn driver(proxy: &CountingProxy, system: &str, ttl: Duration) -> RedfishDriver {
    RedfishDriver::new(
        BmcCredentials {
            address: proxy.address(),
            port: None,
            username: Some(USER.into()),
            password: Some(PASSWORD.into()),
            verify_tls: true,
            ca_pem: None,
        },
        RedfishOptions {
            timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            poll_timeout: CONVERGE,
            system_id: Some(system.into()),
            system_cache_ttl: ttl,
            ..RedfishOptions::default()
        },
    )
    .expect("driver")
}

fn methods(requests: &[String]) -> Vec<&str> {
    requests
        .iter()
        .map(|r| r.split(' ').next().unwrap_or(""))
        .collect()
}

const PXE_ONCE: BootOverride = BootOverride {
    device: BootDevice::Pxe,
    once: true,
    mode: None,
};

/// "PXE boot now" exactly as the power job does it.
async fn pxe_boot_now(d: &RedfishDriver) -> PowerState {
    let was = d.power_state().await.unwrap();
    d.set_boot(PXE_ONCE).await.unwrap();
    let action = if was == PowerState::On {
        PowerAction::Reset
    } else {
        PowerAction::On
    };
    d.power(action).await.unwrap();
    was
}

#[tokio::test]
async fn pxe_boot_now_is_one_get_one_patch_one_post() {
    if sushy::skipped() {
        return;
    }
    let sushy = Sushy::start(&systems(), &[(USER, PASSWORD)]);
    let proxy = CountingProxy::start(&sushy.address()).await;
    let default_ttl = RedfishOptions::default().system_cache_ttl;

    for (system, initially) in [(OFF_SYSTEM, PowerState::Off), (ON_SYSTEM, PowerState::On)] {
        let d = driver(&proxy, system, default_ttl);
        // Discovery happens once per driver (drivers are kept per BMC).
        d.system_uri().await.unwrap();
        proxy.take();

        assert_eq!(pxe_boot_now(&d).await, initially);
        let sent = proxy.take();
        assert_eq!(
            methods(&sent),
            ["GET", "PATCH", "POST"],
            "{system}: {sent:?}"
        );
        let system_path = format!("/redfish/v1/Systems/{system}");
        assert_eq!(sent[0], format!("GET {system_path}"));
        assert_eq!(sent[1], format!("PATCH {system_path}"));
        assert!(
            sent[2].ends_with("/Actions/ComputerSystem.Reset"),
            "{sent:?}"
        );

        // The reset forgot the document: the next override reads again.
        d.set_boot(PXE_ONCE).await.unwrap();
        assert_eq!(methods(&proxy.take()), ["GET", "PATCH"], "{system}");

        // And the action did what it should: PXE once, running.
        let boot = d.boot_settings().await.unwrap();
        assert_eq!(boot.target.as_deref(), Some("Pxe"));
        if initially == PowerState::On {
            // ForceRestart: sushy shows Off at once, On again later.
            wait_for_state(&d, d.address(), PowerState::Off, CONVERGE)
                .await
                .ok();
        }
        wait_for_state(&d, d.address(), PowerState::On, CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("{system}: {e}"));
        // Polling never answers from the cache: one GET per poll.
        proxy.take();
        assert_eq!(d.power_state().await.unwrap(), PowerState::On);
        assert_eq!(d.power_state().await.unwrap(), PowerState::On);
        assert_eq!(methods(&proxy.take()), ["GET", "GET"]);
        d.close().await;
    }
}

/// "Power on, PXE once" (`set_boot_and_power_on`) with the system read
/// long ago, as when the enrolment or the poller read it: the PATCH and the
/// POST only, no read first, for a machine that is off and one that is on
/// (sushy takes On-while-on as a no-op, like most BMCs).
#[tokio::test]
async fn pxe_and_power_on_is_one_patch_one_post() {
    if sushy::skipped() {
        return;
    }
    let sushy = Sushy::start(&systems(), &[(USER, PASSWORD)]);
    let proxy = CountingProxy::start(&sushy.address()).await;
    let ttl = Duration::from_millis(200);
    for (system, initially) in [(OFF_SYSTEM, PowerState::Off), (ON_SYSTEM, PowerState::On)] {
        let d = driver(&proxy, system, ttl);
        d.system_uri().await.unwrap();
        assert_eq!(d.power_state().await.unwrap(), initially);
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        proxy.take();

        d.set_boot_and_power_on(PXE_ONCE).await.unwrap();
        let sent = proxy.take();
        assert_eq!(methods(&sent), ["PATCH", "POST"], "{system}: {sent:?}");
        assert_eq!(sent[0], format!("PATCH /redfish/v1/Systems/{system}"));
        assert!(
            sent[1].ends_with("/Actions/ComputerSystem.Reset"),
            "{sent:?}"
        );

        let boot = d.boot_settings().await.unwrap();
        assert_eq!(boot.target.as_deref(), Some("Pxe"), "{system}");
        wait_for_state(&d, d.address(), PowerState::On, CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("{system}: {e}"));
        d.close().await;
    }
}

#[tokio::test]
async fn a_stale_or_outdated_document_is_read_again() {
    if sushy::skipped() {
        return;
    }
    let sushy = Sushy::start(&systems(), &[(USER, PASSWORD)]);
    let proxy = CountingProxy::start(&sushy.address()).await;
    let ttl = Duration::from_millis(500);
    let d = driver(&proxy, STALE_SYSTEM, ttl);
    d.system_uri().await.unwrap();
    proxy.take();

    assert_eq!(d.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(methods(&proxy.take()), ["GET"]);
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    // Older than the freshness: read again before the PATCH.
    d.set_boot(PXE_ONCE).await.unwrap();
    assert_eq!(methods(&proxy.take()), ["GET", "PATCH"]);
    // Fresh, but its Boot predates the PATCH just sent: read again.
    d.set_boot(PXE_ONCE).await.unwrap();
    assert_eq!(methods(&proxy.take()), ["GET", "PATCH"]);
    // The power action may still use it: a boot override leaves
    // PowerState and Actions alone.
    d.power(PowerAction::On).await.unwrap();
    assert_eq!(methods(&proxy.take()), ["POST"]);
    wait_for_state(&d, d.address(), PowerState::On, CONVERGE)
        .await
        .unwrap();
    d.close().await;

    // With the cache off, every step reads the system first.
    let uncached = driver(&proxy, NO_CACHE_SYSTEM, Duration::ZERO);
    uncached.system_uri().await.unwrap();
    proxy.take();
    assert_eq!(pxe_boot_now(&uncached).await, PowerState::Off);
    assert_eq!(
        methods(&proxy.take()),
        ["GET", "GET", "PATCH", "GET", "POST"]
    );
    uncached.close().await;
}

/// Waiting for a power change reads a second after the acceptance and a
/// second after each answer, and stops at the first read that shows it:
/// nothing in the first second (sushy, like real BMCs, never applies a
/// change that fast; the old backoff read at 0.25 s and 0.75 s for
/// nothing), then about one read per second.
#[tokio::test]
async fn waiting_for_power_on_reads_once_a_second() {
    if sushy::skipped() {
        return;
    }
    let sushy = Sushy::start(&systems(), &[(USER, PASSWORD)]);
    let proxy = CountingProxy::start(&sushy.address()).await;
    let d = driver(
        &proxy,
        POLL_SYSTEM,
        RedfishOptions::default().system_cache_ttl,
    );
    d.system_uri().await.unwrap();
    d.power(PowerAction::On).await.unwrap();
    proxy.take();
    let accepted = std::time::Instant::now();
    wait_for_state(&d, d.address(), PowerState::On, CONVERGE)
        .await
        .unwrap();
    let waited = accepted.elapsed();
    let sent = proxy.take();
    assert!(sent.iter().all(|r| r.starts_with("GET ")), "{sent:?}");
    assert!(!sent.is_empty());
    // k reads take k seconds of pauses plus k answers: at most one read
    // per whole second waited (the old backoff made one or two more).
    assert!(
        sent.len() as u64 <= waited.as_secs(),
        "{} reads in {waited:?}: {sent:?}",
        sent.len()
    );
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    d.close().await;
}
