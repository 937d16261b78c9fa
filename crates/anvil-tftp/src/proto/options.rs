//! Option negotiation for read requests (RFC 2347 framework, RFC 2348
//! blksize, RFC 2349 timeout and tsize, RFC 7440 windowsize).
//!
//! Policy, chosen to keep every client transferring rather than failing:
//! - option names match case-insensitively; the OACK echoes the client's
//!   spelling (tftpd-hpa does the same, and some ROMs compare case-sensitively);
//! - the first occurrence of a duplicated option wins, later ones are ignored;
//! - unknown options and values outside the RFC ranges are left out of the
//!   OACK, so the transfer uses the default for them (RFC 2347 lets a server
//!   ignore options it does not accept);
//! - blksize and windowsize above the server's caps are lowered to the cap,
//!   which RFC 2348 and RFC 7440 allow; timeout is echoed unchanged (RFC 2349
//!   does not let the server change it);
//! - tsize is answered only when the size is known and the mode is octet: in
//!   netascii the bytes on the wire differ from the file size (tftpd-hpa also
//!   omits it there). It is also left out for an empty file: curl (7.88, in
//!   Debian 12) rejects `tsize 0` in an OACK as invalid and aborts, so it
//!   could not fetch an empty file from atftpd either; without it the
//!   transfer is an ordinary one-block transfer.

use super::packet::{DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE, Mode, TftpOption};
use std::time::Duration;

/// The server's limits and defaults for one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest blksize granted (clamped to 8..=65464).
    pub max_blksize: u16,
    /// Largest windowsize granted (at least 1).
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not negotiate one.
    pub default_timeout: Duration,
    /// Retransmissions of the same window (or OACK) before giving up.
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: 1468,
            max_windowsize: 64,
            default_timeout: Duration::from_secs(1),
            max_retries: 5,
        }
    }
}

/// The outcome of negotiation: the parameters of the transfer and the OACK
/// options to send (empty: no OACK, the transfer starts with DATA 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    /// The file size reported to the client, if it asked and it is known.
    pub tsize: Option<u64>,
    /// (name as the client spelled it, value) in the client's order.
    pub oack: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Blksize,
    Windowsize,
    Timeout,
    Tsize,
}

impl Known {
    fn parse(name: &str) -> Option<Known> {
        [
            ("blksize", Known::Blksize),
            ("windowsize", Known::Windowsize),
            ("timeout", Known::Timeout),
            ("tsize", Known::Tsize),
        ]
        .into_iter()
        .find_map(|(n, k)| name.eq_ignore_ascii_case(n).then_some(k))
    }
}

