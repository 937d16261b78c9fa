//! Anvil's TFTP server against atftpd (the Debian TFTP server that supports
//! RFC 7440 windowsize), in the same run, on 127.0.0.1:
//!
//! ```sh
//! cargo run --release -p anvil-tftp --example tftp-bench -- --runs 5
//! ```
//!
//! Serves one file of random bytes (64 MiB by default) from both servers and
//! fetches it with the `atftp` client at blksize 1468, windowsize 1 and 16,
//! alternating servers run by run, checking every copy's SHA-256. Prints
//! MB/s per run, medians, the ratio, and the servers' CPU time per transfer.
//!
//! `--poll-client` adds runs of the same minimal client polling its socket
//! instead of sleeping in `recv`: a load generator that never waits for a
//! wake-up, so a window's time is the server's (and the loopback's) alone.
//! Both servers get the same client.
//!
//! `--clients atftp,raw,poll,mmsg,gro` picks exactly these clients.
//!
//! `--floor` adds a third server for lock-step runs (windowsize 1): a
//! thread that answers one client at a time from memory on a connected
//! socket, polling without sleeping, with no file, timer, retransmission or
//! check — not a TFTP server, but the least any server can take per block
//! over this loopback. It runs in the same rotation as the other two, and
//! the table shows Anvil / floor and floor / atftpd: how close Anvil is to
//! that limit, and whether a ratio to atftpd is reachable at all with a
//! given client.
//!
//! `--mmsg-client` adds runs of a client that takes a window in with
//! `recvmmsg` (polling, never sleeping), each datagram's payload scattered
//! straight to its place in a buffer for the whole file, and hashes the
//! file only after the transfer (outside the timed part): a load generator
//! that does as little per datagram as a client can, so that what is timed
//! is the server and the loopback. Both servers get the same client.
//!
//! The `gro` client (only through `--clients`) is the `mmsg` client with
//! `UDP_GRO` on its socket; see `fetch_gro`.
//!
//! `--raw-client` adds runs with a minimal client built in (one `recv` per
//! DATA, nothing written to disk), which costs far less per packet than
//! atftp's `pselect` + `recvmsg` + `write`, so the server side dominates.
//! The raw client also times every window: from sending its ACK to the
//! first DATA of the next window (the server's turnaround, wake-ups
//! included) and from that first DATA to the window's last (the client's
//! own receiving); the medians are printed per server.
//!
//! atftpd is not installed (it conflicts with tftpd-hpa): the bench runs
//! `apt-get download atftpd libwrap0` and unpacks both with `dpkg -x` into a
//! temporary directory, unless `--atftpd PATH` names a binary. Needs root
//! (atftpd changes user) and the `atftp` client (`apt-get install atftp`).

use anvil_tftp::{DirSource, NoopObserver, TftpConfig, TftpServer};
use rand::{RngCore, SeedableRng, rngs::StdRng};
use sha2::{Digest, Sha256};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    size_mib: usize,
    runs: usize,
    blksize: u16,
    windows: Vec<u16>,
    atftpd: Option<PathBuf>,
    raw_client: bool,
    poll_client: bool,
    mmsg_client: bool,
    /// `--floor`: also time the built-in clients at windowsize 1 against
    /// `floor_server`.
    floor: bool,
    /// `--clients`: exactly these clients, in this order.
    clients: Option<Vec<String>>,
}

