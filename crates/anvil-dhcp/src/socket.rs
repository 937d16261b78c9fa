//! UDP sockets with IP_PKTINFO: to learn which interface and local address a
//! broadcast arrived on (which selects the network), and to send a broadcast
//! reply out of that same interface from that address. This is the only
//! module with `unsafe`: two syscalls libc does not wrap safely.

use crate::DhcpError;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

/// Receive buffer asked for (each queued datagram costs its size plus ~1 KiB
/// of kernel bookkeeping).
const RECV_BUFFER_BYTES: usize = 4 << 20;

/// Opens a UDP socket for a DHCP or PXE port.
pub(crate) fn open(
    addr: SocketAddrV4,
    device: Option<&str>,
) -> Result<std::net::UdpSocket, DhcpError> {
    let what = |w: &str| match device {
        Some(d) => format!("{addr} on {d}: {w}"),
        None => format!("{addr}: {w}"),
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| DhcpError::socket(what("create"), e))?;
    // Several sockets share port 67 when bound to different devices, and a
    // restarted server must not wait for the old socket to go.
    s.set_reuse_address(true)
        .map_err(|e| DhcpError::socket(what("SO_REUSEADDR"), e))?;
    s.set_broadcast(true)
        .map_err(|e| DhcpError::socket(what("SO_BROADCAST"), e))?;
    if let Some(d) = device {
        s.bind_device(Some(d.as_bytes()))
            .map_err(|e| DhcpError::socket(what("SO_BINDTODEVICE"), e))?;
    }
    // The socket buffer is the only queue in front of the decision loop:
    // ask for room for a few thousand requests, so a rack powering on at
    // once waits there instead of being dropped. The kernel caps the request
    // at net.core.rmem_max without failing.
    s.set_recv_buffer_size(RECV_BUFFER_BYTES)
        .map_err(|e| DhcpError::socket(what("SO_RCVBUF"), e))?;
    set_pktinfo(s.as_raw_fd()).map_err(|e| DhcpError::socket(what("IP_PKTINFO"), e))?;
    s.set_nonblocking(true)
        .map_err(|e| DhcpError::socket(what("O_NONBLOCK"), e))?;
    s.bind(&std::net::SocketAddr::V4(addr).into())
        .map_err(|e| DhcpError::socket(what("bind"), e))?;
    Ok(s.into())
}

fn set_pktinfo(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: fd is an open socket; the option value is a c_int that lives
    // for the duration of the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What recvmsg told about one datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvInfo {
    pub len: usize,
    pub src: SocketAddrV4,
    pub ifindex: Option<u32>,
    /// `ipi_spec_dst`: the local address of the receiving interface.
    pub local_addr: Option<Ipv4Addr>,
    /// The datagram did not fit the buffer.
    pub truncated: bool,
}

/// Control buffer for one `in_pktinfo`, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Cmsg([u8; 64]);

/// Non-blocking recvmsg with IP_PKTINFO.
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<RecvInfo> {
    // SAFETY: all pointers in msghdr point at live locals sized as declared;
    // the kernel writes at most msg_namelen/msg_controllen/iov_len bytes. The
    // CMSG_* macros are given the msghdr the kernel filled, and the pktinfo is
    // read unaligned from inside the control buffer.
    unsafe {
        let mut src: libc::sockaddr_in = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = Cmsg([0; 64]);
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut src as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len() as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut info = RecvInfo {
            len: n as usize,
            src: SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(src.sin_addr.s_addr)),
                u16::from_be(src.sin_port),
            ),
            ifindex: None,
            local_addr: None,
            truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        };
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let pi: libc::in_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                info.ifindex = u32::try_from(pi.ipi_ifindex).ok().filter(|i| *i != 0);
                info.local_addr = Some(Ipv4Addr::from(u32::from_be(pi.ipi_spec_dst.s_addr)))
                    .filter(|a| !a.is_unspecified());
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok(info)
    }
}

/// Non-blocking sendmsg; with an interface and/or source address, the reply
/// leaves through that interface from that address (needed for broadcasts
/// to clients that have no address yet).
pub(crate) fn send(
    fd: RawFd,
    data: &[u8],
    dest: SocketAddrV4,
    ifindex: Option<u32>,
    source: Option<Ipv4Addr>,
) -> io::Result<usize> {
    // SAFETY: as in `recv`; the control buffer is large enough for one
    // in_pktinfo (CMSG_SPACE is checked against its size), and the kernel only
    // reads from the pointers given.
    unsafe {
        let mut dst: libc::sockaddr_in = zeroed();
        dst.sin_family = libc::AF_INET as libc::sa_family_t;
        dst.sin_port = dest.port().to_be();
        dst.sin_addr.s_addr = u32::from(*dest.ip()).to_be();
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut control = Cmsg([0; 64]);
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut dst as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if ifindex.is_some() || source.is_some() {
            let space = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            if space > control.0.len() {
                return Err(io::Error::other("control buffer too small"));
            }
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            if c.is_null() {
                return Err(io::Error::other("no room for IP_PKTINFO"));
            }
            (*c).cmsg_level = libc::IPPROTO_IP;
            (*c).cmsg_type = libc::IP_PKTINFO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
            let mut pi: libc::in_pktinfo = zeroed();
            pi.ipi_ifindex = ifindex.and_then(|i| i32::try_from(i).ok()).unwrap_or(0);
            pi.ipi_spec_dst.s_addr = u32::from(source.unwrap_or(Ipv4Addr::UNSPECIFIED)).to_be();
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), pi);
        }
        let n = libc::sendmsg(fd, &msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Interface name for an index (if_indextoname).
pub(crate) fn ifname(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires; on success
    // it holds a NUL-terminated name.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null return means buf is NUL-terminated within its length.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Helper so callers can pass tokio sockets.
pub(crate) fn fd_of(s: &impl AsRawFd) -> RawFd {
    s.as_raw_fd()
}
