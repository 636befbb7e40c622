"""The CPU bf16 linear layer: operands rounded once each vs once per product (issue 18).

Under ``amp: true`` on a CPU with bf16 instructions a trained linear layer rounds its input and its
output gradient to bf16 once each (``cpu_to_bf16``) and shares them between the two products that
use each (``models.layers.linear``). The reference is what it did before: ``dnnl_bmm`` with float32
operands, whose own gradient rounds every operand again for every product. Both give the same
products bit for bit (tests/test_kernels.py); this measures what the rounding-once path saves on a
whole training step of the demo's recipe, in one process (A B A B ..., several steps each, so the
machine's drift cannot favour one), and the live tensors at the step's peak (Jittor's memory
profiler, a fresh process per path).

    python benchmarks/bf16_linear.py                         # the demo (ViT-T/7 @28) and ViT-T/4 @32, batch 64
    python benchmarks/bf16_linear.py --models demo --rounds 4

Writes benchmarks/results/bf16_linear.{json,md} with the machine facts.
"""
import argparse
import datetime
import json
import os
import resource
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# the demo's recipe, and the same with the demo model issue 18 was filed on (65 tokens)
MODELS = {"demo": ("ViT-T/7 @28 (the demo)", [], (28, 14, 4)),
          "issue": ("ViT-T/4 @32 (the issue's demo model)",
                    ["model.patch_size=4", "data.global_crop_size=32", "data.local_crop_size=16"], (32, 16, 8))}
BATCH = 64


def per_product_linear(x, weight, bias=None):
    """The reference: dnnl_bmm on float32 operands; its autograd rounds each operand per product."""
    from models.layers import kernels
    from models.layers.linear import bf16_rows_product
    y = bf16_rows_product(kernels.enabled_cpu_ops(), x.reshape((1, -1, x.shape[-1])), weight, bias)
    return y.reshape(tuple(x.shape[:-1]) + (weight.shape[0],))


def _demo_step(model):
    """(step function, models.layers.linear) for the recipe with random crops of its sizes."""
    import numpy as np
    import jhssl  # noqa: F401  (bootstrap before jittor)
    import jittor as jt
    from jhssl import amp
    from jhssl.config import load_config
    from jhssl.methods import build_model
    from jhssl.optim import AdamW
    from models.layers import linear
    _, overrides, (g, loc, grid) = MODELS[model]
    cfg = load_config(os.path.join(ROOT, "configs", "demo.yaml"), overrides)
    method = build_model(cfg)
    opt = AdamW(method.param_groups(), lr=5e-4, weight_decay=0.04)
    rng = np.random.RandomState(0)
    crops = [jt.array(rng.randn(BATCH, 3, s, s).astype("float32")) for s in (g, g, loc, loc)]
    masks = [jt.array(rng.rand(BATCH, grid, grid) < 0.3) for _ in range(2)]

    def step():
        with amp.autocast("bfloat16", cpu=True):
            opt.step(method.compute_loss(crops, masks, 0)["loss"])
        method.ema_update(cfg.optim.momentum_teacher)
        jt.sync_all()
    return step, linear


def measure_speed(model, rounds, steps):
    """Median step seconds per round for both paths, alternating which goes first."""
    step, linear = _demo_step(model)
    paths = {"rounded once": linear.linear, "per product": per_product_linear}
    for fn in paths.values():  # compile both
        linear.linear = fn
        for _ in range(3):
            step()
    times = {k: [] for k in paths}
    for r in range(rounds):
        order = list(paths) if r % 2 == 0 else list(paths)[::-1]
        for name in order:
            linear.linear = paths[name]
            ts = []
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t0)
            times[name].append(statistics.median(ts))
    linear.linear = paths["rounded once"]
    return times


def worker_memory(model, path):
    import jittor as jt
    step, linear = _demo_step(model)
    if path == "per product":
        linear.linear = per_product_linear
    step()
    step()
    with jt.flag_scope(profile_memory_enable=1):
        step()
        info = jt.get_max_memory_info()
    from benchmarks.memory_breakdown import parse_peak_vars
    total, _ = parse_peak_vars(info)
    return {"peak_live_mb": total / 2.0 ** 20, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def markdown(rec) -> str:
    from benchmarks.common import format_mean_std, machine_line, mean_std
    md = ["# CPU bf16 linear: operands rounded once each vs once per product (issue 18)", "",
          f"Command: `{rec['command']}`", "", f"Machine: {machine_line(rec['machine'])}. {rec['date']}.", "",
          f"A training step of `configs/demo.yaml` (iBOT + HSSL, ConvNext head, `amp: true`, batch {BATCH}, random "
          "crops of the recipe's sizes), both paths in one process: per round the median of "
          f"{rec['steps']} steps each, the order alternating; speed-up = per-product / rounded-once seconds, paired "
          "per round. Memory: the live tensors at the step's peak (Jittor's memory profiler) and the peak RSS, a "
          "fresh process per path.", "",
          "| model | rounded once, s/step | per product, s/step | speed-up, paired | live peak MB once / per product | "
          "peak RSS MB once / per product |", "|---|---:|---:|---:|---:|---:|"]
    for model, r in rec["results"].items():
        once, per = r["times"]["rounded once"], r["times"]["per product"]
        ratios = [p / o for o, p in zip(once, per)]
        m_once, m_per = r["memory"]["rounded once"], r["memory"]["per product"]
        md.append(f"| {MODELS[model][0]} | {mean_std(once)[0]:.3f} | {mean_std(per)[0]:.3f} | "
                  f"{format_mean_std(*mean_std(ratios), 3)} | "
                  f"{m_once['peak_live_mb']:.0f} / {m_per['peak_live_mb']:.0f} | "
                  f"{m_once['peak_rss_mb']:.0f} / {m_per['peak_rss_mb']:.0f} |")
    return "\n".join(md) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=4, help="steps per path and round (their median)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bf16_linear"))
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker_memory(*json.loads(args.worker))), flush=True)
        return
    from jhssl.amp import cpu_has_bf16
    if not cpu_has_bf16():
        raise SystemExit("bf16_linear: this CPU has no bf16 instructions (AVX512_BF16/AMX): nothing to measure")
    if args.rounds < 2 or args.steps < 1:
        p.error("--rounds must be at least 2 (a spread) and --steps at least 1")
    from benchmarks.common import machine_info, run_json_worker
    from jhssl.fileio import atomic_write_text
    results = {}
    for model in args.models:
        memory = {path: run_json_worker(__file__, [model, path], 1800, f"the memory run ({model}, {path})")
                  for path in ("rounded once", "per product")}
        results[model] = {"times": measure_speed(model, args.rounds, args.steps), "memory": memory}
        print(model, json.dumps(results[model]), flush=True)
    rec = {"command": " ".join(["python benchmarks/bf16_linear.py", *(argv if argv is not None else sys.argv[1:])]),
           "machine": machine_info(), "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "rounds": args.rounds, "steps": args.steps, "results": results}
    atomic_write_text(args.out + ".json", json.dumps(rec, indent=1))
    atomic_write_text(args.out + ".md", markdown(rec))
    print(markdown(rec))


if __name__ == "__main__":
    main()
