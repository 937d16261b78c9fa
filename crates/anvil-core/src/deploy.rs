//! Deployment, release and rescue: the `deploy`, `release`, `rescue` and
//! `exit-rescue` actions, and what the agent fetches during a deployment
//! (the image stream, its zero map, the cloud-init partition).
//!
//! All three reuse the commissioning machinery (`commission.rs`): a run with
//! its planned steps written in one transaction with the machine's move, the
//! per-boot token minted when the iPXE script is rendered, the agent's
//! sequenced reports, the watcher's deadline, and one job that boots the
//! machine and lasts the run. What differs by purpose is decided by the pure
//! functions at the bottom of `commission.rs` (`active_state`,
//! `purpose_outcome_state`, `clears_image`) and here (`resolve_root_disk`,
//! `plan_deploy_steps`, `release_disks`).
//!
//! Everything that needs the inventory is resolved before the run starts:
//! a root-disk hint that matches no disk, a missing image or a machine never
//! commissioned is a 422 to the operator, not a failed run.
//! `docs/deployment.md` is the prose version.

use crate::commission::{AgentSession, event_prefix};
use crate::error::{Error, Result};
use crate::{App, Principal, now};
use anvil_api_types::agent::{AgentPurpose, RunState, StepSpec};
use anvil_api_types::deploy::*;
use anvil_cloudinit::{CIDATA_SIZE, Flavor, RenderedFile, TAIL_RESERVE};

const MIB: u64 = 1024 * 1024;
use anvil_inventory::HardwareFacts;
use anvil_store::{NewEvent, RunRecord, StoreError};
use anvil_types::{Firmware, Job, JobStatus, Machine, MachineState, TransitionError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;
use uuid::Uuid;

pub mod raid;

/// The image stream of a deployment: `len` bytes in `chunks`.
pub struct ImageStream {
    pub len: u64,
    pub chunks: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
}

/// `[deploy]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployConfig {
    /// A deployment, release or rescue boot not ended by then fails, naming
    /// the step that hung.
    pub timeout: Duration,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            timeout: Duration::from_secs(40 * 60),
        }
    }
}

/// Largest user data accepted, in bytes.
pub const MAX_USER_DATA: usize = 64 * 1024;
/// Most SSH keys accepted in one request.
pub const MAX_SSH_KEYS: usize = 64;
/// Bytes the root partition leaves free at the end of the disk: the
/// cloud-init partition, the GPT backup, and up to 1 MiB of alignment
/// (`anvil_cloudinit::place_cidata` aligns the partition's end down to MiB).
pub const RESERVE_END_BYTES: u64 = CIDATA_SIZE + TAIL_RESERVE + MIB;

/// Path of the image stream (only the bytes outside the zero ranges).
pub fn image_path(sha256: &str) -> String {
    format!("/api/v1/agent/images/{sha256}")
}

/// Path of the image's zero map (`ANVZMAP1`).
pub fn zeromap_path(sha256: &str) -> String {
    format!("/api/v1/agent/images/{sha256}/zeromap")
}

/// Path of the run's cloud-init partition image.
pub const CLOUD_INIT_PATH: &str = "/api/v1/agent/cloud-init";

/// One file of the cloud-init partition, kept with the run so the FAT image
/// the agent fetches is exactly the one whose sha256 its step names (the
/// inventory may change during the run; the partition must not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFile {
    pub path: String,
    /// Every rendered file is text: JSON, and user data (a JSON string in
    /// the request).
    pub content: String,
}

/// What a deployment run keeps (`commissioning_runs.params`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentParams {
    pub image: String,
    pub image_id: Uuid,
    pub sha256: String,
    pub raw_size: u64,
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub user_data: Option<String>,
    pub root_disk_hint: String,
    pub root_disk: DiskRef,
    pub config_drive: ConfigDriveKind,
    pub firmware: Firmware,
    pub cloud_init_files: Vec<StoredFile>,
    pub cloud_init_sha256: String,
    pub cloud_init_size: u64,
    /// Software RAID 1: `root_disk` is then the first member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid: Option<raid::RaidPlan>,
}

/// What a release run keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseParams {
    pub erase: EraseMode,
    pub allow_overwrite: bool,
    pub disks: Vec<DiskRef>,
}

/// What a rescue run keeps: where `exit-rescue` returns the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RescueRunParams {
    pub return_to: MachineState,
    /// Why the machine was `failed` (or `broken`) before rescue: it goes
    /// back with the same reason (a machine is only `failed` with one).
    #[serde(default)]
    pub return_reason: Option<String>,
    pub ssh_keys: Vec<String>,
}

/// How a run's start is announced: the start event's message and data, and
/// the job's parameters.
struct Announce {
    message: String,
    data: serde_json::Value,
    job_params: serde_json::Value,
}

fn transition(current: MachineState, to: MachineState) -> Result<()> {
    current
        .check_transition(to, None)
        .map_err(|source| Error::Transition { current, source })
}

fn internal(context: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Internal {
        context,
        source: e.to_string().into(),
    }
}

fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn flavor(kind: ConfigDriveKind) -> Flavor {
    match kind {
        ConfigDriveKind::Nocloud => Flavor::NoCloud,
        ConfigDriveKind::ConfigDrive => Flavor::ConfigDrive,
    }
}

/// A deploy may start from `ready` (allocated on the way, as the lifecycle
/// says: ready → allocated → deploying) or from `allocated`.
pub fn check_deploy_from(state: MachineState) -> Result<()> {
    if state == MachineState::Ready {
        transition(MachineState::Ready, MachineState::Allocated)?;
        transition(MachineState::Allocated, MachineState::Deploying)
    } else {
        transition(state, MachineState::Deploying)
    }
}

