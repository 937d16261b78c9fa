//! Software RAID 1 at deploy: the `raid` step builds an md mirror over two
//! whole disks with `mdadm` (metadata 1.0), `raid_sync` waits for its
//! initial resync, and the image steps target the array through
//! [`target`]. Release stops an assembled array before erasing its members
//! ([`stop_holders`]). `docs/deployment.md`, "Software RAID 1".
//!
//! Why metadata 1.0: its superblock sits at the end of each member and the
//! array's data starts at the member's sector 0, so each disk alone looks
//! like the plain disk the image was written to: BIOS and UEFI firmware
//! (which know nothing of md) boot either member, also when the other has
//! failed.
//!
//! Why a real resync instead of `--assume-clean`: the image write covers
//! only the image's non-zero ranges and zeroes the rest of the image, but
//! grow_root hands the space after the image to the root file system, and
//! there the two disks hold whatever the previous tenant left, differently
//! on each. `--assume-clean` would leave a mirror whose halves disagree
//! (a later `check` counts mismatches, and a read may return either), so
//! the kernel resyncs the whole array in the background while the other
//! steps run, and `raid_sync` waits for it before the machine reboots.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anvil_api_types::deploy::{DiskRef, RaidParams, RaidSyncParams};
use serde_json::{Value, json};

use crate::deploy::{Ctx, fail, ok, run};
use crate::disk::{self, Disk};
use crate::hwtest::{Outcome, Progress};

const MIB: u64 = 1 << 20;

/// The floor of the kernel's resync rate while other I/O runs (KiB/s). The
/// kernel's default (1000) would let the image write starve the resync to
/// 1 MB/s; the image steps and the resync share the disks at this floor.
const SPEED_LIMIT_MIN_KIB: u64 = 50_000;

