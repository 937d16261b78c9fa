//! The store conformance suite: every test runs against SQLite and against
//! PostgreSQL, and both must behave the same.
//!
//! PostgreSQL comes from `ANVIL_TEST_POSTGRES_URL` (a role that may create
//! databases; `scripts/test.sh` sets it up). Each test gets its own database.
//! Without the variable the PostgreSQL half fails, unless
//! `ANVIL_SKIP_POSTGRES=1` says to skip it on purpose.

use anvil_store::{
    EventFilter, MachineFilter, MachineWrite, NewEvent, SecretUpdate, SortKey, Store, StoreError,
    truncate_to_micros,
};
use anvil_types::{
    Architecture, Bmc, BmcDriver, Firmware, Interface, MacAddr, Machine, MachineState, User,
};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

struct PgDb {
    admin_url: String,
    name: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs outside any runtime we can block on; use a fresh one.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Executor;
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
                    .await
                    .ok()?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .ok()
            })
        })
        .join();
    }
}

/// Keeps the test's database alive until the test ends (dropped last).
type Guard = Box<dyn std::any::Any>;

async fn sqlite_store() -> Option<(Store, Guard)> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("anvil.db"))
        .await
        .unwrap();
    Some((store, Box::new(dir) as Guard))
}

async fn postgres_store() -> Option<(Store, Guard)> {
    let Ok(admin_url) = std::env::var("ANVIL_TEST_POSTGRES_URL") else {
        if std::env::var("ANVIL_SKIP_POSTGRES").as_deref() == Ok("1") {
            eprintln!("skipping the PostgreSQL half: ANVIL_SKIP_POSTGRES=1");
            return None;
        }
        panic!(
            "ANVIL_TEST_POSTGRES_URL is not set: run scripts/test.sh, or set ANVIL_SKIP_POSTGRES=1 to skip on purpose"
        );
    };
    let name = format!("anvil_test_{}", Uuid::new_v4().simple());
    {
        use sqlx::Executor;
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .unwrap();
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
    }
    let guard = PgDb {
        admin_url: admin_url.clone(),
        name: name.clone(),
    };
    let url = match admin_url.rsplit_once('/') {
        Some((base, _db)) => format!("{base}/{name}"),
        None => panic!("ANVIL_TEST_POSTGRES_URL must end with /DATABASE"),
    };
    let store = Store::open(&url).await.unwrap();
    Some((store, Box::new(guard) as Guard))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() {
                let (s, _g) = super::sqlite_store().await.unwrap();
                super::$name(s).await;
            } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() {
                let Some((s, _g)) = super::postgres_store().await else { return };
                super::$name(s).await;
            } )*
        }
    };
}

conformance!(
    machine_round_trips_with_children,
    duplicates_name_the_column,
    updates_check_concurrency_and_replace_children,
    state_changes_are_compare_and_set,
    delete_cascades_but_keeps_events,
    list_filters_sorts_and_pages,
    events_follow_cursor_and_time,
    users_tokens_and_sessions,
    bmc_secret_is_kept_unless_replaced,
    leases_commit_in_batches,
    boot_events_and_interface_index,
    jobs_and_power_state,
);

fn now() -> OffsetDateTime {
    truncate_to_micros(OffsetDateTime::now_utc())
}

fn mac(i: u32) -> MacAddr {
    let b = i.to_be_bytes();
    MacAddr([0x52, 0x54, b[0], b[1], b[2], b[3]])
}

fn machine(host: &str, i: u32) -> Machine {
    let at = now();
    Machine {
        id: Uuid::now_v7(),
        hostname: host.to_string(),
        state: MachineState::New,
        state_reason: None,
        architecture: Some(Architecture::Amd64),
        firmware: Some(Firmware::Uefi),
        vendor: Some("Acme".into()),
        model: Some("R1".into()),
        serial: Some(format!("SN{i}")),
        tags: vec!["rack1".into(), format!("t{}", i % 3)],
        facts: json!({"cpus": 64, "n": i}),
        interfaces: vec![Interface {
            id: Uuid::now_v7(),
            mac: mac(i),
            name: "eth0".into(),
            pxe: true,
            ipv4: Some(format!("10.0.{}.{}", i / 250, i % 250 + 1)),
        }],
        bmc: Some(Bmc {
            driver: BmcDriver::Redfish,
            address: format!("10.1.0.{}", i % 250 + 1),
            port: Some(443),
            username: Some("root".into()),
            has_password: true,
            verify_tls: false,
        }),
        power_state: None,
        power_checked_at: None,
        created_at: at,
        updated_at: at,
    }
}

fn ev(m: &Machine, kind: &str) -> NewEvent {
    NewEvent {
        time: m.updated_at,
        actor: "test".into(),
        machine_id: Some(m.id),
        kind: kind.into(),
        message: format!("{kind} {}", m.hostname),
        data: json!({"k": kind}),
    }
}

async fn insert(s: &Store, m: &Machine) {
    s.insert_machine(
        &MachineWrite {
            machine: m.clone(),
            bmc_secret: SecretUpdate::Set(b"sealed".to_vec()),
        },
        &ev(m, "machine.created"),
    )
    .await
    .unwrap();
}

async fn machine_round_trips_with_children(s: Store) {
    let m = machine("node-1", 1);
    insert(&s, &m).await;
    let mut want = m.clone();
    want.tags.sort();
    assert_eq!(s.get_machine(m.id).await.unwrap().unwrap(), want);
    assert_eq!(
        s.get_machine_by_hostname("node-1").await.unwrap().unwrap(),
        want
    );
    assert_eq!(s.machine_id_by_mac(&mac(1)).await.unwrap(), Some(m.id));
    assert_eq!(s.machine_id_by_mac(&mac(2)).await.unwrap(), None);
    assert!(s.get_machine(Uuid::now_v7()).await.unwrap().is_none());
    assert_eq!(s.bmc_secret(m.id).await.unwrap(), Some(b"sealed".to_vec()));
    s.ping().await.unwrap();
}

