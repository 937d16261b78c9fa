//! Listening for LLDP on raw AF_PACKET sockets (Linux; needs CAP_NET_RAW,
//! and CAP_NET_ADMIN to bring a down interface up).

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::lldp::{ETHERTYPE_LLDP, LLDP_MULTICAST, parse_frame};
use crate::{Error, LldpNeighbor};

/// How [`listen_lldp_with`] listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOptions {
    /// Longest time to listen (LLDP agents send every 30 s by default).
    pub window: Duration,
    /// Stop listening on an interface once it has heard one neighbour; when
    /// every interface has, return before the window ends.
    pub stop_after_first: bool,
    /// Bring interfaces that are administratively down up first (a ramdisk
    /// starts with everything down).
    pub bring_up: bool,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            window: Duration::from_secs(30),
            stop_after_first: true,
            bring_up: true,
        }
    }
}

/// Listen for LLDP neighbours on `interfaces` for up to `window`, stopping
/// early on each interface once a neighbour is heard. Returns one entry per
/// (interface, chassis ID, port ID), the latest frame winning. Frames that
/// do not parse are ignored. Fails if any interface cannot be listened on.
pub fn listen_lldp(interfaces: &[String], window: Duration) -> Result<Vec<LldpNeighbor>, Error> {
    listen_lldp_with(
        interfaces,
        &ListenOptions {
            window,
            ..ListenOptions::default()
        },
    )
}

/// [`listen_lldp`] with every option.
pub fn listen_lldp_with(
    interfaces: &[String],
    options: &ListenOptions,
) -> Result<Vec<LldpNeighbor>, Error> {
    let mut listeners: Vec<Listener> = Vec::with_capacity(interfaces.len());
    for name in interfaces {
        // One socket per interface, however often it is named.
        if !listeners.iter().any(|l| &l.name == name) {
            listeners.push(Listener::open(name, options.bring_up)?);
        }
    }
    let deadline = Instant::now() + options.window;
    let mut heard: HashMap<(usize, String, String), LldpNeighbor> = HashMap::new();
    let mut done = vec![false; listeners.len()];
    let mut buf = vec![0u8; 9216];
    loop {
        let now = Instant::now();
        if now >= deadline || done.iter().all(|d| *d) {
            break;
        }
        let mut fds: Vec<libc::pollfd> = listeners
            .iter()
            .zip(&done)
            .filter(|(_, d)| !**d)
            .map(|(l, _)| libc::pollfd {
                fd: l.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let timeout_ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: fds is a live, correctly sized array of pollfd.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Socket {
                op: "poll",
                interface: interfaces.join(","),
                source: e,
            });
        }
        for pfd in fds.iter().filter(|p| p.revents != 0) {
            let Some(i) = listeners.iter().position(|l| l.fd.as_raw_fd() == pfd.fd) else {
                continue;
            };
            while let Some(len) = listeners[i].recv(&mut buf)? {
                let Ok(mut n) = parse_frame(&buf[..len]) else {
                    continue;
                };
                n.interface = listeners[i].name.clone();
                heard.insert((i, n.chassis_id.clone(), n.port_id.clone()), n);
                if options.stop_after_first {
                    done[i] = true;
                }
            }
        }
    }
    let mut out: Vec<LldpNeighbor> = heard.into_values().collect();
    out.sort_by(|a, b| {
        (&a.interface, &a.chassis_id, &a.port_id).cmp(&(&b.interface, &b.chassis_id, &b.port_id))
    });
    Ok(out)
}

struct Listener {
    name: String,
    fd: OwnedFd,
}

impl Listener {
    fn open(name: &str, bring_up: bool) -> Result<Self, Error> {
        let cname = CString::new(name).map_err(|_| Error::BadInterface {
            interface: name.to_string(),
            reason: "contains NUL",
        })?;
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(Error::BadInterface {
                interface: name.to_string(),
                reason: "name empty or too long",
            });
        }
        // SAFETY: cname is a valid C string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(Error::BadInterface {
                interface: name.to_string(),
                reason: "no such interface",
            });
        }
        let err = |op: &'static str| Error::Socket {
            op,
            interface: name.to_string(),
            source: io::Error::last_os_error(),
        };
        let proto = ETHERTYPE_LLDP.to_be();
        // SAFETY: plain socket(2), checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(err("open AF_PACKET socket"));
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if bring_up {
            set_up(&fd, name)?;
        }
        // SAFETY: all-zero sockaddr_ll is valid; the fields set are in range.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: sll is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err("bind AF_PACKET socket"));
        }
        // Receive the LLDP multicast group without making the NIC promiscuous.
        // SAFETY: all-zero packet_mreq is valid.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = index as i32;
        mreq.mr_type = libc::PACKET_MR_MULTICAST as u16;
        mreq.mr_alen = 6;
        mreq.mr_address[..6].copy_from_slice(&LLDP_MULTICAST);
        // SAFETY: mreq is a valid packet_mreq of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mreq as *const libc::packet_mreq).cast(),
                std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err("join LLDP multicast group"));
        }
        Ok(Listener {
            name: name.to_string(),
            fd,
        })
    }

    /// One incoming frame, or `None` when nothing is waiting. Frames this
    /// host sent are skipped.
    fn recv(&self, buf: &mut [u8]) -> Result<Option<usize>, Error> {
        loop {
            // SAFETY: all-zero sockaddr_ll is valid as an out-parameter.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are live buffers of the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(Error::Socket {
                        op: "receive",
                        interface: self.name.clone(),
                        source: e,
                    }),
                };
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Ok(Some(n as usize));
        }
    }
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: all-zero ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    ifr
}

/// The interface's flags (IFF_UP, IFF_RUNNING, ...).
pub(crate) fn interface_flags(fd: &OwnedFd, name: &str) -> Result<libc::c_short, Error> {
    let mut ifr = ifreq_for(name);
    // SAFETY: ifr is a valid ifreq naming the interface.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) } < 0 {
        return Err(Error::Socket {
            op: "read interface flags",
            interface: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    Ok(unsafe { ifr.ifr_ifru.ifru_flags })
}

/// Set IFF_UP on an interface unless it already is up.
pub(crate) fn set_up(fd: &OwnedFd, name: &str) -> Result<(), Error> {
    let flags = interface_flags(fd, name)?;
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    let mut ifr = ifreq_for(name);
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: ifr is a valid ifreq naming the interface, flags member set.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) } < 0 {
        return Err(Error::Socket {
            op: "bring interface up",
            interface: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}
