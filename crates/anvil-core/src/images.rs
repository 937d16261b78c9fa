//! The image library: import (an upload streamed to disk, a URL the server
//! fetches, or a file on the server), list, get, delete. The conversion
//! itself is `anvil-image`; here are naming, metadata, deduplication and the
//! rule that an image in use cannot be deleted.
//!
//! Re-importing content that is already in the library (same sha256 of the
//! raw disk) creates nothing and answers with the existing image, whatever
//! name was asked for: imports are idempotent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anvil_api_types::images::{Image, ImageMeta, ImportImage};
use anvil_image::{ImageLibrary, ImportReport};
use anvil_store::{ImageDelete, ImageRecord, ImageUser, NewEvent};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::{App, Error, Principal, Result, limits, now};

/// Where images live and how large a source may be.
#[derive(Clone, Debug)]
pub struct ImageLibraryConfig {
    /// Normally `<data_dir>/images`.
    pub dir: PathBuf,
    /// Largest upload or download accepted, in bytes.
    pub max_source_bytes: u64,
}

impl ImageLibraryConfig {
    pub const DEFAULT_MAX_SOURCE_BYTES: u64 = 64 << 30;

    pub fn in_data_dir(data_dir: &Path) -> Self {
        ImageLibraryConfig {
            dir: data_dir.join("images"),
            max_source_bytes: Self::DEFAULT_MAX_SOURCE_BYTES,
        }
    }
}

pub struct ImageCtl {
    library: ImageLibrary,
    max_source_bytes: u64,
    http: reqwest::Client,
}

const FIRMWARES: &[&str] = &["bios", "uefi", "bios+uefi"];
const ARCHES: &[&str] = &["x86_64", "aarch64"];

fn image_err(e: anvil_image::Error) -> Error {
    use anvil_image::Error as E;
    match e {
        E::Io { .. } | E::DigestMismatch { .. } | E::BadZeroMap { .. } => Error::Internal {
            context: "image library",
            source: Box::new(e),
        },
        other => Error::invalid("image", crate::error_chain(&other)),
    }
}

fn internal(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Internal {
        context,
        source: Box::new(e),
    }
}

/// A name as the library accepts it: 1–64 of `A-Za-z0-9._-`, starting with
/// a letter or digit.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "name",
            format!(
                "{name:?}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ))
    }
}

pub(crate) fn check_text(field: &str, value: &Option<String>) -> Result<()> {
    if let Some(v) = value
        && (v.is_empty() || v.len() > limits::MAX_TEXT || v.chars().any(char::is_control))
    {
        return Err(Error::invalid(field, "must be 1-255 printable characters"));
    }
    Ok(())
}

/// The last path segment of a file name or URL without compression and
/// image extensions: `debian-12-genericcloud-amd64.qcow2.xz` → `debian-12-genericcloud-amd64`.
pub fn name_from_source(source: &str) -> Option<String> {
    let last = source
        .split(['?', '#'])
        .next()?
        .trim_end_matches('/')
        .rsplit(['/', '\\'])
        .next()?;
    let mut stem = last;
    for ext in [".gz", ".xz", ".zst", ".qcow2", ".img", ".raw", ".qcow"] {
        if stem.len() > ext.len() && stem.to_ascii_lowercase().ends_with(ext) {
            stem = &stem[..stem.len() - ext.len()];
        }
    }
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(64)
        .collect();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// What a published cloud image's file name says: OS, release, arch, and
/// the distribution's default user.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Guess {
    pub os: Option<&'static str>,
    pub release: Option<String>,
    pub arch: Option<&'static str>,
    pub login_user: Option<&'static str>,
}

/// The user a distribution's cloud images create.
pub fn default_login_user(os: &str) -> Option<&'static str> {
    Some(match os.to_ascii_lowercase().as_str() {
        "debian" => "debian",
        "ubuntu" => "ubuntu",
        "rocky" | "rockylinux" => "rocky",
        "almalinux" | "alma" => "almalinux",
        "centos" | "rhel" => "cloud-user",
        "fedora" => "fedora",
        _ => return None,
    })
}

