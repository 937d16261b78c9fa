//! `redfish-bench`: "PXE once + power on" for many emulated Redfish systems,
//! through a real `anvil serve`, against the emulators' own convergence time.
//!
//! Every round uses fresh sushy-tools emulators (fake driver; by default 5
//! processes of 200 systems each on 127.0.0.1, all Off) and:
//!
//! 1. **direct**: a small concurrent Redfish client of this program's own
//!    PATCHes each system's boot override (Pxe, Once) and POSTs
//!    `ComputerSystem.Reset` `On`, then reads every system's `PowerState`
//!    in rounds until all are On: the emulators' own convergence time, the
//!    floor for any orchestrator (sushy applies a power change 1-11 s later);
//! 2. **anvil**, on new emulators: starts `anvil serve` (its `[power]
//!    concurrency` set per round), enrols every system through
//!    `POST /api/v1/enroll` with an address naming the system
//!    (`http://127.0.0.1:PORT/redfish/v1/Systems/<uuid>`), then times
//!    `POST /api/v1/actions/pxe-power-on {"tag": "bench"}` (or `--action
//!    pxe-boot`) until every job has
//!    finished (followed on `/api/v1/events`), and checks on the emulators
//!    that every system is On with a PXE override.
//!
//! Figures: wall times and their ratio, Anvil's CPU (utime + stime of
//! /proc/PID/stat) per action, its peak RSS (VmHWM), errors, and the
//! emulators' CPU. Everything listens on loopback; only processes this
//! program started are signalled, by PID. See docs/benchmarks.md.

#[path = "../procfs.rs"]
#[allow(dead_code)]
mod procfs;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

const BMC_USER: &str = "admin";
const BMC_PASSWORD: &str = "bench-bmc-pw";
const TAG: &str = "bench";

#[derive(Parser)]
#[command(
    name = "redfish-bench",
    version,
    about = "Benchmark Anvil's power control: PXE once + power on for many sushy-tools Redfish systems"
)]
struct Args {
    /// The anvil binary to measure. Default: `anvil` next to this program
    /// (`cargo build --release -p anvil -p anvil-bench`).
    #[arg(long, value_name = "PATH")]
    anvil: Option<PathBuf>,
    /// Emulated systems in all.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    systems: u32,
    /// sushy-emulator processes the systems are spread over (one sushy
    /// process handles ~200 systems well; 1,000 in one returns
    /// "database is locked").
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=50))]
    emulators: u32,
    /// The timed action: `pxe-power-on` ("PXE once + power on", what the
    /// direct client does) or `pxe-boot` (which first reads each system's
    /// power state to choose between On and a reset).
    #[arg(long, default_value = "pxe-power-on", value_parser = ["pxe-power-on", "pxe-boot"])]
    action: String,
    /// Anvil's `[power] concurrency`, one round each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    concurrency: Vec<usize>,
    /// Requests in flight at once of the direct client.
    #[arg(long, default_value_t = 64)]
    direct_concurrency: usize,
    /// Enrolments in flight at once.
    #[arg(long, default_value_t = 32)]
    enroll_concurrency: usize,
    /// Give up on a phase after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// The sushy-tools virtualenv. Default: made (once) by
    /// crates/anvil-power-redfish/scripts/sushy-venv.sh in target/sushy-venv.
    #[arg(long, value_name = "DIR", env = "ANVIL_SUSHY_VENV")]
    venv: Option<PathBuf>,
    /// Where the temporary directories go (default: the system's).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep the work directory (logs of Anvil and the emulators).
    #[arg(long)]
    keep: bool,
    /// Profile Anvil during each timed action with `perf record
    /// --call-graph dwarf` (perf must be installed), writing
    /// `PREFIX.c<concurrency>.data`; read with `perf report -i …`.
    #[arg(long, value_name = "PREFIX")]
    perf: Option<PathBuf>,
}

