//! Partition tables (GPT and MBR) on a `Read + Write + Seek` target: read
//! them, grow the last partition, add one at the end. Pure byte work, no
//! ioctls, so the tests run it on image files; the steps call it on the
//! block device and then tell the kernel (`BLKRRPART`).
//!
//! Written here rather than running `sfdisk`: the deploy steps need three
//! small operations, each checked (CRCs, overlap, alignment) and unit-tested
//! on files, and the ramdisk stays smaller without util-linux.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};

pub const MIB: u64 = 1024 * 1024;
/// MBR sector counts and starts are 32-bit (in 512-byte sectors).
pub const MBR_MAX_SECTORS: u64 = u32::MAX as u64;

const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// Microsoft basic data: what blkid/cloud-init look for on a FAT partition.
pub const GUID_BASIC_DATA: &str = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";
/// EFI system partition.
pub const GUID_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// MBR type of FAT32 with LBA addressing.
pub const MBR_TYPE_FAT32_LBA: u8 = 0x0c;
pub const MBR_TYPE_ESP: u8 = 0xef;
const MBR_TYPE_PROTECTIVE: u8 = 0xee;
const MBR_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];

#[derive(Debug)]
pub enum TableError {
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// No MBR signature and no GPT: nothing to grow or add to.
    NoTable,
    /// A table that is there but inconsistent (bad CRC, overlapping, …).
    Corrupt(String),
    /// A valid table the operation cannot handle (no room, no free slot, …).
    Unsupported(String),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::Io { what, source } => write!(f, "partition table: {what}: {source}"),
            TableError::NoTable => write!(f, "the disk has no partition table (no MBR, no GPT)"),
            TableError::Corrupt(why) => write!(f, "partition table is corrupt: {why}"),
            TableError::Unsupported(why) => write!(f, "partition table: {why}"),
        }
    }
}

impl std::error::Error for TableError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TableError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> TableError {
    move |source| TableError::Io { what, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gpt,
    Mbr,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gpt => "gpt",
            Kind::Mbr => "mbr",
        }
    }
}

/// A partition, in bytes and as the table types it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as the kernel numbers it (`sda1`): the GPT entry index + 1,
    /// or the MBR slot + 1.
    pub number: u32,
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    /// GPT: the type GUID, lower case; MBR: the type byte as `0x83`.
    pub type_id: String,
}