/// An image that boots only one way (as detected at import) on a machine
/// whose firmware boots the other would never come up: refused before the
/// disk is touched. Unknown or `bios+uefi` images go anywhere.
pub fn check_firmware(
    image: &str,
    image_firmware: Option<&str>,
    machine: Firmware,
    hostname: &str,
) -> Result<()> {
    let only = match image_firmware {
        Some("bios") => Firmware::Bios,
        Some("uefi") => Firmware::Uefi,
        _ => return Ok(()),
    };
    if only == machine {
        return Ok(());
    }
    Err(Error::invalid(
        "image",
        format!(
            "image {image:?} boots only with {}; {hostname} boots with {} (as its commissioning showed)",
            only.as_str().to_uppercase(),
            machine.as_str().to_uppercase()
        ),
    ))
}

/// Validated `authorized_keys` lines.
pub fn validate_keys(keys: &[String]) -> Result<Vec<String>> {
    if keys.len() > MAX_SSH_KEYS {
        return Err(Error::invalid(
            "ssh_keys",
            format!("at most {MAX_SSH_KEYS} keys"),
        ));
    }
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            anvil_cloudinit::validate_ssh_key(i, k)
                .map_err(|e| Error::invalid(format!("ssh_keys[{i}]"), e.to_string()))
        })
        .collect()
}

fn disk_ref(d: &anvil_inventory::Disk) -> DiskRef {
    DiskRef {
        name: d.name.clone(),
        size_bytes: d.size_bytes,
        serial: d.serial.clone().filter(|s| !s.trim().is_empty()),
        wwn: d.wwn.clone().filter(|s| !s.trim().is_empty()),
        model: d.model.clone().filter(|s| !s.trim().is_empty()),
    }
}

/// Disks an image or an erase may touch: not removable, not read-only, not empty.
fn writable(d: &&anvil_inventory::Disk) -> bool {
    !d.removable && !d.read_only && d.size_bytes > 0
}

fn describe(d: &anvil_inventory::Disk) -> String {
    let mut s = format!("{} ({} bytes", d.name, d.size_bytes);
    if let Some(v) = d.serial.as_deref().filter(|v| !v.is_empty()) {
        s.push_str(&format!(", serial {v}"));
    }
    if let Some(v) = d.wwn.as_deref().filter(|v| !v.is_empty()) {
        s.push_str(&format!(", wwn {v}"));
    }
    if let Some(v) = d.model.as_deref().filter(|v| !v.is_empty()) {
        s.push_str(&format!(", model {v}"));
    }
    if d.removable {
        s.push_str(", removable");
    }
    if d.read_only {
        s.push_str(", read-only");
    }
    s.push(')');
    s
}

/// The disk a hint picks among the machine's disks. Ties (two disks of the
/// same size) go to the first in the facts' order, which is the kernel's.
/// The error names the hint and lists the disks there are.
pub fn resolve_root_disk(
    hint: &RootDiskHint,
    disks: &[anvil_inventory::Disk],
) -> std::result::Result<DiskRef, String> {
    let candidates: Vec<&anvil_inventory::Disk> = disks.iter().filter(writable).collect();
    let eq = |a: &Option<String>, b: &str| {
        a.as_deref()
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(b.trim()))
    };
    let picked = match hint {
        RootDiskHint::Smallest => candidates.iter().min_by_key(|d| d.size_bytes).copied(),
        RootDiskHint::Largest => candidates
            .iter()
            .rev()
            .max_by_key(|d| d.size_bytes)
            .copied(),
        RootDiskHint::Name(n) => candidates.iter().find(|d| d.name == *n).copied(),
        RootDiskHint::Serial(v) => candidates.iter().find(|d| eq(&d.serial, v)).copied(),
        RootDiskHint::Wwn(v) => {
            // The kernel writes `naa.5000…`, vendors print `0x5000…`.
            let norm = |s: &str| {
                let s = s.trim().to_ascii_lowercase();
                s.strip_prefix("naa.")
                    .or_else(|| s.strip_prefix("eui."))
                    .or_else(|| s.strip_prefix("0x"))
                    .unwrap_or(&s)
                    .to_string()
            };
            candidates
                .iter()
                .find(|d| d.wwn.as_deref().is_some_and(|w| norm(w) == norm(v)))
                .copied()
        }
        RootDiskHint::Model(v) => {
            let v = v.to_ascii_lowercase();
            candidates
                .iter()
                .find(|d| {
                    d.model
                        .as_deref()
                        .is_some_and(|m| m.to_ascii_lowercase().contains(&v))
                })
                .copied()
        }
        RootDiskHint::MinSize(min) => candidates
            .iter()
            .filter(|d| d.size_bytes >= *min)
            .min_by_key(|d| d.size_bytes)
            .copied(),
    };
    picked.map(disk_ref).ok_or_else(|| {
        let listed = if disks.is_empty() {
            "the machine's hardware facts list no disks".to_string()
        } else {
            format!(
                "disks: {}",
                disks.iter().map(describe).collect::<Vec<_>>().join("; ")
            )
        };
        format!("root disk hint {hint} matches no writable disk ({listed})")
    })
}

/// The disks a release erases: every disk that is not removable or read-only.
pub fn release_disks(disks: &[anvil_inventory::Disk]) -> Vec<DiskRef> {
    disks.iter().filter(writable).map(disk_ref).collect()
}

