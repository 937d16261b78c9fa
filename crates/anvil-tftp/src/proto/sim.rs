//! Whole transfers in memory, in the style of quinn-proto's test `Pair`: the
//! server state machine and a simulated RFC 1350/7440 client exchange
//! datagrams over two simulated links that can drop, duplicate and delay
//! them, under a fake clock that jumps to the next event.

use super::*;
use std::time::{Duration, Instant};

const LATENCY: Duration = Duration::from_millis(1);

/// What a link does with the n-th datagram (1-based) it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
    Delay(Duration),
}

type Policy = Box<dyn FnMut(u64, &[u8]) -> Fate>;

struct Link {
    policy: Policy,
    count: u64,
    seq: u64,
    in_flight: Vec<(Instant, u64, Vec<u8>)>,
}

impl Link {
    fn new(policy: impl FnMut(u64, &[u8]) -> Fate + 'static) -> Link {
        Link {
            policy: Box::new(policy),
            count: 0,
            seq: 0,
            in_flight: Vec::new(),
        }
    }

    fn perfect() -> Link {
        Link::new(|_, _| Fate::Deliver)
    }

    fn send(&mut self, now: Instant, pkt: &[u8]) {
        self.count += 1;
        let copies = match (self.policy)(self.count, pkt) {
            Fate::Deliver => vec![now + LATENCY],
            Fate::Drop => vec![],
            Fate::Duplicate => vec![now + LATENCY, now + LATENCY],
            Fate::Delay(extra) => vec![now + LATENCY + extra],
        };
        for at in copies {
            self.seq += 1;
            self.in_flight.push((at, self.seq, pkt.to_vec()));
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.in_flight.iter().map(|(at, _, _)| *at).min()
    }

    fn take_due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut due: Vec<_> = Vec::new();
        self.in_flight.retain(|(at, seq, pkt)| {
            if *at <= now {
                due.push((*at, *seq, pkt.clone()));
                false
            } else {
                true
            }
        });
        due.sort_by_key(|(at, seq, _)| (*at, *seq));
        due.into_iter().map(|(_, _, pkt)| pkt).collect()
    }
}

fn is_data(pkt: &[u8]) -> bool {
    pkt.starts_with(&[0, 3])
}

fn ack(block: u64) -> Vec<u8> {
    Packet::Ack {
        block: (block & 0xffff) as u16,
    }
    .to_vec()
}

/// A receiver as RFC 1350 and RFC 7440 describe it: ACKs the last block of
/// each window, ACKs the last in-order block once when it sees a gap,
/// re-ACKs a repeated last block, and re-ACKs on its own timeout.
struct Client {
    received: Vec<u8>,
    blksize: usize,
    window: u64,
    expected: u64,
    since_ack: u64,
    gap_acked: bool,
    oack: Option<Vec<(String, String)>>,
    refuse_oack: bool,
    done: bool,
    error: Option<ErrorCode>,
    timeout: Duration,
    deadline: Option<Instant>,
    retries: u32,
    outbox: Vec<Vec<u8>>,
}

impl Client {
    fn new(now: Instant) -> Client {
        Client {
            received: Vec::new(),
            blksize: 512,
            window: 1,
            expected: 1,
            since_ack: 0,
            gap_acked: false,
            oack: None,
            refuse_oack: false,
            done: false,
            error: None,
            timeout: Duration::from_secs(1),
            deadline: Some(now + Duration::from_secs(1)),
            retries: 0,
            outbox: Vec::new(),
        }
    }

    fn send_ack(&mut self, block: u64) {
        self.outbox.push(ack(block));
        self.since_ack = 0;
    }

