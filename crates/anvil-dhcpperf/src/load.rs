//! The client state machine and the send/receive loop.
//!
//! One thread drives every client: it admits clients up to the in-flight
//! bound, batches their requests into `sendmmsg`, drains replies with
//! `recvmmsg`, retransmits what timed out, and sleeps briefly only when there
//! is nothing to do. Replies are matched to clients by xid (xid = salt +
//! client index) and checked against the client's MAC and state.

use crate::net::{BATCH, RelaySocket};
use crate::wire::{self, REQUEST_LEN, Request};
use crate::{Args, Macs};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub struct Plan {
    pub clients: u32,
    pub macs: Macs,
    pub seed: u64,
    pub inflight: u32,
    pub timeout: Duration,
    pub retries: u8,
    pub time_limit: Duration,
    pub idle_sleep: Duration,
    pub giaddr: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    /// DISCOVER sent, no OFFER yet.
    Discovering,
    /// REQUEST sent for `offered`, no ACK yet.
    Requesting,
    Done,
    /// Gave up after too many retransmits or NAKs.
    Failed,
}

struct Client {
    mac: [u8; 6],
    state: State,
    /// Retransmits of the current message (reset when the state advances).
    tries: u8,
    /// Restarts after a NAK.
    restarts: u8,
    /// Bumped on every send, so stale timeout entries are recognised.
    epoch: u32,
    /// First DISCOVER of this DORA: latency is measured from here, so
    /// retransmits and NAK restarts count against the server.
    started: Option<Instant>,
    offered: Ipv4Addr,
    server_id: Ipv4Addr,
    acked: Option<Ipv4Addr>,
}

/// Everything counted during a run.
#[derive(Debug, Default)]
pub struct Report {
    pub clients: u32,
    pub completed: u32,
    pub elapsed: Duration,
    /// DISCOVER→ACK per completed client, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    pub retransmits_discover: u64,
    pub retransmits_request: u64,
    pub failed: u32,
    pub unfinished: u32,
    /// An address ACKed to a client while another client holds it.
    pub duplicates: u64,
    /// An ACK whose yiaddr differs from the client's OFFER (or, for a
    /// repeated ACK, from the first ACK).
    pub mismatches: u64,
    /// Replies for no client of ours, or with the wrong MAC for their xid.
    pub stray: u64,
    /// Replies to a message already answered (after a retransmit), or an
    /// OFFER after the client moved on.
    pub late: u64,
    /// Datagrams that are not DHCP replies.
    pub garbage: u64,
    /// Replies with a message type we never expect (e.g. a second DISCOVER
    /// echoed back).
    pub unexpected: u64,
}

/// splitmix64: deterministic and good enough for MACs and a salt; no need
/// for a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn make_macs(n: u32, kind: Macs, rng: &mut Rng) -> Vec<[u8; 6]> {
    match kind {
        Macs::Seq => (1..=n)
            .map(|i| {
                let b = i.to_be_bytes();
                [0x52, 0x54, 0x00, b[1], b[2], b[3]]
            })
            .collect(),
        Macs::Random => {
            let mut seen = HashSet::with_capacity(n as usize);
            let mut out = Vec::with_capacity(n as usize);
            while out.len() < n as usize {
                let r = rng.next().to_be_bytes();
                // Locally administered (bit 1) unicast (bit 0 clear), as a
                // test must not pretend to be a real vendor's NIC.
                let mac = [r[0] & 0xfc | 0x02, r[1], r[2], r[3], r[4], r[5]];
                if seen.insert(mac) {
                    out.push(mac);
                }
            }
            out
        }
    }
}

