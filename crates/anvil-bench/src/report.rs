//! The printed report: machine description, one column per backend, and the
//! foundation issue's targets with ok/MISSED marks.

use crate::load::percentile;
use crate::{Backend, RunFigures, Settings, pg, procfs};
use std::time::Duration;

/// Targets from the foundation issue.
const CREATE_TARGET_PER_1000: Duration = Duration::from_secs(2);
const LIST_TARGET: Duration = Duration::from_millis(50);
/// "30 MB", read strictly as 30 × 10^6 bytes.
const IDLE_RSS_TARGET: u64 = 30_000_000;

const LABEL: usize = 36;
const COL: usize = 30;

pub fn print_header(s: &Settings, load: &str, database_url: Option<&str>) {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("Anvil benchmark: API create/list and idle memory");
    println!("  date          {date}");
    println!(
        "  anvil         {} ({})",
        s.anvil.display(),
        s.anvil_version
    );
    println!(
        "  machine       {nproc} CPUs ({}), {} RAM, Linux {}",
        procfs::cpu_model(),
        procfs::mem_total(),
        procfs::kernel()
    );
    println!(
        "  load average  {load} (1/5/15 min) at start; the machine is shared, figures are noisy"
    );
    println!(
        "  data dirs in  {} ({})",
        s.work_dir.display(),
        procfs::filesystem_of(&s.work_dir)
    );
    if let Some(url) = database_url {
        println!(
            "  PostgreSQL    {} (a fresh database per run)",
            pg::redact(url)
        );
    }
    println!(
        "  workload      {} machines with one interface each, {} concurrent clients, {} list runs",
        s.machines, s.concurrency, s.list_runs
    );
    println!("  note          the benchmark client runs on the same {nproc} CPUs as the server");
    println!();
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
}

/// "ok" or "MISSED (×ratio)".
fn mark(value: f64, target: f64) -> String {
    if value < target {
        "ok".into()
    } else {
        format!("MISSED x{:.2}", value / target)
    }
}

fn row(label: &str, cells: &[String], target: &str) {
    let mut line = format!("{label:<LABEL$}");
    for c in cells {
        // Keep two spaces between columns even when a cell is too wide.
        line.push_str(&format!("{c:<w$}", w = COL.max(c.len() + 2)));
    }
    line.push_str(target);
    println!("{}", line.trim_end());
}

