//! cloud-init data for a deployment, rendered from a [`DeployContext`]:
//!
//! - NoCloud (filesystem label `CIDATA`): `meta-data` (instance-id,
//!   local-hostname, public-keys), `user-data` (the operator's bytes,
//!   untouched), `network-config` (version 2, NICs matched by MAC and renamed
//!   with `set-name`);
//! - OpenStack config-drive (label `config-2`) for images without NoCloud:
//!   `openstack/latest/meta_data.json`, `user_data`, `network_data.json`;
//! - a display copy with user-data secrets masked ([`mask_user_data`]);
//! - where the partition holding them goes on the disk ([`place_cidata`]).
//!
//! meta-data and network-config are written as JSON: JSON is YAML 1.2, and
//! cloud-init loads both with its YAML loader, so there is no YAML emitter to
//! trust. Pure code, no I/O; builds for musl so the agent can use it.
//! See docs/cloud-init.md.

mod context;
mod error;
mod fat;
mod layout;
mod mask;
mod netplan;
mod network;
mod network_data;

pub use context::{DeployContext, validate_ssh_key};
pub use error::Error;
pub use fat::build_fat_image;
pub use layout::{
    CIDATA_SIZE, CidataPlacement, MBR_LIMIT, PartitionTable, TAIL_RESERVE, place_cidata,
};
pub use mask::{MASK, mask_user_data};
pub use network::{
    Bond, BondMode, Cidr, Dns, Ethernet, HashPolicy, IpConfig, LacpRate, NetworkConfig, Route,
    Vlan, normalize_mac, stable_name,
};

use serde_json::{Value, json};

/// The two layouts cloud-init finds on a local filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    NoCloud,
    ConfigDrive,
}

impl Flavor {
    /// The filesystem label cloud-init looks for.
    pub fn label(self) -> &'static str {
        match self {
            Flavor::NoCloud => "CIDATA",
            Flavor::ConfigDrive => "config-2",
        }
    }
}

/// One file of the rendered data, path relative to the filesystem's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: String,
    pub bytes: Vec<u8>,
}

impl RenderedFile {
    fn new(path: &str, bytes: Vec<u8>) -> Self {
        Self {
            path: path.to_string(),
            bytes,
        }
    }

    fn json(path: &str, value: &Value) -> Self {
        let mut bytes = serde_json::to_vec_pretty(value).expect("a JSON value always serialises");
        bytes.push(b'\n');
        Self::new(path, bytes)
    }

    pub fn is_user_data(&self) -> bool {
        self.path == "user-data" || self.path.ends_with("/user_data")
    }

    /// The text to show an operator: user-data with secrets masked, the rest
    /// as is (it holds no secrets: public keys, names, addresses).
    pub fn display_text(&self) -> String {
        if self.is_user_data() {
            mask_user_data(&self.bytes)
        } else {
            String::from_utf8_lossy(&self.bytes).into_owned()
        }
    }
}

/// One rendered file as shown to an operator (API, web UI).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DisplayFile {
    pub path: String,
    pub content: String,
    /// True when secrets in `content` were replaced by [`MASK`].
    pub masked: bool,
}

/// What `GET /api/v1/machines/{id}/cloud-init` shows: the files of `flavor`
/// with user-data secrets masked.
pub fn render_for_display(ctx: &DeployContext, flavor: Flavor) -> Result<Vec<DisplayFile>, Error> {
    Ok(render(ctx, flavor)?
        .iter()
        .map(|f| {
            let content = f.display_text();
            DisplayFile {
                masked: f.is_user_data() && content.as_bytes() != f.bytes.as_slice(),
                path: f.path.clone(),
                content,
            }
        })
        .collect())
}