fn parse_args() -> Result<Args, Error> {
    let mut args = Args {
        size_mib: 64,
        runs: 5,
        blksize: 1468,
        windows: vec![1, 16],
        atftpd: None,
        raw_client: false,
        poll_client: false,
        mmsg_client: false,
        clients: None,
        floor: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--size-mib" => args.size_mib = value()?.parse()?,
            "--runs" => args.runs = value()?.parse()?,
            "--blksize" => args.blksize = value()?.parse()?,
            "--windows" => {
                args.windows = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--atftpd" => args.atftpd = Some(PathBuf::from(value()?)),
            "--raw-client" => args.raw_client = true,
            "--poll-client" => args.poll_client = true,
            "--mmsg-client" => args.mmsg_client = true,
            "--floor" => args.floor = true,
            "--clients" => {
                let list: Vec<String> = value()?.split(',').map(str::to_string).collect();
                if let Some(bad) = list
                    .iter()
                    .find(|c| !["atftp", "raw", "poll", "mmsg", "gro"].contains(&c.as_str()))
                {
                    return Err(
                        format!("unknown client {bad} (atftp, raw, poll, mmsg, gro)").into(),
                    );
                }
                args.clients = Some(list);
            }
            "-h" | "--help" => {
                println!(
                    "tftp-bench [--size-mib 64] [--runs 5] [--blksize 1468] \
                     [--windows 1,16] [--atftpd PATH] [--raw-client] [--poll-client] [--mmsg-client] \
                     [--clients atftp,raw,poll,mmsg,gro] [--floor]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

fn sha256_file(path: &Path) -> Result<Vec<u8>, Error> {
    Ok(Sha256::digest(std::fs::read(path)?).to_vec())
}

/// Unpacks atftpd and the libwrap it links against from Debian's archive.
fn fetch_atftpd(dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let status = Command::new("apt-get")
        .args(["download", "atftpd", "libwrap0"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Err("apt-get download atftpd libwrap0 failed (run apt-get update?)".into());
    }
    let root = dir.join("root");
    for deb in std::fs::read_dir(dir)? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            let ok = Command::new("dpkg")
                .arg("-x")
                .arg(&deb)
                .arg(&root)
                .status()?;
            if !ok.success() {
                return Err(format!("dpkg -x {} failed", deb.display()).into());
            }
        }
    }
    Ok((
        root.join("usr/sbin/atftpd"),
        root.join("usr/lib/x86_64-linux-gnu"),
    ))
}

fn free_udp_port() -> Result<u16, Error> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until a TFTP server answers (an ERROR for a missing file will do).
fn wait_ready(addr: SocketAddr) -> Result<(), Error> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    for _ in 0..100 {
        sock.send_to(b"\x00\x01no-such-file\0octet\0", addr)?;
        let mut buf = [0u8; 600];
        if sock.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    Err(format!("no TFTP server answering on {addr}").into())
}

/// CPU seconds (user + system) from a /proc `stat` file: utime and stime
/// are the 14th and 15th fields, counting the command name as one.
fn stat_cpu_seconds(path: &Path) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| f.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks / hz.max(1) as f64
}

/// CPU seconds used so far by a server: a whole process (atftpd, including
/// its finished transfer threads), or only its threads named `threads…`
/// (Anvil's service, the floor server), since this process also runs the
/// built-in clients.
fn server_cpu_seconds(pid: u32, threads: Option<&str>) -> f64 {
    let Some(prefix) = threads else {
        return stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat")));
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|name| name.starts_with(prefix))
        })
        .map(|t| stat_cpu_seconds(&t.path().join("stat")))
        .sum()
}

struct Sample {
    secs: f64,
    server_cpu: f64,
    /// Raw client only: median µs from ACK to the next window's first DATA,
    /// and from that DATA to the window's last.
    turnaround_us: f64,
    receive_us: f64,
}

/// What the raw client measured of one transfer.
struct RawFetch {
    secs: f64,
    sha256: Vec<u8>,
    turnaround_us: f64,
    receive_us: f64,
}

fn fetch_atftp(addr: SocketAddr, blksize: u16, window: u16, out: &Path) -> Result<f64, Error> {
    let _ = std::fs::remove_file(out);
    let start = Instant::now();
    let status = Command::new("atftp")
        .args(["--get", "-r", "bench.bin", "-l"])
        .arg(out)
        .args(["--option", &format!("blksize {blksize}")])
        .args(["--option", &format!("windowsize {window}")])
        .args(["--option", "tsize 0"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("atftp from {addr} failed: {status}").into());
    }
    Ok(secs)
}

/// Receives one datagram: blocking, or (`busy`) by polling the non-blocking
/// socket until one is there, so that the client never sleeps and never
/// waits for a wake-up: what is left of a window's time is the server's.
fn recv_datagram(
    sock: &UdpSocket,
    buf: &mut [u8],
    busy: bool,
) -> Result<(usize, SocketAddr), Error> {
    if !busy {
        return Ok(sock.recv_from(buf)?);
    }
    let since = Instant::now();
    loop {
        match sock.recv_from(buf) {
            Ok(got) => return Ok(got),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if since.elapsed() > Duration::from_secs(5) {
                    return Err("no datagram within 5 s".into());
                }
                std::hint::spin_loop();
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A minimal RFC 7440 client: `recv` per DATA (blocking, or busy-polling
/// with `busy`), ACK at each window's end, bytes hashed rather than
/// written. No loss handling: loopback only.
fn fetch_raw(addr: SocketAddr, blksize: u16, window: u16, busy: bool) -> Result<RawFetch, Error> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    sock.set_nonblocking(busy)?;
    let rrq = format!("\x00\x01bench.bin\0octet\0blksize\0{blksize}\0windowsize\0{window}\0");
    let start = Instant::now();
    sock.send_to(rrq.as_bytes(), addr)?;
    let mut buf = vec![0u8; usize::from(blksize) + 4];
    let mut hash = Sha256::new();
    let mut expected: u16 = 1;
    let mut in_window = 0;
    let (n, tid) = recv_datagram(&sock, &mut buf, busy)?;
    if buf.get(..2) != Some(&[0, 6]) {
        return Err(format!("expected OACK, got {:?}", &buf[..n.min(32)]).into());
    }
    sock.send_to(&[0, 4, 0, 0], tid)?;
    let mut acked_at = Instant::now();
    let mut first_at = acked_at;
    let mut turnaround = Vec::new();
    let mut receive = Vec::new();
    loop {
        let (n, from) = recv_datagram(&sock, &mut buf, busy)?;
        if from != tid {
            return Err(format!("a datagram from {from}, not the server's {tid}").into());
        }
        let now = Instant::now();
        if in_window == 0 {
            first_at = now;
            turnaround.push((now - acked_at).as_secs_f64() * 1e6);
        }
        let block = u16::from_be_bytes([buf[2], buf[3]]);
        if buf[1] != 3 || block != expected {
            return Err(format!("unexpected packet (block {block}, want {expected})").into());
        }
        hash.update(&buf[4..n]);
        in_window += 1;
        let last = n - 4 < usize::from(blksize);
        if last || in_window == window {
            receive.push((now - first_at).as_secs_f64() * 1e6);
            let b = block.to_be_bytes();
            sock.send_to(&[0, 4, b[0], b[1]], tid)?;
            acked_at = Instant::now();
            in_window = 0;
        }
        if last {
            return Ok(RawFetch {
                secs: start.elapsed().as_secs_f64(),
                sha256: hash.finalize().to_vec(),
                turnaround_us: median(&mut turnaround),
                receive_us: median(&mut receive),
            });
        }
        expected = expected.wrapping_add(1);
    }
}

/// Sends the RRQ from `sock`, waits for the OACK, connects `sock` to the
/// server's TID and ACKs block 0; returns when the transfer started.
fn open_connected(
    sock: &UdpSocket,
    addr: SocketAddr,
    blksize: u16,
    window: u16,
) -> Result<Instant, Error> {
    let rrq = format!("\x00\x01bench.bin\0octet\0blksize\0{blksize}\0windowsize\0{window}\0");
    let start = Instant::now();
    sock.send_to(rrq.as_bytes(), addr)?;
    let mut oack = [0u8; 512];
    let (_, tid) = recv_datagram(sock, &mut oack, true)?;
    if oack[..2] != [0, 6] {
        return Err(format!("expected OACK, got {:?}", &oack[..16]).into());
    }
    sock.connect(tid)?;
    sock.send(&[0, 4, 0, 0])?;
    Ok(start)
}

/// ACKs `block` (wrapping, as the block numbers do) on the connected
/// `sock`; returns when.
fn ack(sock: &UdpSocket, block: usize) -> Result<Instant, Error> {
    let b = (block as u16).to_be_bytes();
    sock.send(&[0, 4, b[0], b[1]])?;
    Ok(Instant::now())
}

/// What a client that kept the whole file in `file` measured: the length
/// checked, the SHA-256 computed now, after the timed part.
fn fetched(
    secs: f64,
    file: &[u8],
    size: usize,
    total: usize,
    turnaround: &mut [f64],
    receive: &mut [f64],
) -> Result<RawFetch, Error> {
    if total != size {
        return Err(format!("{total} bytes received for a {size}-byte file").into());
    }
    Ok(RawFetch {
        secs,
        sha256: Sha256::digest(&file[..size]).to_vec(),
        turnaround_us: median(turnaround),
        receive_us: median(receive),
    })
}

/// Receives into `msgs` (their iovecs already pointing at where each
/// datagram goes) by polling `recvmmsg` until at least one datagram is
/// there; returns how many came.
fn recvmmsg_polling(fd: i32, msgs: &mut [libc::mmsghdr]) -> Result<usize, Error> {
    let since = Instant::now();
    loop {
        // SAFETY: every mmsghdr's iovecs point into buffers that outlive
        // the call, and `msgs.len()` bounds what the kernel writes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n > 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if n == 0 || e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(format!("recvmmsg: {e}").into());
        }
        if since.elapsed() > Duration::from_secs(5) {
            return Err("no datagram within 5 s".into());
        }
        std::hint::spin_loop();
    }
}

/// The leanest client: a connected, polled socket; a window taken in with
/// `recvmmsg`, each DATA's header to a small array and its payload straight
/// to its place in one buffer for the whole file; ACK at each window's end.
/// The SHA-256 is computed after the transfer, outside the timed part.
/// No loss handling: loopback only.
fn fetch_mmsg(addr: SocketAddr, blksize: u16, window: u16, size: usize) -> Result<RawFetch, Error> {
    use std::os::fd::AsRawFd;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_nonblocking(true)?;
    let fd = sock.as_raw_fd();
    let blk = usize::from(blksize);
    let win = usize::from(window);
    // Room for a whole window past the end, so a window's iovecs never
    // need clipping.
    let mut file = vec![0u8; size + blk * (win + 1)];
    let mut headers = vec![[0u8; 4]; win];
    let start = open_connected(&sock, addr, blksize, window)?;
    let mut acked_at = Instant::now();
    let mut turnaround = Vec::new();
    let mut receive = Vec::new();
    let mut received = 0usize; // blocks received so far
    let mut total = 0usize; // payload bytes received so far
    loop {
        // One window: iovecs for blocks received+1 ..= received+win.
        let mut iovecs: Vec<[libc::iovec; 2]> = (0..win)
            .map(|i| {
                let at = (received + i) * blk;
                [
                    libc::iovec {
                        iov_base: headers[i].as_mut_ptr().cast(),
                        iov_len: 4,
                    },
                    libc::iovec {
                        iov_base: file[at..at + blk].as_mut_ptr().cast(),
                        iov_len: blk,
                    },
                ]
            })
            .collect();
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let mut msgs: Vec<libc::mmsghdr> =
            (0..win).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (msg, iov) in msgs.iter_mut().zip(iovecs.iter_mut()) {
            msg.msg_hdr.msg_iov = iov.as_mut_ptr();
            msg.msg_hdr.msg_iovlen = 2;
        }
        let mut got = 0;
        let mut first_at = acked_at;
        let mut last = false;
        while got < win && !last {
            let n = recvmmsg_polling(fd, &mut msgs[got..])?;
            if got == 0 {
                first_at = Instant::now();
                turnaround.push((first_at - acked_at).as_secs_f64() * 1e6);
            }
            for i in got..got + n {
                let block = (received + i + 1) as u16;
                let h = headers[i];
                if h[..2] != [0, 3] || u16::from_be_bytes([h[2], h[3]]) != block {
                    return Err(format!("unexpected packet {h:?}, want DATA {block}").into());
                }
                let len = msgs[i].msg_len as usize;
                total += len.saturating_sub(4);
                if len < 4 + blk {
                    last = true;
                }
            }
            got += n;
        }
        receive.push((Instant::now() - first_at).as_secs_f64() * 1e6);
        received += got;
        acked_at = ack(&sock, received)?;
        if last {
            let secs = start.elapsed().as_secs_f64();
            return fetched(secs, &file, size, total, &mut turnaround, &mut receive);
        }
    }
}

/// `UDP_GRO` (linux/udp.h): let the kernel hand a GSO send to this socket
/// as one datagram, unsegmented.
const UDP_GRO: libc::c_int = 104;

/// The `mmsg` client with `UDP_GRO` on its socket: a server's GSO send of
/// a window arrives as one datagram, which `recvmsg` scatters (header,
/// payload, header, payload…) straight to the blocks' places; separately
/// sent DATA arrive one per `recvmsg` as usual. This is how a modern UDP
/// receiver (a QUIC stack, say) takes in bulk data; it lets the server's
/// batching reach the client, instead of the kernel cutting each window
/// back into datagrams on the way.
fn fetch_gro(addr: SocketAddr, blksize: u16, window: u16, size: usize) -> Result<RawFetch, Error> {
    use std::os::fd::AsRawFd;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_nonblocking(true)?;
    let fd = sock.as_raw_fd();
    let on: libc::c_int = 1;
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("UDP_GRO: {}", std::io::Error::last_os_error()).into());
    }
    let blk = usize::from(blksize);
    let seg = blk + 4;
    let win = usize::from(window);
    let mut file = vec![0u8; size + blk * (win + 1)];
    let mut headers = vec![[0u8; 4]; win];
    let start = open_connected(&sock, addr, blksize, window)?;
    let mut acked_at = Instant::now();
    let mut turnaround = Vec::new();
    let mut receive = Vec::new();
    let mut received = 0usize; // blocks received so far
    let mut total = 0usize; // payload bytes received so far
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(2 * win);
    loop {
        let mut got = 0; // blocks of this window received
        let mut first_at = acked_at;
        let mut last = false;
        while got < win && !last {
            // Header and payload of every block still due in this window.
            iovecs.clear();
            for (i, header) in headers.iter_mut().enumerate().skip(got) {
                let at = (received + i) * blk;
                iovecs.push(libc::iovec {
                    iov_base: header.as_mut_ptr().cast(),
                    iov_len: 4,
                });
                iovecs.push(libc::iovec {
                    iov_base: file[at..at + blk].as_mut_ptr().cast(),
                    iov_len: blk,
                });
            }
            // SAFETY: msghdr is plain data; all-zero is a valid value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iovecs.as_mut_ptr();
            msg.msg_iovlen = iovecs.len() as _;
            let since = Instant::now();
            let n = loop {
                // SAFETY: the iovecs point into `headers` and `file`, alive
                // and not otherwise borrowed during the call.
                let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
                if n >= 0 {
                    break n as usize;
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(format!("recvmsg: {e}").into());
                }
                if since.elapsed() > Duration::from_secs(5) {
                    return Err("no datagram within 5 s".into());
                }
                std::hint::spin_loop();
            };
            if got == 0 {
                first_at = Instant::now();
                turnaround.push((first_at - acked_at).as_secs_f64() * 1e6);
            }
            if msg.msg_flags & libc::MSG_TRUNC != 0 || n < 4 {
                return Err(format!("a datagram of {n} bytes does not fit a window").into());
            }
            let segments = n.div_ceil(seg);
            for (i, h) in headers.iter().enumerate().skip(got).take(segments) {
                let block = (received + i + 1) as u16;
                if h[..2] != [0, 3] || u16::from_be_bytes([h[2], h[3]]) != block {
                    return Err(format!("unexpected packet {h:?}, want DATA {block}").into());
                }
            }
            let tail = n - (segments - 1) * seg;
            total += n - 4 * segments;
            last = tail < seg;
            got += segments;
        }
        receive.push((Instant::now() - first_at).as_secs_f64() * 1e6);
        received += got;
        acked_at = ack(&sock, received)?;
        if last {
            let secs = start.elapsed().as_secs_f64();
            return fetched(secs, &file, size, total, &mut turnaround, &mut receive);
        }
    }
}

/// `--floor`: the least a lock-step server can do over this loopback. A
/// thread that answers one RRQ for `content` (blksize and windowsize 1
/// only) from a connected socket, polling without sleeping, each DATA
/// built in a reused buffer: no file, no timers, no retransmission, no
/// checks. Not a TFTP server; a yardstick for how much of a lock-step
/// block's time is left to any server at all.
fn floor_server(content: Arc<Vec<u8>>, blksize: u16) -> Result<SocketAddr, Error> {
    let listen = UdpSocket::bind("127.0.0.1:0")?;
    let addr = listen.local_addr()?;
    std::thread::Builder::new()
        .name("floor-server".into())
        .spawn(move || -> Result<(), Error> {
            let blk = usize::from(blksize);
            let mut buf = [0u8; 1024];
            loop {
                let (_, peer) = listen.recv_from(&mut buf)?;
                let sock = UdpSocket::bind("127.0.0.1:0")?;
                sock.connect(peer)?;
                sock.set_nonblocking(true)?;
                sock.send(format!("\x00\x06blksize\0{blksize}\0windowsize\x001\0").as_bytes())?;
                let mut packet = vec![0u8; 4 + blk];
                packet[1] = 3;
                let mut block: usize = 0;
                loop {
                    let n = match sock.recv(&mut buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::hint::spin_loop();
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if n < 4 || u16::from_be_bytes([buf[2], buf[3]]) != block as u16 {
                        continue;
                    }
                    let start = block * blk;
                    if start > content.len() {
                        break; // the last block was ACKed
                    }
                    let end = (start + blk).min(content.len());
                    block += 1;
                    packet[2..4].copy_from_slice(&(block as u16).to_be_bytes());
                    packet[4..4 + end - start].copy_from_slice(&content[start..end]);
                    sock.send(&packet[..4 + end - start])?;
                }
            }
        })?;
    Ok(addr)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = parse_args()?;
    let work = tempfile::tempdir()?;
    let serve_dir = work.path().join("srv");
    std::fs::create_dir(&serve_dir)?;
    let file = serve_dir.join("bench.bin");
    let mut content = vec![0u8; args.size_mib << 20];
    StdRng::seed_from_u64(1).fill_bytes(&mut content);
    std::fs::write(&file, &content)?;
    let want = Sha256::digest(&content).to_vec();
    let floor_addr = if args.floor {
        Some(floor_server(Arc::new(content), args.blksize)?)
    } else {
        drop(content);
        None
    };
    // atftpd drops privileges and wants a world-accessible directory.
    Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(work.path())
        .status()?;

    // atftpd, from Debian's archive unless given.
    let (atftpd, libdir) = match &args.atftpd {
        Some(path) => (path.clone(), PathBuf::new()),
        None => fetch_atftpd(work.path())?,
    };
    let atftpd_port = free_udp_port()?;
    let mut atftpd_child: Child = Command::new(&atftpd)
        .env("LD_LIBRARY_PATH", &libdir)
        .args(["--daemon", "--no-fork", "--user", "root", "--group", "root"])
        .args(["--logfile", "/dev/null", "--bind-address", "127.0.0.1"])
        .args(["--port", &atftpd_port.to_string()])
        .arg(&serve_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let atftpd_addr = SocketAddr::from(([127, 0, 0, 1], atftpd_port));

    // Anvil, in this process (its service thread is the only busy one).
    let config = TftpConfig {
        listen: "127.0.0.1:0".parse()?,
        max_blksize: args.blksize.max(1468),
        ..TftpConfig::default()
    };
    let server = TftpServer::bind(
        config,
        Arc::new(DirSource::new(&serve_dir)?),
        Arc::new(NoopObserver),
    )?;
    let anvil_addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(server.serve(async {
        let _ = stop_rx.await;
    }));

    let result = tokio::task::spawn_blocking(move || -> Result<(), Error> {
        wait_ready(atftpd_addr)?;
        wait_ready(anvil_addr)?;
        // (name, address, process, the process's threads that are the
        // server: None for all of them).
        let mut servers = vec![
            ("anvil", anvil_addr, std::process::id(), Some("anvil-tftp")),
            ("atftpd", atftpd_addr, atftpd_child.id(), None),
        ];
        if let Some(floor) = floor_addr {
            servers.push(("floor", floor, std::process::id(), Some("floor-server")));
        }
        let mb = (args.size_mib << 20) as f64 / 1e6;
        let out = work.path().join("fetched.bin");
        println!(
            "file {} MiB, blksize {}, {} runs per server and window, {}",
            args.size_mib,
            args.blksize,
            args.runs,
            std::fs::read_to_string("/proc/loadavg")
                .map(|l| format!("loadavg {}", l.trim()))
                .unwrap_or_default()
        );
        let mut clients = vec!["atftp"];
        if args.raw_client {
            clients.push("raw");
        }
        if args.poll_client {
            clients.push("poll");
        }
        if args.mmsg_client {
            clients.push("mmsg");
        }
        if let Some(only) = &args.clients {
            clients = only.iter().map(String::as_str).collect();
        }
        let size = args.size_mib << 20;
        let mut table = Vec::new();
        for client in &clients {
            for &window in &args.windows {
                // The floor server does lock-step only.
                let count = if window == 1 { servers.len() } else { 2 };
                let mut samples: Vec<Vec<Sample>> = (0..count).map(|_| Vec::new()).collect();
                for run in 0..args.runs {
                    // Rotate which server goes first, so drifting load on a
                    // shared machine hits all alike.
                    for k in 0..count {
                        let i = (run + k) % count;
                        let (name, addr, pid, threads) = servers[i];
                        let cpu_before = server_cpu_seconds(pid, threads);
                        let (secs, turnaround_us, receive_us) = if *client == "atftp" {
                            let secs = fetch_atftp(addr, args.blksize, window, &out)?;
                            if sha256_file(&out)? != want {
                                return Err(format!("{name} sent wrong bytes").into());
                            }
                            (secs, f64::NAN, f64::NAN)
                        } else {
                            let got = match *client {
                                "mmsg" => fetch_mmsg(addr, args.blksize, window, size)?,
                                "gro" => fetch_gro(addr, args.blksize, window, size)?,
                                other => fetch_raw(addr, args.blksize, window, other == "poll")?,
                            };
                            if got.sha256 != want {
                                return Err(format!("{name} sent wrong bytes").into());
                            }
                            (got.secs, got.turnaround_us, got.receive_us)
                        };
                        let server_cpu = server_cpu_seconds(pid, threads) - cpu_before;
                        samples[i].push(Sample {
                            secs,
                            server_cpu,
                            turnaround_us,
                            receive_us,
                        });
                    }
                }
                let mut medians = Vec::new();
                for (i, (name, _, _, _)) in servers.iter().take(count).enumerate() {
                    let mut rates: Vec<f64> = samples[i].iter().map(|s| mb / s.secs).collect();
                    let mut cpu: Vec<f64> = samples[i].iter().map(|s| s.server_cpu).collect();
                    let mut turnaround: Vec<f64> =
                        samples[i].iter().map(|s| s.turnaround_us).collect();
                    let mut receive: Vec<f64> = samples[i].iter().map(|s| s.receive_us).collect();
                    let runs: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
                    let m = median(&mut rates);
                    let timing = if *client != "atftp" {
                        format!(
                            ", per window: ACK -> DATA {:.1} us, receive {:.1} us",
                            median(&mut turnaround),
                            median(&mut receive)
                        )
                    } else {
                        String::new()
                    };
                    println!(
                        "{client:5} windowsize {window:2} {name:6}: median {m:6.1} MB/s, \
                         server CPU {:.3} s/transfer, runs [{}]{timing}",
                        median(&mut cpu),
                        runs.join(", ")
                    );
                    medians.push((m, median(&mut cpu)));
                }
                table.push((client.to_string(), window, medians));
            }
        }
        println!();
        println!(
            "| client | windowsize | Anvil MB/s | atftpd MB/s | ratio | Anvil CPU s | atftpd CPU s \
             | floor MB/s | Anvil / floor | floor / atftpd |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (client, window, medians) in &table {
            let ((a, acpu), (b, bcpu)) = (medians[0], medians[1]);
            let floor = match medians.get(2) {
                Some((f, _)) => format!("{f:.0} | {:.2} | {:.2}x", a / f, f / b),
                None => " | | ".to_string(),
            };
            println!(
                "| {client} | {window} | {a:.0} | {b:.0} | {:.2}x | {acpu:.3} | {bcpu:.3} | {floor} |",
                a / b
            );
        }
        let _ = atftpd_child.kill();
        let _ = atftpd_child.wait();
        Ok(())
    })
    .await?;
    let _ = stop_tx.send(());
    service.await??;
    result
}
