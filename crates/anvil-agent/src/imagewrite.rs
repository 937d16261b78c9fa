//! Writing a raw disk image onto the target disk: the core of the planned
//! deploy step (docs/agent-protocol.md, "Deploy step: planned").
//!
//! The image library (crates/anvil-image) stores every image as a raw disk
//! plus a zero map (`<sha256>.zeromap`: aligned ranges that are all zeros);
//! the image is addressed by the sha256 of ALL its raw bytes. The writer
//! streams the image from a reader (an HTTP body from Anvil) through one
//! fixed buffer onto the disk, so memory does not grow with the image:
//!
//! - bytes outside the zero ranges are hashed and written;
//! - zero ranges are hashed as zeros but not written byte by byte. A disk
//!   that is being redeployed still holds its old contents, and a deployed
//!   machine must read zeros there (filesystems in the image assume their
//!   free blocks read as zeros, users expect no data of the previous
//!   tenant), so "skipping" means asking the kernel to zero the range:
//!   `BLKZEROOUT` on a block device (the drive's Write Zeroes or an unmap
//!   that guarantees zeros; the kernel itself writes zeros if the drive has
//!   neither), `fallocate(PUNCH_HOLE)` on a regular file; writing zeros only
//!   when neither is supported. (`BLKDISCARD` is not used: a discard does
//!   not promise that the blocks read back as zeros.)
//! - at the end the length and the sha256 are compared with the expected
//!   ones and the target is fsynced; a mismatch is a typed error, never a
//!   report of success.
//!
//! The target is opened with `O_DIRECT` where the kernel allows it: data
//! goes from the (aligned) buffer straight to the device instead of being
//! copied into the page cache and reclaimed later, which was most of the
//! writer's system CPU (docs/benchmarks.md, "Deployment: image writer").
//! Direct writes need offsets, lengths and buffer addresses aligned to the
//! device's logical block size, so the few unaligned pieces (an image end
//! that is not a multiple of it, a zero range edge inside a block) go
//! through the page cache on the same descriptor (`O_DIRECT` is switched
//! off for them with `fcntl`). Where `O_DIRECT` is refused (at open, or
//! `EINVAL` on the first direct write) the writer stays buffered and logs
//! it. The final fsync stays: `O_DIRECT` bypasses the page cache, not the
//! drive's write cache.
//!
//! Two stream layouts: the whole raw disk ([`StreamLayout::Full`], what
//! `StoredImage::raw_reader` gives; the zero ranges are read, checked to be
//! zeros and not written), or only the bytes outside the zero ranges in
//! order ([`StreamLayout::NonZeroOnly`], what `StoredImage::for_each_nonzero`
//! gives; the network then carries no zeros at all).
//!
//! Retrying is the caller's job; [`write_image_with_retries`] does it for
//! the deploy step: up to [`MAX_ATTEMPTS`], re-opening the stream each time.

use std::alloc::{self, Layout};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};

/// The one data buffer of a write, whatever the image size. 1 MiB: large
/// enough that syscalls cost nothing next to the copy, small enough for a
/// ramdisk in 256 MB of RAM.
pub const BUFFER_LEN: usize = 1 << 20;
/// Alignment of the data buffer and of [`ZEROS`]: the largest logical
/// block size `O_DIRECT` is used with (block devices with larger sectors,
/// if any exist, are written buffered).
const BUFFER_ALIGN: usize = 4096;
/// `O_DIRECT` alignment assumed for a regular file standing in for a disk:
/// its file system's block device is not at hand, and 4096 is a multiple
/// of every logical block size up to the page size. A file system that
/// wants more answers `EINVAL` and the write falls back to buffered.
const FILE_DIRECT_ALIGN: u64 = 4096;
/// Attempts of [`write_image_with_retries`] (issue #7: "retries up to 3 times").
pub const MAX_ATTEMPTS: u32 = 3;
/// Zeros hashed for zero ranges that are not in the stream, and written
/// where the kernel cannot zero a range itself.
/// Aligned so that slices of it can be written with `O_DIRECT`.
static ZEROS: AlignedZeros = AlignedZeros([0; 64 * 1024]);

#[repr(C, align(4096))]
struct AlignedZeros([u8; 64 * 1024]);

/// The layout of the write's one data buffer. Checked when compiling (a
/// bad size or alignment fails the build), so allocating it at run time
/// has nothing left to check.
const BUFFER_LAYOUT: Layout = match Layout::from_size_align(BUFFER_LEN, BUFFER_ALIGN) {
    Ok(layout) => layout,
    Err(_) => panic!("BUFFER_LEN and BUFFER_ALIGN make no allocation layout"),
};
const _: () = assert!(BUFFER_LEN > 0, "alloc_zeroed needs a non-zero size");

/// The write's one data buffer ([`BUFFER_LAYOUT`]: `BUFFER_LEN` bytes
/// aligned to [`BUFFER_ALIGN`] for `O_DIRECT`; a `Vec<u8>` only promises
/// 1-byte alignment).
struct AlignedBuf {
    ptr: NonNull<u8>,
}

impl AlignedBuf {
    fn new() -> AlignedBuf {
        // SAFETY: BUFFER_LAYOUT has a non-zero size (checked at compile time).
        let ptr = unsafe { alloc::alloc_zeroed(BUFFER_LAYOUT) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(BUFFER_LAYOUT));
        AlignedBuf { ptr }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to BUFFER_LEN initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), BUFFER_LEN) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), BUFFER_LEN) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), BUFFER_LAYOUT) };
    }
}

const ZEROMAP_MAGIC: &[u8; 8] = b"ANVZMAP1";

// linux/fs.h ioctls; not in the libc crate for every target. `_IO(0x12, n)`
// and `_IOR(0x12, 114, u64)` have these values on x86_64 and aarch64.
const BLKSSZGET: u64 = 0x1268;
const BLKZEROOUT: u64 = 0x127f;
const BLKGETSIZE64: u64 = 0x8008_1272;

/// Why a write failed. [`WriteError::is_retryable`] tells the transfer's
/// faults (worth another attempt) from the target's and the caller's.
#[derive(Debug)]
pub enum WriteError {
    /// The target could not be opened (a block device in use, e.g.
    /// mounted, is refused: it is opened with `O_EXCL`).
    Open { path: PathBuf, source: io::Error },
    /// Reading, seeking, writing, zeroing or syncing the target failed.
    Target {
        what: &'static str,
        offset: u64,
        source: io::Error,
    },
    /// The target block device is smaller than the image.
    TargetTooSmall { size: u64, needed: u64 },
    /// The image stream failed (connection reset, HTTP error, …).
    Stream { offset: u64, source: io::Error },
    /// The stream ended before the image did.
    Truncated { expected: u64, got: u64 },
    /// The stream had more bytes than the image.
    TooLong { expected: u64 },
    /// The stream had non-zero bytes where the zero map says zeros.
    NotZero { offset: u64 },
    /// The whole image arrived but its sha256 is not the expected one.
    ChecksumMismatch { expected: String, actual: String },
    /// The zero map is malformed or does not belong to this image.
    BadZeroMap(String),
    /// The expected sha256 is not 64 hex digits.
    BadDigest(String),
}

