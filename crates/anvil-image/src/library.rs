//! The image library on disk: `<dir>/<sha256>.raw.zst` (the raw disk, zstd)
//! and `<dir>/<sha256>.zeromap`, named by the sha256 of the raw disk so the
//! same image imported twice is stored once. Files appear by rename after
//! fsync: a crash leaves an old image or none, never half of one. The data
//! file is renamed last; its presence means the image is complete.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// Buffers in the pool the reader fills and the stages give back: bounds the
/// data in flight (and the import's memory) at BUFFERS × CHUNK.
const BUFFERS: usize = 24;
/// Messages that may wait for a stage. Most are zero runs, which hold no
/// buffer; data messages are bounded by `BUFFERS`.
const QUEUE: usize = 1024;
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
                let again = SourceFile::new(&file, path)?;
                let mut reader = Qcow2Reader::open(file)?;
                // Inflating compressed clusters costs more than it saves to
                // do it twice: then the hash takes its input from the pipeline.
                let hash = if reader.has_compressed_clusters()? {
                    HashInput::Pipeline
                } else {
                    let second = Qcow2Reader::open(again.clone_handle()?)?;
                    HashInput::Separate(Box::new(second), again)
                };
                self.store(
                    reader,
                    hash,
                    SourceFormat {
                        disk: DiskFormat::Qcow2,
                        compression: None,
                    },
                    source_size,
                )
            }
            Sniffed::Raw => {
                let again = SourceFile::new(&file, path)?;
                let second = StreamSource::new(PositionalReader::new(again.clone_handle()?), None);
                self.store(
                    StreamSource::new(file, None),
                    HashInput::Separate(Box::new(second), again),
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
                HashInput::Pipeline,
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
                    HashInput::Pipeline,
                    SourceFormat {
                        disk: DiskFormat::Qcow2,
                        compression: Some(compression),
                    },
                    source_size,
                )
            }
        }
    }

    /// Converts `source` into the library: one thread reads and decodes,
    /// this one maps zeros and feeds the multithreaded zstd encoder, and the
    /// sha256 is computed either as a stage between the two
    /// ([`HashInput::Pipeline`]) or on its own thread from a second reading
    /// of the same file ([`HashInput::Separate`]). Buffers go round in a
    /// fixed set.
    fn store<S: RawSource>(
        &self,
        source: S,
        hash_input: HashInput,
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
        // Messages are small (a shared buffer, or a zero run's length); what
        // bounds the data in flight is the pool of buffers. Room for many
        // messages lets the producer run through zero runs ahead of a busy
        // stage instead of waiting for it.
        let (to_write, from_producer) = sync_channel::<Result<Msg>>(QUEUE);
        let (pool, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            pool.send(Vec::with_capacity(CHUNK + (2 << 20)))
                .expect("channel has room");
        }
        let data_path = data_tmp.path().to_owned();
        let map_path = map_tmp.path().to_owned();
        let hash_panicked = || Error::Read {
            offset: 0,
            source: io::Error::other("hashing thread panicked"),
        };
        let (digest, written) = match hash_input {
            HashInput::Pipeline => std::thread::scope(|scope| {
                let (to_hash, hash_rx) = sync_channel::<Msg>(QUEUE);
                scope.spawn(move || produce(source, to_write, Some(to_hash), empty_rx, pool, None));
                let hasher = scope.spawn(move || hash(hash_rx));
                let written = write(from_producer, data_out, &data_path, map_out, &map_path);
                (hasher.join().map_err(|_| hash_panicked()), written)
            }),
            HashInput::Separate(second, file) => {
                let stop = AtomicBool::new(false);
                let pipeline_read = AtomicU64::new(0);
                let (digest, written) = std::thread::scope(|scope| {
                    scope.spawn(|| {
                        produce(source, to_write, None, empty_rx, pool, Some(&pipeline_read));
                        pipeline_read.store(u64::MAX, Ordering::Relaxed);
                    });
                    let hasher =
                        scope.spawn(|| hash_source(second, &stop, &pipeline_read, HASH_LEAD));
                    let written = write(from_producer, data_out, &data_path, map_out, &map_path);
                    if written.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    (hasher.join(), written)
                });
                let written = written?;
                let (digest, hashed_size) = digest.map_err(|_| hash_panicked())??;
                // Both readings must have seen the same bytes, or the name
                // would not be the content: refuse a file changed meanwhile.
                if hashed_size != written.0.raw_size || !file.unchanged()? {
                    return Err(Error::SourceChanged {
                        path: file.path.clone(),
                    });
                }
                (Ok(digest), Ok(written))
            }
        };
        let (stats, head) = written?;
        let digest = digest?;
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
    Data(Chunk),
    Zero(u64),
}

