//! Reads file content for a transfer, a chunk of several windows at a time.
//!
//! The state machine asks for bytes at ever-growing offsets. Memory content
//! is sliced without copying. Files are read in chunks of several windows:
//! - data already in the page cache (the usual case: every machine of a rack
//!   fetches the same iPXE binary) is read right on the service thread with
//!   `preadv2(RWF_NOWAIT)`, which returns what is cached and never blocks;
//! - anything else is read with `pread` on tokio's blocking pool; these
//!   sequential reads start the kernel's own readahead, so the next chunk is
//!   usually cached by the time it is needed. `RWF_NOWAIT` also refuses
//!   cached pages that carry a readahead marker, so every chunk tries the
//!   cached path first rather than sticking to the pool after one miss.
//!
//! Avoiding the blocking pool for cached data matters more than it seems:
//! each hand-off wakes a pool thread, whose wake-up of the service thread
//! can move it to another CPU, away from the client; measured on 2 vCPUs, a
//! lock-step transfer between threads on different CPUs was 4x slower.
//! Files are never read whole.

use crate::source::Content;
use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

/// Chunk size bounds for file reads: large enough that hand-offs to the
/// blocking pool are rare, small enough that 128 concurrent transfers with
/// one chunk each stay within 128 MiB.
const MIN_CHUNK: usize = 64 << 10;
const MAX_CHUNK: usize = 1 << 20;

pub(crate) enum Reader {
    Memory(Bytes),
    File(FileReader),
    Stream {
        reader: Box<dyn AsyncRead + Send + Unpin>,
        pos: u64,
    },
}

pub(crate) struct FileReader {
    file: Arc<File>,
    chunk_size: usize,
    /// The chunk being served and the file offset it starts at.
    chunk: Bytes,
    chunk_off: u64,
    /// Where the file ends, once a short chunk has shown it.
    eof_at: Option<u64>,
    /// Whether cached data may be read inline; off once the filesystem
    /// refused `RWF_NOWAIT`.
    nowait: bool,
}

impl Reader {
    /// `window_bytes` is the negotiated blksize × windowsize.
    pub(crate) fn new(content: Content, window_bytes: usize) -> Reader {
        match content {
            Content::Memory(bytes) => Reader::Memory(bytes),
            Content::File(file) => Reader::File(FileReader {
                file,
                chunk_size: window_bytes.saturating_mul(8).clamp(MIN_CHUNK, MAX_CHUNK),
                chunk: Bytes::new(),
                chunk_off: 0,
                eof_at: None,
                nowait: true,
            }),
            Content::Reader(reader) => Reader::Stream { reader, pos: 0 },
        }
    }

    /// Up to `len` bytes at `offset`; fewer only at the end of the content.
    pub(crate) async fn read(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        match self {
            Reader::Memory(bytes) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let end = start.saturating_add(len).min(bytes.len());
                Ok(bytes.slice(start..end))
            }
            Reader::File(file) => file.read(offset, len).await,
            Reader::Stream { reader, pos } => {
                if offset != *pos {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a stream can only be read front to back",
                    ));
                }
                let mut out = BytesMut::with_capacity(len);
                while out.len() < len {
                    let mut limited = (&mut *reader).take((len - out.len()) as u64);
                    if limited.read_buf(&mut out).await? == 0 {
                        break;
                    }
                }
                *pos += out.len() as u64;
                Ok(out.freeze())
            }
        }
    }
}

impl FileReader {
    async fn read(&mut self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = offset.saturating_add(len as u64);
        let mut pos = offset;
        // Only filled when the request spans two chunks.
        let mut joined: Option<BytesMut> = None;
        loop {
            let chunk_end = self.chunk_off + self.chunk.len() as u64;
            if pos >= self.chunk_off && pos < chunk_end {
                let a = usize::try_from(pos - self.chunk_off).unwrap_or(usize::MAX);
                let b = usize::try_from(end.min(chunk_end) - self.chunk_off).unwrap_or(usize::MAX);
                let piece = self.chunk.slice(a..b);
                pos += piece.len() as u64;
                match joined.as_mut() {
                    None if pos == end => return Ok(piece),
                    None => {
                        let mut buf = BytesMut::with_capacity(len);
                        buf.extend_from_slice(&piece);
                        joined = Some(buf);
                    }
                    Some(buf) => buf.extend_from_slice(&piece),
                }
                if pos == end {
                    break;
                }
            }
            if self.eof_at.is_some_and(|eof| pos >= eof) {
                break;
            }
            self.load(pos).await?;
            if self.chunk.is_empty() {
                break;
            }
        }
        Ok(joined.map(BytesMut::freeze).unwrap_or_default())
    }

