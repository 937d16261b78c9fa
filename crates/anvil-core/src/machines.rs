//! Machines: validation, idempotency, lifecycle and the audit log.

use crate::error::{Error, Result};
use crate::{App, Principal, limits, now};
use anvil_api_types::{
    BmcInput, EventList, EventQuery, InterfaceInput, InterfacePatch, MACHINE_SORT_KEYS,
    MachineCreate, MachineList, MachinePatch, MachineQuery, StateChange,
};
use anvil_store::{EventFilter, MachineFilter, MachineWrite, NewEvent, SecretUpdate, SortKey};
use anvil_types::{Bmc, Hostname, Interface, MacAddr, Machine, MachineState};
use serde_json::json;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use uuid::Uuid;

fn text(field: &str, v: Option<String>) -> Result<Option<String>> {
    match v {
        None => Ok(None),
        Some(s) => {
            let s = s.trim().to_string();
            if s.len() > limits::MAX_TEXT {
                return Err(Error::invalid(field, "at most 255 characters"));
            }
            if s.chars().any(char::is_control) {
                return Err(Error::invalid(field, "control characters are not allowed"));
            }
            Ok(if s.is_empty() { None } else { Some(s) })
        }
    }
}

fn hostname(field: &str, v: &str) -> Result<String> {
    v.parse::<Hostname>()
        .map(|h| h.to_string())
        .map_err(|e| Error::from_parse(field, e))
}

