"""The report's plots as PNG bytes (matplotlib, the report extra): accuracy against size with its Pareto
front, and the per-layer quantization error."""
from __future__ import annotations

import io
import math

import numpy as np

from edgeq.converter.report.engines import EDGEQ
from edgeq.converter.report.render import format_number, metric_label


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    # no timestamp in the PNG: the same report gives the same bytes
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt



def plot_accuracy_vs_size(report: dict) -> bytes:
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    headline = report["headline_metric"]
    variants = report["variants"]
    sizes = [v["size"]["bytes"] / 1024 for v in variants]
    scores = [v["accuracy"][EDGEQ][headline] for v in variants]
    front = sorted((s, a) for s, a, v in zip(sizes, scores, variants) if v["pareto"])
    floor = focus_floor(scores, [a for _, a in front])
    shown = [max(a, floor) for a in scores]
    names = [v["name"] if a >= floor else f"{v['name']} ({format_number(a, 3)}, off scale)" for v, a in zip(variants, scores)]
    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    try:
        others = [(s, a) for s, a, v, raw in zip(sizes, shown, variants, scores) if not v["pareto"] and raw >= floor]
        below = [(s, a) for s, a, raw in zip(sizes, shown, scores) if raw < floor]
        if others:
            axes.scatter(*zip(*others), color="#8a8a8a", s=36, label="dominated", zorder=3)
        if below:
            axes.scatter(*zip(*below), color="#8a8a8a", s=44, marker="v", label="below the axis", zorder=3)
        axes.scatter(*zip(*front), color="#d62728", s=56, marker="D", label="Pareto front", zorder=4)
        limits = (sizes, shown)
        if report.get("budget_search") and headline == "top1":
            path_sizes, path_scores = _draw_budget_search(axes, report["budget_search"])
            limits = (sizes + path_sizes, shown + [max(a, floor) for a in path_scores])
        axes.step([s for s, _ in front], [a for _, a in front], where="post", color="#d62728", alpha=0.6, zorder=2)
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(size_tick_label))
        axes.xaxis.set_minor_formatter(FuncFormatter(size_tick_label))
        axes.tick_params(axis="x", which="both", labelsize=8)
        axes.set_xlabel("model size (KiB, log scale)")
        axes.set_ylabel(metric_label(headline) + " (edgeq runtime)")
        axes.set_title("accuracy vs size: smaller and more accurate is better")
        axes.grid(True, which="both", alpha=0.3)
        legend = axes.legend(loc="lower right", fontsize=8)
        _pad_limits(axes, *limits)
        _place_labels(axes, sizes, shown, names, legend)
        return _figure_png(figure)
    finally:
        plt.close(figure)


def _draw_budget_search(axes, search: dict) -> tuple:
    """The size-budget search: every candidate it measured, in order, joined per quantization mode; the
    budget as a vertical line; the model it chose as a star. Returns the (sizes, scores) drawn."""
    steps = search["steps"]
    sizes = [step["bytes"] / 1024 for step in steps]
    scores = [step["metric"] / 100 for step in steps]
    for mode in dict.fromkeys(step["quantize"] for step in steps):
        points = [(s, a) for s, a, step in zip(sizes, scores, steps) if step["quantize"] == mode]
        axes.plot(*zip(*points), marker="o", markersize=4, linewidth=1, alpha=0.8, zorder=5,
                  label=f"budget search: {mode}")
    axes.axvline(search["target_bytes"] / 1024, color="#2ca02c", linestyle="--", linewidth=1, label="size budget")
    if search.get("best") is not None:
        best = search["best"]
        axes.scatter([sizes[best]], [scores[best]], marker="*", s=160, color="#2ca02c", zorder=6,
                     label="chosen" if search.get("met") else "best found (over --max-drop)")
    return sizes, scores


def focus_floor(scores: list, front_scores: list) -> float:
    """The lowest score the plot shows: the Pareto front's lowest score less half the front's spread
    (at least 0.02). Variants far below it (a broken calibration) are drawn on the bottom edge so
    they do not squash the differences that matter into a thin band."""
    top, low = max(scores), min(front_scores)
    floor = low - max(0.5 * (top - low), 0.02)
    lowest = min(scores)
    return lowest if lowest >= floor - (top - floor) else floor  # at most doubling the range: show it


def size_tick_label(value: float, _position=None) -> str:
    """Plain numbers on the log axis, only at 1, 2 and 5 times a power of ten (so they never crowd)."""
    if value <= 0:
        return ""
    lead = value / 10 ** math.floor(math.log10(value) + 1e-9)
    return f"{value:g}" if any(abs(lead - d) < 1e-6 for d in (1, 2, 5)) else ""


