"""The search's result files: JSON, a Markdown table with the setup and timing, a bar chart of D."""
import json
from typing import Dict

from jhssl import metrics
from jhssl.fileio import atomic_write_text


def write_results(out_prefix: str, result: Dict) -> Dict[str, str]:
    """``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png`` (bar chart of D), atomically.
    (``run_search`` also writes the per-iteration losses to ``<prefix>_history.jsonl``.)"""
    ranking = result["ranking"]
    paths = {"json": out_prefix + ".json", "md": out_prefix + ".md", "png": out_prefix + ".png"}
    atomic_write_text(paths["json"], json.dumps(result, indent=2) + "\n")
    lines = [f"# Auxiliary-head search: {result.get('base', '')}", ""]
    if result.get("command"):
        lines += ["Command:", "", "```", result["command"], "```", ""]
    lines += ["| rank | head | D = KL(z1b ‖ z1h) |", "|---|---|---|"]
    lines += [f"| {r['rank']} | {r['head']} | {r['D']:.4g} |" for r in ranking]
    lines += ["", f"Recommended: `{result['recommended']}` (argmax D, paper Eq. 8)", ""]
    s = result.get("setup", {})
    if s:
        ep = s.get('epochs')
        lines += [f"Setup: {s.get('iterations')} iterations ({ep} epoch{'' if ep == 1 else 's'}) on "
                  f"{s.get('train_images')} images (data.subset={s.get('subset')}), "
                  f"batch {s.get('batch_size')}, head depth {s.get('depth')}; D over {s.get('eval_images')} "
                  f"held-out images.", ""]
    tm = result.get("timing")
    if tm:
        lines += [f"Timing on {s.get('device', '?')} (short runs of the same training loop, jhssl.train.train, on "
                  f"the same data, batch and machine; median seconds per iteration, data loading included, "
                  f"over {tm['iters_timed']} iterations after {tm['warmup_iters']} warm-up ones, in which "
                  f"Jittor compiles):", "",
                  f"- search with {tm['n_heads']} heads: {tm['search_s_per_iter']:.3f} s/iter",
                  f"- single head ({tm['single_head']}): {tm['single_s_per_iter']:.3f} s/iter",
                  f"- ratio: {tm['ratio']:.2f}x (the paper reports 1.4x for six heads); the search's whole "
                  f"training took {result.get('train_wall_s', float('nan')):.1f} s (setup, compilation and "
                  f"checkpoints included), its iterations alone ~{tm.get('search_run_estimate_s', float('nan')):.1f} s "
                  f"and a single-head run's ~{tm.get('single_run_estimate_s', float('nan')):.1f} s", ""]
    if result.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in result["notes"]] + [""]
    atomic_write_text(paths["md"], "\n".join(lines))
    best = 0
    metrics.plot_bars_png(paths["png"], [r["head"] for r in ranking], [r["D"] for r in ranking],
                          title=f"discrepancy D per auxiliary head ({result.get('base', '')})",
                          ylabel="D", highlight=best)
    return paths
