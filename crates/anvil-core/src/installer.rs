//! Installer deploys: an image of kind `installer` is a distribution's
//! network installer (kernel + initrd, and the mirror, ISO or repository it
//! installs from). Deploying one starts no agent: the machine moves to
//! `deploying` with an installer run, its iPXE script boots the installer
//! with an answer file rendered for that boot (Debian preseed, Ubuntu
//! autoinstall, Rocky/Alma kickstart; templates in `ipxe/installer/`,
//! overridable in `<data_dir>/ipxe/installer/`), and the answer file's last
//! command calls `POST /api/v1/installer/<token>/done`, which marks the
//! machine `deployed`. The next network boot then boots the local disk.
//!
//! Tokens are minted when the iPXE script is rendered (only their SHA-256
//! is stored) and carried in URLs, because installers fetch their answer
//! files and call back without headers. A token is valid while its run
//! runs; the first completion call ends the run, so any later call is a 409.
//! `docs/deployment.md` ("Installer images") is the prose version.

use crate::deploy::validate_keys;
use crate::error::{Error, Result};
use crate::{App, Principal, now};
use anvil_api_types::agent::AgentProblem;
use anvil_api_types::deploy::{DeployRequest, RootDiskHint};
use anvil_api_types::images::Image;
use anvil_api_types::installer::InstallerImageImport;
use anvil_store::{ImageRecord, InstallerImageRecord, InstallerRunRecord, NewEvent, StoreError};
use anvil_types::{Job, JobStatus, MacAddr, Machine, MachineState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// `images.kind` of an installer image.
pub const KIND: &str = "installer";
/// Largest kernel or initrd accepted (Ubuntu's casper initrd is ~70 MB).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// At most this many tokens per run (one per iPXE script fetch), so a
/// machine stuck in a boot loop cannot fill the table.
const MAX_TOKENS_PER_RUN: u64 = 256;
const TOKEN_BYTES: usize = 32;
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
const CONSOLE: &str = "console=tty0 console=ttyS0,115200";

/// Signalled when an installer run ends, so its job does not wait a poll.
static INSTALLER_RUN_ENDED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Where installer files and template overrides live.
#[derive(Debug, Clone)]
pub struct InstallerConfig {
    /// `<data_dir>/boot/installer`: one directory per image id with
    /// `vmlinuz` and `initrd.img`, served at `/boot/files/installer/…`.
    pub files_dir: PathBuf,
    /// `<data_dir>/ipxe`: an `installer/<template>` file here overrides the
    /// built-in one.
    pub overrides_dir: PathBuf,
}

impl InstallerConfig {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        InstallerConfig {
            files_dir: data_dir.join("boot").join("installer"),
            overrides_dir: data_dir.join("ipxe"),
        }
    }
}

/// The installer families Anvil has templates for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstallerOs {
    Debian,
    Ubuntu,
    Rocky,
    Alma,
}

impl InstallerOs {
    pub fn parse(s: &str) -> Option<InstallerOs> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "debian" => InstallerOs::Debian,
            "ubuntu" => InstallerOs::Ubuntu,
            "rocky" | "rockylinux" => InstallerOs::Rocky,
            "alma" | "almalinux" => InstallerOs::Alma,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InstallerOs::Debian => "debian",
            InstallerOs::Ubuntu => "ubuntu",
            InstallerOs::Rocky => "rocky",
            InstallerOs::Alma => "alma",
        }
    }

    /// The iPXE template, relative to `ipxe/` (AlmaLinux's Anaconda takes
    /// the same kickstart as Rocky's).
    pub fn script_template(self) -> &'static str {
        match self {
            InstallerOs::Debian => "installer/debian.ipxe",
            InstallerOs::Ubuntu => "installer/ubuntu.ipxe",
            InstallerOs::Rocky | InstallerOs::Alma => "installer/rocky.ipxe",
        }
    }

    /// The answer files the installer fetches: (name in the URL, template).
    pub fn answer_files(self) -> &'static [(&'static str, &'static str)] {
        match self {
            InstallerOs::Debian => &[("preseed.cfg", "installer/debian-preseed.cfg")],
            InstallerOs::Ubuntu => &[
                ("user-data", "installer/ubuntu-user-data"),
                ("meta-data", "installer/ubuntu-meta-data"),
            ],
            InstallerOs::Rocky | InstallerOs::Alma => &[("ks.cfg", "installer/rocky.ks")],
        }
    }

    /// The user the deployment's SSH keys log in as.
    pub fn login_user(self) -> &'static str {
        match self {
            InstallerOs::Ubuntu => "ubuntu",
            _ => "root",
        }
    }
}

/// The built-in template at `rel` (a path under `ipxe/`).
pub fn builtin_template(rel: &str) -> Option<&'static str> {
    Some(match rel {
        "installer/debian.ipxe" => include_str!("../../../ipxe/installer/debian.ipxe"),
        "installer/debian-preseed.cfg" => {
            include_str!("../../../ipxe/installer/debian-preseed.cfg")
        }
        "installer/ubuntu.ipxe" => include_str!("../../../ipxe/installer/ubuntu.ipxe"),
        "installer/ubuntu-user-data" => include_str!("../../../ipxe/installer/ubuntu-user-data"),
        "installer/ubuntu-meta-data" => include_str!("../../../ipxe/installer/ubuntu-meta-data"),
        "installer/rocky.ipxe" => include_str!("../../../ipxe/installer/rocky.ipxe"),
        "installer/rocky.ks" => include_str!("../../../ipxe/installer/rocky.ks"),
        _ => return None,
    })
}

/// Where the installer puts the system, as each installer can be told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootDiskTarget {
    /// Kernel name (`sda`) for preseed and kickstart; `None`: the
    /// installer's own choice (its first disk).
    pub name: Option<String>,
    /// subiquity's `storage.layout.match` (JSON object).
    pub ubuntu_match: serde_json::Value,
    /// How it was decided, written into the answer file as a comment.
    pub note: String,
}

