//! The hardware facts a commissioning run reports: plain serde types.
//!
//! JSON field names are snake_case. Every struct is `#[serde(default)]` so a
//! report from hardware that lacks something (no DMI, no NVMe, no LLDP
//! neighbour) still parses; unknown values are `null` (`None`), never
//! invented. [`HardwareFacts::validate`] is what the server runs before it
//! stores a report, so a malformed one never replaces good facts.

use serde::{Deserialize, Serialize};

use crate::Error;

/// The schema version this build writes and accepts.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything commissioning learns about one machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct HardwareFacts {
    /// [`SCHEMA_VERSION`] of the writer; a report without it is rejected.
    pub schema_version: u32,
    pub cpu: Cpu,
    pub memory: Memory,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub dmi: Dmi,
    pub boot: Boot,
    /// LLDP neighbours heard during the listening window, one per
    /// (interface, chassis ID, port ID).
    pub lldp: Vec<LldpNeighbor>,
    /// Soft problems met while collecting (unreadable or unparsable files).
    /// Missing files are normal and not listed.
    pub problems: Vec<String>,
}

/// Processor summary across all sockets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Cpu {
    /// `model name` from /proc/cpuinfo, e.g. "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".
    pub model: Option<String>,
    /// `vendor_id`, e.g. "GenuineIntel", "AuthenticAMD".
    pub vendor: Option<String>,
    /// Physical packages.
    pub sockets: u32,
    /// Physical cores over all sockets.
    pub cores: u32,
    /// Logical CPUs (hardware threads) over all sockets.
    pub threads: u32,
    /// The flags that matter for placement (virtualization, AES, AVX family,
    /// SSE4.2, ...), sorted.
    pub flags: Vec<String>,
    /// Current clock of the first CPU in MHz as the kernel reports it.
    pub mhz: Option<u32>,
}

/// Memory: the kernel's total and the DIMMs the SMBIOS table lists.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Memory {
    /// `MemTotal` from /proc/meminfo in bytes (usable by the kernel, so a
    /// little less than the installed DIMMs).
    pub total_bytes: u64,
    /// Populated memory devices (SMBIOS type 17); empty slots are left out.
    pub dimms: Vec<Dimm>,
}

/// One populated memory device (SMBIOS type 17).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Dimm {
    /// Device locator, e.g. "DIMM_A1" or "DIMM 0".
    pub locator: String,
    pub bank_locator: Option<String>,
    pub size_bytes: u64,
    /// Memory type name, e.g. "DDR4", "DDR5", "RAM".
    #[serde(rename = "type")]
    pub memory_type: Option<String>,
    /// Speed in megatransfers per second.
    pub speed_mts: Option<u32>,
    pub manufacturer: Option<String>,
    pub serial: Option<String>,
    pub part_number: Option<String>,
}

/// How a disk is attached.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DiskTransport {
    Nvme,
    Sata,
    Sas,
    /// SCSI that is neither SATA nor SAS (e.g. virtio-scsi, iSCSI, FC).
    Scsi,
    Virtio,
    Usb,
    Mmc,
    /// Anything else, including values from a newer writer.
    #[default]
    #[serde(other)]
    Unknown,
}

/// One whole block device (partitions, loop, ram, dm and md devices are not listed).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Disk {
    /// Kernel name, e.g. "sda", "nvme0n1", "vda".
    pub name: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// World wide name as the kernel reports it (`wwid`), e.g. "naa.5000c500a1b2c3d4"
    /// or "eui.0025388b71b0e4a1".
    pub wwn: Option<String>,
    pub size_bytes: u64,
    pub rotational: bool,
    pub transport: DiskTransport,
    /// Stable path name as in /dev/disk/by-path, e.g. "pci-0000:00:1f.2-ata-1".
    pub by_path: Option<String>,
    pub removable: bool,
    pub read_only: bool,
}