fn main() -> ExitCode {
    // reqwest is built without a default TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("redfish-bench: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("redfish-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One emulated system.
#[derive(Clone)]
struct Sys {
    emulator: usize,
    uuid: String,
    name: String,
    mac: String,
}

fn systems(n: usize, emulators: usize) -> Vec<Sys> {
    (0..n)
        .map(|i| Sys {
            emulator: i % emulators,
            uuid: format!("5eb0e000-0000-4000-8000-{:012x}", i + 1),
            name: format!("rf-{:04}", i + 1),
            mac: format!(
                "02:5e:b0:{:02x}:{:02x}:{:02x}",
                i >> 16,
                (i >> 8) & 0xff,
                i & 0xff
            ),
        })
        .collect()
}

fn log(msg: impl AsRef<str>) {
    eprintln!("redfish-bench: {}", msg.as_ref());
}

async fn run(args: Args) -> Result<bool> {
    let anvil = match &args.anvil {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .with_file_name("anvil"),
    };
    if !anvil.is_file() {
        bail!(
            "{} does not exist: `cargo build --release -p anvil -p anvil-bench`, or pass --anvil PATH",
            anvil.display()
        );
    }
    let anvil_version = std::process::Command::new(&anvil)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let venv = match &args.venv {
        Some(v) => v.clone(),
        None => make_venv()?,
    };
    if !venv.join("bin/sushy-emulator").is_file() {
        bail!("{} has no bin/sushy-emulator", venv.display());
    }
    let mut work = tempfile::Builder::new()
        .prefix("anvil-redfish-bench")
        .tempdir_in(args.work_dir.clone().unwrap_or_else(std::env::temp_dir))
        .context("cannot make the work directory")?;
    if args.keep {
        work.disable_cleanup(true);
    }
    let htpasswd = htpasswd(&venv)?;
    let n = args.systems as usize;
    let n_emus = (args.emulators as usize).min(n);
    let all = systems(n, n_emus);
    let clk_tck = procfs::clock_ticks_per_second();
    let load_before = procfs::loadavg();
    let started_at = time::OffsetDateTime::now_utc();
    log(format!(
        "{n} systems on {n_emus} emulators; Anvil [power] concurrency {:?}; work dir {}",
        args.concurrency,
        work.path().display()
    ));

    let mut rounds = Vec::new();
    let mut ok = true;
    for (k, &conc) in args.concurrency.iter().enumerate() {
        let emus = Emulators::start(
            &venv,
            work.path(),
            &format!("r{k}-direct"),
            &all,
            n_emus,
            &htpasswd,
        )
        .await?;
        log(format!("round {}: direct client …", k + 1));
        let direct =
            direct_run(&emus, &all, args.direct_concurrency, clk_tck, args.timeout).await?;
        log(format!(
            "round {}: emulators converged in {:.1} s ({} errors)",
            k + 1,
            direct.converged.as_secs_f64(),
            direct.errors
        ));
        emus.stop().await;

        let emus = Emulators::start(
            &venv,
            work.path(),
            &format!("r{k}-anvil"),
            &all,
            n_emus,
            &htpasswd,
        )
        .await?;
        log(format!(
            "round {}: Anvil, [power] concurrency {conc} …",
            k + 1
        ));
        let a = anvil_run(&anvil, work.path(), k, conc, &emus, &all, &args, clk_tck).await;
        emus.stop().await;
        let a = a?;
        ok &= a.errors == 0 && a.verify_failures == 0 && direct.errors == 0;
        rounds.push((conc, direct, a));
    }
    let load_after = procfs::loadavg();

    println!(
        "\n# redfish-bench: PXE once + power on, {n} Redfish systems (Anvil's action: {})\n",
        args.action
    );
    println!(
        "{} (UTC); {anvil_version}; {}, {} CPUs, {}; kernel {}; load average before {load_before}, after {load_after}",
        started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        procfs::cpu_model(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        procfs::mem_total(),
        procfs::kernel()
    );
    println!(
        "sushy-tools fake driver: {n_emus} processes × {} systems on 127.0.0.1; direct client {} requests in flight; Anvil's data on {}\n",
        n.div_ceil(n_emus),
        args.direct_concurrency,
        procfs::filesystem_of(work.path())
    );
    println!(
        "| [power] concurrency | emulators alone | Anvil | Anvil / alone (≤ 1.2) | Anvil CPU per action (< 2 ms) | peak RSS | errors (0) | enrolment |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (conc, d, a) in &rounds {
        let ratio = a.wall.as_secs_f64() / d.converged.as_secs_f64();
        let cpu_ms = a.cpu.as_secs_f64() * 1000.0 / n as f64;
        println!(
            "| {conc} | {:.1} s | {:.1} s | {ratio:.2}: {} | {cpu_ms:.2} ms: {} | {:.1} MiB | {}: {} | {:.1} s, {:.2} ms CPU each |",
            d.converged.as_secs_f64(),
            a.wall.as_secs_f64(),
            verdict(ratio <= 1.2),
            verdict(cpu_ms < 2.0),
            a.peak_rss as f64 / 1048576.0,
            a.errors + a.verify_failures + d.errors,
            verdict(a.errors + a.verify_failures + d.errors == 0),
            a.enroll_wall.as_secs_f64(),
            a.enroll_cpu.as_secs_f64() * 1000.0 / n as f64,
        );
    }
    println!();
    for (conc, d, a) in &rounds {
        println!("concurrency {conc}:");
        println!(
            "  load average: emulators alone {} → {}; Anvil {} → {}",
            d.load.0, d.load.1, a.load.0, a.load.1
        );
        println!(
            "  emulators alone: boot+reset requests sent in {:.1} s, all On after {:.1} s ({} PowerState reads in {} rounds); emulators' CPU {:.1} s; client CPU {:.1} s; errors {}",
            d.issued.as_secs_f64(),
            d.converged.as_secs_f64(),
            d.reads,
            d.poll_rounds,
            d.emulator_cpu.as_secs_f64(),
            d.client_cpu.as_secs_f64(),
            d.errors
        );
        println!("  emulators alone: requests {:?}", d.requests);
        println!(
            "  Anvil: the bulk POST answered in {:.2} s with {} jobs; the last job finished {:.1} s after it was sent (server time {:.1} s); job durations p50 {:.1} s, p90 {:.1} s, max {:.1} s; time queued for a slot p50 {:.1} s, max {:.1} s",
            a.post.as_secs_f64(),
            a.jobs,
            a.wall.as_secs_f64(),
            a.server_wall.as_secs_f64(),
            pct(&a.job_secs, 0.5),
            pct(&a.job_secs, 0.9),
            pct(&a.job_secs, 1.0),
            pct(&a.queued_secs, 0.5),
            pct(&a.queued_secs, 1.0),
        );
        println!(
            "  Anvil: CPU {:.2} s ({:.2} ms per action; of which following the event feed ≈ {:.2} ms per action, {} polls); peak RSS {:.1} MiB, RSS after {:.1} MiB; emulators' CPU {:.1} s",
            a.cpu.as_secs_f64(),
            a.cpu.as_secs_f64() * 1000.0 / n as f64,
            a.poll_cpu_estimate.as_secs_f64() * 1000.0 / n as f64,
            a.polls,
            a.peak_rss as f64 / 1048576.0,
            a.rss_after as f64 / 1048576.0,
            a.emulator_cpu.as_secs_f64(),
        );
        println!(
            "  Anvil: failed jobs {}; systems not On with a Pxe override afterwards {}; machines not recorded as on {}{}",
            a.errors,
            a.verify_failures,
            a.not_on_in_anvil,
            if a.error_samples.is_empty() {
                String::new()
            } else {
                format!("; first errors: {:?}", a.error_samples)
            }
        );
        println!(
            "  Anvil: requests to the emulators during the action {:?} ({:.1} per action)",
            a.requests,
            a.requests.values().sum::<usize>() as f64 / n as f64
        );
        println!(
            "  enrolment: {} systems in {:.1} s ({} errors), Anvil CPU {:.1} s",
            n,
            a.enroll_wall.as_secs_f64(),
            a.enroll_errors,
            a.enroll_cpu.as_secs_f64()
        );
    }
    Ok(ok)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ticks(t: u64, clk_tck: u64) -> Duration {
    Duration::from_secs_f64(t as f64 / clk_tck as f64)
}

// --- sushy-tools ----------------------------------------------------------------

fn make_venv() -> Result<PathBuf> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = crates.join("anvil-power-redfish/scripts/sushy-venv.sh");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crates.join("../target"));
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(target.join("sushy-venv"))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed (python3-venv, PyPI access?)", script.display());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// One htpasswd line (bcrypt: the only kind sushy-tools accepts), made by
/// the venv's bcrypt; the password goes through stdin.
fn htpasswd(venv: &Path) -> Result<String> {
    let mut child = std::process::Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import sys, bcrypt\nu, p = sys.stdin.read().split('\\t', 1)\nprint(u + ':' + bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run the venv's python")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("{BMC_USER}\t{BMC_PASSWORD}").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("bcrypt hashing failed");
    }
    Ok(String::from_utf8(out.stdout)?)
}

struct Emulator {
    child: Child,
    pid: u32,
    port: u16,
    log: PathBuf,
}

struct Emulators {
    procs: Vec<Emulator>,
    http: reqwest::Client,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn py(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl Emulators {
    /// Starts `n_emus` emulators with fresh state, each with its share of
    /// the systems (all Off), and waits until each lists all of them.
    async fn start(
        venv: &Path,
        work: &Path,
        tag: &str,
        all: &[Sys],
        n_emus: usize,
        htpasswd: &str,
    ) -> Result<Emulators> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(0)
            .build()?;
        let mut procs = Vec::new();
        for e in 0..n_emus {
            let dir = work.join(format!("{tag}-emu{e}"));
            std::fs::create_dir_all(dir.join("state"))?;
            std::fs::write(dir.join("htpasswd"), htpasswd)?;
            let mut sys = String::new();
            for s in all.iter().filter(|s| s.emulator == e) {
                sys.push_str(&format!(
                    "  {{'uuid': {}, 'name': {}, 'power_state': 'Off', 'external_notifier': False, 'nics': [{{'mac': {}, 'ip': '127.0.0.1'}}]}},\n",
                    py(&s.uuid),
                    py(&s.name),
                    py(&s.mac)
                ));
            }
            let mut started = None;
            for _ in 0..3 {
                let port = free_port()?;
                std::fs::write(
                    dir.join("emulator.conf"),
                    format!(
                        "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
                         SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
                         SUSHY_EMULATOR_FAKE_DRIVER = True\n\
                         SUSHY_EMULATOR_AUTH_FILE = {}\n\
                         SUSHY_EMULATOR_STATE_DIR = {}\n\
                         SUSHY_EMULATOR_FAKE_SYSTEMS = [\n{sys}]\n\
                         SUSHY_EMULATOR_STORAGE = {{}}\n\
                         SUSHY_EMULATOR_DRIVES = {{}}\n",
                        py(&dir.join("htpasswd").to_string_lossy()),
                        py(&dir.join("state").to_string_lossy()),
                    ),
                )?;
                let logf = std::fs::File::create(dir.join("emulator.log"))?;
                let child = Command::new(venv.join("bin/sushy-emulator"))
                    .arg("--config")
                    .arg(dir.join("emulator.conf"))
                    .stdin(Stdio::null())
                    .stdout(logf.try_clone()?)
                    .stderr(logf)
                    .kill_on_drop(true)
                    .spawn()
                    .context("cannot start sushy-emulator")?;
                let pid = child.id().context("sushy-emulator exited at once")?;
                let mut em = Emulator {
                    child,
                    pid,
                    port,
                    log: dir.join("emulator.log"),
                };
                let url = format!("http://127.0.0.1:{port}/redfish/v1/");
                let deadline = Instant::now() + Duration::from_secs(90);
                let mut up = false;
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = em.child.try_wait() {
                        break;
                    }
                    if let Ok(r) = http.get(&url).send().await
                        && r.status().is_success()
                    {
                        up = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                if up {
                    started = Some(em);
                    break;
                }
                let _ = em.child.kill().await;
            }
            let em = started.with_context(|| {
                format!(
                    "sushy-emulator {e} did not start; its log:\n{}",
                    tail(&dir.join("emulator.log"), 20)
                )
            })?;
            procs.push(em);
        }
        let emus = Emulators { procs, http };
        for (e, p) in emus.procs.iter().enumerate() {
            let want = all.iter().filter(|s| s.emulator == e).count();
            let v: Value = emus
                .http
                .get(format!("http://127.0.0.1:{}/redfish/v1/Systems", p.port))
                .basic_auth(BMC_USER, Some(BMC_PASSWORD))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let got = v["Members"].as_array().map_or(0, Vec::len);
            if got != want {
                bail!("emulator {e} lists {got} systems, not {want}");
            }
        }
        Ok(emus)
    }

    fn system_url(&self, s: &Sys) -> String {
        format!(
            "http://127.0.0.1:{}/redfish/v1/Systems/{}",
            self.procs[s.emulator].port, s.uuid
        )
    }

    /// Where each emulator's request log ends now.
    fn log_offsets(&self) -> Vec<u64> {
        self.procs
            .iter()
            .map(|p| std::fs::metadata(&p.log).map_or(0, |m| m.len()))
            .collect()
    }

    /// Requests logged since `offsets`, by method (Werkzeug logs one line
    /// per request: `"GET /path HTTP/1.1" 200 -`).
    fn requests_since(&self, offsets: &[u64]) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for (p, &off) in self.procs.iter().zip(offsets) {
            let Ok(bytes) = std::fs::read(&p.log) else {
                continue;
            };
            let text = String::from_utf8_lossy(bytes.get(off as usize..).unwrap_or_default());
            for line in text.lines() {
                // Werkzeug colours some status lines: drop `ESC[…m`.
                let mut plain = String::with_capacity(line.len());
                let mut chars = line.chars();
                while let Some(c) = chars.next() {
                    if c == '\u{1b}' {
                        for c2 in chars.by_ref() {
                            if c2.is_ascii_alphabetic() {
                                break;
                            }
                        }
                    } else {
                        plain.push(c);
                    }
                }
                let Some((_, rest)) = plain.split_once("] \"") else {
                    continue;
                };
                let method = rest.split_whitespace().next().unwrap_or("?");
                let status = rest
                    .split_once("\" ")
                    .and_then(|(_, r)| r.split_whitespace().next())
                    .unwrap_or("?");
                *out.entry(format!("{method} {status}")).or_insert(0) += 1;
            }
        }
        out
    }

    fn cpu_ticks(&self) -> u64 {
        self.procs
            .iter()
            .filter_map(|p| procfs::cpu_ticks(p.pid).ok())
            .sum()
    }

    /// Kills every emulator (our children, by PID) and waits for them.
    async fn stop(mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill().await;
        }
    }
}

fn tail(p: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let l: Vec<&str> = t.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// A Redfish request, retried (up to 3 more times, 0.5 s apart) on a
/// connection error or a 5xx, as a client must; each failure is counted.
async fn redfish(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
    errors: &std::sync::atomic::AtomicUsize,
) -> Option<Value> {
    for _ in 0..4 {
        let mut rb = http
            .request(method.clone(), url)
            .basic_auth(BMC_USER, Some(BMC_PASSWORD));
        if let Some(b) = body {
            rb = rb.json(b);
        }
        match rb.send().await {
            Ok(r) if r.status().is_success() => {
                return Some(r.json().await.unwrap_or(Value::Null));
            }
            Ok(r) if r.status().is_client_error() => {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
            _ => {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    None
}

// --- the emulators alone --------------------------------------------------------

struct DirectFigures {
    /// /proc/loadavg when the timed part started and ended: the machine is
    /// shared, and the two phases of a round may not see the same load.
    load: (String, String),
    issued: Duration,
    converged: Duration,
    reads: usize,
    poll_rounds: usize,
    errors: usize,
    emulator_cpu: Duration,
    client_cpu: Duration,
    requests: std::collections::BTreeMap<String, usize>,
}

async fn direct_run(
    emus: &Emulators,
    all: &[Sys],
    concurrency: usize,
    clk_tck: u64,
    timeout: u64,
) -> Result<DirectFigures> {
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let me = std::process::id();
    let (emu0, me0) = (emus.cpu_ticks(), procfs::cpu_ticks(me)?);
    let offsets = emus.log_offsets();
    let load_before = procfs::loadavg();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for s in all {
        let (http, url) = (emus.http.clone(), emus.system_url(s));
        let (errors, slots) = (errors.clone(), slots.clone());
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let boot = json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}});
            redfish(&http, reqwest::Method::PATCH, &url, Some(&boot), &errors).await;
            let on = json!({"ResetType": "On"});
            redfish(
                &http,
                reqwest::Method::POST,
                &format!("{url}/Actions/ComputerSystem.Reset"),
                Some(&on),
                &errors,
            )
            .await;
        });
    }
    while set.join_next().await.is_some() {}
    let issued = t0.elapsed();
    let mut pending: Vec<String> = all.iter().map(|s| emus.system_url(s)).collect();
    let (mut reads, mut rounds) = (0, 0);
    while !pending.is_empty() {
        let round = Instant::now();
        rounds += 1;
        reads += pending.len();
        let mut set = tokio::task::JoinSet::new();
        for url in pending.drain(..) {
            let (http, errors, slots) = (emus.http.clone(), errors.clone(), slots.clone());
            set.spawn(async move {
                let _slot = slots.acquire_owned().await;
                let v = redfish(&http, reqwest::Method::GET, &url, None, &errors).await;
                let on = v.as_ref().and_then(|v| v["PowerState"].as_str()) == Some("On");
                (!on).then_some(url)
            });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(Some(url)) = r {
                pending.push(url);
            }
        }
        if t0.elapsed() > Duration::from_secs(timeout) {
            bail!(
                "{} systems still not On after {timeout} s (direct)",
                pending.len()
            );
        }
        if !pending.is_empty()
            && let Some(rest) = Duration::from_millis(250).checked_sub(round.elapsed())
        {
            tokio::time::sleep(rest).await;
        }
    }
    let converged = t0.elapsed();
    Ok(DirectFigures {
        load: (load_before, procfs::loadavg()),
        issued,
        converged,
        reads,
        poll_rounds: rounds,
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
        emulator_cpu: ticks(emus.cpu_ticks().saturating_sub(emu0), clk_tck),
        client_cpu: ticks(procfs::cpu_ticks(me)?.saturating_sub(me0), clk_tck),
        requests: emus.requests_since(&offsets),
    })
}

// --- through Anvil ------------------------------------------------------------

struct AnvilFigures {
    /// /proc/loadavg when the timed action started and ended.
    load: (String, String),
    enroll_wall: Duration,
    enroll_cpu: Duration,
    enroll_errors: usize,
    post: Duration,
    jobs: usize,
    /// From sending the bulk POST to reading the last job's completion.
    wall: Duration,
    /// From the first job's creation to the last one's finish (server clock).
    server_wall: Duration,
    job_secs: Vec<f64>,
    queued_secs: Vec<f64>,
    cpu: Duration,
    polls: usize,
    poll_cpu_estimate: Duration,
    peak_rss: u64,
    rss_after: u64,
    errors: usize,
    error_samples: Vec<String>,
    verify_failures: usize,
    not_on_in_anvil: usize,
    emulator_cpu: Duration,
    requests: std::collections::BTreeMap<String, usize>,
}

struct Serve {
    child: Child,
    pid: u32,
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Serve {
    async fn start(anvil: &Path, dir: &Path, concurrency: usize) -> Result<Serve> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let config = dir.join("anvil.toml");
        std::fs::write(
            &config,
            format!(
                "[power]\nconcurrency = {concurrency}\naction_timeout_secs = 300\nstatus_timeout_secs = 30\npoll_interval_secs = 0\n"
            ),
        )?;
        let mut cmd = Command::new(anvil);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0", "--tftp-listen", "127.0.0.1:0"]);
        scrub(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("anvil-serve.log"))?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", anvil.display()))?;
        let pid = child.id().context("anvil serve exited at once")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(u) = l.strip_prefix("anvil: listening on ") {
                    return Some(u.trim().to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .with_context(|| {
            format!(
                "anvil serve did not start; its log:\n{}",
                tail(&dir.join("anvil-serve.log"), 30)
            )
        })?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut cmd = Command::new(anvil);
        cmd.args(["token", "create", "bench", "--local", "--data-dir"])
            .arg(&data)
            .args(["-o", "json"]);
        scrub(&mut cmd);
        let out = cmd.output().await?;
        if !out.status.success() {
            bail!(
                "anvil token create --local: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let token = v["secret"].as_str().context("no token secret")?.to_string();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let ready = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if ready.elapsed() > Duration::from_secs(30) {
                bail!("/readyz did not answer");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Serve {
            child,
            pid,
            base,
            token,
            http,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut rb = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await?;
        let st = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            st,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// SIGTERM by PID, then wait (SIGKILL after 20 s).
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `perf record` attached to Anvil for the timed action only.
struct Profiler {
    child: Child,
    pid: u32,
    out: PathBuf,
}

impl Profiler {
    async fn start(prefix: &Path, concurrency: usize, anvil_pid: u32) -> Result<Profiler> {
        let mut out = prefix.as_os_str().to_owned();
        out.push(format!(".c{concurrency}.data"));
        let out = PathBuf::from(out);
        let child = Command::new("perf")
            .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
            .arg(&out)
            .args(["-p", &anvil_pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start perf record (is perf installed?)")?;
        let pid = child.id().context("perf record exited at once")?;
        // perf needs a moment to attach before the action starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Profiler { child, pid, out })
    }

    /// SIGINT by PID: perf writes its file and exits.
    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        log(format!("profile written to {}", self.out.display()));
    }
}

fn scrub(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ANVIL_") {
            cmd.env_remove(&k);
        }
    }
}

fn rfc3339(v: &Value) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

fn secs_between(a: &Value, b: &Value) -> Option<f64> {
    Some((rfc3339(b)? - rfc3339(a)?).as_seconds_f64())
}

#[allow(clippy::too_many_arguments)]
async fn anvil_run(
    anvil: &Path,
    work: &Path,
    round: usize,
    concurrency: usize,
    emus: &Emulators,
    all: &[Sys],
    args: &Args,
    clk_tck: u64,
) -> Result<AnvilFigures> {
    let dir = work.join(format!("r{round}-anvil"));
    std::fs::create_dir_all(&dir)?;
    let serve = Arc::new(Serve::start(anvil, &dir, concurrency).await?);
    let n = all.len();

    // Enrolment (not part of the timed action).
    let cpu0 = procfs::cpu_ticks(serve.pid)?;
    let t0 = Instant::now();
    let slots = Arc::new(Semaphore::new(args.enroll_concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for s in all {
        let (serve, slots) = (serve.clone(), slots.clone());
        let body = json!({
            "driver": "redfish",
            "address": emus.system_url(s),
            "port": null,
            "username": BMC_USER,
            "password": BMC_PASSWORD,
            "hostname": s.name,
            "verify_tls": false,
            "tags": [TAG],
        });
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            match serve
                .call(reqwest::Method::POST, "/enroll", Some(&body))
                .await
            {
                Ok((201, _)) => None,
                Ok((st, v)) => Some(format!("enroll {}: {st} {v}", body["hostname"])),
                Err(e) => Some(format!("enroll {}: {e}", body["hostname"])),
            }
        });
    }
    let mut enroll_errors = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(Some(e)) = r {
            enroll_errors.push(e);
        }
    }
    let enroll_wall = t0.elapsed();
    let enroll_cpu = ticks(procfs::cpu_ticks(serve.pid)?.saturating_sub(cpu0), clk_tck);
    if !enroll_errors.is_empty() {
        bail!(
            "{} enrolments failed, e.g. {:?}",
            enroll_errors.len(),
            &enroll_errors[..enroll_errors.len().min(3)]
        );
    }
    let (_, list) = serve
        .call(
            reqwest::Method::GET,
            &format!("/machines?tag={TAG}&limit=1000"),
            None,
        )
        .await?;
    log(format!(
        "enrolled {} machines in {:.1} s",
        list["total"],
        enroll_wall.as_secs_f64()
    ));

    // The end of the event feed: completions are read after it.
    let mut cursor: i64 = 0;
    loop {
        let (_, v) = serve
            .call(
                reqwest::Method::GET,
                &format!("/events?after={cursor}&limit=1000"),
                None,
            )
            .await?;
        let items = v["items"].as_array().map_or(0, Vec::len);
        cursor = v["next_after"].as_i64().unwrap_or(cursor);
        if items == 0 {
            break;
        }
    }

    // The timed action.
    let profiler = match &args.perf {
        Some(prefix) => Some(Profiler::start(prefix, concurrency, serve.pid).await?),
        None => None,
    };
    let emu0 = emus.cpu_ticks();
    let offsets = emus.log_offsets();
    let load_before = procfs::loadavg();
    let cpu0 = procfs::cpu_ticks(serve.pid)?;
    let t0 = Instant::now();
    let action = args.action.as_str();
    let (st, jobs) = serve
        .call(
            reqwest::Method::POST,
            &format!("/actions/{action}"),
            Some(&json!({"tag": TAG})),
        )
        .await?;
    let post = t0.elapsed();
    if st != 202 {
        bail!("POST /actions/{action} answered {st}: {jobs}");
    }
    let (done_kind, failed_kind) = (format!("power.{action}"), format!("power.{action}.failed"));
    let job_ids: std::collections::HashSet<String> = jobs["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|j| j["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let (mut ok, mut failed, mut polls) = (0usize, 0usize, 0usize);
    let mut samples = Vec::new();
    while ok + failed < job_ids.len() {
        if t0.elapsed() > Duration::from_secs(args.timeout) {
            bail!(
                "{} of {} jobs unfinished after {} s",
                job_ids.len() - ok - failed,
                job_ids.len(),
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        loop {
            polls += 1;
            let (_, v) = serve
                .call(
                    reqwest::Method::GET,
                    &format!("/events?after={cursor}&limit=1000"),
                    None,
                )
                .await?;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            cursor = v["next_after"].as_i64().unwrap_or(cursor);
            for e in &items {
                let job = e["data"]["job"].as_str().unwrap_or("");
                if !job_ids.contains(job) {
                    continue;
                }
                match e["kind"].as_str() {
                    Some(k) if k == done_kind => ok += 1,
                    Some(k) if k == failed_kind => {
                        failed += 1;
                        if samples.len() < 3 {
                            samples.push(e["message"].as_str().unwrap_or("").to_string());
                        }
                    }
                    _ => {}
                }
            }
            if items.len() < 1000 {
                break;
            }
        }
    }
    let wall = t0.elapsed();
    let cpu = ticks(procfs::cpu_ticks(serve.pid)?.saturating_sub(cpu0), clk_tck);
    let load = (load_before, procfs::loadavg());
    let emulator_cpu = ticks(emus.cpu_ticks().saturating_sub(emu0), clk_tck);
    if let Some(p) = profiler {
        p.stop().await;
    }
    // Give Werkzeug a moment to write its last log lines.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = emus.requests_since(&offsets);
    let peak_rss = procfs::peak_rss(serve.pid)?;
    log(format!(
        "{ok} jobs succeeded, {failed} failed, in {:.1} s",
        wall.as_secs_f64()
    ));

    // What following the feed costs: as many empty polls as were made.
    let c0 = procfs::cpu_ticks(serve.pid)?;
    for _ in 0..polls.max(1) {
        serve
            .call(
                reqwest::Method::GET,
                &format!("/events?after={cursor}&limit=1000"),
                None,
            )
            .await?;
    }
    let poll_cpu_estimate = ticks(procfs::cpu_ticks(serve.pid)?.saturating_sub(c0), clk_tck);

    // Job timings, server side.
    let mut job_secs = Vec::new();
    let mut queued_secs = Vec::new();
    let (mut first_created, mut last_finished): (Option<Value>, Option<Value>) = (None, None);
    let ids: Vec<String> = job_ids.iter().cloned().collect();
    let mut set = tokio::task::JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(16).max(1)) {
        let (serve, chunk) = (serve.clone(), chunk.to_vec());
        set.spawn(async move {
            let mut out = Vec::new();
            for id in chunk {
                if let Ok((200, j)) = serve
                    .call(reqwest::Method::GET, &format!("/jobs/{id}"), None)
                    .await
                {
                    out.push(j);
                }
            }
            out
        });
    }
    while let Some(r) = set.join_next().await {
        for j in r.unwrap_or_default() {
            if let Some(s) = secs_between(&j["started_at"], &j["finished_at"]) {
                job_secs.push(s);
            }
            if let Some(s) = secs_between(&j["created_at"], &j["started_at"]) {
                queued_secs.push(s);
            }
            if first_created
                .as_ref()
                .is_none_or(|f| rfc3339(&j["created_at"]) < rfc3339(f))
            {
                first_created = Some(j["created_at"].clone());
            }
            if last_finished
                .as_ref()
                .is_none_or(|f| rfc3339(&j["finished_at"]) > rfc3339(f))
            {
                last_finished = Some(j["finished_at"].clone());
            }
        }
    }
    job_secs.sort_by(f64::total_cmp);
    queued_secs.sort_by(f64::total_cmp);
    let server_wall = match (&first_created, &last_finished) {
        (Some(a), Some(b)) => Duration::from_secs_f64(secs_between(a, b).unwrap_or(0.0).max(0.0)),
        _ => Duration::ZERO,
    };

    // Check: Anvil's records, and the emulators themselves.
    let (_, list) = serve
        .call(
            reqwest::Method::GET,
            &format!("/machines?tag={TAG}&limit=1000"),
            None,
        )
        .await?;
    let mut not_on_in_anvil = list["items"]
        .as_array()
        .map(|a| a.iter().filter(|m| m["power_state"] != "on").count())
        .unwrap_or(n);
    not_on_in_anvil += n.saturating_sub(list["items"].as_array().map_or(0, Vec::len));
    let verr = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slots = Arc::new(Semaphore::new(32));
    let mut set = tokio::task::JoinSet::new();
    for s in all {
        let (http, url, verr, slots) = (
            emus.http.clone(),
            emus.system_url(s),
            verr.clone(),
            slots.clone(),
        );
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let v = redfish(&http, reqwest::Method::GET, &url, None, &verr).await;
            v.is_some_and(|v| {
                v["PowerState"] == "On" && v["Boot"]["BootSourceOverrideTarget"] == "Pxe"
            })
        });
    }
    let mut verify_failures = 0;
    while let Some(r) = set.join_next().await {
        if !r.unwrap_or(false) {
            verify_failures += 1;
        }
    }
    let rss_after = procfs::rss(serve.pid).unwrap_or(0);
    match Arc::try_unwrap(serve) {
        Ok(s) => s.stop().await,
        Err(_) => bail!("the server handle is still shared"),
    }
    Ok(AnvilFigures {
        load,
        enroll_wall,
        enroll_cpu,
        enroll_errors: enroll_errors.len(),
        post,
        jobs: job_ids.len(),
        wall,
        server_wall,
        job_secs,
        queued_secs,
        cpu,
        polls,
        poll_cpu_estimate,
        peak_rss,
        rss_after,
        errors: failed + (n - job_ids.len().min(n)),
        error_samples: samples,
        verify_failures,
        not_on_in_anvil,
        emulator_cpu,
        requests,
    })
}
