//! Behaviour on the wire that real clients cannot be made to show, with a
//! hand-written UDP client on 127.0.0.0/8: loss, foreign TIDs, the
//! concurrency cap, duplicate requests and the reply address.

mod common;

use anvil_tftp::{TftpConfig, TransferOutcome};
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// Short timeouts so that loss recovery takes milliseconds.
fn fast_config() -> TftpConfig {
    TftpConfig {
        timeout_ms: 20,
        retries: 20,
        ..TftpConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seventh_data_packet_lost_windowed_and_lock_step() {
    let big = random_bytes(3 * 1024 * 1024 + 7, 1);
    let small = random_bytes(100 * 512, 2);
    let server = Server::start_with(fast_config(), &[("big", &big), ("small", &small)]).await;
    let addr = server.addr;

    let (got, stats) = tokio::task::spawn_blocking(move || {
        lossy_fetch(addr, "big", 1468, 16, 7, Duration::from_millis(20))
    })
    .await
    .expect("client");
    assert_eq!(sha256(&got), sha256(&big), "windowed: {stats:?}");
    assert!(stats.dropped > 200, "{stats:?}");

    let (got, stats) = tokio::task::spawn_blocking(move || {
        lossy_fetch(addr, "small", 512, 1, 7, Duration::from_millis(20))
    })
    .await
    .expect("client");
    assert_eq!(sha256(&got), sha256(&small), "lock-step: {stats:?}");
    assert!(stats.dropped >= 14, "{stats:?}");

    for r in server.recorder.all() {
        assert_eq!(r.outcome, TransferOutcome::Completed, "{r:?}");
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_tid_gets_error_5_and_the_transfer_continues() {
    let content = random_bytes(1300, 3);
    let server = Server::start(&[("f", &content)]).await;
    let addr = server.addr;
    let got = tokio::task::spawn_blocking(move || {
        let client = udp_client();
        let stranger = udp_client();
        client.send_to(&rrq("f", &[]), addr).expect("rrq");
        let mut buf = [0u8; 600];
        let mut got = Vec::new();
        let (n, tid) = client.recv_from(&mut buf).expect("DATA 1");
        assert_eq!(&buf[..4], &[0, 3, 0, 1]);
        got.extend_from_slice(&buf[4..n]);
        // Someone else writes to the transfer's port.
        stranger.send_to(&ack(1), tid).expect("stranger");
        let (n, from) = stranger.recv_from(&mut buf).expect("ERROR 5");
        assert_eq!(from, tid);
        assert_eq!(as_error(&buf[..n]).map(|e| e.0), Some(5));
        // The real client carries on.
        let mut block = 1u16;
        loop {
            client.send_to(&ack(block), tid).expect("ack");
            let (n, from) = client.recv_from(&mut buf).expect("DATA");
            assert_eq!(from, tid);
            block += 1;
            assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), block);
            got.extend_from_slice(&buf[4..n]);
            if n - 4 < 512 {
                client.send_to(&ack(block), tid).expect("final ack");
                return got;
            }
        }
    })
    .await
    .expect("client");
    assert_eq!(got, content);
    let r = server.recorder.wait_for("f", 1).await;
    assert_eq!(r[0].outcome, TransferOutcome::Completed);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_transfers_are_told_busy() {
    let content = random_bytes(2000, 4);
    let config = TftpConfig {
        max_transfers: 1,
        ..TftpConfig::default()
    };
    let server = Server::start_with(config, &[("f", &content)]).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let first = udp_client();
        first.send_to(&rrq("f", &[]), addr).expect("rrq 1");
        let mut buf = [0u8; 600];
        let (_, tid) = first.recv_from(&mut buf).expect("DATA 1");

        let second = udp_client();
        second.send_to(&rrq("f", &[]), addr).expect("rrq 2");
        let (n, _) = second.recv_from(&mut buf).expect("busy");
        let (code, message) = as_error(&buf[..n]).expect("an ERROR");
        assert_eq!(code, 0);
        assert!(message.contains("busy"), "{message}");

        // Finish the first transfer; then the second client gets served.
        for block in 1..=4u16 {
            first.send_to(&ack(block), tid).expect("ack");
            if block < 4 {
                first.recv_from(&mut buf).expect("DATA");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        second.send_to(&rrq("f", &[]), addr).expect("rrq 2 again");
        let (n, _) = second.recv_from(&mut buf).expect("DATA 1");
        assert_eq!(&buf[..4], &[0, 3, 0, 1], "{:?}", as_error(&buf[..n]));
    })
    .await
    .expect("client");
    let reports = server.recorder.wait_for("f", 2).await;
    assert!(reports.iter().any(|r| r.outcome == TransferOutcome::Busy));
    assert!(
        reports
            .iter()
            .any(|r| r.outcome == TransferOutcome::Completed)
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_does_not_start_a_second_transfer() {
    let content = random_bytes(600, 5);
    let server = Server::start(&[("f", &content)]).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let client = udp_client();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        client.send_to(&rrq("f", &[]), addr).expect("rrq");
        client.send_to(&rrq("f", &[]), addr).expect("rrq again");
        let mut buf = [0u8; 600];
        let (_, tid) = client.recv_from(&mut buf).expect("DATA 1");
        client.send_to(&ack(1), tid).expect("ack 1");
        let (n, from) = client.recv_from(&mut buf).expect("DATA 2");
        assert_eq!((from, n), (tid, 4 + 88));
        client.send_to(&ack(2), tid).expect("ack 2");
        // Nothing from any other TID.
        match client.recv_from(&mut buf) {
            Err(_) => {}
            Ok((n, from)) => panic!("unexpected {:?} from {from}", &buf[..n]),
        }
    })
    .await
    .expect("client");
    let reports = server.recorder.wait_for("f", 1).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, TransferOutcome::Completed);
    server.stop().await.expect("clean stop");
}

/// Listening on 0.0.0.0, the reply must come from whichever address the
/// client sent to (both 127.0.0.1 and 127.0.0.2 are this host), or the
/// client would not recognise it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_come_from_the_address_the_client_used() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let content = random_bytes(100, 6);
        let config = TftpConfig {
            listen: listen.parse().expect("addr"),
            ..TftpConfig::default()
        };
        let server = Server::start_with(config, &[("f", &content)]).await;
        let port = server.port();
        for dst in ["127.0.0.1", "127.0.0.2"] {
            let to = SocketAddr::new(dst.parse().expect("ip"), port);
            let content = content.clone();
            let from = tokio::task::spawn_blocking(move || {
                let client = udp_client();
                client.send_to(&rrq("f", &[]), to).expect("rrq");
                let mut buf = [0u8; 600];
                let (n, tid) = client.recv_from(&mut buf).expect("DATA 1");
                assert_eq!(&buf[4..n], &content[..]);
                client.send_to(&ack(1), tid).expect("ack");
                tid
            })
            .await
            .expect("client");
            assert_eq!(from.ip(), to.ip(), "listen {listen}, sent to {dst}");
            assert_ne!(from.port(), port, "a new TID, not the listening port");
        }
        let reports = server.recorder.wait_for("f", 2).await;
        let mut locals: Vec<String> = reports.iter().map(|r| r.local_ip.to_string()).collect();
        locals.sort();
        assert_eq!(locals, vec!["127.0.0.1", "127.0.0.2"], "listen {listen}");
        server.stop().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_dropped_and_the_server_keeps_serving() {
    let content = random_bytes(700, 8);
    let server = Server::start(&[("f", &content)]).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let client = udp_client();
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let oversize = [&rrq("f", &[])[..], &[b'x'; 2000][..]].concat();
        for junk in [
            &b""[..],
            b"\x00",
            b"\x00\x09abc",
            b"\x00\x01f",
            b"\x00\x01f\0octet",
            b"\x00\x01f\0binary\0",
            b"\x00\x04\x00\x01",
            b"\xff\xff\xff\xff",
            &oversize,
        ] {
            client.send_to(junk, addr).expect("send junk");
        }
        let mut buf = [0u8; 2048];
        assert!(client.recv_from(&mut buf).is_err(), "junk gets no answer");
        client
            .send_to(&rrq("/f", &[("BlkSize", "1000")]), addr)
            .expect("rrq");
        let (n, tid) = client.recv_from(&mut buf).expect("OACK");
        assert_eq!(&buf[..n], b"\x00\x06BlkSize\x001000\0");
        client.send_to(&ack(0), tid).expect("ack 0");
        let (n, _) = client.recv_from(&mut buf).expect("DATA 1");
        assert!(buf[4..n] == content[..], "DATA 1 content ({n} bytes)");
        client.send_to(&ack(1), tid).expect("ack 1");
    })
    .await
    .expect("client");
    let r = server.recorder.wait_for("/f", 1).await;
    assert_eq!(r[0].outcome, TransferOutcome::Completed);
    assert_eq!(server.recorder.all().len(), 1, "junk produced no transfers");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_times_out_with_an_error() {
    let config = TftpConfig {
        timeout_ms: 20,
        retries: 3,
        ..TftpConfig::default()
    };
    let server = Server::start_with(config, &[("f", &[1u8; 100][..])]).await;
    let addr = server.addr;
    let (datas, error) = tokio::task::spawn_blocking(move || {
        let client: UdpSocket = udp_client();
        client.send_to(&rrq("f", &[]), addr).expect("rrq");
        let mut buf = [0u8; 600];
        let mut datas = 0;
        loop {
            let (n, _) = client.recv_from(&mut buf).expect("packet");
            match as_error(&buf[..n]) {
                Some(err) => return (datas, err),
                None => datas += 1,
            }
        }
    })
    .await
    .expect("client");
    assert_eq!(datas, 4, "DATA 1 and three retransmissions");
    assert_eq!(error.0, 0);
    let r = server.recorder.wait_for("f", 1).await;
    assert_eq!(r[0].outcome.label(), "timed_out");
    server.stop().await.expect("clean stop");
}
