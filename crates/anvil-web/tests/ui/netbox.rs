//! The NetBox page: reachable from the navigation, and honest about a
//! server without a `[netbox]` configuration.

use crate::support::TestServer;

#[tokio::test]
async fn netbox_page_needs_a_session_and_says_when_sync_is_off() {
    let server = TestServer::start().await;
    let mut c = server.client();
    let page = c.get("/netbox").await;
    assert_eq!(page.status, 303);
    assert!(page.location().starts_with("/login?next="));
    c.login().await;
    let page = c.get("/netbox").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("NetBox synchronisation"),
        "{}",
        page.body
    );
    assert!(page.body.contains("not configured"));
    let machines = c.get("/machines").await;
    assert!(
        machines.body.contains("href=\"/netbox\""),
        "navigation links the page"
    );
}
