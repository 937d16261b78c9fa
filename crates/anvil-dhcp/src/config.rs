//! DHCP configuration, embedded in the binary's TOML as `[dhcp]` with one
//! `[[dhcp.network]]` table per boot network.
//!
//! Nothing is served until a network is configured: a provisioning server
//! that hands out addresses on a network nobody told it about can take down
//! an office LAN, so the safe default is silence.

use crate::DhcpError;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};

/// `[dhcp]`: the service as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpConfig {
    /// Master switch. Even when true, nothing binds until a network exists.
    pub enabled: bool,
    /// Sockets for DHCP (client-to-server traffic and relays). IPv4 only.
    pub listen: Vec<SocketAddr>,
    /// The PXE boot-server port (4011) for proxyDHCP; bound only when a
    /// network has `mode = "proxy"`.
    pub proxy_listen: SocketAddr,
    /// When not empty, one socket per interface and listen address, bound
    /// with SO_BINDTODEVICE, so DHCP never answers on other interfaces.
    pub interfaces: Vec<String>,
    /// Group commit: at most this many lease changes per store commit.
    pub commit_batch_max: usize,
    /// Group commit: the longest an ACK waits for its batch to fill before
    /// the batch is committed anyway, in milliseconds.
    pub commit_delay_max_ms: u64,
    /// How long an offered address stays held for the client it was offered
    /// to, so that no other client is offered it meanwhile.
    pub offer_hold_secs: u32,
    /// How long a DECLINEd address is kept out of the pool.
    pub decline_quarantine_secs: u32,
    /// Per-message deadline: an answer that is not on the wire this long after
    /// its request arrived (because the store is slow) is dropped; clients
    /// retransmit anyway.
    pub reply_timeout_ms: u64,
    /// How often expired leases are reclaimed.
    pub sweep_interval_secs: u32,
    /// `[[dhcp.network]]`: the boot networks.
    #[serde(rename = "network", skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<BootNetwork>,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            enabled: true,
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 67))],
            proxy_listen: SocketAddr::from(([0, 0, 0, 0], 4011)),
            interfaces: Vec::new(),
            commit_batch_max: 256,
            commit_delay_max_ms: 0,
            offer_hold_secs: 30,
            decline_quarantine_secs: 3600,
            reply_timeout_ms: 2000,
            sweep_interval_secs: 15,
            networks: Vec::new(),
        }
    }
}

/// Whether Anvil is the DHCP server of a network or only adds boot
/// information next to the site's own DHCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Anvil assigns addresses and boot information.
    #[default]
    Full,
    /// proxyDHCP: only PXE/HTTP-boot clients are answered, with boot
    /// information and no address.
    Proxy,
}

/// `[[dhcp.network]]`: one boot network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootNetwork {
    /// Unique name, used in leases, logs and metrics.
    pub name: String,
    /// The network, e.g. `10.0.0.0/24`.
    pub subnet: Ipv4Net,
    #[serde(default)]
    pub mode: NetworkMode,
    /// Directly attached: the local interface the network is on. Without it a
    /// directly attached network is recognised by the local address a request
    /// arrived on (`server_address` must then be an address of this host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Reachable only through DHCP relays whose giaddr is inside `subnet`.
    #[serde(default)]
    pub relay: bool,
    /// First address of the dynamic pool for machines without a reservation.
    /// Without a range only reserved machines get addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(default = "default_lease_time")]
    pub lease_time_secs: u32,
    /// Anvil's address on this network: siaddr (next-server), the server
    /// identifier, and the host in boot URLs.
    pub server_address: Ipv4Addr,
    #[serde(default)]
    pub boot: BootFiles,
}

fn default_lease_time() -> u32 {
    3600
}

/// `[dhcp.network.boot]`: which iPXE build each kind of client is given.
/// File names are relative to the TFTP root; the same names are served over
/// HTTP under `/boot/` for UEFI HTTP boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootFiles {
    /// Legacy BIOS PXE (arch 0): chainloads iPXE over TFTP.
    pub bios: String,
    /// x86-64 UEFI (arch 7/9, and 16 for HTTP boot). `snponly.efi` uses the
    /// firmware's network driver instead of iPXE's own.
    pub uefi_x64: String,
    /// arm64 UEFI (arch 11, and 19 for HTTP boot).
    pub arm64: String,
    /// Port of Anvil's HTTP server (iPXE scripts, HTTP boot files).
    pub http_port: u16,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: "undionly.kpxe".into(),
            uefi_x64: "ipxe.efi".into(),
            arm64: "ipxe-arm64.efi".into(),
            http_port: 8080,
        }
    }
}

