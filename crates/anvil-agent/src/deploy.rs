//! The steps of deployment, release and rescue (docs/agent-protocol.md,
//! "Deployment, release and rescue steps"): `erase`, `write_image`,
//! `grow_root`, `cloud_init`, `boot_entry` and `rescue`. Each finds its
//! disk again from the step's [`DiskRef`]s (disk.rs), does its work, and
//! returns an [`Outcome`] whose `result` says what it did. The decisions
//! (which bytes to zero, which erase method, which loader, which boot order)
//! are pure functions tested on their own; the executors are tested on
//! regular files standing in for disks under a fixture root.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anvil_api_types::deploy::{
    BootEntryParams, CloudInitParams, EraseMode, EraseParams, GrowRootParams, RescueParams,
    WriteImageParams,
};
use ring::digest::{Context, SHA256};
use serde_json::{Value, json};

use crate::disk::{self, Disk};
use crate::fetch::Fetcher;
use crate::hwtest::{Outcome, Progress};
use crate::imagewrite::{self, StreamLayout, Target, ZeroRanges};
use crate::ptable::{self, MIB, NewPartition};

/// What the steps need besides their parameters.
#[derive(Clone)]
pub struct Ctx {
    /// Where /sys and /dev are ("/" in the ramdisk).
    pub root: PathBuf,
    pub fetch: Fetcher,
    /// The rescue SSH server's port (22; tests use a free one).
    pub ssh_port: u16,
}

pub(crate) fn ok(message: String, result: Value) -> Outcome {
    Outcome {
        ok: true,
        message,
        result,
    }
}

pub(crate) fn fail(message: String, result: Value) -> Outcome {
    Outcome {
        ok: false,
        message,
        result,
    }
}

/// Calls `progress` at most once per `every` (the protocol's reports are
/// throttled again by the loop; this only keeps the channel quiet).
struct Throttle {
    every: Duration,
    last: Option<Instant>,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle { every, last: None }
    }
    fn due(&mut self) -> bool {
        if self.last.is_some_and(|l| l.elapsed() < self.every) {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }
}

/// Runs a program, returning its stdout; a failure carries its stderr.
pub(crate) fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{prog} {}: {}: {}",
            args.join(" "),
            out.status,
            stderr.trim().lines().last().unwrap_or(stdout.trim())
        ));
    }
    Ok(stdout)
}

fn zero_range(f: &mut File, start: u64, end: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    f.seek(SeekFrom::Start(start))?;
    let mut at = start;
    while at < end {
        let n = ((end - at) as usize).min(ZEROS.len());
        f.write_all(&ZEROS[..n])?;
        at += n as u64;
    }
    Ok(())
}

// --- erase ------------------------------------------------------------------------

/// The byte ranges a quick erase zeroes: the first and last MiB of every
/// partition (file system superblocks, RAID superblocks at 0, 4 KiB and
/// the end, LVM labels in the first sectors) and of the disk (MBR, both
/// GPTs); sorted, merged, inside the disk.
pub fn quick_regions(disk_bytes: u64, partitions: &[ptable::Partition]) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = Vec::new();
    let mut add = |start: u64, end: u64| {
        let end = end.min(disk_bytes);
        let edge = MIB.min(end.saturating_sub(start));
        if edge > 0 {
            v.push((start, start + edge));
            v.push((end - edge, end));
        }
    };
    for p in partitions {
        add(p.start, p.end);
    }
    add(0, disk_bytes);
    v.sort();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

fn quick_erase(d: &Disk) -> Result<Value, String> {
    let mut f = disk::open_rw(&d.dev).map_err(|e| format!("opening {}: {e}", d.dev.display()))?;
    let size = disk::size(&f).map_err(|e| format!("{}: size: {e}", d.name))?;
    let sector = disk::sector_size(&f);
    // A damaged table still gets the disk's own first and last MiB zeroed.
    let (table, note) = match ptable::read(&mut f, sector) {
        Ok(t) => (t, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let parts = table.as_ref().map_or(&[][..], |t| &t.partitions[..]);
    let regions = quick_regions(size, parts);
    let mut zeroed = 0;
    for &(s, e) in &regions {
        zero_range(&mut f, s, e)
            .map_err(|e2| format!("{}: zeroing bytes {s}..{e}: {e2}", d.name))?;
        zeroed += e - s;
    }
    f.sync_all()
        .map_err(|e| format!("{}: fsync: {e}", d.name))?;
    disk::reread_partitions(&f)?;
    Ok(json!({
        "disk": d.name, "dev": d.dev, "method": "quick",
        "table": table.as_ref().map(|t| t.kind.as_str()),
        "partitions": parts.len(), "bytes_zeroed": zeroed, "regions": regions.len(),
        "table_problem": note,
    }))
}

/// The ATA security state `hdparm -I` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AtaSecurity {
    pub supported: bool,
    pub enabled: bool,
    pub locked: bool,
    pub frozen: bool,
    pub enhanced: bool,
}

/// Parses the "Security:" section of `hdparm -I` (lines such as
/// "\tnot\tfrozen" or "\t\tsupported: enhanced erase"). `None` when there
/// is no such section (not an ATA disk).
pub fn parse_ata_security(text: &str) -> Option<AtaSecurity> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("Security:"));
    lines.next()?;
    let mut s = AtaSecurity::default();
    for l in lines {
        // The section ends at the next unindented heading.
        if !l.starts_with(char::is_whitespace) && !l.trim().is_empty() {
            break;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        let not = words.first() == Some(&"not");
        let word = if not { words.get(1) } else { words.first() };
        match (word.copied(), words.get(if not { 2 } else { 1 }).copied()) {
            (Some("supported"), None) => s.supported = !not,
            (Some("supported:"), Some("enhanced")) => s.enhanced = !not,
            (Some("enabled"), None) => s.enabled = !not,
            (Some("locked"), None) => s.locked = !not,
            (Some("frozen"), None) => s.frozen = !not,
            _ => {}
        }
    }
    Some(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureMethod {
    NvmeFormat,
    AtaSecurityErase { enhanced: bool },
    Overwrite,
}

impl SecureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SecureMethod::NvmeFormat => "nvme-format",
            SecureMethod::AtaSecurityErase { enhanced: false } => "ata-security-erase",
            SecureMethod::AtaSecurityErase { enhanced: true } => "ata-security-erase-enhanced",
            SecureMethod::Overwrite => "overwrite",
        }
    }
}

/// Which secure erase a disk gets: its own command when it has a usable one,
/// the zero overwrite only when the operator allowed it.
pub fn choose_secure(
    nvme: bool,
    ata: Option<AtaSecurity>,
    allow_overwrite: bool,
) -> Result<SecureMethod, String> {
    if nvme {
        return Ok(SecureMethod::NvmeFormat);
    }
    let why = match ata {
        Some(s) if s.supported && s.frozen => {
            "ATA security is frozen (the firmware froze it at boot; a suspend/resume or hot plug unfreezes it)"
        }
        Some(s) if s.supported && s.locked => "ATA security is locked (a password is set)",
        Some(s) if s.supported && s.enabled => {
            "ATA security is enabled with a password Anvil does not know"
        }
        Some(s) if s.supported => {
            return Ok(SecureMethod::AtaSecurityErase {
                enhanced: s.enhanced,
            });
        }
        Some(_) => "the disk does not support ATA security erase",
        None => "the disk has no secure erase command (not NVMe, no ATA security)",
    };
    if allow_overwrite {
        Ok(SecureMethod::Overwrite)
    } else {
        Err(format!(
            "{why}; release with allow_overwrite to overwrite it with zeros instead"
        ))
    }
}

fn overwrite(d: &Disk, progress: Progress<'_>) -> Result<u64, String> {
    let mut f = disk::open_rw(&d.dev).map_err(|e| format!("opening {}: {e}", d.dev.display()))?;
    let size = disk::size(&f).map_err(|e| format!("{}: size: {e}", d.name))?;
    let mut t = Throttle::new(Duration::from_secs(1));
    let started = Instant::now();
    let mut at = 0;
    while at < size {
        let end = (at + 64 * MIB).min(size);
        zero_range(&mut f, at, end).map_err(|e| format!("{}: writing at {at}: {e}", d.name))?;
        at = end;
        if t.due() {
            progress(
                at,
                size,
                format!(
                    "{}: overwrite: {} of {} MiB, {:.0} MB/s",
                    d.name,
                    at / MIB,
                    size / MIB,
                    at as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-3)
                ),
            );
        }
    }
    f.sync_all()
        .map_err(|e| format!("{}: fsync: {e}", d.name))?;
    disk::reread_partitions(&f)?;
    Ok(size)
}

