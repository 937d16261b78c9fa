//! The converter's input: a raw guest disk as runs of data and zeros.

use std::io::Read;

use crate::error::{Error, Result};

/// One run of the raw disk, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The bytes now in the caller's buffer.
    Data,
    /// This many zero bytes (never materialised).
    Zero(u64),
}

/// Something that yields a raw disk front to back.
pub trait RawSource: Send {
    /// The raw size when known up front (qcow2 virtual size).
    fn raw_size_hint(&self) -> Option<u64>;
    /// The next run: data is written to `buf` (cleared first, at most about
    /// `max` bytes); `None` at the end.
    fn next_piece(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<Option<Piece>>;
}

/// A raw image read as a byte stream (a raw file, or a decompressor's output).
pub struct StreamSource<R> {
    inner: R,
    offset: u64,
    /// Which format the bytes are decoded from, for error messages.
    decoding: Option<&'static str>,
}

impl<R: Read + Send> StreamSource<R> {
    pub fn new(inner: R, decoding: Option<&'static str>) -> Self {
        StreamSource {
            inner,
            offset: 0,
            decoding,
        }
    }
}

impl<R: Read + Send> RawSource for StreamSource<R> {
    fn raw_size_hint(&self) -> Option<u64> {
        None
    }

    fn next_piece(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<Option<Piece>> {
        buf.resize(max, 0);
        let mut filled = 0;
        while filled < max {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(match self.decoding {
                        Some(format) => Error::Decompress { format, source },
                        None => Error::Read {
                            offset: self.offset + filled as u64,
                            source,
                        },
                    });
                }
            }
        }
        buf.truncate(filled);
        self.offset += filled as u64;
        Ok((filled > 0).then_some(Piece::Data))
    }
}
