"""Helpers shared by the side-by-side benchmark scripts: loopback ports, a server's CPU
seconds from /proc, waiting for a server to listen."""

import os
import shutil
import socket
import subprocess
import tempfile
import statistics
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ticks(stat_path):
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid):
    """CPU seconds a process has used so far. Clock ticks (/proc/PID/stat) are 10 ms, 7% of
    what a server spends on 200,000 messages, so live threads are counted in nanoseconds
    (/proc/PID/task/TID/schedstat); only what threads that have exited used comes from the
    process's tick totals, which still hold it."""
    total_ticks = _ticks(f"/proc/{pid}/stat")
    live_ns = 0
    live_ticks = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            ticks = _ticks(f"/proc/{pid}/task/{tid}/stat")
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile: its time is in the process totals
        live_ns += ns
        live_ticks += ticks
    exited = max(0, total_ticks - live_ticks) / CLK_TCK
    return live_ns / 1e9 + exited


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def interleaved_medians(name, kinds, repeat, run):
    """Runs `run(kind)` `repeat` times per kind, interleaved (kind A, kind B, A, B, ...), and
    returns {kind: (median rate, median cpu)} from the (rate, cpu) pairs `run` returns."""
    results = {k: [] for k in kinds}
    for _ in range(repeat):
        for kind in kinds:
            results[kind].append(run(kind))
    print(f"done: {name}: {results}", file=sys.stderr)
    return {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
            for k, v in results.items()}


def go_binary(name, module):
    """A Go program on PATH or in GOPATH/bin, installed with `go install module` if absent."""
    gopath = subprocess.run(["go", "env", "GOPATH"], capture_output=True, text=True).stdout.strip()
    path = shutil.which(name) or os.path.join(gopath, "bin", name)
    if not os.path.exists(path):
        subprocess.run(["go", "install", module], check=True)
    return path


def build_release_and_probe(root):
    """Builds stanza (release) and the stan.go fail-over probe (benches/ft-probe); returns the
    probe's path."""
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=root, check=True)
    probe_bin = os.path.join(tempfile.gettempdir(), "stanza-ft-probe")
    subprocess.run(["go", "build", "-o", probe_bin, "."], cwd=os.path.join(root, "benches", "ft-probe"),
                   check=True)
    return probe_bin


def bar_chart(path, title, bars, left=420, width=900):
    """An SVG of horizontal bars, one per (label, ratio), with a dashed line at 1x; bars under
    1x are red."""
    bar_h, gap = 18, 6
    height = 40 + len(bars) * (bar_h + gap) + 30
    top = max([b[1] for b in bars] + [1.0]) * 1.1
    scale = (width - left - 60) / top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    for i, (label, ratio) in enumerate(bars):
        y = 35 + i * (bar_h + gap)
        colour = "#2b7bb9" if ratio >= 1 else "#c0392b"
        out.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{label}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{ratio * scale:.1f}" height="{bar_h}" fill="{colour}"/>')
        out.append(f'<text x="{left + ratio * scale + 4:.1f}" y="{y + 13}">{ratio:.2f}x</text>')
    one = left + scale
    out.append(f'<line x1="{one:.1f}" y1="30" x2="{one:.1f}" y2="{height - 25}" stroke="black" stroke-dasharray="4,3"/>')
    out.append(f'<text x="{one:.1f}" y="{height - 10}" text-anchor="middle">1x</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
