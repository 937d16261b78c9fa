//! `[images]`: limits of the image library (`<data_dir>/images`).

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Largest image an import accepts (upload or download), in GiB.
    pub max_source_gib: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig { max_source_gib: 64 }
    }
}

impl ImagesConfig {
    pub fn library(&self, data_dir: &Path) -> anvil_core::images::ImageLibraryConfig {
        anvil_core::images::ImageLibraryConfig {
            dir: data_dir.join("images"),
            max_source_bytes: self.max_source_gib.saturating_mul(1 << 30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: ImagesConfig = toml::from_str("").unwrap();
        assert_eq!(c.library(Path::new("/d")).max_source_bytes, 64 << 30);
        assert_eq!(c.library(Path::new("/d")).dir, Path::new("/d/images"));
        let c: ImagesConfig = toml::from_str("max_source_gib = 2").unwrap();
        assert_eq!(c.max_source_gib, 2);
        assert!(toml::from_str::<ImagesConfig>("max_size = 2").is_err());
    }
}
