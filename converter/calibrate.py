"""Calibration: run the float graph on edgeq's runtime over sample inputs and observe activation ranges.

Only running statistics are kept per tensor (a min/max pair, or a histogram), never the tensors of all
samples. Observers:

* ``minmax``: the smallest and largest value seen (the default; TFLite's converter does this).
* ``percentile``: the (100 - p)th and p-th percentiles of all values (p = 99.99 by default).
* ``entropy``: TensorRT's threshold that minimises the KL divergence between the histogram of |x|
  and its 8-bit quantized version; the observed range is clipped to [-threshold, threshold].
* ``mse``: the clipping range whose int8 quantization has the least mean squared error.

Histograms cover [-R, R] with a fixed number of bins; when a later batch exceeds R, R doubles and
pairs of bins merge, so the histogram stays exact up to its current bin width.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from edgeq.converter.quantize import choose_activation_params
from edgeq.runtime.fixedpoint import round_half_away
from edgeq.runtime.inputs import load_samples
from edgeq.runtime.ir import Graph, ModelError

OBSERVERS = ("minmax", "percentile", "entropy", "mse")


# -- loading calibration data ----------------------------------------------------------------------

def load_calibration(source, graph: Graph, nchw_to_nhwc: Optional[bool] = None,
                     num_samples: Optional[int] = None) -> dict:
    """Calibration samples as ``{input name: array}`` in the graph's layout, first axis = samples, from
    a file, a folder of images, arrays, an iterable of samples or a ``get_next()`` reader:
    ``edgeq.runtime.inputs.load_samples``, the loader ``edgeq run`` and the report use too."""
    return load_samples(source, graph, "calibration", nchw_to_nhwc, num_samples)


# -- observers -------------------------------------------------------------------------------------

class RangeObserver:
    """Running min and max."""

    def __init__(self):
        self.min = np.inf
        self.max = -np.inf

    def update(self, values: np.ndarray) -> None:
        if values.size:
            self.min = min(self.min, float(values.min()))
            self.max = max(self.max, float(values.max()))

    def range(self) -> tuple:
        if self.min > self.max:
            return 0.0, 0.0
        return self.min, self.max

    def clipped(self, lo: float, hi: float) -> tuple:
        """[lo, hi] intersected with the observed range."""
        lo, hi = max(lo, self.min), min(hi, self.max)
        return (lo, hi) if lo <= hi else (self.min, self.max)


class HistogramObserver(RangeObserver):
    """Running min/max plus a histogram over [-R, R] whose R doubles as needed."""

    def __init__(self, num_bins: int = 2048):
        super().__init__()
        if num_bins % 4:
            raise ValueError("num_bins must be a multiple of 4 so that doubling the range merges bins evenly")
        self.num_bins = num_bins
        self.counts = np.zeros(num_bins, dtype=np.int64)
        self.limit = 0.0  # R; 0 until the first non-zero value

    def update(self, values: np.ndarray) -> None:
        values = values.ravel()
        if not values.size:
            return
        super().update(values)
        peak = max(abs(self.min), abs(self.max))
        if peak == 0:
            self.counts[self.num_bins // 2] += values.size
            return
        if self.limit == 0:
            # Everything seen so far was 0 and sits in the centre bin, which stays the centre bin.
            self.limit = peak
        while peak > self.limit:
            self._double_range()
        width = 2 * self.limit / self.num_bins
        index = np.floor((values.astype(np.float64) + self.limit) / width).astype(np.int64)
        np.clip(index, 0, self.num_bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.num_bins)

    def _double_range(self) -> None:
        n = self.num_bins
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts = np.zeros(n, dtype=np.int64)
        self.counts[n // 4: n // 4 + n // 2] = merged
        self.limit *= 2

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.limit, self.limit, self.num_bins + 1)


class PercentileObserver(HistogramObserver):
    def __init__(self, percentile: float = 99.99, num_bins: int = 2048):
        super().__init__(num_bins)
        if not 50 < percentile <= 100:
            raise ValueError("percentile must be in (50, 100]")
        self.percentile = percentile

    def range(self) -> tuple:
        if self.min > self.max or self.limit == 0:
            return super().range()
        total = self.counts.sum()
        cumulative = np.concatenate([[0], np.cumsum(self.counts)]) / total
        edges = self.edges
        # Linear interpolation of the empirical CDF between bin edges.
        lo = float(np.interp(1 - self.percentile / 100, cumulative, edges))
        hi = float(np.interp(self.percentile / 100, cumulative, edges))
        return self.clipped(lo, hi)


class EntropyObserver(RangeObserver):
    """TensorRT's entropy calibration: the threshold T that minimises the KL divergence between the
    histogram of |x| clipped at T and its quantization into the int8 levels that [-T, T] (or [0, T]
    for a one-signed tensor) gets.

    Two departures from a plain histogram, both because the int8 grid represents these values
    exactly and the KL divergence would otherwise score them as quantization loss:

    * exact zeros (a ReLU's floor, often half of its output) are counted apart and left out of the
      search. In a histogram bin they form a spike that any level spanning several bins smears over
      its neighbours; only candidates with one bin per level escape that, so the search would always
      pick its lower bound (with ReLU6, exactly a quarter of the range). TensorRT does the same by
      replacing the first bin's count with the second's.
    * |x| gets all ``num_bins`` bins (a signed histogram folded in two would give it half), so the
      lowest candidate, ``levels`` bins, is a small share of the observed range.
    """

    def __init__(self, num_bins: int = 2048):
        super().__init__()
        if num_bins % 2:
            raise ValueError("num_bins must be even so that doubling the range merges bins in pairs")
        self.num_bins = num_bins
        self.counts = np.zeros(num_bins, dtype=np.int64)  # of |x| over [0, limit]
        self.zeros = 0  # exact zeros, also counted in counts[0]
        self.limit = 0.0  # 0 until the first non-zero value

    def update(self, values: np.ndarray) -> None:
        values = values.ravel()
        if not values.size:
            return
        super().update(values)
        self.zeros += values.size - int(np.count_nonzero(values))
        peak = max(abs(self.min), abs(self.max))
        if peak == 0:
            self.counts[0] += values.size
            return
        if self.limit == 0:
            self.limit = peak
        while peak > self.limit:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.zeros(self.num_bins, dtype=np.int64)
            self.counts[: self.num_bins // 2] = merged
            self.limit *= 2
        index = (np.abs(values.astype(np.float64)) * (self.num_bins / self.limit)).astype(np.int64)
        np.minimum(index, self.num_bins - 1, out=index)  # |x| == limit belongs to the last bin
        self.counts += np.bincount(index, minlength=self.num_bins)

    def range(self) -> tuple:
        if self.min > self.max or self.limit == 0:
            return super().range()
        magnitude = self.counts.astype(np.float64)
        magnitude[0] -= self.zeros
        occupied = np.flatnonzero(magnitude)
        if not occupied.size:
            return super().range()
        # Search only up to the largest magnitude seen, as TensorRT's [0, max|x|] histogram does.
        magnitude = magnitude[: occupied[-1] + 1]
        # [0, T] spans 255 steps of the int8 grid; [-T, T] gives each side half of them.
        levels = 255 if self.min >= 0 or self.max <= 0 else 128
        threshold = _kl_threshold_bin(magnitude, levels) * (self.limit / self.num_bins)
        return self.clipped(-threshold, threshold)


def _kl_threshold_bin(hist: np.ndarray, levels: int) -> int:
    """The number i of leading bins (``levels`` <= i <= ``hist.size``) that loses least, TensorRT's way.

    P is ``hist[:i]`` with the outliers ``hist[i:]`` added into its last bin; Q is ``hist[:i]`` (without
    them) merged into ``levels`` groups of consecutive bins, each group's mass spread evenly over its
    non-empty bins; the score is KL(P || Q), each normalised to sum 1. Q not seeing the outliers is
    what makes clipping cost something. A candidate whose last bin is empty while outliers exist has
    Q = 0 where P > 0 (an infinite divergence) and is skipped.

    All candidates at once, through cumulative sums: with N = sum(hist), S = sum(hist[:i]), group
    masses m_j and non-empty counts n_j, and M_j = m_j (+ the outliers for the last group),
        KL = (sum_b P_b log P_b - sum_j M_j log(m_j / n_j)) / N + log(S / N).
    """
    nbins = hist.size
    if nbins <= levels:
        return nbins
    hist = hist.astype(np.float64)
    total = hist.sum()
    mass_before = np.concatenate([[0.0], np.cumsum(hist)])  # mass_before[b] = sum(hist[:b])
    nonempty_before = np.concatenate([[0], np.cumsum(hist > 0)])
    xlogx = np.where(hist > 0, hist * np.log(np.where(hist > 0, hist, 1.0)), 0.0)
    xlogx_before = np.concatenate([[0.0], np.cumsum(xlogx)])

    candidates = np.arange(levels, nbins + 1)  # i
    outliers = total - mass_before[candidates]
    last = hist[candidates - 1] + outliers
    # Bin b of the first i falls in group (b * levels) // i, so group j starts at ceil(j * i / levels).
    group_start = (np.arange(levels + 1)[None, :] * candidates[:, None] + levels - 1) // levels
    group_mass = np.diff(mass_before[group_start], axis=1)
    group_nonempty = np.diff(nonempty_before[group_start], axis=1)
    spread = np.log(np.where(group_mass > 0, group_mass, 1.0) / np.maximum(group_nonempty, 1))
    reference_mass = group_mass.copy()
    reference_mass[:, -1] += outliers
    p_log_p = xlogx_before[candidates - 1] + np.where(last > 0, last * np.log(np.where(last > 0, last, 1.0)), 0.0)
    kept = total - outliers
    with np.errstate(divide="ignore"):
        divergence = (p_log_p - np.sum(reference_mass * spread, axis=1)) / total + np.log(kept / total)
    impossible = (hist[candidates - 1] == 0) & (outliers > 0)
    divergence[impossible | (kept <= 0)] = np.inf
    if not np.isfinite(divergence).any():
        return nbins
    return int(candidates[np.argmin(divergence)])


class MseObserver(HistogramObserver):
    """The range, shrunk from the observed one, whose int8 quantization has the least squared error."""

    def range(self) -> tuple:
        if self.min > self.max or self.limit == 0 or self.min == self.max:
            return super().range()
        # Values are taken as spread evenly inside each bin: a few points per bin stand for them, so
        # that steps finer than a bin are not scored as error-free.
        points_per_bin = 8
        width = 2 * self.limit / self.num_bins
        keep = np.flatnonzero(self.counts)
        offsets = (np.arange(points_per_bin) + 0.5) / points_per_bin
        centres = (self.edges[keep][:, None] + offsets * width).ravel()
        weights = np.repeat(self.counts[keep].astype(np.float64) / points_per_bin, points_per_bin)
        lo0, hi0 = min(self.min, 0.0), max(self.max, 0.0)

        def error(lo, hi):
            scale, zero_point = choose_activation_params(lo, hi)
            q = np.clip(round_half_away(centres / scale) + zero_point, -128, 127)  # as quantize_affine
            return float(np.sum(weights * ((q - zero_point) * scale - centres) ** 2))

        shrink = np.linspace(0.05, 1.0, 96)
        best = min(shrink, key=lambda a: error(lo0 * a, hi0 * a))
        lo, hi = lo0 * best, hi0 * best
        # Then each end on its own: asymmetric tails want different clipping.
        if lo0 < 0:
            lo = lo0 * min(shrink, key=lambda a: error(lo0 * a, hi))
        if hi0 > 0:
            hi = hi0 * min(shrink, key=lambda a: error(lo, hi0 * a))
        return self.clipped(lo, hi)


def make_observer(method: str, percentile: float = 99.99, num_bins: int = 2048) -> RangeObserver:
    if method == "minmax":
        return RangeObserver()
    if method == "percentile":
        return PercentileObserver(percentile, num_bins)
    if method == "entropy":
        return EntropyObserver(num_bins)
    if method == "mse":
        return MseObserver(num_bins)
    raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(OBSERVERS)}")


# -- calibration -----------------------------------------------------------------------------------

# A batch is sized so that its largest float activation stays near this many bytes: big enough to
# spread the per-op cost over several samples, small enough that a batch's tensors stay in cache and
# freed blocks are reused (allocations over 32 MB are mapped afresh by malloc each time, and filling
# new pages costs more than the arithmetic in them).
BATCH_BYTES = 4 << 20
MAX_BATCH_SIZE = 256


def default_batch_size(graph: Graph) -> int:
    """Samples per calibration run: as many as keep the largest activation under ``BATCH_BYTES``."""
    per_sample = [
        int(np.prod(t.shape[1:], dtype=np.int64)) * t.dtype.itemsize
        for t in graph.tensors.values() if t.data is None and t.shape
    ]
    largest = max(per_sample, default=0)
    return int(np.clip(BATCH_BYTES // max(largest, 1), 1, MAX_BATCH_SIZE))


def batch_size_for(graph: Graph, samples: dict) -> int:
    """``default_batch_size``, or 1 when running several samples at once would not give each sample's
    own results. The runtime runs a batch-1 graph on a batch by scaling the leading axis, which is
    right while that axis stays the batch; a graph that folds the batch into another axis with
    shapes fixed for batch 1 (Hugging Face's attention-mask builder flattens the [1, S] mask and
    gathers with constant indices) would silently give every sample the first one's mask."""
    size = default_batch_size(graph)
    return size if size == 1 or runs_batched(graph, samples) else 1


def runs_batched(graph: Graph, samples: dict, count: int = 4) -> bool:
    """Whether ``count`` samples spread over ``samples`` (first and last included, as padding and
    lengths tend to vary along a data set) give, run as one batch, the outputs they give one by one."""
    from edgeq.runtime.interpreter import Interpreter

    total = len(samples[graph.inputs[0]]) if graph.inputs else 0
    picks = np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))
    if len(picks) < 2:
        return True
    interpreter = Interpreter.from_graph(graph)
    try:
        batched = interpreter.run({n: np.asarray(samples[n])[picks] for n in graph.inputs})
    except (ValueError, IndexError, ModelError):  # a kernel met shapes it cannot batch
        return False
    singles = [interpreter.run({n: np.asarray(samples[n])[[i]] for n in graph.inputs}) for i in picks]
    for name in graph.outputs:
        expected = np.concatenate([single[name] for single in singles]).astype(np.float64)
        actual = np.asarray(batched[name], dtype=np.float64)
        if actual.shape != expected.shape:
            return False
        tolerance = 1e-4 * max(float(np.max(np.abs(expected), initial=0.0)), 1e-6)
        if not np.allclose(actual, expected, rtol=0.0, atol=tolerance, equal_nan=True):
            return False
    return True


