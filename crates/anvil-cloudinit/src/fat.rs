//! A FAT16 filesystem image holding the rendered files, so the agent can
//! write the CIDATA / config-2 partition with plain writes: no `mkfs.vfat`,
//! no mount, nothing extra in the ramdisk. (The `fatfs` crate was checked:
//! last release 2022, its rewrite unreleased since; this writer is small and
//! only ever creates a fresh filesystem.)
//!
//! Layout: 512-byte sectors, 2 KiB clusters, two FATs, 512 root entries.
//! Every name gets VFAT long-name entries (cloud-init looks for lower-case
//! `meta-data`, `user-data`, `openstack/latest/...`) plus a unique 8.3 alias.
//! Timestamps are fixed (1980-01-01), so the same files give the same bytes.

use std::collections::BTreeMap;

use crate::{Error, RenderedFile};

const SECTOR: usize = 512;
const SECTORS_PER_CLUSTER: usize = 4;
const CLUSTER: usize = SECTOR * SECTORS_PER_CLUSTER;
const RESERVED_SECTORS: usize = 1;
const FATS: usize = 2;
const ROOT_ENTRIES: usize = 512;
const DIR_ENTRY: usize = 32;
/// FAT16 needs at least 4085 clusters, and holds at most 65524.
const MIN_CLUSTERS: usize = 4085;
const MAX_CLUSTERS: usize = 65524;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_LFN: u8 = 0x0F;
/// 1980-01-01: day 1, month 1, year 0.
const FAT_DATE: u16 = (1 << 5) | 1;

#[derive(Default)]
struct Dir {
    files: BTreeMap<String, Vec<u8>>,
    dirs: BTreeMap<String, Dir>,
}

/// Builds a FAT16 image of exactly `size` bytes labelled `label` (e.g.
/// `CIDATA`, `config-2`) holding `files` (paths with `/`).
pub fn build_fat_image(label: &str, files: &[RenderedFile], size: u64) -> Result<Vec<u8>, Error> {
    let err = |reason: String| Error::Layout { reason };
    let label_bytes = volume_label(label).map_err(err)?;
    let size = usize::try_from(size).map_err(|_| err("image size too large".into()))?;
    if size % SECTOR != 0 {
        return Err(err(format!(
            "image size {size} is not a multiple of {SECTOR}"
        )));
    }
    let total_sectors = size / SECTOR;
    let root_sectors = ROOT_ENTRIES * DIR_ENTRY / SECTOR;
    // Sectors per FAT: enough 2-byte entries for every cluster (+2 reserved).
    let mut fat_sectors = 1;
    let clusters = loop {
        let data = total_sectors
            .checked_sub(RESERVED_SECTORS + FATS * fat_sectors + root_sectors)
            .ok_or_else(|| err(format!("{size} bytes is too small for a FAT16 filesystem")))?;
        let clusters = data / SECTORS_PER_CLUSTER;
        if (clusters + 2) * 2 <= fat_sectors * SECTOR {
            break clusters;
        }
        fat_sectors += 1;
    };
    if !(MIN_CLUSTERS..=MAX_CLUSTERS).contains(&clusters) {
        return Err(err(format!(
            "{size} bytes gives {clusters} clusters of {CLUSTER} bytes; FAT16 needs {MIN_CLUSTERS}..={MAX_CLUSTERS}"
        )));
    }

    let mut tree = Dir::default();
    for f in files {
        let mut parts: Vec<&str> = f.path.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        let mut dir = &mut tree;
        for p in parts {
            validate_name(p).map_err(err)?;
            dir = dir.dirs.entry(p.to_string()).or_default();
        }
        validate_name(name).map_err(err)?;
        if dir.dirs.contains_key(name)
            || dir
                .files
                .insert(name.to_string(), f.bytes.clone())
                .is_some()
        {
            return Err(err(format!("{} is listed twice", f.path)));
        }
    }

    let mut img = vec![0u8; size];
    let fat_start = RESERVED_SECTORS * SECTOR;
    let root_start = fat_start + FATS * fat_sectors * SECTOR;
    let data_start = root_start + root_sectors * SECTOR;
    let mut w = Writer {
        fat: vec![0u16; clusters + 2],
        data: &mut img[data_start..],
        next: 2,
        clusters,
    };
    w.fat[0] = 0xFFF8;
    w.fat[1] = 0xFFFF;
    let mut root = vec![short_entry(&label_bytes, ATTR_VOLUME, 0, 0)];
    w.write_dir_entries(&tree, 0, &mut root).map_err(err)?;
    if root.len() > ROOT_ENTRIES {
        return Err(err("too many files in the root directory".into()));
    }
    let fat = std::mem::take(&mut w.fat);
    for (i, e) in root.iter().enumerate() {
        img[root_start + i * DIR_ENTRY..root_start + (i + 1) * DIR_ENTRY].copy_from_slice(e);
    }
    for copy in 0..FATS {
        let start = fat_start + copy * fat_sectors * SECTOR;
        for (i, v) in fat.iter().enumerate() {
            img[start + 2 * i..start + 2 * i + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    boot_sector(
        &mut img[..SECTOR],
        total_sectors,
        fat_sectors,
        &label_bytes,
        files,
    );
    Ok(img)
}

struct Writer<'a> {
    fat: Vec<u16>,
    data: &'a mut [u8],
    next: usize,
    clusters: usize,
}

impl Writer<'_> {
    /// Stores `bytes` in a fresh cluster chain; returns its first cluster
    /// (0 for empty content, as FAT wants for empty files).
    fn store(&mut self, bytes: &[u8]) -> Result<u16, String> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let count = bytes.len().div_ceil(CLUSTER);
        if self.next + count > self.clusters + 2 {
            return Err("the files do not fit in the filesystem".into());
        }
        let first = self.next;
        for i in 0..count {
            let c = first + i;
            self.fat[c] = if i + 1 == count {
                0xFFFF
            } else {
                (c + 1) as u16
            };
            let chunk = &bytes[i * CLUSTER..bytes.len().min((i + 1) * CLUSTER)];
            let off = (c - 2) * CLUSTER;
            self.data[off..off + chunk.len()].copy_from_slice(chunk);
        }
        self.next += count;
        Ok(first as u16)
    }

    /// Appends the entries of `dir`'s children to `out`, writing
    /// subdirectories (their `.` and `..` point at `self_cluster`'s child and
    /// `self_cluster`; 0 is the root).
    fn write_dir_entries(
        &mut self,
        dir: &Dir,
        self_cluster: u16,
        out: &mut Vec<[u8; 32]>,
    ) -> Result<(), String> {
        let mut taken: Vec<[u8; 11]> = Vec::new();
        for (name, sub) in &dir.dirs {
            // Reserve the subdirectory's clusters first so `.` knows its own.
            // Worst case per child: 20 long-name entries (255 characters)
            // plus its 8.3 entry.
            let entries = 2 + (sub.dirs.len() + sub.files.len()) * 21;
            let len = (entries * DIR_ENTRY).div_ceil(CLUSTER).max(1) * CLUSTER;
            let first = self.store(&vec![0u8; len])?;
            let mut own = vec![
                short_entry(b".          ", ATTR_DIR, first, 0),
                short_entry(b"..         ", ATTR_DIR, self_cluster, 0),
            ];
            self.write_dir_entries(sub, first, &mut own)?;
            let bytes: Vec<u8> = own.concat();
            let off = (usize::from(first) - 2) * CLUSTER;
            self.data[off..off + bytes.len()].copy_from_slice(&bytes);
            push_named(out, name, &mut taken, ATTR_DIR, first, 0);
        }
        for (name, bytes) in &dir.files {
            let first = self.store(bytes)?;
            push_named(
                out,
                name,
                &mut taken,
                ATTR_ARCHIVE,
                first,
                bytes.len() as u32,
            );
        }
        Ok(())
    }
}

