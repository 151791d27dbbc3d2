#!/usr/bin/env python3
"""NATS Streaming side by side: stanza against the Go nats-streaming-server v0.25.6, both on
the memory store, driven by the reference load tool stan-bench v0.10.4 (the Go client, which
shares the machine's cores with the server). Each scenario runs REPEAT times per server,
interleaved, each run on a freshly started server; the table shows medians of publish msgs/s,
the ratio, and each server's CPU microseconds per published message (from /proc/PID/stat
before and after the run).

    python3 benches/compare-stan.py [--repeat 3] [--msgs 200000]

Installs the Go server and stan-bench with `go install` if they are missing. Not a test:
figures depend on the machine; nothing is asserted.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import cpu_seconds, free_port, interleaved_medians, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANZA = os.path.join(ROOT, "target", "release", "stanza")
GOBIN = os.path.join(subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True).stdout.strip() or os.path.expanduser("~/go"), "bin")

SCENARIOS = [
    # (name, channels, publishers per channel, subscribers per channel)
    ("async publish 128 B, 1 pub", 1, 1, 0),
    ("1 pub + 1 sub, 128 B", 1, 1, 1),
    ("4 channels x (1 pub + 1 sub), 128 B", 4, 1, 1),
]


def tool(name, module):
    path = shutil.which(name) or os.path.join(GOBIN, name)
    if not os.path.exists(path):
        print(f"{name} not found; go install {module}", file=sys.stderr)
        subprocess.run(["go", "install", module], check=True)
    return path








def start(kind, port, go_server):
    if kind == "stanza":
        cmd = [STANZA, "-a", "127.0.0.1", "-p", str(port), "-mm", "0", "-mb", "0"]
    else:
        cmd = [go_server, "-a", "127.0.0.1", "-p", str(port), "-mm", "0", "-mb", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    time.sleep(0.3)
    return proc


PUB_RATE = re.compile(r"Pub stats: ([\d,]+) msgs/sec")
ALL_RATE = re.compile(r"NATS Streaming Pub(?:/Sub)? stats: ([\d,]+) msgs/sec")


def run_once(kind, scenario, msgs, go_server, bench):
    _, channels, pubs, subs = scenario
    port = free_port()
    proc = start(kind, port, go_server)
    try:
        before = cpu_seconds(proc.pid)
        runs = [subprocess.Popen(
            [bench, "-s", f"nats://127.0.0.1:{port}", "-np", str(pubs), "-ns", str(subs),
             "-n", str(msgs), "-ms", "128", "-id", f"bench-{c}", f"bench.channel.{c}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for c in range(channels)]
        outputs = [r.communicate(timeout=300)[0] for r in runs]
        after = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    rate = 0.0
    for out in outputs:
        m = PUB_RATE.search(out) or ALL_RATE.search(out)
        if not m:
            raise RuntimeError(f"{kind} {scenario[0]}: no rate in output:\n{out}")
        rate += float(m.group(1).replace(",", ""))
    published = msgs * channels
    return rate, (after - before) * 1e6 / published


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--msgs", type=int, default=200_000, help="messages per publisher per run")
    ap.add_argument("--only", help="run scenarios whose name contains this text")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    go_server = tool("nats-streaming-server", "github.com/nats-io/nats-streaming-server@v0.25.6")
    bench = tool("stan-bench", "github.com/nats-io/stan.go/examples/stan-bench@v0.10.4")

    rows = []
    for scenario in SCENARIOS:
        if args.only and args.only not in scenario[0]:
            continue
        med = interleaved_medians(scenario[0], ("stanza", "go"), args.repeat,
                                  lambda kind: run_once(kind, scenario, args.msgs, go_server, bench))
        rows.append((scenario[0], med["stanza"][0], med["go"][0], med["stanza"][1], med["go"][1]))

    print(f"\nstanza vs nats-streaming-server v0.25.6, memory store, loopback, {os.cpu_count()} cores shared "
          f"with the client; stan-bench v0.10.4; {args.msgs} msgs per publisher; median of {args.repeat}, interleaved\n")
    print("| scenario | stanza pub msgs/s | Go pub msgs/s | ratio | stanza server CPU us/msg | Go server CPU us/msg | CPU ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, s, g, cs, cg in rows:
        print(f"| {name} | {s:,.0f} | {g:,.0f} | {s / g:.2f}x | {cs:.2f} | {cg:.2f} | {cg / cs:.1f}x less |")


if __name__ == "__main__":
    main()
