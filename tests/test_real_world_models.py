"""Real-world architectures exported from PyTorch with dynamic axes (tests/models/, made by
scripts/make_real_world_models.py): a YOLOv8-style detector, a CRNN text recogniser with a
bidirectional LSTM, a U-Net segmenter and a 2-layer BERT-style encoder; and Hugging Face
transformers' own BertModel, DistilBertModel, ViTModel, ConvNextModel and Whisper encoder built
from small configs with random weights (scripts/make_hf_models.py), exported as users export them.

For each model, with its dynamic dimensions fixed by ``input_shapes``:
- the float .tflite matches onnxruntime on the evaluation inputs, on our runtime and on LiteRT;
- it holds no more TRANSPOSE ops than the model's own data movement needs;
- the int8 .tflite (calibrated on the model's calibration inputs) gives in every integer tensor the
  very integers of LiteRT's reference kernels (BUILTIN_REF);
- the int8 model stays faithful to the float one: output cosine and SQNR, and the task's metric
  (top detection, CTC character error rate, segmentation accuracy and mIoU, embedding cosine;
  for the Hugging Face models, each output's per-sample cosine).
Models with several outputs (last_hidden_state and pooler_output) are judged on every output.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("ai_edge_litert")

from edgeq.converter.api import convert  # noqa: E402
from edgeq.testing import litert  # noqa: E402
from edgeq.testing.real_world_models import (  # noqa: E402
    HF_MODELS,
    MODEL_SPECS,
    MODELS_DIR,
    NAMES,
    converted,
    fidelity,
    float_error,
    inputs,
    integer_mismatches,
    new_interpreter,
    onnxruntime_outputs,
    op_counts,
    resized,
    set_inputs_and_invoke,
    task_metric,
    tflite_outputs,
)
from edgeq.testing.referees import nchw_to_nhwc, nhwc_to_nchw, run_onnxruntime  # noqa: E402

# float32 summation order differs between engines; these models are 10-40 layers deep.
FLOAT_TOLERANCE = 1e-4


def check_task_metric(name: str, figures: dict) -> None:
    if name == "yolo_detector":
        assert figures["top_detection_agreement"] >= 0.95
    elif name == "crnn_text":
        assert figures["int8_cer"] - figures["float_cer"] < 0.005  # under half a percentage point
    elif name == "unet_segmenter":
        assert figures["float_accuracy"] - figures["int8_accuracy"] < 0.01
        assert figures["float_miou"] - figures["int8_miou"] < 0.02
    elif name in HF_MODELS:
        assert min(figures.values()) >= MODEL_SPECS[name].min_sample_cosine
    else:
        assert figures["min_embedding_cosine"] >= 0.99


# ----------------------------------------------------------------------------- tests

# Each model is converted and run on every evaluation sample by several engines: the slow tier.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", NAMES)
def test_model_file_has_dynamic_axes_and_shape_arithmetic(name):
    """The exported models keep symbolic batch (and spatial/sequence) dims, so the converter meets
    the Shape/Gather/Concat/Reshape chains of real exports, and the files stay small."""
    model = onnx.load(str(MODELS_DIR / f"{name}.onnx"))
    symbolic = [d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param]
    assert "batch" in symbolic
    ops = {node.op_type for node in model.graph.node}
    if MODEL_SPECS[name].shape_arithmetic:
        assert "Shape" in ops and ops & {"Gather", "Slice"} and ops & {"Concat", "Reshape", "Resize", "Range"}
    assert (MODELS_DIR / f"{name}.onnx").stat().st_size < 1_500_000


@pytest.mark.parametrize("name", NAMES)
def test_float_model_matches_onnxruntime_on_our_runtime_and_litert(name):
    expected = onnxruntime_outputs(name)
    content = converted(name, "none").content
    ours = tflite_outputs(name, content, "edgeq")
    theirs = tflite_outputs(name, content, "litert")
    ours_error, litert_error = float_error(name, ours, expected), float_error(name, theirs, expected)
    print(f"{name} float: edgeq vs onnxruntime {ours_error:.2e}, LiteRT vs onnxruntime {litert_error:.2e}")
    assert ours_error <= FLOAT_TOLERANCE
    assert litert_error <= FLOAT_TOLERANCE


@pytest.mark.parametrize("name", NAMES)
def test_float_model_converted_at_other_input_sizes_matches_onnxruntime(name):
    """The dynamic dims fixed differently (other image sizes, a shorter sentence, a batch of 2): the
    Shape/Gather/Concat/Reshape arithmetic, anchors, position slices and batch must follow."""
    shapes = MODEL_SPECS[name].other_input_shapes
    batch = next(iter(shapes.values()))[0]
    feeds = {n: resized(values[:8], shapes[n]) for n, values in inputs(name, "eval").items()}
    expected = run_onnxruntime(onnx.load(str(MODELS_DIR / f"{name}.onnx")), feeds)
    content = convert(MODELS_DIR / f"{name}.onnx", input_shapes=shapes).content
    outputs = {"edgeq": [], "litert": []}
    for engine, results in outputs.items():
        interpreter = new_interpreter(content, engine)
        for start in range(0, len(expected[0]), batch):
            set_inputs_and_invoke(interpreter, [nchw_to_nhwc(v[start:start + batch]) for v in feeds.values()])
            results.append([nhwc_to_nchw(interpreter.get_tensor(d["index"])) for d in interpreter.get_output_details()])
    ours_error = float_error(name, [np.concatenate(o) for o in zip(*outputs["edgeq"])], expected)
    litert_error = float_error(name, [np.concatenate(o) for o in zip(*outputs["litert"])], expected)
    print(f"{name} float at {shapes}: outputs {[e.shape[1:] for e in expected]}, edgeq vs onnxruntime {ours_error:.2e}, "
          f"LiteRT vs onnxruntime {litert_error:.2e}")
    assert ours_error <= FLOAT_TOLERANCE
    assert litert_error <= FLOAT_TOLERANCE


@pytest.mark.parametrize("name", NAMES)
def test_float_model_holds_only_the_transposes_the_model_needs(name):
    counts = op_counts(converted(name, "none").graph)
    print(f"{name} float ops: {dict(sorted(counts.items()))}")
    assert counts.get("TRANSPOSE", 0) <= MODEL_SPECS[name].needed_transposes


@pytest.mark.parametrize("name", NAMES)
def test_int8_model_equals_litert_reference_in_every_integer_tensor(name):
    result = converted(name, "int8")
    counts = integer_mismatches(result, name)
    print(f"{name} int8: {len(counts)} integer tensors, {sum(counts.values())} mismatching elements; "
          f"kept float: {result.float_ops}")
    assert counts and sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("name", NAMES)
def test_int8_model_stays_faithful_to_float(name):
    spec = MODEL_SPECS[name]
    float_outputs = onnxruntime_outputs(name)
    int8_outputs = tflite_outputs(name, converted(name, "int8").content, "edgeq")
    cosine, sqnr = fidelity(int8_outputs, float_outputs)
    summary, figures = task_metric(name, float_outputs, int8_outputs)
    print(f"{name} int8 vs float: cosine {cosine:.4f}, SQNR {sqnr:.1f} dB; {summary}")
    assert cosine >= spec.min_cosine
    assert sqnr >= spec.min_sqnr_db
    check_task_metric(name, figures)


@pytest.mark.parametrize("resolver", ["BUILTIN_REF", "AUTO"])
def test_int8_eager_attention_mask_loads_and_runs_on_litert_in_a_child_process(resolver):
    """Hugging Face's eager attention adds (1 - mask) * finfo(float32).min to the scores. As int8
    that addition had a scale of ~1e36 and LiteRT aborted (SIGABRT) in allocate_tensors(); now only
    the ops making the mask stay float, and the mask is clamped where it enters the int8 addition, so
    the additions, the softmaxes and every other layer are int8. LiteRT's worker process takes the
    abort, if it comes back, as a failure naming the model."""
    result = converted("hf_bert_eager", "int8")
    kept = sorted(op.split(" ")[0] for op in result.float_ops)
    assert kept == ["RESHAPE", "SELECT_V2"], result.float_ops
    assert all("holds mask values down to -3.4e+38" in op for op in result.float_ops)
    assert {result.graph[op.outputs[0]].dtype for op in result.graph.ops
            if op.type in ("FULLY_CONNECTED", "ADD", "SOFTMAX")} == {np.dtype(np.int8)}
    interpreter = litert.Interpreter(model_content=result.content, num_threads=1,
                                     experimental_op_resolver_type=getattr(litert.OpResolverType, resolver))
    interpreter.allocate_tensors()
    interpreter.run([np.ones(d["shape"], d["dtype"]) for d in interpreter.get_input_details()])
