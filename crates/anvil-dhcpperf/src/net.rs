//! The relay's UDP socket with batched, non-blocking I/O (`sendmmsg`,
//! `recvmmsg`). One syscall moves up to [`BATCH`] datagrams, and the socket
//! never blocks: a generator that sleeps in `recv` is woken by every reply,
//! and on these VMs the wake-up is charged to the server that sent it
//! (20-50 µs of its CPU per DORA), which would make every server look slow.
//! This is the only module with `unsafe`.

use crate::wire::REQUEST_LEN;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

/// Datagrams per syscall.
pub const BATCH: usize = 64;
/// Receive slot size: larger than any DHCP reply over loopback (replies are
/// at most 576 bytes unless the client asks for more, and ours does not).
const SLOT: usize = 2048;

pub struct RelaySocket {
    sock: Socket,
    server: libc::sockaddr_in,
    recv_buf: Vec<u8>,
    recv_lens: [usize; BATCH],
    recv_src: [libc::sockaddr_in; BATCH],
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

impl RelaySocket {
    /// Binds `relay` (port 67, where servers send relayed replies) and aims
    /// at `server`.
    pub fn open(relay: SocketAddrV4, server: SocketAddrV4, buffer: usize) -> io::Result<Self> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // A server on the same host may hold 0.0.0.0:67 with SO_REUSEADDR;
        // the kernel still delivers to the more specific relay address.
        sock.set_reuse_address(true)?;
        sock.set_nonblocking(true)?;
        // Replies to a whole window of requests can arrive while the
        // generator sleeps; a drop here would look like a server timeout.
        // FORCE passes rmem_max when run as root; fall back to the capped size.
        if force_buffer(&sock, libc::SO_RCVBUFFORCE, buffer).is_err() {
            sock.set_recv_buffer_size(buffer)?;
        }
        if force_buffer(&sock, libc::SO_SNDBUFFORCE, buffer).is_err() {
            sock.set_send_buffer_size(buffer)?;
        }
        sock.bind(&SocketAddr::V4(relay).into())?;
        Ok(RelaySocket {
            sock,
            server: sockaddr(server),
            recv_buf: vec![0; BATCH * SLOT],
            recv_lens: [0; BATCH],
            // SAFETY: plain old data, all-zero is valid.
            recv_src: unsafe { zeroed() },
        })
    }

    /// Sends the first `count` requests of `packets` (each [`REQUEST_LEN`]
    /// bytes, back to back) to the server. Returns how many the kernel took;
    /// 0 when the socket buffer is full (the caller keeps the rest).
    pub fn send(&mut self, packets: &[[u8; REQUEST_LEN]], count: usize) -> io::Result<usize> {
        let count = count.min(BATCH).min(packets.len());
        if count == 0 {
            return Ok(0);
        }
        // SAFETY: plain old data, all-zero is valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..count {
            iov[i].iov_base = packets[i].as_ptr() as *mut libc::c_void;
            iov[i].iov_len = REQUEST_LEN;
            hdrs[i].msg_hdr.msg_name = (&mut self.server as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `hdrs[..count]` point at `iov` entries, which point into
        // `packets` (alive and at least REQUEST_LEN bytes each) and at
        // `self.server`; the kernel only reads them, and writes msg_len.
        let n = unsafe {
            libc::sendmmsg(
                self.sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// Receives up to [`BATCH`] datagrams without blocking; 0 when none is
    /// waiting. Read them with [`RelaySocket::datagram`].
    pub fn recv(&mut self) -> io::Result<usize> {
        // SAFETY: plain old data, all-zero is valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, slot) in self.recv_buf.chunks_exact_mut(SLOT).enumerate() {
            iov[i].iov_base = slot.as_mut_ptr().cast();
            iov[i].iov_len = SLOT;
            hdrs[i].msg_hdr.msg_name = (&mut self.recv_src[i] as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at its own SLOT-sized part of
        // `recv_buf` and its own `recv_src` entry, all alive for the call;
        // the kernel writes at most iov_len / msg_namelen bytes there.
        let n = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for (len, h) in self.recv_lens.iter_mut().zip(&hdrs[..n]) {
            // A datagram larger than its slot is cut to the slot; the parser
            // then sees a reply without its end option, which is still fine
            // for the fields it reads, so no special case.
            *len = (h.msg_len as usize).min(SLOT);
        }
        Ok(n)
    }

    /// The `i`-th datagram of the last [`RelaySocket::recv`] and its source.
    pub fn datagram(&self, i: usize) -> (&[u8], Ipv4Addr) {
        let start = i * SLOT;
        let src = Ipv4Addr::from(u32::from_be(self.recv_src[i].sin_addr.s_addr));
        (&self.recv_buf[start..start + self.recv_lens[i]], src)
    }
}

fn force_buffer(sock: &Socket, opt: libc::c_int, size: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: the option value is a c_int on the stack, its size is passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time (user + system) of a process, from `/proc/PID/stat`, in
/// microseconds. Covers all its threads.
pub fn process_cpu_us(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces;
    // fields after the last ')' start with field 3 (state).
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, stime 15: indexes 11 and 12 counting from field 3.
    let field = |i: usize| -> io::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
    };
    let ticks = field(11)? + field(12)?;
    Ok(ticks * 1_000_000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// This process's own CPU time in microseconds (getrusage), to show that
/// the generator is cheap next to the server.
pub fn self_cpu_us() -> u64 {
    // SAFETY: rusage is plain old data; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: a valid pointer to a live rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_from_proc() {
        let pid = std::process::id();
        // Burn a little CPU so the figure is not trivially zero on any box.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let us = process_cpu_us(pid).expect("own /proc/PID/stat");
        assert!(us > 0);
        assert!(self_cpu_us() > 0);
    }
}