/// md arrays (`mdN`) that hold `disk` (`/sys/block/<disk>/holders`).
pub fn holders(root: &Path, disk: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("sys/block").join(disk).join("holders"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("md"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The member disks of array `md` (`/sys/block/<md>/slaves`), sorted.
pub fn members(root: &Path, md: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root.join("sys/block").join(md).join("slaves"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn sys_md(root: &Path, md: &str, attr: &str) -> Option<String> {
    std::fs::read_to_string(root.join("sys/block").join(md).join("md").join(attr))
        .ok()
        .map(|s| s.trim().to_string())
}

fn md_size(root: &Path, md: &str) -> Result<u64, String> {
    std::fs::read_to_string(root.join("sys/block").join(md).join("size"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|sectors| sectors * 512)
        .ok_or_else(|| format!("cannot read the size of {md}"))
}

/// The device the image steps write: the disk `want` names, or, when that
/// disk is a member of an md array (built by the `raid` step), the array.
/// A member cannot be opened for writing anyway (the array holds it
/// exclusively), and every earlier array on the disks was stopped by the
/// deployment's `erase`, so an array here is the one this run built.
pub fn target(root: &Path, want: &DiskRef) -> Result<Disk, String> {
    let d = disk::resolve(root, want)?;
    match holders(root, &d.name).as_slice() {
        [] => Ok(d),
        [md] => Ok(Disk {
            dev: root.join("dev").join(md),
            size_bytes: md_size(root, md)?,
            name: md.clone(),
            read_only: false,
            removable: false,
            matched_by: d.matched_by,
        }),
        many => Err(format!(
            "disk {} is held by several md arrays ({}): refusing to guess",
            d.name,
            many.join(", ")
        )),
    }
}

/// The whole disks a UEFI boot entry must point at for `target`: the
/// array's members (each boots alone, metadata 1.0), or the disk itself.
pub fn boot_disks(root: &Path, target: &Disk) -> Vec<(String, PathBuf)> {
    let m = if target.name.starts_with("md") {
        members(root, &target.name)
    } else {
        Vec::new()
    };
    if m.is_empty() {
        vec![(target.name.clone(), target.dev.clone())]
    } else {
        m.into_iter()
            .map(|n| {
                let dev = root.join("dev").join(&n);
                (n, dev)
            })
            .collect()
    }
}

/// Stops every md array holding `disk` (as `mdadm --stop` does, by writing
/// `clear` to its `array_state`), so the disk can be opened exclusively and
/// erased. Returns the arrays stopped.
pub fn stop_holders(root: &Path, disk: &str) -> Result<Vec<String>, String> {
    let arrays = holders(root, disk);
    for md in &arrays {
        let state = root.join("sys/block").join(md).join("md/array_state");
        std::fs::write(&state, "clear")
            .map_err(|e| format!("stopping {md} (holding {disk}): {}: {e}", state.display()))?;
    }
    Ok(arrays)
}

/// Zeroes the first and last MiB of a member (old partition tables, md
/// superblocks of every version, file system signatures at the start), so
/// mdadm finds nothing to ask about.
fn wipe_edges(d: &Disk) -> Result<(), String> {
    let mut f = disk::open_rw(&d.dev).map_err(|e| format!("opening {}: {e}", d.dev.display()))?;
    let size = disk::size(&f).map_err(|e| format!("{}: {e}", d.dev.display()))?;
    let zeros = vec![0u8; MIB.min(size) as usize];
    for at in [0, size.saturating_sub(zeros.len() as u64)] {
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.write_all(&zeros))
            .map_err(|e| format!("zeroing {} at {at}: {e}", d.dev.display()))?;
    }
    f.sync_all()
        .map_err(|e| format!("fsync {}: {e}", d.dev.display()))?;
    Ok(())
}

/// `mdadm --create` arguments for a metadata-1.0 mirror of `members`.
pub fn create_args(name: &str, members: &[PathBuf]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--create",
        &format!("/dev/md/{name}"),
        "--run",
        "--level=1",
        "--raid-devices=2",
        "--metadata=1.0",
        &format!("--name={name}"),
        // No "<ramdisk host>:" prefix in the name the deployed system sees.
        "--homehost=<none>",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(members.iter().map(|p| p.to_string_lossy().into_owned()));
    a
}

/// `MD_UUID=…` of `mdadm --detail --export`.
pub fn export_uuid(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("MD_UUID="))
        .map(|s| s.trim().to_string())
}

pub fn build(ctx: &Ctx, p: &RaidParams, progress: Progress<'_>) -> Outcome {
    if p.level != 1 || p.disks.len() != 2 {
        return fail(
            format!(
                "raid: only level 1 over two disks is supported (got level {} over {})",
                p.level,
                p.disks.len()
            ),
            json!({}),
        );
    }
    let mut found = Vec::new();
    for r in &p.disks {
        match disk::resolve(&ctx.root, r) {
            Ok(d) => found.push(d),
            Err(e) => return fail(format!("raid: {e}"), json!({})),
        }
    }
    if found[0].name == found[1].name {
        return fail(
            format!("raid: both members are {}", found[0].name),
            json!({"disks": [found[0].name]}),
        );
    }
    let names: Vec<String> = found.iter().map(|d| d.name.clone()).collect();
    let r = (|| {
        let mut stopped = Vec::new();
        for d in &found {
            if d.read_only {
                return Err(format!("{} is read-only", d.name));
            }
            stopped.extend(stop_holders(&ctx.root, &d.name)?);
            wipe_edges(d)?;
        }
        progress(
            1,
            3,
            format!("raid: creating RAID 1 over {}", names.join(" and ")),
        );
        // md_mod comes with raid1; the modules are in the ramdisk.
        let _ = run("modprobe", &["raid1"]);
        let _ = std::fs::write(
            ctx.root.join("proc/sys/dev/raid/speed_limit_min"),
            SPEED_LIMIT_MIN_KIB.to_string(),
        );
        let devs: Vec<PathBuf> = found.iter().map(|d| d.dev.clone()).collect();
        let args = create_args(&p.name, &devs);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        run("mdadm", &argv)?;
        let md = wait_for_array(&ctx.root, &names, Duration::from_secs(10))?;
        let detail =
            run("mdadm", &["--detail", "--export", &format!("/dev/{md}")]).unwrap_or_default();
        progress(2, 3, format!("raid: {md} built, resync running"));
        Ok::<_, String>((md, export_uuid(&detail), stopped))
    })();
    match r {
        Ok((md, uuid, stopped)) => {
            let size = md_size(&ctx.root, &md).unwrap_or(0);
            ok(
                format!(
                    "{md}: RAID 1 (metadata 1.0) over {}, {size} bytes; initial resync in the background",
                    names.join(" and ")
                ),
                json!({"array": md, "dev": ctx.root.join("dev").join(&md), "level": 1,
                       "metadata": "1.0", "name": p.name, "uuid": uuid, "members": names,
                       "size_bytes": size, "stopped_arrays": stopped,
                       "sync_action": sys_md(&ctx.root, &md, "sync_action")}),
            )
        }
        Err(e) => fail(format!("raid: {e}"), json!({"disks": names})),
    }
}

/// Waits until one md array holds all of `members` and returns its name.
fn wait_for_array(root: &Path, members: &[String], wait: Duration) -> Result<String, String> {
    let started = Instant::now();
    loop {
        let mut arrays: Vec<Vec<String>> = members.iter().map(|m| holders(root, m)).collect();
        arrays.dedup();
        if let [one] = arrays.as_slice()
            && let [md] = one.as_slice()
        {
            return Ok(md.clone());
        }
        if started.elapsed() >= wait {
            return Err(format!(
                "no md array holds {} after mdadm --create",
                members.join(" and ")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where a resync stands, from `md/sync_action` and `md/sync_completed`
/// (`"done / total"` in sectors, or `none` when nothing runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Idle,
    /// `(done, total)` in bytes.
    Running(u64, u64),
    /// Requested but not started yet (`resync=PENDING`, `delayed`).
    Pending,
}

pub fn parse_sync(action: &str, completed: &str) -> SyncState {
    let completed = completed.trim();
    if let Some((done, total)) = completed.split_once('/')
        && let (Ok(d), Ok(t)) = (done.trim().parse::<u64>(), total.trim().parse::<u64>())
    {
        return SyncState::Running(d * 512, t * 512);
    }
    match (action.trim(), completed) {
        ("idle", _) => SyncState::Idle,
        (_, "delayed" | "pending") => SyncState::Pending,
        // An action other than idle with `none`: about to start.
        _ => SyncState::Pending,
    }
}

pub fn wait_sync(ctx: &Ctx, p: &RaidSyncParams, progress: Progress<'_>) -> Outcome {
    let t = match target(&ctx.root, &p.disk) {
        Ok(t) => t,
        Err(e) => return fail(format!("raid_sync: {e}"), json!({})),
    };
    if !t.name.starts_with("md") {
        return fail(
            format!("raid_sync: {} is not in an md array", t.name),
            json!({"disk": t.name}),
        );
    }
    let md = t.name;
    let started = Instant::now();
    let mut last = None;
    loop {
        let action = sys_md(&ctx.root, &md, "sync_action").unwrap_or_default();
        let completed = sys_md(&ctx.root, &md, "sync_completed").unwrap_or_default();
        match parse_sync(&action, &completed) {
            SyncState::Idle => break,
            SyncState::Running(done, total) => {
                if last != Some(done) {
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    progress(
                        done,
                        total,
                        format!(
                            "raid_sync: {md} {action} {} of {} MiB",
                            done / MIB,
                            total / MIB,
                        ) + &format!(", {:.0} MB/s", done as f64 / secs / 1e6),
                    );
                    last = Some(done);
                }
            }
            SyncState::Pending => {}
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let degraded = sys_md(&ctx.root, &md, "degraded").unwrap_or_default();
    let mismatch = sys_md(&ctx.root, &md, "mismatch_cnt");
    let members = members(&ctx.root, &md);
    if degraded.trim() != "0" {
        return fail(
            format!("raid_sync: {md} is degraded ({degraded} member(s) missing) after its resync"),
            json!({"array": md, "members": members, "degraded": degraded}),
        );
    }
    ok(
        format!(
            "{md}: both members in sync ({} waited {:.1} s)",
            members.join(" and "),
            started.elapsed().as_secs_f64()
        ),
        json!({"array": md, "members": members, "degraded": 0, "mismatch_cnt": mismatch,
               "waited_secs": started.elapsed().as_secs_f64()}),
    )
}

/// For the result of a step that targeted an array.
pub fn describe(root: &Path, d: &Disk) -> Value {
    if d.name.starts_with("md") {
        json!({"array": d.name, "members": members(root, &d.name)})
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::fixture;

    fn file(root: &Path, path: &str, contents: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    /// Two virtio disks and, with `array`, an md127 holding both.
    fn rig(array: bool) -> (tempfile::TempDir, DiskRef) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        fixture::virtio_disk(root, "vda", 4, 64 * MIB, Some("A"));
        fixture::virtio_disk(root, "vdb", 5, 64 * MIB, Some("B"));
        if array {
            // As the kernel shows an array: a virtual block device.
            std::fs::create_dir_all(root.join("sys/devices/virtual/block/md127")).unwrap();
            std::os::unix::fs::symlink(
                "../devices/virtual/block/md127",
                root.join("sys/block/md127"),
            )
            .unwrap();
            for m in ["vda", "vdb"] {
                std::fs::create_dir_all(root.join("sys/block").join(m).join("holders/md127"))
                    .unwrap();
                std::fs::create_dir_all(root.join("sys/block/md127/slaves").join(m)).unwrap();
            }
            file(
                root,
                "sys/block/md127/size",
                &format!("{}\n", 63 * MIB / 512),
            );
            file(root, "sys/block/md127/md/array_state", "clean\n");
        }
        let r = DiskRef {
            name: "vda".into(),
            size_bytes: 64 * MIB,
            serial: Some("A".into()),
            wwn: None,
            model: None,
        };
        (t, r)
    }

    #[test]
    fn a_member_is_targeted_through_its_array() {
        let (t, r) = rig(false);
        let plain = target(t.path(), &r).unwrap();
        assert_eq!((plain.name.as_str(), plain.size_bytes), ("vda", 64 * MIB));
        assert_eq!(boot_disks(t.path(), &plain).len(), 1);
        assert_eq!(describe(t.path(), &plain), Value::Null);

        let (t, r) = rig(true);
        // Commissioning lists the members, never the array, as disks.
        let listed: Vec<String> = disk::disks(t.path())
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(listed, ["vda", "vdb"]);
        let md = target(t.path(), &r).unwrap();
        assert_eq!(md.name, "md127");
        assert_eq!(md.dev, t.path().join("dev/md127"));
        assert_eq!(md.size_bytes, 63 * MIB);
        assert_eq!(md.matched_by, "serial");
        let boot: Vec<String> = boot_disks(t.path(), &md)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(boot, ["vda", "vdb"]);
        assert_eq!(describe(t.path(), &md)["members"], json!(["vda", "vdb"]));
    }

    #[test]
    fn release_stops_the_array_holding_a_disk() {
        let (t, _) = rig(true);
        assert_eq!(stop_holders(t.path(), "vdb").unwrap(), ["md127"]);
        assert_eq!(
            std::fs::read_to_string(t.path().join("sys/block/md127/md/array_state")).unwrap(),
            "clear"
        );
        let (t, _) = rig(false);
        assert!(stop_holders(t.path(), "vda").unwrap().is_empty());
    }

    #[test]
    fn sync_state_from_sysfs() {
        assert_eq!(parse_sync("idle", "none"), SyncState::Idle);
        assert_eq!(
            parse_sync("resync", "2048 / 131072"),
            SyncState::Running(2048 * 512, 131072 * 512)
        );
        assert_eq!(parse_sync("resync", "delayed"), SyncState::Pending);
        assert_eq!(parse_sync("resync", "none"), SyncState::Pending);
    }

    #[test]
    fn raid_sync_waits_for_idle_and_refuses_a_degraded_or_missing_array() {
        let (t, r) = rig(true);
        let ctx = Ctx {
            root: t.path().to_path_buf(),
            fetch: crate::fetch::Fetcher::new(None),
            ssh_port: 0,
        };
        file(t.path(), "sys/block/md127/md/sync_action", "idle\n");
        file(t.path(), "sys/block/md127/md/sync_completed", "none\n");
        file(t.path(), "sys/block/md127/md/degraded", "0\n");
        file(t.path(), "sys/block/md127/md/mismatch_cnt", "0\n");
        let mut sink = |_: u64, _: u64, _: String| {};
        let o = wait_sync(&ctx, &RaidSyncParams { disk: r.clone() }, &mut sink);
        assert!(o.ok, "{}", o.message);
        assert_eq!(o.result["members"], json!(["vda", "vdb"]));
        file(t.path(), "sys/block/md127/md/degraded", "1\n");
        let o = wait_sync(&ctx, &RaidSyncParams { disk: r.clone() }, &mut sink);
        assert!(!o.ok && o.message.contains("degraded"), "{}", o.message);

        let (t, r) = rig(false);
        let ctx = Ctx {
            root: t.path().to_path_buf(),
            ..ctx
        };
        let o = wait_sync(&ctx, &RaidSyncParams { disk: r }, &mut sink);
        assert!(
            !o.ok && o.message.contains("not in an md array"),
            "{}",
            o.message
        );
    }

    #[test]
    fn build_refuses_one_disk_twice_before_touching_it() {
        let (t, r) = rig(false);
        std::fs::write(t.path().join("dev/vda"), vec![0xAAu8; 4096]).unwrap();
        let ctx = Ctx {
            root: t.path().to_path_buf(),
            fetch: crate::fetch::Fetcher::new(None),
            ssh_port: 0,
        };
        let mut sink = |_: u64, _: u64, _: String| {};
        let o = build(
            &ctx,
            &RaidParams {
                level: 1,
                disks: vec![r.clone(), r.clone()],
                name: "anvil-root".into(),
            },
            &mut sink,
        );
        assert!(!o.ok && o.message.contains("both members"), "{}", o.message);
        let o = build(
            &ctx,
            &RaidParams {
                level: 5,
                disks: vec![r.clone(), r],
                name: "anvil-root".into(),
            },
            &mut sink,
        );
        assert!(!o.ok && o.message.contains("level 1"), "{}", o.message);
        assert_eq!(
            std::fs::read(t.path().join("dev/vda")).unwrap(),
            vec![0xAAu8; 4096]
        );
    }

    #[test]
    fn mdadm_gets_metadata_1_0_and_a_plain_name() {
        let a = create_args(
            "anvil-root",
            &[PathBuf::from("/dev/vda"), "/dev/vdb".into()],
        );
        assert!(a.contains(&"--metadata=1.0".to_string()));
        assert!(a.contains(&"--level=1".to_string()));
        assert!(!a.iter().any(|x| x.contains("assume-clean")));
        assert_eq!(&a[a.len() - 2..], ["/dev/vda", "/dev/vdb"]);
        assert_eq!(
            export_uuid("MD_LEVEL=raid1\nMD_UUID=1a2b:3c4d:5e6f:7a8b\n").as_deref(),
            Some("1a2b:3c4d:5e6f:7a8b")
        );
    }
}
