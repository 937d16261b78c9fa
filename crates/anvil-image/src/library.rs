//! The image library on disk: `<dir>/<sha256>.raw.zst` (the raw disk, zstd)
//! and `<dir>/<sha256>.zeromap`, named by the sha256 of the raw disk so the
//! same image imported twice is stored once. Files appear by rename after
//! fsync: a crash leaves an old image or none, never half of one. The data
//! file is renamed last; its presence means the image is complete.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest, Sha256};

use crate::detect::{Compression, DiskFormat, SNIFF_LEN, Sniffed, SourceFormat, sniff};
use crate::error::{Error, Result};
use crate::partition::{self, BootModes};
use crate::qcow2::Qcow2Reader;
use crate::source::{Piece, RawSource, StreamSource};
use crate::zeromap::{self, ZeroMapBuilder, ZeroMapReader};

/// Size of the buffers passed from the reader thread to the writer.
const CHUNK: usize = 4 << 20;
/// Buffers in flight between the two: bounds memory at ~(DEPTH + 2) × CHUNK.
const DEPTH: usize = 4;
/// zstd level: 1 compresses OS images nearly as well as 3 at twice the speed.
const ZSTD_LEVEL: i32 = 1;
static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];

/// What an import produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    pub sha256: String,
    pub source_format: SourceFormat,
    pub source_size: u64,
    pub raw_size: u64,
    pub stored_size: u64,
    pub zero_bytes: u64,
    /// Firmware the partition table says the image boots with.
    pub boot_modes: BootModes,
    /// The same raw image was already stored; nothing was written.
    pub already_present: bool,
}

/// The image directory.
#[derive(Clone, Debug)]
pub struct ImageLibrary {
    dir: PathBuf,
    tmp: PathBuf,
}

fn check_digest(sha256: &str) -> Result<()> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Error::BadDigest(sha256.to_owned()))
    }
}

