"""`edgeq report`: every variant built and measured, figures that agree with separately computed ones,
a Pareto front that is right, an HTML file a browser opens cleanly, and bad input refused in one line
without leaving a partial report. Also the CLI's image input for `edgeq run`."""
from __future__ import annotations

import copy
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeq.converter.api import convert
from edgeq.cli import main
from edgeq.converter.report.metrics import AGREEMENT_TOLERANCE, engine_agreement, pareto_front
from edgeq.converter.report.plots import coincident_groups, plot_accuracy_vs_size, size_tick_label
from edgeq.converter.report.render import render_html, render_markdown
from edgeq.testing.referees import nchw_to_nhwc, run_litert, run_onnxruntime

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
EVAL_SAMPLES = 64
REPORT_FILES = ("report.md", "report.html", "report.json", "accuracy_vs_size.png", "layer_sqnr.png")
BASE_VARIANTS = ["float32", "float16", "dynamic-int8", "int8-minmax"]
CNN_VARIANTS = BASE_VARIANTS + ["int8-entropy", "int8-sparse50-reconstruct", "int8-channels25-reconstruct"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sample(name: str, kind: str) -> Path:
    return SAMPLES / (f"{name}.onnx" if kind == "model" else f"{name}_{kind}.npz")


def report_args(name: str, output: Path, *extra):
    return ["report", sample(name, "model"), "--calibration", sample(name, "calib"), "--eval", sample(name, "test"),
            "--eval-samples", EVAL_SAMPLES, "--repeats", 5, "-o", output, *extra]


# Building a report converts and measures every variant, in worker and probe processes: the tests
# that build one are in the slow tier.
@pytest.fixture(scope="module")
def cnn_report(tmp_path_factory):
    """One report on the CNN sample with two calibration methods and two pruned variants, built by
    two worker processes; the channel-pruned one is reconstructed by default."""
    folder = tmp_path_factory.mktemp("cnn") / "report"
    result = invoke(*report_args("digits_cnn", folder, "--methods", "minmax,entropy", "--prune-sparsity", "0.5",
                                 "--prune-channels", "0.25", "--jobs", 2))
    assert result.exit_code == 0, result.output
    return folder, json.loads((folder / "report.json").read_text()), result.output


def variant(report: dict, name: str) -> dict:
    return next(v for v in report["variants"] if v["name"] == name)


@pytest.mark.slow
def test_report_writes_every_file_and_every_variant_model(cnn_report):
    folder, report, _ = cnn_report
    for name in REPORT_FILES:
        assert (folder / name).stat().st_size > 0, name
    assert [v["name"] for v in report["variants"]] == CNN_VARIANTS
    for v in report["variants"]:
        assert (folder / v["file"]).is_file()
    assert not list(folder.parent.glob(".report*")), "staging folder left behind"


@pytest.mark.slow
def test_report_json_has_every_figure_for_every_variant(cnn_report):
    _, report, _ = cnn_report
    assert set(report["versions"]) >= {"edgeq", "numpy", "onnx", "ai-edge-litert", "python"}
    assert report["command"].startswith("edgeq report ") and "--methods minmax,entropy" in report["command"]
    assert report["headline_metric"] == "top1" and report["eval"]["samples"] == EVAL_SAMPLES
    assert report["machine"]["cpus"] >= 1
    for v in report["variants"]:
        assert v["size"]["bytes"] > v["size"]["gzip_bytes"] > 0
        for engine in ("edgeq", "litert"):
            assert set(v["accuracy"][engine]) == {"top1", "top1_agreement", "cosine", "sqnr_db"}
            assert v["latency_ms"][engine]["median"] > 0 and v["latency_ms"][engine]["repeats"] == 5
            assert v["memory"][engine]["peak_rss_bytes"] >= v["memory"][engine]["import_rss_bytes"] > 0
        assert set(v["vs_float32"]) == {"size_ratio", "gzip_size_ratio", "score_difference", "speedup"}
        assert isinstance(v["pareto"], bool)
    assert report["checks"] == {"ok": True, "problems": []}


@pytest.mark.slow
def test_sizes_are_the_files_sizes(cnn_report):
    folder, report, _ = cnn_report
    for v in report["variants"]:
        content = (folder / v["file"]).read_bytes()
        assert v["size"]["bytes"] == len(content) == v["size"]["breakdown"]["total"]
        assert v["size"]["gzip_bytes"] == len(gzip.compress(content, compresslevel=9, mtime=0))
    assert variant(report, "int8-minmax")["vs_float32"]["size_ratio"] < 0.35


def top1_on_litert_reference(content: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    logits = np.concatenate([run_litert(content, [image[None]], reference_kernels=True)[0] for image in images])
    return float(np.mean(np.argmax(logits, axis=1) == labels))


@pytest.mark.slow
def test_int8_top1_equals_litert_reference_kernels_on_the_written_file(cnn_report):
    folder, report, _ = cnn_report
    test = np.load(sample("digits_cnn", "test"))
    images, labels = nchw_to_nhwc(test["input"][:EVAL_SAMPLES]), test["y"][:EVAL_SAMPLES]
    for name in CNN_VARIANTS[3:]:
        v = variant(report, name)
        expected = top1_on_litert_reference((folder / v["file"]).read_bytes(), images, labels)
        assert v["accuracy"]["litert"]["top1"] == expected
        assert v["accuracy"]["edgeq"]["top1"] == expected
        assert v["engine_agreement"]["identical"] and v["engine_agreement"]["ok"]


@pytest.mark.slow
def test_float32_top1_matches_onnxruntime_on_the_source_model(cnn_report):
    _, report, _ = cnn_report
    test = np.load(sample("digits_cnn", "test"))
    (logits,) = run_onnxruntime(onnx.load(str(sample("digits_cnn", "model"))), {"input": test["input"][:EVAL_SAMPLES]})
    expected = float(np.mean(np.argmax(logits, axis=1) == test["y"][:EVAL_SAMPLES]))
    assert variant(report, "float32")["accuracy"]["edgeq"]["top1"] == pytest.approx(expected, abs=1 / EVAL_SAMPLES)
    assert variant(report, "float32")["accuracy"]["edgeq"]["top1_agreement"] == 1.0


@pytest.mark.slow
def test_layer_errors_of_the_minmax_variant_are_listed_worst_first(cnn_report):
    folder, report, _ = cnn_report
    errors = report["layer_errors"]
    assert errors["variant"] == "int8-minmax" and len(errors["tensors"]) >= 5
    sqnr = [e["sqnr_db"] for e in errors["tensors"]]
    assert sqnr == sorted(sqnr)
    markdown = (folder / "report.md").read_text()
    assert "Per-layer quantization error (int8-minmax)" in markdown
    assert errors["tensors"][0]["tensor"] in markdown


@pytest.mark.slow
def test_markdown_lists_every_variant_and_shows_the_plot(cnn_report):
    folder, report, output = cnn_report
    markdown = (folder / "report.md").read_text()
    for v in report["variants"]:
        assert f"| {v['name']} |" in markdown
        assert v["name"] in output  # the terminal table
    assert "![accuracy vs size](accuracy_vs_size.png)" in markdown
    assert (folder / "accuracy_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_int8_variant_carries_its_outputs_sqnr_check(cnn_report):
    folder, report, _ = cnn_report
    for v in report["variants"]:
        if v["quantize"] == "int8":
            assert v["int8_check"]["passed"] and v["int8_check"]["sqnr_db"] >= v["int8_check"]["min_sqnr_db"] == 20
        else:
            assert v["int8_check"] is None
    assert "Not to be trusted" not in (folder / "report.md").read_text()


def test_a_variant_under_the_sqnr_threshold_is_marked_in_markdown_and_html(cnn_report):
    _, report, _ = cnn_report
    failing = copy.deepcopy(report)
    variant(failing, "int8-entropy")["int8_check"].update(sqnr_db=3.5, passed=False, worst_layer="SOFTMAX 's'")
    markdown, page = render_markdown(failing), render_html(failing, b"", b"")
    assert "| **3.5 dB < 20: FAILED** |" in markdown
    assert "**Not to be trusted as is:** int8-entropy: int8 outputs' SQNR 3.5 dB, under 20 dB; worst layer SOFTMAX 's'" in markdown
    assert "<td>3.5 dB &lt; 20: FAILED</td>" in page and "int8-entropy: int8 outputs&#x27; SQNR 3.5 dB" in page


def test_pareto_front_on_a_hand_made_example():
    points = [(100, 0.90), (50, 0.90), (50, 0.85), (30, 0.80), (80, 0.95), (30, 0.80), (120, 0.95)]
    # (100, .90) loses to (80, .95); (50, .85) to (50, .90); (120, .95) to (80, .95); equal points both stay
    assert pareto_front(points) == [False, True, False, True, True, True, False]
    assert pareto_front([(10, 0.5)]) == [True]


@pytest.mark.slow
def test_report_marks_the_pareto_front_it_computes(cnn_report):
    _, report, _ = cnn_report
    points = [(v["size"]["bytes"], v["accuracy"]["edgeq"]["top1"]) for v in report["variants"]]
    assert [v["pareto"] for v in report["variants"]] == pareto_front(points)
    assert any(v["pareto"] for v in report["variants"])


def test_variants_on_the_same_spot_share_one_label():
    points = [(100.0, 50.0), (300.0, 80.0), (101.0, 51.0), (104.0, 53.0), (400.0, 50.0)]
    assert coincident_groups(points) == [[0, 2, 3], [1], [4]]


def test_size_axis_labels_only_one_two_and_five_times_powers_of_ten():
    assert [size_tick_label(v) for v in (20, 30, 50, 100, 700, 1000, 0.5)] == ["20", "", "50", "100", "", "1000", "0.5"]


def test_engine_agreement_demands_identical_int8_outputs():
    ours = [np.array([[1.0, 2.0]], np.float32)]
    off_by_a_bit = [np.array([[1.0, 2.0001]], np.float32)]
    assert engine_agreement(ours, [ours[0].copy()], AGREEMENT_TOLERANCE["int8"])["ok"]
    assert not engine_agreement(ours, off_by_a_bit, AGREEMENT_TOLERANCE["int8"])["ok"]
    assert engine_agreement(ours, off_by_a_bit, AGREEMENT_TOLERANCE["none"])["ok"]
    assert not engine_agreement(ours, [np.array([[1.0, 2.1]], np.float32)], AGREEMENT_TOLERANCE["dynamic"])["ok"]


# -- the HTML in a browser -------------------------------------------------------------------

# Injected into a copy of the page: resource load failures and unrendered images become console errors,
# and a final line proves the console is being read at all.
CONSOLE_PROBE = """<script>
window.addEventListener("error", function (e) {
  if (e.target && e.target !== window) console.error("failed to load " + (e.target.src || e.target.href));
}, true);
window.addEventListener("load", function () {
  var images = document.images;
  for (var i = 0; i < images.length; i++) {
    if (!images[i].complete || images[i].naturalWidth === 0) console.error("image not rendered: " + images[i].alt);
  }
  console.log("probe done: " + images.length + " images");
});
</script>"""


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI must install it: see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def open_in_chromium(page: Path, screenshot: Path, profile: Path) -> list:
    """Console lines Chromium logged while rendering ``page`` (with the probe) to ``screenshot``."""
    probed = page.with_name("probed_" + page.name)
    probed.write_text(page.read_text().replace("<head>", "<head>" + CONSOLE_PROBE, 1))
    done = subprocess.run(
        [chromium_or_skip(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--window-size=1280,2000",
         "--enable-logging=stderr", "--v=0", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.slow
def test_html_is_self_contained(cnn_report):
    folder, _, _ = cnn_report
    page = (folder / "report.html").read_text()
    references = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page)
    assert references and all(r.startswith("data:image/png;base64,") for r in references)
    assert "<script" not in page and "url(" not in page


@pytest.mark.slow
def test_html_renders_in_headless_chromium_without_console_errors(cnn_report, tmp_path):
    folder, _, _ = cnn_report
    page = tmp_path / "report.html"
    shutil.copy(folder / "report.html", page)
    screenshot = tmp_path / "shot.png"
    console = open_in_chromium(page, screenshot, tmp_path / "profile")
    assert screenshot.stat().st_size > 50_000  # tables and two plots, not a blank page
    assert any("probe done: 2 images" in line for line in console), console
    assert [line for line in console if "probe done" not in line] == []


def test_the_chromium_probe_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><head></head><body><img alt="x" src="missing.png">'
                    "<script>undefinedFunction();</script></body></html>")
    console = open_in_chromium(page, tmp_path / "shot.png", tmp_path / "profile")
    assert any("failed to load" in line for line in console), console
    assert any("undefinedFunction" in line for line in console), console


# -- without labels, a user metric, --json, replacing a report ---------------------------------

def eval_without_labels(tmp_path: Path) -> Path:
    test = np.load(sample("digits_mlp", "test"))
    path = tmp_path / "unlabelled.npz"
    np.savez(path, input=test["input"][:EVAL_SAMPLES])
    return path


@pytest.mark.slow
def test_without_labels_accuracy_is_fidelity_to_float32_and_json_goes_to_stdout(tmp_path):
    out = tmp_path / "report"
    result = invoke("report", sample("digits_mlp", "model"), "--calibration", sample("digits_mlp", "calib"),
                    "--eval", eval_without_labels(tmp_path), "--repeats", 3, "--jobs", 1, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report == json.loads((out / "report.json").read_text())
    assert report["headline_metric"] == "top1_agreement" and report["eval"]["labels"] is False
    float32 = variant(report, "float32")["accuracy"]["edgeq"]
    assert float32["top1_agreement"] == 1.0 and float32["sqnr_db"] is None  # identical: infinite SQNR
    int8 = variant(report, "int8-minmax")["accuracy"]
    assert "top1" not in int8["edgeq"] and int8["edgeq"]["cosine"] > 0.99 and int8["edgeq"]["sqnr_db"] > 20
    assert int8["edgeq"] == int8["litert"]


@pytest.mark.slow
def test_a_user_metric_replaces_the_builtin_ones_and_a_new_report_replaces_the_old(tmp_path, monkeypatch):
    (tmp_path / "digit_metrics_for_report.py").write_text(
        "import numpy as np\n"
        "def hit_rate(outputs, data):\n"
        "    return {'hits': float(np.mean(np.argmax(outputs[0], 1) == data['y'])), 'count': len(data['y'])}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    out = tmp_path / "report"
    (out / "models").mkdir(parents=True)
    (out / "report.json").write_text("{}")  # an earlier report: replaced whole
    (out / "models" / "stale.tflite").write_bytes(b"old")
    result = invoke(*report_args("digits_mlp", out, "--metric", "digit_metrics_for_report:hit_rate", "--jobs", 1))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["headline_metric"] == "hits"
    for v in report["variants"]:
        assert set(v["accuracy"]["edgeq"]) == {"hits", "count"} and v["accuracy"]["edgeq"]["count"] == EVAL_SAMPLES
    assert not (out / "models" / "stale.tflite").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_pruned_variants_carry_their_pruning_and_compress_better(cnn_report):
    _, report, _ = cnn_report
    sparse, narrow = variant(report, "int8-sparse50-reconstruct"), variant(report, "int8-channels25-reconstruct")
    dense = variant(report, "int8-minmax")
    assert sparse["prune_sparsity"] == 0.5 and sparse["reconstruct"] and sparse["pruning"][0]["sparsity"] >= 0.45
    assert narrow["prune_channels"] == 0.25 and narrow["reconstruct"] and narrow["pruning"]
    assert sparse["size"]["gzip_bytes"] < dense["size"]["gzip_bytes"]
    assert narrow["size"]["bytes"] < dense["size"]["bytes"]
    assert dense["pruning"] == []


def planned_variants(monkeypatch, *extra) -> list:
    """The variants ``edgeq report`` would build with these options (nothing is built)."""
    import edgeq.converter.report as report_package
    from edgeq.converter.report.plan import plan_variants

    planned = []

    def plan_only(options, progress=False):
        planned.extend(plan_variants(options.methods, options.prune_sparsities, options.prune_channels,
                                     options.reconstruct))
        return {"checks": {"ok": True, "problems": []}}

    monkeypatch.setattr(report_package, "make_report", plan_only)
    assert invoke(*report_args("digits_cnn", "unused", "--json", *extra)).exit_code == 0
    return planned


def test_channel_pruned_report_variants_are_reconstructed_by_default(monkeypatch):
    pruned = [v for v in planned_variants(monkeypatch, "--prune-channels", "0.25,0.5") if v.prune_channels]
    assert [(v.name, v.reconstruct) for v in pruned] == [("int8-channels25-reconstruct", True),
                                                         ("int8-channels50-reconstruct", True)]
    assert all(v.convert_options()["reconstruct"] is True for v in pruned)


def test_sparse_report_variants_refit_their_remaining_weights_by_default(monkeypatch):
    sparse = [v for v in planned_variants(monkeypatch, "--prune-sparsity", "0.5,0.7") if v.prune_sparsity]
    assert [(v.name, v.reconstruct) for v in sparse] == [("int8-sparse50-reconstruct", True),
                                                         ("int8-sparse70-reconstruct", True)]
    assert all(v.convert_options()["reconstruct"] is True for v in sparse)


def test_no_reconstruct_opts_the_report_variants_out(monkeypatch):
    pruned = [v for v in planned_variants(monkeypatch, "--prune-channels", "0.25", "--no-reconstruct")
              if v.prune_channels]
    assert [(v.name, v.reconstruct) for v in pruned] == [("int8-channels25", False)]
    assert pruned[0].convert_options()["reconstruct"] is False


@pytest.mark.slow
def test_memory_columns_say_what_they_count_and_name_a_library_a_variant_loads(cnn_report):
    _, report, _ = cnn_report
    loading = copy.deepcopy(report)
    entropy = variant(loading, "int8-entropy")
    entropy["float_ops"] = ["CONV_2D '/conv1/Conv'", "DEPTHWISE_CONV_2D '/conv2/Conv'"]
    entropy["memory"]["edgeq"].update(loaded_libraries=["llvmlite", "numba"], model_bytes=109 * 2**20)
    markdown = render_markdown(loading)
    header = next(line for line in markdown.splitlines() if line.startswith("| variant | size"))
    assert "| edgeq growth MiB | LiteRT growth MiB |" in header
    row = next(line for line in markdown.splitlines() if line.startswith("| int8-entropy |"))
    assert "| 109.0 (loads llvmlite, numba) |" in row
    stated = re.search(r"the runtime itself, before any model, costs edgeq ([0-9.]+) MiB and LiteRT ([0-9.]+) MiB",
                       markdown)
    for engine, figure in zip(("edgeq", "litert"), stated.groups()):
        after_import = [v["memory"][engine]["import_rss_bytes"] / 2**20 for v in report["variants"]]
        assert min(after_import) - 0.05 <= float(figure) <= max(after_import) + 0.05
    assert "int8-entropy on edgeq loads llvmlite, numba for the 2 ops it keeps in float" in markdown
    assert "| variant | engine | runtime MiB (after import) | growth MiB (loading and running) |" in markdown


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--eval", "missing_eval.npz"], "missing_eval.npz"),
    (["--metric", "no_colon_here"], "MODULE:FUNCTION"),
    (["--metric", "no_such_module_for_edgeq:f"], "cannot import no_such_module_for_edgeq"),
    (["--metric", "json:no_such_function"], "json has no function no_such_function"),
    (["--labels-key", "labels"], "no labels array 'labels'"),
    (["--methods", "minmax,kl"], "unknown calibration method(s) kl"),
    (["--eval", sample("digits_mlp", "test")], "eval input 'input'"),  # 64 values for an 8x8 image model
    (["--prune-sparsity", "1.5"], "between 0 and 1"),
    (["--reconstruct"], "needs --prune-channels or --prune-sparsity"),
    (["--jobs", "0"], "--jobs 0"),
])
def test_bad_input_gets_one_line_exit_2_and_no_report_folder(tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report"
    args = report_args("digits_cnn", out)
    if "--eval" in extra:  # replace the eval file rather than give two
        position = args.index("--eval")
        del args[position:position + 2]
    result = invoke(*args, *extra)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_report_is_not_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = invoke(*report_args("digits_mlp", out))
    assert result.exit_code == 2 and "not an edgeq report" in result.output
    assert (out / "notes.txt").read_text() == "keep me"


def test_help_shows_examples_and_exit_codes():
    report_help = invoke("report", "--help").output
    assert "edgeq report model.onnx --calibration calib.npz --eval test.npz" in report_help
    assert "Exit codes: 0 ok" in report_help
    group_help = invoke("--help").output
    assert "Exit codes: 0 ok" in group_help and "report" in group_help
    assert "--mean" in invoke("run", "--help").output


# -- edgeq run on image files ----------------------------------------------------------------

@pytest.fixture(scope="module")
def digit_image(tmp_path_factory):
    """An 8x8 digit as a PNG, its pixels in [0, 1] as the models take them, and two CNN models."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    test = np.load(sample("digits_cnn", "test"))
    grey = np.round(test["input"][0, 0] * 255).clip(0, 255).astype(np.uint8)
    Image.fromarray(grey).save(folder / "digit.png")
    nhwc = convert(sample("digits_cnn", "model"), folder / "cnn.tflite")
    nchw = convert(sample("digits_cnn", "model"), folder / "cnn_nchw.tflite", keep_onnx_layout=True)
    pixels = grey.astype(np.float32) / 255
    np.save(folder / "digit.npy", pixels[None, :, :, None])
    return folder, pixels, int(test["y"][0]), nhwc, nchw


def run_json(*args) -> dict:
    result = invoke("run", *args, "--json")
    assert result.exit_code == 0, result.output
    return result.output and json.loads(result.output)


def test_run_reads_an_image_like_the_same_pixels_from_npy(digit_image):
    folder, _, label, _, _ = digit_image
    from_image = run_json(folder / "cnn.tflite", "--input", folder / "digit.png", "--top-k", 3)
    from_npy = run_json(folder / "cnn.tflite", "--input", folder / "digit.npy", "--top-k", 3)
    assert from_image["outputs"] == from_npy["outputs"]
    assert from_image["outputs"]["logits"]["top_k"][0][0] == label
    text = invoke("run", folder / "cnn.tflite", "--input", folder / "digit.png", "--top-k", 3).output
    assert f"top-3: {label}:" in text


def test_run_normalizes_images_with_mean_and_std(digit_image):
    folder, pixels, _, _, _ = digit_image
    np.save(folder / "normalized.npy", ((pixels - 0.5) / 0.25)[None, :, :, None])
    from_image = run_json(folder / "cnn.tflite", "--input", folder / "digit.png", "--mean", "0.5", "--std", "0.25")
    from_npy = run_json(folder / "cnn.tflite", "--input", folder / "normalized.npy")
    assert from_image["outputs"] == from_npy["outputs"]


def test_run_finds_or_is_told_an_nchw_image_input(digit_image):
    folder, _, label, _, nchw = digit_image
    assert list(nchw.inputs[0].shape) == [1, 1, 8, 8]
    for layout in ("auto", "nchw"):
        summary = run_json(folder / "cnn_nchw.tflite", "--input", folder / "digit.png", "--layout", layout)
        assert summary["outputs"]["logits"]["top_k"][0][0] == label


@pytest.mark.parametrize("extra, message", [
    (["--mean", "0.1,0.2"], "2 values for 1 channel(s)"),
    (["--std", "0"], "standard deviation of 0"),
])
def test_run_refuses_bad_image_options(digit_image, extra, message):
    folder = digit_image[0]
    result = invoke("run", folder / "cnn.tflite", "--input", folder / "digit.png", *extra)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1


def test_run_refuses_an_unreadable_image_and_image_options_for_npy(digit_image, tmp_path):
    folder = digit_image[0]
    bogus = tmp_path / "bogus.png"
    bogus.write_bytes(b"not an image")
    result = invoke("run", folder / "cnn.tflite", "--input", bogus)
    assert result.exit_code == 2 and "not a readable image" in result.output
    result = invoke("run", folder / "cnn.tflite", "--input", folder / "digit.npy", "--mean", "0.5")
    assert result.exit_code == 2 and "apply to image inputs" in result.output


def test_run_says_how_to_get_pillow_when_it_is_missing(digit_image, monkeypatch):
    folder = digit_image[0]
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    result = invoke("run", folder / "cnn.tflite", "--input", folder / "digit.png")
    assert result.exit_code == 2 and "edgeq[images]" in result.output and result.output.count("\n") == 1


@pytest.mark.slow
def test_report_target_size_draws_the_budget_search_path_on_the_plot(tmp_path):
    folder = tmp_path / "report"
    result = invoke(*report_args("digits_cnn", folder, "--target-size", "12kB", "--max-drop", "1", "--jobs", 1))
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "report.json").read_text())
    search = report["budget_search"]
    assert search["target_bytes"] == 12000 and len(search["steps"]) >= 2
    assert search["met"] and search["steps"][search["chosen"]]["bytes"] <= 12000
    markdown = (folder / "report.md").read_text()
    assert "## Size budget search" in markdown and search["verdict"] in markdown
    without_path = plot_accuracy_vs_size({key: value for key, value in report.items() if key != "budget_search"})
    assert (folder / "accuracy_vs_size.png").read_bytes() != without_path
