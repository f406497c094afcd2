"""Calibration: observers on known distributions, the batched runtime pass, and calibration files."""
import pickle

import numpy as np
import pytest

from edgeq.converter.calibrate import (
    EntropyObserver,
    HistogramObserver,
    MseObserver,
    PercentileObserver,
    RangeObserver,
    _kl_threshold_bin,
    batch_size_for,
    calibrate,
    load_calibration,
)
from edgeq.runtime.ir import Graph, ModelError, Op, Tensor

RNG = np.random.default_rng(0)


def feed(observer, values, batches=4):
    for chunk in np.array_split(values, batches):
        observer.update(chunk)
    return observer.range()


# -- observers -------------------------------------------------------------------------------------

def test_minmax_is_the_extremes_over_all_batches():
    values = RNG.normal(size=10_000)
    assert feed(RangeObserver(), values) == (values.min(), values.max())


def test_histogram_keeps_every_count_when_the_range_doubles():
    observer = HistogramObserver(num_bins=64)
    observer.update(np.array([0.3, -0.5, 0.2]))
    observer.update(np.array([3.0, -7.0]))  # forces the range from 0.5 to 8
    assert observer.limit == 8.0 and observer.counts.sum() == 5
    edges = observer.edges
    for value in (0.3, -0.5, 0.2, 3.0, -7.0):
        index = np.searchsorted(edges, value, side="right") - 1
        assert observer.counts[index] >= 1


def test_percentile_of_a_uniform_distribution():
    values = RNG.uniform(-1.0, 3.0, size=200_000)
    lo, hi = feed(PercentileObserver(percentile=99.0), values)
    assert lo == pytest.approx(-1.0 + 0.04, abs=0.01)
    assert hi == pytest.approx(3.0 - 0.04, abs=0.01)


def test_percentile_ignores_rare_outliers():
    values = np.concatenate([RNG.normal(size=100_000), [50.0, -40.0]])
    lo, hi = feed(PercentileObserver(percentile=99.9), values)
    assert -4.0 < lo < -2.5 and 2.5 < hi < 4.0


def test_entropy_clips_the_long_tail_of_a_laplace_distribution():
    values = RNG.laplace(scale=1.0, size=200_000)
    lo, hi = feed(EntropyObserver(), values)
    assert 3.0 < hi < values.max() and values.min() < lo < -3.0


def test_entropy_keeps_a_uniform_distribution_whole():
    values = RNG.uniform(0.0, 1.0, size=100_000)
    lo, hi = feed(EntropyObserver(), values)
    assert lo == pytest.approx(0.0, abs=1e-3) and hi == pytest.approx(1.0, abs=0.02)


def relu6_output(size, scale=0.8, saturated=0.005):
    """What a ReLU6 makes of a peaked pre-activation: half exact zeros, a body that thins out
    towards 6, and a spike at 6 where the larger pre-activations saturate."""
    values = np.concatenate([RNG.laplace(0.0, scale, size=size), np.full(int(size * saturated), 9.0)])
    return np.clip(RNG.permutation(values), 0.0, 6.0).astype(np.float32)


def test_entropy_keeps_the_saturation_spike_of_a_relu6_output():
    # The spike holds the largest activations; clipping it (to 1.5, a quarter of the range, before
    # exact zeros were left out of the search) cost digits_mobilenetv2 three quarters of its accuracy.
    values = relu6_output(400_000)
    assert np.mean(values == 6.0) > 0.004 and np.mean(values == 0.0) > 0.45
    lo, hi = feed(EntropyObserver(), values)
    assert lo == 0.0 and hi >= 0.9 * 6.0


def test_entropy_is_not_pulled_down_by_a_relu_floor_of_exact_zeros():
    # Half the values are exactly 0, which int8 represents exactly; counted in the first bin, they
    # made every candidate wider than one bin per level look lossy (this one was clipped to half).
    values = np.maximum(RNG.laplace(0.0, 1.0, size=400_000), 0.0).astype(np.float32)
    lo, hi = feed(EntropyObserver(), values)
    assert lo == 0.0 and hi > 0.75 * values.max()