impl WriteError {
    /// True for faults of the transfer, which another attempt with a fresh
    /// stream may not have; false for the target's and the caller's.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            WriteError::Stream { .. }
                | WriteError::Truncated { .. }
                | WriteError::TooLong { .. }
                | WriteError::NotZero { .. }
                | WriteError::ChecksumMismatch { .. }
        )
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Open { path, source } => {
                write!(f, "cannot open {}: {source}", path.display())
            }
            WriteError::Target {
                what,
                offset,
                source,
            } => write!(f, "target: {what} at byte {offset}: {source}"),
            WriteError::TargetTooSmall { size, needed } => write!(
                f,
                "target disk holds {size} bytes, the image needs {needed}"
            ),
            WriteError::Stream { offset, source } => {
                write!(f, "image stream failed at byte {offset}: {source}")
            }
            WriteError::Truncated { expected, got } => {
                write!(f, "image stream ended after {got} of {expected} bytes")
            }
            WriteError::TooLong { expected } => {
                write!(
                    f,
                    "image stream has more than the expected {expected} bytes"
                )
            }
            WriteError::NotZero { offset } => write!(
                f,
                "image stream has data at byte {offset}, inside a range the zero map says is zeros"
            ),
            WriteError::ChecksumMismatch { expected, actual } => write!(
                f,
                "sha256 mismatch: the image written has {actual}, expected {expected}"
            ),
            WriteError::BadZeroMap(why) => write!(f, "bad zero map: {why}"),
            WriteError::BadDigest(d) => write!(f, "expected sha256 {d:?} is not 64 hex digits"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Open { source, .. }
            | WriteError::Target { source, .. }
            | WriteError::Stream { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The zero ranges of an image: sorted, disjoint, non-empty, inside the
/// raw size. 16 bytes per range (a map at 64 KiB granularity has at most
/// one range per 128 KiB of image, typically a few hundred in all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZeroRanges {
    raw_size: u64,
    ranges: Vec<(u64, u64)>,
}

impl ZeroRanges {
    /// Validated `(start, len)` ranges of an image of `raw_size` bytes.
    pub fn new(raw_size: u64, ranges: Vec<(u64, u64)>) -> Result<Self, WriteError> {
        let mut last_end: Option<u64> = None;
        for &(start, len) in &ranges {
            let end = start
                .checked_add(len)
                .ok_or_else(|| WriteError::BadZeroMap(format!("range {start}+{len} overflows")))?;
            if len == 0 || end > raw_size || last_end.is_some_and(|e| start < e) {
                return Err(WriteError::BadZeroMap(format!(
                    "range {start}+{len} empty, out of order or beyond {raw_size} bytes"
                )));
            }
            last_end = Some(end);
        }
        Ok(ZeroRanges { raw_size, ranges })
    }

    /// An image without zero ranges.
    // The tests and the benchmark use it; the deploy step does not.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn none(raw_size: u64) -> Self {
        ZeroRanges {
            raw_size,
            ranges: Vec::new(),
        }
    }

    /// Reads the image library's zero map format (crates/anvil-image
    /// zeromap.rs: `ANVZMAP1`, granularity, raw size, count, then
    /// `(start, len)` pairs, all u64 little-endian), checking it as that
    /// module's reader does, and that nothing follows the last range.
    pub fn parse(mut input: impl Read) -> Result<Self, WriteError> {
        let bad = |why: &str| WriteError::BadZeroMap(why.to_string());
        let mut head = [0u8; 32];
        input
            .read_exact(&mut head)
            .map_err(|_| bad("shorter than its header"))?;
        let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        let (granularity, raw_size, count) = (word(8), word(16), word(24));
        if &head[..8] != ZEROMAP_MAGIC || granularity == 0 {
            return Err(bad("bad magic or granularity"));
        }
        // Ranges are disjoint and not adjacent, so at most one per two
        // blocks: a larger count is a corrupt header, not a reason to
        // allocate.
        if count > raw_size.div_ceil(granularity) {
            return Err(bad("more ranges than the image has blocks"));
        }
        let mut ranges = Vec::new();
        for _ in 0..count {
            let mut pair = [0u8; 16];
            input.read_exact(&mut pair).map_err(|_| bad("truncated"))?;
            ranges.push((
                u64::from_le_bytes(pair[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(pair[8..].try_into().expect("8 bytes")),
            ));
        }
        let mut extra = [0u8; 1];
        if input.read(&mut extra).map_err(|_| bad("unreadable"))? != 0 {
            return Err(bad("bytes after the last range"));
        }
        ZeroRanges::new(raw_size, ranges)
    }

    #[allow(dead_code)] // part of the type's API; no caller needs it yet
    pub fn raw_size(&self) -> u64 {
        self.raw_size
    }

    // The tests and the benchmark use it; the deploy step does not.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    pub fn zero_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }
}

/// What the image stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamLayout {
    /// Every byte of the raw disk, zero ranges included.
    Full,
    /// Only the bytes outside the zero ranges, in disk order.
    NonZeroOnly,
}

/// How zero ranges are made zero on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroFill {
    /// `ioctl(BLKZEROOUT)` (block devices).
    BlockZeroOut,
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)` (regular files; reads as zeros,
    /// takes no space).
    PunchHole,
    /// Plain writes of zeros: the fallback when the kernel cannot do either.
    WriteZeros,
}

/// The target disk (or a regular file standing in for one).
pub struct Target {
    file: File,
    /// Block device: its size and logical sector size (BLKZEROOUT wants
    /// ranges aligned to it).
    block: Option<(u64, u64)>,
    zero_fill: ZeroFill,
    /// The alignment of `O_DIRECT` writes (offset, length, buffer
    /// address), or `None` when the target is written through the page
    /// cache (opened without `O_DIRECT`, or the kernel refused a direct
    /// write).
    direct: Option<u64>,
    /// Whether the descriptor has `O_DIRECT` set right now: it is cleared
    /// for the unaligned pieces and set again for the next aligned one.
    direct_on: bool,
}

impl Target {
    /// Opens an existing block device or file for writing. Never creates a
    /// file: a mistyped `/dev/sdX` must fail, not fill the ramdisk. A block
    /// device is opened with `O_EXCL`, which the kernel refuses while it
    /// is mounted or part of a RAID/LVM. Both are opened with `O_DIRECT`
    /// unless the kernel refuses it (see the module documentation).
    pub fn open(path: &Path) -> Result<Target, WriteError> {
        let open_err = |source| WriteError::Open {
            path: path.to_path_buf(),
            source,
        };
        let is_block = std::fs::metadata(path)
            .map_err(open_err)?
            .file_type()
            .is_block_device();
        let file = open_direct_or_buffered(path, |direct| {
            let mut flags = if is_block { libc::O_EXCL } else { 0 };
            if direct {
                flags |= libc::O_DIRECT;
            }
            OpenOptions::new()
                .write(true)
                .custom_flags(flags)
                .open(path)
        })
        .map_err(open_err)?;
        Target::new(file)
    }

    /// An already open target; block devices are recognised by fstat.
    pub fn new(file: File) -> Result<Target, WriteError> {
        let meta = file.metadata().map_err(|source| WriteError::Target {
            what: "fstat",
            offset: 0,
            source,
        })?;
        if !meta.file_type().is_block_device() {
            let direct_on = fd_is_direct(&file)?;
            return Ok(Target {
                file,
                block: None,
                zero_fill: ZeroFill::PunchHole,
                direct: direct_on.then_some(FILE_DIRECT_ALIGN),
                direct_on,
            });
        }
        let ioctl_err = |what| {
            move |source| WriteError::Target {
                what,
                offset: 0,
                source,
            }
        };
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) } != 0 {
            return Err(ioctl_err("BLKGETSIZE64")(io::Error::last_os_error()));
        }
        let mut sector: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the pointer.
        if unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                BLKSSZGET as _,
                &mut sector as *mut libc::c_int,
            )
        } != 0
        {
            return Err(ioctl_err("BLKSSZGET")(io::Error::last_os_error()));
        }
        let sector = sector.max(512) as u64;
        let direct_on = fd_is_direct(&file)?;
        // Larger or odd sector sizes (none known) are written buffered
        // rather than trusted to fit the buffer's alignment.
        let direct = (direct_on && sector.is_power_of_two() && sector <= BUFFER_ALIGN as u64)
            .then_some(sector);
        Ok(Target {
            file,
            block: Some((size, sector)),
            zero_fill: ZeroFill::BlockZeroOut,
            direct,
            direct_on,
        })
    }

    /// True while aligned data goes to the device with `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Overrides the `O_DIRECT` alignment, to make direct writes that the
    /// kernel refuses (alignment 1) and see the fallback.
    #[cfg(test)]
    fn with_direct_align(mut self, align: u64) -> Target {
        if self.direct.is_some() {
            self.direct = Some(align);
        }
        self
    }

    /// How far `offset` is past the last `O_DIRECT` alignment boundary:
    /// data for `offset` goes this far into the (aligned) buffer, so that
    /// its aligned part starts at an aligned address.
    fn skew(&self, offset: u64) -> usize {
        self.direct.map_or(0, |a| (offset % a) as usize)
    }

    fn set_direct(&mut self, on: bool) -> Result<(), WriteError> {
        if self.direct_on == on {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let err = |source| WriteError::Target {
            what: "fcntl(O_DIRECT)",
            offset: 0,
            source,
        };
        // SAFETY: F_GETFL/F_SETFL take no pointers.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        self.direct_on = on;
        Ok(())
    }

    /// Writes `bytes` at `offset`: the aligned middle with `O_DIRECT`, the
    /// unaligned head and tail (if any) through the page cache. For the
    /// middle to be aligned in memory too, the caller places the bytes at
    /// an address congruent to `offset` modulo the alignment (see
    /// [`Target::skew`]); otherwise the kernel refuses the direct write
    /// and this falls back to buffered writes for good.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), WriteError> {
        let Some(align) = self.direct else {
            return self.write_buffered(offset, bytes);
        };
        let head = ((align - offset % align) % align).min(bytes.len() as u64) as usize;
        self.write_buffered(offset, &bytes[..head])?;
        let (offset, bytes) = (offset + head as u64, &bytes[head..]);
        let middle = bytes.len() / align as usize * align as usize;
        if middle > 0 {
            self.set_direct(true)?;
            match self.file.write_all_at(&bytes[..middle], offset) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    crate::log!(
                        "O_DIRECT write of {middle} bytes at {offset} refused ({e}); writing through the page cache from now on"
                    );
                    self.direct = None;
                    // Rewrites the whole middle: a partly done direct
                    // write left nothing that the same bytes do not cover.
                    self.write_buffered(offset, &bytes[..middle])?;
                }
                Err(e) => return Err(Target::err("write", offset)(e)),
            }
        }
        self.write_buffered(offset + middle as u64, &bytes[middle..])
    }

    fn write_buffered(&mut self, offset: u64, bytes: &[u8]) -> Result<(), WriteError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.set_direct(false)?;
        self.file
            .write_all_at(bytes, offset)
            .map_err(Target::err("write", offset))
    }

    /// Overrides how zero ranges are zeroed (e.g. [`ZeroFill::WriteZeros`]
    /// for a file system without hole punching, or to measure).
    // The tests and the benchmark use it; the deploy step does not.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn with_zero_fill(mut self, zero_fill: ZeroFill) -> Target {
        self.zero_fill = zero_fill;
        self
    }

    fn err(what: &'static str, offset: u64) -> impl FnOnce(io::Error) -> WriteError {
        move |source| WriteError::Target {
            what,
            offset,
            source,
        }
    }

    /// Makes `[offset, offset + len)` read as zeros. Falls back to writing
    /// zeros for good when the kernel says the fast way is unsupported.
    fn zero(&mut self, offset: u64, len: u64) -> Result<(), WriteError> {
        let end = offset + len;
        match self.zero_fill {
            ZeroFill::BlockZeroOut => {
                let sector = self.block.map_or(512, |b| b.1);
                let (start, stop) = (offset.next_multiple_of(sector), end / sector * sector);
                if start < stop {
                    let range: [u64; 2] = [start, stop - start];
                    // SAFETY: BLKZEROOUT reads two u64 (start, length).
                    let rc = unsafe {
                        libc::ioctl(self.file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr())
                    };
                    if rc != 0 {
                        return self.fall_back(io::Error::last_os_error(), offset, len);
                    }
                } else {
                    return self.write_zeros(offset, end);
                }
                // The unaligned edges (only the image's end, in practice).
                self.write_zeros(offset, start)?;
                self.write_zeros(stop, end)
            }
            ZeroFill::PunchHole => {
                // SAFETY: fallocate takes no pointers.
                let rc = unsafe {
                    libc::fallocate(
                        self.file.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        offset as libc::off_t,
                        len as libc::off_t,
                    )
                };
                if rc != 0 {
                    return self.fall_back(io::Error::last_os_error(), offset, len);
                }
                Ok(())
            }
            ZeroFill::WriteZeros => self.write_zeros(offset, end),
        }
    }

    fn fall_back(&mut self, e: io::Error, offset: u64, len: u64) -> Result<(), WriteError> {
        let unsupported = matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::ENOSYS)
        );
        if !unsupported {
            return Err(Target::err("zeroing a range", offset)(e));
        }
        crate::log!(
            "{:?} unsupported here ({e}); writing zeros instead",
            self.zero_fill
        );
        self.zero_fill = ZeroFill::WriteZeros;
        self.write_zeros(offset, offset + len)
    }

    fn write_zeros(&mut self, mut from: u64, to: u64) -> Result<(), WriteError> {
        while from < to {
            // Slices of ZEROS start at the skew too, so that whole blocks
            // of zeros can go with O_DIRECT.
            let skew = self.skew(from);
            let n = ((to - from) as usize).min(ZEROS.0.len() - skew);
            self.write_at(from, &ZEROS.0[skew..skew + n])?;
            from += n as u64;
        }
        Ok(())
    }
}

