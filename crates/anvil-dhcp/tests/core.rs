//! The protocol core, exchange by exchange, with a fixed clock.

mod common;

use anvil_dhcp::{
    Decision, DhcpCore, DhcpMessageKind, DropReason, LeaseChange, LeaseState, Listener, Outcome,
    RecvMeta, StaticBootFacts,
};
use common::*;
use dhcproto::v4::{DhcpOption, MessageType};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time")
}

fn core_with(facts: StaticBootFacts) -> DhcpCore {
    DhcpCore::new(&config(), Arc::new(facts))
}

fn core() -> DhcpCore {
    core_with(StaticBootFacts::new())
}

fn lab() -> RecvMeta {
    direct("eth1", ip("10.0.0.2"))
}

fn reply(o: &Outcome) -> &anvil_dhcp::Reply {
    match &o.decision {
        Decision::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn dropped(o: &Outcome) -> DropReason {
    match &o.decision {
        Decision::Drop(r) => *r,
        other => panic!("expected a drop, got {other:?}"),
    }
}

/// DISCOVER → OFFER → REQUEST → ACK; returns the address.
fn dora(c: &mut DhcpCore, m: anvil_types::MacAddr, now: OffsetDateTime) -> Ipv4Addr {
    let o = c.handle(&Pkt::new(MessageType::Discover, m).bytes(), &lab(), now);
    let offer = decode(&reply(&o).bytes);
    assert_eq!(msg_type(&offer), MessageType::Offer);
    let a = offer.yiaddr();
    let o = c.handle(
        &Pkt::new(MessageType::Request, m)
            .requested(a)
            .server_id(ip("10.0.0.2"))
            .bytes(),
        &lab(),
        now,
    );
    let ack = decode(&reply(&o).bytes);
    assert_eq!(msg_type(&ack), MessageType::Ack, "{o:?}");
    assert_eq!(ack.yiaddr(), a);
    a
}

#[test]
fn full_dora() {
    let mut c = core();
    let m = mac(1);
    let o = c.handle(
        &Pkt::new(MessageType::Discover, m)
            .prl(&[1, 3, 6, 15, 26, 28, 42, 51])
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(o.received, Some(DhcpMessageKind::Discover));
    assert!(o.changes.is_empty(), "offers are never committed");
    let r = reply(&o);
    assert_eq!(r.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert_eq!(r.ifindex, Some(7));
    assert_eq!(r.source, Some(ip("10.0.0.2")));
    let offer = decode(&r.bytes);
    assert_eq!(msg_type(&offer), MessageType::Offer);
    assert_eq!(offer.yiaddr(), ip("10.0.0.100"));
    assert_eq!(offer.xid(), 0x1234_5678);
    assert_eq!(offer.chaddr(), &m.0);
    assert_eq!(offer.siaddr(), Ipv4Addr::UNSPECIFIED, "no boot for udhcpc");
    assert_eq!(
        offer.opts().get(dhcproto::v4::OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(ip("255.255.255.0")))
    );
    assert_eq!(
        offer.opts().get(dhcproto::v4::OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip("10.0.0.1")]))
    );
    assert_eq!(
        offer.opts().get(dhcproto::v4::OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![
            ip("10.0.0.2"),
            ip("10.0.0.3")
        ]))
    );
    assert_eq!(
        opt_bytes(&r.bytes, 51),
        Some(3600u32.to_be_bytes().to_vec())
    );
    assert_eq!(
        opt_bytes(&r.bytes, 58),
        Some(1800u32.to_be_bytes().to_vec())
    );
    assert_eq!(
        opt_bytes(&r.bytes, 59),
        Some(3150u32.to_be_bytes().to_vec())
    );
    assert_eq!(opt_bytes(&r.bytes, 54), Some(vec![10, 0, 0, 2]));
    assert_eq!(
        opt_bytes(&r.bytes, 26),
        Some(1500u16.to_be_bytes().to_vec())
    );
    assert_eq!(opt_bytes(&r.bytes, 15), Some(b"lab.example".to_vec()));
    assert_eq!(opt_bytes(&r.bytes, 42), Some(vec![10, 0, 0, 4]));
    assert_eq!(opt_bytes(&r.bytes, 28), Some(vec![10, 0, 0, 255]));
    // Option 55 order, after the message type, server id and lease times.
    assert_eq!(
        opt_codes(&r.bytes),
        vec![53, 54, 51, 58, 59, 1, 3, 6, 15, 26, 28, 42]
    );
    assert_eq!(o.observations.len(), 2);
    assert_eq!(o.observations[1].kind, DhcpMessageKind::Offer);
    assert_eq!(o.observations[1].ip, Some(ip("10.0.0.100")));
    assert!(!o.observations[1].known);

    let o = c.handle(
        &Pkt::new(MessageType::Request, m)
            .requested(ip("10.0.0.100"))
            .server_id(ip("10.0.0.2"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert!(o.durable_before_reply);
    assert_eq!(o.changes.len(), 1);
    let LeaseChange::Upsert(l) = &o.changes[0] else {
        panic!("expected an upsert")
    };
    assert_eq!(l.state, LeaseState::Bound);
    assert_eq!(l.network, "lab");
    assert_eq!(l.mac, m);
    assert_eq!(l.expires_at, t0() + Duration::hours(1));
    let ack = decode(&reply(&o).bytes);
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), ip("10.0.0.100"));
    assert_eq!(reply(&o).dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
}

#[test]
fn sequential_macs_never_share_an_offer() {
    let mut c = core();
    let mut seen = std::collections::HashSet::new();
    // Ten addresses in the range: ten consecutive MACs, no REQUEST yet.
    for i in 0..10 {
        let o = c.handle(
            &Pkt::new(MessageType::Discover, mac(0x10 + i)).bytes(),
            &lab(),
            t0(),
        );
        let a = decode(&reply(&o).bytes).yiaddr();
        assert!(seen.insert(a), "{a} offered twice");
    }
    // The pool is held by the offers: the eleventh client gets nothing.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(0x99)).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::NoAddress);
    // Once the holds run out (and are swept) it gets one.
    let later = t0() + Duration::seconds(31);
    assert!(c.sweep(later).is_empty(), "offers are not in the store");
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(0x99)).bytes(),
        &lab(),
        later,
    );
    assert!(seen.contains(&decode(&reply(&o).bytes).yiaddr()));
}

#[test]
fn rediscover_gets_the_same_address() {
    let mut c = core();
    let a = dora(&mut c, mac(1), t0());
    let _ = dora(&mut c, mac(2), t0());
    // Rebooted: DISCOVER again, same address, still bound.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(1)).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(decode(&reply(&o).bytes).yiaddr(), a);
    assert_eq!(c.lease(a).map(|l| l.state), Some(LeaseState::Bound));
    // An offer not yet requested is also re-offered.
    let o1 = c.handle(
        &Pkt::new(MessageType::Discover, mac(3)).bytes(),
        &lab(),
        t0(),
    );
    let o2 = c.handle(
        &Pkt::new(MessageType::Discover, mac(3)).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(
        decode(&reply(&o1).bytes).yiaddr(),
        decode(&reply(&o2).bytes).yiaddr()
    );
}

#[test]
fn requested_address_is_honoured_when_free() {
    let mut c = core();
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(1))
            .requested(ip("10.0.0.105"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(decode(&reply(&o).bytes).yiaddr(), ip("10.0.0.105"));
    // Outside the range: ignored.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(2))
            .requested(ip("10.0.0.50"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(decode(&reply(&o).bytes).yiaddr(), ip("10.0.0.100"));
}

#[test]
fn reservations_win_and_are_never_handed_to_others() {
    let known = mac(0x42);
    let facts = StaticBootFacts::new()
        .with_host(known, Some(ip("10.0.0.50")), Some("node-42"))
        // Reserved inside the dynamic range.
        .with_host(mac(0x43), Some(ip("10.0.0.100")), None)
        .with_host(mac(0x44), None, Some("node-44"));
    let mut c = core_with(facts);
    let o = c.handle(
        &Pkt::new(MessageType::Discover, known)
            .prl(&[1, 3, 12])
            .bytes(),
        &lab(),
        t0(),
    );
    let r = reply(&o);
    assert_eq!(decode(&r.bytes).yiaddr(), ip("10.0.0.50"));
    assert_eq!(opt_bytes(&r.bytes, 12), Some(b"node-42".to_vec()));
    assert!(o.observations.iter().all(|ob| ob.known));
    assert_eq!(dora(&mut c, known, t0()), ip("10.0.0.50"));

    // An unknown client never gets 10.0.0.100 (reserved for 0x43).
    let a = dora(&mut c, mac(1), t0());
    assert_eq!(a, ip("10.0.0.101"));
    assert_eq!(dora(&mut c, mac(0x43), t0()), ip("10.0.0.100"));
    // Known without reservation: dynamic, with its hostname.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(0x44))
            .prl(&[12])
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(opt_bytes(&reply(&o).bytes, 12), Some(b"node-44".to_vec()));

    // A known client asking for another address is refused.
    let o = c.handle(
        &Pkt::new(MessageType::Request, known)
            .requested(ip("10.0.0.105"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(msg_type(&decode(&reply(&o).bytes)), MessageType::Nak);
}

#[test]
fn reserved_address_taken_by_another_is_not_offered() {
    let mut c = core();
    let a = dora(&mut c, mac(1), t0());
    // The inventory now reserves that address for another machine.
    let facts = StaticBootFacts::new().with_host(mac(2), Some(a), None);
    let leases = c.leases();
    let mut c = core_with(facts);
    c.load(leases);
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(2)).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::ReservedAddressInUse);
    // The holder is refused at renewal, so the conflict resolves.
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(1)).ciaddr(a).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(msg_type(&decode(&reply(&o).bytes)), MessageType::Nak);
}

#[test]
fn reservation_only_network() {
    let mut cfg = config();
    cfg.networks[0].range_start = None;
    cfg.networks[0].range_end = None;
    cfg.validate().expect("valid");
    let facts = StaticBootFacts::new().with_host(mac(9), Some(ip("10.0.0.9")), None);
    let mut c = DhcpCore::new(&cfg, Arc::new(facts));
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(1)).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::NoRange);
    // Observed all the same: that is how unknown machines are discovered.
    assert_eq!(o.observations.len(), 1);
    assert_eq!(o.observations[0].kind, DhcpMessageKind::Discover);
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(9)).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(decode(&reply(&o).bytes).yiaddr(), ip("10.0.0.9"));
}

#[test]
fn relayed_requests_are_answered_to_the_relay_with_option_82() {
    let mut c = core();
    // Circuit id "eth0/1", remote id "sw1", and an unknown sub-option 9:
    // echoed byte for byte, in the relay's order.
    let o82 = vec![
        2, 3, b's', b'w', b'1', 1, 6, b'e', b't', b'h', b'0', b'/', b'1', 9, 1, 7,
    ];
    let mut p = Pkt::new(MessageType::Discover, mac(1)).giaddr(ip("10.2.0.1"));
    p.msg
        .opts_mut()
        .insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
            82.into(),
            o82.clone(),
        )));
    let bytes = p.bytes();
    // dhcproto encodes option 82 from its parsed form; put ours in raw.
    let bytes = with_raw_option(bytes, 82, &o82);
    let o = c.handle(&bytes, &relayed(ip("10.2.0.1")), t0());
    let r = reply(&o);
    assert_eq!(r.dest, SocketAddrV4::new(ip("10.2.0.1"), 67));
    assert_eq!(r.ifindex, None);
    let offer = decode(&r.bytes);
    assert_eq!(offer.giaddr(), ip("10.2.0.1"));
    assert_eq!(offer.yiaddr(), ip("10.2.0.10"));
    assert_eq!(opt_bytes(&r.bytes, 82), Some(o82.clone()));
    assert_eq!(*opt_codes(&r.bytes).last().expect("options"), 82);
    assert_eq!(opt_bytes(&r.bytes, 54), Some(vec![192, 0, 2, 10]));
    assert_eq!(
        opt_bytes(&r.bytes, 51),
        Some(7200u32.to_be_bytes().to_vec())
    );
    assert_eq!(o.observations[0].relay, Some(ip("10.2.0.1")));
    assert_eq!(o.observations[0].network, "rack2");

    // A giaddr no relay network contains.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(1))
            .giaddr(ip("10.3.0.1"))
            .bytes(),
        &relayed(ip("10.3.0.1")),
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::UnknownRelay);
    // A giaddr inside a directly attached network is not a relay network.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(1))
            .giaddr(ip("10.0.0.1"))
            .bytes(),
        &relayed(ip("10.0.0.1")),
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::UnknownRelay);

    // A relayed NAK goes to the relay with the broadcast bit set.
    let o = c.handle(
        &with_raw_option(
            Pkt::new(MessageType::Request, mac(5))
                .giaddr(ip("10.2.0.1"))
                .requested(ip("10.0.0.100"))
                .bytes(),
            82,
            &o82,
        ),
        &relayed(ip("10.2.0.1")),
        t0(),
    );
    let r = reply(&o);
    let nak = decode(&r.bytes);
    assert_eq!(msg_type(&nak), MessageType::Nak);
    assert!(nak.flags().broadcast());
    assert_eq!(r.dest, SocketAddrV4::new(ip("10.2.0.1"), 67));
    assert_eq!(opt_bytes(&r.bytes, 82), Some(o82));
}