pub fn guess_from_name(name: &str) -> Guess {
    let lower = name.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(['-', '_', '.'])
        .filter(|w| !w.is_empty())
        .collect();
    let has = |w: &str| words.contains(&w);
    let mut g = Guess::default();
    let os = [
        ("debian", "debian", "debian"),
        ("ubuntu", "ubuntu", "ubuntu"),
        ("rocky", "rocky", "rocky"),
        ("almalinux", "almalinux", "almalinux"),
        ("centos", "centos", "cloud-user"),
        ("fedora", "fedora", "fedora"),
    ]
    .into_iter()
    .find(|(word, _, _)| has(word));
    // Ubuntu publishes by code name (noble-server-cloudimg-amd64.img).
    let ubuntu_codenames = [
        ("focal", "20.04"),
        ("jammy", "22.04"),
        ("noble", "24.04"),
        ("plucky", "25.04"),
        ("questing", "25.10"),
    ];
    let codename = ubuntu_codenames.iter().find(|(c, _)| has(c));
    if let Some((_, os, user)) = os {
        g.os = Some(os);
        g.login_user = Some(user);
    } else if codename.is_some() {
        g.os = Some("ubuntu");
        g.login_user = Some("ubuntu");
    }
    if g.os.is_some() {
        g.release = match codename {
            Some((_, version)) if g.os == Some("ubuntu") => Some((*version).to_string()),
            _ => {
                // The first numeric word after the OS name: debian-12-…, Rocky-9-…, ubuntu-24.04-….
                let numeric = |w: &str| w.chars().all(|c| c.is_ascii_digit());
                let start = words
                    .iter()
                    .position(|w| Some(*w) == os.map(|o| o.0))
                    .map_or(0, |i| i + 1);
                (start..words.len()).find(|&i| numeric(words[i])).map(|i| {
                    // ubuntu-24.04 splits into "24" and "04".
                    match words.get(i + 1) {
                        Some(minor)
                            if g.os == Some("ubuntu") && minor.len() == 2 && numeric(minor) =>
                        {
                            format!("{}.{minor}", words[i])
                        }
                        _ => words[i].to_string(),
                    }
                })
            }
        };
    }
    g.arch = if has("amd64") || has("x86") && has("64") || lower.contains("x86_64") {
        Some("x86_64")
    } else if has("arm64") || has("aarch64") {
        Some("aarch64")
    } else {
        None
    };
    g
}

pub(crate) fn to_api(r: ImageRecord, users: &[ImageUser]) -> Image {
    Image {
        used_by: users
            .iter()
            .filter(|u| u.image_id == r.id)
            .map(|u| u.hostname.clone())
            .collect(),
        id: r.id,
        name: r.name,
        kind: r.kind,
        os: r.os,
        release: r.release,
        arch: r.arch,
        firmware: r.firmware,
        login_user: r.login_user,
        source_format: r.source_format,
        source_size: r.source_size,
        raw_size: r.raw_size,
        stored_size: r.stored_size,
        zero_bytes: r.zero_bytes,
        sha256: r.sha256,
        created_at: r.created_at,
    }
}

