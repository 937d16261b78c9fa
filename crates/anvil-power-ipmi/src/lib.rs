//! IPMI v2.0 power drivers for Anvil: `PowerDriver` over RMCP+ ("lanplus").
//!
//! Two implementations:
//!
//! * [`IpmiDriver`], the default: a native client on tokio UDP. It keeps
//!   one authenticated, encrypted session per BMC between calls, so a
//!   power-state poll costs one UDP round trip instead of the six of a
//!   fresh login; it re-establishes the session when the BMC stops
//!   answering on it, retransmits with exponential backoff on UDP loss, and
//!   bounds every call by a timeout.
//! * [`IpmitoolDriver`], the fallback: runs `ipmitool -I lanplus` (Debian
//!   package `ipmitool`) for each call, password passed through the
//!   `IPMI_PASSWORD` environment variable (`-E`), never on the command line
//!   where `ps` shows it. Use it for a BMC whose quirks the native client
//!   does not handle; each call pays for a process and a full login.
//!
//! # Security
//!
//! Only cipher suites with authentication, integrity and encryption are
//! spoken: 17 (RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128) and 3
//! (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128). Suite 0 ("no
//! authentication": a BMC accepting it takes any password) and every suite
//! without integrity are refused when configured, never proposed, and a BMC
//! that answers a proposal with weaker algorithms is refused: the result is
//! a `PowerError`, never a fallback. The BMC must prove it knows the
//! password (RAKP 2) before Anvil sends its own proof. Inbound packets on a
//! session must carry a valid HMAC and be encrypted, and replayed sequence
//! numbers are dropped. No error, log line or `Debug` output contains the
//! password.
//!
//! Not supported: BMCs configured with a separate BMC key (KG, "two-key
//! login"); IPMI v1.5 sessions (MD5/straight password), which are refused
//! like suite 0.
//!
//! # What IPMI can tell
//!
//! `inventory()` returns what Get Device ID (BMC firmware), Get System GUID
//! (system UUID), the FRU of device 0 (manufacturer, model, serial) and Get
//! Chassis Status (power state) give. IPMI over LAN has no standard way to
//! list CPUs, memory, NICs or disks: those fields stay empty rather than
//! failing the whole call. Fields the BMC lacks (no FRU, no GUID) are
//! `None`.
//!
//! Boot overrides (`set_boot`) are Set System Boot Options parameter 5.
//! The spec lets a BMC clear a "next boot only" override if no Chassis
//! Control restart follows within 60 s: set the boot device, then power on
//! or cycle promptly.
//!
//! # Tests
//!
//! The integration tests drive real OpenIPMI `ipmi_sim` BMCs (Debian
//! package `openipmi`) and `ipmitool` (package `ipmitool`) on 127.77.x.y
//! loopback addresses; see [`testing`]. They fail, naming the packages,
//! when those are missing, unless `ANVIL_SKIP_IPMI=1`.

mod commands;
mod crypto;
mod ipmitool;
mod native;
mod session;
pub mod testing;
mod wire;

#[cfg(test)]
mod fake_bmc;

pub use commands::{DeviceId, FruInfo};
pub use ipmitool::{IpmitoolDriver, IpmitoolOptions};
pub use native::{IpmiDriver, IpmiOptions};

use anvil_power::{BmcCredentials, PowerError};

/// The default RMCP port.
pub const DEFAULT_PORT: u16 = 623;

/// IPMI session privilege level requested by Anvil.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Privilege {
    /// Enough for Chassis Control and Set System Boot Options.
    Operator,
    #[default]
    Administrator,
}

impl Privilege {
    pub(crate) fn level(self) -> u8 {
        match self {
            Privilege::Operator => 3,
            Privilege::Administrator => 4,
        }
    }

    pub(crate) fn ipmitool_name(self) -> &'static str {
        match self {
            Privilege::Operator => "OPERATOR",
            Privilege::Administrator => "ADMINISTRATOR",
        }
    }
}

