//! The `[tftp]` section of Anvil's configuration.

use crate::TftpError;
use crate::proto::Limits;
use crate::proto::packet::{MAX_BLKSIZE, MIN_BLKSIZE};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the TFTP service. Every key has a default, unknown keys are
/// rejected, so the binary can embed it as `[tftp]`:
///
/// ```toml
/// [tftp]
/// enabled = true            # false: run() only waits for shutdown
/// listen = "0.0.0.0:69"
/// root = "/srv/tftp"        # optional extra directory, searched first
/// max_blksize = 1468        # 8..=65464
/// max_windowsize = 64       # 1..=65535
/// timeout_ms = 1000         # retransmission timeout unless the client asks
/// retries = 5               # retransmissions without progress, then ERROR
/// max_transfers = 128       # concurrent transfers; more get ERROR 0 "busy"
/// ack_polling = true        # poll briefly for fast clients' ACKs (see below)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TftpConfig {
    /// Whether the service runs at all.
    pub enabled: bool,
    /// Address of the listening socket. With `0.0.0.0` or `[::]` each reply
    /// comes from the address the request was sent to (IP_PKTINFO).
    pub listen: SocketAddr,
    /// An extra directory to serve files from. The service itself does not
    /// read this: whoever builds the [`FileSource`](crate::FileSource) does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Largest blksize granted (RFC 2348). The default, 1468, is the largest
    /// DATA packet that fits a 1500-byte Ethernet MTU over IPv4 without IP
    /// fragmentation; larger values need jumbo frames or fragmentation, and a
    /// lost fragment loses the whole block, while several firmware TFTP
    /// clients do not reassemble at all. Clients asking more get this value
    /// in the OACK, which RFC 2348 allows. (tftpd-hpa and atftpd grant up to
    /// 65464 unless told otherwise; dnsmasq clamps to the interface MTU.)
    pub max_blksize: u16,
    /// Largest windowsize granted (RFC 7440). A window is sent as one burst,
    /// so very large windows overrun receive buffers of small clients.
    pub max_windowsize: u16,
    /// Retransmission timeout in milliseconds when the client does not
    /// negotiate `timeout` (RFC 2349, whole seconds).
    pub timeout_ms: u64,
    /// Retransmissions of a window (or OACK) without progress before the
    /// transfer is abandoned with ERROR 0.
    pub retries: u32,
    /// Concurrent transfers; further requests get ERROR 0 "server busy".
    pub max_transfers: usize,
    /// After sending a window, poll the socket for the client's ACK for up
    /// to 100 µs before sleeping, for clients that answer that fast (each
    /// transfer learns its client's reply time; only while fewer transfers
    /// run than there are CPUs, never on one CPU). Saves a thread wake-up
    /// per window — tens of µs on an idle virtual CPU — at the cost of that
    /// much CPU time spent polling. `false` always sleeps.
    pub ack_polling: bool,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 69)),
            root: None,
            max_blksize: 1468,
            max_windowsize: 64,
            timeout_ms: 1000,
            retries: 5,
            max_transfers: 128,
            ack_polling: true,
        }
    }
}

/// Bound on `max_blksize * max_windowsize`: each transfer buffers a window
/// plus read-ahead of a few windows, so this bounds memory per transfer.
const MAX_WINDOW_BYTES: u64 = 16 << 20;

impl TftpConfig {
    /// Checks every range; [`run`](crate::run) calls it too.
    pub fn validate(&self) -> Result<(), TftpError> {
        let invalid = |key, reason: String| Err(TftpError::InvalidConfig { key, reason });
        if !(MIN_BLKSIZE..=MAX_BLKSIZE).contains(&self.max_blksize) {
            return invalid(
                "max_blksize",
                format!(
                    "must be {MIN_BLKSIZE}..={MAX_BLKSIZE}, not {}",
                    self.max_blksize
                ),
            );
        }
        if self.max_windowsize == 0 {
            return invalid("max_windowsize", "must be 1..=65535, not 0".into());
        }
        if u64::from(self.max_blksize) * u64::from(self.max_windowsize) > MAX_WINDOW_BYTES {
            return invalid(
                "max_windowsize",
                format!(
                    "times max_blksize must not exceed {MAX_WINDOW_BYTES} bytes ({} x {})",
                    self.max_windowsize, self.max_blksize
                ),
            );
        }
        if !(10..=255_000).contains(&self.timeout_ms) {
            return invalid(
                "timeout_ms",
                format!("must be 10..=255000, not {}", self.timeout_ms),
            );
        }
        if self.retries > 100 {
            return invalid("retries", format!("must be 0..=100, not {}", self.retries));
        }
        if !(1..=65_535).contains(&self.max_transfers) {
            return invalid(
                "max_transfers",
                format!("must be 1..=65535, not {}", self.max_transfers),
            );
        }
        Ok(())
    }

    /// The per-transfer limits for the protocol state machine.
    pub fn limits(&self) -> Limits {
        Limits {
            max_blksize: self.max_blksize,
            max_windowsize: self.max_windowsize,
            default_timeout: Duration::from_millis(self.timeout_ms),
            max_retries: self.retries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_defaults() {
        let cfg: TftpConfig = toml::from_str("").expect("parse");
        assert_eq!(cfg, TftpConfig::default());
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn documented_example_parses_and_round_trips() {
        let text = r#"
            enabled = true
            listen = "0.0.0.0:69"
            root = "/srv/tftp"
            max_blksize = 1468
            max_windowsize = 64
            timeout_ms = 1000
            retries = 5
            max_transfers = 128
            ack_polling = true
        "#;
        let cfg: TftpConfig = toml::from_str(text).expect("parse");
        assert_eq!(cfg.root.as_deref(), Some(std::path::Path::new("/srv/tftp")));
        let again: TftpConfig =
            toml::from_str(&toml::to_string(&cfg).expect("serialize")).expect("reparse");
        assert_eq!(again, cfg);
    }

    /// The `[tftp]` section of the shipped example configuration names only
    /// keys this struct knows, with their default values.
    #[test]
    fn the_example_configuration_section_is_the_default() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/examples/anvil.toml"
        );
        let text = std::fs::read_to_string(path).expect("read the example");
        let doc: toml::Table = toml::from_str(&text).expect("parse the example");
        let section = doc.get("tftp").cloned().expect("a [tftp] section");
        let cfg: TftpConfig = section.try_into().expect("a valid [tftp]");
        assert_eq!(cfg, TftpConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<TftpConfig>("blocksize = 1468").expect_err("unknown key");
        assert!(err.to_string().contains("blocksize"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let cases = [
            TftpConfig {
                max_blksize: 7,
                ..TftpConfig::default()
            },
            TftpConfig {
                max_windowsize: 0,
                ..TftpConfig::default()
            },
            TftpConfig {
                max_blksize: 65464,
                max_windowsize: 65535,
                ..TftpConfig::default()
            },
            TftpConfig {
                timeout_ms: 5,
                ..TftpConfig::default()
            },
            TftpConfig {
                retries: 1000,
                ..TftpConfig::default()
            },
            TftpConfig {
                max_transfers: 0,
                ..TftpConfig::default()
            },
        ];
        let keys = [
            "max_blksize",
            "max_windowsize",
            "max_windowsize",
            "timeout_ms",
            "retries",
            "max_transfers",
        ];
        for (cfg, key) in cases.iter().zip(keys) {
            match cfg.validate() {
                Err(TftpError::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }
}