impl App {
    /// Opens the image library (creating its directory).
    pub fn with_images(mut self, cfg: ImageLibraryConfig) -> Result<Self> {
        let library = ImageLibrary::open(&cfg.dir).map_err(image_err)?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Internal {
                context: "image download client",
                source: Box::new(e),
            })?;
        self.images = Some(Arc::new(ImageCtl {
            library,
            max_source_bytes: cfg.max_source_bytes,
            http,
        }));
        Ok(self)
    }

    fn images_ctl(&self) -> Result<&ImageCtl> {
        self.images.as_deref().ok_or_else(|| Error::Internal {
            context: "image library",
            source: "this server was started without an image library".into(),
        })
    }

    /// The library on disk, for deployment (streams raw images to agents).
    pub fn image_library(&self) -> Option<&ImageLibrary> {
        self.images.as_deref().map(|c| &c.library)
    }

    pub async fn list_images(&self, _by: &Principal) -> Result<Vec<Image>> {
        let records = self.store.list_images().await?;
        let users = self.store.image_users(None).await?;
        Ok(records.into_iter().map(|r| to_api(r, &users)).collect())
    }

    pub async fn get_image(&self, _by: &Principal, name: &str) -> Result<Image> {
        let record = self
            .store
            .get_image_by_name(name)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "image",
                id: name.into(),
            })?;
        let users = self.store.image_users(Some(record.id)).await?;
        Ok(to_api(record, &users))
    }

    /// Deletes an image and its files; refused while machines use it.
    pub async fn delete_image(&self, by: &Principal, name: &str) -> Result<()> {
        let ctl = self.images_ctl()?;
        let record = self
            .store
            .get_image_by_name(name)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "image",
                id: name.into(),
            })?;
        let event = NewEvent {
            time: now(),
            actor: by.actor(),
            machine_id: None,
            kind: "image.delete".into(),
            message: format!("image {name} deleted"),
            data: serde_json::json!({ "image": name, "sha256": record.sha256 }),
        };
        match self.store.delete_image(record.id, &event).await? {
            ImageDelete::Deleted => {}
            ImageDelete::NotFound => {
                return Err(Error::NotFound {
                    kind: "image",
                    id: name.into(),
                });
            }
            ImageDelete::InUse(users) => {
                return Err(Error::InUse {
                    kind: "image",
                    name: name.into(),
                    users,
                });
            }
        }
        // The row is gone first: a crash here leaves unreferenced files, never
        // a row without its image.
        if record.kind == crate::installer::KIND {
            self.remove_installer_files(record.id).await;
            tracing::info!(image = name, "installer image deleted");
            return Ok(());
        }
        let library = ctl.library.clone();
        let sha = record.sha256.clone();
        tokio::task::spawn_blocking(move || library.remove(&sha))
            .await
            .map_err(|e| Error::Internal {
                context: "image delete",
                source: Box::new(e),
            })?
            .map_err(image_err)?;
        tracing::info!(image = name, sha256 = record.sha256, "image deleted");
        Ok(())
    }

    /// Imports an image sent as the request body (streamed to disk, never
    /// held in memory). Returns the image and whether it is new.
    pub async fn import_image_upload<S, E>(
        &self,
        by: &Principal,
        meta: ImageMeta,
        body: S,
    ) -> Result<(Image, bool)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        let ctl = self.images_ctl()?;
        self.check_meta(&meta)?;
        let source_name = meta.filename.clone();
        let scratch = self.receive(ctl, body, "upload").await?;
        self.import_file(by, ctl, meta, source_name, scratch.path().to_owned())
            .await
    }

    /// Imports from a URL the server fetches, or a file on the server.
    pub async fn import_image(&self, by: &Principal, req: ImportImage) -> Result<(Image, bool)> {
        let ctl = self.images_ctl()?;
        let meta = req.meta();
        self.check_meta(&meta)?;
        match (&req.url, &req.path) {
            (Some(url), None) => {
                let parsed = url::Url::parse(url)
                    .map_err(|e| Error::invalid("url", format!("{url:?}: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(Error::invalid(
                        "url",
                        "only http and https URLs are fetched",
                    ));
                }
                let response = ctl.http.get(parsed.clone()).send().await.map_err(|e| {
                    Error::invalid(
                        "url",
                        format!("cannot fetch {parsed}: {}", crate::error_chain(&e)),
                    )
                })?;
                if !response.status().is_success() {
                    return Err(Error::invalid(
                        "url",
                        format!("fetching {parsed} answered {}", response.status()),
                    ));
                }
                if let Some(len) = response.content_length()
                    && len > ctl.max_source_bytes
                {
                    return Err(too_large(len, ctl.max_source_bytes));
                }
                let body = Box::pin(futures::stream::unfold(response, |mut r| async move {
                    match r.chunk().await {
                        Ok(Some(chunk)) => Some((Ok(chunk), r)),
                        Ok(None) => None,
                        Err(e) => Some((Err(e), r)),
                    }
                }));
                let scratch = self.receive(ctl, body, "download").await?;
                self.import_file(by, ctl, meta, Some(url.clone()), scratch.path().to_owned())
                    .await
            }
            (None, Some(path)) => {
                if !by.is_admin() {
                    return Err(Error::Forbidden(
                        "importing a file on the server needs an administrator",
                    ));
                }
                let path = PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(Error::invalid(
                        "path",
                        "must be an absolute path on the server",
                    ));
                }
                if !path.is_file() {
                    return Err(Error::invalid(
                        "path",
                        format!("{} is not a readable file on the server", path.display()),
                    ));
                }
                let source = Some(path.display().to_string());
                self.import_file(by, ctl, meta, source, path).await
            }
            _ => Err(Error::invalid(
                "url",
                "give exactly one of url and path (or upload the file as application/octet-stream)",
            )),
        }
    }

    fn check_meta(&self, meta: &ImageMeta) -> Result<()> {
        if let Some(name) = &meta.name {
            check_name(name)?;
        }
        check_text("os", &meta.os)?;
        check_text("release", &meta.release)?;
        check_text("login_user", &meta.login_user)?;
        check_text("filename", &meta.filename)?;
        if let Some(a) = &meta.arch
            && !ARCHES.contains(&a.as_str())
        {
            return Err(Error::invalid(
                "arch",
                format!("{a:?}: expected one of {}", ARCHES.join(", ")),
            ));
        }
        if let Some(f) = &meta.firmware
            && !FIRMWARES.contains(&f.as_str())
        {
            return Err(Error::invalid(
                "firmware",
                format!("{f:?}: expected one of {}", FIRMWARES.join(", ")),
            ));
        }
        Ok(())
    }

    /// Streams `body` into a scratch file of the library, enforcing the size cap.
    async fn receive<S, E>(
        &self,
        ctl: &ImageCtl,
        mut body: S,
        what: &'static str,
    ) -> Result<tempfile::NamedTempFile>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::error::Error + Send + Sync + 'static,
    {
        let scratch = ctl.library.temp_file().map_err(image_err)?;
        let file = scratch.reopen().map_err(internal("image scratch file"))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
        let mut received = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Error::invalid(
                    "image",
                    format!(
                        "the {what} broke off after {received} bytes: {}",
                        crate::error_chain(&e)
                    ),
                )
            })?;
            received += chunk.len() as u64;
            if received > ctl.max_source_bytes {
                return Err(too_large(received, ctl.max_source_bytes));
            }
            out.write_all(&chunk)
                .await
                .map_err(internal("image scratch file"))?;
        }
        out.flush().await.map_err(internal("image scratch file"))?;
        Ok(scratch)
    }

    async fn import_file(
        &self,
        by: &Principal,
        ctl: &ImageCtl,
        meta: ImageMeta,
        source_name: Option<String>,
        path: PathBuf,
    ) -> Result<(Image, bool)> {
        let library = ctl.library.clone();
        let report: ImportReport = tokio::task::spawn_blocking(move || library.import_path(&path))
            .await
            .map_err(|e| Error::Internal {
                context: "image import",
                source: Box::new(e),
            })?
            .map_err(image_err)?;
        if let Some(existing) = self.store.get_image_by_sha256(&report.sha256).await? {
            let users = self.store.image_users(Some(existing.id)).await?;
            return Ok((to_api(existing, &users), false));
        }
        let name = match meta
            .name
            .clone()
            .or_else(|| source_name.as_deref().and_then(name_from_source))
        {
            Some(name) => name,
            None => format!("image-{}", &report.sha256[..12]),
        };
        check_name(&name)?;
        let guess = guess_from_name(&name);
        let os = meta.os.clone().or(guess.os.map(String::from));
        let record = ImageRecord {
            id: uuid::Uuid::now_v7(),
            login_user: meta
                .login_user
                .clone()
                .or_else(|| os.as_deref().and_then(default_login_user).map(String::from)),
            os,
            release: meta.release.clone().or(guess.release),
            arch: meta.arch.clone().or(guess.arch.map(String::from)),
            firmware: meta
                .firmware
                .clone()
                .or(report.boot_modes.firmware().map(String::from)),
            name: name.clone(),
            kind: "disk".into(),
            source_format: report.source_format.to_string(),
            source_size: report.source_size,
            raw_size: report.raw_size,
            stored_size: report.stored_size,
            zero_bytes: report.zero_bytes,
            sha256: report.sha256.clone(),
            created_at: now(),
        };
        let event = NewEvent {
            time: record.created_at,
            actor: by.actor(),
            machine_id: None,
            kind: "image.import".into(),
            message: format!("image {name} imported"),
            data: serde_json::json!({
                "image": name, "sha256": record.sha256, "source_format": record.source_format,
                "raw_size": record.raw_size, "stored_size": record.stored_size,
            }),
        };
        match self.store.insert_image(&record, &event).await {
            Ok(()) => {
                tracing::info!(
                    image = name,
                    sha256 = record.sha256,
                    format = record.source_format,
                    "image imported"
                );
                Ok((to_api(record, &[]), true))
            }
            Err(e) => {
                // A concurrent import of the same content won the race: answer with it.
                if let Some(existing) = self.store.get_image_by_sha256(&report.sha256).await? {
                    let users = self.store.image_users(Some(existing.id)).await?;
                    return Ok((to_api(existing, &users), false));
                }
                // The name is taken by other content: drop the files just stored.
                if !report.already_present {
                    let library = ctl.library.clone();
                    let sha = report.sha256.clone();
                    let _ = tokio::task::spawn_blocking(move || library.remove(&sha)).await;
                }
                Err(e.into())
            }
        }
    }
}

