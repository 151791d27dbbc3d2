#!/usr/bin/env python3
"""FT take-over time, stanza against the Go nats-streaming-server v0.25.6, side by side.

    benches/compare-ft.py [--runs 10] [--cores 2] [--prefill N]

For each run and each server (interleaved: stanza, Go, stanza, Go, ...): one Debian
nats-server on loopback, two streaming servers of that kind in FT mode on it (`-ns`) sharing
a fresh FILE store directory, and the stan.go probe (benches/ft-probe) connected and publishing
through NATS. Once one server is active (`/streaming/isFTActive` 200), the harness kill -9s it
and tells the probe, which publishes synchronously (20 ms ack wait, retried) until a publish
sent after the kill gets its PubAck: that time is the take-over as a client sees it (detection
of the dead active, the lock, store recovery, serving again). Prints median and max per server
and the ratio of the medians. `--prefill N` has the probe store N messages of 128 B first
(async, every one acknowledged), so that the take-over includes recovering them.

Not a test: figures depend on the machine; nothing is asserted.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import build_release_and_probe, free_port, go_binary, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANZA = os.path.join(ROOT, "target", "release", "stanza")
GO_SERVER_MODULE = "github.com/nats-io/nats-streaming-server@v0.25.6"


def ft_active(monitor):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/streaming/isFTActive", timeout=0.5) as r:
            return r.status == 200
    except OSError:
        return False


def one_run(kind, go_bin, probe_bin, cores, prefill):
    nats_port = free_port()
    nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(nats_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = tempfile.mkdtemp(prefix="compare-ft-")
    servers = []
    probe = None
    try:
        wait_port(nats_port)
        url = f"nats://127.0.0.1:{nats_port}"
        for _ in range(2):
            monitor = free_port()
            if kind == "stanza":
                cmd = [STANZA, "-ns", url, "--cores", str(cores)]
            else:
                cmd = [go_bin, "-ns", url]
            cmd += ["-cid", "ft-bench", "--ft_group", "bench", "-st", "file", "--dir", store,
                    "-m", str(monitor)]
            log = open(os.path.join(store, f"server-{len(servers)}.log"), "w")
            servers.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log), monitor))
            # The first one becomes active before the second starts.
            deadline = time.time() + 15
            while len(servers) == 1 and not ft_active(monitor):
                if time.time() > deadline:
                    raise RuntimeError(f"{kind}: no active server")
                time.sleep(0.02)
        active = next(p for p, m in servers if ft_active(m))
        probe = subprocess.Popen([probe_bin, url, "ft-bench", str(prefill)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        if probe.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{kind}: the probe did not connect")
        time.sleep(0.5)
        active.send_signal(signal.SIGKILL)
        probe.stdin.write("go\n")
        probe.stdin.flush()
        line = probe.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"{kind}: no PubAck after the kill")
        return float(line)
    except RuntimeError:
        for i in range(len(servers)):
            with open(os.path.join(store, f"server-{i}.log")) as f:
                print(f"--- {kind} server {i}:\n{f.read()}", file=sys.stderr)
        raise
    finally:
        for p in [probe, nats] + [s for s, _ in servers]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(store, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=0)
    args = ap.parse_args()
    probe_bin = build_release_and_probe(ROOT)
    go_bin = go_binary("nats-streaming-server", GO_SERVER_MODULE)
    times = {"stanza": [], "go": []}
    for _ in range(args.runs):
        for kind in times:
            times[kind].append(one_run(kind, go_bin, probe_bin, args.cores, args.prefill))
    print(f"kill -9 of the active to the first PubAck through the standby, {args.prefill:,} messages "
          f"stored, {args.runs} runs each (ms)")
    print(f"{'server':<28}{'median':>10}{'max':>10}   all")
    for kind, label in (("stanza", "stanza"), ("go", "nats-streaming-server 0.25.6")):
        t = times[kind]
        print(f"{label:<28}{statistics.median(t):>10.0f}{max(t):>10.0f}   {sorted(t)}")
    print(f"ratio (Go median / stanza median): {statistics.median(times['go']) / statistics.median(times['stanza']):.1f}x")


if __name__ == "__main__":
    main()
