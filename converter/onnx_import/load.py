"""Read an ONNX model and bring it to a static, constant-folded form the op rules can rely on.

After ``prepare_model`` every graph input has a fixed shape, every tensor has an inferred shape,
and every value computable from constants and static shapes is a constant (an initializer).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from edgeq.runtime.ir import ModelError

MIN_OPSET = 11
# Opsets after 21 mostly widen op type lists (bfloat16, float8); the rules read attributes and inputs
# the same way, so any opset the installed onnx defines is accepted.
MAX_OPSET = max(21, onnx.defs.onnx_opset_version())
# Older models are upgraded with onnx's version converter to this opset before import.
UPGRADE_OPSET = 13
OLDEST_UPGRADABLE_OPSET = 7

# Ops whose value is not a function of their inputs, so never folded.
NONDETERMINISTIC_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
# Ops carrying subgraphs: folded only if the reference evaluator manages; never required.
SUBGRAPH_OPS = {"If", "Loop", "Scan"}


def load_model(model: Union[str, Path, onnx.ModelProto]) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.exists():
        raise ModelError(f"no such ONNX file: {path}")
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not an ONNX file")
    try:
        # External data is read below, only from files the checks there allow.
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ... depending on version
        raise ModelError(f"{path} is not an ONNX model (cannot parse it: {type(exc).__name__})") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{path} is not an ONNX model (it has no graph)")
    load_external_data(proto, path)
    return proto


def tensors_with_external_data(graph: onnx.GraphProto):
    """Every tensor of the graph and its subgraphs (initializers, attribute tensors) stored outside it."""
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor
    for node in graph.node:
        for attr in node.attribute:
            for tensor in ([attr.t] if attr.HasField("t") else []) + list(attr.tensors):
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    yield tensor
            for subgraph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from tensors_with_external_data(subgraph)


def external_data_path(folder: Path, location: str, tensor_name: str) -> Path:
    """The file holding a tensor's external data: a file inside the model's folder, or ModelError.

    A model file is untrusted: a location such as '../../etc/passwd' or '/etc/passwd' (or a symlink
    leading out of the folder) must never be opened.
    """
    parts = location.replace("\\", "/").split("/")
    if not location or Path(location).is_absolute() or location.startswith(("/", "\\")) or ".." in parts \
            or (len(location) > 1 and location[1] == ":"):
        raise ModelError(
            f"tensor '{tensor_name}': external data location '{location}' is outside the model's folder; refused")
    resolved = (folder / location).resolve()
    if resolved != folder and folder not in resolved.parents:
        raise ModelError(
            f"tensor '{tensor_name}': external data location '{location}' leads outside the model's folder; refused")
    if not resolved.is_file():
        raise ModelError(f"tensor '{tensor_name}': external data file '{location}' not found in {folder}")
    return resolved


def load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Read each external tensor's bytes from its checked file and range into the proto."""
    folder = path.resolve().parent
    for tensor in tensors_with_external_data(proto.graph):
        info = {entry.key: entry.value for entry in tensor.external_data}
        data_path = external_data_path(folder, info.get("location", ""), tensor.name)
        size = data_path.stat().st_size
        try:
            offset = int(info.get("offset") or 0)
            length = int(info["length"]) if info.get("length") else size - offset
        except ValueError:
            raise ModelError(f"tensor '{tensor.name}': external data offset/length are not integers") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise ModelError(
                f"tensor '{tensor.name}': external data range {offset}+{length} lies outside"
                f" '{info['location']}' ({size} bytes)")
        with open(data_path, "rb") as f:
            f.seek(offset)
            tensor.raw_data = f.read(length)
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelError("the model imports no opset of the default ONNX domain")