/// Appends a raw option before the end option.
fn with_raw_option(mut bytes: Vec<u8>, code: u8, data: &[u8]) -> Vec<u8> {
    // Drop any encoding of the option dhcproto made, then re-add ours.
    let opts = anvil_dhcp::wire::raw_options(&bytes);
    bytes.truncate(240);
    for (c, v) in opts.into_iter().filter(|(c, _)| *c != code) {
        bytes.push(c);
        bytes.push(v.len() as u8);
        bytes.extend_from_slice(&v);
    }
    bytes.push(code);
    bytes.push(data.len() as u8);
    bytes.extend_from_slice(data);
    bytes.push(255);
    bytes
}

#[test]
fn nak_cases() {
    let mut c = core();
    // INIT-REBOOT with an address of another network: NAK, broadcast.
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(1))
            .requested(ip("192.168.1.20"))
            .bytes(),
        &lab(),
        t0(),
    );
    let r = reply(&o);
    let nak = decode(&r.bytes);
    assert_eq!(msg_type(&nak), MessageType::Nak);
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(r.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert!(o.changes.is_empty());
    assert_eq!(o.observations[1].kind, DhcpMessageKind::Nak);

    // An address bound to someone else.
    let a = dora(&mut c, mac(2), t0());
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(3))
            .requested(a)
            .server_id(ip("10.0.0.2"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(msg_type(&decode(&reply(&o).bytes)), MessageType::Nak);
    // Outside the range (the server's own address).
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(3))
            .requested(ip("10.0.0.2"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(msg_type(&decode(&reply(&o).bytes)), MessageType::Nak);
    // RENEWING someone else's address: NAK, broadcast even though ciaddr.
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(3)).ciaddr(a).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(reply(&o).dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    // A REQUEST with no address at all is dropped.
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(3)).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::MissingAddress);
}

