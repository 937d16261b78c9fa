//! Where served files come from: the [`FileSource`] seam and three
//! implementations — a directory, bytes in memory, and a first-match chain.
//!
//! Sources are read-only by construction: the trait has no way to write.

use crate::TftpError;
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::AsyncRead;

/// A boxed future, so that [`FileSource`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves a requested file name to content.
///
/// `path` is the file name exactly as the client sent it; `peer` lets a
/// source answer per machine (generated iPXE scripts, per-MAC configs).
/// Return `Ok(None)` when there is no such file (the client gets ERROR 1),
/// [`TftpError::AccessDenied`] for names that must not be served (ERROR 2),
/// and other errors for failures (ERROR 0; the error is logged).
pub trait FileSource: Send + Sync {
    fn open<'a>(
        &'a self,
        path: &'a str,
        peer: SocketAddr,
    ) -> BoxFuture<'a, Result<Option<OpenFile>, TftpError>>;
}

/// An opened file: its content and, when known, its size (reported as the
/// RFC 2349 `tsize`).
pub struct OpenFile {
    pub(crate) content: Content,
    size: Option<u64>,
}

pub(crate) enum Content {
    /// Served by slicing, without copies or I/O.
    Memory(Bytes),
    /// Read with positional reads on the blocking pool, ahead of need.
    File(Arc<File>),
    /// Read front to back.
    Reader(Box<dyn AsyncRead + Send + Unpin>),
}

impl OpenFile {
    /// Content held in memory (embedded binaries, generated scripts).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> OpenFile {
        let bytes = bytes.into();
        OpenFile {
            size: Some(bytes.len() as u64),
            content: Content::Memory(bytes),
        }
    }

    /// A regular file opened for reading; its size is taken from the file.
    /// Large files are never read into memory, only a few windows ahead.
    pub fn from_file(file: File) -> io::Result<OpenFile> {
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(OpenFile {
            size: Some(meta.len()),
            content: Content::File(Arc::new(file)),
        })
    }

    /// Any byte stream; `size` is reported as tsize when given.
    pub fn from_reader(
        reader: impl AsyncRead + Send + Unpin + 'static,
        size: Option<u64>,
    ) -> OpenFile {
        OpenFile {
            size,
            content: Content::Reader(Box::new(reader)),
        }
    }

    /// The size, if known.
    pub fn size(&self) -> Option<u64> {
        self.size
    }
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.content {
            Content::Memory(_) => "memory",
            Content::File(_) => "file",
            Content::Reader(_) => "reader",
        };
        f.debug_struct("OpenFile")
            .field("content", &kind)
            .field("size", &self.size)
            .finish()
    }
}

/// Turns a requested file name into a relative path of `/`-separated
/// components, or refuses it.
///
/// Firmware sends names in many shapes: with a leading `/` (stripped),
/// with DOS backslashes (treated as separators), with `./` and doubled
/// slashes (dropped). A `..` component or a NUL byte is refused outright
/// rather than resolved, so no spelling can climb out of a root. The result
/// may be empty (the name was only separators), which no source serves.
pub fn normalize_path(raw: &str) -> Result<String, TftpError> {
    if raw.contains('\0') {
        return Err(TftpError::denied(raw, "NUL in file name"));
    }
    let mut parts = Vec::new();
    for part in raw.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(TftpError::denied(raw, "`..` in file name")),
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

/// Serves the files under one directory.
///
/// Requests are normalized by [`normalize_path`]. Symlinks inside the root
/// are followed, but the file actually opened must lie under the root or a
/// directory allowed with [`DirSource::allow_symlinks_into`]; this is checked
/// on the opened descriptor (through `/proc/self/fd`), so swapping a path
/// component for a symlink between check and open gains nothing. Where
/// `/proc` is not mounted the check falls back to resolving the path before
/// opening it. Only regular files are served; directories, devices and FIFOs
/// are "not found" and are never opened.
#[derive(Debug, Clone)]
pub struct DirSource {
    root: PathBuf,
    allowed: Vec<PathBuf>,
}

impl DirSource {
    /// A source over `root`, which must be an existing directory.
    pub fn new(root: impl AsRef<Path>) -> Result<DirSource, TftpError> {
        let root = canonical_dir(root.as_ref())?;
        Ok(DirSource {
            allowed: vec![root.clone()],
            root,
        })
    }

    /// Also accepts files that symlinks in the root resolve to under `dir`.
    /// Debian's `ipxe` package, for one, installs `/usr/lib/ipxe/ipxe.efi`
    /// as a symlink to `/boot/ipxe.efi`.
    pub fn allow_symlinks_into(mut self, dir: impl AsRef<Path>) -> Result<DirSource, TftpError> {
        self.allowed.push(canonical_dir(dir.as_ref())?);
        Ok(self)
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn open_blocking(&self, requested: &str) -> Result<Option<OpenFile>, TftpError> {
        let rel = normalize_path(requested)?;
        if rel.is_empty() {
            return Ok(None);
        }
        let path = self.root.join(&rel);
        // Look before opening: opening a device node can have side effects.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Ok(None),
            Err(e) => return classify(e, requested, path),
        }
        let file = match std::fs::OpenOptions::new()
            .read(true)
            // Never block in open() should the file have become a FIFO.
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) => return classify(e, requested, path),
        };
        let real = match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
            Ok(real) => real,
            // No /proc: resolve the path instead (racy, see the type docs).
            Err(_) => match path.canonicalize() {
                Ok(real) => real,
                Err(e) => return classify(e, requested, path),
            },
        };
        if !self.allowed.iter().any(|dir| real.starts_with(dir)) {
            return Err(TftpError::denied(requested, "resolves outside the root"));
        }
        match OpenFile::from_file(file) {
            Ok(open) => Ok(Some(open)),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(None),
            Err(e) => classify(e, requested, path),
        }
    }
}

