//! Software RAID 1 at deploy (`"raid": {"level": 1, "disks": [...]}`):
//! which two disks form the mirror, and how the deployment's steps change.
//! Pure: the facts in, the members or a refusal (422) out, before anything
//! starts. `docs/deployment.md`, "Software RAID 1".

use super::{MIB, describe, disk_ref, resolve_root_disk, writable};
use anvil_api_types::agent::StepSpec;
use anvil_api_types::deploy::{DiskRef, RaidParams, RaidRequest, RaidSyncParams};
use serde::{Deserialize, Serialize};

/// Room md metadata 1.0 takes at the end of each member: the superblock
/// (8 to 12 KiB from the end) and, on large disks, mdadm's internal write-
/// intent bitmap just before it (at most 128 KiB). A member must hold the
/// image and the cloud-init partition plus this much.
pub const RAID_METADATA_RESERVE: u64 = MIB;

/// The array's name in its superblock; the deployed system shows it as
/// `/dev/md/anvil-root` when its mdadm assembles the mirror.
pub const ARRAY_NAME: &str = "anvil-root";

/// Two disks are "equal enough" for a mirror when the larger is at most
/// this many per mille larger: the array is as large as the smaller one,
/// so more would waste the rest of the larger disk.
const SIZE_TOLERANCE_PER_MILLE: u64 = 10;

/// What a deployment with RAID keeps with its run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaidPlan {
    pub level: u8,
    /// The two members; the first is the disk the image steps name (the
    /// agent targets the md array it belongs to).
    pub disks: Vec<DiskRef>,
    pub name: String,
}

fn close_in_size(a: u64, b: u64) -> bool {
    let (small, large) = (a.min(b), a.max(b));
    (large - small).saturating_mul(1000) <= small.saturating_mul(SIZE_TOLERANCE_PER_MILLE)
}

/// The mirror's members for `req` among the machine's disks, each able to
/// hold `needed` bytes (image + cloud-init partition) plus the md metadata.
/// Named disks (exactly two hints, resolved as `root_disk` hints) must be
/// two different writable disks; without hints the two smallest writable
/// disks of equal-enough size that are large enough, in the kernel's order.
pub fn choose_members(
    req: &RaidRequest,
    disks: &[anvil_inventory::Disk],
    needed: u64,
) -> Result<Vec<DiskRef>, String> {
    if req.level != 1 {
        return Err(format!(
            "RAID level {} is not supported; software RAID at deploy is level 1 (a mirror of two disks)",
            req.level
        ));
    }
    let per_member = needed + RAID_METADATA_RESERVE;
    let listed = || {
        if disks.is_empty() {
            "the machine's hardware facts list no disks".to_string()
        } else {
            format!(
                "disks: {}",
                disks.iter().map(describe).collect::<Vec<_>>().join("; ")
            )
        }
    };
    let members = match req.disks.len() {
        2 => {
            let a = resolve_root_disk(&req.disks[0], disks)?;
            let b = resolve_root_disk(&req.disks[1], disks)?;
            if a.name == b.name {
                return Err(format!(
                    "RAID 1 needs two different disks, but {} and {} both name {}",
                    req.disks[0], req.disks[1], a.name
                ));
            }
            if !close_in_size(a.size_bytes, b.size_bytes) {
                return Err(format!(
                    "RAID 1 members {} ({} bytes) and {} ({} bytes) differ in size by more than 1%",
                    a.name, a.size_bytes, b.name, b.size_bytes
                ));
            }
            vec![a, b]
        }
        0 => {
            let mut fit: Vec<&anvil_inventory::Disk> = disks
                .iter()
                .filter(writable)
                .filter(|d| d.size_bytes >= per_member)
                .collect();
            // Stable: among equal sizes the kernel's order stays.
            fit.sort_by_key(|d| d.size_bytes);
            let pair = fit
                .windows(2)
                .find(|w| close_in_size(w[0].size_bytes, w[1].size_bytes));
            match pair {
                Some(w) => {
                    let mut pair = [w[0], w[1]];
                    let pos = |d: &anvil_inventory::Disk| disks.iter().position(|x| x == d);
                    pair.sort_by_key(|d| pos(d));
                    pair.iter().map(|d| disk_ref(d)).collect()
                }
                None => {
                    return Err(format!(
                        "RAID 1 needs two writable disks of nearly equal size (within 1%) of at least {per_member} bytes each ({needed} for the image and the cloud-init partition, {RAID_METADATA_RESERVE} for the md metadata); {}",
                        listed()
                    ));
                }
            }
        }
        n => {
            return Err(format!(
                "RAID 1 takes exactly two disk hints, or none to pick two equal disks; got {n}"
            ));
        }
    };
    for m in &members {
        if m.size_bytes < per_member {
            return Err(format!(
                "disk {} ({} bytes) is too small for a RAID 1 member: it needs {per_member} bytes ({needed} for the image and the cloud-init partition, {RAID_METADATA_RESERVE} for the md metadata)",
                m.name, m.size_bytes
            ));
        }
    }
    Ok(members)
}

