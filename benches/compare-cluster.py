#!/usr/bin/env python3
"""Raft clustering, stanza against the Go nats-streaming-server v0.25.6, side by side.

    benches/compare-cluster.py [--runs 3] [--msgs 100000] [--cores 2] [--failovers 3]
                               [--plot chart.svg]

Each run, per server kind (interleaved: stanza, Go, stanza, Go, ...): one Debian nats-server
on loopback and three streaming nodes of that kind clustered through it (`-ns`; node IDs a, b,
c as peers; FILE store; the Go nodes with the reference's flags, stanza with the same
configuration). Once a leader serves, stan-bench runs on
the nats-server: async publish (1 publisher, 128 B) and 1 publisher + 1 subscriber; then
replay (`stanza bench --replay`: the channel filled first, then a fresh deliver-all subscriber
timed from subscribe to the last message). Reported: msgs/s and CPU per message summed over
the three streaming processes, and beside it what the nats-server and the client used (the
machine is shared: on 2 cores their CPU bounds what the servers can be given). Then, with
--failovers F, F times: the stan.go probe (benches/ft-probe) publishes, the leader is killed
with SIGKILL, and the time to the first PubAck of a publish sent after the kill is taken.

Not a test: figures depend on the machine; nothing is asserted.
"""

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
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import bar_chart, build_release_and_probe, cpu_seconds, free_port, go_binary, wait_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANZA = os.path.join(ROOT, "target", "release", "stanza")
GO_SERVER_MODULE = "github.com/nats-io/nats-streaming-server@v0.25.6"
STAN_BENCH_MODULE = "github.com/nats-io/stan.go/examples/stan-bench@v0.10.4"
NODES = ["a", "b", "c"]


def serverz(monitor):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/streaming/serverz", timeout=1) as r:
            return json.load(r)
    except (OSError, ValueError):
        return {}


class Cluster:
    def __init__(self, kind, go_bin, cores):
        self.kind = kind
        self.dir = tempfile.mkdtemp(prefix=f"compare-cluster-{kind}-")
        self.nats_port = free_port()
        self.nats = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(self.nats_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.nats_port)
        self.url = f"nats://127.0.0.1:{self.nats_port}"
        self.go_bin = go_bin
        self.cores = cores
        self.nodes = {}
        for name in NODES:
            self.start(name)

    def start(self, name):
        monitor = self.nodes.get(name, (None, free_port()))[1]
        store = os.path.join(self.dir, name)
        env = dict(os.environ)
        if self.kind == "stanza":
            conf = os.path.join(self.dir, f"{name}.conf")
            with open(conf, "w") as f:
                f.write(f'streaming {{\n cluster_id: bench\n store: file\n dir: "{store}/store"\n'
                        f' cluster {{ node_id: "{name}", peers: ["a", "b", "c"], '
                        f'log_path: "{store}/raft" }}\n}}\n')
            cmd = [STANZA, "-c", conf, "-ns", self.url, "--cores", str(self.cores), "-m", str(monitor)]
        else:
            cmd = [self.go_bin, "-ns", self.url, "-cid", "bench", "-st", "file", "--dir", f"{store}/store",
                   "-clustered", "-cluster_node_id", name, "-cluster_peers", "a,b,c",
                   "-cluster_log_path", f"{store}/raft", "-m", str(monitor)]
        log = open(os.path.join(self.dir, f"{name}.log"), "a")
        self.nodes[name] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env), monitor)

    def leader(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, (proc, monitor) in self.nodes.items():
                if proc.poll() is None and serverz(monitor).get("role") == "Leader":
                    return name
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind}: no leader")

    def cpu(self):
        return sum(cpu_seconds(p.pid) for p, _ in self.nodes.values() if p.poll() is None)

    def nats_cpu(self):
        return cpu_seconds(self.nats.pid)

    def close(self):
        for p in [self.nats] + [p for p, _ in self.nodes.values()]:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def child_cpu():
    """CPU seconds used so far by this script's finished children (the load clients)."""
    t = os.times()
    return t.children_user + t.children_system


def stan_bench(bench_bin, url, msgs, subs, channel):
    out = subprocess.run([bench_bin, "-s", url, "-c", "bench", "-np", "1", "-ns", str(subs), "-n", str(msgs),
                          "-ms", "128", channel], capture_output=True, text=True, timeout=300)
    for line in out.stdout.splitlines():
        if "Pub stats:" in line:
            return float(line.split("Pub stats:")[1].split("msgs/sec")[0].replace(",", "").strip())
    raise RuntimeError(f"stan-bench: {out.stdout}\n{out.stderr}")


def stanza_bench(url, args, which):
    out = subprocess.run([STANZA, "bench", "-s", url, "-c", "bench", "--json", "--timeout", "300"] + args,
                         capture_output=True, text=True, timeout=330)
    if out.returncode != 0:
        raise RuntimeError(f"stanza bench: {out.stdout}\n{out.stderr}")
    return json.loads(out.stdout)[which]["msgs_per_sec"]