impl ImageLibrary {
    /// Opens (creating) the library in `dir`, normally `<data_dir>/images`.
    /// Leftovers of interrupted imports in `dir/tmp` are removed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).map_err(Error::io("create", &tmp))?;
        if let Ok(entries) = fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(ImageLibrary { dir, tmp })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A scratch file on the library's filesystem (uploads, downloads,
    /// decompressed qcow2), deleted when dropped.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        tempfile::NamedTempFile::new_in(&self.tmp).map_err(Error::io("create a file in", &self.tmp))
    }

    pub fn data_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.raw.zst"))
    }

    pub fn map_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.zeromap"))
    }

    pub fn contains(&self, sha256: &str) -> bool {
        check_digest(sha256).is_ok()
            && self.data_path(sha256).is_file()
            && self.map_path(sha256).is_file()
    }

    /// Imports the image file at `path` (raw or qcow2, optionally gz/xz/zst).
    /// Blocking: call it from a blocking thread.
    pub fn import_path(&self, path: &Path) -> Result<ImportReport> {
        let file = File::open(path).map_err(Error::io("open", path))?;
        let source_size = file.metadata().map_err(Error::io("stat", path))?.len();
        let mut head = [0u8; SNIFF_LEN];
        let n =
            crate::qcow2::ReadAt::read_at(&file, &mut head, 0).map_err(Error::io("read", path))?;
        match sniff(&head[..n]) {
            Sniffed::Unsupported(what) => Err(Error::Unsupported { what: what.into() }),
            Sniffed::Qcow2 => {
                let reader = Qcow2Reader::open(file)?;
                self.store(
                    reader,
                    SourceFormat {
                        disk: DiskFormat::Qcow2,
                        compression: None,
                    },
                    source_size,
                )
            }
            Sniffed::Raw => {
                let source = StreamSource::new(file, None);
                self.store(
                    source,
                    SourceFormat {
                        disk: DiskFormat::Raw,
                        compression: None,
                    },
                    source_size,
                )
            }
            Sniffed::Compressed(compression) => {
                self.import_compressed(file, compression, source_size)
            }
        }
    }

    fn import_compressed(
        &self,
        file: File,
        compression: Compression,
        source_size: u64,
    ) -> Result<ImportReport> {
        let format = compression.as_str();
        let mut decoder = decoder(compression, file)?;
        let mut head = Vec::with_capacity(SNIFF_LEN);
        (&mut decoder)
            .take(SNIFF_LEN as u64)
            .read_to_end(&mut head)
            .map_err(|source| Error::Decompress { format, source })?;
        let stream = io::Cursor::new(head.clone()).chain(decoder);
        match sniff(&head) {
            Sniffed::Unsupported(what) => Err(Error::Unsupported {
                what: format!("{what} inside {format}"),
            }),
            Sniffed::Compressed(inner) => Err(Error::Unsupported {
                what: format!("{} inside {format} (nested compression)", inner.as_str()),
            }),
            Sniffed::Raw => self.store(
                StreamSource::new(stream, Some(format)),
                SourceFormat {
                    disk: DiskFormat::Raw,
                    compression: Some(compression),
                },
                source_size,
            ),
            Sniffed::Qcow2 => {
                // qcow2 needs random access: decompress it to scratch space first.
                let mut scratch = self.temp_file()?;
                copy_stream(stream, scratch.as_file_mut(), format)?;
                let reader = Qcow2Reader::open(
                    scratch
                        .reopen()
                        .map_err(Error::io("reopen", scratch.path()))?,
                )?;
                self.store(
                    reader,
                    SourceFormat {
                        disk: DiskFormat::Qcow2,
                        compression: Some(compression),
                    },
                    source_size,
                )
            }
        }
    }

    /// Converts `source` into the library in a three-stage pipeline: one
    /// thread reads and decodes, one hashes, this one maps zeros and feeds
    /// the multithreaded zstd encoder. Buffers go round in a fixed set.
    fn store<S: RawSource>(
        &self,
        source: S,
        source_format: SourceFormat,
        source_size: u64,
    ) -> Result<ImportReport> {
        let data_tmp = self.temp_file()?;
        let map_tmp = self.temp_file()?;
        let data_out = data_tmp
            .reopen()
            .map_err(Error::io("reopen", data_tmp.path()))?;
        let map_out = map_tmp
            .reopen()
            .map_err(Error::io("reopen", map_tmp.path()))?;
        let (decoded_tx, decoded_rx) = sync_channel::<Result<Msg>>(DEPTH);
        let (hashed_tx, hashed_rx) = sync_channel::<Result<Msg>>(DEPTH);
        let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(2 * DEPTH + 3);
        for _ in 0..2 * DEPTH + 3 {
            empty_tx
                .send(Vec::with_capacity(CHUNK + (2 << 20)))
                .expect("channel has room");
        }
        let data_path = data_tmp.path().to_owned();
        let map_path = map_tmp.path().to_owned();
        let (digest, written) = std::thread::scope(|scope| {
            scope.spawn(move || produce(source, decoded_tx, empty_rx));
            let hasher = scope.spawn(move || hash(decoded_rx, hashed_tx));
            let written = write(
                hashed_rx, empty_tx, data_out, &data_path, map_out, &map_path,
            );
            (hasher.join(), written)
        });
        let (stats, head) = written?;
        let digest = digest.map_err(|_| Error::Read {
            offset: 0,
            source: io::Error::other("hashing thread panicked"),
        })?;
        if stats.raw_size == 0 {
            return Err(Error::Empty);
        }
        let sha256 = hex::encode(digest);
        let boot_modes = partition::boot_modes(&head);
        let final_data = self.data_path(&sha256);
        let already_present = self.contains(&sha256);
        if !already_present {
            let final_map = self.map_path(&sha256);
            map_tmp
                .persist(&final_map)
                .map_err(|e| Error::io("rename to", &final_map)(e.error))?;
            data_tmp
                .persist(&final_data)
                .map_err(|e| Error::io("rename to", &final_data)(e.error))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(Error::io("fsync", &self.dir))?;
        }
        let stored_size = fs::metadata(&final_data)
            .map_err(Error::io("stat", &final_data))?
            .len();
        Ok(ImportReport {
            sha256,
            source_format,
            source_size,
            raw_size: stats.raw_size,
            stored_size,
            zero_bytes: stats.zero_bytes,
            boot_modes,
            already_present,
        })
    }

    /// Opens a stored image for reading.
    pub fn open_image(&self, sha256: &str) -> Result<StoredImage> {
        check_digest(sha256)?;
        if !self.contains(sha256) {
            return Err(Error::NotFound {
                sha256: sha256.into(),
            });
        }
        let map = ZeroMapReader::open(&self.map_path(sha256))?;
        let data_path = self.data_path(sha256);
        let stored_size = fs::metadata(&data_path)
            .map_err(Error::io("stat", &data_path))?
            .len();
        Ok(StoredImage {
            sha256: sha256.into(),
            raw_size: map.raw_size,
            stored_size,
            data_path,
            map_path: self.map_path(sha256),
        })
    }

    /// Deletes a stored image (both files); absent is not an error.
    pub fn remove(&self, sha256: &str) -> Result<()> {
        check_digest(sha256)?;
        for path in [self.data_path(sha256), self.map_path(sha256)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", path)(e)),
            }
        }
        Ok(())
    }
}

