//! Client classification: which kind of boot client sent a request, and what
//! it must be given to boot. Pure functions over a decoded message, so the
//! whole PXE → iPXE → HTTP chain can be checked against real captured packets
//! (tests/golden.rs).
//!
//! The chain Anvil drives:
//! 1. Firmware PXE (BIOS `PXEClient`, arch 0) gets `undionly.kpxe` over TFTP;
//!    UEFI PXE (arch 7/9) gets `ipxe.efi`, arm64 UEFI (arch 11) the arm64
//!    iPXE. UEFI HTTP boot (`HTTPClient`, arch 16/19) gets the same iPXE
//!    build as an HTTP URL.
//! 2. iPXE (user class `iPXE`, whichever way it was loaded, also from a NIC
//!    option ROM) gets the URL of its machine's iPXE script, which breaks the
//!    chainload loop and hands control to Anvil's HTTP side.
//! 3. Anything else (an installer's or OS's DHCP client) gets an address and
//!    options, no boot file.

use crate::config::BootNetwork;
use anvil_types::{Architecture, Firmware, MacAddr};
use dhcproto::v4::{DhcpOption, Message, OptionCode};
use serde::Serialize;
use uuid::Uuid;

/// What kind of boot client this is, which decides the boot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// A plain DHCP client (udhcpc, dhclient, systemd-networkd …): no boot file.
    NonPxe,
    /// Already running iPXE: gets its iPXE script URL.
    Ipxe,
    /// Legacy BIOS PXE ROM (arch 0).
    PxeBios,
    /// x86-64 UEFI PXE (arch 7 or 9).
    PxeUefiX64,
    /// arm64 UEFI PXE (arch 11).
    PxeUefiArm64,
    /// x86-64 UEFI HTTP boot (arch 16, `HTTPClient`).
    HttpUefiX64,
    /// arm64 UEFI HTTP boot (arch 19, `HTTPClient`).
    HttpUefiArm64,
    /// A PXE or HTTP-boot client of an architecture Anvil carries no iPXE
    /// build for (32-bit UEFI, arm32, RISC-V …): an address, no boot file.
    Unsupported,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::NonPxe => "non_pxe",
            ClientKind::Ipxe => "ipxe",
            ClientKind::PxeBios => "pxe_bios",
            ClientKind::PxeUefiX64 => "pxe_uefi_x64",
            ClientKind::PxeUefiArm64 => "pxe_uefi_arm64",
            ClientKind::HttpUefiX64 => "http_uefi_x64",
            ClientKind::HttpUefiArm64 => "http_uefi_arm64",
            ClientKind::Unsupported => "unsupported",
        }
    }
}

/// Everything a request says about the client's boot firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientClass {
    pub kind: ClientKind,
    /// Client system architecture (option 93, else the `Arch:` field of the
    /// vendor class), RFC 4578 / IANA "Processor Architecture Types".
    pub arch: Option<u16>,
    /// `arch` in Anvil's terms, where it says (x86 BIOS does not say 32/64-bit).
    pub architecture: Option<Architecture>,
    pub firmware: Option<Firmware>,
    /// Option 60, e.g. `PXEClient:Arch:00007:UNDI:003000`.
    pub vendor_class: Option<String>,
    /// Option 77 (RFC 3004 list; iPXE sends a bare `iPXE`).
    pub user_class: Vec<String>,
    /// Option 97: the machine's SMBIOS system UUID (decoded from EFI GUID
    /// byte order, see `machine_uuid`).
    pub system_uuid: Option<Uuid>,
    /// Option 94: network interface identifier (type, major, minor).
    pub nii: Option<[u8; 3]>,
}

impl ClientClass {
    /// Vendor class starts with `PXEClient` or `HTTPClient`: a client that
    /// expects boot information (and the only kind proxyDHCP answers).
    pub fn is_pxe(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("PXEClient") || v.starts_with("HTTPClient"))
    }

    /// A UEFI HTTP-boot client, which needs `HTTPClient` echoed in option 60.
    pub fn is_http_boot(&self) -> bool {
        matches!(
            self.kind,
            ClientKind::HttpUefiX64 | ClientKind::HttpUefiArm64
        ) || self
            .vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with("HTTPClient"))
    }

    pub fn is_ipxe(&self) -> bool {
        self.kind == ClientKind::Ipxe
    }
}

