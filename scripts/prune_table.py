"""Accuracy, size and speed of pruned sample models: magnitude pruning at several sparsities and
channel pruning at several ratios, each without and with reconstruction (the default when calibration
samples are given: channels chosen by the error their removal causes, spread by measured sensitivity,
every layer after them refitted), float and int8; then the size-budget search at half the int8 file.

    python scripts/prune_table.py [results.json] [--repeats N] [--models a,b]

Accuracy is on the whole test split (our runtime, batched). Sizes are the .tflite bytes, raw and
gzip -9. For channel pruning, the time ratio is pruned/unpruned per-sample invoke time (median
over alternating repeats, one thread), on our runtime and on LiteRT's default kernels. For float
models, the raw size with TFLite's sparse weight encoding (--sparse-encoding) is shown too.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from edgeq.converter.api import convert
from edgeq.converter.prune import compressed_size, encode_sparse_weights, multiply_accumulates
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.tflite_format.writer import write_tflite

ROOT = Path(__file__).resolve().parent.parent

SAMPLES = ROOT / "sample_models"
MODELS = ("digits_cnn", "digits_mobilenetv2")
SPARSITIES = (0.0, 0.5, 0.7, 0.9)
CHANNEL_RATIOS = (0.0, 0.25, 0.5)


def accuracy(content: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    interpreter = Interpreter(model_content=content)
    detail = interpreter.get_input_details()[0]
    if np.dtype(detail["dtype"]) != np.float32:
        scale, zero_point = detail["quantization"]
        images = np.clip(np.round(images / scale) + zero_point, -128, 127).astype(detail["dtype"])
    logits = interpreter.run([images])[interpreter.get_output_details()[0]["name"]]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def time_ratio(pruned, unpruned, image: np.ndarray, repeats: int) -> float:
    """Median invoke time of ``pruned`` over ``unpruned``; the two alternate, so load on the machine
    weighs on both alike."""
    times = {id(pruned): [], id(unpruned): []}
    for interpreter in (pruned, unpruned):
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], image.astype(detail["dtype"]))
        interpreter.invoke()  # warm-up
    for _ in range(repeats):
        for interpreter in (pruned, unpruned):
            started = time.perf_counter()
            interpreter.invoke()
            times[id(interpreter)].append(time.perf_counter() - started)
    return statistics.median(times[id(pruned)]) / statistics.median(times[id(unpruned)])


def litert(content: bytes):
    from ai_edge_litert.interpreter import Interpreter as LiteRTInterpreter

    return LiteRTInterpreter(model_content=content, num_threads=1)


def variants(name: str):
    """(label, convert keyword arguments) for every row of the table."""
    yield "magnitude 0.0", {}
    for sparsity in SPARSITIES[1:]:
        for reconstruct in (False, True):
            yield f"magnitude {sparsity:.1f}{' +LS' if reconstruct else ''}", {"prune_sparsity": sparsity,
                                                                             "reconstruct": reconstruct}
    for ratio in CHANNEL_RATIOS[1:]:
        for reconstruct in (False, True):
            label = f"channels {ratio:.2f}{' +LS' if reconstruct else ''}"
            yield label, {"prune_channels": ratio, "reconstruct": reconstruct}


def measure(name: str, repeats: int) -> list:
    test = np.load(SAMPLES / f"{name}_test.npz")
    images, labels = np.ascontiguousarray(test["input"].transpose(0, 2, 3, 1)), test["y"]
    calibration = SAMPLES / f"{name}_calib.npz"
    rows, baseline = [], {}
    for label, options in variants(name):
        for quantize in ("none", "int8"):
            given = calibration if quantize == "int8" or options.get("reconstruct") else None
            result = convert(SAMPLES / f"{name}.onnx", quantize=quantize, calibration=given,
                             io_dtype="int8" if quantize == "int8" else "float32", **options)
            content = result.content
            row = {
                "model": name, "pruning": label, "dtype": "float" if quantize == "none" else "int8",
                "accuracy": accuracy(content, images, labels), "bytes": len(content),
                "gzip_bytes": compressed_size(content), "macs": multiply_accumulates(result.float_graph),
            }
            if quantize == "none":
                row["sparse_encoded_bytes"] = len(write_tflite(encode_sparse_weights(result.graph)[0]))
            if label == "magnitude 0.0":
                baseline[quantize] = content
            if options.get("prune_channels"):
                image = images[:1]
                if quantize == "int8":
                    quant = result.graph[result.graph.inputs[0]].quant
                    image = np.clip(np.round(image / quant.scale[0]) + quant.zero_point[0], -128, 127)
                unpruned = baseline[quantize]
                row["edgeq_time_ratio"] = time_ratio(Interpreter(model_content=content, num_threads=1),
                                                     Interpreter(model_content=unpruned, num_threads=1), image, repeats)
                row["litert_time_ratio"] = time_ratio(litert(content), litert(unpruned), image, repeats)
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    def cell(key, spec):
        return format(row[key], spec) if key in row else ""

    return (f"| {row['model']:18} | {row['pruning']:17} | {row['dtype']:5} | {row['accuracy']:7.2%} | "
            f"{row['bytes']:>9,} | {row['gzip_bytes']:>9,} | {cell('sparse_encoded_bytes', '>9,'):>9} | "
            f"{row['macs']:>10,} | {cell('edgeq_time_ratio', '.2f'):>7} | {cell('litert_time_ratio', '.2f'):>8} |")


HEADER = ("| model              | pruning           | dtype | accuracy |       raw |      gzip | sparse-enc |"
          "       MACs | edgeq t | LiteRT t |\n|---|---|---|---|---|---|---|---|---|---|")


def budget_rows(name: str) -> list:
    """The size-budget search at half the unpruned int8 file, at most 1 point lost (test images as the
    eval set, as the accuracy column)."""
    from edgeq.converter.budget import search_budget

    search = search_budget(SAMPLES / f"{name}.onnx", SAMPLES / f"{name}_calib.npz", SAMPLES / f"{name}_test.npz",
                           target_ratio=0.5, max_drop=1.0)
    print(f"\n{name}: --target-ratio 0.5 --max-drop 1")
    for line in search.format_lines() + [search.verdict()]:
        print(f"    {line}")
    return [{"model": name, "budget_search": search.as_dict()}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_path", nargs="?", help="Write the rows as JSON here.")
    parser.add_argument("--repeats", type=int, default=200, help="Timed invokes per model (median).")
    parser.add_argument("--models", default=",".join(MODELS), help="Comma-separated sample model names.")
    args = parser.parse_args()
    models = args.models.split(",")
    print(HEADER)
    rows = [row for name in models for row in measure(name, args.repeats)]
    rows += [row for name in models for row in budget_rows(name)]
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2))
        print(f"wrote {args.json_path}")


if __name__ == "__main__":
    main()
