//! IPv6 Router Advertisements on boot networks.
//!
//! iPXE starts IPv6 autoconfiguration beside DHCPv4 and waits about 13 s
//! for it when no router answers, on every boot. An RA that says "no
//! managed or other configuration, I am not a default router" ends that
//! wait at once. We answer each Router Solicitation immediately and also
//! advertise periodically. The packet building and parsing here is pure;
//! `run` is the thin socket part.

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// `[ipv6_ra]` in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaConfig {
    /// Interfaces to advertise on (the boot networks' bridges). Empty: off.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Seconds between unsolicited advertisements.
    #[serde(default = "default_interval")]
    pub interval_secs: u32,
}

fn default_interval() -> u32 {
    4
}

impl Default for RaConfig {
    fn default() -> Self {
        RaConfig {
            interfaces: Vec::new(),
            interval_secs: default_interval(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaError {
    #[error("no network interface named {0:?}")]
    NoInterface(String),
    #[error("cannot open the ICMPv6 socket on {interface}")]
    Socket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

const ICMPV6_ROUTER_SOLICITATION: u8 = 133;
const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
const OPT_SOURCE_LINK_ADDR: u8 = 1;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// A Router Advertisement (RFC 4861 §4.2) announcing no IPv6 service: M and
/// O flags clear, router lifetime 0 (not a default router), no prefixes.
/// The checksum is left 0: the kernel fills it in for raw ICMPv6 sockets.
pub fn build_ra(source_mac: Option<[u8; 6]>) -> Vec<u8> {
    let mut p = vec![
        ICMPV6_ROUTER_ADVERTISEMENT,
        0, // code
        0,
        0,  // checksum
        64, // current hop limit suggested to hosts
        0,  // flags: M=0, O=0
        0,
        0, // router lifetime 0: not a default router
        0,
        0,
        0,
        0, // reachable time: unspecified
        0,
        0,
        0,
        0, // retrans timer: unspecified
    ];
    if let Some(mac) = source_mac {
        p.extend_from_slice(&[OPT_SOURCE_LINK_ADDR, 1]);
        p.extend_from_slice(&mac);
    }
    p
}

/// Whether an ICMPv6 message is a Router Solicitation.
pub fn is_router_solicitation(msg: &[u8]) -> bool {
    msg.len() >= 8 && msg[0] == ICMPV6_ROUTER_SOLICITATION && msg[1] == 0
}

fn interface_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

fn interface_mac(name: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
    let mut out = [0u8; 6];
    let mut parts = text.trim().split(':');
    for o in out.iter_mut() {
        *o = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    Some(out)
}

fn open(interface: &str) -> Result<(AsyncFd<Socket>, u32), RaError> {
    let idx =
        interface_index(interface).ok_or_else(|| RaError::NoInterface(interface.to_string()))?;
    let err = |source| RaError::Socket {
        interface: interface.to_string(),
        source,
    };
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(err)?;
    s.bind_device(Some(interface.as_bytes())).map_err(err)?;
    // RFC 4861: hosts drop Neighbor Discovery messages whose hop limit is not 255.
    s.set_multicast_hops_v6(255).map_err(err)?;
    s.set_unicast_hops_v6(255).map_err(err)?;
    s.set_multicast_if_v6(idx).map_err(err)?;
    s.join_multicast_v6(&ALL_ROUTERS, idx).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    // SAFETY: the socket2::Socket owns its descriptor and keeps it open and
    // unchanged until the AsyncFd (which owns the Socket) is dropped.
    let fd =
        unsafe { AsyncFd::register(s) }.map_err(|e| err(std::io::Error::other(e.to_string())))?;
    Ok((fd, idx))
}

/// Advertises on every configured interface until `shutdown` completes.
/// With no interfaces it returns at once.
pub async fn run(config: RaConfig, shutdown: impl Future<Output = ()>) -> Result<(), RaError> {
    let mut tasks = Vec::new();
    for name in &config.interfaces {
        let (fd, idx) = open(name)?;
        let ra = build_ra(interface_mac(name));
        let interval = Duration::from_secs(u64::from(config.interval_secs.max(1)));
        let name = name.clone();
        tracing::info!(interface = %name, "sending IPv6 router advertisements");
        tasks.push(tokio::spawn(advertise(fd, idx, ra, interval, name)));
    }
    if tasks.is_empty() {
        return Ok(());
    }
    shutdown.await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

async fn advertise(fd: AsyncFd<Socket>, idx: u32, ra: Vec<u8>, interval: Duration, name: String) {
    let dest = SocketAddrV6::new(ALL_NODES, 0, 0, idx).into();
    let mut tick = tokio::time::interval(interval);
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    loop {
        tokio::select! {
            _ = tick.tick() => send(&fd, &ra, &dest, &name).await,
            readable = fd.readable() => {
                let Ok(mut guard) = readable else { continue };
                match guard.try_io(|inner| inner.get_ref().recv_from(&mut buf)) {
                    Ok(Ok((n, _from))) => {
                        // SAFETY: recv_from initialised the first n bytes.
                        let msg: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
                        if is_router_solicitation(&msg) {
                            metrics::counter!("anvil_ra_solicitations_total").increment(1);
                            send(&fd, &ra, &dest, &name).await;
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(interface = %name, error = %e, "ICMPv6 receive failed"),
                    Err(_would_block) => {}
                }
            }
        }
    }
}

async fn send(fd: &AsyncFd<Socket>, ra: &[u8], dest: &socket2::SockAddr, name: &str) {
    match fd.get_ref().send_to(ra, dest) {
        Ok(_) => metrics::counter!("anvil_ra_sent_total").increment(1),
        Err(e) => {
            tracing::debug!(interface = %name, error = %e, "cannot send a router advertisement")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ra_says_no_router_and_no_managed_config() {
        let p = build_ra(Some([0x52, 0x54, 0, 1, 2, 3]));
        assert_eq!(p[0], 134);
        assert_eq!(p[5] & 0xc0, 0, "M and O flags clear");
        assert_eq!(&p[6..8], &[0, 0], "router lifetime 0");
        assert_eq!(&p[16..24], &[1, 1, 0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(build_ra(None).len(), 16);
    }

    #[test]
    fn solicitations() {
        assert!(is_router_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[133, 0]));
        assert!(!is_router_solicitation(&[]));
    }

    #[tokio::test]
    async fn unknown_interface_is_a_clear_error() {
        let cfg = RaConfig {
            interfaces: vec!["no-such-if0".into()],
            interval_secs: 4,
        };
        let e = run(cfg, async {}).await.unwrap_err();
        assert!(e.to_string().contains("no-such-if0"), "{e}");
    }
}
