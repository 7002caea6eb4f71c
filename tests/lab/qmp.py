#!/usr/bin/python3
"""A minimal QMP client for the lab (stdlib only).

  qmp.py SOCK CMD [JSON_ARGS]   run one command, print its "return" as JSON
  qmp.py SOCK wait-migration    poll query-migrate until it completes or fails,
                                print the last answer (exit 1 unless completed)
  qmp.py SOCK wait-status S     wait until query-status says S (e.g. running)
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
    if what == "wait-migration":
        deadline = time.time() + 120
        while True:
            r = q.cmd("query-migrate")
            if r.get("status") in ("completed", "failed", "cancelled") or time.time() > deadline:
                print(json.dumps(r))
                sys.exit(0 if r.get("status") == "completed" else 1)
            time.sleep(0.02)
    elif what == "wait-status":
        deadline = time.time() + 120
        while True:
            r = q.cmd("query-status")
            if r.get("status") == sys.argv[3]:
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
