//! The bounded hardware tests of a commissioning run (`cpu_test`,
//! `memory_test`, `disk_test`). Each takes its limits from the step's
//! parameters, reports progress through a callback, never runs past its
//! duration, and returns a JSON result with what it tested and what it found.
//! The disk test only reads.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anvil_api_types::agent::{CpuTestParams, DiskTestParams, MemoryTestParams};
use serde_json::{Value, json};

/// A test's verdict: `ok` false fails the step with `message`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
    pub result: Value,
}

/// `(done, total, message)` progress callback.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64, String);

// --- CPU --------------------------------------------------------------------

/// A fixed integer workload whose result is known: a CPU that computes it
/// wrong (or differently on different cores) is broken.
fn cpu_kernel(seed: u64, rounds: u32) -> u64 {
    let mut x = seed;
    let mut acc = 0u64;
    for i in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc = acc
            .wrapping_add(x.rotate_left(i % 64))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        // Some floating point too: the FPU is part of the CPU.
        let f = (x >> 11) as f64 / (1u64 << 53) as f64;
        acc ^= (f.sqrt() * 1e9) as u64;
    }
    acc
}

const CPU_ROUNDS: u32 = 200_000;

pub fn cpu_test(p: &CpuTestParams, threads: usize, progress: Progress<'_>) -> Outcome {
    let duration = Duration::from_secs(u64::from(p.duration_secs.max(1)));
    let expected = cpu_kernel(7, CPU_ROUNDS);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let rounds = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (stop, errors, rounds) = (stop.clone(), errors.clone(), rounds.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if cpu_kernel(7, CPU_ROUNDS) != expected {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let total = duration.as_secs();
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1).min(duration));
        let done = started.elapsed().as_secs().min(total);
        progress(
            done,
            total,
            format!(
                "cpu: {} rounds on {threads} threads",
                rounds.load(Ordering::Relaxed)
            ),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let (errors, rounds) = (
        errors.load(Ordering::Relaxed),
        rounds.load(Ordering::Relaxed),
    );
    let secs = started.elapsed().as_secs_f64();
    Outcome {
        ok: errors == 0 && rounds > 0,
        message: if errors == 0 {
            format!("cpu: {rounds} rounds on {threads} threads in {secs:.1} s, no errors")
        } else {
            format!("cpu: {errors} wrong results in {rounds} rounds on {threads} threads")
        },
        result: json!({"threads": threads, "rounds": rounds, "errors": errors, "seconds": secs}),
    }
}

// --- memory -------------------------------------------------------------------

/// `MemAvailable` from /proc/meminfo, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Bytes the memory test covers: a share of what is available, capped.
pub fn memory_test_bytes(p: &MemoryTestParams, available: u64) -> u64 {
    let pct = u64::from(p.percent_of_available.clamp(1, 90));
    (available / 100 * pct).min(p.max_bytes)
}

/// Writes and verifies patterns over `bytes` of memory: a constant pair
/// (0x55…/0xAA…, every bit both ways) and the address itself (catches
/// aliasing), until every pattern ran once or the duration is up.
pub fn memory_test(p: &MemoryTestParams, available: u64, progress: Progress<'_>) -> Outcome {
    let bytes = memory_test_bytes(p, available);
    let words = (bytes / 8) as usize;
    let mut buf: Vec<u64> = Vec::new();
    if buf.try_reserve_exact(words).is_err() {
        return Outcome {
            ok: false,
            message: format!("memory: cannot allocate {bytes} bytes to test"),
            result: json!({"bytes_requested": bytes, "errors": 0}),
        };
    }
    buf.resize(words, 0);
    let deadline = Instant::now() + Duration::from_secs(u64::from(p.duration_secs.max(1)));
    let patterns: [Option<u64>; 3] = [
        Some(0x5555_5555_5555_5555),
        Some(!0x5555_5555_5555_5555),
        None,
    ];
    let mut errors = 0u64;
    let mut first_error: Option<usize> = None;
    let mut passes = 0u64;
    for (k, pat) in patterns.iter().enumerate() {
        if Instant::now() >= deadline {
            break;
        }
        let value = |i: usize| pat.unwrap_or(i as u64 ^ 0xdead_beef_0000_0000);
        for (i, w) in buf.iter_mut().enumerate() {
            *w = value(i);
        }
        for (i, w) in buf.iter().enumerate() {
            // Read through a volatile load so the check is not optimised into
            // "what was just written".
            let got = unsafe { std::ptr::read_volatile(w) };
            if got != value(i) {
                errors += 1;
                first_error.get_or_insert(i * 8);
            }
        }
        passes += 1;
        progress(
            (k + 1) as u64,
            patterns.len() as u64,
            format!(
                "memory: pattern {} of {} over {bytes} bytes",
                k + 1,
                patterns.len()
            ),
        );
    }
    Outcome {
        ok: errors == 0 && passes > 0,
        message: if errors == 0 {
            format!("memory: {bytes} bytes, {passes} patterns, no errors")
        } else {
            format!(
                "memory: {errors} mismatches in {bytes} bytes (first at offset {})",
                first_error.unwrap_or(0)
            )
        },
        result: json!({"bytes_tested": bytes, "patterns": passes, "errors": errors, "first_error_offset": first_error}),
    }
}

// --- disks --------------------------------------------------------------------

/// Whole disks under /sys/block worth testing (not loop, ram, zram, CD-ROMs,
/// md or device-mapper devices), sorted, with their size in bytes.
pub fn block_disks(sys_block: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(sys_block)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|d| {
                    let name = d.file_name().to_string_lossy().into_owned();
                    let skip = ["loop", "ram", "zram", "sr", "md", "dm-", "fd", "nbd"]
                        .iter()
                        .any(|p| name.starts_with(p));
                    if skip {
                        return None;
                    }
                    let sectors: u64 = std::fs::read_to_string(d.path().join("size"))
                        .ok()?
                        .trim()
                        .parse()
                        .ok()?;
                    (sectors > 0).then_some((name, sectors * 512))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Offsets of `chunks` reads of `chunk` bytes spread evenly over a disk of
/// `size` bytes (first and last included), 4 KiB aligned.
pub fn read_offsets(size: u64, chunk: u64, chunks: u64) -> Vec<u64> {
    if size <= chunk || chunks <= 1 {
        return vec![0];
    }
    let last = (size - chunk) / 4096 * 4096;
    (0..chunks)
        .map(|i| (last / (chunks - 1) * i) / 4096 * 4096)
        .collect()
}

/// Reads up to `max_bytes_per_disk` from each disk in 16 spread chunks,
/// within the duration. Read errors fail the test.
pub fn disk_test(
    p: &DiskTestParams,
    dev: &Path,
    disks: &[(String, u64)],
    progress: Progress<'_>,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(u64::from(p.duration_secs.max(1)));
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for (k, (name, size)) in disks.iter().enumerate() {
        let budget = p.max_bytes_per_disk.min(*size);
        let chunks = 16u64;
        let chunk = (budget / chunks).max(4096);
        let started = Instant::now();
        let mut read = 0u64;
        let mut errors: Vec<String> = Vec::new();
        match File::open(dev.join(name)) {
            Err(e) => errors.push(format!("open: {e}")),
            Ok(mut f) => {
                'chunks: for off in read_offsets(*size, chunk, chunks) {
                    if let Err(e) = f.seek(SeekFrom::Start(off)) {
                        errors.push(format!("seek {off}: {e}"));
                        continue;
                    }
                    let mut left = chunk.min(size - off);
                    while left > 0 {
                        if Instant::now() >= deadline {
                            break 'chunks;
                        }
                        let n = left.min(buf.len() as u64) as usize;
                        match f.read(&mut buf[..n]) {
                            Ok(0) => break,
                            Ok(got) => {
                                read += got as u64;
                                left -= got as u64;
                            }
                            Err(e) => {
                                errors.push(format!("read at {}: {e}", off + chunk - left));
                                break;
                            }
                        }
                    }
                }
            }
        }
        let secs = started.elapsed().as_secs_f64();
        if !errors.is_empty() {
            failures.push(format!("{name}: {}", errors.join("; ")));
        }
        results.push(json!({
            "name": name, "size_bytes": size, "bytes_read": read, "seconds": secs,
            "mb_per_s": if secs > 0.0 { read as f64 / secs / 1e6 } else { 0.0 },
            "errors": errors,
        }));
        progress(
            (k + 1) as u64,
            disks.len() as u64,
            format!("disk: read {read} bytes of {name}"),
        );
    }
    Outcome {
        ok: failures.is_empty(),
        message: if failures.is_empty() {
            format!("disk: {} disks read, no errors", disks.len())
        } else {
            format!("disk: read errors: {}", failures.join(" | "))
        },
        result: json!({"disks": results}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_test_runs_for_its_duration_on_every_thread_and_finds_no_error() {
        let mut ticks = Vec::new();
        let o = cpu_test(&CpuTestParams { duration_secs: 1 }, 2, &mut |d, t, _| {
            ticks.push((d, t))
        });
        assert!(o.ok, "{o:?}");
        assert_eq!(o.result["threads"], 2);
        assert!(o.result["rounds"].as_u64().unwrap() > 0);
        assert_eq!(o.result["errors"], 0);
        assert_eq!(ticks.last(), Some(&(1, 1)));
    }

    #[test]
    fn memory_budget_is_a_capped_share_of_available() {
        let p = MemoryTestParams {
            percent_of_available: 50,
            max_bytes: 1 << 30,
            duration_secs: 5,
        };
        assert_eq!(memory_test_bytes(&p, 400 << 20), 200 << 20);
        assert_eq!(memory_test_bytes(&p, 64 << 30), 1 << 30);
        let p = MemoryTestParams {
            percent_of_available: 200,
            ..p
        };
        assert_eq!(memory_test_bytes(&p, 100 << 20), (100 << 20) / 100 * 90);
        assert_eq!(
            mem_available("MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:     2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn memory_test_writes_and_verifies_every_pattern() {
        let p = MemoryTestParams {
            percent_of_available: 50,
            max_bytes: 8 << 20,
            duration_secs: 30,
        };
        let mut steps = 0;
        let o = memory_test(&p, 64 << 20, &mut |_, _, _| steps += 1);
        assert!(o.ok, "{o:?}");
        assert_eq!(o.result["bytes_tested"], 8 << 20);
        assert_eq!(o.result["patterns"], 3);
        assert_eq!(steps, 3);
    }

    #[test]
    fn memory_test_reports_an_allocation_it_cannot_make() {
        let p = MemoryTestParams {
            percent_of_available: 90,
            max_bytes: u64::MAX,
            duration_secs: 1,
        };
        let o = memory_test(&p, u64::MAX / 2, &mut |_, _, _| {});
        assert!(!o.ok);
        assert!(o.message.contains("cannot allocate"), "{}", o.message);
    }

    #[test]
    fn read_offsets_cover_the_disk_aligned() {
        let offs = read_offsets(1 << 30, 1 << 20, 16);
        assert_eq!(offs.len(), 16);
        assert_eq!(offs[0], 0);
        assert!(offs.iter().all(|o| o % 4096 == 0));
        assert!(*offs.last().unwrap() + (1 << 20) <= 1 << 30);
        assert!(*offs.last().unwrap() > (1 << 30) - (2 << 20));
        assert_eq!(read_offsets(4096, 1 << 20, 16), [0]);
    }

    /// Reads a real file standing in for a disk (and fails on one that
    /// cannot be opened), listing disks from a fake /sys/block.
    #[test]
    fn disk_test_reads_spread_chunks_and_reports_errors() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("block");
        for (name, sectors) in [
            ("vda", "8192"),
            ("nvme0n1", "2048"),
            ("loop0", "100"),
            ("sr0", "1"),
            ("vdb", "0"),
        ] {
            std::fs::create_dir_all(sys.join(name)).unwrap();
            std::fs::write(sys.join(name).join("size"), format!("{sectors}\n")).unwrap();
        }
        let disks = block_disks(&sys);
        assert_eq!(
            disks,
            [
                ("nvme0n1".to_string(), 2048 * 512),
                ("vda".to_string(), 8192 * 512)
            ]
        );
        let dev = d.path().join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vda"), vec![7u8; 8192 * 512]).unwrap();
        let p = DiskTestParams {
            max_bytes_per_disk: 1 << 20,
            duration_secs: 30,
        };
        let o = disk_test(&p, &dev, &disks[1..], &mut |_, _, _| {});
        assert!(o.ok, "{o:?}");
        assert_eq!(o.result["disks"][0]["bytes_read"], 1 << 20);
        let o = disk_test(&p, &dev, &disks, &mut |_, _, _| {});
        assert!(!o.ok);
        assert!(o.message.contains("nvme0n1: open"), "{}", o.message);
    }
}