fn decoder(compression: Compression, file: File) -> Result<Box<dyn Read + Send>> {
    let input = BufReader::with_capacity(1 << 20, file);
    Ok(match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(
            |source| Error::Decompress {
                format: "zst",
                source,
            },
        )?),
    })
}

fn copy_stream(mut from: impl Read, to: &mut File, format: &'static str) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(Error::Decompress { format, source }),
        };
        to.write_all(&buf[..n]).map_err(|source| Error::Io {
            op: "write",
            path: "scratch file".into(),
            source,
        })?;
    }
}

enum Msg {
    Data(Vec<u8>),
    Zero(u64),
}

fn produce<S: RawSource>(
    mut source: S,
    decoded: SyncSender<Result<Msg>>,
    empty: Receiver<Vec<u8>>,
) {
    let mut spare = None;
    loop {
        let Some(mut buf) = spare.take().or_else(|| empty.recv().ok()) else {
            return;
        };
        let msg = match source.next_piece(&mut buf, CHUNK) {
            Ok(None) => return,
            // Whole zero buffers of a raw stream travel as holes: cheaper to
            // hash, and stored as zstd RLE blocks without compressing.
            Ok(Some(Piece::Data)) if zeromap::is_zero(&buf) => {
                let n = buf.len() as u64;
                spare = Some(buf);
                Ok(Msg::Zero(n))
            }
            Ok(Some(Piece::Data)) => Ok(Msg::Data(buf)),
            Ok(Some(Piece::Zero(n))) => {
                spare = Some(buf);
                Ok(Msg::Zero(n))
            }
            Err(e) => Err(e),
        };
        let failed = msg.is_err();
        if decoded.send(msg).is_err() || failed {
            return;
        }
    }
}

/// The sha256 stage: hashes each piece, then passes it on.
fn hash(decoded: Receiver<Result<Msg>>, hashed: SyncSender<Result<Msg>>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for msg in decoded {
        match &msg {
            Ok(Msg::Data(buf)) => hasher.update(buf),
            Ok(Msg::Zero(n)) => {
                let mut n = *n;
                while n > 0 {
                    let take = n.min(ZEROS.len() as u64) as usize;
                    hasher.update(&ZEROS[..take]);
                    n -= take as u64;
                }
            }
            Err(_) => {}
        }
        if hashed.send(msg).is_err() {
            break;
        }
    }
    hasher.finalize().into()
}