/// IANA processor architecture types that are HTTP-boot variants.
fn is_http_arch(a: u16) -> bool {
    matches!(a, 15 | 16 | 17 | 18 | 19 | 20 | 26 | 28 | 30)
}

/// Maps an RFC 4578 architecture code to Anvil's vocabulary.
pub fn arch_info(a: u16) -> (Option<Architecture>, Option<Firmware>) {
    match a {
        0 => (None, Some(Firmware::Bios)),
        20 => (None, Some(Firmware::Bios)),
        6 | 15 => (Some(Architecture::I386), Some(Firmware::Uefi)),
        7 | 9 | 16 => (Some(Architecture::Amd64), Some(Firmware::Uefi)),
        11 | 19 => (Some(Architecture::Arm64), Some(Firmware::Uefi)),
        27 | 28 => (Some(Architecture::Riscv64), Some(Firmware::Uefi)),
        2 | 8 | 10 | 12 | 13 | 14 | 17 | 18 | 25 | 26 | 29 | 30 => (None, Some(Firmware::Uefi)),
        _ => (None, None),
    }
}

/// `Arch:00007` inside a `PXEClient:Arch:00007:UNDI:003000` vendor class.
fn arch_from_vendor_class(v: &str) -> Option<u16> {
    let mut parts = v.split(':');
    while let Some(p) = parts.next() {
        if p == "Arch" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

/// RFC 3004 user classes: a list of length-prefixed strings. iPXE (and some
/// other clients) send one bare string instead; a value that does not parse as
/// a list is taken as one class.
fn user_classes(raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let l = raw[i] as usize;
        if l == 0 || i + 1 + l > raw.len() {
            return vec![String::from_utf8_lossy(raw).into_owned()];
        }
        out.push(String::from_utf8_lossy(&raw[i + 1..i + 1 + l]).into_owned());
        i += 1 + l;
    }
    out
}

/// Option 97: type 0 followed by a 16-byte GUID (RFC 4578 §2.3). Firmware
/// sends it in EFI GUID byte order (first three fields little-endian): QEMU
/// started with `-uuid 4c4c4544-0042-3510-8052-b4c04f4d4e31` sends
/// `44 45 4c 4c 42 00 10 35 80 52 ...` from OVMF and from iPXE alike
/// (tests/data). Decoded that way it equals the SMBIOS system UUID that
/// dmidecode and Redfish report, which is what the inventory matches on.
fn machine_uuid(raw: &[u8]) -> Option<Uuid> {
    match raw {
        [0, rest @ ..] => {
            let b: [u8; 16] = rest.try_into().ok()?;
            Some(Uuid::from_bytes_le(b))
        }
        _ => None,
    }
}

/// Classifies a decoded request. Pure and total: any message gives an answer.
pub fn classify(msg: &Message) -> ClientClass {
    let opts = msg.opts();
    let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(String::from_utf8_lossy(v).into_owned()),
        _ => None,
    };
    let user_class = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(v)) => user_classes(v),
        _ => Vec::new(),
    };
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
        _ => vendor_class.as_deref().and_then(arch_from_vendor_class),
    };
    let system_uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
        Some(DhcpOption::ClientMachineIdentifier(v)) => machine_uuid(v),
        _ => None,
    };
    let nii = match opts.get(OptionCode::ClientNetworkInterface) {
        Some(DhcpOption::ClientNetworkInterface(a, b, c)) => Some([*a, *b, *c]),
        _ => None,
    };
    let (architecture, firmware) = arch.map(arch_info).unwrap_or((None, None));

    let vc = vendor_class.as_deref().unwrap_or("");
    let pxe = vc.starts_with("PXEClient");
    let http = vc.starts_with("HTTPClient") || (pxe && arch.is_some_and(is_http_arch));
    let kind = if user_class.iter().any(|c| c == "iPXE") {
        ClientKind::Ipxe
    } else if http {
        match arch {
            Some(16) | Some(7) | Some(9) => ClientKind::HttpUefiX64,
            Some(19) | Some(11) => ClientKind::HttpUefiArm64,
            _ => ClientKind::Unsupported,
        }
    } else if pxe {
        // PXE 2.1 requires option 93; a ROM that omits it predates UEFI.
        match arch.unwrap_or(0) {
            0 => ClientKind::PxeBios,
            7 | 9 => ClientKind::PxeUefiX64,
            11 => ClientKind::PxeUefiArm64,
            _ => ClientKind::Unsupported,
        }
    } else {
        ClientKind::NonPxe
    };
    ClientClass {
        kind,
        arch,
        architecture,
        firmware,
        vendor_class,
        user_class,
        system_uuid,
        nii,
    }
}