/// Negotiates the options of a read request against `limits`; `size` is the
/// file size if the source knows it.
pub fn negotiate(
    options: &[TftpOption<'_>],
    mode: Mode,
    size: Option<u64>,
    limits: &Limits,
) -> Negotiated {
    let mut out = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: limits.default_timeout,
        tsize: None,
        oack: Vec::new(),
    };
    let max_blksize = u64::from(limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE));
    let max_windowsize = u64::from(limits.max_windowsize.max(1));
    let mut seen = Vec::with_capacity(4);
    for opt in options {
        let Some(kind) = Known::parse(opt.name) else {
            continue;
        };
        if seen.contains(&kind) {
            continue;
        }
        seen.push(kind);
        // Leading zeros and huge numbers parse (u64 covers 20 digits); a
        // value that does not parse is ignored like an out-of-range one.
        let Ok(value) = opt.value.trim().parse::<u64>() else {
            continue;
        };
        let granted = match kind {
            Known::Blksize if value >= u64::from(MIN_BLKSIZE) => {
                let v = value.min(max_blksize);
                out.blksize = u16::try_from(v).unwrap_or(MAX_BLKSIZE);
                v
            }
            Known::Windowsize if (1..=65535).contains(&value) => {
                let v = value.min(max_windowsize);
                out.windowsize = u16::try_from(v).unwrap_or(1);
                v
            }
            Known::Timeout if (1..=255).contains(&value) => {
                out.timeout = Duration::from_secs(value);
                value
            }
            Known::Tsize if mode == Mode::Octet && size.is_some_and(|s| s > 0) => {
                let v = size.unwrap_or_default();
                out.tsize = Some(v);
                v
            }
            _ => continue,
        };
        out.oack.push((opt.name.to_string(), granted.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<TftpOption<'a>> {
        pairs
            .iter()
            .map(|&(name, value)| TftpOption { name, value })
            .collect()
    }

    fn oack(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_options_means_rfc1350_defaults_and_no_oack() {
        let n = negotiate(&[], Mode::Octet, Some(10), &Limits::default());
        assert_eq!(n.blksize, 512);
        assert_eq!(n.windowsize, 1);
        assert_eq!(n.timeout, Duration::from_secs(1));
        assert!(n.oack.is_empty());
    }

    #[test]
    fn typical_uefi_request_is_granted() {
        let n = negotiate(
            &opts(&[("BLKSIZE", "1468"), ("tsize", "0"), ("windowsize", "16")]),
            Mode::Octet,
            Some(850_528),
            &Limits::default(),
        );
        assert_eq!(
            (n.blksize, n.windowsize, n.tsize),
            (1468, 16, Some(850_528))
        );
        assert_eq!(
            n.oack,
            oack(&[
                ("BLKSIZE", "1468"),
                ("tsize", "850528"),
                ("windowsize", "16")
            ])
        );
    }

    #[test]
    fn values_above_the_caps_are_lowered() {
        let limits = Limits {
            max_blksize: 1468,
            max_windowsize: 8,
            ..Limits::default()
        };
        let n = negotiate(
            &opts(&[("blksize", "65464"), ("windowsize", "65535")]),
            Mode::Octet,
            None,
            &limits,
        );
        assert_eq!((n.blksize, n.windowsize), (1468, 8));
        assert_eq!(n.oack, oack(&[("blksize", "1468"), ("windowsize", "8")]));
        // Beyond u16 and beyond u64 alike.
        let n = negotiate(&opts(&[("blksize", "70000")]), Mode::Octet, None, &limits);
        assert_eq!(n.blksize, 1468);
        let n = negotiate(
            &opts(&[("blksize", "99999999999999999999999")]),
            Mode::Octet,
            None,
            &limits,
        );
        assert_eq!(n.blksize, 512);
    }

    #[test]
    fn invalid_values_and_unknown_options_are_ignored() {
        let n = negotiate(
            &opts(&[
                ("blksize", "7"),
                ("windowsize", "0"),
                ("timeout", "256"),
                ("tsize", "x"),
                ("multicast", ""),
            ]),
            Mode::Octet,
            Some(5),
            &Limits::default(),
        );
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        assert_eq!(n.timeout, Limits::default().default_timeout);
        assert!(n.oack.is_empty());
    }

    #[test]
    fn first_duplicate_wins() {
        let n = negotiate(
            &opts(&[("blksize", "1024"), ("BlkSize", "8"), ("blksize", "9000")]),
            Mode::Octet,
            None,
            &Limits::default(),
        );
        assert_eq!(n.blksize, 1024);
        assert_eq!(n.oack, oack(&[("blksize", "1024")]));
    }

    #[test]
    fn timeout_is_echoed_and_tsize_needs_octet_and_a_size() {
        let n = negotiate(
            &opts(&[("timeout", "3"), ("tsize", "0")]),
            Mode::Netascii,
            Some(100),
            &Limits::default(),
        );
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(n.oack, oack(&[("timeout", "3")]));
        for size in [None, Some(0)] {
            let n = negotiate(
                &opts(&[("tsize", "0")]),
                Mode::Octet,
                size,
                &Limits::default(),
            );
            assert!(n.oack.is_empty(), "{size:?}");
        }
    }
}