/// Host, port and the label used in errors ("host" for the default port).
pub(crate) fn target(creds: &BmcCredentials) -> Result<(String, u16, String), PowerError> {
    let host = creds.address.trim().to_string();
    if host.is_empty() {
        return Err(PowerError::Config("the BMC address is empty".into()));
    }
    let port = creds.port.unwrap_or(DEFAULT_PORT);
    if port == 0 {
        return Err(PowerError::Config("the BMC port must not be 0".into()));
    }
    let label = if port == DEFAULT_PORT {
        host.clone()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((host, port, label))
}

/// User name and password as the wire carries them. IPMI v2.0 limits user
/// names to 16 bytes and passwords to 20; errors say so without echoing
/// either secret.
pub(crate) fn login_bytes(creds: &BmcCredentials) -> Result<(Vec<u8>, crypto::Secret), PowerError> {
    let username = creds.username.clone().unwrap_or_default().into_bytes();
    if username.len() > 16 {
        return Err(PowerError::Config(format!(
            "IPMI user names are at most 16 bytes; this one has {}",
            username.len()
        )));
    }
    let password = zeroize::Zeroizing::new(
        creds
            .password
            .as_deref()
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
    );
    if password.len() > 20 {
        return Err(PowerError::Config(format!(
            "IPMI v2.0 passwords are at most 20 bytes; the configured one has {}",
            password.len()
        )));
    }
    Ok((username, password))
}

/// IPMI completion codes (IPMI v2.0 §5.2) as words.
pub(crate) fn completion_text(code: u8) -> &'static str {
    match code {
        0xC0 => "node busy",
        0xC1 => "invalid command",
        0xC2 => "command invalid for given LUN",
        0xC3 => "timeout while processing command",
        0xC4 => "out of space",
        0xC5 => "reservation cancelled or invalid",
        0xC6 => "request data truncated",
        0xC7 => "request data length invalid",
        0xC8 => "request data field length limit exceeded",
        0xC9 => "parameter out of range",
        0xCA => "cannot return number of requested data bytes",
        0xCB => "requested sensor, data, or record not present",
        0xCC => "invalid data field in request",
        0xCD => "command illegal for specified sensor or record type",
        0xCE => "command response could not be provided",
        0xCF => "cannot execute duplicated request",
        0xD0 => "SDR repository in update mode",
        0xD1 => "device in firmware update mode",
        0xD2 => "BMC initialization in progress",
        0xD3 => "destination unavailable",
        0xD4 => "insufficient privilege level",
        0xD5 => "not supported in present state",
        0xD6 => "parameter is illegal because sub-function is disabled or unavailable",
        0xFF => "unspecified error",
        0x80..=0xBE => "command-specific error",
        _ => "unknown completion code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str, pw: &str) -> BmcCredentials {
        BmcCredentials {
            address: "10.0.0.9".into(),
            port: None,
            username: Some(user.into()),
            password: Some(pw.into()),
            verify_tls: true,
            ca_pem: None,
        }
    }

    #[test]
    fn config_errors_never_echo_the_password() {
        let pw = "s3cret-but-much-too-long-for-ipmi";
        let e = IpmiDriver::new(&creds("admin", pw), IpmiOptions::default()).unwrap_err();
        let s = format!("{e} {e:?}");
        assert!(!s.contains(pw) && !s.contains("s3cret"), "{s}");
        let e = IpmitoolDriver::new(&creds("admin", pw), IpmitoolOptions::default()).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("s3cret"));
        let d = IpmiDriver::new(&creds("admin", "s3cret"), IpmiOptions::default()).unwrap();
        assert!(!format!("{d:?}").contains("s3cret"));
        let d = IpmitoolDriver::new(&creds("admin", "s3cret"), IpmitoolOptions::default()).unwrap();
        assert!(!format!("{d:?}").contains("s3cret"));
    }

    #[test]
    fn suite_zero_and_suites_without_integrity_are_refused_at_configuration() {
        for bad in [vec![0u8], vec![17, 0], vec![1], vec![3, 6], vec![]] {
            let opts = IpmiOptions {
                cipher_suites: bad.clone(),
                ..IpmiOptions::default()
            };
            let e = IpmiDriver::new(&creds("admin", "pw"), opts).unwrap_err();
            assert!(matches!(e, PowerError::Config(_)), "{bad:?}: {e}");
            if bad.contains(&0) {
                assert!(e.to_string().contains("cipher suite 0"), "{e}");
            }
        }
        let opts = IpmitoolOptions {
            cipher_suite: 0,
            ..IpmitoolOptions::default()
        };
        let e = IpmitoolDriver::new(&creds("admin", "pw"), opts).unwrap_err();
        assert!(e.to_string().contains("cipher suite 0"), "{e}");
    }

    #[test]
    fn labels_and_limits() {
        let mut c = creds("admin", "pw");
        assert_eq!(target(&c).unwrap().2, "10.0.0.9");
        c.port = Some(6230);
        assert_eq!(target(&c).unwrap().2, "10.0.0.9:6230");
        c.address = "fd00::1".into();
        assert_eq!(target(&c).unwrap().2, "[fd00::1]:6230");
        c.address = " ".into();
        assert!(target(&c).is_err());
        let long_user = creds("a-user-name-of-17", "pw");
        assert!(IpmiDriver::new(&long_user, IpmiOptions::default()).is_err());
        assert!(
            IpmiDriver::new(
                &creds("admin", "exactly-twenty-bytes"),
                IpmiOptions::default()
            )
            .is_ok()
        );
    }
}
