//! Rendering of API answers for `--output table|json|yaml`.
//!
//! `json` and `yaml` print the response body of the API as it was received
//! (re-serialized from the same types the server serializes), so scripts can
//! rely on the documented API schema. `table` is for humans: aligned columns
//! without colors or borders, one record per line, `-` for an empty cell so
//! that `awk` column numbers stay put.

use crate::error::CliError;
use anvil_api_types::{Instance, Machine, MachineList, Token, TokenCreated, User};
use clap::ValueEnum;
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;
use std::io::Write;
use time::OffsetDateTime;
use time::macros::format_description;

/// How results are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for humans.
    #[default]
    Table,
    /// Pretty-printed JSON of the API's response body.
    Json,
    /// The API's response body as YAML.
    Yaml,
}

/// Facts longer than this are summarised in `show`; `-o json` has them all.
const MAX_INLINE_FACTS: usize = 120;

/// `value` as JSON or YAML, or `table(value)` for the table format.
pub(crate) fn render<T: Serialize + ?Sized>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<String, CliError> {
    let mut out = match format {
        OutputFormat::Table => table(value),
        OutputFormat::Json => serde_json::to_string_pretty(value)
            .map_err(|e| CliError::Internal(format!("cannot encode JSON: {e}")))?,
        OutputFormat::Yaml => serde_saphyr::to_string(&value)
            .map_err(|e| CliError::Internal(format!("cannot encode YAML: {e}")))?,
    };
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// Writes `text` to stdout. A closed pipe (`anvil machine list | head -1`)
/// is not an error: the reader has what it wanted.
pub(crate) fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}

/// The machine list: HOSTNAME, STATE, ARCH, MACS, TAGS, ID.
pub(crate) fn machine_list_table(list: &MachineList) -> String {
    let rows = list.items.iter().map(|m| {
        vec![
            m.hostname.clone(),
            m.state.to_string(),
            opt(m.architecture),
            join(m.interfaces.iter().map(|i| i.mac.to_string())),
            join(m.tags.iter().cloned()),
            m.id.to_string(),
        ]
    });
    columns(&["HOSTNAME", "STATE", "ARCH", "MACS", "TAGS", "ID"], rows)
}

/// One machine as `Key: value` lines, then its interfaces and its BMC
/// (the BMC password is never returned by the API; only whether one is set).
pub(crate) fn machine_table(m: &Machine) -> String {
    let mut pairs = vec![
        ("ID", m.id.to_string()),
        ("Hostname", m.hostname.clone()),
        ("State", m.state.to_string()),
    ];
    if let Some(reason) = &m.state_reason {
        pairs.push(("Reason", reason.clone()));
    }
    pairs.extend([
        ("Architecture", opt(m.architecture)),
        ("Firmware", opt(m.firmware)),
        ("Vendor", opt(m.vendor.as_ref())),
        ("Model", opt(m.model.as_ref())),
        ("Serial", opt(m.serial.as_ref())),
        ("Tags", join(m.tags.iter().cloned())),
        ("Facts", facts_summary(&m.facts)),
        ("Created", timestamp(m.created_at)),
        ("Updated", timestamp(m.updated_at)),
    ]);
    let mut out = key_values(&pairs);

    out.push_str("\nInterfaces:\n");
    if m.interfaces.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows = m.interfaces.iter().map(|i| {
            vec![
                i.name.clone(),
                i.mac.to_string(),
                yes_no(i.pxe).to_string(),
                opt(i.ipv4.as_ref()),
            ]
        });
        out.push_str(&indent(&columns(&["NAME", "MAC", "PXE", "IPV4"], rows)));
    }

    out.push_str("\nBMC:\n");
    match &m.bmc {
        None => out.push_str("  none\n"),
        Some(b) => out.push_str(&indent(&key_values(&[
            ("Driver", b.driver.to_string()),
            ("Address", b.address.clone()),
            ("Port", opt(b.port)),
            ("Username", opt(b.username.as_ref())),
            (
                "Password",
                if b.has_password { "set" } else { "not set" }.to_string(),
            ),
            ("Verify TLS", yes_no(b.verify_tls).to_string()),
        ]))),
    }
    out
}

/// Tokens: NAME, USER, CREATED, LAST USED, ID.
pub(crate) fn token_list_table(tokens: &[Token]) -> String {
    let rows = tokens.iter().map(|t| {
        vec![
            t.name.clone(),
            t.username.clone(),
            timestamp(t.created_at),
            t.last_used_at
                .map_or_else(|| "never".to_string(), timestamp),
            t.id.to_string(),
        ]
    });
    columns(&["NAME", "USER", "CREATED", "LAST USED", "ID"], rows)
}

