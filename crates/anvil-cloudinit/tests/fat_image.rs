//! The FAT16 images `build_fat_image` makes are read back with Debian's
//! dosfstools (`fsck.fat -n`: no errors) and mtools (`mdir`, `mcopy` to
//! stdout, `mlabel -s`): names, label and every file's bytes. No mount needed.

use std::path::Path;
use std::process::Command;

use anvil_cloudinit::{
    CIDATA_SIZE, DeployContext, Flavor, NetworkConfig, RenderedFile, build_fat_image, render,
};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn tools_present() -> bool {
    let ok = ["mdir", "mcopy", "mlabel"].iter().all(|t| have(t))
        && (have("fsck.fat") || Path::new("/sbin/fsck.fat").exists());
    if !ok {
        eprintln!("SKIPPED: mtools and dosfstools are needed (scripts/test.sh installs them)");
    }
    ok
}

fn run(cmd: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fsck() -> &'static str {
    if have("fsck.fat") {
        "fsck.fat"
    } else {
        "/sbin/fsck.fat"
    }
}

fn check_image(label: &str, files: &[RenderedFile]) {
    let img = build_fat_image(label, files, CIDATA_SIZE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cidata.img");
    std::fs::write(&path, &img).unwrap();
    let p = path.to_str().unwrap();
    let report = String::from_utf8(run(fsck(), &["-n", "-v", p])).unwrap();
    // (fsck.fat -n exits non-zero on any inconsistency; run() checks that.)
    assert!(report.contains("16 bit entries"), "{report}");
    // What cloud-init's NoCloud/ConfigDrive search (blkid -t LABEL=…) sees.
    let probe = String::from_utf8(run("blkid", &["-p", "-o", "export", p])).unwrap();
    assert!(probe.contains("TYPE=vfat"), "{probe}");
    assert!(probe.contains(&format!("LABEL={label}\n")), "{probe}");
    let shown = String::from_utf8(run("mlabel", &["-i", p, "-s", "::"])).unwrap();
    assert!(shown.contains(label), "label: {shown}");
    for f in files {
        let got = run("mcopy", &["-n", "-i", p, &format!("::/{}", f.path), "-"]);
        assert_eq!(got, f.bytes, "{} read back differs", f.path);
    }
    let listing = String::from_utf8(run("mdir", &["-/", "-a", "-i", p, "::"])).unwrap();
    for f in files {
        let name = f.path.rsplit('/').next().unwrap();
        assert!(listing.contains(name), "{name} not listed:\n{listing}");
    }
}

fn context(user_data: Vec<u8>) -> DeployContext {
    DeployContext::new(
        "0193a4b2-7c1d-7e00-8000-0123456789ab",
        "node7",
        Some("lab.example.org"),
        &["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example".into()],
        Some(user_data),
        NetworkConfig::dhcp_on_boot_nic(None, "52:54:00:12:34:56").unwrap(),
    )
    .unwrap()
}

#[test]
fn nocloud_and_config_drive_images_read_back_with_dosfstools_and_mtools() {
    if !tools_present() {
        return;
    }
    // user-data spanning many clusters, with every byte value
    let user_data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let ctx = context(user_data);
    check_image("CIDATA", &render(&ctx, Flavor::NoCloud).unwrap());
    check_image("config-2", &render(&ctx, Flavor::ConfigDrive).unwrap());
}

#[test]
fn many_long_names_and_an_empty_file() {
    if !tools_present() {
        return;
    }
    let mut files: Vec<RenderedFile> = (0..150)
        .map(|i| RenderedFile {
            path: format!("openstack/latest/a-rather-long-file-name-number-{i:03}.json"),
            bytes: format!("{{\"n\": {i}}}\n").into_bytes(),
        })
        .collect();
    files.push(RenderedFile {
        path: "empty".into(),
        bytes: Vec::new(),
    });
    files.push(RenderedFile {
        path: "UPPER.TXT".into(),
        bytes: b"x".to_vec(),
    });
    check_image("CIDATA", &files);
}