/// One physical network interface (loopback, bridges, bonds, VLANs, veths and
/// other virtual interfaces without a device are not listed).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Nic {
    /// Kernel name, e.g. "eno1", "enp1s0".
    pub name: String,
    /// Current MAC address, lower-case aa:bb:cc:dd:ee:ff.
    pub mac: String,
    /// The burned-in address when the driver reports one that differs
    /// from `mac` (e.g. a bond member).
    pub permanent_mac: Option<String>,
    /// Kernel driver, e.g. "ixgbe", "virtio_net".
    pub driver: Option<String>,
    /// Carrier present. `None` while the interface is administratively
    /// down (the kernel cannot tell; `listen_lldp` brings interfaces up).
    pub link_up: Option<bool>,
    /// Negotiated speed; `None` without link or when the driver does not say.
    pub speed_mbps: Option<u32>,
    /// PCI address of the device, e.g. "0000:3b:00.0".
    pub pci_address: Option<String>,
    /// Firmware version from the driver (ethtool `ETHTOOL_GDRVINFO`), only
    /// collected on a live system.
    pub firmware_version: Option<String>,
    pub mtu: Option<u32>,
}

/// DMI / SMBIOS identification strings. Placeholder values firmware ships
/// ("To Be Filled By O.E.M.", "Default string", "0123456789") are dropped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Dmi {
    pub system_vendor: Option<String>,
    pub system_product: Option<String>,
    pub system_version: Option<String>,
    pub system_serial: Option<String>,
    /// System UUID, lower case 8-4-4-4-12.
    pub system_uuid: Option<String>,
    pub system_sku: Option<String>,
    pub system_family: Option<String>,
    pub board_vendor: Option<String>,
    pub board_product: Option<String>,
    pub board_version: Option<String>,
    pub board_serial: Option<String>,
    pub board_asset_tag: Option<String>,
    pub bios_vendor: Option<String>,
    pub bios_version: Option<String>,
    /// As the firmware writes it, usually MM/DD/YYYY.
    pub bios_date: Option<String>,
    /// Chassis type name from the SMBIOS spec, e.g. "Rack Mount Chassis", "Other".
    pub chassis_type: Option<String>,
    pub chassis_vendor: Option<String>,
    pub chassis_version: Option<String>,
    pub chassis_serial: Option<String>,
    pub chassis_asset_tag: Option<String>,
}

/// Firmware boot mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BootMode {
    Uefi,
    /// Legacy BIOS (no /sys/firmware/efi).
    #[default]
    Bios,
}

/// How the running system was booted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Boot {
    pub mode: BootMode,
    /// Secure Boot state from the `SecureBoot` EFI variable; `None` under BIOS
    /// or when the variable cannot be read.
    pub secure_boot: Option<bool>,
}

/// A neighbour heard by LLDP on one of the machine's interfaces.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct LldpNeighbor {
    /// Local interface the frame arrived on.
    pub interface: String,
    /// Source MAC address of the frame.
    pub source_mac: Option<String>,
    /// Chassis ID rendered by subtype: a MAC as aa:bb:.., a network address
    /// as an IP, text as text, anything else as hex.
    pub chassis_id: String,
    /// One of `chassis_component`, `interface_alias`, `port_component`,
    /// `mac_address`, `network_address`, `interface_name`, `local`, or
    /// `reserved_<n>`.
    pub chassis_id_subtype: String,
    /// Port ID rendered like `chassis_id`.
    pub port_id: String,
    /// One of `interface_alias`, `port_component`, `mac_address`,
    /// `network_address`, `interface_name`, `agent_circuit_id`, `local`, or
    /// `reserved_<n>`.
    pub port_id_subtype: String,
    pub port_description: Option<String>,
    pub system_name: Option<String>,
    pub system_description: Option<String>,
    /// IEEE 802.1 Port VLAN ID (untagged VLAN of the switch port).
    pub vlan_id: Option<u16>,
    /// First management address (IPv4/IPv6 as text, others hex).
    pub mgmt_address: Option<String>,
    /// Time to live in seconds.
    pub ttl: u16,
}

