//! The real `anvil-agent` binary, run as a child process against a small
//! in-process HTTP server that speaks the agent protocol
//! (docs/agent-protocol.md) on loopback: it registers, gets a
//! `write_image` step, downloads the zero map and the NonZeroOnly image
//! stream with its per-boot token, writes the image onto a regular file
//! standing in for the disk (found by serial in a sysfs-shaped fixture
//! tree), reports started / progress / succeeded with the documented
//! shapes, and follows the final `reboot` action (which, not being PID 1,
//! it only announces).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "per-boot-token-for-the-test";
const STEP_ID: &str = "9a4c0000-0000-4000-8000-000000000001";

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A virtio disk `vda` with a serial, as sysfs shows it, and `dev/vda` a
/// file of `bytes` filled with the previous tenant's 0xee.
fn fixture(root: &Path, bytes: u64) {
    let dev = root.join("sys/devices/pci0000:00/0000:00:05.0/virtio5/block/vda");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("size"), format!("{}\n", bytes / 512)).unwrap();
    std::fs::write(dev.join("serial"), "DEPLOY-1\n").unwrap();
    std::os::unix::fs::symlink("../../../virtio5", dev.join("device")).unwrap();
    std::fs::create_dir_all(root.join("sys/block")).unwrap();
    std::os::unix::fs::symlink(
        "../devices/pci0000:00/0000:00:05.0/virtio5/block/vda",
        root.join("sys/block/vda"),
    )
    .unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::write(root.join("dev/vda"), vec![0xeeu8; bytes as usize]).unwrap();
}

struct Protocol {
    /// Every request: (method, path, authorization, body).
    calls: Vec<(String, String, String, Value)>,
    step_done: bool,
    image_gets: usize,
}

fn read_request(s: &mut std::net::TcpStream) -> Option<(String, String, String, Vec<u8>)> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let (mut len, mut auth) = (0usize, String::new());
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
        if lower.starts_with("authorization:") {
            auth = h["authorization:".len()..].trim().to_string();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, auth, body))
}

fn respond(s: &mut std::net::TcpStream, status: &str, ctype: &str, body: &[u8]) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(body);
}

