"""A fused CPU path against the path it replaces, in one whole training step, interleaved in one process.

    python benchmarks/fused_ab.py --path loss --targets hssl-quick,baseline-quick,demo --rounds 5
    python benchmarks/fused_ab.py --path attention --targets vit-t4,vit-s16,demo --rounds 5
    python benchmarks/fused_ab.py --path bias --targets vit-t4,vit-s16,demo --rounds 5
    python benchmarks/fused_ab.py --path allocator --targets demo --rounds 8

Paths (each switch is read while the step's graph is built, so one process builds both graphs):

* ``loss``: the DINO / iBOT cross-entropy (``models.layers.cross_entropy``) and teacher softmax
  (``softmax_last``) on their fused kernels ("fused") or on Jittor's plain ops ("plain": log-softmax,
  product, sum, softmax and their gradients). Targets: the iBOT and demo steps.
* ``attention``: self-attention as one fused op per (image, head) (``kernels/cpu_attention_op.cc``,
  "fused") or split into heads for oneDNN's batched GEMMs and the fused softmax ("split"), through
  ``models.layers.attention.fused_limit``. Targets: the ViT and demo steps.
* ``bias``: the bias of the linear layer before GELU (fc1) and before the fused attention (qkv) added
  inside those kernels, its gradient summed in their backward ops ("fused"), or a pass of its own
  each way ("separate"), through ``models.perf.fused_bias``. Targets: the ViT and demo steps.
* ``allocator``: not a kernel: Jittor's allocator cache emptied after every step (``jt.gc()``, what
  ``jhssl.train`` did on the CPU until 2026-11-30, "freed"; timed with the step) or kept for the next
  step ("kept"). Also reports the minor page faults and system CPU seconds per step. Targets: the
  ViT and demo steps.

Each round times a few steps of each variant, alternating, in the same process
(``benchmarks/op_profile.py``'s step builders), so host drift cancels in the per-round ratio.
Writes ``<out>-<path>-<machine>.json`` and ``.md``.
"""
import argparse
import contextlib
import datetime
import os
import resource
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.common import format_mean_std, machine_info, machine_line, mean_std, typed_command, write_results  # noqa: E402
from benchmarks.op_profile import TARGETS  # noqa: E402


def _built_with_fast_kernels(fn, enabled):
    """``fn`` whose graph is built with the fast kernels on or off (the switch is read at build time)."""
    from jhssl import perf

    def wrapped(*args):
        with perf.fast_kernels(enabled):
            return fn(*args)
    return wrapped


@contextlib.contextmanager
def loss_variant(name):
    """The loss's cross-entropy and teacher softmax built on the fused kernels (``fused``) or plain ops."""
    import jhssl.methods.losses as losses
    originals = losses.soft_cross_entropy, losses._teacher_probs
    losses.soft_cross_entropy, losses._teacher_probs = (_built_with_fast_kernels(f, name == "fused")
                                                        for f in originals)
    try:
        yield
    finally:
        losses.soft_cross_entropy, losses._teacher_probs = originals


@contextlib.contextmanager
def attention_variant(name):
    """Self-attention on the fused op wherever it applies (``fused``) or never (``split``)."""
    from models.layers import attention
    with attention.fused_limit(0) if name == "split" else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def bias_variant(name):
    """fc1's and qkv's bias added inside the GELU / attention kernels (``fused``) or on their own (``separate``)."""
    from models import perf
    with perf.fused_bias(name == "fused"):
        yield


@contextlib.contextmanager
def no_switch(name):
    yield


PATHS = {
    "loss": dict(variants=("plain", "fused"), switch=loss_variant,
                 targets=[n for n, t in TARGETS.items() if t["kind"] in ("ssl", "demo")],
                 title="The DINO / iBOT loss: fused CPU kernels vs Jittor's plain ops"),
    "attention": dict(variants=("split", "fused"), switch=attention_variant,
                      targets=[n for n, t in TARGETS.items() if t["kind"] in ("vit", "demo")],
                      title="Self-attention: one fused op per (image, head) vs split heads + oneDNN batched GEMMs"),
    "bias": dict(variants=("separate", "fused"), switch=bias_variant,
                 targets=[n for n, t in TARGETS.items() if t["kind"] in ("vit", "demo")],
                 title="The bias of fc1 and qkv: inside the GELU / attention kernels vs a pass of its own"),
    "allocator": dict(variants=("freed", "kept"), switch=no_switch, free_cache_after="freed",
                      targets=[n for n, t in TARGETS.items() if t["kind"] in ("vit", "demo")],
                      title="Jittor's allocator cache: emptied after every step (jt.gc) vs kept"),
}