/// The context of a machine before any deploy parameters exist: its id and
/// host name, DHCP on the NIC it boots from (named from its latest hardware
/// facts when it has some), no keys, no user-data. The deploy request adds
/// keys, user-data and NetBox addresses on top.
pub fn default_context(
    machine_id: &str,
    hostname: &str,
    facts: Option<&anvil_inventory::HardwareFacts>,
    boot_mac: &str,
) -> Result<DeployContext, Error> {
    let network = NetworkConfig::dhcp_on_boot_nic(facts, boot_mac)?;
    DeployContext::new(machine_id, hostname, None, &[], None, network)
}

/// Renders the files of `flavor` for `ctx`, validating the network first.
pub fn render(ctx: &DeployContext, flavor: Flavor) -> Result<Vec<RenderedFile>, Error> {
    let net = ctx.network.validated()?;
    Ok(match flavor {
        Flavor::NoCloud => {
            let meta = json!({
                "instance-id": ctx.instance_id,
                "local-hostname": ctx.fqdn(),
                "public-keys": ctx.ssh_keys,
            });
            let mut files = vec![
                RenderedFile::json("meta-data", &meta),
                // NoCloud requires the file; empty is "no user-data".
                RenderedFile::new("user-data", ctx.user_data.clone().unwrap_or_default()),
            ];
            // Without network-config cloud-init falls back to DHCP on the
            // first NIC, which is the right thing when Anvil knows nothing.
            if !net.is_empty() {
                files.push(RenderedFile::json(
                    "network-config",
                    &render_network_config(&net),
                ));
            }
            files
        }
        Flavor::ConfigDrive => {
            let public_keys: serde_json::Map<String, Value> = ctx
                .ssh_keys
                .iter()
                .enumerate()
                .map(|(i, k)| (format!("key-{i}"), json!(k)))
                .collect();
            let keys: Vec<Value> = ctx
                .ssh_keys
                .iter()
                .enumerate()
                .map(|(i, k)| json!({ "name": format!("key-{i}"), "type": "ssh", "data": k }))
                .collect();
            let meta = json!({
                "uuid": ctx.instance_id,
                "hostname": ctx.fqdn(),
                "name": ctx.hostname,
                "launch_index": 0,
                "public_keys": public_keys,
                "keys": keys,
            });
            let mut files = vec![RenderedFile::json("openstack/latest/meta_data.json", &meta)];
            if let Some(ud) = &ctx.user_data {
                files.push(RenderedFile::new("openstack/latest/user_data", ud.clone()));
            }
            if !net.is_empty() {
                files.push(RenderedFile::json(
                    "openstack/latest/network_data.json",
                    &network_data::render(&net),
                ));
            }
            files
        }
    })
}

/// network-config version 2 of a network, validated first.
pub fn network_config(net: &NetworkConfig) -> Result<Value, Error> {
    Ok(render_network_config(&net.validated()?))
}

/// OpenStack network_data.json of a network, validated first.
pub fn openstack_network_data(net: &NetworkConfig) -> Result<Value, Error> {
    Ok(network_data::render(&net.validated()?))
}