def check_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Accept opsets MIN..MAX; upgrade older ones the version converter can lift; reject the rest."""
    opset = default_opset(model)
    if opset > MAX_OPSET:
        raise ModelError(f"ONNX opset {opset} is newer than the newest supported ({MAX_OPSET})")
    if opset >= MIN_OPSET:
        return model
    if opset < OLDEST_UPGRADABLE_OPSET:
        raise ModelError(f"ONNX opset {opset} is too old (supported: {MIN_OPSET}-{MAX_OPSET}, or {OLDEST_UPGRADABLE_OPSET}+ upgraded)")
    from onnx import version_converter

    # The converter resolves node inputs against graph inputs only (IR version 3 style).
    listed = {inp.name for inp in model.graph.input}
    model.graph.input.extend(
        helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        for init in model.graph.initializer
        if init.name not in listed
    )
    try:
        return version_converter.convert_version(model, UPGRADE_OPSET)
    except Exception as exc:
        raise ModelError(
            f"ONNX opset {opset} is older than {MIN_OPSET} and could not be upgraded to {UPGRADE_OPSET}: {exc}"
        ) from None


def initializer_names(graph: onnx.GraphProto) -> set:
    return {init.name for init in graph.initializer}


def drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Initializers listed as graph inputs are constants here (old exporters list them as inputs)."""
    inits = initializer_names(model.graph)
    keep = [inp for inp in model.graph.input if inp.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def shape_hint(dims, names) -> str:
    """The --input-shape value to suggest: known sizes as they are, batch 1, other dynamic sizes by
    name (``<width>``) for the user to choose, since 1 is rarely a usable image width or sequence."""
    parts = []
    for i, (size, name) in enumerate(zip(dims, names)):
        if size > 0:
            parts.append(str(size))
        elif i == 0:
            parts.append("1")
        else:
            parts.append(f"<{name or f'dim{i}'}>")
    return ",".join(parts)


def fix_input_shapes(model: onnx.ModelProto, input_shapes: Optional[dict]) -> None:
    """Give every graph input a static shape: its own, or the one the user passed."""
    input_shapes = dict(input_shapes or {})
    names = [inp.name for inp in model.graph.input]
    unknown = set(input_shapes) - set(names)
    if unknown:
        raise ModelError(f"--input-shape names {sorted(unknown)}, but the model's inputs are {names}")
    missing = []  # (what is wrong, the --input-shape value that fixes it), for every input without a shape
    for inp in model.graph.input:
        tensor_type = inp.type.tensor_type
        if inp.name in input_shapes:
            shape = tuple(int(d) for d in input_shapes[inp.name])
            if tensor_type.HasField("shape") and len(tensor_type.shape.dim) not in (0, len(shape)):
                raise ModelError(
                    f"input '{inp.name}' has rank {len(tensor_type.shape.dim)}, but --input-shape gives {shape}"
                )
            for i, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != shape[i]:
                    raise ModelError(
                        f"input '{inp.name}' has dimension {i} fixed to {dim.dim_value}, but --input-shape gives {shape[i]}"
                    )
            del tensor_type.shape.dim[:]
            for d in shape:
                tensor_type.shape.dim.add().dim_value = d
            continue
        if not tensor_type.HasField("shape"):
            missing.append((f"input '{inp.name}' has no shape", f"{inp.name}:1,3,224,224"))
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor_type.shape.dim]
        dim_names = [d.dim_param for d in tensor_type.shape.dim]
        dynamic = [i for i, dim in enumerate(tensor_type.shape.dim) if not (dim.HasField("dim_value") and dim.dim_value > 0)]
        if dynamic:
            i = dynamic[0]
            label = f" ('{dim_names[i]}')" if dim_names[i] else ""
            what = f"a dynamic dimension {i}{label}" if len(dynamic) == 1 else f"dynamic dimensions {dynamic}"
            missing.append((f"input '{inp.name}' has {what}", f"{inp.name}:{shape_hint(dims, dim_names)}"))
    if missing:  # every input at once: one rerun, not one per input
        problems = "; ".join(problem for problem, _ in missing)
        fixes = " ".join(f"--input-shape {fix}" for _, fix in missing)
        raise ModelError(f"{problems}; fix with {fixes}")


# Constants up to this many elements go into the model shape inference sees (shape data propagation
# needs their values); bigger ones (weights) are declared by type and shape only, which keeps
# inference from serializing hundreds of megabytes.
SMALL_CONSTANT = 4096


