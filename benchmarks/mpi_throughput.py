"""Data-parallel step throughput: 1 process vs ``mpirun -np 2``, and the all-reduce share of a step.

    python benchmarks/mpi_throughput.py [--config configs/demo.yaml] [--batch 32] [--iters 5] [--warmup 2]

Writes ``benchmarks/results/mpi_throughput.json`` and ``.md``. The parent launches two workers
(``--worker``): one plain process and one ``mpirun --allow-run-as-root --oversubscribe -np 2``
job, with the same config and the same *global* batch. Each worker takes one real batch of the
pretraining dataset (its shard under MPI) and times full training steps on it, the same calls as
the trainer makes (teacher + student forward, iBOT/HSSL loss, ``optimizer.backward`` which
all-reduces the gradients under MPI, clipping, AdamW, teacher EMA), so data loading is excluded.
Times are medians over ``--iters`` steps after ``--warmup`` steps (Jittor compiles on first use).

The all-reduce share: the same job then all-reduces a set of buffers shaped like every trained
parameter's gradient (what ``optimizer.backward`` sends each step), timed alone, divided by the
step time. Waiting for a slower rank inside the real step is not part of that figure.
The CPU may be shared with other jobs: the load average before and after is recorded.
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.common import machine_info  # noqa: E402
from jhssl.fileio import atomic_write_text  # noqa: E402


# ============================================================================ worker side
def worker(args):
    import numpy as np
    import jhssl  # noqa: F401
    import jittor as jt
    from jhssl import dist
    from jhssl.config import load_config
    from jhssl.data import build_pretrain_dataset
    from jhssl.methods import build_model
    from jhssl.optim import AdamW, clip_gradients, param_groups
    from jhssl.train import setup_device

    dist.install_failure_handler()
    cfg = load_config(args.config, [f"batch_size={args.batch}", "num_workers=0", "device=cpu",
                                    "model.drop_path_rate=0"] + args.overrides)
    setup_device(cfg)
    dist.check_batch_size(cfg.batch_size)
    jt.set_global_seed(cfg.seed)
    ds = build_pretrain_dataset(cfg)
    ds.set_epoch(0)
    crops, masks, _ = next(iter(ds))
    crops, masks = list(crops), list(masks) if masks else None
    method = build_model(cfg)
    dist.sync_initial_state(method)
    opt = AdamW(param_groups(method.student), lr=1e-4)
    for g in opt.param_groups:
        g["weight_decay"] = 0.04 if g["regularized"] else 0.0

    def step():
        parts = method.compute_loss(crops, masks, 0)
        opt.backward(parts["loss"])
        clip_gradients(opt, cfg.optim.clip_grad or 3.0)
        opt.step()
        method.ema_update(0.996)
        jt.sync_all()
        dist.barrier()  # a step ends when every rank has finished it

    for _ in range(args.warmup):
        step()
    times, cpu = [], []
    for _ in range(args.iters):  # as jhssl.train steps: Jittor's allocator cache kept between steps
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # all threads of this rank
    cpu_all_ranks = float(dist.all_reduce_np(np.array([np.median(cpu)]), "add")[0])

    # the gradient all-reduce alone: buffers shaped like every trained parameter
    shapes = [tuple(p.shape) for g in opt.param_groups for p in g["params"]]
    n_floats = int(sum(np.prod(s) for s in shapes))
    ar_times = []
    if dist.in_mpi():
        bufs = [jt.ones(s, "float32") for s in shapes]
        jt.sync(bufs)
        for _ in range(args.warmup + args.iters):
            dist.barrier()
            t0 = time.perf_counter()
            jt.sync([b.mpi_all_reduce("mean") for b in bufs])
            ar_times.append(time.perf_counter() - t0)
        ar_times = ar_times[args.warmup:]
    res = {
        "world_size": dist.world_size(),
        "global_batch": cfg.batch_size,
        "per_rank_batch": int(crops[0].shape[0]),
        "step_s_median": float(np.median(times)),
        "step_s_all": [float(t) for t in times],
        "img_per_s": cfg.batch_size / float(np.median(times)),
        "cpu_s_per_step_all_ranks": cpu_all_ranks,
        "grad_tensors": len(shapes),
        "grad_floats": n_floats,
        "allreduce_s_median": float(np.median(ar_times)) if ar_times else 0.0,
    }
    res["allreduce_share"] = res["allreduce_s_median"] / res["step_s_median"]
    if dist.is_main():
        with open(args.result, "w") as f:
            json.dump(res, f)


# ============================================================================ parent side
def launch(cmd, result):
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:])
        raise SystemExit(f"worker failed ({p.returncode}): {' '.join(cmd)}")
    with open(result) as f:
        res = json.load(f)
    res["wall_s"] = time.time() - t0
    return res


def reading(rec):
    """How to read the speed-up, depending on whether other jobs shared the cores."""
    cores = rec["machine"]["cores"]
    busy = max(rec["loadavg_before"][0], rec["loadavg_after"][0]) > cores
    if busy:
        return ("Reading the figures: the cores were shared with other jobs (load average above the core count), and "
                "the scheduler gives each runnable process a share, so two ranks receive about twice the CPU time one "
                "process gets: the wall-clock speed-up says little about the code.")
    return ("Reading the figures: with the machine otherwise idle, one process already uses both cores through "
            "oneDNN's threads, so two ranks on the same 2 cores can only gain from running their less parallel parts "
            "side by side; the all-reduce costs the share shown. On a GPU node each rank owns a GPU and the all-reduce "
            "runs on NCCL.")


def write_md(path, rec):
    one, two = rec["runs"]["1"], rec["runs"]["2"]
    lines = [
        "# Data-parallel step throughput: 1 process vs 2 MPI ranks (CPU)",
        "",
        f"Command: `{rec['command']}`  ",
        f"Date: {rec['date']}  ",
        f"Machine: {rec['machine']['cpu']}, {rec['machine']['cores']} cores; Python {rec['machine']['python']}  ",
        f"Load average (1/5/15 min) before: {rec['loadavg_before']}, after: {rec['loadavg_after']} "
        f"({'other jobs shared the CPU: figures are indicative' if max(rec['loadavg_before'][0], rec['loadavg_after'][0]) > rec['machine']['cores'] else 'no other heavy job'})  ",
        f"Model: `{rec['config']}` {' '.join(rec['overrides'])} (global batch {one['global_batch']}, "
        f"{one['grad_tensors']} gradient tensors, {one['grad_floats'] / 1e6:.2f} M floats)",
        "",
        "| ranks | per-rank batch | step time (median) | img/s (global) | speed-up | CPU time per step (all ranks) | gradient all-reduce alone | share of step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, r in (("1", one), ("2", two)):
        lines.append(f"| {k} | {r['per_rank_batch']} | {r['step_s_median']:.3f} s | {r['img_per_s']:.1f} | "
                     f"{one['step_s_median'] / r['step_s_median']:.2f}x | {r['cpu_s_per_step_all_ranks']:.2f} s | "
                     f"{r['allreduce_s_median'] * 1e3:.1f} ms | {100 * r['allreduce_share']:.1f}% |")
    lines += ["",
              "A step: teacher + student forward, loss, `optimizer.backward` (gradient all-reduce under MPI), "
              "clipping, AdamW, teacher EMA, on one fixed real batch (data loading excluded); medians over "
              f"{rec['iters']} steps after {rec['warmup']} warm-up steps. The all-reduce figure sends buffers shaped "
              "like every gradient once, alone; waiting for the slower rank inside a real step is not in it.",
              "",
              reading(rec)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--batch", type=int, default=32, help="global batch (both runs)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--md-only", action="store_true", help="rewrite the .md from the existing .json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    base = os.path.join(args.out, "mpi_throughput")
    if args.md_only:
        with open(base + ".json") as f:
            return write_md(base + ".md", json.load(f))
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise SystemExit("mpirun (OpenMPI) not found: cannot run the 2-rank measurement")
    common = [os.path.abspath(__file__), "--worker", "--config", args.config, "--batch", str(args.batch),
              "--iters", str(args.iters), "--warmup", str(args.warmup)]
    rec = {"command": "python benchmarks/mpi_throughput.py " + " ".join(sys.argv[1:]),
           "date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
           "config": args.config, "overrides": args.overrides, "iters": args.iters, "warmup": args.warmup,
           "loadavg_before": [round(x, 2) for x in os.getloadavg()], "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        r1 = os.path.join(tmp, "r1.json")
        rec["runs"]["1"] = launch([sys.executable, *common, "--result", r1, *args.overrides], r1)
        r2 = os.path.join(tmp, "r2.json")
        rec["runs"]["2"] = launch([mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2",
                                   sys.executable, *common, "--result", r2, *args.overrides], r2)
    rec["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    rec["speedup_2_vs_1"] = rec["runs"]["1"]["step_s_median"] / rec["runs"]["2"]["step_s_median"]
    os.makedirs(args.out, exist_ok=True)
    atomic_write_text(base + ".json", json.dumps(rec, indent=2))
    write_md(base + ".md", rec)
    print(open(base + ".md").read())


if __name__ == "__main__":
    main()
