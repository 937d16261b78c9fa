//! The deployment test disk images of `scripts/test-image/build.sh`
//! (docs/test-image.md): where they are, how to read what they print, and
//! how to put a cloud-init data partition on a copy of one, as a deployment
//! would. Used by `tests/e2e_test_image.rs`; a deployment test can include
//! it with `#[path = "e2e/test_image.rs"] mod test_image;`.

#![allow(dead_code)] // not every test uses every helper

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

/// The prefix of every line the image's init prints for the tests.
pub const MARKER: &str = "ANVIL-DEPLOYED ";

/// Disk layout of both images, in 512-byte sectors (docs/test-image.md).
pub const DISK_BYTES: u64 = 64 << 20;
pub const BOOT_START: u64 = 2048;
pub const BOOT_SECTORS: u64 = 40960;
pub const ROOT_START: u64 = 43008;
pub const ROOT_SECTORS: u64 = 16384;

/// The image files `build.sh` writes into its output directory.
pub const IMAGE_FILES: &[&str] = &[
    "bios.raw",
    "uefi.raw",
    "bios.qcow2",
    "uefi.qcow2",
    "bios-compressed.qcow2",
    "uefi-compressed.qcow2",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The directory holding the images: `$ANVIL_TEST_IMAGE_DIR` when set
/// (scripts/test.sh builds them there), else `target/test-image`. Either
/// way `build.sh` runs once per test process; it returns at once when its
/// stamp says the images are up to date.
pub fn test_image_dir() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace_root();
        let out = std::env::var_os("ANVIL_TEST_IMAGE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target/test-image"));
        let started = Instant::now();
        let o = Command::new("bash")
            .arg(root.join("scripts/test-image/build.sh"))
            .arg(&out)
            .output()
            .map_err(|e| format!("cannot run scripts/test-image/build.sh: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "scripts/test-image/build.sh {} failed ({}):\n{}{}",
                out.display(),
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        eprintln!(
            "test images ready in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        Ok(out)
    })
    .clone()
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The `key=value` parts of the image's `ANVIL-DEPLOYED` lines in a serial
/// log, in order (terminal escapes and carriage returns removed).
pub fn markers(serial: &str) -> Vec<String> {
    serial
        .lines()
        .filter_map(|l| {
            let l = l.trim_end_matches('\r');
            l.find(MARKER).map(|i| l[i + MARKER.len()..].to_string())
        })
        .collect()
}

/// Runs a program, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs a program with `input` on its standard input.
pub fn run_with_input(cmd: &mut Command, input: &str) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let o = child.wait_with_output().expect("wait");
    assert!(
        o.status.success(),
        "{cmd:?} <<< {input:?} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The sha256 of `data` in hex (as the image's init prints it), by
/// `sha256sum`.
pub fn sha256_hex(data: &str) -> String {
    run_with_input(&mut Command::new("sha256sum"), data)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A sparse copy of `src` at `dst`.
pub fn copy_disk(src: &Path, dst: &Path) {
    run(Command::new("cp").arg("--sparse=always").arg(src).arg(dst));
}

/// The files of a cloud-init data partition.
pub enum CloudData<'a> {
    /// NoCloud: `meta-data` (and `user-data`) on a FAT file system labelled
    /// `CIDATA`.
    NoCloud {
        meta_data: &'a str,
        user_data: Option<&'a str>,
        network_config: Option<&'a str>,
    },
    /// OpenStack config drive: `openstack/latest/meta_data.json` on a FAT
    /// file system labelled `config-2`.
    ConfigDrive { meta_data_json: &'a str },
}

/// Makes a FAT file system of `sectors` 512-byte sectors in the file `fs`
/// with mtools (no mount) holding `data`.
pub fn make_cloud_data_fs(fs: &Path, sectors: u64, data: &CloudData) {
    let dir = fs.with_extension("d");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let _ = std::fs::remove_file(fs);
    let label = match data {
        CloudData::NoCloud { .. } => "CIDATA",
        CloudData::ConfigDrive { .. } => "config-2",
    };
    run(Command::new("mformat")
        .arg("-C")
        .arg("-i")
        .arg(fs)
        .args([
            "-T",
            &sectors.to_string(),
            "-h",
            "64",
            "-s",
            "32",
            "-v",
            label,
        ])
        .arg("::"));
    let put = |name: &str, content: &str, dest: &str| {
        let p = dir.join(name);
        std::fs::write(&p, content).expect("write");
        run(Command::new("mcopy")
            .arg("-i")
            .arg(fs)
            .arg(&p)
            .arg(format!("::{dest}")));
    };
    match data {
        CloudData::NoCloud {
            meta_data,
            user_data,
            network_config,
        } => {
            put("meta-data", meta_data, "/meta-data");
            if let Some(u) = user_data {
                put("user-data", u, "/user-data");
            }
            if let Some(n) = network_config {
                put("network-config", n, "/network-config");
            }
        }
        CloudData::ConfigDrive { meta_data_json } => {
            for d in ["/openstack", "/openstack/latest"] {
                run(Command::new("mmd").arg("-i").arg(fs).arg(format!("::{d}")));
            }
            put(
                "meta_data.json",
                meta_data_json,
                "/openstack/latest/meta_data.json",
            );
        }
    }
}

/// Partition table type of the image: MBR (`bios.raw`) or GPT (`uefi.raw`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Table {
    Mbr,
    Gpt,
}

/// Does to a copy of an image what a deployment does to its disk: makes
/// the disk `disk_bytes` long, grows the root partition (and its ext4) up
/// to a 4 MiB cloud-init data partition placed at the end of the disk
/// (partition 3), and writes `data` into it. Returns the new root
/// partition's size in bytes.
pub fn deploy_like(disk: &Path, table: Table, disk_bytes: u64, data: &CloudData) -> u64 {
    const MIB: u64 = 2048; // sectors
    // sfdisk wants its options before the device.
    let sfdisk = |args: &[&str]| {
        let mut c = Command::new("sfdisk");
        c.args(["-q", "--no-reread", "--no-tell-kernel"])
            .args(args)
            .arg(disk);
        c
    };
    run(Command::new("truncate")
        .arg("-s")
        .arg(disk_bytes.to_string())
        .arg(disk));
    if table == Table::Gpt {
        // The backup GPT belongs at the disk's new end.
        run(&mut sfdisk(&["--relocate", "gpt-bak-std"]));
    }
    let total = disk_bytes / 512;
    // Leave the GPT backup (33 sectors) and 1 MiB alignment at the end.
    let cidata_start = (total - 33) / MIB * MIB - 4 * MIB;
    let cidata_sectors = 4 * MIB;
    let root_sectors = cidata_start - ROOT_START;
    run_with_input(
        &mut sfdisk(&["-N", "2"]),
        &format!("{ROOT_START},{root_sectors}\n"),
    );
    let ty = match table {
        Table::Mbr => "c",
        Table::Gpt => "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
    };
    run_with_input(
        &mut sfdisk(&["--append"]),
        &format!("start={cidata_start}, size={cidata_sectors}, type={ty}\n"),
    );
    // resize2fs works on a file: take the root file system out, grow it, put
    // it back.
    let root = disk.with_extension("root.ext4");
    run(Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", root.display()))
        .args(["bs=512", &format!("skip={ROOT_START}")])
        .arg(format!("count={ROOT_SECTORS}"))
        .arg("status=none"));
    run(Command::new("truncate")
        .arg("-s")
        .arg((root_sectors * 512).to_string())
        .arg(&root));
    run(Command::new("resize2fs").arg("-f").arg(&root));
    let cidata = disk.with_extension("cidata.fat");
    make_cloud_data_fs(&cidata, cidata_sectors, data);
    for (file, start) in [(&root, ROOT_START), (&cidata, cidata_start)] {
        run(Command::new("dd")
            .arg(format!("if={}", file.display()))
            .arg(format!("of={}", disk.display()))
            .args(["bs=512", &format!("seek={start}"), "conv=notrunc"])
            .arg("status=none"));
    }
    root_sectors * 512
}

/// A bootable image `image_bytes` long made from one of the test images, for
/// deployment benchmarks whose time must grow with the image (a deployment
/// skips zero ranges, so the size has to be data): the root partition and
/// its ext4 grown to the image's end, holding `/payload`, `payload_bytes`
/// of incompressible pseudo-random bytes (a fixed seed: the same bytes each
/// time), written with debugfs (no mount). Returns the root partition's
/// size in bytes.
pub fn sized_image(
    src: &Path,
    table: Table,
    dst: &Path,
    image_bytes: u64,
    payload_bytes: u64,
) -> u64 {
    const MIB: u64 = 2048; // sectors
    copy_disk(src, dst);
    run(Command::new("truncate")
        .arg("-s")
        .arg(image_bytes.to_string())
        .arg(dst));
    let sfdisk = |args: &[&str]| {
        let mut c = Command::new("sfdisk");
        c.args(["-q", "--no-reread", "--no-tell-kernel"])
            .args(args)
            .arg(dst);
        c
    };
    let total = image_bytes / 512;
    let root_end = match table {
        Table::Gpt => {
            run(&mut sfdisk(&["--relocate", "gpt-bak-std"]));
            (total - 33) / MIB * MIB
        }
        Table::Mbr => total / MIB * MIB,
    };
    let root_sectors = root_end - ROOT_START;
    run_with_input(
        &mut sfdisk(&["-N", "2"]),
        &format!("{ROOT_START},{root_sectors}\n"),
    );
    let root = dst.with_extension("root.ext4");
    run(Command::new("dd")
        .arg(format!("if={}", dst.display()))
        .arg(format!("of={}", root.display()))
        .args(["bs=512", &format!("skip={ROOT_START}")])
        .arg(format!("count={ROOT_SECTORS}"))
        .arg("status=none"));
    run(Command::new("truncate")
        .arg("-s")
        .arg((root_sectors * 512).to_string())
        .arg(&root));
    run(Command::new("resize2fs").arg("-f").arg(&root));
    let payload = dst.with_extension("payload");
    write_pseudo_random(&payload, payload_bytes);
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} payload", payload.display()))
        .arg(&root));
    // debugfs exits 0 even when a command fails (a full file system): check.
    let stat = run(Command::new("debugfs")
        .arg("-R")
        .arg("stat /payload")
        .arg(&root));
    assert!(
        stat.contains(&format!("Size: {payload_bytes}")),
        "/payload ({payload_bytes} B) did not fit into a root of {} B:\n{stat}",
        root_sectors * 512
    );
    // A clean file system (read-only check).
    run(Command::new("e2fsck").arg("-fn").arg(&root));
    run(Command::new("dd")
        .arg(format!("if={}", root.display()))
        .arg(format!("of={}", dst.display()))
        .args([
            "bs=1M",
            &format!("seek={}", ROOT_START * 512),
            "oflag=seek_bytes",
            "conv=notrunc",
        ])
        .arg("status=none"));
    let _ = std::fs::remove_file(&root);
    let _ = std::fs::remove_file(&payload);
    root_sectors * 512
}

/// `len` bytes of xorshift64* output from a fixed seed.
fn write_pseudo_random(path: &Path, len: u64) {
    use std::io::Write;
    let f = std::fs::File::create(path).expect("create payload");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let mut x: u64 = 0x414e_5649_4c00_0001;
    let mut left = len;
    let mut buf = [0u8; 8192];
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            chunk.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n]).expect("write payload");
        left -= n as u64;
    }
    w.flush().expect("flush payload");
}
