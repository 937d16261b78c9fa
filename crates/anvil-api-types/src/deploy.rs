//! Deployment, release and rescue: the operator's request bodies and the
//! agent steps they turn into. `docs/deployment.md` is the prose version.
//!
//! The server resolves everything that needs the inventory (which disk is
//! the root disk, which disks a release erases) before a run starts, so a
//! hint that matches no disk is a 422 to the operator, not a failed run.
//! The agent gets [`DiskRef`]s and finds each disk again by its stable
//! identity (WWN, then serial, then kernel name and size).

use anvil_types::Firmware;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /api/v1/machines/{id}/actions/deploy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Image name (`anvil image list`).
    #[schema(example = "debian-12")]
    pub image: String,
    /// SSH public keys for the image's login user (`ssh-ed25519 AAAA… comment`).
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// cloud-init user data (`#cloud-config …`, a script, …); at most 64 KiB.
    #[serde(default)]
    pub user_data: Option<String>,
    /// Which disk gets the image: `smallest` (the default), `largest`,
    /// `name=sda`, `serial=S1`, `wwn=0x5000…`, `model=…` or `size=480G`
    /// (the smallest disk at least that large).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "largest")]
    pub root_disk: Option<RootDiskHint>,
    /// Where cloud-init finds its data: a `CIDATA` partition (NoCloud, the
    /// default) or an OpenStack config drive (`config-2`).
    #[serde(default)]
    pub config_drive: Option<ConfigDriveKind>,
    /// Software RAID 1 across two disks: the image goes onto the mirror
    /// (md, metadata 1.0) instead of one disk. Not together with
    /// `root_disk`: `raid.disks` names the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<RaidRequest>,
}

/// A software RAID request at deploy (`{"level": 1, "disks": ["serial=S1",
/// "serial=S2"]}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RaidRequest {
    /// RAID level; only 1 (a mirror of two disks) is supported.
    #[schema(example = 1)]
    pub level: u8,
    /// Exactly two disk hints (as `root_disk`), or none: the two smallest
    /// writable disks of equal-enough size (within 1%) that hold the image.
    #[serde(default)]
    #[schema(value_type = Vec<String>, example = json!(["serial=S1", "serial=S2"]))]
    pub disks: Vec<RootDiskHint>,
}

/// Body of `POST /api/v1/machines/{id}/actions/release` (optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// `quick` (default) or `secure`.
    #[serde(default)]
    pub erase: EraseMode,
    /// With `secure`: overwrite a disk with zeros when it has no secure
    /// erase command (slow: the whole disk is written).
    #[serde(default)]
    pub allow_overwrite: bool,
}

/// Body of `POST /api/v1/machines/{id}/actions/rescue` (optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RescueRequest {
    /// Keys for root in the rescue system; when empty, the keys of the
    /// machine's last deployment.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

/// How a release erases the disks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EraseMode {
    /// Partition tables, RAID and LVM signatures, the first and last MiB of
    /// every disk.
    #[default]
    Quick,
    /// The disk's own secure erase (NVMe format/sanitize, ATA security
    /// erase); overwriting only with `allow_overwrite`.
    Secure,
}

impl EraseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EraseMode::Quick => "quick",
            EraseMode::Secure => "secure",
        }
    }
    pub fn parse(s: &str) -> Option<EraseMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "quick" => Some(EraseMode::Quick),
            "secure" => Some(EraseMode::Secure),
            _ => None,
        }
    }
}

/// Where cloud-init's data goes on the deployed disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConfigDriveKind {
    /// NoCloud: a FAT partition labelled `CIDATA` with `meta-data`,
    /// `user-data` and `network-config`.
    #[default]
    Nocloud,
    /// OpenStack config drive: a FAT partition labelled `config-2`.
    ConfigDrive,
}

impl ConfigDriveKind {
    pub fn label(self) -> &'static str {
        match self {
            ConfigDriveKind::Nocloud => "CIDATA",
            ConfigDriveKind::ConfigDrive => "config-2",
        }
    }
}

