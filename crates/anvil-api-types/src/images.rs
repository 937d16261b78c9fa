//! Bodies of `/api/v1/images`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// An OS image in the library. Its raw disk is stored compressed on the
/// server's filesystem, addressed by `sha256`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: Uuid,
    pub name: String,
    /// `disk`: a raw disk image written to the machine's disk.
    pub kind: String,
    pub os: Option<String>,
    pub release: Option<String>,
    /// `x86_64` or `aarch64`.
    pub arch: Option<String>,
    /// `bios`, `uefi` or `bios+uefi`, from the partition table unless given.
    pub firmware: Option<String>,
    /// The default user of the image's cloud-init.
    pub login_user: Option<String>,
    /// The format it came in: `raw`, `qcow2`, optionally `.gz`, `.xz`, `.zst`.
    pub source_format: String,
    /// Bytes received.
    pub source_size: u64,
    /// Bytes of the raw disk.
    pub raw_size: u64,
    /// Bytes stored (zstd).
    pub stored_size: u64,
    /// Bytes of the raw disk inside zero ranges (skipped when deploying).
    pub zero_bytes: u64,
    /// sha256 of the raw disk, lowercase hex.
    pub sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Hostnames of the machines that use the image; it cannot be deleted
    /// while this is not empty.
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    pub items: Vec<Image>,
}

/// Metadata given with an import; what is left out is guessed from the file
/// name (`debian-12-genericcloud-amd64.qcow2`) and the partition table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImageMeta {
    /// Unique name; default: the file name without extensions.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub release: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub firmware: Option<String>,
    #[serde(default)]
    pub login_user: Option<String>,
    /// The uploaded file's name, to guess the name and OS from
    /// (`application/octet-stream` uploads only).
    #[serde(default)]
    pub filename: Option<String>,
}

/// `POST /api/v1/images` with a JSON body: the server fetches `url`
/// (http or https) or reads `path` (a file on the server, admins only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportImage {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub release: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub firmware: Option<String>,
    #[serde(default)]
    pub login_user: Option<String>,
}

impl ImportImage {
    /// The metadata part of the request.
    pub fn meta(&self) -> ImageMeta {
        ImageMeta {
            name: self.name.clone(),
            os: self.os.clone(),
            release: self.release.clone(),
            arch: self.arch.clone(),
            firmware: self.firmware.clone(),
            login_user: self.login_user.clone(),
            filename: None,
        }
    }
}
