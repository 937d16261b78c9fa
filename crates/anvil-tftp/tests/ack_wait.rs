//! How the service waits for ACKs: it polls the socket for a short while
//! after each window (when CPUs are spare, as on this 2-CPU test runtime)
//! before it sleeps. These clients answer slowly or not at all, to show
//! that this changes nothing that arrives: a slow client is soon no longer
//! polled for, a withheld ACK is recovered by the retransmission timer with
//! the same bytes, while the server polls and while it does not.

mod common;

use anvil_tftp::{TftpConfig, TransferOutcome};
use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// What the client does at the end of a window.
#[derive(Clone, Copy)]
enum AtWindowEnd {
    Ack,
    /// Sleep, then ACK: far longer than the server polls.
    SleepThenAck(Duration),
    /// Send nothing (once per window): the server must resend the window
    /// after its timeout.
    Withhold,
}

/// Fetches `file` with RFC 7440 windows, asking `policy` what to do at the
/// end of each window (numbered from 1); a window is withheld at most once.
/// Returns the bytes and how many DATA packets arrived out of order.
fn fetch(
    addr: SocketAddr,
    file: &str,
    blksize: usize,
    window: u16,
    policy: impl Fn(u64) -> AtWindowEnd,
) -> (Vec<u8>, usize) {
    let sock = udp_client();
    let (blk, win) = (blksize.to_string(), window.to_string());
    sock.send_to(&rrq(file, &[("blksize", &blk), ("windowsize", &win)]), addr)
        .expect("rrq");
    let mut buf = vec![0u8; blksize + 4];
    let (n, tid) = sock.recv_from(&mut buf).expect("OACK");
    assert_eq!(&buf[..2], &[0, 6], "OACK expected, got {:?}", &buf[..n]);
    sock.send_to(&ack(0), tid).expect("ack 0");
    let window = u64::from(window);
    let mut out = Vec::new();
    let mut expected: u64 = 1;
    let mut out_of_order = 0;
    let mut withheld = std::collections::HashSet::new();
    loop {
        let (n, from) = sock.recv_from(&mut buf).expect("DATA");
        assert_eq!(from, tid);
        assert_eq!(
            &buf[..2],
            &[0, 3],
            "DATA expected: {:?}",
            as_error(&buf[..n])
        );
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if block != (expected & 0xffff) as u16 {
            out_of_order += 1;
            continue;
        }
        let data = &buf[4..n];
        out.extend_from_slice(data);
        let last = data.len() < blksize;
        let window_no = (expected - 1) / window + 1;
        let window_end = expected.is_multiple_of(window);
        expected += 1;
        if !(last || window_end) {
            continue;
        }
        match policy(window_no) {
            AtWindowEnd::Withhold if withheld.insert(window_no) => {
                // As if the ACK were lost: expect the whole window again.
                let first = (window_no - 1) * window + 1;
                expected = first;
                out.truncate((first - 1) as usize * blksize);
                continue;
            }
            AtWindowEnd::SleepThenAck(pause) => std::thread::sleep(pause),
            _ => {}
        }
        sock.send_to(&ack(block), tid).expect("ack");
        if last {
            return (out, out_of_order);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_slowly_gets_the_whole_file() {
    let content = random_bytes(40 * 4 * 512 + 100, 21);
    let server = Server::start(&[("f", &content)]).await;
    let addr = server.addr;
    let (got, repeats) = tokio::task::spawn_blocking(move || {
        fetch(addr, "f", 512, 4, |_| {
            AtWindowEnd::SleepThenAck(Duration::from_millis(2))
        })
    })
    .await
    .expect("client");
    assert_eq!(
        repeats, 0,
        "nothing out of order for a slow but steady client"
    );
    assert!(got == content, "bytes differ");
    let r = server.recorder.wait_for("f", 1).await;
    assert_eq!(r[0].outcome, TransferOutcome::Completed);
    assert_eq!(r[0].bytes, content.len() as u64);
    server.stop().await.expect("clean stop");
}

/// Windows 2 and 5 are not acknowledged the first time: the server, which
/// polled for the ACK in vain and then slept, resends the unacknowledged
/// window when its timer fires, and carries on. Every size of last window: a full one, a short one, the empty block;
/// with ACK polling and without (`ack_polling = false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_ack_gets_the_window_again_and_the_transfer_completes() {
    let sizes = [
        ("full", 6 * 8 * 512 - 10),
        ("short", 5 * 8 * 512 + 100),
        ("empty-last", 6 * 8 * 512),
    ];
    let files: Vec<(&str, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(name, len))| (name, random_bytes(len, 30 + i as u64)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, &c[..])).collect();
    for ack_polling in [true, false] {
        let config = TftpConfig {
            timeout_ms: 20,
            retries: 5,
            ack_polling,
            ..TftpConfig::default()
        };
        let server = Server::start_with(config, &refs).await;
        let addr = server.addr;
        for (name, content) in &files {
            let file = name.to_string();
            let (got, repeats) = tokio::task::spawn_blocking(move || {
                fetch(addr, &file, 512, 8, |window| {
                    if window == 2 || window == 5 {
                        AtWindowEnd::Withhold
                    } else {
                        AtWindowEnd::Ack
                    }
                })
            })
            .await
            .expect("client");
            assert!(
                got == *content,
                "{name}, polling {ack_polling}: bytes differ"
            );
            assert_eq!(repeats, 0, "{name}: the window came again from its start");
        }
        for (name, content) in &files {
            let r = server.recorder.wait_for(name, 1).await;
            assert_eq!(r[0].outcome, TransferOutcome::Completed, "{name}");
            assert_eq!(r[0].bytes, content.len() as u64, "{name}");
        }
        server.stop().await.expect("clean stop");
    }
}
