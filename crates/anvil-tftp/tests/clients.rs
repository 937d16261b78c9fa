//! Real TFTP clients against the server on 127.0.0.1: curl, atftp and
//! tftp-hpa's tftp. Every fetched file is compared byte for byte (SHA-256).
//!
//! The clients come from Debian packages `curl`, `atftp` and `tftp-hpa`
//! (and the iPXE binaries from `ipxe`); a missing one fails the test with
//! the package to install.

mod common;

use anvil_tftp::proto::{Failure, Mode};
use anvil_tftp::{DirSource, MultiSource, TftpConfig, TransferOutcome};
use common::*;
use std::path::Path;
use std::sync::Arc;

struct Fixture {
    server: Server,
    files: Vec<(&'static str, Vec<u8>)>,
    out: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let files: Vec<(&'static str, Vec<u8>)> = SIZES
        .iter()
        .enumerate()
        .map(|(i, (name, len))| (*name, random_bytes(*len, i as u64)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
    Fixture {
        server: Server::start(&refs).await,
        files,
        out: tempfile::tempdir().expect("tempdir"),
    }
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(sha256(got), sha256(want), "{what}: sha256");
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn url(port: u16, file: &str) -> String {
    format!("tftp://127.0.0.1:{port}/{file}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_every_size_with_and_without_blksize() {
    let curl = require("curl", "curl");
    let f = fixture().await;
    for (name, content) in &f.files {
        for blksize in [None, Some("1468")] {
            let out = f.out.path().join(format!("{name}-{blksize:?}"));
            let mut a = args(&["-sS", "--max-time", "100", "-o"]);
            a.push(out.display().to_string());
            if let Some(b) = blksize {
                a.extend(args(&["--tftp-blksize", b]));
            }
            a.push(url(f.server.port(), name));
            let res = run_client(&curl, &a).await;
            assert!(res.status.success(), "curl {name} {blksize:?}: {res:?}");
            assert_same(
                &read_output(&out),
                content,
                &format!("curl {name} {blksize:?}"),
            );
        }
    }
    // curl sends tsize and (with --tftp-blksize) blksize, so every transfer
    // was negotiated; the 40 MiB file at 512 bytes wrapped block numbers.
    let big = f.server.recorder.wait_for("big", 2).await;
    assert!(big.iter().all(|r| r.outcome == TransferOutcome::Completed));
    let mut sizes: Vec<u16> = big.iter().map(|r| r.blksize).collect();
    sizes.sort();
    assert_eq!(sizes, vec![512, 1468]);
    f.server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_fetches_with_blksize_windowsize_and_tsize() {
    let atftp = require("atftp", "atftp");
    let f = fixture().await;
    for (name, content) in &f.files {
        let out = f.out.path().join(name);
        let mut a = args(&["--get", "-r", name, "-l"]);
        a.push(out.display().to_string());
        a.extend(args(&[
            "--option",
            "blksize 1468",
            "--option",
            "windowsize 16",
            "--option",
            "tsize 0",
            "127.0.0.1",
        ]));
        a.push(f.server.port().to_string());
        let res = run_client(&atftp, &a).await;
        assert!(res.status.success(), "atftp {name}: {res:?}");
        assert_same(&read_output(&out), content, &format!("atftp {name}"));
        let report = f.server.recorder.wait_for(name, 1).await;
        assert_eq!(report.len(), 1, "{name}: one report");
        let r = &report[0];
        assert_eq!(r.outcome, TransferOutcome::Completed, "{name}");
        assert_eq!((r.blksize, r.windowsize), (1468, 16), "{name}");
        assert_eq!(r.size, Some(content.len() as u64));
        assert_eq!(r.bytes, content.len() as u64);
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.peer.ip(), r.local_ip);
    }
    f.server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_asking_more_than_the_cap_gets_the_cap() {
    let atftp = require("atftp", "atftp");
    let content = random_bytes(300_000, 42);
    let server = Server::start(&[("f", &content)]).await;
    let out = tempfile::tempdir().expect("tempdir");
    let path = out.path().join("f");
    let mut a = args(&["--get", "-r", "f", "-l"]);
    a.push(path.display().to_string());
    a.extend(args(&[
        "--option",
        "blksize 65464",
        "--option",
        "windowsize 65535",
    ]));
    a.extend(args(&["127.0.0.1", &server.port().to_string()]));
    let res = run_client(&atftp, &a).await;
    assert!(res.status.success(), "{res:?}");
    assert_same(&read_output(&path), &content, "capped");
    let r = &server.recorder.wait_for("f", 1).await[0];
    assert_eq!((r.blksize, r.windowsize), (1468, 64));
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_fetches_in_binary_mode() {
    let tftp = require("tftp", "tftp-hpa");
    let f = fixture().await;
    for (name, content) in &f.files {
        let out = f.out.path().join(name);
        let mut a = args(&["127.0.0.1", &f.server.port().to_string()]);
        a.extend(args(&["-m", "binary", "-c", "get", name]));
        a.push(out.display().to_string());
        let res = run_client(&tftp, &a).await;
        assert!(res.status.success(), "tftp {name}: {res:?}");
        assert_same(&read_output(&out), content, &format!("tftp-hpa {name}"));
    }
    f.server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_netascii_round_trips_a_text_file() {
    let tftp = require("tftp", "tftp-hpa");
    // Lines of varying length, so CR LF pairs straddle block boundaries.
    let text: String = (0..2000)
        .map(|i| format!("line {i} {}\n", "x".repeat(i % 700)))
        .collect();
    let server = Server::start(&[("boot.cfg", text.as_bytes())]).await;
    let out = tempfile::tempdir().expect("tempdir");
    let path = out.path().join("boot.cfg");
    let mut a = args(&["127.0.0.1", &server.port().to_string()]);
    a.extend(args(&["-m", "netascii", "-c", "get", "boot.cfg"]));
    a.push(path.display().to_string());
    let res = run_client(&tftp, &a).await;
    assert!(res.status.success(), "{res:?}");
    assert_same(&read_output(&path), text.as_bytes(), "netascii");
    let r = &server.recorder.wait_for("boot.cfg", 1).await[0];
    assert_eq!(r.mode, Mode::Netascii);
    assert_eq!(r.bytes, (text.len() + 2000) as u64, "one CR added per line");
    server.stop().await.expect("clean stop");
}

/// atftp and tftp-hpa create the local file before asking, so "no file"
/// means: the client reports the error and the local file stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_files_and_traversal_are_refused_by_every_client() {
    let curl = require("curl", "curl");
    let atftp = require("atftp", "atftp");
    let tftp = require("tftp", "tftp-hpa");
    // A real file outside the served root, reachable by `..` from it.
    let outer = tempfile::tempdir().expect("tempdir");
    std::fs::write(outer.path().join("secret"), b"do not serve").expect("write");
    let served = outer.path().join("root");
    std::fs::create_dir(&served).expect("mkdir");
    std::fs::write(served.join("ok"), b"fine").expect("write");
    let source = Arc::new(DirSource::new(&served).expect("source"));
    let config = TftpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..TftpConfig::default()
    };
    let server = Server::start_source(config, tempfile::tempdir().expect("t"), source).await;
    let port = server.port().to_string();
    let out = tempfile::tempdir().expect("tempdir");

    let cases = [
        ("missing", TransferOutcome::NotFound, 68, "file not found"),
        (
            "../secret",
            TransferOutcome::AccessDenied,
            69,
            "access violation",
        ),
        (
            "../etc/passwd",
            TransferOutcome::AccessDenied,
            69,
            "access violation",
        ),
    ];
    for (i, (name, outcome, curl_code, message)) in cases.iter().enumerate() {
        let p = |tag: &str| out.path().join(format!("{tag}{i}"));
        let mut a = args(&["-sS", "--path-as-is", "-o"]);
        a.push(p("curl").display().to_string());
        a.push(url(server.port(), name));
        let res = run_client(&curl, &a).await;
        assert_eq!(res.status.code(), Some(*curl_code), "curl {name}: {res:?}");

        let mut a = args(&["--get", "-r", name, "-l"]);
        a.push(p("atftp").display().to_string());
        a.extend(args(&["127.0.0.1", &port]));
        let res = run_client(&atftp, &a).await;
        assert!(!res.status.success(), "atftp {name}: {res:?}");
        let said = String::from_utf8_lossy(&res.stderr).to_string()
            + &String::from_utf8_lossy(&res.stdout);
        assert!(said.contains(message), "atftp {name}: {said}");

        let mut a = args(&["127.0.0.1", &port, "-m", "binary", "-c", "get", name]);
        a.push(p("hpa").display().to_string());
        let res = run_client(&tftp, &a).await;
        let said = String::from_utf8_lossy(&res.stderr).to_string()
            + &String::from_utf8_lossy(&res.stdout);
        assert!(said.contains(message), "tftp-hpa {name}: {said}");

        for tag in ["curl", "atftp", "hpa"] {
            assert!(read_output(&p(tag)).is_empty(), "{tag} {name} got data");
        }
        let reports = server.recorder.wait_for(name, 3).await;
        assert_eq!(reports.len(), 3, "{name}");
        assert!(reports.iter().all(|r| r.outcome == *outcome), "{reports:?}");
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_requests_are_refused() {
    let atftp = require("atftp", "atftp");
    let tftp = require("tftp", "tftp-hpa");
    let curl = require("curl", "curl");
    let server = Server::start(&[("existing", b"keep me")]).await;
    let port = server.port().to_string();
    let local = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(local.path(), b"upload attempt").expect("write");
    let local = local.path().display().to_string();

    let res = run_client(
        &atftp,
        &args(&["--put", "-l", &local, "-r", "up1", "127.0.0.1", &port]),
    )
    .await;
    assert!(!res.status.success(), "atftp put: {res:?}");
    let res = run_client(
        &tftp,
        &args(&[
            "127.0.0.1",
            &port,
            "-m",
            "binary",
            "-c",
            "put",
            &local,
            "existing",
        ]),
    )
    .await;
    let said =
        String::from_utf8_lossy(&res.stderr).to_string() + &String::from_utf8_lossy(&res.stdout);
    assert!(said.contains("read-only"), "tftp-hpa put: {said}");
    let res = run_client(
        &curl,
        &args(&["-sS", "-T", &local, &url(server.port(), "up3")]),
    )
    .await;
    assert_eq!(res.status.code(), Some(69), "curl put: {res:?}");

    let mut names: Vec<_> = std::fs::read_dir(server.root.path())
        .expect("read root")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, vec!["existing"]);
    assert_eq!(
        std::fs::read(server.root.path().join("existing")).expect("read"),
        b"keep me"
    );
    for name in ["up1", "existing", "up3"] {
        let r = server.recorder.wait_for(name, 1).await;
        assert_eq!(r.len(), 1, "{name}");
        assert_eq!(r[0].outcome, TransferOutcome::WriteRefused);
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_debian_ipxe_binaries_through_a_multi_source() {
    let curl = require("curl", "curl");
    let ipxe = Path::new("/usr/lib/ipxe");
    assert!(
        ipxe.join("undionly.kpxe").is_file(),
        "/usr/lib/ipxe/undionly.kpxe missing: install the Debian package `ipxe`"
    );
    // The operator's directory overrides; the rest comes from the package,
    // whose ipxe.efi is a symlink into /boot.
    let own = tempfile::tempdir().expect("tempdir");
    std::fs::write(own.path().join("snponly.efi"), b"operator's build").expect("write");
    let mut packaged = DirSource::new(ipxe).expect("ipxe dir");
    if Path::new("/boot").is_dir() {
        packaged = packaged.allow_symlinks_into("/boot").expect("boot");
    }
    let source = MultiSource::new()
        .with(DirSource::new(own.path()).expect("own"))
        .with(packaged);
    let config = TftpConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..TftpConfig::default()
    };
    let server = Server::start_source(config, own, Arc::new(source)).await;
    let out = tempfile::tempdir().expect("tempdir");
    for (name, want) in [
        (
            "undionly.kpxe",
            std::fs::read(ipxe.join("undionly.kpxe")).expect("read"),
        ),
        (
            "/ipxe.efi",
            std::fs::read(ipxe.join("ipxe.efi")).expect("read"),
        ),
        ("snponly.efi", b"operator's build".to_vec()),
    ] {
        let path = out.path().join(name.trim_start_matches('/'));
        let mut a = args(&["-sS", "--tftp-blksize", "1468", "-o"]);
        a.push(path.display().to_string());
        a.push(url(server.port(), name.trim_start_matches('/')));
        let res = run_client(&curl, &a).await;
        assert!(res.status.success(), "{name}: {res:?}");
        assert_same(&read_output(&path), &want, name);
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_ipv6_loopback() {
    let curl = require("curl", "curl");
    let content = random_bytes(100_000, 6);
    let config = TftpConfig {
        listen: "[::1]:0".parse().expect("addr"),
        ..TftpConfig::default()
    };
    let server = Server::start_with(config, &[("v6", &content)]).await;
    let out = tempfile::tempdir().expect("tempdir");
    let path = out.path().join("v6");
    let mut a = args(&["-sS", "-o"]);
    a.push(path.display().to_string());
    a.push(format!("tftp://[::1]:{}/v6", server.port()));
    let res = run_client(&curl, &a).await;
    assert!(res.status.success(), "{res:?}");
    assert_same(&read_output(&path), &content, "ipv6");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_a_stalled_transfer() {
    let content = random_bytes(10_000, 7);
    let server = Server::start(&[("f", &content)]).await;
    let addr = server.addr;
    let client = tokio::task::spawn_blocking(move || {
        let sock = udp_client();
        sock.send_to(&rrq("f", &[]), addr).expect("send");
        let mut buf = [0u8; 600];
        let (n, _) = sock.recv_from(&mut buf).expect("DATA 1");
        assert_eq!(&buf[..4], &[0, 3, 0, 1], "{:?}", &buf[..n]);
        // Never ACK: wait for the shutdown's ERROR (retransmissions of
        // DATA 1 may come first).
        loop {
            let (n, _) = sock.recv_from(&mut buf).expect("ERROR on shutdown");
            if let Some(err) = as_error(&buf[..n]) {
                return err;
            }
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let recorder = Arc::clone(&server.recorder);
    server.stop().await.expect("clean stop");
    let (code, message) = client.await.expect("client");
    assert_eq!(code, 0);
    assert!(message.contains("shutting down"), "{message}");
    let r = recorder.all();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].outcome, TransferOutcome::Failed(Failure::Cancelled));
}
