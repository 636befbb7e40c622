"""PNG plots drawn with Pillow (matplotlib is not a dependency): line panels and bar charts for
training logs, discrepancy dynamics and the head search. Files are written atomically."""
import io
import math
from typing import List, Mapping, Optional, Sequence, Tuple

from .fileio import atomic_write_bytes


_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _font(size: int = 12):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap default font, fixed size
        return ImageFont.load_default()


def _text_w(draw, text, font) -> int:
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    return r - l


def _nice_ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], start
    while v <= hi + step * 1e-6:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def _draw_panel(draw, box, title, series: Mapping[str, Sequence[Tuple[float, float]]], xlabel, font, small):
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 62, x1 - 12, y0 + 26, y1 - 40
    draw.text((x0 + (x1 - x0 - _text_w(draw, title, font)) // 2, y0 + 4), title, fill="black", font=font)
    xs = [p[0] for pts in series.values() for p in pts]
    ys = [p[1] for pts in series.values() for p in pts]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(ys), max(ys)
    if xmax == xmin:
        xmin, xmax = xmin - 0.5, xmax + 0.5
    pad = (ymax - ymin) * 0.08 or (abs(ymax) * 0.1 or 1.0)
    ymin, ymax = ymin - pad, ymax + pad

    def px(x):
        return left + (x - xmin) / (xmax - xmin) * (right - left)

    def py(y):
        return bottom - (y - ymin) / (ymax - ymin) * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline="black")
    for t in _nice_ticks(ymin, ymax):
        if ymin <= t <= ymax:
            yy = py(t)
            draw.line([left, yy, right, yy], fill=(230, 230, 230))
            draw.line([left - 4, yy, left, yy], fill="black")
            s = _fmt(t)
            draw.text((left - 6 - _text_w(draw, s, small), yy - 6), s, fill="black", font=small)
    for t in _nice_ticks(xmin, xmax):
        if xmin <= t <= xmax:
            xx = px(t)
            draw.line([xx, bottom, xx, bottom + 4], fill="black")
            s = _fmt(t)
            draw.text((xx - _text_w(draw, s, small) // 2, bottom + 6), s, fill="black", font=small)
    draw.text(((left + right - _text_w(draw, xlabel, small)) // 2, bottom + 22), xlabel, fill="black", font=small)
    ly = top + 4
    for i, (name, pts) in enumerate(series.items()):
        col = _COLORS[i % len(_COLORS)]
        pts = sorted(pts)
        coords = [(px(x), py(y)) for x, y in pts]
        if len(coords) > 1:
            draw.line(coords, fill=col, width=2)
        for cx, cy in (coords if len(coords) <= 30 else []):
            draw.ellipse([cx - 2.5, cy - 2.5, cx + 2.5, cy + 2.5], fill=col)
        if len(series) > 1:
            draw.line([right - 110, ly + 6, right - 92, ly + 6], fill=col, width=2)
            draw.text((right - 88, ly), str(name), fill="black", font=small)
            ly += 14


def plot_panels_png(path: str, panels: Sequence[Tuple[str, Mapping[str, Sequence[Tuple[float, float]]]]],
                    xlabel: str = "", panel_size: Tuple[int, int] = (420, 300)) -> None:
    """Side-by-side line panels: ``panels = [(title, {series_name: [(x, y), ...]}), ...]``."""
    from PIL import Image, ImageDraw
    panels = [(t, s) for t, s in panels if any(len(p) for p in s.values())]
    if not panels:
        raise ValueError("plot_panels_png: no data points to plot")
    w, h = panel_size
    img = Image.new("RGB", (w * len(panels), h), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    for i, (title, series) in enumerate(panels):
        series = {k: [(float(x), float(y)) for x, y in v] for k, v in series.items() if len(v)}
        _draw_panel(draw, (i * w, 0, (i + 1) * w, h), title, series, xlabel, font, small)
    _save_png(img, path)


def plot_lines_png(path: str, series: Mapping[str, Sequence[Tuple[float, float]]], title: str = "",
                   xlabel: str = "", size: Tuple[int, int] = (560, 360)) -> None:
    """One line panel of ``size`` pixels with several named series of (x, y) points."""
    plot_panels_png(path, [(title, series)], xlabel=xlabel, panel_size=size)


def plot_bars_png(path: str, labels: Sequence[str], values: Sequence[float], title: str = "",
                  ylabel: str = "", highlight: Optional[int] = None) -> None:
    """Vertical bar chart; bar ``highlight`` (index) is drawn in a second colour."""
    from PIL import Image, ImageDraw
    if len(labels) != len(values) or not len(labels):
        raise ValueError("plot_bars_png: labels and values must be non-empty and of equal length")
    vals = [float(v) for v in values]
    finite = [v for v in vals if math.isfinite(v)]
    w, h = max(360, 90 * len(labels) + 100), 360
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    left, right, top, bottom = 70, w - 20, 34, h - 50
    draw.text(((w - _text_w(draw, title, font)) // 2, 8), title, fill="black", font=font)
    vmax = max(finite + [0.0]) or 1.0
    vmin = min(finite + [0.0])
    ymax, ymin = vmax * 1.12 if vmax > 0 else 0.0, vmin * 1.12 if vmin < 0 else 0.0
    if ymax == ymin:
        ymax = 1.0

    def py(y):
        return bottom - (y - ymin) / (ymax - ymin) * (bottom - top)

    for t in _nice_ticks(ymin, ymax):
        if ymin <= t <= ymax:
            yy = py(t)
            draw.line([left, yy, right, yy], fill=(230, 230, 230))
            s = _fmt(t)
            draw.text((left - 6 - _text_w(draw, s, small), yy - 6), s, fill="black", font=small)
    draw.rectangle([left, top, right, bottom], outline="black")
    if ylabel:
        draw.text((4, top - 22), ylabel, fill="black", font=small)
    slot = (right - left) / len(labels)
    for i, (lab, v) in enumerate(zip(labels, vals)):
        cx = left + slot * (i + 0.5)
        col = _COLORS[1] if i == highlight else _COLORS[0]
        if math.isfinite(v):
            y_a, y_b = sorted((py(0.0), py(v)))
            draw.rectangle([cx - slot * 0.32, y_a, cx + slot * 0.32, y_b], fill=col)
            s = _fmt(v)
            draw.text((cx - _text_w(draw, s, small) // 2, min(py(v), py(0.0)) - 14), s, fill="black", font=small)
        draw.text((cx - _text_w(draw, str(lab), small) // 2, bottom + 6), str(lab), fill="black", font=small)
    _save_png(img, path)


def _save_png(img, path: str) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