/// Zero runs at least this long are written as a zstd frame of RLE blocks
/// instead of going through the compressor.
const RLE_MIN: u64 = 1 << 20;

/// Writes a zstd frame holding `n` zero bytes as RLE blocks (4 bytes per
/// 128 KiB). Any zstd decoder reads it; frames simply follow each other.
fn write_zero_frame(out: &mut impl Write, mut n: u64) -> io::Result<()> {
    const BLOCK: u64 = 128 * 1024;
    // Magic; descriptor: no content size, no checksum; window 128 KiB.
    out.write_all(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38])?;
    while n > 0 {
        let size = n.min(BLOCK);
        n -= size;
        let last = u32::from(n == 0);
        let header = last | (1 << 1) | ((size as u32) << 3);
        let h = header.to_le_bytes();
        out.write_all(&[h[0], h[1], h[2], 0x00])?;
    }
    Ok(())
}

/// zstd output as a sequence of frames: compressed data frames from one
/// (multithreaded) context, reused across frames, with hand-made zero
/// frames in between. `zstd::stream::write::Encoder` cannot write again
/// after ending a frame, hence this.
struct FrameWriter<W: Write> {
    context: zstd::stream::raw::Encoder<'static>,
    out: W,
    buf: Vec<u8>,
    frame_open: bool,
}

impl<W: Write> FrameWriter<W> {
    fn new(out: W, level: i32, workers: u32) -> io::Result<Self> {
        use zstd::stream::raw::CParameter;
        let mut context = zstd::stream::raw::Encoder::new(level)?;
        // Fails only without zstdmt support; single-threaded still works.
        let _ = context.set_parameter(CParameter::NbWorkers(workers));
        Ok(FrameWriter {
            context,
            out,
            buf: vec![0; 1 << 20],
            frame_open: false,
        })
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut input = InBuffer::around(data);
        while input.pos() < data.len() {
            let mut output = OutBuffer::around(&mut self.buf[..]);
            self.context.run(&mut input, &mut output)?;
            let n = output.pos();
            self.out.write_all(&self.buf[..n])?;
        }
        self.frame_open |= !data.is_empty();
        Ok(())
    }

    fn end_frame(&mut self) -> io::Result<()> {
        use zstd::stream::raw::{Operation, OutBuffer};
        if !self.frame_open {
            return Ok(());
        }
        loop {
            let mut output = OutBuffer::around(&mut self.buf[..]);
            let remaining = self.context.finish(&mut output, false)?;
            let n = output.pos();
            self.out.write_all(&self.buf[..n])?;
            if remaining == 0 {
                break;
            }
        }
        self.context.reinit()?;
        self.frame_open = false;
        Ok(())
    }

    fn zeros(&mut self, n: u64) -> io::Result<()> {
        self.end_frame()?;
        write_zero_frame(&mut self.out, n)
    }
}