/// Opens the target with `open(true)` (`O_DIRECT`), and when the kernel
/// refuses that flag (`EINVAL`: a file system without direct I/O) with
/// `open(false)`, saying so in the log. Other errors are the open's.
fn open_direct_or_buffered(
    path: &Path,
    mut open: impl FnMut(bool) -> io::Result<File>,
) -> io::Result<File> {
    match open(true) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            crate::log!(
                "{}: O_DIRECT refused ({e}); writing through the page cache",
                path.display()
            );
            open(false)
        }
        other => other,
    }
}

/// Whether `file` was opened with `O_DIRECT`.
fn fd_is_direct(file: &File) -> Result<bool, WriteError> {
    // SAFETY: F_GETFL takes no pointers.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(Target::err("fcntl(F_GETFL)", 0)(io::Error::last_os_error()));
    }
    Ok(flags & libc::O_DIRECT != 0)
}

/// Where a write stands, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the image done (written or zeroed).
    pub done: u64,
    pub total: u64,
    pub written: u64,
    pub skipped: u64,
}

/// A successful write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteReport {
    /// Bytes copied from the stream onto the target.
    pub bytes_written: u64,
    /// Bytes of zero ranges, zeroed without copying.
    pub bytes_skipped: u64,
    /// Lower-case hex sha256 of the whole raw image, equal to the expected one.
    pub sha256: String,
    pub elapsed: Duration,
    /// How zero ranges were zeroed (after any fallback).
    pub zero_fill: ZeroFill,
    /// True when the aligned data went with `O_DIRECT` to the end; false
    /// when the target was written through the page cache (the kernel
    /// refused `O_DIRECT` at open or at a write).
    pub direct_io: bool,
    /// The data buffer used: [`BUFFER_LEN`] whatever the image size.
    pub buffer_len: usize,
}