#[test]
fn renewing_and_init_reboot() {
    let mut c = core();
    let a = dora(&mut c, mac(1), t0());
    let later = t0() + Duration::minutes(30);
    // RENEWING: unicast from ciaddr, answered to ciaddr:68.
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(1)).ciaddr(a).bytes(),
        &lab(),
        later,
    );
    let r = reply(&o);
    assert_eq!(r.dest, SocketAddrV4::new(a, 68));
    let ack = decode(&r.bytes);
    assert_eq!(ack.ciaddr(), a);
    assert_eq!(ack.yiaddr(), a);
    let LeaseChange::Upsert(l) = &o.changes[0] else {
        panic!("upsert")
    };
    assert_eq!(l.expires_at, later + Duration::hours(1));
    // INIT-REBOOT with its own address after a server restart (leases loaded).
    let mut c2 = core();
    c2.load(c.leases());
    let o = c2.handle(
        &Pkt::new(MessageType::Request, mac(1)).requested(a).bytes(),
        &lab(),
        later,
    );
    assert_eq!(msg_type(&decode(&reply(&o).bytes)), MessageType::Ack);
    // INIT-REBOOT with a free in-range address the server has no record of
    // (e.g. its lease database was lost): authoritative ACK.
    let o = c2.handle(
        &Pkt::new(MessageType::Request, mac(7))
            .requested(ip("10.0.0.107"))
            .bytes(),
        &lab(),
        later,
    );
    assert_eq!(msg_type(&decode(&reply(&o).bytes)), MessageType::Ack);
}

