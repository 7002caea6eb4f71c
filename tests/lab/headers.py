#!/usr/bin/python3
"""Cuts the migration streams' frames of a pcap (untunneled TCP on ports
49152-49215) right after their TCP header: the RAM pages they carry are not
headers. Every other frame keeps what the capture kept. orig_len is untouched.

  headers.py IN.pcap OUT.pcap
"""
import struct, sys

src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    data = f.read()
magic = data[:4]
end = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
out = [data[:24]]
i = 24
while i + 16 <= len(data):
    ts, tu, cap, orig = struct.unpack(end + "IIII", data[i : i + 16])
    frame = data[i + 16 : i + 16 + cap]
    i += 16 + cap
    if len(frame) >= 34 and frame[12:14] == b"\x08\x00" and frame[23] == 6:
        ihl = (frame[14] & 0x0F) * 4
        t = 14 + ihl
        if len(frame) >= t + 13:
            sport, dport = struct.unpack(">HH", frame[t : t + 4])
            if 49152 <= sport <= 49215 or 49152 <= dport <= 49215:
                frame = frame[: t + (frame[t + 12] >> 4) * 4]
    out.append(struct.pack(end + "IIII", ts, tu, len(frame), orig) + frame)
with open(dst, "wb") as f:
    f.write(b"".join(out))
