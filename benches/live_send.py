#!/usr/bin/env python3
"""Runs a sender (the rest of the command line) and polls the receiving
veth's counters every 5 ms; writes "frames rate drops" to OUT: the frames
that arrived, the rate between the first and the last arrival (trafgen's
own report gives CPU time, and it first parses its packet list), and the
veth's rx drops. Usage: live_send.py DEV OUT CMD..."""
import subprocess
import sys
import time

dev, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]


def stat(k):
    with open(f"/sys/class/net/{dev}/statistics/{k}") as f:
        return int(f.read())


n0, d0 = stat("rx_packets"), stat("rx_dropped")
p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
first = last = None
n = n0
while True:
    done = p.poll() is not None
    now, c = time.monotonic(), stat("rx_packets")
    if c != n:
        if first is None:
            first = (now, n)
        last, n = (now, c), c
    if done:
        break
    time.sleep(0.005)
rate = round((last[1] - first[1]) / (last[0] - first[0])) if first and last and last[0] > first[0] else 0
with open(out, "w") as f:
    f.write(f"{n - n0} {rate} {stat('rx_dropped') - d0}\n")
