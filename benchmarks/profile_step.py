"""Where one training iteration spends its time and memory: a per-phase profile of a recipe.

    python benchmarks/profile_step.py --config configs/demo.yaml                       # the demo
    python benchmarks/profile_step.py --config configs/demo.yaml --workers 0,1,2       # data loaders
    python benchmarks/profile_step.py --config configs/demo.yaml --iters 30 --warmup 5 --out benchmarks/results/profile_demo

It runs jhssl's own trainer (``jhssl.train.train``) with its ``profiler`` hook: the hook is called
where each phase ends, and there this tool calls ``jt.sync_all()`` (Jittor is lazy: without a sync a
phase's ops would run, and be timed, in whatever later phase first needs a value) and reads the clock
and the memory. The teacher's and the student's forward are split by wrapping the two networks'
``execute``; what remains of ``compute_loss`` is the loss. Phases of one iteration:

    data (waiting for the loader) | forward_prep | teacher_forward | student_forward | loss |
    backward | clip | optimizer | ema | logging (trainer's sync, loss read-back, log line)

Syncing at every boundary stops Jittor from fusing ops across phases, so the phases add up to a
little more than an unprofiled iteration: after the profiled iterations, ``--plain-iters`` more run
with the hook syncing nothing but the iteration's end; the report gives both means.

Memory, per phase: the peak RSS of the training process *within* the phase (the kernel's VmHWM,
reset at each boundary through /proc/self/clear_refs), its RSS at the end, Jittor's allocator
(``jt.display_memory_info``: live Vars, SFRL allocator used/cached), and once per iteration the data
workers (their RSS sum and the whole process tree's PSS, which counts pages shared with the parent
once). Also measured: the untrained k-NN before training, the checkpoint write at the end and a k-NN
after it (``jhssl.train.run_knn``, the trainer's own). Machine facts: ``benchmarks.common.machine_info``.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jhssl  # noqa: E402,F401  (Jittor's environment first)
from benchmarks.common import machine_info  # noqa: E402
from benchmarks.peak_rss import pss_kb, process_tree  # noqa: E402

STEP_PHASES = ("data", "forward_prep", "teacher_forward", "student_forward", "loss", "backward", "clip",
               "optimizer", "ema", "logging")
_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


# ----------------------------------------------------------------------------- memory readings
def _status_mb(key, pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss():
    """Restart the kernel's VmHWM of this process (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _to_mb(num, unit):
    return float(num) * _UNITS.get(unit.strip().upper(), 1) / (1 << 20)


def parse_jittor_memory(text: str) -> dict:
    """The figures of ``jt.display_memory_info()``'s text: lived Vars, SFRL allocator used/unused (MB)."""
    out = {}
    m = re.search(r"lived_vars:\s*(\d+)", text)
    if m:
        out["jt_lived_vars"] = int(m.group(1))
    m = re.search(r"name:\s*sfrl is_device:\s*0 used:\s*([\d.]+)\s*([KMGT]?B).*?unused:\s*([\d.]+)\s*([KMGT]?B)", text)
    if m:
        out["jt_used_mb"] = round(_to_mb(m.group(1), m.group(2)), 1)
        out["jt_cached_mb"] = round(_to_mb(m.group(3), m.group(4)), 1)
    return out


def jittor_memory() -> dict:
    """Jittor's allocator figures, read from ``display_memory_info`` (it prints to fd 2 only)."""
    import jittor as jt
    fd, path = tempfile.mkstemp()
    saved, silent = os.dup(2), jt.flags.log_silent
    try:
        sys.stderr.flush()
        os.dup2(fd, 2)
        jt.flags.log_silent = 0
        jt.display_memory_info()
    finally:
        jt.flags.log_silent = silent
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    with open(path) as f:
        text = f.read()
    os.unlink(path)
    return parse_jittor_memory(text)


def worker_memory() -> dict:
    """This process's descendants (data workers): count, RSS sum; and the whole tree's PSS (MB)."""
    me = os.getpid()
    tree = process_tree(me)
    kids = [p for p in tree if p != me]
    rss = 0.0
    for p in kids:
        try:
            rss += _status_mb("VmRSS", p)
        except OSError:
            pass
    return {"workers": len(kids), "workers_rss_mb": round(rss, 1),
            "tree_pss_mb": round(sum(pss_kb(p) for p in tree) / 1024, 1)}