impl DhcpConfig {
    /// Whether the service has anything to do (and so binds sockets).
    pub fn serves(&self) -> bool {
        self.enabled && !self.networks.is_empty()
    }

    /// Checks everything a typo could get wrong; each message names the key.
    pub fn validate(&self) -> Result<(), DhcpError> {
        let bad = |m: String| Err(DhcpError::Config(m));
        for (i, l) in self.listen.iter().enumerate() {
            if !l.is_ipv4() {
                return bad(format!(
                    "dhcp.listen[{i}]: {l} is not IPv4 (this is DHCPv4)"
                ));
            }
        }
        if !self.proxy_listen.is_ipv4() {
            return bad(format!(
                "dhcp.proxy_listen: {} is not IPv4",
                self.proxy_listen
            ));
        }
        if self.enabled && !self.networks.is_empty() && self.listen.is_empty() {
            return bad("dhcp.listen: at least one address is needed".into());
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains('/') {
                return bad(format!(
                    "dhcp.interfaces[{i}]: {name:?} is not an interface name"
                ));
            }
        }
        if self.commit_batch_max == 0 || self.commit_batch_max > 100_000 {
            return bad("dhcp.commit_batch_max must be between 1 and 100000".into());
        }
        if self.commit_delay_max_ms > 1000 {
            return bad("dhcp.commit_delay_max_ms must be at most 1000".into());
        }
        if self.offer_hold_secs == 0 || self.offer_hold_secs > 600 {
            return bad("dhcp.offer_hold_secs must be between 1 and 600".into());
        }
        if self.decline_quarantine_secs == 0 {
            return bad("dhcp.decline_quarantine_secs must be at least 1".into());
        }
        if self.reply_timeout_ms < 10 || self.reply_timeout_ms > 60_000 {
            return bad("dhcp.reply_timeout_ms must be between 10 and 60000".into());
        }
        if self.sweep_interval_secs == 0 {
            return bad("dhcp.sweep_interval_secs must be at least 1".into());
        }

        let mut names = HashSet::new();
        let mut ifaces = HashSet::new();
        for (i, n) in self.networks.iter().enumerate() {
            let key = |field: &str| format!("dhcp.network[{i}] ({:?}).{field}", n.name);
            if n.name.trim().is_empty() {
                return bad(format!("dhcp.network[{i}].name must not be empty"));
            }
            if !names.insert(n.name.as_str()) {
                return bad(format!("{}: duplicate network name", key("name")));
            }
            let net = n.subnet.trunc();
            if net != n.subnet {
                return bad(format!(
                    "{}: {} has host bits set; did you mean {net}?",
                    key("subnet"),
                    n.subnet
                ));
            }
            if n.subnet.prefix_len() > 30 {
                return bad(format!(
                    "{}: {} is too small for DHCP (at most /30)",
                    key("subnet"),
                    n.subnet
                ));
            }
            for (j, m) in self.networks.iter().enumerate().take(i) {
                if m.subnet.contains(&n.subnet.network()) || n.subnet.contains(&m.subnet.network())
                {
                    return bad(format!(
                        "{}: {} overlaps dhcp.network[{j}] ({:?}) {}",
                        key("subnet"),
                        n.subnet,
                        m.name,
                        m.subnet
                    ));
                }
            }
            let usable = |a: Ipv4Addr| {
                n.subnet.contains(&a) && a != n.subnet.network() && a != n.subnet.broadcast()
            };
            if n.relay && n.interface.is_some() {
                return bad(format!(
                    "{}: a relay network is reached through relays, not on a local interface",
                    key("interface")
                ));
            }
            if let Some(ifn) = &n.interface {
                if ifn.is_empty() || ifn.len() > 15 || ifn.contains('/') {
                    return bad(format!(
                        "{}: {ifn:?} is not an interface name",
                        key("interface")
                    ));
                }
                if !ifaces.insert(ifn.as_str()) {
                    return bad(format!(
                        "{}: {ifn} is already used by another network (one network per interface)",
                        key("interface")
                    ));
                }
                if !self.interfaces.is_empty() && !self.interfaces.contains(ifn) {
                    return bad(format!(
                        "{}: {ifn} is not in dhcp.interfaces, so nothing would be received on it",
                        key("interface")
                    ));
                }
            }
            if !n.relay && !usable(n.server_address) {
                return bad(format!(
                    "{}: {} must be a host address inside {} on a directly attached network",
                    key("server_address"),
                    n.server_address,
                    n.subnet
                ));
            }
            if n.server_address.is_unspecified() || n.server_address.is_broadcast() {
                return bad(format!(
                    "{}: {} is not a host address",
                    key("server_address"),
                    n.server_address
                ));
            }
            if let Some(r) = n.router
                && !usable(r)
            {
                return bad(format!(
                    "{}: {r} must be a host address inside {}",
                    key("router"),
                    n.subnet
                ));
            }
            match (n.range_start, n.range_end) {
                (None, None) => {}
                (Some(_), None) => {
                    return bad(format!(
                        "{}: range_start is set, so set it too",
                        key("range_end")
                    ));
                }
                (None, Some(_)) => {
                    return bad(format!(
                        "{}: range_end is set, so set it too",
                        key("range_start")
                    ));
                }
                (Some(s), Some(e)) => {
                    if n.mode == NetworkMode::Proxy {
                        return bad(format!(
                            "{}: a proxy network assigns no addresses, so it has no range",
                            key("range_start")
                        ));
                    }
                    if !usable(s) {
                        return bad(format!(
                            "{}: {s} must be a host address inside {}",
                            key("range_start"),
                            n.subnet
                        ));
                    }
                    if !usable(e) {
                        return bad(format!(
                            "{}: {e} must be a host address inside {}",
                            key("range_end"),
                            n.subnet
                        ));
                    }
                    if u32::from(s) > u32::from(e) {
                        return bad(format!(
                            "{}: {e} is before range_start {s}",
                            key("range_end")
                        ));
                    }
                    let inside =
                        |a: Ipv4Addr| (u32::from(s)..=u32::from(e)).contains(&u32::from(a));
                    if inside(n.server_address) {
                        return bad(format!(
                            "{}: {} is inside the dynamic range {s}-{e}",
                            key("server_address"),
                            n.server_address
                        ));
                    }
                    if let Some(r) = n.router
                        && inside(r)
                    {
                        return bad(format!(
                            "{}: {r} is inside the dynamic range {s}-{e}",
                            key("router")
                        ));
                    }
                }
            }
            if let Some(mtu) = n.mtu
                && mtu < 576
            {
                return bad(format!(
                    "{}: {mtu} is below 576, the minimum for DHCP",
                    key("mtu")
                ));
            }
            if n.lease_time_secs < 60 {
                return bad(format!("{}: must be at least 60", key("lease_time_secs")));
            }
            if let Some(d) = &n.domain
                && d.parse::<anvil_types::Hostname>().is_err()
            {
                return bad(format!("{}: {d:?} is not a domain name", key("domain")));
            }
            for (field, file) in [
                ("boot.bios", &n.boot.bios),
                ("boot.uefi_x64", &n.boot.uefi_x64),
                ("boot.arm64", &n.boot.arm64),
            ] {
                // The name travels in the 128-byte `file` field, and as a URL
                // path segment for HTTP boot, so keep it a plain file name.
                let ok = !file.is_empty()
                    && file.len() <= 64
                    && file
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
                    && !file.starts_with('/')
                    && !file.contains("..");
                if !ok {
                    return bad(format!(
                        "{}: {file:?} must be a relative file name of letters, digits, '.', '_', '-', '/' (at most 64)",
                        key(field)
                    ));
                }
            }
            if n.boot.http_port == 0 {
                return bad(format!("{}: must not be 0", key("boot.http_port")));
            }
        }
        Ok(())
    }
}