def test_entropy_threshold_is_the_kl_minimum_of_tensorrts_definition():
    """The all-candidates-at-once search picks the same bin count as the definition, one i at a time."""
    def direct(hist, levels):
        best_bin, best_divergence = hist.size, np.inf
        for i in range(levels, hist.size + 1):
            reference = hist[:i].copy()
            reference[i - 1] += hist[i:].sum()
            group = (np.arange(i) * levels) // i
            nonempty = hist[:i] > 0
            group_mass = np.bincount(group, weights=hist[:i], minlength=levels)
            group_nonempty = np.bincount(group, weights=nonempty, minlength=levels)
            candidate = np.where(nonempty, group_mass[group] / np.maximum(group_nonempty[group], 1), 0.0)
            p, q = reference / reference.sum(), candidate / candidate.sum()
            mask = p > 0
            if np.any(q[mask] == 0):
                continue
            divergence = np.sum(p[mask] * np.log(p[mask] / q[mask]))
            if divergence < best_divergence:
                best_bin, best_divergence = i, divergence
        return best_bin

    rng = np.random.default_rng(1)
    for trial in range(6):
        size = int(rng.integers(300, 700))
        hist = rng.poisson(rng.uniform(0, 30, size) * (rng.uniform(size=size) > 0.2)).astype(np.float64)
        hist[-1] = max(hist[-1], 1.0)
        levels = (128, 255)[trial % 2]
        assert _kl_threshold_bin(hist, levels) == direct(hist, levels)


def test_mse_clips_outliers_that_would_waste_the_int8_levels():
    # One outlier at 100 among a million N(0, 1) values: the full range's step (~0.4) costs every
    # value ~step^2/12; clipping the outlier to about 40 halves that for ~3600 on the one value.
    values = np.concatenate([RNG.normal(size=1_000_000), [100.0]])
    lo, hi = feed(MseObserver(), values)
    assert 20.0 < hi < 60.0 and lo < -3.0


def test_mse_keeps_a_uniform_distribution_nearly_whole():
    values = RNG.uniform(-2.0, 2.0, size=100_000)
    lo, hi = feed(MseObserver(), values)
    assert lo < -1.8 and hi > 1.8


# -- calibrate() on the runtime --------------------------------------------------------------------

def relu_graph():
    g = Graph([Tensor("x", (1, 4)), Tensor("y", (1, 4))], inputs=["x"], outputs=["y"])
    g.add_op(Op("RELU", ["x"], ["y"]))
    return g


def test_calibrate_observes_inputs_and_activations_in_batches():
    x = RNG.normal(size=(70, 4)).astype(np.float32)
    ranges = calibrate(relu_graph(), {"x": x}, batch_size=32, progress=False)
    assert ranges["x"] == pytest.approx((x.min(), x.max()))
    assert ranges["y"] == pytest.approx((0.0, x.max()))


def batch_folding_mask_graph():
    """Hugging Face's mask builder in miniature: the [1, 4] mask is flattened, gathered with indices
    fixed for batch 1, reshaped back and added to the scores; run on a batch, every sample would
    get the first sample's mask."""
    i32 = lambda name, values: Tensor(name, (len(values),), np.int32, np.array(values, np.int32))
    tensors = [Tensor("mask", (1, 4)), Tensor("scores", (1, 4)), i32("flat_shape", [4]), Tensor("flat", (4,)),
               i32("indices", [0, 1, 2, 3]), Tensor("picked", (4,)), i32("row_shape", [1, 4]),
               Tensor("row", (1, 4)), Tensor("masked", (1, 4))]
    ops = [Op("RESHAPE", ["mask", "flat_shape"], ["flat"]), Op("GATHER", ["flat", "indices"], ["picked"]),
           Op("RESHAPE", ["picked", "row_shape"], ["row"]), Op("ADD", ["scores", "row"], ["masked"])]
    return Graph(tensors, ops, inputs=["mask", "scores"], outputs=["masked"])


def test_a_graph_that_folds_the_batch_into_another_axis_is_calibrated_one_sample_at_a_time():
    mask = np.zeros((8, 4), np.float32)
    mask[-1, 2:] = -100.0  # only the last sample is padded
    samples = {"mask": mask, "scores": RNG.normal(size=(8, 4)).astype(np.float32)}
    assert batch_size_for(batch_folding_mask_graph(), samples) == 1
    ranges = calibrate(batch_folding_mask_graph(), samples, progress=False)
    assert ranges["row"] == (-100.0, 0.0)
    assert ranges == calibrate(batch_folding_mask_graph(), samples, batch_size=1, progress=False)


def test_a_graph_that_keeps_the_batch_leading_is_calibrated_in_batches():
    x = RNG.normal(size=(70, 4)).astype(np.float32)
    assert batch_size_for(relu_graph(), {"x": x}) > 1


def test_calibrate_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrate(relu_graph(), {"x": np.zeros((2, 4), np.float32)}, method="median", progress=False)