def calibrate(graph: Graph, samples: dict, method: str = "minmax", batch_size: Optional[int] = None,
              percentile: float = 99.99, num_bins: int = 2048, progress: bool = True) -> dict:
    """``{tensor name: (min, max)}`` for every float activation (graph inputs included).

    ``samples``: ``{input name: array}`` with samples on the first axis (see ``load_calibration``).
    The float graph runs on edgeq's runtime ``batch_size`` samples at a time (by default as many as
    ``batch_size_for`` says); every activation is observed as it is produced and then released,
    so memory holds one batch's live tensors, not all of them.
    """
    from edgeq.runtime.interpreter import Interpreter

    make_observer(method, percentile, num_bins)  # reject a bad method before running anything
    missing = [n for n in graph.inputs if n not in samples]
    if missing:
        raise ModelError(f"calibration samples are missing model inputs {missing}")
    counts = {int(np.shape(samples[n])[0]) for n in graph.inputs}
    if len(counts) != 1 or 0 in counts:
        raise ModelError(f"calibration inputs need the same, non-zero number of samples; got {sorted(counts)}")
    total = counts.pop()
    batch_size = batch_size or batch_size_for(graph, samples)

    interpreter = Interpreter.from_graph(graph)
    observed = [
        name for name, t in graph.tensors.items() if t.data is None and t.dtype == np.float32
    ]
    observers = {name: make_observer(method, percentile, num_bins) for name in observed}

    def observe(name, value):
        observer = observers.get(name)
        if observer is not None and value is not None:
            observer.update(np.asarray(value))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"calibrating ({method})", unit="sample")
    try:
        for start in range(0, total, batch_size):
            batch = {n: np.asarray(samples[n][start: start + batch_size]) for n in graph.inputs}
            for name, value in batch.items():
                observe(name, value)
            interpreter.run(batch, observe=observe)
            if bar is not None:
                bar.update(len(next(iter(batch.values()))))
    finally:
        if bar is not None:
            bar.close()
    return {name: tuple(float(v) for v in observer.range()) for name, observer in observers.items()}