fn too_large(size: u64, max: u64) -> Error {
    Error::TooLarge {
        what: "the image",
        size: usize::try_from(size).unwrap_or(usize::MAX),
        max: usize::try_from(max).unwrap_or(usize::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_file_names_and_urls() {
        assert_eq!(
            name_from_source("debian-12-genericcloud-amd64.qcow2").as_deref(),
            Some("debian-12-genericcloud-amd64")
        );
        assert_eq!(
            name_from_source("https://x.example/images/noble-server-cloudimg-amd64.img?sig=1")
                .as_deref(),
            Some("noble-server-cloudimg-amd64")
        );
        assert_eq!(
            name_from_source("/srv/disk.raw.xz").as_deref(),
            Some("disk")
        );
        assert_eq!(
            name_from_source("Rocky 9 (x86_64).qcow2").as_deref(),
            Some("Rocky-9--x86_64-")
        );
        assert_eq!(name_from_source("/").as_deref(), None);
    }

    #[test]
    fn published_cloud_image_names_are_understood() {
        let g = guess_from_name("debian-12-genericcloud-amd64-20241201-1948");
        assert_eq!(
            (g.os, g.release.as_deref(), g.arch, g.login_user),
            (Some("debian"), Some("12"), Some("x86_64"), Some("debian"))
        );
        let g = guess_from_name("noble-server-cloudimg-arm64");
        assert_eq!(
            (g.os, g.release.as_deref(), g.arch),
            (Some("ubuntu"), Some("24.04"), Some("aarch64"))
        );
        let g = guess_from_name("ubuntu-22.04-server-cloudimg-amd64");
        assert_eq!(
            (g.os, g.release.as_deref()),
            (Some("ubuntu"), Some("22.04"))
        );
        let g = guess_from_name("Rocky-9-GenericCloud-Base-9.5-20241118.0.x86_64");
        assert_eq!(
            (g.os, g.release.as_deref(), g.arch, g.login_user),
            (Some("rocky"), Some("9"), Some("x86_64"), Some("rocky"))
        );
        assert_eq!(guess_from_name("my-disk"), Guess::default());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("debian-12").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
    }
}