#[test]
fn request_for_another_server_releases_the_hold_silently() {
    let mut c = core();
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(1)).bytes(),
        &lab(),
        t0(),
    );
    let a = decode(&reply(&o).bytes).yiaddr();
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(1))
            .requested(ip("10.0.0.200"))
            .server_id(ip("10.0.0.254"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(o.decision, Decision::NoReply);
    assert!(o.changes.is_empty());
    assert!(c.lease(a).is_none(), "hold released");
}

#[test]
fn decline_quarantines_the_address() {
    let mut c = core();
    let a = dora(&mut c, mac(1), t0());
    let o = c.handle(
        &Pkt::new(MessageType::Decline, mac(1))
            .requested(a)
            .server_id(ip("10.0.0.2"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(o.decision, Decision::NoReply);
    assert_eq!(o.received, Some(DhcpMessageKind::Decline));
    let LeaseChange::Upsert(l) = &o.changes[0] else {
        panic!("upsert")
    };
    assert_eq!(l.state, LeaseState::Declined);
    assert_eq!(l.expires_at, t0() + Duration::hours(1));
    // The same client now gets another address; nobody gets the declined one.
    let b = dora(&mut c, mac(1), t0());
    assert_ne!(a, b);
    for i in 2..10 {
        assert_ne!(dora(&mut c, mac(i), t0()), a);
    }
    // After the quarantine the address is forgotten and usable.
    let later = t0() + Duration::hours(1) + Duration::seconds(1);
    let changes = c.sweep(later);
    assert!(changes.contains(&LeaseChange::Remove {
        network: "lab".into(),
        ip: a
    }));
    assert_eq!(dora(&mut c, mac(20), later), a);
    // A DECLINE for somebody else's address is ignored.
    let o = c.handle(
        &Pkt::new(MessageType::Decline, mac(99)).requested(b).bytes(),
        &lab(),
        later,
    );
    assert_eq!(dropped(&o), DropReason::NotOurLease);
}

#[test]
fn release_frees_the_address_and_keeps_affinity() {
    let mut c = core();
    let a = dora(&mut c, mac(1), t0());
    let o = c.handle(
        &Pkt::new(MessageType::Release, mac(1))
            .ciaddr(a)
            .server_id(ip("10.0.0.2"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(o.decision, Decision::NoReply);
    let LeaseChange::Upsert(l) = &o.changes[0] else {
        panic!("upsert")
    };
    assert_eq!(l.state, LeaseState::Released);
    assert_eq!(c.lease(a).map(|l| l.state), Some(LeaseState::Released));
    // A new client prefers never-used addresses...
    assert_ne!(dora(&mut c, mac(2), t0()), a);
    // ...the old one gets its address back.
    assert_eq!(dora(&mut c, mac(1), t0()), a);
    // Releasing an address one does not hold is ignored.
    let o = c.handle(
        &Pkt::new(MessageType::Release, mac(3)).ciaddr(a).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::NotOurLease);
}

#[test]
fn released_addresses_are_reused_when_the_pool_is_full() {
    let mut c = core();
    let a = dora(&mut c, mac(1), t0());
    c.handle(
        &Pkt::new(MessageType::Release, mac(1)).ciaddr(a).bytes(),
        &lab(),
        t0(),
    );
    for i in 2..11 {
        dora(&mut c, mac(i), t0());
    }
    assert_eq!(dora(&mut c, mac(11), t0()), a);
}

#[test]
fn inform_gets_options_without_a_lease() {
    let mut c = core();
    let o = c.handle(
        &Pkt::new(MessageType::Inform, mac(1))
            .ciaddr(ip("10.0.0.77"))
            .prl(&[1, 3, 6, 51])
            .bytes(),
        &lab(),
        t0(),
    );
    let r = reply(&o);
    assert_eq!(r.dest, SocketAddrV4::new(ip("10.0.0.77"), 68));
    let ack = decode(&r.bytes);
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.ciaddr(), ip("10.0.0.77"));
    assert_eq!(opt_bytes(&r.bytes, 51), None);
    assert_eq!(opt_bytes(&r.bytes, 3), Some(vec![10, 0, 0, 1]));
    assert!(o.changes.is_empty());
    assert!(!o.durable_before_reply);
    // From outside the network: dropped.
    let o = c.handle(
        &Pkt::new(MessageType::Inform, mac(1))
            .ciaddr(ip("10.5.0.7"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::WrongSubnet);
}

#[test]
fn expired_leases_are_reclaimed() {
    let mut c = core();
    let a = dora(&mut c, mac(1), t0());
    assert!(c.sweep(t0() + Duration::minutes(59)).is_empty());
    let later = t0() + Duration::hours(1) + Duration::seconds(1);
    let changes = c.sweep(later);
    assert_eq!(changes.len(), 1);
    let LeaseChange::Upsert(l) = &changes[0] else {
        panic!("upsert")
    };
    assert_eq!((l.ip, l.state), (a, LeaseState::Expired));
    // Sweeping again changes nothing.
    assert!(c.sweep(later).is_empty());
    // The client comes back: same address.
    assert_eq!(dora(&mut c, mac(1), later), a);
    // Even unswept, an expired lease does not block others.
    let mut c = core();
    let a = dora(&mut c, mac(1), t0());
    for i in 2..11 {
        dora(&mut c, mac(i), t0());
    }
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(50)).bytes(),
        &lab(),
        later,
    );
    assert_eq!(decode(&reply(&o).bytes).yiaddr(), a);
}

#[test]
fn failed_commit_turns_the_binding_back_into_a_hold() {
    let mut c = core();
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(1)).bytes(),
        &lab(),
        t0(),
    );
    let a = decode(&reply(&o).bytes).yiaddr();
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(1))
            .requested(a)
            .server_id(ip("10.0.0.2"))
            .bytes(),
        &lab(),
        t0(),
    );
    let retry = c.commit_failed(o.changes, t0());
    assert!(retry.is_empty());
    assert_eq!(c.lease(a).map(|l| l.state), Some(LeaseState::Offered));
    // The retransmitted REQUEST is ACKed.
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(1))
            .requested(a)
            .server_id(ip("10.0.0.2"))
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(msg_type(&decode(&reply(&o).bytes)), MessageType::Ack);
}

#[test]
fn load_skips_leases_of_unknown_networks() {
    let mut c = core();
    dora(&mut c, mac(1), t0());
    let mut leases = c.leases();
    let mut stray = leases[0].clone();
    stray.network = "gone".into();
    leases.push(stray);
    let mut outside = leases[0].clone();
    outside.ip = ip("10.7.0.1");
    leases.push(outside);
    let mut c2 = core();
    assert_eq!(c2.load(leases), 2);
    assert_eq!(c2.leases().len(), 1);
}

#[test]
fn pxe_clients_get_boot_files() {
    let mut c = core();
    let cases: [(Pkt, &str, Option<&str>); 5] = [
        (
            Pkt::new(MessageType::Discover, mac(1))
                .vendor("PXEClient:Arch:00000:UNDI:002001")
                .arch(0),
            "undionly.kpxe",
            None,
        ),
        (
            Pkt::new(MessageType::Discover, mac(2))
                .vendor("PXEClient:Arch:00007:UNDI:003000")
                .arch(7),
            "ipxe.efi",
            None,
        ),
        (
            Pkt::new(MessageType::Discover, mac(3))
                .vendor("PXEClient:Arch:00011:UNDI:003000")
                .arch(11),
            "ipxe-arm64.efi",
            None,
        ),
        (
            Pkt::new(MessageType::Discover, mac(4))
                .vendor("HTTPClient:Arch:00016:UNDI:003001")
                .arch(16),
            "http://10.0.0.2:8080/boot/ipxe.efi",
            Some("HTTPClient"),
        ),
        (
            Pkt::new(MessageType::Discover, mac(5))
                .vendor("PXEClient:Arch:00000:UNDI:002001")
                .arch(0)
                .user_class("iPXE"),
            "http://10.0.0.2:8080/boot/52:54:00:00:00:05.ipxe",
            None,
        ),
    ];
    for (p, file, class) in cases {
        let o = c.handle(&p.prl(&[1, 3, 6, 66, 67]).bytes(), &lab(), t0());
        let r = reply(&o);
        let m = decode(&r.bytes);
        assert_eq!(file_of(&m).as_deref(), Some(file));
        assert_eq!(m.siaddr(), ip("10.0.0.2"));
        assert_eq!(opt_bytes(&r.bytes, 67), Some(file.as_bytes().to_vec()));
        assert_eq!(
            opt_bytes(&r.bytes, 60),
            class.map(|c| c.as_bytes().to_vec())
        );
        assert_eq!(
            opt_bytes(&r.bytes, 43),
            None,
            "full mode needs no option 43"
        );
        if file.starts_with("http") {
            assert_eq!(opt_bytes(&r.bytes, 66), None);
        } else {
            assert_eq!(opt_bytes(&r.bytes, 66), Some(b"10.0.0.2".to_vec()));
        }
        assert_eq!(o.observations[1].boot.as_deref(), Some(file));
        // The ACK carries the same boot information.
        let a = m.yiaddr();
        let client = anvil_types::MacAddr(m.chaddr().try_into().expect("6-byte chaddr"));
        let req = Pkt::new(MessageType::Request, client)
            .requested(a)
            .server_id(ip("10.0.0.2"));
        let req = copy_class(req, &r.bytes);
        let o = c.handle(&req.bytes(), &lab(), t0());
        let ack = decode(&reply(&o).bytes);
        assert_eq!(msg_type(&ack), MessageType::Ack);
        assert_eq!(file_of(&ack).as_deref(), Some(file));
    }
    // A PXE client of an architecture without an iPXE build: address only.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(6))
            .vendor("PXEClient:Arch:00006:UNDI:003000")
            .arch(6)
            .bytes(),
        &lab(),
        t0(),
    );
    let m = decode(&reply(&o).bytes);
    assert_ne!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.fname(), None);
}

