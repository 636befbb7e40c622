"""Run logging: JSON lines and PNG line plots (drawn with Pillow; matplotlib is not a dependency)."""
import json
import math
import os

from jhssl.plots import plot_lines_png

RUN_PLOT_SIZE = (800, 500)  # loss_curves.png and knn_accuracy.png, in pixels
# A method's logged loss parts are named ``<term>_<network>`` with one of these terms (DINO/iBOT:
# cls, patch; MoCo v3: ctr; MAE: rec); the loss curves draw them and ``loss``.
LOSS_PART_PREFIXES = ("cls_", "patch_", "ctr_", "rec_")


class JsonlLogger:
    """Appends one JSON object per line to ``path`` (flushed each write, so a crash loses nothing)."""

    def __init__(self, path, enabled=True):
        self.path = path
        self.enabled = enabled
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
            f.flush()


def _jsonable(x):
    try:
        return float(x)
    except Exception:
        return str(x)


def read_jsonl(path):
    out = []
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
    return out


def plot_run(output_dir, log_name="log.jsonl"):
    """``loss_curves.png`` (every loss part per logged step) and ``knn_accuracy.png`` (k-NN top-1
    per evaluation) from the run's JSON log. Returns the paths written."""
    records = read_jsonl(os.path.join(output_dir, log_name))
    written = []
    steps = [r for r in records if r.get("type") == "step"]
    if steps:
        keys = [k for k in steps[-1] if k == "loss" or k.startswith(LOSS_PART_PREFIXES)]
        series = {k: [(r["iteration"], r[k]) for r in steps if k in r and math.isfinite(r[k])] for k in keys}
        if any(series.values()):  # a run that diverged at once has no finite point to draw
            path = os.path.join(output_dir, "loss_curves.png")
            plot_lines_png(path, series, title="training loss", xlabel="iteration", size=RUN_PLOT_SIZE)
            written.append(path)
        mon = [k for k in ("teacher_entropy", "teacher_kl_uniform", "agreement") if k in steps[-1]]
        if mon:
            path = os.path.join(output_dir, "collapse_monitors.png")
            plot_collapse_monitors(path, steps, mon)
            written.append(path)
    evals = [r for r in records if r.get("type") == "knn"]
    if evals:
        series = {}
        for r in evals:
            for k, v in r.items():
                if k.startswith("top1"):
                    series.setdefault(k, []).append((r["epoch"], v))
        untrained = [r for r in records if r.get("type") == "knn_untrained"]
        if untrained:  # the untrained network's level, as a horizontal line over the epochs
            x_end = max(max(r["epoch"] for r in evals), 1)
            for k, v in untrained[-1].items():
                if k.startswith("top1"):
                    series[f"untrained {k[len('top1_'):]}"] = [(0, v), (x_end, v)]
        path = os.path.join(output_dir, "knn_accuracy.png")
        plot_lines_png(path, series, title="k-NN top-1 % (teacher base CLS)", xlabel="epoch", size=RUN_PLOT_SIZE)
        written.append(path)
    return written


def plot_collapse_monitors(path, steps, keys):
    """Teacher entropy and KL(teacher mean || uniform) in nats next to ln K, and the student-teacher
    argmax agreement: the DINO collapse monitors (jhssl.monitors) per logged step."""
    from jhssl.plots import plot_panels_png
    pts = {k: [(r["iteration"], r[k]) for r in steps if k in r and math.isfinite(r[k])] for k in keys}
    nats = {k: pts[k] for k in ("teacher_entropy", "teacher_kl_uniform") if k in pts}
    log_k = steps[-1].get("log_k")
    if log_k and nats:
        xs = [x for v in nats.values() for x, _ in v]
        nats["ln K"] = [(min(xs), log_k), (max(xs), log_k)]
    panels = [("teacher targets (nats)", nats)]
    if "agreement" in pts:
        panels.append(("student-teacher argmax agreement", {"agreement": pts["agreement"]}))
    plot_panels_png(path, panels, xlabel="iteration", panel_size=(520, 360))
