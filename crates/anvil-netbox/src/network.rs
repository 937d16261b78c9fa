//! A device's network as NetBox models it, read for a deployment's
//! cloud-init `network-config`: interfaces (MACs, LAG membership, parent,
//! MTU, 802.1Q mode and VLANs), the IP addresses assigned to them, and the
//! device's rendered config context (for what NetBox does not model: routes,
//! DNS, bond modes; `docs/cloud-init.md`).
//!
//! Three reads per device, one per object type, each filtered by device id
//! and cut down with `?fields=`. Read at deploy start only, never on the boot
//! hot path. Turning this into a network configuration is Anvil's job
//! (`anvil_core::netconfig`); this module only reads and decodes.

use serde_json::Value;

use crate::client::NetBoxClient;
use crate::{Error, Result};

/// Fields of an interface a deployment's network needs.
pub const NETWORK_INTERFACE_FIELDS: &str = "id,name,type,enabled,mgmt_only,mtu,mode,lag,parent,untagged_vlan,tagged_vlans,mac_address,mac_addresses";
/// Fields of an IP address a deployment's network needs.
pub const NETWORK_IP_FIELDS: &str = "id,address,status,assigned_object_type,assigned_object_id";

/// One device's network in NetBox.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NbNetwork {
    pub device_id: u64,
    pub interfaces: Vec<NbNetInterface>,
    pub addresses: Vec<NbIpAddress>,
    /// The device's rendered config context (`{}` when none applies).
    pub config_context: Value,
}

/// One interface of the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NbNetInterface {
    pub id: u64,
    pub name: String,
    /// NetBox's type value: `lag`, `virtual`, `bridge`, `1000base-t`, ….
    pub kind: String,
    pub enabled: bool,
    pub mgmt_only: bool,
    pub mtu: Option<u32>,
    /// 802.1Q mode: `access`, `tagged`, `tagged-all`, or `None`.
    pub mode: Option<String>,
    /// The LAG interface this one is a member of.
    pub lag: Option<u64>,
    /// The parent interface of a virtual (sub-)interface.
    pub parent: Option<u64>,
    pub untagged_vlan: Option<u16>,
    pub tagged_vlans: Vec<u16>,
    /// The primary MAC first, then the others; as NetBox spells them.
    pub macs: Vec<String>,
}

impl NbNetInterface {
    pub fn is_lag(&self) -> bool {
        self.kind == "lag"
    }

    pub fn is_virtual(&self) -> bool {
        self.kind == "virtual"
    }
}

/// An IP address assigned to one of the device's interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbIpAddress {
    pub id: u64,
    /// CIDR form, `10.0.0.5/24`.
    pub address: String,
    /// `active`, `reserved`, `deprecated`, `dhcp`, `slaac`.
    pub status: String,
    pub interface: u64,
}

impl NetBoxClient {
    /// The network of device `device_id`; `None` when NetBox does not have
    /// the device.
    pub async fn device_network(&self, device_id: u64) -> Result<Option<NbNetwork>> {
        let id = device_id.to_string();
        let by_id = [
            ("id".to_string(), id.clone()),
            ("fields".to_string(), "id,config_context".to_string()),
        ];
        let ifaces = [
            ("device_id".to_string(), id.clone()),
            ("fields".to_string(), NETWORK_INTERFACE_FIELDS.to_string()),
        ];
        let ips = [
            ("device_id".to_string(), id),
            ("fields".to_string(), NETWORK_IP_FIELDS.to_string()),
        ];
        // Independent reads, sent together: the deploy request waits for
        // the slowest one instead of the sum.
        let (devices, interfaces, addresses) = tokio::try_join!(
            self.list_all("api/dcim/devices/", &by_id),
            self.list_all("api/dcim/interfaces/", &ifaces),
            self.list_all("api/ipam/ip-addresses/", &ips),
        )?;
        let Some(device) = devices.first() else {
            return Ok(None);
        };
        network_from_json(device_id, device, &interfaces, &addresses).map(Some)
    }
}

/// Decodes the three answers of [`NetBoxClient::device_network`].
pub fn network_from_json(
    device_id: u64,
    device: &Value,
    interfaces: &[Value],
    addresses: &[Value],
) -> Result<NbNetwork> {
    let decode = |path: &str, message: String| Error::Decode {
        path: path.to_string(),
        message,
    };
    let config_context = match device.get("config_context") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v) => v.clone(),
    };
    let interfaces = interfaces
        .iter()
        .map(|v| interface_from_json(v).map_err(|m| decode("api/dcim/interfaces/", m)))
        .collect::<Result<Vec<_>>>()?;
    let mut ips = Vec::new();
    for v in addresses {
        // IPs can also sit on VM interfaces or FHRP groups; only the
        // device's own interfaces matter here.
        if v.get("assigned_object_type").and_then(Value::as_str) != Some("dcim.interface") {
            continue;
        }
        ips.push(ip_from_json(v).map_err(|m| decode("api/ipam/ip-addresses/", m))?);
    }
    Ok(NbNetwork {
        device_id,
        interfaces,
        addresses: ips,
        config_context,
    })
}

fn id_of(v: &Value, what: &str) -> Result<u64, String> {
    v.get("id")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{what} without an id"))
}

/// The id of a nested object (`{"id": 3, …}`), or a bare id.
fn nested_id(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Object(o) => o.get("id").and_then(Value::as_u64),
        other => other.as_u64(),
    }
}

/// `{"value": "lag", "label": …}` or a bare string.
fn choice(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Object(o) => o.get("value").and_then(Value::as_str).map(str::to_string),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn vid(v: &Value, iface: &str) -> Result<u16, String> {
    v.get("vid")
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| format!("interface {iface}: a VLAN without a valid vid"))
}

