"""The real-world test models (tests/models/, made by scripts/make_real_world_models.py and
scripts/make_hf_models.py): what each one needs, its data, and how it is run and judged: onnxruntime,
our runtime and LiteRT outputs over the evaluation samples, integer mismatches against LiteRT's reference
kernels, fidelity and task metrics. tests/test_real_world_models.py asserts on them;
scripts/real_world_report.py prints them."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx

from edgeq.converter.api import convert
from edgeq.runtime.interpreter import Interpreter
from edgeq.runtime.ir import Graph
from edgeq.runtime.tflite_format.writer import write_tflite
from edgeq.testing import litert, task_metrics
from edgeq.testing.model_export import OUT_DIR
from edgeq.testing.referees import nchw_to_nhwc, nhwc_to_nchw, relative_max_error, run_onnxruntime

MODELS_DIR = OUT_DIR
INTEGER_TYPES = (np.int8, np.uint8, np.int16, np.int32)


@dataclass(frozen=True)
class ModelSpec:
    input_shapes: dict  # ONNX layout, fixing every dynamic dimension
    # TRANSPOSE ops the model's own semantics need in the float .tflite (why: see MODEL_SPECS)
    needed_transposes: int
    # a second setting of the dynamic dimensions (a batch of 2 where only the batch is dynamic), so
    # the shape arithmetic must follow the input
    other_input_shapes: dict
    min_cosine: float = 0.99  # int8 output vs float output, over all evaluation samples
    min_sqnr_db: float = 20.0
    shape_arithmetic: bool = True  # the export holds Shape/Gather/Concat/Reshape chains
    min_sample_cosine: float = 0.99  # Hugging Face models: each output's cosine on every sample


MODEL_SPECS = {
    # One: the output is [B, 4 + classes, anchors] with anchors innermost, while every conv head
    # writes channels innermost; one transpose of the concatenated [anchors, 4 + classes] result is
    # the only data movement the model asks for. (The DFL's Transpose(2, 1) swaps axes the NHWC
    # storage already holds in the needed order: the softmax runs over the innermost bins and the
    # arange 1x1 conv is a dot product over them.)
    "yolo_detector": ModelSpec({"images": (1, 3, 64, 64)}, needed_transposes=1,
                               other_input_shapes={"images": (1, 3, 96, 128)}),
    # None: with batch 1 and the feature map pooled to height 1, the CNN-to-sequence permute and the
    # LSTM's seq/batch/direction transposes only move axes of size 1, which a RESHAPE does.
    "crnn_text": ModelSpec({"images": (1, 1, 32, 128)}, needed_transposes=0,
                           other_input_shapes={"images": (1, 1, 32, 96)}),
    # None: a pure convolutional network; concats and resizes work on NHWC directly.
    "unet_segmenter": ModelSpec({"images": (1, 3, 64, 64)}, needed_transposes=0,
                                other_input_shapes={"images": (1, 3, 96, 80)}),
    # Four per layer: the head split [S, heads, d] -> [heads, S, d] of Q, K and V, and the head merge
    # back; K's further transpose for Q.K^T belongs in BATCH_MATMUL's adj_y or composed with its split.
    "bert_encoder": ModelSpec({"input_ids": (1, 16), "attention_mask": (1, 16)}, needed_transposes=8,
                              other_input_shapes={"input_ids": (1, 11), "attention_mask": (1, 11)}),
    # Hugging Face transformers models built from small configs (scripts/make_hf_models.py). Each
    # has 2 layers and, like bert_encoder, needs four transposes per layer: the head split of Q, K
    # and V and the head merge; K^T goes into BATCH_MATMUL's adj_y.
    "hf_bert": ModelSpec({"input_ids": (1, 16), "attention_mask": (1, 16), "token_type_ids": (1, 16)},
                         needed_transposes=8,
                         other_input_shapes={"input_ids": (1, 11), "attention_mask": (1, 11),
                                             "token_type_ids": (1, 11)}),
    # hf_bert with eager attention: its additive mask is (1 - mask) * finfo(float32).min.
    "hf_bert_eager": ModelSpec({"input_ids": (1, 16), "attention_mask": (1, 16), "token_type_ids": (1, 16)},
                               needed_transposes=8,
                               other_input_shapes={"input_ids": (1, 11), "attention_mask": (1, 11),
                                                   "token_type_ids": (1, 11)}),
    "hf_distilbert": ModelSpec({"input_ids": (1, 16), "attention_mask": (1, 16)}, needed_transposes=8,
                               other_input_shapes={"input_ids": (1, 11), "attention_mask": (1, 11)}),
    # The patch embedding's [B, C, 4, 4] -> [B, 16, C] flatten + transpose is free: NHWC storage
    # already holds the patches in that order. ViT's position embeddings are learned for 4 x 4 patches
    # of a 32 x 32 image, so only the batch is dynamic: the other setting is a batch of 2.
    "hf_vit": ModelSpec({"pixel_values": (1, 3, 32, 32)}, needed_transposes=8,
                        other_input_shapes={"pixel_values": (2, 3, 32, 32)}),
    # None: ConvNeXt's permutes to channels-last around its LayerNorm and pointwise Linears are what
    # NHWC storage already holds, so they vanish. Its export has no shape arithmetic at all.
    # One evaluation image in 64 has a patch inside a near-black rectangle: with the random init's
    # zero conv bias its patch embedding is ~0, the LayerNorm variance ~0 and 1/sqrt(var + 1e-6)
    # near 1000, far above the calibrated RSQRT range, so that sample's last_hidden_state keeps a
    # cosine of 0.94 (every other sample >= 0.996; the pooled output >= 0.99 on all).
    "hf_convnext": ModelSpec({"pixel_values": (1, 3, 32, 32)}, needed_transposes=0,
                             other_input_shapes={"pixel_values": (1, 3, 64, 48)}, shape_arithmetic=False,
                             min_sample_cosine=0.93),
    # Nine: the eight of the attention, and one at the input: the [B, mel bins, frames] features
    # arrive channels first (rank-3 inputs keep the ONNX layout) and the Conv1d front end reads them
    # channels last; its output permute to [B, frames, d_model] is then free. The 16 positions are
    # learned, so only the batch is dynamic: the other setting is a batch of 2.
    "hf_whisper_encoder": ModelSpec({"input_features": (1, 16, 32)}, needed_transposes=9,
                                    other_input_shapes={"input_features": (2, 16, 32)}),
}
# Test models made for post-training quantization (scripts/make_ptq_models.py), with the statistics of
# pretrained ones; reported beside the others (scripts/real_world_report.py) but not in NAMES, whose
# tests (two input sizes, fidelity bars) the ones above are held to.
PTQ_MODEL_SPECS = {
    # Depthwise-separable, BN-folded depthwise weights spanning ~100x, hard-swish and PReLU; untrained.
    "mobile_dwsep": ModelSpec({"images": (1, 3, 32, 32)}, needed_transposes=0,
                              other_input_shapes={"images": (1, 3, 48, 40)}),
    # Random-weight encoder whose LayerNorm outputs have a few channels 11-125x the median.
    "outlier_encoder": ModelSpec({"input_ids": (1, 16), "attention_mask": (1, 16)}, needed_transposes=8,
                                 other_input_shapes={"input_ids": (1, 11), "attention_mask": (1, 11)}),
}
ALL_SPECS = {**MODEL_SPECS, **PTQ_MODEL_SPECS}
HF_MODELS = {"hf_bert", "hf_bert_eager", "hf_distilbert", "hf_vit", "hf_convnext", "hf_whisper_encoder"}
NAMES = sorted(MODEL_SPECS)
# The finest step of an int8 class probability (a Sigmoid output's fixed scale is 1/256): float
# detections whose scores are closer than this are tied for the top in int8.
DETECTION_SCORE_RESOLUTION = 1 / 256


# Image inputs are stored as uint8 (value / 255 is the model input); other uint8 data (masks) as is.
IMAGE_INPUTS = ("images", "pixel_values")


@lru_cache(maxsize=None)
def model_data(name: str) -> dict:
    """The model's data file, with uint8 images turned into the float inputs the model takes."""
    with np.load(MODELS_DIR / f"{name}_data.npz") as loaded:
        return {key: loaded[key].astype(np.float32) / 255.0 if loaded[key].dtype == np.uint8
                and key.endswith(IMAGE_INPUTS) else loaded[key] for key in loaded.files}