/// The secure erase method of one disk, asking the disk (`hdparm -I`) when
/// it is not NVMe.
fn plan_secure(d: &Disk, allow_overwrite: bool) -> Result<SecureMethod, String> {
    let nvme = d.name.starts_with("nvme");
    let ata = if nvme || !disk::open_rw(&d.dev).is_ok_and(|f| disk::is_block(&f)) {
        None
    } else {
        run("hdparm", &["-I", &d.dev.to_string_lossy()])
            .ok()
            .and_then(|t| parse_ata_security(&t))
    };
    choose_secure(nvme, ata, allow_overwrite)
}

fn secure_erase(d: &Disk, method: SecureMethod, progress: Progress<'_>) -> Result<Value, String> {
    let dev = d.dev.to_string_lossy().into_owned();
    progress(
        0,
        1,
        format!("{}: secure erase by {}", d.name, method.as_str()),
    );
    let started = Instant::now();
    match method {
        SecureMethod::NvmeFormat => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&d.dev)
                .map_err(|e| format!("opening {dev}: {e}"))?;
            crate::nvme::format_user_data_erase(&f)?;
        }
        SecureMethod::AtaSecurityErase { enhanced } => {
            // The erase needs a user password set first; it is cleared by
            // the erase itself.
            run(
                "hdparm",
                &["--user-master", "u", "--security-set-pass", "anvil", &dev],
            )?;
            let cmd = if enhanced {
                "--security-erase-enhanced"
            } else {
                "--security-erase"
            };
            run("hdparm", &["--user-master", "u", cmd, "anvil", &dev])?;
        }
        SecureMethod::Overwrite => {
            overwrite(d, progress)?;
        }
    }
    if method != SecureMethod::Overwrite
        && let Ok(f) = disk::open_rw(&d.dev)
    {
        disk::reread_partitions(&f)?;
    }
    Ok(json!({
        "disk": d.name, "dev": d.dev, "method": method.as_str(),
        "elapsed_secs": started.elapsed().as_secs_f64(),
    }))
}

pub fn erase(ctx: &Ctx, p: &EraseParams, progress: Progress<'_>) -> Outcome {
    // Every disk is found before any is touched: a wrong list erases nothing.
    let mut disks = Vec::new();
    for r in &p.disks {
        match disk::resolve(&ctx.root, r) {
            Ok(d) => disks.push(d),
            Err(e) => return fail(format!("erase: {e}"), json!({"disks": []})),
        }
    }
    // A secure erase knows every disk's method before it erases any: a disk
    // that cannot be erased as asked fails the step with all disks intact.
    let mut methods = Vec::new();
    if p.mode == EraseMode::Secure {
        for d in disks.iter().filter(|d| !d.read_only) {
            match plan_secure(d, p.allow_overwrite) {
                Ok(m) => methods.push((d.name.clone(), m)),
                Err(e) => {
                    return fail(
                        format!("erase: {}: {e}", d.name),
                        json!({"disks": [], "failed_disk": d.name}),
                    );
                }
            }
        }
    }
    let mut results = Vec::new();
    let total = disks.len() as u64;
    for (i, d) in disks.iter().enumerate() {
        progress(
            i as u64,
            total,
            format!(
                "erase: {} ({} of {total}, {})",
                d.name,
                i + 1,
                p.mode.as_str()
            ),
        );
        if d.read_only {
            results.push(
                json!({"disk": d.name, "dev": d.dev, "method": "skipped", "reason": "read-only"}),
            );
            continue;
        }
        // An assembled md array (a RAID 1 deployment's mirror) holds its
        // members exclusively: stop it first; the quick erase's last MiB
        // then removes its metadata-1.0 superblock.
        let stopped = match crate::raid::stop_holders(&ctx.root, &d.name) {
            Ok(v) => v,
            Err(e) => {
                return fail(
                    format!("erase: {}: {e}", d.name),
                    json!({"disks": results, "failed_disk": d.name}),
                );
            }
        };
        let r = match p.mode {
            EraseMode::Quick => quick_erase(d),
            EraseMode::Secure => {
                let method = methods
                    .iter()
                    .find(|(n, _)| *n == d.name)
                    .map(|(_, m)| *m)
                    .expect("planned above");
                secure_erase(d, method, progress)
            }
        };
        let r = r.map(|mut v| {
            if !stopped.is_empty() {
                v["stopped_arrays"] = json!(stopped);
            }
            v
        });
        match r {
            Ok(v) => results.push(v),
            Err(e) => {
                return fail(
                    format!("erase: {}: {e}", d.name),
                    json!({"disks": results, "failed_disk": d.name}),
                );
            }
        }
    }
    let summary: Vec<String> = results
        .iter()
        .map(|r| {
            let mut s = format!(
                "{} {}",
                r["disk"].as_str().unwrap_or("?"),
                r["method"].as_str().unwrap_or("?")
            );
            if let Some(a) = r["stopped_arrays"].as_array() {
                let names: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
                s.push_str(&format!(" (stopped {})", names.join(", ")));
            }
            s
        })
        .collect();
    ok(
        format!("erased {} disk(s): {}", results.len(), summary.join(", ")),
        json!({"mode": p.mode.as_str(), "disks": results}),
    )
}

// --- write_image ------------------------------------------------------------------------

pub fn write_image(ctx: &Ctx, p: &WriteImageParams, progress: Progress<'_>) -> Outcome {
    let d = match crate::raid::target(&ctx.root, &p.disk) {
        Ok(d) => d,
        Err(e) => return fail(format!("write_image: {e}"), json!({})),
    };
    if d.read_only {
        return fail(
            format!("write_image: {} is read-only", d.name),
            json!({"disk": d.name}),
        );
    }
    if d.size_bytes < p.raw_size {
        return fail(
            format!(
                "write_image: {} holds {} bytes, the image needs {}",
                d.name, d.size_bytes, p.raw_size
            ),
            json!({"disk": d.name}),
        );
    }
    let zero_map = match ctx
        .fetch
        .get(&p.zeromap_url)
        .and_then(|(_, r)| ZeroRanges::parse(r).map_err(|e| e.to_string()))
    {
        Ok(z) => z,
        Err(e) => {
            return fail(
                format!("write_image: zero map: {e}"),
                json!({"disk": d.name}),
            );
        }
    };
    let mut target = match Target::open(&d.dev) {
        Ok(t) => t,
        Err(e) => return fail(format!("write_image: {e}"), json!({"disk": d.name})),
    };
    // The agent's own CPU time for the write (all attempts): the
    // deployment benchmark reports it per GB (docs/benchmarks.md).
    let cpu_before = process_cpu_secs();
    let mut t = Throttle::new(Duration::from_secs(1));
    let mut last_attempt = 0;
    let attempt_started = std::cell::Cell::new(Instant::now());
    let mut attempts: Vec<String> = Vec::new();
    // Each attempt's outcome goes out as a progress report of its own; the
    // attempt callback cannot call `progress` (the progress callback holds
    // it), so it queues the line for the next progress call.
    let pending: std::cell::RefCell<Vec<String>> = Default::default();
    let outcome = imagewrite::write_image_with_retries(
        |n| {
            attempt_started.set(Instant::now());
            if n > 1 {
                crate::log!("write_image: attempt {n}: fetching the image again");
            }
            ctx.fetch
                .get(&p.url)
                .map(|(_, r)| r)
                .map_err(io::Error::other)
        },
        StreamLayout::NonZeroOnly,
        &zero_map,
        &mut target,
        &p.sha256,
        p.raw_size,
        |a| {
            let line = match a.outcome {
                Ok(r) => format!(
                    "attempt {}: done: {} MiB written, {} MiB zeroed in {:.1} s",
                    a.number,
                    r.bytes_written / MIB,
                    r.bytes_skipped / MIB,
                    r.elapsed.as_secs_f64()
                ),
                Err(e) => format!("attempt {} failed: {e}", a.number),
            };
            crate::log!("write_image: {line}");
            attempts.push(line.clone());
            pending.borrow_mut().push(line);
        },
        |n, at| {
            for line in pending.borrow_mut().drain(..) {
                progress(at.done, at.total, line);
            }
            // The first progress of each attempt goes out at once.
            if std::mem::replace(&mut last_attempt, n) != n || t.due() {
                let secs = attempt_started.get().elapsed().as_secs_f64().max(1e-3);
                progress(
                    at.done,
                    at.total,
                    format!(
                        "attempt {n}: {} MiB written, {} MiB zeroed, {:.0} MB/s",
                        at.written / MIB,
                        at.skipped / MIB,
                        at.done as f64 / 1e6 / secs
                    ),
                );
            }
        },
    );
    drop(target);
    match outcome {
        Ok(r) => {
            // The kernel learns the image's partitions (grow_root needs
            // them); a refusal here is reported, not fatal.
            let reread = disk::open_rw(&d.dev)
                .map_err(|e| e.to_string())
                .and_then(|f| disk::reread_partitions(&f))
                .err();
            let secs = r.elapsed.as_secs_f64();
            let cpu_secs = process_cpu_secs() - cpu_before;
            ok(
                format!(
                    "image {}… written to {} in {:.1} s ({} MiB written, {} MiB zeroed, {:.0} MB/s, {} attempt(s))",
                    &r.sha256[..12],
                    d.name,
                    secs,
                    r.bytes_written / MIB,
                    r.bytes_skipped / MIB,
                    p.raw_size as f64 / 1e6 / secs.max(1e-3),
                    attempts.len()
                ),
                json!({
                    "sha256": r.sha256, "bytes_written": r.bytes_written,
                    "bytes_skipped": r.bytes_skipped, "elapsed_secs": secs,
                    "zero_fill": format!("{:?}", r.zero_fill), "direct_io": r.direct_io,
                    "attempts": attempts.len(),
                    "attempt_log": attempts,
                    "disk": d.name, "dev": d.dev, "matched_by": d.matched_by,
                    "reread_problem": reread, "cpu_secs": cpu_secs,
                }),
            )
        }
        Err((n, e)) => fail(
            format!("write_image: {e} (after {n} attempt(s))"),
            json!({"disk": d.name, "attempts": n, "attempt_log": attempts, "retryable": e.is_retryable()}),
        ),
    }
}