/// Maps "does not exist" (including a symlink loop) to `Ok(None)`, missing
/// permission to access denied, and anything else to an open error.
fn classify(e: io::Error, requested: &str, path: PathBuf) -> Result<Option<OpenFile>, TftpError> {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Ok(None),
        _ if e.raw_os_error() == Some(libc::ELOOP) => Ok(None),
        io::ErrorKind::PermissionDenied => Err(TftpError::denied(requested, "permission denied")),
        _ => Err(TftpError::Open { path, source: e }),
    }
}

fn canonical_dir(dir: &Path) -> Result<PathBuf, TftpError> {
    let root_err = |source| TftpError::Root {
        path: dir.to_path_buf(),
        source,
    };
    let canonical = dir.canonicalize().map_err(root_err)?;
    if !canonical.is_dir() {
        return Err(root_err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    Ok(canonical)
}

impl FileSource for DirSource {
    fn open<'a>(
        &'a self,
        path: &'a str,
        _peer: SocketAddr,
    ) -> BoxFuture<'a, Result<Option<OpenFile>, TftpError>> {
        Box::pin(async move {
            let this = self.clone();
            let requested = path.to_string();
            match tokio::task::spawn_blocking(move || this.open_blocking(&requested)).await {
                Ok(result) => result,
                Err(join) => Err(TftpError::Open {
                    path: self.root.join(path),
                    source: io::Error::other(join),
                }),
            }
        })
    }
}

/// Files held in memory: embedded binaries or generated content. Names are
/// normalized like [`DirSource`]'s, so `/undionly.kpxe` finds `undionly.kpxe`.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    files: HashMap<String, Bytes>,
}

impl MemorySource {
    pub fn new() -> MemorySource {
        MemorySource::default()
    }

    /// Adds (or replaces) a file. Fails for names [`normalize_path`] refuses.
    pub fn insert(&mut self, path: &str, content: impl Into<Bytes>) -> Result<(), TftpError> {
        self.files.insert(normalize_path(path)?, content.into());
        Ok(())
    }
}

impl FileSource for MemorySource {
    fn open<'a>(
        &'a self,
        path: &'a str,
        _peer: SocketAddr,
    ) -> BoxFuture<'a, Result<Option<OpenFile>, TftpError>> {
        Box::pin(async move {
            let key = normalize_path(path)?;
            Ok(self.files.get(&key).cloned().map(OpenFile::from_bytes))
        })
    }
}

/// Asks its sources in order; the first that has the file serves it (e.g.
/// the operator's directory, then Anvil's data directory, then
/// `/usr/lib/ipxe`). An error from a source ends the search: a refused path
/// must not be looked up elsewhere, and an I/O error must not silently serve
/// a different file.
#[derive(Clone, Default)]
pub struct MultiSource {
    sources: Vec<Arc<dyn FileSource>>,
}

impl MultiSource {
    pub fn new() -> MultiSource {
        MultiSource::default()
    }

    /// Appends a source, searched after those already added.
    pub fn with(mut self, source: impl FileSource + 'static) -> MultiSource {
        self.sources.push(Arc::new(source));
        self
    }

    /// Appends a shared source.
    pub fn push(&mut self, source: Arc<dyn FileSource>) {
        self.sources.push(source);
    }
}