def onnx_input_names(name: str) -> list:
    return list(ALL_SPECS[name].input_shapes)


@lru_cache(maxsize=None)
def onnx_output_names(name: str) -> tuple:
    return tuple(o.name for o in onnx.load(str(MODELS_DIR / f"{name}.onnx")).graph.output)


def inputs(name: str, split: str) -> dict:
    """Inputs by name for ``split`` ("calib" or "eval"), in the ONNX layout, samples first."""
    data = model_data(name)
    return {n: data[f"{split}_{n}"] for n in onnx_input_names(name)}


@lru_cache(maxsize=None)
def converted(name: str, quantize: str):
    spec = ALL_SPECS[name]
    path = MODELS_DIR / f"{name}.onnx"
    if quantize == "none":
        return convert(path, input_shapes=spec.input_shapes)
    with tempfile.TemporaryDirectory() as folder:
        calibration = Path(folder) / "calibration.npz"
        np.savez(calibration, **inputs(name, "calib"))
        return convert(path, input_shapes=spec.input_shapes, quantize=quantize, calibration=calibration)


def resized(array: np.ndarray, shape: tuple) -> np.ndarray:
    """``array`` (samples first) cropped or edge-padded at the end of each axis to ``shape[1:]``."""
    for axis, size in enumerate(shape[1:], start=1):
        if array.shape[axis] > size:
            array = np.take(array, range(size), axis=axis)
        elif array.shape[axis] < size:
            padding = [(0, 0)] * array.ndim
            padding[axis] = (0, size - array.shape[axis])
            array = np.pad(array, padding, mode="edge")
    return array