fn check_digest(expected: &str) -> Result<String, WriteError> {
    let d = expected.to_ascii_lowercase();
    if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(WriteError::BadDigest(expected.to_string()));
    }
    Ok(d)
}

/// True when every byte is zero; folds 4 KiB at a time so the compiler
/// vectorises it (a byte-by-byte search is several times slower).
fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(stream: &mut impl Read, buf: &mut [u8], offset: u64) -> Result<usize, WriteError> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(WriteError::Stream {
                    offset: offset + got as u64,
                    source,
                });
            }
        }
    }
    Ok(got)
}

/// Streams one image onto `target`: see the module documentation. The
/// stream position and the disk position are tracked apart, since a
/// [`StreamLayout::NonZeroOnly`] stream omits the zero ranges.
/// `progress` is called after every buffer and every zero range.
pub fn write_image(
    mut stream: impl Read,
    layout: StreamLayout,
    zero_map: &ZeroRanges,
    target: &mut Target,
    expected_sha256: &str,
    expected_len: u64,
    mut progress: impl FnMut(&Progress),
) -> Result<WriteReport, WriteError> {
    let started = Instant::now();
    let expected_sha256 = check_digest(expected_sha256)?;
    if zero_map.raw_size != expected_len {
        return Err(WriteError::BadZeroMap(format!(
            "it describes {} bytes, the image has {expected_len}",
            zero_map.raw_size
        )));
    }
    if let Some((size, _)) = target.block
        && size < expected_len
    {
        return Err(WriteError::TargetTooSmall {
            size,
            needed: expected_len,
        });
    }
    let stream_len = match layout {
        StreamLayout::Full => expected_len,
        StreamLayout::NonZeroOnly => expected_len - zero_map.zero_bytes(),
    };
    let mut buf = AlignedBuf::new();
    let mut hasher = Context::new(&SHA256);
    let mut at = Progress {
        done: 0,
        total: expected_len,
        written: 0,
        skipped: 0,
    };
    // Bytes taken from the stream so far (for error messages).
    let mut streamed = 0u64;
    let mut zeros = zero_map.ranges.iter().peekable();
    while at.done < expected_len {
        let pos = at.done;
        match zeros.peek() {
            Some(&&(start, len)) if start == pos => {
                zeros.next();
                if layout == StreamLayout::Full {
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(BUFFER_LEN as u64) as usize;
                        let got = read_full(&mut stream, &mut buf[..n], streamed)?;
                        if got < n {
                            return Err(WriteError::Truncated {
                                expected: stream_len,
                                got: streamed + got as u64,
                            });
                        }
                        if !is_zero(&buf[..n]) {
                            let i = buf[..n].iter().position(|&b| b != 0).unwrap_or(0);
                            return Err(WriteError::NotZero {
                                offset: streamed + i as u64,
                            });
                        }
                        hasher.update(&buf[..n]);
                        streamed += n as u64;
                        left -= n as u64;
                    }
                } else {
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(ZEROS.0.len() as u64) as usize;
                        hasher.update(&ZEROS.0[..n]);
                        left -= n as u64;
                    }
                }
                target.zero(start, len)?;
                at.skipped += len;
                at.done += len;
                progress(&at);
            }
            next => {
                let stop = next.map_or(expected_len, |r| r.0);
                while at.done < stop {
                    // A run that starts off an alignment boundary is read
                    // that far into the buffer (only its first chunk), so
                    // that its aligned part sits at an aligned address.
                    let skew = target.skew(at.done);
                    let n = (stop - at.done).min((BUFFER_LEN - skew) as u64) as usize;
                    let chunk = &mut buf[skew..skew + n];
                    let got = read_full(&mut stream, chunk, streamed)?;
                    if got < n {
                        return Err(WriteError::Truncated {
                            expected: stream_len,
                            got: streamed + got as u64,
                        });
                    }
                    hasher.update(&*chunk);
                    target.write_at(at.done, chunk)?;
                    streamed += n as u64;
                    at.written += n as u64;
                    at.done += n as u64;
                    progress(&at);
                }
            }
        }
    }
    if read_full(&mut stream, &mut buf[..1], streamed)? != 0 {
        return Err(WriteError::TooLong {
            expected: stream_len,
        });
    }
    let actual = hex(hasher.finish().as_ref());
    if actual != expected_sha256 {
        return Err(WriteError::ChecksumMismatch {
            expected: expected_sha256,
            actual,
        });
    }
    if target.block.is_none() {
        // A file standing in for a disk is as long as the image, even when
        // it ends in a zero range that was punched, not written.
        let len = target
            .file
            .metadata()
            .map_err(Target::err("fstat", expected_len))?
            .len();
        if len < expected_len {
            target
                .file
                .set_len(expected_len)
                .map_err(Target::err("extend", len))?;
        }
    }
    target
        .file
        .sync_all()
        .map_err(Target::err("fsync", expected_len))?;
    Ok(WriteReport {
        bytes_written: at.written,
        bytes_skipped: at.skipped,
        sha256: actual,
        elapsed: started.elapsed(),
        zero_fill: target.zero_fill,
        direct_io: target.is_direct(),
        buffer_len: buf.len(),
    })
}

/// One attempt of [`write_image_with_retries`], for the step's progress
/// reports and the machine's events.
#[derive(Debug)]
pub struct Attempt<'a> {
    /// 1-based.
    pub number: u32,
    pub outcome: &'a Result<WriteReport, WriteError>,
}