/// Runs the whole load against the server behind `sock`.
pub fn run(sock: &mut RelaySocket, plan: &Plan) -> anyhow::Result<Report> {
    let mut rng = Rng(plan.seed);
    let n = plan.clients;
    let mut clients: Vec<Client> = make_macs(n, plan.macs, &mut rng)
        .into_iter()
        .map(|mac| Client {
            mac,
            state: State::Waiting,
            tries: 0,
            restarts: 0,
            epoch: 0,
            started: None,
            offered: Ipv4Addr::UNSPECIFIED,
            server_id: Ipv4Addr::UNSPECIFIED,
            acked: None,
        })
        .collect();
    // xids are salt + index, so a reply finds its client in O(1) and a
    // leftover reply from an earlier run (another salt) is not mistaken
    // for one of ours.
    let salt = rng.next() as u32;
    let mut r = Report {
        clients: n,
        latencies_us: Vec::with_capacity(n as usize),
        ..Report::default()
    };
    // Address → client that holds it, to catch an address given twice.
    let mut holders: HashMap<Ipv4Addr, u32> = HashMap::with_capacity(n as usize);
    // Timeout entries in send order; the timeout is constant, so this is
    // also deadline order. An entry is stale when the client's epoch moved on.
    let mut timeouts: VecDeque<(Instant, u32, u32)> = VecDeque::new();
    // Requests waiting for sendmmsg: client index and message.
    let mut to_send: VecDeque<(u32, Request)> = VecDeque::new();
    let mut out = vec![[0u8; REQUEST_LEN]; BATCH];
    let mut out_who: Vec<(u32, Request)> = Vec::with_capacity(BATCH);

    let mut next_client = 0u32;
    let mut inflight = 0u32;
    let mut finished = 0u32;
    let start = Instant::now();
    let deadline = start + plan.time_limit;
    let mut last_ack = start;

    while finished < n {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let mut busy = false;

        // 1. Replies first: they free in-flight slots and queue REQUESTs.
        loop {
            let got = sock.recv()?;
            if got == 0 {
                break;
            }
            busy = true;
            let now = Instant::now();
            for i in 0..got {
                let (bytes, src) = sock.datagram(i);
                let Some(rep) = wire::parse(bytes) else {
                    r.garbage += 1;
                    continue;
                };
                let idx = rep.xid.wrapping_sub(salt);
                let Some(c) = clients.get_mut(idx as usize) else {
                    r.stray += 1;
                    continue;
                };
                if c.mac != rep.chaddr {
                    r.stray += 1;
                    continue;
                }
                match (rep.kind, c.state) {
                    (wire::OFFER, State::Discovering) => {
                        r.offers += 1;
                        c.offered = rep.yiaddr;
                        // Relayed replies come from the server, so its
                        // source address stands in for a missing option 54.
                        c.server_id = rep.server_id.unwrap_or(src);
                        c.state = State::Requesting;
                        c.tries = 0;
                        to_send.push_back((
                            idx,
                            Request::Select {
                                requested: c.offered,
                                server_id: c.server_id,
                            },
                        ));
                    }
                    (wire::OFFER, _) => r.late += 1,
                    (wire::ACK, State::Requesting) => {
                        r.acks += 1;
                        if rep.yiaddr != c.offered {
                            r.mismatches += 1;
                        }
                        if let Some(other) = holders.insert(rep.yiaddr, idx)
                            && other != idx
                        {
                            r.duplicates += 1;
                        }
                        c.acked = Some(rep.yiaddr);
                        c.state = State::Done;
                        c.epoch = c.epoch.wrapping_add(1);
                        let started = c.started.unwrap_or(now);
                        let us = now.duration_since(started).as_micros();
                        r.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                        r.completed += 1;
                        inflight -= 1;
                        finished += 1;
                        last_ack = now;
                    }
                    (wire::ACK, State::Done) => {
                        // The answer to a retransmitted REQUEST: it must
                        // repeat the first ACK.
                        r.late += 1;
                        if c.acked != Some(rep.yiaddr) {
                            r.mismatches += 1;
                        }
                    }
                    (wire::ACK, _) => r.late += 1,
                    (wire::NAK, State::Requesting) => {
                        r.naks += 1;
                        // As a client would: start over with a DISCOVER.
                        if c.restarts >= plan.retries {
                            c.state = State::Failed;
                            c.epoch = c.epoch.wrapping_add(1);
                            r.failed += 1;
                            inflight -= 1;
                            finished += 1;
                        } else {
                            c.restarts += 1;
                            c.tries = 0;
                            c.state = State::Discovering;
                            to_send.push_back((idx, Request::Discover));
                        }
                    }
                    (wire::NAK, _) => {
                        r.naks += 1;
                        r.late += 1;
                    }
                    _ => r.unexpected += 1,
                }
            }
        }

        // 2. Retransmit what timed out.
        let now = Instant::now();
        while let Some(&(at, idx, epoch)) = timeouts.front() {
            if at > now {
                break;
            }
            timeouts.pop_front();
            let c = &mut clients[idx as usize];
            if c.epoch != epoch || !matches!(c.state, State::Discovering | State::Requesting) {
                continue;
            }
            busy = true;
            if c.tries >= plan.retries {
                c.state = State::Failed;
                c.epoch = c.epoch.wrapping_add(1);
                r.failed += 1;
                inflight -= 1;
                finished += 1;
                continue;
            }
            c.tries += 1;
            let req = if c.state == State::Discovering {
                r.retransmits_discover += 1;
                Request::Discover
            } else {
                r.retransmits_request += 1;
                Request::Select {
                    requested: c.offered,
                    server_id: c.server_id,
                }
            };
            to_send.push_back((idx, req));
        }

        // 3. Admit new clients up to the in-flight bound.
        while inflight < plan.inflight && next_client < n {
            let c = &mut clients[next_client as usize];
            c.state = State::Discovering;
            to_send.push_back((next_client, Request::Discover));
            next_client += 1;
            inflight += 1;
            busy = true;
        }

        // 4. Send in batches until done or the socket buffer is full.
        while !to_send.is_empty() {
            out_who.clear();
            while out_who.len() < BATCH {
                let Some((idx, req)) = to_send.pop_front() else {
                    break;
                };
                let c = &clients[idx as usize];
                // A request queued while the socket was full may have been
                // overtaken by a reply since (an OFFER for a DISCOVER
                // retransmit): sending it would only provoke a late reply.
                let current = match req {
                    Request::Discover => c.state == State::Discovering,
                    Request::Select { .. } => c.state == State::Requesting,
                };
                if !current {
                    continue;
                }
                let slot = &mut out[out_who.len()];
                wire::encode(slot, req, salt.wrapping_add(idx), c.mac, plan.giaddr);
                out_who.push((idx, req));
            }
            if out_who.is_empty() {
                break;
            }
            let sent = sock.send(&out, out_who.len())?;
            // What the kernel did not take goes back, in order, for the
            // next round.
            for &item in out_who[sent..].iter().rev() {
                to_send.push_front(item);
            }
            if sent == 0 {
                break;
            }
            busy = true;
            let now = Instant::now();
            for &(idx, _) in &out_who[..sent] {
                let c = &mut clients[idx as usize];
                c.epoch = c.epoch.wrapping_add(1);
                c.started.get_or_insert(now);
                timeouts.push_back((now + plan.timeout, idx, c.epoch));
            }
        }

        if !busy {
            std::thread::sleep(plan.idle_sleep);
        }
    }

    r.elapsed = last_ack.duration_since(start);
    r.unfinished = n - finished;
    r.latencies_us.sort_unstable();
    Ok(r)
}

