//! Seeding a test NetBox through its REST API, in the order NetBox 4.7
//! requires (see shared notes `netbox-api.md`): a MAC is an object assigned to
//! an interface before it can be the interface's primary MAC, and an IP must be
//! assigned to an interface of the device before it can be its `oob_ip` or
//! `primary_ip4`. Bulk list POSTs/PATCHes keep the request count low.

use serde_json::{Value, json};

use crate::{Error, NetBox};

/// The objects every device needs: site, manufacturer, device type, role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basics {
    pub site: i64,
    pub manufacturer: i64,
    pub device_type: i64,
    pub role: i64,
}

/// One data interface and, optionally, its (primary) MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub name: String,
    pub mac: Option<String>,
}

/// A device to create with [`NetBox::create_device`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    pub serial: Option<String>,
    pub asset_tag: Option<String>,
    /// NetBox status value, e.g. `planned`, `active`.
    pub status: String,
    pub interfaces: Vec<InterfaceSpec>,
    /// The BMC: a `mgmt_only` interface named `bmc` with this address (CIDR,
    /// e.g. `10.128.0.7/16`) set as the device's `oob_ip`, and optionally a MAC.
    pub bmc_ip: Option<String>,
    pub bmc_mac: Option<String>,
    /// An address (CIDR) on the first data interface, set as `primary_ip4`.
    pub primary_ip4: Option<String>,
}

impl DeviceSpec {
    /// Device number `n` (0..=65535) with `interfaces` data interfaces
    /// `eth0..`, each with a MAC, a BMC and a primary IPv4 — the shape of
    /// issue #5. Names, MACs and addresses are derived from `n`, so distinct
    /// numbers never collide. The addresses are data only: nothing sends
    /// traffic to them.
    pub fn numbered(n: u16, interfaces: u8) -> DeviceSpec {
        let [hi, lo] = n.to_be_bytes();
        DeviceSpec {
            name: format!("node-{n:05}"),
            serial: Some(format!("SN-{n:06}")),
            asset_tag: Some(format!("AT-{n:06}")),
            status: "planned".to_owned(),
            interfaces: (0..interfaces)
                .map(|k| InterfaceSpec {
                    name: format!("eth{k}"),
                    mac: Some(format!("02:00:00:{hi:02X}:{lo:02X}:{k:02X}")),
                })
                .collect(),
            bmc_ip: Some(format!("10.128.{hi}.{lo}/16")),
            bmc_mac: Some(format!("02:01:00:{hi:02X}:{lo:02X}:00")),
            primary_ip4: Some(format!("10.64.{hi}.{lo}/16")),
        }
    }
}

/// Ids of what [`NetBox::create_device`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededDevice {
    pub id: i64,
    /// The data interfaces, in the order of [`DeviceSpec::interfaces`].
    pub interfaces: Vec<i64>,
    /// The MAC object of each data interface (None where the spec had none).
    pub macs: Vec<Option<i64>>,
    pub bmc_interface: Option<i64>,
    pub oob_ip: Option<i64>,
    pub primary_ip4: Option<i64>,
}

/// `Dc 1/East` -> `dc-1-east`: NetBox slugs are `[-a-zA-Z0-9_]`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_owned()
}

fn id_of(value: &Value, method: &str, path: &str) -> Result<i64, Error> {
    value["id"].as_i64().ok_or_else(|| Error::Response {
        method: method.to_owned(),
        path: path.to_owned(),
        body: value.to_string(),
    })
}

fn ids_of(value: &Value, method: &str, path: &str, expected: usize) -> Result<Vec<i64>, Error> {
    let bad = || Error::Response {
        method: method.to_owned(),
        path: path.to_owned(),
        body: value.to_string(),
    };
    let list = value.as_array().ok_or_else(bad)?;
    if list.len() != expected {
        return Err(bad());
    }
    list.iter()
        .map(|v| v["id"].as_i64().ok_or_else(bad))
        .collect()
}

