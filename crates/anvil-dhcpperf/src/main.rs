//! `anvil-dhcpperf`: a relay-style DHCPv4 load generator.
//!
//! It plays a DHCP relay agent with many clients behind it: it binds UDP
//! port 67 on the relay address, sends each client's DISCOVER to the server
//! by unicast with giaddr = the relay address, answers the OFFER with a
//! REQUEST (server id + requested address) and waits for the ACK. This is
//! how a provisioning server sees a rack booting through a ToR relay, and it
//! works on loopback or inside a network namespace, with no raw sockets.
//!
//! It reports DORA/s, DISCOVER→ACK latency, NAKs and retransmits, the
//! server's CPU per DORA (from /proc, with `--server-pid`) and correctness:
//! no address ACKed to two clients, and every ACK carries the address its
//! OFFER did. It exits non-zero when either check fails.

mod load;
mod net;
mod wire;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Macs {
    /// 52:54:00:00:00:01, :02, … (a rack of one vendor's NICs: servers that
    /// hash the MAC to pick an address collide most here).
    Seq,
    /// Random locally administered unicast MACs (from `--seed`).
    Random,
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Relay-style DHCPv4 load generator (DORA/s, latency, server CPU, lease correctness)"
)]
pub struct Args {
    /// The DHCP server (unicast, as a relay sends).
    #[arg(long, default_value = "127.0.0.1:67")]
    pub server: SocketAddrV4,
    /// The relay address: bound on port 67 and sent as giaddr. The server
    /// must have a relayed subnet containing it (or selected by it).
    #[arg(long, default_value = "127.0.0.2")]
    pub relay: Ipv4Addr,
    /// Port to bind on the relay address (servers reply to giaddr:67).
    #[arg(long, default_value_t = 67)]
    pub relay_port: u16,
    /// Number of clients, each doing one DORA.
    #[arg(long, default_value_t = 20_000)]
    pub clients: u32,
    #[arg(long, value_enum, default_value_t = Macs::Seq)]
    pub macs: Macs,
    /// Seed for random MACs and transaction ids.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Clients with a DORA in progress at once. Each has one request
    /// outstanding, so this is also how many requests can sit in the
    /// server's socket queue: at 256, Kea's default receive buffer (212 KiB)
    /// overflows on the first burst and the drops show up as retransmits.
    #[arg(long, default_value_t = 64)]
    pub inflight: u32,
    /// Retransmit a DISCOVER or REQUEST not answered within this time.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Retransmits per message (and restarts after a NAK) before a client
    /// is counted as failed.
    #[arg(long, default_value_t = 4)]
    pub retries: u8,
    /// Stop after this long whatever is left; unfinished clients are reported.
    #[arg(long, default_value_t = 120)]
    pub time_limit_s: u64,
    /// Sleep when there is nothing to receive or send, in microseconds.
    /// Polling with a short sleep keeps replies from waking the generator,
    /// which on VMs would be charged to the server's CPU.
    #[arg(long, default_value_t = 100)]
    pub idle_sleep_us: u64,
    /// Socket buffer size in bytes (receive and send).
    #[arg(long, default_value_t = 8 << 20)]
    pub socket_buffer: usize,
    /// The server's PID: its CPU time (utime + stime) is read before and
    /// after the run and reported per DORA. May be repeated (summed).
    #[arg(long)]
    pub server_pid: Vec<u32>,
    /// Also write the results as a JSON object to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// A label for the JSON output (e.g. the server's name).
    #[arg(long, default_value = "")]
    pub label: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(ok) if ok => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("anvil-dhcpperf: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the load and prints the report; `Ok(false)` when a correctness
/// check failed.
fn run(args: &Args) -> anyhow::Result<bool> {
    if args.clients == 0 || args.inflight == 0 {
        bail!("--clients and --inflight must be at least 1");
    }
    if args.timeout_ms == 0 {
        bail!("--timeout-ms must be at least 1");
    }
    let relay = SocketAddrV4::new(args.relay, args.relay_port);
    let mut sock = net::RelaySocket::open(relay, args.server, args.socket_buffer)
        .with_context(|| format!("binding the relay socket {relay}"))?;
    let cpu_before = server_cpu(&args.server_pid)?;
    let self_before = net::self_cpu_us();
    let report = load::run(
        &mut sock,
        &load::Plan {
            clients: args.clients,
            macs: args.macs,
            seed: args.seed,
            inflight: args.inflight,
            timeout: Duration::from_millis(args.timeout_ms),
            retries: args.retries,
            time_limit: Duration::from_secs(args.time_limit_s),
            idle_sleep: Duration::from_micros(args.idle_sleep_us),
            giaddr: args.relay,
        },
    )?;
    let server_cpu_us = match cpu_before {
        Some(before) => server_cpu(&args.server_pid)?.map(|after| after.saturating_sub(before)),
        None => None,
    };
    let self_cpu_us = net::self_cpu_us().saturating_sub(self_before);
    let out = load::Summary::new(args, &report, server_cpu_us, self_cpu_us);
    print!("{}", out.text());
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{}\n", out.json()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.duplicates == 0 && report.mismatches == 0)
}

/// Summed CPU time of the given PIDs, or `None` when none was given.
fn server_cpu(pids: &[u32]) -> anyhow::Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut sum = 0;
    for &p in pids {
        sum += net::process_cpu_us(p).with_context(|| format!("reading /proc/{p}/stat"))?;
    }
    Ok(Some(sum))
}