fn render_network_config(validated: &NetworkConfig) -> Value {
    netplan::render(validated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnOU2zyIAnBcHkWVLvAxoUXE2FYKBuheYt6B6p3BVHR ops@example";
    const MAC: &str = "52:54:00:12:34:56";

    fn ctx(user_data: Option<&[u8]>, network: NetworkConfig) -> DeployContext {
        DeployContext::new(
            "m-1",
            "node1",
            Some("example.org"),
            &[KEY.into()],
            user_data.map(<[u8]>::to_vec),
            network,
        )
        .unwrap()
    }

    fn file<'a>(files: &'a [RenderedFile], path: &str) -> &'a RenderedFile {
        files.iter().find(|f| f.path == path).unwrap()
    }

    fn json_of(f: &RenderedFile) -> Value {
        serde_json::from_slice(&f.bytes).unwrap()
    }

    #[test]
    fn nocloud_files() {
        let net = NetworkConfig::dhcp_on_boot_nic(None, MAC).unwrap();
        let ud: &[u8] = b"#cloud-config\npassword: x\n\xff";
        let files = render(&ctx(Some(ud), net), Flavor::NoCloud).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["meta-data", "user-data", "network-config"]);
        assert_eq!(
            json_of(file(&files, "meta-data")),
            json!({"instance-id": "m-1", "local-hostname": "node1.example.org", "public-keys": [KEY]})
        );
        assert_eq!(file(&files, "user-data").bytes, ud, "byte for byte");
        let nc = json_of(file(&files, "network-config"));
        assert_eq!(
            nc,
            json!({"version": 2, "ethernets": {"enx525400123456": {
                "match": {"macaddress": MAC}, "set-name": "enx525400123456", "dhcp4": true}}})
        );
    }

    #[test]
    fn empty_network_and_user_data() {
        let files = render(&ctx(None, NetworkConfig::default()), Flavor::NoCloud).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["meta-data", "user-data"],
            "cloud-init falls back to DHCP"
        );
        assert!(file(&files, "user-data").bytes.is_empty());
        let files = render(&ctx(None, NetworkConfig::default()), Flavor::ConfigDrive).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["openstack/latest/meta_data.json"]);
    }

    #[test]
    fn config_drive_files() {
        let net = NetworkConfig::dhcp_on_boot_nic(None, MAC).unwrap();
        let files = render(&ctx(Some(b"#!/bin/sh\n"), net), Flavor::ConfigDrive).unwrap();
        let meta = json_of(file(&files, "openstack/latest/meta_data.json"));
        assert_eq!(meta["uuid"], "m-1");
        assert_eq!(meta["hostname"], "node1.example.org");
        assert_eq!(meta["public_keys"], json!({"key-0": KEY}));
        assert_eq!(meta["keys"][0]["data"], KEY);
        assert_eq!(
            file(&files, "openstack/latest/user_data").bytes,
            b"#!/bin/sh\n"
        );
        let nd = json_of(file(&files, "openstack/latest/network_data.json"));
        assert_eq!(nd["links"][0]["ethernet_mac_address"], MAC);
        assert_eq!(nd["networks"][0]["type"], "ipv4_dhcp");
        assert_eq!(nd["services"], json!([]));
        assert_eq!(Flavor::ConfigDrive.label(), "config-2");
        assert_eq!(Flavor::NoCloud.label(), "CIDATA");
    }

    #[test]
    fn invalid_network_is_an_error_not_a_file() {
        let mut net = NetworkConfig::dhcp_on_boot_nic(None, MAC).unwrap();
        net.ethernets.push(net.ethernets[0].clone());
        assert!(matches!(
            render(&ctx(None, net), Flavor::NoCloud),
            Err(Error::DuplicateMac { .. })
        ));
    }

    #[test]
    fn display_masks_user_data_only() {
        let net = NetworkConfig::dhcp_on_boot_nic(None, MAC).unwrap();
        let shown =
            render_for_display(&ctx(Some(b"password: hunter2\n"), net), Flavor::NoCloud).unwrap();
        let ud = shown.iter().find(|f| f.path == "user-data").unwrap();
        assert_eq!(ud.content, "password: ********\n");
        assert!(ud.masked);
        let meta = shown.iter().find(|f| f.path == "meta-data").unwrap();
        assert!(!meta.masked && meta.content.contains(KEY));
        let plain = render_for_display(
            &ctx(Some(b"runcmd: [ls]\n"), NetworkConfig::default()),
            Flavor::NoCloud,
        )
        .unwrap();
        assert!(!plain.iter().any(|f| f.masked));
    }

    #[test]
    fn default_context_for_the_api() {
        let c = default_context("m-9", "web-3", None, MAC).unwrap();
        assert!(c.ssh_keys.is_empty() && c.user_data.is_none());
        assert_eq!(c.network.ethernets[0].mac, MAC);
        assert!(default_context("m-9", "bad name", None, MAC).is_err());
        assert!(default_context("m-9", "web-3", None, "nope").is_err());
    }
}
