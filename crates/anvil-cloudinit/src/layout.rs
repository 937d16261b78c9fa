//! Where the CIDATA / config-2 partition goes on the target disk.
//!
//! It goes at the END of the disk: the image's root partition is grown into
//! the free space that follows it (growpart/cloud-init `growpart` grow a
//! partition up to the next partition or the end of the disk), so a partition
//! placed right after the image would pin root at the image's size. At the end
//! it leaves root everything in between.

use crate::Error;

pub const MIB: u64 = 1024 * 1024;
/// Size of the partition: far more than meta-data, user-data (cloud-init
/// itself caps user-data at a few MiB in practice) and network-config need,
/// and small next to any disk worth deploying to.
pub const CIDATA_SIZE: u64 = 16 * MIB;
/// Kept free at the end: GPT's backup header and table (33 sectors of 512 B,
/// or 6 of 4 KiB) fit easily, and the partition stays 1 MiB aligned.
pub const TAIL_RESERVE: u64 = MIB;
/// MBR partitions address at most 2^32 sectors of 512 bytes.
pub const MBR_LIMIT: u64 = (1u64 << 32) * 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionTable {
    Gpt,
    Mbr,
}

/// Byte range of the CIDATA partition, 1 MiB aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidataPlacement {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
}

impl CidataPlacement {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// First and last sector (inclusive), as partitioning tools count them.
    pub fn sectors(&self, sector_size: u64) -> (u64, u64) {
        (self.start / sector_size, self.end / sector_size - 1)
    }

    /// Bytes the root partition may grow into (between the image's end and
    /// this partition).
    pub fn growth_room(&self, image_end: u64) -> u64 {
        self.start.saturating_sub(image_end)
    }
}

/// Places the partition at the end of a `disk_size`-byte disk that holds an
/// image whose last partition ends at byte `image_end`.
pub fn place_cidata(
    disk_size: u64,
    image_end: u64,
    table: PartitionTable,
) -> Result<CidataPlacement, Error> {
    let usable_end = match table {
        PartitionTable::Gpt => disk_size.saturating_sub(TAIL_RESERVE),
        // With MBR nothing lives at the end, but a partition past 2 TiB
        // cannot be described: stop there on bigger disks.
        PartitionTable::Mbr => disk_size.min(MBR_LIMIT),
    };
    let end = usable_end / MIB * MIB;
    let start = end.checked_sub(CIDATA_SIZE).ok_or_else(|| Error::Layout {
        reason: format!(
            "disk of {disk_size} bytes is too small for a {CIDATA_SIZE}-byte partition"
        ),
    })?;
    let image_end_aligned = image_end.div_ceil(MIB) * MIB;
    if start < image_end_aligned {
        return Err(Error::Layout {
            reason: format!(
                "the image ends at byte {image_end}; the disk ({disk_size} bytes) has no room \
                 for the {} MiB cloud-init partition after it",
                CIDATA_SIZE / MIB
            ),
        });
    }
    Ok(CidataPlacement { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * MIB;

    #[test]
    fn at_the_end_leaving_root_the_rest() {
        let p = place_cidata(10 * GIB, 64 * MIB, PartitionTable::Gpt).unwrap();
        assert_eq!(p.end, 10 * GIB - MIB);
        assert_eq!(p.len(), CIDATA_SIZE);
        assert_eq!(p.start % MIB, 0);
        assert_eq!(
            p.growth_room(64 * MIB),
            10 * GIB - MIB - CIDATA_SIZE - 64 * MIB
        );
        assert_eq!(p.sectors(512), (p.start / 512, (10 * GIB - MIB) / 512 - 1));
    }

    #[test]
    fn unaligned_disk_rounds_down() {
        let size = 10 * GIB + 12345;
        let p = place_cidata(size, MIB, PartitionTable::Gpt).unwrap();
        assert_eq!(p.end % MIB, 0);
        assert!(p.end + TAIL_RESERVE <= size);
    }

    #[test]
    fn mbr_uses_the_last_mib_but_stops_at_2_tib() {
        let p = place_cidata(GIB, MIB, PartitionTable::Mbr).unwrap();
        assert_eq!(p.end, GIB);
        let big = place_cidata(8 * 1024 * GIB, MIB, PartitionTable::Mbr).unwrap();
        assert_eq!(big.end, MBR_LIMIT);
    }

    #[test]
    fn too_small_disks_are_refused() {
        // the image fills the disk
        let e = place_cidata(64 * MIB, 60 * MIB, PartitionTable::Gpt).unwrap_err();
        assert!(e.to_string().contains("no room"), "{e}");
        assert!(place_cidata(4 * MIB, 0, PartitionTable::Gpt).is_err());
        // exactly fits: image end aligned up to the partition start
        let fits = place_cidata(100 * MIB, 83 * MIB, PartitionTable::Gpt).unwrap();
        assert_eq!(fits.start, 83 * MIB);
    }
}
