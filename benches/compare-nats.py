#!/usr/bin/env python3
"""Core NATS side by side: stanza against Debian's nats-server (the Go core NATS server).

One load generator (`stanza nats-bench`, plain threads and blocking sockets) drives both
servers on loopback. Each scenario runs REPEAT times per server, interleaved, each run on a
freshly started server; the table shows medians, the ratio, and each server's CPU seconds
per million published messages (from /proc/PID/stat before and after the run).

    python3 benches/compare-nats.py [--repeat 3] [--msgs 1000000] [--cores 2]
    python3 benches/compare-nats.py --cluster    # two routed nodes: publishers on one,
                                                 # the subscriber on the other

Not a test: figures depend on the machine; nothing is asserted.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import cpu_seconds, free_port, interleaved_medians, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANZA = os.path.join(ROOT, "target", "release", "stanza")

SCENARIOS = [
    # (name, publishers, subscribers, size)
    ("pub only, 16 B, 1 pub", 1, 0, 16),
    ("pub only, 128 B, 1 pub", 1, 0, 128),
    ("pub only, 16 B, 4 pubs", 4, 0, 16),
    ("pub only, 128 B, 4 pubs", 4, 0, 128),
    ("pub+sub, 16 B, 1 pub", 1, 1, 16),
    ("pub+sub, 128 B, 1 pub", 1, 1, 128),
    ("pub+sub, 16 B, 4 pubs", 4, 1, 16),
    ("pub+sub, 128 B, 4 pubs", 4, 1, 128),
]








CLUSTER_SCENARIOS = [
    ("2 nodes, pub+sub, 16 B, 1 pub", 1, 1, 16),
    ("2 nodes, pub+sub, 128 B, 1 pub", 1, 1, 128),
    ("2 nodes, pub+sub, 16 B, 4 pubs", 4, 1, 16),
    ("2 nodes, pub+sub, 128 B, 4 pubs", 4, 1, 128),
]

STANZA_EXTRA = []


def start(kind, port, cores, cluster=None):
    """`cluster`: (own route port, seed route port or None, node name) for a routed node."""
    route_flags = []
    if cluster:
        own, seed, name = cluster
        route_flags = ["--cluster", f"nats://127.0.0.1:{own}", "--cluster_name", "bench"]
        if seed:
            route_flags += ["--routes", f"nats-route://127.0.0.1:{seed}"]
    if kind == "stanza":
        cmd = [STANZA, "-a", "127.0.0.1", "-p", str(port), "--cores", str(cores)] + STANZA_EXTRA
        if cluster:
            # One streaming server per cluster ID on a routed cluster.
            cmd += route_flags + ["-cid", f"bench-{cluster[2]}"]
        env = None
    else:
        cmd = [shutil.which("nats-server"), "-a", "127.0.0.1", "-p", str(port)] + route_flags
        env = dict(os.environ, GOMAXPROCS=str(cores))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_port(port)
    return proc


def run_once(kind, scenario, msgs, cores, cluster=False):
    _, pubs, subs, size = scenario
    port = free_port()
    procs = []
    extra = []
    if cluster:
        route_a, route_b, port_b = free_port(), free_port(), free_port()
        procs.append(start(kind, port, cores, (route_a, None, "a")))
        procs.append(start(kind, port_b, cores, (route_b, route_a, "b")))
        extra = ["--sub-server", f"127.0.0.1:{port_b}"]
    else:
        procs.append(start(kind, port, cores))
    try:
        before = sum(cpu_seconds(p.pid) for p in procs)
        out = subprocess.run(
            [STANZA, "nats-bench", "--server", f"127.0.0.1:{port}", "--np", str(pubs),
             "--ns", str(subs), "--n", str(msgs // pubs), "--ms", str(size), "--json",
             "--timeout", "120"] + extra,
            capture_output=True, text=True, timeout=180)
        after = sum(cpu_seconds(p.pid) for p in procs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {scenario[0]}: {out.stderr or out.stdout}")
    report = json.loads(out.stdout)
    report["cpu_per_million"] = (after - before) / (report["published"] / 1e6)
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--msgs", type=int, default=1_000_000, help="messages per run (all publishers)")
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--only", help="run scenarios whose name contains this text")
    ap.add_argument("--stanza-args", default="", help="extra flags for stanza, e.g. --spin_before_park=100us")
    ap.add_argument("--cluster", action="store_true",
                    help="two routed nodes of each server: publishers on one, the subscriber on the other; CPU is both nodes'")
    args = ap.parse_args()
    STANZA_EXTRA.extend(args.stanza_args.split())

    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    if not shutil.which("nats-server"):
        print("nats-server not found; installing Debian's package (needs root)", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nats-server"], check=True)
    version = subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip()

    rows = []
    for scenario in CLUSTER_SCENARIOS if args.cluster else SCENARIOS:
        if args.only and args.only not in scenario[0]:
            continue
        def once(kind):
            report = run_once(kind, scenario, args.msgs, args.cores, args.cluster)
            return report["pub_msgs_per_sec"], report["cpu_per_million"]
        med = interleaved_medians(scenario[0], ("stanza", "nats-server"), args.repeat, once)
        rows.append((scenario[0], med["stanza"][0], med["nats-server"][0],
                     med["stanza"][1], med["nats-server"][1]))

    print(f"\nstanza vs {version}; {args.cores} cores each; {args.msgs} msgs per run; "
          f"median of {args.repeat}, interleaved; load generator: stanza nats-bench\n")
    print("| scenario | stanza msgs/s | nats-server msgs/s | ratio | stanza CPU s/M msgs | nats-server CPU s/M msgs |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s, n, cs, cn in rows:
        print(f"| {name} | {s:,.0f} | {n:,.0f} | {s / n:.2f}x | {cs:.3f} | {cn:.3f} |")


if __name__ == "__main__":
    main()