/// What a client is told to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "via", content = "target")]
pub enum BootTarget {
    /// A file name relative to the TFTP root on `server_address`.
    Tftp(String),
    /// An absolute HTTP URL.
    Http(String),
}

impl BootTarget {
    pub fn as_str(&self) -> &str {
        match self {
            BootTarget::Tftp(s) | BootTarget::Http(s) => s,
        }
    }
}

/// The URL of a machine's iPXE script, which Anvil's HTTP server answers:
/// `http://<server_address>:<http_port>/boot/<mac>.ipxe`, MAC lower-case with
/// colons.
pub fn ipxe_script_url(net: &BootNetwork, mac: MacAddr) -> String {
    format!(
        "http://{}:{}/boot/{mac}.ipxe",
        net.server_address, net.boot.http_port
    )
}

/// The URL of an iPXE binary for UEFI HTTP boot:
/// `http://<server_address>:<http_port>/boot/<file>`.
pub fn http_boot_url(net: &BootNetwork, file: &str) -> String {
    format!(
        "http://{}:{}/boot/{file}",
        net.server_address, net.boot.http_port
    )
}

/// The boot file or URL for a client on a network, or `None` for clients that
/// only get an address.
pub fn boot_target(class: &ClientClass, net: &BootNetwork, mac: MacAddr) -> Option<BootTarget> {
    let b = &net.boot;
    Some(match class.kind {
        ClientKind::Ipxe => BootTarget::Http(ipxe_script_url(net, mac)),
        ClientKind::PxeBios => BootTarget::Tftp(b.bios.clone()),
        ClientKind::PxeUefiX64 => BootTarget::Tftp(b.uefi_x64.clone()),
        ClientKind::PxeUefiArm64 => BootTarget::Tftp(b.arm64.clone()),
        ClientKind::HttpUefiX64 => BootTarget::Http(http_boot_url(net, &b.uefi_x64)),
        ClientKind::HttpUefiArm64 => BootTarget::Http(http_boot_url(net, &b.arm64)),
        ClientKind::NonPxe | ClientKind::Unsupported => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_class_forms() {
        assert_eq!(user_classes(b"iPXE"), vec!["iPXE"]);
        assert_eq!(user_classes(b"\x04iPXE\x03foo"), vec!["iPXE", "foo"]);
        assert_eq!(user_classes(b""), Vec::<String>::new());
        assert_eq!(user_classes(b"\x09ab"), vec!["\tab"]);
    }

    #[test]
    fn vendor_class_arch() {
        assert_eq!(
            arch_from_vendor_class("PXEClient:Arch:00007:UNDI:003000"),
            Some(7)
        );
        assert_eq!(arch_from_vendor_class("HTTPClient:Arch:00016"), Some(16));
        assert_eq!(arch_from_vendor_class("PXEClient"), None);
        assert_eq!(arch_from_vendor_class("PXEClient:Arch:xx"), None);
    }

    #[test]
    fn machine_uuid_needs_type_zero_and_16_bytes() {
        let raw = [
            0, 0x44, 0x45, 0x4c, 0x4c, 0x42, 0x00, 0x10, 0x35, 0x80, 0x52, 0xb4, 0xc0, 0x4f, 0x4d,
            0x4e, 0x31,
        ];
        assert_eq!(
            machine_uuid(&raw).map(|u| u.to_string()).as_deref(),
            Some("4c4c4544-0042-3510-8052-b4c04f4d4e31")
        );
        let mut raw = raw.to_vec();
        raw[0] = 1;
        assert!(machine_uuid(&raw).is_none());
        assert!(machine_uuid(&[0, 1, 2]).is_none());
    }
}