impl NetBox {
    /// Sends one request with the v2 token and returns the JSON body (Null
    /// for an empty one); any status but 2xx is an [`Error::Status`].
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let url = format!("{}{}", self.url, path);
        let mut req = self
            .http()
            .request(method.clone(), &url)
            .header("Authorization", self.auth_v2())
            .header("Accept", "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        let failed = |source| Error::Request {
            method: method.to_string(),
            path: path.to_owned(),
            source,
        };
        let resp = req.send().await.map_err(failed)?;
        let status = resp.status();
        let text = resp.text().await.map_err(failed)?;
        if !status.is_success() {
            return Err(Error::Status {
                method: method.to_string(),
                path: path.to_owned(),
                status: status.as_u16(),
                body: text,
            });
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|_| Error::Response {
            method: method.to_string(),
            path: path.to_owned(),
            body: text,
        })
    }

    /// `GET path` (path starts with `/api/`, keeps NetBox's trailing slash).
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.request(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), Error> {
        self.request(reqwest::Method::DELETE, path, None).await?;
        Ok(())
    }

    async fn post_id(&self, path: &str, body: Value) -> Result<i64, Error> {
        let created = self.post(path, &body).await?;
        id_of(&created, "POST", path)
    }

    async fn post_list(&self, path: &str, items: Vec<Value>) -> Result<Vec<i64>, Error> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let expected = items.len();
        let created = self.post(path, &Value::Array(items)).await?;
        ids_of(&created, "POST", path, expected)
    }

    pub async fn create_site(&self, name: &str) -> Result<i64, Error> {
        self.post_id(
            "/api/dcim/sites/",
            json!({"name": name, "slug": slugify(name), "status": "active"}),
        )
        .await
    }

    pub async fn create_manufacturer(&self, name: &str) -> Result<i64, Error> {
        self.post_id(
            "/api/dcim/manufacturers/",
            json!({"name": name, "slug": slugify(name)}),
        )
        .await
    }

    pub async fn create_device_type(&self, manufacturer: i64, model: &str) -> Result<i64, Error> {
        self.post_id(
            "/api/dcim/device-types/",
            json!({"manufacturer": manufacturer, "model": model, "slug": slugify(model)}),
        )
        .await
    }

    pub async fn create_role(&self, name: &str) -> Result<i64, Error> {
        self.post_id(
            "/api/dcim/device-roles/",
            json!({"name": name, "slug": slugify(name), "color": "9e9e9e"}),
        )
        .await
    }

    /// Site `site`, manufacturer `Acme`, device type `Acme S1`, role `server`.
    pub async fn seed_basics(&self, site: &str) -> Result<Basics, Error> {
        let manufacturer = self.create_manufacturer("Acme").await?;
        Ok(Basics {
            site: self.create_site(site).await?,
            manufacturer,
            device_type: self.create_device_type(manufacturer, "Acme S1").await?,
            role: self.create_role("server").await?,
        })
    }

    /// Creates a device with its interfaces, MAC objects (each made its
    /// interface's primary MAC), the BMC interface whose IP becomes `oob_ip`,
    /// and `primary_ip4` on the first data interface: six requests.
    pub async fn create_device(
        &self,
        basics: &Basics,
        spec: &DeviceSpec,
    ) -> Result<SeededDevice, Error> {
        let mut device = json!({
            "name": spec.name,
            "status": spec.status,
            "site": basics.site,
            "device_type": basics.device_type,
            "role": basics.role,
        });
        if let Some(serial) = &spec.serial {
            device["serial"] = json!(serial);
        }
        if let Some(tag) = &spec.asset_tag {
            device["asset_tag"] = json!(tag);
        }
        let id = self.post_id("/api/dcim/devices/", device).await?;

        // Interfaces: the data ones in spec order, then the BMC.
        let mut ifaces: Vec<Value> = spec
            .interfaces
            .iter()
            .map(|i| json!({"device": id, "name": i.name, "type": "1000base-t"}))
            .collect();
        if spec.bmc_ip.is_some() || spec.bmc_mac.is_some() {
            ifaces.push(
                json!({"device": id, "name": "bmc", "type": "1000base-t", "mgmt_only": true}),
            );
        }
        let iface_ids = self.post_list("/api/dcim/interfaces/", ifaces).await?;
        let (data_ids, bmc_ids) = iface_ids.split_at(spec.interfaces.len());
        let bmc_interface = bmc_ids.first().copied();

        // MAC objects, then each made primary on its interface.
        let mut mac_owners = Vec::new();
        let mut macs_body = Vec::new();
        let wanted = spec
            .interfaces
            .iter()
            .zip(data_ids)
            .map(|(i, id)| (i.mac.as_ref(), *id))
            .chain(bmc_interface.map(|b| (spec.bmc_mac.as_ref(), b)));
        for (mac, iface) in wanted {
            if let Some(mac) = mac {
                mac_owners.push(iface);
                macs_body.push(json!({
                    "mac_address": mac,
                    "assigned_object_type": "dcim.interface",
                    "assigned_object_id": iface,
                }));
            }
        }
        let mac_ids = self
            .post_list("/api/dcim/mac-addresses/", macs_body)
            .await?;
        if !mac_ids.is_empty() {
            let primaries: Vec<Value> = mac_owners
                .iter()
                .zip(&mac_ids)
                .map(|(iface, mac)| json!({"id": iface, "primary_mac_address": mac}))
                .collect();
            self.patch("/api/dcim/interfaces/", &Value::Array(primaries))
                .await?;
        }
        let macs = data_ids
            .iter()
            .map(|iface| {
                mac_owners
                    .iter()
                    .position(|owner| owner == iface)
                    .map(|k| mac_ids[k])
            })
            .collect();

        // IPs on the BMC and the first data interface, then the device points at them.
        let mut ip_body = Vec::new();
        let bmc_ip = spec.bmc_ip.as_ref().zip(bmc_interface);
        if let Some((address, iface)) = bmc_ip {
            ip_body.push(json!({"address": address, "status": "active",
                "assigned_object_type": "dcim.interface", "assigned_object_id": iface}));
        }
        let primary = spec.primary_ip4.as_ref().zip(data_ids.first());
        if let Some((address, iface)) = primary {
            ip_body.push(json!({"address": address, "status": "active",
                "assigned_object_type": "dcim.interface", "assigned_object_id": iface}));
        }
        let ip_ids = self.post_list("/api/ipam/ip-addresses/", ip_body).await?;
        let oob_ip = bmc_ip.map(|_| ip_ids[0]);
        let primary_ip4 = primary.map(|_| ip_ids[ip_ids.len() - 1]);
        if oob_ip.is_some() || primary_ip4.is_some() {
            let mut patch = json!({});
            if let Some(ip) = oob_ip {
                patch["oob_ip"] = json!(ip);
            }
            if let Some(ip) = primary_ip4 {
                patch["primary_ip4"] = json!(ip);
            }
            self.patch(&format!("/api/dcim/devices/{id}/"), &patch)
                .await?;
        }

        Ok(SeededDevice {
            id,
            interfaces: data_ids.to_vec(),
            macs,
            bmc_interface,
            oob_ip,
            primary_ip4,
        })
    }

    /// A custom field of `field_type` (`text`, `integer`, `boolean`, ...) on devices.
    pub async fn create_device_custom_field(
        &self,
        name: &str,
        field_type: &str,
    ) -> Result<i64, Error> {
        self.post_id(
            "/api/extras/custom-fields/",
            json!({"name": name, "object_types": ["dcim.device"], "type": field_type}),
        )
        .await
    }

    /// Sets one custom field of a device (PATCH merges per key).
    pub async fn set_device_custom_field(
        &self,
        device: i64,
        name: &str,
        value: Value,
    ) -> Result<(), Error> {
        self.patch(
            &format!("/api/dcim/devices/{device}/"),
            &json!({"custom_fields": {name: value}}),
        )
        .await?;
        Ok(())
    }

    /// A webhook POSTing JSON to `url` (a loopback URL: the RQ worker sends
    /// there), signed with `secret` in `X-Hook-Signature`.
    pub async fn create_webhook(&self, name: &str, url: &str, secret: &str) -> Result<i64, Error> {
        self.post_id(
            "/api/extras/webhooks/",
            json!({
                "name": name,
                "payload_url": url,
                "http_method": "POST",
                "http_content_type": "application/json",
                "secret": secret,
            }),
        )
        .await
    }

    /// An event rule firing `webhook` on create/update/delete of `object_types`
    /// (e.g. `["dcim.device", "dcim.interface"]`).
    pub async fn create_event_rule(
        &self,
        name: &str,
        object_types: &[&str],
        webhook: i64,
    ) -> Result<i64, Error> {
        self.post_id(
            "/api/extras/event-rules/",
            json!({
                "name": name,
                "object_types": object_types,
                "event_types": ["object_created", "object_updated", "object_deleted"],
                "action_type": "webhook",
                "action_object_type": "extras.webhook",
                "action_object_id": webhook,
            }),
        )
        .await
    }

    /// [`NetBox::create_webhook`] + [`NetBox::create_event_rule`] for devices,
    /// interfaces, MAC and IP addresses: what the sync listens to.
    pub async fn create_webhook_rule(&self, url: &str, secret: &str) -> Result<(i64, i64), Error> {
        let webhook = self.create_webhook("anvil", url, secret).await?;
        let rule = self
            .create_event_rule(
                "anvil",
                &[
                    "dcim.device",
                    "dcim.interface",
                    "dcim.macaddress",
                    "ipam.ipaddress",
                ],
                webhook,
            )
            .await?;
        Ok((webhook, rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_netbox_safe() {
        assert_eq!(slugify("Dc 1/East"), "dc-1-east");
        assert_eq!(slugify("Acme S1"), "acme-s1");
        assert_eq!(slugify("--x__y--"), "x__y");
    }

    #[test]
    fn numbered_devices_do_not_collide() {
        let a = DeviceSpec::numbered(1, 2);
        let b = DeviceSpec::numbered(256, 2);
        assert_eq!(a.name, "node-00001");
        assert_eq!(a.interfaces[1].mac.as_deref(), Some("02:00:00:00:01:01"));
        assert_eq!(b.interfaces[0].mac.as_deref(), Some("02:00:00:01:00:00"));
        assert_eq!(a.bmc_ip.as_deref(), Some("10.128.0.1/16"));
        assert_eq!(b.primary_ip4.as_deref(), Some("10.64.1.0/16"));
        assert_ne!(a.bmc_mac, b.bmc_mac);
    }
}
