//! `GET /images`: the image library, with the machines using each image.
//! Read-only; `anvil image import` and the API add and delete images.

use super::{Layout, fmt_time};
use crate::auth::Session;
use crate::error::PageError;
use anvil_core::{App, Principal};
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;

pub(crate) struct ImageRow {
    pub(crate) name: String,
    pub(crate) os: String,
    pub(crate) arch: String,
    pub(crate) firmware: String,
    pub(crate) source: String,
    pub(crate) raw: String,
    pub(crate) stored: String,
    pub(crate) sha_short: String,
    pub(crate) sha256: String,
    pub(crate) created: String,
    pub(crate) used_by: Vec<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "pages/images.html")]
pub(crate) struct ImagesPage {
    layout: Layout,
    images: Vec<ImageRow>,
}

/// Bytes as KiB/MiB/GiB with one decimal.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub(crate) async fn page(
    session: Session,
    State(app): State<App>,
) -> Result<ImagesPage, PageError> {
    let by = Principal::User(session.user.clone());
    let images = app
        .list_images(&by)
        .await?
        .into_iter()
        .map(|i| ImageRow {
            os: match (&i.os, &i.release) {
                (Some(os), Some(r)) => format!("{os} {r}"),
                (Some(os), None) => os.clone(),
                _ => "-".into(),
            },
            arch: i.arch.clone().unwrap_or_else(|| "-".into()),
            firmware: i.firmware.clone().unwrap_or_else(|| "-".into()),
            source: format!("{} ({})", i.source_format, human_size(i.source_size)),
            raw: human_size(i.raw_size),
            stored: human_size(i.stored_size),
            sha_short: i.sha256.chars().take(12).collect(),
            created: fmt_time(i.created_at),
            name: i.name,
            sha256: i.sha256,
            used_by: i.used_by,
        })
        .collect();
    Ok(ImagesPage {
        layout: Layout::for_session(&session),
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes() {
        assert_eq!(human_size(100), "100 B");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }
}
