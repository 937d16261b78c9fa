#!/usr/bin/env python3
"""Splits a pcap of DHCP traffic into one .bin per client message: the UDP
payload only (the DHCP message), named <client>-<n>-<type>.bin, where
<client> is the chaddr. Also prints a summary line per packet."""
import struct
import sys
from pathlib import Path

TYPES = {1: "discover", 3: "request", 4: "decline", 7: "release", 8: "inform"}


def packets(path):
    data = Path(path).read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    assert linktype == 1, "expects Ethernet captures"
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        yield data[off:off + incl]
        off += incl


def dhcp_payload(frame):
    if len(frame) < 14 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    if ip[9] != 17:
        return None
    udp = ip[ihl:]
    return udp[8:]


def msg_type(p):
    i = 240
    while i < len(p):
        c = p[i]
        if c == 0:
            i += 1
            continue
        if c == 255 or i + 1 >= len(p):
            break
        l = p[i + 1]
        if c == 53 and l == 1:
            return p[i + 2]
        i += 2 + l
    return None


def main():
    pcap, out = sys.argv[1], Path(sys.argv[2])
    counts = {}
    for frame in packets(pcap):
        p = dhcp_payload(frame)
        if not p or len(p) < 240 or p[0] != 1:
            continue
        mac = p[28:34].hex()
        t = TYPES.get(msg_type(p), "other")
        n = counts.get((mac, t), 0) + 1
        counts[(mac, t)] = n
        name = f"{mac}-{t}-{n}.bin"
        (out / name).write_bytes(p)
        print(name, len(p))


main()