/// Which disk gets the image. Written and parsed as `smallest`, `largest`
/// or `key=value` with key `name`, `serial`, `wwn`, `model` or `size`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum RootDiskHint {
    #[default]
    Smallest,
    Largest,
    /// Kernel name (`sda`, `nvme0n1`; a leading `/dev/` is dropped).
    Name(String),
    Serial(String),
    /// As the kernel reports it (`0x5000c500a1b2c3d4`, `eui.…`, `naa.…`).
    Wwn(String),
    /// Case-insensitive substring of the model.
    Model(String),
    /// The smallest disk of at least this many bytes.
    MinSize(u64),
}

impl RootDiskHint {
    /// Parses `smallest`, `largest`, `name=sda`, `serial=…`, `wwn=…`,
    /// `model=…` or `size=480G` (units K, M, G, T as powers of 1000, or
    /// KiB, MiB, GiB, TiB; plain bytes without a unit).
    pub fn parse(s: &str) -> Result<RootDiskHint, String> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "smallest" => return Ok(RootDiskHint::Smallest),
            "largest" => return Ok(RootDiskHint::Largest),
            _ => {}
        }
        let Some((key, value)) = s.split_once('=') else {
            return Err(format!(
                "root disk hint {s:?}: expected smallest, largest or key=value \
                 (name, serial, wwn, model, size)"
            ));
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("root disk hint {s:?}: empty value"));
        }
        Ok(match key.trim().to_ascii_lowercase().as_str() {
            "name" => RootDiskHint::Name(value.trim_start_matches("/dev/").to_string()),
            "serial" => RootDiskHint::Serial(value.to_string()),
            "wwn" => RootDiskHint::Wwn(value.to_string()),
            "model" => RootDiskHint::Model(value.to_string()),
            "size" => RootDiskHint::MinSize(parse_size(value).ok_or_else(|| {
                format!("root disk hint {s:?}: size must be a number with an optional unit (480G, 512GiB)")
            })?),
            other => {
                return Err(format!(
                    "root disk hint {s:?}: unknown key {other:?} (name, serial, wwn, model, size)"
                ))
            }
        })
    }
}

impl std::fmt::Display for RootDiskHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootDiskHint::Smallest => f.write_str("smallest"),
            RootDiskHint::Largest => f.write_str("largest"),
            RootDiskHint::Name(v) => write!(f, "name={v}"),
            RootDiskHint::Serial(v) => write!(f, "serial={v}"),
            RootDiskHint::Wwn(v) => write!(f, "wwn={v}"),
            RootDiskHint::Model(v) => write!(f, "model={v}"),
            RootDiskHint::MinSize(v) => write!(f, "size={v}"),
        }
    }
}

impl Serialize for RootDiskHint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RootDiskHint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RootDiskHint::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `480G`, `512GiB`, `1T`, `1000000`: bytes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let v = num * mult;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

// ---------------------------------------------------------------------------
// Agent steps of deployment, release and rescue.

/// A disk as the server chose it from the machine's hardware facts. The agent
/// finds it again by WWN, then serial, then kernel name with the same size,
/// and refuses to touch anything when no disk matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskRef {
    /// Kernel name at commissioning (`sda`, `vda`, `nvme0n1`).
    pub name: String,
    pub size_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// `erase` step: make the disks look empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseParams {
    pub disks: Vec<DiskRef>,
    pub mode: EraseMode,
    /// With `secure`: overwrite a disk that has no secure erase command.
    #[serde(default)]
    pub allow_overwrite: bool,
}

/// `write_image` step: stream the image onto the disk, verifying sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteImageParams {
    pub disk: DiskRef,
    /// The image stream (only the bytes outside the zero ranges, in order),
    /// fetched with the per-boot token.
    pub url: String,
    /// The zero map (`ANVZMAP1`), fetched with the per-boot token.
    pub zeromap_url: String,
    /// sha256 of the whole raw image, lower-case hex.
    pub sha256: String,
    pub raw_size: u64,
}

/// `grow_root` step: grow the image's last partition (its root) up to
/// `reserve_end_bytes` before the end of the disk, then its file system
/// when the agent can do that offline (ext2/3/4); otherwise cloud-init's
/// `resizefs` does it at first boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrowRootParams {
    pub disk: DiskRef,
    /// Bytes left free at the end of the disk (for the cloud-init partition).
    pub reserve_end_bytes: u64,
}

/// `cloud_init` step: a new partition at the end of the disk holding the
/// FAT image Anvil rendered (NoCloud `CIDATA` or `config-2`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudInitParams {
    pub disk: DiskRef,
    /// The FAT image, fetched with the per-boot token.
    pub url: String,
    pub sha256: String,
    pub size_bytes: u64,
    /// File system label: `CIDATA` or `config-2`.
    pub label: String,
}

