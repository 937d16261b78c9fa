//! Every network-config and seed this crate renders here is read by Debian's
//! cloud-init itself: `cloud-init devel net-convert` (netplan, eni and
//! networkd renderers) on network-config v2 and on network_data.json, and
//! cloud-init's NoCloud / ConfigDrive datasource code on the seed files.
//!
//! cloud-init comes unpacked (not installed) from
//! `scripts/cloud-init-env.sh`, which exports ANVIL_CLOUDINIT_ROOT;
//! scripts/test.sh runs it. Without it these tests say so and skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anvil_cloudinit::{
    Bond, BondMode, CIDATA_SIZE, Cidr, DeployContext, Dns, Ethernet, Flavor, HashPolicy, IpConfig,
    LacpRate, NetworkConfig, Route, Vlan, build_fat_image, render,
};
use base64::Engine as _;

struct CloudInit {
    root: PathBuf,
}

impl CloudInit {
    fn find() -> Option<CloudInit> {
        let root = match std::env::var_os("ANVIL_CLOUDINIT_ROOT") {
            Some(r) => PathBuf::from(r),
            None => {
                let default =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/cloud-init/root");
                if !default.join("usr/bin/cloud-init").exists() {
                    eprintln!(
                        "SKIPPED: cloud-init not unpacked; run crates/anvil-cloudinit/scripts/cloud-init-env.sh \
                         (scripts/test.sh does) and export ANVIL_CLOUDINIT_ROOT"
                    );
                    return None;
                }
                default
            }
        };
        assert!(
            root.join("usr/bin/cloud-init").exists(),
            "ANVIL_CLOUDINIT_ROOT={} has no usr/bin/cloud-init",
            root.display()
        );
        Some(CloudInit { root })
    }

    fn python(&self) -> Command {
        // Debian's python3 (not a pyenv shim): the Debian python3-* modules
        // cloud-init needs are installed for it.
        let mut c = Command::new("/usr/bin/python3");
        c.env(
            "PYTHONPATH",
            self.root.join("usr/lib/python3/dist-packages"),
        );
        c
    }

    /// Runs net-convert to every output kind; returns kind → all rendered text.
    fn net_convert(
        &self,
        input: &Path,
        kind: &str,
        macs: &[(&str, &str)],
    ) -> BTreeMap<&'static str, String> {
        let mut out = BTreeMap::new();
        for output_kind in ["netplan", "eni", "networkd"] {
            let dir = tempfile::tempdir().unwrap();
            let mut cmd = self.python();
            cmd.arg(self.root.join("usr/bin/cloud-init"))
                .args(["devel", "net-convert", "--network-data"])
                .arg(input)
                .args([
                    "--kind",
                    kind,
                    "--distro",
                    "debian",
                    "--output-kind",
                    output_kind,
                ])
                .arg("--directory")
                .arg(dir.path());
            for (name, mac) in macs {
                cmd.arg("--mac").arg(format!("{name},{mac}"));
            }
            let result = cmd.output().expect("run cloud-init");
            assert!(
                result.status.success(),
                "net-convert --kind {kind} --output-kind {output_kind} failed on\n{}\n--- stderr:\n{}",
                std::fs::read_to_string(input).unwrap(),
                String::from_utf8_lossy(&result.stderr)
            );
            let text = read_tree(dir.path());
            assert!(!text.is_empty(), "{output_kind}: no output files");
            out.insert(output_kind, text);
        }
        out
    }

    fn read_seed(
        &self,
        flavor: Flavor,
        files: &[anvil_cloudinit::RenderedFile],
    ) -> serde_json::Value {
        let cloud = tempfile::tempdir().unwrap();
        let seed = cloud.path().join("seed").join(match flavor {
            Flavor::NoCloud => "nocloud",
            Flavor::ConfigDrive => "config_drive",
        });
        for f in files {
            let p = seed.join(&f.path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, &f.bytes).unwrap();
        }
        self.read_seed_dir(flavor, cloud.path())
    }

    /// Runs the datasource on `cloud_dir/seed/{nocloud,config_drive}`.
    fn read_seed_dir(&self, flavor: Flavor, cloud_dir: &Path) -> serde_json::Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_seed.py");
        let kind = if flavor == Flavor::NoCloud {
            "nocloud"
        } else {
            "configdrive"
        };
        let result = self
            .python()
            .arg(script)
            .arg(kind)
            .arg(cloud_dir)
            .output()
            .unwrap();
        assert!(
            result.status.success(),
            "cloud-init's {kind} datasource did not accept the seed: {}\n{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        serde_json::from_slice(&result.stdout).unwrap()
    }
}

