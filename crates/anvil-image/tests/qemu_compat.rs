//! Our qcow2 conversion against `qemu-img convert -O raw`, byte for byte,
//! over the shapes qemu itself writes: v2 and v3 headers, cluster sizes from
//! 512 B to 2 MiB, disk sizes that are not a cluster multiple, zero and
//! unallocated clusters, compressed clusters (deflate and zstd), extended L2
//! entries, and gz/xz/zst-wrapped files. A published Debian cloud image is
//! not downloadable here (no internet): `cloud_like_image` builds a
//! comparable one (GPT with BIOS boot and EFI partitions, data spread over a
//! mostly empty disk, compressed clusters) locally.
//!
//! Needs qemu-img, qemu-io, gzip, xz and zstd (scripts/test.sh installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use anvil_image::{Error, ImageLibrary};
use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

struct Scratch {
    dir: tempfile::TempDir,
    library: ImageLibrary,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let library = ImageLibrary::open(dir.path().join("images")).unwrap();
        Scratch { dir, library }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A qcow2 made by `qemu-img create` with `opts`, then written by qemu-io.
    fn qcow2(&self, name: &str, opts: &str, size: &str, io: &[&str]) -> PathBuf {
        let path = self.path(name);
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", opts, p(&path), size],
        )
        .unwrap();
        if !io.is_empty() {
            let mut args = vec!["-f", "qcow2"];
            for cmd in io {
                args.extend(["-c", cmd]);
            }
            args.push(p(&path));
            run("qemu-io", &args).unwrap();
        }
        path
    }

    /// What qemu makes of `image`.
    fn qemu_raw(&self, image: &Path) -> Vec<u8> {
        let out = self.path("qemu.raw");
        run("qemu-img", &["convert", "-O", "raw", p(image), p(&out)]).unwrap();
        std::fs::read(out).unwrap()
    }

    /// Imports `image` and checks every promise against qemu's raw output:
    /// same bytes, sha256 of those bytes, zero map covering only zeros and
    /// every zero block, non-zero ranges that rebuild the disk.
    fn assert_matches_qemu(&self, image: &Path) -> anvil_image::ImportReport {
        let expected = self.qemu_raw(image);
        let report = self
            .library
            .import_path(image)
            .unwrap_or_else(|e| panic!("import {image:?}: {e:#?}"));
        assert_eq!(
            report.raw_size,
            expected.len() as u64,
            "raw size of {image:?}"
        );
        assert_eq!(
            report.sha256,
            hex::encode(Sha256::digest(&expected)),
            "sha256 of {image:?}"
        );
        let stored = self.library.open_image(&report.sha256).unwrap();
        let mut ours = Vec::new();
        std::io::Read::read_to_end(&mut stored.raw_reader().unwrap(), &mut ours).unwrap();
        assert!(
            ours == expected,
            "raw bytes of {image:?} differ from qemu-img convert"
        );
        stored.verify().unwrap();

        let mut rebuilt = vec![0u8; expected.len()];
        stored
            .for_each_nonzero(|offset, bytes| {
                rebuilt[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
                Ok(())
            })
            .unwrap();
        assert!(
            rebuilt == expected,
            "non-zero ranges of {image:?} do not rebuild the disk"
        );

        let mut map = stored.zero_ranges().unwrap();
        let mut covered = vec![false; expected.len()];
        let mut zero_total = 0;
        while let Some((start, len)) = map.next_range().unwrap() {
            let range = &expected[start as usize..(start + len) as usize];
            assert!(
                range.iter().all(|&b| b == 0),
                "zero range {start}+{len} holds data"
            );
            covered[start as usize..(start + len) as usize].fill(true);
            zero_total += len;
        }
        assert_eq!(zero_total, report.zero_bytes);
        let g = anvil_image::zeromap::GRANULARITY as usize;
        for (i, block) in expected.chunks(g).enumerate() {
            if block.iter().all(|&b| b == 0) {
                assert!(
                    covered[i * g],
                    "zero block {i} missing from the map of {image:?}"
                );
            }
        }
        report
    }
}