/// The steps of a deployment, in order.
pub fn plan_deploy_steps(p: &DeploymentParams) -> Vec<StepSpec> {
    let disk = p.root_disk.clone();
    let steps = vec![
        StepSpec::Erase(EraseParams {
            disks: vec![disk.clone()],
            mode: EraseMode::Quick,
            allow_overwrite: false,
        }),
        StepSpec::WriteImage(WriteImageParams {
            disk: disk.clone(),
            url: image_path(&p.sha256),
            zeromap_url: zeromap_path(&p.sha256),
            sha256: p.sha256.clone(),
            raw_size: p.raw_size,
        }),
        StepSpec::GrowRoot(GrowRootParams {
            disk: disk.clone(),
            reserve_end_bytes: RESERVE_END_BYTES,
        }),
        StepSpec::CloudInit(CloudInitParams {
            disk: disk.clone(),
            url: CLOUD_INIT_PATH.to_string(),
            sha256: p.cloud_init_sha256.clone(),
            size_bytes: p.cloud_init_size,
            label: p.config_drive.label().to_string(),
        }),
        StepSpec::BootEntry(BootEntryParams {
            disk,
            firmware: p.firmware,
            label: format!("anvil {}", p.image),
        }),
    ];
    match &p.raid {
        Some(r) => raid::with_raid(steps, r),
        None => steps,
    }
}

/// The FAT image of the cloud-init partition, from the files kept with the
/// run (the same files give the same bytes).
pub fn cloud_init_image(label: &str, files: &[StoredFile]) -> Result<Vec<u8>> {
    let rendered: Vec<RenderedFile> = files
        .iter()
        .map(|f| RenderedFile {
            path: f.path.clone(),
            bytes: f.content.clone().into_bytes(),
        })
        .collect();
    anvil_cloudinit::build_fat_image(label, &rendered, CIDATA_SIZE)
        .map_err(|e| internal("cloud-init partition", crate::error_chain(&e)))
}

fn run_params<T: serde::de::DeserializeOwned>(run: &RunRecord) -> Result<T> {
    serde_json::from_str(&run.params).map_err(|e| internal("stored run params", e))
}

impl App {
    /// Sets the deployment settings.
    pub fn with_deploy(mut self, cfg: DeployConfig) -> Self {
        self.deploy = std::sync::Arc::new(cfg);
        self
    }

    pub fn deploy_config(&self) -> &DeployConfig {
        &self.deploy
    }

    async fn latest_facts(&self, m: &Machine) -> Result<Option<HardwareFacts>> {
        match self.store.hardware_facts(m.id, None).await? {
            Some(rec) => Ok(Some(
                serde_json::from_str(&rec.facts)
                    .map_err(|e| internal("stored hardware facts", e))?,
            )),
            None => Ok(None),
        }
    }

    async fn facts_or_commission_first(&self, m: &Machine) -> Result<HardwareFacts> {
        self.latest_facts(m).await?.ok_or_else(|| {
            Error::invalid(
                "machine",
                format!(
                    "{} has no hardware facts: commission it first (anvil machine commission {})",
                    m.hostname, m.hostname
                ),
            )
        })
    }

