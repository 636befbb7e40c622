"""Peak memory of a whole command: the process and every descendant (data workers), start to end.

    python benchmarks/peak_rss.py --out benchmarks/results/x.json -- python run/train.py --config configs/demo.yaml

Every ``--interval`` seconds the process tree is read from /proc: the sum of the processes' RSS
(what ``top`` adds up: pages shared between a parent and its forked workers count once per
process), the sum of their PSS (``smaps_rollup``: shared pages split between their users, so the
tree's true footprint) and the largest single RSS. The peaks of those sums, the peak of the
parent's own VmHWM, ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the largest single process, what
``/usr/bin/time -v`` prints) and a timeline (one row per second) are written as JSON. Sampling
can miss a spike shorter than the interval (PSS is read every ``--pss-every`` readings only); the
kernel's VmHWM of the root process cannot.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import machine_info  # noqa: E402


def _children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def process_tree(root: int):
    """``root`` and all its descendants (pids)."""
    kids, out, todo = _children_map(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _status_kb(pid: int, keys=("VmRSS", "VmHWM")):
    vals = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k = line.split(":", 1)[0]
                if k in keys:
                    vals[k] = int(line.split()[1])
    except OSError:
        pass
    return vals


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def sample_tree(root: int, pss: bool = True) -> dict:
    """One reading of the tree: processes, RSS sum, PSS sum (when ``pss``: reading smaps_rollup of a
    large process costs milliseconds of CPU), largest RSS, root's VmHWM (MB)."""
    pids = process_tree(root)
    rss = {p: _status_kb(p).get("VmRSS", 0) for p in pids}
    out = {"processes": len(pids), "rss_sum_mb": sum(rss.values()) / 1024,
           "rss_max_mb": max(rss.values(), default=0) / 1024, "root_hwm_mb": _status_kb(root).get("VmHWM", 0) / 1024}
    if pss:
        out["pss_sum_mb"] = sum(pss_kb(p) for p in pids) / 1024
    return out


def measure(cmd, interval=0.5, pss_every=4, env=None):
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env)
    peaks = {"rss_sum_mb": 0.0, "pss_sum_mb": 0.0, "rss_max_mb": 0.0, "root_hwm_mb": 0.0, "processes": 0}
    at = {}
    timeline, last_row, n = [], -1.0, 0
    while proc.poll() is None:
        s = sample_tree(proc.pid, pss=n % pss_every == 0)
        n += 1
        t = time.time() - t0
        for k, v in s.items():
            if v > peaks[k]:
                peaks[k], at[k] = v, round(t, 1)
        if t - last_row >= 1.0:
            timeline.append({"t": round(t, 1), **{k: round(v, 1) for k, v in s.items()}})
            last_row = t
        time.sleep(interval)
    wall = time.time() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"command": " ".join(cmd), "returncode": proc.returncode, "wall_s": round(wall, 1),
            "peak": {k: round(v, 1) for k, v in peaks.items()}, "peak_at_s": at,
            "ru_maxrss_largest_process_mb": round(ru.ru_maxrss / 1024, 1),
            "sample_interval_s": interval, "pss_every_samples": pss_every, "timeline": timeline}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between readings of the tree")
    p.add_argument("--pss-every", type=int, default=4, help="read PSS every N readings (it costs CPU)")
    p.add_argument("--label", default="", help="a note stored with the result")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command ...")
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        p.error("no command given (put it after --)")
    res = measure(cmd, a.interval, a.pss_every)
    res["label"] = a.label
    res["machine"] = machine_info()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    pk = res["peak"]
    print(f"wall {res['wall_s']} s, rc {res['returncode']}: peak tree RSS sum {pk['rss_sum_mb']:.0f} MB, "
          f"PSS sum {pk['pss_sum_mb']:.0f} MB, largest process {pk['rss_max_mb']:.0f} MB "
          f"(ru_maxrss {res['ru_maxrss_largest_process_mb']:.0f} MB), processes {pk['processes']}")
    return res["returncode"]


if __name__ == "__main__":
    sys.exit(main())