fn read_tree(dir: &Path) -> String {
    let mut text = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else {
                text.push_str(&format!("### {}\n", p.display()));
                text.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    text
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example";
const M1: &str = "52:54:00:12:34:01";
const M2: &str = "52:54:00:12:34:02";
const M3: &str = "52:54:00:12:34:03";

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn eth(mac: &str, name: &str, ip: IpConfig) -> Ethernet {
    Ethernet {
        mac: mac.into(),
        name: name.into(),
        mtu: None,
        ip,
    }
}

/// The networks the tests render, each with the names and addresses every
/// renderer's output must mention.
fn scenarios() -> Vec<(&'static str, NetworkConfig, Vec<&'static str>)> {
    let dhcp_default = NetworkConfig::dhcp_on_boot_nic(None, M1).unwrap();
    let static_dual = NetworkConfig {
        ethernets: vec![
            Ethernet {
                mtu: Some(9000),
                ..eth(
                    M1,
                    "eno1",
                    IpConfig {
                        addresses: vec![cidr("192.0.2.10/24"), cidr("2001:db8:1::10/64")],
                        gateway4: Some("192.0.2.1".parse().unwrap()),
                        // routers announce themselves by link-local address
                        gateway6: Some("fe80::1".parse().unwrap()),
                        routes: vec![Route {
                            to: cidr("198.51.100.0/24"),
                            via: "192.0.2.254".parse().unwrap(),
                            metric: Some(50),
                        }],
                        ..IpConfig::default()
                    },
                )
            },
            eth(M2, "eno2", IpConfig::dhcp4()),
        ],
        dns: Dns {
            nameservers: vec![
                "192.0.2.53".parse().unwrap(),
                "2001:db8:1::53".parse().unwrap(),
            ],
            search: vec!["lab.example.org".into()],
        },
        ..NetworkConfig::default()
    };
    let lacp_vlans = NetworkConfig {
        ethernets: vec![
            eth(M1, "eno1", IpConfig::dhcp4()),
            eth(M2, "ens1f0", IpConfig::default()),
            eth(M3, "ens1f1", IpConfig::default()),
        ],
        bonds: vec![Bond {
            name: "bond0".into(),
            members: vec![M2.into(), M3.into()],
            mode: BondMode::Lacp,
            lacp_rate: Some(LacpRate::Fast),
            mii_monitor_interval_ms: Some(100),
            transmit_hash_policy: Some(HashPolicy::Layer3And4),
            primary: None,
            mtu: Some(9000),
            ip: IpConfig {
                addresses: vec![cidr("10.20.0.5/24")],
                gateway4: Some("10.20.0.1".parse().unwrap()),
                ..IpConfig::default()
            },
        }],
        vlans: vec![
            Vlan {
                id: 100,
                link: "bond0".into(),
                name: None,
                mtu: Some(1500),
                ip: IpConfig {
                    addresses: vec![cidr("10.100.0.5/24")],
                    ..IpConfig::default()
                },
            },
            Vlan {
                id: 200,
                link: "eno1".into(),
                name: None,
                mtu: None,
                ip: IpConfig {
                    addresses: vec![cidr("172.16.200.5/24")],
                    routes: vec![Route {
                        to: cidr("172.17.0.0/16"),
                        via: "172.16.200.1".parse().unwrap(),
                        metric: None,
                    }],
                    ..IpConfig::default()
                },
            },
        ],
        dns: Dns {
            nameservers: vec!["10.20.0.53".parse().unwrap()],
            search: vec!["example.org".into()],
        },
    };
    let active_backup_dhcp = NetworkConfig {
        ethernets: vec![
            eth(M1, "eth0", IpConfig::default()),
            eth(M2, "eth1", IpConfig::default()),
        ],
        bonds: vec![Bond {
            name: "bond0".into(),
            members: vec![M1.into(), M2.into()],
            mode: BondMode::ActiveBackup,
            lacp_rate: None,
            mii_monitor_interval_ms: None,
            transmit_hash_policy: None,
            primary: Some(M2.into()),
            mtu: None,
            ip: IpConfig {
                dhcp4: true,
                dhcp6: true,
                ..IpConfig::default()
            },
        }],
        ..NetworkConfig::default()
    };
    vec![
        (
            "dhcp on the boot NIC",
            dhcp_default,
            vec!["enx525400123401"],
        ),
        (
            "static dual stack",
            static_dual,
            vec![
                "eno1",
                "eno2",
                "192.0.2.10",
                "2001:db8:1::10",
                "192.0.2.1",
                "fe80::1",
                "198.51.100.0",
                "192.0.2.53",
            ],
        ),
        (
            "LACP bond with VLANs",
            lacp_vlans,
            vec![
                "eno1",
                "ens1f0",
                "ens1f1",
                "bond0",
                "802.3ad",
                "10.20.0.5",
                "10.20.0.1",
                "10.100.0.5",
                "172.16.200.5",
                "172.17.0.0",
                "10.20.0.53",
            ],
        ),
        (
            "active-backup bond on DHCP, ethN renamed",
            active_backup_dhcp,
            vec![
                "enx525400123401",
                "enx525400123402",
                "bond0",
                "active-backup",
            ],
        ),
    ]
}

/// cloud-init 22.4's networkd renderer writes no bond netdev at all (bonds
/// come out as plain devices); the bond mode is checked in the other two.
fn networkd_lacks(kind: &str, want: &str) -> bool {
    kind == "networkd" && ["802.3ad", "active-backup"].contains(&want)
}

fn context(net: NetworkConfig, user_data: Option<&[u8]>) -> DeployContext {
    DeployContext::new(
        "0193a4b2-7c1d-7e00-8000-0123456789ab",
        "node7",
        Some("lab.example.org"),
        &[KEY.to_string()],
        user_data.map(<[u8]>::to_vec),
        net,
    )
    .unwrap()
}

fn mac_args(net: &NetworkConfig) -> Vec<(String, String)> {
    let v = net.validated().unwrap();
    v.ethernets
        .iter()
        .map(|e| (e.name.clone(), e.mac.clone()))
        .collect()
}

#[test]
fn network_config_v2_accepted_by_cloud_init_net_convert() {
    let Some(ci) = CloudInit::find() else { return };
    for (title, net, expect) in scenarios() {
        let files = render(&context(net.clone(), None), Flavor::NoCloud).unwrap();
        let nc = files
            .iter()
            .find(|f| f.path == "network-config")
            .expect("network-config");
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("network-config");
        std::fs::write(&input, &nc.bytes).unwrap();
        let macs = mac_args(&net);
        let macs: Vec<(&str, &str)> = macs.iter().map(|(n, m)| (n.as_str(), m.as_str())).collect();
        for (kind, text) in ci.net_convert(&input, "yaml", &macs) {
            for want in &expect {
                if networkd_lacks(kind, want) {
                    continue;
                }
                assert!(
                    text.contains(want),
                    "{title}: {kind} output lacks {want:?}:\n{text}"
                );
            }
        }
    }
}

#[test]
fn network_data_json_accepted_by_cloud_init_net_convert() {
    let Some(ci) = CloudInit::find() else { return };
    for (title, net, expect) in scenarios() {
        let files = render(&context(net.clone(), None), Flavor::ConfigDrive).unwrap();
        let nd = files
            .iter()
            .find(|f| f.path == "openstack/latest/network_data.json")
            .expect("network_data.json");
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("network_data.json");
        std::fs::write(&input, &nd.bytes).unwrap();
        let macs = mac_args(&net);
        let macs: Vec<(&str, &str)> = macs.iter().map(|(n, m)| (n.as_str(), m.as_str())).collect();
        for (kind, text) in ci.net_convert(&input, "network_data.json", &macs) {
            for want in &expect {
                if networkd_lacks(kind, want) {
                    continue;
                }
                assert!(
                    text.contains(want),
                    "{title}: {kind} output lacks {want:?}:\n{text}"
                );
            }
        }
    }
}

#[test]
fn nocloud_seed_read_by_cloud_init_datasource() {
    let Some(ci) = CloudInit::find() else { return };
    // Bytes cloud-init must hand on untouched, including a non-UTF-8 one.
    let user_data: &[u8] =
        b"#cloud-config\r\npassword: s3cret\nruncmd:\n  - [sh, -c, 'echo \xff']\n";
    for (title, net, _) in scenarios() {
        let files = render(&context(net, Some(user_data)), Flavor::NoCloud).unwrap();
        let seen = ci.read_seed(Flavor::NoCloud, &files);
        assert_eq!(
            seen["instance_id"], "0193a4b2-7c1d-7e00-8000-0123456789ab",
            "{title}"
        );
        assert_eq!(seen["fqdn"], "node7.lab.example.org", "{title}");
        assert_eq!(seen["hostname"], "node7", "{title}");
        assert_eq!(seen["public_keys"], serde_json::json!([KEY]), "{title}");
        let ud = base64::engine::general_purpose::STANDARD
            .decode(seen["user_data_b64"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            ud, user_data,
            "{title}: user-data must arrive byte for byte"
        );
        assert_eq!(seen["network_config"]["version"], 2, "{title}");
    }
}

#[test]
fn config_drive_seed_read_by_cloud_init_datasource() {
    let Some(ci) = CloudInit::find() else { return };
    let user_data: &[u8] = b"#!/bin/sh\necho hello\n";
    for (title, net, _) in scenarios() {
        let files = render(&context(net, Some(user_data)), Flavor::ConfigDrive).unwrap();
        let seen = ci.read_seed(Flavor::ConfigDrive, &files);
        assert_eq!(
            seen["instance_id"], "0193a4b2-7c1d-7e00-8000-0123456789ab",
            "{title}"
        );
        assert_eq!(seen["fqdn"], "node7.lab.example.org", "{title}");
        assert_eq!(seen["public_keys"], serde_json::json!([KEY]), "{title}");
        let ud = base64::engine::general_purpose::STANDARD
            .decode(seen["user_data_b64"].as_str().unwrap())
            .unwrap();
        assert_eq!(ud, user_data, "{title}");
        assert_eq!(
            seen["network_config"]["version"], 1,
            "{title}: converted to v1"
        );
    }
}

/// The FAT image the agent would write, copied out with mtools (no mount)
/// into a seed directory, is what cloud-init's datasources read.
#[test]
fn fat_image_contents_read_by_cloud_init_datasource() {
    let Some(ci) = CloudInit::find() else { return };
    let mcopy_present = Command::new("sh")
        .args(["-c", "command -v mcopy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mcopy_present {
        eprintln!("SKIPPED: mtools is needed (scripts/test.sh installs it)");
        return;
    }
    let user_data: &[u8] = b"#cloud-config\nruncmd: [[touch, /x]]\n";
    let net = scenarios().remove(2).1;
    for flavor in [Flavor::NoCloud, Flavor::ConfigDrive] {
        let files = render(&context(net.clone(), Some(user_data)), flavor).unwrap();
        let img = build_fat_image(flavor.label(), &files, CIDATA_SIZE).unwrap();
        let cloud = tempfile::tempdir().unwrap();
        let image = cloud.path().join("part.img");
        std::fs::write(&image, &img).unwrap();
        let seed = cloud.path().join("seed").join(match flavor {
            Flavor::NoCloud => "nocloud",
            Flavor::ConfigDrive => "config_drive",
        });
        std::fs::create_dir_all(&seed).unwrap();
        let out = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-n", "-i"])
            .arg(&image)
            .arg("::/*")
            .arg(&seed)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mcopy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = ci.read_seed_dir(flavor, cloud.path());
        assert_eq!(
            seen["instance_id"], "0193a4b2-7c1d-7e00-8000-0123456789ab",
            "{flavor:?}"
        );
        assert_eq!(seen["fqdn"], "node7.lab.example.org", "{flavor:?}");
        assert_eq!(seen["public_keys"], serde_json::json!([KEY]), "{flavor:?}");
        let ud = base64::engine::general_purpose::STANDARD
            .decode(seen["user_data_b64"].as_str().unwrap())
            .unwrap();
        assert_eq!(ud, user_data, "{flavor:?}");
        assert!(
            seen["network_config"]["version"].is_number(),
            "{flavor:?}: {seen}"
        );
    }
}