fn push_named(
    out: &mut Vec<[u8; 32]>,
    name: &str,
    taken: &mut Vec<[u8; 11]>,
    attr: u8,
    cluster: u16,
    size: u32,
) {
    let short = short_alias(name, taken);
    taken.push(short);
    let sum = lfn_checksum(&short);
    let units: Vec<u16> = name.encode_utf16().collect();
    let pieces = units.len().div_ceil(13);
    for seq in (1..=pieces).rev() {
        let mut e = [0u8; 32];
        e[0] = seq as u8 | if seq == pieces { 0x40 } else { 0 };
        e[11] = ATTR_LFN;
        e[13] = sum;
        let slots: [usize; 13] = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (k, &slot) in slots.iter().enumerate() {
            let i = (seq - 1) * 13 + k;
            let unit = match i.cmp(&units.len()) {
                std::cmp::Ordering::Less => units[i],
                std::cmp::Ordering::Equal => 0x0000,
                std::cmp::Ordering::Greater => 0xFFFF,
            };
            e[slot..slot + 2].copy_from_slice(&unit.to_le_bytes());
        }
        out.push(e);
    }
    out.push(short_entry(&short, attr, cluster, size));
}

fn short_entry(name: &[u8; 11], attr: u8, cluster: u16, size: u32) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    if attr != ATTR_VOLUME {
        for off in [16, 18, 24] {
            e[off..off + 2].copy_from_slice(&FAT_DATE.to_le_bytes());
        }
    }
    e[26..28].copy_from_slice(&cluster.to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// `NAME~N.EXT`, upper case, unique in its directory.
fn short_alias(name: &str, taken: &[[u8; 11]]) -> [u8; 11] {
    let clean = |s: &str| -> Vec<u8> {
        s.bytes()
            .filter(|b| b.is_ascii_alphanumeric() || b"$%'-_@~`!(){}^#&".contains(b))
            .map(|b| b.to_ascii_uppercase())
            .collect()
    };
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (clean(b), clean(e)),
        _ => (clean(name), Vec::new()),
    };
    let mut out = [b' '; 11];
    for (i, b) in ext.iter().take(3).enumerate() {
        out[8 + i] = *b;
    }
    for n in 1..1_000_000u32 {
        let tail = format!("~{n}");
        let keep = 8 - tail.len();
        let mut cand = out;
        cand[..8].fill(b' ');
        let stem: Vec<u8> = base.iter().take(keep).copied().collect();
        let stem = if stem.is_empty() { b"_".to_vec() } else { stem };
        cand[..stem.len()].copy_from_slice(&stem);
        cand[stem.len()..stem.len() + tail.len()].copy_from_slice(tail.as_bytes());
        if !taken.contains(&cand) {
            return cand;
        }
    }
    unreachable!("a directory holds far fewer than a million entries")
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.len() > 255 {
        return Err(format!("invalid file name {name:?}"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || "\"*/:<>?\\|".contains(c))
    {
        return Err(format!(
            "file name {name:?} has characters FAT cannot store"
        ));
    }
    Ok(())
}

/// Labels are up to 11 characters of upper-case-insensitive ASCII; cloud-init
/// compares them case-insensitively (`CIDATA`, `config-2`), and blkid shows
/// them as stored.
fn volume_label(label: &str) -> Result<[u8; 11], String> {
    if label.is_empty()
        || label.len() > 11
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "invalid volume label {label:?} (1 to 11 of A-Z 0-9 - _)"
        ));
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

fn boot_sector(
    s: &mut [u8],
    total_sectors: usize,
    fat_sectors: usize,
    label: &[u8; 11],
    files: &[RenderedFile],
) {
    s[0..3].copy_from_slice(&[0xEB, 0x3C, 0x90]);
    s[3..11].copy_from_slice(b"ANVIL   ");
    s[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    s[13] = SECTORS_PER_CLUSTER as u8;
    s[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    s[16] = FATS as u8;
    s[17..19].copy_from_slice(&(ROOT_ENTRIES as u16).to_le_bytes());
    if total_sectors < 65536 {
        s[19..21].copy_from_slice(&(total_sectors as u16).to_le_bytes());
    } else {
        s[32..36].copy_from_slice(&(total_sectors as u32).to_le_bytes());
    }
    s[21] = 0xF8;
    s[22..24].copy_from_slice(&(fat_sectors as u16).to_le_bytes());
    s[24..26].copy_from_slice(&32u16.to_le_bytes());
    s[26..28].copy_from_slice(&64u16.to_le_bytes());
    s[36] = 0x80;
    s[38] = 0x29;
    // Volume serial: derived from the content, so identical input gives an
    // identical image (and different deployments different serials).
    let serial = files
        .iter()
        .flat_map(|f| f.path.bytes().chain(f.bytes.iter().copied()))
        .fold(0x811C_9DC5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    s[39..43].copy_from_slice(&serial.to_le_bytes());
    s[43..54].copy_from_slice(label);
    s[54..62].copy_from_slice(b"FAT16   ");
    s[510] = 0x55;
    s[511] = 0xAA;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, bytes: &[u8]) -> RenderedFile {
        RenderedFile {
            path: path.into(),
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn aliases_are_unique_and_checksummed() {
        let mut taken = Vec::new();
        let a = short_alias("meta-data", &taken);
        assert_eq!(&a, b"META-D~1   ");
        taken.push(a);
        assert_eq!(&short_alias("meta-data2", &taken), b"META-D~2   ");
        assert_eq!(&short_alias("meta_data.json", &[]), b"META_D~1JSO");
        assert_eq!(&short_alias("...", &[]), b"_~1        ");
        // The checksum from the FAT specification's algorithm.
        assert_eq!(lfn_checksum(b"META-D~1   "), lfn_checksum(b"META-D~1   "));
        assert_ne!(lfn_checksum(b"META-D~1   "), lfn_checksum(b"META-D~2   "));
    }

    #[test]
    fn geometry_and_refusals() {
        let img = build_fat_image("CIDATA", &[f("meta-data", b"{}\n")], 16 << 20).unwrap();
        assert_eq!(img.len(), 16 << 20);
        assert_eq!(&img[510..512], &[0x55, 0xAA]);
        assert_eq!(&img[43..54], b"CIDATA     ");
        assert_eq!(&img[54..62], b"FAT16   ");
        // deterministic
        assert_eq!(
            img,
            build_fat_image("CIDATA", &[f("meta-data", b"{}\n")], 16 << 20).unwrap()
        );
        assert!(
            build_fat_image("CIDATA", &[], 1 << 20).is_err(),
            "too few clusters for FAT16"
        );
        assert!(build_fat_image("CIDATA", &[], (16 << 20) + 1).is_err());
        assert!(build_fat_image("lower case!", &[], 16 << 20).is_err());
        assert!(build_fat_image("TOO-LONG-LABEL", &[], 16 << 20).is_err());
        assert!(build_fat_image("CIDATA", &[f("a", b"1"), f("a", b"2")], 16 << 20).is_err());
        assert!(build_fat_image("CIDATA", &[f("a:b", b"1")], 16 << 20).is_err());
        let big = vec![7u8; 17 << 20];
        let e = build_fat_image("CIDATA", &[f("user-data", &big)], 16 << 20).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    }
}
