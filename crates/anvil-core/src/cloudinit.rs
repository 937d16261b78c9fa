//! The cloud-init data of a machine, rendered by `anvil-cloudinit`: for the
//! deploy action (the files of the `cloud_init` step's partition) and for
//! display (`GET /machines/{id}/cloud-init`, user-data secrets masked).
//!
//! A machine that is deploying or deployed shows its deployment's data (its
//! SSH keys and user data, the instance id of that deployment); any other
//! machine shows the defaults a deployment would start from: the machine id
//! and host name, DHCP on the NIC it network-boots from (named from its
//! latest hardware facts), no keys, no user-data. The network comes from
//! `netconfig.rs`: NetBox's for a linked machine, else Anvil's own
//! (`docs/cloud-init.md`).

use crate::{App, Error, Result};
use anvil_cloudinit::DeployContext;
pub use anvil_cloudinit::{DisplayFile, Flavor};
use anvil_inventory::HardwareFacts;
use anvil_types::Machine;
use uuid::Uuid;

impl App {
    /// The files of `flavor` for machine `ident`, as shown to an operator.
    pub async fn machine_cloud_init(
        &self,
        ident: &str,
        flavor: Flavor,
    ) -> Result<Vec<DisplayFile>> {
        let m = self.get_machine(ident).await?;
        let facts: Option<HardwareFacts> = match self.store.hardware_facts(m.id, None).await? {
            Some(rec) => Some(
                serde_json::from_str(&rec.facts).map_err(|e| Error::Internal {
                    context: "stored hardware facts",
                    source: Box::new(e),
                })?,
            ),
            None => None,
        };
        let ctx = match self.current_deployment(&m).await? {
            // What the agent wrote, kept with the run: not rendered again
            // from inventory or NetBox that may have changed since.
            Some((_, p)) if kept_flavor(&p) == flavor && !p.cloud_init_files.is_empty() => {
                return Ok(kept_for_display(&p.cloud_init_files));
            }
            Some((run_id, p)) => {
                self.deploy_context(
                    &m,
                    facts.as_ref(),
                    &p.ssh_keys,
                    p.user_data.as_deref(),
                    run_id,
                )
                .await?
            }
            None => {
                let mut ctx = base_context(&m, facts.as_ref())?;
                ctx.network = self.deploy_network(&m, facts.as_ref()).await?;
                ctx
            }
        };
        anvil_cloudinit::render_for_display(&ctx, flavor)
            .map_err(|e| Error::invalid("machine", e.to_string()))
    }

    /// The context of one deployment: the machine's defaults with the
    /// deployment's keys (already validated) and user data, and an instance
    /// id of its own so cloud-init runs its first-boot modules again.
    pub(crate) async fn deploy_context(
        &self,
        m: &Machine,
        facts: Option<&HardwareFacts>,
        ssh_keys: &[String],
        user_data: Option<&str>,
        run_id: Uuid,
    ) -> Result<DeployContext> {
        let mut ctx = base_context(m, facts)?;
        ctx.network = self.deploy_network(m, facts).await?;
        ctx.ssh_keys = ssh_keys.to_vec();
        ctx.user_data = user_data.map(|u| u.as_bytes().to_vec());
        ctx.with_deployment(&run_id.simple().to_string())
            .map_err(|e| Error::invalid("machine", e.to_string()))
    }
}

/// The defaults: id, host name, DHCP on the boot NIC.
fn base_context(m: &Machine, facts: Option<&HardwareFacts>) -> Result<DeployContext> {
    let boot = m
        .interfaces
        .iter()
        .find(|i| i.pxe)
        .or_else(|| m.interfaces.first())
        .ok_or_else(|| {
            Error::invalid(
                "machine",
                format!(
                    "{} has no network interface; cloud-init's network-config needs the NIC it boots from",
                    m.hostname
                ),
            )
        })?;
    let id = m.id.to_string();
    let mac = boot.mac.to_string();
    match anvil_cloudinit::default_context(&id, &m.hostname, facts, &mac) {
        // Facts from before the NIC was added: name it without them.
        Err(anvil_cloudinit::Error::BootNicUnknown { .. }) => {
            anvil_cloudinit::default_context(&id, &m.hostname, None, &mac)
        }
        other => other,
    }
    .map_err(|e| Error::invalid("machine", e.to_string()))
}

fn kept_flavor(p: &crate::deploy::DeploymentParams) -> Flavor {
    match p.config_drive {
        anvil_api_types::deploy::ConfigDriveKind::Nocloud => Flavor::NoCloud,
        anvil_api_types::deploy::ConfigDriveKind::ConfigDrive => Flavor::ConfigDrive,
    }
}

/// The kept files of a deployment, user-data secrets masked as in
/// [`anvil_cloudinit::render_for_display`].
fn kept_for_display(files: &[crate::deploy::StoredFile]) -> Vec<DisplayFile> {
    files
        .iter()
        .map(|f| {
            let file = anvil_cloudinit::RenderedFile {
                path: f.path.clone(),
                bytes: f.content.as_bytes().to_vec(),
            };
            let content = file.display_text();
            DisplayFile {
                masked: file.is_user_data() && content.as_bytes() != file.bytes.as_slice(),
                path: file.path,
                content,
            }
        })
        .collect()
}