/// Translates a root-disk hint for the installers. With the machine's
/// disks (from commissioning) the hint is resolved exactly as for image
/// deploys and the installers get the disk's kernel name (subiquity its
/// serial when known). Without them, only what an installer can match by
/// itself: a name for every installer, and serial, model, smallest and
/// largest for subiquity; anything else needs the hardware facts.
pub fn translate_root_disk(
    os: InstallerOs,
    hint: &RootDiskHint,
    disks: Option<&[anvil_inventory::Disk]>,
) -> std::result::Result<RootDiskTarget, String> {
    if let Some(disks) = disks {
        let d = crate::deploy::resolve_root_disk(hint, disks)?;
        let ubuntu_match = match &d.serial {
            Some(serial) => json!({ "serial": serial }),
            None => json!({ "path": format!("/dev/{}", d.name) }),
        };
        return Ok(RootDiskTarget {
            note: format!(
                "{hint} is {} ({} bytes) in the machine's hardware facts",
                d.name, d.size_bytes
            ),
            name: Some(d.name),
            ubuntu_match,
        });
    }
    let ubuntu = os == InstallerOs::Ubuntu;
    let (name, ubuntu_match) = match hint {
        RootDiskHint::Name(n) => (Some(n.clone()), json!({ "path": format!("/dev/{n}") })),
        RootDiskHint::Smallest if ubuntu => (None, json!({ "size": "smallest" })),
        RootDiskHint::Largest if ubuntu => (None, json!({ "size": "largest" })),
        RootDiskHint::Serial(s) if ubuntu => (None, json!({ "serial": s })),
        RootDiskHint::Model(m) if ubuntu => (None, json!({ "model": m })),
        // The installer's default is its first disk: right on a machine
        // with one disk, which is what "smallest" means there too.
        RootDiskHint::Smallest => (None, json!({ "size": "smallest" })),
        other => {
            return Err(format!(
                "root disk hint {other} needs the machine's hardware facts for the {} installer: commission it first, or give name=DISK",
                os.as_str()
            ));
        }
    };
    Ok(RootDiskTarget {
        note: match &name {
            Some(n) => format!("{hint}: /dev/{n} (no hardware facts)"),
            None => format!("{hint} (no hardware facts): the installer's own choice"),
        },
        name,
        ubuntu_match,
    })
}

/// What an installer run keeps (`installer_runs.params`): everything the
/// script and answer files are rendered from, fixed when the deploy starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallerParams {
    pub image: String,
    pub image_id: Uuid,
    pub os: InstallerOs,
    pub release: Option<String>,
    pub repo_url: String,
    pub ssh_keys: Vec<String>,
    pub root_disk_hint: String,
    pub root_disk: RootDiskTarget,
}

/// Per-render values: who asks, and the token of this boot.
#[derive(Debug, Clone)]
pub struct RenderContext<'a> {
    /// Anvil's base URL as the machine reaches it (no trailing slash).
    pub server_url: &'a str,
    pub mac: MacAddr,
    pub hostname: &'a str,
    pub run_id: Uuid,
    pub token: &'a str,
}

/// A template that does not compile or render.
#[derive(Debug, thiserror::Error)]
#[error("the installer template {name} ({origin}) is not valid: {detail}")]
pub struct TemplateError {
    pub name: String,
    /// `built-in` or the override's path.
    pub origin: String,
    pub detail: String,
}

/// Single-quotes a value for a POSIX shell (and kickstart's shlex).
fn shell_quote(v: String) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// A JSON string, which YAML reads as the same string.
fn json_quote(v: String) -> String {
    serde_json::to_string(&v).unwrap_or_else(|_| "\"\"".into())
}

fn split_repo(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.split_once('/') {
        Some((host, dir)) => (host.to_string(), format!("/{}", dir.trim_end_matches('/'))),
        None => (rest.to_string(), "/".to_string()),
    }
}

fn vars(p: &InstallerParams, c: &RenderContext<'_>) -> minijinja::Value {
    let server = c.server_url.trim_end_matches('/');
    let mac = c.mac.to_string();
    let (short, domain) = match c.hostname.split_once('.') {
        Some((s, d)) => (s.to_string(), d.to_string()),
        None => (c.hostname.to_string(), String::new()),
    };
    let files = format!("{server}/boot/files/installer/{}", p.image_id);
    let answer_url = format!("{server}/api/v1/installer/{}/", c.token);
    let (repo_host, repo_dir) = split_repo(&p.repo_url);
    minijinja::context! {
        server_url => server,
        mac => mac.clone(),
        mac_dashed => mac.replace(':', "-"),
        hostname => c.hostname,
        short_hostname => short,
        domain => domain,
        instance_id => c.run_id.to_string(),
        os => p.os.as_str(),
        release => p.release.clone().unwrap_or_default(),
        image => p.image.clone(),
        // ?mac= puts the fetch on the machine's boot timeline.
        kernel_url => format!("{files}/vmlinuz?mac={mac}"),
        initrd_url => format!("{files}/initrd.img?mac={mac}"),
        answer_url => answer_url.clone(),
        done_url => format!("{answer_url}done"),
        repo_url => p.repo_url.clone(),
        repo_host => repo_host,
        repo_dir => repo_dir,
        ssh_keys => p.ssh_keys.clone(),
        login_user => p.os.login_user(),
        root_disk => p.root_disk.name.as_ref().map(|n| format!("/dev/{n}")).unwrap_or_default(),
        root_disk_name => p.root_disk.name.clone().unwrap_or_default(),
        root_disk_note => p.root_disk.note.clone(),
        ubuntu_disk_match => serde_json::to_string(&p.root_disk.ubuntu_match).unwrap_or_else(|_| "{}".into()),
        console => CONSOLE,
    }
}

/// Renders one installer template (`name` is its path under `ipxe/`,
/// `origin` says where its text came from, for the error).
pub fn render(
    name: &str,
    origin: &str,
    template: &str,
    p: &InstallerParams,
    c: &RenderContext<'_>,
) -> std::result::Result<String, TemplateError> {
    let err = |e: minijinja::Error| TemplateError {
        name: name.to_string(),
        origin: origin.to_string(),
        detail: crate::error_chain(&e),
    };
    let mut env = minijinja::Environment::new();
    // Scripts and answer files are plain text: no HTML escaping; values
    // that go into a shell or YAML are quoted by the `sh`/`json` filters.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_filter("sh", shell_quote);
    env.add_filter("json", json_quote);
    env.add_template(name, template).map_err(err)?;
    let tmpl = env.get_template(name).map_err(err)?;
    tmpl.render(vars(p, c)).map_err(err)
}