@pytest.mark.parametrize("method", ["percentile", "entropy", "mse"])
def test_every_histogram_method_returns_a_range_inside_minmax(method):
    x = RNG.normal(size=(64, 4)).astype(np.float32)
    ranges = calibrate(relu_graph(), {"x": x}, method=method, progress=False)
    lo, hi = ranges["x"]
    assert x.min() <= lo <= 0 <= hi <= x.max()


# -- calibration files -----------------------------------------------------------------------------

def image_graph():
    g = Graph([Tensor("image", (1, 5, 6, 3)), Tensor("out", (1, 5, 6, 3))], inputs=["image"], outputs=["out"])
    g.add_op(Op("RELU", ["image"], ["out"]))
    return g


def test_npz_nhwc_is_taken_as_is(tmp_path):
    data = RNG.normal(size=(4, 5, 6, 3)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", image=data)
    np.testing.assert_array_equal(load_calibration(tmp_path / "cal.npz", image_graph())["image"], data)


def test_nchw_samples_are_detected_and_transposed(tmp_path):
    data = RNG.normal(size=(4, 3, 5, 6)).astype(np.float32)
    np.save(tmp_path / "cal.npy", data)
    loaded = load_calibration(tmp_path / "cal.npy", image_graph())["image"]
    np.testing.assert_array_equal(loaded, data.transpose(0, 2, 3, 1))


def test_num_samples_keeps_the_first_samples(tmp_path):
    np.save(tmp_path / "cal.npy", RNG.normal(size=(10, 5, 6, 3)).astype(np.float32))
    assert load_calibration(tmp_path / "cal.npy", image_graph(), num_samples=3)["image"].shape[0] == 3


def test_fewer_samples_than_asked_is_an_error(tmp_path):
    np.save(tmp_path / "cal.npy", np.zeros((2, 5, 6, 3), np.float32))
    with pytest.raises(ModelError, match="only 2"):
        load_calibration(tmp_path / "cal.npy", image_graph(), num_samples=5)


def test_wrong_shape_is_an_error(tmp_path):
    np.save(tmp_path / "cal.npy", np.zeros((2, 5, 5, 3), np.float32))
    with pytest.raises(ModelError, match=r"expected \(5, 6, 3\)"):
        load_calibration(tmp_path / "cal.npy", image_graph())


def test_wrong_input_name_is_an_error(tmp_path):
    np.savez(tmp_path / "cal.npz", images=np.zeros((2, 5, 6, 3), np.float32))
    with pytest.raises(ModelError, match="missing \\['image'\\]"):
        load_calibration(tmp_path / "cal.npz", image_graph())


def test_nan_is_an_error(tmp_path):
    data = np.zeros((2, 5, 6, 3), np.float32)
    data[1, 2, 3, 1] = np.nan
    np.save(tmp_path / "cal.npy", data)
    with pytest.raises(ModelError, match="NaN or Inf"):
        load_calibration(tmp_path / "cal.npy", image_graph())


def test_empty_file_is_an_error(tmp_path):
    (tmp_path / "cal.npy").write_bytes(b"")
    with pytest.raises(ModelError, match="empty"):
        load_calibration(tmp_path / "cal.npy", image_graph())


def test_zero_samples_is_an_error(tmp_path):
    np.save(tmp_path / "cal.npy", np.zeros((0, 5, 6, 3), np.float32))
    with pytest.raises(ModelError, match="no samples"):
        load_calibration(tmp_path / "cal.npy", image_graph())


def test_pickled_objects_are_refused(tmp_path):
    np.save(tmp_path / "cal.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ModelError, match="pickled"):
        load_calibration(tmp_path / "cal.npy", image_graph())


def test_a_plain_pickle_file_is_refused(tmp_path):
    (tmp_path / "cal.npy").write_bytes(pickle.dumps({"image": [1, 2, 3]}))
    with pytest.raises(ModelError, match="pickle"):
        load_calibration(tmp_path / "cal.npy", image_graph())


def test_a_cube_shaped_sample_needs_the_layout_spelled_out(tmp_path):
    g = Graph([Tensor("image", (1, 3, 3, 3)), Tensor("out", (1, 3, 3, 3))], inputs=["image"], outputs=["out"])
    g.add_op(Op("RELU", ["image"], ["out"]))
    data = RNG.normal(size=(2, 3, 3, 3)).astype(np.float32)
    np.save(tmp_path / "cal.npy", data)
    with pytest.raises(ModelError, match="nchw_to_nhwc"):
        load_calibration(tmp_path / "cal.npy", g)
    loaded = load_calibration(tmp_path / "cal.npy", g, nchw_to_nhwc=True)["image"]
    np.testing.assert_array_equal(loaded, data.transpose(0, 2, 3, 1))