/// The figures of a run, as text and as JSON.
pub struct Summary {
    json: serde_json::Value,
    text: String,
}

fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank: the smallest value with at least p% of samples at or
    // below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl Summary {
    pub fn new(args: &Args, r: &Report, server_cpu_us: Option<u64>, self_cpu_us: u64) -> Summary {
        let secs = r.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            f64::from(r.completed) / secs
        } else {
            0.0
        };
        let ms = |v: Option<u32>| v.map(|us| f64::from(us) / 1000.0);
        let (p50, p99, max) = (
            ms(percentile(&r.latencies_us, 50.0)),
            ms(percentile(&r.latencies_us, 99.0)),
            ms(r.latencies_us.last().copied()),
        );
        let per_dora = |us: u64| (r.completed > 0).then(|| us as f64 / f64::from(r.completed));
        let server_us_per_dora = server_cpu_us.and_then(per_dora);
        let self_us_per_dora = per_dora(self_cpu_us);
        let errors = r.duplicates + r.mismatches;
        let macs = match args.macs {
            Macs::Seq => "seq",
            Macs::Random => "random",
        };
        let json = serde_json::json!({
            "label": args.label,
            "server": args.server.to_string(),
            "relay": args.relay.to_string(),
            "macs": macs,
            "clients": r.clients,
            "inflight": args.inflight,
            "completed": r.completed,
            "elapsed_s": secs,
            "dora_per_s": rate,
            "latency_ms": { "p50": p50, "p99": p99, "max": max },
            "offers": r.offers,
            "acks": r.acks,
            "naks": r.naks,
            "retransmits": { "discover": r.retransmits_discover, "request": r.retransmits_request },
            "failed": r.failed,
            "unfinished": r.unfinished,
            "duplicates": r.duplicates,
            "mismatches": r.mismatches,
            "stray": r.stray,
            "late": r.late,
            "garbage": r.garbage,
            "unexpected": r.unexpected,
            "server_cpu_us": server_cpu_us,
            "server_cpu_us_per_dora": server_us_per_dora,
            "generator_cpu_us_per_dora": self_us_per_dora,
            "errors": errors,
        });
        let f = |v: Option<f64>, prec: usize| match v {
            Some(v) => format!("{v:.prec$}"),
            None => "-".into(),
        };
        let mut t = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            t,
            "anvil-dhcpperf {}: {} clients, macs={macs}, inflight={}, server={}, relay={}",
            args.label, r.clients, args.inflight, args.server, args.relay
        );
        let _ = writeln!(
            t,
            "  completed   {}/{} in {secs:.3} s = {rate:.0} DORA/s",
            r.completed, r.clients
        );
        let _ = writeln!(
            t,
            "  latency     p50 {} ms, p99 {} ms, max {} ms (first DISCOVER -> ACK)",
            f(p50, 2),
            f(p99, 2),
            f(max, 2)
        );
        let _ = writeln!(
            t,
            "  replies     {} offers, {} acks, {} naks; retransmits {} discover + {} request; failed {}, unfinished {}",
            r.offers,
            r.acks,
            r.naks,
            r.retransmits_discover,
            r.retransmits_request,
            r.failed,
            r.unfinished
        );
        let _ = writeln!(
            t,
            "  correctness duplicates {}, mismatches {} (stray {}, late {}, garbage {}, unexpected {})",
            r.duplicates, r.mismatches, r.stray, r.late, r.garbage, r.unexpected
        );
        let _ = writeln!(
            t,
            "  CPU         server {} us/DORA ({} s, pids {:?}); generator {} us/DORA",
            f(server_us_per_dora, 1),
            f(server_cpu_us.map(|u| u as f64 / 1e6), 3),
            args.server_pid,
            f(self_us_per_dora, 1),
        );
        if errors > 0 {
            let _ = writeln!(t, "  FAILED: duplicate or mismatched leases");
        }
        Summary { json, text: t }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn json(&self) -> &serde_json::Value {
        &self.json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_macs_count_up_from_one() {
        let m = make_macs(300, Macs::Seq, &mut Rng(1));
        assert_eq!(m[0], [0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(m[255], [0x52, 0x54, 0, 0, 1, 0]);
        assert_eq!(m.len(), 300);
    }

    #[test]
    fn random_macs_are_unique_local_unicast_and_seeded() {
        let a = make_macs(5000, Macs::Random, &mut Rng(7));
        let b = make_macs(5000, Macs::Random, &mut Rng(7));
        assert_eq!(a, b);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 5000);
        assert!(a.iter().all(|m| m[0] & 0x03 == 0x02));
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[5], 99.0), Some(5));
        assert_eq!(percentile(&[], 99.0), None);
    }
}