impl Partition {
    pub fn is_esp(&self) -> bool {
        self.type_id == GUID_ESP || self.type_id == format!("0x{MBR_TYPE_ESP:02x}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub kind: Kind,
    pub sector: u64,
    /// Sorted by start.
    pub partitions: Vec<Partition>,
}

impl Table {
    /// The partition that ends last (an image's root, by convention).
    pub fn last(&self) -> Option<&Partition> {
        self.partitions.iter().max_by_key(|p| p.end)
    }
}

// --- CRC32 (IEEE 802.3, as GPT uses it) ----------------------------------------

pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

// --- GUIDs: stored mixed-endian ---------------------------------------------------

fn guid_to_string(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32::from_le_bytes(b[0..4].try_into().expect("4")),
        u16::from_le_bytes(b[4..6].try_into().expect("2")),
        u16::from_le_bytes(b[6..8].try_into().expect("2")),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

fn guid_from_string(s: &str) -> [u8; 16] {
    let hex: Vec<u8> = s
        .bytes()
        .filter(|b| b.is_ascii_hexdigit())
        .map(|b| (b as char).to_digit(16).expect("hex digit") as u8)
        .collect();
    assert_eq!(hex.len(), 32, "GUID {s}");
    let mut raw = [0u8; 16];
    for (i, r) in raw.iter_mut().enumerate() {
        *r = hex[2 * i] << 4 | hex[2 * i + 1];
    }
    let mut out = raw;
    out[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    out[4..6].copy_from_slice(&[raw[5], raw[4]]);
    out[6..8].copy_from_slice(&[raw[7], raw[6]]);
    out
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn read_at<D: Read + Seek>(
    dev: &mut D,
    offset: u64,
    len: usize,
    what: &'static str,
) -> Result<Vec<u8>, TableError> {
    let mut buf = vec![0u8; len];
    dev.seek(SeekFrom::Start(offset)).map_err(io_err(what))?;
    dev.read_exact(&mut buf).map_err(io_err(what))?;
    Ok(buf)
}

fn write_at<D: Write + Seek>(
    dev: &mut D,
    offset: u64,
    data: &[u8],
    what: &'static str,
) -> Result<(), TableError> {
    dev.seek(SeekFrom::Start(offset)).map_err(io_err(what))?;
    dev.write_all(data).map_err(io_err(what))
}

// --- GPT ------------------------------------------------------------------------------

/// The parsed primary GPT: header sector and entry array, kept as bytes so
/// a rewrite changes only the fields it means to.
struct Gpt {
    sector: u64,
    header: Vec<u8>,
    entries: Vec<u8>,
}

impl Gpt {
    fn header_size(&self) -> usize {
        le32(&self.header, 12) as usize
    }
    fn entries_lba(&self) -> u64 {
        le64(&self.header, 72)
    }
    fn entry_count(&self) -> usize {
        le32(&self.header, 80) as usize
    }
    fn entry_size(&self) -> usize {
        le32(&self.header, 84) as usize
    }
    fn first_usable(&self) -> u64 {
        le64(&self.header, 40)
    }
    fn last_usable(&self) -> u64 {
        le64(&self.header, 48)
    }
    fn backup_lba(&self) -> u64 {
        le64(&self.header, 32)
    }
    fn entry(&self, i: usize) -> &[u8] {
        let s = self.entry_size();
        &self.entries[i * s..(i + 1) * s]
    }
    fn entry_mut(&mut self, i: usize) -> &mut [u8] {
        let s = self.entry_size();
        &mut self.entries[i * s..(i + 1) * s]
    }
    fn entry_sectors(&self) -> u64 {
        ((self.entry_count() * self.entry_size()) as u64).div_ceil(self.sector)
    }

    fn read<D: Read + Seek>(dev: &mut D, sector: u64) -> Result<Option<Gpt>, TableError> {
        let header = read_at(dev, sector, sector as usize, "reading the GPT header")?;
        if &header[..8] != GPT_SIGNATURE {
            return Ok(None);
        }
        let size = le32(&header, 12) as usize;
        if !(92..=sector as usize).contains(&size) {
            return Err(TableError::Corrupt(format!("GPT header size {size}")));
        }
        let mut check = header[..size].to_vec();
        check[16..20].fill(0);
        if crc32(&check) != le32(&header, 16) {
            return Err(TableError::Corrupt("GPT header CRC mismatch".into()));
        }
        let (count, esize) = (le32(&header, 80) as usize, le32(&header, 84) as usize);
        // The header comes from the disk (a previous tenant's, possibly
        // damaged): bound what it asks us to read (at most 4096 entries of
        // at most 4 KiB) and where, rather than allocate or overflow on it.
        if esize < 128 || esize % 8 != 0 || esize > 4096 || count == 0 || count > 4096 {
            return Err(TableError::Corrupt(format!(
                "GPT has {count} entries of {esize} bytes"
            )));
        }
        let entries_at = le64(&header, 72).checked_mul(sector).ok_or_else(|| {
            TableError::Corrupt(format!("GPT entries at LBA {}", le64(&header, 72)))
        })?;
        let entries = read_at(dev, entries_at, count * esize, "reading the GPT entries")?;
        if crc32(&entries) != le32(&header, 88) {
            return Err(TableError::Corrupt("GPT entry array CRC mismatch".into()));
        }
        Ok(Some(Gpt {
            sector,
            header,
            entries,
        }))
    }

    fn partitions(&self) -> Vec<Partition> {
        (0..self.entry_count())
            .filter_map(|i| {
                let e = self.entry(i);
                if e[..16].iter().all(|&b| b == 0) {
                    return None;
                }
                let (first, last) = (le64(e, 32), le64(e, 40));
                Some(Partition {
                    number: i as u32 + 1,
                    start: first * self.sector,
                    end: (last + 1) * self.sector,
                    type_id: guid_to_string(&e[..16]),
                })
            })
            .collect()
    }

    /// Writes primary and backup (header and entries) for a disk of
    /// `disk_sectors`, with the backup at the disk's end, CRCs fresh.
    fn write<D: Write + Seek>(&mut self, dev: &mut D, disk_sectors: u64) -> Result<(), TableError> {
        let last_lba = disk_sectors - 1;
        let entry_crc = crc32(&self.entries);
        let size = self.header_size();
        let backup_entries = last_lba - self.entry_sectors();
        let mut primary = self.header.clone();
        primary[24..32].copy_from_slice(&1u64.to_le_bytes());
        primary[32..40].copy_from_slice(&last_lba.to_le_bytes());
        primary[88..92].copy_from_slice(&entry_crc.to_le_bytes());
        let mut backup = primary.clone();
        backup[24..32].copy_from_slice(&last_lba.to_le_bytes());
        backup[32..40].copy_from_slice(&1u64.to_le_bytes());
        backup[72..80].copy_from_slice(&backup_entries.to_le_bytes());
        for h in [&mut primary, &mut backup] {
            h[16..20].fill(0);
            let crc = crc32(&h[..size]);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
        }
        let s = self.sector;
        // Backup first: a crash between the writes leaves the primary (the
        // one firmware and kernel read first) as it was.
        write_at(
            dev,
            backup_entries * s,
            &self.entries,
            "writing the backup GPT entries",
        )?;
        write_at(dev, last_lba * s, &backup, "writing the backup GPT header")?;
        write_at(
            dev,
            self.entries_lba() * s,
            &self.entries,
            "writing the GPT entries",
        )?;
        write_at(dev, s, &primary, "writing the GPT header")?;
        self.header = primary;
        Ok(())
    }
}

/// The protective MBR's one partition covers the whole disk (capped).
fn fix_protective_mbr<D: Read + Write + Seek>(
    dev: &mut D,
    disk_bytes: u64,
) -> Result<(), TableError> {
    let mut mbr = read_at(dev, 0, 512, "reading the protective MBR")?;
    for slot in 0..4 {
        let e = 446 + slot * 16;
        if mbr[e + 4] == MBR_TYPE_PROTECTIVE {
            let sectors = (disk_bytes / 512 - 1).min(MBR_MAX_SECTORS) as u32;
            mbr[e + 12..e + 16].copy_from_slice(&sectors.to_le_bytes());
            mbr[e + 5..e + 8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        }
    }
    write_at(dev, 0, &mbr, "writing the protective MBR")
}

// --- MBR ----------------------------------------------------------------------------------

fn mbr_partitions(mbr: &[u8]) -> Vec<Partition> {
    (0..4)
        .filter_map(|slot| {
            let e = &mbr[446 + slot * 16..446 + (slot + 1) * 16];
            let (ty, start, count) = (e[4], le32(e, 8), le32(e, 12));
            (ty != 0 && count != 0).then(|| Partition {
                number: slot as u32 + 1,
                start: u64::from(start) * 512,
                end: (u64::from(start) + u64::from(count)) * 512,
                type_id: format!("0x{ty:02x}"),
            })
        })
        .collect()
}

fn has_mbr_signature(mbr: &[u8]) -> bool {
    mbr[510] == 0x55 && mbr[511] == 0xaa
}

/// Reads the partition table: GPT when the MBR is protective (or absent
/// but a GPT header is there), else the MBR's primary partitions.
/// `Ok(None)` when there is neither.
pub fn read<D: Read + Seek>(dev: &mut D, sector: u64) -> Result<Option<Table>, TableError> {
    let mbr = read_at(dev, 0, 512, "reading sector 0")?;
    let protective = has_mbr_signature(&mbr)
        && mbr_partitions(&mbr)
            .iter()
            .any(|p| p.type_id == format!("0x{MBR_TYPE_PROTECTIVE:02x}"));
    if let Some(gpt) = Gpt::read(dev, sector)? {
        let mut partitions = gpt.partitions();
        partitions.sort_by_key(|p| p.start);
        return Ok(Some(Table {
            kind: Kind::Gpt,
            sector,
            partitions,
        }));
    }
    if protective {
        return Err(TableError::Corrupt(
            "protective MBR but no GPT header".into(),
        ));
    }
    if !has_mbr_signature(&mbr) {
        return Ok(None);
    }
    let mut partitions = mbr_partitions(&mbr);
    partitions.sort_by_key(|p| p.start);
    Ok(Some(Table {
        kind: Kind::Mbr,
        sector: 512,
        partitions,
    }))
}

fn check_no_overlap(parts: &[Partition]) -> Result<(), TableError> {
    for w in parts.windows(2) {
        if w[1].start < w[0].end {
            return Err(TableError::Corrupt(format!(
                "partitions {} and {} overlap",
                w[0].number, w[1].number
            )));
        }
    }
    Ok(())
}

/// What [`grow_last`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    pub kind: Kind,
    pub number: u32,
    pub start: u64,
    pub old_end: u64,
    pub new_end: u64,
}

/// Grows the partition that ends last so it ends `reserve_end` bytes
/// before the end of a `disk_bytes` disk (rounded down to 1 MiB; MBR also
/// stops at 2^32 sectors). A GPT's backup header and entries move to the
/// disk's end first. A partition that already reaches that far is left as
/// it is (`new_end == old_end`); it is never shrunk.
pub fn grow_last<D: Read + Write + Seek>(
    dev: &mut D,
    sector: u64,
    disk_bytes: u64,
    reserve_end: u64,
) -> Result<Grown, TableError> {
    let table = read(dev, sector)?.ok_or(TableError::NoTable)?;
    check_no_overlap(&table.partitions)?;
    let last = table
        .last()
        .cloned()
        .ok_or_else(|| TableError::Unsupported("the table has no partition to grow".into()))?;
    let target_end = disk_bytes.saturating_sub(reserve_end) / MIB * MIB;
    match table.kind {
        Kind::Gpt => {
            let mut gpt = Gpt::read(dev, sector)?.expect("read above");
            let disk_sectors = disk_bytes / sector;
            let old_backup = gpt.backup_lba();
            let last_usable = disk_sectors - 1 - gpt.entry_sectors() - 1;
            if last.end > (last_usable + 1) * sector {
                return Err(TableError::Unsupported(format!(
                    "partition {} ends at byte {} beyond the disk's usable end",
                    last.number, last.end
                )));
            }
            let new_end = target_end.min((last_usable + 1) * sector).max(last.end);
            let i = last.number as usize - 1;
            let new_last_lba = new_end / sector - 1;
            gpt.entry_mut(i)[40..48].copy_from_slice(&new_last_lba.to_le_bytes());
            gpt.header[48..56].copy_from_slice(&last_usable.to_le_bytes());
            gpt.write(dev, disk_sectors)?;
            fix_protective_mbr(dev, disk_bytes)?;
            // The image's old backup header now lies inside the grown
            // partition: clear it so no tool takes it for a second table.
            if old_backup != disk_sectors - 1 && (old_backup + 1) * sector <= disk_bytes {
                write_at(
                    dev,
                    old_backup * sector,
                    &vec![0u8; sector as usize],
                    "clearing the old backup GPT header",
                )?;
            }
            Ok(Grown {
                kind: Kind::Gpt,
                number: last.number,
                start: last.start,
                old_end: last.end,
                new_end,
            })
        }
        Kind::Mbr => {
            let mut mbr = read_at(dev, 0, 512, "reading the MBR")?;
            let e = 446 + (last.number as usize - 1) * 16;
            if MBR_EXTENDED.contains(&mbr[e + 4]) {
                return Err(TableError::Unsupported(
                    "the last partition is an extended partition: logical partitions are not grown"
                        .into(),
                ));
            }
            // Past 2^32 sectors nothing can start: the reserve (for the
            // cloud-init partition) is kept below that line, and the root's
            // own sector count is 32-bit too.
            let addressable = disk_bytes.min(MBR_MAX_SECTORS * 512);
            let target_end = addressable.saturating_sub(reserve_end) / MIB * MIB;
            let limit = (last.start / 512 + MBR_MAX_SECTORS) * 512;
            let new_end = target_end.min(limit / MIB * MIB).max(last.end);
            let count = ((new_end - last.start) / 512) as u32;
            mbr[e + 12..e + 16].copy_from_slice(&count.to_le_bytes());
            mbr[e + 5..e + 8].copy_from_slice(&[0xfe, 0xff, 0xff]);
            write_at(dev, 0, &mbr, "writing the MBR")?;
            Ok(Grown {
                kind: Kind::Mbr,
                number: last.number,
                start: last.start,
                old_end: last.end,
                new_end,
            })
        }
    }
}

/// Where [`add_at_end`] put the new partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    pub kind: Kind,
    pub number: u32,
    pub start: u64,
    pub end: u64,
}

/// The byte range a partition of `len` bytes gets at the end of the disk:
/// 1 MiB aligned, ending 1 MiB before the disk's end on GPT (its backup
/// lives there) and at the disk's end (capped at 2^32 sectors) on MBR, as
/// `anvil_cloudinit::place_cidata` computes it on the server.
pub fn end_placement(kind: Kind, disk_bytes: u64, len: u64) -> Option<(u64, u64)> {
    let usable_end = match kind {
        Kind::Gpt => disk_bytes.checked_sub(MIB)?,
        Kind::Mbr => disk_bytes.min(MBR_MAX_SECTORS * 512),
    };
    let end = usable_end / MIB * MIB;
    let start = end.checked_sub(len.div_ceil(MIB) * MIB)?;
    Some((start, end))
}

/// A partition to add: its size and how each table types and names it.
#[derive(Debug, Clone)]
pub struct NewPartition<'a> {
    pub len: u64,
    pub gpt_type: &'a str,
    pub mbr_type: u8,
    /// GPT partition name (at most 36 UTF-16 units are kept).
    pub name: &'a str,
    /// GPT unique partition GUID, as stored.
    pub unique: [u8; 16],
}

/// Adds a partition of `len` bytes at the end of the disk (see
/// [`end_placement`]) in the first free slot: GPT type `gpt_type` named
/// `name`, or MBR type `mbr_type`. Fails when it would overlap a partition.
pub fn add_at_end<D: Read + Write + Seek>(
    dev: &mut D,
    sector: u64,
    disk_bytes: u64,
    new: &NewPartition<'_>,
) -> Result<Added, TableError> {
    let table = read(dev, sector)?.ok_or(TableError::NoTable)?;
    check_no_overlap(&table.partitions)?;
    let len = new.len;
    let (start, end) = end_placement(table.kind, disk_bytes, len).ok_or_else(|| {
        TableError::Unsupported(format!(
            "a disk of {disk_bytes} bytes has no room for {len} bytes"
        ))
    })?;
    if let Some(p) = table.partitions.iter().find(|p| p.end > start) {
        return Err(TableError::Unsupported(format!(
            "partition {} ends at byte {}, after the new partition's start {start}",
            p.number, p.end
        )));
    }
    match table.kind {
        Kind::Gpt => {
            let mut gpt = Gpt::read(dev, sector)?.expect("read above");
            let disk_sectors = disk_bytes / sector;
            if gpt.backup_lba() != disk_sectors - 1 {
                return Err(TableError::Unsupported(
                    "the GPT's backup is not at the disk's end (grow the root first)".into(),
                ));
            }
            if start / sector < gpt.first_usable() || end / sector - 1 > gpt.last_usable() {
                return Err(TableError::Unsupported(format!(
                    "bytes {start}..{end} are outside the GPT's usable area"
                )));
            }
            let slot = (0..gpt.entry_count())
                .find(|&i| gpt.entry(i)[..16].iter().all(|&b| b == 0))
                .ok_or_else(|| TableError::Unsupported("no free GPT entry".into()))?;
            let e = gpt.entry_mut(slot);
            e.fill(0);
            e[..16].copy_from_slice(&guid_from_string(new.gpt_type));
            e[16..32].copy_from_slice(&new.unique);
            e[32..40].copy_from_slice(&(start / sector).to_le_bytes());
            e[40..48].copy_from_slice(&(end / sector - 1).to_le_bytes());
            for (i, u) in new.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
            gpt.write(dev, disk_sectors)?;
            Ok(Added {
                kind: Kind::Gpt,
                number: slot as u32 + 1,
                start,
                end,
            })
        }
        Kind::Mbr => {
            let mut mbr = read_at(dev, 0, 512, "reading the MBR")?;
            let slot = (0..4).find(|s| mbr[446 + s * 16 + 4] == 0).ok_or_else(|| {
                TableError::Unsupported("all four MBR partition slots are used".into())
            })?;
            let e = 446 + slot * 16;
            mbr[e..e + 16].fill(0);
            mbr[e + 1..e + 4].copy_from_slice(&[0xfe, 0xff, 0xff]);
            mbr[e + 4] = new.mbr_type;
            mbr[e + 5..e + 8].copy_from_slice(&[0xfe, 0xff, 0xff]);
            mbr[e + 8..e + 12].copy_from_slice(&((start / 512) as u32).to_le_bytes());
            mbr[e + 12..e + 16].copy_from_slice(&(((end - start) / 512) as u32).to_le_bytes());
            write_at(dev, 0, &mbr, "writing the MBR")?;
            Ok(Added {
                kind: Kind::Mbr,
                number: slot as u32 + 1,
                start,
                end,
            })
        }
    }
}

/// Test support: lays out fresh tables on files standing in for disks.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    /// A GPT with 128 entries of 128 bytes on a disk of `disk_bytes`, with
    /// these (type GUID, first byte, end byte) partitions.
    pub fn gpt<D: Read + Write + Seek>(dev: &mut D, disk_bytes: u64, parts: &[(&str, u64, u64)]) {
        let sector = 512u64;
        let disk_sectors = disk_bytes / sector;
        let mut mbr = vec![0u8; 512];
        mbr[446 + 4] = MBR_TYPE_PROTECTIVE;
        mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        write_at(dev, 0, &mbr, "t").unwrap();
        let mut header = vec![0u8; 512];
        header[..8].copy_from_slice(GPT_SIGNATURE);
        header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        header[12..16].copy_from_slice(&92u32.to_le_bytes());
        header[40..48].copy_from_slice(&34u64.to_le_bytes());
        header[48..56].copy_from_slice(&(disk_sectors - 34).to_le_bytes());
        header[56..72].copy_from_slice(&[7u8; 16]);
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&128u32.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());
        let mut entries = vec![0u8; 128 * 128];
        for (i, (ty, start, end)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&guid_from_string(ty));
            e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
            e[32..40].copy_from_slice(&(start / sector).to_le_bytes());
            e[40..48].copy_from_slice(&(end / sector - 1).to_le_bytes());
        }
        let mut gpt = Gpt {
            sector,
            header,
            entries,
        };
        gpt.write(dev, disk_sectors).unwrap();
        fix_protective_mbr(dev, disk_bytes).unwrap();
    }