impl std::fmt::Debug for MultiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiSource")
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl FileSource for MultiSource {
    fn open<'a>(
        &'a self,
        path: &'a str,
        peer: SocketAddr,
    ) -> BoxFuture<'a, Result<Option<OpenFile>, TftpError>> {
        Box::pin(async move {
            for source in &self.sources {
                if let Some(file) = source.open(path, peer).await? {
                    return Ok(Some(file));
                }
            }
            Ok(None)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1000))
    }

    #[test]
    fn normalize_accepts_firmware_spellings_and_refuses_climbing() {
        for (raw, want) in [
            ("/undionly.kpxe", "undionly.kpxe"),
            ("//a//b/", "a/b"),
            ("\\boot\\x64\\wdsnbp.com", "boot/x64/wdsnbp.com"),
            ("./a/./b", "a/b"),
            ("a/b..c", "a/b..c"),
            ("/", ""),
        ] {
            assert_eq!(normalize_path(raw).expect(raw), want, "{raw}");
        }
        for raw in [
            "../etc/passwd",
            "a/../../b",
            "a\\..\\b",
            "..",
            "a\0b",
            "/..",
        ] {
            assert!(
                matches!(normalize_path(raw), Err(TftpError::AccessDenied { .. })),
                "{raw}"
            );
        }
    }

    async fn read_all(file: OpenFile) -> Vec<u8> {
        match file.content {
            Content::Memory(b) => b.to_vec(),
            Content::File(f) => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut &*f, &mut out).expect("read");
                out
            }
            Content::Reader(mut r) => {
                let mut out = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut r, &mut out)
                    .await
                    .expect("read");
                out
            }
        }
    }

    #[tokio::test]
    async fn dir_source_serves_files_and_refuses_escapes() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), b"secret").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/file"), b"hello").expect("write");
        symlink("sub/file", root.join("inside-link")).expect("symlink");
        symlink(outside.path().join("secret"), root.join("escape")).expect("symlink");
        symlink(outside.path(), root.join("escape-dir")).expect("symlink");
        let src = DirSource::new(root).expect("source");

        for name in ["sub/file", "/sub/file", "\\sub\\file", "inside-link"] {
            let file = src.open(name, peer()).await.expect(name).expect(name);
            assert_eq!(file.size(), Some(5));
            assert_eq!(read_all(file).await, b"hello");
        }
        for name in ["missing", "sub", "sub/file/x", "", "/"] {
            assert!(
                src.open(name, peer()).await.expect(name).is_none(),
                "{name}"
            );
        }
        for name in ["escape", "escape-dir/secret", "../x", "sub/../../x"] {
            assert!(
                matches!(
                    src.open(name, peer()).await,
                    Err(TftpError::AccessDenied { .. })
                ),
                "{name}"
            );
        }

        // Allowing the target directory admits the symlinked file.
        let src = src.allow_symlinks_into(outside.path()).expect("allow");
        let file = src
            .open("escape", peer())
            .await
            .expect("ok")
            .expect("found");
        assert_eq!(read_all(file).await, b"secret");
    }

    #[tokio::test]
    async fn dir_source_does_not_open_fifos() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("cstring");
        // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let src = DirSource::new(dir.path()).expect("source");
        assert!(src.open("fifo", peer()).await.expect("ok").is_none());
    }

    #[test]
    fn dir_source_needs_an_existing_directory() {
        assert!(matches!(
            DirSource::new("/nonexistent/anvil-tftp"),
            Err(TftpError::Root { .. })
        ));
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        assert!(matches!(
            DirSource::new(file.path()),
            Err(TftpError::Root { .. })
        ));
    }

    #[tokio::test]
    async fn multi_source_takes_the_first_match_and_stops_on_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), b"from dir").expect("write");
        let mut mem = MemorySource::new();
        mem.insert("/a", &b"from memory"[..]).expect("insert");
        mem.insert("b", &b"only in memory"[..]).expect("insert");
        assert!(mem.insert("../c", &b""[..]).is_err());

        let multi = MultiSource::new()
            .with(DirSource::new(dir.path()).expect("dir"))
            .with(mem);
        let a = multi.open("a", peer()).await.expect("ok").expect("a");
        assert_eq!(read_all(a).await, b"from dir");
        let b = multi.open("/b", peer()).await.expect("ok").expect("b");
        assert_eq!(read_all(b).await, b"only in memory");
        assert!(multi.open("c", peer()).await.expect("ok").is_none());
        assert!(matches!(
            multi.open("../b", peer()).await,
            Err(TftpError::AccessDenied { .. })
        ));
    }

    #[tokio::test]
    async fn reader_content_keeps_its_size() {
        let file = OpenFile::from_reader(&b"stream"[..], None);
        assert_eq!(file.size(), None);
        assert_eq!(read_all(file).await, b"stream");
    }
}