fn write(
    hashed: Receiver<Result<Msg>>,
    empty: SyncSender<Vec<u8>>,
    data_out: File,
    data_path: &Path,
    map_out: File,
    map_path: &Path,
) -> Result<(zeromap::ZeroStats, Vec<u8>)> {
    let write_err = |path: &Path| Error::io("write", path.to_path_buf());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let mut encoder = FrameWriter::new(
        BufWriter::with_capacity(1 << 20, data_out),
        ZSTD_LEVEL,
        workers,
    )
    .map_err(write_err(data_path))?;
    let mut map =
        ZeroMapBuilder::new(map_out, zeromap::GRANULARITY).map_err(write_err(map_path))?;
    let mut head = Vec::with_capacity(partition::HEAD_LEN);
    for msg in hashed {
        match msg? {
            Msg::Data(buf) => {
                if head.len() < partition::HEAD_LEN {
                    let take = (partition::HEAD_LEN - head.len()).min(buf.len());
                    head.extend_from_slice(&buf[..take]);
                }
                map.data(&buf).map_err(write_err(map_path))?;
                encoder.write_all(&buf).map_err(write_err(data_path))?;
                let _ = empty.send(buf);
            }
            Msg::Zero(n) => {
                if head.len() < partition::HEAD_LEN {
                    let h =
                        (partition::HEAD_LEN - head.len()).min(n.min(ZEROS.len() as u64) as usize);
                    head.extend_from_slice(&ZEROS[..h]);
                }
                map.zeros(n).map_err(write_err(map_path))?;
                if n >= RLE_MIN {
                    encoder.zeros(n).map_err(write_err(data_path))?;
                } else {
                    let mut left = n;
                    while left > 0 {
                        let take = left.min(ZEROS.len() as u64) as usize;
                        encoder
                            .write_all(&ZEROS[..take])
                            .map_err(write_err(data_path))?;
                        left -= take as u64;
                    }
                }
            }
        }
    }
    encoder.end_frame().map_err(write_err(data_path))?;
    let data_out = &mut encoder.out;
    data_out.flush().map_err(write_err(data_path))?;
    data_out
        .get_ref()
        .sync_all()
        .map_err(Error::io("fsync", data_path))?;
    let (map_out, stats) = map.finish().map_err(write_err(map_path))?;
    map_out.sync_all().map_err(Error::io("fsync", map_path))?;
    Ok((stats, head))
}

/// A stored image, for deployment: its raw bytes as a stream, or only the
/// ranges that are not zero.
#[derive(Clone, Debug)]
pub struct StoredImage {
    pub sha256: String,
    pub raw_size: u64,
    pub stored_size: u64,
    data_path: PathBuf,
    map_path: PathBuf,
}

impl StoredImage {
    /// The raw disk, decompressed as it is read.
    pub fn raw_reader(&self) -> Result<impl Read + Send + use<>> {
        let file = File::open(&self.data_path).map_err(Error::io("open", &self.data_path))?;
        zstd::stream::read::Decoder::new(file).map_err(|source| Error::Decompress {
            format: "zst",
            source,
        })
    }

    /// The zero ranges, streamed from the map.
    pub fn zero_ranges(&self) -> Result<ZeroMapReader> {
        ZeroMapReader::open(&self.map_path)
    }

    /// Calls `write(offset, bytes)` for every run of the disk outside the
    /// zero ranges, in order, in pieces of at most 4 MiB.
    pub fn for_each_nonzero(
        &self,
        mut write: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<()> {
        let mut raw = self.raw_reader()?;
        let mut map = self.zero_ranges()?;
        if map.raw_size != self.raw_size {
            return Err(Error::BadZeroMap {
                path: self.map_path.clone(),
                reason: "raw size changed".into(),
            });
        }
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        let mut next_zero = map.next_range()?;
        while pos < self.raw_size {
            let (stop, skip) = match next_zero {
                Some((start, len)) if start == pos => {
                    next_zero = map.next_range()?;
                    (start + len, true)
                }
                Some((start, _)) => (start, false),
                None => (self.raw_size, false),
            };
            while pos < stop {
                let n = ((stop - pos) as usize).min(buf.len());
                raw.read_exact(&mut buf[..n])
                    .map_err(|source| Error::Read {
                        offset: pos,
                        source,
                    })?;
                if !skip {
                    write(pos, &buf[..n]).map_err(|source| Error::Read {
                        offset: pos,
                        source,
                    })?;
                }
                pos += n as u64;
            }
        }
        Ok(())
    }

    /// Recomputes the sha256 of the stored raw disk and compares.
    pub fn verify(&self) -> Result<()> {
        let mut raw = self.raw_reader()?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut offset = 0u64;
        loop {
            let n = raw
                .read(&mut buf)
                .map_err(|source| Error::Read { offset, source })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != self.sha256 || offset != self.raw_size {
            return Err(Error::DigestMismatch {
                sha256: self.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}