def measure(path, name, rounds, iters):
    """Per round: ``iters`` steps of each variant (median), alternating; the first variant's time over
    the fused one's is the speed-up."""
    import jhssl  # noqa: F401  (bootstrap before jittor)
    import jittor as jt
    from benchmarks.op_profile import build_jittor_step
    from benchmarks.run import _time_steps
    step = build_jittor_step(TARGETS[name], jt)[0]
    before, after = PATHS[path]["variants"]
    switch = PATHS[path]["switch"]
    frees = PATHS[path].get("free_cache_after")

    def timed(variant, n):
        def sync():
            jt.sync_all(True)
            if variant == frees:
                jt.gc()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        with switch(variant):
            t = _time_steps(step, 0, n, sync)["median_s"]
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return t, (r1.ru_minflt - r0.ru_minflt) / n, (r1.ru_stime - r0.ru_stime) / n

    for v in (before, after):  # compile both graphs
        timed(v, 2)
    per_round = []
    for _ in range(rounds):
        (a, fa, sa), (b, fb, sb) = timed(before, iters), timed(after, iters)
        per_round.append({f"{before}_s": a, f"{after}_s": b, "speedup": a / b,
                          f"{before}_minor_faults": fa, f"{after}_minor_faults": fb,
                          f"{before}_sys_s": sa, f"{after}_sys_s": sb})
        print(f"{name}: {before} {a:.3f} s, {after} {b:.3f} s, {a / b:.3f}x; minor faults / step {fa:.0f} vs "
              f"{fb:.0f}, system s / step {sa:.3f} vs {sb:.3f}", flush=True)
    return per_round


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--path", choices=sorted(PATHS), default="loss")
    ap.add_argument("--targets", default=None,
                    help="comma-separated; default: every target of the path (" +
                    "; ".join(f"{p}: {', '.join(c['targets'])}" for p, c in PATHS.items()) + ")")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3, help="steps per variant and round (median)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "fused_ab"),
                    help="results stem; the path and the machine's name are appended")
    args = ap.parse_args(argv)
    allowed = PATHS[args.path]["targets"]
    names = [t.strip() for t in (args.targets or ",".join(allowed)).split(",") if t.strip()]
    if not names or any(t not in allowed for t in names):
        raise SystemExit(f"fused_ab: --path {args.path} targets must be among {', '.join(allowed)}, "
                         f"got {args.targets!r}")
    if args.rounds < 2 or args.iters < 1:
        raise SystemExit("fused_ab: --rounds must be at least 2 (a spread) and --iters at least 1")
    machine = machine_info()
    meta = {"date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), "machine": machine, "path": args.path,
            "command": typed_command("benchmarks/fused_ab.py", argv),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    results = {name: measure(args.path, name, args.rounds, args.iters) for name in names}
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    before, after = PATHS[args.path]["variants"]
    md = [f"# {PATHS[args.path]['title']}, in one training step", "",
          f"Command: `{meta['command']}`", "", f"Machine: {machine_line(machine)}. {meta['date']} UTC; load average "
          f"{meta['loadavg_start']} -> {meta['loadavg_end']}.", "",
          f"Per round, {args.iters} steps of each variant, alternating in one process; speed-up = {before} / {after} "
          "step time, paired per round, mean ± std.", "",
          f"| step | {before} s (mean) | {after} s (mean) | speed-up | per round | minor page faults / step "
          f"({before}, {after}) | system CPU s / step ({before}, {after}) |", "|---|---:|---:|---:|---|---:|---:|"]
    for name, rows in results.items():
        sp = [r["speedup"] for r in rows]

        def pair(key, digits):
            return " / ".join(f"{statistics.mean(r[f'{v}_{key}'] for r in rows):.{digits}f}" for v in (before, after))
        md.append(f"| {TARGETS[name]['label']} | {statistics.mean(r[f'{before}_s'] for r in rows):.3f} | "
                  f"{statistics.mean(r[f'{after}_s'] for r in rows):.3f} | {format_mean_std(*mean_std(sp), digits=3)} | "
                  f"{', '.join(f'{x:.3f}' for x in sp)} | {pair('minor_faults', 0)} | {pair('sys_s', 3)} |")
    write_results(f"{args.out}-{args.path}-{machine['slug']}", {"meta": meta, "results": results}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
