"""The demo's training speed, interleaved across code versions and precisions (issue 18).

Issue 18 asks for twice the demo's iterations per second "for the same model and batch" as when it
was filed. This runs the demo's recipe (``configs/fmnist_ibot_hssl_vit_tiny.yaml``, which
``configs/demo.yaml`` extends with ``amp: true``: ViT-T/7 + ConvNext head, batch 64) for
``--iters`` iterations in a fresh process per variant, round after round (A B C A B C ...), so drift
of the machine cannot favour one variant, and reads the trainer's own throughput log: seconds per
iteration end to end (data wait, forward, backward, optimizer, EMA, logging), after ``--warmup``
iterations. A variant is ``label=REV[,key=value...]``: REV is a git revision, checked out into a
temporary worktree (``.`` is this working tree), the rest are config overrides.

    python benchmarks/demo_speed.py                      # the default three variants, 2 rounds
    python benchmarks/demo_speed.py --rounds 3 --iters 40

Default variants: the code at issue 18's filing (97a4b48) in fp32; today's code in fp32; today's code
with ``amp=true`` (bf16 GEMMs on a CPU with AVX512_BF16, see jhssl/amp.py). Writes
benchmarks/results/demo_speed.{json,md} with the machine facts and each run's last logged loss (the
demo's memory is benchmarks/peak_rss.py's, demo_memory.md).
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
sys.path.insert(0, ROOT)

ISSUE_REV = "97a4b48"  # main when issue 18 was filed
DEFAULT_VARIANTS = (f"issue-time fp32={ISSUE_REV}", "today fp32=.,amp=false", "today bf16=.,amp=true")


def parse_variant(text: str):
    """``label=REV[,k=v...]`` -> (label, rev, [overrides])."""
    label, sep, rest = text.partition("=")
    if not sep or not label.strip() or not rest.strip():
        raise ValueError(f"variant {text!r}: expected label=REV[,key=value...]")
    rev, *overrides = [p.strip() for p in rest.split(",")]
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"variant {text!r}: override {o!r} is not key=value")
    return label.strip(), rev, overrides


def seconds_per_iteration(log_lines, batch_size: int, warmup: int):
    """Mean s/iteration over the step records after ``warmup`` iterations, from each record's img/s
    (the trainer's throughput since the previous record), weighted by the iterations it covers."""
    steps = [r for r in log_lines if r.get("type") == "step" and "img_per_s" in r]
    total_t, total_it, prev = 0.0, 0, None
    for r in steps:
        it = int(r["iteration"])
        if prev is not None and prev >= warmup and r["img_per_s"] > 0:
            n = it - prev
            total_t += n * batch_size / float(r["img_per_s"])
            total_it += n
        prev = it
    return (total_t / total_it if total_it else None), total_it


def describe_rev(rev: str) -> str:
    """The commit a variant ran: ``.`` is this working tree's HEAD (``+ changes`` when code differs)."""
    if rev != ".":
        return rev
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "jhssl", "models", "run", "configs"],
                           capture_output=True, text=True)
    name = head.stdout.strip() or "working tree"
    return name + (" + changes" if dirty.stdout.strip() else "")


def _checkout(rev: str, tmp_root: str) -> str:
    if rev == ".":
        return ROOT
    path = os.path.join(tmp_root, f"rev-{rev}")
    if not os.path.isdir(path):
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, rev], check=True,
                       capture_output=True, text=True)
    return path


def run_once(code_dir: str, overrides, iters: int, warmup: int, config: str, timeout: int) -> dict:
    """One training run of ``iters`` iterations in a fresh process; its s/iteration and peak RSS."""
    out_dir = tempfile.mkdtemp(prefix="demo_speed_")
    try:
        cmd = [sys.executable, os.path.join(code_dir, "run", "train.py"), "--config", os.path.join(ROOT, config),
               "--max-iters", str(iters), "--no-resume", "--no-progress", f"output_dir={out_dir}", *overrides]
        env = dict(os.environ, PYTHONPATH=code_dir, JHSSL_SKIP_SETUP="1")
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=code_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            return {"error": f"timed out after {timeout} s"}
        wall = time.time() - t0
        if proc.returncode != 0:
            return {"error": f"exit {proc.returncode}: {output.strip().splitlines()[-1] if output.strip() else ''}"}
        with open(os.path.join(out_dir, "log.jsonl")) as f:
            lines = [json.loads(x) for x in f if x.strip()]
        with open(os.path.join(out_dir, "config.yaml")) as f:
            batch = next(int(x.split(":", 1)[1]) for x in f if x.startswith("batch_size:"))
        s_it, n = seconds_per_iteration(lines, batch, warmup)
        last = [r for r in lines if r.get("type") == "step"][-1]
        return {"s_per_it": s_it, "timed_iterations": n, "wall_s": round(wall, 1), "batch_size": batch,
                "last_loss": last.get("loss"), "last_iteration": last.get("iteration")}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def summarize(variants, runs):
    """Per variant: mean and spread of s/it over rounds, it/s, and the ratio to the first variant per round."""
    from benchmarks.common import mean_std
    out = []
    base_label = variants[0][0]
    for label, rev, overrides in variants:
        s = [r["s_per_it"] for r in runs if r["label"] == label and r.get("s_per_it")]
        m, sd = mean_std(s)
        ratios = []
        for rnd in sorted({r["round"] for r in runs}):
            a = [r for r in runs if r["round"] == rnd and r["label"] == base_label and r.get("s_per_it")]
            b = [r for r in runs if r["round"] == rnd and r["label"] == label and r.get("s_per_it")]
            if a and b:
                ratios.append(a[0]["s_per_it"] / b[0]["s_per_it"])
        rm, rsd = mean_std(ratios)
        out.append({"label": label, "rev": describe_rev(rev), "overrides": overrides, "s_per_it": s, "mean_s_per_it": m,
                    "std_s_per_it": sd, "speedup_vs_first": ratios, "mean_speedup_vs_first": rm,
                    "std_speedup_vs_first": rsd})
    return out