/// The whole loop against a small in-process server on loopback (on a high
/// port: the fake server answers the request's source, not giaddr:67, so no
/// privilege is needed).
#[cfg(test)]
mod loop_tests {
    use super::*;
    use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};
    use std::net::{SocketAddrV4, UdpSocket};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Copy)]
    enum Fault {
        None,
        /// Offers and ACKs one address to everybody.
        SameAddress,
        /// ACKs an address other than the one offered.
        AckOther,
        /// Ignores the first DISCOVER of each client (forces retransmits).
        DropFirst,
    }

    /// Serves until `stop`; each new MAC gets the next address from 10.200.0.0.
    fn fake_server(
        fault: Fault,
        stop: Arc<AtomicBool>,
    ) -> (SocketAddrV4, std::thread::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = match s.local_addr().expect("addr") {
            std::net::SocketAddr::V4(a) => a,
            other => panic!("not v4: {other}"),
        };
        let h = std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut given: HashMap<Vec<u8>, u32> = HashMap::new();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, src)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let req = v4::Message::decode(&mut Decoder::new(&buf[..n])).expect("decodes");
                let kind = match req.opts().get(OptionCode::MessageType) {
                    Some(DhcpOption::MessageType(MessageType::Discover)) => MessageType::Offer,
                    Some(DhcpOption::MessageType(MessageType::Request)) => MessageType::Ack,
                    other => panic!("unexpected request {other:?}"),
                };
                let mac = &req.chaddr()[..6];
                if matches!(fault, Fault::DropFirst)
                    && kind == MessageType::Offer
                    && seen.insert(mac.to_vec())
                {
                    continue;
                }
                let next = u32::try_from(given.len()).expect("few clients");
                let base = *given.entry(mac.to_vec()).or_insert(0x0ac8_0000 + next);
                let mut ip = match fault {
                    Fault::SameAddress => Ipv4Addr::new(10, 200, 0, 10),
                    _ => Ipv4Addr::from(base),
                };
                if matches!(fault, Fault::AckOther) && kind == MessageType::Ack {
                    ip = Ipv4Addr::from(base + 0x0001_0000);
                }
                let mut m = v4::Message::default();
                m.set_opcode(v4::Opcode::BootReply)
                    .set_xid(req.xid())
                    .set_yiaddr(ip)
                    .set_giaddr(req.giaddr())
                    .set_chaddr(mac);
                m.opts_mut().insert(DhcpOption::MessageType(kind));
                m.opts_mut()
                    .insert(DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST));
                let mut out = Vec::new();
                m.encode(&mut Encoder::new(&mut out)).expect("encode");
                s.send_to(&out, src).expect("send");
            }
        });
        (addr, h)
    }

    fn load(fault: Fault, macs: Macs, clients: u32) -> Report {
        let stop = Arc::new(AtomicBool::new(false));
        let (server, h) = fake_server(fault, stop.clone());
        let mut sock =
            RelaySocket::open(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), server, 1 << 20)
                .expect("relay socket");
        let r = run(
            &mut sock,
            &Plan {
                clients,
                macs,
                seed: 3,
                inflight: 32,
                timeout: Duration::from_millis(100),
                retries: 3,
                time_limit: Duration::from_secs(20),
                idle_sleep: Duration::from_micros(50),
                giaddr: Ipv4Addr::new(127, 0, 0, 2),
            },
        )
        .expect("run");
        stop.store(true, Ordering::Relaxed);
        h.join().expect("server thread");
        r
    }

    #[test]
    fn completes_every_client_against_a_correct_server() {
        for macs in [Macs::Seq, Macs::Random] {
            let r = load(Fault::None, macs, 2000);
            assert_eq!(r.completed, 2000);
            assert_eq!(r.acks, 2000);
            assert_eq!(
                (r.duplicates, r.mismatches, r.failed, r.unfinished),
                (0, 0, 0, 0)
            );
            assert_eq!(r.latencies_us.len(), 2000);
            assert_eq!(r.retransmits_discover + r.retransmits_request, 0);
        }
    }

    #[test]
    fn counts_an_address_given_to_two_clients() {
        let r = load(Fault::SameAddress, Macs::Seq, 50);
        assert_eq!(r.completed, 50);
        assert_eq!(r.duplicates, 49);
    }

    #[test]
    fn counts_an_ack_that_differs_from_its_offer() {
        let r = load(Fault::AckOther, Macs::Seq, 50);
        assert_eq!(r.mismatches, 50);
        assert_eq!(r.duplicates, 0);
    }

    #[test]
    fn retransmits_an_unanswered_discover() {
        let r = load(Fault::DropFirst, Macs::Random, 100);
        assert_eq!(r.completed, 100);
        assert_eq!(r.retransmits_discover, 100);
        // Latency includes the wait for the retransmit.
        assert!(r.latencies_us[0] >= 100_000);
    }
}