    /// Deploys an image: checks everything that can be checked now (state,
    /// image, facts, root disk, keys, user data), renders the cloud-init
    /// partition, moves the machine to `deploying` with the run and its
    /// steps, and starts the job that boots it.
    pub async fn deploy(&self, by: &Principal, ident: &str, req: DeployRequest) -> Result<Job> {
        let m = self.get_machine(ident).await?;
        check_deploy_from(m.state)?;
        let name = req.image.trim();
        if name.is_empty() {
            return Err(Error::invalid("image", "an image name is required"));
        }
        let image = self.store.get_image_by_name(name).await?.ok_or_else(|| {
            Error::invalid(
                "image",
                format!("no image named {name:?} (see anvil image list)"),
            )
        })?;
        if image.kind == crate::installer::KIND {
            if req.raid.is_some() {
                // The installer partitions the disks itself from its answer
                // file; silently deploying without the mirror would be worse.
                return Err(Error::invalid(
                    "raid",
                    format!(
                        "image {name:?} is an installer: software RAID is built by the agent for disk images only"
                    ),
                ));
            }
            return self.deploy_installer(by, m, image, req).await;
        }
        if image.kind != "disk" {
            return Err(Error::invalid(
                "image",
                format!(
                    "image {name:?} is of kind {}; only disk images deploy",
                    image.kind
                ),
            ));
        }
        match self.image_library() {
            Some(lib) if lib.contains(&image.sha256) => {}
            Some(_) => {
                return Err(Error::invalid(
                    "image",
                    format!("the files of image {name:?} are missing from the image library"),
                ));
            }
            None => {
                return Err(Error::invalid("image", "this server has no image library"));
            }
        }
        let ssh_keys = validate_keys(&req.ssh_keys)?;
        if let Some(ud) = &req.user_data
            && ud.len() > MAX_USER_DATA
        {
            return Err(Error::TooLarge {
                what: "user_data",
                size: ud.len(),
                max: MAX_USER_DATA,
            });
        }
        let facts = self.facts_or_commission_first(&m).await?;
        if req.raid.is_some() && req.root_disk.is_some() {
            return Err(Error::invalid(
                "root_disk",
                "root_disk does not apply to a RAID 1 deployment: name the two members in raid.disks",
            ));
        }
        let hint = req.root_disk.clone().unwrap_or_default();
        let raid = raid::plan(
            req.raid.as_ref(),
            &facts.disks,
            image.raw_size + RESERVE_END_BYTES,
        )
        .map_err(|e| Error::invalid("raid", e))?;
        let root_disk = match &raid {
            Some(r) => r.disks[0].clone(),
            None => resolve_root_disk(&hint, &facts.disks)
                .map_err(|e| Error::invalid("root_disk", e))?,
        };
        let needed = image.raw_size + RESERVE_END_BYTES;
        if root_disk.size_bytes < needed {
            return Err(Error::invalid(
                "root_disk",
                format!(
                    "disk {} ({} bytes) is too small for image {name:?}: it needs {needed} bytes ({} of image and {RESERVE_END_BYTES} for the cloud-init partition)",
                    root_disk.name, root_disk.size_bytes, image.raw_size
                ),
            ));
        }
        let firmware = match facts.boot.mode {
            anvil_inventory::BootMode::Uefi => Firmware::Uefi,
            anvil_inventory::BootMode::Bios => Firmware::Bios,
        };
        check_firmware(
            &image.name,
            image.firmware.as_deref(),
            firmware,
            &m.hostname,
        )?;
        let config_drive = req.config_drive.unwrap_or_default();
        let run_id = Uuid::now_v7();
        let ctx = self
            .deploy_context(
                &m,
                Some(&facts),
                &ssh_keys,
                req.user_data.as_deref(),
                run_id,
            )
            .await?;
        let files: Vec<StoredFile> = anvil_cloudinit::render(&ctx, flavor(config_drive))
            .map_err(|e| Error::invalid("machine", e.to_string()))?
            .into_iter()
            .map(|f| {
                Ok(StoredFile {
                    content: String::from_utf8(f.bytes)
                        .map_err(|e| internal("rendered cloud-init file", e))?,
                    path: f.path,
                })
            })
            .collect::<Result<_>>()?;
        let fat = cloud_init_image(config_drive.label(), &files)?;
        let params = DeploymentParams {
            image: image.name.clone(),
            image_id: image.id,
            sha256: image.sha256.clone(),
            raw_size: image.raw_size,
            ssh_keys,
            user_data: req.user_data.clone(),
            root_disk_hint: hint.to_string(),
            root_disk,
            config_drive,
            firmware,
            cloud_init_sha256: sha256_bytes(&fat),
            cloud_init_size: fat.len() as u64,
            cloud_init_files: files,
            raid,
        };
        let steps = plan_deploy_steps(&params);
        let target = match &params.raid {
            Some(r) => format!(
                "RAID {} of {}",
                r.level,
                r.disks
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join("+")
            ),
            None => params.root_disk.name.clone(),
        };
        let message = format!(
            "{} → deploying with image {} on {}{}",
            m.state,
            image.name,
            target,
            if m.state == MachineState::Ready {
                " (allocated)"
            } else {
                ""
            }
        );
        let data = json!({
            "from": m.state,
            "image": image.name,
            "sha256": image.sha256,
            "root_disk": params.root_disk,
            "root_disk_hint": params.root_disk_hint,
            "config_drive": config_drive,
            "ssh_keys": params.ssh_keys.len(),
            "user_data_bytes": params.user_data.as_ref().map(|u| u.len()),
            "raid": params.raid.as_ref().map(|r| json!({"level": r.level, "disks": r.disks})),
        });
        let job_params = json!({
            "image": image.name,
            "root_disk": params.root_disk.name,
            "config_drive": config_drive,
        });
        self.start_purpose_run(
            by,
            m,
            AgentPurpose::Deployment,
            run_id,
            serde_json::to_string(&params).map_err(|e| internal("run params", e))?,
            steps,
            Some(image.id),
            Announce {
                message,
                data,
                job_params,
            },
        )
        .await
    }