    fn on_packet(&mut self, now: Instant, buf: &[u8]) {
        let pkt = Packet::decode(buf).expect("server sent a malformed packet");
        match pkt {
            Packet::Oack { options } => {
                if self.refuse_oack {
                    self.outbox
                        .push(error_packet(ErrorCode::OptionRefused, "no thanks"));
                    self.done = true;
                    return;
                }
                if self.expected != 1 {
                    return;
                }
                for o in &options {
                    let v: usize = o.value.parse().expect("numeric option");
                    if o.name.eq_ignore_ascii_case("blksize") {
                        self.blksize = v;
                    } else if o.name.eq_ignore_ascii_case("windowsize") {
                        self.window = v as u64;
                    }
                }
                self.oack = Some(
                    options
                        .iter()
                        .map(|o| (o.name.to_string(), o.value.to_string()))
                        .collect(),
                );
                self.send_ack(0);
            }
            Packet::Data { block, data } => {
                let ahead = block.wrapping_sub((self.expected & 0xffff) as u16);
                if ahead == 0 && !self.done {
                    self.received.extend_from_slice(data);
                    self.expected += 1;
                    self.since_ack += 1;
                    self.gap_acked = false;
                    self.retries = 0;
                    self.deadline = Some(now + self.timeout);
                    if data.len() < self.blksize {
                        self.done = true;
                        self.deadline = None;
                        self.send_ack(self.expected - 1);
                    } else if self.since_ack == self.window {
                        self.send_ack(self.expected - 1);
                    }
                } else if ahead != 0 && ahead < 0x8000 && !self.done {
                    if !self.gap_acked {
                        self.gap_acked = true;
                        self.send_ack(self.expected - 1);
                    }
                } else if ahead == 0xffff {
                    // The last block we have again: our ACK was lost.
                    self.send_ack(self.expected - 1);
                }
            }
            Packet::Error { code, .. } => {
                self.error = Some(code);
                self.done = true;
                self.deadline = None;
            }
            other => panic!("server sent {other:?}"),
        }
    }

    fn on_timeout(&mut self, now: Instant) {
        self.retries += 1;
        if self.retries > 10 {
            self.done = true;
            self.deadline = None;
            return;
        }
        if self.oack.is_some() || self.expected > 1 {
            self.send_ack(self.expected - 1);
        }
        self.deadline = Some(now + self.timeout);
    }
}

struct Pair {
    now: Instant,
    file: Vec<u8>,
    server: ReadTransfer,
    server_timer: Option<Instant>,
    outcome: Option<Result<(), Failure>>,
    client: Client,
    to_client: Link,
    to_server: Link,
    /// Every datagram the server sent, in order.
    sent: Vec<Vec<u8>>,
    reads: Vec<(u64, usize)>,
}

impl Pair {
    fn new(file: Vec<u8>, mode: Mode, options: &[(&str, &str)], limits: &Limits) -> Pair {
        let now = Instant::now();
        let opts: Vec<TftpOption<'_>> = options
            .iter()
            .map(|&(name, value)| TftpOption { name, value })
            .collect();
        let size = Some(file.len() as u64);
        Pair {
            now,
            server: ReadTransfer::new(now, mode, &opts, size, limits),
            file,
            server_timer: None,
            outcome: None,
            client: Client::new(now),
            to_client: Link::perfect(),
            to_server: Link::perfect(),
            sent: Vec::new(),
            reads: Vec::new(),
        }
    }

    fn octet(file: Vec<u8>, options: &[(&str, &str)]) -> Pair {
        Pair::new(file, Mode::Octet, options, &Limits::default())
    }

    fn drain(&mut self) {
        while let Some(action) = self.server.poll_action() {
            match action {
                Action::Send(pkt) => {
                    self.to_client.send(self.now, &pkt);
                    self.sent.push(pkt.to_vec());
                }
                Action::Read { offset, len } => {
                    self.reads.push((offset, len));
                    let start = (offset as usize).min(self.file.len());
                    let end = start.saturating_add(len).min(self.file.len());
                    let data = self.file[start..end].to_vec();
                    self.server.handle(self.now, Event::Data(&data));
                }
                Action::SetTimer(at) => self.server_timer = Some(at),
                Action::Finished => self.outcome = Some(Ok(())),
                Action::Failed(f) => self.outcome = Some(Err(f)),
            }
        }
        for pkt in std::mem::take(&mut self.client.outbox) {
            self.to_server.send(self.now, &pkt);
        }
    }