# ----------------------------------------------------------------------------- the hook
class PhaseProfiler:
    """``jhssl.train.train``'s ``profiler``: a sync, a clock reading and memory readings per phase."""

    def __init__(self, profile_iters: int, warmup: int):
        self.warmup, self.profile_iters = int(warmup), int(profile_iters)
        self.iteration = 0          # iterations finished (a "logging" mark ends one)
        self.rows = []              # one dict per phase reading
        self.current = {}           # phase -> row of the iteration in progress
        self._last = None
        self._t = time.perf_counter()
        reset_peak_rss()

    @property
    def plain(self) -> bool:
        """After warm-up + profiled iterations: no phase syncs, only an iteration's end is read."""
        return self.iteration >= self.warmup + self.profile_iters

    def __call__(self, name):
        import jittor as jt
        if name == "forward" and self._last == "student_forward":
            name = "loss"  # the networks ran in their own phases: what remains is the loss
        step_phase = name in STEP_PHASES + ("forward", "between_networks")
        if self.plain and step_phase and name not in ("logging", "data"):
            return
        jt.sync_all()
        now = time.perf_counter()
        row = {"iteration": self.iteration, "phase": name, "ms": (now - self._t) * 1e3,
               "peak_rss_mb": round(_status_mb("VmHWM"), 1), "rss_mb": round(_status_mb("VmRSS"), 1),
               "plain": self.plain}
        if not (self.plain and step_phase):
            row.update(jittor_memory())
            if name in ("logging", "knn_untrained", "checkpoint", "knn", "discrepancy"):
                row.update(worker_memory())
        self.rows.append(row)
        self._last = name
        if name == "logging":
            self.iteration += 1
        reset_peak_rss()
        self._t = time.perf_counter()  # the readings themselves are not timed

    def wrap_networks(self, method):
        """Split the forward into teacher and student phases (instance attributes over ``execute``)."""
        for net, name in ((method.teacher, "teacher_forward"), (method.student, "student_forward")):
            if net is None:
                continue
            inner = net.execute

            def execute(*args, _inner=inner, _name=name, **kw):
                if self._last in ("data", "teacher_forward"):
                    self("forward_prep" if self._last == "data" else "between_networks")
                out = _inner(*args, **kw)
                self(_name)
                return out
            net.execute = execute


def summarize(rows, warmup, profile_iters):
    """Per step phase over the profiled iterations: mean/median ms, peak RSS, Jittor figures."""
    import numpy as np
    prof = [r for r in rows if warmup <= r["iteration"] < warmup + profile_iters and not r["plain"]]
    phases = {}
    for r in prof:
        phases.setdefault(r["phase"], []).append(r)
    out = {}
    for name, rs in phases.items():
        ms = np.array([r["ms"] for r in rs])
        out[name] = {"n": len(rs), "mean_ms": round(float(ms.mean()), 2), "median_ms": round(float(np.median(ms)), 2),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "rss_end_mb": max(r["rss_mb"] for r in rs)}
        for k in ("jt_used_mb", "jt_cached_mb", "jt_lived_vars", "workers_rss_mb", "tree_pss_mb", "workers"):
            vals = [r[k] for r in rs if k in r]
            if vals:
                out[name][f"max_{k}"] = max(vals)
    iters = sorted({r["iteration"] for r in prof})
    per_iter = [sum(r["ms"] for r in prof if r["iteration"] == i) for i in iters]
    plain = [r for r in rows if r["plain"]]
    plain_iter = {}
    for r in plain:
        plain_iter[r["iteration"]] = plain_iter.get(r["iteration"], 0.0) + r["ms"]
    plain_vals = [v for i, v in plain_iter.items() if i in {r["iteration"] for r in plain if r["phase"] == "logging"}]
    plain_data = [r["ms"] for r in plain if r["phase"] == "data"]
    return {"phases": out, "iterations": len(iters),
            "iteration_mean_ms": round(float(np.mean(per_iter)), 1) if per_iter else None,
            "plain_iterations": len(plain_vals),
            "plain_iteration_mean_ms": round(float(np.mean(plain_vals)), 1) if plain_vals else None,
            "plain_data_wait_mean_ms": round(float(np.mean(plain_data)), 1) if plain_data else None,
            "events": [r for r in rows if r["phase"] not in STEP_PHASES + ("forward", "between_networks")]}


# ----------------------------------------------------------------------------- one run
def profile_once(args, overrides):
    import jittor as jt  # noqa: F401
    from jhssl.config import load_config
    from jhssl.methods import build_model
    from jhssl.train import run_knn, train
    cfg = load_config(args.config, list(overrides))
    prof = PhaseProfiler(args.iters, args.warmup)
    method = build_model(cfg)
    prof.wrap_networks(method)
    prof("setup")
    total = args.warmup + args.iters + args.plain_iters
    t0 = time.time()
    result = train(cfg, resume=None, max_iters=total, log=lambda *a: None, progress=False, method=method,
                   profiler=prof)
    wall = time.time() - t0
    prof("before_knn")
    run_knn(cfg, method, log=None)  # the trainer's k-NN (fresh loaders: its workers fork now)
    prof("knn")
    s = summarize(prof.rows, args.warmup, args.iters)
    s.update({"overrides": list(overrides), "train_wall_s": round(wall, 1), "iterations_run": result["iteration"],
              "last_loss": result["last_loss"], "num_workers": cfg.num_workers, "batch_size": cfg.batch_size,
              "final_rss_mb": round(_status_mb("VmRSS"), 1), "process_peak_rss_mb": round(_status_mb("VmHWM"), 1)})
    return s


def _fmt(v, nd=0):
    return "" if v is None else f"{v:.{nd}f}"


