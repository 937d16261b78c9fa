//! What Anvil reads from NetBox, decoded from the REST representation.
//!
//! NetBox's shapes vary between releases and field types (a select custom
//! field reads back as `{"value","label"}`, a text one as a string; `status`
//! is `{"value","label"}` in REST and a bare value in webhook snapshots), so
//! decoding is tolerant of both forms and strict about ids.

use anvil_types::MacAddr;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One device in scope, with the interfaces Anvil cares about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NbDevice {
    pub id: u64,
    /// `None` for unnamed devices (NetBox allows them; Anvil cannot import them).
    pub name: Option<String>,
    /// Empty string when unset (NetBox's own convention).
    pub serial: String,
    pub status: Option<String>,
    pub site: Option<String>,
    pub location: Option<String>,
    pub rack: Option<String>,
    pub position: Option<f64>,
    pub role: Option<String>,
    pub platform: Option<String>,
    /// Tag slugs, sorted.
    pub tags: Vec<String>,
    /// The BMC address (`oob_ip` without its prefix length).
    pub oob_ip: Option<String>,
    /// The intended primary IPv4 address, without prefix length.
    pub primary_ip4: Option<String>,
    /// The value of the provisioning-state custom field, if set.
    pub state_field: Option<String>,
    pub interfaces: Vec<NbInterface>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NbInterface {
    pub id: u64,
    pub device_id: u64,
    pub name: String,
    pub mgmt_only: bool,
    /// Every MAC object on the interface: (MAC object id, MAC).
    pub macs: Vec<(u64, MacAddr)>,
    pub primary_mac: Option<MacAddr>,
}

impl NbInterface {
    /// The MAC Anvil uses for this interface: the primary one, else the
    /// first assigned.
    pub fn mac(&self) -> Option<MacAddr> {
        self.primary_mac.or_else(|| self.macs.first().map(|m| m.1))
    }
}

/// Devices in scope with their interfaces. `complete` says whether it holds
/// the whole scope (a periodic reconcile) or a few devices (a webhook), so
/// that a device missing from a partial snapshot is not taken as gone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NbSnapshot {
    pub devices: Vec<NbDevice>,
    pub complete: bool,
}

/// `{"value": x, ...}` or `x` → `x` as a string; null/empty → None.
pub(crate) fn choice_value(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => choice_value(o.get("value")),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(_) => None,
    }
}

/// A nested object's id (`{"id": 3, ...}`) or a bare id (`3`).
pub(crate) fn nested_id(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::Object(o) => o.get("id").and_then(Value::as_u64),
        _ => None,
    }
}

/// A nested object's slug, else its name (sites, roles, platforms …).
fn nested_name(v: Option<&Value>) -> Option<String> {
    let o = v?.as_object()?;
    o.get("slug")
        .or_else(|| o.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// `{"address": "10.0.0.5/24"}` → `10.0.0.5`.
fn nested_address(v: Option<&Value>) -> Option<String> {
    let a = v?.as_object()?.get("address")?.as_str()?;
    Some(a.split('/').next().unwrap_or(a).to_string())
}

fn parse_mac(v: Option<&Value>) -> Option<MacAddr> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Object(o) => o.get("mac_address")?.as_str()?.parse().ok(),
        _ => None,
    }
}

/// Decodes one device of `/api/dcim/devices/` (interfaces are added later).
/// `state_field` names the provisioning-state custom field.
pub fn device_from_json(v: &Value, state_field: &str) -> Result<NbDevice, String> {
    let o = v.as_object().ok_or("a device is not a JSON object")?;
    let id = o
        .get("id")
        .and_then(Value::as_u64)
        .ok_or("a device has no numeric id")?;
    let mut tags: Vec<String> = o
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|t| nested_name(Some(t))).collect())
        .unwrap_or_default();
    tags.sort();
    tags.dedup();
    Ok(NbDevice {
        id,
        name: o
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        serial: o
            .get("serial")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string(),
        status: choice_value(o.get("status")),
        site: nested_name(o.get("site")),
        location: nested_name(o.get("location")),
        rack: nested_name(o.get("rack")),
        position: o.get("position").and_then(Value::as_f64),
        role: nested_name(o.get("role")),
        platform: nested_name(o.get("platform")),
        tags,
        oob_ip: nested_address(o.get("oob_ip")),
        primary_ip4: nested_address(o.get("primary_ip4")),
        state_field: choice_value(
            o.get("custom_fields")
                .and_then(Value::as_object)
                .and_then(|cf| cf.get(state_field)),
        ),
        interfaces: Vec::new(),
    })
}

