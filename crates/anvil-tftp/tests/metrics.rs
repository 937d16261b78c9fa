//! The service's metrics, read back through metrics-util's debugging
//! recorder (installed globally, hence a test binary of its own).

mod common;

use common::*;
use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use std::time::Duration;

type Metrics = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// One snapshot for all assertions: taking a snapshot resets the counters.
fn counter(snapshot: &Metrics, name: &str, label: Option<(&str, &str)>) -> u64 {
    snapshot
        .iter()
        .filter(|(key, _, _, _)| {
            let key = key.key();
            key.name() == name
                && label.is_none_or(|(k, v)| key.labels().any(|l| l.key() == k && l.value() == v))
        })
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_transfers_and_bytes_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("only recorder in this binary");

    let content = random_bytes(1000, 1);
    let server = Server::start(&[("f", &content)]).await;
    let addr = server.addr;
    tokio::task::spawn_blocking(move || {
        let client = udp_client();
        let oversize = [&rrq("f", &[])[..], &[b'x'; 2000][..]].concat();
        for junk in [
            &b"\x00"[..],
            b"\x00\x09",
            b"\x00\x01f",
            b"\x00\x04\x00\x01",
            &oversize,
        ] {
            client.send_to(junk, addr).expect("junk");
        }
        // A complete transfer, then a request for a missing file.
        client.send_to(&rrq("f", &[]), addr).expect("rrq");
        let mut buf = [0u8; 600];
        let (_, tid) = client.recv_from(&mut buf).expect("DATA 1");
        client.send_to(&ack(1), tid).expect("ack 1");
        client.recv_from(&mut buf).expect("DATA 2");
        client.send_to(&ack(2), tid).expect("ack 2");
        let other = udp_client();
        other.send_to(&rrq("nope", &[]), addr).expect("rrq");
        other.recv_from(&mut buf).expect("ERROR 1");
    })
    .await
    .expect("client");
    server.recorder.wait_for("nope", 1).await;
    server.recorder.wait_for("f", 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let snapshot = snapshotter.snapshot().into_vec();
    let dropped = "anvil_tftp_dropped_packets_total";
    for (reason, n) in [
        ("truncated", 1),
        ("unknown_opcode", 1),
        ("unterminated_string", 1),
        ("not_a_request", 1),
        ("oversize", 1),
    ] {
        assert_eq!(
            counter(&snapshot, dropped, Some(("reason", reason))),
            n,
            "{reason}"
        );
    }
    let transfers = "anvil_tftp_transfers_total";
    assert_eq!(
        counter(&snapshot, transfers, Some(("result", "completed"))),
        1
    );
    assert_eq!(
        counter(&snapshot, transfers, Some(("result", "not_found"))),
        1
    );
    // Two DATA packets: 4 + 512 and 4 + 488 bytes.
    assert_eq!(
        counter(&snapshot, "anvil_tftp_sent_bytes_total", None),
        1008
    );
    server.stop().await.expect("clean stop");
}