fn interface_from_json(v: &Value) -> Result<NbNetInterface, String> {
    let id = id_of(v, "an interface")?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("interface {id} without a name"))?
        .to_string();
    let mut macs = Vec::new();
    if let Some(m) = v.get("mac_address").and_then(Value::as_str) {
        macs.push(m.to_string());
    }
    for m in v
        .get("mac_addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(s) = m.get("mac_address").and_then(Value::as_str)
            && !macs.iter().any(|x| x.eq_ignore_ascii_case(s))
        {
            macs.push(s.to_string());
        }
    }
    let untagged_vlan = match v.get("untagged_vlan") {
        None | Some(Value::Null) => None,
        Some(u) => Some(vid(u, &name)?),
    };
    let tagged_vlans = v
        .get("tagged_vlans")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| vid(t, &name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NbNetInterface {
        id,
        kind: choice(v.get("type")).unwrap_or_default(),
        enabled: v.get("enabled").and_then(Value::as_bool).unwrap_or(true),
        mgmt_only: v.get("mgmt_only").and_then(Value::as_bool).unwrap_or(false),
        mtu: v
            .get("mtu")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok()),
        mode: choice(v.get("mode")),
        lag: nested_id(v.get("lag")),
        parent: nested_id(v.get("parent")),
        untagged_vlan,
        tagged_vlans,
        macs,
        name,
    })
}

fn ip_from_json(v: &Value) -> Result<NbIpAddress, String> {
    let id = id_of(v, "an IP address")?;
    Ok(NbIpAddress {
        id,
        address: v
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("IP address {id} without an address"))?
            .to_string(),
        status: choice(v.get("status")).unwrap_or_else(|| "active".into()),
        interface: v
            .get("assigned_object_id")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("IP address {id} without assigned_object_id"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Shapes as NetBox 4.7.3 answers them (trimmed from a real instance).
    #[test]
    fn decodes_lag_members_subinterface_and_addresses() {
        let device =
            json!({"id": 1, "config_context": {"anvil": {"dns": {"nameservers": ["10.0.0.53"]}}}});
        let ifaces = vec![
            json!({"id": 1, "name": "bond0", "type": {"value": "lag", "label": "LAG"}, "enabled": true,
                   "parent": null, "lag": null, "mtu": 9000, "mac_address": null, "mac_addresses": [],
                   "mgmt_only": false, "mode": {"value": "tagged", "label": "Tagged"},
                   "untagged_vlan": null, "tagged_vlans": [{"id": 1, "vid": 100, "name": "v100"}]}),
            json!({"id": 4, "name": "bond0.100", "type": {"value": "virtual"}, "enabled": true,
                   "parent": {"id": 1, "name": "bond0"}, "lag": null, "mtu": null, "mac_address": null,
                   "mac_addresses": [], "mgmt_only": false, "mode": {"value": "access"},
                   "untagged_vlan": {"id": 1, "vid": 100}, "tagged_vlans": []}),
            json!({"id": 2, "name": "eth0", "type": {"value": "1000base-t"}, "enabled": true,
                   "parent": null, "lag": {"id": 1, "name": "bond0"}, "mtu": null,
                   "mac_address": "02:00:00:00:01:01",
                   "mac_addresses": [{"id": 7, "mac_address": "02:00:00:00:01:09"},
                                     {"id": 1, "mac_address": "02:00:00:00:01:01"}],
                   "mgmt_only": false, "mode": null, "untagged_vlan": null, "tagged_vlans": []}),
        ];
        let ips = vec![
            json!({"id": 1, "address": "10.0.0.5/24", "status": {"value": "active"},
                   "assigned_object_type": "dcim.interface", "assigned_object_id": 1}),
            json!({"id": 9, "address": "10.9.0.1/24", "status": {"value": "active"},
                   "assigned_object_type": "ipam.fhrpgroup", "assigned_object_id": 3}),
        ];
        let n = network_from_json(1, &device, &ifaces, &ips).unwrap();
        assert_eq!(
            n.config_context["anvil"]["dns"]["nameservers"][0],
            "10.0.0.53"
        );
        let bond = &n.interfaces[0];
        assert!(bond.is_lag());
        assert_eq!(bond.mtu, Some(9000));
        assert_eq!(bond.mode.as_deref(), Some("tagged"));
        assert_eq!(bond.tagged_vlans, vec![100]);
        let sub = &n.interfaces[1];
        assert!(sub.is_virtual());
        assert_eq!((sub.parent, sub.untagged_vlan), (Some(1), Some(100)));
        let eth = &n.interfaces[2];
        assert_eq!(eth.lag, Some(1));
        // Primary first, no duplicates.
        assert_eq!(eth.macs, vec!["02:00:00:00:01:01", "02:00:00:00:01:09"]);
        assert_eq!(
            n.addresses.len(),
            1,
            "the FHRP group's address is not the device's"
        );
        assert_eq!(n.addresses[0].interface, 1);
        assert_eq!(n.addresses[0].status, "active");
    }

    #[test]
    fn missing_config_context_is_empty_and_bad_vlan_is_an_error() {
        let n = network_from_json(3, &json!({"id": 3}), &[], &[]).unwrap();
        assert_eq!(n.config_context, json!({}));
        let bad = json!({"id": 5, "name": "eth0", "untagged_vlan": {"id": 2, "vid": 70000}});
        let err = network_from_json(3, &json!({"id": 3}), &[bad], &[]).unwrap_err();
        assert!(err.to_string().contains("valid vid"), "{err}");
    }
}
