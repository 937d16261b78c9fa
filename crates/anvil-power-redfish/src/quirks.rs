//! Vendor quirks as data.
//!
//! The driver speaks standard Redfish and reads what each BMC advertises
//! (`ResetType@Redfish.AllowableValues`, ETags, `BootSourceOverrideMode`);
//! a row of this table only says where a vendor departs from that. Every
//! row is explained, with its sources, in `docs/redfish-quirks.md`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A BMC family with known departures from plain Redfish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// Dell iDRAC.
    Dell,
    /// HPE iLO.
    Hpe,
    /// Lenovo XClarity Controller (XCC).
    Lenovo,
    /// Supermicro BMC.
    Supermicro,
    /// Anything else: standard Redfish only (OpenBMC, AMI MegaRAC, emulators…).
    Generic,
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Vendor::Dell => "Dell iDRAC",
            Vendor::Hpe => "HPE iLO",
            Vendor::Lenovo => "Lenovo XCC",
            Vendor::Supermicro => "Supermicro",
            Vendor::Generic => "generic Redfish",
        })
    }
}

impl Vendor {
    /// Recognises a vendor from a `Manufacturer` (ComputerSystem), a service
    /// root `Vendor` property or an `Oem` key. Unknown names are `Generic`.
    pub fn detect(name: &str) -> Vendor {
        let n = name.trim().to_ascii_lowercase();
        if n.contains("dell") {
            Vendor::Dell
        } else if n == "hp" || n == "hpe" || n.starts_with("hpe ") || n.contains("hewlett") {
            Vendor::Hpe
        } else if n.contains("lenovo") {
            Vendor::Lenovo
        } else if n.contains("supermicro") || n.contains("super micro") {
            Vendor::Supermicro
        } else {
            Vendor::Generic
        }
    }

    /// This vendor's row of the quirk table.
    pub fn quirks(self) -> Quirks {
        QUIRKS
            .iter()
            .copied()
            .find(|q| q.vendor == self)
            .unwrap_or(GENERIC)
    }
}

/// How `BootSourceOverrideMode` (UEFI/Legacy) is written with a boot override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootModePolicy {
    /// Sent only when the caller asks for a mode (standard PATCH semantics).
    WhenRequested,
    /// Always sent: the caller's mode, else the current one echoed back,
    /// because the BMC resets the mode to its default when it is left out.
    AlwaysSend,
    /// Not writable through `Boot`: never sent; asking for a mode different
    /// from the current one is `NotSupported` (the firmware's own BIOS
    /// setting governs the mode).
    ReadOnly,
}

/// Whether a PATCH carries `If-Match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMatchPolicy {
    /// With the resource's ETag whenever it advertises one (the `ETag`
    /// header, else `@odata.etag`); a 412/428 re-reads and retries once.
    WhenAdvertised,
    /// Never: for firmware whose ETags are broken (rejected even when
    /// current). Only reachable through `RedfishOptions::quirks`.
    Never,
}

/// One vendor's departures from plain Redfish. `ResetType` lists are in
/// order of preference; the first one the system advertises is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirks {
    pub vendor: Vendor,
    /// `PowerAction::On`.
    pub power_on: &'static [&'static str],
    /// `PowerAction::Reset` (immediate reset).
    pub reset: &'static [&'static str],
    /// `PowerAction::Cycle`; when none is advertised the driver does
    /// ForceOff, waits for Off, then On.
    pub cycle: &'static [&'static str],
    pub boot_mode: BootModePolicy,
    pub if_match: IfMatchPolicy,
    /// When a PATCH of `Boot` on the ComputerSystem is refused (4xx) and the
    /// system advertises `@Redfish.Settings`, retry it on the settings
    /// object (iDRAC10 marks `Boot` read-only on the system itself).
    pub boot_via_settings_object: bool,
}

const POWER_ON: &[&str] = &["On", "ForceOn"];
const RESET: &[&str] = &["ForceRestart", "GracefulRestart", "PowerCycle"];
const CYCLE: &[&str] = &["PowerCycle"];

const GENERIC: Quirks = Quirks {
    vendor: Vendor::Generic,
    power_on: POWER_ON,
    reset: RESET,
    cycle: CYCLE,
    boot_mode: BootModePolicy::WhenRequested,
    if_match: IfMatchPolicy::WhenAdvertised,
    boot_via_settings_object: false,
};

/// The table. See docs/redfish-quirks.md for why each row differs.
pub const QUIRKS: &[Quirks] = &[
    Quirks {
        vendor: Vendor::Dell,
        boot_via_settings_object: true,
        ..GENERIC
    },
    Quirks {
        vendor: Vendor::Hpe,
        boot_mode: BootModePolicy::ReadOnly,
        ..GENERIC
    },
    Quirks {
        vendor: Vendor::Lenovo,
        ..GENERIC
    },
    Quirks {
        vendor: Vendor::Supermicro,
        boot_mode: BootModePolicy::AlwaysSend,
        ..GENERIC
    },
    GENERIC,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(Vendor::detect("Dell Inc."), Vendor::Dell);
        assert_eq!(Vendor::detect("HPE"), Vendor::Hpe);
        assert_eq!(Vendor::detect("HP"), Vendor::Hpe);
        assert_eq!(Vendor::detect("Hewlett Packard Enterprise"), Vendor::Hpe);
        assert_eq!(Vendor::detect("Lenovo"), Vendor::Lenovo);
        assert_eq!(Vendor::detect("Supermicro"), Vendor::Supermicro);
        assert_eq!(Vendor::detect("Super Micro Computer"), Vendor::Supermicro);
        assert_eq!(Vendor::detect("Sushy Emulator"), Vendor::Generic);
        // "hp" inside another word is not HPE.
        assert_eq!(Vendor::detect("Graphpoint"), Vendor::Generic);
    }

    #[test]
    fn every_vendor_has_one_row() {
        for v in [
            Vendor::Dell,
            Vendor::Hpe,
            Vendor::Lenovo,
            Vendor::Supermicro,
            Vendor::Generic,
        ] {
            assert_eq!(QUIRKS.iter().filter(|q| q.vendor == v).count(), 1, "{v}");
            assert_eq!(v.quirks().vendor, v);
        }
        assert_eq!(
            Vendor::Supermicro.quirks().boot_mode,
            BootModePolicy::AlwaysSend
        );
        assert_eq!(Vendor::Hpe.quirks().boot_mode, BootModePolicy::ReadOnly);
    }
}