/// User plus system CPU seconds of this process so far (every thread).
fn process_cpu_secs() -> f64 {
    // SAFETY: getrusage only fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

// --- grow_root --------------------------------------------------------------------------

/// The file system at the start of a partition, by its superblock magic.
pub fn detect_fs(f: &mut (impl Read + Seek), start: u64) -> Option<&'static str> {
    let mut head = vec![0u8; 64 * 1024 + 4096];
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let head = &head[..got];
    if head.len() > 1024 + 58 && head[1024 + 56..1024 + 58] == [0x53, 0xef] {
        return Some("ext4");
    }
    if head.starts_with(b"XFSB") {
        return Some("xfs");
    }
    if head.len() >= 64 * 1024 + 72 && &head[64 * 1024 + 64..64 * 1024 + 72] == b"_BHRfS_M" {
        return Some("btrfs");
    }
    None
}

fn resize_ext(ctx: &Ctx, d: &Disk, number: u32) -> Result<String, String> {
    let part = disk::partition_name(&d.name, number);
    let dev = disk::wait_for_partition(&ctx.root, &part, Duration::from_secs(10))?;
    let dev = dev.to_string_lossy().into_owned();
    // resize2fs insists on a freshly checked file system; -p repairs only
    // what is safe without asking (exit 1: fixed, still fine).
    let out = Command::new("e2fsck")
        .args(["-f", "-p", &dev])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("e2fsck: {e}"))?;
    match out.status.code() {
        Some(0..=1) => {}
        _ => {
            return Err(format!(
                "e2fsck -f -p {dev}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
    }
    run("resize2fs", &[&dev])?;
    Ok(dev)
}

pub fn grow_root(ctx: &Ctx, p: &GrowRootParams, progress: Progress<'_>) -> Outcome {
    let d = match crate::raid::target(&ctx.root, &p.disk) {
        Ok(d) => d,
        Err(e) => return fail(format!("grow_root: {e}"), json!({})),
    };
    let grown = (|| {
        let mut f =
            disk::open_rw(&d.dev).map_err(|e| format!("opening {}: {e}", d.dev.display()))?;
        let size = disk::size(&f).map_err(|e| format!("size: {e}"))?;
        let sector = disk::sector_size(&f);
        let g = ptable::grow_last(&mut f, sector, size, p.reserve_end_bytes)
            .map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| format!("fsync: {e}"))?;
        let fs = detect_fs(&mut f, g.start);
        disk::reread_partitions(&f)?;
        Ok::<_, String>((g, fs, disk::is_block(&f)))
    })();
    let (g, fs, block) = match grown {
        Ok(v) => v,
        Err(e) => {
            return fail(
                format!("grow_root: {}: {e}", d.name),
                json!({"disk": d.name}),
            );
        }
    };
    progress(
        1,
        2,
        format!(
            "grow_root: partition {} now ends at {} MiB",
            g.number,
            g.new_end / MIB
        ),
    );
    let mut result = json!({
        "disk": d.name, "table": g.kind.as_str(), "partition": g.number,
        "start": g.start, "old_end": g.old_end, "new_end": g.new_end,
        "grown_bytes": g.new_end - g.old_end, "filesystem": fs,
    });
    let fs_note = match fs {
        Some("ext4") if block => match resize_ext(ctx, &d, g.number) {
            Ok(dev) => {
                result["fs_resized"] = json!(true);
                format!("ext2/3/4 on {dev} resized by resize2fs")
            }
            Err(e) => {
                return fail(format!("grow_root: resizing the file system: {e}"), result);
            }
        },
        Some("ext4") => {
            result["fs_resized"] = json!(false);
            "ext2/3/4 not resized: the disk is a regular file, it has no partition device".into()
        }
        other => {
            result["fs_resized"] = json!(false);
            format!(
                "{} file system: left to cloud-init's growpart/resizefs at first boot",
                other.unwrap_or("unknown")
            )
        }
    };
    result["fs_note"] = json!(fs_note);
    ok(
        format!(
            "partition {} of {} grown from {} to {} MiB; {fs_note}",
            g.number,
            d.name,
            (g.old_end - g.start) / MIB,
            (g.new_end - g.start) / MIB
        ),
        result,
    )
}

// --- cloud_init -------------------------------------------------------------------------

/// Largest cloud-init image accepted (the server's is 16 MiB).
const MAX_CLOUD_INIT_BYTES: u64 = 64 * MIB;

pub fn cloud_init(ctx: &Ctx, p: &CloudInitParams, progress: Progress<'_>) -> Outcome {
    let d = match crate::raid::target(&ctx.root, &p.disk) {
        Ok(d) => d,
        Err(e) => return fail(format!("cloud_init: {e}"), json!({})),
    };
    if p.size_bytes == 0 || p.size_bytes > MAX_CLOUD_INIT_BYTES {
        return fail(
            format!(
                "cloud_init: image size {} is not in 1..={MAX_CLOUD_INIT_BYTES}",
                p.size_bytes
            ),
            json!({"disk": d.name}),
        );
    }
    let r = (|| {
        let mut f =
            disk::open_rw(&d.dev).map_err(|e| format!("opening {}: {e}", d.dev.display()))?;
        let size = disk::size(&f).map_err(|e| format!("size: {e}"))?;
        let sector = disk::sector_size(&f);
        let table = ptable::read(&mut f, sector)
            .map_err(|e| e.to_string())?
            .ok_or("the disk has no partition table (was the image written?)")?;
        let (start, end) = ptable::end_placement(table.kind, size, p.size_bytes)
            .ok_or("the disk is too small for the cloud-init partition")?;
        if let Some(last) = table.partitions.iter().find(|x| x.end > start) {
            return Err(format!(
                "partition {} ends at byte {}, after the cloud-init partition's start {start}",
                last.number, last.end
            ));
        }
        // Data first, checked, then the table entry: a failed download
        // leaves no partition pointing at half an image.
        let (_, mut body) = ctx.fetch.get(&p.url)?;
        f.seek(SeekFrom::Start(start))
            .map_err(|e| format!("seek: {e}"))?;
        let mut hasher = Context::new(&SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            let got = body
                .read(&mut buf)
                .map_err(|e| format!("download at byte {n}: {e}"))?;
            if got == 0 {
                break;
            }
            n += got as u64;
            if n > p.size_bytes {
                return Err(format!(
                    "the cloud-init image is longer than {} bytes",
                    p.size_bytes
                ));
            }
            hasher.update(&buf[..got]);
            f.write_all(&buf[..got])
                .map_err(|e| format!("write: {e}"))?;
        }
        let sha = hex(hasher.finish().as_ref());
        if n != p.size_bytes {
            return Err(format!(
                "the cloud-init image has {n} bytes, expected {}",
                p.size_bytes
            ));
        }
        if !sha.eq_ignore_ascii_case(&p.sha256) {
            return Err(format!(
                "cloud-init image sha256 mismatch: got {sha}, expected {}",
                p.sha256
            ));
        }
        // The rest of the partition reads as zeros, not as old data.
        zero_range(&mut f, start + n, end).map_err(|e| format!("zeroing: {e}"))?;
        let unique = *uuid::Uuid::new_v4().as_bytes();
        let added = ptable::add_at_end(
            &mut f,
            sector,
            size,
            &NewPartition {
                len: p.size_bytes,
                gpt_type: ptable::GUID_BASIC_DATA,
                mbr_type: ptable::MBR_TYPE_FAT32_LBA,
                name: &p.label,
                unique,
            },
        )
        .map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| format!("fsync: {e}"))?;
        disk::reread_partitions(&f)?;
        Ok::<_, String>((added, sha))
    })();
    match r {
        Ok((a, sha)) => {
            progress(
                1,
                1,
                format!("cloud_init: {} partition {}", p.label, a.number),
            );
            ok(
                format!(
                    "{} partition {} on {} at {}..{} MiB",
                    p.label,
                    a.number,
                    d.name,
                    a.start / MIB,
                    a.end / MIB
                ),
                json!({"disk": d.name, "partition": a.number, "table": a.kind.as_str(),
                       "start": a.start, "end": a.end, "label": p.label, "sha256": sha,
                       "bytes": p.size_bytes}),
            )
        }
        Err(e) => fail(
            format!("cloud_init: {}: {e}", d.name),
            json!({"disk": d.name}),
        ),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// --- boot_entry -------------------------------------------------------------------------

/// Loaders in the order they are preferred: a distribution's shim (Secure
/// Boot), its GRUB, systemd-boot, then the removable-media fallback every
/// UEFI image has.
pub fn loader_candidates() -> Vec<String> {
    let mut v = Vec::new();
    let distros = [
        "debian",
        "ubuntu",
        "rocky",
        "almalinux",
        "centos",
        "redhat",
        "fedora",
        "opensuse",
        "sles",
    ];
    for d in distros {
        v.push(format!("\\EFI\\{d}\\shimx64.efi"));
    }
    for d in distros {
        v.push(format!("\\EFI\\{d}\\grubx64.efi"));
    }
    v.push("\\EFI\\systemd\\systemd-bootx64.efi".into());
    v.push("\\EFI\\BOOT\\BOOTX64.EFI".into());
    v
}

/// The first candidate the ESP has (`exists` answers for a path relative to
/// the ESP's root, with `/` separators).
pub fn choose_loader(exists: impl Fn(&str) -> bool) -> Option<String> {
    loader_candidates()
        .into_iter()
        .find(|c| exists(&c.trim_start_matches('\\').replace('\\', "/")))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub num: String,
    pub label: String,
    pub network: bool,
}

/// `efibootmgr -v` output: BootOrder and the entries. An entry is a
/// network one when its device path has a MAC() node or its description
/// says PXE/HTTP/network.
pub fn parse_efibootmgr(text: &str) -> (Vec<String>, Vec<BootEntry>) {
    let mut order = Vec::new();
    let mut entries = Vec::new();
    for line in text.lines() {
        if let Some(o) = line.strip_prefix("BootOrder:") {
            order = o
                .trim()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        } else if let Some(rest) = line.strip_prefix("Boot")
            && rest.len() > 4
            && rest[..4].bytes().all(|b| b.is_ascii_hexdigit())
        {
            let num = rest[..4].to_string();
            let body = rest[4..].trim_start_matches('*').trim_start();
            let label = body.split('\t').next().unwrap_or(body).trim().to_string();
            let lower = body.to_ascii_lowercase();
            let network = body.contains("MAC(")
                || ["pxe", "network", "http"]
                    .iter()
                    .any(|w| label.to_ascii_lowercase().contains(w))
                || lower.contains("/ipv4(")
                || lower.contains("/ipv6(");
            entries.push(BootEntry {
                num,
                label,
                network,
            });
        }
    }
    (order, entries)
}

/// The boot order with the network entries first (so Anvil keeps control
/// of every boot), then `ours`, then the rest as they were.
pub fn boot_order(order: &[String], entries: &[BootEntry], ours: &str) -> Vec<String> {
    let is_net = |n: &String| entries.iter().any(|e| &e.num == n && e.network);
    let mut v: Vec<String> = order.iter().filter(|n| is_net(n)).cloned().collect();
    v.push(ours.to_string());
    v.extend(
        order
            .iter()
            .filter(|n| !is_net(n) && n.as_str() != ours)
            .cloned(),
    );
    v
}

/// The boot order with the network entries first, then the entries with
/// `labels` in that order (one per member of a mirror; one for a plain
/// disk), then the rest; and those entries' numbers.
pub fn members_boot_order(
    order: &[String],
    entries: &[BootEntry],
    labels: &[String],
) -> Result<(Vec<String>, Vec<String>), String> {
    let nums = labels
        .iter()
        .map(|label| {
            entries
                .iter()
                .find(|e| &e.label == label)
                .map(|e| e.num.clone())
                .ok_or_else(|| format!("efibootmgr created no entry labelled {label:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Inserted last first: each goes right after the network entries, so
    // the first member's ends up first and the others follow it in order.
    let mut v = order.to_vec();
    for n in nums.iter().rev() {
        v = boot_order(&v, entries, n);
    }
    Ok((v, nums))
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid C string.
            unsafe { libc::umount(c.as_ptr()) };
        }
    }
}

fn mount_vfat_ro(dev: &Path, at: &Path) -> Result<Mount, String> {
    std::fs::create_dir_all(at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
    let _ = Command::new("modprobe").args(["-q", "vfat"]).status();
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL");
    let (src, dst) = (c(dev), c(at));
    let fstype = std::ffi::CString::new("vfat").expect("no NUL");
    // Explicit code pages: the kernel's default iocharset may be one whose
    // nls module is not in the ramdisk, and the mount then fails (EINVAL).
    let data = std::ffi::CString::new("codepage=437,iocharset=utf8").expect("no NUL");
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ptr(),
            libc::MS_RDONLY,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mounting {} (vfat) on {}: {}",
            dev.display(),
            at.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(Mount(at.to_path_buf()))
}

pub fn boot_entry(ctx: &Ctx, p: &BootEntryParams, progress: Progress<'_>) -> Outcome {
    if p.firmware.as_str() == "bios" {
        return ok(
            "BIOS: nothing to do, the firmware boots the disk's MBR when Anvil's boot script hands over".into(),
            json!({"firmware": "bios", "entry": null}),
        );
    }
    let d = match crate::raid::target(&ctx.root, &p.disk) {
        Ok(d) => d,
        Err(e) => return fail(format!("boot_entry: {e}"), json!({})),
    };
    // On a RAID 1 mirror (metadata 1.0) each member carries the same table
    // and ESP at the same sectors: one entry per member, so the machine
    // boots from either disk.
    let boot_disks = crate::raid::boot_disks(&ctx.root, &d);
    let r = (|| {
        let mut f = File::open(&d.dev).map_err(|e| format!("opening {}: {e}", d.dev.display()))?;
        if !disk::is_block(&f) {
            return Err("not a block device: efibootmgr needs the disk itself".to_string());
        }
        let sector = disk::sector_size(&f);
        let table = ptable::read(&mut f, sector)
            .map_err(|e| e.to_string())?
            .ok_or("the disk has no partition table")?;
        drop(f);
        let esp = table
            .partitions
            .iter()
            .find(|x| x.is_esp())
            .ok_or("the image has no EFI system partition")?
            .clone();
        let part_dev = disk::wait_for_partition(
            &ctx.root,
            &disk::partition_name(&d.name, esp.number),
            Duration::from_secs(10),
        )?;
        let loader = {
            let at = ctx.root.join("run/anvil-esp");
            let _m = mount_vfat_ro(&part_dev, &at)?;
            choose_loader(|rel| at.join(rel).is_file()).ok_or(
                "the EFI system partition has no boot loader (not even \\EFI\\BOOT\\BOOTX64.EFI)",
            )?
        };
        progress(
            1,
            3,
            format!("boot_entry: loader {loader} on partition {}", esp.number),
        );
        let labels: Vec<String> = (0..boot_disks.len())
            .map(|i| member_label(&p.label, i))
            .collect();
        let (_, before) = parse_efibootmgr(&run("efibootmgr", &["-v"])?);
        // One entry per label: a redeploy replaces the earlier one.
        for e in before.iter().filter(|e| labels.contains(&e.label)) {
            run("efibootmgr", &["-q", "-b", &e.num, "-B"])?;
        }
        let part = esp.number.to_string();
        for ((_, dev), label) in boot_disks.iter().zip(&labels) {
            let dev = dev.to_string_lossy().into_owned();
            run(
                "efibootmgr",
                &[
                    "-q", "-c", "-d", &dev, "-p", &part, "-L", label, "-l", &loader,
                ],
            )?;
        }
        let (order, entries) = parse_efibootmgr(&run("efibootmgr", &["-v"])?);
        let (new_order, nums) = members_boot_order(&order, &entries, &labels)?;
        run("efibootmgr", &["-q", "-o", &new_order.join(",")])?;
        let network_first = entries
            .iter()
            .any(|e| e.network && new_order.first() == Some(&e.num));
        Ok::<_, String>((esp.number, loader, nums, new_order, network_first))
    })();
    match r {
        Ok((esp, loader, nums, order, network_first)) => ok(
            format!(
                "Boot{} \"{}\" → {loader} on {} partition {esp}; BootOrder {}{}",
                nums.join("+Boot"),
                p.label,
                d.name,
                order.join(","),
                if network_first {
                    ""
                } else {
                    " (no network entry: the machine will boot its disk directly)"
                }
            ),
            json!({"firmware": "uefi", "disk": d.name, "esp_partition": esp, "loader": loader,
                   "entry": format!("Boot{}", nums[0]),
                   "entries": nums.iter().map(|n| format!("Boot{n}")).collect::<Vec<_>>(),
                   "boot_order": order, "network_first": network_first,
                   "raid": crate::raid::describe(&ctx.root, &d)}),
        ),
        Err(e) => fail(
            format!("boot_entry: {}: {e}", d.name),
            json!({"disk": d.name}),
        ),
    }
}

/// The boot entry's label on member `i` of a mirror (the first keeps the
/// plain label).
pub fn member_label(label: &str, i: usize) -> String {
    if i == 0 {
        label.to_string()
    } else {
        format!("{label} (disk {})", i + 1)
    }
}

// --- rescue ---------------------------------------------------------------------------------

/// Keeps the lines that look like SSH public keys; refuses anything else
/// (a key with a newline could smuggle `command=` options for another).
pub fn authorized_keys(keys: &[String]) -> Result<String, String> {
    let mut out = String::new();
    for k in keys {
        let k = k.trim();
        if k.is_empty() {
            continue;
        }
        let ty = k.split_whitespace().next().unwrap_or("");
        if k.contains(['\n', '\r'])
            || !(ty.starts_with("ssh-") || ty.starts_with("ecdsa-") || ty.starts_with("sk-"))
            || k.split_whitespace().nth(1).is_none()
        {
            return Err(format!(
                "not an SSH public key: {:?}",
                k.chars().take(40).collect::<String>()
            ));
        }
        out.push_str(k);
        out.push('\n');
    }
    if out.is_empty() {
        return Err("no SSH public key given: nobody could log in".into());
    }
    Ok(out)
}

fn write_private(path: &Path, text: &str, dir_mode: u32, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// Waits until something on `port` of loopback greets with an SSH banner.
fn wait_for_ssh(
    port: u16,
    child: &mut std::process::Child,
    wait: Duration,
) -> Result<String, String> {
    let started = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("dropbear exited: {st}"));
        }
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut b = [0u8; 64];
            if let Ok(n) = s.read(&mut b) {
                let banner = String::from_utf8_lossy(&b[..n]).trim().to_string();
                if banner.starts_with("SSH-2.0-") {
                    return Ok(banner);
                }
            }
        }
        if started.elapsed() >= wait {
            return Err(format!(
                "nothing answers SSH on port {port} after {} s",
                wait.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn rescue(ctx: &Ctx, p: &RescueParams, progress: Progress<'_>) -> Outcome {
    let r = (|| {
        let keys = authorized_keys(&p.ssh_keys)?;
        write_private(
            &ctx.root.join("root/.ssh/authorized_keys"),
            &keys,
            0o700,
            0o600,
        )?;
        // A fresh host key each rescue boot: nothing of it outlives the
        // ramdisk; its fingerprint goes to the console and the result.
        let host_key = ctx.root.join("etc/dropbear/dropbear_ed25519_host_key");
        std::fs::create_dir_all(host_key.parent().expect("dir"))
            .map_err(|e| format!("mkdir: {e}"))?;
        let _ = std::fs::remove_file(&host_key);
        let hk = host_key.to_string_lossy().into_owned();
        run("dropbearkey", &["-t", "ed25519", "-f", &hk])?;
        let public = run("dropbearkey", &["-y", "-f", &hk])?;
        let pubkey = public
            .lines()
            .find(|l| l.starts_with("ssh-"))
            .unwrap_or("")
            .to_string();
        let fingerprint = public
            .lines()
            .find_map(|l| l.strip_prefix("Fingerprint:"))
            .unwrap_or("")
            .trim()
            .to_string();
        progress(
            1,
            2,
            format!("rescue: starting dropbear on port {}", ctx.ssh_port),
        );
        // -F foreground (a child of the agent, PID 1, which reaps it),
        // -E log to the console, -s no password logins, -r our host key.
        let port = ctx.ssh_port.to_string();
        let mut child = Command::new("dropbear")
            .args(["-F", "-E", "-s", "-p", &port, "-r", &hk])
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("dropbear: {e}"))?;
        let banner = match wait_for_ssh(ctx.ssh_port, &mut child, Duration::from_secs(15)) {
            Ok(b) => b,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        crate::log!(
            "rescue: dropbear (pid {}) listens on port {port}; host key {fingerprint}",
            child.id()
        );
        Ok::<_, String>((
            keys.lines().count(),
            pubkey,
            fingerprint,
            banner,
            child.id(),
        ))
    })();
    match r {
        Ok((n, pubkey, fingerprint, banner, pid)) => ok(
            format!(
                "SSH server listening on port {} for root with {n} key(s); host key {fingerprint}",
                ctx.ssh_port
            ),
            json!({"port": ctx.ssh_port, "keys": n, "host_key": pubkey,
                   "host_key_fingerprint": fingerprint, "banner": banner, "pid": pid}),
        ),
        Err(e) => fail(format!("rescue: {e}"), json!({})),
    }
}

#[cfg(test)]
pub(crate) mod testserver {
    //! A small HTTP/1.1 server on loopback for the steps' downloads: each
    //! GET is answered by `answer(path, nth request for that path)`.
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};

    pub type Answer = dyn Fn(&str, usize) -> (u16, Vec<u8>) + Send + Sync;

    pub struct Server {
        pub base: String,
        /// (path, Authorization header) of every request, in order.
        pub seen: Arc<Mutex<Vec<(String, String)>>>,
    }

    pub fn serve(answer: Box<Answer>) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<(String, String)>>> = Default::default();
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { break };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut auth = String::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if h.to_ascii_lowercase().starts_with("authorization:") {
                        auth = h["authorization:".len()..].trim().to_string();
                    }
                }
                seen2.lock().unwrap().push((path.clone(), auth));
                let n = counts.entry(path.clone()).or_default();
                let (status, body) = answer(&path, *n);
                *n += 1;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        Server { base, seen }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::fixture;
    use anvil_api_types::deploy::DiskRef;
    use sha2::{Digest, Sha256};

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u8) | 1
            })
            .collect()
    }

    fn hex_sha(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    struct Rig {
        dir: tempfile::TempDir,
        ctx: Ctx,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("dev")).unwrap();
            let ctx = Ctx {
                root: dir.path().to_path_buf(),
                fetch: Fetcher::new(Some("tok-deploy")),
                ssh_port: 22,
            };
            Rig { dir, ctx }
        }
        fn disk(&self, name: &str, slot: u32, bytes: u64, serial: &str) -> DiskRef {
            fixture::virtio_disk(self.dir.path(), name, slot, bytes, Some(serial));
            DiskRef {
                name: name.into(),
                size_bytes: bytes,
                serial: Some(serial.into()),
                wwn: None,
                model: None,
            }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join("dev").join(name)
        }
        fn bytes(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.path(name)).unwrap()
        }
        fn fill(&self, name: &str, byte: u8) {
            let len = std::fs::metadata(self.path(name)).unwrap().len();
            std::fs::write(self.path(name), vec![byte; len as usize]).unwrap();
        }
        fn file(&self, name: &str) -> File {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path(name))
                .unwrap()
        }
    }

    /// Progress that goes nowhere (the tests that read it collect it).
    fn sink() -> impl FnMut(u64, u64, String) {
        |_, _, _| {}
    }

    const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

    #[test]
    fn quick_regions_cover_partition_and_disk_edges_merged() {
        let parts = vec![
            ptable::Partition {
                number: 1,
                start: MIB,
                end: 9 * MIB,
                type_id: GUID_ESP_T.into(),
            },
            ptable::Partition {
                number: 2,
                start: 9 * MIB,
                end: 9 * MIB + 4096,
                type_id: LINUX.into(),
            },
        ];
        assert_eq!(
            quick_regions(64 * MIB, &parts),
            vec![
                (0, 2 * MIB),
                (8 * MIB, 9 * MIB + 4096),
                (63 * MIB, 64 * MIB)
            ]
        );
        // A disk smaller than 2 MiB is zeroed whole.
        assert_eq!(quick_regions(MIB + 512, &[]), vec![(0, MIB + 512)]);
    }

    const GUID_ESP_T: &str = ptable::GUID_ESP;

    #[test]
    fn quick_erase_wipes_tables_and_signatures_and_keeps_the_rest() {
        let rig = Rig::new();
        let r = rig.disk("vda", 5, 64 * MIB, "D1");
        rig.fill("vda", 0xaa);
        ptable::build::gpt(
            &mut rig.file("vda"),
            64 * MIB,
            &[(ptable::GUID_ESP, MIB, 9 * MIB), (LINUX, 9 * MIB, 60 * MIB)],
        );
        let mut p = sink();
        let out = erase(
            &rig.ctx,
            &EraseParams {
                disks: vec![r],
                mode: EraseMode::Quick,
                allow_overwrite: false,
            },
            &mut p,
        );
        assert!(out.ok, "{}", out.message);
        assert_eq!(out.result["mode"], "quick");
        let d = &out.result["disks"][0];
        assert_eq!(d["disk"], "vda");
        assert_eq!(d["method"], "quick");
        assert_eq!(d["table"], "gpt");
        assert_eq!(d["partitions"], 2);
        let b = rig.bytes("vda");
        let zero = |s: u64, e: u64| b[s as usize..e as usize].iter().all(|&x| x == 0);
        let kept = |s: u64, e: u64| b[s as usize..e as usize].iter().all(|&x| x == 0xaa);
        // Disk edges (MBR, both GPTs), each partition's first and last MiB
        // (md superblocks at 0/4K/end-64K, LVM labels, fs superblocks).
        assert!(zero(0, 2 * MIB));
        assert!(zero(8 * MIB, 10 * MIB));
        assert!(zero(59 * MIB, 60 * MIB));
        assert!(zero(63 * MIB, 64 * MIB));
        // Everything else is left alone (a quick erase is quick).
        assert!(kept(2 * MIB, 8 * MIB));
        assert!(kept(10 * MIB, 59 * MIB));
        assert!(kept(60 * MIB, 63 * MIB));
        assert!(ptable::read(&mut rig.file("vda"), 512).unwrap().is_none());
    }

    #[test]
    fn secure_erase_overwrites_only_when_allowed_and_skips_read_only_disks() {
        let rig = Rig::new();
        let a = rig.disk("vda", 5, 4 * MIB, "D1");
        let ro = rig.disk("vdb", 6, 4 * MIB, "D2");
        std::fs::write(rig.dir.path().join("sys/block/vdb/ro"), "1\n").unwrap();
        rig.fill("vda", 0x55);
        rig.fill("vdb", 0x55);
        let params = |allow| EraseParams {
            disks: vec![a.clone(), ro.clone()],
            mode: EraseMode::Secure,
            allow_overwrite: allow,
        };
        let mut p = sink();
        let out = erase(&rig.ctx, &params(false), &mut p);
        assert!(!out.ok);
        assert!(
            out.message.contains("no secure erase command"),
            "{}",
            out.message
        );
        assert!(out.message.contains("allow_overwrite"), "{}", out.message);
        assert_eq!(out.result["failed_disk"], "vda");
        assert!(rig.bytes("vda").iter().all(|&x| x == 0x55));
        let out = erase(&rig.ctx, &params(true), &mut p);
        assert!(out.ok, "{}", out.message);
        assert_eq!(out.result["disks"][0]["method"], "overwrite");
        assert_eq!(out.result["disks"][1]["method"], "skipped");
        assert_eq!(out.result["disks"][1]["reason"], "read-only");
        assert!(rig.bytes("vda").iter().all(|&x| x == 0));
        assert!(rig.bytes("vdb").iter().all(|&x| x == 0x55));
    }

    #[test]
    fn an_unknown_disk_fails_the_erase_before_anything_is_touched() {
        let rig = Rig::new();
        let a = rig.disk("vda", 5, 4 * MIB, "D1");
        rig.fill("vda", 0x55);
        let mut missing = a.clone();
        missing.serial = Some("GONE".into());
        missing.name = "vdq".into();
        let mut p = sink();
        let out = erase(
            &rig.ctx,
            &EraseParams {
                disks: vec![a, missing],
                mode: EraseMode::Quick,
                allow_overwrite: false,
            },
            &mut p,
        );
        assert!(!out.ok);
        assert!(out.message.contains("disk vdq"), "{}", out.message);
        assert!(out.message.contains("not found"), "{}", out.message);
        assert!(rig.bytes("vda").iter().all(|&x| x == 0x55));
    }

    /// `hdparm -I` of a SATA SSD (the Security section, abridged before it).
    const HDPARM: &str = "/dev/sda:\n\nATA device, with non-removable media\n\tModel Number:       Samsung SSD 860 EVO 500GB\nSecurity: \n\tMaster password revision code = 65534\n\t\tsupported\n\tnot\tenabled\n\tnot\tlocked\n\t\tfrozen\n\tnot\texpired: security count\n\t\tsupported: enhanced erase\n\t2min for SECURITY ERASE UNIT. 8min for ENHANCED SECURITY ERASE UNIT.\nLogical Unit WWN Device Identifier: 5002538e40a1b2c3\n";

    #[test]
    fn ata_security_state_and_the_secure_method() {
        let s = parse_ata_security(HDPARM).unwrap();
        assert_eq!(
            s,
            AtaSecurity {
                supported: true,
                enabled: false,
                locked: false,
                frozen: true,
                enhanced: true
            }
        );
        assert!(parse_ata_security("/dev/vda:\n no ATA\n").is_none());
        let e = choose_secure(false, Some(s), false).unwrap_err();
        assert!(e.contains("frozen"), "{e}");
        assert_eq!(
            choose_secure(false, Some(s), true),
            Ok(SecureMethod::Overwrite)
        );
        let thawed = AtaSecurity { frozen: false, ..s };
        assert_eq!(
            choose_secure(false, Some(thawed), false),
            Ok(SecureMethod::AtaSecurityErase { enhanced: true })
        );
        let locked = AtaSecurity {
            locked: true,
            enabled: true,
            frozen: false,
            ..s
        };
        assert!(
            choose_secure(false, Some(locked), false)
                .unwrap_err()
                .contains("locked")
        );
        assert_eq!(
            choose_secure(true, None, false),
            Ok(SecureMethod::NvmeFormat)
        );
        assert!(choose_secure(false, None, false).is_err());
        assert_eq!(SecureMethod::NvmeFormat.as_str(), "nvme-format");
    }

    /// An image with zero ranges, its zero map (`ANVZMAP1`) and the
    /// NonZeroOnly stream the server sends.
    fn image(len: u64, zeros: &[(u64, u64)]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut raw = noise(len as usize, 7);
        for &(s, l) in zeros {
            raw[s as usize..(s + l) as usize].fill(0);
        }
        let mut map = b"ANVZMAP1".to_vec();
        for v in [64 * 1024, len, zeros.len() as u64] {
            map.extend_from_slice(&v.to_le_bytes());
        }
        let mut stream = Vec::new();
        let mut at = 0;
        for &(s, l) in zeros {
            map.extend_from_slice(&s.to_le_bytes());
            map.extend_from_slice(&l.to_le_bytes());
            stream.extend_from_slice(&raw[at as usize..s as usize]);
            at = s + l;
        }
        stream.extend_from_slice(&raw[at as usize..]);
        (raw, map, stream)
    }

    fn write_params(base: &str, disk: DiskRef, raw: &[u8]) -> WriteImageParams {
        WriteImageParams {
            disk,
            url: format!("{base}/api/v1/agent/images/x"),
            zeromap_url: format!("{base}/api/v1/agent/images/x/zeromap"),
            sha256: hex_sha(raw),
            raw_size: raw.len() as u64,
        }
    }

    #[test]
    fn write_image_streams_verifies_and_retries_a_corrupt_stream() {
        let rig = Rig::new();
        let r = rig.disk("vda", 5, 32 * MIB, "D1");
        rig.fill("vda", 0xee); // the previous tenant's data
        let (raw, map, stream) = image(8 * MIB, &[(2 * MIB, 3 * MIB)]);
        let bad = {
            let mut b = stream.clone();
            b[100] ^= 0xff;
            b
        };
        let srv = testserver::serve(Box::new(move |path, n| {
            if path.ends_with("/zeromap") {
                (200, map.clone())
            } else if n == 0 {
                (200, bad.clone()) // first attempt: a flipped bit on the wire
            } else {
                (200, stream.clone())
            }
        }));
        let v = std::rc::Rc::new(std::cell::RefCell::new(Vec::<(u64, u64, String)>::new()));
        let v2 = v.clone();
        let mut p = move |d, t, m| v2.borrow_mut().push((d, t, m));
        let out = write_image(&rig.ctx, &write_params(&srv.base, r, &raw), &mut p);
        assert!(out.ok, "{}", out.message);
        let res = &out.result;
        assert_eq!(res["sha256"], hex_sha(&raw));
        assert_eq!(res["attempts"], 2);
        assert_eq!(res["bytes_written"], 5 * MIB);
        assert_eq!(res["bytes_skipped"], 3 * MIB);
        assert_eq!(res["zero_fill"], "PunchHole");
        assert_eq!(res["disk"], "vda");
        assert_eq!(res["matched_by"], "serial");
        assert!(res["elapsed_secs"].as_f64().unwrap() >= 0.0);
        // Hashing and writing 5 MiB twice costs some CPU, never minutes.
        let cpu = res["cpu_secs"].as_f64().expect("cpu_secs");
        assert!((0.0..60.0).contains(&cpu), "cpu_secs {cpu}");
        let disk = rig.bytes("vda");
        assert_eq!(
            &disk[..raw.len()],
            &raw[..],
            "the image, zero range included"
        );
        assert!(
            disk[raw.len()..].iter().all(|&b| b == 0xee),
            "nothing written past it"
        );
        let calls = v.borrow();
        assert!(
            calls
                .iter()
                .any(|(_, _, m)| m.starts_with("attempt 1 failed: sha256 mismatch")),
            "{calls:?}"
        );
        // The documented progress shape: done/total in bytes of the image.
        let (d, t, m) = calls
            .iter()
            .find(|(_, _, m)| m.starts_with("attempt 2: "))
            .expect("a progress call of attempt 2");
        assert_eq!(*t, 8 * MIB);
        assert!(*d <= *t);
        assert!(
            m.contains(" MiB written, ") && m.contains(" MiB zeroed, ") && m.ends_with(" MB/s"),
            "{m}"
        );
        // Every download carried the per-boot token.
        let seen = srv.seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen.iter().all(|(_, a)| a == "Bearer tok-deploy"),
            "{seen:?}"
        );
    }

    #[test]
    fn write_image_fails_after_three_bad_streams_and_on_http_errors() {
        let rig = Rig::new();
        let r = rig.disk("vda", 5, 32 * MIB, "D1");
        let (raw, map, stream) = image(4 * MIB, &[]);
        let mut bad = stream.clone();
        bad[5] ^= 1;
        let map2 = map.clone();
        let srv = testserver::serve(Box::new(move |path, _| {
            if path.ends_with("/zeromap") {
                (200, map2.clone())
            } else {
                (200, bad.clone())
            }
        }));
        let mut p = sink();
        let out = write_image(&rig.ctx, &write_params(&srv.base, r.clone(), &raw), &mut p);
        assert!(!out.ok);
        assert!(out.message.contains("sha256 mismatch"), "{}", out.message);
        assert!(
            out.message.contains("after 3 attempt(s)"),
            "{}",
            out.message
        );
        assert_eq!(out.result["attempts"], 3);
        // A 404 for the zero map (e.g. the image was deleted) fails at once.
        let srv = testserver::serve(Box::new(|_, _| {
            (
                404,
                br#"{"type":"https://anvil.dev/problems/not-found","title":"Not found","detail":"no image x"}"#.to_vec(),
            )
        }));
        let out = write_image(&rig.ctx, &write_params(&srv.base, r.clone(), &raw), &mut p);
        assert!(!out.ok);
        assert!(
            out.message.contains("HTTP 404 not-found: no image x"),
            "{}",
            out.message
        );
        // A disk smaller than the image is refused before any download.
        let small = rig.disk("vdb", 6, 2 * MIB, "D2");
        let out = write_image(&rig.ctx, &write_params(&srv.base, small, &raw), &mut p);
        assert!(out.message.contains("the image needs"), "{}", out.message);
        let _ = stream;
    }

    /// The test image's layout (ESP + root, made for 64 MiB) on a larger
    /// disk, then grow_root and cloud_init as a deployment runs them.
    #[test]
    fn grow_root_then_cloud_init_on_a_larger_disk() {
        let rig = Rig::new();
        let r = rig.disk("vda", 5, 256 * MIB, "D1");
        ptable::build::gpt(
            &mut rig.file("vda"),
            64 * MIB,
            &[(ptable::GUID_ESP, MIB, 9 * MIB), (LINUX, 9 * MIB, 63 * MIB)],
        );
        // An ext4 superblock magic in the root partition.
        {
            let mut f = rig.file("vda");
            f.seek(SeekFrom::Start(9 * MIB + 1024 + 56)).unwrap();
            f.write_all(&[0x53, 0xef]).unwrap();
        }
        let mut p = sink();
        let reserve = 16 * MIB + MIB;
        let out = grow_root(
            &rig.ctx,
            &GrowRootParams {
                disk: r.clone(),
                reserve_end_bytes: reserve,
            },
            &mut p,
        );
        assert!(out.ok, "{}", out.message);
        let g = &out.result;
        assert_eq!(g["table"], "gpt");
        assert_eq!(g["partition"], 2);
        assert_eq!(g["old_end"], 63 * MIB);
        assert_eq!(g["new_end"], 239 * MIB);
        assert_eq!(g["grown_bytes"], 176 * MIB);
        assert_eq!(g["filesystem"], "ext4");
        assert_eq!(g["fs_resized"], false);
        assert!(g["fs_note"].as_str().unwrap().contains("regular file"));

        let fat = noise(16 * MIB as usize - 4096, 3);
        let sha = hex_sha(&fat);
        let fat2 = fat.clone();
        let srv = testserver::serve(Box::new(move |_, _| (200, fat2.clone())));
        let params = |sha: &str| CloudInitParams {
            disk: r.clone(),
            url: format!("{}/api/v1/agent/cloud-init", srv.base),
            sha256: sha.to_string(),
            size_bytes: fat.len() as u64,
            label: "CIDATA".into(),
        };
        // A wrong checksum adds no partition.
        let out = cloud_init(&rig.ctx, &params(&"0".repeat(64)), &mut p);
        assert!(!out.ok);
        assert!(out.message.contains("sha256 mismatch"), "{}", out.message);
        assert_eq!(
            ptable::read(&mut rig.file("vda"), 512)
                .unwrap()
                .unwrap()
                .partitions
                .len(),
            2
        );
        let out = cloud_init(&rig.ctx, &params(&sha), &mut p);
        assert!(out.ok, "{}", out.message);
        let c = &out.result;
        assert_eq!(c["partition"], 3);
        assert_eq!(c["start"], 239 * MIB);
        assert_eq!(c["end"], 255 * MIB);
        assert_eq!(c["label"], "CIDATA");
        let t = ptable::read(&mut rig.file("vda"), 512).unwrap().unwrap();
        assert_eq!(t.partitions[2].type_id, ptable::GUID_BASIC_DATA);
        let disk = rig.bytes("vda");
        let at = (239 * MIB) as usize;
        assert_eq!(&disk[at..at + fat.len()], &fat[..]);
        assert!(
            disk[at + fat.len()..(255 * MIB) as usize]
                .iter()
                .all(|&b| b == 0)
        );
    }

    #[test]
    fn bios_needs_no_boot_entry() {
        let rig = Rig::new();
        let mut p = sink();
        let out = boot_entry(
            &rig.ctx,
            &BootEntryParams {
                disk: DiskRef {
                    name: "vda".into(),
                    size_bytes: 1,
                    serial: None,
                    wwn: None,
                    model: None,
                },
                firmware: "bios".parse().unwrap(),
                label: "anvil debian-12".into(),
            },
            &mut p,
        );
        assert!(out.ok);
        assert_eq!(out.result["firmware"], "bios");
        assert!(out.message.contains("MBR"));
    }

    #[test]
    fn a_uefi_boot_entry_needs_a_real_disk() {
        let rig = Rig::new();
        let r = rig.disk("vda", 5, 64 * MIB, "D1");
        let mut p = sink();
        let out = boot_entry(
            &rig.ctx,
            &BootEntryParams {
                disk: r,
                firmware: "uefi".parse().unwrap(),
                label: "anvil x".into(),
            },
            &mut p,
        );
        assert!(!out.ok);
        assert!(
            out.message.contains("not a block device"),
            "{}",
            out.message
        );
    }

    #[test]
    fn the_loader_is_the_distro_shim_then_grub_then_the_fallback() {
        let has = |files: &'static [&'static str]| {
            move |p: &str| files.iter().any(|f| f.eq_ignore_ascii_case(p))
        };
        assert_eq!(
            choose_loader(has(&[
                "EFI/BOOT/BOOTX64.EFI",
                "EFI/debian/grubx64.efi",
                "EFI/debian/shimx64.efi"
            ])),
            Some("\\EFI\\debian\\shimx64.efi".into())
        );
        assert_eq!(
            choose_loader(has(&["EFI/BOOT/BOOTX64.EFI", "EFI/rocky/grubx64.efi"])),
            Some("\\EFI\\rocky\\grubx64.efi".into())
        );
        assert_eq!(
            choose_loader(has(&[
                "EFI/BOOT/BOOTX64.EFI",
                "EFI/systemd/systemd-bootx64.efi"
            ])),
            Some("\\EFI\\systemd\\systemd-bootx64.efi".into())
        );
        assert_eq!(
            choose_loader(has(&["EFI/BOOT/BOOTX64.EFI"])),
            Some("\\EFI\\BOOT\\BOOTX64.EFI".into())
        );
        assert_eq!(choose_loader(has(&[])), None);
    }

    /// `efibootmgr -v` of OVMF in QEMU after the deploy created Boot0004.
    const EFIBOOTMGR: &str = "BootCurrent: 0001\nTimeout: 0 seconds\nBootOrder: 0004,0000,0001,0002,0003\nBoot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)\nBoot0001* UEFI PXEv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)/IPv4(0.0.0.00.0.0.0,0,0)N.....YM....R,Y.\nBoot0002* UEFI QEMU HARDDISK QM00001 \tPciRoot(0x0)/Pci(0x1,0x1)/Ata(0x0)N.....YM....R,Y.\nBoot0003* EFI Internal Shell\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(7c04a583-9e3e-4f1c-ad65-e05268d0b4d1)\nBoot0004* anvil debian-12\tHD(1,GPT,2c5a…,0x800,0x4000)/File(\\EFI\\debian\\shimx64.efi)\n";

    #[test]
    fn the_new_entry_goes_right_after_the_network_entries() {
        let (order, entries) = parse_efibootmgr(EFIBOOTMGR);
        assert_eq!(order, ["0004", "0000", "0001", "0002", "0003"]);
        assert_eq!(entries.len(), 5);
        assert!(entries[1].network && !entries[0].network && !entries[4].network);
        assert_eq!(entries[4].label, "anvil debian-12");
        assert_eq!(entries[1].label, "UEFI PXEv4 (MAC:525400123456)");
        assert_eq!(
            boot_order(&order, &entries, "0004"),
            ["0001", "0004", "0000", "0002", "0003"]
        );
    }

    #[test]
    fn a_mirror_gets_one_entry_per_member_right_after_the_network() {
        let (order, mut entries) = parse_efibootmgr(EFIBOOTMGR);
        // The second member's entry, as efibootmgr -c would add it.
        let mut second = entries[4].clone();
        second.num = "0005".into();
        second.label = member_label("anvil debian-12", 1);
        entries.push(second);
        let order: Vec<String> = order.into_iter().chain(["0005".to_string()]).collect();
        let labels = [
            member_label("anvil debian-12", 0),
            member_label("anvil debian-12", 1),
        ];
        assert_eq!(labels[1], "anvil debian-12 (disk 2)");
        let (new, nums) = members_boot_order(&order, &entries, &labels).unwrap();
        assert_eq!(nums, ["0004", "0005"]);
        assert_eq!(new, ["0001", "0004", "0005", "0000", "0002", "0003"]);
        // A plain disk: one label, as before.
        let (one, nums) = members_boot_order(&order, &entries, &labels[..1]).unwrap();
        assert_eq!(nums, ["0004"]);
        assert_eq!(one[..2], ["0001", "0004"]);
        let e = members_boot_order(&order, &entries, &["gone".to_string()]).unwrap_err();
        assert!(e.contains("gone"), "{e}");
    }

    #[test]
    fn authorized_keys_take_keys_only() {
        let k = authorized_keys(&[
            "ssh-ed25519 AAAAC3Nza op@desk".into(),
            "  ".into(),
            "ecdsa-sha2-nistp256 AAAAE2 x".into(),
        ])
        .unwrap();
        assert_eq!(
            k,
            "ssh-ed25519 AAAAC3Nza op@desk\necdsa-sha2-nistp256 AAAAE2 x\n"
        );
        assert!(
            authorized_keys(&[])
                .unwrap_err()
                .contains("no SSH public key")
        );
        assert!(authorized_keys(&["ssh-ed25519 AAAA\ncommand=\"x\" ssh-rsa B".into()]).is_err());
        assert!(authorized_keys(&["hello".into()]).is_err());
    }

    /// The real dropbear, on a free loopback port, when it is installed
    /// (Debian `dropbear-bin`): the step succeeds once it answers SSH.
    #[test]
    fn rescue_starts_dropbear_and_waits_until_it_answers() {
        if Command::new("dropbearkey").arg("-h").output().is_err()
            || Command::new("dropbear").arg("-V").output().is_err()
        {
            eprintln!("skipped: dropbear-bin is not installed");
            return;
        }
        let mut rig = Rig::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        rig.ctx.ssh_port = port;
        let mut p = sink();
        let out = rescue(
            &rig.ctx,
            &RescueParams {
                ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx op@desk".into()],
            },
            &mut p,
        );
        assert!(out.ok, "{}", out.message);
        assert_eq!(out.result["port"], port);
        assert!(
            out.result["banner"]
                .as_str()
                .unwrap()
                .starts_with("SSH-2.0-dropbear")
        );
        assert!(
            out.result["host_key"]
                .as_str()
                .unwrap()
                .starts_with("ssh-ed25519 ")
        );
        let keys =
            std::fs::read_to_string(rig.dir.path().join("root/.ssh/authorized_keys")).unwrap();
        assert_eq!(keys, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx op@desk\n");
        // Ours to stop: the test started it.
        let pid = out.result["pid"].as_u64().unwrap() as i32;
        // SAFETY: kill(2) of the child this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}