async fn duplicates_name_the_column(s: Store) {
    let a = machine("dup", 1);
    insert(&s, &a).await;
    let mut b = machine("dup", 2);
    let e = s
        .insert_machine(
            &MachineWrite {
                machine: b.clone(),
                bmc_secret: SecretUpdate::Keep,
            },
            &ev(&b, "x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Duplicate { what: "hostname", ref value } if value == "dup"),
        "{e:?}"
    );
    b.hostname = "other".into();
    b.interfaces[0].mac = mac(1);
    let e = s
        .insert_machine(
            &MachineWrite {
                machine: b.clone(),
                bmc_secret: SecretUpdate::Keep,
            },
            &ev(&b, "x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Duplicate { what: "mac", .. }),
        "{e:?}"
    );
    // The failed inserts left nothing behind, not even their events.
    assert!(s.get_machine_by_hostname("other").await.unwrap().is_none());
    let events = s
        .list_events(&EventFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
}

async fn updates_check_concurrency_and_replace_children(s: Store) {
    let m = machine("upd", 1);
    insert(&s, &m).await;
    let mut n = m.clone();
    n.hostname = "upd-2".into();
    n.tags = vec!["x".into()];
    n.interfaces.push(Interface {
        id: Uuid::now_v7(),
        mac: mac(9),
        name: "eth1".into(),
        pxe: false,
        ipv4: None,
    });
    n.bmc = None;
    n.updated_at = m.updated_at + time::Duration::seconds(1);
    let w = MachineWrite {
        machine: n.clone(),
        bmc_secret: SecretUpdate::Keep,
    };
    s.update_machine(&w, m.updated_at, &ev(&n, "machine.updated"))
        .await
        .unwrap();
    assert_eq!(s.get_machine(m.id).await.unwrap().unwrap(), n);
    assert_eq!(s.bmc_secret(m.id).await.unwrap(), None);
    // A writer that read the old version loses.
    let e = s
        .update_machine(&w, m.updated_at, &ev(&n, "machine.updated"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Concurrent), "{e:?}");
}

async fn state_changes_are_compare_and_set(s: Store) {
    let m = machine("st", 1);
    insert(&s, &m).await;
    let at = m.updated_at + time::Duration::seconds(1);
    s.set_state(
        m.id,
        MachineState::New,
        MachineState::Failed,
        Some("disk"),
        at,
        &ev(&m, "machine.state"),
    )
    .await
    .unwrap();
    let got = s.get_machine(m.id).await.unwrap().unwrap();
    assert_eq!(got.state, MachineState::Failed);
    assert_eq!(got.state_reason.as_deref(), Some("disk"));
    assert_eq!(got.updated_at, at);
    let e = s
        .set_state(
            m.id,
            MachineState::New,
            MachineState::Ready,
            None,
            at,
            &ev(&m, "machine.state"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Concurrent));
}

async fn delete_cascades_but_keeps_events(s: Store) {
    let m = machine("del", 1);
    insert(&s, &m).await;
    assert!(
        s.delete_machine(m.id, &ev(&m, "machine.deleted"))
            .await
            .unwrap()
    );
    assert!(
        !s.delete_machine(m.id, &ev(&m, "machine.deleted"))
            .await
            .unwrap()
    );
    assert!(s.get_machine(m.id).await.unwrap().is_none());
    assert_eq!(s.machine_id_by_mac(&mac(1)).await.unwrap(), None);
    // The MAC is free again.
    insert(&s, &machine("del-again", 1)).await;
    let events = s
        .list_events(&EventFilter {
            machine_id: Some(m.id),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["machine.created", "machine.deleted"]);
}

async fn list_filters_sorts_and_pages(s: Store) {
    let mut ids = Vec::new();
    for i in 0..25u32 {
        let mut m = machine(&format!("n{i:02}"), i);
        m.created_at += time::Duration::milliseconds(i64::from(i));
        m.updated_at = m.created_at;
        insert(&s, &m).await;
        ids.push(m.id);
    }
    let all = MachineFilter {
        limit: 1000,
        ..Default::default()
    };
    let (items, total) = s.list_machines(&all).await.unwrap();
    assert_eq!(total, 25);
    assert_eq!(items[0].hostname, "n00");
    assert_eq!(items[0].interfaces.len(), 1, "details are loaded");
    assert!(items[0].bmc.is_some());

    let f = MachineFilter {
        tag: Some("t1".into()),
        limit: 1000,
        ..Default::default()
    };
    let (items, total) = s.list_machines(&f).await.unwrap();
    assert_eq!(total, 8);
    assert!(items.iter().all(|m| m.tags.contains(&"t1".to_string())));

    let f = MachineFilter {
        mac: Some(mac(7)),
        limit: 10,
        ..Default::default()
    };
    let (items, _) = s.list_machines(&f).await.unwrap();
    assert_eq!(
        items
            .iter()
            .map(|m| m.hostname.as_str())
            .collect::<Vec<_>>(),
        ["n07"]
    );

    let f = MachineFilter {
        hostname_contains: Some("N1".into()),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(s.list_machines(&f).await.unwrap().1, 10);
    // LIKE wildcards in the search are literal.
    let f = MachineFilter {
        hostname_contains: Some("n_1".into()),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(s.list_machines(&f).await.unwrap().1, 0);

    let f = MachineFilter {
        state: Some(MachineState::Ready),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(s.list_machines(&f).await.unwrap().1, 0);

    let f = MachineFilter {
        sort: SortKey::CreatedAt,
        descending: true,
        limit: 3,
        ..Default::default()
    };
    let (items, _) = s.list_machines(&f).await.unwrap();
    assert_eq!(
        items
            .iter()
            .map(|m| m.hostname.as_str())
            .collect::<Vec<_>>(),
        ["n24", "n23", "n22"]
    );

    // Pages of 7 cover everything exactly once.
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let f = MachineFilter {
            sort: SortKey::State,
            limit: 7,
            offset,
            ..Default::default()
        };
        let (items, _) = s.list_machines(&f).await.unwrap();
        if items.is_empty() {
            break;
        }
        offset += items.len() as u64;
        seen.extend(items.into_iter().map(|m| m.id));
    }
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids);
}

async fn events_follow_cursor_and_time(s: Store) {
    let m = machine("ev", 1);
    insert(&s, &m).await;
    let later = m.updated_at + time::Duration::seconds(10);
    for k in ["a", "b", "c"] {
        let mut e = ev(&m, k);
        e.time = later;
        s.append_event(&e).await.unwrap();
    }
    let all = s
        .list_events(&EventFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all[1].data, json!({"k": "a"}));
    let after = s
        .list_events(&EventFilter {
            after_id: Some(all[1].id),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        after.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["b", "c"]
    );
    let since = s
        .list_events(&EventFilter {
            since: Some(later),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(since.len(), 3);
    // A whole-second time sorts before one half a second later.
    let whole = later.replace_nanosecond(0).unwrap();
    let since = s
        .list_events(&EventFilter {
            since: Some(whole + time::Duration::milliseconds(500)),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        since.len(),
        if later >= whole + time::Duration::milliseconds(500) {
            3
        } else {
            0
        }
    );
    let limited = s
        .list_events(&EventFilter {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
}

async fn users_tokens_and_sessions(s: Store) {
    let at = now();
    let u = User {
        id: Uuid::now_v7(),
        username: "alice".into(),
        is_admin: true,
        created_at: at,
    };
    s.insert_user(&u, "hash1").await.unwrap();
    let e = s
        .insert_user(
            &User {
                id: Uuid::now_v7(),
                ..u.clone()
            },
            "h",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Duplicate {
                what: "username",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(s.count_users().await.unwrap(), 1);
    let rec = s.user_by_name("alice").await.unwrap().unwrap();
    assert_eq!(rec.user, u);
    assert_eq!(rec.password_hash, "hash1");
    assert!(s.set_password_hash("alice", "hash2").await.unwrap());
    assert!(!s.set_password_hash("bob", "hash2").await.unwrap());
    assert_eq!(
        s.user_by_name("alice")
            .await
            .unwrap()
            .unwrap()
            .password_hash,
        "hash2"
    );

    let tid = Uuid::now_v7();
    s.insert_token(tid, "ci", u.id, "tokhash", at)
        .await
        .unwrap();
    let (t, owner) = s.token_by_hash("tokhash").await.unwrap().unwrap();
    assert_eq!((t.id, t.name.as_str(), t.last_used_at), (tid, "ci", None));
    assert_eq!(owner, u);
    s.touch_token(tid, at).await.unwrap();
    assert_eq!(
        s.token_by_hash("tokhash")
            .await
            .unwrap()
            .unwrap()
            .0
            .last_used_at,
        Some(at)
    );
    assert_eq!(s.list_tokens(Some("alice")).await.unwrap().len(), 1);
    assert_eq!(s.list_tokens(Some("bob")).await.unwrap().len(), 0);
    assert!(s.delete_token(tid).await.unwrap());
    assert!(s.token_by_hash("tokhash").await.unwrap().is_none());

    s.insert_session("sess", u.id, "csrf", at, at + time::Duration::hours(1))
        .await
        .unwrap();
    let live = s.session("sess", at).await.unwrap().unwrap();
    assert_eq!(
        (live.user.username.as_str(), live.csrf_token.as_str()),
        ("alice", "csrf")
    );
    assert!(
        s.session("sess", at + time::Duration::hours(2))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.purge_sessions(at + time::Duration::hours(2))
            .await
            .unwrap(),
        1
    );
    assert!(s.session("sess", at).await.unwrap().is_none());
}

async fn bmc_secret_is_kept_unless_replaced(s: Store) {
    let m = machine("bmc", 1);
    insert(&s, &m).await;
    let mut n = m.clone();
    n.bmc.as_mut().unwrap().address = "bmc.example".into();
    n.updated_at = m.updated_at + time::Duration::seconds(1);
    s.update_machine(
        &MachineWrite {
            machine: n.clone(),
            bmc_secret: SecretUpdate::Keep,
        },
        m.updated_at,
        &ev(&n, "u"),
    )
    .await
    .unwrap();
    assert_eq!(s.bmc_secret(m.id).await.unwrap(), Some(b"sealed".to_vec()));
    let mut o = n.clone();
    o.updated_at = n.updated_at + time::Duration::seconds(1);
    s.update_machine(
        &MachineWrite {
            machine: o.clone(),
            bmc_secret: SecretUpdate::Clear,
        },
        n.updated_at,
        &ev(&o, "u"),
    )
    .await
    .unwrap();
    assert_eq!(s.bmc_secret(m.id).await.unwrap(), None);
    assert!(
        !s.get_machine(m.id)
            .await
            .unwrap()
            .unwrap()
            .bmc
            .unwrap()
            .has_password
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("anvil.db");
    let first = Store::open_sqlite(&path).await.unwrap();
    let e = Store::open_sqlite(&path)
        .await
        .err()
        .expect("second open must fail");
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    assert!(e.to_string().contains("already in use"), "{e}");
    // An admin command may share the file with the running server.
    let shared = Store::open_with(path.to_str().unwrap(), anvil_store::Access::Shared)
        .await
        .unwrap();
    shared.ping().await.unwrap();
    first.close().await;
    drop(first);
    Store::open_sqlite(&path)
        .await
        .expect("free again once the first is gone");
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let e = Store::open("mysql://x/y").await.err().unwrap();
    assert!(matches!(e, StoreError::UnsupportedUrl { .. }));
}

async fn leases_commit_in_batches(s: Store) {
    use anvil_store::{LeaseRecord, LeaseWrite};
    let at = now();
    let lease = |ip: &str, mac: &str, state: &str| LeaseRecord {
        ip: ip.into(),
        mac: mac.into(),
        network: "rack1".into(),
        state: state.into(),
        hostname: None,
        client_id: Some("01525400000001".into()),
        expires_at: at + time::Duration::hours(1),
        updated_at: at,
    };
    let batch: Vec<LeaseWrite> = (1..=50)
        .map(|i| {
            LeaseWrite::Upsert(lease(
                &format!("10.77.0.{i}"),
                &format!("52:54:00:00:00:{i:02x}"),
                "bound",
            ))
        })
        .collect();
    s.commit_leases(&batch).await.unwrap();
    assert_eq!(s.list_leases(None).await.unwrap().len(), 50);
    // Upsert replaces by address; Remove frees it; both in one batch.
    s.commit_leases(&[
        LeaseWrite::Upsert(lease("10.77.0.1", "52:54:00:00:00:99", "offered")),
        LeaseWrite::Remove {
            ip: "10.77.0.2".into(),
        },
    ])
    .await
    .unwrap();
    let l = s.list_leases(Some("52:54:00:00:00:99")).await.unwrap();
    assert_eq!(l, vec![lease("10.77.0.1", "52:54:00:00:00:99", "offered")]);
    assert!(
        s.list_leases(Some("52:54:00:00:00:02"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.list_leases(None).await.unwrap().len(), 49);
    s.commit_leases(&[]).await.unwrap();
    // Order is kept across upserts and removals, and one address upserted
    // twice in a batch ends as its last write.
    s.commit_leases(&[
        LeaseWrite::Upsert(lease("10.77.0.3", "52:54:00:00:00:aa", "offered")),
        LeaseWrite::Upsert(lease("10.77.0.3", "52:54:00:00:00:aa", "bound")),
        LeaseWrite::Remove {
            ip: "10.77.0.4".into(),
        },
        LeaseWrite::Upsert(lease("10.77.0.4", "52:54:00:00:00:bb", "bound")),
        LeaseWrite::Remove {
            ip: "10.77.0.5".into(),
        },
    ])
    .await
    .unwrap();
    assert_eq!(
        s.list_leases(Some("52:54:00:00:00:aa")).await.unwrap()[0].state,
        "bound"
    );
    assert_eq!(
        s.list_leases(Some("52:54:00:00:00:bb"))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.list_leases(Some("52:54:00:00:00:05"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn boot_events_and_interface_index(s: Store) {
    let m = machine("pxe", 1);
    insert(&s, &m).await;
    let at = now();
    let mac1 = mac(1).to_string();
    let events: Vec<_> = ["dhcp.discover", "dhcp.offer", "dhcp.ack"]
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                at + time::Duration::milliseconds(i as i64),
                mac1.clone(),
                k.to_string(),
                json!({"i": i}),
            )
        })
        .collect();
    s.append_boot_events(&events).await.unwrap();
    s.append_boot_events(&[(
        at,
        "52:54:00:ff:ff:ff".into(),
        "dhcp.discover".into(),
        json!({}),
    )])
    .await
    .unwrap();
    let got = s
        .boot_events(std::slice::from_ref(&mac1), 100)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["dhcp.discover", "dhcp.offer", "dhcp.ack"]
    );
    assert_eq!(got[2].detail, json!({"i": 2}));
    // The newest N, still oldest first.
    let last2 = s.boot_events(std::slice::from_ref(&mac1), 2).await.unwrap();
    assert_eq!(
        last2.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["dhcp.offer", "dhcp.ack"]
    );
    assert!(s.boot_events(&[], 10).await.unwrap().is_empty());
    let idx = s.interface_index().await.unwrap();
    assert_eq!(idx.len(), 1);
    assert_eq!(
        (idx[0].mac.as_str(), idx[0].machine_id, idx[0].state),
        (mac1.as_str(), m.id, MachineState::New)
    );
}

async fn jobs_and_power_state(s: Store) {
    use anvil_types::{Job, JobStatus};
    let m = machine("pw", 1);
    insert(&s, &m).await;
    let at = now();
    let job = Job {
        id: Uuid::now_v7(),
        kind: "power-on".into(),
        machine_id: Some(m.id),
        status: JobStatus::Queued,
        actor: "test".into(),
        params: json!({"x": 1}),
        result: None,
        error: None,
        created_at: at,
        started_at: None,
        finished_at: None,
    };
    s.insert_job(&job).await.unwrap();
    assert_eq!(s.get_job(job.id).await.unwrap().unwrap(), job);
    s.start_job(job.id, at).await.unwrap();
    assert_eq!(
        s.get_job(job.id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
    s.finish_job(job.id, Ok(&json!({"power_state": "on"})), at)
        .await
        .unwrap();
    let done = s.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.result.clone(), done.finished_at),
        (
            JobStatus::Succeeded,
            Some(json!({"power_state": "on"})),
            Some(at)
        )
    );
    let mut j2 = job.clone();
    j2.id = Uuid::now_v7();
    j2.created_at = at + time::Duration::seconds(1);
    s.insert_job(&j2).await.unwrap();
    // Several jobs in one transaction (a bulk action); none is no-op.
    s.insert_jobs(&[]).await.unwrap();
    let batch: Vec<Job> = (0..3)
        .map(|i| {
            let mut j = job.clone();
            j.id = Uuid::now_v7();
            j.created_at = at + time::Duration::seconds(2 + i);
            // Finished and machine-less, so the orphan and per-machine
            // assertions below still see only the first two jobs.
            j.status = JobStatus::Failed;
            j.machine_id = None;
            j
        })
        .collect();
    s.insert_jobs(&batch).await.unwrap();
    for j in &batch {
        assert_eq!(s.get_job(j.id).await.unwrap().as_ref(), Some(j));
    }
    // A duplicate id fails the whole batch: nothing of it is written.
    let mut again = batch[0].clone();
    let fresh = Uuid::now_v7();
    again.created_at = at + time::Duration::seconds(9);
    let mut other = again.clone();
    other.id = fresh;
    assert!(s.insert_jobs(&[other, again]).await.is_err());
    assert!(s.get_job(fresh).await.unwrap().is_none());
    s.finish_job(j2.id, Err("the BMC refused"), at)
        .await
        .unwrap();
    let failed = s.get_job(j2.id).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("the BMC refused"));
    let listed = s.list_jobs(Some(m.id), 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|j| j.id).collect::<Vec<_>>(),
        [j2.id, job.id]
    );
    assert!(
        s.list_jobs(Some(Uuid::now_v7()), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let before = s.get_machine(m.id).await.unwrap().unwrap();
    s.set_power_state(m.id, Some("on"), at).await.unwrap();
    let after = s.get_machine(m.id).await.unwrap().unwrap();
    assert_eq!(
        (after.power_state.as_deref(), after.power_checked_at),
        (Some("on"), Some(at))
    );
    assert_eq!(
        after.updated_at, before.updated_at,
        "polling is not an edit"
    );
}

// ---------------------------------------------------------------------------
// Commissioning (migration 0005): runs, steps, agent tokens, hardware facts.

mod commissioning_conformance {
    macro_rules! both {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $( #[tokio::test] async fn $name() {
                    let (s, _g) = super::super::sqlite_store().await.unwrap();
                    super::$name(s).await;
                } )*
            }
            mod postgres {
                $( #[tokio::test] async fn $name() {
                    let Some((s, _g)) = super::super::postgres_store().await else { return };
                    super::$name(s).await;
                } )*
            }
        };
    }
    both!(
        runs_are_numbered_per_machine_and_move_the_machine,
        step_reports_are_compare_and_set_on_seq,
        finishing_a_run_is_once_and_moves_the_machine,
        agent_tokens_expire_and_cascade,
        facts_are_versioned_per_run,
        deployment_runs_carry_purpose_params_and_the_image,
    );

    use super::{ev, insert, machine, now};
    use anvil_store::{NewEvent, RunEnd, RunRecord, StepRecord, StepUpdate, Store, StoreError};
    use anvil_types::{Machine, MachineState};
    use serde_json::json;
    use time::Duration;
    use uuid::Uuid;

    fn run(m: &Machine) -> RunRecord {
        let at = now();
        RunRecord {
            id: Uuid::now_v7(),
            machine_id: m.id,
            number: 0,
            state: "running".into(),
            tests: r#"["cpu"]"#.into(),
            job_id: Some(Uuid::now_v7()),
            failure_reason: None,
            failed_step: None,
            system_uuid: None,
            agent_version: None,
            started_at: at,
            registered_at: None,
            last_seen_at: None,
            finished_at: None,
            deadline: at + Duration::minutes(20),
            purpose: "commissioning".into(),
            params: "{}".into(),
        }
    }

    fn steps(r: &RunRecord) -> Vec<StepRecord> {
        ["inventory", "cpu_test"]
            .iter()
            .enumerate()
            .map(|(i, k)| StepRecord {
                id: Uuid::now_v7(),
                run_id: r.id,
                index: i as i32,
                kind: (*k).into(),
                params: r#"{"x":1}"#.into(),
                status: "pending".into(),
                last_seq: 0,
                message: None,
                progress: None,
                result: None,
                started_at: None,
                finished_at: None,
                updated_at: r.started_at,
            })
            .collect()
    }

    async fn start(
        s: &Store,
        m: &Machine,
        from: MachineState,
    ) -> (RunRecord, Vec<StepRecord>, i64) {
        let r = run(m);
        let st = steps(&r);
        let n = s
            .start_commissioning_run(&r, &st, from, &ev(m, "commission.start"))
            .await
            .unwrap();
        (r, st, n)
    }

    fn end(r: &RunRecord, m: &Machine, state: &str, to: Option<MachineState>) -> RunEnd {
        RunEnd {
            run_id: r.id,
            state: state.into(),
            failure_reason: (state == "failed").then(|| "cpu_test failed: hot".to_string()),
            failed_step: (state == "failed").then(|| "cpu_test".to_string()),
            at: now(),
            machine_state: to,
            active_state: MachineState::Commissioning,
            clear_image: false,
            event: NewEvent {
                kind: "commission.end".into(),
                ..ev(m, "commission.end")
            },
        }
    }

    async fn runs_are_numbered_per_machine_and_move_the_machine(s: Store) {
        let m = machine("cm1", 1);
        insert(&s, &m).await;
        let other = machine("cm2", 2);
        insert(&s, &other).await;
        // A stale `from` state is refused and writes nothing.
        let r = run(&m);
        let e = s
            .start_commissioning_run(&r, &steps(&r), MachineState::Ready, &ev(&m, "x"))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Concurrent), "{e:?}");
        assert!(s.commissioning_run(r.id).await.unwrap().is_none());

        let (r1, st1, n1) = start(&s, &m, MachineState::New).await;
        assert_eq!(n1, 1);
        let got = s.get_machine(m.id).await.unwrap().unwrap();
        assert_eq!(got.state, MachineState::Commissioning);
        let stored = s.commissioning_run(r1.id).await.unwrap().unwrap();
        assert_eq!(
            stored,
            RunRecord {
                number: 1,
                ..r1.clone()
            }
        );
        assert_eq!(s.commissioning_steps(r1.id).await.unwrap(), st1);
        assert_eq!(s.running_commissioning_runs().await.unwrap().len(), 1);

        s.register_commissioning_agent(r1.id, Some("4c4c-uuid"), "0.1.0", now())
            .await
            .unwrap();
        let first = s.commissioning_run(r1.id).await.unwrap().unwrap();
        s.register_commissioning_agent(r1.id, None, "0.1.0", now() + Duration::seconds(1))
            .await
            .unwrap();
        let again = s.commissioning_run(r1.id).await.unwrap().unwrap();
        assert_eq!(again.system_uuid.as_deref(), Some("4c4c-uuid"));
        assert_eq!(
            again.registered_at, first.registered_at,
            "first registration kept"
        );
        assert!(again.last_seen_at > first.last_seen_at);

        assert!(
            s.finish_commissioning_run(&end(&r1, &m, "succeeded", Some(MachineState::Ready)))
                .await
                .unwrap()
        );
        let (r2, _, n2) = start(&s, &m, MachineState::Ready).await;
        assert_eq!(n2, 2);
        let (_, _, n_other) = start(&s, &other, MachineState::New).await;
        assert_eq!(n_other, 1, "numbers are per machine");
        let listed = s.commissioning_runs(m.id, 10).await.unwrap();
        assert_eq!(
            listed.iter().map(|r| (r.number, r.id)).collect::<Vec<_>>(),
            [(2, r2.id), (1, r1.id)]
        );
    }

    async fn deployment_runs_carry_purpose_params_and_the_image(s: Store) {
        use anvil_store::{ImageDelete, ImageRecord};
        let m = machine("dep1", 41);
        insert(&s, &m).await;
        let img = ImageRecord {
            id: Uuid::now_v7(),
            name: "deb".into(),
            kind: "disk".into(),
            os: None,
            release: None,
            arch: None,
            firmware: None,
            login_user: None,
            source_format: "raw".into(),
            source_size: 1,
            raw_size: 1,
            stored_size: 1,
            zero_bytes: 0,
            sha256: "e".repeat(64),
            created_at: now(),
        };
        s.insert_image(&img, &ev(&m, "image.import")).await.unwrap();
        // Commissioning first (run 1), so numbers are shared across purposes.
        let (c, _, _) = start(&s, &m, MachineState::New).await;
        s.finish_commissioning_run(&end(&c, &m, "succeeded", Some(MachineState::Ready)))
            .await
            .unwrap();

        let params = r#"{"image":"deb","ssh_keys":["ssh-ed25519 AAAA k"]}"#;
        let dep = RunRecord {
            purpose: "deployment".into(),
            params: params.into(),
            tests: "[]".into(),
            ..run(&m)
        };
        // The machine is not `allocated`: refused, nothing written, no image.
        let e = s
            .start_agent_run(
                &dep,
                &steps(&dep),
                MachineState::Allocated,
                MachineState::Deploying,
                Some(img.id),
                &ev(&m, "deploy.start"),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Concurrent), "{e:?}");
        assert!(s.image_users(Some(img.id)).await.unwrap().is_empty());

        let n = s
            .start_agent_run(
                &dep,
                &steps(&dep),
                MachineState::Ready,
                MachineState::Deploying,
                Some(img.id),
                &ev(&m, "deploy.start"),
            )
            .await
            .unwrap();
        assert_eq!(n, 2);
        let got = s.get_machine(m.id).await.unwrap().unwrap();
        assert_eq!(got.state, MachineState::Deploying);
        let stored = s.commissioning_run(dep.id).await.unwrap().unwrap();
        assert_eq!(
            (stored.purpose.as_str(), stored.params.as_str()),
            ("deployment", params)
        );
        assert_eq!(
            s.latest_run_of(m.id, "deployment")
                .await
                .unwrap()
                .map(|r| r.id),
            Some(dep.id)
        );
        assert_eq!(
            s.latest_run_of(m.id, "commissioning")
                .await
                .unwrap()
                .map(|r| r.id),
            Some(c.id)
        );
        assert!(s.latest_run_of(m.id, "rescue").await.unwrap().is_none());
        // The image is in use from the start of the deployment.
        assert_eq!(
            s.delete_image(img.id, &ev(&m, "image.delete"))
                .await
                .unwrap(),
            ImageDelete::InUse(vec!["dep1".into()])
        );
        // The end moves the machine out of `deploying` (not `commissioning`).
        let mut e = end(&dep, &m, "succeeded", Some(MachineState::Deployed));
        e.active_state = MachineState::Deploying;
        assert!(s.finish_commissioning_run(&e).await.unwrap());
        assert_eq!(
            s.get_machine(m.id).await.unwrap().unwrap().state,
            MachineState::Deployed
        );
        assert_eq!(s.image_users(Some(img.id)).await.unwrap().len(), 1);

        // A release that succeeds forgets the image in the same transaction.
        let rel = RunRecord {
            purpose: "release".into(),
            ..run(&m)
        };
        s.start_agent_run(
            &rel,
            &steps(&rel),
            MachineState::Deployed,
            MachineState::Releasing,
            None,
            &ev(&m, "release.start"),
        )
        .await
        .unwrap();
        let mut e = end(&rel, &m, "succeeded", Some(MachineState::Ready));
        e.active_state = MachineState::Releasing;
        e.clear_image = true;
        assert!(s.finish_commissioning_run(&e).await.unwrap());
        assert_eq!(
            s.get_machine(m.id).await.unwrap().unwrap().state,
            MachineState::Ready
        );
        assert!(s.image_users(Some(img.id)).await.unwrap().is_empty());
        assert_eq!(
            s.delete_image(img.id, &ev(&m, "image.delete"))
                .await
                .unwrap(),
            ImageDelete::Deleted
        );
    }

    async fn step_reports_are_compare_and_set_on_seq(s: Store) {
        let m = machine("cs1", 3);
        insert(&s, &m).await;
        let (r, st, _) = start(&s, &m, MachineState::New).await;
        let at = now();
        let started = StepUpdate {
            step_id: st[0].id,
            expected_last_seq: 0,
            seq: 1,
            status: "started".into(),
            message: Some("collecting".into()),
            progress: None,
            result: None,
            at,
            starts: true,
            finishes: false,
        };
        s.update_commissioning_step(&started).await.unwrap();
        // The same report again: last_seq moved, nothing is written.
        let e = s.update_commissioning_step(&started).await.unwrap_err();
        assert!(matches!(e, StoreError::Concurrent));
        let progress = StepUpdate {
            expected_last_seq: 1,
            seq: 2,
            status: "progress".into(),
            message: None,
            progress: Some((10, 30)),
            starts: false,
            at: at + Duration::seconds(1),
            ..started.clone()
        };
        s.update_commissioning_step(&progress).await.unwrap();
        let done = StepUpdate {
            expected_last_seq: 2,
            seq: 3,
            status: "succeeded".into(),
            message: Some("ok".into()),
            progress: None,
            result: Some(r#"{"disks":2}"#.into()),
            starts: false,
            finishes: true,
            at: at + Duration::seconds(2),
            ..started.clone()
        };
        s.update_commissioning_step(&done).await.unwrap();
        let got = &s.commissioning_steps(r.id).await.unwrap()[0];
        assert_eq!(
            (
                got.status.as_str(),
                got.last_seq,
                got.message.as_deref(),
                got.progress,
                got.result.as_deref(),
                got.started_at,
                got.finished_at
            ),
            (
                "succeeded",
                3,
                Some("ok"),
                Some((10, 30)),
                Some(r#"{"disks":2}"#),
                Some(at),
                Some(at + Duration::seconds(2))
            )
        );
        let untouched = &s.commissioning_steps(r.id).await.unwrap()[1];
        assert_eq!(untouched, &st[1]);
        let run = s.commissioning_run(r.id).await.unwrap().unwrap();
        assert_eq!(run.last_seen_at, Some(at + Duration::seconds(2)));
    }

    async fn finishing_a_run_is_once_and_moves_the_machine(s: Store) {
        let m = machine("cf1", 4);
        insert(&s, &m).await;
        let (r, _, _) = start(&s, &m, MachineState::New).await;
        let e = end(&r, &m, "failed", Some(MachineState::Failed));
        assert!(s.finish_commissioning_run(&e).await.unwrap());
        assert!(
            !s.finish_commissioning_run(&end(&r, &m, "succeeded", Some(MachineState::Ready)))
                .await
                .unwrap(),
            "a run ends once"
        );
        let got = s.get_machine(m.id).await.unwrap().unwrap();
        assert_eq!(
            (got.state, got.state_reason.as_deref()),
            (MachineState::Failed, Some("cpu_test failed: hot"))
        );
        let run = s.commissioning_run(r.id).await.unwrap().unwrap();
        assert_eq!(
            (
                run.state.as_str(),
                run.failed_step.as_deref(),
                run.finished_at
            ),
            ("failed", Some("cpu_test"), Some(e.at))
        );
        assert!(s.running_commissioning_runs().await.unwrap().is_empty());

        // A machine an operator moved away from commissioning stays where it is.
        let (r2, _, _) = start(&s, &m, MachineState::Failed).await;
        let cur = s.get_machine(m.id).await.unwrap().unwrap();
        s.set_state(
            m.id,
            MachineState::Commissioning,
            MachineState::Broken,
            Some("pulled"),
            now(),
            &ev(&cur, "machine.state"),
        )
        .await
        .unwrap();
        assert!(
            s.finish_commissioning_run(&end(&r2, &m, "aborted", Some(MachineState::Ready)))
                .await
                .unwrap()
        );
        assert_eq!(
            s.get_machine(m.id).await.unwrap().unwrap().state,
            MachineState::Broken
        );
        let kinds: Vec<String> = s
            .list_events(&anvil_store::EventFilter {
                machine_id: Some(m.id),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds.iter().filter(|k| *k == "commission.end").count(), 2);
    }

    async fn agent_tokens_expire_and_cascade(s: Store) {
        let m = machine("ct1", 5);
        insert(&s, &m).await;
        let (r, _, _) = start(&s, &m, MachineState::New).await;
        let at = now();
        s.insert_agent_token("hash-a", m.id, r.id, at, at + Duration::minutes(5))
            .await
            .unwrap();
        s.insert_agent_token("hash-b", m.id, r.id, at, at + Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(s.count_agent_tokens(r.id).await.unwrap(), 2);
        let t = s.agent_token("hash-a", at).await.unwrap().unwrap();
        assert_eq!((t.machine_id, t.run_id), (m.id, r.id));
        assert!(s.agent_token("nope", at).await.unwrap().is_none());
        let later = at + Duration::seconds(2);
        assert!(
            s.agent_token("hash-b", later).await.unwrap().is_none(),
            "expired"
        );
        assert_eq!(s.purge_agent_tokens(later).await.unwrap(), 1);
        assert!(s.agent_token("hash-a", later).await.unwrap().is_some());
        s.delete_machine(m.id, &ev(&m, "machine.deleted"))
            .await
            .unwrap();
        assert!(s.agent_token("hash-a", later).await.unwrap().is_none());
        assert!(s.commissioning_run(r.id).await.unwrap().is_none());
    }

    async fn facts_are_versioned_per_run(s: Store) {
        let m = machine("cv1", 6);
        insert(&s, &m).await;
        assert!(s.hardware_facts(m.id, None).await.unwrap().is_none());
        let (r1, _, _) = start(&s, &m, MachineState::New).await;
        let at = now();
        let doc1 = json!({"disks": [{"name": "vda"}]}).to_string();
        s.put_hardware_facts(r1.id, m.id, &doc1, at).await.unwrap();
        assert!(s.run_has_facts(r1.id).await.unwrap());
        s.finish_commissioning_run(&end(&r1, &m, "succeeded", Some(MachineState::Ready)))
            .await
            .unwrap();
        let (r2, _, _) = start(&s, &m, MachineState::Ready).await;
        assert!(!s.run_has_facts(r2.id).await.unwrap());
        // Before run 2 has facts, the latest are run 1's.
        assert_eq!(
            s.hardware_facts(m.id, None)
                .await
                .unwrap()
                .unwrap()
                .run_number,
            1
        );
        let doc2 = json!({"disks": [{"name": "vda"}, {"name": "nvme0n1"}]}).to_string();
        s.put_hardware_facts(r2.id, m.id, "{\"partial\":true}", at)
            .await
            .unwrap();
        s.put_hardware_facts(r2.id, m.id, &doc2, at + Duration::seconds(1))
            .await
            .unwrap();
        let latest = s.hardware_facts(m.id, None).await.unwrap().unwrap();
        assert_eq!(
            (
                latest.run_number,
                latest.run_id,
                latest.facts.as_str(),
                latest.collected_at
            ),
            (2, r2.id, doc2.as_str(), at + Duration::seconds(1))
        );
        let first = s.hardware_facts(m.id, Some(1)).await.unwrap().unwrap();
        assert_eq!(first.facts, doc1, "run 1's facts untouched by run 2");
        assert!(s.hardware_facts(m.id, Some(3)).await.unwrap().is_none());
        assert_eq!(s.runs_with_facts(m.id).await.unwrap(), [2, 1]);
    }
}

// NetBox synchronisation (migration 0004).
mod netbox_conformance {
    use super::*;
    conformance!(netbox_links_runs_outbox_and_cursors);
}

async fn netbox_links_runs_outbox_and_cursors(s: Store) {
    use anvil_store::NetboxRunCounts;
    let a = machine("nb-a", 9001);
    let b = machine("nb-b", 9002);
    insert(&s, &a).await;
    insert(&s, &b).await;
    let at = now();

    // Links: one device per machine and one machine per device.
    assert!(s.netbox_links().await.unwrap().is_empty());
    s.netbox_link(a.id, 10, at).await.unwrap();
    s.netbox_link(b.id, 20, at).await.unwrap();
    assert_eq!(s.netbox_machine_for_device(10).await.unwrap(), Some(a.id));
    // Re-linking device 20 to machine a replaces both old links.
    s.netbox_link(a.id, 20, at).await.unwrap();
    let links = s.netbox_links().await.unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[&a.id], 20);
    assert_eq!(s.netbox_machine_for_device(10).await.unwrap(), None);
    // Deleting the machine drops its link.
    s.delete_machine(a.id, &ev(&a, "machine.deleted"))
        .await
        .unwrap();
    assert!(s.netbox_links().await.unwrap().is_empty());

    // Runs: one at a time.
    let r1 = s
        .netbox_run_start("full", false, at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.netbox_run_start("full", true, at).await.unwrap(),
        None,
        "a second sync waits for the running one"
    );
    let counts = NetboxRunCounts {
        created: 3,
        updated: 2,
        unchanged: 995,
        written: 7,
        pending: 0,
        conflicts: 1,
    };
    let report = json!({"conflicts": [{"kind": "serial_mismatch"}]});
    s.netbox_run_finish(r1, at, counts, None, &report)
        .await
        .unwrap();
    let r2 = s.netbox_run_start("full", true, at).await.unwrap().unwrap();
    assert!(r2 > r1);
    s.netbox_run_finish(
        r2,
        at,
        NetboxRunCounts::default(),
        Some("NetBox is down"),
        &json!({}),
    )
    .await
    .unwrap();
    let runs = s.netbox_runs(None, 10).await.unwrap();
    assert_eq!(runs.iter().map(|r| r.id).collect::<Vec<_>>(), [r2, r1]);
    assert_eq!(runs[1].status, "succeeded");
    assert_eq!(runs[1].counts, counts);
    assert_eq!(runs[1].report, report);
    assert_eq!(runs[1].finished_at, Some(at));
    assert!(!runs[1].dry_run && runs[0].dry_run);
    assert_eq!(runs[0].status, "failed");
    assert_eq!(runs[0].error.as_deref(), Some("NetBox is down"));
    // A run of a live instance is left alone by another instance; once that
    // instance is stopped, or by the instance itself (holding its sync
    // lock), it is closed as failed.
    let (live, other) = (Uuid::now_v7(), Uuid::now_v7());
    s.register_instance(live, "live", at).await.unwrap();
    s.register_instance(other, "other", at).await.unwrap();
    let on_live = s.clone().for_instance(live);
    let r3 = on_live
        .netbox_run_start("webhook", false, at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.netbox_runs(Some("webhook"), 10).await.unwrap()[0].id, r3);
    assert_eq!(s.netbox_runs(Some("webhook"), 10).await.unwrap().len(), 1);
    let live_since = at - time::Duration::seconds(60);
    assert_eq!(
        s.netbox_fail_running(at, live_since, other).await.unwrap(),
        0
    );
    assert_eq!(
        s.netbox_fail_running(at, live_since, live).await.unwrap(),
        1
    );
    assert_eq!(
        s.netbox_runs(Some("webhook"), 1).await.unwrap()[0].status,
        "failed"
    );
    let r4 = on_live
        .netbox_run_start("webhook", false, at)
        .await
        .unwrap()
        .unwrap();
    s.stop_instances(live, false, at).await.unwrap();
    assert_eq!(
        s.netbox_fail_running(at, live_since, other).await.unwrap(),
        1
    );
    assert_eq!(s.netbox_runs(Some("webhook"), 1).await.unwrap()[0].id, r4);
    assert_eq!(
        s.netbox_runs(Some("webhook"), 1).await.unwrap()[0].status,
        "failed"
    );

    // Outbox: an entry keeps its first time until done; failures are counted.
    let later = at + time::Duration::seconds(5);
    s.netbox_outbox_add(&[b.id], at).await.unwrap();
    s.netbox_outbox_add(&[b.id], later).await.unwrap();
    let q = s.netbox_outbox(10).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].machine_id, q[0].since, q[0].attempts), (b.id, at, 0));
    s.netbox_outbox_failed(&[b.id], "503").await.unwrap();
    let q = s.netbox_outbox(10).await.unwrap();
    assert_eq!(
        (q[0].attempts, q[0].last_error.as_deref()),
        (1, Some("503"))
    );
    assert_eq!(s.netbox_outbox_len().await.unwrap(), 1);
    s.netbox_outbox_done(&[b.id]).await.unwrap();
    assert_eq!(s.netbox_outbox_len().await.unwrap(), 0);

    // Cursors.
    assert_eq!(s.netbox_cursor("events").await.unwrap(), 0);
    s.netbox_set_cursor("events", 42).await.unwrap();
    s.netbox_set_cursor("events", 43).await.unwrap();
    assert_eq!(s.netbox_cursor("events").await.unwrap(), 43);
}

// ---------------------------------------------------------------------------
// Images (migration 0006): metadata, uniqueness by name and by content, and
// deletion refused while a machine uses the image.

mod image_conformance {
    macro_rules! both {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $( #[tokio::test] async fn $name() {
                    let (s, _g) = super::super::sqlite_store().await.unwrap();
                    super::$name(s).await;
                } )*
            }
            mod postgres {
                $( #[tokio::test] async fn $name() {
                    let Some((s, _g)) = super::super::postgres_store().await else { return };
                    super::$name(s).await;
                } )*
            }
        };
    }
    both!(
        images_round_trip_and_are_unique,
        images_in_use_cannot_be_deleted
    );

    use super::{insert, machine, now};
    use anvil_store::{ImageDelete, ImageRecord, NewEvent, Store, StoreError};
    use uuid::Uuid;

    fn image(name: &str, digest: char) -> ImageRecord {
        ImageRecord {
            id: Uuid::now_v7(),
            name: name.into(),
            kind: "disk".into(),
            os: Some("debian".into()),
            release: Some("12".into()),
            arch: Some("x86_64".into()),
            firmware: Some("bios+uefi".into()),
            login_user: Some("debian".into()),
            source_format: "qcow2".into(),
            source_size: 345_000_000,
            raw_size: 3 << 31, // above 2^32: sizes are 64-bit on both backends
            stored_size: 300_000_000,
            zero_bytes: 5 << 30,
            sha256: std::iter::repeat_n(digest, 64).collect(),
            created_at: now(),
        }
    }

    fn event(kind: &str) -> NewEvent {
        NewEvent {
            time: now(),
            actor: "test".into(),
            machine_id: None,
            kind: kind.into(),
            message: String::new(),
            data: serde_json::json!({}),
        }
    }

    async fn images_round_trip_and_are_unique(s: Store) {
        let a = image("debian-12", 'a');
        s.insert_image(&a, &event("image.import")).await.unwrap();
        assert_eq!(
            s.get_image_by_name("debian-12").await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(
            s.get_image_by_sha256(&a.sha256).await.unwrap(),
            Some(a.clone())
        );
        assert_eq!(s.get_image_by_name("nope").await.unwrap(), None);

        let same_name = image("debian-12", 'b');
        assert!(matches!(
            s.insert_image(&same_name, &event("image.import")).await,
            Err(StoreError::Duplicate { what: "name", .. })
        ));
        let same_content = image("other", 'a');
        assert!(matches!(
            s.insert_image(&same_content, &event("image.import")).await,
            Err(StoreError::Duplicate { what: "sha256", .. })
        ));

        let mut b = image("alma", 'c');
        b.os = None;
        b.release = None;
        b.login_user = None;
        s.insert_image(&b, &event("image.import")).await.unwrap();
        let names: Vec<_> = s
            .list_images()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["alma", "debian-12"]);
    }

    async fn images_in_use_cannot_be_deleted(s: Store) {
        let img = image("ubuntu-24.04", 'd');
        s.insert_image(&img, &event("image.import")).await.unwrap();
        let m1 = machine("web-2", 1);
        let m2 = machine("web-1", 2);
        insert(&s, &m1).await;
        insert(&s, &m2).await;
        assert!(s.set_machine_image(m1.id, Some(img.id)).await.unwrap());
        assert!(s.set_machine_image(m2.id, Some(img.id)).await.unwrap());
        assert!(
            !s.set_machine_image(Uuid::now_v7(), Some(img.id))
                .await
                .unwrap()
        );

        let users = s.image_users(Some(img.id)).await.unwrap();
        assert_eq!(
            users
                .iter()
                .map(|u| u.hostname.as_str())
                .collect::<Vec<_>>(),
            ["web-1", "web-2"]
        );
        assert_eq!(s.image_users(None).await.unwrap().len(), 2);
        assert_eq!(s.image_users(Some(Uuid::now_v7())).await.unwrap(), vec![]);

        assert_eq!(
            s.delete_image(img.id, &event("image.delete"))
                .await
                .unwrap(),
            ImageDelete::InUse(vec!["web-1".into(), "web-2".into()])
        );
        s.set_machine_image(m1.id, None).await.unwrap();
        s.set_machine_image(m2.id, None).await.unwrap();
        assert_eq!(
            s.delete_image(img.id, &event("image.delete"))
                .await
                .unwrap(),
            ImageDelete::Deleted
        );
        assert_eq!(
            s.delete_image(img.id, &event("image.delete"))
                .await
                .unwrap(),
            ImageDelete::NotFound
        );
        assert_eq!(s.get_image_by_name("ubuntu-24.04").await.unwrap(), None);
    }
}

mod installer_conformance {
    macro_rules! both {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $( #[tokio::test] async fn $name() {
                    let (s, _g) = super::super::sqlite_store().await.unwrap();
                    super::$name(s).await;
                } )*
            }
            mod postgres {
                $( #[tokio::test] async fn $name() {
                    let Some((s, _g)) = super::super::postgres_store().await else { return };
                    super::$name(s).await;
                } )*
            }
        };
    }
    both!(
        installer_images_are_stored_with_their_image,
        installer_runs_start_once_end_once_and_move_the_machine
    );

    use super::{ev, insert, machine, now};
    use anvil_store::{
        ImageDelete, ImageRecord, InstallerImageRecord, InstallerRunRecord, NewEvent, Store,
        StoreError,
    };
    use anvil_types::MachineState;
    use uuid::Uuid;

    fn image(name: &str, digest: char) -> (ImageRecord, InstallerImageRecord) {
        let id = Uuid::now_v7();
        (
            ImageRecord {
                id,
                name: name.into(),
                kind: "installer".into(),
                os: Some("rocky".into()),
                release: Some("9".into()),
                arch: Some("x86_64".into()),
                firmware: Some("bios+uefi".into()),
                login_user: Some("root".into()),
                source_format: "installer".into(),
                source_size: 90_000_000,
                raw_size: 0,
                stored_size: 90_000_000,
                zero_bytes: 0,
                sha256: std::iter::repeat_n(digest, 64).collect(),
                created_at: now(),
            },
            InstallerImageRecord {
                image_id: id,
                os: "rocky".into(),
                repo_url: Some("http://mirror.example/rocky/9/BaseOS/x86_64/os/".into()),
                kernel_sha256: "1".repeat(64),
                kernel_size: 13_000_000,
                initrd_sha256: "2".repeat(64),
                initrd_size: 3 << 31, // above 2^32 on both backends
            },
        )
    }

    fn event(kind: &str) -> NewEvent {
        NewEvent {
            time: now(),
            actor: "test".into(),
            machine_id: None,
            kind: kind.into(),
            message: String::new(),
            data: serde_json::json!({}),
        }
    }

    async fn installer_images_are_stored_with_their_image(s: Store) {
        let (img, inst) = image("rocky-9", 'a');
        s.insert_installer_image(&img, &inst, &event("image.import"))
            .await
            .unwrap();
        assert_eq!(
            s.get_image_by_name("rocky-9").await.unwrap(),
            Some(img.clone())
        );
        assert_eq!(s.installer_image(img.id).await.unwrap(), Some(inst));
        // A taken name writes neither row.
        let (dup, dup_inst) = image("rocky-9", 'b');
        assert!(matches!(
            s.insert_installer_image(&dup, &dup_inst, &event("image.import"))
                .await,
            Err(StoreError::Duplicate { what: "name", .. })
        ));
        assert_eq!(s.installer_image(dup.id).await.unwrap(), None);
        // Deleting the image deletes its installer row.
        assert_eq!(
            s.delete_image(img.id, &event("image.delete"))
                .await
                .unwrap(),
            ImageDelete::Deleted
        );
        assert_eq!(s.installer_image(img.id).await.unwrap(), None);
    }

    async fn installer_runs_start_once_end_once_and_move_the_machine(s: Store) {
        let (img, inst) = image("alma-9", 'c');
        s.insert_installer_image(&img, &inst, &event("image.import"))
            .await
            .unwrap();
        let mut m = machine("inst-1", 1);
        m.state = MachineState::Ready;
        insert(&s, &m).await;
        let at = now();
        let run = InstallerRunRecord {
            id: Uuid::now_v7(),
            machine_id: m.id,
            image_id: img.id,
            job_id: None,
            state: "running".into(),
            params: "{\"os\":\"alma\"}".into(),
            failure_reason: None,
            started_at: at,
            deadline: at + time::Duration::minutes(40),
            finished_at: None,
        };
        // From a state the machine is not in: nothing is written.
        assert!(matches!(
            s.start_installer_run(&run, MachineState::Allocated, &ev(&m, "deploy.start"))
                .await,
            Err(StoreError::Concurrent)
        ));
        assert_eq!(s.latest_installer_run(m.id).await.unwrap(), None);
        s.start_installer_run(&run, MachineState::Ready, &ev(&m, "deploy.start"))
            .await
            .unwrap();
        let got = s.get_machine(m.id).await.unwrap().unwrap();
        assert_eq!(got.state, MachineState::Deploying);
        assert_eq!(s.image_users(Some(img.id)).await.unwrap().len(), 1);
        assert_eq!(s.installer_run(run.id).await.unwrap(), Some(run.clone()));
        assert_eq!(s.running_installer_runs().await.unwrap(), vec![run.clone()]);
        assert_eq!(
            s.latest_installer_run(m.id).await.unwrap(),
            Some(run.clone())
        );

        s.insert_installer_token("h1", run.id, now()).await.unwrap();
        s.insert_installer_token("h2", run.id, now()).await.unwrap();
        assert_eq!(s.count_installer_tokens(run.id).await.unwrap(), 2);
        assert_eq!(s.installer_token_run("h2").await.unwrap(), Some(run.id));
        assert_eq!(s.installer_token_run("nope").await.unwrap(), None);

        // The machine moved away: the run's end with a machine move fails whole.
        let done = (m.id, MachineState::Deploying, MachineState::Deployed);
        s.set_state(
            m.id,
            MachineState::Deploying,
            MachineState::Broken,
            None,
            now(),
            &ev(&m, "machine.state"),
        )
        .await
        .unwrap();
        assert!(matches!(
            s.end_installer_run(
                run.id,
                "succeeded",
                None,
                Some(done),
                now(),
                &ev(&m, "deploy.succeeded")
            )
            .await,
            Err(StoreError::Concurrent)
        ));
        assert_eq!(
            s.installer_run(run.id).await.unwrap().unwrap().state,
            "running"
        );
        s.set_state(
            m.id,
            MachineState::Broken,
            MachineState::Deploying,
            None,
            now(),
            &ev(&m, "machine.state"),
        )
        .await
        .unwrap();
        s.end_installer_run(
            run.id,
            "succeeded",
            None,
            Some(done),
            now(),
            &ev(&m, "deploy.succeeded"),
        )
        .await
        .unwrap();
        assert_eq!(
            s.get_machine(m.id).await.unwrap().unwrap().state,
            MachineState::Deployed
        );
        let ended = s.installer_run(run.id).await.unwrap().unwrap();
        assert_eq!(ended.state, "succeeded");
        assert!(s.running_installer_runs().await.unwrap().is_empty());
        assert!(ended.finished_at.is_some());
        // Once only.
        assert!(matches!(
            s.end_installer_run(
                run.id,
                "failed",
                Some("late"),
                None,
                now(),
                &ev(&m, "deploy.failed")
            )
            .await,
            Err(StoreError::Concurrent)
        ));
        // Deleting the machine removes its runs and tokens.
        assert!(
            s.delete_machine(m.id, &ev(&m, "machine.delete"))
                .await
                .unwrap()
        );
        assert_eq!(s.installer_run(run.id).await.unwrap(), None);
        assert_eq!(s.installer_token_run("h1").await.unwrap(), None);
    }
}

// ---------------------------------------------------------------------------
// Power jobs' group commit (`Store::apply_job_updates`).

mod job_updates_conformance {
    macro_rules! both {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $( #[tokio::test] async fn $name() {
                    let (s, _g) = super::super::sqlite_store().await.unwrap();
                    super::$name(s).await;
                } )*
            }
            mod postgres {
                $( #[tokio::test] async fn $name() {
                    let Some((s, _g)) = super::super::postgres_store().await else { return };
                    super::$name(s).await;
                } )*
            }
        };
    }
    both!(job_updates_of_many_jobs_land_in_one_call_in_order);

    use super::{insert, machine, now};
    use anvil_store::{EventFilter, JobUpdate, NewEvent, Store};
    use anvil_types::{Job, JobStatus};
    use serde_json::json;
    use uuid::Uuid;

    async fn job_updates_of_many_jobs_land_in_one_call_in_order(s: Store) {
        let at = now();
        let (m1, m2) = (machine("ju1", 71), machine("ju2", 72));
        insert(&s, &m1).await;
        insert(&s, &m2).await;
        let queued = |m: Uuid, i: i64| Job {
            id: Uuid::now_v7(),
            kind: "pxe-boot".into(),
            machine_id: Some(m),
            status: JobStatus::Queued,
            actor: "test".into(),
            params: json!({}),
            result: None,
            error: None,
            created_at: at + time::Duration::milliseconds(i),
            started_at: None,
            finished_at: None,
        };
        let (ok, bad, later) = (queued(m1.id, 0), queued(m2.id, 1), queued(m2.id, 2));
        s.insert_jobs(&[ok.clone(), bad.clone(), later.clone()])
            .await
            .unwrap();
        let cursor = s
            .list_events(&EventFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .last()
            .map(|e| e.id);
        let done = at + time::Duration::seconds(3);
        let event = |m: Uuid, job: Uuid, kind: &str| NewEvent {
            time: done,
            actor: "test".into(),
            machine_id: Some(m),
            kind: kind.into(),
            message: format!("{kind} message"),
            data: json!({ "job": job }),
        };
        // Starts and finishes of several jobs, interleaved, in one call;
        // a start of a job that is no longer queued changes nothing.
        s.apply_job_updates(&[
            JobUpdate::Started { id: ok.id, at },
            JobUpdate::Started { id: bad.id, at },
            JobUpdate::Started { id: later.id, at },
            JobUpdate::Finished {
                id: ok.id,
                outcome: Ok(json!({"power_state": "on"})),
                at: done,
                power_state: Some((m1.id, "on".into())),
                event: Some(event(m1.id, ok.id, "power.pxe-boot")),
            },
            JobUpdate::Finished {
                id: bad.id,
                outcome: Err("the BMC at x did not answer".into()),
                at: done,
                power_state: None,
                event: Some(event(m2.id, bad.id, "power.pxe-boot.failed")),
            },
            JobUpdate::Started {
                id: ok.id,
                at: done + time::Duration::seconds(1),
            },
        ])
        .await
        .unwrap();
        let got = s.get_job(ok.id).await.unwrap().unwrap();
        assert_eq!(
            (
                got.status,
                got.result,
                got.error,
                got.started_at,
                got.finished_at
            ),
            (
                JobStatus::Succeeded,
                Some(json!({"power_state": "on"})),
                None,
                Some(at),
                Some(done)
            )
        );
        let got = s.get_job(bad.id).await.unwrap().unwrap();
        assert_eq!(
            (
                got.status,
                got.result,
                got.error.as_deref(),
                got.finished_at
            ),
            (
                JobStatus::Failed,
                None,
                Some("the BMC at x did not answer"),
                Some(done)
            )
        );
        let got = s.get_job(later.id).await.unwrap().unwrap();
        assert_eq!((got.status, got.started_at), (JobStatus::Running, Some(at)));
        // The power state only where the job read one; polling is no edit.
        let (g1, g2) = (
            s.get_machine(m1.id).await.unwrap().unwrap(),
            s.get_machine(m2.id).await.unwrap().unwrap(),
        );
        assert_eq!(
            (g1.power_state.as_deref(), g1.power_checked_at),
            (Some("on"), Some(done))
        );
        assert_eq!(g1.updated_at, m1.updated_at);
        assert_eq!(g2.power_state, None);
        // The events, in the order of the updates.
        let events = s
            .list_events(&EventFilter {
                after_id: cursor,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            events
                .iter()
                .map(|e| (e.kind.as_str(), e.data["job"].as_str().unwrap_or("")))
                .collect::<Vec<_>>(),
            [
                ("power.pxe-boot", ok.id.to_string().as_str()),
                ("power.pxe-boot.failed", bad.id.to_string().as_str())
            ]
        );
        s.apply_job_updates(&[]).await.unwrap();
    }
}

// Instances and job owners (migration 0009).
mod instances_conformance {
    use super::*;
    conformance!(orphaned_jobs_are_those_of_gone_instances);
}

fn much_later_fn(t: OffsetDateTime) -> OffsetDateTime {
    t + time::Duration::days(1)
}

async fn orphaned_jobs_are_those_of_gone_instances(s: Store) {
    use anvil_types::{Job, JobStatus};
    let at = now();
    let job = |kind: &str| Job {
        id: Uuid::now_v7(),
        kind: kind.into(),
        machine_id: None,
        status: JobStatus::Queued,
        actor: "test".into(),
        params: json!({}),
        result: None,
        error: None,
        created_at: at,
        started_at: None,
        finished_at: None,
    };
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for (id, host) in [(a, "a"), (b, "b"), (c, "c")] {
        s.register_instance(id, host, at).await.unwrap();
    }
    let on_a = s.clone().for_instance(a);
    let on_b = s.clone().for_instance(b);
    assert_eq!(on_a.instance(), Some(a));
    let (ja, jb, jb_done, unowned) = (job("deploy"), job("power-on"), job("power-off"), job("x"));
    on_a.insert_job(&ja).await.unwrap();
    on_b.insert_jobs(&[jb.clone(), jb_done.clone()])
        .await
        .unwrap();
    s.insert_job(&unowned).await.unwrap();
    on_b.finish_job(jb_done.id, Ok(&json!({})), at)
        .await
        .unwrap();
    let orphan_ids = |v: Vec<anvil_store::OrphanJob>| -> Vec<(Uuid, Option<Uuid>)> {
        v.into_iter().map(|o| (o.job.id, o.owner)).collect()
    };

    // All three instances live: only the job without an owner is an orphan.
    let live_since = at - time::Duration::seconds(60);
    assert_eq!(
        orphan_ids(s.orphaned_jobs(live_since).await.unwrap()),
        [(unowned.id, None)]
    );
    // b stops cleanly: its unfinished job (not the finished one) is orphaned.
    assert_eq!(s.stop_instances(b, false, at).await.unwrap(), 1);
    assert_eq!(
        orphan_ids(s.orphaned_jobs(live_since).await.unwrap()),
        [(jb.id, Some(b)), (unowned.id, None)]
    );
    // An instance taken for stopped that is still running learns it from
    // its next heartbeat and is live again (for the jobs it creates next).
    assert!(!s.instance_seen(b, at).await.unwrap());
    assert!(
        s.orphaned_jobs(live_since)
            .await
            .unwrap()
            .iter()
            .all(|o| o.job.id != jb.id)
    );
    assert!(s.instance_seen(b, at).await.unwrap());
    s.stop_instances(b, false, at).await.unwrap();
    // a falls silent: once `live_since` passes its last heartbeat, its job
    // is an orphan too; a heartbeat makes it live again.
    let later = at + time::Duration::seconds(120);
    assert!(s.instance_seen(c, later).await.unwrap());
    let live_since = later - time::Duration::seconds(60);
    assert_eq!(
        orphan_ids(s.orphaned_jobs(live_since).await.unwrap()),
        [(ja.id, Some(a)), (jb.id, Some(b)), (unowned.id, None)]
    );
    assert!(s.instance_seen(a, later).await.unwrap());
    assert_eq!(s.orphaned_jobs(live_since).await.unwrap().len(), 2);

    // The leader is the longest-running live instance: a (started first)
    // while it is live, c once a is silent.
    assert_eq!(s.instance_leader(live_since).await.unwrap(), Some(a));

    // Taking over is a compare-and-set on the owner: one instance wins.
    assert!(s.adopt_job(jb.id, Some(b), c).await.unwrap());
    assert!(
        !s.adopt_job(jb.id, Some(b), a).await.unwrap(),
        "taken already"
    );
    assert!(s.adopt_job(unowned.id, None, c).await.unwrap());
    assert!(!s.adopt_job(unowned.id, None, a).await.unwrap());
    assert!(s.orphaned_jobs(live_since).await.unwrap().is_empty());
    // A job its new owner could not take over is given back, to be tried
    // again; only by its owner.
    s.disown_job(unowned.id, a).await.unwrap();
    assert!(s.orphaned_jobs(live_since).await.unwrap().is_empty());
    s.disown_job(unowned.id, c).await.unwrap();
    assert_eq!(
        orphan_ids(s.orphaned_jobs(live_since).await.unwrap()),
        [(unowned.id, None)]
    );
    assert!(s.adopt_job(unowned.id, None, c).await.unwrap());
    // A finished job is nobody's to take.
    assert!(!s.adopt_job(jb_done.id, Some(b), c).await.unwrap());

    // On SQLite a starting instance stops all others at once.
    assert_eq!(
        s.stop_instances(c, true, later).await.unwrap(),
        1,
        "a; b was stopped"
    );
    assert_eq!(
        orphan_ids(s.orphaned_jobs(live_since).await.unwrap()),
        [(ja.id, Some(a))]
    );
    assert_eq!(s.instance_leader(live_since).await.unwrap(), Some(c));
    assert_eq!(
        s.instance_leader(much_later_fn(later)).await.unwrap(),
        None,
        "nobody seen since"
    );
    let listed = s.list_instances().await.unwrap();
    assert_eq!(listed.len(), 3);
    let of = |id| listed.iter().find(|i| i.id == id).unwrap();
    assert!(of(a).stopped_at.is_some() && of(b).stopped_at.is_some());
    assert!(of(c).stopped_at.is_none());
    assert_eq!(of(c).hostname, "c");

    // Pruning forgets old instances that own no unfinished job: b (its job
    // went to c), not a (its job is still queued), not c (seen since).
    let much_later = later + time::Duration::days(8);
    assert_eq!(
        s.prune_instances(much_later - time::Duration::days(7))
            .await
            .unwrap(),
        1
    );
    let left: Vec<Uuid> = s
        .list_instances()
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert!(left.contains(&a) && left.contains(&c) && !left.contains(&b));
}