#[test]
fn the_agent_binary_writes_an_image_step_onto_a_file_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk_bytes = 32 * MIB;
    fixture(dir.path(), disk_bytes);

    // An 8 MiB image with a 3 MiB zero range: 5 MiB on the wire.
    let raw_len = 8 * MIB;
    let mut raw = noise(raw_len as usize, 11);
    raw[(2 * MIB) as usize..(5 * MIB) as usize].fill(0);
    let sha = hex(&Sha256::digest(&raw));
    let mut zeromap = b"ANVZMAP1".to_vec();
    for v in [64 * 1024u64, raw_len, 1, 2 * MIB, 3 * MIB] {
        zeromap.extend_from_slice(&v.to_le_bytes());
    }
    let mut stream = raw[..(2 * MIB) as usize].to_vec();
    stream.extend_from_slice(&raw[(5 * MIB) as usize..]);
    let mut corrupt = stream.clone();
    corrupt[4242] ^= 0x10;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(Protocol {
        calls: Vec::new(),
        step_done: false,
        image_gets: 0,
    }));
    let step = json!({"step": {
        "id": STEP_ID, "index": 1, "kind": "write_image", "status": "pending", "last_seq": 0,
        "params": {
            "disk": {"name": "vda", "size_bytes": disk_bytes, "serial": "DEPLOY-1"},
            "url": format!("{base}/api/v1/agent/images/{sha}"),
            "zeromap_url": format!("{base}/api/v1/agent/images/{sha}/zeromap"),
            "sha256": sha, "raw_size": raw_len,
        }
    }});
    {
        let state = state.clone();
        let sha = sha.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { break };
                let state = state.clone();
                let (step, zeromap, stream, corrupt, sha) = (
                    step.clone(),
                    zeromap.clone(),
                    stream.clone(),
                    corrupt.clone(),
                    sha.clone(),
                );
                std::thread::spawn(move || {
                    let Some((method, path, auth, body)) = read_request(&mut s) else {
                        return;
                    };
                    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let mut st = state.lock().unwrap();
                    st.calls.push((
                        method.clone(),
                        path.clone(),
                        auth.clone(),
                        json_body.clone(),
                    ));
                    if auth != format!("Bearer {TOKEN}") {
                        drop(st);
                        return respond(
                            &mut s,
                            "401 Unauthorized",
                            "application/problem+json",
                            br#"{"type":"about:blank","title":"Unauthorized"}"#,
                        );
                    }
                    let ok = |s: &mut std::net::TcpStream, v: Value| {
                        respond(s, "200 OK", "application/json", v.to_string().as_bytes())
                    };
                    match (method.as_str(), path.as_str()) {
                        ("POST", "/api/v1/agent/register") => ok(&mut s, json!({
                            "machine_id": "0b0e0000-0000-4000-8000-000000000001", "hostname": "node-01",
                            "run_id": "5d1f0000-0000-4000-8000-000000000001", "run_number": 3,
                            "purpose": "deployment", "heartbeat_secs": 1})),
                        ("POST", "/api/v1/agent/next") => {
                            if st.step_done {
                                ok(&mut s, json!({"action": "reboot", "run_state": "succeeded"}))
                            } else {
                                ok(&mut s, step)
                            }
                        }
                        ("POST", "/api/v1/agent/heartbeat") => {
                            ok(&mut s, json!({"run_state": "running", "heartbeat_secs": 1}))
                        }
                        ("POST", p) if p == format!("/api/v1/agent/steps/{STEP_ID}/report") => {
                            let status = json_body["status"].as_str().unwrap_or("").to_string();
                            if status == "succeeded" || status == "failed" {
                                st.step_done = true;
                            }
                            let run_state = if st.step_done { "succeeded" } else { "running" };
                            ok(&mut s, json!({"step_id": STEP_ID, "seq": json_body["seq"],
                                              "status": status, "run_state": run_state}))
                        }
                        ("GET", p) if p == format!("/api/v1/agent/images/{sha}/zeromap") => {
                            drop(st);
                            respond(&mut s, "200 OK", "application/octet-stream", &zeromap)
                        }
                        ("GET", p) if p == format!("/api/v1/agent/images/{sha}") => {
                            st.image_gets += 1;
                            let first = st.image_gets == 1;
                            drop(st);
                            // The first stream has a flipped bit; both are
                            // sent slowly enough (about 1.5 s) for progress
                            // reports to go out while they are written.
                            let body = if first { &corrupt } else { &stream };
                            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                            for chunk in body.chunks(512 * 1024) {
                                if s.write_all(chunk).is_err() {
                                    return;
                                }
                                std::thread::sleep(Duration::from_millis(150));
                            }
                        }
                        _ => respond(&mut s, "404 Not Found", "application/problem+json", br#"{"type":"https://anvil.dev/problems/not-found","title":"Not found"}"#),
                    }
                });
            }
        });
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_anvil-agent"))
        .env(
            "ANVIL_AGENT_CMDLINE",
            format!(
                "console=ttyS0 anvil.url={base} anvil.mac=52:54:00:12:34:56 anvil.token={TOKEN}"
            ),
        )
        .env("ANVIL_AGENT_ROOT", dir.path())
        .env("ANVIL_AGENT_NO_NET", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The agent ends by itself (reboot refused outside PID 1); a hung one
    // is killed (by its PID) after a minute.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            // SAFETY: kill(2) of the child this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    let _ = tx.send(());
    assert!(status.success(), "agent exited {status}; console:\n{out}");
    assert!(
        out.contains("anvil-agent: run succeeded: rebooting"),
        "{out}"
    );
    assert!(
        out.contains("not PID 1: not rebooting this system"),
        "{out}"
    );

    // The disk holds the image, zero range included, and nothing past it
    // was touched.
    let disk = std::fs::read(dir.path().join("dev/vda")).unwrap();
    assert_eq!(&disk[..raw.len()], &raw[..]);
    assert!(disk[raw.len()..].iter().all(|&b| b == 0xee));

    let st = state.lock().unwrap();
    assert!(
        st.calls.iter().all(|c| c.2 == format!("Bearer {TOKEN}")),
        "every call carries the token"
    );
    assert_eq!(st.image_gets, 2, "one retry after the corrupt stream");
    let reports: Vec<&Value> = st
        .calls
        .iter()
        .filter(|c| c.1.ends_with("/report"))
        .map(|c| &c.3)
        .collect();
    // seq 1, 2, 3, … without gaps; started first, succeeded last.
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "{reports:?}");
    }
    assert_eq!(reports[0]["status"], "started");
    let last = reports.last().unwrap();
    assert_eq!(last["status"], "succeeded", "{last}");
    let result = &last["result"];
    assert_eq!(result["sha256"], sha);
    assert_eq!(result["bytes_written"], 5 * MIB);
    assert_eq!(result["bytes_skipped"], 3 * MIB);
    assert_eq!(result["attempts"], 2);
    assert_eq!(result["zero_fill"], "PunchHole");
    assert!(result["elapsed_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(result["disk"], "vda");
    let progress: Vec<&&Value> = reports
        .iter()
        .filter(|r| r["status"] == "progress")
        .collect();
    assert!(!progress.is_empty(), "no progress report: {reports:?}");
    for p in &progress {
        let msg = p["message"].as_str().unwrap();
        assert_eq!(p["progress"]["total"], raw_len, "{p}");
        assert!(p["progress"]["done"].as_u64().unwrap() <= raw_len);
        let shaped = msg.starts_with("attempt ")
            && ((msg.contains(" MiB written, ")
                && msg.contains(" MiB zeroed, ")
                && msg.ends_with(" MB/s"))
                || msg.contains(" failed: sha256 mismatch"));
        assert!(shaped, "progress message {msg:?}");
    }
    let order: Vec<&str> = st
        .calls
        .iter()
        .map(|c| c.1.as_str())
        .filter(|p| !p.contains("/images/") && !p.ends_with("/heartbeat"))
        .collect();
    assert_eq!(order.first(), Some(&"/api/v1/agent/register"));
    assert_eq!(order.last(), Some(&"/api/v1/agent/next"));
}
