//! The cloud-init data a machine's deployment would carry, rendered by
//! `anvil-cloudinit` for display (user-data secrets masked).
//!
//! Until the deploy request exists this renders the defaults: the machine id
//! and host name, DHCP on the NIC it network-boots from (named from its
//! latest hardware facts), no SSH keys, no user-data. The deploy parameters
//! (keys, user-data, root disk, NetBox addresses) are added by the deploy
//! work on top of `anvil_cloudinit::default_context`.

use crate::{App, Error, Result};
pub use anvil_cloudinit::{DisplayFile, Flavor};
use anvil_inventory::HardwareFacts;

impl App {
    /// The files of `flavor` for machine `ident`, as shown to an operator.
    pub async fn machine_cloud_init(
        &self,
        ident: &str,
        flavor: Flavor,
    ) -> Result<Vec<DisplayFile>> {
        let m = self.get_machine(ident).await?;
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
        let facts: Option<HardwareFacts> = match self.store.hardware_facts(m.id, None).await? {
            Some(rec) => Some(
                serde_json::from_str(&rec.facts).map_err(|e| Error::Internal {
                    context: "stored hardware facts",
                    source: Box::new(e),
                })?,
            ),
            None => None,
        };
        let id = m.id.to_string();
        let mac = boot.mac.to_string();
        let ctx = match anvil_cloudinit::default_context(&id, &m.hostname, facts.as_ref(), &mac) {
            // Facts from before the NIC was added: name it without them.
            Err(anvil_cloudinit::Error::BootNicUnknown { .. }) => {
                anvil_cloudinit::default_context(&id, &m.hostname, None, &mac)
            }
            other => other,
        }
        .map_err(|e| Error::invalid("machine", e.to_string()))?;
        anvil_cloudinit::render_for_display(&ctx, flavor)
            .map_err(|e| Error::invalid("machine", e.to_string()))
    }
}
