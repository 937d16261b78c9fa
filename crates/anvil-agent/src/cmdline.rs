//! The kernel command line Anvil's iPXE script gives the ramdisk:
//! `anvil.url=<server_url> anvil.mac=<mac> anvil.token=<per-boot token>
//! BOOTIF=01-<mac-dashed>` among other arguments. Pure parsing.

use std::fmt;

/// What the agent needs from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// Anvil's base URL, without a trailing slash.
    pub url: String,
    /// The MAC of the interface the machine booted from, lower case with
    /// colons.
    pub mac: String,
    /// The per-boot token (`None` on a discovery boot, which has none).
    pub token: Option<String>,
    /// Seconds to listen for LLDP, if Anvil overrides the default.
    pub lldp_window_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineError {
    MissingUrl,
    BadUrl(String),
    MissingMac,
    BadMac(String),
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::MissingUrl => write!(f, "no anvil.url= on the kernel command line"),
            CmdlineError::BadUrl(u) => {
                write!(f, "anvil.url={u:?} is not an http:// or https:// URL")
            }
            CmdlineError::MissingMac => write!(
                f,
                "neither anvil.mac= nor BOOTIF= on the kernel command line"
            ),
            CmdlineError::BadMac(m) => write!(f, "{m:?} is not a MAC address"),
        }
    }
}

impl std::error::Error for CmdlineError {}

/// `52:54:00:AB:cd:01`, `52-54-00-ab-cd-01` → `52:54:00:ab:cd:01`.
pub fn normalise_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

/// Parses `/proc/cmdline`. `anvil.mac=` wins over `BOOTIF=` (pxelinux
/// style, `01-` + the dashed MAC); the last occurrence of an argument wins,
/// as for the kernel's own parameters.
pub fn parse(cmdline: &str) -> Result<BootParams, CmdlineError> {
    let mut url = None;
    let mut mac = None;
    let mut bootif = None;
    let mut token = None;
    let mut lldp = None;
    for arg in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = arg.split_once('=') else {
            continue;
        };
        match key {
            "anvil.url" => url = Some(value),
            "anvil.mac" => mac = Some(value),
            "anvil.token" => token = Some(value),
            "anvil.lldp_window" => lldp = value.parse().ok(),
            "BOOTIF" => bootif = Some(value),
            _ => {}
        }
    }
    let url = url.ok_or(CmdlineError::MissingUrl)?;
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    if host.is_none_or(|h| h.trim_end_matches('/').is_empty()) {
        return Err(CmdlineError::BadUrl(url.to_string()));
    }
    let mac = match (mac, bootif) {
        (Some(m), _) => normalise_mac(m).ok_or_else(|| CmdlineError::BadMac(m.to_string()))?,
        (None, Some(b)) => {
            // `01-` is the ARP hardware type (Ethernet).
            let dashed = b.strip_prefix("01-").unwrap_or(b);
            normalise_mac(dashed).ok_or_else(|| CmdlineError::BadMac(b.to_string()))?
        }
        (None, None) => return Err(CmdlineError::MissingMac),
    };
    Ok(BootParams {
        url: url.trim_end_matches('/').to_string(),
        mac,
        token: token.filter(|t| !t.is_empty()).map(str::to_string),
        lldp_window_secs: lldp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_ipxe_script_passes() {
        let p = parse(
            "BOOT_IMAGE=vmlinuz initrd=initrd.img anvil.url=http://10.77.0.1:8080/ \
             anvil.mac=52:54:00:AB:cd:01 anvil.token=abc.DEF_123 BOOTIF=01-52-54-00-ab-cd-01 \
             console=ttyS0,115200\n",
        )
        .unwrap();
        assert_eq!(
            p,
            BootParams {
                url: "http://10.77.0.1:8080".into(),
                mac: "52:54:00:ab:cd:01".into(),
                token: Some("abc.DEF_123".into()),
                lldp_window_secs: None,
            }
        );
    }

    #[test]
    fn bootif_when_there_is_no_anvil_mac() {
        let p = parse(
            "anvil.url=https://anvil.example BOOTIF=01-52-54-00-AB-CD-02 anvil.lldp_window=5",
        )
        .unwrap();
        assert_eq!(p.mac, "52:54:00:ab:cd:02");
        assert_eq!(p.token, None);
        assert_eq!(p.lldp_window_secs, Some(5));
    }

    #[test]
    fn clear_errors_for_what_is_missing_or_wrong() {
        assert_eq!(
            parse("quiet anvil.mac=52:54:00:00:00:01"),
            Err(CmdlineError::MissingUrl)
        );
        assert_eq!(
            parse("anvil.url=ftp://x anvil.mac=52:54:00:00:00:01"),
            Err(CmdlineError::BadUrl("ftp://x".into()))
        );
        assert_eq!(parse("anvil.url=http://x"), Err(CmdlineError::MissingMac));
        assert_eq!(
            parse("anvil.url=http://x anvil.mac=52:54:00:00:01"),
            Err(CmdlineError::BadMac("52:54:00:00:01".into()))
        );
        assert_eq!(
            parse("anvil.url=http://x BOOTIF=01-zz-54-00-00-00-01"),
            Err(CmdlineError::BadMac("01-zz-54-00-00-00-01".into()))
        );
        assert!(
            CmdlineError::MissingMac.to_string().contains("BOOTIF"),
            "the message names what to add"
        );
    }

    #[test]
    fn empty_token_is_no_token() {
        let p = parse("anvil.url=http://x anvil.mac=52:54:00:00:00:01 anvil.token=").unwrap();
        assert_eq!(p.token, None);
    }
}
