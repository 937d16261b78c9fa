//! The socket calls std and tokio do not offer: receiving a request together
//! with the local address it was sent to (IP_PKTINFO / IPV6_PKTINFO),
//! sending a window of datagrams in one `sendmmsg(2)`, and a transfer's
//! pair of sockets (one connected to the client, one for everyone else).
//!
//! Both run inside tokio's readiness machinery (`UdpSocket::async_io`), so
//! the sockets stay ordinary non-blocking tokio sockets.

use bytes::Bytes;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Asks the kernel to report each datagram's destination address, so that a
/// server listening on `0.0.0.0` or `[::]` can answer from the address the
/// client used (a multi-homed boot server must not answer from another one:
/// clients match replies by address).
pub(crate) fn enable_pktinfo(sock: &std::net::UdpSocket) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    match sock.local_addr()? {
        SocketAddr::V4(_) => setsockopt_on(fd, libc::IPPROTO_IP, libc::IP_PKTINFO),
        // Linux also reports IPv4 requests on a dual-stack socket this way,
        // as v4-mapped addresses.
        SocketAddr::V6(_) => setsockopt_on(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
    }
}

fn setsockopt_on(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A transfer's sockets (non-blocking, not yet registered with tokio).
pub(crate) struct TransferSockets {
    /// The transfer's TID. Connected to the client when `strangers` is
    /// there: the kernel then keeps the route, so a send skips the route
    /// lookup an unconnected socket pays for every datagram (measured at
    /// about a tenth of a lock-step block's time on loopback), and only the
    /// client's datagrams arrive here.
    pub main: std::net::UdpSocket,
    /// Bound to the same address and port, not connected: every datagram
    /// to the TID from anyone but the client comes here, to be answered
    /// with ERROR 5 as RFC 1350 asks. `None` when the pair could not be
    /// set up; `main` is then an ordinary unconnected socket that gets
    /// everyone's datagrams, as before.
    pub strangers: Option<std::net::UdpSocket>,
}

/// Binds a transfer's sockets on `local` (port 0: a new TID) for `peer`.
///
/// The main socket picks its port without `SO_REUSEADDR`, so the kernel
/// never hands out a port another socket holds, reused or not; it sets the
/// option only afterwards, which lets the strangers' socket (with the
/// option) bind the same address and port. A datagram goes to the socket
/// that matches it best: the client's to the connected one, the rest to
/// the other.
pub(crate) fn transfer_sockets(local: SocketAddr, peer: SocketAddr) -> io::Result<TransferSockets> {
    let main = std::net::UdpSocket::bind(local)?;
    main.set_nonblocking(true)?;
    match pair_up(&main, peer) {
        Ok(strangers) => Ok(TransferSockets {
            main,
            strangers: Some(strangers),
        }),
        Err(e) => {
            tracing::debug!(%local, %peer, error = %e,
                            "TFTP transfer socket stays unconnected");
            Ok(TransferSockets {
                main,
                strangers: None,
            })
        }
    }
}

/// Binds the strangers' socket beside `main`, then connects `main`.
fn pair_up(main: &std::net::UdpSocket, peer: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, SockRef, Socket, Type};
    let tid = main.local_addr()?;
    SockRef::from(main).set_reuse_address(true)?;
    let strangers = Socket::new(Domain::for_address(tid), Type::DGRAM, None)?;
    strangers.set_reuse_address(true)?;
    strangers.set_nonblocking(true)?;
    strangers.bind(&tid.into())?;
    main.connect(peer)?;
    Ok(strangers.into())
}

/// One datagram received on the listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub len: usize,
    pub peer: SocketAddr,
    /// The address the datagram was sent to, as a bindable address with
    /// port 0 (and the interface as scope for IPv6 link-local), when the
    /// kernel reported a usable one.
    pub local: Option<SocketAddr>,
    /// The datagram was larger than the buffer.
    pub truncated: bool,
}

/// Receives one datagram with its destination address.
pub(crate) async fn recv_with_local(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let fd = sock.as_raw_fd();
    sock.async_io(Interest::READABLE, || recvmsg_pktinfo(fd, buf))
        .await
}