    /// Releases a machine: erases its disks (`quick` by default) and
    /// returns it to `ready`.
    pub async fn release(&self, by: &Principal, ident: &str, req: ReleaseRequest) -> Result<Job> {
        let m = self.get_machine(ident).await?;
        transition(m.state, MachineState::Releasing)?;
        let facts = self.facts_or_commission_first(&m).await?;
        let disks = release_disks(&facts.disks);
        if disks.is_empty() {
            return Err(Error::invalid(
                "machine",
                format!(
                    "{}'s hardware facts list no writable disk to erase",
                    m.hostname
                ),
            ));
        }
        let params = ReleaseParams {
            erase: req.erase,
            allow_overwrite: req.allow_overwrite,
            disks,
        };
        let steps = vec![StepSpec::Erase(EraseParams {
            disks: params.disks.clone(),
            mode: params.erase,
            allow_overwrite: params.allow_overwrite,
        })];
        let message = format!(
            "{} → releasing: {} erase of {}",
            m.state,
            params.erase.as_str(),
            params
                .disks
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let data = json!({ "from": m.state, "erase": params.erase, "allow_overwrite": params.allow_overwrite, "disks": params.disks });
        let job_params =
            json!({ "erase": params.erase, "allow_overwrite": params.allow_overwrite });
        self.start_purpose_run(
            by,
            m,
            AgentPurpose::Release,
            Uuid::now_v7(),
            serde_json::to_string(&params).map_err(|e| internal("run params", e))?,
            steps,
            None,
            Announce {
                message,
                data,
                job_params,
            },
        )
        .await
    }

    /// Boots the rescue system with an SSH server for root; no disk is
    /// touched. Without keys in the request, the last deployment's keys.
    pub async fn rescue(&self, by: &Principal, ident: &str, req: RescueRequest) -> Result<Job> {
        let m = self.get_machine(ident).await?;
        transition(m.state, MachineState::Rescue)?;
        let mut ssh_keys = validate_keys(&req.ssh_keys)?;
        if ssh_keys.is_empty()
            && let Some(keys) = self.newer_installer_keys(m.id).await?
        {
            ssh_keys = keys;
        }
        if ssh_keys.is_empty()
            && let Some(run) = self
                .store
                .latest_run_of(m.id, AgentPurpose::Deployment.as_str())
                .await?
        {
            ssh_keys = run_params::<DeploymentParams>(&run)?.ssh_keys;
        }
        if ssh_keys.is_empty() {
            return Err(Error::invalid(
                "ssh_keys",
                format!(
                    "give at least one SSH key: {} has no deployment to take keys from",
                    m.hostname
                ),
            ));
        }
        let params = RescueRunParams {
            return_to: m.state,
            return_reason: m.state_reason.clone(),
            ssh_keys,
        };
        let steps = vec![StepSpec::Rescue(anvil_api_types::deploy::RescueParams {
            ssh_keys: params.ssh_keys.clone(),
        })];
        let message = format!(
            "{} → rescue ({} SSH keys); exit-rescue returns it to {}",
            m.state,
            params.ssh_keys.len(),
            m.state
        );
        let data = json!({ "from": m.state, "ssh_keys": params.ssh_keys.len() });
        let job_params = json!({ "return_to": m.state });
        self.start_purpose_run(
            by,
            m,
            AgentPurpose::Rescue,
            Uuid::now_v7(),
            serde_json::to_string(&params).map_err(|e| internal("run params", e))?,
            steps,
            None,
            Announce {
                message,
                data,
                job_params,
            },
        )
        .await
    }

    /// Leaves rescue: ends the rescue run (if it still runs), returns the
    /// machine to the state it had before, and power-cycles it so a
    /// deployed machine boots its disk again (others are powered off).
    pub async fn exit_rescue(&self, by: &Principal, ident: &str) -> Result<Job> {
        let m = self.get_machine(ident).await?;
        let run = self
            .store
            .latest_run_of(m.id, AgentPurpose::Rescue.as_str())
            .await?;
        let (return_to, return_reason) = match &run {
            Some(r) => {
                let p = run_params::<RescueRunParams>(r)?;
                (p.return_to, p.return_reason)
            }
            None => (MachineState::Ready, None),
        };
        // Back to `failed` only with a reason: the one it had before.
        let reason = (return_to == MachineState::Failed).then(|| {
            return_reason
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(|| "failed before rescue".to_string())
        });
        if m.state != MachineState::Rescue {
            return Err(Error::Transition {
                current: m.state,
                source: TransitionError::NotIn {
                    from: m.state,
                    expected: MachineState::Rescue,
                },
            });
        }
        MachineState::Rescue
            .check_transition(return_to, reason.as_deref())
            .map_err(|source| Error::Transition {
                current: MachineState::Rescue,
                source,
            })?;
        let at = now();
        let job = Job {
            id: Uuid::now_v7(),
            kind: "exit-rescue".into(),
            machine_id: Some(m.id),
            status: JobStatus::Queued,
            actor: by.actor(),
            params: json!({ "return_to": return_to }),
            result: None,
            error: None,
            created_at: at,
            started_at: None,
            finished_at: None,
        };
        self.store.insert_job(&job).await?;
        let running = run
            .as_ref()
            .filter(|r| r.state == RunState::Running.as_str());
        let moved = match running {
            Some(r) => {
                self.end_run_to(
                    r.id,
                    RunState::Aborted,
                    Some(
                        reason
                            .clone()
                            .unwrap_or_else(|| "the operator exited rescue".into()),
                    ),
                    None,
                    &by.actor(),
                    Some(return_to),
                )
                .await;
                // The store moved it only if it was still in rescue.
                self.store
                    .get_machine(m.id)
                    .await?
                    .is_some_and(|now| now.state == return_to)
            }
            None => {
                let ev = NewEvent {
                    time: at,
                    actor: by.actor(),
                    machine_id: Some(m.id),
                    kind: "rescue.exit".into(),
                    message: format!("rescue → {return_to}"),
                    data: json!({ "to": return_to, "job": job.id, "run": run.as_ref().map(|r| r.id) }),
                };
                match self
                    .store
                    .set_state(
                        m.id,
                        MachineState::Rescue,
                        return_to,
                        reason.as_deref(),
                        at,
                        &ev,
                    )
                    .await
                {
                    Ok(()) => true,
                    Err(StoreError::Concurrent) => false,
                    Err(e) => {
                        let _ = self
                            .store
                            .finish_job(job.id, Err(&e.to_string()), now())
                            .await;
                        return Err(e.into());
                    }
                }
            }
        };
        if !moved {
            let msg = "the machine's state changed while leaving rescue";
            let _ = self.store.finish_job(job.id, Err(msg), now()).await;
            return Err(Error::Concurrent {
                what: "the machine",
            });
        }
        self.boot.mark_dirty();
        let app = self.clone();
        let actor = by.actor();
        let job_id = job.id;
        tokio::spawn(async move { app.run_exit_rescue_job(job_id, m, return_to, actor).await });
        Ok(job)
    }

    async fn run_exit_rescue_job(
        &self,
        job_id: Uuid,
        m: Machine,
        return_to: MachineState,
        actor: String,
    ) {
        let _ = self.store.start_job(job_id, now()).await;
        // A deployed machine network-boots into Anvil's local-boot script,
        // which hands over to its disk; any other state has nothing to run.
        let action = if return_to == MachineState::Deployed {
            crate::power::MachineAction::PxeBoot
        } else {
            crate::power::MachineAction::PowerOff
        };
        let outcome = if m.bmc.is_some() && self.power.is_some() {
            self.power_for_commission(&m, action)
                .await
                .map(|()| json!({ "state": return_to, "power": action.as_str() }))
        } else {
            let _ = self
                .store
                .append_event(&NewEvent {
                    time: now(),
                    actor,
                    machine_id: Some(m.id),
                    kind: "rescue.manual-power".into(),
                    message: format!(
                        "no power control: {} it by hand",
                        if return_to == MachineState::Deployed {
                            "reboot"
                        } else {
                            "power off"
                        }
                    ),
                    data: json!({ "job": job_id }),
                })
                .await;
            Ok(json!({ "state": return_to, "power": "manual" }))
        };
        let stored = match &outcome {
            Ok(v) => self.store.finish_job(job_id, Ok(v), now()).await,
            Err(e) => self.store.finish_job(job_id, Err(e), now()).await,
        };
        if let Err(e) = stored {
            tracing::warn!(job = %job_id, error = %e, "cannot record a job's outcome");
        }
    }

    /// Writes the job, the run with its steps, the machine's move and the
    /// event, then starts the job that boots the machine and follows the run.
    #[allow(clippy::too_many_arguments)]
    async fn start_purpose_run(
        &self,
        by: &Principal,
        m: Machine,
        purpose: AgentPurpose,
        run_id: Uuid,
        params: String,
        steps: Vec<StepSpec>,
        image: Option<Uuid>,
        Announce {
            message,
            mut data,
            job_params,
        }: Announce,
    ) -> Result<Job> {
        let at = now();
        let kind = match purpose {
            AgentPurpose::Commissioning => "commission",
            AgentPurpose::Deployment => "deploy",
            AgentPurpose::Release => "release",
            AgentPurpose::Rescue => "rescue",
        };
        let job = Job {
            id: Uuid::now_v7(),
            kind: kind.into(),
            machine_id: Some(m.id),
            status: JobStatus::Queued,
            actor: by.actor(),
            params: job_params,
            result: None,
            error: None,
            created_at: at,
            started_at: None,
            finished_at: None,
        };
        let timeout = self.deploy.timeout;
        let run = RunRecord {
            id: run_id,
            machine_id: m.id,
            number: 0,
            state: RunState::Running.as_str().into(),
            tests: "[]".into(),
            job_id: Some(job.id),
            failure_reason: None,
            failed_step: None,
            system_uuid: None,
            agent_version: None,
            started_at: at,
            registered_at: None,
            last_seen_at: None,
            finished_at: None,
            deadline: at + time::Duration::try_from(timeout).unwrap_or(time::Duration::MAX),
            purpose: purpose.as_str().into(),
            params,
        };
        let records: Vec<_> = steps
            .iter()
            .enumerate()
            .map(|(i, spec)| crate::commission::step_record(run.id, i, spec, at))
            .collect();
        data["job"] = json!(job.id);
        data["run"] = json!(run.id);
        let ev = NewEvent {
            time: at,
            actor: by.actor(),
            machine_id: Some(m.id),
            kind: format!("{}.start", event_prefix(purpose)),
            message,
            data,
        };
        self.store.insert_job(&job).await?;
        if let Err(e) = self
            .store
            .start_agent_run(
                &run,
                &records,
                m.state,
                crate::commission::active_state(purpose),
                image,
                &ev,
            )
            .await
        {
            let msg = match &e {
                StoreError::Concurrent => format!(
                    "the machine's state changed while {} was starting",
                    purpose.as_str()
                ),
                other => other.to_string(),
            };
            let _ = self.store.finish_job(job.id, Err(&msg), now()).await;
            return Err(match e {
                StoreError::Concurrent => Error::Concurrent {
                    what: "the machine",
                },
                other => other.into(),
            });
        }
        self.boot.mark_dirty();
        let app = self.clone();
        let actor = by.actor();
        tokio::spawn(async move {
            app.run_agent_job(job.id, m, run_id, purpose, actor, false)
                .await
        });
        Ok(job)
    }

    /// The running deployment run of an agent's session.
    async fn session_deployment(&self, s: &AgentSession) -> Result<DeploymentParams> {
        let run = self
            .store
            .commissioning_run(s.run_id)
            .await?
            .ok_or(Error::AgentUnauthenticated)?;
        if run.purpose != AgentPurpose::Deployment.as_str() {
            return Err(Error::Forbidden(
                "this agent's run is not a deployment: it has no image or cloud-init data",
            ));
        }
        if run.state != RunState::Running.as_str() {
            return Err(Error::Agent {
                problem: anvil_api_types::agent::AgentProblem::RunEnded,
                detail: format!("deployment run {} has ended ({})", run.number, run.state),
            });
        }
        run_params(&run)
    }

    /// The image a deployment agent may stream: only its own run's.
    pub async fn agent_image(
        &self,
        s: &AgentSession,
        sha256: &str,
    ) -> Result<anvil_image::StoredImage> {
        let p = self.session_deployment(s).await?;
        if !sha256.eq_ignore_ascii_case(&p.sha256) {
            return Err(Error::Forbidden(
                "this image is not the one this agent's run deploys",
            ));
        }
        let lib = self
            .image_library()
            .ok_or_else(|| internal("image library", "this server has no image library"))?;
        lib.open_image(&p.sha256).map_err(|e| Error::NotFound {
            kind: "image",
            id: format!("{} ({})", p.image, crate::error_chain(&e)),
        })
    }

    /// The image stream of the session's deployment: only the bytes outside
    /// the zero ranges, in order (`NonZeroOnly`), produced on a blocking
    /// thread in pieces of at most 4 MiB through a small channel, so a slow
    /// reader holds back the decompression and memory stays bounded
    /// whatever the image's size. `len` is the number of bytes it will
    /// carry. A read error (a corrupted store) ends the stream with an
    /// error, which the HTTP layer turns into a cut connection: the agent
    /// never sees a complete, wrong image.
    pub async fn agent_image_stream(&self, s: &AgentSession, sha256: &str) -> Result<ImageStream> {
        let image = self.agent_image(s, sha256).await?;
        let counted = image.clone();
        let zero_bytes = tokio::task::spawn_blocking(move || -> anvil_image::Result<u64> {
            let mut map = counted.zero_ranges()?;
            let mut total = 0u64;
            while let Some((_, len)) = map.next_range()? {
                total += len;
            }
            Ok(total)
        })
        .await
        .map_err(|e| internal("zero map", e))?
        .map_err(|e| internal("zero map", crate::error_chain(&e)))?;
        let len = image.raw_size.saturating_sub(zero_bytes);
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let sha = image.sha256.clone();
        tokio::task::spawn_blocking(move || {
            let sent = image.for_each_nonzero(|_offset, piece| {
                tx.blocking_send(Ok(bytes::Bytes::copy_from_slice(piece)))
                    .map_err(|_| std::io::Error::other("the agent closed the connection"))
            });
            if let Err(e) = sent {
                let text = crate::error_chain(&e);
                if !text.contains("the agent closed the connection") {
                    tracing::warn!(sha256 = %sha, error = %text, "image stream failed");
                    metrics::counter!("anvil_image_stream_errors_total").increment(1);
                    let _ = tx.blocking_send(Err(std::io::Error::other(text)));
                }
            }
        });
        Ok(ImageStream { len, chunks: rx })
    }

    /// The zero map (`ANVZMAP1`) of the session's deployment image.
    pub async fn agent_zeromap(&self, s: &AgentSession, sha256: &str) -> Result<Vec<u8>> {
        let image = self.agent_image(s, sha256).await?;
        let lib = self
            .image_library()
            .ok_or_else(|| internal("image library", "this server has no image library"))?;
        let path = lib.map_path(&image.sha256);
        tokio::fs::read(&path)
            .await
            .map_err(|e| internal("zero map", format!("{}: {e}", path.display())))
    }

    /// The FAT image of the session's cloud-init partition and its label.
    pub async fn agent_cloud_init(&self, s: &AgentSession) -> Result<(Vec<u8>, &'static str)> {
        let p = self.session_deployment(s).await?;
        let label = p.config_drive.label();
        let fat = cloud_init_image(label, &p.cloud_init_files)?;
        if sha256_bytes(&fat) != p.cloud_init_sha256 {
            return Err(internal(
                "cloud-init partition",
                "the rebuilt image differs from the one the step names",
            ));
        }
        Ok((fat, label))
    }

    /// The machine's current deployment (deploying, deployed, or rescued
    /// from deployed), for the cloud-init display.
    pub(crate) async fn current_deployment(
        &self,
        m: &Machine,
    ) -> Result<Option<(Uuid, DeploymentParams)>> {
        let deployed_like = match m.state {
            MachineState::Deploying | MachineState::Deployed => true,
            MachineState::Rescue => match self
                .store
                .latest_run_of(m.id, AgentPurpose::Rescue.as_str())
                .await?
            {
                Some(r) => run_params::<RescueRunParams>(&r)?.return_to == MachineState::Deployed,
                None => false,
            },
            _ => false,
        };
        // An installer deployment wrote no cloud-init partition.
        if !deployed_like || self.newer_installer_keys(m.id).await?.is_some() {
            return Ok(None);
        }
        match self
            .store
            .latest_run_of(m.id, AgentPurpose::Deployment.as_str())
            .await?
        {
            Some(r) => Ok(Some((r.id, run_params(&r)?))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_inventory::Disk;

    fn disk(name: &str, size: u64, serial: &str, wwn: &str, model: &str) -> Disk {
        Disk {
            name: name.into(),
            size_bytes: size,
            serial: Some(serial.into()),
            wwn: Some(wwn.into()),
            model: Some(model.into()),
            ..Default::default()
        }
    }

    fn disks() -> Vec<Disk> {
        let mut usb = disk("sdc", 8 << 30, "USB1", "", "Flash");
        usb.removable = true;
        let mut ro = disk("sdd", 1 << 30, "RO1", "", "Card");
        ro.read_only = true;
        vec![
            disk(
                "sda",
                480 << 30,
                "S1",
                "naa.5000c500a1b2c3d4",
                "Samsung SSD 860",
            ),
            disk(
                "nvme0n1",
                960 << 30,
                "N1",
                "eui.0025388b71b0e4a1",
                "INTEL SSDPE2KX",
            ),
            disk(
                "sdb",
                480 << 30,
                "S2",
                "naa.5000c500a1b2c3d5",
                "Samsung SSD 860",
            ),
            usb,
            ro,
        ]
    }

    #[test]
    fn hints_pick_the_disk_they_name() {
        let d = disks();
        let pick =
            |h: &str| resolve_root_disk(&RootDiskHint::parse(h).unwrap(), &d).map(|r| r.name);
        // Removable and read-only disks are never picked, even when smallest.
        assert_eq!(pick("smallest").unwrap(), "sda", "ties go to the first");
        assert_eq!(pick("largest").unwrap(), "nvme0n1");
        assert_eq!(pick("name=/dev/sdb").unwrap(), "sdb");
        assert_eq!(pick("serial=n1").unwrap(), "nvme0n1");
        assert_eq!(pick("wwn=0x5000C500A1B2C3D5").unwrap(), "sdb");
        assert_eq!(pick("wwn=eui.0025388b71b0e4a1").unwrap(), "nvme0n1");
        assert_eq!(pick("model=intel").unwrap(), "nvme0n1");
        assert_eq!(pick("size=520G").unwrap(), "nvme0n1");
        assert_eq!(pick("size=400G").unwrap(), "sda");
        let r = resolve_root_disk(&RootDiskHint::Name("sda".into()), &d).unwrap();
        assert_eq!(
            r,
            DiskRef {
                name: "sda".into(),
                size_bytes: 480 << 30,
                serial: Some("S1".into()),
                wwn: Some("naa.5000c500a1b2c3d4".into()),
                model: Some("Samsung SSD 860".into()),
            }
        );
    }

    #[test]
    fn a_hint_that_matches_nothing_names_itself_and_the_disks() {
        let d = disks();
        for h in ["name=sdc", "serial=RO1", "size=2T", "model=seagate"] {
            let e = resolve_root_disk(&RootDiskHint::parse(h).unwrap(), &d).unwrap_err();
            assert!(
                e.contains(&format!("root disk hint {h}")) || e.contains("root disk hint"),
                "{e}"
            );
            assert!(e.contains("sda (515396075520 bytes"), "{e}");
            assert!(e.contains("sdc") && e.contains("removable"), "{e}");
        }
        let e = resolve_root_disk(&RootDiskHint::Smallest, &[]).unwrap_err();
        assert!(e.contains("list no disks"), "{e}");
    }

    #[test]
    fn an_image_for_the_other_firmware_is_refused() {
        assert!(check_firmware("x", None, Firmware::Bios, "h").is_ok());
        assert!(check_firmware("x", Some("bios+uefi"), Firmware::Uefi, "h").is_ok());
        assert!(check_firmware("x", Some("uefi"), Firmware::Uefi, "h").is_ok());
        let e = check_firmware("deb", Some("uefi"), Firmware::Bios, "node-1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "image: image \"deb\" boots only with UEFI; node-1 boots with BIOS (as its commissioning showed)"
        );
        assert!(check_firmware("x", Some("bios"), Firmware::Uefi, "h").is_err());
    }

    #[test]
    fn release_erases_every_writable_disk() {
        let names: Vec<_> = release_disks(&disks())
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["sda", "nvme0n1", "sdb"]);
    }

    #[test]
    fn deploy_may_start_from_ready_or_allocated_only() {
        assert!(check_deploy_from(MachineState::Ready).is_ok());
        assert!(check_deploy_from(MachineState::Allocated).is_ok());
        for s in [
            MachineState::New,
            MachineState::Deployed,
            MachineState::Deploying,
            MachineState::Commissioning,
            MachineState::Failed,
        ] {
            assert!(
                matches!(check_deploy_from(s), Err(Error::Transition { .. })),
                "{s}"
            );
        }
    }

    pub(super) fn params() -> DeploymentParams {
        DeploymentParams {
            image: "deb".into(),
            image_id: Uuid::nil(),
            sha256: "ab".repeat(32),
            raw_size: 64 << 20,
            ssh_keys: vec![],
            user_data: None,
            root_disk_hint: "smallest".into(),
            root_disk: release_disks(&disks()).remove(0),
            config_drive: ConfigDriveKind::Nocloud,
            firmware: Firmware::Uefi,
            cloud_init_files: vec![StoredFile {
                path: "meta-data".into(),
                content: "{}".into(),
            }],
            cloud_init_sha256: "cd".repeat(32),
            cloud_init_size: CIDATA_SIZE,
            raid: None,
        }
    }

    #[test]
    fn deploy_steps_are_erase_write_grow_cloud_init_boot_entry() {
        let p = params();
        let steps = plan_deploy_steps(&p);
        let kinds: Vec<_> = steps.iter().map(|s| s.kind().as_str()).collect();
        assert_eq!(
            kinds,
            [
                "erase",
                "write_image",
                "grow_root",
                "cloud_init",
                "boot_entry"
            ]
        );
        let mut write = steps[1].clone();
        crate::commission::absolutise_urls(&mut write, "http://10.0.0.1:8080/");
        let StepSpec::WriteImage(w) = write else {
            panic!()
        };
        assert_eq!(
            w.url,
            format!("http://10.0.0.1:8080/api/v1/agent/images/{}", p.sha256)
        );
        assert!(w.zeromap_url.ends_with("/zeromap"));
        let StepSpec::GrowRoot(g) = &steps[2] else {
            panic!()
        };
        // Room for the partition where place_cidata puts it, on any disk size.
        for size in [(100 << 20) + 12345, 480 << 30, (480 << 30) + 511] {
            let place =
                anvil_cloudinit::place_cidata(size, 64 << 20, anvil_cloudinit::PartitionTable::Gpt)
                    .unwrap();
            assert!(size - place.start <= g.reserve_end_bytes, "{size}");
        }
        assert!(matches!(
            &steps[0],
            StepSpec::Erase(EraseParams { mode: EraseMode::Quick, disks, .. }) if disks == std::slice::from_ref(&p.root_disk)
        ));
    }

    #[test]
    fn the_cloud_init_image_is_the_same_for_the_same_files() {
        let p = params();
        let a = cloud_init_image("CIDATA", &p.cloud_init_files).unwrap();
        let b = cloud_init_image("CIDATA", &p.cloud_init_files).unwrap();
        assert_eq!(a.len() as u64, CIDATA_SIZE);
        assert_eq!(sha256_bytes(&a), sha256_bytes(&b));
    }
}
