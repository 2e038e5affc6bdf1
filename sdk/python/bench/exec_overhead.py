#!/usr/bin/env python3
"""SDK overhead per exec: ``sb.exec(["true"])`` against the same request
made with raw ``httpx`` (post the JSON, parse the JSON answer), in the same
run, on the same sandbox and connection kind, interleaved so that drift in
the daemon or the machine hits both alike.

Usage (as root, with hull-sdk installed)::

    python3 bench/exec_overhead.py --serve            # a private daemon from HULL_BIN
    HULL_SOCKET=/run/hull/hull.sock python3 bench/exec_overhead.py   # a running one

Prints p50/p90/mean for both and the SDK's extra time (difference of the
p50s, and the median of the paired differences). Numbers, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

import hull

DEFAULT_BIN = "/var/cache/hull/target/x86_64-unknown-linux-gnu/debug/hull"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def serve(binary: str) -> tuple[subprocess.Popen[bytes], str, str]:
    d = tempfile.mkdtemp(prefix="hull-bench-py", dir="/tmp")
    os.chmod(d, 0o755)
    sock = os.path.join(d, "hull.sock")
    proc = subprocess.Popen(
        [binary, "serve", "--socket", sock, "--state-dir", os.path.join(d, "state")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with hull.Hull(socket=sock) as c:
                c.health()
            return proc, sock, d
        except hull.HullError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"hull serve did not start (exit {proc.poll()})") from None
            time.sleep(0.05)


def client_side_cost(sandbox_id: str, answer: bytes, n: int = 20000) -> tuple[float, float]:
    """Microseconds per call of what each side does besides HTTP: the SDK
    builds and validates its request and reads the answer into a model;
    the raw client dumps and loads JSON."""
    from hull import _ops

    clock = time.perf_counter
    t0 = clock()
    for _ in range(n):
        call = _ops.exec_(sandbox_id, ["true"])
        call.parse(answer)
    sdk = (clock() - t0) / n * 1e6
    t0 = clock()
    for _ in range(n):
        json.dumps({"cmd": ["true"]}).encode()
        json.loads(answer)
    raw = (clock() - t0) / n * 1e6
    return sdk, raw


def rollout(socket: str | None, n: int, trials: int = 3) -> list[dict[str, float]]:
    """The README's rollout pattern with ``AsyncHull``: fork a snapshot
    ``n`` ways, one exec in each concurrently, destroy them concurrently."""
    import asyncio

    async def go() -> list[dict[str, float]]:
        out = []
        async with hull.AsyncHull(socket=socket) as c:
            async with c.sandbox(template="busybox") as base:
                snap = await base.snapshot()
            try:
                for _ in range(trials):
                    t0 = time.perf_counter()
                    sbs = await c.fork(snap, n, profile="rollout", ttl="10m")
                    t1 = time.perf_counter()
                    await asyncio.gather(*(s.exec("echo $((6*7))") for s in sbs))
                    t2 = time.perf_counter()
                    await asyncio.gather(*(s.destroy() for s in sbs))
                    t3 = time.perf_counter()
                    out.append({"fork_s": t1 - t0, "exec_all_s": t2 - t1, "destroy_all_s": t3 - t2})
            finally:
                await c.snapshots.remove(snap)
        return out

    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="measured execs of each kind (default 1000)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--template", default="busybox")
    ap.add_argument("--serve", action="store_true", help="start a private daemon from HULL_BIN (or the default build)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    ap.add_argument("--fork", type=int, default=0, metavar="N", help="also time an N-way fork rollout (AsyncHull)")
    args = ap.parse_args()

    proc = tmpdir = None
    if args.serve:
        proc, sock, tmpdir = serve(os.environ.get("HULL_BIN") or DEFAULT_BIN)
        client = hull.Hull(socket=sock)
    else:
        client = hull.Hull()
    ep = client.endpoint
    if ep.url is not None:
        headers = {"authorization": f"Bearer {ep.token}"} if ep.token else {}
        raw = httpx.Client(base_url=ep.url, headers=headers, trust_env=False)
    else:
        raw = httpx.Client(transport=httpx.HTTPTransport(uds=ep.socket), base_url="http://localhost", trust_env=False)
    try:
        with client.sandbox(template=args.template) as sb:
            path = f"/v1/sandboxes/{sb.id}/exec"
            body = {"cmd": ["true"]}

            last: list[bytes] = []

            def raw_exec() -> None:
                r = raw.post(path, json=body)
                r.raise_for_status()
                assert r.json()["exit_code"] == 0
                last[:] = [r.content]

            def sdk_exec() -> None:
                assert sb.exec(["true"]).exit_code == 0

            for _ in range(args.warmup):
                raw_exec()
                sdk_exec()
            t_raw: list[float] = []
            t_sdk: list[float] = []
            clock = time.perf_counter
            for i in range(args.n):
                order = (raw_exec, sdk_exec) if i % 2 == 0 else (sdk_exec, raw_exec)
                for f in order:
                    t0 = clock()
                    f()
                    dt = (clock() - t0) * 1000
                    (t_raw if f is raw_exec else t_sdk).append(dt)
        last_answer = last[0]
        forks = rollout(ep.socket, args.fork) if args.fork and ep.socket else []
    finally:
        raw.close()
        if proc is not None:
            with httpx.Client(transport=httpx.HTTPTransport(uds=ep.socket), timeout=300) as c:
                c.post("http://localhost/v1/system/reset")
        client.close()
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            shutil.rmtree(tmpdir, ignore_errors=True)

    paired = statistics.median(s - r for s, r in zip(t_sdk, t_raw, strict=True))
    cpu_sdk, cpu_raw = client_side_cost(sb.id, last_answer)
    res = {
        "n": args.n,
        "endpoint": ep.describe() if not args.serve else "private daemon, unix socket",
        "raw_httpx_ms": {"p50": pct(t_raw, 0.5), "p90": pct(t_raw, 0.9), "mean": statistics.fmean(t_raw)},
        "sdk_ms": {"p50": pct(t_sdk, 0.5), "p90": pct(t_sdk, 0.9), "mean": statistics.fmean(t_sdk)},
        "overhead_p50_ms": pct(t_sdk, 0.5) - pct(t_raw, 0.5),
        "overhead_paired_median_ms": paired,
        "client_side_us": {"sdk": cpu_sdk, "raw": cpu_raw},
        "rollout": forks,
        "python": sys.version.split()[0],
        "httpx": httpx.__version__,
        "hull_sdk": hull.__version__,
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"exec `true` x{args.n} each, interleaved ({res['endpoint']}; Python {res['python']}, httpx {res['httpx']})")
    for k, label in (("raw_httpx_ms", "raw httpx"), ("sdk_ms", "hull SDK")):
        v = res[k]
        print(f"  {label:10} p50 {v['p50']:.3f} ms   p90 {v['p90']:.3f} ms   mean {v['mean']:.3f} ms")
    over = res["overhead_p50_ms"]
    print(f"  SDK overhead: {over:+.3f} ms (p50 difference), {paired:+.3f} ms (median paired difference)")
    print(
        f"  client-side work per call, no I/O: SDK {cpu_sdk:.1f} us (request model, JSON, answer model),"
        f" raw {cpu_raw:.1f} us (json.dumps + json.loads)"
    )
    for t in forks:
        print(
            f"  rollout x{args.fork} (AsyncHull): fork {t['fork_s']:.3f} s, one exec in each (gathered)"
            f" {t['exec_all_s']:.3f} s, destroy all (gathered) {t['destroy_all_s']:.3f} s"
        )


if __name__ == "__main__":
    main()
