//! Shared helpers for the integration tests: a server on 127.0.0.1:0 over a
//! temporary directory, a recording observer, client-binary checks and a
//! hand-written UDP client.
#![allow(dead_code)] // each test binary uses a different subset

use anvil_tftp::{
    DirSource, FileSource, TftpConfig, TftpError, TftpObserver, TftpServer, TransferReport,
};
use rand::{RngCore, SeedableRng, rngs::StdRng};
use sha2::{Digest, Sha256};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The sizes the brief asks for: empty, around one 512-byte block, three
/// 1468-byte blocks exactly, and ~40 MiB (block numbers wrap at 512 bytes).
pub const SIZES: &[(&str, usize)] = &[
    ("empty", 0),
    ("f511", 511),
    ("f512", 512),
    ("f513", 513),
    ("f4404", 1468 * 3),
    ("big", 40 * 1024 * 1024 + 123),
];

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Fails — never skips — when a client is missing: the project's test
/// script installs them, so a missing one is a broken setup.
pub fn require(binary: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{binary}` not found on PATH: install the Debian package `{package}` \
             (apt-get install -y {package}); scripts/test.sh does this"
        )
    })
}

#[derive(Default)]
pub struct Recorder {
    reports: Mutex<Vec<TransferReport>>,
}

impl TftpObserver for Recorder {
    fn transfer_finished(&self, report: &TransferReport) {
        self.reports
            .lock()
            .expect("recorder lock")
            .push(report.clone());
    }
}

impl Recorder {
    pub fn all(&self) -> Vec<TransferReport> {
        self.reports.lock().expect("recorder lock").clone()
    }

    /// Waits (up to 10 s) for `n` reports about `file`.
    pub async fn wait_for(&self, file: &str, n: usize) -> Vec<TransferReport> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<_> = self.all().into_iter().filter(|r| r.file == file).collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    pub recorder: Arc<Recorder>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), TftpError>>,
}

impl Server {
    /// A server on 127.0.0.1:0 over a fresh directory holding `files`.
    pub async fn start(files: &[(&str, &[u8])]) -> Server {
        Server::start_with(TftpConfig::default(), files).await
    }

    /// Like `start`, with `config` (its `listen` is used if it is not the
    /// default 0.0.0.0:69, else 127.0.0.1:0).
    pub async fn start_with(mut config: TftpConfig, files: &[(&str, &[u8])]) -> Server {
        let root = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            let path = root.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(path, content).expect("write fixture");
        }
        let source = DirSource::new(root.path()).expect("source");
        Server::start_source(config_listen(&mut config), root, Arc::new(source)).await
    }

    pub async fn start_source(
        config: TftpConfig,
        root: tempfile::TempDir,
        source: Arc<dyn FileSource>,
    ) -> Server {
        let recorder = Arc::new(Recorder::default());
        let server =
            TftpServer::bind(config, source, Arc::clone(&recorder) as _).expect("bind server");
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            root,
            recorder,
            stop: Some(stop),
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), TftpError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops within 10 s")
            .expect("server task")
    }
}

fn config_listen(config: &mut TftpConfig) -> TftpConfig {
    if config.listen == TftpConfig::default().listen {
        config.listen = "127.0.0.1:0".parse().expect("addr");
    }
    config.clone()
}

/// Runs a client command (blocking, on the blocking pool) with a time limit.
pub async fn run_client(program: &Path, args: &[String]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} did not finish in 120 s", program.display()))
        .expect("run client")
}

/// Reads the client's output file; missing counts as empty.
pub fn read_output(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// A hand-written client, for behaviour real clients cannot be made to show.

pub fn rrq(file: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![0, 1];
    for part in [file, "octet"] {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

pub fn ack(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, 4, b[0], b[1]]
}

/// Parses an ERROR packet into (code, message).
pub fn as_error(pkt: &[u8]) -> Option<(u16, String)> {
    match pkt {
        [0, 5, hi, lo, msg @ ..] => Some((
            u16::from_be_bytes([*hi, *lo]),
            String::from_utf8_lossy(msg.split(|b| *b == 0).next().unwrap_or_default()).into_owned(),
        )),
        _ => None,
    }
}

pub fn udp_client() -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sock
}

/// Statistics of one [`lossy_fetch`].
#[derive(Debug, Default)]
pub struct LossyStats {
    pub data_received: usize,
    pub dropped: usize,
    pub timeouts: usize,
}

/// Fetches `file` like an RFC 7440 client (ACK at each window's end, ACK of
/// the last in-order block on a gap, re-ACK on timeout) that pretends every
/// `drop_every`-th DATA datagram it receives was lost.
pub fn lossy_fetch(
    server: SocketAddr,
    file: &str,
    blksize: usize,
    windowsize: u16,
    drop_every: usize,
    client_timeout: Duration,
) -> (Vec<u8>, LossyStats) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(client_timeout))
        .expect("timeout");
    let blk = blksize.to_string();
    let win = windowsize.to_string();
    sock.send_to(
        &rrq(file, &[("blksize", &blk), ("windowsize", &win)]),
        server,
    )
    .expect("send rrq");
    let mut stats = LossyStats::default();
    let mut out = Vec::new();
    let mut tid: Option<SocketAddr> = None;
    let mut expected: u64 = 1;
    let mut since_ack = 0u16;
    let mut gap_acked = false;
    let mut buf = vec![0u8; 70_000];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "lossy fetch did not finish");
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                stats.timeouts += 1;
                assert!(stats.timeouts < 1000, "too many client timeouts");
                if let Some(tid) = tid {
                    sock.send_to(&ack(((expected - 1) & 0xffff) as u16), tid)
                        .expect("send ack");
                }
                continue;
            }
            Err(e) => panic!("recv: {e}"),
        };
        let tid = *tid.get_or_insert(from);
        assert_eq!(from, tid, "packet from a second server TID");
        let pkt = &buf[..n];
        match pkt {
            [0, 6, ..] => {
                sock.send_to(&ack(0), tid).expect("ack oack");
            }
            [0, 3, hi, lo, data @ ..] => {
                stats.data_received += 1;
                if stats.data_received % drop_every == 0 {
                    stats.dropped += 1;
                    continue;
                }
                let block = u16::from_be_bytes([*hi, *lo]);
                let ahead = block.wrapping_sub((expected & 0xffff) as u16);
                if ahead == 0 {
                    out.extend_from_slice(data);
                    expected += 1;
                    since_ack += 1;
                    gap_acked = false;
                    if data.len() < blksize {
                        sock.send_to(&ack(block), tid).expect("final ack");
                        return (out, stats);
                    }
                    if since_ack == windowsize {
                        since_ack = 0;
                        sock.send_to(&ack(block), tid).expect("ack");
                    }
                } else if ahead < 0x8000 {
                    if !gap_acked {
                        gap_acked = true;
                        since_ack = 0;
                        sock.send_to(&ack(((expected - 1) & 0xffff) as u16), tid)
                            .expect("gap ack");
                    }
                } else if ahead == 0xffff {
                    since_ack = 0;
                    sock.send_to(&ack(block), tid).expect("re-ack");
                }
            }
            other => panic!("unexpected packet {:?}", as_error(other)),
        }
    }
}