def coincident_groups(points: list, radius: float = 5.0) -> list:
    """Indices of points closer than ``radius`` (display units) to another of their group, in order:
    variants that land on the same spot share one label instead of overprinting."""
    groups = []
    for i, (x, y) in enumerate(points):
        near = [g for g in groups if any(math.hypot(x - points[j][0], y - points[j][1]) < radius for j in g)]
        merged = [j for g in near for j in g] + [i]
        groups = [g for g in groups if g not in near] + [sorted(merged)]
    return sorted(groups)


# Where a label may go relative to its point (offset in points, alignment), in order of preference.
_LABEL_SPOTS = [(8, 0, "left", "center"), (-8, 0, "right", "center"), (0, 8, "center", "bottom"),
                (0, -8, "center", "top"), (8, 6, "left", "bottom"), (8, -6, "left", "top"),
                (-8, 6, "right", "bottom"), (-8, -6, "right", "top"), (10, 20, "left", "bottom"),
                (10, -20, "left", "top"), (-10, 20, "right", "bottom"), (-10, -20, "right", "top")]
_LEADER = {"arrowstyle": "-", "color": "#999999", "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4}


def _place_labels(axes, xs, ys, names, legend) -> None:
    """Each group of coinciding points gets one label, at the first spot inside the axes that covers
    no point, no other label and not the legend."""
    from matplotlib.transforms import Bbox

    renderer = axes.figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    display = axes.transData.transform(np.column_stack([xs, ys]))
    taken = [Bbox.from_bounds(x - 5, y - 5, 10, 10) for x, y in display]
    taken.append(legend.get_window_extent(renderer))
    for group in coincident_groups([tuple(p) for p in display]):
        text = "\n".join(names[i] for i in group)
        anchor = (xs[group[0]], ys[group[0]])
        spot = _LABEL_SPOTS[0]  # crowded everywhere: the first spot, overlapping, beats no label
        for dx, dy, ha, va in _LABEL_SPOTS:
            # measured without its leader line, which always touches its own point
            trial = axes.annotate(text, anchor, textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=8)
            box = trial.get_window_extent(renderer)
            trial.remove()
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                spot = (dx, dy, ha, va)
                break
        dx, dy, ha, va = spot
        axes.annotate(text, anchor, textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=8,
                      arrowprops=_LEADER)


def _pad_limits(axes, sizes, scores) -> None:
    low, high = min(scores), max(scores)
    margin = max((high - low) * 0.12, 0.005)
    axes.set_ylim(low - margin, high + margin * 1.5)
    axes.set_xlim(min(sizes) / 1.6, max(sizes) * 1.6)  # room for labels either side


def plot_layer_sqnr(errors: list) -> bytes:
    """Horizontal bars, one per int8 tensor in run order... shown worst first, as the table is."""
    plt = _pyplot()
    figure = layer_sqnr_figure(errors)
    try:
        return _figure_png(figure)
    finally:
        plt.close(figure)


SQNR_GOOD_DB = 20  # the --min-sqnr default: below it, int8 error is large enough to show in accuracy
LABEL_WIDTH = 48


def layer_sqnr_figure(errors: list):
    """The figure of ``plot_layer_sqnr``; tensor names whole, wrapped at '/' (they differ at their ends)."""
    plt = _pyplot()
    shown = errors[:40]
    values = [e["sqnr_db"] if math.isfinite(e["sqnr_db"]) else 99.0 for e in shown]
    labels = [wrap_name(e["tensor"], LABEL_WIDTH) for e in shown]
    lines = sum(label.count("\n") + 1 for label in labels)
    figure, axes = plt.subplots(figsize=(8.5, 0.2 * lines + 0.1 * len(shown) + 1.4))
    positions = np.arange(len(shown))
    axes.barh(positions, values, color=["#d62728" if v < SQNR_GOOD_DB else "#1f77b4" for v in values])
    axes.set_yticks(positions, labels, fontsize=7)
    axes.invert_yaxis()
    axes.set_xlabel("SQNR (dB) of the int8 tensor against float; higher is better")
    more = f" (worst {len(shown)} of {len(errors)})" if len(errors) > len(shown) else ""
    axes.set_title(f"per-layer quantization error{more}")
    axes.axvline(SQNR_GOOD_DB, color="#555", linestyle=":", linewidth=1,
                 label=f"{SQNR_GOOD_DB} dB: below it (red), int8 error tends to cost accuracy")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=7, frameon=False)  # below: no bar hidden
    axes.grid(True, axis="x", alpha=0.3)
    return figure


def wrap_name(name: str, width: int) -> str:
    """``name`` on lines of at most ``width`` characters, broken after '/' where it can be."""
    lines, line = [], ""
    for part in name.replace("/", "/\0").split("\0"):
        while len(part) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(part[:width])
            part = part[width:]
        if len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    lines.append(line)
    return "\n".join(l for l in lines if l)
