#!/usr/bin/python3
"""A minimal QMP client for the lab (stdlib only).

  qmp.py SOCK CMD [JSON_ARGS]   run one command, print its "return" as JSON
  qmp.py SOCK migrate URI BW    set max-bandwidth BW (bytes/s), migrate to URI
                                and poll query-migrate on the same connection
                                until it completes or fails; print the last
                                answer (exit 1 unless completed)
  qmp.py SOCK wait-status S [F] wait until query-status says S (e.g. running);
                                with F, create file F once connected

The migration and the wait add "events": each STOP or RESUME event seen while connected,
by name, as its QEMU timestamp in seconds (the host's real-time clock, the
clock tcpdump stamps frames with): the instant the source paused the guest
and the destination resumed it.
"""
import json, socket, sys, time


class Qmp:
    def __init__(self, path, timeout=60.0):
        deadline = time.time() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.s.settimeout(timeout)
        self.events = {}
        self.f = self.s.makefile("rwb")
        self.read()  # the greeting
        self.cmd("qmp_capabilities")

    def read(self):
        while True:
            line = self.f.readline()
            if not line:
                raise EOFError("QMP closed")
            m = json.loads(line)
            if "event" not in m:
                return m
            if m["event"] in ("STOP", "RESUME"):
                t = m["timestamp"]
                self.events.setdefault(m["event"], t["seconds"] + t["microseconds"] / 1e6)

    def cmd(self, name, args=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write((json.dumps(msg) + "\n").encode())
        self.f.flush()
        m = self.read()
        if "error" in m:
            raise RuntimeError(f"{name}: {m['error']}")
        return m["return"]


def main():
    sock, what = sys.argv[1], sys.argv[2]
    q = Qmp(sock)
    if what == "migrate":
        q.cmd("migrate-set-parameters", {"max-bandwidth": int(sys.argv[4])})
        q.cmd("migrate", {"uri": sys.argv[3]})
        deadline = time.time() + 120
        while True:
            r = q.cmd("query-migrate")
            if r.get("status") in ("completed", "failed", "cancelled") or time.time() > deadline:
                r["events"] = q.events
                print(json.dumps(r))
                sys.exit(0 if r.get("status") == "completed" else 1)
            time.sleep(0.02)
    elif what == "wait-status":
        if len(sys.argv) > 4:
            open(sys.argv[4], "w").close()
        deadline = time.time() + 120
        while True:
            r = q.cmd("query-status")
            if r.get("status") == sys.argv[3]:
                r["events"] = q.events
                print(json.dumps(r))
                return
            if time.time() > deadline:
                sys.exit(f"status stayed {r.get('status')}")
            time.sleep(0.02)
    else:
        args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
        print(json.dumps(q.cmd(what, args)))


if __name__ == "__main__":
    main()