@lru_cache(maxsize=None)
def onnxruntime_outputs(name: str) -> list:
    """Every model output over the evaluation samples, in the model's output order."""
    model = onnx.load(str(MODELS_DIR / f"{name}.onnx"))
    return list(run_onnxruntime(model, inputs(name, "eval")))


def float_error(name: str, actual: list, expected: list) -> float:
    """The worst output's max error relative to that output's scale; the detector's pixel boxes
    (rows 0-3) and 0..1 class probabilities (rows 4-) are judged each against its own scale."""
    assert len(actual) == len(expected)
    if name == "yolo_detector":
        (actual,), (expected,) = actual, expected
        return max(relative_max_error(actual[:, :4], expected[:, :4]),
                   relative_max_error(actual[:, 4:], expected[:, 4:]))
    return max(relative_max_error(a, e) for a, e in zip(actual, expected))


def fidelity(actual: list, expected: list) -> tuple:
    """(cosine, SQNR in dB) of the worst output of ``actual`` against ``expected``."""
    return (min(task_metrics.cosine(a, e) for a, e in zip(actual, expected)),
            min(task_metrics.sqnr_db(a, e) for a, e in zip(actual, expected)))


def evaluation_samples(name: str) -> int:
    return len(next(iter(inputs(name, "eval").values())))


def tflite_feeds(name: str, sample: int) -> list:
    """One evaluation sample as the .tflite's inputs: batch 1, images NHWC."""
    return [nchw_to_nhwc(values[sample:sample + 1]) for values in inputs(name, "eval").values()]


def set_inputs_and_invoke(interpreter, feeds: list) -> None:
    for detail, value in zip(interpreter.get_input_details(), feeds):
        interpreter.set_tensor(detail["index"], np.array(value, dtype=detail["dtype"]))
    interpreter.invoke()


def new_interpreter(content: bytes, engine: str, preserve_all_tensors: bool = False):
    if engine == "edgeq":
        interpreter = Interpreter(model_content=content, experimental_preserve_all_tensors=preserve_all_tensors)
    else:
        resolver = litert.OpResolverType.BUILTIN_REF if engine == "litert_ref" else litert.OpResolverType.AUTO
        interpreter = litert.Interpreter(model_content=content, num_threads=1,
                                         experimental_op_resolver_type=resolver,
                                         experimental_preserve_all_tensors=preserve_all_tensors)
    interpreter.allocate_tensors()
    return interpreter


def tflite_outputs(name: str, content: bytes, engine: str, samples: int = None) -> list:
    """Every model output over the evaluation samples, in the ONNX layout, as float32."""
    interpreter = new_interpreter(content, engine)
    details = interpreter.get_output_details()
    results = [[] for _ in details]
    for sample in range(samples or evaluation_samples(name)):
        set_inputs_and_invoke(interpreter, tflite_feeds(name, sample))
        for output, values in zip(details, results):
            value = interpreter.get_tensor(output["index"]).astype(np.float32)
            if output["dtype"] in INTEGER_TYPES:  # an int8 output: dequantize with its parameters
                scale, zero_point = output["quantization"]
                value = (value - zero_point) * scale
            values.append(nhwc_to_nchw(value))
    return [np.concatenate(values) for values in results]


