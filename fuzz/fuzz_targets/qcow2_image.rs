//! Arbitrary bytes as a qcow2 file into anvil-image's qcow2 reader: header
//! validation, L1/L2 walking, compressed (deflate/zstd) and extended-L2
//! clusters. Any input must give data or an error, never a panic, and the
//! reader must never produce more than the virtual size it announced.
#![no_main]

use anvil_image::qcow2::{Header, Qcow2Reader};
use anvil_image::source::{Piece, RawSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    let Ok(mut reader) = Qcow2Reader::open(data.to_vec()) else { return };
    let size = reader.header().virtual_size;
    let mut produced = 0u64;
    let mut buf = Vec::new();
    // Bounded work per input: hostile headers may announce huge disks of holes.
    for _ in 0..4096 {
        match reader.next_piece(&mut buf, 1 << 20) {
            Ok(Some(Piece::Data)) => produced += buf.len() as u64,
            Ok(Some(Piece::Zero(n))) => produced += n,
            Ok(None) => {
                assert_eq!(produced, size, "reader ended early");
                return;
            }
            Err(_) => return,
        }
        assert!(produced <= size, "reader produced more than the virtual size");
    }
});