/// Deterministic mixed content: text-like runs, noise, and zero gaps, so
/// compressed clusters, incompressible clusters and holes all occur.
fn mixed_content(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while out.len() < len {
        let r = next();
        let run = 1 + (r >> 8) as usize % 70_000;
        match r % 4 {
            0 => out.extend(std::iter::repeat_n(0u8, run)),
            1 => out.extend((0..run).map(|i| b"anvil provisions bare metal "[i % 28])),
            _ => out.extend((0..run).map(|_| next() as u8)),
        }
    }
    out.truncate(len);
    out
}

const WRITES: &[&str] = &[
    "write -P 0xab 1M 64k",
    "write -P 0x11 0 512",
    "write -P 0x22 70000 3000",
    "write -P 0x33 2M 1M",
    "write -z 2M 64k",
    "write -P 0x44 3145216 512",
];

#[test]
fn v3_default_clusters_odd_size() {
    let s = Scratch::new();
    // 3 MiB + 512: the last cluster is cut short.
    let img = s.qcow2("v3.qcow2", "compat=1.1", "3146240", WRITES);
    let r = s.assert_matches_qemu(&img);
    assert_eq!(r.raw_size, 3_146_240);
    assert_eq!(r.source_format.to_string(), "qcow2");
    assert!(!r.already_present);
}

#[test]
fn v2_header() {
    let s = Scratch::new();
    let img = s.qcow2("v2.qcow2", "compat=0.10", "3146240", WRITES);
    s.assert_matches_qemu(&img);
}

#[test]
fn cluster_sizes_from_512_bytes_to_2_mib() {
    let s = Scratch::new();
    for (cluster, size) in [
        ("512", "3146240"),
        ("4096", "3146240"),
        ("65536", "5M"),
        ("2M", "5242881"),
    ] {
        for compat in ["0.10", "1.1"] {
            let img = s.qcow2(
                &format!("c{cluster}-{compat}.qcow2"),
                &format!("compat={compat},cluster_size={cluster}"),
                size,
                WRITES,
            );
            s.assert_matches_qemu(&img);
        }
    }
}

#[test]
fn empty_disk_is_all_zeros() {
    let s = Scratch::new();
    let img = s.qcow2("empty.qcow2", "compat=1.1", "10M", &[]);
    let r = s.assert_matches_qemu(&img);
    assert_eq!(r.zero_bytes, 10 << 20);
}

#[test]
fn compressed_clusters_deflate_and_zstd() {
    let s = Scratch::new();
    let raw = s.path("mixed.raw");
    std::fs::write(&raw, mixed_content(6 * 1024 * 1024 + 4608, 7)).unwrap();
    for (name, opts) in [
        ("c-v3.qcow2", "compat=1.1"),
        ("c-v2.qcow2", "compat=0.10"),
        ("c-4k.qcow2", "cluster_size=4096"),
        ("c-512.qcow2", "cluster_size=512"),
        ("c-2m.qcow2", "cluster_size=2M"),
        ("c-zstd.qcow2", "compression_type=zstd"),
    ] {
        let img = s.path(name);
        run(
            "qemu-img",
            &[
                "convert",
                "-q",
                "-c",
                "-O",
                "qcow2",
                "-o",
                opts,
                p(&raw),
                p(&img),
            ],
        )
        .unwrap();
        let r = s.assert_matches_qemu(&img);
        assert_eq!(r.raw_size, 6 * 1024 * 1024 + 4608);
    }
}

#[test]
fn extended_l2_subclusters() {
    let s = Scratch::new();
    let img = s.qcow2(
        "ext.qcow2",
        "extended_l2=on,cluster_size=128k",
        "3146240",
        &[
            "write -P 0xab 1M 4k",
            "write -P 0xcd 1040k 8k",
            "write -P 0x5 0 200k",
            "write -z 64k 16k",
            "write -P 0x6 3M 512",
        ],
    );
    s.assert_matches_qemu(&img);
}