def integer_mismatches(result, name: str) -> dict:
    """Per integer tensor: elements where our runtime differs from BUILTIN_REF, over every evaluation
    sample.

    Where BUILTIN_REF itself is wrong (REFERENCE_KERNEL_DEFECTS), or where an int8 value is quantized
    from a float island's output (float kernels of two engines may differ in the last bit, and a
    value on a rounding boundary then quantizes one level apart), the tensors computed from there
    cannot be compared whole-model; each op producing one is instead replayed alone on
    our runtime's own input values, on BUILTIN_REF, or for a defective op on LiteRT's builtin
    optimized kernel (as tests/test_runtime_int8.py holds single ops to it); either output must
    equal ours."""
    graph, content = result.graph, result.content
    theirs = new_interpreter(content, "litert_ref", preserve_all_tensors=True)
    ours = new_interpreter(content, "edgeq", preserve_all_tensors=True)
    details = [d for d in ours.get_tensor_details() if d["dtype"] in INTEGER_TYPES]
    counts = {d["name"]: 0 for d in details}
    replayed = ops_downstream_of(graph, lambda op: op.type in REFERENCE_KERNEL_DEFECTS
                                 or quantizes_a_float_island(graph, op))
    replayed_outputs = {t for op in replayed for t in op.outputs}
    index = {d["name"]: d["index"] for d in ours.get_tensor_details()}
    for sample in range(evaluation_samples(name)):
        feeds = tflite_feeds(name, sample)
        set_inputs_and_invoke(theirs, feeds)
        set_inputs_and_invoke(ours, feeds)
        compared = [d for d in details if d["name"] not in replayed_outputs]
        their_values = theirs.tensors(d["index"] for d in compared)  # one round trip to LiteRT's worker
        for d in compared:
            if d["index"] not in their_values:  # a constant LiteRT keeps elsewhere
                continue
            counts[d["name"]] += int(np.count_nonzero(their_values[d["index"]] != ours.get_tensor(d["index"])))
        for op in replayed:
            optimized = op.type in REFERENCE_KERNEL_DEFECTS
            expected = replay_op(graph, op, {t: ours.get_tensor(index[t]) for t in op.inputs if t in index},
                                 optimized)
            for tensor, value in zip(op.outputs, expected):
                if tensor in counts:
                    counts[tensor] += int(np.count_nonzero(value != ours.get_tensor(index[tensor])))
    return counts


# LiteRT's BUILTIN_REF int8 SUM with rescaling gives values unrelated to the real sum (e.g. -1 for
# every output); its builtin optimized SUM kernel, which ours mirrors, is the referee instead
# (tests/test_runtime_int8.py, test_sum_equals_the_builtin_kernel); a masked mean pooling, as
# BERT's sentence embedding, has two such SUMs.
REFERENCE_KERNEL_DEFECTS = {"SUM"}


def quantizes_a_float_island(graph, op) -> bool:
    """A QUANTIZE of a float value that float ops computed (not a graph input)."""
    produced = {t for other in graph.ops for t in other.outputs}
    return op.type == "QUANTIZE" and graph[op.inputs[0]].dtype == np.float32 and op.inputs[0] in produced


def ops_downstream_of(graph, is_source) -> list:
    """Ops with integer outputs for which ``is_source(op)`` holds, and every op computing from their
    outputs, in order."""
    tainted, ops = set(), []
    for op in graph.ops:
        integer_output = any(graph[t].dtype in INTEGER_TYPES for t in op.outputs)
        if (is_source(op) and integer_output) or tainted & set(op.inputs):
            tainted.update(op.outputs)
            ops.append(op)
    return ops