pub fn print_results(
    s: &Settings,
    runs: &[RunFigures],
    failures: &[(Backend, String)],
    load_after: &str,
) {
    let n = s.machines;
    let create_target = CREATE_TARGET_PER_1000.mul_f64(n as f64 / 1000.0);
    let cells = |f: &dyn Fn(&RunFigures) -> String| runs.iter().map(f).collect::<Vec<_>>();
    let with_mark = |v: String, m: String| format!("{v}  {m}");

    row("", &cells(&|r| r.backend.name().to_string()), "target");
    row(
        "startup (spawn to /readyz 200)",
        &cells(&|r| ms(r.startup)),
        "",
    );
    row(
        "idle RSS (VmRSS after 2 s idle)",
        &cells(&|r| {
            with_mark(
                mib(r.idle_rss),
                mark(r.idle_rss as f64, IDLE_RSS_TARGET as f64),
            )
        }),
        &format!(
            "< 30 MB ({:.1} MiB)",
            IDLE_RSS_TARGET as f64 / 1024.0 / 1024.0
        ),
    );
    println!("create {n} machines, {} concurrent clients", s.concurrency);
    row(
        "  wall time",
        &cells(&|r| {
            with_mark(
                secs(r.create.wall),
                mark(r.create.wall.as_secs_f64(), create_target.as_secs_f64()),
            )
        }),
        &format!("< {}", secs(create_target)),
    );
    row(
        "  throughput",
        &cells(&|r| {
            format!(
                "{:.0} creates/s",
                r.create.requests as f64 / r.create.wall.as_secs_f64()
            )
        }),
        "",
    );
    row(
        "  latency p50 / p99 / max",
        &cells(&|r| {
            let l = &r.create.latencies;
            format!(
                "{} / {} / {}",
                ms(percentile(l, 50.0)),
                ms(percentile(l, 99.0)),
                ms(percentile(l, 100.0))
            )
        }),
        "",
    );
    row(
        "  errors (not 201)",
        &cells(&|r| r.create.errors.to_string()),
        "0",
    );
    row(
        "  server CPU, total",
        &cells(&|r| secs(r.create.server_cpu)),
        "",
    );
    row(
        "  server CPU per create",
        &cells(&|r| ms(r.create.server_cpu.div_f64(r.create.requests as f64))),
        "",
    );
    row(
        "  benchmark client CPU, total",
        &cells(&|r| secs(r.create.client_cpu)),
        "",
    );
    let expected = runs.first().map(|r| r.list.expected_items).unwrap_or(n);
    println!(
        "list {expected} machines with details (GET /api/v1/machines?limit={expected}, {} runs)",
        s.list_runs
    );
    row(
        "  min",
        &cells(&|r| ms(percentile(&r.list.latencies, 0.0))),
        "",
    );
    row(
        "  median",
        &cells(&|r| {
            let med = percentile(&r.list.latencies, 50.0);
            with_mark(ms(med), mark(med.as_secs_f64(), LIST_TARGET.as_secs_f64()))
        }),
        &format!("< {}", ms(LIST_TARGET)),
    );
    row(
        "  p95",
        &cells(&|r| ms(percentile(&r.list.latencies, 95.0))),
        "",
    );
    row("  first run", &cells(&|r| ms(r.list.first)), "");
    row(
        "  response body",
        &cells(&|r| format!("{:.0} KiB", r.list.body_bytes as f64 / 1024.0)),
        "",
    );
    row(
        "  server CPU per list",
        &cells(&|r| ms(r.list.server_cpu.div_f64(r.list.runs.max(1) as f64))),
        "",
    );
    row(
        "  wrong or failed answers",
        &cells(&|r| r.list.errors.to_string()),
        "0",
    );
    row("peak RSS (VmHWM)", &cells(&|r| mib(r.peak_rss)), "");
    row("RSS after the runs", &cells(&|r| mib(r.rss_after)), "");
    row(
        "SIGTERM: exit status, time",
        &cells(&|r| {
            let code = r
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "signal".into());
            let m = if r.exit_code == Some(0) {
                "ok"
            } else {
                "FAILED"
            };
            format!("{code} in {}  {m}", ms(r.shutdown))
        }),
        "0 (clean shutdown)",
    );
    println!();
    println!("  load average  {load_after} (1/5/15 min) at the end");
    println!(
        "  server CPU    utime+stime of the anvil process from /proc/PID/stat ({} ticks/s); with PostgreSQL the database server's own CPU is not included",
        s.clk_tck
    );
    println!(
        "  for scale     OpenStack Ironic 39, from the foundation issue and NOT measured in this run: 1,000 creates 47-72 s (~25 ms server CPU each), list 0.36-1.75 s, idle ~300 MB"
    );

    for r in runs {
        for e in &r.create.error_samples {
            println!("  {} create error: {e}", r.backend.name());
        }
        for e in &r.list.error_samples {
            println!("  {} list error: {e}", r.backend.name());
        }
    }
    for (b, e) in failures {
        println!("  {}: FAILED: {e}", b.name());
    }
    let failed = !failures.is_empty() || runs.iter().any(RunFigures::failed);
    let missed = runs.iter().any(|r| {
        r.idle_rss >= IDLE_RSS_TARGET
            || r.create.wall >= create_target
            || percentile(&r.list.latencies, 50.0) >= LIST_TARGET
    });
    println!(
        "  result        {}{}",
        if failed {
            "FAILED (errors above)"
        } else {
            "no errors"
        },
        if missed {
            "; some targets MISSED"
        } else {
            "; all targets met"
        }
    );
}