@dataclass
class PreparedModel:
    """The graph (nodes, inputs, outputs; no initializers) with its constants and inferred types."""

    proto: onnx.ModelProto
    constants: dict  # name -> numpy array, ONNX layout
    shapes: dict  # name -> static shape, for every value shape inference could fix
    types: dict  # name -> ONNX elem_type
    fold_failures: list = field(default_factory=list)  # why constant nodes left in the graph could not be folded
    notes: list = field(default_factory=list)  # what the import changed that the user should know


def inference_skeleton(proto: onnx.ModelProto, constants: dict) -> onnx.ModelProto:
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(proto)
    # IR 3 reads initializers only through graph inputs; ours are not listed there.
    skeleton.ir_version = max(skeleton.ir_version, 4)
    graph = skeleton.graph
    del graph.value_info[:]
    for out in graph.output:  # inferred from the nodes instead: exporters declare outputs wrongly
        out.type.tensor_type.ClearField("shape")
    used = {name for node in graph.node for name in node.input}
    for name, data in constants.items():
        if name not in used:
            continue
        if data.size <= SMALL_CONSTANT:
            graph.initializer.append(numpy_helper.from_array(data, name))
        else:
            elem = helper.np_dtype_to_tensor_dtype(data.dtype)
            graph.input.append(helper.make_tensor_value_info(name, elem, list(data.shape)))
    return skeleton


def infer_shapes(proto: onnx.ModelProto, constants: dict) -> tuple:
    """(shapes, types) of every value, from onnx shape inference with data propagation."""
    try:
        inferred = shape_inference.infer_shapes(
            inference_skeleton(proto, constants), check_type=False, strict_mode=False, data_prop=True
        )
    except Exception as exc:
        raise ModelError(f"ONNX shape inference failed: {exc}") from None
    shapes, types = {}, {}
    graph = inferred.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type:
            types[info.name] = tensor_type.elem_type
        if tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in tensor_type.shape.dim):
            shapes[info.name] = tuple(int(d.dim_value) for d in tensor_type.shape.dim)
    for name, data in constants.items():
        shapes[name] = tuple(data.shape)
        types[name] = helper.np_dtype_to_tensor_dtype(data.dtype)
    for out in proto.graph.output:  # what inference cannot compute, a static declaration still gives
        declared = declared_shape(out)
        if out.name not in shapes and declared is not None and all(isinstance(d, int) for d in declared):
            shapes[out.name] = tuple(declared)
    return shapes, types


def declared_shape(info: onnx.ValueInfoProto) -> Optional[list]:
    """A value's declared shape, a dimension as its size or its name ('?' when it has neither);
    None when no shape is declared."""
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim]


def output_shape_notes(proto: onnx.ModelProto, shapes: dict) -> list:
    """A note for each graph output whose computed shape contradicts its declared one (another rank,
    or another size where a size is declared): the computed shape is the one used."""
    notes = []
    for out in proto.graph.output:
        declared, computed = declared_shape(out), shapes.get(out.name)
        if declared is None or computed is None:
            continue
        contradicts = len(declared) != len(computed) or any(
            isinstance(d, int) and d > 0 and d != c for d, c in zip(declared, computed))
        if contradicts:
            shown = "[" + ", ".join(str(d) if isinstance(d, int) else f"'{d}'" for d in declared) + "]"
            notes.append(f"output '{out.name}': declared shape {shown} differs from the computed "
                         f"{list(computed)}; the computed shape is used")
    return notes


