//! Installer images: a distribution's network installer (kernel + initrd,
//! and the mirror, ISO or repository it installs from) that Anvil boots
//! with a rendered answer file (Debian preseed, Ubuntu autoinstall,
//! Rocky/Alma kickstart) instead of writing a disk image.

use crate::images::ImportImage;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/images` with `"kind": "installer"`: registers an installer
/// image. The kernel and initrd are downloaded (`*_url`, http or https) or
/// copied from files on the server (`*_path`, administrators only) into
/// `<data_dir>/boot/installer/<image id>/` and served from there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallerImageImport {
    /// Always `installer`.
    pub kind: String,
    pub name: String,
    /// `debian`, `ubuntu`, `rocky` or `alma`: picks the iPXE template and
    /// the answer file.
    pub os: String,
    #[serde(default)]
    pub release: Option<String>,
    /// `x86_64` (default) or `aarch64`.
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub kernel_url: Option<String>,
    #[serde(default)]
    pub kernel_path: Option<String>,
    #[serde(default)]
    pub initrd_url: Option<String>,
    #[serde(default)]
    pub initrd_path: Option<String>,
    /// Debian: the mirror (default `http://deb.debian.org/debian`); Ubuntu:
    /// the live-server ISO (required); Rocky/Alma: the BaseOS repository
    /// (required).
    #[serde(default)]
    pub repo_url: Option<String>,
}

/// The JSON body of `POST /api/v1/images`: an import (`kind` absent or
/// `disk`) or an installer registration (`kind: installer`).
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRequest {
    Import(ImportImage),
    Installer(InstallerImageImport),
}

impl<'de> Deserialize<'de> for ImageRequest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut v = serde_json::Value::deserialize(d)?;
        let kind = v.get("kind").cloned();
        match kind.as_ref().map(|k| k.as_str()) {
            None => serde_json::from_value(v)
                .map(ImageRequest::Import)
                .map_err(D::Error::custom),
            Some(Some("disk")) => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("kind");
                }
                serde_json::from_value(v)
                    .map(ImageRequest::Import)
                    .map_err(D::Error::custom)
            }
            Some(Some("installer")) => serde_json::from_value(v)
                .map(ImageRequest::Installer)
                .map_err(D::Error::custom),
            _ => Err(D::Error::custom(
                "kind: expected \"disk\" (an image to import) or \"installer\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_picks_the_request() {
        let r: ImageRequest = serde_json::from_str(r#"{"url":"http://a/x.img"}"#).unwrap();
        assert!(matches!(r, ImageRequest::Import(i) if i.url.as_deref() == Some("http://a/x.img")));
        let r: ImageRequest =
            serde_json::from_str(r#"{"kind":"disk","path":"/srv/x.raw"}"#).unwrap();
        assert!(matches!(r, ImageRequest::Import(i) if i.path.as_deref() == Some("/srv/x.raw")));
        let r: ImageRequest = serde_json::from_str(
            r#"{"kind":"installer","name":"deb","os":"debian","kernel_url":"http://a/k","initrd_url":"http://a/i"}"#,
        )
        .unwrap();
        assert!(matches!(r, ImageRequest::Installer(i) if i.os == "debian"));
        let e = serde_json::from_str::<ImageRequest>(r#"{"kind":"iso"}"#).unwrap_err();
        assert!(e.to_string().contains("expected \"disk\""), "{e}");
        let e = serde_json::from_str::<ImageRequest>(
            r#"{"kind":"installer","name":"x","os":"debian","kernel":"k"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `kernel`"), "{e}");
    }
}
