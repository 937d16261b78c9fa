//! The two measured phases: creating machines through the API with a fixed
//! number of concurrent clients, then listing them with details.

use crate::procfs;
use anyhow::{Context, Result, bail};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Figures of the create phase.
pub struct CreateFigures {
    pub requests: usize,
    pub wall: Duration,
    /// Latency of each request, sorted.
    pub latencies: Vec<Duration>,
    /// Requests that did not answer 201, with the first few reasons.
    pub errors: usize,
    pub error_samples: Vec<String>,
    /// Server CPU (user + system) during the phase.
    pub server_cpu: Duration,
    /// The benchmark's own CPU during the phase (it shares the machine).
    pub client_cpu: Duration,
}

/// Figures of the list phase.
pub struct ListFigures {
    pub runs: usize,
    pub expected_items: usize,
    /// Latency of each request including the whole body, sorted.
    pub latencies: Vec<Duration>,
    pub first: Duration,
    pub body_bytes: usize,
    pub server_cpu: Duration,
    /// Runs whose answer was not 200 with the expected items.
    pub errors: usize,
    pub error_samples: Vec<String>,
}

pub fn hostname(i: usize) -> String {
    format!("bench-{:05}", i + 1)
}

/// A locally administered unicast MAC, distinct for each `i` < 2^24.
pub fn mac(i: usize) -> String {
    format!(
        "02:00:00:{:02x}:{:02x}:{:02x}",
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// POSTs `n` machines with `concurrency` workers, each reusing one
/// keep-alive connection from the client's pool.
pub async fn create_machines(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    server_pid: u32,
    clk_tck: u64,
    n: usize,
    concurrency: usize,
) -> Result<CreateFigures> {
    let url = Arc::new(format!("{base}/api/v1/machines"));
    let auth = Arc::new(format!("Bearer {token}"));
    let next = Arc::new(AtomicUsize::new(0));
    // Bodies are built before the clock starts.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..n)
            .map(|i| {
                serde_json::to_vec(&serde_json::json!({
                    "hostname": hostname(i),
                    "interfaces": [{"mac": mac(i)}],
                }))
                .expect("JSON")
            })
            .collect(),
    );
    let self_pid = std::process::id();
    let server_before = procfs::cpu_ticks(server_pid)?;
    let client_before = procfs::cpu_ticks(self_pid)?;
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, url, auth, next, bodies) = (
            http.clone(),
            url.clone(),
            auth.clone(),
            next.clone(),
            bodies.clone(),
        );
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() {
                    break;
                }
                let t0 = Instant::now();
                let result = http
                    .post(url.as_str())
                    .header(reqwest::header::AUTHORIZATION, auth.as_str())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(bodies[i].clone())
                    .send()
                    .await;
                // Read the whole body so the connection goes back to the pool.
                let outcome = match result {
                    Ok(r) => {
                        let status = r.status();
                        match r.bytes().await {
                            Ok(_) if status == reqwest::StatusCode::CREATED => Ok(()),
                            Ok(b) => Err(format!(
                                "{}: {status} {}",
                                hostname(i),
                                String::from_utf8_lossy(&b[..b.len().min(300)])
                            )),
                            Err(e) => Err(format!("{}: reading the body: {e}", hostname(i))),
                        }
                    }
                    Err(e) => Err(format!("{}: {e}", hostname(i))),
                };
                latencies.push(t0.elapsed());
                if let Err(e) = outcome {
                    errors.push(e);
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::with_capacity(n);
    let mut errors = Vec::new();
    while let Some(r) = workers.join_next().await {
        let (l, e) = r.context("a worker panicked")?;
        latencies.extend(l);
        errors.extend(e);
    }
    let wall = start.elapsed();
    let server_cpu = procfs::cpu_ticks(server_pid)? - server_before;
    let client_cpu = procfs::cpu_ticks(self_pid)? - client_before;
    latencies.sort();
    let error_count = errors.len();
    errors.truncate(5);
    Ok(CreateFigures {
        requests: n,
        wall,
        latencies,
        errors: error_count,
        error_samples: errors,
        server_cpu: ticks_to_duration(server_cpu, clk_tck),
        client_cpu: ticks_to_duration(client_cpu, clk_tck),
    })
}

/// `GET /api/v1/machines?limit=…` `runs` times, one after the other,
/// checking every answer holds all machines with their interface.
pub async fn list_machines(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    server_pid: u32,
    clk_tck: u64,
    n: usize,
    runs: usize,
) -> Result<ListFigures> {
    let limit = n.clamp(1, 1000);
    let url = format!("{base}/api/v1/machines?limit={limit}");
    let auth = format!("Bearer {token}");
    let mut latencies = Vec::with_capacity(runs);
    let mut errors = Vec::new();
    let mut body_bytes = 0;
    let server_before = procfs::cpu_ticks(server_pid)?;
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        let r = http
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, &auth)
            .send()
            .await;
        let (status, body) = match r {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(b) => (status, b),
                    Err(e) => {
                        latencies.push(t0.elapsed());
                        errors.push(format!("reading the body: {e}"));
                        continue;
                    }
                }
            }
            Err(e) => {
                latencies.push(t0.elapsed());
                errors.push(e.to_string());
                continue;
            }
        };
        latencies.push(t0.elapsed());
        // Verification happens off the clock.
        body_bytes = body.len();
        if let Err(e) = check_list(status, &body, n, limit) {
            errors.push(e.to_string());
        }
    }
    let server_cpu = procfs::cpu_ticks(server_pid)? - server_before;
    let first = latencies[0];
    latencies.sort();
    let error_count = errors.len();
    errors.truncate(5);
    Ok(ListFigures {
        runs: latencies.len(),
        expected_items: limit,
        latencies,
        first,
        body_bytes,
        server_cpu: ticks_to_duration(server_cpu, clk_tck),
        errors: error_count,
        error_samples: errors,
    })
}