    /// An MBR with these (type, first byte, end byte) partitions.
    pub fn mbr<D: Write + Seek>(dev: &mut D, parts: &[(u8, u64, u64)]) {
        let mut mbr = vec![0u8; 512];
        for (i, (ty, start, end)) in parts.iter().enumerate() {
            let e = 446 + i * 16;
            mbr[e + 4] = *ty;
            mbr[e + 8..e + 12].copy_from_slice(&((start / 512) as u32).to_le_bytes());
            mbr[e + 12..e + 16].copy_from_slice(&(((end - start) / 512) as u32).to_le_bytes());
        }
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        write_at(dev, 0, &mbr, "t").unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

    fn disk(bytes: u64) -> Cursor<Vec<u8>> {
        Cursor::new(vec![0u8; bytes as usize])
    }

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn guids_round_trip_mixed_endian() {
        let raw = guid_from_string(GUID_ESP);
        // The on-disk bytes of the ESP type, as the UEFI spec lists them.
        assert_eq!(&raw[..4], &[0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(guid_to_string(&raw), GUID_ESP);
    }

    /// An image made for a 64 MiB disk, written onto a 256 MiB one: the
    /// root grows to the reserve, the backup GPT moves to the end, and the
    /// result reads back with valid CRCs (also from the backup alone).
    #[test]
    fn gpt_root_grows_and_the_backup_moves_to_the_end() {
        let mut d = disk(256 * MIB);
        build::gpt(
            &mut d,
            64 * MIB,
            &[(GUID_ESP, MIB, 9 * MIB), (LINUX, 9 * MIB, 63 * MIB)],
        );
        let t = read(&mut d, 512).unwrap().unwrap();
        assert_eq!(t.kind, Kind::Gpt);
        assert_eq!(t.partitions.len(), 2);
        assert!(t.partitions[0].is_esp());
        let g = grow_last(&mut d, 512, 256 * MIB, 17 * MIB).unwrap();
        assert_eq!(
            g,
            Grown {
                kind: Kind::Gpt,
                number: 2,
                start: 9 * MIB,
                old_end: 63 * MIB,
                new_end: 239 * MIB
            }
        );
        let t = read(&mut d, 512).unwrap().unwrap();
        assert_eq!(t.last().unwrap().end, 239 * MIB);
        // The backup header sits in the last sector and is valid on its own.
        let last = 256 * MIB / 512 - 1;
        let v = d.get_ref();
        let backup = &v[(last * 512) as usize..(last * 512 + 512) as usize];
        assert_eq!(&backup[..8], GPT_SIGNATURE);
        assert_eq!(le64(backup, 24), last);
        let mut check = backup[..92].to_vec();
        check[16..20].fill(0);
        assert_eq!(crc32(&check), le32(backup, 16));
        let entries_at = (le64(backup, 72) * 512) as usize;
        assert_eq!(
            crc32(&v[entries_at..entries_at + 128 * 128]),
            le32(backup, 88)
        );
        // The image's old backup header is gone.
        let old = (64 * MIB / 512 - 1) * 512;
        assert!(v[old as usize..old as usize + 512].iter().all(|&b| b == 0));
        // Protective MBR covers the new disk.
        assert_eq!(le32(v, 446 + 12) as u64, 256 * MIB / 512 - 1);
        // Growing again changes nothing.
        let again = grow_last(&mut d, 512, 256 * MIB, 17 * MIB).unwrap();
        assert_eq!(again.old_end, again.new_end);
    }

    #[test]
    fn cidata_partition_goes_at_the_end_after_the_grown_root() {
        let mut d = disk(128 * MIB);
        build::gpt(&mut d, 64 * MIB, &[(LINUX, MIB, 60 * MIB)]);
        // Before growing, the backup GPT is mid-disk: refused, not half done.
        let e = add_at_end(
            &mut d,
            512,
            128 * MIB,
            &NewPartition {
                len: 16 * MIB,
                gpt_type: GUID_BASIC_DATA,
                mbr_type: MBR_TYPE_FAT32_LBA,
                name: "cidata",
                unique: [9; 16],
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("grow the root first"), "{e}");
        grow_last(&mut d, 512, 128 * MIB, 17 * MIB).unwrap();
        let a = add_at_end(
            &mut d,
            512,
            128 * MIB,
            &NewPartition {
                len: 16 * MIB,
                gpt_type: GUID_BASIC_DATA,
                mbr_type: MBR_TYPE_FAT32_LBA,
                name: "cidata",
                unique: [9; 16],
            },
        )
        .unwrap();
        assert_eq!(
            a,
            Added {
                kind: Kind::Gpt,
                number: 2,
                start: 111 * MIB,
                end: 127 * MIB
            }
        );
        let t = read(&mut d, 512).unwrap().unwrap();
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.partitions[0].end, 111 * MIB);
        assert_eq!(t.partitions[1].type_id, GUID_BASIC_DATA);
        // A second one has no room.
        assert!(
            add_at_end(
                &mut d,
                512,
                128 * MIB,
                &NewPartition {
                    len: 16 * MIB,
                    gpt_type: GUID_BASIC_DATA,
                    mbr_type: 0x0c,
                    name: "x",
                    unique: [1; 16]
                }
            )
            .is_err()
        );
    }

    #[test]
    fn sfdisk_reads_what_we_write() {
        if std::process::Command::new("sfdisk")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: no sfdisk");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(128 * MIB).unwrap();
        build::gpt(&mut f, 64 * MIB, &[(LINUX, MIB, 60 * MIB)]);
        grow_last(&mut f, 512, 128 * MIB, 17 * MIB).unwrap();
        add_at_end(
            &mut f,
            512,
            128 * MIB,
            &NewPartition {
                len: 16 * MIB,
                gpt_type: GUID_BASIC_DATA,
                mbr_type: 0x0c,
                name: "cidata",
                unique: [9; 16],
            },
        )
        .unwrap();
        drop(f);
        let out = std::process::Command::new("sfdisk")
            .args(["--json"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        // sfdisk complains on stderr about any GPT problem (bad CRC, backup
        // not at the end, overlapping partitions).
        assert!(!stderr.to_lowercase().contains("corrupt"), "{stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let parts = v["partitiontable"]["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0]["start"], 2048);
        assert_eq!(parts[0]["size"], (111 * MIB - MIB) / 512);
        assert_eq!(parts[1]["start"], 111 * MIB / 512);
        assert_eq!(parts[1]["size"], 16 * MIB / 512);
        assert_eq!(
            parts[1]["type"].as_str().unwrap().to_ascii_lowercase(),
            GUID_BASIC_DATA
        );
        assert_eq!(v["partitiontable"]["lastlba"], 128 * MIB / 512 - 34);
    }

    #[test]
    fn mbr_root_grows_and_cidata_gets_type_0c() {
        let mut d = disk(128 * MIB);
        build::mbr(&mut d, &[(0x83, MIB, 60 * MIB)]);
        let g = grow_last(&mut d, 512, 128 * MIB, 16 * MIB).unwrap();
        assert_eq!(g.new_end, 112 * MIB);
        let a = add_at_end(
            &mut d,
            512,
            128 * MIB,
            &NewPartition {
                len: 16 * MIB,
                gpt_type: GUID_BASIC_DATA,
                mbr_type: MBR_TYPE_FAT32_LBA,
                name: "cidata",
                unique: [0; 16],
            },
        )
        .unwrap();
        assert_eq!((a.number, a.start, a.end), (2, 112 * MIB, 128 * MIB));
        let t = read(&mut d, 512).unwrap().unwrap();
        assert_eq!(t.kind, Kind::Mbr);
        assert_eq!(t.partitions[1].type_id, "0x0c");
    }

    #[test]
    fn mbr_growth_stops_at_the_32_bit_limit() {
        // Only the placement arithmetic: no 3 TB buffer.
        assert_eq!(
            end_placement(Kind::Mbr, 3 << 40, 16 * MIB).unwrap().1,
            MBR_MAX_SECTORS * 512 / MIB * MIB
        );
        assert_eq!(
            end_placement(Kind::Gpt, 3 << 40, 16 * MIB).unwrap().1,
            (3 << 40) - MIB
        );
        assert_eq!(end_placement(Kind::Gpt, MIB, 16 * MIB), None);
    }

    /// A 3 TiB disk (a sparse file) with an MBR image: root stops so that
    /// the cloud-init partition still fits below 2^32 sectors.
    #[test]
    fn mbr_root_on_a_huge_disk_leaves_the_reserve_below_2_tib() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("huge.img"))
            .unwrap();
        let disk = 3u64 << 40;
        f.set_len(disk).unwrap();
        build::mbr(&mut f, &[(0x83, MIB, 60 * MIB)]);
        let g = grow_last(&mut f, 512, disk, 17 * MIB).unwrap();
        let limit = MBR_MAX_SECTORS * 512;
        assert_eq!(g.new_end, (limit - 17 * MIB) / MIB * MIB);
        let a = add_at_end(
            &mut f,
            512,
            disk,
            &NewPartition {
                len: 16 * MIB,
                gpt_type: GUID_BASIC_DATA,
                mbr_type: MBR_TYPE_FAT32_LBA,
                name: "cidata",
                unique: [0; 16],
            },
        )
        .unwrap();
        assert!(a.start >= g.new_end && a.end <= limit, "{a:?} {g:?}");
    }

    #[test]
    fn corrupt_and_missing_tables_are_clear_errors() {
        let mut d = disk(8 * MIB);
        assert!(read(&mut d, 512).unwrap().is_none());
        assert!(matches!(
            grow_last(&mut d, 512, 8 * MIB, MIB),
            Err(TableError::NoTable)
        ));
        build::gpt(&mut d, 8 * MIB, &[(LINUX, MIB, 4 * MIB)]);
        d.get_mut()[512 + 40] ^= 1; // first usable LBA, CRC now wrong
        let e = read(&mut d, 512).unwrap_err();
        assert!(e.to_string().contains("CRC"), "{e}");
        let mut d = disk(8 * MIB);
        build::mbr(&mut d, &[(0x83, MIB, 5 * MIB), (0x83, 4 * MIB, 6 * MIB)]);
        let e = grow_last(&mut d, 512, 8 * MIB, 0).unwrap_err();
        assert!(e.to_string().contains("overlap"), "{e}");
        let mut d = disk(8 * MIB);
        build::mbr(&mut d, &[(0x83, MIB, 3 * MIB), (0x05, 3 * MIB, 6 * MIB)]);
        let e = grow_last(&mut d, 512, 8 * MIB, 0).unwrap_err();
        assert!(e.to_string().contains("extended"), "{e}");
    }

    /// A GPT header with a valid CRC but absurd fields (a damaged disk of a
    /// previous tenant) is an error, never a huge allocation or an overflow.
    #[test]
    fn absurd_gpt_header_fields_are_refused() {
        for (offset, value) in [(84usize, 1u64 << 20), (72, u64::MAX / 2)] {
            let mut d = disk(8 * MIB);
            build::gpt(&mut d, 8 * MIB, &[(LINUX, MIB, 4 * MIB)]);
            let h = &mut d.get_mut()[512..1024];
            if offset == 84 {
                h[84..88].copy_from_slice(&(value as u32).to_le_bytes());
            } else {
                h[72..80].copy_from_slice(&value.to_le_bytes());
            }
            let size = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
            h[16..20].fill(0);
            let crc = crc32(&h[..size]);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            let e = read(&mut d, 512).unwrap_err();
            assert!(matches!(e, TableError::Corrupt(_)), "{offset}: {e}");
        }
    }
}
