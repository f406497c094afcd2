"""Calibration and eval samples as users hold them: a folder of images, a generator (TFLite's
representative_dataset), a reader with get_next() (onnxruntime's CalibrationDataReader) each give
the same int8 file, byte for byte, as the equivalent .npz."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeq.cli import main
from edgeq.converter import convert
from edgeq.converter.api import load_graph
from edgeq.converter.report.eval_data import load_eval
from edgeq.runtime.inputs import ImageFolder, load_samples
from edgeq.runtime.ir import ModelError

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MODEL = SAMPLES / "digits_cnn.onnx"
COUNT = 24


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """COUNT 8x8 grey images as uint8 (N, 8, 8), from the digits calibration set."""
    calib = np.load(SAMPLES / "digits_cnn_calib.npz")["input"][:COUNT, 0]
    return np.round(calib * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def calib_nchw(pixels) -> np.ndarray:
    return (pixels.astype(np.float32) / np.float32(255.0))[:, None]


@pytest.fixture(scope="module")
def npz_path(calib_nchw, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("npz") / "calib.npz"
    np.savez(path, input=calib_nchw)
    return path


@pytest.fixture(scope="module")
def int8_from_npz(npz_path) -> bytes:
    return int8_bytes(str(npz_path))


def int8_bytes(calibration, **options) -> bytes:
    return convert(str(MODEL), quantize="int8", calibration=calibration, **options).content


def write_images(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image, mode="L").save(folder / f"{i:03d}.png")
    return folder


def test_a_generator_of_single_samples_gives_the_same_int8_file_as_the_npz(calib_nchw, int8_from_npz):
    generator = (sample for sample in calib_nchw)  # (1, 8, 8): no batch axis
    assert int8_bytes(generator) == int8_from_npz


def test_a_representative_dataset_of_input_lists_gives_the_same_int8_file_as_the_npz(calib_nchw, int8_from_npz):
    def representative_dataset():
        for sample in calib_nchw:
            yield [sample[None]]  # as TFLite's converter takes it: one list per sample, batch of 1

    assert int8_bytes(representative_dataset()) == int8_from_npz


def test_a_calibration_data_reader_gives_the_same_int8_file_as_the_npz(calib_nchw, int8_from_npz):
    class Reader:  # the interface of onnxruntime.quantization.CalibrationDataReader
        def __init__(self):
            self.batches = iter([{"input": calib_nchw[i:i + 5]} for i in range(0, COUNT, 5)])

        def get_next(self):
            return next(self.batches, None)

    assert int8_bytes(Reader()) == int8_from_npz


def test_an_endless_generator_is_read_only_as_far_as_the_samples_asked_for(calib_nchw, npz_path):
    endless = itertools.cycle(calib_nchw)
    assert int8_bytes(endless, num_calibration_samples=10) == int8_bytes(str(npz_path), num_calibration_samples=10)


def test_a_generator_also_serves_channel_pruning_with_reconstruction(calib_nchw, npz_path):
    options = dict(prune_channels=0.25, reconstruct=True)
    assert int8_bytes(iter(calib_nchw), **options) == int8_bytes(str(npz_path), **options)


def test_an_image_folder_gives_the_same_int8_file_as_the_npz(pixels, int8_from_npz, tmp_path):
    folder = write_images(tmp_path / "images", pixels)
    assert int8_bytes(str(folder)) == int8_from_npz


def test_an_image_folder_is_normalized_with_mean_and_std_as_the_npz_says(pixels, tmp_path):
    folder = write_images(tmp_path / "images", pixels)
    normalized = (pixels.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.25)
    np.savez(tmp_path / "calib.npz", input=normalized[:, None])
    from_folder = int8_bytes(ImageFolder(str(folder), mean="0.5", std=[0.25]))
    assert from_folder == int8_bytes(str(tmp_path / "calib.npz"))


def test_size_resizes_the_shorter_side_then_crops_the_centre(pixels, tmp_path):
    wide = np.concatenate([pixels[:, :, :2] // 2, pixels, pixels[:, :, -2:] // 3], axis=2)  # 8 x 12
    folder = write_images(tmp_path / "wide", wide)
    samples = load_samples(ImageFolder(str(folder), size=8), load_graph(str(MODEL))[0])
    expected = pixels.astype(np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(samples["input"][..., 0], expected)


def test_cli_calibration_folder_with_image_options_gives_the_same_file_as_the_npz(pixels, tmp_path):
    folder = write_images(tmp_path / "images", pixels)
    normalized = (pixels.astype(np.float32) / np.float32(255.0) - np.float32(0.1)) / np.float32(0.3)
    np.savez(tmp_path / "calib.npz", input=normalized[:, None])
    common = ["--quantize", "int8", "--float-fallback", "none", "-q"]
    from_folder = invoke("convert", MODEL, "-o", tmp_path / "a.tflite", "--calibration", folder,
                         "--mean", "0.1", "--std", "0.3", "--layout", "nhwc", *common)
    from_npz = invoke("convert", MODEL, "-o", tmp_path / "b.tflite", "--calibration", tmp_path / "calib.npz", *common)
    assert from_folder.exit_code == 0, from_folder.output
    assert from_npz.exit_code == 0, from_npz.output
    assert (tmp_path / "a.tflite").read_bytes() == (tmp_path / "b.tflite").read_bytes()


def test_cli_refuses_image_options_with_a_calibration_file(npz_path, tmp_path):
    result = invoke("convert", MODEL, "-o", tmp_path / "m.tflite", "--quantize", "int8",
                    "--calibration", npz_path, "--size", "8")
    assert result.exit_code == 2
    assert "apply to folders of images" in result.output


def test_an_empty_generator_is_refused_with_one_clear_line():
    with pytest.raises(ModelError, match="gave no samples"):
        int8_bytes(iter([]))


def test_a_sample_of_the_wrong_rank_is_refused_naming_the_sample(calib_nchw):
    samples = [calib_nchw[0], calib_nchw[1, 0]]  # the second lost its channel axis
    with pytest.raises(ModelError, match="sample 1: input 'input' has shape"):
        int8_bytes(iter(samples))


def test_eval_folder_labels_images_by_class_subfolder_numbered_by_labels_txt(pixels, tmp_path):
    folder = tmp_path / "eval"
    labels = np.arange(COUNT) % 3
    names = ["zero", "one", "two"]
    for name in names:
        (folder / name).mkdir(parents=True)
    for i, (image, label) in enumerate(zip(pixels, labels)):
        Image.fromarray(image, mode="L").save(folder / names[label] / f"{i:03d}.png")
    (folder / "labels.txt").write_text("zero\none\ntwo\n")
    graph = load_graph(str(MODEL))[0]
    data = load_eval(str(folder), graph)
    order = [i for label in (1, 2, 0) for i in range(COUNT) if labels[i] == label]  # sorted paths: one/, two/, zero/
    np.testing.assert_array_equal(data.labels, labels[order])
    np.testing.assert_array_equal(data.inputs["input"][..., 0], pixels[order].astype(np.float32) / np.float32(255.0))
    assert data.count == COUNT


def test_eval_folder_without_labels_txt_numbers_classes_by_sorted_subfolder_name(pixels, tmp_path):
    folder = tmp_path / "eval"
    write_images(folder / "b", pixels[:2])
    write_images(folder / "a", pixels[2:3])
    data = load_eval(str(folder), load_graph(str(MODEL))[0])
    np.testing.assert_array_equal(data.labels, [0, 1, 1])


def test_eval_folder_with_an_image_outside_any_class_subfolder_is_refused(pixels, tmp_path):
    folder = tmp_path / "eval"
    write_images(folder / "a", pixels[:1])
    write_images(folder, pixels[1:2])
    with pytest.raises(ModelError, match="in no class subfolder"):
        load_eval(str(folder), load_graph(str(MODEL))[0])


@pytest.mark.slow
def test_report_takes_image_folders_for_calibration_and_eval_with_class_labels(pixels, tmp_path):
    test = np.load(SAMPLES / "digits_cnn_test.npz")
    images, labels = np.round(test["input"][:30, 0] * 255).astype(np.uint8), test["y"][:30]
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / "eval" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(tmp_path / "eval" / str(label) / f"{i:03d}.png")
    (tmp_path / "eval" / "labels.txt").write_text("".join(f"{c}\n" for c in range(10)))
    write_images(tmp_path / "calib", pixels)
    result = invoke("report", MODEL, "--calibration", tmp_path / "calib", "--eval", tmp_path / "eval",
                    "-o", tmp_path / "report", "--jobs", "1", "--repeats", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["eval"]["samples"] == 30
    float32 = next(v for v in report["variants"] if v["name"] == "float32")
    assert float32["accuracy"]["edgeq"]["top1"] > 0.9