def markdown(rec) -> str:
    from benchmarks.common import format_mean_std, machine_line
    md = ["# Demo training speed (issue 18)", "",
          f"Command: `{rec['command']}`", "",
          f"Machine: {machine_line(rec['machine'])}. Load average at start {rec['load_start']}, at end "
          f"{rec['load_end']}. {rec['date']}.", "",
          f"Each run: `run/train.py --config {rec['config']} --max-iters {rec['iters']}` in a fresh process; seconds per "
          f"iteration end to end from the trainer's throughput log after {rec['warmup']} warm-up iterations; the "
          f"variants interleaved per round ({rec['rounds']} rounds). Speed-up: the first variant's s/it over the "
          "variant's, paired per round.", "",
          "| variant | code | overrides | s / iteration | it/s | speed-up over the first, paired | last loss (per round) |",
          "|---|---|---|---:|---:|---:|---|"]
    for s in rec["summary"]:
        losses = ", ".join(f"{r['last_loss']:.4f}" for r in rec["runs"] if r["label"] == s["label"] and r.get("last_loss"))
        its = 1.0 / s["mean_s_per_it"] if s["mean_s_per_it"] else None
        md.append(f"| {s['label']} | {s['rev']} | {' '.join(s['overrides']) or '–'} | "
                  f"{format_mean_std(s['mean_s_per_it'], s['std_s_per_it'], 3)} | "
                  f"{'–' if its is None else f'{its:.3f}'} | "
                  f"{format_mean_std(s['mean_speedup_vs_first'], s['std_speedup_vs_first'], 2)} | {losses} |")
    errors = [r for r in rec["runs"] if "error" in r]
    if errors:
        md += ["", "Failed runs: " + "; ".join(f"{r['label']} round {r['round']}: {r['error']}" for r in errors)]
    return "\n".join(md) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="label=REV[,key=value...]")
    # the demo's recipe without its amp line (the issue-time code has no amp key); the variants set amp
    p.add_argument("--config", default="configs/fmnist_ibot_hssl_vit_tiny.yaml")
    p.add_argument("--iters", type=int, default=40, help="iterations per run")
    p.add_argument("--warmup", type=int, default=10, help="iterations not timed (compilation, allocator warm-up)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "demo_speed"))
    p.add_argument("--render", default=None, metavar="JSON", help="rewrite OUT.md from a results JSON; run nothing")
    args = p.parse_args(argv)
    if args.render:
        from jhssl.fileio import atomic_write_text
        with open(args.render) as f:
            rec = json.load(f)
        atomic_write_text(args.out + ".md", markdown(rec))
        return
    try:
        variants = [parse_variant(v) for v in args.variants]
    except ValueError as e:
        p.error(str(e))
    if args.warmup >= args.iters:
        p.error(f"--warmup ({args.warmup}) must be below --iters ({args.iters})")
    from benchmarks.common import machine_info
    from jhssl.fileio import atomic_write_text
    machine = machine_info()
    load_start = [round(x, 2) for x in os.getloadavg()]
    tmp_root = tempfile.mkdtemp(prefix="demo_speed_code_")
    runs = []
    try:
        dirs = {rev: _checkout(rev, tmp_root) for _, rev, _ in variants}
        for rnd in range(args.rounds):
            for label, rev, overrides in variants:
                res = run_once(dirs[rev], overrides, args.iters, args.warmup, args.config, args.timeout)
                res.update(label=label, round=rnd)
                runs.append(res)
                print(json.dumps(res), flush=True)
    finally:
        for rev in {rev for _, rev, _ in variants if rev != "."}:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", os.path.join(tmp_root, f"rev-{rev}")],
                           capture_output=True)
        shutil.rmtree(tmp_root, ignore_errors=True)
    rec = {"command": "python benchmarks/demo_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine, "config": args.config,
           "iters": args.iters, "warmup": args.warmup, "rounds": args.rounds, "load_start": load_start,
           "load_end": [round(x, 2) for x in os.getloadavg()], "runs": runs,
           "summary": summarize(variants, runs)}
    atomic_write_text(args.out + ".json", json.dumps(rec, indent=1))
    atomic_write_text(args.out + ".md", markdown(rec))
    print(markdown(rec))


if __name__ == "__main__":
    main()