    /// Makes the chunk at `pos` current.
    async fn load(&mut self, pos: u64) -> io::Result<()> {
        if self.nowait {
            match read_cached(&self.file, pos, self.chunk_size) {
                Ok(chunk) if !chunk.is_empty() => {
                    self.chunk = chunk;
                    self.chunk_off = pos;
                    return Ok(());
                }
                // Not cached, or the end of the file: the blocking read
                // below tells which.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => self.nowait = false,
            }
        }
        let chunk = self.spawn_read(pos).await.map_err(io::Error::other)??;
        if chunk.len() < self.chunk_size {
            self.eof_at = Some(pos + chunk.len() as u64);
        }
        self.chunk = chunk;
        self.chunk_off = pos;
        Ok(())
    }

    fn spawn_read(&self, offset: u64) -> JoinHandle<io::Result<Bytes>> {
        let file = Arc::clone(&self.file);
        let size = self.chunk_size;
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; size];
            let mut filled = 0;
            while filled < size {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(Bytes::from(buf))
        })
    }
}

/// Reads up to `len` bytes at `offset` that are in the page cache, without
/// blocking: fewer (even none) when the rest would need the disk.
fn read_cached(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; len];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the iovec describes `buf`, which is alive and writable for
    // its whole length during the call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn read_all(mut reader: Reader, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let piece = reader.read(out.len() as u64, step).await.expect("read");
            out.extend_from_slice(&piece);
            if piece.len() < step {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn file_reads_span_chunks_and_end_short() {
        for len in [
            0,
            1,
            MIN_CHUNK - 1,
            MIN_CHUNK,
            MIN_CHUNK + 1,
            3 * MIN_CHUNK + 17,
        ] {
            let data = content(len);
            let mut tmp = tempfile::tempfile().expect("tempfile");
            tmp.write_all(&data).expect("write");
            for step in [1468 * 16, 1000, MIN_CHUNK + 3] {
                let reader = Reader::new(Content::File(Arc::new(tmp.try_clone().expect("dup"))), 1);
                assert_eq!(read_all(reader, step).await, data, "len {len} step {step}");
            }
        }
    }

    /// The blocking-pool path, as for files not in the page cache (or on
    /// filesystems without RWF_NOWAIT).
    #[tokio::test]
    async fn file_reads_without_the_cached_fast_path() {
        let data = content(5 * MIN_CHUNK + 5);
        let mut tmp = tempfile::tempfile().expect("tempfile");
        tmp.write_all(&data).expect("write");
        for step in [1468 * 16, MIN_CHUNK + 3] {
            let mut reader = Reader::new(Content::File(Arc::new(tmp.try_clone().expect("dup"))), 1);
            if let Reader::File(f) = &mut reader {
                f.nowait = false;
            }
            assert_eq!(read_all(reader, step).await, data, "step {step}");
        }
    }

    #[tokio::test]
    async fn memory_and_stream_read_the_same_bytes() {
        let data = content(100_000);
        let mem = Reader::new(Content::Memory(Bytes::from(data.clone())), 1);
        assert_eq!(read_all(mem, 4096).await, data);
        let stream = Reader::new(
            Content::Reader(Box::new(std::io::Cursor::new(data.clone()))),
            1,
        );
        assert_eq!(read_all(stream, 4096).await, data);
    }

    #[tokio::test]
    async fn stream_refuses_to_seek() {
        let mut stream = Reader::new(Content::Reader(Box::new(&b"abc"[..])), 1);
        assert!(stream.read(1, 1).await.is_err());
    }
}