fn recvmsg_pktinfo(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY (all blocks below): every pointer handed to the kernel points
    // into a live local of the stated length; sockaddr_storage and the u64
    // control buffer are suitably aligned for the structures read from them,
    // and cmsg payloads are copied out with read_unaligned.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control) as _;
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let peer = sockaddr_to_std(&name)?;
    let mut local = None;
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        let hdr = unsafe { &*cmsg };
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        if hdr.cmsg_level == libc::IPPROTO_IP && hdr.cmsg_type == libc::IP_PKTINFO {
            let info: libc::in_pktinfo =
                unsafe { data.cast::<libc::in_pktinfo>().read_unaligned() };
            let dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
            // A broadcast or multicast destination cannot be bound; the
            // kernel's choice of local address for the reply can.
            let ip = if dst.is_broadcast() || dst.is_multicast() || dst.is_unspecified() {
                Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr))
            } else {
                dst
            };
            local = Some(SocketAddr::V4(SocketAddrV4::new(ip, 0)));
        } else if hdr.cmsg_level == libc::IPPROTO_IPV6 && hdr.cmsg_type == libc::IPV6_PKTINFO {
            let info: libc::in6_pktinfo =
                unsafe { data.cast::<libc::in6_pktinfo>().read_unaligned() };
            let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
            local = if ip.is_multicast() || ip.is_unspecified() {
                None
            } else if let Some(v4) = ip.to_ipv4_mapped() {
                Some(SocketAddr::V4(SocketAddrV4::new(v4, 0)))
            } else {
                let scope = if ip.is_unicast_link_local() {
                    info.ipi6_ifindex
                } else {
                    0
                };
                Some(SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, scope)))
            };
        }
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received {
        len: usize::try_from(n).unwrap_or(0),
        peer: canonical(peer),
        local,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    })
}

/// Receives one datagram if one is queued, without waiting and without
/// asking tokio: `WouldBlock` when the queue is empty.
///
/// tokio's own `try_recv_from` answers from its readiness cache, which only
/// the reactor refreshes — and the reactor does not run while the service
/// thread polls (see `AckSpin`) — so it would report `WouldBlock` for a
/// datagram that is already there. Reading the socket behind tokio's back is
/// safe: a later `recv_from` through tokio that finds the queue empty just
/// clears the stale readiness and waits.
pub(crate) fn recv_from_now(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    // SAFETY: `buf` and `name` are live locals of the lengths passed; the
    // kernel writes at most that much into each.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut name_len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let n = unsafe {
        libc::recvfrom(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut name as *mut libc::sockaddr_storage).cast(),
            &mut name_len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((usize::try_from(n).unwrap_or(0), sockaddr_to_std(&name)?))
}

/// IPv4 clients of a dual-stack listener show up as v4-mapped IPv6
/// addresses; replies go out over IPv4 sockets, so use the IPv4 form.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: libc::sockaddr_in = unsafe {
                (ss as *const libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .read()
            };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 = unsafe {
                (ss as *const libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .read()
            };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        family => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected address family {family}"),
        )),
    }
}

