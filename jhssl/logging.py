"""Run logging: JSON lines and PNG line plots (drawn with Pillow; matplotlib is not a dependency)."""
import json
import math
import os

from PIL import Image, ImageDraw, ImageFont

from jhssl.fileio import atomic_output

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


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


def _nice_ticks(lo, hi, n=5):
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    ticks, v = [], start
    while v <= hi + 1e-12 * abs(hi) and len(ticks) < 20:
        ticks.append(round(v, 12))
        v += step
    return ticks


def line_plot(path, series, title="", xlabel="", ylabel="", size=(800, 500)):
    """Draw ``series`` ({label: (xs, ys)}) as lines with axes, ticks and a legend; save PNG atomically."""
    W, H = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys)
           if y is not None and math.isfinite(float(y))]
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    else:
        x0, x1, y0, y1 = 0.0, 1.0, 0.0, 1.0
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x):
        return left + (x - x0) / (x1 - x0) * (W - left - right)

    def py(y):
        return H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom)

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for t in _nice_ticks(y0, y1):
        y = py(t)
        d.line([left - 4, y, left, y], fill="black")
        d.line([left + 1, y, W - right - 1, y], fill=(230, 230, 230))
        d.text((4, y - 6), f"{t:.4g}", fill="black", font=font)
    for t in _nice_ticks(x0, x1):
        x = px(t)
        d.line([x, H - bottom, x, H - bottom + 4], fill="black")
        d.text((x - 10, H - bottom + 8), f"{t:.4g}", fill="black", font=font)
    d.text((W // 2 - 4 * len(title), 12), title, fill="black", font=font)
    d.text((W // 2 - 3 * len(xlabel), H - 18), xlabel, fill="black", font=font)
    d.text((4, top - 16), ylabel, fill="black", font=font)
    for i, (label, (xs, ys)) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        line = [(px(x), py(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(float(y))]
        if len(line) > 1:
            d.line(line, fill=color, width=2)
        for p in line if len(line) <= 30 else []:
            d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=color)
        ly = top + 8 + 14 * i
        d.line([W - right - 150, ly + 6, W - right - 130, ly + 6], fill=color, width=3)
        d.text((W - right - 125, ly), label, fill="black", font=font)
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def plot_run(output_dir, log_name="log.jsonl"):
    """``loss_curves.png`` (every loss part per logged step) and ``knn_accuracy.png`` (k-NN top-1
    per evaluation) from the run's JSON log. Returns the paths written."""
    records = read_jsonl(os.path.join(output_dir, log_name))
    written = []
    steps = [r for r in records if r.get("type") == "step"]
    if steps:
        keys = [k for k in steps[-1] if k == "loss" or k.startswith("cls_") or k.startswith("patch_")]
        series = {k: ([r["iteration"] for r in steps if k in r], [r[k] for r in steps if k in r]) for k in keys}
        written.append(line_plot(os.path.join(output_dir, "loss_curves.png"), series,
                                 title="training loss", xlabel="iteration", ylabel="loss"))
    evals = [r for r in records if r.get("type") == "knn"]
    if evals:
        series = {}
        for r in evals:
            for k, v in r.items():
                if k.startswith("top1"):
                    series.setdefault(k, ([], []))
                    series[k][0].append(r["epoch"])
                    series[k][1].append(v)
        written.append(line_plot(os.path.join(output_dir, "knn_accuracy.png"), series,
                                 title="k-NN top-1 (teacher base CLS)", xlabel="epoch", ylabel="top-1 %"))
    return written