/// The digest an installer image is known by: its files, OS and source,
/// so registering the same installer twice answers the existing image.
pub fn installer_digest(os: InstallerOs, repo_url: &str, kernel: &str, initrd: &str) -> String {
    let mut h = Sha256::new();
    for part in ["anvil-installer-v1", os.as_str(), repo_url, kernel, initrd] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

fn internal(context: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Internal {
        context,
        source: e.to_string().into(),
    }
}

fn check_url(field: &str, url: &str) -> Result<url::Url> {
    let parsed =
        url::Url::parse(url).map_err(|e| Error::invalid(field, format!("{url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(field, "only http and https URLs"));
    }
    Ok(parsed)
}

/// A kernel or initrd on its way into the files directory.
struct Received {
    file: tempfile::NamedTempFile,
    sha256: String,
    size: u64,
}

fn too_large(what: &'static str, size: u64) -> Error {
    Error::TooLarge {
        what,
        size: usize::try_from(size).unwrap_or(usize::MAX),
        max: MAX_FILE_BYTES as usize,
    }
}

impl App {
    /// Sets where installer files and template overrides live.
    pub fn with_installer(mut self, cfg: InstallerConfig) -> Self {
        self.installer = Some(std::sync::Arc::new(cfg));
        self
    }

    fn installer_cfg(&self) -> Result<&InstallerConfig> {
        self.installer.as_deref().ok_or_else(|| {
            internal(
                "installer",
                "this server was started without an installer directory",
            )
        })
    }

    /// One file for an installer image: downloaded (`url`) or copied from
    /// the server (`path`), hashed on the way.
    async fn receive_installer_file(
        &self,
        by: &Principal,
        dir: &Path,
        what: &'static str,
        url: Option<&str>,
        path: Option<&str>,
    ) -> Result<Received> {
        let field_url = format!("{what}_url");
        let field_path = format!("{what}_path");
        let file = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempfile_in(dir)
            .map_err(|e| internal("installer files", e))?;
        let out = file.reopen().map_err(|e| internal("installer files", e))?;
        let mut out = tokio::io::BufWriter::new(tokio::fs::File::from_std(out));
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        match (url, path) {
            (Some(url), None) => {
                let parsed = check_url(&field_url, url)?;
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(30))
                    .build()
                    .map_err(|e| internal("installer download client", e))?;
                let mut r = client.get(parsed.clone()).send().await.map_err(|e| {
                    Error::invalid(
                        &field_url,
                        format!("cannot fetch {parsed}: {}", crate::error_chain(&e)),
                    )
                })?;
                if !r.status().is_success() {
                    return Err(Error::invalid(
                        &field_url,
                        format!("fetching {parsed} answered {}", r.status()),
                    ));
                }
                while let Some(chunk) = r.chunk().await.map_err(|e| {
                    Error::invalid(
                        &field_url,
                        format!(
                            "the download broke off after {size} bytes: {}",
                            crate::error_chain(&e)
                        ),
                    )
                })? {
                    size += chunk.len() as u64;
                    if size > MAX_FILE_BYTES {
                        return Err(too_large(what, size));
                    }
                    hasher.update(&chunk);
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| internal("installer files", e))?;
                }
            }
            (None, Some(path)) => {
                if !by.is_admin() {
                    return Err(Error::Forbidden(
                        "registering files on the server needs an administrator",
                    ));
                }
                let p = PathBuf::from(path);
                if !p.is_absolute() || !p.is_file() {
                    return Err(Error::invalid(
                        &field_path,
                        format!("{path} is not a readable file on the server (an absolute path)"),
                    ));
                }
                let mut src = tokio::fs::File::open(&p)
                    .await
                    .map_err(|e| Error::invalid(&field_path, format!("{path}: {e}")))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    use tokio::io::AsyncReadExt;
                    let n = src
                        .read(&mut buf)
                        .await
                        .map_err(|e| Error::invalid(&field_path, format!("{path}: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    size += n as u64;
                    if size > MAX_FILE_BYTES {
                        return Err(too_large(what, size));
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n])
                        .await
                        .map_err(|e| internal("installer files", e))?;
                }
            }
            _ => {
                return Err(Error::invalid(
                    &field_url,
                    format!("give exactly one of {field_url} and {field_path}"),
                ));
            }
        }
        out.flush()
            .await
            .map_err(|e| internal("installer files", e))?;
        if size == 0 {
            return Err(Error::invalid(
                if url.is_some() {
                    &field_url
                } else {
                    &field_path
                },
                "the file is empty",
            ));
        }
        Ok(Received {
            file,
            sha256: hex::encode(hasher.finalize()),
            size,
        })
    }

    /// Registers an installer image: checks the request, fetches or copies
    /// the kernel and initrd into `<data_dir>/boot/installer/<image id>/`,
    /// and stores the image. Registering the same installer again (same
    /// files, OS and source) answers the existing image, `false`.
    pub async fn register_installer_image(
        &self,
        by: &Principal,
        req: InstallerImageImport,
    ) -> Result<(Image, bool)> {
        let cfg = self.installer_cfg()?.clone();
        if req.kind != KIND {
            return Err(Error::invalid("kind", "must be \"installer\""));
        }
        crate::images::check_name(&req.name)?;
        let os = InstallerOs::parse(&req.os).ok_or_else(|| {
            Error::invalid(
                "os",
                format!(
                    "{:?}: installer images are debian, ubuntu, rocky or alma",
                    req.os
                ),
            )
        })?;
        crate::images::check_text("release", &req.release)?;
        let arch = req.arch.clone().unwrap_or_else(|| "x86_64".into());
        if !["x86_64", "aarch64"].contains(&arch.as_str()) {
            return Err(Error::invalid(
                "arch",
                format!("{arch:?}: expected x86_64 or aarch64"),
            ));
        }
        let repo_url = match (&req.repo_url, os) {
            (Some(u), _) => {
                check_url("repo_url", u)?;
                if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(Error::invalid("repo_url", "must not contain spaces"));
                }
                u.clone()
            }
            (None, InstallerOs::Debian) => DEBIAN_MIRROR.to_string(),
            (None, InstallerOs::Ubuntu) => {
                return Err(Error::invalid(
                    "repo_url",
                    "ubuntu installs from its live-server ISO: give its URL (…/ubuntu-24.04-live-server-amd64.iso)",
                ));
            }
            (None, _) => {
                return Err(Error::invalid(
                    "repo_url",
                    format!(
                        "{} installs from a BaseOS repository: give its URL (…/9/BaseOS/x86_64/os/)",
                        os.as_str()
                    ),
                ));
            }
        };
        tokio::fs::create_dir_all(&cfg.files_dir)
            .await
            .map_err(|e| internal("installer files", e))?;
        let kernel = self
            .receive_installer_file(
                by,
                &cfg.files_dir,
                "kernel",
                req.kernel_url.as_deref(),
                req.kernel_path.as_deref(),
            )
            .await?;
        let initrd = self
            .receive_installer_file(
                by,
                &cfg.files_dir,
                "initrd",
                req.initrd_url.as_deref(),
                req.initrd_path.as_deref(),
            )
            .await?;
        let digest = installer_digest(os, &repo_url, &kernel.sha256, &initrd.sha256);
        if let Some(existing) = self.store.get_image_by_sha256(&digest).await? {
            let users = self.store.image_users(Some(existing.id)).await?;
            return Ok((crate::images::to_api(existing, &users), false));
        }
        let record = ImageRecord {
            id: Uuid::now_v7(),
            name: req.name.clone(),
            kind: KIND.into(),
            os: Some(os.as_str().into()),
            release: req.release.clone(),
            arch: Some(arch),
            // iPXE loads the installer's kernel either way.
            firmware: Some("bios+uefi".into()),
            login_user: Some(os.login_user().into()),
            source_format: KIND.into(),
            source_size: kernel.size + initrd.size,
            raw_size: 0,
            stored_size: kernel.size + initrd.size,
            zero_bytes: 0,
            sha256: digest,
            created_at: now(),
        };
        let installer = InstallerImageRecord {
            image_id: record.id,
            os: os.as_str().into(),
            repo_url: Some(repo_url.clone()),
            kernel_sha256: kernel.sha256.clone(),
            kernel_size: kernel.size,
            initrd_sha256: initrd.sha256.clone(),
            initrd_size: initrd.size,
        };
        let dir = cfg.files_dir.join(record.id.to_string());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| internal("installer files", e))?;
        let placed = kernel
            .file
            .persist(dir.join("vmlinuz"))
            .map_err(|e| internal("installer files", e.error))
            .and_then(|_| {
                initrd
                    .file
                    .persist(dir.join("initrd.img"))
                    .map_err(|e| internal("installer files", e.error))
            });
        if let Err(e) = placed {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        let event = NewEvent {
            time: record.created_at,
            actor: by.actor(),
            machine_id: None,
            kind: "image.import".into(),
            message: format!(
                "installer image {} registered ({})",
                record.name,
                os.as_str()
            ),
            data: json!({
                "image": record.name, "kind": KIND, "os": os.as_str(), "repo_url": repo_url,
                "kernel_sha256": kernel.sha256, "initrd_sha256": initrd.sha256,
            }),
        };
        if let Err(e) = self
            .store
            .insert_installer_image(&record, &installer, &event)
            .await
        {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            // The same installer registered concurrently: answer with it.
            if let Some(existing) = self.store.get_image_by_sha256(&record.sha256).await? {
                let users = self.store.image_users(Some(existing.id)).await?;
                return Ok((crate::images::to_api(existing, &users), false));
            }
            return Err(e.into());
        }
        tracing::info!(
            image = record.name,
            os = os.as_str(),
            "installer image registered"
        );
        Ok((crate::images::to_api(record, &[]), true))
    }

    /// Removes an installer image's files (after its row is gone).
    pub(crate) async fn remove_installer_files(&self, image_id: Uuid) {
        if let Ok(cfg) = self.installer_cfg() {
            let dir = cfg.files_dir.join(image_id.to_string());
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove installer files");
            }
        }
    }

    /// `deploy` of an installer image (called by `App::deploy` once the
    /// machine's state and the image are known): no agent, no disk image;
    /// the machine moves to `deploying` with an installer run and its job
    /// boots it from the network.
    pub(crate) async fn deploy_installer(
        &self,
        by: &Principal,
        m: Machine,
        image: ImageRecord,
        req: DeployRequest,
    ) -> Result<Job> {
        let cfg = self.installer_cfg()?.clone();
        let inst = self
            .store
            .installer_image(image.id)
            .await?
            .ok_or_else(|| internal("installer image", "its installer row is missing"))?;
        let os = InstallerOs::parse(&inst.os)
            .ok_or_else(|| internal("installer image", format!("unknown os {:?}", inst.os)))?;
        let dir = cfg.files_dir.join(image.id.to_string());
        for f in ["vmlinuz", "initrd.img"] {
            if !dir.join(f).is_file() {
                return Err(Error::invalid(
                    "image",
                    format!(
                        "the {f} of installer image {:?} is missing from {}",
                        image.name,
                        dir.display()
                    ),
                ));
            }
        }
        if req.user_data.is_some() {
            return Err(Error::invalid(
                "user_data",
                format!(
                    "installer image {:?} takes no user data: its answer file comes from the templates in <data_dir>/ipxe/installer/",
                    image.name
                ),
            ));
        }
        if req.config_drive.is_some() {
            return Err(Error::invalid(
                "config_drive",
                "an installer deploy writes no cloud-init partition",
            ));
        }
        let ssh_keys = validate_keys(&req.ssh_keys)?;
        if ssh_keys.is_empty() {
            return Err(Error::invalid(
                "ssh_keys",
                format!(
                    "give at least one SSH key: the installed system has no password ({} logs in with the keys)",
                    os.login_user()
                ),
            ));
        }
        let facts: Option<anvil_inventory::HardwareFacts> =
            match self.store.hardware_facts(m.id, None).await? {
                Some(rec) => Some(
                    serde_json::from_str(&rec.facts)
                        .map_err(|e| internal("stored hardware facts", e))?,
                ),
                None => None,
            };
        let hint = req.root_disk.clone().unwrap_or_default();
        let root_disk = translate_root_disk(os, &hint, facts.as_ref().map(|f| &f.disks[..]))
            .map_err(|e| Error::invalid("root_disk", e))?;
        let params = InstallerParams {
            image: image.name.clone(),
            image_id: image.id,
            os,
            release: image.release.clone(),
            repo_url: inst.repo_url.clone().unwrap_or_default(),
            ssh_keys,
            root_disk_hint: hint.to_string(),
            root_disk,
        };
        let at = now();
        let job = Job {
            id: Uuid::now_v7(),
            kind: "deploy".into(),
            machine_id: Some(m.id),
            status: JobStatus::Queued,
            actor: by.actor(),
            params: json!({ "image": image.name, "installer": os.as_str() }),
            result: None,
            error: None,
            created_at: at,
            started_at: None,
            finished_at: None,
        };
        let timeout = self.deploy_config().timeout;
        let run = InstallerRunRecord {
            id: Uuid::now_v7(),
            machine_id: m.id,
            image_id: image.id,
            job_id: Some(job.id),
            state: "running".into(),
            params: serde_json::to_string(&params).map_err(|e| internal("run params", e))?,
            failure_reason: None,
            started_at: at,
            deadline: at + time::Duration::try_from(timeout).unwrap_or(time::Duration::MAX),
            finished_at: None,
        };
        let ev = NewEvent {
            time: at,
            actor: by.actor(),
            machine_id: Some(m.id),
            kind: "deploy.start".into(),
            message: format!(
                "{} → deploying with installer image {} ({}){}",
                m.state,
                image.name,
                os.as_str(),
                if m.state == MachineState::Ready {
                    " (allocated)"
                } else {
                    ""
                }
            ),
            data: json!({
                "from": m.state, "image": image.name, "installer": os.as_str(),
                "root_disk_hint": params.root_disk_hint, "root_disk": params.root_disk.name,
                "ssh_keys": params.ssh_keys.len(), "job": job.id, "installer_run": run.id,
            }),
        };
        self.store.insert_job(&job).await?;
        if let Err(e) = self.store.start_installer_run(&run, m.state, &ev).await {
            let msg = match &e {
                StoreError::Concurrent => {
                    "the machine's state changed while the deployment was starting".to_string()
                }
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
        let run_id = run.id;
        tokio::spawn(async move { app.run_installer_job(job.id, m, run_id, actor).await });
        Ok(job)
    }

    /// The installer deployment's job: boots the machine from the network
    /// (or asks the operator to), then follows the run until the installer
    /// calls back, the machine leaves `deploying`, or the deploy timeout
    /// fails it.
    pub(crate) async fn run_installer_job(
        &self,
        job_id: Uuid,
        m: Machine,
        run_id: Uuid,
        actor: String,
    ) {
        let _ = self.store.start_job(job_id, now()).await;
        if m.bmc.is_some() && self.power.is_some() {
            if let Err(e) = self
                .power_for_commission(&m, crate::power::MachineAction::PxeBoot)
                .await
            {
                let reason = format!("cannot boot the machine from the network: {e}");
                self.fail_installer_run(run_id, &m, &reason, &actor).await;
            }
        } else {
            let _ = self
                .store
                .append_event(&NewEvent {
                    time: now(),
                    actor: actor.clone(),
                    machine_id: Some(m.id),
                    kind: "deploy.manual-power".into(),
                    message: "no power control: power it on with network boot; the installer deployment waits for its completion call".into(),
                    data: json!({ "job": job_id, "installer_run": run_id }),
                })
                .await;
        }
        self.follow_installer_run(job_id, m, run_id).await;
    }

    /// The rest of an installer deployment's job, once the machine is
    /// booting: follow the run to its end and record the job's outcome.
    /// Also where an instance taking over another's job starts.
    pub(crate) async fn follow_installer_run(&self, job_id: Uuid, m: Machine, run_id: Uuid) {
        let outcome = loop {
            let ended = INSTALLER_RUN_ENDED.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let run = match self.store.installer_run(run_id).await {
                Ok(Some(r)) => r,
                Ok(None) => break Err("the machine was deleted".to_string()),
                Err(e) => {
                    tracing::warn!(run = %run_id, error = %e, "cannot read an installer run");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            };
            if run.state != "running" {
                break if run.state == "succeeded" {
                    Ok(json!({ "state": "deployed", "installer_run": run_id }))
                } else {
                    Err(run
                        .failure_reason
                        .unwrap_or_else(|| format!("installer run {}", run.state)))
                };
            }
            let state = self
                .store
                .get_machine(m.id)
                .await
                .ok()
                .flatten()
                .map(|x| x.state);
            if state != Some(MachineState::Deploying) {
                let reason = "the machine left deploying before the installer called back";
                let ev = NewEvent {
                    time: now(),
                    actor: "system".into(),
                    machine_id: Some(m.id),
                    kind: "deploy.aborted".into(),
                    message: reason.into(),
                    data: json!({ "installer_run": run_id }),
                };
                let _ = self
                    .store
                    .end_installer_run(run_id, "aborted", Some(reason), None, now(), &ev)
                    .await;
                continue;
            }
            if now() >= run.deadline {
                self.fail_installer_run(run_id, &m, &self.timeout_reason(), "system")
                    .await;
                continue;
            }
            tokio::select! {
                _ = ended => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        };
        let stored = match &outcome {
            Ok(v) => self.store.finish_job(job_id, Ok(v), now()).await,
            Err(e) => self.store.finish_job(job_id, Err(e), now()).await,
        };
        if let Err(e) = stored {
            tracing::warn!(job = %job_id, error = %e, "cannot record a job's outcome");
        }
    }

    /// Starts the watcher that fails installer runs past their deadline and
    /// aborts those whose machine left `deploying`: the job that follows a
    /// run does the same, but a server restart ends jobs, not runs.
    pub fn start_installer_watcher(&self) {
        let app = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(app.commissioning_config().watch_interval).await;
                if let Err(e) = app.check_installer_runs().await {
                    tracing::warn!(error = %e, "installer watcher");
                }
            }
        });
    }

    /// One pass of the installer watcher.
    pub async fn check_installer_runs(&self) -> Result<()> {
        let at = now();
        for run in self.store.running_installer_runs().await? {
            let Some(m) = self.store.get_machine(run.machine_id).await? else {
                continue;
            };
            if m.state != MachineState::Deploying {
                let reason = "the machine left deploying before the installer called back";
                let ev = NewEvent {
                    time: at,
                    actor: "system".into(),
                    machine_id: Some(m.id),
                    kind: "deploy.aborted".into(),
                    message: reason.into(),
                    data: json!({ "installer_run": run.id }),
                };
                match self
                    .store
                    .end_installer_run(run.id, "aborted", Some(reason), None, at, &ev)
                    .await
                {
                    Ok(()) | Err(StoreError::Concurrent) => {}
                    Err(e) => return Err(e.into()),
                }
                INSTALLER_RUN_ENDED.notify_waiters();
            } else if run.deadline <= at {
                self.fail_installer_run(run.id, &m, &self.timeout_reason(), "system")
                    .await;
            }
        }
        Ok(())
    }

    fn timeout_reason(&self) -> String {
        format!(
            "the installer did not call back within {} minutes (deploy timeout)",
            self.deploy_config().timeout.as_secs().div_ceil(60)
        )
    }

    async fn fail_installer_run(&self, run_id: Uuid, m: &Machine, reason: &str, actor: &str) {
        let ev = NewEvent {
            time: now(),
            actor: actor.into(),
            machine_id: Some(m.id),
            kind: "deploy.failed".into(),
            message: format!("deploying → failed: {reason}"),
            data: json!({ "installer_run": run_id, "reason": reason }),
        };
        match self
            .store
            .end_installer_run(
                run_id,
                "failed",
                Some(reason),
                Some((m.id, MachineState::Deploying, MachineState::Failed)),
                now(),
                &ev,
            )
            .await
        {
            Ok(()) => {
                self.boot.mark_dirty();
                INSTALLER_RUN_ENDED.notify_waiters();
            }
            Err(StoreError::Concurrent) => {}
            Err(e) => tracing::warn!(run = %run_id, error = %e, "cannot fail an installer run"),
        }
    }

    /// The SSH keys of the machine's latest installer deployment when it is
    /// more recent than its latest agent deployment (so rescue takes the
    /// keys of the system on the disk, and the cloud-init view shows no
    /// stale partition); `None` otherwise.
    pub(crate) async fn newer_installer_keys(
        &self,
        machine_id: Uuid,
    ) -> Result<Option<Vec<String>>> {
        let Some(run) = self.store.latest_installer_run(machine_id).await? else {
            return Ok(None);
        };
        let agent = self
            .store
            .latest_run_of(
                machine_id,
                anvil_api_types::agent::AgentPurpose::Deployment.as_str(),
            )
            .await?;
        if agent.is_some_and(|a| a.started_at > run.started_at) {
            return Ok(None);
        }
        let params: InstallerParams =
            serde_json::from_str(&run.params).map_err(|e| internal("installer run params", e))?;
        Ok(Some(params.ssh_keys))
    }

    /// The running installer run of a machine in `deploying`, if its
    /// deployment is an installer one.
    async fn running_installer_run(
        &self,
        machine_id: Uuid,
    ) -> Result<Option<(InstallerRunRecord, InstallerParams)>> {
        let Some(run) = self.store.latest_installer_run(machine_id).await? else {
            return Ok(None);
        };
        if run.state != "running" {
            return Ok(None);
        }
        let params: InstallerParams =
            serde_json::from_str(&run.params).map_err(|e| internal("installer run params", e))?;
        Ok(Some((run, params)))
    }

    /// Reads an installer template: the operator's override in
    /// `<data_dir>/ipxe/<rel>` if there is one, else the built-in one.
    async fn installer_template(&self, rel: &str) -> Result<(String, String)> {
        let cfg = self.installer_cfg()?;
        let path = cfg.overrides_dir.join(rel);
        match tokio::fs::read_to_string(&path).await {
            Ok(t) => Ok((t, path.display().to_string())),
            Err(_) => builtin_template(rel)
                .map(|t| (t.to_string(), "built-in".to_string()))
                .ok_or_else(|| internal("installer template", format!("no template {rel}"))),
        }
    }

    /// The iPXE script of a machine in `deploying` whose deployment is an
    /// installer one, with a token minted for this boot; `None` when the
    /// machine's deployment is not an installer deployment (the agent's
    /// script applies). A broken override is an error naming the file.
    pub async fn installer_boot_script(
        &self,
        machine_id: Uuid,
        hostname: &str,
        mac: MacAddr,
        server_url: &str,
    ) -> Result<Option<String>> {
        if self.installer.is_none() {
            return Ok(None);
        }
        let Some((run, params)) = self.running_installer_run(machine_id).await? else {
            return Ok(None);
        };
        if self.store.count_installer_tokens(run.id).await? >= MAX_TOKENS_PER_RUN {
            return Err(Error::Forbidden(
                "too many network boots in one installer deployment: deploy again",
            ));
        }
        let token = crate::crypto::random_token(TOKEN_BYTES);
        self.store
            .insert_installer_token(&crate::crypto::sha256_hex(&token), run.id, now())
            .await?;
        let rel = params.os.script_template();
        let (template, origin) = self.installer_template(rel).await?;
        let ctx = RenderContext {
            server_url,
            mac,
            hostname,
            run_id: run.id,
            token: &token,
        };
        render(rel, &origin, &template, &params, &ctx)
            .map(Some)
            .map_err(|e| Error::invalid("template", e.to_string()))
    }

    /// The run a token speaks for; 401 for a token never minted.
    async fn installer_session(&self, token: &str) -> Result<(InstallerRunRecord, Machine)> {
        let token = token.trim();
        if token.is_empty() || token.len() > 256 {
            return Err(Error::AgentUnauthenticated);
        }
        let run_id = self
            .store
            .installer_token_run(&crate::crypto::sha256_hex(token))
            .await?
            .ok_or(Error::AgentUnauthenticated)?;
        let run = self
            .store
            .installer_run(run_id)
            .await?
            .ok_or(Error::AgentUnauthenticated)?;
        let m = self
            .store
            .get_machine(run.machine_id)
            .await?
            .ok_or(Error::AgentUnauthenticated)?;
        if run.state != "running" {
            return Err(Error::Agent {
                problem: AgentProblem::RunEnded,
                detail: format!(
                    "the installer deployment of {} has ended ({}){}",
                    m.hostname,
                    run.state,
                    if run.state == "succeeded" {
                        ": its completion was already received"
                    } else {
                        ""
                    }
                ),
            });
        }
        Ok((run, m))
    }

    /// An answer file of the token's installer run (`preseed.cfg`,
    /// `user-data`, `meta-data`, `ks.cfg`), rendered with the same token.
    pub async fn installer_answer(
        &self,
        token: &str,
        file: &str,
        server_url: &str,
    ) -> Result<String> {
        let (run, m) = self.installer_session(token).await?;
        let params: InstallerParams =
            serde_json::from_str(&run.params).map_err(|e| internal("installer run params", e))?;
        let Some((_, rel)) = params
            .os
            .answer_files()
            .iter()
            .find(|(name, _)| *name == file)
        else {
            return Err(Error::NotFound {
                kind: "answer file",
                id: format!(
                    "{file} (the {} installer reads {})",
                    params.os.as_str(),
                    params
                        .os
                        .answer_files()
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        let mac = m
            .interfaces
            .iter()
            .find(|i| i.pxe)
            .or(m.interfaces.first())
            .map(|i| i.mac)
            .ok_or_else(|| internal("installer answer", "the machine has no interface"))?;
        let (template, origin) = self.installer_template(rel).await?;
        let ctx = RenderContext {
            server_url,
            mac,
            hostname: &m.hostname,
            run_id: run.id,
            token,
        };
        render(rel, &origin, &template, &params, &ctx)
            .map_err(|e| Error::invalid("template", e.to_string()))
    }

    /// The installer's completion call: ends the run and moves the machine
    /// `deploying` → `deployed` in one transaction. Only the first call
    /// counts; later ones are 409 (`run-ended`).
    pub async fn installer_done(&self, token: &str) -> Result<()> {
        let (run, m) = self.installer_session(token).await?;
        let params: InstallerParams =
            serde_json::from_str(&run.params).map_err(|e| internal("installer run params", e))?;
        let ev = NewEvent {
            time: now(),
            actor: "installer".into(),
            machine_id: Some(m.id),
            kind: "deploy.succeeded".into(),
            message: format!(
                "deploying → deployed: the {} installer finished ({})",
                params.os.as_str(),
                params.image
            ),
            data: json!({ "installer_run": run.id, "image": params.image }),
        };
        match self
            .store
            .end_installer_run(
                run.id,
                "succeeded",
                None,
                Some((m.id, MachineState::Deploying, MachineState::Deployed)),
                now(),
                &ev,
            )
            .await
        {
            Ok(()) => {}
            Err(StoreError::Concurrent) => {
                return Err(Error::Agent {
                    problem: AgentProblem::RunEnded,
                    detail: format!(
                        "the installer deployment of {} has already ended, or the machine left deploying",
                        m.hostname
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
        self.boot.mark_dirty();
        INSTALLER_RUN_ENDED.notify_waiters();
        tracing::info!(machine = %m.hostname, image = params.image, "installer deployment done");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR o'brien@example";
    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]);

    fn params(os: InstallerOs, repo: &str) -> InstallerParams {
        InstallerParams {
            image: "inst".into(),
            image_id: Uuid::nil(),
            os,
            release: Some("12".into()),
            repo_url: repo.into(),
            ssh_keys: vec![KEY.into()],
            root_disk_hint: "name=sdb".into(),
            root_disk: translate_root_disk(os, &RootDiskHint::Name("sdb".into()), None).unwrap(),
        }
    }

    fn ctx() -> RenderContext<'static> {
        RenderContext {
            server_url: "http://10.0.0.1:8080/",
            mac: MAC,
            hostname: "web-1.lab.example",
            run_id: Uuid::nil(),
            token: "TOK-_1",
        }
    }

    fn builtin(os: InstallerOs, file: &str) -> String {
        let p = params(os, "http://mirror.example/repo/os/");
        let rel = if file == "script" {
            os.script_template()
        } else {
            os.answer_files()
                .iter()
                .find(|(n, _)| *n == file)
                .unwrap()
                .1
        };
        render(rel, "built-in", builtin_template(rel).unwrap(), &p, &ctx()).unwrap()
    }

    fn kernel_line(script: &str) -> &str {
        script.lines().find(|l| l.starts_with("kernel ")).unwrap()
    }

    const DONE: &str = "http://10.0.0.1:8080/api/v1/installer/TOK-_1/done";
    const FILES: &str =
        "http://10.0.0.1:8080/boot/files/installer/00000000-0000-0000-0000-000000000000";

    #[test]
    fn debian_boots_the_installer_with_its_preseed() {
        let s = builtin(InstallerOs::Debian, "script");
        assert!(s.starts_with("#!ipxe\n"), "{s}");
        let k = kernel_line(&s);
        assert!(
            k.starts_with(&format!("kernel {FILES}/vmlinuz?mac=52:54:00:aa:bb:cc ")),
            "{k}"
        );
        for arg in [
            "auto=true",
            "priority=critical",
            "url=http://10.0.0.1:8080/api/v1/installer/TOK-_1/preseed.cfg",
            "hostname=web-1",
            "domain=lab.example",
            "BOOTIF=01-52-54-00-aa-bb-cc",
        ] {
            assert!(k.split_whitespace().any(|w| w == arg), "{arg}: {k}");
        }
        assert!(
            s.contains(&format!("initrd --name initrd.gz {FILES}/initrd.img?mac=")),
            "{s}"
        );
        let p = builtin(InstallerOs::Debian, "preseed.cfg");
        assert!(p.contains("d-i netcfg/get_hostname string web-1\n"), "{p}");
        assert!(
            p.contains("d-i mirror/http/hostname string mirror.example\n"),
            "{p}"
        );
        assert!(
            p.contains("d-i mirror/http/directory string /repo/os\n"),
            "{p}"
        );
        assert!(p.contains("d-i partman-auto/disk string /dev/sdb\n"), "{p}");
        assert!(
            p.contains("d-i grub-installer/bootdev string /dev/sdb\n"),
            "{p}"
        );
        let late = p
            .lines()
            .find(|l| l.starts_with("d-i preseed/late_command string "))
            .unwrap();
        // The key's quote is escaped for the shell, and the call comes last.
        assert!(late.contains(r"'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR o'\''brien@example'"), "{late}");
        assert!(
            late.ends_with(&format!("in-target curl -fsS -X POST '{DONE}'")),
            "{late}"
        );
    }

    #[test]
    fn ubuntu_boots_autoinstall_with_nocloud_data() {
        let s = builtin(InstallerOs::Ubuntu, "script");
        let k = kernel_line(&s);
        for arg in [
            "autoinstall",
            "ip=dhcp",
            "url=http://mirror.example/repo/os/",
            "ds=nocloud-net;s=http://10.0.0.1:8080/api/v1/installer/TOK-_1/",
        ] {
            assert!(k.split_whitespace().any(|w| w == arg), "{arg}: {k}");
        }
        let ud = builtin(InstallerOs::Ubuntu, "user-data");
        assert!(ud.starts_with("#cloud-config\n"), "{ud}");
        assert!(ud.contains("hostname: \"web-1\"\n"), "{ud}");
        assert!(
            ud.contains(&format!(
                "          - {}\n",
                serde_json::to_string(KEY).unwrap()
            )),
            "{ud}"
        );
        assert!(
            ud.contains("      match: {\"path\":\"/dev/sdb\"}\n"),
            "{ud}"
        );
        assert!(
            ud.contains(&format!("    - \"curl -fsS -X POST '{DONE}'\"\n")),
            "{ud}"
        );
        let md = builtin(InstallerOs::Ubuntu, "meta-data");
        assert!(md.contains("local-hostname: web-1\n"), "{md}");
        assert!(
            md.contains("instance-id: 00000000-0000-0000-0000-000000000000\n"),
            "{md}"
        );
    }

    #[test]
    fn rocky_and_alma_boot_anaconda_with_a_kickstart() {
        for os in [InstallerOs::Rocky, InstallerOs::Alma] {
            let s = builtin(os, "script");
            let k = kernel_line(&s);
            for arg in [
                "inst.repo=http://mirror.example/repo/os/",
                "inst.ks=http://10.0.0.1:8080/api/v1/installer/TOK-_1/ks.cfg",
            ] {
                assert!(k.split_whitespace().any(|w| w == arg), "{os:?} {arg}: {k}");
            }
            let ks = builtin(os, "ks.cfg");
            assert!(
                ks.contains("network --bootproto=dhcp --hostname=web-1.lab.example --activate\n"),
                "{ks}"
            );
            assert!(ks.contains("sshkey --username=root 'ssh-ed25519 "), "{ks}");
            assert!(ks.contains("ignoredisk --only-use=sdb\n"), "{ks}");
            assert!(
                ks.contains("clearpart --all --initlabel --drives=sdb\n"),
                "{ks}"
            );
            assert!(
                ks.contains(&format!(
                    "%post --nochroot\ncurl -fsS -X POST '{DONE}'\n%end"
                )),
                "{ks}"
            );
        }
    }

    #[test]
    fn an_override_is_rendered_and_a_bad_one_named() {
        let p = params(InstallerOs::Debian, DEBIAN_MIRROR);
        let s = render(
            "installer/debian.ipxe",
            "/data/ipxe/installer/debian.ipxe",
            "#!ipxe\necho {{ hostname }} {{ done_url }}\n",
            &p,
            &ctx(),
        )
        .unwrap();
        assert_eq!(s, format!("#!ipxe\necho web-1.lab.example {DONE}\n"));
        for bad in ["#!ipxe\n{{ nosuchvar }}\n", "#!ipxe\n{% if %}\n"] {
            let e = render(
                "installer/debian.ipxe",
                "/data/ipxe/installer/debian.ipxe",
                bad,
                &p,
                &ctx(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("the installer template installer/debian.ipxe (/data/ipxe/installer/debian.ipxe) is not valid: "),
                "{e}"
            );
        }
    }

    #[test]
    fn root_disk_hints_are_translated_where_the_installer_can_follow() {
        use anvil_inventory::Disk;
        let disks = vec![
            Disk {
                name: "sda".into(),
                size_bytes: 480 << 30,
                serial: Some("S1".into()),
                ..Default::default()
            },
            Disk {
                name: "nvme0n1".into(),
                size_bytes: 960 << 30,
                ..Default::default()
            },
        ];
        let t =
            translate_root_disk(InstallerOs::Debian, &RootDiskHint::Largest, Some(&disks)).unwrap();
        assert_eq!(t.name.as_deref(), Some("nvme0n1"));
        assert_eq!(t.ubuntu_match, json!({"path": "/dev/nvme0n1"}));
        let t = translate_root_disk(InstallerOs::Ubuntu, &RootDiskHint::Smallest, Some(&disks))
            .unwrap();
        assert_eq!(t.ubuntu_match, json!({"serial": "S1"}));
        // Without facts: subiquity matches by itself, the others need a name.
        let t = translate_root_disk(InstallerOs::Ubuntu, &RootDiskHint::Largest, None).unwrap();
        assert_eq!((t.name, t.ubuntu_match), (None, json!({"size": "largest"})));
        let e = translate_root_disk(InstallerOs::Rocky, &RootDiskHint::Serial("S1".into()), None)
            .unwrap_err();
        assert!(e.contains("commission it first, or give name=DISK"), "{e}");
        let e = translate_root_disk(
            InstallerOs::Debian,
            &RootDiskHint::Name("sdz".into()),
            Some(&disks),
        )
        .unwrap_err();
        assert!(e.contains("matches no writable disk"), "{e}");
    }

    #[test]
    fn the_digest_depends_on_files_os_and_source() {
        let a = installer_digest(InstallerOs::Rocky, "http://a/", "k", "i");
        assert_eq!(
            a,
            installer_digest(InstallerOs::Rocky, "http://a/", "k", "i")
        );
        assert_ne!(
            a,
            installer_digest(InstallerOs::Alma, "http://a/", "k", "i")
        );
        assert_ne!(
            a,
            installer_digest(InstallerOs::Rocky, "http://b/", "k", "i")
        );
        assert_ne!(
            a,
            installer_digest(InstallerOs::Rocky, "http://a/", "i", "k")
        );
        assert_eq!(a.len(), 64);
    }
}