fn std_to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; the writes below stay
    // within it because sockaddr_in and sockaddr_in6 are smaller.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            unsafe {
                (&mut ss as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            unsafe {
                (&mut ss as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Most datagrams handed to one `sendmmsg` call (the kernel caps it at
/// 1024; a window rarely exceeds this).
const BATCH: usize = 64;

/// `UDP_SEGMENT` from `<linux/udp.h>` (not exported by libc for glibc).
const UDP_SEGMENT: libc::c_int = 103;
/// Most segments in one GSO send (the kernel's UDP_MAX_SEGMENTS is 64 on
/// older kernels) and the most bytes (one IP datagram's worth).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

/// Sends a transfer's datagrams.
///
/// A window of DATA packets all have the same length but the last, which is
/// exactly what UDP generic segmentation offload (GSO, `UDP_SEGMENT`)
/// sends in one `sendmsg`: one trip through the stack for the whole window
/// instead of one per packet, split into ordinary datagrams at the NIC or
/// late in the stack. The wire sees the same datagrams either way. When the
/// kernel or the route refuses GSO (old kernel, no checksum offload, segment
/// larger than the path MTU), the sender falls back to `sendmmsg` for good.
pub(crate) struct Sender {
    gso: bool,
    /// The socket is connected to the peer: datagrams go without an
    /// address, so that the kernel uses the connection's route.
    connected: bool,
}

impl Sender {
    /// A sender for a socket connected to the peer (`connected`) or not.
    pub(crate) fn new(connected: bool) -> Sender {
        Sender {
            gso: true,
            connected,
        }
    }

    /// Sends every datagram in `packets` to `peer`, in order. A full socket
    /// buffer waits for writability rather than dropping the rest.
    pub(crate) async fn send_all(
        &mut self,
        sock: &UdpSocket,
        peer: SocketAddr,
        packets: &[Bytes],
    ) -> io::Result<()> {
        let fd = sock.as_raw_fd();
        let (addr, addr_len) = match self.connected {
            // No address: sendmsg would look the route up again for one.
            true => (std_to_sockaddr(peer).0, 0),
            false => std_to_sockaddr(peer),
        };
        let mut sent = 0;
        while let Some(rest) = packets.get(sent..).filter(|r| !r.is_empty()) {
            let group = if self.gso { gso_group(rest) } else { 1 };
            if group > 1 {
                let segments = rest.get(..group).unwrap_or_default();
                match sock
                    .async_io(Interest::WRITABLE, || {
                        sendmsg_gso(fd, &addr, addr_len, segments)
                    })
                    .await
                {
                    Ok(()) => sent += group,
                    Err(e) if gso_unsupported(&e) => self.gso = false,
                    Err(e) => return Err(e),
                }
            } else {
                sent += sock
                    .async_io(Interest::WRITABLE, || {
                        sendmmsg_to(fd, &addr, addr_len, rest)
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

/// How many leading packets can go in one GSO send: all of the first
/// packet's length, optionally followed by one shorter packet.
fn gso_group(packets: &[Bytes]) -> usize {
    let Some(seg) = packets.first().map(Bytes::len) else {
        return 0;
    };
    let limit = GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / seg.max(1));
    let mut n = 0;
    for pkt in packets.iter().take(limit) {
        if pkt.len() > seg {
            break;
        }
        n += 1;
        if pkt.len() < seg {
            break;
        }
    }
    n
}

fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

fn sendmsg_gso(
    fd: RawFd,
    addr: &libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    segments: &[Bytes],
) -> io::Result<()> {
    let Some(seg) = segments.first().map(Bytes::len) else {
        return Ok(());
    };
    let seg = u16::try_from(seg).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: zeroed iovecs and msghdr are valid; the iovecs point at the
    // borrowed `segments`, the header at the iovecs, `addr` and the u64
    // control buffer (aligned for cmsghdr), all alive during the call; the
    // control buffer has room for one u16 cmsg (CMSG_SPACE(2) <= 24).
    let mut iovs: [libc::iovec; GSO_MAX_SEGMENTS] = unsafe { mem::zeroed() };
    let count = segments.len().min(GSO_MAX_SEGMENTS);
    for (iov, pkt) in iovs.iter_mut().zip(segments) {
        iov.iov_base = pkt.as_ptr() as *mut libc::c_void;
        iov.iov_len = pkt.len();
    }
    let mut control = [0u64; 4];
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    if addr_len > 0 {
        msg.msg_name = (addr as *const libc::sockaddr_storage) as *mut libc::c_void;
        msg.msg_namelen = addr_len;
    }
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = count as _;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as _;
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
        libc::CMSG_DATA(cmsg).cast::<u16>().write_unaligned(seg);
    }
    let n = unsafe { libc::sendmsg(fd, &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sendmmsg_to(
    fd: RawFd,
    addr: &libc::sockaddr_storage,
    addr_len: libc::socklen_t,
    packets: &[Bytes],
) -> io::Result<usize> {
    let count = packets.len().min(BATCH);
    // SAFETY: zeroed iovec and mmsghdr are valid; each header points at its
    // own iovec in `iovs`, whose buffers are the `packets` borrowed for the
    // duration of the call; the kernel only reads them and `addr`.
    let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
    for ((iov, msg), pkt) in iovs.iter_mut().zip(msgs.iter_mut()).zip(packets) {
        iov.iov_base = pkt.as_ptr() as *mut libc::c_void;
        iov.iov_len = pkt.len();
        if addr_len > 0 {
            msg.msg_hdr.msg_name = (addr as *const libc::sockaddr_storage) as *mut libc::c_void;
            msg.msg_hdr.msg_namelen = addr_len;
        }
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), count as libc::c_uint, 0) };
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        0 => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "sendmmsg sent nothing",
        )),
        n => Ok(usize::try_from(n).unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_conversion_round_trips() {
        for addr in [
            "127.0.0.1:69".parse::<SocketAddr>().expect("addr"),
            "[::1]:6969".parse().expect("addr"),
            "[fe80::1%3]:1".parse().expect("addr"),
        ] {
            let (ss, _) = std_to_sockaddr(addr);
            assert_eq!(sockaddr_to_std(&ss).expect("convert"), addr);
        }
    }

    #[test]
    fn v4_mapped_addresses_become_v4() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:69".parse().expect("addr");
        assert_eq!(
            canonical(mapped),
            "10.1.2.3:69".parse::<SocketAddr>().expect("addr")
        );
    }

    #[tokio::test]
    async fn pktinfo_reports_the_destination_address() {
        let listener = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        enable_pktinfo(&listener).expect("pktinfo");
        let listener = UdpSocket::from_std(listener).expect("tokio socket");
        let port = listener.local_addr().expect("addr").port();
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        for dst in ["127.0.0.1", "127.0.0.2"] {
            let to = SocketAddr::new(dst.parse().expect("ip"), port);
            client.send_to(b"hello", to).await.expect("send");
            let mut buf = [0u8; 3];
            let rx = recv_with_local(&listener, &mut buf).await.expect("recv");
            assert_eq!(rx.len, 3);
            assert!(rx.truncated);
            assert_eq!(rx.peer, client.local_addr().expect("addr"));
            assert_eq!(rx.local, Some(SocketAddr::new(to.ip(), 0)));
        }
    }

    /// The datagram is there although tokio never saw the socket become
    /// readable (its reactor does not run between the two calls).
    #[tokio::test]
    async fn recv_from_now_sees_datagrams_tokio_has_not_polled() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut buf = [0u8; 16];
        let empty = recv_from_now(&rx, &mut buf).expect_err("nothing queued yet");
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        tx.send_to(b"ack", rx.local_addr().expect("addr"))
            .expect("send");
        let (n, from) = recv_from_now(&rx, &mut buf).expect("queued datagram");
        assert_eq!(
            (&buf[..n], from),
            (&b"ack"[..], tx.local_addr().expect("addr"))
        );
        let again = recv_from_now(&rx, &mut buf).expect_err("consumed");
        assert_eq!(again.kind(), io::ErrorKind::WouldBlock);
    }

    #[tokio::test]
    async fn send_all_sends_more_than_one_batch_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let packets: Vec<Bytes> = (0..150u8).map(|i| Bytes::from(vec![i; 100])).collect();
        Sender::new(false)
            .send_all(&tx, rx.local_addr().expect("addr"), &packets)
            .await
            .expect("send");
        let mut buf = [0u8; 200];
        for i in 0..150u8 {
            let (n, from) = rx.recv_from(&mut buf).await.expect("recv");
            assert_eq!(from, tx.local_addr().expect("addr"));
            assert_eq!(&buf[..n], &[i; 100][..]);
        }
    }

    #[tokio::test]
    async fn a_transfer_socket_is_connected_and_strangers_go_to_its_twin() {
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let stranger = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let client_addr = client.local_addr().expect("addr");
        let pair =
            transfer_sockets("127.0.0.1:0".parse().expect("addr"), client_addr).expect("sockets");
        let twin =
            UdpSocket::from_std(pair.strangers.expect("a strangers' socket")).expect("register");
        let main = UdpSocket::from_std(pair.main).expect("register");
        let tid = main.local_addr().expect("addr");
        assert_eq!(main.peer_addr().expect("connected"), client_addr);
        assert_eq!(twin.local_addr().expect("addr"), tid);

        stranger.send_to(b"stranger", tid).expect("send");
        client.send_to(b"client", tid).expect("send");
        let mut buf = [0u8; 16];
        let (n, from) = main.recv_from(&mut buf).await.expect("recv");
        assert_eq!((&buf[..n], from), (&b"client"[..], client_addr));
        let (n, from) = twin.recv_from(&mut buf).await.expect("recv");
        assert_eq!(
            (&buf[..n], from),
            (&b"stranger"[..], stranger.local_addr().expect("addr"))
        );
        let again = recv_from_now(&main, &mut buf).expect_err("nothing more for main");
        assert_eq!(again.kind(), io::ErrorKind::WouldBlock);

        // Sent without an address, a window (GSO) and single datagrams
        // (sendmmsg) reach the client in order.
        let mut packets: Vec<Bytes> = (0..20u8).map(|i| Bytes::from(vec![i; 100])).collect();
        packets.push(Bytes::from(vec![20u8; 10]));
        for batch in [&packets[..], &packets[20..]] {
            Sender::new(true)
                .send_all(&main, client_addr, batch)
                .await
                .expect("send");
        }
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 200];
        for expected in packets.iter().chain(&packets[20..]) {
            let (n, from) = client.recv_from(&mut buf).expect("recv");
            assert_eq!((&buf[..n], from), (&expected[..], tid));
        }
    }

    /// The main socket picks its port before it allows reuse, so no two
    /// transfers ever share a TID.
    #[test]
    fn transfers_never_share_a_port() {
        let client: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let pairs: Vec<TransferSockets> = (0..200)
            .map(|_| {
                transfer_sockets("127.0.0.1:0".parse().expect("addr"), client).expect("sockets")
            })
            .collect();
        let mut ports: Vec<u16> = pairs
            .iter()
            .map(|p| p.main.local_addr().expect("addr").port())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), pairs.len());
        assert!(pairs.iter().all(|p| p.strangers.is_some()));
    }
}