def measured(c, run):
    """Runs `run`, returning its rate and the CPU the streaming nodes, the nats-server and
    the client used meanwhile."""
    before = (c.cpu(), c.nats_cpu(), child_cpu())
    rate = run()
    after = (c.cpu(), c.nats_cpu(), child_cpu())
    return rate, [a - b for a, b in zip(after, before)]


def one_run(kind, go_bin, bench_bin, probe_bin, cores, msgs, failovers):
    c = Cluster(kind, go_bin, cores)
    try:
        c.leader()
        time.sleep(1.0)
        rows = {}
        for label, subs in (("async publish", 0), ("1 pub + 1 sub", 1)):
            rate, used = measured(c, lambda: stan_bench(bench_bin, c.url, msgs, subs, f"bench-{subs}"))
            rows[label] = (rate, [u / msgs * 1e6 for u in used])
        # Replay: filled first (outside the measurement), then one run that publishes one
        # message and reads everything back.
        stanza_bench(c.url, ["--np", "1", "-n", str(msgs), "--mpa", "4096", "replay"], "pub")
        rate, used = measured(c, lambda: stanza_bench(
            c.url, ["--np", "1", "-n", "1", "--replay", "--mpa", "4096", "replay"], "replay"))
        rows["replay"] = (rate, [u / msgs * 1e6 for u in used])
        times = []
        for _ in range(failovers):
            leader = c.leader()
            probe = subprocess.Popen([probe_bin, c.url, "bench", "0"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
            if probe.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{kind}: the probe did not connect")
            time.sleep(0.5)
            c.nodes[leader][0].send_signal(signal.SIGKILL)
            c.nodes[leader][0].wait()
            probe.stdin.write("go\n")
            probe.stdin.flush()
            line = probe.stdout.readline().strip()
            probe.kill()
            probe.wait()
            if not line:
                raise RuntimeError(f"{kind}: no PubAck after the kill")
            times.append(float(line))
            c.start(leader)
            time.sleep(3.0)
        return rows, times
    except (RuntimeError, subprocess.TimeoutExpired):
        for name in NODES:
            with open(os.path.join(c.dir, f"{name}.log")) as f:
                print(f"--- {kind} node {name}:\n{f.read()[-3000:]}", file=sys.stderr)
        raise
    finally:
        c.close()


ROWS = ("async publish", "1 pub + 1 sub", "replay")


def plot(path, medians, failover):
    """Bars of stanza / Go: rate, and CPU per message (Go's over stanza's), per row; and the
    fail-over time (Go's over stanza's)."""
    bars = []
    for label in ROWS:
        (sr, sc), (gr, gc) = medians[label]["stanza"], medians[label]["go"]
        bars.append((f"{label}: msgs/s", sr / gr))
        bars.append((f"{label}: less CPU per msg", gc / sc))
    if failover:
        bars.append(("fail-over: faster first PubAck", failover["go"] / failover["stanza"]))
    bar_chart(path, "3-node raft cluster: stanza / nats-streaming-server (medians; higher is better)",
              bars, left=300, width=860)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--msgs", type=int, default=100000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--plot", help="write an SVG chart of the ratios here")
    args = ap.parse_args()
    probe_bin = build_release_and_probe(ROOT)
    go_bin = go_binary("nats-streaming-server", GO_SERVER_MODULE)
    bench_bin = go_binary("stan-bench", STAN_BENCH_MODULE)
    results = {"stanza": [], "go": []}
    for _ in range(args.runs):
        for kind in results:
            results[kind].append(one_run(kind, go_bin, bench_bin, probe_bin, args.cores, args.msgs,
                                         args.failovers))
    print(f"3-node cluster on loopback (-ns, FILE store), {args.msgs:,} msgs of 128 B, "
          f"{args.runs} runs each, medians; CPU in us per message: the three streaming processes "
          f"summed, then the nats-server and the load client")
    print(f"{'row':<16}{'server':<30}{'msgs/s':>12}{'nodes':>8}{'nats':>8}{'client':>8}")
    medians = {}
    for label in ROWS:
        medians[label] = {}
        for kind, name in (("stanza", "stanza"), ("go", "nats-streaming-server 0.25.6")):
            rate = statistics.median(r[0][label][0] for r in results[kind])
            cpu = [statistics.median(r[0][label][1][i] for r in results[kind]) for i in range(3)]
            medians[label][kind] = (rate, cpu[0])
            print(f"{label:<16}{name:<30}{rate:>12,.0f}{cpu[0]:>8.2f}{cpu[1]:>8.2f}{cpu[2]:>8.2f}")
        s, g = medians[label]["stanza"], medians[label]["go"]
        print(f"{'':<16}{'ratio (stanza / Go)':<30}{s[0] / g[0]:>11.2f}x{g[1] / s[1]:>7.2f}x less CPU")
    failover = {}
    if args.failovers:
        print("kill -9 of the leader to the first PubAck of a publish sent after it (ms)")
        for kind in results:
            t = [x for r in results[kind] for x in r[1]]
            failover[kind] = statistics.median(t)
            print(f"  {kind:<8} median {statistics.median(t):.0f}  max {max(t):.0f}  all {sorted(t)}")
    if args.plot:
        plot(args.plot, medians, failover)
        print(f"chart: {args.plot}")


if __name__ == "__main__":
    main()