/// A buffer of decoded data, shared by the stages that read it (the writer,
/// and the hash when it is fed from the pipeline); the last one to drop it
/// gives it back to the pool the producer takes buffers from, so the data in
/// flight stays bounded however far one stage runs ahead of the other.
struct Chunk {
    buf: Option<Arc<Vec<u8>>>,
    pool: SyncSender<Vec<u8>>,
}

impl Chunk {
    fn share(&self) -> Chunk {
        Chunk {
            buf: self.buf.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // `into_inner` hands the buffer to exactly one of the last owners,
        // even when they drop at the same moment.
        if let Some(buf) = self.buf.take().and_then(Arc::into_inner) {
            let _ = self.pool.try_send(buf);
        }
    }
}

/// Reads `source` into buffers from the pool (`empty`, refilled through
/// `pool`) and sends each piece to the writer and, when the hash is a
/// pipeline stage, to the hash too; counts the data bytes read in `read`
/// (for the hash's separate reading to keep near). A read error goes to the
/// writer, which reports it; the hash then just ends.
fn produce<S: RawSource>(
    mut source: S,
    to_write: SyncSender<Result<Msg>>,
    to_hash: Option<SyncSender<Msg>>,
    empty: Receiver<Vec<u8>>,
    pool: SyncSender<Vec<u8>>,
    read: Option<&AtomicU64>,
) {
    let mut spare = None;
    loop {
        let Some(mut buf) = spare.take().or_else(|| empty.recv().ok()) else {
            return;
        };
        let piece = source.next_piece(&mut buf, CHUNK);
        if let (Some(read), Ok(Some(Piece::Data))) = (read, &piece) {
            read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        let msg = match piece {
            Ok(None) => return,
            // Whole zero buffers of a raw stream travel as holes: cheaper to
            // hash, and stored as zstd RLE blocks without compressing.
            Ok(Some(Piece::Data)) if zeromap::is_zero(&buf) => {
                let n = buf.len() as u64;
                spare = Some(buf);
                Msg::Zero(n)
            }
            Ok(Some(Piece::Data)) => Msg::Data(Chunk {
                buf: Some(Arc::new(buf)),
                pool: pool.clone(),
            }),
            Ok(Some(Piece::Zero(n))) => {
                spare = Some(buf);
                Msg::Zero(n)
            }
            Err(e) => {
                let _ = to_write.send(Err(e));
                return;
            }
        };
        if let Some(to_hash) = &to_hash {
            let copy = match &msg {
                Msg::Data(chunk) => Msg::Data(chunk.share()),
                Msg::Zero(n) => Msg::Zero(*n),
            };
            if to_hash.send(copy).is_err() {
                return;
            }
        }
        if to_write.send(Ok(msg)).is_err() {
            return;
        }
    }
}

/// Where the sha256 gets the raw disk from.
enum HashInput {
    /// From the pipeline, as a stage between decoding and compressing: the
    /// source is read and decoded once (compressed qcow2 clusters, gz/xz/zst
    /// streams).
    Pipeline,
    /// From a second reader of the same file, on its own thread. The hash
    /// is the one serial step of an import (~1 s per 2 GiB with SHA-NI,
    /// zeros included); fed from the pipeline it can go no faster than the
    /// compressor behind it and hashes a disk's empty tail alone at the end.
    /// Reading the file again costs a copy from the page cache.
    Separate(Box<dyn RawSource>, SourceFile),
}

/// The source file as it was when the import began, to check that the two
/// readings of [`HashInput::Separate`] saw the same file.
struct SourceFile {
    file: File,
    path: PathBuf,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

impl SourceFile {
    fn new(file: &File, path: &Path) -> Result<Self> {
        let file = file.try_clone().map_err(Error::io("open", path))?;
        let meta = file.metadata().map_err(Error::io("stat", path))?;
        Ok(SourceFile {
            file,
            path: path.to_owned(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// Another handle on the same open file (not the path: it may have been
    /// replaced meanwhile). Read it with positional reads only: handles
    /// share their cursor.
    fn clone_handle(&self) -> Result<File> {
        self.file.try_clone().map_err(Error::io("open", &self.path))
    }

    fn unchanged(&self) -> Result<bool> {
        let meta = self
            .file
            .metadata()
            .map_err(Error::io("stat", &self.path))?;
        Ok(meta.len() == self.len && meta.modified().ok() == self.modified)
    }
}

/// A file read front to back with positional reads, leaving the cursor it
/// shares with other handles of the same file alone.
struct PositionalReader {
    file: File,
    offset: u64,
}

impl PositionalReader {
    fn new(file: File) -> Self {
        PositionalReader { file, offset: 0 }
    }
}

impl Read for PositionalReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&self.file, buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Feeds `n` zero bytes to the hash. sha256 cannot skip them: each block
/// depends on the state before it. They come from a static block that stays
/// in cache; a round function specialised for zero blocks was measured no
/// faster (SHA-NI is bound by the latency of its round instruction).
fn hash_zeros(hasher: &mut Sha256, mut n: u64) {
    while n > 0 {
        let take = n.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..take]);
        n -= take as u64;
    }
}

/// The sha256 of the pieces the producer sends, in order. It runs beside
/// the writer, not in front of it: while it grinds through a disk's zeros
/// (as costly to hash as data) the producer and the compressor go on with
/// the data that follows.
fn hash(pieces: Receiver<Msg>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for msg in pieces {
        match &msg {
            Msg::Data(buf) => hasher.update(&buf[..]),
            Msg::Zero(n) => hash_zeros(&mut hasher, *n),
        }
    }
    hasher.finalize().into()
}

/// How far (in data bytes read from the file) the hash's reading may run
/// ahead of the pipeline's. Zeros do not count, so the hash still runs
/// through a disk's empty tail while the compressor works; the bound keeps
/// the pipeline's second reading in the page cache, not on the disk, for a
/// dense image larger than memory.
const HASH_LEAD: u64 = 256 << 20;

/// The sha256 of a whole raw disk read from its own source, and its size;
/// gives up early (with a meaningless result) once `stop` is set. Waits
/// while its data reading is more than `lead` bytes ahead of
/// `pipeline_read` (set to `u64::MAX` when the pipeline has read all).
fn hash_source(
    mut source: Box<dyn RawSource>,
    stop: &AtomicBool,
    pipeline_read: &AtomicU64,
    lead: u64,
) -> Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut buf = Vec::with_capacity(CHUNK + (2 << 20));
    let mut size = 0u64;
    let mut data_read = 0u64;
    loop {
        while data_read > pipeline_read.load(Ordering::Relaxed).saturating_add(lead)
            && !stop.load(Ordering::Relaxed)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let Some(piece) = source.next_piece(&mut buf, CHUNK)? else {
            break;
        };
        match piece {
            Piece::Data => {
                hasher.update(&buf);
                size += buf.len() as u64;
                data_read += buf.len() as u64;
            }
            Piece::Zero(n) => {
                hash_zeros(&mut hasher, n);
                size += n;
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok((hasher.finalize().into(), size))
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
    pieces: Receiver<Result<Msg>>,
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
    for msg in pieces {
        match msg? {
            Msg::Data(buf) => {
                if head.len() < partition::HEAD_LEN {
                    let take = (partition::HEAD_LEN - head.len()).min(buf.len());
                    head.extend_from_slice(&buf[..take]);
                }
                map.data(&buf).map_err(write_err(map_path))?;
                encoder.write_all(&buf).map_err(write_err(data_path))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn source_file_notices_a_change_through_any_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = raw_file(dir.path(), "disk.raw", &[1; 4096]);
        let file = File::open(&path).unwrap();
        let stamp = SourceFile::new(&file, &path).unwrap();
        assert!(stamp.unchanged().unwrap());
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[2])
            .unwrap();
        assert!(!stamp.unchanged().unwrap());
    }

    #[test]
    fn positional_reader_ignores_the_shared_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let path = raw_file(dir.path(), "disk.raw", &bytes);
        let mut file = File::open(&path).unwrap();
        let mut positional = PositionalReader::new(file.try_clone().unwrap());
        let mut head = [0u8; 3000];
        file.read_exact(&mut head).unwrap();
        let mut all = Vec::new();
        positional.read_to_end(&mut all).unwrap();
        assert_eq!(all, bytes);
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, bytes[3000..]);
    }

    /// When the hash's own reading sees another disk than the pipeline (the
    /// file changed between them), nothing is stored under either name.
    #[test]
    fn readings_that_disagree_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let library = ImageLibrary::open(dir.path().join("images")).unwrap();
        let path = raw_file(dir.path(), "disk.raw", &[7; 100_000]);
        let file = File::open(&path).unwrap();
        let longer = StreamSource::new(io::Cursor::new(vec![7u8; 100_001]), None);
        let err = library
            .store(
                StreamSource::new(file.try_clone().unwrap(), None),
                HashInput::Separate(Box::new(longer), SourceFile::new(&file, &path).unwrap()),
                SourceFormat {
                    disk: DiskFormat::Raw,
                    compression: None,
                },
                100_000,
            )
            .unwrap_err();
        assert!(matches!(err, Error::SourceChanged { .. }), "{err}");
        let left: Vec<_> = fs::read_dir(library.dir())
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(
            fs::read_dir(dir.path().join("images/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn separate_hash_waits_for_the_pipeline_to_read_its_data() {
        let bytes: Vec<u8> = (0..3 * CHUNK as u32).map(|i| (i % 253) as u8).collect();
        let source = StreamSource::new(io::Cursor::new(bytes.clone()), None);
        let stop = AtomicBool::new(false);
        let pipeline_read = AtomicU64::new(0);
        std::thread::scope(|scope| {
            let hasher = scope.spawn(|| hash_source(Box::new(source), &stop, &pipeline_read, 1));
            std::thread::sleep(std::time::Duration::from_millis(200));
            // One chunk read, then held back: the pipeline has read nothing.
            assert!(!hasher.is_finished());
            pipeline_read.store(u64::MAX, Ordering::Relaxed);
            let (digest, size) = hasher.join().unwrap().unwrap();
            assert_eq!(size, bytes.len() as u64);
            assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&bytes)));
        });
    }

    #[test]
    fn raw_file_imports_with_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let library = ImageLibrary::open(dir.path().join("images")).unwrap();
        let mut bytes = vec![0u8; 3 << 20];
        bytes[5 << 10..9 << 10].fill(0x33);
        bytes[(2 << 20) + 1] = 1;
        let path = raw_file(dir.path(), "disk.raw", &bytes);
        let report = library.import_path(&path).unwrap();
        assert_eq!(report.sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(report.raw_size, bytes.len() as u64);
        library
            .open_image(&report.sha256)
            .unwrap()
            .verify()
            .unwrap();
    }
}
