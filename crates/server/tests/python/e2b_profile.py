"""Where the time of E2B's create + commands.run("true") goes: the SDK's
calls next to the raw HTTP calls it makes, timed in the same run against
the same daemon (configured like e2b_bench.py: E2B_API_URL,
E2B_SANDBOX_URL, E2B_API_KEY). Raw calls use one keep-alive httpx client;
the difference between a row and its raw twin is the SDK's own time.

rows:
  sdk create            Sandbox.create()
  raw create (e2b)      POST /e2b/v2/sandboxes, the SDK's body
  raw create (v1)       POST /v1/sandboxes {"template": "host"} (hull's API)
  sdk run(true)         sb.commands.run("true")  (envd Start of bash -l -c true)
  raw Start bash -l     Connect Start {"cmd": "/bin/bash", "args": ["-l", "-c", "true"]}
  raw Start true        Connect Start {"cmd": "true"}
  raw v1 exec true      POST /v1/sandboxes/{id}/exec {"cmd": ["true"]}

usage: e2b_profile.py [ITERATIONS]   (default 50)
"""

import json
import os
import statistics
import struct
import sys
import time

import httpx
from e2b import Sandbox

API = os.environ["E2B_API_URL"]
ENVD = os.environ["E2B_SANDBOX_URL"]
KEY = os.environ["E2B_API_KEY"]
BASE = API.rsplit("/e2b", 1)[0]
TOKEN = KEY.removeprefix("e2b_")


def envelope(msg):
    b = json.dumps(msg).encode()
    return struct.pack(">BI", 0, len(b)) + b


def start(c, sid, access, cmd, args):
    """A Connect server stream of process.Process/Start, read to its end."""
    hdr = {
        "E2b-Sandbox-Id": sid,
        "E2b-Sandbox-Port": "49983",
        "X-Access-Token": access,
        "Content-Type": "application/connect+json",
        "Connect-Protocol-Version": "1",
    }
    body = envelope({"process": {"cmd": cmd, "args": args, "envs": {}}})
    with c.stream("POST", f"{ENVD}/process.Process/Start", headers=hdr, content=body) as r:
        data = r.read()
    assert r.status_code == 200 and b'"end"' in data, data[:300]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    rows = {k: [] for k in [
        "sdk create", "raw create (e2b)", "raw create (v1)",
        "sdk run(true)", "raw Start bash -l", "raw Start true", "raw v1 exec true",
    ]}
    c = httpx.Client(timeout=60)
    e2b_hdr = {"X-API-Key": KEY, "Content-Type": "application/json"}
    v1_hdr = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for i in range(n + 1):
        t = time.perf_counter()
        sb = Sandbox.create()
        t1 = time.perf_counter()
        sb.commands.run("true")
        t2 = time.perf_counter()
        sb.kill()
        t3 = time.perf_counter()
        r = c.post(f"{API}/v2/sandboxes", headers=e2b_hdr,
                   content=b'{"templateID":"base","metadata":{},"envVars":{}}')
        t4 = time.perf_counter()
        assert r.status_code == 201, r.text
        info = r.json()
        sid, access = info["sandboxID"], info["envdAccessToken"]
        t5 = time.perf_counter()
        start(c, sid, access, "/bin/bash", ["-l", "-c", "true"])
        t6 = time.perf_counter()
        start(c, sid, access, "true", [])
        t7 = time.perf_counter()
        c.delete(f"{API}/sandboxes/{sid}", headers=e2b_hdr)
        t8 = time.perf_counter()
        r = c.post(f"{BASE}/v1/sandboxes", headers=v1_hdr, content=b'{"template":"host"}')
        t9 = time.perf_counter()
        assert r.status_code == 201, r.text
        vid = r.json()["id"]
        t10 = time.perf_counter()
        r = c.post(f"{BASE}/v1/sandboxes/{vid}/exec", headers=v1_hdr, content=b'{"cmd":["true"]}')
        t11 = time.perf_counter()
        assert r.status_code == 200, r.text
        c.delete(f"{BASE}/v1/sandboxes/{vid}", headers=v1_hdr)
        if i == 0:
            continue  # warm-up
        ms = lambda a, b: (b - a) * 1000
        rows["sdk create"].append(ms(t, t1))
        rows["sdk run(true)"].append(ms(t1, t2))
        rows["raw create (e2b)"].append(ms(t3, t4))
        rows["raw Start bash -l"].append(ms(t5, t6))
        rows["raw Start true"].append(ms(t6, t7))
        rows["raw create (v1)"].append(ms(t8, t9))
        rows["raw v1 exec true"].append(ms(t10, t11))
    for name, xs in rows.items():
        xs = sorted(xs)
        print(f"{name:18} p50 {statistics.median(xs):7.2f} ms  p90 {xs[int(0.9 * (len(xs) - 1))]:7.2f} ms  min {xs[0]:7.2f} ms  (n={n})")


if __name__ == "__main__":
    main()