def constant_value(node: onnx.NodeProto) -> Optional[np.ndarray]:
    """A Constant node's tensor or numeric value; None for the rarer forms (strings, sparse)."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_floats"):
            return np.array(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
        if attr.name in ("value_int", "value_ints"):
            return np.array(attr.i if attr.name == "value_int" else list(attr.ints), dtype=np.int64)
    return None


def constant_of_shape(node: onnx.NodeProto, shape: np.ndarray) -> np.ndarray:
    fill = np.zeros(1, dtype=np.float32)  # the spec's default: one float 0
    for attr in node.attribute:
        if attr.name == "value":
            fill = numpy_helper.to_array(attr.t)
    return np.full(tuple(int(d) for d in np.asarray(shape).reshape(-1)), fill.reshape(-1)[0], dtype=fill.dtype)


def evaluate_node(node: onnx.NodeProto, inputs: list, opsets: dict) -> list:
    # Exporters write hundreds of these (the light models make every weight with ConstantOfShape);
    # numpy does them directly, where a ReferenceEvaluator per node costs milliseconds each.
    if node.op_type == "Constant":
        value = constant_value(node)
        if value is not None:
            return [value]
    elif node.op_type == "ConstantOfShape" and inputs and inputs[0] is not None:
        return [constant_of_shape(node, inputs[0])]
    from onnx.reference import ReferenceEvaluator

    feeds = {name: value for name, value in zip(node.input, inputs) if name}
    return ReferenceEvaluator(one_node_model(node, feeds, opsets)).run(None, feeds)


def one_node_model(node: onnx.NodeProto, feeds: dict, opsets: dict) -> onnx.ModelProto:
    """``node`` alone in a model importing the model's own opsets: the reference evaluator reads the
    opset from a model, but runs a bare node at the newest version of its op (an opset-12 Unsqueeze,
    whose axes are an attribute, would be evaluated as opset 13's, whose axes are an input)."""
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype),
                                            list(np.shape(value)))
              for name, value in feeds.items()]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
    graph = helper.make_graph([node], "constant_folding", inputs, outputs)
    opset_imports = [helper.make_opsetid(domain, version) for domain, version in opsets.items()]
    return helper.make_model(graph, opset_imports=opset_imports)


def fold_constants(proto: onnx.ModelProto, constants: dict, shapes: dict, failures: Optional[dict] = None) -> int:
    """Evaluate every node computable from constants and static shapes, in place; return how many.

    Folded outputs join ``constants``; folded nodes leave the graph. A node that cannot be evaluated
    stays in the graph and its error goes into ``failures`` (by node), so the caller can name every
    unsupported op before it; without ``failures`` the first such error is raised.
    """
    graph = proto.graph
    opsets = {entry.domain or "": entry.version for entry in proto.opset_import}
    kept_nodes = []
    folded = 0
    for node in graph.node:
        value = None
        if node.domain not in ("", "ai.onnx"):
            kept_nodes.append(node)
            continue
        if node.op_type == "Shape" and node.input[0] in shapes:
            value = [shape_of(node, shapes[node.input[0]])]
        elif node.op_type == "Size" and node.input[0] in shapes:
            value = [np.array(int(np.prod(shapes[node.input[0]])), dtype=np.int64)]
        elif node.op_type not in NONDETERMINISTIC_OPS and all(not n or n in constants for n in node.input):
            try:
                value = evaluate_node(node, [constants[n] if n else None for n in node.input], opsets)
            except Exception as exc:
                if node.op_type not in SUBGRAPH_OPS:
                    error = f"cannot evaluate constant {node.op_type} node '{node.name}': {exc}"
                    if failures is None:
                        raise ModelError(error) from None
                    failures.setdefault(node.name or node.output[0], error)
        if value is None:
            kept_nodes.append(node)
            continue
        folded += 1
        for name, array in zip(node.output, value):
            if name:
                constants[name] = np.asarray(array)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    return folded


def shape_of(node: onnx.NodeProto, shape: tuple) -> np.ndarray:
    start, end = 0, None
    for attr in node.attribute:
        if attr.name == "start":
            start = attr.i
        elif attr.name == "end":
            end = attr.i
    return np.array(shape[start:end], dtype=np.int64)


def check_dataflow(graph: onnx.GraphProto) -> None:
    """Nodes are in topological order and read only graph inputs, initializers and earlier outputs."""
    available = {inp.name for inp in graph.input} | initializer_names(graph) | {""}
    producer = {}
    for node in graph.node:
        for name in node.output:
            if name and name in producer:
                raise ModelError(
                    f"tensor '{name}' is produced by node '{producer[name].name}' and again by node '{node.name}'")
            producer[name] = node
    for node in graph.node:
        label = f"node '{node.name or (node.output[0] if node.output else '')}' ({node.op_type})"
        for name in node.input:
            if name in available:
                continue
            if name in producer:
                raise ModelError(
                    f"{label} reads '{name}' before node '{producer[name].name}' produces it"
                    " (a cycle, or nodes out of topological order)")
            raise ModelError(
                f"{label} reads '{name}', which no node produces and no initializer or graph input provides")
        available.update(node.output)
    for out in graph.output:
        if out.name not in available:
            raise ModelError(f"graph output '{out.name}' is produced by no node")


