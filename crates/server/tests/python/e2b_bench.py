"""E2B SDK end-to-end latency on hull: Sandbox.create() + commands.run("true"),
the operation E2B's own numbers quote (~440 ms on its cloud). Configured like
any E2B program (E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY; docs/compat-e2b.md).
Each iteration is timed from before create to after the command's end; the
kill that follows is timed separately. Prints milliseconds.

usage: e2b_bench.py [ITERATIONS] [TEMPLATE] [offline]   (defaults: 50, base)
  offline: create with allow_internet_access=False (hull's network `none`)
"""

import statistics
import sys
import time

from e2b import Sandbox


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    template = sys.argv[2] if len(sys.argv) > 2 else "base"
    opts = {"allow_internet_access": False} if "offline" in sys.argv[3:] else {}
    # Warm up: connections, the template's first mount.
    sb = Sandbox.create(template, **opts)
    sb.commands.run("true")
    sb.kill()
    total, create, run, kill = [], [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        sb = Sandbox.create(template, **opts)
        t1 = time.perf_counter()
        sb.commands.run("true")
        t2 = time.perf_counter()
        sb.kill()
        t3 = time.perf_counter()
        total.append((t2 - t0) * 1000)
        create.append((t1 - t0) * 1000)
        run.append((t2 - t1) * 1000)
        kill.append((t3 - t2) * 1000)
    for name, xs in [
        ("create+run(true)", total),
        ("  create", create),
        ("  run(true)", run),
        ("kill", kill),
    ]:
        print(
            f"{name:18} p50 {statistics.median(xs):7.2f} ms  p90 {pct(xs, 90):7.2f} ms  "
            f"min {min(xs):7.2f} ms  (n={n}, template {template}{', offline' if opts else ''})"
        )


if __name__ == "__main__":
    main()
