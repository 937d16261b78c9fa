//! The zero-range map stored beside each image (`<sha256>.zeromap`): which
//! aligned blocks of the raw disk are all zeros, so deployment can skip them.
//!
//! Binary, little-endian: `ANVZMAP1`, granularity u64, raw size u64, range
//! count u64, then (start u64, length u64) per range, sorted, disjoint, not
//! adjacent. Every range starts on a granularity boundary and is a whole
//! number of blocks, except that the last may end at the raw size. Written
//! and read as a stream: memory does not grow with the image.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Default block size of the map: small enough to find the holes of a
/// filesystem image, large enough that the map stays a few KiB.
pub const GRANULARITY: u64 = 64 * 1024;
const MAGIC: &[u8; 8] = b"ANVZMAP1";
const HEADER_LEN: u64 = 32;

/// True when every byte is zero (written so the compiler vectorises it).
pub fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Totals of a finished map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroStats {
    pub raw_size: u64,
    pub zero_bytes: u64,
    pub ranges: u64,
}

/// Builds the map while the raw image streams past.
pub struct ZeroMapBuilder<W: Write + Seek> {
    out: BufWriter<W>,
    granularity: u64,
    pos: u64,
    block_is_zero: bool,
    run_start: Option<u64>,
    stats: ZeroStats,
}

impl<W: Write + Seek> ZeroMapBuilder<W> {
    pub fn new(out: W, granularity: u64) -> io::Result<Self> {
        assert!(granularity > 0, "granularity must be positive");
        let mut out = BufWriter::new(out);
        out.write_all(MAGIC)?;
        out.write_all(&granularity.to_le_bytes())?;
        out.write_all(&[0; 16])?;
        Ok(ZeroMapBuilder {
            out,
            granularity,
            pos: 0,
            block_is_zero: true,
            run_start: None,
            stats: ZeroStats::default(),
        })
    }

    fn close_block(&mut self, start: u64) -> io::Result<()> {
        if self.block_is_zero {
            self.run_start.get_or_insert(start);
        } else if let Some(run) = self.run_start.take() {
            self.emit(run, start - run)?;
        }
        self.block_is_zero = true;
        Ok(())
    }