def check_input_types(proto: onnx.ModelProto, types: dict) -> None:
    """Inputs an op's schema ties to one type variable (Add's two T inputs) must have the same type;
    shape inference runs without type checks, so a float + int64 Add would otherwise pass."""
    opset = default_opset(proto)
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            formal_inputs = onnx.defs.get_schema(node.op_type, opset).inputs
        except Exception:  # an op this onnx does not know: check_supported names it later
            continue
        first_of_type = {}
        for position, name in enumerate(node.input):
            if not name or name not in types or not formal_inputs:
                continue
            type_variable = formal_inputs[min(position, len(formal_inputs) - 1)].type_str
            seen_name, seen_type = first_of_type.setdefault(type_variable, (name, types[name]))
            if seen_type != types[name]:
                type_name = onnx.TensorProto.DataType.Name
                raise ModelError(
                    f"node '{node.name}' ({node.op_type}): inputs '{seen_name}' ({type_name(seen_type)}) and"
                    f" '{name}' ({type_name(types[name])}) must have the same type")


def initializer_array(tensor: onnx.TensorProto) -> np.ndarray:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        # Only load_model reads external data, from checked paths; never resolve it against the cwd.
        raise ModelError(f"initializer '{tensor.name}': its external data was not loaded (load the model by path)")
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:
        raise ModelError(f"initializer '{tensor.name}' is malformed: {exc}") from None


def remove_no_op_nodes(model: onnx.ModelProto) -> None:
    """Identity and inference-mode Dropout only forward their input: rewire their consumers."""
    graph = model.graph
    outputs = {out.name for out in graph.output}
    used = {name for node in graph.node for name in node.input} | outputs
    alias = {}
    kept = []
    for node in graph.node:
        inference_dropout = (
            node.op_type == "Dropout"
            and (len(node.input) < 3 or not node.input[2])  # no training_mode flag
            and (len(node.output) < 2 or node.output[1] not in used)  # no mask wanted
        )
        if (node.op_type == "Identity" or inference_dropout) and node.output[0] not in outputs:
            src = node.input[0]
            alias[node.output[0]] = alias.get(src, src)
            continue
        kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)


def prepare_model(model, input_shapes: Optional[dict] = None) -> PreparedModel:
    """Load, check the opset, fix input shapes, infer shapes and fold constants to a fixed point."""
    proto = load_model(model)
    if proto is model:  # the caller's model stays untouched
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    check_dataflow(proto.graph)
    proto = check_opset(proto)
    drop_initializer_inputs(proto)
    fix_input_shapes(proto, input_shapes)
    remove_no_op_nodes(proto)
    constants = {init.name: initializer_array(init) for init in proto.graph.initializer}
    del proto.graph.initializer[:]
    del proto.graph.value_info[:]
    shapes, types = infer_shapes(proto, constants)
    check_input_types(proto, types)
    failures: dict = {}
    while fold_constants(proto, constants, shapes, failures):
        shapes, types = infer_shapes(proto, constants)
    used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
    constants = {name: data for name, data in constants.items() if name in used}
    check_no_empty_outputs(proto, shapes)
    return PreparedModel(proto, constants, shapes, types, list(failures.values()), output_shape_notes(proto, shapes))


def check_no_empty_outputs(proto: onnx.ModelProto, shapes: dict) -> None:
    """A graph output with no elements (a zero-size weight somewhere before it) computes nothing."""
    for out in proto.graph.output:
        shape = shapes.get(out.name)
        if shape is not None and 0 in shape:
            raise ModelError(f"graph output '{out.name}' has shape {list(shape)}: zero-size outputs are not supported")