#[test]
fn compressed_wrappers_around_qcow2_and_raw() {
    let s = Scratch::new();
    let raw = s.path("disk.raw");
    std::fs::write(&raw, mixed_content(3 * 1024 * 1024 + 512, 11)).unwrap();
    let qcow2 = s.path("disk.qcow2");
    run(
        "qemu-img",
        &["convert", "-q", "-O", "qcow2", p(&raw), p(&qcow2)],
    )
    .unwrap();
    let mut digests = Vec::new();
    for base in [&raw, &qcow2] {
        for (tool, ext, wrapper) in [
            ("gzip", "gz", "gz"),
            ("xz", "xz", "xz"),
            ("zstd", "zst", "zst"),
        ] {
            let wrapped = PathBuf::from(format!("{}.{ext}", p(base)));
            run(tool, &["-k", "-q", "-f", p(base)]).unwrap();
            let expected = s.qemu_raw(base);
            let r = s.library.import_path(&wrapped).unwrap();
            assert_eq!(
                r.sha256,
                hex::encode(Sha256::digest(&expected)),
                "{wrapped:?}"
            );
            assert!(r.source_format.to_string().ends_with(wrapper));
            digests.push(r.sha256);
        }
    }
    // Six wrappings of one disk: one stored image.
    assert!(digests.iter().all(|d| *d == digests[0]));
    let stored: Vec<_> = std::fs::read_dir(s.library.dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .collect();
    assert_eq!(stored.len(), 2, "one .raw.zst and one .zeromap");
}

#[test]
fn reimport_is_deduplicated() {
    let s = Scratch::new();
    let img = s.qcow2("a.qcow2", "compat=1.1", "2M", &["write -P 0x7 0 64k"]);
    let first = s.library.import_path(&img).unwrap();
    let again = s.library.import_path(&img).unwrap();
    assert_eq!(first.sha256, again.sha256);
    assert!(again.already_present);
    s.library.remove(&first.sha256).unwrap();
    assert!(!s.library.contains(&first.sha256));
    assert!(matches!(
        s.library.open_image(&first.sha256),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn backing_file_is_refused() {
    let s = Scratch::new();
    let base = s.qcow2("base.qcow2", "compat=1.1", "2M", &["write -P 0x7 0 64k"]);
    let overlay = s.path("overlay.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            p(&base),
            p(&overlay),
        ],
    )
    .unwrap();
    match s.library.import_path(&overlay) {
        Err(Error::BackingFile { name }) => assert!(name.ends_with("base.qcow2"), "{name}"),
        other => panic!("expected a backing-file refusal, got {other:?}"),
    }
}

#[test]
fn encrypted_image_is_refused() {
    let s = Scratch::new();
    let img = s.path("enc.qcow2");
    // qemu times its PBKDF on the CPU and fails ("Unable to get accurate CPU
    // usage") now and then on a loaded machine: try a few times.
    let made = (0..5).any(|_| {
        run(
            "qemu-img",
            &[
                "create",
                "-q",
                "--object",
                "secret,id=sec0,data=hunter2",
                "-f",
                "qcow2",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sec0",
                p(&img),
                "1M",
            ],
        )
        .is_ok()
    });
    assert!(made, "qemu-img could not create a LUKS qcow2");
    assert!(matches!(
        s.library.import_path(&img),
        Err(Error::Encrypted { .. })
    ));
}

#[test]
fn truncated_and_corrupt_inputs_are_errors() {
    let s = Scratch::new();
    let raw = s.path("m.raw");
    std::fs::write(&raw, mixed_content(2 * 1024 * 1024, 3)).unwrap();
    let img = s.path("m.qcow2");
    run(
        "qemu-img",
        &["convert", "-q", "-c", "-O", "qcow2", p(&raw), p(&img)],
    )
    .unwrap();
    let bytes = std::fs::read(&img).unwrap();

    // A cut that qemu refuses we refuse too; where qemu still reads the
    // image (the cut fell into trailing space) we must produce its bytes
    // or refuse (we are stricter about data clusters past the end).
    let cut = s.path("cut.qcow2");
    for len in [
        50,
        100,
        70_000,
        200_000,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 700,
    ] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let qemu_out = s.path("cut.raw");
        let qemu_ok = Command::new("qemu-img")
            .args(["convert", "-O", "raw", p(&cut), p(&qemu_out)])
            .output()
            .unwrap()
            .status
            .success();
        match s.library.import_path(&cut) {
            Ok(r) => {
                assert!(
                    qemu_ok,
                    "qcow2 cut at {len} bytes: qemu refuses, we accepted"
                );
                let expected = std::fs::read(&qemu_out).unwrap();
                assert_eq!(
                    r.sha256,
                    hex::encode(Sha256::digest(&expected)),
                    "qcow2 cut at {len} bytes"
                );
            }
            Err(e) => assert!(matches!(e, Error::InvalidQcow2 { .. }), "cut at {len}: {e}"),
        }
    }

    // Damage inside the compressed clusters: an error, or (where deflate
    // happens to accept it) some image; never a panic.
    let mut x = 99u64;
    for _ in 0..40 {
        let mut damaged = bytes.clone();
        for _ in 0..16 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % damaged.len();
            damaged[at] ^= (x >> 40) as u8 | 1;
        }
        std::fs::write(&cut, &damaged).unwrap();
        let _ = s.library.import_path(&cut);
    }

    run("gzip", &["-k", "-q", "-f", p(&raw)]).unwrap();
    let gz = std::fs::read(s.path("m.raw.gz")).unwrap();
    let cut_gz = s.path("cut.raw.gz");
    std::fs::write(&cut_gz, &gz[..gz.len() / 2]).unwrap();
    assert!(matches!(
        s.library.import_path(&cut_gz),
        Err(Error::Decompress { format: "gz", .. })
    ));

    let empty = s.path("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(s.library.import_path(&empty), Err(Error::Empty)));
    // Nothing half-written is left behind.
    assert_eq!(
        std::fs::read_dir(s.library.dir().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

/// A disk shaped like a published cloud image: GPT with a BIOS boot and an
/// EFI system partition, a filesystem's worth of data spread over a large,
/// mostly empty disk, stored as a compressed qcow2.
#[test]
fn cloud_like_image() {
    let s = Scratch::new();
    let raw = s.path("cloud.raw");
    let size = 64 * 1024 * 1024;
    let mut disk = vec![0u8; size];
    // Protective MBR + GPT header + 3 entries: BIOS boot, ESP, Linux.
    disk[446 + 4] = 0xee;
    disk[510] = 0x55;
    disk[511] = 0xaa;
    disk[512..520].copy_from_slice(b"EFI PART");
    disk[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
    disk[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
    disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
    disk[1024..1040].copy_from_slice(b"Hah!IdontNeedEFI");
    disk[1152..1168].copy_from_slice(&[
        0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9,
        0x3b,
    ]);
    disk[1280..1296].copy_from_slice(&[
        0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d,
        0xe4,
    ]);
    for (at, seed) in [(1 << 20, 1), (9 << 20, 2), (30 << 20, 3), (63 << 20, 4)] {
        let chunk = mixed_content(1 << 20, seed);
        disk[at..at + chunk.len()].copy_from_slice(&chunk);
    }
    std::fs::write(&raw, &disk).unwrap();
    let img = s.path("cloud.qcow2");
    run(
        "qemu-img",
        &["convert", "-q", "-c", "-O", "qcow2", p(&raw), p(&img)],
    )
    .unwrap();
    let r = s.assert_matches_qemu(&img);
    assert_eq!(r.boot_modes.firmware(), Some("bios+uefi"));
    assert!(
        r.zero_bytes > 50 << 20,
        "most of the disk is holes: {}",
        r.zero_bytes
    );
    assert!(r.stored_size < 4 << 20, "stored {} bytes", r.stored_size);
}