/// Builds the REQUEST's class options from what the OFFER implies (the test
/// knows the boot file, so it re-derives the client class from it).
fn copy_class(req: Pkt, offer: &[u8]) -> Pkt {
    let file = file_of(&decode(offer)).unwrap_or_default();
    if file.ends_with(".ipxe") {
        req.vendor("PXEClient:Arch:00000:UNDI:002001")
            .arch(0)
            .user_class("iPXE")
    } else if file.starts_with("http") {
        req.vendor("HTTPClient:Arch:00016:UNDI:003001").arch(16)
    } else if file == "undionly.kpxe" {
        req.vendor("PXEClient:Arch:00000:UNDI:002001").arch(0)
    } else if file == "ipxe.efi" {
        req.vendor("PXEClient:Arch:00007:UNDI:003000").arch(7)
    } else {
        req.vendor("PXEClient:Arch:00011:UNDI:003000").arch(11)
    }
}

fn site() -> RecvMeta {
    direct("eth2", ip("10.9.0.5"))
}

#[test]
fn proxy_mode_answers_pxe_clients_with_boot_info_only() {
    let mut c = core();
    let uuid: Vec<u8> = std::iter::once(0).chain(1..=16).collect();
    let p = Pkt::new(MessageType::Discover, mac(1))
        .vendor("PXEClient:Arch:00007:UNDI:003000")
        .arch(7)
        .opt(DhcpOption::ClientMachineIdentifier(uuid.clone()))
        .prl(&[1, 3, 43, 60, 66, 67, 97]);
    let o = c.handle(&p.bytes(), &site(), t0());
    let r = reply(&o);
    assert_eq!(r.dest, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    let m = decode(&r.bytes);
    assert_eq!(msg_type(&m), MessageType::Offer);
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.siaddr(), ip("10.9.0.5"));
    assert_eq!(file_of(&m).as_deref(), Some("ipxe.efi"));
    assert_eq!(opt_bytes(&r.bytes, 60), Some(b"PXEClient".to_vec()));
    assert_eq!(opt_bytes(&r.bytes, 43), Some(vec![6, 1, 8, 255]));
    assert_eq!(opt_bytes(&r.bytes, 97), Some(uuid));
    assert_eq!(opt_bytes(&r.bytes, 54), Some(vec![10, 9, 0, 5]));
    for absent in [1, 3, 51, 58, 59] {
        assert_eq!(opt_bytes(&r.bytes, absent), None, "option {absent}");
    }
    assert!(o.changes.is_empty());
    assert!(c.leases().is_empty());

    // The client's REQUEST to the site's DHCP server is not ours.
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(1))
            .vendor("PXEClient:Arch:00007:UNDI:003000")
            .requested(ip("10.9.0.77"))
            .server_id(ip("10.9.0.1"))
            .bytes(),
        &site(),
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::ProxyIgnored);

    // The REQUEST to port 4011 gets an ACK with the boot file, unicast back.
    let meta = RecvMeta {
        listener: Listener::ProxyPxe,
        src: SocketAddrV4::new(ip("10.9.0.77"), 68),
        local_port: 4011,
        ifindex: Some(8),
        interface: Some("eth2".into()),
        local_addr: Some(ip("10.9.0.5")),
    };
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(1))
            .vendor("PXEClient:Arch:00007:UNDI:003000")
            .arch(7)
            .ciaddr(ip("10.9.0.77"))
            .bytes(),
        &meta,
        t0(),
    );
    let r = reply(&o);
    assert_eq!(r.dest, SocketAddrV4::new(ip("10.9.0.77"), 68));
    let m = decode(&r.bytes);
    assert_eq!(msg_type(&m), MessageType::Ack);
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.ciaddr(), ip("10.9.0.77"));
    assert_eq!(file_of(&m).as_deref(), Some("ipxe.efi"));

    // A plain client (udhcpc) gets nothing, not even an observation.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(2))
            .vendor("udhcp 1.35.0")
            .bytes(),
        &site(),
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::ProxyNotPxe);
    assert!(o.observations.is_empty());
    // iPXE in proxy mode gets its script; UEFI HTTP its URL, no option 43.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(3))
            .vendor("PXEClient:Arch:00007:UNDI:003010")
            .arch(7)
            .user_class("iPXE")
            .bytes(),
        &site(),
        t0(),
    );
    assert_eq!(
        file_of(&decode(&reply(&o).bytes)).as_deref(),
        Some("http://10.9.0.5:8080/boot/52:54:00:00:00:03.ipxe")
    );
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(4))
            .vendor("HTTPClient:Arch:00016:UNDI:003001")
            .arch(16)
            .bytes(),
        &site(),
        t0(),
    );
    let r = reply(&o);
    assert_eq!(opt_bytes(&r.bytes, 60), Some(b"HTTPClient".to_vec()));
    assert_eq!(opt_bytes(&r.bytes, 43), None);
    // Port 4011 traffic for a full-mode network is not answered.
    let mut lab4011 = lab();
    lab4011.listener = Listener::ProxyPxe;
    let o = c.handle(
        &Pkt::new(MessageType::Request, mac(1))
            .vendor("PXEClient:Arch:00007:UNDI:003000")
            .ciaddr(ip("10.0.0.5"))
            .bytes(),
        &lab4011,
        t0(),
    );
    assert_eq!(dropped(&o), DropReason::NotProxyNetwork);
}