fn tags(v: Vec<String>) -> Result<Vec<String>> {
    if v.len() > limits::MAX_TAGS {
        return Err(Error::invalid("tags", "at most 64 tags"));
    }
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for (i, t) in v.into_iter().enumerate() {
        let t = t.trim().to_string();
        let ok = !t.is_empty()
            && t.len() <= limits::MAX_TAG_LEN
            && t.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'=')
            });
        if !ok {
            return Err(Error::invalid(
                format!("tags[{i}]"),
                "1 to 64 letters, digits or - _ . : / =",
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out.sort();
    Ok(out)
}

fn facts(v: Option<serde_json::Value>) -> Result<serde_json::Value> {
    match v {
        None => Ok(json!({})),
        Some(v @ serde_json::Value::Object(_)) => {
            if v.to_string().len() > limits::MAX_FACTS_BYTES {
                return Err(Error::invalid("facts", "at most 256 KiB"));
            }
            Ok(v)
        }
        Some(_) => Err(Error::invalid("facts", "must be a JSON object")),
    }
}

fn ipv4(field: &str, v: Option<String>) -> Result<Option<String>> {
    match v {
        None => Ok(None),
        Some(s) => s
            .trim()
            .parse::<Ipv4Addr>()
            .map(|a| Some(a.to_string()))
            .map_err(|_| Error::invalid(field, format!("{s:?} is not an IPv4 address"))),
    }
}

fn mac(field: &str, v: &str) -> Result<MacAddr> {
    v.parse::<MacAddr>()
        .map_err(|e| Error::from_parse(field, e))
}

fn iface_name(field: &str, v: &str) -> Result<String> {
    let ok = !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(v.to_string())
    } else {
        Err(Error::invalid(
            field,
            "1 to 32 printable characters without '/'",
        ))
    }
}

/// Builds interfaces from input, keeping the ids of MACs the machine already has.
fn interfaces(input: Vec<InterfaceInput>, existing: &[Interface]) -> Result<Vec<Interface>> {
    if input.len() > limits::MAX_INTERFACES {
        return Err(Error::invalid("interfaces", "at most 64 interfaces"));
    }
    let mut seen_mac = HashSet::new();
    let mut seen_name = HashSet::new();
    let mut out = Vec::with_capacity(input.len());
    for (i, inp) in input.into_iter().enumerate() {
        let m = mac(&format!("interfaces[{i}].mac"), &inp.mac)?;
        if !seen_mac.insert(m) {
            return Err(Error::invalid(
                format!("interfaces[{i}].mac"),
                format!("{m} is listed twice"),
            ));
        }
        let name = match inp.name {
            Some(n) => iface_name(&format!("interfaces[{i}].name"), n.trim())?,
            None => format!("eth{i}"),
        };
        if !seen_name.insert(name.clone()) {
            return Err(Error::invalid(
                format!("interfaces[{i}].name"),
                format!("{name} is listed twice"),
            ));
        }
        let id = existing
            .iter()
            .find(|e| e.mac == m)
            .map(|e| e.id)
            .unwrap_or_else(Uuid::now_v7);
        out.push(Interface {
            id,
            mac: m,
            name,
            pxe: inp.pxe.unwrap_or(i == 0),
            ipv4: ipv4(&format!("interfaces[{i}].ipv4"), inp.ipv4)?,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.mac.cmp(&b.mac)));
    Ok(out)
}

fn bmc(app: &App, inp: BmcInput, old: Option<&Bmc>) -> Result<(Bmc, SecretUpdate)> {
    let address = inp.address.trim();
    // A host name or IP address, or an http(s) URL for BMCs (and emulators)
    // that are not on the default port/scheme, which may name one Redfish
    // system (`/redfish/v1/Systems/<id>`: many systems behind one address).
    // Never credentials in it.
    let host_part = match address.split_once("://") {
        Some((scheme, rest)) if scheme == "http" || scheme == "https" => {
            match rest.trim_end_matches('/').split_once('/') {
                None => rest.trim_end_matches('/'),
                Some((host, path)) if redfish_system_path(path) => host,
                Some(_) => "",
            }
        }
        Some(_) => "",
        None => address,
    };
    let ok = !host_part.is_empty()
        && address.len() <= 253
        && host_part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !ok {
        return Err(Error::invalid(
            "bmc.address",
            "a host name or IP address, or an http(s):// URL without credentials",
        ));
    }
    let username = text("bmc.username", inp.username)?;
    let secret = match inp.password {
        Some(p) if p.len() > 1024 => {
            return Err(Error::invalid("bmc.password", "at most 1024 bytes"));
        }
        Some(p) => SecretUpdate::Set(app.secrets.seal(p.as_bytes())?),
        None => SecretUpdate::Keep,
    };
    let has_password = match &secret {
        SecretUpdate::Set(_) => true,
        _ => old.is_some_and(|b| b.has_password),
    };
    Ok((
        Bmc {
            driver: inp.driver,
            address: address.to_string(),
            port: inp.port,
            username,
            has_password,
            verify_tls: inp.verify_tls.unwrap_or(true),
        },
        secret,
    ))
}

/// `redfish/v1/Systems/<id>` (after the host), `<id>` one plain segment.
fn redfish_system_path(path: &str) -> bool {
    path.strip_prefix("redfish/v1/Systems/").is_some_and(|id| {
        !id.is_empty()
            && id != "."
            && id != ".."
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    })
}

fn event(
    by: &Principal,
    m: &Machine,
    kind: &str,
    message: String,
    data: serde_json::Value,
) -> NewEvent {
    NewEvent {
        time: m.updated_at,
        actor: by.actor(),
        machine_id: Some(m.id),
        kind: kind.to_string(),
        message,
        data,
    }
}

fn page_limit(limit: Option<u32>) -> Result<u32> {
    match limit {
        None => Ok(limits::DEFAULT_PAGE),
        Some(l) if (1..=limits::MAX_PAGE).contains(&l) => Ok(l),
        Some(_) => Err(Error::invalid("limit", "between 1 and 1000")),
    }
}

impl App {
    pub async fn list_machines(&self, q: MachineQuery) -> Result<MachineList> {
        let limit = page_limit(q.limit)?;
        let offset = q.offset.unwrap_or(0);
        let (sort, descending) = match q.sort.as_deref() {
            None => (SortKey::Hostname, false),
            Some(s) => {
                let (key, desc) = match s.strip_prefix('-') {
                    Some(k) => (k, true),
                    None => (s, false),
                };
                let key = match key {
                    "hostname" => SortKey::Hostname,
                    "created_at" => SortKey::CreatedAt,
                    "updated_at" => SortKey::UpdatedAt,
                    "state" => SortKey::State,
                    _ => {
                        return Err(Error::invalid(
                            "sort",
                            format!(
                                "one of {}, optionally prefixed with '-'",
                                MACHINE_SORT_KEYS.join(", ")
                            ),
                        ));
                    }
                };
                (key, desc)
            }
        };
        let filter = MachineFilter {
            state: q
                .state
                .as_deref()
                .map(|s| {
                    s.parse::<MachineState>()
                        .map_err(|e| Error::from_parse("state", e))
                })
                .transpose()?,
            tag: q.tag.filter(|t| !t.is_empty()),
            mac: q.mac.as_deref().map(|m| mac("mac", m)).transpose()?,
            hostname_contains: q.hostname.filter(|h| !h.is_empty()),
            sort,
            descending,
            limit,
            offset,
        };
        let (items, total) = self.store.list_machines(&filter).await?;
        let end = offset.saturating_add(items.len() as u64);
        Ok(MachineList {
            next_offset: (end < total).then_some(end),
            items,
            total,
            limit,
            offset,
        })
    }

    /// A machine by UUID or by hostname.
    pub async fn get_machine(&self, ident: &str) -> Result<Machine> {
        let found = match Uuid::parse_str(ident) {
            Ok(id) => self.store.get_machine(id).await?,
            Err(_) => match ident.parse::<Hostname>() {
                Ok(h) => self.store.get_machine_by_hostname(h.as_str()).await?,
                Err(_) => None,
            },
        };
        found.ok_or_else(|| Error::NotFound {
            kind: "machine",
            id: ident.to_string(),
        })
    }

    /// Creates a machine. A hostname or MAC that exists answers `Duplicate`
    /// naming the machine that has it, so a playbook re-run can find it.
    pub async fn create_machine(&self, by: &Principal, c: MachineCreate) -> Result<Machine> {
        let host = hostname("hostname", &c.hostname)?;
        let ifaces = interfaces(c.interfaces, &[])?;
        let (bmc, secret) = match c.bmc {
            Some(b) => {
                let (b, s) = bmc(self, b, None)?;
                (Some(b), s)
            }
            None => (None, SecretUpdate::Keep),
        };
        if let Some(existing) = self.store.get_machine_by_hostname(&host).await? {
            return Err(Error::Duplicate {
                field: "hostname",
                value: host,
                existing: Some(existing.id),
            });
        }
        for i in &ifaces {
            if let Some(existing) = self.store.machine_id_by_mac(&i.mac).await? {
                return Err(Error::Duplicate {
                    field: "mac",
                    value: i.mac.to_string(),
                    existing: Some(existing),
                });
            }
        }
        let at = now();
        let machine = Machine {
            id: Uuid::now_v7(),
            hostname: host,
            state: MachineState::New,
            state_reason: None,
            architecture: c.architecture,
            firmware: c.firmware,
            vendor: text("vendor", c.vendor)?,
            model: text("model", c.model)?,
            serial: text("serial", c.serial)?,
            tags: tags(c.tags)?,
            facts: facts(c.facts)?,
            interfaces: ifaces,
            bmc,
            power_state: None,
            power_checked_at: None,
            created_at: at,
            updated_at: at,
        };
        let ev = event(
            by,
            &machine,
            "machine.created",
            format!("machine {} created", machine.hostname),
            json!({ "hostname": machine.hostname, "macs": machine.interfaces.iter().map(|i| i.mac.to_string()).collect::<Vec<_>>() }),
        );
        let write = MachineWrite {
            machine,
            bmc_secret: secret,
        };
        self.store
            .insert_machine(&write, &ev)
            .await
            .map_err(Error::from)?;
        self.boot.mark_dirty();
        Ok(write.machine)
    }

    /// Applies a PATCH. Fields absent are kept; a PATCH that changes nothing
    /// writes nothing (no event, no new `updated_at`).
    pub async fn update_machine(
        &self,
        by: &Principal,
        ident: &str,
        p: MachinePatch,
    ) -> Result<Machine> {
        let old = self.get_machine(ident).await?;
        let mut new = old.clone();
        let mut changed: Vec<&'static str> = Vec::new();
        if let Some(h) = p.hostname {
            new.hostname = hostname("hostname", &h)?;
        }
        if let Some(v) = p.architecture {
            new.architecture = v;
        }
        if let Some(v) = p.firmware {
            new.firmware = v;
        }
        if let Some(v) = p.vendor {
            new.vendor = text("vendor", v)?;
        }
        if let Some(v) = p.model {
            new.model = text("model", v)?;
        }
        if let Some(v) = p.serial {
            new.serial = text("serial", v)?;
        }
        if let Some(v) = p.tags {
            new.tags = tags(v)?;
        }
        if let Some(v) = p.facts {
            new.facts = facts(Some(v))?;
        }
        if let Some(v) = p.interfaces {
            new.interfaces = interfaces(v, &old.interfaces)?;
        }
        let mut secret = SecretUpdate::Keep;
        match p.bmc {
            None => {}
            Some(None) => new.bmc = None,
            Some(Some(b)) => {
                let (b, s) = bmc(self, b, old.bmc.as_ref())?;
                new.bmc = Some(b);
                secret = s;
            }
        }
        macro_rules! diff {
            ($($f:ident),*) => { $( if new.$f != old.$f { changed.push(stringify!($f)); } )* };
        }
        diff!(
            hostname,
            architecture,
            firmware,
            vendor,
            model,
            serial,
            tags,
            facts,
            interfaces,
            bmc
        );
        if secret != SecretUpdate::Keep && !changed.contains(&"bmc") {
            changed.push("bmc");
        }
        if changed.is_empty() {
            return Ok(old);
        }
        if new.hostname != old.hostname
            && let Some(other) = self.store.get_machine_by_hostname(&new.hostname).await?
        {
            return Err(Error::Duplicate {
                field: "hostname",
                value: new.hostname,
                existing: Some(other.id),
            });
        }
        for i in &new.interfaces {
            if let Some(owner) = self.store.machine_id_by_mac(&i.mac).await?
                && owner != old.id
            {
                return Err(Error::Duplicate {
                    field: "mac",
                    value: i.mac.to_string(),
                    existing: Some(owner),
                });
            }
        }
        new.updated_at = now().max(old.updated_at + time::Duration::microseconds(1));
        let ev = event(
            by,
            &new,
            "machine.updated",
            format!("machine {} updated: {}", new.hostname, changed.join(", ")),
            json!({ "fields": changed }),
        );
        let write = MachineWrite {
            machine: new,
            bmc_secret: secret,
        };
        self.store
            .update_machine(&write, old.updated_at, &ev)
            .await
            .map_err(Error::from)?;
        self.boot.mark_dirty();
        Ok(write.machine)
    }

    pub async fn delete_machine(&self, by: &Principal, ident: &str) -> Result<()> {
        let m = self.get_machine(ident).await?;
        let mut gone = m.clone();
        gone.updated_at = now();
        let ev = event(
            by,
            &gone,
            "machine.deleted",
            format!("machine {} deleted", m.hostname),
            json!({ "hostname": m.hostname, "state": m.state }),
        );
        if !self.store.delete_machine(m.id, &ev).await? {
            return Err(Error::NotFound {
                kind: "machine",
                id: ident.to_string(),
            });
        }
        self.boot.mark_dirty();
        Ok(())
    }

    /// Moves a machine through the lifecycle. An illegal move is refused with
    /// the current state.
    pub async fn change_state(
        &self,
        by: &Principal,
        ident: &str,
        c: StateChange,
    ) -> Result<Machine> {
        let m = self.get_machine(ident).await?;
        let reason = text("reason", c.reason)?;
        m.state
            .check_transition(c.state, reason.as_deref())
            .map_err(|source| Error::Transition {
                current: m.state,
                source,
            })?;
        // Entering commissioning means running it: the same run, job and
        // network boot as the commission action, whichever way it is asked for.
        if c.state == MachineState::Commissioning {
            self.queue_commission(by, m.clone(), &[]).await?;
            return self.get_machine(&m.id.to_string()).await;
        }
        let reason = if c.state.keeps_reason() { reason } else { None };
        let mut new = m.clone();
        new.state = c.state;
        new.state_reason = reason.clone();
        new.updated_at = now().max(m.updated_at + time::Duration::microseconds(1));
        let ev = event(
            by,
            &new,
            "machine.state",
            match &reason {
                Some(r) => format!("{} → {}: {r}", m.state, c.state),
                None => format!("{} → {}", m.state, c.state),
            },
            json!({ "from": m.state, "to": c.state, "reason": reason }),
        );
        match self
            .store
            .set_state(
                m.id,
                m.state,
                c.state,
                reason.as_deref(),
                new.updated_at,
                &ev,
            )
            .await
        {
            Ok(()) => {
                self.boot.mark_dirty();
                Ok(new)
            }
            Err(anvil_store::StoreError::Concurrent) => Err(Error::Concurrent {
                what: "the machine's state",
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn add_interface(
        &self,
        by: &Principal,
        ident: &str,
        i: InterfaceInput,
    ) -> Result<Interface> {
        let m = self.get_machine(ident).await?;
        let mut inputs: Vec<InterfaceInput> = m.interfaces.iter().map(to_input).collect();
        let mac_wanted = mac("mac", &i.mac)?;
        let mut i = i;
        if i.name.is_none() {
            i.name = Some(next_free_name(&m.interfaces));
        }
        if i.pxe.is_none() {
            i.pxe = Some(m.interfaces.is_empty());
        }
        inputs.push(i);
        let updated = self
            .update_machine(
                by,
                &m.id.to_string(),
                MachinePatch {
                    interfaces: Some(inputs),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| strip_index(e, "interfaces"))?;
        updated
            .interfaces
            .into_iter()
            .find(|x| x.mac == mac_wanted)
            .ok_or_else(|| Error::Internal {
                context: "adding an interface",
                source: "the new interface is missing after the write".into(),
            })
    }

    pub async fn update_interface(
        &self,
        by: &Principal,
        ident: &str,
        iface: Uuid,
        p: InterfacePatch,
    ) -> Result<Interface> {
        let m = self.get_machine(ident).await?;
        if !m.interfaces.iter().any(|i| i.id == iface) {
            return Err(Error::NotFound {
                kind: "interface",
                id: iface.to_string(),
            });
        }
        let mut target_mac = None;
        let inputs: Vec<InterfaceInput> = m
            .interfaces
            .iter()
            .map(|i| {
                let mut inp = to_input(i);
                if i.id == iface {
                    if let Some(mac) = &p.mac {
                        inp.mac = mac.clone();
                    }
                    if let Some(n) = &p.name {
                        inp.name = Some(n.clone());
                    }
                    if let Some(x) = p.pxe {
                        inp.pxe = Some(x);
                    }
                    if let Some(ip) = &p.ipv4 {
                        inp.ipv4 = ip.clone();
                    }
                    target_mac = Some(inp.mac.clone());
                }
                inp
            })
            .collect();
        let target_mac = mac("mac", target_mac.as_deref().unwrap_or_default())?;
        let updated = self
            .update_machine(
                by,
                &m.id.to_string(),
                MachinePatch {
                    interfaces: Some(inputs),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| strip_index(e, "interfaces"))?;
        updated
            .interfaces
            .into_iter()
            .find(|x| x.mac == target_mac)
            .ok_or_else(|| Error::Internal {
                context: "updating an interface",
                source: "the interface is missing after the write".into(),
            })
    }

    pub async fn delete_interface(&self, by: &Principal, ident: &str, iface: Uuid) -> Result<()> {
        let m = self.get_machine(ident).await?;
        if !m.interfaces.iter().any(|i| i.id == iface) {
            return Err(Error::NotFound {
                kind: "interface",
                id: iface.to_string(),
            });
        }
        let inputs = m
            .interfaces
            .iter()
            .filter(|i| i.id != iface)
            .map(to_input)
            .collect();
        self.update_machine(
            by,
            &m.id.to_string(),
            MachinePatch {
                interfaces: Some(inputs),
                ..Default::default()
            },
        )
        .await?;
        Ok(())
    }

    /// Events of one machine (by id or hostname) or of all machines.
    pub async fn list_events(&self, machine: Option<&str>, q: EventQuery) -> Result<EventList> {
        let machine_id = match machine {
            None => None,
            Some(ident) => Some(match Uuid::parse_str(ident) {
                // A deleted machine's history stays readable by id.
                Ok(id) => id,
                Err(_) => self.get_machine(ident).await?.id,
            }),
        };
        let since = q
            .since
            .as_deref()
            .map(|s| {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| Error::invalid("since", format!("{s:?} is not an RFC 3339 time")))
            })
            .transpose()?;
        let items = self
            .store
            .list_events(&EventFilter {
                machine_id,
                after_id: q.after,
                since,
                limit: page_limit(q.limit)?,
            })
            .await?;
        Ok(EventList {
            next_after: items.last().map(|e| e.id).or(q.after),
            items,
        })
    }

    /// Counts of machines per state, every state present.
    pub async fn machine_counts(&self) -> Result<Vec<(MachineState, u64)>> {
        let counts = self.store.count_by_state().await?;
        Ok(MachineState::ALL
            .iter()
            .map(|s| {
                let n = counts
                    .iter()
                    .find(|(c, _)| c == s)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                (*s, n)
            })
            .collect())
    }

    /// The decrypted BMC password of a machine (for power drivers only).
    pub async fn bmc_password(&self, machine_id: Uuid) -> Result<Option<String>> {
        match self.store.bmc_secret(machine_id).await? {
            None => Ok(None),
            Some(sealed) => {
                let plain = self.secrets.open(&sealed)?;
                String::from_utf8(plain)
                    .map(Some)
                    .map_err(|e| Error::Internal {
                        context: "decoding a BMC password",
                        source: Box::new(e),
                    })
            }
        }
    }
}

/// An interface as the input that recreates it (for whole-list rewrites).
pub(crate) fn to_input(i: &Interface) -> InterfaceInput {
    InterfaceInput {
        mac: i.mac.to_string(),
        name: Some(i.name.clone()),
        pxe: Some(i.pxe),
        ipv4: i.ipv4.clone(),
    }
}

/// The first `ethN` name not used by `inputs`.
pub(crate) fn free_input_name(inputs: &[InterfaceInput]) -> String {
    (0..)
        .map(|n| format!("eth{n}"))
        .find(|n| !inputs.iter().any(|i| i.name.as_deref() == Some(n.as_str())))
        .unwrap_or_else(|| "eth".to_string())
}

fn next_free_name(existing: &[Interface]) -> String {
    (0..)
        .map(|n| format!("eth{n}"))
        .find(|n| !existing.iter().any(|i| &i.name == n))
        .unwrap_or_else(|| "eth".to_string())
}

/// Errors about `interfaces[N].x` from a whole-list rewrite are reported as
/// `x` to a caller that sent one interface.
fn strip_index(e: Error, prefix: &str) -> Error {
    match e {
        Error::Invalid { field, message } if field.starts_with(prefix) => {
            let short = field.rsplit('.').next().unwrap_or(&field).to_string();
            Error::Invalid {
                field: short,
                message,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::redfish_system_path;

    #[test]
    fn a_bmc_url_may_name_one_redfish_system() {
        assert!(redfish_system_path("redfish/v1/Systems/1"));
        assert!(redfish_system_path(
            "redfish/v1/Systems/0b3e0e9c-1a2b-4c5d-8e9f-000000000001"
        ));
        assert!(redfish_system_path("redfish/v1/Systems/System.Embedded.1"));
        for bad in [
            "",
            "redfish/v1",
            "redfish/v1/Systems/",
            "redfish/v1/Systems/1/Bios",
            "redfish/v1/Managers/1",
            "redfish/v1/Systems/..",
            "redfish/v1/Systems/a%2fb",
            "redfish/v1/Systems/a?b",
        ] {
            assert!(!redfish_system_path(bad), "{bad:?} accepted");
        }
    }
}
