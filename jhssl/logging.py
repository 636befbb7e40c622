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
    evals = [r for r in records if r.get("type") == "knn"]
    if evals:
        series = {}
        for r in evals:
            for k, v in r.items():
                if k.startswith("top1"):
                    series.setdefault(k, []).append((r["epoch"], v))
        path = os.path.join(output_dir, "knn_accuracy.png")
        plot_lines_png(path, series, title="k-NN top-1 % (teacher base CLS)", xlabel="epoch", size=RUN_PLOT_SIZE)
        written.append(path)
    return written
