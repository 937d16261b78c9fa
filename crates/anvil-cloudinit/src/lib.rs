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
mod layout;
mod mask;
mod netplan;
mod network;
mod network_data;

pub use context::{DeployContext, validate_ssh_key};
pub use error::Error;
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