#[test]
fn replies_fit_the_maximum_message_size() {
    let mut cfg = config();
    // 60 DNS servers (240 bytes) and a long domain make the reply too big
    // for 576 bytes.
    cfg.networks[0].dns = (1..=60).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
    cfg.networks[0].domain = Some(format!("{}.example", "a".repeat(60)));
    let mut c = DhcpCore::new(&cfg, Arc::new(StaticBootFacts::new()));
    let all: Vec<u8> = (1..=254).collect();
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(1)).prl(&all).bytes(),
        &lab(),
        t0(),
    );
    let r = reply(&o);
    assert!(r.bytes.len() <= 576 - 28, "{} bytes", r.bytes.len());
    let codes = opt_codes(&r.bytes);
    for required in [53, 54, 51, 1] {
        assert!(codes.contains(&required), "{required} missing: {codes:?}");
    }
    // Announcing 1500 bytes lets everything through.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(2))
            .prl(&all)
            .opt(DhcpOption::MaxMessageSize(1500))
            .bytes(),
        &lab(),
        t0(),
    );
    let r = reply(&o);
    assert!(r.bytes.len() > 548 && r.bytes.len() <= 1472);
    assert_eq!(opt_bytes(&r.bytes, 6).map(|v| v.len()), Some(240));
    // A client claiming less than 576 is held to 576.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(3))
            .prl(&all)
            .opt(DhcpOption::MaxMessageSize(300))
            .bytes(),
        &lab(),
        t0(),
    );
    assert!(reply(&o).bytes.len() <= 548);
}

