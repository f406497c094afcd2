"""Compression to a size budget: the pruning level of every layer and the quantization mode that
meet a file size with the least measured loss on the user's eval set.

For each quantization mode (the one asked for first, then the others that store weights in a byte or
two), the unpruned model is converted; when its file is over the budget, channels are pruned (with
reconstruction, spread over the layers by measured sensitivity: ``prune_channels(max_weights=...)``)
to the share of weights the budget leaves, and again tighter while the file is still over it. Every
candidate is measured on the eval samples; the one that meets the budget with the least loss wins,
and a budget that no candidate meets within ``max_drop`` is refused with the best one found.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from edgeq.runtime.ir import ModelError

SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000 ** 2, "mib": 1024 ** 2}
QUANTIZE_MODES = ("int8", "dynamic", "float16")
# A mode whose unpruned file is this many times over the budget is not pruned: keeping under ~15% of
# the weights wrecks any model reconstruction has been measured on.
MAX_OVERSHOOT = 6.0
# Attempts per mode to bring the file under the budget (each one a conversion).
ATTEMPTS = 3
# The weights asked for are this share of what a file proportional to its weights would allow: the
# file also holds quantization parameters, names and the graph, which shrink less.
HEADROOM = 0.97


def parse_size(text: str) -> int:
    """Bytes in "150kB", "1.5 MiB", "20000" (kB = 1000 bytes, KiB = 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in SIZE_UNITS:
        raise ModelError(f"--target-size {text!r}: give a number of bytes, e.g. 150kB, 1.5MiB or 200000")
    size = int(float(match.group(1)) * SIZE_UNITS[unit])
    if size <= 0:
        raise ModelError(f"--target-size {text!r} must be more than 0 bytes")
    return size


@dataclass
class BudgetStep:
    """One candidate the search converted and measured."""

    quantize: str
    kept_weights: float      # share of the unpruned model's weights it keeps
    bytes: int
    metric: float            # top-1 accuracy on the eval samples, in percent
    drop: float              # points below the unpruned model in the asked-for mode
    fits: bool               # bytes <= the budget

    def label(self) -> str:
        pruning = "unpruned" if self.kept_weights >= 1.0 else f"{self.kept_weights:.0%} of the weights"
        return f"{self.quantize} {pruning}"


@dataclass
class BudgetSearch:
    target_bytes: int
    max_drop: float
    quantize: str
    reference_bytes: int
    reference_metric: float
    steps: list = field(default_factory=list)
    chosen: Optional[int] = None   # index into steps of the model that meets both
    best: Optional[int] = None     # index of the model written: the chosen one, else the closest
    contents: dict = field(default_factory=dict, repr=False)

    @property
    def met(self) -> bool:
        return self.chosen is not None

    def as_dict(self) -> dict:
        return {
            "target_bytes": self.target_bytes, "max_drop": self.max_drop, "quantize": self.quantize,
            "reference_bytes": self.reference_bytes, "reference_metric": self.reference_metric,
            "met": self.met, "chosen": self.chosen, "best": self.best,
            "steps": [asdict(step) | {"label": step.label()} for step in self.steps],
        }

    def format_lines(self) -> list:
        lines = [f"budget {self.target_bytes:,} bytes, at most {self.max_drop:g} points below the unpruned "
                 f"{self.quantize} model ({self.reference_bytes:,} bytes, {self.reference_metric:.2f}%):"]
        for index, step in enumerate(self.steps):
            mark = "->" if index == self.best else "  "
            lines.append(f" {mark} {step.label():28} {step.bytes:>10,} bytes  {step.metric:6.2f}%  "
                         f"drop {step.drop:+5.2f}  {'fits' if step.fits else 'over budget'}")
        return lines

    def verdict(self) -> str:
        if self.met:
            step = self.steps[self.chosen]
            return (f"chose {step.label()}: {step.bytes:,} bytes ({step.bytes / self.reference_bytes:.2f}x), "
                    f"{step.metric:.2f}% ({step.drop:+.2f} points)")
        if self.best is None:
            return f"no candidate fits {self.target_bytes:,} bytes"
        step = self.steps[self.best]
        reason = ("over budget" if not step.fits else
                  f"{step.drop:.2f} points below the unpruned model, over --max-drop {self.max_drop:g}")
        return (f"cannot meet {self.target_bytes:,} bytes within {self.max_drop:g} points; best found: "
                f"{step.label()}, {step.bytes:,} bytes, {step.metric:.2f}% ({reason})")


def search_budget(model_path, calibration, eval_path, *, target_bytes: Optional[int] = None,
                  target_ratio: Optional[float] = None, max_drop: float = 1.0, quantize: str = "int8",
                  labels_key: Optional[str] = None, input_shapes: Optional[dict] = None,
                  modes: tuple = QUANTIZE_MODES) -> BudgetSearch:
    """Search the pruning level and quantization mode for ``target_bytes`` (or ``target_ratio`` times
    the unpruned model's file in ``quantize`` mode) losing at most ``max_drop`` points of top-1
    accuracy on ``eval_path`` against that unpruned model. Returns the search, every step measured;
    ``contents[index]`` holds each step's file."""
    from edgeq.converter.api import convert, load_graph
    from edgeq.converter.calibrate import load_calibration
    from edgeq.converter.prune import weight_count
    from edgeq.converter.report.eval_data import load_eval

    if (target_bytes is None) == (target_ratio is None):
        raise ModelError("give one budget: --target-size or --target-ratio")
    if target_ratio is not None and not 0.0 < target_ratio:
        raise ModelError(f"--target-ratio must be more than 0, got {target_ratio}")
    if quantize not in modes:
        raise ModelError(f"a size budget searches {', '.join(modes)} models; --quantize {quantize} is not one of them")
    graph = load_graph(model_path, input_shapes)[0]
    samples = load_calibration(calibration, graph)
    data = load_eval(eval_path, graph, labels_key)
    if data.labels is None:
        raise ModelError(f"{eval_path}: a size budget weighs accuracy against labels; the eval file has none "
                         "(name its labels array with --labels-key)")
    weights = weight_count(graph)

    def measured(mode: str, share: float):
        options = {"calibration": samples} if mode == "int8" or share < 1.0 else {}
        if share < 1.0:
            options["prune_max_weights"] = int(share * weights)
        result = convert(model_path, quantize=mode, input_shapes=input_shapes, **options)
        return result.content, _top1(result.content, data)

    reference_content, reference_metric = measured(quantize, 1.0)
    budget = target_bytes if target_bytes is not None else int(target_ratio * len(reference_content))
    search = BudgetSearch(budget, max_drop, quantize, len(reference_content), reference_metric)

    def record(mode, share, content, metric):
        search.steps.append(BudgetStep(mode, share, len(content), metric, reference_metric - metric,
                                       len(content) <= budget))
        search.contents[len(search.steps) - 1] = content

    for mode in (quantize,) + tuple(m for m in modes if m != quantize):
        content, metric = (reference_content, reference_metric) if mode == quantize else measured(mode, 1.0)
        record(mode, 1.0, content, metric)
        if len(content) <= budget or len(content) > MAX_OVERSHOOT * budget:
            continue
        points = [(1.0, len(content))]
        for _ in range(ATTEMPTS):
            share = _next_share(points, budget * HEADROOM)
            content, metric = measured(mode, share)
            points.append((share, len(content)))
            record(mode, share, content, metric)
            if len(content) <= budget:
                break
    fitting = [i for i, step in enumerate(search.steps) if step.fits]
    within = [i for i in fitting if search.steps[i].drop <= max_drop]
    # least loss first; at equal loss the mode asked for, then the smaller file
    key = lambda i: (search.steps[i].drop, search.steps[i].quantize != quantize, search.steps[i].bytes)  # noqa: E731
    if within:
        search.chosen = search.best = min(within, key=key)
    elif fitting:
        search.best = min(fitting, key=key)
    return search


def _next_share(points: list, size: float) -> float:
    """The share of weights whose file should be ``size`` bytes: proportional from the unpruned file
    at first, then along the line through the last two (share, bytes) points (the file's part that
    does not shrink with the weights shows in its intercept)."""
    (share_a, bytes_a), (share_b, bytes_b) = (points[-2], points[-1]) if len(points) > 1 else ((0.0, 0.0), points[0])
    slope = (bytes_b - bytes_a) / (share_b - share_a) if share_b != share_a else 0.0
    if slope <= 0:
        return points[-1][0] * size / points[-1][1]
    return float(np.clip(share_b - (bytes_b - size) / slope, 0.02, 0.99))


def _top1(content: bytes, data) -> float:
    """Top-1 accuracy in percent of a converted model on the eval samples (our runtime, batched)."""
    from edgeq.converter.report.metrics import top1_accuracy
    from edgeq.runtime.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    inputs = {}
    for detail in interpreter.get_input_details():
        values = data.inputs[detail["name"]]
        if np.dtype(detail["dtype"]) != np.float32 and np.issubdtype(np.asarray(values).dtype, np.floating):
            scale, zero_point = detail["quantization"]
            info = np.iinfo(detail["dtype"])
            values = np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(detail["dtype"])
        inputs[detail["name"]] = values
    outputs = interpreter.run(inputs)
    return 100.0 * top1_accuracy(outputs[interpreter.get_output_details()[0]["name"]], data.labels)