/// The plan kept with the run, or `None` without a RAID request.
pub fn plan(
    req: Option<&RaidRequest>,
    disks: &[anvil_inventory::Disk],
    needed: u64,
) -> Result<Option<RaidPlan>, String> {
    req.map(|r| {
        choose_members(r, disks, needed).map(|disks| RaidPlan {
            level: r.level,
            disks,
            name: ARRAY_NAME.to_string(),
        })
    })
    .transpose()
}

/// A plain deployment's steps turned into a mirrored one: `erase` covers
/// both members, `raid` builds the array right after it (the image steps
/// already name the first member, which the agent maps to the array), and
/// `raid_sync` waits for the initial resync at the end, before the reboot.
pub fn with_raid(steps: Vec<StepSpec>, raid: &RaidPlan) -> Vec<StepSpec> {
    let mut out = Vec::with_capacity(steps.len() + 2);
    for step in steps {
        match step {
            StepSpec::Erase(mut e) => {
                e.disks = raid.disks.clone();
                out.push(StepSpec::Erase(e));
                out.push(StepSpec::Raid(RaidParams {
                    level: raid.level,
                    disks: raid.disks.clone(),
                    name: raid.name.clone(),
                }));
            }
            other => out.push(other),
        }
    }
    out.push(StepSpec::RaidSync(RaidSyncParams {
        disk: raid.disks[0].clone(),
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_api_types::agent::StepKind;
    use anvil_api_types::deploy::RootDiskHint;
    use anvil_inventory::Disk;

    const GIB: u64 = 1 << 30;

    fn disk(name: &str, size: u64, serial: &str) -> Disk {
        Disk {
            name: name.into(),
            size_bytes: size,
            serial: Some(serial.into()),
            ..Default::default()
        }
    }

    fn req(hints: &[&str]) -> RaidRequest {
        RaidRequest {
            level: 1,
            disks: hints
                .iter()
                .map(|h| RootDiskHint::parse(h).unwrap())
                .collect(),
        }
    }

    fn names(v: &[DiskRef]) -> Vec<&str> {
        v.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn without_hints_the_two_smallest_equal_disks_that_fit() {
        let mut usb = disk("sde", 2 * GIB, "U");
        usb.removable = true;
        let disks = vec![
            disk("nvme0n1", 960 * GIB, "N1"),
            disk("sda", 480 * GIB, "S1"),
            disk("sdb", 240 * GIB, "S2"),
            disk("sdc", 480 * GIB + 100 * (1 << 20), "S3"),
            disk("sdd", 1 << 20, "TINY"),
            usb.clone(),
            {
                let mut u2 = usb;
                u2.name = "sdf".into();
                u2
            },
        ];
        let got = choose_members(&req(&[]), &disks, 4 * GIB).unwrap();
        // sdb (240 G) has no equal partner; sda and sdc differ by 0.02%;
        // removable sde/sdf are never taken even though they pair up.
        assert_eq!(names(&got), ["sda", "sdc"]);
        // Equal disks: the kernel's order, not the sort's.
        let two = vec![disk("vdb", 8 * GIB, "B"), disk("vda", 8 * GIB, "A")];
        assert_eq!(
            names(&choose_members(&req(&[]), &two, GIB).unwrap()),
            ["vdb", "vda"]
        );
    }

    #[test]
    fn fewer_than_two_suitable_disks_is_refused_with_the_disk_list() {
        let one = vec![disk("vda", 8 * GIB, "A")];
        let e = choose_members(&req(&[]), &one, GIB).unwrap_err();
        assert!(e.contains("two writable disks") && e.contains("vda"), "{e}");
        // Two disks, but one too small for the image.
        let small = vec![disk("vda", 8 * GIB, "A"), disk("vdb", GIB, "B")];
        let e = choose_members(&req(&[]), &small, 2 * GIB).unwrap_err();
        assert!(e.contains("at least"), "{e}");
        // Too different in size.
        let uneven = vec![disk("vda", 8 * GIB, "A"), disk("vdb", 16 * GIB, "B")];
        assert!(choose_members(&req(&[]), &uneven, GIB).is_err());
    }

    #[test]
    fn named_disks_must_be_two_different_fitting_disks() {
        let disks = vec![
            disk("vda", 8 * GIB, "A"),
            disk("vdb", 8 * GIB, "B"),
            disk("vdc", 64 * GIB, "C"),
        ];
        let got = choose_members(&req(&["serial=B", "name=vda"]), &disks, GIB).unwrap();
        assert_eq!(names(&got), ["vdb", "vda"], "the operator's order");
        let e = choose_members(&req(&["serial=A", "name=vda"]), &disks, GIB).unwrap_err();
        assert!(
            e.contains("two different disks") && e.contains("vda"),
            "{e}"
        );
        let e = choose_members(&req(&["serial=A"]), &disks, GIB).unwrap_err();
        assert!(e.contains("exactly two"), "{e}");
        let e = choose_members(&req(&["serial=A", "serial=Z"]), &disks, GIB).unwrap_err();
        assert!(e.contains("serial=Z"), "{e}");
        let e = choose_members(&req(&["serial=A", "serial=C"]), &disks, GIB).unwrap_err();
        assert!(e.contains("differ in size"), "{e}");
        let e = choose_members(&req(&["serial=A", "serial=B"]), &disks, 8 * GIB).unwrap_err();
        assert!(e.contains("too small") && e.contains("md metadata"), "{e}");
        let mut r = req(&["serial=A", "serial=B"]);
        r.level = 5;
        let e = choose_members(&r, &disks, GIB).unwrap_err();
        assert!(e.contains("level 5"), "{e}");
    }

    #[test]
    fn plan_is_none_without_a_request() {
        let disks = vec![disk("vda", 8 * GIB, "A"), disk("vdb", 8 * GIB, "B")];
        assert_eq!(plan(None, &disks, GIB), Ok(None));
        let p = plan(Some(&req(&[])), &disks, GIB).unwrap().unwrap();
        assert_eq!(p.name, ARRAY_NAME);
        assert_eq!(names(&p.disks), ["vda", "vdb"]);
    }

    #[test]
    fn mirrored_steps_erase_both_build_the_array_and_wait_for_the_resync() {
        let disks = vec![disk("vda", 8 * GIB, "A"), disk("vdb", 8 * GIB, "B")];
        let raid = plan(Some(&req(&[])), &disks, GIB).unwrap().unwrap();
        let mut params = super::super::tests::params();
        params.root_disk = raid.disks[0].clone();
        params.raid = Some(raid.clone());
        let steps = super::super::plan_deploy_steps(&params);
        let kinds: Vec<StepKind> = steps.iter().map(StepSpec::kind).collect();
        assert_eq!(
            kinds,
            [
                StepKind::Erase,
                StepKind::Raid,
                StepKind::WriteImage,
                StepKind::GrowRoot,
                StepKind::CloudInit,
                StepKind::BootEntry,
                StepKind::RaidSync
            ]
        );
        let StepSpec::Erase(e) = &steps[0] else {
            unreachable!()
        };
        assert_eq!(e.disks, raid.disks);
        let StepSpec::Raid(r) = &steps[1] else {
            unreachable!()
        };
        assert_eq!(
            (r.level, &r.disks, r.name.as_str()),
            (1, &raid.disks, ARRAY_NAME)
        );
        let StepSpec::WriteImage(w) = &steps[2] else {
            unreachable!()
        };
        assert_eq!(w.disk, raid.disks[0]);
        // Without RAID the plan is what it was.
        params.raid = None;
        assert_eq!(super::super::plan_deploy_steps(&params).len(), 5);
    }
}