def markdown(res) -> str:
    m = res["machine"]
    lines = [f"# Per-phase profile: {res['config']}", "",
             f"Command: `{res['command']}`", "",
             f"Machine: {m['cpu']} (vendor {m['cpu_vendor']}, family {m['cpu_family']}, model {m['cpu_model']}), "
             f"{m['cores']} cores, widest ISA {m['isa_widest']} (AVX-512: {m['avx512']}), oneDNN ISA "
             f"{m.get('onednn_isa')}, torch BLAS {m.get('torch_blas')}; load average at the end {m['loadavg']}.",
             "", res["note"], ""]
    for run in res["runs"]:
        lines += [f"## num_workers = {run['num_workers']} (batch {run['batch_size']}; overrides "
                  f"{' '.join(run['overrides']) or 'none'})", "",
                  f"{run['iterations']} profiled iterations after {res['warmup']} warm-up: mean "
                  f"{_fmt(run['iteration_mean_ms'])} ms with a sync at every phase; {run['plain_iterations']} "
                  f"unsynced iterations: mean {_fmt(run['plain_iteration_mean_ms'])} ms "
                  f"(data wait {_fmt(run['plain_data_wait_mean_ms'], 1)} ms).", "",
                  "| phase | mean ms | median ms | % of iteration | peak RSS in phase (MB) | Jittor used / cached (MB) | Jittor live Vars |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        tot = run["iteration_mean_ms"] or 1.0
        for name in STEP_PHASES + ("between_networks",):
            p = run["phases"].get(name)
            if not p:
                continue
            lines.append(f"| {name} | {p['mean_ms']:.1f} | {p['median_ms']:.1f} | {100 * p['mean_ms'] / tot:.1f} | "
                         f"{p['peak_rss_mb']:.0f} | {_fmt(p.get('max_jt_used_mb'))} / {_fmt(p.get('max_jt_cached_mb'))} | "
                         f"{p.get('max_jt_lived_vars', '')} |")
        lg = run["phases"].get("logging", {})
        lines += ["", f"Data workers (at iteration ends): {lg.get('max_workers', 0)} processes, RSS sum up to "
                  f"{_fmt(lg.get('max_workers_rss_mb'))} MB; whole tree PSS up to {_fmt(lg.get('max_tree_pss_mb'))} MB. "
                  f"Training process RSS at the end (after the last k-NN) {run['final_rss_mb']:.0f} MB.", "",
                  "| event | ms | peak RSS in phase (MB) | RSS after (MB) | Jittor used / cached (MB) | workers | workers RSS (MB) | tree PSS (MB) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for e in run["events"]:
            if e["phase"] in ("setup",) or e["phase"].startswith("before_"):
                continue
            lines.append(f"| {e['phase']} (it {e['iteration']}) | {e['ms']:.0f} | {e['peak_rss_mb']:.0f} | {e['rss_mb']:.0f} | "
                         f"{_fmt(e.get('jt_used_mb'))} / {_fmt(e.get('jt_cached_mb'))} | {e.get('workers', '')} | "
                         f"{_fmt(e.get('workers_rss_mb'))} | {_fmt(e.get('tree_pss_mb'))} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--iters", type=int, default=30, help="profiled iterations (after warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--plain-iters", type=int, default=10, help="unsynced iterations after the profiled ones")
    p.add_argument("--workers", default=None, help="comma list of num_workers to compare, each in a fresh process")
    p.add_argument("--out", default="benchmarks/results/profile_demo", help="writes OUT.json and OUT.md")
    p.add_argument("--note", default="", help="text put into the report (e.g. the machine's load)")
    p.add_argument("--single", default=None, help=argparse.SUPPRESS)  # internal: one run, JSON to this path
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    a = p.parse_args(argv)
    if a.single:
        with tempfile.TemporaryDirectory() as cache:
            os.environ["JHSSL_CACHE_DIR"] = cache  # the untrained k-NN is measured, not read from a cache
            res = profile_once(a, a.overrides)
        with open(a.single, "w") as f:
            json.dump(res, f)
        return 0
    settings = [None] if a.workers is None else [int(w) for w in a.workers.split(",")]
    runs = []
    for w in settings:
        ov = list(a.overrides) + [f"output_dir={tempfile.mkdtemp(prefix='profile_step_')}"] + ([f"num_workers={w}"] if w is not None else [])
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            path = tmp.name
        cmd = [sys.executable, os.path.abspath(__file__), "--config", a.config, "--iters", str(a.iters),
               "--warmup", str(a.warmup), "--plain-iters", str(a.plain_iters), "--single", path, *ov]
        print("running:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        with open(path) as f:
            runs.append(json.load(f))
        os.unlink(path)
    cmd_line = "python benchmarks/profile_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    note = ("Timings were taken while other jobs shared the 2 cores (see the load average): compare phases "
            "within one run, and trust the memory figures (RSS does not depend on load) more than the "
            "milliseconds. " + a.note).strip()
    res = {"config": a.config, "command": cmd_line, "warmup": a.warmup, "iters": a.iters, "note": note,
           "machine": machine_info(), "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(a.out + ".md", "w") as f:
        f.write(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