/// `boot_entry` step: make the firmware boot the deployed disk once Anvil's
/// boot script hands over (UEFI: a boot entry for the disk's EFI system
/// partition; BIOS: nothing to do, the image's MBR boots).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BootEntryParams {
    pub disk: DiskRef,
    pub firmware: Firmware,
    /// Name of the boot entry (`anvil <image>`).
    pub label: String,
}

/// `raid` step: erase both disks' metadata (stopping any array that holds
/// them) and build a software RAID 1 over the whole disks with md metadata
/// 1.0 (superblock at the end, data from sector 0, so each member boots
/// alone as a plain disk). The steps after it name `disks[0]`; the agent
/// targets the md array that disk belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RaidParams {
    /// 1.
    pub level: u8,
    /// The two members.
    pub disks: Vec<DiskRef>,
    /// The array's name in its superblock (`mdadm --name`).
    pub name: String,
}

/// `raid_sync` step: wait until the mirror built by `raid` has finished its
/// initial resync, so both disks hold the same bytes before the machine
/// reboots (an image without mdadm then boots either disk alone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RaidSyncParams {
    /// Any member of the array.
    pub disk: DiskRef,
}

/// `rescue` step: start an SSH server for root with these keys, touching no
/// disk; the step succeeds once it listens, and the agent stays up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RescueParams {
    pub ssh_keys: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_disk_hints_parse_and_print_back() {
        for (text, hint) in [
            ("smallest", RootDiskHint::Smallest),
            ("LARGEST", RootDiskHint::Largest),
            ("name=/dev/sdb", RootDiskHint::Name("sdb".into())),
            ("serial=S1 X", RootDiskHint::Serial("S1 X".into())),
            (
                "wwn=0x5000c500a1b2c3d4",
                RootDiskHint::Wwn("0x5000c500a1b2c3d4".into()),
            ),
            ("model=samsung", RootDiskHint::Model("samsung".into())),
            ("size=480G", RootDiskHint::MinSize(480_000_000_000)),
            ("size=1GiB", RootDiskHint::MinSize(1 << 30)),
            ("size=4096", RootDiskHint::MinSize(4096)),
        ] {
            assert_eq!(RootDiskHint::parse(text), Ok(hint.clone()), "{text}");
            assert_eq!(RootDiskHint::parse(&hint.to_string()), Ok(hint));
        }
        for bad in ["", "biggest", "size=lots", "color=red", "serial="] {
            let err = RootDiskHint::parse(bad).unwrap_err();
            assert!(err.contains("root disk hint"), "{bad}: {err}");
        }
    }

    #[test]
    fn deploy_request_rejects_unknown_fields_and_bad_hints() {
        let ok: DeployRequest = serde_json::from_str(
            r#"{"image":"debian-12","ssh_keys":["ssh-ed25519 AAAA x"],"root_disk":"largest"}"#,
        )
        .unwrap();
        assert_eq!(ok.root_disk, Some(RootDiskHint::Largest));
        assert!(serde_json::from_str::<DeployRequest>(r#"{"image":"x","disk":"sda"}"#).is_err());
        let e = serde_json::from_str::<DeployRequest>(r#"{"image":"x","root_disk":"huge"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("root disk hint"), "{e}");
        let raid: DeployRequest = serde_json::from_str(
            r#"{"image":"x","raid":{"level":1,"disks":["serial=S1","name=sdb"]}}"#,
        )
        .unwrap();
        assert_eq!(
            raid.raid,
            Some(RaidRequest {
                level: 1,
                disks: vec![
                    RootDiskHint::Serial("S1".into()),
                    RootDiskHint::Name("sdb".into())
                ]
            })
        );
        let plain: DeployRequest = serde_json::from_str(r#"{"image":"x"}"#).unwrap();
        assert_eq!(plain.raid, None);
        assert!(!serde_json::to_string(&plain).unwrap().contains("raid"));
        assert!(
            serde_json::from_str::<DeployRequest>(r#"{"image":"x","raid":{"level":1,"chunk":64}}"#)
                .is_err()
        );
        let r: ReleaseRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r.erase, EraseMode::Quick);
    }
}
