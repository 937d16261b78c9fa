//! The NetBox benchmark of issue #5 (not a timed test: `#[ignore]`, run by
//! hand, figures in docs/benchmarks.md):
//!
//! ```text
//! eval "$(scripts/netbox/setup.sh)"
//! cargo test --release -p anvil --test netbox_bench -- --ignored --nocapture
//! ```
//!
//! 1,000 devices (two interfaces with MAC objects, a BMC with `oob_ip`, a
//! primary IPv4 each) seeded with `scripts/netbox/seed-bulk.py`; then, through
//! the real `anvil serve` and CLI: the first import, and full reconciles when
//! nothing changed, against the time NetBox itself takes to answer the same
//! reads (the requests the sync sends, timed with the bare client).

mod common;

use anvil_netbox::client::{DEVICE_FIELDS, INTERFACE_FIELDS};
use anvil_netbox::{ClientConfig, NetBoxClient};
use anvil_netbox_testenv::NetBox;
use common::{Server, anvil_cmd};
use serde_json::Value;
use std::time::{Duration, Instant};

const DEVICES: u32 = 1000;
const RUNS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sync(s: &Server) -> (Value, Duration) {
    let t = Instant::now();
    let out = anvil_cmd(s)
        .args(["netbox", "sync", "-o", "json"])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).unwrap(), took)
}

/// The reads of a full reconcile, with the bare client: devices in scope
/// with `?fields=`, then their interfaces by device id, cursor-paginated.
async fn raw_reads(c: &NetBoxClient) -> Duration {
    let t = Instant::now();
    let devices = c
        .list_all(
            "api/dcim/devices/",
            &[
                ("site".into(), "bench".into()),
                ("fields".into(), DEVICE_FIELDS.into()),
            ],
        )
        .await
        .unwrap();
    let ids: Vec<u64> = devices.iter().filter_map(|d| d["id"].as_u64()).collect();
    let mut interfaces = 0;
    for chunk in ids.chunks(250) {
        let mut q: Vec<(String, String)> = chunk
            .iter()
            .map(|id| ("device_id".to_string(), id.to_string()))
            .collect();
        q.push(("fields".into(), INTERFACE_FIELDS.into()));
        interfaces += c.list_all("api/dcim/interfaces/", &q).await.unwrap().len();
    }
    assert_eq!(devices.len() as u32, DEVICES);
    assert_eq!(interfaces as u32, DEVICES * 3);
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand, see the module doc"]
async fn import_and_reconcile_1000_devices() {
    let Some(nb) = NetBox::start() else { return };
    let t = Instant::now();
    let seeded = nb.seed_bulk(DEVICES).unwrap();
    eprintln!("seeded in {:.1?}: {seeded}", t.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &nb.token_v2).unwrap();
    let cfg = dir.path().join("anvil.toml");
    std::fs::write(
        &cfg,
        format!(
            "[netbox]\nurl = \"{}\"\ntoken_file = \"{}\"\ntimeout_secs = 600\nreconcile_interval_secs = 86400\n[netbox.scope]\nsite = \"bench\"\n",
            nb.url,
            token_file.display()
        ),
    )
    .unwrap();
    // The start-up reconcile is the first import: time it from the server's
    // own record of the run.
    let s = Server::start_with(&["--config", cfg.to_str().unwrap()]);
    let http = common::client();
    let first = loop {
        let st: Value = http
            .get(s.api("/netbox/status"))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if st["last_sync"]["status"] == "succeeded" {
            break st["last_sync"].clone();
        }
        assert_ne!(st["last_sync"]["status"], "failed", "{st}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let import_secs = {
        let start = time::OffsetDateTime::parse(
            first["started_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let end = time::OffsetDateTime::parse(
            first["finished_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        (end - start).as_seconds_f64()
    };
    assert_eq!(first["created"], DEVICES, "{first}");
    eprintln!(
        "first import: {import_secs:.1} s ({} machines created, {} NetBox objects written)",
        first["created"], first["written"]
    );

    let client = NetBoxClient::new(ClientConfig::new(nb.url.clone(), nb.token_v2.clone())).unwrap();
    let mut raw = Vec::new();
    let mut reconcile = Vec::new();
    let mut server_ms = Vec::new();
    for _ in 0..RUNS {
        raw.push(raw_reads(&client).await);
        let (report, took) = sync(&s);
        assert_eq!(report["unchanged"], DEVICES, "{report}");
        assert_eq!(report["written"], 0, "{report}");
        assert_eq!(report["created"], 0);
        assert_eq!(report["updated"], 0);
        server_ms.push(Duration::from_millis(
            report["duration_ms"].as_u64().unwrap(),
        ));
        reconcile.push(took);
    }
    let (raw, reconcile, server) = (median(raw), median(reconcile), median(server_ms));
    eprintln!(
        "no-change reconcile of {DEVICES}: {:.2} s through the CLI ({:.2} s inside the server); NetBox's reads alone {:.2} s; ratio {:.2}",
        reconcile.as_secs_f64(),
        server.as_secs_f64(),
        raw.as_secs_f64(),
        reconcile.as_secs_f64() / raw.as_secs_f64()
    );
}