#[test]
fn without_a_request_list_everything_configured_is_sent() {
    let mut c = core();
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(1)).bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(
        opt_codes(&reply(&o).bytes),
        vec![53, 54, 51, 58, 59, 1, 3, 6, 15, 26, 28, 42]
    );
    // With one: the list's order, then mask/router/DNS even if not asked.
    let o = c.handle(
        &Pkt::new(MessageType::Discover, mac(2))
            .prl(&[42, 26])
            .bytes(),
        &lab(),
        t0(),
    );
    assert_eq!(
        opt_codes(&reply(&o).bytes),
        vec![53, 54, 51, 58, 59, 42, 26, 1, 3, 6]
    );
}

#[test]
fn malformed_packets_are_dropped_with_a_reason() {
    let mut c = core();
    let good = Pkt::new(MessageType::Discover, mac(1)).bytes();
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::Truncated),
        (good[..100].to_vec(), DropReason::Truncated),
        (vec![1; 5000], DropReason::Oversize),
        (
            {
                let mut b = good.clone();
                b[0] = 2;
                b
            },
            DropReason::NotBootRequest,
        ),
        (
            {
                let mut b = good.clone();
                b[2] = 16;
                b
            },
            DropReason::BadHardwareAddress,
        ),
        (
            {
                let mut b = good.clone();
                b[1] = 6;
                b
            },
            DropReason::BadHardwareAddress,
        ),
        (
            {
                let mut b = good.clone();
                b[236] = 0;
                b
            },
            DropReason::BadMagic,
        ),
        (good[..240].to_vec(), DropReason::NoMessageType),
        (
            {
                let mut b = good.clone();
                b[28..34].copy_from_slice(&[1, 0, 0x5e, 0, 0, 1]);
                b
            },
            DropReason::InvalidMac,
        ),
        (
            Pkt::new(MessageType::Offer, mac(1)).bytes(),
            DropReason::UnexpectedMessageType,
        ),
    ];
    for (bytes, want) in cases {
        assert_eq!(dropped(&c.handle(&bytes, &lab(), t0())), want);
    }
    // No network for this interface/address.
    let o = c.handle(&good, &direct("eth9", ip("172.16.0.1")), t0());
    assert_eq!(dropped(&o), DropReason::NoNetwork);
    // A directly attached network without `interface` is found by address.
    let mut cfg = config();
    cfg.networks[0].interface = None;
    let mut c2 = DhcpCore::new(&cfg, Arc::new(StaticBootFacts::new()));
    let o = c2.handle(&good, &direct("whatever", ip("10.0.0.2")), t0());
    assert!(matches!(o.decision, Decision::Reply(_)));
}

