"""The Python API of the converter: ``convert(...)`` is what ``edgeq convert`` runs."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from edgeq.runtime.ir import Graph, ModelError

from edgeq.runtime.tflite_format.reader import read_tflite
from edgeq.runtime.tflite_format.schema import FILE_IDENTIFIER

from edgeq.runtime.fileio import write_atomic
from edgeq.runtime.tflite_format.writer import write_tflite


@dataclass
class BoundaryTensor:
    """A model input or output as the user sees it: its name, shape and memory layout."""

    name: str
    shape: tuple
    dtype: str
    layout: str


QUANTIZE_MODES = ("none", "int8", "int16x8", "dynamic", "float16")
# The full-integer modes: calibrated, checked against float, searched for float islands.
FULL_INTEGER_MODES = ("int8", "int16x8")
FLOAT_FALLBACKS = ("auto", "int16", "none")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")


@dataclass
class Int8Check:
    """The int8 model's outputs against the float model's on the calibration samples: the worst
    output's SQNR in dB, the threshold, whether it passed (a threshold of 0 accepts anything), and
    below the threshold the op where the SQNR drops most."""

    sqnr_db: float
    min_sqnr_db: float
    passed: bool
    worst_op: Optional[str] = None
    worst_op_drop_db: Optional[float] = None
    float_fallback: str = "auto"
    mode: str = "int8"  # or "int16x8"

    def as_dict(self) -> dict:
        return {"mode": self.mode, "sqnr_db": self.sqnr_db, "min_sqnr_db": self.min_sqnr_db, "passed": self.passed,
                "worst_layer": self.worst_op, "worst_layer_drop_db": self.worst_op_drop_db}

    def failure_line(self, output_path=None) -> str:
        """One line: the figure, the worst layer and what to try."""
        written = f" ({output_path} is written)" if output_path is not None else ""
        line = (f"{self.mode} outputs' SQNR against float on calibration samples is {self.sqnr_db:.1f} dB, under "
                f"--min-sqnr {self.min_sqnr_db:g}{written}")
        if self.worst_op is not None:
            line += f"; worst layer: {self.worst_op} (SQNR drops {self.worst_op_drop_db:.1f} dB there)"
        remedies = ["more or more representative calibration samples",
                    "--calibration-method percentile, entropy or mse", "--debug for every tensor's error"]
        if self.float_fallback != "auto":
            remedies.append("--float-fallback auto")
        return line + "; try " + ", ".join(remedies) + ", or --min-sqnr 0 to accept it"


@dataclass(repr=False)
class ConversionResult:
    graph: Graph
    content: bytes
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    output_path: Optional[Path] = None
    float_graph: Optional[Graph] = None
    float_ops: list = field(default_factory=list)
    layer_errors: list = field(default_factory=list)
    prune_reports: list = field(default_factory=list)
    float_choice: Optional[object] = None  # converter.mixed_precision.FloatChoice of an int8 conversion
    int8_check: Optional[Int8Check] = None  # an int8 conversion's outputs against float; see ``passed``

    @property
    def passed(self) -> bool:
        """False when an int8 model's outputs stay under the SQNR threshold: the file is written, but
        it is not to be trusted as is."""
        return self.int8_check is None or self.int8_check.passed

    def __repr__(self) -> str:
        # Short: the default repr would print every byte of the flatbuffer and every tensor of both graphs.
        boundary = ", ".join(f"{kind} {t.name} {list(t.shape)} {t.dtype}"
                             for kind, tensors in (("input", self.inputs), ("output", self.outputs)) for t in tensors)
        where = f"{str(self.output_path)!r}, " if self.output_path is not None else ""
        return (f"<ConversionResult {where}{len(self.content):,} bytes, {len(self.graph.ops)} ops, {boundary}"
                f"{f', {len(self.float_ops)} ops kept in float' if self.float_ops else ''}"
                f"{'' if self.passed else ', int8 check FAILED'}>")


def parse_input_shapes(specs) -> dict:
    """``["x:1,3,224,224", ...]`` -> ``{"x": (1, 3, 224, 224)}``; ValueError names the bad spec."""
    shapes = {}
    for spec in specs or ():
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise ModelError(
                f"bad --input-shape '{spec}': expected NAME:D1,D2,... with positive integers"
            ) from None
        shapes[name] = shape
    return shapes


def is_tflite_file(path) -> bool:
    if not isinstance(path, (str, os.PathLike)):
        return False
    with open(path, "rb") as f:
        return f.read(8)[4:8] == FILE_IDENTIFIER


def load_graph(model_path, input_shapes=None, keep_onnx_layout=False, example_inputs=None) -> tuple:
    """Read an ONNX model, a float .tflite or a PyTorch model (an nn.Module or ExportedProgram, called
    with ``example_inputs``; a .pt2 or TorchScript file) into the IR; returns (graph, notes)."""
    from edgeq.converter.torch_import import is_torch_source

    if is_torch_source(model_path):
        from edgeq.converter.onnx_import import import_onnx
        from edgeq.converter.torch_import import torch_to_onnx

        onnx_model = torch_to_onnx(model_path, example_inputs, input_shapes)
        return import_onnx(onnx_model, keep_onnx_layout=keep_onnx_layout), ["exported from PyTorch to ONNX opset 17"]
    path = Path(model_path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    if is_tflite_file(path):
        try:
            return _tflite_for_conversion(read_tflite(path.read_bytes()))
        except ModelError as error:
            from edgeq.runtime.ir import naming_file

            raise naming_file(error, path) from None
    from edgeq.converter.onnx_import import import_onnx  # onnx is a converter-only dependency

    model, notes = _with_default_batch(path, input_shapes or {})
    return import_onnx(model, input_shapes=input_shapes, keep_onnx_layout=keep_onnx_layout, notes=notes), notes


def _tflite_for_conversion(graph: Graph) -> tuple:
    """A .tflite graph with its float16 / int8 stored weights as float32 constants and its custom ops
    that have a builtin equivalent rewritten to it; returns (graph, notes)."""
    from edgeq.converter.passes import fold_dequantized_constants, lower_custom_ops

    graph, folded = fold_dequantized_constants(graph)
    notes = [f"{folded} weight tensors stored as float16 or int8 read as float32"] if folded else []
    custom = Counter(op.options.get("custom_code") for op in graph.ops if op.type == "CUSTOM")
    graph, _ = lower_custom_ops(graph)
    left = Counter(op.options.get("custom_code") for op in graph.ops if op.type == "CUSTOM")
    notes += [f"{count} custom {code} ops rewritten as builtin ops" for code, count in (custom - left).items()]
    return graph, notes


def _with_default_batch(path: Path, input_shapes: dict):
    """Load the ONNX model and fix a symbolic leading (batch) dimension to 1, as TFLite expects.

    Any other dynamic dimension is left for the importer, which asks for ``--input-shape``.
    """
    from edgeq.converter.onnx_import.load import load_model

    model = load_model(path)
    initializers = {t.name for t in model.graph.initializer}
    notes = []
    for value in model.graph.input:
        if value.name in initializers or value.name in input_shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            label = dims[0].dim_param or "?"
            dims[0].Clear()
            dims[0].dim_value = 1
            notes.append(f"input '{value.name}': dynamic batch dimension '{label}' fixed to 1")
    return model, notes


def boundary_tensors(graph: Graph, names, from_onnx: bool, keep_onnx_layout: bool) -> list:
    result = []
    for name in names:
        tensor = graph[name]
        if len(tensor.shape) == 4 and from_onnx:
            layout = "NCHW (as ONNX)" if keep_onnx_layout else "NHWC (ONNX: NCHW)"
        else:
            layout = "as ONNX" if from_onnx else "as source"
        result.append(BoundaryTensor(name, tensor.shape, tensor.dtype.name, layout))
    return result


def convert(
    model_path,
    output_path=None,
    *,
    input_shapes: Optional[dict] = None,
    keep_onnx_layout: bool = False,
    store_names: bool = True,
    quantize: str = "none",
    calibration=None,
    calibration_method: str = "minmax",
    num_calibration_samples: Optional[int] = None,
    io_dtype: str = "float32",
    float_fallback: str = "auto",
    min_sqnr_db: Optional[float] = None,
    debug: bool = False,
    progress: bool = False,
    prune_sparsity: Optional[float] = None,
    prune_scope: str = "global",
    prune_channels: Optional[float] = None,
    prune_importance: Optional[str] = None,
    prune_allocation: Optional[str] = None,
    prune_max_weights: Optional[int] = None,
    reconstruct: Optional[bool] = None,
    sparse_encoding: bool = False,
    example_inputs=None,
    equalize: bool = True,
    bias_correction: bool = True,
    smooth_quant: bool = False,
    adaround: bool = True,
) -> ConversionResult:
    """Convert an ONNX model (or a float .tflite, or a PyTorch model) to a TFLite flatbuffer.

    ``model_path``: an ONNX or .tflite file; a ``torch.nn.Module`` or ``torch.export.ExportedProgram``
    called with ``example_inputs`` (a tuple of tensors or arrays, which fix every dimension; an
    ExportedProgram's own example inputs otherwise); or a ``.pt2`` file (``torch.export.save``) or a
    TorchScript ``.pt``. PyTorch models are exported to ONNX in memory (needs ``edgeq[torch]``).

    ``quantize``: "none" (float32), "int8" (full integer; needs ``calibration``, except for a QDQ model,
    whose own scales are used), "int16x8" (TFLite's 16x8 mode: int16 activations, int8 weights, int64
    biases; needs ``calibration``; ops without an int16 kernel stay float, listed in ``float_ops``;
    float32 inputs and outputs), "dynamic" (int8 weights, float activations) or "float16" (float16
    weights). ``calibration``: an .npz keyed by input name or an .npy, samples on the first axis; a
    folder of images (or an ``edgeq.runtime.inputs.ImageFolder`` saying how to read it); arrays; an
    iterable or generator of samples, each an array, a list of arrays in input order or a dict keyed by
    input name (as TFLite's ``representative_dataset``); or an object whose ``get_next()`` returns input
    dicts until None (as onnxruntime's ``CalibrationDataReader``). ``io_dtype`` sets an int8 model's
    input/output type. ``debug`` measures every int8 tensor's error against the float model on the
    calibration samples.
    ``float_fallback``: "auto" gives int16 islands, or float islands where int16 does not help enough,
    where int8 would wreck the outputs (mixed-range joins, and ops where the error grows most while the
    outputs' SQNR on calibration samples is under ``min_sqnr_db``; see converter.mixed_precision);
    "int16" gives int16 islands only (the file stays integer-only); "none" quantizes every op that has
    an int8 form to int8.
    Either way an int8 model's outputs are compared with the float model's on the calibration
    samples: ``result.int8_check`` holds the SQNR, and ``result.passed`` is False when it stays under
    ``min_sqnr_db`` (default 20 dB; 0 accepts anything). The file is written all the same: the
    caller decides (``edgeq convert`` exits 1).
    Pruning runs on the float model before quantization (see converter.prune): ``prune_channels``
    removes that share of channels (``prune_importance`` "l1", "activation" or "reconstruction",
    ``prune_allocation`` "uniform" or "sensitivity": see ``prune_channels``), then ``prune_sparsity``
    zeroes that share of weights (``prune_scope`` "global" or "layer"). ``reconstruct``, by default on
    whenever ``calibration`` samples are given (without it a classifier pruned by half can fall to
    chance), chooses channels by the error their removal causes and refits the pruned layers and
    those after them by least squares towards the unpruned model's outputs. ``prune_max_weights``
    instead of ``prune_channels`` removes channels until about that many weights remain
    (``converter.budget`` searches it against a file size).
    Before an int8 model is calibrated, its float graph is rewritten into an equal function that
    quantizes better: ``equalize`` balances the channel ranges of consecutive weighted ops
    (converter.equalize), ``smooth_quant`` (off by default: on the test models it sharpens the
    matmuls after LayerNorms but not the outputs) moves activation outliers after a LayerNorm into
    the next weights (converter.smooth_quant), ``bias_correction`` folds the mean output shift of int8 weights,
    measured on the calibration samples, into the biases (converter.bias_correction). ``adaround``
    then chooses each int8 weight's rounding (down or up) so that each weighted op's output on the
    calibration samples, fed by the int8 network, stays closest to the float op's (converter.adaround);
    with ``bias_correction`` it also folds the mean shift it measures on those int8 inputs into the biases.
    ``sparse_encoding`` stores float weights in TFLite's sparse encoding (float models only).
    The output is written atomically when ``output_path`` is given; the bytes are returned either way.
    """
    if quantize not in QUANTIZE_MODES:
        raise ModelError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE_MODES)}")

    if float_fallback not in FLOAT_FALLBACKS:
        raise ModelError(f"unknown float fallback {float_fallback!r}; choose one of {', '.join(FLOAT_FALLBACKS)}")
    if min_sqnr_db is not None and quantize not in FULL_INTEGER_MODES:
        raise ModelError("--min-sqnr is the SQNR an int8 model's outputs must reach: it needs --quantize int8 "
                         "or int16x8")
    if io_dtype != "float32" and quantize != "int8":
        raise ModelError(f"integer model inputs/outputs (--io {io_dtype}) need --quantize int8")
    if sparse_encoding and quantize != "none":
        raise ModelError("--sparse-encoding stores float weights: LiteRT's default interpreter cannot run "
                         "quantized weights behind DENSIFY; drop --quantize or --sparse-encoding")
    if calibration is not None and quantize not in FULL_INTEGER_MODES and not (
            prune_channels or prune_sparsity or prune_max_weights):
        raise ModelError("--calibration samples are used by --quantize int8 or int16x8 and pruning; "
                         "give one of them or drop --calibration")
    if output_path is not None:
        refuse_to_overwrite_a_source(output_path, model_path, calibration)
    float_graph, notes = load_graph(model_path, input_shapes, keep_onnx_layout, example_inputs)
    from_onnx = not is_tflite_file(model_path)
    given = float_graph.given_quantization
    if quantize in FULL_INTEGER_MODES and calibration is None and (given is None or quantize != "int8"):
        raise ModelError(f"--quantize {quantize} needs calibration samples (--calibration FILE.npz)")
    if given is not None and quantize != "int8":
        notes.append("quantized (QDQ) model read as its float model; --quantize int8 keeps its own scales")
    if given is not None and (prune_sparsity or prune_channels or prune_max_weights):
        raise ModelError("pruning changes the weights a quantized (QDQ) model states scales for; prune the float model")
    if calibration is not None and not isinstance(calibration, (str, os.PathLike)):
        from edgeq.converter.calibrate import load_calibration

        # A generator or reader gives its samples once: read them once for every stage that uses them.
        calibration = load_calibration(calibration, float_graph, num_samples=num_calibration_samples)
    float_graph, prune_reports = _prune(float_graph, calibration, num_calibration_samples, prune_sparsity,
                                        prune_scope, prune_channels, prune_importance, prune_allocation, reconstruct,
                                        prune_max_weights)
    graph, float_ops, errors, float_choice, check = float_graph, [], [], None, None
    if quantize == "int8" and given is not None:
        graph, float_ops = _quantize_as_stated(float_graph, given, io_dtype, calibration, num_calibration_samples,
                                               notes)
    elif quantize in FULL_INTEGER_MODES:
        graph, float_ops, errors, float_choice = _quantize_int8(
            float_graph, calibration, calibration_method, num_calibration_samples, io_dtype, debug, progress,
            float_fallback, min_sqnr_db, PtqPasses(equalize, smooth_quant, bias_correction, adaround), notes,
            activations="int16" if quantize == "int16x8" else "int8",
        )
        check = _int8_check(float_choice, min_sqnr_db, float_fallback, quantize)
        notes.append(_float_choice_note(float_choice, check))
    elif quantize == "dynamic":
        from edgeq.converter.quantize import quantize_dynamic

        graph = quantize_dynamic(float_graph)
    elif quantize == "float16":
        from edgeq.converter.quantize import quantize_float16

        graph = quantize_float16(float_graph)
    if sparse_encoding:
        from edgeq.converter.prune import encode_sparse_weights

        graph, encoded = encode_sparse_weights(graph)
        notes.append(f"sparse-encoded weights (CSR + DENSIFY): {len(encoded)} tensors")
    content = write_tflite(graph, store_names=store_names, name_constants=False)
    result = ConversionResult(
        graph=graph,
        content=content,
        inputs=boundary_tensors(graph, graph.inputs, from_onnx, keep_onnx_layout),
        outputs=boundary_tensors(graph, graph.outputs, from_onnx, keep_onnx_layout),
        notes=notes + [f"kept in float: {op}" for op in float_ops],
        float_graph=float_graph,
        float_ops=float_ops,
        layer_errors=errors,
        prune_reports=prune_reports,
        float_choice=float_choice,
        int8_check=check,
    )
    if output_path is not None:
        result.output_path = write_atomic(output_path, content)
    return result


# Suffixes of the files a user converts from or calibrates with: a .tflite written under one of these names
# would be taken for the source by every tool that goes by the suffix, and is most often a mistyped -o.
SOURCE_SUFFIXES = (".onnx", ".npz", ".npy", ".pt", ".pth", ".pb", ".h5", ".keras")


def refuse_to_overwrite_a_source(output_path, model_path, calibration=None) -> None:
    """ModelError unless writing the TFLite output to ``output_path`` is safe: it must not be the model or the
    calibration file (the conversion would replace its own source), must not carry a source file's suffix,
    and, unless it is named .tflite, must not replace an existing file that is not a TFLite model."""
    output = Path(output_path)
    for role, source in (("the model", model_path), ("the calibration file", calibration)):
        # calibration may also be a folder of images or arrays in memory (edgeq.converter.calibration_sources)
        if isinstance(source, (str, os.PathLike)) and _same_file(output, Path(source)):
            raise ModelError(f"{output}: the output is {role} itself; choose another -o (e.g. "
                             f"{output.with_suffix('.tflite') if output.suffix != '.tflite' else output.stem + '_out.tflite'})")
    if output.suffix.lower() in SOURCE_SUFFIXES:
        raise ModelError(f"{output}: the output is a TFLite model and would be misnamed '{output.suffix}'; "
                         f"name it {output.with_suffix('.tflite').name}")
    if output.suffix.lower() != ".tflite" and output.is_file() and not _is_tflite_or_empty(output):
        raise ModelError(f"{output}: exists and is not a TFLite model; refusing to replace it")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _is_tflite_or_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0 or is_tflite_file(path)
    except OSError:
        return True  # unreadable: the write itself will say why


def _prune(graph, calibration, num_samples, sparsity, scope, channels, importance, allocation, reconstruct,
           max_weights=None) -> tuple:
    """Channel pruning, then magnitude pruning, of the float graph; returns (graph, reports)."""
    reports = []
    if max_weights is not None and calibration is None:
        raise ModelError("pruning to a weight budget measures each layer's sensitivity: it needs --calibration samples")
    if not channels:
        channels = 0.0 if max_weights is not None else None
    if reconstruct is None:
        reconstruct = (channels is not None or bool(sparsity)) and calibration is not None
    if reconstruct and channels is None and not sparsity:
        raise ModelError("--reconstruct refits pruned layers: it needs --prune-channels or --prune-sparsity")
    samples = None
    if importance in ("activation", "reconstruction") or reconstruct:
        if calibration is None:
            asked = f"--prune-importance {importance}" if importance and not reconstruct else "--reconstruct"
            raise ModelError(f"{asked} needs --calibration samples")
        from edgeq.converter.calibrate import load_calibration

        samples = load_calibration(calibration, graph, num_samples=num_samples)
    if channels is not None:
        from edgeq.converter.prune import prune_channels

        graph, report = prune_channels(graph, channels, importance, samples, reconstruct, allocation, max_weights)
        reports.append(report)
    if sparsity:
        from edgeq.converter.prune import prune_magnitude

        graph, report = prune_magnitude(graph, sparsity, scope, calibration_samples=samples if reconstruct else None)
        reports.append(report)
    return graph, reports


@dataclass(frozen=True)
class PtqPasses:
    """Which float-graph rewrites run before int8 calibration."""

    equalize: bool = True
    smooth_quant: bool = False
    bias_correction: bool = True
    adaround: bool = True  # it makes the bias correction itself, on the int8 network's inputs


def prepare_for_int8(graph: Graph, samples: dict, passes: PtqPasses, batch_size: int) -> tuple:
    """The float graph rewritten by the chosen passes (an equal function that quantizes better);
    returns (graph, notes)."""
    notes = []
    if passes.equalize:
        from edgeq.converter.equalize import equalize_cross_layer

        graph, report = equalize_cross_layer(graph)  # data-free: measured better than activation ranges
        if report.pairs:
            notes.append(str(report))
    if passes.smooth_quant:
        from edgeq.converter.smooth_quant import smooth_activation_outliers

        graph, report = smooth_activation_outliers(graph, samples, batch_size=batch_size)
        if report.layer_norms:
            notes.append(str(report))
    if passes.bias_correction:
        from edgeq.converter.bias_correction import correct_bias

        graph, report = correct_bias(graph, samples, batch_size=batch_size)
        if report.corrected:
            notes.append(str(report))
    return graph, notes


def _quantize_int8(float_graph, calibration, method, num_samples, io_dtype, debug, progress, float_fallback,
                   min_sqnr_db, passes=PtqPasses(), notes=None, activations="int8"):
    from edgeq.converter.calibrate import batch_size_for, calibrate, load_calibration
    from edgeq.converter.mixed_precision import DEFAULT_MIN_SQNR_DB, RANGE_RATIO_LIMIT, choose_float_ops
    from edgeq.converter.quantize import quantize_int8

    if method not in CALIBRATION_METHODS:
        raise ModelError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    samples = load_calibration(calibration, float_graph, num_samples=num_samples)
    batch_size = batch_size_for(float_graph, samples)  # probes the float graph: once for every stage
    prepared, pass_notes = prepare_for_int8(float_graph, samples, replace(passes, bias_correction=False), batch_size)
    # with bias correction (converter.bias_correction): the float graph quantized with round-to-nearest
    float_graph, correction_notes = prepare_for_int8(prepared, samples, PtqPasses(False, False, passes.bias_correction),
                                                     batch_size)
    ranges = calibrate(float_graph, samples, method=method, batch_size=batch_size, progress=progress)
    rounding = None
    if passes.adaround and activations == "int8":  # its check compares int8 models
        from edgeq.converter.adaround import rounding_if_better

        rounding, adaround_note = rounding_if_better(prepared, float_graph, ranges, samples, passes.bias_correction,
                                                     batch_size)
        pass_notes.append(adaround_note)
        if rounding is not None:  # it makes its own bias correction, on the int8 network's inputs
            float_graph = prepared
    if rounding is None:
        pass_notes.extend(correction_notes)
    if notes is not None:
        notes.extend(pass_notes)
    int8 = activations == "int8"
    graph, choice = choose_float_ops(
        float_graph, ranges, samples,
        lambda keep, int16=None: quantize_int8(float_graph, ranges, io_dtype, keep, rounding=rounding,
                                               activations=activations, keep_int16=int16),
        min_sqnr_db=_search_target(DEFAULT_MIN_SQNR_DB if min_sqnr_db is None else min_sqnr_db), progress=progress,
        batch_size=batch_size, search=float_fallback != "none" and (int8 or float_fallback == "auto"),
        int16_islands=int8, float_islands=float_fallback == "auto",
        join_limit=RANGE_RATIO_LIMIT * (1 if int8 else 256),
    )
    if int8 and notes is not None:
        notes.extend(f"int16 island: {op}" for op in getattr(graph, "int16_ops", []))
    errors = []
    if debug:
        from edgeq.converter.quant_debug import layer_errors

        errors = layer_errors(float_graph, graph, samples, batch_size=batch_size)
    return graph, list(graph.float_ops), errors, choice


def _search_target(min_sqnr_db: float) -> float:
    from edgeq.converter.mixed_precision import SEARCH_MARGIN_DB

    return min_sqnr_db + SEARCH_MARGIN_DB if min_sqnr_db > 0 else min_sqnr_db


def _quantize_as_stated(float_graph, given, io_dtype, calibration, num_samples, notes: list) -> tuple:
    """int8 with the scales and zero points a QDQ model states: no calibration needed, no float-island
    search (the model's own quantization is what its author chose). Calibration samples, when given,
    only range the tensors the model states nothing for (inside ops the importer decomposes)."""
    from edgeq.converter.quantize import quantize_int8

    ranges = {}
    if calibration is not None:
        from edgeq.converter.calibrate import batch_size_for, calibrate, load_calibration

        samples = load_calibration(calibration, float_graph, num_samples=num_samples)
        ranges = calibrate(float_graph, samples, batch_size=batch_size_for(float_graph, samples), progress=False)
    notes.append(f"quantized (QDQ) model: int8 with its own scales and zero points "
                 f"({len(given.activations)} activations, {len(given.weights)} weights)")
    graph = quantize_int8(float_graph, ranges, io_dtype=io_dtype, given=given, notes=notes)
    return graph, list(graph.float_ops)


def _int8_check(choice, min_sqnr_db, float_fallback, mode="int8") -> Int8Check:
    from edgeq.converter.mixed_precision import DEFAULT_MIN_SQNR_DB

    threshold = DEFAULT_MIN_SQNR_DB if min_sqnr_db is None else float(min_sqnr_db)
    passed = threshold <= 0 or not choice.sqnr_db < threshold  # NaN (no float output compared) passes
    return Int8Check(choice.sqnr_db, threshold, passed, choice.worst_op, choice.worst_op_drop_db, float_fallback,
                     mode)


def _float_choice_note(choice, check: Int8Check) -> str:
    note = f"{check.mode} outputs' SQNR against float on calibration samples: {_db(choice.sqnr_before_search_db)}"
    if choice.moved_by_search:
        note += (f", {_db(choice.sqnr_db)} once the error search moved {choice.moved_by_search} more ops to "
                 f"{'int16 or float' if choice.int16 else 'float'}")
    note += f" (threshold {check.min_sqnr_db:g} dB: {'passed' if check.passed else 'FAILED'})"
    if choice.trials:
        note += "; " + choice.search_summary()
    return note


def _db(value: float) -> str:
    return f"{value:.1f} dB" if np.isfinite(value) else ("exact" if value > 0 else f"{value} dB")
