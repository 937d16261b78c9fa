//! OS images: import (raw or qcow2, plain or gz/xz/zst) into a
//! content-addressed library of zstd-compressed raw disks with zero maps,
//! and reading them back for deployment. Blocking I/O throughout: callers in
//! async code run it on a blocking thread.

pub mod detect;
mod error;
pub mod library;
pub mod partition;
pub mod qcow2;
pub mod source;
pub mod zeromap;

pub use detect::{Compression, DiskFormat, SourceFormat};
pub use error::{Error, Result};
pub use library::{ImageLibrary, ImportReport, StoredImage};
pub use partition::BootModes;
