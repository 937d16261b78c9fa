//! Format detection from the first bytes of a file or stream (magic numbers,
//! never file names: a `.img` may be qcow2, a `.qcow2` may be raw).

use std::fmt;

/// How many leading bytes `sniff` wants (the longest magic we check).
pub const SNIFF_LEN: usize = 8;

/// A compression wrapper around an image, as published (`.gz`, `.xz`, `.zst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Xz => "xz",
            Compression::Zstd => "zst",
        }
    }
}

/// The disk image format inside any compression wrapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// The format an image came in: disk format plus optional wrapper, written
/// like a file suffix (`qcow2`, `raw`, `raw.xz`, `qcow2.gz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceFormat {
    pub disk: DiskFormat,
    pub compression: Option<Compression>,
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disk = match self.disk {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        match self.compression {
            Some(c) => write!(f, "{disk}.{}", c.as_str()),
            None => f.write_str(disk),
        }
    }
}

/// What the leading bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Compressed(Compression),
    Qcow2,
    Raw,
    /// A disk format we do not convert; treating it as raw would store garbage.
    Unsupported(&'static str),
}

/// Classifies a stream by its first bytes (pass up to `SNIFF_LEN`; fewer
/// when the stream is that short). Anything unrecognised is a raw image.
pub fn sniff(head: &[u8]) -> Sniffed {
    if head.starts_with(b"QFI\xfb") {
        return Sniffed::Qcow2;
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Sniffed::Compressed(Compression::Gzip);
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Sniffed::Compressed(Compression::Xz);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Sniffed::Compressed(Compression::Zstd);
    }
    if head.starts_with(b"BZh") && head.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        return Sniffed::Unsupported("bzip2-compressed (recompress with xz, gzip or zstd)");
    }
    if head.starts_with(b"KDMV") {
        return Sniffed::Unsupported("vmdk (convert it with `qemu-img convert -O qcow2`)");
    }
    if head.starts_with(b"vhdxfile") {
        return Sniffed::Unsupported("vhdx (convert it with `qemu-img convert -O qcow2`)");
    }
    if head.starts_with(b"QFI") {
        return Sniffed::Unsupported("qcow version 1");
    }
    Sniffed::Raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_magic_numbers() {
        assert_eq!(sniff(b"QFI\xfb\0\0\0\x03"), Sniffed::Qcow2);
        assert_eq!(
            sniff(&[0x1f, 0x8b, 8, 0]),
            Sniffed::Compressed(Compression::Gzip)
        );
        assert_eq!(
            sniff(b"\xfd7zXZ\0\0\x04"),
            Sniffed::Compressed(Compression::Xz)
        );
        assert_eq!(
            sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0x24]),
            Sniffed::Compressed(Compression::Zstd)
        );
        assert!(matches!(sniff(b"KDMV\x01\0\0\0"), Sniffed::Unsupported(_)));
        assert!(matches!(sniff(b"BZh91AY&"), Sniffed::Unsupported(_)));
    }

    #[test]
    fn anything_else_is_raw() {
        assert_eq!(sniff(&[0; 8]), Sniffed::Raw);
        assert_eq!(sniff(b"\xebc\x90"), Sniffed::Raw);
        assert_eq!(sniff(b""), Sniffed::Raw);
        assert_eq!(sniff(b"QF"), Sniffed::Raw);
    }

    #[test]
    fn source_format_reads_like_a_suffix() {
        let f = SourceFormat {
            disk: DiskFormat::Qcow2,
            compression: Some(Compression::Xz),
        };
        assert_eq!(f.to_string(), "qcow2.xz");
        let f = SourceFormat {
            disk: DiskFormat::Raw,
            compression: None,
        };
        assert_eq!(f.to_string(), "raw");
    }
}