/// Decodes one interface of `/api/dcim/interfaces/`.
pub fn interface_from_json(v: &Value) -> Result<NbInterface, String> {
    let o = v.as_object().ok_or("an interface is not a JSON object")?;
    let id = o
        .get("id")
        .and_then(Value::as_u64)
        .ok_or("an interface has no numeric id")?;
    let device_id = nested_id(o.get("device")).ok_or("an interface has no device")?;
    let macs = o
        .get("mac_addresses")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| Some((nested_id(Some(m))?, parse_mac(Some(m))?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(NbInterface {
        id,
        device_id,
        name: o
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        mgmt_only: o.get("mgmt_only").and_then(Value::as_bool).unwrap_or(false),
        macs,
        primary_mac: parse_mac(o.get("primary_mac_address"))
            .or_else(|| parse_mac(o.get("mac_address"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_a_full_rest_device() {
        let v = json!({
            "id": 7, "name": "node-7", "serial": " SN7 ",
            "status": {"value": "active", "label": "Active"},
            "site": {"id": 1, "slug": "dc1", "name": "DC 1"},
            "rack": {"id": 2, "name": "R1"}, "position": 12.0,
            "role": {"id": 3, "slug": "compute"},
            "platform": null, "location": null,
            "tags": [{"id": 1, "slug": "prod"}, {"id": 2, "slug": "anvil"}],
            "oob_ip": {"id": 4, "address": "10.0.0.7/24"},
            "primary_ip4": {"id": 5, "address": "192.0.2.7/24"},
            "custom_fields": {"anvil_state": {"value": "ready", "label": "ready"}, "other": 3}
        });
        let d = device_from_json(&v, "anvil_state").unwrap();
        assert_eq!(d.id, 7);
        assert_eq!(d.name.as_deref(), Some("node-7"));
        assert_eq!(d.serial, "SN7");
        assert_eq!(d.status.as_deref(), Some("active"));
        assert_eq!(d.site.as_deref(), Some("dc1"));
        assert_eq!(d.rack.as_deref(), Some("R1"));
        assert_eq!(d.position, Some(12.0));
        assert_eq!(d.tags, vec!["anvil", "prod"]);
        assert_eq!(d.oob_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(d.primary_ip4.as_deref(), Some("192.0.2.7"));
        assert_eq!(d.state_field.as_deref(), Some("ready"));
    }

    #[test]
    fn text_custom_field_and_bare_status_decode_too() {
        let v = json!({"id": 1, "name": "", "status": "planned",
                       "custom_fields": {"anvil_state": "new"}});
        let d = device_from_json(&v, "anvil_state").unwrap();
        assert_eq!(d.name, None);
        assert_eq!(d.status.as_deref(), Some("planned"));
        assert_eq!(d.state_field.as_deref(), Some("new"));
        let v = json!({"id": 1, "custom_fields": {"anvil_state": null}});
        assert_eq!(
            device_from_json(&v, "anvil_state").unwrap().state_field,
            None
        );
    }

    #[test]
    fn a_device_without_id_is_an_error() {
        assert!(device_from_json(&json!({"name": "x"}), "s").is_err());
        assert!(device_from_json(&json!([1]), "s").is_err());
    }

    #[test]
    fn decodes_interfaces_with_mac_objects() {
        let v = json!({
            "id": 11, "name": "eth0", "device": {"id": 7, "name": "node-7"},
            "mgmt_only": false,
            "mac_addresses": [{"id": 21, "mac_address": "02:AA:00:00:00:0B"},
                              {"id": 22, "mac_address": "02:AA:00:00:00:0C"}],
            "primary_mac_address": {"id": 22, "mac_address": "02:AA:00:00:00:0C"}
        });
        let i = interface_from_json(&v).unwrap();
        assert_eq!(i.device_id, 7);
        assert_eq!(i.macs.len(), 2);
        assert_eq!(i.macs[0].0, 21);
        assert_eq!(i.mac().unwrap().to_string(), "02:aa:00:00:00:0c");
        let bare = json!({"id": 12, "name": "eth1", "device": 7, "mac_addresses": [],
                          "primary_mac_address": null});
        let i = interface_from_json(&bare).unwrap();
        assert_eq!(i.mac(), None);
        assert!(interface_from_json(&json!({"id": 1, "name": "x"})).is_err());
    }
}