/// The deploy step's write: up to [`MAX_ATTEMPTS`] attempts, each with a
/// fresh stream from `open_stream(attempt_number)`, stopping at the first
/// success or at an error that another attempt cannot fix (the target's,
/// or a zero map that does not fit). Returns the last error, with the
/// number of attempts made, when every attempt failed.
#[allow(clippy::too_many_arguments)]
pub fn write_image_with_retries<R: Read>(
    mut open_stream: impl FnMut(u32) -> io::Result<R>,
    layout: StreamLayout,
    zero_map: &ZeroRanges,
    target: &mut Target,
    expected_sha256: &str,
    expected_len: u64,
    mut on_attempt: impl FnMut(&Attempt<'_>),
    mut progress: impl FnMut(u32, &Progress),
) -> Result<WriteReport, (u32, WriteError)> {
    let mut number = 0;
    loop {
        number += 1;
        let outcome = open_stream(number)
            .map_err(|source| WriteError::Stream { offset: 0, source })
            .and_then(|stream| {
                write_image(
                    stream,
                    layout,
                    zero_map,
                    target,
                    expected_sha256,
                    expected_len,
                    |p| progress(number, p),
                )
            });
        on_attempt(&Attempt {
            number,
            outcome: &outcome,
        });
        match outcome {
            Ok(report) => return Ok(report),
            Err(e) if e.is_retryable() && number < MAX_ATTEMPTS => {}
            Err(e) => return Err((number, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::io::Cursor;

    const K64: u64 = 64 * 1024;

    /// Deterministic bytes without zero runs (xorshift; no `rand` needed).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u8) | 1
            })
            .collect()
    }

    /// An image of `len` bytes of noise with the given ranges zeroed, its
    /// zero map in the image library's own format (written by
    /// anvil-image's builder, so the two crates agree on it), and sha256.
    fn image(len: usize, holes: &[(u64, u64)]) -> (Vec<u8>, ZeroRanges, String) {
        let mut data = noise(len, len as u64);
        for &(s, l) in holes {
            data[s as usize..(s + l) as usize].fill(0);
        }
        let mut b =
            anvil_image::zeromap::ZeroMapBuilder::new(Cursor::new(Vec::new()), K64).unwrap();
        b.data(&data).unwrap();
        let (map, stats) = b.finish().unwrap();
        let zeros = ZeroRanges::parse(Cursor::new(map.into_inner())).unwrap();
        assert_eq!(zeros.zero_bytes(), stats.zero_bytes);
        let sha = hex(&Sha256::digest(&data));
        (data, zeros, sha)
    }

    fn nonzero_stream(data: &[u8], zeros: &ZeroRanges) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0;
        for &(s, l) in zeros.ranges() {
            out.extend_from_slice(&data[pos..s as usize]);
            pos = (s + l) as usize;
        }
        out.extend_from_slice(&data[pos..]);
        out
    }

    /// A temporary target pre-filled with `fill` bytes of 0xff: the old
    /// contents of a disk being redeployed.
    fn dirty_target(fill: usize) -> (tempfile::NamedTempFile, Target) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![0xffu8; fill]).unwrap();
        let t = Target::open(f.path()).unwrap();
        (f, t)
    }

    // Zero holes: at the start, in the middle (several blocks), and a tail
    // ending at the (unaligned) image end.
    const LEN: usize = 3 * 1024 * 1024 + 1000;
    fn holes() -> Vec<(u64, u64)> {
        vec![
            (0, K64),
            (5 * K64, 7 * K64),
            (40 * K64, LEN as u64 - 40 * K64),
        ]
    }

    #[test]
    fn full_stream_with_holes_reads_back_equal_over_old_data() {
        for fill in [ZeroFill::PunchHole, ZeroFill::WriteZeros] {
            let (data, zeros, sha) = image(LEN, &holes());
            assert_eq!(zeros.ranges().len(), 3);
            let (file, target) = dirty_target(LEN + 4096);
            let mut target = target.with_zero_fill(fill);
            let mut calls = 0;
            let report = write_image(
                Cursor::new(&data),
                StreamLayout::Full,
                &zeros,
                &mut target,
                &sha,
                LEN as u64,
                |p| {
                    calls += 1;
                    assert_eq!(p.done, p.written + p.skipped);
                },
            )
            .unwrap();
            let back = std::fs::read(file.path()).unwrap();
            assert_eq!(&back[..LEN], &data[..], "{fill:?}");
            // The byte past the image is the old disk's, untouched.
            assert_eq!(back[LEN], 0xff);
            assert_eq!(report.sha256, sha);
            assert_eq!(report.bytes_skipped, zeros.zero_bytes());
            assert_eq!(report.bytes_written + report.bytes_skipped, LEN as u64);
            assert_eq!(report.zero_fill, fill);
            assert!(calls >= 4, "progress called {calls} times");
        }
    }

    #[test]
    fn nonzero_only_stream_and_a_short_target_file() {
        let (data, zeros, sha) = image(LEN, &holes());
        let stream = nonzero_stream(&data, &zeros);
        assert_eq!(stream.len() as u64, LEN as u64 - zeros.zero_bytes());
        // The old file is shorter than the image and ends inside a hole.
        let (file, mut target) = dirty_target(6 * K64 as usize);
        let report = write_image(
            Cursor::new(&stream),
            StreamLayout::NonZeroOnly,
            &zeros,
            &mut target,
            &sha,
            LEN as u64,
            |_| {},
        )
        .unwrap();
        assert_eq!(std::fs::read(file.path()).unwrap(), data);
        assert_eq!(report.bytes_written, stream.len() as u64);
    }

    #[test]
    fn zero_ranges_of_a_dirty_target_read_as_zeros() {
        let (data, zeros, sha) = image(LEN, &holes());
        let (file, mut target) = dirty_target(LEN);
        write_image(
            Cursor::new(&data),
            StreamLayout::Full,
            &zeros,
            &mut target,
            &sha,
            LEN as u64,
            |_| {},
        )
        .unwrap();
        let back = std::fs::read(file.path()).unwrap();
        for &(s, l) in zeros.ranges() {
            assert!(
                back[s as usize..(s + l) as usize].iter().all(|&b| b == 0),
                "range {s}+{l} still holds old bytes"
            );
        }
    }

    #[test]
    fn checksum_mismatch_fails_and_is_retryable() {
        let (mut data, zeros, sha) = image(LEN, &holes());
        // One flipped bit outside the holes: corrupted in transfer or store.
        data[2 * K64 as usize + 17] ^= 0x40;
        let (_file, mut target) = dirty_target(0);
        let err = write_image(
            Cursor::new(&data),
            StreamLayout::Full,
            &zeros,
            &mut target,
            &sha,
            LEN as u64,
            |_| {},
        )
        .unwrap_err();
        match &err {
            WriteError::ChecksumMismatch { expected, actual } => {
                assert_eq!(expected, &sha);
                assert_eq!(actual, &hex(&Sha256::digest(&data)));
            }
            other => panic!("expected a checksum mismatch, got {other}"),
        }
        assert!(err.is_retryable());
        assert!(err.to_string().contains("sha256 mismatch"));
    }

    #[test]
    fn truncated_long_and_lying_streams_fail() {
        let (data, zeros, sha) = image(LEN, &holes());
        let run = |stream: &[u8], layout| {
            let (_file, mut target) = dirty_target(0);
            write_image(
                Cursor::new(stream),
                layout,
                &zeros,
                &mut target,
                &sha,
                LEN as u64,
                |_| {},
            )
            .unwrap_err()
        };
        // Cut inside data, and inside the final zero range.
        let e = run(&data[..2 * K64 as usize], StreamLayout::Full);
        assert!(
            matches!(e, WriteError::Truncated { got, .. } if got == 2 * K64),
            "{e}"
        );
        let e = run(&data[..LEN - 10], StreamLayout::Full);
        assert!(matches!(e, WriteError::Truncated { .. }), "{e}");
        let sparse = nonzero_stream(&data, &zeros);
        let e = run(&sparse[..sparse.len() - 1], StreamLayout::NonZeroOnly);
        assert!(matches!(e, WriteError::Truncated { .. }), "{e}");
        // One byte too many.
        let mut long = data.clone();
        long.push(0);
        let e = run(&long, StreamLayout::Full);
        assert!(matches!(e, WriteError::TooLong { .. }), "{e}");
        // Data where the map promises zeros (a stale or foreign map).
        let mut lying = data.clone();
        lying[6 * K64 as usize] = 1;
        let e = run(&lying, StreamLayout::Full);
        assert!(
            matches!(e, WriteError::NotZero { offset } if offset == 6 * K64),
            "{e}"
        );
        // A stream that fails outright.
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            }
        }
        let (_file, mut target) = dirty_target(0);
        let e = write_image(
            Broken,
            StreamLayout::Full,
            &zeros,
            &mut target,
            &sha,
            LEN as u64,
            |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, WriteError::Stream { .. }) && e.is_retryable());
    }

    #[test]
    fn caller_mistakes_are_not_retryable() {
        let (data, zeros, sha) = image(LEN, &holes());
        let (_file, mut target) = dirty_target(0);
        let mut write = |sha: &str, len: u64| {
            write_image(
                Cursor::new(&data),
                StreamLayout::Full,
                &zeros,
                &mut target,
                sha,
                len,
                |_| {},
            )
            .unwrap_err()
        };
        let e = write("abc", LEN as u64);
        assert!(matches!(e, WriteError::BadDigest(_)) && !e.is_retryable());
        let e = write(&sha, LEN as u64 + 1);
        assert!(matches!(e, WriteError::BadZeroMap(_)) && !e.is_retryable());
    }

    #[test]
    fn the_buffer_does_not_grow_with_the_image() {
        for len in [100_000usize, 40 << 20] {
            let (data, zeros, sha) = image(len, &[]);
            let (_file, mut target) = dirty_target(0);
            let report = write_image(
                Cursor::new(&data),
                StreamLayout::Full,
                &zeros,
                &mut target,
                &sha,
                len as u64,
                |_| {},
            )
            .unwrap();
            // The only per-write allocation is this buffer (by design: no
            // other Vec in write_image, the zero hashing uses a static).
            assert_eq!(report.buffer_len, BUFFER_LEN);
        }
    }

    #[test]
    fn retries_stop_after_three_attempts() {
        let (mut bad, zeros, sha) = image(LEN, &holes());
        bad[K64 as usize + 100] ^= 1;
        let (_file, mut target) = dirty_target(0);
        let mut opened = Vec::new();
        let mut failures = 0;
        let (attempts, err) = write_image_with_retries(
            |n| {
                opened.push(n);
                Ok(Cursor::new(bad.clone()))
            },
            StreamLayout::Full,
            &zeros,
            &mut target,
            &sha,
            LEN as u64,
            |a| {
                assert!(a.outcome.is_err());
                failures += 1;
            },
            |_, _| {},
        )
        .unwrap_err();
        assert_eq!(attempts, MAX_ATTEMPTS);
        assert_eq!(opened, vec![1, 2, 3]);
        assert_eq!(failures, 3);
        assert!(matches!(err, WriteError::ChecksumMismatch { .. }));
    }

    #[test]
    fn retries_succeed_when_a_later_attempt_does() {
        let (good, zeros, sha) = image(LEN, &holes());
        let mut bad = good.clone();
        bad[LEN / 3] ^= 0x80;
        let (file, mut target) = dirty_target(LEN);
        let mut outcomes = Vec::new();
        let report = write_image_with_retries(
            |n| match n {
                1 => Err(io::Error::new(io::ErrorKind::ConnectionRefused, "refused")),
                2 => Ok(Cursor::new(bad.clone())),
                _ => Ok(Cursor::new(good.clone())),
            },
            StreamLayout::Full,
            &zeros,
            &mut target,
            &sha,
            LEN as u64,
            |a| outcomes.push((a.number, a.outcome.is_ok())),
            |_, _| {},
        )
        .unwrap();
        assert_eq!(outcomes, vec![(1, false), (2, false), (3, true)]);
        assert_eq!(report.sha256, sha);
        assert_eq!(std::fs::read(file.path()).unwrap(), good);
    }

    #[test]
    fn retries_give_up_at_once_on_a_target_error() {
        let (data, zeros, sha) = image(LEN, &holes());
        // A read-only handle: the first write fails, a retry would too.
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut target = Target::new(File::open(f.path()).unwrap())
            .unwrap()
            .with_zero_fill(ZeroFill::WriteZeros);
        let mut opened = 0;
        let (attempts, err) = write_image_with_retries(
            |_| {
                opened += 1;
                Ok(Cursor::new(data.clone()))
            },
            StreamLayout::Full,
            &zeros,
            &mut target,
            &sha,
            LEN as u64,
            |_| {},
            |_, _| {},
        )
        .unwrap_err();
        assert_eq!((attempts, opened), (1, 1));
        assert!(matches!(err, WriteError::Target { .. }), "{err}");
    }

    /// An image of `len` bytes of noise, zeros in `ranges` (any offsets,
    /// not only the image library's 64 KiB blocks), and its sha256.
    fn image_with_ranges(len: usize, ranges: &[(u64, u64)]) -> (Vec<u8>, ZeroRanges, String) {
        let mut data = noise(len, len as u64 ^ 0x5eed);
        for &(s, l) in ranges {
            data[s as usize..(s + l) as usize].fill(0);
        }
        let sha = hex(&Sha256::digest(&data));
        (
            data,
            ZeroRanges::new(len as u64, ranges.to_vec()).unwrap(),
            sha,
        )
    }

    /// Image shapes whose pieces do not fall on 4096-byte boundaries:
    /// the image end a multiple of 512 only, or not even that; zero ranges
    /// starting and ending inside a 512- or 4096-byte block; a data run of
    /// a few bytes between two zero ranges; and one longer than the buffer
    /// that starts off a boundary (its first chunk is read at a skew).
    fn unaligned_shapes() -> Vec<(usize, Vec<(u64, u64)>)> {
        let m = BUFFER_LEN as u64;
        vec![
            (100 * 4096 + 512, vec![]),
            (
                100 * 4096 + 512,
                vec![(4096 + 512, 3 * 4096), (90 * 4096, 10 * 4096 + 512)],
            ),
            (
                3 * BUFFER_LEN + 1000,
                vec![
                    (1000, 5000),
                    (8192 + 512, 100),
                    (8192 + 620, 7),
                    (64 * 1024 - 3, 4096 + 6),
                    (m + 4095, m + 2),
                ],
            ),
            (2 * BUFFER_LEN + 4096 * 3 + 1, vec![(2 * m, 4096 * 3 + 1)]),
        ]
    }

    /// Writes every shape both ways (full and non-zero-only stream) over
    /// old data with `zero_fills`, on a target from `open`, and checks the
    /// target reads back byte-identical to the image. Returns whether every
    /// write used O_DIRECT.
    fn write_shapes(open: &dyn Fn(usize) -> (PathBuf, Target), zero_fills: &[ZeroFill]) -> bool {
        let mut all_direct = true;
        for (len, ranges) in unaligned_shapes() {
            let (data, zeros, sha) = image_with_ranges(len, &ranges);
            for &fill in zero_fills {
                for layout in [StreamLayout::Full, StreamLayout::NonZeroOnly] {
                    let (path, target) = open(len);
                    let mut target = target.with_zero_fill(fill);
                    let stream = match layout {
                        StreamLayout::Full => data.clone(),
                        StreamLayout::NonZeroOnly => nonzero_stream(&data, &zeros),
                    };
                    let report = write_image(
                        Cursor::new(&stream),
                        layout,
                        &zeros,
                        &mut target,
                        &sha,
                        len as u64,
                        |_| {},
                    )
                    .unwrap_or_else(|e| panic!("{len} {ranges:?} {fill:?} {layout:?}: {e}"));
                    all_direct &= report.direct_io;
                    drop(target);
                    let back = std::fs::read(&path).unwrap();
                    assert!(
                        back[..len] == data[..],
                        "{len} {ranges:?} {fill:?} {layout:?}: read back differs"
                    );
                }
            }
        }
        all_direct
    }

    /// A file in `dir` filled with `len + 8192` bytes of 0xff (old data,
    /// also past the image's end), opened as a target.
    fn dirty_file_in(dir: &Path, len: usize) -> (PathBuf, Target) {
        let path = dir.join(format!("disk-{len}"));
        std::fs::write(&path, vec![0xffu8; len + 8192]).unwrap();
        let target = Target::open(&path).unwrap();
        (path, target)
    }

    #[test]
    fn unaligned_image_ends_and_zero_edges_read_back_equal_with_o_direct() {
        let dir = tempfile::tempdir().unwrap();
        let direct = Target::open(&dirty_file_in(dir.path(), 0).0)
            .unwrap()
            .is_direct();
        let all_direct = write_shapes(
            &|len| dirty_file_in(dir.path(), len),
            &[ZeroFill::PunchHole, ZeroFill::WriteZeros],
        );
        if direct {
            // The unaligned pieces went buffered without costing the rest
            // its O_DIRECT.
            assert!(all_direct, "a write fell back to the page cache");
        } else {
            eprintln!(
                "NOTE: {} refuses O_DIRECT; checked buffered writes only",
                dir.path().display()
            );
        }
    }

    #[test]
    fn unaligned_shapes_on_a_block_device_with_512_byte_sectors() {
        const DISK: usize = 8 << 20;
        let Some(disk) = Loop::dirty(DISK) else {
            return;
        };
        let probe = open_loop(&disk.dev);
        assert_eq!(probe.block.map(|b| b.1), Some(512));
        assert_eq!(probe.direct, Some(512));
        drop(probe);
        let dev = disk.dev.clone();
        let all_direct = write_shapes(
            &|_| {
                std::fs::write(&dev, vec![0xffu8; DISK]).unwrap();
                (dev.clone(), open_loop(&dev))
            },
            &[ZeroFill::BlockZeroOut, ZeroFill::WriteZeros],
        );
        assert!(all_direct);
    }

    #[test]
    fn o_direct_refused_at_open_falls_back_to_buffered_writes() {
        // tmpfs refused O_DIRECT before Linux 6.6 and accepts it since, so
        // the refusal is made here (EINVAL, what the kernel answers) to
        // exercise the fallback on any kernel; the writes then go to a
        // real tmpfs file.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let open = |len: usize| {
            let path = dir.path().join(format!("disk-{len}"));
            std::fs::write(&path, vec![0xffu8; len + 8192]).unwrap();
            let mut tried = Vec::new();
            let file = open_direct_or_buffered(&path, |direct| {
                tried.push(direct);
                if direct {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                OpenOptions::new().write(true).open(&path)
            })
            .unwrap();
            assert_eq!(tried, [true, false]);
            let target = Target::new(file).unwrap();
            assert!(!target.is_direct());
            (path, target)
        };
        assert!(!write_shapes(&open, &[ZeroFill::PunchHole]));
        // Other open errors are not taken for a refusal of O_DIRECT.
        let e = open_direct_or_buffered(Path::new("/nonexistent"), |_| {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        })
        .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        // And the real tmpfs, whichever way this kernel answers.
        let tmpfs = write_shapes(
            &|len| dirty_file_in(dir.path(), len),
            &[ZeroFill::PunchHole],
        );
        eprintln!(
            "tmpfs /dev/shm: O_DIRECT {}",
            if tmpfs { "used" } else { "refused" }
        );
    }

    #[test]
    fn o_direct_refused_at_a_write_falls_back_for_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (data, zeros, sha) = image_with_ranges(LEN, &[]);
        let (path, target) = dirty_file_in(dir.path(), LEN);
        if !target.is_direct() {
            eprintln!("SKIPPED: {} refuses O_DIRECT at open", dir.path().display());
            return;
        }
        // Alignment 1: the whole 1 MiB chunks (aligned offsets, aligned
        // buffer) go direct, the image's 1000-byte end does not fit the
        // kernel's rules and gets EINVAL.
        let mut target = target.with_direct_align(1);
        let report = write_image(
            Cursor::new(&data),
            StreamLayout::Full,
            &zeros,
            &mut target,
            &sha,
            LEN as u64,
            |_| {},
        )
        .unwrap();
        assert!(!report.direct_io);
        assert!(!target.is_direct());
        drop(target);
        assert_eq!(&std::fs::read(&path).unwrap()[..LEN], &data[..]);
    }

    #[test]
    fn open_never_creates_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("sdz");
        assert!(matches!(
            Target::open(&missing),
            Err(WriteError::Open { .. })
        ));
        assert!(!missing.exists());
    }

    /// A loop device over a temporary file, detached (by its own name) on drop.
    /// Opens a test's loop device, waiting out `EBUSY`: right after the
    /// test wrote the device and closed it, the host's udev probes it (a
    /// close after writing triggers that) and for a moment the exclusive
    /// open is refused. The agent's ramdisk runs no udev.
    fn open_loop(dev: &Path) -> Target {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Target::open(dev) {
                Err(WriteError::Open { source, .. })
                    if source.kind() == io::ErrorKind::ResourceBusy
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
    }

    struct Loop {
        dev: PathBuf,
        _backing: tempfile::NamedTempFile,
    }

    impl Loop {
        /// A loop device over `len` bytes of 0xff (old data a write must
        /// replace), or `None`, saying so, where loop devices cannot be made.
        fn dirty(len: usize) -> Option<Loop> {
            let backing = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(backing.path(), vec![0xffu8; len]).unwrap();
            let disk = Loop::attach(backing);
            if disk.is_none() {
                eprintln!("SKIPPED: cannot attach a loop device here (needs root)");
            }
            disk
        }

        /// `None` where loop devices cannot be made (not root, no
        /// /dev/loop-control, a container): the test then says so and
        /// checks nothing else.
        fn attach(backing: tempfile::NamedTempFile) -> Option<Loop> {
            let out = std::process::Command::new("losetup")
                .args(["--show", "-f"])
                .arg(backing.path())
                .output()
                .ok()?;
            if !out.status.success() {
                return None;
            }
            let dev = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
            Some(Loop {
                dev,
                _backing: backing,
            })
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .arg("-d")
                .arg(&self.dev)
                .status();
        }
    }

    #[test]
    fn block_device_gets_the_image_and_zeroed_ranges() {
        const DISK: usize = 8 << 20;
        let Some(disk) = Loop::dirty(DISK) else {
            return;
        };
        let (data, zeros, sha) = image(LEN, &holes());
        let mut target = open_loop(&disk.dev);
        assert_eq!(target.block.map(|b| b.0), Some(DISK as u64));
        assert_eq!(target.zero_fill, ZeroFill::BlockZeroOut);
        // O_EXCL: a second writer (or a mount) is refused while we hold it.
        assert!(matches!(
            Target::open(&disk.dev),
            Err(WriteError::Open { .. })
        ));
        let report = write_image(
            Cursor::new(&data),
            StreamLayout::Full,
            &zeros,
            &mut target,
            &sha,
            LEN as u64,
            |_| {},
        )
        .unwrap();
        assert_eq!(report.zero_fill, ZeroFill::BlockZeroOut);
        drop(target);
        let back = std::fs::read(&disk.dev).unwrap();
        assert_eq!(back.len(), DISK);
        assert_eq!(&back[..LEN], &data[..]);
        assert!(
            back[LEN..].iter().all(|&b| b == 0xff),
            "wrote past the image"
        );
        // An image larger than the disk is refused before any write.
        let big = LEN as u64 + DISK as u64;
        let mut target = open_loop(&disk.dev);
        let e = write_image(
            Cursor::new(&data),
            StreamLayout::Full,
            &ZeroRanges::none(big),
            &mut target,
            &sha,
            big,
            |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(e, WriteError::TargetTooSmall { size, .. } if size == DISK as u64),
            "{e}"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn zero_map_parser_rejects_damage() {
        let (_, zeros, _) = image(LEN, &holes());
        let mut map = Vec::new();
        map.extend_from_slice(ZEROMAP_MAGIC);
        for w in [K64, LEN as u64, zeros.ranges().len() as u64] {
            map.extend_from_slice(&w.to_le_bytes());
        }
        for &(s, l) in zeros.ranges() {
            map.extend_from_slice(&s.to_le_bytes());
            map.extend_from_slice(&l.to_le_bytes());
        }
        assert_eq!(ZeroRanges::parse(&map[..]).unwrap(), zeros);
        let bad = |bytes: &[u8]| ZeroRanges::parse(bytes).unwrap_err().to_string();
        assert!(bad(&map[..map.len() - 1]).contains("truncated"));
        assert!(bad(&[map.as_slice(), &[0]].concat()).contains("after the last"));
        let mut magic = map.clone();
        magic[0] = b'X';
        assert!(bad(&magic).contains("magic"));
        let mut huge = map.clone();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(bad(&huge).contains("more ranges"));
        // Second range moved before the first one's end.
        let mut order = map.clone();
        order[48..56].copy_from_slice(&0u64.to_le_bytes());
        assert!(bad(&order).contains("out of order"));
    }

    /// (user, system) CPU seconds of this process (the test harness's
    /// other threads are idle while the benchmark runs).
    fn cpu_secs() -> (f64, f64) {
        // SAFETY: getrusage fills the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        (t(u.ru_utime), t(u.ru_stime))
    }

    /// Write rate and CPU per GB of `write_image` to a file against a plain
    /// `std::io::copy` of the same bytes (what `wget -O- URL | dd` does on
    /// the disk side), both from memory and both ending with fsync; the
    /// three are measured in turn, 5 rounds, medians printed. See
    /// docs/benchmarks.md, "Deployment: image writer":
    /// `ANVIL_BENCH_MIB=512 cargo test -p anvil-agent --release
    ///  imagewrite::tests::bench -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark; prints figures"]
    fn bench_write_rate_against_plain_copy() {
        let mib: usize = std::env::var("ANVIL_BENCH_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512);
        let len = mib << 20;
        // An OS-image shape: 8 MiB runs of data, every other run empty
        // (half the disk zeros), and a disk with no zeros at all.
        let run = 8u64 << 20;
        let holes: Vec<(u64, u64)> = (0..len as u64 / run)
            .filter(|i| i % 2 == 1)
            .map(|i| (i * run, run))
            .collect();
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for (shape, holes) in [("half zeros", holes), ("no zeros", Vec::new())] {
            let (data, zeros, sha) = image(len, &holes);
            let sparse = nonzero_stream(&data, &zeros);
            let names = [
                "std::io::copy + fsync",
                "write_image (full stream)",
                "write_image (non-zero only)",
            ];
            let mut figures: Vec<[Vec<f64>; 3]> = vec![Default::default(); 3];
            for round in 0..6 {
                // Each in every position: the one after another's fsync
                // pays more system time (page cache reclaim).
                for k in 0..3 {
                    let which = (k + round) % 3;
                    let figure = &mut figures[which];
                    let file = tempfile::NamedTempFile::new().unwrap();
                    let p = file.path();
                    let (t0, (u0, s0)) = (Instant::now(), cpu_secs());
                    match which {
                        0 => {
                            let mut f = OpenOptions::new().write(true).open(p).unwrap();
                            io::copy(&mut Cursor::new(&data), &mut f).unwrap();
                            f.sync_all().unwrap();
                        }
                        _ => {
                            let (layout, stream) = if which == 1 {
                                (StreamLayout::Full, &data)
                            } else {
                                (StreamLayout::NonZeroOnly, &sparse)
                            };
                            let mut t = Target::open(p).unwrap();
                            write_image(
                                Cursor::new(stream),
                                layout,
                                &zeros,
                                &mut t,
                                &sha,
                                len as u64,
                                |_| {},
                            )
                            .unwrap();
                        }
                    }
                    let secs = t0.elapsed().as_secs_f64();
                    let (u1, s1) = cpu_secs();
                    let gb = len as f64 / 1e9;
                    figure[0].push(len as f64 / 1e6 / secs);
                    figure[1].push((u1 - u0) / gb);
                    figure[2].push((s1 - s0) / gb);
                }
            }
            for (name, [rate, user, sys]) in names.iter().zip(figures) {
                let (user, sys) = (median(user), median(sys));
                println!(
                    "| {shape} | {mib} MiB | {name} | {:.0} MB/s | {:.2} ({user:.2} user + {sys:.2} sys) |",
                    median(rate),
                    user + sys
                );
            }
        }
    }
}