fn check_list(status: reqwest::StatusCode, body: &[u8], n: usize, limit: usize) -> Result<()> {
    if status != reqwest::StatusCode::OK {
        bail!(
            "{status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    let v: serde_json::Value = serde_json::from_slice(body).context("the list is not JSON")?;
    let items = v
        .get("items")
        .and_then(|i| i.as_array())
        .context("no `items` array in the list")?;
    if items.len() != limit {
        bail!("the list has {} items, expected {limit}", items.len());
    }
    if let Some(total) = v.get("total").and_then(|t| t.as_u64())
        && total != n as u64
    {
        bail!("the list says total={total}, expected {n}");
    }
    for m in items {
        let ifaces = m
            .get("interfaces")
            .and_then(|i| i.as_array())
            .with_context(|| format!("machine without `interfaces`: {m}"))?;
        let host = m.get("hostname").and_then(|h| h.as_str()).unwrap_or("?");
        if ifaces.len() != 1 || ifaces[0].get("mac").and_then(|x| x.as_str()).is_none() {
            bail!(
                "machine {host} has {} interfaces with MACs, expected 1",
                ifaces.len()
            );
        }
    }
    Ok(())
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_hostnames_are_distinct() {
        assert_eq!(mac(0), "02:00:00:00:00:00");
        assert_eq!(mac(0x01_02_03), "02:00:00:01:02:03");
        assert_eq!(hostname(0), "bench-00001");
        let macs: std::collections::HashSet<_> = (0..5000).map(mac).collect();
        assert_eq!(macs.len(), 5000);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(10));
        assert_eq!(percentile(&v, 95.0), Duration::from_millis(19));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(20));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn list_answers_are_checked() {
        let ok = reqwest::StatusCode::OK;
        let good = serde_json::json!({
            "items": [{"hostname": "a", "interfaces": [{"mac": "02:00:00:00:00:01"}]}],
            "total": 1,
        })
        .to_string();
        assert!(check_list(ok, good.as_bytes(), 1, 1).is_ok());
        let no_iface = serde_json::json!({
            "items": [{"hostname": "a", "interfaces": []}],
            "total": 1,
        })
        .to_string();
        assert!(check_list(ok, no_iface.as_bytes(), 1, 1).is_err());
        assert!(check_list(ok, good.as_bytes(), 2, 2).is_err());
        assert!(check_list(reqwest::StatusCode::UNAUTHORIZED, b"{}", 1, 1).is_err());
    }
}
