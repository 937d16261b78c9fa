//! Against a real NetBox 4.7 started from scripts/netbox (skipped, with a
//! message, when setup.sh has not been run; scripts/test.sh always runs it).

use std::time::Duration;

use anvil_netbox_testenv::webhook::WebhookListener;
use anvil_netbox_testenv::{DeviceSpec, NetBox};
use serde_json::json;

/// Starting NetBox blocks for several seconds; keep it off the runtime's thread.
async fn start() -> Option<NetBox> {
    tokio::task::spawn_blocking(NetBox::start)
        .await
        .expect("NetBox::start panicked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_device_reads_back_with_macs_oob_ip_and_custom_field() -> anyhow::Result<()> {
    let Some(nb) = start().await else {
        return Ok(());
    };

    // Both token forms authenticate; no token is refused.
    let status = nb.get("/api/status/").await?;
    assert_eq!(status["netbox-version"], "4.7.3");
    let v1 = nb
        .http()
        .get(format!("{}/api/status/", nb.url))
        .header("Authorization", nb.auth_v1())
        .send()
        .await?;
    assert_eq!(v1.status(), 200);
    let anonymous = nb
        .http()
        .get(format!("{}/api/dcim/devices/", nb.url))
        .send()
        .await?;
    assert_eq!(anonymous.status(), 403);

    let basics = nb.seed_basics("dc1").await?;
    let spec = DeviceSpec::numbered(7, 2);
    let seeded = nb.create_device(&basics, &spec).await?;
    nb.create_device_custom_field("provisioning_state", "text")
        .await?;
    nb.set_device_custom_field(seeded.id, "provisioning_state", json!("commissioning"))
        .await?;

    let device = nb.get(&format!("/api/dcim/devices/{}/", seeded.id)).await?;
    assert_eq!(device["name"], "node-00007");
    assert_eq!(device["serial"], "SN-000007");
    assert_eq!(device["asset_tag"], "AT-000007");
    assert_eq!(device["status"]["value"], "planned");
    assert_eq!(device["site"]["id"], basics.site);
    assert_eq!(device["oob_ip"]["id"], seeded.oob_ip.unwrap());
    assert_eq!(device["oob_ip"]["address"], "10.128.0.7/16");
    assert_eq!(device["primary_ip4"]["address"], "10.64.0.7/16");
    assert_eq!(
        device["custom_fields"]["provisioning_state"],
        "commissioning"
    );
    assert_eq!(device["interface_count"], 3);

    // Every data interface carries its MAC as the primary one; the BMC is mgmt_only.
    let ifaces = nb
        .get(&format!("/api/dcim/interfaces/?device_id={}", seeded.id))
        .await?;
    let results = ifaces["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (k, id) in seeded.interfaces.iter().enumerate() {
        let iface = results.iter().find(|i| i["id"] == *id).unwrap();
        assert_eq!(iface["name"], format!("eth{k}"));
        assert_eq!(iface["mgmt_only"], false);
        assert_eq!(iface["mac_address"], format!("02:00:00:00:07:{k:02X}"));
        assert_eq!(iface["primary_mac_address"]["id"], seeded.macs[k].unwrap());
    }
    let bmc = results
        .iter()
        .find(|i| Some(i["id"].as_i64().unwrap()) == seeded.bmc_interface)
        .unwrap();
    assert_eq!(bmc["name"], "bmc");
    assert_eq!(bmc["mgmt_only"], true);
    assert_eq!(bmc["mac_address"], "02:01:00:00:07:00");

    // The lookup PXE enrollment does: device by MAC, any case.
    let by_mac = nb
        .get("/api/dcim/devices/?mac_address=02:00:00:00:07:01")
        .await?;
    assert_eq!(by_mac["count"], 1);
    assert_eq!(by_mac["results"][0]["id"], seeded.id);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_delivered_with_a_valid_signature() -> anyhow::Result<()> {
    let Some(nb) = start().await else {
        return Ok(());
    };
    let mut listener = WebhookListener::start().await?;
    let secret = "anvil-webhook-secret";
    nb.create_webhook_rule(&listener.url(), secret).await?;

    let basics = nb.seed_basics("dc-hooks").await?;
    let seeded = nb
        .create_device(&basics, &DeviceSpec::numbered(300, 1))
        .await?;
    nb.set_device_custom_field(seeded.id, "does_not_exist", json!("x"))
        .await
        .expect_err("NetBox refuses an unknown custom field");
    nb.patch(
        &format!("/api/dcim/devices/{}/", seeded.id),
        &json!({"status": "staged"}),
    )
    .await?;

    let delivery = listener
        .wait_for(Duration::from_secs(60), |d| {
            d.json().is_some_and(|body| {
                body["object_type"] == "dcim.device"
                    && body["event"] == "updated"
                    && body["data"]["status"]["value"] == "staged"
            })
        })
        .await
        .expect("NetBox delivered the device update within 60 s");
    assert_eq!(delivery.path, "/netbox");
    assert!(
        delivery.signature_valid(secret),
        "X-Hook-Signature is valid"
    );
    assert!(!delivery.signature_valid("another secret"));
    let body = delivery.json().unwrap();
    assert_eq!(body["data"]["id"], seeded.id);
    assert_eq!(body["data"]["name"], "node-00300");
    assert_eq!(body["snapshots"]["prechange"]["status"], "planned");
    assert_eq!(body["snapshots"]["postchange"]["status"], "staged");
    assert_eq!(
        delivery.headers["content-type"].to_str()?,
        "application/json"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_seed_creates_the_benchmark_shape() -> anyhow::Result<()> {
    let Some(nb) = start().await else {
        return Ok(());
    };
    let summary = tokio::task::block_in_place(|| nb.seed_bulk(25))?;
    assert_eq!(summary["devices"], 25);
    assert_eq!(summary["macs"], 75);

    let devices = nb
        .get("/api/dcim/devices/?site=bench&limit=100&fields=id,name,oob_ip,primary_ip4,interface_count")
        .await?;
    assert_eq!(devices["count"], 25);
    let last = devices["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "node-00025")
        .expect("node-00025 exists");
    assert_eq!(last["oob_ip"]["address"], "10.128.0.25/16");
    assert_eq!(last["primary_ip4"]["address"], "10.64.0.25/16");
    assert_eq!(last["interface_count"], 3);
    let macs = nb.get("/api/dcim/mac-addresses/?limit=1").await?;
    assert_eq!(macs["count"], 75);
    let by_mac = nb
        .get("/api/dcim/interfaces/?mac_address=02:00:00:00:19:01")
        .await?;
    assert_eq!(by_mac["results"][0]["name"], "eth1");
    assert_eq!(by_mac["results"][0]["device"]["name"], "node-00025");
    Ok(())
}