/// A new token in table mode: only the secret, on its own line, so that
/// `TOKEN=$(anvil token create ci)` and `... | tail -1` both capture it.
/// The explanation goes to stderr (see [`token_created_note`]).
pub(crate) fn token_created_table(t: &TokenCreated) -> String {
    format!("{}\n", t.secret)
}

/// What a human needs to know about a new token, for stderr.
pub(crate) fn token_created_note(t: &TokenCreated) -> String {
    format!(
        "Created token {:?} (id {}) for user {}. Store the secret now; it cannot be shown again:\n",
        t.token.name, t.token.id, t.token.username
    )
}

/// Users: USERNAME, ADMIN, CREATED, ID.
pub(crate) fn user_list_table(users: &[User]) -> String {
    let rows = users.iter().map(|u| {
        vec![
            u.username.clone(),
            yes_no(u.is_admin).to_string(),
            timestamp(u.created_at),
            u.id.to_string(),
        ]
    });
    columns(&["USERNAME", "ADMIN", "CREATED", "ID"], rows)
}

/// One user as `Key: value` lines.
pub(crate) fn user_table(u: &User) -> String {
    key_values(&[
        ("ID", u.id.to_string()),
        ("Username", u.username.clone()),
        ("Admin", yes_no(u.is_admin).to_string()),
        ("Created", timestamp(u.created_at)),
    ])
}

/// Instances: HOST, STATUS, ROLE, STARTED, LAST SEEN, ID; the one that
/// answered is marked with `*` after its host.
pub(crate) fn instance_list_table(instances: &[Instance]) -> String {
    let rows = instances.iter().map(|i| {
        vec![
            if i.this {
                format!("{} *", i.hostname)
            } else {
                i.hostname.clone()
            },
            i.status().to_string(),
            if i.leader { "leader" } else { "-" }.to_string(),
            timestamp(i.started_at),
            timestamp(i.seen_at),
            i.id.to_string(),
        ]
    });
    columns(
        &["HOST", "STATUS", "ROLE", "STARTED", "LAST SEEN", "ID"],
        rows,
    )
}

/// A borderless table with a header row. Lines are right-trimmed so the
/// last column carries no padding.
fn columns(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    trim_lines(&t.to_string())
}

/// `Key:  value` lines with the values aligned.
fn key_values(pairs: &[(&str, String)]) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    for (k, v) in pairs {
        t.add_row(vec![format!("{k}:"), v.clone()]);
    }
    trim_lines(&t.to_string())
}