    fn run(&mut self) -> &mut Pair {
        for _ in 0..10_000_000 {
            self.drain();
            let server_timer = self.server_timer.filter(|_| self.outcome.is_none());
            let next = [
                server_timer,
                self.client.deadline,
                self.to_client.next_due(),
                self.to_server.next_due(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else {
                return self;
            };
            self.now = self.now.max(next);
            for pkt in self.to_server.take_due(self.now) {
                self.server.handle(self.now, Event::Packet(&pkt));
                self.drain();
            }
            for pkt in self.to_client.take_due(self.now) {
                self.client.on_packet(self.now, &pkt);
                self.drain();
            }
            if server_timer.is_some_and(|t| t <= self.now) {
                self.server_timer = None;
                self.server.handle(self.now, Event::Timeout);
            }
            if self.client.deadline.is_some_and(|t| t <= self.now) {
                self.client.deadline = None;
                self.client.on_timeout(self.now);
            }
        }
        panic!("simulation did not settle");
    }

    fn data_sent(&self) -> usize {
        self.sent.iter().filter(|p| is_data(p)).count()
    }

    fn assert_complete(&self) {
        assert_eq!(self.outcome, Some(Ok(())), "server outcome");
        assert!(self.client.done, "client not done");
        assert_eq!(self.client.error, None);
        assert!(self.client.received == self.file, "received bytes differ");
        assert!(self.server.is_done());
    }
}

fn random_file(len: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.r#gen()).collect()
}

fn blocks(len: usize, blksize: usize) -> usize {
    len / blksize + 1
}

#[test]
fn lock_step_without_options_sends_each_block_once() {
    for len in [0, 1, 511, 512, 513, 1024, 5000] {
        let mut p = Pair::octet(random_file(len, len as u64), &[]);
        p.run().assert_complete();
        assert_eq!(p.data_sent(), blocks(len, 512), "len {len}");
        assert!(
            p.sent.iter().all(|pkt| is_data(pkt)),
            "no OACK without options"
        );
        let last = p.sent.last().expect("sent something");
        assert_eq!(last.len() - 4, len % 512, "final short block, len {len}");
    }
}

#[test]
fn multiple_of_blksize_ends_with_an_empty_block() {
    let mut p = Pair::octet(random_file(3 * 1468, 1), &[("blksize", "1468")]);
    p.run().assert_complete();
    let last = p.sent.last().expect("sent");
    assert_eq!(last, &[0, 3, 0, 4]);
    assert_eq!(p.server.bytes_acked(), 3 * 1468);
}

#[test]
fn oack_then_windows() {
    let len = 100_000;
    let mut p = Pair::octet(
        random_file(len, 2),
        &[("blksize", "1468"), ("tsize", "0"), ("windowsize", "16")],
    );
    p.run().assert_complete();
    assert_eq!(
        p.client.oack,
        Some(vec![
            ("blksize".into(), "1468".into()),
            ("tsize".into(), len.to_string()),
            ("windowsize".into(), "16".into()),
        ])
    );
    assert_eq!(p.data_sent(), blocks(len, 1468));
    assert_eq!(p.server.bytes_acked(), len as u64);
    // The file is read forward only, in window-sized pieces.
    let mut expect = 0;
    for &(offset, _) in &p.reads {
        assert_eq!(offset, expect);
        expect += p.reads.iter().find(|r| r.0 == offset).map_or(0, |r| r.1) as u64;
    }
}

#[test]
fn every_seventh_data_packet_lost() {
    for window in ["1", "4", "16", "64"] {
        let len = 200_000;
        let mut p = Pair::octet(
            random_file(len, 3),
            &[("blksize", "1024"), ("windowsize", window)],
        );
        p.to_client = Link::new(|n, pkt| {
            if is_data(pkt) && n % 7 == 0 {
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        p.run().assert_complete();
    }
}

#[test]
fn acks_lost_and_the_oack_lost() {
    for window in ["1", "8"] {
        let mut p = Pair::octet(
            random_file(50_000, 4),
            &[("blksize", "512"), ("windowsize", window)],
        );
        p.to_client = Link::new(|n, _| if n == 1 { Fate::Drop } else { Fate::Deliver });
        p.to_server = Link::new(|n, _| {
            if n % 5 == 0 {
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        p.run().assert_complete();
    }
}

#[test]
fn final_ack_lost_is_recovered_by_retransmission() {
    let mut p = Pair::octet(random_file(1000, 5), &[]);
    // Client ACKs 1 and 2; drop the first ACK 2.
    p.to_server = Link::new(|n, _| if n == 2 { Fate::Drop } else { Fate::Deliver });
    p.run().assert_complete();
    assert_eq!(p.data_sent(), 3, "block 2 resent once");
}

#[test]
fn duplicated_acks_do_not_cause_sorcerers_apprentice() {
    let len = 20_000;
    let mut p = Pair::octet(random_file(len, 6), &[]);
    p.to_server = Link::new(|_, _| Fate::Duplicate);
    p.to_client = Link::new(|_, _| Fate::Duplicate);
    p.run().assert_complete();
    assert_eq!(p.data_sent(), blocks(len, 512), "lock-step: no extra DATA");

    // Windowed: a duplicate of the ACK that ended a window may resend that
    // window once, never more.
    let mut p = Pair::octet(random_file(len, 6), &[("windowsize", "8")]);
    p.to_server = Link::new(|_, _| Fate::Duplicate);
    p.run().assert_complete();
    assert!(
        p.data_sent() <= 2 * blocks(len, 512) + 8,
        "{}",
        p.data_sent()
    );
}

#[test]
fn reordered_data_is_recovered() {
    let mut p = Pair::octet(
        random_file(150_000, 7),
        &[("blksize", "1000"), ("windowsize", "16")],
    );
    p.to_client = Link::new(|n, pkt| {
        if is_data(pkt) && n % 3 == 0 {
            Fate::Delay(Duration::from_micros(1500))
        } else {
            Fate::Deliver
        }
    });
    p.run().assert_complete();
}

#[test]
fn lost_block_goes_back_to_the_block_after_the_ack() {
    let mut p = Pair::octet(
        random_file(10 * 512, 8),
        &[("blksize", "512"), ("windowsize", "4")],
    );
    // Datagram 1 is the OACK; datagram 3 is DATA 2.
    p.to_client = Link::new(|n, _| if n == 3 { Fate::Drop } else { Fate::Deliver });
    p.run().assert_complete();
    let order: Vec<u16> = p
        .sent
        .iter()
        .filter(|pkt| is_data(pkt))
        .map(|pkt| u16::from_be_bytes([pkt[2], pkt[3]]))
        .collect();
    // Client sees 1, then 3 (gap): ACK 1. Block 4 arrives too but is out of
    // order; the server restarts at 2 with a full window.
    assert_eq!(order, vec![1, 2, 3, 4, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
}

#[test]
fn block_numbers_wrap_to_zero_past_65535() {
    let blksize = 8;
    let len = 70_000 * blksize + 3;
    let mut p = Pair::octet(
        random_file(len, 9),
        &[("blksize", "8"), ("windowsize", "16")],
    );
    p.run().assert_complete();
    let numbers: Vec<u16> = p
        .sent
        .iter()
        .filter(|pkt| is_data(pkt))
        .map(|pkt| u16::from_be_bytes([pkt[2], pkt[3]]))
        .collect();
    assert_eq!(numbers.len(), 70_001);
    assert_eq!(numbers[65534], 65535);
    assert_eq!(numbers[65535], 0);
    assert_eq!(numbers[65536], 1);
}

#[test]
fn wrap_with_loss_in_the_wrapping_window() {
    let len = 66_000 * 8;
    let mut p = Pair::octet(
        random_file(len, 10),
        &[("blksize", "8"), ("windowsize", "32")],
    );
    // Lose the first copy of blocks 65534, 65535, 0 and 1 (twice for 0):
    // recovery straddles the wrap.
    let mut losses = vec![65534u16, 65535, 0, 0, 1];
    let mut wrapped = false;
    p.to_client = Link::new(move |_, pkt| {
        if !is_data(pkt) {
            return Fate::Deliver;
        }
        let block = u16::from_be_bytes([pkt[2], pkt[3]]);
        // Block 1 also occurs before the wrap: only count losses after it.
        wrapped |= block == 65534;
        match losses.iter().position(|b| *b == block) {
            Some(i) if wrapped => {
                losses.remove(i);
                Fate::Drop
            }
            _ => Fate::Deliver,
        }
    });
    p.run().assert_complete();
}

#[test]
fn client_refusing_options_ends_the_transfer() {
    let mut p = Pair::octet(random_file(5000, 11), &[("blksize", "1468")]);
    p.client.refuse_oack = true;
    p.run();
    assert!(matches!(
        p.outcome,
        Some(Err(Failure::OackDeclined {
            code: ErrorCode::OptionRefused,
            tsize_sent: false,
            ..
        }))
    ));
    assert_eq!(p.data_sent(), 0);
    if let Some(Err(f)) = &p.outcome {
        assert_eq!(f.label(), "options_refused");
    }
}

/// UEFI PXE (EDK2) learns the size first: RRQ with tsize, ERROR after the
/// OACK, then a second RRQ for the data. The first is a size probe.
#[test]
fn uefi_size_probe_is_recognised() {
    let mut p = Pair::octet(
        random_file(5000, 11),
        &[("tsize", "0"), ("blksize", "1468")],
    );
    p.client.refuse_oack = true;
    p.run();
    let failure = match &p.outcome {
        Some(Err(f)) => f.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(failure.label(), "size_probe");
    assert_eq!(p.data_sent(), 0);
    // An ERROR once data flows is the peer's error, whatever its code.
    let now = Instant::now();
    let opts = [TftpOption {
        name: "tsize",
        value: "0",
    }];
    let mut t = ReadTransfer::new(now, Mode::Octet, &opts, Some(5000), &Limits::default());
    t.handle(now, Event::Packet(&ack(0)));
    t.handle(
        now,
        Event::Packet(&error_packet(ErrorCode::OptionRefused, "x")),
    );
    let last = std::iter::from_fn(|| t.poll_action()).last();
    match last {
        Some(Action::Failed(f)) => assert_eq!(f.label(), "peer_error"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn silent_client_times_out_with_an_error() {
    let limits = Limits {
        max_retries: 3,
        ..Limits::default()
    };
    let mut p = Pair::new(random_file(5000, 12), Mode::Octet, &[], &limits);
    p.to_client = Link::new(|_, _| Fate::Drop);
    p.run();
    assert_eq!(p.outcome, Some(Err(Failure::TimedOut)));
    assert_eq!(p.data_sent(), 4, "first send and three retries");
    let last = p.sent.last().expect("sent");
    assert!(matches!(
        Packet::decode(last),
        Ok(Packet::Error {
            code: ErrorCode::NotDefined,
            ..
        })
    ));
}

#[test]
fn negotiated_timeout_drives_retransmission() {
    let mut p = Pair::octet(random_file(100, 13), &[("timeout", "3")]);
    p.to_client = Link::new(|_, _| Fate::Drop);
    let start = p.now;
    p.run();
    assert_eq!(p.outcome, Some(Err(Failure::TimedOut)));
    // OACK at 0 s, then 5 resends 3 s apart, then failure at 18 s.
    assert_eq!(p.now.duration_since(start), Duration::from_secs(18));
}

#[test]
fn netascii_is_converted() {
    let file = b"line one\nline two\r\nbare cr\r end".to_vec();
    let mut p = Pair::new(
        file,
        Mode::Netascii,
        &[("blksize", "8"), ("tsize", "0")],
        &Limits::default(),
    );
    p.run();
    assert_eq!(p.outcome, Some(Ok(())));
    assert_eq!(
        p.client.received,
        b"line one\r\nline two\r\0\r\nbare cr\r\0 end".to_vec()
    );
    let oack = p.client.oack.clone().expect("oack");
    assert!(
        oack.iter().all(|(n, _)| n != "tsize"),
        "no tsize in netascii"
    );
}

#[test]
fn mail_mode_is_refused() {
    let mut p = Pair::new(b"x".to_vec(), Mode::Mail, &[], &Limits::default());
    p.run();
    assert_eq!(p.outcome, Some(Err(Failure::UnsupportedMode)));
    assert_eq!(p.client.error, Some(ErrorCode::IllegalOperation));
}

#[test]
fn unexpected_packets_and_read_errors_fail_with_an_error_reply() {
    let now = Instant::now();
    let mut t = ReadTransfer::new(now, Mode::Octet, &[], Some(10), &Limits::default());
    assert!(matches!(
        t.poll_action(),
        Some(Action::Read {
            offset: 0,
            len: 65536
        })
    ));
    t.handle(now, Event::ReadFailed);
    assert!(matches!(t.poll_action(), Some(Action::Send(_))));
    assert_eq!(t.poll_action(), Some(Action::Failed(Failure::ReadFailed)));

    let mut t = ReadTransfer::new(now, Mode::Octet, &[], Some(10), &Limits::default());
    while t.poll_action().is_some() {}
    t.handle(now, Event::Packet(b"\x00\x03\x00\x01data"));
    match t.poll_action() {
        Some(Action::Send(pkt)) => assert!(matches!(
            Packet::decode(&pkt),
            Ok(Packet::Error {
                code: ErrorCode::IllegalOperation,
                ..
            })
        )),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        t.poll_action(),
        Some(Action::Failed(Failure::IllegalPacket))
    );
    // Garbage is ignored, and a finished transfer ignores everything.
    t.handle(now, Event::Packet(b"\x00"));
    assert_eq!(t.poll_action(), None);
}

#[test]
fn cancel_sends_an_error_once() {
    let now = Instant::now();
    let mut t = ReadTransfer::new(now, Mode::Octet, &[], Some(10), &Limits::default());
    while t.poll_action().is_some() {}
    t.cancel("server shutting down");
    assert!(matches!(t.poll_action(), Some(Action::Send(_))));
    assert_eq!(t.poll_action(), Some(Action::Failed(Failure::Cancelled)));
    t.cancel("again");
    assert_eq!(t.poll_action(), None);
}

#[test]
fn random_loss_duplication_and_delay() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let len = rng.gen_range(0..60_000);
        let window = rng.gen_range(1..=32u16).to_string();
        let blksize = rng.gen_range(8..=2000u16).to_string();
        let mut p = Pair::octet(
            random_file(len, seed),
            &[("blksize", &blksize), ("windowsize", &window)],
        );
        let fate = move |rng: &mut StdRng| match rng.gen_range(0..20) {
            0 => Fate::Drop,
            1 => Fate::Duplicate,
            2 => Fate::Delay(Duration::from_micros(rng.gen_range(0..3000))),
            _ => Fate::Deliver,
        };
        let mut r1 = StdRng::seed_from_u64(seed + 100);
        let mut r2 = StdRng::seed_from_u64(seed + 200);
        p.to_client = Link::new(move |_, _| fate(&mut r1));
        p.to_server = Link::new(move |_, _| fate(&mut r2));
        p.run();
        p.assert_complete();
    }
}

/// A hostile or broken peer (the fuzz target `tftp_transfer` does the same
/// with coverage guidance): random options and limits, then random ACKs near
/// and far from the window, garbage, ERRORs and timeouts. The machine must
/// not panic, must read forward only, must keep DATA within blksize and must
/// stay silent after it reported the end.
#[test]
fn hostile_peer_cannot_break_the_machine() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    const NAMES: [&str; 5] = ["blksize", "windowsize", "timeout", "tsize", "x"];
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for _ in 0..300 {
        let file_len = rng.gen_range(0..200_000usize);
        let values: Vec<(&str, String)> = (0..rng.gen_range(0..5))
            .map(|_| {
                let value = match rng.gen_range(0..3) {
                    0 => rng.gen_range(0..70_000u32).to_string(),
                    1 => rng.gen_range(0..20u32).to_string(),
                    _ => "junk".to_string(),
                };
                (NAMES[rng.gen_range(0..NAMES.len())], value)
            })
            .collect();
        let options: Vec<TftpOption<'_>> = values
            .iter()
            .map(|(name, value)| TftpOption { name, value })
            .collect();
        let limits = Limits {
            max_blksize: rng.gen_range(8..=65464),
            max_windowsize: rng.gen_range(1..=64),
            default_timeout: Duration::from_millis(rng.gen_range(1..2000)),
            max_retries: rng.gen_range(0..4),
        };
        let mode = [Mode::Octet, Mode::Netascii][rng.gen_range(0..2)];
        let mut now = Instant::now();
        let mut t = ReadTransfer::new(now, mode, &options, Some(file_len as u64), &limits);
        let blksize = usize::from(t.blksize());
        let (mut next_read, mut last_data, mut ended) = (0u64, 0u16, false);
        for _ in 0..2000 {
            while let Some(action) = t.poll_action() {
                assert!(!ended, "action after the end: {action:?}");
                match action {
                    Action::Send(pkt) => match Packet::decode(&pkt) {
                        Ok(Packet::Data { block, data }) => {
                            assert!(data.len() <= blksize);
                            last_data = block;
                        }
                        Ok(_) => {}
                        Err(e) => panic!("undecodable packet sent: {e}"),
                    },
                    Action::Read { offset, len } => {
                        assert!(offset >= next_read, "read went backwards");
                        let start = (offset as usize).min(file_len);
                        let end = start.saturating_add(len).min(file_len);
                        next_read = end as u64;
                        let data = vec![b'a'; end - start];
                        t.handle(now, Event::Data(&data));
                    }
                    Action::SetTimer(at) => assert!(at >= now),
                    Action::Finished | Action::Failed(_) => ended = true,
                }
            }
            let pkt: Vec<u8> = match rng.gen_range(0..10) {
                0 => {
                    now += Duration::from_millis(rng.gen_range(0..3000));
                    t.handle(now, Event::Timeout);
                    continue;
                }
                1 => (0..rng.gen_range(0..8)).map(|_| rng.r#gen()).collect(),
                2 => error_packet(ErrorCode::Other(rng.r#gen()), "x"),
                3 => ack(rng.r#gen::<u16>().into()),
                _ => ack(u64::from(
                    last_data.wrapping_add_signed(rng.gen_range(-40..=40)),
                )),
            };
            t.handle(now, Event::Packet(&pkt));
        }
    }
}
