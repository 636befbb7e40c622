"""Fused vs split self-attention on the CPU as the sequence grows: where ``FUSED_MAX_TOKENS`` comes from.

``models.layers.attention.self_attention`` computes sequences of up to ``FUSED_MAX_TOKENS`` with one fused
op (q, k, v copied out of the packed projection, both products and the softmax per image and head in
cache, the gradient recomputing the probabilities) and longer ones by splitting the heads for oneDNN's
batched GEMMs. This times one layer's attention forward + backward both ways at several token counts,
interleaved (fused, split, fused, split ... per round), so the crossover is measured on the machine that
runs it.

    python benchmarks/attention_tokens.py                         # 5 ... 577 tokens, 3 rounds
    python benchmarks/attention_tokens.py --tokens 17 65 --batch 64 --heads 3

Writes benchmarks/results/fused_attention-<machine>.{json,md} with the machine facts. The effect on whole
training steps: ``benchmarks/fused_ab.py --path attention``.
"""
import argparse
import datetime
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jhssl  # noqa: E402,F401  (Jittor's environment first)
import jittor as jt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import format_mean_std, machine_info, machine_line, mean_std, typed_command, write_results  # noqa: E402
from models import perf  # noqa: E402
from models.layers import attention  # noqa: E402


def time_layer(qkv, heads, fused: bool, iters: int) -> float:
    """Median ms of forward + backward of one ``self_attention`` call, fused op forced on or off."""
    with attention.fused_limit(1 << 30 if fused else 0):
        def step():
            out = attention.self_attention(qkv, heads)
            jt.sync(jt.grad((out * out).sum(), [qkv]))
        for _ in range(3):
            step()
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1000)
        return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[5, 17, 33, 65, 129, 197, 257, 401, 577])
    p.add_argument("--batch", type=int, default=16, help="images")
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "fused_attention"),
                   help="results stem; the machine's name is appended")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.tokens) or min(args.batch, args.heads, args.head_dim, args.rounds, args.iters) < 1:
        raise SystemExit("--tokens, --batch, --heads, --head-dim, --rounds and --iters must be positive")
    perf.set_fast_kernels(True)
    if attention.kernels.enabled_cpu_ops() is None:
        raise SystemExit("the fast CPU kernels are not available here (a GPU run, or the build failed)")
    rng = np.random.default_rng(0)
    c3 = 3 * args.heads * args.head_dim
    inputs = {n: jt.array(rng.standard_normal((args.batch, n, c3)).astype(np.float32)) for n in args.tokens}
    runs = {n: {"fused": [], "split": []} for n in args.tokens}
    for rnd in range(args.rounds):
        for n in args.tokens:
            for way in ("fused", "split"):
                runs[n][way].append(time_layer(inputs[n], args.heads, way == "fused", args.iters))
            print(f"round {rnd + 1} tokens {n}: fused {runs[n]['fused'][-1]:.2f} ms, "
                  f"split {runs[n]['split'][-1]:.2f} ms", flush=True)
    machine = machine_info()
    meta = {"command": typed_command("benchmarks/attention_tokens.py", argv),
            "date": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"), "machine": machine,
            "batch": args.batch, "heads": args.heads, "head_dim": args.head_dim, "rounds": args.rounds,
            "iters": args.iters, "fused_max_tokens": attention.FUSED_MAX_TOKENS}
    rows = ["| tokens | fused ms | split ms | split / fused, paired per round | taken by `self_attention` |",
            "|---:|---:|---:|---:|---|"]
    for n in args.tokens:
        f, s = runs[n]["fused"], runs[n]["split"]
        ratio = mean_std([b / a for a, b in zip(f, s)])
        rows.append(f"| {n} | {format_mean_std(*mean_std(f))} | {format_mean_std(*mean_std(s))} | "
                    f"{format_mean_std(*ratio)} | {'fused' if n <= attention.FUSED_MAX_TOKENS else 'split'} |")
    md = ["# Fused vs split CPU self-attention by sequence length (issue 18)", "",
          f"Command: `{meta['command']}`. {meta['date']} UTC.", "", machine_line(machine), "",
          f"One layer's attention, forward + backward, from the packed qkv projection ({args.batch} images x "
          f"{args.heads} heads x D {args.head_dim}, fp32): the fused op (`kernels/cpu_attention_op.cc`) vs split "
          "heads + oneDNN batched GEMMs + fused softmax. Median of "
          f"{args.iters} calls per round, mean ± std over {args.rounds} interleaved rounds. "
          f"`models.layers.attention.FUSED_MAX_TOKENS` = {attention.FUSED_MAX_TOKENS}.", ""] + rows + [""]
    write_results(f"{args.out}-{machine['slug']}", {"meta": meta, "runs": {str(k): v for k, v in runs.items()}},
                  "\n".join(md))


if __name__ == "__main__":
    main()
