//! Power-state polling of many IPMI BMCs at once.
//!
//! `cargo run --release -p anvil-power-ipmi --example ipmi-status-bench -- N [CONCURRENCY]`
//!
//! Starts N OpenIPMI `ipmi_sim` BMCs (Debian `openipmi`), each on its own
//! 127.77.x.y address, then reads the power state of all of them with at
//! most CONCURRENCY (default 64) calls in flight: once cold (every driver
//! logs in: Get Channel Auth Caps, Open Session, RAKP 1–4, Set Session
//! Privilege, then Get Chassis Status), twice warm (the kept sessions: one
//! round trip each), and once through the ipmitool fallback (a process and
//! a login per status) on up to 100 of them. Reports wall time, CPU time of
//! this process per status (plus ipmitool's own CPU for the fallback) and
//! errors. The simulators are killed, by PID, at the end.

use anvil_power::{PowerDriver, PowerError};
use anvil_power_ipmi::testing::{SimBmc, SimOptions, free_loopback_addr, tools_available};
use anvil_power_ipmi::{IpmiDriver, IpmiOptions, IpmitoolDriver, IpmitoolOptions};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn cpu(who: i32) -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// N BMCs need N sockets here (plus N simulators' worth of child handles):
/// lift the soft file limit to the hard one.
fn raise_nofile() {
    // SAFETY: plain rlimit calls on our own process.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn kind(e: &PowerError) -> &'static str {
    match e {
        PowerError::Unreachable { .. } => "unreachable",
        PowerError::AuthFailed { .. } => "auth",
        PowerError::Tls { .. } => "tls",
        PowerError::Timeout { .. } => "timeout",
        PowerError::NotSupported { .. } => "not-supported",
        PowerError::Protocol { .. } => "protocol",
        PowerError::NotConverged { .. } => "not-converged",
        PowerError::Config(_) => "config",
    }
}

struct Round {
    wall: Duration,
    cpu: Duration,
    children_cpu: Duration,
    ok: usize,
    errors: BTreeMap<&'static str, usize>,
    latencies: Vec<Duration>,
}

async fn round(drivers: &[&dyn PowerDriver], concurrency: usize) -> Round {
    let (c0, k0, t0) = (
        cpu(libc::RUSAGE_SELF),
        cpu(libc::RUSAGE_CHILDREN),
        Instant::now(),
    );
    let results: Vec<(Result<_, PowerError>, Duration)> = futures::stream::iter(drivers.iter())
        .map(|d| async move {
            let t = Instant::now();
            (d.power_state().await, t.elapsed())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut r = Round {
        wall: t0.elapsed(),
        cpu: cpu(libc::RUSAGE_SELF) - c0,
        children_cpu: cpu(libc::RUSAGE_CHILDREN) - k0,
        ok: 0,
        errors: BTreeMap::new(),
        latencies: Vec::new(),
    };
    for (res, lat) in results {
        r.latencies.push(lat);
        match res {
            Ok(_) => r.ok += 1,
            Err(e) => {
                if r.errors.is_empty() {
                    eprintln!("first error: {e}");
                }
                *r.errors.entry(kind(&e)).or_default() += 1;
            }
        }
    }
    r.latencies.sort();
    r
}

fn report(name: &str, n: usize, r: &Round) {
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    let pct = |p: f64| {
        r.latencies
            .get(((r.latencies.len() as f64 * p) as usize).min(r.latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0)
    };
    println!(
        "{name:<26} {n:>5} {:>9.3} {:>9.0} {:>12.1} {:>12.1} {:>8.1} {:>8.1} {:>5} {:?}",
        r.wall.as_secs_f64(),
        n as f64 / r.wall.as_secs_f64(),
        per(r.cpu),
        per(r.cpu + r.children_cpu),
        pct(0.5),
        pct(0.99),
        r.ok,
        r.errors
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    match tools_available() {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("ANVIL_SKIP_IPMI=1: nothing to measure");
            return;
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
    raise_nofile();

    let t = Instant::now();
    let mut sims = Vec::with_capacity(n);
    for _ in 0..n {
        let ip = match free_loopback_addr(623) {
            Ok(ip) => ip,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        match SimBmc::spawn_at(ip, SimOptions::default()) {
            Ok(s) => sims.push(s),
            Err(e) => {
                eprintln!("starting ipmi_sim {}: {e}", sims.len() + 1);
                std::process::exit(1);
            }
        }
    }
    for s in &mut sims {
        if let Err(e) = s.wait_ready(Duration::from_secs(60)) {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
    let rss_kib: u64 = sims
        .iter()
        .filter_map(|s| std::fs::read_to_string(format!("/proc/{}/status", s.pid())).ok())
        .filter_map(|st| {
            st.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum();
    println!(
        "{n} ipmi_sim BMCs ready in {:.1} s, {:.1} MiB RSS in total ({:.2} MiB each); concurrency {concurrency}",
        t.elapsed().as_secs_f64(),
        rss_kib as f64 / 1024.0,
        rss_kib as f64 / 1024.0 / n.max(1) as f64
    );

    let opts = IpmiOptions {
        // ipmi_sim has no SHA-256: propose 3 directly so the cold round
        // measures a login, not a refused proposal.
        cipher_suites: vec![3],
        call_timeout: Duration::from_secs(20),
        ..IpmiOptions::default()
    };
    let native: Vec<IpmiDriver> = sims
        .iter()
        .map(|s| IpmiDriver::new(&s.credentials(), opts.clone()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
    let native_refs: Vec<&dyn PowerDriver> = native.iter().map(|d| d as &dyn PowerDriver).collect();

    println!(
        "{:<26} {:>5} {:>9} {:>9} {:>12} {:>12} {:>8} {:>8} {:>5} errors",
        "round", "BMCs", "wall s", "status/s", "cpu us/stat", "+child us", "p50 ms", "p99 ms", "ok"
    );
    let cold = round(&native_refs, concurrency).await;
    report("native, cold (login)", n, &cold);
    for i in 1..=2 {
        let warm = round(&native_refs, concurrency).await;
        report(&format!("native, warm #{i} (session)"), n, &warm);
    }

    let m = n.min(100);
    let tool: Vec<IpmitoolDriver> = sims[..m]
        .iter()
        .map(|s| IpmitoolDriver::new(&s.credentials(), IpmitoolOptions::default()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
    let tool_refs: Vec<&dyn PowerDriver> = tool.iter().map(|d| d as &dyn PowerDriver).collect();
    let r = round(&tool_refs, concurrency.min(16)).await;
    report("ipmitool fallback", m, &r);

    for d in &native {
        d.close().await;
    }
    drop(sims); // kills every simulator by its PID
}