/// Removes comfy-table's outer padding: the leading space of every line
/// (left border plus padding) and trailing spaces.
fn trim_lines(table: &str) -> String {
    let lines: Vec<&str> = table.lines().map(str::trim_end).collect();
    let lead = lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for line in lines {
        out.push_str(line.get(lead..).unwrap_or(""));
        out.push('\n');
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn join(items: impl Iterator<Item = String>) -> String {
    let joined = items.collect::<Vec<_>>().join(",");
    if joined.is_empty() {
        "-".to_string()
    } else {
        joined
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// UTC to the second: the API's RFC 3339 timestamps carry nanoseconds that
/// only widen a table.
fn timestamp(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]Z"
        ))
        .unwrap_or_else(|_| t.to_string())
}

fn facts_summary(facts: &serde_json::Value) -> String {
    match facts {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::Object(m) if m.is_empty() => "-".to_string(),
        v => {
            let compact = v.to_string();
            if compact.chars().count() <= MAX_INLINE_FACTS {
                compact
            } else if let serde_json::Value::Object(m) = v {
                format!("{} keys (see -o json)", m.len())
            } else {
                "(see -o json)".to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anvil_api_types::{Bmc, Interface};
    use anvil_types::{Architecture, BmcDriver, Firmware, MachineState};
    use serde_json::json;
    use time::macros::datetime;

    fn sample_machine() -> Machine {
        Machine {
            id: "0190f1e2-7a3b-7c4d-8e5f-0123456789ab".parse().unwrap(),
            hostname: "node-01".into(),
            state: MachineState::Ready,
            state_reason: None,
            architecture: Some(Architecture::Amd64),
            firmware: Some(Firmware::Uefi),
            vendor: Some("Dell".into()),
            model: None,
            serial: Some("ABC123".into()),
            tags: vec!["rack1".into(), "gpu".into()],
            facts: json!({"cpus": 64}),
            interfaces: vec![
                Interface {
                    id: "0190f1e2-7a3b-7c4d-8e5f-00000000000a".parse().unwrap(),
                    mac: "52:54:00:12:34:56".parse().unwrap(),
                    name: "eth0".into(),
                    pxe: true,
                    ipv4: Some("10.0.0.11".into()),
                },
                Interface {
                    id: "0190f1e2-7a3b-7c4d-8e5f-00000000000b".parse().unwrap(),
                    mac: "52:54:00:12:34:57".parse().unwrap(),
                    name: "eth1".into(),
                    pxe: false,
                    ipv4: None,
                },
            ],
            bmc: Some(Bmc {
                driver: BmcDriver::Redfish,
                address: "10.0.1.11".into(),
                port: None,
                username: Some("root".into()),
                has_password: true,
                verify_tls: false,
            }),
            power_state: None,
            power_checked_at: None,
            created_at: datetime!(2026-01-02 03:04:05.123456 UTC),
            updated_at: datetime!(2026-01-03 00:00:00 UTC),
        }
    }

    #[test]
    fn machine_show_table() {
        let out = render(OutputFormat::Table, &sample_machine(), machine_table).unwrap();
        let want = "\
ID:            0190f1e2-7a3b-7c4d-8e5f-0123456789ab
Hostname:      node-01
State:         ready
Architecture:  amd64
Firmware:      uefi
Vendor:        Dell
Model:         -
Serial:        ABC123
Tags:          rack1,gpu
Facts:         {\"cpus\":64}
Created:       2026-01-02 03:04:05Z
Updated:       2026-01-03 00:00:00Z

Interfaces:
  NAME  MAC                PXE  IPV4
  eth0  52:54:00:12:34:56  yes  10.0.0.11
  eth1  52:54:00:12:34:57  no   -

BMC:
  Driver:      redfish
  Address:     10.0.1.11
  Port:        -
  Username:    root
  Password:    set
  Verify TLS:  no
";
        assert_eq!(out, want);
    }

    #[test]
    fn machine_list_table_has_the_documented_columns() {
        let mut bare = sample_machine();
        bare.hostname = "node-02".into();
        bare.architecture = None;
        bare.tags.clear();
        bare.interfaces.clear();
        let list = MachineList {
            items: vec![sample_machine(), bare],
            total: 2,
            limit: 100,
            offset: 0,
            next_offset: None,
        };
        let out = render(OutputFormat::Table, &list, machine_list_table).unwrap();
        let want = "\
HOSTNAME  STATE  ARCH   MACS                                 TAGS       ID
node-01   ready  amd64  52:54:00:12:34:56,52:54:00:12:34:57  rack1,gpu  0190f1e2-7a3b-7c4d-8e5f-0123456789ab
node-02   ready  -      -                                    -          0190f1e2-7a3b-7c4d-8e5f-0123456789ab
";
        assert_eq!(out, want);
    }

    #[test]
    fn json_is_the_api_body() {
        let m = sample_machine();
        let out = render(OutputFormat::Json, &m, machine_table).unwrap();
        assert!(out.ends_with("}\n"));
        assert!(out.contains("\n  \"hostname\": \"node-01\","), "{out}");
        let back: Machine = serde_json::from_str(&out).unwrap();
        assert_eq!(back, m);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["bmc"]["has_password"], json!(true));
        assert!(v["bmc"].get("password").is_none());
        assert_eq!(v["created_at"], json!("2026-01-02T03:04:05.123456Z"));
    }

    #[test]
    fn yaml_has_the_same_fields() {
        let m = sample_machine();
        let out = render(OutputFormat::Yaml, &m, machine_table).unwrap();
        assert!(out.contains("hostname: node-01\n"), "{out}");
        assert!(out.contains("state: ready\n"), "{out}");
        assert!(out.contains("52:54:00:12:34:56"), "{out}");
        assert!(out.contains("\n  has_password: true\n"), "{out}");
        assert!(!out.contains("\n  password:"), "{out}");
        // YAML is a superset of JSON's data model: reading it back as JSON
        // values gives the JSON output.
        let from_yaml: serde_json::Value = serde_saphyr::from_str(&out).unwrap();
        assert_eq!(from_yaml, serde_json::to_value(&m).unwrap());
    }

    #[test]
    fn token_secret_is_alone_on_the_last_line() {
        let created = TokenCreated {
            token: Token {
                id: uuid::Uuid::nil(),
                name: "ci".into(),
                username: "admin".into(),
                created_at: datetime!(2026-01-02 03:04:05 UTC),
                last_used_at: None,
            },
            secret: "anvil_s3cr3t".into(),
        };
        let out = render(OutputFormat::Table, &created, token_created_table).unwrap();
        assert_eq!(out, "anvil_s3cr3t\n");
        assert!(token_created_note(&created).contains("\"ci\""));
        let out = render(OutputFormat::Json, &created, token_created_table).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["secret"], json!("anvil_s3cr3t"));
        assert_eq!(v["name"], json!("ci"));
    }

    #[test]
    fn long_facts_are_summarised() {
        let many: serde_json::Map<String, serde_json::Value> =
            (0..50).map(|i| (format!("key{i}"), json!(i))).collect();
        assert_eq!(
            facts_summary(&serde_json::Value::Object(many)),
            "50 keys (see -o json)"
        );
        assert_eq!(facts_summary(&json!({})), "-");
    }
}