def replay_op(graph, op, values: dict, optimized: bool) -> list:
    """Outputs of ``op`` run alone on LiteRT (BUILTIN_REF, or its builtin optimized kernels) with
    ``values`` for its non-constant inputs."""
    tensors = [graph[t] for t in dict.fromkeys(op.inputs + op.outputs) if t]
    inputs = [t for t in dict.fromkeys(op.inputs) if t and graph[t].data is None]
    single = Graph(tensors=tensors, ops=[op], inputs=inputs, outputs=list(op.outputs))
    resolver = (litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if optimized
                else litert.OpResolverType.BUILTIN_REF)
    interpreter = litert.Interpreter(model_content=write_tflite(single), num_threads=1,
                                     experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    set_inputs_and_invoke(interpreter, [values[t] for t in inputs])
    return [interpreter.get_tensor(d["index"]).copy() for d in interpreter.get_output_details()]


def op_counts(graph) -> dict:
    counts = {}
    for op in graph.ops:
        counts[op.type] = counts.get(op.type, 0) + 1
    return counts


# ----------------------------------------------------------------------------- task metrics

def task_metric(name: str, float_outputs: list, int8_outputs: list) -> tuple:
    """(printable summary, {figure: value}) of the int8 model's task quality against the float model's."""
    data = model_data(name)
    if name in HF_MODELS:  # random weights: each output's per-sample cosine to float is the metric
        output_names = onnx_output_names(name)
        figures = {f"min_{n}_cosine": float(task_metrics.row_cosines(q.reshape(len(q), -1),
                                                                     f.reshape(len(f), -1)).min())
                   for n, f, q in zip(output_names, float_outputs, int8_outputs)}
        summary = ", ".join(f"{n} per-sample cosine min {figures[f'min_{n}_cosine']:.4f}" for n in output_names)
        return summary, figures
    (float_outputs,), (int8_outputs,) = float_outputs, int8_outputs
    if name == "yolo_detector":
        float_tops = [task_metrics.top_detection(d) for d in float_outputs]
        int8_tops = [task_metrics.top_detection(d) for d in int8_outputs]
        agreement = np.mean([task_metrics.top_detection_agrees(f, q, DETECTION_SCORE_RESOLUTION)
                             for f, q in zip(float_outputs, int8_outputs)])
        hits = [np.mean([task_metrics.detection_hits_ground_truth(t, b, c)
                         for t, b, c in zip(tops, data["eval_boxes"], data["eval_classes"])])
                for tops in (float_tops, int8_tops)]
        strict = np.mean([task_metrics.same_detection(a, b) for a, b in zip(float_tops, int8_tops)])
        figures = {"top_detection_agreement": agreement, "float_hits": hits[0], "int8_hits": hits[1]}
        summary = (f"top detection agreement {agreement:.1%} (same class, IoU >= 0.5; {strict:.1%} "
                   f"without allowing for ties within 1/256); top detection matches ground truth: "
                   f"float {hits[0]:.1%}, int8 {hits[1]:.1%}")
    elif name == "crnn_text":
        cer = [task_metrics.character_error_rate(o, data["eval_labels"]) for o in (float_outputs, int8_outputs)]
        figures = {"float_cer": cer[0], "int8_cer": cer[1]}
        summary = f"CER float {cer[0]:.2%}, int8 {cer[1]:.2%} ({100 * (cer[1] - cer[0]):+.2f} points)"
    elif name == "mobile_dwsep":  # untrained: agreement with float is the task
        agreement = float(np.mean(float_outputs.argmax(-1) == int8_outputs.argmax(-1)))
        figures = {"top1_agreement": agreement}
        summary = f"top-1 class agreement with float {agreement:.1%}"
    elif name == "unet_segmenter":
        truth = data["eval_masks"]
        accuracy = [task_metrics.pixel_accuracy(o.argmax(1), truth) for o in (float_outputs, int8_outputs)]
        miou = [task_metrics.mean_iou(o.argmax(1), truth, o.shape[1]) for o in (float_outputs, int8_outputs)]
        figures = {"float_accuracy": accuracy[0], "int8_accuracy": accuracy[1],
                   "float_miou": miou[0], "int8_miou": miou[1]}
        summary = (f"pixel accuracy float {accuracy[0]:.2%}, int8 {accuracy[1]:.2%}; "
                   f"mIoU float {miou[0]:.4f}, int8 {miou[1]:.4f}")
    else:
        cosines = task_metrics.row_cosines(int8_outputs, float_outputs)
        figures = {"min_embedding_cosine": float(cosines.min()), "mean_embedding_cosine": float(cosines.mean())}
        summary = f"sentence embedding cosine min {cosines.min():.4f}, mean {cosines.mean():.4f}"
    return summary, figures