    fn emit(&mut self, start: u64, len: u64) -> io::Result<()> {
        self.out.write_all(&start.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.stats.ranges += 1;
        self.stats.zero_bytes += len;
        Ok(())
    }

    /// The next bytes of the image.
    pub fn data(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let g = self.granularity;
        while !bytes.is_empty() {
            let take = ((g - self.pos % g) as usize).min(bytes.len());
            if self.block_is_zero && !is_zero(&bytes[..take]) {
                self.block_is_zero = false;
            }
            self.pos += take as u64;
            bytes = &bytes[take..];
            if self.pos.is_multiple_of(g) {
                self.close_block(self.pos - g)?;
            }
        }
        Ok(())
    }

    /// The next `n` bytes of the image are zeros.
    pub fn zeros(&mut self, mut n: u64) -> io::Result<()> {
        let g = self.granularity;
        if !self.pos.is_multiple_of(g) {
            let take = (g - self.pos % g).min(n);
            self.pos += take;
            n -= take;
            if self.pos.is_multiple_of(g) {
                self.close_block(self.pos - g)?;
            }
        }
        let whole = n / g * g;
        if whole > 0 {
            self.run_start.get_or_insert(self.pos);
            self.pos += whole;
            n -= whole;
        }
        self.pos += n;
        Ok(())
    }

    /// Closes the last (partial) block, writes the totals into the header.
    pub fn finish(mut self) -> io::Result<(W, ZeroStats)> {
        let g = self.granularity;
        let tail = self.pos % g;
        if tail != 0 {
            if !self.block_is_zero {
                if let Some(run) = self.run_start.take() {
                    self.emit(run, self.pos - tail - run)?;
                }
            } else {
                self.run_start.get_or_insert(self.pos - tail);
            }
        }
        if let Some(run) = self.run_start.take() {
            self.emit(run, self.pos - run)?;
        }
        self.stats.raw_size = self.pos;
        let mut out = self.out.into_inner().map_err(|e| e.into_error())?;
        out.seek(SeekFrom::Start(16))?;
        out.write_all(&self.stats.raw_size.to_le_bytes())?;
        out.write_all(&self.stats.ranges.to_le_bytes())?;
        Ok((out, self.stats))
    }
}

/// A stored map, read as a stream of validated ranges.
pub struct ZeroMapReader {
    path: PathBuf,
    input: BufReader<File>,
    pub granularity: u64,
    pub raw_size: u64,
    pub count: u64,
    read: u64,
    last_end: Option<u64>,
}

impl ZeroMapReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(Error::io("open zero map", path))?;
        let mut input = BufReader::new(file);
        let mut head = [0u8; HEADER_LEN as usize];
        input.read_exact(&mut head).map_err(|_| Error::BadZeroMap {
            path: path.into(),
            reason: "shorter than its header".into(),
        })?;
        let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        if &head[..8] != MAGIC || word(8) == 0 {
            return Err(Error::BadZeroMap {
                path: path.into(),
                reason: "bad magic or granularity".into(),
            });
        }
        Ok(ZeroMapReader {
            path: path.into(),
            input,
            granularity: word(8),
            raw_size: word(16),
            count: word(24),
            read: 0,
            last_end: None,
        })
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadZeroMap {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The next zero range `(start, len)`, or `None` after the last.
    pub fn next_range(&mut self) -> Result<Option<(u64, u64)>> {
        if self.read == self.count {
            return Ok(None);
        }
        let mut pair = [0u8; 16];
        self.input
            .read_exact(&mut pair)
            .map_err(|_| self.bad("truncated"))?;
        let start = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(pair[8..].try_into().expect("8 bytes"));
        let end = start
            .checked_add(len)
            .ok_or_else(|| self.bad("range overflows"))?;
        if len == 0 || end > self.raw_size || self.last_end.is_some_and(|e| start <= e) {
            return Err(self.bad(format!("range {start}+{len} out of order or out of bounds")));
        }
        self.last_end = Some(end);
        self.read += 1;
        Ok(Some((start, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn ranges_of(
        feed: impl FnOnce(&mut ZeroMapBuilder<Cursor<Vec<u8>>>),
        g: u64,
    ) -> (Vec<(u64, u64)>, ZeroStats) {
        let mut b = ZeroMapBuilder::new(Cursor::new(Vec::new()), g).unwrap();
        feed(&mut b);
        let (cur, stats) = b.finish().unwrap();
        let bytes = cur.into_inner();
        let body = &bytes[32..];
        let ranges = body
            .chunks_exact(16)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().unwrap()),
                    u64::from_le_bytes(c[8..].try_into().unwrap()),
                )
            })
            .collect();
        (ranges, stats)
    }

    #[test]
    fn merges_aligned_zero_blocks_from_data_and_holes() {
        let (r, s) = ranges_of(
            |b| {
                b.data(&[0; 100]).unwrap();
                b.data(&[1; 10]).unwrap(); // block 0 dirty
                b.data(&[0; 256 - 110]).unwrap();
                b.zeros(256 * 2 + 10).unwrap(); // blocks 1, 2 zero; block 3 starts zero
                b.data(&[0; 246]).unwrap(); // block 3 zero (from data)
                b.data(&[7]).unwrap(); // block 4 dirty, partial
            },
            256,
        );
        assert_eq!(r, vec![(256, 768)]);
        assert_eq!(
            s,
            ZeroStats {
                raw_size: 1025,
                zero_bytes: 768,
                ranges: 1
            }
        );
    }

    #[test]
    fn zero_tail_ends_at_raw_size() {
        let (r, s) = ranges_of(
            |b| {
                b.data(&[9; 300]).unwrap();
                b.zeros(1000).unwrap();
            },
            256,
        );
        // Block 1 holds bytes 256..300 of data; zeros start cleanly at 512.
        assert_eq!(r, vec![(512, 1300 - 512)]);
        assert_eq!(s.raw_size, 1300);
    }

    #[test]
    fn all_zero_image_is_one_range() {
        let (r, _) = ranges_of(|b| b.zeros(10 * 256 + 3).unwrap(), 256);
        assert_eq!(r, vec![(0, 10 * 256 + 3)]);
    }

    #[test]
    fn is_zero_sees_a_single_bit() {
        let mut v = vec![0u8; 10000];
        assert!(is_zero(&v));
        v[9999] = 0x10;
        assert!(!is_zero(&v));
    }
}
