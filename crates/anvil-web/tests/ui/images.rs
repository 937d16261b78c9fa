//! The Images page: behind a session, linked from the navigation, listing
//! what the store holds.

use crate::support::TestServer;
use anvil_store::{ImageRecord, NewEvent};

#[tokio::test]
async fn images_page_lists_the_library() {
    let server = TestServer::start().await;
    let mut c = server.client();
    let page = c.get("/images").await;
    assert_eq!(page.status, 303, "a session is needed");
    c.login().await;
    let page = c.get("/images").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("No images yet"), "{}", page.body);

    let now = time::OffsetDateTime::now_utc();
    let image = ImageRecord {
        id: uuid::Uuid::now_v7(),
        name: "debian-12-genericcloud-amd64".into(),
        kind: "disk".into(),
        os: Some("debian".into()),
        release: Some("12".into()),
        arch: Some("x86_64".into()),
        firmware: Some("bios+uefi".into()),
        login_user: Some("debian".into()),
        source_format: "qcow2".into(),
        source_size: 350 << 20,
        raw_size: 2 << 30,
        stored_size: 300 << 20,
        zero_bytes: 1 << 30,
        sha256: "ab".repeat(32),
        created_at: now,
    };
    let event = NewEvent {
        time: now,
        actor: "test".into(),
        machine_id: None,
        kind: "image.import".into(),
        message: String::new(),
        data: serde_json::json!({}),
    };
    server
        .app
        .store()
        .insert_image(&image, &event)
        .await
        .unwrap();
    let page = c.get("/images").await;
    for want in [
        "debian-12-genericcloud-amd64",
        "debian 12",
        "bios+uefi",
        "2.0 GiB",
        "300.0 MiB",
        "abababababab",
        "none",
    ] {
        assert!(page.body.contains(want), "{want} missing: {}", page.body);
    }
    let machines = c.get("/machines").await;
    assert!(
        machines.body.contains("href=\"/images\""),
        "navigation links the page"
    );
}
