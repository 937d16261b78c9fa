//! The Instances page: behind a session, linked from the navigation, listing
//! the servers sharing the database with their status and role.

use crate::support::TestServer;

#[tokio::test]
async fn instances_page_shows_the_live_leader_and_a_stopped_one() {
    let server = TestServer::start().await;
    let mut c = server.client();
    assert_eq!(c.get("/instances").await.status, 303, "a session is needed");
    c.login().await;
    let page = c.get("/instances").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("No instance has registered"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("href=\"/instances\""),
        "linked from the navigation"
    );

    // An instance that stopped earlier, then this server joining.
    let store = server.app.store();
    let gone = uuid::Uuid::now_v7();
    let then = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    store
        .register_instance(gone, "old-host", then)
        .await
        .unwrap();
    server.app.start_instance().await.unwrap();
    let page = c.get("/instances").await;
    assert_eq!(page.status, 200);
    let me = server.app.instance_id().to_string();
    let row = |id: &str| -> String {
        let at = page
            .body
            .find(id)
            .unwrap_or_else(|| panic!("{id} missing: {}", page.body));
        let start = page.body[..at].rfind("<tr>").unwrap();
        let end = at + page.body[at..].find("</tr>").unwrap();
        page.body[start..end].to_string()
    };
    let mine = row(&me);
    assert!(
        mine.contains("(this page)") && mine.contains("<td>live</td>") && mine.contains("leader"),
        "{mine}"
    );
    // SQLite: a starting server marks every other instance stopped.
    let old = row(&gone.to_string());
    assert!(
        old.contains("old-host") && old.contains("<td>stopped</td>") && !old.contains("leader"),
        "{old}"
    );
}
