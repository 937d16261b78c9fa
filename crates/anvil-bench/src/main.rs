//! `anvil-bench`: measures a real `anvil serve` process through its REST API.
//!
//! For each backend (SQLite, PostgreSQL) it starts the server on a loopback
//! port with a fresh data directory (and a fresh PostgreSQL database), makes an
//! admin token with `anvil token create --local`, then measures:
//!
//! * idle memory (VmRSS) after 2 s without traffic;
//! * N `POST /api/v1/machines` (one interface each) from C concurrent
//!   clients over keep-alive connections: wall time, latency, errors and the
//!   server's CPU time per create;
//! * K `GET /api/v1/machines?limit=1000` with details, each answer checked;
//! * peak memory (VmHWM), memory afterwards, and a clean exit on SIGTERM.
//!
//! It prints the figures next to the foundation issue's targets. A missed
//! target is printed as MISSED; the exit status is non-zero only if a request
//! failed, an answer was wrong or the server did not shut down cleanly.
//! See docs/benchmarks.md.

mod load;
mod pg;
mod procfs;
mod report;
mod server;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "anvil-bench",
    version,
    about = "Benchmark `anvil serve`: API creates and lists on SQLite and PostgreSQL, CPU and memory"
)]
struct Args {
    /// The anvil binary to measure. Default: `anvil` next to this program
    /// (target/release/anvil after `cargo build --release -p anvil -p anvil-bench`).
    #[arg(long, value_name = "PATH")]
    anvil: Option<PathBuf>,
    /// Machines to create.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    machines: u32,
    /// Concurrent API clients during the create phase.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    concurrency: u32,
    /// Which store backends to measure.
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    backend: BackendChoice,
    /// PostgreSQL server to create a throw-away database on (the role needs
    /// CREATEDB); `scripts/test.sh --setup-only` prints a suitable value.
    #[arg(
        long,
        env = "ANVIL_TEST_POSTGRES_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// How many times to list the machines.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    list_runs: u32,
    /// Directory for the temporary data directories (default: the system's
    /// temporary directory). Its file system matters for SQLite's fsyncs.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// Everything measured on one backend.
pub struct RunFigures {
    pub backend: Backend,
    /// From spawning the process to `/readyz` answering 200.
    pub startup: Duration,
    pub idle_rss: u64,
    pub create: load::CreateFigures,
    pub list: load::ListFigures,
    pub peak_rss: u64,
    pub rss_after: u64,
    /// Exit code after SIGTERM (None: killed by a signal), and how long it took.
    pub exit_code: Option<i32>,
    pub shutdown: Duration,
}

impl RunFigures {
    /// Did anything go wrong that is not just slowness?
    pub fn failed(&self) -> bool {
        self.create.errors > 0 || self.list.errors > 0 || self.exit_code != Some(0)
    }
}

pub struct Settings {
    pub anvil: PathBuf,
    pub anvil_version: String,
    pub machines: usize,
    pub concurrency: usize,
    pub list_runs: usize,
    pub work_dir: PathBuf,
    pub clk_tck: u64,
}

fn main() -> ExitCode {
    // reqwest and sqlx are built without a default TLS provider; install
    // one even though all traffic here is plain HTTP on loopback.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("anvil-bench: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("anvil-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the selected backends; `Ok(false)` if any of them failed.
async fn run(args: Args) -> Result<bool> {
    let anvil = match args.anvil {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .with_file_name("anvil"),
    };
    if !anvil.is_file() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p anvil -p anvil-bench`, or pass --anvil PATH",
            anvil.display()
        );
    }
    let anvil_version = std::process::Command::new(&anvil)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".into());
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let settings = Settings {
        anvil,
        anvil_version,
        machines: args.machines as usize,
        concurrency: args.concurrency as usize,
        list_runs: args.list_runs as usize,
        work_dir,
        clk_tck: procfs::clock_ticks_per_second(),
    };
    let backends: &[Backend] = match args.backend {
        BackendChoice::Sqlite => &[Backend::Sqlite],
        BackendChoice::Postgres => &[Backend::Postgres],
        BackendChoice::Both => &[Backend::Sqlite, Backend::Postgres],
    };

    let load_before = procfs::loadavg();
    report::print_header(&settings, &load_before, args.database_url.as_deref());

    let mut results: Vec<RunFigures> = Vec::new();
    let mut failures: Vec<(Backend, String)> = Vec::new();
    for &backend in backends {
        eprintln!("anvil-bench: measuring {} …", backend.name());
        let r = match backend {
            Backend::Sqlite => run_backend(&settings, backend, None).await,
            Backend::Postgres => match args.database_url.as_deref() {
                Some(url) => run_backend(&settings, backend, Some(url)).await,
                None => Err(anyhow::anyhow!(
                    "no PostgreSQL server: set ANVIL_TEST_POSTGRES_URL (`scripts/test.sh --setup-only` prints it) or pass --database-url, or use --backend sqlite"
                )),
            },
        };
        match r {
            Ok(f) => results.push(f),
            Err(e) => {
                eprintln!("anvil-bench: {}: {e:#}", backend.name());
                failures.push((backend, format!("{e:#}")));
            }
        }
    }

    report::print_results(&settings, &results, &failures, &procfs::loadavg());
    Ok(failures.is_empty() && !results.iter().any(RunFigures::failed))
}

/// One backend: fresh temp dir (and database), server, measurements, cleanup.
async fn run_backend(
    s: &Settings,
    backend: Backend,
    admin_url: Option<&str>,
) -> Result<RunFigures> {
    std::fs::create_dir_all(&s.work_dir)
        .with_context(|| format!("cannot create {}", s.work_dir.display()))?;
    let dir = tempfile::Builder::new()
        .prefix("anvil-bench-")
        .tempdir_in(&s.work_dir)
        .with_context(|| {
            format!(
                "cannot make a temporary directory in {}",
                s.work_dir.display()
            )
        })?;
    let db = match admin_url {
        Some(url) => Some(pg::TempDatabase::create(url).await?),
        None => None,
    };
    let result = measure(s, backend, dir.path(), db.as_ref().map(|d| d.url.as_str())).await;
    if let Some(db) = db {
        let name = db.name.clone();
        if let Err(e) = db.drop_database().await {
            eprintln!("anvil-bench: warning: could not drop database {name}: {e:#}");
        }
    }
    result
}

async fn measure(
    s: &Settings,
    backend: Backend,
    dir: &std::path::Path,
    database_url: Option<&str>,
) -> Result<RunFigures> {
    let data_dir = dir.join("data");
    let log = dir.join("anvil-serve.log");
    let t0 = Instant::now();
    let mut server = server::Server::start(&s.anvil, &data_dir, database_url, &log).await?;
    let http = reqwest::Client::builder()
        // Loopback only: never route through a proxy from the environment.
        .no_proxy()
        .pool_max_idle_per_host(s.concurrency)
        .timeout(Duration::from_secs(120))
        .build()
        .context("cannot build the HTTP client")?;
    server.wait_ready(&http).await?;
    let startup = t0.elapsed();
    let token = server::local_token(&s.anvil, &data_dir, database_url).await?;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = procfs::rss(server.pid)?;

    let create = load::create_machines(
        &http,
        &server.base,
        &token,
        server.pid,
        s.clk_tck,
        s.machines,
        s.concurrency,
    )
    .await?;
    let list = load::list_machines(
        &http,
        &server.base,
        &token,
        server.pid,
        s.clk_tck,
        s.machines,
        s.list_runs,
    )
    .await?;
    let peak_rss = procfs::peak_rss(server.pid)?;
    let rss_after = procfs::rss(server.pid)?;

    // Close the keep-alive connections before asking the server to stop.
    drop(http);
    let log_path = server.log.clone();
    let (status, shutdown) = server.stop().await?;
    if !status.success() {
        eprintln!(
            "anvil-bench: {}: anvil serve exited with {status} after SIGTERM; its log:\n{}",
            backend.name(),
            server::tail(&log_path, 30)
        );
    }
    Ok(RunFigures {
        backend,
        startup,
        idle_rss,
        create,
        list,
        peak_rss,
        rss_after,
        exit_code: status.code(),
        shutdown,
    })
}