// Limits well beyond real hardware, tight enough to keep a hostile report small.
const MAX_DISKS: usize = 4096;
const MAX_NICS: usize = 1024;
const MAX_DIMMS: usize = 1024;
const MAX_LLDP: usize = 4096;
const MAX_FLAGS: usize = 256;
const MAX_PROBLEMS: usize = 1024;
const MAX_STRING: usize = 2048;
const MAX_PROBLEM_STRING: usize = 4096;
const MAX_THREADS: u64 = 1 << 16;
const MAX_SOCKETS: u64 = 64;
/// 1 PiB of RAM.
const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// The largest size SMBIOS can express for one memory device (2 PiB).
const MAX_DIMM_BYTES: u64 = 0x7fff_ffff << 20;
/// 1 EiB for a single block device.
const MAX_DISK_BYTES: u64 = 1 << 60;
/// 10 Tbit/s.
const MAX_SPEED_MBPS: u64 = 10_000_000;
const MAX_MHZ: u64 = 100_000;
const MAX_MTU: u64 = 65_536;

impl HardwareFacts {
    /// Check a report before storing it: schema version, MAC and UUID syntax,
    /// plausible numbers, bounded lists and strings, unique disk and NIC
    /// names. Returns the first problem; [`Self::validation_errors`] lists all.
    pub fn validate(&self) -> Result<(), Error> {
        match self.validation_errors().into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// Every validation problem of the report, in field order.
    pub fn validation_errors(&self) -> Vec<Error> {
        let mut v = Validator::default();
        if self.schema_version != SCHEMA_VERSION {
            v.errors.push(Error::UnsupportedSchemaVersion {
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        self.validate_cpu(&mut v);
        self.validate_memory(&mut v);
        self.validate_disks(&mut v);
        self.validate_nics(&mut v);
        self.validate_dmi(&mut v);
        self.validate_lldp(&mut v);
        v.count("problems", self.problems.len(), MAX_PROBLEMS);
        for (i, p) in self.problems.iter().enumerate() {
            v.string_max(&format!("problems[{i}]"), Some(p), MAX_PROBLEM_STRING, true);
        }
        v.errors
    }

    fn validate_cpu(&self, v: &mut Validator) {
        let c = &self.cpu;
        v.text("cpu.model", c.model.as_deref());
        v.text("cpu.vendor", c.vendor.as_deref());
        v.range("cpu.sockets", c.sockets.into(), 0, MAX_SOCKETS);
        v.range("cpu.cores", c.cores.into(), 0, MAX_THREADS);
        v.range("cpu.threads", c.threads.into(), 0, MAX_THREADS);
        if c.cores > c.threads && c.threads > 0 {
            v.errors.push(Error::OutOfRange {
                field: "cpu.cores".into(),
                value: c.cores.into(),
                min: 0,
                max: c.threads.into(),
            });
        }
        if let Some(mhz) = c.mhz {
            v.range("cpu.mhz", mhz.into(), 0, MAX_MHZ);
        }
        v.count("cpu.flags", c.flags.len(), MAX_FLAGS);
        for (i, f) in c.flags.iter().enumerate() {
            v.text(&format!("cpu.flags[{i}]"), Some(f));
        }
    }

    fn validate_memory(&self, v: &mut Validator) {
        let m = &self.memory;
        v.range("memory.total_bytes", m.total_bytes, 0, MAX_MEMORY_BYTES);
        v.count("memory.dimms", m.dimms.len(), MAX_DIMMS);
        for (i, d) in m.dimms.iter().enumerate() {
            let p = format!("memory.dimms[{i}]");
            v.text(&format!("{p}.locator"), Some(&d.locator));
            v.text(&format!("{p}.bank_locator"), d.bank_locator.as_deref());
            v.range(&format!("{p}.size_bytes"), d.size_bytes, 0, MAX_DIMM_BYTES);
            v.text(&format!("{p}.type"), d.memory_type.as_deref());
            if let Some(s) = d.speed_mts {
                v.range(&format!("{p}.speed_mts"), s.into(), 0, MAX_MHZ);
            }
            v.text(&format!("{p}.manufacturer"), d.manufacturer.as_deref());
            v.text(&format!("{p}.serial"), d.serial.as_deref());
            v.text(&format!("{p}.part_number"), d.part_number.as_deref());
        }
    }

    fn validate_disks(&self, v: &mut Validator) {
        v.count("disks", self.disks.len(), MAX_DISKS);
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.disks.iter().enumerate() {
            let p = format!("disks[{i}]");
            v.name(&format!("{p}.name"), &d.name);
            if !d.name.is_empty() && !names.insert(d.name.as_str()) {
                v.errors.push(Error::Duplicate {
                    field: "disks.name",
                    value: d.name.clone(),
                });
            }
            v.text(&format!("{p}.model"), d.model.as_deref());
            v.text(&format!("{p}.serial"), d.serial.as_deref());
            v.text(&format!("{p}.wwn"), d.wwn.as_deref());
            v.range(&format!("{p}.size_bytes"), d.size_bytes, 0, MAX_DISK_BYTES);
            v.text(&format!("{p}.by_path"), d.by_path.as_deref());
        }
    }

    fn validate_nics(&self, v: &mut Validator) {
        v.count("nics", self.nics.len(), MAX_NICS);
        let mut names = std::collections::HashSet::new();
        for (i, n) in self.nics.iter().enumerate() {
            let p = format!("nics[{i}]");
            v.name(&format!("{p}.name"), &n.name);
            if !n.name.is_empty() && !names.insert(n.name.as_str()) {
                v.errors.push(Error::Duplicate {
                    field: "nics.name",
                    value: n.name.clone(),
                });
            }
            v.mac(&format!("{p}.mac"), &n.mac);
            if let Some(pm) = &n.permanent_mac {
                v.mac(&format!("{p}.permanent_mac"), pm);
            }
            v.text(&format!("{p}.driver"), n.driver.as_deref());
            if let Some(s) = n.speed_mbps {
                v.range(&format!("{p}.speed_mbps"), s.into(), 0, MAX_SPEED_MBPS);
            }
            v.text(&format!("{p}.pci_address"), n.pci_address.as_deref());
            v.text(
                &format!("{p}.firmware_version"),
                n.firmware_version.as_deref(),
            );
            if let Some(m) = n.mtu {
                v.range(&format!("{p}.mtu"), m.into(), 0, MAX_MTU);
            }
        }
    }

    fn validate_dmi(&self, v: &mut Validator) {
        let d = &self.dmi;
        for (field, value) in [
            ("dmi.system_vendor", &d.system_vendor),
            ("dmi.system_product", &d.system_product),
            ("dmi.system_version", &d.system_version),
            ("dmi.system_serial", &d.system_serial),
            ("dmi.system_sku", &d.system_sku),
            ("dmi.system_family", &d.system_family),
            ("dmi.board_vendor", &d.board_vendor),
            ("dmi.board_product", &d.board_product),
            ("dmi.board_version", &d.board_version),
            ("dmi.board_serial", &d.board_serial),
            ("dmi.board_asset_tag", &d.board_asset_tag),
            ("dmi.bios_vendor", &d.bios_vendor),
            ("dmi.bios_version", &d.bios_version),
            ("dmi.bios_date", &d.bios_date),
            ("dmi.chassis_type", &d.chassis_type),
            ("dmi.chassis_vendor", &d.chassis_vendor),
            ("dmi.chassis_version", &d.chassis_version),
            ("dmi.chassis_serial", &d.chassis_serial),
            ("dmi.chassis_asset_tag", &d.chassis_asset_tag),
        ] {
            v.text(field, value.as_deref());
        }
        if let Some(u) = &d.system_uuid
            && !is_uuid(u)
        {
            v.errors.push(Error::InvalidUuid {
                field: "dmi.system_uuid".into(),
                value: truncate_for_error(u),
            });
        }
    }

    fn validate_lldp(&self, v: &mut Validator) {
        v.count("lldp", self.lldp.len(), MAX_LLDP);
        for (i, n) in self.lldp.iter().enumerate() {
            let p = format!("lldp[{i}]");
            v.name(&format!("{p}.interface"), &n.interface);
            if let Some(m) = &n.source_mac {
                v.mac(&format!("{p}.source_mac"), m);
            }
            v.text(&format!("{p}.chassis_id"), Some(&n.chassis_id));
            v.text(
                &format!("{p}.chassis_id_subtype"),
                Some(&n.chassis_id_subtype),
            );
            v.text(&format!("{p}.port_id"), Some(&n.port_id));
            v.text(&format!("{p}.port_id_subtype"), Some(&n.port_id_subtype));
            v.text(
                &format!("{p}.port_description"),
                n.port_description.as_deref(),
            );
            v.text(&format!("{p}.system_name"), n.system_name.as_deref());
            // System descriptions are free text and routinely multi-line.
            v.string_max(
                &format!("{p}.system_description"),
                n.system_description.as_deref(),
                MAX_STRING,
                true,
            );
            if let Some(vlan) = n.vlan_id {
                v.range(&format!("{p}.vlan_id"), vlan.into(), 1, 4094);
            }
            v.text(&format!("{p}.mgmt_address"), n.mgmt_address.as_deref());
        }
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<Error>,
}

impl Validator {
    fn count(&mut self, field: &'static str, count: usize, max: usize) {
        if count > max {
            self.errors
                .push(Error::TooManyEntries { field, count, max });
        }
    }

    fn range(&mut self, field: &str, value: u64, min: u64, max: u64) {
        if value < min || value > max {
            self.errors.push(Error::OutOfRange {
                field: field.into(),
                value,
                min,
                max,
            });
        }
    }

    /// A single-line string of bounded length.
    fn text(&mut self, field: &str, value: Option<&str>) {
        self.string_max(field, value, MAX_STRING, false);
    }

    fn string_max(&mut self, field: &str, value: Option<&str>, max: usize, multiline: bool) {
        let Some(s) = value else { return };
        if s.len() > max {
            self.errors.push(Error::StringTooLong {
                field: field.into(),
                len: s.len(),
                max,
            });
        } else if s
            .chars()
            .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\r' || c == '\t')))
        {
            self.errors.push(Error::ControlCharacters {
                field: field.into(),
            });
        }
    }

    /// A kernel name (interface or block device): non-empty, short, printable.
    fn name(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.errors.push(Error::Empty {
                field: field.into(),
            });
        } else {
            self.string_max(field, Some(value), 255, false);
        }
    }

    fn mac(&mut self, field: &str, value: &str) {
        if !is_mac(value) {
            self.errors.push(Error::InvalidMac {
                field: field.into(),
                value: truncate_for_error(value),
            });
        }
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case).
pub fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// 8-4-4-4-12 hex digits (either case).
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Keep error messages small when a hostile value is huge.
fn truncate_for_error(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HardwareFacts {
        HardwareFacts {
            schema_version: SCHEMA_VERSION,
            cpu: Cpu {
                model: Some("QEMU Virtual CPU".into()),
                vendor: Some("GenuineIntel".into()),
                sockets: 1,
                cores: 2,
                threads: 4,
                flags: vec!["aes".into(), "vmx".into()],
                mhz: Some(2400),
            },
            memory: Memory {
                total_bytes: 8 << 30,
                dimms: vec![Dimm {
                    locator: "DIMM 0".into(),
                    size_bytes: 8 << 30,
                    memory_type: Some("RAM".into()),
                    ..Dimm::default()
                }],
            },
            disks: vec![Disk {
                name: "nvme0n1".into(),
                serial: Some("NVME-SERIAL-1".into()),
                size_bytes: 10 << 30,
                transport: DiskTransport::Nvme,
                ..Disk::default()
            }],
            nics: vec![Nic {
                name: "ens3".into(),
                mac: "52:54:00:12:34:56".into(),
                link_up: Some(true),
                ..Nic::default()
            }],
            dmi: Dmi {
                system_uuid: Some("4c4c4544-0038-3010-8050-b4c04f4e3732".into()),
                ..Dmi::default()
            },
            boot: Boot {
                mode: BootMode::Uefi,
                secure_boot: Some(false),
            },
            lldp: vec![LldpNeighbor {
                interface: "ens3".into(),
                chassis_id: "aa:bb:cc:dd:ee:ff".into(),
                chassis_id_subtype: "mac_address".into(),
                port_id: "swp1".into(),
                port_id_subtype: "interface_name".into(),
                vlan_id: Some(100),
                ttl: 120,
                ..LldpNeighbor::default()
            }],
            problems: vec![],
        }
    }

    #[test]
    fn a_good_report_validates_and_round_trips_through_json() {
        let facts = good();
        facts.validate().unwrap();
        let json = serde_json::to_value(&facts).unwrap();
        assert_eq!(json["memory"]["dimms"][0]["type"], "RAM");
        assert_eq!(json["disks"][0]["transport"], "nvme");
        assert_eq!(json["boot"]["mode"], "uefi");
        let back: HardwareFacts = serde_json::from_value(json).unwrap();
        assert_eq!(back, facts);
    }

    #[test]
    fn missing_fields_take_defaults_and_unknown_transports_parse() {
        let facts: HardwareFacts = serde_json::from_str(
            r#"{"schema_version":1,"disks":[{"name":"sda","transport":"fibre_channel_of_the_future"}]}"#,
        )
        .unwrap();
        assert_eq!(facts.disks[0].transport, DiskTransport::Unknown);
        assert_eq!(facts.cpu, Cpu::default());
        facts.validate().unwrap();
    }

    #[test]
    fn bad_reports_are_rejected_with_the_field_named() {
        let mut f = good();
        f.schema_version = 0;
        assert!(matches!(
            f.validate(),
            Err(Error::UnsupportedSchemaVersion { found: 0, .. })
        ));

        let mut f = good();
        f.nics[0].mac = "52:54:00:12:34".into();
        let err = f.validate().unwrap_err();
        assert!(matches!(&err, Error::InvalidMac { field, .. } if field == "nics[0].mac"));
        assert!(err.to_string().contains("nics[0].mac"));

        let mut f = good();
        f.disks[0].size_bytes = u64::MAX;
        assert!(
            matches!(f.validate(), Err(Error::OutOfRange { field, .. }) if field == "disks[0].size_bytes")
        );

        let mut f = good();
        f.nics = vec![f.nics[0].clone(); MAX_NICS + 1];
        let errors = f.validation_errors();
        assert!(
            errors
                .iter()
                .any(|e| matches!(e, Error::TooManyEntries { field: "nics", .. }))
        );
        assert!(errors.iter().any(|e| matches!(
            e,
            Error::Duplicate {
                field: "nics.name",
                ..
            }
        )));

        let mut f = good();
        f.dmi.system_uuid = Some("not-a-uuid".into());
        assert!(matches!(f.validate(), Err(Error::InvalidUuid { .. })));

        let mut f = good();
        f.disks[0].model = Some("x".repeat(MAX_STRING + 1));
        assert!(matches!(f.validate(), Err(Error::StringTooLong { .. })));

        let mut f = good();
        f.disks[0].serial = Some("evil\u{1b}[2J".into());
        assert!(matches!(f.validate(), Err(Error::ControlCharacters { .. })));

        let mut f = good();
        f.lldp[0].vlan_id = Some(4095);
        assert!(
            matches!(f.validate(), Err(Error::OutOfRange { field, .. }) if field == "lldp[0].vlan_id")
        );

        let mut f = good();
        f.cpu.cores = 8;
        assert!(
            matches!(f.validate(), Err(Error::OutOfRange { field, .. }) if field == "cpu.cores")
        );

        let mut f = good();
        f.disks[0].name.clear();
        assert!(matches!(f.validate(), Err(Error::Empty { .. })));
    }
}