#[test]
fn random_and_mutated_input_never_panics() {
    // A small deterministic PRNG (xorshift) so failures reproduce.
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut c = core();
    let seeds = [
        Pkt::new(MessageType::Discover, mac(1))
            .vendor("PXEClient:Arch:00007:UNDI:003000")
            .arch(7)
            .prl(&[1, 3, 6, 43, 60, 66, 67])
            .bytes(),
        Pkt::new(MessageType::Request, mac(2))
            .requested(ip("10.0.0.101"))
            .server_id(ip("10.0.0.2"))
            .bytes(),
        Pkt::new(MessageType::Release, mac(2))
            .ciaddr(ip("10.0.0.101"))
            .bytes(),
    ];
    let metas = [lab(), relayed(ip("10.2.0.1")), site()];
    for i in 0..30_000u64 {
        let mut b = seeds[(i % 3) as usize].clone();
        let flips = rnd() % 8;
        for _ in 0..flips {
            let pos = (rnd() as usize) % b.len();
            b[pos] = rnd() as u8;
        }
        if rnd() % 5 == 0 {
            let cut = (rnd() as usize) % (b.len() + 1);
            b.truncate(cut);
        }
        if rnd() % 7 == 0 {
            let extra = (rnd() % 300) as usize;
            b.extend((0..extra).map(|_| rnd() as u8));
        }
        let o = c.handle(&b, &metas[(i % 3) as usize], t0());
        if let Decision::Reply(r) = &o.decision {
            assert!(r.bytes.len() <= 1472);
            decode(&r.bytes);
        }
    }
}
